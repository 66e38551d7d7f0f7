//! Fetching: single-flight under concurrent readers, corrupt bytes refused, whole-layer fetch,
//! stored gzip windows, and the errno each failure gives a reader.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_random_reads_are_exact_and_single_flight() {
    let f = fixture();
    let cache = open_cache(&f.cache_dir, 1 << 30);
    let (l, src) = layer(&f, 20);
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let (cache, l) = (cache.clone(), l.clone());
        let files = f.files.clone();
        tasks.push(tokio::spawn(async move {
            let mut x = t * 7919 + 1;
            for _ in 0..40 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                let (name, data) = &files[(x >> 33) as usize % files.len()];
                let len = data.len() as u64;
                let start = if len == 0 { 0 } else { (x >> 20) % len };
                let end = (start + (x >> 40) % (600 << 10)).min(len);
                let got = cache.read(&l, vrange(&l, name, start..end)).await.unwrap();
                assert_eq!(
                    &got[..],
                    &data[start as usize..end as usize],
                    "{name} {start}..{end}"
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    cache.flush().await;
    let s = cache.stats.snapshot();
    // Every span was fetched at most once however many readers wanted it.
    let touched = (0..l.layout.count())
        .filter(|&i| cache.has_span(&l, i))
        .count() as u64;
    assert_eq!(s.spans_fetched, touched, "{s:?}");
    assert!(src.requests.load(Ordering::SeqCst) <= touched);
    // Everything again from a fresh process view: served from disk, no request.
    let cache2 = open_cache(&f.cache_dir, 1 << 30);
    let before = src.requests.load(Ordering::SeqCst);
    for (name, data) in &f.files {
        let len = data.len() as u64;
        if (0..l.layout.count()).all(|i| cache2.has_span(&l, i)) {
            let got = cache2.read(&l, vrange(&l, name, 0..len)).await.unwrap();
            assert_eq!(&got[..], &data[..]);
        }
    }
    assert_eq!(src.requests.load(Ordering::SeqCst), before);
}

/// On a link whose fastest fetch takes tens of milliseconds more fetches go out at once than
/// the configured number (4 here), at most three times it; on a fast link never more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_far_link_gets_more_fetches_in_flight() {
    // (fetch delay, the server's fastest answer in ms (0: unknown), far): a server that
    // answers its cheapest requests in 2 ms is near however slow its fetches are (a
    // co-located registry under a cold start's load: more requests only add to it).
    for (delay, answer, far) in [(30, 0, true), (0, 0, false), (30, 2, false)] {
        let f = fixture();
        let cache = open_cache(&f.cache_dir, 1 << 30);
        let (l, src) = layer(&f, delay);
        src.answer_us.store(answer * 1000, Ordering::SeqCst);
        let spans = l.layout.count().min(48);
        assert!(spans >= 16, "fixture too small: {spans} spans");
        // Two waves: the first measures the link, the second may use it.
        for wave in [0..4, 4..spans] {
            let reads: Vec<_> = wave
                .map(|i| {
                    let (cache, l) = (cache.clone(), l.clone());
                    let r = l.layout.span_range(i);
                    tokio::spawn(async move { cache.read(&l, r.start..r.start + 1).await })
                })
                .collect();
            for r in reads {
                r.await.unwrap().unwrap();
            }
        }
        let most = src.max_in_flight.load(Ordering::SeqCst);
        if far {
            assert!(
                (5..=12).contains(&most),
                "far link: {most} in flight at most"
            );
        } else {
            assert!(most <= 4, "near link: {most} in flight at most");
        }
    }
}

/// The spans from `i` on that are local, and the compressed bytes they take.
fn local_run(cache: &ChunkCache, l: &CachedLayer, i: usize) -> (usize, u64) {
    let n = (i..l.layout.count())
        .take_while(|&j| cache.has_span(l, j))
        .count();
    let c = l.layout.compressed(i..i + n.max(1)).unwrap();
    (n, c.end - c.start)
}

#[tokio::test]
async fn a_near_link_brings_the_spans_after_a_miss_in_its_request() {
    const NEAR: u64 = 256 << 10;
    let f = fixture_with(&[6 << 20]);
    let near_cache = |dir: &std::path::Path| {
        ChunkCache::open(CacheConfig {
            near_request: NEAR,
            ..config(dir)
        })
        .unwrap()
    };
    let (l, src) = layer(&f, 0);
    assert!(l.layout.count() >= 20, "fixture too small");
    let one = |i: usize| l.layout.compressed(i..i + 1).unwrap();
    assert!(
        one(4).end - one(4).start < NEAR,
        "spans too large for the test"
    );
    // Nothing known of the link yet: the first miss fetches its span only.
    let cache = near_cache(&f.cache_dir.join("a"));
    let r = l.layout.span_range(0);
    cache.read(&l, r.start..r.start + 1).await.unwrap();
    assert_eq!(local_run(&cache, &l, 0).0, 1);
    // That fetch was fast: the next miss goes on over the spans after it, in one request,
    // until the request holds NEAR compressed bytes; the spans before it stay remote.
    let r = l.layout.span_range(4);
    let before = src.requests.load(Ordering::SeqCst);
    cache.read(&l, r.start..r.start + 1).await.unwrap();
    assert_eq!(src.requests.load(Ordering::SeqCst), before + 1);
    let (n, bytes) = local_run(&cache, &l, 4);
    assert!(n >= 2 && bytes >= NEAR, "{n} spans, {bytes} bytes");
    let c = l.layout.compressed(4..4 + n - 1).unwrap();
    assert!(c.end - c.start < NEAR, "extended past the size: {n} spans");
    assert!(!cache.has_span(&l, 3) && !cache.has_span(&l, 1));
    // ... and stops at a span already local (span 2's request ends where span 4 begins).
    let asked = src.asked.load(Ordering::SeqCst);
    let r = l.layout.span_range(2);
    cache.read(&l, r.start..r.start + 1).await.unwrap();
    let c = l.layout.compressed(2..4).unwrap();
    assert_eq!(src.asked.load(Ordering::SeqCst) - asked, c.end - c.start);
    assert!(cache.has_span(&l, 3) && !cache.has_span(&l, 1));
    // The extended spans' bytes are right.
    let (name, data) = &f.files[0];
    let e = l.layout.index().lookup(name).unwrap();
    let sr = l.layout.span_range(5);
    let got = cache
        .try_read_local(&l, sr.clone())
        .expect("span 5 local")
        .unwrap();
    let rel = (sr.start - e.offset()) as usize..(sr.end - e.offset()) as usize;
    assert_eq!(&got[..], &data[rel]);

    // A server that answered in 2 ms: near from the first miss on.
    let (l2, src2) = layer(&f, 0);
    src2.answer_us.store(2_000, Ordering::SeqCst);
    let cache = near_cache(&f.cache_dir.join("b"));
    let r = l2.layout.span_range(0);
    cache.read(&l2, r.start..r.start + 1).await.unwrap();
    assert!(local_run(&cache, &l2, 0).0 >= 2);

    // A far link (fetches of 30 ms, answers of 25 ms): never extended.
    let (l3, src3) = layer(&f, 30);
    src3.answer_us.store(25_000, Ordering::SeqCst);
    let cache = near_cache(&f.cache_dir.join("c"));
    for i in [0, 3, 6, 9, 12, 15] {
        let r = l3.layout.span_range(i);
        cache.read(&l3, r.start..r.start + 1).await.unwrap();
        assert_eq!(local_run(&cache, &l3, i).0, 1, "span {i}");
    }
}

#[tokio::test]
async fn corrupt_bytes_are_refused_and_not_cached_then_recover() {
    let f = fixture();
    let cache = open_cache(&f.cache_dir, 1 << 30);
    let (l, src) = layer(&f, 0);
    src.corrupt.store(true, Ordering::SeqCst);
    let (name, data) = &f.files[0];
    let r = vrange(&l, name, 0..data.len() as u64);
    let err = cache.read(&l, r.clone()).await.unwrap_err();
    assert!(err.to_string().contains(&l.digest.to_string()), "{err}");
    assert_eq!(
        cache.disk_usage().1,
        0,
        "nothing may be cached from corrupt bytes"
    );
    assert!(cache.try_read_local(&l, r.clone()).is_none());
    src.corrupt.store(false, Ordering::SeqCst);
    let got = cache.read(&l, r.clone()).await.unwrap();
    assert_eq!(&got[..], &data[..]);
    cache.flush().await;
    assert_eq!(
        &cache.try_read_local(&l, r).unwrap().unwrap()[..],
        &data[..]
    );
}

#[test]
fn coalesce_cuts_runs_by_uncompressed_bytes() {
    let f = fixture();
    let (l, _) = layer(&f, 0);
    let n = l.layout.count();
    let all: Vec<usize> = (0..n).collect();
    let len = |i: usize| {
        let r = l.layout.span_range(i);
        r.end - r.start
    };
    let max = 1 << 20;
    let runs = super::super::fetcher::coalesce(&l.layout, &all, max);
    assert!(runs.len() > 1, "{runs:?}");
    assert_eq!(runs.first().map(|r| r.start), Some(0));
    assert_eq!(runs.last().map(|r| r.end), Some(n));
    for (k, r) in runs.iter().enumerate() {
        let bytes: u64 = r.clone().map(len).sum();
        // Within the cap (or one span alone), and full: the next span did not fit.
        assert!(bytes <= max || r.len() == 1, "{r:?}: {bytes}");
        if let Some(next) = runs.get(k + 1) {
            assert_eq!(next.start, r.end, "runs leave a gap");
            assert!(
                bytes + len(r.end) > max,
                "{r:?} could have taken span {}",
                r.end
            );
        }
    }
    // A span missing cuts a run.
    let holed: Vec<usize> = (0..n).filter(|&i| i != 2).collect();
    let runs = super::super::fetcher::coalesce(&l.layout, &holed, 8 << 20);
    assert_eq!(runs, vec![0..2, 3..n]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_layer_fetches_every_span_once_verified() {
    let f = fixture();
    let cache = open_cache(&f.cache_dir, 1 << 30);
    let (l, src) = layer(&f, 5);
    let n = l.layout.count();
    assert!(n > 4);
    assert_eq!(cache.fetch_layer(&l).await.unwrap(), n);
    cache.flush().await;
    assert!((0..n).all(|i| cache.has_span(&l, i)));
    let requests = src.requests.load(Ordering::SeqCst);
    // Runs of spans up to MAX_COALESCE_BYTES uncompressed (`coalesce`, checked on its own
    // above): one request each.
    let all: Vec<usize> = (0..n).collect();
    let runs = super::super::fetcher::coalesce(&l.layout, &all, MAX_COALESCE_BYTES).len() as u64;
    assert!(runs >= 1);
    assert_eq!(requests, runs);
    for (name, data) in &f.files {
        let r = vrange(&l, name, 0..data.len() as u64);
        assert_eq!(
            &cache.try_read_local(&l, r).unwrap().unwrap()[..],
            &data[..]
        );
    }
    // Nothing left to fetch; corrupt bytes are refused, not cached.
    assert_eq!(cache.fetch_layer(&l).await.unwrap(), 0);
    assert_eq!(src.requests.load(Ordering::SeqCst), requests);
    let f2 = fixture();
    let cache2 = open_cache(&f2.cache_dir, 1 << 30);
    let (l2, src2) = layer(&f2, 0);
    src2.corrupt.store(true, Ordering::SeqCst);
    assert!(cache2.fetch_layer(&l2).await.is_err());
    cache2.flush().await;
    assert_eq!(cache2.disk_usage().1, 0);
}

/// Windows of neighbouring checkpoints asked at the same moment share one Range request on
/// the sidecar blob, and each gets exactly its own bytes. Asked through the batch itself,
/// from one task on a one-thread runtime, so the batch's timer cannot fire between the asks
/// (through `get`, each ask first looks for a local copy on the blocking pool, and on a
/// loaded machine a thread preempted between asks spread them over more than the batch's
/// millisecond: a CI run saw two requests).
#[tokio::test]
async fn windows_asked_together_share_a_request() {
    let f = fixture();
    let (l, _src, wsrc, _wdir) = head_only_layer(&f);
    let full = std::fs::read(f.index.path()).unwrap();
    let head = crate::layer::head_len(&full).unwrap();
    let t = l.layout.index().seek_table().unwrap();
    let near: Vec<usize> = (0..t.checkpoints.len())
        .filter(|&i| t.needs_window(i))
        .take(3)
        .collect();
    assert_eq!(near.len(), 3);
    let w = l.windows.clone().unwrap();
    let asks = near.iter().map(|&i| {
        let (r, _) = l.layout.remote_window(i).unwrap();
        let w = w.clone();
        async move { (r.clone(), w.fetch_batched(r).await.unwrap()) }
    });
    let base = head + t.block_section_len();
    for (r, got) in futures::future::join_all(asks).await {
        let want = &full[(base + r.start) as usize..(base + r.end) as usize];
        assert_eq!(&got[..], want);
    }
    assert_eq!(wsrc.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn head_only_index_fetches_windows_lazily_verified_and_once() {
    let f = fixture();
    let cache = open_cache(&f.cache_dir, 1 << 30);
    let (l, _src, wsrc, wdir) = head_only_layer(&f);
    let t = l.layout.index().seek_table().unwrap();
    let needing: Vec<usize> = (0..t.checkpoints.len())
        .filter(|&i| t.needs_window(i))
        .collect();
    assert!(needing.len() > 4);
    // Nothing is fetched before a span is needed.
    assert_eq!(wsrc.requests.load(Ordering::SeqCst), 0);
    // A corrupt window is an error, is not kept, and the span is not cached.
    let (name, data) = &f.files[0];
    let i = needing[1];
    let sr = t.span_range(i);
    let e = l.layout.index().lookup(name).unwrap();
    assert!(sr.start >= e.offset() && sr.end <= e.offset() + data.len() as u64);
    wsrc.corrupt.store(true, Ordering::SeqCst);
    let err = cache.read(&l, sr.clone()).await.unwrap_err();
    assert!(err.report().contains("sha256"), "{}", err.report());
    assert!(!cache.has_span(&l, i));
    assert!(!wdir.join(i.to_string()).exists());
    // The next read fetches the window again and gets the right bytes.
    wsrc.corrupt.store(false, Ordering::SeqCst);
    let before = wsrc.requests.load(Ordering::SeqCst);
    let got = cache.read(&l, sr.clone()).await.unwrap();
    let rel = (sr.start - e.offset()) as usize..(sr.end - e.offset()) as usize;
    assert_eq!(&got[..], &data[rel]);
    assert_eq!(wsrc.requests.load(Ordering::SeqCst), before + 1);
    // Concurrent readers of every file: one window request per run start at most, exact bytes.
    let mut tasks = Vec::new();
    for (name, data) in f.files.clone() {
        let (cache, l) = (cache.clone(), l.clone());
        tasks.push(tokio::spawn(async move {
            let len = data.len() as u64;
            let got = cache.read(&l, vrange(&l, &name, 0..len)).await.unwrap();
            assert_eq!(&got[..], &data[..], "{name}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    cache.flush().await;
    assert!(wsrc.requests.load(Ordering::SeqCst) <= needing.len() as u64);
    // A damaged local window copy is detected, dropped and fetched again.
    let cache2 = open_cache(&f.cache_dir.with_file_name("cache2"), 1 << 30);
    let (l2, _, wsrc2, wdir2) = head_only_layer(&f);
    assert_eq!(wdir2, wdir);
    let copy = wdir.join(i.to_string());
    let mut w = std::fs::read(&copy).unwrap();
    w[0] ^= 1;
    std::fs::write(&copy, &w).unwrap();
    let got = cache2.read(&l2, sr.clone()).await.unwrap();
    assert_eq!(got, cache.read(&l, sr).await.unwrap());
    assert_eq!(wsrc2.requests.load(Ordering::SeqCst), 1);
}

/// A head-only index (format 5) fetches the block records of the spans it decodes, by group,
/// each checked against its sha256 in the head: a group that does not match is an error and
/// is not kept (no byte served), a read of the first file brings the first group only, and
/// after a restart the groups are read back from their local copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_only_index_fetches_the_block_groups_it_reads_checked() {
    let f = fixture();
    let cache = open_cache(&f.cache_dir, 1 << 30);
    let (l, _src, _wsrc, gsrc, _wdir) = head_only_layer_groups(&f);
    let t = l.layout.index().seek_table().unwrap();
    assert!(!t.blocks_local());
    let groups = t.block_count().div_ceil(crate::layer::groups::GROUP);
    assert!(groups >= 2, "{groups} groups");
    assert_eq!(gsrc.requests.load(Ordering::SeqCst), 0);
    let (name, data) = &f.files[0];
    let sr = t.span_range(1);
    let e = l.layout.index().lookup(name).unwrap();
    let rel = (sr.start - e.offset()) as usize..(sr.end - e.offset()) as usize;
    // Altered records: refused by their group sha256, nothing kept, no byte served.
    gsrc.corrupt.store(true, Ordering::SeqCst);
    let err = cache.read(&l, sr.clone()).await.unwrap_err();
    assert!(
        err.report().contains("block record group"),
        "{}",
        err.report()
    );
    assert!(!cache.has_span(&l, 1));
    let gdir = f.cache_dir.with_file_name("head-index.groups");
    assert!(!gdir.join("0").exists());
    gsrc.corrupt.store(false, Ordering::SeqCst);
    let before = gsrc.requests.load(Ordering::SeqCst);
    let bytes_before = gsrc.asked.load(Ordering::SeqCst);
    let got = cache.read(&l, sr.clone()).await.unwrap();
    assert_eq!(&got[..], &data[rel.clone()]);
    assert_eq!(gsrc.requests.load(Ordering::SeqCst), before + 1);
    let g0 = t.group(0).unwrap().0;
    assert_eq!(
        gsrc.asked.load(Ordering::SeqCst) - bytes_before,
        g0.end - g0.start
    );
    assert!(gdir.join("0").exists() && !gdir.join("1").exists());
    // Reading every file brings the other groups, once.
    for (name, data) in &f.files {
        let len = data.len() as u64;
        let got = cache.read(&l, vrange(&l, name, 0..len)).await.unwrap();
        assert_eq!(&got[..], &data[..], "{name}");
    }
    assert_eq!(
        gsrc.requests.load(Ordering::SeqCst) as usize,
        before as usize + groups
    );
    cache.flush().await;
    // After a restart (a fresh index object over the same files): cached spans verify with
    // the local group copies, nothing fetched.
    let (l2, src2, _, gsrc2, _) = head_only_layer_groups(&f);
    let cache2 = open_cache(&f.cache_dir, 1 << 30);
    let got = cache2.read(&l2, sr).await.unwrap();
    assert_eq!(&got[..], &data[rel]);
    assert_eq!(gsrc2.requests.load(Ordering::SeqCst), 0);
    assert_eq!(src2.requests.load(Ordering::SeqCst), 0);
}

/// A run whose span before is local takes its window from that span's last 32 KiB: no
/// request for the stored window. If those bytes were wrong the output fails its check and
/// the next attempt fetches the stored window: the right bytes all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_comes_from_the_local_span_before() {
    let f = fixture();
    let cache = open_cache(&f.cache_dir, 1 << 30);
    let (l, _src, wsrc, _wdir) = head_only_layer(&f);
    let t = l.layout.index().seek_table().unwrap();
    let i = (1..t.checkpoints.len() - 2)
        .find(|&i| (i..i + 3).all(|k| t.needs_window(k)))
        .expect("three spans in a row that need windows");
    let whole = t.span_range(i).start..t.span_range(i + 2).end;
    let other = open_cache(&f.cache_dir.with_file_name("cache-want"), 1 << 30);
    let want = other.read(&layer(&f, 0).0, whole.clone()).await.unwrap();
    // Span i: the one before is not local, its stored window is fetched.
    cache.read(&l, t.span_range(i)).await.unwrap();
    let fetched = wsrc.requests.load(Ordering::SeqCst);
    assert_eq!(fetched, 1);
    cache.flush().await;
    // Span i + 1: span i is local, no window request.
    let got = cache.read(&l, t.span_range(i + 1)).await.unwrap();
    assert_eq!(wsrc.requests.load(Ordering::SeqCst), fetched);
    let off = (t.span_range(i + 1).start - whole.start) as usize;
    assert_eq!(&got[..], &want[off..off + got.len()]);
    // Span i + 2 with wrong bytes kept for span i + 1: the stored window, right bytes.
    let mut bad = cache.read(&l, t.span_range(i + 1)).await.unwrap().to_vec();
    let n = bad.len();
    for b in &mut bad[n.saturating_sub(32 << 10)..] {
        *b ^= 0x55;
    }
    cache
        .tiers
        .mem
        .insert_span(local::span_key(&l, i + 1), Bytes::from(bad));
    let got = cache.read(&l, t.span_range(i + 2)).await.unwrap();
    assert_eq!(wsrc.requests.load(Ordering::SeqCst), fetched + 1);
    let off = (t.span_range(i + 2).start - whole.start) as usize;
    assert_eq!(&got[..], &want[off..off + got.len()]);
}

#[tokio::test]
async fn corrupt_prefix_is_refused_and_nothing_kept() {
    let sizes: Vec<usize> = (0..120).map(|i| 3000 + (i * 104_729) % 5000).collect();
    let f = fixture_with(&sizes);
    let cache = ChunkCache::open(CacheConfig {
        partial_spans: true,
        ..config(&f.cache_dir)
    })
    .unwrap();
    let (l, src) = layer(&f, 0);
    let (name, data) = f.files[3].clone();
    let e = l.layout.index().lookup(&name).unwrap();
    let fe = e.offset() + e.size();
    let r = vrange(&l, &name, 0..data.len() as u64);
    src.corrupt.store(true, Ordering::SeqCst);
    assert!(cache.read_file(&l, r.clone(), fe).await.is_err());
    assert!(cache.try_read_local(&l, r.clone()).is_none());
    assert_eq!(cache.tiers.mem.len(), 0, "unverified bytes kept");
    src.corrupt.store(false, Ordering::SeqCst);
    let got = cache.read_file(&l, r, fe).await.unwrap();
    assert_eq!(&got[..], &data[..]);
    assert_eq!(cache.stats.snapshot().partial_spans, 1);
}

/// A source that never answers.
struct Stalled;

impl BlobSource for Stalled {
    fn fetch(&self, _range: Range<u64>) -> BoxFuture<'static, Result<Bytes, FetchError>> {
        futures::future::pending().boxed()
    }
}

/// The errno a reader gets follows the cause: the fetch deadline ETIMEDOUT, a local blob that
/// cannot be read its own OS error, bytes that fail their sha256 EIO; each error names the
/// layer and keeps its cause.
#[tokio::test]
async fn each_failure_gives_the_errno_of_its_cause() {
    let f = fixture();
    let r = 0..4096;
    let mut cfg = config(&f.cache_dir);
    cfg.fetch_timeout = std::time::Duration::from_millis(200);
    let cache = ChunkCache::open(cfg).unwrap();
    let stalled = Arc::new(CachedLayer {
        digest: Digest::of(&f.blob),
        layout: Layout::new(f.index.clone()),
        source: Arc::new(Stalled),
        windows: None,
        groups: None,
        check: Default::default(),
    });
    let err = cache.read(&stalled, r.clone()).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{}", err.report());
    assert_eq!(err.errno(), libc::ETIMEDOUT);
    assert!(err.to_string().contains(&stalled.digest.to_string()));

    let gone = Arc::new(CachedLayer {
        digest: Digest::of(b"gone"),
        layout: Layout::new(f.index.clone()),
        source: Arc::new(LocalBlob {
            path: f.cache_dir.join("no-such-blob"),
        }),
        windows: None,
        groups: None,
        check: Default::default(),
    });
    let err = cache.read(&gone, r.clone()).await.unwrap_err();
    assert!(matches!(err, Error::Fetch { .. }), "{}", err.report());
    assert_eq!(err.errno(), libc::ENOENT);
    assert!(err.report().contains("no-such-blob"), "{}", err.report());

    let (l, src) = layer(&f, 0);
    src.corrupt.store(true, Ordering::SeqCst);
    let err = cache.read(&l, r).await.unwrap_err();
    assert!(matches!(err, Error::Verify { .. }), "{}", err.report());
    assert_eq!(err.errno(), libc::EIO);
    let cause = std::error::Error::source(&err).map(|c| c.to_string());
    assert!(
        cause.is_some_and(|c| c.contains("span")),
        "{}",
        err.report()
    );
}

/// A layer fetched whole whose bytes (here: honest bytes that the index describes, under a
/// manifest digest they do not have, which is what altered bytes with a forged index look like
/// from the cache) do not match the digest: the fetch fails naming it, the layer is refused
/// from then on (also to a new `CachedLayer` over the same cache dir: another process), and
/// none of its spans is left in either tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_layer_fetched_whole_that_does_not_match_its_digest_is_poisoned() {
    let f = fixture();
    let cache = open_cache(&f.cache_dir, 1 << 30);
    let (honest, _) = layer(&f, 0);
    let lie = |src: Arc<TestSource>| {
        Arc::new(CachedLayer {
            digest: Digest::of(b"the manifest names other bytes"),
            layout: Layout::new(f.index.clone()),
            source: src,
            windows: None,
            groups: None,
            check: Default::default(),
        })
    };
    let (_, src) = layer(&f, 0);
    let l = lie(src.clone());
    // A read before the whole fetch is served (the index vouches for the bytes)...
    let (name, data) = &f.files[0];
    let r = vrange(&l, name, 0..4096);
    assert_eq!(&cache.read(&l, r.clone()).await.unwrap()[..], &data[..4096]);
    let err = cache.fetch_layer(&l).await.unwrap_err();
    assert!(matches!(err, Error::LayerDigest { .. }), "{}", err.report());
    assert!(err.report().contains("hash to"), "{}", err.report());
    // ...and nothing after it, not even what is in memory.
    let err = cache.read(&l, r.clone()).await.unwrap_err();
    assert!(matches!(err, Error::Poisoned { .. }), "{}", err.report());
    assert_eq!(err.errno(), libc::EIO);
    cache.flush().await;
    assert_eq!(cache.disk_usage().1, 0, "spans of the layer left on disk");
    let verdicts = f.cache_dir.with_file_name("cache.verdicts");
    let bad = verdicts.join(format!("{}.bad", l.digest.hex()));
    assert!(bad.exists());
    // Another process over the same cache: refused at its first fetch.
    let cache2 = open_cache(&f.cache_dir, 1 << 30);
    let (_, src2) = layer(&f, 0);
    let l2 = lie(src2);
    let err = cache2.read(&l2, r).await.unwrap_err();
    assert!(matches!(err, Error::Poisoned { .. }), "{}", err.report());
    // The layer under its true digest is unaffected, and checked once: the verdict is kept.
    assert!(cache.fetch_layer(&honest).await.is_ok());
    let verified = verdicts.join(format!("{}.verified", honest.digest.hex()));
    assert!(verified.exists());
    let before = src.requests.load(Ordering::SeqCst);
    let (again, src3) = layer(&f, 0);
    assert_eq!(cache.fetch_layer(&again).await.unwrap(), 0);
    assert_eq!(src3.requests.load(Ordering::SeqCst), 0);
    assert_eq!(src.requests.load(Ordering::SeqCst), before);
}

/// A whole fetch of a layer partly read before: the spans read earlier are fetched again for
/// the check (their compressed bytes were not kept), the rest once; the check passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_whole_layer_check_refetches_spans_read_before_it() {
    let f = fixture();
    let cache = open_cache(&f.cache_dir, 1 << 30);
    let (l, src) = layer(&f, 0);
    let (name, data) = &f.files[3];
    let r = vrange(&l, name, 0..data.len() as u64);
    assert_eq!(&cache.read(&l, r).await.unwrap()[..], &data[..]);
    let early = src.requests.load(Ordering::SeqCst);
    assert!(early > 0);
    let n = l.layout.count();
    let fetched = cache.fetch_layer(&l).await.unwrap();
    assert!(fetched < n, "{fetched} of {n}");
    assert!(f
        .cache_dir
        .with_file_name("cache.verdicts")
        .join(format!("{}.verified", l.digest.hex()))
        .exists());
    assert!(!l.check.is_poisoned());
}
