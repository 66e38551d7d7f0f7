//! Stored gzip windows of a layer whose index came from a sidecar as its head alone (index
//! format 3 and later), and in the same way its block record groups (format 5, keyed by group,
//! checked against the group sha256s of the head: [`RemoteWindows::groups`]): each checkpoint's window is fetched with one Range request on the
//! sidecar blob the first time a span decoded from that checkpoint is fetched (concurrently
//! with the span's compressed bytes), checked (its length; its sha256 when the head carries
//! one, which format 4 heads do not: the spans decoded with it are checked block by block
//! instead) and kept as one small file per checkpoint next to the index — not in memory: a
//! window serves the fetch of its checkpoint's spans, after which they are local (a daemon
//! serving many mounts kept every window it had fetched, ~13 KiB each). A window that fails
//! its check is an error and is neither kept nor cached, so the next attempt fetches it again;
//! one whose spans failed verification is forgotten ([`RemoteWindows::forget`]) and its
//! source distrusted, the same. A local copy is re-checked whenever it is read. Windows asked
//! within a millisecond of each other whose bytes lie close together in the sidecar share one
//! Range request ([`BATCH_DELAY`]). Calls the
//! sidecar's [`BlobSource`] and `flight.rs` (single-flight per checkpoint); the window file is
//! read and written by the flight's task, never under the table's lock.

use super::flight::SingleFlight;
use super::source::{BlobSource, FetchError};
use bytes::Bytes;
use futures::future::FutureExt;
use sha2::{Digest as _, Sha256};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Window fetches asked within this long of each other go out together: windows of nearby
/// checkpoints lie next to each other in the sidecar, and a cold start asks for several at
/// once (a package's modules), so close ones share one Range request.
const BATCH_DELAY: Duration = Duration::from_millis(1);
/// Windows at most this many bytes apart in the window section share a request (the bytes
/// between them, windows nobody asked for, come along)...
const BATCH_GAP: u64 = 16 << 10;
/// ... up to this many bytes per request.
const BATCH_MAX: u64 = 256 << 10;

/// A window asked for the next batch, and where its bytes go.
type Asked = (
    Range<u64>,
    tokio::sync::oneshot::Sender<Result<Bytes, FetchError>>,
);

/// Why a stored window could not be had. `Clone`: one fetch serves every waiter.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WindowError {
    #[error("fetching the {what} {checkpoint} (sidecar bytes {range:?})")]
    Fetch {
        what: &'static str,
        checkpoint: usize,
        range: Range<u64>,
        #[source]
        source: FetchError,
    },
    #[error("{what} {checkpoint} (sidecar bytes {range:?}) does not match its sha256")]
    Digest {
        what: &'static str,
        checkpoint: usize,
        range: Range<u64>,
    },
    #[error("{what} {checkpoint} (sidecar bytes {range:?}): no answer within {after:?}")]
    Timeout {
        what: &'static str,
        checkpoint: usize,
        range: Range<u64>,
        after: Duration,
    },
    #[error("{what} {checkpoint}: task failed")]
    Task {
        what: &'static str,
        checkpoint: usize,
        #[source]
        source: Arc<tokio::task::JoinError>,
    },
}

impl WindowError {
    /// The fetch's errno (`ETIMEDOUT`, ...), `EIO` for a mismatch.
    pub fn errno(&self) -> i32 {
        match self {
            WindowError::Fetch { source, .. } => source.errno(),
            WindowError::Timeout { .. } => libc::ETIMEDOUT,
            _ => libc::EIO,
        }
    }
}

/// Where a layer's windows come from; see the module docs.
pub struct RemoteWindows {
    /// What the pieces are, for messages: "window of checkpoint", "block record group".
    what: &'static str,
    /// The sidecar index blob (the whole index file).
    source: Arc<dyn BlobSource>,
    /// Offset of the section in the sidecar blob (after the head and, for the windows, the
    /// block records).
    base: u64,
    /// Local copies, `<dir>/<checkpoint>`.
    dir: PathBuf,
    inflight: SingleFlight<usize, Bytes, WindowError>,
    /// Windows waiting for the next batch, and whether one is due.
    batch: Mutex<(Vec<Asked>, bool)>,
    /// How long one piece's fetch may take (ms): the cache's fetch deadline, so that a
    /// stalled request does not outlive the reads that gave up on it (later reads would join
    /// it and time out in turn).
    deadline_ms: AtomicU64,
    /// Windows fetched from the registry, and their bytes.
    pub fetched: AtomicU64,
    pub fetched_bytes: AtomicU64,
}

impl RemoteWindows {
    pub fn new(source: Arc<dyn BlobSource>, base: u64, dir: PathBuf) -> Arc<RemoteWindows> {
        Self::of("window of checkpoint", source, base, dir)
    }

    /// The same for the block record groups of a format 5 head (`layer/groups.rs`): the
    /// section at `base` is the block section, a piece is a group (its digest in the head).
    pub fn groups(source: Arc<dyn BlobSource>, base: u64, dir: PathBuf) -> Arc<RemoteWindows> {
        Self::of("block record group", source, base, dir)
    }

    fn of(
        what: &'static str,
        source: Arc<dyn BlobSource>,
        base: u64,
        dir: PathBuf,
    ) -> Arc<RemoteWindows> {
        Arc::new(RemoteWindows {
            what,
            source,
            base,
            dir,
            inflight: SingleFlight::new(),
            batch: Mutex::new((Vec::new(), false)),
            deadline_ms: AtomicU64::new(super::DEFAULT_FETCH_TIMEOUT.as_millis() as u64),
            fetched: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
        })
    }

    /// Set how long one piece's fetch may take (the cache's `fetch-timeout`).
    pub fn set_deadline(&self, after: Duration) {
        self.deadline_ms
            .store(after.as_millis().max(1) as u64, Relaxed);
    }

    /// The checked stored window of checkpoint `i`, at `range` of the window section, with
    /// sha256 `digest` if the head has one: from the local copy or the sidecar blob
    /// (concurrent asks share one load).
    pub async fn get(
        self: &Arc<Self>,
        i: usize,
        range: Range<u64>,
        digest: Option<[u8; 32]>,
    ) -> Result<Bytes, WindowError> {
        let me = self.clone();
        let what = self.what;
        let work = move || async move { me.load(i, range, digest).await }.boxed();
        let failed = move |e| WindowError::Task {
            what,
            checkpoint: i,
            source: Arc::new(e),
        };
        self.inflight.join_or_start(i, (), work, failed).await
    }

    /// The window of checkpoint `i` decoded spans that failed verification (a format 4 head
    /// has no sha256 to check it by): drop the local copy so the next attempt fetches it
    /// again, and stop trusting the mirror that served it for this blob.
    pub async fn forget(&self, i: usize) {
        let path = self.dir.join(i.to_string());
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
        self.source.distrust();
    }

    /// Bytes `range` of the window section, fetched in the next batch (see [`BATCH_DELAY`]).
    pub(super) async fn fetch_batched(
        self: &Arc<Self>,
        range: Range<u64>,
    ) -> Result<Bytes, FetchError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut b = self.batch.lock().unwrap_or_else(|p| p.into_inner());
            b.0.push((range.clone(), tx));
            !std::mem::replace(&mut b.1, true)
        };
        if start {
            let me = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(BATCH_DELAY).await;
                let mut asked = {
                    let mut b = me.batch.lock().unwrap_or_else(|p| p.into_inner());
                    b.1 = false;
                    std::mem::take(&mut b.0)
                };
                asked.sort_by_key(|(r, _)| r.start);
                let mut groups: Vec<(Range<u64>, Vec<Asked>)> = Vec::new();
                for (r, tx) in asked {
                    match groups.last_mut() {
                        Some((g, m))
                            if r.start <= g.end.saturating_add(BATCH_GAP)
                                && r.end.max(g.end) - g.start <= BATCH_MAX =>
                        {
                            g.end = g.end.max(r.end);
                            m.push((r, tx));
                        }
                        _ => groups.push((r.clone(), vec![(r, tx)])),
                    }
                }
                for (g, members) in groups {
                    let me = me.clone();
                    tokio::spawn(async move {
                        let got = me.source.fetch(me.base + g.start..me.base + g.end).await;
                        for (r, tx) in members {
                            let (a, e) = ((r.start - g.start) as usize, (r.end - g.start) as usize);
                            // A short answer gives an empty piece: it fails the length check.
                            let piece = got.as_ref().map_err(Clone::clone).map(|b| {
                                if e <= b.len() {
                                    b.slice(a..e)
                                } else {
                                    Bytes::new()
                                }
                            });
                            let _ = tx.send(piece);
                        }
                    });
                }
            });
        }
        match rx.await {
            Ok(r) => r,
            // The batch task went away: ask on our own.
            Err(_) => {
                self.source
                    .fetch(self.base + range.start..self.base + range.end)
                    .await
            }
        }
    }

    async fn load(
        self: &Arc<Self>,
        i: usize,
        range: Range<u64>,
        digest: Option<[u8; 32]>,
    ) -> Result<Bytes, WindowError> {
        let path = self.dir.join(i.to_string());
        let ok = |b: &[u8]| {
            b.len() as u64 == range.end - range.start
                && digest.is_none_or(|d| <[u8; 32]>::from(Sha256::digest(b)) == d)
        };
        let p2 = path.clone();
        if let Ok(Ok(b)) = tokio::task::spawn_blocking(move || std::fs::read(&p2)).await {
            if ok(&b) {
                return Ok(Bytes::from(b));
            }
            tracing::warn!(
                what = self.what,
                piece = i,
                "local copy failed verification; fetching it again"
            );
            let p2 = path.clone();
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(p2)).await;
        }
        let abs = self.base + range.start..self.base + range.end;
        let after = Duration::from_millis(self.deadline_ms.load(Relaxed));
        let b = tokio::time::timeout(after, self.fetch_batched(range.clone()))
            .await
            .map_err(|_| WindowError::Timeout {
                what: self.what,
                checkpoint: i,
                range: abs.clone(),
                after,
            })?
            .map_err(|source| WindowError::Fetch {
                what: self.what,
                checkpoint: i,
                range: abs.clone(),
                source,
            })?;
        self.fetched.fetch_add(1, Relaxed);
        self.fetched_bytes.fetch_add(b.len() as u64, Relaxed);
        if !ok(&b) {
            tracing::error!(what = self.what, piece = i, range = ?abs, "sidecar piece failed its check");
            // Checked by a sha256 the head carries: the source served wrong bytes.
            if digest.is_some() {
                self.source.distrust();
            }
            return Err(WindowError::Digest {
                what: self.what,
                checkpoint: i,
                range: abs,
            });
        }
        let (dir, bytes) = (self.dir.clone(), b.clone());
        // Best effort: a missing copy is fetched again; a torn one fails verification.
        let _ = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
            std::io::Write::write_all(&mut tmp, &bytes)?;
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        })
        .await;
        Ok(b)
    }
}
