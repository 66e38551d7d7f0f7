//! Published access profiles: the files a workload read at its first run, in first-read order,
//! pushed next to the image as an OCI artifact so that a cold start on another machine can
//! prefetch them from the first second (the role of eStargz's prioritised files and of
//! Nydus's prefetch lists, without rebuilding the image).
//!
//! The artifact is an OCI image manifest with `artifactType` [`PROFILE_ARTIFACT_TYPE`], the
//! empty config, one layer (the profile JSON, [`PROFILE_MEDIA_TYPE`]: `[[layer index, path],
//! ...]`, layer index counted from the bottom of the subject image) and `subject` = the image
//! manifest; it is found like the index sidecar (referrers API, else the `sha256-<hex>` tag).
//! A profile only decides what is fetched early: every byte is still verified by the cache, so
//! a wrong or hostile profile can cost bandwidth, never correctness. Sizes are bounded.

use super::Error;
use crate::digest::Digest;
use crate::oci::Descriptor;
use crate::reference::Reference;
use crate::registry::Client;
use crate::store::{ImageRecord, Store};
use bytes::Bytes;
use std::path::PathBuf;

pub const PROFILE_ARTIFACT_TYPE: &str = "application/vnd.strata.profile.v1";
pub const PROFILE_MEDIA_TYPE: &str = "application/vnd.strata.profile.v1+json";
/// Largest profile blob accepted from a registry.
const MAX_PROFILE_BYTES: u64 = 16 << 20;
/// Most files a profile may name (as many as a recorded one keeps).
const MAX_PROFILE_FILES: usize = 100_000;

/// One profile: (layer index from the bottom, path in that layer), first read first.
pub type Profile = Vec<(usize, String)>;

/// Where the profile recorded on this machine for `manifest` is kept.
pub fn local_path(store: &Store, manifest: &Digest) -> PathBuf {
    store
        .root()
        .join("profiles")
        .join(format!("{}.json", manifest.hex()))
}

/// The profile recorded on this machine, if any.
pub fn local(store: &Store, manifest: &Digest) -> Option<Profile> {
    store.read_json(&local_path(store, manifest)).ok().flatten()
}

/// Keep `profile` as this machine's profile of `manifest` unless one exists.
pub fn keep(store: &Store, manifest: &Digest, profile: &Profile) {
    let path = local_path(store, manifest);
    if profile.is_empty() || path.exists() {
        return;
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = store.write_json(&path, profile) {
        tracing::warn!("saving access profile: {e}");
    }
}

/// Check a profile against the image it is for.
fn validate(p: &Profile, layers: usize, what: &str) -> Result<(), Error> {
    let bad = |msg: String| Error::Invalid {
        what: what.to_string(),
        msg,
    };
    if p.len() > MAX_PROFILE_FILES {
        return Err(bad(format!(
            "{} files (at most {MAX_PROFILE_FILES})",
            p.len()
        )));
    }
    if let Some((l, path)) = p.iter().find(|(l, _)| *l >= layers) {
        return Err(bad(format!(
            "{path:?} is in layer {l}, the image has {layers} layers"
        )));
    }
    Ok(())
}

/// `strata profile push REF`: publish this machine's profile of the image. Returns the
/// artifact digest.
pub async fn push(
    client: &Client,
    store: &Store,
    reference: &Reference,
    rec: &ImageRecord,
) -> Result<Digest, Error> {
    let Some(profile) = local(store, &rec.manifest_digest) else {
        return Err(Error::Invalid {
            what: reference.to_string(),
            msg: "no access profile recorded for this image on this machine: run the workload \
                  once with `strata run` (or read it through `strata mount`) first"
                .into(),
        });
    };
    validate(&profile, rec.layers.len(), "access profile")?;
    let body = Bytes::from(serde_json::to_vec(&profile).map_err(|e| Error::Invalid {
        what: "access profile".into(),
        msg: e.to_string(),
    })?);
    let profile_digest = client.upload_bytes(&reference.repo(), body.clone()).await?;
    let layer = Descriptor::new(PROFILE_MEDIA_TYPE, profile_digest, body.len() as u64);
    super::artifact::publish_artifact(
        client,
        store,
        reference,
        rec,
        PROFILE_ARTIFACT_TYPE,
        vec![layer],
        Default::default(),
    )
    .await
    .map(|(d, _)| d)
}

/// The newest profile published for the image, if any (checked: size, layers, JSON).
pub async fn fetch(
    client: &Client,
    reference: &Reference,
    rec: &ImageRecord,
) -> Result<Option<Profile>, Error> {
    let (referrers, _) = client
        .referrers(&reference.repo(), &rec.manifest_digest)
        .await?;
    let Some((art, am)) = super::artifact::find_artifact(
        client,
        reference,
        rec,
        &referrers,
        PROFILE_ARTIFACT_TYPE,
        "profile artifact",
    )
    .await?
    else {
        return Ok(None);
    };
    let what = format!("profile artifact {art}");
    let bad = |msg: &str| Error::Invalid {
        what: what.clone(),
        msg: msg.into(),
    };
    let Some(layer) = am
        .layers
        .iter()
        .find(|d| d.media_type == PROFILE_MEDIA_TYPE)
    else {
        return Err(bad("no profile layer"));
    };
    if layer.size > MAX_PROFILE_BYTES {
        return Err(bad("profile larger than 16 MiB"));
    }
    let body = client
        .get_blob_verified(&reference.repo(), &layer.digest, layer.size as usize)
        .await?;
    let profile: Profile =
        serde_json::from_slice(&body).map_err(|e| bad(&format!("profile JSON: {e}")))?;
    validate(&profile, rec.layers.len(), &what)?;
    Ok(Some(profile))
}
