//! Chunk cache: verified uncompressed layer bytes, memory LRU -> on-disk span files -> fetch.
//!
//! Calls `layer` (seek tables: which compressed bytes hold which verified spans) and, through
//! [`BlobSource`], the registry. The unit of caching is one span of a layer's [`SeekTable`].
//! Fetches are single-flight per span, adjacent missing spans go out as one Range request, and
//! fetches run as tokio tasks with bounded concurrency, so a caller that stops waiting never
//! leaves a half-written span: a span file appears (temp + rename) only after its sha256 matched.
//! Knows nothing of FUSE or the union tree.

mod disk;
mod layout;
mod source;
mod stats;

pub use layout::Layout;
pub use source::{BlobSource, LocalBlob, RegistryBlob};
pub use stats::{Stats, StatsSnapshot};

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
}

type SpanFuture = Shared<BoxFuture<'static, Result<Bytes, Error>>>;

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
}

/// The shared cache. One per process; all methods take `&self`.
pub struct ChunkCache {
    mem: Mutex<Memory>,
    disk: disk::Disk,
    inflight: Mutex<HashMap<SpanKey, SpanFuture>>,
    fetch_permits: Arc<tokio::sync::Semaphore>,
    fetch_timeout: std::time::Duration,
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

/// Whole-layer prefetch waits until reads on demand have not fetched for this long.
pub const PREFETCH_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

struct Memory {
    lru: lru::LruCache<SpanKey, Bytes>,
    bytes: u64,
    cap: u64,
}

impl Memory {
    fn insert(&mut self, k: SpanKey, v: Bytes) {
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
            fetch_permits: Arc::new(tokio::sync::Semaphore::new(
                cfg.max_concurrent_fetches.max(1),
            )),
            fetch_timeout: cfg.fetch_timeout,
            stats: Arc::new(Stats::default()),
            pending_writes: Mutex::new(Vec::new()),
            writing: Mutex::new(HashMap::new()),
            last_miss: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            last_demand: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// A span if it is local (memory, then disk), without waiting on the network.
    fn local_span(&self, layer: &CachedLayer, i: usize) -> Option<Bytes> {
        let key = SpanKey {
            layer: layer.digest,
            span: i as u32,
        };
        if let Some(b) = lock(&self.mem).lru.get(&key).cloned() {
            self.stats.mem_hit();
            return Some(b);
        }
        if let Some(b) = lock(&self.writing).get(&key).cloned() {
            self.stats.mem_hit();
            return Some(b);
        }
        let data = self.disk.read(&key)?;
        if !layer.layout.verify(i, &data) {
            tracing::error!(layer = %layer.digest, span = i, "cached span failed verification; dropping it");
            self.disk.remove(&key);
            return None;
        }
        let b = Bytes::from(data);
        self.stats.disk_hit();
        lock(&self.mem).insert(key, b.clone());
        Some(b)
    }

    /// Whether span `i` of `layer` is local.
    pub fn has_span(&self, layer: &CachedLayer, i: usize) -> bool {
        let key = SpanKey {
            layer: layer.digest,
            span: i as u32,
        };
        lock(&self.mem).lru.contains(&key)
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
        let mut parts = Vec::with_capacity(spans.len());
        for i in spans.clone() {
            parts.push(self.local_span(layer, i)?);
        }
        Some(Ok(assemble(&layer.layout, spans.start, &parts, range)))
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
        let mut parts: Vec<Option<Bytes>> =
            spans.clone().map(|i| self.local_span(layer, i)).collect();
        if parts.iter().all(Option::is_some) {
            let parts: Vec<Bytes> = parts.into_iter().flatten().collect();
            return Ok(assemble(&layer.layout, spans.start, &parts, range));
        }
        if demand {
            let now = (self.epoch.elapsed().as_millis() as u64).max(1);
            self.last_demand
                .store(now, std::sync::atomic::Ordering::Relaxed);
        }
        let waits = self.futures_for(layer, spans.clone(), &parts);
        if let Some(file_end) = file_end {
            if range.end - range.start >= READAHEAD_MIN_READ {
                self.readahead(layer, spans.clone(), file_end);
            }
        }
        for (idx, fut) in waits {
            parts[idx] = Some(fut.await?);
        }
        let parts: Vec<Bytes> = parts.into_iter().flatten().collect();
        Ok(assemble(&layer.layout, spans.start, &parts, range))
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
        let next = spans.end..end;
        let parts: Vec<Option<Bytes>> = next
            .clone()
            .map(|i| self.has_span(layer, i).then(Bytes::new))
            .collect();
        // The fetch tasks are spawned and registered as in flight; nobody needs to wait here.
        drop(self.futures_for(layer, next, &parts));
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
        let _permit = self
            .fetch_permits
            .acquire()
            .await
            .map_err(|e| Error::Layer {
                layer: layer.digest,
                msg: format!("cache closed: {e}"),
            })?;
        let mut last_err = None;
        for attempt in 0..FETCH_ATTEMPTS {
            let started = Instant::now();
            let fetched = layer.source.fetch(crange.clone()).await;
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
            let l2 = layer.clone();
            let run2 = run.clone();
            let decoded =
                tokio::task::spawn_blocking(move || l2.layout.decode(run2, &compressed)).await;
            let data = match decoded {
                Ok(Ok(d)) => Bytes::from(d),
                Ok(Err(msg)) => {
                    tracing::error!(layer = %layer.digest, attempt, "fetched bytes failed verification: {msg}");
                    last_err = Some(Error::Layer {
                        layer: layer.digest,
                        msg,
                    });
                    continue;
                }
                Err(e) => {
                    return Err(Error::Layer {
                        layer: layer.digest,
                        msg: format!("decoder task: {e}"),
                    })
                }
            };
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
                lock(&self.mem).insert(key, part.clone());
                out.push(part);
            }
            return Ok(out);
        }
        Err(last_err.unwrap_or(Error::Layer {
            layer: layer.digest,
            msg: "fetch failed".into(),
        }))
    }

    /// Drop cached spans until the disk tier is under `target` bytes; returns bytes freed.
    pub fn prune(&self, target: u64) -> u64 {
        self.disk.prune_to(target)
    }

    pub fn disk_usage(&self) -> (u64, usize) {
        self.disk.usage()
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

/// Cut `range` out of consecutive spans starting at span `first`.
fn assemble(seek: &Layout, first: usize, parts: &[Bytes], range: Range<u64>) -> Bytes {
    if range.start == range.end || parts.is_empty() {
        return Bytes::new();
    }
    let base = seek.span_range(first).start;
    if parts.len() == 1 {
        let s = (range.start - base) as usize;
        let e = (range.end - base) as usize;
        return parts[0].slice(s..e.min(parts[0].len()));
    }
    let mut out = Vec::with_capacity((range.end - range.start) as usize);
    for (k, p) in parts.iter().enumerate() {
        let r = seek.span_range(first + k);
        let s = range.start.max(r.start);
        let e = range.end.min(r.end);
        if s < e {
            out.extend_from_slice(&p[(s - r.start) as usize..(e - r.start) as usize]);
        }
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests;
