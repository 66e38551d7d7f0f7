//! Block records by group (index format 5). The 40-byte block records (a sha256 and a
//! compressed bound per 64 KiB of output) were half of every head a cold mount fetched, and a
//! cold start reads a few of a layer's blocks, often none. So they are kept out of the head:
//! the index file's block section (after the head, before the windows) holds them, in groups
//! of [`GROUP`], and the head's seek section holds one sha256 per group. An index fetched as
//! its head alone has [`Groups`]: the group digests, and the groups fetched so far (each
//! checked against its digest before one of its records is used, `cache/` fetches them from
//! the sidecar with the spans they check). The trust chain is unchanged: head -> group sha256
//! -> block sha256 -> bytes. Pure data; uses only `seek::Block`.

use super::seek::Block;
use sha2::{Digest as _, Sha256};
use std::ops::Range;
use std::sync::OnceLock;

/// Block records per group (a group is 2,560 bytes: the records of 4 MiB of output).
pub const GROUP: usize = 64;
/// Bytes of one encoded block record: the block's sha256, then its compressed bound (u64 LE).
pub const RECORD: usize = 40;

/// The block records of a table whose index holds only its head: see the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Groups {
    /// sha256 of each group's encoded records, from the head.
    pub digests: Vec<[u8; 32]>,
    /// Total blocks of the table.
    count: usize,
    loaded: Vec<OnceLock<Vec<Block>>>,
}

impl Groups {
    pub(crate) fn new(digests: Vec<[u8; 32]>, count: usize) -> Self {
        let loaded = (0..digests.len()).map(|_| OnceLock::new()).collect();
        Groups {
            digests,
            count,
            loaded,
        }
    }

    /// Block `g` (global index) if its group is loaded.
    pub fn get(&self, g: usize) -> Option<&Block> {
        self.loaded.get(g / GROUP)?.get()?.get(g % GROUP)
    }

    pub fn loaded(&self, grp: usize) -> bool {
        self.loaded.get(grp).is_some_and(|l| l.get().is_some())
    }

    /// Bytes of group `grp` in the block section.
    pub fn range(&self, grp: usize) -> Range<u64> {
        group_range(grp, self.count)
    }

    /// Check group `grp`'s encoded records against its digest and keep them. `csize`: the
    /// blob's compressed size (no bound may pass it).
    pub(crate) fn load(&self, grp: usize, bytes: &[u8], csize: u64) -> Result<(), String> {
        let (Some(want), Some(slot)) = (self.digests.get(grp), self.loaded.get(grp)) else {
            return Err(format!("block group {grp} is not in the index"));
        };
        let r = self.range(grp);
        if bytes.len() as u64 != r.end - r.start {
            return Err(format!(
                "block group {grp}: {} bytes, the index says {}",
                bytes.len(),
                r.end - r.start
            ));
        }
        if <[u8; 32]>::from(Sha256::digest(bytes)) != *want {
            return Err(format!("block group {grp} does not match its sha256"));
        }
        let blocks = parse(bytes, csize)?;
        let _ = slot.set(blocks);
        Ok(())
    }
}

/// Bytes of group `grp` in the block section of a table of `count` blocks.
pub fn group_range(grp: usize, count: usize) -> Range<u64> {
    let a = (grp * GROUP).min(count);
    let b = ((grp + 1) * GROUP).min(count);
    (a * RECORD) as u64..(b * RECORD) as u64
}

/// The block section: every record, in order.
pub(crate) fn encode(blocks: &[Block]) -> Vec<u8> {
    let mut b = Vec::with_capacity(blocks.len() * RECORD);
    for blk in blocks {
        b.extend_from_slice(&blk.digest);
        b.extend_from_slice(&blk.cend.to_le_bytes());
    }
    b
}

/// sha256 of each group of an encoded block section.
pub(crate) fn digests(section: &[u8]) -> Vec<[u8; 32]> {
    section
        .chunks(GROUP * RECORD)
        .map(|c| Sha256::digest(c).into())
        .collect()
}

/// Records from encoded bytes; bounds must not decrease nor pass `csize`.
pub(crate) fn parse(bytes: &[u8], csize: u64) -> Result<Vec<Block>, String> {
    if !bytes.len().is_multiple_of(RECORD) {
        return Err(format!("{} bytes of block records", bytes.len()));
    }
    let mut out: Vec<Block> = Vec::with_capacity(bytes.len() / RECORD);
    for (k, r) in bytes.chunks_exact(RECORD).enumerate() {
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&r[..32]);
        let mut c = [0u8; 8];
        c.copy_from_slice(&r[32..]);
        let cend = u64::from_le_bytes(c);
        if cend > csize || out.last().is_some_and(|p| cend < p.cend) {
            return Err(format!(
                "block {k}: compressed bound out of order or beyond the layer"
            ));
        }
        out.push(Block { digest, cend });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(n: usize) -> Vec<Block> {
        (0..n)
            .map(|i| Block {
                digest: [i as u8; 32],
                cend: i as u64 * 10,
            })
            .collect()
    }

    #[test]
    fn a_group_is_used_only_when_it_matches_its_digest() {
        let all = blocks(GROUP * 2 + 5);
        let section = encode(&all);
        let g = Groups::new(digests(&section), all.len());
        assert_eq!(g.digests.len(), 3);
        assert!(g.get(GROUP + 1).is_none());
        let r = g.range(1);
        let mut bad = section[r.start as usize..r.end as usize].to_vec();
        bad[7] ^= 1;
        assert!(g.load(1, &bad, 1 << 40).is_err());
        assert!(!g.loaded(1));
        assert!(g
            .load(1, &section[r.start as usize..r.end as usize - 1], 1 << 40)
            .is_err());
        g.load(1, &section[r.start as usize..r.end as usize], 1 << 40)
            .unwrap();
        assert_eq!(g.get(GROUP + 1), Some(&all[GROUP + 1]));
        assert!(g.get(0).is_none());
        let r = g.range(2);
        assert_eq!(r.end - r.start, 5 * RECORD as u64);
        // A bound past the blob is refused even with the right digest.
        assert!(g
            .load(2, &section[r.start as usize..r.end as usize], 10)
            .is_err());
    }
}
