//! Mutating operations of [`UnionFs`]: create, mkdir, mknod, symlink, link, unlink, rmdir
//! (rename is in `rename.rs`), setattr, xattrs, fsync, fallocate,
//! lseek, statfs. Every change lands in the upper directory in overlay format; operations on
//! lower objects copy them up first (`copyup.rs`).

use super::files::Handle;
use super::fs::{attr_from_meta, Ctx, Opened, SetAttr, StatFs, TimeSpec, UnionFs};
use super::nodes::NodeTable;
use super::upper::UPath;
use super::{check_name, sys, Attr, Error, FileKind, Result, ROOT_INO};
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// Where a new object goes.
struct Slot {
    rel: PathBuf,
    /// A lower entry of this name exists (hidden now): a new directory must be opaque.
    lower_exists: bool,
}

impl UnionFs {
    /// Check that `parent/name` is free and make `parent` exist in the upper.
    fn new_slot(&self, st: &mut NodeTable, parent: u64, name: &OsStr) -> Result<Slot> {
        self.upper()?;
        check_name(name)?;
        if self.resolve(st, parent, name)?.is_some() {
            return Err(Error::Exists(name.to_string_lossy().into_owned()));
        }
        self.ensure_upper_dir(st, parent)?;
        let rel = st.rel_path(parent)?.join(name);
        let lower_exists = st.lower_child(parent, name).is_some();
        Ok(Slot { rel, lower_exists })
    }

    /// Owner for a new object: the caller, or the parent's group if it is setgid.
    fn owner(&self, st: &NodeTable, parent: u64, ctx: &Ctx) -> Result<(u32, u32, bool)> {
        let pa = self.attr_locked(st, parent)?;
        let sgid = u32::from(pa.perm) & libc::S_ISGID != 0;
        Ok((ctx.uid, if sgid { pa.gid } else { ctx.gid }, sgid))
    }

    /// Install a finished object from the work directory (`tmp`; `None`: it was made in
    /// place) and return its attributes.
    fn finish_new(
        &self,
        st: &mut NodeTable,
        parent: u64,
        name: &OsStr,
        tmp: Option<&Path>,
        slot: &Slot,
    ) -> Result<Attr> {
        let u = self.upper()?;
        if let Some(tmp) = tmp {
            u.install(tmp, &slot.rel)?;
        }
        let m = u
            .lstat(&slot.rel)?
            .ok_or_else(|| Error::NotFound(slot.rel.display().to_string()))?;
        let ino = self.node_for_upper(st, parent, name, &m, true)?;
        let a = attr_from_meta(ino, &m)?;
        st.count_lookup(ino);
        Ok(a)
    }

    fn set_owner_mode(tmp: &Path, uid: u32, gid: u32, mode: Option<u32>) -> Result<()> {
        sys::lchown(tmp, Some(uid), Some(gid))
            .map_err(|e| Error::io("chown new object", tmp, e))?;
        if let Some(m) = mode {
            std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(m))
                .map_err(|e| Error::io("chmod new object", tmp, e))?;
        }
        Ok(())
    }

    /// `create(parent, name, mode, flags)`: a new regular file, opened.
    pub fn create(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Result<(Attr, Opened)> {
        let attr = {
            let mut st = self.lock();
            match self.new_slot(&mut st, parent, name) {
                Err(Error::Exists(n)) => {
                    if flags & libc::O_EXCL != 0 {
                        return Err(Error::Exists(n));
                    }
                    let ino = self
                        .resolve(&mut st, parent, name)?
                        .ok_or(Error::NotFound(n))?;
                    st.count_lookup(ino);
                    drop(st);
                    let o = self.open(ino, flags)?;
                    if flags & libc::O_TRUNC != 0 {
                        self.setattr(
                            ino,
                            Some(o.fh),
                            &SetAttr {
                                size: Some(0),
                                kill_suidgid: ctx.kill_suidgid.is_some(),
                                caller: ctx.kill_suidgid,
                                ..SetAttr::default()
                            },
                        )?;
                    }
                    return Ok((self.getattr(ino)?, o));
                }
                Err(e) => return Err(e),
                Ok(slot) => {
                    let (uid, gid, _) = self.owner(&st, parent, ctx)?;
                    let u = self.upper()?;
                    // Built through its descriptor (no path walks), which then serves as
                    // the handle when the open asks for nothing a plain read-write
                    // descriptor does not give. Made in place unless a whiteout holds the
                    // name (see `in_place`).
                    let new_file = |p: &Path| {
                        std::fs::OpenOptions::new()
                            .read(true)
                            .write(true)
                            .create_new(true)
                            .mode(0o600)
                            .custom_flags(libc::O_NOFOLLOW)
                            .open(p)
                    };
                    let mode = mode & !ctx.umask & 0o7777;
                    // `Ok`: made in place at that path; `Err`: built at that temp path.
                    let (file, at) = match self.in_place(&slot, new_file)? {
                        Some((f, dst)) => (f, Ok(dst)),
                        None => {
                            let tmp = u.temp();
                            let f =
                                new_file(&tmp).map_err(|e| Error::io("create file", &tmp, e))?;
                            (f, Err(tmp))
                        }
                    };
                    let path: &Path = match &at {
                        Ok(dst) => dst,
                        Err(tmp) => tmp,
                    };
                    if let Err(e) = fchown_fchmod(&file, uid, gid, mode) {
                        let _ = std::fs::remove_file(path);
                        return Err(Error::io("chown/chmod new file", path, e));
                    }
                    if let Err(tmp) = &at {
                        u.install_nondir(tmp, &slot.rel)?;
                    }
                    let m = file
                        .metadata()
                        .map_err(|e| Error::io("fstat new file", path, e))?;
                    let ino = self.node_for_upper(&mut st, parent, name, &m, true)?;
                    let a = attr_from_meta(ino, &m)?;
                    st.count_lookup(ino);
                    (a, file)
                }
            }
        };
        let (attr, file) = attr;
        let o = if reusable_create_fd(flags) {
            let fh = self.new_fh(Handle::Upper {
                ino: attr.ino,
                file: Arc::new(file),
            });
            Opened { fh, lower: false }
        } else {
            drop(file);
            self.open(attr.ino, flags & !libc::O_TRUNC)?
        };
        Ok((attr, o))
    }

    /// Make a new object at `slot` in place, straight in the upper directory (`make(path)`),
    /// as kernel overlayfs does: `Ok(None)` when it must be built in the work directory
    /// and renamed over instead (a lower entry of that name exists, so a whiteout holds
    /// the name or the new directory must be opaque from its first moment), or the name is
    /// taken in the upper (`EEXIST`: a whiteout). In place spares a rename, and keeps new
    /// inodes out of the work directory, whose ext4 block group fills with recently
    /// deleted inodes that every allocation there then scans. The node table lock held by
    /// the caller keeps the half-made object out of every other operation's sight.
    fn in_place<T>(
        &self,
        slot: &Slot,
        make: impl FnOnce(&Path) -> std::io::Result<T>,
    ) -> Result<Option<(T, super::upper::UPath)>> {
        if slot.lower_exists {
            return Ok(None);
        }
        let dst = self.upper()?.path(&slot.rel)?;
        match make(&dst) {
            Ok(t) => Ok(Some((t, dst))),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(Error::io("create in upper", &dst, e)),
        }
    }

    /// `mkdir(parent, name, mode)`.
    pub fn mkdir(&self, ctx: &Ctx, parent: u64, name: &OsStr, mode: u32) -> Result<Attr> {
        let mut st = self.lock();
        let slot = self.new_slot(&mut st, parent, name)?;
        let (uid, gid, sgid) = self.owner(&st, parent, ctx)?;
        let mut m = mode & !ctx.umask & 0o7777;
        if sgid {
            m |= libc::S_ISGID;
        }
        if let Some(((), dst)) = self.in_place(&slot, |p| std::fs::create_dir(p))? {
            if let Err(e) = Self::set_owner_mode(&dst, uid, gid, Some(m)) {
                let _ = std::fs::remove_dir(&*dst);
                return Err(e);
            }
            return self.finish_new(&mut st, parent, name, None, &slot);
        }
        let tmp = self.upper()?.temp();
        std::fs::create_dir(&tmp).map_err(|e| Error::io("create directory", &tmp, e))?;
        Self::set_owner_mode(&tmp, uid, gid, Some(m))?;
        if slot.lower_exists {
            sys::set_xattr(&tmp, sys::OPAQUE_XATTR, b"y", 0)
                .map_err(|e| Error::io("set opaque xattr", &tmp, e))?;
        }
        self.finish_new(&mut st, parent, name, Some(&tmp), &slot)
    }

    /// `mknod(parent, name, mode, rdev)`: fifos, sockets, devices, regular files. A char
    /// device 0/0 is refused with EPERM, as kernel overlayfs does (it is the whiteout),
    /// unless [`super::UnionOptions::allow_chardev00`] is set: then it is stored with the
    /// real-device marker xattr.
    pub fn mknod(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> Result<Attr> {
        let kind = FileKind::from_mode(mode).ok_or(Error::Invalid("mknod type"))?;
        let (major, minor) = (
            (rdev >> 8) & 0xfff,
            (rdev & 0xff) | ((rdev >> 12) & 0xfff00),
        );
        let dev00 = kind == FileKind::CharDev && major == 0 && minor == 0;
        if dev00 && !self.opts.allow_chardev00 {
            return Err(Error::NotPermitted(
                "a character device 0/0 is an overlay whiteout",
            ));
        }
        if kind == FileKind::Dir || kind == FileKind::Symlink {
            return Err(Error::Invalid("mknod of a directory or symlink"));
        }
        let mut st = self.lock();
        let slot = self.new_slot(&mut st, parent, name)?;
        let (uid, gid, _) = self.owner(&st, parent, ctx)?;
        let tmp = self.upper()?.temp();
        sys::mknod(&tmp, kind.mode_bits() | 0o600, libc::makedev(major, minor))
            .map_err(|e| Error::io("mknod", &tmp, e))?;
        if dev00 {
            if let Err(e) = sys::set_xattr(&tmp, sys::DEVICE_XATTR, b"y", 0) {
                let _ = std::fs::remove_file(&tmp);
                return Err(Error::io("mark real device 0/0", &tmp, e));
            }
        }
        Self::set_owner_mode(&tmp, uid, gid, Some(mode & !ctx.umask & 0o7777))?;
        self.finish_new(&mut st, parent, name, Some(&tmp), &slot)
    }

    /// `symlink(parent, name -> target)`.
    pub fn symlink(&self, ctx: &Ctx, parent: u64, name: &OsStr, target: &Path) -> Result<Attr> {
        let mut st = self.lock();
        let slot = self.new_slot(&mut st, parent, name)?;
        let (uid, gid, _) = self.owner(&st, parent, ctx)?;
        if let Some(((), dst)) = self.in_place(&slot, |p| std::os::unix::fs::symlink(target, p))? {
            if let Err(e) = Self::set_owner_mode(&dst, uid, gid, None) {
                let _ = std::fs::remove_file(&*dst);
                return Err(e);
            }
            return self.finish_new(&mut st, parent, name, None, &slot);
        }
        let tmp = self.upper()?.temp();
        std::os::unix::fs::symlink(target, &tmp)
            .map_err(|e| Error::io("create symlink", &tmp, e))?;
        Self::set_owner_mode(&tmp, uid, gid, None)?;
        self.finish_new(&mut st, parent, name, Some(&tmp), &slot)
    }

    /// `link(ino -> newparent/newname)`; a lower file is copied up first (all its names).
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<Attr> {
        self.upper()?;
        check_name(newname)?;
        if self.lock().node(ino)?.kind == FileKind::Dir {
            return Err(Error::NotPermitted("hard link to a directory"));
        }
        self.copy_up(ino, None)?;
        let mut st = self.lock();
        let slot = self.new_slot(&mut st, newparent, newname)?;
        let u = self.upper()?;
        let src = u.path(&st.rel_path(ino)?)?;
        let tmp = u.temp();
        std::fs::hard_link(&src, &tmp).map_err(|e| Error::io("link", &src, e))?;
        u.install(&tmp, &slot.rel)?;
        st.add_alias(ino, newparent, newname);
        let a = self.attr_locked(&st, ino)?;
        st.count_lookup(ino);
        Ok(a)
    }

    /// Before the last known name of the upper object `ino` (at `rel`) goes, keep an `O_PATH`
    /// descriptor of it, so it can still be `fstat`ed while the kernel holds it open.
    pub(super) fn hold_orphan(&self, st: &mut NodeTable, ino: u64, rel: &Path) {
        let Ok(u) = self.upper() else { return };
        let Some(n) = st.get_mut(ino) else {
            return;
        };
        if n.aliases.len() > 1 {
            return;
        }
        n.orphan = u
            .path(rel)
            .and_then(|p| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
                    .open(&p)
                    .map_err(|e| Error::io("hold removed object", &p, e))
            })
            .ok()
            .map(Arc::new);
    }

    /// Remove the union entry `parent/name` of `ino` from the upper, leaving a whiteout if a
    /// lower entry of that name exists.
    pub(super) fn remove_entry(
        &self,
        st: &mut NodeTable,
        parent: u64,
        name: &OsStr,
        ino: u64,
        is_dir: bool,
    ) -> Result<()> {
        let u = self.upper()?;
        self.ensure_upper_dir(st, parent)?;
        let rel = st.rel_path(parent)?.join(name);
        let lower_exists = st.lower_child(parent, name).is_some();
        let in_upper = st.get(ino).is_some_and(|n| n.upper) && u.lstat(&rel)?.is_some();
        if in_upper {
            self.hold_orphan(st, ino, &rel);
        }
        if in_upper && is_dir {
            u.remove_tree(&rel)?;
        }
        if lower_exists {
            u.whiteout(&rel)?;
        } else if in_upper && !is_dir {
            u.unlink(&rel)?;
        }
        st.drop_alias(ino, parent, name);
        Ok(())
    }

    /// `unlink(parent, name)`. Removing one name of a hard-linked lower file copies it up
    /// first (all its names linked, as kernel overlayfs with `index=on` does), so the link
    /// count of the names left is the upper file's. May wait for lower data.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.unlink_inner(parent, name, true).map(|_| ())
    }

    /// [`unlink`](Self::unlink) if it needs no copy-up (so cannot wait for lower data);
    /// `None`, with nothing changed, when it does.
    pub fn try_unlink(&self, parent: u64, name: &OsStr) -> Option<Result<()>> {
        match self.unlink_inner(parent, name, false) {
            Ok(true) => Some(Ok(())),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// `Ok(false)`: `may_wait` is false and a copy-up would be needed (nothing done).
    fn unlink_inner(&self, parent: u64, name: &OsStr, may_wait: bool) -> Result<bool> {
        self.upper()?;
        let mut st = self.lock();
        let ino = self
            .resolve(&mut st, parent, name)?
            .ok_or_else(|| Error::NotFound(name.to_string_lossy().into_owned()))?;
        if st.get(ino).is_some_and(|n| n.kind == FileKind::Dir) {
            return Err(Error::IsDir(name.to_string_lossy().into_owned()));
        }
        if self.lower_hardlink(&st, ino) {
            if !may_wait {
                return Ok(false);
            }
            drop(st);
            self.copy_up(ino, None)?;
            st = self.lock();
            if self.resolve(&mut st, parent, name)? != Some(ino) {
                return Err(Error::NotFound(name.to_string_lossy().into_owned()));
            }
        }
        self.remove_entry(&mut st, parent, name, ino, false)
            .map(|()| true)
    }

    /// Is `ino` a lower-only non-directory with several names in the lower tree?
    pub(super) fn lower_hardlink(&self, st: &NodeTable, ino: u64) -> bool {
        st.get(ino).is_some_and(|n| {
            !n.upper
                && n.kind != FileKind::Dir
                && n.lower
                    .and_then(|l| self.tree.node(l))
                    .is_some_and(|t| t.nlink > 1)
        })
    }

    /// `rmdir(parent, name)`: ENOTEMPTY if any layer still shows an entry in it.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.upper()?;
        let mut st = self.lock();
        let ino = self
            .resolve(&mut st, parent, name)?
            .ok_or_else(|| Error::NotFound(name.to_string_lossy().into_owned()))?;
        if st.get(ino).is_some_and(|n| n.kind != FileKind::Dir) {
            return Err(Error::NotDir(name.to_string_lossy().into_owned()));
        }
        if ino == ROOT_INO {
            return Err(Error::NotPermitted("removing the root"));
        }
        if self.list_locked(&mut st, ino)?.len() > 2 {
            return Err(Error::NotEmpty(name.to_string_lossy().into_owned()));
        }
        self.remove_entry(&mut st, parent, name, ino, true)
    }

    /// Upper path of `ino`, or the open upper file when it has no name left.
    fn upper_target(
        &self,
        ino: u64,
        fh: Option<u64>,
    ) -> Result<(Option<UPath>, Option<Arc<std::fs::File>>)> {
        let file = fh
            .and_then(|f| self.handle(f).ok())
            .and_then(|h| match &*h {
                Handle::Upper { ino: i, file } if *i == ino => Some(file.clone()),
                _ => None,
            });
        let st = self.lock();
        let path = match st.rel_path(ino) {
            Ok(rel) => Some(self.upper()?.path(&rel)?),
            Err(Error::NotFound(_)) if file.is_some() => None,
            Err(e) => return Err(e),
        };
        Ok((path, file))
    }

    /// `setattr`: chown, chmod, truncate, utimens. A lower object is copied up first (a
    /// truncate copies only the bytes it keeps). The set-group-ID bit is dropped as ext4
    /// drops it (`setid.rs`); an empty request (`chown(f, -1, -1)`) still moves ctime.
    pub fn setattr(&self, ino: u64, fh: Option<u64>, s: &SetAttr) -> Result<Attr> {
        self.upper()?;
        self.copy_up(ino, s.size)?;
        let (path, file) = self.upper_target(ino, fh)?;
        let what = path
            .as_ref()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(format!("inode {ino}")));
        let empty = s.is_empty();
        let mut s = *s;
        // The object's attributes only where they can change the request (not for times
        // only, nor for internal calls that name their changes).
        if empty || (s.caller.is_some() && !s.times_only()) {
            let before = self.getattr(ino)?;
            if let Some(bits) = super::setid::mode_after(&before, &s) {
                s.mode = Some(bits);
            } else if empty && before.kind != FileKind::Symlink {
                // ctime moves, nothing else: the same mode set again
                s.mode = Some(before.perm as u32);
            } else if empty {
                s.uid = Some(before.uid);
            }
        }
        let s = &s;
        if s.uid.is_some() || s.gid.is_some() {
            match (&path, &file) {
                (Some(p), _) => sys::lchown(p, s.uid, s.gid),
                (None, Some(f)) => std::os::unix::fs::fchown(f.as_fd(), s.uid, s.gid),
                _ => Ok(()),
            }
            .map_err(|e| Error::io("chown", &what, e))?;
        }
        if let Some(mode) = s.mode {
            let perm = std::fs::Permissions::from_mode(mode & 0o7777);
            match (&file, &path) {
                (Some(f), _) => f.set_permissions(perm),
                (None, Some(p)) => std::fs::set_permissions(p, perm),
                _ => Ok(()),
            }
            .map_err(|e| Error::io("chmod", &what, e))?;
        }
        if let Some(size) = s.size {
            let r = match (&file, &path) {
                (Some(f), _) => f.set_len(size),
                (None, Some(p)) => std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(p)
                    .and_then(|f| f.set_len(size)),
                _ => Ok(()),
            };
            r.map_err(|e| Error::io("truncate", &what, e))?;
        }
        if s.atime.is_some() || s.mtime.is_some() {
            let now = SystemTime::now();
            let conv = |t: Option<TimeSpec>| {
                t.map(|t| match t {
                    TimeSpec::Now => now,
                    TimeSpec::Set(x) => x,
                })
            };
            if let Some(p) = &path {
                sys::set_times(p, conv(s.atime), conv(s.mtime))
                    .map_err(|e| Error::io("utimens", &what, e))?;
            }
        }
        self.getattr(ino)
    }

    /// `getxattr(ino, name)`.
    pub fn getxattr(&self, ino: u64, name: &str) -> Result<Vec<u8>> {
        if name.starts_with(sys::OVERLAY_PREFIX) && !self.opts.overlay_xattrs {
            return Err(Error::NoAttr);
        }
        let st = self.lock();
        let n = st.node(ino)?;
        if n.upper {
            let p = self.upper()?.path(&st.rel_path(ino)?)?;
            return sys::get_xattr(&p, name)
                .map_err(|e| Error::io("getxattr", p, e))?
                .ok_or(Error::NoAttr);
        }
        let t = n
            .lower
            .and_then(|l| self.tree.node(l))
            .ok_or(Error::StaleInode(ino))?;
        t.xattr(name).map(<[u8]>::to_vec).ok_or(Error::NoAttr)
    }

    /// `listxattr(ino)`: names, sorted.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<String>> {
        let st = self.lock();
        let n = st.node(ino)?;
        if n.upper {
            let p = self.upper()?.path(&st.rel_path(ino)?)?;
            let mut names: Vec<String> = sys::list_xattrs(&p)
                .map_err(|e| Error::io("listxattr", p, e))?
                .into_iter()
                .filter(|k| !k.starts_with(sys::OVERLAY_PREFIX))
                .collect();
            names.sort();
            return Ok(names);
        }
        let t = n
            .lower
            .and_then(|l| self.tree.node(l))
            .ok_or(Error::StaleInode(ino))?;
        Ok(t.xattrs().map(|(k, _)| k.to_string()).collect())
    }

    /// `setxattr(ino, name, value, flags)` (`XATTR_CREATE` / `XATTR_REPLACE`).
    pub fn setxattr(&self, ino: u64, name: &str, value: &[u8], flags: i32) -> Result<()> {
        if name.starts_with(sys::OVERLAY_PREFIX) {
            return Err(Error::NotPermitted("overlay-private xattr"));
        }
        self.copy_up(ino, None)?;
        let (path, _) = self.upper_target(ino, None)?;
        let p = path.ok_or(Error::StaleInode(ino))?;
        sys::set_xattr(&p, name, value, flags).map_err(|e| Error::io("setxattr", p, e))
    }

    /// `removexattr(ino, name)`.
    pub fn removexattr(&self, ino: u64, name: &str) -> Result<()> {
        if name.starts_with(sys::OVERLAY_PREFIX) {
            return Err(Error::NoAttr);
        }
        self.getxattr(ino, name)?;
        self.copy_up(ino, None)?;
        let (path, _) = self.upper_target(ino, None)?;
        let p = path.ok_or(Error::StaleInode(ino))?;
        sys::remove_xattr(&p, name).map_err(|e| match e.raw_os_error() {
            Some(libc::ENODATA) => Error::NoAttr,
            _ => Error::io("removexattr", p, e),
        })
    }

    /// `fsync` / `fdatasync` of an open file (lower files: nothing to do).
    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        match &*self.handle(fh)? {
            Handle::Upper { file, .. } => if datasync {
                file.sync_data()
            } else {
                file.sync_all()
            }
            .map_err(|e| Error::io("fsync", format!("handle {fh}"), e)),
            _ => Ok(()),
        }
    }

    /// `flush` (close of one descriptor): nothing is buffered here.
    pub fn flush(&self, fh: u64) -> Result<()> {
        self.handle(fh).map(|_| ())
    }

    /// `fallocate(fh, mode, offset, len)` on an upper file.
    pub fn fallocate(&self, fh: u64, mode: i32, offset: u64, len: u64) -> Result<()> {
        match &*self.handle(fh)? {
            Handle::Upper { file, .. } => nix::fcntl::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&**file),
                nix::fcntl::FallocateFlags::from_bits_truncate(mode),
                offset as i64,
                len as i64,
            )
            .map_err(|e| Error::io("fallocate", format!("handle {fh}"), e.into())),
            _ => Err(Error::BadHandle(fh)),
        }
    }

    /// `lseek(fh, offset, SEEK_DATA | SEEK_HOLE)`; lower files are one data extent.
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        match &*self.handle(fh)? {
            Handle::Upper { file, .. } => {
                // SAFETY: the fd is owned by `file`, alive for this call; lseek on a dup'd
                // offset is harmless because reads and writes here are positional.
                let r = unsafe {
                    libc::lseek(std::os::fd::AsRawFd::as_raw_fd(&**file), offset, whence)
                };
                if r < 0 {
                    return Err(Error::io(
                        "lseek",
                        format!("handle {fh}"),
                        std::io::Error::last_os_error(),
                    ));
                }
                Ok(r)
            }
            Handle::Lower { file, .. } => {
                let size = file.size() as i64;
                if offset < 0 || offset >= size {
                    return Err(Error::io(
                        "lseek",
                        file.path(),
                        std::io::Error::from_raw_os_error(libc::ENXIO),
                    ));
                }
                match whence {
                    libc::SEEK_DATA => Ok(offset),
                    libc::SEEK_HOLE => Ok(size),
                    _ => Err(Error::Invalid("lseek whence")),
                }
            }
            Handle::Dir { .. } => Err(Error::IsDir(format!("handle {fh}"))),
        }
    }

    /// `statfs`: the upper filesystem's space, or the tree's size when read-only.
    pub fn statfs(&self) -> Result<StatFs> {
        let files = self.tree.len();
        let Some(u) = &self.upper else {
            return Ok(StatFs {
                files,
                bsize: 4096,
                frsize: 4096,
                namelen: super::NAME_MAX as u32,
                ..StatFs::default()
            });
        };
        let s = nix::sys::statvfs::statvfs(u.root())
            .map_err(|e| Error::io("statfs", u.root(), e.into()))?;
        Ok(StatFs {
            blocks: s.blocks(),
            bfree: s.blocks_free(),
            bavail: s.blocks_available(),
            files: s.files().saturating_add(files),
            ffree: s.files_free(),
            bsize: s.block_size() as u32,
            namelen: super::NAME_MAX as u32,
            frsize: s.fragment_size() as u32,
        })
    }
}

/// `O_LARGEFILE` as the kernel sets it in the flags it forwards (always, on 64-bit); glibc's
/// `O_LARGEFILE` is 0 there.
#[cfg(target_arch = "x86_64")]
const KERNEL_O_LARGEFILE: i32 = 0o100000;
#[cfg(target_arch = "aarch64")]
const KERNEL_O_LARGEFILE: i32 = 0o400000;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const KERNEL_O_LARGEFILE: i32 = libc::O_LARGEFILE;

/// May the read-write descriptor a create made serve as the handle for open(2) `flags`?
/// Yes for write opens that ask for nothing more than a plain descriptor has (`O_APPEND`,
/// `O_SYNC`, `O_NOATIME`... and read-only opens get a descriptor of their own).
fn reusable_create_fd(flags: i32) -> bool {
    let plain = libc::O_ACCMODE
        | libc::O_CREAT
        | libc::O_EXCL
        | libc::O_NOCTTY
        | libc::O_TRUNC
        | libc::O_CLOEXEC
        | KERNEL_O_LARGEFILE
        | libc::O_NOFOLLOW
        | libc::O_NONBLOCK;
    flags & libc::O_ACCMODE != libc::O_RDONLY && flags & !plain == 0
}

/// `fchown` then `fchmod` (in this order: a chown clears set-id bits) of a new file.
fn fchown_fchmod(f: &std::fs::File, uid: u32, gid: u32, mode: u32) -> std::io::Result<()> {
    let fd = std::os::fd::AsRawFd::as_raw_fd(f);
    // SAFETY: `fd` is owned by `f`, alive for both calls.
    if unsafe { libc::fchown(fd, uid, gid) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    f.set_permissions(std::fs::Permissions::from_mode(mode))
}
