//! The local tiers seen as one: bytes of a span from memory (`memory.rs`) or from its span
//! file (`disk.rs`), never waiting on the network, and the hand-off of fetched spans to both
//! tiers (memory at once, disk on the blocking pool). A disk hit preads only the blocks a read
//! covers, verifies each against the index (`layout.rs`) and keeps it in memory; a block that
//! fails drops its span file. Calls nothing outside `cache/`; takes no fetch lock.

use super::disk::Disk;
use super::memory::Memory;
use super::{CachedLayer, SpanKey, Stats};
use bytes::Bytes;
use std::ops::Range;
use std::sync::{Arc, Mutex};

pub(super) struct Tiers {
    pub(super) mem: Memory,
    pub(super) disk: Disk,
    /// Disk writes of fetched spans still running.
    pending_writes: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    stats: Arc<Stats>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn span_key(layer: &CachedLayer, i: usize) -> SpanKey {
    SpanKey {
        layer: layer.digest,
        span: i as u32,
    }
}

impl Tiers {
    pub(super) fn new(mem: Memory, disk: Disk, stats: Arc<Stats>) -> Tiers {
        Tiers {
            mem,
            disk,
            pending_writes: Mutex::new(Vec::new()),
            stats,
        }
    }

    /// Whether span `i` of `layer` is local as a whole (map lookups only, no I/O).
    pub(super) fn has_span(&self, layer: &CachedLayer, i: usize) -> bool {
        let key = span_key(layer, i);
        self.mem.has_span(&key) || self.disk.contains(&key)
    }

    /// Bytes `r` (within span `i`, not empty) if they are local: a whole span in memory (or
    /// being written), else the covering blocks from memory, the missing ones pread from the
    /// span file and verified one block at a time.
    pub(super) fn piece(&self, layer: &CachedLayer, i: usize, r: Range<u64>) -> Option<Bytes> {
        let key = span_key(layer, i);
        let span = layer.layout.span_range(i);
        let cut = |b: Bytes| -> Option<Bytes> {
            let (s, e) = (
                (r.start - span.start) as usize,
                (r.end - span.start) as usize,
            );
            (e <= b.len()).then(|| b.slice(s..e))
        };
        if let Some(b) = self.mem.span(&key) {
            self.stats.mem_hit();
            return cut(b);
        }
        let blocks = layer.layout.blocks_covering(i, r.clone());
        if blocks.is_empty() {
            return None;
        }
        let mut parts = self.mem.blocks(&key, blocks.clone());
        let missing_first = parts.iter().position(Option::is_none);
        let missing_last = parts.iter().rposition(Option::is_none);
        if let (Some(a), Some(b)) = (missing_first, missing_last) {
            // One pread for the run of blocks from the first to the last missing one.
            let (ka, kb) = (blocks.start + a, blocks.start + b);
            let ext = layer.layout.block_range(i, ka).start..layer.layout.block_range(i, kb).end;
            let data = self
                .disk
                .read_range(&key, ext.start - span.start..ext.end - span.start)?;
            let data = Bytes::from(data);
            let mut fresh = Vec::new();
            for (idx, part) in parts.iter_mut().enumerate().take(b + 1).skip(a) {
                let k = blocks.start + idx;
                if part.is_some() {
                    continue;
                }
                let br = layer.layout.block_range(i, k);
                let bytes =
                    data.slice((br.start - ext.start) as usize..(br.end - ext.start) as usize);
                if !layer.layout.verify_block(i, k, &bytes) {
                    tracing::error!(
                        layer = %layer.digest,
                        span = i,
                        block = k,
                        "cached block failed verification; dropping the span file"
                    );
                    self.disk.remove(&key);
                    return None;
                }
                fresh.push((k, bytes.clone()));
                *part = Some(bytes);
            }
            self.stats.disk_hit();
            self.mem.insert_blocks(key, fresh);
        } else {
            self.stats.mem_hit();
        }
        let parts: Vec<Bytes> = parts.into_iter().flatten().collect();
        let base = layer.layout.block_range(i, blocks.start).start;
        Some(cut_parts(base, &parts, r))
    }

    /// The pieces of `range` in spans `spans` that are local (see [`Self::piece`]).
    pub(super) fn pieces(
        &self,
        layer: &CachedLayer,
        spans: Range<usize>,
        range: &Range<u64>,
    ) -> Vec<Option<Bytes>> {
        spans
            .map(|i| {
                let s = layer.layout.span_range(i);
                let r = range.start.max(s.start)..range.end.min(s.end);
                if r.is_empty() {
                    Some(Bytes::new())
                } else {
                    self.piece(layer, i, r)
                }
            })
            .collect()
    }

    /// Bytes `range` of the uncompressed layer if every span of it is local (never fetches);
    /// `spans`: the spans covering `range` (`Layout::locate`).
    pub(super) fn read_local(
        &self,
        layer: &CachedLayer,
        spans: Range<usize>,
        range: Range<u64>,
    ) -> Option<Bytes> {
        if spans.len() == 1 {
            return self.piece(layer, spans.start, range);
        }
        let parts: Option<Vec<Bytes>> = self.pieces(layer, spans, &range).into_iter().collect();
        Some(concat(parts?))
    }

    /// Keep freshly fetched, verified spans: in memory now, on disk soon. Until a span file
    /// exists the span stays pinned in memory, so a reader that no longer finds it in flight
    /// finds it here. Span files are re-verified whenever they are loaded, so no fsync.
    pub(super) fn keep_fetched(self: &Arc<Self>, items: Vec<(SpanKey, Bytes)>) {
        for (key, part) in &items {
            self.mem.insert_span(*key, part.clone());
        }
        self.mem.pin(&items);
        let me = self.clone();
        let task = tokio::task::spawn_blocking(move || {
            for (key, part) in items {
                if let Err(e) = me.disk.write(&key, &part) {
                    tracing::warn!("not caching span on disk: {}", e.report());
                }
                me.mem.unpin(&key);
            }
        });
        let mut pending = lock(&self.pending_writes);
        pending.retain(|t| !t.is_finished());
        pending.push(task);
    }

    /// Drop every span of `layer` from both tiers, after the disk writes in flight (which
    /// could otherwise put a span file back).
    pub(super) async fn drop_layer(&self, layer: &crate::digest::Digest) {
        self.flush().await;
        self.mem.drop_layer(layer);
        self.disk.drop_layer(layer);
    }

    /// Wait until every span fetched so far is on disk.
    pub(super) async fn flush(&self) {
        let tasks: Vec<_> = std::mem::take(&mut *lock(&self.pending_writes));
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Cut virtual range `r` out of consecutive `parts` whose first byte is at virtual `base`.
pub(super) fn cut_parts(base: u64, parts: &[Bytes], r: Range<u64>) -> Bytes {
    if r.is_empty() {
        return Bytes::new();
    }
    let mut out: Vec<Bytes> = Vec::new();
    let mut at = base;
    for p in parts {
        let pr = at..at + p.len() as u64;
        let (s, e) = (r.start.max(pr.start), r.end.min(pr.end));
        if s < e {
            out.push(p.slice((s - pr.start) as usize..(e - pr.start) as usize));
        }
        at = pr.end;
    }
    concat(out)
}

/// Concatenate pieces (no copy when there is one).
pub(super) fn concat(mut parts: Vec<Bytes>) -> Bytes {
    parts.retain(|p| !p.is_empty());
    match parts.len() {
        0 => Bytes::new(),
        1 => parts.pop().unwrap_or_default(),
        _ => {
            let mut out = Vec::with_capacity(parts.iter().map(Bytes::len).sum());
            for p in &parts {
                out.extend_from_slice(p);
            }
            Bytes::from(out)
        }
    }
}
