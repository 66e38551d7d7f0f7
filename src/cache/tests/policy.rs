//! Policy: whole-layer prefetch, readahead for streaming readers, partial span fetches and
//! neighbour fetch-ahead.

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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !cache.has_span(&l, want) {
        assert!(
            std::time::Instant::now() < deadline,
            "span {want} was not fetched ahead"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
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

/// Neighbour fetch-ahead: a miss near an earlier miss of the same layer starts fetching the
/// next spans in the background; an isolated miss does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_near_an_earlier_one_fetches_the_next_spans_ahead() {
    let sizes: Vec<usize> = (0..300).map(|i| 3000 + (i * 7919) % 6000).collect();
    let f = fixture_with(&sizes);
    let cache = ChunkCache::open(CacheConfig {
        fetch_ahead: 2,
        memory_bytes: 64 << 20,
        ..config(&f.cache_dir)
    })
    .unwrap();
    let (l, _src) = layer(&f, 0);
    assert!(l.layout.count() >= 6);
    let in_span = |i: usize| {
        let r = l.layout.span_range(i);
        f.files
            .iter()
            .find(|(n, d)| {
                let e = l.layout.index().lookup(n).unwrap();
                e.offset() >= r.start && e.offset() + d.len() as u64 <= r.end
            })
            .unwrap()
            .clone()
    };
    let read = |name: String, data: Vec<u8>| {
        let (cache, l) = (cache.clone(), l.clone());
        async move {
            let e = l.layout.index().lookup(&name).unwrap();
            let fe = e.offset() + e.size();
            let len = data.len() as u64;
            let got = cache
                .read_file(&l, vrange(&l, &name, 0..len), fe)
                .await
                .unwrap();
            assert_eq!(&got[..], &data[..], "{name}");
        }
    };
    let (n0, d0) = in_span(0);
    read(n0, d0).await;
    assert_eq!(
        cache.stats.snapshot().ahead_spans,
        0,
        "an isolated miss fetched ahead"
    );
    let (n1, d1) = in_span(1);
    read(n1, d1).await;
    assert_eq!(cache.stats.snapshot().ahead_spans, 2);
    // The spans ahead arrive without another read asking for them; reading them is local.
    for _ in 0..200 {
        if cache.has_span(&l, 2) && cache.has_span(&l, 3) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(cache.has_span(&l, 2) && cache.has_span(&l, 3));
    let (n3, d3) = in_span(3);
    let e = l.layout.index().lookup(&n3).unwrap();
    let got = cache
        .try_read_local(&l, vrange(&l, &n3, 0..d3.len() as u64))
        .unwrap()
        .unwrap();
    assert_eq!(&got[..], &d3[..]);
    assert!(!cache.has_span(&l, 4), "{}", e.offset());
}
