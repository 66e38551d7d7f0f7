//! Registry authentication: `WWW-Authenticate` challenges and the docker credential file.
//!
//! Secrets never reach `Display`/`Debug` output: [`Secret`] redacts itself.

use base64::Engine as _;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A password or token; prints as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic {
        realm: Option<String>,
    },
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parse `Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let params = parse_params(rest);
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic {
            realm: params.get("realm").cloned(),
        }),
        "bearer" => Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        }),
        _ => None,
    }
}

fn parse_params(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.next().is_none() {
            break;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            val.push(n)
                        }
                    }
                    '"' => break,
                    c => val.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                val.push(c);
                chars.next();
            }
        }
        out.insert(key.trim().to_ascii_lowercase(), val);
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum CredError {
    #[error("reading credentials {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("credentials file {path} is not valid JSON: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing credentials {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The docker CLI credential file (`$DOCKER_CONFIG/config.json`, default `~/.docker/config.json`).
#[derive(Debug, Clone)]
pub struct CredentialStore {
    path: PathBuf,
}

/// The key docker uses for Docker Hub in `auths`.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

fn auth_key(registry: &str) -> String {
    if registry == crate::reference::DEFAULT_REGISTRY {
        DOCKER_HUB_KEY.to_string()
    } else {
        registry.to_string()
    }
}

impl CredentialStore {
    pub fn new(path: PathBuf) -> Self {
        CredentialStore { path }
    }

    /// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
    pub fn default_location() -> Self {
        let dir = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
            .unwrap_or_else(|| PathBuf::from("/root/.docker"));
        CredentialStore::new(dir.join("config.json"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn load(&self) -> Result<Map<String, Value>, CredError> {
        match std::fs::read(&self.path) {
            Ok(b) if b.iter().all(|c| c.is_ascii_whitespace()) => Ok(Map::new()),
            Ok(b) => serde_json::from_slice(&b).map_err(|source| CredError::Parse {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Map::new()),
            Err(source) => Err(CredError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Credentials stored for `registry` (host[:port] or docker.io).
    pub fn get(&self, registry: &str) -> Result<Option<Credentials>, CredError> {
        let doc = self.load()?;
        let Some(auths) = doc.get("auths").and_then(Value::as_object) else {
            return Ok(None);
        };
        let key = auth_key(registry);
        let entry = auths.get(&key).or_else(|| {
            auths.iter().find_map(|(k, v)| {
                let bare = k
                    .trim_start_matches("https://")
                    .trim_start_matches("http://");
                let bare = bare.split('/').next().unwrap_or(bare);
                (bare == registry).then_some(v)
            })
        });
        let Some(auth) = entry.and_then(|e| e.get("auth")).and_then(Value::as_str) else {
            return Ok(None);
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(auth) else {
            return Ok(None);
        };
        let decoded = String::from_utf8_lossy(&decoded).into_owned();
        Ok(decoded.split_once(':').map(|(u, p)| Credentials {
            username: u.to_string(),
            password: Secret::new(p),
        }))
    }

    /// Store credentials (file mode 0600, other keys of the file kept).
    pub fn set(&self, registry: &str, creds: &Credentials) -> Result<(), CredError> {
        let mut doc = self.load()?;
        let auths = doc
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        if !auths.is_object() {
            *auths = Value::Object(Map::new());
        }
        let token = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            creds.username,
            creds.password.expose()
        ));
        if let Some(map) = auths.as_object_mut() {
            map.insert(auth_key(registry), serde_json::json!({ "auth": token }));
        }
        self.save(&doc)
    }

    /// Remove credentials; returns whether there were any.
    pub fn remove(&self, registry: &str) -> Result<bool, CredError> {
        let mut doc = self.load()?;
        let removed = doc
            .get_mut("auths")
            .and_then(Value::as_object_mut)
            .map(|m| m.remove(&auth_key(registry)).is_some())
            .unwrap_or(false);
        if removed {
            self.save(&doc)?;
        }
        Ok(removed)
    }

    fn save(&self, doc: &Map<String, Value>) -> Result<(), CredError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let err = |source| CredError::Write {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let tmp = dir.join(format!(".config.json.{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        let body = serde_json::to_vec_pretty(doc).map_err(|e| err(std::io::Error::other(e)))?;
        f.write_all(&body).and_then(|_| f.sync_all()).map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic {
                realm: Some("Registry Realm".into())
            })
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None);
    }

    #[test]
    fn credential_round_trip_keeps_other_keys_and_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"credsStore":"","proxies":{}}"#).unwrap();
        let store = CredentialStore::new(path.clone());
        let creds = Credentials {
            username: "u".into(),
            password: Secret::new("p:w"),
        };
        store.set("127.0.0.1:5000", &creds).unwrap();
        store.set("docker.io", &creds).unwrap();
        assert_eq!(store.get("127.0.0.1:5000").unwrap(), Some(creds.clone()));
        assert_eq!(store.get("docker.io").unwrap(), Some(creds));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("proxies") && text.contains(DOCKER_HUB_KEY));
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(store.remove("127.0.0.1:5000").unwrap());
        assert!(!store.remove("127.0.0.1:5000").unwrap());
        assert_eq!(store.get("127.0.0.1:5000").unwrap(), None);
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "<redacted>");
    }
}
