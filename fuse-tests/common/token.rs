//! In-process bearer-token issuer for `Registry::with_token_auth` (the docker "token
//! authentication specification"): `GET /token?service=..&scope=..&account=..` with optional
//! basic auth (and `offline_token=true`: a refresh token in the answer, when configured), and
//! the OAuth2 `POST /token` password and refresh-token grants. Tokens are ES256 JWTs whose
//! `x5c` header carries a self-signed certificate that the registry trusts through its
//! `rootcertbundle`. Runs on its own thread on 127.0.0.1:ephemeral; stops on Drop.

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::DecodePrivateKey as _;
use serde_json::json;

use super::http::{self, Head};

/// Who may get tokens and for how long.
#[derive(Clone, Debug)]
pub struct TokenOptions {
    pub user: String,
    pub pass: String,
    /// Requests without credentials get `pull` only (when true) or 401 (when false).
    pub allow_anonymous: bool,
    /// `expires_in` and `exp - iat`, seconds.
    pub expires_in: u64,
    /// The registry's `auth.token.service` (the JWT `aud`).
    pub service: String,
    /// The registry's `auth.token.issuer` (the JWT `iss`).
    pub issuer: String,
    /// Seconds taken off the JWT `exp` to cancel the verifier's clock-skew leeway
    /// (distribution accepts a token until `exp + 60 s`): with 60 the registry refuses a token
    /// `expires_in` seconds after it was issued. 0: `exp = iat + expires_in`.
    pub registry_leeway: u64,
    /// Hand out this refresh token (identity token) to `offline_token=true` requests with
    /// good credentials, and accept it in the OAuth2 `refresh_token` grant.
    pub refresh_token: Option<String>,
}

impl Default for TokenOptions {
    fn default() -> Self {
        TokenOptions {
            user: "strata".into(),
            pass: "token-s3cret".into(),
            allow_anonymous: false,
            expires_in: 300,
            service: "strata-test-registry".into(),
            issuer: "strata-test-issuer".into(),
            registry_leeway: 0,
            refresh_token: None,
        }
    }
}

/// One request the issuer saw.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub method: String,
    /// Account from basic auth / form, `None` for anonymous.
    pub account: Option<String>,
    /// Raw `scope` values as requested.
    pub scopes: Vec<String>,
    /// HTTP status the issuer answered (200 or 401).
    pub status: u16,
    /// The POST form's `grant_type` (`password`, `refresh_token`), `None` for a GET.
    pub grant: Option<String>,
    /// Whether a refresh token was handed out.
    pub gave_refresh_token: bool,
}

struct Shared {
    opts: TokenOptions,
    key: SigningKey,
    cert_der: Vec<u8>,
    log: Mutex<Vec<TokenRequest>>,
    next_jti: AtomicU64,
}

/// The running issuer.
pub struct TokenServer {
    port: u16,
    cert_pem: String,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TokenServer {
    /// Generate a P-256 key and self-signed certificate, bind 127.0.0.1:0 and serve.
    pub fn start(opts: TokenOptions) -> TokenServer {
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("generate P-256 key");
        let mut params =
            rcgen::CertificateParams::new(vec![opts.issuer.clone()]).expect("cert params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, opts.issuer.clone());
        let cert = params.self_signed(&key_pair).expect("self-sign cert");
        let key = SigningKey::from_pkcs8_der(&key_pair.serialize_der()).expect("pkcs8 -> p256");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token issuer");
        let port = listener.local_addr().expect("local_addr").port();
        let shared = Arc::new(Shared {
            opts,
            key,
            cert_der: cert.der().to_vec(),
            log: Mutex::new(Vec::new()),
            next_jti: AtomicU64::new(1),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let shared = shared.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("token-issuer".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(conn) = conn else { continue };
                        let shared = shared.clone();
                        std::thread::spawn(move || {
                            let _ = serve(conn, &shared);
                        });
                    }
                })
                .expect("spawn token issuer")
        };
        TokenServer {
            port,
            cert_pem: cert.pem(),
            shared,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT/token`: the registry's `auth.token.realm`.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// "127.0.0.1:PORT".
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// PEM of the signing certificate (the registry's root bundle).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn options(&self) -> &TokenOptions {
        &self.shared.opts
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Number of tokens handed out (200 answers).
    pub fn issued(&self) -> usize {
        self.requests().iter().filter(|r| r.status == 200).count()
    }

    /// Mint a token directly (no HTTP), granting exactly `scopes` to `subject`.
    pub fn mint(&self, subject: &str, scopes: &[&str]) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        mint(&self.shared, subject, &grants(&scopes, true))
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: TcpStream, shared: &Shared) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let Some(head) = http::read_head(&mut reader)? else {
        return Ok(());
    };
    let body = http::read_body(&mut reader, http::request_framing(&head))?;
    let (path, query) = head.path().split_once('?').unwrap_or((head.path(), ""));
    let mut conn = conn;
    if path != "/token" {
        return respond(&mut conn, 404, &[], b"not found\n");
    }
    let mut params = http::parse_query(query);
    let mut creds = parse_basic(&head);
    let mut grant = None;
    let opts = &shared.opts;
    if head.method() == "POST" {
        let form = http::parse_query(&String::from_utf8_lossy(&body));
        let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        grant = field("grant_type");
        match grant.as_deref() {
            Some("password") => {
                creds = Some((
                    field("username").unwrap_or_default(),
                    field("password").unwrap_or_default(),
                ));
            }
            Some("refresh_token") => {
                let good =
                    opts.refresh_token.is_some() && field("refresh_token") == opts.refresh_token;
                // A good refresh token stands for the user; a bad one is refused.
                creds = Some(if good {
                    (opts.user.clone(), opts.pass.clone())
                } else {
                    ("<refresh-token>".into(), String::new())
                });
            }
            _ => {}
        }
        params.extend(form);
    }
    let offline = params
        .iter()
        .any(|(k, v)| k == "offline_token" && v == "true");
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    let (status, account) = match &creds {
        Some((u, p)) if *u == opts.user && *p == opts.pass => (200, Some(u.clone())),
        Some((u, _)) => (401, Some(u.clone())),
        None if opts.allow_anonymous => (200, None),
        None => (401, None),
    };
    let refresh = (status == 200 && offline && head.method() == "GET")
        .then(|| opts.refresh_token.clone())
        .flatten();
    shared.log.lock().unwrap().push(TokenRequest {
        method: head.method().to_string(),
        account: account.clone(),
        scopes: scopes.clone(),
        status,
        grant: grant.clone(),
        gave_refresh_token: refresh.is_some(),
    });
    if status != 200 {
        let body = json!({"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]});
        return respond(
            &mut conn,
            401,
            &[
                ("Content-Type", "application/json"),
                ("WWW-Authenticate", "Basic realm=\"strata-token-issuer\""),
            ],
            body.to_string().as_bytes(),
        );
    }
    let token = mint(
        shared,
        account.as_deref().unwrap_or(""),
        &grants(&scopes, account.is_some()),
    );
    let mut body = json!({
        "token": token,
        "access_token": token,
        "expires_in": opts.expires_in,
        "issued_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    if let Some(r) = refresh {
        body["refresh_token"] = json!(r);
    }
    respond(
        &mut conn,
        200,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn respond(
    conn: &mut TcpStream,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        _ => "Not Found",
    };
    let mut head = Head {
        start: format!("HTTP/1.1 {status} {reason}"),
        headers: Vec::new(),
    };
    for (k, v) in headers {
        head.set(k, v);
    }
    head.set("Content-Length", &body.len().to_string());
    head.set("Connection", "close");
    conn.write_all(&head.to_bytes())?;
    conn.write_all(body)?;
    conn.flush()
}

fn parse_basic(head: &Head) -> Option<(String, String)> {
    let v = head.get("authorization")?;
    let b64 = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// `access` claim entries for the requested scopes: `type:name:actions`. Authenticated
/// users get what they ask for; anonymous users get `pull` only.
fn grants(scopes: &[String], authenticated: bool) -> Vec<serde_json::Value> {
    scopes
        .iter()
        .filter_map(|scope| {
            let (typ, rest) = scope.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            let actions: Vec<&str> = actions
                .split(',')
                .filter(|a| !a.is_empty())
                .filter(|a| authenticated || *a == "pull")
                .collect();
            Some(json!({"type": typ, "name": name, "actions": actions}))
        })
        .collect()
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn mint(shared: &Shared, subject: &str, access: &[serde_json::Value]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let header = json!({
        "typ": "JWT",
        "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(&shared.cert_der)],
    });
    let jti = shared.next_jti.fetch_add(1, Ordering::SeqCst);
    let claims = json!({
        "iss": shared.opts.issuer,
        "sub": subject,
        "aud": shared.opts.service,
        "exp": (now + shared.opts.expires_in).saturating_sub(shared.opts.registry_leeway),
        "nbf": now.saturating_sub(1),
        "iat": now,
        "jti": format!("strata-test-{jti}"),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig: Signature = shared.key.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", b64url(&sig.to_bytes()))
}
