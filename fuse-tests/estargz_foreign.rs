//! eStargz layers written by another implementation: stargz-snapshotter's own writer
//! (`ctr-remote images convert --estargz`, Debian's `stargz-snapshotter` 0.12 driving a
//! private `containerd`), so that strata's reader is not only ever tested on layers its own
//! encoder wrote — a shared misreading of the format would pass those.
//!
//! - The converted image, mounted lazily by strata through its TOCs, equals `umoci raw
//!   unpack` of the original gzip image (type, mode, owner, size, sha256, link target, link
//!   count, user xattrs of every path), and the layers are only ever fetched by Range.
//! - Prioritised files (`--estargz-record-in`, the writer's `.prefetch.landmark`) are fetched
//!   before anything reads them.
//! - Field by field, strata's encoder (`strata::layer::estargz::build`, used by the other
//!   tests) writes the same footer bytes and the same TOC entries as the reference writer for
//!   the same tar, up to the differences listed in `foreign_only` (and the compressed offsets,
//!   which depend on the compressor).

mod common;

use common::containerd::Containerd;
use common::testdata::{pseudo_mixed, Mix};
use common::union_extra::{assert_same_meta, walk_meta, LazyMount};
use common::{BuiltImage, Compression, Entry, ImageBuilder, Layer, OutputExt, Registry, StrataEnv};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use strata::layer::estargz;

/// Chunk size given to both writers: small, so large files have many chunks.
const CHUNK: u64 = 64 << 10;

/// Mostly random, some letters: compresses a little, like real files.
const SOME_TEXT: Mix = Mix {
    random: 40,
    period: 64,
    letters: 7,
};

/// Two gzip layers with the things a TOC has to describe: directories with odd modes and
/// owners, files empty / small / many chunks long, hard links, symlinks, user xattrs, a
/// whiteout and an opaque directory.
fn fixture() -> ImageBuilder {
    let l0 = Layer::new()
        .dir("etc")
        .dir("usr")
        .dir("usr/lib")
        .dir("opt")
        .dir("opt/old")
        .add(Entry::dir("tmp").mode(0o1777))
        .add(Entry::dir("home").mode(0o750).owner(1000, 1000))
        .file("etc/os-release", "NAME=foreign\n")
        .add(Entry::file("etc/empty", Vec::new()))
        .add(Entry::file("etc/secret", "s").mode(0o600).owner(7, 8))
        .add(Entry::file(
            "usr/lib/big.bin",
            pseudo_mixed((1 << 20) + 4321, 1, SOME_TEXT),
        ))
        .add(Entry::file("usr/lib/tool", pseudo_mixed(70_000, 2, SOME_TEXT)).mode(0o4755))
        .hardlink("usr/lib/tool-link", "usr/lib/tool")
        .symlink("usr/lib/current", "tool")
        .symlink("etc/abs", "/usr/lib/tool")
        .add(
            Entry::file("etc/attr", "x")
                .xattr("user.one", "1")
                .xattr("user.bin", vec![0u8, 255, 7]),
        )
        .file("opt/old/a", "a")
        .file("opt/gone", "gone");
    let l1 = Layer::new()
        .compression(Compression::Gzip)
        .dir("etc")
        .dir("opt")
        .dir("usr")
        .dir("usr/lib")
        .whiteout("opt/gone")
        .opaque("opt/old")
        .file("opt/old/b", "b")
        .file("etc/os-release", "NAME=foreign v2\n")
        .add(Entry::file(
            "usr/lib/mid.bin",
            pseudo_mixed(300_000, 3, SOME_TEXT),
        ));
    ImageBuilder::new().layer(l0).layer(l1)
}

/// What `ctr-remote images convert` made: the pushed reference and the new manifest.
struct Converted {
    reference: String,
    manifest: serde_json::Value,
}

impl Converted {
    fn layer_digests(&self) -> Vec<String> {
        self.manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect()
    }
}

/// Import `img`'s OCI layout into `ctd`, convert it with `ctr-remote images convert
/// --estargz --oci` (`extra` flags added), and push the result to `reg` as `repo_tag`.
fn convert_and_push(
    ctd: &Containerd,
    img: &BuiltImage,
    reg: &Registry,
    repo_tag: &str,
    extra: &[&str],
) -> Converted {
    ctd.import_layout(&img.layout, "strata.test/src");
    let src = format!("strata.test/src:{}", img.tag);
    let dst = "strata.test/esgz:converted";
    let chunk = CHUNK.to_string();
    let mut args = vec![
        "images",
        "convert",
        "--estargz",
        "--oci",
        "--estargz-chunk-size",
        &chunk,
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[&src, dst]);
    let out = ctd.ctr(&args);
    let digest = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find(|l| l.starts_with("sha256:"))
        .expect("convert prints the new manifest digest")
        .trim()
        .to_string();
    let manifest: serde_json::Value = serde_json::from_slice(&ctd.content(&digest)).unwrap();
    let reference = format!("{}/{repo_tag}", reg.host());
    ctd.ctr_tries(&["images", "push", "--plain-http", &reference, dst], 3);
    // Really converted: new layer blobs, each with the TOC annotation strata reads.
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), img.layers.len(), "{manifest}");
    for (l, orig) in layers.iter().zip(&img.layers) {
        assert_ne!(l["digest"], orig.digest.as_str(), "layer not converted");
        assert!(
            l["annotations"]["containerd.io/snapshot/stargz/toc.digest"].is_string(),
            "no TOC digest annotation: {manifest}"
        );
    }
    Converted {
        reference,
        manifest,
    }
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

#[test]
fn ctr_remote_estargz_layers_mount_like_umoci_unpacks_the_original() {
    let reg = Registry::start();
    let ctd = Containerd::start();
    let img = fixture().build("v1");
    let conv = convert_and_push(&ctd, &img, &reg, "foreign/esgz:v1", &[]);
    let work = tempfile::tempdir().unwrap();
    let rootfs = work.path().join("rootfs");
    umoci_unpack(&img, &rootfs);
    let want = walk_meta(&rootfs, &|k| k.starts_with("user."));

    let env = StrataEnv::new();
    let m = LazyMount::new(&env, &conv.reference, "mnt", None);
    // After the mount, which read each layer's footer and TOC by Range itself.
    let mark = reg.served().len();
    let s = stats(&env, &m.dir);
    assert_eq!(
        s["index_sources"],
        serde_json::json!(["Estargz", "Estargz"]),
        "{s}"
    );
    let got = walk_meta(&m.dir, &|k| k.starts_with("user."));
    assert_same_meta("ctr-remote eStargz via strata vs umoci", &got, &want, 40);
    assert!(want.len() > 15, "only {} paths compared", want.len());
    // Lazily: every layer byte came by Range (a whole-blob GET panics in range_gets_since),
    // and the cache counted exactly what the registry sent.
    let (gets, bytes) = reg.range_gets_since(mark, &conv.layer_digests());
    let s = stats(&env, &m.dir);
    assert!(gets > 0, "no Range request at all");
    assert_eq!(s["cache"]["requests"], gets as u64, "{s}");
    assert_eq!(s["cache"]["bytes_fetched"], bytes, "{s}");
}

#[test]
fn ctr_remote_prioritized_files_are_prefetched_before_any_read() {
    let reg = Registry::start();
    let ctd = Containerd::start();
    let img = fixture().build("v1");
    // The record format of `ctr-remote optimize --record-out`: one JSON object per line.
    let record = ctd.dir().join("record.json");
    std::fs::write(
        &record,
        "{\"path\":\"usr/lib/big.bin\"}\n{\"path\":\"etc/os-release\"}\n",
    )
    .unwrap();
    let conv = convert_and_push(
        &ctd,
        &img,
        &reg,
        "foreign/prio:v1",
        &["--estargz-record-in", record.to_str().unwrap()],
    );
    let env = StrataEnv::new();
    let m = env.mount(&conv.reference, &[]);
    // big.bin is in layer 0, os-release in both: the prioritised files of each layer.
    let s = common::poll_until(
        "eStargz prioritised files prefetched",
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
    assert_eq!(s["fs_reads"], 0, "{s}");
    assert!(s["profile"]["files"].as_u64().unwrap() >= 2, "{s}");
    let before = s["cache"]["requests"].as_u64().unwrap();
    let big = std::fs::read(m.dir.join("usr/lib/big.bin")).unwrap();
    assert_eq!(big, pseudo_mixed((1 << 20) + 4321, 1, SOME_TEXT));
    let s = stats(&env, &m.dir);
    assert_eq!(s["fs_reads_waited"], 0, "prioritised file waited: {s}");
    assert!(s["fs_reads"].as_u64().unwrap() > 0, "{s}");
    assert!(s["cache"]["requests"].as_u64().unwrap() >= before, "{s}");
    assert!(!m.dir.join(".prefetch.landmark").exists());
}

/// A TOC entry as JSON with the compressor-dependent field (`offset`) removed.
fn comparable(e: &estargz::TocEntry) -> serde_json::Value {
    let mut v = serde_json::to_value(e).unwrap();
    v.as_object_mut().unwrap().remove("offset");
    v
}

/// Entries the reference writer adds that have no tar member behind them: its landmark
/// (`.no.prefetch.landmark` / `.prefetch.landmark`) and an entry for the root directory.
fn foreign_only(e: &estargz::TocEntry) -> bool {
    matches!(
        e.name.as_str(),
        ".no.prefetch.landmark" | ".prefetch.landmark" | "." | "./"
    )
}

/// Footer and TOC of an eStargz blob, through strata's reader functions.
fn footer_and_toc(blob: &[u8], toc_digest: &str) -> (Vec<u8>, u64, estargz::Toc) {
    let size = blob.len() as u64;
    let f = estargz::footer_range(size).unwrap();
    let footer = blob[f.start as usize..].to_vec();
    let r = estargz::toc_range(&footer, size).unwrap();
    let toc = estargz::parse_toc(
        &blob[r.start as usize..r.end as usize],
        &toc_digest.parse().unwrap(),
    )
    .unwrap();
    (footer, r.start, toc)
}

#[test]
fn strata_encoder_writes_what_the_reference_writer_writes() {
    let reg = Registry::start();
    let ctd = Containerd::start();
    let img = fixture().build("v1");
    let conv = convert_and_push(&ctd, &img, &reg, "foreign/fields:v1", &[]);
    for (i, (desc, orig)) in conv.manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&img.layers)
        .enumerate()
    {
        let theirs_blob = ctd.content(desc["digest"].as_str().unwrap());
        let theirs_toc_digest = desc["annotations"]["containerd.io/snapshot/stargz/toc.digest"]
            .as_str()
            .unwrap();
        let (their_footer, their_toc_off, theirs) = footer_and_toc(&theirs_blob, theirs_toc_digest);
        let (our_blob, our_toc_digest) = estargz::build(&orig.tar, CHUNK).unwrap();
        let (our_footer, _, ours) = footer_and_toc(&our_blob, &our_toc_digest.to_string());

        // Footer: byte for byte what strata writes for the same TOC offset.
        assert_eq!(
            their_footer,
            estargz::footer(their_toc_off),
            "layer {i}: footer"
        );
        assert_eq!(our_footer.len(), their_footer.len());
        assert_eq!((theirs.version, ours.version), (1, 1), "layer {i}: version");
        // The uncompressed-size annotation the reference writer adds is the tar's length.
        if let Some(n) = desc["annotations"]["io.containers.estargz.uncompressed-size"].as_str() {
            let n: u64 = n.parse().unwrap();
            assert!(n >= orig.tar.len() as u64 - 1024, "layer {i}: {n}");
        }
        // Every offset of theirs starts a gzip member, and every chunk decompresses to its
        // chunkDigest (what strata's reader relies on).
        for e in theirs.entries.iter().filter(|e| e.offset > 0) {
            let at = e.offset as usize;
            assert_eq!(
                &theirs_blob[at..at + 2],
                &[0x1f, 0x8b],
                "layer {i}: {} offset {at} is not a gzip member",
                e.name
            );
        }
        // Entries: theirs minus its own additions, in order, equal ours field by field.
        let theirs_entries: Vec<_> = theirs.entries.iter().filter(|e| !foreign_only(e)).collect();
        let a: Vec<_> = theirs_entries.iter().map(|e| comparable(e)).collect();
        let b: Vec<_> = ours.entries.iter().map(comparable).collect();
        let diffs: Vec<String> = a
            .iter()
            .zip(&b)
            .enumerate()
            .filter(|(_, (x, y))| x != y)
            .map(|(k, (x, y))| format!("entry {k}:\n  reference: {x}\n  strata:    {y}"))
            .collect();
        assert!(
            diffs.is_empty(),
            "layer {i}: TOC entries differ:\n{}",
            diffs.join("\n")
        );
        assert_eq!(a.len(), b.len(), "layer {i}: entry count\n{a:#?}\n{b:#?}");
        let extra: Vec<&str> = theirs
            .entries
            .iter()
            .filter(|e| foreign_only(e))
            .map(|e| e.name.as_str())
            .collect();
        eprintln!(
            "layer {i}: {} TOC entries equal; only in the reference writer's: {extra:?}",
            a.len()
        );
    }
}
