//! Distribution v2 client: ping, auth, manifests, ranged blob reads, uploads, catalog.
//!
//! Uses `reference`, `digest`, `config`; knows nothing of the store or of FUSE. Mirrors are tried
//! in order before the upstream; retries with backoff live in one place ([`Client::send`]).

pub mod auth;
pub mod manifest;
mod range;

use crate::config::Config;
use crate::digest::Digest;
use crate::reference::Reference;
use auth::{Challenge, CredentialStore, Credentials};
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use manifest::{AnyManifest, Platform, ACCEPT_MANIFESTS};
use reqwest::header::{
    HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION, RANGE, WWW_AUTHENTICATE,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest manifest or index document accepted.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{method} {url}: {source}")]
    Http {
        method: Method,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {url}: registry answered {status}: {body}")]
    Status {
        method: Method,
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("{what}: not found")]
    NotFound { what: String },
    #[error("{registry}: authentication required or refused ({detail})")]
    Unauthorized { registry: String, detail: String },
    #[error("{what}: digest mismatch: expected {expected}, got {got}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        got: Digest,
    },
    #[error("{what}: {msg}")]
    BadManifest { what: String, msg: String },
    #[error("{reference}: no manifest for platform {wanted} (available: {available})")]
    NoPlatform {
        reference: String,
        wanted: String,
        available: String,
    },
    #[error("{what}: body larger than {limit} bytes")]
    TooLarge { what: String, limit: usize },
    #[error("{what}: registry ignored the Range request ({status})")]
    RangeIgnored { what: String, status: StatusCode },
    #[error("{what}: asked for bytes {asked}, registry answered 206 with Content-Range {got:?}")]
    BadContentRange {
        what: String,
        asked: String,
        got: String,
    },
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("building HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

impl Error {
    /// Whether trying the next endpoint (mirror -> upstream) might help.
    fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }
}

/// Bounded retries with exponential backoff, shared by every request.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    fn delay(&self, attempt: u32) -> Duration {
        let d = self.base_delay.saturating_mul(1u32 << attempt.min(10));
        d.min(self.max_delay)
    }
}

/// One base URL to talk to for a registry: a mirror or the upstream itself.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// e.g. `http://127.0.0.1:5000` (no trailing slash)
    pub base: String,
    /// Host whose credentials apply (the mirror's own host for mirrors).
    pub auth_host: String,
    pub mirror: bool,
}

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
    pub image: manifest::ImageManifest,
}

/// The registry client. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Client {
    http: reqwest::Client,
    config: Arc<Config>,
    creds: CredentialStore,
    override_creds: Mutex<HashMap<String, Credentials>>,
    /// (auth host, scope) -> Authorization header value.
    auth_cache: Mutex<HashMap<(String, String), String>>,
    retry: RetryPolicy,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Client {
    pub fn new(config: Arc<Config>, creds: CredentialStore) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(16)
            .build()
            .map_err(Error::Client)?;
        Ok(Client {
            http,
            config,
            creds,
            override_creds: Mutex::new(HashMap::new()),
            auth_cache: Mutex::new(HashMap::new()),
            retry: RetryPolicy::default(),
        })
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The upstream endpoint of a registry host.
    pub fn upstream(&self, registry: &str) -> Endpoint {
        let api_host = if registry == crate::reference::DEFAULT_REGISTRY {
            "registry-1.docker.io"
        } else {
            registry
        };
        let scheme = if self.config.is_insecure(registry) {
            "http"
        } else {
            "https"
        };
        Endpoint {
            base: format!("{scheme}://{api_host}"),
            auth_host: registry.to_string(),
            mirror: false,
        }
    }

    /// Mirrors (in configured order) then the upstream.
    pub fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let mut out: Vec<Endpoint> = self
            .config
            .mirrors_for(registry)
            .into_iter()
            .map(|m| {
                let base = m.trim_end_matches('/').to_string();
                let host = base
                    .split("://")
                    .nth(1)
                    .unwrap_or(&base)
                    .split('/')
                    .next()
                    .unwrap_or("")
                    .to_string();
                Endpoint {
                    base,
                    auth_host: host,
                    mirror: true,
                }
            })
            .collect();
        out.push(self.upstream(registry));
        out
    }

    fn credentials(&self, host: &str) -> Option<Credentials> {
        if let Some(c) = lock(&self.override_creds).get(host) {
            return Some(c.clone());
        }
        match self.creds.get(host) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("ignoring credentials file: {e}");
                None
            }
        }
    }

    /// Answer a 401 challenge: returns the Authorization header to retry with.
    async fn authorize(
        &self,
        ep: &Endpoint,
        challenge: &str,
        scope: &str,
    ) -> Result<String, Error> {
        let creds = self.credentials(&ep.auth_host);
        let unauthorized = |detail: String| Error::Unauthorized {
            registry: ep.auth_host.clone(),
            detail,
        };
        match auth::parse_challenge(challenge) {
            Some(Challenge::Basic { .. }) => {
                let c = creds
                    .ok_or_else(|| unauthorized("no credentials; run `strata login`".into()))?;
                let raw = format!("{}:{}", c.username, c.password.expose());
                Ok(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                ))
            }
            Some(Challenge::Bearer {
                realm,
                service,
                scope: ch_scope,
            }) => {
                let scope = if scope.is_empty() {
                    ch_scope.unwrap_or_default()
                } else {
                    scope.to_string()
                };
                let mut req = self.http.get(&realm);
                let mut query: Vec<(&str, &str)> = Vec::new();
                if let Some(s) = &service {
                    query.push(("service", s));
                }
                if !scope.is_empty() {
                    query.push(("scope", &scope));
                }
                req = req.query(&query);
                if let Some(c) = &creds {
                    req = req.basic_auth(&c.username, Some(c.password.expose()));
                }
                let resp = req.send().await.map_err(|source| Error::Http {
                    method: Method::GET,
                    url: realm.clone(),
                    source,
                })?;
                if !resp.status().is_success() {
                    return Err(unauthorized(format!(
                        "token service {realm} answered {}",
                        resp.status()
                    )));
                }
                #[derive(serde::Deserialize)]
                struct Tok {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let body = read_limited(resp, 1 << 20, &realm).await?;
                let tok: Tok = serde_json::from_slice(&body).map_err(|e| {
                    unauthorized(format!("token service {realm} sent bad JSON: {e}"))
                })?;
                let t = tok
                    .token
                    .or(tok.access_token)
                    .ok_or_else(|| unauthorized(format!("token service {realm} sent no token")))?;
                Ok(format!("Bearer {t}"))
            }
            None => Err(unauthorized(format!("unsupported challenge {challenge:?}"))),
        }
    }

    /// Send a request with auth, one re-auth on 401 and bounded retries on connect errors,
    /// 5xx and 429. `make` builds a fresh request for each attempt.
    pub async fn send(
        &self,
        ep: &Endpoint,
        scope: &str,
        method: Method,
        url: &str,
        make: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, Error> {
        let key = (ep.auth_host.clone(), scope.to_string());
        let mut auth_header = lock(&self.auth_cache).get(&key).cloned();
        let mut reauthed = false;
        let mut attempt = 0u32;
        // A mirror gets one try: on failure the next endpoint is better than a backoff.
        let attempts = if ep.mirror { 1 } else { self.retry.attempts };
        loop {
            let mut rb = make(self.http.request(method.clone(), url));
            if let Some(h) = &auth_header {
                rb = rb.header(AUTHORIZATION, h);
            }
            let result = rb.send().await;
            let retry_after = match result {
                Err(e) => {
                    if attempt + 1 >= attempts
                        || !(e.is_connect() || e.is_timeout() || e.is_request())
                    {
                        return Err(Error::Http {
                            method,
                            url: url.to_string(),
                            source: e,
                        });
                    }
                    tracing::warn!(%url, attempt, "request failed, retrying: {e}");
                    None
                }
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !reauthed => {
                    reauthed = true;
                    let challenge = resp
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                        .ok_or_else(|| Error::Unauthorized {
                            registry: ep.auth_host.clone(),
                            detail: "401 without WWW-Authenticate".into(),
                        })?;
                    let h = self.authorize(ep, &challenge, scope).await?;
                    lock(&self.auth_cache).insert(key.clone(), h.clone());
                    auth_header = Some(h);
                    continue;
                }
                Ok(resp)
                    if resp.status() == StatusCode::UNAUTHORIZED
                        || resp.status() == StatusCode::FORBIDDEN =>
                {
                    lock(&self.auth_cache).remove(&key);
                    return Err(Error::Unauthorized {
                        registry: ep.auth_host.clone(),
                        detail: format!("{method} {url} answered {}", resp.status()),
                    });
                }
                Ok(resp)
                    if (resp.status().is_server_error()
                        || resp.status() == StatusCode::TOO_MANY_REQUESTS)
                        && attempt + 1 < attempts =>
                {
                    tracing::warn!(%url, attempt, status = %resp.status(), "retrying");
                    resp.headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|s| Duration::from_secs(s.min(30)))
                }
                Ok(resp) => return Ok(resp),
            };
            tokio::time::sleep(retry_after.unwrap_or_else(|| self.retry.delay(attempt))).await;
            attempt += 1;
        }
    }

    /// Try each endpoint in order; the first success wins. A not-found on the upstream is final.
    async fn on_endpoints<T, F, Fut>(&self, registry: &str, f: F) -> Result<T, Error>
    where
        F: Fn(Endpoint) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let eps = self.endpoints(registry);
        let n = eps.len();
        let mut last = None;
        for (i, ep) in eps.into_iter().enumerate() {
            let mirror = ep.mirror;
            let base = ep.base.clone();
            match f(ep).await {
                Ok(v) => return Ok(v),
                Err(e) if i + 1 < n => {
                    if mirror && !e.is_not_found() {
                        tracing::warn!("mirror {base} failed, trying next: {e}");
                    }
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(Error::NotFound {
            what: registry.to_string(),
        }))
    }

    /// `GET /v2/` with authentication: used by `login` to verify credentials.
    pub async fn ping(&self, registry: &str) -> Result<(), Error> {
        let ep = self.upstream(registry);
        let url = format!("{}/v2/", ep.base);
        let resp = self.send(&ep, "", Method::GET, &url, |r| r).await?;
        check_status(resp, Method::GET, &url, registry)
            .await
            .map(|_| ())
    }

    /// Check credentials against the registry without storing them.
    pub async fn verify_login(&self, registry: &str, creds: Credentials) -> Result<(), Error> {
        lock(&self.override_creds).insert(registry.to_string(), creds);
        lock(&self.auth_cache).retain(|(h, _), _| h != registry);
        self.ping(registry).await
    }

    fn scope_pull(repo: &str) -> String {
        format!("repository:{repo}:pull")
    }

    fn scope_push(repo: &str) -> String {
        format!("repository:{repo}:pull,push")
    }

    /// Fetch a manifest or index by tag or digest, verifying its digest.
    pub async fn get_manifest(&self, reference: &Reference) -> Result<FetchedManifest, Error> {
        let what = reference.to_string();
        self.on_endpoints(&reference.registry, |ep| {
            let what = what.clone();
            async move {
                let url = format!(
                    "{}/v2/{}/manifests/{}",
                    ep.base,
                    reference.repository,
                    reference.api_reference()
                );
                let scope = Self::scope_pull(&reference.repository);
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
                        .unwrap_or_else(|| manifest::OCI_INDEX.into()),
                    AnyManifest::Image(m) => m
                        .media_type
                        .clone()
                        .unwrap_or_else(|| manifest::OCI_MANIFEST.into()),
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
                let chosen = idx
                    .manifests
                    .iter()
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

    /// Start a blob download, optionally of a byte range. The caller streams and verifies.
    pub async fn get_blob(
        &self,
        registry: &str,
        repo: &str,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<Response, Error> {
        let what = format!("blob {digest} in {registry}/{repo}");
        self.on_endpoints(registry, |ep| {
            let range = range.clone();
            let what = what.clone();
            async move {
                let url = format!("{}/v2/{}/blobs/{}", ep.base, repo, digest);
                let scope = Self::scope_pull(repo);
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
        registry: &str,
        repo: &str,
        digest: &Digest,
        range: Range<u64>,
    ) -> Result<Bytes, Error> {
        let len = range.end.saturating_sub(range.start) as usize;
        let url = format!(
            "{registry}/{repo}@{digest} bytes {}..{}",
            range.start, range.end
        );
        let resp = self.get_blob(registry, repo, digest, Some(range)).await?;
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
        registry: &str,
        repo: &str,
        digest: &Digest,
        limit: usize,
    ) -> Result<Bytes, Error> {
        let resp = self.get_blob(registry, repo, digest, None).await?;
        let what = format!("blob {digest} in {registry}/{repo}");
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

    /// Repository names from the catalog API (all pages).
    pub async fn catalog(&self, registry: &str) -> Result<Vec<String>, Error> {
        let ep = self.upstream(registry);
        let mut url = format!("{}/v2/_catalog?n=1000", ep.base);
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
        registry: &str,
        repo: &str,
        subject: &Digest,
    ) -> Result<(manifest::ImageIndex, bool), Error> {
        let ep = self.upstream(registry);
        let url = format!("{}/v2/{}/referrers/{}", ep.base, repo, subject);
        let resp = self
            .send(&ep, &Self::scope_pull(repo), Method::GET, &url, |r| {
                r.header(ACCEPT, manifest::OCI_INDEX)
            })
            .await?;
        if resp.status().is_success() {
            let body = read_limited(resp, MAX_MANIFEST_BYTES, &url).await?;
            let idx = serde_json::from_slice(&body).map_err(|e| Error::BadManifest {
                what: url.clone(),
                msg: e.to_string(),
            })?;
            return Ok((idx, false));
        }
        let tag_ref = Reference {
            registry: registry.to_string(),
            repository: repo.to_string(),
            tag: Some(referrers_tag(subject)),
            digest: None,
        };
        match self.get_manifest(&tag_ref).await {
            Ok(f) => match f.manifest {
                AnyManifest::Index(i) => Ok((i, true)),
                AnyManifest::Image(_) => Err(Error::BadManifest {
                    what: tag_ref.to_string(),
                    msg: "referrers tag does not hold an index".into(),
                }),
            },
            Err(Error::NotFound { .. }) => Ok((
                manifest::ImageIndex {
                    schema_version: 2,
                    media_type: Some(manifest::OCI_INDEX.into()),
                    manifests: Vec::new(),
                    annotations: None,
                },
                true,
            )),
            Err(e) => Err(e),
        }
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

    /// Tags of one repository.
    pub async fn tags(&self, registry: &str, repo: &str) -> Result<Vec<String>, Error> {
        let ep = self.upstream(registry);
        let url = format!("{}/v2/{}/tags/list", ep.base, repo);
        let resp = self
            .send(&ep, &Self::scope_pull(repo), Method::GET, &url, |r| r)
            .await?;
        let resp = check_status(resp, Method::GET, &url, &format!("{registry}/{repo}")).await?;
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

fn content_type(h: &HeaderMap) -> Option<String> {
    h.get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or(s).trim().to_string())
}

fn location(ep: &Endpoint, h: &HeaderMap, url: &str) -> Result<String, Error> {
    let loc = h
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Error::Status {
            method: Method::POST,
            url: url.to_string(),
            status: StatusCode::ACCEPTED,
            body: "upload response without Location".into(),
        })?;
    Ok(if loc.starts_with('/') {
        format!("{}{}", ep.base, loc)
    } else {
        loc.to_string()
    })
}

/// Turn non-success statuses into errors; 404 becomes `NotFound` naming `what`.
async fn check_status(
    resp: Response,
    method: Method,
    url: &str,
    what: &str,
) -> Result<Response, Error> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    if status == StatusCode::NOT_FOUND {
        return Err(Error::NotFound {
            what: what.to_string(),
        });
    }
    let body = read_limited(resp, 4096, url)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    Err(Error::Status {
        method,
        url: url.to_string(),
        status,
        body,
    })
}

/// Read a body, refusing more than `limit` bytes.
pub async fn read_limited(resp: Response, limit: usize, what: &str) -> Result<Bytes, Error> {
    if let Some(len) = resp.content_length() {
        if len > limit as u64 {
            return Err(Error::TooLarge {
                what: what.to_string(),
                limit,
            });
        }
    }
    let mut out = Vec::with_capacity(resp.content_length().unwrap_or(0).min(limit as u64) as usize);
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| Error::Http {
            method: Method::GET,
            url: what.to_string(),
            source,
        })?;
        if out.len() + chunk.len() > limit {
            return Err(Error::TooLarge {
                what: what.to_string(),
                limit,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}
