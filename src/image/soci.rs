//! SOCI indexes published by AWS's SOCI tools, read as lazy layer indexes: images indexed
//! with `soci create` / `soci convert` mount lazily without `strata index`.
//!
//! A SOCI index is an OCI image manifest whose config media type is its artifact type
//! ([`V1_ARTIFACT_TYPE`] or [`V2_ARTIFACT_TYPE`]) and whose layers are zTOC blobs (media type
//! `application/octet-stream`, annotation [`LAYER_DIGEST`] naming the image layer). Found:
//! - **v2** (bound): the image manifest's own annotation [`INDEX_DIGEST`] names it (as `soci
//!   convert` writes it), or the image index the image was resolved through lists it (entry
//!   of artifact type v2 whose [`MANIFEST_DIGEST`] annotation names the image manifest). The
//!   digest the user named covers it: trusted under every `index-trust`, from any endpoint;
//! - **v1** (unbound): a referrer of the image manifest (artifact type v1, `subject` the image
//!   manifest), through the referrers API or the `sha256-<hex>` tag; believed under
//!   `index-trust: registry` only as listed by the image's own registry, never a mirror, and
//!   under `signed` only with a valid cosign signature by a configured key, from any endpoint
//!   (the same rules as strata's unbound sidecars, `bind.rs`, `signed.rs`).
//!
//! The index manifest and the zTOCs are fetched by digest (digest-checked, so any endpoint
//! may serve them); each zTOC becomes a strata index file through
//! [`layer::soci::index_from_ztoc`] (written to a temp file, moved into `indexes/` only when
//! valid). Calls `registry`, `store`, `layer`, `oci` and `index.rs`/`bind.rs`/`artifact.rs`/
//! `signed.rs`; used by
//! `index.rs`'s `lazy_indexes`, after strata's own sidecar.

use super::artifact::find_artifact;
use super::bind::{self, Mark};
use super::index::{index_path, IndexSource};
use super::{Error, Progress};
use crate::config::IndexTrust;
use crate::digest::Digest;
use crate::layer;
use crate::oci::{AnyManifest, ImageIndex, ImageManifest};
use crate::reference::Reference;
use crate::registry::{Client, Op};
use crate::store::{ImageRecord, Store};
use std::collections::BTreeSet;

pub const V1_ARTIFACT_TYPE: &str = "application/vnd.amazon.soci.index.v1+json";
pub const V2_ARTIFACT_TYPE: &str = "application/vnd.amazon.soci.index.v2+json";
/// On a zTOC descriptor: the image layer it indexes.
pub const LAYER_DIGEST: &str = "com.amazon.soci.image-layer-digest";
/// On an image manifest (SOCI-enabled image, v2): its SOCI index.
pub const INDEX_DIGEST: &str = "com.amazon.soci.index-digest";
/// On a SOCI index entry of an image index (v2): the image manifest it indexes.
pub const MANIFEST_DIGEST: &str = "com.amazon.soci.image-manifest-digest";
/// Largest zTOC accepted.
const MAX_ZTOC_BYTES: usize = 256 << 20;

/// The v2 SOCI index bound to `rec`: named by its manifest's annotation, else by the image
/// index it was resolved through (both digest-checked in the store).
fn bound_index(store: &Store, rec: &ImageRecord) -> Option<Digest> {
    let manifest = store.read_blob(&rec.manifest_digest).ok()?;
    if Digest::of(&manifest) != rec.manifest_digest {
        return None;
    }
    let m: Option<ImageManifest> = serde_json::from_slice(&manifest).ok();
    if let Some(d) = m
        .as_ref()
        .and_then(|m| m.annotations.as_ref()?.get(INDEX_DIGEST)?.parse().ok())
    {
        return Some(d);
    }
    let d = rec.index_digest?;
    let bytes = store.read_blob(&d).ok()?;
    if Digest::of(&bytes) != d {
        return None;
    }
    let idx: ImageIndex = serde_json::from_slice(&bytes).ok()?;
    let want = rec.manifest_digest.to_string();
    idx.manifests
        .iter()
        .rev()
        .find(|e| {
            e.artifact_type.as_deref() == Some(V2_ARTIFACT_TYPE)
                && e.annotation(MANIFEST_DIGEST) == Some(want.as_str())
        })
        .map(|e| e.digest)
}

/// Whether a SOCI index may be looked for under policy `trust`: always when one is bound to
/// the image, a referrer only under `registry` or `signed`.
fn usable(store: &Store, rec: &ImageRecord, trust: IndexTrust) -> bool {
    trust != IndexTrust::Bound || bound_index(store, rec).is_some()
}

/// The SOCI step of `index::lazy_indexes`: for the layers still `None` in `out`, the SOCI
/// index the policy allows (see the module docs), adopted with its trust mark. `listed`: the
/// referrers the caller has (the upstream's under `registry`, any endpoint's under `signed`). A failure to find or fetch one is logged.
pub(super) async fn fill(
    client: &Client,
    store: &Store,
    reference: &Reference,
    rec: &ImageRecord,
    out: &mut [Option<(std::sync::Arc<crate::layer::LayerIndex>, IndexSource)>],
    listed: Option<ImageIndex>,
    progress: &Progress,
) -> Result<(), Error> {
    let need: BTreeSet<Digest> = rec
        .layers
        .iter()
        .zip(out.iter())
        .filter(|(_, o)| o.is_none())
        .map(|(l, _)| l.digest)
        .collect();
    if need.is_empty() {
        return Ok(());
    }
    if !usable(store, rec, client.config().index_trust) {
        progress.line(&format!(
            "{reference}: index-trust is `bound` and the image names no bound index: \
             unbound sidecar and SOCI indexes are not used"
        ));
        return Ok(());
    }
    match soci_indexes(client, store, reference, rec, &need, listed, progress).await {
        Ok((found, mark, source)) => super::index::adopt(store, rec, out, &found, mark, source),
        Err(e) => {
            tracing::warn!("no SOCI index for {reference}: {e}");
            Ok(())
        }
    }
}

/// Fetch the SOCI index of `rec` (v2 bound, else under `registry` policy a v1 referrer from
/// the upstream, under `signed` a signed v1 referrer from any endpoint: `listed`, the
/// referrers the caller has already if it has them) and turn
/// its zTOCs for the layers in `need` into index files in `indexes/`.
/// Returns the layers that now have one, with the mark and source they are used under.
async fn soci_indexes(
    client: &Client,
    store: &Store,
    reference: &Reference,
    rec: &ImageRecord,
    need: &BTreeSet<Digest>,
    listed: Option<ImageIndex>,
    progress: &Progress,
) -> Result<(BTreeSet<Digest>, Mark, IndexSource), Error> {
    let trust = client.config().index_trust;
    let (digest, soci, mark, source) = match bound_index(store, rec) {
        Some(d) => {
            let m = client.get_manifest(&reference.with_digest(d)).await?;
            let AnyManifest::Image(m) = m.manifest else {
                return Err(invalid(d, "not an image manifest"));
            };
            (d, m, Mark::Bound, IndexSource::SociBound)
        }
        None if trust == IndexTrust::Registry => {
            let referrers = match listed {
                Some(l) => l,
                None => {
                    client
                        .referrers_via(&reference.repo(), &rec.manifest_digest, Op::PullUpstream)
                        .await?
                        .0
                }
            };
            let Some((d, m)) = find_artifact(
                client,
                reference,
                rec,
                &referrers,
                V1_ARTIFACT_TYPE,
                "SOCI index",
            )
            .await?
            else {
                return Ok((BTreeSet::new(), Mark::Registry, IndexSource::Soci));
            };
            (d, m, Mark::Registry, IndexSource::Soci)
        }
        None if trust == IndexTrust::Signed => {
            // Any endpoint's list: only a candidate whose signature verifies is used.
            let referrers = match listed {
                Some(l) => l,
                None => {
                    client
                        .referrers_via(&reference.repo(), &rec.manifest_digest, Op::Pull)
                        .await?
                        .0
                }
            };
            let none = Ok((BTreeSet::new(), Mark::Registry, IndexSource::Soci));
            let Some((one, mark)) = super::signed::pick(
                client,
                reference,
                &referrers,
                V1_ARTIFACT_TYPE,
                "SOCI index",
                progress,
            )
            .await
            else {
                return none;
            };
            let found =
                find_artifact(client, reference, rec, &one, V1_ARTIFACT_TYPE, "SOCI index").await?;
            let Some((d, m)) = found else {
                return none;
            };
            (d, m, mark, IndexSource::SociSigned)
        }
        None => return Ok((BTreeSet::new(), Mark::Registry, IndexSource::Soci)),
    };
    let want_type = match source {
        IndexSource::SociBound => V2_ARTIFACT_TYPE,
        _ => V1_ARTIFACT_TYPE,
    };
    if soci.config.media_type != want_type {
        return Err(invalid(
            digest,
            &format!(
                "config media type {} is not {want_type}",
                soci.config.media_type
            ),
        ));
    }
    let mut found = BTreeSet::new();
    for d in &soci.layers {
        let Some(layer) = d
            .annotation(LAYER_DIGEST)
            .and_then(|s| s.parse::<Digest>().ok())
        else {
            continue;
        };
        let Some(image_layer) = rec.layers.iter().find(|l| l.digest == layer) else {
            continue;
        };
        if d.media_type != layer::soci::ZTOC_MEDIA_TYPE || !need.contains(&layer) {
            continue;
        }
        let compression = match layer::compression_for_media_type(&image_layer.media_type) {
            Ok(c @ (layer::Compression::Gzip | layer::Compression::Tar)) => c,
            _ => continue,
        };
        match fetch_ztoc(client, store, reference, d, image_layer, compression).await {
            Ok(()) => {
                found.insert(layer);
            }
            Err(e) => {
                let msg = format!(
                    "{}: SOCI zTOC {} not used: {}",
                    layer.short(),
                    d.digest,
                    crate::report::chain(&e)
                );
                tracing::warn!(layer = %layer, "{msg}");
                progress.line(&msg);
            }
        }
    }
    Ok((found, mark, source))
}

fn invalid(d: Digest, msg: &str) -> Error {
    Error::Invalid {
        what: format!("SOCI index {d}"),
        msg: msg.into(),
    }
}

/// Download one zTOC (digest-checked), convert it, and only then move the index into place.
async fn fetch_ztoc(
    client: &Client,
    store: &Store,
    reference: &Reference,
    desc: &crate::oci::Descriptor,
    image_layer: &crate::oci::Descriptor,
    compression: layer::Compression,
) -> Result<(), Error> {
    let body = client
        .get_blob_verified(&reference.repo(), &desc.digest, MAX_ZTOC_BYTES)
        .await?;
    let tmp = store.temp_path("ztoc-index");
    let size = image_layer.size;
    let t2 = tmp.clone();
    let built = tokio::task::spawn_blocking(move || {
        layer::soci::index_from_ztoc(&body, compression, size, &t2).map(drop)
    })
    .await
    .map_err(|e| Error::Invalid {
        what: "zTOC conversion".into(),
        msg: e.to_string(),
    })?;
    if let Err(e) = built {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Layer {
            digest: image_layer.digest,
            source: Box::new(e.into()),
        });
    }
    // The new index replaces whatever this layer had, and what was kept for that one.
    bind::forget_index(store, &image_layer.digest);
    let path = index_path(store, &image_layer.digest);
    std::fs::rename(&tmp, &path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    Ok(())
}
