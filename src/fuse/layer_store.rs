//! The FUSE side of the podman additional layer store (`als` implements [`StoreFs`]): a
//! small file system (nothing in it can be written) whose lookups (which may resolve an
//! image and mount a layer view) and reads run as tasks on the tokio runtime given at mount,
//! so dispatch threads never wait on the network. Entries and attributes get 1 s TTLs; failed lookups are not
//! cached. Errors are errno values.

use super::MountError;
use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, Request, SessionACL,
};
use futures::future::BoxFuture;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const TTL: Duration = Duration::from_secs(1);

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Dir,
    File,
    Symlink,
}

/// The attributes of a node.
#[derive(Debug, Clone, Copy)]
pub struct NodeAttr {
    pub ino: u64,
    pub kind: NodeKind,
    pub size: u64,
    pub perm: u16,
}

/// The file system served: inode 1 is the root; errors are errno values.
pub trait StoreFs: Send + Sync + 'static {
    fn lookup(
        self: Arc<Self>,
        parent: u64,
        name: String,
    ) -> BoxFuture<'static, Result<NodeAttr, i32>>;
    fn getattr(&self, ino: u64) -> Result<NodeAttr, i32>;
    fn readdir(&self, ino: u64) -> Result<Vec<(u64, NodeKind, String)>, i32>;
    fn readlink(&self, ino: u64) -> Result<PathBuf, i32>;
    fn read(
        self: Arc<Self>,
        ino: u64,
        offset: u64,
        size: u32,
    ) -> BoxFuture<'static, Result<Vec<u8>, i32>>;
    /// A file `name` created (or mknod) in `parent`: the errno to answer.
    fn create(&self, parent: u64, name: &str) -> i32;
    /// Directory `name` of `parent` removed: the errno to answer.
    fn rmdir(&self, parent: u64, name: &str) -> i32;
}

struct Adapter<S: StoreFs> {
    store: Arc<S>,
    rt: tokio::runtime::Handle,
    started: SystemTime,
}

fn fattr(a: &NodeAttr, t: SystemTime) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: kind(a.kind),
        perm: a.perm,
        nlink: if a.kind == NodeKind::Dir { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn kind(k: NodeKind) -> FileType {
    match k {
        NodeKind::Dir => FileType::Directory,
        NodeKind::File => FileType::RegularFile,
        NodeKind::Symlink => FileType::Symlink,
    }
}

fn name_str(name: &OsStr) -> Option<String> {
    std::str::from_utf8(name.as_bytes())
        .ok()
        .map(str::to_string)
}

impl<S: StoreFs> Filesystem for Adapter<S> {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name_str(name) else {
            return reply.error(Errno::ENOENT);
        };
        let store = self.store.clone();
        let t = self.started;
        self.rt.spawn(async move {
            match store.lookup(parent.0, name).await {
                Ok(a) => reply.entry(&TTL, &fattr(&a, t), Generation(0)),
                Err(e) => reply.error(Errno::from_i32(e)),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.store.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &fattr(&a, self.started)),
            Err(e) => reply.error(Errno::from_i32(e)),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.store.readlink(ino.0) {
            Ok(p) => reply.data(p.as_os_str().as_bytes()),
            Err(e) => reply.error(Errno::from_i32(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let store = self.store.clone();
        self.rt.spawn(async move {
            match store.read(ino.0, offset, size).await {
                Ok(b) => reply.data(&b),
                Err(e) => reply.error(Errno::from_i32(e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.store.readdir(ino.0) {
            Ok(e) => e,
            Err(e) => return reply.error(Errno::from_i32(e)),
        };
        let dots = [
            (ino.0, NodeKind::Dir, ".".to_string()),
            (ino.0, NodeKind::Dir, "..".to_string()),
        ];
        for (i, (child, k, name)) in dots
            .into_iter()
            .chain(entries)
            .enumerate()
            .skip(offset as usize)
        {
            if reply.add(INodeNo(child), i as u64 + 1, kind(k), name) {
                break;
            }
        }
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        _kill_suidgid: bool,
        reply: ReplyCreate,
    ) {
        let name = name_str(name).unwrap_or_default();
        reply.error(Errno::from_i32(self.store.create(parent.0, &name)));
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let name = name_str(name).unwrap_or_default();
        reply.error(Errno::from_i32(self.store.create(parent.0, &name)));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_str(name).unwrap_or_default();
        reply.error(Errno::from_i32(self.store.rmdir(parent.0, &name)));
    }
}

/// A mounted layer store. Dropping it unmounts.
pub struct StoreMount {
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
}

impl StoreMount {
    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmount (detached if busy) and end the session.
    pub fn unmount(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        let Some(s) = self.session.take() else {
            return;
        };
        if super::is_mounted(&self.mountpoint)
            && nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::empty()).is_err()
        {
            let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        }
        drop(s);
    }
}

impl Drop for StoreMount {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Mount `store` at `mountpoint` (allow_other, the kernel checks permissions, fsname
/// `strata-store`; nothing but `create`/`rmdir` answers can be written).
pub fn mount_store<S: StoreFs>(
    store: Arc<S>,
    mountpoint: &Path,
    rt: tokio::runtime::Handle,
) -> Result<StoreMount, MountError> {
    let mut config = Config::default();
    config.acl = SessionACL::All;
    config.n_threads = Some(2);
    config.mount_options = vec![
        MountOption::FSName("strata-store".to_string()),
        MountOption::Subtype("strata".to_string()),
        MountOption::DefaultPermissions,
        // Not RO: containers/storage creates `use` and removes layer directories to count
        // users; the kernel would answer EROFS for it. Nothing else can be written.
        MountOption::RW,
    ];
    let adapter = Adapter {
        store,
        rt,
        started: SystemTime::now(),
    };
    let err = |source| MountError::Mount {
        path: mountpoint.to_path_buf(),
        source,
    };
    let session = fuser::Session::new(adapter, mountpoint, &config).map_err(err)?;
    let session = session.spawn().map_err(err)?;
    Ok(StoreMount {
        session: Some(session),
        mountpoint: mountpoint.to_path_buf(),
    })
}
