//! Whether a layer snapshot can be remote: the CRI labels name the image (reference and
//! manifest digest) and the layer; the image is resolved pinned to that manifest, and the
//! snapshot is remote only when every layer of the image has a lazy index (so opening the
//! image for the layer view downloads no layer). Mixed images fall back to extraction.
//!
//! Calls `image` (resolve, lazy index lookup) only.

use super::meta::Remote;
use super::{Error, IMAGE_REF_LABEL, LAYER_LABEL, MANIFEST_LABEL};
use crate::digest::Digest;
use crate::image::Progress;
use crate::mount::Services;
use crate::reference::Reference;
use std::collections::HashMap;

/// The remote layer the labels describe, if it can be served lazily; `None` when the labels
/// are not there (not a CRI pull) or some layer of the image has no lazy index.
pub async fn lazy_layer(
    svc: &Services,
    labels: &HashMap<String, String>,
) -> Result<Option<Remote>, Error> {
    let (Some(image), Some(manifest), Some(layer)) = (
        labels.get(IMAGE_REF_LABEL),
        labels.get(MANIFEST_LABEL),
        labels.get(LAYER_LABEL),
    ) else {
        return Ok(None);
    };
    let bad = |what: &str, v: &str, e: String| {
        Error::Invalid(format!("label {what}: {v:?} is not valid: {e}"))
    };
    let reference: Reference = image
        .parse()
        .map_err(|e: crate::reference::ReferenceError| {
            bad(IMAGE_REF_LABEL, image, e.to_string())
        })?;
    let manifest: Digest = manifest
        .parse()
        .map_err(|e: crate::digest::DigestError| bad(MANIFEST_LABEL, manifest, e.to_string()))?;
    let layer: Digest = layer
        .parse()
        .map_err(|e: crate::digest::DigestError| bad(LAYER_LABEL, layer, e.to_string()))?;
    let pinned = reference.with_digest(manifest).to_string();
    let (reference, rec) = crate::image::resolve(&svc.client, &svc.store, &pinned, None).await?;
    if !rec.layers.iter().any(|l| l.digest == layer) {
        return Err(Error::Invalid(format!(
            "image {pinned} has no layer {layer}"
        )));
    }
    let missing = layers_without_index(svc, &reference, &rec).await?;
    if missing > 0 {
        tracing::info!(
            image = %pinned,
            "{missing} layer(s) without a lazy index: the image is extracted, not served lazily"
        );
        return Ok(None);
    }
    Ok(Some(Remote {
        image: pinned,
        layer,
    }))
}

/// How many layers of image `rec` have no lazy index (none: it can be read lazily whole).
pub async fn layers_without_index(
    svc: &Services,
    reference: &Reference,
    rec: &crate::store::ImageRecord,
) -> Result<usize, Error> {
    let found = crate::image::index::lazy_indexes(
        &svc.client,
        &svc.store,
        reference,
        rec,
        &Progress::silent(),
    )
    .await?;
    Ok(found.iter().filter(|f| f.is_none()).count())
}
