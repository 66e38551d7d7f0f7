//! [`NodeTable`]: the union's inode table — node allocation, the names each node is known
//! under, lookup counting and `forget`, sweeping nodes nobody references any more (so the table
//! stays bounded), and the inode numbers of upper objects. It asks the lower tree
//! ([`LowerBackend`]) for numbers, kinds and names, and is handed the upper's answers
//! (metadata, "is this directory opaque"); it must not touch the upper directory, open
//! handles or lower data itself (`UnionFs` in `fs.rs` does, and uses the table through
//! methods).
//!
//! Numbering: lower objects (and their copy-ups) keep their lower tree number, so the numbers
//! of an image mount are the same at every mount and after copy-up. An object that exists
//! only in the upper gets `UPPER_BASE + st_ino` of its upper file, a number derived from the
//! upper alone, so a node can be dropped when the kernel forgets it and the same number comes
//! back on the next lookup or readdir (readdir inode == stat inode without keeping a node per
//! listed name). Only mappings that cannot be derived again are kept for the life of the
//! mount: copy-ups (bounded by the tree size) and upper objects created over a hidden lower
//! name. Upper files with `st_ino` above the derived range get sequential numbers from
//! `FALLBACK_BASE`, remembered while the file exists.

use super::aliases::Aliases;
use super::backend::LowerTree;
use super::{sys, Error, FileKind, Result, ROOT_INO};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// First derived number for upper-only objects; the merged tree must stay below it.
pub const UPPER_BASE: u64 = 1 << 40;
/// Upper `st_ino` values below this map to `UPPER_BASE + st_ino`.
const UPPER_SPAN: u64 = 1 << 40;
/// Sequential numbers for upper objects outside the derived range.
const FALLBACK_BASE: u64 = 1 << 62;
/// Sweep unreferenced nodes when the table has grown by this many since the last sweep.
const SWEEP_SLACK: usize = 4096;

/// `(st_dev, st_ino)` of an upper object.
pub(crate) type UpperKey = (u64, u64);

/// One object of the union.
#[derive(Debug)]
pub(crate) struct Node {
    pub kind: FileKind,
    /// Tree inode whose contents show through (files: content origin; dirs: merged children).
    pub lower: Option<u64>,
    /// The object exists in the upper directory.
    pub upper: bool,
    /// `(dev, ino)` of the upper object (boxed: most nodes of a walk are lower-only, and the
    /// table is sized by them).
    pub upper_key: Option<Box<UpperKey>>,
    /// Names this object is known under.
    pub aliases: Aliases,
    /// Lookups the kernel holds on this node (entries replied minus `forget`s).
    pub lookups: u64,
    /// `O_PATH` descriptor of the upper object, taken when its last known name was removed,
    /// so `fstat` of something still open (a fifo, say: no handle here) keeps answering.
    pub orphan: Option<Arc<File>>,
}

/// The node table; see the module docs. Guarded by `UnionFs`'s mutex.
pub(crate) struct NodeTable {
    tree: LowerTree,
    nodes: HashMap<u64, Node>,
    /// Upper `(dev, ino)` -> union inode, for live nodes and for upper objects whose number
    /// cannot be derived again (copy-ups keep their lower number).
    by_upper: HashMap<UpperKey, u64>,
    /// Tree inode -> upper key of the object that took it over by copy-up.
    claimed: HashMap<u64, UpperKey>,
    /// Next number for upper objects whose `st_ino` does not fit the derived range.
    next_ino: u64,
    /// Node count after the last sweep of unreferenced nodes.
    swept_at: usize,
    /// Union inode -> (upper `st_ctime` right after strata's own change, ctime to show):
    /// changes the union makes on its own (a copy-up, installing a copied-up child) are not
    /// the user's and must not move `st_ctime`; the mask holds until the upper ctime moves.
    ctimes: HashMap<u64, (CTime, std::time::SystemTime)>,
}

/// `(st_ctime, st_ctime_nsec)` of an upper object.
pub(crate) type CTime = (i64, i64);

impl NodeTable {
    /// A table holding the root over `tree`; `upper_root` = the upper root's key and whether
    /// it is opaque (then the lower root does not show through).
    pub fn new(tree: LowerTree, upper_root: Option<(UpperKey, bool)>) -> Self {
        let mut t = NodeTable {
            tree,
            nodes: HashMap::new(),
            by_upper: HashMap::new(),
            claimed: HashMap::new(),
            next_ino: FALLBACK_BASE,
            swept_at: 0,
            ctimes: HashMap::new(),
        };
        let mut root = Node {
            kind: FileKind::Dir,
            lower: Some(ROOT_INO),
            upper: false,
            upper_key: None,
            aliases: Aliases::default(),
            lookups: 1,
            orphan: None,
        };
        if let Some((key, opaque)) = upper_root {
            root.upper = true;
            root.upper_key = Some(Box::new(key));
            if opaque {
                root.lower = None;
            }
            t.by_upper.insert(key, ROOT_INO);
        }
        t.nodes.insert(ROOT_INO, root);
        t
    }

    /// Show `shown` as the ctime of `ino` while its upper ctime stays `upper`.
    pub fn mask_ctime(&mut self, ino: u64, upper: CTime, shown: std::time::SystemTime) {
        self.ctimes.insert(ino, (upper, shown));
    }

    /// The ctime to show for `ino` whose upper ctime is `upper`, if masked (a mask whose upper
    /// ctime moved is dropped).
    pub fn shown_ctime(&self, ino: u64, upper: CTime) -> Option<std::time::SystemTime> {
        match self.ctimes.get(&ino) {
            Some((u, shown)) if *u == upper => Some(*shown),
            _ => None,
        }
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    /// Node `ino`, or [`Error::StaleInode`].
    pub fn node(&self, ino: u64) -> Result<&Node> {
        self.nodes.get(&ino).ok_or(Error::StaleInode(ino))
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Path of `ino` relative to the union root (= its upper path).
    pub fn rel_path(&self, ino: u64) -> Result<PathBuf> {
        let mut names: Vec<&OsStr> = Vec::new();
        let mut cur = ino;
        while cur != ROOT_INO {
            let n = self.node(cur)?;
            // Prefer a name whose directory is still in the table (others may be forgotten).
            let (p, name) = n
                .aliases
                .iter(&*self.tree)
                .find(|(p, _)| *p == ROOT_INO || self.nodes.contains_key(p))
                .or(n.aliases.first(&*self.tree))
                .ok_or_else(|| Error::NotFound(format!("inode {ino}")))?;
            names.push(name);
            cur = p;
            if names.len() > 4096 {
                return Err(Error::Invalid("directory loop"));
            }
        }
        Ok(names.iter().rev().collect())
    }

    /// Record that `ino` is known as `parent/name` (a directory has one name only).
    pub fn add_alias(&mut self, ino: u64, parent: u64, name: &OsStr) {
        let tree = &*self.tree;
        if let Some(n) = self.nodes.get_mut(&ino) {
            if !n.aliases.contains(parent, name, tree) {
                if n.kind == FileKind::Dir {
                    n.aliases.clear();
                }
                n.aliases.push(parent, name, tree, n.lower);
            }
        }
    }

    /// Forget the name `parent/name` of `ino` after it was removed; with its last name gone,
    /// its upper key is forgotten too.
    pub fn drop_alias(&mut self, ino: u64, parent: u64, name: &OsStr) {
        let tree = &*self.tree;
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.aliases.remove(parent, name, tree);
            if n.aliases.is_empty() {
                if let Some(k) = n.upper_key.take().map(|k| *k) {
                    self.by_upper.remove(&k);
                    if self.claimed.get(&ino) == Some(&k) {
                        self.claimed.remove(&ino);
                    }
                }
            }
        }
    }

    /// Tree inode of `name` in the lower view of directory node `parent`.
    pub fn lower_child(&self, parent: u64, name: &OsStr) -> Option<u64> {
        let pl = self.nodes.get(&parent)?.lower?;
        self.tree.lookup(pl, sys::name_str(name)?)
    }

    /// The node for tree inode `l`, found as `parent/name` in the lower view (created
    /// lower-only if new).
    pub fn lower_node(&mut self, l: u64, parent: u64, name: &OsStr) -> u64 {
        let kind = self.tree.kind(l).unwrap_or(FileKind::File);
        self.nodes.entry(l).or_insert(Node {
            kind,
            lower: Some(l),
            upper: false,
            upper_key: None,
            aliases: Aliases::default(),
            lookups: 0,
            orphan: None,
        });
        self.add_alias(l, parent, name);
        l
    }

    /// `ino` now exists in the upper as the object `key`.
    pub fn set_upper(&mut self, ino: u64, key: UpperKey) {
        self.by_upper.insert(key, ino);
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.upper = true;
            n.upper_key = Some(Box::new(key));
        }
    }

    /// Node for an upper object `m` found at `parent/name`. `fresh` = just created by us
    /// (never reuse a lower inode number for it). `opaque(rel)`: is the upper directory at
    /// union path `rel` opaque?
    pub fn upper_node(
        &mut self,
        parent: u64,
        name: &OsStr,
        m: &std::fs::Metadata,
        fresh: bool,
        opaque: &dyn Fn(&Path) -> Result<bool>,
    ) -> Result<u64> {
        let key = (m.dev(), m.ino());
        if let Some(&ino) = self.by_upper.get(&key) {
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.upper = true;
                self.add_alias(ino, parent, name);
                return Ok(ino);
            }
        }
        let kind = FileKind::from_mode(m.mode())
            .ok_or(Error::NotSupported("unknown file type in upper"))?;
        let (ino, lower) = self.upper_ino(parent, name, m, fresh, opaque)?;
        let node = self.nodes.entry(ino).or_insert(Node {
            kind,
            lower,
            upper: true,
            upper_key: Some(Box::new(key)),
            aliases: Aliases::default(),
            lookups: 0,
            orphan: None,
        });
        node.upper = true;
        node.kind = kind;
        node.upper_key = Some(Box::new(key));
        self.by_upper.insert(key, ino);
        if let Some(l) = lower.filter(|_| kind != FileKind::Dir) {
            self.claimed.insert(l, key);
        }
        self.add_alias(ino, parent, name);
        Ok(ino)
    }

    /// Inode number (and lower tree inode shown through, if any) for the upper object `m` at
    /// `parent/name`, without touching the nodes (a fallback number is allocated, though).
    fn upper_ino(
        &mut self,
        parent: u64,
        name: &OsStr,
        m: &std::fs::Metadata,
        fresh: bool,
        opaque: &dyn Fn(&Path) -> Result<bool>,
    ) -> Result<(u64, Option<u64>)> {
        let key = (m.dev(), m.ino());
        let kind = FileKind::from_mode(m.mode())
            .ok_or(Error::NotSupported("unknown file type in upper"))?;
        let lc = self.lower_child(parent, name);
        let lower_same = lc.filter(|&l| self.tree.kind(l) == Some(kind));
        if let Some(&ino) = self.by_upper.get(&key) {
            let lower = if kind == FileKind::Dir {
                match self.nodes.get(&ino) {
                    Some(n) => n.lower,
                    // A copied-up lower directory merges its lower entries only where it
                    // still sits on its own lower name (a moved one is opaque, and so is
                    // everything below it).
                    None if ino < UPPER_BASE && lc == Some(ino) => {
                        (!opaque(&self.rel_path(parent)?.join(name))?).then_some(ino)
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
                if !opaque(&self.rel_path(parent)?.join(name))?
                    && !self.nodes.get(&l).is_some_and(|n| n.upper)
                {
                    return Ok((l, Some(l)));
                }
            }
        } else if let Some(l) = lower_same {
            let free = !self.nodes.contains_key(&l) && !self.claimed.contains_key(&l);
            if !fresh && free {
                return Ok((l, Some(l)));
            }
        }
        if m.ino() < UPPER_SPAN {
            return Ok((UPPER_BASE + m.ino(), None));
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        Ok((ino, None))
    }

    /// The number `readdir` shows for an upper entry (equal to what a lookup gives).
    pub fn peek_upper_ino(
        &mut self,
        parent: u64,
        name: &OsStr,
        m: &std::fs::Metadata,
        opaque: &dyn Fn(&Path) -> Result<bool>,
    ) -> Result<u64> {
        let key = (m.dev(), m.ino());
        if let Some(&ino) = self.by_upper.get(&key) {
            return Ok(ino);
        }
        if m.ino() >= UPPER_SPAN {
            // Fallback numbers must be remembered: create the node.
            return self.upper_node(parent, name, m, false, opaque);
        }
        Ok(self.upper_ino(parent, name, m, false, opaque)?.0)
    }

    /// Is node `ino` the directory `top` or below it (following first names upwards)?
    pub fn is_within(&self, ino: u64, top: u64) -> bool {
        let mut cur = ino;
        for _ in 0..4096 {
            if cur == top {
                return true;
            }
            match self.nodes.get(&cur).and_then(|n| n.aliases.first_parent()) {
                Some(p) if cur != ROOT_INO => cur = p,
                _ => return false,
            }
        }
        false
    }

    /// The directory `top` merges no lower entries any more, nor does anything below it:
    /// forget the lower view of every directory node in the subtree.
    pub fn detach_lower_below(&mut self, top: u64) {
        let below: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.kind == FileKind::Dir && n.lower.is_some())
            .map(|(i, _)| *i)
            .filter(|&i| self.is_within(i, top))
            .collect();
        for i in below {
            if let Some(n) = self.nodes.get_mut(&i) {
                n.lower = None;
            }
        }
    }

    /// The kernel was sent an entry for `ino`.
    pub fn count_lookup(&mut self, ino: u64) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.lookups += 1;
        }
    }

    /// The kernel dropped `nlookup` references to `ino`: `true` if it holds none any more
    /// (and `ino` is not the root), so the node may go unless a handle is open on it.
    pub fn release(&mut self, ino: u64, nlookup: u64) -> bool {
        let Some(n) = self.nodes.get_mut(&ino) else {
            return false;
        };
        n.lookups = n.lookups.saturating_sub(nlookup);
        n.lookups == 0 && ino != ROOT_INO
    }

    /// Has the table grown enough since the last sweep to sweep again?
    pub fn needs_sweep(&self) -> bool {
        self.nodes.len() > self.swept_at + SWEEP_SLACK
    }

    /// Drop node `ino`, keeping only the upper-key mappings that cannot be derived again.
    pub fn evict(&mut self, ino: u64) {
        let Some(n) = self.nodes.remove(&ino) else {
            return;
        };
        let Some(key) = n.upper_key.as_deref().copied() else {
            return;
        };
        if self.by_upper.get(&key) != Some(&ino) {
            return;
        }
        // A copy-up keeps its lower number (remembered; bounded by the tree); fallback
        // numbers cannot be derived either.
        let derivable = if !(UPPER_BASE..FALLBACK_BASE).contains(&ino) {
            false
        } else {
            // Derived again unless a lower object of that kind sits under one of its names.
            let tree = &*self.tree;
            n.aliases.iter(tree).all(|(p, name)| {
                let lc = self
                    .nodes
                    .get(&p)
                    .and_then(|pn| pn.lower)
                    .and_then(|pl| tree.lookup(pl, sys::name_str(name)?));
                lc.and_then(|l| tree.kind(l)).is_none_or(|k| k != n.kind)
            }) && !n.aliases.is_empty()
        };
        if derivable {
            self.by_upper.remove(&key);
        }
    }

    /// Drop every node without kernel references or open handles (`open`: inodes with an
    /// open handle) that is not a directory on the way to one that has them.
    pub fn sweep(&mut self, open: &HashSet<u64>) {
        let mut keep: HashSet<u64> = HashSet::new();
        let mut stack: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(i, n)| **i == ROOT_INO || n.lookups > 0 || open.contains(i))
            .map(|(i, _)| *i)
            .collect();
        while let Some(i) = stack.pop() {
            if !keep.insert(i) {
                continue;
            }
            if let Some(n) = self.nodes.get(&i) {
                stack.extend(n.aliases.parents());
            }
        }
        let drop: Vec<u64> = self
            .nodes
            .keys()
            .filter(|i| !keep.contains(i))
            .copied()
            .collect();
        for i in drop {
            self.evict(i);
        }
        self.swept_at = self.nodes.len();
    }
}

#[cfg(test)]
mod size_tests {
    /// The node table is sized by lower-only nodes (one per name a walk met): keep a node
    /// small. (88 bytes before the aliases and upper key were made compact.)
    #[test]
    fn node_stays_small() {
        assert!(std::mem::size_of::<super::Node>() <= 72);
        assert!(std::mem::size_of::<super::Aliases>() <= 24);
    }
}
