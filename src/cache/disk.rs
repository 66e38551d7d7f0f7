//! The disk tier: on-disk span files `<dir>/<layer-hex>/<span>`, written temp + rename after
//! verification (no fsync: a span file is re-verified whenever it is loaded, by `local.rs`); a
//! failed write removes its temp file. Size-capped with least-recently-used eviction across
//! all layers. Calls nothing outside `cache/`; its lock covers the LRU map only, never a
//! file operation.

use super::{Error, SpanKey};
use crate::digest::Digest;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub(super) struct Disk {
    dir: PathBuf,
    cap: u64,
    state: Mutex<State>,
}

struct State {
    lru: lru::LruCache<SpanKey, u64>,
    bytes: u64,
}

impl Disk {
    /// Open (creating) the cache dir and index what earlier processes left there, oldest first.
    pub(super) fn open(dir: PathBuf, cap: u64) -> Result<Disk, Error> {
        let io = |e: std::io::Error| Error::Io {
            path: dir.clone(),
            source: Arc::new(e),
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut found = Vec::new();
        for layer in std::fs::read_dir(&dir).map_err(io)?.flatten() {
            let Ok(d) = Digest::from_hex(&layer.file_name().to_string_lossy()) else {
                continue;
            };
            let Ok(rd) = std::fs::read_dir(layer.path()) else {
                continue;
            };
            for f in rd.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                let Ok(meta) = f.metadata() else { continue };
                match name.parse::<u32>() {
                    Ok(span) => {
                        let t = meta.modified().ok();
                        found.push((t, SpanKey { layer: d, span }, meta.len()));
                    }
                    // A temp file from a killed writer.
                    Err(_) => {
                        let _ = std::fs::remove_file(f.path());
                    }
                }
            }
        }
        found.sort_by_key(|(t, _, _)| *t);
        let mut lru = lru::LruCache::unbounded();
        let mut bytes = 0;
        for (_, k, len) in found {
            lru.put(k, len);
            bytes += len;
        }
        let disk = Disk {
            dir,
            cap,
            state: Mutex::new(State { lru, bytes }),
        };
        disk.prune_to(cap);
        Ok(disk)
    }

    fn path(&self, k: &SpanKey) -> PathBuf {
        self.dir.join(k.layer.hex()).join(k.span.to_string())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn contains(&self, k: &SpanKey) -> bool {
        self.state().lru.contains(k)
    }

    /// Bytes `range` of a span file, unverified (`None` if it is not cached or too short).
    pub(super) fn read_range(&self, k: &SpanKey, range: std::ops::Range<u64>) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        self.state().lru.get(k)?;
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        let r =
            std::fs::File::open(self.path(k)).and_then(|f| f.read_exact_at(&mut buf, range.start));
        match r {
            Ok(()) => Some(buf),
            Err(_) => {
                self.forget(k);
                None
            }
        }
    }

    fn forget(&self, k: &SpanKey) {
        let mut s = self.state();
        if let Some(len) = s.lru.pop(k) {
            s.bytes -= len;
        }
    }

    pub(super) fn remove(&self, k: &SpanKey) {
        self.forget(k);
        let _ = std::fs::remove_file(self.path(k));
    }

    /// Remove every span file of `layer`.
    pub(super) fn drop_layer(&self, layer: &Digest) {
        {
            let mut s = self.state();
            let keys: Vec<SpanKey> = s
                .lru
                .iter()
                .filter(|(k, _)| k.layer == *layer)
                .map(|(k, _)| *k)
                .collect();
            for k in keys {
                if let Some(len) = s.lru.pop(&k) {
                    s.bytes -= len;
                }
            }
        }
        let _ = std::fs::remove_dir_all(self.dir.join(layer.hex()));
    }

    /// The cache directory.
    pub(super) fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub(super) fn write(&self, k: &SpanKey, data: &[u8]) -> Result<(), Error> {
        if self.cap == 0 || self.contains(k) {
            return Ok(());
        }
        let final_path = self.path(k);
        let dir = final_path
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| self.dir.clone());
        let io = |e: std::io::Error| Error::Io {
            path: final_path.clone(),
            source: Arc::new(e),
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let tmp = dir.join(format!("{}.tmp.{}", k.span, std::process::id()));
        let r = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(data)?;
            std::fs::rename(&tmp, &final_path)
        })();
        if let Err(e) = r {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        {
            let mut s = self.state();
            s.lru.put(*k, data.len() as u64);
            s.bytes += data.len() as u64;
        }
        self.prune_to(self.cap);
        Ok(())
    }

    /// Evict least recently used spans until at most `target` bytes remain.
    pub(super) fn prune_to(&self, target: u64) -> u64 {
        let mut freed = 0;
        loop {
            let victim = {
                let mut s = self.state();
                if s.bytes <= target {
                    break;
                }
                match s.lru.pop_lru() {
                    Some((k, len)) => {
                        s.bytes -= len;
                        freed += len;
                        k
                    }
                    None => break,
                }
            };
            let _ = std::fs::remove_file(self.path(&victim));
        }
        freed
    }

    pub(super) fn usage(&self) -> (u64, usize) {
        let s = self.state();
        (s.bytes, s.lru.len())
    }
}
