//! Chunk cache: verified uncompressed layer bytes, memory LRU -> on-disk span files -> fetch.
//!
//! Calls `layer` (seek tables: which compressed bytes hold which verified spans) and, through
//! [`BlobSource`], the registry. The unit of fetching and of the disk tier is one span of a
//! layer's [`SeekTable`]; the unit of verification is one block (64 KiB) of a span, each with
//! its own sha256 in the index (an eStargz chunk is one block). Fetches are single-flight per
//! span, adjacent missing spans go out as one Range request, and fetches run as tokio tasks with
//! bounded concurrency, so a caller that stops waiting never leaves a half-written span: a span
//! file appears (temp + rename) only after every block of it matched. A disk hit preads only the
//! blocks a read covers and verifies those; the memory tier holds whole spans (from fetches) and
//! single blocks (from disk hits). Knows nothing of FUSE or the union tree.

mod disk;
mod layout;
mod source;
mod stats;
mod windows;

pub use layout::Layout;
pub use source::{BlobSource, LocalBlob, RegistryBlob};
pub use stats::{Stats, StatsSnapshot};
pub use windows::RemoteWindows;

use crate::digest::Digest;
use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Most spans fetched by one Range request.
const MAX_COALESCE_SPANS: usize = 16;
/// Whole-fetch attempts per run of spans (the registry client retries requests on its own).
const FETCH_ATTEMPTS: u32 = 3;
/// Default of [`CacheConfig::fetch_timeout`] (config key `fetch-timeout`).
pub const DEFAULT_FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("layer {layer}: {msg}")]
    Layer { layer: Digest, msg: String },
    #[error("layer {layer}: fetching compressed bytes {range:?}: {msg}")]
    Fetch {
        layer: Digest,
        range: Range<u64>,
        msg: String,
    },
    #[error("cache {path}: {msg}")]
    Io { path: PathBuf, msg: String },
}

/// Identifies one cached span.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanKey {
    pub layer: Digest,
    pub span: u32,
}

/// A layer the cache can read: its digest, span layout and where its compressed bytes are.
pub struct CachedLayer {
    pub digest: Digest,
    pub layout: Layout,
    pub source: Arc<dyn BlobSource>,
    /// Where the stored gzip windows come from when the index file holds only its head.
    pub windows: Option<Arc<RemoteWindows>>,
}

type SpanFuture = Shared<BoxFuture<'static, Result<Bytes, Error>>>;

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
}

/// Configuration of a [`ChunkCache`].
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub dir: PathBuf,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub max_concurrent_fetches: usize,
    /// Overall deadline for fetching one run of spans, all retries included: a read waiting
    /// on the network fails (EIO) after this instead of hanging on a stalled registry.
    pub fetch_timeout: std::time::Duration,
    /// Fetch only a prefix of a span for a small read of a file ending in it (config
    /// `partial-span-fetch`).
    pub partial_spans: bool,
    /// Spans fetched ahead after a miss near an earlier one (config `fetch-ahead-spans`).
    pub fetch_ahead: usize,
}

/// The shared cache. One per process; all methods take `&self`.
pub struct ChunkCache {
    mem: Mutex<Memory>,
    disk: disk::Disk,
    inflight: Mutex<HashMap<SpanKey, SpanFuture>>,
    /// Partial span fetches in flight: the last block each produces, and its future (the
    /// span's bytes through that block). Lock order: `inflight`, then `partial`.
    partial: Mutex<HashMap<SpanKey, (usize, SpanFuture)>>,
    fetch_permits: Arc<tokio::sync::Semaphore>,
    fetch_timeout: std::time::Duration,
    partial_spans: bool,
    fetch_ahead: usize,
    /// Per layer, the spans of the last few reads on demand that had to fetch (neighbour
    /// fetch-ahead).
    recent_misses: Mutex<HashMap<Digest, std::collections::VecDeque<usize>>>,
    pub stats: Arc<Stats>,
    /// Per layer, the last span a large read on demand had to fetch (sequential detection).
    last_miss: Mutex<HashMap<Digest, usize>>,
    /// Fetched spans whose disk write has not finished yet.
    writing: Mutex<HashMap<SpanKey, Bytes>>,
    /// Disk writes of fetched spans still running.
    pending_writes: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// When this cache was opened; `last_demand` counts milliseconds from here.
    epoch: Instant,
    /// Last time a read on demand had to fetch (ms since `epoch`, 0 = never).
    last_demand: std::sync::atomic::AtomicU64,
}

/// Reads at least this long (the kernel's large sequential reads) may trigger readahead.
const READAHEAD_MIN_READ: u64 = 64 << 10;
/// Spans fetched ahead of a sequential reader.
const READAHEAD_SPANS: usize = 8;
/// A miss this many spans or fewer from one of the layer's last [`RECENT_MISSES`] misses
/// starts neighbour fetch-ahead.
const NEAR_MISS: usize = 8;
const RECENT_MISSES: usize = 8;

/// Whole-layer prefetch waits until reads on demand have not fetched for this long.
pub const PREFETCH_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

struct Memory {
    lru: lru::LruCache<MemKey, Bytes>,
    bytes: u64,
    cap: u64,
}

impl Memory {
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ChunkCache {
    pub fn open(cfg: CacheConfig) -> Result<Arc<ChunkCache>, Error> {
        let disk = disk::Disk::open(cfg.dir.clone(), cfg.disk_bytes)?;
        Ok(Arc::new(ChunkCache {
            mem: Mutex::new(Memory {
                lru: lru::LruCache::unbounded(),
                bytes: 0,
                cap: cfg.memory_bytes,
            }),
            disk,
            inflight: Mutex::new(HashMap::new()),
            partial: Mutex::new(HashMap::new()),
            fetch_permits: Arc::new(tokio::sync::Semaphore::new(
                cfg.max_concurrent_fetches.max(1),
            )),
            fetch_timeout: cfg.fetch_timeout,
            partial_spans: cfg.partial_spans,
            fetch_ahead: cfg.fetch_ahead,
            recent_misses: Mutex::new(HashMap::new()),
            stats: Arc::new(Stats::default()),
            pending_writes: Mutex::new(Vec::new()),
            writing: Mutex::new(HashMap::new()),
            last_miss: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            last_demand: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// Bytes `r` (within span `i`, not empty) if they are local, without waiting on the
    /// network: a whole span in memory (or being written), else the covering blocks from memory,
    /// the missing ones pread from the span file and verified one block at a time.
    fn local_piece(&self, layer: &CachedLayer, i: usize, r: Range<u64>) -> Option<Bytes> {
        let key = SpanKey {
            layer: layer.digest,
            span: i as u32,
        };
        let span = layer.layout.span_range(i);
        let cut = |b: Bytes| -> Option<Bytes> {
            let (s, e) = (
                (r.start - span.start) as usize,
                (r.end - span.start) as usize,
            );
            (e <= b.len()).then(|| b.slice(s..e))
        };
        if let Some(b) = lock(&self.mem).lru.get(&MemKey::whole(key)).cloned() {
            self.stats.mem_hit();
            return cut(b);
        }
        if let Some(b) = lock(&self.writing).get(&key).cloned() {
            self.stats.mem_hit();
            return cut(b);
        }
        let blocks = layer.layout.blocks_covering(i, r.clone());
        if blocks.is_empty() {
            return None;
        }
        let mut parts: Vec<Option<Bytes>> = {
            let mut mem = lock(&self.mem);
            blocks
                .clone()
                .map(|k| {
                    mem.lru
                        .get(&MemKey {
                            span: key,
                            block: k as u32,
                        })
                        .cloned()
                })
                .collect()
        };
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
            let mut mem = lock(&self.mem);
            for (k, b) in fresh {
                mem.insert(
                    MemKey {
                        span: key,
                        block: k as u32,
                    },
                    b,
                );
            }
        } else {
            self.stats.mem_hit();
        }
        let parts: Vec<Bytes> = parts.into_iter().flatten().collect();
        let base = layer.layout.block_range(i, blocks.start).start;
        Some(cut_parts(base, &parts, r))
    }

    /// The pieces of `range` in spans `spans` that are local (see [`Self::local_piece`]).
    fn local_pieces(
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
                    self.local_piece(layer, i, r)
                }
            })
            .collect()
    }

    /// Whether span `i` of `layer` is local.
    pub fn has_span(&self, layer: &CachedLayer, i: usize) -> bool {
        let key = SpanKey {
            layer: layer.digest,
            span: i as u32,
        };
        lock(&self.mem).lru.contains(&MemKey::whole(key))
            || lock(&self.writing).contains_key(&key)
            || self.disk.contains(&key)
    }

    /// Bytes `range` of the uncompressed layer if every span is local; `None` if a fetch is
    /// needed (never waits on the network).
    pub fn try_read_local(
        &self,
        layer: &CachedLayer,
        range: Range<u64>,
    ) -> Option<Result<Bytes, Error>> {
        let spans = match layer.layout.locate(range.clone()) {
            Ok(p) => p,
            Err(msg) => {
                return Some(Err(Error::Layer {
                    layer: layer.digest,
                    msg,
                }))
            }
        };
        if spans.len() == 1 {
            let r = range.clone();
            return self.local_piece(layer, spans.start, r).map(Ok);
        }
        let mut parts = Vec::with_capacity(spans.len());
        for p in self.local_pieces(layer, spans, &range) {
            parts.push(p?);
        }
        Some(Ok(concat(parts)))
    }

    /// Bytes `range` of the uncompressed layer, fetching missing spans. Every byte returned
    /// was verified against the span sha256 of the layer's seek table.
    pub async fn read(
        self: &Arc<Self>,
        layer: &Arc<CachedLayer>,
        range: Range<u64>,
    ) -> Result<Bytes, Error> {
        self.read_as(layer, range, true, None).await
    }

    /// [`read`](Self::read) for prefetching: does not count as demand, so whole-layer
    /// prefetch keeps waiting only for real readers.
    pub async fn read_prefetch(
        self: &Arc<Self>,
        layer: &Arc<CachedLayer>,
        range: Range<u64>,
    ) -> Result<Bytes, Error> {
        self.read_as(layer, range, false, None).await
    }

    /// [`read`](Self::read) of part of a file whose bytes end at virtual offset `file_end`:
    /// a sequential reader of a large file gets the file's next spans fetched ahead.
    pub async fn read_file(
        self: &Arc<Self>,
        layer: &Arc<CachedLayer>,
        range: Range<u64>,
        file_end: u64,
    ) -> Result<Bytes, Error> {
        self.read_as(layer, range, true, Some(file_end)).await
    }

    fn demand_idle(&self) -> std::time::Duration {
        let last = self.last_demand.load(std::sync::atomic::Ordering::Relaxed);
        if last == 0 {
            return std::time::Duration::MAX;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        std::time::Duration::from_millis(now.saturating_sub(last))
    }

    async fn read_as(
        self: &Arc<Self>,
        layer: &Arc<CachedLayer>,
        range: Range<u64>,
        demand: bool,
        file_end: Option<u64>,
    ) -> Result<Bytes, Error> {
        let spans = layer
            .layout
            .locate(range.clone())
            .map_err(|msg| Error::Layer {
                layer: layer.digest,
                msg,
            })?;
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let mut parts = self.local_pieces(layer, spans.clone(), &range);
        if parts.iter().all(Option::is_some) {
            return Ok(concat(parts.into_iter().flatten().collect()));
        }
        if demand {
            let now = (self.epoch.elapsed().as_millis() as u64).max(1);
            self.last_demand
                .store(now, std::sync::atomic::Ordering::Relaxed);
        }
        if demand && file_end.is_some() {
            self.fetch_ahead(layer, spans.clone());
        }
        if let (Some(fe), 1, true) = (file_end, spans.len(), self.partial_spans) {
            if let Some(f) = self.prefix_future(layer, spans.start, &range, fe) {
                let b = f.await?;
                let s = layer.layout.span_range(spans.start);
                return Ok(cut_parts(s.start, &[b], range));
            }
        }
        let waits = self.futures_for(layer, spans.clone(), &parts);
        if let Some(file_end) = file_end {
            if range.end - range.start >= READAHEAD_MIN_READ {
                self.readahead(layer, spans.clone(), file_end);
            }
        }
        for (idx, fut) in waits {
            let whole = fut.await?;
            let s = layer.layout.span_range(spans.start + idx);
            let r = range.start.max(s.start)..range.end.min(s.end);
            parts[idx] = Some(cut_parts(s.start, &[whole], r));
        }
        Ok(concat(parts.into_iter().flatten().collect()))
    }

    /// Futures for every missing span: joins fetches already in flight and starts one fetch per
    /// run of adjacent missing spans that nobody fetches yet.
    fn futures_for(
        self: &Arc<Self>,
        layer: &Arc<CachedLayer>,
        spans: Range<usize>,
        parts: &[Option<Bytes>],
    ) -> Vec<(usize, SpanFuture)> {
        let mut out = Vec::new();
        let mut inflight = lock(&self.inflight);
        let mut run: Vec<usize> = Vec::new();
        let mut runs: Vec<Vec<usize>> = Vec::new();
        for (idx, i) in spans.clone().enumerate() {
            if parts[idx].is_some() {
                if !run.is_empty() {
                    runs.push(std::mem::take(&mut run));
                }
                continue;
            }
            let key = SpanKey {
                layer: layer.digest,
                span: i as u32,
            };
            if let Some(f) = inflight.get(&key) {
                self.stats.joined();
                out.push((idx, f.clone()));
                if !run.is_empty() {
                    runs.push(std::mem::take(&mut run));
                }
                continue;
            }
            // A fetch may have finished between the caller's local lookup and this lock: it
            // makes its spans local (the `writing` map) before it leaves `inflight`, so a span
            // that is neither in flight nor local now really needs fetching.
            if let Some(b) = self.local_piece(layer, i, layer.layout.span_range(i)) {
                out.push((idx, futures::future::ready(Ok(b)).boxed().shared()));
                if !run.is_empty() {
                    runs.push(std::mem::take(&mut run));
                }
                continue;
            }
            if let Some(&prev) = run.last() {
                if !layer.layout.adjacent(prev) {
                    runs.push(std::mem::take(&mut run));
                }
            }
            run.push(i);
            if run.len() >= MAX_COALESCE_SPANS {
                runs.push(std::mem::take(&mut run));
            }
        }
        if !run.is_empty() {
            runs.push(run);
        }
        for run in runs {
            let first = run[0];
            let last = run[run.len() - 1];
            let task = tokio::spawn(self.clone().fetch_run(layer.clone(), first..last + 1));
            let run_fut = async move {
                match task.await {
                    Ok(r) => r.map(Arc::new),
                    Err(e) => Err(Error::Layer {
                        layer: Digest::of(b""),
                        msg: format!("fetch task failed: {e}"),
                    }),
                }
            }
            .boxed()
            .shared();
            for i in run {
                let key = SpanKey {
                    layer: layer.digest,
                    span: i as u32,
                };
                let rf = run_fut.clone();
                let f: SpanFuture = async move { rf.await.map(|v| v[i - first].clone()) }
                    .boxed()
                    .shared();
                inflight.insert(key, f.clone());
                out.push((i - spans.start, f));
            }
        }
        out
    }

    /// Fetch, decode and verify spans `run`, store them, and clear their in-flight entries.
    async fn fetch_run(
        self: Arc<Self>,
        layer: Arc<CachedLayer>,
        run: Range<usize>,
    ) -> Result<Vec<Bytes>, Error> {
        let deadline = self.fetch_timeout;
        let result = match tokio::time::timeout(deadline, self.fetch_run_inner(&layer, run.clone()))
            .await
        {
            Ok(r) => r,
            Err(_) => {
                let range = layer.layout.compressed(run.clone()).unwrap_or(0..0);
                tracing::error!(layer = %layer.digest, ?range, "fetch timed out after {deadline:?}");
                Err(Error::Fetch {
                    layer: layer.digest,
                    range,
                    msg: format!("no verified bytes within the fetch timeout ({deadline:?})"),
                })
            }
        };
        if let Ok(parts) = &result {
            // Readers get the bytes now; the disk copy is written off the read path. Span files
            // are re-verified whenever they are loaded, so no fsync is needed for correctness.
            let me = self.clone();
            let items: Vec<(SpanKey, Bytes)> = run
                .clone()
                .map(|i| SpanKey {
                    layer: layer.digest,
                    span: i as u32,
                })
                .zip(parts.iter().cloned())
                .collect();
            // Until a span file exists, readers find the span here (the memory tier may already
            // have evicted it), so a span is never fetched twice.
            lock(&self.writing).extend(items.iter().cloned());
            let task = tokio::task::spawn_blocking(move || {
                for (key, part) in items {
                    if let Err(e) = me.disk.write(&key, &part) {
                        tracing::warn!("not caching span on disk: {e}");
                    }
                    lock(&me.writing).remove(&key);
                }
            });
            let mut pending = lock(&self.pending_writes);
            pending.retain(|t| !t.is_finished());
            pending.push(task);
        }
        {
            let mut inflight = lock(&self.inflight);
            for i in run.clone() {
                inflight.remove(&SpanKey {
                    layer: layer.digest,
                    span: i as u32,
                });
            }
        }
        result
    }

    /// A large read that missed right after an earlier miss a few spans before it looks like a
    /// file being streamed: start fetching the next spans now (not awaited), so the reader
    /// finds them local instead of waiting a round trip per span. Small reads (small files, the
    /// cold-start pattern) never trigger it.
    fn readahead(self: &Arc<Self>, layer: &Arc<CachedLayer>, spans: Range<usize>, file_end: u64) {
        let sequential = {
            let mut last = lock(&self.last_miss);
            let prev = last.insert(layer.digest, spans.end.saturating_sub(1));
            prev.is_some_and(|p| p + 1 < spans.end && spans.start <= p + 2 * READAHEAD_SPANS)
        };
        if !sequential {
            return;
        }
        let mut end = (spans.end + READAHEAD_SPANS).min(layer.layout.count());
        // Never past the file being read.
        while end > spans.end && layer.layout.span_range(end - 1).start >= file_end {
            end -= 1;
        }
        if end <= spans.end {
            return;
        }
        self.fetch_in_background(layer, spans.end..end);
    }

    /// Start fetching the spans of `next` that are not local (joining fetches already in
    /// flight); nobody waits: the fetch tasks are spawned and registered as in flight.
    /// Returns how many spans were not local.
    fn fetch_in_background(
        self: &Arc<Self>,
        layer: &Arc<CachedLayer>,
        next: Range<usize>,
    ) -> usize {
        let parts: Vec<Option<Bytes>> = next
            .clone()
            .map(|i| self.has_span(layer, i).then(Bytes::new))
            .collect();
        let missing = parts.iter().filter(|p| p.is_none()).count();
        if missing > 0 {
            drop(self.futures_for(layer, next, &parts));
        }
        missing
    }

    /// Neighbour fetch-ahead: a read on demand that misses in spans `spans` within
    /// [`NEAR_MISS`] spans of one of the layer's last misses is part of a cold start walking
    /// neighbouring files (a package's modules sit together in the tar stream): start fetching
    /// the next `fetch_ahead` spans in the background (one Range request, not awaited; spans
    /// local or in flight are skipped). Uses the link while the reader works on what it got
    /// instead of paying a round trip per span.
    fn fetch_ahead(self: &Arc<Self>, layer: &Arc<CachedLayer>, spans: Range<usize>) {
        if self.fetch_ahead == 0 || spans.is_empty() {
            return;
        }
        let near = {
            let mut recent = lock(&self.recent_misses);
            let r = recent.entry(layer.digest).or_default();
            let near = r
                .iter()
                .any(|&p| p + NEAR_MISS >= spans.start && p <= spans.end + NEAR_MISS);
            r.push_back(spans.end - 1);
            if r.len() > RECENT_MISSES {
                r.pop_front();
            }
            near
        };
        if !near {
            return;
        }
        let end = (spans.end + self.fetch_ahead).min(layer.layout.count());
        if end <= spans.end {
            return;
        }
        let missing = self.fetch_in_background(layer, spans.end..end);
        if missing > 0 {
            self.stats.fetched_ahead(missing as u64);
        }
    }

    /// Wait until every span fetched so far is on disk (before unmounting, in tests).
    pub async fn flush(&self) {
        let tasks: Vec<_> = std::mem::take(&mut *lock(&self.pending_writes));
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn fetch_run_inner(
        &self,
        layer: &Arc<CachedLayer>,
        run: Range<usize>,
    ) -> Result<Vec<Bytes>, Error> {
        let crange = layer
            .layout
            .compressed(run.clone())
            .map_err(|msg| Error::Layer {
                layer: layer.digest,
                msg,
            })?;
        let run2 = run.clone();
        let data = self
            .fetch_decode(layer, run.start, crange, move |l, c, w| {
                l.layout.decode(run2.clone(), c, w)
            })
            .await?;
        let mut out = Vec::with_capacity(run.len());
        self.stats.spans(run.len() as u64);
        let base = layer.layout.span_range(run.start).start;
        for i in run.clone() {
            let r = rel_range(&layer.layout, i, base);
            if r.end > data.len() {
                return Err(Error::Layer {
                    layer: layer.digest,
                    msg: format!("span {i}: decoded data too short"),
                });
            }
            let part = data.slice(r);
            let key = SpanKey {
                layer: layer.digest,
                span: i as u32,
            };
            lock(&self.mem).insert(MemKey::whole(key), part.clone());
            out.push(part);
        }
        Ok(out)
    }

    /// Fetch compressed bytes `crange` (decoded from span `first`'s checkpoint) under a fetch
    /// permit, with the checkpoint's window when the index holds only its head, and decode and
    /// verify them on the blocking pool; retried [`FETCH_ATTEMPTS`] times.
    async fn fetch_decode<F>(
        &self,
        layer: &Arc<CachedLayer>,
        first: usize,
        crange: Range<u64>,
        decode: F,
    ) -> Result<Bytes, Error>
    where
        F: Fn(&CachedLayer, &[u8], Option<&[u8]>) -> Result<Vec<u8>, String>
            + Clone
            + Send
            + 'static,
    {
        let _permit = self
            .fetch_permits
            .acquire()
            .await
            .map_err(|e| Error::Layer {
                layer: layer.digest,
                msg: format!("cache closed: {e}"),
            })?;
        let window_need = layer.layout.remote_window(first);
        tracing::debug!(layer = %layer.digest, span = first, ?crange, window = window_need.is_some(), "fetch");
        let mut last_err = None;
        for attempt in 0..FETCH_ATTEMPTS {
            let started = Instant::now();
            // The window (if the index holds only its head) comes with the span's bytes.
            let window_fut = async {
                match (&window_need, &layer.windows) {
                    (None, _) => Ok(None),
                    (Some((r, d)), Some(w)) => w.get(first, r.clone(), *d).await.map(Some),
                    (Some(_), None) => Err("no source for the index's gzip windows".to_string()),
                }
            };
            let (fetched, window) =
                futures::future::join(layer.source.fetch(crange.clone()), window_fut).await;
            let window = match window {
                Ok(w) => w,
                Err(msg) => {
                    tracing::warn!(layer = %layer.digest, attempt, "window fetch failed: {msg}");
                    last_err = Some(Error::Layer {
                        layer: layer.digest,
                        msg: format!("span {first}: {msg}"),
                    });
                    continue;
                }
            };
            let compressed = match fetched {
                Ok(b) => b,
                Err(msg) => {
                    tracing::warn!(layer = %layer.digest, attempt, "fetch failed: {msg}");
                    last_err = Some(Error::Fetch {
                        layer: layer.digest,
                        range: crange.clone(),
                        msg,
                    });
                    continue;
                }
            };
            self.stats
                .fetched(compressed.len() as u64, started.elapsed());
            let net = started.elapsed();
            let (l2, dec) = (layer.clone(), decode.clone());
            let decoded =
                tokio::task::spawn_blocking(move || dec(&l2, &compressed, window.as_deref())).await;
            tracing::debug!(
                layer = %layer.digest,
                span = first,
                net_ms = net.as_millis() as u64,
                decode_ms = (started.elapsed() - net).as_millis() as u64,
                "fetched"
            );
            match decoded {
                Ok(Ok(d)) => return Ok(Bytes::from(d)),
                Ok(Err(msg)) => {
                    tracing::error!(layer = %layer.digest, attempt, "fetched bytes failed verification: {msg}");
                    last_err = Some(Error::Layer {
                        layer: layer.digest,
                        msg,
                    });
                }
                Err(e) => {
                    return Err(Error::Layer {
                        layer: layer.digest,
                        msg: format!("decoder task: {e}"),
                    })
                }
            }
        }
        Err(last_err.unwrap_or(Error::Layer {
            layer: layer.digest,
            msg: "fetch failed".into(),
        }))
    }

    /// Partial span fetch for a small read of a file that ends in span `i`: a future for the
    /// span's verified bytes through the block holding the file's end (or `range`'s end, if
    /// later), fetched from the checkpoint to that block's compressed bound only. `None` when
    /// the whole span should be fetched instead: the file goes on past the span (a sequential
    /// reader wants the rest), the prefix would save little, the whole span is already being
    /// fetched, a shorter prefix of it is (decoding cannot resume where that one stops), or a
    /// prefix of it was fetched before (this span is being read piece by piece).
    /// Verified blocks go to the memory tier one by one; the disk tier keeps whole spans only.
    fn prefix_future(
        self: &Arc<Self>,
        layer: &Arc<CachedLayer>,
        i: usize,
        range: &Range<u64>,
        file_end: u64,
    ) -> Option<SpanFuture> {
        let span = layer.layout.span_range(i);
        if file_end >= span.end || range.end > span.end || range.start < span.start {
            return None;
        }
        let upto = file_end.max(range.end);
        let k = layer
            .layout
            .blocks_covering(i, range.start..upto)
            .end
            .checked_sub(1)?;
        let crange = layer.layout.prefix_plan(i, k)?;
        let whole = layer.layout.compressed(i..i + 1).ok()?;
        if (crange.end - crange.start) * 4 > (whole.end - whole.start) * 3 {
            return None;
        }
        let key = SpanKey {
            layer: layer.digest,
            span: i as u32,
        };
        let inflight = lock(&self.inflight);
        if inflight.contains_key(&key) {
            return None;
        }
        let mut partial = lock(&self.partial);
        if let Some((bound, f)) = partial.get(&key) {
            if *bound >= k {
                self.stats.joined();
                return Some(f.clone());
            }
            return None;
        }
        // A span touched a second time after a prefix fetch is fetched whole: small files
        // read one after another in one span would otherwise each refetch a longer prefix.
        let block0 = MemKey {
            span: key,
            block: 0,
        };
        if lock(&self.mem).lru.peek(&block0).is_some() {
            return None;
        }
        // A prefix or whole fetch may have finished since the caller looked.
        let upto_block = layer.layout.block_range(i, k).end;
        if let Some(b) = self.local_piece(layer, i, span.start..upto_block) {
            return Some(futures::future::ready(Ok(b)).boxed().shared());
        }
        drop(inflight);
        let me = self.clone();
        let l = layer.clone();
        let task = tokio::spawn(async move {
            let deadline = me.fetch_timeout;
            let fetch = me.fetch_decode(&l, i, crange.clone(), move |l, c, w| {
                l.layout.decode_prefix(i, k, c, w)
            });
            let r = match tokio::time::timeout(deadline, fetch).await {
                Ok(r) => r,
                Err(_) => Err(Error::Fetch {
                    layer: l.digest,
                    range: crange,
                    msg: format!("no verified bytes within the fetch timeout ({deadline:?})"),
                }),
            };
            if let Ok(bytes) = &r {
                me.stats.partial();
                let mut mem = lock(&me.mem);
                for b in 0..=k {
                    let br = l.layout.block_range(i, b);
                    let (s, e) = (
                        (br.start - span.start) as usize,
                        (br.end - span.start) as usize,
                    );
                    if e <= bytes.len() {
                        mem.insert(
                            MemKey {
                                span: key,
                                block: b as u32,
                            },
                            bytes.slice(s..e),
                        );
                    }
                }
            }
            lock(&me.partial).remove(&key);
            r
        });
        let digest = layer.digest;
        let f: SpanFuture = async move {
            match task.await {
                Ok(r) => r,
                Err(e) => Err(Error::Layer {
                    layer: digest,
                    msg: format!("fetch task failed: {e}"),
                }),
            }
        }
        .boxed()
        .shared();
        partial.insert(key, (k, f.clone()));
        Some(f)
    }

    /// Drop cached spans until the disk tier is under `target` bytes; returns bytes freed.
    pub fn prune(&self, target: u64) -> u64 {
        self.disk.prune_to(target)
    }

    pub fn disk_usage(&self) -> (u64, usize) {
        self.disk.usage()
    }

    /// Fetch every span of a layer that is not local yet, as fast as the link and the CPUs
    /// allow (`strata cache fetch`): all runs of up to [`MAX_COALESCE_SPANS`] missing spans are
    /// started at once; the fetch permits bound how many download at a time, and each run is
    /// decoded and verified on the blocking pool as soon as its bytes are in, so several runs
    /// inflate in parallel (one core each, from their own checkpoints). Unlike
    /// [`prefetch_layer`](Self::prefetch_layer) it does not yield to reads on demand. Returns
    /// the spans fetched.
    pub async fn fetch_layer(self: &Arc<Self>, layer: &Arc<CachedLayer>) -> Result<usize, Error> {
        let n = layer.layout.count();
        let parts: Vec<Option<Bytes>> = (0..n)
            .map(|i| self.has_span(layer, i).then(Bytes::new))
            .collect();
        let missing = parts.iter().filter(|p| p.is_none()).count();
        let waits = self.futures_for(layer, 0..n, &parts);
        // Drop each span's bytes as soon as it is in (they are in the memory and disk tiers).
        let mut pending: futures::stream::FuturesUnordered<_> =
            waits.into_iter().map(|(_, f)| f).collect();
        while let Some(r) = futures::StreamExt::next(&mut pending).await {
            r?;
        }
        Ok(missing)
    }

    /// Fetch every span of a layer not yet local, in order, one run at a time (background
    /// prefetch). Stops at the first error; returns spans fetched.
    pub async fn prefetch_layer(
        self: &Arc<Self>,
        layer: &Arc<CachedLayer>,
    ) -> Result<usize, Error> {
        let n = layer.layout.count();
        let mut fetched = 0;
        let mut i = 0;
        while i < n {
            if self.has_span(layer, i) {
                i += 1;
                continue;
            }
            // Yield to on-demand reads: wait until they have been quiet for a while and
            // while all fetch permits are busy.
            loop {
                let idle = self.demand_idle();
                if idle >= PREFETCH_IDLE && self.fetch_permits.available_permits() > 0 {
                    break;
                }
                let wait = PREFETCH_IDLE
                    .saturating_sub(idle)
                    .max(std::time::Duration::from_millis(20));
                tokio::time::sleep(wait).await;
            }
            let end = (i + 4).min(n);
            let r = layer.layout.span_range(i).start..layer.layout.span_range(end - 1).end;
            self.read_prefetch(layer, r).await?;
            self.stats.prefetched((end - i) as u64);
            fetched += end - i;
            i = end;
        }
        Ok(fetched)
    }
}

/// Range of span `i` relative to `base` (the decoded buffer's start).
fn rel_range(layout: &Layout, i: usize, base: u64) -> Range<usize> {
    let r = layout.span_range(i);
    (r.start - base) as usize..(r.end - base) as usize
}

/// Cut virtual range `r` out of consecutive `parts` whose first byte is at virtual `base`.
fn cut_parts(base: u64, parts: &[Bytes], r: Range<u64>) -> Bytes {
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
fn concat(mut parts: Vec<Bytes>) -> Bytes {
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

#[cfg(test)]
mod tests;
