//! Union core benchmarks (no mount): building the merged tree from two layers with 100k
//! entries in total (whiteouts and an opaque directory included), a path lookup in it, and
//! listing a 1000-entry directory through `UnionFs` (merged lower listing, read-only).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::ffi::OsStr;
use std::sync::Arc;
use strata::layer::{Entry, EntryKind, EntryTable};
use strata::union::{MergedTree, UnionFs, ROOT_INO};

/// Bottom layer: 100 directories x 900 files; top layer: 10k files over them, 500
/// whiteouts and one opaque directory.
fn layers() -> Vec<Vec<Entry>> {
    let mut bottom = EntryTable::new();
    bottom.push(Entry::new("", EntryKind::Dir));
    for d in 0..100 {
        bottom.push(Entry::new(format!("d{d:03}"), EntryKind::Dir));
        for f in 0..900 {
            let mut e = Entry::new(format!("d{d:03}/f{f:04}"), EntryKind::File);
            e.size = 100;
            bottom.push(e);
        }
    }
    let mut top = EntryTable::new();
    top.push(Entry::new("", EntryKind::Dir));
    for d in 0..100 {
        let mut dir = Entry::new(format!("d{d:03}"), EntryKind::Dir);
        dir.opaque = d == 99;
        top.push(dir);
        for f in 0..100 {
            top.push(Entry::new(format!("d{d:03}/n{f:03}"), EntryKind::File));
        }
        for f in 0..5 {
            top.push(Entry::new(format!("d{d:03}/f{f:04}"), EntryKind::Whiteout));
        }
    }
    vec![bottom.finish(), top.finish()]
}

fn bench(c: &mut Criterion) {
    let layers = layers();
    let n: usize = layers.iter().map(Vec::len).sum();
    let mut g = c.benchmark_group("union");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10);
    g.bench_function("tree_build_100k", |b| {
        b.iter(|| MergedTree::build(&layers).map(|t| t.len()))
    });
    // The stored form a remount maps instead of building: the load is the check (CRC-32 +
    // one pass over the records); `tree_decode_100k` adds a copy of the bytes.
    let stored = MergedTree::build(&layers)
        .unwrap_or_default()
        .encode()
        .to_vec();
    let nl = layers.len();
    g.bench_function("tree_decode_100k", |b| {
        b.iter(|| MergedTree::decode(&stored, nl).map(|t| t.len()))
    });
    let dir = tempfile::tempdir().ok();
    if let Some(path) = dir.as_ref().map(|d| d.path().join("t.tree")) {
        if std::fs::write(&path, &stored).is_ok() {
            g.bench_function("tree_open_100k", |b| {
                b.iter(|| MergedTree::open(&path, nl).map(|t| t.len()))
            });
        }
    }
    g.finish();

    let tree = Arc::new(MergedTree::build(&layers).unwrap_or_default());
    let mut i = 0u64;
    c.bench_function("union/tree_resolve_path", |b| {
        b.iter(|| {
            i = i.wrapping_add(7919);
            let p = format!("d{:03}/f{:04}", i % 99, 100 + i % 800);
            tree.resolve(&p)
        })
    });

    let fs = match UnionFs::new(tree.clone(), Vec::new(), None, None) {
        Ok(fs) => fs,
        Err(e) => panic!("union: {e}"),
    };
    let dir = fs
        .lookup(ROOT_INO, OsStr::new("d050"))
        .map(|a| a.ino)
        .unwrap_or(ROOT_INO);
    c.bench_function("union/lookup", |b| {
        let mut k = 0u32;
        b.iter(|| {
            k = (k + 37) % 900;
            fs.lookup(dir, OsStr::new(&format!("f{k:04}"))).is_ok()
        })
    });
    c.bench_function("union/readdir_1000", |b| {
        b.iter_batched(
            || fs.opendir(dir).unwrap_or(0),
            |fh| {
                let n = fs.readdir(fh, 0).map(|v| v.len()).unwrap_or(0);
                let _ = fs.releasedir(fh);
                n
            },
            BatchSize::SmallInput,
        )
    });
    c.bench_function("union/readdirplus_1000", |b| {
        b.iter_batched(
            || fs.opendir(dir).unwrap_or(0),
            |fh| {
                let mut n = 0usize;
                let _ = fs.readdirplus_each(fh, 0, |_, _| {
                    n += 1;
                    false
                });
                let _ = fs.releasedir(fh);
                n
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
