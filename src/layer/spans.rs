//! Building a seek table while a layer streams through: [`SpanHasher`] is fed the uncompressed
//! output in order (with the compressed offset reached) and told where the codec opens
//! checkpoints; it keeps the sha256 of every span and of every verification block, the stored
//! windows and their digests, and turns them into a [`SeekTable`] at the end. It also enforces
//! the bound on total output (the decompression-bomb guard). Codec-neutral: each codec's indexer
//! (`plain.rs`, `gzip.rs`, `zstd.rs`) decides where checkpoints go. Uses only `seek.rs` and the
//! layer error type.

use super::error::{Error, Result};
use super::seek::{Block, Checkpoint, Compression, SeekTable, BLOCK};
use sha2::{Digest as _, Sha256};

/// Incremental builder of span digests, fed the uncompressed stream in order.
pub(crate) struct SpanHasher {
    hasher: Sha256,
    pub(crate) checkpoints: Vec<Checkpoint>,
    pub(crate) digests: Vec<[u8; 32]>,
    pub(crate) windows: Vec<u8>,
    window_digests: Vec<[u8; 32]>,
    pub(crate) uout: u64,
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
            hasher: Sha256::new(),
            checkpoints: Vec::new(),
            digests: Vec::new(),
            windows: Vec::new(),
            window_digests: Vec::new(),
            uout: 0,
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
        self.hasher.update(data);
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

    /// Close the running span and open one at the current output offset.
    pub(crate) fn checkpoint(&mut self, cin: u64, bits: u8, member_start: bool, window: &[u8]) {
        if !self.checkpoints.is_empty() {
            let h = std::mem::take(&mut self.hasher);
            self.digests.push(h.finalize().into());
        }
        self.close_block();
        self.block_starts.push(self.blocks.len());
        let start = self.windows.len() as u64;
        self.windows.extend_from_slice(window);
        self.window_digests.push(Sha256::digest(window).into());
        self.checkpoints.push(Checkpoint {
            uout: self.uout,
            cin,
            bits,
            member_start,
            window: start..self.windows.len() as u64,
        });
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
        self.digests.push(self.hasher.finalize().into());
        SeekTable {
            compression,
            span,
            uncompressed_size: self.uout,
            compressed_size,
            whole,
            checkpoints: self.checkpoints,
            digests: self.digests,
            block: self.block,
            blocks: self.blocks,
            block_starts: self.block_starts,
            window_bytes: self.windows.len() as u64,
            windows: self.windows,
            window_digests: self.window_digests,
            check: super::seek::SpanCheck::Blocks,
        }
    }
}
