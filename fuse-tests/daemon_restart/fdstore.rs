//! The mounts outlive the supervisor itself under systemd: the test plays systemd (a
//! notification socket that receives `READY=1` and keeps the descriptors sent with
//! `FDSTORE=1`, and the next start with `LISTEN_FDS`/`LISTEN_FDNAMES`). The supervisor is
//! killed with SIGKILL while 8 readers loop over the mount; its server quits; a new
//! supervisor gets the stored device back and serves the mount again: no reader sees an
//! error.

use super::{alive, server_pid, setup_with, supervisor_pid, under_load, wait_new_server};
use crate::common::{Fault, OutputExt, StrataEnv};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// One notification: its text and the descriptors that came with it.
fn recv_notification(sock: &UnixDatagram) -> Option<(String, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = vec![0u8; 4096];
    let mut space = nix::cmsg_space!([RawFd; 8]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let m = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    let mut fds = Vec::new();
    for c in m.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(v) = c {
            // SAFETY: the kernel just installed these descriptors for us.
            fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let n = m.bytes;
    Some((String::from_utf8_lossy(&buf[..n]).into_owned(), fds))
}

/// Wait for a notification containing `want` (others are collected into `seen`).
fn wait_for(
    sock: &UnixDatagram,
    want: &str,
    seen: &mut Vec<String>,
    env: &StrataEnv,
) -> (String, Vec<OwnedFd>) {
    let t0 = Instant::now();
    loop {
        if let Some((text, fds)) = recv_notification(sock) {
            seen.push(text.clone());
            if text.contains(want) {
                return (text, fds);
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no {want:?} notification; got {seen:?}\n{}",
            env.daemon_logs()
        );
    }
}

/// `strata daemon --foreground` as systemd starts it: `NOTIFY_SOCKET`, and `stored` (name,
/// descriptor) passed as descriptors 3.. with `LISTEN_PID` (its own pid: set by a shell that
/// then `exec`s strata), `LISTEN_FDS` and `LISTEN_FDNAMES`. Its log goes to `daemon.log`.
/// With `on_cue`, the shell waits for a line on its stdin before it `exec`s strata: the test
/// forks it before its readers open files in the mount, because a process forked while
/// they are open holds copies of them, and closing those at `exec` (close-on-exec) sends
/// FUSE a FLUSH that waits for the very server this process is to start (systemd, the real
/// parent, has no file of the mount open).
fn start_supervisor(
    env: &StrataEnv,
    notify: &Path,
    stored: &[(String, OwnedFd)],
    on_cue: bool,
) -> Child {
    use std::os::unix::process::CommandExt;
    let strata = env.command(&["daemon", "--foreground"]);
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(if on_cue {
            r#"read -r cue; export LISTEN_PID=$$; exec "$0" "$@""#
        } else {
            r#"export LISTEN_PID=$$; exec "$0" "$@""#
        })
        .arg(strata.get_program())
        .args(strata.get_args());
    for (k, v) in strata.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.env("NOTIFY_SOCKET", notify);
    if !stored.is_empty() {
        let names: Vec<&str> = stored.iter().map(|(n, _)| n.as_str()).collect();
        cmd.env("LISTEN_FDS", stored.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"));
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(env.root().join("daemon.log"))
        .unwrap();
    cmd.stdin(if on_cue {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::null())
    .stderr(Stdio::from(log));
    // Duplicate high first so that placing them at 3.. cannot clobber a source.
    let raw: Vec<RawFd> = stored
        .iter()
        .map(|(_, fd)| {
            // SAFETY: F_DUPFD_CLOEXEC of a descriptor we own; the copy is closed at exec
            // unless placed at 3.. below.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) }
        })
        .collect();
    assert!(raw.iter().all(|&fd| fd >= 0), "dup of the stored devices");
    let in_child = raw.clone();
    // SAFETY: only dup2 between fork and exec (async-signal-safe); dup2 clears CLOEXEC.
    unsafe {
        cmd.pre_exec(move || {
            for (i, &fd) in in_child.iter().enumerate() {
                if libc::dup2(fd, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("start strata daemon --foreground");
    for fd in raw {
        // SAFETY: closing the parent's copies made above.
        unsafe { libc::close(fd) };
    }
    child
}

#[test]
fn kill_9_of_the_supervisor_under_systemd_keeps_the_mounts_through_the_fd_store() {
    let scratch = tempfile::tempdir().unwrap();
    let notify = scratch.path().join("notify");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut seen = Vec::new();
    let mut first: Option<Child> = None;
    let s = setup_with(|env| {
        first = Some(start_supervisor(env, &notify, &[], false));
        wait_for(&sock, "READY=1", &mut seen, env);
    });
    let mut first = first.expect("supervisor started");
    let root = s.env.root();
    // The mount's device arrives in the store, named after the mount's key.
    let (text, mut fds) = wait_for(&sock, "FDSTORE=1", &mut seen, &s.env);
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix("FDNAME="))
        .expect("FDNAME")
        .to_string();
    assert!(name.starts_with("fuse-"), "{text}");
    assert_eq!(fds.len(), 1, "{text}");
    let stored = vec![(name.clone(), fds.remove(0))];
    assert_eq!(supervisor_pid(&root), Some(first.id() as i32));
    let old_server = server_pid(&root).expect("daemon.pid");
    // systemd's restart of the unit, forked now and started on cue.
    let mut second = start_supervisor(&s.env, &notify, &stored, true);
    let longest = under_load(&s, || {
        // SAFETY: kill(2) of the supervisor we started.
        assert_eq!(unsafe { libc::kill(first.id() as i32, libc::SIGKILL) }, 0);
        let _ = first.wait();
        // Its server quits (it must leave the root's lock to the successor).
        let t0 = Instant::now();
        while alive(old_server) {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "the server of a dead supervisor still runs\n{}",
                s.env.daemon_logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // systemd starts the unit again with what it stored.
        use std::io::Write;
        let mut cue = second.stdin.take().expect("cue pipe");
        cue.write_all(b"go\n").expect("cue the new supervisor");
    });
    let new_server = wait_new_server(&root, old_server);
    eprintln!(
        "supervisor kill -9 under systemd: longest pause on cached data {} ms, longest operation {} ms (server {old_server} -> {new_server})",
        longest.0, longest.1
    );
    wait_for(&sock, "READY=1", &mut seen, &s.env);
    let log = s.env.daemon_logs();
    assert!(
        log.contains("device kept by systemd: serving the mount again"),
        "{log}"
    );
    assert_eq!(supervisor_pid(&root), Some(second.id() as i32));
    // Generations go on counting: the new server's handles never collide with old ones.
    let gen: u64 = std::fs::read_to_string(root.join("daemon.generation"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(gen >= 3, "generation {gen}");
    // The mount is served and writable; unmounting drops the device from the store.
    std::fs::write(s.mnt.join("after.txt"), b"after\n").unwrap();
    assert_eq!(std::fs::read(s.mnt.join("after.txt")).unwrap(), b"after\n");
    s.proxy.handle().set(Fault::Pass);
    s.env
        .run(&["umount", s.mnt.to_str().unwrap()])
        .assert_success();
    let (text, _) = wait_for(&sock, "FDSTOREREMOVE=1", &mut seen, &s.env);
    assert!(text.contains(&format!("FDNAME={name}")), "{text}");
    drop(stored);
    s.env.run(&["daemon", "--stop"]).assert_success();
    let t0 = Instant::now();
    while second.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "supervisor still runs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
