//! Mirror health under a lazy mount: a mirror (the fault proxy in front of the real registry)
//! that answers errors, ignores Range (a pull-through cache that fetches the whole blob
//! first), is slow, or serves bytes that fail verification is asked once and then skipped
//! (for every blob, or for that blob) while the reads go to the upstream and return the right
//! bytes; once the hold-off has passed and the mirror serves ranges, reads use it again. A
//! cache that fetches whole blobs on a miss is not asked for ranges of layers it does not hold.
//! Range requests to a mirror with `mirror-slice-size` never straddle a slice, run to the
//! slice's end, and ask no byte twice. The nginx mirror with many nodes is `mirror_nodes.rs`.

mod common;
use common::cli::Mounted;
use common::testdata::pseudo;

use common::{Fault, FaultProxy, ImageBuilder, Layer, OutputExt, Registry, StrataEnv};
use std::io::Read as _;
use std::path::Path;
use std::time::{Duration, Instant};

const FILES: usize = 4;
const FILE_LEN: usize = 2 << 20;

/// A layer of `FILES` incompressible files of 2 MiB: the first bytes of each sit in their own
/// span (spans are at most 2 MiB), so reading them is `FILES` separate fetches.
fn file(i: usize) -> Vec<u8> {
    pseudo(FILE_LEN, 100 + i as u64)
}

/// Push the image and its sidecar index straight to the registry; returns the layer digest.
fn publish(reg: &Registry, repo_tag: &str) -> String {
    publish_layer(reg, repo_tag).0
}

/// [`publish`], also giving the layer blob's size.
fn publish_layer(reg: &Registry, repo_tag: &str) -> (String, u64) {
    let mut l = Layer::new().dir("data");
    for i in 0..FILES {
        l = l.file(&format!("data/f{i}"), file(i));
    }
    publish_image(reg, l, repo_tag)
}

/// Push a one-layer image of `l` and its sidecar index straight to the registry; the layer's
/// digest and size.
fn publish_image(reg: &Registry, l: Layer, repo_tag: &str) -> (String, u64) {
    let img = ImageBuilder::new().layer(l).build("v1");
    img.push(reg, repo_tag);
    StrataEnv::new()
        .run(&["index", &format!("{}/{repo_tag}", reg.host()), "--push"])
        .assert_success();
    (img.layers[0].digest.clone(), img.layers[0].size)
}

/// A strata root whose only mirror for `reg` is `proxy`, with `extra` config keys.
fn env_with_mirror(reg: &Registry, proxy: &FaultProxy, extra: serde_json::Value) -> StrataEnv {
    let env = StrataEnv::new();
    let mut cfg = serde_json::json!({
        "registry-mirrors-by-host": { reg.host(): [proxy.url()] },
    });
    if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    env.write_config(&cfg);
    env
}

/// A registry with the test layer published as `repo_tag`, behind a mirror (the fault
/// proxy) that answers every Range of the layer with the whole blob (a pull-through cache
/// filling it); strata configured to use the mirror, with `extra`. Returns the layer digest.
fn behind_a_filling_mirror(
    repo_tag: &str,
    extra: serde_json::Value,
) -> (Registry, String, FaultProxy, StrataEnv) {
    let reg = Registry::start();
    let layer = publish(&reg, repo_tag);
    let proxy = FaultProxy::in_front_of(&reg);
    proxy.on_path(&layer, None, Fault::IgnoreRange);
    let env = env_with_mirror(&reg, &proxy, extra);
    (reg, layer, proxy, env)
}

fn mount<'a>(env: &'a StrataEnv, reference: &str) -> Mounted<'a> {
    env.mount(reference, &["--no-prefetch"])
}

/// The first 4 KiB of file `i` through the mount, checked.
fn read_head(mnt: &Path, i: usize) {
    let mut buf = vec![0u8; 4096];
    let mut f = std::fs::File::open(mnt.join(format!("data/f{i}"))).unwrap();
    f.read_exact(&mut buf).unwrap();
    assert_eq!(buf, file(i)[..4096], "data/f{i}");
}

/// 4 KiB of file `i` at `offset` through the mount, checked.
fn read_at(mnt: &Path, i: usize, offset: usize) {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 4096];
    let f = std::fs::File::open(mnt.join(format!("data/f{i}"))).unwrap();
    f.read_exact_at(&mut buf, offset as u64).unwrap();
    assert_eq!(buf, file(i)[offset..offset + 4096], "data/f{i} at {offset}");
}

/// The Range requests for `digest` the mirror saw, as inclusive (first, last) pairs.
fn mirror_ranges(proxy: &FaultProxy, digest: &str) -> Vec<(u64, u64)> {
    proxy
        .requests()
        .iter()
        .filter(|r| r.path.contains(digest))
        .filter_map(|r| {
            let (a, b) = r
                .range
                .as_deref()?
                .strip_prefix("bytes=")?
                .split_once('-')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

/// Requests for `digest` the upstream registry answered.
fn upstream_gets(reg: &Registry, digest: &str) -> usize {
    reg.settle_logs();
    reg.log()
        .lines()
        .filter(|l| l.contains("response completed") && l.contains(digest))
        .count()
}

/// Blob GETs of `digest` the mirror saw.
fn mirror_gets(proxy: &FaultProxy, digest: &str) -> usize {
    proxy
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains(digest))
        .count()
}

/// A mirror answering 500 to blob requests is asked once, then skipped for every blob: the
/// index blobs and each span come from the upstream without another try of the mirror.
#[test]
fn a_failing_mirror_is_skipped_for_a_while() {
    let reg = Registry::start();
    let layer = publish(&reg, "mirror/errors:v1");
    let proxy = FaultProxy::in_front_of(&reg);
    proxy.on_path("/blobs/", None, Fault::status(500));
    let env = env_with_mirror(&reg, &proxy, serde_json::json!({"mirror-retry-after": 60}));
    let m = mount(&env, &format!("{}/mirror/errors:v1", reg.host()));
    for i in 0..FILES {
        read_head(&m.dir, i);
    }
    let blob_gets = proxy
        .requests()
        .iter()
        .filter(|r| r.path.contains("/blobs/"))
        .count();
    assert_eq!(
        blob_gets,
        1,
        "the mirror should be asked once, then skipped: {:?}",
        proxy.requests()
    );
    assert_eq!(mirror_gets(&proxy, &layer), 0);
    // The upstream served every span: FILES separate Range requests for the layer.
    let upstream_layer_gets = upstream_gets(&reg, &layer);
    assert!(upstream_layer_gets >= FILES, "{upstream_layer_gets}");
    let log = env.daemon_logs();
    assert_eq!(
        log.matches("mirror failed; skipping it").count(),
        1,
        "one warning, not one per request:\n{log}"
    );
}

/// A mirror that answers a Range with the whole blob (200: distribution's pull-through
/// cache filling the blob) is skipped for that blob only, and only for a while: after the
/// hold-off, once it serves ranges, the layer's reads use it again. (`mirror-fill-wait: 0`:
/// not waiting for the fill; waiting is `mirror_fill.rs`.)
#[test]
fn a_mirror_filling_a_blob_is_skipped_for_that_blob_until_it_serves_ranges() {
    let (reg, layer, proxy, env) = behind_a_filling_mirror(
        "mirror/fill:v1",
        serde_json::json!({"mirror-retry-after": 1.5, "mirror-fill-wait": 0}),
    );
    let m = mount(&env, &format!("{}/mirror/fill:v1", reg.host()));
    let t0 = Instant::now();
    for i in 0..FILES - 1 {
        read_head(&m.dir, i);
    }
    let during_fill = mirror_gets(&proxy, &layer);
    // The index blobs (served by range) kept coming from the mirror.
    let index_from_mirror = proxy
        .requests()
        .iter()
        .filter(|r| r.path.contains("/blobs/") && !r.path.contains(&layer) && r.status == 206)
        .count();
    // Asked once, then the layer went upstream (a slow machine may have passed the
    // hold-off once: still not every read).
    let allowed = if t0.elapsed() < Duration::from_millis(1500) {
        1
    } else {
        FILES - 2
    };
    assert!(
        (1..=allowed).contains(&during_fill),
        "{during_fill} mirror GETs of the layer: {:?}",
        proxy.requests()
    );
    assert!(index_from_mirror >= 1, "{:?}", proxy.requests());
    // The mirror has filled the blob; after the hold-off the next read asks it again.
    proxy.clear();
    std::thread::sleep(Duration::from_millis(1600));
    read_head(&m.dir, FILES - 1);
    let served: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.path.contains(&layer) && r.status == 206)
        .collect();
    assert_eq!(served.len(), 1, "{:?}", proxy.requests());
    let log = env.daemon_logs();
    assert!(log.contains("does not serve blob"), "{log}");
}

/// A cache that fetches whole blobs on a miss (here every blob is answered 200 to a Range,
/// as distribution's pull-through cache holding nothing does) shows itself on the image's
/// small blobs, which a mirror is asked for from their first byte: no lazy read of the layer
/// is then asked of it (each would make it fetch the whole layer from its upstream), and the
/// reads come from the upstream, right. Fails if the layer's ranges are asked of the mirror.
#[test]
fn a_cache_that_fetches_whole_blobs_is_not_made_to_fetch_a_layer_by_lazy_reads() {
    let reg = Registry::start();
    let layer = publish(&reg, "mirror/whole:v1");
    let proxy = FaultProxy::in_front_of(&reg);
    proxy.on_path("/blobs/", None, Fault::IgnoreRange);
    let env = env_with_mirror(&reg, &proxy, serde_json::json!({"mirror-fill-wait": 0}));
    let m = mount(&env, &format!("{}/mirror/whole:v1", reg.host()));
    for i in 0..FILES {
        read_head(&m.dir, i);
        read_at(&m.dir, i, FILE_LEN / 2);
    }
    assert_eq!(mirror_gets(&proxy, &layer), 0, "{:?}", proxy.requests());
    let from_start = proxy
        .requests()
        .iter()
        .filter(|r| r.path.contains("/blobs/") && r.range.as_deref() == Some("bytes=0-"))
        .count();
    assert!(from_start >= 1, "{:?}", proxy.requests());
    let upstream_layer_gets = upstream_gets(&reg, &layer);
    assert!(upstream_layer_gets >= FILES, "{upstream_layer_gets}");
}

/// A mirror that answers every Range with the whole blob and never starts serving ranges (a
/// proxy that ignores Range and keeps nothing): the reads wait `mirror-fill-wait` once, then
/// go upstream and return the right bytes, and the mirror is not waited for again.
#[test]
fn a_mirror_that_never_fills_is_waited_for_once_then_bypassed() {
    let (reg, layer, proxy, env) = behind_a_filling_mirror(
        "mirror/nofill:v1",
        serde_json::json!({"mirror-fill-wait": 2, "mirror-retry-after": 60}),
    );
    let m = mount(&env, &format!("{}/mirror/nofill:v1", reg.host()));
    let t0 = Instant::now();
    read_head(&m.dir, 0);
    let first = t0.elapsed();
    assert!(
        first >= Duration::from_secs(2) && first < Duration::from_secs(10),
        "the first read took {first:?}: not the 2 s fill wait"
    );
    let t1 = Instant::now();
    for i in 1..FILES {
        read_head(&m.dir, i);
    }
    assert!(
        t1.elapsed() < Duration::from_millis(1500),
        "later reads took {:?}",
        t1.elapsed()
    );
    // the first ask, then one-byte asks 1 s apart until the 2 s were over (at least one,
    // however late the host wakes the wait): nothing after
    let log = env.daemon_logs();
    assert!(log.contains("is filling blob"), "{log}");
    assert!(log.contains("not waiting for it again"), "{log}");
    let gets = mirror_gets(&proxy, &layer);
    assert!(
        (2..=4).contains(&gets),
        "{gets}: {:?}\n{log}",
        proxy.requests()
    );
}

/// A fill wait on a host too busy to wake it in time (the daemon is stopped, SIGSTOP, from
/// the moment it sees the mirror filling until past the 2 s wait): when it wakes past the
/// wait's end it still asks the mirror once before going upstream, and the reads return
/// the right bytes.
#[test]
fn a_fill_wait_woken_past_its_end_still_asks_the_mirror_once() {
    let (reg, layer, proxy, env) = behind_a_filling_mirror(
        "mirror/stalled:v1",
        serde_json::json!({"mirror-fill-wait": 2, "mirror-retry-after": 60}),
    );
    let m = mount(&env, &format!("{}/mirror/stalled:v1", reg.host()));
    let pid = nix::unistd::Pid::from_raw(env.daemon_pid().expect("daemon.pid"));
    let log = env.root().join("daemon.log");
    let stopper = std::thread::spawn(move || -> Result<(), String> {
        let t0 = Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("is filling blob")
        {
            if t0.elapsed() > Duration::from_secs(20) {
                return Err("the daemon never waited for the fill".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        use nix::sys::signal::{kill, Signal};
        kill(pid, Signal::SIGSTOP).map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(2500));
        kill(pid, Signal::SIGCONT).map_err(|e| e.to_string())
    });
    for i in 0..FILES {
        read_head(&m.dir, i);
    }
    stopper
        .join()
        .expect("stopper thread")
        .expect("stop the daemon");
    let log = env.daemon_logs();
    assert!(log.contains("not waiting for it again"), "{log}");
    // the first ask (answered with the whole blob), then the one-byte ask after the stall
    let gets = mirror_gets(&proxy, &layer);
    assert_eq!(gets, 2, "{:?}\n{log}", proxy.requests());
}

/// A mirror slower than `mirror-timeout` to answer a Range: with `mirror-fill-wait: 0` the
/// read does not wait for it, and the layer's later reads do not ask it again.
#[test]
fn a_slow_mirror_does_not_hold_reads_up() {
    let reg = Registry::start();
    let layer = publish(&reg, "mirror/slow:v1");
    let proxy = FaultProxy::in_front_of(&reg);
    proxy.on_path(&layer, None, Fault::Delay(Duration::from_secs(2)));
    let env = env_with_mirror(
        &reg,
        &proxy,
        serde_json::json!({"mirror-timeout": 0.3, "mirror-retry-after": 60, "mirror-fill-wait": 0}),
    );
    let m = mount(&env, &format!("{}/mirror/slow:v1", reg.host()));
    let t0 = Instant::now();
    for i in 0..FILES {
        read_head(&m.dir, i);
    }
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(1800),
        "{FILES} reads took {took:?}: the slow mirror held them up"
    );
    // The proxy records a request once it has answered it, 2 s after it came: let every
    // delayed request that was sent during the reads finish (no event to wait on).
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(mirror_gets(&proxy, &layer), 1, "{:?}", proxy.requests());
}

/// Bytes from a mirror that fail verification: the retry goes to the upstream and the read
/// returns the right bytes (not EIO after three tries of the same mirror).
#[test]
fn bytes_failing_verification_send_the_blob_upstream() {
    let reg = Registry::start();
    let layer = publish(&reg, "mirror/flip:v1");
    let proxy = FaultProxy::in_front_of(&reg);
    proxy.on_path(&layer, None, Fault::FlipByte);
    let env = env_with_mirror(&reg, &proxy, serde_json::json!({"mirror-retry-after": 60}));
    let m = mount(&env, &format!("{}/mirror/flip:v1", reg.host()));
    for i in 0..FILES {
        read_head(&m.dir, i);
    }
    assert_eq!(mirror_gets(&proxy, &layer), 1, "{:?}", proxy.requests());
    assert!(env.daemon_logs().contains("failed verification"));
}

/// With `mirror-slice-size`, no Range request to the mirror crosses a slice boundary, and a
/// span larger than a slice is fetched as several requests that together cover it.
#[test]
fn range_requests_to_a_mirror_are_cut_at_its_slice_size() {
    const SLICE: u64 = 64 << 10;
    let reg = Registry::start();
    let layer = publish(&reg, "mirror/slices:v1");
    let proxy = FaultProxy::in_front_of(&reg);
    let env = env_with_mirror(
        &reg,
        &proxy,
        serde_json::json!({"mirror-slice-size": "64KiB"}),
    );
    let m = mount(&env, &format!("{}/mirror/slices:v1", reg.host()));
    read_head(&m.dir, 1);
    let ranges = mirror_ranges(&proxy, &layer);
    assert!(
        ranges.len() >= 4,
        "one 256 KiB span in 64 KiB pieces: {ranges:?}"
    );
    for (a, b) in &ranges {
        assert_eq!(a / SLICE, b / SLICE, "bytes={a}-{b} straddles a slice");
    }
    let mut sorted = ranges.clone();
    sorted.sort();
    for w in sorted.windows(2) {
        assert_eq!(
            w[0].1 + 1,
            w[1].0,
            "pieces leave a gap or overlap: {sorted:?}"
        );
    }
}

/// A read that ends inside a slice asks the mirror to the slice's end (a slicing mirror
/// fills the whole slice whatever part is asked, and nginx holds a second request of a slice
/// it is still filling for 500 ms), and the next reads in that slice are served from what
/// came back: every request ends at a slice boundary (or the blob's end) and no byte of the
/// layer is asked twice, while adjacent runs (which share a slice, and a byte) are read.
#[test]
fn a_slice_is_asked_to_its_end_and_no_byte_twice() {
    const SLICE: u64 = 64 << 10;
    let reg = Registry::start();
    let (layer, size) = publish_layer(&reg, "mirror/tails:v1");
    let proxy = FaultProxy::in_front_of(&reg);
    let env = env_with_mirror(
        &reg,
        &proxy,
        serde_json::json!({"mirror-slice-size": "64KiB"}),
    );
    let m = mount(&env, &format!("{}/mirror/tails:v1", reg.host()));
    // Files 1 and 2 from start to end, 4 KiB every 96 KiB: span after span, each run
    // beginning in the slice where the one before it ended.
    for i in 1..3 {
        for off in (0..FILE_LEN - 4096).step_by(96 << 10) {
            read_at(&m.dir, i, off);
        }
    }
    let mut ranges = mirror_ranges(&proxy, &layer);
    assert!(
        ranges.len() >= 64,
        "two 2 MiB files in 64 KiB pieces: {ranges:?}"
    );
    for (a, b) in &ranges {
        assert_eq!(a / SLICE, b / SLICE, "bytes={a}-{b} straddles a slice");
        // To the slice's end, or to where an earlier request of the slice began (a later
        // run of the slice came first: the layer is fetched whole meanwhile, as a sweep).
        let before_kept = ranges
            .iter()
            .any(|(c, _)| *c == b + 1 && c / SLICE == a / SLICE);
        assert!(
            (b + 1) % SLICE == 0 || b + 1 == size || before_kept,
            "bytes={a}-{b} ends inside a slice (blob of {size} bytes)"
        );
    }
    ranges.sort();
    for w in ranges.windows(2) {
        assert!(w[0].1 < w[1].0, "a byte asked twice: {:?} {:?}", w[0], w[1]);
    }
}

/// Length of each of [`text_layer`]'s files.
const TEXT_LEN: usize = 3 << 20;

/// File `data/t{i}` of [`text_layer`]`(seed)`.
fn text(seed: u64, i: usize) -> Vec<u8> {
    common::testdata::pseudo_text(TEXT_LEN, seed + i as u64)
}

/// A layer of two compressible 3 MiB files, `data/t0` and `data/t1`: reads far into them
/// decode from checkpoints that need their stored gzip windows.
fn text_layer(seed: u64) -> Layer {
    let mut l = Layer::new().dir("data");
    for i in 0..2 {
        l = l.file(&format!("data/t{i}"), text(seed, i));
    }
    l
}

/// Read 4 KiB a third and two thirds into each file of [`text_layer`]`(seed)` under `mnt`
/// and check the bytes.
fn read_far_into_texts(mnt: &Path, seed: u64) {
    use std::os::unix::fs::FileExt;
    for i in 0..2 {
        let f = std::fs::File::open(mnt.join(format!("data/t{i}"))).unwrap();
        for off in [TEXT_LEN / 3, 2 * TEXT_LEN / 3] {
            let mut buf = vec![0u8; 4096];
            f.read_exact_at(&mut buf, off as u64).unwrap();
            assert!(buf == text(seed, i)[off..off + 4096], "data/t{i} at {off}");
        }
    }
}

/// The gzip windows of a sidecar index are small pieces read scattered: strata asks a mirror
/// for them as they are, marked with `x-strata-piece: small` (contrib/nginx/strata-mirror.conf
/// caches those by 16 KiB slices), not cut or stretched to `mirror-slice-size`; the layer's
/// own bytes are asked unmarked, by slice; the bytes read are right.
#[test]
fn sidecar_windows_are_asked_of_a_mirror_as_marked_small_pieces() {
    const SLICE: u64 = 64 << 10;
    let reg = Registry::start();
    let (layer, _) = publish_image(&reg, text_layer(700), "mirror/windows:v1");
    let proxy = FaultProxy::in_front_of(&reg);
    let env = env_with_mirror(
        &reg,
        &proxy,
        serde_json::json!({"mirror-slice-size": "64KiB"}),
    );
    let m = mount(&env, &format!("{}/mirror/windows:v1", reg.host()));
    read_far_into_texts(&m.dir, 700);
    let reqs = proxy.requests();
    let blob_gets: Vec<_> = reqs
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
        .collect();
    let small: Vec<_> = blob_gets
        .iter()
        .filter(|r| r.header_values("x-strata-piece") == ["small"])
        .collect();
    assert!(
        !small.is_empty(),
        "no window asked as a small piece: {blob_gets:?}"
    );
    for r in &small {
        assert!(!r.path.contains(&layer), "layer bytes marked small: {r:?}");
        let (a, b) = r
            .range
            .as_deref()
            .and_then(|x| x.strip_prefix("bytes="))
            .and_then(|x| x.split_once('-'))
            .map(|(a, b)| (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()))
            .expect("a window is a Range request");
        assert!(b - a + 1 < SLICE, "a window asked past its size: {a}-{b}");
        assert!(
            (b + 1) % SLICE != 0,
            "a window stretched to the slice's end: {a}-{b}"
        );
    }
    for r in blob_gets.iter().filter(|r| r.path.contains(&layer)) {
        assert!(
            r.header_values("x-strata-piece").is_empty(),
            "layer request marked: {r:?}"
        );
    }
}

/// The sidecar index blob of `repo:v1` (the layer index file the referrers' artifact lists).
fn sidecar_index_blob(reg: &Registry, repo: &str) -> String {
    use sha2::{Digest as _, Sha256};
    let json = |b: &[u8]| -> serde_json::Value { serde_json::from_slice(b).unwrap() };
    let m = reg.get_manifest(repo, "v1");
    let tag = format!("sha256-{:x}", Sha256::digest(&m.body));
    let listing = json(&reg.get_manifest(repo, &tag).body);
    let art = listing["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["artifactType"] == "application/vnd.strata.index.v5")
        .expect("sidecar in the referrers")
        .clone();
    let am = json(&reg.get_manifest(repo, art["digest"].as_str().unwrap()).body);
    am["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["mediaType"] == "application/vnd.strata.layer.index.v5")
        .expect("index blob in the sidecar")["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A mirror that alters the sidecar's gzip windows (format 4 heads carry no sha256 per
/// window): the spans decoded with a bad window fail their block sha256s, the window is
/// dropped and fetched again (from the upstream: the mirror is distrusted for the blob), and
/// every read returns the right bytes.
#[test]
fn altered_sidecar_windows_from_a_mirror_give_no_wrong_byte() {
    let reg = Registry::start();
    publish_image(&reg, text_layer(900), "mirror/badwin:v1");
    let index_blob = sidecar_index_blob(&reg, "mirror/badwin");
    let proxy = FaultProxy::in_front_of(&reg);
    proxy.on_path(&index_blob, None, Fault::FlipByte);
    let env = env_with_mirror(&reg, &proxy, serde_json::json!({"mirror-retry-after": 60}));
    let m = mount(&env, &format!("{}/mirror/badwin:v1", reg.host()));
    read_far_into_texts(&m.dir, 900);
    assert!(
        proxy.faults_applied() > 0,
        "no window came from the mirror: {:?}",
        proxy.requests()
    );
    let logs = env.daemon_logs();
    assert!(logs.contains("failed verification"), "{logs}");
}
