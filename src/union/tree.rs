//! The merged lower tree: N layers' entry lists applied bottom to top, once — the
//! [`LowerBackend`] (`backend.rs`) of image mounts. It uses `layer` for the entry types and
//! its stored form (`tree_store.rs`); it must not know directory lowers (`dirtree.rs`), the
//! node table or the upper.
//!
//! Rules (kernel overlayfs / OCI): a whiteout removes the name (and its subtree) from the
//! layers below; an opaque directory hides everything below it; a directory over a directory
//! merges, anything else replaces; an `implicit` directory (synthesised by the layer reader)
//! does not override a lower directory's attributes; hard links share one node and `nlink`
//! counts the names that survive. Inode numbers are assigned by a depth-first walk in name
//! order, so the same layers always give the same numbers (root = 1). Lookup, getattr and
//! readdir never walk layers. The result is one flat buffer of fixed-size records and a string
//! table (`tree_store.rs`): built in memory, stored per image, and mmap-ed at later mounts;
//! the accessors read records in place and return small copies or borrowed strings.

use super::backend::{Children, LowerBackend, TreeDirEnt, TreeNode};
use super::lower::LowerFile;
use super::{Error, FileKind, Result, ROOT_INO};
use crate::layer::{Entry, EntryKind, Timestamp};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use store::u32_at;

#[path = "tree_store.rs"]
mod store;

/// The bytes a tree is a view of.
enum Buf {
    Owned(Vec<u8>),
    Mapped(memmap2::Mmap),
}

/// The immutable merged tree; see the module docs. A view over its stored form (see
/// `tree_store.rs`): records are read in place, nothing is decoded per entry.
pub struct MergedTree {
    buf: Buf,
    l: store::Layout,
}

impl Default for MergedTree {
    /// A tree with only the root directory.
    fn default() -> Self {
        Self::build::<Vec<Entry>>(&[]).unwrap_or(MergedTree {
            buf: Buf::Owned(Vec::new()),
            l: store::Layout::default(),
        })
    }
}

impl std::fmt::Debug for MergedTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MergedTree")
            .field("nodes", &self.l.n_nodes)
            .field("bytes", &self.bytes().len())
            .field("mapped", &matches!(self.buf, Buf::Mapped(_)))
            .finish()
    }
}

struct BNode {
    entry: Entry,
    layer: usize,
    children: BTreeMap<String, usize>,
}

struct Builder {
    arena: Vec<BNode>,
    /// Keep `trusted.overlay.*` xattrs (a layer view in overlay format shows them).
    keep_overlay_xattrs: bool,
}

impl Builder {
    fn new_node(&mut self, entry: Entry, layer: usize) -> usize {
        self.arena.push(BNode {
            entry,
            layer,
            children: BTreeMap::new(),
        });
        self.arena.len() - 1
    }

    fn is_dir(&self, id: usize) -> bool {
        self.arena
            .get(id)
            .is_some_and(|n| n.entry.kind == EntryKind::Dir)
    }

    /// Walk to the directory at `path`, creating missing (or replacing non-directory)
    /// components as implicit directories.
    fn dir_at(&mut self, path: &str, layer: usize) -> usize {
        let mut cur = 0usize;
        if path.is_empty() {
            return cur;
        }
        let mut sofar = String::new();
        for comp in path.split('/') {
            if !sofar.is_empty() {
                sofar.push('/');
            }
            sofar.push_str(comp);
            let next = self
                .arena
                .get(cur)
                .and_then(|n| n.children.get(comp).copied());
            cur = match next {
                Some(id) if self.is_dir(id) => id,
                _ => {
                    let mut e = Entry::new(sofar.clone(), EntryKind::Dir);
                    e.implicit = true;
                    let id = self.new_node(e, layer);
                    if let Some(n) = self.arena.get_mut(cur) {
                        n.children.insert(comp.to_string(), id);
                    }
                    id
                }
            };
        }
        cur
    }

    /// Node at `path` without creating anything.
    fn find(&self, path: &str) -> Option<usize> {
        let mut cur = 0usize;
        if path.is_empty() {
            return Some(cur);
        }
        for comp in path.split('/') {
            cur = *self.arena.get(cur)?.children.get(comp)?;
        }
        Some(cur)
    }

    fn apply(&mut self, layer: usize, e: &Entry, links: &mut Vec<Entry>) {
        if e.path.is_empty() {
            if e.kind == EntryKind::Dir {
                if let Some(root) = self.arena.get_mut(0) {
                    if !e.implicit {
                        root.entry = Entry {
                            path: String::new(),
                            ..e.clone()
                        };
                        root.layer = layer;
                    }
                    if e.opaque {
                        root.children.clear();
                    }
                }
            }
            return;
        }
        let (parent, name) = e.split();
        let pid = self.dir_at(parent, layer);
        let existing = self
            .arena
            .get(pid)
            .and_then(|n| n.children.get(name).copied());
        match e.kind {
            EntryKind::Whiteout => {
                if let Some(p) = self.arena.get_mut(pid) {
                    p.children.remove(name);
                }
            }
            EntryKind::Hardlink => links.push(e.clone()),
            EntryKind::Dir if existing.is_some_and(|id| self.is_dir(id)) => {
                if let Some(n) = existing.and_then(|id| self.arena.get_mut(id)) {
                    if !e.implicit {
                        let children = std::mem::take(&mut n.children);
                        n.entry = e.clone();
                        n.layer = layer;
                        n.children = children;
                    }
                    if e.opaque {
                        n.children.clear();
                    }
                }
            }
            _ => {
                let id = self.new_node(e.clone(), layer);
                if let Some(p) = self.arena.get_mut(pid) {
                    p.children.insert(name.to_string(), id);
                }
            }
        }
    }

    fn link(&mut self, e: &Entry) {
        let Some(target) = self.find(&e.hardlink_target) else {
            tracing::warn!(path = %e.path, target = %e.hardlink_target, "hard link target missing; skipped");
            return;
        };
        if self.is_dir(target) {
            tracing::warn!(path = %e.path, "hard link to a directory; skipped");
            return;
        }
        let (parent, name) = e.split();
        let Some(pid) = self.find(parent).filter(|&p| self.is_dir(p)) else {
            return;
        };
        if let Some(p) = self.arena.get_mut(pid) {
            p.children.insert(name.to_string(), target);
        }
    }
}

/// The path of `name` in directory `dir` (arena ids), through the directories' first parents
/// in `reached` (a directory has one; the root's is `usize::MAX`).
fn path_in(reached: &[(usize, &str)], dir: usize, name: &str) -> String {
    let mut parts = vec![name];
    let mut d = dir;
    while let Some(&(up, n)) = reached.get(d) {
        if up == usize::MAX {
            break;
        }
        parts.push(n);
        d = up;
    }
    parts.reverse();
    parts.join("/")
}

fn kind_of(k: EntryKind) -> FileKind {
    match k {
        EntryKind::Dir => FileKind::Dir,
        EntryKind::Symlink => FileKind::Symlink,
        EntryKind::CharDev => FileKind::CharDev,
        EntryKind::BlockDev => FileKind::BlockDev,
        EntryKind::Fifo => FileKind::Fifo,
        EntryKind::File | EntryKind::Hardlink | EntryKind::Whiteout => FileKind::File,
    }
}

impl MergedTree {
    /// Merge `layers` (bottom first). Entries of each layer must be normalised and sorted as
    /// `layer::EntryTable::finish` produces them.
    pub fn build<L: AsRef<[Entry]>>(layers: &[L]) -> Result<Self> {
        let mut root = Entry::new("", EntryKind::Dir);
        root.implicit = true;
        let mut b = Builder {
            arena: Vec::new(),
            keep_overlay_xattrs: false,
        };
        b.new_node(root, 0);
        for (li, entries) in layers.iter().enumerate() {
            let mut links = Vec::new();
            for e in entries.as_ref() {
                b.apply(li, e, &mut links);
            }
            for e in &links {
                b.link(e);
            }
        }
        Self::finish(b, layers.len())
    }

    /// One layer as kernel overlayfs expects a lower layer directory (a containerd remote
    /// snapshot): its whiteouts as character devices 0/0 and its opaque directories with
    /// `trusted.overlay.opaque=y`, nothing applied or hidden. Entries as for [`build`](Self::build).
    pub fn build_layer_view(entries: &[Entry]) -> Result<Self> {
        let mut root = Entry::new("", EntryKind::Dir);
        root.implicit = true;
        let mut b = Builder {
            arena: Vec::new(),
            keep_overlay_xattrs: true,
        };
        b.new_node(root, 0);
        let mut links = Vec::new();
        for e in entries {
            let mut e = e.clone();
            match e.kind {
                EntryKind::Whiteout => {
                    e.kind = EntryKind::CharDev;
                    (e.dev_major, e.dev_minor, e.mode, e.size) = (0, 0, 0, 0);
                }
                EntryKind::Dir if e.opaque => {
                    e.opaque = false;
                    e.xattrs
                        .push((super::sys::OPAQUE_XATTR.to_string(), b"y".to_vec()));
                }
                _ => {}
            }
            b.apply(0, &e, &mut links);
        }
        for e in &links {
            b.link(e);
        }
        Self::finish(b, 1)
    }

    fn finish(b: Builder, layers: usize) -> Result<Self> {
        // How many directory entries name each node (reachable or not): only a node named
        // more than once (a hard link) needs its paths, so no path is built for the others.
        let mut listed: Vec<u32> = vec![0; b.arena.len()];
        for n in &b.arena {
            for &c in n.children.values() {
                if let Some(r) = listed.get_mut(c) {
                    *r += 1;
                }
            }
        }
        // Depth-first, children in name order: arena id -> ino.
        let mut ino_of: Vec<u64> = vec![0; b.arena.len()];
        let mut order: Vec<(usize, u64)> = Vec::new(); // (arena id, parent ino)
        let mut refs: Vec<u32> = vec![0; b.arena.len()];
        // Where each node was first reached: (parent's arena id, name); the root has none.
        let mut reached: Vec<(usize, &str)> = vec![(usize::MAX, ""); b.arena.len()];
        // Every path of a node listed more than once, in visit order.
        let mut paths: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        let mut stack: Vec<(usize, u64, usize, &str)> = vec![(0, ROOT_INO, usize::MAX, "")];
        while let Some((id, parent, parent_id, name)) = stack.pop() {
            if let Some(r) = refs.get_mut(id) {
                *r += 1;
            }
            let first = ino_of.get(id).is_some_and(|&i| i == 0);
            let Some(n) = b.arena.get(id) else { continue };
            if n.entry.kind != EntryKind::Dir && listed.get(id).is_some_and(|&l| l > 1) {
                // Its parent's chain is known: directories are reached before their entries.
                let path = path_in(&reached, parent_id, name);
                paths.entry(id).or_default().push(path);
            }
            if !first {
                continue;
            }
            if let Some(slot) = reached.get_mut(id) {
                *slot = (parent_id, name);
            }
            order.push((id, parent));
            let ino = order.len() as u64;
            if let Some(slot) = ino_of.get_mut(id) {
                *slot = ino;
            }
            for (name, &child) in n.children.iter().rev() {
                stack.push((child, ino, id, name.as_str()));
            }
        }
        store::u32_of(order.len())?;
        let mut flat = store::Flat::default();
        // First name of each arena node: set while its first parent (a smaller inode number,
        // so already written) lists it.
        let mut name_of: Vec<Option<(u32, u32)>> = vec![None; b.arena.len()];
        let parent_of: Vec<u64> = {
            let mut v = vec![0; b.arena.len()];
            for &(id, p) in &order {
                if let Some(s) = v.get_mut(id) {
                    *s = p;
                }
            }
            v
        };
        for (i, &(id, parent)) in order.iter().enumerate() {
            let ino = i as u64 + 1;
            let Some(n) = b.arena.get(id) else { continue };
            let e = &n.entry;
            let kind = kind_of(e.kind);
            let (mut a, mut bb, mut offset) = (0u32, 0u32, 0u64);
            match kind {
                FileKind::Dir => {
                    a = store::u32_of(flat.dirents.len())?;
                    bb = store::u32_of(n.children.len())?;
                    for (name, &c) in &n.children {
                        let r = flat.str(name.as_bytes())?;
                        let cino = ino_of.get(c).copied().unwrap_or(0);
                        flat.dirents.push([r.0, r.1, cino as u32]);
                        if let Some(slot) = name_of.get_mut(c) {
                            if slot.is_none() && parent_of.get(c) == Some(&ino) {
                                *slot = Some(r);
                            }
                        }
                    }
                }
                FileKind::File => {
                    (a, bb) = flat.str(e.path.as_bytes())?;
                    offset = e.offset;
                }
                FileKind::Symlink => (a, bb) = flat.str(e.link_target.as_bytes())?,
                FileKind::CharDev | FileKind::BlockDev => (a, bb) = (e.dev_major, e.dev_minor),
                FileKind::Fifo | FileKind::Socket => {}
            }
            let nlink = if kind == FileKind::Dir {
                2 + n.children.values().filter(|&&c| b.is_dir(c)).count() as u32
            } else {
                refs.get(id).copied().unwrap_or(1)
            };
            let mut xattrs: Vec<&(String, Vec<u8>)> = e
                .xattrs
                .iter()
                .filter(|(k, _)| {
                    b.keep_overlay_xattrs || !k.starts_with(super::sys::OVERLAY_PREFIX)
                })
                .collect();
            xattrs.sort();
            xattrs.dedup_by(|a, b| a.0 == b.0);
            let x_first = store::u32_of(flat.xattrs.len())?;
            for (k, v) in &xattrs {
                let k = flat.str(k.as_bytes())?;
                let v = flat.blob(v)?;
                flat.xattrs.push([k.0, k.1, v.0, v.1]);
            }
            if nlink > 1 && kind != FileKind::Dir {
                if let Some(ps) = paths.remove(&id) {
                    let first = store::u32_of(flat.apaths.len())?;
                    for p in &ps {
                        let r = flat.str(p.as_bytes())?;
                        flat.apaths.push([r.0, r.1]);
                    }
                    flat.aliases
                        .push([ino as u32, first, store::u32_of(ps.len())?]);
                }
            }
            flat.nodes.push(store::NodeRec {
                kind,
                mode: e.mode & 0o7777,
                uid: e.uid,
                gid: e.gid,
                nlink,
                layer: store::u32_of(n.layer)?,
                parent: parent as u32,
                name: name_of.get(id).copied().flatten().unwrap_or((0, 0)),
                xattrs: (x_first, store::u32_of(xattrs.len())?),
                a,
                b: bb,
                size: match kind {
                    FileKind::File => e.size,
                    FileKind::Symlink => e.link_target.len() as u64,
                    _ => 0,
                },
                mtime: e.mtime,
                offset,
            });
        }
        let layers_u32 = store::u32_of(layers)?;
        Self::from_vec(flat.finish(layers_u32)?, layers)
    }

    /// A tree over stored bytes (checked; see `tree_store.rs`) for an image of `layers` layers.
    pub fn from_vec(bytes: Vec<u8>, layers: usize) -> Result<Self> {
        let l = store::validate(&bytes, layers)?;
        Ok(MergedTree {
            buf: Buf::Owned(bytes),
            l,
        })
    }

    /// Read a tree stored by [`MergedTree::encode`] (copied; see [`MergedTree::open`]).
    pub fn decode(bytes: &[u8], layers: usize) -> Result<Self> {
        Self::from_vec(bytes.to_vec(), layers)
    }

    /// Map a stored tree file. It is checked once here (a linear pass and a CRC, no per-entry
    /// allocation) and then used in place.
    pub fn open(path: &Path, layers: usize) -> Result<Self> {
        let f = std::fs::File::open(path).map_err(|e| Error::io("open stored tree", path, e))?;
        // SAFETY: tree files live in strata's own 0700 store and are never modified in place:
        // they are written to a temp file and renamed over (`image/lazy.rs`), and a damaged
        // one is replaced the same way, so the mapped inode's bytes do not change or shrink
        // while mapped (which is what could make reads of the mapping fault).
        let map =
            unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io("map stored tree", path, e))?;
        let l = store::validate(&map, layers)?;
        Ok(MergedTree {
            buf: Buf::Mapped(map),
            l,
        })
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match &self.buf {
            Buf::Owned(v) => v,
            Buf::Mapped(m) => m,
        }
    }

    /// The string at (`off`, `len`) of the string table ("" if out of range, which
    /// `validate` rules out).
    fn str_at(&self, off: u32, len: u32) -> &str {
        let (s, e) = (off as usize, off as usize + len as usize);
        let sb = &self.bytes()[self.l.strings.min(self.bytes().len())..];
        sb.get(s..e)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("")
    }

    fn str_bytes(&self, off: u32, len: u32) -> &[u8] {
        let (s, e) = (off as usize, off as usize + len as usize);
        self.bytes()
            .get(self.l.strings..)
            .and_then(|sb| sb.get(s..e))
            .unwrap_or(&[])
    }

    /// The string referenced by the (offset, length) pair at byte `at`.
    fn str_ref(&self, at: usize) -> &str {
        let b = self.bytes();
        self.str_at(u32_at(b, at), u32_at(b, at + 4))
    }

    fn blob(&self, off: u32, len: u32) -> &[u8] {
        let (s, e) = (off as usize, off as usize + len as usize);
        self.bytes()
            .get(self.l.blobs..)
            .and_then(|sb| sb.get(s..e))
            .unwrap_or(&[])
    }

    /// Byte offset of the record of `ino`.
    fn rec(&self, ino: u64) -> Option<usize> {
        let i = usize::try_from(ino.checked_sub(1)?).ok()?;
        (i < self.l.n_nodes).then(|| self.l.nodes + i * store::NODE)
    }

    fn dirent(&self, i: usize) -> TreeDirEnt<'_> {
        let r = self.l.dirents + i * store::DIRENT;
        TreeDirEnt {
            name: self.str_ref(r),
            ino: u64::from(u32_at(self.bytes(), r + 8)),
        }
    }

    /// Number of objects (the largest inode number).
    pub fn len(&self) -> u64 {
        self.l.n_nodes as u64
    }

    pub fn is_empty(&self) -> bool {
        self.l.n_nodes == 0
    }

    /// The object with inode number `ino`.
    pub fn node(&self, ino: u64) -> Option<TreeNode<'_>> {
        use store::*;
        let r = self.rec(ino)?;
        let b = self.bytes();
        let kind = kind_from(*b.get(r + N_KIND)?)?;
        let (a, bb) = (u32_at(b, r + N_A), u32_at(b, r + N_B));
        let dev = matches!(kind, FileKind::CharDev | FileKind::BlockDev);
        Some(TreeNode {
            kind,
            mode: u32_at(b, r + N_MODE),
            uid: u32_at(b, r + N_UID),
            gid: u32_at(b, r + N_GID),
            size: u64_at(b, r + N_SIZE),
            mtime: Timestamp {
                sec: u64_at(b, r + N_SEC) as i64,
                nsec: u32_at(b, r + N_NSEC),
            },
            nlink: u32_at(b, r + N_NLINK),
            dev_major: if dev { a } else { 0 },
            dev_minor: if dev { bb } else { 0 },
            link_target: if kind == FileKind::Symlink {
                self.str_at(a, bb)
            } else {
                ""
            },
            parent: u64::from(u32_at(b, r + N_PARENT)),
            layer: u32_at(b, r + N_LAYER) as usize,
            ino,
            tree: self,
        })
    }

    /// Kind of `ino` (cheaper than [`node`](Self::node)).
    pub fn kind(&self, ino: u64) -> Option<FileKind> {
        store::kind_from(*self.bytes().get(self.rec(ino)? + store::N_KIND)?)
    }

    /// The first name of `ino`: (parent, name) as the depth-first walk met it (root: `None`).
    pub fn name(&self, ino: u64) -> Option<(u64, &str)> {
        let r = self.rec(ino)?;
        if ino == ROOT_INO {
            return None;
        }
        let b = self.bytes();
        Some((
            u64::from(u32_at(b, r + store::N_PARENT)),
            self.str_ref(r + store::N_NAME),
        ))
    }

    /// Sorted entries of directory `ino` (none for anything else).
    pub fn children(&self, ino: u64) -> Children<'_> {
        Children::new(self, ino)
    }

    /// Dirent record indices of directory `ino` (empty for anything else).
    fn dirents_of(&self, ino: u64) -> Range<usize> {
        let (next, end) = self
            .rec(ino)
            .filter(|&r| {
                self.bytes().get(r + store::N_KIND) == Some(&store::kind_code(FileKind::Dir))
            })
            .map(|r| {
                let b = self.bytes();
                let first = u32_at(b, r + store::N_A) as usize;
                (first, first + u32_at(b, r + store::N_B) as usize)
            })
            .unwrap_or((0, 0));
        next..end.min(self.l.n_dirents)
    }

    /// `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &str) -> Option<u64> {
        let Range {
            start: mut lo,
            end: mut hi,
        } = self.dirents_of(parent);
        let b = self.bytes();
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let r = self.l.dirents + mid * store::DIRENT;
            let cand = self.str_bytes(u32_at(b, r), u32_at(b, r + 4));
            match cand.cmp(name.as_bytes()) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(u64::from(u32_at(b, r + 8))),
            }
        }
        None
    }

    /// Resolve a relative path (`""` = root).
    pub fn resolve(&self, path: &str) -> Option<u64> {
        let mut cur = ROOT_INO;
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            cur = self.lookup(cur, comp)?;
        }
        Some(cur)
    }

    /// Every path of a hard-linked node (none for nodes with one name).
    pub fn aliases(&self, ino: u64) -> impl Iterator<Item = &str> + '_ {
        let b = self.bytes();
        let (mut lo, mut hi) = (0usize, self.l.n_aliases);
        let mut found = (0usize, 0usize);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let r = self.l.aliases + mid * store::ALIAS;
            match u64::from(u32_at(b, r)).cmp(&ino) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    let first = u32_at(b, r + 4) as usize;
                    found = (first, first + u32_at(b, r + 8) as usize);
                    break;
                }
            }
        }
        (found.0..found.1).map(move |i| self.str_ref(self.l.apaths + i * store::APATH))
    }
}

/// The trait view of the merged tree: the inherent accessors above, and record reads for the
/// cursors (positions are record indices of the dirent and xattr tables).
impl LowerBackend for MergedTree {
    fn len(&self) -> u64 {
        MergedTree::len(self)
    }

    fn node(&self, ino: u64) -> Option<TreeNode<'_>> {
        MergedTree::node(self, ino)
    }

    fn kind(&self, ino: u64) -> Option<FileKind> {
        MergedTree::kind(self, ino)
    }

    fn name(&self, ino: u64) -> Option<(u64, &str)> {
        MergedTree::name(self, ino)
    }

    fn lookup(&self, parent: u64, name: &str) -> Option<u64> {
        MergedTree::lookup(self, parent, name)
    }

    fn resolve(&self, path: &str) -> Option<u64> {
        MergedTree::resolve(self, path)
    }

    fn aliases(&self, ino: u64) -> Vec<String> {
        MergedTree::aliases(self, ino).map(String::from).collect()
    }

    fn content(&self, ino: u64) -> Option<LowerFile> {
        let r = self.rec(ino)?;
        let b = self.bytes();
        if store::kind_from(*b.get(r + store::N_KIND)?)? != FileKind::File {
            return None;
        }
        Some(LowerFile::new(
            u32_at(b, r + store::N_LAYER) as usize,
            self.str_at(u32_at(b, r + store::N_A), u32_at(b, r + store::N_B)),
            store::u64_at(b, r + store::N_SIZE),
            store::u64_at(b, r + store::N_OFFSET),
        ))
    }

    fn child_range(&self, ino: u64) -> Range<usize> {
        self.dirents_of(ino)
    }

    fn child_at(&self, _dir: u64, i: usize) -> Option<TreeDirEnt<'_>> {
        Some(self.dirent(i))
    }

    fn xattr_range(&self, ino: u64) -> Range<usize> {
        let Some(r) = self.rec(ino) else {
            return 0..0;
        };
        let b = self.bytes();
        let first = u32_at(b, r + store::N_XATTRS) as usize;
        first..first + u32_at(b, r + store::N_XATTRS + 4) as usize
    }

    fn xattr_at(&self, _ino: u64, i: usize) -> Option<(&str, &[u8])> {
        let r = self.l.xattrs + i * store::XATTR;
        let b = self.bytes();
        Some((
            self.str_ref(r),
            self.blob(u32_at(b, r + 8), u32_at(b, r + 12)),
        ))
    }
}
