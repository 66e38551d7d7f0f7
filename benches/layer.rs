//! Layer index benchmarks: build throughput on a generated ~20 MiB gzip layer, path lookup on a
//! 100k-entry index, and a random 4 KiB verified read from a checkpoint (bytes in memory, so
//! this measures decode + sha256, not the network).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::io::Write;
use strata::layer::{self, BuildOptions, EntryKind, LayerIndex};

#[path = "../src/testdata.rs"]
mod testdata;
use testdata::{Words, XorShift64};

/// Text-like content that compresses roughly like /usr (about 2.5:1).
fn content(n: usize, seed: u64) -> Vec<u8> {
    const USR: Words = Words {
        words: &[
            "alpha ", "beta ", "gamma ", "delta\n", "usr/lib/", "0x7f3a ", "strata ", "{}\n",
        ],
        one_in: 3,
        raw: 0..3,
    };
    XorShift64::from_state(seed | 1).words(n, &USR)
}

fn tar_of(files: usize, size: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..files {
        let data = content(size, i as u64 + 1);
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, format!("d{:03}/f{i:06}", i % 300), &data[..])
            .expect("append");
    }
    b.into_inner().expect("tar")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");

    // ~20 MiB compressed gzip layer.
    let blob = gzip(&tar_of(400, 128 << 10));
    let mut g = c.benchmark_group("layer_build");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(blob.len() as u64));
    g.bench_function(format!("gzip_{}MB", blob.len() >> 20), |b| {
        b.iter(|| {
            layer::build_index(&blob[..], layer::MEDIA_TAR_GZIP, &dir.path().join("build"))
                .expect("build")
        })
    });
    g.finish();

    // 100k-entry index.
    let many = tar_of(100_000, 0);
    let big = dir.path().join("many");
    let ix = layer::build_index(&many[..], layer::MEDIA_TAR, &big).expect("index");
    let paths: Vec<String> = ix
        .entries()
        .filter(|e| e.kind() == EntryKind::File)
        .map(|e| e.path())
        .step_by(97)
        .collect();
    let mut i = 0;
    c.bench_function("lookup_100k", |b| {
        b.iter(|| {
            i = (i + 1) % paths.len();
            ix.lookup(&paths[i]).expect("present")
        })
    });
    c.bench_function("open_100k", |b| {
        b.iter(|| LayerIndex::open(&big).expect("open"))
    });

    // Random 4 KiB read from a checkpoint, default SPAN.
    let ix = layer::build_index_with(
        &blob[..],
        layer::MEDIA_TAR_GZIP,
        &dir.path().join("read"),
        &BuildOptions::default(),
    )
    .expect("index");
    let files: Vec<_> = ix
        .entries()
        .filter(|e| e.kind() == EntryKind::File)
        .collect();
    let mut s = 7u64;
    c.bench_function("read_4k_from_checkpoint", |b| {
        b.iter_batched(
            || {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                let e = files[(s >> 33) as usize % files.len()];
                let off = (s >> 20) % (e.size() - 4096);
                let plan = ix.plan_read(&e, off..off + 4096).expect("plan");
                let bytes =
                    blob[plan.compressed.start as usize..plan.compressed.end as usize].to_vec();
                (plan, bytes)
            },
            |(plan, bytes)| ix.decode_read(&plan, &bytes).expect("read"),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(layer_benches, benches);
criterion_main!(layer_benches);
