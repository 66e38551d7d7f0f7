//! [`LowerTree`]: the read-only lower view a [`super::UnionFs`] sits on — the merged tree of
//! image layers ([`MergedTree`], built once), or plain directory lowers read as they are
//! looked into ([`DirTree`]). The union core asks only these accessors.

use super::dirtree::DirTree;
use super::tree::{Children, MergedTree, TreeNode};
use super::FileKind;
use std::sync::Arc;

/// The lower side of a union; see the module docs.
#[derive(Clone)]
pub enum LowerTree {
    Merged(Arc<MergedTree>),
    Dirs(Arc<DirTree>),
}

impl From<Arc<MergedTree>> for LowerTree {
    fn from(t: Arc<MergedTree>) -> Self {
        LowerTree::Merged(t)
    }
}

impl From<Arc<DirTree>> for LowerTree {
    fn from(t: Arc<DirTree>) -> Self {
        LowerTree::Dirs(t)
    }
}

impl LowerTree {
    /// Number of objects known (the largest inode number handed out).
    pub fn len(&self) -> u64 {
        match self {
            LowerTree::Merged(t) => t.len(),
            LowerTree::Dirs(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The object with inode number `ino`.
    pub fn node(&self, ino: u64) -> Option<TreeNode<'_>> {
        match self {
            LowerTree::Merged(t) => t.node(ino),
            LowerTree::Dirs(t) => t.node(ino),
        }
    }

    /// Kind of `ino` (cheaper than [`node`](Self::node)).
    pub fn kind(&self, ino: u64) -> Option<FileKind> {
        match self {
            LowerTree::Merged(t) => t.kind(ino),
            LowerTree::Dirs(t) => t.kind(ino),
        }
    }

    /// The first name of `ino`: (parent, name) (root: `None`).
    pub fn name(&self, ino: u64) -> Option<(u64, &str)> {
        match self {
            LowerTree::Merged(t) => t.name(ino),
            LowerTree::Dirs(t) => t.name(ino),
        }
    }

    /// Sorted entries of directory `ino` (none for anything else).
    pub fn children(&self, ino: u64) -> Children<'_> {
        match self {
            LowerTree::Merged(t) => t.children(ino),
            LowerTree::Dirs(t) => t.children(ino),
        }
    }

    /// `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &str) -> Option<u64> {
        match self {
            LowerTree::Merged(t) => t.lookup(parent, name),
            LowerTree::Dirs(t) => t.lookup(parent, name),
        }
    }

    /// Resolve a relative path (`""` = root).
    pub fn resolve(&self, path: &str) -> Option<u64> {
        match self {
            LowerTree::Merged(t) => t.resolve(path),
            LowerTree::Dirs(t) => t.resolve(path),
        }
    }

    /// Every path of a hard-linked node (empty for nodes with one name).
    pub fn aliases(&self, ino: u64) -> Vec<String> {
        match self {
            LowerTree::Merged(t) => t.aliases(ino).map(String::from).collect(),
            LowerTree::Dirs(t) => t.aliases(ino),
        }
    }

    /// The eagerly merged tree, if this is one.
    pub fn merged(&self) -> Option<&MergedTree> {
        match self {
            LowerTree::Merged(t) => Some(t),
            LowerTree::Dirs(_) => None,
        }
    }
}
