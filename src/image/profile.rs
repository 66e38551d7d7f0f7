//! Published access profiles: the files a workload read at its first run, in first-read order,
//! pushed next to the image as an OCI artifact so that a cold start on another machine can
//! prefetch them from the first second (the role of eStargz's prioritised files and of
//! Nydus's prefetch lists, without rebuilding the image).
//!
//! The artifact is an OCI image manifest with `artifactType` [`PROFILE_ARTIFACT_TYPE`], the
//! empty config, one layer (the profile JSON, [`PROFILE_MEDIA_TYPE`]: `[[layer index, path],
//! ...]`, layer index counted from the bottom of the subject image) and `subject` = the image
//! manifest; it is found like the index sidecar (referrers API, else the `sha256-<hex>` tag).
//! A second layer ([`PROFILE_RANGES_MEDIA_TYPE`], optional: older profiles have none, older
//! clients ignore it) holds the file offsets read of each file, `[[[start, end], ...], ...]`
//! aligned with the files, so that a cold start prefetches the parts read (a large library's
//! scattered pages) rather than each file's start.
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
pub const PROFILE_RANGES_MEDIA_TYPE: &str = "application/vnd.strata.profile.ranges.v1+json";
/// Largest profile blob accepted from a registry.
const MAX_PROFILE_BYTES: u64 = 16 << 20;
/// Most files a profile may name (a recorded one keeps no more).
pub const MAX_PROFILE_FILES: usize = 100_000;

/// Most ranges a profile may hold over all its files (a recorded one keeps no more).
pub const MAX_PROFILE_RANGES: usize = 1 << 16;

/// One profile: (layer index from the bottom, path in that layer), first read first.
pub type Profile = Vec<(usize, String)>;

/// The file offsets read of each file of a [`Profile`] (same order), `[start, end)`
/// ascending; empty when not recorded.
pub type Ranges = Vec<Vec<[u64; 2]>>;

/// Where the ranges of the profile recorded on this machine for `manifest` are kept.
fn local_ranges_path(store: &Store, manifest: &Digest) -> PathBuf {
    local_path(store, manifest).with_extension("ranges.json")
}

/// The ranges of the profile recorded on this machine (empty if none: an older profile).
pub fn local_ranges(store: &Store, manifest: &Digest) -> Ranges {
    store
        .read_json(&local_ranges_path(store, manifest))
        .ok()
        .flatten()
        .unwrap_or_default()
}

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

/// Keep `profile` (and the `ranges` read of its files) as this machine's profile of
/// `manifest` unless one exists.
pub fn keep(store: &Store, manifest: &Digest, profile: &Profile, ranges: &Ranges) {
    let path = local_path(store, manifest);
    if profile.is_empty() || path.exists() {
        return;
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // The ranges first: a profile without them is taken as an older one.
    let res = store
        .write_json(&local_ranges_path(store, manifest), ranges)
        .and_then(|_| store.write_json(&path, profile));
    if let Err(e) = res {
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

/// Check the ranges of profile `p`: one list per file (a list may be empty), at most
/// [`MAX_PROFILE_RANGES`] in all, each non-empty and after the one before.
fn validate_ranges(p: &Profile, r: &Ranges, what: &str) -> Result<(), Error> {
    let bad = |msg: String| Error::Invalid {
        what: what.to_string(),
        msg,
    };
    if r.len() != p.len() {
        return Err(bad(format!(
            "ranges for {} files, the profile has {}",
            r.len(),
            p.len()
        )));
    }
    if r.iter().map(Vec::len).sum::<usize>() > MAX_PROFILE_RANGES {
        return Err(bad(format!("more than {MAX_PROFILE_RANGES} ranges")));
    }
    for (f, list) in p.iter().zip(r) {
        let mut after = 0;
        for &[a, b] in list {
            if a >= b || a < after {
                return Err(bad(format!(
                    "{:?}: range {a}..{b} is empty or out of order",
                    f.1
                )));
            }
            after = b;
        }
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
    let mut layers = vec![Descriptor::new(
        PROFILE_MEDIA_TYPE,
        profile_digest,
        body.len() as u64,
    )];
    let ranges = local_ranges(store, &rec.manifest_digest);
    if !ranges.is_empty() {
        validate_ranges(&profile, &ranges, "access profile")?;
        let body = Bytes::from(serde_json::to_vec(&ranges).map_err(|e| Error::Invalid {
            what: "access profile ranges".into(),
            msg: e.to_string(),
        })?);
        let d = client.upload_bytes(&reference.repo(), body.clone()).await?;
        layers.push(Descriptor::new(
            PROFILE_RANGES_MEDIA_TYPE,
            d,
            body.len() as u64,
        ));
    }
    super::artifact::publish_artifact(
        client,
        store,
        reference,
        rec,
        PROFILE_ARTIFACT_TYPE,
        layers,
        Default::default(),
    )
    .await
    .map(|(d, _)| d)
}

/// The newest profile published for the image and the ranges read of its files (empty when
/// it has none), if any (checked: size, layers, JSON).
pub async fn fetch(
    client: &Client,
    reference: &Reference,
    rec: &ImageRecord,
) -> Result<Option<(Profile, Ranges)>, Error> {
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
    // The artifact's layer of `media_type`, at most 16 MiB, checked against its digest.
    let layer = |media_type: &'static str| {
        let d = am.layers.iter().find(|d| d.media_type == media_type);
        async move {
            let Some(d) = d else { return Ok(None) };
            if d.size > MAX_PROFILE_BYTES {
                return Err(bad(&format!("{media_type} layer larger than 16 MiB")));
            }
            let body = client
                .get_blob_verified(&reference.repo(), &d.digest, d.size as usize)
                .await?;
            Ok(Some(body))
        }
    };
    let Some(body) = layer(PROFILE_MEDIA_TYPE).await? else {
        return Err(bad("no profile layer"));
    };
    let profile: Profile =
        serde_json::from_slice(&body).map_err(|e| bad(&format!("profile JSON: {e}")))?;
    validate(&profile, rec.layers.len(), &what)?;
    let Some(body) = layer(PROFILE_RANGES_MEDIA_TYPE).await? else {
        return Ok(Some((profile, Ranges::new())));
    };
    let ranges: Ranges =
        serde_json::from_slice(&body).map_err(|e| bad(&format!("profile ranges JSON: {e}")))?;
    validate_ranges(&profile, &ranges, &what)?;
    Ok(Some((profile, ranges)))
}

#[cfg(test)]
mod tests {
    use super::validate_ranges;

    /// Ranges from a registry: one list per file, each range non-empty and after the last.
    #[test]
    fn published_ranges_are_checked() {
        let p = vec![(0, "a".to_string()), (1, "b".to_string())];
        assert!(validate_ranges(&p, &vec![vec![[0, 10], [20, 30]], vec![]], "t").is_ok());
        for bad in [
            vec![vec![[0, 10]]],
            vec![vec![[10, 10]], vec![]],
            vec![vec![[20, 30], [0, 10]], vec![]],
            vec![vec![[0, 10], [5, 30]], vec![]],
        ] {
            assert!(validate_ranges(&p, &bad, "t").is_err(), "{bad:?}");
        }
        let many = vec![
            (0..(1 << 16) + 1).map(|i| [2 * i, 2 * i + 1]).collect(),
            vec![],
        ];
        assert!(validate_ranges(&p, &many, "t").is_err());
    }
}
