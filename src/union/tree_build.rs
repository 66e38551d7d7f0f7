//! Building a [`MergedTree`]: layers' records applied bottom to top in an arena, then written
//! out as the flat stored form (`tree_store.rs`). The records are read where they are — a
//! layer index's mmap-ed records ([`EntryRef`]) or owned [`Entry`] lists — through
//! [`Record`]; nodes keep the record (a reference) and names are borrowed `&str`, so nothing
//! is copied per entry. A layer's records are sorted by (parent, name), so each directory's
//! entries of one layer are one run, sorted by name: the run is merged with the directory's
//! sorted child list in one linear pass, and the directory is looked up once per run.
//!
//! The merge rules are described in `tree.rs`; this module knows nothing of the node table,
//! the upper or directory lowers.

use super::store;
use super::MergedTree;
use crate::layer::{Entry, EntryKind, EntryRef, Timestamp};
use crate::union::{FileKind, Result, ROOT_INO};
use std::collections::BTreeMap;

/// One layer record as the builder reads it; see the module docs.
pub(crate) trait Record<'a>: Copy {
    fn parent(&self) -> &'a str;
    fn name(&self) -> &'a str;
    fn kind(&self) -> EntryKind;
    fn opaque(&self) -> bool;
    fn implicit(&self) -> bool;
    fn mode(&self) -> u32;
    fn uid(&self) -> u32;
    fn gid(&self) -> u32;
    fn size(&self) -> u64;
    fn offset(&self) -> u64;
    fn mtime(&self) -> Timestamp;
    fn dev(&self) -> (u32, u32);
    /// Symlink target (symlinks) or hard link target path (hard links).
    fn link(&self) -> &'a str;
    /// Append the extended attributes to `out`.
    fn xattrs_into(&self, out: &mut Vec<(&'a str, &'a [u8])>);
}

impl<'a> Record<'a> for &'a Entry {
    fn parent(&self) -> &'a str {
        self.split().0
    }
    fn name(&self) -> &'a str {
        self.split().1
    }
    fn kind(&self) -> EntryKind {
        self.kind
    }
    fn opaque(&self) -> bool {
        self.opaque
    }
    fn implicit(&self) -> bool {
        self.implicit
    }
    fn mode(&self) -> u32 {
        self.mode
    }
    fn uid(&self) -> u32 {
        self.uid
    }
    fn gid(&self) -> u32 {
        self.gid
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn offset(&self) -> u64 {
        self.offset
    }
    fn mtime(&self) -> Timestamp {
        self.mtime
    }
    fn dev(&self) -> (u32, u32) {
        (self.dev_major, self.dev_minor)
    }
    fn link(&self) -> &'a str {
        if self.kind == EntryKind::Hardlink {
            &self.hardlink_target
        } else {
            &self.link_target
        }
    }
    fn xattrs_into(&self, out: &mut Vec<(&'a str, &'a [u8])>) {
        out.extend(self.xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
    }
}

impl<'a> Record<'a> for EntryRef<'a> {
    fn parent(&self) -> &'a str {
        EntryRef::parent(self)
    }
    fn name(&self) -> &'a str {
        EntryRef::name(self)
    }
    fn kind(&self) -> EntryKind {
        EntryRef::kind(self)
    }
    fn opaque(&self) -> bool {
        EntryRef::opaque(self)
    }
    fn implicit(&self) -> bool {
        EntryRef::implicit(self)
    }
    fn mode(&self) -> u32 {
        EntryRef::mode(self)
    }
    fn uid(&self) -> u32 {
        EntryRef::uid(self)
    }
    fn gid(&self) -> u32 {
        EntryRef::gid(self)
    }
    fn size(&self) -> u64 {
        EntryRef::size(self)
    }
    fn offset(&self) -> u64 {
        EntryRef::offset(self)
    }
    fn mtime(&self) -> Timestamp {
        EntryRef::mtime(self)
    }
    fn dev(&self) -> (u32, u32) {
        EntryRef::dev(self)
    }
    fn link(&self) -> &'a str {
        EntryRef::link(self)
    }
    fn xattrs_into(&self, out: &mut Vec<(&'a str, &'a [u8])>) {
        out.extend(self.xattrs());
    }
}

struct BNode<'a, R> {
    /// The record giving the attributes; `None` for a directory the builder synthesised (the
    /// root before a layer names it, or a missing parent): an implicit 0755 directory.
    src: Option<R>,
    layer: u32,
    dir: bool,
    /// Sorted by name.
    children: Vec<(&'a str, u32)>,
}

pub(super) struct Builder<'a, R> {
    arena: Vec<BNode<'a, R>>,
    /// A single layer as kernel overlayfs expects a lower layer directory: whiteouts become
    /// character devices 0/0, opaque directories get `trusted.overlay.opaque=y` and hide
    /// nothing, and `trusted.overlay.*` xattrs are kept.
    view: bool,
    layer: u32,
    /// Hard links of the layer being applied (linked after its other records).
    links: Vec<R>,
    /// The run being collected: (name, record), and whether it is sorted by name.
    run: Vec<(&'a str, R)>,
}

/// A child list position: `Ok` found, `Err` where to insert.
fn search(children: &[(&str, u32)], name: &str) -> std::result::Result<usize, usize> {
    children.binary_search_by(|(n, _)| (*n).cmp(name))
}

impl<'a, R: Record<'a>> Builder<'a, R> {
    pub(super) fn new(view: bool, capacity: usize) -> Self {
        let mut arena = Vec::with_capacity(capacity + 1);
        arena.push(BNode {
            src: None,
            layer: 0,
            dir: true,
            children: Vec::new(),
        });
        Builder {
            arena,
            view,
            layer: 0,
            links: Vec::new(),
            run: Vec::new(),
        }
    }

    fn new_node(&mut self, src: Option<R>, dir: bool) -> u32 {
        self.arena.push(BNode {
            src,
            layer: self.layer,
            dir,
            children: Vec::new(),
        });
        (self.arena.len() - 1) as u32
    }

    fn is_dir(&self, id: u32) -> bool {
        self.arena.get(id as usize).is_some_and(|n| n.dir)
    }

    fn children(&self, id: u32) -> &[(&'a str, u32)] {
        self.arena
            .get(id as usize)
            .map_or(&[], |n| n.children.as_slice())
    }

    fn children_mut(&mut self, id: u32) -> Option<&mut Vec<(&'a str, u32)>> {
        self.arena.get_mut(id as usize).map(|n| &mut n.children)
    }

    /// The kind `r` is applied as (a whiteout in a layer view is a device node).
    fn kind_of(&self, r: &R) -> EntryKind {
        match r.kind() {
            EntryKind::Whiteout if self.view => EntryKind::CharDev,
            k => k,
        }
    }

    /// Walk to the directory at `path`, creating missing (or replacing non-directory)
    /// components as implicit directories.
    fn dir_at(&mut self, path: &'a str) -> u32 {
        let mut cur = 0u32;
        if path.is_empty() {
            return cur;
        }
        for comp in path.split('/') {
            let found = search(self.children(cur), comp);
            cur = match found {
                Ok(i) if self.is_dir(self.children(cur)[i].1) => self.children(cur)[i].1,
                found => {
                    let id = self.new_node(None, true);
                    if let Some(c) = self.children_mut(cur) {
                        match found {
                            Ok(i) => c[i].1 = id,
                            Err(i) => c.insert(i, (comp, id)),
                        }
                    }
                    id
                }
            };
        }
        cur
    }

    /// Node at `path` without creating anything.
    fn find(&self, path: &str) -> Option<u32> {
        let mut cur = 0u32;
        if path.is_empty() {
            return Some(cur);
        }
        for comp in path.split('/') {
            let c = self.children(cur);
            cur = c.get(search(c, comp).ok()?)?.1;
        }
        Some(cur)
    }

    /// Apply one layer's records (see the module docs), then its hard links.
    pub(super) fn layer(&mut self, layer: usize, records: impl Iterator<Item = R>) {
        self.layer = layer as u32;
        let mut parent: Option<&'a str> = None;
        let mut sorted = true;
        for r in records {
            let (p, name) = (r.parent(), r.name());
            if p.is_empty() && name.is_empty() {
                self.flush(parent.take(), sorted);
                self.root(r);
                continue;
            }
            if parent != Some(p) {
                self.flush(parent.replace(p), sorted);
                sorted = true;
            } else if self.run.last().is_some_and(|&(n, _)| n > name) {
                sorted = false;
            }
            self.run.push((name, r));
        }
        self.flush(parent, sorted);
        for r in std::mem::take(&mut self.links) {
            self.link(r);
        }
    }

    fn root(&mut self, r: R) {
        if self.kind_of(&r) != EntryKind::Dir {
            return;
        }
        let (layer, view) = (self.layer, self.view);
        if let Some(root) = self.arena.first_mut() {
            if !r.implicit() {
                root.src = Some(r);
                root.layer = layer;
            }
            if r.opaque() && !view {
                root.children.clear();
            }
        }
    }

    /// Merge the collected run into the child list of directory `parent`.
    fn flush(&mut self, parent: Option<&'a str>, sorted: bool) {
        let Some(parent) = parent else { return };
        let mut run = std::mem::take(&mut self.run);
        if !sorted {
            run.sort_by(|a, b| a.0.cmp(b.0)); // stable: a later record of a name still wins
        }
        let pid = self.dir_at(parent);
        let old = self
            .children_mut(pid)
            .map(std::mem::take)
            .unwrap_or_default();
        let mut out: Vec<(&'a str, u32)> = Vec::with_capacity(old.len() + run.len());
        let mut oi = 0;
        for &(name, r) in &run {
            while let Some(&o) = old.get(oi).filter(|o| o.0 < name) {
                out.push(o);
                oi += 1;
            }
            let existing = match old.get(oi) {
                Some(&(n, id)) if n == name => {
                    oi += 1;
                    Some(id)
                }
                _ if out.last().is_some_and(|l| l.0 == name) => out.pop().map(|l| l.1),
                _ => None,
            };
            match self.kind_of(&r) {
                EntryKind::Whiteout => {}
                EntryKind::Hardlink => {
                    self.links.push(r);
                    out.extend(existing.map(|id| (name, id)));
                }
                EntryKind::Dir if existing.is_some_and(|id| self.is_dir(id)) => {
                    let (layer, view) = (self.layer, self.view);
                    if let Some((id, n)) =
                        existing.and_then(|id| Some((id, self.arena.get_mut(id as usize)?)))
                    {
                        if !r.implicit() {
                            n.src = Some(r);
                            n.layer = layer;
                        }
                        if r.opaque() && !view {
                            n.children.clear();
                        }
                        out.push((name, id));
                    }
                }
                k => {
                    let id = self.new_node(Some(r), k == EntryKind::Dir);
                    out.push((name, id));
                }
            }
        }
        out.extend_from_slice(old.get(oi..).unwrap_or_default());
        if let Some(c) = self.children_mut(pid) {
            *c = out;
        }
        run.clear();
        self.run = run;
    }

    fn link(&mut self, r: R) {
        let Some(target) = self.find(r.link()) else {
            tracing::warn!(path = %join(r.parent(), r.name()), target = %r.link(), "hard link target missing; skipped");
            return;
        };
        if self.is_dir(target) {
            tracing::warn!(path = %join(r.parent(), r.name()), "hard link to a directory; skipped");
            return;
        }
        let Some(pid) = self.find(r.parent()).filter(|&p| self.is_dir(p)) else {
            return;
        };
        let name = r.name();
        if let Some(c) = self.children_mut(pid) {
            match search(c, name) {
                Ok(i) => c[i].1 = target,
                Err(i) => c.insert(i, (name, target)),
            }
        }
    }
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

/// The path of `name` in directory `dir` (arena ids), through the directories' first parents
/// in `reached` (a directory has one; the root's is `u32::MAX`).
fn path_in(reached: &[(u32, &str)], dir: u32, name: &str) -> String {
    let mut parts = vec![name];
    let mut d = dir;
    while let Some(&(up, n)) = reached.get(d as usize) {
        if up == u32::MAX {
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

impl<'a, R: Record<'a>> Builder<'a, R> {
    /// The flat tree: inode numbers by a depth-first walk in name order (see `tree.rs`).
    pub(super) fn finish(self, layers: usize) -> Result<MergedTree> {
        let b = self;
        let n_arena = b.arena.len();
        // How many directory entries name each node (reachable or not): only a node named
        // more than once (a hard link) needs its paths, so no path is built for the others.
        let mut listed: Vec<u32> = vec![0; n_arena];
        for n in &b.arena {
            for &(_, c) in &n.children {
                if let Some(r) = listed.get_mut(c as usize) {
                    *r += 1;
                }
            }
        }
        // Depth-first, children in name order: arena id -> ino.
        let mut ino_of: Vec<u32> = vec![0; n_arena];
        let mut order: Vec<(u32, u32)> = Vec::with_capacity(n_arena); // (arena id, parent ino)
        let mut refs: Vec<u32> = vec![0; n_arena];
        // Where each node was first reached: (parent's arena id, name); the root has none.
        let mut reached: Vec<(u32, &str)> = vec![(u32::MAX, ""); n_arena];
        // Every path of a node listed more than once, in visit order.
        let mut paths: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        let mut stack: Vec<(u32, u32, u32, &str)> = vec![(0, ROOT_INO as u32, u32::MAX, "")];
        while let Some((id, parent, parent_id, name)) = stack.pop() {
            let i = id as usize;
            if let Some(r) = refs.get_mut(i) {
                *r += 1;
            }
            let first = ino_of.get(i).is_some_and(|&i| i == 0);
            let Some(n) = b.arena.get(i) else { continue };
            if !n.dir && listed.get(i).is_some_and(|&l| l > 1) {
                // Its parent's chain is known: directories are reached before their entries.
                let path = path_in(&reached, parent_id, name);
                paths.entry(id).or_default().push(path);
            }
            if !first {
                continue;
            }
            if let Some(slot) = reached.get_mut(i) {
                *slot = (parent_id, name);
            }
            order.push((id, parent));
            let ino = store::u32_of(order.len())?;
            if let Some(slot) = ino_of.get_mut(i) {
                *slot = ino;
            }
            for &(name, child) in n.children.iter().rev() {
                stack.push((child, ino, id, name));
            }
        }
        let mut flat = store::Flat::default();
        flat.nodes.reserve(order.len());
        // First name of each arena node: set while its first parent (a smaller inode number,
        // so already written) lists it.
        let mut name_of: Vec<Option<(u32, u32)>> = vec![None; n_arena];
        let mut parent_of: Vec<u32> = vec![0; n_arena];
        for &(id, p) in &order {
            if let Some(s) = parent_of.get_mut(id as usize) {
                *s = p;
            }
        }
        let mut xattrs: Vec<(&'a str, &'a [u8])> = Vec::new();
        for (i, &(id, parent)) in order.iter().enumerate() {
            let ino = i as u32 + 1;
            let Some(n) = b.arena.get(id as usize) else {
                continue;
            };
            let src = n.src;
            let ekind = src.map_or(EntryKind::Dir, |r| b.kind_of(&r));
            let kind = kind_of(ekind);
            let link = src.map_or("", |r| r.link());
            // A whiteout shown as a device node (layer view): 0/0, mode 0.
            let whiteout = src.is_some_and(|r| r.kind() == EntryKind::Whiteout);
            let (mut a, mut bb, mut offset) = (0u32, 0u32, 0u64);
            match kind {
                FileKind::Dir => {
                    a = store::u32_of(flat.dirents.len())?;
                    bb = store::u32_of(n.children.len())?;
                    for &(name, c) in &n.children {
                        let r = flat.str(name.as_bytes())?;
                        let cino = ino_of.get(c as usize).copied().unwrap_or(0);
                        flat.dirents.push([r.0, r.1, cino]);
                        if let Some(slot) = name_of.get_mut(c as usize) {
                            if slot.is_none() && parent_of.get(c as usize) == Some(&ino) {
                                *slot = Some(r);
                            }
                        }
                    }
                }
                FileKind::File => {
                    if let Some(r) = src {
                        (a, bb) = flat.path(r.parent().as_bytes(), r.name().as_bytes())?;
                        offset = r.offset();
                    }
                }
                FileKind::Symlink => (a, bb) = flat.str(link.as_bytes())?,
                FileKind::CharDev | FileKind::BlockDev if !whiteout => {
                    (a, bb) = src.map_or((0, 0), |r| r.dev());
                }
                FileKind::CharDev | FileKind::BlockDev => {}
                FileKind::Fifo | FileKind::Socket => {}
            }
            let nlink = if kind == FileKind::Dir {
                2 + n.children.iter().filter(|&&(_, c)| b.is_dir(c)).count() as u32
            } else {
                refs.get(id as usize).copied().unwrap_or(1)
            };
            xattrs.clear();
            if let Some(r) = src {
                r.xattrs_into(&mut xattrs);
                if b.view && r.opaque() && ekind == EntryKind::Dir {
                    xattrs.push((super::super::sys::OPAQUE_XATTR, b"y"));
                }
            }
            if !b.view {
                xattrs.retain(|(k, _)| !k.starts_with(super::super::sys::OVERLAY_PREFIX));
            }
            if xattrs.len() > 1 {
                xattrs.sort();
                xattrs.dedup_by(|a, b| a.0 == b.0);
            }
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
                    flat.aliases.push([ino, first, store::u32_of(ps.len())?]);
                }
            }
            let mode = match src {
                Some(r) if !whiteout => r.mode(),
                Some(_) => 0,
                None => 0o755,
            };
            flat.nodes.push(store::NodeRec {
                kind,
                mode: mode & 0o7777,
                uid: src.map_or(0, |r| r.uid()),
                gid: src.map_or(0, |r| r.gid()),
                nlink,
                layer: n.layer,
                parent,
                name: name_of
                    .get(id as usize)
                    .copied()
                    .flatten()
                    .unwrap_or((0, 0)),
                xattrs: (x_first, store::u32_of(xattrs.len())?),
                a,
                b: bb,
                size: match kind {
                    FileKind::File => src.map_or(0, |r| r.size()),
                    FileKind::Symlink => link.len() as u64,
                    _ => 0,
                },
                mtime: src.map_or(Timestamp::default(), |r| r.mtime()),
                offset,
            });
        }
        let layers_u32 = store::u32_of(layers)?;
        MergedTree::from_vec(flat.finish(layers_u32)?, layers)
    }
}
