//! The codec interface: what a layer compression format (plain tar, gzip, zstd) provides, and
//! the one `Read` adapter every format's indexer is read through.
//!
//! Two sides. Building: an [`Indexer`] decompresses the layer stream once in batches while it
//! records checkpoints and hashes into a `spans::SpanHasher`; [`IndexReader`] turns any indexer
//! into the `Read` of the uncompressed tar that `tar::TarReader` parses at the same time, and
//! [`index_stream`] reads one to its end. Reading: a [`Codec`] decodes spans (or a span's first
//! blocks) of a [`SeekTable`] from fetched compressed bytes, verifying every block. The codecs
//! (`plain.rs`, `gzip.rs`, `zstd.rs`) implement these traits; `dispatch.rs`, above them, is the
//! one place that maps a [`Compression`](super::Compression) to its codec. Uses only `seek.rs`
//! and the layer error type; it knows no codec.

use super::error::{self, Result};
use super::seek::{SeekTable, SpanPlan, Window};
use std::io::Read;
use std::ops::Range;

/// Size of the adapter's output buffer: each [`Indexer::fill`] call gets this much room.
pub(crate) const BUF: usize = 64 << 10;

/// One layer compression format's decoder for fetched spans; see the module docs.
pub(crate) trait Codec: Sync {
    /// Decode the spans of `plan` from exactly `plan.compressed` bytes into `out`, verifying
    /// each span block by block. `window`: the stored window of the plan's first checkpoint
    /// when the table does not hold it (fetched by the caller; checked against its sha256).
    fn decode_spans(
        &self,
        table: &SeekTable,
        plan: &SpanPlan,
        compressed: &[u8],
        window: Option<Window<'_>>,
        out: &mut Vec<u8>,
    ) -> Result<()>;

    /// Whether this format can decode a span from its checkpoint up to a block's compressed
    /// bound (a partial span fetch); when not, spans are fetched whole.
    fn decodes_prefix(&self) -> bool;

    /// Decode the first `n` bytes of span `i` (a whole number of blocks) into `out` from
    /// exactly `crange` (the table's prefix plan), verifying each block.
    #[allow(clippy::too_many_arguments)]
    fn decode_prefix(
        &self,
        table: &SeekTable,
        i: usize,
        n: u64,
        crange: Range<u64>,
        compressed: &[u8],
        window: Option<Window<'_>>,
        out: &mut Vec<u8>,
    ) -> Result<()>;
}

/// One layer compression format's streaming decoder that builds the seek table as it goes.
pub(crate) trait Indexer {
    /// Decode the next output into `out` (always [`BUF`] bytes of room); `Ok(0)` only at the
    /// end of the stream. Errors of the format travel as `io::Error::other(layer::Error)` (see
    /// `error::unwrap_io`); errors of the input pass through as they are.
    fn fill(&mut self, out: &mut [u8]) -> std::io::Result<usize>;

    /// The seek table; call after the stream has been read to its end.
    fn finish(self) -> Result<SeekTable>;
}

/// The `Read` of an indexer's uncompressed output (the only `Read` adapter in `layer/`).
pub(crate) struct IndexReader<I> {
    inner: I,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
}

impl<I: Indexer> IndexReader<I> {
    pub(crate) fn new(inner: I) -> Self {
        IndexReader {
            inner,
            buf: vec![0; BUF],
            pos: 0,
            len: 0,
        }
    }

    /// The indexer's seek table; call after reading to the end.
    pub(crate) fn finish(self) -> Result<SeekTable> {
        self.inner.finish()
    }
}

impl<I: Indexer> Read for IndexReader<I> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.len {
            let n = self.inner.fill(&mut self.buf)?;
            if n == 0 {
                return Ok(0);
            }
            self.pos = 0;
            self.len = n;
        }
        let n = (self.len - self.pos).min(buf.len());
        buf[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Read the rest of `r` (end-of-archive padding, or a whole stream) so the seek table covers
/// all of it.
pub(crate) fn drain(r: &mut impl Read) -> Result<()> {
    std::io::copy(r, &mut std::io::sink())
        .map(|_| ())
        .map_err(|e| error::unwrap_io(e, 0))
}

/// Build a seek table by reading an indexer's whole stream (tests and tools).
pub(crate) fn index_stream(ix: impl Indexer) -> Result<SeekTable> {
    let mut r = IndexReader::new(ix);
    drain(&mut r)?;
    r.finish()
}
