//! `strata mount --kernel-overlay`: kernel overlayfs over the image's layers served as lazy,
//! read-only layer views (`mount::layer`, the containerd snapshotter's remote snapshots),
//! with the given upper. Reads of lower files still go through strata's verified chunk cache;
//! creates, renames, unlinks and writes in the upper never reach FUSE, so metadata work runs
//! at kernel-overlayfs speed — with kernel overlayfs's semantics, not the union mount's
//! (docs/overlay.md). The views are mounts of the root's daemon at `ROOT/views/<key>/l<n>`
//! (served in this process with `--foreground`), listed in `ROOT/views/<key>.json` for
//! `strata umount`. Calls `image::resolve`, the daemon client (`super::daemon`) and
//! `mount::mount_layer`.

use super::mount::MountArgs;
use super::{Ctx, Error};
use crate::digest::Digest;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What `strata umount` needs to take a kernel-overlay mount down.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    image: String,
    mountpoint: PathBuf,
    /// Bottom layer first.
    views: Vec<PathBuf>,
}

/// `ROOT/views/<key>` for a mountpoint, and its record file.
fn paths(ctx: &Ctx, mp: &Path) -> (PathBuf, PathBuf) {
    let key = Digest::of(mp.as_os_str().as_encoded_bytes()).short();
    let base = ctx.store.root().join("views");
    (base.join(&key), base.join(format!("{key}.json")))
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

/// The image pinned by digest, and its layers (bottom first).
async fn layers(ctx: &Ctx, args: &MountArgs) -> Result<(String, Vec<Digest>), Error> {
    let (reference, rec) = crate::image::resolve(
        &ctx.client,
        &ctx.store,
        &args.image,
        args.platform.as_deref(),
    )
    .await?;
    let pinned = reference.with_digest(rec.manifest_digest).to_string();
    Ok((pinned, rec.layers.iter().map(|l| l.digest).collect()))
}

/// Mount kernel overlayfs at `mp`: `views` (bottom first) below, `upper`/`work` above.
fn mount_overlay(mp: &Path, views: &[PathBuf], upper: &Path, work: &Path) -> Result<(), Error> {
    for d in [upper, work] {
        std::fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
    }
    let lower: Vec<String> = views
        .iter()
        .rev()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        mp,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| Error::Io {
        context: format!("mounting kernel overlayfs at {} ({opts})", mp.display()),
        source: e.into(),
    })
}

fn upper_work(args: &MountArgs) -> Result<(PathBuf, PathBuf), Error> {
    super::mount::upper_work(args).ok_or_else(|| {
        Error::Usage("--kernel-overlay needs --upper (kernel overlayfs over the layers)".into())
    })
}

/// The view mountpoints of a kernel-overlay mount at `mp` (made).
fn view_dirs(ctx: &Ctx, mp: &Path, n: usize) -> Result<Vec<PathBuf>, Error> {
    let (dir, _) = paths(ctx, mp);
    let views: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("l{i}"))).collect();
    for v in &views {
        std::fs::create_dir_all(v).map_err(io(format!("creating {}", v.display())))?;
    }
    Ok(views)
}

/// Kernel overlayfs at `mp` over `layers` (bottom first) of `image` (pinned by digest),
/// served as views by the root's daemon, with `upper` and `work`; recorded for `umount`.
/// `warm` (a container's start, `mount::warm`) goes with the first view's request. On
/// failure nothing stays mounted.
pub(super) async fn mount_with_daemon(
    ctx: &Ctx,
    image: &str,
    layers: &[Digest],
    (mp, upper, work): (&Path, &Path, &Path),
    warm: crate::mount::warm::WarmList,
) -> Result<(), Error> {
    let (dir, record) = paths(ctx, mp);
    let views = view_dirs(ctx, mp, layers.len())?;
    let mut warm = Some(warm);
    let asks = layers.iter().zip(&views).map(|(layer, view)| {
        let req = crate::daemon::MountRequest::layer_view(
            image.to_string(),
            *layer,
            view.clone(),
            warm.take().unwrap_or_default(),
        );
        super::daemon::mount(ctx, req)
    });
    let answers = futures::future::join_all(asks).await;
    let failed = answers.into_iter().find_map(|a| a.err());
    let result = match failed {
        Some(e) => Err(e),
        None => mount_overlay(mp, &views, upper, work),
    };
    if let Err(e) = result {
        release_views(ctx, &views).await;
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    let rec = Record {
        image: image.to_string(),
        mountpoint: mp.to_path_buf(),
        views,
    };
    ctx.store
        .write_json(&record, &rec)
        .map_err(|e| Error::Usage(format!("writing {}: {e}", record.display())))?;
    Ok(())
}

/// `strata mount --kernel-overlay`: views from the daemon (or this process with
/// `--foreground`), then the overlay.
pub async fn mount(ctx: &Ctx, args: MountArgs, mp: PathBuf) -> Result<i32, Error> {
    let (upper, work) = upper_work(&args)?;
    let (image, layers) = layers(ctx, &args).await?;
    if args.foreground {
        let views = view_dirs(ctx, &mp, layers.len())?;
        return serve(ctx, image, layers, views, mp, (upper, work)).await;
    }
    mount_with_daemon(ctx, &image, &layers, (&mp, &upper, &work), Vec::new()).await?;
    println!(
        "{image} mounted at {} (kernel overlayfs over {} lazy layer view{})",
        mp.display(),
        layers.len(),
        if layers.len() == 1 { "" } else { "s" }
    );
    Ok(0)
}

/// Have the daemon unmount the views it serves for this mount; a view it does not answer
/// for (no daemon answers on the root's socket, or it does not know the view) is detached
/// here, and a daemon that still serves it releases its session when its watch of the mount
/// table sees it gone.
async fn release_views(ctx: &Ctx, views: &[PathBuf]) {
    for v in views.iter().rev() {
        if !crate::mount::is_mounted(v) {
            continue;
        }
        let asked = super::daemon::unmount(ctx, v, true).await;
        if !matches!(asked, Ok(true)) {
            tracing::warn!(
                "the daemon did not unmount layer view {} ({:?}); detaching it",
                v.display(),
                asked.err().map(|e| e.to_string())
            );
            if let Err(e) = nix::mount::umount2(v.as_path(), nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!("detaching layer view {}: {e}", v.display());
            }
        }
    }
}

/// `--foreground`: serve the views in this process until a signal or until the overlay is
/// unmounted from outside; then take everything down.
async fn serve(
    ctx: &Ctx,
    image: String,
    layers: Vec<Digest>,
    views: Vec<PathBuf>,
    mp: PathBuf,
    (upper, work): (PathBuf, PathBuf),
) -> Result<i32, Error> {
    let svc = ctx.services()?;
    let mut served = Vec::with_capacity(layers.len());
    let mut failed = None;
    for (layer, view) in layers.iter().zip(&views) {
        match crate::mount::mount_layer(&svc, &image, layer, view, Vec::new()).await {
            Ok(s) => served.push(s),
            Err(e) => {
                failed = Some(Error::from(e));
                break;
            }
        }
    }
    let result = match failed {
        Some(e) => Err(e),
        None => mount_overlay(&mp, &views, &upper, &work),
    };
    if result.is_ok() {
        println!(
            "ready {image} at {} (kernel overlayfs over {} lazy layer view{})",
            mp.display(),
            layers.len(),
            if layers.len() == 1 { "" } else { "s" }
        );
        wait_for_end(&mp).await?;
        if crate::mount::is_mounted(&mp) {
            let _ = nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    for s in served.into_iter().rev() {
        s.shutdown(&ctx.store).await;
    }
    result.map(|()| 0)
}

/// Until SIGTERM, SIGINT or the overlay at `mp` is gone.
async fn wait_for_end(mp: &Path) -> Result<(), Error> {
    use tokio::signal::unix::{signal, SignalKind};
    let sig = |kind| signal(kind).map_err(io("signals".into()));
    let (mut term, mut int) = (sig(SignalKind::terminate())?, sig(SignalKind::interrupt())?);
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {
                if !crate::mount::is_mounted(mp) {
                    return Ok(());
                }
            }
        }
    }
}

/// `strata umount` of a kernel-overlay mount made through the daemon: the overlay, then its
/// views. `Ok(false)` when `mp` is not one.
pub async fn umount(ctx: &Ctx, mp: &Path, force: bool) -> Result<bool, Error> {
    let (dir, record) = paths(ctx, mp);
    let Ok(text) = std::fs::read(&record) else {
        tracing::debug!(mountpoint = %mp.display(), "no kernel-overlay record");
        return Ok(false);
    };
    let rec: Record = serde_json::from_slice(&text)
        .map_err(|e| Error::Usage(format!("{}: {e}", record.display())))?;
    if crate::mount::is_mounted(mp) {
        crate::mount::unmount(&ctx.store, mp, force)?;
    }
    release_views(ctx, &rec.views).await;
    let _ = std::fs::remove_file(&record);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(true)
}
