//! How the union gets the bytes of lower files: the [`LowerSource`] trait, the cheap
//! [`LowerFile`] identity it is asked about (with a slot where a source keeps the file's
//! extent once it has resolved it), and [`TarBytesLower`], an uncompressed tar held in memory
//! (tests and benches; an optional per-read delay stands in for a slow registry).
//!
//! A source serves one layer; the union keeps one source per layer index. It uses `layer` (to
//! read the test tar). Implementations: `dirlower.rs` (a plain directory), and for lazily
//! fetched image layers `mount/lower.rs` (above the union; this file must not know about it).

use super::{Error, Result};
use crate::layer::{Compression, Entry};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

#[derive(Debug)]
struct FileId {
    layer: usize,
    path: String,
    size: u64,
    offset: u64,
    /// The content's extent in its source's own coordinates, once the source resolved it.
    extent: OnceLock<Range<u64>>,
}

impl FileId {
    fn key(&self) -> (usize, &str, u64, u64) {
        (self.layer, &self.path, self.size, self.offset)
    }
}

impl PartialEq for FileId {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for FileId {}

impl std::hash::Hash for FileId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state)
    }
}

/// One lower file's content: layer index (bottom = 0), path in that layer, size, and where the
/// content starts in the layer's uncompressed stream. Cheap to clone; equality and hashing
/// look at those four only. The union makes one per open file.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LowerFile(Arc<FileId>);

impl LowerFile {
    pub fn new(layer: usize, path: impl Into<String>, size: u64, offset: u64) -> Self {
        LowerFile(Arc::new(FileId {
            layer,
            path: path.into(),
            size,
            offset,
            extent: OnceLock::new(),
        }))
    }
    /// Index of the layer (0 = bottom) this content belongs to.
    pub fn layer(&self) -> usize {
        self.0.layer
    }
    /// Path of the file in its layer (for a hard link group, the first path seen).
    pub fn path(&self) -> &str {
        &self.0.path
    }
    pub fn size(&self) -> u64 {
        self.0.size
    }
    /// Content offset in the layer's uncompressed tar stream (0 for directory lowers).
    pub fn offset(&self) -> u64 {
        self.0.offset
    }
    /// `[offset, offset+len)` clamped to the file size, as (start, len).
    pub fn clamp(&self, offset: u64, len: u32) -> (u64, usize) {
        let start = offset.min(self.size());
        let end = offset.saturating_add(u64::from(len)).min(self.size());
        (start, (end - start) as usize)
    }
    /// The content's extent in the source's own coordinates (e.g. the chunk cache's virtual
    /// offsets): `resolve`d the first time a source asks and kept with this `LowerFile`, so
    /// a source's per-read work does not depend on a lookup by path. (A `LowerFile` belongs to
    /// one layer, hence to one source.) A failed resolution is not kept.
    pub fn extent(
        &self,
        resolve: impl FnOnce(&LowerFile) -> std::io::Result<Range<u64>>,
    ) -> std::io::Result<Range<u64>> {
        if let Some(e) = self.0.extent.get() {
            return Ok(e.clone());
        }
        let e = resolve(self)?;
        Ok(self.0.extent.get_or_init(|| e).clone())
    }
}

/// A read started with [`LowerSource::start_read`].
pub enum LowerRead {
    /// Answered without waiting (the bytes were local), or failed at once.
    Ready(std::io::Result<Bytes>),
    /// Must wait (a fetch): the future answers.
    Pending(BoxFuture<'static, std::io::Result<Bytes>>),
}

/// Where lower file bytes come from. Reads past the end return fewer bytes (none at EOF).
pub trait LowerSource: Send + Sync {
    /// Read `len` bytes at `offset`: answered at once when the bytes are local (or the read
    /// failed at once), else a future that may wait on the network. The union reads through
    /// this only; a source with costly local lookups (the chunk cache) looks once per read.
    fn start_read(&self, file: &LowerFile, offset: u64, len: u32) -> LowerRead;

    /// A local file holding the full content, read-only, if one exists (for passthrough).
    fn local_path(&self, file: &LowerFile) -> Option<PathBuf>;
}

/// An uncompressed tar layer held in memory.
pub struct TarBytesLower {
    bytes: Bytes,
    entries: Vec<Entry>,
    delay: Option<Duration>,
}

impl TarBytesLower {
    /// Index `bytes` (an uncompressed tar) with the layer tar reader.
    pub fn new(bytes: impl Into<Bytes>) -> Result<Self> {
        let bytes: Bytes = bytes.into();
        let (entries, _table) = crate::layer::scan(
            std::io::Cursor::new(bytes.clone()),
            Compression::Tar,
            &crate::layer::BuildOptions::default(),
        )?;
        Ok(TarBytesLower {
            bytes,
            entries,
            delay: None,
        })
    }

    /// Make every read wait `delay` (on the tokio timer) before answering: every read
    /// then looks like a miss.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// The layer's normalised entries.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    fn slice(&self, file: &LowerFile, offset: u64, len: u32) -> std::io::Result<Bytes> {
        let (start, n) = file.clamp(offset, len);
        let a = file.offset().saturating_add(start) as usize;
        let b = a.saturating_add(n);
        if b > self.bytes.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{}: content beyond the end of the layer", file.path()),
            ));
        }
        Ok(self.bytes.slice(a..b))
    }
}

impl LowerSource for TarBytesLower {
    fn start_read(&self, file: &LowerFile, offset: u64, len: u32) -> LowerRead {
        let out = self.slice(file, offset, len);
        match self.delay {
            None => LowerRead::Ready(out),
            Some(d) => LowerRead::Pending(
                async move {
                    tokio::time::sleep(d).await;
                    out
                }
                .boxed(),
            ),
        }
    }

    fn local_path(&self, _file: &LowerFile) -> Option<PathBuf> {
        None
    }
}

/// Read a lower file range, blocking the calling thread if the source must wait. Used by
/// copy-up, which runs off the FUSE dispatch threads.
pub(crate) fn read_blocking(
    source: &dyn LowerSource,
    rt: Option<&tokio::runtime::Handle>,
    file: &LowerFile,
    offset: u64,
    len: u32,
) -> Result<Bytes> {
    let wrap = |source| Error::Lower {
        layer: file.layer(),
        path: file.path().to_string(),
        source,
    };
    let fut = match source.start_read(file, offset, len) {
        LowerRead::Ready(r) => return r.map_err(wrap),
        LowerRead::Pending(fut) => fut,
    };
    let r = match rt {
        // Inside a multi-thread runtime worker (a caller in async code), let the runtime
        // move its other tasks away first; elsewhere (FUSE dispatch or blocking-pool
        // threads) wait directly.
        Some(h) => match tokio::runtime::Handle::try_current() {
            Ok(cur) if cur.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| h.block_on(fut))
            }
            _ => h.block_on(fut),
        },
        None => futures::executor::block_on(fut),
    };
    r.map_err(wrap)
}
