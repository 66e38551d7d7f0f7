//! The plain (uncompressed) tar codec: compressed offsets are uncompressed offsets.
//!
//! [`TarSpans`] passes the stream through, opening a checkpoint every SPAN bytes exactly and
//! hashing spans and blocks (each block's compressed bound is its own end); [`Plain`] decodes a
//! span by checking the fetched bytes themselves. Implements the `codec.rs` traits; uses
//! `seek.rs`, `spans.rs` and the layer error type.

use super::codec::{Codec, Indexer};
use super::error::Result;
use super::seek::{Compression, SeekTable, SpanPlan, Window};
use super::spans::SpanHasher;
use std::io::Read;
use std::ops::Range;

/// Pass-through indexer for plain tar layers: hashes every SPAN bytes.
pub(crate) struct TarSpans<R> {
    inner: R,
    pub(crate) spans: SpanHasher,
    span: u64,
}

impl<R: Read> TarSpans<R> {
    pub(crate) fn new(inner: R, span: u64, limit: u64) -> Self {
        TarSpans {
            inner,
            spans: SpanHasher::new_exact(limit),
            span: span.max(1),
        }
    }
}

impl<R: Read> Indexer for TarSpans<R> {
    fn fill(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        // Never read across a span boundary, so checkpoints land exactly on multiples of SPAN;
        // a checkpoint is only opened once a byte of its span has arrived.
        let since = self.spans.since_last();
        let room = if since >= self.span {
            self.span
        } else {
            self.span - since
        };
        let room = room.min(out.len() as u64) as usize;
        let n = self.inner.read(&mut out[..room])?;
        if n > 0 && since >= self.span {
            let at = self.spans.uout;
            self.spans.checkpoint(at, 0, false, &[]);
        }
        let cin = self.spans.uout + n as u64;
        self.spans
            .output(&out[..n], cin)
            .map_err(std::io::Error::other)?;
        Ok(n)
    }

    fn finish(self) -> Result<SeekTable> {
        let size = self.spans.uout;
        Ok(self.spans.finish(Compression::Tar, self.span, size, false))
    }
}

/// The plain tar [`Codec`].
pub(crate) struct Plain;

impl Codec for Plain {
    fn decode_spans(
        &self,
        table: &SeekTable,
        plan: &SpanPlan,
        compressed: &[u8],
        _window: Option<Window<'_>>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let mut rest = compressed;
        for i in plan.spans.clone() {
            let r = table.span_range(i);
            let len = (r.end - r.start) as usize;
            if rest.len() < len {
                return Err(table.decode_err(i, "compressed bytes end early"));
            }
            let (span, tail) = rest.split_at(len);
            table.verify(i, span)?;
            out.extend_from_slice(span);
            rest = tail;
        }
        Ok(())
    }

    fn decodes_prefix(&self) -> bool {
        true
    }

    fn decode_prefix(
        &self,
        table: &SeekTable,
        i: usize,
        n: u64,
        _crange: Range<u64>,
        compressed: &[u8],
        _window: Option<Window<'_>>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let part = compressed
            .get(..n as usize)
            .ok_or_else(|| table.decode_err(i, "compressed bytes end early"))?;
        out.extend_from_slice(part);
        table.verify_prefix(i, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::codec::index_stream;
    use crate::layer::error::Error;

    #[test]
    fn tar_spans_round_trip_and_plan() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let t = index_stream(TarSpans::new(&data[..], 1000, u64::MAX)).unwrap();
        assert_eq!(t.checkpoints.len(), 10);
        let t2 = SeekTable::decode(&t.encode(), &t.tail()).unwrap();
        assert_eq!(t, t2);
        let p = t.span_plan(1500..2500).unwrap();
        assert_eq!(p.spans, 1..3);
        assert_eq!(p.compressed, 1000..3000);
        let got = t
            .read_range(1500..2500, |r| {
                Ok(data[r.start as usize..r.end as usize].to_vec())
            })
            .unwrap();
        assert_eq!(got, &data[1500..2500]);
        let mut bad = data.clone();
        bad[1234] ^= 1;
        let err = t
            .read_range(1500..1600, |r| {
                Ok(bad[r.start as usize..r.end as usize].to_vec())
            })
            .unwrap_err();
        assert!(matches!(err, Error::SpanDigest { span: 1, .. }), "{err}");
        assert!(t.span_plan(9000..10_001).is_err());
    }

    #[test]
    fn blocks_cover_every_span_and_catch_a_flipped_byte() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 13 % 241) as u8).collect();
        let mut r = TarSpans::new(&data[..], 1000, u64::MAX);
        r.spans.set_block(300);
        let t = index_stream(r).unwrap();
        // 1000-byte spans in 300-byte blocks: 300, 300, 300, 100.
        assert_eq!(t.blocks.len(), 40);
        assert_eq!(t.blocks_of(3), 12..16);
        assert_eq!(t.block_range(3, 3), 3900..4000);
        assert_eq!(t.blocks_covering(3, 3299..3601), 0..3);
        assert_eq!(t.blocks_covering(3, 0..3001), 0..1);
        // Plain tar: the bound of a block is its end.
        assert_eq!(t.blocks[13].cend, 3600);
        let t2 = SeekTable::decode(&t.encode(), &t.tail()).unwrap();
        assert_eq!(t, t2);
        for k in 0..4 {
            let br = t.block_range(3, k);
            t.verify_block(3, k, &data[br.start as usize..br.end as usize])
                .unwrap();
        }
        let mut bad = data.clone();
        bad[3650] ^= 4;
        let err = t.verify_block(3, 2, &bad[3600..3900]).unwrap_err();
        assert!(
            matches!(err, Error::SpanDigest { span: 3, ref range, .. } if *range == (3600..3900)),
            "{err}"
        );
        assert!(t.verify_block(3, 1, &bad[3300..3600]).is_ok());
        // A block of the wrong length or index never verifies.
        assert!(t.verify_block(3, 1, &data[3300..3599]).is_err());
        assert!(t.verify_block(3, 4, &data[0..0]).is_err());
        // Whole-span verification (the fetch path) checks every block.
        assert!(t.verify(3, &bad[3000..4000]).is_err());
        assert!(t.verify(3, &data[3000..4000]).is_ok());
        t.verify_span_digest(3, &data[3000..4000]).unwrap();
        // A table whose block records do not add up is refused.
        let mut enc = t.encode();
        enc[48..56].copy_from_slice(&400u64.to_le_bytes());
        assert!(SeekTable::decode(&enc, &[]).is_err());
    }

    #[test]
    fn corrupt_seek_table_is_an_error() {
        let data = vec![1u8; 5000];
        let enc = index_stream(TarSpans::new(&data[..], 1000, u64::MAX))
            .unwrap()
            .encode();
        for cut in [0, 10, 64, enc.len() - 1] {
            assert!(SeekTable::decode(&enc[..cut], &[]).is_err());
        }
        let mut swapped = enc.clone();
        swapped[64..72].copy_from_slice(&7000u64.to_le_bytes());
        assert!(SeekTable::decode(&swapped, &[]).is_err());
    }
}
