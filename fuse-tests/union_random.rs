//! Randomised differential tests of the union (issue 5): seeded, reproducible sequences of
//! mutating and reading operations applied in lockstep to a strata mount and to kernel
//! overlayfs over the same lower layers, each with its own fresh upper. Every operation's
//! result (errno, plus a stat summary of what it touched) must match; the full trees are
//! compared every few operations and at the end; then kernel overlayfs is mounted over
//! strata's upper and must show the same tree, and the upper's overlay-format structure
//! (whiteouts, leftovers in the work directory) is checked against the kernel's upper.
//!
//! Lowers: plain directories (`strata overlay` mode) and, in one test, the same layers
//! pushed to a real registry and mounted lazily by `strata mount --upper`.
//!
//! Seeds: `STRATA_SEED=<n>` runs just that seed (replay); otherwise three fixed seeds and one
//! time-based one. `STRATA_OPS` sets the operations per seed (default 250). A failure prints
//! the seed and the whole operation log with both sides' results.
//!
//! A concurrency test lives here too: readers checking every byte of random ranges of lazily
//! fetched lower files while writers work on upper files in the same mount, under a watchdog.
//!
//! Normalisations against kernel overlayfs (each a legitimate difference, not a strata bug):
//! - st_ino / st_dev are never compared (overlay shows the real lower/upper numbers).
//! - Directory sizes and link counts are not compared (overlay reports nlink 1 for merged
//!   directories and the upper filesystem's numbers otherwise; strata its tree's).
//! - `fstat` of a descriptor on a lower file whose last name was removed: kernel 1 (the
//!   lower inode's count), strata 0 (POSIX); see `normalise`.
//! - Times are compared only right after an explicit `utimensat`; writes and copy-ups stamp
//!   "now", which differs between the two mounts by the time between the calls.
//! - Upper directories: kernel overlayfs (redirect_dir=on) renames a lower directory with a
//!   `trusted.overlay.redirect` xattr and keeps it merged; strata copies the subtree up and
//!   makes it opaque. So whiteouts inside such directories exist only in the kernel's upper;
//!   everywhere else both uppers must have the same whiteouts.

mod common;
#[path = "union_common.rs"]
mod union_common;

use common::testdata::SplitMix64;
use common::union_extra::{assert_same_meta, publish_indexed, walk_meta, LazyMount, Meta};
use common::{Entry, ImageBuilder, Layer, Registry, StrataEnv};
use sha2::{Digest as _, Sha256};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use union_common::{extract_for_overlay, OverlayMount, StrataMount, AS_STRATA};

// ---------------------------------------------------------------------------------------
// Fixture

/// Three layers (bottom first): files, dirs with odd modes, owners, hard links, symlinks
/// (relative, and absolute to a path that exists nowhere, so following one never leaves the
/// mount), xattrs, empty and multi-span files, whiteouts of a file and a directory, an opaque
/// directory, a directory re-created over its whiteout.
fn fixture() -> Vec<Layer> {
    let mut l0 = Layer::new();
    for d in [
        "etc",
        "usr",
        "usr/bin",
        "usr/lib",
        "var",
        "var/cache",
        "opt",
        "opt/old",
        "keep",
        "keep/sub",
        "keep/sub/deep",
    ] {
        l0 = l0.dir(d);
    }
    let l0 = l0
        .add(Entry::dir("tmp").mode(0o1777))
        .add(Entry::dir("home").mode(0o750).owner(1000, 1000))
        .file("etc/hostname", "base\n")
        .file("etc/passwd", "root:x:0:0::/root:/bin/sh\n")
        .add(Entry::file("etc/shadow", "secret\n").mode(0o600))
        .add(Entry::file("etc/empty", Vec::new()))
        .add(Entry::file("usr/bin/tool", union_common::pseudo(70_000, 1)).mode(0o755))
        .hardlink("usr/bin/tool2", "usr/bin/tool")
        .add(Entry::file("usr/bin/suid", b"#!suid".to_vec()).mode(0o4755))
        .symlink("usr/bin/link", "tool")
        .symlink("etc/abs", "/strata-dangling/hostname")
        .add(Entry::file(
            "usr/lib/big.bin",
            union_common::pseudo(3 << 20, 2),
        ))
        .add(Entry::file("usr/lib/libx.so", union_common::pseudo(4097, 3)).mode(0o755))
        .file("var/cache/a", "a")
        .file("var/cache/b", "b")
        .file("opt/old/x", "x")
        .file("opt/old/y", "y")
        .add(Entry::file("keep/1", "one").owner(1000, 100))
        .file("keep/sub/2", "two")
        .file("keep/sub/deep/3", "three")
        .hardlink("keep/sub/deep/3b", "keep/sub/deep/3")
        .add(
            Entry::file("etc/cap", "cap")
                .xattr("user.note", "hello")
                .xattr("user.other", "x"),
        )
        .add(
            Entry::dir("home/u")
                .mode(0o700)
                .owner(1000, 1000)
                .xattr("user.d", "1"),
        );
    let l1 = Layer::new()
        .dir("etc")
        .dir("var")
        .dir("var/cache")
        .dir("opt")
        .dir("usr")
        .dir("usr/lib")
        .whiteout("etc/passwd")
        .file("etc/hostname", "layer1\n")
        .opaque("var/cache")
        .file("var/cache/c", "c")
        .whiteout("opt/old")
        .add(Entry::file("usr/lib/more.bin", union_common::pseudo(1 << 20 | 17, 4)).mode(0o640))
        .dir("keep")
        .dir("keep/sub2")
        .file("keep/sub2/4", "four");
    let l2 = Layer::new()
        .dir("opt")
        .dir("opt/old")
        .file("opt/old/z", "z")
        .dir("data")
        .file("data/h1", "hard")
        .hardlink("data/h2", "data/h1")
        .dir("usr")
        .add(Entry::dir("usr/lib").mode(0o700));
    vec![l0, l1, l2]
}

/// Extract every layer for the kernel (overlay-format whiteouts), bottom first.
fn extract(layers: &[Layer], base: &Path) -> Vec<PathBuf> {
    layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let d = base.join(format!("l{i}"));
            extract_for_overlay(&l.tar_bytes(), &d);
            d
        })
        .collect()
}

#[path = "union_random/concurrency.rs"]
mod concurrency;
#[path = "union_random/ops.rs"]
mod ops;
#[path = "union_random/regressions.rs"]
mod regressions;

use ops::*;

// ---------------------------------------------------------------------------------------
// The differential run

/// The strata side of a case.
enum Under<'a> {
    Dirs(Box<StrataMount>),
    Lazy(LazyMount<'a>),
}

impl Under<'_> {
    fn dir(&self) -> &Path {
        match self {
            Under::Dirs(m) => &m.dir,
            Under::Lazy(m) => &m.dir,
        }
    }
}

/// Prints the op log if the run panics anywhere (also inside a helper).
struct LogOnPanic<'a> {
    what: String,
    seed: u64,
    nops: usize,
    log: &'a RefCell<Vec<String>>,
}

impl Drop for LogOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n==== {} — operation log ({} ops) ====\n{}\n==== replay: STRATA_SEED={} STRATA_OPS={} cargo test --test union_random ====",
                self.what,
                self.log.borrow().len(),
                self.log.borrow().join("\n"),
                self.seed,
                self.nops
            );
        }
    }
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("STRATA_SEED") {
        return vec![s.trim().parse().expect("STRATA_SEED must be a number")];
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    vec![1, 2, 3, now % 1_000_000_007]
}

fn nops() -> usize {
    std::env::var("STRATA_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(250)
}

/// The one asymmetric normalisation: `fstat` of a descriptor open on a lower file whose
/// last name was removed. Kernel overlayfs answers from the real lower inode, which was never
/// unlinked (nlink 1); strata reports 0, as POSIX wants for an unlinked open file (and as
/// PLATFORM.md asks, unlike fuse-overlayfs). Only that pair is accepted.
fn normalise(op: &Op, got: String, want: &str) -> String {
    if matches!(
        op,
        Op::FdRead { .. } | Op::FdWrite { .. } | Op::FdTruncate { .. }
    ) && got.ends_with("nlink=0")
        && want.ends_with("nlink=1")
    {
        let fixed = format!("{}nlink=1", &got[..got.len() - "nlink=0".len()]);
        if fixed == want {
            return fixed;
        }
    }
    got
}

/// Run `nops` random operations with `seed` on strata (made by `make`, given its upper and
/// work dirs) and on kernel overlayfs over `lowers`.
fn run_seed<'a>(
    what: &str,
    seed: u64,
    nops: usize,
    lowers: &[PathBuf],
    t: &Path,
    make: impl FnOnce(&Path, &Path) -> Under<'a>,
) {
    // stderr as well as the panic guard below: the seed is shown with any failure output,
    // also one that happens before the first operation (a mount that fails, say).
    eprintln!("{what}: seed {seed}, {nops} ops (replay with STRATA_SEED={seed} STRATA_OPS={nops})");
    let log = RefCell::new(Vec::new());
    let _guard = LogOnPanic {
        what: format!("{what} seed {seed}"),
        seed,
        nops,
        log: &log,
    };
    let (o_upper, o_work) = (t.join("o-upper"), t.join("o-work"));
    let ovl =
        OverlayMount::with_options(lowers, Some((&o_upper, &o_work)), &t.join("ovl"), AS_STRATA);
    let (su, sw) = (t.join("s-upper"), t.join("s-work"));
    let sm = make(&su, &sw);
    let mut a = Side::new(sm.dir());
    let mut b = Side::new(&ovl.dir);
    let mut rng = SplitMix64::new(seed);
    let mut pool = Pool::scan(&ovl.dir);
    for i in 0..nops {
        let op = gen(&mut rng, &pool);
        let data_seed = rng.next_u64();
        let want = b.apply(&op, data_seed);
        let got = normalise(&op, a.apply(&op, data_seed), &want);
        log.borrow_mut().push(format!(
            "#{i} {op:?}\n    oracle: {want}\n    strata: {got}"
        ));
        assert_eq!(
            got, want,
            "{what} seed {seed}: op #{i} {op:?} differs (strata left, kernel overlayfs right)"
        );
        if i % 10 == 9 {
            pool = Pool::scan(&ovl.dir);
        }
        if i % 50 == 49 {
            assert_same_meta(
                &format!("{what} seed {seed}: trees after op #{i}"),
                &listing(sm.dir()),
                &listing(&ovl.dir),
                40,
            );
        }
    }
    a.fds.clear();
    b.fds.clear();
    let got = listing(sm.dir());
    let want = listing(&ovl.dir);
    assert_same_meta(&format!("{what} seed {seed}: final trees"), &got, &want, 40);
    drop(sm);
    drop(ovl);

    // strata's upper is a kernel-overlayfs upper: the kernel shows the same tree over it.
    let kw = t.join("k-work");
    let compat = OverlayMount::new(lowers, Some((&su, &kw)), &t.join("compat"));
    assert_same_meta(
        &format!("{what} seed {seed}: kernel overlayfs over strata's upper vs strata"),
        &got,
        &listing(&compat.dir),
        40,
    );
    drop(compat);
    check_upper_structure(&su, &sw, &o_upper);
    log.borrow_mut().clear();
}

/// Every object under `root` with its metadata, content hash and xattrs.
fn listing(root: &Path) -> BTreeMap<String, Meta> {
    walk_meta(root, &|_| true)
}

/// Whiteouts (char 0/0 without strata's real-device marker) under `upper`, relative paths.
fn whiteouts(upper: &Path) -> (Vec<String>, Vec<String>) {
    let (mut wh, mut redirected) = (Vec::new(), Vec::new());
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(upper.join(&rel)).unwrap().flatten() {
            let r = rel.join(e.file_name());
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                let x = union_common::xattrs(&e.path());
                if x.iter().any(|(k, _)| k == "trusted.overlay.redirect") {
                    redirected.push(r.display().to_string());
                }
                stack.push(r);
            } else if m.file_type().is_char_device() && m.rdev() == 0 {
                wh.push(r.display().to_string());
            } else {
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(
                    !name.starts_with(".wh."),
                    "OCI whiteout name in an upper: {r:?}"
                );
            }
        }
    }
    wh.sort();
    (wh, redirected)
}

/// strata's upper: same whiteouts as the kernel's except inside directories the kernel
/// renamed by redirect (see the module docs); nothing left in the work directory.
fn check_upper_structure(s_upper: &Path, s_work: &Path, o_upper: &Path) {
    let (sw, _) = whiteouts(s_upper);
    let (ow, redirected) = whiteouts(o_upper);
    let under_redirect = |p: &str| redirected.iter().any(|d| p.starts_with(&format!("{d}/")));
    let only_s: Vec<&String> = sw.iter().filter(|p| !ow.contains(p)).collect();
    let only_o: Vec<&String> = ow
        .iter()
        .filter(|p| !sw.contains(p) && !under_redirect(p))
        .collect();
    assert!(
        only_s.is_empty() && only_o.is_empty(),
        "upper whiteouts differ\n only strata: {only_s:?}\n only kernel: {only_o:?}"
    );
    let tmp = s_work.join("strata-tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "work directory not cleaned: {left:?}");
}

#[test]
fn random_operations_match_kernel_overlayfs_with_directory_lowers() {
    let t0 = Instant::now();
    let layers = fixture();
    for seed in seeds() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let lowers = extract(&layers, &t.join("x"));
        run_seed(
            "directory lowers",
            seed,
            nops(),
            &lowers.clone(),
            t,
            |u, w| {
                Under::Dirs(Box::new(StrataMount::dirs(
                    &lowers,
                    Some((u, w)),
                    &t.join("mnt"),
                    Default::default(),
                    Default::default(),
                )))
            },
        );
    }
    println!("directory lowers: {:?}", t0.elapsed());
}

#[test]
fn random_operations_match_kernel_overlayfs_with_lazy_registry_layers() {
    let t0 = Instant::now();
    let reg = Registry::start();
    let layers = fixture();
    let mut b = ImageBuilder::new();
    for l in &layers {
        b = b.layer(l.clone());
    }
    let img = b.build("v1");
    let reference = publish_indexed(&reg, &img, "union/random:v1");
    // Fewer seeds than the directory case: each costs a daemon start and lazy fetches.
    let seeds: Vec<u64> = seeds().into_iter().rev().take(2).collect();
    for seed in seeds {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let lowers = extract(&layers, &t.join("x"));
        let env = StrataEnv::new();
        run_seed("lazy registry layers", seed, nops(), &lowers, t, |u, w| {
            Under::Lazy(LazyMount::new(&env, &reference, "mnt", Some((u, w))))
        });
    }
    println!("lazy registry layers: {:?}", t0.elapsed());
}
