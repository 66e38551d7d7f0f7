//! Inode numbers of upper objects and the life cycle of nodes: lookup counting, `forget`,
//! and sweeping nodes nobody references any more, so the node table stays bounded.
//!
//! Numbering: lower objects (and their copy-ups) keep their merged-tree number. An object that
//! exists only in the upper gets `UPPER_BASE + st_ino` of its upper file, a number derived
//! from the upper alone, so a node can be dropped when the kernel forgets it and the same
//! number comes back on the next lookup or readdir (readdir inode == stat inode without
//! keeping a node per listed name). Only mappings that cannot be derived again are kept for
//! the life of the mount: copy-ups (bounded by the tree size) and upper objects created over
//! a hidden lower name. Upper files with `st_ino` above the derived range get sequential
//! numbers from `FALLBACK_BASE`, remembered while the file exists.

use super::fs::{State, UnionFs};
use super::lowertree::LowerTree;
use super::{sys, Error, FileKind, Result, ROOT_INO};
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::MetadataExt;

/// First derived number for upper-only objects; the merged tree must stay below it.
pub const UPPER_BASE: u64 = 1 << 40;
/// Upper `st_ino` values below this map to `UPPER_BASE + st_ino`.
const UPPER_SPAN: u64 = 1 << 40;
/// Sequential numbers for upper objects outside the derived range.
pub const FALLBACK_BASE: u64 = 1 << 62;
/// Sweep unreferenced nodes when the table has grown by this many since the last sweep.
const SWEEP_SLACK: usize = 4096;

impl UnionFs {
    /// Inode number (and lower tree inode shown through, if any) for the upper object `m` at
    /// `parent/name`, without touching the node table except for a fallback allocation.
    pub(crate) fn upper_ino(
        &self,
        st: &mut State,
        parent: u64,
        name: &OsStr,
        m: &std::fs::Metadata,
        fresh: bool,
    ) -> Result<(u64, Option<u64>)> {
        let key = (m.dev(), m.ino());
        let kind = FileKind::from_mode(m.mode())
            .ok_or(Error::NotSupported("unknown file type in upper"))?;
        let lc = self.lower_child(st, parent, name);
        let lower_same = lc.filter(|&l| self.tree.kind(l) == Some(kind));
        if let Some(&ino) = st.by_upper.get(&key) {
            let lower = if kind == FileKind::Dir {
                match st.nodes.get(&ino) {
                    Some(n) => n.lower,
                    // A copied-up lower directory merges its lower entries only where it
                    // still sits on its own lower name (a moved one is opaque, and so is
                    // everything below it).
                    None if ino < UPPER_BASE && lc == Some(ino) => {
                        let p = self.upper()?.path(&self.rel_path(st, parent)?.join(name));
                        (!sys::is_opaque(&p)).then_some(ino)
                    }
                    None => None,
                }
            } else {
                (ino < UPPER_BASE).then_some(ino)
            };
            return Ok((ino, lower));
        }
        if kind == FileKind::Dir {
            if let Some(l) = lower_same {
                let p = self.upper()?.path(&self.rel_path(st, parent)?.join(name));
                if !sys::is_opaque(&p) && !st.nodes.get(&l).is_some_and(|n| n.upper) {
                    return Ok((l, Some(l)));
                }
            }
        } else if let Some(l) = lower_same {
            let free = !st.nodes.contains_key(&l) && !st.claimed.contains_key(&l);
            if !fresh && free {
                return Ok((l, Some(l)));
            }
        }
        if m.ino() < UPPER_SPAN {
            return Ok((UPPER_BASE + m.ino(), None));
        }
        let ino = st.next_ino;
        st.next_ino += 1;
        Ok((ino, None))
    }

    /// The number `readdir` shows for an upper entry (equal to what a lookup gives).
    pub(crate) fn peek_upper_ino(
        &self,
        st: &mut State,
        parent: u64,
        name: &OsStr,
        m: &std::fs::Metadata,
    ) -> Result<u64> {
        let key = (m.dev(), m.ino());
        if let Some(&ino) = st.by_upper.get(&key) {
            return Ok(ino);
        }
        if m.ino() >= UPPER_SPAN {
            // Fallback numbers must be remembered: create the node.
            return self.node_for_upper(st, parent, name, m, false);
        }
        Ok(self.upper_ino(st, parent, name, m, false)?.0)
    }

    /// The kernel was sent an entry for `ino`.
    pub(crate) fn count_lookup(st: &mut State, ino: u64) {
        if let Some(n) = st.nodes.get_mut(&ino) {
            n.lookups += 1;
        }
    }

    /// `forget(ino, nlookup)`: the kernel dropped `nlookup` references. A node nobody
    /// references any more (no lookups, no open handle) leaves the table.
    pub fn forget(&self, ino: u64, nlookup: u64) {
        let mut st = self.lock();
        let Some(n) = st.nodes.get_mut(&ino) else {
            return;
        };
        n.lookups = n.lookups.saturating_sub(nlookup);
        if n.lookups == 0 && ino != ROOT_INO && !self.has_open_handle(ino) {
            self.evict(&mut st, ino);
        }
        if st.nodes.len() > st.swept_at + SWEEP_SLACK {
            self.sweep(&mut st);
        }
    }

    /// Number of nodes in the table (for tests and `stats`).
    pub fn node_count(&self) -> usize {
        self.lock().nodes.len()
    }

    fn has_open_handle(&self, ino: u64) -> bool {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|h| h.ino() == ino)
    }

    /// Drop node `ino`, keeping only the upper-key mappings that cannot be derived again.
    fn evict(&self, st: &mut State, ino: u64) {
        let Some(n) = st.nodes.remove(&ino) else {
            return;
        };
        let Some(key) = n.upper_key.as_deref().copied() else {
            return;
        };
        if st.by_upper.get(&key) != Some(&ino) {
            return;
        }
        // A copy-up keeps its lower number (remembered; bounded by the tree); fallback
        // numbers cannot be derived either.
        let derivable = if !(UPPER_BASE..FALLBACK_BASE).contains(&ino) {
            false
        } else {
            // Derived again unless a lower object of that kind sits under one of its names.
            n.aliases.iter(&self.tree).all(|(p, name)| {
                let lc = st
                    .nodes
                    .get(&p)
                    .and_then(|pn| pn.lower)
                    .and_then(|pl| self.tree.lookup(pl, sys::name_str(name)?));
                lc.and_then(|l| self.tree.kind(l))
                    .is_none_or(|k| k != n.kind)
            }) && !n.aliases.is_empty()
        };
        if derivable {
            st.by_upper.remove(&key);
        }
    }

    /// Drop every node without kernel references or open handles that is not a directory on
    /// the way to one that has them.
    fn sweep(&self, st: &mut State) {
        let open: HashSet<u64> = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|h| h.ino())
            .collect();
        let mut keep: HashSet<u64> = HashSet::new();
        let mut stack: Vec<u64> = st
            .nodes
            .iter()
            .filter(|(i, n)| **i == ROOT_INO || n.lookups > 0 || open.contains(i))
            .map(|(i, _)| *i)
            .collect();
        while let Some(i) = stack.pop() {
            if !keep.insert(i) {
                continue;
            }
            if let Some(n) = st.nodes.get(&i) {
                stack.extend(n.aliases.parents());
            }
        }
        let drop: Vec<u64> = st
            .nodes
            .keys()
            .filter(|i| !keep.contains(i))
            .copied()
            .collect();
        for i in drop {
            self.evict(st, i);
        }
        st.swept_at = st.nodes.len();
    }
}

/// The names a node is known under: (parent inode, name) pairs. A lower object found under
/// its first name in the merged tree — almost every node of a walk over an image — stores
/// only that fact (the tree has the name), so the node table holds no string per node.
#[derive(Debug, Default)]
pub(crate) enum Aliases {
    #[default]
    Empty,
    /// The merged tree's first name of tree inode `ino`, in directory `parent`.
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
    pub fn iter<'a>(&'a self, tree: &'a LowerTree) -> impl Iterator<Item = (u64, &'a OsStr)> {
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

    pub fn first<'a>(&'a self, tree: &'a LowerTree) -> Option<(u64, &'a OsStr)> {
        self.iter(tree).next()
    }

    pub fn contains(&self, parent: u64, name: &OsStr, tree: &LowerTree) -> bool {
        self.iter(tree).any(|(p, n)| p == parent && n == name)
    }

    /// Add `parent/name` (not already there). `lower` = the tree inode the node shows.
    pub fn push(&mut self, parent: u64, name: &OsStr, tree: &LowerTree, lower: Option<u64>) {
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
    pub fn remove(&mut self, parent: u64, name: &OsStr, tree: &LowerTree) {
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
    fn take_list(&mut self, tree: &LowerTree) -> Vec<(u64, OsString)> {
        match std::mem::take(self) {
            Aliases::Empty => Vec::new(),
            t @ Aliases::Tree { .. } => t.iter(tree).map(|(p, n)| (p, n.to_os_string())).collect(),
            Aliases::List(v) => v,
        }
    }
}

#[cfg(test)]
mod size_tests {
    /// The node table is sized by lower-only nodes (one per name a walk met): keep a node
    /// small. (88 bytes before the aliases and upper key were made compact.)
    #[test]
    fn node_stays_small() {
        assert!(std::mem::size_of::<super::super::fs::Node>() <= 72);
        assert!(std::mem::size_of::<super::Aliases>() <= 24);
    }
}
