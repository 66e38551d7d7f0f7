//! A private `containerd` (Debian's 1.6) on a unix socket in a tempdir, driven with
//! `ctr-remote` (Debian's stargz-snapshotter package): the eStargz writer of another project,
//! so that strata's reader is tested on layers strata's own encoder did not write. Nothing is
//! unpacked and no container runs: only the content store, image import, `images convert
//! --estargz` and push. The process is killed on Drop and, through PR_SET_PDEATHSIG, when the
//! thread that started it dies.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

const CONTAINERD_BIN: &str = "/usr/bin/containerd";
const CTR_REMOTE_BIN: &str = "/usr/bin/ctr-remote";
/// containerd namespace the tests use.
const NAMESPACE: &str = "strata-test";

pub struct Containerd {
    child: Child,
    dir: TempDir,
}

impl Containerd {
    /// Start one and wait until it answers `ctr version`.
    pub fn start() -> Containerd {
        for bin in [CONTAINERD_BIN, CTR_REMOTE_BIN] {
            assert!(
                Path::new(bin).exists(),
                "{bin} missing: run scripts/install-deps.sh (containerd, stargz-snapshotter)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("strata-containerd-")
            .tempdir()
            .expect("containerd tempdir");
        let d = dir.path().to_path_buf();
        let d = d.as_path();
        // No CRI, no snapshotters that would probe the host: the content store is all we use.
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.btrfs\", \
             \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\", \
             \"io.containerd.snapshotter.v1.aufs\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{ttrpc}\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("containerd.sock").display(),
            ttrpc = d.join("containerd.ttrpc").display(),
        );
        std::fs::write(d.join("config.toml"), config).expect("write config.toml");
        let log = std::fs::File::create(d.join("containerd.log")).expect("containerd.log");
        let mut cmd = Command::new(CONTAINERD_BIN);
        cmd.arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; no allocation between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn containerd");
        let deadline = Instant::now() + Duration::from_secs(30);
        let probe = |d: &Path| {
            Command::new(CTR_REMOTE_BIN)
                .arg("-a")
                .arg(d.join("containerd.sock"))
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        };
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "containerd exited with {st}:\n{}",
                    std::fs::read_to_string(d.join("containerd.log")).unwrap_or_default()
                );
            }
            if d.join("containerd.sock").exists() && probe(d) {
                return Containerd { child, dir };
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!(
                    "containerd not ready after 30 s:\n{}",
                    std::fs::read_to_string(d.join("containerd.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `ctr-remote -a SOCK -n strata-test ARGS...`, which must succeed; its output.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_tries(args, 1)
    }

    /// As [`Containerd::ctr`], run up to `tries` times while it fails with containerd's
    /// transient "unexpected EOF" (seen once in CI on an `images push` to the test registry,
    /// not reproduced in 3 reruns; a push is idempotent).
    pub fn ctr_tries(&self, args: &[&str], tries: usize) -> Output {
        let run = || {
            Command::new(CTR_REMOTE_BIN)
                .arg("-a")
                .arg(self.dir.path().join("containerd.sock"))
                .args(["-n", NAMESPACE])
                .args(args)
                .stdin(Stdio::null())
                .output()
                .expect("run ctr-remote")
        };
        let mut out = run();
        for _ in 1..tries {
            let eof = String::from_utf8_lossy(&out.stderr).contains("unexpected EOF");
            if out.status.success() || !eof {
                break;
            }
            out = run();
        }
        assert!(
            out.status.success(),
            "ctr-remote {args:?} failed:\nstdout:\n{}\nstderr:\n{}\ncontainerd log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
        );
        out
    }

    /// Import an OCI image layout directory (its images named `base:<ref.name>`), without
    /// unpacking.
    pub fn import_layout(&self, layout: &Path, base: &str) {
        let tar = self.dir.path().join("import.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(layout)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("run tar");
        assert!(st.success(), "tar of {}", layout.display());
        let tar_s = tar.to_str().expect("utf-8 path").to_string();
        self.ctr(&[
            "images",
            "import",
            "--no-unpack",
            "--base-name",
            base,
            &tar_s,
        ]);
    }

    /// The raw bytes of a blob in the content store.
    pub fn content(&self, digest: &str) -> Vec<u8> {
        self.ctr(&["content", "get", digest]).stdout
    }

    /// Scratch space next to the daemon's state.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
