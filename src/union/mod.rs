//! Union tree: merged lower layers, upper directory, copy-up. Knows neither fuser nor HTTP.
//! Layers below the FUSE adapter and above `layer`/`cache`: it may call `layer` (entry types,
//! path helpers) and the OS (std::fs, libc, nix); it must not name fuser types, the cache,
//! the registry or the store — lower bytes come through the [`LowerSource`] trait (a lazily
//! fetched image layer, implemented above the union; a plain directory [`DirLower`]; or an
//! in-memory tar [`TarBytesLower`] for tests), so the union never knows where bytes live.
//!
//! The lower side is one trait, [`LowerBackend`] (`backend.rs`), held as a [`LowerTree`]:
//! [`MergedTree`] applies the typed layer entries (`layer::Entry`: whiteouts and opaque
//! directories already normalised) bottom to top once, giving an immutable tree with stable
//! inode numbers; plain directory lowers (`strata overlay`) are merged by [`DirTree`] instead,
//! one directory at a time when it is first looked into. [`Upper`] is a directory in
//! kernel-overlayfs format (whiteout = char 0/0, opaque directory =
//! `trusted.overlay.opaque=y`), written atomically through a work directory. [`UnionFs`] is
//! the filesystem core: one fallible method per operation, called by `fuse/` (or by tests
//! directly), over a node table (`nodes.rs`) that numbers and tracks the objects the kernel
//! knows.

mod aliases;
mod backend;
mod copyup;
mod dirlower;
mod dirtree;
mod files;
mod fs;
mod lower;
mod nodes;
mod ops;
mod rename;
mod revive;
mod setid;
/// Thin wrappers over the xattr, mknod and time syscalls, and the overlay whiteout rules.
pub mod sys;
mod tree;
mod types;
mod upper;

#[cfg(test)]
mod tree_tests;

pub use backend::{Children, LowerBackend, LowerTree, TreeDirEnt, TreeNode, Xattrs};
pub use dirlower::DirLower;
pub use dirtree::DirTree;
pub use fs::{
    Caller, Ctx, DirEntry, Opened, ReadResult, SetAttr, StatFs, Stats, StatsSnapshot, TimeSpec,
    UnionFs,
};
pub use lower::{LowerFile, LowerRead, LowerSource, TarBytesLower};
pub use nodes::UPPER_BASE;
pub use tree::MergedTree;
pub use upper::Upper;

use std::path::PathBuf;
use std::time::SystemTime;

/// Inode number of the union root (FUSE's root node id).
pub const ROOT_INO: u64 = 1;
/// Longest name accepted (bytes), as on ext4 and overlayfs.
pub const NAME_MAX: usize = 255;

/// Behaviour switches of a [`UnionFs`] (defaults: as kernel overlayfs).
#[derive(Clone, Copy, Debug, Default)]
pub struct UnionOptions {
    /// Let `mknod c 0 0` create a real character device 0/0 (as ext4 does). It is
    /// stored as a 0/0 device carrying the `trusted.overlay.strata.device` marker, so strata
    /// never takes it for a whiteout. Kernel overlayfs cannot show such a device and treats
    /// it as a whiteout; without this switch the call fails with EPERM, as in the kernel.
    /// `strata overlay` and lazy `strata mount --upper` set it (ext4 makes such devices).
    pub allow_chardev00: bool,
    /// Answer `getxattr` of `trusted.overlay.*` names from the lower tree (a read-only layer
    /// view that kernel overlayfs uses as a lower directory: its opaque markers must show).
    pub overlay_xattrs: bool,
}

/// Type of a union object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    CharDev,
    BlockDev,
    Fifo,
    Socket,
}

impl FileKind {
    /// The `S_IFMT` bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::File => libc::S_IFREG,
            FileKind::Dir => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::CharDev => libc::S_IFCHR,
            FileKind::BlockDev => libc::S_IFBLK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::Socket => libc::S_IFSOCK,
        }
    }

    /// Kind from `st_mode`; `None` for an unknown format.
    pub fn from_mode(mode: u32) -> Option<Self> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::File,
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFCHR => FileKind::CharDev,
            libc::S_IFBLK => FileKind::BlockDev,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            _ => return None,
        })
    }
}

/// Attributes of a union object, as `stat` reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: FileKind,
    /// Permission bits (`mode & 0o7777`).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub size: u64,
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub blksize: u32,
    /// Served from the immutable lower tree (the kernel may cache it for long).
    pub lower: bool,
}

/// Why a union operation failed. `fuse/` maps each variant to one errno.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{0}: no such file or directory")]
    NotFound(String),
    #[error("{0}: already exists")]
    Exists(String),
    #[error("{0}: not a directory")]
    NotDir(String),
    #[error("{0}: is a directory")]
    IsDir(String),
    #[error("{0}: directory not empty")]
    NotEmpty(String),
    #[error("name of {0} bytes is longer than {NAME_MAX}")]
    NameTooLong(usize),
    #[error("read-only union (no upper directory)")]
    ReadOnly,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    #[error("not supported: {0}")]
    NotSupported(&'static str),
    #[error("no such extended attribute")]
    NoAttr,
    #[error("unknown inode {0}")]
    StaleInode(u64),
    #[error("unknown file handle {0}")]
    BadHandle(u64),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lower layer {layer}: reading {path}")]
    Lower {
        layer: usize,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("building lower layer entries")]
    Layer(#[from] crate::layer::Error),
}

impl Error {
    /// An I/O failure of `what` on `path`.
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// The OS error code carried by an I/O failure, if any. A lower source's error may carry
    /// its cause with only a kind that names the errno (a fetch deadline: `TimedOut`).
    pub fn os_error(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source.raw_os_error(),
            Error::Lower { source, .. } => {
                source.raw_os_error().or_else(|| kind_errno(source.kind()))
            }
            _ => None,
        }
    }
}

/// The errno an I/O error kind without an OS error code stands for (the kinds a lower source
/// uses to carry a typed cause); `None` for the rest (EIO).
pub fn kind_errno(kind: std::io::ErrorKind) -> Option<i32> {
    use std::io::ErrorKind as K;
    Some(match kind {
        K::TimedOut => libc::ETIMEDOUT,
        K::StorageFull => libc::ENOSPC,
        K::QuotaExceeded => libc::EDQUOT,
        K::ReadOnlyFilesystem => libc::EROFS,
        K::PermissionDenied => libc::EACCES,
        K::OutOfMemory => libc::ENOMEM,
        K::StaleNetworkFileHandle => libc::ESTALE,
        _ => return None,
    })
}

/// `Result` with the union [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Refuse names longer than [`NAME_MAX`], empty names, `.`, `..` and names with `/`.
pub(crate) fn check_name(name: &std::ffi::OsStr) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let b = name.as_bytes();
    if b.len() > NAME_MAX {
        return Err(Error::NameTooLong(b.len()));
    }
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(Error::Invalid("bad file name"));
    }
    Ok(())
}
