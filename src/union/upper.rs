//! The upper directory, in kernel-overlayfs format, and its work directory.
//!
//! Whiteout = character device 0/0; opaque directory = `trusted.overlay.opaque=y`. Everything
//! that must appear atomically (copy-ups, whiteouts over existing entries, new objects over a
//! whiteout) is built under `<work>/strata-tmp` and renamed into place; work and upper must be
//! on one filesystem. Other new objects are made in place by the caller (`ops.rs`), as kernel
//! overlayfs does. Paths handed in are relative to the upper root. Knows nothing of the
//! lower tree.
//!
//! A union path may be longer than the OS takes in one argument (PATH_MAX, 4096 bytes with
//! the NUL): a path inside the mount near PATH_MAX plus the upper root's own path, or a deep
//! tree reached through relative paths. [`Upper::path`] therefore gives an [`UPath`]: the
//! absolute path while it fits, otherwise the parent directory opened fd-relative from a
//! descriptor of the upper root (`openat`, a chunk of components at a time) and the object
//! named through that descriptor as `/proc/self/fd/N/NAME`, so every path-based call
//! (including the xattr calls, which have no `*at` form) resolves the name relative to the
//! parent's descriptor and ENAMETOOLONG comes only where the kernel gives it to the caller.

use super::sys;
use super::{Error, Result};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// An overlay-format upper directory plus its work directory.
#[derive(Debug)]
pub struct Upper {
    root: PathBuf,
    /// `O_PATH` descriptor of `root`: where fd-relative walks of long paths start.
    root_fd: OwnedFd,
    tmp: PathBuf,
    counter: AtomicU64,
    /// This process's id, part of every temp name (read once: it is a syscall).
    pid: u32,
}

/// A path the OS accepts for an object of the upper (see the module docs): the absolute
/// path, or `/proc/self/fd/N/NAME` through the parent directory's descriptor, which lives
/// as long as this value. Dereferences to the path to hand to the OS; converts into the
/// absolute path for messages only.
#[derive(Debug)]
pub struct UPath {
    os: PathBuf,
    shown: Option<PathBuf>,
    _dir: Option<OwnedFd>,
}

impl std::ops::Deref for UPath {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.os
    }
}

impl AsRef<Path> for UPath {
    fn as_ref(&self) -> &Path {
        &self.os
    }
}

impl From<&UPath> for PathBuf {
    /// The absolute path, for messages (it may be too long to hand to the OS).
    fn from(p: &UPath) -> PathBuf {
        p.shown.clone().unwrap_or_else(|| p.os.clone())
    }
}

impl From<UPath> for PathBuf {
    fn from(p: UPath) -> PathBuf {
        PathBuf::from(&p)
    }
}

/// Longest run of components opened by one `openat` of a walk (well inside PATH_MAX).
const WALK_CHUNK: usize = 2048;

/// `openat(dir, rel, O_PATH | O_DIRECTORY)` (`dir` = `AT_FDCWD` for the calling process's
/// working directory or an absolute `rel`).
fn open_dir_at(dir: std::os::fd::RawFd, rel: &Path) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(rel.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is NUL-terminated and outlives the call; `dir` is AT_FDCWD or a descriptor
    // the caller keeps open for the call.
    let fd = unsafe {
        libc::openat(
            dir,
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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
        let root_fd = open_dir_at(libc::AT_FDCWD, &root)
            .map_err(|e| Error::io("open upper directory", &root, e))?;
        Ok(Upper {
            root,
            root_fd,
            tmp,
            counter: AtomicU64::new(0),
            pid: std::process::id(),
        })
    }

    /// The upper root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A path of `rel` the OS accepts (see [`UPath`]). Fails only when the parent of a long
    /// `rel` cannot be opened (it does not exist, or is not a directory).
    pub fn path(&self, rel: &Path) -> Result<UPath> {
        let abs = if rel.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        };
        if abs.as_os_str().len() < libc::PATH_MAX as usize {
            return Ok(UPath {
                os: abs,
                shown: None,
                _dir: None,
            });
        }
        let (parent, name) = match (rel.parent(), rel.file_name()) {
            (Some(p), Some(n)) => (p, n),
            _ => (Path::new(""), rel.as_os_str()),
        };
        let dir = self
            .open_dir(parent)
            .map_err(|e| Error::io("open upper directory", &abs, e))?;
        let os = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
        Ok(UPath {
            os,
            shown: Some(abs),
            _dir: Some(dir),
        })
    }

    /// Open the upper directory `rel` (`O_PATH`), fd-relative from the upper root, a chunk
    /// of components at a time so that no single argument nears PATH_MAX.
    pub fn open_dir(&self, rel: &Path) -> std::io::Result<OwnedFd> {
        let mut fd = self.root_fd.try_clone()?;
        let mut chunk = PathBuf::new();
        for c in rel.components() {
            let c = c.as_os_str();
            if !chunk.as_os_str().is_empty() && chunk.as_os_str().len() + c.len() >= WALK_CHUNK {
                fd = open_dir_at(fd.as_raw_fd(), &chunk)?;
                chunk.clear();
            }
            chunk.push(c);
        }
        if !chunk.as_os_str().is_empty() {
            fd = open_dir_at(fd.as_raw_fd(), &chunk)?;
        }
        Ok(fd)
    }

    /// A fresh, unused path in the work directory.
    pub fn temp(&self) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.tmp.join(format!("t{}.{n}", self.pid))
    }

    /// `lstat` of `rel`; `None` if it does not exist.
    pub fn lstat(&self, rel: &Path) -> Result<Option<std::fs::Metadata>> {
        let p = match self.path(rel) {
            Ok(p) => p,
            Err(e) if matches!(e.os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        match std::fs::symlink_metadata(&p) {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
            Err(e) => Err(Error::io("stat upper", &p, e)),
        }
    }

    /// Is there a whiteout at `rel`?
    pub fn is_whiteout(&self, rel: &Path) -> Result<bool> {
        let p = self.path(rel)?;
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

    /// [`install`](Self::install) of a `tmp` known not to be a directory (a plain rename:
    /// it replaces a whiteout or any other non-directory at `rel`).
    pub fn install_nondir(&self, tmp: &Path, rel: &Path) -> Result<()> {
        let dst = self.path(rel)?;
        std::fs::rename(tmp, &dst).map_err(|e| {
            let _ = std::fs::remove_file(tmp);
            Error::io("rename into upper", &dst, e)
        })
    }

    /// Rename `src` (absolute, in the upper or work directory) to `rel`, replacing a
    /// non-directory there. A directory replacing a whiteout is swapped in atomically
    /// (`RENAME_EXCHANGE`) and the whiteout then removed, as kernel overlayfs does.
    pub fn move_to(&self, src: &Path, rel: &Path) -> Result<()> {
        let dst = self.path(rel)?;
        let src_dir = std::fs::symlink_metadata(src)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if src_dir && self.is_whiteout(rel)? {
            nix::fcntl::renameat2(
                None,
                src,
                None,
                &*dst,
                nix::fcntl::RenameFlags::RENAME_EXCHANGE,
            )
            .map_err(|e| Error::io("swap directory over whiteout", &dst, e.into()))?;
            return std::fs::remove_file(src)
                .map_err(|e| Error::io("remove replaced whiteout", src, e));
        }
        std::fs::rename(src, &dst).map_err(|e| Error::io("rename into upper", &dst, e))
    }

    /// Mark the directory `rel` opaque.
    pub fn set_opaque(&self, rel: &Path) -> Result<()> {
        let p = self.path(rel)?;
        sys::set_xattr(&p, sys::OPAQUE_XATTR, b"y", 0)
            .map_err(|e| Error::io("set opaque xattr", &p, e))
    }

    /// Remove the subtree at `rel`: renamed into the work directory first (atomic), then
    /// deleted.
    pub fn remove_tree(&self, rel: &Path) -> Result<()> {
        let src = self.path(rel)?;
        let tmp = self.temp();
        std::fs::rename(&src, &tmp).map_err(|e| Error::io("remove from upper", &src, e))?;
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io("remove from work directory", tmp, e))
    }

    /// Remove the non-directory at `rel`.
    pub fn unlink(&self, rel: &Path) -> Result<()> {
        let p = self.path(rel)?;
        std::fs::remove_file(&p).map_err(|e| Error::io("unlink upper", &p, e))
    }

    /// Names in the upper directory `rel`, each with its metadata and whether it is a whiteout.
    pub fn list(&self, rel: &Path) -> Result<Vec<(std::ffi::OsString, std::fs::Metadata, bool)>> {
        let dir = match self.path(rel) {
            Ok(d) => d,
            Err(e) if e.os_error() == Some(libc::ENOENT) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read upper directory", &dir, e)),
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
