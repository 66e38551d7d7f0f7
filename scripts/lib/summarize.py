#!/usr/bin/env python3
"""Summaries of the benchmark scripts' raw CSVs: medians with min-max, ratios, JSON, markdown.

  summarize.py startup RESULTS_DIR MACHINE_JSON COMMAND
  summarize.py fs      RESULTS_DIR MACHINE_JSON COMMAND
  summarize.py mount   RESULTS_DIR MACHINE_JSON COMMAND   (same layout as fs)
"""
import csv
import json
import os
import statistics
import sys

kind, res, machine, command = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
P = lambda name: os.path.join(res, name)


def notes():
    try:
        return [l.strip() for l in open(P(kind + "-notes.txt")) if l.strip()]
    except OSError:
        return []


def stats(vals):
    return {"n": len(vals), "median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def fmt_s(st):
    if not st:
        return "—"
    return "%.2f s (%.2f–%.2f)" % (st["median"], st["min"], st["max"])


def mb(b):
    return "—" if b is None else "%.1f MB" % (b / 1e6)


def header(md):
    md.append("Machine: %d vCPU (%s), %.0f GiB RAM, kernel %s; date %s." % (
        machine["cpus"], machine["cpu_model"] or "unknown CPU", machine["mem_bytes"] / 2**30,
        machine["kernel"], machine["date"]))
    md.append("Command: `%s`" % command)
    md.append("")


def startup():
    rows = list(csv.DictReader(open(P("startup-raw.csv"))))
    traces = json.load(open(P("startup-traces.json")))
    links = json.load(open(P("startup-links.json")))
    groups, bytes_, failed, starts = {}, {}, {}, {}
    order = []
    for r in rows:
        k = (r["image"], r["profile"], r["workload"])
        if k not in order:
            order.append(k)
        key = k + (r["method"],)
        if r["ok"] == "1":
            groups.setdefault(key, []).append(float(r["seconds"]))
            bytes_.setdefault(key, []).append(int(r["bytes_fetched"]))
            if r.get("runtime_start_s"):
                starts.setdefault(key, []).append(float(r["runtime_start_s"]))
        else:
            failed[key] = failed.get(key, 0) + 1
    out = []
    methods = ["classic", "local", "strata-pull", "strata-lazy", "strata-profiled", "strata-estargz"]
    for k in order:
        img, prof, wl = k
        ent = {"image": img, "profile": prof, "workload": wl, "methods": {}}
        for m in methods:
            if (k + (m,)) in groups:
                st = stats(groups[k + (m,)])
                st["bytes_fetched"] = int(statistics.median(bytes_[k + (m,)]))
                st["failed_runs"] = failed.get(k + (m,), 0)
                if (k + (m,)) in starts:
                    st["runtime_start_s"] = statistics.median(starts[k + (m,)])
                ent["methods"][m] = st
            elif (k + (m,)) in failed:
                ent["methods"][m] = {"n": 0, "failed_runs": failed[k + (m,)]}
        tr = traces.get(img + "/" + wl)
        ln = links.get(prof)
        if tr and ln and "local" in ent["methods"] and ent["methods"]["local"].get("n"):
            bw = ln["bandwidth_Bps"]
            ideal = ent["methods"]["local"]["median"] + tr["gzip_bytes"] / bw + 3 * ln["rtt_s"]
            ent["ideal"] = {"seconds": ideal, "bytes_read": tr["bytes"], "bytes_read_gzip": tr["gzip_bytes"],
                            "resident_bytes": tr["resident_bytes"], "files": tr["files"],
                            "bandwidth_Bps": bw, "rtt_s": ln["rtt_s"]}
        c = ent["methods"].get("classic", {}).get("median")
        lz = ent["methods"].get("strata-lazy", {}).get("median")
        ratios = {}
        if c and lz:
            ratios["classic_over_lazy"] = c / lz
        if lz and "ideal" in ent:
            ratios["lazy_over_ideal"] = lz / ent["ideal"]["seconds"]
        if c and "ideal" in ent:
            ratios["classic_over_ideal"] = c / ent["ideal"]["seconds"]
        if lz and "ideal" in ent:
            ratios["lazy_bytes_over_read"] = ent["methods"]["strata-lazy"]["bytes_fetched"] / max(1, ent["ideal"]["bytes_read"])
        pf = ent["methods"].get("strata-profiled", {}).get("median")
        if c and pf:
            ratios["classic_over_profiled"] = c / pf
        if pf and "ideal" in ent:
            ratios["profiled_over_ideal"] = pf / ent["ideal"]["seconds"]
            ratios["profiled_bytes_over_read"] = ent["methods"]["strata-profiled"]["bytes_fetched"] / max(1, ent["ideal"]["bytes_read"])
        sp_ = ent["methods"].get("strata-pull", {}).get("median")
        if lz and sp_:
            ratios["lazy_over_pull"] = lz / sp_
        ez = ent["methods"].get("strata-estargz", {}).get("median")
        if ez and "ideal" in ent:
            ratios["estargz_over_ideal"] = ez / ent["ideal"]["seconds"]
        if c and ez:
            ratios["classic_over_estargz"] = c / ez
        ent["ratios"] = ratios
        out.append(ent)

    with open(P("startup-summary.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "profile", "workload", "method", "runs", "median_s", "min_s", "max_s", "bytes_fetched"])
        for e in out:
            for m, st in e["methods"].items():
                if st.get("n"):
                    w.writerow([e["image"], e["profile"], e["workload"], m, st["n"], "%.3f" % st["median"],
                                "%.3f" % st["min"], "%.3f" % st["max"], st["bytes_fetched"]])
            if "ideal" in e:
                w.writerow([e["image"], e["profile"], e["workload"], "ideal", 0, "%.3f" % e["ideal"]["seconds"],
                            "", "", e["ideal"]["bytes_read_gzip"]])
    json.dump({"machine": machine, "command": command, "links": links, "notes": notes(), "results": out},
              open(P("startup.json"), "w"), indent=1)

    md = []
    header(md)
    for prof in dict.fromkeys(e["profile"] for e in out):
        ln = links.get(prof, {})
        md.append("**%s** (measured: RTT %.1f ms, %.1f MB/s)" % (
            prof, ln.get("rtt_s", 0) * 1000, ln.get("bandwidth_Bps", 0) / 1e6))
        md.append("")
        md.append("| image | workload | classic: skopeo+umoci+runc | local runc (no fetch) | strata pull+run | "
                  "strata lazy | runtime starts (lazy) | lazy / pull+run | strata lazy + published profile | "
                  "ideal lazy | classic / lazy (profiled) | "
                  "lazy / ideal (profiled) | fetched: classic | fetched: lazy (profiled) | workload reads (gzip) |")
        md.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for e in out:
            if e["profile"] != prof:
                continue
            M = e["methods"]
            pend = "pending"
            sp = fmt_s(M["strata-pull"]) if "strata-pull" in M and M["strata-pull"].get("n") else pend
            sl = fmt_s(M["strata-lazy"]) if "strata-lazy" in M and M["strata-lazy"].get("n") else pend
            spf = fmt_s(M["strata-profiled"]) if "strata-profiled" in M and M["strata-profiled"].get("n") else "—"
            r = e["ratios"]
            both = lambda a, b, f: "%s (%s)" % (f % r[a] if a in r else pend, f % r[b] if b in r else "—")
            fetched = lambda m: mb(M[m]["bytes_fetched"]) if m in M and M[m].get("n") else "—"
            rs = M.get("strata-lazy", {}).get("runtime_start_s")
            md.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                e["image"], e["workload"], fmt_s(M.get("classic")), fmt_s(M.get("local")), sp, sl,
                "%.2f s" % rs if rs is not None else "—",
                "%.2fx" % r["lazy_over_pull"] if "lazy_over_pull" in r else "—", spf,
                "%.2f s" % e["ideal"]["seconds"] if "ideal" in e else "—",
                both("classic_over_lazy", "classic_over_profiled", "%.1fx"),
                both("lazy_over_ideal", "profiled_over_ideal", "%.2fx"),
                mb(M.get("classic", {}).get("bytes_fetched")),
                "%s (%s)" % (fetched("strata-lazy"), fetched("strata-profiled")),
                "%s (%s), %d files" % (mb(e["ideal"]["bytes_read"]), mb(e["ideal"]["bytes_read_gzip"]), e["ideal"]["files"])
                if "ideal" in e else "—"))
        md.append("")
        ez = [e for e in out if e["profile"] == prof and e["methods"].get("strata-estargz", {}).get("n")]
        if ez:
            md.append("eStargz variant (the image converted by examples/estargz_convert.rs, no sidecar index):")
            md.append("")
            md.append("| image | workload | strata lazy (sidecar index) | strata lazy (eStargz) | eStargz / ideal | "
                      "fetched: lazy | fetched: eStargz |")
            md.append("|---|---|---|---|---|---|---|")
            for e in ez:
                M, r = e["methods"], e["ratios"]
                md.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                    e["image"], e["workload"], fmt_s(M.get("strata-lazy")), fmt_s(M["strata-estargz"]),
                    "%.2fx" % r["estargz_over_ideal"] if "estargz_over_ideal" in r else "—",
                    mb(M.get("strata-lazy", {}).get("bytes_fetched")), mb(M["strata-estargz"]["bytes_fetched"])))
            md.append("")
    for n in notes():
        md.append("- note: " + n)
    open(P("startup.md"), "w").write("\n".join(md) + "\n")


def fs(prefix="fs"):
    rows = list(csv.DictReader(open(P(prefix + "-raw.csv"))))
    groups, units, order, systems = {}, {}, [], []
    for r in rows:
        if r["system"] not in systems:
            systems.append(r["system"])
        t = r["test"]
        if t not in order:
            order.append(t)
        if r["ok"] == "1":
            groups.setdefault((t, r["system"]), []).append(float(r["value"]))
        units[t] = r["unit"]
    try:
        for l in open(P(prefix + "-pending.txt")):
            if l.strip() and l.strip() not in systems:
                systems.append(l.strip())
    except OSError:
        pass
    out = []
    for t in order:
        for s in systems:
            if (t, s) in groups:
                st = stats(groups[(t, s)])
                out.append({"test": t, "system": s, "unit": units[t], **st})
    with open(P(prefix + "-summary.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["test", "system", "unit", "runs", "median", "min", "max"])
        for e in out:
            w.writerow([e["test"], e["system"], e["unit"], e["n"], "%.4g" % e["median"], "%.4g" % e["min"],
                        "%.4g" % e["max"]])
    json.dump({"machine": machine, "command": command, "notes": notes(), "results": out},
              open(P(prefix + ".json"), "w"), indent=1)
    md = []
    header(md)
    md.append("| test | unit | " + " | ".join(systems) + " |")
    md.append("|---|---|" + "---|" * len(systems))
    for t in order:
        cells = []
        for s in systems:
            e = next((e for e in out if e["test"] == t and e["system"] == s), None)
            if e is None:
                cells.append("pending" if s.startswith("strata") else "—")
            else:
                g = lambda v: ("%.3g" % v) if v < 1000 else ("%.0f" % v)
                cells.append("%s (%s–%s)" % (g(e["median"]), g(e["min"]), g(e["max"])))
        md.append("| %s | %s | %s |" % (t, units[t], " | ".join(cells)))
    md.append("")
    for n in notes():
        md.append("- note: " + n)
    open(P(prefix + ".md"), "w").write("\n".join(md) + "\n")


{"startup": startup, "fs": fs, "mount": lambda: fs("mount")}[kind]()
