//! How a layer's verified units ("spans") map to compressed bytes, for both kinds of index:
//! seek-table spans (plain tar, gzip checkpoints, zstd frames) and eStargz chunks. Calls
//! `layer` (seek tables, eStargz chunk decoding) and `learned.rs` (the block digests a SOCI
//! zTOC's index lacks, learned at the first decode) and nothing else; its only other I/O is
//! reading back the local copies of a head-only index's block record groups (format 5,
//! `<index file>.groups/<group>`, written by the fetch that brought them).
//!
//! Both are seen through one coordinate: a *virtual uncompressed offset*. For seek-table
//! layers it is the offset in the uncompressed tar stream (a file's bytes start at its entry's
//! `offset`); for eStargz it is the position in the concatenation of all chunks in index order
//! (a file's chunks are consecutive, so its bytes are one contiguous virtual range).

use super::learned::Learned;
use crate::layer::{EntryKind, EntryRef, LayerIndex, SpanCheck, Window};
use sha2::{Digest as _, Sha256};
use std::ops::Range;
use std::sync::Arc;

/// Why a layout could not map or decode a range: the layer decoder's error (a digest
/// mismatch names its span or block and both digests) or an index that cannot serve it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    #[error(transparent)]
    Layer(Arc<crate::layer::Error>),
    #[error("range {range:?} beyond the layer's {total} chunk bytes")]
    BeyondChunks { range: Range<u64>, total: u64 },
    #[error("index has neither a seek table nor chunks")]
    NoSpans,
    #[error("{path}: hard link target not in this layer")]
    LinkTarget { path: String },
    #[error("{path}: not a regular file")]
    NotAFile { path: String },
    #[error("{path}: no chunks for a {size}-byte file")]
    NoChunks { path: String, size: u64 },
    #[error("{path}: file extends beyond any layer offset")]
    Overflow { path: String },
}

impl From<crate::layer::Error> for LayoutError {
    fn from(e: crate::layer::Error) -> Self {
        LayoutError::Layer(Arc::new(e))
    }
}

/// A layer's spans; see the module docs.
pub struct Layout {
    index: Arc<LayerIndex>,
    /// eStargz only: virtual start of each chunk, plus the total at the end.
    chunk_starts: Option<Vec<u64>>,
    /// A seek table without block digests (SOCI): the ones its decodes produced.
    learned: Option<Learned>,
    /// A head-only index (format 5): where local copies of its block record groups are.
    groups_dir: Option<std::path::PathBuf>,
}

impl Layout {
    pub fn new(index: Arc<LayerIndex>) -> Layout {
        let chunk_starts = index.meta().estargz.then(|| {
            let mut n = 0usize;
            for e in index.entries() {
                if e.kind() == EntryKind::File {
                    n = n.max(index.chunks_of(e.index()).end);
                }
            }
            let mut starts = Vec::with_capacity(n + 1);
            let mut at = 0u64;
            for i in 0..n {
                starts.push(at);
                at += index.chunk_at(i).size;
            }
            starts.push(at);
            starts
        });
        let learned = index
            .seek_table()
            .filter(|t| t.check == SpanCheck::Compressed && chunk_starts.is_none())
            .map(|t| {
                let mut p = index.path().as_os_str().to_owned();
                p.push(".blocks");
                let identity = <[u8; 32]>::from(Sha256::digest(t.encode()));
                Learned::open(std::path::Path::new(&p), t.block_count(), identity)
            });
        let groups_dir = index.seek_table().filter(|t| !t.blocks_local()).map(|_| {
            let mut p = index.path().as_os_str().to_owned();
            p.push(".groups");
            std::path::PathBuf::from(p)
        });
        Layout {
            index,
            chunk_starts,
            learned,
            groups_dir,
        }
    }

    /// The block record groups spans `spans` need that are not loaded (a head-only index):
    /// what to get before decoding them. No I/O: the fetch gets them through the sidecar's
    /// `RemoteWindows`, which looks at the local copies first.
    pub fn groups_missing(&self, spans: Range<usize>) -> Vec<usize> {
        match self.index.seek_table() {
            Some(t) if self.chunk_starts.is_none() => t.groups_missing(spans),
            _ => Vec::new(),
        }
    }

    /// Load the local copies of the groups spans `spans` need (a head-only index read back
    /// after a restart, whose cached spans are verified without a fetch); a copy that fails
    /// its group sha256 is left out.
    fn load_local_groups(&self, spans: Range<usize>) {
        let (Some(t), Some(dir)) = (self.index.seek_table(), &self.groups_dir) else {
            return;
        };
        for g in t.groups_missing(spans) {
            if let Ok(b) = std::fs::read(dir.join(g.to_string())) {
                let _ = t.load_group(g, &b);
            }
        }
    }

    /// Byte range of block record group `grp` in the sidecar's block section and its sha256.
    pub fn group(&self, grp: usize) -> Option<(Range<u64>, [u8; 32])> {
        self.index.seek_table()?.group(grp)
    }

    /// Check fetched block record group `grp` against the head and keep it.
    pub fn load_group(&self, grp: usize, bytes: &[u8]) -> Result<(), LayoutError> {
        match self.index.seek_table() {
            Some(t) => Ok(t.load_group(grp, bytes)?),
            None => Ok(()),
        }
    }

    pub fn index(&self) -> &Arc<LayerIndex> {
        &self.index
    }

    /// Number of spans.
    pub fn count(&self) -> usize {
        match (&self.chunk_starts, self.index.seek_table()) {
            (Some(s), _) => s.len() - 1,
            (None, Some(t)) => t.checkpoints.len(),
            (None, None) => 0,
        }
    }

    /// Virtual range of span `i`.
    pub fn span_range(&self, i: usize) -> Range<u64> {
        match (&self.chunk_starts, self.index.seek_table()) {
            (Some(s), _) => s[i]..s[i + 1],
            (None, Some(t)) => t.span_range(i),
            (None, None) => 0..0,
        }
    }

    /// Spans covering a virtual range.
    pub fn locate(&self, r: Range<u64>) -> Result<Range<usize>, LayoutError> {
        if r.is_empty() {
            return Ok(0..0);
        }
        match (&self.chunk_starts, self.index.seek_table()) {
            (Some(s), _) => {
                let total = s[s.len() - 1];
                if r.end > total {
                    return Err(LayoutError::BeyondChunks { range: r, total });
                }
                let a = s.partition_point(|&x| x <= r.start) - 1;
                let b = s.partition_point(|&x| x < r.end);
                Ok(a..b)
            }
            (None, Some(t)) => Ok(t.span_plan(r)?.spans),
            (None, None) => Err(LayoutError::NoSpans),
        }
    }

    /// Whether spans `i` and `i + 1` can be fetched by one Range request.
    pub fn adjacent(&self, i: usize) -> bool {
        match &self.chunk_starts {
            Some(_) => {
                self.index.chunk_at(i).compressed.end == self.index.chunk_at(i + 1).compressed.start
            }
            None => true,
        }
    }

    /// Compressed bytes holding spans `run`.
    pub fn compressed(&self, run: Range<usize>) -> Result<Range<u64>, LayoutError> {
        match (&self.chunk_starts, self.index.seek_table()) {
            (Some(_), _) => Ok(self.index.chunk_at(run.start).compressed.start
                ..self.index.chunk_at(run.end - 1).compressed.end),
            (None, Some(t)) => {
                let r = t.span_range(run.start).start..t.span_range(run.end - 1).end;
                Ok(t.span_plan(r)?.compressed)
            }
            (None, None) => Err(LayoutError::NoSpans),
        }
    }

    /// The stored window decoding span `i` needs that is not local: its range in the index's
    /// window section and its sha256 if the head has one (format 4 heads have none); `None`
    /// when no window is needed or the file has them.
    pub fn remote_window(&self, i: usize) -> Option<(Range<u64>, Option<[u8; 32]>)> {
        let t = self
            .index
            .seek_table()
            .filter(|_| self.chunk_starts.is_none())?;
        if t.windows_local() || !t.needs_window(i) {
            return None;
        }
        Some((t.window_range(i), t.window_digests.get(i).copied()))
    }

    /// The uncompressed bytes whose last 32 KiB can stand in for span `i`'s remote window
    /// (see [`Self::remote_window`]) when they are local: the bytes just before its
    /// checkpoint. `None` when no remote window is needed, or when the table checks the
    /// compressed bytes rather than what they decode to (a window is then trusted only from
    /// its sha256).
    pub fn window_before(&self, i: usize) -> Option<Range<u64>> {
        let t = self.index.seek_table()?;
        if t.check != SpanCheck::Blocks {
            return None;
        }
        self.remote_window(i)?;
        let cp = t.span_range(i).start;
        Some(cp.saturating_sub(32 << 10)..cp).filter(|r| !r.is_empty())
    }

    /// Decode spans `run` from exactly `self.compressed(run)` bytes; verified, concatenated.
    /// `window`: the stored window of the run's first checkpoint when it is not local.
    pub fn decode(
        &self,
        run: Range<usize>,
        compressed: &[u8],
        window: Option<Window<'_>>,
    ) -> Result<Vec<u8>, LayoutError> {
        match (&self.chunk_starts, self.index.seek_table()) {
            (Some(_), _) => {
                let range = self.compressed(run.clone())?;
                Ok(crate::layer::estargz::decode_chunks(
                    &self.index,
                    "chunk",
                    run,
                    range,
                    compressed,
                )?)
            }
            (None, Some(t)) => {
                let r = t.span_range(run.start).start..t.span_range(run.end - 1).end;
                let plan = t.span_plan(r)?;
                let out = t.decode_spans_with(&plan, compressed, window)?;
                if let Some(l) = &self.learned {
                    for i in run {
                        for k in 0..t.blocks_of(i).len() {
                            let b = t.block_range(i, k);
                            let (s, e) = (
                                b.start - plan.uncompressed.start,
                                b.end - plan.uncompressed.start,
                            );
                            if let Some(bytes) = out.get(s as usize..e as usize) {
                                l.learn(t.blocks_of(i).start + k, bytes);
                            }
                        }
                    }
                }
                Ok(out)
            }
            (None, None) => Err(LayoutError::NoSpans),
        }
    }

    /// Partial span fetch: compressed bytes that decode blocks `0..=k` of span `i` (`None` for
    /// eStargz chunks and layers that cannot decode a prefix).
    pub fn prefix_plan(&self, i: usize, k: usize) -> Option<Range<u64>> {
        let t = self
            .index
            .seek_table()
            .filter(|_| self.chunk_starts.is_none())?;
        t.prefix_plan(i, k)
    }

    /// Decode and verify blocks `0..=k` of span `i` from exactly `self.prefix_plan(i, k)`.
    pub fn decode_prefix(
        &self,
        i: usize,
        k: usize,
        compressed: &[u8],
        window: Option<Window<'_>>,
    ) -> Result<Vec<u8>, LayoutError> {
        let t = self
            .index
            .seek_table()
            .filter(|_| self.chunk_starts.is_none())
            .ok_or(LayoutError::NoSpans)?;
        Ok(t.decode_prefix(i, k, compressed, window)?)
    }

    /// Number of verification blocks of span `i`: the seek table's per-block sha256s, or one
    /// block (the whole chunk, its `chunkDigest`) for eStargz.
    pub fn block_count(&self, i: usize) -> usize {
        match (&self.chunk_starts, self.index.seek_table()) {
            (Some(_), _) => 1,
            (None, Some(t)) => t.blocks_of(i).len(),
            (None, None) => 0,
        }
    }

    /// Virtual range of block `k` of span `i`.
    pub fn block_range(&self, i: usize, k: usize) -> Range<u64> {
        match (&self.chunk_starts, self.index.seek_table()) {
            (Some(_), _) => self.span_range(i),
            (None, Some(t)) => t.block_range(i, k),
            (None, None) => 0..0,
        }
    }

    /// Blocks of span `i` covering the virtual range `r` (clamped to the span).
    pub fn blocks_covering(&self, i: usize, r: Range<u64>) -> Range<usize> {
        match (&self.chunk_starts, self.index.seek_table()) {
            (Some(_), _) => {
                let s = self.span_range(i);
                if r.start.max(s.start) < r.end.min(s.end) {
                    0..1
                } else {
                    0..0
                }
            }
            (None, Some(t)) => t.blocks_covering(i, r),
            (None, None) => 0..0,
        }
    }

    /// Check all bytes of span `i` (every block of it) against the index.
    pub fn verify(&self, i: usize, data: &[u8]) -> bool {
        let base = self.span_range(i).start;
        if data.len() as u64 != self.span_range(i).end - base {
            return false;
        }
        (0..self.block_count(i)).all(|k| {
            let r = self.block_range(i, k);
            self.verify_block(
                i,
                k,
                &data[(r.start - base) as usize..(r.end - base) as usize],
            )
        })
    }

    /// Check the bytes of block `k` of span `i` (read back from disk) against the index.
    pub fn verify_block(&self, i: usize, k: usize, data: &[u8]) -> bool {
        match (&self.chunk_starts, self.index.seek_table()) {
            (Some(_), _) => {
                k == 0
                    && crate::digest::Digest::of(data).as_bytes() == &self.index.chunk_at(i).digest
            }
            (None, Some(t)) => match &self.learned {
                Some(l) => k < t.blocks_of(i).len() && l.check(t.blocks_of(i).start + k, data),
                None => {
                    if t.block(t.blocks_of(i).start + k).is_none() {
                        self.load_local_groups(i..i + 1);
                    }
                    t.verify_block(i, k, data).is_ok()
                }
            },
            (None, None) => false,
        }
    }

    /// Virtual range of bytes `range` of a file's content (clamped to its size).
    pub fn file_range(
        &self,
        entry: &EntryRef<'_>,
        range: Range<u64>,
    ) -> Result<Range<u64>, LayoutError> {
        let f = match entry.kind() {
            EntryKind::File => *entry,
            EntryKind::Hardlink => self
                .index
                .lookup(entry.link())
                .filter(|t| t.kind() == EntryKind::File)
                .ok_or_else(|| LayoutError::LinkTarget {
                    path: entry.path().to_string(),
                })?,
            _ => {
                return Err(LayoutError::NotAFile {
                    path: entry.path().to_string(),
                })
            }
        };
        let size = f.size();
        let (s, e) = (range.start.min(size), range.end.min(size));
        let e = e.max(s);
        let base = match &self.chunk_starts {
            Some(starts) => {
                let chunks = self.index.chunks_of(f.index());
                if chunks.is_empty() {
                    if size == 0 {
                        return Ok(0..0);
                    }
                    return Err(LayoutError::NoChunks {
                        path: f.path().to_string(),
                        size,
                    });
                }
                starts[chunks.start]
            }
            None => f.offset(),
        };
        // Offsets and sizes come from the index (maybe a registry's sidecar): no overflow.
        match (base.checked_add(s), base.checked_add(e)) {
            (Some(a), Some(b)) => Ok(a..b),
            _ => Err(LayoutError::Overflow {
                path: f.path().to_string(),
            }),
        }
    }
}
