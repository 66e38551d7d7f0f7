//! Image commands of the `strata` CLI against a real registry: pull (tag, digest, platform),
//! auth (basic via `login`, bearer token), mirrors, save/load, push, bad references,
//! unknown tags and corrupted blobs (through the fault proxy).

mod common;

use std::fs;
use std::io::Read as _;
use std::path::Path;

use common::*;

/// A small two-layer image whose content depends on `name`, so images in one test differ.
fn image(name: &str) -> ImageBuilder {
    ImageBuilder::new()
        .layer(
            Layer::new()
                .dir("etc")
                .file("etc/name", format!("{name}\n"))
                .add(Entry::file("bin/app", format!("#!/bin/sh\necho {name}\n")).mode(0o755))
                .symlink("etc/alias", "name")
                .created_by("layer one"),
        )
        .layer(
            Layer::new()
                .file("data/blob.bin", vec![name.len() as u8; 64 * 1024])
                .whiteout("etc/alias")
                .created_by("layer two"),
        )
        .env("APP_NAME=strata-test")
        .cmd(&["/bin/app"])
        .workdir("/data")
}

/// Build `image(name)` and push it to `reg` as `repo_tag`.
fn pushed(reg: &Registry, repo_tag: &str) -> BuiltImage {
    let img = image(repo_tag).build("src");
    img.push(reg, repo_tag);
    img
}

/// Every blob of `img` is in the store and hashes to its name.
fn assert_blobs_present(env: &StrataEnv, img: &BuiltImage) {
    for d in img.all_digests() {
        let path = env.blob_path(&d);
        let bytes = fs::read(&path)
            .unwrap_or_else(|e| panic!("blob {d} missing from {}: {e}", path.display()));
        assert_eq!(
            sha256_digest(&bytes),
            d,
            "{} has wrong content",
            path.display()
        );
    }
}

/// Every file in `$STRATA_ROOT/blobs/sha256` hashes to its file name.
fn assert_store_verified(root: &Path) {
    for hex in common::cli::blob_hexes(root) {
        let bytes = fs::read(root.join("blobs/sha256").join(&hex)).unwrap();
        assert_eq!(
            sha256_hex(&bytes),
            hex,
            "unverified blob {hex} in the store"
        );
    }
}

fn combined(out: &std::process::Output) -> String {
    format!("{}\n{}", out.stdout_str(), out.stderr_str())
}

#[test]
fn pull_by_tag_lists_image_and_stores_verified_blobs() {
    let reg = Registry::start();
    let img = pushed(&reg, "lib/small:v1");
    let env = StrataEnv::new();
    let reference = format!("{}/lib/small:v1", reg.host());
    env.run(&["pull", &reference]).assert_success();
    assert_blobs_present(&env, &img);
    assert_store_verified(&env.root());

    let list = env.run(&["images"]);
    list.assert_success();
    let text = list.stdout_str();
    let row = text
        .lines()
        .find(|l| l.contains(&format!("{}/lib/small", reg.host())))
        .unwrap_or_else(|| panic!("image missing from `images`:\n{text}"));
    assert!(row.split_whitespace().any(|w| w == "v1"), "{row}");

    let digests = env.run(&["images", "--digests"]);
    digests.assert_success();
    assert!(
        digests.stdout_str().contains(&img.manifest_digest),
        "{}",
        digests.stdout_str()
    );

    let quiet = env.run(&["images", "-q"]);
    quiet.assert_success();
    let ids: Vec<String> = quiet.stdout_str().lines().map(str::to_string).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let config_hex = &img.config_digest["sha256:".len()..];
    assert!(
        config_hex.starts_with(ids[0].trim_start_matches("sha256:")),
        "{ids:?}"
    );
}

#[test]
fn pull_by_digest() {
    let reg = Registry::start();
    let img = pushed(&reg, "lib/bydigest:v1");
    let env = StrataEnv::new();
    let reference = format!("{}/lib/bydigest@{}", reg.host(), img.manifest_digest);
    env.run(&["pull", &reference]).assert_success();
    assert_blobs_present(&env, &img);
    let list = env.run(&["images", "--digests"]);
    list.assert_success();
    let text = list.stdout_str();
    assert!(
        text.contains(&format!("{}/lib/bydigest", reg.host())),
        "{text}"
    );
    assert!(text.contains(&img.manifest_digest), "{text}");
}

/// Contents of `path` inside a gzip layer blob.
fn file_in_layer(blob: &[u8], path: &str) -> Option<String> {
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(blob));
    for e in ar.entries().ok()? {
        let mut e = e.ok()?;
        if e.path().ok()?.to_str() == Some(path) {
            let mut s = String::new();
            e.read_to_string(&mut s).ok()?;
            return Some(s);
        }
    }
    None
}

#[test]
fn pull_multi_arch_index_with_platform_gets_arm64() {
    let reg = Registry::start();
    let idx = two_platform_index("multi");
    idx.push(&reg, "multi:latest");
    let arm = idx.image("arm64");
    let amd = idx.image("amd64");
    let env = StrataEnv::new();
    let reference = format!("{}/multi:latest", reg.host());
    env.run(&["pull", "--platform", "linux/arm64", &reference])
        .assert_success();
    assert_blobs_present(&env, arm);
    assert!(
        !env.blob_path(&amd.layers[0].digest).exists(),
        "amd64 layer was downloaded too"
    );
    let layer = fs::read(env.blob_path(&arm.layers[0].digest)).unwrap();
    assert_eq!(
        file_in_layer(&layer, "etc/arch").as_deref(),
        Some("arm64\n")
    );

    let inspect = env.run(&["inspect", &reference]);
    inspect.assert_success();
    let text = inspect.stdout_str();
    assert!(text.contains("arm64"), "{text}");
    assert!(!text.contains("amd64"), "{text}");
}

#[test]
fn basic_auth_login_right_and_wrong_password() {
    let reg = Registry::with_htpasswd("alice", "wonderland");
    let img = pushed(&reg, "private/app:v1");
    let env = StrataEnv::new();
    let reference = format!("{}/private/app:v1", reg.host());

    // Without credentials the pull is refused.
    let anon = env.run(&["pull", &reference]);
    anon.assert_failure();

    // Wrong password: login fails and nothing is saved.
    let bad = env.run_stdin(
        &["login", "-u", "alice", "--password-stdin", &reg.host()],
        b"nope\n",
    );
    bad.assert_failure();
    let cfg_path = env.docker_config().join("config.json");
    let saved = fs::read_to_string(&cfg_path).unwrap_or_default();
    assert!(
        !saved.contains(&reg.host()),
        "credentials saved after failed login: {saved}"
    );

    // Right password: saved (mode 0600), then pull works.
    let ok = env.run_stdin(
        &["login", "-u", "alice", "--password-stdin", &reg.host()],
        b"wonderland\n",
    );
    ok.assert_success();
    let saved = fs::read_to_string(&cfg_path).expect("config.json written by login");
    let json: serde_json::Value = serde_json::from_str(&saved).unwrap();
    assert!(json["auths"][reg.host()].is_object(), "{saved}");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        fs::metadata(&cfg_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    env.run(&["pull", &reference]).assert_success();
    assert_blobs_present(&env, &img);

    // Logout forgets them again.
    env.run(&["logout", &reg.host()]).assert_success();
    let saved = fs::read_to_string(&cfg_path).unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(&saved).unwrap_or_default();
    assert!(json["auths"][reg.host()].is_null(), "{saved}");
}

#[test]
fn bearer_token_auth_pull() {
    let reg = Registry::with_token_auth();
    let img = pushed(&reg, "team/app:v1");
    let ts = reg.token_server().unwrap();
    let (user, pass) = reg.creds().unwrap();
    let before = ts.issued();
    let env = StrataEnv::new();
    let reference = format!("{}/team/app:v1", reg.host());

    env.run(&["pull", &reference]).assert_failure();

    env.run_stdin(
        &["login", "-u", user, "--password-stdin", &reg.host()],
        format!("{pass}\n").as_bytes(),
    )
    .assert_success();
    env.run(&["pull", &reference]).assert_success();
    assert_blobs_present(&env, &img);
    let reqs = ts.requests();
    assert!(ts.issued() > before, "{reqs:?}");
    assert!(
        reqs.iter().any(|r| r.account.as_deref() == Some(user)
            && r.status == 200
            && r.scopes.iter().any(|s| s.contains("team/app"))),
        "no authenticated token request for team/app: {reqs:?}"
    );
}

#[test]
fn mirror_list_skips_dead_mirror() {
    let upstream = Registry::start();
    let mirror = Registry::start();
    let img = pushed(&upstream, "mirrored/app:v1");
    img.push(&mirror, "mirrored/app:v1");
    let dead = DeadPort::new();
    let env = StrataEnv::new();
    env.write_config(&serde_json::json!({
        "registry-mirrors-by-host": {
            upstream.host(): [dead.url(), mirror.url()],
        },
    }));
    let reference = format!("{}/mirrored/app:v1", upstream.host());
    let out = env.run(&["pull", &reference]);
    out.assert_success();
    assert_blobs_present(&env, &img);
    for l in &img.layers {
        assert!(
            mirror.request_count_by("GET", &l.digest) >= 1,
            "layer {} not fetched from the mirror:\n{}",
            l.digest,
            mirror.access_log()
        );
        assert_eq!(
            upstream.request_count_by("GET", &l.digest),
            0,
            "layer {} fetched from upstream although the mirror had it",
            l.digest
        );
    }
}

#[test]
fn all_mirrors_down_falls_back_to_upstream() {
    let upstream = Registry::start();
    let img = pushed(&upstream, "fallback/app:v1");
    let dead = DeadPort::new();
    let env = StrataEnv::new();
    env.write_config(&serde_json::json!({
        "registry-mirrors-by-host": {
            upstream.host(): [dead.url()],
        },
    }));
    let reference = format!("{}/fallback/app:v1", upstream.host());
    env.run(&["pull", &reference]).assert_success();
    assert_blobs_present(&env, &img);
    assert!(upstream.request_count_by("GET", &img.layers[0].digest) >= 1);
}

#[test]
fn save_load_round_trip() {
    let reg = Registry::start();
    let img = pushed(&reg, "roundtrip/app:v1");
    let env = StrataEnv::new();
    let reference = format!("{}/roundtrip/app:v1", reg.host());
    env.run(&["pull", &reference]).assert_success();
    let archive = env.scratch().join("app.tar");
    let archive_s = archive.to_str().unwrap();
    env.run(&["save", "-o", archive_s, &reference])
        .assert_success();
    assert!(fs::metadata(&archive).unwrap().len() > 0);

    let other = StrataEnv::new();
    let loaded = other.run(&["load", "-i", archive_s]);
    loaded.assert_success();
    assert!(
        loaded.stdout_str().contains("roundtrip/app"),
        "{}",
        loaded.stdout_str()
    );
    assert_blobs_present(&other, &img);
    assert_store_verified(&other.root());
    let list = other.run(&["images", "--digests"]);
    list.assert_success();
    let text = list.stdout_str();
    assert!(
        text.contains(&format!("{}/roundtrip/app", reg.host())),
        "{text}"
    );
    assert!(text.contains("v1"), "{text}");
    let ids_a = env.run(&["images", "-q"]).stdout_str();
    let ids_b = other.run(&["images", "-q"]).stdout_str();
    assert_eq!(ids_a, ids_b, "image id changed through save/load");
}

#[test]
fn push_pulled_image_to_other_repository_and_pull_back() {
    let reg = Registry::start();
    let img = pushed(&reg, "orig/app:v1");
    let env = StrataEnv::new();
    let src = format!("{}/orig/app:v1", reg.host());
    let dst = format!("{}/copy/app:v2", reg.host());
    env.run(&["pull", &src]).assert_success();
    env.run(&["tag", &src, &dst]).assert_success();
    env.run(&["push", &dst]).assert_success();

    let resp = reg.get_manifest("copy/app", "v2");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.header("Docker-Content-Digest"),
        Some(img.manifest_digest.as_str())
    );
    for l in &img.layers {
        let blob = reg.get_blob("copy/app", &l.digest);
        assert_eq!(blob.status, 200);
        assert_eq!(sha256_digest(&blob.body), l.digest);
    }

    let fresh = StrataEnv::new();
    let back = format!("{}/copy/app@{}", reg.host(), img.manifest_digest);
    fresh.run(&["pull", &back]).assert_success();
    assert_blobs_present(&fresh, &img);
}

#[test]
fn malformed_reference_is_named_in_the_error() {
    let env = StrataEnv::new();
    for bad in [
        "127.0.0.1:1/UPPER/case:v1",
        "repo:tag:extra",
        "name@sha256:notahexdigest",
        "",
    ] {
        let out = env.run(&["pull", bad]);
        out.assert_failure();
        if !bad.is_empty() {
            let text = combined(&out);
            assert!(
                text.contains(bad),
                "error for {bad:?} does not name it:\n{text}"
            );
        }
    }
    assert!(env.blob_hexes().is_empty());
}

#[test]
fn unknown_tag_is_not_found() {
    let reg = Registry::start();
    pushed(&reg, "known/app:v1");
    let env = StrataEnv::new();
    let out = env.run(&["pull", &format!("{}/known/app:nope", reg.host())]);
    out.assert_failure();
    let text = combined(&out);
    assert!(text.to_lowercase().contains("not found"), "{text}");
    assert!(
        text.contains("nope"),
        "error does not name the tag:\n{text}"
    );
    let list = env.run(&["images", "-q"]);
    assert!(list.stdout_str().trim().is_empty(), "{}", list.stdout_str());
}

#[test]
fn corrupted_layer_fails_pull_and_leaves_only_verified_blobs() {
    let reg = Registry::start();
    let img = pushed(&reg, "corrupt/app:v1");
    let proxy = FaultProxy::in_front_of(&reg);
    let bad_layer = img.layers[1].digest.clone();
    proxy.on_path(&bad_layer, None, Fault::FlipByte);
    let env = StrataEnv::new();
    let out = env.run(&["pull", &format!("{}/corrupt/app:v1", proxy.host())]);
    out.assert_failure();
    let text = combined(&out);
    assert!(
        text.contains(&bad_layer),
        "error does not name layer {bad_layer}:\n{text}"
    );
    assert!(proxy.faults_applied() >= 1, "{:?}", proxy.requests());
    assert_store_verified(&env.root());
    assert!(!env.blob_path(&bad_layer).exists());
    let list = env.run(&["images", "-q"]);
    assert!(
        list.stdout_str().trim().is_empty(),
        "half-pulled image listed: {}",
        list.stdout_str()
    );
}

#[test]
fn transient_503_on_manifest_is_retried() {
    let reg = Registry::start();
    let img = pushed(&reg, "flaky/app:v1");
    let proxy = FaultProxy::in_front_of(&reg);
    proxy.on_path("/manifests/", Some(2), Fault::status(503));
    let env = StrataEnv::new();
    env.run(&["pull", &format!("{}/flaky/app:v1", proxy.host())])
        .assert_success();
    assert_blobs_present(&env, &img);
    assert!(
        proxy.request_count("/manifests/") >= 3,
        "{:?}",
        proxy.counts()
    );
}

/// The span (distance between access points) of the local index of `layer`.
fn index_span(root: &Path, layer: &str) -> u64 {
    let hex = layer.trim_start_matches("sha256:");
    let ix = strata::layer::LayerIndex::open(&root.join("indexes").join(hex)).expect("local index");
    ix.seek_table().expect("a seek table").span
}

/// `strata index --span-size`: the layers are indexed with that span (an index built before
/// with another one is built again), the published sidecar carries it to a fresh machine,
/// whose lazy mount reads exact bytes; a size out of range is refused by name.
#[test]
fn index_span_size_is_used_and_published() {
    let reg = Registry::start();
    let big = testdata::pseudo_text(3 << 20, 7);
    let img = ImageBuilder::new()
        .layer(Layer::new().file("data/big.txt", big.clone()))
        .build("v1");
    img.push(&reg, "span/app:v1");
    let reference = format!("{}/span/app:v1", reg.host());
    let layer = img.layers[0].digest.clone();
    let publisher = StrataEnv::new();
    publisher.run(&["index", &reference]).assert_success();
    assert_eq!(index_span(&publisher.root(), &layer), 256 << 10, "default");
    publisher
        .run(&["index", &reference, "--push", "--span-size", "128KiB"])
        .assert_success();
    assert_eq!(index_span(&publisher.root(), &layer), 128 << 10);
    for bad in ["16KiB", "1GiB", "lots"] {
        let out = publisher.run(&["index", &reference, "--span-size", bad]);
        assert!(!out.status.success(), "--span-size {bad} accepted");
        assert!(combined(&out).contains("span-size"), "{}", combined(&out));
    }
    let env = StrataEnv::new();
    let m = env.mount(&reference, &["--no-prefetch"]);
    assert_eq!(
        index_span(&env.root(), &layer),
        128 << 10,
        "from the sidecar"
    );
    let f = fs::File::open(m.dir.join("data/big.txt")).unwrap();
    let mut got = vec![0u8; 4096];
    use std::os::unix::fs::FileExt as _;
    for at in [0u64, (128 << 10) - 10, 2 << 20, (3 << 20) - 4096] {
        f.read_exact_at(&mut got, at).unwrap();
        assert_eq!(&got[..], &big[at as usize..at as usize + 4096], "at {at}");
    }
}
