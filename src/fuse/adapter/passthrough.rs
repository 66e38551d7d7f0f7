//! Passthrough bookkeeping of the adapter: which inode has a backing file registered with the
//! kernel (shared by its open handles), which handles are open in the kernel's caching mode,
//! and the reply to an open. Part of [`Shared`]; calls `union` for a handle's backing file.

use super::{errno, Shared};
use fuser::{BackingId, FileHandle, FopenFlags, ReplyOpen};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Backing file registered for passthrough on one inode, shared by its open handles.
pub(super) struct Backing {
    id: Arc<BackingId>,
    opens: usize,
}

impl Shared {
    /// Passthrough registration for a handle freshly opened with open(2) `flags`: `Some(id)`
    /// to reply with, or `None` for the normal path. The kernel allows one backing file per
    /// inode and refuses (EIO) to mix passthrough and cached opens of an inode, so: an inode
    /// with a backing file shares it; an inode with cached opens gets another cached open;
    /// only then is a new backing file registered. The core never offers a lower file as
    /// backing on a writable union, so a writer after copy-up can never end up on the lower
    /// file. An `O_DIRECT` open takes the normal path unless the inode has a backing file
    /// (passthrough would hand the flag to the upper filesystem, which may refuse it; the
    /// normal path never passes it on).
    pub(super) fn backing_for(
        &self,
        ino: u64,
        fh: u64,
        flags: i32,
        reg: impl FnOnce(&std::fs::File) -> std::io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        if !self.passthrough.load(Ordering::Relaxed) {
            return None;
        }
        let mut map = self.backing.lock().unwrap_or_else(|p| p.into_inner());
        let mut pt = self.pt_handles.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = map.get_mut(&ino) {
            b.opens += 1;
            pt.insert(fh, ino);
            return Some(b.id.clone());
        }
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        let file = if flags & libc::O_DIRECT != 0 || cached.values().any(|&i| i == ino) {
            None
        } else {
            self.fs.backing_file(fh, self.opts.passthrough)
        };
        let registered = file.map(|f| reg(&f)).and_then(|r| {
            r.inspect_err(|e| tracing::debug!(ino, error = %e, "passthrough refused; normal reads"))
                .ok()
        });
        match registered {
            Some(id) => {
                let id = Arc::new(id);
                map.insert(
                    ino,
                    Backing {
                        id: id.clone(),
                        opens: 1,
                    },
                );
                pt.insert(fh, ino);
                Some(id)
            }
            None => {
                // Decided under the same locks, so no passthrough open can slip in between.
                cached.insert(fh, ino);
                None
            }
        }
    }

    pub(super) fn release_backing(&self, fh: u64) {
        self.cached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
        let Some(ino) = self
            .pt_handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh)
        else {
            return;
        };
        let mut map = self.backing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = map.get_mut(&ino) {
            b.opens = b.opens.saturating_sub(1);
            if b.opens == 0 {
                map.remove(&ino);
            }
        }
    }

    pub(super) fn reply_open(
        &self,
        ino: u64,
        flags: i32,
        r: crate::union::Result<crate::union::Opened>,
        reply: ReplyOpen,
    ) {
        match r {
            Ok(o) => match self.backing_for(ino, o.fh, flags, |f| reply.open_backing(f)) {
                Some(id) => {
                    reply.opened_passthrough(FileHandle(o.fh), FopenFlags::FOPEN_NOFLUSH, &id)
                }
                None => reply.opened(FileHandle(o.fh), Self::open_flags(o.lower)),
            },
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// Reply flags of a file open. `FOPEN_NOFLUSH`: nothing is buffered here (no writeback
    /// cache, no remote locks), so a close costs no FLUSH round trip.
    pub(super) fn open_flags(lower: bool) -> FopenFlags {
        if lower {
            FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH
        } else {
            FopenFlags::FOPEN_NOFLUSH
        }
    }
}
