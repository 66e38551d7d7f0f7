//! Chunk cache: verified uncompressed layer bytes, memory LRU -> on-disk span files -> fetch.
//!
//! Calls `layer` (seek tables: which compressed bytes hold which verified spans), `registry`
//! (through [`RegistryBlob`], and its error type to tell a timeout) and nothing above them;
//! knows nothing of FUSE or the union tree. The unit of fetching and of the disk tier is one
//! span of a layer's [`SeekTable`](crate::layer::SeekTable); the unit of verification is one
//! block (64 KiB) of a span, each with its own sha256 in the index (an eStargz chunk is one
//! block; a SOCI layer's index vouches for each span's compressed bytes, and its block
//! digests are learned at the first decode). The parts, nydus-style:
//! - `memory.rs`, `disk.rs`: the two storage tiers; `local.rs` reads them as one (a disk hit
//!   preads only the blocks a read covers and verifies those) and hands fetched spans to them;
//! - `flight.rs`: generic single-flight (a table of shared futures run as tasks), used for
//!   span runs, span prefixes and the gzip windows of `windows.rs`;
//! - `fetcher.rs`: coalescing adjacent missing spans into one Range request, the request
//!   under a fetch permit, decoding and verification, retries, the deadline;
//! - `policy.rs`: readahead, neighbour fetch-ahead, partial span fetches, prefetch pacing;
//! - `layout.rs`: spans and blocks of a layer in one virtual coordinate (`learned.rs`: the
//!   block digests a SOCI zTOC's index lacks, learned at the first decode); `source.rs`: where
//!   compressed bytes come from; `error.rs`: the typed [`Error`] and its errno;
//! - `whole.rs`: the digest check of a layer fetched whole (its compressed bytes recorded
//!   while fetched, hashed and compared with the manifest's layer digest; a mismatch poisons
//!   the layer and drops its spans).
//!
//! This file ties them together: a read checks the local tiers once; what is missing is
//! joined or fetched through the single-flight table, whose lock is held for map lookups only
//! (never a pread or a write). A span file appears (temp + rename) only after every block of
//! it matched, so a caller that stops waiting never leaves a half-written span.

mod disk;
mod error;
mod fetcher;
mod flight;
mod layout;
mod learned;
mod local;
mod memory;
mod policy;
mod source;
mod stats;
mod whole;
mod windows;

pub use error::Error;
pub use layout::{Layout, LayoutError};
pub use policy::PREFETCH_IDLE;
pub use source::{BlobSource, FetchError, LocalBlob, RegistryBlob};
pub use stats::{Stats, StatsSnapshot};
pub use whole::WholeCheck;
pub use windows::{RemoteWindows, WindowError};

use crate::digest::Digest;
use bytes::Bytes;
use fetcher::Fetcher;
use flight::{Flight, SingleFlight};
use futures::future::{BoxFuture, FutureExt};
use local::{concat, cut_parts, span_key, Tiers};
use policy::Policy;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

/// Default of [`CacheConfig::fetch_timeout`] (config key `fetch-timeout`).
pub const DEFAULT_FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

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
    /// Where its block record groups come from then (format 5, `layer/groups.rs`).
    pub groups: Option<Arc<RemoteWindows>>,
    /// The whole-layer digest check (`whole.rs`); `Default::default()`.
    pub check: WholeCheck,
}

impl CachedLayer {
    /// The virtual range of the whole content of the file at `path` (a hard link: its
    /// target's): one index lookup, for a reader to do once per open file.
    pub fn file_extent(&self, path: &str) -> Result<Range<u64>, Error> {
        let entry = self
            .layout
            .index()
            .lookup(path)
            .ok_or_else(|| Error::NotInIndex {
                layer: self.digest,
                path: path.to_string(),
            })?;
        self.layout
            .file_range(&entry, 0..u64::MAX)
            .map_err(|source| Error::Index {
                layer: self.digest,
                source: Box::new(source),
            })
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
    /// on the network fails (ETIMEDOUT) after this instead of hanging on a stalled registry.
    pub fetch_timeout: std::time::Duration,
    /// Fetch only a prefix of a span for a small read of a file ending in it (config
    /// `partial-span-fetch`).
    pub partial_spans: bool,
    /// Spans fetched ahead after a miss near an earlier one (config `fetch-ahead-spans`).
    pub fetch_ahead: usize,
    /// Distinct files first read from one directory of a layer after which the directory's
    /// other files like them are fetched (config `fetch-siblings`; 0 = off).
    pub siblings_after: usize,
    /// Whether Python modules (`.pyc`, `.py`) take part in the sibling fetch: not when the
    /// mount reads each module's imports itself (`mount::python`, config `warm-libraries`).
    pub siblings_python: bool,
    /// On a near link, the compressed bytes a fetch on demand is extended to over the spans
    /// after it (config `near-request-size`; 0 = off).
    pub near_request: u64,
}

/// A read started with [`ChunkCache::start_read_file`]: answered from the local tiers, or
/// the future that waits for the missing spans (their fetches start when it is first polled).
pub enum Read {
    Local(Result<Bytes, Error>),
    Fetch(BoxFuture<'static, Result<Bytes, Error>>),
}

/// How a read counts: on demand (prefetch waits for these to pause) or not, and for readahead
/// where the file being read ends.
#[derive(Clone, Copy)]
struct Want {
    demand: bool,
    file_end: Option<u64>,
}

type SpanFlight = Flight<Bytes, Error>;

/// Who starts a span fetch, which decides its lane and what a reader that joins it does when
/// it fails.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// A read on demand (or `cache fetch`, prefetch): the common permits.
    Demand,
    /// Readahead of a sequential reader: the common permits, but not asked for by anyone.
    Ahead,
    /// Policy speculation: the speculative lane, in small runs.
    Spec,
    /// Fetches nobody waits for yet (warm-up pieces, siblings): the background lane, in
    /// small runs, counted as the link's use.
    Background,
}

/// A span's flight, and whether a read on demand started it (else a reader that joined it
/// fetches the span again on its own if it fails: a failed guess never costs a reader EIO).
type Joined = (usize, SpanFlight, bool);

/// The shared cache. One per process; all methods take `&self`.
pub struct ChunkCache {
    tiers: Arc<Tiers>,
    /// Whole spans in flight (each part of a run fetched by one request).
    spans: SingleFlight<SpanKey, Bytes, Error, (Kind, Option<Arc<fetcher::Promote>>)>,
    /// Partial span fetches in flight, tagged with the last block each produces (its future
    /// yields the span's bytes through that block).
    prefixes: SingleFlight<SpanKey, Bytes, Error, usize>,
    fetcher: Fetcher,
    /// On a near link, the compressed bytes a fetch on demand is extended to
    /// ([`fetcher::extend_runs`], config `near-request-size`; 0 = off).
    near_request: u64,
    policy: Policy,
    pub stats: Arc<Stats>,
}

impl ChunkCache {
    /// The deadline of one fetch (config `fetch-timeout`).
    pub fn fetch_timeout(&self) -> std::time::Duration {
        self.fetcher.timeout
    }

    pub fn open(cfg: CacheConfig) -> Result<Arc<ChunkCache>, Error> {
        let disk = disk::Disk::open(cfg.dir.clone(), cfg.disk_bytes)?;
        let stats = Arc::new(Stats::default());
        let tiers = Arc::new(Tiers::new(
            memory::Memory::new(cfg.memory_bytes),
            disk,
            stats.clone(),
        ));
        Ok(Arc::new(ChunkCache {
            tiers: tiers.clone(),
            spans: SingleFlight::new(),
            prefixes: SingleFlight::new(),
            fetcher: Fetcher::new(
                cfg.max_concurrent_fetches,
                cfg.fetch_timeout,
                stats.clone(),
                tiers,
            ),
            near_request: cfg.near_request,
            policy: Policy::new(
                cfg.partial_spans,
                cfg.fetch_ahead,
                cfg.siblings_after,
                cfg.siblings_python,
            ),
            stats,
        }))
    }

    /// Start fetching the sidecar pieces (gzip windows, block record groups) that reading
    /// spans `spans` (ranges of span numbers) of `layer` will need, all at once so that
    /// neighbours share requests (see `fetcher::sidecar_pieces`); nothing waits. Must run
    /// inside the runtime.
    pub fn fetch_sidecar_pieces(&self, layer: &Arc<CachedLayer>, spans: &[Range<usize>]) {
        fetcher::sidecar_pieces(layer, &self.tiers, spans);
    }

    /// Whether span `i` of `layer` is local.
    pub fn has_span(&self, layer: &CachedLayer, i: usize) -> bool {
        self.tiers.has_span(layer, i)
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
            Err(source) => {
                return Some(Err(Error::Index {
                    layer: layer.digest,
                    source: Box::new(source),
                }))
            }
        };
        self.tiers.read_local(layer, spans, range).map(Ok)
    }

    /// Bytes `range` of the uncompressed layer, fetching missing spans. Every byte returned
    /// was verified against the span sha256 of the layer's seek table.
    pub async fn read(
        self: &Arc<Self>,
        layer: &Arc<CachedLayer>,
        range: Range<u64>,
    ) -> Result<Bytes, Error> {
        let want = Want {
            demand: true,
            file_end: None,
        };
        self.start(layer, range, want).await
    }

    /// [`read`](Self::read) for prefetching: does not count as demand, so whole-layer
    /// prefetch keeps waiting only for real readers.
    pub async fn read_prefetch(
        self: &Arc<Self>,
        layer: &Arc<CachedLayer>,
        range: Range<u64>,
    ) -> Result<Bytes, Error> {
        let want = Want {
            demand: false,
            file_end: None,
        };
        self.start(layer, range, want).await
    }

    /// [`read`](Self::read) of part of a file whose bytes end at virtual offset `file_end`:
    /// a sequential reader of a large file gets the file's next spans fetched ahead.
    pub async fn read_file(
        self: &Arc<Self>,
        layer: &Arc<CachedLayer>,
        range: Range<u64>,
        file_end: u64,
    ) -> Result<Bytes, Error> {
        self.start_read_file(layer, range, file_end).await
    }

    /// [`read_file`](Self::read_file) that answers at once when the bytes are local: the
    /// local tiers are checked here, once, and the returned future only waits for (and
    /// starts) the fetches of the spans that were missing.
    pub fn start_read_file(
        self: &Arc<Self>,
        layer: &Arc<CachedLayer>,
        range: Range<u64>,
        file_end: u64,
    ) -> Read {
        let want = Want {
            demand: true,
            file_end: Some(file_end),
        };
        self.start(layer, range, want)
    }

    fn start(self: &Arc<Self>, layer: &Arc<CachedLayer>, range: Range<u64>, want: Want) -> Read {
        if layer.check.is_poisoned() {
            return Read::Local(Err(Error::Poisoned {
                layer: layer.digest,
            }));
        }
        let spans = match layer.layout.locate(range.clone()) {
            Ok(s) => s,
            Err(source) => {
                return Read::Local(Err(Error::Index {
                    layer: layer.digest,
                    source: Box::new(source),
                }))
            }
        };
        if range.is_empty() {
            return Read::Local(Ok(Bytes::new()));
        }
        let parts = if spans.len() == 1 {
            match self.tiers.piece(layer, spans.start, range.clone()) {
                Some(b) => return Read::Local(Ok(b)),
                None => vec![None],
            }
        } else {
            let parts = self.tiers.pieces(layer, spans.clone(), &range);
            if parts.iter().all(Option::is_some) {
                return Read::Local(Ok(concat(parts.into_iter().flatten().collect())));
            }
            parts
        };
        let (me, layer) = (self.clone(), layer.clone());
        Read::Fetch(
            async move { me.fetch_missing(&layer, range, spans, parts, want).await }.boxed(),
        )
    }

    /// The rest of a read whose local `parts` (one per span of `spans`) have gaps: note the
    /// demand, start what the policy fetches besides, join or start the fetches of the
    /// missing spans, and wait.
    async fn fetch_missing(
        self: &Arc<Self>,
        layer: &Arc<CachedLayer>,
        range: Range<u64>,
        spans: Range<usize>,
        mut parts: Vec<Option<Bytes>>,
        want: Want,
    ) -> Result<Bytes, Error> {
        // Another process sharing this cache may have found the layer's bytes false.
        if self.marked_bad(layer) {
            layer.check.poison();
            self.tiers.drop_layer(&layer.digest).await;
            return Err(Error::Poisoned {
                layer: layer.digest,
            });
        }
        if want.demand {
            self.policy.note_demand_miss();
        }
        if let (Some(fe), 1) = (want.file_end, spans.len()) {
            if let Some(f) = self.prefix_flight(layer, spans.start, &range, fe) {
                let b = f.await?;
                let s = layer.layout.span_range(spans.start);
                return Ok(cut_parts(s.start, &[b], range));
            }
        }
        let need: Vec<usize> = spans
            .clone()
            .zip(&parts)
            .filter(|(_, p)| p.is_none())
            .map(|(i, _)| i)
            .collect();
        let waits = self.join_or_fetch(layer, need);
        // Speculation after the read's own fetches are started (they count as the link's use
        // that speculation waits for).
        if want.demand && want.file_end.is_some() {
            let mut ahead = 0;
            // A layer mostly needed goes out whole in the background lane: several pieces in
            // flight, a read on demand that joins one lifts it out of the lane.
            if self.policy.mostly_needed(layer, spans.clone()) {
                let all = 0..layer.layout.count();
                ahead += self.fetch_in_background(layer, all, Kind::Background);
            }
            for next in self.policy.speculate(layer, spans.clone()) {
                ahead += self.fetch_in_background(layer, next, Kind::Spec);
            }
            if ahead > 0 {
                self.stats.fetched_ahead(ahead as u64);
            }
        }
        if let Some(fe) = want.file_end {
            if let Some(next) = self
                .policy
                .readahead(layer, spans.clone(), range.clone(), fe)
            {
                tracing::debug!(layer = %layer.digest, ?spans, ?next, "readahead");
                self.fetch_in_background(layer, next, Kind::Ahead);
            }
        }
        for (i, fut, demand) in waits {
            let whole = match fut.await {
                Ok(b) => b,
                // A guess that failed (a speculative or readahead fetch this read joined):
                // the read fetches the span itself, with its own attempts and deadline.
                Err(e) if !demand && !matches!(e, Error::Poisoned { .. }) => {
                    tracing::debug!(layer = %layer.digest, span = i, "joined speculative fetch failed, fetching on demand: {}", e.report());
                    let mut again = self.join_or_fetch(layer, vec![i]);
                    match again.pop() {
                        Some((_, f, _)) => f.await?,
                        None => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
            let s = layer.layout.span_range(i);
            let r = range.start.max(s.start)..range.end.min(s.end);
            parts[i - spans.start] = Some(cut_parts(s.start, &[whole], r));
        }
        Ok(concat(parts.into_iter().flatten().collect()))
    }

    /// A future for each span of `need` (ascending): a fetch in flight joined, a fetch started
    /// per run of spans nobody fetches yet, or the span's bytes if it became local since the
    /// caller looked (read after the table's lock is released).
    fn join_or_fetch(
        self: &Arc<Self>,
        layer: &Arc<CachedLayer>,
        mut need: Vec<usize>,
    ) -> Vec<Joined> {
        let mut out = Vec::new();
        // A span reported local whose bytes then fail to load (a span file that went away or
        // failed verification) is looked up again; the second time it is fetched.
        for recheck in [true, false] {
            let local = self.flights_for(layer, &need, recheck, Kind::Demand, &mut out);
            need.clear();
            for i in local {
                let r = layer.layout.span_range(i);
                match self.tiers.piece(layer, i, r) {
                    Some(b) => out.push((i, futures::future::ready(Ok(b)).boxed().shared(), true)),
                    None => need.push(i),
                }
            }
            if need.is_empty() {
                break;
            }
        }
        out
    }

    /// Under the span table's lock (map lookups only): join the flights of spans of `need`
    /// in flight, start one per run of the others, except (with `recheck`) spans that became
    /// local meanwhile, which are returned: a fetch makes its spans local before it leaves
    /// the table, so a span neither in flight nor local really needs fetching.
    fn flights_for(
        self: &Arc<Self>,
        layer: &Arc<CachedLayer>,
        need: &[usize],
        recheck: bool,
        kind: Kind,
        out: &mut Vec<Joined>,
    ) -> Vec<usize> {
        let mut local = Vec::new();
        let mut claim = Vec::new();
        let mut table = self.spans.lock();
        for &i in need {
            if let Some(((k, promote), f)) = table.get(&span_key(layer, i)) {
                self.stats.joined();
                if kind == Kind::Demand {
                    if let Some(p) = promote {
                        p.promote();
                    }
                }
                out.push((i, f.clone(), *k == Kind::Demand));
            } else if recheck && self.tiers.has_span(layer, i) {
                local.push(i);
            } else {
                claim.push(i);
            }
        }
        let max = match kind {
            Kind::Spec => fetcher::MAX_SPEC_BYTES,
            Kind::Background => fetcher::MAX_BACKGROUND_BYTES,
            _ => fetcher::MAX_COALESCE_BYTES,
        };
        let mut runs = fetcher::coalesce(&layer.layout, &claim, max);
        let near = self.near_request;
        let extended = kind == Kind::Demand && near > 0 && self.fetcher.near(&*layer.source);
        if extended {
            let free =
                |i| table.get(&span_key(layer, i)).is_none() && !self.tiers.has_span(layer, i);
            fetcher::extend_runs(&layer.layout, &mut runs, near, max, free);
            claim.sort_unstable();
        }
        for run in runs {
            let keys: Vec<SpanKey> = run.clone().map(|i| span_key(layer, i)).collect();
            let (me, l, r, k2) = (self.clone(), layer.clone(), run.clone(), keys.clone());
            let promote = matches!(kind, Kind::Spec | Kind::Background)
                .then(|| Arc::new(fetcher::Promote::default()));
            let p2 = promote.clone();
            let busy = (kind != Kind::Spec).then(|| self.fetcher.link.enter());
            let work = async move {
                let _busy = busy;
                let lane = match (kind, p2.as_deref()) {
                    (Kind::Spec, Some(p)) => fetcher::Lane::Spec(p),
                    (Kind::Background, Some(p)) => fetcher::Lane::Background(p),
                    _ => fetcher::Lane::Common,
                };
                let parts = me.fetcher.run(&l, r, lane).await?;
                me.tiers
                    .keep_fetched(k2.into_iter().zip(parts.iter().cloned()).collect());
                Ok(parts)
            }
            .boxed();
            let digest = layer.digest;
            let group = table.spawn(keys.clone(), work, move |e| Error::Task {
                layer: digest,
                what: "fetch",
                source: Arc::new(e),
            });
            for (n, key) in keys.into_iter().enumerate() {
                let (g, i) = (group.clone(), run.start + n);
                let want = layer.layout.span_range(i);
                let f: SpanFlight = async move {
                    let all = g.await?;
                    all.get(n).cloned().ok_or(Error::Short {
                        layer: digest,
                        span: i,
                        got: 0,
                        want: (want.end - want.start) as usize,
                    })
                }
                .boxed()
                .shared();
                table.insert(key, (kind, promote.clone()), f.clone());
                // Spans a near-link run was extended over are in the table (and fetched)
                // but not waited for.
                if !extended || claim.binary_search(&i).is_ok() {
                    out.push((i, f, kind == Kind::Demand));
                }
            }
        }
        local
    }

    /// Partial span fetch for a small read of a file that ends in span `i` (see
    /// [`Policy::prefix`]): a future for the span's verified bytes through the block holding
    /// the file's end (or `range`'s end, if later). `None` when the whole span should be
    /// fetched instead: the policy says so, the whole span is already being fetched or is
    /// local, a shorter prefix of it is in flight (decoding cannot resume where that one
    /// stops), or a prefix of it was fetched before (this span is being read piece by piece).
    /// Verified blocks go to the memory tier one by one; the disk tier keeps whole spans only.
    fn prefix_flight(
        self: &Arc<Self>,
        layer: &Arc<CachedLayer>,
        i: usize,
        range: &Range<u64>,
        file_end: u64,
    ) -> Option<SpanFlight> {
        let (k, crange) = self.policy.prefix(layer, i, range, file_end)?;
        let key = span_key(layer, i);
        if self.spans.contains(&key) {
            return None;
        }
        let mut table = self.prefixes.lock();
        if let Some((bound, f)) = table.get(&key) {
            if *bound >= k {
                self.stats.joined();
                return Some(f.clone());
            }
            return None;
        }
        // A span touched a second time after a prefix fetch is fetched whole: small files
        // read one after another in one span would otherwise each refetch a longer prefix.
        // A whole span that became local since the caller looked is read by the whole-span
        // path. Map lookups only.
        if self.tiers.mem.has_block(&key, 0) || self.tiers.has_span(layer, i) {
            return None;
        }
        let (me, l) = (self.clone(), layer.clone());
        let work = async move {
            let bytes = me.fetcher.prefix(&l, i, k, crange).await?;
            me.stats.partial();
            let span = l.layout.span_range(i);
            let blocks = (0..=k).filter_map(|b| {
                let br = l.layout.block_range(i, b);
                let (s, e) = (
                    (br.start - span.start) as usize,
                    (br.end - span.start) as usize,
                );
                (e <= bytes.len()).then(|| (b, bytes.slice(s..e)))
            });
            me.tiers.mem.insert_blocks(key, blocks);
            Ok(bytes)
        }
        .boxed();
        let digest = layer.digest;
        let group = table.spawn(vec![key], work, move |e| Error::Task {
            layer: digest,
            what: "fetch",
            source: Arc::new(e),
        });
        let f: SpanFlight = async move { group.await.map(|b| (*b).clone()) }
            .boxed()
            .shared();
        table.insert(key, k, f.clone());
        Some(f)
    }

    /// Start fetching the spans of `next` that are not local (joining fetches already in
    /// flight); nobody waits: the fetch tasks run on their own. Returns how many spans were
    /// not local.
    fn fetch_in_background(
        self: &Arc<Self>,
        layer: &Arc<CachedLayer>,
        next: Range<usize>,
        kind: Kind,
    ) -> usize {
        let need: Vec<usize> = next.filter(|&i| !self.tiers.has_span(layer, i)).collect();
        if !need.is_empty() {
            let mut started = Vec::new();
            self.flights_for(layer, &need, true, kind, &mut started);
        }
        need.len()
    }

    /// Start fetching the spans holding virtual `range` of `layer` that are neither local nor
    /// in flight, in the background lane (small requests, at most a few at a time, a read on
    /// demand that joins one lifts it out of the lane); nothing waits for them. Returns the
    /// spans started. Must run inside the runtime.
    pub fn fetch_background(
        self: &Arc<Self>,
        layer: &Arc<CachedLayer>,
        range: Range<u64>,
    ) -> usize {
        if layer.check.is_poisoned() || range.is_empty() {
            return 0;
        }
        match layer.layout.locate(range) {
            Ok(spans) => self.fetch_in_background(layer, spans, Kind::Background),
            Err(_) => 0,
        }
    }

    /// Whether [`first_read`](Self::first_read) can do anything (the sibling fetch is on).
    pub fn wants_first_reads(&self) -> bool {
        self.policy.siblings_on()
    }

    /// The first read of the file at `path` of `layer` (its extent just resolved): start the
    /// fetches of the siblings the policy names ([`Policy::siblings`]), in the background lane
    /// (a reader that joins one which fails fetches on its own). Returns the spans
    /// started. Must run inside the runtime (it spawns the fetches).
    pub fn first_read(self: &Arc<Self>, layer: &Arc<CachedLayer>, path: &str) -> usize {
        if layer.check.is_poisoned() {
            return 0;
        }
        let have = |i: usize| {
            self.tiers.has_span(layer, i) || self.spans.lock().get(&span_key(layer, i)).is_some()
        };
        let mut n = 0;
        for run in self.policy.siblings(layer, path, have) {
            n += self.fetch_in_background(layer, run, Kind::Background);
        }
        if n > 0 {
            self.stats.fetched_ahead(n as u64);
            tracing::debug!(layer = %layer.digest, path, spans = n, "sibling fetch");
        }
        n
    }

    /// Wait until every span fetched so far is on disk (before unmounting, in tests).
    pub async fn flush(&self) {
        self.tiers.flush().await
    }

    /// Drop cached spans until the disk tier is under `target` bytes; returns bytes freed.
    pub fn prune(&self, target: u64) -> u64 {
        self.tiers.disk.prune_to(target)
    }

    pub fn disk_usage(&self) -> (u64, usize) {
        self.tiers.disk.usage()
    }

    /// Fetch every span of a layer that is not local yet, as fast as the link and the CPUs
    /// allow (`strata cache fetch`): all runs of missing spans are started at once; the fetch
    /// permits bound how many download at a time, and each run is decoded and verified on the
    /// blocking pool as soon as its bytes are in, so several runs inflate in parallel (one
    /// core each, from their own checkpoints). Unlike [`prefetch_layer`](Self::prefetch_layer)
    /// it does not yield to reads on demand. Returns the spans fetched.
    pub async fn fetch_layer(self: &Arc<Self>, layer: &Arc<CachedLayer>) -> Result<usize, Error> {
        let checking = self.begin_whole(layer)?;
        let r = self.fetch_layer_spans(layer).await;
        self.finish_whole(layer, checking, r).await
    }

    async fn fetch_layer_spans(self: &Arc<Self>, layer: &Arc<CachedLayer>) -> Result<usize, Error> {
        let n = layer.layout.count();
        let need: Vec<usize> = (0..n).filter(|&i| !self.tiers.has_span(layer, i)).collect();
        let mut waits = Vec::new();
        self.flights_for(layer, &need, true, Kind::Demand, &mut waits);
        // Drop each span's bytes as soon as it is in (they are in the memory and disk tiers).
        let mut pending: futures::stream::FuturesUnordered<_> =
            waits.into_iter().map(|(_, f, _)| f).collect();
        while let Some(r) = futures::StreamExt::next(&mut pending).await {
            r?;
        }
        Ok(need.len())
    }

    /// Fetch every span of a layer not yet local, in order, one run at a time (background
    /// prefetch), yielding to reads on demand. Stops at the first error; returns spans fetched.
    pub async fn prefetch_layer(
        self: &Arc<Self>,
        layer: &Arc<CachedLayer>,
    ) -> Result<usize, Error> {
        let checking = self.begin_whole(layer)?;
        let r = self.prefetch_layer_spans(layer).await;
        self.finish_whole(layer, checking, r).await
    }

    async fn prefetch_layer_spans(
        self: &Arc<Self>,
        layer: &Arc<CachedLayer>,
    ) -> Result<usize, Error> {
        let n = layer.layout.count();
        let missing: Vec<usize> = (0..n).filter(|&i| !self.has_span(layer, i)).collect();
        let mut fetched = 0;
        // One background piece's bytes per request; a run made local meanwhile is skipped.
        for run in fetcher::coalesce(&layer.layout, &missing, fetcher::MAX_BACKGROUND_BYTES) {
            if run.clone().all(|i| self.has_span(layer, i)) {
                continue;
            }
            self.policy
                .wait_for_quiet(|| self.fetcher.permits_free())
                .await;
            let r =
                layer.layout.span_range(run.start).start..layer.layout.span_range(run.end - 1).end;
            self.read_prefetch(layer, r).await?;
            self.stats.prefetched(run.len() as u64);
            fetched += run.len();
        }
        Ok(fetched)
    }
}

mod check;

impl std::future::IntoFuture for Read {
    type Output = Result<Bytes, Error>;
    type IntoFuture = BoxFuture<'static, Result<Bytes, Error>>;

    fn into_future(self) -> Self::IntoFuture {
        match self {
            Read::Local(r) => futures::future::ready(r).boxed(),
            Read::Fetch(f) => f,
        }
    }
}

#[cfg(test)]
mod tests;
