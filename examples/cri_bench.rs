//! CRI cold-start driver for `scripts/bench-cri.sh` (there is no crictl on these machines: no
//! Go). It starts a private Debian containerd 1.6 with the CRI plugin in a fresh directory —
//! its snapshotter either `strata` (a `proxy_plugins` entry on a running strata daemon's
//! socket, `disable_snapshot_annotations = false`) or containerd's own `overlayfs` — pulls the
//! sandbox image (untimed: a node has its pause image), drops the page cache, then times
//! what a kubelet asks for a new pod: PullImage, RunPodSandbox (host network),
//! CreateContainer + StartContainer, and the container's exit. One JSON line on stdout:
//!
//!   {"snapshotter":"strata","pull_s":..,"sandbox_s":..,"start_s":..,"run_s":..,
//!    "total_s":..,"exit_code":0}
//!
//! (`run_s`: start to exit; `total_s`: pull start to exit.) With `--pull-only` it stops
//! after the timed PullImage (remote snapshots stay with the strata daemon). Containers,
//! shims, mounts and the directory go when it ends, also on failure.
//!
//!   cargo build --release --example cri_bench
//!   cri_bench --snapshotter strata --strata-root ROOT --work DIR --image REF \
//!     --sandbox-image REF --registry HOST:PORT [--registry ...] [--drop-caches] -- CMD ARGS...
//!
//! Patterns (config, CRI channel, pod and container configs) are those of
//! fuse-tests/snapshotter.rs.

use clap::Parser;
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint, Uri};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Parser)]
struct Args {
    /// `strata` (the daemon of --strata-root) or `overlayfs` (containerd's own).
    #[arg(long)]
    snapshotter: String,
    /// The strata root whose daemon serves `containerd-snapshotter.sock`.
    #[arg(long)]
    strata_root: Option<PathBuf>,
    /// containerd's directory (root, state, sockets, log); created, removed at the end.
    #[arg(long)]
    work: PathBuf,
    #[arg(long)]
    image: String,
    #[arg(long)]
    sandbox_image: String,
    /// Registry hosts spoken to over plain http (containerd `registry.mirrors`).
    #[arg(long = "registry")]
    registries: Vec<String>,
    /// `sync; echo 3 > /proc/sys/vm/drop_caches` right before the timed part.
    #[arg(long)]
    drop_caches: bool,
    /// Stop after the (timed) PullImage.
    #[arg(long)]
    pull_only: bool,
    /// Copy containerd's log here at the end.
    #[arg(long)]
    keep_log: Option<PathBuf>,
    /// Seconds to wait for the container's exit.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// The container's command.
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

struct Containerd {
    child: Child,
    dir: PathBuf,
    keep_log: Option<PathBuf>,
}

impl Containerd {
    fn start(a: &Args) -> Res<Containerd> {
        let d = a.work.clone();
        if d.exists() {
            return Err(format!("{} exists", d.display()).into());
        }
        std::fs::create_dir_all(&d)?;
        let proxy = match a.snapshotter.as_str() {
            "strata" => {
                let root = a.strata_root.as_ref().ok_or("--strata-root needed")?;
                format!(
                    "[proxy_plugins.strata]\n  type = \"snapshot\"\n  address = \"{}\"\n",
                    root.join("containerd-snapshotter.sock").display()
                )
            }
            "overlayfs" => String::new(),
            s => return Err(format!("unknown snapshotter {s}").into()),
        };
        let mirrors: String = a
            .registries
            .iter()
            .map(|h| {
                format!(
                    "  [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"{h}\"]\n    endpoint = [\"http://{h}\"]\n"
                )
            })
            .collect();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.ttrpc"
{proxy}
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snap}"
    disable_snapshot_annotations = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni-bin"
    conf_dir = "{d}/cni-conf"
{mirrors}"#,
            d = d.display(),
            sandbox = a.sandbox_image,
            snap = a.snapshotter,
        );
        std::fs::write(d.join("config.toml"), config)?;
        let log = std::fs::File::create(d.join("containerd.log"))?;
        let mut cmd = Command::new("/usr/bin/containerd");
        cmd.arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; no allocation between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        Ok(Containerd {
            child,
            dir: d,
            keep_log: a.keep_log.clone(),
        })
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// As in fuse-tests/snapshotter.rs: containers, shims and mounts of this containerd go with
/// it; then its directory.
impl Drop for Containerd {
    fn drop(&mut self) {
        let d = self.dir.clone();
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
                // SAFETY: kill(2) of a shim started for this containerd.
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
        if let Some(k) = &self.keep_log {
            let _ = std::fs::copy(d.join("containerd.log"), k);
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}

async fn channel(sock: PathBuf) -> Res<Channel> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = sock.clone();
        let r = Endpoint::try_from("http://[::]:50051")?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let s = s.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(s).await?))
                }
            }))
            .await;
        if let Ok(c) = r {
            // The CRI service answers once its plugin is up.
            let mut rt = RuntimeServiceClient::new(c.clone());
            if rt.version(cri::VersionRequest::default()).await.is_ok() {
                return Ok(c);
            }
        }
        if Instant::now() > deadline {
            return Err("CRI not ready after 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pod_config(logs: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "bench".into(),
            uid: "uid-bench-1".into(),
            namespace: "strata-bench".into(),
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

fn image_spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

fn drop_caches() -> Res<()> {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3")?;
    Ok(())
}

/// The container's output from its CRI log file (`TIME STREAM TAG LINE` per line).
fn cri_log(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3))
        .map(|l| format!("{l}\n"))
        .collect()
}

async fn bench(a: &Args, ctd: &Containerd) -> Res<serde_json::Value> {
    let ch = channel(ctd.sock()).await?;
    let mut runtime = RuntimeServiceClient::new(ch.clone());
    let mut images = ImageServiceClient::new(ch);
    let logs = ctd.dir.join("pod-logs");
    std::fs::create_dir_all(&logs)?;
    images
        .pull_image(cri::PullImageRequest {
            image: image_spec(&a.sandbox_image),
            ..Default::default()
        })
        .await?;
    if a.drop_caches {
        drop_caches()?;
    }
    let secs = |t: Instant| t.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let image_ref = images
        .pull_image(cri::PullImageRequest {
            image: image_spec(&a.image),
            ..Default::default()
        })
        .await?
        .into_inner()
        .image_ref;
    let pull_s = secs(t0);
    let mut out = serde_json::json!({"snapshotter": a.snapshotter, "pull_s": pull_s});
    if a.pull_only {
        return Ok(out);
    }
    let t1 = Instant::now();
    let pod_cfg = pod_config(&logs);
    let pod = runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_cfg.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let sandbox_s = secs(t1);
    let t2 = Instant::now();
    let id = runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "work".into(),
                    attempt: 0,
                }),
                image: image_spec(&image_ref),
                command: a.cmd.clone(),
                log_path: "work.log".into(),
                ..Default::default()
            }),
            sandbox_config: Some(pod_cfg),
        })
        .await?
        .into_inner()
        .container_id;
    runtime
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await?;
    let start_s = secs(t2);
    let t3 = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let st = loop {
        let st = runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .ok_or("no container status")?;
        if st.state == cri::ContainerState::ContainerExited as i32 {
            break st;
        }
        if Instant::now() > deadline {
            return Err(format!("container still running after {} s", a.timeout).into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (run_s, total_s) = (secs(t3), secs(t0));
    let output = cri_log(&logs.join("work.log"));
    if st.exit_code != 0 {
        eprintln!("container exited {}; output:\n{output}", st.exit_code);
    }
    out["sandbox_s"] = sandbox_s.into();
    out["start_s"] = start_s.into();
    out["run_s"] = run_s.into();
    out["total_s"] = total_s.into();
    out["exit_code"] = st.exit_code.into();
    // Orderly teardown (containerd unmounts the rootfs); Drop catches the rest.
    let _ = runtime
        .remove_container(cri::RemoveContainerRequest { container_id: id })
        .await;
    let _ = runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await;
    let _ = runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await;
    Ok(out)
}

fn main() {
    let a = Args::parse();
    let ctd = match Containerd::start(&a) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cri_bench: starting containerd: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let r = rt.block_on(bench(&a, &ctd));
    match r {
        Ok(v) => {
            println!("{v}");
            let code = v["exit_code"].as_i64().unwrap_or(0);
            drop(ctd);
            std::process::exit(if code == 0 { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("cri_bench: {e}\ncontainerd log (tail):\n{}", ctd.log_tail());
            drop(ctd);
            std::process::exit(1);
        }
    }
}
