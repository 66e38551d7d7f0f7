//! strata as containerd's remote snapshotter, driven the way a kubelet drives a node: Debian's
//! containerd 1.6 (its CRI plugin, `snapshotter = "strata"`, `disable_snapshot_annotations =
//! false`, a `proxy_plugins` entry on the strata daemon's socket) started by the test in a
//! tempdir, and a CRI client (the `k8s-cri` protos over tonic) on its socket: pull, a pod
//! sandbox with host network, a container that prints one file of a ~200 MB image.
//!
//! - The registry sends less than 10% of the image's bytes (its access log, from the pull
//!   on): every layer of the indexed image is a remote snapshot, read lazily.
//! - Both ways of serving a container's rootfs (`snapshotter-rootfs`): `union` (one strata
//!   union mount of the whole image, upper in the snapshot directory, a bind mount for
//!   containerd) and `overlay` (kernel overlayfs over the layer views). Either way the
//!   container sees the image as it is: whiteouts hide, opaque directories hide what is below.
//! - The sandbox image has no lazy index: its layer is extracted (the plain overlay path).
//! - `strata daemon restart` and a kill -9 of the server keep a running container's rootfs
//!   readable (ExecSync reads a file nobody read before, through the new server).
//! - RemoveImage removes the remote snapshots and unmounts their layer views.
//! - After the whole daemon was stopped and started, the snapshots are known (a pull finds
//!   them) and the layer views (and a created container's union mount) are mounted again
//!   from the stored metadata.

mod common;

use common::testdata::pseudo;
use common::{busybox_image, poll_until, Layer, OutputExt, Registry, StrataEnv};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint, Uri};

/// A private containerd with the CRI plugin, its snapshotter the strata daemon of `root`.
struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Containerd {
    fn start(strata_root: &Path, registry_host: &str, sandbox_image: &str) -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("strata-cri-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{ttrpc}"
[proxy_plugins.strata]
  type = "snapshot"
  address = "{snap}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "strata"
    disable_snapshot_annotations = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni-bin"
    conf_dir = "{d}/cni-conf"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{registry_host}"]
    endpoint = ["http://{registry_host}"]
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("containerd.sock").display(),
            ttrpc = d.join("containerd.ttrpc").display(),
            snap = strata_root.join("containerd-snapshotter.sock").display(),
            d = d.display(),
        );
        std::fs::write(d.join("config.toml"), config).expect("config.toml");
        let log = std::fs::File::create(d.join("containerd.log")).expect("log");
        let mut cmd = Command::new("/usr/bin/containerd");
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
        let child = cmd
            .spawn()
            .expect("spawn containerd (scripts/install-deps.sh)");
        let c = Containerd { child, dir };
        poll_until(
            "containerd's socket",
            Duration::from_secs(30),
            Duration::from_millis(20),
            || c.sock().exists().then_some(()),
        );
        c
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

/// Containers, shims and mounts of this containerd go with it, also when the test failed
/// half-way (its pod would outlive containerd otherwise).
impl Drop for Containerd {
    fn drop(&mut self) {
        let d = self.dir.path().to_path_buf();
        let runc_root = d.join("runc/k8s.io");
        if let Ok(rd) = std::fs::read_dir(&runc_root) {
            for e in rd.flatten() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&runc_root)
                    .args(["delete", "-f"])
                    .arg(e.file_name())
                    .output();
            }
        }
        let ours = d.to_string_lossy().to_string();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            if cmd.contains("containerd-shim") && cmd.contains(&ours) {
                // SAFETY: kill(2) of a shim started for this test's containerd.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&ours))
            .collect();
        for m in mounts.iter().rev() {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

async fn channel(sock: PathBuf) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = sock.clone();
        let r = Endpoint::try_from("http://[::]:50051")
            .expect("endpoint")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let s = s.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(s).await?))
                }
            }))
            .await;
        match r {
            Ok(c) => {
                // The CRI service answers once its plugin is up.
                let mut rt = RuntimeServiceClient::new(c.clone());
                if rt.version(cri::VersionRequest::default()).await.is_ok() {
                    return c;
                }
            }
            Err(e) if Instant::now() > deadline => panic!("CRI socket: {e}"),
            Err(_) => {}
        }
        assert!(Instant::now() < deadline, "CRI not ready after 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pod_config(logs: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "lazy".into(),
            uid: "uid-lazy-1".into(),
            namespace: "strata-test".into(),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_config(name: &str, image: &str, cmd: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

/// The container's output from its CRI log file (`TIME STREAM TAG LINE` per line).
fn cri_log(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn remote_snapshots(root: &Path) -> usize {
    let meta: serde_json::Value = std::fs::read(root.join("snapshots/meta.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    meta["snapshots"]
        .as_object()
        .map_or(0, |m| m.values().filter(|r| !r["remote"].is_null()).count())
}

/// Layer views of this root's snapshots (other tests' roots may have theirs meanwhile).
fn layer_views(root: &Path) -> Vec<PathBuf> {
    let snaps = root.join("snapshots");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("strata-layer:"))
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|mp| mp.starts_with(&snaps))
        .collect()
}

fn layer_view_mounts(root: &Path) -> usize {
    layer_views(root).len()
}

/// Union mounts of active snapshots (`<root>/snapshots/<id>/rootfs`).
fn union_mounts(root: &Path) -> Vec<PathBuf> {
    let snaps = root.join("snapshots");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|mp| mp.starts_with(&snaps) && mp.ends_with("rootfs"))
        .collect()
}

#[test]
fn cri_pull_and_run_reads_the_image_lazily_through_a_union_mount() {
    cri_pull_and_run("union");
}

#[test]
fn cri_pull_and_run_reads_the_image_lazily_through_overlayfs_over_layer_views() {
    cri_pull_and_run("overlay");
}

fn cri_pull_and_run(rootfs: &str) {
    let union = rootfs == "union";
    let reg = Registry::start();
    let host = reg.host();
    // The sandbox ("pause") image: tiny, no lazy index: extracted by containerd.
    busybox_image()
        .cmd(&["sleep", "1000000"])
        .build("v1")
        .push(&reg, "pause:v1");
    // ~200 MB of incompressible data in one layer, then a layer with a whiteout and an
    // opaque directory over it.
    let (total, layer_digests) = {
        let mut data = Layer::new()
            .dir("data")
            .dir("data/old")
            .file("data/old/a", "a");
        for i in 0..8 {
            data = data.file(&format!("data/f{i}"), pseudo(25 << 20, 100 + i));
        }
        data = data.file("data/hello.txt", "hello from a lazy layer\n");
        let top = Layer::new()
            .dir("data")
            .whiteout("data/f7")
            .opaque("data/old")
            .file("data/old/b", "b");
        let img = busybox_image().layer(data).layer(top).build("v1");
        img.push(&reg, "big:v1");
        let total: u64 = img.layers.iter().map(|l| l.size).sum();
        (total, img.layer_digests())
    };
    assert!(total > 200_000_000, "image of {total} bytes");
    let reference = format!("{host}/big:v1");
    StrataEnv::new()
        .run(&["index", &reference, "--push"])
        .assert_success();

    // A fresh root: the sidecar index comes from the registry.
    let env = StrataEnv::new();
    env.write_config(&serde_json::json!({"prefetch": false, "snapshotter-rootfs": rootfs}));
    env.run(&["daemon"]).assert_success();
    let root = env.root();
    poll_until(
        "the snapshotter socket",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || {
            root.join("containerd-snapshotter.sock")
                .exists()
                .then_some(())
        },
    );
    let ctd = Containerd::start(&root, &host, &format!("{host}/pause:v1"));
    let logs = ctd.dir.path().join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let ch = rt.block_on(channel(ctd.sock()));
    let mut runtime = RuntimeServiceClient::new(ch.clone());
    let mut images = ImageServiceClient::new(ch);
    let fail = |what: &str, e: tonic::Status| -> ! {
        panic!(
            "{what}: {e}\ncontainerd log:\n{}\nstrata log:\n{}",
            ctd.log(),
            env.daemon_logs()
        )
    };

    let pod_cfg = pod_config(&logs);
    let pod = rt
        .block_on(runtime.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_cfg.clone()),
            runtime_handler: String::new(),
        }))
        .unwrap_or_else(|e| fail("RunPodSandbox", e))
        .into_inner()
        .pod_sandbox_id;
    assert_eq!(
        remote_snapshots(&root),
        0,
        "the sandbox image has no lazy index: extracted, not remote"
    );

    let mark = reg.served().len();
    let t0 = Instant::now();
    let image_ref = rt
        .block_on(images.pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: reference.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .unwrap_or_else(|e| fail("PullImage", e))
        .into_inner()
        .image_ref;
    let pulled_ms = t0.elapsed().as_millis();
    // Its bottom layer is the sandbox image's (same chain): that snapshot, extracted, is
    // shared; the two layers above it are remote, over an extracted lower.
    assert_eq!(
        remote_snapshots(&root),
        2,
        "every layer of the indexed image above the shared one is a remote snapshot"
    );
    assert_eq!(layer_view_mounts(&root), 2);

    let run = |rt: &tokio::runtime::Runtime,
               runtime: &mut RuntimeServiceClient<Channel>,
               name: &str,
               cmd: &[&str]| {
        let id = rt
            .block_on(runtime.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container_config(name, &image_ref, cmd)),
                sandbox_config: Some(pod_cfg.clone()),
            }))
            .unwrap_or_else(|e| fail("CreateContainer", e))
            .into_inner()
            .container_id;
        rt.block_on(runtime.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        }))
        .unwrap_or_else(|e| fail("StartContainer", e));
        id
    };
    let printer = run(
        &rt,
        &mut runtime,
        "printer",
        &[
            "sh",
            "-c",
            "cat /data/hello.txt; ls /data/old; test -e /data/f7 || echo f7-gone",
        ],
    );
    let state =
        |rt: &tokio::runtime::Runtime, runtime: &mut RuntimeServiceClient<Channel>, id: &str| {
            rt.block_on(runtime.container_status(cri::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            }))
            .ok()
            .and_then(|r| r.into_inner().status)
        };
    let st = poll_until(
        "the printer container to exit",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            state(&rt, &mut runtime, &printer)
                .filter(|s| s.state == cri::ContainerState::ContainerExited as i32)
        },
    );
    let ran_ms = t0.elapsed().as_millis();
    let out = cri_log(&logs.join("printer.log"));
    assert_eq!(st.exit_code, 0, "{out}");
    assert_eq!(out, "hello from a lazy layer\nb\nf7-gone\n");
    // The printer's rootfs (its snapshot stays until the container is removed).
    let unions = union_mounts(&root);
    assert_eq!(
        unions.len(),
        usize::from(union),
        "{rootfs}: union mounts {unions:?}"
    );

    let sent: u64 = reg.served().iter().skip(mark).map(|s| s.bytes).sum();
    eprintln!(
        "CRI pull {pulled_ms} ms, container done {ran_ms} ms; registry sent {sent} of {total} bytes ({:.2}%)",
        sent as f64 * 100.0 / total as f64
    );
    assert!(
        sent * 10 < total,
        "registry sent {sent} bytes of a {total}-byte image"
    );
    // Nothing downloaded a layer whole.
    for s in reg.served().iter().skip(mark) {
        if layer_digests.iter().any(|d| s.uri.ends_with(d.as_str())) {
            assert_eq!(s.status, 206, "whole-blob GET of a remote layer: {s:?}");
        }
    }

    // A long-running container keeps its rootfs through a restart of the strata daemon.
    let sleeper = run(&rt, &mut runtime, "sleeper", &["sleep", "100000"]);
    poll_until(
        "the sleeper to run",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            state(&rt, &mut runtime, &sleeper)
                .filter(|s| s.state == cri::ContainerState::ContainerRunning as i32)
        },
    );
    let pid_before = std::fs::read_to_string(root.join("daemon.pid")).unwrap();
    env.run(&["daemon", "restart"]).assert_success();
    poll_until(
        "a new strata server",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            std::fs::read_to_string(root.join("daemon.pid"))
                .ok()
                .filter(|p| *p != pid_before)
        },
    );
    let want = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(pseudo(25 << 20, 103)))
    };
    let exec = rt
        .block_on(runtime.exec_sync(cri::ExecSyncRequest {
            container_id: sleeper.clone(),
            cmd: vec!["sha256sum".into(), "/data/f3".into()],
            timeout: 60,
        }))
        .unwrap_or_else(|e| fail("ExecSync", e))
        .into_inner();
    let got = String::from_utf8_lossy(&exec.stdout).to_string();
    assert_eq!(
        exec.exit_code,
        0,
        "{got} {}",
        String::from_utf8_lossy(&exec.stderr)
    );
    assert!(got.starts_with(&want), "sha256sum after restart: {got}");

    // And through a crash of the server (kill -9; the supervisor starts a new one).
    let server: i32 = std::fs::read_to_string(root.join("daemon.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) of the strata server this test's daemon started.
    unsafe { libc::kill(server, libc::SIGKILL) };
    poll_until(
        "a strata server after the crash",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            std::fs::read_to_string(root.join("daemon.pid"))
                .ok()
                .filter(|p| p.trim() != server.to_string())
        },
    );
    let want = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(pseudo(25 << 20, 104)))
    };
    let exec = rt
        .block_on(runtime.exec_sync(cri::ExecSyncRequest {
            container_id: sleeper.clone(),
            cmd: vec!["sha256sum".into(), "/data/f4".into()],
            timeout: 60,
        }))
        .unwrap_or_else(|e| fail("ExecSync after a crash", e))
        .into_inner();
    let got = String::from_utf8_lossy(&exec.stdout).to_string();
    assert!(got.starts_with(&want), "sha256sum after a crash: {got}");

    // Tear down the pod, then remove the image: its remote snapshots go, and their views.
    for id in [&printer, &sleeper] {
        let _ = rt.block_on(runtime.stop_container(cri::StopContainerRequest {
            container_id: id.to_string(),
            timeout: 0,
        }));
        rt.block_on(runtime.remove_container(cri::RemoveContainerRequest {
            container_id: id.to_string(),
        }))
        .unwrap_or_else(|e| fail("RemoveContainer", e));
    }
    rt.block_on(runtime.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    }))
    .unwrap_or_else(|e| fail("StopPodSandbox", e));
    rt.block_on(runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    }))
    .unwrap_or_else(|e| fail("RemovePodSandbox", e));
    rt.block_on(images.remove_image(cri::RemoveImageRequest {
        image: Some(cri::ImageSpec {
            image: image_ref.clone(),
            ..Default::default()
        }),
    }))
    .unwrap_or_else(|e| fail("RemoveImage", e));
    poll_until(
        "the remote snapshots to be removed",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || (remote_snapshots(&root) == 0 && layer_view_mounts(&root) == 0).then_some(()),
    );
    assert_eq!(
        union_mounts(&root),
        Vec::<PathBuf>::new(),
        "union mounts after removal"
    );

    // Pulled again, then the whole daemon stopped (its mounts end) and started: the
    // snapshots are still known and the layer views are mounted again from the metadata.
    let pull = |rt: &tokio::runtime::Runtime, images: &mut ImageServiceClient<Channel>| {
        rt.block_on(images.pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: reference.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .unwrap_or_else(|e| fail("PullImage", e))
        .into_inner()
        .image_ref
    };
    let image_ref = pull(&rt, &mut images);
    assert_eq!((remote_snapshots(&root), layer_view_mounts(&root)), (2, 2));
    // A container created (not started) in a new pod: its rootfs snapshot is prepared.
    let mut pod2_cfg = pod_cfg.clone();
    if let Some(m) = pod2_cfg.metadata.as_mut() {
        m.attempt = 1;
    }
    let pod2 = rt
        .block_on(runtime.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod2_cfg.clone()),
            runtime_handler: String::new(),
        }))
        .unwrap_or_else(|e| fail("RunPodSandbox again", e))
        .into_inner()
        .pod_sandbox_id;
    let idle = rt
        .block_on(runtime.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod2.clone(),
            config: Some(container_config("idle", &image_ref, &["true"])),
            sandbox_config: Some(pod2_cfg.clone()),
        }))
        .unwrap_or_else(|e| fail("CreateContainer idle", e))
        .into_inner()
        .container_id;
    // The idle container's, and (union) the new sandbox's: the pause image's one layer is
    // the big image's bottom layer, whose index is known by now.
    let before = union_mounts(&root).len();
    assert_eq!(before > 0, union, "{rootfs}: {before} union mounts");
    env.run(&["daemon", "--stop"]).assert_success();
    poll_until(
        "the layer views to end with the daemon",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || (layer_view_mounts(&root) == 0 && union_mounts(&root).is_empty()).then_some(()),
    );
    env.run(&["daemon"]).assert_success();
    poll_until(
        "the layer views to be mounted again",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || (layer_view_mounts(&root) == 2).then_some(()),
    );
    if union {
        let unions = poll_until(
            "the union mounts to be mounted again",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || Some(union_mounts(&root)).filter(|u| u.len() == before),
        );
        let idle_root: Vec<&PathBuf> = unions
            .iter()
            .filter(|mp| {
                std::fs::read_to_string(mp.join("data/hello.txt"))
                    .ok()
                    .as_deref()
                    == Some("hello from a lazy layer\n")
            })
            .collect();
        assert_eq!(
            idle_root.len(),
            1,
            "the idle container's rootfs among {unions:?}"
        );
        assert!(
            !idle_root[0].join("data/f7").exists(),
            "whiteout in the union"
        );
    }
    rt.block_on(runtime.remove_container(cri::RemoveContainerRequest {
        container_id: idle.clone(),
    }))
    .unwrap_or_else(|e| fail("RemoveContainer idle", e));
    rt.block_on(runtime.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod2.clone(),
    }))
    .unwrap_or_else(|e| fail("StopPodSandbox 2", e));
    rt.block_on(runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod2.clone(),
    }))
    .unwrap_or_else(|e| fail("RemovePodSandbox 2", e));
    poll_until(
        "the union mounts to go with their containers",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || union_mounts(&root).is_empty().then_some(()),
    );
    let hello: Vec<String> = layer_views(&root)
        .iter()
        .filter_map(|mp| std::fs::read_to_string(mp.join("data/hello.txt")).ok())
        .collect();
    assert_eq!(hello, vec!["hello from a lazy layer\n".to_string()]);
    // Pulling again finds the snapshots; removing the image removes them.
    assert_eq!(pull(&rt, &mut images), image_ref);
    rt.block_on(images.remove_image(cri::RemoveImageRequest {
        image: Some(cri::ImageSpec {
            image: image_ref.clone(),
            ..Default::default()
        }),
    }))
    .unwrap_or_else(|e| fail("RemoveImage", e));
    poll_until(
        "the remote snapshots to be removed again",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || (remote_snapshots(&root) == 0 && layer_view_mounts(&root) == 0).then_some(()),
    );
    drop(ctd);
    env.run(&["daemon", "--stop"]).assert_success();
}
