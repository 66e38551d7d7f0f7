#!/usr/bin/env bash
# Plots (PNG, gnuplot) from the benchmark summaries into docs/:
#   docs/bench-startup-<profile>.png   cold-start time per image/workload and method (log scale)
#   docs/bench-fs.png                  fs throughput / latency per system
#   scripts/plot.sh [RESULTS_DIR] [OUT_DIR]     (defaults: bench-results, docs)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib/common.sh"
ensure_pkgs gnuplot-nox
RES=${1:-$(bench_results_dir)}
OUT=${2:-$STRATA_REPO_ROOT/docs}
mkdir -p "$OUT"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

if [ -f "$RES/startup-summary.csv" ]; then
  # one data file per profile: label classic strata-pull strata-lazy ideal (median s; NaN = missing)
  python3 - "$RES/startup-summary.csv" "$tmp" <<'PY'
import csv, sys, collections
rows = list(csv.DictReader(open(sys.argv[1])))
by = collections.OrderedDict()
for r in rows:
    by.setdefault(r["profile"], collections.OrderedDict()).setdefault((r["image"], r["workload"]), {})[r["method"]] = r["median_s"]
for prof, d in by.items():
    with open("%s/startup-%s.dat" % (sys.argv[2], prof), "w") as f:
        for (img, wl), m in d.items():
            f.write('"%s\\n%s" %s\n' % (img, wl, " ".join(m.get(k, "NaN") or "NaN" for k in
                                                        ("classic", "strata-pull", "strata-lazy", "strata-profiled", "strata-estargz", "ideal"))))
    titles = [("classic", "classic: skopeo + umoci + runc", "#c0504d"), ("strata-pull", "strata pull + run", "#f79646"),
              ("strata-lazy", "strata lazy (sidecar index)", "#4f81bd"),
              ("strata-profiled", "strata lazy + published profile", "#1f497d"),
              ("strata-estargz", "strata lazy (eStargz)", "#8064a2"), ("ideal", "ideal lazy bound", "#9bbb59")]
    cl, pend = [], []
    for i, (k, t, c) in enumerate(titles):
        if any(k in m for m in d.values()):
            cl.append('"%s/startup-%s.dat" using %d%s title "%s" lc rgb "%s"' % (sys.argv[2], prof, i + 2, ":xtic(1)" if not cl else "", t, c))
        else:
            pend.append(t)
    open("%s/startup-%s.plot" % (sys.argv[2], prof), "w").write(", \\\n  ".join(cl) + "\n")
    open("%s/startup-%s.pending" % (sys.argv[2], prof), "w").write(", ".join(pend))
PY
  for dat in "$tmp"/startup-*.dat; do
    prof=$(basename "$dat" .dat); prof=${prof#startup-}
    gnuplot <<GP
set terminal pngcairo size 1000,520 font "sans,11"
set output "$OUT/bench-startup-$prof.png"
set title "Cold start to command exit, registry link: $prof (median; lower is better)$( [ -s "$tmp/startup-$prof.pending" ] && echo "\\npending: $(cat "$tmp/startup-$prof.pending")")"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set logscale y
set ylabel "seconds (log scale)"
set yrange [0.05:*]
set bmargin 4
set grid ytics
set key top left
set xtics noenhanced
plot $(cat "$tmp/startup-$prof.plot")
GP
    log "wrote $OUT/bench-startup-$prof.png"
  done
fi

if [ -f "$RES/fs-summary.csv" ]; then
  python3 - "$RES/fs-summary.csv" "$tmp" <<'PY'
import csv, sys, collections
rows = list(csv.DictReader(open(sys.argv[1])))
systems = list(dict.fromkeys(r["system"] for r in rows))
med = {(r["test"], r["system"]): r["median"] for r in rows}
groups = {"seq": ["seqread-cold", "seqread-warm"], "rand": ["randread4k-cold", "randread4k-warm"],
          "meta": ["walk-100k-cold", "walk-100k-warm", "create-10k", "unlink-10k"]}
for g, tests in groups.items():
    with open("%s/fs-%s.dat" % (sys.argv[2], g), "w") as f:
        for t in tests:
            f.write('"%s" %s\n' % (t, " ".join(med.get((t, s), "NaN") for s in systems)))
open("%s/fs-systems" % sys.argv[2], "w").write(" ".join(systems) + "\n")
PY
  read -r -a systems < "$tmp/fs-systems"
  n=${#systems[@]}
  gnuplot <<GP
set terminal pngcairo size 1500,480 font "sans,10"
set output "$OUT/bench-fs.png"
set multiplot layout 1,3 title "Filesystem benchmarks (median)$(grep -q strata "$tmp/fs-systems" || echo "; strata: pending")"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key top left font ",8"
set xtics noenhanced
colors = "#7f7f7f #4bacc6 #f79646 #c0504d #e6b9b8 #4f81bd #1f497d #8064a2"
systems = "${systems[*]}"
set bmargin 5
set xtics rotate by -20
set title "sequential read 1 MiB (MB/s, higher is better)"
set yrange [0:*]
plot for [i=2:$((n + 1))] "$tmp/fs-seq.dat" using i:xtic(1) title word(systems, i-1) lc rgb word(colors, i-1)
set title "4 KiB random read (IOPS, log, higher is better)"
set yrange [*:*]
set logscale y
plot for [i=2:$((n + 1))] "$tmp/fs-rand.dat" using i:xtic(1) title word(systems, i-1) lc rgb word(colors, i-1)
set title "metadata (seconds, lower is better)"
unset logscale y
set yrange [0:*]
set key top right
plot for [i=2:$((n + 1))] "$tmp/fs-meta.dat" using i:xtic(1) title word(systems, i-1) lc rgb word(colors, i-1)
unset multiplot
GP
  log "wrote $OUT/bench-fs.png"
fi
