//! Open an image lazily: get every layer's index (`image::index`), make one cached layer and
//! one [`CacheLower`] per layer (bytes through the chunk cache), and the merged tree (stored
//! after the first mount, mmap-ed at later ones). Nothing here downloads a layer unless no
//! index can be found for it.
//!
//! Calls `image` (index sources), `cache`, `union` (the merged tree), `store` and, through
//! the cache's blob sources, `registry`.

use super::lower::{AccessProfile, CacheLower};
use super::prefetch::ProfilePrefetch;
use super::Error;
use crate::cache::{BlobSource, CachedLayer, ChunkCache, Layout, LocalBlob, RegistryBlob};
use crate::image::index::{layer_indexes, IndexSource};
use crate::image::Progress;
use crate::layer::LayerIndex;
use crate::oci::ImageConfig;
use crate::reference::Reference;
use crate::registry::Client;
use crate::store::{ImageRecord, Store};
use crate::union::{LowerSource, MergedTree};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the merged tree of `record` is stored: keyed by the manifest digest and by each layer
/// index file's identity (layer digest, file size and mtime), so a replaced index never meets a
/// tree built from the old one. Only `stat`s the index files, so it can be computed before they
/// are opened (and again after, to check nothing was replaced meanwhile).
fn tree_path(store: &Store, record: &ImageRecord) -> PathBuf {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for desc in &record.layers {
        let (len, mtime) = std::fs::metadata(crate::image::index::index_path(store, &desc.digest))
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
) -> Result<(MergedTree, bool), crate::union::Error> {
    if try_stored && path.exists() {
        match MergedTree::open(path, indexes.len()) {
            Ok(t) => return Ok((t, false)),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "rebuilding merged tree"),
        }
    }
    let tree = MergedTree::build_indexes(indexes)?;
    Ok((tree, true))
}

/// Keep a tree just built for the next mount of the same indexes, and give back the heap
/// the build freed; off the mount's path (the mount serves meanwhile).
fn store_tree(path: &Path, tree: &MergedTree) {
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
    /// Files the warm-ups read (`warm.rs`), and the warm-up of ELF objects opened later.
    pub warmed: super::warm::Warmed,
    pub load_warm: Arc<super::warm::LoadWarm>,
    /// The published access profile, asked for while the image was being opened (taken by
    /// the first prefetch; see `images.rs`).
    pub early_profile: std::sync::Mutex<Option<EarlyProfile>>,
}

/// A fetch of the image's published access profile in flight.
pub type EarlyProfile = tokio::task::JoinHandle<
    Result<
        Option<(
            crate::image::profile::Profile,
            crate::image::profile::Ranges,
        )>,
        crate::image::Error,
    >,
>;

/// What [`open`] is given to start with.
#[derive(Default)]
pub struct OpenEarly {
    /// A container start will read the user database before anything else: fetch it as soon
    /// as the layers are known.
    pub user_db: bool,
    /// What the layer-index lookup started before the mount asked found (`early.rs`).
    pub indexes:
        Option<futures::future::BoxFuture<'static, Option<crate::image::index::LazyIndexes>>>,
}

/// Resolve indexes, make cached layers and build the merged tree (see [`OpenEarly`]).
pub async fn open(
    client: &Arc<Client>,
    store: &Arc<Store>,
    cache: &Arc<ChunkCache>,
    reference: &Reference,
    record: ImageRecord,
    progress: &Progress,
    given: OpenEarly,
) -> Result<LazyImage, Error> {
    let user_db_first = given.user_db;
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
    let found = match given.indexes {
        Some(l) => l.await,
        None => None,
    };
    let indexes = layer_indexes(client, store, reference, &record, progress, found).await?;
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "layer indexes ready");
    let mut layers = Vec::new();
    let mut lowers: Vec<Arc<dyn LowerSource>> = Vec::new();
    let mut sources = Vec::new();
    let mut indexes_for_tree = Vec::new();
    let profile = Arc::new(AccessProfile::default());
    let load_warm = Arc::new(super::warm::LoadWarm::default());
    for (desc, (index, src)) in record.layers.iter().zip(indexes) {
        let source: Arc<dyn BlobSource> = if store.has_blob(&desc.digest) {
            Arc::new(LocalBlob {
                path: store.blob_path(&desc.digest),
            })
        } else {
            Arc::new(RegistryBlob {
                client: client.clone(),
                repo: reference.repo(),
                digest: desc.digest,
                small_pieces: false,
            })
        };
        indexes_for_tree.push(index.clone());
        let (windows, groups) =
            crate::image::index::remote_tail(client, store, reference, &desc.digest, &index);
        for w in windows.iter().chain(&groups) {
            w.set_deadline(cache.fetch_timeout());
        }
        let layer = Arc::new(CachedLayer {
            digest: desc.digest,
            layout: Layout::new(index),
            source,
            windows,
            groups,
            check: Default::default(),
        });
        lowers.push(Arc::new(CacheLower {
            cache: cache.clone(),
            layer: layer.clone(),
            profile: profile.clone(),
            loads: Some(load_warm.clone()),
            rt: tokio::runtime::Handle::try_current().ok(),
        }));
        layers.push(layer);
        sources.push(src);
    }
    if user_db_first {
        super::warm::start_user_db(cache, &layers);
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
    let path = tree_path.clone();
    let tree = match early {
        Some(t) => Ok(Ok((t, false))),
        None => {
            tokio::task::spawn_blocking(move || {
                load_or_build_tree(&path, &indexes_for_tree, try_stored)
            })
            .await
        }
    };
    let (tree, built) = tree
        .map_err(|source| Error::Join {
            what: format!("{reference}: merging {n_layers} layers"),
            source,
        })?
        .map_err(|e| Error::Tree {
            image: reference.to_string(),
            layers: n_layers,
            source: Box::new(e),
        })?;
    tracing::debug!(
        ms = t1.elapsed().as_secs_f64() * 1e3,
        nodes = tree.len(),
        "merged tree ready"
    );
    let tree = Arc::new(tree);
    if built {
        let t = tree.clone();
        tokio::task::spawn_blocking(move || store_tree(&tree_path, &t));
    }
    Ok(LazyImage {
        reference: reference.clone(),
        record,
        config,
        layers,
        index_sources: sources,
        tree,
        lowers,
        profile,
        profile_prefetch: ProfilePrefetch::default(),
        warmed: Default::default(),
        load_warm,
        early_profile: Default::default(),
    })
}
