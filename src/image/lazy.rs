//! Open an image lazily: resolve it, get every layer's index (see `index.rs`), and build the
//! union's view of it: one [`CacheLower`] per layer (bytes through the chunk cache) and the
//! merged tree. Nothing here downloads a layer unless no index can be found for it.

use super::index::{layer_indexes, IndexSource};
use super::{Error, Progress};
use crate::cache::{BlobSource, CachedLayer, ChunkCache, Layout, LocalBlob, RegistryBlob};
use crate::config::ProfileSource;
use crate::layer::{Entry, LayerIndex};
use crate::reference::Reference;
use crate::registry::manifest::ImageConfig;
use crate::registry::Client;
use crate::store::{ImageRecord, Store};
use crate::union::{LowerFile, LowerSource, MergedTree};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which lower files a workload read, in first-read order: recorded during a mount, stored
/// per image, and prefetched first at the next mount of that image.
#[derive(Default)]
pub struct AccessProfile {
    seen: std::sync::Mutex<ProfileState>,
}

/// Files seen (cheap `Arc` keys: no allocation on the read path), and (layer, path) in
/// first-read order.
type ProfileState = (std::collections::HashSet<LowerFile>, Vec<(usize, String)>);

/// How long after mounting the background fetch of whole layers starts.
pub const BULK_PREFETCH_DELAY: std::time::Duration = std::time::Duration::from_secs(2);

/// Most files a profile keeps.
const PROFILE_MAX_FILES: usize = 100_000;

impl AccessProfile {
    fn note(&self, file: &LowerFile) {
        let mut g = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if g.1.len() < PROFILE_MAX_FILES && !g.0.contains(file) {
            g.0.insert(file.clone());
            g.1.push((file.layer(), file.path().to_string()));
        }
    }

    /// Files in first-read order.
    pub fn files(&self) -> Vec<(usize, String)> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }
}

/// Keep the profile of this run if the image has none yet (the first, cold run is the one
/// that shows what a start needs).
pub fn save_profile(store: &Store, image: &LazyImage) {
    super::profile::keep(store, &image.record.manifest_digest, &image.profile.files());
}

/// Progress of the profile-first prefetch, for `strata stats`.
#[derive(Default, Debug)]
pub struct ProfilePrefetch {
    source: std::sync::Mutex<&'static str>,
    files: std::sync::atomic::AtomicUsize,
    done: std::sync::atomic::AtomicUsize,
}

/// A snapshot of [`ProfilePrefetch`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProfileProgress {
    /// `local`, `registry`, `estargz` (the layers' prefetch landmarks) or empty (none).
    pub source: String,
    /// Files of the profile that were not local at mount time.
    pub files: usize,
    /// Of those, fetched so far.
    pub done: usize,
}

impl ProfilePrefetch {
    pub fn snapshot(&self) -> ProfileProgress {
        use std::sync::atomic::Ordering::Relaxed;
        ProfileProgress {
            source: self
                .source
                .lock()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            files: self.files.load(Relaxed),
            done: self.done.load(Relaxed),
        }
    }
}

/// How many profile files are fetched at once: enough to fill a link with a round trip of
/// tens of milliseconds, few enough that the first-read files go out first.
const PROFILE_CONCURRENCY: usize = 6;

/// Prefetch in the background: the files of the image's access profile first (the one
/// recorded here, else — with `prefetch-profile: registry` — one published with `strata
/// profile push`), then every layer in order. Reads on demand keep priority (see
/// `ChunkCache::prefetch_layer`).
pub async fn prefetch(
    store: Arc<Store>,
    cache: Arc<ChunkCache>,
    image: Arc<LazyImage>,
    client: Arc<Client>,
    source: ProfileSource,
) -> Result<(), crate::cache::Error> {
    use futures::StreamExt;
    let manifest = image.record.manifest_digest;
    use std::sync::atomic::Ordering::Relaxed;
    let progress = &image.profile_prefetch;
    let set_source = |s: &'static str| {
        if let Ok(mut g) = progress.source.lock() {
            *g = s;
        }
    };
    let mut profile = match source {
        ProfileSource::None => Vec::new(),
        _ => super::profile::local(&store, &manifest).unwrap_or_default(),
    };
    if !profile.is_empty() {
        set_source("local");
    }
    if profile.is_empty() && source == ProfileSource::Registry {
        match super::profile::fetch(&client, &image.reference, &image.record).await {
            Ok(Some(p)) => {
                tracing::info!(files = p.len(), "prefetching a published access profile");
                set_source("registry");
                profile = p;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("published access profile not used: {e}"),
        }
    }
    if profile.is_empty() && source != ProfileSource::None {
        // eStargz layers built with prioritised files (`.prefetch.landmark`), bottom first.
        for (i, l) in image.layers.iter().enumerate() {
            let path = super::index::prefetch_list_path(&store, &l.digest);
            let files: Vec<String> = store.read_json(&path).ok().flatten().unwrap_or_default();
            profile.extend(files.into_iter().map(|f| (i, f)));
        }
        if !profile.is_empty() {
            set_source("estargz");
        }
    }
    // Virtual ranges in first-read order, one per file not yet local.
    let ranges: Vec<_> = profile
        .iter()
        .filter_map(|(layer, path)| {
            let l = image.layers.get(*layer)?;
            let entry = l.layout.index().lookup(path)?;
            let r = l.layout.file_range(&entry, 0..u64::MAX).ok()?;
            (!r.is_empty() && cache.try_read_local(l, r.clone()).is_none()).then(|| (l.clone(), r))
        })
        .collect();
    progress.files.store(ranges.len(), Relaxed);
    let mut fetches = futures::stream::iter(ranges)
        .map(|(l, r)| {
            let cache = cache.clone();
            async move {
                cache.read_prefetch(&l, r).await?;
                progress.done.fetch_add(1, Relaxed);
                Ok::<(), crate::cache::Error>(())
            }
        })
        .buffered(PROFILE_CONCURRENCY);
    while let Some(res) = fetches.next().await {
        res?;
    }
    drop(fetches);
    // Whole layers only after a grace period: a short-lived command's cold start should not
    // share the link with bytes it will never read.
    tokio::time::sleep(BULK_PREFETCH_DELAY).await;
    for l in &image.layers {
        cache.prefetch_layer(l).await?;
    }
    Ok(())
}

/// A lower layer whose bytes come through the chunk cache.
pub struct CacheLower {
    pub cache: Arc<ChunkCache>,
    pub layer: Arc<CachedLayer>,
    pub profile: Arc<AccessProfile>,
}

fn eio(msg: String) -> std::io::Error {
    std::io::Error::other(msg)
}

impl CacheLower {
    /// Virtual range of `[offset, offset+len)` of `file` (clamped), and where the file's bytes
    /// end (to bound readahead to this file). One index lookup.
    fn vrange(
        &self,
        file: &LowerFile,
        offset: u64,
        len: u32,
    ) -> std::io::Result<(std::ops::Range<u64>, u64)> {
        let (start, n) = file.clamp(offset, len);
        self.profile.note(file);
        let index = self.layer.layout.index();
        let entry = index.lookup(file.path()).ok_or_else(|| {
            eio(format!(
                "layer {}: {} not in index",
                self.layer.digest,
                file.path()
            ))
        })?;
        let layout = &self.layer.layout;
        let r = layout
            .file_range(&entry, start..start + n as u64)
            .map_err(eio)?;
        let end = layout
            .file_range(&entry, u64::MAX..u64::MAX)
            .map_err(eio)?
            .end;
        Ok((r, end))
    }
}

impl LowerSource for CacheLower {
    fn read(
        &self,
        file: &LowerFile,
        offset: u64,
        len: u32,
    ) -> BoxFuture<'static, std::io::Result<Bytes>> {
        let r = self.vrange(file, offset, len);
        let (cache, layer) = (self.cache.clone(), self.layer.clone());
        async move {
            let (r, file_end) = r?;
            if r.is_empty() {
                return Ok(Bytes::new());
            }
            cache.read_file(&layer, r, file_end).await.map_err(|e| {
                tracing::error!("lazy read failed: {e}");
                eio(e.to_string())
            })
        }
        .boxed()
    }

    fn try_read_local(
        &self,
        file: &LowerFile,
        offset: u64,
        len: u32,
    ) -> Option<std::io::Result<Bytes>> {
        let r = match self.vrange(file, offset, len) {
            Ok((r, _)) => r,
            Err(e) => return Some(Err(e)),
        };
        if r.is_empty() {
            return Some(Ok(Bytes::new()));
        }
        self.cache
            .try_read_local(&self.layer, r)
            .map(|res| res.map_err(|e| eio(e.to_string())))
    }

    fn local_path(&self, _file: &LowerFile) -> Option<PathBuf> {
        None
    }
}

/// Where the merged tree of `record` is stored: keyed by the manifest digest and by each layer
/// index file's identity (layer digest, file size and mtime), so a replaced index never meets a
/// tree built from the old one. Only `stat`s the index files, so it can be computed before they
/// are opened (and again after, to check nothing was replaced meanwhile).
fn tree_path(store: &Store, record: &ImageRecord) -> PathBuf {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for desc in &record.layers {
        let (len, mtime) = std::fs::metadata(super::index::index_path(store, &desc.digest))
            .map(|m| (m.len(), m.modified().ok()))
            .unwrap_or((0, None));
        let ns = mtime
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        h.update(format!(
            "{}:{len}:{ns}
",
            desc.digest
        ));
    }
    let key = hex::encode(&h.finalize()[..8]);
    store
        .root()
        .join("trees")
        .join(format!("{}-{key}.tree", record.manifest_digest.hex()))
}

/// The stored merged tree if it is there and intact, else merge the indexes and store the
/// result (best effort: a tree that cannot be written is only a slower next mount).
fn load_or_build_tree(
    path: &Path,
    indexes: &[Arc<LayerIndex>],
    try_stored: bool,
) -> Result<MergedTree, crate::union::Error> {
    if try_stored && path.exists() {
        match MergedTree::open(path, indexes.len()) {
            Ok(t) => return Ok(t),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "rebuilding merged tree"),
        }
    }
    let entries: Vec<Vec<Entry>> = indexes
        .iter()
        .map(|ix| ix.entries().map(|e| e.to_entry()).collect())
        .collect();
    let tree = MergedTree::build(&entries)?;
    drop(entries);
    release_freed_heap();
    let stored = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            // temp + rename: a reader sees the old file, the new one or none
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, tree.encode())
                .and_then(|()| std::fs::rename(&tmp, path))
                .inspect_err(|_| {
                    let _ = std::fs::remove_file(&tmp);
                })
        });
    if let Err(e) = stored {
        tracing::warn!(path = %path.display(), error = %e, "could not store the merged tree");
    }
    Ok(tree)
}

/// Give the heap freed by a tree build (the layers' entry lists, the builder's maps: several
/// times the tree's own size) back to the kernel, so that the daemon's resident size is what
/// it keeps, not its peak.
fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of glibc's heap to the kernel; it takes no
    // pointers and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Allocator settings for a serving daemon. Its big tables (the union's node table above
/// all) grow by doubling; with glibc's dynamic mmap threshold each freed old table raises the
/// threshold, so the next, larger one comes from the heap and the old ones stay resident after
/// they are freed (seen: ~12 MiB of dead tables after a walk over 100k files). A fixed
/// threshold keeps every allocation above 128 KiB in its own mapping, returned when freed.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter; it takes no pointers and is thread-safe.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// An image ready to be mounted.
pub struct LazyImage {
    pub reference: Reference,
    pub record: ImageRecord,
    pub config: ImageConfig,
    pub layers: Vec<Arc<CachedLayer>>,
    pub index_sources: Vec<IndexSource>,
    pub tree: Arc<MergedTree>,
    pub lowers: Vec<Arc<dyn LowerSource>>,
    pub profile: Arc<AccessProfile>,
    /// Progress of the profile-first prefetch.
    pub profile_prefetch: ProfilePrefetch,
}

/// Resolve indexes, make cached layers and build the merged tree.
pub async fn open(
    client: &Arc<Client>,
    store: &Arc<Store>,
    cache: &Arc<ChunkCache>,
    reference: &Reference,
    record: ImageRecord,
    progress: &Progress,
) -> Result<LazyImage, Error> {
    let t0 = std::time::Instant::now();
    // A stored tree for the indexes on disk now is opened (read and checked) on the blocking
    // pool while the indexes are: both are reads of ~10 MB at a cold page cache.
    let n_layers = record.layers.len();
    let early_path = tree_path(store, &record);
    let early = early_path.exists().then(|| {
        let p = early_path.clone();
        tokio::task::spawn_blocking(move || MergedTree::open(&p, n_layers))
    });
    let (config, _) = store.config(&record)?;
    let indexes = layer_indexes(client, store, reference, &record, progress).await?;
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "layer indexes ready");
    let mut layers = Vec::new();
    let mut lowers: Vec<Arc<dyn LowerSource>> = Vec::new();
    let mut sources = Vec::new();
    let mut indexes_for_tree = Vec::new();
    let profile = Arc::new(AccessProfile::default());
    for (desc, (index, src)) in record.layers.iter().zip(indexes) {
        let source: Arc<dyn BlobSource> = if store.has_blob(&desc.digest) {
            Arc::new(LocalBlob {
                path: store.blob_path(&desc.digest),
            })
        } else {
            Arc::new(RegistryBlob {
                client: client.clone(),
                registry: reference.registry.clone(),
                repository: reference.repository.clone(),
                digest: desc.digest,
            })
        };
        indexes_for_tree.push(index.clone());
        let windows = super::index::remote_windows(client, store, reference, &desc.digest, &index);
        let layer = Arc::new(CachedLayer {
            digest: desc.digest,
            layout: Layout::new(index),
            source,
            windows,
        });
        lowers.push(Arc::new(CacheLower {
            cache: cache.clone(),
            layer: layer.clone(),
            profile: profile.clone(),
        }));
        layers.push(layer);
        sources.push(src);
    }
    let tree_path = tree_path(store, &record);
    let t1 = std::time::Instant::now();
    // Same index files as when it was opened: use it if it was intact.
    let (early, try_stored) = match early {
        Some(h) if tree_path == early_path => match h.await {
            Ok(Ok(t)) => (Some(t), false),
            Ok(Err(e)) => {
                tracing::warn!(path = %tree_path.display(), error = %e, "rebuilding merged tree");
                (None, false)
            }
            Err(_) => (None, true),
        },
        _ => (None, true),
    };
    let tree = match early {
        Some(t) => Ok(Ok(t)),
        None => {
            tokio::task::spawn_blocking(move || {
                load_or_build_tree(&tree_path, &indexes_for_tree, try_stored)
            })
            .await
        }
    };
    let tree = tree
        .map_err(|e| Error::Invalid {
            what: reference.to_string(),
            msg: e.to_string(),
        })?
        .map_err(|e| Error::Invalid {
            what: format!("{reference}: merging {n_layers} layers"),
            msg: e.to_string(),
        })?;
    tracing::debug!(
        ms = t1.elapsed().as_secs_f64() * 1e3,
        nodes = tree.len(),
        "merged tree ready"
    );
    Ok(LazyImage {
        reference: reference.clone(),
        record,
        config,
        layers,
        index_sources: sources,
        tree: Arc::new(tree),
        lowers,
        profile,
        profile_prefetch: ProfilePrefetch::default(),
    })
}
