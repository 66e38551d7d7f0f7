//! Regressions found by the random and concurrency tests (each fails on the code before
//! its fix).

use super::*;

/// A strata mount with an upper over the fixture extracted as directory lowers.
fn fixture_mount(t: &Path) -> (Vec<PathBuf>, StrataMount) {
    let lowers = extract(&fixture(), &t.join("x"));
    let m = StrataMount::dirs(
        &lowers,
        Some((&t.join("s-upper"), &t.join("s-work"))),
        &t.join("mnt"),
        Default::default(),
        Default::default(),
    );
    (lowers, m)
}

fn sorted_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Seed 1: a whiteout made in a merged directory used to travel along when the directory was
/// renamed (and so made opaque); kernel overlayfs over that upper listed the whiteout as a
/// name that cannot be looked up.
#[test]
fn renamed_directory_carries_no_whiteouts() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (lowers, m) = fixture_mount(t);
    std::fs::remove_file(m.dir.join("usr/bin/link")).unwrap();
    std::fs::create_dir(m.dir.join("keep/sub/new")).unwrap();
    std::fs::remove_file(m.dir.join("keep/sub/deep/3")).unwrap();
    std::fs::rename(m.dir.join("usr/bin"), m.dir.join("moved")).unwrap();
    std::fs::rename(m.dir.join("keep"), m.dir.join("keep2")).unwrap();
    let want_moved = sorted_names(&m.dir.join("moved"));
    assert_eq!(want_moved, ["suid", "tool", "tool2"]);
    assert_eq!(sorted_names(&m.dir.join("keep2/sub/deep")), ["3b"]);
    drop(m);
    for p in ["moved/link", "keep2/sub/deep/3"] {
        assert!(
            std::fs::symlink_metadata(t.join("s-upper").join(p)).is_err(),
            "whiteout {p} left in an opaque directory"
        );
    }
    let k = OverlayMount::new(
        &lowers,
        Some((&t.join("s-upper"), &t.join("k-work"))),
        &t.join("k"),
    );
    assert_eq!(sorted_names(&k.dir.join("moved")), want_moved);
    assert_eq!(sorted_names(&k.dir.join("keep2/sub/deep")), ["3b"]);
}

/// The same at the core, with the moved subdirectory's node forgotten by the kernel and
/// looked up again: it must not merge its old lower entries (a deleted name came back).
#[test]
fn forgotten_subdirectory_of_a_renamed_directory_stays_unmerged() {
    use std::ffi::OsStr;
    use std::sync::Arc;
    use strata::union::{DirLower, LowerSource, MergedTree, UnionFs, Upper};
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let lowers = extract(&fixture(), &t.join("x"));
    let mut entries = Vec::new();
    let mut sources: Vec<Arc<dyn LowerSource>> = Vec::new();
    for l in &lowers {
        let d = DirLower::open(l).unwrap();
        entries.push(d.entries().to_vec());
        sources.push(Arc::new(d));
    }
    let tree = Arc::new(MergedTree::build(&entries).unwrap());
    let up = Upper::open(t.join("u"), t.join("w")).unwrap();
    let fs = UnionFs::new(tree, sources, Some(up), None).unwrap();
    let names = |fs: &UnionFs, ino: u64| -> Vec<String> {
        let fh = fs.opendir(ino).unwrap();
        let v = fs
            .readdir(fh, 0)
            .unwrap()
            .into_iter()
            .map(|d| d.name.to_string_lossy().into_owned())
            .filter(|n| n != "." && n != "..")
            .collect();
        fs.releasedir(fh).unwrap();
        v
    };
    let keep = fs.lookup(1, OsStr::new("keep")).unwrap().ino;
    let sub = fs.lookup(keep, OsStr::new("sub")).unwrap().ino;
    fs.unlink(sub, OsStr::new("2")).unwrap();
    fs.rename(1, OsStr::new("keep"), 1, OsStr::new("keep2"), 0)
        .unwrap();
    fs.forget(sub, 1);
    fs.forget(keep, 1);
    let keep2 = fs.lookup(1, OsStr::new("keep2")).unwrap().ino;
    let sub2 = fs.lookup(keep2, OsStr::new("sub")).unwrap().ino;
    assert_eq!(names(&fs, sub2), ["deep"]);
    assert!(fs.lookup(sub2, OsStr::new("2")).is_err());
}

/// Seed 3: unlinking one name of a hard-linked lower file left the other name reporting the
/// lower link count (2) instead of the union's (1).
#[test]
fn link_count_after_removing_a_lower_hard_link_name() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, m) = fixture_mount(tmp.path());
    let nlink = |p: &str| std::fs::symlink_metadata(m.dir.join(p)).unwrap().nlink();
    assert_eq!(nlink("keep/sub/deep/3"), 2);
    std::fs::remove_file(m.dir.join("keep/sub/deep/3b")).unwrap();
    assert_eq!(nlink("keep/sub/deep/3"), 1);
    // Replacing a name by rename counts the same way.
    assert_eq!(nlink("usr/bin/tool"), 2);
    std::fs::write(m.dir.join("new"), b"n").unwrap();
    std::fs::rename(m.dir.join("new"), m.dir.join("usr/bin/tool2")).unwrap();
    assert_eq!(nlink("usr/bin/tool"), 1);
    assert_eq!(
        std::fs::read(m.dir.join("keep/sub/deep/3")).unwrap(),
        b"three"
    );
}

/// Seed 15: a descriptor opened read-only on a lower file kept reading the lower bytes after
/// the file was copied up and changed through another descriptor.
#[test]
fn read_only_descriptor_sees_a_later_copy_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, m) = fixture_mount(tmp.path());
    let p = m.dir.join("etc/hostname");
    let ro = File::open(&p).unwrap();
    let mut b = [0u8; 64];
    let n = ro.read_at(&mut b, 0).unwrap();
    assert_eq!(&b[..n], b"layer1\n");
    std::fs::write(&p, b"changed after open, longer\n").unwrap();
    let n = ro.read_at(&mut b, 0).unwrap();
    assert_eq!(&b[..n], b"changed after open, longer\n");
}

/// Soak seed 263315737: `fstat` on a descriptor of an upper directory removed by `rmdir`
/// failed with ENOENT (kernel overlayfs, like any filesystem, still answers).
#[test]
fn fstat_of_an_open_directory_after_rmdir() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, m) = fixture_mount(tmp.path());
    let d = m.dir.join("keep/newdir");
    std::fs::create_dir(&d).unwrap();
    let f = File::open(&d).unwrap();
    std::fs::remove_dir(&d).unwrap();
    let st = f.metadata().expect("fstat after rmdir");
    assert!(st.is_dir());
    // A lower directory too.
    let f = File::open(m.dir.join("opt/old")).unwrap();
    std::fs::remove_file(m.dir.join("opt/old/z")).unwrap();
    std::fs::remove_dir(m.dir.join("opt/old")).unwrap();
    assert!(f.metadata().expect("fstat after rmdir").is_dir());
}

/// Soak seed 15992961: a fifo held open and then unlinked: `fstat` gave EIO (the core had no
/// handle for it and nothing left to stat).
#[test]
fn fstat_of_an_open_fifo_after_unlink() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, m) = fixture_mount(tmp.path());
    let p = m.dir.join("keep/fifo");
    // SAFETY: NUL-terminated path.
    chk(unsafe { libc::mknod(cs(&p).as_ptr(), libc::S_IFIFO | 0o640, 0) }).unwrap();
    let f = open_raw(&p, libc::O_RDWR | libc::O_NONBLOCK, 0).unwrap();
    std::fs::remove_file(&p).unwrap();
    let st = f.metadata().expect("fstat after unlink");
    assert!(st.file_type().is_fifo());
    assert_eq!((st.nlink(), st.mode() & 0o777), (0, 0o640));
}

/// Found by the concurrency test: an `O_DIRECT` open of an upper file passed `O_DIRECT` on to
/// the upper file, whose filesystem then refused strata's own (unaligned) buffers and the
/// callers' unaligned offsets with EINVAL. FUSE already keeps such opens out of the page
/// cache; the upper file is read and written normally.
#[test]
fn o_direct_reads_and_writes_of_upper_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, m) = fixture_mount(tmp.path());
    let p = m.dir.join("direct.bin");
    let data = union_common::pseudo(3 << 20, 77);
    std::fs::write(&p, &data).unwrap();
    // The writer's close reaches the daemon later (FUSE sends RELEASE in the background);
    // until it does, the file's passthrough backing is still registered, the kernel requires
    // every open of the file to share it, and it opens the backing file with the caller's
    // flags, O_DIRECT included (the upper filesystem's alignment rules then apply). Wait for
    // that release: an O_DIRECT open of the file alone must take unaligned reads.
    let open_direct = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&p)
            .unwrap()
    };
    let mut tries = 0;
    let f = loop {
        let f = open_direct();
        let mut b = [0u8; 10];
        match f.read_at(&mut b, 3) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && tries < 40 => {
                tries += 1;
                drop(f);
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            _ => break f,
        }
    };
    // A 4 KiB-aligned buffer, offset and length: what O_DIRECT callers are told to use.
    let layout = std::alloc::Layout::from_size_align(1 << 20, 4096).unwrap();
    // SAFETY: non-zero size; freed below with the same layout.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!ptr.is_null());
    // SAFETY: ptr is valid for layout.size() bytes until dealloc.
    let buf = unsafe { std::slice::from_raw_parts_mut(ptr, layout.size()) };
    let n = f.read_at(buf, 1 << 20).expect("aligned O_DIRECT read");
    assert!(buf[..n] == data[1 << 20..(1 << 20) + n]);
    let n = f
        .read_at(&mut buf[..1000], 12_345)
        .expect("unaligned O_DIRECT read");
    assert!(buf[..n] == data[12_345..12_345 + n]);
    f.write_all_at(&buf[..4096], 8192).expect("O_DIRECT write");
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(ptr, layout) };
    // A lower file copied up by an O_DIRECT writer.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.dir.join("usr/lib/big.bin"))
        .unwrap();
    let mut b = vec![0u8; 777];
    let n = f
        .read_at(&mut b, 1001)
        .expect("O_DIRECT read after copy-up");
    assert!(b[..n] == union_common::pseudo(3 << 20, 2)[1001..1001 + n]);
}
