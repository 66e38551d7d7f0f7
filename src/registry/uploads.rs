//! Uploads (to the upstream only, never a mirror): whether a blob exists, monolithic blob
//! uploads (POST, PATCH, PUT with the digest) from a file or memory, and manifest PUTs. Uses the
//! parent's client, error type and helpers.

use super::{check_status, location, Client, Error};
use crate::digest::Digest;
use bytes::Bytes;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};

impl Client {
    /// Whether the registry already has a blob (HEAD).
    pub async fn blob_exists(
        &self,
        registry: &str,
        repo: &str,
        digest: &Digest,
    ) -> Result<bool, Error> {
        let ep = self.upstream(registry);
        let url = format!("{}/v2/{}/blobs/{}", ep.base, repo, digest);
        let resp = self
            .send(&ep, &Self::scope_push(repo), Method::HEAD, &url, |r| r)
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            status => Err(Error::Status {
                method: Method::HEAD,
                url,
                status,
                body: String::new(),
            }),
        }
    }

    /// Upload a blob from a local file: POST, PATCH with the content, PUT with the digest.
    pub async fn upload_blob(
        &self,
        registry: &str,
        repo: &str,
        digest: &Digest,
        path: &std::path::Path,
    ) -> Result<(), Error> {
        let data = tokio::fs::read(path).await.map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        self.upload_data(registry, repo, digest, Bytes::from(data))
            .await
    }

    /// POST an upload session, PATCH the content, PUT with the digest (the registry checks it).
    async fn upload_data(
        &self,
        registry: &str,
        repo: &str,
        digest: &Digest,
        data: Bytes,
    ) -> Result<(), Error> {
        let ep = self.upstream(registry);
        let scope = Self::scope_push(repo);
        let post_url = format!("{}/v2/{}/blobs/uploads/", ep.base, repo);
        let resp = self
            .send(&ep, &scope, Method::POST, &post_url, |r| {
                r.header(reqwest::header::CONTENT_LENGTH, "0")
            })
            .await?;
        let resp = check_status(resp, Method::POST, &post_url, repo).await?;
        let loc = location(&ep, resp.headers(), &post_url)?;
        let resp = self
            .send(&ep, &scope, Method::PATCH, &loc, |r| {
                r.header(CONTENT_TYPE, "application/octet-stream")
                    .body(data.clone())
            })
            .await?;
        let resp = check_status(resp, Method::PATCH, &loc, repo).await?;
        let loc = location(&ep, resp.headers(), &loc)?;
        let sep = if loc.contains('?') { '&' } else { '?' };
        let put_url = format!("{loc}{sep}digest={digest}");
        let resp = self
            .send(&ep, &scope, Method::PUT, &put_url, |r| {
                r.header(reqwest::header::CONTENT_LENGTH, "0")
            })
            .await?;
        check_status(resp, Method::PUT, &put_url, repo).await?;
        Ok(())
    }

    /// Upload a manifest under a tag or digest reference.
    pub async fn put_manifest(
        &self,
        registry: &str,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: Bytes,
    ) -> Result<(), Error> {
        let ep = self.upstream(registry);
        let url = format!("{}/v2/{}/manifests/{}", ep.base, repo, reference);
        let resp = self
            .send(&ep, &Self::scope_push(repo), Method::PUT, &url, |r| {
                r.header(CONTENT_TYPE, media_type).body(body.clone())
            })
            .await?;
        check_status(resp, Method::PUT, &url, repo).await?;
        Ok(())
    }

    /// Upload a small blob held in memory (skipped when the registry has it).
    pub async fn upload_bytes(
        &self,
        registry: &str,
        repo: &str,
        data: Bytes,
    ) -> Result<Digest, Error> {
        let digest = Digest::of(&data);
        if !self.blob_exists(registry, repo, &digest).await? {
            self.upload_data(registry, repo, &digest, data).await?;
        }
        Ok(digest)
    }
}
