//! `pull`: resolve, then download config and layers in parallel, each verified before it is
//! published in the store.

use super::{Error, Progress};
use crate::digest::Digest;
use crate::oci::{ImageConfig, Platform};
use crate::reference::Reference;
use crate::registry::{Client, Resolved};
use crate::store::{ImageRecord, Store};
use futures::StreamExt;
use std::sync::Arc;

const MAX_CONFIG_BYTES: usize = 16 << 20;
/// Whole-blob attempts when a body is cut mid-stream.
const BLOB_ATTEMPTS: u32 = 3;

/// Store the manifest(s) and config of a resolved image and write its record. Layers are not
/// fetched here; `complete` says whether they are all local.
pub async fn record_image(
    client: &Client,
    store: &Store,
    reference: &Reference,
    resolved: &Resolved,
    platform: &Platform,
) -> Result<(ImageRecord, ImageConfig), Error> {
    let repo_digests = store_manifests(store, reference, resolved)?;
    let cfg_desc = &resolved.image.config;
    let cfg_bytes = if store.has_blob(&cfg_desc.digest) {
        bytes::Bytes::from(store.read_blob(&cfg_desc.digest)?)
    } else {
        let b = client
            .get_blob_verified(&reference.repo(), &cfg_desc.digest, MAX_CONFIG_BYTES)
            .await?;
        store.put_blob(cfg_desc.digest, &b, &format!("config {}", cfg_desc.digest))?;
        b
    };
    let config: ImageConfig = serde_json::from_slice(&cfg_bytes).map_err(|e| Error::Invalid {
        what: format!("{reference} config {}", cfg_desc.digest),
        msg: e.to_string(),
    })?;
    if !config.rootfs.diff_ids.is_empty()
        && config.rootfs.diff_ids.len() != resolved.image.layers.len()
    {
        return Err(Error::Invalid {
            what: reference.to_string(),
            msg: format!(
                "manifest has {} layers but config lists {} diff_ids",
                resolved.image.layers.len(),
                config.rootfs.diff_ids.len()
            ),
        });
    }
    let complete = resolved
        .image
        .layers
        .iter()
        .all(|l| store.has_blob(&l.digest));
    let rec = ImageRecord {
        manifest_digest: resolved.manifest.digest,
        manifest_media_type: resolved.manifest.media_type.clone(),
        config_digest: cfg_desc.digest,
        layers: resolved.image.layers.clone(),
        repo_digests,
        index_digest: resolved.index.as_ref().map(|i| i.digest),
        created: config.created.clone(),
        platform: platform_of(&config, platform),
        stored_at: chrono::Utc::now().to_rfc3339(),
        complete,
    };
    store.put_image(&rec)?;
    if reference.tag.is_some() {
        store.tag(reference, &rec.manifest_digest)?;
    }
    Ok((rec, config))
}

fn platform_of(cfg: &ImageConfig, fallback: &Platform) -> String {
    if cfg.os.is_empty() || cfg.architecture.is_empty() {
        return fallback.to_string();
    }
    let mut s = format!("{}/{}", cfg.os, cfg.architecture);
    if let Some(v) = &cfg.variant {
        s.push('/');
        s.push_str(v);
    }
    s
}

/// Pull every blob of an image into the store.
pub async fn pull(
    client: Arc<Client>,
    store: Arc<Store>,
    reference: &Reference,
    platform: &Platform,
    progress: &Progress,
) -> Result<ImageRecord, Error> {
    pull_first(
        client,
        store,
        std::slice::from_ref(reference),
        platform,
        progress,
    )
    .await
    .map(|(_, rec)| rec)
}

/// Pull the first of `candidates` the registry has (the search registries of a short name,
/// in order); returns which one it was.
pub async fn pull_first(
    client: Arc<Client>,
    store: Arc<Store>,
    candidates: &[Reference],
    platform: &Platform,
    progress: &Progress,
) -> Result<(Reference, ImageRecord), Error> {
    if let [one] = candidates {
        progress.line(&format!(
            "{}: Pulling from {}",
            one.api_reference(),
            one.familiar_name()
        ));
    }
    let (reference, resolved) = resolve_first(&client, candidates, platform).await?;
    let reference = &reference;
    let tag_or_digest = reference.api_reference();
    if candidates.len() > 1 {
        progress.line(&format!(
            "{tag_or_digest}: Pulling from {}",
            reference.familiar_name()
        ));
    }
    let layers = resolved.image.layers.clone();
    let limit = client.config().max_concurrent_downloads.max(1);
    let results: Vec<Result<(), Error>> = futures::stream::iter(layers.iter().map(|l| {
        let client = client.clone();
        let store = store.clone();
        let reference = reference.clone();
        let desc = l.clone();
        let bar = (!store.has_blob(&desc.digest))
            .then(|| progress.bar(&desc.digest, desc.size, "Downloading"))
            .flatten();
        async move {
            if store.has_blob(&desc.digest) {
                return Ok(false);
            }
            let r = fetch_blob(
                &client,
                &store,
                &reference,
                &desc.digest,
                desc.size,
                bar.as_ref(),
            )
            .await;
            if let Some(b) = bar {
                b.finish_with_message(if r.is_ok() { "Pull complete" } else { "failed" });
            }
            r.map(|_| true).map_err(|e| Error::Layer {
                digest: desc.digest,
                source: Box::new(e),
            })
        }
    }))
    .buffered(limit)
    .map(|r| r.map(|_| ()))
    .collect()
    .await;
    for (l, r) in layers.iter().zip(&results) {
        if r.is_ok() {
            progress.line(&format!("{}: Pull complete", l.digest.short()));
        }
    }
    if let Some(e) = results.into_iter().find_map(Result::err) {
        return Err(e);
    }
    let (rec, _) = record_image(&client, &store, reference, &resolved, platform).await?;
    progress.line(&format!("Digest: {}", resolved.repo_digest));
    progress.line(&format!(
        "Status: Downloaded image for {}",
        reference.familiar_name() + ":" + &tag_or_digest
    ));
    Ok((reference.clone(), rec))
}

/// Stream one blob into the store, verifying it; retried whole when the body is cut.
pub(super) async fn fetch_blob(
    client: &Client,
    store: &Store,
    reference: &Reference,
    digest: &Digest,
    size: u64,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<(), Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let resp = client.get_blob(&reference.repo(), digest, None).await?;
        let mut w = store.blob_writer(*digest, format!("layer {digest}"))?;
        let mut stream = resp.bytes_stream();
        let mut cut = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => {
                    if w.written() + c.len() as u64 > size {
                        return Err(Error::Invalid {
                            what: format!("layer {digest}"),
                            msg: format!(
                                "registry sent more than the {size} bytes the manifest declares"
                            ),
                        });
                    }
                    w.write(&c)?;
                    if let Some(b) = bar {
                        b.set_position(w.written());
                    }
                }
                Err(e) => {
                    cut = Some(e);
                    break;
                }
            }
        }
        match cut {
            None => match w.commit() {
                Ok(()) => return Ok(()),
                // Bytes that are not the blob: the mirrors that served them are dropped and
                // the download is tried again (from the upstream, the reference).
                Err(e @ crate::store::Error::DigestMismatch { .. }) => {
                    let dropped = client.drop_mirrors_that_served(digest);
                    tracing::error!(
                        image = %reference,
                        layer = %digest,
                        mirrors = ?dropped,
                        "downloaded layer does not match its digest; mirrors that served it are dropped: {e}"
                    );
                    if dropped.is_empty() || attempt >= BLOB_ATTEMPTS {
                        return Err(e.into());
                    }
                }
                Err(e) => return Err(e.into()),
            },
            Some(e) if attempt < BLOB_ATTEMPTS => {
                tracing::warn!(layer = %digest, attempt, "download cut, retrying: {e}");
            }
            Some(e) => {
                return Err(Error::Registry(crate::registry::Error::Http {
                    method: reqwest::Method::GET,
                    url: format!("{}/{}@{digest}", reference.registry, reference.repository),
                    source: e,
                }))
            }
        }
    }
}

/// An image's record: local if the store knows `image` (a name, an id or a digest), else
/// resolved in its registry for `platform` (default: the host's) with the manifest and config
/// stored and no layer fetched. A short name goes through the client's registries.conf rules
/// (alias, search registries in order; ambiguous is an error).
pub async fn resolve(
    client: &Arc<Client>,
    store: &Arc<Store>,
    image: &str,
    platform: Option<&str>,
) -> Result<(Reference, ImageRecord), Error> {
    resolve_hooked(client, store, image, platform, None).await
}

async fn resolve_hooked(
    client: &Arc<Client>,
    store: &Arc<Store>,
    image: &str,
    platform: Option<&str>,
    hook: Option<EarlyHook<'_>>,
) -> Result<(Reference, ImageRecord), Error> {
    let reference: Reference = image.parse()?;
    if let Ok(rec) = store.find_image(image) {
        return Ok((reference, rec));
    }
    let platform = parse_platform(platform)?;
    if let Some(found) = find_candidate(client, store, image)? {
        return Ok(found);
    }
    resolve_remote(client, store, image, &platform, hook).await
}

/// Store `resolved`'s manifest (and image index) blobs; the repo digest it is known by.
fn store_manifests(
    store: &Store,
    reference: &Reference,
    resolved: &Resolved,
) -> Result<std::collections::BTreeSet<String>, Error> {
    let what = |d: &Digest| format!("{reference} {d}");
    store.put_blob(
        resolved.manifest.digest,
        &resolved.manifest.bytes,
        &what(&resolved.manifest.digest),
    )?;
    if let Some(idx) = &resolved.index {
        store.put_blob(idx.digest, &idx.bytes, &what(&idx.digest))?;
    }
    let mut repo_digests = std::collections::BTreeSet::new();
    repo_digests.insert(format!("{}@{}", reference.name(), resolved.repo_digest));
    Ok(repo_digests)
}

/// A record of the image `resolved` made from its manifest alone, before its config is
/// fetched (no creation date or platform; never stored): what the layer-index lookup needs.
fn provisional(
    resolved: &Resolved,
    repo_digests: std::collections::BTreeSet<String>,
) -> ImageRecord {
    ImageRecord {
        manifest_digest: resolved.manifest.digest,
        manifest_media_type: resolved.manifest.media_type.clone(),
        config_digest: resolved.image.config.digest,
        layers: resolved.image.layers.clone(),
        repo_digests,
        index_digest: resolved.index.as_ref().map(|i| i.digest),
        created: None,
        platform: String::new(),
        stored_at: String::new(),
        complete: false,
    }
}

/// Told of an image resolved in its registry as soon as its manifest is in (stored), before
/// its config is fetched: the name and a record from the manifest alone ([`resolve_early`]).
pub type EarlyHook<'a> = &'a (dyn Fn(&Reference, &ImageRecord) + Send + Sync);

/// `--platform` parsed, or the host's.
fn parse_platform(platform: Option<&str>) -> Result<Platform, Error> {
    match platform {
        Some(p) => p.parse::<Platform>().map_err(|msg| Error::Invalid {
            what: format!("platform {p}"),
            msg,
        }),
        None => Ok(Platform::host()),
    }
}

/// The first name `image` stands for (registries.conf rules) that the store knows.
fn find_candidate(
    client: &Client,
    store: &Store,
    image: &str,
) -> Result<Option<(Reference, ImageRecord)>, Error> {
    for c in client.candidates(image)? {
        if let Ok(rec) = store.find_image(&c.to_string()) {
            return Ok(Some((c, rec)));
        }
    }
    Ok(None)
}

/// `image` resolved in its registry (the first candidate name found) and recorded.
async fn resolve_remote(
    client: &Arc<Client>,
    store: &Arc<Store>,
    image: &str,
    platform: &Platform,
    hook: Option<EarlyHook<'_>>,
) -> Result<(Reference, ImageRecord), Error> {
    let candidates = client.candidates(image)?;
    let (reference, resolved) = resolve_first(client, &candidates, platform).await?;
    if let Some(hook) = hook {
        let repo_digests = store_manifests(store, &reference, &resolved)?;
        hook(&reference, &provisional(&resolved, repo_digests));
    }
    let (rec, _) = record_image(client, store, &reference, &resolved, platform).await?;
    Ok((reference, rec))
}

/// docker's `run --pull`: when to ask the registry for an image's manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Always resolve the name in the registry (a moved tag is followed).
    Always,
    /// Only when the store does not know the image (the default).
    #[default]
    Missing,
    /// Never: an image the store does not know is an error.
    Never,
}

impl std::str::FromStr for PullPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(PullPolicy::Always),
            "missing" => Ok(PullPolicy::Missing),
            "never" => Ok(PullPolicy::Never),
            _ => Err(format!(
                "invalid --pull {s:?}: expected always, missing or never"
            )),
        }
    }
}

/// [`resolve`] under a pull policy.
pub async fn resolve_with(
    client: &Arc<Client>,
    store: &Arc<Store>,
    image: &str,
    platform: Option<&str>,
    policy: PullPolicy,
) -> Result<(Reference, ImageRecord), Error> {
    resolve_early(client, store, image, platform, policy, None).await
}

/// [`resolve_with`], telling `hook` of an image resolved in its registry as soon as its
/// manifest is in (see [`EarlyHook`]).
pub async fn resolve_early(
    client: &Arc<Client>,
    store: &Arc<Store>,
    image: &str,
    platform: Option<&str>,
    policy: PullPolicy,
    hook: Option<EarlyHook<'_>>,
) -> Result<(Reference, ImageRecord), Error> {
    match policy {
        PullPolicy::Missing => resolve_hooked(client, store, image, platform, hook).await,
        PullPolicy::Never => {
            let reference: Reference = image.parse()?;
            if let Ok(rec) = store.find_image(image) {
                return Ok((reference, rec));
            }
            find_candidate(client, store, image)?.ok_or_else(|| Error::Invalid {
                what: format!("image {image}"),
                msg: "not known locally and --pull never forbids asking the registry".into(),
            })
        }
        PullPolicy::Always => {
            let platform = parse_platform(platform)?;
            resolve_remote(client, store, image, &platform, hook).await
        }
    }
}

/// The first of `candidates` that the registry resolves; a candidate that is not found (or
/// refused) passes to the next, the last one's error is returned.
pub async fn resolve_first(
    client: &Client,
    candidates: &[Reference],
    platform: &Platform,
) -> Result<(Reference, crate::registry::Resolved), Error> {
    let mut last = None;
    for (i, c) in candidates.iter().enumerate() {
        match client.resolve(c, platform).await {
            Ok(r) => return Ok((c.clone(), r)),
            Err(e) if i + 1 < candidates.len() => {
                tracing::info!("{c}: {e}; trying the next search registry");
                last = Some(e);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(match last {
        Some(e) => e.into(),
        None => Error::Invalid {
            what: "image name".into(),
            msg: "no candidate reference".into(),
        },
    })
}
