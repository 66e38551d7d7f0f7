//! FUSE adapter: the only module that names fuser types.
//!
//! A thin translation from fuser 0.18 callbacks to [`UnionFs`] calls: decode, call the core,
//! reply. Lower reads that would wait (the source's `start_read` found bytes missing) move their
//! `ReplyData` into a task on the tokio runtime given at mount, so the dispatch threads never
//! wait on the network; operations that may copy a lower file up (and so fetch its data) run
//! on the runtime's blocking pool, the rest inline. Entries and attributes get long TTLs,
//! lower and upper alike: every change to the union goes through this connection (the
//! kernel refreshes what it changes: replies carry new attributes, writes, unlinks and
//! renames invalidate), copy-ups keep inode numbers and shown attributes, and nothing else
//! may write the upper while mounted (as with kernel overlayfs). Lower files get
//! `KEEP_CACHE`; no file open asks for FLUSH (nothing is buffered here). FUSE passthrough
//! serves upper files by default and lower files with a local copy when asked for, where the
//! kernel allows it, with the normal read path as the fallback. [`errno`] is the one place union errors become errno values. The podman
//! additional layer store has its own small adapter ([`layer_store`], over a [`layer_store::StoreFs`]
//! that `als` implements). May call `union`; nothing below it calls this module.

mod adapter;
pub mod layer_store;

use crate::union::{Error as UnionError, StatsSnapshot, UnionFs};
use fuser::{BackgroundSession, Config, Errno, MountOption, SessionACL};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Let other users (containers' users) use the mount (`allow_other`).
    pub allow_other: bool,
    /// Also serve lower files that have a local copy by FUSE passthrough (read-only unions
    /// only; needs CAP_SYS_ADMIN; falls back silently).
    pub passthrough: bool,
    /// Serve upper files by FUSE passthrough (reads and writes go straight to the upper
    /// file; needs CAP_SYS_ADMIN; falls back silently). On by default.
    pub upper_passthrough: bool,
    /// Event-loop threads reading /dev/fuse.
    pub threads: usize,
    /// Mount read-only.
    pub read_only: bool,
    /// Honour device files and setuid bits (a container rootfs needs both).
    pub dev_suid: bool,
    /// Entry / attribute TTL for immutable lower objects.
    pub lower_ttl: Duration,
    /// Entry / attribute TTL for upper objects (long: the kernel sees every change, see the
    /// module docs).
    pub upper_ttl: Duration,
    /// Source name shown in /proc/self/mountinfo.
    pub fsname: String,
    /// uid/gid translation between the disk and callers (fuse-overlayfs `uidmapping=`,
    /// `gidmapping=`, `squash_to_*`); the default shows ids unchanged.
    pub ids: IdMap,
}

/// One range of an id mapping: ids `stored .. stored+len` on disk are shown to callers as
/// `shown .. shown+len` (fuse-overlayfs `uidmapping=STORED:SHOWN:LEN`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub stored: u32,
    pub shown: u32,
    pub len: u32,
}

/// uid/gid translation applied by the adapter: attributes replied are mapped disk -> caller
/// (then squashed if asked), ids of new objects and chown caller -> disk. Ids outside every
/// range become the overflow id 65534, as in fuse-overlayfs. No ranges = identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMap {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
    /// Report every owner as this uid (`squash_to_root` = 0, `squash_to_uid=N`).
    pub squash_uid: Option<u32>,
    /// Report every group as this gid (`squash_to_root` = 0, `squash_to_gid=N`).
    pub squash_gid: Option<u32>,
}

/// The id shown for ids without a mapping.
pub const OVERFLOW_ID: u32 = 65534;

fn map_id(ranges: &[IdRange], id: u32, to_shown: bool) -> u32 {
    if ranges.is_empty() {
        return id;
    }
    for r in ranges {
        let (from, to) = if to_shown {
            (r.stored, r.shown)
        } else {
            (r.shown, r.stored)
        };
        if id >= from && u64::from(id) < u64::from(from) + u64::from(r.len) {
            return to + (id - from);
        }
    }
    OVERFLOW_ID
}

impl IdMap {
    /// Is this the identity (nothing to translate)?
    pub fn is_identity(&self) -> bool {
        *self == IdMap::default()
    }
    pub fn uid_shown(&self, uid: u32) -> u32 {
        self.squash_uid
            .unwrap_or_else(|| map_id(&self.uids, uid, true))
    }
    pub fn gid_shown(&self, gid: u32) -> u32 {
        self.squash_gid
            .unwrap_or_else(|| map_id(&self.gids, gid, true))
    }
    pub fn uid_stored(&self, uid: u32) -> u32 {
        map_id(&self.uids, uid, false)
    }
    pub fn gid_stored(&self, gid: u32) -> u32 {
        map_id(&self.gids, gid, false)
    }
    /// Parse a fuse-overlayfs mapping list `STORED:SHOWN:LEN[:STORED:SHOWN:LEN...]`.
    pub fn parse_ranges(s: &str) -> Result<Vec<IdRange>, String> {
        let nums: Vec<u32> = s
            .split(':')
            .map(|x| {
                x.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("invalid id mapping {s:?}: {x:?} is not a number"))
            })
            .collect::<Result<_, _>>()?;
        if nums.is_empty() || !nums.len().is_multiple_of(3) {
            return Err(format!(
                "invalid id mapping {s:?}: expected STORED:SHOWN:LEN triples"
            ));
        }
        Ok(nums
            .chunks(3)
            .map(|c| IdRange {
                stored: c[0],
                shown: c[1],
                len: c[2],
            })
            .collect())
    }
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            allow_other: true,
            passthrough: false,
            upper_passthrough: true,
            threads: 2,
            read_only: false,
            dev_suid: true,
            lower_ttl: Duration::from_secs(24 * 3600),
            upper_ttl: Duration::from_secs(24 * 3600),
            fsname: "strata".to_string(),
            ids: IdMap::default(),
        }
    }
}

/// Why a mount failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mounting FUSE at {path}")]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unmounting {path}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A live mount. Dropping it unmounts and waits for the session to end.
pub struct MountHandle {
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
    fs: Arc<UnionFs>,
    passthrough: Arc<std::sync::atomic::AtomicBool>,
    /// A duplicate of the connection's /dev/fuse descriptor (to hand over to a supervisor or
    /// a successor; all dispatch threads share this one open file, so a copy held elsewhere
    /// keeps every request in flight alive when this process dies).
    device: OwnedFd,
    /// The connection's `abort` file under /sys/fs/fuse/connections, opened while the mount
    /// was known to hold its number (the mount's st_dev). Once the superblock is gone (an
    /// unmount by anyone) the number is free and a later mount may get it: a write to this
    /// open file reaches only our connection, or nothing if it has ended; a write by path
    /// could abort a stranger's mount.
    abort: Option<std::fs::File>,
}

impl MountHandle {
    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The filesystem core behind the mount.
    pub fn fs(&self) -> &Arc<UnionFs> {
        &self.fs
    }

    /// Read / copy-up counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.fs.stats()
    }

    /// Did the kernel accept FUSE passthrough for this mount?
    pub fn passthrough_active(&self) -> bool {
        self.passthrough.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The connection's /dev/fuse descriptor.
    pub fn device(&self) -> BorrowedFd<'_> {
        self.device.as_fd()
    }

    /// Unmount now and wait for the session threads.
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.finish()
    }

    /// Wait until the filesystem is unmounted from elsewhere (`umount`, `fusermount3 -u`).
    pub fn join(mut self) -> Result<(), MountError> {
        match self.session.take() {
            Some(s) => s.join().map_err(|source| MountError::Unmount {
                path: self.mountpoint.clone(),
                source,
            }),
            None => Ok(()),
        }
    }

    fn finish(&mut self) -> Result<(), MountError> {
        let Some(s) = self.session.take() else {
            return Ok(());
        };
        let err = |source| MountError::Unmount {
            path: self.mountpoint.clone(),
            source,
        };
        if is_mounted(&self.mountpoint) {
            // Unmount by path (an attached connection has no mount object of ours; fuser's
            // own umount fails on a path unmounted already).
            if nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::empty()).is_err() {
                let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        // Copies of the device (ours, a supervisor's) keep the connection alive after the
        // unmount: end it, so the dispatch threads see ENODEV and return.
        if let Some(mut f) = self.abort.take() {
            let _ = std::io::Write::write_all(&mut f, b"1");
            return s.join().map_err(err);
        }
        drop(s);
        Ok(())
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!(error = %e, "unmount on drop failed");
        }
    }
}

/// Mount `fs` at `mountpoint`. Returns once the kernel's INIT has been answered, i.e. when
/// the mount is usable (no sleeping needed). `rt` runs lower reads that must wait and
/// copy-ups.
pub fn mount(
    fs: Arc<UnionFs>,
    mountpoint: impl AsRef<Path>,
    opts: MountOptions,
    rt: tokio::runtime::Handle,
) -> Result<MountHandle, MountError> {
    let mountpoint = mountpoint.as_ref().to_path_buf();
    let mut mo = vec![
        MountOption::FSName(opts.fsname.clone()),
        MountOption::Subtype("strata".to_string()),
        MountOption::DefaultPermissions,
        if opts.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];
    if opts.dev_suid {
        mo.push(MountOption::Dev);
        mo.push(MountOption::Suid);
    }
    let mut config = session_config(&opts);
    config.mount_options = mo;
    let passthrough = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let adapter = adapter::Adapter::new(fs.clone(), opts, rt, passthrough.clone());
    let err = |source| MountError::Mount {
        path: mountpoint.clone(),
        source,
    };
    let session = fuser::Session::new(adapter, &mountpoint, &config).map_err(err)?;
    let device = session.as_fd().try_clone_to_owned().map_err(err)?;
    let session = session.spawn().map_err(err)?;
    let abort = connection_abort_file(&mountpoint);
    Ok(MountHandle {
        session: Some(session),
        mountpoint,
        fs,
        passthrough,
        device,
        abort,
    })
}

/// Session settings shared by [`mount`] and [`attach`].
fn session_config(opts: &MountOptions) -> Config {
    let mut config = Config::default();
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads.max(1));
    // One open file for all threads (no FUSE_DEV_IOC_CLONE): requests a thread has read
    // live in that file's queue, so a copy of the descriptor kept by a supervisor keeps them
    // for a successor to have resent when this process dies (a clone's queue would be
    // aborted with its file).
    config.clone_fd = false;
    config
}

/// Serve `fs` on the FUSE connection `device` that an earlier process set up and
/// initialised (mounted at `mountpoint`; `passthrough` = the kernel accepted passthrough at
/// its INIT). Nodes and handles the kernel holds from the earlier server are brought back
/// on first use. Call [`resend`] once the earlier server is gone, so that the requests it
/// had read and not answered come again.
pub fn attach(
    fs: Arc<UnionFs>,
    device: OwnedFd,
    mountpoint: impl AsRef<Path>,
    opts: MountOptions,
    passthrough: bool,
    rt: tokio::runtime::Handle,
) -> Result<MountHandle, MountError> {
    let mountpoint = mountpoint.as_ref().to_path_buf();
    let config = session_config(&opts);
    let err = |source| MountError::Mount {
        path: mountpoint.clone(),
        source,
    };
    let mine = device.try_clone().map_err(err)?;
    let pt = Arc::new(std::sync::atomic::AtomicBool::new(
        passthrough && (opts.passthrough || opts.upper_passthrough),
    ));
    let adapter = adapter::Adapter::new(fs.clone(), opts, rt, pt.clone()).restored();
    let session = fuser::Session::from_fd_initialized(adapter, device, config.acl, config)
        .spawn()
        .map_err(err)?;
    let abort = connection_abort_file(&mountpoint);
    Ok(MountHandle {
        session: Some(session),
        mountpoint,
        fs,
        passthrough: pt,
        device: mine,
        abort,
    })
}

/// `FUSE_NOTIFY_RESEND` (Linux 6.9+): the kernel queues again every request of the
/// connection `device` that was read and not answered (by a server that died).
pub fn resend(device: BorrowedFd<'_>) -> std::io::Result<()> {
    const FUSE_NOTIFY_RESEND: i32 = 7;
    let mut msg = [0u8; 16];
    msg[0..4].copy_from_slice(&16u32.to_ne_bytes());
    msg[4..8].copy_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
    // unique = 0: a notification.
    let n = nix::unistd::write(device, &msg)?;
    if n != msg.len() {
        return Err(std::io::Error::other("short write of FUSE_NOTIFY_RESEND"));
    }
    Ok(())
}

/// The `abort` file of the FUSE connection of the mount at `mountpoint` (its st_dev names
/// it under /sys/fs/fuse/connections), opened for writing, if that directory knows it.
fn connection_abort_file(mountpoint: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(mountpoint).ok()?.dev();
    let dir = format!("/sys/fs/fuse/connections/{dev}");
    if !Path::new(&dir).exists() {
        // fusectl not mounted yet (root may mount it; best effort).
        let _ = nix::mount::mount(
            Some("fusectl"),
            "/sys/fs/fuse/connections",
            Some("fusectl"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(format!("{dir}/abort"))
        .ok()
}

/// Whether `p` is a mount point (per /proc/self/mountinfo).
pub fn is_mounted(p: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = p.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4).map(|m| m.replace("\\040", " ")) == Some(want.to_string()))
}

/// The errno a union error becomes (unknown failures: EIO).
pub fn errno(e: &UnionError) -> Errno {
    let code = match e {
        UnionError::NotFound(_) => libc::ENOENT,
        UnionError::Exists(_) => libc::EEXIST,
        UnionError::NotDir(_) => libc::ENOTDIR,
        UnionError::IsDir(_) => libc::EISDIR,
        UnionError::NotEmpty(_) => libc::ENOTEMPTY,
        UnionError::NameTooLong(_) => libc::ENAMETOOLONG,
        UnionError::ReadOnly => libc::EROFS,
        UnionError::Invalid(_) => libc::EINVAL,
        UnionError::NotPermitted(_) => libc::EPERM,
        UnionError::NotSupported(_) => libc::EOPNOTSUPP,
        UnionError::NoAttr => libc::ENODATA,
        UnionError::StaleInode(_) => libc::ESTALE,
        UnionError::BadHandle(_) => libc::EBADF,
        UnionError::Io { .. } | UnionError::Lower { .. } => e.os_error().unwrap_or(libc::EIO),
        _ => libc::EIO,
    };
    Errno::from_i32(code)
}
