//! The mirror list: for one repository and one kind of request, the endpoints to try, in
//! order, each with its URL, repository name, headers, TLS client and credentials host.
//!
//! Order: `registry-mirrors` / `registry-mirrors-by-host` from `config` (with
//! `registry-mirror-headers`); the `[host."..."]` entries of the registry's containerd
//! hosts.toml (`hosts`) that have the capability; the `[[registry.mirror]]`s of the
//! registries.conf entry matching the repository (`regconf`, names rewritten by prefix);
//! then the upstream: hosts.toml `server`, else the registries.conf `location` (prefix
//! rewritten), else the registry itself. Pushes (and `Op::PullUpstream`) go to the upstream only. A registries.conf
//! entry marked `blocked` refuses every request.
//!
//! Scheme of an upstream or registries.conf mirror: http when the host is in
//! `insecure-registries` or the registries.conf entry says `insecure`, or is a loopback
//! address without any TLS configuration; https otherwise. hosts.toml and daemon.json mirrors
//! carry their own scheme. The files are read at first use (registries.conf at the first
//! request, hosts.toml and certificate directories at a host's first use) and kept.
//!
//! Uses `config`, `reference`, `hosts`, `regconf`, `tls` and the parent's `Endpoint`/`Error`.

use super::hosts::{self, ApiUrl, Caps, HostsFile};
use super::regconf::{self, PullFrom, RegistriesConf};
use super::tls::{self, Clients, TlsSettings};
use super::{lock, Endpoint, Error};
use crate::config::Config;
use crate::reference::{Reference, Repository, DEFAULT_REGISTRY};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// What a request does, for capability filtering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A manifest by tag.
    Resolve,
    /// Content by digest: blobs, manifests by digest, referrers.
    Pull,
    /// Uploads.
    Push,
    /// Content by digest (or referrers) from the upstream alone, never a mirror: what a
    /// mirror could forge and nothing the user named covers (unbound sidecar indexes).
    PullUpstream,
}

impl Op {
    /// `Resolve` for a tag reference, `Pull` for a digest one.
    pub fn for_reference(r: &Reference) -> Op {
        if r.digest.is_some() {
            Op::Pull
        } else {
            Op::Resolve
        }
    }

    fn allowed(self, caps: Caps) -> bool {
        match self {
            Op::Resolve => caps.resolve,
            Op::Pull => caps.pull,
            Op::Push => caps.push,
            Op::PullUpstream => caps.pull,
        }
    }

    /// Whether mirrors may answer this kind of request.
    fn via_mirrors(self) -> bool {
        matches!(self, Op::Resolve | Op::Pull)
    }
}

/// The mirror configuration of one client.
pub struct Routes {
    config: Arc<Config>,
    /// Read at first use (commands that talk to no registry do not need it to be valid).
    regconf: Mutex<Option<Arc<RegistriesConf>>>,
    hosts: Mutex<HashMap<String, Option<Arc<HostsFile>>>>,
    certs: Mutex<HashMap<String, TlsSettings>>,
    clients: Clients,
}

/// Docker Hub's API host.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

impl Routes {
    /// Nothing is read yet: every file at its first use.
    pub fn new(config: Arc<Config>) -> Routes {
        Routes {
            config,
            regconf: Mutex::new(None),
            hosts: Mutex::new(HashMap::new()),
            certs: Mutex::new(HashMap::new()),
            clients: Clients::new(),
        }
    }

    /// The registries.conf in effect (read at the first call; an error is not kept).
    pub fn registries_conf(&self) -> Result<Arc<RegistriesConf>, Error> {
        if let Some(c) = lock(&self.regconf).as_ref() {
            return Ok(c.clone());
        }
        let path = match &self.config.registries_conf {
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(p.clone()),
            None => Some(RegistriesConf::default_path()),
        };
        let conf = Arc::new(match path {
            Some(p) => RegistriesConf::load(&p)?,
            None => RegistriesConf::default(),
        });
        *lock(&self.regconf) = Some(conf.clone());
        Ok(conf)
    }

    /// The hosts.toml that applies to `registry` (cached after the first read).
    fn hosts_file(&self, registry: &str) -> Result<Option<Arc<HostsFile>>, Error> {
        if self.config.hosts_dir.as_os_str().is_empty() {
            return Ok(None);
        }
        if let Some(f) = lock(&self.hosts).get(registry) {
            return Ok(f.clone());
        }
        let f = hosts::load(&self.config.hosts_dir, registry)?.map(Arc::new);
        lock(&self.hosts).insert(registry.to_string(), f.clone());
        Ok(f)
    }

    /// TLS settings from the certificate directories (and the hosts dir) for `host`.
    fn cert_settings(&self, host: &str) -> Result<TlsSettings, Error> {
        if let Some(s) = lock(&self.certs).get(host) {
            return Ok(s.clone());
        }
        let mut dirs: Vec<PathBuf> = self.config.certs_dirs.clone();
        if !self.config.hosts_dir.as_os_str().is_empty() {
            dirs.push(self.config.hosts_dir.clone());
        }
        let s = tls::for_host(&dirs, host)?;
        lock(&self.certs).insert(host.to_string(), s.clone());
        Ok(s)
    }

    /// The HTTP client for an absolute URL outside the mirror list (a token realm).
    pub fn client_for_url(&self, url: &str) -> Result<reqwest::Client, Error> {
        let host = url
            .split("://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or("");
        let tls = self.cert_settings(host)?;
        self.clients.get(&tls, url.starts_with("https:"))
    }

    fn endpoint(
        &self,
        url: &ApiUrl,
        mirror: bool,
        mut tls: TlsSettings,
        headers: &[(String, String)],
        name: Option<String>,
    ) -> Result<Endpoint, Error> {
        tls.merge(&self.cert_settings(&url.host)?);
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            // Names and values were checked when the files were read.
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                map.append(k, v);
            }
        }
        let auth_host = if url.host == DOCKER_HUB_API {
            DEFAULT_REGISTRY.to_string()
        } else {
            url.host.clone()
        };
        Ok(Endpoint {
            base: url.origin(),
            api: format!("{}{}", url.origin(), url.path),
            auth_host,
            mirror,
            headers: map,
            http: self.clients.get(&tls, url.origin().starts_with("https:"))?,
            name,
        })
    }

    /// The scheme for a host named without one (an upstream, a registries.conf location).
    fn scheme_for(&self, host: &str, insecure: bool) -> Result<&'static str, Error> {
        if insecure || self.config.is_listed_insecure(host) {
            return Ok("http");
        }
        if Config::is_loopback(host) && self.cert_settings(host)?.is_default() {
            return Ok("http");
        }
        Ok("https")
    }

    fn default_url(&self, host: &str, insecure: bool) -> Result<ApiUrl, Error> {
        let api_host = if host == DEFAULT_REGISTRY {
            DOCKER_HUB_API
        } else {
            host
        };
        Ok(ApiUrl {
            scheme: self.scheme_for(api_host, insecure)?.to_string(),
            host: api_host.to_string(),
            path: "/v2".into(),
        })
    }

    /// The endpoints for `repo` and `op`, in the order to try (the upstream last).
    pub fn endpoints(&self, repo: &Repository, op: Op) -> Result<Vec<Endpoint>, Error> {
        let regconf = self.registries_conf()?;
        let m = regconf.find(&repo.registry, &repo.name);
        if let Some(m) = &m {
            if m.entry.blocked {
                return Err(Error::Blocked {
                    what: repo.to_string(),
                    path: m.entry.source.display().to_string(),
                });
            }
        }
        let hf = self.hosts_file(&repo.registry)?;
        let mut out = Vec::new();
        if op.via_mirrors() {
            for url in self.config.mirrors_for(&repo.registry) {
                let api = ApiUrl::parse(&url, false).ok_or_else(|| Error::ConfigValue {
                    path: "config".into(),
                    key: "registry-mirrors".into(),
                    msg: format!("{url:?} is not an http(s) URL"),
                })?;
                let headers = self.config.mirror_headers(&url);
                out.push(self.endpoint(&api, true, TlsSettings::default(), &headers, None)?);
            }
            for h in hf.iter().flat_map(|f| f.hosts.iter()) {
                if let (Some(url), true) = (&h.url, op.allowed(h.caps)) {
                    out.push(self.endpoint(url, true, h.tls.clone(), &h.headers, None)?);
                }
            }
            if let Some(m) = &m {
                for mi in &m.entry.mirrors {
                    let caps = match mi.pull_from {
                        PullFrom::DigestOnly => Caps {
                            pull: true,
                            resolve: false,
                            push: false,
                        },
                        PullFrom::All | PullFrom::TagOnly => Caps::MIRROR,
                    };
                    if !op.allowed(caps) {
                        continue;
                    }
                    let (host, name) = located(&mi.location, &m.rest, repo, &m.entry.source)?;
                    let url = self.default_url(&host, mi.insecure)?;
                    out.push(self.endpoint(&url, true, TlsSettings::default(), &[], name)?);
                }
            }
        }
        let server_caps = hf.as_ref().map_or(Caps::ALL, |f| f.server.caps);
        if op.allowed(server_caps) {
            out.push(self.upstream_endpoint(repo, m.as_ref(), hf.as_deref())?);
        }
        if out.is_empty() {
            return Err(Error::NoEndpoint {
                what: repo.to_string(),
                op: format!("{op:?}").to_ascii_lowercase(),
                path: hf.map(|f| f.path.display().to_string()).unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// The upstream alone (pushes, tags, catalog, ping), whatever its capabilities say.
    pub fn upstream(&self, repo: &Repository) -> Result<Endpoint, Error> {
        let regconf = self.registries_conf()?;
        let m = regconf.find(&repo.registry, &repo.name);
        if let Some(m) = &m {
            if m.entry.blocked {
                return Err(Error::Blocked {
                    what: repo.to_string(),
                    path: m.entry.source.display().to_string(),
                });
            }
        }
        let hf = self.hosts_file(&repo.registry)?;
        self.upstream_endpoint(repo, m.as_ref(), hf.as_deref())
    }

    fn upstream_endpoint(
        &self,
        repo: &Repository,
        m: Option<&regconf::Match<'_>>,
        hf: Option<&HostsFile>,
    ) -> Result<Endpoint, Error> {
        match hf.map(|f| &f.server) {
            Some(server) => {
                let (url, name) = match &server.url {
                    Some(u) => (u.clone(), None),
                    None => self.upstream_url(repo, m)?,
                };
                self.endpoint(&url, false, server.tls.clone(), &server.headers, name)
            }
            None => {
                let (url, name) = self.upstream_url(repo, m)?;
                self.endpoint(&url, false, TlsSettings::default(), &[], name)
            }
        }
    }

    /// The upstream's URL and repository name: the registries.conf location (rewritten) or
    /// the registry itself.
    fn upstream_url(
        &self,
        repo: &Repository,
        m: Option<&regconf::Match<'_>>,
    ) -> Result<(ApiUrl, Option<String>), Error> {
        match m {
            Some(m) if !m.entry.prefix.starts_with("*.") => {
                let (host, name) = located(&m.entry.location, &m.rest, repo, &m.entry.source)?;
                Ok((self.default_url(&host, m.entry.insecure)?, name))
            }
            Some(m) => Ok((self.default_url(&repo.registry, m.entry.insecure)?, None)),
            None => Ok((self.default_url(&repo.registry, false)?, None)),
        }
    }
}

/// Host and repository name at `location + rest`; the name is `None` when unchanged or when
/// there is no repository (a registry-wide request).
fn located(
    location: &str,
    rest: &str,
    repo: &Repository,
    source: &std::path::Path,
) -> Result<(String, Option<String>), Error> {
    if repo.name.is_empty() {
        let host = location.split('/').next().unwrap_or(location);
        return Ok((host.to_string(), None));
    }
    let (host, name) = regconf::rewrite(location, rest).ok_or_else(|| Error::ConfigValue {
        path: source.display().to_string(),
        key: "location".into(),
        msg: format!("{location:?} leaves no repository name for {repo}"),
    })?;
    let name = (name != repo.name).then_some(name);
    Ok((host, name))
}
