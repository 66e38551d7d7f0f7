//! Fetching spans: which missing spans go out together (adjacent runs, coalesced into one
//! Range request; on a near link extended over the spans after it, [`extend_runs`]), and for
//! one run or span prefix the request itself under a fetch permit (more of them once the
//! link's fastest fetches and answers show round trips of 10 ms or more), with
//! the checkpoint's gzip window when the index holds only its head (`windows.rs`, or the
//! local span before the checkpoint) and the block record groups that check the run
//! ([`ensure_groups`], format 5), decoded and verified block by block on the blocking
//! pool, retried, all within the fetch deadline. Calls the layer's
//! [`BlobSource`](super::BlobSource) (the registry or a local blob), `layout.rs` and reads
//! the local tiers (`local.rs`); stores nothing and takes no lock of the cache (single-flight
//! and storing the result are the caller's, in `mod.rs`).

use super::layout::{Layout, LayoutError};
use super::local::Tiers;
use super::{CachedLayer, Error, Stats};
use crate::layer::Window;
use bytes::Bytes;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most uncompressed bytes fetched by one Range request (a whole-layer fetch's requests).
/// Caps are in bytes so that they do not shrink with the index's span size; a run always
/// takes at least one span.
pub(super) const MAX_COALESCE_BYTES: u64 = 8 << 20;
/// Most uncompressed bytes of one speculative request: a read on demand that joins it waits
/// for the whole run, so speculation goes out in small pieces.
pub(super) const MAX_SPEC_BYTES: u64 = 1 << 20;
/// Speculative requests in flight at most (each also takes a common permit).
const SPEC_PERMITS: usize = 1;
/// Most uncompressed bytes of one background request (warm-up pieces, siblings): a read on
/// demand that joins one waits for the whole piece, but each piece is a request (and, unless
/// the span before it is local, a window request too) whose cost falls on the registry.
/// Measured (docs/benchmarks.md, issue 16): 1 MiB pieces made a cold numpy import 184
/// requests instead of 150 with 4 MiB and 8% slower over loopback; 4 MiB pieces were ~5%
/// slower than 2 MiB over the shaped link (readers waited for larger pieces).
pub(super) const MAX_BACKGROUND_BYTES: u64 = 2 << 20;
/// Background requests in flight at most (each also takes a common permit): the rest of the
/// common permits stay free for reads on demand.
const BACKGROUND_PERMITS: usize = 4;
/// On a far link ([`Fetcher::far`]) this many times the common permits may be in flight:
/// with tens of milliseconds per request, the base number left the link of the benchmarks
/// 57–63% busy in the middle of a cold `import numpy` (docs/benchmarks.md). The background
/// lane keeps its own number (tried at 3x too: no faster start, and two of five `read-most`
/// runs, whose whole-layer pieces go in that lane, took 6 s longer).
const FAR_FACTOR: usize = 3;
/// A link whose fastest small fetch took at least this long is far: round trips, not the
/// server, bound its requests. Over loopback the co-located registry answers the fastest in
/// ~3 ms (its median is ~50 ms under a cold start's load: more requests in flight then only
/// add to its CPU, measured slower); over the 20 ms link of the benchmarks none is under 25.
const FAR_FLOOR: Duration = Duration::from_millis(10);
/// Fetches of at most this many compressed bytes measure the link's floor.
const FLOOR_MAX_BYTES: usize = 512 << 10;
/// Fetches measured before the link is judged.
const FLOOR_SAMPLES: u32 = 4;

/// Which permits a fetch takes besides a common one.
#[derive(Clone, Copy)]
pub(super) enum Lane<'a> {
    /// Reads on demand, readahead, prefetch: a common permit only.
    Common,
    /// Speculation: the speculative permit, then an idle link.
    Spec(&'a Promote),
    /// Fetches nobody waits for yet (warm-up, siblings): a background permit.
    Background(&'a Promote),
}

/// A speculative fetch that a read on demand joined: it stops waiting for an idle link.
#[derive(Default)]
pub(super) struct Promote {
    wanted: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Promote {
    pub(super) fn promote(&self) {
        self.wanted.store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

/// The fetches that are not speculative, counted from the moment they are started (before
/// their task first runs) until they end; speculation waits until none is left (the link is
/// then idle, and a guess costs a reader nothing).
#[derive(Default)]
pub(super) struct LinkUse {
    busy: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// One fetch counted in [`LinkUse`] while this lives.
pub(super) struct Busy(Arc<LinkUse>);

impl LinkUse {
    pub(super) fn enter(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Busy(self.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self
            .0
            .busy
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}
/// Whole-fetch attempts per run of spans (the registry client retries requests on its own).
const FETCH_ATTEMPTS: u32 = 3;

/// Runs of spans to fetch together: `missing` (ascending span numbers) cut where a span is
/// not the next one, where the layout cannot continue one request (eStargz chunks that are
/// not adjacent in the blob), and where the next span would take the run's uncompressed
/// bytes past `max` ([`MAX_COALESCE_BYTES`], [`MAX_SPEC_BYTES`], [`MAX_BACKGROUND_BYTES`]).
pub(super) fn coalesce(layout: &Layout, missing: &[usize], max: u64) -> Vec<Range<usize>> {
    let len = |i: usize| {
        let r = layout.span_range(i);
        r.end - r.start
    };
    let mut runs: Vec<(Range<usize>, u64)> = Vec::new();
    for &i in missing {
        match runs.last_mut() {
            Some((r, bytes)) if r.end == i && layout.adjacent(i - 1) && *bytes + len(i) <= max => {
                r.end = i + 1;
                *bytes += len(i);
            }
            _ => runs.push((i..i + 1, len(i))),
        }
    }
    runs.into_iter().map(|(r, _)| r).collect()
}

/// On a near link ([`Fetcher::near`]): extend each run of `runs` (ascending, disjoint) over
/// the spans after it for which `free` holds (neither local nor being fetched), up to the
/// next run, while its compressed bytes are fewer than `min` and its uncompressed bytes stay
/// within `max`; spans the layout cannot continue one request over (eStargz chunks apart)
/// end it. A co-located registry's cost is per request: the bytes after a miss are most
/// often the files read next (a package's modules, in tar order), and they come with it.
pub(super) fn extend_runs(
    layout: &Layout,
    runs: &mut [Range<usize>],
    min: u64,
    max: u64,
    free: impl Fn(usize) -> bool,
) {
    let n = layout.count();
    let len = |i: usize| {
        let r = layout.span_range(i);
        r.end - r.start
    };
    for k in 0..runs.len() {
        let limit = runs.get(k + 1).map_or(n, |r| r.start);
        let run = &mut runs[k];
        let mut bytes: u64 = run.clone().map(len).sum();
        while run.end < limit
            && layout.adjacent(run.end - 1)
            && bytes + len(run.end) <= max
            && free(run.end)
            && layout
                .compressed(run.clone())
                .is_ok_and(|c| c.end - c.start < min)
        {
            bytes += len(run.end);
            run.end += 1;
        }
    }
}

pub(super) struct Fetcher {
    permits: tokio::sync::Semaphore,
    /// Taken before a common permit by speculative fetches.
    spec_permits: tokio::sync::Semaphore,
    /// Taken before a common permit by background fetches.
    bg_permits: tokio::sync::Semaphore,
    /// The extra common permits a far link adds ([`FAR_FACTOR`]).
    far_permits: tokio::sync::Semaphore,
    /// The fastest small fetch so far (µs), and how many were measured.
    floor_us: std::sync::atomic::AtomicU64,
    floor_samples: std::sync::atomic::AtomicU32,
    /// The fastest answer the sources' servers gave any request (µs; [`Self::note_answers`]).
    answer_floor_us: std::sync::atomic::AtomicU64,
    /// Fetches on demand (and readahead, prefetch) started and not ended.
    pub(super) link: Arc<LinkUse>,
    pub(super) timeout: Duration,
    stats: Arc<Stats>,
    /// The local tiers, read for the bytes before a checkpoint (its window).
    tiers: Arc<Tiers>,
}

/// What a fetch decodes: a run of whole spans, or blocks `0..=k` of one span.
#[derive(Clone)]
enum Decode {
    Run(Range<usize>),
    Prefix { span: usize, last_block: usize },
}

impl Decode {
    fn apply(
        &self,
        layout: &Layout,
        compressed: &[u8],
        window: Option<Window<'_>>,
    ) -> Result<Vec<u8>, LayoutError> {
        match self {
            Decode::Run(run) => layout.decode(run.clone(), compressed, window),
            Decode::Prefix { span, last_block } => {
                layout.decode_prefix(*span, *last_block, compressed, window)
            }
        }
    }

    fn spans(&self) -> Range<usize> {
        match self {
            Decode::Run(run) => run.clone(),
            Decode::Prefix { span, .. } => *span..*span + 1,
        }
    }
}

/// Resolves once `cond` holds; `n` is notified whenever it may have become true.
async fn until(n: &tokio::sync::Notify, cond: impl Fn() -> bool) {
    loop {
        let woken = n.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if cond() {
            return;
        }
        woken.await;
    }
}

impl Fetcher {
    pub(super) fn new(
        max_concurrent: usize,
        timeout: Duration,
        stats: Arc<Stats>,
        tiers: Arc<Tiers>,
    ) -> Fetcher {
        Fetcher {
            permits: tokio::sync::Semaphore::new(max_concurrent.max(1)),
            spec_permits: tokio::sync::Semaphore::new(SPEC_PERMITS),
            bg_permits: tokio::sync::Semaphore::new(BACKGROUND_PERMITS),
            far_permits: tokio::sync::Semaphore::new(max_concurrent.max(1) * (FAR_FACTOR - 1)),
            floor_us: std::sync::atomic::AtomicU64::new(u64::MAX),
            floor_samples: Default::default(),
            answer_floor_us: std::sync::atomic::AtomicU64::new(u64::MAX),
            link: Arc::new(LinkUse::default()),
            timeout,
            stats,
            tiers,
        }
    }

    /// Whether a fetch could start now without waiting for a permit.
    pub(super) fn permits_free(&self) -> bool {
        self.permits.available_permits() > 0
            || (self.far() && self.far_permits.available_permits() > 0)
    }

    /// Whether the link is far: the fastest of the small fetches measured so far took at
    /// least [`FAR_FLOOR`] (round trips bound it, so more requests in flight fill it), and
    /// no server answered faster ([`Self::note_answers`]: a loaded co-located registry's
    /// fetches take that long too, and more requests in flight only load it more).
    pub(super) fn far(&self) -> bool {
        self.floor_samples
            .load(std::sync::atomic::Ordering::Relaxed)
            >= FLOOR_SAMPLES
            && !self.fast_seen()
    }

    /// Whether a small fetch of this cache, or an answer of a source's server, came in
    /// under [`FAR_FLOOR`].
    fn fast_seen(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let floor = FAR_FLOOR.as_micros() as u64;
        self.floor_us.load(Relaxed) < floor || self.answer_floor_us.load(Relaxed) < floor
    }

    /// Whether the link to `source` is near: a small fetch of this cache or any answer of
    /// the source's server came in under [`FAR_FLOOR`] (one is proof enough: round trips
    /// are no shorter than the fastest answer). The source's answers (the connection
    /// pings, the manifest, the index heads) come before the first span fetch, so a cold
    /// start's first burst of fetches is judged too.
    pub(super) fn near(&self, source: &dyn super::BlobSource) -> bool {
        self.note_answers(source);
        self.fast_seen()
    }

    /// Take the fastest answer of `source`'s server into the link's judgement: a registry
    /// answering its cheapest requests in a few milliseconds is near even when a cold
    /// start's load makes every span fetch take longer (measured over loopback: the
    /// distribution registry at 10–50 ms a fetch, its `/v2/` pings at 1–3 ms).
    fn note_answers(&self, source: &dyn super::BlobSource) {
        if let Some(d) = source.fastest_answer() {
            let us = d.as_micros().try_into().unwrap_or(u64::MAX);
            self.answer_floor_us
                .fetch_min(us, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Count a fetch of `bytes` compressed bytes that took `took` in the link's floor.
    fn measured(&self, bytes: usize, took: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        if bytes <= FLOOR_MAX_BYTES {
            self.floor_us
                .fetch_min(took.as_micros().try_into().unwrap_or(u64::MAX), Relaxed);
            self.floor_samples.fetch_add(1, Relaxed);
        }
    }

    /// A common permit, or on a far link one of the extra ones (whichever comes first).
    async fn common_permit(
        &self,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, tokio::sync::AcquireError> {
        if !self.far() {
            return self.permits.acquire().await;
        }
        tokio::select! {
            biased;
            p = self.permits.acquire() => p,
            p = self.far_permits.acquire() => p,
        }
    }

    /// Fetch, decode and verify spans `run` (one Range request); one verified buffer per span.
    /// A speculative fetch waits for the permit of the speculative lane and then for an idle
    /// link (no other fetch running), a background one for a background permit; either stops
    /// waiting when a read on demand joins it (`Promote`) meanwhile.
    pub(super) async fn run(
        &self,
        layer: &Arc<CachedLayer>,
        run: Range<usize>,
        lane: Lane<'_>,
    ) -> Result<Vec<Bytes>, Error> {
        use std::sync::atomic::Ordering::SeqCst;
        let closed = || Error::Closed {
            layer: layer.digest,
        };
        let _lane = match lane {
            Lane::Common => None,
            Lane::Spec(p) => {
                let wanted = || p.wanted.load(SeqCst);
                let permit = tokio::select! {
                    p = self.spec_permits.acquire() => Some(p.map_err(|_| closed())?),
                    () = until(&p.notify, wanted) => None,
                };
                tokio::select! {
                    () = until(&self.link.idle, || self.link.busy.load(SeqCst) == 0) => {}
                    () = until(&p.notify, wanted) => {}
                }
                permit
            }
            Lane::Background(p) => {
                let wanted = || p.wanted.load(SeqCst);
                tokio::select! {
                    p = self.bg_permits.acquire() => Some(p.map_err(|_| closed())?),
                    () = until(&p.notify, wanted) => None,
                }
            }
        };
        // Not speculative: counted in `link` by the caller from the moment it was started.
        let crange = layer
            .layout
            .compressed(run.clone())
            .map_err(|source| Error::Index {
                layer: layer.digest,
                source: Box::new(source),
            })?;
        let data = self
            .within_deadline(layer, crange.clone(), async {
                self.fetch_decode(layer, crange.clone(), Decode::Run(run.clone()))
                    .await
            })
            .await?;
        self.stats.spans(run.len() as u64);
        let base = layer.layout.span_range(run.start).start;
        run.map(|i| {
            let r = layer.layout.span_range(i);
            let r = (r.start - base) as usize..(r.end - base) as usize;
            if r.end > data.len() {
                return Err(Error::Short {
                    layer: layer.digest,
                    span: i,
                    got: data.len().saturating_sub(r.start),
                    want: r.len(),
                });
            }
            Ok(data.slice(r))
        })
        .collect()
    }

    /// Fetch compressed bytes `crange` (from span `i`'s checkpoint to block `k`'s bound) and
    /// decode and verify blocks `0..=k` of span `i`: the span's first bytes through block `k`.
    pub(super) async fn prefix(
        &self,
        layer: &Arc<CachedLayer>,
        i: usize,
        k: usize,
        crange: Range<u64>,
    ) -> Result<Bytes, Error> {
        let decode = Decode::Prefix {
            span: i,
            last_block: k,
        };
        self.within_deadline(layer, crange.clone(), async {
            self.fetch_decode(layer, crange.clone(), decode).await
        })
        .await
    }

    /// `fetch` within the fetch deadline (all retries included).
    async fn within_deadline<T>(
        &self,
        layer: &CachedLayer,
        range: Range<u64>,
        fetch: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let after = self.timeout;
        match tokio::time::timeout(after, fetch).await {
            Ok(r) => r,
            Err(_) => {
                tracing::error!(layer = %layer.digest, ?range, "fetch timed out after {after:?}");
                Err(Error::Timeout {
                    layer: layer.digest,
                    range,
                    after,
                })
            }
        }
    }

    /// Fetch compressed bytes `crange` under a fetch permit, with the first checkpoint's
    /// window when the index holds only its head, and decode and verify them on the blocking
    /// pool; [`FETCH_ATTEMPTS`] attempts.
    async fn fetch_decode(
        &self,
        layer: &Arc<CachedLayer>,
        crange: Range<u64>,
        decode: Decode,
    ) -> Result<Bytes, Error> {
        self.note_answers(&*layer.source);
        let _permit = self.common_permit().await.map_err(|_| Error::Closed {
            layer: layer.digest,
        })?;
        let first = decode.spans().start;
        let window_need = layer.layout.remote_window(first);
        // The window is the 32 KiB before the checkpoint: when the span before is local
        // (verified), no request for the stored window (the first attempt only).
        let mut before = window_need
            .as_ref()
            .and_then(|_| layer.layout.window_before(first))
            .and_then(|r| {
                let spans = layer.layout.locate(r.clone()).ok()?;
                self.tiers.read_local(layer, spans, r)
            });
        tracing::debug!(layer = %layer.digest, span = first, ?crange, window = window_need.is_some(), window_local = before.is_some(), "fetch");
        let mut attempt = 0;
        loop {
            let err = match self
                .attempt(
                    layer,
                    &crange,
                    &decode,
                    window_need.as_ref(),
                    before.as_ref(),
                )
                .await
            {
                Ok(b) => return Ok(b),
                Err(e @ Error::Task { .. }) => return Err(e),
                Err(e) => e,
            };
            match &err {
                Error::Verify { .. } if before.take().is_some() => {
                    // Not the fetched bytes' fault necessarily: the next attempt uses the
                    // stored window (and blames the source if it fails again).
                    tracing::warn!(layer = %layer.digest, attempt, "decoding with the window from the local span before failed: {}", err.report());
                }
                Error::Verify { .. } => {
                    tracing::error!(layer = %layer.digest, attempt, "fetched bytes failed verification: {}", err.report());
                    layer.source.distrust();
                    // The stored window they were decoded with is checked only by them
                    // (format 4): it may be the culprit, so it is fetched again too.
                    if let (Some((_, None)), Some(w)) = (&window_need, &layer.windows) {
                        w.forget(first).await;
                    }
                }
                Error::Window { .. }
                | Error::NoWindowSource { .. }
                | Error::Groups { .. }
                | Error::NoGroupSource { .. } => {
                    tracing::warn!(layer = %layer.digest, attempt, "window fetch failed: {}", err.report())
                }
                _ => {
                    tracing::warn!(layer = %layer.digest, attempt, "fetch failed: {}", err.report())
                }
            }
            attempt += 1;
            if attempt >= FETCH_ATTEMPTS {
                return Err(err);
            }
        }
    }

    /// One attempt of [`fetch_decode`](Self::fetch_decode).
    async fn attempt(
        &self,
        layer: &Arc<CachedLayer>,
        crange: &Range<u64>,
        decode: &Decode,
        window_need: Option<&(Range<u64>, Option<[u8; 32]>)>,
        before: Option<&Bytes>,
    ) -> Result<Bytes, Error> {
        let first = decode.spans().start;
        let started = Instant::now();
        // The window (if the index holds only its head) comes with the span's bytes, unless
        // the bytes before the checkpoint are local.
        let window_fut = async {
            match (window_need, &layer.windows) {
                (None, _) => Ok(None),
                (Some(_), _) if before.is_some() => Ok(None),
                (Some((r, d)), Some(w)) => {
                    w.get(first, r.clone(), *d)
                        .await
                        .map(Some)
                        .map_err(|source| Error::Window {
                            layer: layer.digest,
                            span: first,
                            source: Box::new(source),
                        })
                }
                (Some(_), None) => Err(Error::NoWindowSource {
                    layer: layer.digest,
                    span: first,
                }),
            }
        };
        let (fetched, window, groups) = futures::future::join3(
            layer.source.fetch(crange.clone()),
            window_fut,
            ensure_groups(layer, decode.spans()),
        )
        .await;
        let window = window?;
        groups?;
        let compressed = fetched.map_err(|source| Error::Fetch {
            layer: layer.digest,
            range: crange.clone(),
            source: Box::new(source),
        })?;
        self.stats
            .fetched(compressed.len() as u64, started.elapsed());
        let net = started.elapsed();
        self.measured(compressed.len(), net);
        let (l2, dec) = (layer.clone(), decode.clone());
        let at = crange.start;
        let before = before.cloned();
        let decoded = tokio::task::spawn_blocking(move || {
            let w = match (&window, &before) {
                (Some(w), _) => Some(Window::Stored(w)),
                (None, Some(b)) => Some(Window::Before(b)),
                (None, None) => None,
            };
            let out = dec.apply(&l2.layout, &compressed, w);
            // A whole-layer fetch is recording what the spans were decoded from.
            if out.is_ok() && l2.check.recording() {
                let spans = match &dec {
                    Decode::Run(run) => Some(run.clone()),
                    Decode::Prefix { .. } => None,
                };
                l2.check.record(at, &compressed, spans);
            }
            out
        })
        .await;
        tracing::debug!(
            layer = %layer.digest,
            span = first,
            net_ms = net.as_millis() as u64,
            decode_ms = (started.elapsed() - net).as_millis() as u64,
            "fetched"
        );
        match decoded {
            Ok(Ok(d)) => Ok(Bytes::from(d)),
            Ok(Err(source)) => Err(Error::Verify {
                layer: layer.digest,
                spans: decode.spans(),
                range: crange.clone(),
                source: Box::new(source),
            }),
            Err(e) => Err(Error::Task {
                layer: layer.digest,
                what: "decode",
                source: Arc::new(e),
            }),
        }
    }
}

/// Make the block records of spans `spans` usable: a head-only index (format 5) fetches the
/// groups holding them from the sidecar (concurrently, each checked against its sha256 in the
/// head) unless they are loaded or local.
pub(super) async fn ensure_groups(
    layer: &Arc<CachedLayer>,
    spans: Range<usize>,
) -> Result<(), Error> {
    let first = spans.start;
    let missing = layer.layout.groups_missing(spans);
    if missing.is_empty() {
        return Ok(());
    }
    let Some(src) = &layer.groups else {
        return Err(Error::NoGroupSource {
            layer: layer.digest,
            span: first,
        });
    };
    let each = missing.into_iter().map(|grp| async move {
        let Some((range, digest)) = layer.layout.group(grp) else {
            return Ok(());
        };
        let b = src
            .get(grp, range, Some(digest))
            .await
            .map_err(|source| Error::Groups {
                layer: layer.digest,
                span: first,
                source: Box::new(source),
            })?;
        layer
            .layout
            .load_group(grp, &b)
            .map_err(|source| Error::Index {
                layer: layer.digest,
                source: Box::new(source),
            })
    });
    futures::future::try_join_all(each).await.map(|_| ())
}

/// Start fetching the sidecar pieces that fetching the missing spans of `wanted` (ranges of
/// span numbers of `layer`) will need — for each run of them as the cache will fetch it
/// ([`coalesce`]), the gzip window of its first checkpoint (unless the span before it is
/// local) and the block record groups of its spans — all asked at once, so that pieces close
/// together in the sidecar share a request (`windows.rs` batches them): a profile prefetch
/// knows its reads up front, where reads on demand ask for one piece after another. Nothing
/// waits for them: the runs' own fetches join these (single-flight per piece), and fetch a
/// piece again if this attempt failed.
pub(super) fn sidecar_pieces(layer: &Arc<CachedLayer>, tiers: &Tiers, wanted: &[Range<usize>]) {
    for spans in wanted {
        let missing: Vec<usize> = spans
            .clone()
            .filter(|&i| !tiers.has_span(layer, i))
            .collect();
        for run in coalesce(&layer.layout, &missing, MAX_COALESCE_BYTES) {
            let first = run.start;
            let before_local = first > 0 && tiers.has_span(layer, first - 1);
            if let (Some((r, d)), Some(w), false) = (
                layer.layout.remote_window(first),
                &layer.windows,
                before_local,
            ) {
                let w = w.clone();
                tokio::spawn(async move {
                    if let Err(e) = w.get(first, r, d).await {
                        tracing::debug!("window fetched ahead failed: {e}");
                    }
                });
            }
            if layer.groups.is_some() && !layer.layout.groups_missing(run.clone()).is_empty() {
                let l = layer.clone();
                tokio::spawn(async move {
                    if let Err(e) = ensure_groups(&l, run).await {
                        tracing::debug!("block record groups fetched ahead failed: {}", e.report());
                    }
                });
            }
        }
    }
}
