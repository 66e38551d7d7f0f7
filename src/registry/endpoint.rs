//! How requests go: an [`Endpoint`] (built by `routes`: a mirror or the upstream, with its
//! API root, repository name, headers and TLS client), answering 401 challenges (Basic, or a
//! Bearer token fetched with the password or, for an identity token, the OAuth2 refresh
//! grant; cached per auth host and scope), [`Client::send`], the one place with retries and
//! backoff, and the walk over the endpoints in order that skips and records failed mirrors
//! and hands a probe that found a mirror filling a blob to `blobs.rs`'s fill wait.
//! Uses the parent's client, error type and helpers, `auth`, `routes`, `health` and `config`.

use super::auth::{self, Challenge, Credentials, Secret};
use super::health::{self, Probe, ProbeGuard, Skip};
use super::routes::Op;
use super::{check_status, lock, read_limited, Client, Error};
use crate::digest::Digest;
use crate::reference::Repository;
use base64::Engine as _;
use futures::FutureExt as _;
use reqwest::header::{HeaderMap, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use std::time::{Duration, Instant};

/// How much longer than `mirror-timeout` a request waits for a probe's verdict when
/// `mirror-fill-wait` is on (the probe may be about to wait for a fill).
const PROBE_GRACE: Duration = Duration::from_millis(500);

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

/// One place to send a repository's requests: a mirror or the upstream itself.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `scheme://host[:port]` (no trailing slash): where relative `Location`s point.
    pub base: String,
    /// The API root requests are made under, normally `{base}/v2`.
    pub api: String,
    /// Host whose credentials apply (the mirror's own host for mirrors).
    pub auth_host: String,
    pub mirror: bool,
    /// Extra headers sent with every request (hosts.toml `header`, `registry-mirror-headers`).
    pub headers: HeaderMap,
    /// The HTTP client with this endpoint's TLS settings.
    pub(super) http: reqwest::Client,
    /// The repository's name here when a registries.conf prefix rewrites it.
    pub(super) name: Option<String>,
}

impl Endpoint {
    /// The repository's name on this endpoint (`name` unless a prefix rewrite applies).
    pub fn repo_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.name.as_deref().unwrap_or(name)
    }

    /// `{api}/{name}/{tail}` for repository `name`.
    pub fn url(&self, name: &str, tail: &str) -> String {
        format!("{}/{}/{}", self.api, self.repo_name(name), tail)
    }
}

/// Connections [`Client::preconnect`] opens per endpoint: a mount's index lookup sends up
/// to seven requests at once (the sidecar manifest with the index heads it lists, or its
/// index sidecar and access profile each through the referrers API and the tag schema).
const PRECONNECTIONS: usize = 8;

/// How long a request waits for a preconnect to the same endpoint that is still under way.
const PRECONNECT_WAIT: Duration = Duration::from_secs(1);

impl Client {
    /// The upstream endpoint of a repository (after registries.conf and hosts.toml).
    pub fn upstream(&self, repo: &Repository) -> Result<Endpoint, Error> {
        self.routes.upstream(repo)
    }

    /// The endpoints to try for `repo` and `op`: mirrors in order, then the upstream.
    pub fn endpoints(&self, repo: &Repository, op: Op) -> Result<Vec<Endpoint>, Error> {
        self.routes.endpoints(repo, op)
    }

    /// Credentials for `host`: the ones `verify_login` is checking, else the credential
    /// files (a helper program may run: on the blocking pool). A file or helper failure is
    /// logged and treated as no credentials.
    async fn credentials(&self, host: &str) -> (Option<Credentials>, bool) {
        if let Some(c) = lock(&self.override_creds).get(host) {
            return (Some(c.clone()), true);
        }
        let store = self.creds.clone();
        let h = host.to_string();
        match tokio::task::spawn_blocking(move || store.get(&h)).await {
            Ok(Ok(c)) => (c, false),
            Ok(Err(e)) => {
                tracing::warn!("credentials for {host}: {e}");
                (None, false)
            }
            Err(e) => {
                tracing::warn!("credentials for {host}: lookup task failed: {e}");
                (None, false)
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
        let (creds, logging_in) = self.credentials(&ep.auth_host).await;
        let unauthorized = |detail: String| Error::Unauthorized {
            registry: ep.auth_host.clone(),
            detail,
        };
        match auth::parse_challenge(challenge) {
            Some(Challenge::Basic { .. }) => {
                let c = creds
                    .ok_or_else(|| unauthorized("no credentials; run `strata login`".into()))?;
                if c.password.expose().is_empty() {
                    return Err(unauthorized(
                        "the registry wants a password, the stored login holds an identity token"
                            .into(),
                    ));
                }
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
                let http = self.routes.client_for_url(&realm)?;
                let req = match creds.as_ref().and_then(|c| c.identity_token.as_ref()) {
                    // An identity token: the OAuth2 refresh grant (docker's `identitytoken`).
                    Some(tok) => {
                        let mut form: Vec<(&str, &str)> = vec![
                            ("grant_type", "refresh_token"),
                            ("refresh_token", tok.expose()),
                            ("client_id", "strata"),
                        ];
                        if let Some(s) = &service {
                            form.push(("service", s));
                        }
                        if !scope.is_empty() {
                            form.push(("scope", &scope));
                        }
                        http.post(&realm).form(&form)
                    }
                    None => {
                        let mut query: Vec<(&str, &str)> = Vec::new();
                        if let Some(s) = &service {
                            query.push(("service", s));
                        }
                        if !scope.is_empty() {
                            query.push(("scope", &scope));
                        }
                        if logging_in {
                            // As docker login: ask for a refresh token to keep instead of the
                            // password, where the token service hands them out.
                            query.push(("offline_token", "true"));
                            query.push(("client_id", "strata"));
                        }
                        let mut req = http.get(&realm).query(&query);
                        if let Some(c) = &creds {
                            req = req.basic_auth(&c.username, Some(c.password.expose()));
                        }
                        req
                    }
                };
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
                    refresh_token: Option<String>,
                }
                let body = read_limited(resp, 1 << 20, &realm).await?;
                let tok: Tok = serde_json::from_slice(&body).map_err(|e| {
                    unauthorized(format!("token service {realm} sent bad JSON: {e}"))
                })?;
                if let (true, Some(r)) = (logging_in, tok.refresh_token.filter(|r| !r.is_empty())) {
                    lock(&self.refresh_tokens).insert(ep.auth_host.clone(), Secret::new(r));
                }
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
        self.await_preconnect(ep).await;
        loop {
            let mut rb = make(ep.http.request(method.clone(), url));
            for (k, v) in &ep.headers {
                rb = rb.header(k, v);
            }
            if let Some(h) = &auth_header {
                rb = rb.header(AUTHORIZATION, h);
            }
            let sent = Instant::now();
            let result = rb.send().await;
            if result.is_ok() {
                answered_in(&self.fastest_us[usize::from(ep.mirror)], sent.elapsed());
                let mut answered = lock(&self.answered);
                if !answered.contains(&ep.base) {
                    answered.insert(ep.base.clone());
                }
            }
            tracing::trace!(
                %method,
                %url,
                status = result.as_ref().map_or(0, |r| r.status().as_u16()),
                ms = sent.elapsed().as_secs_f64() * 1e3,
                "registry request answered"
            );
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

    /// Try each endpoint for `repo` and `op` in order; the first success wins. A not-found on
    /// the upstream is final.
    /// Mirrors that failed a moment ago (for `blob`, when given) are skipped (`health.rs`),
    /// unless the upstream fails too: then they are the last resort. A mirror's failure is
    /// judged by [`Error::mirror_verdict`] and recorded.
    pub(super) async fn on_endpoints<T, F, Fut>(
        &self,
        repo: &Repository,
        op: Op,
        blob: Option<&Digest>,
        f: F,
    ) -> Result<T, Error>
    where
        F: Fn(Endpoint) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let mut skipped = Vec::new();
        let mut last = None;
        for ep in self.endpoints(repo, op)? {
            if ep.mirror {
                if self.health.is_dropped(&ep.base) {
                    tracing::debug!(mirror = %ep.base, "mirror dropped (served a layer that did not match its digest)");
                    continue;
                }
                if let Some(why) = self.health.skip(&ep.base, blob, Instant::now()) {
                    tracing::debug!(mirror = %ep.base, ?why, "skipping mirror for now");
                    skipped.push(ep);
                    continue;
                }
            }
            let [first, probe] = match (ep.mirror, blob) {
                (true, Some(b)) => match self.mirror_turns(&ep.base, b).await {
                    Ok(turns) => turns,
                    Err(why) => {
                        tracing::debug!(mirror = %ep.base, ?why, "skipping mirror for now (after its probe)");
                        skipped.push(ep);
                        continue;
                    }
                },
                _ => [None, None],
            };
            // The probe may wait for a mirror that is filling the blob (`mirror-fill-wait`).
            let fill = match (&probe, blob) {
                (Some(_), Some(b)) if self.fill_wait() > Duration::ZERO => Some(b),
                _ => None,
            };
            let mut answer = self.on_endpoint(ep.clone(), blob, &f, fill.is_none()).await;
            if let (Some(b), Err((true, e))) = (fill, &answer) {
                if e.mirror_verdict() != Some(Skip::Blob) {
                    self.mirror_failed(&ep.base, blob, e);
                } else if self.wait_for_fill(&ep, repo, b, e).await {
                    answer = self.on_endpoint(ep.clone(), blob, &f, true).await;
                } else {
                    skipped.push(ep);
                    continue;
                }
            }
            drop(probe);
            if first.is_some() {
                // Whatever it said (a range, a whole blob, "not here"), the burst may follow.
                self.health.contacted(&ep.base);
            }
            drop(first);
            match answer {
                Ok(v) => return Ok(v),
                Err((false, e)) if skipped.is_empty() || e.is_not_found() => return Err(e),
                Err((false, e)) => {
                    // The upstream failed: the mirrors skipped for now are the last resort,
                    // and the upstream's error is the one to report.
                    for ep in skipped {
                        if let Ok(v) = self.on_endpoint(ep, blob, &f, true).await {
                            return Ok(v);
                        }
                    }
                    return Err(e);
                }
                Err((true, e)) => last = Some(e),
            }
        }
        Err(last.unwrap_or(Error::NotFound {
            what: repo.to_string(),
        }))
    }

    /// The turns a request for `blob` takes on mirror `base`: the mirror's first blob request
    /// goes alone (its answer shows whether it serves ranges or fetches whole blobs on a miss,
    /// and so which blobs may be asked of it, before the others go), then the blob's probe
    /// ([`Self::probe_turn`]). Keep the guards until the answer is recorded.
    async fn mirror_turns(
        &self,
        base: &str,
        blob: &Digest,
    ) -> Result<[Option<ProbeGuard<'_>>; 2], Skip> {
        let first = match self.health.knows(base) {
            true => None,
            false => self.probe_turn(base, &health::first_contact()).await?,
        };
        Ok([first, self.probe_turn(base, blob).await?])
    }

    /// How long a request waits for a mirror filling a blob: `mirror-fill-wait`, at most half
    /// the fetch deadline (so that the upstream still has time after it).
    pub(super) fn fill_wait(&self) -> Duration {
        let half_fetch = Duration::from_secs(self.config.fetch_timeout) / 2;
        Duration::try_from_secs_f64(self.config.mirror_fill_wait)
            .unwrap_or(Duration::ZERO)
            .min(half_fetch)
    }

    /// Wait until a request for `blob` may go to mirror `base`: at once when the mirror serves
    /// the blob by range or no other request is probing it (then this one is the probe: keep
    /// the guard until its answer is recorded); otherwise after the probe's verdict. `Err`
    /// when the verdict says skip the mirror, or when the probe takes longer than
    /// `mirror-timeout` (the mirror is slow for this blob: the caller goes on without it) or,
    /// while the probe waits for the mirror to fill the blob, than that wait.
    async fn probe_turn(&self, base: &str, blob: &Digest) -> Result<Option<ProbeGuard<'_>>, Skip> {
        let wait = Duration::try_from_secs_f64(self.config.mirror_timeout)
            .unwrap_or(Duration::from_secs(5));
        let started = Instant::now();
        loop {
            if let Some(why) = self.health.skip(base, Some(blob), Instant::now()) {
                return Err(why);
            }
            match self.health.probe(base, blob) {
                Probe::Go(guard) => return Ok(guard),
                Probe::Wait(mut rx) => {
                    let mut deadline = started + wait;
                    if self.fill_wait() > Duration::ZERO {
                        // The probe itself gives up on a slow mirror after `wait`: give it a
                        // moment more to say whether it waits for a fill.
                        deadline += PROBE_GRACE;
                    }
                    if let Some(fill) = self.health.filling_until(base, blob) {
                        // a moment more than the fill's end: the probe's last poll ends it
                        deadline = deadline.max(fill + wait);
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if tokio::time::timeout(left, rx.changed()).await.is_err()
                        && self
                            .health
                            .filling_until(base, blob)
                            .is_none_or(|fill| Instant::now() >= fill + wait)
                    {
                        return Err(Skip::Blob);
                    }
                }
            }
        }
    }

    /// One endpoint of [`on_endpoints`](Self::on_endpoints); a mirror's answer is recorded in
    /// its health. The error comes with whether the next endpoint may be tried.
    /// With `record` false a mirror's failure is left to the caller to record.
    async fn on_endpoint<T, F, Fut>(
        &self,
        ep: Endpoint,
        blob: Option<&Digest>,
        f: &F,
        record: bool,
    ) -> Result<T, (bool, Error)>
    where
        F: Fn(Endpoint) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let (mirror, base) = (ep.mirror, ep.base.clone());
        match f(ep).await {
            Ok(v) => {
                if mirror {
                    self.health.ok(&base, blob);
                    if let Some(b) = blob {
                        self.health.served_blob(&base, b);
                    }
                }
                Ok(v)
            }
            Err(e) if !mirror => Err((false, e)),
            Err(e) => {
                if record {
                    self.mirror_failed(&base, blob, &e);
                }
                Err((true, e))
            }
        }
    }

    /// Record a mirror's failure `e` (for `blob`, when given) in its health.
    pub(super) fn mirror_failed(&self, base: &str, blob: Option<&Digest>, e: &Error) {
        let now = Instant::now();
        match (e.mirror_verdict(), blob) {
            (None, _) => tracing::debug!(mirror = %base, "mirror does not have it: {e}"),
            (Some(Skip::Blob), Some(b)) => match self.health.blob_failed(base, b, now) {
                Some(hold) => tracing::warn!(
                    mirror = %base,
                    "mirror does not serve blob {b} by range yet; going upstream for it for {hold:?}: {e}"
                ),
                None => tracing::debug!(mirror = %base, "mirror failed again: {e}"),
            },
            (Some(_), _) => match self.health.mirror_failed(base, now) {
                Some(hold) => {
                    tracing::warn!(mirror = %base, "mirror failed; skipping it for {hold:?}: {e}")
                }
                None => tracing::debug!(mirror = %base, "mirror failed again: {e}"),
            },
        }
    }

    /// Bytes of `blob` failed verification: skip every mirror of `repo` for that blob for a
    /// while (the bytes may have come from one of them; the upstream is the reference), and
    /// forget what slicing mirrors sent of it.
    pub fn distrust_mirrors(&self, repo: &Repository, blob: &Digest) {
        let now = Instant::now();
        self.tails.forget(blob);
        let eps = self.endpoints(repo, Op::Pull).unwrap_or_default();
        for ep in eps.into_iter().filter(|e| e.mirror) {
            if let Some(hold) = self.health.blob_failed(&ep.base, blob, now) {
                tracing::warn!(mirror = %ep.base, "bytes of blob {blob} failed verification; not asking mirrors for it for {hold:?}");
            }
        }
    }

    /// A layer fetched whole did not match its digest: drop, for the life of this client,
    /// every mirror that served bytes of it. Returns the mirrors dropped (none when every
    /// byte came from the upstream).
    pub fn drop_mirrors_that_served(&self, blob: &Digest) -> Vec<String> {
        self.health.drop_servers_of(blob)
    }

    /// Open connections to the endpoints `repo` will be read from (the upstream and the first
    /// endpoint of a pull, a mirror when one is configured), [`PRECONNECTIONS`] each (a mount
    /// asks for its index sidecar and its access profile at once, each through the referrers
    /// API and the tag schema together), with an unauthenticated
    /// `GET /v2/` (any answer will do): the requests of a mount that follows find them in the
    /// pool instead of paying a handshake each. Errors are ignored.
    pub async fn preconnect(&self, repo: &Repository) {
        let mut eps: Vec<Endpoint> = self.upstream(repo).into_iter().collect();
        if let Some(first) = self
            .endpoints(repo, Op::Pull)
            .ok()
            .and_then(|v| v.into_iter().next())
        {
            if !eps.iter().any(|e| e.base == first.base) {
                eps.push(first);
            }
        }
        let mut waits = Vec::new();
        for ep in eps {
            let base = ep.base.clone();
            let pings = (0..PRECONNECTIONS).map(|_| {
                let (ep, fastest) = (ep.clone(), self.fastest_us.clone());
                async move {
                    let url = format!("{}/", ep.api);
                    let req = ep.http.get(&url).headers(ep.headers.clone());
                    let sent = Instant::now();
                    match tokio::time::timeout(Duration::from_secs(5), req.send()).await {
                        Ok(Ok(resp)) => {
                            answered_in(&fastest[usize::from(ep.mirror)], sent.elapsed());
                            let _ = resp.bytes().await;
                        }
                        Ok(Err(e)) => tracing::debug!(endpoint = %ep.base, "preconnect: {e}"),
                        Err(_) => {
                            tracing::debug!(endpoint = %ep.base, "preconnect: no answer in 5 s")
                        }
                    }
                }
            });
            let done = futures::future::join_all(pings)
                .map(|_| ())
                .boxed()
                .shared();
            lock(&self.preconnects).insert(base.clone(), done.clone());
            let preconnects = &self.preconnects;
            waits.push(async move {
                done.await;
                let mut map = lock(preconnects);
                // Only this preconnect's entry: a later one for the endpoint keeps its own.
                if map.get(&base).is_some_and(|f| f.peek().is_some()) {
                    map.remove(&base);
                }
            });
        }
        futures::future::join_all(waits).await;
    }

    /// Wait (at most [`PRECONNECT_WAIT`]) for a preconnect to `ep` still under way, so that a
    /// request finds its connections in the pool. The request would otherwise race a new
    /// connection against the pool and take the new one whenever its TCP connect completes
    /// first (at once, through a local proxy) though its handshake (and TLS) round trips are
    /// still to come, while the preconnect, started earlier (on `Connect`, a manifest's
    /// round trips before a mount needs the registry), is nearer its end. Only until the
    /// endpoint has answered this client once: after that its connections are in the pool,
    /// and the requests of running mounts must not wait for a new run's preconnect.
    async fn await_preconnect(&self, ep: &Endpoint) {
        if lock(&self.answered).contains(&ep.base) {
            return;
        }
        let pending = lock(&self.preconnects).get(&ep.base).cloned();
        if let Some(done) = pending {
            let _ = tokio::time::timeout(PRECONNECT_WAIT, done).await;
        }
    }

    /// `GET /v2/` with authentication: used by `login` to verify credentials.
    pub async fn ping(&self, registry: &str) -> Result<(), Error> {
        let ep = self.upstream(&Repository {
            registry: registry.to_string(),
            name: String::new(),
        })?;
        let url = format!("{}/", ep.api);
        let resp = self.send(&ep, "", Method::GET, &url, |r| r).await?;
        check_status(resp, Method::GET, &url, registry)
            .await
            .map(|_| ())
    }

    /// Check credentials against the registry without storing them. Returns what to store:
    /// the credentials, or an identity token in place of the password when the registry's
    /// token service handed one out (as `docker login` keeps).
    pub async fn verify_login(
        &self,
        registry: &str,
        creds: Credentials,
    ) -> Result<Credentials, Error> {
        let host = self
            .upstream(&Repository {
                registry: registry.to_string(),
                name: String::new(),
            })?
            .auth_host;
        lock(&self.override_creds).insert(host.clone(), creds.clone());
        lock(&self.auth_cache).retain(|(h, _), _| *h != host);
        lock(&self.refresh_tokens).remove(&host);
        let r = self.ping(registry).await;
        lock(&self.override_creds).remove(&host);
        lock(&self.auth_cache).retain(|(h, _), _| *h != host);
        r?;
        Ok(match lock(&self.refresh_tokens).remove(&host) {
            Some(tok) => Credentials::identity_token(creds.username, tok),
            None => creds,
        })
    }

    pub(super) fn scope_pull(name: &str) -> String {
        format!("repository:{name}:pull")
    }

    pub(super) fn scope_push(name: &str) -> String {
        format!("repository:{name}:pull,push")
    }
}

/// A server answered (headers) `took` after the request was sent: keep the fastest in
/// `fastest` (µs), the client's [`fastest_answer`](Client::fastest_answer).
fn answered_in(fastest: &std::sync::atomic::AtomicU64, took: Duration) {
    let us = took.as_micros().try_into().unwrap_or(u64::MAX);
    fastest.fetch_min(us, std::sync::atomic::Ordering::Relaxed);
}
