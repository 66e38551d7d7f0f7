//! The strata daemon: one process per `STRATA_ROOT` serves every lazy mount of that root
//! from one [`crate::mount::Services`] (one chunk cache with one single-flight table, one
//! registry client and its connections, one prefetch per mount sharing the cache, where
//! demand reads go first). The CLI talks to it over `ROOT/strata.sock` (0600) with
//! newline-delimited JSON ([`Request`] / [`Response`]) and starts it when none runs
//! ([`Client::connect_or_start`]). `ROOT/daemon.pid` names the serving process and carries
//! the lock that lets exactly one daemon serve a root.
//!
//! Calls `mount` (assembly and serving of mounts), `als` (additional layer stores), `store`
//! and `config`, and
//! `launcher::network` only to end the network of a detached container that exited by
//! itself; the CLI (`cli/`) calls this module. Formats nothing for humans beyond the messages it returns.

mod ctl;
mod sdnotify;
mod server;
mod stores;
mod supervisor;

pub use ctl::Inherited;
pub use server::{serve, DaemonOptions};
pub use supervisor::{
    daemon_processes, resume, supervise, wait_exited, SupervisorOptions, LOCK_FILE,
};

use crate::mount::MountRecord;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Name of the control socket under the root.
pub const SOCKET: &str = "strata.sock";
/// Name of the pid (and lock) file under the root.
pub const PID_FILE: &str = "daemon.pid";
/// How long an auto-started daemon stays without any mount before it exits.
pub const AUTO_IDLE_EXIT: Duration = Duration::from_secs(30);
/// Longest a request line may be (a mount request is a few hundred bytes).
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("another strata daemon (pid {pid}) already serves {}", .root.display())]
    AlreadyRunning { root: PathBuf, pid: String },
    #[error("{}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("strata daemon at {}: {what}", .socket.display())]
    Protocol { socket: PathBuf, what: String },
    #[error("strata daemon did not start within {secs} s (log: {})", .log.display())]
    NotStarted { secs: u64, log: PathBuf },
    /// The daemon ran the request and it failed: its error chain, as it printed it.
    #[error("{0}")]
    Remote(String),
    #[error(transparent)]
    Mount(#[from] crate::mount::Error),
}

/// What a mount request asks for (the daemon's twin of [`crate::mount::MountSpec`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountRequest {
    pub image: String,
    pub platform: Option<String>,
    pub mountpoint: PathBuf,
    /// (upper, work); none = read-only
    pub upper: Option<(PathBuf, PathBuf)>,
    pub prefetch: bool,
    pub passthrough: bool,
    pub allow_other: bool,
    /// Serve only this layer of the image, read-only in overlay format (`mount::layer`).
    #[serde(default)]
    pub layer: Option<crate::digest::Digest>,
    /// Files to read as soon as the image is open (`mount::warm`).
    #[serde(default)]
    pub warm: crate::mount::warm::WarmList,
}

impl MountRequest {
    /// Layer `layer` of `image` (pinned) as a read-only view at `mountpoint`, usable by any
    /// user of the host (containers run as anyone), reading `warm` at once.
    pub fn layer_view(
        image: String,
        layer: crate::digest::Digest,
        mountpoint: PathBuf,
        warm: crate::mount::warm::WarmList,
    ) -> MountRequest {
        MountRequest {
            image,
            platform: None,
            mountpoint,
            upper: None,
            prefetch: false,
            passthrough: false,
            allow_other: true,
            layer: Some(layer),
            warm,
        }
    }
}

/// One request on the control socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Is it there, and which process is it.
    Ping,
    Mount(MountRequest),
    /// Unmount one of the daemon's mounts (`force`: detach it even if busy) and release it
    /// at once (no wait for the next check of the mount table).
    Unmount {
        mountpoint: PathBuf,
        force: bool,
    },
    /// The counters of one mount (fresh, not the published file).
    Stats {
        mountpoint: PathBuf,
    },
    /// Unmount everything and exit.
    Shutdown,
    /// Hand every mount to a new server process (of `binary`: an upgrade) without unmounting.
    Restart {
        binary: Option<PathBuf>,
    },
    /// Mount a podman additional layer store at `dir` (`strata store mount`).
    StoreMount {
        dir: PathBuf,
    },
    /// Unmount the additional layer store at `dir`.
    StoreUnmount {
        dir: PathBuf,
    },
    /// The mount is the rootfs of the detached container whose init is `pid`: unmount it
    /// when that process is gone.
    Watch {
        mountpoint: PathBuf,
        pid: i32,
    },
    /// A mount of `image` is coming (its reference is being resolved): open connections to
    /// its registry now, and with `cold` (the CLI's store had no image of that name) fetch its
    /// tag's index alias (`image/alias.rs`). Answered at once.
    Connect {
        image: String,
        #[serde(default)]
        cold: bool,
    },
    /// A mount of `image` (a reference) is coming: its manifest is in and stored, `record`
    /// was made from it alone (no config yet); start the layer-index lookup now. Answered at
    /// once.
    Lookup {
        image: String,
        record: Box<crate::store::ImageRecord>,
    },
}

/// The answer to one request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub pid: u32,
    /// Mount: the status line (`IMAGE mounted at DIR in N ms ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<Box<MountRecord>>,
}

/// A connection to the daemon of one root.
pub struct Client {
    socket: PathBuf,
    lines: BufReader<UnixStream>,
}

/// The control socket of `root`.
pub fn socket_path(root: &Path) -> PathBuf {
    root.join(SOCKET)
}

impl Client {
    /// Connect to the daemon serving `root`, if one is there.
    pub async fn connect(root: &Path) -> Result<Client, Error> {
        let socket = socket_path(root);
        let stream = UnixStream::connect(&socket)
            .await
            .map_err(|source| Error::Io {
                path: socket.clone(),
                source,
            })?;
        Ok(Client {
            socket,
            lines: BufReader::new(stream),
        })
    }

    /// Connect to the daemon serving `root`; start one in the background (this executable,
    /// `daemon --idle-exit`, in a new session, log in `ROOT/daemon.log`) when none answers.
    /// `config` is passed on as `--config` when given.
    pub async fn connect_or_start(root: &Path, config: Option<&Path>) -> Result<Client, Error> {
        if let Ok(c) = Client::connect(root).await {
            return Ok(c);
        }
        let log = root.join("daemon.log");
        start_background(root, config, &log, Some(AUTO_IDLE_EXIT))?;
        Client::wait_for(root, &log).await
    }

    /// Connect to the daemon of `root` that is starting (its log in `log`), waiting up to
    /// 20 s for its socket to answer. Asked every millisecond for the first 200 ms (a daemon
    /// comes up in about 10: a cold `strata run` waits for it), then every 10.
    pub async fn wait_for(root: &Path, log: &Path) -> Result<Client, Error> {
        let start = std::time::Instant::now();
        let deadline = start + Duration::from_secs(20);
        loop {
            match Client::connect(root).await {
                Ok(c) => return Ok(c),
                Err(_) if std::time::Instant::now() < deadline => {
                    let fast = start.elapsed() < Duration::from_millis(200);
                    tokio::time::sleep(Duration::from_millis(if fast { 1 } else { 10 })).await
                }
                Err(_) => {
                    return Err(Error::NotStarted {
                        secs: 20,
                        log: log.to_path_buf(),
                    })
                }
            }
        }
    }

    /// Send one request and read its answer; a failed request is an error.
    pub async fn call(&mut self, req: &Request) -> Result<Response, Error> {
        let proto = |what: String| Error::Protocol {
            socket: self.socket.clone(),
            what,
        };
        let mut line = serde_json::to_vec(req).map_err(|e| proto(e.to_string()))?;
        line.push(b'\n');
        let io = |source| Error::Io {
            path: self.socket.clone(),
            source,
        };
        self.lines.get_mut().write_all(&line).await.map_err(io)?;
        let mut answer = String::new();
        let n = self
            .lines
            .read_line(&mut answer)
            .await
            .map_err(|source| Error::Io {
                path: self.socket.clone(),
                source,
            })?;
        if n == 0 {
            return Err(proto("closed the connection without an answer".into()));
        }
        let resp: Response = serde_json::from_str(&answer).map_err(|e| proto(e.to_string()))?;
        match (&resp.ok, &resp.error) {
            (true, _) => Ok(resp),
            (false, Some(e)) => Err(Error::Remote(e.clone())),
            (false, None) => Err(proto("failed without saying why".into())),
        }
    }
}

/// Start `strata --root ROOT daemon --foreground [--idle-exit SECS]` in a new session, stdio
/// detached, its stderr appended to `log`. Does not wait for it.
pub fn start_background(
    root: &Path,
    config: Option<&Path>,
    log: &Path,
    idle_exit: Option<Duration>,
) -> Result<(), Error> {
    use std::os::unix::process::CommandExt;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(root).map_err(io(root))?;
    let exe = std::env::current_exe().map_err(io(Path::new("/proc/self/exe")))?;
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io(log))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--root").arg(root);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd.arg("daemon").arg("--foreground");
    if let Some(idle) = idle_exit {
        cmd.arg("--idle-exit").arg(idle.as_secs().to_string());
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(logf);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    // The child is not waited for: it outlives us. Reap it if it exits early (lost race).
    let mut child = cmd.spawn().map_err(io(Path::new("strata daemon")))?;
    std::thread::spawn(move || child.wait());
    Ok(())
}

/// Read one request line (bounded).
async fn read_request(
    lines: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> std::io::Result<Option<Result<Request, String>>> {
    let mut buf = Vec::new();
    let n = (&mut *lines)
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if !buf.ends_with(b"\n") {
        return Ok(Some(Err(format!(
            "request line over {MAX_LINE} bytes or cut"
        ))));
    }
    Ok(Some(
        serde_json::from_slice(&buf).map_err(|e| format!("bad request: {e}")),
    ))
}
