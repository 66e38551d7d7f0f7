//! Assembling a mount: the one place where an image (or a set of plain directories) becomes a
//! served FUSE union file system. [`mount_image`] resolves the image, opens its layer indexes
//! and merged tree ([`lazy`]), puts one [`lower::CacheLower`] per layer under a `UnionFs` with
//! an optional upper, mounts it with `fuse` and starts the background prefetch ([`prefetch`]);
//! [`overlay`] does the same for directory lowers (`strata overlay`); [`layer`] mounts one
//! layer of an image alone, read-only in overlay lower format (the containerd snapshotter's
//! remote snapshots); [`warm`] reads what a container's start will need as soon as the image
//! is open ([`python`]: the imports of Python modules it follows; [`cython`]: those of
//! compiled Cython extensions). The caller hands in the
//! shared parts ([`Services`]: registry client, store, chunk cache, configuration), so one
//! process may serve many mounts from one cache.
//!
//! Calls `image` (resolve, index sources, profiles), `cache`, `union`, `fuse`, `store`,
//! `registry` and `config`; formats nothing for humans (that is `cli/`).

mod cython;
mod early;
mod elf;
mod images;
pub mod layer;
pub mod lazy;
mod lower;
pub mod overlay;
pub mod prefetch;
mod python;
pub mod restore;
mod served;
pub mod warm;

pub use images::Early;
pub use layer::mount_layer;
pub use lazy::LazyImage;
pub use lower::{AccessProfile, CacheLower};
pub use prefetch::{save_profile, whole_layer_failed, ProfileProgress};
pub use restore::{prepare, process_start, saved_mounts, Prepared, SavedMount};
pub use served::{read_record, record_path, MountRecord, Served};

use crate::cache::{CacheConfig, ChunkCache};
use crate::config::Config;
use crate::image::Progress;
use crate::registry::Client;
use crate::store::Store;
use crate::union::{UnionFs, UnionOptions, Upper};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a mount could not be assembled, served or taken down.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Image(#[from] crate::image::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error(transparent)]
    Registry(#[from] crate::registry::Error),
    #[error("opening the chunk cache")]
    Cache(#[source] crate::cache::Error),
    #[error("{image}: merging {layers} layer(s) into one tree")]
    Tree {
        image: String,
        layers: usize,
        #[source]
        source: Box<crate::union::Error>,
    },
    #[error("{what}: worker task failed")]
    Join {
        what: String,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("upper directory {}", .path.display())]
    Upper {
        path: PathBuf,
        #[source]
        source: Box<crate::union::Error>,
    },
    #[error(transparent)]
    Union(Box<crate::union::Error>),
    /// The failure of an image open shared by several mounts.
    #[error(transparent)]
    Shared(Arc<Error>),
    #[error(transparent)]
    Fuse(#[from] crate::fuse::MountError),
    #[error("{image} has no layer {layer}")]
    NoSuchLayer {
        image: String,
        layer: crate::digest::Digest,
    },
    #[error("mountpoint {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("{} is already a mount point", .0.display())]
    AlreadyMounted(PathBuf),
    #[error("{}: busy or stale (daemon gone); use `strata umount -f` to detach it", .0.display())]
    Busy(PathBuf),
    #[error("{}: not a strata mount of this root", .0.display())]
    NotStrataMount(PathBuf),
    #[error("{}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What every mount of one process shares: the registry client (its connections and tokens),
/// the store, the chunk cache (single-flight and both tiers) and the configuration.
#[derive(Clone)]
pub struct Services {
    pub client: Arc<Client>,
    pub store: Arc<Store>,
    pub cache: Arc<ChunkCache>,
    pub config: Arc<Config>,
    /// Images open for the mounts of this process (shared by mounts of the same image).
    images: Arc<images::OpenImages>,
    /// Layer-index lookups started before their mount (`early.rs`).
    early: Arc<early::EarlyIndexes>,
}

impl Services {
    /// Services over the chunk cache of `store`'s root, configured from `config`.
    pub fn open(
        client: Arc<Client>,
        store: Arc<Store>,
        config: Arc<Config>,
    ) -> Result<Services, Error> {
        let cache = open_cache(&store, &config)?;
        Ok(Services {
            client,
            store,
            cache,
            config,
            images: Arc::default(),
            early: Arc::default(),
        })
    }

    /// A `strata run` of `reference` is about to mount it: start its layer-index lookup from
    /// `record`, made from the manifest alone (`early.rs`). Must run inside the runtime.
    pub fn start_early(
        &self,
        reference: crate::reference::Reference,
        record: crate::store::ImageRecord,
    ) {
        self.early
            .start(&self.client, &self.store, reference, record);
    }

    /// A run of `reference` begins: open connections to its registry, and with `cold` (the
    /// caller's store had no image of that name) fetch its tag's index alias first
    /// (`early.rs`). Must run inside the runtime.
    pub fn connect_early(&self, reference: crate::reference::Reference, cold: bool) {
        let alias = cold
            .then(|| self.early.connect(&self.client, &reference))
            .flatten();
        let client = self.client.clone();
        tokio::spawn(async move {
            // The alias is polled first, so its request goes out before the preconnect
            // (which requests to the endpoint would wait for).
            let alias = async {
                if let Some(a) = alias {
                    a.await;
                }
            };
            let repo = reference.repo();
            tokio::join!(alias, client.preconnect(&repo));
        });
    }
}

/// The chunk cache under `ROOT/cache`, sized and tuned by the configuration.
pub fn open_cache(store: &Store, config: &Config) -> Result<Arc<ChunkCache>, Error> {
    ChunkCache::open(CacheConfig {
        dir: store.root().join("cache"),
        memory_bytes: config.memory_cache_size,
        disk_bytes: config.cache_size,
        max_concurrent_fetches: 8,
        fetch_timeout: std::time::Duration::from_secs(config.fetch_timeout),
        partial_spans: config.partial_span_fetch,
        fetch_ahead: config.fetch_ahead_spans,
        siblings_after: config.fetch_siblings,
        siblings_python: !config.warm_libraries,
        // With a slicing mirror the upstream's bytes are what counts (issue 22): a fetch
        // extended over spans nobody asked for could pull whole slices for nothing.
        near_request: match config.mirror_slice_size {
            0 => config.near_request_size,
            _ => 0,
        },
    })
    .map_err(Error::Cache)
}

/// What to mount where.
pub struct MountSpec<'a> {
    pub image: &'a str,
    pub platform: Option<&'a str>,
    pub mountpoint: &'a Path,
    /// (upper, work) directories; none = read-only
    pub upper: Option<(PathBuf, PathBuf)>,
    pub prefetch: bool,
    pub passthrough: bool,
    /// Other users may use the mount (containers need it: their processes run as other uids).
    pub allow_other: bool,
    /// Files to read at once, before anything asks (`warm.rs`): a container's command and
    /// what its start reads.
    pub warm: warm::WarmList,
}

/// Check that `mountpoint` is a directory and not yet a mount point; its canonical path.
pub fn check_mountpoint(mountpoint: &Path) -> Result<PathBuf, Error> {
    if !mountpoint.is_dir() {
        return Err(Error::NotADirectory(mountpoint.to_path_buf()));
    }
    let mp = std::fs::canonicalize(mountpoint).map_err(io_err(mountpoint))?;
    if is_mounted(&mp) {
        return Err(Error::AlreadyMounted(mp));
    }
    Ok(mp)
}

/// Open an image for lazy reading without mounting it: its record resolved (locally or in its
/// registry), layer indexes and merged tree — shared with any mount of this process that has
/// the same image open (`strata cache fetch` and the mount use this), with what the caller
/// wants started `early`.
pub async fn open_image(
    svc: &Services,
    image: &str,
    platform: Option<&str>,
    progress: &Progress,
    early: Early,
) -> Result<Arc<LazyImage>, Error> {
    let (reference, rec) = crate::image::resolve(&svc.client, &svc.store, image, platform).await?;
    svc.images.get(svc, &reference, rec, progress, early).await
}

/// Open the image `image` exactly as the manifest `manifest` (which the store has: it was
/// mounted before), shared like [`open_image`].
async fn open_pinned(
    svc: &Services,
    image: &str,
    manifest: crate::digest::Digest,
) -> Result<Arc<LazyImage>, Error> {
    let reference: crate::reference::Reference = image
        .parse()
        .map_err(|e| Error::Image(crate::image::Error::from(e)))?;
    let rec = svc.store.find_image(&manifest.to_string())?;
    svc.images
        .get(svc, &reference, rec, &Progress::silent(), Early::default())
        .await
}

/// Read `warm` (`warm.rs`) into the cache in the background, if the config wants it. With a
/// profile `prefetch`, once it is known whether a recorded profile guides it (see
/// [`prefetch::ProfilePrefetch::guided`]); if one does, only the user database is read
/// (the launcher's, not in a profile of the container's reads).
fn start_warm(svc: &Services, lazy: &Arc<LazyImage>, mut warm: warm::WarmList, prefetch: bool) {
    if svc.config.warm_start && !warm.is_empty() {
        let max = warm::LAUNCH_MAX_BYTES;
        let (cache, lazy) = (svc.cache.clone(), lazy.clone());
        tokio::spawn(async move {
            if prefetch && lazy.profile_prefetch.wait_guided(GUIDE_WAIT).await {
                warm.retain(|alts| {
                    alts.iter()
                        .any(|p| warm::BEFORE_START.contains(&p.as_str()))
                });
            }
            warm::warm(cache, lazy, warm, max).await
        });
    }
}

/// How long the launch warm-up waits to learn whether a recorded profile guides the
/// prefetch (the profile is asked for while the image is opened: it is most often known by
/// the time the warm-up starts).
const GUIDE_WAIT: std::time::Duration = std::time::Duration::from_millis(300);

/// Mount an image (with an optional upper) and start its background prefetch.
pub async fn mount_image(
    svc: &Services,
    spec: MountSpec<'_>,
    progress: &Progress,
) -> Result<Served, Error> {
    let MountSpec {
        image,
        platform,
        mountpoint: mp,
        upper,
        prefetch,
        passthrough,
        allow_other,
        warm,
    } = spec;
    let started = std::time::Instant::now();
    let cache_at_start = svc.cache.stats.snapshot();
    lazy::tune_allocator();
    let early = Early {
        user_db: svc.config.warm_start && warm::has_user_db(&warm),
        profile: prefetch,
    };
    let lazy = open_image(svc, image, platform, progress, early).await?;
    start_warm(svc, &lazy, warm, prefetch);
    let fs = union_over(&lazy, upper)?;
    let opts = fuse_options(&lazy, passthrough, allow_other);
    let rt = tokio::runtime::Handle::current();
    let handle = crate::fuse::mount(Arc::new(fs), mp, opts, rt)?;
    Ok(start(
        svc,
        handle,
        lazy,
        prefetch,
        (started, cache_at_start),
    ))
}

/// The union of an open image's layers with an optional (upper, work) pair.
fn union_over(lazy: &LazyImage, upper: Option<(PathBuf, PathBuf)>) -> Result<UnionFs, Error> {
    let upper = match upper {
        Some((u, w)) => {
            for d in [&u, &w] {
                std::fs::create_dir_all(d).map_err(io_err(d))?;
            }
            let path = u.clone();
            Some(Upper::open(u, w).map_err(|e| Error::Upper {
                path,
                source: Box::new(e),
            })?)
        }
        None => None,
    };
    let rt = tokio::runtime::Handle::current();
    // A character device 0/0 a user makes is a device (marked in the upper, docs/overlay.md),
    // as on ext4 and in `strata overlay`; kernel overlayfs refuses it.
    let opts = UnionOptions {
        allow_chardev00: true,
        ..UnionOptions::default()
    };
    Ok(
        UnionFs::new(lazy.tree.clone(), lazy.lowers.clone(), upper, Some(rt))
            .map_err(|e| Error::Union(Box::new(e)))?
            .with_options(opts),
    )
}

/// FUSE options of an image mount. Upper files get passthrough only when asked
/// (`passthrough`), unlike `MountOptions::default()`: these mounts may be handed to a
/// restarted daemon, and a successor cannot reuse the backing ids its predecessor registered,
/// so a file kept open by passthrough across the restart could not be opened again (the
/// kernel refuses another backing file, or a cached open, for that inode until it closes).
fn fuse_options(
    lazy: &LazyImage,
    passthrough: bool,
    allow_other: bool,
) -> crate::fuse::MountOptions {
    crate::fuse::MountOptions {
        read_only: false,
        passthrough,
        upper_passthrough: passthrough,
        allow_other,
        fsname: format!("strata:{}", lazy.reference),
        ..Default::default()
    }
}

/// A served mount of `lazy` on `handle`, with its background prefetch started if asked.
fn start(
    svc: &Services,
    handle: crate::fuse::MountHandle,
    lazy: Arc<LazyImage>,
    prefetch: bool,
    (started, cache_at_start): (std::time::Instant, crate::cache::StatsSnapshot),
) -> Served {
    let prefetch_done = Arc::new(std::sync::atomic::AtomicBool::new(!prefetch));
    if !prefetch {
        lazy.profile_prefetch.no_prefetch();
    }
    let prefetch = prefetch.then(|| {
        let (store, cache, lazy, done, client) = (
            svc.store.clone(),
            svc.cache.clone(),
            lazy.clone(),
            prefetch_done.clone(),
            svc.client.clone(),
        );
        let source = svc.config.prefetch_profile;
        tokio::spawn(async move {
            match prefetch::prefetch(store, cache, lazy, client, source).await {
                Ok(()) => done.store(true, std::sync::atomic::Ordering::Relaxed),
                Err(e) => tracing::warn!("prefetch stopped: {e}"),
            }
        })
    });
    let record_path = record_path(svc.store.root(), handle.mountpoint());
    Served {
        handle,
        lazy,
        cache: svc.cache.clone(),
        record_path,
        started,
        cache_at_start,
        prefetch,
        prefetch_done,
    }
}

/// Whether `p` is a mount point (per /proc/self/mountinfo).
pub fn is_mounted(p: &Path) -> bool {
    crate::fuse::is_mounted(p)
}

/// Unmount `mountpoint` (`force`: detach it even if busy or its daemon is gone) and wait
/// briefly for the process that served it to exit.
pub fn unmount(store: &Store, mountpoint: &Path, force: bool) -> Result<(), Error> {
    let mp = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    let flags = if force {
        nix::mount::MntFlags::MNT_DETACH
    } else {
        nix::mount::MntFlags::empty()
    };
    let rec = read_record(store, &mp).ok().flatten();
    match nix::mount::umount2(&mp, flags) {
        Ok(()) => {}
        Err(nix::errno::Errno::ENOTCONN) | Err(nix::errno::Errno::EBUSY) if !force => {
            return Err(Error::Busy(mp))
        }
        Err(e) => {
            return Err(Error::Io {
                path: mp,
                source: e.into(),
            })
        }
    }
    if let Some(r) = rec {
        // Wait briefly for the serving process to let go of it: it removes the record when
        // the mount is shut down (a one-mount process then exits; a daemon serves on).
        let path = record_path(store.root(), &mp);
        for _ in 0..100 {
            if !path.exists() || !Path::new(&format!("/proc/{}", r.pid)).exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let _ = std::fs::remove_file(record_path(store.root(), &mp));
    Ok(())
}
