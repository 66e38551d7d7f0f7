//! Artifacts about an image (OCI 1.1 `subject` = its manifest), shared by the sidecar index
//! (`index.rs`), SOCI (`soci.rs`) and profile (`profile.rs`) code: publish one (updating the
//! referrers tag schema's index where the registry has no referrers API) and find the newest
//! of a type among the referrers, its manifest fetched by digest and its subject checked.
//!
//! Calls `registry` and `store`; the referrers list itself is the caller's (which endpoints
//! may answer it is a trust decision: `bind.rs`, `signed.rs`).

use super::Error;
use crate::digest::Digest;
use crate::oci::{Descriptor, ImageManifest, OCI_EMPTY, OCI_INDEX, OCI_MANIFEST};
use crate::reference::Reference;
use crate::registry::{referrers_tag, Client};
use crate::store::{ImageRecord, Store};
use bytes::Bytes;
use std::collections::BTreeMap;

/// Publish an artifact about image `rec` (layers already uploaded): an OCI manifest with
/// `artifact_type`, the empty config, `layers` and `subject` = the image manifest. Registries
/// without the referrers API get the `sha256-<hex>` fallback tag's index updated: an earlier
/// artifact of the same type is replaced, every other one kept. Returns the artifact's digest
/// and manifest bytes.
pub(super) async fn publish_artifact(
    client: &Client,
    store: &Store,
    reference: &Reference,
    rec: &ImageRecord,
    artifact_type: &str,
    layers: Vec<Descriptor>,
    annotations: BTreeMap<String, String>,
) -> Result<(Digest, Bytes), Error> {
    let repo = reference.repo();
    let json = |v: serde_json::Result<Vec<u8>>, what: &str| {
        v.map(Bytes::from).map_err(|e| Error::Invalid {
            what: what.into(),
            msg: e.to_string(),
        })
    };
    let empty = Bytes::from_static(b"{}");
    let empty_digest = client.upload_bytes(&repo, empty.clone()).await?;
    let manifest_size = store.read_blob(&rec.manifest_digest)?.len() as u64;
    let art = ImageManifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        artifact_type: Some(artifact_type.into()),
        config: Descriptor::new(OCI_EMPTY, empty_digest, empty.len() as u64),
        layers,
        subject: Some(Descriptor::new(
            &rec.manifest_media_type,
            rec.manifest_digest,
            manifest_size,
        )),
        annotations: Some({
            let mut a = annotations;
            a.insert(
                "org.opencontainers.image.created".to_string(),
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            );
            a
        }),
    };
    let body = json(serde_json::to_vec(&art), "artifact")?;
    let art_digest = Digest::of(&body);
    client
        .put_manifest(&repo, &art_digest.to_string(), OCI_MANIFEST, body.clone())
        .await?;
    let (mut idx, from_tag) = client.referrers(&repo, &rec.manifest_digest).await?;
    if from_tag {
        idx.manifests.retain(|d| {
            d.digest != art_digest && d.artifact_type.as_deref() != Some(artifact_type)
        });
        // As the referrers API lists it: with the manifest's annotations.
        let mut d = Descriptor::new(OCI_MANIFEST, art_digest, body.len() as u64);
        d.artifact_type = Some(artifact_type.into());
        d.annotations = art.annotations.clone();
        idx.manifests.push(d);
        idx.media_type = Some(OCI_INDEX.into());
        let ib = json(serde_json::to_vec(&idx), "referrers index")?;
        client
            .put_manifest(&repo, &referrers_tag(&rec.manifest_digest), OCI_INDEX, ib)
            .await?;
    }
    Ok((art_digest, body))
}

/// The newest artifact of `artifact_type` about image `rec` among `referrers`, with its
/// manifest checked to be an image manifest whose subject is `rec`'s manifest.
pub(super) async fn find_artifact(
    client: &Client,
    reference: &Reference,
    rec: &ImageRecord,
    referrers: &crate::oci::ImageIndex,
    artifact_type: &str,
    what: &str,
) -> Result<Option<(Digest, ImageManifest)>, Error> {
    let Some(art) = referrers
        .manifests
        .iter()
        .rev()
        .find(|d| d.artifact_type.as_deref() == Some(artifact_type))
    else {
        return Ok(None);
    };
    let bad = |msg: &str| Error::Invalid {
        what: format!("{what} {}", art.digest),
        msg: msg.into(),
    };
    let m = client
        .get_manifest(&reference.with_digest(art.digest))
        .await?;
    let crate::oci::AnyManifest::Image(am) = m.manifest else {
        return Err(bad("not a manifest"));
    };
    if am.subject.as_ref().map(|s| s.digest) != Some(rec.manifest_digest) {
        return Err(bad("subject is not this image's manifest"));
    }
    Ok(Some((art.digest, am)))
}
