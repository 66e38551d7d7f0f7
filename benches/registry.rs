//! The mirror list built for every registry request (`Client::endpoints`): with no extra
//! configuration, and with a hosts.toml (two mirrors, headers, a CA) plus a registries.conf of
//! 50 `[[registry]]` entries. Files are read once; this measures the per-request cost.

use criterion::{criterion_group, criterion_main, Criterion};
use std::sync::Arc;
use strata::config::Config;
use strata::reference::Repository;
use strata::registry::auth::CredentialStore;
use strata::registry::{Client, Op};

fn client(cfg: Config, dir: &std::path::Path) -> Client {
    Client::new(Arc::new(cfg), CredentialStore::new(dir.join("config.json"))).unwrap()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = Repository {
        registry: "registry.example:5000".into(),
        name: "team/app".into(),
    };

    let plain = Config {
        hosts_dir: d.join("none"),
        certs_dirs: vec![],
        registries_conf: Some("".into()),
        ..Config::default()
    };
    let plain = client(plain, d);
    plain.endpoints(&repo, Op::Pull).unwrap();
    c.bench_function("endpoints/default", |b| {
        b.iter(|| plain.endpoints(&repo, Op::Pull).unwrap())
    });

    let hosts = d.join("hosts/registry.example:5000");
    std::fs::create_dir_all(&hosts).unwrap();
    std::fs::write(
        hosts.join("hosts.toml"),
        "server = \"https://registry.example:5000\"\n\
         [host.\"http://mirror-a.local:5000\"]\ncapabilities = [\"pull\"]\n\
         [host.\"http://mirror-a.local:5000\".header]\nX-Dragonfly-Registry = \"https://registry.example:5000\"\n\
         [host.\"http://mirror-b.local:5000\"]\ncapabilities = [\"pull\", \"resolve\"]\n",
    )
    .unwrap();
    let mut conf = String::new();
    for i in 0..50 {
        conf.push_str(&format!(
            "[[registry]]\nprefix = \"registry{i}.example/ns\"\nlocation = \"internal{i}.example/ns\"\n\
             [[registry.mirror]]\nlocation = \"cache.local/r{i}\"\n"
        ));
    }
    conf.push_str(
        "[[registry]]\nprefix = \"registry.example:5000/team\"\nlocation = \"registry.example:5000/team\"\n\
         [[registry.mirror]]\nlocation = \"cache.local:5000/team\"\n",
    );
    std::fs::write(d.join("registries.conf"), conf).unwrap();
    let full = Config {
        hosts_dir: d.join("hosts"),
        certs_dirs: vec![d.join("certs.d")],
        registries_conf: Some(d.join("registries.conf")),
        ..Config::default()
    };
    let full = client(full, d);
    assert_eq!(full.endpoints(&repo, Op::Pull).unwrap().len(), 4);
    c.bench_function("endpoints/hosts.toml+registries.conf", |b| {
        b.iter(|| full.endpoints(&repo, Op::Pull).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
