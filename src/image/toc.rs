//! Layer indexes read from a layer's own table of contents, without a sidecar: eStargz
//! (footer and TOC, two Range reads, the TOC digest checked against the layer annotation) and
//! zstd:chunked (one Range read, its checksum checked against the annotation the manifest
//! digest covers). Each writes the index file in the store (`index.rs` marks its trust).
//!
//! Calls `registry` (Range reads), `layer` (TOC parsing, index building) and `store`.

use super::index::{index_path, prefetch_list_path};
use super::Error;
use crate::digest::Digest;
use crate::layer::{self, LayerIndex};
use crate::oci::Descriptor;
use crate::reference::Reference;
use crate::registry::Client;
use crate::store::Store;

/// Largest eStargz TOC member accepted.
const MAX_TOC_BYTES: u64 = 64 << 20;

/// Footer + TOC with two Range reads; TOC digest checked against the annotation.
pub(super) async fn estargz_index(
    client: &Client,
    store: &Store,
    reference: &Reference,
    l: &Descriptor,
    toc: &Digest,
) -> Result<LayerIndex, Error> {
    let fr = layer::estargz::footer_range(l.size)?;
    let footer = client
        .get_blob_range(&reference.repo(), &l.digest, fr)
        .await?;
    let tr = layer::estargz::toc_range(&footer, l.size)?;
    if tr.end - tr.start > MAX_TOC_BYTES {
        return Err(Error::Invalid {
            what: format!("layer {}", l.digest),
            msg: "eStargz TOC larger than 64 MiB".into(),
        });
    }
    let toc_gz = client
        .get_blob_range(&reference.repo(), &l.digest, tr)
        .await?;
    let out = index_path(store, &l.digest);
    let toc = *toc;
    let size = l.size;
    let (ix, prioritized) = tokio::task::spawn_blocking(move || {
        // build_index's steps, keeping the parsed TOC for its prefetch landmark.
        let toc_off = layer::estargz::toc_range(&footer, size)?.start;
        let parsed = layer::estargz::parse_toc(&toc_gz, &toc)?;
        let ix = layer::estargz::index_from_toc(&parsed, toc_off, size, &out)?;
        Ok::<_, layer::Error>((ix, layer::estargz::prioritized_files(&parsed)))
    })
    .await
    .map_err(|e| Error::Invalid {
        what: "eStargz index".into(),
        msg: e.to_string(),
    })??;
    if !prioritized.is_empty() {
        if let Err(e) = store.write_json(&prefetch_list_path(store, &l.digest), &prioritized) {
            tracing::warn!("keeping the eStargz prefetch list of {}: {e}", l.digest);
        }
    }
    Ok(ix)
}

/// The zstd:chunked TOC with one Range read, its checksum checked against the annotation
/// (which the manifest digest covers) before anything in it is used.
pub(super) async fn zstd_chunked_index(
    client: &Client,
    store: &Store,
    reference: &Reference,
    l: &Descriptor,
    checksum: &str,
    position: &str,
) -> Result<LayerIndex, Error> {
    let bad = |msg: String| Error::Invalid {
        what: format!("layer {}", l.digest),
        msg,
    };
    if !l.media_type.contains("zstd") {
        return Err(bad(format!(
            "zstd:chunked annotations on a layer of media type {}",
            l.media_type
        )));
    }
    let sum: Digest = checksum.parse().map_err(|e| {
        bad(format!(
            "bad zstd:chunked manifest-checksum annotation: {e}"
        ))
    })?;
    let pos = layer::zchunked::parse_position(position, l.size)?;
    let toc = client
        .get_blob_range(&reference.repo(), &l.digest, pos.range())
        .await?;
    let out = index_path(store, &l.digest);
    let size = l.size;
    tokio::task::spawn_blocking(move || {
        let parsed = layer::zchunked::parse_toc(&toc, &sum, &pos)?;
        layer::zchunked::index_from_toc(&parsed, &pos, size, &out)
    })
    .await
    .map_err(|e| bad(e.to_string()))?
    .map_err(Error::from)
}
