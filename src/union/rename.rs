//! `rename` of [`UnionFs`] (with `RENAME_NOREPLACE` / `RENAME_EXCHANGE`): lower objects
//! are copied up first (whole directories), the object moved in the upper, a whiteout left
//! where a lower entry of the old name shows through. [`UnionFs::try_rename`] is the same
//! for callers that must not wait for lower data.

use super::fs::UnionFs;
use super::nodes::NodeTable;
use super::{check_name, Error, FileKind, Result};
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// `renameat2` flag: fail if the target exists.
pub const RENAME_NOREPLACE: u32 = 1;
/// `renameat2` flag: swap source and target.
pub const RENAME_EXCHANGE: u32 = 2;

impl UnionFs {
    /// `rename(parent/name -> newparent/newname, flags)` with `RENAME_NOREPLACE` and
    /// `RENAME_EXCHANGE`. Lower directories are copied up whole first, so this never fails
    /// with EXDEV.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        self.rename_inner(parent, name, newparent, newname, flags, true)
            .map(|_| ())
    }

    /// [`rename`](Self::rename) if it needs no copy-up of file data (so cannot wait for
    /// lower data); `None`, with nothing changed, when it does.
    pub fn try_rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Option<Result<()>> {
        match self.rename_inner(parent, name, newparent, newname, flags, false) {
            Ok(true) => Some(Ok(())),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// Is `ino` upper with nothing below it to copy up (what `copy_up_deep` has no work for)?
    fn upper_through(st: &NodeTable, ino: u64) -> bool {
        st.get(ino)
            .is_some_and(|n| n.upper && (n.kind != FileKind::Dir || n.lower.is_none()))
    }

    /// `Ok(false)`: `may_wait` is false and a copy-up would be needed (nothing done).
    fn rename_inner(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        may_wait: bool,
    ) -> Result<bool> {
        let u = self.upper()?;
        check_name(newname)?;
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0 {
            return Err(Error::Invalid("unsupported rename flags"));
        }
        let exchange = flags & RENAME_EXCHANGE != 0;
        let (src, dst) = {
            let mut st = self.lock();
            let src = self
                .resolve(&mut st, parent, name)?
                .ok_or_else(|| Error::NotFound(name.to_string_lossy().into_owned()))?;
            let dst = self.resolve(&mut st, newparent, newname)?;
            (src, dst)
        };
        if dst == Some(src) {
            return Ok(true);
        }
        if flags & RENAME_NOREPLACE != 0 && dst.is_some() {
            return Err(Error::Exists(newname.to_string_lossy().into_owned()));
        }
        if exchange && dst.is_none() {
            return Err(Error::NotFound(newname.to_string_lossy().into_owned()));
        }
        let kind_of = |i: u64| self.lock().get(i).map(|n| n.kind);
        let skind = kind_of(src).ok_or(Error::StaleInode(src))?;
        if let (Some(d), false) = (dst, exchange) {
            let dkind = kind_of(d).ok_or(Error::StaleInode(d))?;
            match (skind == FileKind::Dir, dkind == FileKind::Dir) {
                (true, false) => return Err(Error::NotDir(newname.to_string_lossy().into_owned())),
                (false, true) => return Err(Error::IsDir(newname.to_string_lossy().into_owned())),
                (true, true) => {
                    let mut st = self.lock();
                    if self.list_locked(&mut st, d)?.len() > 2 {
                        return Err(Error::NotEmpty(newname.to_string_lossy().into_owned()));
                    }
                }
                _ => {}
            }
        }
        if !may_wait {
            let st = self.lock();
            let dst_free = match dst {
                None => true,
                Some(d) if exchange => Self::upper_through(&st, d),
                Some(d) => !self.lower_hardlink(&st, d),
            };
            if !(dst_free && Self::upper_through(&st, src)) {
                return Ok(false);
            }
        }
        if let (Some(d), false) = (dst, exchange) {
            // The replaced name of a hard-linked lower file: its other names keep counting.
            if self.lower_hardlink(&self.lock(), d) {
                self.copy_up(d, None)?;
            }
        }
        self.copy_up_deep(src)?;
        if let (Some(d), true) = (dst, exchange) {
            self.copy_up_deep(d)?;
        }
        let mut st = self.lock();
        self.ensure_upper_dir(&mut st, parent)?;
        self.ensure_upper_dir(&mut st, newparent)?;
        let srel = st.rel_path(parent)?.join(name);
        let drel = st.rel_path(newparent)?.join(newname);
        let src_lower = st.lower_child(parent, name).is_some();
        let is_dir = |st: &NodeTable, i: u64| st.get(i).is_some_and(|n| n.kind == FileKind::Dir);
        if exchange {
            let d = dst.ok_or(Error::StaleInode(0))?;
            let (sp, dp) = (u.path(&srel)?, u.path(&drel)?);
            nix::fcntl::renameat2(
                None,
                &*sp,
                None,
                &*dp,
                nix::fcntl::RenameFlags::RENAME_EXCHANGE,
            )
            .map_err(|e| Error::io("rename exchange", &sp, e.into()))?;
            for (i, rel) in [(src, &drel), (d, &srel)] {
                if is_dir(&st, i) {
                    u.set_opaque(rel)?;
                    self.detach_moved(&mut st, i, rel)?;
                }
            }
            st.drop_alias(src, parent, name);
            st.drop_alias(d, newparent, newname);
            self.rekey(&mut st, src, newparent, newname, &drel)?;
            self.rekey(&mut st, d, parent, name, &srel)?;
            return Ok(true);
        }
        if let Some(d) = dst {
            if st.get(d).is_some_and(|n| n.upper) {
                self.hold_orphan(&mut st, d, &drel);
            }
            if is_dir(&st, d) && st.get(d).is_some_and(|n| n.upper) && u.lstat(&drel)?.is_some() {
                u.remove_tree(&drel)?; // only whiteouts were left in it
            }
            st.drop_alias(d, newparent, newname);
        }
        u.move_to(&u.path(&srel)?, &drel)?;
        if is_dir(&st, src) {
            u.set_opaque(&drel)?;
            self.detach_moved(&mut st, src, &drel)?;
        }
        if src_lower {
            u.whiteout(&srel)?;
        }
        st.drop_alias(src, parent, name);
        self.rekey(&mut st, src, newparent, newname, &drel)
            .map(|()| true)
    }

    /// The directory `ino`, just moved to the upper path `rel` and made opaque there, merges
    /// no lower entries any more, and neither does anything below it: forget the lower view
    /// of every directory node in the subtree and remove the whiteouts carried along (in a
    /// directory that is not merged, kernel overlayfs lists a whiteout as an entry that
    /// cannot be looked up).
    fn detach_moved(&self, st: &mut NodeTable, ino: u64, rel: &Path) -> Result<()> {
        let u = self.upper()?;
        let mut stack = vec![rel.to_path_buf()];
        while let Some(d) = stack.pop() {
            for (name, m, wh) in u.list(&d)? {
                if wh {
                    u.unlink(&d.join(&name))?;
                } else if m.is_dir() {
                    stack.push(d.join(&name));
                }
            }
        }
        st.detach_lower_below(ino);
        Ok(())
    }

    /// Give `ino` the name `parent/name` at upper path `rel` and refresh its upper key.
    fn rekey(
        &self,
        st: &mut NodeTable,
        ino: u64,
        parent: u64,
        name: &OsStr,
        rel: &Path,
    ) -> Result<()> {
        st.add_alias(ino, parent, name);
        if let Some(m) = self.upper()?.lstat(rel)? {
            let key = (m.dev(), m.ino());
            st.set_upper(ino, key);
        }
        Ok(())
    }
}
