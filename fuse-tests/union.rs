//! Read-side union tests over real FUSE mounts: content and metadata equal kernel overlayfs
//! over the same layers; a slow lower read does not block other requests; a 5000-entry
//! directory merged across layers lists without duplicates and with stable offsets.

mod common;
#[path = "union_common.rs"]
mod union_common;

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use union_common::*;

#[test]
fn content_and_metadata_match_kernel_overlayfs() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = fixture_layers();
    let lowers = extract_all(&layers, &tmp.path().join("x"));
    let ovl = OverlayMount::new(&lowers, None, &tmp.path().join("ovl"));
    let st = StrataMount::new(tar_lowers(&layers), None, &tmp.path().join("mnt"));
    let want = listing(&ovl.dir);
    let got = listing(&st.dir);
    assert!(want.len() > 20, "oracle listing too small: {want:?}");
    assert_same("strata vs overlayfs", &got, &want);
    // Hard links share an inode, and readdir inode numbers equal stat inode numbers.
    use std::os::unix::fs::MetadataExt;
    let a = std::fs::metadata(st.dir.join("usr/bin/tool")).unwrap();
    let b = std::fs::metadata(st.dir.join("usr/bin/tool2")).unwrap();
    assert_eq!(a.ino(), b.ino());
    for e in std::fs::read_dir(st.dir.join("usr/bin")).unwrap() {
        let e = e.unwrap();
        use std::os::unix::fs::DirEntryExt;
        assert_eq!(
            e.ino(),
            std::fs::symlink_metadata(e.path()).unwrap().ino(),
            "{:?}",
            e.file_name()
        );
    }
    // Whiteouts and opaque markers are never visible.
    assert!(!st.dir.join("etc/passwd").exists());
    assert!(!st.dir.join("var/cache/a").exists());
    assert!(!st.dir.join("opt/old/x").exists());
    // A remount gives the same inode numbers.
    let ino1 = std::fs::metadata(st.dir.join("usr/lib/big.bin"))
        .unwrap()
        .ino();
    drop(st);
    let st2 = StrataMount::new(tar_lowers(&layers), None, &tmp.path().join("mnt"));
    assert_eq!(
        std::fs::metadata(st2.dir.join("usr/lib/big.bin"))
            .unwrap()
            .ino(),
        ino1
    );
    let stats = st2.handle.as_ref().unwrap().stats();
    assert_eq!(stats.reads, 0);
}

/// The slow lower's delay: the stats below must all finish within it, so it leaves room for a
/// loaded machine.
const SLOW: Duration = Duration::from_secs(5);

#[test]
fn slow_lower_read_does_not_block_stat() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = LayerTar::new();
    l.file("slow.bin", &pseudo(1 << 20, 9), 0o644);
    for i in 0..8 {
        l.file(&format!("other{i}"), b"x", 0o644);
    }
    let lower = strata::union::TarBytesLower::new(l.finish())
        .unwrap()
        .with_delay(SLOW);
    let st = StrataMount::new(vec![lower], None, &tmp.path().join("mnt"));
    let slow = st.dir.join("slow.bin");
    let started = Arc::new(AtomicBool::new(false));
    let s2 = started.clone();
    let reader = std::thread::spawn(move || {
        let t0 = Instant::now();
        s2.store(true, Ordering::SeqCst);
        let data = std::fs::read(&slow).unwrap();
        (data.len(), Instant::now(), t0)
    });
    let handle = st.handle.as_ref().unwrap();
    // Wait until the slow read is really waiting inside strata (polled every 2 ms: a spin
    // would take a core from the daemon on a 2-core machine).
    common::poll_until(
        "the slow read to wait inside strata",
        Duration::from_secs(30),
        Duration::from_millis(2),
        || (handle.stats().lower_reads_waited > 0).then_some(()),
    );
    let mut stat_done = Vec::new();
    for i in 0..8 {
        std::fs::metadata(st.dir.join(format!("other{i}"))).unwrap();
        let _ = std::fs::read_dir(&st.dir).unwrap().count();
        stat_done.push(Instant::now());
    }
    let (len, read_done, t0) = reader.join().unwrap();
    assert_eq!(len, 1 << 20);
    assert!(read_done.duration_since(t0) >= SLOW);
    for t in stat_done {
        assert!(t < read_done, "a stat finished only after the slow read");
    }
}

/// `(name, d_off)` of every entry, read with libc readdir.
fn raw_readdir(dir: &std::path::Path) -> Vec<(Vec<u8>, i64)> {
    let c = CString::new(dir.as_os_str().as_bytes()).unwrap();
    let mut out = Vec::new();
    unsafe {
        let d = libc::opendir(c.as_ptr());
        assert!(!d.is_null());
        loop {
            let e = libc::readdir64(d);
            if e.is_null() {
                break;
            }
            let name = CStr::from_ptr((*e).d_name.as_ptr()).to_bytes().to_vec();
            out.push((name, (*e).d_off));
        }
        libc::closedir(d);
    }
    out
}

/// Names after seeking to `off`.
fn readdir_from(dir: &std::path::Path, off: i64, n: usize) -> Vec<Vec<u8>> {
    let c = CString::new(dir.as_os_str().as_bytes()).unwrap();
    let mut out = Vec::new();
    unsafe {
        let d = libc::opendir(c.as_ptr());
        assert!(!d.is_null());
        libc::seekdir(d, off as libc::c_long);
        while out.len() < n {
            let e = libc::readdir64(d);
            if e.is_null() {
                break;
            }
            out.push(CStr::from_ptr((*e).d_name.as_ptr()).to_bytes().to_vec());
        }
        libc::closedir(d);
    }
    out
}

#[test]
fn big_directory_across_layers_has_no_duplicates_and_stable_offsets() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l0 = LayerTar::new();
    l0.dir("d", 0o755);
    for i in 0..3000 {
        l0.file(&format!("d/f{i:04}"), b"0", 0o644);
    }
    let mut l1 = LayerTar::new();
    l1.dir("d", 0o755);
    for i in 2000..5000 {
        l1.file(&format!("d/f{i:04}"), b"1", 0o644);
    }
    for i in 0..100 {
        l1.whiteout("d", &format!("f{i:04}"));
    }
    let layers = vec![l0.finish(), l1.finish()];
    let st = StrataMount::new(tar_lowers(&layers), None, &tmp.path().join("mnt"));
    let dir = st.dir.join("d");
    let first = raw_readdir(&dir);
    let names: Vec<&Vec<u8>> = first
        .iter()
        .map(|(n, _)| n)
        .filter(|n| n.as_slice() != b"." && n.as_slice() != b"..")
        .collect();
    let uniq: std::collections::HashSet<&Vec<u8>> = names.iter().copied().collect();
    assert_eq!(names.len(), 4900);
    assert_eq!(uniq.len(), names.len(), "duplicate names");
    assert!(!uniq.contains(&b"f0050".to_vec()));
    let second = raw_readdir(&dir);
    assert_eq!(
        first, second,
        "order and offsets differ between two listings"
    );
    // Seeking to any entry's offset continues with the next entry.
    for k in [0usize, 1, 2, 100, 2500, 4000, first.len() - 2] {
        let (_, off) = &first[k];
        let next = readdir_from(&dir, *off, 3);
        let want: Vec<Vec<u8>> = first[k + 1..]
            .iter()
            .take(3)
            .map(|(n, _)| n.clone())
            .collect();
        assert_eq!(next, want, "seekdir to offset of entry {k}");
    }
    // Agrees with kernel overlayfs on the names.
    let lowers = extract_all(&layers, &tmp.path().join("x"));
    let ovl = OverlayMount::new(&lowers, None, &tmp.path().join("ovl"));
    let mut a: Vec<_> = std::fs::read_dir(ovl.dir.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut b: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
}
