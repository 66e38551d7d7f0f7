//! The one error type of the `layer` module.
//!
//! Every variant names what it was looking at: the entry path, the byte offset in the
//! uncompressed tar stream or in the compressed blob, the span or chunk, the index file. Nothing
//! in `layer/` panics on hostile input; it returns one of these.

use crate::digest::Digest;
use std::ops::Range;
use std::path::PathBuf;

/// `Result` with the layer [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a layer could not be indexed or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("reading layer stream near uncompressed offset {offset}")]
    Read {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("tar header at offset {offset}: {reason}")]
    Header { offset: u64, reason: String },
    #[error("tar entry {path:?} (header at offset {offset}): {reason}")]
    BadPath {
        path: String,
        offset: u64,
        reason: &'static str,
    },
    #[error("sparse files unsupported: {path} (header at offset {offset})")]
    Sparse { path: String, offset: u64 },
    #[error("{kind} header at offset {offset} claims {size} bytes, over the {limit}-byte limit")]
    MetaTooLarge {
        kind: &'static str,
        offset: u64,
        size: u64,
        limit: u64,
    },
    #[error("malformed PAX header at offset {offset}: {reason}")]
    Pax { offset: u64, reason: String },
    #[error(
        "tar stream truncated: entry {path:?} at offset {offset} claims {size} bytes, \
         but the stream ends at offset {end}"
    )]
    Truncated {
        path: String,
        offset: u64,
        size: u64,
        end: u64,
    },
    #[error("unsupported layer media type {0:?}")]
    MediaType(String),
    #[error("gzip stream at compressed offset {offset}: {reason}")]
    Gzip { offset: u64, reason: String },
    #[error("zstd stream at compressed offset {offset}: {reason}")]
    Zstd { offset: u64, reason: String },
    #[error("decompressed output exceeds the limit of {limit} bytes")]
    OutputLimit { limit: u64 },
    #[error(
        "span {span} (uncompressed bytes {range:?}) failed verification: \
         expected {expected}, got {got}"
    )]
    SpanDigest {
        span: usize,
        range: Range<u64>,
        expected: Digest,
        got: Digest,
    },
    #[error(
        "span {span} (compressed bytes {range:?}) failed verification against the zTOC's \
         span digest: expected {expected}, got {got}"
    )]
    CompressedDigest {
        span: usize,
        range: Range<u64>,
        expected: Digest,
        got: Digest,
    },
    #[error("SOCI zTOC: {0}")]
    Ztoc(String),
    #[error("checkpoint {span}: stored window sha256 is {got}, the index says {expected}")]
    WindowDigest {
        span: usize,
        expected: Digest,
        got: Digest,
    },
    #[error("block records: {reason}")]
    Groups { reason: String },
    #[error("checkpoint {span}: its window is not local (fetch it from the sidecar first)")]
    WindowMissing { span: usize },
    #[error("span {span} (uncompressed bytes {range:?}) could not be decoded: {reason}")]
    SpanDecode {
        span: usize,
        range: Range<u64>,
        reason: String,
    },
    #[error("range {range:?} is outside the layer ({size} bytes uncompressed)")]
    OutOfRange { range: Range<u64>, size: u64 },
    #[error("fetching compressed bytes {range:?}")]
    Fetch {
        range: Range<u64>,
        #[source]
        source: std::io::Error,
    },
    #[error("compressed bytes for {range:?}: expected {expected} bytes, got {got}")]
    FetchLength {
        range: Range<u64>,
        expected: u64,
        got: u64,
    },
    #[error("index file {path}: {reason}")]
    CorruptIndex { path: PathBuf, reason: String },
    #[error(
        "index file {path}: format version {found}, this strata reads only version {supported}; \
         rebuild it (`strata index IMAGE`, or `--push` to republish a sidecar)"
    )]
    IndexVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("index file {path}")]
    IndexIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("index for entry {path:?}: {reason}")]
    IndexLimit { path: String, reason: &'static str },
    #[error("eStargz: {reason}")]
    Estargz { reason: String },
    #[error("eStargz TOC digest mismatch: annotation says {expected}, TOC hashes to {got}")]
    TocDigest { expected: Digest, got: Digest },
    #[error("zstd:chunked: {reason}")]
    ZstdChunked { reason: String },
    #[error(
        "zstd:chunked TOC checksum mismatch: the layer's manifest-checksum annotation says \
         {expected}, the TOC fetched hashes to {got}; refusing the layer"
    )]
    ZstdChunkedToc { expected: Digest, got: Digest },
    #[error(
        "chunk of {path:?} at file offset {offset}: digest mismatch \
         (expected {expected}, got {got})"
    )]
    ChunkDigest {
        path: String,
        offset: u64,
        expected: Digest,
        got: Digest,
    },
    #[error("entry {path:?} has no readable content ({reason})")]
    NotReadable { path: String, reason: &'static str },
}

/// Recover a layer [`Error`] that travelled through `std::io::Error` (an indexer's error read
/// through `codec::IndexReader`); any other I/O error becomes [`Error::Read`] at `offset`.
pub(crate) fn unwrap_io(e: std::io::Error, offset: u64) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        if let Some(inner) = e.into_inner() {
            if let Ok(err) = inner.downcast::<Error>() {
                return *err;
            }
        }
        return Error::Read {
            offset,
            source: std::io::Error::other("lost error"),
        };
    }
    Error::Read { offset, source: e }
}
