//! Trimmed gzip windows (index format 5). A checkpoint's stored window is the 32 KiB of output
//! before it, but decoding from the checkpoint reads only the window bytes that the deflate
//! matches of its first 32 KiB of output point at (no match reaches further back than 32 KiB),
//! often under a third of them. The indexer keeps, while a checkpoint is pending, the
//! compressed bytes after it and the output they produce; with 32 KiB of output in hand (or
//! the member's end) it decodes them again from dictionaries that encode each position
//! (low byte, high byte, low byte inverted: deflate decoding never depends on the bytes it
//! copies, so the output of a copied byte is its position's code, and a literal is the same
//! in all three), keeps the window bytes some output came from, zeroes the rest, and checks
//! that decoding with the trimmed window gives exactly the output the real one gave. The
//! zeroes compress to nothing: stored windows ~6x smaller on the bench images. Anything
//! unusual (a probe that fails, a short dictionary) keeps the whole window. Uses `gzip.rs`'s
//! inflater and window packing.

use super::gzip::{pack_window, pack_window_best, Inflater};
use libz_rs_sys as z;

/// Output after a checkpoint that may still point into its window.
const REACH: usize = 32 << 10;

/// A checkpoint whose window is not stored yet.
pub(crate) struct Pending {
    /// Index of the checkpoint.
    pub at: usize,
    dict: Vec<u8>,
    bits: u8,
    /// The byte whose high `bits` bits start the checkpoint's first block.
    first: u8,
    comp: Vec<u8>,
    out: Vec<u8>,
}

impl Pending {
    pub(crate) fn new(at: usize, dict: Vec<u8>, bits: u8, first: u8) -> Self {
        Pending {
            at,
            dict,
            bits,
            first,
            comp: Vec::new(),
            out: Vec::with_capacity(REACH),
        }
    }

    /// `comp`: compressed bytes consumed after the checkpoint, producing `out`.
    pub(crate) fn feed(&mut self, comp: &[u8], out: &[u8]) {
        if self.ready() {
            return;
        }
        self.comp.extend_from_slice(comp);
        let take = (REACH - self.out.len()).min(out.len());
        self.out.extend_from_slice(&out[..take]);
    }

    /// Whether all output that can point into the window has been seen.
    fn ready(&self) -> bool {
        self.out.len() >= REACH
    }

    /// The window to store: trimmed when all output that can point into the window was seen
    /// ([`ready`](Self::ready), or `ended`: the member ended), else whole.
    pub(crate) fn pack(self, ended: bool) -> Vec<u8> {
        if ended || self.ready() {
            if let Some(t) = self.trimmed() {
                return pack_window_best(&t);
            }
        }
        pack_window(&self.dict)
    }

    fn trimmed(&self) -> Option<Vec<u8>> {
        let n = self.dict.len();
        if n != REACH || self.out.is_empty() {
            return None;
        }
        let lo: Vec<u8> = (0..n).map(|q| q as u8).collect();
        let hi: Vec<u8> = (0..n).map(|q| (q >> 8) as u8).collect();
        let inv: Vec<u8> = lo.iter().map(|b| !b).collect();
        let (a, b, c) = (self.probe(&lo)?, self.probe(&hi)?, self.probe(&inv)?);
        let mut keep = vec![false; n];
        for p in 0..a.len() {
            if a[p] != c[p] {
                keep[((b[p] as usize) << 8 | a[p] as usize) % n] = true;
            }
        }
        let t: Vec<u8> = self
            .dict
            .iter()
            .zip(&keep)
            .map(|(&v, &k)| if k { v } else { 0 })
            .collect();
        (self.probe(&t)? == self.out).then_some(t)
    }

    /// Decode the first `out.len()` bytes after the checkpoint with dictionary `dict`.
    fn probe(&self, dict: &[u8]) -> Option<Vec<u8>> {
        let mut inf = Inflater::new(true).ok()?;
        if self.bits > 0 {
            inf.prime(self.bits, self.first >> (8 - self.bits)).ok()?;
        }
        inf.set_dictionary(dict).ok()?;
        let want = self.out.len();
        let mut out = vec![0u8; want];
        let (mut pos, mut got) = (0, 0);
        while got < want {
            let s = inf.inflate(&self.comp[pos..], &mut out[got..], z::Z_NO_FLUSH);
            pos += s.consumed;
            got += s.produced;
            match s.code {
                z::Z_OK if s.consumed > 0 || s.produced > 0 => {}
                z::Z_STREAM_END | z::Z_OK | z::Z_BUF_ERROR => break,
                _ => return None,
            }
        }
        (got == want).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::layer::gzip::{build_seek_table, unpack_window};
    use std::io::Write;

    /// Text-like data with matches at every distance, gzip-compressed.
    fn sample() -> (Vec<u8>, Vec<u8>) {
        let words = ["alpha ", "beta ", "gamma ", "delta\n", "epsilon ", "zeta "];
        let mut x = 7u64;
        let mut data = Vec::new();
        while data.len() < 3 << 20 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            data.extend_from_slice(words[(x >> 33) as usize % words.len()].as_bytes());
            data.extend_from_slice(format!("{}", x >> 50).as_bytes());
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&data).unwrap();
        (data, gz.finish().unwrap())
    }

    #[test]
    fn trimmed_windows_decode_every_span_exactly_and_are_smaller() {
        let (data, blob) = sample();
        let t = build_seek_table(&blob[..], 256 << 10, u64::MAX).unwrap();
        let mut zeroed = 0;
        for i in 0..t.checkpoints.len() {
            if !t.needs_window(i) {
                continue;
            }
            let w = unpack_window(t.window(i)).unwrap();
            assert_eq!(w.len(), 32 << 10);
            let r = t.span_range(i);
            // The trimmed window holds the real bytes wherever it is not zero.
            let before = &data[(r.start as usize - w.len())..r.start as usize];
            assert!(w.iter().zip(before).all(|(a, b)| *a == 0 || a == b));
            zeroed += w.iter().zip(before).filter(|(a, b)| a != b).count();
            // Every span decodes (and verifies) from its trimmed window alone.
            let plan = t.span_plan(r.clone()).unwrap();
            let c = &blob[plan.compressed.start as usize..plan.compressed.end as usize];
            assert_eq!(
                t.decode_spans(&plan, c).unwrap(),
                &data[r.start as usize..r.end as usize]
            );
        }
        assert!(zeroed > 0, "no window byte was trimmed");
    }
}
