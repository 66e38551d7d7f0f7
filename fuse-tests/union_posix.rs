//! Differential test of the POSIX operations the main sequence (union_diff.rs) leaves out:
//! fallocate (allocate, keep-size, punch hole) on lower and upper files, lseek
//! SEEK_DATA / SEEK_HOLE on lower, punched and sparse files, OFD byte-range locks and flock
//! across a copy-up, fsync / fdatasync, statfs. The same steps run on kernel overlayfs over
//! the same layers; every result and the final trees must match.

mod common;
#[path = "union_common.rs"]
mod union_common;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use union_common::*;

fn errno_of(r: libc::c_long) -> String {
    if r < 0 {
        format!(
            "errno {}",
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        )
    } else {
        r.to_string()
    }
}

fn open_rw(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

fn fallocate(f: &File, mode: i32, off: i64, len: i64) -> String {
    errno_of(unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) } as libc::c_long)
}

fn seek(f: &File, off: i64, whence: i32) -> String {
    errno_of(unsafe { libc::lseek(f.as_raw_fd(), off, whence) } as libc::c_long)
}

fn size(f: &File) -> u64 {
    f.metadata().map(|m| m.len()).unwrap_or(u64::MAX)
}

fn ofd_lock(f: &File, ty: i32) -> String {
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = ty as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0;
    errno_of(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) } as libc::c_long)
}

fn ofd_getlk(f: &File) -> String {
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if r < 0 {
        return errno_of(-1);
    }
    match i32::from(fl.l_type) {
        libc::F_UNLCK => "unlocked".into(),
        libc::F_RDLCK => "held: read".into(),
        libc::F_WRLCK => "held: write".into(),
        t => format!("type {t}"),
    }
}

fn flock(f: &File, op: i32) -> String {
    errno_of(unsafe { libc::flock(f.as_raw_fd(), op) } as libc::c_long)
}

fn zeros_at(f: &File, off: u64, len: usize) -> String {
    let mut b = vec![0xffu8; len];
    match f.read_at(&mut b, off) {
        Ok(n) => format!("{n} bytes, all zero: {}", b[..n].iter().all(|&x| x == 0)),
        Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(-1)),
    }
}

/// The steps; one line per step with its result.
fn run_ops(r: &Path) -> Vec<String> {
    let mut log = Vec::new();
    let mut step = |name: &str, out: String| log.push(format!("{name}: {out}"));
    const MIB: i64 = 1 << 20;

    // fallocate on a lower file copies it up, then allocates / extends
    let more = open_rw(&r.join("usr/lib/more.bin"));
    step(
        "allocate past EOF of lower",
        fallocate(&more, 0, 3 * MIB, 2 * MIB),
    );
    step("size after allocate", size(&more).to_string());
    let host = open_rw(&r.join("etc/hostname"));
    step(
        "keep-size allocate",
        fallocate(&host, libc::FALLOC_FL_KEEP_SIZE, 0, MIB),
    );
    step("size after keep-size", size(&host).to_string());
    let big = open_rw(&r.join("usr/lib/big.bin"));
    step(
        "punch hole in lower",
        fallocate(
            &big,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            MIB,
            MIB,
        ),
    );
    step(
        "punched range reads",
        zeros_at(&big, MIB as u64 + 4096, 8192),
    );
    step("size after punch", size(&big).to_string());
    step("SEEK_HOLE in punched", seek(&big, 0, libc::SEEK_HOLE));
    step("SEEK_DATA after hole", seek(&big, MIB, libc::SEEK_DATA));
    step("bad fallocate mode", fallocate(&big, 0x7f00, 0, 1));

    // lseek on a lower file nobody wrote: all data, hole at EOF, ENXIO past it
    let tool = File::open(r.join("usr/bin/tool")).expect("open tool");
    step("lower SEEK_DATA 0", seek(&tool, 0, libc::SEEK_DATA));
    step("lower SEEK_HOLE 0", seek(&tool, 0, libc::SEEK_HOLE));
    step("lower SEEK_DATA mid", seek(&tool, 4097, libc::SEEK_DATA));
    step(
        "lower SEEK_DATA at EOF",
        seek(&tool, 70_000, libc::SEEK_DATA),
    );
    step(
        "lower SEEK_HOLE past EOF",
        seek(&tool, 80_000, libc::SEEK_HOLE),
    );
    step("lower SEEK_END", seek(&tool, -10, libc::SEEK_END));

    // a sparse upper file
    let sparse = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(r.join("sparse"))
        .expect("create sparse");
    step(
        "write at 8 MiB",
        match sparse.write_at(b"x", 8 << 20) {
            Ok(n) => n.to_string(),
            Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(-1)),
        },
    );
    step("sparse SEEK_DATA 0", seek(&sparse, 0, libc::SEEK_DATA));
    step("sparse SEEK_HOLE 0", seek(&sparse, 0, libc::SEEK_HOLE));
    step("sparse reads zero", zeros_at(&sparse, 4 << 20, 4096));

    // OFD locks live on the union inode: a read lock taken through a read-only descriptor of
    // the lower file still conflicts after another descriptor copied the file up
    let shadow_ro = File::open(r.join("etc/shadow")).expect("open shadow");
    step("read lock on lower", ofd_lock(&shadow_ro, libc::F_RDLCK));
    let shadow_rw = open_rw(&r.join("etc/shadow"));
    step(
        "write lock after copy-up",
        ofd_lock(&shadow_rw, libc::F_WRLCK),
    );
    step("getlk sees the reader", ofd_getlk(&shadow_rw));
    step("unlock", ofd_lock(&shadow_ro, libc::F_UNLCK));
    step("write lock now", ofd_lock(&shadow_rw, libc::F_WRLCK));
    step("read lock now", ofd_lock(&shadow_ro, libc::F_RDLCK));

    // flock: exclusive on one open file description excludes another
    let k1 = File::open(r.join("keep/1")).expect("open keep/1");
    let k2 = File::open(r.join("keep/1")).expect("open keep/1");
    step("flock ex", flock(&k1, libc::LOCK_EX | libc::LOCK_NB));
    step("flock ex again", flock(&k2, libc::LOCK_EX | libc::LOCK_NB));
    step("flock sh again", flock(&k2, libc::LOCK_SH | libc::LOCK_NB));
    step("flock un", flock(&k1, libc::LOCK_UN));
    step(
        "flock ex after un",
        flock(&k2, libc::LOCK_EX | libc::LOCK_NB),
    );

    // fsync / fdatasync on upper and read-only lower descriptors
    step(
        "fsync upper",
        errno_of(unsafe { libc::fsync(more.as_raw_fd()) } as libc::c_long),
    );
    step(
        "fdatasync upper",
        errno_of(unsafe { libc::fdatasync(sparse.as_raw_fd()) } as libc::c_long),
    );
    step(
        "fsync lower ro",
        errno_of(unsafe { libc::fsync(tool.as_raw_fd()) } as libc::c_long),
    );

    // statfs: name length limit; block size and counts present
    let c = std::ffi::CString::new(r.as_os_str().as_encoded_bytes()).expect("path");
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut sfs) };
    step(
        "statfs",
        format!(
            "rc {rc} namelen {} bsize>0 {} blocks>0 {}",
            sfs.f_namelen,
            sfs.f_bsize > 0,
            sfs.f_blocks > 0
        ),
    );
    log
}

#[test]
fn posix_extras_same_results_as_kernel_overlayfs() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let layers = fixture_layers();
    let lowers = extract_all(&layers, &t.join("x"));

    let (ou, ow) = (t.join("o-upper"), t.join("o-work"));
    let ovl = OverlayMount::new(&lowers, Some((&ou, &ow)), &t.join("ovl"));
    let want_log = run_ops(&ovl.dir);
    let want = listing(&ovl.dir);

    let (su, sw) = (t.join("s-upper"), t.join("s-work"));
    let sm = StrataMount::new(tar_lowers(&layers), Some((&su, &sw)), &t.join("mnt"));
    let got_log = run_ops(&sm.dir);
    let got = listing(&sm.dir);
    assert_eq!(got_log, want_log, "operation results differ");
    assert_same("strata vs kernel overlayfs", &got, &want);
}
