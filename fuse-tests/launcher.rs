//! Launcher integration tests: real runc (we are root) on a plain busybox-static rootfs dir.
//!
//! Each test builds its own rootfs and strata root in a tempdir, uses a private runc state
//! root (`runc --root`) and random container ids; a guard force-deletes every container the
//! test created when it ends, also on panic. Output is captured through pipes.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strata::launcher::{
    Containers, Error, ExecOptions, Launcher, NewContainer, ProcessIo, RunOptions, RunOutcome,
    Status, StdStream, Volume,
};
use strata::oci::{ContainerConfig, ImageConfig};

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "id", "env", "pwd", "hostname", "ls", "sleep", "touch", "true",
];

struct Fixture {
    tmp: tempfile::TempDir,
    rootfs: PathBuf,
    runc_root: PathBuf,
    launcher: Launcher,
    ids: std::sync::Mutex<Vec<String>>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let ids = self.ids.lock().map(|v| v.clone()).unwrap_or_default();
        for id in ids {
            let _ = std::process::Command::new("runc")
                .arg("--root")
                .arg(&self.runc_root)
                .args(["delete", "--force", &id])
                .stderr(std::process::Stdio::null())
                .status();
            // A detached container that exited by itself keeps its slirp4netns and pinned
            // network namespace until someone tears them down (`strata rm`, the daemon).
            let _ = self.launcher.network_teardown(&id);
        }
    }
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    for d in ["bin", "etc", "proc", "sys", "dev", "home/app", "data"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::create_dir_all(rootfs.join("tmp")).unwrap();
    std::fs::set_permissions(
        rootfs.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static");
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).unwrap();
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        rootfs.join("etc/group"),
        "root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
    )
    .unwrap();
    let runc_root = tmp.path().join("runc");
    let launcher = Launcher::with_containers(Containers::at(tmp.path().join("containers")))
        .with_runtime_state_root(&runc_root);
    Fixture {
        tmp,
        rootfs,
        runc_root,
        launcher,
        ids: Default::default(),
    }
}

fn image(entry: Option<&[&str]>, cmd: &[&str], env: &[&str], workdir: Option<&str>) -> ImageConfig {
    let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    ImageConfig {
        config: Some(ContainerConfig {
            entrypoint: entry.map(v),
            cmd: Some(v(cmd)),
            env: Some(v(env)),
            working_dir: workdir.map(str::to_string),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn sh_image() -> ImageConfig {
    image(None, &["sh"], &[], None)
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// A pipe whose read end is drained by a thread. Close-on-exec, so runtimes spawned by
/// concurrent tests do not inherit (and hold open) its write end.
fn capture() -> (OwnedFd, std::thread::JoinHandle<String>) {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::fs::File::from(r).read_to_string(&mut s).unwrap();
        s
    });
    (w, reader)
}

struct Ran {
    code: i32,
    out: String,
    err: String,
    id: String,
}

impl Fixture {
    fn create(&self, opts: RunOptions) -> String {
        let rec = self
            .launcher
            .create(NewContainer {
                image: "test/busybox:latest".into(),
                image_digest: None,
                options: opts,
            })
            .unwrap();
        self.ids.lock().unwrap().push(rec.id.clone());
        rec.id
    }

    /// Run in the foreground with stdout/stderr captured.
    async fn run(&self, img: &ImageConfig, opts: RunOptions) -> Result<Ran, Error> {
        let id = self.create(opts);
        let (out_w, out_r) = capture();
        let (err_w, err_r) = capture();
        let io = ProcessIo {
            stdin: StdStream::Null,
            stdout: StdStream::Fd(out_w),
            stderr: StdStream::Fd(err_w),
        };
        let outcome = self.launcher.run(&id, img, &self.rootfs, io).await;
        let out = out_r.join().unwrap();
        let err = err_r.join().unwrap();
        match outcome? {
            RunOutcome::Exited(code) => Ok(Ran { code, out, err, id }),
            other => panic!("unexpected {other:?}"),
        }
    }

    async fn sh(&self, script: &str, opts: RunOptions) -> Ran {
        let opts = RunOptions {
            args: args(&["sh", "-c", script]),
            ..opts
        };
        self.run(&sh_image(), opts).await.unwrap()
    }
}

fn wait_for(what: &str, timeout: Duration, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !probe() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn exit_code_propagates() {
    let fx = fixture();
    let r = fx
        .sh("echo out; echo err >&2; exit 7", RunOptions::default())
        .await;
    assert_eq!(r.code, 7, "stderr: {}", r.err);
    assert_eq!(r.out, "out\n");
    assert_eq!(r.err, "err\n");
    let rec = fx.launcher.containers().get(&r.id).unwrap().unwrap();
    assert_eq!(rec.status, Status::Exited);
    assert_eq!(rec.exit_code, Some(7));
    assert_eq!(
        rec.command,
        args(&["sh", "-c", "echo out; echo err >&2; exit 7"])
    );
    assert!(fx
        .launcher
        .containers()
        .bundle_dir(&r.id)
        .join("config.json")
        .is_file());
    // (A signal death, 128+N, is checked in the stop escalation test: init cannot be
    // SIGKILLed from inside its own pid namespace.)
}

#[tokio::test]
async fn entrypoint_and_cmd_rules() {
    let fx = fixture();
    let img = image(Some(&["echo", "from-entry"]), &["default"], &[], None);
    let run = |a: &[&str], entry: Option<&[&str]>| RunOptions {
        args: args(a),
        entrypoint: entry.map(args),
        ..Default::default()
    };
    let r = fx.run(&img, run(&[], None)).await.unwrap();
    assert_eq!(r.out, "from-entry default\n");
    let r = fx.run(&img, run(&["a", "b"], None)).await.unwrap();
    assert_eq!(r.out, "from-entry a b\n");
    // --entrypoint drops the image Cmd.
    let r = fx.run(&img, run(&[], Some(&["echo"]))).await.unwrap();
    assert_eq!(r.out, "\n");
    let r = fx
        .run(&img, run(&["x"], Some(&["echo", "e"])))
        .await
        .unwrap();
    assert_eq!(r.out, "e x\n");
    // An empty --entrypoint resets it.
    let r = fx
        .run(&img, run(&["echo", "reset"], Some(&[""])))
        .await
        .unwrap();
    assert_eq!(r.out, "reset\n");
}

#[tokio::test]
async fn env_merge_and_default_path() {
    let fx = fixture();
    let img = image(None, &["env"], &["A=img", "B=img"], None);
    let opts = RunOptions {
        env: args(&["B=user", "C=c"]),
        hostname: Some("envbox".into()),
        ..Default::default()
    };
    let r = fx.run(&img, opts).await.unwrap();
    let lines: Vec<&str> = r.out.lines().collect();
    for want in [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "A=img",
        "B=user",
        "C=c",
        "HOSTNAME=envbox",
        "HOME=/root",
    ] {
        assert!(lines.contains(&want), "{want} missing in {lines:?}");
    }
    assert!(!lines.contains(&"B=img"));
    // The image's PATH wins over the default.
    let img = image(None, &["/bin/env"], &["PATH=/bin"], None);
    let r = fx.run(&img, RunOptions::default()).await.unwrap();
    assert!(r.out.lines().any(|l| l == "PATH=/bin"), "{}", r.out);
}

#[tokio::test]
async fn workdir() {
    let fx = fixture();
    let img = image(None, &["pwd"], &[], Some("/etc"));
    let r = fx.run(&img, RunOptions::default()).await.unwrap();
    assert_eq!(r.out, "/etc\n");
    let opts = RunOptions {
        workdir: Some("/tmp".into()),
        ..Default::default()
    };
    let r = fx.run(&img, opts).await.unwrap();
    assert_eq!(r.out, "/tmp\n");
    let opts = RunOptions {
        workdir: Some("/not/there/yet".into()),
        ..Default::default()
    };
    let r = fx.run(&img, opts).await.unwrap();
    assert_eq!(r.out, "/not/there/yet\n", "runc creates a missing cwd");
}

#[tokio::test]
async fn user_switching() {
    let fx = fixture();
    let r = fx
        .sh(
            "id; echo $HOME",
            RunOptions {
                user: Some("app".into()),
                ..Default::default()
            },
        )
        .await;
    let id_line = r.out.lines().next().unwrap_or_default();
    assert!(
        id_line.starts_with("uid=1000(app) gid=1000(app)"),
        "{}",
        r.out
    );
    assert!(id_line.contains("2000(extra)"), "{}", r.out);
    assert_eq!(r.out.lines().nth(1), Some("/home/app"));
    let r = fx
        .sh(
            "id -u; id -g",
            RunOptions {
                user: Some("1234:5678".into()),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(r.out, "1234\n5678\n", "stderr: {}", r.err);
    let bad = fx
        .run(
            &sh_image(),
            RunOptions {
                user: Some("ghost".into()),
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(bad, Err(Error::UnknownUser(u)) if u == "ghost"));
}

#[tokio::test]
async fn hostname_and_etc_files() {
    let fx = fixture();
    let r = fx
        .sh(
            "hostname; cat /etc/hostname; cat /etc/hosts; echo x >> /etc/hosts || echo ro",
            RunOptions {
                hostname: Some("box1".into()),
                network: strata::launcher::Network::None,
                ..Default::default()
            },
        )
        .await;
    let lines: Vec<&str> = r.out.lines().collect();
    assert_eq!(&lines[..2], ["box1", "box1"], "{}", r.out);
    assert!(lines.contains(&"127.0.0.1\tbox1"), "{}", r.out);
    assert_eq!(lines.last(), Some(&"ro"), "/etc/hosts is read-only");
}

#[tokio::test]
async fn volumes_read_only_and_read_write() {
    let fx = fixture();
    let host_ro = fx.tmp.path().join("vol-ro");
    let host_rw = fx.tmp.path().join("vol-rw");
    std::fs::create_dir_all(&host_ro).unwrap();
    std::fs::write(host_ro.join("f"), "hello\n").unwrap();
    let vol = |h: &Path, c: &str, ro: bool| Volume {
        host: h.to_path_buf(),
        container: c.into(),
        read_only: ro,
    };
    let opts = RunOptions {
        volumes: vec![vol(&host_ro, "/data", true), vol(&host_rw, "/out", false)],
        ..Default::default()
    };
    let r = fx
        .sh(
            "cat /data/f; touch /data/new && echo wrote-ro; touch /out/new && echo wrote-rw",
            opts,
        )
        .await;
    assert_eq!(r.out, "hello\nwrote-rw\n", "stderr: {}", r.err);
    assert!(r.err.contains("Read-only file system"), "{}", r.err);
    assert!(!host_ro.join("new").exists());
    assert!(
        host_rw.join("new").exists(),
        "missing rw source was created"
    );
    assert!("/h:../etc".parse::<Volume>().is_err());
    assert!("/h:/a/../etc".parse::<Volume>().is_err());
}

#[tokio::test]
async fn read_only_rootfs() {
    let fx = fixture();
    let script = "touch /newfile && echo wrote; touch /tmp/x && echo tmp";
    let r = fx
        .sh(
            script,
            RunOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .await;
    assert_eq!(r.out, "", "stderr: {}", r.err);
    assert!(r.err.contains("Read-only file system"), "{}", r.err);
    assert!(!fx.rootfs.join("newfile").exists());
    // A tmpfs stays writable on a read-only root.
    let r = fx
        .sh(
            script,
            RunOptions {
                read_only: true,
                tmpfs: vec!["/tmp".parse().unwrap()],
                ..Default::default()
            },
        )
        .await;
    assert_eq!(r.out, "tmp\n", "stderr: {}", r.err);
    let r = fx.sh(script, RunOptions::default()).await;
    assert_eq!(r.out, "wrote\ntmp\n");
    assert!(fx.rootfs.join("newfile").exists());
}

#[tokio::test]
async fn network_none_has_only_lo() {
    let fx = fixture();
    let r = fx
        .sh(
            "cat /proc/net/dev",
            RunOptions {
                network: strata::launcher::Network::None,
                ..Default::default()
            },
        )
        .await;
    let ifaces: Vec<&str> = r
        .out
        .lines()
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim()))
        .collect();
    assert_eq!(ifaces, ["lo"], "{}", r.out);
    // Host networking sees the host's interfaces.
    let r = fx
        .sh(
            "cat /proc/net/dev",
            RunOptions {
                network: strata::launcher::Network::Host,
                ..Default::default()
            },
        )
        .await;
    let host = std::fs::read_to_string("/proc/net/dev").unwrap();
    assert_eq!(r.out.lines().count(), host.lines().count());
}

#[tokio::test]
async fn command_not_found() {
    let fx = fixture();
    let r = fx
        .run(
            &sh_image(),
            RunOptions {
                args: args(&["nope-not-here"]),
                ..Default::default()
            },
        )
        .await;
    match r {
        Err(e @ Error::CommandNotFound(_)) => {
            assert_eq!(e.exit_code(), 127);
            assert!(e.to_string().contains("executable file not found in $PATH"));
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(r) => panic!("ran with code {}", r.code),
    }
}

#[tokio::test]
async fn detached_logs_exec_stop() {
    let fx = fixture();
    let id = fx.create(RunOptions {
        detach: true,
        args: args(&[
            "sh",
            "-c",
            "echo started; trap 'echo bye; exit 3' TERM; while true; do sleep 0.1; done",
        ]),
        network: strata::launcher::Network::Host,
        ..Default::default()
    });
    let t0 = Instant::now();
    let outcome = fx
        .launcher
        .run(&id, &sh_image(), &fx.rootfs, ProcessIo::inherit(false))
        .await
        .unwrap();
    let RunOutcome::Detached { pid: Some(pid), .. } = outcome else {
        panic!("{outcome:?}");
    };
    assert!(pid > 1);
    let c = fx.launcher.containers();
    let rec = c.get(&id).unwrap().unwrap();
    assert_eq!((rec.status, rec.pid), (Status::Running, Some(pid)));
    assert_eq!(c.list(false).unwrap().len(), 1);
    let log = c.log_path(&id);
    wait_for("log line", Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("started")
    });

    // exec in the running container.
    let (w, r) = capture();
    let io = ProcessIo {
        stdin: StdStream::Null,
        stdout: StdStream::Fd(w),
        stderr: StdStream::Null,
    };
    let exec = ExecOptions {
        args: args(&["sh", "-c", "echo in-$HOSTNAME; exit 4"]),
        ..Default::default()
    };
    let code = fx.launcher.exec(&id, &exec, io).await.unwrap();
    assert_eq!(code, 4);
    // Host networking: docker's default hostname is the host's.
    let host = nix::unistd::gethostname().unwrap();
    assert_eq!(
        r.join().unwrap(),
        format!("in-{}\n", host.to_string_lossy())
    );

    let rec = fx
        .launcher
        .stop(&id[..10], Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!((rec.status, rec.exit_code), (Status::Exited, Some(3)));
    assert!(std::fs::read_to_string(&log).unwrap().contains("bye"));
    assert!(c.list(false).unwrap().is_empty());
    // Exit code 3 (not 137) already shows that SIGTERM, not the SIGKILL after the 5 s
    // grace, ended it; the wall-clock time is only reported.
    eprintln!("detached run to stop: {:?}", t0.elapsed());

    // rm: nothing mounted under the container dir here, so it goes.
    let rec = fx.launcher.prepare_remove(&rec.name, false).await.unwrap();
    fx.launcher.remove(&rec.id).unwrap();
    assert!(c.get(&id).unwrap().is_none());
}

#[tokio::test]
async fn stop_escalates_to_sigkill_and_rm_refuses_running() {
    let fx = fixture();
    let id = fx.create(RunOptions {
        detach: true,
        name: Some("sleeper".into()),
        args: args(&["sleep", "30"]),
        ..Default::default()
    });
    fx.launcher
        .run(&id, &sh_image(), &fx.rootfs, ProcessIo::inherit(false))
        .await
        .unwrap();
    assert!(matches!(
        fx.launcher.prepare_remove("sleeper", false).await,
        Err(Error::Running(_))
    ));
    // sleep as pid 1 ignores SIGTERM: stop must escalate.
    let t0 = Instant::now();
    let rec = fx
        .launcher
        .stop("sleeper", Some(Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(t0.elapsed() >= Duration::from_secs(1));
    assert_eq!((rec.status, rec.exit_code), (Status::Exited, Some(137)));
}

#[tokio::test]
async fn kill_and_wait() {
    let fx = fixture();
    let id = fx.create(RunOptions {
        detach: true,
        args: args(&[
            "sh",
            "-c",
            "trap 'exit 5' USR1; while true; do sleep 0.1; done",
        ]),
        ..Default::default()
    });
    fx.launcher
        .run(&id, &sh_image(), &fx.rootfs, ProcessIo::inherit(false))
        .await
        .unwrap();
    fx.launcher
        .kill(&id, nix::sys::signal::Signal::SIGUSR1)
        .await
        .unwrap();
    let code = tokio::time::timeout(Duration::from_secs(5), fx.launcher.wait(&id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, Some(5));
}

#[tokio::test]
async fn tty_gets_a_terminal() {
    let fx = fixture();
    let pty = nix::pty::openpty(None, None).unwrap();
    for fd in [&pty.master, &pty.slave] {
        use std::os::fd::AsRawFd;
        let cloexec = nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC);
        nix::fcntl::fcntl(fd.as_raw_fd(), cloexec).unwrap();
    }
    let id = fx.create(RunOptions {
        tty: true,
        args: args(&[
            "sh",
            "-c",
            "test -t 0 && test -t 1 && echo is-a-tty; echo $TERM",
        ]),
        ..Default::default()
    });
    let io = ProcessIo {
        stdin: StdStream::Fd(pty.slave.try_clone().unwrap()),
        stdout: StdStream::Fd(pty.slave.try_clone().unwrap()),
        stderr: StdStream::Fd(pty.slave),
    };
    let master = pty.master;
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::from(master);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once the last slave fd closes.
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    let outcome = fx
        .launcher
        .run(&id, &sh_image(), &fx.rootfs, io)
        .await
        .unwrap();
    assert_eq!(outcome, RunOutcome::Exited(0));
    let out = reader.join().unwrap();
    assert!(out.contains("is-a-tty"), "{out:?}");
    assert!(out.contains("xterm"), "{out:?}");
}
