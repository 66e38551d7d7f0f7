//! The supervisor: the small process `strata daemon --foreground` runs (the one a service
//! manager watches). It holds the root's lock (`ROOT/daemon.lock`), the listening control
//! socket and a copy of every mount's FUSE device, and runs the server (`server.rs`, the
//! process named in `ROOT/daemon.pid`) as its child. The FUSE connections live as long as
//! any copy of their device is open, so when the server dies the mounts stay and the
//! requests it had read wait in the kernel: the supervisor starts a new server with the
//! devices, which serves the mounts again and has the kernel resend what was lost. A
//! restart or upgrade asked for hands over in order (new server prepared, old one told to
//! quit, new one told to go); an upgrade first re-executes the supervisor as the new binary,
//! keeping its descriptors and its child.
//!
//! Under systemd (`NOTIFY_SOCKET`) it also keeps every device in systemd's file descriptor
//! store (`sdnotify`), so the mounts outlive the supervisor too: the next start gets the
//! devices back (`LISTEN_FDS`) and serves the saved mounts again; the server of a dead
//! supervisor quits at once to let it. Server generations (`ROOT/daemon.generation`) keep
//! counting across supervisors, so file handles of a new server never collide with those
//! the kernel still holds.
//!
//! Calls `ctl` (the channel to the server), `sdnotify`, the daemon client (whether a daemon
//! holding the lock answers) and the OS; of the mount machinery
//! only the paths of saved mounts (to find them again, and to clean them when giving up).

use super::ctl::{self, Ctl, Inherited, InheritedMount};
use super::sdnotify::{self, Notifier};
use super::{socket_path, Error};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Name of the supervisor's lock file under the root.
pub const LOCK_FILE: &str = "daemon.lock";
/// The next server generation, kept across supervisors.
const GENERATION_FILE: &str = "daemon.generation";
/// Give up after this many server crashes within [`CRASH_WINDOW`].
const MAX_CRASHES: usize = 5;
const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// How long a new server may take to prepare every mount before a handover is abandoned.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the old server may take to quit before it is killed.
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the supervisor runs its servers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SupervisorOptions {
    pub root: PathBuf,
    /// Passed on to servers as `--config`.
    pub config: Option<PathBuf>,
    /// Servers exit after this long without mounts (then so does the supervisor).
    pub idle_exit_secs: Option<u64>,
}

/// The supervisor's state carried across an upgrade `exec` (descriptor numbers stay).
#[derive(Debug, Serialize, Deserialize)]
struct Carried {
    opts: SupervisorOptions,
    lock: RawFd,
    listener: RawFd,
    server_pid: i32,
    server_ctl: RawFd,
    mounts: Vec<InheritedMount>,
    generation: u64,
}

struct Server {
    pid: i32,
    ctl: Arc<OwnedFd>,
}

enum Event {
    Msg {
        pid: i32,
        msg: Ctl,
        fd: Option<OwnedFd>,
    },
    Exited {
        pid: i32,
        clean: bool,
    },
}

struct Sup {
    opts: SupervisorOptions,
    lock: OwnedFd,
    listener: OwnedFd,
    mounts: BTreeMap<PathBuf, OwnedFd>,
    generation: u64,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    crashes: VecDeque<Instant>,
    /// systemd's notification socket: devices are kept in its descriptor store too.
    notifier: Option<Notifier>,
}

/// The key of a mount's files under `ROOT/mounts` (and of its device in systemd's store).
fn mount_key(root: &Path, mountpoint: &Path) -> String {
    crate::mount::record_path(root, mountpoint)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The generation the next server gets (at least 1): counting goes on across supervisors.
fn read_generation(root: &Path) -> u64 {
    std::fs::read_to_string(root.join(GENERATION_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// The FUSE devices systemd kept for us (named `fuse-KEY`), matched with the saved mounts
/// they serve; devices of mounts that are gone are closed.
fn devices_from_store(root: &Path) -> BTreeMap<PathBuf, OwnedFd> {
    let passed = sdnotify::take_listen_fds();
    if passed.is_empty() {
        return BTreeMap::new();
    }
    let store = match crate::store::Store::open(root) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("devices from systemd's store: {e}; closing them");
            return BTreeMap::new();
        }
    };
    let by_key: BTreeMap<String, PathBuf> = crate::mount::saved_mounts(&store)
        .into_iter()
        .map(|s| (mount_key(root, &s.mountpoint), s.mountpoint))
        .collect();
    let mut out = BTreeMap::new();
    for (name, fd) in passed {
        let mp = name
            .strip_prefix(sdnotify::FUSE_PREFIX)
            .and_then(|k| by_key.get(k));
        match mp {
            Some(mp) if crate::mount::is_mounted(mp) => {
                tracing::warn!(mountpoint = %mp.display(), "device kept by systemd: serving the mount again");
                out.insert(mp.clone(), fd);
            }
            _ => tracing::warn!(name, "systemd kept a device of no live mount: closing it"),
        }
    }
    out
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Take the root's lock (exclusive `flock` on `ROOT/daemon.lock`, held while this process or
/// a server it started lives) and write our pid into it.
fn take_lock(root: &Path) -> Result<OwnedFd, Error> {
    use std::io::Write;
    let path = root.join(LOCK_FILE);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_at(&path))?;
    // SAFETY: flock on a descriptor we own; no memory is shared with the kernel.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        // Name the supervisor holding it (its pid may lag a moment behind the lock).
        let mut pid = String::new();
        for _ in 0..100 {
            pid = std::fs::read_to_string(&path).unwrap_or_default();
            if !pid.trim().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        return Err(Error::AlreadyRunning {
            root: root.to_path_buf(),
            pid: pid.trim().to_string(),
        });
    }
    f.set_len(0).map_err(io_at(&path))?;
    writeln!(f, "{}", std::process::id()).map_err(io_at(&path))?;
    Ok(f.into())
}

/// How long a new supervisor waits for the root's lock held by a daemon that does not answer
/// (quitting: it ends its mounts and flushes the cache); as long as the command that started
/// it waits for its socket (`Client::wait_for`).
const LOCK_WAIT: Duration = Duration::from_secs(20);

/// Whether a daemon answers a ping on `root`'s socket within a second (a quitting one has
/// removed its socket or no longer accepts).
async fn answers(root: &Path) -> bool {
    let ping = async {
        let mut c = super::Client::connect(root).await.ok()?;
        c.call(&super::Request::Ping).await.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), ping).await,
        Ok(Some(_))
    )
}

/// The processes of the daemon serving `root`: the supervisor named in its lock file and the
/// server named in its pid file (a server whose supervisor died holds the lock too).
pub fn daemon_processes(root: &Path) -> Vec<i32> {
    [LOCK_FILE, super::PID_FILE]
        .iter()
        .filter_map(|f| {
            std::fs::read_to_string(root.join(f))
                .ok()?
                .trim()
                .parse()
                .ok()
        })
        .collect()
}

/// Wait (up to `limit`) until processes `pids` have exited (gone, or zombies: whoever
/// started them reaps them). `false` when one still runs after `limit`.
pub async fn wait_exited(pids: &[i32], limit: Duration) -> bool {
    let running = |pid: &i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
    };
    let deadline = Instant::now() + limit;
    while pids.iter().any(running) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Bind the control socket (0600), replacing one left by a dead daemon (we hold the lock).
fn bind(root: &Path) -> Result<OwnedFd, Error> {
    use std::os::unix::fs::PermissionsExt;
    let sock = socket_path(root);
    let _ = std::fs::remove_file(&sock);
    let l = std::os::unix::net::UnixListener::bind(&sock).map_err(io_at(&sock))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
        .map_err(io_at(&sock))?;
    Ok(l.into())
}

/// Supervise a root: take its lock, listen (then call `ready` with the socket's path), run
/// servers until one exits on purpose (shutdown, idle) or a signal stops us. The exit code.
pub async fn supervise(opts: SupervisorOptions, ready: impl FnOnce(&Path)) -> Result<i32, Error> {
    // The lock's holder may be quitting (it ends its mounts and flushes the cache first, its
    // socket no longer answers): a daemon stopped or idle-exiting a moment ago, or, started
    // again by systemd with stored devices, the server of the dead supervisor. Wait for it
    // rather than fail the command that started us; give way to one that answers.
    let restarted = sdnotify::listen_fds_for_us();
    let deadline = Instant::now() + LOCK_WAIT;
    let lock = loop {
        match take_lock(&opts.root) {
            Err(Error::AlreadyRunning { .. })
                if Instant::now() < deadline && (restarted || !answers(&opts.root).await) =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            r => break r?,
        }
    };
    let listener = bind(&opts.root)?;
    let mounts = devices_from_store(&opts.root);
    let (tx, rx) = mpsc::unbounded_channel();
    let mut sup = Sup {
        generation: read_generation(&opts.root),
        opts,
        lock,
        listener,
        mounts,
        tx,
        rx,
        crashes: VecDeque::new(),
        notifier: Notifier::from_env(),
    };
    sup.start_reaper();
    let server = sup
        .spawn_server(false)
        .map_err(io_at(Path::new("strata daemon")))?;
    ready(&socket_path(&sup.opts.root));
    if let Some(n) = &sup.notifier {
        if let Err(e) = n.send(&format!("READY=1\nMAINPID={}\n", std::process::id()), &[]) {
            tracing::warn!("telling systemd we are ready: {e}");
        }
    }
    Ok(sup.run(server, false).await)
}

/// Continue as the supervisor after an upgrade `exec` (state in the environment): hand the
/// mounts to a server of this binary. `None` when not resuming.
pub async fn resume() -> Option<Result<i32, Error>> {
    let v = std::env::var(ctl::SUPERVISOR_ENV).ok()?;
    let c: Carried = match serde_json::from_str(&v) {
        Ok(c) => c,
        Err(e) => {
            return Some(Err(Error::Protocol {
                socket: PathBuf::from(ctl::SUPERVISOR_ENV),
                what: e.to_string(),
            }))
        }
    };
    let (tx, rx) = mpsc::unbounded_channel();
    // SAFETY: the numbers were ours before `exec` and were kept open for us.
    let own = |fd| unsafe { ctl::own(fd) };
    let sup = Sup {
        opts: c.opts,
        lock: own(c.lock),
        listener: own(c.listener),
        mounts: c
            .mounts
            .into_iter()
            .map(|m| (m.mountpoint, own(m.fd)))
            .collect(),
        generation: c.generation,
        tx,
        rx,
        crashes: VecDeque::new(),
        notifier: Notifier::from_env(),
    };
    for fd in [sup.lock.as_raw_fd(), sup.listener.as_raw_fd(), c.server_ctl]
        .into_iter()
        .chain(sup.mounts.values().map(|f| f.as_raw_fd()))
    {
        // SAFETY: fcntl on our own descriptor.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    sup.start_reaper();
    let server = Server {
        pid: c.server_pid,
        ctl: Arc::new(own(c.server_ctl)),
    };
    sup.listen_to(&server);
    tracing::warn!(pid = std::process::id(), "strata supervisor upgraded");
    Some(Ok(sup.run(server, true).await))
}

impl Sup {
    /// Keep a copy of a new mount's device (and one in systemd's store, if there is one).
    fn add(&mut self, mountpoint: PathBuf, fd: Option<OwnedFd>) {
        let Some(fd) = fd else { return };
        if let Some(n) = &self.notifier {
            let name = sdnotify::fuse_name(&mount_key(&self.opts.root, &mountpoint));
            if let Err(e) = n.store(&name, fd.as_raw_fd()) {
                tracing::warn!(mountpoint = %mountpoint.display(), "keeping the device in systemd's store: {e}");
            }
        }
        self.mounts.insert(mountpoint, fd);
    }

    /// The mount is gone: drop its device (here and in systemd's store).
    fn del(&mut self, mountpoint: &Path) {
        if let Some(n) = &self.notifier {
            let name = sdnotify::fuse_name(&mount_key(&self.opts.root, mountpoint));
            if let Err(e) = n.unstore(&name) {
                tracing::warn!(mountpoint = %mountpoint.display(), "dropping the device from systemd's store: {e}");
            }
        }
        self.mounts.remove(mountpoint);
    }

    /// Reap children forever, reporting each exit.
    fn start_reaper(&self) {
        use nix::sys::wait::{waitpid, WaitStatus};
        let tx = self.tx.clone();
        std::thread::spawn(move || loop {
            match waitpid(None, None) {
                Ok(st) => {
                    let (pid, clean) = match st {
                        WaitStatus::Exited(p, code) => (p, code == 0),
                        WaitStatus::Signaled(p, _, _) => (p, false),
                        _ => continue,
                    };
                    if tx
                        .send(Event::Exited {
                            pid: pid.as_raw(),
                            clean,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        });
    }

    /// Every mount's device, as passed on to a new process.
    fn mount_list(&self) -> Vec<InheritedMount> {
        self.mounts
            .iter()
            .map(|(mp, fd)| InheritedMount {
                fd: fd.as_raw_fd(),
                mountpoint: mp.clone(),
            })
            .collect()
    }

    /// Forward the messages of `server` as events.
    fn listen_to(&self, server: &Server) {
        let (tx, ctl, pid) = (self.tx.clone(), server.ctl.clone(), server.pid);
        std::thread::spawn(move || {
            while let Ok(Some((msg, fd))) = ctl::recv(&ctl) {
                if tx.send(Event::Msg { pid, msg, fd }).is_err() {
                    return;
                }
            }
        });
    }

    /// Start a server with every mount's device (`handover`: it waits for `Go`).
    fn spawn_server(&mut self, handover: bool) -> std::io::Result<Server> {
        use std::os::unix::process::CommandExt;
        let (mine, theirs) = ctl::pair()?;
        let inh = Inherited {
            listener: self.listener.as_raw_fd(),
            ctl: theirs.as_raw_fd(),
            lock: self.lock.as_raw_fd(),
            generation: self.generation,
            mounts: self.mount_list(),
            handover,
            idle_exit_secs: self.opts.idle_exit_secs,
            fd_store: self.notifier.is_some(),
        };
        self.generation += 1;
        let gen_path = self.opts.root.join(GENERATION_FILE);
        if let Err(e) = std::fs::write(&gen_path, format!("{}\n", self.generation)) {
            tracing::warn!("{}: {e}", gen_path.display());
        }
        let keep: Vec<RawFd> = [inh.listener, inh.ctl, inh.lock]
            .into_iter()
            .chain(inh.mounts.iter().map(|m| m.fd))
            .collect();
        // The binary this process runs, even if its file was replaced since.
        let mut cmd = std::process::Command::new("/proc/self/exe");
        cmd.arg("--root").arg(&self.opts.root);
        if let Some(c) = &self.opts.config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(["daemon", "--serve-child"])
            .env(ctl::CHILD_ENV, serde_json::to_string(&inh)?)
            .env_remove(ctl::SUPERVISOR_ENV)
            .stdin(std::process::Stdio::null());
        // SAFETY: only fcntl between fork and exec (async-signal-safe).
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &keep {
                    ctl::inheritable(fd)?;
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(theirs);
        let server = Server {
            pid: child.id() as i32,
            ctl: Arc::new(mine),
        };
        // Reaped by the reaper thread, not through `child`.
        drop(child);
        self.listen_to(&server);
        tracing::info!(pid = server.pid, handover, "strata server started");
        Ok(server)
    }

    /// Serve until the current server exits on purpose or a signal stops us.
    async fn run(mut self, mut current: Server, handover_first: bool) -> i32 {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot handle signals");
            return 1;
        };
        if handover_first {
            current = self.handover(current).await;
        }
        loop {
            tokio::select! {
                ev = self.rx.recv() => {
                    let Some(ev) = ev else { return 1 };
                    match ev {
                        Event::Msg { pid, msg, fd } if pid == current.pid => match msg {
                            Ctl::Add { mountpoint } => self.add(mountpoint, fd),
                            Ctl::Del { mountpoint } => self.del(&mountpoint),
                            Ctl::Restart { binary } => {
                                if let Some(b) = binary {
                                    let e = self.reexec(&b, &current);
                                    tracing::error!("upgrade to {}: {e}; restarting on this binary", b.display());
                                }
                                current = self.handover(current).await;
                            }
                            other => tracing::debug!("unexpected {other:?} from the server"),
                        },
                        Event::Exited { pid, clean } if pid == current.pid => {
                            if clean {
                                tracing::info!("server exited: supervisor done");
                                return 0;
                            }
                            match self.recover() {
                                Some(s) => current = s,
                                None => return 1,
                            }
                        }
                        _ => {}
                    }
                }
                _ = term.recv() => { let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(current.pid), nix::sys::signal::Signal::SIGTERM); }
                _ = int.recv() => { let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(current.pid), nix::sys::signal::Signal::SIGTERM); }
            }
        }
    }

    /// The server died: start another on the same mounts, unless it keeps dying.
    fn recover(&mut self) -> Option<Server> {
        let now = Instant::now();
        self.crashes.push_back(now);
        while self
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW)
        {
            self.crashes.pop_front();
        }
        if self.crashes.len() > MAX_CRASHES {
            tracing::error!(
                "the strata server died {} times within {CRASH_WINDOW:?}: giving up; its mounts are detached",
                self.crashes.len()
            );
            self.give_up();
            return None;
        }
        tracing::warn!(
            mounts = self.mounts.len(),
            "the strata server died: starting a new one on its mounts"
        );
        match self.spawn_server(false) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!("starting a new server: {e}; giving up");
                self.give_up();
                None
            }
        }
    }

    /// Nothing will serve the mounts again: detach them (readers see the connection end)
    /// and forget them.
    fn give_up(&mut self) {
        let mps: Vec<PathBuf> = self.mounts.keys().cloned().collect();
        for mp in &mps {
            self.del(mp);
        }
        for mp in mps {
            let _ = nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(crate::mount::restore::saved_path(&self.opts.root, &mp));
            let _ = std::fs::remove_file(crate::mount::record_path(&self.opts.root, &mp));
        }
    }

    /// Hand the mounts from `old` to a new server; the server serving afterwards (`old` if
    /// the new one could not be started).
    async fn handover(&mut self, old: Server) -> Server {
        let started = Instant::now();
        let new = match self.spawn_server(true) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("restart: starting a new server: {e}; the old one serves on");
                let _ = ctl::send(&old.ctl, &Ctl::Go, None);
                return old;
            }
        };
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let mut old_alive = true;
        loop {
            let ev = tokio::select! {
                ev = self.rx.recv() => ev,
                _ = tokio::time::sleep_until(deadline) => None,
            };
            match ev {
                Some(Event::Msg {
                    pid,
                    msg: Ctl::Ready { mounts },
                    ..
                }) if pid == new.pid => {
                    tracing::warn!(mounts, "restart: new server ready");
                    break;
                }
                Some(Event::Msg { pid, msg, fd }) if pid == old.pid => match msg {
                    Ctl::Add { mountpoint } => self.add(mountpoint, fd),
                    Ctl::Del { mountpoint } => self.del(&mountpoint),
                    _ => {}
                },
                Some(Event::Exited { pid, .. }) if pid == old.pid => old_alive = false,
                Some(Event::Exited { pid, .. }) if pid == new.pid => {
                    tracing::error!(
                        "restart: the new server died while preparing; the old one serves on"
                    );
                    if old_alive {
                        let _ = ctl::send(&old.ctl, &Ctl::Go, None);
                        return old;
                    }
                    return self.recover().unwrap_or(new);
                }
                Some(_) => {}
                None => {
                    tracing::error!(
                        "restart: the new server was not ready in time; the old one serves on"
                    );
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(new.pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    let _ = ctl::send(&old.ctl, &Ctl::Go, None);
                    return old;
                }
            }
        }
        if old_alive {
            let _ = ctl::send(&old.ctl, &Ctl::Quit, None);
            let deadline = tokio::time::Instant::now() + QUIT_TIMEOUT;
            let mut killed = false;
            loop {
                let ev = tokio::select! {
                    ev = self.rx.recv() => ev,
                    _ = tokio::time::sleep_until(deadline), if !killed => None,
                };
                match ev {
                    Some(Event::Exited { pid, .. }) if pid == old.pid => break,
                    Some(_) => {}
                    None => {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(old.pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                        killed = true;
                    }
                }
            }
        }
        let _ = ctl::send(&new.ctl, &Ctl::Go, None);
        tracing::warn!(
            old = old.pid,
            new = new.pid,
            ms = started.elapsed().as_millis() as u64,
            "restart: handed over"
        );
        new
    }

    /// Become `binary` (an upgrade), keeping our descriptors and our child; returns only on
    /// failure.
    fn reexec(&self, binary: &Path, server: &Server) -> std::io::Error {
        use std::os::unix::process::CommandExt;
        let carried = Carried {
            opts: self.opts.clone(),
            lock: self.lock.as_raw_fd(),
            listener: self.listener.as_raw_fd(),
            server_pid: server.pid,
            server_ctl: server.ctl.as_raw_fd(),
            mounts: self.mount_list(),
            generation: self.generation,
        };
        let json = match serde_json::to_string(&carried) {
            Ok(j) => j,
            Err(e) => return std::io::Error::other(e),
        };
        for fd in [carried.lock, carried.listener, carried.server_ctl]
            .into_iter()
            .chain(carried.mounts.iter().map(|m| m.fd))
        {
            if let Err(e) = ctl::inheritable(fd) {
                return e;
            }
        }
        let mut cmd = std::process::Command::new(binary);
        cmd.arg("--root").arg(&self.opts.root);
        if let Some(c) = &self.opts.config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(["daemon", "--foreground"])
            .env(ctl::SUPERVISOR_ENV, json);
        let e = cmd.exec();
        for fd in [carried.lock, carried.listener, carried.server_ctl]
            .into_iter()
            .chain(carried.mounts.iter().map(|m| m.fd))
        {
            // SAFETY: fcntl on our own descriptor.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        e
    }
}
