//! The whole-layer digest check as the cache runs it around [`ChunkCache::fetch_layer`] and
//! [`ChunkCache::prefetch_layer`] (the recording itself is `whole.rs`): start recording, and
//! when every span is in, fill what was not recorded, hash, check the spans against the
//! decompressed layer, and on a mismatch poison the layer, drop its spans, mark it bad for
//! other processes and drop the mirrors that served it. Calls `whole.rs`, the tiers and the
//! fetcher; nothing outside `cache/`.

use super::whole::{check_spans, hash_file};
use super::{CachedLayer, ChunkCache, Error};
use crate::digest::Digest;
use std::path::PathBuf;
use std::sync::Arc;

/// Identity of the index file a layer is served under (size and mtime): a verdict (verified
/// or bad) holds for that index only; a replaced index is checked afresh.
fn index_identity(layer: &CachedLayer) -> String {
    let m = std::fs::metadata(layer.layout.index().path()).ok();
    let len = m.as_ref().map_or(0, |m| m.len());
    let ns = m
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{len}:{ns}")
}

impl ChunkCache {
    /// Where the verdict `what` (`verified`, `bad`) on `layer` is kept: beside the cache
    /// directory (`<cache dir>.verdicts/`), whose entries are layer directories only. A verdict
    /// names the index it was reached under, so it stays true when spans are pruned.
    fn verdict_path(&self, layer: &Digest, what: &str) -> PathBuf {
        let mut dir = self.tiers.disk.dir().as_os_str().to_owned();
        dir.push(".verdicts");
        PathBuf::from(dir).join(format!("{}.{what}", layer.hex()))
    }

    fn write_verdict(&self, layer: &CachedLayer, what: &str) -> std::io::Result<()> {
        let p = self.verdict_path(&layer.digest, what);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(&p, index_identity(layer))
    }

    /// Whether a process sharing this cache found `layer`'s bytes (under this index) false.
    pub(super) fn marked_bad(&self, layer: &CachedLayer) -> bool {
        match std::fs::read_to_string(self.verdict_path(&layer.digest, "bad")) {
            Ok(s) => s == index_identity(layer),
            Err(_) => false,
        }
    }

    /// Start recording a whole-layer fetch of `layer` unless its bytes need no check (a blob
    /// from the local store, verified when stored) or were checked under this index already.
    pub(super) fn begin_whole(&self, layer: &CachedLayer) -> Result<bool, Error> {
        if layer.check.is_poisoned() {
            return Err(Error::Poisoned {
                layer: layer.digest,
            });
        }
        if layer.source.verified_whole() {
            return Ok(false);
        }
        let verified = self.verdict_path(&layer.digest, "verified");
        if std::fs::read_to_string(&verified).is_ok_and(|s| s == index_identity(layer)) {
            return Ok(false);
        }
        let part = self
            .tiers
            .disk
            .dir()
            .join(layer.digest.hex())
            .join(format!("whole.part.{}", std::process::id()));
        layer.check.begin(&part).map_err(|e| Error::Io {
            path: part,
            source: Arc::new(e),
        })?;
        Ok(true)
    }

    /// End a whole-layer fetch that returned `r`: when every span is in, check the layer.
    pub(super) async fn finish_whole(
        self: &Arc<Self>,
        layer: &Arc<CachedLayer>,
        checking: bool,
        r: Result<usize, Error>,
    ) -> Result<usize, Error> {
        if !checking {
            return r;
        }
        let n = match r {
            Ok(n) => n,
            Err(e) => {
                if let Some((_, p, _)) = layer.check.end() {
                    let _ = std::fs::remove_file(p);
                }
                return Err(e);
            }
        };
        let filled = self.fill_recording(layer).await;
        let Some((file, path, conflict)) = layer.check.end() else {
            // Another whole-layer fetch of this layer finishes the check.
            return filled.map(|()| n);
        };
        if let Err(e) = filled {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        // Every span is checked below: a head-only index needs all its block records.
        if let Err(e) = super::fetcher::ensure_groups(layer, 0..layer.layout.count()).await {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        let l2 = layer.clone();
        let verdict = tokio::task::spawn_blocking(move || {
            let got = hash_file(&file).map_err(|e| e.to_string())?;
            if got != l2.digest {
                return Ok(Some(format!("the layer's bytes hash to {got}")));
            }
            Ok::<_, String>(check_spans(&file, &l2.layout).err())
        })
        .await;
        let _ = std::fs::remove_file(&path);
        let problem = match verdict {
            Ok(Ok(None)) if !conflict => None,
            Ok(Ok(None)) => {
                Some("two fetches of the same blob range returned different bytes".into())
            }
            Ok(Ok(Some(p))) => Some(p),
            Ok(Err(io)) => {
                return Err(Error::Io {
                    path,
                    source: Arc::new(std::io::Error::other(io)),
                })
            }
            Err(e) => {
                return Err(Error::Task {
                    layer: layer.digest,
                    what: "whole-layer check",
                    source: Arc::new(e),
                })
            }
        };
        match problem {
            None => {
                if let Err(e) = self.write_verdict(layer, "verified") {
                    tracing::warn!(layer = %layer.digest, "keeping the whole-layer verdict: {e}");
                }
                tracing::info!(layer = %layer.digest, "layer fetched whole matches its digest");
                Ok(n)
            }
            Some(problem) => Err(self.poison_layer(layer, problem).await),
        }
    }

    /// Fetch what the recording lacks: spans decoded before it started (decoded and verified
    /// again, so the recorded bytes are the ones their cached content came from) and the
    /// bytes of no span.
    async fn fill_recording(self: &Arc<Self>, layer: &Arc<CachedLayer>) -> Result<(), Error> {
        let size = layer.layout.index().meta().compressed_size;
        let (spans, _) = layer.check.missing(layer.layout.count(), size);
        for run in
            super::fetcher::coalesce(&layer.layout, &spans, super::fetcher::MAX_COALESCE_BYTES)
        {
            self.fetcher
                .run(layer, run, super::fetcher::Lane::Common)
                .await?;
        }
        let (_, holes) = layer.check.missing(layer.layout.count(), size);
        for h in holes {
            let b = layer
                .source
                .fetch(h.clone())
                .await
                .map_err(|source| Error::Fetch {
                    layer: layer.digest,
                    range: h.clone(),
                    source: Box::new(source),
                })?;
            let l2 = layer.clone();
            tokio::task::spawn_blocking(move || l2.check.record(h.start, &b, None))
                .await
                .map_err(|e| Error::Task {
                    layer: layer.digest,
                    what: "whole-layer record",
                    source: Arc::new(e),
                })?;
        }
        Ok(())
    }

    /// The layer's bytes are false: no read of it succeeds again (here, and through the bad
    /// mark in other processes sharing the cache), its spans leave both tiers, the mirrors
    /// that served any of it are dropped. Returns the error to report.
    async fn poison_layer(&self, layer: &Arc<CachedLayer>, problem: String) -> Error {
        layer.check.poison();
        self.tiers.drop_layer(&layer.digest).await;
        if let Err(e) = self.write_verdict(layer, "bad") {
            tracing::error!(layer = %layer.digest, "recording the bad layer: {e}");
        }
        let _ = std::fs::remove_file(self.verdict_path(&layer.digest, "verified"));
        let mirrors = layer.source.drop_servers();
        tracing::error!(
            layer = %layer.digest,
            mirrors = ?mirrors,
            "LAYER DIGEST MISMATCH: layer {} fetched whole does not match the image manifest ({problem}); \
             its cached spans are dropped and every further read of it fails (EIO); mirrors dropped: {}",
            layer.digest,
            if mirrors.is_empty() { "none (served by the upstream)".to_string() } else { mirrors.join(", ") }
        );
        Error::LayerDigest {
            layer: layer.digest,
            problem,
            mirrors,
        }
    }
}
