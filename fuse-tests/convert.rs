//! `strata convert --estargz --profile FILE SRC DST`: the converted image, pushed with
//! `strata push` and mounted on another machine (a fresh root), is read through its eStargz
//! TOCs, holds exactly the original files, and the profile's files (before each layer's
//! `.prefetch.landmark`) are fetched before anything reads them.

mod common;

use common::testdata::{pseudo_mixed, Mix};
use common::{Entry, ImageBuilder, Layer, OutputExt, Registry, StrataEnv};
use std::time::Duration;

const SOME_TEXT: Mix = Mix {
    random: 40,
    period: 64,
    letters: 7,
};

fn stats(env: &StrataEnv, dir: &std::path::Path) -> serde_json::Value {
    let out = env.run(&["stats", "--json", dir.to_str().unwrap()]);
    out.assert_success();
    serde_json::from_str(&out.stdout_str()).unwrap()
}

#[test]
fn converted_image_mounts_from_its_tocs_and_prefetches_the_profile_files() {
    let reg = Registry::start();
    let big = pseudo_mixed(3 << 20, 1, SOME_TEXT);
    let l0 = Layer::new()
        .dir("usr")
        .dir("usr/lib")
        .file("usr/lib/a.so", pseudo_mixed(200_000, 2, SOME_TEXT))
        .add(Entry::file("usr/lib/big.bin", big.clone()))
        .file("usr/lib/z.so", "z");
    let l1 = Layer::new()
        .dir("etc")
        .file("etc/os-release", "NAME=converted\n")
        .file("etc/other", "other");
    ImageBuilder::new()
        .layer(l0)
        .layer(l1)
        .build("v1")
        .push(&reg, "conv/src:v1");
    let src = format!("{}/conv/src:v1", reg.host());
    let dst = format!("{}/conv/esgz:v1", reg.host());

    let builder = StrataEnv::new();
    let profile = builder.scratch().join("profile.txt");
    // `strata profile show` format; one path that does not exist is skipped.
    std::fs::write(
        &profile,
        "0\t/usr/lib/big.bin\n1\t/etc/os-release\n0\t/usr/lib/missing\n",
    )
    .unwrap();
    let out = builder.run(&[
        "convert",
        "--estargz",
        "--profile",
        profile.to_str().unwrap(),
        &src,
        &dst,
    ]);
    out.assert_success();
    assert!(out.stderr_str().contains("[1, 1]"), "{}", out.stderr_str());
    builder.run(&["push", &dst]).assert_success();

    let env = StrataEnv::new();
    let m = env.mount(&dst, &[]);
    let s = common::poll_until(
        "profile files prefetched",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            let s = stats(&env, &m.dir);
            (s["profile"]["source"] == "estargz"
                && s["profile"]["files"].as_u64() > Some(0)
                && s["profile"]["done"] == s["profile"]["files"])
                .then_some(s)
        },
    );
    assert_eq!(
        s["index_sources"],
        serde_json::json!(["Estargz", "Estargz"]),
        "{s}"
    );
    assert_eq!(s["profile"]["files"], 2, "{s}");
    assert_eq!(s["fs_reads"], 0, "{s}");
    assert_eq!(std::fs::read(m.dir.join("usr/lib/big.bin")).unwrap(), big);
    assert_eq!(
        std::fs::read(m.dir.join("etc/os-release")).unwrap(),
        b"NAME=converted\n"
    );
    let s = stats(&env, &m.dir);
    assert_eq!(s["fs_reads_waited"], 0, "prioritised file waited: {s}");
    // The rest is there and the landmark is not.
    assert_eq!(std::fs::read(m.dir.join("usr/lib/z.so")).unwrap(), b"z");
    assert_eq!(
        std::fs::read(m.dir.join("usr/lib/a.so")).unwrap(),
        pseudo_mixed(200_000, 2, SOME_TEXT)
    );
    assert_eq!(std::fs::read(m.dir.join("etc/other")).unwrap(), b"other");
    assert!(!m.dir.join(".prefetch.landmark").exists());
}
