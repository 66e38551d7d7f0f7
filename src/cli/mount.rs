//! `mount`, `umount`, `stats`: a lazily loaded image as a FUSE union file system.
//!
//! `strata mount` asks the root's daemon (`crate::daemon`, started when none runs) to mount and
//! returns when the mount is ready; `--foreground` serves the one mount in this process
//! instead. Either way the mount is assembled by `crate::mount`, which also prefetches and
//! writes the counters to `ROOT/mounts/<key>.json`. `strata stats` asks the daemon for its
//! live counters and falls back to that file (`--foreground` mounts). This file parses
//! arguments, talks to the daemon and prints.

use super::util::{human_size, print_table};
use super::{Ctx, Error};
use crate::image::Progress;
use crate::mount::MountSpec;
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
    /// Use FUSE passthrough for upper files (and lower files with a local copy on read-only
    /// mounts) where the kernel allows it
    #[arg(long)]
    pub passthrough: bool,
    /// Let other users than the mounting one use the mount (off by default)
    #[arg(long)]
    pub allow_other: bool,
    #[arg(long)]
    pub platform: Option<String>,
    /// Kernel overlayfs over the image's layers served as lazy read-only views, with the
    /// upper (needs --upper): metadata writes at kernel speed, kernel overlayfs semantics
    #[arg(long)]
    pub kernel_overlay: bool,
}

pub async fn mount(ctx: &Ctx, args: MountArgs) -> Result<i32, Error> {
    let mp = crate::mount::check_mountpoint(&args.mountpoint)?;
    if args.kernel_overlay {
        return super::kovl::mount(ctx, args, mp).await;
    }
    if args.foreground {
        return serve(ctx, args, mp).await;
    }
    let req = request(ctx, &args, mp);
    let watch = super::progress::LayerDownloads::start_image(ctx.store.clone(), args.image.clone());
    let resp = super::daemon::mount(ctx, req).await;
    if let Some(w) = watch {
        w.finish().await;
    }
    let resp = resp?;
    if let Some(m) = resp.message {
        println!("{m}");
    }
    Ok(0)
}

/// The (upper, work) pair of the arguments: work defaults to `UPPER.work` beside the upper.
pub(super) fn upper_work(args: &MountArgs) -> Option<(PathBuf, PathBuf)> {
    args.upper.as_ref().map(|u| {
        let w = args.work.clone().unwrap_or_else(|| {
            u.with_file_name(format!(
                "{}.work",
                u.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "upper".into())
            ))
        });
        (u.clone(), w)
    })
}

/// What the daemon is asked to mount for these arguments.
fn request(ctx: &Ctx, args: &MountArgs, mountpoint: PathBuf) -> crate::daemon::MountRequest {
    crate::daemon::MountRequest {
        image: args.image.clone(),
        platform: args.platform.clone(),
        mountpoint,
        upper: upper_work(args),
        prefetch: ctx.config.prefetch && !args.no_prefetch,
        passthrough: args.passthrough,
        allow_other: args.allow_other,
        layer: None,
        warm: Vec::new(),
    }
}

/// `mount --foreground`: serve the one mount in this process until it is unmounted.
async fn serve(ctx: &Ctx, args: MountArgs, mp: PathBuf) -> Result<i32, Error> {
    let upper = upper_work(&args);
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
        warm: Vec::new(),
    };
    let svc = ctx.services()?;
    let served = crate::mount::mount_image(&svc, spec, &progress).await?;
    let ready_ms = served.started.elapsed().as_millis() as u64;
    served.publish(&ctx.store, ready_ms);
    println!("ready {}", served.status_line(ready_ms));
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

/// Unmount: through the daemon when it serves the mount (released at once), else directly.
pub async fn umount(ctx: &Ctx, mountpoint: &Path, force: bool) -> Result<i32, Error> {
    let mp = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    if super::kovl::umount(ctx, &mp, force).await? {
        return Ok(0);
    }
    if !super::daemon::unmount(ctx, &mp, force).await? {
        crate::mount::unmount(&ctx.store, &mp, force)?;
    }
    Ok(0)
}

/// The mount's counters: live from the daemon when it serves the mount, else the record its
/// serving process publishes twice a second (`mount --foreground`).
pub async fn stats(ctx: &Ctx, mountpoint: &Path, json: bool) -> Result<i32, Error> {
    let mp = std::fs::canonicalize(mountpoint).map_err(|source| Error::Io {
        context: format!("mountpoint {}", mountpoint.display()),
        source,
    })?;
    let live = super::daemon::stats(ctx, &mp).await.ok().flatten();
    let r = match live {
        Some(r) => r,
        None => match crate::mount::read_record(&ctx.store, &mp)? {
            Some(r) => r,
            None => return Err(crate::mount::Error::NotStrataMount(mp).into()),
        },
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
