//! The `bridge` network of a container: a private network namespace with user-mode NAT.
//!
//! Before runc starts a `--network bridge` container (the default), [`setup`] creates a
//! network namespace and pins it by bind-mounting its nsfs file at
//! `/run/strata/net/<id>/netns` (runc joins it through the spec's namespace path), starts
//! `slirp4netns` attached to it (tap0 10.0.2.100/24, gateway 10.0.2.2, DNS 10.0.2.3, lo up;
//! `--disable-host-loopback`, so the host's loopback services stay unreachable, as with
//! docker's bridge) in its own process group so it outlives a detached `run`, and asks its
//! API socket (`add_hostfwd`) for each `-p` forward. [`teardown`] (container exit in the
//! foreground, `stop`, `rm`, a new `start`) kills that slirp4netns, unmounts the netns file
//! and removes the directory; it is idempotent. Nothing here touches a host interface:
//! slirp4netns forwards through ordinary host sockets. The bind mount of the netns file is
//! the one mount the launcher makes.

use super::options::{PortMapping, Proto};
use super::{Error, RunOptions};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the per-container network state lives.
pub const STATE_ROOT: &str = "/run/strata/net";

/// The slirp4netns binary (from PATH).
pub const SLIRP4NETNS: &str = "slirp4netns";

/// The nameserver a bridge container uses: slirp4netns's DNS forwarder.
pub const DNS: &str = "10.0.2.3";

/// How long slirp4netns may take to come up.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// `/run/strata/net/<id>`.
pub fn state_dir(id: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(id)
}

/// The pinned network namespace of container `id`.
pub fn netns_path(id: &str) -> PathBuf {
    state_dir(id).join("netns")
}

fn api_socket(id: &str) -> PathBuf {
    state_dir(id).join("api.sock")
}

fn pid_file(id: &str) -> PathBuf {
    state_dir(id).join("slirp4netns.pid")
}

fn net_err(msg: impl Into<String>) -> Error {
    Error::Network(msg.into())
}

/// Create the namespace, start slirp4netns, publish the ports. On failure everything made
/// so far is torn down again.
pub fn setup(id: &str, opts: &RunOptions) -> Result<(), Error> {
    teardown(id)?;
    let r = setup_inner(id, opts);
    if r.is_err() {
        let _ = teardown(id);
    }
    r
}

fn setup_inner(id: &str, opts: &RunOptions) -> Result<(), Error> {
    let dir = state_dir(id);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
    let ns = netns_path(id);
    create_netns(&ns)?;
    let log_path = dir.join("slirp4netns.log");
    let log = std::fs::File::create(&log_path).map_err(|e| Error::io("creating", &log_path, e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| Error::io("duplicating", &log_path, e))?;
    let api = api_socket(id);
    let mut cmd = std::process::Command::new(SLIRP4NETNS);
    // It outlives us (a detached container's network): it must hold no descriptor of ours
    // (a lock, a test harness's pipe) beyond its stdio.
    // SAFETY: only close_range(2) between fork and exec (async-signal-safe).
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let mut child = cmd
        .arg("--configure")
        .arg("--mtu=65520")
        .arg("--disable-host-loopback")
        .arg("--api-socket")
        .arg(&api)
        .arg("--netns-type=path")
        .arg(&ns)
        .arg("tap0")
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own process group: a detached container's network outlives `strata run`, and
        // a Ctrl-C of a foreground run reaches strata, which tears it down.
        .process_group(0)
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                net_err(
                    "slirp4netns not found: the default (bridge) network needs it \
                     (Debian package slirp4netns); or use --network host or --network none",
                )
            } else {
                net_err(format!("starting slirp4netns: {e}"))
            }
        })?;
    let pid = child.id();
    let pf = pid_file(id);
    std::fs::write(&pf, format!("{pid}\n")).map_err(|e| Error::io("writing", &pf, e))?;
    // Ready when its API socket answers.
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if std::os::unix::net::UnixStream::connect(&api).is_ok() {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(net_err(format!(
                "slirp4netns exited ({status}) before it was ready: {}",
                log.trim()
            )));
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: "slirp4netns to start".into(),
                secs: READY_TIMEOUT.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for p in &opts.publish {
        add_hostfwd(&api, p)?;
    }
    Ok(())
}

/// A new network namespace, pinned at `path` (a bind mount of its nsfs file). Made on a
/// short-lived thread: `unshare(CLONE_NEWNET)` only moves the calling thread.
fn create_netns(path: &Path) -> Result<(), Error> {
    std::fs::File::create(path).map_err(|e| Error::io("creating", path, e))?;
    let target = path.to_path_buf();
    let joined = std::thread::spawn(move || -> Result<(), nix::Error> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
    })
    .join();
    match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::io(
            "creating a network namespace at",
            path,
            std::io::Error::from(e),
        )),
        Err(_) => Err(net_err("the network namespace thread panicked")),
    }
}

/// One `-p` forward through the slirp4netns API.
fn add_hostfwd(api: &Path, p: &PortMapping) -> Result<(), Error> {
    if p.host_ip.is_ipv6() {
        return Err(Error::Unsupported(
            "-p",
            format!("{}: IPv6 host addresses are not supported", p.host_ip),
        ));
    }
    let proto = match p.proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    };
    let req = serde_json::json!({
        "execute": "add_hostfwd",
        "arguments": {
            "proto": proto,
            "host_addr": p.host_ip.to_string(),
            "host_port": p.host_port,
            "guest_port": p.container_port,
        }
    });
    let what = format!(
        "publishing {}:{}->{}/{proto}",
        p.host_ip, p.host_port, p.container_port
    );
    let mut s = std::os::unix::net::UnixStream::connect(api)
        .map_err(|e| net_err(format!("{what}: slirp4netns API {}: {e}", api.display())))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut answer = String::new();
    s.write_all(req.to_string().as_bytes())
        .and_then(|_| s.shutdown(std::net::Shutdown::Write))
        .and_then(|_| s.read_to_string(&mut answer).map(|_| ()))
        .map_err(|e| net_err(format!("{what}: slirp4netns API: {e}")))?;
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
    if v.get("return").is_some() {
        return Ok(());
    }
    Err(net_err(format!(
        "{what}: slirp4netns refused ({}); is the host port already in use?",
        answer.trim()
    )))
}

/// The pid of the slirp4netns serving container `id` (its pid file), if it has one.
pub fn slirp_pid(id: &str) -> Option<i32> {
    std::fs::read_to_string(pid_file(id))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
}

/// Whether `pid` is the slirp4netns serving `id` (not a recycled pid).
fn is_our_slirp(pid: i32, id: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let c = String::from_utf8_lossy(&c);
            c.contains(SLIRP4NETNS) && c.contains(id)
        })
        .unwrap_or(false)
}

/// Stop slirp4netns, unmount and delete the namespace file and the state directory.
/// Idempotent: a container without network state is fine.
pub fn teardown(id: &str) -> Result<(), Error> {
    let dir = state_dir(id);
    if !dir.exists() {
        return Ok(());
    }
    let pid = std::fs::read_to_string(pid_file(id))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    if let Some(pid) = pid.filter(|p| *p > 0 && is_our_slirp(*p, id)) {
        let npid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(npid, nix::sys::signal::Signal::SIGTERM);
        // Reap it when it is our child (a foreground run); otherwise wait for it to go.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match nix::sys::wait::waitpid(npid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                Ok(nix::sys::wait::WaitStatus::StillAlive) => {}
                Ok(_) => break,
                Err(_) if !is_our_slirp(pid, id) => break,
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if is_our_slirp(pid, id) {
            let _ = nix::sys::signal::kill(npid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(npid, None);
        }
    }
    let ns = netns_path(id);
    if ns.exists() {
        match nix::mount::umount2(&ns, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) => {}
            Err(e) => {
                return Err(Error::io(
                    "unmounting the network namespace",
                    &ns,
                    std::io::Error::from(e),
                ))
            }
        }
    }
    std::fs::remove_dir_all(&dir).map_err(|e| Error::io("removing", &dir, e))
}
