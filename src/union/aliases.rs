//! [`Aliases`]: the names a node of the union's node table is known under, as (parent inode,
//! name) pairs, stored compactly. It asks the lower tree ([`LowerBackend`]) for a tree node's
//! first name and nothing else; it must not know the node table, the upper or `UnionFs`.

use super::backend::LowerBackend;
use std::ffi::{OsStr, OsString};

/// The names a node is known under: (parent inode, name) pairs. A lower object found under
/// its first name in the lower tree — almost every node of a walk over an image — stores
/// only that fact (the tree has the name), so the node table holds no string per node.
#[derive(Debug, Default)]
pub(crate) enum Aliases {
    #[default]
    Empty,
    /// The lower tree's first name of tree inode `ino`, in directory `parent`.
    Tree { parent: u64, ino: u64 },
    /// Anything else (renamed, hard-linked, upper objects), owned.
    List(Vec<(u64, OsString)>),
}

impl Aliases {
    pub fn is_empty(&self) -> bool {
        match self {
            Aliases::Empty => true,
            Aliases::Tree { .. } => false,
            Aliases::List(v) => v.is_empty(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Aliases::Empty => 0,
            Aliases::Tree { .. } => 1,
            Aliases::List(v) => v.len(),
        }
    }

    /// Parent directories, first name first.
    pub fn parents(&self) -> impl Iterator<Item = u64> + '_ {
        let (t, l) = self.parts();
        t.into_iter().chain(l.iter().map(|(p, _)| *p))
    }

    pub fn first_parent(&self) -> Option<u64> {
        self.parents().next()
    }

    fn parts(&self) -> (Option<u64>, &[(u64, OsString)]) {
        match self {
            Aliases::Empty => (None, &[]),
            Aliases::Tree { parent, .. } => (Some(*parent), &[]),
            Aliases::List(v) => (None, v),
        }
    }

    /// (parent, name) pairs, first name first.
    pub fn iter<'a>(
        &'a self,
        tree: &'a dyn LowerBackend,
    ) -> impl Iterator<Item = (u64, &'a OsStr)> {
        let t = match self {
            Aliases::Tree { parent, ino } => {
                let name = tree.name(*ino).map_or("", |(_, n)| n);
                Some((*parent, OsStr::new(name)))
            }
            _ => None,
        };
        let (_, l) = self.parts();
        t.into_iter()
            .chain(l.iter().map(|(p, n)| (*p, n.as_os_str())))
    }

    pub fn first<'a>(&'a self, tree: &'a dyn LowerBackend) -> Option<(u64, &'a OsStr)> {
        self.iter(tree).next()
    }

    pub fn contains(&self, parent: u64, name: &OsStr, tree: &dyn LowerBackend) -> bool {
        self.iter(tree).any(|(p, n)| p == parent && n == name)
    }

    /// Add `parent/name` (not already there). `lower` = the tree inode the node shows.
    pub fn push(&mut self, parent: u64, name: &OsStr, tree: &dyn LowerBackend, lower: Option<u64>) {
        if self.is_empty() {
            if let Some(l) = lower {
                if tree
                    .name(l)
                    .is_some_and(|(p, n)| p == parent && OsStr::new(n) == name)
                {
                    *self = Aliases::Tree { parent, ino: l };
                    return;
                }
            }
        }
        let mut v = self.take_list(tree);
        v.push((parent, name.to_os_string()));
        *self = Aliases::List(v);
    }

    /// Forget `parent/name`.
    pub fn remove(&mut self, parent: u64, name: &OsStr, tree: &dyn LowerBackend) {
        if !self.contains(parent, name, tree) {
            return;
        }
        let mut v = self.take_list(tree);
        v.retain(|(p, n)| !(*p == parent && n == name));
        *self = if v.is_empty() {
            Aliases::Empty
        } else {
            Aliases::List(v)
        };
    }

    pub fn clear(&mut self) {
        *self = Aliases::Empty;
    }

    /// The pairs as an owned list (leaves `self` empty).
    fn take_list(&mut self, tree: &dyn LowerBackend) -> Vec<(u64, OsString)> {
        match std::mem::take(self) {
            Aliases::Empty => Vec::new(),
            t @ Aliases::Tree { .. } => t.iter(tree).map(|(p, n)| (p, n.to_os_string())).collect(),
            Aliases::List(v) => v,
        }
    }
}
