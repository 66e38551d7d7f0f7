//! The daemon survives its own death and its upgrades: readers of a lazy mount (files cached,
//! not yet fetched, and being fetched through a slow proxy; files kept open across the
//! event; a file in the upper written before and after) see no error and no hang when the
//! server is killed with SIGKILL, when it is restarted and when it is upgraded. Real
//! registry behind a delaying pass-through proxy, real FUSE, the real supervisor.

mod common;
#[path = "daemon_restart/fdstore.rs"]
mod fdstore;

use common::testdata::pseudo;
use common::{busybox_image, Fault, FaultProxy, Layer, OutputExt, Registry, StrataEnv};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const FILES: usize = 16;
const FILE_SIZE: usize = 3 << 20;

fn server_pid(root: &Path) -> Option<i32> {
    std::fs::read_to_string(root.join("daemon.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn supervisor_pid(root: &Path) -> Option<i32> {
    std::fs::read_to_string(root.join("daemon.lock"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, r)| !r.starts_with('Z'))
    })
}

fn sha(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

/// A mounted image with an upper, behind a proxy that delays every blob request.
struct Setup {
    _reg: Registry,
    proxy: FaultProxy,
    env: StrataEnv,
    mnt: PathBuf,
    /// The image, through the proxy.
    reference: String,
    /// (path in the mount, sha256)
    files: Vec<(PathBuf, String)>,
}

fn setup() -> Setup {
    setup_with(|_| {})
}

/// [`setup`], calling `before_mount` with the environment before the first command that
/// needs a daemon (to start one of the test's own).
fn setup_with(before_mount: impl FnOnce(&StrataEnv)) -> Setup {
    let reg = Registry::start();
    let mut layer = Layer::new().dir("data");
    let mut contents = Vec::new();
    for i in 0..FILES {
        let b = pseudo(FILE_SIZE, 100 + i as u64);
        layer = layer.file(&format!("data/f{i}.bin"), b.clone());
        contents.push(b);
    }
    let img = busybox_image().layer(layer).build("v1");
    img.push(&reg, "restart/app:v1");
    StrataEnv::new()
        .run(&["index", &format!("{}/restart/app:v1", reg.host()), "--push"])
        .assert_success();
    let proxy = FaultProxy::in_front_of(&reg);
    let env = StrataEnv::new();
    let mnt = env.mnt_dir();
    let upper = env.scratch().join("upper");
    let reference = format!("{}/restart/app:v1", proxy.host());
    before_mount(&env);
    env.run(&[
        "mount",
        "--no-prefetch",
        "--upper",
        upper.to_str().unwrap(),
        &reference,
        mnt.to_str().unwrap(),
    ])
    .assert_success();
    // From now on every blob request takes a while: some reads are mid-fetch at the event.
    proxy
        .handle()
        .on_path("/blobs/", None, Fault::Delay(Duration::from_millis(150)));
    let files: Vec<(PathBuf, String)> = contents
        .iter()
        .enumerate()
        .map(|(i, b)| (mnt.join(format!("data/f{i}.bin")), sha(b)))
        .collect();
    // Half the files cached before the event.
    for (p, want) in files.iter().take(FILES / 2) {
        assert_eq!(&sha(&std::fs::read(p).unwrap()), want);
    }
    Setup {
        _reg: reg,
        proxy,
        env,
        mnt,
        reference,
        files,
    }
}

/// What the readers saw.
#[derive(Default)]
struct Seen {
    errors: Mutex<Vec<String>>,
    /// Longest single operation (open, read of a whole file, pread), in ms.
    longest_ms: AtomicU64,
    /// Longest operation on data cached before the event (never waits on the network: its
    /// length is the pause the event caused), in ms.
    longest_cached_ms: AtomicU64,
    /// Reads completed, per reader.
    done: Vec<AtomicU64>,
}

/// 8 readers: 6 loop over open/read/close of their files (cached ones and not-yet-fetched
/// ones), 2 keep one file open for the whole run and pread it at moving offsets.
fn start_readers(
    files: &[(PathBuf, String)],
    stop: &Arc<AtomicBool>,
) -> (Arc<Seen>, Vec<std::thread::JoinHandle<()>>) {
    const READERS: usize = 8;
    let seen = Arc::new(Seen {
        done: (0..READERS).map(|_| AtomicU64::new(0)).collect(),
        ..Default::default()
    });
    let mut hs = Vec::new();
    for r in 0..READERS {
        let (seen, stop) = (seen.clone(), stop.clone());
        let files = files.to_vec();
        hs.push(std::thread::spawn(move || {
            let note = |t: Instant, cached: bool| {
                let ms = t.elapsed().as_millis() as u64;
                seen.longest_ms.fetch_max(ms, Ordering::Relaxed);
                if cached {
                    seen.longest_cached_ms.fetch_max(ms, Ordering::Relaxed);
                }
            };
            let fail = |m: String| seen.errors.lock().unwrap().push(m);
            if r >= 6 {
                let (p, _) = &files[r];
                let want = std::fs::read(p);
                let Ok(want) = want else {
                    return fail(format!("reader {r}: first read of {}", p.display()));
                };
                let Ok(mut f) = std::fs::File::open(p) else {
                    return fail(format!("reader {r}: open {}", p.display()));
                };
                let mut off = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let mut buf = vec![0u8; 64 << 10];
                    let r2 = f
                        .seek(SeekFrom::Start(off as u64))
                        .and_then(|_| f.read(&mut buf));
                    note(t, true);
                    match r2 {
                        Ok(n) if buf[..n] == want[off..off + n] && n > 0 => {}
                        Ok(n) => {
                            return fail(format!("reader {r}: pread at {off}: {n} wrong bytes"))
                        }
                        Err(e) => return fail(format!("reader {r}: pread at {off}: {e}")),
                    }
                    off = (off + 1_000_003) % (want.len() - (64 << 10));
                    seen.done[r].fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            // Reader r takes every file with index = r (mod 6): cached and uncached ones.
            let mine: Vec<_> = files.iter().enumerate().skip(r).step_by(6).collect();
            while !stop.load(Ordering::Relaxed) {
                for (i, (p, want)) in &mine {
                    let t = Instant::now();
                    match std::fs::read(p) {
                        Ok(b) if &sha(&b) == want => {}
                        Ok(b) => {
                            return fail(format!(
                                "reader {r}: {}: wrong bytes ({} bytes)",
                                p.display(),
                                b.len()
                            ))
                        }
                        Err(e) => return fail(format!("reader {r}: {}: {e}", p.display())),
                    }
                    note(t, *i < FILES / 2);
                    seen.done[r].fetch_add(1, Ordering::Relaxed);
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
            }
        }));
    }
    (seen, hs)
}

/// Run the readers, do `event` after a second, keep reading until every reader has done
/// more after it, check nothing failed; the longest pause seen on cached data and the
/// longest operation of all (ms).
fn under_load(s: &Setup, event: impl FnOnce()) -> (u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, hs) = start_readers(&s.files, &stop);
    std::thread::sleep(Duration::from_millis(1000));
    let before: Vec<u64> = seen
        .done
        .iter()
        .map(|d| d.load(Ordering::Relaxed))
        .collect();
    event();
    let t0 = Instant::now();
    loop {
        let progressed = seen
            .done
            .iter()
            .zip(&before)
            .all(|(d, b)| d.load(Ordering::Relaxed) > *b + 1);
        let failed = !seen.errors.lock().unwrap().is_empty();
        if progressed || failed {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "readers stopped making progress after the event: {:?} (before: {before:?})\n{}",
            seen.done,
            s.env.daemon_logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    let errors = seen.errors.lock().unwrap();
    assert!(errors.is_empty(), "{errors:?}\n{}", s.env.daemon_logs());
    (
        seen.longest_cached_ms.load(Ordering::Relaxed),
        seen.longest_ms.load(Ordering::Relaxed),
    )
}

/// Wait until the root is served by a live server other than `old`.
fn wait_new_server(root: &Path, old: i32) -> i32 {
    let t0 = Instant::now();
    loop {
        if let Some(p) = server_pid(root).filter(|p| *p != old && alive(*p)) {
            return p;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no new server");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kill_9_of_the_server_loses_no_read_and_keeps_the_upper() {
    let s = setup();
    let root = s.env.root();
    // An upper file written before, and one kept open for writing across the event.
    std::fs::write(s.mnt.join("before.txt"), b"written before\n").unwrap();
    let mut open_w = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(s.mnt.join("across.txt"))
        .unwrap();
    open_w.write_all(b"one\n").unwrap();
    let old = server_pid(&root).expect("daemon.pid");
    let sup = supervisor_pid(&root).expect("daemon.lock");
    let longest = under_load(&s, || {
        // SAFETY: kill(2) of the server process of our own root.
        assert_eq!(unsafe { libc::kill(old, libc::SIGKILL) }, 0);
    });
    let new = wait_new_server(&root, old);
    assert_eq!(supervisor_pid(&root), Some(sup), "the supervisor changed");
    assert!(alive(sup));
    eprintln!(
        "kill -9: longest pause on cached data {} ms, longest operation {} ms (server {old} -> {new})",
        longest.0, longest.1
    );
    // The write handle opened before the kill still works, and so does everything else.
    open_w.write_all(b"two\n").unwrap();
    drop(open_w);
    assert_eq!(
        std::fs::read_to_string(s.mnt.join("across.txt")).unwrap(),
        "one\ntwo\n"
    );
    assert_eq!(
        std::fs::read_to_string(s.mnt.join("before.txt")).unwrap(),
        "written before\n"
    );
    std::fs::write(s.mnt.join("after.txt"), b"after\n").unwrap();
    assert_eq!(std::fs::read(s.mnt.join("after.txt")).unwrap(), b"after\n");
    let log = s.env.daemon_logs();
    assert!(log.contains("the strata server died"), "{log}");
    // The new server still serves the mount: stats answers and the record names it.
    let out = s.env.run(&["stats", s.mnt.to_str().unwrap()]);
    out.assert_success();
    s.proxy.handle().set(Fault::Pass);
    s.env
        .run(&["umount", s.mnt.to_str().unwrap()])
        .assert_success();
    assert!(
        common::rel::mountinfo_options(&s.mnt).is_none(),
        "still mounted"
    );
}

#[test]
fn restart_and_upgrade_hand_over_under_load() {
    let s = setup();
    let root = s.env.root();
    let sup = supervisor_pid(&root).expect("daemon.lock");
    for action in [&["daemon", "restart"][..], &["daemon", "upgrade"][..]] {
        let old = server_pid(&root).expect("daemon.pid");
        let mut out = None;
        let longest = under_load(&s, || out = Some(s.env.run(action)));
        let out = out.unwrap();
        out.assert_success();
        assert!(
            out.stdout_str().contains("restarted"),
            "{}",
            out.stdout_str()
        );
        let new = wait_new_server(&root, old);
        assert!(!alive(old), "old server {old} still runs");
        eprintln!(
            "{action:?}: longest pause on cached data {} ms, longest operation {} ms (server {old} -> {new})",
            longest.0, longest.1
        );
        // An upgrade re-executes the supervisor in place: same process.
        assert_eq!(supervisor_pid(&root), Some(sup));
        assert!(alive(sup));
    }
    let log = s.env.daemon_logs();
    assert!(log.contains("strata supervisor upgraded"), "{log}");
    assert_eq!(log.matches("restart: handed over").count(), 2, "{log}");
    s.proxy.handle().set(Fault::Pass);
    s.env
        .run(&["umount", s.mnt.to_str().unwrap()])
        .assert_success();
}

/// A detached container reads its lazily fetched rootfs in a loop while the server is
/// killed: it runs on, every read right; when it exits, the daemon unmounts its rootfs.
#[test]
fn detached_container_runs_through_a_kill_and_its_rootfs_is_released_when_it_exits() {
    let s = setup();
    let root = s.env.root();
    let want = &s.files[12].1;
    let out = s.env.run(&[
        "run",
        "-d",
        "--no-prefetch",
        &s.reference,
        "sh",
        "-c",
        "for i in $(seq 40); do sha256sum /data/f12.bin /data/f13.bin; sleep 0.1; done",
    ]);
    out.assert_success();
    let id = out.stdout_str().trim().to_string();
    let rootfs = root.join("containers").join(&id).join("rootfs");
    assert!(
        common::rel::mountinfo_options(&rootfs).is_some(),
        "rootfs not mounted"
    );
    std::thread::sleep(Duration::from_millis(800));
    let old = server_pid(&root).expect("daemon.pid");
    // SAFETY: kill(2) of the server process of our own root.
    assert_eq!(unsafe { libc::kill(old, libc::SIGKILL) }, 0);
    wait_new_server(&root, old);
    let t0 = Instant::now();
    while common::rel::mountinfo_options(&rootfs).is_some() {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "the rootfs of the exited container is still mounted\n{}",
            s.env.daemon_logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs = s.env.run(&["logs", &id]);
    logs.assert_success();
    let text = logs.stdout_str();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 80, "{text}\n{}", logs.stderr_str());
    let want13 = &s.files[13].1;
    for pair in lines.chunks(2) {
        assert!(pair[0].starts_with(want.as_str()), "{text}");
        assert!(pair[1].starts_with(want13.as_str()), "{text}");
    }
    s.env.run(&["rm", &id]).assert_success();
    s.proxy.handle().set(Fault::Pass);
}

/// Supervisor and server both killed: the mount is dead (nothing holds its connection). The
/// next daemon detaches it and forgets it, and the image mounts there again.
#[test]
fn a_new_daemon_cleans_up_the_mounts_of_a_dead_one() {
    let s = setup();
    let root = s.env.root();
    let (sup, server) = (
        supervisor_pid(&root).expect("daemon.lock"),
        server_pid(&root).expect("daemon.pid"),
    );
    for pid in [sup, server] {
        // SAFETY: kill(2) of the daemon processes of our own root.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    }
    let t0 = Instant::now();
    while alive(sup) || alive(server) {
        assert!(t0.elapsed() < Duration::from_secs(20), "daemon not gone");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(common::rel::mountinfo_options(&s.mnt).is_some());
    // A name the kernel has not cached needs the (dead) server.
    let e = std::fs::metadata(s.mnt.join("never-looked-up")).unwrap_err();
    assert!(
        matches!(
            e.raw_os_error(),
            Some(libc::ENOTCONN) | Some(libc::ECONNABORTED)
        ),
        "{e}"
    );
    s.env.run(&["daemon"]).assert_success();
    assert!(
        common::rel::mountinfo_options(&s.mnt).is_none(),
        "the dead mount is still there\n{}",
        s.env.daemon_logs()
    );
    let saved: Vec<_> = std::fs::read_dir(root.join("mounts"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "saved"))
        .collect();
    assert!(saved.is_empty(), "saved mounts left: {saved:?}");
    s.proxy.handle().set(Fault::Pass);
    s.env
        .run(&[
            "mount",
            "--no-prefetch",
            &s.reference,
            s.mnt.to_str().unwrap(),
        ])
        .assert_success();
    assert_eq!(
        sha(&std::fs::read(&s.files[0].0).unwrap()),
        s.files[0].1,
        "remounted image reads wrong"
    );
    s.env
        .run(&["umount", s.mnt.to_str().unwrap()])
        .assert_success();
}
