//! [`UnionFs`]: the union filesystem core — node table, lookup, getattr, readdir, open, read.
//! Mutating operations live in `ops.rs`, copy-up in `copyup.rs`.
//!
//! Model: a union path is the upper entry at that path if there is one (a whiteout hides the
//! name), otherwise the merged-tree entry, unless an upper directory on the way is opaque.
//! Objects are nodes keyed by inode number: lower objects keep their tree number (also after
//! copy-up), upper-only objects get numbers above the tree. A node remembers the names it was
//! found under (`aliases`, parent inode + name), so paths follow directory renames. One mutex
//! guards the node table; lower data is never fetched while it is held.

use super::lower::{LowerFile, LowerRead, LowerSource};
use super::lowertree::LowerTree;
use super::tree::TreeNode;
use super::upper::Upper;
use super::{check_name, sys, Attr, Error, FileKind, Result, ROOT_INO};
use bytes::Bytes;
use futures::FutureExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use super::types::{
    Ctx, DirEntry, Opened, ReadResult, SetAttr, StatFs, Stats, StatsSnapshot, TimeSpec,
};

#[derive(Debug)]
pub(crate) struct Node {
    pub kind: FileKind,
    /// Tree inode whose contents show through (files: content origin; dirs: merged children).
    pub lower: Option<u64>,
    /// The object exists in the upper directory.
    pub upper: bool,
    /// `(dev, ino)` of the upper object (boxed: most nodes of a walk are lower-only, and the
    /// table is sized by them).
    pub upper_key: Option<Box<(u64, u64)>>,
    /// Names this object is known under.
    pub aliases: super::nodes::Aliases,
    /// Lookups the kernel holds on this node (entries replied minus `forget`s).
    pub lookups: u64,
    /// `O_PATH` descriptor of the upper object, taken when its last known name was removed,
    /// so `fstat` of something still open (a fifo, say: no handle here) keeps answering.
    pub orphan: Option<Arc<File>>,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub nodes: HashMap<u64, Node>,
    /// Upper `(dev, ino)` -> union inode, for live nodes and for upper objects whose number
    /// cannot be derived again (copy-ups keep their lower number; see `nodes.rs`).
    pub by_upper: HashMap<(u64, u64), u64>,
    /// Tree inode -> upper key of the object that took it over by copy-up.
    pub claimed: HashMap<u64, (u64, u64)>,
    /// Next number for upper objects whose `st_ino` does not fit the derived range.
    pub next_ino: u64,
    /// Node count after the last sweep of unreferenced nodes.
    pub swept_at: usize,
}

pub(crate) enum Handle {
    Upper {
        ino: u64,
        file: Arc<File>,
    },
    Lower {
        ino: u64,
        file: LowerFile,
    },
    Dir {
        ino: u64,
        /// The listing, taken at the first read from offset 0 (`None` before it).
        entries: Mutex<Option<Vec<DirEntry>>>,
        /// The upper directory, held open so `fstat` still answers after an `rmdir`.
        upper: Option<Arc<File>>,
    },
}

impl Handle {
    pub fn ino(&self) -> u64 {
        match self {
            Handle::Upper { ino, .. } | Handle::Lower { ino, .. } | Handle::Dir { ino, .. } => *ino,
        }
    }
}

/// The union filesystem core; see the module docs.
pub struct UnionFs {
    pub(crate) tree: LowerTree,
    pub(crate) sources: Vec<Arc<dyn LowerSource>>,
    pub(crate) upper: Option<Upper>,
    pub(crate) rt: Option<tokio::runtime::Handle>,
    pub(crate) state: Mutex<State>,
    pub(crate) handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
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
        let mut st = State {
            next_ino: super::nodes::FALLBACK_BASE,
            ..State::default()
        };
        let mut root = Node {
            kind: FileKind::Dir,
            lower: Some(ROOT_INO),
            upper: false,
            upper_key: None,
            aliases: Default::default(),
            lookups: 1,
            orphan: None,
        };
        if let Some(u) = &upper {
            let m = std::fs::symlink_metadata(u.root())
                .map_err(|e| Error::io("stat upper", u.root(), e))?;
            root.upper = true;
            root.upper_key = Some(Box::new((m.dev(), m.ino())));
            if sys::is_opaque(u.root()) {
                root.lower = None;
            }
            st.by_upper.insert((m.dev(), m.ino()), ROOT_INO);
        }
        st.nodes.insert(ROOT_INO, root);
        Ok(UnionFs {
            tree: tree.into(),
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

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
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

    /// Path of `ino` relative to the union root (= its upper path).
    pub(crate) fn rel_path(&self, st: &State, ino: u64) -> Result<PathBuf> {
        let mut names: Vec<&OsStr> = Vec::new();
        let mut cur = ino;
        while cur != ROOT_INO {
            let n = st.nodes.get(&cur).ok_or(Error::StaleInode(cur))?;
            // Prefer a name whose directory is still in the table (others may be forgotten).
            let (p, name) = n
                .aliases
                .iter(&self.tree)
                .find(|(p, _)| *p == ROOT_INO || st.nodes.contains_key(p))
                .or(n.aliases.first(&self.tree))
                .ok_or_else(|| Error::NotFound(format!("inode {ino}")))?;
            names.push(name);
            cur = p;
            if names.len() > 4096 {
                return Err(Error::Invalid("directory loop"));
            }
        }
        Ok(names.iter().rev().collect())
    }

    pub(crate) fn add_alias(&self, st: &mut State, ino: u64, parent: u64, name: &OsStr) {
        if let Some(n) = st.nodes.get_mut(&ino) {
            if !n.aliases.contains(parent, name, &self.tree) {
                if n.kind == FileKind::Dir {
                    n.aliases.clear();
                }
                n.aliases.push(parent, name, &self.tree, n.lower);
            }
        }
    }

    /// Tree inode of `name` in the lower view of directory node `parent`.
    pub(crate) fn lower_child(&self, st: &State, parent: u64, name: &OsStr) -> Option<u64> {
        let pl = st.nodes.get(&parent)?.lower?;
        self.tree.lookup(pl, sys::name_str(name)?)
    }

    /// Node for an upper object found at `parent/name`. `fresh` = just created by us (never
    /// reuse a lower inode number for it).
    pub(crate) fn node_for_upper(
        &self,
        st: &mut State,
        parent: u64,
        name: &OsStr,
        m: &std::fs::Metadata,
        fresh: bool,
    ) -> Result<u64> {
        let key = (m.dev(), m.ino());
        if let Some(&ino) = st.by_upper.get(&key) {
            if st.nodes.contains_key(&ino) {
                if let Some(n) = st.nodes.get_mut(&ino) {
                    n.upper = true;
                }
                self.add_alias(st, ino, parent, name);
                return Ok(ino);
            }
        }
        let kind = FileKind::from_mode(m.mode())
            .ok_or(Error::NotSupported("unknown file type in upper"))?;
        let (ino, lower) = self.upper_ino(st, parent, name, m, fresh)?;
        let node = st.nodes.entry(ino).or_insert(Node {
            kind,
            lower,
            upper: true,
            upper_key: Some(Box::new(key)),
            aliases: Default::default(),
            lookups: 0,
            orphan: None,
        });
        node.upper = true;
        node.kind = kind;
        node.upper_key = Some(Box::new(key));
        st.by_upper.insert(key, ino);
        if let Some(l) = lower.filter(|_| kind != FileKind::Dir) {
            st.claimed.insert(l, key);
        }
        self.add_alias(st, ino, parent, name);
        Ok(ino)
    }

    /// Resolve `name` in `parent`: `Ok(None)` if it does not exist in the union.
    pub(crate) fn resolve(&self, st: &mut State, parent: u64, name: &OsStr) -> Result<Option<u64>> {
        check_name(name)?;
        let p = st.nodes.get(&parent).ok_or(Error::StaleInode(parent))?;
        if p.kind != FileKind::Dir {
            return Err(Error::NotDir(format!("inode {parent}")));
        }
        if p.upper {
            if let Some(u) = &self.upper {
                let rel = self.rel_path(st, parent)?.join(name);
                if let Some(m) = u.lstat(&rel)? {
                    if sys::is_whiteout(&u.path(&rel), &m) {
                        return Ok(None);
                    }
                    return self.node_for_upper(st, parent, name, &m, false).map(Some);
                }
            }
        }
        let Some(l) = self.lower_child(st, parent, name) else {
            return Ok(None);
        };
        let kind = self.tree.kind(l).unwrap_or(FileKind::File);
        st.nodes.entry(l).or_insert(Node {
            kind,
            lower: Some(l),
            upper: false,
            upper_key: None,
            aliases: Default::default(),
            lookups: 0,
            orphan: None,
        });
        self.add_alias(st, l, parent, name);
        Ok(Some(l))
    }

    /// An upper file (or directory) handle open on `ino`, for objects that lost all their
    /// names.
    fn open_upper_file(&self, ino: u64) -> Option<Arc<File>> {
        let hs = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        hs.values().find_map(|h| match &**h {
            Handle::Upper { ino: i, file } if *i == ino => Some(file.clone()),
            Handle::Dir {
                ino: i,
                upper: Some(file),
                ..
            } if *i == ino => Some(file.clone()),
            _ => None,
        })
    }

    pub(crate) fn attr_locked(&self, st: &State, ino: u64) -> Result<Attr> {
        let n = st.nodes.get(&ino).ok_or(Error::StaleInode(ino))?;
        if n.upper {
            let u = self.upper()?;
            if n.aliases.is_empty() && ino != ROOT_INO {
                if let Some(f) = self.open_upper_file(ino).or_else(|| n.orphan.clone()) {
                    let m = f
                        .metadata()
                        .map_err(|e| Error::io("fstat upper", format!("inode {ino}"), e))?;
                    return attr_from_meta(ino, &m);
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
            let rel = self.rel_path(st, ino)?;
            let m = u
                .lstat(&rel)?
                .ok_or_else(|| Error::NotFound(rel.display().to_string()))?;
            let mut a = attr_from_meta(ino, &m)?;
            if a.kind == FileKind::Dir && n.lower.is_some() {
                a.nlink = 1; // merged directory, as kernel overlayfs reports it
            }
            return Ok(a);
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
        let ino = self
            .resolve(&mut st, parent, name)?
            .ok_or_else(|| Error::NotFound(name.to_string_lossy().into_owned()))?;
        let a = self.attr_locked(&st, ino)?;
        Self::count_lookup(&mut st, ino);
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
        let n = st.nodes.get(&ino).ok_or(Error::StaleInode(ino))?;
        if n.kind != FileKind::Symlink {
            return Err(Error::Invalid("not a symlink"));
        }
        if n.upper {
            let p = self.upper()?.path(&self.rel_path(&st, ino)?);
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
    pub(crate) fn list_locked(&self, st: &mut State, ino: u64) -> Result<Vec<DirEntry>> {
        let n = st.nodes.get(&ino).ok_or(Error::StaleInode(ino))?;
        if n.kind != FileKind::Dir {
            return Err(Error::NotDir(format!("inode {ino}")));
        }
        let (is_upper, lower) = (n.upper, n.lower);
        let parent = n.aliases.first_parent().unwrap_or(ROOT_INO);
        let mut names: BTreeMap<OsString, (u64, FileKind)> = BTreeMap::new();
        let mut hidden: HashSet<OsString> = HashSet::new();
        if is_upper {
            let u = self.upper()?;
            let rel = self.rel_path(st, ino)?;
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

    fn new_fh(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Arc::new(h));
        fh
    }

    pub(crate) fn handle(&self, fh: u64) -> Result<Arc<Handle>> {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
            .ok_or(Error::BadHandle(fh))
    }

    /// Open directory `ino`; the listing is taken at the first read from offset 0 (the
    /// kernel always starts there, and again after a rewind).
    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let path = {
            let st = self.lock();
            let n = st.nodes.get(&ino).ok_or(Error::StaleInode(ino))?;
            if n.kind != FileKind::Dir {
                return Err(Error::NotDir(format!("inode {ino}")));
            }
            match &self.upper {
                Some(u) if n.upper => Some(u.path(&self.rel_path(&st, ino)?)),
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
        Ok(self.new_fh(Handle::Dir {
            ino,
            entries: Mutex::new(None),
            upper,
        }))
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
                Self::count_lookup(&mut st, a.ino);
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

    /// Open file `ino` with open(2) `flags`. Write access copies a lower file up first (this
    /// may wait for lower data; call it off the FUSE dispatch thread when it can).
    pub fn open(&self, ino: u64, flags: i32) -> Result<Opened> {
        let acc = flags & libc::O_ACCMODE;
        let write = acc != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let (kind, is_upper) = {
            let st = self.lock();
            let n = st.nodes.get(&ino).ok_or(Error::StaleInode(ino))?;
            (n.kind, n.upper)
        };
        if kind == FileKind::Dir {
            return Err(Error::IsDir(format!("inode {ino}")));
        }
        if write && !is_upper {
            self.upper()?;
            self.copy_up(ino, None)?;
        }
        let st = self.lock();
        let n = st.nodes.get(&ino).ok_or(Error::StaleInode(ino))?;
        if n.upper {
            let p = self.upper()?.path(&self.rel_path(&st, ino)?);
            drop(st);
            let file = open_flags(&p, flags)?;
            let fh = self.new_fh(Handle::Upper {
                ino,
                file: Arc::new(file),
            });
            return Ok(Opened { fh, lower: false });
        }
        let t = n
            .lower
            .and_then(|l| self.tree.node(l))
            .ok_or(Error::StaleInode(ino))?;
        let file = t.content().ok_or(Error::Invalid("not a regular file"))?;
        drop(st);
        let fh = self.new_fh(Handle::Lower { ino, file });
        Ok(Opened { fh, lower: true })
    }

    /// A file with the full content behind `fh`, for FUSE passthrough. An upper file is
    /// reopened read-write (through `/proc/self/fd`, so unlinked files work too): the
    /// kernel shares one backing file between all passthrough opens of an inode, also
    /// writers. A lower file is served only on a read-only union, from its source's local
    /// copy, opened read-only: on a writable union the kernel would pin the lower file as the
    /// inode's backing file until every reader closed, and a writer after copy-up could then
    /// neither reach the upper nor be allowed to use the lower.
    pub fn backing_file(&self, fh: u64) -> Option<Arc<File>> {
        match &*self.handle(fh).ok()? {
            Handle::Upper { file, .. } => {
                let fd = std::os::fd::AsRawFd::as_raw_fd(&**file);
                match std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(format!("/proc/self/fd/{fd}"))
                {
                    Ok(f) => Some(Arc::new(f)),
                    Err(_) if open_for_read(file) => Some(file.clone()),
                    Err(_) => None,
                }
            }
            Handle::Lower { file, .. } if self.upper.is_none() => {
                let p = self.source(file).ok()?.local_path(file)?;
                File::open(p).ok().map(Arc::new)
            }
            Handle::Lower { .. } | Handle::Dir { .. } => None,
        }
    }

    /// Read up to `size` bytes at `offset` from an open file.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<ReadResult> {
        let mut h = self.handle(fh)?;
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        if let Handle::Lower { ino, .. } = &*h {
            if let Some(up) = self.follow_copy_up(fh, *ino)? {
                h = up;
            }
        }
        match &*h {
            Handle::Upper { file, .. } => {
                let mut buf = vec![0u8; size as usize];
                let mut got = 0usize;
                while got < buf.len() {
                    let k = file
                        .read_at(&mut buf[got..], offset + got as u64)
                        .map_err(|e| Error::io("read upper", format!("handle {fh}"), e))?;
                    if k == 0 {
                        break;
                    }
                    got += k;
                }
                buf.truncate(got);
                self.stats
                    .bytes_read
                    .fetch_add(got as u64, Ordering::Relaxed);
                Ok(ReadResult::Ready(Bytes::from(buf)))
            }
            Handle::Lower { file, .. } => {
                let src = self.source(file)?.clone();
                let wrap = {
                    let file = file.clone();
                    move |source| Error::Lower {
                        layer: file.layer(),
                        path: file.path().to_string(),
                        source,
                    }
                };
                let fut = match src.start_read(file, offset, size) {
                    LowerRead::Ready(r) => {
                        let b = r.map_err(wrap)?;
                        self.stats
                            .bytes_read
                            .fetch_add(b.len() as u64, Ordering::Relaxed);
                        return Ok(ReadResult::Ready(b));
                    }
                    LowerRead::Pending(fut) => fut,
                };
                self.stats
                    .lower_reads_waited
                    .fetch_add(1, Ordering::Relaxed);
                let stats = self.stats.clone();
                Ok(ReadResult::Pending(
                    async move {
                        let b = fut.await.map_err(wrap)?;
                        stats
                            .bytes_read
                            .fetch_add(b.len() as u64, Ordering::Relaxed);
                        Ok(b)
                    }
                    .boxed(),
                ))
            }
            Handle::Dir { .. } => Err(Error::IsDir(format!("handle {fh}"))),
        }
    }

    /// A read-only handle opened on a lower file that has since been copied up reads the
    /// upper file from then on (as kernel overlayfs does since 4.19): the handle is switched
    /// to the upper copy, opened read-only. `None` while the file is still lower only.
    fn follow_copy_up(&self, fh: u64, ino: u64) -> Result<Option<Arc<Handle>>> {
        if self.upper.is_none() {
            return Ok(None);
        }
        // the upper copy's path, or (its last name gone) the descriptor held for it
        let target = {
            let st = self.lock();
            match st.nodes.get(&ino) {
                Some(n) if n.upper && !n.aliases.is_empty() => {
                    Ok(self.upper()?.path(&self.rel_path(&st, ino)?))
                }
                Some(Node {
                    upper: true,
                    orphan: Some(held),
                    ..
                }) => Err(held.clone()),
                _ => return Ok(None),
            }
        };
        let file = match target {
            Ok(p) => open_flags(&p, libc::O_RDONLY)?,
            Err(held) => {
                // reopen through the O_PATH descriptor's magic link (never O_NOFOLLOW here)
                let p = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&*held));
                File::open(&p).map_err(|e| Error::io("reopen unlinked upper", p, e))?
            }
        };
        let h = Arc::new(Handle::Upper {
            ino,
            file: Arc::new(file),
        });
        let mut hs = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        match hs.get(&fh) {
            Some(cur) if matches!(&**cur, Handle::Lower { .. }) => {
                hs.insert(fh, h.clone());
                Ok(Some(h))
            }
            Some(cur) => Ok(Some(cur.clone())),
            None => Err(Error::BadHandle(fh)),
        }
    }

    /// Write `data` at `offset` (an `O_APPEND` handle appends).
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let h = self.handle(fh)?;
        match &*h {
            Handle::Upper { file, .. } => {
                file.write_all_at(data, offset)
                    .map_err(|e| Error::io("write upper", format!("handle {fh}"), e))?;
                Ok(data.len() as u32)
            }
            _ => Err(Error::BadHandle(fh)),
        }
    }

    /// Close a file or directory handle.
    pub fn release(&self, fh: u64) -> Result<()> {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh)
            .map(|_| ())
            .ok_or(Error::BadHandle(fh))
    }

    /// Would a write-open / setattr of `ino` copy a lower file up (and maybe wait for data)?
    pub fn needs_copy_up(&self, ino: u64) -> bool {
        self.lock()
            .nodes
            .get(&ino)
            .is_some_and(|n| !n.upper && n.kind != FileKind::Dir)
    }

    /// Inode behind an open handle.
    pub fn handle_ino(&self, fh: u64) -> Result<u64> {
        Ok(self.handle(fh)?.ino())
    }

    /// Does `name` have more than [`super::NAME_MAX`] bytes? (Convenience for adapters.)
    pub fn name_too_long(name: &OsStr) -> bool {
        name.as_bytes().len() > super::NAME_MAX
    }
}

/// Was `f` opened with read access?
fn open_for_read(f: &File) -> bool {
    let fd = std::os::fd::AsRawFd::as_raw_fd(f);
    // SAFETY: F_GETFL on a descriptor owned by `f`, alive for the call.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    fl >= 0 && fl & libc::O_ACCMODE != libc::O_WRONLY
}

/// Open an upper path honouring the access mode and `O_APPEND`/`O_SYNC`-style flags.
/// `O_DIRECT` is not passed on: the kernel already keeps such a FUSE open out of its page
/// cache, and the upper filesystem would refuse our buffers (not block-aligned) with EINVAL.
pub(crate) fn open_flags(p: &std::path::Path, flags: i32) -> Result<File> {
    let acc = flags & libc::O_ACCMODE;
    let extra = flags
        & !(libc::O_ACCMODE
            | libc::O_CREAT
            | libc::O_EXCL
            | libc::O_NOCTTY
            | libc::O_TRUNC
            | libc::O_DIRECT);
    let mut o = std::fs::OpenOptions::new();
    o.read(acc == libc::O_RDONLY || acc == libc::O_RDWR)
        .write(acc == libc::O_WRONLY || acc == libc::O_RDWR)
        .custom_flags(extra | libc::O_NOFOLLOW);
    if acc != libc::O_RDONLY && flags & libc::O_APPEND != 0 {
        o.append(true);
    }
    if flags & libc::O_TRUNC != 0 && acc != libc::O_RDONLY {
        o.truncate(true);
    }
    o.open(p).map_err(|e| Error::io("open upper", p, e))
}
