//! The merged tree as bytes: written once per image after the first build, read back at
//! later mounts instead of merging the layer indexes again (issue 5: "merged once ... stored").
//!
//! Layout (little endian): magic `STRATREE`, format version (u32), node count (u64); per node
//! kind (u8), mode, uid, gid, nlink, dev_major, dev_minor (u32), size (u64), mtime sec (i64)
//! and nsec (u32), parent (u64), layer (u32), link target (string), xattr count (u32) and
//! (name string, value bytes) pairs, content flag (u8) then layer (u32), path (string), size,
//! offset (u64); then per node its child count (u32) and (name string, ino u64) pairs; then
//! the alias count (u64) and (ino u64, path count u32, path strings); last the sha256 of every
//! byte before it. Strings and byte strings are a u32 length and the bytes.
//!
//! Decoding checks the digest, every length against the bytes left, every inode number
//! against the node count, UTF-8 and sortedness of child names: a damaged or foreign file is
//! an error (the caller rebuilds), never a tree that points outside itself.

use super::{MergedTree, TreeDirEnt, TreeNode};
use crate::layer::Timestamp;
use crate::union::lower::LowerFile;
use crate::union::{Error, FileKind, Result};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;

const MAGIC: &[u8; 8] = b"STRATREE";
const VERSION: u32 = 1;

fn kind_code(k: FileKind) -> u8 {
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

fn kind_from(c: u8) -> Option<FileKind> {
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

struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        // Names, targets and xattr values are far below 4 GiB (tar metadata is capped).
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
}

struct R<'a> {
    b: &'a [u8],
}

fn bad(_: impl Sized) -> Error {
    Error::Invalid("stored merged tree is damaged")
}

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.b.len() {
            return Err(bad(()));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(bad)?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(bad)?))
    }
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<&'a str> {
        std::str::from_utf8(self.bytes()?).map_err(bad)
    }
    /// A count of items that each need at least `min` bytes (bounds allocations).
    fn count(&mut self, n: u64, min: usize) -> Result<usize> {
        let n = usize::try_from(n).map_err(bad)?;
        if n.saturating_mul(min) > self.b.len() {
            return Err(bad(()));
        }
        Ok(n)
    }
}

impl MergedTree {
    /// The tree as bytes (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = W(Vec::with_capacity(self.nodes.len() * 96));
        w.0.extend_from_slice(MAGIC);
        w.u32(VERSION);
        w.u64(self.nodes.len() as u64);
        for n in &self.nodes {
            w.u8(kind_code(n.kind));
            for v in [n.mode, n.uid, n.gid, n.nlink, n.dev_major, n.dev_minor] {
                w.u32(v);
            }
            w.u64(n.size);
            w.u64(n.mtime.sec as u64);
            w.u32(n.mtime.nsec);
            w.u64(n.parent);
            w.u32(n.layer as u32);
            w.bytes(n.link_target.as_bytes());
            w.u32(n.xattrs.len() as u32);
            for (k, v) in &n.xattrs {
                w.bytes(k.as_bytes());
                w.bytes(v);
            }
            match &n.content {
                None => w.u8(0),
                Some(f) => {
                    w.u8(1);
                    w.u32(f.layer() as u32);
                    w.bytes(f.path().as_bytes());
                    w.u64(f.size());
                    w.u64(f.offset());
                }
            }
        }
        for kids in &self.children {
            w.u32(kids.len() as u32);
            for d in kids {
                w.bytes(d.name.as_bytes());
                w.u64(d.ino);
            }
        }
        w.u64(self.aliases.len() as u64);
        for (ino, paths) in &self.aliases {
            w.u64(*ino);
            w.u32(paths.len() as u32);
            for p in paths {
                w.bytes(p.as_bytes());
            }
        }
        let sum = Sha256::digest(&w.0);
        w.0.extend_from_slice(&sum);
        w.0
    }

    /// Read a tree written by [`MergedTree::encode`] for an image of `layers` layers.
    pub fn decode(bytes: &[u8], layers: usize) -> Result<Self> {
        let body_len = bytes.len().checked_sub(32).ok_or_else(|| bad(()))?;
        let (body, sum) = bytes.split_at(body_len);
        if Sha256::digest(body)[..] != *sum {
            return Err(Error::Invalid("stored merged tree: digest mismatch"));
        }
        let mut r = R { b: body };
        if r.take(8)? != MAGIC || r.u32()? != VERSION {
            return Err(Error::Invalid("stored merged tree: unknown format"));
        }
        let n = r.u64()?;
        let count = r.count(n, 60)?;
        let ino_ok = |i: u64| i >= 1 && i <= n;
        let mut nodes = Vec::with_capacity(count);
        for _ in 0..count {
            let kind = kind_from(r.u8()?).ok_or_else(|| bad(()))?;
            let mut v = [0u32; 6];
            for x in &mut v {
                *x = r.u32()?;
            }
            let size = r.u64()?;
            let mtime = Timestamp {
                sec: r.u64()? as i64,
                nsec: r.u32()?,
            };
            let parent = r.u64()?;
            let layer = r.u32()? as usize;
            if !ino_ok(parent) || layer >= layers.max(1) {
                return Err(bad(()));
            }
            let link_target = r.str()?.to_string();
            let nx = r.u32()?;
            let nx = r.count(u64::from(nx), 8)?;
            let mut xattrs = Vec::with_capacity(nx);
            for _ in 0..nx {
                let k = r.str()?.to_string();
                xattrs.push((k, r.bytes()?.to_vec()));
            }
            let content = match r.u8()? {
                0 => None,
                1 => {
                    let fl = r.u32()? as usize;
                    let path = r.str()?;
                    let (fsize, off) = (r.u64()?, r.u64()?);
                    if fl >= layers.max(1) {
                        return Err(bad(()));
                    }
                    Some(LowerFile::new(fl, path, fsize, off))
                }
                _ => return Err(bad(())),
            };
            nodes.push(TreeNode {
                kind,
                mode: v[0],
                uid: v[1],
                gid: v[2],
                size,
                mtime,
                nlink: v[3],
                dev_major: v[4],
                dev_minor: v[5],
                xattrs,
                link_target,
                content,
                parent,
                layer,
            });
        }
        let mut children = Vec::with_capacity(count);
        for _ in 0..count {
            let k = r.u32()?;
            let k = r.count(u64::from(k), 12)?;
            let mut kids: Vec<TreeDirEnt> = Vec::with_capacity(k);
            for _ in 0..k {
                let name = r.str()?;
                let ino = r.u64()?;
                if !ino_ok(ino) || kids.last().is_some_and(|p| p.name.as_str() >= name) {
                    return Err(bad(()));
                }
                kids.push(TreeDirEnt {
                    name: name.to_string(),
                    ino,
                });
            }
            children.push(kids);
        }
        let na = r.u64()?;
        let na = r.count(na, 12)?;
        let mut aliases = BTreeMap::new();
        for _ in 0..na {
            let ino = r.u64()?;
            let np = r.u32()?;
            let np = r.count(u64::from(np), 4)?;
            let mut paths = Vec::with_capacity(np);
            for _ in 0..np {
                paths.push(r.str()?.to_string());
            }
            if !ino_ok(ino) {
                return Err(bad(()));
            }
            aliases.insert(ino, paths);
        }
        if !r.b.is_empty() {
            return Err(bad(()));
        }
        Ok(MergedTree {
            nodes,
            children,
            aliases,
        })
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
        let mut upper = vec![Entry::new("etc", EntryKind::Dir)];
        upper.push(Entry::new("etc/s", EntryKind::Whiteout));
        let mut g = Entry::new("usr", EntryKind::Dir);
        g.mode = 0o755;
        upper.push(g);
        MergedTree::build(&[lower, upper]).unwrap()
    }

    fn same(a: &MergedTree, b: &MergedTree) {
        assert_eq!(a.nodes, b.nodes);
        assert_eq!(a.children, b.children);
        assert_eq!(a.aliases, b.aliases);
    }

    #[test]
    fn round_trip() {
        let t = sample();
        assert!(t.aliases(t.resolve("etc/passwd").unwrap()).len() == 2);
        let b = t.encode();
        same(&t, &MergedTree::decode(&b, 2).unwrap());
        let empty = MergedTree::build::<Vec<Entry>>(&[]).unwrap();
        same(&empty, &MergedTree::decode(&empty.encode(), 0).unwrap());
    }

    #[test]
    fn damage_is_an_error() {
        let b = sample().encode();
        // Every truncation and every single flipped byte is refused.
        for cut in 0..b.len() {
            assert!(MergedTree::decode(&b[..cut], 2).is_err(), "cut at {cut}");
        }
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x40;
            assert!(MergedTree::decode(&c, 2).is_err(), "flip at {i}");
        }
        // A tree for more layers than the image has is refused even with a valid digest.
        assert!(MergedTree::decode(&b, 1).is_err());
    }
}
