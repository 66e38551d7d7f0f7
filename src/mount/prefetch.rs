//! Background prefetch of a mounted image: the files of its access profile first (recorded
//! here, published next to the image, or an eStargz layer's prioritised files; the parts of
//! each file read when the profile kept them), then every layer whole after a grace period;
//! demand reads keep priority inside the cache.
//!
//! Calls `image` (profile storage and fetch, eStargz prefetch lists), `cache` and `store`.

use super::lazy::LazyImage;
use crate::cache::ChunkCache;
use crate::config::ProfileSource;
use crate::registry::Client;
use crate::store::Store;
use std::ops::Range;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

/// How long after mounting the background fetch of whole layers starts.
pub const BULK_PREFETCH_DELAY: std::time::Duration = std::time::Duration::from_secs(2);

/// Keep the profile of this run if the image has none yet (the first, cold run is the one
/// that shows what a start needs).
pub fn save_profile(store: &Store, image: &LazyImage) {
    let (files, ranges) = image.profile.snapshot();
    crate::image::profile::keep(store, &image.record.manifest_digest, &files, &ranges);
}

/// Progress of the profile-first prefetch, for `strata stats`; and whether a recorded profile
/// guides the image's fetches now ([`guided`](Self::guided)).
#[derive(Default, Debug)]
pub struct ProfilePrefetch {
    source: std::sync::Mutex<&'static str>,
    files: std::sync::atomic::AtomicUsize,
    done: std::sync::atomic::AtomicUsize,
    /// 0: not known yet; [`GUIDED`]; [`UNGUIDED`].
    guide: std::sync::atomic::AtomicU8,
    decided: tokio::sync::Notify,
}

const GUIDED: u8 = 1;
const UNGUIDED: u8 = 2;

/// Sets the image unguided when a profile prefetch stops before its profile was known or
/// fails before its reads are done (`.1`: they are).
struct Unguide<'a>(&'a ProfilePrefetch, bool);

impl Drop for Unguide<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.no_prefetch();
        } else {
            self.0.set_guided(false);
        }
    }
}

/// A snapshot of [`ProfilePrefetch`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProfileProgress {
    /// `local`, `registry`, `estargz` (the layers' prefetch landmarks) or empty (none).
    pub source: String,
    /// Files of the profile that were not local at mount time.
    pub files: usize,
    /// Of those, fetched so far.
    pub done: usize,
    /// Whether the profile guides the image's fetches alone ([`ProfilePrefetch::guided`]).
    #[serde(default)]
    pub guided: bool,
}

impl ProfilePrefetch {
    /// Whether a recorded profile — the parts of each file a start read, local or published
    /// — is being prefetched: the other predictors (the launch warm-up, the library and
    /// import warm-up, the sibling fetch) then stand aside, since they fetch what it fetches
    /// in more, smaller requests and more bytes (measured on big/import-numpy with a
    /// published profile: 1.61 s, 21.1 MB with them; 1.30 s, 16.7 MB without; issue 16).
    /// It stays so after the profile's reads are done: the container's reads are then
    /// mostly local, and a warm-up of each object they touch would fetch its 4 MiB beyond
    /// what the profile kept; the whole layers follow in the background anyway.
    pub fn guided(&self) -> bool {
        self.guide.load(std::sync::atomic::Ordering::SeqCst) == GUIDED
    }

    /// Say whether a recorded profile guides the prefetch (see [`guided`](Self::guided)).
    pub fn set_guided(&self, on: bool) {
        let v = if on { GUIDED } else { UNGUIDED };
        self.guide.store(v, std::sync::atomic::Ordering::SeqCst);
        self.decided.notify_waiters();
    }

    /// No profile prefetch for this mount: unguided, unless one was already decided.
    pub fn no_prefetch(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        if self
            .guide
            .compare_exchange(0, UNGUIDED, SeqCst, SeqCst)
            .is_ok()
        {
            self.decided.notify_waiters();
        }
    }

    /// Whether the prefetch is guided, once that is known (at most `max` from now: then
    /// unguided).
    pub async fn wait_guided(&self, max: std::time::Duration) -> bool {
        let known = async {
            loop {
                let woken = self.decided.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                if self.guide.load(std::sync::atomic::Ordering::SeqCst) != 0 {
                    return;
                }
                woken.await;
            }
        };
        let _ = tokio::time::timeout(max, known).await;
        self.guided()
    }

    pub fn snapshot(&self) -> ProfileProgress {
        use std::sync::atomic::Ordering::Relaxed;
        ProfileProgress {
            source: self
                .source
                .lock()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            files: self.files.load(Relaxed),
            done: self.done.load(Relaxed),
            guided: self.guided(),
        }
    }
}

/// How many profile reads (see [`join`]) are fetched at once: enough to fill a link with a
/// round trip of tens of milliseconds, few enough that the first-read files go out first.
const PROFILE_CONCURRENCY: usize = 6;
/// Bytes of one profiled file prefetched at most when the profile names files, not the parts
/// read (a profile of an older strata, eStargz prioritised files):
/// a large library is read sparsely (its start, its writable segment, a few pages of code;
/// the warm-up reads the segment, faults the rest). Measured on big/import-numpy with its
/// published profile: whole files 1.99–2.04 s (39.5 MB), 8 MiB 1.66 s, 4 MiB 1.54–1.55 s
/// (29.2 MB), 1 MiB 1.63–1.66 s.
const PROFILE_FILE_MAX_BYTES: u64 = 4 << 20;

/// Most file bytes of one profile prefetch read: a read on demand that joins one waits for
/// all of it (a multi-span run is one request), but each is a request. Measured on
/// big/import-numpy with a published profile (3 runs each): 1 MiB 1.41–1.42 s shaped,
/// 0.83–0.85 s over loopback; 4 MiB 1.27–1.39 / 0.78–0.88 s; 16 MiB 1.35–1.40 / 0.84–0.90 s.
const PROFILE_PIECE_BYTES: u64 = 4 << 20;
/// Recorded ranges closer than this are read as one (the spans between are small).
const PROFILE_JOIN_GAP: u64 = 128 << 10;

/// The reads of one file of `size` bytes for its recorded `read` ranges (from a profile:
/// cut to the file first): neighbours joined, long ones cut at [`PROFILE_PIECE_BYTES`] (all
/// of a file's pieces go out at once).
fn pieces(read: &[[u64; 2]], size: u64) -> Vec<std::ops::Range<u64>> {
    let mut joined: Vec<std::ops::Range<u64>> = Vec::new();
    for &[a, b] in read {
        let (a, b) = (a.min(size), b.min(size));
        if a >= b {
            continue;
        }
        match joined.last_mut() {
            Some(last) if a <= last.end.saturating_add(PROFILE_JOIN_GAP) => {
                last.end = last.end.max(b)
            }
            _ => joined.push(a..b),
        }
    }
    let mut out = Vec::new();
    for r in joined {
        let mut at = r.start;
        while at < r.end {
            let end = at.saturating_add(PROFILE_PIECE_BYTES).min(r.end);
            out.push(at..end);
            at = end;
        }
    }
    out
}

/// One read of a profile prefetch: virtual `range` of layer `layer` (an index into the
/// image's layers), the spans holding it, and the files (places in first-read order, once
/// per part) whose parts it covers.
#[derive(Debug, Clone, PartialEq)]
struct Part {
    layer: usize,
    range: Range<u64>,
    spans: Range<usize>,
    files: Vec<usize>,
}

/// The profile's parts joined across files: parts of one layer whose spans touch or overlap
/// (files next to each other in the tar) become one read while its spans' uncompressed bytes
/// (`span_bytes`) stay within [`PROFILE_PIECE_BYTES`] — each read is a Range request, a
/// gzip window and a block record group of its own, and a co-located registry's cost is per
/// request. Reads come in the order of their earliest file.
fn join(mut parts: Vec<Part>, span_bytes: impl Fn(usize, Range<usize>) -> u64) -> Vec<Part> {
    parts.sort_by_key(|p| (p.layer, p.spans.start, p.range.start));
    let mut out: Vec<Part> = Vec::new();
    for p in parts {
        match out.last_mut() {
            Some(o)
                if o.layer == p.layer
                    && p.spans.start <= o.spans.end
                    && span_bytes(p.layer, o.spans.start..o.spans.end.max(p.spans.end))
                        <= PROFILE_PIECE_BYTES =>
            {
                o.range = o.range.start.min(p.range.start)..o.range.end.max(p.range.end);
                o.spans.end = o.spans.end.max(p.spans.end);
                o.files.extend(p.files);
            }
            _ => out.push(p),
        }
    }
    out.sort_by_key(|p| p.files.iter().min().copied().unwrap_or(usize::MAX));
    out
}

/// Prefetch in the background: the files of the image's access profile first (the one
/// recorded here, else — with `prefetch-profile: registry` — one published with `strata
/// profile push`), then every layer in order. Reads on demand keep priority (see
/// `ChunkCache::prefetch_layer`).
pub async fn prefetch(
    store: Arc<Store>,
    cache: Arc<ChunkCache>,
    image: Arc<LazyImage>,
    client: Arc<Client>,
    source: ProfileSource,
) -> Result<(), crate::cache::Error> {
    use futures::StreamExt;
    let manifest = image.record.manifest_digest;
    use std::sync::atomic::Ordering::Relaxed;
    let progress = &image.profile_prefetch;
    let mut unguide = Unguide(progress, false);
    let set_source = |s: &'static str| {
        if let Ok(mut g) = progress.source.lock() {
            *g = s;
        }
    };
    let mut profile = match source {
        ProfileSource::None => Vec::new(),
        _ => crate::image::profile::local(&store, &manifest).unwrap_or_default(),
    };
    let mut ranges = Vec::new();
    if !profile.is_empty() {
        set_source("local");
        ranges = crate::image::profile::local_ranges(&store, &manifest);
    }
    if profile.is_empty() && source == ProfileSource::Registry {
        let early = image
            .early_profile
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let got = match early {
            Some(h) => match h.await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("published access profile fetch: {e}");
                    Ok(None)
                }
            },
            None => crate::image::profile::fetch(&client, &image.reference, &image.record).await,
        };
        match got {
            Ok(Some((p, r))) => {
                tracing::info!(
                    files = p.len(),
                    ranges = r.len(),
                    "prefetching a published access profile"
                );
                set_source("registry");
                profile = p;
                ranges = r;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("published access profile not used: {e}"),
        }
    }
    if profile.is_empty() && source != ProfileSource::None {
        // eStargz layers built with prioritised files (`.prefetch.landmark`), bottom first.
        for (i, l) in image.layers.iter().enumerate() {
            let path = crate::image::index::prefetch_list_path(&store, &l.digest);
            let files: Vec<String> = store.read_json(&path).ok().flatten().unwrap_or_default();
            profile.extend(files.into_iter().map(|f| (i, f)));
        }
        if !profile.is_empty() {
            // Parts read come with a recorded profile only (a published one may carry
            // ranges without files).
            ranges.clear();
            set_source("estargz");
        }
    }
    // Virtual ranges in first-read order: of each file not yet local, the parts the profile
    // says were read (see [`pieces`]), else its first `PROFILE_FILE_MAX_BYTES`.
    let ranges_recorded = ranges.iter().any(|r| !r.is_empty());
    let per_file: Vec<Vec<(usize, Range<u64>)>> = profile
        .iter()
        .enumerate()
        .filter_map(|(n, (layer, path))| {
            let l = image.layers.get(*layer)?;
            let entry = l.layout.index().lookup(path)?;
            let parts = match ranges.get(n).filter(|r| !r.is_empty()) {
                Some(read) => pieces(read, entry.size()),
                None => std::iter::once(0..PROFILE_FILE_MAX_BYTES).collect(),
            };
            let out: Vec<_> = parts
                .into_iter()
                .filter_map(|p| l.layout.file_range(&entry, p).ok())
                .filter(|r| !r.is_empty() && cache.try_read_local(l, r.clone()).is_none())
                .map(|r| (*layer, r))
                .collect();
            (!out.is_empty()).then_some(out)
        })
        .collect();
    progress.files.store(per_file.len(), Relaxed);
    let layers = &image.layers;
    let parts: Vec<Part> = per_file
        .into_iter()
        .enumerate()
        .flat_map(|(f, ps)| {
            ps.into_iter().filter_map(move |(layer, range)| {
                let spans = layers.get(layer)?.layout.locate(range.clone()).ok()?;
                Some(Part {
                    layer,
                    range,
                    spans,
                    files: vec![f],
                })
            })
        })
        .collect();
    // A file is done when all of its parts are (one whose parts the index could not place
    // at once).
    let mut counts = vec![0usize; progress.files.load(Relaxed)];
    for p in &parts {
        if let Some(n) = p.files.first().and_then(|&f| counts.get_mut(f)) {
            *n += 1;
        }
    }
    progress
        .done
        .fetch_add(counts.iter().filter(|&&n| n == 0).count(), Relaxed);
    let left: Vec<AtomicUsize> = counts.into_iter().map(AtomicUsize::new).collect();
    let reads = join(parts, |layer, spans| {
        image.layers.get(layer).map_or(u64::MAX, |l| {
            let (a, b) = (
                l.layout.span_range(spans.start),
                l.layout.span_range(spans.end - 1),
            );
            b.end.saturating_sub(a.start)
        })
    });
    tracing::debug!(files = left.len(), reads = reads.len(), "profile reads");
    // Guided by the parts a start read (an eStargz landmark list names files only).
    progress.set_guided(ranges_recorded && !reads.is_empty());
    // Their windows and block record groups first, in few requests.
    for (i, l) in image.layers.iter().enumerate() {
        let mine: Vec<Range<usize>> = reads
            .iter()
            .filter(|p| p.layer == i)
            .map(|p| p.spans.clone())
            .collect();
        if !mine.is_empty() {
            cache.fetch_sidecar_pieces(l, &mine);
        }
    }
    let left = &left;
    let mut fetches = futures::stream::iter(reads)
        .filter_map(|p| {
            let l = image.layers.get(p.layer).cloned();
            futures::future::ready(l.map(|l| (l, p)))
        })
        .map(|(l, p)| {
            let cache = cache.clone();
            async move {
                cache.read_prefetch(&l, p.range).await?;
                for f in p.files {
                    if left.get(f).map(|n| n.fetch_sub(1, Relaxed)) == Some(1) {
                        progress.done.fetch_add(1, Relaxed);
                    }
                }
                Ok::<(), crate::cache::Error>(())
            }
        })
        .buffer_unordered(PROFILE_CONCURRENCY);
    while let Some(res) = fetches.next().await {
        res?;
    }
    drop(fetches);
    unguide.1 = true;
    // Whole layers only after a grace period: a short-lived command's cold start should not
    // share the link with bytes it will never read.
    tokio::time::sleep(BULK_PREFETCH_DELAY).await;
    for l in &image.layers {
        match cache.prefetch_layer(l).await {
            Ok(_) => {}
            // That layer is refused from now on; the others are still worth fetching.
            Err(e) if whole_layer_failed(&store, &image.reference, &e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// If `e` says a layer fetched whole did not match its digest (the cache has refused the
/// layer, dropped its spans and the mirrors that served it): drop the layer's stored index so
/// that no later mount believes it, and say loudly what happened, naming the image. Returns
/// whether it was that error.
pub fn whole_layer_failed(
    store: &Store,
    image: &crate::reference::Reference,
    e: &crate::cache::Error,
) -> bool {
    let crate::cache::Error::LayerDigest {
        layer,
        problem,
        mirrors,
    } = e
    else {
        return false;
    };
    crate::image::bind::forget_index(store, layer);
    tracing::error!(
        image = %image,
        layer = %layer,
        mirrors = ?mirrors,
        "image {image}: layer {layer} does not match its digest ({problem}); its index and \
         cached spans are dropped, reads of it fail with EIO; mirrors that served it, now \
         dropped: {}",
        if mirrors.is_empty() { "none".to_string() } else { mirrors.join(", ") }
    );
    true
}

#[cfg(test)]
mod tests {
    /// The launch warm-up waits until it is known whether a recorded profile guides the
    /// fetches, at most its limit; a mount without prefetch does not undo another's guide.
    #[tokio::test]
    async fn the_guide_is_waited_for_and_kept() {
        use std::time::Duration;
        let p = std::sync::Arc::new(super::ProfilePrefetch::default());
        assert!(
            !p.wait_guided(Duration::from_millis(20)).await,
            "not known: unguided"
        );
        let p2 = p.clone();
        let waiter = tokio::spawn(async move { p2.wait_guided(Duration::from_secs(30)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        p.set_guided(true);
        assert!(waiter.await.unwrap());
        p.no_prefetch();
        assert!(p.guided() && p.snapshot().guided);
        {
            let _failed = super::Unguide(&p, false);
        }
        assert!(
            !p.guided(),
            "a profile prefetch that failed gives the other predictors back"
        );
        let q = super::ProfilePrefetch::default();
        q.no_prefetch();
        q.set_guided(true);
        {
            let _done = super::Unguide(&q, true);
        }
        assert!(
            q.guided(),
            "a profile prefetch whose reads are done stays the guide"
        );
    }

    /// Recorded ranges: neighbours closer than the gap are one read, long reads are cut.
    #[test]
    fn recorded_ranges_become_few_bounded_reads() {
        let mib = 1u64 << 20;
        let read = [[0, 64 << 10], [128 << 10, 192 << 10], [mib, 10 * mib]];
        let p = super::pieces(&read, 16 * mib);
        let want = vec![
            0..192 << 10,
            mib..5 * mib,
            5 * mib..9 * mib,
            9 * mib..10 * mib,
        ];
        assert_eq!(p, want);
        assert!(super::pieces(&[], 8 * mib).is_empty());
        // A hostile profile's ranges are cut to the file: no endless list of pieces.
        let p = super::pieces(&[[0, u64::MAX], [u64::MAX - 1, u64::MAX]], 6 * mib);
        assert_eq!(p, vec![0..4 * mib, 4 * mib..6 * mib]);
    }

    /// Parts of one layer whose spans touch or overlap are one read (up to the piece size),
    /// other layers and parts with spans between them are not; reads go in the order of
    /// their earliest file.
    #[test]
    fn neighbouring_files_are_read_together_in_first_read_order() {
        use super::{join, Part};
        let part = |layer, spans: std::ops::Range<usize>, f| Part {
            layer,
            range: spans.start as u64 * 10..spans.end as u64 * 10,
            spans,
            files: vec![f],
        };
        // Spans of 1 MiB: at most four in one read.
        let bytes = |_, s: std::ops::Range<usize>| (s.end - s.start) as u64 * (1 << 20);
        let parts = vec![
            part(1, 0..1, 3),
            part(0, 5..6, 2),
            part(1, 1..2, 0),
            part(0, 0..1, 1),
            part(1, 3..4, 4),
            part(0, 5..8, 5),
            part(0, 8..10, 6),
        ];
        let got: Vec<_> = join(parts, bytes)
            .into_iter()
            .map(|p| (p.layer, p.spans, p.range, p.files))
            .collect();
        let want = vec![
            (1, 0..2, 0..20, vec![3, 0]),
            (0, 0..1, 0..10, vec![1]),
            (0, 5..8, 50..80, vec![2, 5]),
            (1, 3..4, 30..40, vec![4]),
            (0, 8..10, 80..100, vec![6]),
        ];
        assert_eq!(got, want);
    }
}
