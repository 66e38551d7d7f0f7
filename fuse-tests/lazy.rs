//! Lazy mounts end to end: a real registry, `strata index --push` (sidecar artifact), a fresh
//! `STRATA_ROOT` mounting the image over FUSE, every byte checked against an independent model
//! of the layers, bytes fetched measured at the registry, eStargz layers, and corrupt bytes on
//! the wire turning into EIO, never into wrong data.

mod common;
use common::cli::Mounted;
use common::testdata::{pseudo_mixed, Mix, XorShift64};

use common::{Fault, FaultProxy, ImageBuilder, Layer, OutputExt, Registry, StrataEnv};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Half random, half letters: the layers compress a little, like real files.
const HALF_TEXT: Mix = Mix {
    random: 24,
    period: 48,
    letters: 5,
};

/// What the merged tree must contain: path -> Some(bytes) for files, None for dirs.
type Model = BTreeMap<String, Option<Vec<u8>>>;
/// One layer as (path, Some(content) for files / None for dirs and markers).
type LayerSpec<'a> = Vec<(&'a str, Option<Vec<u8>>)>;

/// Apply layers the OCI way, independently of strata's own code.
fn model(layers: &[LayerSpec<'_>]) -> Model {
    let mut m = Model::new();
    for layer in layers {
        for (path, data) in layer {
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
            if name == ".wh..wh..opq" {
                let prefix = format!("{dir}/");
                m.retain(|k, _| !k.starts_with(&prefix));
            } else if let Some(victim) = name.strip_prefix(".wh.") {
                let v = if dir.is_empty() {
                    victim.to_string()
                } else {
                    format!("{dir}/{victim}")
                };
                let prefix = format!("{v}/");
                m.retain(|k, _| k != &v && !k.starts_with(&prefix));
            } else {
                m.insert(path.to_string(), data.clone());
            }
        }
    }
    m
}

fn stats(env: &StrataEnv, dir: &Path) -> serde_json::Value {
    let out = env.run(&["stats", "--json", dir.to_str().unwrap()]);
    out.assert_success();
    serde_json::from_str(&out.stdout_str()).unwrap()
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn walk(root: &Path, rel: &str, out: &mut BTreeMap<String, Option<String>>) {
    for e in std::fs::read_dir(root.join(rel)).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let p = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            out.insert(p.clone(), None);
            walk(root, &p, out);
        } else if ft.is_file() {
            out.insert(p.clone(), Some(sha(&std::fs::read(e.path()).unwrap())));
        }
    }
}

/// The test image pushed as `REPO:v1` with its sidecar index published (`strata index
/// --push`): the image, what its tree must be, and its reference.
fn indexed_test_image(reg: &Registry, repo: &str) -> (common::BuiltImage, Model, String) {
    let (layers, expected) = test_layers();
    let mut b = ImageBuilder::new();
    for l in layers {
        b = b.layer(l);
    }
    let img = b.build("v1");
    img.push(reg, &format!("{repo}:v1"));
    let reference = format!("{}/{repo}:v1", reg.host());
    StrataEnv::new()
        .run(&["index", &reference, "--push"])
        .assert_success();
    (img, expected, reference)
}

/// The mount at `dir` read both layers through sidecar indexes (`strata stats`).
fn assert_sidecar_sources(env: &StrataEnv, dir: &Path) {
    let s = stats(env, dir);
    assert_eq!(
        s["index_sources"],
        serde_json::json!(["Sidecar", "Sidecar"]),
        "{s}"
    );
}

fn test_layers() -> (Vec<Layer>, Model) {
    let big = pseudo_mixed(12 << 20, 1, HALF_TEXT);
    let l1: LayerSpec = vec![
        ("etc", None),
        ("etc/os-release", Some(b"NAME=strata-test\n".to_vec())),
        ("usr", None),
        ("usr/lib", None),
        ("usr/lib/big.bin", Some(big)),
        ("usr/lib/small.txt", Some(b"small file\n".to_vec())),
        ("opt", None),
        ("opt/old", None),
        ("opt/old/a", Some(b"old a".to_vec())),
        ("opt/old/b", Some(b"old b".to_vec())),
        ("var", None),
        ("var/gone.txt", Some(b"to be deleted".to_vec())),
    ];
    let l2: LayerSpec = vec![
        ("var/.wh.gone.txt", None),
        ("opt/old/.wh..wh..opq", None),
        ("opt/old/c", Some(b"new c".to_vec())),
        ("etc/os-release", Some(b"NAME=strata-test v2\n".to_vec())),
        ("usr/lib/mid.bin", Some(pseudo_mixed(3 << 20, 2, HALF_TEXT))),
    ];
    let expected = model(&[l1.clone(), l2.clone()]);
    let to_layer = |entries: &[(&str, Option<Vec<u8>>)]| {
        let mut l = Layer::new();
        for (p, d) in entries {
            let name = p.rsplit('/').next().unwrap_or(p);
            l = if *name == *".wh..wh..opq" {
                l.opaque(p.rsplit_once('/').map(|x| x.0).unwrap_or(""))
            } else if let Some(v) = name.strip_prefix(".wh.") {
                let dir = p.rsplit_once('/').map(|x| x.0).unwrap_or("");
                l.whiteout(&if dir.is_empty() {
                    v.to_string()
                } else {
                    format!("{dir}/{v}")
                })
            } else {
                match d {
                    Some(data) => l.file(p, data.clone()),
                    None => l.dir(p),
                }
            };
        }
        l.symlink("usr/lib/link", "big.bin")
    };
    (vec![to_layer(&l1), to_layer(&l2)], expected)
}

fn check_tree(mnt: &Path, expected: &Model) {
    let mut got = BTreeMap::new();
    walk(mnt, "", &mut got);
    got.remove("usr/lib/link");
    let want: BTreeMap<String, Option<String>> = expected
        .iter()
        .map(|(k, v)| (k.clone(), v.as_ref().map(|d| sha(d))))
        .collect();
    assert_eq!(
        got, want,
        "merged tree through the mount differs from the model"
    );
    assert_eq!(
        std::fs::read_link(mnt.join("usr/lib/link")).unwrap(),
        PathBuf::from("big.bin")
    );
}

/// Digests of the blobs in `reg`'s storage whose data starts with `magic`.
fn stored_blobs_starting_with(reg: &Registry, magic: &[u8]) -> Vec<String> {
    let root = reg.storage_dir().join("docker/registry/v2/blobs/sha256");
    let mut out = Vec::new();
    for prefix in std::fs::read_dir(&root).unwrap() {
        for blob in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
            let blob = blob.unwrap().path();
            let data = std::fs::read(blob.join("data")).unwrap_or_default();
            if data.starts_with(magic) {
                let hex = blob.file_name().unwrap().to_string_lossy().into_owned();
                out.push(format!("sha256:{hex}"));
            }
        }
    }
    out
}

/// A compressed index head altered on the way is not used (its digest fails): the mount
/// fetches the plain head with a Range request instead and every byte is right.
#[test]
fn an_altered_compressed_index_head_falls_back_to_the_plain_head() {
    let reg = Registry::start();
    let (_, expected, _) = indexed_test_image(&reg, "lazy/zhead");
    let zheads = stored_blobs_starting_with(&reg, &[0x28, 0xb5, 0x2f, 0xfd]);
    let indexes = stored_blobs_starting_with(&reg, b"STRATAIX");
    assert_eq!(zheads.len(), indexes.len(), "{zheads:?} {indexes:?}");

    let proxy = FaultProxy::in_front_of(&reg);
    for d in &zheads {
        proxy.on_path(d, None, Fault::FlipByte);
    }
    let env = StrataEnv::new();
    let m = env.mount(
        &format!("{}/lazy/zhead:v1", proxy.host()),
        &["--no-prefetch"],
    );
    assert!(proxy.faults_applied() >= zheads.len());
    for d in &indexes {
        assert!(
            proxy.request_count(d) >= 1,
            "plain head of {d} not fetched after its compressed copy failed"
        );
    }
    check_tree(&m.dir, &expected);
    assert_sidecar_sources(&env, &m.dir);
}

/// The referrers listing announces the compressed heads (so a mount fetches them with the
/// sidecar manifest); a listing that lies about them is only a wasted fetch: the manifest's
/// own list decides what is used, and every byte is right.
#[test]
fn a_forged_heads_listing_is_only_a_hint() {
    let reg = Registry::start();
    let (img, expected, reference) = indexed_test_image(&reg, "lazy/hint");
    let m = reg.get_manifest("lazy/hint", "v1");
    let manifest = format!("sha256:{:x}", Sha256::digest(&m.body));
    let tag = manifest.replace(':', "-");
    let listing: serde_json::Value =
        serde_json::from_slice(&reg.get_manifest("lazy/hint", &tag).body).unwrap();
    let heads_note = "dev.strata.index.heads";
    let art = listing["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["artifactType"] == "application/vnd.strata.index.v5")
        .expect("sidecar in the listing")
        .clone();
    let heads: Vec<serde_json::Value> =
        serde_json::from_str(art["annotations"][heads_note].as_str().expect("heads note")).unwrap();
    assert_eq!(heads.len(), img.layers.len(), "{heads:?}");

    // Honest listing: each compressed head is fetched once, with the manifest.
    let env = StrataEnv::new();
    let mark = reg.served().len();
    let mnt = env.mount(&reference, &["--no-prefetch"]);
    let served: Vec<_> = reg.served().into_iter().skip(mark).collect();
    for h in &heads {
        let d = h["digest"].as_str().unwrap();
        let n = served
            .iter()
            .filter(|s| s.method == "GET" && s.uri.ends_with(d))
            .count();
        assert_eq!(n, 1, "compressed head {d} fetched {n} times: {served:?}");
    }
    check_tree(&mnt.dir, &expected);
    drop(mnt);

    // Forged listing: the heads note names the image's layer blobs instead (real blobs of
    // the repository, digests right, not heads).
    let forged_heads: Vec<serde_json::Value> = heads
        .iter()
        .zip(&img.layers)
        .map(|(h, l)| serde_json::json!({"layer": h["layer"], "digest": l.digest, "size": l.size}))
        .collect();
    let mut forged = listing.clone();
    for d in forged["manifests"].as_array_mut().unwrap() {
        if d["artifactType"] == "application/vnd.strata.index.v5" {
            d["annotations"][heads_note] =
                serde_json::Value::String(serde_json::to_string(&forged_heads).unwrap());
        }
    }
    let proxy = FaultProxy::in_front_of(&reg);
    proxy.on_path(
        &format!("/manifests/{tag}"),
        None,
        Fault::serve(
            "application/vnd.oci.image.index.v1+json",
            serde_json::to_vec(&forged).unwrap(),
        ),
    );
    let env = StrataEnv::new();
    let mnt = env.mount(
        &format!("{}/lazy/hint:v1", proxy.host()),
        &["--no-prefetch"],
    );
    assert!(
        proxy.faults_applied() >= 1,
        "the forged listing was not asked for"
    );
    for l in &img.layers {
        assert!(
            proxy.request_count(&l.digest) >= 1,
            "the forged note's blob {} was not fetched",
            l.digest
        );
    }
    check_tree(&mnt.dir, &expected);
    assert_sidecar_sources(&env, &mnt.dir);
}

#[test]
fn sidecar_index_gives_a_lazy_exact_mount() {
    let reg = Registry::start();
    let (layers, expected) = test_layers();
    let mut b = ImageBuilder::new();
    for l in layers {
        b = b.layer(l);
    }
    let img = b.build("v1");
    img.push(&reg, "lazy/app:v1");
    let reference = format!("{}/lazy/app:v1", reg.host());
    let image_bytes: u64 = img.layers.iter().map(|l| l.size).sum();

    // Publisher: builds the indexes and pushes them as a sidecar artifact.
    let publisher = StrataEnv::new();
    publisher
        .run(&["index", &reference, "--push"])
        .assert_success();

    // A fresh machine: mounts lazily, reads one small file.
    let env = StrataEnv::new();
    reg.settle_logs();
    let served_before = reg.bytes_served();
    let mark = reg.served().len();
    let m = env.mount(&reference, &["--no-prefetch"]);
    // The index heads came as their zstd-compressed copies (published beside the index
    // blobs), whole: no Range request into an index blob while mounting.
    let blob_starts = |uri: &str, magic: &[u8]| {
        uri.rsplit_once("/blobs/").is_some_and(|(_, d)| {
            std::fs::read(reg.blob_path(d)).is_ok_and(|b| b.starts_with(magic))
        })
    };
    let mounting: Vec<_> = reg.served().into_iter().skip(mark).collect();
    let zheads = mounting
        .iter()
        .filter(|s| s.method == "GET" && s.status == 200)
        .filter(|s| blob_starts(&s.uri, &[0x28, 0xb5, 0x2f, 0xfd]))
        .count();
    assert!(
        zheads >= 1,
        "no compressed index head fetched: {mounting:?}"
    );
    assert!(
        !mounting
            .iter()
            .any(|s| s.method == "GET" && blob_starts(&s.uri, b"STRATAIX")),
        "an index blob was read while mounting: {mounting:?}"
    );
    // Security default: only the mounting user may use a plain `strata mount`.
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(m.dir.to_str().unwrap()))
        .expect("mount in mountinfo");
    assert!(!line.contains("allow_other"), "{line}");
    assert_eq!(
        std::fs::read(m.dir.join("usr/lib/small.txt")).unwrap(),
        b"small file\n"
    );
    assert_sidecar_sources(&env, &m.dir);
    // The mount fetched the heads of the index blobs only: each layer's gzip windows come
    // from the sidecar blob one at a time, with the first span that needs them.
    let ixdir = env.root().join("indexes");
    let names: Vec<String> = std::fs::read_dir(&ixdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let heads = names
        .iter()
        .filter(|n| n.ends_with(".windows-from"))
        .count();
    assert!(heads >= 1, "no head-only index: {names:?}");
    // Local copies of sidecar pieces: files in the `<layer>.<suffix>` directories.
    let copies = |suffix: &str| -> usize {
        names
            .iter()
            .filter(|n| n.ends_with(suffix))
            .map(|n| std::fs::read_dir(ixdir.join(n)).unwrap().count())
            .sum()
    };
    let windows_fetched = copies(".windows");
    assert!(
        windows_fetched <= 2,
        "{windows_fetched} windows for one small file"
    );
    // Format 5: the block records of the spans read, by group, not the whole section.
    let groups_fetched = copies(".groups");
    assert!(
        (1..=2).contains(&groups_fetched),
        "{groups_fetched} block record groups for one small file: {names:?}"
    );
    reg.settle_logs();
    let served = reg.bytes_served() - served_before;
    assert!(
        served < image_bytes / 3,
        "reading one small file fetched {served} of {image_bytes} bytes"
    );
    assert!(
        !env.root()
            .join("blobs/sha256")
            .join(&img.layers[0].digest[7..])
            .exists(),
        "layer was pulled"
    );

    // Every byte of every file equals the model; whiteouts and opaque dirs applied.
    check_tree(&m.dir, &expected);
    // Random ranges of the big file across span boundaries.
    let big = &expected["usr/lib/big.bin"].clone().unwrap();
    let f = std::fs::File::open(m.dir.join("usr/lib/big.bin")).unwrap();
    use std::os::unix::fs::FileExt;
    for (i, len) in [(2u64 << 20) - 3, 1, 4096, (4 << 20) + 17, 12 << 20]
        .iter()
        .zip([7usize, 100_000, 3, 5000, 10])
    {
        let start = (*i).min(big.len() as u64 - 1);
        let mut buf = vec![0u8; len];
        let n = f.read_at(&mut buf, start).unwrap();
        assert_eq!(&buf[..n], &big[start as usize..start as usize + n]);
    }

    let inos = |dir: &Path| -> Vec<u64> {
        use std::os::unix::fs::MetadataExt;
        ["usr", "usr/lib/small.txt", "usr/lib/big.bin"]
            .iter()
            .map(|p| std::fs::symlink_metadata(dir.join(p)).unwrap().ino())
            .collect()
    };
    let first_inos = inos(&m.dir);
    drop(m);

    // Remount: everything is local now, nothing more is fetched; the merged tree comes from
    // the stored copy (trees/<manifest>-<key>.tree) and inode numbers are the same.
    // (Stored off the mount's path, just after the mount: polled.)
    let trees = env.root().join("trees");
    let listed = || -> Vec<PathBuf> {
        std::fs::read_dir(&trees)
            .map(|rd| rd.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    };
    let stored = common::poll_until(
        "the merged tree to be stored",
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(20),
        || Some(listed()).filter(|l| !l.is_empty()),
    );
    assert_eq!(stored.len(), 1, "{stored:?}");
    let tree_bytes = std::fs::read(&stored[0]).unwrap();
    reg.settle_logs();
    let before = reg.bytes_served();
    let m = env.mount(&reference, &["--no-prefetch"]);
    check_tree(&m.dir, &expected);
    assert_eq!(inos(&m.dir), first_inos);
    reg.settle_logs();
    assert_eq!(reg.bytes_served(), before, "remount refetched bytes");
    drop(m);

    // A damaged stored tree is refused and rebuilt: the mount is still exact.
    let mut damaged = tree_bytes.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x01;
    std::fs::write(&stored[0], &damaged).unwrap();
    let m = env.mount(&reference, &["--no-prefetch"]);
    check_tree(&m.dir, &expected);
    assert_eq!(inos(&m.dir), first_inos);
    drop(m);
    common::poll_until(
        "the rebuilt tree to be stored again",
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(20),
        || (std::fs::read(&stored[0]).ok()? == tree_bytes).then_some(()),
    );

    // rmi removes the stored tree with the image.
    env.run(&["rmi", &reference]).assert_success();
    assert_eq!(std::fs::read_dir(&trees).unwrap().count(), 0);
}

#[test]
fn corrupt_bytes_become_eio_and_recover() {
    let reg = Registry::start();
    let (layers, expected) = test_layers();
    let mut b = ImageBuilder::new();
    for l in layers {
        b = b.layer(l);
    }
    b.build("v1").push(&reg, "lazy/bad:v1");
    let publisher = StrataEnv::new();
    publisher
        .run(&["index", &format!("{}/lazy/bad:v1", reg.host()), "--push"])
        .assert_success();

    let proxy = FaultProxy::in_front_of(&reg);
    let env = StrataEnv::new();
    let m = env.mount(&format!("{}/lazy/bad:v1", proxy.host()), &["--no-prefetch"]);
    proxy.handle().set(Fault::FlipByte);
    let err =
        std::fs::read(m.dir.join("usr/lib/mid.bin")).expect_err("corrupt bytes must not be served");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    proxy.handle().set(Fault::Pass);
    let data = std::fs::read(m.dir.join("usr/lib/mid.bin")).unwrap();
    assert_eq!(Some(data), expected["usr/lib/mid.bin"].clone());
}

/// Re-encode every layer of `img` as eStargz (1 MiB chunks), rewrite the manifest with the TOC
/// annotations and push it as `repo`.
fn push_as_estargz(img: &common::BuiltImage, reg: &Registry, repo: &str) {
    // Re-encode both layers as eStargz and rewrite the manifest with the TOC annotations.
    let layout = &img.layout;
    let mut manifest: serde_json::Value = serde_json::from_slice(&img.manifest).unwrap();
    for (i, l) in img.layers.iter().enumerate() {
        let (blob, toc) = strata::layer::estargz::build(&l.tar, 1 << 20).unwrap();
        let d = format!("sha256:{}", sha(&blob));
        std::fs::write(layout.join("blobs/sha256").join(&d[7..]), &blob).unwrap();
        let desc = &mut manifest["layers"][i];
        desc["digest"] = d.into();
        desc["size"] = blob.len().into();
        desc["annotations"] =
            serde_json::json!({"containerd.io/snapshot/stargz/toc.digest": toc.to_string()});
    }
    let body = serde_json::to_vec(&manifest).unwrap();
    let md = format!("sha256:{}", sha(&body));
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
    img.push(reg, repo);
}

#[test]
fn estargz_layer_is_read_through_its_toc() {
    let reg = Registry::start();
    let (layers, expected) = test_layers();
    let mut b = ImageBuilder::new();
    for l in layers {
        b = b.layer(l);
    }
    let img = b.build("v1");
    push_as_estargz(&img, &reg, "lazy/stargz:v1");

    let env = StrataEnv::new();
    let m = env.mount(
        &format!("{}/lazy/stargz:v1", reg.host()),
        &["--no-prefetch"],
    );
    assert_eq!(
        std::fs::read(m.dir.join("usr/lib/small.txt")).unwrap(),
        b"small file\n"
    );
    let s = stats(&env, &m.dir);
    assert_eq!(
        s["index_sources"],
        serde_json::json!(["Estargz", "Estargz"]),
        "{s}"
    );
    assert!(
        s["cache"]["bytes_fetched"].as_u64().unwrap() < 1 << 20,
        "{s}"
    );
    check_tree(&m.dir, &expected);
}

#[test]
fn unindexed_image_is_downloaded_whole_and_says_so() {
    let reg = Registry::start();
    let (layers, expected) = test_layers();
    let mut b = ImageBuilder::new();
    for l in layers {
        b = b.layer(l);
    }
    b.build("v1").push(&reg, "lazy/plain:v1");
    let env = StrataEnv::new();
    let dir = env.scratch().join("mnt");
    std::fs::create_dir_all(&dir).unwrap();
    let out = env.run(&[
        "mount",
        &format!("{}/lazy/plain:v1", reg.host()),
        dir.to_str().unwrap(),
    ]);
    out.assert_success();
    let m = Mounted { env: &env, dir };
    assert!(
        out.stdout_str().contains("downloaded whole"),
        "{}",
        out.stdout_str()
    );
    check_tree(&m.dir, &expected);
}

#[test]
fn mount_errors_name_the_problem() {
    let reg = Registry::start();
    let env = StrataEnv::new();
    let dir = env.scratch().join("mnt");
    std::fs::create_dir_all(&dir).unwrap();
    let out = env.run(&[
        "mount",
        &format!("{}/nope/none:v1", reg.host()),
        dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        out.stderr_str().contains("not found"),
        "{}",
        out.stderr_str()
    );
    let out = env.run(&["mount", "busybox", "/nonexistent/dir"]);
    assert!(
        out.stderr_str().contains("not a directory"),
        "{}",
        out.stderr_str()
    );
}

/// Wait until the mount's profile-first prefetch (from `source`) has fetched all of its `files`
/// files, and check that nothing read the mount meanwhile.
fn prefetched_before_any_read(env: &StrataEnv, dir: &Path, source: &str, files: u64) {
    use std::time::Duration;
    let s = common::poll_until(
        &format!("{source} profile prefetched"),
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            let s = stats(env, dir);
            (s["profile"]["source"] == source && s["profile"]["done"] == files).then_some(s)
        },
    );
    assert_eq!(s["profile"]["files"], files, "{s}");
    assert_eq!(s["fs_reads"], 0, "{s}");
}

/// The access profile recorded on one machine, published with `strata profile push`, steers
/// the first prefetch of a fresh machine: its files are fetched before anything reads them.
#[test]
fn published_access_profile_is_prefetched_on_a_fresh_machine() {
    use common::poll_until;
    use std::time::Duration;
    let reg = Registry::start();
    let (_, expected, reference) = indexed_test_image(&reg, "lazy/profiled");

    // Machine A: a workload reads three files; the profile is kept at unmount.
    let a = StrataEnv::new();
    let read_order = ["usr/lib/mid.bin", "usr/lib/small.txt", "etc/os-release"];
    {
        let m = a.mount(&reference, &["--no-prefetch"]);
        for p in read_order {
            assert_eq!(
                std::fs::read(m.dir.join(p)).unwrap(),
                *expected[p].as_ref().unwrap()
            );
        }
    }
    let shown = poll_until(
        "profile saved at unmount",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let out = a.run(&["profile", "show", &reference]);
            out.status.success().then(|| out.stdout_str())
        },
    );
    let paths: Vec<&str> = shown.lines().filter_map(|l| l.split('\t').nth(1)).collect();
    assert_eq!(
        paths,
        ["/usr/lib/mid.bin", "/usr/lib/small.txt", "/etc/os-release"]
    );
    a.run(&["profile", "push", &reference]).assert_success();
    // Pushing from a machine without a profile says why.
    let none = StrataEnv::new().run(&["profile", "push", &reference]);
    assert!(!none.status.success());
    assert!(
        none.stderr_str().contains("no access profile"),
        "{}",
        none.stderr_str()
    );

    // Machine B: nothing read yet, the three files are fetched from the published profile.
    let b_env = StrataEnv::new();
    let m = b_env.mount(&reference, &[]);
    prefetched_before_any_read(&b_env, &m.dir, "registry", 3);
    for p in read_order {
        assert_eq!(
            std::fs::read(m.dir.join(p)).unwrap(),
            *expected[p].as_ref().unwrap()
        );
    }
    let s = stats(&b_env, &m.dir);
    assert_eq!(
        s["fs_reads_waited"], 0,
        "profile files waited on the network: {s}"
    );
    // A profile with the parts read guides the fetches alone (the warm-ups stand aside).
    assert_eq!(s["profile"]["guided"], true, "{s}");
    drop(m);

    // Machine C with `prefetch-profile: local` ignores the published profile.
    let c = StrataEnv::new();
    c.write_config(&serde_json::json!({"prefetch-profile": "local"}));
    let m = c.mount(&reference, &[]);
    // The profile phase comes first, the whole layers after it: once the whole image is
    // prefetched, no profile was chosen.
    let s = poll_until(
        "prefetch done on machine C",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            let s = stats(&c, &m.dir);
            (s["prefetch_done"] == true).then_some(s)
        },
    );
    assert_eq!(s["profile"]["source"], "", "{s}");
    assert_eq!(s["profile"]["files"], 0, "{s}");
    assert_eq!(s["profile"]["guided"], false, "{s}");
    assert!(
        s["cache"]["prefetched_spans"].as_u64().unwrap() > 0,
        "the whole-layer prefetch never ran: {s}"
    );
    check_tree(&m.dir, &expected);
}

/// A profile keeps which parts of each file were read, and a fresh machine prefetches those
/// parts: a read far into a large file (past the start a profile without ranges prefetches)
/// waits for nothing there.
#[test]
fn a_published_profile_prefetches_the_parts_read() {
    use common::poll_until;
    use std::io::{Read, Seek, SeekFrom};
    use std::time::Duration;
    let reg = Registry::start();
    let (_, expected, reference) = indexed_test_image(&reg, "lazy/ranges");
    let big = expected["usr/lib/big.bin"].clone().unwrap();
    let at = 9u64 << 20;
    let read_far = |dir: &Path| {
        let mut f = std::fs::File::open(dir.join("usr/lib/big.bin")).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        let mut buf = vec![0u8; 64 << 10];
        f.read_exact(&mut buf).unwrap();
        assert_eq!(buf, big[at as usize..at as usize + buf.len()]);
    };
    // Machine A reads 64 KiB at 9 MiB of the 12 MiB file.
    let a = StrataEnv::new();
    {
        let m = a.mount(&reference, &["--no-prefetch"]);
        read_far(&m.dir);
    }
    let ranges_file = poll_until(
        "profile saved at unmount",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            std::fs::read_dir(a.root().join("profiles"))
                .ok()?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.to_string_lossy().ends_with(".ranges.json"))
        },
    );
    let ranges: Vec<Vec<[u64; 2]>> =
        serde_json::from_slice(&std::fs::read(&ranges_file).unwrap()).unwrap();
    assert_eq!(ranges.len(), 1, "{ranges:?}");
    assert!(
        ranges[0]
            .iter()
            .any(|r| r[0] <= at && r[1] >= at + (64 << 10)),
        "the read is not kept: {ranges:?}"
    );
    assert!(ranges[0].iter().all(|r| r[0] > 0), "{ranges:?}");
    a.run(&["profile", "push", &reference]).assert_success();

    // Machine B: the prefetch fetches that part, so the same read waits for nothing.
    let b_env = StrataEnv::new();
    let m = b_env.mount(&reference, &[]);
    prefetched_before_any_read(&b_env, &m.dir, "registry", 1);
    read_far(&m.dir);
    let s = stats(&b_env, &m.dir);
    assert_eq!(s["fs_reads_waited"], 0, "the part read waited: {s}");
}

/// eStargz prioritised files: the files before `.prefetch.landmark` are fetched right after
/// the mount, before anything reads them; the landmark itself never shows.
#[test]
fn estargz_prefetch_landmark_files_are_fetched_first() {
    let reg = Registry::start();
    let first = pseudo_mixed(3 << 20, 7, HALF_TEXT);
    let layer = Layer::new()
        .dir("app")
        .file("app/first.bin", first.clone())
        .file("app/second.txt", b"second\n".to_vec())
        .file(".prefetch.landmark", vec![0xf])
        .file("app/later.bin", pseudo_mixed(3 << 20, 8, HALF_TEXT));
    let img = ImageBuilder::new().layer(layer).build("v1");
    push_as_estargz(&img, &reg, "lazy/landmark:v1");
    let reference = format!("{}/lazy/landmark:v1", reg.host());

    let env = StrataEnv::new();
    let m = env.mount(&reference, &[]);
    prefetched_before_any_read(&env, &m.dir, "estargz", 2);
    assert_eq!(std::fs::read(m.dir.join("app/first.bin")).unwrap(), first);
    assert_eq!(
        std::fs::read(m.dir.join("app/second.txt")).unwrap(),
        b"second\n"
    );
    let s = stats(&env, &m.dir);
    assert_eq!(s["fs_reads_waited"], 0, "{s}");
    assert!(!m.dir.join(".prefetch.landmark").exists());
}

/// Single-flight end to end: eight threads read random ranges of the same lazily fetched files
/// through FUSE; every byte is right, and the Range requests that reached the registry (seen by
/// a pass-through proxy) never overlap beyond a shared checkpoint byte: no span was fetched
/// twice.
#[test]
fn concurrent_readers_fetch_each_byte_once() {
    use std::os::unix::fs::FileExt;
    let reg = Registry::start();
    let (img, expected, _) = indexed_test_image(&reg, "lazy/flight");
    let proxy = FaultProxy::in_front_of(&reg);
    let env = StrataEnv::new();
    let m = env.mount(
        &format!("{}/lazy/flight:v1", proxy.host()),
        &["--no-prefetch"],
    );
    let files = ["usr/lib/big.bin", "usr/lib/mid.bin"];
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let (dir, expected) = (&m.dir, &expected);
            s.spawn(move || {
                let mut rng = XorShift64::from_state(t.wrapping_mul(0x9E37_79B9) | 1);
                for i in 0..60 {
                    let x = rng.next_u64();
                    let name = files[(i + t as usize) % 2];
                    let want = expected[name].as_ref().unwrap();
                    let start = (x % want.len() as u64) as usize;
                    let len = ((x >> 32) % (256 << 10)) as usize + 1;
                    let end = (start + len).min(want.len());
                    let f = std::fs::File::open(dir.join(name)).unwrap();
                    let mut buf = vec![0u8; end - start];
                    f.read_exact_at(&mut buf, start as u64).unwrap();
                    assert!(buf == want[start..end], "{name} {start}..{end}");
                }
            });
        }
    });
    let layer_digests: Vec<String> = img.layers.iter().map(|l| l.digest.clone()).collect();
    proxy.handle().assert_ranges_fetched_once(&layer_digests);
}

/// `len` bytes at `offset` of `path` read with one `pread` on an `O_DIRECT` descriptor: no
/// page cache, so the kernel sends exactly one FUSE READ of `len` bytes (for `len` up to the
/// mount's max read size) — the reads made are known independently of strata's counters.
fn direct_pread(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap();
    // O_DIRECT wants an aligned buffer.
    let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
    // SAFETY: layout has a non-zero size; the buffer is freed below and only read as
    // initialised after pread wrote `n` bytes into it.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!ptr.is_null());
    // SAFETY: ptr points to `len` zeroed bytes owned here.
    let buf = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
    let n = f.read_at(buf, offset).unwrap();
    let out = buf[..n].to_vec();
    // SAFETY: allocated above with the same layout.
    unsafe { std::alloc::dealloc(ptr, layout) };
    out
}

/// The counters `strata stats` shows, checked against independent measurements rather than
/// against zero: the reads this test makes (one FUSE READ per `O_DIRECT` pread, known byte
/// counts), and the registry's access log (every Range request it answered for the layer
/// blobs, and the bytes it sent). A counter stuck at 0, or counting twice, fails here.
#[test]
fn counters_agree_with_the_reads_made_and_the_registry_log() {
    let reg = Registry::start();
    let (img, expected, reference) = indexed_test_image(&reg, "lazy/counted");
    let layer_digests: Vec<String> = img.layers.iter().map(|l| l.digest.clone()).collect();
    let env = StrataEnv::new();
    let m = env.mount(&reference, &["--no-prefetch"]);
    let mark = reg.served().len();
    let s0 = stats(&env, &m.dir);
    let n = |s: &serde_json::Value, k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k}: {s}"));
    let c = |s: &serde_json::Value, k: &str| {
        s["cache"][k]
            .as_u64()
            .unwrap_or_else(|| panic!("cache.{k}: {s}"))
    };
    // The cache counters against what the registry served since the mount.
    let agree_with_registry = |s: &serde_json::Value, what: &str| {
        let (gets, bytes) = reg.range_gets_since(mark, &layer_digests);
        assert_eq!(
            c(s, "requests") - c(&s0, "requests"),
            gets as u64,
            "{what}: cache.requests vs Range GETs the registry answered: {s}"
        );
        assert_eq!(
            c(s, "bytes_fetched") - c(&s0, "bytes_fetched"),
            bytes,
            "{what}: cache.bytes_fetched vs bytes the registry sent: {s}"
        );
        gets
    };

    // Three cold 4 KiB reads, 5 MiB apart in big.bin (different spans): three FUSE
    // READs, each waited on the network, each caused at least one Range request.
    let big_path = m.dir.join("usr/lib/big.bin");
    let big = expected["usr/lib/big.bin"].as_ref().unwrap();
    for (i, off) in [0u64, 5 << 20, 10 << 20].into_iter().enumerate() {
        let got = direct_pread(&big_path, off, 4096);
        assert!(
            got == big[off as usize..off as usize + 4096],
            "big.bin @{off}"
        );
        let s = stats(&env, &m.dir);
        let k = i as u64 + 1;
        assert_eq!(n(&s, "fs_reads") - n(&s0, "fs_reads"), k, "{s}");
        assert_eq!(
            n(&s, "fs_bytes_read") - n(&s0, "fs_bytes_read"),
            4096 * k,
            "{s}"
        );
        assert_eq!(
            n(&s, "fs_reads_waited") - n(&s0, "fs_reads_waited"),
            k,
            "{s}"
        );
        let gets = agree_with_registry(&s, &format!("cold read {k}"));
        assert!(gets >= k as usize, "{gets} Range GETs for {k} cold reads");
    }
    // The same bytes again: a READ served from the cache, nothing waited, nothing fetched.
    let before = stats(&env, &m.dir);
    let got = direct_pread(&big_path, 0, 4096);
    assert!(got == big[..4096]);
    let s = stats(&env, &m.dir);
    assert_eq!(n(&s, "fs_reads"), n(&before, "fs_reads") + 1, "{s}");
    assert_eq!(
        n(&s, "fs_reads_waited"),
        n(&before, "fs_reads_waited"),
        "{s}"
    );
    assert_eq!(
        c(&s, "mem_hits") + c(&s, "disk_hits"),
        c(&before, "mem_hits") + c(&before, "disk_hits") + 1,
        "{s}"
    );
    assert_eq!(c(&s, "requests"), c(&before, "requests"), "{s}");
    agree_with_registry(&s, "cached read");

    // A whole file through the page cache: every byte of it crosses FUSE once.
    let mid = std::fs::read(m.dir.join("usr/lib/mid.bin")).unwrap();
    assert!(&mid == expected["usr/lib/mid.bin"].as_ref().unwrap());
    let s2 = stats(&env, &m.dir);
    assert_eq!(
        n(&s2, "fs_bytes_read") - n(&s, "fs_bytes_read"),
        mid.len() as u64,
        "{s2}"
    );
    let reads = n(&s2, "fs_reads") - n(&s, "fs_reads");
    assert!(
        (3..=mid.len() as u64 / 4096).contains(&reads),
        "{reads} READs for a 3 MiB file: {s2}"
    );
    agree_with_registry(&s2, "whole file");
}
