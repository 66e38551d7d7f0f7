//! Serving a mount again after the process that served it is gone: what a successor needs
//! ([`SavedMount`], kept at `ROOT/mounts/KEY.saved` while the mount lives) and [`restore`],
//! which opens the same image (pinned to the manifest digest it was mounted with), builds the
//! same union over the same upper and attaches it to the FUSE connection handed over
//! ([`prepare`], then [`Prepared::attach`]).
//!
//! Calls `fuse` (attach), `union`, `store` and the sibling assembly helpers.

use super::{fuse_options, open_pinned, start, union_over, Error, Served, Services};
use crate::digest::Digest;
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A mount as a successor must serve it again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedMount {
    /// The image as asked for (shown in records).
    pub image: String,
    /// The manifest it resolved to when mounted (restored exactly, whatever the tag says now).
    pub manifest: Digest,
    pub mountpoint: PathBuf,
    /// (upper, work); none = read-only
    pub upper: Option<(PathBuf, PathBuf)>,
    pub prefetch: bool,
    pub passthrough: bool,
    /// The kernel accepted passthrough at the connection's INIT.
    pub passthrough_active: bool,
    pub allow_other: bool,
    /// The rootfs of a detached container: its init's (pid, start time); unmounted when
    /// that process is gone.
    #[serde(default)]
    pub container: Option<(i32, u64)>,
    /// A view of this one layer of the image (`mount::layer`), not the whole image.
    #[serde(default)]
    pub layer: Option<Digest>,
}

/// Where the saved form of the mount at `mountpoint` (canonical) is kept under `root`.
pub fn saved_path(root: &Path, mountpoint: &Path) -> PathBuf {
    super::record_path(root, mountpoint).with_extension("saved")
}

/// Every saved mount under `root` (unreadable ones are logged and skipped).
pub fn saved_mounts(store: &Store) -> Vec<SavedMount> {
    let dir = store.root().join("mounts");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "saved") {
            continue;
        }
        match store.read_json::<SavedMount>(&p) {
            Ok(Some(s)) => out.push(s),
            Ok(None) => {}
            Err(e) => tracing::warn!(path = %p.display(), "unreadable saved mount: {e}"),
        }
    }
    out
}

/// Start time (clock ticks after boot) of a running process, `None` if gone or a zombie:
/// with the pid it names one process, whatever pids are reused later.
pub fn process_start(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split(' ').collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

impl SavedMount {
    /// Keep it where a successor finds it.
    pub fn save(&self, store: &Store) -> Result<(), Error> {
        Ok(store.write_json(&saved_path(store.root(), &self.mountpoint), self)?)
    }

    /// Forget it (the mount is gone).
    pub fn remove(store: &Store, mountpoint: &Path) {
        let _ = std::fs::remove_file(saved_path(store.root(), mountpoint));
    }
}

/// A saved mount made ready to serve again: image open, union built over its upper; not
/// yet attached to its FUSE connection.
pub struct Prepared {
    fs: crate::union::UnionFs,
    lazy: Arc<super::LazyImage>,
    pub saved: SavedMount,
    started: std::time::Instant,
}

/// Open the image of `saved` (pinned to its manifest) and build its union. New file handles
/// will be numbered from `handle_base` (above every number an earlier server gave out).
pub async fn prepare(
    svc: &Services,
    saved: SavedMount,
    handle_base: u64,
) -> Result<Prepared, Error> {
    let started = std::time::Instant::now();
    let lazy = open_pinned(svc, &saved.image, saved.manifest).await?;
    let fs = match &saved.layer {
        Some(layer) => super::layer::layer_union(svc, &lazy, layer)?,
        None => union_over(&lazy, saved.upper.clone())?,
    };
    fs.set_handle_base(handle_base);
    Ok(Prepared {
        fs,
        lazy,
        saved,
        started,
    })
}

impl Prepared {
    /// Serve it on `device`, its FUSE connection (mounted, initialised, perhaps with requests
    /// of the dead server pending). The caller sends [`crate::fuse::resend`] once the earlier
    /// server is surely gone.
    pub fn attach(self, svc: &Services, device: OwnedFd) -> Result<Served, Error> {
        let s = &self.saved;
        let opts = match &s.layer {
            Some(layer) => super::layer::layer_options(&self.lazy, layer),
            None => fuse_options(&self.lazy, s.passthrough, s.allow_other),
        };
        let rt = tokio::runtime::Handle::current();
        let handle = crate::fuse::attach(
            Arc::new(self.fs),
            device,
            &s.mountpoint,
            opts,
            s.passthrough_active,
            rt,
        )?;
        let at = (self.started, svc.cache.stats.snapshot());
        Ok(start(svc, handle, self.lazy, s.prefetch, at))
    }
}
