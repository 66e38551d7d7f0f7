//! Index trust against an attacker (issue 20): the fault proxy, in front of the real registry,
//! answers requests for the image's layer with *altered* layer bytes (pushed to the registry
//! under their own digest in another repository, `evil/...`) and requests for the image's
//! referrers with a *forged* sidecar index built by strata's own index code over those
//! altered bytes, so its span hashes match them: every per-span check passes. What stops the
//! attack is where strata takes its index from and the whole-layer digest check:
//! - default policy (`index-trust: registry`), proxy as a mirror: the sidecar is taken from
//!   the upstream alone, the mirror's altered bytes fail against the honest index, no altered
//!   byte reaches a reader. Control: the same proxy named as *the* registry (which the
//!   `registry` policy trusts by definition) does serve the altered bytes;
//! - `index-trust: bound`: the forged (unbound) referrer is never fetched; the index bound to
//!   the image through the image index the user names (`strata index --push --bind`) is used;
//! - an index that *is* trusted (forged by someone with push rights to the repository) while
//!   a mirror serves the altered bytes: reads see them until the layer has been fetched whole,
//!   then the digest check drops the spans and the index, reads fail with EIO, the mirror is
//!   dropped and the daemon log says so, naming image, layer and mirror.

mod common;
use common::forge::{
    altered, assert_proxy_serves_altered, forge, hex, honest, image, mirror_env, poison_proxy,
    read_all_never_altered, FILES,
};
use common::{FaultProxy, OutputExt, Registry, StrataEnv};
use std::time::Duration;

/// Default policy: a forged sidecar and altered bytes from a mirror never reach a reader.
#[test]
fn default_policy_takes_no_sidecar_from_a_mirror() {
    let reg = Registry::start();
    let (good, evil) = (image(honest), image(altered));
    good.push(&reg, "trust/a:v1");
    StrataEnv::new()
        .run(&["index", &format!("{}/trust/a:v1", reg.host()), "--push"])
        .assert_success();
    let forged = forge(&reg, &good, &evil, "a", "evil/a");
    let art = forged.art.clone();
    let proxy = FaultProxy::in_front_of(&reg);
    poison_proxy(&proxy, "trust/a", "a", &good, &forged, true);
    assert_proxy_serves_altered(&proxy, "trust/a", &good, &evil);

    // Control: the proxy named as the registry itself (what `registry` trusts by definition)
    // gets its forged index believed, and the altered bytes are served. This is what a
    // mirror could do if strata took sidecars from mirrors.
    let direct = StrataEnv::new();
    let m = direct.mount(&format!("{}/trust/a:v1", proxy.host()), &["--no-prefetch"]);
    assert_eq!(
        std::fs::read(m.dir.join("data/f0")).unwrap(),
        altered(0),
        "control: a believed forged index serves the altered bytes"
    );
    drop(m);
    assert!(
        proxy.request_count(&art) > 0,
        "control fetched the forged artifact"
    );

    // The same proxy as a mirror, default policy.
    let seen = proxy.requests().len();
    let env = mirror_env(&reg, &proxy, serde_json::json!({}));
    let m = env.mount(&format!("{}/trust/a:v1", reg.host()), &["--no-prefetch"]);
    let ok = read_all_never_altered(&m.dir);
    assert_eq!(
        ok, FILES,
        "the upstream's honest bytes after the mirror's failed verification"
    );
    let asked: Vec<_> = proxy.requests()[seen..].to_vec();
    assert!(
        asked
            .iter()
            .any(|r| r.path.contains(&good.layers[0].digest)),
        "the mirror was asked for the layer (and served altered bytes): {asked:?}"
    );
    assert!(
        !asked.iter().any(|r| r.path.contains("/referrers/")
            || r.path.contains("manifests/sha256-")
            || r.path.contains(&art)),
        "a sidecar was looked up through the mirror: {asked:?}"
    );
    let log = env.daemon_logs();
    assert!(log.contains("failed verification"), "{log}");
}

/// `index-trust: bound`: the forged unbound referrer is ignored, the bound index is used.
#[test]
fn bound_policy_uses_the_bound_index_and_ignores_forged_referrers() {
    let reg = Registry::start();
    let (good, evil) = (image(honest), image(altered));
    good.push(&reg, "trust/b:v1");
    let out = StrataEnv::new().run(&[
        "index",
        &format!("{}/trust/b:v1", reg.host()),
        "--push",
        "--bind",
    ]);
    out.assert_success();
    let bound = out
        .stdout_str()
        .lines()
        .find(|l| l.starts_with(&format!("{}/trust/b@", reg.host())))
        .expect("bound reference printed")
        .to_string();
    assert!(
        bound.starts_with(&format!("{}/trust/b@sha256:", reg.host())),
        "{bound}"
    );
    let forged = forge(&reg, &good, &evil, "b", "evil/b");
    let art = forged.art.clone();
    let proxy = FaultProxy::in_front_of(&reg);
    poison_proxy(&proxy, "trust/b", "b", &good, &forged, true);
    assert_proxy_serves_altered(&proxy, "trust/b", &good, &evil);

    let env = mirror_env(&reg, &proxy, serde_json::json!({"index-trust": "bound"}));
    let m = env.mount(&bound, &["--no-prefetch"]);
    assert_eq!(read_all_never_altered(&m.dir), FILES);
    let stats = env.run(&["stats", "--json", m.dir.to_str().unwrap()]);
    stats.assert_success();
    assert!(
        stats.stdout_str().contains("Bound"),
        "index source: {}",
        stats.stdout_str()
    );
    drop(m);
    assert_eq!(
        proxy.request_count(&art),
        0,
        "the forged artifact was fetched"
    );
    assert_eq!(proxy.request_count("/referrers/"), 0);
    assert_eq!(proxy.request_count("manifests/sha256-"), 0);

    // The tag was moved to the bound index too: naming it is as good as naming the digest.
    let env2 = mirror_env(&reg, &proxy, serde_json::json!({"index-trust": "bound"}));
    let m = env2.mount(&format!("{}/trust/b:v1", reg.host()), &["--no-prefetch"]);
    assert_eq!(read_all_never_altered(&m.dir), FILES);
    drop(m);

    // Naming the bare manifest (no binding) under `bound`: no sidecar is believed at all; the
    // layer is downloaded whole (digest-checked: the mirror's altered blob fails, the mirror is
    // dropped, the upstream's is taken) instead of read lazily.
    let env3 = mirror_env(&reg, &proxy, serde_json::json!({"index-trust": "bound"}));
    let plain = format!("{}/trust/b@{}", reg.host(), good.manifest_digest);
    let m = env3.mount(&plain, &["--no-prefetch"]);
    assert_eq!(read_all_never_altered(&m.dir), FILES);
    let stats = env3.run(&["stats", "--json", m.dir.to_str().unwrap()]);
    assert!(
        stats.stdout_str().contains("Built"),
        "{}",
        stats.stdout_str()
    );
    drop(m);
    let log = env3.daemon_logs();
    assert!(
        log.contains("downloaded layer does not match its digest"),
        "{log}"
    );
    assert!(log.contains(&proxy.url()), "the mirror is named: {log}");
    assert_eq!(proxy.request_count(&art), 0);
}

/// A trusted but forged index (pushed to the repository itself) and altered bytes from a
/// mirror: served until the layer is fetched whole; then the digest check drops everything.
#[test]
fn a_layer_fetched_whole_that_fails_its_digest_is_dropped() {
    let reg = Registry::start();
    let (good, evil) = (image(honest), image(altered));
    good.push(&reg, "trust/c:v1");
    // Push rights: the forged sidecar is the repository's own referrer.
    let forged = forge(&reg, &good, &evil, "c", "trust/c");
    let proxy = FaultProxy::in_front_of(&reg);
    poison_proxy(&proxy, "trust/c", "c", &good, &forged, false);
    assert_proxy_serves_altered(&proxy, "trust/c", &good, &evil);

    let env = mirror_env(&reg, &proxy, serde_json::json!({}));
    let m = env.mount(&format!("{}/trust/c:v1", reg.host()), &[]);
    // Before the whole-layer fetch (prefetch starts 2 s after the mount) the forged index
    // vouches for the altered bytes: this is the gap the check closes, and proof that the
    // proxy's bytes pass every per-span check.
    let early = std::fs::read(m.dir.join("data/f0")).unwrap();
    assert_eq!(
        early,
        altered(0),
        "control: altered bytes before the whole-layer check"
    );
    let layer = &good.layers[0].digest;
    let log = common::poll_until(
        "the whole-layer check failing loudly",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || {
            let l = env.daemon_logs();
            l.contains("does not match its digest").then_some(l)
        },
    );
    let line = log
        .lines()
        .find(|l| {
            l.contains("ERROR") && l.contains("image ") && l.contains("does not match its digest")
        })
        .unwrap_or_else(|| panic!("no error line naming the image:\n{log}"));
    assert!(line.contains("trust/c"), "{line}");
    assert!(line.contains(layer.as_str()), "{line}");
    assert!(line.contains(&proxy.url()), "the mirror is named: {line}");
    // The kernel's page cache still holds what was read before; drop it, then nothing of the
    // layer can be read any more.
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    for i in 0..FILES {
        let e = std::fs::read(m.dir.join(format!("data/f{i}"))).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "data/f{i}: {e}");
    }
    assert!(
        !env.root().join("indexes").join(hex(layer)).exists(),
        "the forged index is dropped from the store"
    );
    let spans = env.root().join("cache").join(hex(layer));
    assert!(
        std::fs::read_dir(&spans).map_or(true, |mut d| d.next().is_none()),
        "spans of the layer left in {}",
        spans.display()
    );
}

/// `strata cache fetch` (every layer whole, in the CLI's own process) under the same attack:
/// the command fails naming the layer, the forged index is dropped from the store, and the
/// verdict is kept for processes sharing the cache.
#[test]
fn cache_fetch_of_a_layer_that_fails_its_digest_fails_loudly() {
    let reg = Registry::start();
    let (good, evil) = (image(honest), image(altered));
    good.push(&reg, "trust/d:v1");
    let forged = forge(&reg, &good, &evil, "d", "trust/d");
    let proxy = FaultProxy::in_front_of(&reg);
    poison_proxy(&proxy, "trust/d", "d", &good, &forged, false);
    assert_proxy_serves_altered(&proxy, "trust/d", &good, &evil);
    let env = mirror_env(&reg, &proxy, serde_json::json!({}));
    let out = env.run(&["cache", "fetch", &format!("{}/trust/d:v1", reg.host())]);
    out.assert_failure();
    let err = out.stderr_str();
    let layer = &good.layers[0].digest;
    assert!(err.contains("does not match its digest"), "{err}");
    assert!(err.contains(layer.as_str()), "{err}");
    assert!(err.contains(&proxy.url()), "the mirror is named: {err}");
    assert!(!env.root().join("indexes").join(hex(layer)).exists());
    assert!(env
        .root()
        .join("cache.verdicts")
        .join(format!("{}.bad", hex(layer)))
        .exists());
}
