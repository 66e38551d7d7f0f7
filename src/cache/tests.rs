//! Cache tests over real gzip layers built in code and a counting, optionally corrupting source.

use super::*;
use crate::layer::{BuildOptions, LayerIndex, MEDIA_TAR_GZIP};
use crate::testdata::{Mix, XorShift64};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

struct TestSource {
    blob: Bytes,
    requests: AtomicU64,
    corrupt: AtomicBool,
    delay_ms: u64,
}

impl BlobSource for TestSource {
    fn fetch(&self, range: Range<u64>) -> BoxFuture<'static, Result<Bytes, String>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mut data = self
            .blob
            .slice(range.start as usize..range.end as usize)
            .to_vec();
        if self.corrupt.load(Ordering::SeqCst) && !data.is_empty() {
            let mid = data.len() / 2;
            data[mid] ^= 0x55;
        }
        let delay = self.delay_ms;
        async move {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            Ok(Bytes::from(data))
        }
        .boxed()
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    cache_dir: PathBuf,
    index: Arc<LayerIndex>,
    files: Vec<(String, Vec<u8>)>,
    blob: Bytes,
}

/// Half-compressible: runs of letters between random bytes.
fn pseudo_random(seed: u64, n: usize) -> Vec<u8> {
    let state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mix = Mix {
        random: 32,
        period: 64,
        letters: 7,
    };
    XorShift64::from_state(state).mixed(n, mix)
}

fn fixture() -> Fixture {
    fixture_with(&[3usize << 20, 100, 0, 700_000, 2 << 20, 5000])
}

fn fixture_with(sizes: &[usize]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut tar = ::tar::Builder::new(Vec::new());
    for (i, size) in sizes.iter().enumerate() {
        let name = format!("dir/file{i}");
        let data = pseudo_random(i as u64 + 1, *size);
        let mut h = ::tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, &name, data.as_slice()).unwrap();
        files.push((name, data));
    }
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    let blob = Bytes::from(gz.finish().unwrap());
    let out = dir.path().join("index");
    let opts = BuildOptions {
        span: 256 << 10,
        ..Default::default()
    };
    let index = crate::layer::build_index_with(&blob[..], MEDIA_TAR_GZIP, &out, &opts).unwrap();
    let cache_dir = dir.path().join("cache");
    Fixture {
        _dir: dir,
        cache_dir,
        index: Arc::new(index),
        files,
        blob,
    }
}

fn config(dir: &std::path::Path) -> CacheConfig {
    CacheConfig {
        dir: dir.to_path_buf(),
        memory_bytes: 1 << 20,
        disk_bytes: 1 << 30,
        max_concurrent_fetches: 4,
        fetch_timeout: super::DEFAULT_FETCH_TIMEOUT,
        partial_spans: false,
        fetch_ahead: 0,
    }
}

fn open_cache(dir: &std::path::Path, disk: u64) -> Arc<ChunkCache> {
    ChunkCache::open(CacheConfig {
        dir: dir.to_path_buf(),
        memory_bytes: 1 << 20,
        disk_bytes: disk,
        max_concurrent_fetches: 4,
        fetch_timeout: super::DEFAULT_FETCH_TIMEOUT,
        partial_spans: false,
        fetch_ahead: 0,
    })
    .unwrap()
}

fn layer(f: &Fixture, delay_ms: u64) -> (Arc<CachedLayer>, Arc<TestSource>) {
    let src = Arc::new(TestSource {
        blob: f.blob.clone(),
        requests: AtomicU64::new(0),
        corrupt: AtomicBool::new(false),
        delay_ms,
    });
    let l = Arc::new(CachedLayer {
        digest: Digest::of(&f.blob),
        layout: Layout::new(f.index.clone()),
        source: src.clone(),
        windows: None,
    });
    (l, src)
}

fn vrange(l: &CachedLayer, path: &str, r: Range<u64>) -> Range<u64> {
    let e = l.layout.index().lookup(path).unwrap();
    l.layout.file_range(&e, r).unwrap()
}

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

#[tokio::test]
async fn disk_tier_respects_its_cap_and_a_tampered_span_is_refetched() {
    let f = fixture();
    let cap = 600 << 10;
    let cache = open_cache(&f.cache_dir, cap);
    let (l, _src) = layer(&f, 0);
    let (name, data) = &f.files[0];
    let got = cache
        .read(&l, vrange(&l, name, 0..data.len() as u64))
        .await
        .unwrap();
    assert_eq!(&got[..], &data[..]);
    cache.flush().await;
    assert!(cache.disk_usage().0 <= cap, "{:?}", cache.disk_usage());
    cache.flush().await;
    // Tamper with a span file on disk: a new process must not serve it.
    let cache_dir = f.cache_dir.join(l.digest.hex());
    let victim = std::fs::read_dir(&cache_dir)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&victim, bytes).unwrap();
    cache.flush().await;
    let cache2 = open_cache(&f.cache_dir, 1 << 30);
    let got = cache2
        .read(&l, vrange(&l, name, 0..data.len() as u64))
        .await
        .unwrap();
    assert_eq!(&got[..], &data[..]);
}

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

/// The uncompressed layer (virtual offsets of a gzip layer are tar stream offsets).
fn inflate(blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(blob), &mut out).unwrap();
    out
}

fn open_cache_mem(dir: &std::path::Path, memory: u64) -> Arc<ChunkCache> {
    ChunkCache::open(CacheConfig {
        dir: dir.to_path_buf(),
        memory_bytes: memory,
        disk_bytes: 1 << 30,
        max_concurrent_fetches: 4,
        fetch_timeout: super::DEFAULT_FETCH_TIMEOUT,
        partial_spans: false,
        fetch_ahead: 0,
    })
    .unwrap()
}

/// Cache every span of the fixture's layer on disk (first process), return a span that has
/// at least three blocks and its file.
async fn cached_on_disk(f: &Fixture) -> (usize, PathBuf) {
    let cache = open_cache(&f.cache_dir, 1 << 30);
    let (l, _src) = layer(f, 0);
    cache.prefetch_layer(&l).await.unwrap();
    cache.flush().await;
    let i = (0..l.layout.count())
        .find(|&i| l.layout.block_count(i) >= 3)
        .expect("a span of several blocks");
    let file = f.cache_dir.join(l.digest.hex()).join(i.to_string());
    assert!(file.exists());
    (i, file)
}

#[tokio::test]
async fn disk_hit_verifies_only_the_blocks_read_and_a_flipped_byte_is_refetched() {
    let f = fixture();
    let (i, file) = cached_on_disk(&f).await;
    let (l, src) = layer(&f, 0);
    let all = f.blob.clone();
    let whole = inflate(&all);
    // Flip one byte in block 2 of span i.
    let b2 = l.layout.block_range(i, 2);
    let span = l.layout.span_range(i);
    let flip = (b2.start - span.start + 100) as usize;
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[flip] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();

    // Memory tier off: every read goes to the span file.
    let cache = open_cache_mem(&f.cache_dir, 0);
    // Block 0 is intact: served from disk, verified, no request.
    let r0 = span.start + 10..span.start + 4106;
    let got = cache.try_read_local(&l, r0.clone()).unwrap().unwrap();
    assert_eq!(&got[..], &whole[r0.start as usize..r0.end as usize]);
    assert_eq!(cache.stats.snapshot().disk_hits, 1);
    // Block 2 fails verification: not local (never the flipped bytes) ...
    let r2 = b2.start + 50..b2.start + 150;
    assert!(cache.try_read_local(&l, r2.clone()).is_none());
    // ... and the span file is gone, so a read fetches the span again and gets the right bytes.
    assert!(!file.exists());
    let before = src.requests.load(Ordering::SeqCst);
    let got = cache.read(&l, r2.clone()).await.unwrap();
    assert_eq!(&got[..], &whole[r2.start as usize..r2.end as usize]);
    assert_eq!(src.requests.load(Ordering::SeqCst), before + 1);
    cache.flush().await;
    // The rewritten span file is good again.
    let cache = open_cache_mem(&f.cache_dir, 0);
    let got = cache.try_read_local(&l, r2.clone()).unwrap().unwrap();
    assert_eq!(&got[..], &whole[r2.start as usize..r2.end as usize]);
}

#[tokio::test]
async fn disk_hit_reads_span_boundaries_and_keeps_blocks_in_memory() {
    let f = fixture();
    let (i, _file) = cached_on_disk(&f).await;
    let (l, src) = layer(&f, 0);
    let whole = inflate(&f.blob);
    let cache = open_cache_mem(&f.cache_dir, 1 << 20);
    // Across a block boundary, and across the span boundary into the next span.
    let b1 = l.layout.block_range(i, 1);
    let span = l.layout.span_range(i);
    for r in [
        b1.start - 3..b1.start + 3,
        span.end - 5000..(span.end + 5000).min(whole.len() as u64),
        span.start..span.end,
    ] {
        let got = cache.try_read_local(&l, r.clone()).unwrap().unwrap();
        assert_eq!(&got[..], &whole[r.start as usize..r.end as usize], "{r:?}");
    }
    // The same small read again is a memory hit (the verified blocks are kept).
    let disk = cache.stats.snapshot().disk_hits;
    let r = b1.start - 3..b1.start + 3;
    let got = cache.try_read_local(&l, r.clone()).unwrap().unwrap();
    assert_eq!(&got[..], &whole[r.start as usize..r.end as usize]);
    assert_eq!(cache.stats.snapshot().disk_hits, disk);
    assert_eq!(src.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn estargz_chunks_are_one_block_each_and_a_tampered_chunk_is_refetched() {
    let f = fixture();
    let tar = inflate(&f.blob);
    let (blob, toc_digest) = crate::layer::estargz::build(&tar, 256 << 10).unwrap();
    let size = blob.len() as u64;
    let fr = crate::layer::estargz::footer_range(size).unwrap();
    let footer = &blob[fr.start as usize..];
    let tr = crate::layer::estargz::toc_range(footer, size).unwrap();
    let toc = &blob[tr.start as usize..tr.end as usize];
    let out = f.cache_dir.with_file_name("esgz-index");
    let ix = crate::layer::estargz::build_index(footer, toc, size, &toc_digest, &out).unwrap();
    let src = Arc::new(TestSource {
        blob: Bytes::from(blob),
        requests: AtomicU64::new(0),
        corrupt: AtomicBool::new(false),
        delay_ms: 0,
    });
    let l = Arc::new(CachedLayer {
        digest: Digest::of(&src.blob),
        layout: Layout::new(Arc::new(ix)),
        source: src.clone(),
        windows: None,
    });
    let cache = open_cache(&f.cache_dir, 1 << 30);
    cache.prefetch_layer(&l).await.unwrap();
    cache.flush().await;
    // file0 (3 MiB) spans several chunks; tamper with the file of its second chunk.
    let (name, data) = &f.files[0];
    let whole = vrange(&l, name, 0..data.len() as u64);
    let chunks = l.layout.locate(whole.clone()).unwrap();
    assert!(chunks.len() >= 3, "{chunks:?}");
    let victim = chunks.start + 1;
    assert_eq!(l.layout.block_count(victim), 1);
    let file = f.cache_dir.join(l.digest.hex()).join(victim.to_string());
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[7] ^= 1;
    std::fs::write(&file, &bytes).unwrap();
    let cache = open_cache_mem(&f.cache_dir, 0);
    let before = src.requests.load(Ordering::SeqCst);
    // An intact chunk is served from disk.
    let got = cache
        .try_read_local(&l, whole.start..whole.start + 100)
        .unwrap()
        .unwrap();
    assert_eq!(&got[..], &data[..100]);
    // The tampered one is not local; a read fetches it again and returns the right bytes.
    let c = l.layout.span_range(victim);
    let file_off = (c.start - whole.start) as usize;
    assert!(cache.try_read_local(&l, c.start..c.start + 100).is_none());
    let got = cache.read(&l, c.start..c.start + 100).await.unwrap();
    assert_eq!(&got[..], &data[file_off..file_off + 100]);
    assert_eq!(src.requests.load(Ordering::SeqCst), before + 1);
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
    // Runs of up to MAX_COALESCE_SPANS spans: one request each.
    assert_eq!(requests, n.div_ceil(MAX_COALESCE_SPANS) as u64);
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

/// A layer whose index is the head alone, its windows served from the full index file (the
/// sidecar blob) by a second, corruptible source.
fn head_only_layer(f: &Fixture) -> (Arc<CachedLayer>, Arc<TestSource>, Arc<TestSource>, PathBuf) {
    let full = std::fs::read(f.index.path()).unwrap();
    let head = crate::layer::head_len(&full).unwrap();
    let head_path = f.cache_dir.with_file_name("head-index");
    std::fs::write(&head_path, &full[..head as usize]).unwrap();
    let ix = Arc::new(LayerIndex::open(&head_path).unwrap());
    assert!(!ix.windows_local());
    let src = Arc::new(TestSource {
        blob: f.blob.clone(),
        requests: AtomicU64::new(0),
        corrupt: AtomicBool::new(false),
        delay_ms: 5,
    });
    let wsrc = Arc::new(TestSource {
        blob: Bytes::from(full),
        requests: AtomicU64::new(0),
        corrupt: AtomicBool::new(false),
        delay_ms: 5,
    });
    let wdir = f.cache_dir.with_file_name("windows");
    let l = Arc::new(CachedLayer {
        digest: Digest::of(&f.blob),
        layout: Layout::new(ix),
        source: src.clone(),
        windows: Some(RemoteWindows::new(wsrc.clone(), head, wdir.clone())),
    });
    (l, src, wsrc, wdir)
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
    assert!(err.to_string().contains("sha256"), "{err}");
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
    assert_eq!(lock(&cache.mem).lru.len(), 0, "unverified bytes kept");
    src.corrupt.store(false, Ordering::SeqCst);
    let got = cache.read_file(&l, r, fe).await.unwrap();
    assert_eq!(&got[..], &data[..]);
    assert_eq!(cache.stats.snapshot().partial_spans, 1);
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
