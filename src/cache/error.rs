//! The chunk cache's error type, and which errno each failure should give a reader.
//!
//! Every failing step keeps its cause as a `#[source]` (the registry's or the local blob's
//! error, the layer decoder's digest mismatch, the cache directory's I/O error). Errors are
//! `Clone` because a fetch's result is shared by every reader waiting on it: causes that are
//! not `Clone` sit behind an `Arc`, nested causes in a `Box` (the error stays small). Calls nothing outside `cache/` but `registry::Error` (to
//! tell a timed-out request) and `layer::Error` (as a cause).

use super::layout::LayoutError;
use super::source::FetchError;
use super::windows::WindowError;
use crate::digest::Digest;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Why the cache could not return the bytes asked for.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The layer's index cannot serve the request (a range outside the layer, an index
    /// without spans, a file that is not in it): the index is malformed or does not belong.
    #[error("layer {layer}: index")]
    Index {
        layer: Digest,
        #[source]
        source: Box<LayoutError>,
    },
    /// `path` is not a file of the layer's index.
    #[error("layer {layer}: {path} is not in the index")]
    NotInIndex { layer: Digest, path: String },
    /// Every attempt to get compressed bytes from the layer's source failed.
    #[error("layer {layer}: fetching compressed bytes {range:?}")]
    Fetch {
        layer: Digest,
        range: Range<u64>,
        #[source]
        source: Box<FetchError>,
    },
    /// The stored gzip window decoding span `span` could not be had.
    #[error("layer {layer}: span {span}: gzip window of its checkpoint")]
    Window {
        layer: Digest,
        span: usize,
        #[source]
        source: Box<WindowError>,
    },
    /// The block records checking span `span` (an index holding only its head, format 5)
    /// could not be had.
    #[error("layer {layer}: span {span}: block records of its blocks")]
    Groups {
        layer: Digest,
        span: usize,
        #[source]
        source: Box<WindowError>,
    },
    /// The index holds only its head and nothing says where its block records are.
    #[error(
        "layer {layer}: span {span}: the index holds no block records and names no source for them"
    )]
    NoGroupSource { layer: Digest, span: usize },
    /// The index holds only its head and nothing says where its gzip windows are.
    #[error(
        "layer {layer}: span {span}: the index holds no gzip windows and names no source for them"
    )]
    NoWindowSource { layer: Digest, span: usize },
    /// Fetched bytes did not decode into the spans the index describes, or failed their
    /// sha256 (the cause names the span or block and both digests).
    #[error("layer {layer}: spans {spans:?} (compressed bytes {range:?}) failed verification")]
    Verify {
        layer: Digest,
        spans: Range<usize>,
        range: Range<u64>,
        #[source]
        source: Box<LayoutError>,
    },
    /// A decoded run was shorter than the index says its span is.
    #[error("layer {layer}: span {span}: decoded data too short ({got} of {want} bytes)")]
    Short {
        layer: Digest,
        span: usize,
        got: usize,
        want: usize,
    },
    /// No verified bytes within the fetch deadline, all retries included.
    #[error("layer {layer}: no verified bytes of compressed {range:?} within the fetch timeout ({after:?})")]
    Timeout {
        layer: Digest,
        range: Range<u64>,
        after: Duration,
    },
    /// The cache directory could not be opened or written.
    #[error("cache {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A fetch or decode task panicked or was cancelled (the runtime shut down).
    #[error("layer {layer}: {what} task failed")]
    Task {
        layer: Digest,
        what: &'static str,
        #[source]
        source: Arc<tokio::task::JoinError>,
    },
    /// The layer, fetched whole, did not match the digest in the image manifest (or its spans
    /// did not match the decompressed layer): none of its bytes is served any more.
    #[error("layer {layer}: fetched whole, it does not match its digest: {problem}; its spans were dropped (mirrors dropped: {mirrors:?})")]
    LayerDigest {
        layer: Digest,
        problem: String,
        mirrors: Vec<String>,
    },
    /// An earlier whole-layer check of this layer failed (here or in another process).
    #[error("layer {layer}: refused: its bytes failed the whole-layer digest check")]
    Poisoned { layer: Digest },
    /// The fetch permits were closed (the cache is being torn down).
    #[error("layer {layer}: the cache is closed")]
    Closed { layer: Digest },
}

impl Error {
    /// The errno a reader of these bytes should get: `ETIMEDOUT` when the fetch deadline or a
    /// request timed out, a local disk error's own errno (`ENOSPC`, ...), `EIO` for everything
    /// else (a registry that failed, a digest mismatch, a malformed index).
    pub fn errno(&self) -> i32 {
        match self {
            Error::Timeout { .. } => libc::ETIMEDOUT,
            Error::Fetch { source, .. } => source.errno(),
            Error::Window { source, .. } | Error::Groups { source, .. } => source.errno(),
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            _ => libc::EIO,
        }
    }

    /// The message with every cause, `: `-separated (for logs).
    pub fn report(&self) -> String {
        crate::report::chain(self)
    }
}
