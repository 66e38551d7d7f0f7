//! [`UnionFs`]: the union filesystem core — the union namespace: lookup, getattr, readlink,
//! readdir. It holds the lower tree (a [`LowerTree`], whichever backend), the lower sources,
//! the optional upper and the node table ([`NodeTable`], `nodes.rs`), which it uses through
//! methods under one mutex. Open files live in `files.rs`, mutating operations in `ops.rs`,
//! copy-up in `copyup.rs`. It must not name fuser types, and lower data is never fetched
//! while the node table is locked.
//!
//! Model: a union path is the upper entry at that path if there is one (a whiteout hides the
//! name), otherwise the lower tree's entry, unless an upper directory on the way is opaque.
//! Objects are nodes keyed by inode number: lower objects keep their tree number (also after
//! copy-up), upper-only objects get numbers above the tree. A node remembers the names it was
//! found under (`aliases`, parent inode + name), so paths follow directory renames.

use super::backend::{LowerTree, TreeNode};
use super::files::Handle;
use super::lower::{LowerFile, LowerSource};
use super::nodes::NodeTable;
use super::upper::Upper;
use super::{check_name, sys, Attr, Error, FileKind, Result, ROOT_INO};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use super::types::{
    Caller, Ctx, DirEntry, Opened, ReadResult, SetAttr, StatFs, Stats, StatsSnapshot, TimeSpec,
};

/// The union filesystem core; see the module docs.
pub struct UnionFs {
    pub(crate) tree: LowerTree,
    pub(crate) sources: Vec<Arc<dyn LowerSource>>,
    pub(crate) upper: Option<Upper>,
    pub(crate) rt: Option<tokio::runtime::Handle>,
    pub(crate) state: Mutex<NodeTable>,
    pub(crate) handles: Mutex<HashMap<u64, Arc<Handle>>>,
    pub(crate) next_fh: AtomicU64,
    pub(crate) stats: Arc<Stats>,
    pub(crate) opts: super::UnionOptions,
}

pub(crate) fn ts(t: crate::layer::Timestamp) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs())
            + Duration::from_nanos(u64::from(t.nsec))
    }
}

/// FUSE `rdev` encoding (the kernel's `new_encode_dev`).
pub(crate) fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

fn meta_time(sec: i64, nsec: i64) -> SystemTime {
    ts(crate::layer::Timestamp {
        sec,
        nsec: nsec.clamp(0, 999_999_999) as u32,
    })
}

pub(crate) fn attr_from_meta(ino: u64, m: &std::fs::Metadata) -> Result<Attr> {
    let kind =
        FileKind::from_mode(m.mode()).ok_or(Error::NotSupported("unknown file type in upper"))?;
    Ok(Attr {
        ino,
        kind,
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: encode_dev(libc::major(m.rdev()), libc::minor(m.rdev())),
        size: m.size(),
        blocks: m.blocks(),
        atime: meta_time(m.atime(), m.atime_nsec()),
        mtime: meta_time(m.mtime(), m.mtime_nsec()),
        ctime: meta_time(m.ctime(), m.ctime_nsec()),
        blksize: m.blksize() as u32,
        lower: false,
    })
}

/// `a` (of the upper object `m`) with the ctime the node table says to show, if masked.
fn mask_ctime(st: &NodeTable, mut a: Attr, m: &std::fs::Metadata) -> Attr {
    if let Some(c) = st.shown_ctime(a.ino, (m.ctime(), m.ctime_nsec())) {
        a.ctime = c;
    }
    a
}

pub(crate) fn attr_from_tree(ino: u64, n: &TreeNode) -> Attr {
    let t = ts(n.mtime);
    Attr {
        ino,
        kind: n.kind,
        perm: n.mode as u16,
        nlink: n.nlink,
        uid: n.uid,
        gid: n.gid,
        rdev: encode_dev(n.dev_major, n.dev_minor),
        size: n.size,
        blocks: n.size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        blksize: 4096,
        lower: true,
    }
}

impl UnionFs {
    /// A union of `tree` (built from the layers whose sources are `sources`, bottom first)
    /// and an optional `upper` (read-only without one). `rt` runs lower reads that copy-up
    /// must wait for; without it they are driven on the calling thread.
    pub fn new(
        tree: impl Into<LowerTree>,
        sources: Vec<Arc<dyn LowerSource>>,
        upper: Option<Upper>,
        rt: Option<tokio::runtime::Handle>,
    ) -> Result<Self> {
        let tree = tree.into();
        let upper_root = match &upper {
            Some(u) => {
                let m = std::fs::symlink_metadata(u.root())
                    .map_err(|e| Error::io("stat upper", u.root(), e))?;
                Some(((m.dev(), m.ino()), sys::is_opaque(u.root())))
            }
            None => None,
        };
        let st = NodeTable::new(LowerTree::clone(&tree), upper_root);
        Ok(UnionFs {
            tree,
            sources,
            upper,
            rt,
            state: Mutex::new(st),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            stats: Arc::new(Stats::default()),
            opts: super::UnionOptions::default(),
        })
    }

    /// The same union with `opts` (overlay-mode behaviour switches).
    pub fn with_options(mut self, opts: super::UnionOptions) -> Self {
        self.opts = opts;
        self
    }

    /// The lower tree.
    pub fn tree(&self) -> &LowerTree {
        &self.tree
    }

    /// Current counters.
    pub fn stats(&self) -> StatsSnapshot {
        StatsSnapshot {
            reads: self.stats.reads.load(Ordering::Relaxed),
            bytes_read: self.stats.bytes_read.load(Ordering::Relaxed),
            lower_reads_waited: self.stats.lower_reads_waited.load(Ordering::Relaxed),
            copy_ups: self.stats.copy_ups.load(Ordering::Relaxed),
            lookups: self.stats.lookups.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn count_copy_up(&self) {
        self.stats.copy_ups.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, NodeTable> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn upper(&self) -> Result<&Upper> {
        self.upper.as_ref().ok_or(Error::ReadOnly)
    }

    pub(crate) fn source(&self, f: &LowerFile) -> Result<&Arc<dyn LowerSource>> {
        self.sources.get(f.layer()).ok_or(Error::Lower {
            layer: f.layer(),
            path: f.path().to_string(),
            source: std::io::Error::other("no source for this layer"),
        })
    }

    /// Is the upper directory at union path `rel` opaque?
    fn upper_opaque(&self, rel: &Path) -> Result<bool> {
        Ok(sys::is_opaque(&self.upper()?.path(rel)?))
    }

    /// Node for an upper object found at `parent/name`. `fresh` = just created by us (never
    /// reuse a lower inode number for it).
    pub(crate) fn node_for_upper(
        &self,
        st: &mut NodeTable,
        parent: u64,
        name: &OsStr,
        m: &std::fs::Metadata,
        fresh: bool,
    ) -> Result<u64> {
        st.upper_node(parent, name, m, fresh, &|rel| self.upper_opaque(rel))
    }

    /// The number `readdir` shows for the upper entry `parent/name` (what a lookup gives).
    fn peek_upper_ino(
        &self,
        st: &mut NodeTable,
        parent: u64,
        name: &OsStr,
        m: &std::fs::Metadata,
    ) -> Result<u64> {
        st.peek_upper_ino(parent, name, m, &|rel| self.upper_opaque(rel))
    }

    /// Resolve `name` in `parent`: `Ok(None)` if it does not exist in the union.
    pub(crate) fn resolve(
        &self,
        st: &mut NodeTable,
        parent: u64,
        name: &OsStr,
    ) -> Result<Option<u64>> {
        Ok(self.resolve_meta(st, parent, name)?.map(|(ino, _)| ino))
    }

    /// [`resolve`](Self::resolve), with the upper object's metadata when the name is in the
    /// upper (read once for both).
    fn resolve_meta(
        &self,
        st: &mut NodeTable,
        parent: u64,
        name: &OsStr,
    ) -> Result<Option<(u64, Option<std::fs::Metadata>)>> {
        check_name(name)?;
        let p = st.node(parent)?;
        if p.kind != FileKind::Dir {
            return Err(Error::NotDir(format!("inode {parent}")));
        }
        if p.upper {
            if let Some(u) = &self.upper {
                let rel = st.rel_path(parent)?.join(name);
                if let Some(m) = u.lstat(&rel)? {
                    if sys::is_whiteout(&u.path(&rel)?, &m) {
                        return Ok(None);
                    }
                    let ino = self.node_for_upper(st, parent, name, &m, false)?;
                    return Ok(Some((ino, Some(m))));
                }
            }
        }
        let Some(l) = st.lower_child(parent, name) else {
            return Ok(None);
        };
        Ok(Some((st.lower_node(l, parent, name), None)))
    }

    /// Attributes of the upper node `ino` (known by a name) whose object has metadata `m`.
    fn upper_attr(&self, st: &NodeTable, ino: u64, m: &std::fs::Metadata) -> Result<Attr> {
        let mut a = mask_ctime(st, attr_from_meta(ino, m)?, m);
        if a.kind == FileKind::Dir && st.node(ino)?.lower.is_some() {
            a.nlink = 1; // merged directory, as kernel overlayfs reports it
        }
        Ok(a)
    }

    pub(crate) fn attr_locked(&self, st: &NodeTable, ino: u64) -> Result<Attr> {
        let n = st.node(ino)?;
        if n.upper {
            let u = self.upper()?;
            if n.aliases.is_empty() && ino != ROOT_INO {
                if let Some(f) = self.open_upper_file(ino).or_else(|| n.orphan.clone()) {
                    let m = f
                        .metadata()
                        .map_err(|e| Error::io("fstat upper", format!("inode {ino}"), e))?;
                    return Ok(mask_ctime(st, attr_from_meta(ino, &m)?, &m));
                }
                // Removed while open, with no upper descriptor to ask: a copied-up lower
                // object still has its lower attributes (link count 0).
                let t = n.lower.and_then(|l| self.tree.node(l));
                let t = t.ok_or_else(|| Error::NotFound(format!("inode {ino}")))?;
                return Ok(Attr {
                    nlink: 0,
                    ..attr_from_tree(ino, &t)
                });
            }
            let rel = st.rel_path(ino)?;
            let m = u
                .lstat(&rel)?
                .ok_or_else(|| Error::NotFound(rel.display().to_string()))?;
            return self.upper_attr(st, ino, &m);
        }
        let l = n.lower.ok_or(Error::StaleInode(ino))?;
        let t = self.tree.node(l).ok_or(Error::StaleInode(ino))?;
        let mut a = attr_from_tree(ino, &t);
        if n.aliases.is_empty() && ino != ROOT_INO {
            a.nlink = 0;
        }
        Ok(a)
    }

    /// `lookup(parent, name)`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr> {
        self.stats.lookups.fetch_add(1, Ordering::Relaxed);
        let mut st = self.lock();
        let (ino, meta) = self
            .resolve_meta(&mut st, parent, name)?
            .ok_or_else(|| Error::NotFound(name.to_string_lossy().into_owned()))?;
        // Found in the upper (a name, so not an orphan): its metadata was just read.
        let a = match meta {
            Some(m) if st.node(ino)?.upper && ino != ROOT_INO => self.upper_attr(&st, ino, &m)?,
            _ => self.attr_locked(&st, ino)?,
        };
        st.count_lookup(ino);
        Ok(a)
    }

    /// `getattr(ino)`.
    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        let st = self.lock();
        self.attr_locked(&st, ino)
    }

    /// Target of the symlink `ino`.
    pub fn readlink(&self, ino: u64) -> Result<OsString> {
        let st = self.lock();
        let n = st.node(ino)?;
        if n.kind != FileKind::Symlink {
            return Err(Error::Invalid("not a symlink"));
        }
        if n.upper {
            let p = self.upper()?.path(&st.rel_path(ino)?)?;
            return std::fs::read_link(&p)
                .map(|t| t.into_os_string())
                .map_err(|e| Error::io("readlink", p, e));
        }
        let t = n
            .lower
            .and_then(|l| self.tree.node(l))
            .ok_or(Error::StaleInode(ino))?;
        Ok(OsString::from(t.link_target))
    }

    /// The merged listing of directory `ino`: `.`, `..`, then names in byte order.
    pub(crate) fn list_locked(&self, st: &mut NodeTable, ino: u64) -> Result<Vec<DirEntry>> {
        let n = st.node(ino)?;
        if n.kind != FileKind::Dir {
            return Err(Error::NotDir(format!("inode {ino}")));
        }
        let (is_upper, lower) = (n.upper, n.lower);
        let parent = n.aliases.first_parent().unwrap_or(ROOT_INO);
        let mut names: BTreeMap<OsString, (u64, FileKind)> = BTreeMap::new();
        let mut hidden: HashSet<OsString> = HashSet::new();
        if is_upper {
            let u = self.upper()?;
            let rel = st.rel_path(ino)?;
            for (name, m, wh) in u.list(&rel)? {
                if wh {
                    hidden.insert(name);
                    continue;
                }
                // Number only: listing must not grow the node table.
                let child = self.peek_upper_ino(st, ino, &name, &m)?;
                let kind = FileKind::from_mode(m.mode()).unwrap_or(FileKind::File);
                names.insert(name, (child, kind));
            }
        }
        if let Some(l) = lower {
            for d in self.tree.children(l) {
                let name = OsString::from(d.name);
                if names.contains_key(&name) || hidden.contains(&name) {
                    continue;
                }
                let kind = self.tree.kind(d.ino).unwrap_or(FileKind::File);
                names.insert(name, (d.ino, kind));
            }
        }
        let mut out = Vec::with_capacity(names.len() + 2);
        out.push((OsString::from("."), ino, FileKind::Dir));
        out.push((OsString::from(".."), parent, FileKind::Dir));
        out.extend(names.into_iter().map(|(n, (i, k))| (n, i, k)));
        Ok(out
            .into_iter()
            .enumerate()
            .map(|(i, (name, ino, kind))| DirEntry {
                name,
                ino,
                kind,
                offset: i as u64 + 1,
            })
            .collect())
    }
    /// Open directory `ino`; the listing is taken at the first read from offset 0 (the
    /// kernel always starts there, and again after a rewind).
    pub fn opendir(&self, ino: u64) -> Result<u64> {
        self.opendir_as(ino, None)
    }

    /// [`opendir`](Self::opendir), keeping the handle under `fh` when given.
    pub(crate) fn opendir_as(&self, ino: u64, fh: Option<u64>) -> Result<u64> {
        let path = {
            let st = self.lock();
            let n = st.node(ino)?;
            if n.kind != FileKind::Dir {
                return Err(Error::NotDir(format!("inode {ino}")));
            }
            match &self.upper {
                Some(u) if n.upper => Some(u.path(&st.rel_path(ino)?)?),
                _ => None,
            }
        };
        // Best effort: without it, only `fstat` after `rmdir` of an open directory fails.
        let upper = path.and_then(|p| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
                .open(p)
                .ok()
                .map(Arc::new)
        });
        let h = Handle::Dir {
            ino,
            entries: Mutex::new(None),
            upper,
        };
        Ok(match fh {
            Some(fh) => self.put_fh(fh, h),
            None => self.new_fh(h),
        })
    }

    /// Call `add` with each entry of an open directory after cookie `offset` (0 = from the
    /// start, listing the directory afresh) until it returns `true` (reply buffer full).
    /// Only the entries passed are touched, so a large directory read in many replies costs
    /// no more per reply than the entries that reply carries.
    pub fn readdir_each(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(&DirEntry) -> bool,
    ) -> Result<()> {
        let h = self.handle(fh)?;
        let Handle::Dir { ino, entries, .. } = &*h else {
            return Err(Error::BadHandle(fh));
        };
        let mut e = entries.lock().unwrap_or_else(|p| p.into_inner());
        if offset == 0 || e.is_none() {
            let mut st = self.lock();
            *e = Some(self.list_locked(&mut st, *ino)?);
        }
        for d in e.iter().flatten().skip(offset as usize) {
            if add(d) {
                break;
            }
        }
        Ok(())
    }

    /// Entries of an open directory after cookie `offset` (0 = from the start).
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        self.readdir_each(fh, offset, |d| {
            out.push(d.clone());
            false
        })?;
        Ok(out)
    }

    /// Like [`readdir_each`](Self::readdir_each) with each entry's attributes (`.` and `..`
    /// included; the entry's number is `Attr::ino`, which may differ from the listing's for
    /// an entry replaced since). Every entry `add` accepts (returns `false` for) counts as a lookup the
    /// kernel now holds; the entry it refuses is not counted and ends the call. Entries
    /// removed since the listing was taken are skipped.
    pub fn readdirplus_each(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(&DirEntry, &Attr) -> bool,
    ) -> Result<()> {
        let h = self.handle(fh)?;
        let Handle::Dir { ino, entries, .. } = &*h else {
            return Err(Error::BadHandle(fh));
        };
        let dir = *ino;
        let mut e = entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = self.lock();
        if offset == 0 || e.is_none() {
            *e = Some(self.list_locked(&mut st, dir)?);
        }
        for d in e.iter().flatten().skip(offset as usize) {
            let dots = d.name == "." || d.name == "..";
            let attr = if dots {
                self.attr_locked(&st, d.ino)
            } else {
                match self.resolve(&mut st, dir, &d.name)? {
                    Some(i) => self.attr_locked(&st, i),
                    None => continue, // removed since the listing was taken
                }
            };
            let a = match attr {
                Ok(a) => a,
                Err(Error::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            if add(d, &a) {
                break;
            }
            if !dots {
                // The kernel takes a lookup reference on each entry it is sent.
                st.count_lookup(a.ino);
            }
        }
        Ok(())
    }

    /// [`readdirplus_each`](Self::readdirplus_each) collecting every entry.
    pub fn readdirplus(&self, fh: u64, offset: u64) -> Result<Vec<(DirEntry, Attr)>> {
        let mut out = Vec::new();
        self.readdirplus_each(fh, offset, |d, a| {
            out.push((
                DirEntry {
                    ino: a.ino,
                    ..d.clone()
                },
                *a,
            ));
            false
        })?;
        Ok(out)
    }

    /// Close a directory handle.
    pub fn releasedir(&self, fh: u64) -> Result<()> {
        self.release(fh)
    }

    /// Would a write-open / setattr of `ino` copy a lower file up (and maybe wait for data)?
    pub fn needs_copy_up(&self, ino: u64) -> bool {
        self.lock()
            .get(ino)
            .is_some_and(|n| !n.upper && n.kind != FileKind::Dir)
    }

    /// `forget(ino, nlookup)`: the kernel dropped `nlookup` references. A node nobody
    /// references any more (no lookups, no open handle) leaves the table.
    pub fn forget(&self, ino: u64, nlookup: u64) {
        let mut st = self.lock();
        if st.release(ino, nlookup) && !self.has_open_handle(ino) {
            st.evict(ino);
        }
        if st.needs_sweep() {
            st.sweep(&self.open_inodes());
        }
    }

    /// Number of nodes in the table (for tests and `stats`).
    pub fn node_count(&self) -> usize {
        self.lock().len()
    }

    /// Does `name` have more than [`super::NAME_MAX`] bytes? (Convenience for adapters.)
    pub fn name_too_long(name: &OsStr) -> bool {
        name.as_bytes().len() > super::NAME_MAX
    }
}
