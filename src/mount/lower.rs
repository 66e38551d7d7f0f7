//! The union's lower side for a lazily loaded image: [`CacheLower`] serves one layer's file
//! bytes through the chunk cache, and [`AccessProfile`] notes which files a workload read, in
//! first-read order (kept as the image's profile, prefetched first at the next mount).
//!
//! Calls `cache` (reads) and `union` (the `LowerSource` trait it implements); no network of
//! its own, no FUSE.

use crate::cache::{CachedLayer, ChunkCache};
use crate::union::{LowerFile, LowerSource};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Which lower files a workload read, in first-read order: recorded during a mount, stored
/// per image, and prefetched first at the next mount of that image.
#[derive(Default)]
pub struct AccessProfile {
    seen: std::sync::Mutex<ProfileState>,
}

/// Files seen (cheap `Arc` keys: no allocation on the read path), and (layer, path) in
/// first-read order.
type ProfileState = (std::collections::HashSet<LowerFile>, Vec<(usize, String)>);

/// Most files a profile keeps.
pub(super) const PROFILE_MAX_FILES: usize = 100_000;

impl AccessProfile {
    pub(super) fn note(&self, file: &LowerFile) {
        let mut g = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if g.1.len() < PROFILE_MAX_FILES && !g.0.contains(file) {
            g.0.insert(file.clone());
            g.1.push((file.layer(), file.path().to_string()));
        }
    }

    /// Files in first-read order.
    pub fn files(&self) -> Vec<(usize, String)> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }
}

/// A lower layer whose bytes come through the chunk cache.
pub struct CacheLower {
    pub cache: Arc<ChunkCache>,
    pub layer: Arc<CachedLayer>,
    pub profile: Arc<AccessProfile>,
}

fn eio(msg: String) -> std::io::Error {
    std::io::Error::other(msg)
}

impl CacheLower {
    /// Virtual range of `[offset, offset+len)` of `file` (clamped), and where the file's bytes
    /// end (to bound readahead to this file). One index lookup.
    fn vrange(
        &self,
        file: &LowerFile,
        offset: u64,
        len: u32,
    ) -> std::io::Result<(std::ops::Range<u64>, u64)> {
        let (start, n) = file.clamp(offset, len);
        self.profile.note(file);
        let index = self.layer.layout.index();
        let entry = index.lookup(file.path()).ok_or_else(|| {
            eio(format!(
                "layer {}: {} not in index",
                self.layer.digest,
                file.path()
            ))
        })?;
        let layout = &self.layer.layout;
        let r = layout
            .file_range(&entry, start..start + n as u64)
            .map_err(eio)?;
        let end = layout
            .file_range(&entry, u64::MAX..u64::MAX)
            .map_err(eio)?
            .end;
        Ok((r, end))
    }
}

impl LowerSource for CacheLower {
    fn read(
        &self,
        file: &LowerFile,
        offset: u64,
        len: u32,
    ) -> BoxFuture<'static, std::io::Result<Bytes>> {
        let r = self.vrange(file, offset, len);
        let (cache, layer) = (self.cache.clone(), self.layer.clone());
        async move {
            let (r, file_end) = r?;
            if r.is_empty() {
                return Ok(Bytes::new());
            }
            cache.read_file(&layer, r, file_end).await.map_err(|e| {
                tracing::error!("lazy read failed: {e}");
                eio(e.to_string())
            })
        }
        .boxed()
    }

    fn try_read_local(
        &self,
        file: &LowerFile,
        offset: u64,
        len: u32,
    ) -> Option<std::io::Result<Bytes>> {
        let r = match self.vrange(file, offset, len) {
            Ok((r, _)) => r,
            Err(e) => return Some(Err(e)),
        };
        if r.is_empty() {
            return Some(Ok(Bytes::new()));
        }
        self.cache
            .try_read_local(&self.layer, r)
            .map(|res| res.map_err(|e| eio(e.to_string())))
    }

    fn local_path(&self, _file: &LowerFile) -> Option<PathBuf> {
        None
    }
}
