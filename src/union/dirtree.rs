//! [`DirTree`]: the merged view of plain directory lowers (`strata overlay`), read lazily:
//! a directory's entries are read from its layers (one `read_dir` + `lstat` per name and
//! layer) the first time it is looked into, merged, numbered and kept for the life of the
//! mount. Mounting costs one `stat` per layer instead of a walk of every lower directory,
//! as fuse-overlayfs does. It is the [`LowerBackend`] (`backend.rs`) of `strata overlay`; it
//! reads the lower directories itself (std::fs, `sys` for xattrs and whiteouts, `dirlower`'s
//! OCI whiteout names) and must not know the merged tree of image layers, the node table or
//! the upper.
//!
//! The merge follows kernel overlayfs: layers are searched top down; the topmost object of
//! a name decides its type and attributes; a whiteout (char device 0/0, an empty file with
//! `trusted.overlay.whiteout`, or an OCI `.wh.NAME`) hides the name in the layers below its
//! own; a directory merges with directories of the same name below it until one of them is
//! opaque (`trusted.overlay.opaque=y`, `user.` spelling, or an OCI `.wh..wh..opq` inside) or
//! a non-directory or whiteout is met. A merged directory reports `nlink` 1, as overlayfs
//! does; everything else its own lower `nlink`. Names of one lower inode (hard links,
//! `(dev, ino)` equal) share one node; the first path seen holds the content. User xattrs
//! are read when first asked for (through [`TreeNode::xattrs`]), not during a walk.
//!
//! Inode numbers are handed out in the order directories are first read: stable within a
//! mount, not across mounts (as with kernel overlayfs without `xino`). Nodes live in an
//! append-only table of fixed segments, so references handed out stay valid while the tree
//! grows. Lower directories are read with the caller's locks held; they are local.

use super::backend::{LowerBackend, TreeDirEnt, TreeNode};
use super::dirlower::{WH_OPAQUE, WH_PREFIX};
use super::lower::LowerFile;
use super::{sys, Error, FileKind, Result, ROOT_INO};
use crate::layer::Timestamp;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Slots in the first segment; segment k holds `SEG0 << k`.
const SEG0: usize = 1024;
/// Segments: room for `SEG0 * (2^SEGS - 1)` nodes.
const SEGS: usize = 40;

/// A node's attributes as read from its lower (the union sees them as a [`TreeNode`]).
#[derive(Clone, Debug)]
struct DirNode {
    kind: FileKind,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: Timestamp,
    nlink: u32,
    dev_major: u32,
    dev_minor: u32,
    link_target: String,
    content: Option<LowerFile>,
    parent: u64,
    layer: usize,
}

/// One entry of a directory read from the lowers.
#[derive(Clone, Debug)]
struct DirEnt {
    name: String,
    ino: u64,
}

/// One node of the tree and what is needed to read it as a directory.
struct Slot {
    node: DirNode,
    /// Path relative to each layer root (`""` = root).
    path: String,
    /// Layers (indices, top first) whose directory at `path` merges into this one.
    srcs: Vec<usize>,
    /// The directory's merged entries, once read.
    kids: OnceLock<Vec<DirEnt>>,
    /// User-visible xattrs, read when first asked for.
    xattrs: OnceLock<Vec<(String, Vec<u8>)>>,
}

/// What the loader keeps between directory reads.
#[derive(Default)]
struct Load {
    /// Slots handed out (the largest inode number).
    count: u64,
    /// Lower `(dev, ino)` of multiply linked non-directories -> node.
    links: HashMap<(u64, u64), u64>,
    /// Every path seen of multiply linked nodes.
    paths: HashMap<u64, Vec<String>>,
}

/// Lazily merged directory lowers; see the module docs.
pub struct DirTree {
    /// Layer roots, bottom first (the index is the layer number of [`LowerFile`]s).
    layers: Vec<PathBuf>,
    segs: Vec<OnceLock<Box<[OnceLock<Slot>]>>>,
    load: Mutex<Load>,
}

/// `(segment, offset)` of slot index `i` (ino - 1).
fn seg_of(i: usize) -> (usize, usize) {
    let j = i / SEG0 + 1;
    let k = (usize::BITS - 1 - j.leading_zeros()) as usize;
    (k, i - SEG0 * ((1usize << k) - 1))
}

/// One name found in one layer.
struct Found {
    meta: std::fs::Metadata,
    /// Opaque directory (only for directories).
    opaque: bool,
}

/// A name being merged: its topmost object and, for directories, the layers merging in.
struct Pending {
    layer: usize,
    meta: std::fs::Metadata,
    srcs: Vec<usize>,
    /// No lower layer merges into this directory any more.
    closed: bool,
}

impl DirTree {
    /// The union of `layers` (directories, bottom first). Reads only the roots.
    pub fn open(layers: &[PathBuf]) -> Result<Self> {
        let mut segs = Vec::with_capacity(SEGS);
        segs.resize_with(SEGS, OnceLock::new);
        let t = DirTree {
            layers: layers.to_vec(),
            segs,
            load: Mutex::new(Load::default()),
        };
        let mut top: Option<(usize, std::fs::Metadata)> = None;
        let mut srcs = Vec::new();
        let mut closed = false;
        for (li, root) in layers.iter().enumerate().rev() {
            let m = std::fs::symlink_metadata(root)
                .map_err(|e| Error::io("stat lower dir", root, e))?;
            if !m.is_dir() {
                return Err(Error::NotDir(root.display().to_string()));
            }
            if closed {
                continue; // below an opaque root: checked, not shown
            }
            srcs.push(li);
            closed = opaque_dir(root);
            top.get_or_insert((li, m));
        }
        let Some((li, m)) = top else {
            return Err(Error::Invalid("no lower directory"));
        };
        let mut node = node_from(&t.layers[li], "", li, &m, ROOT_INO);
        node.nlink = if srcs.len() > 1 { 1 } else { node.nlink };
        let mut ld = t.lock_load();
        t.put(&mut ld, node, String::new(), srcs);
        drop(ld);
        Ok(t)
    }

    fn lock_load(&self) -> std::sync::MutexGuard<'_, Load> {
        self.load.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn slot(&self, ino: u64) -> Option<&Slot> {
        let i = usize::try_from(ino.checked_sub(1)?).ok()?;
        let (k, off) = seg_of(i);
        self.segs.get(k)?.get()?.get(off)?.get()
    }

    /// Store a new node under the next number.
    fn put(&self, ld: &mut Load, node: DirNode, path: String, srcs: Vec<usize>) -> u64 {
        let i = ld.count as usize;
        let (k, off) = seg_of(i);
        let Some(seg) = self.segs.get(k) else {
            tracing::error!("directory lower tree full");
            return 0;
        };
        let seg = seg.get_or_init(|| {
            let mut v = Vec::with_capacity(SEG0 << k);
            v.resize_with(SEG0 << k, OnceLock::new);
            v.into_boxed_slice()
        });
        if let Some(s) = seg.get(off) {
            let _ = s.set(Slot {
                node,
                path,
                srcs,
                kids: OnceLock::new(),
                xattrs: OnceLock::new(),
            });
        }
        ld.count += 1;
        ld.count
    }

    fn kids(&self, ino: u64) -> &[DirEnt] {
        let Some(s) = self.slot(ino) else {
            return &[];
        };
        if s.node.kind != FileKind::Dir {
            return &[];
        }
        if let Some(k) = s.kids.get() {
            return k;
        }
        let mut ld = self.lock_load();
        if let Some(k) = s.kids.get() {
            return k;
        }
        let kids = self.read_dir(&mut ld, ino, s);
        s.kids.get_or_init(|| kids)
    }

    /// User-visible xattrs of `ino` (overlay-private ones left out), sorted by name; read
    /// from the lower object on first use (a walk does not need them).
    fn xattr_list(&self, ino: u64) -> &[(String, Vec<u8>)] {
        let Some(s) = self.slot(ino) else {
            return &[];
        };
        s.xattrs.get_or_init(|| {
            let Some(root) = self.layers.get(s.node.layer) else {
                return Vec::new();
            };
            let abs = if s.path.is_empty() {
                root.clone()
            } else {
                root.join(&s.path)
            };
            sys::visible_xattrs(&abs).unwrap_or_else(|e| {
                tracing::warn!(path = %abs.display(), error = %e, "xattrs in lower directory");
                Vec::new()
            })
        })
    }

    /// Read and merge directory `ino` from its layers, numbering new children.
    fn read_dir(&self, ld: &mut Load, ino: u64, s: &Slot) -> Vec<DirEnt> {
        let mut names: BTreeMap<String, Pending> = BTreeMap::new();
        let mut hidden: HashSet<String> = HashSet::new();
        for &layer in &s.srcs {
            let Some(root) = self.layers.get(layer) else {
                continue;
            };
            let abs = root.join(&s.path);
            let (found, whiteouts) = match read_layer_dir(&abs) {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(dir = %abs.display(), error = %e, "reading lower directory");
                    continue;
                }
            };
            // This layer's own names first: a whiteout hides only the layers below it.
            for (name, f) in found {
                if hidden.contains(&name) {
                    continue;
                }
                match names.get_mut(&name) {
                    None => {
                        let is_dir = f.meta.is_dir();
                        names.insert(
                            name,
                            Pending {
                                layer,
                                srcs: if is_dir { vec![layer] } else { Vec::new() },
                                closed: !is_dir || f.opaque,
                                meta: f.meta,
                            },
                        );
                    }
                    Some(p) if !p.closed => {
                        if f.meta.is_dir() {
                            p.srcs.push(layer);
                            p.closed = f.opaque;
                        } else {
                            p.closed = true;
                        }
                    }
                    Some(_) => {}
                }
            }
            for name in whiteouts {
                match names.get_mut(&name) {
                    Some(p) => p.closed = true,
                    None => {
                        hidden.insert(name);
                    }
                }
            }
        }
        let mut kids = Vec::with_capacity(names.len());
        for (name, p) in names {
            let path = if s.path.is_empty() {
                name.clone()
            } else {
                format!("{}/{name}", s.path)
            };
            let child = self.new_child(ld, ino, path, p);
            if child != 0 {
                kids.push(DirEnt { name, ino: child });
            }
        }
        kids
    }

    fn new_child(&self, ld: &mut Load, parent: u64, path: String, p: Pending) -> u64 {
        let Some(root) = self.layers.get(p.layer) else {
            return 0;
        };
        let m = &p.meta;
        let linked = !m.is_dir() && m.nlink() > 1;
        if linked {
            if let Some(&i) = ld.links.get(&(m.dev(), m.ino())) {
                ld.paths.entry(i).or_default().push(path);
                return i;
            }
        }
        let mut node = node_from(root, &path, p.layer, m, parent);
        if node.kind == FileKind::Dir && p.srcs.len() > 1 {
            node.nlink = 1;
        }
        let key = (m.dev(), m.ino());
        let i = self.put(ld, node, path.clone(), p.srcs);
        if linked && i != 0 {
            ld.links.insert(key, i);
            ld.paths.entry(i).or_default().push(path);
        }
        i
    }
}

/// The trait view: positions are indices into a directory's entry list and a node's xattr
/// list, both read on first use.
impl LowerBackend for DirTree {
    /// Number of nodes read so far (the largest inode number).
    fn len(&self) -> u64 {
        self.lock_load().count
    }

    /// The object with inode number `ino` (every number handed out has one).
    fn node(&self, ino: u64) -> Option<TreeNode<'_>> {
        let n = &self.slot(ino)?.node;
        Some(TreeNode {
            kind: n.kind,
            mode: n.mode,
            uid: n.uid,
            gid: n.gid,
            size: n.size,
            mtime: n.mtime,
            nlink: n.nlink,
            dev_major: n.dev_major,
            dev_minor: n.dev_minor,
            link_target: &n.link_target,
            parent: n.parent,
            layer: n.layer,
            ino,
            tree: self,
        })
    }

    fn kind(&self, ino: u64) -> Option<FileKind> {
        self.slot(ino).map(|s| s.node.kind)
    }

    /// The first name of `ino`: (parent, name) where it was first read (root: `None`).
    fn name(&self, ino: u64) -> Option<(u64, &str)> {
        if ino == ROOT_INO {
            return None;
        }
        let s = self.slot(ino)?;
        let name = s.path.rsplit('/').next().unwrap_or(&s.path);
        Some((s.node.parent, name))
    }

    /// `name` in directory `parent`, read from the layers on first use.
    fn lookup(&self, parent: u64, name: &str) -> Option<u64> {
        let kids = self.kids(parent);
        kids.binary_search_by(|d| d.name.as_str().cmp(name))
            .ok()
            .and_then(|i| kids.get(i))
            .map(|d| d.ino)
    }

    /// Every path of a node with more than one name. The other names may sit in
    /// directories not read yet, so this reads every directory first (only copy-up of a
    /// hard-linked file asks).
    fn aliases(&self, ino: u64) -> Vec<String> {
        if self
            .node(ino)
            .is_none_or(|n| n.nlink < 2 || n.kind == FileKind::Dir)
        {
            return Vec::new();
        }
        let mut i = ROOT_INO;
        while i <= self.len() {
            self.kids(i);
            i += 1;
        }
        let ld = self.lock_load();
        let mut v = ld.paths.get(&ino).cloned().unwrap_or_default();
        v.sort();
        v.dedup();
        if v.len() < 2 {
            v.clear();
        }
        v
    }

    fn content(&self, ino: u64) -> Option<LowerFile> {
        self.slot(ino)?.node.content.clone()
    }

    fn child_range(&self, ino: u64) -> Range<usize> {
        0..self.kids(ino).len()
    }

    fn child_at(&self, dir: u64, i: usize) -> Option<TreeDirEnt<'_>> {
        self.kids(dir).get(i).map(|d| TreeDirEnt {
            name: &d.name,
            ino: d.ino,
        })
    }

    fn xattr_range(&self, ino: u64) -> Range<usize> {
        0..self.xattr_list(ino).len()
    }

    fn xattr_at(&self, ino: u64, i: usize) -> Option<(&str, &[u8])> {
        self.xattr_list(ino)
            .get(i)
            .map(|(k, v)| (k.as_str(), v.as_slice()))
    }
}

/// Is the directory at `path` opaque (xattr, or an OCI `.wh..wh..opq` inside)?
fn opaque_dir(path: &Path) -> bool {
    sys::is_opaque(path) || std::fs::symlink_metadata(path.join(WH_OPAQUE)).is_ok()
}

/// The objects of one layer's directory and the names its whiteouts hide below it.
#[allow(clippy::type_complexity)]
fn read_layer_dir(abs: &Path) -> std::io::Result<(Vec<(String, Found)>, Vec<String>)> {
    let mut found = Vec::new();
    let mut whiteouts = Vec::new();
    for item in std::fs::read_dir(abs)? {
        let item = item?;
        let Some(name) = item.file_name().to_str().map(str::to_string) else {
            tracing::warn!(dir = %abs.display(), "non-UTF-8 name in lower directory skipped");
            continue;
        };
        if name == WH_OPAQUE {
            continue;
        }
        if let Some(target) = name.strip_prefix(WH_PREFIX) {
            if !target.is_empty() && !target.starts_with(WH_PREFIX) {
                whiteouts.push(target.to_string());
            }
            continue;
        }
        let path = item.path();
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            // Removed while we read: as if it had never been there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if sys::is_whiteout(&path, &meta) {
            whiteouts.push(name);
            continue;
        }
        let opaque = meta.is_dir() && opaque_dir(&path);
        found.push((name, Found { meta, opaque }));
    }
    Ok((found, whiteouts))
}

/// The tree node for the object `m` at `rel` in layer `layer` (rooted at `root`).
fn node_from(root: &Path, rel: &str, layer: usize, m: &std::fs::Metadata, parent: u64) -> DirNode {
    let abs = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let kind = FileKind::from_mode(m.mode()).unwrap_or(FileKind::File);
    let link_target = if kind == FileKind::Symlink {
        match std::fs::read_link(&abs) {
            Ok(t) => t.to_string_lossy().into_owned(),
            Err(e) => {
                tracing::warn!(path = %abs.display(), error = %e, "readlink in lower directory");
                String::new()
            }
        }
    } else {
        String::new()
    };
    let (dev_major, dev_minor) = if matches!(kind, FileKind::CharDev | FileKind::BlockDev) {
        (libc::major(m.rdev()), libc::minor(m.rdev()))
    } else {
        (0, 0)
    };
    let size = match kind {
        FileKind::File => m.len(),
        FileKind::Symlink => link_target.len() as u64,
        _ => 0,
    };
    DirNode {
        kind,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        size,
        mtime: Timestamp {
            sec: m.mtime(),
            nsec: m.mtime_nsec().clamp(0, 999_999_999) as u32,
        },
        nlink: m.nlink() as u32,
        dev_major,
        dev_minor,
        link_target,
        content: (kind == FileKind::File).then(|| LowerFile::new(layer, rel, m.len(), 0)),
        parent,
        layer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::union::{DirLower, MergedTree};
    use std::fs;

    /// Three directory layers with every overlay rule in play (both whiteout spellings,
    /// opaque directories both ways, type changes, hard links, symlinks, xattrs).
    fn fixture(t: &Path) -> Vec<PathBuf> {
        let l: Vec<PathBuf> = (0..3).map(|i| t.join(format!("l{i}"))).collect();
        let w = |p: &Path, body: &str| {
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, body).unwrap();
        };
        // bottom
        w(&l[0].join("a/x"), "x0");
        w(&l[0].join("a/y"), "y0");
        w(&l[0].join("b"), "b0");
        w(&l[0].join("c/deep/f"), "f0");
        w(&l[0].join("o/old"), "old");
        w(&l[0].join("h1"), "linked");
        fs::hard_link(l[0].join("h1"), l[0].join("h2")).unwrap();
        std::os::unix::fs::symlink("b", l[0].join("s")).unwrap();
        sys::set_xattr(&l[0].join("a/y"), "user.k", b"v", 0).unwrap();
        // middle: overlay-format whiteout, OCI whiteout, dir over file, file over dir,
        // xattr-opaque directory
        w(&l[1].join("a/z"), "z1");
        sys::mknod(&l[1].join("a/x"), libc::S_IFCHR | 0o600, 0).unwrap();
        w(&l[1].join("a/.wh.y"), "");
        w(&l[1].join("b/k"), "k1");
        w(&l[1].join("c"), "now a file");
        w(&l[1].join("o/new"), "new");
        sys::set_xattr(&l[1].join("o"), sys::OPAQUE_XATTR, b"y", 0).unwrap();
        // top: a directory made opaque by OCI marker, a whiteout of a merged directory
        w(&l[2].join("a/w"), "w2");
        w(&l[2].join("a/.wh..wh..opq"), "");
        w(&l[2].join(".wh.b"), "");
        w(&l[2].join("d/e"), "e2");
        l
    }

    fn walk_eq(lazy: &dyn LowerBackend, eager: &MergedTree, li: u64, ei: u64, path: &str) {
        let (ln, en) = (lazy.node(li).unwrap(), eager.node(ei).unwrap());
        assert_eq!(
            (ln.kind, ln.mode, ln.uid, ln.gid, ln.size),
            (en.kind, en.mode, en.uid, en.gid, en.size),
            "{path}"
        );
        let xa = |n: &TreeNode| {
            n.xattrs()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            (ln.link_target, xa(&ln)),
            (en.link_target, xa(&en)),
            "{path}"
        );
        if ln.kind != FileKind::Dir {
            assert_eq!(ln.nlink, en.nlink, "{path}");
            assert_eq!(
                ln.content().map(|c| (c.layer(), c.size())),
                en.content().map(|c| (c.layer(), c.size())),
                "{path}"
            );
            return;
        }
        let (lk, ek): (Vec<_>, Vec<_>) =
            (lazy.children(li).collect(), eager.children(ei).collect());
        let names = |k: &[crate::union::TreeDirEnt]| {
            k.iter().map(|d| d.name.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(names(&lk), names(&ek), "{path}/");
        for (a, b) in lk.iter().zip(&ek) {
            walk_eq(lazy, eager, a.ino, b.ino, &format!("{path}/{}", a.name));
        }
    }

    #[test]
    fn lazy_directory_tree_equals_the_walked_merged_tree() {
        let t = tempfile::tempdir().unwrap();
        let layers = fixture(t.path());
        let lazy = DirTree::open(&layers).unwrap();
        assert_eq!(lazy.len(), 1, "open reads only the roots");
        let entries: Vec<_> = layers
            .iter()
            .map(|l| DirLower::open(l).unwrap().entries().to_vec())
            .collect();
        let eager = MergedTree::build(&entries).unwrap();
        walk_eq(&lazy, &eager, ROOT_INO, ROOT_INO, "");
        let p = |s: &str| {
            s.split('/')
                .try_fold(ROOT_INO, |cur, c| lazy.lookup(cur, c))
                .unwrap_or(0)
        };
        assert_ne!(p("a/w"), 0);
        assert_eq!(p("a/z"), 0, "opaque a hides lower a/z");
        assert_eq!(p("b"), 0);
        assert_eq!(p("c/deep"), 0);
        assert_eq!(p("o/old"), 0);
        assert_ne!(p("o/new"), 0);
        // Hard links share a node; their paths are known once asked for.
        assert_eq!(p("h1"), p("h2"));
        assert_eq!(
            lazy.aliases(p("h1")),
            vec!["h1".to_string(), "h2".to_string()]
        );
        assert_eq!(lazy.node(p("h1")).unwrap().nlink, 2);
        // Merged directories report nlink 1 (as overlayfs); one-layer ones (an opaque one
        // too) their own.
        assert_eq!(lazy.node(ROOT_INO).unwrap().nlink, 1);
        assert_eq!(lazy.node(p("o")).unwrap().nlink, 2);
        assert_eq!(lazy.node(p("d")).unwrap().nlink, 2);
    }

    #[test]
    fn bad_lower_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("file");
        fs::write(&f, "x").unwrap();
        assert!(matches!(DirTree::open(&[f]), Err(Error::NotDir(_))));
        assert!(DirTree::open(&[t.path().join("missing")]).is_err());
    }

    #[test]
    fn segments_cover_every_index_once() {
        let mut seen = HashSet::new();
        for i in 0..(SEG0 * 7 + 5) {
            let (k, off) = seg_of(i);
            assert!(off < SEG0 << k, "{i}: {k} {off}");
            assert!(seen.insert((k, off)));
        }
        assert_eq!(seg_of(0), (0, 0));
        assert_eq!(seg_of(SEG0), (1, 0));
        assert_eq!(seg_of(3 * SEG0), (2, 0));
    }
}
