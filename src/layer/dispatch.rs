//! Codec dispatch: the one place that maps a [`Compression`] to its codec (`plain.rs`,
//! `gzip.rs`, `zstd.rs`), and the [`SeekTable`] read methods that need one: decoding fetched
//! spans ([`SeekTable::decode_spans`]), a blocking [`SeekTable::read_range`], and partial span
//! fetches ([`SeekTable::prefix_plan`], [`SeekTable::decode_prefix`]). Sits above the codecs and
//! `seek.rs`, so neither the table nor a codec switches on the compression kind.

use super::codec::Codec;
use super::error::{Error, Result};
use super::seek::{Compression, SeekTable, SpanCheck, SpanPlan, Window};
use super::{gzip, plain, zstd};
use std::ops::Range;

/// The codec that decodes a table of this compression.
pub(crate) fn codec(c: Compression) -> &'static dyn Codec {
    match c {
        Compression::Tar => &plain::Plain,
        Compression::Gzip => &gzip::Gzip,
        Compression::Zstd => &zstd::Zstd,
    }
}

impl SeekTable {
    /// Decode the spans of `plan` from exactly `plan.compressed` bytes and verify each span's
    /// sha256 (a SOCI table: each span's compressed bytes, before decoding). Returns the bytes of `plan.uncompressed`; never unverified bytes.
    pub fn decode_spans(&self, plan: &SpanPlan, compressed: &[u8]) -> Result<Vec<u8>> {
        self.decode_spans_with(plan, compressed, None)
    }

    /// [`decode_spans`](Self::decode_spans) with the stored window of the plan's first
    /// checkpoint supplied by the caller (fetched from a sidecar; checked against its sha256).
    pub fn decode_spans_with(
        &self,
        plan: &SpanPlan,
        compressed: &[u8],
        window: Option<Window<'_>>,
    ) -> Result<Vec<u8>> {
        let want = plan.compressed.end - plan.compressed.start;
        if compressed.len() as u64 != want {
            return Err(Error::FetchLength {
                range: plan.compressed.clone(),
                expected: want,
                got: compressed.len() as u64,
            });
        }
        if plan.spans.is_empty() {
            return Ok(Vec::new());
        }
        self.check_compressed(plan, compressed)?;
        let mut out = Vec::new();
        codec(self.compression).decode_spans(self, plan, compressed, window, &mut out)?;
        Ok(out)
    }

    /// Fetch what `range` needs through `fetch`, decode, verify, and return exactly `range`.
    pub fn read_range(
        &self,
        range: Range<u64>,
        mut fetch: impl FnMut(Range<u64>) -> std::io::Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let plan = self.span_plan(range.clone())?;
        if plan.spans.is_empty() {
            return Ok(Vec::new());
        }
        let bytes = fetch(plan.compressed.clone()).map_err(|source| Error::Fetch {
            range: plan.compressed.clone(),
            source,
        })?;
        let mut out = self.decode_spans(&plan, &bytes)?;
        let skip = (range.start - plan.uncompressed.start) as usize;
        out.truncate(skip + (range.end - range.start) as usize);
        out.drain(..skip);
        Ok(out)
    }

    /// Partial span fetch: the compressed bytes that decode blocks `0..=k` of span `i` (from
    /// the span's checkpoint to block `k`'s bound), or `None` when this table cannot decode a
    /// prefix (zstd, a single-frame layer) or `k` is not a block of span `i`.
    pub fn prefix_plan(&self, i: usize, k: usize) -> Option<Range<u64>> {
        if self.whole
            || self.check == SpanCheck::Compressed
            || !codec(self.compression).decodes_prefix()
            || k >= self.blocks_of(i).len()
        {
            return None;
        }
        let cp = self.checkpoints.get(i)?;
        let cstart = cp.cin - u64::from(cp.bits > 0);
        let whole = self.span_plan(self.span_range(i)).ok()?.compressed;
        let bound = self.block(self.blocks_of(i).start + k)?.cend;
        Some(cstart..bound.clamp(cstart, whole.end))
    }

    /// Decode blocks `0..=k` of span `i` from exactly the bytes of
    /// [`prefix_plan`](Self::prefix_plan) (`window`: the checkpoint's stored window when it is
    /// not local) and verify each block. Returns the span's first bytes through block `k`.
    pub fn decode_prefix(
        &self,
        i: usize,
        k: usize,
        compressed: &[u8],
        window: Option<Window<'_>>,
    ) -> Result<Vec<u8>> {
        let crange = self
            .prefix_plan(i, k)
            .ok_or_else(|| self.decode_err(i, format!("no prefix plan for block {k}")))?;
        if compressed.len() as u64 != crange.end - crange.start {
            return Err(Error::FetchLength {
                range: crange.clone(),
                expected: crange.end - crange.start,
                got: compressed.len() as u64,
            });
        }
        let n = self.block_range(i, k).end - self.span_range(i).start;
        let mut out = Vec::with_capacity(n as usize);
        codec(self.compression).decode_prefix(self, i, n, crange, compressed, window, &mut out)?;
        Ok(out)
    }
}
