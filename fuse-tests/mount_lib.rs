//! The library's one mount assembly (`strata::mount`) used in-process, as the daemon will:
//! one `Services` (registry client, store, chunk cache) serving two mounts of the same image
//! at once. A real registry, `strata index --push` by the CLI as publisher, real FUSE mounts;
//! bytes checked against the pushed layers, the cache's byte counter against the registry's
//! own access log, and the second mount served from the shared cache (no second fetch); the
//! launch warm-up reading a command and what it loads before anything asks.

mod common;

use common::testdata::pseudo;
use common::{ImageBuilder, Layer, OutputExt, Registry, StrataEnv};
use std::path::Path;
use std::sync::Arc;
use strata::mount::{MountSpec, Services};

fn services(root: &Path) -> Services {
    let config = Arc::new(strata::config::Config::default());
    let store = Arc::new(strata::store::Store::open(root).expect("store"));
    let creds = strata::registry::auth::CredentialStore::new(root.join("creds.json"));
    let client = Arc::new(strata::registry::Client::new(config.clone(), creds).expect("client"));
    Services::open(client, store, config).expect("services")
}

fn spec<'a>(image: &'a str, mountpoint: &'a Path) -> MountSpec<'a> {
    MountSpec {
        image,
        platform: None,
        mountpoint,
        upper: None,
        prefetch: false,
        passthrough: false,
        allow_other: false,
        warm: Vec::new(),
    }
}

#[test]
fn two_mounts_in_one_process_share_one_cache() {
    let reg = Registry::start();
    // Incompressible, so that a read costs registry bytes.
    let big = pseudo(6 << 20, 7);
    let img = ImageBuilder::new()
        .layer(
            Layer::new()
                .dir("data")
                .file("data/big.bin", big.clone())
                .file("data/small.txt", "small\n"),
        )
        .build("v1");
    img.push(&reg, "inproc/app:v1");
    let reference = format!("{}/inproc/app:v1", reg.host());
    let publisher = StrataEnv::new();
    publisher
        .run(&["index", &reference, "--push"])
        .assert_success();

    let root = tempfile::tempdir().unwrap();
    let (m1, m2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let svc = services(root.path());
    reg.settle_logs();
    let served_before = reg.bytes_served();

    let progress = strata::image::Progress::silent();
    let a = rt
        .block_on(strata::mount::mount_image(
            &svc,
            spec(&reference, m1.path()),
            &progress,
        ))
        .expect("first mount");
    let b = rt
        .block_on(strata::mount::mount_image(
            &svc,
            spec(&reference, m2.path()),
            &progress,
        ))
        .expect("second mount");
    assert!(strata::mount::is_mounted(m1.path()) && strata::mount::is_mounted(m2.path()));

    // First mount: the bytes are fetched (and verified) on read.
    assert_eq!(std::fs::read(m1.path().join("data/big.bin")).unwrap(), big);
    let fetched = svc.cache.stats.snapshot().bytes_fetched;
    reg.settle_logs();
    let served_first = reg.bytes_served() - served_before;
    assert!(fetched > 0, "the read fetched nothing");
    // The registry served the layer bytes the cache counted, plus manifests, config and
    // index heads/windows: never fewer bytes than the cache says it fetched.
    assert!(
        served_first >= fetched,
        "registry served {served_first} bytes, cache counted {fetched}"
    );

    // Second mount of the same image in the same process: served from the shared cache.
    assert_eq!(std::fs::read(m2.path().join("data/big.bin")).unwrap(), big);
    assert_eq!(
        std::fs::read(m2.path().join("data/small.txt")).unwrap(),
        b"small\n"
    );
    assert_eq!(
        svc.cache.stats.snapshot().bytes_fetched,
        fetched,
        "the second mount fetched again"
    );
    reg.settle_logs();
    assert_eq!(
        reg.bytes_served() - served_before,
        served_first,
        "the registry served bytes for the second mount"
    );

    // The record `strata stats` reads names the mount and counts the reads it served.
    let rec = b.record(0);
    assert_eq!(rec.mountpoint, m2.path().canonicalize().unwrap());
    assert!(rec.fs_reads > 0, "{rec:?}");
    assert_eq!(rec.fs_bytes_read, big.len() as u64 + 6, "{rec:?}");

    let store = svc.store.clone();
    rt.block_on(a.shutdown(&store));
    rt.block_on(b.shutdown(&store));
    assert!(!strata::mount::is_mounted(m1.path()));
    assert!(!strata::mount::is_mounted(m2.path()));
}

/// Launch warm-up (`mount::warm`): a mount asked to warm a command reads, before anything
/// touches the mount, the command found along PATH through a symlinked directory, its ELF
/// interpreter (through /lib64's symlink), the library it names, and /etc/passwd — and not
/// the unrelated files between them. The host's own dynamic `true`, libc and loader are the
/// ELF objects (real headers, real DT_NEEDED).
#[test]
fn warm_up_reads_the_command_and_what_it_loads_before_anything_asks() {
    let host = |p: &str| std::fs::read(p).unwrap_or_else(|e| panic!("host {p}: {e}"));
    let (tru, libc, ld) = (
        host("/usr/bin/true"),
        host("/lib/x86_64-linux-gnu/libc.so.6"),
        host("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
    );
    let reg = Registry::start();
    // Incompressible fillers keep each warmed file in spans of its own.
    let filler = |seed| pseudo(4 << 20, seed);
    let img = ImageBuilder::new()
        .layer(
            Layer::new()
                .dir("etc")
                .file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
                .file("etc/filler0", filler(1))
                .dir("usr")
                .dir("usr/bin")
                .symlink("bin", "usr/bin")
                .file("usr/bin/true", tru.clone())
                .file("usr/bin/filler1", filler(2))
                .dir("usr/lib")
                .dir("usr/lib/x86_64-linux-gnu")
                .symlink("lib", "usr/lib")
                .file("usr/lib/x86_64-linux-gnu/libc.so.6", libc.clone())
                .file("usr/lib/x86_64-linux-gnu/filler2", filler(3))
                .file("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", ld.clone())
                .dir("lib64")
                .symlink(
                    "lib64/ld-linux-x86-64.so.2",
                    "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                )
                .file("zz-filler3", filler(4)),
        )
        .build("v1");
    img.push(&reg, "inproc/warm:v1");
    let reference = format!("{}/inproc/warm:v1", reg.host());
    StrataEnv::new()
        .run(&["index", &reference, "--push"])
        .assert_success();

    let root = tempfile::tempdir().unwrap();
    let mp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let svc = services(root.path());
    let mut s = spec(&reference, mp.path());
    s.warm = strata::mount::warm::for_command(&["true".to_string()], "/usr/local/bin:/bin", "/");
    let served = rt
        .block_on(strata::mount::mount_image(
            &svc,
            s,
            &strata::image::Progress::silent(),
        ))
        .expect("mount");
    // The warm-up runs in the background: wait until the cache stops fetching.
    let fetched = || svc.cache.stats.snapshot().bytes_fetched;
    let mut last = u64::MAX;
    for _ in 0..100 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let now = fetched();
        if now == last && now > 0 {
            break;
        }
        last = now;
    }
    let warmed = fetched();
    assert!(warmed > 0, "the warm-up fetched nothing");
    let read = |p: &str| std::fs::read(mp.path().join(p)).unwrap();
    assert_eq!(read("bin/true"), tru);
    assert_eq!(read("lib/x86_64-linux-gnu/libc.so.6"), libc);
    assert_eq!(read("lib64/ld-linux-x86-64.so.2"), ld);
    assert_eq!(read("etc/passwd"), b"root:x:0:0:root:/root:/bin/sh\n");
    assert_eq!(
        fetched(),
        warmed,
        "reading the command, its loader, its library and passwd fetched more: not warmed"
    );
    assert_eq!(read("zz-filler3"), filler(4));
    assert!(fetched() > warmed, "the unrelated last file was warmed too");

    rt.block_on(served.shutdown(&svc.store));
}
