//! Open files of [`UnionFs`]: the handle table, `open`, `read` (ready bytes or a future that
//! waits for a lower source), `write`, passthrough backing files, `release`. A read-only
//! handle on a lower file follows a later copy-up to the upper file. It may call the lower
//! sources (`lower.rs`), the upper directory and the node table through `UnionFs`; it must
//! not fetch lower data while the node table is locked.

use super::fs::{Opened, ReadResult, UnionFs};
use super::lower::{LowerFile, LowerRead};
use super::nodes::Node;
use super::{Caller, DirEntry, Error, FileKind, Result};
use bytes::Bytes;
use futures::FutureExt;
use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// What an open file handle (`fh`) stands for.
pub(crate) enum Handle {
    Upper {
        ino: u64,
        file: Arc<File>,
    },
    Lower {
        ino: u64,
        file: LowerFile,
    },
    Dir {
        ino: u64,
        /// The listing, taken at the first read from offset 0 (`None` before it).
        entries: Mutex<Option<Vec<DirEntry>>>,
        /// The upper directory, held open so `fstat` still answers after an `rmdir`.
        upper: Option<Arc<File>>,
    },
}

impl Handle {
    pub fn ino(&self) -> u64 {
        match self {
            Handle::Upper { ino, .. } | Handle::Lower { ino, .. } | Handle::Dir { ino, .. } => *ino,
        }
    }
}

impl UnionFs {
    pub(crate) fn new_fh(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.put_fh(fh, h)
    }

    /// Keep `h` under the number `fh` (a fresh one, or one the kernel already holds).
    pub(crate) fn put_fh(&self, fh: u64, h: Handle) -> u64 {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Arc::new(h));
        fh
    }

    pub(crate) fn handle(&self, fh: u64) -> Result<Arc<Handle>> {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
            .ok_or(Error::BadHandle(fh))
    }

    /// An upper file (or directory) handle open on `ino`, for objects that lost all their
    /// names.
    pub(crate) fn open_upper_file(&self, ino: u64) -> Option<Arc<File>> {
        let hs = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        hs.values().find_map(|h| match &**h {
            Handle::Upper { ino: i, file } if *i == ino => Some(file.clone()),
            Handle::Dir {
                ino: i,
                upper: Some(file),
                ..
            } if *i == ino => Some(file.clone()),
            _ => None,
        })
    }

    /// Is a handle open on `ino`?
    pub(crate) fn has_open_handle(&self, ino: u64) -> bool {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|h| h.ino() == ino)
    }

    /// Inodes with an open handle.
    pub(crate) fn open_inodes(&self) -> HashSet<u64> {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|h| h.ino())
            .collect()
    }

    /// Open file `ino` with open(2) `flags`. Write access copies a lower file up first (this
    /// may wait for lower data; call it off the FUSE dispatch thread when it can).
    pub fn open(&self, ino: u64, flags: i32) -> Result<Opened> {
        self.open_as(ino, flags, None)
    }

    /// [`open`](Self::open), keeping the handle under `fh` when given.
    pub(crate) fn open_as(&self, ino: u64, flags: i32, fh: Option<u64>) -> Result<Opened> {
        let keep = |h: Handle| match fh {
            Some(fh) => self.put_fh(fh, h),
            None => self.new_fh(h),
        };
        let acc = flags & libc::O_ACCMODE;
        let write = acc != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let (kind, is_upper) = {
            let st = self.lock();
            let n = st.node(ino)?;
            (n.kind, n.upper)
        };
        if kind == FileKind::Dir {
            return Err(Error::IsDir(format!("inode {ino}")));
        }
        if write && !is_upper {
            self.upper()?;
            self.copy_up(ino, None)?;
        }
        let st = self.lock();
        let n = st.node(ino)?;
        if n.upper {
            let p = self.upper()?.path(&st.rel_path(ino)?)?;
            drop(st);
            let file = open_flags(&p, flags)?;
            let fh = keep(Handle::Upper {
                ino,
                file: Arc::new(file),
            });
            return Ok(Opened { fh, lower: false });
        }
        let t = n
            .lower
            .and_then(|l| self.tree.node(l))
            .ok_or(Error::StaleInode(ino))?;
        let file = t.content().ok_or(Error::Invalid("not a regular file"))?;
        drop(st);
        let fh = keep(Handle::Lower { ino, file });
        Ok(Opened { fh, lower: true })
    }

    /// A file with the full content behind `fh`, for FUSE passthrough (`lower`: lower files
    /// too). The kernel takes only the file's path and the caller's credentials from it: every
    /// passthrough open gets its own backing file, opened with that open's flags, so an upper
    /// handle serves as it is, whatever its access mode. A lower file is served only on a
    /// read-only union, from its source's local copy, opened read-only: on a writable union
    /// the kernel would pin the lower file as the inode's backing file until every reader
    /// closed, and a writer after copy-up could then neither reach the upper nor be allowed
    /// to use the lower.
    pub fn backing_file(&self, fh: u64, lower: bool) -> Option<Arc<File>> {
        match &*self.handle(fh).ok()? {
            Handle::Upper { file, .. } => Some(file.clone()),
            Handle::Lower { file, .. } if lower && self.upper.is_none() => {
                let p = self.source(file).ok()?.local_path(file)?;
                File::open(p).ok().map(Arc::new)
            }
            Handle::Lower { .. } | Handle::Dir { .. } => None,
        }
    }

    /// Read up to `size` bytes at `offset` from an open file.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<ReadResult> {
        let mut h = self.handle(fh)?;
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        if let Handle::Lower { ino, .. } = &*h {
            if let Some(up) = self.follow_copy_up(fh, *ino)? {
                h = up;
            }
        }
        match &*h {
            Handle::Upper { file, .. } => {
                let mut buf = vec![0u8; size as usize];
                let mut got = 0usize;
                while got < buf.len() {
                    let k = file
                        .read_at(&mut buf[got..], offset + got as u64)
                        .map_err(|e| Error::io("read upper", format!("handle {fh}"), e))?;
                    if k == 0 {
                        break;
                    }
                    got += k;
                }
                buf.truncate(got);
                self.stats
                    .bytes_read
                    .fetch_add(got as u64, Ordering::Relaxed);
                Ok(ReadResult::Ready(Bytes::from(buf)))
            }
            Handle::Lower { file, .. } => {
                let src = self.source(file)?.clone();
                let wrap = {
                    let file = file.clone();
                    move |source| Error::Lower {
                        layer: file.layer(),
                        path: file.path().to_string(),
                        source,
                    }
                };
                let fut = match src.start_read(file, offset, size) {
                    LowerRead::Ready(r) => {
                        let b = r.map_err(wrap)?;
                        self.stats
                            .bytes_read
                            .fetch_add(b.len() as u64, Ordering::Relaxed);
                        return Ok(ReadResult::Ready(b));
                    }
                    LowerRead::Pending(fut) => fut,
                };
                self.stats
                    .lower_reads_waited
                    .fetch_add(1, Ordering::Relaxed);
                let stats = self.stats.clone();
                Ok(ReadResult::Pending(
                    async move {
                        let b = fut.await.map_err(wrap)?;
                        stats
                            .bytes_read
                            .fetch_add(b.len() as u64, Ordering::Relaxed);
                        Ok(b)
                    }
                    .boxed(),
                ))
            }
            Handle::Dir { .. } => Err(Error::IsDir(format!("handle {fh}"))),
        }
    }

    /// A read-only handle opened on a lower file that has since been copied up reads the
    /// upper file from then on (as kernel overlayfs does since 4.19): the handle is switched
    /// to the upper copy, opened read-only. `None` while the file is still lower only.
    fn follow_copy_up(&self, fh: u64, ino: u64) -> Result<Option<Arc<Handle>>> {
        if self.upper.is_none() {
            return Ok(None);
        }
        // the upper copy's path, or (its last name gone) the descriptor held for it
        let target = {
            let st = self.lock();
            match st.get(ino) {
                Some(n) if n.upper && !n.aliases.is_empty() => {
                    Ok(self.upper()?.path(&st.rel_path(ino)?)?)
                }
                Some(Node {
                    upper: true,
                    orphan: Some(held),
                    ..
                }) => Err(held.clone()),
                _ => return Ok(None),
            }
        };
        let file = match target {
            Ok(p) => open_flags(&p, libc::O_RDONLY)?,
            Err(held) => {
                // reopen through the O_PATH descriptor's magic link (never O_NOFOLLOW here)
                let p = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&*held));
                File::open(&p).map_err(|e| Error::io("reopen unlinked upper", p, e))?
            }
        };
        let h = Arc::new(Handle::Upper {
            ino,
            file: Arc::new(file),
        });
        let mut hs = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        match hs.get(&fh) {
            Some(cur) if matches!(&**cur, Handle::Lower { .. }) => {
                hs.insert(fh, h.clone());
                Ok(Some(h))
            }
            Some(cur) => Ok(Some(cur.clone())),
            None => Err(Error::BadHandle(fh)),
        }
    }

    /// Write `data` at `offset` (an `O_APPEND` handle appends).
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let h = self.handle(fh)?;
        match &*h {
            Handle::Upper { file, .. } => {
                file.write_all_at(data, offset)
                    .map_err(|e| Error::io("write upper", format!("handle {fh}"), e))?;
                Ok(data.len() as u32)
            }
            _ => Err(Error::BadHandle(fh)),
        }
    }

    /// Before a WRITE with `FUSE_WRITE_KILL_SUIDGID` (a caller without CAP_FSETID): drop the
    /// upper file's set-ID bits as that caller's write drops them on ext4 (`setid.rs`). One
    /// fstat, and a chmod only when a bit goes.
    pub fn kill_suidgid(&self, fh: u64, caller: &Caller) -> Result<()> {
        let h = self.handle(fh)?;
        let Handle::Upper { file, .. } = &*h else {
            return Ok(());
        };
        let what = || format!("handle {fh}");
        let st = file
            .metadata()
            .map_err(|e| Error::io("stat upper", what(), e))?;
        let perm = st.mode() & 0o7777;
        if perm & 0o6000 == 0 || !st.is_file() {
            return Ok(());
        }
        if let Some(bits) = super::setid::write_kill(perm, st.gid(), caller) {
            file.set_permissions(std::fs::Permissions::from_mode(bits))
                .map_err(|e| Error::io("chmod", what(), e))?;
        }
        Ok(())
    }

    /// Close a file or directory handle.
    pub fn release(&self, fh: u64) -> Result<()> {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh)
            .map(|_| ())
            .ok_or(Error::BadHandle(fh))
    }

    /// Inode behind an open handle.
    pub fn handle_ino(&self, fh: u64) -> Result<u64> {
        Ok(self.handle(fh)?.ino())
    }
}

/// Open an upper path honouring the access mode and `O_APPEND`/`O_SYNC`-style flags.
/// `O_DIRECT` is not passed on: the kernel already keeps such a FUSE open out of its page
/// cache, and the upper filesystem would refuse our buffers (not block-aligned) with EINVAL.
pub(crate) fn open_flags(p: &std::path::Path, flags: i32) -> Result<File> {
    let acc = flags & libc::O_ACCMODE;
    let extra = flags
        & !(libc::O_ACCMODE
            | libc::O_CREAT
            | libc::O_EXCL
            | libc::O_NOCTTY
            | libc::O_TRUNC
            | libc::O_DIRECT);
    let mut o = std::fs::OpenOptions::new();
    o.read(acc == libc::O_RDONLY || acc == libc::O_RDWR)
        .write(acc == libc::O_WRONLY || acc == libc::O_RDWR)
        .custom_flags(extra | libc::O_NOFOLLOW);
    if acc != libc::O_RDONLY && flags & libc::O_APPEND != 0 {
        o.append(true);
    }
    if flags & libc::O_TRUNC != 0 && acc != libc::O_RDONLY {
        o.truncate(true);
    }
    o.open(p).map_err(|e| Error::io("open upper", p, e))
}
