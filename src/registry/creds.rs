//! Where registry credentials are read from and written to, as the docker CLI and the
//! containers tools do it.
//!
//! Read, first hit wins: the docker CLI file (`$DOCKER_CONFIG/config.json`, default
//! `~/.docker/config.json`): `credHelpers[host]`, else `credsStore` (the helper protocol in
//! `credhelper`), else `auths[host]` (`auth` = base64 `user:password`, `identitytoken`,
//! or `username`/`password`); then containers' `auth.json` files, same format
//! (`$REGISTRY_AUTH_FILE`, else `$XDG_RUNTIME_DIR/containers/auth.json` and
//! `~/.config/containers/auth.json`). `login` writes the docker file: through the configured
//! helper when there is one (the file then gets an empty `auths` entry, as docker writes),
//! else into `auths`, mode 0600, other keys kept.
//!
//! Uses `auth` (types), `credhelper` and `reference` (Docker Hub's key).

use super::auth::{Credentials, Secret};
use super::credhelper::{Helper, HelperError};
use base64::Engine as _;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

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
    #[error("credentials file {path}: {source}")]
    Helper {
        path: PathBuf,
        #[source]
        source: HelperError,
    },
}

/// Where `set` put the credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// In the `auths` of this file.
    File(PathBuf),
    /// Through this helper program.
    Helper(String),
}

/// The credential files of the docker CLI and of the containers tools.
#[derive(Debug, Clone)]
pub struct CredentialStore {
    /// The docker CLI file: read first, and the one `set`/`remove` write.
    path: PathBuf,
    /// containers `auth.json` files, read after it, in order.
    auth_files: Vec<PathBuf>,
}

/// The key docker uses for Docker Hub in `auths` and with helpers.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

fn auth_key(registry: &str) -> String {
    if registry == crate::reference::DEFAULT_REGISTRY {
        DOCKER_HUB_KEY.to_string()
    } else {
        registry.to_string()
    }
}

/// `https://host:port/v1/` -> `host:port`; `index.docker.io` -> `docker.io`.
fn bare_host(key: &str) -> &str {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let k = k.split('/').next().unwrap_or(k);
    match k {
        "index.docker.io" | "registry-1.docker.io" => crate::reference::DEFAULT_REGISTRY,
        k => k,
    }
}

/// The entry of `map` for `registry`: its exact key first, else a key naming the same host.
fn entry_for<'a>(map: &'a Map<String, Value>, registry: &str) -> Option<(&'a str, &'a Value)> {
    let key = auth_key(registry);
    if let Some((k, v)) = map.get_key_value(&key) {
        return Some((k.as_str(), v));
    }
    if let Some((k, v)) = map.get_key_value(registry) {
        return Some((k.as_str(), v));
    }
    map.iter()
        .find(|(k, _)| bare_host(k) == registry)
        .map(|(k, v)| (k.as_str(), v))
}

impl CredentialStore {
    /// Only the docker CLI file at `path` (no `auth.json`).
    pub fn new(path: PathBuf) -> Self {
        CredentialStore {
            path,
            auth_files: Vec::new(),
        }
    }

    /// Also read these containers `auth.json` files, in order, after the docker file.
    pub fn with_auth_files(mut self, files: Vec<PathBuf>) -> Self {
        self.auth_files = files;
        self
    }

    /// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`; then the `auth.json`
    /// files the containers tools use: `$REGISTRY_AUTH_FILE` alone when it is set, else
    /// `$XDG_RUNTIME_DIR/containers/auth.json` and `$HOME/.config/containers/auth.json`.
    pub fn default_location() -> Self {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let dir = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".docker")))
            .unwrap_or_else(|| PathBuf::from("/root/.docker"));
        let mut files = Vec::new();
        match std::env::var_os("REGISTRY_AUTH_FILE").filter(|v| !v.is_empty()) {
            Some(f) => files.push(PathBuf::from(f)),
            None => {
                if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
                    files.push(PathBuf::from(x).join("containers/auth.json"));
                }
                if let Some(h) = &home {
                    files.push(h.join(".config/containers/auth.json"));
                }
            }
        }
        CredentialStore::new(dir.join("config.json")).with_auth_files(files)
    }

    /// The docker CLI file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The containers `auth.json` files read after it.
    pub fn auth_files(&self) -> &[PathBuf] {
        &self.auth_files
    }

    /// Credentials for `registry` (host[:port] or docker.io) from the first file that has any.
    pub fn get(&self, registry: &str) -> Result<Option<Credentials>, CredError> {
        if let Some(c) = get_from(&self.path, registry)? {
            return Ok(Some(c));
        }
        for f in &self.auth_files {
            if let Some(c) = get_from(f, registry)? {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    /// The helper the docker file names for `registry` (`credHelpers`, else `credsStore`).
    pub fn helper_for(&self, registry: &str) -> Result<Option<Helper>, CredError> {
        Ok(helper_in(&load(&self.path)?, registry))
    }

    /// Store credentials: through the docker file's helper when it names one (and an empty
    /// `auths` entry, as docker writes), else in its `auths` (file mode 0600, other keys kept).
    pub fn set(&self, registry: &str, creds: &Credentials) -> Result<Stored, CredError> {
        let mut doc = load(&self.path)?;
        let key = auth_key(registry);
        let helper = helper_in(&doc, registry);
        let entry = match &helper {
            Some(h) => {
                h.store(&key, creds).map_err(|source| CredError::Helper {
                    path: self.path.clone(),
                    source,
                })?;
                serde_json::json!({})
            }
            None => {
                let auth = base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    creds.username,
                    creds.password.expose()
                ));
                match &creds.identity_token {
                    Some(t) => serde_json::json!({ "auth": auth, "identitytoken": t.expose() }),
                    None => serde_json::json!({ "auth": auth }),
                }
            }
        };
        let auths = doc
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        if !auths.is_object() {
            *auths = Value::Object(Map::new());
        }
        if let Some(map) = auths.as_object_mut() {
            map.insert(key, entry);
        }
        save(&self.path, &doc)?;
        Ok(match helper {
            Some(h) => Stored::Helper(h.program().to_string()),
            None => Stored::File(self.path.clone()),
        })
    }

    /// Remove credentials (from the helper too, when one is configured); returns whether
    /// there were any.
    pub fn remove(&self, registry: &str) -> Result<bool, CredError> {
        let mut doc = load(&self.path)?;
        let mut removed = false;
        if let Some(h) = helper_in(&doc, registry) {
            removed |= h
                .erase(&auth_key(registry))
                .map_err(|source| CredError::Helper {
                    path: self.path.clone(),
                    source,
                })?;
        }
        let in_file = doc
            .get_mut("auths")
            .and_then(Value::as_object_mut)
            .map(|m| m.remove(&auth_key(registry)).is_some())
            .unwrap_or(false);
        if in_file {
            save(&self.path, &doc)?;
        }
        Ok(removed || in_file)
    }
}

fn helper_in(doc: &Map<String, Value>, registry: &str) -> Option<Helper> {
    let named = doc
        .get("credHelpers")
        .and_then(Value::as_object)
        .and_then(|m| entry_for(m, registry))
        .and_then(|(_, v)| v.as_str())
        .filter(|s| !s.is_empty());
    let store = doc
        .get("credsStore")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    named.or(store).map(Helper::new)
}

/// Credentials for `registry` in one file (its helpers, then its `auths`).
fn get_from(path: &Path, registry: &str) -> Result<Option<Credentials>, CredError> {
    let doc = load(path)?;
    if let Some(h) = helper_in(&doc, registry) {
        let found = h
            .get(&auth_key(registry))
            .map_err(|source| CredError::Helper {
                path: path.to_path_buf(),
                source,
            })?;
        if let Some(mut c) = found {
            // A helper's identity token carries no username; the file's entry may.
            if c.username.is_empty() {
                if let Some(Credentials { username, .. }) = from_auths(&doc, registry) {
                    c.username = username;
                }
            }
            return Ok(Some(c));
        }
    }
    Ok(from_auths(&doc, registry))
}

fn from_auths(doc: &Map<String, Value>, registry: &str) -> Option<Credentials> {
    let auths = doc.get("auths").and_then(Value::as_object)?;
    let (_, entry) = entry_for(auths, registry)?;
    let field = |k: &str| {
        entry
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let (mut user, mut pass) = (String::new(), String::new());
    if let Some(auth) = field("auth") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()?;
        let decoded = String::from_utf8_lossy(&decoded).into_owned();
        let (u, p) = decoded.split_once(':')?;
        user = u.to_string();
        pass = p.to_string();
    } else if let (Some(u), Some(p)) = (field("username"), field("password")) {
        user = u.to_string();
        pass = p.to_string();
    }
    if let Some(t) = field("identitytoken") {
        return Some(Credentials::identity_token(user, Secret::new(t)));
    }
    (!pass.is_empty()).then(|| Credentials::basic(user, Secret::new(pass)))
}

fn load(path: &Path) -> Result<Map<String, Value>, CredError> {
    match std::fs::read(path) {
        Ok(b) if b.iter().all(|c| c.is_ascii_whitespace()) => Ok(Map::new()),
        Ok(b) => serde_json::from_slice(&b).map_err(|source| CredError::Parse {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Map::new()),
        Err(source) => Err(CredError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn save(path: &Path, doc: &Map<String, Value>) -> Result<(), CredError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| CredError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
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
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_round_trip_keeps_other_keys_and_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"credsStore":"","proxies":{}}"#).unwrap();
        let store = CredentialStore::new(path.clone());
        let creds = Credentials::basic("u", Secret::new("p:w"));
        assert_eq!(
            store.set("127.0.0.1:5000", &creds).unwrap(),
            Stored::File(path.clone())
        );
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

    #[test]
    fn identity_tokens_and_auth_json_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("config.json");
        let authjson = dir.path().join("auth.json");
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        std::fs::write(
            &docker,
            serde_json::json!({"auths": {
                "https://reg.example/v1/": {"auth": b64("bob:"), "identitytoken": "refresh-1"},
            }})
            .to_string(),
        )
        .unwrap();
        std::fs::write(
            &authjson,
            serde_json::json!({"auths": {
                "other.example:5000": {"auth": b64("carol:pw")},
                "reg.example": {"auth": b64("ignored:because-docker-file-wins")},
            }})
            .to_string(),
        )
        .unwrap();
        let store = CredentialStore::new(docker)
            .with_auth_files(vec![dir.path().join("missing.json"), authjson]);
        let c = store.get("reg.example").unwrap().unwrap();
        assert_eq!(c.username, "bob");
        assert_eq!(c.identity_token, Some(Secret::new("refresh-1")));
        let c = store.get("other.example:5000").unwrap().unwrap();
        assert_eq!(c, Credentials::basic("carol", Secret::new("pw")));
        assert_eq!(store.get("third.example").unwrap(), None);
    }

    #[test]
    fn a_missing_helper_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"credHelpers": {"reg.example": "strata-test-no-such-helper"}}"#,
        )
        .unwrap();
        let store = CredentialStore::new(path);
        let e = store.get("reg.example").unwrap_err().to_string();
        assert!(
            e.contains("docker-credential-strata-test-no-such-helper"),
            "{e}"
        );
        // Other registries do not use that helper.
        assert_eq!(store.get("other.example").unwrap(), None);
    }
}
