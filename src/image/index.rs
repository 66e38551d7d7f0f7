//! Layer indexes for an image: find them (local store -> eStargz TOC -> zstd:chunked TOC ->
//! strata sidecar artifact -> SOCI index (`soci.rs`) -> build from the whole blob) and
//! publish sidecar artifacts (`strata index --push`).
//!
//! The sidecar is an OCI artifact manifest (`artifactType` [`ARTIFACT_TYPE`], empty config)
//! whose `subject` is the image manifest; one layer blob per image layer holds that layer's
//! index file, annotated with the image layer's digest. Discovery uses the referrers API and
//! falls back to the referrers tag schema (`sha256-<hex>`). Which sidecars are believed
//! (bound to the image, listed by its own registry, or signed: `signed.rs`) is `bind.rs`'s:
//! every index file written here gets its trust mark there.

use super::bind::{self, Mark};
use super::tail::{groups_dir, windows_dir, windows_from_path, WindowsFrom};
pub use super::tail::{remote_tail, RemoteTail};
use super::{Error, Progress};
use crate::config::IndexTrust;
use crate::digest::Digest;
use crate::layer::{self, LayerIndex};
use crate::oci::{Descriptor, ImageManifest, OCI_INDEX, OCI_MANIFEST};
use crate::reference::Reference;
use crate::registry::{Client, Op};
use crate::store::{ImageRecord, Store};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Artifact type of sidecars holding layer index files of format version 5. The
/// version is in the type so a sidecar of another format is recognised (and skipped with a
/// note) from the referrers list alone, without fetching its blobs.
pub const ARTIFACT_TYPE: &str = "application/vnd.strata.index.v5";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.strata.layer.index.v5";
/// Artifact types of sidecars an older strata published (index format 1: no block hashes;
/// 2: windows inside the seek section, so a mount had to fetch all of them; 3: a sha256 per
/// span and per window in the head besides the block sha256s, checkpoints evenly spaced; 4:
/// every block record in the head).
const OLD_ARTIFACT_TYPES: &[&str] = &[
    "application/vnd.strata.index.v1",
    "application/vnd.strata.index.v2",
    "application/vnd.strata.index.v3",
    "application/vnd.strata.index.v4",
];
pub const LAYER_ANNOTATION: &str = "dev.strata.layer.digest";
/// Length of the index blob's head (everything before the window section): a mount fetches
/// only these bytes, and each window later with a Range request.
pub const HEAD_SIZE_ANNOTATION: &str = "dev.strata.index.head.size";
/// sha256 of the head (the blob digest covers the whole blob, which a mount never fetches).
pub const HEAD_DIGEST_ANNOTATION: &str = "dev.strata.index.head.digest";
pub const TOC_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";
/// Largest index blob accepted from a registry.
const MAX_INDEX_BYTES: usize = 512 << 20;

/// Where a layer's index came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum IndexSource {
    /// Built or fetched earlier; found in `indexes/`.
    Local,
    /// From the layer's eStargz TOC (two Range reads).
    Estargz,
    /// From the layer's zstd:chunked TOC (one Range read; position and checksum annotated).
    ZstdChunked,
    /// From the strata sidecar artifact in the registry (listed by the image's own registry).
    Sidecar,
    /// From the sidecar bound to the image through the image index the user named.
    Bound,
    /// From an unbound sidecar with a valid cosign signature by a configured key.
    Signed,
    /// From a SOCI v1 index (a referrer listed by the image's own registry).
    Soci,
    /// From a SOCI v1 index with a valid cosign signature by a configured key.
    SociSigned,
    /// From a SOCI v2 index bound to the image (its manifest's annotation, or the image
    /// index the user named).
    SociBound,
    /// Built by downloading the whole layer (not lazy).
    Built,
}

pub fn index_path(store: &Store, layer: &Digest) -> PathBuf {
    store.root().join("indexes").join(layer.hex())
}

fn layer_err(digest: Digest, e: impl Into<Error>) -> Error {
    Error::Layer {
        digest,
        source: Box::new(e.into()),
    }
}

impl From<layer::Error> for Error {
    fn from(e: layer::Error) -> Self {
        Error::Invalid {
            what: "layer index".into(),
            msg: e.to_string(),
        }
    }
}

/// The stored index of layer `d` if policy `trust` accepts how it was obtained (an index
/// without a trust mark, from an older strata, is fetched again).
fn open_trusted(
    store: &Store,
    d: &Digest,
    trust: IndexTrust,
    keys: &[Digest],
) -> Option<(LayerIndex, Mark)> {
    let mark = bind::mark_of(store, d)?;
    if !mark.allowed(trust, keys) {
        return None;
    }
    open_local(store, d).map(|i| (i, mark))
}

fn open_local(store: &Store, d: &Digest) -> Option<LayerIndex> {
    let p = index_path(store, d);
    if !p.exists() {
        return None;
    }
    match LayerIndex::open(&p) {
        // A head without a record of where its windows are cannot be read: fetch it again.
        Ok(i) if !i.tail_local() && !windows_from_path(store, d).exists() => {
            tracing::warn!(layer = %d, "dropping a head-only index with no window source");
            let _ = std::fs::remove_file(&p);
            None
        }
        Ok(i) => Some(i),
        Err(e) => {
            tracing::warn!(layer = %d, "dropping unreadable local index: {e}");
            let _ = std::fs::remove_file(&p);
            None
        }
    }
}

/// What [`lazy_indexes`] found: per layer, its index and where it came from, or `None`.
pub type LazyIndexes = Vec<Option<(Arc<LayerIndex>, IndexSource)>>;

/// An index for every layer of `image`, fetching or building what is missing; `found`: what
/// [`lazy_indexes`] gave for this record already (looked up early), else it is asked.
pub async fn layer_indexes(
    client: &Arc<Client>,
    store: &Arc<Store>,
    reference: &Reference,
    rec: &ImageRecord,
    progress: &Progress,
    found: Option<LazyIndexes>,
) -> Result<Vec<(Arc<LayerIndex>, IndexSource)>, Error> {
    let mut out = match found {
        Some(f) if f.len() == rec.layers.len() => f,
        _ => lazy_indexes(client, store, reference, rec, progress).await?,
    };
    for (i, l) in rec.layers.iter().enumerate() {
        if out[i].is_some() {
            continue;
        }
        progress.line(&format!(
            "{}: no lazy index (not eStargz or zstd:chunked, no `strata index --push` artifact, no SOCI index): downloading the whole layer",
            l.digest.short()
        ));
        let idx = build_from_blob(client, store, reference, l, layer::DEFAULT_SPAN).await?;
        out[i] = Some((Arc::new(idx), IndexSource::Built));
    }
    Ok(out.into_iter().flatten().collect())
}

/// The index of each layer of `image` that has one without downloading the layer (local,
/// eStargz or zstd:chunked TOC, sidecar artifact, SOCI index) and that the `index-trust`
/// policy accepts; `None` for the others. A sidecar bound to the image (through the image
/// index the user named) is used under every policy; an unbound one under `registry` only as
/// listed by the image's own registry (never through a mirror), under `signed` only with a
/// valid signature by a configured key (from any endpoint).
pub async fn lazy_indexes(
    client: &Arc<Client>,
    store: &Arc<Store>,
    reference: &Reference,
    rec: &ImageRecord,
    progress: &Progress,
) -> Result<Vec<Option<(Arc<LayerIndex>, IndexSource)>>, Error> {
    lazy_indexes_with(client, store, reference, rec, progress, None).await
}

/// [`lazy_indexes`], with the image tag's index alias (`alias.rs`) fetched early: under
/// `registry` trust, an index artifact it found about `rec`'s manifest is used without
/// asking the referrers.
pub async fn lazy_indexes_with(
    client: &Arc<Client>,
    store: &Arc<Store>,
    reference: &Reference,
    rec: &ImageRecord,
    progress: &Progress,
    alias: Option<super::alias::Early>,
) -> Result<Vec<Option<(Arc<LayerIndex>, IndexSource)>>, Error> {
    let trust = client.config().index_trust;
    let keys: Vec<Digest> = match trust {
        IndexTrust::Signed => super::signed::keys(client)
            .iter()
            .map(|k| k.fingerprint)
            .collect(),
        _ => Vec::new(),
    };
    let mut out: Vec<Option<(Arc<LayerIndex>, IndexSource)>> = rec
        .layers
        .iter()
        .map(|l| {
            open_trusted(store, &l.digest, trust, &keys)
                .map(|(i, _)| (Arc::new(i), IndexSource::Local))
        })
        .collect();
    for (i, l) in rec.layers.iter().enumerate() {
        if out[i].is_some() {
            continue;
        }
        if let Some(toc) = l.annotation(TOC_ANNOTATION) {
            let toc: Digest = toc.parse().map_err(|e| Error::Invalid {
                what: format!("layer {}", l.digest),
                msg: format!("bad {TOC_ANNOTATION} annotation: {e}"),
            })?;
            bind::clear_mark(store, &l.digest);
            let idx = super::toc::estargz_index(client, store, reference, l, &toc)
                .await
                .map_err(|e| layer_err(l.digest, e))?;
            bind::set_mark(store, &l.digest, Mark::Estargz)?;
            out[i] = Some((Arc::new(idx), IndexSource::Estargz));
        } else if let Some((sum, position)) =
            layer::zchunked::annotations(|k| l.annotation(k).map(str::to_string))
        {
            bind::clear_mark(store, &l.digest);
            let idx = super::toc::zstd_chunked_index(client, store, reference, l, &sum, &position)
                .await
                .map_err(|e| layer_err(l.digest, e))?;
            bind::set_mark(store, &l.digest, Mark::ZstdChunked)?;
            out[i] = Some((Arc::new(idx), IndexSource::ZstdChunked));
        }
    }
    if out.iter().all(Option::is_some) {
        return Ok(out);
    }
    let need: std::collections::BTreeSet<Digest> = rec
        .layers
        .iter()
        .zip(&out)
        .filter(|(_, o)| o.is_none())
        .map(|(l, _)| l.digest)
        .collect();
    let mut listed = None;
    let found = match bind::bound_artifact(store, rec) {
        Some(art) => {
            let got =
                sidecar_indexes(client, store, reference, rec, &need, Ok(art), progress).await;
            Some((IndexSource::Bound, got.map(|f| (f, Mark::Bound))))
        }
        None if trust == IndexTrust::Registry => {
            let aliased = match alias {
                Some(a) => super::alias::about(a, &rec.manifest_digest).await,
                None => None,
            };
            // The upstream's referrers, listed once for strata's sidecar and SOCI v1 both.
            let got = if let Some((d, am)) = aliased {
                tracing::debug!(artifact = %d, "index artifact found through the tag's alias");
                listed_indexes(
                    client,
                    store,
                    reference,
                    rec,
                    &need,
                    &am,
                    Default::default(),
                )
                .await
            } else {
                match client
                    .referrers_via(&reference.repo(), &rec.manifest_digest, Op::PullUpstream)
                    .await
                {
                    Ok((l, _)) => {
                        let got = sidecar_indexes(
                            client,
                            store,
                            reference,
                            rec,
                            &need,
                            Err(&l),
                            progress,
                        )
                        .await;
                        listed = Some(l);
                        got
                    }
                    Err(e) => Err(e.into()),
                }
            };
            Some((IndexSource::Sidecar, got.map(|f| (f, Mark::Registry))))
        }
        None if trust == IndexTrust::Signed => {
            let (l, got) =
                super::signed::sidecar(client, store, reference, rec, &need, progress).await;
            listed = l;
            Some((IndexSource::Signed, got))
        }
        None => None,
    };
    match found {
        Some((source, Ok((found, mark)))) => adopt(store, rec, &mut out, &found, mark, source)?,
        Some((_, Err(e))) => tracing::warn!("no sidecar index for {reference}: {e}"),
        None => {}
    }
    // Then a SOCI index (v2 bound to the image, or a v1 referrer under `registry`/`signed`).
    super::soci::fill(client, store, reference, rec, &mut out, listed, progress).await?;
    Ok(out)
}

/// Use the indexes just stored for the layers in `found` that have none in `out` yet, with
/// trust mark `mark`.
pub(super) fn adopt(
    store: &Store,
    rec: &ImageRecord,
    out: &mut [Option<(Arc<LayerIndex>, IndexSource)>],
    found: &std::collections::BTreeSet<Digest>,
    mark: Mark,
    source: IndexSource,
) -> Result<(), Error> {
    for (i, l) in rec.layers.iter().enumerate() {
        if out[i].is_none() && found.contains(&l.digest) {
            if let Some(ix) = open_local(store, &l.digest) {
                bind::set_mark(store, &l.digest, mark)?;
                out[i] = Some((Arc::new(ix), source));
            }
        }
    }
    Ok(())
}

/// Where the files an eStargz layer marks for prefetch (before its `.prefetch.landmark`) are
/// kept, once its TOC was read.
pub fn prefetch_list_path(store: &Store, layer: &Digest) -> PathBuf {
    store
        .root()
        .join("indexes")
        .join(format!("{}.prefetch.json", layer.hex()))
}

/// Fetch the sidecar artifact's index blobs into `indexes/` (each replacing a stored index
/// whose trust mark the caller did not accept); returns the layers that now have one. The
/// artifact is `bound` (`Ok`: from the image index the user named) or else the newest one
/// the referrers list *of the upstream alone* names (`Err`: fetched by the caller with
/// `Op::PullUpstream`: a mirror could list a forged one), or under `signed` the one entry
/// whose signature `signed.rs` verified.
pub(super) async fn sidecar_indexes(
    client: &Client,
    store: &Store,
    reference: &Reference,
    rec: &ImageRecord,
    need: &std::collections::BTreeSet<Digest>,
    bound: Result<Digest, &crate::oci::ImageIndex>,
    progress: &Progress,
) -> Result<std::collections::BTreeSet<Digest>, Error> {
    let referrers = match bound {
        // The bound entry, as if it were the only referrer (its manifest is fetched by digest
        // and checked: any endpoint may serve it).
        Ok(d) => {
            let mut e = Descriptor::new(OCI_MANIFEST, d, 0);
            e.artifact_type = Some(ARTIFACT_TYPE.into());
            crate::oci::ImageIndex {
                schema_version: 2,
                media_type: Some(OCI_INDEX.into()),
                manifests: vec![e],
                annotations: None,
            }
        }
        Err(listed) => listed.clone(),
    };
    // The compressed heads the listing announces are fetched with the manifest.
    let listed = referrers
        .manifests
        .iter()
        .rev()
        .find(|d| d.artifact_type.as_deref() == Some(ARTIFACT_TYPE));
    let (found_art, early) = tokio::join!(
        super::artifact::find_artifact(
            client,
            reference,
            rec,
            &referrers,
            ARTIFACT_TYPE,
            "index artifact",
        ),
        super::head::speculate(client, reference, listed, need)
    );
    let Some((_, am)) = found_art? else {
        if let Some(old) = referrers.manifests.iter().find(|d| {
            d.artifact_type
                .as_deref()
                .is_some_and(|t| OLD_ARTIFACT_TYPES.contains(&t))
        }) {
            progress.line(&format!(
                "ignoring sidecar index {} ({}): an older index format this strata does not \
                 read; run `strata index {reference} --push` to publish a current one",
                old.digest,
                old.artifact_type.as_deref().unwrap_or_default()
            ));
        }
        return Ok(Default::default());
    };
    listed_indexes(client, store, reference, rec, need, &am, early).await
}

/// Fetch the index blobs the sidecar artifact `am` lists for the layers in `need` (`early`:
/// compressed heads already fetched, by digest); returns the layers that now have one.
async fn listed_indexes(
    client: &Client,
    store: &Store,
    reference: &Reference,
    rec: &ImageRecord,
    need: &std::collections::BTreeSet<Digest>,
    am: &ImageManifest,
    mut early: std::collections::BTreeMap<Digest, Bytes>,
) -> Result<std::collections::BTreeSet<Digest>, Error> {
    // Every index blob this image still needs, fetched at once: on a link with a round trip
    // of tens of milliseconds one-after-the-other downloads add up at every cold mount.
    let mut found = std::collections::BTreeSet::new();
    let mut wanted = Vec::new();
    let heads = super::head::listed(&am.layers);
    for d in &am.layers {
        let Some(layer) = d
            .annotation(LAYER_ANNOTATION)
            .and_then(|s| s.parse::<Digest>().ok())
        else {
            continue;
        };
        let Some(image_layer) = rec.layers.iter().find(|l| l.digest == layer) else {
            continue;
        };
        if !need.contains(&layer) {
            continue;
        }
        let z = heads.get(&d.digest).copied();
        let have = z.and_then(|z| early.remove(&z.digest));
        wanted.push((d, layer, image_layer.size, z.map(|z| (z, have))));
    }
    // Smallest first (see `head::speculate`).
    wanted.sort_by_key(|(d, _, _, z)| z.as_ref().map_or(d.size, |(z, _)| z.size));
    let fetched = futures::future::try_join_all(wanted.into_iter().map(|(d, layer, size, z)| {
        fetch_sidecar_index(client, store, reference, d, z, layer, size)
    }))
    .await?;
    found.extend(fetched);
    Ok(found)
}

/// Download one sidecar index blob's head (its compressed copy `z` when the artifact has one,
/// else a Range request; checked against the head sha256 in the descriptor's annotations; the
/// whole blob, verified, when they are missing), validate it
/// (structure, and that it describes a blob of the layer's size) and only then make it visible
/// in `indexes/`, with a record of the blob its windows are fetched from.
async fn fetch_sidecar_index(
    client: &Client,
    store: &Store,
    reference: &Reference,
    desc: &Descriptor,
    z: Option<(&Descriptor, Option<Bytes>)>,
    layer: Digest,
    layer_size: u64,
) -> Result<Digest, Error> {
    let repo = reference.repo();
    let head = desc
        .annotation(HEAD_SIZE_ANNOTATION)
        .and_then(|s| s.parse::<u64>().ok())
        .zip(
            desc.annotation(HEAD_DIGEST_ANNOTATION)
                .and_then(|s| s.parse::<Digest>().ok()),
        )
        .filter(|(n, _)| *n <= desc.size && *n <= MAX_INDEX_BYTES as u64);
    let unzipped = match (head, z) {
        (Some((n, digest)), Some((z, have))) => {
            super::head::fetch(client, reference, z, have, n, digest).await
        }
        _ => None,
    };
    let body = match (head, unzipped) {
        (_, Some(b)) => b,
        (Some((n, digest)), None) if n < desc.size => {
            let b = client.get_blob_range(&repo, &desc.digest, 0..n).await?;
            if Digest::of(&b) != digest {
                return Err(Error::Invalid {
                    what: format!("index blob {} for layer {layer}", desc.digest),
                    msg: format!("head of {n} bytes does not match {HEAD_DIGEST_ANNOTATION}"),
                });
            }
            b
        }
        _ => {
            client
                .get_blob_verified(&repo, &desc.digest, MAX_INDEX_BYTES)
                .await?
        }
    };
    let path = index_path(store, &layer);
    let tmp = store.temp_path("index");
    std::fs::write(&tmp, &body).map_err(|e| Error::Io {
        path: tmp.display().to_string(),
        source: e,
    })?;
    let ix = match LayerIndex::open(&tmp) {
        Ok(ix) => ix,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(layer_err(layer, e));
        }
    };
    if ix.meta().compressed_size != layer_size {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Invalid {
            what: format!("index for layer {layer}"),
            msg: format!(
                "describes a {}-byte blob, the layer has {layer_size}",
                ix.meta().compressed_size,
            ),
        });
    }
    if !ix.tail_local() {
        let from = WindowsFrom {
            blob: desc.digest,
            head: body.len() as u64,
        };
        // Windows fetched for an earlier index of this layer are not this blob's.
        let _ = std::fs::remove_dir_all(windows_dir(store, &layer));
        let _ = std::fs::remove_dir_all(groups_dir(store, &layer));
        store.write_json(&windows_from_path(store, &layer), &from)?;
    }
    drop(ix);
    bind::clear_mark(store, &layer);
    std::fs::rename(&tmp, &path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    Ok(layer)
}

/// Download the whole layer (verified, kept in the store) and build its index from it, with
/// checkpoints `span` uncompressed bytes apart (gzip, zstd and plain tar layers; a TOC
/// layer's chunks are its own).
async fn build_from_blob(
    client: &Client,
    store: &Arc<Store>,
    reference: &Reference,
    l: &Descriptor,
    span: u64,
) -> Result<LayerIndex, Error> {
    if !store.has_blob(&l.digest) {
        super::pull::fetch_blob(client, store, reference, &l.digest, l.size, None)
            .await
            .map_err(|e| layer_err(l.digest, e))?;
    }
    let blob = store.blob_path(&l.digest);
    let out = index_path(store, &l.digest);
    let media = l.media_type.clone();
    let digest = l.digest;
    bind::clear_mark(store, &digest);
    let ix = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&blob).map_err(|e| Error::Io {
            path: blob.display().to_string(),
            source: e,
        })?;
        let opts = layer::BuildOptions {
            span,
            ..Default::default()
        };
        layer::build_index_with(
            std::io::BufReader::with_capacity(1 << 20, f),
            &media,
            &out,
            &opts,
        )
        .map_err(|e| layer_err(digest, e))
    })
    .await
    .map_err(|e| Error::Invalid {
        what: "index build".into(),
        msg: e.to_string(),
    })??;
    bind::set_mark(store, &digest, Mark::Built)?;
    Ok(ix)
}

/// What `strata index --push` published.
#[derive(Debug, Clone)]
pub struct Published {
    /// The sidecar artifact.
    pub artifact: Digest,
    /// With `--bind`: the image index binding the image to it.
    pub bound: Option<Digest>,
}

/// How `strata index --push` publishes: also an image index binding the image to the sidecar
/// (`--bind`), also a cosign signature of the sidecar with this key (`--sign`).
#[derive(Clone, Copy, Default)]
pub struct Push<'a> {
    pub bind: bool,
    pub sign: Option<&'a p256::ecdsa::SigningKey>,
}

/// Smallest and largest `strata index --span-size`.
pub const SPAN_SIZES: std::ops::RangeInclusive<u64> = (64 << 10)..=(64 << 20);

/// `strata index REF [--push [--bind] [--sign KEY]]`: build (or reuse) every layer's index;
/// with `push`, publish them as a sidecar artifact referring to the image manifest; with
/// `bind`, also an image index binding the image to it (see `bind.rs`); with `sign`, a cosign
/// signature of the artifact (`signed.rs`); with `span`, layers whose local index has
/// another span are indexed again with that one. Only indexes built here from the
/// digest-checked layer (or its eStargz TOC) are published, never one fetched from a sidecar.
pub async fn index_image(
    client: &Arc<Client>,
    store: &Arc<Store>,
    reference: &Reference,
    rec: &mut ImageRecord,
    push: Option<Push<'_>>,
    span: Option<u64>,
    progress: &Progress,
) -> Result<Option<Published>, Error> {
    if let Some(s) = span.filter(|s| !SPAN_SIZES.contains(s)) {
        return Err(Error::Invalid {
            what: "--span-size".into(),
            msg: format!(
                "{s} bytes: must be between {} KiB and {} MiB",
                SPAN_SIZES.start() >> 10,
                SPAN_SIZES.end() >> 20
            ),
        });
    }
    let mut descs = Vec::new();
    let mut zheads = Vec::new();
    for l in &rec.layers {
        let local = open_trusted(store, &l.digest, IndexTrust::Bound, &[])
            .filter(|(ix, m)| *m != Mark::Bound && ix.tail_local())
            .map(|(ix, _)| ix)
            .filter(|ix| match (span, ix.seek_table()) {
                (Some(want), Some(t)) => t.span == want,
                _ => true,
            });
        let ix = match local {
            Some(ix) => ix,
            None => {
                progress.line(&format!("{}: indexing", l.digest.short()));
                build_from_blob(
                    client,
                    store,
                    reference,
                    l,
                    span.unwrap_or(layer::DEFAULT_SPAN),
                )
                .await?
            }
        };
        let bytes = std::fs::read(ix.path()).map_err(|e| Error::Io {
            path: ix.path().display().to_string(),
            source: e,
        })?;
        progress.line(&format!(
            "{}: index {} entries, {} bytes",
            l.digest.short(),
            ix.len(),
            bytes.len()
        ));
        let mut d = Descriptor::new(INDEX_MEDIA_TYPE, Digest::of(&bytes), bytes.len() as u64);
        let mut notes = BTreeMap::from([(LAYER_ANNOTATION.to_string(), l.digest.to_string())]);
        let head_len = layer::head_len(&bytes).filter(|&h| h <= bytes.len() as u64);
        if let Some(head) = head_len {
            notes.insert(HEAD_SIZE_ANNOTATION.to_string(), head.to_string());
            notes.insert(
                HEAD_DIGEST_ANNOTATION.to_string(),
                Digest::of(&bytes[..head as usize]).to_string(),
            );
        }
        d.annotations = Some(notes);
        let zhead = head_len.and_then(|h| super::head::compress(d.digest, &bytes, h));
        descs.push((d, Bytes::from(bytes)));
        if let Some((zd, zb)) = zhead {
            zheads.push((l.digest, zd.clone()));
            descs.push((zd, zb));
        }
    }
    let Some(Push {
        bind: bind_it,
        sign,
    }) = push
    else {
        return Ok(None);
    };
    let repo = reference.repo();
    for (_, body) in &descs {
        client.upload_bytes(&repo, body.clone()).await?;
    }
    let layers = descs.into_iter().map(|(d, _)| d).collect();
    let listed: Vec<(Digest, &Descriptor)> = zheads.iter().map(|(l, d)| (*l, d)).collect();
    let notes = BTreeMap::from([(
        super::head::HEADS_ANNOTATION.to_string(),
        super::head::annotation(&listed),
    )]);
    let (art_digest, art_body) = super::artifact::publish_artifact(
        client,
        store,
        reference,
        rec,
        ARTIFACT_TYPE,
        layers,
        notes,
    )
    .await?;
    progress.line(&format!(
        "index artifact {art_digest} pushed for {}",
        rec.manifest_digest
    ));
    if let Some(alias) = super::alias::publish(client, reference, art_body.clone()).await? {
        progress.line(&format!("index artifact tagged {alias}"));
    }
    if let Some(key) = sign {
        let sig = super::signed::sign_artifact(client, reference, &art_digest, key).await?;
        progress.line(&format!(
            "signature {sig} pushed as {}",
            crate::cosign::sig_tag(&art_digest)
        ));
    }
    let bound = match bind_it {
        true => {
            let d = bind::publish_bound(
                client,
                store,
                reference,
                rec,
                art_digest,
                art_body.len() as u64,
            )
            .await?;
            progress.line(&format!(
                "bound image index {}@{d} pushed{}: name it to have the index trusted",
                reference.name(),
                reference
                    .tag
                    .as_ref()
                    .map(|t| format!(" (tag {t} moved to it)"))
                    .unwrap_or_default()
            ));
            Some(d)
        }
        false => None,
    };
    Ok(Some(Published {
        artifact: art_digest,
        bound,
    }))
}
