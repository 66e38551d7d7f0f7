//! zstd:chunked layers: images pushed by a real writer (Debian's `skopeo copy
//! --dest-compress-format zstd:chunked`, containers/storage's compressor) mount lazily from
//! their TOC, without `strata index`, and hostile TOCs or frames are refused.
//!
//! - The skopeo-written image, mounted lazily by strata, equals `umoci raw unpack` of the
//!   original gzip image (type, mode, owner, size, sha256, link target, link count, user
//!   xattrs of every path); each layer was read by Range only (one request for its TOC), and
//!   reading one small file fetches a small fraction of the blob.
//! - `strata run` of a busybox image pushed the same way runs from the lazy rootfs.
//! - A TOC whose checksum is not the layer's `manifest-checksum` annotation (a forged TOC, or
//!   one a mirror altered in flight) is refused with an error naming the annotation, and
//!   nothing of the layer enters the store or the cache.
//! - A frame whose bytes do not match its TOC digest gives EIO, never other bytes; the same
//!   read succeeds once honest bytes come.
//! - Field by field, strata's writer (`strata::layer::zchunked::build`, used by the hostile
//!   tests here) writes the same TOC entries as skopeo for the same tar, up to offsets and
//!   chunk cuts (rolling checksum there, fixed sizes here) and the zero access/change times
//!   containers/storage 1.43 writes; skopeo's data frames decode to the original tar.

mod common;

use common::proxy::{Fault, FaultProxy};
use common::skopeo::skopeo_copy;
use common::testdata::{pseudo_mixed, Mix};
use common::union_extra::{assert_same_meta, walk_meta, LazyMount};
use common::{
    busybox_image, BuiltImage, Entry, ImageBuilder, Layer, OutputExt, Registry, StrataEnv,
};
use std::path::Path;
use std::process::Command;
use strata::layer::zchunked;

const SOME_TEXT: Mix = Mix {
    random: 40,
    period: 64,
    letters: 7,
};

/// Two gzip layers with what a TOC has to describe: odd modes and owners, files empty /
/// small / many chunks long, hard links, symlinks, user xattrs, a whiteout and an opaque
/// directory.
fn fixture() -> ImageBuilder {
    let l0 = Layer::new()
        .dir("etc")
        .dir("usr")
        .dir("usr/lib")
        .dir("opt")
        .dir("opt/old")
        .add(Entry::dir("tmp").mode(0o1777))
        .add(Entry::dir("home").mode(0o750).owner(1000, 1000))
        .file("etc/os-release", "NAME=zchunked\n")
        .add(Entry::file("etc/empty", Vec::new()))
        .add(Entry::file("etc/secret", "s").mode(0o600).owner(7, 8))
        .add(Entry::file(
            "usr/lib/big.bin",
            pseudo_mixed((4 << 20) + 4321, 1, SOME_TEXT),
        ))
        .add(Entry::file("usr/lib/tool", pseudo_mixed(70_000, 2, SOME_TEXT)).mode(0o4755))
        .hardlink("usr/lib/tool-link", "usr/lib/tool")
        .symlink("usr/lib/current", "tool")
        .add(
            Entry::file("etc/attr", "x")
                .xattr("user.one", "1")
                .xattr("user.bin", vec![0u8, 255, 7]),
        )
        .file("opt/old/a", "a")
        .file("opt/gone", "gone");
    let l1 = Layer::new()
        .dir("etc")
        .dir("opt")
        .dir("usr")
        .dir("usr/lib")
        .whiteout("opt/gone")
        .opaque("opt/old")
        .file("opt/old/b", "b")
        .file("etc/os-release", "NAME=zchunked v2\n")
        .add(Entry::file(
            "usr/lib/mid.bin",
            pseudo_mixed(300_000, 3, SOME_TEXT),
        ));
    ImageBuilder::new().layer(l0).layer(l1)
}

fn manifest(reg: &Registry, repo: &str, tag: &str) -> serde_json::Value {
    reg.get_manifest(repo, tag).json()
}

fn layer_digests(m: &serde_json::Value) -> Vec<String> {
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// `umoci raw unpack` of the original (gzip) image layout: the independent oracle.
fn umoci_unpack(img: &BuiltImage, rootfs: &Path) {
    let out = Command::new("umoci")
        .args(["raw", "unpack", "--image"])
        .arg(format!("{}:{}", img.layout.display(), img.tag))
        .arg(rootfs)
        .output()
        .expect("run umoci");
    assert!(
        out.status.success(),
        "umoci raw unpack failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stats(env: &StrataEnv, dir: &Path) -> serde_json::Value {
    let out = env.run(&["stats", "--json", dir.to_str().unwrap()]);
    out.assert_success();
    serde_json::from_str(&out.stdout_str()).unwrap()
}

/// Every path under `root` whose name contains `needle`.
fn paths_containing(root: &Path, needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.to_string_lossy().contains(needle) {
                out.push(p.display().to_string());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    out
}

#[test]
fn skopeo_zstd_chunked_layers_mount_lazily_like_umoci_unpacks_the_original() {
    let reg = Registry::start();
    let img = fixture().build("v1");
    let dest = format!("docker://{}/foreign/zc:v1", reg.host());
    skopeo_copy(
        &img.oci_ref(),
        &dest,
        None,
        None,
        &["--dest-compress-format", "zstd:chunked"],
    );
    let m = manifest(&reg, "foreign/zc", "v1");
    // Really written by skopeo as zstd:chunked: zstd layers with the TOC annotations
    // (Debian's skopeo 1.9 uses the older `io.containers.` prefix).
    let mut blob_sizes = Vec::new();
    for l in m["layers"].as_array().unwrap() {
        assert!(l["mediaType"].as_str().unwrap().ends_with("+zstd"), "{m}");
        let a = &l["annotations"];
        let get = |k: &str| a[k].as_str().map(str::to_string);
        assert!(
            zchunked::annotations(get).is_some(),
            "no TOC annotations: {m}"
        );
        blob_sizes.push(l["size"].as_u64().unwrap());
    }
    let work = tempfile::tempdir().unwrap();
    let rootfs = work.path().join("rootfs");
    umoci_unpack(&img, &rootfs);
    let want = walk_meta(&rootfs, &|k| k.starts_with("user."));

    let env = StrataEnv::new();
    let reference = format!("{}/foreign/zc:v1", reg.host());
    let mark0 = reg.served().len();
    let lm = LazyMount::new(&env, &reference, "mnt", None);
    // The mount read each layer's TOC with one Range request and nothing else of it.
    let (toc_gets, toc_bytes) = reg.range_gets_since(mark0, &layer_digests(&m));
    assert_eq!(toc_gets, 2, "one TOC request per layer");
    let s = stats(&env, &lm.dir);
    assert_eq!(
        s["index_sources"],
        serde_json::json!(["ZstdChunked", "ZstdChunked"]),
        "{s}"
    );
    // One small file: a few frames, not the layer.
    let mark = reg.served().len();
    let tool = std::fs::read(lm.dir.join("usr/lib/tool")).unwrap();
    assert_eq!(tool, pseudo_mixed(70_000, 2, SOME_TEXT));
    let (gets, bytes) = reg.range_gets_since(mark, &layer_digests(&m));
    assert!(gets > 0, "nothing fetched for usr/lib/tool");
    println!(
        "zstd:chunked: TOCs {toc_bytes} bytes; usr/lib/tool (70000 bytes) fetched {bytes} bytes in \
         {gets} requests; layer 0 is {} bytes",
        blob_sizes[0]
    );
    assert!(
        bytes * 20 < blob_sizes[0],
        "reading a 70 kB file fetched {bytes} of a {}-byte layer",
        blob_sizes[0]
    );
    // Everything, compared with umoci's unpack of the original.
    let got = walk_meta(&lm.dir, &|k| k.starts_with("user."));
    assert_same_meta("skopeo zstd:chunked via strata vs umoci", &got, &want, 40);
    assert!(want.len() > 15, "only {} paths compared", want.len());
    let (_, all) = reg.range_gets_since(mark0, &layer_digests(&m));
    let s = stats(&env, &lm.dir);
    assert_eq!(s["cache"]["bytes_fetched"], all - toc_bytes, "{s}");
    // The whole-layer path (digest-checked against the manifest) accepts these layouts too.
    env.run(&["cache", "fetch", &reference]).assert_success();
    let big = std::fs::read(lm.dir.join("usr/lib/big.bin")).unwrap();
    assert_eq!(big, pseudo_mixed((4 << 20) + 4321, 1, SOME_TEXT));
}

/// The one-layer image of `layer` with its blob replaced by `blob` (carrying `annotations`),
/// pushed as `repo_tag`; returns the reference and the blob's digest.
fn push_blob(
    reg: &Registry,
    repo_tag: &str,
    layer: Layer,
    blob: &[u8],
    annotations: &std::collections::BTreeMap<String, String>,
) -> (String, String) {
    let img = ImageBuilder::new().layer(layer).build("v1");
    let layout = &img.layout;
    let sha = |b: &[u8]| strata::digest::Digest::of(b).to_string();
    let mut manifest: serde_json::Value = serde_json::from_slice(&img.manifest).unwrap();
    let d = sha(blob);
    std::fs::write(layout.join("blobs/sha256").join(&d[7..]), blob).unwrap();
    let desc = &mut manifest["layers"][0];
    desc["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd".into();
    desc["digest"] = d.clone().into();
    desc["size"] = blob.len().into();
    desc["annotations"] = serde_json::to_value(annotations).unwrap();
    let body = serde_json::to_vec(&manifest).unwrap();
    let md = sha(&body);
    std::fs::write(layout.join("blobs/sha256").join(&md[7..]), &body).unwrap();
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"] = md.into();
    index["manifests"][0]["size"] = body.len().into();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    img.push(reg, repo_tag);
    (format!("{}/{repo_tag}", reg.host()), d)
}

fn one_layer(secret: &[u8]) -> Layer {
    Layer::new()
        .dir("etc")
        .file("etc/secret", secret.to_vec())
        .file("etc/big", pseudo_mixed(1 << 20, 9, SOME_TEXT))
}

/// Our writer's zstd:chunked blob of `layer` (64 KiB chunks) and its annotations.
fn zchunked_of(layer: &Layer) -> (Vec<u8>, std::collections::BTreeMap<String, String>) {
    zchunked::build(&layer.build().tar, 64 << 10).unwrap()
}

#[test]
fn a_toc_that_does_not_match_its_checksum_annotation_is_refused() {
    let reg = Registry::start();
    // The attacker's TOC (for altered content) under the honest layer's checksum annotation.
    let (good, good_ann) = zchunked_of(&one_layer(b"honest"));
    let (evil, evil_ann) = zchunked_of(&one_layer(b"forged"));
    let key = |k: &str| format!("{}{k}", zchunked::PREFIXES[0]);
    let mut ann = evil_ann.clone();
    ann.insert(
        key(zchunked::CHECKSUM_KEY),
        good_ann[&key(zchunked::CHECKSUM_KEY)].clone(),
    );
    let (reference, layer) =
        push_blob(&reg, "hostile/zc:forged", one_layer(b"honest"), &evil, &ann);
    let env = StrataEnv::new();
    let dir = env.scratch().join("mnt");
    let (out, m) = env.try_mount_at(&reference, &dir, &["--no-prefetch"]);
    assert!(m.is_none(), "mounted a layer whose TOC fails its checksum");
    let msg = format!("{}{}", out.stderr_str(), env.daemon_logs());
    println!("refused: {}", out.stderr_str().trim());
    assert!(
        msg.contains("manifest-checksum") && msg.contains("mismatch"),
        "error does not name the checksum annotation:\n{msg}"
    );
    // Nothing of the layer was kept: no index, no trust mark, no cached bytes.
    let hex = &layer[7..];
    assert_eq!(paths_containing(&env.root(), hex), Vec::<String>::new());

    // The honest image mounts; a mirror that alters the TOC in flight is refused the same way.
    let (reference, layer) = push_blob(
        &reg,
        "hostile/zc:honest",
        one_layer(b"honest"),
        &good,
        &good_ann,
    );
    let proxy = FaultProxy::in_front_of(&reg);
    proxy.handle().on_path(&layer, Some(1), Fault::FlipByte);
    let via = reference.replace(&reg.host(), &proxy.host());
    let env2 = StrataEnv::new();
    let dir2 = env2.scratch().join("mnt");
    let (out, m) = env2.try_mount_at(&via, &dir2, &["--no-prefetch"]);
    assert!(
        m.is_none(),
        "mounted a layer whose TOC was altered in flight"
    );
    let msg = format!("{}{}", out.stderr_str(), env2.daemon_logs());
    assert!(msg.contains("manifest-checksum"), "{msg}");
    assert_eq!(
        paths_containing(&env2.root(), &layer[7..]),
        Vec::<String>::new()
    );
    // Honest bytes again: the same layer mounts and reads.
    let m = env2.mount(&via, &["--no-prefetch"]);
    assert_eq!(std::fs::read(m.dir.join("etc/secret")).unwrap(), b"honest");
}

#[test]
fn a_frame_that_does_not_match_its_digest_is_eio_never_other_bytes() {
    let reg = Registry::start();
    let (blob, ann) = zchunked_of(&one_layer(b"honest"));
    let (reference, layer) =
        push_blob(&reg, "hostile/zc:frames", one_layer(b"honest"), &blob, &ann);
    let proxy = FaultProxy::in_front_of(&reg);
    let via = reference.replace(&reg.host(), &proxy.host());
    let env = StrataEnv::new();
    let m = env.mount(&via, &["--no-prefetch"]);
    proxy.handle().on_path(&layer, None, Fault::FlipByte);
    for f in ["etc/secret", "etc/big"] {
        let err = std::fs::read(m.dir.join(f)).expect_err("altered frame served");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{f}: {err}");
    }
    proxy.handle().set(Fault::Pass);
    assert_eq!(std::fs::read(m.dir.join("etc/secret")).unwrap(), b"honest");
    assert_eq!(
        std::fs::read(m.dir.join("etc/big")).unwrap(),
        pseudo_mixed(1 << 20, 9, SOME_TEXT)
    );
}

/// A TOC's entries as JSON without what depends on the compressor and the chunker (offsets,
/// chunk cuts: containers/storage cuts by rolling checksum, strata's writer at fixed sizes)
/// and without the access/change times 1.43 writes as Go's zero time.
fn comparable(toc: &zchunked::Toc) -> Vec<serde_json::Value> {
    toc.entries
        .iter()
        .filter(|e| e.kind != "chunk")
        .map(|e| {
            let mut v = serde_json::to_value(e).unwrap();
            let o = v.as_object_mut().unwrap();
            for k in [
                "offset",
                "endOffset",
                "chunkSize",
                "chunkOffset",
                "chunkDigest",
                "chunkType",
            ] {
                o.remove(k);
            }
            v
        })
        .collect()
}

#[test]
fn strata_writer_matches_skopeo_toc_field_by_field() {
    let reg = Registry::start();
    let img = fixture().build("v1");
    let dest = format!("docker://{}/foreign/zcw:v1", reg.host());
    skopeo_copy(
        &img.oci_ref(),
        &dest,
        None,
        None,
        &["--dest-compress-format", "zstd:chunked"],
    );
    let m = manifest(&reg, "foreign/zcw", "v1");
    for (i, l) in m["layers"].as_array().unwrap().iter().enumerate() {
        let digest = l["digest"].as_str().unwrap();
        let blob = reg.get_blob("foreign/zcw", digest).body;
        let a = &l["annotations"];
        let (sum, position) = zchunked::annotations(|k| a[k].as_str().map(str::to_string)).unwrap();
        let pos = zchunked::parse_position(&position, blob.len() as u64).unwrap();
        let theirs = zchunked::parse_toc(
            &blob[pos.range().start as usize..pos.range().end as usize],
            &sum.parse().unwrap(),
            &pos,
        )
        .unwrap();
        // Their data frames decode to the original tar (the TOC is in skippable frames).
        let plain = zstd::decode_all(&blob[..]).unwrap();
        assert_eq!(plain, img.layers[i].tar, "layer {i}: decoded stream");
        let (ours, ann) = zchunked::build(&img.layers[i].tar, 64 << 10).unwrap();
        let (osum, oposition) = zchunked::annotations(|k| ann.get(k).cloned()).unwrap();
        let opos = zchunked::parse_position(&oposition, ours.len() as u64).unwrap();
        let ours = zchunked::parse_toc(
            &ours[opos.range().start as usize..opos.range().end as usize],
            &osum.parse().unwrap(),
            &opos,
        )
        .unwrap();
        let (t, o) = (comparable(&theirs), comparable(&ours));
        assert_eq!(t.len(), o.len(), "layer {i}: {t:#?}\n{o:#?}");
        for (a, b) in t.iter().zip(&o) {
            assert_eq!(a, b, "layer {i}");
        }
        if i == 0 {
            // Not vacuous: the fields that differ between entry kinds were compared.
            let has = |k: &str| t.iter().filter(|e| e.get(k).is_some()).count();
            assert!(t.len() > 15, "{t:#?}");
            assert!(has("xattrs") == 1 && has("linkName") == 2, "{t:#?}");
            assert!(has("digest") >= 5 && has("uid") == 2, "{t:#?}");
            assert!(
                theirs.entries.iter().any(|e| e.kind == "chunk"),
                "no chunks"
            );
        }
    }
}

#[test]
fn strata_run_of_a_skopeo_zstd_chunked_image() {
    let reg = Registry::start();
    let img = busybox_image()
        .layer(Layer::new().file("data/greeting", "hello from zstd:chunked\n"))
        .build("v1");
    let dest = format!("docker://{}/run/zc:v1", reg.host());
    skopeo_copy(
        &img.oci_ref(),
        &dest,
        None,
        None,
        &["--dest-compress-format", "zstd:chunked"],
    );
    let env = StrataEnv::new();
    let reference = format!("{}/run/zc:v1", reg.host());
    let out = env.run(&[
        "run",
        "--rm",
        "--timing",
        &reference,
        "cat",
        "/data/greeting",
    ]);
    out.assert_success();
    assert_eq!(out.stdout_str(), "hello from zstd:chunked\n");
    let err = out.stderr_str();
    assert!(
        err.contains("ZstdChunked"),
        "index sources not zstd:chunked: {err}"
    );
}
