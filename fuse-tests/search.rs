//! `strata search` (issue 19): `_catalog` on a registry (the real one), Docker Hub's search
//! API for docker.io names (a loopback server answering that API's JSON stands in for Docker
//! Hub, which tests never contact; `STRATA_HUB_SEARCH_URL` points strata at it), and a clear
//! error when the search API cannot be reached.

mod common;

use common::http::{parse_query, read_head};
use common::{busybox_image, DeadPort, OutputExt, Registry, StrataEnv};
use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// A loopback stand-in for Docker Hub's `/v1/search`; records each request path.
fn fake_hub() -> (String, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { break };
            let Ok(Some(head)) = read_head(&mut BufReader::new(&mut s)) else {
                continue;
            };
            let path = head.path().to_string();
            seen2.lock().unwrap().push(path.clone());
            let q = path
                .split_once('?')
                .map(|(_, q)| parse_query(q))
                .unwrap_or_default();
            let term = q
                .iter()
                .find(|(k, _)| k == "q")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let (status, body) = if path.starts_with("/v1/search?") {
                let body = serde_json::json!({
                    "num_results": 2, "query": term, "page": 1,
                    "results": [
                        {"name": term, "description": "The official\nimage",
                         "star_count": 3210, "is_official": true, "is_automated": false},
                        {"name": format!("someone/{term}-tools"), "description": "tools",
                         "star_count": 7, "is_official": false, "is_automated": false}
                    ]
                });
                ("200 OK", body.to_string())
            } else {
                ("404 Not Found", "{}".to_string())
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, seen)
}

#[test]
fn docker_hub_names_use_the_search_api() {
    let (url, seen) = fake_hub();
    let mut env = StrataEnv::new();
    env.set_env("STRATA_HUB_SEARCH_URL", &url);
    for term in ["redis", "docker.io/redis", "index.docker.io/redis"] {
        let out = env.run(&["search", "--limit", "5", term]);
        out.assert_success();
        let text = out.stdout_str();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("NAME"), "{text}");
        let first: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            first,
            ["redis", "The", "official", "image", "3210", "[OK]"],
            "{text}"
        );
        assert!(lines[2].starts_with("someone/redis-tools"), "{text}");
        assert!(!lines[2].contains("[OK]"), "{text}");
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(
        seen.iter().all(|p| p == "/v1/search?q=redis&n=5"),
        "{seen:?}"
    );
    // --limit caps what is shown.
    let out = env.run(&["search", "--limit", "1", "redis"]);
    out.assert_success();
    assert_eq!(out.stdout_str().lines().count(), 2, "{}", out.stdout_str());
}

#[test]
fn docker_hub_search_offline_is_a_clear_error() {
    let dead = DeadPort::new();
    let mut env = StrataEnv::new();
    env.set_env("STRATA_HUB_SEARCH_URL", &dead.url());
    let out = env.run(&["search", "redis"]);
    assert!(!out.status.success());
    let err = out.stderr_str();
    assert!(err.contains("Docker Hub's search API"), "{err}");
    assert!(err.contains("offline"), "{err}");
    assert!(out.stdout_str().is_empty(), "{}", out.stdout_str());
}

#[test]
fn other_registries_use_the_catalog() {
    let reg = Registry::start();
    busybox_image().build("v1").push(&reg, "tools/findme:v1");
    busybox_image().build("v1").push(&reg, "other/thing:v1");
    let dead = DeadPort::new();
    let mut env = StrataEnv::new();
    // The Hub search API is not asked for a registry host.
    env.set_env("STRATA_HUB_SEARCH_URL", &dead.url());
    let out = env.run(&["search", &format!("{}/findme", reg.host())]);
    out.assert_success();
    let text = out.stdout_str();
    assert!(
        text.contains(&format!("{}/tools/findme", reg.host())),
        "{text}"
    );
    assert!(!text.contains("other/thing"), "{text}");
}
