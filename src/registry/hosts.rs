//! containerd's registry host configuration: `<hosts-dir>/<host>/hosts.toml` (default
//! directory `/etc/containerd/certs.d`; `<host>` is `host:port`, or `host_port_`, or
//! `_default` for every registry without its own).
//!
//! ```toml
//! server = "https://registry.example"          # the upstream (default: the registry itself)
//! [host."http://mirror.local:5000"]            # tried first, in file order
//!   capabilities = ["pull", "resolve"]        # pull: by digest; resolve: tag -> digest; push
//!   skip_verify = false
//!   ca = "/etc/certs/mirror-ca.pem"           # or a list; relative paths: from the host dir
//!   client = [["/etc/certs/c.cert", "/etc/certs/c.key"]]   # or "both.pem", or a list of them
//!   override_path = false                     # true: the URL's path is the API root as is
//!   [host."http://mirror.local:5000".header]
//!     X-Dragonfly-Registry = "https://registry.example"    # or a list of values
//! ```
//!
//! The top-level keys other than `server` configure the server. Parsing only: the mirror list
//! is put together in `routes`. Uses `tls` (settings type) and the parent's error type.

use super::tls::TlsSettings;
use super::Error;
use std::path::{Path, PathBuf};
use toml::Value;

/// What an endpoint may be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Content by digest: blobs, manifests by digest, referrers.
    pub pull: bool,
    /// Tag -> digest (manifests by tag).
    pub resolve: bool,
    pub push: bool,
}

impl Caps {
    pub const ALL: Caps = Caps {
        pull: true,
        resolve: true,
        push: true,
    };
    /// What a mirror does by default in daemon.json style configuration.
    pub const MIRROR: Caps = Caps {
        pull: true,
        resolve: true,
        push: false,
    };
}

/// `scheme://host[:port]` plus the API root path (`/v2`, or the configured path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiUrl {
    pub scheme: String,
    pub host: String,
    /// Path of the API root, no trailing slash, e.g. `/v2` or `/v2/proxy`.
    pub path: String,
}

impl ApiUrl {
    /// Parse `[scheme://]host[:port][/path]` (https when no scheme) the way containerd does:
    /// `/v2` is appended to the path unless it ends with it or `override_path` is set.
    pub fn parse(url: &str, override_path: bool) -> Option<ApiUrl> {
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) if s == "http" || s == "https" => (s.to_string(), r),
            Some(_) => return None,
            None => ("https".to_string(), url),
        };
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if host.is_empty() || host.contains(['?', '#', '@', ' ']) {
            return None;
        }
        let mut clean: Vec<&str> = Vec::new();
        for seg in path.split('/') {
            match seg {
                "" | "." => {}
                ".." => {
                    clean.pop();
                }
                s => clean.push(s),
            }
        }
        let mut path = clean.iter().map(|s| format!("/{s}")).collect::<String>();
        if !override_path && !path.ends_with("/v2") {
            path.push_str("/v2");
        }
        Some(ApiUrl {
            scheme,
            host: host.to_string(),
            path,
        })
    }

    /// `scheme://host[:port]`.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.host)
    }
}

/// One `[host."..."]` table, or the top level (the server).
#[derive(Debug, Clone)]
pub struct HostEntry {
    /// `None` for a top level without `server`: the registry's default upstream.
    pub url: Option<ApiUrl>,
    pub caps: Caps,
    pub tls: TlsSettings,
    pub headers: Vec<(String, String)>,
}

/// A parsed hosts.toml.
#[derive(Debug, Clone)]
pub struct HostsFile {
    pub path: PathBuf,
    /// The `[host."..."]` entries, in file order.
    pub hosts: Vec<HostEntry>,
    /// The top level (`server` and its settings).
    pub server: HostEntry,
}

/// The directory for `host` under `dir`: `host`, then `host_port_`, then `_default`.
fn host_dir(dir: &Path, host: &str) -> Option<PathBuf> {
    if host.is_empty() || host.contains('/') || host.starts_with('.') {
        return None;
    }
    let mut names = vec![host.to_string()];
    if let Some((h, p)) = host.rsplit_once(':') {
        names.push(format!("{h}_{p}_"));
    }
    names.push("_default".into());
    names
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.join("hosts.toml").is_file())
}

/// The hosts.toml that applies to `host`, if any.
pub fn load(dir: &Path, host: &str) -> Result<Option<HostsFile>, Error> {
    let Some(hdir) = host_dir(dir, host) else {
        return Ok(None);
    };
    let path = hdir.join("hosts.toml");
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse(&path, &hdir, &text).map(Some)
}

fn bad(path: &Path, key: &str, msg: impl Into<String>) -> Error {
    Error::ConfigValue {
        path: path.display().to_string(),
        key: key.to_string(),
        msg: msg.into(),
    }
}

/// Parse hosts.toml text; relative certificate paths are taken from `base`.
pub fn parse(path: &Path, base: &Path, text: &str) -> Result<HostsFile, Error> {
    let doc: toml::Table = text.parse().map_err(|source| Error::ConfigFile {
        path: path.display().to_string(),
        source: Box::new(source),
    })?;
    let server_url = match doc.get("server") {
        None => None,
        Some(Value::String(s)) => {
            let override_path = matches!(doc.get("override_path"), Some(Value::Boolean(true)));
            Some(
                ApiUrl::parse(s, override_path)
                    .ok_or_else(|| bad(path, "server", format!("{s:?} is not an http(s) URL")))?,
            )
        }
        Some(_) => return Err(bad(path, "server", "must be a string")),
    };
    let server = entry(path, base, "", server_url, &doc, true)?;
    let mut hosts = Vec::new();
    match doc.get("host") {
        None => {}
        Some(Value::Table(t)) => {
            for (name, v) in t {
                let Value::Table(ht) = v else {
                    return Err(bad(path, &format!("host.{name:?}"), "must be a table"));
                };
                let override_path = matches!(ht.get("override_path"), Some(Value::Boolean(true)));
                let url = ApiUrl::parse(name, override_path)
                    .ok_or_else(|| bad(path, &format!("host.{name:?}"), "is not an http(s) URL"))?;
                hosts.push(entry(path, base, name, Some(url), ht, false)?);
            }
        }
        Some(_) => return Err(bad(path, "host", "must be a table of hosts")),
    }
    Ok(HostsFile {
        path: path.to_path_buf(),
        hosts,
        server,
    })
}

fn entry(
    path: &Path,
    base: &Path,
    name: &str,
    url: Option<ApiUrl>,
    t: &toml::Table,
    top: bool,
) -> Result<HostEntry, Error> {
    let key = |k: &str| {
        if top {
            k.to_string()
        } else {
            format!("host.{name:?}.{k}")
        }
    };
    let abs = |p: &str| -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let strings = |k: &str, v: &Value| -> Result<Vec<String>, Error> {
        match v {
            Value::String(s) => Ok(vec![s.clone()]),
            Value::Array(a) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad(path, &key(k), "must hold strings"))
                })
                .collect(),
            _ => Err(bad(path, &key(k), "must be a string or a list of strings")),
        }
    };
    let mut e = HostEntry {
        url,
        caps: Caps::ALL,
        tls: TlsSettings::default(),
        headers: Vec::new(),
    };
    for (k, v) in t {
        match k.as_str() {
            "server" | "host" if top => {}
            "override_path" => {
                if !v.is_bool() {
                    return Err(bad(path, &key(k), "must be true or false"));
                }
            }
            "capabilities" => {
                let mut caps = Caps {
                    pull: false,
                    resolve: false,
                    push: false,
                };
                for c in strings(k, v)? {
                    match c.to_ascii_lowercase().as_str() {
                        "pull" => caps.pull = true,
                        "resolve" => caps.resolve = true,
                        "push" => caps.push = true,
                        other => {
                            return Err(bad(
                                path,
                                &key(k),
                                format!("unknown capability {other:?} (pull, resolve, push)"),
                            ))
                        }
                    }
                }
                if !caps.pull && !caps.resolve && !caps.push {
                    caps = Caps::ALL;
                }
                e.caps = caps;
            }
            "skip_verify" => {
                e.tls.skip_verify = v
                    .as_bool()
                    .ok_or_else(|| bad(path, &key(k), "must be true or false"))?;
            }
            "ca" => e.tls.ca = strings(k, v)?.iter().map(|s| abs(s)).collect(),
            "client" => {
                let items: Vec<Value> = match v {
                    Value::String(_) => vec![v.clone()],
                    Value::Array(a) => a.clone(),
                    _ => {
                        return Err(bad(
                            path,
                            &key(k),
                            "must be a path, or a list of paths or pairs",
                        ))
                    }
                };
                for it in items {
                    match it {
                        Value::String(s) => e.tls.client.push((abs(&s), None)),
                        Value::Array(pair) => {
                            let pair: Vec<&str> = pair.iter().filter_map(Value::as_str).collect();
                            let [cert, keyf] = pair[..] else {
                                return Err(bad(
                                    path,
                                    &key(k),
                                    "a pair must be [certificate, key]",
                                ));
                            };
                            e.tls.client.push((abs(cert), Some(abs(keyf))));
                        }
                        _ => return Err(bad(path, &key(k), "must hold paths or pairs of paths")),
                    }
                }
            }
            "header" => {
                let Value::Table(h) = v else {
                    return Err(bad(path, &key(k), "must be a table of header names"));
                };
                for (name, val) in h {
                    if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                        return Err(bad(path, &key(k), format!("bad header name {name:?}")));
                    }
                    for s in strings(&format!("header.{name}"), val)? {
                        if reqwest::header::HeaderValue::from_str(&s).is_err() {
                            return Err(bad(path, &key(k), format!("bad value for header {name}")));
                        }
                        e.headers.push((name.clone(), s));
                    }
                }
            }
            "dial_timeout" => {
                tracing::debug!("{}: {} is not used by strata", path.display(), key(k));
            }
            other => {
                tracing::warn!("{}: unknown key {}, ignored", path.display(), key(other));
            }
        }
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_urls_as_containerd_builds_them() {
        let u = ApiUrl::parse("mirror.example:5000", false).unwrap();
        assert_eq!(u.scheme, "https");
        assert_eq!(u.host, "mirror.example:5000");
        assert_eq!(u.path, "/v2");
        let u = ApiUrl::parse("http://m.example/cache/", false).unwrap();
        assert_eq!((u.scheme.as_str(), u.path.as_str()), ("http", "/cache/v2"));
        let u = ApiUrl::parse("http://m.example/v2/", false).unwrap();
        assert_eq!(u.path, "/v2");
        let u = ApiUrl::parse("http://m.example/api/x", true).unwrap();
        assert_eq!(u.path, "/api/x");
        assert!(ApiUrl::parse("ftp://x", false).is_none());
        assert!(ApiUrl::parse("http:///v2", false).is_none());
    }

    #[test]
    fn hosts_in_order_with_their_settings() {
        let text = r#"
server = "https://upstream.example"
ca = "up-ca.crt"

[host."http://b.example:5000"]
  capabilities = ["pull"]
  [host."http://b.example:5000".header]
    X-Dragonfly-Registry = "https://upstream.example"
    X-Multi = ["1", "2"]

[host."https://a.example/mirror"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
  ca = ["/abs/ca.pem", "rel.pem"]
  client = [["c.cert", "c.key"], "both.pem"]
  override_path = true
"#;
        let f = parse(Path::new("/d/hosts.toml"), Path::new("/d"), text).unwrap();
        assert_eq!(f.hosts.len(), 2);
        let b = &f.hosts[0];
        assert_eq!(b.url.as_ref().unwrap().origin(), "http://b.example:5000");
        assert_eq!(
            b.caps,
            Caps {
                pull: true,
                resolve: false,
                push: false
            }
        );
        assert_eq!(
            b.headers,
            vec![
                (
                    "X-Dragonfly-Registry".into(),
                    "https://upstream.example".into()
                ),
                ("X-Multi".into(), "1".into()),
                ("X-Multi".into(), "2".into())
            ]
        );
        let a = &f.hosts[1];
        assert_eq!(a.url.as_ref().unwrap().path, "/mirror");
        assert!(a.tls.skip_verify);
        assert_eq!(
            a.tls.ca,
            vec![PathBuf::from("/abs/ca.pem"), PathBuf::from("/d/rel.pem")]
        );
        assert_eq!(
            a.tls.client,
            vec![
                (PathBuf::from("/d/c.cert"), Some(PathBuf::from("/d/c.key"))),
                (PathBuf::from("/d/both.pem"), None)
            ]
        );
        let s = &f.server;
        assert_eq!(s.url.as_ref().unwrap().origin(), "https://upstream.example");
        assert_eq!(s.caps, Caps::ALL);
        assert_eq!(s.tls.ca, vec![PathBuf::from("/d/up-ca.crt")]);
    }

    #[test]
    fn bad_values_name_file_and_key() {
        let p = Path::new("/d/hosts.toml");
        let e = parse(
            p,
            Path::new("/d"),
            "[host.\"http://m\"]\ncapabilities = [\"fly\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/d/hosts.toml") && e.contains("capabilities") && e.contains("fly"),
            "{e}"
        );
        let e = parse(p, Path::new("/d"), "server = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("server"), "{e}");
        let e = parse(p, Path::new("/d"), "server = \"http://x\"\n[[[")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/d/hosts.toml"), "{e}");
    }

    #[test]
    fn host_dir_lookup_order() {
        let d = tempfile::tempdir().unwrap();
        assert!(load(d.path(), "r.example:5000").unwrap().is_none());
        std::fs::create_dir_all(d.path().join("_default")).unwrap();
        std::fs::write(
            d.path().join("_default/hosts.toml"),
            "server = \"https://dflt\"\n",
        )
        .unwrap();
        std::fs::create_dir_all(d.path().join("r.example_5000_")).unwrap();
        std::fs::write(
            d.path().join("r.example_5000_/hosts.toml"),
            "server = \"http://port-dir\"\n",
        )
        .unwrap();
        let f = load(d.path(), "r.example:5000").unwrap().unwrap();
        assert_eq!(f.server.url.unwrap().host, "port-dir");
        let f = load(d.path(), "other.example").unwrap().unwrap();
        assert_eq!(f.server.url.unwrap().host, "dflt");
        assert!(load(d.path(), "../x").unwrap().is_none());
    }
}
