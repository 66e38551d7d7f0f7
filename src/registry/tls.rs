//! TLS per registry host: which CA certificates to trust beside the system's and the bundled
//! web roots, which client certificate to present, whether to verify at all; and one HTTP
//! client per distinct setting (connections are pooled per client).
//!
//! Settings come from docker-style certificate directories, `<dir>/<host[:port]>/` in each
//! of `certs-dirs` (default `/etc/docker/certs.d`, `/etc/containers/certs.d`) and in
//! `hosts-dir`: every `*.crt` is a CA, every `*.cert` with the `*.key` of the same stem is a
//! client key pair; and from a hosts.toml entry (`ca`, `client`, `skip_verify`). Every client
//! trusts the system's roots (`rustls-native-certs`: `/etc/ssl/certs`, `SSL_CERT_FILE`,
//! `SSL_CERT_DIR`) and the bundled web roots. Uses `config` and the parent's error type.

use super::Error;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// How to speak TLS to one endpoint. Paths, read when a client is built.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    /// PEM files with CA certificates to trust (besides the system and bundled roots).
    pub ca: Vec<PathBuf>,
    /// Client key pairs: certificate file, key file (`None`: the key is in the certificate file).
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    /// Do not verify the server's certificate (hosts.toml `skip_verify`).
    pub skip_verify: bool,
}

impl TlsSettings {
    pub fn is_default(&self) -> bool {
        self == &TlsSettings::default()
    }

    /// Add `other`'s CAs and client pairs after ours; `skip_verify` if either says so.
    pub fn merge(&mut self, other: &TlsSettings) {
        for c in &other.ca {
            if !self.ca.contains(c) {
                self.ca.push(c.clone());
            }
        }
        for p in &other.client {
            if !self.client.contains(p) {
                self.client.push(p.clone());
            }
        }
        self.skip_verify |= other.skip_verify;
    }
}

/// The docker certificate layout of one directory (missing directory: nothing), files sorted.
pub fn from_cert_dir(dir: &Path) -> Result<TlsSettings, Error> {
    let mut out = TlsSettings::default();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => return Ok(out),
        Err(source) => {
            return Err(Error::Io {
                path: dir.display().to_string(),
                source,
            })
        }
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| !t.is_dir()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in &names {
        if n.ends_with(".crt") {
            out.ca.push(dir.join(n));
        } else if let Some(stem) = n.strip_suffix(".cert") {
            let key = format!("{stem}.key");
            let key = names.contains(&key).then(|| dir.join(key));
            out.client.push((dir.join(n), key));
        }
    }
    Ok(out)
}

/// The certificate directories' settings for `host` (`host[:port]`), merged in order.
pub fn for_host(dirs: &[PathBuf], host: &str) -> Result<TlsSettings, Error> {
    let mut out = TlsSettings::default();
    if host.is_empty() || host.contains('/') || host.starts_with('.') {
        return Ok(out);
    }
    for d in dirs {
        out.merge(&from_cert_dir(&d.join(host))?);
    }
    Ok(out)
}

/// HTTP clients, one per TLS setting, built on first use.
#[derive(Default)]
pub struct Clients {
    cache: Mutex<HashMap<TlsSettings, reqwest::Client>>,
}

impl Clients {
    /// No client is built (nor the system roots read) before the first request.
    pub fn new() -> Clients {
        Clients {
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The client for `tls`.
    pub fn get(&self, tls: &TlsSettings) -> Result<reqwest::Client, Error> {
        if let Some(c) = super::lock(&self.cache).get(tls) {
            return Ok(c.clone());
        }
        let client = build(tls)?;
        super::lock(&self.cache).insert(tls.clone(), client.clone());
        Ok(client)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

fn build(tls: &TlsSettings) -> Result<reqwest::Client, Error> {
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(16)
        .tls_built_in_root_certs(true);
    for path in &tls.ca {
        let pem = read(path)?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| Error::Certificate {
                path: path.display().to_string(),
                source,
            })?;
        if certs.is_empty() {
            return Err(Error::BadCertificate {
                path: path.display().to_string(),
                msg: "no PEM certificate in it".into(),
            });
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    if let Some((cert, key)) = tls.client.first() {
        if tls.client.len() > 1 {
            tracing::warn!(
                "{} client certificates configured; presenting the first, {}",
                tls.client.len(),
                cert.display()
            );
        }
        let mut pem = read(cert)?;
        if let Some(k) = key {
            pem.push(b'\n');
            pem.extend_from_slice(&read(k)?);
        }
        let what = match key {
            Some(k) => format!("{} + {}", cert.display(), k.display()),
            None => cert.display().to_string(),
        };
        let id = reqwest::Identity::from_pem(&pem)
            .map_err(|source| Error::Certificate { path: what, source })?;
        b = b.identity(id);
    }
    if tls.skip_verify {
        b = b.danger_accept_invalid_certs(true);
    }
    b.build().map_err(Error::Client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_cert_dir_layout() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("reg.example:5000");
        std::fs::create_dir_all(&host).unwrap();
        for f in [
            "ca.crt",
            "extra.crt",
            "client.cert",
            "client.key",
            "lone.cert",
            "x.txt",
        ] {
            std::fs::write(host.join(f), "").unwrap();
        }
        let s = for_host(&[dir.path().to_path_buf()], "reg.example:5000").unwrap();
        assert_eq!(s.ca, vec![host.join("ca.crt"), host.join("extra.crt")]);
        assert_eq!(
            s.client,
            vec![
                (host.join("client.cert"), Some(host.join("client.key"))),
                (host.join("lone.cert"), None)
            ]
        );
        assert!(for_host(&[dir.path().to_path_buf()], "other.example")
            .unwrap()
            .is_default());
        assert!(for_host(&[dir.path().to_path_buf()], "../etc")
            .unwrap()
            .is_default());
    }

    #[test]
    fn unreadable_or_empty_ca_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let tls = TlsSettings {
            ca: vec![ca.clone()],
            ..Default::default()
        };
        let e = build(&tls).unwrap_err().to_string();
        assert!(e.contains(&ca.display().to_string()), "{e}");
        let missing = TlsSettings {
            ca: vec![dir.path().join("nope.crt")],
            ..Default::default()
        };
        let e = build(&missing).unwrap_err().to_string();
        assert!(e.contains("nope.crt"), "{e}");
    }
}
