//! Isolation as docker's defaults (issue 19): docker's seccomp profile (`keyctl` and
//! `unshare` answer EPERM in a default container, work with `seccomp=unconfined`, a
//! docker-format profile file is applied, `no-new-privileges` reaches the process), and the
//! private `bridge` network (the container's loopback is its own, host loopback services are
//! out of reach, outbound NAT through slirp4netns, `-p` forwards from the host, and nothing
//! is left behind). Real registry, real runc, real slirp4netns.

mod common;

use common::{busybox_image, Entry, Layer, OutputExt, Registry, StrataEnv};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A static C program: `keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING)`, printing
/// `ok` or the errno name.
const KEYCTL_C: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(void) {
    long r = syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -3 /* SESSION */, 0);
    if (r >= 0) { puts("ok"); return 0; }
    puts(errno == EPERM ? "EPERM" : strerror(errno));
    return 1;
}
"#;

fn keyctl_binary(dir: &Path) -> Vec<u8> {
    std::fs::create_dir_all(dir).unwrap();
    let src = dir.join("keyctl.c");
    std::fs::write(&src, KEYCTL_C).unwrap();
    let bin = dir.join("keyctl");
    let out = Command::new("cc")
        .args(["-static", "-O", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("cc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(bin).unwrap()
}

/// busybox with the network applets and the keyctl probe.
fn push(reg: &Registry, env: &StrataEnv, repo_tag: &str) -> String {
    let mut layer = Layer::new()
        .add(Entry::file("usr/bin/keyctl", keyctl_binary(&env.scratch())).mode(0o755))
        .file("www/index.html", "hello from the container\n");
    for applet in [
        "nc", "httpd", "unshare", "ip", "cat", "grep", "tail", "printf", "kill",
    ] {
        layer = layer.symlink(&format!("usr/bin/{applet}"), "/bin/busybox");
    }
    busybox_image().layer(layer).build("v1").push(reg, repo_tag);
    format!("{}/{repo_tag}", reg.host())
}

fn run_sh(env: &StrataEnv, flags: &[&str], reference: &str, script: &str) -> String {
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[reference, "sh", "-c", script]);
    let out = env.run(&args);
    out.assert_success();
    out.stdout_str()
}

fn leftovers() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/run/strata/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn seccomp_default_profile_unconfined_and_files() {
    let reg = Registry::start();
    let env = StrataEnv::new();
    let reference = push(&reg, &env, "iso/seccomp:v1");
    let probe = "keyctl; unshare -U true && echo unshare-ok || echo unshare-failed";
    let default = run_sh(&env, &[], &reference, probe);
    assert!(default.starts_with("EPERM\n"), "{default}");
    assert!(default.contains("unshare-failed"), "{default}");
    let unconfined = run_sh(
        &env,
        &["--security-opt", "seccomp=unconfined"],
        &reference,
        probe,
    );
    assert!(unconfined.starts_with("ok\n"), "{unconfined}");
    assert!(unconfined.contains("unshare-ok"), "{unconfined}");
    // --privileged implies unconfined (as docker).
    let privileged = run_sh(&env, &["--privileged"], &reference, "keyctl");
    assert_eq!(privileged, "ok\n");

    // A docker-format profile file: everything allowed but mkdir/mkdirat (EACCES).
    let profile = env.scratch().join("profile.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                          "errnoRet": 13}]}"#,
    )
    .unwrap();
    let opt = format!("seccomp={}", profile.display());
    let out = run_sh(
        &env,
        &["--security-opt", &opt],
        &reference,
        "keyctl; mkdir /tmp/x 2>&1 || true",
    );
    assert!(out.starts_with("ok\n"), "{out}");
    assert!(out.contains("Permission denied"), "{out}");
    // A broken profile is a usage error naming the file, exit 125.
    std::fs::write(&profile, r#"{"defaultAction": "SCMP_ACT_WHATEVER"}"#).unwrap();
    let out = env.run(&["run", "--rm", "--security-opt", &opt, &reference, "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", out.stderr_str());
    assert!(
        out.stderr_str().contains("profile.json"),
        "{}",
        out.stderr_str()
    );
    let out = env.run(&["run", "--rm", "--security-opt", "bogus", &reference, "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", out.stderr_str());

    // no-new-privileges reaches the process (NoNewPrivs in /proc/self/status).
    let nnp = |flags: &[&str]| run_sh(&env, flags, &reference, "grep NoNewPrivs /proc/self/status");
    assert!(nnp(&[]).contains('0'), "{}", nnp(&[]));
    let on = nnp(&["--security-opt", "no-new-privileges"]);
    assert!(on.contains('1'), "{on}");
}

/// A shell line fetching `http://host:port/` with busybox nc (busybox's static wget crashes
/// looking up the service name without NSS files): the body's last line, or `unreachable`.
fn http_get(host: &str, port: u16) -> String {
    format!(
        "(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port} | tail -n 1 | grep .) || echo unreachable"
    )
}

/// A host IPv4 address that is not loopback (to test outbound NAT), if the host has one.
fn host_global_ipv4() -> Option<std::net::Ipv4Addr> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next()?.parse().ok())
}

/// Answer HTTP 200 `body` on `l` in the background until the returned flag is dropped;
/// the counter says how many connections came in.
struct Server {
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(l: TcpListener, body: &'static str) -> Server {
    l.set_nonblocking(true).unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (a, st) = (accepted.clone(), stop.clone());
    std::thread::spawn(move || {
        while !st.load(Ordering::Relaxed) {
            if let Ok((mut s, _)) = l.accept() {
                a.fetch_add(1, Ordering::Relaxed);
                s.set_nonblocking(false).unwrap();
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let resp = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    Server { accepted, stop }
}

#[test]
fn bridge_network_is_private_with_nat_and_published_ports() {
    let reg = Registry::start();
    let env = StrataEnv::new();
    let reference = push(&reg, &env, "iso/net:v1");
    let before = leftovers();

    // The container's own interfaces: lo and slirp's tap0, not the host's.
    let ifaces = run_sh(&env, &[], &reference, "cat /proc/net/dev");
    assert!(
        ifaces.contains("tap0:") && ifaces.contains("lo:"),
        "{ifaces}"
    );
    assert!(!ifaces.contains("eth0:"), "{ifaces}");
    let resolv = run_sh(&env, &[], &reference, "cat /etc/resolv.conf");
    assert_eq!(resolv, "nameserver 10.0.2.3\n");

    // A host loopback service: out of reach by default (both as 127.0.0.1, which is the
    // container's own loopback, and through slirp's gateway), reachable with host networking.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let server = serve(l, "host-loopback\n");
    let fetch = |host: &str| http_get(host, port);
    let out = run_sh(&env, &[], &reference, &fetch("127.0.0.1"));
    assert_eq!(out, "unreachable\n");
    let out = run_sh(&env, &[], &reference, &fetch("10.0.2.2"));
    assert_eq!(out, "unreachable\n");
    assert_eq!(server.accepted.load(Ordering::Relaxed), 0);
    let out = run_sh(
        &env,
        &["--network", "host"],
        &reference,
        &fetch("127.0.0.1"),
    );
    assert_eq!(out, "host-loopback\n");
    assert_eq!(server.accepted.load(Ordering::Relaxed), 1);
    drop(server);

    // A container binding a port does not take it on the host: bind the same port inside
    // while the host holds it.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let hport = held.local_addr().unwrap().port();
    let out = run_sh(
        &env,
        &[],
        &reference,
        &format!("(nc -l -p {hport} & sleep 1; kill $!) && echo bound"),
    );
    assert!(out.contains("bound"), "{out}");
    drop(held);

    // Outbound NAT: a server on a host (non-loopback) address.
    match host_global_ipv4() {
        Some(ip) => {
            let l = TcpListener::bind((ip, 0)).unwrap();
            let port = l.local_addr().unwrap().port();
            let server = serve(l, "outbound\n");
            let out = run_sh(&env, &[], &reference, &http_get(&ip.to_string(), port));
            assert_eq!(out, "outbound\n");
            assert_eq!(server.accepted.load(Ordering::Relaxed), 1);
        }
        None => eprintln!("no global IPv4 address on this host: outbound NAT not tested"),
    }

    // -p HOST:CONTAINER reaches a server in a detached container from the host.
    let hostport = common::free_port();
    let publish = format!("127.0.0.1:{hostport}:8080");
    let out = env.run(&[
        "run", "-d", "--name", "web", "-p", &publish, &reference, "httpd", "-f", "-p", "8080",
        "-h", "/www",
    ]);
    out.assert_success();
    let web_id = out.stdout_str().trim().to_string();
    assert!(
        leftovers().contains(&web_id),
        "no network state for {web_id}"
    );
    let mut body = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", hostport)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n");
            body.clear();
            let _ = s.read_to_string(&mut body);
            if body.contains("hello from the container") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(body.contains("hello from the container"), "{body:?}");
    // Publishing a port the host already uses fails clearly (exit 125).
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let out = env.run(&[
        "run",
        "--rm",
        "-p",
        &format!("127.0.0.1:{busy_port}:80"),
        &reference,
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125), "{}", out.stderr_str());
    assert!(
        out.stderr_str().contains("publishing"),
        "{}",
        out.stderr_str()
    );
    let out = env.run(&["run", "--rm", "-p", "80", &reference, "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", out.stderr_str());

    // rm -f stops the container and its network: the port is free, nothing left in /run.
    env.run(&["rm", "-f", "web"]).assert_success();
    assert!(TcpStream::connect(("127.0.0.1", hostport)).is_err());
    // (/run/strata/net is the host's: the other test of this file runs `--rm` containers
    // with networks meanwhile, so their entries come and go; ours must be gone.)
    assert!(!leftovers().contains(&web_id), "{:?}", leftovers());

    // A detached container that exits by itself: its network ends with it (the daemon sees
    // its init go), without `rm`.
    let out = env.run(&["run", "-d", "--name", "brief", &reference, "sleep", "1"]);
    out.assert_success();
    let brief_id = out.stdout_str().trim().to_string();
    assert!(
        leftovers().contains(&brief_id),
        "the detached container has no network"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while leftovers().contains(&brief_id) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!leftovers().contains(&brief_id), "{}", env.daemon_logs());
    env.run(&["rm", "brief"]).assert_success();
    // Nor did the `--rm` runs above leave any: everything now there was there before (the
    // other test's entries may have gone meanwhile, and new ones of it go within seconds).
    let extra = || -> Vec<String> {
        leftovers()
            .into_iter()
            .filter(|e| !before.contains(e))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while !extra().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(extra(), Vec::<String>::new());
}
