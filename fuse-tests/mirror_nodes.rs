//! Many nodes, one upstream: three nodes (network namespaces this test creates, each its own
//! strata root and daemon) lazily read the same files at once through Debian's nginx running
//! contrib/nginx/strata-mirror.conf in a hub namespace, in front of a real docker-registry.
//! The registry's own log is the oracle: every slice the nodes touched crossed the upstream
//! link exactly once (the nodes' requests, from nginx's access log, give the slices; the
//! sidecar's windows, asked as small pieces, by 16 KiB slices), while
//! nginx served the bytes to every node. A registry that redirects blob GETs to object
//! storage (distribution's `redirect` middleware, nginx as the storage) is mirrored too.
//!
//! Topology: hub namespace (registry on its 127.0.0.1:5001 behind a shaped link on :5003
//! (scripts/lib/shaper.py), nginx on 0.0.0.0:5000, a static
//! "storage" server on its 127.0.0.1:5002), node k joined to it by a veth pair created inside
//! the two namespaces (hub 10.78.k.1/24, node 10.78.k.2/24). Nodes name the image by an
//! upstream host that does not resolve, so every byte must come through the mirror.

mod common;
use common::testdata::pseudo;

use common::{ImageBuilder, Layer, OutputExt, Registry, StrataEnv};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NODES: usize = 3;
const SLICE: u64 = 64 << 10;
/// The slice of strata's small pieces in contrib/nginx/strata-mirror.conf.
const SMALL_SLICE: u64 = 16 << 10;
const UPSTREAM: &str = "upstream.invalid:5000";
const FILES: usize = 6;
const FILE_LEN: usize = 1 << 20;

fn file(i: usize) -> Vec<u8> {
    pseudo(FILE_LEN, 200 + i as u64)
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

/// A network namespace made by this test, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("stm{}-{n}-{tag}", std::process::id());
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns(name);
        run_ok(Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"]));
        ns
    }

    /// `prog` to run inside this namespace's network (and nothing else: same mounts).
    fn command(&self, prog: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.0))
            .arg("--")
            .arg(prog);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A child process killed on drop (and with the test thread, through PDEATHSIG).
struct Proc(Child);

impl Proc {
    fn spawn(mut cmd: Command, log: &Path) -> Proc {
        let f = std::fs::File::create(log).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f);
        // SAFETY: prctl is async-signal-safe; nothing is allocated between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        Proc(cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}")))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; SIGTERM lets nginx remove its socket.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Poll `url` from inside `ns` until it answers (the part behind it is ready).
fn wait_http(ns: &Netns, url: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let ok = ns
            .command("curl")
            .args(["-fs", "-o", "/dev/null", url])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{url} did not answer; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// The hub: the upstream registry (on `storage`, optionally redirecting blob GETs to the
/// static storage server) and nginx with the contrib mirror config.
struct Hub {
    // Dropped in this order: processes first, then the namespaces, then their files.
    _procs: Vec<Proc>,
    nodes: Vec<Netns>,
    _ns: Netns,
    dir: tempfile::TempDir,
}

impl Hub {
    fn start(storage: &Path, redirect: bool, nodes: usize) -> Hub {
        let dir = tempfile::Builder::new()
            .prefix("strata-mirror-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let ns = Netns::new("hub");
        let mut node_ns = Vec::new();
        for k in 1..=nodes {
            let n = Netns::new(&format!("n{k}"));
            run_ok(Command::new("ip").args([
                "link",
                "add",
                &format!("h{k}"),
                "netns",
                &ns.0,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &n.0,
            ]));
            run_ok(Command::new("ip").args([
                "-n",
                &ns.0,
                "addr",
                "add",
                &format!("10.78.{k}.1/24"),
                "dev",
                &format!("h{k}"),
            ]));
            run_ok(Command::new("ip").args([
                "-n",
                &n.0,
                "addr",
                "add",
                &format!("10.78.{k}.2/24"),
                "dev",
                "eth0",
            ]));
            run_ok(Command::new("ip").args(["-n", &ns.0, "link", "set", &format!("h{k}"), "up"]));
            run_ok(Command::new("ip").args(["-n", &n.0, "link", "set", "eth0", "up"]));
            node_ns.push(n);
        }
        let middleware = if redirect {
            "middleware:\n  storage:\n    - name: redirect\n      options:\n        baseurl: http://127.0.0.1:5002/\n"
        } else {
            ""
        };
        let cfg = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:5001\n{middleware}",
            storage.display()
        );
        std::fs::write(d.join("registry.yml"), cfg).unwrap();
        let mut procs = Vec::new();
        let mut reg = ns.command("docker-registry");
        reg.arg("serve").arg(d.join("registry.yml"));
        procs.push(Proc::spawn(reg, &d.join("registry.log")));
        wait_http(&ns, "http://127.0.0.1:5001/v2/", &d.join("registry.log"));
        // The mirror's link to the registry is slow (scripts/lib/shaper.py: 100 Mbit/s,
        // 10 ms each way), so the nodes' misses of one slice do overlap.
        let mut shaper = ns.command("python3");
        shaper
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lib/shaper.py"))
            .args([
                "--target",
                "127.0.0.1:5001",
                "--rate-mbit",
                "100",
                "--delay-ms",
                "10",
            ])
            .args(["--port", "5003", "--port-file"])
            .arg(d.join("shaper.port"));
        procs.push(Proc::spawn(shaper, &d.join("shaper.log")));
        wait_http(&ns, "http://127.0.0.1:5003/v2/", &d.join("shaper.log"));

        let conf = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/nginx/strata-mirror.conf"),
        )
        .unwrap()
        .replace("@LISTEN@", "0.0.0.0:5000")
        .replace("@UPSTREAM@", "127.0.0.1:5003")
        .replace("@SCHEME@", "http")
        .replace("@CACHE@", &d.join("cache").display().to_string())
        .replace("@SLICE@", &format!("{}k", SLICE >> 10))
        .replace("@MAXSIZE@", "1g");
        let left: Vec<&str> = [
            "@LISTEN@",
            "@UPSTREAM@",
            "@SCHEME@",
            "@CACHE@",
            "@SLICE@",
            "@MAXSIZE@",
        ]
        .into_iter()
        .filter(|p| conf.contains(p))
        .collect();
        assert!(left.is_empty(), "placeholders left in the config: {left:?}");
        std::fs::write(d.join("mirror.conf"), conf).unwrap();
        let storage_server = if redirect {
            format!(
                "  server {{ listen 127.0.0.1:5002; access_log {}/storage.log strata; root {}; }}\n",
                d.display(),
                storage.display()
            )
        } else {
            String::new()
        };
        let main = format!(
            "daemon off;\nuser root;\nworker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  log_format strata '$remote_addr $request_method $uri \"$http_range\" $status $body_bytes_sent $upstream_cache_status $http_x_strata_piece';\n  \
             access_log {d}/access.log strata;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             include {d}/mirror.conf;\n{storage_server}}}\n",
            d = d.display()
        );
        std::fs::write(d.join("nginx.conf"), main).unwrap();
        let mut nginx = ns.command("nginx");
        nginx.arg("-c").arg(d.join("nginx.conf")).arg("-p").arg(d);
        procs.push(Proc::spawn(nginx, &d.join("nginx.out")));
        let probe = node_ns.first().unwrap_or(&ns);
        let url = if node_ns.is_empty() {
            "http://127.0.0.1:5000/v2/".to_string()
        } else {
            "http://10.78.1.1:5000/v2/".to_string()
        };
        wait_http(probe, &url, &d.join("error.log"));
        Hub {
            _procs: procs,
            nodes: node_ns,
            _ns: ns,
            dir,
        }
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// (digest, bytes written) of each blob GET the registry answered.
    fn upstream_blob_gets(&self) -> Vec<(String, u64)> {
        let log = self.read("registry.log");
        log.lines()
            .filter(|l| l.contains("response completed") && l.contains("http.request.method=GET"))
            .filter_map(|l| {
                let uri = field(l, "http.request.uri=")?;
                let digest = uri.split("/blobs/").nth(1)?.to_string();
                let n = field(l, "http.response.written=")?.parse().ok()?;
                Some((digest, n))
            })
            .collect()
    }
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = &line[line.find(key)? + key.len()..];
    let rest = rest.strip_prefix('"').unwrap_or(rest);
    Some(rest.split(['"', ' ']).next().unwrap_or(""))
}

/// nginx access log lines for blobs: (client, digest, range as asked, bytes sent, marked as
/// a small piece: cached by 16 KiB slices).
type Asked = (String, String, Option<(u64, u64)>, u64, bool);

fn mirror_blob_requests(log: &str) -> Vec<Asked> {
    log.lines()
        .filter_map(|l| {
            let mut it = l.split(' ');
            let (client, method, uri, range, _status, sent, _cache) = (
                it.next()?,
                it.next()?,
                it.next()?,
                it.next()?,
                it.next()?,
                it.next()?,
                it.next()?,
            );
            let small = it.next() == Some("small");
            if method != "GET" {
                return None;
            }
            let digest = uri.split("/blobs/").nth(1)?.to_string();
            let range = range
                .trim_matches('"')
                .strip_prefix("bytes=")
                .and_then(|r| r.split_once('-'))
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
            Some((client.to_string(), digest, range, sent.parse().ok()?, small))
        })
        .collect()
}

fn blob_size(storage: &Path, digest: &str) -> u64 {
    let hex = digest.trim_start_matches("sha256:");
    std::fs::metadata(
        storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data"),
    )
    .unwrap_or_else(|e| panic!("blob {digest} in storage: {e}"))
    .len()
}

/// The image: one layer of `FILES` incompressible 1 MiB files, its sidecar index published.
fn publish(reg: &Registry) {
    let mut l = Layer::new().dir("data");
    for i in 0..FILES {
        l = l.file(&format!("data/f{i}"), file(i));
    }
    ImageBuilder::new()
        .layer(l)
        .build("v1")
        .push(reg, "fleet/app:v1");
    StrataEnv::new()
        .run(&["index", &format!("{}/fleet/app:v1", reg.host()), "--push"])
        .assert_success();
}

/// A node: a strata root whose daemon runs in `ns` and whose mirror is the hub's address.
fn node_env(hub_ip: &str) -> StrataEnv {
    let env = StrataEnv::new();
    env.write_config(&serde_json::json!({
        "registry-mirrors-by-host": { UPSTREAM: [format!("http://{hub_ip}:5000")] },
        "insecure-registries": [UPSTREAM],
        "mirror-slice-size": SLICE,
        "prefetch": false,
    }));
    env
}

/// Mount the image on a node, its daemon started inside the node's namespace.
fn mount_in(env: &StrataEnv, ns: &Netns, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut cmd = ns.command(common::cli::STRATA_BIN);
    cmd.args(["mount", &format!("{UPSTREAM}/fleet/app:v1")])
        .arg(dir)
        .arg("--no-prefetch");
    for (k, v) in env.command(&[]).get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "mount in {}: {}\n{}",
        ns.0,
        String::from_utf8_lossy(&out.stderr),
        env.daemon_logs()
    );
}

struct Unmount<'a>(&'a StrataEnv, PathBuf);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .run(&["umount", "-f", self.1.to_str().unwrap_or_default()]);
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.1)
            .stderr(Stdio::null())
            .status();
    }
}

/// Files each node reads (all of them the same), whole.
const READ: [usize; 3] = [0, 2, 5];

#[test]
fn three_nodes_cross_the_upstream_once_per_slice() {
    let reg = Registry::start();
    publish(&reg);
    let hub = Hub::start(&reg.storage_dir(), false, NODES);
    let envs: Vec<StrataEnv> = (1..=NODES)
        .map(|k| node_env(&format!("10.78.{k}.1")))
        .collect();
    let mut guards = Vec::new();
    for (k, env) in envs.iter().enumerate() {
        let dir = env.scratch().join("mnt");
        mount_in(env, &hub.nodes[k], &dir);
        guards.push(Unmount(env, dir));
    }
    // All nodes read the same files at the same moment.
    std::thread::scope(|s| {
        for g in &guards {
            let dir = g.1.clone();
            s.spawn(move || {
                for i in READ {
                    let mut got = Vec::new();
                    std::fs::File::open(dir.join(format!("data/f{i}")))
                        .unwrap()
                        .read_to_end(&mut got)
                        .unwrap();
                    assert!(got == file(i), "data/f{i} through {}", dir.display());
                }
            });
        }
    });
    drop(guards);
    for env in &envs {
        env.stop_daemon();
    }
    // What the nodes asked the mirror for, and the slices that covers.
    let access = hub.read("access.log");
    let mut statuses: BTreeMap<&str, usize> = BTreeMap::new();
    for l in access.lines() {
        *statuses
            .entry(l.split(' ').nth(6).unwrap_or(""))
            .or_default() += 1;
    }
    eprintln!("mirror cache answers: {statuses:?}");
    let asked = mirror_blob_requests(&access);
    assert!(!asked.is_empty(), "no blob request reached the mirror");
    // (digest, slice size, slice): strata's small pieces (the sidecar's windows) are cached
    // by 16 KiB slices, apart from the large ones.
    let mut slices: BTreeSet<(String, u64, u64)> = BTreeSet::new();
    let mut served: BTreeMap<String, u64> = BTreeMap::new();
    let mut small_pieces = 0;
    for (client, digest, range, sent, small) in &asked {
        *served.entry(client.clone()).or_default() += sent;
        let size = blob_size(&reg.storage_dir(), digest);
        let (a, b) = range.unwrap_or((0, size - 1));
        let slice = if *small { SMALL_SLICE } else { SLICE };
        small_pieces += usize::from(*small);
        if range.is_some() && !small {
            assert_eq!(
                a / SLICE,
                b / SLICE,
                "strata's bytes={a}-{b} straddles a slice"
            );
        }
        for s in a / slice..=b / slice {
            slices.insert((digest.clone(), slice, s));
        }
    }
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for (digest, slice, s) in &slices {
        let size = blob_size(&reg.storage_dir(), digest);
        *expected.entry(digest.clone()).or_default() += (size - s * slice).min(*slice);
    }
    let mut upstream: BTreeMap<String, u64> = BTreeMap::new();
    for (digest, n) in hub.upstream_blob_gets() {
        *upstream.entry(digest).or_default() += n;
    }
    assert_eq!(
        upstream, expected,
        "upstream blob bytes (registry log) differ from one fetch per touched slice"
    );
    let up: u64 = upstream.values().sum();
    eprintln!(
        "upstream {up} bytes for {} slices ({small_pieces} small pieces); the mirror served {served:?}",
        slices.len()
    );
    // Every node got its bytes from the mirror, and the upstream sent them about once.
    assert_eq!(served.len(), NODES, "{served:?}");
    let layer_read: u64 = READ.len() as u64 * FILE_LEN as u64;
    for (node, n) in &served {
        assert!(
            *n >= layer_read,
            "node {node} got {n} bytes from the mirror"
        );
        assert!(
            (up as f64) <= 1.1 * *n as f64,
            "upstream {up} bytes > 1.1x the {n} bytes node {node} fetched"
        );
    }
}

/// A registry that answers blob GETs with a redirect to object storage (here nginx serving
/// the registry's storage directory): the mirror follows it, fetches slices from storage with
/// the slice's Range and without the registry's Authorization, and caches them.
#[test]
fn redirected_blob_gets_are_followed_and_cached_by_slice() {
    let reg = Registry::start();
    publish(&reg);
    let hub = Hub::start(&reg.storage_dir(), true, 1);
    let env = node_env("10.78.1.1");
    let dir = env.scratch().join("mnt");
    mount_in(&env, &hub.nodes[0], &dir);
    let guard = Unmount(&env, dir.clone());
    for i in READ {
        assert!(
            std::fs::read(dir.join(format!("data/f{i}"))).unwrap() == file(i),
            "data/f{i}"
        );
    }
    drop(guard);
    env.stop_daemon();
    // The registry answered with redirects (no blob bytes); storage served ranges of slices.
    let blob_bytes: u64 = hub.upstream_blob_gets().iter().map(|(_, n)| n).sum();
    let storage = hub.read("storage.log");
    let ranged: Vec<&str> = storage.lines().filter(|l| l.contains("\"bytes=")).collect();
    assert!(
        !ranged.is_empty(),
        "storage saw no ranged GET:\n{storage}\nerrors:\n{}",
        hub.read("error.log")
    );
    assert!(
        storage
            .lines()
            .all(|l| l.contains("\"bytes=") && l.contains(" 206 ")),
        "storage must be asked for slices (206) only:\n{storage}"
    );
    assert!(
        blob_bytes < 64 << 10,
        "the registry itself sent {blob_bytes} blob bytes"
    );
}
