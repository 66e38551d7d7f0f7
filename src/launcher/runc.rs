//! The OCI runtime binary (`runc` by default): run, exec, kill, stop, state, delete.
//!
//! Everything here is a `runc` invocation through `tokio::process`; no other layer is called.
//!
//! * Foreground [`Runtime::run`]: `runc run --bundle B ID` with the caller's stdio. The
//!   container's exit status is the result (runc reports 128+N for a signal). SIGINT, SIGTERM,
//!   SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 received by strata meanwhile are forwarded with
//!   `runc kill ID SIG` (to the runc process if the container does not exist yet). This
//!   installs tokio signal handlers, so those signals no longer terminate strata afterwards.
//! * `-t` in the foreground: `process.terminal = true` and no `--console-socket`; runc then
//!   allocates the pty itself, puts strata's terminal (stdin) in raw mode and copies between
//!   the two, so stdin must be a terminal (checked: "the input device is not a TTY").
//!   `-d -t` would need a long-lived holder of the pty master (a console socket and a shim):
//!   refused for now.
//! * Detached [`Runtime::run_detached`]: a small `/bin/sh` shim in its own session runs the
//!   same foreground `runc run` with stdout+stderr appended to the log file and, when the
//!   container exits, writes the exit code to a file, so `ps -a`, `wait` and `logs` work after
//!   strata itself has exited. `runc run` deletes the runtime state when the process exits.

use super::{Error, ResolvedUser};
use nix::sys::signal::Signal;
use serde::Deserialize;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::process::Command;

/// Signals strata forwards to a foreground container.
pub const FORWARDED_SIGNALS: &[Signal] = &[
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

const POLL: Duration = Duration::from_millis(10);

/// One standard stream of a container process.
#[derive(Debug)]
pub enum StdStream {
    /// strata's own stream.
    Inherit,
    /// `/dev/null`.
    Null,
    /// A file, pipe end or pty the caller opened.
    Fd(OwnedFd),
}

impl StdStream {
    fn into_stdio(self) -> Stdio {
        match self {
            StdStream::Inherit => Stdio::inherit(),
            StdStream::Null => Stdio::null(),
            StdStream::Fd(fd) => Stdio::from(fd),
        }
    }

    /// Whether this is a terminal; `Inherit` means strata's stdin.
    fn is_stdin_tty(&self) -> bool {
        use std::io::IsTerminal;
        match self {
            StdStream::Inherit => std::io::stdin().is_terminal(),
            StdStream::Null => false,
            StdStream::Fd(fd) => fd.is_terminal(),
        }
    }
}

/// The three standard streams of a container process.
#[derive(Debug)]
pub struct ProcessIo {
    pub stdin: StdStream,
    pub stdout: StdStream,
    pub stderr: StdStream,
}

impl ProcessIo {
    /// docker's foreground default: strata's stdout/stderr; stdin only with `-i` (or `-t`).
    pub fn inherit(interactive: bool) -> Self {
        ProcessIo {
            stdin: if interactive {
                StdStream::Inherit
            } else {
                StdStream::Null
            },
            stdout: StdStream::Inherit,
            stderr: StdStream::Inherit,
        }
    }

    fn apply(self, cmd: &mut Command) {
        cmd.stdin(self.stdin.into_stdio())
            .stdout(self.stdout.into_stdio())
            .stderr(self.stderr.into_stdio());
    }
}

/// `runc state` output.
#[derive(Debug, Clone, Deserialize)]
pub struct RuntimeState {
    pub id: String,
    #[serde(default)]
    pub pid: i32,
    /// `creating`, `created`, `running`, `paused` or `stopped`.
    pub status: String,
    #[serde(default)]
    pub bundle: PathBuf,
}

impl RuntimeState {
    pub fn is_running(&self) -> bool {
        matches!(self.status.as_str(), "running" | "paused" | "creating")
    }
}

/// How a detached start ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetachedStart {
    /// The container runs; its init's host pid.
    Running { pid: i32 },
    /// It was already gone when strata looked (a short command): its exit code.
    Exited { code: i32 },
}

/// Files a detached container writes.
#[derive(Debug, Clone)]
pub struct DetachedFiles {
    /// stdout and stderr, appended.
    pub log: PathBuf,
    /// runc's `--pid-file`.
    pub pid: PathBuf,
    /// The exit code, written when the container exits.
    pub exit: PathBuf,
}

/// `strata exec` options (runc exec flags).
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub args: Vec<String>,
    /// Added to the container's environment (`K=V`).
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// `None`: the container's user.
    pub user: Option<ResolvedUser>,
    pub tty: bool,
    pub detach: bool,
}

/// An OCI runtime binary with runc's command line.
#[derive(Debug, Clone)]
pub struct Runtime {
    binary: PathBuf,
    state_root: Option<PathBuf>,
}

impl Runtime {
    /// `binary` is a path or a name looked up in PATH (`runc`).
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Runtime {
            binary: binary.into(),
            state_root: None,
        }
    }

    /// Keep the runtime's state under `root` (`runc --root`) instead of its default
    /// (`/run/runc` for root).
    pub fn with_state_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.state_root = Some(root.into());
        self
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    fn base_args(&self) -> Vec<String> {
        match &self.state_root {
            Some(r) => vec!["--root".into(), r.to_string_lossy().into_owned()],
            None => Vec::new(),
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.args(self.base_args());
        c
    }

    fn spawn_error(&self, source: std::io::Error) -> Error {
        Error::RuntimeSpawn {
            runtime: self.binary.clone(),
            source,
        }
    }

    /// Run a short runtime command; its stderr becomes the error on failure.
    async fn call(&self, op: &'static str, id: &str, args: &[String]) -> Result<Vec<u8>, Error> {
        let out = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| self.spawn_error(e))?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        Err(Error::RuntimeFailed {
            runtime: self.binary.clone(),
            op,
            id: id.to_string(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    /// Run the container in the foreground; returns its exit code. See the module docs for
    /// signals and `-t`.
    pub async fn run(
        &self,
        id: &str,
        bundle: &Path,
        io: ProcessIo,
        tty: bool,
        pid_file: Option<&Path>,
    ) -> Result<i32, Error> {
        if tty && !io.stdin.is_stdin_tty() {
            return Err(Error::Unsupported(
                "-t",
                "the input device is not a TTY".into(),
            ));
        }
        let mut cmd = self.command();
        cmd.arg("run").arg("--bundle").arg(bundle);
        if let Some(p) = pid_file {
            cmd.arg("--pid-file").arg(p);
        }
        cmd.arg(id);
        io.apply(&mut cmd);
        let forward_id = id.to_string();
        self.wait_forwarding(cmd, |rt, sig, runc_pid| {
            let id = forward_id.clone();
            async move {
                if rt.kill(&id, sig, false).await.is_err() {
                    // Not created yet (or already gone): runc relays what it receives.
                    signal_pid(runc_pid, sig);
                }
            }
        })
        .await
    }

    /// Spawn `cmd`, forward [`FORWARDED_SIGNALS`] through `forward` until it exits.
    async fn wait_forwarding<F, Fut>(&self, mut cmd: Command, forward: F) -> Result<i32, Error>
    where
        F: Fn(Runtime, Signal, Option<u32>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut listeners = Vec::new();
        for &sig in FORWARDED_SIGNALS {
            let mut stream = signal(SignalKind::from_raw(sig as i32))
                .map_err(|e| Error::io("installing a signal handler", Path::new("-"), e))?;
            let tx = tx.clone();
            listeners.push(tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if tx.send(sig).is_err() {
                        break;
                    }
                }
            }));
        }
        let spawned = cmd.spawn().map_err(|e| self.spawn_error(e));
        let result = match spawned {
            Ok(mut child) => loop {
                tokio::select! {
                    status = child.wait() => {
                        break status.map(exit_code).map_err(|e| self.spawn_error(e));
                    }
                    Some(sig) = rx.recv() => {
                        tracing::debug!(signal = %sig, "forwarding signal to the container");
                        forward(self.clone(), sig, child.id()).await;
                    }
                }
            },
            Err(e) => Err(e),
        };
        for l in listeners {
            l.abort();
        }
        result
    }

    /// Start the container in the background (see the module docs) and wait until it runs
    /// or has already exited, at most `timeout`.
    pub async fn run_detached(
        &self,
        id: &str,
        bundle: &Path,
        files: &DetachedFiles,
        timeout: Duration,
    ) -> Result<DetachedStart, Error> {
        for p in [&files.pid, &files.exit] {
            match std::fs::remove_file(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io("removing stale file", p, e))
                }
                _ => {}
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&files.log)
            .map_err(|e| Error::io("opening the container log", &files.log, e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io("opening the container log", &files.log, e))?;
        const SHIM: &str = "\"$@\"; rc=$?; printf '%s\\n' \"$rc\" > \"$STRATA_EXIT_FILE.tmp\" \
                            && mv -f \"$STRATA_EXIT_FILE.tmp\" \"$STRATA_EXIT_FILE\"";
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(SHIM)
            .arg("strata-shim")
            .arg(&self.binary)
            .args(self.base_args())
            .arg("run")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(&files.pid)
            .arg(id)
            .env("STRATA_EXIT_FILE", &files.exit)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent; it makes
        // the shim a session leader so a closing terminal or Ctrl-C does not reach it.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()
                    .map(drop)
                    .map_err(std::io::Error::from)
            });
        }
        // The shim outlives this call; tokio reaps it when it exits while strata still runs.
        let _shim = cmd.spawn().map_err(|e| self.spawn_error(e))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = read_number(&files.exit)? {
                return Ok(DetachedStart::Exited { code });
            }
            if let Some(pid) = read_number(&files.pid)? {
                return Ok(DetachedStart::Running { pid });
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("container {id} to start"),
                    secs: timeout.as_secs(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `runc exec`: run another process in a running container; its exit code (0 when
    /// detached). Signals go to the runc exec process, which relays them.
    pub async fn exec(&self, id: &str, opts: &ExecOptions, io: ProcessIo) -> Result<i32, Error> {
        if opts.args.is_empty() {
            return Err(Error::NoCommand);
        }
        if opts.tty && opts.detach {
            return Err(Error::Unsupported(
                "exec -d -t",
                "no console socket holder yet".into(),
            ));
        }
        if opts.tty && !io.stdin.is_stdin_tty() {
            return Err(Error::Unsupported(
                "-t",
                "the input device is not a TTY".into(),
            ));
        }
        let mut cmd = self.command();
        cmd.arg("exec");
        if opts.tty {
            cmd.arg("--tty");
        }
        if opts.detach {
            cmd.arg("--detach");
        }
        if let Some(w) = &opts.workdir {
            cmd.arg("--cwd").arg(w);
        }
        for e in &opts.env {
            cmd.arg("--env").arg(e);
        }
        if let Some(u) = &opts.user {
            cmd.arg("--user").arg(format!("{}:{}", u.uid, u.gid));
            for g in &u.additional_gids {
                cmd.arg("--additional-gids").arg(g.to_string());
            }
        }
        cmd.arg(id).args(&opts.args);
        io.apply(&mut cmd);
        self.wait_forwarding(cmd, |_, sig, runc_pid| async move {
            signal_pid(runc_pid, sig);
        })
        .await
    }

    /// `runc kill [--all] ID SIG`.
    pub async fn kill(&self, id: &str, sig: Signal, all: bool) -> Result<(), Error> {
        let mut args = vec!["kill".to_string()];
        if all {
            args.push("--all".into());
        }
        args.push(id.into());
        args.push((sig as i32).to_string());
        self.call("kill", id, &args).await.map(drop)
    }

    /// `runc pause ID` (cgroup freezer) or `runc resume ID`.
    pub async fn pause(&self, id: &str, pause: bool) -> Result<(), Error> {
        let op = if pause { "pause" } else { "resume" };
        self.call(op, id, &[op.into(), id.into()]).await.map(drop)
    }

    /// `runc state ID`; `None` when the runtime does not know the container.
    pub async fn state(&self, id: &str) -> Result<Option<RuntimeState>, Error> {
        match self.call("state", id, &["state".into(), id.into()]).await {
            Ok(out) => serde_json::from_slice(&out)
                .map(Some)
                .map_err(|source| Error::Json {
                    path: PathBuf::from(format!("{} state {id}", self.binary.display())),
                    source,
                }),
            Err(Error::RuntimeFailed { stderr, .. }) if stderr.contains("does not exist") => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn is_running(&self, id: &str) -> Result<bool, Error> {
        Ok(self.state(id).await?.is_some_and(|s| s.is_running()))
    }

    /// Poll until the container no longer runs; false when `timeout` passed first.
    pub async fn wait_stopped(&self, id: &str, timeout: Duration) -> Result<bool, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running(id).await? {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// docker stop: `sig` (the image's StopSignal or SIGTERM), then SIGKILL to every process
    /// after `timeout`. Returns whether SIGKILL was needed; Ok(false) if it was not running.
    pub async fn stop(&self, id: &str, sig: Signal, timeout: Duration) -> Result<bool, Error> {
        if !self.is_running(id).await? {
            return Ok(false);
        }
        if let Err(e) = self.kill(id, sig, false).await {
            // It may have exited between the two calls.
            if self.is_running(id).await? {
                return Err(e);
            }
            return Ok(false);
        }
        if self.wait_stopped(id, timeout).await? {
            return Ok(false);
        }
        tracing::info!(container = id, "did not stop in time, sending SIGKILL");
        if let Err(e) = self.kill(id, Signal::SIGKILL, true).await {
            if self.is_running(id).await? {
                return Err(e);
            }
        }
        if !self.wait_stopped(id, Duration::from_secs(10)).await? {
            return Err(Error::Timeout {
                what: format!("container {id} to die after SIGKILL"),
                secs: 10,
            });
        }
        Ok(true)
    }

    /// `runc delete [--force] ID`; a container the runtime does not know is not an error.
    pub async fn delete(&self, id: &str, force: bool) -> Result<(), Error> {
        let mut args = vec!["delete".to_string()];
        if force {
            args.push("--force".into());
        }
        args.push(id.into());
        match self.call("delete", id, &args).await {
            Ok(_) => Ok(()),
            Err(Error::RuntimeFailed { stderr, .. }) if stderr.contains("does not exist") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime::new(super::options::DEFAULT_RUNTIME)
    }
}

fn signal_pid(pid: Option<u32>, sig: Signal) {
    if let Some(p) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
    }
}

/// A process's exit code as a shell reports it: the code, or 128+N for signal N.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

/// A number in a small file written by runc or the shim; `None` while absent or incomplete.
fn read_number(path: &Path) -> Result<Option<i32>, Error> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s.trim().parse().ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("reading", path, e)),
    }
}

/// The exit code a detached container left in its exit file, if it has exited.
pub fn read_exit_file(path: &Path) -> Result<Option<i32>, Error> {
    read_number(path)
}
