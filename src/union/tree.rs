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
use crate::layer::{Entry, LayerIndex, Timestamp};
use std::borrow::Borrow;
use std::ops::Range;
use std::path::Path;
use store::u32_at;

#[path = "tree_store.rs"]
mod store;

#[path = "tree_build.rs"]
mod build;

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

impl MergedTree {
    /// Merge `layers` (bottom first). Entries of each layer must be normalised and sorted as
    /// `layer::EntryTable::finish` produces them.
    pub fn build<L: AsRef<[Entry]>>(layers: &[L]) -> Result<Self> {
        let n = layers.iter().map(|l| l.as_ref().len()).sum();
        let mut b = build::Builder::new(false, n);
        for (li, entries) in layers.iter().enumerate() {
            b.layer(li, entries.as_ref().iter());
        }
        b.finish(layers.len())
    }

    /// Merge the layers of `indexes` (bottom first), reading their records in place: the same
    /// tree as [`build`](Self::build) of the indexes' entries, without copying them.
    pub fn build_indexes<I: Borrow<LayerIndex>>(indexes: &[I]) -> Result<Self> {
        let n = indexes.iter().map(|ix| ix.borrow().len()).sum();
        let mut b = build::Builder::new(false, n);
        for (li, ix) in indexes.iter().enumerate() {
            b.layer(li, ix.borrow().entries());
        }
        b.finish(indexes.len())
    }

    /// One layer as kernel overlayfs expects a lower layer directory (a containerd remote
    /// snapshot): its whiteouts as character devices 0/0 and its opaque directories with
    /// `trusted.overlay.opaque=y`, nothing applied or hidden. Entries as for [`build`](Self::build).
    pub fn build_layer_view(entries: &[Entry]) -> Result<Self> {
        let mut b = build::Builder::new(true, entries.len());
        b.layer(0, entries.iter());
        b.finish(1)
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
