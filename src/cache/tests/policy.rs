//! Policy: whole-layer prefetch, readahead for streaming readers, partial span fetches,
//! neighbour fetch-ahead and the sibling fetch.

use super::*;

#[tokio::test]
async fn prefetch_fetches_the_whole_layer() {
    let f = fixture();
    let cache = open_cache(&f.cache_dir, 1 << 30);
    let (l, _src) = layer(&f, 0);
    let n = cache.prefetch_layer(&l).await.unwrap();
    assert_eq!(n, l.layout.count());
    cache.flush().await;
    for (name, data) in &f.files {
        let r = vrange(&l, name, 0..data.len() as u64);
        assert_eq!(
            &cache.try_read_local(&l, r).unwrap().unwrap()[..],
            &data[..]
        );
    }
}

/// Wait (up to 5 s) until span `want` of `l` was fetched ahead of the reader.
async fn fetched_ahead(cache: &Arc<ChunkCache>, l: &Arc<CachedLayer>, want: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !cache.has_span(l, want) {
        assert!(
            std::time::Instant::now() < deadline,
            "span {want} was not fetched ahead"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Large reads far apart in one file (a library's headers, then its symbol tables) are not a
/// stream: no readahead until a read starts where the file's previous miss left off.
#[tokio::test]
async fn large_reads_far_apart_do_not_read_ahead() {
    let f = fixture();
    // The 3 MiB file: spans of 256 KiB inside it.
    let (name, data) = &f.files[0];
    let (l, _src) = layer(&f, 0);
    let at = |off: u64| vrange(&l, name, off..off + 1).start;
    let whole = at(0)..at(0) + data.len() as u64;
    let cache = open_cache(&f.cache_dir, 1 << 30);
    let span_of = |off: u64| l.layout.locate(at(off)..at(off) + 1).unwrap().start;
    for off in [0u64, 1 << 20] {
        let got = cache
            .read_file(&l, at(off)..at(off) + (128 << 10), whole.end)
            .await
            .unwrap();
        assert_eq!(&got[..], &data[off as usize..off as usize + (128 << 10)]);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !cache.has_span(&l, span_of(2 << 20)),
        "a read 1 MiB further on read ahead"
    );
    // The next read where the last one's span ends: a stream now.
    let next = l.layout.span_range(span_of(1 << 20)).end - whole.start;
    cache
        .read_file(&l, at(next)..at(next) + (128 << 10), whole.end)
        .await
        .unwrap();
    let want = span_of(next) + 3;
    fetched_ahead(&cache, &l, want).await;
}

/// The kernel's reads of one stream may reach the daemon out of order (several FUSE
/// threads): a read behind the furthest one neither counts nor breaks the stream.
#[tokio::test]
async fn a_stream_read_out_of_order_still_reads_ahead() {
    let f = fixture();
    let (name, data) = &f.files[0];
    let (l, _src) = layer(&f, 0);
    let at = |off: u64| vrange(&l, name, off..off + 1).start;
    let end = at(0) + data.len() as u64;
    let cache = open_cache(&f.cache_dir, 1 << 30);
    let span_of = |off: u64| l.layout.locate(at(off)..at(off) + 1).unwrap().start;
    let second = l.layout.span_range(span_of(0)).end - at(0);
    let third = l.layout.span_range(span_of(second)).end - at(0);
    for off in [second, 0, third] {
        let got = cache
            .read_file(&l, at(off)..at(off) + (128 << 10), end)
            .await
            .unwrap();
        assert_eq!(&got[..], &data[off as usize..off as usize + (128 << 10)]);
    }
    fetched_ahead(&cache, &l, span_of(third) + 3).await;
}

#[tokio::test]
async fn streaming_reads_fetch_ahead_within_the_file_small_reads_do_not() {
    let f = fixture();
    let cache = open_cache(&f.cache_dir, 1 << 30);
    let (l, _src) = layer(&f, 0);
    let (name, data) = &f.files[0];
    let whole = vrange(&l, name, 0..data.len() as u64);
    let spans = l.layout.locate(whole.clone()).unwrap();
    let span_len =
        l.layout.span_range(spans.start + 1).end - l.layout.span_range(spans.start + 1).start;
    // Small reads in two consecutive spans: no readahead.
    for k in 0..2u64 {
        let s = whole.start + k * span_len;
        cache.read_file(&l, s..s + 4096, whole.end).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        !cache.has_span(&l, spans.start + 3),
        "small reads must not read ahead"
    );
    // Large contiguous reads, as the kernel issues for a file streamed sequentially, from the
    // third span on: each new span is a miss, the second miss starts the readahead.
    let mut s = l.layout.span_range(spans.start + 2).start.max(whole.start);
    let mut last_span = 0;
    while last_span < spans.start + 4 {
        let e = (s + (128 << 10)).min(whole.end);
        let got = cache.read_file(&l, s..e, whole.end).await.unwrap();
        let off = (s - whole.start) as usize;
        assert_eq!(&got[..], &data[off..off + got.len()]);
        last_span = l.layout.locate(s..e).unwrap().end - 1;
        s = e;
    }
    let want = last_span + 3;
    fetched_ahead(&cache, &l, want).await;
    // Never past the end of the file.
    let after = l
        .layout
        .locate(whole.end..whole.end + 1)
        .map(|r| r.start)
        .unwrap_or(usize::MAX);
    if after > spans.end - 1 + 1 {
        assert!(
            !cache.has_span(&l, spans.end + 1),
            "read ahead past the file"
        );
    }
}

/// Small files packed into 256 KiB spans: a cold read of one fetches the span only up to the
/// bound of the block holding the file's end; every byte read is checked against the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partial_span_reads_are_exact_verified_and_smaller() {
    let sizes: Vec<usize> = (0..240).map(|i| 2000 + (i * 7919) % 9000).collect();
    let f = fixture_with(&sizes);
    // Memory large enough that no prefix is evicted before its span is fetched whole.
    let cache = ChunkCache::open(CacheConfig {
        dir: f.cache_dir.clone(),
        memory_bytes: 64 << 20,
        disk_bytes: 1 << 30,
        max_concurrent_fetches: 4,
        fetch_timeout: super::DEFAULT_FETCH_TIMEOUT,
        partial_spans: true,
        fetch_ahead: 0,
        siblings_after: 0,
        siblings_python: true,
        near_request: 0,
    })
    .unwrap();
    let (l, src) = layer(&f, 0);
    let count = l.layout.count();
    assert!(count >= 4, "{count} spans");
    let span_of = |name: &str| {
        let e = l.layout.index().lookup(name).unwrap();
        l.layout.locate(e.offset()..e.offset() + e.size()).unwrap()
    };
    // A file in the first half of a span, not touching the next one.
    let (name, data) = f
        .files
        .iter()
        .find(|(n, d)| {
            let s = span_of(n);
            let sr = l.layout.span_range(s.start);
            let e = l.layout.index().lookup(n).unwrap();
            s.len() == 1
                && e.offset() > sr.start
                && e.offset() + d.len() as u64 - sr.start < 64 << 10
        })
        .unwrap()
        .clone();
    let i = span_of(&name).start;
    let e = l.layout.index().lookup(&name).unwrap();
    let file_end = e.offset() + e.size();
    let got = cache
        .read_file(&l, vrange(&l, &name, 0..4096), file_end)
        .await
        .unwrap();
    assert_eq!(&got[..], &data[..4096.min(data.len())]);
    let s = cache.stats.snapshot();
    assert_eq!(s.partial_spans, 1, "{s:?}");
    let whole = l.layout.compressed(i..i + 1).unwrap();
    assert!(
        s.bytes_fetched * 4 <= (whole.end - whole.start) * 3,
        "prefix fetch moved {} of the span's {} bytes",
        s.bytes_fetched,
        whole.end - whole.start
    );
    // Only verified blocks are kept, in memory: the span is not whole, nothing on disk.
    assert!(!cache.has_span(&l, i));
    cache.flush().await;
    assert_eq!(cache.disk_usage().1, 0);
    // The rest of the file is local now.
    let len = data.len() as u64;
    let rest = cache
        .try_read_local(&l, vrange(&l, &name, 0..len))
        .unwrap()
        .unwrap();
    assert_eq!(&rest[..], &data[..]);
    // Every file, read in 4 KiB pieces in a scrambled order: exact, each span fetched whole
    // at most once after its prefix.
    let mut order: Vec<usize> = (0..f.files.len()).collect();
    let mut x = 7u64;
    for k in (1..order.len()).rev() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        order.swap(k, (x >> 33) as usize % (k + 1));
    }
    for idx in order {
        let (name, data) = &f.files[idx];
        let e = l.layout.index().lookup(name).unwrap();
        let fe = e.offset() + e.size();
        let len = data.len() as u64;
        let mut at = 0;
        while at < len {
            let end = (at + 4096).min(len);
            let got = cache
                .read_file(&l, vrange(&l, name, at..end), fe)
                .await
                .unwrap();
            assert_eq!(&got[..], &data[at as usize..end as usize], "{name} {at}");
            at = end;
        }
    }
    let s = cache.stats.snapshot();
    assert!(
        s.partial_spans >= 1 && s.partial_spans <= count as u64,
        "{s:?}"
    );
    assert!(src.requests.load(Ordering::SeqCst) <= s.partial_spans + count as u64);
}

/// A cache with speculation on (`ahead` spans fetched ahead) and a layer of many small files
/// (256 KiB spans), with a helper giving a file that lies wholly inside span `i`.
struct Spec {
    cache: Arc<ChunkCache>,
    l: Arc<CachedLayer>,
    src: Arc<TestSource>,
    f: Fixture,
}

impl Spec {
    fn new(files: usize, ahead: usize, delay_ms: u64) -> Spec {
        let sizes: Vec<usize> = (0..files).map(|i| 3000 + (i * 7919) % 6000).collect();
        let f = fixture_with(&sizes);
        let cache = ChunkCache::open(CacheConfig {
            fetch_ahead: ahead,
            siblings_after: 0,
            siblings_python: true,
            near_request: 0,
            memory_bytes: 64 << 20,
            ..config(&f.cache_dir)
        })
        .unwrap();
        let (l, src) = layer(&f, delay_ms);
        Spec { cache, l, src, f }
    }

    fn in_span(&self, i: usize) -> (String, Vec<u8>) {
        let r = self.l.layout.span_range(i);
        self.f
            .files
            .iter()
            .find(|(n, d)| {
                let e = self.l.layout.index().lookup(n).unwrap();
                e.offset() >= r.start && e.offset() + d.len() as u64 <= r.end
            })
            .unwrap()
            .clone()
    }

    /// Read the whole of a file inside span `i` on demand and check its bytes.
    async fn read(&self, i: usize) {
        let (name, data) = self.in_span(i);
        let e = self.l.layout.index().lookup(&name).unwrap();
        let fe = e.offset() + e.size();
        let got = self
            .cache
            .read_file(&self.l, vrange(&self.l, &name, 0..data.len() as u64), fe)
            .await
            .unwrap();
        assert_eq!(&got[..], &data[..], "{name}");
    }

    /// Wait (up to 2 s) until every span of `spans` is local.
    async fn wait_local(&self, spans: Range<usize>) -> bool {
        for _ in 0..200 {
            if spans.clone().all(|i| self.cache.has_span(&self.l, i)) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        false
    }
}

/// Neighbour fetch-ahead: a miss near an earlier miss of the same layer starts fetching the
/// next spans in the background; an isolated miss does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_near_an_earlier_one_fetches_the_next_spans_ahead() {
    let s = Spec::new(1500, 2, 0);
    let n = s.l.layout.count();
    assert!(n >= 24, "{n} spans");
    s.read(0).await;
    assert_eq!(
        s.cache.stats.snapshot().ahead_spans,
        0,
        "an isolated miss fetched ahead"
    );
    s.read(1).await;
    assert_eq!(s.cache.stats.snapshot().ahead_spans, 2);
    // The spans ahead arrive without another read asking for them; reading them is local.
    assert!(s.wait_local(2..4).await);
    let (n3, d3) = s.in_span(3);
    let got = s
        .cache
        .try_read_local(&s.l, vrange(&s.l, &n3, 0..d3.len() as u64))
        .unwrap()
        .unwrap();
    assert_eq!(&got[..], &d3[..]);
    assert!(!s.cache.has_span(&s.l, 4));
}

/// Two misses a few spans apart: the spans between them are fetched in the background (the
/// files of one package, read out of tar order); misses far apart fill nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gap_between_two_nearby_misses_is_filled() {
    let s = Spec::new(1500, 1, 0);
    let n = s.l.layout.count();
    assert!(n >= 24, "{n} spans");
    s.read(10).await;
    s.read(4).await;
    assert!(s.wait_local(5..10).await, "gap 5..10 not filled");
    // One ahead of the nearby miss at 4 is 5 (inside the gap): nothing else.
    assert!(!s.cache.has_span(&s.l, 3) && !s.cache.has_span(&s.l, 11));
    // 4 -> 23: too far apart (more than the gap rule's reach): nothing fetched between.
    s.read(23).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!((12..23).all(|i| !s.cache.has_span(&s.l, i)));
}

/// A layer a quarter of whose spans were missed by reads far apart is fetched whole, with or
/// without speculation (`fetch-ahead-spans`, off by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mostly_needed_layer_is_fetched_whole() {
    mostly_needed_whole(1).await;
    mostly_needed_whole(0).await;
}

async fn mostly_needed_whole(fetch_ahead: usize) {
    let s = Spec::new(1500, fetch_ahead, 0);
    let n = s.l.layout.count();
    let quarter = n.div_ceil(4);
    // Misses on distinct spans until one short of a quarter: the layer is not fetched whole
    // (the gaps between them are).
    let far: Vec<usize> = (0..quarter).map(|k| (k * 31) % n).collect();
    let mut seen = std::collections::BTreeSet::new();
    for &i in &far[..quarter - 1] {
        seen.insert(i);
        s.read(i).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let local = (0..n).filter(|&i| s.cache.has_span(&s.l, i)).count();
    assert!(local < n, "all {n} spans local before the quarter");
    // The read that reaches a quarter of the spans starts the whole layer.
    let last = (0..n)
        .find(|i| !seen.contains(i) && !s.cache.has_span(&s.l, *i))
        .unwrap();
    s.read(last).await;
    assert!(s.wait_local(0..n).await, "layer not fetched whole");
}

/// Reads on demand that sweep through a layer (each miss a few spans after the one before,
/// as `tar cf - /usr` reads a layer in tar order) make it fetched whole long before a quarter
/// of it has missed; the same number of misses scattered does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_read_as_a_sweep_is_fetched_whole() {
    let s = Spec::new(8000, 0, 0);
    let n = s.l.layout.count();
    // Fewer misses in all than a quarter of the spans: only the sweep can start it.
    assert!(n >= 4 * 36, "{n} spans");
    // Scattered: 16 misses far apart (a cold start's pattern).
    for k in 0..16 {
        s.read((k * 37 + 5) % n).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let local = (0..n).filter(|&i| s.cache.has_span(&s.l, i)).count();
    assert!(
        local < n / 2,
        "{local} of {n} spans local after scattered misses"
    );
    // A sweep: every other span from 2, with an interleaved far miss now and then.
    let mut i = 2;
    for k in 0..16 {
        if !s.cache.has_span(&s.l, i) {
            s.read(i).await;
        }
        if k % 5 == 4 {
            let far = n - 3 - k;
            if !s.cache.has_span(&s.l, far) {
                s.read(far).await;
            }
        }
        i += 2;
    }
    assert!(s.wait_local(0..n).await, "layer not fetched whole");
}

/// A read that joined a speculative fetch which then failed (here: the source refuses long
/// requests, so the speculative run of several spans fails and a single span succeeds)
/// fetches its span on its own: no error for a failed guess.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_joined_a_failed_speculative_fetch_fetches_on_its_own() {
    let s = Spec::new(1500, 4, 150);
    let one = (0..8)
        .map(|i| {
            let c = s.l.layout.compressed(i..i + 1).unwrap();
            c.end - c.start
        })
        .max()
        .unwrap();
    s.src.max_len.store(one + 1, Ordering::SeqCst);
    s.read(0).await;
    s.read(1).await; // near 0: spans 2..6 go out speculatively as one run (fails, slowly)
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let joined = s.cache.stats.snapshot().joined_inflight;
    s.read(3).await; // joins the run in flight, which fails: read on its own
    assert!(
        s.cache.stats.snapshot().joined_inflight > joined,
        "the read did not join the speculative fetch"
    );
}

/// Sibling fetch: the second distinct file first read from a directory fetches the spans of
/// the directory's other files with a suffix read there (`.pyc` here), nearest first, at most
/// 8 MiB of spans, once; files of another suffix, larger than 1 MiB, or in another directory are
/// left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_file_read_from_a_directory_fetches_its_siblings() {
    let mut named = Vec::new();
    for k in 0..400 {
        // a/: modules and, between them, text files of their own spans.
        named.push((format!("a/m{k:02}.pyc"), 20_000 + k * 97));
        if k % 20 == 5 {
            named.push((format!("a/t{k:02}.txt"), 600_000));
        }
    }
    named.push(("a/huge.pyc".to_string(), 1_200_000));
    for k in 0..30 {
        named.push((format!("b/m{k:02}.pyc"), 20_000));
    }
    let f = fixture_named(&named);
    let (cache, l) = sibling_cache(&f, 2);
    let spans_of = |name: &str| file_spans(&l, name);
    let all = |pat: &dyn Fn(&str) -> bool| -> std::collections::BTreeSet<usize> {
        f.files
            .iter()
            .filter(|(n, _)| pat(n))
            .flat_map(|(n, _)| spans_of(n))
            .collect()
    };
    let pyc = all(&|n: &str| n.starts_with("a/m"));
    let only_txt: Vec<usize> = all(&|n: &str| n.starts_with("a/t"))
        .difference(&pyc)
        .copied()
        .collect();
    let only_huge: Vec<usize> = all(&|n: &str| n == "a/huge.pyc")
        .difference(&pyc)
        .copied()
        .collect();
    let b: Vec<usize> = all(&|n: &str| n.starts_with("b/"))
        .difference(&pyc)
        .copied()
        .collect();
    assert!(pyc.len() >= 40 && !only_txt.is_empty() && !only_huge.is_empty() && !b.is_empty());
    // The first file of a directory: nothing besides.
    assert_eq!(cache.first_read(&l, "a/m30.pyc"), 0);
    // The second: the 8 MiB of spans of a/*.pyc nearest a/m30.pyc.
    // (Gzip checkpoints sit at deflate block ends at least a span apart: spans are a little
    // longer than 256 KiB, so fewer than 32 fit.)
    let n = cache.first_read(&l, "a/m31.pyc");
    let here = spans_of("a/m30.pyc").start;
    let mut near: Vec<usize> = pyc.iter().copied().collect();
    near.sort_by_key(|&i| i.abs_diff(here));
    let mut budget = 8u64 << 20;
    let k = near
        .iter()
        .take_while(|&&i| {
            let fits = budget > 0;
            let r = l.layout.span_range(i);
            budget = budget.saturating_sub(r.end - r.start);
            fits
        })
        .count();
    assert!((24..near.len()).contains(&k), "{k} of {} spans", near.len());
    assert_eq!(n, k, "spans started");
    let want: Vec<usize> = near[..k].to_vec();
    for &i in &want {
        assert!(
            span_arrives(&cache, &l, i).await,
            "sibling span {i} not fetched (wanted {want:?})"
        );
    }
    // Once per directory.
    assert_eq!(cache.first_read(&l, "a/m00.pyc"), 0);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    for i in only_txt.iter().chain(&only_huge).chain(&b) {
        assert!(!cache.has_span(&l, *i), "span {i} fetched: not a sibling");
    }
    let far = near[k..].iter().filter(|&&i| cache.has_span(&l, i)).count();
    assert_eq!(far, 0, "more than 8 MiB of spans fetched");
    // The bytes of a sibling are right.
    let (name, data) = f
        .files
        .iter()
        .find(|(n, _)| {
            spans_of(n).start == want[0] && spans_of(n).len() == 1 && n.ends_with(".pyc")
        })
        .unwrap();
    let got = cache
        .try_read_local(&l, vrange(&l, name, 0..data.len() as u64))
        .unwrap()
        .unwrap();
    assert_eq!(&got[..], &data[..]);
}

/// A Python package's `__init__` read first from its `__pycache__` also fetches the
/// `__pycache__/__init__` of each subpackage (not their other modules, nor deeper levels).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_init_fetches_its_subpackages_inits() {
    let mut named = vec![("p/__pycache__/__init__.cpython-311.pyc".to_string(), 20_000)];
    for k in 0..4 {
        named.push((
            format!("p/s{k}/__pycache__/__init__.cpython-311.pyc"),
            20_000,
        ));
        // Its own spans, between the subpackages.
        named.push((format!("p/s{k}/__pycache__/big.cpython-311.pyc"), 600_000));
        named.push((
            format!("p/s{k}/t/__pycache__/__init__.cpython-311.pyc"),
            20_000,
        ));
        named.push((format!("p/s{k}/pad.txt"), 600_000));
    }
    let f = fixture_named(&named);
    let (cache, l) = sibling_cache(&f, 1);
    let spans_of = |name: &str| file_spans(&l, name);
    let set = |pat: &dyn Fn(&str) -> bool| -> std::collections::BTreeSet<usize> {
        named
            .iter()
            .filter(|(n, _)| pat(n))
            .flat_map(|(n, _)| spans_of(n))
            .collect()
    };
    let first = set(&|n: &str| n.starts_with("p/__pycache__/"));
    let want = set(&|n: &str| {
        n.starts_with("p/s")
            && n.ends_with("/__pycache__/__init__.cpython-311.pyc")
            && !n.contains("/t/")
    });
    let not: Vec<usize> = set(&|n: &str| !n.starts_with("p/__pycache__/"))
        .difference(&want)
        .copied()
        .filter(|i| !first.contains(i))
        .collect();
    assert!(want.len() >= 4 && !not.is_empty(), "{want:?} {not:?}");
    let n = cache.first_read(&l, "p/__pycache__/__init__.cpython-311.pyc");
    // (The package's own `__pycache__` is a directory like any other: its files' spans,
    // the one read included, are fetched as siblings.)
    let want: Vec<usize> = want.union(&first).copied().collect();
    assert_eq!(n, want.len(), "spans started");
    for &i in &want {
        assert!(
            span_arrives(&cache, &l, i).await,
            "subpackage init span {i} not fetched (wanted {want:?})"
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    for i in &not {
        assert!(
            !cache.has_span(&l, *i),
            "span {i} fetched: not a subpackage init"
        );
    }
}

/// With Python modules left to the mount (`siblings_python` off), extension modules are too
/// (a `lib-dynload` holds dozens a program never imports), while other shared objects of a
/// directory still fetch their siblings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extension_modules_fetch_no_siblings_when_the_mount_follows_imports() {
    let mut named = Vec::new();
    for k in 0..40 {
        named.push((
            format!("dyn/_m{k:02}.cpython-311-x86_64-linux-gnu.so"),
            120_000,
        ));
        named.push((format!("plug/p{k:02}.so"), 120_000));
    }
    let f = fixture_named(&named);
    let (cache, l) = sibling_cache_with(&f, 1, false);
    assert_eq!(
        cache.first_read(&l, "dyn/_m10.cpython-311-x86_64-linux-gnu.so"),
        0,
        "extension modules' siblings fetched"
    );
    assert!(
        cache.first_read(&l, "plug/p10.so") > 0,
        "plain shared objects fetch their siblings"
    );
    let (cache, l) = sibling_cache_with(&f, 1, true);
    assert!(cache.first_read(&l, "dyn/_m10.cpython-311-x86_64-linux-gnu.so") > 0);
}

/// A cache over fixture `f` with the sibling fetch after `after` files, and its layer.
fn sibling_cache(f: &Fixture, after: usize) -> (Arc<ChunkCache>, Arc<CachedLayer>) {
    sibling_cache_with(f, after, true)
}

/// [`sibling_cache`], Python modules taking part or not.
fn sibling_cache_with(
    f: &Fixture,
    after: usize,
    python: bool,
) -> (Arc<ChunkCache>, Arc<CachedLayer>) {
    let cache = ChunkCache::open(CacheConfig {
        siblings_after: after,
        siblings_python: python,
        near_request: 0,
        memory_bytes: 64 << 20,
        ..config(&f.cache_dir)
    })
    .unwrap();
    let (l, _src) = layer(f, 0);
    (cache, l)
}

/// The spans holding file `name` of `l`.
fn file_spans(l: &CachedLayer, name: &str) -> std::ops::Range<usize> {
    let e = l.layout.index().lookup(name).unwrap();
    l.layout.locate(e.offset()..e.offset() + e.size()).unwrap()
}

/// Whether span `i` of `l` is in the cache within 2 s (a background fetch started it).
async fn span_arrives(cache: &ChunkCache, l: &CachedLayer, i: usize) -> bool {
    for _ in 0..200 {
        if cache.has_span(l, i) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}
