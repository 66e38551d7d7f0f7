//! Seek tables: where to start decompressing to reach an uncompressed offset, and the sha256
//! of every 64 KiB block inside each span of uncompressed output, so fetched bytes and cached
//! bytes can be verified one block at a time.
//!
//! One shape serves all three stream kinds. A [`SeekTable`] is a list of checkpoints (access
//! points); span *i* is the uncompressed range from checkpoint *i* to checkpoint *i+1* (the last
//! one to the end of the layer). Since format 4 strata's own tables hold no span or window
//! sha256s: the block sha256s cover every byte a span or a window decodes to, so a wrong
//! window is caught by what it decodes (a SOCI zTOC's table, which checks compressed bytes,
//! keeps both). For plain tar the checkpoints sit every
//! SPAN bytes and compressed == uncompressed offsets; for gzip they are zran access points
//! (`gzip.rs`); for zstd they are frame starts (`zstd.rs`). [`SeekTable::span_plan`] is pure: it
//! says which compressed bytes to fetch. Each block also records an upper bound of the compressed
//! bytes needed to decode its span up to the block's end (for partial span fetches; see
//! `docs/layer-index.md`). Serialised by [`SeekTable::encode`] into the seek section of the index
//! file, which holds a sha256 per group of block records; the records and the windows are the
//! file's tail ([`SeekTable::tail`]), and a table read from a head alone gets its records by
//! group (`groups.rs`; see `docs/layer-index.md`).
//!
//! This file is the table only: its format, planning and verification. It knows no codec: the
//! tables are built by `spans::SpanHasher` fed by a codec's indexer, and decoded by
//! `dispatch.rs` (`SeekTable::decode_spans` and friends), which picks the codec. Uses only the
//! layer error type, `groups.rs` and `digest`.

use super::error::{Error, Result};
use super::groups::{self, Groups};
use crate::digest::Digest;
use sha2::{Digest as _, Sha256};
use std::ops::Range;

/// Default distance between checkpoints in uncompressed bytes (see docs/layer-index.md).
pub const DEFAULT_SPAN: u64 = 256 << 10;

/// Size of a verification block: every span is cut into blocks of this many uncompressed bytes
/// (the last one of a span shorter), each with its own sha256, so a cached span can be read and
/// verified one block at a time (see docs/layer-index.md).
pub const BLOCK: u64 = 64 << 10;

/// How the layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Compression {
    Tar = 0,
    Gzip = 1,
    Zstd = 2,
}

impl Compression {
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => Compression::Tar,
            1 => Compression::Gzip,
            2 => Compression::Zstd,
            _ => return None,
        })
    }
}

/// The window a caller supplies to resume decoding at a checkpoint the table holds no window
/// for (an index fetched as its head alone).
#[derive(Clone, Copy, Debug)]
pub enum Window<'a> {
    /// The checkpoint's stored window, fetched from the index's window section (deflated;
    /// checked by what it decodes to, or against its sha256 in a SOCI zTOC's table).
    Stored(&'a [u8]),
    /// The uncompressed bytes just before the checkpoint (its last 32 KiB are the window),
    /// read from verified local spans.
    Before(&'a [u8]),
}

/// What a table's span sha256s are of, and so how fetched bytes are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum SpanCheck {
    /// strata's own: span and per-block sha256s of the *uncompressed* output; every decoded
    /// block is checked.
    #[default]
    Blocks = 0,
    /// A SOCI zTOC's: one sha256 per span of the *compressed* bytes that decode it (from the
    /// checkpoint, with its partial byte, to the next checkpoint). The bytes are checked before
    /// decoding; the index holds no block digests (its block records are zero), so a cached
    /// span is checked against the digests its first decode produced (`cache/learned.rs`), and
    /// no span is fetched in part.
    Compressed = 1,
}

/// One access point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Uncompressed offset of the first byte this checkpoint produces.
    pub uout: u64,
    /// Compressed offset of the first whole byte to feed the decoder.
    pub cin: u64,
    /// gzip only: bits of the byte at `cin - 1` that belong to the next block (0..=7).
    pub bits: u8,
    /// gzip only: the checkpoint is the start of a gzip member (no window, header follows).
    pub member_start: bool,
    /// Range of this checkpoint's deflate-compressed 32 KiB window in [`SeekTable::windows`].
    pub window: Range<u64>,
}

/// See the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeekTable {
    pub compression: Compression,
    /// Nominal span (distance between checkpoints) used when building.
    pub span: u64,
    pub uncompressed_size: u64,
    pub compressed_size: u64,
    /// The stream has no interior access points (a single zstd frame): any read decodes from
    /// the start, so the layer is best fetched whole.
    pub whole: bool,
    pub checkpoints: Vec<Checkpoint>,
    /// sha256 of each span, one per checkpoint: a [`SpanCheck::Compressed`] table's only
    /// (empty otherwise: the blocks cover every byte).
    pub digests: Vec<[u8; 32]>,
    /// Verification block size (uncompressed bytes; [`BLOCK`] when built by strata).
    pub block: u64,
    /// Every span's blocks, span after span ([`SeekTable::blocks_of`] says which are whose);
    /// empty when the index holds only its head (then [`lazy`](Self::lazy) has them by group).
    pub blocks: Vec<Block>,
    /// An index file holding only its head: its block records by group, loaded as fetched.
    pub lazy: Option<Groups>,
    /// Index in `blocks` of span *i*'s first block, plus the total at the end (derived).
    pub block_starts: Vec<usize>,
    /// Concatenated deflate-compressed windows: the index file's window section. Empty when
    /// the file holds only its head (windows fetched one at a time from a sidecar; see
    /// [`SeekTable::windows_local`]).
    pub windows: Vec<u8>,
    /// sha256 of each checkpoint's stored (compressed) window, one per checkpoint: a
    /// [`SpanCheck::Compressed`] table's only (empty otherwise: a window is checked by what it
    /// decodes to, block by block).
    pub window_digests: Vec<[u8; 32]>,
    /// Total length of the window section (whether or not it is in `windows`).
    pub window_bytes: u64,
    /// What `digests` are of (byte 2 of the encoded header).
    pub check: SpanCheck,
}

/// One verification block of a span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// sha256 of the block's uncompressed bytes.
    pub digest: [u8; 32],
    /// Upper bound of the compressed bytes needed to decode the span up to this block's end:
    /// the input the indexer had consumed when its output passed the block's end.
    pub cend: u64,
}

/// Which spans cover a range and which compressed bytes hold them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanPlan {
    pub spans: Range<usize>,
    /// Compressed bytes to fetch (pass exactly these to [`SeekTable::decode_spans`]).
    pub compressed: Range<u64>,
    /// Uncompressed bytes that decoding produces (whole spans, a superset of the request).
    pub uncompressed: Range<u64>,
}

impl SeekTable {
    /// Uncompressed range of span `i`.
    pub fn span_range(&self, i: usize) -> Range<u64> {
        let start = self.checkpoints.get(i).map_or(0, |c| c.uout);
        let end = self
            .checkpoints
            .get(i + 1)
            .map_or(self.uncompressed_size, |c| c.uout);
        start..end
    }

    /// Whether the window section is in memory (always for a table built here; not for an
    /// index file holding only its head).
    pub fn windows_local(&self) -> bool {
        self.windows.len() as u64 == self.window_bytes
    }

    /// Block `g` (global index), if local or its group loaded.
    pub fn block(&self, g: usize) -> Option<&Block> {
        match &self.lazy {
            Some(l) => l.get(g),
            None => self.blocks.get(g),
        }
    }

    pub fn block_count(&self) -> usize {
        self.block_starts.last().copied().unwrap_or(0)
    }

    /// Whether every block record is in memory (not for an index file holding only its head).
    pub fn blocks_local(&self) -> bool {
        self.lazy.is_none()
    }

    /// Whether the index file's tail (block records and windows) is local.
    pub fn tail_local(&self) -> bool {
        self.blocks_local() && self.windows_local()
    }

    /// Bytes of the block section (between the head and the windows in the index file).
    pub fn block_section_len(&self) -> u64 {
        (self.block_count() * groups::RECORD) as u64
    }

    /// The block groups holding the records of spans `spans` that are not loaded (none when
    /// every record is local).
    pub fn groups_missing(&self, spans: Range<usize>) -> Vec<usize> {
        let Some(l) = &self.lazy else {
            return Vec::new();
        };
        let (a, b) = (self.blocks_of(spans.start).start, {
            let e = spans.end.saturating_sub(1).max(spans.start);
            self.blocks_of(e).end
        });
        if a >= b {
            return Vec::new();
        }
        (a / groups::GROUP..(b - 1) / groups::GROUP + 1)
            .filter(|&g| !l.loaded(g))
            .collect()
    }

    /// Bytes of block group `grp` in the block section, and its sha256 (`None` when every
    /// record is local).
    pub fn group(&self, grp: usize) -> Option<(Range<u64>, [u8; 32])> {
        let l = self.lazy.as_ref()?;
        Some((l.range(grp), *l.digests.get(grp)?))
    }

    /// Check block group `grp`'s records (fetched, or read back from a local copy) against
    /// the head and keep them.
    pub fn load_group(&self, grp: usize, bytes: &[u8]) -> Result<()> {
        match &self.lazy {
            Some(l) => l
                .load(grp, bytes, self.compressed_size)
                .map_err(|reason| Error::Groups { reason }),
            None => Ok(()),
        }
    }

    /// The index file's tail: the block section, then the window section (a table built here).
    pub fn tail(&self) -> Vec<u8> {
        let mut t = groups::encode(&self.blocks);
        t.extend_from_slice(&self.windows);
        t
    }

    /// Whether decoding from checkpoint `i` needs a stored window (gzip, not a member start).
    pub fn needs_window(&self, i: usize) -> bool {
        self.checkpoints
            .get(i)
            .is_some_and(|c| !c.window.is_empty())
    }

    /// Range of checkpoint `i`'s stored window in the window section.
    pub fn window_range(&self, i: usize) -> Range<u64> {
        self.checkpoints.get(i).map_or(0..0, |c| c.window.clone())
    }

    /// Stored window of checkpoint `i` if the window section is local (empty for member
    /// starts, non-gzip tables and windows not fetched yet).
    pub fn window(&self, i: usize) -> &[u8] {
        self.checkpoints
            .get(i)
            .and_then(|c| {
                self.windows
                    .get(c.window.start as usize..c.window.end as usize)
            })
            .unwrap_or(&[])
    }

    /// Check a stored window of checkpoint `i` (local or fetched): its length, and its sha256
    /// when the table has window sha256s (a SOCI zTOC's). A table checking blocks has none:
    /// the spans decoded with the window are checked block by block, so a wrong window is a
    /// verification error there, never wrong bytes.
    pub fn check_window(&self, i: usize, packed: &[u8]) -> Result<()> {
        let len_ok = packed.len() as u64 == self.window_range(i).end - self.window_range(i).start;
        if self.check == SpanCheck::Blocks && self.window_digests.is_empty() {
            if len_ok {
                return Ok(());
            }
            return Err(self.decode_err(
                i,
                format!(
                    "stored window of {} bytes, the index says {}",
                    packed.len(),
                    self.window_range(i).end - self.window_range(i).start
                ),
            ));
        }
        let expected = self.window_digests.get(i).copied().unwrap_or([0; 32]);
        let got: [u8; 32] = Sha256::digest(packed).into();
        if got != expected || !len_ok {
            return Err(Error::WindowDigest {
                span: i,
                expected: Digest::from_bytes(expected),
                got: Digest::from_bytes(got),
            });
        }
        Ok(())
    }

    /// The dictionary to resume decoding at checkpoint `i` (empty when none is needed):
    /// `given` by the caller ([`Window::Stored`], checked against its sha256, or
    /// [`Window::Before`], taken as it is) or the local stored one. A window taken from the
    /// bytes before the checkpoint is not checked here: what it decodes is, block by block,
    /// so it is refused for a table that checks compressed bytes instead (a SOCI zTOC's).
    pub(crate) fn window_for(&self, i: usize, given: Option<Window<'_>>) -> Result<Vec<u8>> {
        match given {
            Some(Window::Before(b)) if self.needs_window(i) => {
                if self.check != SpanCheck::Blocks {
                    return Err(Error::WindowMissing { span: i });
                }
                Ok(b[b.len().saturating_sub(32 << 10)..].to_vec())
            }
            Some(Window::Before(_)) => Ok(Vec::new()),
            Some(Window::Stored(w)) => self.unpacked(i, Some(w)),
            None => self.unpacked(i, None),
        }
    }

    fn unpacked(&self, i: usize, given: Option<&[u8]>) -> Result<Vec<u8>> {
        let packed = self.resume_window(i, given)?;
        if packed.is_empty() {
            return Ok(Vec::new());
        }
        super::gzip::unpack_window(packed).map_err(|e| self.decode_err(i, e))
    }

    /// The verified window to resume decoding at checkpoint `i`: `given` (fetched by the
    /// caller) or the local one.
    pub(crate) fn resume_window<'a>(
        &'a self,
        i: usize,
        given: Option<&'a [u8]>,
    ) -> Result<&'a [u8]> {
        if !self.needs_window(i) {
            return Ok(&[]);
        }
        let w = match given {
            Some(w) => w,
            None if self.windows_local() => self.window(i),
            None => return Err(Error::WindowMissing { span: i }),
        };
        self.check_window(i, w)?;
        Ok(w)
    }

    /// Pure planning: which spans cover `range` and which compressed bytes to fetch.
    pub fn span_plan(&self, range: Range<u64>) -> Result<SpanPlan> {
        if range.start > range.end || range.end > self.uncompressed_size {
            return Err(Error::OutOfRange {
                range,
                size: self.uncompressed_size,
            });
        }
        if range.start == range.end {
            return Ok(SpanPlan {
                spans: 0..0,
                compressed: 0..0,
                uncompressed: range.start..range.start,
            });
        }
        let first = self
            .checkpoints
            .partition_point(|c| c.uout <= range.start)
            .saturating_sub(1);
        let end = self
            .checkpoints
            .partition_point(|c| c.uout < range.end)
            .max(first + 1);
        let cp = self.checkpoints.get(first).ok_or(Error::OutOfRange {
            range: range.clone(),
            size: self.uncompressed_size,
        })?;
        let cstart = cp.cin - u64::from(cp.bits > 0);
        let cend = self
            .checkpoints
            .get(end)
            .map_or(self.compressed_size, |c| c.cin);
        Ok(SpanPlan {
            spans: first..end,
            compressed: cstart..cend,
            uncompressed: self.span_range(first).start..self.span_range(end - 1).end,
        })
    }
    /// Check the first bytes of span `i` (a whole number of blocks, or the whole span) block
    /// by block.
    pub(crate) fn verify_prefix(&self, i: usize, data: &[u8]) -> Result<()> {
        let r = self.span_range(i);
        let blocks = self.blocks_covering(i, r.start..r.start + data.len() as u64);
        let covered = blocks
            .end
            .checked_sub(1)
            .map_or(0, |k| self.block_range(i, k).end - r.start);
        if covered != data.len() as u64 {
            return Err(self.decode_err(
                i,
                format!("{} bytes is not a whole number of blocks", data.len()),
            ));
        }
        for k in blocks {
            let b = self.block_range(i, k);
            self.verify_block(
                i,
                k,
                &data[(b.start - r.start) as usize..(b.end - r.start) as usize],
            )?;
        }
        Ok(())
    }

    /// Global indices (into [`blocks`](Self::blocks)) of span `i`'s blocks.
    pub fn blocks_of(&self, i: usize) -> Range<usize> {
        match (self.block_starts.get(i), self.block_starts.get(i + 1)) {
            (Some(&a), Some(&b)) => a..b,
            _ => 0..0,
        }
    }

    /// Uncompressed range of block `k` (counted from 0 within span `i`).
    pub fn block_range(&self, i: usize, k: usize) -> Range<u64> {
        let r = self.span_range(i);
        let s = r.start.saturating_add(self.block.saturating_mul(k as u64));
        s.min(r.end)..s.saturating_add(self.block).min(r.end)
    }

    /// Blocks (counted within span `i`) covering the uncompressed range `r` (clamped to the span).
    pub fn blocks_covering(&self, i: usize, r: Range<u64>) -> Range<usize> {
        let span = self.span_range(i);
        let n = self.blocks_of(i).len();
        let (s, e) = (r.start.max(span.start), r.end.min(span.end));
        if s >= e || self.block == 0 {
            return 0..0;
        }
        let a = ((s - span.start) / self.block) as usize;
        let b = (e - span.start).div_ceil(self.block) as usize;
        a.min(n)..b.min(n)
    }

    /// Check the bytes of block `k` of span `i` against its sha256 (always an error for a
    /// [`SpanCheck::Compressed`] table, which has none).
    pub fn verify_block(&self, i: usize, k: usize, data: &[u8]) -> Result<()> {
        let r = self.block_range(i, k);
        if self.check == SpanCheck::Compressed {
            return Err(self.decode_err(i, "the index has no block digests (SOCI zTOC)"));
        }
        let blocks = self.blocks_of(i);
        // A block past the span's has no record: nothing matches the zero digest.
        let expected = match k < blocks.len() {
            true => match self.block(blocks.start + k) {
                Some(b) => b.digest,
                None => {
                    return Err(Error::Groups {
                        reason: format!("the records of span {i}'s blocks are not loaded"),
                    })
                }
            },
            false => [0; 32],
        };
        let got: [u8; 32] = Sha256::digest(data).into();
        if got != expected || data.len() as u64 != r.end - r.start {
            return Err(Error::SpanDigest {
                span: i,
                range: r,
                expected: Digest::from_bytes(expected),
                got: Digest::from_bytes(got),
            });
        }
        Ok(())
    }

    /// Check all bytes of span `i`, block by block (every byte is covered by a block sha256).
    /// A [`SpanCheck::Compressed`] table checks the length only: its compressed bytes were
    /// checked before they were decoded ([`check_compressed`](Self::check_compressed)).
    pub(crate) fn verify(&self, i: usize, data: &[u8]) -> Result<()> {
        let r = self.span_range(i);
        if data.len() as u64 != r.end - r.start {
            return Err(self.decode_err(
                i,
                format!("{} bytes, expected {}", data.len(), r.end - r.start),
            ));
        }
        if self.check == SpanCheck::Compressed {
            return Ok(());
        }
        for k in 0..self.blocks_of(i).len() {
            let b = self.block_range(i, k);
            let part = &data[(b.start - r.start) as usize..(b.end - r.start) as usize];
            self.verify_block(i, k, part)?;
        }
        Ok(())
    }

    /// Compressed bytes of span `i` (from its checkpoint, with the partial byte, to the next
    /// checkpoint or the end of the blob): what a [`SpanCheck::Compressed`] digest covers.
    pub fn compressed_span(&self, i: usize) -> Range<u64> {
        let start = self
            .checkpoints
            .get(i)
            .map_or(0, |c| c.cin - u64::from(c.bits > 0));
        let end = self
            .checkpoints
            .get(i + 1)
            .map_or(self.compressed_size, |c| c.cin);
        start..end.max(start)
    }

    /// For a [`SpanCheck::Compressed`] table: check the compressed bytes of each span of
    /// `plan` (`compressed` is exactly `plan.compressed`) against its sha256 before anything
    /// is decoded from them. A no-op for other tables.
    pub(crate) fn check_compressed(&self, plan: &SpanPlan, compressed: &[u8]) -> Result<()> {
        if self.check != SpanCheck::Compressed {
            return Ok(());
        }
        for i in plan.spans.clone() {
            let c = self.compressed_span(i);
            let (s, e) = (
                c.start.checked_sub(plan.compressed.start),
                c.end.checked_sub(plan.compressed.start),
            );
            let bytes = match (s, e) {
                (Some(s), Some(e)) => compressed.get(s as usize..e as usize),
                _ => None,
            }
            .ok_or_else(|| self.decode_err(i, "compressed span outside the fetched bytes"))?;
            let got: [u8; 32] = Sha256::digest(bytes).into();
            let expected = self.digests.get(i).copied().unwrap_or([0; 32]);
            if got != expected {
                return Err(Error::CompressedDigest {
                    span: i,
                    range: c,
                    expected: Digest::from_bytes(expected),
                    got: Digest::from_bytes(got),
                });
            }
        }
        Ok(())
    }

    /// Check span `i` against its whole-span sha256 (block by block for a table without
    /// span sha256s).
    pub fn verify_span_digest(&self, i: usize, data: &[u8]) -> Result<()> {
        if self.digests.is_empty() && self.check == SpanCheck::Blocks {
            return self.verify(i, data);
        }
        let got: [u8; 32] = Sha256::digest(data).into();
        let expected = self.digests.get(i).copied().unwrap_or([0; 32]);
        if got != expected {
            return Err(Error::SpanDigest {
                span: i,
                range: self.span_range(i),
                expected: Digest::from_bytes(expected),
                got: Digest::from_bytes(got),
            });
        }
        Ok(())
    }

    pub(crate) fn decode_err(&self, i: usize, reason: impl Into<String>) -> Error {
        Error::SpanDecode {
            span: i,
            range: self.span_range(i),
            reason: reason.into(),
        }
    }

    /// Serialise the seek section (little-endian): 64-byte header, 32-byte checkpoint records,
    /// for a [`SpanCheck::Compressed`] table 32-byte span digests and 32-byte window digests,
    /// then one sha256 per group of block records (format 5). The block records and the
    /// windows go to the index file's tail ([`tail`](Self::tail)).
    pub fn encode(&self) -> Vec<u8> {
        let n = self.checkpoints.len();
        let gd = match &self.lazy {
            Some(l) => l.digests.clone(),
            None => groups::digests(&groups::encode(&self.blocks)),
        };
        let mut b = Vec::with_capacity(64 + n * 96 + gd.len() * 32);
        let digests = self.check == SpanCheck::Compressed;
        b.push(self.compression as u8);
        b.push(self.whole as u8);
        b.push(self.check as u8);
        b.extend_from_slice(&[0; 5]);
        for v in [
            self.span,
            self.uncompressed_size,
            self.compressed_size,
            n as u64,
            self.window_bytes,
            self.block,
            self.block_count() as u64,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        debug_assert_eq!(b.len(), 64);
        for c in &self.checkpoints {
            b.extend_from_slice(&c.uout.to_le_bytes());
            b.extend_from_slice(&c.cin.to_le_bytes());
            b.extend_from_slice(&c.window.start.to_le_bytes());
            b.extend_from_slice(&((c.window.end - c.window.start) as u32).to_le_bytes());
            b.push(c.bits);
            b.push(c.member_start as u8);
            b.extend_from_slice(&[0, 0]);
        }
        if digests {
            for i in 0..n {
                b.extend_from_slice(self.digests.get(i).unwrap_or(&[0; 32]));
            }
            for i in 0..n {
                b.extend_from_slice(self.window_digests.get(i).unwrap_or(&[0; 32]));
            }
        }
        for d in &gd {
            b.extend_from_slice(d);
        }
        b
    }

    /// Inverse of [`encode`](Self::encode), with every offset and invariant checked. `tail`
    /// is the index file's tail ([`tail`](Self::tail): block records, then windows), or empty
    /// when the file holds only its head (records fetched by group, windows one at a time).
    pub fn decode(b: &[u8], tail: &[u8]) -> std::result::Result<Self, String> {
        let u64_at = |o: usize| -> std::result::Result<u64, String> {
            b.get(o..o + 8)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_le_bytes)
                .ok_or_else(|| format!("seek table truncated at byte {o}"))
        };
        let compression = Compression::from_u8(*b.first().ok_or("empty seek table")?)
            .ok_or("unknown compression kind")?;
        let whole = b.get(1).copied().unwrap_or(0) != 0;
        let check = match b.get(2).copied().unwrap_or(0) {
            0 => SpanCheck::Blocks,
            1 => SpanCheck::Compressed,
            k => return Err(format!("unknown span check kind {k}")),
        };
        let (span, usize_, csize, n, wlen, block, nblocks) = (
            u64_at(8)?,
            u64_at(16)?,
            u64_at(24)?,
            u64_at(32)?,
            u64_at(40)?,
            u64_at(48)?,
            u64_at(56)?,
        );
        // Span and window sha256s: a table checking compressed bytes only (format 4).
        let per = if check == SpanCheck::Compressed {
            96
        } else {
            32
        };
        let ngroups = nblocks.div_ceil(groups::GROUP as u64);
        let need = (n as u128) * per + 64 + (ngroups as u128) * 32;
        if need != b.len() as u128 || n == 0 {
            return Err(format!(
                "seek table size {} does not match {n} checkpoints, {nblocks} blocks and \
                 {wlen} window bytes",
                b.len()
            ));
        }
        if block == 0 {
            return Err("seek table has no verification block size".into());
        }
        let n = n as usize;
        let blen = nblocks as u128 * groups::RECORD as u128;
        if !tail.is_empty() && tail.len() as u128 != blen + wlen as u128 {
            return Err(format!(
                "the index's tail has {} bytes, the seek table says {blen} of block records \
                 and {wlen} of windows",
                tail.len()
            ));
        }
        let bbase = 64 + n * per as usize;
        let mut window_digests = Vec::with_capacity(n);
        let mut checkpoints = Vec::with_capacity(n);
        let mut digests = Vec::with_capacity(n);
        for i in 0..n {
            let o = 64 + i * 32;
            let (uout, cin, woff) = (u64_at(o)?, u64_at(o + 8)?, u64_at(o + 16)?);
            let wl = u32::from_le_bytes([b[o + 24], b[o + 25], b[o + 26], b[o + 27]]) as u64;
            let (bits, member_start) = (b[o + 28], b[o + 29] != 0);
            if woff.checked_add(wl).is_none_or(|e| e > wlen) || bits > 7 {
                return Err(format!("checkpoint {i}: bad window or bit count"));
            }
            if cin > csize || uout > usize_ || (bits > 0 && cin == 0) {
                return Err(format!("checkpoint {i}: offsets beyond the layer"));
            }
            if let Some(prev) = checkpoints.last() {
                let prev: &Checkpoint = prev;
                if uout <= prev.uout || cin < prev.cin {
                    return Err(format!("checkpoint {i}: offsets not increasing"));
                }
            } else if uout != 0 {
                return Err("first checkpoint is not at offset 0".into());
            }
            checkpoints.push(Checkpoint {
                uout,
                cin,
                bits,
                member_start,
                window: woff..woff + wl,
            });
            if check == SpanCheck::Compressed {
                let d = 64 + n * 32 + i * 32;
                let mut digest = [0u8; 32];
                digest.copy_from_slice(&b[d..d + 32]);
                digests.push(digest);
                let w = 64 + n * 64 + i * 32;
                digest.copy_from_slice(&b[w..w + 32]);
                window_digests.push(digest);
            }
        }
        // Each span has ceil(len / block) blocks, in order; bounds never decrease.
        let mut block_starts = Vec::with_capacity(n + 1);
        let mut at = 0u64;
        for i in 0..n {
            block_starts.push(at as usize);
            let start = checkpoints[i].uout;
            let end = checkpoints.get(i + 1).map_or(usize_, |c| c.uout);
            at += (end - start).div_ceil(block);
        }
        block_starts.push(at as usize);
        if at != nblocks {
            return Err(format!(
                "seek table has {nblocks} blocks, its spans need {at} of {block} bytes"
            ));
        }
        let gd: Vec<[u8; 32]> = (0..ngroups as usize)
            .map(|g| {
                let mut d = [0u8; 32];
                d.copy_from_slice(&b[bbase + g * 32..bbase + g * 32 + 32]);
                d
            })
            .collect();
        let (blocks, lazy, windows) = if tail.is_empty() {
            let lazy = Groups::new(gd, nblocks as usize);
            (Vec::new(), Some(lazy), &[][..])
        } else {
            let (records, windows) = tail.split_at(blen as usize);
            if groups::digests(records) != gd {
                return Err("block records do not match their group sha256s".into());
            }
            (groups::parse(records, csize)?, None, windows)
        };
        Ok(SeekTable {
            compression,
            span,
            uncompressed_size: usize_,
            compressed_size: csize,
            whole,
            checkpoints,
            digests,
            block,
            blocks,
            lazy,
            block_starts,
            windows: windows.to_vec(),
            window_digests,
            window_bytes: wlen,
            check,
        })
    }
}
