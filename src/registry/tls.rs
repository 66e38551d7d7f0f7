//! TLS per registry host: which CA certificates to trust beside the system's and the bundled
//! web roots, which client certificate to present, whether to verify at all; and one HTTP
//! client per distinct setting (connections are pooled per client).
//!
//! Settings come from docker-style certificate directories, `<dir>/<host[:port]>/` in each
//! of `certs-dirs` (default `/etc/docker/certs.d`, `/etc/containers/certs.d`) and in
//! `hosts-dir`: every `*.crt` is a CA, every `*.cert` with the `*.key` of the same stem is a
//! client key pair; and from a hosts.toml entry (`ca`, `client`, `skip_verify`). Every client
//! trusts the system's roots (`rustls-native-certs`: `/etc/ssl/certs`, `SSL_CERT_FILE`,
//! `SSL_CERT_DIR`) and the bundled web roots, read on the first TLS handshake (or ahead, on a
//! thread, when an HTTPS endpoint is set up), never for plain-HTTP registries. Uses `config`
//! and the parent's error type.

use super::Error;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
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

/// HTTP clients, one per TLS setting, built on first use; each with its root store (loaded
/// on the first TLS handshake that needs it, so plain-HTTP registries never load it).
#[derive(Default)]
pub struct Clients {
    cache: Mutex<HashMap<TlsSettings, Built>>,
}

/// A client and its certificate checks.
type Built = (reqwest::Client, Arc<LazyRoots>);

impl Clients {
    /// No client is built (nor the system roots read) before the first request.
    pub fn new() -> Clients {
        Clients {
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The client for `tls`. `https`: it will speak TLS soon, so the root store starts
    /// loading now on a thread of its own, beside the connection's DNS and TCP round trips.
    pub fn get(&self, tls: &TlsSettings, https: bool) -> Result<reqwest::Client, Error> {
        let cached = super::lock(&self.cache).get(tls).cloned();
        let (client, roots) = match cached {
            Some(c) => c,
            None => {
                let built = build(tls)?;
                super::lock(&self.cache).insert(tls.clone(), built.clone());
                built
            }
        };
        let ahead = https
            && !roots.skip_verify
            && !roots
                .started
                .swap(true, std::sync::atomic::Ordering::SeqCst);
        if ahead {
            let spawned = std::thread::Builder::new()
                .name("tls-roots".into())
                .spawn(move || {
                    let _ = roots.verifier();
                });
            if let Err(e) = spawned {
                tracing::debug!("loading TLS roots ahead: {e}");
            }
        }
        Ok(client)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

/// The CA certificates of a PEM file (at least one).
fn ca_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read(path)?;
    let bad = |msg: String| Error::BadCertificate {
        path: path.display().to_string(),
        msg,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate bundle: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    // Checked now, as trust anchors, so that a bad file fails the first request at once.
    let mut check = rustls::RootCertStore::empty();
    for c in &certs {
        check
            .add(c.clone())
            .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
    }
    Ok(certs)
}

/// The client key pair of `tls` (the first configured), as rustls takes it.
type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn client_identity(tls: &TlsSettings) -> Result<Option<Identity>, Error> {
    let Some((cert, key)) = tls.client.first() else {
        return Ok(None);
    };
    if tls.client.len() > 1 {
        tracing::warn!(
            "{} client certificates configured; presenting the first, {}",
            tls.client.len(),
            cert.display()
        );
    }
    let cert_pem = read(cert)?;
    let key_pem = match key {
        Some(k) => read(k)?,
        None => cert_pem.clone(),
    };
    let what = match key {
        Some(k) => format!("{} + {}", cert.display(), k.display()),
        None => cert.display().to_string(),
    };
    let bad = |msg: String| Error::BadCertificate {
        path: what.clone(),
        msg,
    };
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("client certificate: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no client certificate in it".into()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad(format!("client key: {e}")))?;
    Ok(Some((certs, key)))
}

/// A client for `tls` and its certificate checks (root store loaded lazily).
fn build(tls: &TlsSettings) -> Result<Built, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut extra = Vec::new();
    for path in &tls.ca {
        extra.extend(ca_certs(path)?);
    }
    let roots = Arc::new(LazyRoots::new(extra, provider.clone(), tls.skip_verify));
    let tls_error = |e: rustls::Error| Error::BadCertificate {
        path: "TLS settings".into(),
        msg: e.to_string(),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(roots.clone());
    let mut config = match client_identity(tls)? {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(tls_error)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let client = reqwest::Client::builder()
        .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(16)
        .use_preconfigured_tls(config)
        .build()
        .map_err(Error::Client)?;
    Ok((client, roots))
}

/// Server certificate checks against the bundled web roots, the system's roots and the
/// configured CAs (none with `skip_verify`, hosts.toml: any certificate is taken; handshake
/// signatures are still checked against it), with the store built on first use (~150 system files: ~25 ms of a cold
/// `strata run` on the benchmark VM while it was built with every client).
#[derive(Debug)]
pub struct LazyRoots {
    extra: Vec<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
    inner: OnceLock<Result<Arc<WebPkiServerVerifier>, String>>,
    /// A thread was started to build it ahead.
    started: std::sync::atomic::AtomicBool,
    skip_verify: bool,
}

impl LazyRoots {
    fn new(
        extra: Vec<CertificateDer<'static>>,
        provider: Arc<CryptoProvider>,
        skip_verify: bool,
    ) -> LazyRoots {
        LazyRoots {
            extra,
            provider,
            inner: OnceLock::new(),
            started: std::sync::atomic::AtomicBool::new(false),
            skip_verify,
        }
    }

    fn verifier(&self) -> Result<&Arc<WebPkiServerVerifier>, rustls::Error> {
        self.inner
            .get_or_init(|| {
                let mut roots = rustls::RootCertStore::empty();
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                let native = rustls_native_certs::load_native_certs();
                for e in &native.errors {
                    tracing::debug!("system CA certificates: {e}");
                }
                let (_, skipped) = roots.add_parsable_certificates(native.certs);
                if skipped > 0 {
                    tracing::debug!("{skipped} system CA certificates skipped (unparsable)");
                }
                for c in &self.extra {
                    roots.add(c.clone()).map_err(|e| e.to_string())?;
                }
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| rustls::Error::General(format!("TLS root store: {e}")))
    }
}

impl ServerCertVerifier for LazyRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.skip_verify {
            return Ok(ServerCertVerified::assertion());
        }
        self.verifier()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
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
