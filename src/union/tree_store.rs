//! The merged tree's bytes: one flat, position-independent layout that is used in place —
//! mmap-ed from `trees/` at a remount, or held in a `Vec` right after a build — so loading a
//! stored tree allocates nothing per entry (issue 5).
//!
//! Layout (little endian; byte-exact table in `docs/architecture.md`, "Stored merged tree"):
//! a 64-byte header (magic `STRATREE`, version, layer count, section counts, file length,
//! CRC-32), then fixed-size records: nodes (80 bytes, indexed by inode - 1), directory
//! entries (12 bytes; each directory owns a contiguous range sorted by name), xattrs (16
//! bytes), hard-link alias groups (12 bytes, sorted by inode) and their paths (8 bytes), and
//! last a string table that every name, link target, xattr and content path points into as
//! (offset, length), and a table of xattr values (any bytes).
//!
//! Integrity: [`validate`] runs once per load, a linear pass over the records (no hashing of
//! the string table beyond one UTF-8 check): every count against the file length, every
//! (offset, length) inside the string table and on character boundaries, every inode number
//! and record range in bounds, kinds and layers known, children strictly sorted; and a
//! CRC-32 of the whole file (crc32fast, ~10 GB/s here) so that a truncated file, a bit flip
//! or a torn write is refused and the tree rebuilt. The CRC guards against accidental damage
//! only: the file lives in strata's own 0700 store and is written atomically (temp, fsync,
//! rename); whoever can write there can also replace the blobs. A crafted file that passes
//! both checks can at worst describe a wrong but well-formed tree — the accessors in
//! `tree.rs` bounds-check every read, so nothing can panic or read outside the buffer.

use super::MergedTree;
use crate::layer::Timestamp;
use crate::union::{Error, FileKind, Result};

pub(super) const MAGIC: &[u8; 8] = b"STRATREE";
/// 1: length-prefixed stream with a trailing sha256 (decoded into owned strings); 2: flat.
pub(super) const VERSION: u32 = 2;
pub(super) const HEADER: usize = 64;
pub(super) const NODE: usize = 80;
pub(super) const DIRENT: usize = 12;
pub(super) const XATTR: usize = 16;
pub(super) const ALIAS: usize = 12;
pub(super) const APATH: usize = 8;
/// Header offset of the CRC-32 (computed over every other byte of the file).
const CRC_AT: usize = 60;

// Node record fields (byte offsets).
pub(super) const N_KIND: usize = 0;
pub(super) const N_MODE: usize = 4;
pub(super) const N_UID: usize = 8;
pub(super) const N_GID: usize = 12;
pub(super) const N_NLINK: usize = 16;
pub(super) const N_LAYER: usize = 20;
pub(super) const N_PARENT: usize = 24;
pub(super) const N_NAME: usize = 28; // offset u32, length u32: the first name (root: empty)
pub(super) const N_XATTRS: usize = 36; // first u32, count u32
/// Kind-specific pair: directory = first child, child count; file = content path;
/// symlink = target; device = major, minor.
pub(super) const N_A: usize = 44;
pub(super) const N_B: usize = 48;
pub(super) const N_SIZE: usize = 52;
pub(super) const N_SEC: usize = 60;
pub(super) const N_NSEC: usize = 68;
/// File: content offset in the layer's uncompressed stream.
pub(super) const N_OFFSET: usize = 72;

pub(super) fn kind_code(k: FileKind) -> u8 {
    match k {
        FileKind::File => 0,
        FileKind::Dir => 1,
        FileKind::Symlink => 2,
        FileKind::CharDev => 3,
        FileKind::BlockDev => 4,
        FileKind::Fifo => 5,
        FileKind::Socket => 6,
    }
}

pub(super) fn kind_from(c: u8) -> Option<FileKind> {
    Some(match c {
        0 => FileKind::File,
        1 => FileKind::Dir,
        2 => FileKind::Symlink,
        3 => FileKind::CharDev,
        4 => FileKind::BlockDev,
        5 => FileKind::Fifo,
        6 => FileKind::Socket,
        _ => return None,
    })
}

/// Little-endian reads that never panic (out of range = 0; `validate` rules that out).
pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at.wrapping_add(4))
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at.wrapping_add(8))
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// Section offsets (absolute) and record counts, from the header.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Layout {
    pub layers: u32,
    pub n_nodes: usize,
    pub nodes: usize,
    pub n_dirents: usize,
    pub dirents: usize,
    pub n_xattrs: usize,
    pub xattrs: usize,
    pub n_aliases: usize,
    pub aliases: usize,
    pub n_apaths: usize,
    pub apaths: usize,
    pub strings: usize,
    pub strings_len: usize,
    pub blobs: usize,
    pub blobs_len: usize,
}

fn bad() -> Error {
    Error::Invalid("stored merged tree is damaged")
}

/// One node as the builder hands it over.
pub(super) struct NodeRec {
    pub kind: FileKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub layer: u32,
    pub parent: u32,
    pub name: (u32, u32),
    pub xattrs: (u32, u32),
    pub a: u32,
    pub b: u32,
    pub size: u64,
    pub mtime: Timestamp,
    pub offset: u64,
}

/// The sections being assembled by a build.
#[derive(Default)]
pub(super) struct Flat {
    pub nodes: Vec<NodeRec>,
    pub dirents: Vec<[u32; 3]>,
    pub xattrs: Vec<[u32; 4]>,
    pub aliases: Vec<[u32; 3]>,
    pub apaths: Vec<[u32; 2]>,
    pub strings: Vec<u8>,
    pub blobs: Vec<u8>,
}

fn limit() -> Error {
    Error::Invalid("merged tree too large for the stored format (4 GiB / 2^32 records)")
}

pub(super) fn u32_of(v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| limit())
}

impl Flat {
    /// Append `s` to the string table: (offset, length).
    pub fn str(&mut self, s: &[u8]) -> Result<(u32, u32)> {
        let off = u32_of(self.strings.len())?;
        let len = u32_of(s.len())?;
        u32_of(self.strings.len() + s.len())?;
        self.strings.extend_from_slice(s);
        Ok((off, len))
    }

    /// Append the path `parent/name` (`name` alone when `parent` is empty) to the string
    /// table: (offset, length).
    pub fn path(&mut self, parent: &[u8], name: &[u8]) -> Result<(u32, u32)> {
        if parent.is_empty() {
            return self.str(name);
        }
        let (off, _) = self.str(parent)?;
        self.strings.push(b'/');
        self.str(name)?;
        Ok((off, u32_of(self.strings.len())? - off))
    }

    /// Append `b` (an xattr value: any bytes) to the blob table: (offset, length).
    pub fn blob(&mut self, b: &[u8]) -> Result<(u32, u32)> {
        let off = u32_of(self.blobs.len())?;
        let len = u32_of(b.len())?;
        u32_of(self.blobs.len() + b.len())?;
        self.blobs.extend_from_slice(b);
        Ok((off, len))
    }

    /// The file bytes.
    pub fn finish(self, layers: u32) -> Result<Vec<u8>> {
        let total = HEADER
            + self.nodes.len() * NODE
            + self.dirents.len() * DIRENT
            + self.xattrs.len() * XATTR
            + self.aliases.len() * ALIAS
            + self.apaths.len() * APATH
            + self.strings.len()
            + self.blobs.len();
        let mut w = Vec::with_capacity(total);
        w.extend_from_slice(MAGIC);
        for v in [
            VERSION,
            layers,
            u32_of(self.nodes.len())?,
            u32_of(self.dirents.len())?,
            u32_of(self.xattrs.len())?,
            u32_of(self.aliases.len())?,
            u32_of(self.apaths.len())?,
            u32_of(self.strings.len())?,
        ] {
            w.extend_from_slice(&v.to_le_bytes());
        }
        w.extend_from_slice(&(total as u64).to_le_bytes()); // 40..48
        w.extend_from_slice(&u32_of(self.blobs.len())?.to_le_bytes()); // 48..52
        w.resize(HEADER, 0); // reserved, CRC at 60
        for n in &self.nodes {
            let start = w.len();
            w.push(kind_code(n.kind));
            w.extend_from_slice(&[0; 3]);
            for v in [
                n.mode, n.uid, n.gid, n.nlink, n.layer, n.parent, n.name.0, n.name.1, n.xattrs.0,
                n.xattrs.1, n.a, n.b,
            ] {
                w.extend_from_slice(&v.to_le_bytes());
            }
            w.extend_from_slice(&n.size.to_le_bytes());
            w.extend_from_slice(&n.mtime.sec.to_le_bytes());
            w.extend_from_slice(&n.mtime.nsec.to_le_bytes());
            w.extend_from_slice(&n.offset.to_le_bytes());
            debug_assert_eq!(w.len() - start, NODE);
        }
        for r in &self.dirents {
            r.iter().for_each(|v| w.extend_from_slice(&v.to_le_bytes()));
        }
        for r in &self.xattrs {
            r.iter().for_each(|v| w.extend_from_slice(&v.to_le_bytes()));
        }
        for r in &self.aliases {
            r.iter().for_each(|v| w.extend_from_slice(&v.to_le_bytes()));
        }
        for r in &self.apaths {
            r.iter().for_each(|v| w.extend_from_slice(&v.to_le_bytes()));
        }
        w.extend_from_slice(&self.strings);
        w.extend_from_slice(&self.blobs);
        let crc = crc_of(&w);
        w[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        Ok(w)
    }
}

fn crc_of(b: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(b.get(..CRC_AT).unwrap_or(b));
    h.update(b.get(CRC_AT + 4..).unwrap_or(&[]));
    h.finalize()
}

/// Check `b` as a stored tree for an image of `layers` layers (see the module docs).
pub(super) fn validate(b: &[u8], layers: usize) -> Result<Layout> {
    if b.len() < HEADER || b.get(..8) != Some(&MAGIC[..]) || u32_at(b, 8) != VERSION {
        return Err(Error::Invalid("stored merged tree: unknown format"));
    }
    if u64_at(b, 40) != b.len() as u64 {
        return Err(bad());
    }
    if u32_at(b, CRC_AT) != crc_of(b) {
        return Err(Error::Invalid("stored merged tree: checksum mismatch"));
    }
    let c = |i: usize| u32_at(b, 12 + 4 * i) as usize;
    let mut l = Layout {
        layers: u32_at(b, 12),
        n_nodes: c(1),
        n_dirents: c(2),
        n_xattrs: c(3),
        n_aliases: c(4),
        n_apaths: c(5),
        strings_len: c(6),
        blobs_len: u32_at(b, 48) as usize,
        ..Layout::default()
    };
    if l.layers as usize != layers || l.n_nodes == 0 {
        return Err(bad());
    }
    // Counts are u32, so none of these sums can overflow a 64-bit usize.
    l.nodes = HEADER;
    l.dirents = l.nodes + l.n_nodes * NODE;
    l.xattrs = l.dirents + l.n_dirents * DIRENT;
    l.aliases = l.xattrs + l.n_xattrs * XATTR;
    l.apaths = l.aliases + l.n_aliases * ALIAS;
    l.strings = l.apaths + l.n_apaths * APATH;
    l.blobs = l.strings + l.strings_len;
    if l.blobs + l.blobs_len != b.len() || b.get(52..CRC_AT).is_none_or(|r| r != [0; 8]) {
        return Err(bad());
    }
    let strings = b.get(l.strings..l.blobs).ok_or_else(bad)?;
    let strings = std::str::from_utf8(strings).map_err(|_| bad())?;
    let str_ok = |at: usize| {
        let (off, len) = (u32_at(b, at) as usize, u32_at(b, at + 4) as usize);
        off + len <= strings.len()
            && strings.is_char_boundary(off)
            && strings.is_char_boundary(off + len)
    };
    let range_ok = |first: u32, count: u32, total: usize| first as usize + count as usize <= total;
    let n = l.n_nodes as u64;
    let ino_ok = |i: u32| i >= 1 && u64::from(i) <= n;
    let mut dirents_owned = 0usize;
    for i in 0..l.n_nodes {
        let r = l.nodes + i * NODE;
        let kind = b
            .get(r + N_KIND)
            .copied()
            .and_then(kind_from)
            .ok_or_else(bad)?;
        let (a, bb) = (u32_at(b, r + N_A), u32_at(b, r + N_B));
        let ok = (u32_at(b, r + N_LAYER) as usize) < layers.max(1)
            && ino_ok(u32_at(b, r + N_PARENT))
            && str_ok(r + N_NAME)
            && range_ok(
                u32_at(b, r + N_XATTRS),
                u32_at(b, r + N_XATTRS + 4),
                l.n_xattrs,
            )
            && u32_at(b, r + N_NSEC) < 1_000_000_000
            && match kind {
                FileKind::Dir => {
                    dirents_owned += bb as usize;
                    range_ok(a, bb, l.n_dirents)
                }
                FileKind::File | FileKind::Symlink => str_ok(r + N_A),
                _ => true,
            }
            && (i == 0 || u32_at(b, r + N_NAME + 4) > 0);
        if !ok {
            return Err(bad());
        }
        // Padding after the kind byte must be zero (a flipped bit there is damage too, and it
        // keeps the bytes free for later use).
        if u32_at(b, r) & !0xff != 0 {
            return Err(bad());
        }
    }
    if dirents_owned != l.n_dirents || b.get(l.nodes + N_KIND) != Some(&kind_code(FileKind::Dir)) {
        return Err(bad());
    }
    for i in 0..l.n_dirents {
        let r = l.dirents + i * DIRENT;
        if !str_ok(r) || u32_at(b, r + 4) == 0 || !ino_ok(u32_at(b, r + 8)) {
            return Err(bad());
        }
    }
    // Sorted, unique names within each directory (lookup is a binary search).
    let name = |d: usize| {
        let r = l.dirents + d * DIRENT;
        let (off, len) = (u32_at(b, r) as usize, u32_at(b, r + 4) as usize);
        strings.as_bytes().get(off..off + len).unwrap_or(&[])
    };
    for i in 0..l.n_nodes {
        let r = l.nodes + i * NODE;
        if b.get(r + N_KIND) == Some(&kind_code(FileKind::Dir)) {
            let (first, count) = (u32_at(b, r + N_A) as usize, u32_at(b, r + N_B) as usize);
            for d in first + 1..first + count {
                if name(d - 1) >= name(d) {
                    return Err(bad());
                }
            }
        }
    }
    for i in 0..l.n_xattrs {
        let r = l.xattrs + i * XATTR;
        if !str_ok(r) || !range_ok(u32_at(b, r + 8), u32_at(b, r + 12), l.blobs_len) {
            return Err(bad());
        }
    }
    let mut prev = 0u32;
    for i in 0..l.n_aliases {
        let r = l.aliases + i * ALIAS;
        let ino = u32_at(b, r);
        if !ino_ok(ino) || ino <= prev || !range_ok(u32_at(b, r + 4), u32_at(b, r + 8), l.n_apaths)
        {
            return Err(bad());
        }
        prev = ino;
    }
    for i in 0..l.n_apaths {
        if !str_ok(l.apaths + i * APATH) {
            return Err(bad());
        }
    }
    Ok(l)
}

impl MergedTree {
    /// The stored form (see the module docs): the bytes this tree is a view of.
    pub fn encode(&self) -> &[u8] {
        self.bytes()
    }

    /// Recompute the checksum of stored-tree bytes in place (fuzzing: lets mutated inputs
    /// reach the structural checks). Too-short input is left alone.
    #[doc(hidden)]
    pub fn reseal(bytes: &mut [u8]) {
        if bytes.len() >= HEADER {
            let crc = crc_of(bytes);
            bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{Entry, EntryKind};

    fn sample() -> MergedTree {
        let mut lower = vec![Entry::new("etc", EntryKind::Dir)];
        let mut f = Entry::new("etc/passwd", EntryKind::File);
        f.size = 10;
        f.offset = 512;
        f.xattrs = vec![("user.a".into(), b"1".to_vec())];
        lower.push(f);
        let mut l = Entry::new("etc/passwd2", EntryKind::Hardlink);
        l.hardlink_target = "etc/passwd".into();
        lower.push(l);
        let mut s = Entry::new("etc/s", EntryKind::Symlink);
        s.link_target = "passwd".into();
        lower.push(s);
        let mut c = Entry::new("dev/null", EntryKind::CharDev);
        (c.dev_major, c.dev_minor) = (1, 3);
        lower.push(c);
        let mut upper = vec![Entry::new("etc", EntryKind::Dir)];
        upper.push(Entry::new("etc/s", EntryKind::Whiteout));
        let mut g = Entry::new("usr", EntryKind::Dir);
        g.mode = 0o755;
        upper.push(g);
        let mut t = Entry::new("usr/t", EntryKind::Symlink);
        t.link_target = "../etc/ünïcodé".into();
        upper.push(t);
        MergedTree::build(&[lower, upper]).unwrap()
    }

    /// Everything the accessors show, for comparing trees.
    fn dump(t: &MergedTree) -> String {
        let mut out = String::new();
        for ino in 1..=t.len() {
            let n = t.node(ino).unwrap();
            let kids: Vec<_> = t.children(ino).map(|d| (d.name, d.ino)).collect();
            let xs: Vec<_> = n.xattrs().collect();
            let al: Vec<_> = t.aliases(ino).collect();
            out += &format!(
                "{ino} {:?} {:o} {} {} {} {} {:?} {} {}:{} {:?} {:?} {} {:?} {:?} {:?} {:?}\n",
                n.kind,
                n.mode,
                n.uid,
                n.gid,
                n.size,
                n.nlink,
                n.mtime,
                n.parent,
                n.dev_major,
                n.dev_minor,
                n.link_target,
                n.content(),
                n.layer,
                t.name(ino),
                xs,
                kids,
                al
            );
        }
        out
    }

    #[test]
    fn round_trip() {
        let t = sample();
        let p = t.resolve("etc/passwd").unwrap();
        assert_eq!(t.aliases(p).count(), 2);
        let back = MergedTree::decode(t.encode(), 2).unwrap();
        assert_eq!(dump(&t), dump(&back));
        assert!(dump(&t).contains("ünïcodé"));
        let empty = MergedTree::build::<Vec<Entry>>(&[]).unwrap();
        assert_eq!(
            dump(&empty),
            dump(&MergedTree::decode(empty.encode(), 0).unwrap())
        );
        // and through a file, mmap-ed
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.tree");
        std::fs::write(&path, t.encode()).unwrap();
        assert_eq!(dump(&t), dump(&MergedTree::open(&path, 2).unwrap()));
    }

    #[test]
    fn damage_is_an_error() {
        let b = sample().encode().to_vec();
        // Every truncation, every single flipped bit and every byte set to 0xff is refused.
        for cut in 0..b.len() {
            assert!(MergedTree::decode(&b[..cut], 2).is_err(), "cut at {cut}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(MergedTree::decode(&longer, 2).is_err());
        for i in 0..b.len() {
            for bit in 0..8 {
                let mut c = b.clone();
                c[i] ^= 1 << bit;
                assert!(MergedTree::decode(&c, 2).is_err(), "flip {bit} at {i}");
            }
            let mut c = b.clone();
            if c[i] != 0xff {
                c[i] = 0xff;
                assert!(MergedTree::decode(&c, 2).is_err(), "0xff at {i}");
            }
        }
        // A tree for another number of layers than the image has is refused.
        assert!(MergedTree::decode(&b, 1).is_err());
        assert!(MergedTree::decode(&b, 3).is_err());
    }

    /// With a correct checksum (a crafted file), structural damage is still refused.
    #[test]
    fn crafted_files_with_a_valid_checksum_are_checked() {
        let b = sample().encode().to_vec();
        let reseal = |mut c: Vec<u8>| {
            let crc = crc_of(&c);
            c[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
            c
        };
        assert!(MergedTree::decode(&reseal(b.clone()), 2).is_ok());
        let l = validate(&b, 2).unwrap();
        let set = |at: usize, v: u32| {
            let mut c = b.clone();
            c[at..at + 4].copy_from_slice(&v.to_le_bytes());
            reseal(c)
        };
        let cases = [
            ("parent out of range", l.nodes + N_PARENT, 99),
            ("parent zero", l.nodes + N_PARENT, 0),
            ("name beyond strings", l.nodes + NODE + N_NAME, 1 << 30),
            ("children beyond dirents", l.nodes + N_A, 1000),
            ("child count", l.nodes + N_B, 1000),
            ("dirent ino", l.dirents + 8, 1000),
            ("dirent name length", l.dirents + 4, 1 << 20),
            ("unknown kind", l.nodes + NODE, 9),
            ("layer", l.nodes + NODE + N_LAYER, 5),
            ("xattr range", l.nodes + N_XATTRS, 7),
            ("node count", 16, 1000),
        ];
        for (what, at, v) in cases {
            assert!(MergedTree::decode(&set(at, v), 2).is_err(), "{what}");
        }
        // Children out of order: swap the first two root entries.
        let mut c = b.clone();
        let d = l.dirents;
        let (x, y) = (
            c[d..d + DIRENT].to_vec(),
            c[d + DIRENT..d + 2 * DIRENT].to_vec(),
        );
        c[d..d + DIRENT].copy_from_slice(&y);
        c[d + DIRENT..d + 2 * DIRENT].copy_from_slice(&x);
        assert!(MergedTree::decode(&reseal(c), 2).is_err());
        // A name cut inside a multi-byte character.
        let t = sample();
        let s = t.resolve("usr/t").unwrap() as usize;
        let at = l.nodes + (s - 1) * NODE + N_B;
        let len = u32_at(&b, at);
        assert!(MergedTree::decode(&set(at, len - 1), 2).is_err());
    }

    /// Version 1 files (and anything else that is not this format) are refused, so the
    /// caller rebuilds them.
    #[test]
    fn old_version_is_refused() {
        let mut v1 = MAGIC.to_vec();
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&1u64.to_le_bytes());
        v1.resize(200, 0);
        let e = MergedTree::decode(&v1, 1).unwrap_err();
        assert!(e.to_string().contains("unknown format"), "{e}");
        let mut b = sample().encode().to_vec();
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert!(MergedTree::decode(&b, 2).is_err());
    }
}
