//! A mounted image served by this process ([`Served`]): its counters as a [`MountRecord`]
//! (published under `ROOT/mounts/` for `strata stats`), the serving loop that ends when the
//! mount goes away, and the orderly shutdown (prefetch stopped, profile kept, cache flushed,
//! FUSE session ended).
//!
//! Calls `fuse` (the mount handle), `cache`, `store` and the sibling `lazy`/`prefetch`.

use super::lazy::LazyImage;
use super::prefetch::{save_profile, ProfileProgress};
use crate::digest::Digest;
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What a serving process publishes for `strata stats`.
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
    /// The shared cache's counters when the mount was asked for (before the image was
    /// opened: what opening it fetched counts as the mount's).
    #[serde(default)]
    pub cache_at_start: Option<crate::cache::StatsSnapshot>,
    pub fs_reads: u64,
    pub fs_bytes_read: u64,
    pub fs_reads_waited: u64,
    pub copy_ups: u64,
    pub prefetch_done: bool,
    /// The access profile prefetched first (source, files, done).
    #[serde(default)]
    pub profile: ProfileProgress,
    pub ready_ms: u64,
}

/// Where the record of the mount at `mountpoint` (canonical) is kept under `root`.
pub fn record_path(root: &Path, mountpoint: &Path) -> PathBuf {
    let key = Digest::of(mountpoint.as_os_str().as_encoded_bytes()).short();
    root.join("mounts").join(format!("{key}.json"))
}

/// The published record of the mount at `mountpoint` (canonical), if there is one.
pub fn read_record(store: &Store, mountpoint: &Path) -> Result<Option<MountRecord>, super::Error> {
    Ok(store.read_json(&record_path(store.root(), mountpoint))?)
}

/// A mounted image served by this process.
pub struct Served {
    pub handle: crate::fuse::MountHandle,
    pub lazy: Arc<LazyImage>,
    pub cache: Arc<crate::cache::ChunkCache>,
    pub record_path: PathBuf,
    pub started: std::time::Instant,
    /// The cache's counters when the mount was asked for.
    pub cache_at_start: crate::cache::StatsSnapshot,
    pub prefetch: Option<tokio::task::JoinHandle<()>>,
    pub prefetch_done: Arc<AtomicBool>,
}

impl Served {
    pub fn record(&self, ready_ms: u64) -> MountRecord {
        let fs = self.handle.stats();
        MountRecord {
            mountpoint: self.handle.mountpoint().to_path_buf(),
            image: self.lazy.reference.to_string(),
            manifest: self.lazy.record.manifest_digest,
            pid: std::process::id(),
            index_sources: self.index_sources(),
            image_bytes: self.lazy.record.size(),
            layer_spans: self.lazy.layers.iter().map(|l| l.layout.count()).sum(),
            cache: self.cache.stats.snapshot(),
            cache_at_start: Some(self.cache_at_start.clone()),
            fs_reads: fs.reads,
            fs_bytes_read: fs.bytes_read,
            fs_reads_waited: fs.lower_reads_waited,
            copy_ups: fs.copy_ups,
            prefetch_done: self.prefetch_done.load(Ordering::Relaxed),
            profile: self.lazy.profile_prefetch.snapshot(),
            ready_ms,
        }
    }

    /// Where each layer's index came from, as `strata stats` shows it.
    pub fn index_sources(&self) -> Vec<String> {
        self.lazy
            .index_sources
            .iter()
            .map(|s| format!("{s:?}"))
            .collect()
    }

    /// The status line a mount prints when it is ready: `IMAGE mounted at DIR in N ms`, and
    /// how many layers had no lazy index (downloaded whole).
    pub fn status_line(&self, ready_ms: u64) -> String {
        let whole = self
            .lazy
            .index_sources
            .iter()
            .filter(|s| matches!(s, crate::image::index::IndexSource::Built))
            .count();
        format!(
            "{} mounted at {} in {ready_ms} ms{}",
            self.lazy.reference,
            self.handle.mountpoint().display(),
            if whole > 0 {
                format!(" ({whole} layer(s) were downloaded whole: no lazy index)")
            } else {
                String::new()
            }
        )
    }

    /// Write the record for `strata stats` (best effort: a failure is logged).
    pub fn publish(&self, store: &Store, ready_ms: u64) {
        if let Some(dir) = self.record_path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = store.write_json(&self.record_path, &self.record(ready_ms)) {
            tracing::warn!("writing mount stats: {e}");
        }
    }

    /// Serve until the mount goes away (umount from outside) or `stop` completes (see
    /// [`watch`](Self::watch)); then shut down.
    pub async fn serve_until(
        self,
        store: &Store,
        ready_ms: u64,
        stop: impl std::future::Future<Output = ()>,
    ) {
        self.watch(store, ready_ms, stop).await;
        self.shutdown(store).await;
    }

    /// Publish the record twice a second until the mount goes away (umount from outside) or
    /// `stop` completes.
    pub async fn watch(
        &self,
        store: &Store,
        ready_ms: u64,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let mp = self.handle.mountpoint();
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {
                    self.publish(store, ready_ms);
                    if !super::is_mounted(mp) {
                        return;
                    }
                }
            }
        }
    }

    /// Stop prefetching, keep the access profile, flush the cache's pending writes, remove
    /// the published record and end the FUSE session (unmounting if still mounted).
    pub async fn shutdown(mut self, store: &Store) {
        if let Some(p) = self.prefetch.take() {
            // Wait for the task to be gone, so that it no longer holds the image open.
            p.abort();
            let _ = p.await;
        }
        save_profile(store, &self.lazy);
        self.cache.flush().await;
        let _ = std::fs::remove_file(&self.record_path);
        let handle = self.handle;
        tokio::task::spawn_blocking(move || drop(handle)).await.ok();
    }
}
