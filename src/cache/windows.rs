//! Stored gzip windows of a layer whose index came from a sidecar as its head alone (index
//! format 3): each checkpoint's window is fetched with one Range request on the sidecar blob
//! the first time a span decoded from that checkpoint is fetched (concurrently with the span's
//! compressed bytes), checked against the sha256 the head carries, and kept in memory and as one
//! small file per checkpoint next to the index. Single-flight per checkpoint; a window that
//! fails its sha256 is an error and is neither kept nor cached, so the next attempt fetches it
//! again. A local copy is re-verified whenever it is read.

use super::BlobSource;
use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

type WindowFuture = Shared<BoxFuture<'static, Result<Bytes, String>>>;

/// Where a layer's windows come from; see the module docs.
pub struct RemoteWindows {
    /// The sidecar index blob (the whole index file).
    source: Arc<dyn BlobSource>,
    /// Offset of the window section in the sidecar blob (the head's length).
    base: u64,
    /// Local copies, `<dir>/<checkpoint>`.
    dir: PathBuf,
    mem: Mutex<HashMap<usize, Bytes>>,
    inflight: Mutex<HashMap<usize, WindowFuture>>,
    /// Windows fetched from the registry, and their bytes.
    pub fetched: AtomicU64,
    pub fetched_bytes: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RemoteWindows {
    pub fn new(source: Arc<dyn BlobSource>, base: u64, dir: PathBuf) -> Arc<RemoteWindows> {
        Arc::new(RemoteWindows {
            source,
            base,
            dir,
            mem: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            fetched: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
        })
    }

    /// The verified stored window of checkpoint `i`, at `range` of the window section with
    /// sha256 `digest`: from memory, the local copy, or the sidecar blob.
    pub async fn get(
        self: &Arc<Self>,
        i: usize,
        range: Range<u64>,
        digest: [u8; 32],
    ) -> Result<Bytes, String> {
        if let Some(w) = lock(&self.mem).get(&i).cloned() {
            return Ok(w);
        }
        let fut = {
            let mut inflight = lock(&self.inflight);
            if let Some(f) = inflight.get(&i) {
                f.clone()
            } else {
                let me = self.clone();
                let f = async move {
                    let r = me.load(i, range, digest).await;
                    if let Ok(w) = &r {
                        lock(&me.mem).insert(i, w.clone());
                    }
                    lock(&me.inflight).remove(&i);
                    r
                }
                .boxed()
                .shared();
                inflight.insert(i, f.clone());
                f
            }
        };
        fut.await
    }

    async fn load(&self, i: usize, range: Range<u64>, digest: [u8; 32]) -> Result<Bytes, String> {
        let path = self.dir.join(i.to_string());
        let ok = |b: &[u8]| {
            b.len() as u64 == range.end - range.start
                && <[u8; 32]>::from(Sha256::digest(b)) == digest
        };
        let p2 = path.clone();
        if let Ok(Ok(b)) = tokio::task::spawn_blocking(move || std::fs::read(&p2)).await {
            if ok(&b) {
                return Ok(Bytes::from(b));
            }
            tracing::warn!(
                checkpoint = i,
                "local window copy failed verification; fetching it again"
            );
            let _ = std::fs::remove_file(&path);
        }
        let abs = self.base + range.start..self.base + range.end;
        let b = self.source.fetch(abs.clone()).await?;
        self.fetched.fetch_add(1, Relaxed);
        self.fetched_bytes.fetch_add(b.len() as u64, Relaxed);
        if !ok(&b) {
            tracing::error!(checkpoint = i, range = ?abs, "sidecar window failed its sha256");
            return Err(format!(
                "window of checkpoint {i} (sidecar bytes {abs:?}) does not match its sha256"
            ));
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
