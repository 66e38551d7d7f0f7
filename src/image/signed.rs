//! `index-trust: signed`: an unbound sidecar (or SOCI v1 index) is believed only when it carries
//! a cosign-compatible signature by one of the configured keys (`index-trust-keys`); and
//! `strata index --push --sign KEY` making such signatures.
//!
//! The signature of an artifact (manifest digest `sha256:HEX`) is found the way cosign keeps
//! it: the tag `sha256-HEX.sig` in the image's repository (`cosign.rs` has the format and the
//! check of one layer). Everything is fetched through any endpoint, mirrors included: the
//! `.sig` manifest by tag (what it says is checked, not where it came from), each payload blob
//! by digest (checked), the sidecar manifest by the digest the payload names (checked), and
//! its index blobs by the digests (or head digests) that manifest names. So a referrers list
//! from a mirror is fine: its candidates are tried newest first ([`MAX_CANDIDATES`]), the
//! first whose signature verifies is used, each refusal is logged with why; a mirror can hide
//! a signed sidecar (the layer is then fetched whole) but not slip in another. Where the tag is
//! missing, cosign's OCI 1.1 placement is looked up (a referrer of the artifact of type
//! [`SIG_ARTIFACT_TYPE`] with the same layers): one more referrers request, only then.
//!
//! Calls `registry` (manifests, blobs, uploads), `cosign` and `bind.rs`'s marks; used by
//! `index.rs` (sidecars, signing at push) and `soci.rs` (v1 indexes).

use super::bind::Mark;
use super::{Error, Progress};
use crate::cosign::{self, PublicKey};
use crate::digest::Digest;
use crate::oci::{AnyManifest, Descriptor, ImageIndex, ImageManifest, OCI_CONFIG, OCI_MANIFEST};
use crate::reference::Reference;
use crate::registry::{Client, Op};
use bytes::Bytes;
use std::collections::BTreeMap;

/// Referrers of one artifact type whose signatures are looked up, newest first.
pub const MAX_CANDIDATES: usize = 4;
/// Signature layers of one `.sig` manifest checked at most.
const MAX_SIGNATURES: usize = 16;
/// Artifact type of a cosign signature stored as an OCI 1.1 referrer of what it signs
/// (`cosign sign --registry-referrers-mode=oci-1-1`).
pub const SIG_ARTIFACT_TYPE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";

/// The configured keys (`index-trust-keys`), read at each use (they were checked when the
/// config was loaded); a key that no longer loads is logged and left out.
pub fn keys(client: &Client) -> Vec<PublicKey> {
    client
        .config()
        .index_trust_keys
        .iter()
        .filter_map(|p| match PublicKey::load(p) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!("index-trust-keys: {e}; key not used");
                None
            }
        })
        .collect()
}

/// Check the cosign signature of the artifact `artifact` in `reference`'s repository: some
/// layer of its `.sig` manifest (else of a signature referrer of it) is a payload naming
/// `artifact`, signed by one of `keys`. Returns the fingerprint of the key, or why not.
pub async fn verify(
    client: &Client,
    reference: &Reference,
    artifact: &Digest,
    keys: &[PublicKey],
) -> Result<Digest, String> {
    let tag = cosign::sig_tag(artifact);
    let mut why = Vec::new();
    let m = match client
        .get_manifest_via(&reference.repo().tag(tag.clone()), Op::Resolve)
        .await
    {
        Ok(m) => m,
        Err(crate::registry::Error::NotFound { .. }) => {
            return verify_referrers(client, reference, artifact, keys)
                .await
                .map_err(|e| format!("not signed (no tag {tag}; {e})"));
        }
        Err(e) => return Err(format!("fetching its signature {tag}: {e}")),
    };
    let AnyManifest::Image(m) = m.manifest else {
        return Err(format!("{tag} is not an image manifest"));
    };
    if let Some(k) = check_layers(client, reference, &m.layers, artifact, keys, &mut why).await {
        return Ok(k);
    }
    if why.is_empty() {
        why.push(format!("{tag} holds no {} layer", cosign::SIMPLESIGNING));
    }
    Err(why.join("; "))
}

/// cosign's OCI 1.1 placement: referrers of `artifact` of type [`SIG_ARTIFACT_TYPE`] (newest
/// first, at most [`MAX_CANDIDATES`]), each fetched by digest and checked as a `.sig` manifest.
async fn verify_referrers(
    client: &Client,
    reference: &Reference,
    artifact: &Digest,
    keys: &[PublicKey],
) -> Result<Digest, String> {
    let (listed, _) = client
        .referrers_via(&reference.repo(), artifact, Op::Pull)
        .await
        .map_err(|e| format!("its referrers: {e}"))?;
    let mut why = Vec::new();
    let sigs = listed.manifests.iter().rev();
    let sigs = sigs.filter(|d| d.artifact_type.as_deref() == Some(SIG_ARTIFACT_TYPE));
    for d in sigs.take(MAX_CANDIDATES) {
        let m = match client.get_manifest(&reference.with_digest(d.digest)).await {
            Ok(m) => m,
            Err(e) => {
                why.push(format!("signature referrer {}: {e}", d.digest));
                continue;
            }
        };
        let AnyManifest::Image(m) = m.manifest else {
            continue;
        };
        if let Some(k) = check_layers(client, reference, &m.layers, artifact, keys, &mut why).await
        {
            return Ok(k);
        }
    }
    if why.is_empty() {
        why.push("no signature referrer".into());
    }
    Err(why.join("; "))
}

/// The fingerprint of the key that signed `artifact` in one of `layers` (of a `.sig`
/// manifest), each refusal's reason added to `why`.
async fn check_layers(
    client: &Client,
    reference: &Reference,
    layers: &[Descriptor],
    artifact: &Digest,
    keys: &[PublicKey],
    why: &mut Vec<String>,
) -> Option<Digest> {
    let repo = reference.repo();
    let layers = layers
        .iter()
        .filter(|l| l.media_type == cosign::SIMPLESIGNING);
    for l in layers.take(MAX_SIGNATURES) {
        let Some(sig) = l.annotation(cosign::SIGNATURE_ANNOTATION) else {
            why.push(format!("layer {} has no signature annotation", l.digest));
            continue;
        };
        let payload = match client
            .get_blob_verified(&repo, &l.digest, cosign::MAX_PAYLOAD_BYTES)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                why.push(format!("payload {}: {e}", l.digest));
                continue;
            }
        };
        match cosign::verify_layer(keys, &payload, sig, artifact) {
            Ok(k) => {
                tracing::debug!("{artifact} signed by {}", k.path.display());
                return Some(k.fingerprint);
            }
            Err(e) => why.push(e),
        }
    }
    None
}

/// Under `signed`: the newest referrer of `artifact_type` (about `what`) in `listed` whose
/// signature verifies, as a one-entry referrers list (for `artifact::find_artifact`, which
/// fetches it by digest and checks its subject) with its trust mark; `None` when none does
/// (each refusal logged, naming why, and told through `progress`).
pub(super) async fn pick(
    client: &Client,
    reference: &Reference,
    listed: &ImageIndex,
    artifact_type: &str,
    what: &str,
    progress: &Progress,
) -> Option<(ImageIndex, Mark)> {
    let candidates: Vec<&Descriptor> = listed
        .manifests
        .iter()
        .rev()
        .filter(|d| d.artifact_type.as_deref() == Some(artifact_type))
        .take(MAX_CANDIDATES)
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let keys = keys(client);
    for d in candidates {
        match verify(client, reference, &d.digest, &keys).await {
            Ok(key) => {
                let one = ImageIndex {
                    manifests: vec![d.clone()],
                    ..listed.clone()
                };
                return Some((one, Mark::Signed(key)));
            }
            Err(why) => {
                tracing::warn!(
                    "ignoring {what} {} of {reference} under index-trust signed: {why}",
                    d.digest
                );
                progress.line(&format!(
                    "ignoring {what} {} (index-trust signed): {why}",
                    d.digest
                ));
            }
        }
    }
    None
}

/// Sign the artifact `artifact` of `reference`'s repository with `key` the way cosign does:
/// push the payload blob and the `sha256-HEX.sig` manifest (an image manifest whose config
/// lists the payloads as its rootfs, as cosign writes it), keeping the signatures already
/// there by other keys. Returns the `.sig` manifest's digest.
pub async fn sign_artifact(
    client: &Client,
    reference: &Reference,
    artifact: &Digest,
    key: &p256::ecdsa::SigningKey,
) -> Result<Digest, Error> {
    let repo = reference.repo();
    let tag = cosign::sig_tag(artifact);
    let payload = Bytes::from(cosign::payload(&reference.name(), artifact));
    let signature = cosign::sign(key, &payload);
    let payload_digest = client.upload_bytes(&repo, payload.clone()).await?;
    let mut layer = Descriptor::new(cosign::SIMPLESIGNING, payload_digest, payload.len() as u64);
    layer.annotations = Some(BTreeMap::from([(
        cosign::SIGNATURE_ANNOTATION.to_string(),
        signature,
    )]));
    // Earlier signatures (other keys, or other payloads of this artifact) are kept.
    let mut layers: Vec<Descriptor> = match client
        .get_manifest_via(&repo.tag(tag.clone()), Op::PullUpstream)
        .await
    {
        Ok(m) => match m.manifest {
            AnyManifest::Image(m) => m.layers,
            AnyManifest::Index(_) => Vec::new(),
        },
        Err(crate::registry::Error::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let mine = PublicKey::of(key).map_err(|msg| Error::Invalid {
        what: "signing key".into(),
        msg,
    })?;
    // A signature by this same key is replaced (re-signing is idempotent).
    let mut kept = Vec::new();
    for l in layers.drain(..) {
        let same_key = match (
            l.annotation(cosign::SIGNATURE_ANNOTATION),
            client
                .get_blob_verified(&repo, &l.digest, cosign::MAX_PAYLOAD_BYTES)
                .await,
        ) {
            (Some(sig), Ok(p)) => {
                cosign::verify_layer(std::slice::from_ref(&mine), &p, sig, artifact).is_ok()
            }
            _ => false,
        };
        if !same_key && l.media_type == cosign::SIMPLESIGNING {
            kept.push(l);
        }
    }
    kept.push(layer);
    let config = serde_json::json!({
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": kept.iter().map(|_| serde_json::json!({"created": "0001-01-01T00:00:00Z"})).collect::<Vec<_>>(),
        "os": "",
        "rootfs": {
            "type": "layers",
            "diff_ids": kept.iter().map(|l| l.digest.to_string()).collect::<Vec<_>>(),
        },
        "config": {},
    });
    let config = Bytes::from(config.to_string());
    let config_digest = client.upload_bytes(&repo, config.clone()).await?;
    let m = ImageManifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        artifact_type: None,
        config: Descriptor::new(OCI_CONFIG, config_digest, config.len() as u64),
        layers: kept,
        subject: None,
        annotations: None,
    };
    let body = Bytes::from(serde_json::to_vec(&m).map_err(|e| Error::Invalid {
        what: "signature manifest".into(),
        msg: e.to_string(),
    })?);
    let digest = Digest::of(&body);
    client.put_manifest(&repo, &tag, OCI_MANIFEST, body).await?;
    tracing::debug!(
        "signed {artifact} with key {}: {tag} = {digest}",
        mine.fingerprint
    );
    Ok(digest)
}

/// The sidecar step of `index::lazy_indexes` under `signed`: the referrers of `rec` from any
/// endpoint (returned for the SOCI step), the newest signed sidecar among them ([`pick`]) and
/// its index blobs for the layers in `need`; the layers that now have one, with the mark.
pub(super) async fn sidecar(
    client: &Client,
    store: &crate::store::Store,
    reference: &Reference,
    rec: &crate::store::ImageRecord,
    need: &std::collections::BTreeSet<Digest>,
    progress: &Progress,
) -> (
    Option<ImageIndex>,
    Result<(std::collections::BTreeSet<Digest>, Mark), Error>,
) {
    let listed = match client
        .referrers_via(&reference.repo(), &rec.manifest_digest, Op::Pull)
        .await
    {
        Ok((l, _)) => l,
        Err(e) => return (None, Err(e.into())),
    };
    let art = super::index::ARTIFACT_TYPE;
    let got = match pick(client, reference, &listed, art, "sidecar index", progress).await {
        Some((one, mark)) => {
            super::index::sidecar_indexes(client, store, reference, rec, need, Err(&one), progress)
                .await
                .map(|found| (found, mark))
        }
        None => Ok((Default::default(), Mark::Registry)),
    };
    (Some(listed), got)
}
