//! The operations of the conformance test: what they are, how a seeded generator draws them
//! (caller, paths from a small pool so that names collide, modes, owners, flags), and how
//! one file system applies them, as the caller, returning one result line: the errno of each
//! step and, for every path the operation touched and its parent, a stat summary (type,
//! mode, owner, size and link count of non-directories, whether ctime moved, whether the
//! inode number is the one the object had before).

use super::*;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// Who runs an operation: real, effective and saved ids plus supplementary groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub groups: &'static [u32],
}

pub(super) const ROOT: Caller = Caller {
    uid: 0,
    gid: 0,
    groups: &[],
};
/// Owner of some lower objects; also in group 3000 (the setgid directory's group).
pub(super) const ALICE: Caller = Caller {
    uid: 1000,
    gid: 1000,
    groups: &[1000, 3000],
};
/// Nobody special.
pub(super) const BOB: Caller = Caller {
    uid: 2000,
    gid: 2000,
    groups: &[2000],
};
pub(super) const CALLERS: [Caller; 3] = [ROOT, ALICE, BOB];

/// `utimensat` time arguments.
#[derive(Clone, Copy, Debug)]
pub(super) enum Times {
    /// `times == NULL`.
    Null,
    /// Both `UTIME_NOW`.
    Now,
    /// Explicit seconds for both.
    Set(i64),
    /// atime `UTIME_OMIT`, mtime explicit.
    OmitSet(i64),
}

#[derive(Clone, Debug)]
pub(super) enum Op {
    /// `open(path, flags | O_NONBLOCK, mode)`, then (on success) `ftruncate(len)` and
    /// `posix_fallocate(0, len)` on the descriptor.
    Open {
        path: String,
        flags: i32,
        mode: u32,
        len: i64,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Mknod {
        path: String,
        mode: u32,
        dev: (u32, u32),
    },
    Symlink {
        path: String,
    },
    Link {
        from: String,
        to: String,
    },
    Unlink {
        path: String,
    },
    Rmdir {
        path: String,
    },
    Rename {
        from: String,
        to: String,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Chown {
        path: String,
        uid: u32,
        gid: u32,
    },
    Utimens {
        path: String,
        times: Times,
    },
    Truncate {
        path: String,
        len: i64,
    },
    /// `open(path, O_WRONLY | O_NONBLOCK)` then `write` of `len` bytes at offset 0.
    Write {
        path: String,
        len: usize,
    },
    /// `open(path, O_WRONLY | O_TMPFILE, mode)`: a nameless file in directory `path`.
    TmpFile {
        path: String,
        mode: u32,
    },
    /// `readdir(path)`: the names and `d_type`s.
    List {
        path: String,
    },
}

impl Op {
    /// The paths whose state the result reports (each with its parent).
    fn paths(&self) -> Vec<&str> {
        match self {
            Op::Link { from, to } | Op::Rename { from, to } => vec![from, to],
            Op::Open { path, .. }
            | Op::Mkdir { path, .. }
            | Op::Mknod { path, .. }
            | Op::Symlink { path }
            | Op::Unlink { path }
            | Op::Rmdir { path }
            | Op::Chmod { path, .. }
            | Op::Chown { path, .. }
            | Op::Utimens { path, .. }
            | Op::Truncate { path, .. }
            | Op::Write { path, .. }
            | Op::TmpFile { path, .. }
            | Op::List { path } => vec![path],
        }
    }
}

/// Directories the paths are drawn from (some exist in the lower, some are made by ops).
const DIRS: &[&str] = &["w", "w", "w/sg", "w/st", "w/ld", "w/a", "w/b"];
/// Names: some collide with lower entries.
const NAMES: &[&str] = &["a", "b", "c", "lf", "ld", "mine"];

fn path(rng: &mut SplitMix64) -> String {
    format!("{}/{}", rng.pick(DIRS), rng.pick(NAMES))
}

fn mode(rng: &mut SplitMix64) -> u32 {
    let special = [0, 0, 0, 0o4000, 0o2000, 0o1000, 0o6000];
    *rng.pick(&[0o644, 0o600, 0o755, 0o777, 0o666, 0o640, 0o000, 0o444]) | *rng.pick(&special)
}

/// One random operation and the caller that runs it.
pub(super) fn gen(rng: &mut SplitMix64) -> (Caller, Op) {
    let caller = *rng.pick(&CALLERS);
    let op = match rng.below(26) {
        0..=3 => {
            let acc = *rng.pick(&[libc::O_RDONLY, libc::O_WRONLY, libc::O_RDWR]);
            let mut flags = acc;
            for (f, pct) in [
                (libc::O_CREAT, 70),
                (libc::O_EXCL, 30),
                (libc::O_TRUNC, 30),
                (libc::O_APPEND, 10),
                (libc::O_DIRECTORY, 5),
                (libc::O_NOFOLLOW, 10),
            ] {
                if rng.chance(pct) {
                    flags |= f;
                }
            }
            Op::Open {
                path: path(rng),
                flags,
                mode: mode(rng),
                len: *rng.pick(&[0, 1, 100, 5000]),
            }
        }
        4..=5 => Op::Mkdir {
            path: path(rng),
            mode: mode(rng) | *rng.pick(&[0, 0o2000]),
        },
        6 => {
            let (ty, dev) = *rng.pick(&[
                (libc::S_IFIFO, (0, 0)),
                (libc::S_IFIFO, (0, 0)),
                (libc::S_IFBLK, (7, 3)),
                (libc::S_IFCHR, (1, 3)),
                (libc::S_IFCHR, (0, 0)),
                (libc::S_IFSOCK, (0, 0)),
            ]);
            Op::Mknod {
                path: path(rng),
                mode: ty | (mode(rng) & 0o7777),
                dev,
            }
        }
        7 => Op::Symlink { path: path(rng) },
        8..=9 => Op::Link {
            from: path(rng),
            to: path(rng),
        },
        10..=11 => Op::Unlink { path: path(rng) },
        12 => Op::Rmdir { path: path(rng) },
        13..=15 => Op::Rename {
            from: path(rng),
            to: if rng.chance(30) {
                rng.pick(DIRS).to_string()
            } else {
                path(rng)
            },
        },
        16..=17 => Op::Chmod {
            path: if rng.chance(20) {
                rng.pick(DIRS).to_string()
            } else {
                path(rng)
            },
            mode: mode(rng),
        },
        18..=19 => {
            let ids = [u32::MAX, 0, 1000, 2000, 3000];
            Op::Chown {
                path: path(rng),
                uid: *rng.pick(&ids),
                gid: *rng.pick(&ids),
            }
        }
        20..=22 => Op::Utimens {
            path: path(rng),
            times: match rng.below(4) {
                0 => Times::Null,
                1 => Times::Now,
                2 => Times::Set(1_000_000_000 + rng.below(1000) as i64),
                _ => Times::OmitSet(1_100_000_000),
            },
        },
        23 => Op::Truncate {
            path: path(rng),
            len: *rng.pick(&[0, 7, 4096]),
        },
        _ => Op::Write {
            path: path(rng),
            len: *rng.pick(&[1, 4096]),
        },
    };
    (caller, op)
}

/// What `lstat` shows of one path: (device, inode) for the rename check, ctime, and the
/// comparable fields as text.
#[derive(Clone, Debug)]
pub(super) struct Seen {
    pub ino: u64,
    pub ctime: (i64, i64),
    pub text: String,
}

pub(super) fn look(root: &Path, rel: &str) -> Option<Seen> {
    let m = std::fs::symlink_metadata(root.join(rel)).ok()?;
    let ft = m.file_type();
    let ty = if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_char_device() {
        "chr"
    } else if ft.is_block_device() {
        "blk"
    } else {
        "sock"
    };
    // Directory sizes and link counts are the file system's own (a union's merged
    // directory reports nlink 1, as kernel overlayfs does): not compared.
    let extra = if ft.is_dir() {
        String::new()
    } else if ft.is_char_device() || ft.is_block_device() {
        let r = m.rdev();
        format!(
            " rdev={}:{} nlink={}",
            libc::major(r),
            libc::minor(r),
            m.nlink()
        )
    } else {
        format!(" size={} nlink={}", m.size(), m.nlink())
    };
    Some(Seen {
        ino: m.ino(),
        ctime: (m.ctime(), m.ctime_nsec()),
        text: format!(
            "{ty} {:o} {}:{}{extra}",
            m.mode() & 0o7777,
            m.uid(),
            m.gid()
        ),
    })
}

fn parent(p: &str) -> &str {
    p.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
}

/// The paths an op reports: its own and their parents, deduplicated, in a fixed order.
pub(super) fn watched(op: &Op) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for p in op.paths() {
        for q in [p, parent(p)] {
            if !v.iter().any(|x| x == q) {
                v.push(q.to_string());
            }
        }
    }
    v
}

fn c(root: &Path, rel: &str) -> CString {
    CString::new(root.join(rel).as_os_str().as_bytes()).unwrap()
}

fn err(r: libc::c_int) -> String {
    if r < 0 {
        let e = std::io::Error::last_os_error();
        format!("E{}", e.raw_os_error().unwrap_or(-1))
    } else {
        "ok".into()
    }
}

/// Apply `op` under `root` as the calling thread's credentials; the errno of each step.
fn run(root: &Path, op: &Op) -> String {
    // SAFETY (every call below): NUL-terminated paths that outlive the call, valid
    // pointers to local buffers, descriptors this function owns.
    unsafe {
        match op {
            Op::Open {
                path,
                flags,
                mode,
                len,
            } => {
                // O_NONBLOCK: a fifo without a peer fails with ENXIO instead of waiting
                let fd = libc::open(
                    c(root, path).as_ptr(),
                    flags | libc::O_CLOEXEC | libc::O_NONBLOCK,
                    *mode,
                );
                if fd < 0 {
                    return err(fd);
                }
                let t = err(libc::ftruncate(fd, *len));
                let a = match libc::posix_fallocate(fd, 0, len.max(&1).to_owned()) {
                    0 => "ok".to_string(),
                    e => format!("E{e}"),
                };
                libc::close(fd);
                format!("ok ftruncate {t} fallocate {a}")
            }
            Op::Mkdir { path, mode } => err(libc::mkdir(c(root, path).as_ptr(), *mode)),
            Op::Mknod { path, mode, dev } => err(libc::mknod(
                c(root, path).as_ptr(),
                *mode,
                libc::makedev(dev.0, dev.1),
            )),
            Op::Symlink { path } => err(libc::symlink(c"target".as_ptr(), c(root, path).as_ptr())),
            Op::Link { from, to } => err(libc::link(c(root, from).as_ptr(), c(root, to).as_ptr())),
            Op::Unlink { path } => err(libc::unlink(c(root, path).as_ptr())),
            Op::Rmdir { path } => err(libc::rmdir(c(root, path).as_ptr())),
            Op::Rename { from, to } => {
                err(libc::rename(c(root, from).as_ptr(), c(root, to).as_ptr()))
            }
            Op::Chmod { path, mode } => err(libc::chmod(c(root, path).as_ptr(), *mode)),
            Op::Chown { path, uid, gid } => err(libc::lchown(c(root, path).as_ptr(), *uid, *gid)),
            Op::Utimens { path, times } => {
                let ts = |sec, nsec| libc::timespec {
                    tv_sec: sec,
                    tv_nsec: nsec,
                };
                let t = match times {
                    Times::Null => None,
                    Times::Now => Some([ts(0, libc::UTIME_NOW), ts(0, libc::UTIME_NOW)]),
                    Times::Set(s) => Some([ts(*s, 0), ts(*s, 0)]),
                    Times::OmitSet(s) => Some([ts(0, libc::UTIME_OMIT), ts(*s, 0)]),
                };
                let p = t.as_ref().map_or(std::ptr::null(), |t| t.as_ptr());
                err(libc::utimensat(
                    libc::AT_FDCWD,
                    c(root, path).as_ptr(),
                    p,
                    libc::AT_SYMLINK_NOFOLLOW,
                ))
            }
            Op::Truncate { path, len } => err(libc::truncate(c(root, path).as_ptr(), *len)),
            Op::Write { path, len } => {
                let fd = libc::open(
                    c(root, path).as_ptr(),
                    libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NONBLOCK,
                );
                if fd < 0 {
                    return err(fd);
                }
                let buf = vec![b'w'; *len];
                let n = libc::write(fd, buf.as_ptr().cast(), buf.len());
                let r = if n < 0 { err(-1) } else { format!("ok {n}") };
                libc::close(fd);
                r
            }
            Op::TmpFile { path, mode } => {
                let fd = libc::open(
                    c(root, path).as_ptr(),
                    libc::O_WRONLY | libc::O_TMPFILE | libc::O_CLOEXEC,
                    *mode,
                );
                if fd >= 0 {
                    libc::close(fd);
                }
                err(fd)
            }
            Op::List { path } => match std::fs::read_dir(root.join(path)) {
                Ok(rd) => {
                    let mut v: Vec<String> = rd
                        .flatten()
                        .map(|e| {
                            let t = e.file_type().map_or("?", |t| {
                                if t.is_dir() {
                                    "d"
                                } else if t.is_file() {
                                    "f"
                                } else if t.is_symlink() {
                                    "l"
                                } else if t.is_char_device() {
                                    "c"
                                } else if t.is_block_device() {
                                    "b"
                                } else if t.is_fifo() {
                                    "p"
                                } else {
                                    "s"
                                }
                            });
                            format!("{}:{t}", e.file_name().to_string_lossy())
                        })
                        .collect();
                    v.sort();
                    format!("ok [{}]", v.join(" "))
                }
                Err(e) => format!("E{}", e.raw_os_error().unwrap_or(-1)),
            },
        }
    }
}

/// Run `f` on a fresh thread holding `caller`'s credentials (the raw syscalls change only the
/// calling thread; a non-root thread also loses every capability, as a real user has none).
pub(super) fn as_caller<T: Send>(caller: Caller, f: impl FnOnce() -> T + Send) -> T {
    if caller == ROOT {
        return f();
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: raw per-thread credential syscalls with valid arguments.
            unsafe {
                let g = caller.groups;
                assert_eq!(
                    libc::syscall(libc::SYS_setgroups, g.len(), g.as_ptr()),
                    0,
                    "setgroups"
                );
                assert_eq!(
                    libc::syscall(libc::SYS_setresgid, caller.gid, caller.gid, caller.gid),
                    0
                );
                assert_eq!(
                    libc::syscall(libc::SYS_setresuid, caller.uid, caller.uid, caller.uid),
                    0
                );
            }
            f()
        })
        .join()
        .expect("caller thread")
    })
}

/// Apply `op` as `caller` under `root`; the result line (see the module docs).
pub(super) fn apply(root: &Path, caller: Caller, op: &Op) -> String {
    let paths = watched(op);
    let before: Vec<Option<Seen>> = paths.iter().map(|p| look(root, p)).collect();
    // A tick, so that a ctime set by this op differs from one set just before it.
    std::thread::sleep(std::time::Duration::from_millis(5));
    let res = as_caller(caller, || run(root, op));
    let mut out = res;
    // The object renamed or linked: its inode number must follow it.
    let moved = match op {
        Op::Rename { from, to } | Op::Link { from, to } => Some((from, to)),
        _ => None,
    };
    for (p, b) in paths.iter().zip(&before) {
        let a = look(root, p);
        let text = match (&a, b) {
            (None, _) => "-".to_string(),
            (Some(a), Some(b)) if b.ino == a.ino => format!(
                "{} ctime {}",
                a.text,
                if a.ctime == b.ctime { "same" } else { "new" }
            ),
            (Some(a), _) => format!("{} (new object)", a.text),
        };
        out.push_str(&format!(" | {p}: {text}"));
    }
    if let (Some((from, to)), true) = (moved, out.starts_with("ok")) {
        let was = paths
            .iter()
            .position(|p| p == from)
            .and_then(|i| before[i].as_ref());
        let now = look(root, to);
        if let (Some(was), Some(now)) = (was, now) {
            out.push_str(&format!(" | ino kept: {}", was.ino == now.ino));
        }
    }
    out
}
