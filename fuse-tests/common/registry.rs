//! A real `docker-registry serve` (distribution v2.8) on 127.0.0.1:ephemeral with storage,
//! config and logs in a tempdir. Anonymous, htpasswd (bcrypt) or bearer-token auth; plain
//! http, or TLS with optional client certificates (`http.tls.clientcas`). Ready means
//! `GET /v2/` answered (for TLS: the "HTTP request to an HTTPS server" 400); the process is killed on Drop (also while a test unwinds) and,
//! through PR_SET_PDEATHSIG, when the thread that started it dies, so start a `Registry` on
//! the test's own thread.

use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::http;
use super::token::{TokenOptions, TokenServer};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// How clients authenticate to a [`Registry`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryAuth {
    Anonymous,
    Basic { user: String, pass: String },
    Token { user: String, pass: String },
}

/// TLS for a [`Registry`]: its certificate chain and key (PEM) and, to require client
/// certificates, the CA certificates that sign them.
#[derive(Clone, Debug)]
pub struct RegistryTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub client_ca_pem: Option<String>,
}

/// A running registry process.
pub struct Registry {
    child: Child,
    port: u16,
    dir: TempDir,
    auth: RegistryAuth,
    token: Option<TokenServer>,
    tls: bool,
}

impl Registry {
    /// Anonymous pull and push.
    pub fn start() -> Registry {
        Self::spawn(RegistryAuth::Anonymous, None, None)
    }

    /// Serving TLS only (`auth`: anonymous or htpasswd).
    pub fn with_tls(auth: RegistryAuth, tls: RegistryTls) -> Registry {
        assert!(
            !matches!(auth, RegistryAuth::Token { .. }),
            "token auth with TLS is not wired up"
        );
        Self::spawn(auth, None, Some(tls))
    }

    /// htpasswd auth with one bcrypt user (`htpasswd -Bbn`); anonymous requests get 401.
    pub fn with_htpasswd(user: &str, pass: &str) -> Registry {
        Self::spawn(
            RegistryAuth::Basic {
                user: user.into(),
                pass: pass.into(),
            },
            None,
            None,
        )
    }

    /// Bearer-token auth backed by an in-process [`TokenServer`] with default options
    /// (user `strata`, password `token-s3cret`, no anonymous access).
    pub fn with_token_auth() -> Registry {
        Self::with_token_options(TokenOptions::default())
    }

    /// Bearer-token auth with the given issuer options.
    pub fn with_token_options(opts: TokenOptions) -> Registry {
        let auth = RegistryAuth::Token {
            user: opts.user.clone(),
            pass: opts.pass.clone(),
        };
        Self::spawn(auth, Some(TokenServer::start(opts)), None)
    }

    fn spawn(auth: RegistryAuth, token: Option<TokenServer>, tls: Option<RegistryTls>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("strata-registry-")
            .tempdir()
            .expect("registry tempdir");
        fs::create_dir_all(dir.path().join("data")).expect("mkdir data");
        let auth_yaml = match &auth {
            RegistryAuth::Anonymous => String::new(),
            RegistryAuth::Basic { user, pass } => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, pass])
                    .output()
                    .expect("run htpasswd (apache2-utils)");
                assert!(out.status.success(), "htpasswd failed: {out:?}");
                let path = dir.path().join("htpasswd");
                fs::write(&path, &out.stdout).expect("write htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: strata-test\n    path: {}\n",
                    path.display()
                )
            }
            RegistryAuth::Token { .. } => {
                let ts = token.as_ref().expect("token server");
                let bundle = dir.path().join("token-root.pem");
                fs::write(&bundle, ts.cert_pem()).expect("write root bundle");
                format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    ts.realm(),
                    ts.options().service,
                    ts.options().issuer,
                    bundle.display()
                )
            }
        };
        let tls_yaml = match &tls {
            None => String::new(),
            Some(t) => {
                let cert = dir.path().join("server.crt");
                let key = dir.path().join("server.key");
                fs::write(&cert, &t.cert_pem).expect("write server.crt");
                fs::write(&key, &t.key_pem).expect("write server.key");
                let mut y = format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    cert.display(),
                    key.display()
                );
                if let Some(ca) = &t.client_ca_pem {
                    let p = dir.path().join("client-ca.crt");
                    fs::write(&p, ca).expect("write client-ca.crt");
                    y.push_str(&format!("    clientcas:\n      - {}\n", p.display()));
                }
                y
            }
        };
        let mut last_log = String::new();
        for _attempt in 0..8 {
            let port = super::free_port();
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: strata-test-secret\n  \
                 headers:\n    X-Content-Type-Options: [nosniff]\n\
                 {tls_yaml}{auth_yaml}",
                data = dir.path().join("data").display(),
            );
            let config_path = dir.path().join("config.yml");
            fs::write(&config_path, config).expect("write config.yml");
            let stdout = fs::File::create(dir.path().join("access.log")).expect("access.log");
            let stderr = fs::File::create(dir.path().join("registry.log")).expect("registry.log");
            let mut cmd = Command::new(REGISTRY_BIN);
            cmd.arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr)
                .env_remove("REGISTRY_HTTP_ADDR");
            // SAFETY: prctl is async-signal-safe; no allocation between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {REGISTRY_BIN}: {e}"));
            let tls_on = tls.is_some();
            match wait_ready(
                port,
                &mut child,
                dir.path(),
                Duration::from_secs(10),
                tls_on,
            ) {
                Ok(()) => {
                    return Registry {
                        child,
                        port,
                        dir,
                        auth,
                        token,
                        tls: tls_on,
                    }
                }
                Err(log) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    if !log.contains("address already in use") {
                        panic!("docker-registry did not become ready:\n{log}");
                    }
                    last_log = log;
                }
            }
        }
        panic!("docker-registry could not bind a free port:\n{last_log}");
    }

    /// "http://127.0.0.1:PORT" ("https://..." when serving TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// "127.0.0.1:PORT" (the registry part of an image reference).
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn auth(&self) -> &RegistryAuth {
        &self.auth
    }

    /// (user, password) when the registry requires them.
    pub fn creds(&self) -> Option<(&str, &str)> {
        match &self.auth {
            RegistryAuth::Anonymous => None,
            RegistryAuth::Basic { user, pass } | RegistryAuth::Token { user, pass } => {
                Some((user.as_str(), pass.as_str()))
            }
        }
    }

    /// The token issuer of a `with_token_auth` registry.
    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token.as_ref()
    }

    /// The registry's tempdir (config.yml, logs, `data/` storage).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Filesystem-driver root (`data/docker/registry/v2/...` below it).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Path of a blob's data file inside the storage (exists once pushed).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Application log (stderr; logrus text with `msg="response completed"` lines).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Access log (stdout; Apache combined format, one line per request).
    pub fn access_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Wait (up to 1 s) until the log files stop growing for 25 ms. The registry writes a
    /// request's log lines just after the response, so a client that has just finished can
    /// be a line ahead of the logs; counters call this first.
    pub fn settle_logs(&self) {
        let size = || {
            let len = |f: &str| fs::metadata(self.dir.path().join(f)).map_or(0, |m| m.len());
            len("registry.log") + len("access.log")
        };
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut last = size();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(25));
            let now = size();
            if now == last {
                return;
            }
            last = now;
        }
    }

    /// Sum of `http.response.written=` over every completed response so far.
    pub fn bytes_served(&self) -> u64 {
        self.settle_logs();
        self.log()
            .lines()
            .filter_map(|l| field(l, "http.response.written="))
            .filter_map(|v| v.parse::<u64>().ok())
            .sum()
    }

    /// (method, request URI, status) of every request in the access log, oldest first.
    pub fn requests(&self) -> Vec<(String, String, u16)> {
        self.settle_logs();
        self.access_log()
            .lines()
            .filter_map(parse_access_line)
            .collect()
    }

    /// Every response in the access log with its body size, oldest first. Take
    /// `served().len()` as a mark before an action and look at what came after it.
    pub fn served(&self) -> Vec<Served> {
        self.settle_logs();
        self.access_log()
            .lines()
            .filter_map(parse_served_line)
            .collect()
    }

    /// What the registry sent for the blobs named by `digests` after `mark` (a length of
    /// [`served`](Self::served)): the number of `GET`s it answered `206 Partial Content` (the
    /// Range requests) and the body bytes of those answers. Panics if any such blob `GET` was
    /// answered otherwise (a whole-blob download is not what a lazy read should cause).
    pub fn range_gets_since(&self, mark: usize, digests: &[String]) -> (usize, u64) {
        let all = self.served();
        let mut n = 0;
        let mut bytes = 0;
        for s in all.iter().skip(mark) {
            if s.method != "GET" || !digests.iter().any(|d| s.uri.ends_with(d.as_str())) {
                continue;
            }
            assert_eq!(s.status, 206, "blob GET not answered by Range: {s:?}");
            n += 1;
            bytes += s.bytes;
        }
        (n, bytes)
    }

    /// Number of requests whose URI contains `path_substring`.
    pub fn request_count(&self, path_substring: &str) -> usize {
        self.requests()
            .iter()
            .filter(|(_, uri, _)| uri.contains(path_substring))
            .count()
    }

    /// Number of `method` requests whose URI contains `path_substring` (e.g. blob GETs only,
    /// leaving out the HEADs a push makes).
    pub fn request_count_by(&self, method: &str, path_substring: &str) -> usize {
        self.requests()
            .iter()
            .filter(|(m, uri, _)| m == method && uri.contains(path_substring))
            .count()
    }

    /// An `Authorization` header value good for `scope` (e.g. `repository:foo:pull`), or
    /// `None` for an anonymous registry. Token registries mint directly (no HTTP).
    pub fn auth_header(&self, scope: &str) -> Option<String> {
        match &self.auth {
            RegistryAuth::Anonymous => None,
            RegistryAuth::Basic { user, pass } => Some(http::basic_auth(user, pass)),
            RegistryAuth::Token { user, .. } => {
                let ts = self.token.as_ref().expect("token server");
                Some(format!("Bearer {}", ts.mint(user, &[scope])))
            }
        }
    }

    /// GET a manifest (any of the usual media types accepted), authenticating as needed.
    pub fn get_manifest(&self, repo: &str, reference: &str) -> http::Response {
        let auth = self.auth_header(&format!("repository:{repo}:pull"));
        let mut headers = vec![("Accept", MANIFEST_ACCEPT)];
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        http::request(
            &self.host(),
            "GET",
            &format!("/v2/{repo}/manifests/{reference}"),
            &headers,
            &[],
        )
        .expect("GET manifest")
    }

    /// GET a blob's bytes, authenticating as needed.
    pub fn get_blob(&self, repo: &str, digest: &str) -> http::Response {
        let auth = self.auth_header(&format!("repository:{repo}:pull"));
        let mut headers = vec![];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        http::request(
            &self.host(),
            "GET",
            &format!("/v2/{repo}/blobs/{digest}"),
            &headers,
            &[],
        )
        .expect("GET blob")
    }
}

/// Accept header covering Docker schema2 and OCI manifests and indexes.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `GET /v2/` until any HTTP answer (200 or 401; for a TLS registry the 400 Go's TLS
/// server gives a plain-HTTP request), the process exits, or the deadline.
/// On failure returns the process log.
fn wait_ready(
    port: u16,
    child: &mut Child,
    dir: &Path,
    timeout: Duration,
    tls: bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let addr = format!("127.0.0.1:{port}");
    let log = || fs::read_to_string(dir.join("registry.log")).unwrap_or_default();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}\n{}", log()));
        }
        if let Ok(resp) = http::get(&addr, "/v2/") {
            if resp.status == 200 || resp.status == 401 || (tls && resp.status == 400) {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("no answer on {addr} within {timeout:?}\n{}", log()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Value of `key` (which ends in '=') in a logrus text line, unquoted.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(key)? + key.len();
    let rest = &line[start..];
    if let Some(q) = rest.strip_prefix('"') {
        return q.split('"').next();
    }
    rest.split(' ').next()
}

/// One answered request of the access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    pub method: String,
    pub uri: String,
    pub status: u16,
    /// Body bytes sent (Apache's `%b`; `-` counts as 0).
    pub bytes: u64,
}

/// `127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 206 100 "" "ua"` -> GET, /v2/, 206, 100 bytes.
fn parse_served_line(line: &str) -> Option<Served> {
    let (method, uri, status) = parse_access_line(line)?;
    let q1 = line.find('"')?;
    let q2 = q1 + 1 + line[q1 + 1..].find('"')?;
    let bytes = line[q2 + 1..].split_whitespace().nth(1)?;
    Some(Served {
        method,
        uri,
        status,
        bytes: bytes.parse().unwrap_or(0),
    })
}

/// `127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 200 2 "" "ua"` -> (GET, /v2/, 200).
fn parse_access_line(line: &str) -> Option<(String, String, u16)> {
    let q1 = line.find('"')?;
    let rest = &line[q1 + 1..];
    let q2 = rest.find('"')?;
    let mut req = rest[..q2].split(' ');
    let method = req.next()?.to_string();
    let uri = req.next()?.to_string();
    let status = rest[q2 + 1..].split_whitespace().next()?.parse().ok()?;
    Some((method, uri, status))
}
