//! Building a seek table while a layer streams through: [`SpanHasher`] is fed the uncompressed
//! output in order (with the compressed offset reached) and told where the codec opens
//! checkpoints; it keeps the sha256 of every verification block and the stored windows, and
//! turns them into a [`SeekTable`] at the end. It also enforces the bound on total output (the
//! decompression-bomb guard), and follows the tar headers in the output ([`TarTrack`]) so a
//! codec can place its checkpoints closer together among small files ([`SpanHasher::spacing`]).
//! Codec-neutral: each codec's indexer (`plain.rs`, `gzip.rs`, `zstd.rs`) decides where
//! checkpoints go. Uses `seek.rs`, `tar.rs`'s header fields and the layer error type.

use super::error::{Error, Result};
use super::seek::{Block, Checkpoint, Compression, SeekTable, BLOCK};
use sha2::{Digest as _, Sha256};

/// Checkpoints among small files are at least this far apart (uncompressed bytes), or a
/// quarter of the span if that is more (see [`SpanHasher::spacing`]).
pub(crate) const DENSE_SPAN: u64 = 64 << 10;

/// Incremental builder of block digests, fed the uncompressed stream in order.
pub(crate) struct SpanHasher {
    pub(crate) checkpoints: Vec<Checkpoint>,
    pub(crate) windows: Vec<u8>,
    pub(crate) uout: u64,
    tar: TarTrack,
    limit: u64,
    block: u64,
    block_hasher: Sha256,
    /// Bytes in the running block.
    block_fill: u64,
    /// Compressed input consumed when the running block last received output.
    block_cend: u64,
    blocks: Vec<Block>,
    block_starts: Vec<usize>,
    /// Compressed offsets are uncompressed offsets (plain tar): a block's bound is its end.
    exact: bool,
}

impl SpanHasher {
    pub(crate) fn new(limit: u64) -> Self {
        SpanHasher {
            checkpoints: Vec::new(),
            windows: Vec::new(),
            uout: 0,
            tar: TarTrack::default(),
            limit,
            block: BLOCK,
            block_hasher: Sha256::new(),
            block_fill: 0,
            block_cend: 0,
            blocks: Vec::new(),
            block_starts: Vec::new(),
            exact: false,
        }
    }

    /// A hasher for a stream whose compressed offsets are its uncompressed ones (plain tar):
    /// each block's bound is its own end.
    pub(crate) fn new_exact(limit: u64) -> Self {
        SpanHasher {
            exact: true,
            ..SpanHasher::new(limit)
        }
    }

    /// Account for produced output; errors when the total passes the limit (gzip bomb guard).
    /// `cin` is the compressed input consumed once `data` was produced (the block bound).
    pub(crate) fn output(&mut self, data: &[u8], cin: u64) -> Result<()> {
        self.uout += data.len() as u64;
        if self.uout > self.limit {
            return Err(Error::OutputLimit { limit: self.limit });
        }
        self.tar.feed(self.uout - data.len() as u64, data);
        let mut rest = data;
        let mut pos = self.uout - data.len() as u64;
        while !rest.is_empty() {
            let take = ((self.block - self.block_fill) as usize).min(rest.len());
            let (now, tail) = rest.split_at(take);
            self.block_hasher.update(now);
            self.block_fill += take as u64;
            pos += take as u64;
            self.block_cend = if self.exact { pos } else { cin };
            if self.block_fill == self.block {
                self.close_block();
            }
            rest = tail;
        }
        Ok(())
    }

    /// Use `block`-byte verification blocks (before any output; tests use small ones).
    #[cfg(test)]
    pub(crate) fn set_block(&mut self, block: u64) {
        self.block = block.max(1);
    }

    fn close_block(&mut self) {
        if self.block_fill > 0 {
            let h = std::mem::take(&mut self.block_hasher);
            self.blocks.push(Block {
                digest: h.finalize().into(),
                cend: self.block_cend,
            });
            self.block_fill = 0;
        }
    }

    /// Uncompressed bytes since the last checkpoint (`u64::MAX` before the first).
    pub(crate) fn since_last(&self) -> u64 {
        match self.checkpoints.last() {
            Some(c) => self.uout - c.uout,
            None => u64::MAX,
        }
    }

    /// How far apart checkpoints should be at the current output offset for a nominal
    /// `span`: [`DENSE_SPAN`] (or a quarter of `span`, if more) while the output is inside a
    /// tar entry smaller than `span`, or within that distance of the next entry's header, so
    /// that a cold read of a small file decodes little before it; `span` inside large files
    /// (each checkpoint costs a stored window of ~13 KiB and a record in the index's head)
    /// and when the output does not look like a tar stream.
    pub(crate) fn spacing(&self, span: u64) -> u64 {
        let dense = (span / 4).max(DENSE_SPAN).min(span);
        match self.tar.entry(self.uout) {
            Some((size, next)) if size < span || next.saturating_sub(self.uout) < dense => dense,
            _ => span,
        }
    }

    /// Close the running span and open one at the current output offset.
    pub(crate) fn checkpoint(&mut self, cin: u64, bits: u8, member_start: bool, window: &[u8]) {
        self.close_block();
        self.block_starts.push(self.blocks.len());
        let start = self.windows.len() as u64;
        self.windows.extend_from_slice(window);
        self.checkpoints.push(Checkpoint {
            uout: self.uout,
            cin,
            bits,
            member_start,
            window: start..self.windows.len() as u64,
        });
    }

    /// Store checkpoint `at`'s window, decided after the checkpoint (`trim.rs`).
    pub(crate) fn set_window(&mut self, at: usize, window: &[u8]) {
        let start = self.windows.len() as u64;
        self.windows.extend_from_slice(window);
        if let Some(c) = self.checkpoints.get_mut(at) {
            c.window = start..self.windows.len() as u64;
        }
    }

    pub(crate) fn finish(
        mut self,
        compression: Compression,
        span: u64,
        compressed_size: u64,
        whole: bool,
    ) -> SeekTable {
        if self.checkpoints.is_empty() {
            self.checkpoint(0, 0, compression == Compression::Gzip, &[]);
        }
        self.close_block();
        self.block_starts.push(self.blocks.len());
        SeekTable {
            compression,
            span,
            uncompressed_size: self.uout,
            compressed_size,
            whole,
            checkpoints: self.checkpoints,
            digests: Vec::new(),
            block: self.block,
            blocks: self.blocks,
            lazy: None,
            block_starts: self.block_starts,
            window_bytes: self.windows.len() as u64,
            windows: self.windows,
            window_digests: Vec::new(),
            check: super::seek::SpanCheck::Blocks,
        }
    }
}

/// Follows the tar headers in a stream of uncompressed output: where the entry holding an
/// offset ends and how large it is. Gives up (answers `None` from then on) at the end of the
/// archive or at anything that is not a ustar/GNU header with a valid checksum, so a stream
/// that is not a tar (or a size overridden by a pax record) only loses the dense spacing.
#[derive(Default)]
struct TarTrack {
    /// Offset of the next header (the end of the current entry's padded data).
    next: u64,
    /// Data size of the entry whose data (or header) precedes `next`.
    size: u64,
    /// Bytes of the header being collected.
    head: Vec<u8>,
    lost: bool,
}

impl TarTrack {
    /// Account for `data` produced at uncompressed offset `at`.
    fn feed(&mut self, mut at: u64, mut data: &[u8]) {
        while !self.lost && !data.is_empty() {
            if at + (data.len() as u64) <= self.next {
                return;
            }
            if at < self.next {
                let skip = (self.next - at) as usize;
                data = &data[skip..];
                at = self.next;
            }
            let take = (512 - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..take]);
            data = &data[take..];
            at += take as u64;
            if self.head.len() == 512 {
                match header_size(&self.head) {
                    Some(size) => {
                        self.size = size;
                        self.next = at.saturating_add(size.div_ceil(512).saturating_mul(512));
                    }
                    None => self.lost = true,
                }
                self.head.clear();
            }
        }
    }

    /// (size, end) of the entry holding offset `at`, while the stream is followed.
    fn entry(&self, at: u64) -> Option<(u64, u64)> {
        (!self.lost && at <= self.next).then_some((self.size, self.next))
    }
}

/// The data size a tar header announces; `None` for an all-zero block (the end of the
/// archive) or anything that is not a ustar/GNU header with a valid checksum (the fields read
/// as `tar.rs` reads them).
fn header_size(h: &[u8]) -> Option<u64> {
    let block: &[u8; 512] = h.try_into().ok()?;
    if block.iter().all(|&b| b == 0) || &block[257..262] != b"ustar" {
        return None;
    }
    super::tar::check_checksum(block, 0).ok()?;
    u64::try_from(super::tar::numeric(&block[124..136], 0, "size").ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::super::gzip::build_seek_table;
    use super::*;
    use std::io::Write;

    /// `len` bytes over a 16-letter alphabet: literals mostly, so zlib ends a deflate block
    /// every ~16 KiB of output (as in real layers; pseudo-text's long matches make blocks of
    /// ~0.5 MiB, too far apart to place checkpoints at will).
    fn letters(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b'a' + (x % 16) as u8
            })
            .collect()
    }

    /// A tar of `files` (name, size) with [`letters`] contents, gzip-compressed.
    fn tar_gz(files: &[(String, usize)]) -> (Vec<u8>, Vec<(u64, u64)>) {
        let mut b = tar::Builder::new(Vec::new());
        for (i, (name, size)) in files.iter().enumerate() {
            let mut h = tar::Header::new_ustar();
            h.set_size(*size as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, &letters(*size, i as u64)[..])
                .unwrap();
        }
        let tar = b.into_inner().unwrap();
        // Where each file's data lies in the tar.
        let mut at = Vec::new();
        let mut a = tar::Archive::new(&tar[..]);
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            at.push((e.raw_file_position(), e.size()));
        }
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        z.write_all(&tar).unwrap();
        (z.finish().unwrap(), at)
    }

    #[test]
    fn checkpoints_are_closer_among_small_files_than_inside_large_ones() {
        const SPAN: u64 = 256 << 10;
        let mut files = vec![("big".to_string(), 4 << 20)];
        files.extend((0..300).map(|i| (format!("small{i}"), 9_000 + i * 37)));
        files.push(("big2".to_string(), 3 << 20));
        let (blob, at) = tar_gz(&files);
        let t = build_seek_table(&blob[..], SPAN, u64::MAX).unwrap();
        let starts: Vec<u64> = t.checkpoints.iter().map(|c| c.uout).collect();
        let gaps_within = |r: std::ops::Range<u64>| -> Vec<u64> {
            starts
                .windows(2)
                .filter(|w| w[0] >= r.start && w[1] <= r.end)
                .map(|w| w[1] - w[0])
                .collect()
        };
        // Inside the large files (away from their ends): the nominal span.
        let (big, big2) = (at[0], at[at.len() - 1]);
        for (off, size) in [big, big2] {
            let g = gaps_within(off..off + size - SPAN);
            assert!(
                !g.is_empty(),
                "no checkpoint inside a large file: {starts:?}"
            );
            assert!(g.iter().all(|&g| g >= SPAN), "{g:?}");
        }
        // Among the small files: about DENSE_SPAN apart, well under the span.
        let small = at[1].0..at[at.len() - 2].0 + at[at.len() - 2].1;
        let g = gaps_within(small.clone());
        assert!(g.len() >= 20, "{} checkpoints among small files", g.len());
        assert!(g.iter().all(|g| (DENSE_SPAN..SPAN).contains(g)), "{g:?}");
        // Every byte is still covered by blocks and decodes right.
        let whole = t.span_range(0).start..t.uncompressed_size;
        let plan = t.span_plan(whole).unwrap();
        assert_eq!(plan.spans, 0..t.checkpoints.len());
    }

    #[test]
    fn a_stream_that_is_not_a_tar_keeps_the_nominal_span() {
        let data = letters(3 << 20, 9);
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        z.write_all(&data).unwrap();
        let blob = z.finish().unwrap();
        let t = build_seek_table(&blob[..], 256 << 10, u64::MAX).unwrap();
        let c = &t.checkpoints;
        assert!(c.len() >= 4, "{}", c.len());
        // The first checkpoint is at 0 (no header seen yet counts as dense only up to the
        // first 512 bytes, which are not a header): every later gap is the span or more.
        assert!(c.windows(2).all(|w| w[1].uout - w[0].uout >= 256 << 10));
    }

    #[test]
    fn tar_headers_are_followed_and_bad_ones_end_the_following() {
        let mut h = tar::Header::new_ustar();
        h.set_size(1000);
        h.set_cksum();
        assert_eq!(header_size(h.as_bytes()), Some(1000));
        // A checksum that does not match: not followed.
        let mut b = h.as_bytes().to_vec();
        b[0] ^= 1;
        assert_eq!(header_size(&b), None);
        // GNU base-256 size.
        let mut g = tar::Header::new_gnu();
        g.set_size(1 << 34);
        g.set_cksum();
        assert_eq!(header_size(g.as_bytes()), Some(1 << 34));
        assert_eq!(header_size(&[0; 512]), None);
        // The tracker: header, 1000 bytes of data padded to 1024, then garbage.
        let mut s = h.as_bytes().to_vec();
        s.extend(vec![7u8; 1024]);
        s.extend(vec![9u8; 512]);
        let mut t = TarTrack::default();
        for (i, piece) in s.chunks(100).enumerate() {
            t.feed(i as u64 * 100, piece);
        }
        assert!(t.lost);
        let mut t = TarTrack::default();
        t.feed(0, &s[..600]);
        assert_eq!(t.entry(600), Some((1000, 1536)));
        assert_eq!(t.entry(1537), None);
    }
}
