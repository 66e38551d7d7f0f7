//! Layer indexes looked up before the mount asks: a cold `strata run` resolves its image in
//! the CLI, and as soon as the manifest is in (stored in the shared store) and before the
//! config is fetched, it hands the daemon the image's name and a record made from the
//! manifest (daemon request `Lookup`); the daemon starts the layer-index lookup
//! (`image::index::lazy_indexes`: sidecar referrers, heads, TOCs) at once. The mount of that
//! image takes the lookup (in flight or done) instead of starting its own when the record it
//! opens has the same manifest, layers and image index; a lookup nobody takes expires.
//!
//! Calls `image` (the index lookup); used by `images.rs` and the daemon.

use crate::digest::Digest;
use crate::image::alias;
use crate::image::index::{lazy_indexes_with, LazyIndexes};
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

/// A lookup in flight or done; `None`: it failed (the mount looks up again, with its errors).
type Lookup = Shared<BoxFuture<'static, Option<LazyIndexes>>>;

struct Slot {
    /// A mount took the lookup: kept (until it expires) so that other runs of the image,
    /// which share that mount's open image, do not start another.
    taken: bool,
    repo: String,
    layers: Vec<Digest>,
    index: Option<Digest>,
    lookup: Lookup,
    at: Instant,
}

/// Early lookups of this process, by manifest digest.
#[derive(Default)]
pub struct EarlyIndexes {
    slots: Mutex<HashMap<Digest, Slot>>,
    /// Index-alias fetches by repository (`name`), started on `Connect`, taken by a lookup.
    aliases: Mutex<HashMap<String, (Instant, alias::Early)>>,
}

impl EarlyIndexes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A cold run of `reference` begins: the fetch of its tag's index alias, to be polled by
    /// the caller (before it opens other connections to the registry) and taken by the
    /// lookup that follows; `None` without a tag or under another trust than `registry`.
    pub fn connect(&self, client: &Arc<Client>, reference: &Reference) -> Option<alias::Early> {
        if client.config().index_trust != crate::config::IndexTrust::Registry {
            return None;
        }
        let early = alias::fetch(client.clone(), reference)?;
        let mut aliases = self.aliases.lock().unwrap_or_else(|p| p.into_inner());
        aliases.retain(|_, (at, _)| at.elapsed() < KEEP);
        aliases.insert(reference.name(), (Instant::now(), early.clone()));
        Some(early)
    }

    /// Start the layer-index lookup of `rec` (image `reference`) in the background, unless
    /// one for the same manifest was started in the last minute (taken or not). Must run
    /// inside the runtime.
    pub fn start(
        &self,
        client: &Arc<Client>,
        store: &Arc<Store>,
        reference: Reference,
        rec: ImageRecord,
    ) {
        let mut slots = self.lock();
        slots.retain(|_, s| s.at.elapsed() < KEEP);
        if slots.contains_key(&rec.manifest_digest) {
            return;
        }
        let key = rec.manifest_digest;
        let alias = self
            .aliases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&reference.name())
            .filter(|(at, _)| at.elapsed() < KEEP)
            .map(|(_, a)| a);
        let slot = Slot {
            taken: false,
            repo: reference.name(),
            layers: rec.layers.iter().map(|l| l.digest).collect(),
            index: rec.index_digest,
            lookup: {
                let (client, store) = (client.clone(), store.clone());
                async move {
                    let silent = Progress::silent();
                    lazy_indexes_with(&client, &store, &reference, &rec, &silent, alias)
                        .await
                        .map_err(|e| tracing::debug!(%reference, "early index lookup: {e}"))
                        .ok()
                }
                .boxed()
                .shared()
            },
            at: Instant::now(),
        };
        // Runs now, not when first awaited: while the CLI fetches the config.
        tokio::spawn(slot.lookup.clone());
        slots.insert(key, slot);
    }

    /// What the early lookup for `rec` (image `reference`) found, if one was started for the
    /// same repository, manifest, layers and image index; `None` when there is none or it
    /// failed. Never waits for anything but that lookup. A lookup is taken once: a later
    /// mount of the image shares the open image or looks up again.
    pub fn take(
        &self,
        reference: &Reference,
        rec: &ImageRecord,
    ) -> BoxFuture<'static, Option<LazyIndexes>> {
        let found = {
            let mut slots = self.lock();
            slots.retain(|_, s| s.at.elapsed() < KEEP);
            slots.get_mut(&rec.manifest_digest).and_then(|s| {
                let same = !s.taken
                    && s.repo == reference.name()
                    && s.layers.len() == rec.layers.len()
                    && s.layers
                        .iter()
                        .zip(&rec.layers)
                        .all(|(a, b)| *a == b.digest)
                    && s.index == rec.index_digest;
                s.taken = true;
                same.then(|| s.lookup.clone())
            })
        };
        let name = reference.name();
        async move {
            let found = found?.await;
            if found.is_some() {
                tracing::debug!(image = %name, "layer indexes looked up early");
            }
            found
        }
        .boxed()
    }
}
