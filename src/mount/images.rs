//! Images opened for lazy reading, shared by every mount of one process: the first mount of
//! an image opens it (layer indexes, merged tree, cached layers) and later or concurrent
//! mounts of the same manifest get the same [`LazyImage`], so its index heads are fetched and
//! its tree is mapped once however many containers use it. Kept while a mount holds it.
//!
//! Calls the sibling `lazy` (opening), and `image::profile` to ask for the image's published
//! access profile while it is opened.

use super::lazy::{self, LazyImage};
use super::{Error, Services};
use crate::config::ProfileSource;
use crate::digest::Digest;
use crate::image::Progress;
use crate::reference::Reference;
use crate::store::ImageRecord;
use futures::future::{BoxFuture, FutureExt, Shared};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

type Opening = Shared<BoxFuture<'static, Result<Arc<LazyImage>, Arc<Error>>>>;

enum Slot {
    Opening(Opening),
    Open(Weak<LazyImage>),
}

/// The table of open images, keyed by manifest digest.
#[derive(Default)]
pub struct OpenImages {
    slots: Mutex<HashMap<Digest, Slot>>,
}

/// What the mount that opens an image wants started early.
#[derive(Debug, Clone, Copy, Default)]
pub struct Early {
    /// The user database (a container start reads it first): see `lazy::open`.
    pub user_db: bool,
    /// The published access profile (the mount prefetches).
    pub profile: bool,
}

impl OpenImages {
    /// The open image of `record`: shared if another mount has it open or is opening it.
    pub async fn get(
        &self,
        svc: &Services,
        reference: &Reference,
        record: ImageRecord,
        progress: &Progress,
        early: Early,
    ) -> Result<Arc<LazyImage>, Error> {
        let key = record.manifest_digest;
        let fut = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let found = match slots.get(&key) {
                Some(Slot::Open(w)) => match w.upgrade() {
                    Some(img) => return Ok(img),
                    None => None,
                },
                Some(Slot::Opening(f)) => Some(f.clone()),
                None => None,
            };
            found.unwrap_or_else(|| {
                let (svc, reference, progress) = (svc.clone(), reference.clone(), progress.clone());
                // The published profile (three round trips) is asked for while the indexes
                // and the tree are made, so the prefetch can start with the mount.
                let open_early = lazy::OpenEarly {
                    user_db: early.user_db,
                    indexes: Some(svc.early.take(&reference, &record)),
                };
                let early = (early.profile
                    && svc.config.prefetch_profile == ProfileSource::Registry
                    && crate::image::profile::local(&svc.store, &record.manifest_digest).is_none())
                .then(|| {
                    let (client, reference, record) =
                        (svc.client.clone(), reference.clone(), record.clone());
                    tokio::spawn(async move {
                        crate::image::profile::fetch(&client, &reference, &record).await
                    })
                });
                let f = async move {
                    lazy::open(
                        &svc.client,
                        &svc.store,
                        &svc.cache,
                        &reference,
                        record,
                        &progress,
                        open_early,
                    )
                    .await
                    .map(|img| {
                        *img.early_profile.lock().unwrap_or_else(|p| p.into_inner()) = early;
                        Arc::new(img)
                    })
                    .map_err(Arc::new)
                }
                .boxed()
                .shared();
                slots.insert(key, Slot::Opening(f.clone()));
                f
            })
        };
        let res = fut.await;
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        match &res {
            Ok(img) => {
                if svc.config.warm_libraries {
                    img.load_warm.arm(img, &svc.cache);
                }
                slots.insert(key, Slot::Open(Arc::downgrade(img)));
            }
            Err(_) => {
                if matches!(slots.get(&key), Some(Slot::Opening(_))) {
                    slots.remove(&key);
                }
            }
        }
        res.map_err(Error::Shared)
    }
}
