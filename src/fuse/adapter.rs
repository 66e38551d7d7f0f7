//! The `fuser::Filesystem` implementation: one callback per operation, each decoding its
//! arguments, calling [`UnionFs`] (inline, on the blocking pool when it may copy up, or
//! finishing in a task when a lower read must wait) and replying exactly once. Passthrough
//! bookkeeping (backing files per inode, the open reply) is in `adapter/passthrough.rs`.

use super::{errno, IdMap, MountOptions};
use crate::union::{Attr, Caller, Ctx, FileKind, ReadResult, SetAttr, TimeSpec, UnionFs};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

mod passthrough;
use passthrough::Backing;

/// State shared between the dispatch threads and tasks that reply later.
pub(super) struct Shared {
    fs: Arc<UnionFs>,
    opts: MountOptions,
    passthrough: Arc<AtomicBool>,
    /// ino -> backing id while passthrough handles are open.
    backing: Mutex<HashMap<u64, Backing>>,
    /// fh -> ino of handles opened with passthrough.
    pt_handles: Mutex<HashMap<u64, u64>>,
    /// fh -> ino of file handles opened without passthrough (kernel caching mode).
    cached: Mutex<HashMap<u64, u64>>,
}

pub(super) struct Adapter {
    s: Arc<Shared>,
    rt: tokio::runtime::Handle,
    /// Attached to a connection an earlier server initialised: nodes and handles the kernel
    /// holds may be unknown here and are brought back on first use (`union/revive.rs`).
    restored: bool,
}

fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::BlockDev => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

fn fattr(a: &Attr, ids: &IdMap) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: ids.uid_shown(a.uid),
        gid: ids.gid_shown(a.gid),
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

fn time(t: Option<TimeOrNow>) -> Option<TimeSpec> {
    t.map(|t| match t {
        TimeOrNow::Now => TimeSpec::Now,
        TimeOrNow::SpecificTime(s) => TimeSpec::Set(s),
    })
}

impl Adapter {
    pub(super) fn new(
        fs: Arc<UnionFs>,
        opts: MountOptions,
        rt: tokio::runtime::Handle,
        passthrough: Arc<AtomicBool>,
    ) -> Self {
        let s = Shared {
            fs,
            opts,
            passthrough,
            backing: Mutex::new(HashMap::new()),
            pt_handles: Mutex::new(HashMap::new()),
            cached: Mutex::new(HashMap::new()),
        };
        Adapter {
            s: Arc::new(s),
            rt,
            restored: false,
        }
    }

    /// The adapter for a connection an earlier server initialised (no INIT will come).
    pub(super) fn restored(mut self) -> Self {
        self.restored = true;
        self
    }

    /// After a restart: bring back the nodes `inos` if the kernel holds them from an earlier
    /// server (a failure shows as the operation's own error).
    fn known(&self, inos: &[u64]) {
        if self.restored {
            for &i in inos {
                let _ = self.s.fs.revive(i);
            }
        }
    }

    /// After a restart: open again the handle `fh` on `ino` an earlier server gave out.
    fn adopt(&self, fh: u64, ino: u64, flags: Option<i32>) {
        if self.restored {
            let _ = self.s.fs.adopt_handle(fh, ino, flags);
        }
    }

    /// After a restart: open again the directory handle `fh` on `ino`.
    fn adopt_dir(&self, fh: u64, ino: u64) {
        if self.restored {
            let _ = self.s.fs.adopt_dir(fh, ino);
        }
    }

    /// Credentials for new objects, mapped to the ids stored on disk.
    fn ctx(&self, req: &Request, umask: u32) -> Ctx {
        Ctx {
            uid: self.s.opts.ids.uid_stored(req.uid()),
            gid: self.s.opts.ids.gid_stored(req.gid()),
            umask,
            kill_suidgid: None,
        }
    }

    /// Who asks, for the set-ID bits a change drops (`union/setid.rs`).
    fn caller(&self, req: &Request) -> Caller {
        Caller {
            uid: self.s.opts.ids.uid_stored(req.uid()),
            gid: self.s.opts.ids.gid_stored(req.gid()),
            pid: req.pid(),
        }
    }

    fn entry(&self, reply: ReplyEntry, r: crate::union::Result<Attr>) {
        self.s.entry(reply, r)
    }

    /// Run `f` on the blocking pool (it may copy a lower file up and wait for its data).
    fn blocking(&self, f: impl FnOnce(&UnionFs) + Send + 'static) {
        let fs = self.s.fs.clone();
        self.rt.spawn_blocking(move || f(&fs));
    }
}

impl Shared {
    fn ttl(&self, a: &Attr) -> Duration {
        if a.lower {
            self.opts.lower_ttl
        } else {
            self.opts.upper_ttl
        }
    }

    fn entry(&self, reply: ReplyEntry, r: crate::union::Result<Attr>) {
        match r {
            Ok(a) => reply.entry(&self.ttl(&a), &fattr(&a, &self.opts.ids), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

fn reply_empty(reply: ReplyEmpty, r: crate::union::Result<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

impl Filesystem for Adapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.add_capabilities(
            // READDIRPLUS for every readdir, not only the first reply of a directory
            // (READDIRPLUS_AUTO): a walk then gets every entry's attributes with its name
            // and sends no LOOKUP per entry (for `find` on 1000-entry directories, AUTO
            // left ~80% of the entries to one LOOKUP round trip each). The core answers
            // attributes from memory, so listing without stat costs little more.
            InitFlags::FUSE_DO_READDIRPLUS
                | InitFlags::FUSE_PARALLEL_DIROPS
                | InitFlags::FUSE_CACHE_SYMLINKS,
        );
        // The kernel sets SB_NOSEC: after an inode's first write finds no set-ID bit and no
        // `security.capability`, its later writes skip that check (one GETXATTR round trip
        // per write without it). strata then drops set-ID bits itself (`union/setid.rs`).
        let _ = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        // Passthrough for upper files (by default) and, when asked, lower files with a
        // local copy. A read-only union without that request has no file to pass through:
        // it does not ask (passthrough raises the mount's stacking depth).
        let want_pt =
            self.s.opts.passthrough || (self.s.opts.upper_passthrough && !self.s.opts.read_only);
        if want_pt
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.s.passthrough.store(true, Ordering::Relaxed);
        }
        let _ = config.set_max_write(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.known(&[parent.0]);
        self.entry(reply, self.s.fs.lookup(parent.0, name));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.s.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.known(&[ino.0]);
        match self.s.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&self.s.ttl(&a), &fattr(&a, &self.s.opts.ids)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        kill_suidgid: bool,
        reply: ReplyAttr,
    ) {
        self.known(&[ino.0]);
        let ids = self.s.opts.ids.clone();
        let s = SetAttr {
            kill_suidgid,
            mode,
            uid: uid.map(|u| ids.uid_stored(u)),
            gid: gid.map(|g| ids.gid_stored(g)),
            size,
            atime: time(atime),
            mtime: time(mtime),
            caller: Some(self.caller(req)),
        };
        let ttl = self.s.opts.upper_ttl;
        let done = move |r: crate::union::Result<Attr>| match r {
            Ok(a) => reply.attr(&ttl, &fattr(&a, &ids)),
            Err(e) => reply.error(errno(&e)),
        };
        if self.s.fs.needs_copy_up(ino.0) {
            // The copy-up may wait for lower data: finish on the blocking pool.
            self.blocking(move |fs| done(fs.setattr(ino.0, fh.map(|f| f.0), &s)));
        } else {
            done(self.s.fs.setattr(ino.0, fh.map(|f| f.0), &s));
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.known(&[ino.0]);
        match self.s.fs.readlink(ino.0) {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.known(&[parent.0]);
        self.entry(
            reply,
            self.s
                .fs
                .mknod(&self.ctx(req, umask), parent.0, name, mode, rdev),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.known(&[parent.0]);
        self.entry(
            reply,
            self.s.fs.mkdir(&self.ctx(req, umask), parent.0, name, mode),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.known(&[parent.0]);
        // Unlinking a name of a hard-linked lower file copies it up (may wait for data):
        // only that case goes to the blocking pool.
        if let Some(r) = self.s.fs.try_unlink(parent.0, name) {
            return reply_empty(reply, r);
        }
        let name = name.to_os_string();
        self.blocking(move |fs| reply_empty(reply, fs.unlink(parent.0, &name)));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.known(&[parent.0]);
        reply_empty(reply, self.s.fs.rmdir(parent.0, name));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.known(&[parent.0]);
        self.entry(
            reply,
            self.s
                .fs
                .symlink(&self.ctx(req, 0), parent.0, link_name, target),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.known(&[parent.0, newparent.0]);
        // Only a rename that copies lower file data up (may wait for it) leaves this thread.
        if let Some(r) = self
            .s
            .fs
            .try_rename(parent.0, name, newparent.0, newname, flags.bits())
        {
            return reply_empty(reply, r);
        }
        let (name, newname) = (name.to_os_string(), newname.to_os_string());
        self.blocking(move |fs| {
            reply_empty(
                reply,
                fs.rename(parent.0, &name, newparent.0, &newname, flags.bits()),
            )
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.known(&[ino.0, newparent.0]);
        let newname = newname.to_os_string();
        let ttl = self.s.opts.upper_ttl;
        let ids = self.s.opts.ids.clone();
        self.blocking(move |fs| match fs.link(ino.0, newparent.0, &newname) {
            Ok(a) => reply.entry(&ttl, &fattr(&a, &ids), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.known(&[ino.0]);
        let flags = flags.0;
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if write && self.s.fs.needs_copy_up(ino.0) {
            // The copy-up may wait for lower data: finish on the blocking pool.
            let s = self.s.clone();
            self.rt.spawn_blocking(move || {
                let r = s.fs.open(ino.0, flags);
                s.reply_open(ino.0, flags, r, reply);
            });
            return;
        }
        self.s
            .reply_open(ino.0, flags, self.s.fs.open(ino.0, flags), reply);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.adopt(fh.0, ino.0, Some(flags.0));
        match self.s.fs.read(fh.0, offset, size) {
            Ok(ReadResult::Ready(b)) => reply.data(&b),
            Ok(ReadResult::Pending(fut)) => {
                self.rt.spawn(async move {
                    match fut.await {
                        Ok(b) => reply.data(&b),
                        Err(e) => reply.error(errno(&e)),
                    }
                });
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.adopt(fh.0, ino.0, Some(flags.0));
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            if let Err(e) = self.s.fs.kill_suidgid(fh.0, &self.caller(req)) {
                return reply.error(errno(&e));
            }
        }
        match self.s.fs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        if self.restored && self.s.fs.handle_ino(fh.0).is_err() {
            // A handle of an earlier server: its data went to the upper file already.
            return reply.ok();
        }
        reply_empty(reply, self.s.fs.flush(fh.0));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.s.release_backing(fh.0);
        if self.restored && self.s.fs.handle_ino(fh.0).is_err() {
            return reply.ok();
        }
        reply_empty(reply, self.s.fs.release(fh.0));
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.adopt(fh.0, ino.0, None);
        reply_empty(reply, self.s.fs.fsync(fh.0, datasync));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.known(&[ino.0]);
        match self.s.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.adopt_dir(fh.0, ino.0);
        let r = self.s.fs.readdir_each(fh.0, offset, |d| {
            reply.add(INodeNo(d.ino), d.offset, file_type(d.kind), &d.name)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.adopt_dir(fh.0, ino.0);
        // The core counts a lookup for each entry accepted here, and stops at the first one
        // that does not fit (not counted).
        let r = self.s.fs.readdirplus_each(fh.0, offset, |d, a| {
            reply.add(
                INodeNo(a.ino),
                d.offset,
                &d.name,
                &self.s.ttl(a),
                &fattr(a, &self.s.opts.ids),
                Generation(0),
            )
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        if self.restored && self.s.fs.handle_ino(fh.0).is_err() {
            return reply.ok();
        }
        reply_empty(reply, self.s.fs.releasedir(fh.0));
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.s.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.known(&[ino.0]);
        let Some(name) = name.to_str().map(str::to_string) else {
            return reply.error(Errno::EINVAL);
        };
        let value = value.to_vec();
        self.blocking(move |fs| reply_empty(reply, fs.setxattr(ino.0, &name, &value, flags)));
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.known(&[ino.0]);
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENODATA);
        };
        match self.s.fs.getxattr(ino.0, name) {
            Ok(v) => reply_xattr(reply, size, &v),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.known(&[ino.0]);
        match self.s.fs.listxattr(ino.0) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(n.as_bytes());
                    buf.push(0);
                }
                reply_xattr(reply, size, &buf);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.known(&[ino.0]);
        let Some(name) = name.to_str().map(str::to_string) else {
            return reply.error(Errno::ENODATA);
        };
        self.blocking(move |fs| reply_empty(reply, fs.removexattr(ino.0, &name)));
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        kill_suidgid: bool,
        reply: ReplyCreate,
    ) {
        self.known(&[parent.0]);
        let ctx = Ctx {
            kill_suidgid: kill_suidgid.then(|| self.caller(req)),
            ..self.ctx(req, umask)
        };
        match self.s.fs.create(&ctx, parent.0, name, mode, flags) {
            Ok((a, o)) => {
                let ttl = self.s.ttl(&a);
                match self
                    .s
                    .backing_for(a.ino, o.fh, flags, |f| reply.open_backing(f))
                {
                    Some(id) => reply.created_passthrough(
                        &ttl,
                        &fattr(&a, &self.s.opts.ids),
                        Generation(0),
                        FileHandle(o.fh),
                        FopenFlags::FOPEN_NOFLUSH,
                        &id,
                    ),
                    None => reply.created(
                        &ttl,
                        &fattr(&a, &self.s.opts.ids),
                        Generation(0),
                        FileHandle(o.fh),
                        Shared::open_flags(o.lower),
                    ),
                }
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.adopt(fh.0, ino.0, None);
        reply_empty(reply, self.s.fs.fallocate(fh.0, mode, offset, length));
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.adopt(fh.0, ino.0, None);
        match self.s.fs.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(errno(&e)),
        }
    }
}
