//! Uploads (to the upstream only, never a mirror; registries.conf rewrites apply): whether a blob exists, monolithic blob
//! uploads (POST, PATCH, PUT with the digest) from a file or memory, and manifest PUTs. Uses the
//! parent's client, error type and helpers.

use super::{check_status, location, Client, Error};
use crate::digest::Digest;
use crate::reference::Repository;
use bytes::Bytes;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};

impl Client {
    /// Whether the registry already has a blob (HEAD).
    pub async fn blob_exists(&self, repo: &Repository, digest: &Digest) -> Result<bool, Error> {
        let ep = self.upstream(repo)?;
        let url = ep.url(&repo.name, &format!("blobs/{digest}"));
        let resp = self
            .send(
                &ep,
                &Self::scope_push(ep.repo_name(&repo.name)),
                Method::HEAD,
                &url,
                |r| r,
            )
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
        repo: &Repository,
        digest: &Digest,
        path: &std::path::Path,
    ) -> Result<(), Error> {
        let data = tokio::fs::read(path).await.map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        self.upload_data(repo, digest, Bytes::from(data)).await
    }

    /// POST an upload session, PATCH the content, PUT with the digest (the registry checks it).
    async fn upload_data(
        &self,
        repo: &Repository,
        digest: &Digest,
        data: Bytes,
    ) -> Result<(), Error> {
        let ep = self.upstream(repo)?;
        let scope = Self::scope_push(ep.repo_name(&repo.name));
        let post_url = ep.url(&repo.name, "blobs/uploads/");
        let resp = self
            .send(&ep, &scope, Method::POST, &post_url, |r| {
                r.header(reqwest::header::CONTENT_LENGTH, "0")
            })
            .await?;
        let resp = check_status(resp, Method::POST, &post_url, &repo.name).await?;
        let loc = location(&ep, resp.headers(), &post_url)?;
        let resp = self
            .send(&ep, &scope, Method::PATCH, &loc, |r| {
                r.header(CONTENT_TYPE, "application/octet-stream")
                    .body(data.clone())
            })
            .await?;
        let resp = check_status(resp, Method::PATCH, &loc, &repo.name).await?;
        let loc = location(&ep, resp.headers(), &loc)?;
        let sep = if loc.contains('?') { '&' } else { '?' };
        let put_url = format!("{loc}{sep}digest={digest}");
        let resp = self
            .send(&ep, &scope, Method::PUT, &put_url, |r| {
                r.header(reqwest::header::CONTENT_LENGTH, "0")
            })
            .await?;
        check_status(resp, Method::PUT, &put_url, &repo.name).await?;
        Ok(())
    }

    /// Upload a manifest under a tag or digest reference.
    pub async fn put_manifest(
        &self,
        repo: &Repository,
        reference: &str,
        media_type: &str,
        body: Bytes,
    ) -> Result<(), Error> {
        let ep = self.upstream(repo)?;
        let url = ep.url(&repo.name, &format!("manifests/{reference}"));
        let resp = self
            .send(
                &ep,
                &Self::scope_push(ep.repo_name(&repo.name)),
                Method::PUT,
                &url,
                |r| r.header(CONTENT_TYPE, media_type).body(body.clone()),
            )
            .await?;
        check_status(resp, Method::PUT, &url, &repo.name).await?;
        Ok(())
    }

    /// Upload a small blob held in memory (skipped when the registry has it).
    pub async fn upload_bytes(&self, repo: &Repository, data: Bytes) -> Result<Digest, Error> {
        let digest = Digest::of(&data);
        if !self.blob_exists(repo, &digest).await? {
            self.upload_data(repo, &digest, data).await?;
        }
        Ok(digest)
    }
}
