//! `mount`, `umount`, `stats`: a lazily loaded image as a FUSE union file system.
//!
//! `strata mount` starts a daemon (itself with `--foreground`, in a new session) and returns
//! when the mount is ready; the daemon serves the mount, prefetches in the background and
//! writes its counters to `ROOT/mounts/<key>.json` for `strata stats`.

use super::util::{human_size, print_table};
use super::{Ctx, Error};
use crate::digest::Digest;
use crate::image::{self, Progress};
use crate::union::{UnionFs, Upper};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(clap::Args, Debug, Clone)]
pub struct MountArgs {
    /// Image reference (local name, or resolved in its registry)
    pub image: String,
    /// Where to mount
    pub mountpoint: PathBuf,
    /// Writable upper directory (kernel-overlayfs format); without it the mount is read-only
    #[arg(long)]
    pub upper: Option<PathBuf>,
    /// Work directory for atomic copy-up (default: next to the upper)
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Stay in the foreground serving the mount
    #[arg(long)]
    pub foreground: bool,
    /// Do not prefetch the rest of the image in the background
    #[arg(long)]
    pub no_prefetch: bool,
    /// Use FUSE passthrough for local files where the kernel allows it
    #[arg(long)]
    pub passthrough: bool,
    /// Let other users than the mounting one use the mount (off by default)
    #[arg(long)]
    pub allow_other: bool,
    #[arg(long)]
    pub platform: Option<String>,
}

/// What a mount daemon publishes for `strata stats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountRecord {
    pub mountpoint: PathBuf,
    pub image: String,
    pub manifest: Digest,
    pub pid: u32,
    pub index_sources: Vec<String>,
    pub image_bytes: u64,
    pub layer_spans: usize,
    pub cache: crate::cache::StatsSnapshot,
    pub fs_reads: u64,
    pub fs_bytes_read: u64,
    pub fs_reads_waited: u64,
    pub copy_ups: u64,
    pub prefetch_done: bool,
    /// The access profile prefetched first (source, files, done).
    #[serde(default)]
    pub profile: image::lazy::ProfileProgress,
    pub ready_ms: u64,
}

fn record_path(ctx: &Ctx, mountpoint: &Path) -> PathBuf {
    let key = Digest::of(mountpoint.as_os_str().as_encoded_bytes()).short();
    ctx.store.root().join("mounts").join(format!("{key}.json"))
}

fn canonical(p: &Path) -> Result<PathBuf, Error> {
    std::fs::canonicalize(p).map_err(|source| Error::Io {
        context: format!("mountpoint {}", p.display()),
        source,
    })
}

/// Whether `p` is a mount point (per /proc/self/mountinfo).
pub fn is_mounted(p: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = p.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4).map(|m| m.replace("\\040", " ")) == Some(want.to_string()))
}

pub async fn mount(ctx: &Ctx, args: MountArgs) -> Result<i32, Error> {
    if !args.mountpoint.is_dir() {
        return Err(Error::Usage(format!(
            "mountpoint {} is not a directory",
            args.mountpoint.display()
        )));
    }
    let mp = canonical(&args.mountpoint)?;
    if is_mounted(&mp) {
        return Err(Error::Usage(format!(
            "{} is already a mount point",
            mp.display()
        )));
    }
    if args.foreground {
        return serve(ctx, args, mp, None).await;
    }
    daemonize(ctx, &args, &mp, false)
}

/// Start a mount daemon without printing its status line (for `run -d`, `start`).
pub fn daemonize_quiet(ctx: &Ctx, args: &MountArgs, mp: &Path) -> Result<(), Error> {
    daemonize(ctx, args, mp, true).map(|_| ())
}

/// Re-run ourselves with `--foreground` in a new session; return when it says "ready".
fn daemonize(ctx: &Ctx, args: &MountArgs, mp: &Path, quiet: bool) -> Result<i32, Error> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|source| Error::Io {
        context: "locating strata".into(),
        source,
    })?;
    let log_dir = ctx.store.root().join("mounts");
    std::fs::create_dir_all(&log_dir).map_err(|source| Error::Io {
        context: log_dir.display().to_string(),
        source,
    })?;
    let log_path = record_path(ctx, mp).with_extension("log");
    let log = std::fs::File::create(&log_path).map_err(|source| Error::Io {
        context: log_path.display().to_string(),
        source,
    })?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--root")
        .arg(ctx.store.root())
        .arg("mount")
        .arg("--foreground")
        .arg(&args.image)
        .arg(mp);
    if let Some(u) = &args.upper {
        cmd.arg("--upper").arg(u);
    }
    if let Some(w) = &args.work {
        cmd.arg("--work").arg(w);
    }
    if args.no_prefetch {
        cmd.arg("--no-prefetch");
    }
    if args.passthrough {
        cmd.arg("--passthrough");
    }
    if args.allow_other {
        cmd.arg("--allow-other");
    }
    if let Some(p) = &args.platform {
        cmd.arg("--platform").arg(p);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| Error::Io {
        context: "starting mount daemon".into(),
        source,
    })?;
    let Some(out) = child.stdout.take() else {
        return Err(Error::Usage("mount daemon has no stdout".into()));
    };
    for line in BufReader::new(out).lines() {
        let line = line.map_err(|source| Error::Io {
            context: "mount daemon".into(),
            source,
        })?;
        if line.starts_with("ready") {
            if !quiet {
                println!("{}", line.trim_start_matches("ready").trim());
            }
            return Ok(0);
        }
        if !quiet {
            println!("{line}");
        }
    }
    let status = child.wait().map_err(|source| Error::Io {
        context: "mount daemon".into(),
        source,
    })?;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    Err(Error::Usage(format!(
        "mount failed ({status}): {}",
        log.trim()
    )))
}

/// A mounted image served by this process.
pub struct Served {
    pub handle: crate::fuse::MountHandle,
    pub lazy: Arc<image::lazy::LazyImage>,
    pub cache: Arc<crate::cache::ChunkCache>,
    pub record_path: PathBuf,
    pub started: std::time::Instant,
    pub prefetch: Option<tokio::task::JoinHandle<()>>,
    pub prefetch_done: Arc<std::sync::atomic::AtomicBool>,
}

/// What to mount where.
pub struct MountSpec<'a> {
    pub image: &'a str,
    pub platform: Option<&'a str>,
    pub mountpoint: &'a Path,
    /// (upper, work) directories; none = read-only
    pub upper: Option<(PathBuf, PathBuf)>,
    pub prefetch: bool,
    pub passthrough: bool,
    /// Other users may use the mount (containers need it: their processes run as other uids).
    pub allow_other: bool,
}

/// Mount an image (with an optional upper) and start background prefetch.
pub async fn mount_image(
    ctx: &Ctx,
    spec: MountSpec<'_>,
    progress: &Progress,
) -> Result<Served, Error> {
    let MountSpec {
        image: image_ref,
        platform,
        mountpoint: mp,
        upper,
        prefetch,
        passthrough,
        allow_other,
    } = spec;
    let started = std::time::Instant::now();
    image::lazy::tune_allocator();
    let (reference, rec) = super::images::resolve_record(ctx, image_ref, platform).await?;
    let cache = ctx.cache()?;
    let lazy = Arc::new(
        image::lazy::open(&ctx.client, &ctx.store, &cache, &reference, rec, progress).await?,
    );
    let upper = match upper {
        Some((u, w)) => {
            for d in [&u, &w] {
                std::fs::create_dir_all(d).map_err(|source| Error::Io {
                    context: d.display().to_string(),
                    source,
                })?;
            }
            Some(Upper::open(u, w).map_err(|e| Error::Usage(e.to_string()))?)
        }
        None => None,
    };
    let rt = tokio::runtime::Handle::current();
    let fs = UnionFs::new(
        lazy.tree.clone(),
        lazy.lowers.clone(),
        upper,
        Some(rt.clone()),
    )
    .map_err(|e| Error::Usage(e.to_string()))?;
    let opts = crate::fuse::MountOptions {
        read_only: false,
        passthrough,
        allow_other,
        fsname: format!("strata:{}", lazy.reference),
        ..Default::default()
    };
    let handle = crate::fuse::mount(Arc::new(fs), mp, opts, rt).map_err(|e| {
        Error::Usage(format!(
            "{e}: {}",
            std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_default()
        ))
    })?;
    let prefetch_done = Arc::new(std::sync::atomic::AtomicBool::new(!prefetch));
    let prefetch = prefetch.then(|| {
        let (store, cache, lazy, done, client) = (
            ctx.store.clone(),
            cache.clone(),
            lazy.clone(),
            prefetch_done.clone(),
            ctx.client.clone(),
        );
        let source = ctx.config.prefetch_profile;
        tokio::spawn(async move {
            match image::lazy::prefetch(store, cache, lazy, client, source).await {
                Ok(()) => done.store(true, std::sync::atomic::Ordering::Relaxed),
                Err(e) => tracing::warn!("prefetch stopped: {e}"),
            }
        })
    });
    Ok(Served {
        handle,
        lazy,
        cache,
        record_path: record_path(ctx, mp),
        started,
        prefetch,
        prefetch_done,
    })
}

impl Served {
    pub fn record(&self, ready_ms: u64) -> MountRecord {
        let fs = self.handle.stats();
        MountRecord {
            mountpoint: self.handle.mountpoint().to_path_buf(),
            image: self.lazy.reference.to_string(),
            manifest: self.lazy.record.manifest_digest,
            pid: std::process::id(),
            index_sources: self
                .lazy
                .index_sources
                .iter()
                .map(|s| format!("{s:?}"))
                .collect(),
            image_bytes: self.lazy.record.size(),
            layer_spans: self.lazy.layers.iter().map(|l| l.layout.count()).sum(),
            cache: self.cache.stats.snapshot(),
            fs_reads: fs.reads,
            fs_bytes_read: fs.bytes_read,
            fs_reads_waited: fs.lower_reads_waited,
            copy_ups: fs.copy_ups,
            prefetch_done: self
                .prefetch_done
                .load(std::sync::atomic::Ordering::Relaxed),
            profile: self.lazy.profile_prefetch.snapshot(),
            ready_ms,
        }
    }

    pub fn publish(&self, ctx: &Ctx, ready_ms: u64) {
        if let Some(dir) = self.record_path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = ctx
            .store
            .write_json(&self.record_path, &self.record(ready_ms))
        {
            tracing::warn!("writing mount stats: {e}");
        }
    }
}

async fn serve(ctx: &Ctx, args: MountArgs, mp: PathBuf, _ready: Option<()>) -> Result<i32, Error> {
    let upper = args.upper.as_ref().map(|u| {
        let w = args.work.clone().unwrap_or_else(|| {
            u.with_file_name(format!(
                "{}.work",
                u.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "upper".into())
            ))
        });
        (u.clone(), w)
    });
    let prefetch = ctx.config.prefetch && !args.no_prefetch;
    let progress = Progress::new(true);
    let spec = MountSpec {
        image: &args.image,
        platform: args.platform.as_deref(),
        mountpoint: &mp,
        upper,
        prefetch,
        passthrough: args.passthrough,
        allow_other: args.allow_other,
    };
    let served = mount_image(ctx, spec, &progress).await?;
    let ready_ms = served.started.elapsed().as_millis() as u64;
    served.publish(ctx, ready_ms);
    let lazy_note = served
        .lazy
        .index_sources
        .iter()
        .filter(|s| matches!(s, image::index::IndexSource::Built))
        .count();
    println!(
        "ready {} mounted at {} in {ready_ms} ms{}",
        served.lazy.reference,
        mp.display(),
        if lazy_note > 0 {
            format!(" ({lazy_note} layer(s) were downloaded whole: no lazy index)")
        } else {
            String::new()
        }
    );
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|source| Error::Io {
        context: "signals".into(),
        source,
    })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|source| Error::Io {
        context: "signals".into(),
        source,
    })?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {
                served.publish(ctx, ready_ms);
                if !is_mounted(&mp) {
                    break;
                }
            }
        }
    }
    if let Some(p) = &served.prefetch {
        p.abort();
    }
    image::lazy::save_profile(&ctx.store, &served.lazy);
    served.cache.flush().await;
    let _ = std::fs::remove_file(&served.record_path);
    let handle = served.handle;
    tokio::task::spawn_blocking(move || drop(handle)).await.ok();
    Ok(0)
}

pub fn umount(ctx: &Ctx, mountpoint: &Path, force: bool) -> Result<i32, Error> {
    let mp = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    let flags = if force {
        nix::mount::MntFlags::MNT_DETACH
    } else {
        nix::mount::MntFlags::empty()
    };
    let rec: Option<MountRecord> = ctx.store.read_json(&record_path(ctx, &mp)).ok().flatten();
    match nix::mount::umount2(&mp, flags) {
        Ok(()) => {}
        Err(nix::errno::Errno::ENOTCONN) | Err(nix::errno::Errno::EBUSY) if !force => {
            return Err(Error::Usage(format!(
                "{}: busy or stale (daemon gone); use `strata umount -f` to detach it",
                mp.display()
            )))
        }
        Err(e) => {
            return Err(Error::Io {
                context: format!("umount {}", mp.display()),
                source: e.into(),
            })
        }
    }
    if let Some(r) = rec {
        // Wait briefly for the daemon to notice and exit.
        for _ in 0..100 {
            if !Path::new(&format!("/proc/{}", r.pid)).exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let _ = std::fs::remove_file(record_path(ctx, &mp));
    Ok(0)
}

pub fn stats(ctx: &Ctx, mountpoint: &Path, json: bool) -> Result<i32, Error> {
    let mp = canonical(mountpoint)?;
    let Some(r) = ctx.store.read_json::<MountRecord>(&record_path(ctx, &mp))? else {
        return Err(Error::Usage(format!(
            "{}: not a strata mount of this root",
            mp.display()
        )));
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
        return Ok(0);
    }
    let c = &r.cache;
    let rows = vec![
        vec!["image".into(), r.image.clone()],
        vec!["index sources".into(), r.index_sources.join(", ")],
        vec!["image size (compressed)".into(), human_size(r.image_bytes)],
        vec!["mount ready after".into(), format!("{} ms", r.ready_ms)],
        vec![
            "bytes fetched".into(),
            format!("{} ({} requests)", human_size(c.bytes_fetched), c.requests),
        ],
        vec![
            "spans fetched".into(),
            format!("{} of {}", c.spans_fetched, r.layer_spans),
        ],
        vec![
            "memory / disk hits".into(),
            format!("{} / {}", c.mem_hits, c.disk_hits),
        ],
        vec![
            "fetch latency avg / p99".into(),
            format!("{:.1} ms / {:.1} ms", c.fetch_avg_ms, c.fetch_p99_ms),
        ],
        vec![
            "prefetch".into(),
            if r.prefetch_done {
                "done".into()
            } else {
                format!("{} spans so far", c.prefetched_spans)
            },
        ],
        vec![
            "access profile".into(),
            if r.profile.source.is_empty() {
                "none".into()
            } else {
                format!(
                    "{}: {} of {} files prefetched",
                    r.profile.source, r.profile.done, r.profile.files
                )
            },
        ],
        vec![
            "reads served".into(),
            format!(
                "{} ({}, {} waited on fetch)",
                r.fs_reads,
                human_size(r.fs_bytes_read),
                r.fs_reads_waited
            ),
        ],
        vec!["copy-ups".into(), r.copy_ups.to_string()],
    ];
    print_table(&["", ""], &rows);
    Ok(0)
}
