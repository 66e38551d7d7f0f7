//! Layer indexes: tar / gzip-seek / eStargz / zstd / zstd:chunked -> per-layer entry index.
//!
//! This module turns one OCI layer blob into a [`LayerIndex`]: an mmap-ed table of typed
//! entries (whiteouts and opaque directories normalised here) plus what is needed to produce
//! *verified* bytes of any file range from ranged reads of the compressed blob (a seek table
//! with per-span and per-64 KiB-block sha256, the per-chunk digests of an eStargz or
//! zstd:chunked TOC, or a SOCI zTOC's per-span digests of the compressed bytes). It may call
//! `digest` only; it knows nothing of HTTP, the store layout, the cache or FUSE. Fetching is
//! the caller's: either pass a blocking `fetch` closure ([`LayerIndex::read`]) or, from async
//! code, call the pure [`LayerIndex::plan_read`], fetch [`ReadPlan::compressed`] however you
//! like, then [`LayerIndex::decode_read`]. Format details and the SPAN trade-off:
//! `docs/layer-index.md`.
//!
//! Inside, each file uses only those before it: `error`; `entry` (typed entries, ingest rules,
//! `RawEntry`) and `tar` (the streaming reader); `seek` (the seek table), `spans` (building
//! one), `codec` (the codec traits and the one `Read` adapter); the codecs `plain`, `gzip`,
//! `zstd`; `dispatch` (compression kind -> codec, the table's decode methods); `index` (the
//! index file) and `estargz`, then `zchunked` (which reuses `estargz`'s TOC-to-index core)
//! and `soci` (SOCI zTOCs, read through the bounds-checked FlatBuffers reader `flatbuf`); this
//! file (scan, read plans).

mod codec;
mod dispatch;
mod entry;
mod error;
pub mod estargz;
mod flatbuf;
pub mod groups;
pub mod gzip;
pub(crate) mod index;
mod plain;
mod seek;
pub mod soci;
mod spans;
mod tar;
mod trim;
pub mod zchunked;
pub mod zstd;

pub use entry::{normalize_path, split_path, Entry, EntryKind, EntryTable, RawEntry, Timestamp};
pub use error::{Error, Result};
pub use index::{head_len, Chunk, EntryRef, LayerIndex, LayerMeta};
pub use seek::{
    Block, Checkpoint, Compression, SeekTable, SpanCheck, SpanPlan, Window, BLOCK, DEFAULT_SPAN,
};
pub use tar::{TarReader, MAX_META};

use codec::{IndexReader, Indexer};
use std::io::Read;
use std::ops::Range;
use std::path::Path;

pub const MEDIA_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MEDIA_DOCKER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Compression of a layer media type; unknown types are an error naming the type.
pub fn compression_for_media_type(media_type: &str) -> Result<Compression> {
    match media_type {
        MEDIA_TAR => Ok(Compression::Tar),
        MEDIA_TAR_GZIP | MEDIA_DOCKER_GZIP => Ok(Compression::Gzip),
        MEDIA_TAR_ZSTD => Ok(Compression::Zstd),
        other => Err(Error::MediaType(other.to_string())),
    }
}

/// Knobs for [`build_index_with`].
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Uncompressed bytes between checkpoints (and per span digest).
    pub span: u64,
    /// Refuse layers that decompress to more than this (gzip/zstd bomb guard).
    pub max_uncompressed: u64,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            span: DEFAULT_SPAN,
            max_uncompressed: 64 << 30,
        }
    }
}

/// Build the index of a whole layer stream (source "none": the blob is read once, decompressed
/// while streaming) and write it atomically to `out`. Uses [`BuildOptions::default`].
pub fn build_index(reader: impl Read, media_type: &str, out: &Path) -> Result<LayerIndex> {
    build_index_with(reader, media_type, out, &BuildOptions::default())
}

/// [`build_index`] with explicit options.
pub fn build_index_with(
    reader: impl Read,
    media_type: &str,
    out: &Path,
    opts: &BuildOptions,
) -> Result<LayerIndex> {
    let compression = compression_for_media_type(media_type)?;
    let (entries, table) = scan(reader, compression, opts)?;
    let meta = LayerMeta {
        compression,
        estargz: false,
        whole: table.whole,
        uncompressed_size: table.uncompressed_size,
        compressed_size: table.compressed_size,
    };
    let bytes = index::encode(&meta, &entries, Some(&table), &[])?;
    index::write_atomic(out, &bytes)?;
    LayerIndex::open(out)
}

/// Read a layer stream once: entries (normalised, sorted) and the seek table.
pub fn scan(
    reader: impl Read,
    compression: Compression,
    opts: &BuildOptions,
) -> Result<(Vec<Entry>, SeekTable)> {
    let (span, limit) = (opts.span, opts.max_uncompressed);
    match compression {
        Compression::Tar => scan_with(plain::TarSpans::new(reader, span, limit)),
        Compression::Gzip => scan_with(gzip::GzipIndexer::new(reader, span, limit)?),
        Compression::Zstd => scan_with(zstd::ZstdIndexer::new(reader, span, limit)?),
    }
}

/// Parse the tar that `indexer` decompresses while it builds the seek table, then read the
/// rest of the stream (end-of-archive padding) so the table covers all of it.
fn scan_with(indexer: impl Indexer) -> Result<(Vec<Entry>, SeekTable)> {
    let mut r = TarReader::new(IndexReader::new(indexer));
    let entries = read_entries(&mut r)?;
    let mut inner = r.into_inner();
    codec::drain(&mut inner)?;
    Ok((entries, inner.finish()?))
}

fn read_entries<R: Read>(r: &mut TarReader<R>) -> Result<Vec<Entry>> {
    let mut table = EntryTable::new();
    loop {
        match r.next_entry() {
            Ok(Some(raw)) => table.push_raw(raw)?,
            Ok(None) => break,
            Err(e) => return Err(lift(e)),
        }
    }
    Ok(table.finish())
}

/// A layer error that travelled through `std::io::Error` inside [`Error::Read`] comes out as
/// itself (so a gzip bomb is `OutputLimit`, not "read error").
fn lift(e: Error) -> Error {
    match e {
        Error::Read { offset, source } => error::unwrap_io(source, offset),
        e => e,
    }
}

/// What to fetch for a file range, and how to decode it; see [`LayerIndex::plan_read`].
#[derive(Clone, Debug)]
pub struct ReadPlan {
    /// Compressed blob bytes to fetch.
    pub compressed: Range<u64>,
    /// The requested bytes within the decoded output.
    want: Range<u64>,
    /// The file being read (for error messages).
    path: String,
    source: PlanSource,
}

#[derive(Clone, Debug)]
enum PlanSource {
    Empty,
    Spans(SpanPlan),
    Chunks { path: String, chunks: Range<usize> },
}

impl LayerIndex {
    /// Resolve a hard link to the file it names (within this layer).
    fn content_entry<'a>(&'a self, entry: &EntryRef<'a>) -> Result<EntryRef<'a>> {
        match entry.kind() {
            EntryKind::File => Ok(*entry),
            EntryKind::Hardlink => match self.lookup(entry.link()) {
                Some(t) if t.kind() == EntryKind::File => Ok(t),
                _ => Err(Error::NotReadable {
                    path: entry.path(),
                    reason: "hard link target is not a file in this layer",
                }),
            },
            _ => Err(Error::NotReadable {
                path: entry.path(),
                reason: "not a regular file",
            }),
        }
    }

    /// Pure planning for reading `range` of a file's content (clamped to the file size): which
    /// compressed bytes to fetch. No I/O; suitable for an async cache.
    pub fn plan_read(&self, entry: &EntryRef<'_>, range: Range<u64>) -> Result<ReadPlan> {
        let f = self.content_entry(entry)?;
        let size = f.size();
        let range = range.start.min(size)..range.end.min(size).max(range.start.min(size));
        if range.is_empty() {
            return Ok(ReadPlan {
                compressed: 0..0,
                want: 0..0,
                path: f.path(),
                source: PlanSource::Empty,
            });
        }
        if self.meta().estargz {
            let all = self.chunks_of(f.index());
            let chunks: Vec<(usize, Chunk)> = all.map(|i| (i, self.chunk_at(i))).collect();
            let first = chunks
                .iter()
                .position(|(_, c)| c.file_offset.saturating_add(c.size) > range.start);
            let last = chunks.iter().rposition(|(_, c)| c.file_offset < range.end);
            let (Some(a), Some(b)) = (first, last) else {
                return Err(Error::NotReadable {
                    path: f.path(),
                    reason: "no eStargz chunk covers the range",
                });
            };
            let (ca, cb) = (&chunks[a].1, &chunks[b].1);
            // A hostile index may leave a gap before the first chunk or order members
            // backwards; refuse instead of computing a negative range.
            if a > b || ca.file_offset > range.start || ca.compressed.start > cb.compressed.end {
                return Err(Error::NotReadable {
                    path: f.path(),
                    reason: "eStargz chunks do not cover the range in order",
                });
            }
            return Ok(ReadPlan {
                compressed: ca.compressed.start..cb.compressed.end,
                want: range.start - ca.file_offset..range.end - ca.file_offset,
                path: f.path(),
                source: PlanSource::Chunks {
                    path: f.path(),
                    chunks: chunks[a].0..chunks[b].0 + 1,
                },
            });
        }
        let table = self.seek_table().ok_or_else(|| Error::NotReadable {
            path: f.path(),
            reason: "index has no seek table",
        })?;
        let abs = f.offset() + range.start..f.offset() + range.end;
        let plan = table.span_plan(abs.clone())?;
        Ok(ReadPlan {
            compressed: plan.compressed.clone(),
            want: abs.start - plan.uncompressed.start..abs.end - plan.uncompressed.start,
            path: f.path(),
            source: PlanSource::Spans(plan),
        })
    }

    /// Decode and verify the bytes fetched for `plan` (exactly `plan.compressed`); returns the
    /// requested file bytes, never unverified ones.
    pub fn decode_read(&self, plan: &ReadPlan, compressed: &[u8]) -> Result<Vec<u8>> {
        let mut out = match &plan.source {
            PlanSource::Empty => return Ok(Vec::new()),
            PlanSource::Spans(p) => self
                .seek_table()
                .ok_or_else(|| Error::NotReadable {
                    path: plan.path.clone(),
                    reason: "index has no seek table",
                })?
                .decode_spans(p, compressed)?,
            PlanSource::Chunks { path, chunks } => estargz::decode_chunks(
                self,
                path,
                chunks.clone(),
                plan.compressed.clone(),
                compressed,
            )?,
        };
        let (s, e) = (plan.want.start as usize, plan.want.end as usize);
        if e > out.len() || s > e {
            return Err(Error::NotReadable {
                path: plan.path.clone(),
                reason: "decoded data shorter than planned",
            });
        }
        out.truncate(e);
        out.drain(..s);
        Ok(out)
    }

    /// Blocking convenience: plan, call `fetch(compressed range)`, decode, verify.
    pub fn read(
        &self,
        entry: &EntryRef<'_>,
        range: Range<u64>,
        mut fetch: impl FnMut(Range<u64>) -> std::io::Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let plan = self.plan_read(entry, range)?;
        if matches!(plan.source, PlanSource::Empty) {
            return Ok(Vec::new());
        }
        let bytes = fetch(plan.compressed.clone()).map_err(|source| Error::Fetch {
            range: plan.compressed.clone(),
            source,
        })?;
        self.decode_read(&plan, &bytes)
    }
}

#[cfg(test)]
mod tests;
