//! The daemon's side: take the root's lock, listen on the control socket, mount on request
//! with the shared services, watch each mount until it goes away (then shut it down in
//! order: prefetch stopped, profile kept, cache flushed), exit on SIGTERM/SIGINT, on a
//! `shutdown` request or after an idle period without mounts.
//!
//! Calls `mount` and `store` (through the services); no FUSE of its own.

use super::{read_request, socket_path, Error, MountRequest, Request, Response, PID_FILE};
use crate::mount::{MountSpec, Served, Services};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, Notify};

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
}

struct State {
    svc: Services,
    mounts: Mutex<HashMap<PathBuf, Entry>>,
    /// When the last mount went away (or the daemon started).
    idle_since: Mutex<Instant>,
    /// Wakes waiters whenever a mount is released, and the main loop on shutdown.
    released: Notify,
    shutdown: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Take the root's daemon lock (an exclusive `flock` on `ROOT/daemon.pid`, held for the
/// life of the process) and write our pid into it.
fn take_lock(root: &Path) -> Result<std::fs::File, Error> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    let path = root.join(PID_FILE);
    let io = |source| Error::Io {
        path: path.clone(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    // SAFETY: flock on a descriptor we own; no memory is shared with the kernel.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        // The winner may have the lock and not yet have written its pid: wait a moment.
        let mut pid = String::new();
        for _ in 0..100 {
            pid.clear();
            let _ = f.rewind();
            let _ = f.read_to_string(&mut pid);
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
    f.set_len(0).map_err(io)?;
    f.rewind().map_err(io)?;
    writeln!(f, "{}", std::process::id()).map_err(io)?;
    Ok(f)
}

/// Serve the root of `svc.store` until told to stop; `ready` is called once the socket
/// accepts connections.
pub async fn serve(
    svc: Services,
    opts: DaemonOptions,
    ready: impl FnOnce(&Path),
) -> Result<(), Error> {
    let root = svc.store.root().to_path_buf();
    let _lock = take_lock(&root)?;
    let sock = socket_path(&root);
    // We hold the lock: a socket file left here belongs to a dead daemon.
    let _ = std::fs::remove_file(&sock);
    let io = |source| Error::Io {
        path: sock.clone(),
        source,
    };
    let listener = UnixListener::bind(&sock).map_err(io)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    crate::mount::lazy::tune_allocator();
    let state = Arc::new(State {
        svc,
        mounts: Mutex::new(HashMap::new()),
        idle_since: Mutex::new(Instant::now()),
        released: Notify::new(),
        shutdown: Notify::new(),
    });
    ready(&sock);
    tracing::info!(root = %root.display(), pid = std::process::id(), "strata daemon serving");
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = (
        signal(SignalKind::terminate()).map_err(io)?,
        signal(SignalKind::interrupt()).map_err(io)?,
    );
    loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    tokio::spawn(connection(state.clone(), stream));
                }
                Err(e) => tracing::warn!("control socket: {e}"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = state.shutdown.notified() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if let Some(idle) = opts.idle_exit {
                    let empty = lock(&state.mounts).is_empty();
                    if empty && lock(&state.idle_since).elapsed() >= idle {
                        tracing::info!("no mounts for {idle:?}: exiting");
                        break;
                    }
                }
            }
        }
    }
    // Stop listening first, then end every mount in order.
    drop(listener);
    let _ = std::fs::remove_file(&sock);
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
            Ok(Some(Ok(req))) => handle(&state, req).await,
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

async fn handle(state: &Arc<State>, req: Request) -> Response {
    let ok = Response {
        ok: true,
        ..Default::default()
    };
    match req {
        Request::Ping => ok,
        Request::Shutdown => {
            state.shutdown.notify_one();
            ok
        }
        Request::Mount(m) => match mount(state, m).await {
            Ok((message, record)) => Response {
                message: Some(message),
                record: Some(Box::new(record)),
                ..ok
            },
            Err(e) => failed(e),
        },
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
        Request::Unmount { mountpoint, force } => {
            if !lock(&state.mounts).contains_key(&mountpoint) {
                return failed(crate::mount::Error::NotStrataMount(mountpoint));
            }
            let flags = if force {
                nix::mount::MntFlags::MNT_DETACH
            } else {
                nix::mount::MntFlags::empty()
            };
            match nix::mount::umount2(&mountpoint, flags) {
                Ok(()) => {}
                Err(nix::errno::Errno::ENOTCONN) | Err(nix::errno::Errno::EBUSY) if !force => {
                    return failed(crate::mount::Error::Busy(mountpoint))
                }
                Err(e) => {
                    return failed(crate::mount::Error::Io {
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
            ok
        }
    }
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
    };
    let served =
        crate::mount::mount_image(&state.svc, spec, &crate::image::Progress::silent()).await?;
    let ready_ms = served.started.elapsed().as_millis() as u64;
    served.publish(&state.svc.store, ready_ms);
    let message = served.status_line(ready_ms);
    let record = served.record(ready_ms);
    let served = Arc::new(served);
    let (stop, stopped) = oneshot::channel();
    lock(&state.mounts).insert(
        mp.clone(),
        Entry {
            served: Some(served.clone()),
            stop: Some(stop),
            ready_ms,
        },
    );
    tokio::spawn(watch(state.clone(), mp, served, ready_ms, stopped));
    Ok((message, record))
}

/// Publish a mount's record twice a second until it is unmounted or stopped; then shut it
/// down and release it.
async fn watch(
    state: Arc<State>,
    mp: PathBuf,
    served: Arc<Served>,
    ready_ms: u64,
    stopped: oneshot::Receiver<()>,
) {
    let store = state.svc.store.clone();
    served
        .watch(&store, ready_ms, async {
            let _ = stopped.await;
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
    lock(&state.mounts).remove(&mp);
    *lock(&state.idle_since) = Instant::now();
    state.released.notify_waiters();
    tracing::info!(mountpoint = %mp.display(), "released");
}
