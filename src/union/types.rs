//! Plain data types of the [`super::UnionFs`] API: request context, setattr changes,
//! directory entries, open results, read results, statfs and counters.

use super::{FileKind, Result};
use bytes::Bytes;
use futures::future::BoxFuture;
use std::ffi::OsString;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

/// Caller credentials for objects a request creates.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
    pub umask: u32,
    /// A `create` that finds the file and truncates it (`O_TRUNC`) drops its set-ID bits
    /// for this caller (`FUSE_OPEN_KILL_SUIDGID`, see `setid.rs`).
    pub kill_suidgid: Option<Caller>,
}

/// A time in `setattr`.
#[derive(Clone, Copy, Debug)]
pub enum TimeSpec {
    Now,
    Set(SystemTime),
}

/// Who asks for a `setattr`: its (stored) fsuid and fsgid and its thread id, from which its
/// supplementary groups and capabilities are read when a set-group-ID bit depends on them
/// (`setid.rs`; 0: unknown).
#[derive(Clone, Copy, Debug, Default)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// The changes of one `setattr`. None of the fields set (an empty SETATTR, as the kernel
/// sends for `chown(f, -1, -1)` and for a write's privilege drop) still changes ctime.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    /// The kernel asks for S_ISUID/S_ISGID to be dropped with the change
    /// (`FATTR_KILL_SUIDGID`: a chown, or a truncate by a caller without CAP_FSETID).
    pub kill_suidgid: bool,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSpec>,
    pub mtime: Option<TimeSpec>,
    /// The caller, for the set-group-ID bit it drops (`None`: drop nothing beyond `mode`).
    pub caller: Option<Caller>,
}

impl SetAttr {
    /// No change named (ctime moves all the same).
    pub fn is_empty(&self) -> bool {
        self.atime.is_none() && self.mtime.is_none() && self.changes_nothing_else()
    }

    /// Only times named (utimensat): drops no privilege.
    pub fn times_only(&self) -> bool {
        (self.atime.is_some() || self.mtime.is_some()) && self.changes_nothing_else()
    }

    fn changes_nothing_else(&self) -> bool {
        self.mode.is_none() && self.uid.is_none() && self.gid.is_none() && self.size.is_none()
    }
}

/// One directory entry; `offset` is the cookie of the *next* entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: OsString,
    pub ino: u64,
    pub kind: FileKind,
    pub offset: u64,
}

/// Result of `open`/`create`.
#[derive(Clone, Copy, Debug)]
pub struct Opened {
    pub fh: u64,
    /// The file is an immutable lower file (the page cache may be kept across opens).
    pub lower: bool,
}

/// Bytes of a read: ready now, or a future that waits for a lower source.
pub enum ReadResult {
    Ready(Bytes),
    Pending(BoxFuture<'static, Result<Bytes>>),
}

/// `statfs` answer.
#[derive(Clone, Copy, Debug, Default)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// Counters for `strata stats`.
#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) reads: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) lower_reads_waited: AtomicU64,
    pub(crate) copy_ups: AtomicU64,
    pub(crate) lookups: AtomicU64,
}

/// A copy of [`Stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub reads: u64,
    pub bytes_read: u64,
    pub lower_reads_waited: u64,
    pub copy_ups: u64,
    /// `lookup` calls (a walk whose entries came with READDIRPLUS needs almost none).
    pub lookups: u64,
}
