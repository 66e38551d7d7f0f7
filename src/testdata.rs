//! Deterministic test data, the pseudo-random generators every test and bench uses:
//! xorshift64 with the byte shapes built from it (incompressible, part letters, word-like
//! text), and SplitMix64 for `union_random`'s operation streams.
//!
//! std only and no `crate::` paths, because the same source is compiled into three kinds of
//! crate: the library's unit tests (`#[cfg(test)] mod testdata` in lib.rs, never in a release
//! build), the criterion benches and the integration tests (`#[path]` includes from
//! `benches/*.rs`, `fuse-tests/bigfile.rs` and `fuse-tests/common/mod.rs`). It calls
//! nothing in strata. A given seed gives the same bytes on every platform and version: tests
//! compare mounts against these bytes and benches compare numbers across commits, so a
//! change to any shape here changes every fixture built from it.
#![allow(dead_code)]

use std::ops::Range;

/// xorshift64 (shifts 13, 7, 17): tiny, seedable, stable.
#[derive(Clone, Debug)]
pub struct XorShift64(u64);

impl XorShift64 {
    /// From any seed, 0 included: the state is `seed * 0x9E37_79B9_7F4A_7C15 | 1`.
    pub fn new(seed: u64) -> XorShift64 {
        XorShift64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// From a raw state as it is (a state of 0 stays 0 forever).
    pub fn from_state(state: u64) -> XorShift64 {
        XorShift64(state)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform-ish in `0..n`; 0 for `n == 0`, without a step.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// `len` bytes, one step each: `byte(i, x)` turns position `i` and the new state `x`
    /// into byte `i`.
    pub fn bytes(&mut self, len: usize, mut byte: impl FnMut(usize, u64) -> u8) -> Vec<u8> {
        (0..len).map(|i| byte(i, self.next_u64())).collect()
    }

    /// `len` bytes of `mix`'s shape (one step per byte, text bytes included).
    pub fn mixed(&mut self, len: usize, mix: Mix) -> Vec<u8> {
        self.bytes(len, |i, x| {
            if i % mix.period < mix.random {
                x as u8
            } else {
                b'a' + (i % mix.letters) as u8
            }
        })
    }

    /// Word-like text of `len` bytes: one step per piece; one step in `shape.one_in` (those
    /// with `x % one_in == 0`) adds the little-endian bytes `shape.raw` of the state, the
    /// others add the word `x >> 40` picks.
    pub fn words(&mut self, len: usize, shape: &Words) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let x = self.next_u64();
            if x.is_multiple_of(shape.one_in) {
                out.extend_from_slice(&x.to_le_bytes()[shape.raw.clone()]);
            } else {
                let word = shape.words[(x >> 40) as usize % shape.words.len()];
                out.extend_from_slice(word.as_bytes());
            }
        }
        out.truncate(len);
        out
    }
}

/// A periodic shape that compresses a little, like real files: of every `period` bytes the
/// first `random` are pseudo-random, the rest are letters `a`.. cycling every `letters`.
#[derive(Clone, Copy, Debug)]
pub struct Mix {
    pub random: usize,
    pub period: usize,
    pub letters: usize,
}

/// The shape of [`XorShift64::words`].
#[derive(Clone, Debug)]
pub struct Words {
    pub words: &'static [&'static str],
    pub one_in: u64,
    pub raw: Range<usize>,
}

/// SplitMix64, the operation generator of `union_random`: its recorded regression seeds
/// replay exactly only with this stream (including `below` stepping for `n == 0`), so it
/// stays next to [`XorShift64`] instead of being replaced by it.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform-ish in `0..n` (`n == 0` counts as 1).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// `len` incompressible bytes from `seed`.
pub fn pseudo(len: usize, seed: u64) -> Vec<u8> {
    XorShift64::new(seed).bytes(len, |_, x| x as u8)
}

/// `len` bytes of `mix`'s shape from `seed`.
pub fn pseudo_mixed(len: usize, seed: u64, mix: Mix) -> Vec<u8> {
    XorShift64::new(seed).mixed(len, mix)
}

/// `len` bytes of text-like content (about 2:1 under gzip), word-sized pieces with a stray
/// random byte, from `seed`.
pub fn pseudo_text(len: usize, seed: u64) -> Vec<u8> {
    const TEXT: Words = Words {
        words: &[
            "alpha ", "beta ", "gamma ", "delta\n", "usr/lib ", "0x7f3a ", "strata ", "{}\n",
        ],
        one_in: 5,
        raw: 4..5,
    };
    XorShift64::from_state(seed | 1).words(len, &TEXT)
}
