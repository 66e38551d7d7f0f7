//! SOCI indexes (issue 20, reuse): images indexed the way AWS's SOCI tools index them mount
//! lazily without `strata index`. The SOCI CLI is Go and cannot be installed here, so the
//! indexes are written by the harness's own writer (`common/soci.rs`, field by field after
//! soci-snapshotter's sources, independent of strata's code) and pushed to the real
//! registry:
//! - v1: a referrer of the image manifest (the `sha256-<hex>` referrers tag, as the registry
//!   has no referrers API); read lazily, a fraction of the layer fetched, every byte right;
//!   cached spans survive a restart of the daemon (block digests learned at the first decode);
//!   under `index-trust: signed` used only once it carries a cosign signature by the key;
//! - v2: `soci convert`'s SOCI-enabled image (the image manifest annotated with the index
//!   digest, both in an image index): used under `index-trust: bound`;
//! - a mirror that serves altered layer bytes with a forged v1 SOCI index consistent with
//!   them: never believed under the default policy (control: believed when the proxy *is*
//!   the registry, which shows the forgery works);
//! - a malformed zTOC: a clear error in the log, no panic, nothing kept from it (the layer is
//!   downloaded whole instead).

mod common;
use common::forge::{hex, put_blob, put_manifest};
use common::soci::{self, SociLayer};
use common::testdata::pseudo;
use common::{sha256_digest, FaultProxy, ImageBuilder, Layer, OutputExt, Registry, StrataEnv};
use std::path::Path;

const FILES: usize = 8;
const FILE_LEN: usize = 1 << 20;
const SPAN: usize = 256 << 10;

fn honest(i: usize) -> Vec<u8> {
    pseudo(FILE_LEN, 500 + i as u64)
}

fn altered(i: usize) -> Vec<u8> {
    pseudo(FILE_LEN, 700 + i as u64)
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// An image pushed by hand: one gzip layer (the writer's gzip, so its zTOC describes it).
struct Pushed {
    manifest: Vec<u8>,
    manifest_digest: String,
    layer_digest: String,
    layer: SociLayer,
    arch: String,
    os: String,
}

/// Build the one-layer image of `content`'s files and push it to `repo:tag`.
fn push_image(reg: &Registry, repo: &str, tag: &str, content: fn(usize) -> Vec<u8>) -> Pushed {
    push_image_level(reg, repo, tag, content, 6)
}

/// [`push_image`] with deflate `level` (0 for layers whose size must not depend on content).
fn push_image_level(
    reg: &Registry,
    repo: &str,
    tag: &str,
    content: fn(usize) -> Vec<u8>,
    level: u32,
) -> Pushed {
    let mut l = Layer::new()
        .compression(common::Compression::None)
        .dir("data");
    for i in 0..FILES {
        l = l.file(&format!("data/f{i}"), content(i));
    }
    // The builder's image gives the config (diff_ids are of the uncompressed tar).
    let img = ImageBuilder::new().layer(l).build("v1");
    let layer = soci::gzip_layer(&img.layers[0].tar, SPAN, level);
    let config = put_blob(reg, repo, &img.config);
    let layer_digest = put_blob(reg, repo, &layer.blob);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": img.config.len()},
        "layers": [{"mediaType": GZIP_LAYER, "digest": layer_digest, "size": layer.blob.len()}],
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = sha256_digest(&manifest);
    put_manifest(reg, repo, tag, OCI_MANIFEST, &manifest);
    Pushed {
        manifest,
        manifest_digest,
        layer_digest,
        layer,
        arch: img.architecture.clone(),
        os: img.os.clone(),
    }
}

/// Publish a v1 SOCI index for `img` in `repo` (zTOC `ztoc`, which claims to index
/// `img`'s layer) with the referrers tag pointing at it; returns the index digest.
fn push_soci_v1(reg: &Registry, repo: &str, img: &Pushed, ztoc: &[u8]) -> String {
    let zd = put_blob(reg, repo, ztoc);
    put_blob(reg, repo, b"{}");
    let index = soci::index_manifest(
        soci::V1,
        &[(zd, ztoc.len(), img.layer_digest.clone(), GZIP_LAYER.into())],
        Some((&img.manifest_digest, img.manifest.len())),
        SPAN,
    );
    let d = sha256_digest(&index);
    put_manifest(reg, repo, &d, OCI_MANIFEST, &index);
    // What oras writes for a registry without the referrers API: artifactType is the
    // manifest's config media type.
    let referrers = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": d, "size": index.len(), "artifactType": soci::V1}],
    });
    put_manifest(
        reg,
        repo,
        &format!("sha256-{}", hex(&img.manifest_digest)),
        OCI_INDEX,
        &serde_json::to_vec(&referrers).unwrap(),
    );
    d
}

fn stats(env: &StrataEnv, dir: &Path) -> String {
    let out = env.run(&["stats", "--json", dir.to_str().unwrap()]);
    out.assert_success();
    out.stdout_str()
}

/// Every file through the mount: honest bytes, or EIO; never altered. How many were honest.
fn read_all_never_altered(mnt: &Path) -> usize {
    let mut ok = 0;
    for i in 0..FILES {
        match std::fs::read(mnt.join(format!("data/f{i}"))) {
            Ok(b) => {
                assert!(b != altered(i), "data/f{i}: ALTERED bytes reached a reader");
                assert!(
                    b == honest(i),
                    "data/f{i}: neither honest nor altered bytes"
                );
                ok += 1;
            }
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "data/f{i}: {e}"),
        }
    }
    ok
}

#[test]
fn soci_v1_index_mounts_lazily_and_survives_a_daemon_restart() {
    let reg = Registry::start();
    let img = push_image(&reg, "soci/a", "v1", honest);
    push_soci_v1(&reg, "soci/a", &img, &img.layer.ztoc);
    let env = StrataEnv::new();
    let mark = reg.served().len();
    let m = env.mount(&format!("{}/soci/a:v1", reg.host()), &["--no-prefetch"]);
    assert_eq!(std::fs::read(m.dir.join("data/f3")).unwrap(), honest(3));
    let s = stats(&env, &m.dir);
    assert!(s.contains("\"Soci\""), "index source: {s}");
    // One listing for the indexes (strata's sidecar and SOCI v1 share it), one for the
    // access profile.
    assert_eq!(
        reg.request_count(&format!("manifests/sha256-{}", hex(&img.manifest_digest))),
        2,
        "referrers tag fetches"
    );
    let layers = [img.layer_digest.clone()];
    let (n, bytes) = reg.range_gets_since(mark, &layers);
    let size = img.layer.blob.len() as u64;
    assert!(n > 0, "the file was read by Range requests");
    assert!(
        bytes * 4 < size,
        "one file of {FILES} fetched {bytes} of the layer's {size} bytes"
    );
    eprintln!("soci v1: one 1 MiB file fetched {bytes} of {size} bytes in {n} requests");
    // Every file right, still lazily (Range requests only, never the whole blob).
    assert_eq!(read_all_never_altered(&m.dir), FILES);
    let (_, all) = reg.range_gets_since(mark, &layers);
    assert!(all <= size + size / 10, "{all} of {size}");
    drop(m);
    // A new daemon: spans come back from the disk tier, checked against the block digests
    // learned at their first decode; nothing is fetched again.
    env.stop_daemon();
    let mark = reg.served().len();
    let m = env.mount(&format!("{}/soci/a:v1", reg.host()), &["--no-prefetch"]);
    assert_eq!(read_all_never_altered(&m.dir), FILES);
    let (n, _) = reg.range_gets_since(mark, &layers);
    assert_eq!(n, 0, "cached spans were fetched again");
    drop(m);
    let log = env.daemon_logs();
    assert!(!log.contains("failed verification"), "{log}");

    // Under `index-trust: bound` an unbound (v1) SOCI index is not used.
    let strict = StrataEnv::new();
    strict.write_config(&serde_json::json!({"index-trust": "bound"}));
    let m = strict.mount(&format!("{}/soci/a:v1", reg.host()), &["--no-prefetch"]);
    assert_eq!(read_all_never_altered(&m.dir), FILES);
    let s = stats(&strict, &m.dir);
    assert!(s.contains("\"Built\"") && !s.contains("Soci"), "{s}");
    drop(m);

    // A whole-layer fetch of a SOCI layer passes the digest check: the layer's hash, and
    // every span decoded through the zTOC compared with the layer decompressed from its start.
    let whole = StrataEnv::new();
    whole
        .run(&["cache", "fetch", &format!("{}/soci/a:v1", reg.host())])
        .assert_success();
    assert!(whole
        .root()
        .join("cache.verdicts")
        .join(format!("{}.verified", hex(&img.layer_digest)))
        .exists());
}

/// `index-trust: signed`: a v1 SOCI index is used only with a cosign signature (made by the
/// harness in cosign's format) by a configured key; unsigned, the layer is downloaded whole.
#[test]
fn soci_v1_index_under_signed_needs_a_signature() {
    let reg = Registry::start();
    let img = push_image(&reg, "soci/s", "v1", honest);
    let idx = push_soci_v1(&reg, "soci/s", &img, &img.layer.ztoc);
    let dir = tempfile::tempdir().unwrap();
    let key = common::forge::test_key(dir.path(), 1);
    let config = serde_json::json!({"index-trust": "signed", "index-trust-keys": [key.public_pem]});
    let image_ref = format!("{}/soci/s:v1", reg.host());
    let env = StrataEnv::new();
    env.write_config(&config);
    let m = env.mount(&image_ref, &["--no-prefetch"]);
    assert_eq!(read_all_never_altered(&m.dir), FILES);
    let s = stats(&env, &m.dir);
    assert!(s.contains("\"Built\"") && !s.contains("Soci"), "{s}");
    drop(m);
    let log = env.daemon_logs();
    assert!(log.contains("not signed"), "{log}");

    common::forge::cosign_sign(&reg, "soci/s", &idx, &idx, &key.sk);
    let env = StrataEnv::new();
    env.write_config(&config);
    let mark = reg.served().len();
    let m = env.mount(&image_ref, &["--no-prefetch"]);
    assert_eq!(std::fs::read(m.dir.join("data/f3")).unwrap(), honest(3));
    let s = stats(&env, &m.dir);
    assert!(s.contains("\"SociSigned\""), "index source: {s}");
    let (_, bytes) = reg.range_gets_since(mark, std::slice::from_ref(&img.layer_digest));
    let size = img.layer.blob.len() as u64;
    eprintln!("signed soci v1: one 1 MiB file fetched {bytes} of {size} bytes");
    assert!(bytes * 4 < size, "{bytes} of {size}");
    assert_eq!(read_all_never_altered(&m.dir), FILES);
}

#[test]
fn soci_v2_enabled_image_is_bound_and_used_under_bound_policy() {
    let reg = Registry::start();
    let img = push_image(&reg, "soci/b", "orig", honest);
    // `soci convert`: the v2 index (no subject), the image manifest annotated with its
    // digest, both in an image index.
    let zd = put_blob(&reg, "soci/b", &img.layer.ztoc);
    put_blob(&reg, "soci/b", b"{}");
    let index = soci::index_manifest(
        soci::V2,
        &[(
            zd,
            img.layer.ztoc.len(),
            img.layer_digest.clone(),
            GZIP_LAYER.into(),
        )],
        None,
        SPAN,
    );
    let index_digest = sha256_digest(&index);
    put_manifest(&reg, "soci/b", &index_digest, OCI_MANIFEST, &index);
    let mut m: serde_json::Value = serde_json::from_slice(&img.manifest).unwrap();
    m["annotations"] = serde_json::json!({"com.amazon.soci.index-digest": index_digest});
    let manifest = serde_json::to_vec(&m).unwrap();
    let manifest_digest = sha256_digest(&manifest);
    put_manifest(&reg, "soci/b", &manifest_digest, OCI_MANIFEST, &manifest);
    let platform = serde_json::json!({"architecture": img.arch, "os": img.os});
    let oci_index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": manifest.len(),
             "platform": platform, "annotations": {"com.amazon.soci.index-digest": index_digest}},
            {"mediaType": OCI_MANIFEST, "digest": index_digest, "size": index.len(),
             "artifactType": soci::V2, "platform": platform,
             "annotations": {"com.amazon.soci.image-manifest-digest": manifest_digest}},
        ],
    });
    put_manifest(
        &reg,
        "soci/b",
        "v1-soci",
        OCI_INDEX,
        &serde_json::to_vec(&oci_index).unwrap(),
    );

    let env = StrataEnv::new();
    env.write_config(&serde_json::json!({"index-trust": "bound"}));
    let mark = reg.served().len();
    let m = env.mount(
        &format!("{}/soci/b:v1-soci", reg.host()),
        &["--no-prefetch"],
    );
    assert_eq!(std::fs::read(m.dir.join("data/f5")).unwrap(), honest(5));
    let s = stats(&env, &m.dir);
    assert!(s.contains("\"SociBound\""), "index source: {s}");
    let (_, bytes) = reg.range_gets_since(mark, std::slice::from_ref(&img.layer_digest));
    let size = img.layer.blob.len() as u64;
    assert!(bytes * 4 < size, "{bytes} of {size}");
    assert_eq!(read_all_never_altered(&m.dir), FILES);
    drop(m);
    assert_eq!(
        reg.request_count("/referrers/") + reg.request_count("manifests/sha256-"),
        0,
        "a bound index needs no referrers lookup"
    );
}

/// The attack: altered layer bytes and a forged v1 SOCI index consistent with them.
struct Attack {
    good: Pushed,
    proxy: FaultProxy,
    forged: String,
}

fn attack(reg: &Registry, name: &str) -> Attack {
    attack_into(reg, name, &format!("evil/{name}"))
}

/// [`attack`] with the forged SOCI index published in repository `into` (the image's own
/// repository: someone with push rights).
fn attack_into(reg: &Registry, name: &str, into: &str) -> Attack {
    let repo = format!("soci/{name}");
    let good = push_image_level(reg, &repo, "v1", honest, 0);
    let evil_repo = format!("evil/{name}");
    let evil = push_image_level(reg, &evil_repo, "v1", altered, 0);
    assert_eq!(
        evil.layer.blob.len(),
        good.layer.blob.len(),
        "the altered layer must have the honest one's size for the forgery to be believable"
    );
    // A zTOC over the altered blob, claiming to index the honest layer of the honest image.
    let forged_for = Pushed {
        manifest: good.manifest.clone(),
        manifest_digest: good.manifest_digest.clone(),
        layer_digest: good.layer_digest.clone(),
        layer: SociLayer {
            blob: Vec::new(),
            ztoc: Vec::new(),
        },
        arch: good.arch.clone(),
        os: good.os.clone(),
    };
    let forged = push_soci_v1(reg, into, &forged_for, &evil.layer.ztoc);
    let proxy = FaultProxy::in_front_of(reg);
    proxy.substitute(
        &format!("/v2/{repo}/blobs/{}", good.layer_digest),
        &format!("/v2/{evil_repo}/blobs/{}", evil.layer_digest),
    );
    let zd = sha256_digest(&evil.layer.ztoc);
    if into != repo {
        for p in [
            "referrers/".to_string(),
            "manifests/sha256-".to_string(),
            format!("manifests/{forged}"),
            format!("blobs/{zd}"),
            format!("blobs/{}", sha256_digest(b"{}")),
        ] {
            proxy.substitute(&format!("/v2/{repo}/{p}"), &format!("/v2/{evil_repo}/{p}"));
        }
    }
    Attack {
        good,
        proxy,
        forged,
    }
}

#[test]
fn a_mirror_serving_a_forged_soci_index_is_never_believed() {
    let reg = Registry::start();
    let a = attack(&reg, "c");
    // Control: the proxy named as the registry itself (trusted by definition under the
    // default policy) has its forged index believed and the altered bytes served.
    let direct = StrataEnv::new();
    let m = direct.mount(&format!("{}/soci/c:v1", a.proxy.host()), &["--no-prefetch"]);
    assert_eq!(
        std::fs::read(m.dir.join("data/f0")).unwrap(),
        altered(0),
        "control: a believed forged SOCI index serves the altered bytes"
    );
    assert!(stats(&direct, &m.dir).contains("\"Soci\""));
    drop(m);
    assert!(a.proxy.request_count(&a.forged) > 0);

    // The proxy as a mirror, default policy: no SOCI lookup through it, no altered byte.
    let seen = a.proxy.requests().len();
    let env = StrataEnv::new();
    env.write_config(&serde_json::json!({
        "registry-mirrors-by-host": {reg.host(): [a.proxy.url()]}
    }));
    let m = env.mount(&format!("{}/soci/c:v1", reg.host()), &["--no-prefetch"]);
    assert_eq!(read_all_never_altered(&m.dir), FILES);
    let s = stats(&env, &m.dir);
    assert!(!s.contains("Soci"), "{s}");
    drop(m);
    let asked: Vec<_> = a.proxy.requests()[seen..].to_vec();
    assert!(
        !asked.iter().any(|r| r.path.contains("/referrers/")
            || r.path.contains("manifests/sha256-")
            || r.path.contains(&a.forged)),
        "a SOCI index was looked up through the mirror: {asked:?}"
    );
    assert!(
        asked.iter().any(|r| r.path.contains(&a.good.layer_digest)),
        "the mirror was asked for the layer (and served altered bytes): {asked:?}"
    );
}

#[test]
fn a_malformed_ztoc_is_an_error_and_leaves_nothing() {
    let reg = Registry::start();
    let img = push_image(&reg, "soci/d", "v1", honest);
    // A zTOC cut in half: structurally broken.
    let bad = img.layer.ztoc[..img.layer.ztoc.len() / 2].to_vec();
    push_soci_v1(&reg, "soci/d", &img, &bad);
    let env = StrataEnv::new();
    let m = env.mount(&format!("{}/soci/d:v1", reg.host()), &["--no-prefetch"]);
    assert_eq!(read_all_never_altered(&m.dir), FILES);
    let s = stats(&env, &m.dir);
    assert!(s.contains("\"Built\""), "{s}");
    drop(m);
    let log = env.daemon_logs();
    assert!(
        log.contains("SOCI zTOC") && log.contains("not used"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    let tmp: Vec<_> = std::fs::read_dir(env.root().join("tmp"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "left in tmp/: {tmp:?}");
    let trust = std::fs::read_to_string(
        env.root()
            .join("indexes")
            .join(format!("{}.trust", hex(&img.layer_digest))),
    )
    .unwrap();
    assert_eq!(
        trust, "built",
        "the layer's index is the one built from the blob"
    );
}

/// A forged SOCI index that *is* trusted (pushed to the repository itself) while a mirror
/// serves the altered bytes: `strata cache fetch` (the layer fetched whole) fails its digest
/// check loudly, and the forged index is dropped from the store.
#[test]
fn a_trusted_forged_soci_index_fails_the_whole_layer_check() {
    let reg = Registry::start();
    let a = attack_into(&reg, "e", "soci/e");
    let env = StrataEnv::new();
    env.write_config(&serde_json::json!({
        "registry-mirrors-by-host": {reg.host(): [a.proxy.url()]}
    }));
    let out = env.run(&["cache", "fetch", &format!("{}/soci/e:v1", reg.host())]);
    out.assert_failure();
    let err = out.stderr_str();
    assert!(err.contains("does not match its digest"), "{err}");
    assert!(err.contains(a.good.layer_digest.as_str()), "{err}");
    let layer = hex(&a.good.layer_digest);
    assert!(!env.root().join("indexes").join(layer).exists());
    assert!(!env
        .root()
        .join("indexes")
        .join(format!("{layer}.blocks"))
        .exists());
    assert!(env
        .root()
        .join("cache.verdicts")
        .join(format!("{layer}.bad"))
        .exists());
}

/// `strata run` on a SOCI-indexed image (busybox and a data layer, both gzip with zTOCs, one
/// v1 SOCI index): the container reads the right bytes, and the data layer is read lazily.
#[test]
fn strata_run_reads_a_soci_indexed_image_lazily() {
    let reg = Registry::start();
    let mut data = Layer::new()
        .compression(common::Compression::None)
        .dir("data");
    for i in 0..FILES {
        data = data.file(&format!("data/f{i}"), honest(i));
    }
    let img = common::busybox_image().layer(data).build("v1");
    let repo = "soci/run";
    let config = put_blob(&reg, repo, &img.config);
    let mut descs = Vec::new();
    let mut ztocs = Vec::new();
    let mut sizes = Vec::new();
    for l in &img.layers {
        let sl = soci::gzip_layer(&l.tar, SPAN, 6);
        let d = put_blob(&reg, repo, &sl.blob);
        descs
            .push(serde_json::json!({"mediaType": GZIP_LAYER, "digest": d, "size": sl.blob.len()}));
        let zd = put_blob(&reg, repo, &sl.ztoc);
        ztocs.push((zd, sl.ztoc.len(), d.clone(), GZIP_LAYER.to_string()));
        sizes.push((d, sl.blob.len() as u64));
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": img.config.len()},
        "layers": descs,
    }))
    .unwrap();
    let manifest_digest = sha256_digest(&manifest);
    put_manifest(&reg, repo, "v1", OCI_MANIFEST, &manifest);
    put_blob(&reg, repo, b"{}");
    let index = soci::index_manifest(
        soci::V1,
        &ztocs,
        Some((&manifest_digest, manifest.len())),
        SPAN,
    );
    let index_digest = sha256_digest(&index);
    put_manifest(&reg, repo, &index_digest, OCI_MANIFEST, &index);
    let referrers = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": index_digest, "size": index.len(), "artifactType": soci::V1}],
    });
    put_manifest(
        &reg,
        repo,
        &format!("sha256-{}", hex(&manifest_digest)),
        OCI_INDEX,
        &serde_json::to_vec(&referrers).unwrap(),
    );
    let env = StrataEnv::new();
    env.write_config(&serde_json::json!({"prefetch": false}));
    let mark = reg.served().len();
    let out = env.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        &format!("{}/{repo}:v1", reg.host()),
        "sha256sum",
        "/data/f6",
    ]);
    out.assert_success();
    let want = hex(&sha256_digest(&honest(6))).to_string();
    assert!(out.stdout_str().starts_with(&want), "{}", out.stdout_str());
    let (data_layer, size) = sizes[1].clone();
    let (n, bytes) = reg.range_gets_since(mark, &[data_layer]);
    assert!(
        n > 0 && bytes * 4 < size,
        "data layer: {bytes} of {size} bytes"
    );
    let whole = reg.served()[mark..]
        .iter()
        .filter(|s| s.method == "GET" && s.status == 200 && s.uri.contains("/blobs/sha256:"))
        .filter(|s| sizes.iter().any(|(d, _)| s.uri.ends_with(d.as_str())))
        .count();
    assert_eq!(whole, 0, "a layer was downloaded whole");
}
