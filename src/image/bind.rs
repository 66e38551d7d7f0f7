//! Index trust: which layer index a mount may believe, and indexes bound to the image.
//!
//! A sidecar index found through the referrers API (or the `sha256-<hex>` tag) is vouched for
//! by nothing the image digest covers: whoever can add a referrer (push rights, a mirror on
//! the path) could publish span hashes that match altered layer bytes. Two answers:
//! - **bound indexes**: `strata index --push --bind` publishes an OCI image index whose
//!   entries are the image manifest(s) and, for the image, the sidecar artifact (with
//!   `artifactType` and the annotation [`BOUND_ANNOTATION`] naming the manifest). The digest of
//!   that image index covers the sidecar; a user who names it (or a tag pointing at it) gets
//!   the sidecar from it, never from the referrers list ([`bound_artifact`]);
//! - **policy** (`index-trust` in the config): `registry` (default) also trusts an unbound
//!   sidecar, but only as listed by the image's own registry (referrers fetched with
//!   `Op::PullUpstream`, never through a mirror); `bound` trusts none; `signed` trusts one
//!   that carries a cosign signature by a configured key, from any endpoint (`signed.rs`).
//!
//! Each index file in the store carries a trust mark (`indexes/<hex>.trust`: how it was
//! obtained) so that an index fetched under a laxer policy is not reused under a stricter one;
//! an index without a mark (older strata) is fetched again.
//!
//! Calls `registry` (manifests, uploads), `store` and `oci`; used by `index.rs`.

use super::index::{index_path, ARTIFACT_TYPE};
use super::Error;
use crate::config::IndexTrust;
use crate::digest::Digest;
use crate::oci::{Descriptor, ImageIndex, Platform, OCI_INDEX, OCI_MANIFEST};
use crate::reference::Reference;
use crate::registry::Client;
use crate::store::{ImageRecord, Store};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Annotation on a sidecar entry of a bound image index: the image manifest it describes.
pub const BOUND_ANNOTATION: &str = "dev.strata.index.subject";

/// How a stored layer index was obtained, from most to least trusted by the image digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Built here from the whole layer, its digest checked.
    Built,
    /// From the layer's eStargz TOC (its digest is a layer annotation).
    Estargz,
    /// From the layer's zstd:chunked TOC (its checksum is a layer annotation).
    ZstdChunked,
    /// From a sidecar bound to the image through the image index the user named.
    Bound,
    /// From an unbound sidecar (or SOCI v1 index) with a cosign signature by the key of
    /// this fingerprint (sha256 of its SubjectPublicKeyInfo DER).
    Signed(Digest),
    /// From an unbound sidecar listed by the image's own registry.
    Registry,
}

impl Mark {
    fn text(self) -> String {
        match self {
            Mark::Built => "built".into(),
            Mark::Estargz => "estargz".into(),
            Mark::ZstdChunked => "zstd-chunked".into(),
            Mark::Bound => "bound".into(),
            Mark::Signed(key) => format!("signed {key}"),
            Mark::Registry => "registry".into(),
        }
    }

    fn parse(s: &str) -> Option<Mark> {
        Some(match s.trim() {
            "built" => Mark::Built,
            "estargz" => Mark::Estargz,
            "zstd-chunked" => Mark::ZstdChunked,
            "bound" => Mark::Bound,
            "registry" => Mark::Registry,
            s => Mark::Signed(s.strip_prefix("signed ")?.parse().ok()?),
        })
    }

    /// Whether policy `trust` accepts an index obtained this way; `keys`: the fingerprints of
    /// the configured `index-trust-keys` (a signature by a key no longer configured is not).
    pub fn allowed(self, trust: IndexTrust, keys: &[Digest]) -> bool {
        match (trust, self) {
            (IndexTrust::Registry, _) => true,
            (_, Mark::Registry) => false,
            (IndexTrust::Bound, Mark::Signed(_)) => false,
            (IndexTrust::Signed, Mark::Signed(k)) => keys.contains(&k),
            _ => true,
        }
    }
}

fn mark_path(store: &Store, layer: &Digest) -> PathBuf {
    store
        .root()
        .join("indexes")
        .join(format!("{}.trust", layer.hex()))
}

/// The trust mark of the stored index of `layer` (`None`: no mark, or unreadable).
pub fn mark_of(store: &Store, layer: &Digest) -> Option<Mark> {
    std::fs::read_to_string(mark_path(store, layer))
        .ok()
        .and_then(|s| Mark::parse(&s))
}

/// Forget the trust mark of `layer`'s index (before its index file is replaced).
pub fn clear_mark(store: &Store, layer: &Digest) {
    let _ = std::fs::remove_file(mark_path(store, layer));
}

/// Record how the index of `layer` now in the store was obtained (after it was renamed into
/// place: a crash in between leaves no mark, which no policy trusts).
pub fn set_mark(store: &Store, layer: &Digest, mark: Mark) -> Result<(), Error> {
    let p = mark_path(store, layer);
    let tmp = store.temp_path("trust");
    std::fs::write(&tmp, mark.text())
        .and_then(|()| std::fs::rename(&tmp, &p))
        .map_err(|source| Error::Io {
            path: p.display().to_string(),
            source,
        })
}

/// The sidecar artifact bound to image `rec` by the image index it was resolved through
/// (`rec.index_digest`, kept in the store, digest-checked when it was fetched): the entry of
/// type [`ARTIFACT_TYPE`] whose [`BOUND_ANNOTATION`] names `rec`'s manifest.
pub fn bound_artifact(store: &Store, rec: &ImageRecord) -> Option<Digest> {
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
            e.artifact_type.as_deref() == Some(ARTIFACT_TYPE)
                && e.annotation(BOUND_ANNOTATION) == Some(want.as_str())
        })
        .map(|e| e.digest)
}

/// Publish an image index binding image `rec` to sidecar artifact `artifact` (`size`
/// bytes): the entries of the index `rec` came from (other platforms' images kept, an
/// earlier binding of this image replaced), else the image manifest alone, and the artifact.
/// The index is pushed by digest and, when `reference` names a tag, under that tag; the local
/// record then points at it. Returns its digest.
pub async fn publish_bound(
    client: &Client,
    store: &Store,
    reference: &Reference,
    rec: &mut ImageRecord,
    artifact: Digest,
    size: u64,
) -> Result<Digest, Error> {
    let manifest = rec.manifest_digest.to_string();
    let platform: Option<Platform> = rec.platform.parse().ok();
    let mut entries: Vec<Descriptor> = rec
        .index_digest
        .and_then(|d| store.read_blob(&d).ok())
        .and_then(|b| serde_json::from_slice::<ImageIndex>(&b).ok())
        .map(|i| i.manifests)
        .unwrap_or_default();
    entries.retain(|e| {
        !(e.artifact_type.as_deref() == Some(ARTIFACT_TYPE)
            && e.annotation(BOUND_ANNOTATION) == Some(manifest.as_str()))
    });
    if !entries.iter().any(|e| e.digest == rec.manifest_digest) {
        let size = store.read_blob(&rec.manifest_digest)?.len() as u64;
        let mut d = Descriptor::new(&rec.manifest_media_type, rec.manifest_digest, size);
        d.platform = platform.clone();
        entries.insert(0, d);
    }
    let mut art = Descriptor::new(OCI_MANIFEST, artifact, size);
    art.artifact_type = Some(ARTIFACT_TYPE.into());
    art.platform = platform;
    art.annotations = Some(BTreeMap::from([(BOUND_ANNOTATION.to_string(), manifest)]));
    entries.push(art);
    let idx = ImageIndex {
        schema_version: 2,
        media_type: Some(OCI_INDEX.into()),
        manifests: entries,
        annotations: None,
    };
    let body = Bytes::from(serde_json::to_vec(&idx).map_err(|e| Error::Invalid {
        what: "bound image index".into(),
        msg: e.to_string(),
    })?);
    let digest = Digest::of(&body);
    let repo = reference.repo();
    client
        .put_manifest(&repo, &digest.to_string(), OCI_INDEX, body.clone())
        .await?;
    if let Some(tag) = &reference.tag {
        client
            .put_manifest(&repo, tag, OCI_INDEX, body.clone())
            .await?;
    }
    store.put_blob(digest, &body, &format!("bound image index {digest}"))?;
    rec.index_digest = Some(digest);
    rec.repo_digests
        .insert(format!("{}@{digest}", reference.name()));
    store.put_image(rec)?;
    Ok(digest)
}

/// Drop the stored index of `layer` and everything fetched with it (its trust mark, window
/// source and windows, eStargz prefetch list, block digests learned for a SOCI index): after
/// its layer failed the digest check, or before another index replaces it.
pub fn forget_index(store: &Store, layer: &Digest) {
    clear_mark(store, layer);
    let dir = store.root().join("indexes");
    let hex = layer.hex();
    let _ = std::fs::remove_file(index_path(store, layer));
    for suffix in ["windows-from", "prefetch.json", "blocks"] {
        let _ = std::fs::remove_file(dir.join(format!("{hex}.{suffix}")));
    }
    let _ = std::fs::remove_dir_all(dir.join(format!("{hex}.windows")));
    let _ = std::fs::remove_dir_all(dir.join(format!("{hex}.groups")));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_and_policies() {
        let k = Digest::of(b"key");
        for m in [
            Mark::Built,
            Mark::Estargz,
            Mark::ZstdChunked,
            Mark::Bound,
            Mark::Signed(k),
            Mark::Registry,
        ] {
            assert_eq!(Mark::parse(&m.text()), Some(m));
            assert!(m.allowed(IndexTrust::Registry, &[]));
        }
        assert!(!Mark::Registry.allowed(IndexTrust::Bound, &[k]));
        assert!(Mark::Bound.allowed(IndexTrust::Bound, &[]));
        assert!(!Mark::Signed(k).allowed(IndexTrust::Bound, &[k]));
        assert!(!Mark::Registry.allowed(IndexTrust::Signed, &[k]));
        assert!(Mark::Bound.allowed(IndexTrust::Signed, &[]));
        assert!(Mark::Signed(k).allowed(IndexTrust::Signed, &[k]));
        assert!(!Mark::Signed(k).allowed(IndexTrust::Signed, &[Digest::of(b"other")]));
        assert_eq!(Mark::parse("mirror"), None);
        assert_eq!(Mark::parse("signed sha256:zz"), None);
    }
}
