//! The union's lower side for a lazily loaded image: [`CacheLower`] serves one layer's file
//! bytes through the chunk cache, and [`AccessProfile`] notes which files a workload read, in
//! first-read order, and which parts of each (kept as the image's profile, prefetched first
//! at the next mount).
//!
//! Calls `cache` (reads; a failure's errno) and `union` (the `LowerSource` trait it
//! implements, `kind_errno` to carry that errno in an `io::Error` with the cause inside),
//! and takes a profile's size limits from `image::profile`; no network of its own, no FUSE.

use crate::cache::{CachedLayer, ChunkCache, Read};
use crate::image::profile::{Profile, Ranges};
use crate::union::{LowerFile, LowerRead, LowerSource};
use bytes::Bytes;
use futures::FutureExt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

/// Which lower files a workload read, in first-read order, and which parts of each: recorded
/// during a mount, stored per image, and prefetched first at the next mount of that image.
pub struct AccessProfile {
    seen: std::sync::Mutex<ProfileState>,
    /// When the mount began: parts read are noted during [`PROFILE_RANGES_FOR`] only.
    born: std::time::Instant,
}

impl Default for AccessProfile {
    fn default() -> Self {
        AccessProfile {
            seen: Default::default(),
            born: std::time::Instant::now(),
        }
    }
}

/// Files seen (cheap `Arc` keys: no allocation on the read path) with their place in the
/// profile, (layer, path) in first-read order, and the file offsets read of each.
#[derive(Default)]
struct ProfileState {
    index: std::collections::HashMap<LowerFile, usize>,
    files: Profile,
    ranges: Ranges,
    /// Ranges kept over all files.
    kept: usize,
}

/// Most files a profile keeps: as many as a published one may name.
const PROFILE_MAX_FILES: usize = crate::image::profile::MAX_PROFILE_FILES;
/// Read offsets are kept in granules of this many bytes (a range's ends rounded out to them):
/// what a prefetch needs is the spans, a few times larger.
const PROFILE_GRANULE: u64 = 64 << 10;
/// Most ranges a profile keeps over all its files (16 bytes each), as many as a published
/// one may hold; reads past it are not noted, and a file without ranges is prefetched by
/// its start.
const PROFILE_MAX_RANGES: usize = crate::image::profile::MAX_PROFILE_RANGES;
/// Parts read are noted this long after the mount began: a start is what a profile is for,
/// and the reads of a long-running container then pay no lock.
const PROFILE_RANGES_FOR: std::time::Duration = std::time::Duration::from_secs(120);

impl AccessProfile {
    /// Note `file` as read; whether it is new to this profile (the first read of that file
    /// during this mount, while the profile has room).
    pub(super) fn note(&self, file: &LowerFile) -> bool {
        let mut g = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if g.files.len() < PROFILE_MAX_FILES && !g.index.contains_key(file) {
            let at = g.files.len();
            g.index.insert(file.clone(), at);
            g.files.push((file.layer(), file.path().to_string()));
            g.ranges.push(Vec::new());
            return true;
        }
        false
    }

    /// Note that bytes `[offset, offset+len)` of `file` (noted before) were read: merged
    /// into the file's ranges, at [`PROFILE_GRANULE`].
    pub(super) fn note_read(&self, file: &LowerFile, offset: u64, len: u64) {
        if len == 0 || self.born.elapsed() > PROFILE_RANGES_FOR {
            return;
        }
        let a = offset - offset % PROFILE_GRANULE;
        let b = offset
            .saturating_add(len)
            .div_ceil(PROFILE_GRANULE)
            .saturating_mul(PROFILE_GRANULE);
        let mut g = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let ProfileState {
            index,
            ranges,
            kept,
            ..
        } = &mut *g;
        let Some(&i) = index.get(file) else {
            return;
        };
        if add_range(&mut ranges[i], a, b, *kept < PROFILE_MAX_RANGES) {
            *kept += 1;
        }
    }

    /// Files in first-read order, and the offsets read of each (ascending, merged), taken
    /// together so that the two lists stay aligned.
    pub fn snapshot(&self) -> (Profile, Ranges) {
        let g = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        (g.files.clone(), g.ranges.clone())
    }
}

/// Merge `[a, b)` into `ranges` (ascending, disjoint, not touching); a new range only when
/// `room`. Returns whether one was added.
fn add_range(ranges: &mut Vec<[u64; 2]>, a: u64, b: u64, room: bool) -> bool {
    // Most reads extend or fall in the last range (sequential reads, page faults nearby).
    if let Some(last) = ranges.last_mut() {
        if a <= last[1] && b >= last[0] && a >= last[0] {
            last[1] = last[1].max(b);
            return false;
        }
    }
    let at = ranges.partition_point(|r| r[1] < a);
    let mut end = at;
    while end < ranges.len() && ranges[end][0] <= b {
        end += 1;
    }
    if at < end {
        let merged = [ranges[at][0].min(a), ranges[end - 1][1].max(b)];
        ranges.splice(at..end, [merged]);
        return false;
    }
    if !room {
        return false;
    }
    ranges.insert(at, [a, b]);
    true
}

/// A lower layer whose bytes come through the chunk cache.
pub struct CacheLower {
    pub cache: Arc<ChunkCache>,
    pub layer: Arc<CachedLayer>,
    pub profile: Arc<AccessProfile>,
    /// Told when a file's first read shows an ELF header or a Python module (`warm.rs`).
    pub loads: Option<Arc<super::warm::LoadWarm>>,
    /// The runtime first reads answered locally spawn their notices on.
    pub rt: Option<tokio::runtime::Handle>,
}

/// A cache error as the `io::Error` the union carries to the FUSE adapter: the cause kept
/// inside, the kind naming the errno [`cache::Error::errno`](crate::cache::Error::errno)
/// chose (`TimedOut` for ETIMEDOUT, `StorageFull` for ENOSPC, `Other` for EIO). An errno no
/// kind stands for goes as the raw code, its cause logged first.
fn io_error(e: crate::cache::Error) -> std::io::Error {
    let code = e.errno();
    if code == libc::EIO {
        return std::io::Error::other(e);
    }
    let kind = std::io::Error::from_raw_os_error(code).kind();
    if crate::union::kind_errno(kind) == Some(code) {
        std::io::Error::new(kind, e)
    } else {
        tracing::warn!("lower read failed with errno {code}: {}", e.report());
        std::io::Error::from_raw_os_error(code)
    }
}

/// What an ELF object's first bytes are.
const ELF_MAGIC: &[u8] = b"\x7fELF";

impl CacheLower {
    /// The first read of `file` was answered from the local tiers: the same notices as after
    /// a fetch (the library warm-up, the sibling fetch), without making the read wait: the
    /// sibling fetch is spawned on the runtime the lower was made in.
    fn first_local_read(
        &self,
        file: &LowerFile,
        offset: u64,
        res: &Result<Bytes, crate::cache::Error>,
    ) {
        if let (Some(l), Ok(b), 0) = (&self.loads, res, offset) {
            if b.starts_with(ELF_MAGIC) || super::python::is_module(file.path(), b) {
                l.loaded(file.path());
            }
        }
        let guided = self.loads.as_ref().is_some_and(|l| l.guided());
        if let (true, false, Some(rt)) = (self.cache.wants_first_reads(), guided, &self.rt) {
            let (cache, layer, path) = (
                self.cache.clone(),
                self.layer.clone(),
                file.path().to_string(),
            );
            rt.spawn(async move {
                cache.first_read(&layer, &path);
            });
        }
    }

    /// Virtual range of `[offset, offset+len)` of `file` (clamped), where the file's bytes
    /// end (to bound readahead to this file), and whether this is the file's first read in
    /// this mount. The file's extent is resolved (one index lookup by path) the first time an
    /// open file is read and kept with its `LowerFile`; that first read also notes the file in
    /// the access profile.
    fn vrange(
        &self,
        file: &LowerFile,
        offset: u64,
        len: u32,
    ) -> std::io::Result<(Range<u64>, u64, bool)> {
        let mut first = false;
        let ext = file.extent(|f| {
            first = self.profile.note(f);
            self.layer.file_extent(f.path()).map_err(io_error)
        })?;
        let (start, n) = file.clamp(offset, len);
        self.profile.note_read(file, start, n as u64);
        let size = ext.end - ext.start;
        let a = ext.start + start.min(size);
        let b = ext.start + start.saturating_add(n as u64).min(size);
        Ok((a..b, ext.end, first))
    }
}

impl LowerSource for CacheLower {
    /// The local tiers are looked at once: a hit answers at once, a miss gets the future
    /// that fetches only the spans that were missing. A file's first read also tells the
    /// cache ([`ChunkCache::first_read`]: the sibling fetch), from inside the runtime, after
    /// the read's own fetches started; and, when it starts at offset 0 and shows an ELF
    /// header or a Python module, the image's [`LoadWarm`](super::warm::LoadWarm). A local hit never waits for
    /// either.
    fn start_read(&self, file: &LowerFile, offset: u64, len: u32) -> LowerRead {
        let (r, file_end, first) = match self.vrange(file, offset, len) {
            Ok(v) => v,
            Err(e) => return LowerRead::Ready(Err(e)),
        };
        let read = if r.is_empty() {
            Read::Local(Ok(Bytes::new()))
        } else {
            self.cache.start_read_file(&self.layer, r, file_end)
        };
        let f = match read {
            Read::Local(res) => {
                if first {
                    self.first_local_read(file, offset, &res);
                }
                return LowerRead::Ready(res.map_err(io_error));
            }
            Read::Fetch(f) => f,
        };
        let path = file.path().to_string();
        let (cache, layer) = (self.cache.clone(), self.layer.clone());
        let loads = self.loads.clone().filter(|_| first && offset == 0);
        // A recorded profile guiding the fetches stands in for the sibling fetch.
        let siblings = first && !self.loads.as_ref().is_some_and(|l| l.guided());
        LowerRead::Pending(
            async move {
                let t0 = std::time::Instant::now();
                let mut f = std::pin::pin!(f);
                let polled = futures::poll!(f.as_mut());
                if siblings && cache.wants_first_reads() {
                    cache.first_read(&layer, &path);
                }
                let res = match polled {
                    std::task::Poll::Ready(res) => res,
                    std::task::Poll::Pending => f.await,
                };
                tracing::trace!(path = %path, offset, ms = t0.elapsed().as_secs_f64() * 1e3, "lazy read waited");
                if let (Some(l), Ok(b)) = (&loads, &res) {
                    if b.starts_with(ELF_MAGIC) || super::python::is_module(&path, b) {
                        l.loaded(&path);
                    }
                }
                res.map_err(|e| {
                    tracing::error!("lazy read failed: {}", e.report());
                    io_error(e)
                })
            }
            .boxed(),
        )
    }

    fn local_path(&self, _file: &LowerFile) -> Option<PathBuf> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::add_range;

    /// Ranges stay ascending, disjoint and merged; none is added without room, but a read
    /// inside or next to a kept range still widens it.
    #[test]
    fn read_ranges_merge_and_stay_bounded() {
        let mut r = Vec::new();
        assert!(add_range(&mut r, 0, 10, true));
        assert!(!add_range(&mut r, 5, 20, true));
        assert!(add_range(&mut r, 40, 50, true));
        assert!(add_range(&mut r, 30, 35, true));
        assert_eq!(r, vec![[0, 20], [30, 35], [40, 50]]);
        assert!(!add_range(&mut r, 20, 30, true));
        assert_eq!(r, vec![[0, 35], [40, 50]]);
        assert!(!add_range(&mut r, 100, 110, false));
        assert!(!add_range(&mut r, 45, 60, false));
        assert_eq!(r, vec![[0, 35], [40, 60]]);
        assert!(!add_range(&mut r, 0, 100, true));
        assert_eq!(r, vec![[0, 100]]);
    }
}
