//! The operations of the random differential test: what they are, how they are drawn from
//! a seeded generator over the paths the oracle shows, and how one mount under test applies
//! them (returning a result line: errno plus a stat summary of what was touched).

use super::*;

#[derive(Clone, Debug)]
pub(super) enum Op {
    Create {
        path: String,
        trunc: bool,
        append: bool,
        excl: bool,
        len: usize,
    },
    WriteAt {
        path: String,
        off: u64,
        len: usize,
    },
    Truncate {
        path: String,
        len: u64,
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
    FdTruncate {
        slot: usize,
        len: u64,
    },
    Utimens {
        path: String,
        sec: i64,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Rmdir {
        path: String,
    },
    Unlink {
        path: String,
    },
    Rename {
        from: String,
        to: String,
        flags: u32,
    },
    Link {
        from: String,
        to: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    Mkfifo {
        path: String,
    },
    SetXattr {
        path: String,
        name: String,
        len: usize,
        flags: i32,
    },
    RemoveXattr {
        path: String,
        name: String,
    },
    ReadDir {
        path: String,
    },
    Read {
        path: String,
    },
    Stat {
        path: String,
    },
    Hold {
        slot: usize,
        path: String,
        write: bool,
    },
    FdWrite {
        slot: usize,
        off: u64,
        len: usize,
    },
    FdRead {
        slot: usize,
    },
    Close {
        slot: usize,
    },
}

pub(super) const SLOTS: usize = 3;
pub(super) const NAMES: &[&str] = &["n0", "n1", "n2", "d0", "d1", "t"];

/// What the generator knows of the tree (refreshed from the oracle now and then).
pub(super) struct Pool {
    pub(super) paths: Vec<String>,
    pub(super) dirs: Vec<String>,
}

impl Pool {
    pub(super) fn scan(root: &Path) -> Pool {
        let mut p = Pool {
            paths: Vec::new(),
            dirs: vec![String::new()],
        };
        let mut stack = vec![String::new()];
        while let Some(rel) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(root.join(&rel)) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let r = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    p.dirs.push(r.clone());
                    stack.push(r.clone());
                }
                p.paths.push(r);
            }
        }
        p.paths.sort();
        p.dirs.sort();
        p
    }

    fn existing(&self, rng: &mut SplitMix64) -> String {
        if self.paths.is_empty() {
            return rng.pick(NAMES).to_string();
        }
        rng.pick(&self.paths).clone()
    }

    /// Mostly an existing path, else a fresh name in an existing (rarely a missing) dir.
    fn any(&self, rng: &mut SplitMix64, existing_pct: u64) -> String {
        if rng.chance(existing_pct) {
            return self.existing(rng);
        }
        let dir = if rng.chance(5) {
            format!("{}/nodir", rng.pick(&self.dirs))
        } else {
            rng.pick(&self.dirs).clone()
        };
        let name = rng.pick(NAMES);
        if dir.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", dir.trim_start_matches('/'))
        }
    }
}

pub(super) fn gen(rng: &mut SplitMix64, pool: &Pool) -> Op {
    let table: &[(u64, u8)] = &[
        (14, 0),
        (8, 1),
        (5, 2),
        (5, 3),
        (4, 4),
        (8, 5),
        (5, 6),
        (8, 7),
        (12, 8),
        (5, 9),
        (4, 10),
        (2, 11),
        (5, 12),
        (3, 13),
        (4, 14),
        (5, 15),
        (3, 16),
        (4, 17),
        (3, 18),
        (3, 19),
        (3, 20),
        (3, 21),
        (2, 22),
    ];
    let total: u64 = table.iter().map(|t| t.0).sum();
    let mut x = rng.below(total);
    let mut which = 0;
    for (w, k) in table {
        if x < *w {
            which = *k;
            break;
        }
        x -= w;
    }
    let modes = [0o644, 0o600, 0o755, 0o4755, 0o1777, 0o000, 0o640, 0o2755];
    match which {
        0 => Op::Create {
            path: pool.any(rng, 40),
            trunc: rng.chance(30),
            append: rng.chance(30),
            excl: rng.chance(20),
            len: rng.below(5000) as usize,
        },
        1 => Op::WriteAt {
            path: pool.existing(rng),
            off: if rng.chance(20) {
                rng.below(3 << 20)
            } else {
                rng.below(9000)
            },
            len: rng.below(9000) as usize,
        },
        2 => Op::Truncate {
            path: pool.existing(rng),
            len: rng.below(10_000),
        },
        3 => Op::Chmod {
            path: pool.existing(rng),
            mode: *rng.pick(&modes),
        },
        4 => Op::Utimens {
            path: pool.existing(rng),
            sec: 1_600_000_000 + rng.below(100_000_000) as i64,
        },
        5 => Op::Mkdir {
            path: pool.any(rng, 15),
            mode: *rng.pick(&[0o755, 0o700, 0o1777, 0o2775]),
        },
        6 => Op::Rmdir {
            path: if rng.chance(70) {
                rng.pick(&pool.dirs[1.min(pool.dirs.len() - 1)..]).clone()
            } else {
                pool.existing(rng)
            },
        },
        7 => Op::Unlink {
            path: pool.any(rng, 85),
        },
        8 => Op::Rename {
            from: if rng.chance(35) && pool.dirs.len() > 1 {
                rng.pick(&pool.dirs[1..]).clone()
            } else {
                pool.existing(rng)
            },
            to: pool.any(rng, 35),
            flags: *rng.pick(&[0, 0, 0, libc::RENAME_NOREPLACE, libc::RENAME_EXCHANGE]),
        },
        9 => Op::Link {
            from: pool.existing(rng),
            to: pool.any(rng, 20),
        },
        10 => Op::Symlink {
            target: rng
                .pick(&["n0", "n1", "d0/n2", "/strata-dangling/x", "tool", "sub/2"])
                .to_string(),
            path: pool.any(rng, 15),
        },
        11 => Op::Mkfifo {
            path: pool.any(rng, 15),
        },
        12 => Op::SetXattr {
            path: pool.existing(rng),
            name: format!("user.t{}", rng.below(3)),
            len: rng.below(40) as usize,
            flags: *rng.pick(&[0, 0, libc::XATTR_CREATE, libc::XATTR_REPLACE]),
        },
        13 => Op::RemoveXattr {
            path: pool.existing(rng),
            name: rng
                .pick(&["user.t0", "user.t1", "user.note", "user.d"])
                .to_string(),
        },
        14 => Op::ReadDir {
            path: rng.pick(&pool.dirs).clone(),
        },
        15 => Op::Read {
            path: pool.existing(rng),
        },
        16 => Op::Stat {
            path: pool.any(rng, 80),
        },
        17 => Op::Hold {
            slot: rng.below(SLOTS as u64) as usize,
            path: pool.existing(rng),
            write: rng.chance(40),
        },
        18 => Op::FdWrite {
            slot: rng.below(SLOTS as u64) as usize,
            off: rng.below(6000),
            len: rng.below(3000) as usize,
        },
        19 => Op::FdRead {
            slot: rng.below(SLOTS as u64) as usize,
        },
        20 => Op::Close {
            slot: rng.below(SLOTS as u64) as usize,
        },
        21 => Op::Chown {
            path: pool.existing(rng),
            uid: *rng.pick(&[0, 1000, 65534]),
            gid: *rng.pick(&[0, 100, 1000]),
        },
        _ => Op::FdTruncate {
            slot: rng.below(SLOTS as u64) as usize,
            len: rng.below(8000),
        },
    }
}

pub(super) fn cs(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

pub(super) fn ename(e: &std::io::Error) -> String {
    let n = e.raw_os_error().unwrap_or(-1);
    let s = match n {
        libc::ENOENT => "ENOENT",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::EINVAL => "EINVAL",
        libc::EPERM => "EPERM",
        libc::EXDEV => "EXDEV",
        libc::EBADF => "EBADF",
        libc::ENODATA => "ENODATA",
        libc::ELOOP => "ELOOP",
        libc::ENXIO => "ENXIO",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EMLINK => "EMLINK",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ERANGE => "ERANGE",
        libc::EIO => "EIO",
        libc::ESTALE => "ESTALE",
        libc::ENOTCONN => "ENOTCONN",
        libc::EFBIG => "EFBIG",
        _ => return format!("errno{n}"),
    };
    s.to_string()
}

pub(super) fn chk(r: libc::c_int) -> std::io::Result<()> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub(super) fn res<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => ename(&e),
    }
}

pub(super) fn open_raw(p: &Path, flags: i32, mode: u32) -> std::io::Result<File> {
    let c = cs(p);
    // SAFETY: NUL-terminated path; the returned fd is owned by the File.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

pub(super) fn short_sha(b: &[u8]) -> String {
    hex::encode(&Sha256::digest(b)[..6])
}

/// lstat summary: type, mode, owner; size and nlink for non-directories (see the module docs).
pub(super) fn summary(p: &Path) -> String {
    match std::fs::symlink_metadata(p) {
        Err(e) => ename(&e),
        Ok(m) => meta_summary(&m),
    }
}

pub(super) fn meta_summary(m: &std::fs::Metadata) -> String {
    let ft = m.file_type();
    let k = if ft.is_dir() {
        'd'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_file() {
        'f'
    } else if ft.is_fifo() {
        'p'
    } else {
        '?'
    };
    if k == 'd' {
        format!("d{:o} {}:{}", m.mode() & 0o7777, m.uid(), m.gid())
    } else {
        format!(
            "{k}{:o} {}:{} size={} nlink={}",
            m.mode() & 0o7777,
            m.uid(),
            m.gid(),
            m.size(),
            m.nlink()
        )
    }
}

/// One mount under test and its held descriptors.
pub(super) struct Side {
    pub(super) root: PathBuf,
    pub(super) fds: Vec<Option<File>>,
}

impl Side {
    pub(super) fn new(root: &Path) -> Side {
        Side {
            root: root.to_path_buf(),
            fds: (0..SLOTS).map(|_| None).collect(),
        }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub(super) fn apply(&mut self, op: &Op, data_seed: u64) -> String {
        let data = |len: usize| SplitMix64::new(data_seed).bytes(len);
        let nb = libc::O_NOFOLLOW | libc::O_NONBLOCK;
        match op {
            Op::Create {
                path,
                trunc,
                append,
                excl,
                len,
            } => {
                let mut fl = libc::O_CREAT | libc::O_WRONLY | nb;
                if *trunc {
                    fl |= libc::O_TRUNC;
                }
                if *append {
                    fl |= libc::O_APPEND;
                }
                if *excl {
                    fl |= libc::O_EXCL;
                }
                let p = self.p(path);
                let r = open_raw(&p, fl, 0o644).and_then(|f| {
                    let d = data(*len);
                    let mut w = 0;
                    while w < d.len() {
                        // SAFETY: d is valid for the given length; fd owned by f.
                        let n = unsafe {
                            libc::write(
                                std::os::fd::AsRawFd::as_raw_fd(&f),
                                d[w..].as_ptr().cast(),
                                d.len() - w,
                            )
                        };
                        if n < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        w += n as usize;
                    }
                    Ok(())
                });
                format!("{} {}", res(r), summary(&p))
            }
            Op::WriteAt { path, off, len } => {
                let p = self.p(path);
                let r = open_raw(&p, libc::O_WRONLY | nb, 0)
                    .and_then(|f| f.write_all_at(&data(*len), *off));
                format!("{} {}", res(r), summary(&p))
            }
            Op::Truncate { path, len } => {
                let p = self.p(path);
                // SAFETY: NUL-terminated path.
                let r = chk(unsafe { libc::truncate(cs(&p).as_ptr(), *len as i64) });
                format!("{} {}", res(r), summary(&p))
            }
            Op::Chmod { path, mode } => {
                let p = self.p(path);
                // SAFETY: NUL-terminated path.
                let r = chk(unsafe { libc::chmod(cs(&p).as_ptr(), *mode) });
                format!("{} {}", res(r), summary(&p))
            }
            Op::Chown { path, uid, gid } => {
                let p = self.p(path);
                // SAFETY: NUL-terminated path.
                let r = chk(unsafe { libc::lchown(cs(&p).as_ptr(), *uid, *gid) });
                format!("{} {}", res(r), summary(&p))
            }
            Op::FdTruncate { slot, len } => match &self.fds[*slot] {
                None => "no fd".into(),
                Some(f) => format!("{} {}", res(f.set_len(*len)), fstat(f)),
            },
            Op::Utimens { path, sec } => {
                let p = self.p(path);
                let ts = [
                    libc::timespec {
                        tv_sec: *sec,
                        tv_nsec: 5000,
                    },
                    libc::timespec {
                        tv_sec: *sec + 7,
                        tv_nsec: 0,
                    },
                ];
                // SAFETY: NUL-terminated path, two timespecs.
                let r = chk(unsafe {
                    libc::utimensat(
                        libc::AT_FDCWD,
                        cs(&p).as_ptr(),
                        ts.as_ptr(),
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                });
                let times = std::fs::symlink_metadata(&p)
                    .map(|m| format!("atime={} mtime={}", m.atime(), m.mtime()))
                    .unwrap_or_default();
                format!("{} {} {times}", res(r), summary(&p))
            }
            Op::Mkdir { path, mode } => {
                let p = self.p(path);
                // SAFETY: NUL-terminated path.
                let r = chk(unsafe { libc::mkdir(cs(&p).as_ptr(), *mode) });
                format!("{} {}", res(r), summary(&p))
            }
            Op::Rmdir { path } => {
                let p = self.p(path);
                // SAFETY: NUL-terminated path.
                let r = chk(unsafe { libc::rmdir(cs(&p).as_ptr()) });
                format!("{} {}", res(r), summary(&p))
            }
            Op::Unlink { path } => {
                let p = self.p(path);
                // SAFETY: NUL-terminated path.
                let r = chk(unsafe { libc::unlink(cs(&p).as_ptr()) });
                format!("{} {}", res(r), summary(&p))
            }
            Op::Rename { from, to, flags } => {
                let (a, b) = (self.p(from), self.p(to));
                // SAFETY: NUL-terminated paths.
                let r = chk(unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        cs(&a).as_ptr(),
                        libc::AT_FDCWD,
                        cs(&b).as_ptr(),
                        *flags,
                    )
                });
                format!("{} from:{} to:{}", res(r), summary(&a), summary(&b))
            }
            Op::Link { from, to } => {
                let (a, b) = (self.p(from), self.p(to));
                // SAFETY: NUL-terminated paths.
                let r = chk(unsafe { libc::link(cs(&a).as_ptr(), cs(&b).as_ptr()) });
                format!("{} from:{} to:{}", res(r), summary(&a), summary(&b))
            }
            Op::Symlink { target, path } => {
                let p = self.p(path);
                let t = CString::new(target.as_str()).unwrap();
                // SAFETY: NUL-terminated strings.
                let r = chk(unsafe { libc::symlink(t.as_ptr(), cs(&p).as_ptr()) });
                format!("{} {}", res(r), summary(&p))
            }
            Op::Mkfifo { path } => {
                let p = self.p(path);
                // SAFETY: NUL-terminated path.
                let r = chk(unsafe { libc::mknod(cs(&p).as_ptr(), libc::S_IFIFO | 0o644, 0) });
                format!("{} {}", res(r), summary(&p))
            }
            Op::SetXattr {
                path,
                name,
                len,
                flags,
            } => {
                let p = self.p(path);
                let v = data(*len);
                let n = CString::new(name.as_str()).unwrap();
                // SAFETY: NUL-terminated strings, v valid for its length.
                let r = chk(unsafe {
                    libc::lsetxattr(
                        cs(&p).as_ptr(),
                        n.as_ptr(),
                        v.as_ptr().cast(),
                        v.len(),
                        *flags,
                    )
                });
                format!("{} {}", res(r), xattr_summary(&p))
            }
            Op::RemoveXattr { path, name } => {
                let p = self.p(path);
                let n = CString::new(name.as_str()).unwrap();
                // SAFETY: NUL-terminated strings.
                let r = chk(unsafe { libc::lremovexattr(cs(&p).as_ptr(), n.as_ptr()) });
                format!("{} {}", res(r), xattr_summary(&p))
            }
            Op::ReadDir { path } => match std::fs::read_dir(self.p(path)) {
                Err(e) => ename(&e),
                Ok(rd) => {
                    let mut v: Vec<String> = rd
                        .map(|e| {
                            let e = e.unwrap();
                            let t = e.file_type().unwrap();
                            let k = if t.is_dir() {
                                'd'
                            } else if t.is_symlink() {
                                'l'
                            } else if t.is_fifo() {
                                'p'
                            } else if t.is_file() {
                                'f'
                            } else {
                                '?'
                            };
                            format!("{}:{k}", e.file_name().to_string_lossy())
                        })
                        .collect();
                    v.sort();
                    format!("ok [{}]", v.join(" "))
                }
            },
            Op::Read { path } => {
                let p = self.p(path);
                let r = open_raw(&p, libc::O_RDONLY | nb, 0).and_then(|mut f| {
                    let mut b = Vec::new();
                    f.read_to_end(&mut b).map(|_| b)
                });
                match r {
                    Ok(b) => format!("ok len={} sha={}", b.len(), short_sha(&b)),
                    Err(e) => ename(&e),
                }
            }
            Op::Stat { path } => summary(&self.p(path)),
            Op::Hold { slot, path, write } => {
                let fl = if *write { libc::O_RDWR } else { libc::O_RDONLY };
                match open_raw(&self.p(path), fl | nb, 0) {
                    Ok(f) => {
                        self.fds[*slot] = Some(f);
                        "ok".into()
                    }
                    Err(e) => ename(&e),
                }
            }
            Op::FdWrite { slot, off, len } => match &self.fds[*slot] {
                None => "no fd".into(),
                Some(f) => format!(
                    "{} {}",
                    res(f.write_all_at(&data(*len), *off)),
                    res(f.metadata().map(|m| meta_summary(&m))).replace("ok", &fstat(f))
                ),
            },
            Op::FdRead { slot } => match &self.fds[*slot] {
                None => "no fd".into(),
                Some(f) => {
                    let mut b = vec![0u8; 1 << 16];
                    let r = f.read_at(&mut b, 0);
                    match r {
                        Ok(n) => format!("ok len={} sha={} {}", n, short_sha(&b[..n]), fstat(f)),
                        Err(e) => format!("{} {}", ename(&e), fstat(f)),
                    }
                }
            },
            Op::Close { slot } => {
                let had = self.fds[*slot].take().is_some();
                format!("closed={had}")
            }
        }
    }
}

pub(super) fn fstat(f: &File) -> String {
    match f.metadata() {
        Ok(m) => meta_summary(&m),
        Err(e) => ename(&e),
    }
}

pub(super) fn xattr_summary(p: &Path) -> String {
    let v: Vec<String> = union_common::xattrs(p)
        .into_iter()
        .map(|(k, v)| format!("{k}={}", short_sha(&v)))
        .collect();
    format!("[{}]", v.join(","))
}
