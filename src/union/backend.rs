//! The lower side of a union as one trait: [`LowerBackend`], what the union core asks of a
//! read-only lower tree (a node's attributes, a directory's sorted entries, a name in a
//! directory, xattrs, the content reference of a file, the names of a hard-linked file), and
//! the small views it answers with ([`TreeNode`], [`TreeDirEnt`], [`Children`], [`Xattrs`]).
//! [`LowerTree`] is the shared handle the core holds (`Arc<dyn LowerBackend>`).
//!
//! Implemented by the merged tree of image layers (`tree.rs`, built once, mmap-ed at a
//! remount) and by the lazily read directory lowers of `strata overlay` (`dirtree.rs`). This
//! module imports neither of them, and no module of the union switches on which backend it
//! has. It may use `lower` (for [`LowerFile`]) and `layer` (for `Timestamp`).

use super::lower::LowerFile;
use super::{FileKind, ROOT_INO};
use crate::layer::Timestamp;
use std::ops::Range;
use std::sync::Arc;

/// A read-only lower tree with stable inode numbers (root = [`ROOT_INO`]); see the module
/// docs. Numbers are `1..=len()`; every number handed out keeps its node.
///
/// [`Children`] and [`Xattrs`] are cursors over positions the backend chooses: `*_range`
/// gives the positions of one directory's entries (or one node's xattrs), `*_at` reads one.
pub trait LowerBackend: Send + Sync {
    /// Number of objects known (the largest inode number handed out).
    fn len(&self) -> u64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The object with inode number `ino`.
    fn node(&self, ino: u64) -> Option<TreeNode<'_>>;

    /// Kind of `ino` (cheaper than [`node`](Self::node)).
    fn kind(&self, ino: u64) -> Option<FileKind>;

    /// The first name of `ino`: (parent, name) (root: `None`).
    fn name(&self, ino: u64) -> Option<(u64, &str)>;

    /// `name` in directory `parent`.
    fn lookup(&self, parent: u64, name: &str) -> Option<u64>;

    /// Resolve a relative path (`""` = root).
    fn resolve(&self, path: &str) -> Option<u64> {
        path.split('/')
            .filter(|c| !c.is_empty())
            .try_fold(ROOT_INO, |cur, c| self.lookup(cur, c))
    }

    /// Every path of a hard-linked node (empty for nodes with one name).
    fn aliases(&self, ino: u64) -> Vec<String>;

    /// Content of the regular file `ino` (allocates: call it at open, not per lookup).
    fn content(&self, ino: u64) -> Option<LowerFile>;

    /// Positions of the entries of directory `ino` (empty for anything else).
    fn child_range(&self, ino: u64) -> Range<usize>;

    /// The entry at position `i` of directory `dir` (a position from
    /// [`child_range`](Self::child_range)).
    fn child_at(&self, dir: u64, i: usize) -> Option<TreeDirEnt<'_>>;

    /// Positions of the user-visible xattrs of `ino`.
    fn xattr_range(&self, ino: u64) -> Range<usize>;

    /// The xattr at position `i` of `ino` (a position from [`xattr_range`](Self::xattr_range)).
    fn xattr_at(&self, ino: u64, i: usize) -> Option<(&str, &[u8])>;
}

impl dyn LowerBackend + '_ {
    /// Sorted entries of directory `ino` (none for anything else).
    pub fn children(&self, ino: u64) -> Children<'_> {
        Children::new(self, ino)
    }
}

/// The lower tree a [`super::UnionFs`] sits on: a shared [`LowerBackend`].
#[derive(Clone)]
pub struct LowerTree(Arc<dyn LowerBackend>);

impl<T: LowerBackend + 'static> From<Arc<T>> for LowerTree {
    fn from(t: Arc<T>) -> Self {
        LowerTree(t)
    }
}

impl From<Arc<dyn LowerBackend>> for LowerTree {
    fn from(t: Arc<dyn LowerBackend>) -> Self {
        LowerTree(t)
    }
}

impl std::ops::Deref for LowerTree {
    type Target = dyn LowerBackend;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

/// One object of a lower tree: a small copy of its attributes, with borrowed strings.
#[derive(Clone, Copy)]
pub struct TreeNode<'a> {
    pub kind: FileKind,
    /// Permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: Timestamp,
    /// Names of a non-directory; for a directory, 2 + subdirectories (a merged directory of
    /// directory lowers: 1, as overlayfs reports it).
    pub nlink: u32,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub link_target: &'a str,
    /// Parent directory (the first one for hard links; the root is its own parent).
    pub parent: u64,
    /// Layer that provided the attributes.
    pub layer: usize,
    /// The node's inode number in `tree`.
    pub(super) ino: u64,
    /// The backend that answered, asked again for xattrs and content.
    pub(super) tree: &'a dyn LowerBackend,
}

impl<'a> TreeNode<'a> {
    /// User-visible xattrs (overlay-private ones removed), sorted by name.
    pub fn xattrs(&self) -> Xattrs<'a> {
        Xattrs {
            tree: self.tree,
            ino: self.ino,
            pos: self.tree.xattr_range(self.ino),
        }
    }

    /// The value of xattr `name`.
    pub fn xattr(&self, name: &str) -> Option<&'a [u8]> {
        self.xattrs().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// Content of a regular file (allocates the path: call it at open, not per lookup).
    pub fn content(&self) -> Option<LowerFile> {
        self.tree.content(self.ino)
    }
}

impl std::fmt::Debug for TreeNode<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeNode")
            .field("kind", &self.kind)
            .field("mode", &self.mode)
            .field("size", &self.size)
            .field("nlink", &self.nlink)
            .field("parent", &self.parent)
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}

/// The xattrs of a [`TreeNode`], sorted by name.
pub struct Xattrs<'a> {
    tree: &'a dyn LowerBackend,
    ino: u64,
    pos: Range<usize>,
}

impl<'a> Iterator for Xattrs<'a> {
    type Item = (&'a str, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        let i = self.pos.next()?;
        self.tree.xattr_at(self.ino, i)
    }
}

/// One directory entry of a lower tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeDirEnt<'a> {
    pub name: &'a str,
    pub ino: u64,
}

/// Entries of one directory, in name order.
pub struct Children<'a> {
    tree: &'a dyn LowerBackend,
    dir: u64,
    pos: Range<usize>,
}

impl<'a> Children<'a> {
    /// The entries of directory `dir` of `tree`.
    pub(super) fn new(tree: &'a dyn LowerBackend, dir: u64) -> Self {
        Children {
            tree,
            dir,
            pos: tree.child_range(dir),
        }
    }

    fn at(&self, i: usize) -> TreeDirEnt<'a> {
        // Not `None` for a position of `child_range`; an empty entry otherwise.
        self.tree
            .child_at(self.dir, i)
            .unwrap_or(TreeDirEnt { name: "", ino: 0 })
    }
}

impl<'a> Iterator for Children<'a> {
    type Item = TreeDirEnt<'a>;
    fn next(&mut self) -> Option<TreeDirEnt<'a>> {
        let i = self.pos.next()?;
        Some(self.at(i))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.pos.size_hint()
    }
}

impl DoubleEndedIterator for Children<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        let i = self.pos.next_back()?;
        Some(self.at(i))
    }
}

impl ExactSizeIterator for Children<'_> {}
