//! Block digests learned at the first decode, for layers whose index has none: a SOCI zTOC's
//! seek table (`SpanCheck::Compressed`) vouches for each span's *compressed* bytes, which are
//! checked before decoding; the uncompressed blocks that decode produced are then hashed
//! here, so a span file read back from the disk tier is checked block by block as for any
//! other layer (a block never learned, or one that differs, is a miss: the span is fetched
//! again). Kept in memory and in `<index file>.blocks` (a 32-byte header naming the index's
//! seek table, then 32 bytes per block, zero = not learned; a header of another index resets
//! it), written with positional writes and no fsync (a torn record is a mismatch, i.e. a
//! refetch). Calls nothing outside `cache/`; used by `layout.rs`.

use sha2::{Digest as _, Sha256};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

const HEADER: u64 = 32;

pub(super) struct Learned {
    digests: Mutex<Vec<[u8; 32]>>,
    file: Option<std::fs::File>,
}

impl Learned {
    /// The learned digests of `blocks` blocks of the index whose seek table encodes to a
    /// sha256 of `identity`, from `path` if it holds them (else a fresh file there; memory
    /// only when it cannot be written).
    pub(super) fn open(path: &Path, blocks: usize, identity: [u8; 32]) -> Learned {
        let mut digests = vec![[0u8; 32]; blocks];
        let want = HEADER + 32 * blocks as u64;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .ok();
        let file = file.and_then(|f| {
            let mut head = [0u8; 32];
            let same = f.metadata().ok()?.len() == want
                && f.read_exact_at(&mut head, 0).is_ok()
                && head == identity;
            if same {
                let mut all = vec![0u8; 32 * blocks];
                if f.read_exact_at(&mut all, HEADER).is_ok() {
                    for (d, c) in digests.iter_mut().zip(all.chunks_exact(32)) {
                        d.copy_from_slice(c);
                    }
                }
            } else {
                f.set_len(0).ok()?;
                f.set_len(want).ok()?;
                f.write_all_at(&identity, 0).ok()?;
            }
            Some(f)
        });
        Learned {
            digests: Mutex::new(digests),
            file,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<[u8; 32]>> {
        self.digests.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `data` is what block `k` (counted over the whole layer) decoded to.
    pub(super) fn check(&self, k: usize, data: &[u8]) -> bool {
        let known = self.lock().get(k).copied().filter(|d| *d != [0; 32]);
        known.is_some_and(|d| <[u8; 32]>::from(Sha256::digest(data)) == d)
    }

    /// Block `k` (counted over the whole layer) decoded to `data`, from verified bytes.
    pub(super) fn learn(&self, k: usize, data: &[u8]) {
        let d: [u8; 32] = Sha256::digest(data).into();
        let changed = match self.lock().get_mut(k) {
            Some(slot) if *slot != d => {
                *slot = d;
                true
            }
            _ => false,
        };
        if let (true, Some(f)) = (changed, &self.file) {
            let _ = f.write_all_at(&d, HEADER + 32 * k as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_digests_survive_a_reopen_of_the_same_index_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.blocks");
        let l = Learned::open(&p, 4, [1; 32]);
        assert!(!l.check(2, b"abc"), "nothing learned yet");
        l.learn(2, b"abc");
        assert!(l.check(2, b"abc"));
        assert!(!l.check(2, b"abd"));
        assert!(!l.check(9, b"abc"), "out of range is unknown");
        drop(l);
        let l = Learned::open(&p, 4, [1; 32]);
        assert!(l.check(2, b"abc"));
        let l = Learned::open(&p, 4, [2; 32]);
        assert!(!l.check(2, b"abc"), "another index starts afresh");
    }
}
