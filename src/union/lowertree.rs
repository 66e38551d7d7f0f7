//! [`LowerTree`]: the read-only lower view a [`super::UnionFs`] sits on — the merged tree of
//! image layers ([`MergedTree`], built once), or plain directory lowers read as they are
//! looked into ([`DirTree`]). The union core asks only these accessors.

use super::dirtree::DirTree;
use super::tree::{MergedTree, TreeDirEnt, TreeNode};
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
    pub fn node(&self, ino: u64) -> Option<&TreeNode> {
        match self {
            LowerTree::Merged(t) => t.node(ino),
            LowerTree::Dirs(t) => t.node(ino),
        }
    }

    /// Sorted entries of directory `ino` (empty for anything else).
    pub fn children(&self, ino: u64) -> &[TreeDirEnt] {
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

    /// User-visible xattrs of `ino`, sorted by name (a [`DirTree`] reads them on first use,
    /// so use this rather than `TreeNode::xattrs`).
    pub fn xattrs(&self, ino: u64) -> &[(String, Vec<u8>)] {
        match self {
            LowerTree::Merged(t) => t.node(ino).map(|n| n.xattrs.as_slice()).unwrap_or(&[]),
            LowerTree::Dirs(t) => t.xattrs(ino),
        }
    }

    /// Every path of a hard-linked node (empty for nodes with one name).
    pub fn aliases(&self, ino: u64) -> Vec<String> {
        match self {
            LowerTree::Merged(t) => t.aliases(ino).to_vec(),
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
