//! Copy-up: making a lower object exist in the upper directory, parents first.
//!
//! Directories are copied with their metadata only (mode, owner, times, xattrs). Other objects
//! are built completely in the work directory — data read through the layer's `LowerSource`
//! (possibly waiting for the network, with the node table unlocked), then owner, mode, xattrs
//! and times — and renamed into place, so the upper never shows a half-copied file. A file
//! with several lower names gets all its still-visible names linked in the upper, so one inode
//! number never stands for two different files. Data is always copied (no metacopy): an upper
//! written here must stay readable by kernel overlayfs mounted without `metacopy=on`.

use super::backend::TreeNode;
use super::fs::UnionFs;
use super::lower::read_blocking;
use super::nodes::NodeTable;
use super::{sys, Error, FileKind, Result, ROOT_INO};
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

const CHUNK: u32 = 1 << 20;

/// Owner, mode, xattrs and times of `t` onto `p` (in that order: chown clears setuid).
fn apply_meta(p: &Path, t: &TreeNode) -> Result<()> {
    sys::lchown(p, Some(t.uid), Some(t.gid)).map_err(|e| Error::io("chown copy-up", p, e))?;
    if t.kind != FileKind::Symlink {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(t.mode))
            .map_err(|e| Error::io("chmod copy-up", p, e))?;
    }
    for (k, v) in t.xattrs() {
        if let Err(e) = sys::set_xattr(p, k, v, 0) {
            // Symlinks cannot carry user.* xattrs on Linux; anything else is an error.
            if !(t.kind == FileKind::Symlink && e.raw_os_error() == Some(libc::EPERM)) {
                return Err(Error::io("set xattr on copy-up", p, e));
            }
        }
    }
    let mt = super::fs::ts(t.mtime);
    sys::set_times(p, Some(mt), Some(mt)).map_err(|e| Error::io("set times on copy-up", p, e))
}

impl UnionFs {
    /// Make directory `ino` (and its parents) exist in the upper. Holds the lock; no data.
    pub(crate) fn ensure_upper_dir(&self, st: &mut NodeTable, ino: u64) -> Result<()> {
        let u = self.upper()?;
        // Chain of directories from `ino` up to the first one already in the upper.
        let mut chain = Vec::new();
        let mut cur = ino;
        loop {
            let n = st.node(cur)?;
            if n.upper {
                break;
            }
            if n.kind != FileKind::Dir {
                return Err(Error::NotDir(format!("inode {cur}")));
            }
            chain.push(cur);
            if cur == ROOT_INO {
                return Err(Error::ReadOnly);
            }
            cur = n
                .aliases
                .first_parent()
                .ok_or_else(|| Error::NotFound(format!("inode {cur}")))?;
        }
        for &d in chain.iter().rev() {
            let lower = st.get(d).and_then(|n| n.lower);
            let t = lower
                .and_then(|l| self.tree.node(l))
                .ok_or(Error::StaleInode(d))?;
            let rel = st.rel_path(d)?;
            let tmp = u.temp();
            std::fs::create_dir(&tmp)
                .map_err(|e| Error::io("create copy-up directory", &tmp, e))?;
            apply_meta(&tmp, &t)?;
            let parent = st.node(d)?.aliases.first_parent().unwrap_or(ROOT_INO);
            self.quietly(st, parent, |_| u.install(&tmp, &rel))?;
            let m = u
                .lstat(&rel)?
                .ok_or_else(|| Error::NotFound(rel.display().to_string()))?;
            let key = (m.dev(), m.ino());
            st.set_upper(d, key);
            st.mask_ctime(d, (m.ctime(), m.ctime_nsec()), super::fs::ts(t.mtime));
            self.count_copy_up();
        }
        Ok(())
    }

    /// Run `change`, strata's own change inside the upper directory `dir` (installing a
    /// copied-up child), so that it does not show in `dir`'s times: the atime and mtime shown
    /// before are put back and the ctime shown before is kept (masked) until the user
    /// changes the directory. Kernel overlayfs restores the times too, but not the ctime.
    fn quietly<T>(
        &self,
        st: &mut NodeTable,
        dir: u64,
        change: impl FnOnce(&mut NodeTable) -> Result<T>,
    ) -> Result<T> {
        let before = st
            .get(dir)
            .is_some_and(|n| n.upper)
            .then(|| self.attr_locked(st, dir).ok())
            .flatten();
        let r = change(st)?;
        if let Some(b) = before {
            let u = self.upper()?;
            let rel = st.rel_path(dir)?;
            let p = u.path(&rel)?;
            sys::set_times(&p, Some(b.atime), Some(b.mtime))
                .map_err(|e| Error::io("restore directory times", &p, e))?;
            if let Some(m) = u.lstat(&rel)? {
                st.mask_ctime(dir, (m.ctime(), m.ctime_nsec()), b.ctime);
            }
        }
        Ok(r)
    }

    /// Copy the non-directory `ino` up (directories: metadata only). `keep` limits how many
    /// bytes of data are copied (a truncate that follows needs no more).
    pub(crate) fn copy_up(&self, ino: u64, keep: Option<u64>) -> Result<()> {
        let u = self.upper()?;
        let t: TreeNode<'_> = {
            let mut st = self.lock();
            let n = st.node(ino)?;
            if n.upper {
                return Ok(());
            }
            if n.kind == FileKind::Dir {
                return self.ensure_upper_dir(&mut st, ino);
            }
            if n.aliases.is_empty() {
                return Err(Error::NotFound(format!("inode {ino} (unlinked)")));
            }
            let l = n.lower.ok_or(Error::StaleInode(ino))?;
            self.tree.node(l).ok_or(Error::StaleInode(ino))?
        };
        // Build the copy in the work directory, unlocked.
        let tmp = u.temp();
        let built = self.build_copy(&tmp, &t, keep);
        if let Err(e) = built {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let mut st = self.lock();
        let Some(n) = st.get(ino) else {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::StaleInode(ino));
        };
        if n.upper || n.aliases.is_empty() {
            let _ = std::fs::remove_file(&tmp);
            return if n.upper {
                Ok(())
            } else {
                Err(Error::NotFound(format!("inode {ino} (unlinked)")))
            };
        }
        let parent = n.aliases.first_parent().ok_or(Error::StaleInode(ino))?;
        if let Err(e) = self.ensure_upper_dir(&mut st, parent) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let rel = st.rel_path(ino)?;
        self.quietly(&mut st, parent, |_| u.install(&tmp, &rel))?;
        let m = u
            .lstat(&rel)?
            .ok_or_else(|| Error::NotFound(rel.display().to_string()))?;
        let key = (m.dev(), m.ino());
        st.set_upper(ino, key);
        self.count_copy_up();
        if let Some(l) = st.get(ino).and_then(|n| n.lower) {
            self.link_aliases(&mut st, ino, l, &rel)?;
        }
        // The copy is the same object to the user: its ctime stays the lower one.
        if let Some(m) = u.lstat(&rel)? {
            st.mask_ctime(ino, (m.ctime(), m.ctime_nsec()), super::fs::ts(t.mtime));
        }
        Ok(())
    }

    /// After copying up a hard-linked lower file at `first`, link its other visible lower
    /// names to it in the upper.
    fn link_aliases(&self, st: &mut NodeTable, ino: u64, lower: u64, first: &Path) -> Result<()> {
        let u = self.upper()?;
        let paths: Vec<String> = self.tree.aliases(lower);
        for p in paths {
            if Path::new(&p) == first {
                continue;
            }
            let (dir, name) = crate::layer::split_path(&p);
            let name = OsString::from(name);
            // Walk the union to the parent directory; skip names that no longer show `lower`.
            let mut cur = ROOT_INO;
            let mut ok = true;
            for comp in dir.split('/').filter(|c| !c.is_empty()) {
                match self.resolve(st, cur, std::ffi::OsStr::new(comp))? {
                    Some(i) => cur = i,
                    None => {
                        ok = false;
                        break;
                    }
                }
            }
            if !ok || st.get(cur).is_none_or(|n| n.kind != FileKind::Dir) {
                continue;
            }
            let parent_rel = st.rel_path(cur)?;
            let rel = parent_rel.join(&name);
            if u.lstat(&rel)?.is_some() || st.lower_child(cur, &name) != Some(lower) {
                continue;
            }
            self.ensure_upper_dir(st, cur)?;
            let (a, b) = (u.path(first)?, u.path(&rel)?);
            self.quietly(st, cur, |_| {
                std::fs::hard_link(&a, &b).map_err(|e| Error::io("link copy-up alias", &b, e))
            })?;
            st.add_alias(ino, cur, &name);
        }
        Ok(())
    }

    fn build_copy(&self, tmp: &Path, t: &TreeNode, keep: Option<u64>) -> Result<()> {
        match t.kind {
            FileKind::File => {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(tmp)
                    .map_err(|e| Error::io("create copy-up file", tmp, e))?;
                if let Some(file) = &t.content() {
                    let src = self.source(file)?;
                    let want = keep.map_or(file.size(), |k| k.min(file.size()));
                    let mut off = 0u64;
                    while off < want {
                        let len = (want - off).min(u64::from(CHUNK)) as u32;
                        let b = read_blocking(src.as_ref(), self.rt.as_ref(), file, off, len)?;
                        if b.is_empty() {
                            return Err(Error::Lower {
                                layer: file.layer(),
                                path: file.path().to_string(),
                                source: std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                            });
                        }
                        f.write_all(&b)
                            .map_err(|e| Error::io("write copy-up file", tmp, e))?;
                        off += b.len() as u64;
                    }
                    f.set_len(want)
                        .map_err(|e| Error::io("size copy-up file", tmp, e))?;
                }
                drop(f);
            }
            FileKind::Symlink => {
                std::os::unix::fs::symlink(t.link_target, tmp)
                    .map_err(|e| Error::io("create copy-up symlink", tmp, e))?;
            }
            FileKind::Fifo | FileKind::CharDev | FileKind::BlockDev | FileKind::Socket => {
                let dev = libc::makedev(t.dev_major, t.dev_minor);
                sys::mknod(tmp, t.kind.mode_bits() | t.mode, dev)
                    .map_err(|e| Error::io("create copy-up node", tmp, e))?;
                if t.kind == FileKind::CharDev && dev == 0 {
                    // A real 0/0 device shown by a lower: keep it from becoming a whiteout.
                    sys::set_xattr(tmp, sys::DEVICE_XATTR, b"y", 0)
                        .map_err(|e| Error::io("mark real device 0/0", tmp, e))?;
                }
            }
            FileKind::Dir => return Err(Error::Invalid("directory in file copy-up")),
        }
        apply_meta(tmp, t)
    }

    /// Copy up `ino` and, for a directory, everything below it that still comes from a lower
    /// layer (used before renaming a directory, so no redirect is ever needed).
    pub(crate) fn copy_up_deep(&self, ino: u64) -> Result<()> {
        let mut stack = vec![ino];
        while let Some(cur) = stack.pop() {
            let kind = {
                let st = self.lock();
                st.node(cur)?.kind
            };
            if kind != FileKind::Dir {
                self.copy_up(cur, None)?;
                continue;
            }
            let children = {
                let mut st = self.lock();
                self.ensure_upper_dir(&mut st, cur)?;
                if st.get(cur).is_some_and(|n| n.lower.is_none()) {
                    continue;
                }
                let list = self.list_locked(&mut st, cur)?;
                let mut kids = Vec::new();
                for d in list.into_iter().skip(2) {
                    if let Some(i) = self.resolve(&mut st, cur, &d.name)? {
                        let n = st.get(i);
                        if n.is_some_and(|n| {
                            !n.upper || (n.kind == FileKind::Dir && n.lower.is_some())
                        }) {
                            kids.push(i);
                        }
                    }
                }
                kids
            };
            stack.extend(children);
        }
        Ok(())
    }
}
