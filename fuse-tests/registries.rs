//! Registry configuration as docker, podman and containerd users have it, against real
//! `docker-registry` processes on 127.0.0.1: credential helpers (`credsStore`,
//! `credHelpers`) in front of an htpasswd registry, identity tokens, containers' auth.json;
//! TLS with a private CA (certs.d, hosts.toml `ca`/`client`, the system roots) with and
//! without client certificates; containerd hosts.toml and containers registries.conf mirror
//! lists (one registry as mirror, one as upstream under a name that does not resolve).

mod common;

use std::fs;
use std::path::Path;

use common::credhelper::{helper_log, install_helper};
use common::pki::tls_registry;
use common::*;

/// A one-layer image whose content depends on `name`.
fn image(name: &str) -> BuiltImage {
    ImageBuilder::new()
        .layer(
            Layer::new()
                .dir("etc")
                .file("etc/name", format!("{name}\n"))
                .file("data/blob.bin", vec![name.len() as u8; 96 * 1024]),
        )
        .cmd(&["/bin/true"])
        .build("src")
}

/// The requests `reg` logged after the first `since` (pushes made by the test come first).
fn requests_since(reg: &Registry, since: usize) -> Vec<(String, String, u16)> {
    reg.requests().split_off(since)
}

/// How many of `reqs` are `method` requests whose path contains `path`.
fn count(reqs: &[(String, String, u16)], method: &str, path: &str) -> usize {
    reqs.iter()
        .filter(|(m, p, _)| m == method && p.contains(path))
        .count()
}

fn combined(out: &std::process::Output) -> String {
    format!("{}\n{}", out.stdout_str(), out.stderr_str())
}

/// Every blob of `img` is in the store of `env`.
fn assert_pulled(env: &StrataEnv, img: &BuiltImage) {
    for d in img.all_digests() {
        let bytes = fs::read(env.blob_path(&d)).unwrap_or_else(|e| panic!("blob {d}: {e}"));
        assert_eq!(sha256_digest(&bytes), d);
    }
}

// ---------------------------------------------------------------------------------------
// Credentials

#[test]
fn login_and_pull_through_credential_helper() {
    let reg = Registry::with_htpasswd("alice", "wonderland");
    let img = image("helper");
    img.push(&reg, "private/app:v1");
    let mut env = StrataEnv::new();
    let bin = install_helper(&mut env, "strata-test");
    let cfg = env.docker_config().join("config.json");
    // credsStore names a helper that does not exist: credHelpers must win for this registry.
    fs::write(
        &cfg,
        serde_json::json!({
            "credsStore": "strata-test-missing",
            "credHelpers": { reg.host(): "strata-test" },
        })
        .to_string(),
    )
    .unwrap();
    let reference = format!("{}/private/app:v1", reg.host());

    let out = env.run(&["pull", &reference]);
    out.assert_failure();
    assert!(
        helper_log(&bin).contains(&format!("get {}", reg.host())),
        "{}",
        helper_log(&bin)
    );

    let out = env.run_stdin(
        &["login", "-u", "alice", "--password-stdin", &reg.host()],
        b"wonderland\n",
    );
    out.assert_success();
    assert!(
        !out.stderr_str().contains("unencrypted"),
        "{}",
        out.stderr_str()
    );
    // The secret went to the helper; the file has only docker's empty entry.
    let db = fs::read_to_string(bin.join("helper-db.json")).unwrap();
    assert!(
        db.contains("wonderland") && db.contains(&reg.host()),
        "{db}"
    );
    let text = fs::read_to_string(&cfg).unwrap();
    assert!(
        !text.contains("wonderland") && !text.contains("\"auth\""),
        "{text}"
    );
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["auths"][reg.host()], serde_json::json!({}), "{text}");
    assert_eq!(
        doc["credsStore"], "strata-test-missing",
        "other keys kept: {text}"
    );

    env.run(&["pull", &reference]).assert_success();
    assert_pulled(&env, &img);

    env.run(&["logout", &reg.host()]).assert_success();
    assert!(helper_log(&bin).contains(&format!("erase {}", reg.host())));
    let db = fs::read_to_string(bin.join("helper-db.json")).unwrap();
    assert!(!db.contains("wonderland"), "{db}");
    env.run(&["rmi", &reference]).assert_success();
    env.run(&["pull", &reference]).assert_failure();
}

#[test]
fn creds_store_helper_filled_by_another_tool_serves_pulls_and_mounts() {
    let reg = Registry::with_htpasswd("bob", "builder-pass");
    let img = image("store");
    img.push(&reg, "team/app:v1");
    let mut env = StrataEnv::new();
    let bin = install_helper(&mut env, "strata-store");
    fs::write(
        bin.join("helper-db.json"),
        serde_json::json!({ reg.host(): ["bob", "builder-pass"] }).to_string(),
    )
    .unwrap();
    fs::write(
        env.docker_config().join("config.json"),
        r#"{"credsStore": "strata-store"}"#,
    )
    .unwrap();
    let reference = format!("{}/team/app:v1", reg.host());
    // The mount is served by the daemon, which asks the helper itself.
    let m = env.mount(&reference, &["--no-prefetch"]);
    assert_eq!(
        fs::read_to_string(m.dir.join("etc/name")).unwrap(),
        "store\n"
    );
    drop(m);
    assert!(helper_log(&bin).contains(&format!("get {}", reg.host())));
}

#[test]
fn containers_auth_json_is_read() {
    let reg = Registry::with_htpasswd("carol", "c-pass");
    let img = image("authjson");
    img.push(&reg, "x/app:v1");
    let reference = format!("{}/x/app:v1", reg.host());
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let auth =
        serde_json::json!({"auths": {reg.host(): {"auth": b64("carol:c-pass")}}}).to_string();

    // $REGISTRY_AUTH_FILE
    let mut env = StrataEnv::new();
    env.run(&["pull", &reference]).assert_failure();
    let file = env.scratch().join("my-auth.json");
    fs::write(&file, &auth).unwrap();
    env.set_env("REGISTRY_AUTH_FILE", file.to_str().unwrap());
    env.run(&["pull", &reference]).assert_success();
    assert_pulled(&env, &img);

    // $XDG_RUNTIME_DIR/containers/auth.json
    let mut env = StrataEnv::new();
    let run = env.scratch().join("xdg");
    fs::create_dir_all(run.join("containers")).unwrap();
    fs::write(run.join("containers/auth.json"), &auth).unwrap();
    env.set_env("XDG_RUNTIME_DIR", run.to_str().unwrap());
    env.run(&["pull", &reference]).assert_success();
    assert_pulled(&env, &img);
}

#[test]
fn login_keeps_identity_token_and_pulls_with_refresh_grant() {
    let reg = Registry::with_token_options(TokenOptions {
        refresh_token: Some("refresh-abc123".into()),
        ..TokenOptions::default()
    });
    let img = image("idtoken");
    img.push(&reg, "id/app:v1");
    let ts = reg.token_server().unwrap();
    let (user, pass) = reg.creds().unwrap();
    let mut env = StrataEnv::new();
    let reference = format!("{}/id/app:v1", reg.host());
    env.run_stdin(
        &["login", "-u", user, "--password-stdin", &reg.host()],
        format!("{pass}\n").as_bytes(),
    )
    .assert_success();
    assert!(
        ts.requests().iter().any(|r| r.gave_refresh_token),
        "{:?}",
        ts.requests()
    );
    let cfg = env.docker_config().join("config.json");
    let text = fs::read_to_string(&cfg).unwrap();
    assert!(!text.contains(pass), "password stored: {text}");
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["auths"][reg.host()]["identitytoken"], "refresh-abc123");

    let before = ts.requests().len();
    env.run(&["pull", &reference]).assert_success();
    assert_pulled(&env, &img);
    let reqs = ts.requests()[before..].to_vec();
    assert!(
        reqs.iter().any(|r| r.method == "POST"
            && r.grant.as_deref() == Some("refresh_token")
            && r.status == 200),
        "{reqs:?}"
    );
    assert!(reqs.iter().all(|r| r.method == "POST"), "{reqs:?}");

    // A stale identity token is refused by the token service: the pull fails, naming it.
    let mut doc = doc;
    doc["auths"][reg.host()]["identitytoken"] = "revoked".into();
    fs::write(&cfg, doc.to_string()).unwrap();
    env.run(&["rmi", &reference]).assert_success();
    let out = env.run(&["pull", &reference]);
    out.assert_failure();
    assert!(
        combined(&out).contains("token service"),
        "{}",
        combined(&out)
    );

    // The same login through a credential helper stores the token as "<token>".
    let bin = install_helper(&mut env, "strata-tok");
    fs::write(&cfg, r#"{"credsStore": "strata-tok"}"#).unwrap();
    env.run_stdin(
        &["login", "-u", user, "--password-stdin", &reg.host()],
        format!("{pass}\n").as_bytes(),
    )
    .assert_success();
    let db = fs::read_to_string(bin.join("helper-db.json")).unwrap();
    assert!(
        db.contains("<token>") && db.contains("refresh-abc123"),
        "{db}"
    );
    env.run(&["pull", &reference]).assert_success();
}

// ---------------------------------------------------------------------------------------
// TLS

#[test]
fn private_ca_from_certs_dir() {
    let ca = TestCa::new("strata test CA");
    let img = image("tls");
    let reg = tls_registry(&ca, false, &img, "sec/app:v1");
    let env = StrataEnv::new();
    let certs = env.scratch().join("certs.d");
    env.write_config(&serde_json::json!({
        "certs-dirs": [certs],
        "hosts-dir": "",
        "registries-conf": "",
    }));
    let reference = format!("{}/sec/app:v1", reg.host());

    // A certificate directory with another CA: https is used, and the chain is refused.
    let other = TestCa::new("someone else");
    other.write_cert(&certs.join(reg.host()).join("ca.crt"));
    let out = env.run(&["pull", &reference]);
    out.assert_failure();
    let text = combined(&out).to_ascii_lowercase();
    assert!(
        text.contains("certificate") || text.contains("issuer"),
        "{text}"
    );

    ca.write_cert(&certs.join(reg.host()).join("ca.crt"));
    env.run(&["pull", &reference]).assert_success();
    assert_pulled(&env, &img);
}

#[test]
fn client_certificate_from_certs_dir() {
    let ca = TestCa::new("strata mtls CA");
    let img = image("mtls");
    let reg = tls_registry(&ca, true, &img, "sec/app:v1");
    let env = StrataEnv::new();
    let certs = env.scratch().join("certs.d");
    let host_dir = certs.join(reg.host());
    env.write_config(&serde_json::json!({
        "certs-dirs": [certs],
        "hosts-dir": "",
        "registries-conf": "",
    }));
    let reference = format!("{}/sec/app:v1", reg.host());
    ca.write_cert(&host_dir.join("ca.crt"));

    // Trusted server, no client certificate: the registry refuses the handshake.
    env.run(&["pull", &reference]).assert_failure();
    reg.settle_logs();
    assert!(
        reg.log().contains("didn't provide a certificate"),
        "{}",
        reg.log()
    );
    // A client certificate from a CA the registry does not trust: refused too.
    let stranger = TestCa::new("stranger");
    stranger.client("mallory").write_pair(&host_dir, "client");
    env.run(&["pull", &reference]).assert_failure();
    reg.settle_logs();
    assert!(reg.log().contains("unknown authority"), "{}", reg.log());
    // The registry's CA signed this one.
    ca.client("strata").write_pair(&host_dir, "client");
    env.run(&["pull", &reference]).assert_success();
    assert_pulled(&env, &img);
}

#[test]
fn system_roots_are_trusted() {
    let ca = TestCa::new("corporate root");
    let img = image("sysroots");
    let reg = tls_registry(&ca, false, &img, "corp/app:v1");
    let mut env = StrataEnv::new();
    // hosts.toml makes the loopback registry an https one; no certificate directory at all.
    let hosts = env.scratch().join("hosts");
    fs::create_dir_all(hosts.join(reg.host())).unwrap();
    fs::write(
        hosts.join(reg.host()).join("hosts.toml"),
        format!("server = \"https://{}\"\n", reg.host()),
    )
    .unwrap();
    env.write_config(&serde_json::json!({
        "certs-dirs": [],
        "hosts-dir": hosts,
        "registries-conf": "",
    }));
    let reference = format!("{}/corp/app:v1", reg.host());
    let out = env.run(&["pull", &reference]);
    out.assert_failure();
    assert!(
        combined(&out).contains("UnknownIssuer"),
        "{}",
        combined(&out)
    );
    // The system store as rustls-native-certs reads it: SSL_CERT_FILE names the bundle.
    let bundle = env.scratch().join("system-bundle.pem");
    ca.write_cert(&bundle);
    env.set_env("SSL_CERT_FILE", bundle.to_str().unwrap());
    env.run(&["pull", &reference]).assert_success();
    assert_pulled(&env, &img);
}

// ---------------------------------------------------------------------------------------
// Mirrors: containerd hosts.toml

fn write_hosts_toml(hosts_dir: &Path, registry: &str, text: &str) {
    let d = hosts_dir.join(registry);
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("hosts.toml"), text).unwrap();
}

#[test]
fn hosts_toml_capabilities_headers_and_override_path() {
    let upstream = Registry::start();
    let mirror = Registry::start();
    let img = image("hosts");
    img.push(&upstream, "app:v1");
    img.push(&mirror, "app:v1");
    // The mirror is served under /custom/api (its API root), hence override_path.
    let proxy = FaultProxy::in_front_of(&mirror);
    proxy.rewrite_prefix("/custom/api/", "/v2/");
    let env = StrataEnv::new();
    let hosts = env.scratch().join("hosts");
    let name = "hosts-upstream.invalid";
    write_hosts_toml(
        &hosts,
        name,
        &format!(
            r#"server = "http://{up}"

[host."http://{px}/custom/api"]
  capabilities = ["pull"]
  override_path = true
  [host."http://{px}/custom/api".header]
    X-Dragonfly-Registry = "http://{name}"
    X-Extra = ["a", "b"]
"#,
            up = upstream.host(),
            px = proxy.host(),
        ),
    );
    env.write_config(&serde_json::json!({ "hosts-dir": hosts, "registries-conf": "" }));
    let reference = format!("{name}/app:v1");
    env.run(&["pull", &reference]).assert_success();
    assert_pulled(&env, &img);
    env.run(&["images"]).assert_success();

    // Tag resolution on the server (the mirror may only pull); every blob from the mirror.
    assert_eq!(upstream.request_count_by("GET", "/v2/app/manifests/v1"), 1);
    assert_eq!(
        upstream.request_count_by("GET", "/blobs/"),
        0,
        "{:?}",
        upstream.requests()
    );
    let reqs = proxy.requests();
    let blob_gets: Vec<_> = reqs
        .iter()
        .filter(|r| r.method == "GET" && r.path.starts_with("/custom/api/app/blobs/"))
        .collect();
    assert_eq!(blob_gets.len(), 2, "config + layer: {reqs:?}");
    assert!(
        reqs.iter().all(|r| !r.path.contains("/manifests/v1")),
        "{reqs:?}"
    );
    for r in &reqs {
        assert_eq!(
            r.header_values("X-Dragonfly-Registry"),
            vec![format!("http://{name}")]
        );
        assert_eq!(r.header_values("X-Extra"), vec!["a", "b"]);
    }
    assert_eq!(mirror.request_count_by("GET", "/v2/app/blobs/"), 2);
}

#[test]
fn hosts_toml_tls_mirror_for_unresolvable_upstream() {
    let ca = TestCa::new("mirror CA");
    let img = image("tlsmirror");
    let mirror = tls_registry(&ca, true, &img, "lib/app:v1");
    // The upstream, named by a host that does not resolve, is an empty registry: everything
    // must come from the mirror (the mount's look for a sidecar index ends here, 404).
    let upstream = Registry::start();
    let env = StrataEnv::new();
    let hosts = env.scratch().join("hosts");
    let name = "never-resolves.invalid:5000";
    // ca and client relative to the host directory, as containerd takes them.
    let hdir = hosts.join(name);
    ca.write_cert(&hdir.join("mirror-ca.pem"));
    ca.client("node-1").write_pair(&hdir, "node");
    write_hosts_toml(
        &hosts,
        name,
        &format!(
            r#"server = "http://{up}"

[host."https://{m}"]
  capabilities = ["pull", "resolve"]
  ca = "mirror-ca.pem"
  client = [["node.cert", "node.key"]]
"#,
            up = upstream.host(),
            m = mirror.host()
        ),
    );
    env.write_config(&serde_json::json!({
        "hosts-dir": hosts,
        "certs-dirs": [],
        "registries-conf": "",
    }));
    let reference = format!("{name}/lib/app:v1");
    env.run(&["pull", &reference]).assert_success();
    assert_pulled(&env, &img);
    // And a lazy mount, served by the daemon with the same configuration.
    env.run(&["rmi", &reference]).assert_success();
    let m = env.mount(&reference, &["--no-prefetch"]);
    assert_eq!(
        fs::read_to_string(m.dir.join("etc/name")).unwrap(),
        "tlsmirror\n"
    );
    drop(m);
    assert_eq!(
        upstream.request_count("/blobs/"),
        0,
        "{:?}",
        upstream.requests()
    );
    assert_eq!(
        upstream.request_count("/manifests/v1"),
        0,
        "{:?}",
        upstream.requests()
    );
}

#[test]
fn hosts_toml_skip_verify() {
    let ca = TestCa::new("unknown CA");
    let img = image("skipverify");
    let reg = tls_registry(&ca, false, &img, "sv/app:v1");
    let env = StrataEnv::new();
    let hosts = env.scratch().join("hosts");
    let reference = format!("{}/sv/app:v1", reg.host());
    env.write_config(&serde_json::json!({
        "hosts-dir": hosts,
        "certs-dirs": [],
        "registries-conf": "",
    }));
    write_hosts_toml(
        &hosts,
        &reg.host(),
        &format!("server = \"https://{}\"\n", reg.host()),
    );
    env.run(&["pull", &reference]).assert_failure();
    write_hosts_toml(
        &hosts,
        &reg.host(),
        &format!("server = \"https://{}\"\nskip_verify = true\n", reg.host()),
    );
    env.run(&["pull", &reference]).assert_success();
    assert_pulled(&env, &img);
}

#[test]
fn config_mirror_headers() {
    let upstream = Registry::start();
    let mirror = Registry::start();
    let img = image("cfgheaders");
    img.push(&upstream, "a/app:v1");
    img.push(&mirror, "a/app:v1");
    let proxy = FaultProxy::in_front_of(&mirror);
    let pushed = upstream.requests().len();
    let env = StrataEnv::new();
    env.write_config(&serde_json::json!({
        "registry-mirrors-by-host": { upstream.host(): [proxy.url()] },
        "registry-mirror-headers": { proxy.url(): { "X-Dragonfly-Registry": upstream.url() } },
    }));
    env.run(&["pull", &format!("{}/a/app:v1", upstream.host())])
        .assert_success();
    let reqs = proxy.requests();
    assert!(reqs.len() >= 3, "{reqs:?}");
    for r in &reqs {
        assert_eq!(
            r.header_values("X-Dragonfly-Registry"),
            vec![upstream.url()]
        );
    }
    let up = requests_since(&upstream, pushed);
    assert!(up.is_empty(), "{up:?}");

    // A bad header name is a config error naming the key.
    env.write_config(&serde_json::json!({
        "registry-mirror-headers": { proxy.url(): { "Bad Header": "x" } },
    }));
    let out = env.run(&["images"]);
    out.assert_failure();
    assert!(
        combined(&out).contains("registry-mirror-headers"),
        "{}",
        combined(&out)
    );
}

// ---------------------------------------------------------------------------------------
// Mirrors: containers registries.conf

#[test]
fn registries_conf_rewrites_mirrors_and_blocks() {
    let upstream = Registry::start();
    let mirror = Registry::start();
    let on_both = image("both");
    on_both.push(&upstream, "upstream-team/app:v1");
    on_both.push(&mirror, "mirror-team/app:v1");
    let only_up = image("only-upstream");
    only_up.push(&upstream, "upstream-team/other:v1");
    let (up0, m0) = (upstream.requests().len(), mirror.requests().len());
    let env = StrataEnv::new();
    let conf = env.scratch().join("registries.conf");
    fs::write(
        &conf,
        format!(
            r#"[[registry]]
prefix = "example.invalid/team"
location = "{up}/upstream-team"
[[registry.mirror]]
location = "{m}/mirror-team"

[[registry]]
location = "blocked.invalid"
blocked = true
"#,
            up = upstream.host(),
            m = mirror.host()
        ),
    )
    .unwrap();
    env.write_config(&serde_json::json!({ "registries-conf": conf, "hosts-dir": "" }));

    env.run(&["pull", "example.invalid/team/app:v1"])
        .assert_success();
    assert_pulled(&env, &on_both);
    let m = requests_since(&mirror, m0);
    assert_eq!(
        count(&m, "GET", "/v2/mirror-team/app/manifests/v1"),
        1,
        "{m:?}"
    );
    assert_eq!(count(&m, "GET", "/v2/mirror-team/app/blobs/"), 2, "{m:?}");
    let up = requests_since(&upstream, up0);
    assert!(up.is_empty(), "{up:?}");

    // Not on the mirror: the upstream under its rewritten name.
    env.run(&["pull", "example.invalid/team/other:v1"])
        .assert_success();
    assert_pulled(&env, &only_up);
    let m = requests_since(&mirror, m0);
    assert_eq!(
        count(&m, "GET", "/v2/mirror-team/other/manifests/v1"),
        1,
        "{m:?}"
    );
    let up = requests_since(&upstream, up0);
    assert_eq!(
        count(&up, "GET", "/v2/upstream-team/other/manifests/v1"),
        1,
        "{up:?}"
    );
    assert_eq!(
        count(&up, "GET", "/v2/upstream-team/other/blobs/"),
        2,
        "{up:?}"
    );

    let out = env.run(&["pull", "blocked.invalid/x/y:1"]);
    out.assert_failure();
    let text = combined(&out);
    assert!(
        text.contains("blocked") && text.contains(conf.to_str().unwrap()),
        "{text}"
    );
}

#[test]
fn registries_conf_short_names() {
    let first = Registry::start();
    let second = Registry::start();
    let img = image("short");
    img.push(&second, "shorty:v1");
    let pushed = second.requests().len();
    // The harness's readiness probe is in the log already.
    let first0 = first.requests().len();
    let env = StrataEnv::new();
    let conf = env.scratch().join("registries.conf");
    let write = |text: String| fs::write(&conf, text).unwrap();
    env.write_config(&serde_json::json!({ "registries-conf": conf, "hosts-dir": "" }));

    // Two search registries, enforcing: ambiguous, said before any request.
    write(format!(
        "unqualified-search-registries = [\"{}\", \"{}\"]\n",
        first.host(),
        second.host()
    ));
    let out = env.run(&["pull", "shorty:v1"]);
    out.assert_failure();
    let text = combined(&out);
    assert!(
        text.contains("ambiguous")
            && text.contains(&format!("{}/shorty", first.host()))
            && text.contains(&format!("{}/shorty", second.host())),
        "{text}"
    );
    assert!(requests_since(&first, first0).is_empty());
    assert!(requests_since(&second, pushed).is_empty());

    // Permissive: tried in order, the first lacks it.
    write(format!(
        "short-name-mode = \"permissive\"\nunqualified-search-registries = [\"{}\", \"{}\"]\n",
        first.host(),
        second.host()
    ));
    env.run(&["pull", "shorty:v1"]).assert_success();
    assert_pulled(&env, &img);
    assert_eq!(
        count(&first.requests(), "GET", "/v2/shorty/manifests/v1"),
        1
    );
    let s2 = requests_since(&second, pushed);
    assert_eq!(count(&s2, "GET", "/v2/shorty/manifests/v1"), 1, "{s2:?}");
    let images = env.run(&["images"]).stdout_str();
    assert!(
        images.contains(&format!("{}/shorty", second.host())),
        "{images}"
    );

    // One search registry, and an alias.
    let env2 = StrataEnv::new();
    env2.write_config(&serde_json::json!({ "registries-conf": conf, "hosts-dir": "" }));
    write(format!(
        "unqualified-search-registries = [\"{}\", \"{}\"]\n[aliases]\n\"nick\" = \"{}/shorty\"\n",
        first.host(),
        second.host(),
        second.host()
    ));
    env2.run(&["pull", "nick:v1"]).assert_success();
    assert_pulled(&env2, &img);
}

#[test]
fn broken_files_are_named_and_do_not_break_local_commands() {
    let reg = Registry::start();
    let img = image("broken");
    img.push(&reg, "b/app:v1");
    let env = StrataEnv::new();
    let conf = env.scratch().join("registries.conf");
    fs::write(&conf, "[registries.search]\nregistries = [\"x\"]\n").unwrap();
    env.write_config(&serde_json::json!({ "registries-conf": conf, "hosts-dir": "" }));
    env.run(&["images"]).assert_success();
    let out = env.run(&["pull", &format!("{}/b/app:v1", reg.host())]);
    out.assert_failure();
    assert!(
        combined(&out).contains(conf.to_str().unwrap()),
        "{}",
        combined(&out)
    );

    let hosts = env.scratch().join("hosts");
    write_hosts_toml(
        &hosts,
        &reg.host(),
        "[host.\"http://127.0.0.1:1\"]\ncapabilities = [\"fly\"]\n",
    );
    env.write_config(&serde_json::json!({ "registries-conf": "", "hosts-dir": hosts }));
    let out = env.run(&["pull", &format!("{}/b/app:v1", reg.host())]);
    out.assert_failure();
    let text = combined(&out);
    assert!(
        text.contains("hosts.toml") && text.contains("capabilities"),
        "{text}"
    );
}
