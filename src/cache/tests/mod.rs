//! Cache tests over real gzip layers built in code and a counting, optionally corrupting
//! source: the fixtures here, the tests by part of the cache in `tiers.rs`, `fetch.rs` and
//! `policy.rs`.

use super::fetcher::MAX_COALESCE_BYTES;
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
    /// Requests for more than this many bytes fail (0: no limit).
    max_len: AtomicU64,
    /// Requests under way, and the most at once.
    in_flight: Arc<AtomicU64>,
    max_in_flight: Arc<AtomicU64>,
    /// What the source says its server's fastest answer took (µs; 0: it does not know).
    answer_us: AtomicU64,
    /// Bytes asked for, all requests.
    asked: AtomicU64,
}

impl TestSource {
    fn new(blob: Bytes, delay_ms: u64) -> Arc<TestSource> {
        Arc::new(TestSource {
            blob,
            requests: AtomicU64::new(0),
            corrupt: AtomicBool::new(false),
            delay_ms,
            max_len: AtomicU64::new(0),
            in_flight: Default::default(),
            max_in_flight: Default::default(),
            answer_us: AtomicU64::new(0),
            asked: AtomicU64::new(0),
        })
    }
}

impl BlobSource for TestSource {
    fn fastest_answer(&self) -> Option<std::time::Duration> {
        let us = self.answer_us.load(Ordering::SeqCst);
        (us > 0).then(|| std::time::Duration::from_micros(us))
    }

    fn fetch(&self, range: Range<u64>) -> BoxFuture<'static, Result<Bytes, FetchError>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.asked
            .fetch_add(range.end - range.start, Ordering::SeqCst);
        let max = self.max_len.load(Ordering::SeqCst);
        if max > 0 && range.end - range.start > max {
            let e = std::io::Error::other("test source: request too long");
            return futures::future::ready(Err(FetchError::Local {
                path: "test-source".into(),
                source: Arc::new(e),
            }))
            .boxed();
        }
        let mut data = self
            .blob
            .slice(range.start as usize..range.end as usize)
            .to_vec();
        if self.corrupt.load(Ordering::SeqCst) && !data.is_empty() {
            let mid = data.len() / 2;
            data[mid] ^= 0x55;
        }
        let delay = self.delay_ms;
        let (now, most) = (self.in_flight.clone(), self.max_in_flight.clone());
        async move {
            most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            now.fetch_sub(1, Ordering::SeqCst);
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
    let named: Vec<(String, usize)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| (format!("dir/file{i}"), n))
        .collect();
    fixture_named(&named)
}

/// A layer of the files `named` (path, size), in that tar order, in 256 KiB spans.
fn fixture_named(named: &[(String, usize)]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut tar = ::tar::Builder::new(Vec::new());
    for (i, (name, size)) in named.iter().enumerate() {
        let name = name.clone();
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
        siblings_after: 0,
        siblings_python: true,
        near_request: 0,
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
        siblings_after: 0,
        siblings_python: true,
        near_request: 0,
    })
    .unwrap()
}

fn layer(f: &Fixture, delay_ms: u64) -> (Arc<CachedLayer>, Arc<TestSource>) {
    let src = TestSource::new(f.blob.clone(), delay_ms);
    let l = Arc::new(CachedLayer {
        digest: Digest::of(&f.blob),
        layout: Layout::new(f.index.clone()),
        source: src.clone(),
        windows: None,
        groups: None,
        check: Default::default(),
    });
    (l, src)
}

fn vrange(l: &CachedLayer, path: &str, r: Range<u64>) -> Range<u64> {
    let e = l.layout.index().lookup(path).unwrap();
    l.layout.file_range(&e, r).unwrap()
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
        siblings_after: 0,
        siblings_python: true,
        near_request: 0,
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

/// A layer whose index is the head alone, its windows served from the full index file (the
/// sidecar blob) by a second, corruptible source (its block record groups by a third).
fn head_only_layer(f: &Fixture) -> (Arc<CachedLayer>, Arc<TestSource>, Arc<TestSource>, PathBuf) {
    let (l, src, wsrc, _gsrc, wdir) = head_only_layer_groups(f);
    (l, src, wsrc, wdir)
}

/// [`head_only_layer`], and the source of its block record groups.
fn head_only_layer_groups(
    f: &Fixture,
) -> (
    Arc<CachedLayer>,
    Arc<TestSource>,
    Arc<TestSource>,
    Arc<TestSource>,
    PathBuf,
) {
    let full = std::fs::read(f.index.path()).unwrap();
    let head = crate::layer::head_len(&full).unwrap();
    let head_path = f.cache_dir.with_file_name("head-index");
    std::fs::write(&head_path, &full[..head as usize]).unwrap();
    let ix = Arc::new(LayerIndex::open(&head_path).unwrap());
    assert!(!ix.tail_local());
    let src = TestSource::new(f.blob.clone(), 5);
    let wsrc = TestSource::new(Bytes::from(full.clone()), 5);
    let gsrc = TestSource::new(Bytes::from(full), 5);
    let wdir = f.cache_dir.with_file_name("windows");
    let blocks = ix.seek_table().unwrap().block_section_len();
    let gdir = f.cache_dir.with_file_name("head-index.groups");
    let l = Arc::new(CachedLayer {
        digest: Digest::of(&f.blob),
        layout: Layout::new(ix),
        source: src.clone(),
        windows: Some(RemoteWindows::new(
            wsrc.clone(),
            head + blocks,
            wdir.clone(),
        )),
        groups: Some(RemoteWindows::groups(gsrc.clone(), head, gdir)),
        check: Default::default(),
    });
    (l, src, wsrc, gsrc, wdir)
}

mod fetch;
mod policy;
mod tiers;
