//! Layer indexes looked up before the mount asks: when a `strata run` connects to the daemon
//! it names its image (daemon request `Connect`), and while the CLI resolves the name and
//! fetches the config, the daemon resolves the manifest itself and starts the layer-index
//! lookup (`image::index::lazy_indexes`: sidecar referrers, heads, TOCs) from it. The mount
//! of that image takes the lookup (in flight or done; waiting for the daemon's own resolve
//! of the name if that is still running) instead of starting its own, when the record it
//! opens has the same manifest, layers and image index; else the lookup is left to expire.
//! Only for names the store does not know (a known image opens from local files anyway).
//!
//! Calls `image` (resolve the manifest, the index lookup); used by `images.rs` and the daemon.

use crate::digest::Digest;
use crate::image::index::{lazy_indexes, LazyIndexes};
use crate::image::Progress;
use crate::reference::Reference;
use crate::registry::Client;
use crate::store::{ImageRecord, Store};
use futures::future::{BoxFuture, FutureExt, Shared};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A lookup nobody took is dropped after this.
const KEEP: Duration = Duration::from_secs(60);
/// How long a mount waits for the daemon's own resolve of its name (the resolve started
/// before the CLI's, so it is normally done by then).
const WAIT_RESOLVE: Duration = Duration::from_secs(1);

/// A lookup in flight or done; `None`: it failed (the mount looks up again, with its errors).
type Lookup = Shared<BoxFuture<'static, Option<LazyIndexes>>>;

struct Slot {
    layers: Vec<Digest>,
    index: Option<Digest>,
    lookup: Lookup,
    at: Instant,
}

#[derive(Default)]
struct Table {
    /// Lookups by manifest digest.
    slots: HashMap<Digest, Slot>,
    /// Resolves by repository name (`Reference::name`), in flight or done (kept a while).
    resolving: HashMap<String, (Shared<BoxFuture<'static, ()>>, Instant)>,
}

/// Early lookups of this process.
#[derive(Default)]
pub struct EarlyIndexes {
    table: Mutex<Table>,
}

impl EarlyIndexes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolve `image`'s manifest and start its layer-index lookup, in the background (the
    /// name is registered before this returns), unless that was done for the name in the
    /// last minute. Must run inside the runtime.
    pub fn start(self: &Arc<Self>, client: &Arc<Client>, store: &Arc<Store>, image: String) {
        let Ok(name) = image.parse::<Reference>().map(|r| r.name()) else {
            return;
        };
        {
            // One early resolve per name a minute: concurrent runs of one image share it (and
            // their mounts share the open image).
            let mut t = self.lock();
            t.resolving.retain(|_, (_, at)| at.elapsed() < KEEP);
            if t.resolving.contains_key(&name) {
                return;
            }
        }
        let (me, client, store) = (self.clone(), client.clone(), store.clone());
        let resolve = async move {
            let (reference, rec) =
                match crate::image::resolve_manifest(&client, &store, &image).await {
                    Ok(Some(r)) => r,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(%image, "no early index lookup: {e}");
                        return;
                    }
                };
            let key = rec.manifest_digest;
            let (layers, index) = (
                rec.layers.iter().map(|l| l.digest).collect(),
                rec.index_digest,
            );
            let lookup = async move {
                let found =
                    lazy_indexes(&client, &store, &reference, &rec, &Progress::silent()).await;
                found
                    .map_err(|e| tracing::debug!(%reference, "early index lookup: {e}"))
                    .ok()
            }
            .boxed()
            .shared();
            // Runs now, not when first awaited: while the CLI is still resolving.
            tokio::spawn(lookup.clone());
            let slot = Slot {
                layers,
                index,
                lookup,
                at: Instant::now(),
            };
            me.lock().slots.insert(key, slot);
        }
        .boxed()
        .shared();
        tokio::spawn(resolve.clone());
        let mut t = self.lock();
        t.slots.retain(|_, s| s.at.elapsed() < KEEP);
        t.resolving.insert(name, (resolve, Instant::now()));
    }

    /// What the early lookup for `rec` (image `reference`) found, if one was started for the
    /// same manifest, layers and image index; `None` when there is none or it failed. The
    /// lookup is taken: a later mount of the image shares the open image or looks up again.
    pub fn take(
        self: &Arc<Self>,
        reference: &Reference,
        rec: &ImageRecord,
    ) -> BoxFuture<'static, Option<LazyIndexes>> {
        let (me, name, rec) = (self.clone(), reference.name(), rec.clone());
        async move {
            let resolving = me.lock().resolving.get(&name).map(|(r, _)| r.clone());
            if let Some(r) = resolving {
                let _ = tokio::time::timeout(WAIT_RESOLVE, r).await;
            }
            let s = me.lock().slots.remove(&rec.manifest_digest)?;
            let same = s.layers.len() == rec.layers.len()
                && s.layers
                    .iter()
                    .zip(&rec.layers)
                    .all(|(a, b)| *a == b.digest)
                && s.index == rec.index_digest
                && s.at.elapsed() < KEEP;
            if !same {
                return None;
            }
            let found = s.lookup.await;
            if found.is_some() {
                tracing::debug!(image = %name, "layer indexes looked up early");
            }
            found
        }
        .boxed()
    }
}
