//! `FaultProxy`: an HTTP/1.1 proxy on 127.0.0.1:ephemeral in front of a registry that
//! forwards requests unchanged (Host kept, so registry `Location`s point back at the proxy)
//! and injects faults chosen at run time. Every exchange is `Connection: close` both ways
//! and bodies are buffered whole, which is plenty for test fixtures.
//!
//! Faults are rules: a fault, an optional path filter and an optional budget ("the next N
//! eligible requests"). The first rule that fits a request is used. `FlipByte` and
//! `Truncate` fit only blob downloads (`GET .../blobs/sha256:...`) and are spent only on a
//! 2xx answer with a body, so an auth round trip does not use them up.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::http::{self, Framing, Head};

/// What to do to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward untouched.
    Pass,
    /// Close the client connection without reading or answering.
    Refuse,
    /// Answer with this status (and `Retry-After` seconds, if given) without forwarding.
    Status { code: u16, retry_after: Option<u32> },
    /// Flip one byte in the middle of a blob body.
    FlipByte,
    /// Send the full `Content-Length` but only the first half of a blob body, then close.
    Truncate,
    /// Wait this long before forwarding.
    Delay(Duration),
    /// Drop the request's `Range` header (the registry then answers 200, not 206).
    IgnoreRange,
    /// Move the first and last byte of a `Range: bytes=A-B` request by these amounts before
    /// forwarding, and pass the registry's honest 206 on: the client gets other bytes than it
    /// asked for, with a `Content-Range` that says so. Requests without a Range pass.
    MoveRange { start: i64, end: i64 },
    /// Answer `200` with this body without forwarding (a manifest no registry would accept,
    /// say); `HEAD` gets the headers only.
    Serve(Canned),
}

/// A canned answer for [`Fault::Serve`]: `Content-Type` and body; `Docker-Content-Digest`
/// is the body's sha256. Debug-prints the body's length only.
#[derive(Clone, PartialEq, Eq)]
pub struct Canned {
    pub content_type: String,
    pub body: Arc<Vec<u8>>,
}

impl std::fmt::Debug for Canned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Canned({}, {} bytes)",
            self.content_type,
            self.body.len()
        )
    }
}

impl Fault {
    /// `Status(code)` without `Retry-After`.
    pub fn status(code: u16) -> Fault {
        Fault::Status {
            code,
            retry_after: None,
        }
    }

    /// `429 Too Many Requests` with `Retry-After: 1`.
    pub fn too_many_requests() -> Fault {
        Fault::Status {
            code: 429,
            retry_after: Some(1),
        }
    }

    /// `Serve` with this content type and body.
    pub fn serve(content_type: &str, body: Vec<u8>) -> Fault {
        Fault::Serve(Canned {
            content_type: content_type.to_string(),
            body: Arc::new(body),
        })
    }

    fn body_fault(&self) -> bool {
        matches!(self, Fault::FlipByte | Fault::Truncate)
    }
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct ProxyRequest {
    pub method: String,
    pub path: String,
    /// Status sent to the client (0 when refused or the upstream failed).
    pub status: u16,
    /// The fault applied (`Pass` when none).
    pub fault: Fault,
    /// The request's `Range` header, if any.
    pub range: Option<String>,
    /// Every request header as received (name, value), in order.
    pub headers: Vec<(String, String)>,
}

impl ProxyRequest {
    /// Values of header `name` (case-insensitive).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Debug)]
struct Rule {
    id: u64,
    fault: Fault,
    path_contains: Option<String>,
    remaining: Option<usize>,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    next_id: u64,
    log: Vec<ProxyRequest>,
    counts: HashMap<String, usize>,
    /// Request paths starting with `.0` are forwarded with `.1` in its place.
    rewrite: Option<(String, String)>,
    /// Request paths containing `.0` are forwarded with (its first occurrence) replaced by
    /// `.1`: the first that fits is used.
    substitutions: Vec<(String, String)>,
}

impl State {
    /// First rule fitting this request: (id, fault).
    fn pick(&mut self, method: &str, path: &str) -> (u64, Fault) {
        let is_blob_get =
            (method == "GET") && path.contains("/blobs/") && !path.contains("/blobs/uploads");
        let found = self.rules.iter_mut().find(|r| {
            r.remaining != Some(0)
                && r.path_contains.as_deref().is_none_or(|p| path.contains(p))
                && (!r.fault.body_fault() || is_blob_get)
        });
        match found {
            Some(rule) => {
                if !rule.fault.body_fault() {
                    if let Some(n) = rule.remaining.as_mut() {
                        *n -= 1;
                    }
                }
                (rule.id, rule.fault.clone())
            }
            None => (0, Fault::Pass),
        }
    }

    fn spend(&mut self, id: u64) {
        if let Some(rule) = self.rules.iter_mut().find(|r| r.id == id) {
            if let Some(n) = rule.remaining.as_mut() {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// Cheap cloneable handle to change faults and read counters from anywhere.
#[derive(Clone)]
pub struct FaultHandle {
    state: Arc<Mutex<State>>,
}

impl FaultHandle {
    fn add(&self, fault: Fault, path_contains: Option<&str>, remaining: Option<usize>) {
        let mut st = self.state.lock().unwrap();
        st.next_id += 1;
        let id = st.next_id;
        st.rules.push(Rule {
            id,
            fault,
            path_contains: path_contains.map(str::to_string),
            remaining,
        });
    }

    /// Replace all rules: apply `fault` to every request until changed (`Pass` clears).
    pub fn set(&self, fault: Fault) {
        self.clear();
        if fault != Fault::Pass {
            self.add(fault, None, None);
        }
    }

    /// Apply `fault` to the next `n` eligible requests, then pass (queued after other rules).
    pub fn next(&self, n: usize, fault: Fault) {
        self.add(fault, None, Some(n));
    }

    /// Apply `fault` to requests whose path contains `path_contains`, `n` times or forever.
    pub fn on_path(&self, path_contains: &str, n: Option<usize>, fault: Fault) {
        self.add(fault, Some(path_contains), n);
    }

    /// Forward request paths that start with `from` with `to` in its place (a registry
    /// served under another API root, as hosts.toml `override_path` is for). Logged paths
    /// are the ones the client sent.
    pub fn rewrite_prefix(&self, from: &str, to: &str) {
        self.state.lock().unwrap().rewrite = Some((from.to_string(), to.to_string()));
    }

    /// Forward requests whose path contains `from` with `from` replaced by `to` (a malicious
    /// mirror answering a request for one blob, manifest or tag with another's, e.g. altered
    /// layer bytes pushed under their own digest, or a forged referrers index from another
    /// repository). The registry's answer passes unchanged, except that a
    /// `Docker-Content-Digest` header is dropped (it would name what was really served).
    /// Logged paths are the ones the client sent.
    pub fn substitute(&self, from: &str, to: &str) {
        self.state
            .lock()
            .unwrap()
            .substitutions
            .push((from.to_string(), to.to_string()));
    }

    /// Remove all rules.
    pub fn clear(&self) {
        self.state.lock().unwrap().rules.clear();
    }

    /// Requests whose path (with query) contains `path_substring`.
    pub fn request_count(&self, path_substring: &str) -> usize {
        let st = self.state.lock().unwrap();
        st.counts
            .iter()
            .filter(|(p, _)| p.contains(path_substring))
            .map(|(_, n)| *n)
            .sum()
    }

    /// Requests per path so far.
    pub fn counts(&self) -> HashMap<String, usize> {
        self.state.lock().unwrap().counts.clone()
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<ProxyRequest> {
        self.state.lock().unwrap().log.clone()
    }

    /// Every byte of the blobs named by `digests` went through the proxy at most once: all
    /// their requests carry a `Range: bytes=A-B`, and sorted per blob they never overlap
    /// beyond the one byte neighbouring gzip spans share (ranges are inclusive; a checkpoint
    /// falls on a bit position inside a byte). Panics, naming the blob, otherwise, and when
    /// no such request was seen at all.
    pub fn assert_ranges_fetched_once(&self, digests: &[String]) {
        let mut ranges: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
        let requests = self.requests();
        for r in &requests {
            let Some(d) = digests.iter().find(|d| r.path.ends_with(d.as_str())) else {
                continue;
            };
            let spec = r
                .range
                .as_deref()
                .expect("layer blobs are fetched by Range");
            let (a, b) = spec
                .trim_start_matches("bytes=")
                .split_once('-')
                .expect("bytes=A-B");
            ranges
                .entry(d)
                .or_default()
                .push((a.parse().unwrap(), b.parse().unwrap()));
        }
        assert!(!ranges.is_empty(), "no Range request reached the proxy");
        for (d, rs) in &mut ranges {
            rs.sort();
            for w in rs.windows(2) {
                assert!(
                    w[0].1 <= w[1].0,
                    "{d}: bytes {:?} and {:?} were fetched twice",
                    w[0],
                    w[1]
                );
            }
        }
    }

    /// How many requests had a fault other than `Pass` applied.
    pub fn faults_applied(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.fault != Fault::Pass)
            .count()
    }
}

/// The running proxy; stops on Drop.
pub struct FaultProxy {
    port: u16,
    handle: FaultHandle,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::ops::Deref for FaultProxy {
    type Target = FaultHandle;
    fn deref(&self) -> &FaultHandle {
        &self.handle
    }
}

impl FaultProxy {
    /// Proxy to `upstream` ("127.0.0.1:PORT").
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fault proxy");
        let port = listener.local_addr().expect("local_addr").port();
        let handle = FaultHandle {
            state: Arc::new(Mutex::new(State::default())),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_string();
        let thread = {
            let handle = handle.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("fault-proxy".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(conn) = conn else { continue };
                        let handle = handle.clone();
                        let upstream = upstream.clone();
                        std::thread::spawn(move || serve(conn, &upstream, &handle));
                    }
                })
                .expect("spawn fault proxy")
        };
        FaultProxy {
            port,
            handle,
            stop,
            thread: Some(thread),
        }
    }

    /// Proxy in front of `registry`.
    pub fn in_front_of(registry: &super::Registry) -> FaultProxy {
        Self::start(&registry.host())
    }

    /// A handle that can outlive borrows of the proxy (e.g. moved into a thread).
    pub fn handle(&self) -> FaultHandle {
        self.handle.clone()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        206 => "Partial Content",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Injected",
    }
}

fn serve(client: TcpStream, upstream: &str, handle: &FaultHandle) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(read_half) = client.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let Ok(Some(mut req)) = http::read_head(&mut reader) else {
        return;
    };
    let method = req.method().to_string();
    let path = req.path().to_string();
    let range = req.get("Range").map(str::to_string);
    let headers = req.headers.clone();
    let mut substituted = false;
    let (rule_id, fault) = {
        let mut st = handle.state.lock().unwrap();
        *st.counts.entry(path.clone()).or_default() += 1;
        let version = req
            .start
            .rsplit(' ')
            .next()
            .unwrap_or("HTTP/1.1")
            .to_string();
        if let Some((from, to)) = st
            .substitutions
            .iter()
            .find(|(f, _)| path.contains(f.as_str()))
        {
            req.start = format!("{method} {} {version}", path.replacen(from.as_str(), to, 1));
            substituted = true;
        }
        if let Some((from, to)) = st.rewrite.as_ref().filter(|_| !substituted) {
            if let Some(rest) = path.strip_prefix(from.as_str()) {
                let version = req
                    .start
                    .rsplit(' ')
                    .next()
                    .unwrap_or("HTTP/1.1")
                    .to_string();
                req.start = format!("{method} {to}{rest} {version}");
            }
        }
        st.pick(&method, &path)
    };
    let mut client = client;
    let record = |status: u16, fault: Fault| {
        handle.state.lock().unwrap().log.push(ProxyRequest {
            method: method.clone(),
            path: path.clone(),
            status,
            fault,
            range: range.clone(),
            headers: headers.clone(),
        });
    };
    match &fault {
        Fault::Refuse => {
            record(0, fault.clone());
            let _ = client.shutdown(std::net::Shutdown::Both);
            return;
        }
        Fault::Status { code, retry_after } => {
            let body = format!(
                "{{\"errors\":[{{\"code\":\"UNAVAILABLE\",\"message\":\"injected {code}\"}}]}}"
            );
            let mut head = Head {
                start: format!("HTTP/1.1 {code} {}", reason(*code)),
                headers: vec![],
            };
            head.set("Content-Type", "application/json");
            head.set("Content-Length", &body.len().to_string());
            head.set("Connection", "close");
            if let Some(s) = retry_after {
                head.set("Retry-After", &s.to_string());
            }
            // Log before answering: a client that has its answer sees it counted.
            record(*code, fault.clone());
            let _ = client.write_all(&head.to_bytes());
            if method != "HEAD" {
                let _ = client.write_all(body.as_bytes());
            }
            return;
        }
        Fault::Serve(c) => {
            let mut head = Head {
                start: "HTTP/1.1 200 OK".to_string(),
                headers: vec![],
            };
            head.set("Content-Type", &c.content_type);
            head.set("Content-Length", &c.body.len().to_string());
            head.set("Docker-Content-Digest", &super::sha256_digest(&c.body));
            head.set("Docker-Distribution-Api-Version", "registry/2.0");
            head.set("Connection", "close");
            record(200, fault.clone());
            let _ = client.write_all(&head.to_bytes());
            if method != "HEAD" {
                let _ = client.write_all(&c.body);
            }
            let _ = client.flush();
            let _ = client.shutdown(std::net::Shutdown::Both);
            return;
        }
        Fault::Delay(d) => std::thread::sleep(*d),
        Fault::IgnoreRange => req.remove("range"),
        Fault::MoveRange { start, end } => {
            let moved = req.get("range").and_then(|v| {
                let (a, b) = v.trim().strip_prefix("bytes=")?.split_once('-')?;
                let a = a.parse::<i64>().ok()?.saturating_add(*start).max(0);
                let b = b.parse::<i64>().ok()?.saturating_add(*end).max(a);
                Some(format!("bytes={a}-{b}"))
            });
            if let Some(r) = moved {
                req.set("Range", &r);
            }
        }
        _ => {}
    }
    // Request body: read whole, forward with Content-Length.
    if req
        .get("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        req.remove("expect");
        let _ = client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let body = match http::read_body(&mut reader, http::request_framing(&req)) {
        Ok(b) => b,
        Err(_) => {
            record(0, fault);
            return;
        }
    };
    req.remove("transfer-encoding");
    req.remove("keep-alive");
    req.remove("proxy-connection");
    req.set("Connection", "close");
    if !body.is_empty() || req.get("content-length").is_some() {
        req.set("Content-Length", &body.len().to_string());
    }
    let upstream_result = (|| -> std::io::Result<(Head, Vec<u8>)> {
        let mut up = TcpStream::connect(upstream)?;
        up.set_read_timeout(Some(Duration::from_secs(30)))?;
        up.write_all(&req.to_bytes())?;
        up.write_all(&body)?;
        let mut up_reader = BufReader::new(up);
        let head = http::read_head(&mut up_reader)?.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "upstream closed")
        })?;
        let framing = http::response_framing(&method, &head);
        let body = http::read_body(&mut up_reader, framing)?;
        Ok((head, body))
    })();
    let (mut resp, mut resp_body) = match upstream_result {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("fault proxy: upstream {upstream}: {e}\n");
            let head = format!(
                "HTTP/1.1 502 Bad Gateway\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                msg.len()
            );
            record(502, fault);
            let _ = client.write_all(head.as_bytes());
            let _ = client.write_all(msg.as_bytes());
            return;
        }
    };
    let status = resp.status();
    let has_body = http::response_framing(&method, &resp) != Framing::None;
    let mut applied = fault.clone();
    let mut truncate = false;
    if fault.body_fault() {
        if (200..300).contains(&status) && has_body && !resp_body.is_empty() {
            handle.state.lock().unwrap().spend(rule_id);
            match fault {
                Fault::FlipByte => {
                    let mid = resp_body.len() / 2;
                    resp_body[mid] ^= 0xff;
                }
                Fault::Truncate => truncate = true,
                _ => {}
            }
        } else {
            applied = Fault::Pass;
        }
    }
    resp.remove("transfer-encoding");
    resp.remove("keep-alive");
    if substituted {
        resp.remove("docker-content-digest");
    }
    resp.set("Connection", "close");
    if has_body {
        resp.set("Content-Length", &resp_body.len().to_string());
    }
    record(status, applied);
    let _ = client.write_all(&resp.to_bytes());
    let send = if truncate {
        &resp_body[..resp_body.len() / 2]
    } else {
        &resp_body[..]
    };
    let _ = client.write_all(send);
    let _ = client.flush();
    let _ = client.shutdown(std::net::Shutdown::Both);
}
