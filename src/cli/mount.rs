//! `mount`, `umount`, `stats`: a lazily loaded image as a FUSE union file system.
//!
//! `strata mount` starts a daemon (itself with `--foreground`, in a new session) and returns
//! when the mount is ready; the daemon serves the mount (assembled by `crate::mount`, which
//! also prefetches and writes the counters to `ROOT/mounts/<key>.json` for `strata stats`).
//! This file parses arguments, starts the daemon process and prints.

use super::util::{human_size, print_table};
use super::{Ctx, Error};
use crate::image::index::IndexSource;
use crate::image::Progress;
use crate::mount::MountSpec;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

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

pub async fn mount(ctx: &Ctx, args: MountArgs) -> Result<i32, Error> {
    let mp = crate::mount::check_mountpoint(&args.mountpoint)?;
    if args.foreground {
        return serve(ctx, args, mp).await;
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
    let log_path = crate::mount::record_path(ctx.store.root(), mp).with_extension("log");
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

async fn serve(ctx: &Ctx, args: MountArgs, mp: PathBuf) -> Result<i32, Error> {
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
    let svc = ctx.services()?;
    let served = crate::mount::mount_image(&svc, spec, &progress).await?;
    let ready_ms = served.started.elapsed().as_millis() as u64;
    served.publish(&ctx.store, ready_ms);
    let lazy_note = served
        .lazy
        .index_sources
        .iter()
        .filter(|s| matches!(s, IndexSource::Built))
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
    let signals = |kind: SignalKind| {
        signal(kind).map_err(|source| Error::Io {
            context: "signals".into(),
            source,
        })
    };
    let (mut term, mut int) = (
        signals(SignalKind::terminate())?,
        signals(SignalKind::interrupt())?,
    );
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    served.serve_until(&ctx.store, ready_ms, stop).await;
    Ok(0)
}

pub fn umount(ctx: &Ctx, mountpoint: &Path, force: bool) -> Result<i32, Error> {
    crate::mount::unmount(&ctx.store, mountpoint, force)?;
    Ok(0)
}

pub fn stats(ctx: &Ctx, mountpoint: &Path, json: bool) -> Result<i32, Error> {
    let mp = std::fs::canonicalize(mountpoint).map_err(|source| Error::Io {
        context: format!("mountpoint {}", mountpoint.display()),
        source,
    })?;
    let Some(r) = crate::mount::read_record(&ctx.store, &mp)? else {
        return Err(crate::mount::Error::NotStrataMount(mp).into());
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
