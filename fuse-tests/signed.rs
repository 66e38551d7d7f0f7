//! `index-trust: signed` (issue 20): an unbound sidecar is believed only with a cosign
//! signature by a configured key, from whatever endpoint served it. Signatures here are made
//! by `strata index --push --sign` (checked by the harness's own cosign check, p256 directly)
//! or by the harness itself in cosign's format (`common::forge::cosign_sign`), never by
//! strata's code on the harness's behalf. The attack material is `trust.rs`'s: altered layer
//! bytes of the same size and a sidecar forged over them with strata's own index code, served
//! by a malicious mirror (or pushed into the repository itself).

mod common;
use common::forge::{
    altered, assert_proxy_serves_altered, cosign_sign, cosign_sign_referrer, cosign_verifies,
    forge, honest, image, mirror_env, poison_proxy, read_all_never_altered, test_key, FILES,
};
use common::{http, FaultProxy, OutputExt, Registry, StrataEnv};
use serde_json::json;
use std::path::Path;

fn signed_config(keys: &[&Path]) -> serde_json::Value {
    json!({"index-trust": "signed", "index-trust-keys": keys})
}

fn stats(env: &StrataEnv, mnt: &Path) -> String {
    let out = env.run(&["stats", "--json", mnt.to_str().unwrap()]);
    out.assert_success();
    out.stdout_str()
}

/// The artifact digest `strata index --push` prints on stdout.
fn pushed_artifact(out: &std::process::Output) -> String {
    out.stdout_str()
        .lines()
        .find(|l| l.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no artifact digest printed: {}", out.stdout_str()))
        .to_string()
}

/// (1) A sidecar signed with `strata index --push --sign` (SEC1 key) mounts lazily under
/// `signed`: the mount and a 4 KiB read of one of 4 files cost far less than the layer; the
/// same through a mirror, which serves the referrers, the signature and the sidecar. Control:
/// an unsigned sidecar is ignored (naming why) and the layer is downloaded whole.
#[test]
fn a_signed_sidecar_mounts_lazily_and_an_unsigned_one_is_not_used() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let key = test_key(dir.path(), 1);
    let good = image(honest);
    let layer = good.layers[0].blob.len() as u64;
    good.push(&reg, "signed/a:v1");
    let out = StrataEnv::new().run(&[
        "index",
        &format!("{}/signed/a:v1", reg.host()),
        "--push",
        "--sign",
        key.sec1_pem.to_str().unwrap(),
    ]);
    out.assert_success();
    let art = pushed_artifact(&out);
    assert!(
        cosign_verifies(&reg, "signed/a", &art, key.sk.verifying_key()),
        "strata's signature of {art} checks the way cosign checks it"
    );

    let env = StrataEnv::new();
    env.write_config(&signed_config(&[&key.public_pem]));
    let before = reg.bytes_served();
    let m = env.mount(&format!("{}/signed/a:v1", reg.host()), &["--no-prefetch"]);
    let mounted = reg.bytes_served() - before;
    let mut head = [0u8; 4096];
    std::io::Read::read_exact(
        &mut std::fs::File::open(m.dir.join("data/f2")).unwrap(),
        &mut head,
    )
    .unwrap();
    assert_eq!(&head[..], &honest(2)[..4096]);
    let served = reg.bytes_served() - before;
    eprintln!(
        "signed sidecar: mount {mounted} bytes served, + 4 KiB of one file {served}, layer {layer}"
    );
    assert!(
        mounted < layer / 16 && served < layer / 2,
        "{mounted} bytes served to mount, {served} after one 4 KiB read, layer {layer}"
    );
    let s = stats(&env, &m.dir);
    assert!(s.contains("\"Signed\""), "index source: {s}");
    assert_eq!(read_all_never_altered(&m.dir), FILES);
    drop(m);

    // Through a mirror (an honest one): referrers, signature and sidecar come from it.
    let proxy = FaultProxy::in_front_of(&reg);
    let env = mirror_env(&reg, &proxy, signed_config(&[&key.public_pem]));
    let m = env.mount(&format!("{}/signed/a:v1", reg.host()), &["--no-prefetch"]);
    let s = stats(&env, &m.dir);
    assert!(
        s.contains("\"Signed\""),
        "index source through a mirror: {s}"
    );
    assert_eq!(read_all_never_altered(&m.dir), FILES);
    drop(m);
    for what in [".sig", &art, "manifests/sha256-"] {
        assert!(
            proxy.request_count(what) > 0,
            "{what} not asked of the mirror: {:?}",
            proxy.requests()
        );
    }

    // Control: the same image with an unsigned sidecar.
    good.push(&reg, "signed/b:v1");
    StrataEnv::new()
        .run(&["index", &format!("{}/signed/b:v1", reg.host()), "--push"])
        .assert_success();
    let env = StrataEnv::new();
    env.write_config(&signed_config(&[&key.public_pem]));
    let before = reg.bytes_served();
    let m = env.mount(&format!("{}/signed/b:v1", reg.host()), &["--no-prefetch"]);
    assert_eq!(std::fs::read(m.dir.join("data/f0")).unwrap(), honest(0));
    let served = reg.bytes_served() - before;
    eprintln!("unsigned sidecar under signed: {served} bytes served, layer {layer}");
    assert!(served >= layer, "the layer was fetched whole: {served}");
    let s = stats(&env, &m.dir);
    assert!(s.contains("\"Built\"") && !s.contains("Signed"), "{s}");
    drop(m);
    let log = env.daemon_logs();
    assert!(log.contains("not signed"), "the refusal names why: {log}");
}

/// (2) A malicious mirror serving altered layer bytes and, as the image's referrers, a sidecar
/// forged over them and signed by the attacker's key: under `signed` with the honest key no
/// altered byte reaches a reader. Control: with the attacker's key configured the very same
/// material is believed and the altered bytes are read (the signature check is what stops
/// it). Then the same with push rights and no signature at all: `registry` serves altered
/// bytes, `signed` does not.
#[test]
fn forged_sidecars_never_reach_a_reader_under_signed() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let (key, evil_key) = (test_key(dir.path(), 1), test_key(dir.path(), 2));
    let (good, evil) = (image(honest), image(altered));
    good.push(&reg, "signed/c:v1");
    StrataEnv::new()
        .run(&[
            "index",
            &format!("{}/signed/c:v1", reg.host()),
            "--push",
            "--sign",
            key.pkcs8_pem.to_str().unwrap(),
        ])
        .assert_success();
    let forged = forge(&reg, &good, &evil, "c", "evil/c");
    let payload = cosign_sign(&reg, "evil/c", &forged.art, &forged.art, &evil_key.sk);
    let proxy = FaultProxy::in_front_of(&reg);
    poison_proxy(&proxy, "signed/c", "c", &good, &forged, true);
    proxy.substitute(
        &format!("/v2/signed/c/blobs/{payload}"),
        &format!("/v2/evil/c/blobs/{payload}"),
    );
    assert_proxy_serves_altered(&proxy, "signed/c", &good, &evil);
    let image_ref = format!("{}/signed/c:v1", reg.host());

    // Control: the attacker's key configured: the forged sidecar is believed.
    let fooled = mirror_env(&reg, &proxy, signed_config(&[&evil_key.public_pem]));
    let m = fooled.mount(&image_ref, &["--no-prefetch"]);
    assert_eq!(
        std::fs::read(m.dir.join("data/f0")).unwrap(),
        altered(0),
        "control: a sidecar signed by a configured key is believed"
    );
    drop(m);

    let seen = proxy.requests().len();
    let env = mirror_env(&reg, &proxy, signed_config(&[&key.public_pem]));
    let m = env.mount(&image_ref, &["--no-prefetch"]);
    assert_eq!(read_all_never_altered(&m.dir), FILES);
    let s = stats(&env, &m.dir);
    assert!(s.contains("\"Built\""), "{s}");
    drop(m);
    let asked = proxy.requests()[seen..].to_vec();
    assert!(
        asked.iter().any(|r| r.path.contains(".sig")),
        "the forged sidecar's signature was looked up through the mirror: {asked:?}"
    );
    assert!(
        !asked.iter().any(|r| r.path.contains(&forged.index_blob)),
        "the refused sidecar's index blob was fetched: {asked:?}"
    );
    let log = env.daemon_logs();
    assert!(log.contains("none of the configured keys"), "{log}");
    assert!(
        log.contains(&forged.art),
        "the refused sidecar is named: {log}"
    );

    // Push rights, no signature: the forged sidecar is the repository's own referrer.
    good.push(&reg, "signed/d:v1");
    let forged = forge(&reg, &good, &evil, "d", "signed/d");
    let proxy = FaultProxy::in_front_of(&reg);
    poison_proxy(&proxy, "signed/d", "d", &good, &forged, false);
    let image_ref = format!("{}/signed/d:v1", reg.host());
    let lax = mirror_env(&reg, &proxy, json!({}));
    let m = lax.mount(&image_ref, &["--no-prefetch"]);
    assert_eq!(
        std::fs::read(m.dir.join("data/f0")).unwrap(),
        altered(0),
        "control: `registry` believes the repository's unsigned sidecar"
    );
    drop(m);
    let env = mirror_env(&reg, &proxy, signed_config(&[&key.public_pem]));
    let m = env.mount(&image_ref, &["--no-prefetch"]);
    assert_eq!(read_all_never_altered(&m.dir), FILES);
    drop(m);
    let log = env.daemon_logs();
    assert!(log.contains("not signed"), "{log}");
    assert!(
        log.contains("downloaded layer does not match its digest"),
        "the mirror's altered whole layer was refused: {log}"
    );
}

/// (3) A valid signature by the configured key whose payload names another digest (the image
/// manifest) does not vouch for the sidecar. Control: the same key's signature naming the
/// sidecar, made by the harness in cosign's format, does.
#[test]
fn a_signature_naming_another_digest_is_refused() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let key = test_key(dir.path(), 1);
    let good = image(honest);
    good.push(&reg, "signed/e:v1");
    let out = StrataEnv::new().run(&["index", &format!("{}/signed/e:v1", reg.host()), "--push"]);
    out.assert_success();
    let art = pushed_artifact(&out);
    cosign_sign(&reg, "signed/e", &art, &good.manifest_digest, &key.sk);
    let image_ref = format!("{}/signed/e:v1", reg.host());
    let env = StrataEnv::new();
    env.write_config(&signed_config(&[&key.public_pem]));
    let m = env.mount(&image_ref, &["--no-prefetch"]);
    assert_eq!(read_all_never_altered(&m.dir), FILES);
    let s = stats(&env, &m.dir);
    assert!(s.contains("\"Built\"") && !s.contains("Signed"), "{s}");
    drop(m);
    let log = env.daemon_logs();
    assert!(
        log.contains(&format!("is for {}", good.manifest_digest)),
        "{log}"
    );

    cosign_sign(&reg, "signed/e", &art, &art, &key.sk);
    let env = StrataEnv::new();
    env.write_config(&signed_config(&[&key.public_pem]));
    let m = env.mount(&image_ref, &["--no-prefetch"]);
    let s = stats(&env, &m.dir);
    assert!(s.contains("\"Signed\""), "a cosign-format signature: {s}");
    assert_eq!(read_all_never_altered(&m.dir), FILES);
}

/// cosign's OCI 1.1 placement (the signature a referrer of the sidecar, no `.sig` tag), made
/// by the harness, is read too.
#[test]
fn a_signature_stored_as_a_referrer_is_read() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let key = test_key(dir.path(), 1);
    let good = image(honest);
    good.push(&reg, "signed/f:v1");
    let out = StrataEnv::new().run(&["index", &format!("{}/signed/f:v1", reg.host()), "--push"]);
    out.assert_success();
    let art = pushed_artifact(&out);
    let art_size = http::request(
        &reg.host(),
        "GET",
        &format!("/v2/signed/f/manifests/{art}"),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        &[],
    )
    .unwrap()
    .body
    .len();
    cosign_sign_referrer(&reg, "signed/f", &art, art_size, &key.sk);
    let env = StrataEnv::new();
    env.write_config(&signed_config(&[&key.public_pem]));
    let m = env.mount(&format!("{}/signed/f:v1", reg.host()), &["--no-prefetch"]);
    let s = stats(&env, &m.dir);
    assert!(s.contains("\"Signed\""), "index source: {s}");
    assert_eq!(read_all_never_altered(&m.dir), FILES);
    drop(m);
    // Control: by another key, the referrer signature does not count.
    let other = test_key(dir.path(), 2);
    let env = StrataEnv::new();
    env.write_config(&signed_config(&[&other.public_pem]));
    let m = env.mount(&format!("{}/signed/f:v1", reg.host()), &["--no-prefetch"]);
    let s = stats(&env, &m.dir);
    assert!(s.contains("\"Built\""), "{s}");
    drop(m);
    let log = env.daemon_logs();
    assert!(log.contains("none of the configured keys"), "{log}");
}

/// (4) `signed` without keys, or with a key that cannot be read, is a config error naming the
/// key; so is `--sign` with a file that is not a private key.
#[test]
fn signed_without_keys_is_refused() {
    let env = StrataEnv::new();
    env.write_config(&json!({"index-trust": "signed"}));
    let out = env.run(&["images"]);
    out.assert_failure();
    let err = out.stderr_str();
    assert!(err.contains("index-trust-keys"), "{err}");
    assert!(err.contains("needs at least one public key"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let key = test_key(dir.path(), 1);
    env.write_config(&signed_config(&[&key.pkcs8_pem]));
    let out = env.run(&["images"]);
    out.assert_failure();
    let err = out.stderr_str();
    assert!(
        err.contains("index-trust-keys") && err.contains(key.pkcs8_pem.to_str().unwrap()),
        "a private key given as a public one is named: {err}"
    );

    env.write_config(&signed_config(&[&key.public_pem]));
    env.run(&["images"]).assert_success();
    let out = env.run(&[
        "index",
        "127.0.0.1:9/none:v1",
        "--push",
        "--sign",
        key.public_pem.to_str().unwrap(),
    ]);
    out.assert_failure();
    let err = out.stderr_str();
    assert!(
        err.contains("--sign") && err.contains("PRIVATE KEY"),
        "{err}"
    );
}
