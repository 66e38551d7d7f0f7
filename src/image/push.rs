//! `push`: upload blobs the registry lacks (HEAD first), then the manifest under the tag.

use super::{Error, Progress};
use crate::digest::Digest;
use crate::reference::Reference;
use crate::registry::Client;
use crate::store::{ImageRecord, Store};
use futures::StreamExt;

pub async fn push(
    client: &Client,
    store: &Store,
    rec: &ImageRecord,
    target: &Reference,
    progress: &Progress,
) -> Result<Digest, Error> {
    let missing: Vec<Digest> = rec
        .layers
        .iter()
        .map(|l| l.digest)
        .filter(|d| !store.has_blob(d))
        .collect();
    if !missing.is_empty() {
        return Err(Error::Invalid {
            what: target.to_string(),
            msg: format!(
                "{} layer(s) are not local (image was mounted lazily, not pulled); run `strata pull` first",
                missing.len()
            ),
        });
    }
    progress.line(&format!(
        "The push refers to repository [{}]",
        target.name()
    ));
    let mut blobs: Vec<Digest> = rec.layers.iter().map(|l| l.digest).collect();
    blobs.push(rec.config_digest);
    let limit = client.config().max_concurrent_uploads.max(1);
    let repo = &target.repo();
    let results: Vec<Result<(Digest, bool), Error>> =
        futures::stream::iter(blobs.into_iter().map(|d| async move {
            if client.blob_exists(repo, &d).await? {
                return Ok((d, false));
            }
            client.upload_blob(repo, &d, &store.blob_path(&d)).await?;
            Ok((d, true))
        }))
        .buffer_unordered(limit)
        .collect()
        .await;
    for r in results {
        let (d, uploaded) = r?;
        progress.line(&format!(
            "{}: {}",
            d.short(),
            if uploaded {
                "Pushed"
            } else {
                "Layer already exists"
            }
        ));
    }
    let body = store.read_blob(&rec.manifest_digest)?;
    let tag = target
        .tag
        .clone()
        .unwrap_or_else(|| rec.manifest_digest.to_string());
    client
        .put_manifest(repo, &tag, &rec.manifest_media_type, body.into())
        .await?;
    progress.line(&format!(
        "{tag}: digest: {} size: {}",
        rec.manifest_digest,
        store.read_blob(&rec.manifest_digest)?.len()
    ));
    Ok(rec.manifest_digest)
}
