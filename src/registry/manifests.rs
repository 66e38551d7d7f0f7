//! Manifest requests: fetch a manifest or index by tag or digest (its digest verified),
//! resolve a reference to one platform's image manifest, referrers (API or tag schema), tags
//! and the catalog. Uses the parent's client, error type and helpers, and `manifest` for the
//! documents.

use super::{check_status, content_type, read_limited, Client, Error, Op, MAX_MANIFEST_BYTES};
use crate::digest::Digest;
use crate::oci::{self, AnyManifest, Platform};
use crate::reference::{Reference, Repository};
use bytes::Bytes;
use reqwest::header::ACCEPT;
use reqwest::Method;

/// Every manifest type strata accepts, for the `Accept` header.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// A manifest or index as fetched: raw bytes, their digest, the content type, parsed form.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Bytes,
    pub digest: Digest,
    pub media_type: String,
    pub manifest: AnyManifest,
}

/// An image resolved to one platform's manifest.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Digest of what the reference points at (the index for multi-platform images).
    pub repo_digest: Digest,
    pub index: Option<FetchedManifest>,
    pub manifest: FetchedManifest,
    pub image: oci::ImageManifest,
}

impl Client {
    /// Fetch a manifest or index by tag or digest, verifying its digest.
    pub async fn get_manifest(&self, reference: &Reference) -> Result<FetchedManifest, Error> {
        self.get_manifest_via(reference, Op::for_reference(reference))
            .await
    }

    /// [`get_manifest`](Self::get_manifest) from the endpoints of `op` (`Op::PullUpstream`:
    /// the upstream alone).
    pub async fn get_manifest_via(
        &self,
        reference: &Reference,
        op: Op,
    ) -> Result<FetchedManifest, Error> {
        let what = reference.to_string();
        let repo = reference.repo();
        self.on_endpoints(&repo, op, None, |ep| {
            let what = what.clone();
            async move {
                let url = ep.url(
                    &reference.repository,
                    &format!("manifests/{}", reference.api_reference()),
                );
                let scope = Self::scope_pull(ep.repo_name(&reference.repository));
                let resp = self
                    .send(&ep, &scope, Method::GET, &url, |r| {
                        r.header(ACCEPT, ACCEPT_MANIFESTS)
                    })
                    .await?;
                let resp = check_status(resp, Method::GET, &url, &what).await?;
                let media_type = content_type(resp.headers());
                let header_digest = resp
                    .headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<Digest>().ok());
                let bytes = read_limited(resp, MAX_MANIFEST_BYTES, &url).await?;
                let digest = Digest::of(&bytes);
                if let Some(want) = reference.digest {
                    if want != digest {
                        return Err(Error::DigestMismatch {
                            what,
                            expected: want,
                            got: digest,
                        });
                    }
                }
                if let Some(h) = header_digest {
                    if h != digest {
                        return Err(Error::DigestMismatch {
                            what: format!("{what} (Docker-Content-Digest)"),
                            expected: h,
                            got: digest,
                        });
                    }
                }
                let manifest =
                    AnyManifest::parse(media_type.as_deref(), &bytes).map_err(|msg| {
                        Error::BadManifest {
                            what: what.clone(),
                            msg,
                        }
                    })?;
                let media_type = media_type.unwrap_or_else(|| match &manifest {
                    AnyManifest::Index(i) => i
                        .media_type
                        .clone()
                        .unwrap_or_else(|| oci::OCI_INDEX.into()),
                    AnyManifest::Image(m) => m
                        .media_type
                        .clone()
                        .unwrap_or_else(|| oci::OCI_MANIFEST.into()),
                });
                Ok(FetchedManifest {
                    bytes,
                    digest,
                    media_type,
                    manifest,
                })
            }
        })
        .await
    }

    /// Resolve a reference to one image manifest, choosing from an index by platform.
    pub async fn resolve(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<Resolved, Error> {
        let top = self.get_manifest(reference).await?;
        match &top.manifest {
            AnyManifest::Image(m) => Ok(Resolved {
                repo_digest: top.digest,
                image: m.clone(),
                manifest: top.clone(),
                index: None,
            }),
            AnyManifest::Index(idx) => {
                // Artifacts bound to an image (a sidecar index entry of `strata index
                // --bind`) carry the image's platform too: they are never the image.
                let chosen = idx
                    .manifests
                    .iter()
                    .filter(|d| d.artifact_type.is_none())
                    .find(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)))
                    .ok_or_else(|| Error::NoPlatform {
                        reference: reference.to_string(),
                        wanted: platform.to_string(),
                        available: idx
                            .manifests
                            .iter()
                            .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?;
                let child = self
                    .get_manifest(&reference.with_digest(chosen.digest))
                    .await?;
                let AnyManifest::Image(m) = &child.manifest else {
                    return Err(Error::BadManifest {
                        what: reference.to_string(),
                        msg: "index entry points at another index".into(),
                    });
                };
                Ok(Resolved {
                    repo_digest: top.digest,
                    image: m.clone(),
                    manifest: child.clone(),
                    index: Some(top),
                })
            }
        }
    }

    /// Repository names from the catalog API (all pages).
    pub async fn catalog(&self, registry: &str) -> Result<Vec<String>, Error> {
        let ep = self.upstream(&Repository {
            registry: registry.to_string(),
            name: String::new(),
        })?;
        let mut url = format!("{}/_catalog?n=1000", ep.api);
        let mut out = Vec::new();
        for _ in 0..1000 {
            let resp = self
                .send(&ep, "registry:catalog:*", Method::GET, &url, |r| r)
                .await?;
            let resp = check_status(resp, Method::GET, &url, registry).await?;
            let next = resp
                .headers()
                .get(reqwest::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| l.split(';').next())
                .map(|l| {
                    l.trim()
                        .trim_start_matches('<')
                        .trim_end_matches('>')
                        .to_string()
                });
            #[derive(serde::Deserialize)]
            struct Cat {
                #[serde(default)]
                repositories: Vec<String>,
            }
            let body = read_limited(resp, 16 << 20, &url).await?;
            let cat: Cat = serde_json::from_slice(&body).map_err(|e| Error::BadManifest {
                what: url.clone(),
                msg: e.to_string(),
            })?;
            out.extend(cat.repositories);
            match next {
                Some(n) if n.starts_with('/') => url = format!("{}{}", ep.base, n),
                Some(n) if n.starts_with("http") => url = n,
                _ => break,
            }
        }
        Ok(out)
    }

    /// Referrers of a manifest: the referrers API first; where the registry lacks it (404), the
    /// referrers tag schema (`sha256-<hex>` tag holding an OCI index). Returns the index and
    /// whether it came from the tag schema.
    pub async fn referrers(
        &self,
        repo: &Repository,
        subject: &Digest,
    ) -> Result<(oci::ImageIndex, bool), Error> {
        self.referrers_via(repo, subject, Op::Pull).await
    }

    /// [`referrers`](Self::referrers) from the endpoints of `op` (`Op::PullUpstream`: the
    /// upstream alone, where a mirror cannot slip a forged referrer in).
    pub async fn referrers_via(
        &self,
        repo: &Repository,
        subject: &Digest,
        op: Op,
    ) -> Result<(oci::ImageIndex, bool), Error> {
        // Mirrors first (with `Op::Pull`), as for manifests and blobs: a node may reach only
        // its mirror. Any answer but a success means "no referrers API here" (the tag schema
        // follows); only a failure to get an answer moves on to the next endpoint. The tag
        // schema is asked at the same time (one round trip instead of two on the many
        // registries without the API; its answer is dropped when the API answered).
        let api = self.on_endpoints(repo, op, None, |ep| async move {
            let url = ep.url(&repo.name, &format!("referrers/{subject}"));
            let resp = self
                .send(
                    &ep,
                    &Self::scope_pull(ep.repo_name(&repo.name)),
                    Method::GET,
                    &url,
                    |r| r.header(ACCEPT, oci::OCI_INDEX),
                )
                .await?;
            if !resp.status().is_success() {
                return Ok(None);
            }
            let body = read_limited(resp, MAX_MANIFEST_BYTES, &url).await?;
            let idx = serde_json::from_slice(&body).map_err(|e| Error::BadManifest {
                what: url.clone(),
                msg: e.to_string(),
            })?;
            Ok(Some(idx))
        });
        let tag_ref = repo.tag(referrers_tag(subject));
        let tag_op = if op == Op::Pull { Op::Resolve } else { op };
        let (api, tag) = tokio::join!(api, self.get_manifest_via(&tag_ref, tag_op));
        match api {
            Ok(Some(idx)) => return Ok((idx, false)),
            Ok(None) => {}
            Err(e) => tracing::debug!("referrers API of {repo}: {e}; trying the tag schema"),
        }
        match tag {
            Ok(f) => match f.manifest {
                AnyManifest::Index(i) => Ok((i, true)),
                AnyManifest::Image(_) => Err(Error::BadManifest {
                    what: tag_ref.to_string(),
                    msg: "referrers tag does not hold an index".into(),
                }),
            },
            Err(Error::NotFound { .. }) => Ok((
                oci::ImageIndex {
                    schema_version: 2,
                    media_type: Some(oci::OCI_INDEX.into()),
                    manifests: Vec::new(),
                    annotations: None,
                },
                true,
            )),
            Err(e) => Err(e),
        }
    }

    /// Tags of one repository.
    pub async fn tags(&self, repo: &Repository) -> Result<Vec<String>, Error> {
        let ep = self.upstream(repo)?;
        let url = ep.url(&repo.name, "tags/list");
        let resp = self
            .send(
                &ep,
                &Self::scope_pull(ep.repo_name(&repo.name)),
                Method::GET,
                &url,
                |r| r,
            )
            .await?;
        let resp = check_status(resp, Method::GET, &url, &repo.to_string()).await?;
        #[derive(serde::Deserialize)]
        struct Tags {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let body = read_limited(resp, 16 << 20, &url).await?;
        let t: Tags = serde_json::from_slice(&body).map_err(|e| Error::BadManifest {
            what: url,
            msg: e.to_string(),
        })?;
        Ok(t.tags.unwrap_or_default())
    }
}

/// The referrers tag schema's tag for a subject digest: `sha256-<hex>`.
pub fn referrers_tag(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}
