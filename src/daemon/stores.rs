//! The daemon's podman additional layer stores (`strata store mount DIR`): each a FUSE
//! mount of an [`crate::als::LayerStore`] whose layer views are mounts of this daemon (made
//! through the snapshotter's `Mounter`, so they are handed over across restarts like any
//! other). A store mount itself is not handed over: the directories are listed in
//! `ROOT/als/stores.json`, and a new server mounts each again at start (the old one's
//! connection ends with it; podman retries nothing, but a lookup in the gap only makes it pull
//! that layer itself).
//!
//! Calls `als`, `fuse` (the store's adapter) and `snapshotter` (the `Mounter` trait).

use crate::als::LayerStore;
use crate::fuse::layer_store::StoreMount;
use crate::mount::Services;
use crate::snapshotter::Mounter;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const LIST: &str = "stores.json";

/// The store mounts of one daemon.
pub struct Stores {
    svc: Services,
    mounter: Arc<dyn Mounter>,
    mounts: Mutex<HashMap<PathBuf, (Arc<LayerStore>, StoreMount)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Stores {
    pub fn new(svc: Services, mounter: Arc<dyn Mounter>) -> Stores {
        Stores {
            svc,
            mounter,
            mounts: Mutex::new(HashMap::new()),
        }
    }

    fn dir(&self) -> PathBuf {
        self.svc.store.root().join("als")
    }

    fn save(&self) {
        let list: Vec<PathBuf> = lock(&self.mounts).keys().cloned().collect();
        let path = self.dir().join(LIST);
        let tmp = path.with_extension("tmp");
        let r = serde_json::to_vec(&list)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = r {
            tracing::warn!("saving {}: {e}", path.display());
        }
    }

    /// How many stores are mounted.
    pub fn len(&self) -> usize {
        lock(&self.mounts).len()
    }

    /// Mount a layer store at `dir` (an existing directory, not a mount point yet).
    pub fn mount(&self, dir: &Path) -> Result<PathBuf, String> {
        let mp = crate::mount::check_mountpoint(dir).map_err(|e| crate::report::chain(&e))?;
        self.mount_at(&mp)?;
        self.save();
        Ok(mp)
    }

    fn mount_at(&self, mp: &Path) -> Result<(), String> {
        let views = self.dir().join("views");
        std::fs::create_dir_all(&views).map_err(|e| format!("{}: {e}", views.display()))?;
        let store = LayerStore::new(self.svc.clone(), self.mounter.clone(), views);
        let rt = tokio::runtime::Handle::current();
        let m = crate::fuse::layer_store::mount_store(store.clone(), mp, rt)
            .map_err(|e| crate::report::chain(&e))?;
        tracing::info!(dir = %mp.display(), "additional layer store mounted");
        lock(&self.mounts).insert(mp.to_path_buf(), (store, m));
        Ok(())
    }

    /// Unmount the store at `dir`; its layer views stay mounted (podman's layers point into
    /// them) and are listed by the daemon like its other mounts.
    pub fn unmount(&self, dir: &Path) -> Result<PathBuf, String> {
        let mp = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let Some((store, m)) = lock(&self.mounts).remove(&mp) else {
            return Err(format!(
                "{} is not an additional layer store of this daemon",
                mp.display()
            ));
        };
        let views = store.views();
        m.unmount();
        self.save();
        tracing::info!(dir = %mp.display(), views = views.len(), "additional layer store unmounted");
        Ok(mp)
    }

    /// Mount again the stores an earlier server listed (a stale mount of its is detached
    /// first).
    pub fn restore(&self) {
        let path = self.dir().join(LIST);
        let Ok(raw) = std::fs::read(&path) else {
            return;
        };
        let list: Vec<PathBuf> = match serde_json::from_slice(&raw) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("{}: {e}", path.display());
                return;
            }
        };
        for mp in list {
            if crate::fuse::is_mounted(&mp) {
                let _ = nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH);
            }
            if let Err(e) = self.mount_at(&mp) {
                tracing::warn!(dir = %mp.display(), "additional layer store not mounted again: {e}");
            }
        }
        self.save();
    }

    /// Unmount every store (the daemon stops).
    pub fn unmount_all(&self) {
        let all: Vec<_> = lock(&self.mounts).drain().collect();
        for (_, (_, m)) in all {
            m.unmount();
        }
    }
}
