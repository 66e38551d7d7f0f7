//! Running the `strata` binary under test with all of its state in a tempdir:
//! `STRATA_ROOT`, `DOCKER_CONFIG` and `HOME` never point at the real machine's.
//! Output goes to files (no pipe deadlocks) and every run has a deadline.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Path of the binary cargo built for this test run.
pub const STRATA_BIN: &str = env!("CARGO_BIN_EXE_strata");

/// Default deadline of one CLI run.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// A private strata installation: `<tmp>/root` (STRATA_ROOT), `<tmp>/docker`
/// (DOCKER_CONFIG), `<tmp>/home` (HOME).
pub struct StrataEnv {
    dir: TempDir,
    pub timeout: Duration,
    /// Extra environment of every command (set with [`StrataEnv::set_env`]).
    extra_env: Vec<(String, String)>,
}

/// A daemon this environment started (on demand) is stopped with it.
impl Drop for StrataEnv {
    fn drop(&mut self) {
        self.stop_daemon();
    }
}

impl Default for StrataEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl StrataEnv {
    pub fn new() -> StrataEnv {
        let dir = tempfile::Builder::new()
            .prefix("strata-cli-")
            .tempdir()
            .expect("cli tempdir");
        for d in ["root", "docker", "home", "out"] {
            fs::create_dir_all(dir.path().join(d)).expect("mkdir");
        }
        StrataEnv {
            dir,
            timeout: RUN_TIMEOUT,
            extra_env: Vec::new(),
        }
    }

    /// `$STRATA_ROOT`.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// `$DOCKER_CONFIG` (credentials live in `config.json` here).
    pub fn docker_config(&self) -> PathBuf {
        self.dir.path().join("docker")
    }

    /// What the processes serving this root's mounts logged: the daemon's log
    /// (`daemon.log`) and those of one-mount processes (`mounts/*.log`).
    pub fn daemon_logs(&self) -> String {
        let mut text = fs::read_to_string(self.root().join("daemon.log")).unwrap_or_default();
        if let Ok(rd) = fs::read_dir(self.root().join("mounts")) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    text.push_str(&fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        text
    }

    /// The pid `daemon.pid` names: the process serving this root's mounts, if one started.
    pub fn daemon_pid(&self) -> Option<i32> {
        fs::read_to_string(self.root().join("daemon.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Stop the daemon serving this root, if one runs (SIGTERM: it unmounts what it serves
    /// and flushes its cache), and wait until it has exited. The next command that needs a
    /// mount starts a fresh one (empty memory tier).
    pub fn stop_daemon(&self) {
        let Some(pid) = self.daemon_pid() else {
            return;
        };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let root = self.root();
        if !String::from_utf8_lossy(&cmdline).contains(root.to_string_lossy().as_ref()) {
            return; // gone, or the pid was reused by another process
        }
        // SAFETY: kill(2) with a pid read from our own root's pid file; no memory shared.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let running = || {
            fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit_once(") ")
                    .is_some_and(|(_, r)| !r.starts_with('Z'))
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A scratch directory for the test's own files (save archives, ...).
    pub fn scratch(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// Write `$STRATA_ROOT/config.json`.
    pub fn write_config(&self, config: &serde_json::Value) {
        fs::write(
            self.root().join("config.json"),
            serde_json::to_vec_pretty(config).expect("config json"),
        )
        .expect("write config.json");
    }

    /// Set `key=value` in the environment of every later command (replacing an earlier value).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.extra_env.retain(|(k, _)| k != key);
        self.extra_env.push((key.to_string(), value.to_string()));
    }

    /// The tempdir everything of this environment lives in.
    pub fn base_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `strata <args>` with this environment (not yet run).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(STRATA_BIN);
        cmd.args(args)
            .env("STRATA_ROOT", self.root())
            .env("DOCKER_CONFIG", self.docker_config())
            .env("HOME", self.dir.path().join("home"))
            .env("NO_COLOR", "1")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("CONTAINERS_REGISTRIES_CONF")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy");
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Run `strata <args>` to completion (stdin empty).
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, None)
    }

    /// Run `strata <args>` feeding `stdin`.
    pub fn run_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        self.run_with_stdin(args, Some(stdin))
    }

    fn run_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = self.command(args);
        run_with_deadline(&mut cmd, stdin, self.timeout, self.dir.path(), args)
    }

    /// Hex digests of the files in `$STRATA_ROOT/blobs/sha256/`, sorted.
    pub fn blob_hexes(&self) -> Vec<String> {
        blob_hexes(&self.root())
    }

    /// Path of a blob in the store (may not exist).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.root().join("blobs/sha256").join(hex)
    }
}

/// A strata FUSE mount made by a test; dropping it runs `strata umount -f` and, should that
/// fail, a lazy `umount -l`, so a failing test never leaves a mount behind.
pub struct Mounted<'a> {
    pub env: &'a StrataEnv,
    pub dir: PathBuf,
}

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = self
            .env
            .run(&["umount", "-f", self.dir.to_str().unwrap_or_default()]);
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status();
    }
}

impl StrataEnv {
    /// `<scratch>/mnt`, created.
    pub fn mnt_dir(&self) -> PathBuf {
        let dir = self.scratch().join("mnt");
        fs::create_dir_all(&dir).expect("mkdir mnt");
        dir
    }

    /// `strata mount REF DIR [extra]`; returns the output and, on success, the guard.
    pub fn try_mount_at(
        &self,
        reference: &str,
        dir: &Path,
        extra: &[&str],
    ) -> (Output, Option<Mounted<'_>>) {
        fs::create_dir_all(dir).expect("mkdir mountpoint");
        let dir_s = dir.to_str().expect("utf-8 mountpoint");
        let mut args = vec!["mount", reference, dir_s];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        let m = out.status.success().then(|| Mounted {
            env: self,
            dir: dir.to_path_buf(),
        });
        (out, m)
    }

    /// `strata mount REF DIR [extra]`, which must succeed.
    pub fn mount_at(&self, reference: &str, dir: &Path, extra: &[&str]) -> Mounted<'_> {
        let (out, m) = self.try_mount_at(reference, dir, extra);
        out.assert_success();
        // A mount that `strata mount` reported is usable at once.
        if let Err(e) = fs::metadata(dir) {
            panic!(
                "stat of {} right after `strata mount`: {e}\n{}",
                dir.display(),
                self.daemon_logs()
            );
        }
        m.expect("mount guard after success")
    }

    /// `strata mount REF <scratch>/mnt [extra]`, which must succeed.
    pub fn mount(&self, reference: &str, extra: &[&str]) -> Mounted<'_> {
        self.mount_at(reference, &self.mnt_dir(), extra)
    }
}

/// Every regular file name directly in `<root>/blobs/sha256/`, sorted (empty if absent).
pub fn blob_hexes(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(root.join("blobs/sha256"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Run `strata <args>` with `STRATA_ROOT=root` and `DOCKER_CONFIG=<root>.docker-config`
/// (a sibling directory, created), `HOME` beside them. Deadline [`RUN_TIMEOUT`].
pub fn strata(root: &Path, args: &[&str]) -> Output {
    let parent = root.parent().expect("root has a parent");
    let name = root
        .file_name()
        .expect("root has a name")
        .to_string_lossy()
        .into_owned();
    let docker = parent.join(format!("{name}.docker-config"));
    let home = parent.join(format!("{name}.home"));
    let scratch = parent.join(format!("{name}.run"));
    for d in [root, &docker, &home, &scratch] {
        fs::create_dir_all(d).expect("mkdir");
    }
    let mut cmd = Command::new(STRATA_BIN);
    cmd.args(args)
        .env("STRATA_ROOT", root)
        .env("DOCKER_CONFIG", &docker)
        .env("HOME", &home)
        .env("NO_COLOR", "1")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy");
    run_with_deadline(&mut cmd, None, RUN_TIMEOUT, &scratch, args)
}

fn run_with_deadline(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
    scratch: &Path,
    args: &[&str],
) -> Output {
    let out_path = tempfile::NamedTempFile::new_in(scratch).expect("stdout file");
    let err_path = tempfile::NamedTempFile::new_in(scratch).expect("stderr file");
    cmd.stdout(out_path.reopen().expect("reopen"))
        .stderr(err_path.reopen().expect("reopen"))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {STRATA_BIN}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        // Small inputs only (passwords, JSON): fits the pipe buffer, no writer thread needed.
        let _ = pipe.write_all(input);
    }
    let deadline = Instant::now() + timeout;
    let status: ExitStatus = loop {
        if let Some(st) = child.try_wait().expect("wait strata") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "strata {args:?} still running after {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                fs::read_to_string(out_path.path()).unwrap_or_default(),
                fs::read_to_string(err_path.path()).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: fs::read(out_path.path()).unwrap_or_default(),
        stderr: fs::read(err_path.path()).unwrap_or_default(),
    }
}

/// Readable assertions on a finished command.
pub trait OutputExt {
    fn stdout_str(&self) -> String;
    fn stderr_str(&self) -> String;
    /// Panic with both streams unless the exit status is 0.
    fn assert_success(&self) -> &Self;
    /// Panic unless the exit status is non-zero.
    fn assert_failure(&self) -> &Self;
}

impl OutputExt for Output {
    fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "expected success, got {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout_str(),
            self.stderr_str()
        );
        self
    }

    fn assert_failure(&self) -> &Self {
        assert!(
            !self.status.success(),
            "expected failure, got {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout_str(),
            self.stderr_str()
        );
        self
    }
}
