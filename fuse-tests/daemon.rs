//! The strata daemon: one process per root serving every mount from one cache. Real
//! registry behind a pass-through proxy (it counts the Range requests that reach the
//! registry), real FUSE, real runc.

mod common;

use common::testdata::pseudo;
use common::{busybox_image, Fault, FaultProxy, Layer, OutputExt, Registry, StrataEnv};
use std::path::Path;

fn daemon_pid(root: &Path) -> Option<i32> {
    std::fs::read_to_string(root.join("daemon.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Running (not gone, not a zombie).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, r)| !r.starts_with('Z'))
    })
}

/// `daemon --stop`: when it returns, the daemon has exited (its server, named in
/// `daemon.pid`, and its supervisor, named in `daemon.lock`), so the next start takes the lock.
fn stop_daemon(env: &StrataEnv) {
    let pid_in = |f: &str| -> Option<i32> {
        std::fs::read_to_string(env.root().join(f))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let running: Vec<i32> = [pid_in("daemon.pid"), pid_in("daemon.lock")]
        .into_iter()
        .flatten()
        .filter(|p| alive(*p))
        .collect();
    env.run(&["daemon", "--stop"]).assert_success();
    for pid in running {
        assert!(!alive(pid), "daemon process {pid} still runs after --stop");
    }
}

/// A daemon started while the root's lock is held by one that no longer answers (quitting:
/// ending its mounts, flushing its cache; here the test holds the lock, with no socket)
/// waits for the lock instead of failing, and serves once it is free.
#[test]
fn a_daemon_started_while_the_last_one_quits_waits_for_it() {
    use std::os::fd::AsRawFd;
    let env = StrataEnv::new();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(env.root().join("daemon.lock"))
        .unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let hold = std::time::Duration::from_millis(1500);
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(hold);
        drop(lock);
    });
    let t0 = std::time::Instant::now();
    env.run(&["daemon"]).assert_success();
    let took = t0.elapsed();
    releaser.join().unwrap();
    assert!(
        took >= hold,
        "served after {took:?} while the lock was held"
    );
    let server = daemon_pid(&env.root()).expect("daemon.pid");
    assert!(alive(server));
    stop_daemon(&env);
}

/// Concurrent cold `strata run`s of one image on one root: one daemon serves them all, and
/// every byte range of the layers reaches the registry once (the proxy's log), while every
/// container reads the right bytes.
#[test]
fn concurrent_cold_runs_share_one_daemon_and_fetch_each_span_once() {
    let reg = Registry::start();
    let big = pseudo(5 << 20, 3);
    let img = busybox_image()
        .layer(Layer::new().dir("data").file("data/big.bin", big.clone()))
        .build("v1");
    img.push(&reg, "daemon/app:v1");
    StrataEnv::new()
        .run(&["index", &format!("{}/daemon/app:v1", reg.host()), "--push"])
        .assert_success();
    let proxy = FaultProxy::in_front_of(&reg);
    let reference = format!("{}/daemon/app:v1", proxy.host());
    let env = StrataEnv::new();
    let want = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&big))
    };
    const N: usize = 6;
    let outs: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..N)
            .map(|_| {
                s.spawn(|| {
                    env.run(&[
                        "run",
                        "--rm",
                        "--no-prefetch",
                        &reference,
                        "sha256sum",
                        "/data/big.bin",
                    ])
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for o in &outs {
        o.assert_success();
        assert!(o.stdout_str().starts_with(&want), "{}", o.stdout_str());
    }
    // One daemon served them all and is still there (idle exit comes later).
    let pid = daemon_pid(&env.root()).expect("daemon.pid");
    assert!(alive(pid), "daemon {pid} is gone");
    let log = std::fs::read_to_string(env.root().join("daemon.log")).unwrap_or_default();
    let serving = log.matches("serving").count();
    assert_eq!(serving, 1, "more than one daemon served the root:\n{log}");

    // Every Range of each layer blob reached the registry once: sorted, they never overlap
    // beyond the one byte neighbouring gzip spans share.
    let layer_digests: Vec<String> = img.layers.iter().map(|l| l.digest.clone()).collect();
    proxy.handle().assert_ranges_fetched_once(&layer_digests);
    // And the sidecar index heads were fetched once, not once per run.
    let manifests_of_index = proxy
        .handle()
        .requests()
        .iter()
        .filter(|r| r.path.contains("/manifests/sha256-"))
        .count();
    assert!(
        manifests_of_index <= 1,
        "referrers tag resolved {manifests_of_index} times"
    );
    // The daemon opened connections to the registry while the CLIs resolved (`GET /v2/`,
    // which nothing else sends here).
    let pings = proxy
        .handle()
        .requests()
        .iter()
        .filter(|r| r.path == "/v2/")
        .count();
    assert!(pings >= 1, "no preconnect to the registry");
    stop_daemon(&env);
}

/// A cold `strata run`: as soon as the CLI has the manifest, the daemon looks up the layer
/// indexes while the CLI is still fetching the config (held back 1.5 s by the proxy here),
/// and the mount uses that lookup instead of starting its own.
#[test]
fn a_cold_run_looks_up_layer_indexes_while_the_cli_fetches_the_config() {
    let reg = Registry::start();
    let img = busybox_image()
        .layer(
            Layer::new()
                .dir("data")
                .file("data/a.txt", b"early\n".to_vec()),
        )
        .build("v1");
    img.push(&reg, "daemon/early:v1");
    StrataEnv::new()
        .run(&[
            "index",
            &format!("{}/daemon/early:v1", reg.host()),
            "--push",
        ])
        .assert_success();
    let proxy = FaultProxy::in_front_of(&reg);
    let config = img.config_digest.clone();
    proxy.handle().on_path(
        &config,
        Some(1),
        Fault::Delay(std::time::Duration::from_millis(1500)),
    );
    let env = StrataEnv::new();
    let reference = format!("{}/daemon/early:v1", proxy.host());
    let out = env.run(&[
        "run",
        "--rm",
        "--no-prefetch",
        &reference,
        "cat",
        "/data/a.txt",
    ]);
    out.assert_success();
    assert_eq!(out.stdout_str(), "early\n");
    // The proxy logs a request when it has answered: the sidecar lookup (here through the
    // tag's index alias, which `strata index --push` pushed) and the index blobs it names were
    // answered before the delayed config was.
    let log = proxy.handle().requests();
    let paths: Vec<&String> = log.iter().map(|r| &r.path).collect();
    let at = |f: &dyn Fn(&str) -> bool| log.iter().position(|r| f(&r.path));
    let config_at = at(&|p| p.contains(&config)).expect("config fetched");
    let alias_at = at(&|p| p.ends_with("/manifests/v1.strata-index")).expect("alias looked up");
    let image_blob =
        |p: &str| p.contains(&config) || img.layers.iter().any(|l| p.contains(&l.digest));
    // The index heads are fetched whole; the windows of the spans the container reads come
    // later, by range, from the sidecar's full index blobs.
    let blobs_at = log
        .iter()
        .rposition(|r| r.path.contains("/blobs/") && !image_blob(&r.path) && r.range.is_none())
        .expect("index blobs fetched");
    assert!(
        alias_at < config_at && blobs_at < config_at,
        "the layer indexes were looked up only after the config {config}: {paths:?}"
    );
    // One lookup, through the alias alone: the mount took the daemon's, and the referrers
    // (this registry has no referrers API: the tag schema) were not asked.
    let count = |f: &dyn Fn(&str) -> bool| log.iter().filter(|r| f(&r.path)).count();
    let aliases = count(&|p| p.ends_with("/manifests/v1.strata-index"));
    let tag_lookups = count(&|p| p.contains("/manifests/sha256-"));
    assert_eq!((aliases, tag_lookups), (1, 0), "{paths:?}");
    // And the manifest was asked for once (the daemon did not resolve the name again).
    let by_tag = log
        .iter()
        .filter(|r| r.path.ends_with("/manifests/v1"))
        .count();
    assert_eq!(by_tag, 1, "manifest by tag asked {by_tag} times");
    stop_daemon(&env);
}

/// A tag's index alias that names another image's index (the tag moved on and the new image
/// was indexed by digest) is not used: the run finds the new image's index through its
/// referrers and reads the new image's bytes.
#[test]
fn a_stale_index_alias_is_ignored() {
    let reg = Registry::start();
    let build = |text: &[u8]| {
        busybox_image()
            .layer(Layer::new().dir("data").file("data/a.txt", text.to_vec()))
            .build("v1")
    };
    let (old, new) = (build(b"old\n"), build(b"new, longer\n"));
    let name = format!("{}/daemon/alias", reg.host());
    old.push(&reg, "daemon/alias:v1");
    StrataEnv::new()
        .run(&["index", &format!("{name}:v1"), "--push"])
        .assert_success();
    new.push(&reg, "daemon/alias:v1");
    let out = StrataEnv::new().run(&[
        "index",
        &format!("{name}@{}", new.manifest_digest),
        "--push",
    ]);
    out.assert_success();
    assert!(
        !out.stderr_str().contains("strata-index") && !out.stdout_str().contains("strata-index"),
        "an index pushed by digest moved the alias"
    );
    let proxy = FaultProxy::in_front_of(&reg);
    let env = StrataEnv::new();
    let out = env.run(&[
        "run",
        "--rm",
        "--no-prefetch",
        &format!("{}/daemon/alias:v1", proxy.host()),
        "cat",
        "/data/a.txt",
    ]);
    out.assert_success();
    assert_eq!(out.stdout_str(), "new, longer\n");
    let log = proxy.handle().requests();
    let paths: Vec<&String> = log.iter().map(|r| &r.path).collect();
    let count = |f: &dyn Fn(&str) -> bool| log.iter().filter(|r| f(&r.path)).count();
    assert_eq!(
        count(&|p| p.ends_with("/manifests/v1.strata-index")),
        1,
        "{paths:?}"
    );
    assert!(
        count(&|p| p.contains("/manifests/sha256-")) >= 1,
        "{paths:?}"
    );
    // The old image's index blobs were not fetched: only the new image's layer index was used
    // (the layer itself was read by range, not downloaded whole).
    let new_layer = &new.layers[1].digest;
    assert!(
        !log.iter()
            .any(|r| r.path.contains(new_layer) && r.range.is_none()),
        "the new layer was downloaded whole (no index found): {paths:?}"
    );
    stop_daemon(&env);
}

/// A daemon whose root was deleted and made again while it ran (a new daemon serves the new
/// root) leaves the new daemon's control socket in place when it is stopped.
#[test]
fn the_old_daemon_of_a_replaced_root_leaves_the_new_socket_alone() {
    let env = StrataEnv::new();
    env.run(&["daemon"]).assert_success();
    let root = env.root();
    let old = daemon_pid(&root).expect("daemon.pid");
    let ppid = |pid: i32| -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
        after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    };
    let old_supervisor = ppid(old);
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::create_dir_all(&root).unwrap();
    env.run(&["daemon"]).assert_success();
    let new = daemon_pid(&root).expect("new daemon.pid");
    assert_ne!(old, new);
    for pid in [old_supervisor, old] {
        if pid > 1 {
            // SAFETY: kill(2) of the daemon processes this test started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
    for _ in 0..200 {
        if !alive(old) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert!(!alive(old), "old daemon {old} did not exit on SIGTERM");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        root.join("strata.sock").exists(),
        "the old daemon removed the new daemon's socket"
    );
    assert!(alive(new));
    stop_daemon(&env);
}

/// Two daemons started at once on one root: exactly one serves, the other exits 1 and says
/// which process serves; the socket is 0600; a socket left by a killed daemon is replaced.
#[test]
fn exactly_one_daemon_serves_a_root_and_stale_sockets_are_replaced() {
    use std::os::unix::fs::PermissionsExt;
    let env = StrataEnv::new();
    let spawn = || {
        env.command(&["daemon", "--foreground"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (spawn(), spawn());
    let sock = env.root().join("strata.sock");
    let t0 = std::time::Instant::now();
    let loser = loop {
        if let Some(st) = a.try_wait().unwrap() {
            break (st, a.wait_with_output().unwrap(), b);
        }
        if let Some(st) = b.try_wait().unwrap() {
            break (st, b.wait_with_output().unwrap(), a);
        }
        assert!(t0.elapsed().as_secs() < 20, "neither daemon gave way");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let (status, out, mut winner) = loser;
    assert_eq!(status.code(), Some(1));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("already serves"), "{msg}");
    let pid = winner.id() as i32;
    assert!(msg.contains(&pid.to_string()), "{msg}");
    while !sock.exists() {
        assert!(t0.elapsed().as_secs() < 20, "no socket");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // daemon.pid names the server, a child of the supervisor that won.
    let server = loop {
        if let Some(p) = daemon_pid(&env.root()).filter(|p| *p != pid && alive(*p)) {
            break p;
        }
        assert!(t0.elapsed().as_secs() < 20, "no server pid");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let stat = std::fs::read_to_string(format!("/proc/{server}/stat")).unwrap();
    let ppid: i32 = stat
        .rsplit_once(") ")
        .unwrap()
        .1
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ppid, pid, "the server is not the supervisor's child");

    // kill -9 of both: the socket file stays behind; the next command starts a new daemon
    // anyway.
    winner.kill().unwrap();
    winner.wait().unwrap();
    // SAFETY: kill(2) of the server of our own root.
    unsafe { libc::kill(server, libc::SIGKILL) };
    while alive(server) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(sock.exists());
    let out = env.run(&["daemon"]);
    out.assert_success();
    let new_pid = daemon_pid(&env.root()).expect("new daemon.pid");
    assert_ne!(new_pid, server);
    assert!(alive(new_pid));
    stop_daemon(&env);
    assert!(!sock.exists(), "socket left after --stop");
}
