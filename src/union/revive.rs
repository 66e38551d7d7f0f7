//! Re-attaching to a kernel that knows more than this process: after a daemon restart (or a
//! crash) the kernel still holds node numbers and file handles that the process serving the
//! mount before gave out. [`UnionFs::revive`] brings back a node the table does not know by
//! walking to it from the root with ordinary lookups — a lower tree number by its path in the
//! tree, a derived upper number (`UPPER_BASE + st_ino`) by finding the upper object with that
//! `st_ino` — so the numbers agree with what any lookup gives. [`UnionFs::adopt_handle`] and
//! [`UnionFs::adopt_dir`] open a handle under a number the kernel already holds, from the node
//! and the open flags the kernel sends with every read and write.
//!
//! What cannot come back: fallback numbers (upper files with `st_ino >= 2^40`) and the numbers
//! of copied-up files that were renamed since (they are found under their new name with a
//! new number; the kernel's old number answers ESTALE). Calls the node table, the lower tree
//! and the upper directory through `UnionFs`.

use super::fs::UnionFs;
use super::nodes::UPPER_BASE;
use super::{Error, Result, ROOT_INO};
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Derived upper numbers end here (fallback numbers start).
const DERIVED_END: u64 = 1 << 62;
/// Deepest path walked when reviving (a loop guard).
const MAX_DEPTH: usize = 4096;

impl UnionFs {
    /// Make sure node `ino` is in the table, reviving it if the kernel knows it from an
    /// earlier server; [`Error::StaleInode`] if it cannot be found again.
    pub fn revive(&self, ino: u64) -> Result<()> {
        if ino == ROOT_INO || self.lock().get(ino).is_some() {
            return Ok(());
        }
        let path = if ino < UPPER_BASE {
            self.tree_path(ino)
        } else if ino < DERIVED_END {
            self.upper_path_of(ino - UPPER_BASE)
        } else {
            None
        };
        let path = path.ok_or(Error::StaleInode(ino))?;
        let mut cur = ROOT_INO;
        for name in &path {
            cur = self.lookup(cur, name)?.ino;
        }
        if cur == ino {
            Ok(())
        } else {
            Err(Error::StaleInode(ino))
        }
    }

    /// Make sure the handle `fh` that the kernel holds on `ino` exists, opening it again with
    /// `flags` (as the kernel sends them with reads and writes; creation and truncation
    /// flags are dropped: they took effect when it was first opened). Without flags (flush,
    /// fsync, ...): read-write if the object is in the upper, else read-only (never a copy-up).
    pub fn adopt_handle(&self, fh: u64, ino: u64, flags: Option<i32>) -> Result<()> {
        if self.handle(fh).is_ok() {
            return Ok(());
        }
        self.revive(ino)?;
        let flags = match flags {
            Some(f) => f & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC),
            None if self.lock().node(ino)?.upper => libc::O_RDWR,
            None => libc::O_RDONLY,
        };
        self.open_as(ino, flags, Some(fh)).map(|_| ())
    }

    /// Make sure the directory handle `fh` the kernel holds on `ino` exists.
    pub fn adopt_dir(&self, fh: u64, ino: u64) -> Result<()> {
        if self.handle(fh).is_ok() {
            return Ok(());
        }
        self.revive(ino)?;
        self.opendir_as(ino, Some(fh)).map(|_| ())
    }

    /// New handles get numbers from `base` on (after a restart: above every number an
    /// earlier server gave out).
    pub fn set_handle_base(&self, base: u64) {
        self.next_fh
            .fetch_max(base, std::sync::atomic::Ordering::Relaxed);
    }

    /// Names from the root to tree node `ino`.
    fn tree_path(&self, ino: u64) -> Option<Vec<OsString>> {
        let mut names = Vec::new();
        let mut cur = ino;
        while cur != ROOT_INO {
            let (parent, name) = self.tree.name(cur)?;
            names.push(OsString::from(name));
            cur = parent;
            if names.len() > MAX_DEPTH {
                return None;
            }
        }
        names.reverse();
        Some(names)
    }

    /// Names from the root to the upper object whose `st_ino` is `st_ino` (on the upper
    /// root's device), found by walking the upper directory.
    fn upper_path_of(&self, st_ino: u64) -> Option<Vec<OsString>> {
        let root = self.upper.as_ref()?.root().to_path_buf();
        let dev = std::fs::symlink_metadata(&root).ok()?.dev();
        let rel = find_ino(&root, dev, st_ino)?;
        Some(rel.iter().map(OsString::from).collect())
    }
}

/// Relative path under `root` of the object `(dev, ino)` (depth-first; same device only).
fn find_ino(root: &Path, dev: u64, ino: u64) -> Option<PathBuf> {
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(root.join(&rel)) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            let p = rel.join(e.file_name());
            if m.ino() == ino {
                return Some(p);
            }
            if m.is_dir() && p.components().count() < MAX_DEPTH {
                stack.push(p);
            }
        }
    }
    None
}
