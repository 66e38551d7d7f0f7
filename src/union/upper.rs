//! The upper directory, in kernel-overlayfs format, and its work directory.
//!
//! Whiteout = character device 0/0; opaque directory = `trusted.overlay.opaque=y`. Everything
//! that must appear atomically (copy-ups, whiteouts over existing entries, new objects over a
//! whiteout) is built under `<work>/strata-tmp` and renamed into place; work and upper must be
//! on one filesystem. Paths handed in are relative to the upper root. Knows nothing of the
//! lower tree.

use super::sys;
use super::{Error, Result};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// An overlay-format upper directory plus its work directory.
#[derive(Debug)]
pub struct Upper {
    root: PathBuf,
    tmp: PathBuf,
    counter: AtomicU64,
}

impl Upper {
    /// Use `upper` (created if missing) with scratch space under `work` (created if missing).
    /// Both must be on the same filesystem.
    pub fn open(upper: impl Into<PathBuf>, work: impl Into<PathBuf>) -> Result<Self> {
        let (root, work) = (upper.into(), work.into());
        for d in [&root, &work] {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::io("create directory", d.as_path(), e))?;
        }
        let tmp = work.join("strata-tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)
                .map_err(|e| Error::io("clean work directory", &tmp, e))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| Error::io("create work directory", &tmp, e))?;
        let dev = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.dev())
                .map_err(|e| Error::io("stat", p, e))
        };
        if dev(&root)? != dev(&tmp)? {
            return Err(Error::Invalid(
                "upper and work directories are on different filesystems",
            ));
        }
        Ok(Upper {
            root,
            tmp,
            counter: AtomicU64::new(0),
        })
    }

    /// The upper root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Absolute path of `rel`.
    pub fn path(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    /// A fresh, unused path in the work directory.
    pub fn temp(&self) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.tmp.join(format!("t{}.{n}", std::process::id()))
    }

    /// `lstat` of `rel`; `None` if it does not exist.
    pub fn lstat(&self, rel: &Path) -> Result<Option<std::fs::Metadata>> {
        let p = self.path(rel);
        match std::fs::symlink_metadata(&p) {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
            Err(e) => Err(Error::io("stat upper", p, e)),
        }
    }

    /// Is there a whiteout at `rel`?
    pub fn is_whiteout(&self, rel: &Path) -> Result<bool> {
        let p = self.path(rel);
        Ok(match self.lstat(rel)? {
            Some(m) => sys::is_whiteout(&p, &m),
            None => false,
        })
    }

    /// Put a whiteout at `rel`, atomically replacing whatever non-directory is there.
    pub fn whiteout(&self, rel: &Path) -> Result<()> {
        let tmp = self.temp();
        sys::mknod(&tmp, libc::S_IFCHR, 0).map_err(|e| Error::io("create whiteout", &tmp, e))?;
        self.install(&tmp, rel)
    }

    /// Rename the finished object `tmp` (in the work directory) to `rel`, replacing a
    /// non-directory there.
    pub fn install(&self, tmp: &Path, rel: &Path) -> Result<()> {
        self.move_to(tmp, rel).inspect_err(|_| {
            let _ = std::fs::remove_file(tmp);
        })
    }

    /// Rename `src` (absolute, in the upper or work directory) to `rel`, replacing a
    /// non-directory there. A directory replacing a whiteout is swapped in atomically
    /// (`RENAME_EXCHANGE`) and the whiteout then removed, as kernel overlayfs does.
    pub fn move_to(&self, src: &Path, rel: &Path) -> Result<()> {
        let dst = self.path(rel);
        let src_dir = std::fs::symlink_metadata(src)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if src_dir && self.is_whiteout(rel)? {
            nix::fcntl::renameat2(
                None,
                src,
                None,
                &dst,
                nix::fcntl::RenameFlags::RENAME_EXCHANGE,
            )
            .map_err(|e| Error::io("swap directory over whiteout", &dst, e.into()))?;
            return std::fs::remove_file(src)
                .map_err(|e| Error::io("remove replaced whiteout", src, e));
        }
        std::fs::rename(src, &dst).map_err(|e| Error::io("rename into upper", dst, e))
    }

    /// Mark the directory `rel` opaque.
    pub fn set_opaque(&self, rel: &Path) -> Result<()> {
        let p = self.path(rel);
        sys::set_xattr(&p, sys::OPAQUE_XATTR, b"y", 0)
            .map_err(|e| Error::io("set opaque xattr", p, e))
    }

    /// Remove the subtree at `rel`: renamed into the work directory first (atomic), then
    /// deleted.
    pub fn remove_tree(&self, rel: &Path) -> Result<()> {
        let src = self.path(rel);
        let tmp = self.temp();
        std::fs::rename(&src, &tmp).map_err(|e| Error::io("remove from upper", &src, e))?;
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io("remove from work directory", tmp, e))
    }

    /// Remove the non-directory at `rel`.
    pub fn unlink(&self, rel: &Path) -> Result<()> {
        let p = self.path(rel);
        std::fs::remove_file(&p).map_err(|e| Error::io("unlink upper", p, e))
    }

    /// Names in the upper directory `rel`, each with its metadata and whether it is a whiteout.
    pub fn list(&self, rel: &Path) -> Result<Vec<(std::ffi::OsString, std::fs::Metadata, bool)>> {
        let dir = self.path(rel);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read upper directory", dir, e)),
        };
        let mut out = Vec::new();
        for item in rd {
            let item = item.map_err(|e| Error::io("read upper directory", &dir, e))?;
            let p = item.path();
            let m = match std::fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("stat upper", p, e)),
            };
            let wh = sys::is_whiteout(&p, &m);
            out.push((item.file_name(), m, wh));
        }
        Ok(out)
    }
}
