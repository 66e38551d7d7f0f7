//! The merged lower tree: N layers' entry lists applied bottom to top, once.
//!
//! Rules (kernel overlayfs / OCI): a whiteout removes the name (and its subtree) from the
//! layers below; an opaque directory hides everything below it; a directory over a directory
//! merges, anything else replaces; an `implicit` directory (synthesised by the layer reader)
//! does not override a lower directory's attributes; hard links share one node and `nlink`
//! counts the names that survive. Inode numbers are assigned by a depth-first walk in name
//! order, so the same layers always give the same numbers (root = 1). Lookup, getattr and
//! readdir never walk layers. The result is plain vectors indexed by inode, a layout that can
//! later be written to disk and mmap-ed without changing the accessors.

use super::lower::LowerFile;
use super::{FileKind, Result, ROOT_INO};
use crate::layer::{Entry, EntryKind, Timestamp};
use std::collections::BTreeMap;

#[path = "tree_store.rs"]
mod store;

/// One object of the merged tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeNode {
    pub kind: FileKind,
    /// Permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: Timestamp,
    /// Names of a non-directory; 2 + subdirectories for a directory.
    pub nlink: u32,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// User-visible xattrs (overlay-private ones removed), sorted by name.
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub link_target: String,
    /// Content of a regular file.
    pub content: Option<LowerFile>,
    /// Parent directory (the first one for hard links; the root is its own parent).
    pub parent: u64,
    /// Layer that provided the attributes.
    pub layer: usize,
}

/// One directory entry of the merged tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeDirEnt {
    pub name: String,
    pub ino: u64,
}

/// The immutable merged tree; see the module docs.
#[derive(Debug, Default)]
pub struct MergedTree {
    nodes: Vec<TreeNode>,
    /// Sorted children of each directory, indexed like `nodes` (empty for non-directories).
    children: Vec<Vec<TreeDirEnt>>,
    /// Every path of each node with more than one name.
    aliases: BTreeMap<u64, Vec<String>>,
}

struct BNode {
    entry: Entry,
    layer: usize,
    children: BTreeMap<String, usize>,
}

struct Builder {
    arena: Vec<BNode>,
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
        let mut b = Builder { arena: Vec::new() };
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
        Ok(Self::finish(b))
    }

    fn finish(b: Builder) -> Self {
        // Depth-first, children in name order: arena id -> ino.
        let mut ino_of: Vec<u64> = vec![0; b.arena.len()];
        let mut order: Vec<(usize, u64)> = Vec::new(); // (arena id, parent ino)
        let mut refs: Vec<u32> = vec![0; b.arena.len()];
        let mut paths: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        let mut stack: Vec<(usize, u64, String)> = vec![(0, ROOT_INO, String::new())];
        while let Some((id, parent, path)) = stack.pop() {
            if let Some(r) = refs.get_mut(id) {
                *r += 1;
            }
            let first = ino_of.get(id).is_some_and(|&i| i == 0);
            let Some(n) = b.arena.get(id) else { continue };
            if n.entry.kind != EntryKind::Dir {
                paths.entry(id).or_default().push(path.clone());
            }
            if !first {
                continue;
            }
            order.push((id, parent));
            let ino = order.len() as u64;
            if let Some(slot) = ino_of.get_mut(id) {
                *slot = ino;
            }
            for (name, &child) in n.children.iter().rev() {
                let p = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}/{name}")
                };
                stack.push((child, ino, p));
            }
        }
        let mut nodes = Vec::with_capacity(order.len());
        let mut children = Vec::with_capacity(order.len());
        let mut aliases = BTreeMap::new();
        for &(id, parent) in &order {
            let Some(n) = b.arena.get(id) else { continue };
            let e = &n.entry;
            let kind = kind_of(e.kind);
            let kids: Vec<TreeDirEnt> = n
                .children
                .iter()
                .map(|(name, &c)| TreeDirEnt {
                    name: name.clone(),
                    ino: ino_of.get(c).copied().unwrap_or(0),
                })
                .collect();
            let nlink = if kind == FileKind::Dir {
                2 + n.children.values().filter(|&&c| b.is_dir(c)).count() as u32
            } else {
                refs.get(id).copied().unwrap_or(1)
            };
            let mut xattrs: Vec<(String, Vec<u8>)> = e
                .xattrs
                .iter()
                .filter(|(k, _)| !k.starts_with(super::sys::OVERLAY_PREFIX))
                .cloned()
                .collect();
            xattrs.sort();
            xattrs.dedup_by(|a, b| a.0 == b.0);
            let ino = ino_of.get(id).copied().unwrap_or(0);
            if nlink > 1 && kind != FileKind::Dir {
                if let Some(p) = paths.remove(&id) {
                    aliases.insert(ino, p);
                }
            }
            let content = (kind == FileKind::File)
                .then(|| LowerFile::new(n.layer, e.path.clone(), e.size, e.offset));
            nodes.push(TreeNode {
                kind,
                mode: e.mode & 0o7777,
                uid: e.uid,
                gid: e.gid,
                size: if kind == FileKind::File {
                    e.size
                } else if kind == FileKind::Symlink {
                    e.link_target.len() as u64
                } else {
                    0
                },
                mtime: e.mtime,
                nlink,
                dev_major: e.dev_major,
                dev_minor: e.dev_minor,
                xattrs,
                link_target: e.link_target.clone(),
                content,
                parent,
                layer: n.layer,
            });
            children.push(kids);
        }
        MergedTree {
            nodes,
            children,
            aliases,
        }
    }

    /// Number of objects (the largest inode number).
    pub fn len(&self) -> u64 {
        self.nodes.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The object with inode number `ino`.
    pub fn node(&self, ino: u64) -> Option<&TreeNode> {
        self.nodes.get(usize::try_from(ino.checked_sub(1)?).ok()?)
    }

    /// Sorted entries of directory `ino` (empty for anything else).
    pub fn children(&self, ino: u64) -> &[TreeDirEnt] {
        ino.checked_sub(1)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.children.get(i))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &str) -> Option<u64> {
        let kids = self.children(parent);
        kids.binary_search_by(|d| d.name.as_str().cmp(name))
            .ok()
            .and_then(|i| kids.get(i))
            .map(|d| d.ino)
    }

    /// Resolve a relative path (`""` = root).
    pub fn resolve(&self, path: &str) -> Option<u64> {
        let mut cur = ROOT_INO;
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            cur = self.lookup(cur, comp)?;
        }
        Some(cur)
    }

    /// Every path of a hard-linked node (empty for nodes with one name).
    pub fn aliases(&self, ino: u64) -> &[String] {
        self.aliases.get(&ino).map(Vec::as_slice).unwrap_or(&[])
    }
}
