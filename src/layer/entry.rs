//! Typed layer entries and the ingest rules that produce them.
//!
//! This is where OCI whiteout names stop being strings: `.wh.<name>` becomes an
//! [`EntryKind::Whiteout`] entry called `<name>`, `.wh..wh..opq` becomes `opaque = true` on its
//! parent directory, other `.wh..wh.*` names (aufs bookkeeping) are dropped. Paths are
//! normalised once here (relative, no `./`, no `..`, no absolute escapes) so `union/` never
//! parses tar names. [`EntryTable`] applies the tar extraction rule that the *last* entry for a
//! path wins, synthesises missing parent directories (marked `implicit`), and sorts entries by
//! (parent directory, name), the order the on-disk index uses. [`RawEntry`] is the input: one
//! member as `tar.rs` (or the eStargz TOC) describes it. Calls nothing else in `layer/` but its
//! error type.

use super::error::{Error, Result};
use std::collections::{HashMap, HashSet};

/// One tar member as the archive describes it (path not yet normalised).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawEntry {
    pub path: String,
    pub typeflag: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Content size (0 for header-only types such as directories and links).
    pub size: u64,
    pub mtime: Timestamp,
    pub link: String,
    pub dev_major: u64,
    pub dev_minor: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Offset of the first header block of this member (including its PAX / long-name
    /// headers) in the uncompressed stream.
    pub header_offset: u64,
    /// Offset of the content in the uncompressed stream.
    pub offset: u64,
}

/// What an entry is. Whiteouts are a kind of their own; opaque directories are `Dir` with
/// [`Entry::opaque`] set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryKind {
    File = 0,
    Dir = 1,
    Symlink = 2,
    Hardlink = 3,
    CharDev = 4,
    BlockDev = 5,
    Fifo = 6,
    Whiteout = 7,
}

impl EntryKind {
    /// Decode the byte stored in the index; `None` for anything else.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => EntryKind::File,
            1 => EntryKind::Dir,
            2 => EntryKind::Symlink,
            3 => EntryKind::Hardlink,
            4 => EntryKind::CharDev,
            5 => EntryKind::BlockDev,
            6 => EntryKind::Fifo,
            7 => EntryKind::Whiteout,
            _ => return None,
        })
    }
}

/// Seconds and nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

/// One entry of a layer, after normalisation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Normalised relative path; `""` is the layer root.
    pub path: String,
    pub kind: EntryKind,
    /// Directory hides lower layers' contents (`.wh..wh..opq` seen in it).
    pub opaque: bool,
    /// Directory was not in the layer; synthesised because a child needed a parent. Its
    /// attributes must not override a lower layer's.
    pub implicit: bool,
    /// Permission bits including setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Content size (regular files; for a hard link to a file in this layer, the target's).
    pub size: u64,
    pub mtime: Timestamp,
    /// Extended attributes (`SCHILY.xattr.*`), in archive order.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Symlink target, verbatim (may be absolute; resolved by the union inside the rootfs).
    pub link_target: String,
    /// Hard link target, normalised like `path`.
    pub hardlink_target: String,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// Where the content starts in the uncompressed tar stream (for a hard link to a file in
    /// this layer, the target's; 0 for entries without content and for eStargz layers, whose
    /// content is located through the chunk table).
    pub offset: u64,
}

impl Entry {
    /// A blank entry of `kind` at an already-normalised `path` (used by builders and tests).
    pub fn new(path: impl Into<String>, kind: EntryKind) -> Self {
        Entry {
            path: path.into(),
            kind,
            opaque: false,
            implicit: false,
            mode: if kind == EntryKind::Dir { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            size: 0,
            mtime: Timestamp::default(),
            xattrs: Vec::new(),
            link_target: String::new(),
            hardlink_target: String::new(),
            dev_major: 0,
            dev_minor: 0,
            offset: 0,
        }
    }

    /// `(parent directory, name)` of this entry's path.
    pub fn split(&self) -> (&str, &str) {
        split_path(&self.path)
    }
}

/// Split a normalised path into `(parent, name)`; the root is `("", "")`.
pub fn split_path(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

/// Normalise a tar member name: drop `./` and empty components and a trailing `/`; refuse
/// absolute paths, `..` components and NUL bytes. The root (`.`, `./`) becomes `""`.
pub fn normalize_path(raw: &str) -> std::result::Result<String, &'static str> {
    if raw.starts_with('/') {
        return Err("absolute path escapes the layer root");
    }
    if raw.contains('\0') {
        return Err("path contains a NUL byte");
    }
    let mut out = String::with_capacity(raw.len());
    for comp in raw.split('/') {
        match comp {
            "" | "." => {}
            ".." => return Err("path has a '..' component"),
            c => {
                if !out.is_empty() {
                    out.push('/');
                }
                out.push_str(c);
            }
        }
    }
    Ok(out)
}

/// What one tar member turns into.
enum Ingest {
    Entry(Entry),
    /// `.wh..wh..opq` in this directory.
    Opaque(String),
    /// Dropped (aufs `.wh..wh.*` bookkeeping, or the end-of-archive).
    Skip,
}

const WH_PREFIX: &str = ".wh.";
const WH_OPAQUE: &str = ".wh..wh..opq";
const WH_META_PREFIX: &str = ".wh..wh.";

fn ingest(raw: RawEntry) -> Result<Ingest> {
    let bad = |reason| Error::BadPath {
        path: raw.path.clone(),
        offset: raw.header_offset,
        reason,
    };
    let path = normalize_path(&raw.path).map_err(bad)?;
    let (parent, name) = split_path(&path);
    if name == WH_OPAQUE {
        return Ok(Ingest::Opaque(parent.to_string()));
    }
    if name.starts_with(WH_META_PREFIX) {
        return Ok(Ingest::Skip);
    }
    let to_u32 = |v: u64, what: &'static str| {
        u32::try_from(v).map_err(|_| Error::BadPath {
            path: raw.path.clone(),
            offset: raw.header_offset,
            reason: what,
        })
    };
    let uid = to_u32(raw.uid, "uid does not fit in 32 bits")?;
    let gid = to_u32(raw.gid, "gid does not fit in 32 bits")?;
    let dev_major = to_u32(raw.dev_major, "device major does not fit in 32 bits")?;
    let dev_minor = to_u32(raw.dev_minor, "device minor does not fit in 32 bits")?;
    if let Some(target) = name.strip_prefix(WH_PREFIX) {
        if target.is_empty() {
            return Err(bad("whiteout without a name"));
        }
        let wpath = if parent.is_empty() {
            target.to_string()
        } else {
            format!("{parent}/{target}")
        };
        let mut e = Entry::new(wpath, EntryKind::Whiteout);
        e.mode = 0;
        e.uid = uid;
        e.gid = gid;
        e.mtime = raw.mtime;
        return Ok(Ingest::Entry(e));
    }
    let kind = match raw.typeflag {
        b'0' | 0 | b'7' => {
            if raw.typeflag == 0 && raw.path.ends_with('/') {
                EntryKind::Dir
            } else {
                EntryKind::File
            }
        }
        b'1' => EntryKind::Hardlink,
        b'2' => EntryKind::Symlink,
        b'3' => EntryKind::CharDev,
        b'4' => EntryKind::BlockDev,
        b'5' => EntryKind::Dir,
        b'6' => EntryKind::Fifo,
        _ => return Err(bad("unsupported tar entry type")),
    };
    let mut e = Entry::new(path, kind);
    e.mode = raw.mode & 0o7777;
    e.uid = uid;
    e.gid = gid;
    e.mtime = raw.mtime;
    e.xattrs = raw.xattrs;
    e.dev_major = dev_major;
    e.dev_minor = dev_minor;
    match kind {
        EntryKind::File => {
            e.size = raw.size;
            e.offset = raw.offset;
        }
        EntryKind::Symlink => {
            if raw.link.is_empty() {
                return Err(bad("symlink without a target"));
            }
            e.link_target = raw.link;
        }
        EntryKind::Hardlink => {
            let target = normalize_path(&raw.link).map_err(|_| Error::BadPath {
                path: raw.path.clone(),
                offset: raw.header_offset,
                reason: "hard link target is absolute or has a '..' component",
            })?;
            if target.is_empty() || target == e.path {
                return Err(bad("hard link to the root or to itself"));
            }
            e.hardlink_target = target;
        }
        _ => {}
    }
    Ok(Ingest::Entry(e))
}

/// Collects entries in archive order and produces the normalised, sorted table.
///
/// Rules: the last entry for a path wins (as `tar -x` does), except that a directory keeps the
/// opaque marker seen for it; a hard link to a file of this layer gets the target's size and
/// content offset; missing parents (and the root) are synthesised as `implicit` directories
/// with mode 0755.
#[derive(Default)]
pub struct EntryTable {
    entries: Vec<Entry>,
    by_path: HashMap<String, usize>,
    opaque: HashSet<String>,
}

impl EntryTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one raw tar member (normalising paths and whiteouts).
    pub fn push_raw(&mut self, raw: RawEntry) -> Result<()> {
        match ingest(raw)? {
            Ingest::Entry(e) => self.push(e),
            Ingest::Opaque(dir) => {
                self.opaque.insert(dir);
            }
            Ingest::Skip => {}
        }
        Ok(())
    }

    /// Add an already-normalised entry; replaces an earlier entry with the same path.
    pub fn push(&mut self, e: Entry) {
        match self.by_path.get(&e.path) {
            Some(&i) => {
                if let Some(slot) = self.entries.get_mut(i) {
                    let keep_opaque = slot.opaque && e.kind == EntryKind::Dir;
                    *slot = e;
                    slot.opaque |= keep_opaque;
                }
            }
            None => {
                self.by_path.insert(e.path.clone(), self.entries.len());
                self.entries.push(e);
            }
        }
    }

    /// Apply opaque markers, synthesise parents, resolve hard links, and sort.
    pub fn finish(mut self) -> Vec<Entry> {
        let opaque: Vec<String> = self.opaque.drain().collect();
        for dir in opaque {
            match self
                .by_path
                .get(&dir)
                .and_then(|&i| self.entries.get_mut(i))
            {
                Some(e) if e.kind == EntryKind::Dir => e.opaque = true,
                Some(_) => {} // replaced by a non-directory later in the archive
                None => {
                    let mut e = Entry::new(dir, EntryKind::Dir);
                    e.implicit = true;
                    e.opaque = true;
                    self.push(e);
                }
            }
        }
        let mut missing: Vec<String> = Vec::new();
        if !self.by_path.contains_key("") {
            missing.push(String::new());
        }
        let mut seen: HashSet<&str> = HashSet::new();
        for e in &self.entries {
            let mut p = split_path(&e.path).0;
            while !p.is_empty() && seen.insert(p) {
                if !self.by_path.contains_key(p) {
                    missing.push(p.to_string());
                }
                p = split_path(p).0;
            }
        }
        for p in missing {
            let mut e = Entry::new(p, EntryKind::Dir);
            e.implicit = true;
            self.push(e);
        }
        let targets: Vec<Option<(u64, u64)>> = self
            .entries
            .iter()
            .map(|e| {
                if e.kind != EntryKind::Hardlink {
                    return None;
                }
                let t = self.entries.get(*self.by_path.get(&e.hardlink_target)?)?;
                (t.kind == EntryKind::File).then_some((t.size, t.offset))
            })
            .collect();
        for (e, t) in self.entries.iter_mut().zip(targets) {
            if let Some((size, offset)) = t {
                e.size = size;
                e.offset = offset;
            }
        }
        let mut out = self.entries;
        out.sort_by(|a, b| a.split().cmp(&b.split()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_table() {
        let ok = [
            ("./", ""),
            (".", ""),
            ("./a/b/", "a/b"),
            ("a//b/./c", "a/b/c"),
            ("usr/bin/env", "usr/bin/env"),
        ];
        for (raw, want) in ok {
            assert_eq!(normalize_path(raw).unwrap(), want, "{raw}");
        }
        for bad in ["/etc/passwd", "../x", "a/../../b", "a/..", "a\0b"] {
            assert!(normalize_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn split_paths() {
        assert_eq!(split_path(""), ("", ""));
        assert_eq!(split_path("a"), ("", "a"));
        assert_eq!(split_path("a/b/c"), ("a/b", "c"));
    }
}
