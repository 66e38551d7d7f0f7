//! The memory tier: an LRU of verified bytes, size-capped, holding whole spans (from fetches)
//! and single blocks (from disk hits and partial span fetches), plus the fetched spans whose
//! disk write has not finished yet (pinned: the LRU may already have evicted them, and a span
//! must never be fetched twice). Calls nothing outside `cache/`; no I/O. Each map has its own
//! lock, held only for the map operation.

use super::SpanKey;
use bytes::Bytes;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Mutex, MutexGuard};

/// A memory-tier entry: a whole span (`block == WHOLE`) or one verified block of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct MemKey {
    span: SpanKey,
    block: u32,
}

const WHOLE: u32 = u32::MAX;

impl MemKey {
    fn whole(span: SpanKey) -> MemKey {
        MemKey { span, block: WHOLE }
    }
    fn block(span: SpanKey, block: usize) -> MemKey {
        MemKey {
            span,
            block: block as u32,
        }
    }
}

struct Lru {
    lru: lru::LruCache<MemKey, Bytes>,
    bytes: u64,
    cap: u64,
}

impl Lru {
    fn insert(&mut self, k: MemKey, v: Bytes) {
        self.bytes += v.len() as u64;
        if let Some(old) = self.lru.put(k, v) {
            self.bytes -= old.len() as u64;
        }
        while self.bytes > self.cap {
            match self.lru.pop_lru() {
                Some((_, old)) => self.bytes -= old.len() as u64,
                None => break,
            }
        }
    }
}

pub(super) struct Memory {
    lru: Mutex<Lru>,
    /// Fetched spans whose disk write has not finished yet.
    writing: Mutex<HashMap<SpanKey, Bytes>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Memory {
    pub(super) fn new(cap: u64) -> Memory {
        Memory {
            lru: Mutex::new(Lru {
                lru: lru::LruCache::unbounded(),
                bytes: 0,
                cap,
            }),
            writing: Mutex::new(HashMap::new()),
        }
    }

    /// The whole span `key`, from the LRU or the spans being written.
    pub(super) fn span(&self, key: &SpanKey) -> Option<Bytes> {
        if let Some(b) = lock(&self.lru).lru.get(&MemKey::whole(*key)).cloned() {
            return Some(b);
        }
        lock(&self.writing).get(key).cloned()
    }

    /// Whether the whole span `key` is here (does not touch the LRU order).
    pub(super) fn has_span(&self, key: &SpanKey) -> bool {
        lock(&self.lru).lru.contains(&MemKey::whole(*key)) || lock(&self.writing).contains_key(key)
    }

    /// Blocks `blocks` of span `key`, each if present.
    pub(super) fn blocks(&self, key: &SpanKey, blocks: Range<usize>) -> Vec<Option<Bytes>> {
        let mut m = lock(&self.lru);
        blocks
            .map(|k| m.lru.get(&MemKey::block(*key, k)).cloned())
            .collect()
    }

    /// Whether block `k` of span `key` is here (does not touch the LRU order).
    pub(super) fn has_block(&self, key: &SpanKey, k: usize) -> bool {
        lock(&self.lru).lru.peek(&MemKey::block(*key, k)).is_some()
    }

    pub(super) fn insert_span(&self, key: SpanKey, bytes: Bytes) {
        lock(&self.lru).insert(MemKey::whole(key), bytes);
    }

    /// Keep verified blocks `(k, bytes)` of span `key`.
    pub(super) fn insert_blocks(
        &self,
        key: SpanKey,
        blocks: impl IntoIterator<Item = (usize, Bytes)>,
    ) {
        let mut m = lock(&self.lru);
        for (k, b) in blocks {
            m.insert(MemKey::block(key, k), b);
        }
    }

    /// Hold fetched spans until their disk write is done (see [`unpin`](Self::unpin)).
    pub(super) fn pin(&self, items: &[(SpanKey, Bytes)]) {
        lock(&self.writing).extend(items.iter().cloned());
    }

    pub(super) fn unpin(&self, key: &SpanKey) {
        lock(&self.writing).remove(key);
    }

    /// Drop every span and block of `layer` (its bytes must not be served again).
    pub(super) fn drop_layer(&self, layer: &crate::digest::Digest) {
        {
            let mut m = lock(&self.lru);
            let keys: Vec<MemKey> = m
                .lru
                .iter()
                .filter(|(k, _)| k.span.layer == *layer)
                .map(|(k, _)| *k)
                .collect();
            for k in keys {
                if let Some(old) = m.lru.pop(&k) {
                    m.bytes -= old.len() as u64;
                }
            }
        }
        lock(&self.writing).retain(|k, _| k.layer != *layer);
    }

    /// Entries in the LRU.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        lock(&self.lru).lru.len()
    }
}
