//! The local tiers: the disk cap, disk hits that verify only the blocks read, tampered span
//! files and eStargz chunks refetched, and a miss that reads the local spans once.

use super::*;

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
    let src = TestSource::new(Bytes::from(blob), 0);
    let l = Arc::new(CachedLayer {
        digest: Digest::of(&src.blob),
        layout: Layout::new(Arc::new(ix)),
        source: src.clone(),
        windows: None,
        groups: None,
        check: Default::default(),
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

/// A read over a span on disk and a missing one: the local tiers are read once (one disk hit,
/// the memory tier off so nothing hides a second pread), the missing span is fetched with one
/// request, and the bytes are right. The same read again is local and answers at once.
#[tokio::test]
async fn a_miss_reads_each_local_span_once() {
    let f = fixture();
    let (i, _) = cached_on_disk(&f).await;
    let (l, src) = layer(&f, 0);
    let whole = inflate(&f.blob);
    let next = f.cache_dir.join(l.digest.hex()).join((i + 1).to_string());
    std::fs::remove_file(&next).unwrap();
    let cache = open_cache_mem(&f.cache_dir, 0);
    let (a, b) = (l.layout.span_range(i), l.layout.span_range(i + 1));
    let r = a.end - 5000..b.start + 5000;
    let fut = match cache.start_read_file(&l, r.clone(), b.end) {
        Read::Fetch(f) => f,
        Read::Local(_) => panic!("span {} is not local", i + 1),
    };
    let got = fut.await.unwrap();
    assert_eq!(&got[..], &whole[r.start as usize..r.end as usize]);
    let s = cache.stats.snapshot();
    assert_eq!(s.disk_hits, 1, "{s:?}");
    assert_eq!(src.requests.load(Ordering::SeqCst), 1);
    cache.flush().await;
    match cache.start_read_file(&l, r.clone(), b.end) {
        Read::Local(got) => assert_eq!(&got.unwrap()[..], &whole[r.start as usize..r.end as usize]),
        Read::Fetch(_) => panic!("both spans are local now"),
    }
}
