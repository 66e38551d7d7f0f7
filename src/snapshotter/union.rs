//! Whether an active snapshot can be one strata union mount of its image (config
//! `snapshotter-rootfs: union`): its parent chain, bottom first, must be exactly the layers
//! of one image (the image named by the top parent: a remote snapshot's record, or the CRI
//! labels its Prepare carried), and every layer of that image must have a lazy index. Layers
//! in the chain may be remote snapshots or extracted ones (a base layer shared with an image
//! that has no index was extracted for that one): the union reads them all lazily. Also
//! what the container will read first (the image's default command, `mount::warm`).
//!
//! Calls `image` (resolve, lazy index lookup), `store` (the image config), `launcher` (the
//! start command from the config) and `mount::warm` (the warm list) only.

use super::meta::Record;
use super::{Error, IMAGE_REF_LABEL, LAYER_LABEL, MANIFEST_LABEL};
use crate::digest::Digest;
use crate::mount::warm::WarmList;
use crate::mount::Services;
use crate::reference::Reference;

/// The image an active snapshot's union mount serves.
pub struct UnionImage {
    /// Pinned to its manifest digest (`host/repo@sha256:...`).
    pub image: String,
    pub warm: WarmList,
}

/// The layer a committed snapshot holds, as its record knows it.
fn layer_of(rec: &Record) -> Option<Digest> {
    match &rec.remote {
        Some(r) => Some(r.layer),
        None => rec.labels.get(LAYER_LABEL)?.parse().ok(),
    }
}

/// The image (pinned) a committed snapshot was made for, as its record knows it.
fn image_of(rec: &Record) -> Option<String> {
    if let Some(r) = &rec.remote {
        return Some(r.image.clone());
    }
    let reference: Reference = rec.labels.get(IMAGE_REF_LABEL)?.parse().ok()?;
    let manifest: Digest = rec.labels.get(MANIFEST_LABEL)?.parse().ok()?;
    Some(reference.with_digest(manifest).to_string())
}

/// The image whose layers are exactly `chain` (the parents of an active snapshot, nearest
/// first) and can all be read lazily; `None` when there is no such image.
pub async fn whole_image(svc: &Services, chain: &[Record]) -> Result<Option<UnionImage>, Error> {
    let Some(top) = chain.first() else {
        return Ok(None);
    };
    let Some(pinned) = image_of(top) else {
        return Ok(None);
    };
    let Some(layers) = chain.iter().rev().map(layer_of).collect::<Option<Vec<_>>>() else {
        return Ok(None);
    };
    let (reference, rec) = crate::image::resolve(&svc.client, &svc.store, &pinned, None).await?;
    if rec.layers.len() != layers.len()
        || rec.layers.iter().zip(&layers).any(|(l, d)| l.digest != *d)
    {
        tracing::info!(image = %pinned, "the snapshot's parents are not that image's layers: kernel overlayfs");
        return Ok(None);
    }
    // A remote top parent was made only after every layer of its image had an index
    // (`remote::lazy_layer`): asked again only for an extracted one.
    if top.remote.is_none() && super::remote::layers_without_index(svc, &reference, &rec).await? > 0
    {
        return Ok(None);
    }
    let warm = match svc.store.config(&rec) {
        Ok((config, _)) => {
            let opts = crate::launcher::RunOptions::default();
            match crate::launcher::bundle::start_command(&config, &opts) {
                Some((argv, path, cwd)) => crate::mount::warm::for_command(&argv, &path, &cwd),
                None => Vec::new(),
            }
        }
        Err(_) => Vec::new(),
    };
    Ok(Some(UnionImage {
        image: pinned,
        warm,
    }))
}
