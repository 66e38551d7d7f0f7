//! The index sidecar also under a tag named after the image's tag (`<tag>.strata-index`),
//! so that a cold mount that knows only the name it was asked for can fetch the sidecar's
//! artifact manifest at once, while the image's manifest is still on its way, instead of
//! after it (the manifest's digest names the referrers) and after the referrers listing: one
//! round trip less before the mount. `strata index --push` pushes it beside the referrers.
//!
//! Only a hint, never trusted more than the referrers: it is fetched from the upstream alone
//! (never a mirror), as the referrers are under `index-trust: registry`, and used only when it
//! is an index artifact whose subject is the manifest the image resolved to; a missing, stale
//! (the tag moved) or foreign one is ignored and the referrers are asked as before.
//!
//! Calls `registry`; used by `index.rs` (publish, use) and `mount/early.rs` (fetch).

use super::index::ARTIFACT_TYPE;
use crate::digest::Digest;
use crate::oci::{AnyManifest, ImageManifest, OCI_MANIFEST};
use crate::reference::Reference;
use crate::registry::{Client, Op};
use futures::future::{BoxFuture, FutureExt, Shared};
use std::sync::Arc;

/// Appended to the image's tag.
pub const SUFFIX: &str = ".strata-index";

/// An alias fetch under way or done: the artifact's digest and manifest, when there is one.
pub type Early = Shared<BoxFuture<'static, Option<(Digest, ImageManifest)>>>;

/// The alias tag for image tag `tag`, when it fits a tag's 128 characters.
pub fn tag(tag: &str) -> Option<String> {
    let t = format!("{tag}{SUFFIX}");
    (t.len() <= 128).then_some(t)
}

/// Start nothing yet: the fetch of `reference`'s alias from its upstream (polled by the
/// caller), `None` when the reference names no tag.
pub fn fetch(client: Arc<Client>, reference: &Reference) -> Option<Early> {
    let alias = reference.repo().tag(tag(reference.tag.as_deref()?)?);
    Some(
        async move {
            let m = client
                .get_manifest_via(&alias, Op::PullUpstream)
                .await
                .map_err(|e| tracing::debug!(%alias, "no index alias: {e}"))
                .ok()?;
            match m.manifest {
                AnyManifest::Image(am) if am.artifact_type.as_deref() == Some(ARTIFACT_TYPE) => {
                    Some((m.digest, am))
                }
                _ => None,
            }
        }
        .boxed()
        .shared(),
    )
}

/// The index artifact the alias `early` found, if it is about the manifest `subject`.
pub async fn about(early: Early, subject: &Digest) -> Option<(Digest, ImageManifest)> {
    let (d, am) = early.await?;
    (am.subject.as_ref().map(|s| s.digest) == Some(*subject)).then_some((d, am))
}

/// Point `reference`'s alias at the index artifact whose manifest is `artifact` (already
/// pushed); nothing for a reference without a tag.
pub async fn publish(
    client: &Client,
    reference: &Reference,
    artifact: bytes::Bytes,
) -> Result<Option<String>, crate::registry::Error> {
    let Some(alias) = reference.tag.as_deref().and_then(tag) else {
        return Ok(None);
    };
    client
        .put_manifest(&reference.repo(), &alias, OCI_MANIFEST, artifact)
        .await?;
    Ok(Some(alias))
}
