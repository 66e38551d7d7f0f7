//! The server: the process that serves the FUSE mounts of a root, started by the supervisor
//! (`supervisor.rs`) with the listening control socket, the root's lock and — after a
//! restart or a crash — the FUSE devices of the mounts to serve again (restored from their
//! saved form, attached, and the kernel asked to resend what a dead server had read). It
//! mounts on request with the shared services, tells the supervisor of each mount's device,
//! watches each mount until it goes away (then shuts it down in order: prefetch stopped,
//! profile kept, cache flushed), exits on SIGTERM/SIGINT, on a `shutdown` request or after
//! an idle period without mounts, and quits without unmounting when a successor takes over.
//!
//! Serves containerd's snapshots API too (`snapshotter`, through `server_snapshots.rs`), whose layer views are mounts of
//! this daemon, and podman's additional layer stores (`stores.rs`), whose layer views are too.
//!
//! Calls `mount`, `fuse` (resend only), `snapshotter`, `als` (through `stores.rs`) and `store`
//! (through the services), and `ctl`.

use super::ctl::{self, Ctl, Inherited};
use super::stores::Stores;
use super::{read_request, socket_path, Error, MountRequest, Request, Response, PID_FILE};
use crate::mount::{MountSpec, SavedMount, Served, Services};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Notify};

#[path = "server_snapshots.rs"]
mod snapshots;
use snapshots::{start_snapshotter, LayerMounter};

/// How the daemon runs.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// Exit after this long without any mount (auto-started daemons); none = run until told.
    pub idle_exit: Option<Duration>,
}

/// A mount being served: the watcher owns the stop sender's other end.
struct Entry {
    served: Option<Arc<Served>>,
    stop: Option<oneshot::Sender<()>>,
    /// How long the mount took to be ready (for its records).
    ready_ms: u64,
    /// Its saved form (for a successor; kept up to date).
    saved: Option<SavedMount>,
    /// A detached container's init (pid, start time): the mount ends when it is gone.
    container: Arc<Mutex<Option<(i32, u64)>>>,
}

struct State {
    svc: Services,
    mounts: Mutex<HashMap<PathBuf, Entry>>,
    /// When the last mount went away (or the daemon started).
    idle_since: Mutex<Instant>,
    /// Wakes waiters whenever a mount is released, and the main loop on shutdown.
    released: Notify,
    shutdown: Notify,
    /// This server's end of the channel to the supervisor.
    ctl: Arc<OwnedFd>,
    /// A restart is under way: no new connections, no new requests.
    handing_over: AtomicBool,
    /// Requests being handled now.
    inflight: AtomicUsize,
    /// podman additional layer stores (set once the server has started).
    stores: std::sync::OnceLock<Arc<Stores>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serve the root of `svc.store` with what the supervisor handed down (`inh`) until told to
/// stop; `ready` is called once every handed-down mount is served again and the socket
/// accepts connections.
pub async fn serve(
    svc: Services,
    opts: DaemonOptions,
    inh: Inherited,
    ready: impl FnOnce(&Path),
) -> Result<(), Error> {
    let root = svc.store.root().to_path_buf();
    // SAFETY: the supervisor passed these numbers down for us alone.
    let own = |fd| unsafe { ctl::own(fd) };
    let (root_lock, listener, ctl_fd) = (own(inh.lock), own(inh.listener), own(inh.ctl));
    let devices: Vec<(PathBuf, OwnedFd)> = inh
        .mounts
        .iter()
        .map(|m| (m.mountpoint.clone(), own(m.fd)))
        .collect();
    for fd in [
        root_lock.as_raw_fd(),
        listener.as_raw_fd(),
        ctl_fd.as_raw_fd(),
    ]
    .into_iter()
    .chain(devices.iter().map(|(_, d)| d.as_raw_fd()))
    {
        // SAFETY: fcntl on our own descriptor; nothing we start later inherits it.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    let root_lock = std::fs::File::from(root_lock);
    let pid_path = root.join(PID_FILE);
    std::fs::write(&pid_path, format!("{}\n", std::process::id())).map_err(|source| Error::Io {
        path: pid_path.clone(),
        source,
    })?;
    let sock = socket_path(&root);
    let io = |source| Error::Io {
        path: sock.clone(),
        source,
    };
    let listener = std::os::unix::net::UnixListener::from(listener);
    listener.set_nonblocking(true).map_err(io)?;
    let listener = UnixListener::from_std(listener).map_err(io)?;
    crate::mount::lazy::tune_allocator();
    let state = Arc::new(State {
        svc,
        mounts: Mutex::new(HashMap::new()),
        idle_since: Mutex::new(Instant::now()),
        released: Notify::new(),
        shutdown: Notify::new(),
        ctl: Arc::new(ctl_fd),
        handing_over: AtomicBool::new(false),
        inflight: AtomicUsize::new(0),
        stores: std::sync::OnceLock::new(),
    });
    let mut from_sup = listen_to_supervisor(&state.ctl);
    restore_all(&state, devices, inh.generation, inh.handover, &mut from_sup).await;
    let snapshotter = start_snapshotter(&state);
    let stores = Arc::new(Stores::new(
        state.svc.clone(),
        Arc::new(LayerMounter(state.clone())),
    ));
    stores.restore();
    let _ = state.stores.set(stores.clone());
    ready(&sock);
    tracing::info!(root = %root.display(), pid = std::process::id(), "strata daemon serving");
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = (
        signal(SignalKind::terminate()).map_err(io)?,
        signal(SignalKind::interrupt()).map_err(io)?,
    );
    let mut supervised = true;
    loop {
        let accepting = !state.handing_over.load(Ordering::SeqCst);
        tokio::select! {
            conn = listener.accept(), if accepting => match conn {
                Ok((stream, _)) => {
                    tokio::spawn(connection(state.clone(), stream));
                }
                Err(e) => tracing::warn!("control socket: {e}"),
            },
            m = from_sup.recv(), if supervised => match m {
                Some(Ctl::Quit) => quit(&state).await,
                Some(Ctl::Go) => {
                    tracing::warn!("restart abandoned by the supervisor: serving on");
                    state.handing_over.store(false, Ordering::SeqCst);
                }
                Some(other) => tracing::debug!("unexpected {other:?} from the supervisor"),
                None if inh.fd_store => {
                    tracing::warn!("the supervisor is gone; systemd keeps the devices: quitting for its successor");
                    quit(&state).await
                }
                None => {
                    tracing::warn!("the supervisor is gone: a crash of this server will end its mounts");
                    supervised = false;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = state.shutdown.notified() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if let Some(idle) = opts.idle_exit {
                    let empty = lock(&state.mounts).is_empty() && stores.len() == 0;
                    if empty && accepting && lock(&state.idle_since).elapsed() >= idle {
                        tracing::info!("no mounts for {idle:?}: exiting");
                        break;
                    }
                }
            }
        }
    }
    // Stop listening first, then end every mount in order.
    drop(listener);
    stores.unmount_all();
    // The socket file is ours only while the root's lock file is still the one we hold: a
    // root deleted and made again under us has a newer daemon's socket, left alone.
    let id = |m: std::fs::Metadata| (m.dev(), m.ino());
    let held = root_lock.metadata().ok().map(id);
    let named = std::fs::metadata(root.join(super::LOCK_FILE)).ok().map(id);
    if held.is_some() && held == named {
        let _ = std::fs::remove_file(&sock);
    } else {
        tracing::warn!(socket = %sock.display(), "the root was replaced: its control socket is not ours, left");
    }
    if let Some(t) = snapshotter {
        t.abort();
        let _ = std::fs::remove_file(root.join(crate::snapshotter::SOCKET));
    }
    let stops: Vec<_> = lock(&state.mounts)
        .values_mut()
        .filter_map(|e| e.stop.take())
        .collect();
    for s in stops {
        let _ = s.send(());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lock(&state.mounts).is_empty() && Instant::now() < deadline {
        let wait = state.released.notified();
        let _ = tokio::time::timeout(Duration::from_millis(200), wait).await;
    }
    Ok(())
}

/// The supervisor's messages, read on a thread of their own.
fn listen_to_supervisor(ctl_fd: &Arc<OwnedFd>) -> mpsc::UnboundedReceiver<Ctl> {
    let (tx, rx) = mpsc::unbounded_channel();
    let fd = ctl_fd.clone();
    std::thread::spawn(move || {
        while let Ok(Some((m, _))) = ctl::recv(&fd) {
            if tx.send(m).is_err() {
                return;
            }
        }
    });
    rx
}

/// Tell the supervisor (best effort: without one, mounts simply do not survive a crash).
fn tell(state: &State, msg: &Ctl, fd: Option<std::os::fd::RawFd>) {
    if let Err(e) = ctl::send(&state.ctl, msg, fd) {
        tracing::debug!("telling the supervisor {msg:?}: {e}");
    }
}

/// A successor takes over: keep what the cache has written, then end this process at once,
/// without unmounting or answering anything more (the successor has the kernel resend what
/// was read and not answered).
async fn quit(state: &State) -> ! {
    let _ = tokio::time::timeout(Duration::from_secs(1), state.svc.cache.flush()).await;
    tracing::warn!(pid = std::process::id(), "handing over: quitting");
    // SAFETY: _exit ends the process; nothing runs after it.
    unsafe { libc::_exit(0) }
}

/// Serve the handed-down mounts again: prepare each (image, union), tell the supervisor
/// when all are ready, wait for its go if an old server still runs, then attach and have
/// the kernel resend. A mount that cannot be served again is detached (its readers see the
/// connection end) and forgotten.
async fn restore_all(
    state: &Arc<State>,
    devices: Vec<(PathBuf, OwnedFd)>,
    generation: u64,
    handover: bool,
    from_sup: &mut mpsc::UnboundedReceiver<Ctl>,
) {
    let t0 = Instant::now();
    let svc = &state.svc;
    let mut saved: HashMap<PathBuf, SavedMount> = crate::mount::saved_mounts(&svc.store)
        .into_iter()
        .map(|s| (s.mountpoint.clone(), s))
        .collect();
    let base = generation << 40;
    let jobs = devices.into_iter().map(|(mp, dev)| {
        let s = saved.remove(&mp);
        async move {
            let r = match s {
                Some(s) => crate::mount::prepare(svc, s, base)
                    .await
                    .map_err(|e| crate::report::chain(&e)),
                None => Err("no saved form of the mount".to_string()),
            };
            (mp, dev, r)
        }
    });
    let results = futures::future::join_all(jobs).await;
    // Saved mounts nobody handed down: left by a daemon that died with its supervisor. A
    // mount still there is dead (no process has its connection): detach it.
    for mp in saved.into_keys() {
        tracing::warn!(mountpoint = %mp.display(), "cleaning up a mount of a dead daemon");
        if crate::mount::is_mounted(&mp) {
            let _ = nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH);
        }
        SavedMount::remove(&svc.store, &mp);
        let _ = std::fs::remove_file(crate::mount::record_path(svc.store.root(), &mp));
    }
    let mut prepared = Vec::new();
    for (mp, dev, r) in results {
        match r {
            Ok(p) => prepared.push((p, dev)),
            Err(e) => abandon(state, &mp, dev, &e),
        }
    }
    if handover {
        tell(
            state,
            &Ctl::Ready {
                mounts: prepared.len(),
            },
            None,
        );
        loop {
            match from_sup.recv().await {
                Some(Ctl::Go) | None => break,
                Some(_) => {}
            }
        }
    }
    for (p, dev) in prepared {
        let mp = p.saved.mountpoint.clone();
        let saved = p.saved.clone();
        let Ok(keep) = dev.try_clone() else {
            abandon(state, &mp, dev, "duplicating its FUSE device");
            continue;
        };
        match p.attach(svc, dev) {
            Ok(served) => {
                if let Err(e) = crate::fuse::resend(served.handle.device()) {
                    tracing::warn!(mountpoint = %mp.display(), "asking the kernel to resend: {e}");
                }
                let ready_ms = served.started.elapsed().as_millis() as u64;
                register(state, mp, served, ready_ms, saved);
            }
            Err(e) => abandon(state, &mp, keep, &crate::report::chain(&e)),
        }
    }
    let n = lock(&state.mounts).len();
    if n > 0 {
        tracing::warn!(
            mounts = n,
            ms = t0.elapsed().as_millis() as u64,
            "mounts served again"
        );
    }
}

/// A handed-down mount that cannot be served again: detach it and forget it.
fn abandon(state: &State, mp: &Path, dev: OwnedFd, why: &str) {
    tracing::error!(mountpoint = %mp.display(), "cannot serve the mount again: {why}; detaching it");
    let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
    drop(dev);
    tell(
        state,
        &Ctl::Del {
            mountpoint: mp.to_path_buf(),
        },
        None,
    );
    SavedMount::remove(&state.svc.store, mp);
    let _ = std::fs::remove_file(crate::mount::record_path(state.svc.store.root(), mp));
}

/// One client connection: requests in, answers out, one at a time.
async fn connection(state: Arc<State>, stream: UnixStream) {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r);
    loop {
        let resp = match read_request(&mut lines).await {
            Ok(None) | Err(_) => return,
            Ok(Some(Err(msg))) => Response {
                error: Some(msg),
                ..Default::default()
            },
            Ok(Some(Ok(_))) if state.handing_over.load(Ordering::SeqCst) => Response {
                error: Some("the strata daemon is restarting; try again".into()),
                ..Default::default()
            },
            Ok(Some(Ok(req))) => {
                state.inflight.fetch_add(1, Ordering::SeqCst);
                let r = handle(&state, req).await;
                state.inflight.fetch_sub(1, Ordering::SeqCst);
                r
            }
        };
        let mut line = serde_json::to_vec(&Response {
            pid: std::process::id(),
            ..resp
        })
        .unwrap_or_else(|_| b"{\"ok\":false,\"error\":\"encoding the answer\"}".to_vec());
        line.push(b'\n');
        if w.write_all(&line).await.is_err() {
            return;
        }
    }
}

fn failed(e: impl std::error::Error) -> Response {
    // The whole chain, as `main` prints errors.
    Response {
        error: Some(crate::report::chain(&e)),
        ..Default::default()
    }
}

/// Mount (or unmount) the additional layer store at `dir`.
fn store_request(state: &State, dir: &Path, mount: bool) -> Response {
    let Some(stores) = state.stores.get() else {
        return failed(std::io::Error::other("the daemon is starting"));
    };
    let r = match mount {
        true => stores
            .mount(dir)
            .map(|mp| format!("additional layer store mounted at {}", mp.display())),
        false => stores
            .unmount(dir)
            .map(|mp| format!("additional layer store at {} unmounted", mp.display())),
    };
    match r {
        Ok(message) => Response {
            ok: true,
            message: Some(message),
            ..Default::default()
        },
        Err(e) => failed(std::io::Error::other(e)),
    }
}

async fn handle(state: &Arc<State>, req: Request) -> Response {
    let ok = Response {
        ok: true,
        ..Default::default()
    };
    match req {
        Request::Ping => ok,
        Request::Connect { image, cold } => {
            if let Ok(r) = image.parse::<crate::reference::Reference>() {
                state.svc.connect_early(r, cold);
            }
            ok
        }
        Request::Lookup { image, record } => {
            if let Ok(r) = image.parse::<crate::reference::Reference>() {
                state.svc.start_early(r, *record);
            }
            ok
        }
        Request::Shutdown => {
            state.shutdown.notify_one();
            ok
        }
        Request::Watch { mountpoint, pid } => {
            let Some(start) = crate::mount::process_start(pid) else {
                return failed(crate::mount::Error::Io {
                    path: PathBuf::from(format!("/proc/{pid}")),
                    source: std::io::ErrorKind::NotFound.into(),
                });
            };
            let mut mounts = lock(&state.mounts);
            let Some(e) = mounts.get_mut(&mountpoint) else {
                drop(mounts);
                // A container rootfs this daemon does not serve (kernel overlayfs over layer
                // views): only its network is released when the init exits.
                if let Some(id) = container_id(state.svc.store.root(), &mountpoint) {
                    if let Some(slirp) = crate::launcher::network::slirp_pid(&id) {
                        tokio::spawn(watch_network(id, pid, start, slirp));
                    }
                    return ok;
                }
                return failed(crate::mount::Error::NotStrataMount(mountpoint));
            };
            *lock(&e.container) = Some((pid, start));
            if let Some(s) = e.saved.as_mut() {
                s.container = Some((pid, start));
                if let Err(e) = s.save(&state.svc.store) {
                    tracing::warn!("saving the mount for a restart: {e}");
                }
            }
            ok
        }
        Request::Restart { binary } => match restart(state, binary).await {
            Ok(n) => Response {
                message: Some(format!("handing {n} mount(s) over to a new server")),
                ..ok
            },
            Err(msg) => Response {
                error: Some(msg),
                ..Default::default()
            },
        },
        Request::Mount(m) => match mount(state, m).await {
            Ok((message, record)) => Response {
                message: Some(message),
                record: Some(Box::new(record)),
                ..ok
            },
            Err(e) => failed(e),
        },
        Request::StoreMount { dir } => store_request(state, &dir, true),
        Request::StoreUnmount { dir } => store_request(state, &dir, false),
        Request::Stats { mountpoint } => {
            let served = lock(&state.mounts)
                .get(&mountpoint)
                .and_then(|e| Some((e.served.clone()?, e.ready_ms)));
            match served {
                Some((s, ready_ms)) => Response {
                    record: Some(Box::new(s.record(ready_ms))),
                    ..ok
                },
                None => failed(crate::mount::Error::NotStrataMount(mountpoint)),
            }
        }
        Request::Unmount { mountpoint, force } => match unmount(state, mountpoint, force).await {
            Ok(()) => ok,
            Err(e) => failed(e),
        },
    }
}

/// Unmount one of the daemon's mounts (`force`: detached even if busy) and release it.
async fn unmount(
    state: &State,
    mountpoint: PathBuf,
    force: bool,
) -> Result<(), crate::mount::Error> {
    if !lock(&state.mounts).contains_key(&mountpoint) {
        return Err(crate::mount::Error::NotStrataMount(mountpoint));
    }
    let flags = if force {
        nix::mount::MntFlags::MNT_DETACH
    } else {
        nix::mount::MntFlags::empty()
    };
    match nix::mount::umount2(&mountpoint, flags) {
        Ok(()) => {}
        Err(nix::errno::Errno::ENOTCONN) | Err(nix::errno::Errno::EBUSY) if !force => {
            return Err(crate::mount::Error::Busy(mountpoint))
        }
        Err(e) => {
            return Err(crate::mount::Error::Io {
                path: mountpoint,
                source: e.into(),
            })
        }
    }
    let stop = lock(&state.mounts)
        .get_mut(&mountpoint)
        .and_then(|e| e.stop.take());
    if let Some(s) = stop {
        let _ = s.send(());
    }
    wait_released(state, &mountpoint).await;
    Ok(())
}

/// Stop taking requests, let the ones under way finish (30 s at most), then ask the
/// supervisor to hand everything to a new server (of `binary`, for an upgrade). The number of
/// mounts handed over.
async fn restart(state: &State, binary: Option<PathBuf>) -> Result<usize, String> {
    if state.handing_over.swap(true, Ordering::SeqCst) {
        return Err("a restart is already under way".into());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    // This request is one of them.
    while state.inflight.load(Ordering::SeqCst) > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if let Err(e) = ctl::send(&state.ctl, &Ctl::Restart { binary }, None) {
        state.handing_over.store(false, Ordering::SeqCst);
        return Err(format!("no supervisor to restart this daemon: {e}"));
    }
    Ok(lock(&state.mounts).len())
}

/// Wait (at most 10 s) until the mount at `mp` has been shut down and released.
async fn wait_released(state: &State, mp: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let wait = state.released.notified();
        if !lock(&state.mounts).contains_key(mp) || Instant::now() > deadline {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), wait).await;
    }
}

/// Mount on request; the answer's status line and first record.
async fn mount(
    state: &Arc<State>,
    m: MountRequest,
) -> Result<(String, crate::mount::MountRecord), crate::mount::Error> {
    let mp = crate::mount::check_mountpoint(&m.mountpoint)?;
    let spec = MountSpec {
        image: &m.image,
        platform: m.platform.as_deref(),
        mountpoint: &mp,
        upper: m.upper.clone(),
        prefetch: m.prefetch,
        passthrough: m.passthrough,
        allow_other: m.allow_other,
        warm: m.warm.clone(),
    };
    let served = match &m.layer {
        Some(layer) => {
            crate::mount::mount_layer(&state.svc, &m.image, layer, &mp, m.warm.clone()).await?
        }
        None => {
            crate::mount::mount_image(&state.svc, spec, &crate::image::Progress::silent()).await?
        }
    };
    let ready_ms = served.started.elapsed().as_millis() as u64;
    let saved = SavedMount {
        image: m.image.clone(),
        manifest: served.lazy.record.manifest_digest,
        mountpoint: mp.clone(),
        upper: m.upper.clone(),
        prefetch: m.prefetch,
        passthrough: m.passthrough,
        passthrough_active: served.handle.passthrough_active(),
        allow_other: m.allow_other,
        container: None,
        layer: m.layer,
    };
    if let Err(e) = saved.save(&state.svc.store) {
        tracing::warn!("saving the mount for a restart: {e}");
    }
    tell(
        state,
        &Ctl::Add {
            mountpoint: mp.clone(),
        },
        Some(served.handle.device().as_raw_fd()),
    );
    let message = served.status_line(ready_ms);
    let record = served.record(ready_ms);
    register(state, mp, served, ready_ms, saved);
    Ok((message, record))
}

/// Serve `served` (at `mp`, saved as `saved`) from now on: publish its record, keep it in
/// the table, watch it.
fn register(state: &Arc<State>, mp: PathBuf, served: Served, ready_ms: u64, saved: SavedMount) {
    served.publish(&state.svc.store, ready_ms);
    let served = Arc::new(served);
    let (stop, stopped) = oneshot::channel();
    let container = Arc::new(Mutex::new(saved.container));
    lock(&state.mounts).insert(
        mp.clone(),
        Entry {
            served: Some(served.clone()),
            stop: Some(stop),
            ready_ms,
            saved: Some(saved),
            container: container.clone(),
        },
    );
    tokio::spawn(watch(
        state.clone(),
        mp,
        served,
        ready_ms,
        stopped,
        container,
    ));
}

/// Publish a mount's record twice a second until it is unmounted or stopped; then shut it
/// down and release it.
async fn watch(
    state: Arc<State>,
    mp: PathBuf,
    served: Arc<Served>,
    ready_ms: u64,
    stopped: oneshot::Receiver<()>,
    container: Arc<Mutex<Option<(i32, u64)>>>,
) {
    let store = state.svc.store.clone();
    served
        .watch(&store, ready_ms, async {
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        let c = *lock(&container);
                        if let Some((pid, start)) = c {
                            if crate::mount::process_start(pid) != Some(start) {
                                tracing::info!(mountpoint = %mp.display(), pid, "container gone: unmounting its rootfs");
                                release_network(store.root(), &mp).await;
                                return;
                            }
                        }
                    }
                }
            }
        })
        .await;
    if let Some(e) = lock(&state.mounts).get_mut(&mp) {
        e.served = None;
    }
    // Stats requests hold a clone for a moment only.
    let mut served = served;
    let served = loop {
        match Arc::try_unwrap(served) {
            Ok(s) => break s,
            Err(again) => {
                served = again;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    served.shutdown(&store).await;
    SavedMount::remove(&store, &mp);
    tell(
        &state,
        &Ctl::Del {
            mountpoint: mp.clone(),
        },
        None,
    );
    lock(&state.mounts).remove(&mp);
    *lock(&state.idle_since) = Instant::now();
    state.released.notify_waiters();
    tracing::info!(mountpoint = %mp.display(), "released");
}

/// The container whose rootfs is `rootfs` (`ROOT/containers/ID/rootfs`), if it is one.
fn container_id(root: &Path, rootfs: &Path) -> Option<String> {
    let containers = root.join("containers");
    rootfs
        .parent()
        .filter(|d| d.parent() == Some(containers.as_path()))
        .filter(|_| rootfs.file_name().is_some_and(|n| n == "rootfs"))
        .and_then(|d| d.file_name())
        .map(|n| n.to_string_lossy().into_owned())
}

/// Once a second until container `id`'s init (`pid`, started at `start`) is gone (or the
/// daemon exits): then end its network, if it is still the one of that run (served by
/// slirp4netns `slirp`: a `start` since has made another, left alone). For rootfs mounts
/// this daemon does not serve; its own mounts are watched by `watch`.
async fn watch_network(id: String, pid: i32, start: u64, slirp: i32) {
    use crate::launcher::network;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if crate::mount::process_start(pid) == Some(start) {
            continue;
        }
        if network::slirp_pid(&id) == Some(slirp) {
            tracing::info!(container = %id, pid, "container gone: ending its network");
            end_network(id).await;
        }
        return;
    }
}

/// A detached container that exited by itself: end its private network (slirp4netns and the
/// pinned namespace, `launcher::network`) with its rootfs, as docker does; `rm`/`start`
/// would otherwise find it still running. Its rootfs is `ROOT/containers/ID/rootfs`.
async fn release_network(root: &Path, rootfs: &Path) {
    if let Some(id) = container_id(root, rootfs) {
        end_network(id).await;
    }
}

/// End container `id`'s network (`launcher::network::teardown`, off the runtime's threads).
async fn end_network(id: String) {
    let container = id.clone();
    let r = tokio::task::spawn_blocking(move || crate::launcher::network::teardown(&id)).await;
    if let Ok(Err(e)) = r {
        tracing::warn!(%container, "ending the container's network: {e}");
    }
}
