//! The containerd remote snapshotter: containerd's snapshots API (a proxy snapshot plugin,
//! gRPC over `ROOT/containerd-snapshotter.sock`, served by the daemon through the
//! `containerd-snapshots` crate's tonic service). A layer snapshot that containerd prepares
//! with the CRI labels (`containerd.io/snapshot/cri.image-ref`, `cri.manifest-digest`,
//! `cri.layer-digest`, `containerd.io/snapshot.ref`) of an image whose every layer has a lazy
//! index (eStargz TOC, strata sidecar, or one built before) becomes a *remote* snapshot: that
//! layer mounted alone, lazily, read-only in overlay format (`mount::layer`), committed at
//! once (containerd is told AlreadyExists and never downloads the blob). Everything else is a
//! plain overlay snapshotter: directories on disk (`ROOT/snapshots/<id>/fs`) that containerd
//! fills by extracting layers, and active snapshots as kernel overlayfs mounts over the
//! parents' directories or layer views. An active snapshot whose parents are exactly the
//! layers of an image served lazily is instead (config `snapshotter-rootfs: union`, the
//! default) one strata union mount of the whole image at `<dir>/rootfs` with its upper in
//! `<dir>/fs`, handed to containerd as a bind mount ([`union`]). Metadata is persistent
//! ([`meta`]); layer views and union mounts are daemon mounts (handed over across server
//! restarts like any other) and mounted again when a new daemon starts.
//!
//! Calls `image` (resolve, which layers have lazy indexes), `store`, and the daemon through
//! the [`Mounter`] it passes in (layer views and unions are daemon mounts); nothing here
//! names FUSE.

mod grpc;
pub mod meta;
mod remote;
mod union;

pub use grpc::serve;

use crate::digest::Digest;
use crate::mount::Services;
use futures::future::BoxFuture;
use meta::{Kind, Meta, Record, Remote};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The socket containerd's `proxy_plugins` entry points at.
pub const SOCKET: &str = "containerd-snapshotter.sock";

/// Label containerd sets on a layer's Prepare: the name the committed snapshot will have.
pub const TARGET_LABEL: &str = "containerd.io/snapshot.ref";
pub const IMAGE_REF_LABEL: &str = "containerd.io/snapshot/cri.image-ref";
pub const MANIFEST_LABEL: &str = "containerd.io/snapshot/cri.manifest-digest";
pub const LAYER_LABEL: &str = "containerd.io/snapshot/cri.layer-digest";
/// Set on remote snapshots (as stargz-snapshotter does), for people reading `ctr snapshot info`.
pub const REMOTE_LABEL: &str = "containerd.io/snapshot/remote";

/// Where an active snapshot's union mount is, in its directory.
const ROOTFS: &str = "rootfs";

/// Why a snapshot operation failed; each maps to the gRPC code containerd expects.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("snapshot {0} not found")]
    NotFound(String),
    #[error("snapshot {0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error(transparent)]
    Image(#[from] crate::image::Error),
    #[error("{}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How the snapshotter has a layer view mounted and unmounted: by the daemon, so the mount
/// is one of its own (handed over to a new server, counted, shut down in order).
pub trait Mounter: Send + Sync + 'static {
    /// Mount layer `layer` of `image` (pinned) read-only at `mountpoint`.
    fn mount_layer(
        &self,
        image: String,
        layer: Digest,
        mountpoint: PathBuf,
    ) -> BoxFuture<'static, Result<(), crate::mount::Error>>;
    /// Mount `image` (pinned) as a writable union at `mountpoint`, its (upper, work)
    /// directories given, reading `warm` at once.
    fn mount_image(
        &self,
        image: String,
        upper: (PathBuf, PathBuf),
        mountpoint: PathBuf,
        warm: crate::mount::warm::WarmList,
    ) -> BoxFuture<'static, Result<(), crate::mount::Error>>;
    /// Unmount it (detached: overlay mounts of containers may still hold it).
    fn unmount(&self, mountpoint: PathBuf) -> BoxFuture<'static, Result<(), crate::mount::Error>>;
}

/// The snapshotter of one root.
pub struct Snapshotter {
    svc: Services,
    meta: Mutex<Meta>,
    mounter: Arc<dyn Mounter>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One mount as containerd's API carries it.
pub struct MountSpec {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

impl Snapshotter {
    /// Open the snapshotter of `svc`'s root (its metadata).
    pub fn open(svc: Services, mounter: Arc<dyn Mounter>) -> Result<Arc<Snapshotter>, Error> {
        let meta = Meta::open(&svc.store)?;
        Ok(Arc::new(Snapshotter {
            svc,
            meta: Mutex::new(meta),
            mounter,
        }))
    }

    fn meta(&self) -> std::sync::MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where a remote snapshot's layer view is mounted.
    fn view_dir(&self, id: u64) -> PathBuf {
        self.meta().dir_of(id).join("layer")
    }

    /// Mount again every remote layer whose view is not mounted (after the daemon was
    /// stopped, or a crash of the supervisor). A view handed over to this server is mounted
    /// already and left alone. Failures are logged: the snapshot stays, its mounts fail.
    pub async fn reattach(&self) {
        self.reattach_layers().await;
        let unions: Vec<(String, u64, String)> = self
            .meta()
            .all()
            .filter_map(|(k, r)| Some((k.clone(), r.id, r.union.clone()?)))
            .collect();
        for (key, id, image) in unions {
            let dir = self.meta().dir_of(id);
            if crate::mount::is_mounted(&dir.join(ROOTFS)) {
                continue;
            }
            match self.mount_union(&dir, image, Vec::new()).await {
                Ok(()) => tracing::info!(snapshot = %key, "union mount mounted again"),
                Err(e) => tracing::error!(
                    snapshot = %key,
                    "cannot mount the union again: {}",
                    crate::report::chain(&e)
                ),
            }
        }
    }

    async fn mount_union(
        &self,
        dir: &Path,
        image: String,
        warm: crate::mount::warm::WarmList,
    ) -> Result<(), crate::mount::Error> {
        let upper = (dir.join("fs"), dir.join("work"));
        self.mounter
            .mount_image(image, upper, dir.join(ROOTFS), warm)
            .await
    }

    async fn reattach_layers(&self) {
        let remote: Vec<(String, u64, Remote)> = self
            .meta()
            .all()
            .filter_map(|(k, r)| Some((k.clone(), r.id, r.remote.clone()?)))
            .collect();
        for (key, id, r) in remote {
            let mp = self.view_dir(id);
            if crate::mount::is_mounted(&mp) {
                continue;
            }
            match self.mounter.mount_layer(r.image, r.layer, mp).await {
                Ok(()) => tracing::info!(snapshot = %key, "remote layer mounted again"),
                Err(e) => tracing::error!(
                    snapshot = %key,
                    "cannot mount the remote layer again: {}",
                    crate::report::chain(&e)
                ),
            }
        }
    }

    /// The record of `key`.
    pub fn stat(&self, key: &str) -> Result<(String, Record), Error> {
        Ok((key.to_string(), self.meta().get(key)?.clone()))
    }

    /// Every snapshot.
    pub fn list(&self) -> Vec<(String, Record)> {
        self.meta()
            .all()
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect()
    }

    pub fn update(
        &self,
        key: &str,
        labels: HashMap<String, String>,
        fields: &[String],
    ) -> Result<Record, Error> {
        let store = self.svc.store.clone();
        self.meta().update_labels(&store, key, labels, fields)
    }

    /// Bytes and inodes a snapshot uses on disk: its own directory (a remote layer's bytes
    /// are in the shared chunk cache and count nowhere here).
    pub async fn usage(&self, key: &str) -> Result<(i64, i64), Error> {
        let (rec, dir) = {
            let m = self.meta();
            let rec = m.get(key)?.clone();
            let dir = m.dir_of(rec.id).join("fs");
            (rec, dir)
        };
        if rec.remote.is_some() {
            return Ok((0, 0));
        }
        let r = tokio::task::spawn_blocking(move || du(&dir)).await;
        Ok(r.unwrap_or((0, 0)))
    }

    /// The mounts that make snapshot `key` (active: writable; view: read-only).
    pub fn mounts(&self, key: &str) -> Result<Vec<MountSpec>, Error> {
        let m = self.meta();
        let rec = m.get(key)?;
        let lowers: Vec<PathBuf> = m
            .parents(key)?
            .into_iter()
            .map(|(_, p)| lower_dir(&m, p))
            .collect();
        let dir = m.dir_of(rec.id);
        let s = |p: &Path| p.to_string_lossy().into_owned();
        if rec.kind == Kind::Committed {
            return Err(Error::Precondition(format!(
                "{key} is committed: only active snapshots and views have mounts"
            )));
        }
        let lowerdir = lowers.iter().map(|p| s(p)).collect::<Vec<_>>().join(":");
        if rec.kind == Kind::Active && rec.union.is_some() {
            return Ok(vec![MountSpec {
                kind: "bind".into(),
                source: s(&dir.join(ROOTFS)),
                options: vec!["rw".into(), "rbind".into()],
            }]);
        }
        Ok(vec![match (rec.kind, lowers.len()) {
            (Kind::Active, 0) => MountSpec {
                kind: "bind".into(),
                source: s(&dir.join("fs")),
                options: vec!["rw".into(), "rbind".into()],
            },
            (Kind::Active, _) => MountSpec {
                kind: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    format!("workdir={}", s(&dir.join("work"))),
                    format!("upperdir={}", s(&dir.join("fs"))),
                    format!("lowerdir={lowerdir}"),
                ],
            },
            (_, 0) => MountSpec {
                kind: "bind".into(),
                source: s(&dir.join("fs")),
                options: vec!["ro".into(), "rbind".into()],
            },
            (_, 1) => MountSpec {
                kind: "bind".into(),
                source: lowerdir,
                options: vec!["ro".into(), "rbind".into()],
            },
            _ => MountSpec {
                kind: "overlay".into(),
                source: "overlay".into(),
                options: vec![format!("lowerdir={lowerdir}")],
            },
        }])
    }

    /// Prepare (`kind` Active) or View snapshot `key` over `parent`. A layer snapshot with the
    /// CRI labels may become a remote snapshot instead: then the answer is AlreadyExists for
    /// the target name, as containerd expects.
    pub async fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<MountSpec>, Error> {
        let unpacking = labels.contains_key(TARGET_LABEL);
        if kind == Kind::Active {
            if let Some(target) = labels.get(TARGET_LABEL).cloned() {
                if self.meta().contains(&target) {
                    return Err(Error::AlreadyExists(target));
                }
                if self.try_remote(&target, parent, &labels).await {
                    return Err(Error::AlreadyExists(target));
                }
            }
        }
        let store = self.svc.store.clone();
        let rec = self.meta().add(&store, key, kind, parent, labels, None)?;
        let dir = self.meta().dir_of(rec.id);
        let made = ["fs", "work"].iter().try_for_each(|d| {
            let p = dir.join(d);
            std::fs::create_dir_all(&p).map_err(io(&p))
        });
        if let Err(e) = made {
            let _ = self.meta().remove(&store, key);
            return Err(e);
        }
        // A container's rootfs, not a layer being unpacked (those name their target).
        if kind == Kind::Active
            && !unpacking
            && self.svc.config.snapshotter_rootfs == crate::config::SnapshotterRootfs::Union
        {
            self.try_union(key, &dir).await;
        }
        self.mounts(key)
    }

    /// Serve active snapshot `key` (directory `dir`) as one union mount of its image if its
    /// parents are that image's layers, all lazily served; otherwise (or if the mount fails)
    /// it stays a kernel overlayfs snapshot.
    async fn try_union(&self, key: &str, dir: &Path) {
        let chain: Vec<Record> = match self.meta().parents(key) {
            Ok(p) => p.into_iter().map(|(_, r)| r.clone()).collect(),
            Err(_) => return,
        };
        let img = match union::whole_image(&self.svc, &chain).await {
            Ok(Some(i)) => i,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(snapshot = %key, "no union mount (kernel overlayfs instead): {}", crate::report::chain(&e));
                return;
            }
        };
        let store = self.svc.store.clone();
        let mp = dir.join(ROOTFS);
        if let Err(e) = std::fs::create_dir_all(&mp) {
            tracing::warn!(snapshot = %key, "creating {}: {e}", mp.display());
            return;
        }
        // Recorded first: a crash between the two leaves a record that `reattach` mounts.
        if let Err(e) = self.meta().set_union(&store, key, Some(img.image.clone())) {
            tracing::warn!(snapshot = %key, "recording the union mount: {e}");
            return;
        }
        match self.mount_union(dir, img.image.clone(), img.warm).await {
            Ok(()) => tracing::info!(snapshot = %key, image = %img.image, "union mount"),
            Err(e) => {
                tracing::warn!(snapshot = %key, "union mount failed (kernel overlayfs instead): {}", crate::report::chain(&e));
                let _ = self.meta().set_union(&store, key, None);
            }
        }
    }

    /// Make `target` a remote snapshot if its layer can be served lazily; whether it is one.
    async fn try_remote(
        &self,
        target: &str,
        parent: &str,
        labels: &HashMap<String, String>,
    ) -> bool {
        let remote = match remote::lazy_layer(&self.svc, labels).await {
            Ok(Some(r)) => r,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(snapshot = %target, "no remote snapshot (the layer will be extracted): {}", crate::report::chain(&e));
                return false;
            }
        };
        let store = self.svc.store.clone();
        let mut labels = labels.clone();
        labels.insert(REMOTE_LABEL.into(), "remote snapshot".into());
        let rec = match self.meta().add(
            &store,
            target,
            Kind::Committed,
            parent,
            labels,
            Some(remote.clone()),
        ) {
            Ok(r) => r,
            // Prepared meanwhile by another pull of the same layer: that one serves.
            Err(Error::AlreadyExists(_)) => return true,
            Err(e) => {
                tracing::warn!(snapshot = %target, "recording a remote snapshot: {e}");
                return false;
            }
        };
        let mp = self.view_dir(rec.id);
        if let Err(e) = std::fs::create_dir_all(&mp) {
            tracing::warn!(snapshot = %target, "creating {}: {e}", mp.display());
            let _ = self.meta().remove(&store, target);
            return false;
        }
        match self
            .mounter
            .mount_layer(remote.image.clone(), remote.layer, mp)
            .await
        {
            Ok(()) => {
                tracing::info!(snapshot = %target, image = %remote.image, layer = %remote.layer, "remote snapshot");
                true
            }
            Err(e) => {
                tracing::warn!(snapshot = %target, "mounting the layer view failed (the layer will be extracted): {}", crate::report::chain(&e));
                let _ = self.meta().remove(&store, target);
                let _ = std::fs::remove_dir_all(self.meta().dir_of(rec.id));
                false
            }
        }
    }

    /// Commit active snapshot `key` as `name`; a union mount is unmounted first (its upper
    /// directory, in overlay format, is the committed layer's directory).
    pub async fn commit(
        &self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), Error> {
        let store = self.svc.store.clone();
        let union_dir = {
            let m = self.meta();
            let rec = m.get(key)?;
            rec.union.as_ref().map(|_| m.dir_of(rec.id))
        };
        if let Some(dir) = union_dir {
            let mp = dir.join(ROOTFS);
            if crate::mount::is_mounted(&mp) {
                if let Err(e) = self.mounter.unmount(mp).await {
                    tracing::warn!(snapshot = %key, "unmounting the union: {e}");
                }
            }
        }
        self.meta().commit(&store, name, key, labels)
    }

    /// Remove `key` and its directory (a remote layer's view is unmounted first).
    pub async fn remove(&self, key: &str) -> Result<(), Error> {
        let store = self.svc.store.clone();
        let (rec, dir) = {
            let mut m = self.meta();
            let rec = m.remove(&store, key)?;
            let dir = m.dir_of(rec.id);
            (rec, dir)
        };
        for (there, sub) in [
            (rec.remote.is_some(), "layer"),
            (rec.union.is_some(), ROOTFS),
        ] {
            let mp = dir.join(sub);
            if there && crate::mount::is_mounted(&mp) {
                if let Err(e) = self.mounter.unmount(mp.clone()).await {
                    tracing::warn!(snapshot = %key, "unmounting {}: {e}", mp.display());
                }
            }
        }
        tokio::task::spawn_blocking(move || remove_dir(&dir))
            .await
            .unwrap_or(Ok(()))
    }

    /// Remove directories no snapshot names (left by a crash between two steps).
    pub async fn cleanup(&self) -> Result<(), Error> {
        let orphans = self.meta().orphans();
        for d in orphans {
            for sub in ["layer", ROOTFS] {
                let mp = d.join(sub);
                if crate::mount::is_mounted(&mp) {
                    let _ = self.mounter.unmount(mp).await;
                }
            }
            tokio::task::spawn_blocking(move || remove_dir(&d))
                .await
                .unwrap_or(Ok(()))?;
        }
        Ok(())
    }
}

/// The directory a committed snapshot contributes as an overlay lower.
fn lower_dir(m: &Meta, rec: &Record) -> PathBuf {
    let dir = m.dir_of(rec.id);
    match rec.remote {
        Some(_) => dir.join("layer"),
        None => dir.join("fs"),
    }
}

/// Remove a snapshot directory, never crossing into a mount still there.
fn remove_dir(dir: &Path) -> Result<(), Error> {
    for sub in ["layer", ROOTFS] {
        let mp = dir.join(sub);
        if crate::mount::is_mounted(&mp) {
            let _ = nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(dir)(e)),
    }
}

/// (bytes, inodes) under `dir`, not crossing mounts.
fn du(dir: &Path) -> (i64, i64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return (0, 0);
    };
    let dev = top.dev();
    let (mut bytes, mut inodes) = (0i64, 0i64);
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&p) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev || !seen.insert(m.ino()) {
                continue;
            }
            inodes += 1;
            bytes += (m.blocks() * 512) as i64;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes + 1)
}
