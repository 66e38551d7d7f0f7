//! Network faults and crashes under a lazy mount: a real registry behind the fault-injecting
//! proxy (5xx, 429 + Retry-After, refused connections, stalls, truncated bodies, 200 instead
//! of 206), `kill -9` of the mount daemon in the middle of reads and after fsync-ed writes,
//! and a dead mirror in front of the upstream. A read either returns the right bytes or fails
//! with EIO (ETIMEDOUT when the fetch deadline passed) within a bounded time; once the registry
//! is back, the same read succeeds. (Flipped bytes -> EIO is in `lazy.rs`.)

mod common;
use common::cli::Mounted;
use common::testdata::pseudo;

use common::{DeadPort, Fault, FaultProxy, ImageBuilder, Layer, OutputExt, Registry, StrataEnv};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Files of the test image: path -> bytes.
fn files() -> BTreeMap<&'static str, Vec<u8>> {
    BTreeMap::from([
        ("etc/os-release", b"NAME=faults\n".to_vec()),
        ("usr/lib/a.bin", pseudo(3 << 20, 1)),
        ("usr/lib/b.bin", pseudo(5 << 20, 2)),
        ("usr/lib/c.bin", pseudo(2 << 20, 3)),
        ("usr/share/small.txt", b"small\n".to_vec()),
    ])
}

/// Push the image and its sidecar index (published straight to the registry, not through
/// any proxy); returns "HOST/repo:tag" relative to the registry.
fn publish(reg: &Registry, repo_tag: &str) {
    let mut l = Layer::new()
        .dir("etc")
        .dir("usr")
        .dir("usr/lib")
        .dir("usr/share");
    for (p, d) in files() {
        l = l.file(p, d);
    }
    ImageBuilder::new().layer(l).build("v1").push(reg, repo_tag);
    StrataEnv::new()
        .run(&["index", &format!("{}/{repo_tag}", reg.host()), "--push"])
        .assert_success();
}

/// An environment without speculation (`fetch-ahead-spans: 0`, `fetch-siblings: 0`), for
/// tests whose every step reads a file nothing has fetched yet: a guess made after one step's
/// recovery read would otherwise fetch the next step's file before its fault is set, and so
/// would a sibling fetch (the files share a directory and a suffix) still retrying when one
/// step's fault clears (seen once in a full suite run). (A read that joins a failed guess
/// fetches on its own: `cache::tests::policy`.)
fn env_without_speculation() -> StrataEnv {
    let env = StrataEnv::new();
    env.write_config(&serde_json::json!({"fetch-ahead-spans": 0, "fetch-siblings": 0}));
    env
}

/// `strata mount REF <scratch>/mnt --no-prefetch [extra]`.
fn mount<'a>(env: &'a StrataEnv, reference: &str, extra: &[&str]) -> Mounted<'a> {
    env.mount(reference, &[&["--no-prefetch"], extra].concat())
}

/// Read `path` in a thread; panic if it has not returned after `limit`. Returns the result
/// and how long it took.
fn timed_read(path: PathBuf, limit: Duration) -> (std::io::Result<Vec<u8>>, Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read(&path));
    });
    match rx.recv_timeout(limit) {
        Ok(r) => (r, started.elapsed()),
        Err(_) => panic!("read still blocked after {limit:?}: reads must not hang"),
    }
}

fn expect_eio(r: std::io::Result<Vec<u8>>, what: &str) {
    expect_errno(r, libc::EIO, what)
}

fn expect_errno(r: std::io::Result<Vec<u8>>, errno: i32, what: &str) {
    match r {
        Ok(b) => panic!(
            "{what}: read returned {} bytes instead of errno {errno}",
            b.len()
        ),
        Err(e) => assert_eq!(e.raw_os_error(), Some(errno), "{what}: {e}"),
    }
}

fn daemon_log(env: &StrataEnv) -> String {
    env.daemon_logs()
}

fn assert_no_panic(env: &StrataEnv) {
    let log = daemon_log(env);
    assert!(
        !log.contains("panicked") && !log.contains("panic:"),
        "daemon panicked:\n{log}"
    );
}

/// 503 three times, then 429 with Retry-After twice: the client's retries absorb both and
/// the reads return the right bytes.
#[test]
fn server_errors_and_rate_limits_are_retried() {
    let reg = Registry::start();
    publish(&reg, "faults/retry:v1");
    let proxy = FaultProxy::in_front_of(&reg);
    let env = StrataEnv::new();
    let m = mount(&env, &format!("{}/faults/retry:v1", proxy.host()), &[]);
    let want = files();

    proxy.on_path("/blobs/", Some(3), Fault::status(503));
    let (r, took) = timed_read(m.dir.join("usr/lib/a.bin"), Duration::from_secs(60));
    assert_eq!(r.unwrap(), want["usr/lib/a.bin"], "after 503s");
    assert_eq!(proxy.faults_applied(), 3);
    eprintln!("3 x 503 absorbed in {took:?}");

    proxy.clear();
    proxy.on_path("/blobs/", Some(2), Fault::too_many_requests());
    let (r, took) = timed_read(m.dir.join("usr/lib/b.bin"), Duration::from_secs(60));
    assert_eq!(r.unwrap(), want["usr/lib/b.bin"], "after 429s");
    // Readahead may send two requests at once, so the two 429s can be waited out in
    // parallel: at least one Retry-After of 1 s must have been honoured.
    assert!(
        took >= Duration::from_secs(1),
        "Retry-After: 1 twice, but the read took only {took:?}"
    );
    assert_eq!(proxy.faults_applied(), 5);
    assert_no_panic(&env);
}

/// Refused connections, truncated bodies and an ignored Range header each turn into EIO
/// within a bounded time; after the fault clears, the same file reads right.
#[test]
fn refused_truncated_and_rangeless_reads_fail_then_recover() {
    let reg = Registry::start();
    publish(&reg, "faults/eio:v1");
    let proxy = FaultProxy::in_front_of(&reg);
    let env = env_without_speculation();
    let m = mount(&env, &format!("{}/faults/eio:v1", proxy.host()), &[]);
    let want = files();
    for (fault, file) in [
        (Fault::Refuse, "usr/lib/a.bin"),
        (Fault::Truncate, "usr/lib/b.bin"),
        (Fault::IgnoreRange, "usr/lib/c.bin"),
    ] {
        proxy.set(fault.clone());
        let (r, took) = timed_read(m.dir.join(file), Duration::from_secs(60));
        expect_eio(r, &format!("{fault:?}"));
        eprintln!("{fault:?}: EIO after {took:?}");
        assert!(
            took < Duration::from_secs(30),
            "{fault:?}: EIO took {took:?}"
        );
        proxy.set(Fault::Pass);
        let (r, _) = timed_read(m.dir.join(file), Duration::from_secs(30));
        assert_eq!(r.unwrap(), want[file], "{fault:?}: after recovery");
    }
    let s = env.run(&["stats", "--json", m.dir.to_str().unwrap()]);
    s.assert_success();
    assert_no_panic(&env);
}

/// A registry that accepts and never answers: the read fails with ETIMEDOUT after
/// `fetch-timeout` (3 s here; default 60 s) instead of waiting on reqwest's 60 s read timeout
/// per attempt.
#[test]
fn stalled_registry_hits_the_fetch_deadline() {
    let reg = Registry::start();
    publish(&reg, "faults/stall:v1");
    let proxy = FaultProxy::in_front_of(&reg);
    let env = StrataEnv::new();
    env.write_config(&serde_json::json!({"fetch-timeout": 3}));
    let m = mount(&env, &format!("{}/faults/stall:v1", proxy.host()), &[]);
    proxy.set(Fault::Delay(Duration::from_secs(25)));
    let (r, took) = timed_read(m.dir.join("usr/lib/a.bin"), Duration::from_secs(60));
    expect_errno(r, libc::ETIMEDOUT, "stalled registry");
    // At least the deadline, and well before the 25 s stall would have ended by itself.
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(20),
        "ETIMEDOUT after {took:?}, fetch-timeout is 3 s"
    );
    proxy.set(Fault::Pass);
    let (r, _) = timed_read(m.dir.join("usr/lib/a.bin"), Duration::from_secs(30));
    assert_eq!(r.unwrap(), files()["usr/lib/a.bin"]);
    assert!(
        daemon_log(&env).contains("fetch timed out"),
        "{}",
        daemon_log(&env)
    );
    assert_no_panic(&env);
}

/// The first mirror is dead; lazy reads go to the upstream.
#[test]
fn dead_mirror_then_upstream_for_lazy_reads() {
    let reg = Registry::start();
    publish(&reg, "faults/mirror:v1");
    let dead = DeadPort::new();
    let env = StrataEnv::new();
    env.write_config(&serde_json::json!({
        "registry-mirrors-by-host": { reg.host(): [dead.url()] },
    }));
    let m = mount(&env, &format!("{}/faults/mirror:v1", reg.host()), &[]);
    let (r, took) = timed_read(m.dir.join("usr/lib/c.bin"), Duration::from_secs(60));
    assert_eq!(r.unwrap(), files()["usr/lib/c.bin"]);
    eprintln!("read past a dead mirror in {took:?}");
    let s: serde_json::Value = serde_json::from_str(
        &env.run(&["stats", "--json", m.dir.to_str().unwrap()])
            .stdout_str(),
    )
    .unwrap();
    assert_eq!(s["index_sources"], serde_json::json!(["Sidecar"]), "{s}");
}

/// Every span file in the cache verifies against its layer's index.
fn check_cache_spans(root: &Path) -> usize {
    let mut n = 0;
    let Ok(rd) = std::fs::read_dir(root.join("cache")) else {
        return 0;
    };
    for layer in rd.flatten() {
        if !layer.path().is_dir() {
            continue; // not a layer (the disk-full test's filler)
        }
        let hex = layer.file_name().to_string_lossy().into_owned();
        let ix = strata::layer::LayerIndex::open(&root.join("indexes").join(&hex))
            .unwrap_or_else(|e| panic!("index of cached layer {hex}: {e}"));
        let layout = strata::cache::Layout::new(Arc::new(ix));
        for f in std::fs::read_dir(layer.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let Ok(span) = name.parse::<usize>() else {
                continue; // temp file of a killed writer: never read, removed at open
            };
            let data = std::fs::read(f.path()).unwrap();
            assert!(
                layout.verify(span, &data),
                "cached span {hex}/{span} fails verification"
            );
            n += 1;
        }
    }
    n
}

fn is_mounted(p: &Path) -> bool {
    let want = p.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// `kill -9` of the daemon (supervisor and server) while reads wait on slow fetches and after
/// fsync-ed writes: the mount turns stale (callers get errors, not a hang), `umount -f` cleans it, the cache holds
/// only verified spans, the upper keeps the fsync-ed data, and a new mount reads everything
/// right.
#[test]
fn kill_9_during_reads_leaves_a_consistent_cache_and_upper() {
    let reg = Registry::start();
    publish(&reg, "faults/kill:v1");
    let proxy = FaultProxy::in_front_of(&reg);
    let env = StrataEnv::new();
    let upper = env.scratch().join("upper");
    let reference = format!("{}/faults/kill:v1", proxy.host());
    let m = mount(&env, &reference, &["--upper", upper.to_str().unwrap()]);
    let mnt = m.dir.clone();
    let want = files();

    // Fsync-ed writes: a new file and a copied-up lower file.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(mnt.join("etc/new.conf")).unwrap();
        f.write_all(b"written before the crash\n").unwrap();
        f.sync_all().unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(mnt.join("etc/os-release"))
            .unwrap();
        f.write_all(b"EXTRA=1\n").unwrap();
        f.sync_all().unwrap();
    }
    // One file fully cached before the crash.
    assert_eq!(
        std::fs::read(mnt.join("usr/lib/c.bin")).unwrap(),
        want["usr/lib/c.bin"]
    );

    // Slow fetches, readers in flight, then SIGKILL.
    let waited = |s: &serde_json::Value| s["fs_reads_waited"].as_u64();
    let live = || -> Option<serde_json::Value> {
        let out = env.run(&["stats", "--json", mnt.to_str().unwrap()]);
        serde_json::from_str(&out.stdout_str()).ok()
    };
    let waited_before = live().and_then(|s| waited(&s)).expect("stats before");
    proxy.set(Fault::Delay(Duration::from_millis(700)));
    let readers: Vec<_> = ["usr/lib/a.bin", "usr/lib/b.bin"]
        .iter()
        .map(|f| {
            let p = mnt.join(f);
            std::thread::spawn(move || std::fs::read(p).map(|b| b.len()))
        })
        .collect();
    // Both readers are waiting on the (delayed) network when the daemon's live counters
    // say two reads wait.
    let s = common::poll_until(
        "two reads waiting on slow fetches",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || {
            let s = live()?;
            (waited(&s)? >= waited_before + 2).then_some(s)
        },
    );
    let pid = s["pid"].as_i64().expect("daemon pid") as i32;
    // The whole daemon dies: its supervisor first (else it would start a new server on the
    // same mounts, fuse-tests/daemon_restart.rs), then the server.
    let sup: i32 = std::fs::read_to_string(env.root().join("daemon.lock"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(sup), nix::sys::signal::SIGKILL).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    let killed = Instant::now();
    for r in readers {
        let res = r.join().unwrap();
        // Either it finished before the kill or it failed; it did not hang.
        if let Err(e) = res {
            assert!(
                matches!(
                    e.raw_os_error(),
                    Some(libc::ENOTCONN) | Some(libc::EIO) | Some(libc::ECONNABORTED)
                ),
                "{e}"
            );
        }
    }
    // Not a hang: generous for a loaded machine.
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "{:?}",
        killed.elapsed()
    );
    proxy.set(Fault::Pass);

    // Stale: every access that reaches the file system fails with ENOTCONN, nothing hangs.
    // (A path the kernel has never looked up: attributes it still caches for recently used
    // ones, like `etc`, may be answered without asking the dead daemon.)
    let e = std::fs::metadata(mnt.join("usr/share/small.txt")).expect_err("stale mount answered");
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    let plain = env.run(&["umount", mnt.to_str().unwrap()]);
    if !plain.status.success() {
        assert!(
            plain.stderr_str().contains("umount -f"),
            "{}",
            plain.stderr_str()
        );
        env.run(&["umount", "-f", mnt.to_str().unwrap()])
            .assert_success();
    }
    assert!(!is_mounted(&mnt), "still mounted after umount -f");

    // The upper kept the fsync-ed data; the cache holds only verified spans.
    assert_eq!(
        std::fs::read(upper.join("etc/new.conf")).unwrap(),
        b"written before the crash\n"
    );
    assert_eq!(
        std::fs::read(upper.join("etc/os-release")).unwrap(),
        b"NAME=faults\nEXTRA=1\n"
    );
    let spans = check_cache_spans(&env.root());
    assert!(spans > 0, "nothing was cached before the crash");

    // A new mount over the same upper: everything reads right.
    drop(m);
    let m = mount(&env, &reference, &["--upper", upper.to_str().unwrap()]);
    for (p, d) in &want {
        let got = std::fs::read(m.dir.join(p)).unwrap();
        if *p == "etc/os-release" {
            assert_eq!(got, b"NAME=faults\nEXTRA=1\n");
        } else {
            assert_eq!(&got, d, "{p} after remount");
        }
    }
    assert_eq!(
        std::fs::read(m.dir.join("etc/new.conf")).unwrap(),
        b"written before the crash\n"
    );
    check_cache_spans(&env.root());
    // Temp files of the killed writer are gone once a cache has been opened again.
    for layer in std::fs::read_dir(env.root().join("cache"))
        .unwrap()
        .flatten()
    {
        for f in std::fs::read_dir(layer.path()).unwrap().flatten() {
            let n = f.file_name().to_string_lossy().into_owned();
            assert!(n.parse::<u32>().is_ok(), "leftover cache file {n}");
        }
    }
    drop(m);
    let log = daemon_log(&env);
    assert!(!log.contains("panicked"), "{log}");
}

/// A 206 whose `Content-Range` is not the range asked for (start shifted, body shorter or
/// longer than asked): the read fails with EIO, the daemon log names the Content-Range, and
/// nothing from the wrong range is served or cached; once the fault clears the file reads
/// right.
#[test]
fn wrong_content_range_is_refused() {
    let reg = Registry::start();
    publish(&reg, "faults/crange:v1");
    let proxy = FaultProxy::in_front_of(&reg);
    let env = env_without_speculation();
    let m = mount(&env, &format!("{}/faults/crange:v1", proxy.host()), &[]);
    let want = files();
    // Longer first, on the first file: at the end of the blob the registry would clamp a
    // longer range back to the one asked for.
    for ((start, end), file) in [
        ((0, 4096), "usr/lib/a.bin"),
        ((7, 7), "usr/lib/b.bin"),
        ((0, -4096), "usr/lib/c.bin"),
    ] {
        let fault = Fault::MoveRange { start, end };
        proxy.on_path("/blobs/", None, fault.clone());
        let (r, took) = timed_read(m.dir.join(file), Duration::from_secs(60));
        expect_eio(r, &format!("{fault:?}"));
        eprintln!("{fault:?}: EIO after {took:?}");
        assert!(
            proxy
                .requests()
                .iter()
                .any(|r| r.fault == fault && r.status == 206),
            "the registry never answered a moved range with 206"
        );
        proxy.clear();
        let (r, _) = timed_read(m.dir.join(file), Duration::from_secs(30));
        assert_eq!(r.unwrap(), want[file], "{fault:?}: after recovery");
    }
    drop(m);
    // Each refusal names both ranges: "asked for bytes A-B, registry answered 206 with
    // Content-Range \"bytes C-D/TOTAL\"". Every moved range must show up as (C-A, D-B).
    let log = daemon_log(&env);
    let mut seen = std::collections::BTreeSet::new();
    for line in log.lines() {
        let Some((_, rest)) = line.split_once("asked for bytes ") else {
            continue;
        };
        let num = |s: &str| s.trim().parse::<i64>().unwrap();
        let (asked, got) = rest
            .split_once(", registry answered 206 with Content-Range ")
            .unwrap();
        let (a, b) = asked.split_once('-').unwrap();
        let got = got
            .trim_start_matches(['\\', '"'])
            .strip_prefix("bytes ")
            .unwrap();
        let (c, d) = got.split_once('/').unwrap().0.split_once('-').unwrap();
        seen.insert((num(c) - num(a), num(d) - num(b)));
    }
    // A piece of the sidecar shorter than 4 KiB (a trimmed window, a block record group)
    // moved 4096 bytes short is clamped by the proxy to its first byte: (0, 1 - its length).
    let moved: std::collections::BTreeSet<(i64, i64)> =
        [(7, 7), (0, -4096), (0, 4096)].into_iter().collect();
    assert!(
        moved.is_subset(&seen)
            && seen
                .iter()
                .all(|p| moved.contains(p) || (p.0 == 0 && (-4096..0).contains(&p.1))),
        "refusals naming the Content-Range {seen:?}:\n{log}"
    );
    assert!(check_cache_spans(&env.root()) > 0);
    assert_no_panic(&env);
}

/// `strata login HOST` in `env` with the registry's credentials.
fn login(env: &StrataEnv, reg: &Registry, host: &str) {
    let (user, pass) = reg.creds().expect("registry with credentials");
    env.run_stdin(
        &["login", "-u", user, "--password-stdin", host],
        format!("{pass}\n").as_bytes(),
    )
    .assert_success();
}

/// Bearer tokens that live 2 s (the issuer backdates `exp` by the registry's 60 s leeway, so
/// the registry itself refuses them after 2 s) and a lazy read that takes several times
/// longer (each blob request delayed 1 s): the client meets 401s in the middle of the read,
/// fetches new tokens and carries on; every byte is right.
/// A bearer-token registry whose tokens the registry refuses 2 s after issue (the issuer
/// backdates `exp` by distribution's 60 s leeway), holding the test image as `repo_tag` and
/// its sidecar index.
fn short_token_registry(repo_tag: &str) -> Registry {
    let reg = Registry::with_token_options(common::TokenOptions {
        expires_in: 2,
        registry_leeway: 60,
        ..Default::default()
    });
    let mut l = Layer::new()
        .dir("etc")
        .dir("usr")
        .dir("usr/lib")
        .dir("usr/share");
    for (p, d) in files() {
        l = l.file(p, d);
    }
    ImageBuilder::new()
        .layer(l)
        .build("v1")
        .push(&reg, repo_tag);
    let publisher = StrataEnv::new();
    login(&publisher, &reg, &reg.host());
    publisher
        .run(&["index", &format!("{}/{repo_tag}", reg.host()), "--push"])
        .assert_success();
    reg
}

#[test]
fn expiring_tokens_are_refreshed_during_a_long_lazy_read() {
    let reg = short_token_registry("faults/token:v1");
    let ts = reg.token_server().unwrap();
    let proxy = FaultProxy::in_front_of(&reg);
    let env = StrataEnv::new();
    login(&env, &reg, &proxy.host());
    let m = mount(&env, &format!("{}/faults/token:v1", proxy.host()), &[]);
    let want = files();

    let before = ts.issued();
    proxy.on_path("/blobs/", None, Fault::Delay(Duration::from_secs(1)));
    let started = Instant::now();
    for f in ["usr/lib/a.bin", "usr/lib/b.bin", "usr/lib/c.bin"] {
        let (r, _) = timed_read(m.dir.join(f), Duration::from_secs(60));
        assert_eq!(r.unwrap(), want[f], "{f}");
    }
    let took = started.elapsed();
    let issued = ts.issued() - before;
    let refused = proxy
        .requests()
        .iter()
        .filter(|r| r.path.contains("/blobs/") && r.status == 401)
        .count();
    eprintln!("lazy read of 10 MiB took {took:?}: {issued} new tokens, {refused} blob 401s");
    assert!(
        took > Duration::from_secs(5),
        "the read ({took:?}) must outlive the 2 s token more than twice"
    );
    assert!(issued >= 2, "only {issued} token(s) issued during {took:?}");
    assert!(
        refused >= 1,
        "no expired token was refused: is exp enforced?"
    );
    reg.settle_logs();
    assert!(
        reg.log().contains("token not to be used after"),
        "the registry never saw an expired token"
    );
    assert_no_panic(&env);
}

/// The same 2 s tokens during the background prefetch (whole layer, runs of 4 spans, every
/// blob request delayed 1 s): the prefetch meets expired tokens, refreshes them and caches
/// every span (each verifies); afterwards every file reads right with the registry refused.
#[test]
fn expiring_tokens_are_refreshed_during_the_background_prefetch() {
    let reg = short_token_registry("faults/tokenpf:v1");
    let ts = reg.token_server().unwrap();
    let proxy = FaultProxy::in_front_of(&reg);
    let env = StrataEnv::new();
    login(&env, &reg, &proxy.host());
    proxy.on_path("/blobs/", None, Fault::Delay(Duration::from_secs(1)));
    let before = ts.issued();
    let dir = env.scratch().join("mnt");
    std::fs::create_dir_all(&dir).unwrap();
    let reference = format!("{}/faults/tokenpf:v1", proxy.host());
    env.run(&["mount", &reference, dir.to_str().unwrap()])
        .assert_success();
    let m = Mounted { env: &env, dir };
    let hex = std::fs::read_dir(env.root().join("indexes"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.len() == 64)
        .expect("a layer index");
    let ix = strata::layer::LayerIndex::open(&env.root().join("indexes").join(&hex)).unwrap();
    let total = strata::cache::Layout::new(Arc::new(ix)).count();
    let started = Instant::now();
    common::poll_until(
        "the prefetch to cache every span",
        Duration::from_secs(90),
        Duration::from_millis(200),
        || (check_cache_spans(&env.root()) == total).then_some(()),
    );
    let took = started.elapsed();
    let issued = ts.issued() - before;
    let refused = proxy
        .requests()
        .iter()
        .filter(|r| r.path.contains("/blobs/") && r.status == 401)
        .count();
    eprintln!("prefetch of {total} spans took {took:?}: {issued} tokens, {refused} blob 401s");
    assert!(
        refused >= 1,
        "no expired token was refused during the prefetch"
    );
    assert!(issued >= 2, "only {issued} token(s) issued");
    proxy.set(Fault::Refuse);
    for (p, d) in &files() {
        assert_eq!(
            &std::fs::read(m.dir.join(p)).unwrap(),
            d,
            "{p} after prefetch"
        );
    }
    // (The earlier Delay rule also counts as a fault applied: look at refusals only.)
    let after: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.fault == Fault::Refuse)
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        after.is_empty(),
        "reads after the prefetch went to the network: {after:?}"
    );
    drop(m);
    assert_no_panic(&env);
}

/// The cache directory on a small tmpfs that is nearly full: span files fail with ENOSPC, yet
/// every read through the mount returns the right bytes (from the network), a warning names
/// the failure, and no partial or unverified span file stays behind. After space is freed the
/// same mount setup caches every span again, and with the registry gone everything is served
/// from disk.
#[test]
fn disk_full_while_caching_serves_from_the_network_then_recovers() {
    use common::rel::{fill_leaving, free_bytes, Tmpfs};
    let reg = Registry::start();
    publish(&reg, "faults/enospc:v1");
    let proxy = FaultProxy::in_front_of(&reg);
    let env = StrataEnv::new();
    let reference = format!("{}/faults/enospc:v1", proxy.host());
    let want = files();
    let cache = env.root().join("cache");
    let tmpfs = Tmpfs::mount(&cache, 16 << 20);
    // Room for one 2 MiB span file and half of the next (spans of 2 MiB or less).
    let filler = tmpfs.path().join("filler");
    fill_leaving(&filler, 3 << 20);
    eprintln!("cache tmpfs: {} bytes free", free_bytes(&cache));

    let read_all = |m: &Mounted| {
        for (p, d) in &want {
            let (r, _) = timed_read(m.dir.join(p), Duration::from_secs(60));
            assert_eq!(&r.unwrap_or_else(|e| panic!("{p}: {e}")), d, "{p}");
        }
    };
    let m = mount(&env, &reference, &[]);
    read_all(&m);
    drop(m); // the daemon writes pending span files before it exits
    let log = daemon_log(&env);
    assert!(
        log.contains("not caching span on disk") && log.contains("No space left on device"),
        "no ENOSPC warning in the daemon log:\n{log}"
    );
    let partial = check_cache_spans(&env.root());
    let layer_dirs: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(layer_dirs.len(), 1, "{layer_dirs:?}");
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    for n in names(&layer_dirs[0]) {
        assert!(
            n.parse::<u32>().is_ok(),
            "partial cache file {n} left behind"
        );
    }
    let hex = layer_dirs[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let ix = strata::layer::LayerIndex::open(&env.root().join("indexes").join(&hex)).unwrap();
    let total = strata::cache::Layout::new(Arc::new(ix)).count();
    eprintln!("disk full: {partial} of {total} spans cached");
    assert!(partial < total, "every span was cached on a full disk?");

    // Free the space: the next mount caches the rest. (A fresh daemon: spans the old one
    // kept in memory only would be served from there, not written again.)
    std::fs::remove_file(&filler).unwrap();
    env.stop_daemon();
    let m = mount(&env, &reference, &[]);
    read_all(&m);
    drop(m);
    assert_eq!(
        check_cache_spans(&env.root()),
        total,
        "spans on disk after space was freed"
    );

    // Registry gone: a fresh mount (new daemon, empty memory tier) serves everything from
    // the disk.
    proxy.set(Fault::Refuse);
    env.stop_daemon();
    let m = mount(&env, &reference, &[]);
    read_all(&m);
    drop(m);
    assert_eq!(proxy.faults_applied(), 0, "a read went to the network");
    assert_no_panic(&env);
    drop(tmpfs);
}
