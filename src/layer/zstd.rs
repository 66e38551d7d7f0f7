//! Seek tables for zstd layers: frame starts are the only places a zstd stream can be
//! entered, so checkpoints sit at frame boundaries (at least SPAN apart).
//!
//! [`ZstdIndexer`] decompresses the stream once, read through `codec::IndexReader` (bounded
//! memory: zstd's window, capped by libzstd's default 128 MiB window limit, plus two 64 KiB
//! buffers) and records the compressed offset of each frame start it chooses as a checkpoint
//! and the sha256 of each span. A layer that is a single frame gets one checkpoint and
//! `whole = true` in the table: it cannot be read lazily and should be fetched whole. Skippable
//! frames are passed over. The `Zstd` codec decodes whole spans from a frame start (no span
//! prefixes). Implements the `codec.rs` traits; uses `seek.rs`, `spans.rs` and the layer error
//! type.

use super::codec::{Codec, Indexer};
use super::error::{Error, Result};
use super::seek::{Compression, SeekTable, SpanPlan, Window};
use super::spans::SpanHasher;
use std::io::{ErrorKind, Read};
use std::ops::Range;
use zstd::zstd_safe::{DCtx, InBuffer, OutBuffer};

const BUF: usize = 64 << 10;

/// Decompressing indexer that builds the zstd seek table.
pub struct ZstdIndexer<R> {
    input: R,
    inbuf: Vec<u8>,
    in_pos: usize,
    in_len: usize,
    eof: bool,
    cin: u64,
    dctx: DCtx<'static>,
    at_frame_start: bool,
    frames: u64,
    spans: SpanHasher,
    span: u64,
}

impl<R: Read> ZstdIndexer<R> {
    pub fn new(input: R, span: u64, limit: u64) -> Result<Self> {
        let dctx = DCtx::try_create().ok_or(Error::Zstd {
            offset: 0,
            reason: "cannot create a decompression context".into(),
        })?;
        Ok(ZstdIndexer {
            input,
            inbuf: vec![0; BUF],
            in_pos: 0,
            in_len: 0,
            eof: false,
            cin: 0,
            dctx,
            at_frame_start: true,
            frames: 0,
            spans: SpanHasher::new(limit),
            span: span.max(1),
        })
    }

    fn err(&self, reason: impl Into<String>) -> Error {
        Error::Zstd {
            offset: self.cin,
            reason: reason.into(),
        }
    }

    fn refill(&mut self) -> Result<()> {
        while self.in_pos == self.in_len && !self.eof {
            match self.input.read(&mut self.inbuf) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.in_pos = 0;
                    self.in_len = n;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.err(format!("read error: {e}"))),
            }
        }
        Ok(())
    }

    /// Produce the next batch of output into `out`; 0 at the end of the stream.
    fn decompress_some(&mut self, out: &mut [u8]) -> Result<usize> {
        loop {
            self.refill()?;
            if self.in_pos == self.in_len {
                if !self.at_frame_start {
                    return Err(self.err("truncated zstd stream (ends inside a frame)"));
                }
                if self.frames == 0 {
                    return Err(self.err("empty zstd stream"));
                }
                return Ok(0);
            }
            if self.at_frame_start {
                if self.spans.since_last() >= self.span {
                    self.spans.checkpoint(self.cin, 0, false, &[]);
                }
                self.at_frame_start = false;
                self.frames += 1;
            }
            let mut inb = InBuffer::around(&self.inbuf[self.in_pos..self.in_len]);
            let mut outb = OutBuffer::around(&mut out[..]);
            let hint = self.dctx.decompress_stream(&mut outb, &mut inb);
            let (consumed, produced) = (inb.pos, outb.pos());
            self.in_pos += consumed;
            self.cin += consumed as u64;
            let hint = hint.map_err(|code| {
                self.err(format!(
                    "corrupt zstd data: {}",
                    zstd::zstd_safe::get_error_name(code)
                ))
            })?;
            self.spans.output(&out[..produced], self.cin)?;
            if hint == 0 {
                self.at_frame_start = true;
            }
            if produced > 0 {
                return Ok(produced);
            }
            if consumed == 0 && hint != 0 {
                return Err(self.err("zstd decoder made no progress"));
            }
        }
    }
}

impl<R: Read> Indexer for ZstdIndexer<R> {
    fn fill(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        self.decompress_some(out).map_err(std::io::Error::other)
    }

    fn finish(self) -> Result<SeekTable> {
        if !self.eof || !self.at_frame_start {
            return Err(Error::Zstd {
                offset: self.cin,
                reason: "seek table requested before the end of the stream".into(),
            });
        }
        let whole = self.frames <= 1;
        Ok(self
            .spans
            .finish(Compression::Zstd, self.span, self.cin, whole))
    }
}

/// The zstd [`Codec`]: whole spans from a frame start; no stored windows, no span prefixes.
pub(crate) struct Zstd;

impl Codec for Zstd {
    fn decode_spans(
        &self,
        table: &SeekTable,
        plan: &SpanPlan,
        compressed: &[u8],
        _window: Option<Window<'_>>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        decode_spans(table, plan, compressed, out)
    }

    fn decodes_prefix(&self) -> bool {
        false
    }

    fn decode_prefix(
        &self,
        table: &SeekTable,
        i: usize,
        _n: u64,
        _crange: Range<u64>,
        _compressed: &[u8],
        _window: Option<Window<'_>>,
        _out: &mut Vec<u8>,
    ) -> Result<()> {
        Err(table.decode_err(i, "zstd spans are fetched whole"))
    }
}

/// Decode the spans of `plan` (zstd table, starting at a frame boundary) into `out`.
fn decode_spans(
    table: &SeekTable,
    plan: &SpanPlan,
    compressed: &[u8],
    out: &mut Vec<u8>,
) -> Result<()> {
    let first = plan.spans.start;
    let mut dec = zstd::stream::read::Decoder::with_buffer(compressed)
        .map_err(|e| table.decode_err(first, e.to_string()))?;
    for i in plan.spans.clone() {
        let r = table.span_range(i);
        let start = out.len();
        let len = r.end - r.start;
        let n = (&mut dec)
            .take(len)
            .read_to_end(out)
            .map_err(|e| table.decode_err(i, format!("corrupt zstd data: {e}")))?;
        if (n as u64) < len {
            return Err(table.decode_err(i, "compressed bytes end early"));
        }
        table.verify(i, &out[start..])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::pseudo_text;

    fn index(blob: &[u8], span: u64) -> Result<SeekTable> {
        crate::layer::codec::index_stream(ZstdIndexer::new(blob, span, u64::MAX)?)
    }

    #[test]
    fn multi_frame_random_reads() {
        let data = pseudo_text(900_000, 7);
        let mut blob = Vec::new();
        for part in data.chunks(100_000) {
            blob.extend(zstd::encode_all(part, 3).unwrap());
        }
        let t = index(&blob, 150_000).unwrap();
        assert!(!t.whole);
        assert_eq!(t.checkpoints.len(), 5);
        for r in [
            0..10u64,
            199_990..200_010,
            123_456..654_321,
            899_000..900_000,
        ] {
            let got = t
                .read_range(r.clone(), |c| {
                    Ok(blob[c.start as usize..c.end as usize].to_vec())
                })
                .unwrap();
            assert_eq!(got, &data[r.start as usize..r.end as usize]);
        }
    }

    #[test]
    fn single_frame_is_whole_and_truncation_fails() {
        let data = pseudo_text(300_000, 8);
        let blob = zstd::encode_all(&data[..], 3).unwrap();
        let t = index(&blob, 64 << 10).unwrap();
        assert!(t.whole);
        assert_eq!(t.checkpoints.len(), 1);
        let got = t
            .read_range(1000..2000, |c| {
                Ok(blob[c.start as usize..c.end as usize].to_vec())
            })
            .unwrap();
        assert_eq!(got, &data[1000..2000]);
        assert!(index(&blob[..blob.len() - 10], 64 << 10).is_err());
    }
}
