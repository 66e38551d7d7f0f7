//! Chunk cache hit paths: 4 KiB and 1 MiB reads served from the memory LRU and from on-disk
//! span files (verified on load). A miss needs the network and is measured end to end by
//! `scripts/bench-fetch.sh` instead.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures::future::BoxFuture;
use futures::FutureExt;
use std::io::Write;
use std::ops::Range;
use std::sync::Arc;
use strata::cache::{BlobSource, CacheConfig, CachedLayer, ChunkCache, FetchError, Layout};
use strata::digest::Digest;
use strata::layer::{BuildOptions, MEDIA_TAR_GZIP};

#[path = "../src/testdata.rs"]
mod testdata;
use testdata::XorShift64;

struct MemBlob(Bytes);

impl BlobSource for MemBlob {
    fn fetch(&self, r: Range<u64>) -> BoxFuture<'static, Result<Bytes, FetchError>> {
        let b = self.0.slice(r.start as usize..r.end as usize);
        async move { Ok(b) }.boxed()
    }
}

fn content(n: usize) -> Vec<u8> {
    XorShift64::from_state(0x2545_f491_4f6c_dd1d).bytes(n, |i, s| {
        if i % 3 == 0 {
            s as u8
        } else {
            b"abcdefgh"[(s >> 60) as usize % 8]
        }
    })
}

fn setup(dir: &std::path::Path, memory: u64) -> (Arc<ChunkCache>, Arc<CachedLayer>, u64) {
    let data = content(16 << 20);
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "big", &data[..]).expect("tar");
    let tar = tar.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).expect("gzip");
    let blob = Bytes::from(gz.finish().expect("gzip"));
    let index = strata::layer::build_index_with(
        &blob[..],
        MEDIA_TAR_GZIP,
        &dir.join("ix"),
        &BuildOptions::default(),
    )
    .expect("index");
    let index = Arc::new(index);
    let off = index.lookup("big").expect("entry").offset();
    let cache = ChunkCache::open(CacheConfig {
        dir: dir.join("cache"),
        memory_bytes: memory,
        disk_bytes: 1 << 30,
        max_concurrent_fetches: 4,
        fetch_timeout: strata::cache::DEFAULT_FETCH_TIMEOUT,
        partial_spans: false,
        fetch_ahead: 0,
        siblings_after: 0,
        siblings_python: true,
        near_request: 0,
    })
    .expect("cache");
    let layer = Arc::new(CachedLayer {
        digest: Digest::of(&blob),
        layout: Layout::new(index),
        source: Arc::new(MemBlob(blob)),
        windows: None,
        groups: None,
        check: Default::default(),
    });
    (cache, layer, off)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for (tier, memory) in [("memory", 1u64 << 30), ("disk", 0)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cache, layer, off) = setup(dir.path(), memory);
        // Warm every span (into memory, or only onto disk when the memory tier is 0 bytes).
        rt.block_on(cache.prefetch_layer(&layer)).expect("prefetch");
        for len in [4096u64, 1 << 20] {
            let mut g = c.benchmark_group(format!("cache_hit_{tier}"));
            g.throughput(Throughput::Bytes(len));
            let mut i = 0u64;
            g.bench_function(format!("{}KiB", len / 1024), |b| {
                b.iter(|| {
                    i = (i + 7919 * 4096) % (15 << 20);
                    let r = off + i..off + i + len;
                    let got = cache
                        .try_read_local(&layer, r)
                        .expect("local")
                        .expect("read");
                    assert_eq!(got.len() as u64, len);
                })
            });
            g.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
