//! How lazy reads go to a registry: the size of their requests by the link. A near registry
//! (loopback here: it answers in a few milliseconds) gets a miss and the spans after it in one
//! request (`near-request-size`, `cache/fetcher.rs` `extend_runs`); the real
//! `docker-registry`'s access log counts the requests.

mod common;
use common::testdata::{pseudo_mixed, Mix};
use common::{ImageBuilder, Layer, OutputExt, Registry, StrataEnv};

/// Half random, half letters: the files compress to about half.
const HALF_TEXT: Mix = Mix {
    random: 24,
    period: 48,
    letters: 5,
};

/// On a near registry (this one, on loopback: it answers in a few milliseconds) a lazy read
/// that misses fetches the spans after its own in the same Range request, up to
/// `near-request-size` (256 KiB of gzip by default): a co-located registry's cost is per
/// request. A file a few spans further on is then read without another request; with
/// `near-request-size: 0` it costs one.
#[test]
fn a_near_registry_gets_a_miss_and_the_spans_after_it_in_one_request() {
    let reg = Registry::start();
    // 160 files of 24 KiB, half text (~12 KB of gzip each): ~2 MB of gzip, checkpoints
    // 64 KiB apart among them (enough spans that three reads do not make the layer "mostly
    // needed" and fetched whole). No name suffix, so no sibling fetch.
    let mut l = Layer::new().dir("m");
    let mut files = Vec::new();
    for i in 0..160u64 {
        let d = pseudo_mixed(24 << 10, 100 + i, HALF_TEXT);
        l = l.file(&format!("m/f{i:02}"), d.clone());
        files.push(d);
    }
    let img = ImageBuilder::new().layer(l).build("v1");
    img.push(&reg, "lazy/near:v1");
    let reference = format!("{}/lazy/near:v1", reg.host());
    StrataEnv::new()
        .run(&["index", &reference, "--push"])
        .assert_success();
    let layer = vec![img.layers[0].digest.clone()];
    for near in [true, false] {
        let env = StrataEnv::new();
        if !near {
            env.write_config(&serde_json::json!({"near-request-size": 0}));
        }
        let m = env.mount(&reference, &["--no-prefetch"]);
        let read = |i: usize| {
            let got = std::fs::read(m.dir.join(format!("m/f{i:02}"))).unwrap();
            assert!(got == files[i], "m/f{i:02} differs (near: {near})");
        };
        // The last file first: its fetch measures the link too (the mount's own requests
        // may all have been slow on a loaded machine), and nothing after it is counted.
        read(159);
        let mark = reg.served().len();
        read(4);
        let (first, bytes) = reg.range_gets_since(mark, &layer);
        assert!(first >= 1, "no Range GET for the first read");
        read(12);
        let (then, _) = reg.range_gets_since(mark, &layer);
        if near {
            assert!(bytes >= 256 << 10, "first read's requests: {bytes} bytes");
            assert_eq!(then, first, "m/f12 should have come with m/f04's request");
        } else {
            assert!(bytes < 256 << 10, "not extended: {bytes} bytes");
            assert!(then > first, "m/f12 should cost its own request");
        }
    }
}
