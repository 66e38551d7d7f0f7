//! Signal forwarding of a foreground container, in its own test binary: the test signals its
//! own process, which would disturb containers of concurrently running tests elsewhere.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use strata::launcher::{
    Containers, Launcher, NewContainer, ProcessIo, RunOptions, RunOutcome, StdStream,
};
use strata::oci::{ContainerConfig, ImageConfig};

fn rootfs(dir: &std::path::Path) {
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("busybox-static");
    for a in ["sh", "sleep", "echo"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(a)).unwrap();
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
}

/// Deletes the container from runc's state (private root) even if the test panics.
struct Guard(std::path::PathBuf, String);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runc")
            .arg("--root")
            .arg(&self.0)
            .args(["delete", "--force", &self.1])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[tokio::test]
async fn signals_to_strata_reach_the_container() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("rootfs");
    rootfs(&root);
    let runc_root = tmp.path().join("runc");
    let launcher = Launcher::with_containers(Containers::at(tmp.path().join("containers")))
        .with_runtime_state_root(&runc_root);
    let script = "trap 'echo got-term' TERM; trap 'echo got-usr1; exit 42' USR1; \
                  echo ready; while :; do sleep 0.05; done";
    let rec = launcher
        .create(NewContainer {
            image: "test".into(),
            image_digest: None,
            options: RunOptions {
                args: ["sh", "-c", script].map(String::from).to_vec(),
                ..Default::default()
            },
        })
        .unwrap();
    let _guard = Guard(runc_root, rec.id.clone());
    let image = ImageConfig {
        config: Some(ContainerConfig::default()),
        ..Default::default()
    };
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    // Signal ourselves once the container is ready: TERM (trapped, keeps running), then USR1.
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(std::fs::File::from(r)).lines() {
            let line = line.unwrap();
            let me = Pid::this();
            match line.as_str() {
                "ready" => kill(me, Signal::SIGTERM).unwrap(),
                "got-term" => kill(me, Signal::SIGUSR1).unwrap(),
                _ => {}
            }
            lines.push(line);
        }
        lines
    });
    let io = ProcessIo {
        stdin: StdStream::Null,
        stdout: StdStream::Fd(w),
        stderr: StdStream::Inherit,
    };
    let outcome = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        launcher.run(&rec.id, &image, &root, io),
    )
    .await
    .expect("container did not exit: signals not forwarded")
    .unwrap();
    assert_eq!(outcome, RunOutcome::Exited(42));
    assert_eq!(reader.join().unwrap(), ["ready", "got-term", "got-usr1"]);
}
