//! Blob downloads: a streamed GET (optionally of a byte range, the answer's `Content-Range`
//! checked), a ranged read into memory, and a whole small blob verified against its digest.
//! Mirrors first (those that serve content by digest), then the upstream. Uses the parent's client, error type and helpers.

use super::{check_status, range, read_limited, Client, Error, Op};
use crate::digest::Digest;
use crate::reference::Repository;
use bytes::Bytes;
use reqwest::header::RANGE;
use reqwest::{Method, Response, StatusCode};
use std::ops::Range;

impl Client {
    /// Start a blob download, optionally of a byte range. The caller streams and verifies.
    pub async fn get_blob(
        &self,
        repo: &Repository,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<Response, Error> {
        let what = format!("blob {digest} in {repo}");
        self.on_endpoints(repo, Op::Pull, |ep| {
            let range = range.clone();
            let what = what.clone();
            async move {
                let url = ep.url(&repo.name, &format!("blobs/{digest}"));
                let scope = Self::scope_pull(ep.repo_name(&repo.name));
                let resp = self
                    .send(&ep, &scope, Method::GET, &url, |r| match &range {
                        Some(rg) => r.header(
                            RANGE,
                            format!("bytes={}-{}", rg.start, rg.end.saturating_sub(1)),
                        ),
                        None => r,
                    })
                    .await?;
                let resp = check_status(resp, Method::GET, &url, &what).await?;
                if let Some(rg) = &range {
                    if resp.status() != StatusCode::PARTIAL_CONTENT {
                        return Err(Error::RangeIgnored {
                            what,
                            status: resp.status(),
                        });
                    }
                    range::check_content_range(resp.headers(), rg, &what)?;
                }
                Ok(resp)
            }
        })
        .await
    }

    /// Fetch a byte range of a blob into memory (bounded by the range length).
    pub async fn get_blob_range(
        &self,
        repo: &Repository,
        digest: &Digest,
        range: Range<u64>,
    ) -> Result<Bytes, Error> {
        let len = range.end.saturating_sub(range.start) as usize;
        let url = format!("{repo}@{digest} bytes {}..{}", range.start, range.end);
        let resp = self.get_blob(repo, digest, Some(range)).await?;
        let body = read_limited(resp, len, &url).await?;
        if body.len() != len {
            return Err(Error::Status {
                method: Method::GET,
                url,
                status: StatusCode::PARTIAL_CONTENT,
                body: format!("short body: {} of {len} bytes", body.len()),
            });
        }
        Ok(body)
    }

    /// Fetch a whole small blob (config, index artifact) and verify it.
    pub async fn get_blob_verified(
        &self,
        repo: &Repository,
        digest: &Digest,
        limit: usize,
    ) -> Result<Bytes, Error> {
        let resp = self.get_blob(repo, digest, None).await?;
        let what = format!("blob {digest} in {repo}");
        let body = read_limited(resp, limit, &what).await?;
        let got = Digest::of(&body);
        if got != *digest {
            return Err(Error::DigestMismatch {
                what,
                expected: *digest,
                got,
            });
        }
        Ok(body)
    }
}
