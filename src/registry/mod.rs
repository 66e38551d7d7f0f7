//! Distribution v2 client: ping, auth, manifests, ranged blob reads, uploads, catalog.
//!
//! Uses `reference`, `digest`, `config`; knows nothing of the store or of FUSE. Mirrors are tried
//! in order before the upstream, skipping those that failed a moment ago (`health.rs`);
//! retries with backoff live in one place ([`Client::send`]).
//! This file holds the client, its error type and the response helpers; the requests are split
//! by what they touch: `endpoint.rs` (auth, `send` and its retries, trying endpoints in order),
//! `health.rs` (which mirrors, and which blobs on a mirror, to skip for a while),
//! `manifests.rs` (manifests, platform resolution, referrers, tags, catalog), `blobs.rs` (blob
//! downloads, ranged and verified), `uploads.rs` (blob and manifest uploads). Where requests
//! go: `routes.rs` builds the mirror list from `config`, containerd's hosts.toml (`hosts.rs`)
//! and containers' registries.conf (`regconf.rs`), with TLS per host (`tls.rs`). Credentials:
//! `auth.rs` (types, challenges), `creds.rs` (docker config.json, auth.json) and
//! `credhelper.rs` (the `docker-credential-*` protocol).

pub mod auth;
mod blobs;
pub mod credhelper;
pub mod creds;
mod endpoint;
mod health;
pub mod hosts;
mod manifests;
mod range;
pub mod regconf;
pub mod routes;
pub mod search;
pub mod tls;
mod uploads;

pub use endpoint::{Endpoint, RetryPolicy};
pub use manifests::{referrers_tag, FetchedManifest, Resolved};
pub use routes::Op;

use crate::config::Config;
use crate::digest::Digest;
use auth::{CredentialStore, Credentials};
use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{HeaderMap, CONTENT_TYPE, LOCATION};
use reqwest::{Method, Response, StatusCode};
use std::collections::HashMap;
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
    RangeIgnored {
        what: String,
        status: StatusCode,
        /// The answer's `Content-Length` (the whole blob's size, for a 200).
        length: Option<u64>,
    },
    #[error("{what}: mirror {mirror} did not answer a Range request within {after:?}")]
    MirrorSlow {
        what: String,
        mirror: String,
        after: Duration,
    },
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
    #[error("certificate {path}: {msg}")]
    BadCertificate { path: String, msg: String },
    #[error("{path}: {source}")]
    ConfigFile {
        path: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("{path}: key {key}: {msg}")]
    ConfigValue {
        path: String,
        key: String,
        msg: String,
    },
    #[error("{what}: blocked by {path}")]
    Blocked { what: String, path: String },
    #[error("{what}: no endpoint may {op} (capabilities in {path})")]
    NoEndpoint {
        what: String,
        op: String,
        path: String,
    },
    #[error("short name {name:?} is ambiguous: it may mean {candidates} (unqualified-search-registries in {files}); use a fully qualified name such as {first}", first = .candidates.split(", ").next().unwrap_or(""))]
    AmbiguousShortName {
        name: String,
        candidates: String,
        files: String,
    },
    #[error("image name {name:?}: {msg}")]
    ShortName { name: String, msg: String },
    #[error(transparent)]
    Credentials(#[from] auth::CredError),
    #[error("cannot reach Docker Hub's search API at {url}: {detail} (search needs network access to Docker Hub; offline?)")]
    SearchUnavailable { url: String, detail: String },
}

impl Error {
    /// Whether trying the next endpoint (mirror -> upstream) might help.
    fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    /// What a mirror's failure says about the mirror: `None` when nothing (it does not have
    /// the thing: try the next endpoint, ask it again next time), `Some(Skip::Blob)` when it
    /// does not serve this blob by range yet (it answered with the whole blob, or slowly),
    /// `Some(Skip::Mirror)` when the mirror itself is broken for now.
    fn mirror_verdict(&self) -> Option<health::Skip> {
        match self {
            Error::NotFound { .. }
            | Error::BadManifest { .. }
            | Error::NoPlatform { .. }
            | Error::Io { .. }
            | Error::Client(_)
            | Error::ConfigFile { .. }
            | Error::ConfigValue { .. }
            | Error::Blocked { .. }
            | Error::NoEndpoint { .. }
            | Error::AmbiguousShortName { .. }
            | Error::ShortName { .. }
            | Error::SearchUnavailable { .. }
            | Error::Credentials(_) => None,
            Error::RangeIgnored { .. } | Error::MirrorSlow { .. } => Some(health::Skip::Blob),
            Error::Http { .. }
            | Error::Status { .. }
            | Error::Unauthorized { .. }
            | Error::DigestMismatch { .. }
            | Error::TooLarge { .. }
            | Error::BadContentRange { .. }
            | Error::BadCertificate { .. } => Some(health::Skip::Mirror),
        }
    }
}

/// The registry client. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Client {
    routes: routes::Routes,
    config: Arc<Config>,
    creds: CredentialStore,
    override_creds: Mutex<HashMap<String, Credentials>>,
    /// (auth host, scope) -> Authorization header value.
    auth_cache: Mutex<HashMap<(String, String), String>>,
    /// auth host -> refresh token a token service handed out during `verify_login`.
    refresh_tokens: Mutex<HashMap<String, auth::Secret>>,
    retry: RetryPolicy,
    /// Mirrors (and blobs on mirrors) skipped for a while after a failure.
    health: health::Health,
    /// Endpoint base -> its [`Client::preconnect`] while under way.
    preconnects: Mutex<HashMap<String, Preconnect>>,
    /// Endpoint bases that have answered a request of this client (their connections may
    /// be in the pool: requests to them never wait for a preconnect).
    answered: Mutex<std::collections::HashSet<String>>,
    /// The fastest answer (headers) the upstreams [0] and the mirrors [1] gave this client,
    /// in µs ([`Client::fastest_answer`]).
    fastest_us: Arc<[std::sync::atomic::AtomicU64; 2]>,
    /// Slices of a slicing mirror's blobs with a request of this client under way
    /// ([`blobs::SliceLocks`]).
    slices: blobs::SliceLocks,
    /// What slicing mirrors sent past the ranges asked for ([`blobs::SliceTails`]).
    tails: blobs::SliceTails,
}

/// A preconnect under way, awaited by requests to its endpoint.
type Preconnect = futures::future::Shared<futures::future::BoxFuture<'static, ()>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Client {
    /// A client for `config`. The registries.conf, hosts.toml and certificate files it names
    /// are read at first use.
    pub fn new(config: Arc<Config>, creds: CredentialStore) -> Result<Self, Error> {
        let hold = Duration::try_from_secs_f64(config.mirror_retry_after)
            .unwrap_or(Duration::from_secs(10));
        Ok(Client {
            routes: routes::Routes::new(config.clone()),
            config,
            creds,
            override_creds: Mutex::new(HashMap::new()),
            auth_cache: Mutex::new(HashMap::new()),
            refresh_tokens: Mutex::new(HashMap::new()),
            retry: RetryPolicy::default(),
            health: health::Health::new(hold),
            preconnects: Mutex::new(HashMap::new()),
            answered: Mutex::new(Default::default()),
            fastest_us: Arc::new([
                std::sync::atomic::AtomicU64::new(u64::MAX),
                std::sync::atomic::AtomicU64::new(u64::MAX),
            ]),
            slices: Default::default(),
            tails: Default::default(),
        })
    }

    /// The references `input` may mean, in the order to try (registries.conf aliases and
    /// `unqualified-search-registries` for short names; an error when ambiguous).
    pub fn candidates(&self, input: &str) -> Result<Vec<crate::reference::Reference>, Error> {
        self.routes.registries_conf()?.candidates(input)
    }

    /// The credential files this client reads.
    /// The fastest any server (registry or mirror) answered a request of this client, from
    /// sending it to its response headers: a server answering in a few milliseconds is near
    /// (loopback, the same host or rack), which the lazy fetcher uses before its own fetches
    /// have measured the link (`cache/fetcher.rs`). `None` before the first answer. A mirror
    /// seen fetching whole blobs on a miss does not count: the layers' bytes come from the
    /// upstream, however fast it answers (its manifests, its small blobs).
    pub fn fastest_answer(&self) -> Option<Duration> {
        use std::sync::atomic::Ordering::Relaxed;
        let up = self.fastest_us[0].load(Relaxed);
        let us = match self.health.any_fetches_whole() {
            true => up,
            false => up.min(self.fastest_us[1].load(Relaxed)),
        };
        (us != u64::MAX).then(|| Duration::from_micros(us))
    }

    pub fn credential_store(&self) -> &CredentialStore {
        &self.creds
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
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
