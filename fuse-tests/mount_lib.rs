//! The library's one mount assembly (`strata::mount`) used in-process, as the daemon will:
//! one `Services` (registry client, store, chunk cache) serving two mounts of the same image
//! at once. A real registry, `strata index --push` by the CLI as publisher, real FUSE mounts;
//! bytes checked against the pushed layers, the cache's byte counter against the registry's
//! own access log, and the second mount served from the shared cache (no second fetch); the
//! launch warm-up reading a command and what it loads before anything asks, and the Python
//! modules a package imports read ahead of the interpreter.

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
    let warmed = settled(&svc);
    let fetched = || svc.cache.stats.snapshot().bytes_fetched;
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

/// Wait until the cache of `svc` stops fetching (a background warm-up is done); its bytes
/// fetched by then.
fn settled(svc: &Services) -> u64 {
    let fetched = || svc.cache.stats.snapshot().bytes_fetched;
    let mut last = u64::MAX;
    for _ in 0..100 {
        std::thread::sleep(std::time::Duration::from_millis(150));
        let now = fetched();
        if now == last && now > 0 {
            break;
        }
        last = now;
    }
    fetched()
}

/// Python imports followed (`mount::python`): modules compiled by the host's `python3` into
/// an image's standard library, each in spans of its own. (1) A mount asked to warm
/// `python3 -c 'import app'` reads the package, what it imports (relative and absolute) and
/// what those import, before anything asks — and not a module imported only inside a
/// function. (2) With no warm list, the first read of the package's `.pyc` through the mount
/// does the same.
#[test]
fn python_imports_are_read_before_the_interpreter_asks() {
    let src = tempfile::tempdir().unwrap();
    let modules = [
        (
            "app/__init__.py",
            "from . import util\nimport helper\ndef later():\n    import lazy_mod\n",
        ),
        ("app/util.py", "import json_like\n"),
        ("helper.py", "X = 1\n"),
        ("json_like.py", "Y = 2\n"),
        ("lazy_mod.py", "Z = 3\n"),
    ];
    std::fs::create_dir(src.path().join("app")).unwrap();
    for (p, text) in modules {
        std::fs::write(src.path().join(p), text).unwrap();
    }
    // Compile with the host's interpreter; print its minor version and each .pyc's path.
    let script = "import importlib.util, py_compile, sys\n\
                  print(sys.version_info.minor)\n\
                  for f in sys.argv[1:]:\n    c = importlib.util.cache_from_source(f)\n    \
                  py_compile.compile(f, cfile=c, doraise=True)\n    print(c)\n";
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(modules.iter().map(|(p, _)| src.path().join(p)))
        .output()
        .expect("python3 (scripts/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let minor: u32 = lines.next().unwrap().parse().unwrap();
    let std = format!("usr/lib/python3.{minor}");
    let pycs: Vec<String> = lines
        .map(|c| {
            format!(
                "{std}/{}",
                c.strip_prefix(&format!("{}/", src.path().display()))
                    .unwrap()
            )
        })
        .collect();
    let mut layer = Layer::new()
        .dir("usr")
        .dir("usr/lib")
        .dir(&std)
        .dir(&format!("{std}/app"))
        .dir(&format!("{std}/app/__pycache__"))
        .dir(&format!("{std}/__pycache__"));
    for (i, ((p, text), pyc)) in modules.iter().zip(&pycs).enumerate() {
        let local = src
            .path()
            .join(pyc.strip_prefix(&format!("{std}/")).unwrap());
        layer = layer
            .file(&format!("{std}/{p}"), *text)
            .file(pyc, std::fs::read(local).unwrap())
            .file(&format!("filler{i}"), pseudo(1 << 20, i as u64 + 1));
    }
    let reg = Registry::start();
    ImageBuilder::new()
        .layer(layer)
        .build("v1")
        .push(&reg, "inproc/py:v1");
    let reference = format!("{}/inproc/py:v1", reg.host());
    StrataEnv::new()
        .run(&["index", &reference, "--push"])
        .assert_success();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (imported, lazy) = (&pycs[..4], &pycs[4]);

    // (1) The launch warm list of `python3 -c 'import app'`.
    let root = tempfile::tempdir().unwrap();
    let mp = tempfile::tempdir().unwrap();
    let svc = services(root.path());
    let mut s = spec(&reference, mp.path());
    let argv: Vec<String> = ["python3", "-c", "import app"].map(String::from).to_vec();
    s.warm = strata::mount::warm::for_command(&argv, "/usr/bin", "/");
    let silent = strata::image::Progress::silent();
    let served = rt
        .block_on(strata::mount::mount_image(&svc, s, &silent))
        .expect("mount");
    assert!(settled(&svc) > 0, "the warm-up fetched nothing");
    read_ahead_only(&svc, mp.path(), imported, lazy);
    rt.block_on(served.shutdown(&svc.store));

    // (2) No warm list: the package's first read.
    let root = tempfile::tempdir().unwrap();
    let mp = tempfile::tempdir().unwrap();
    let svc = services(root.path());
    let served = rt
        .block_on(strata::mount::mount_image(
            &svc,
            spec(&reference, mp.path()),
            &silent,
        ))
        .expect("mount");
    std::fs::read(mp.path().join(&imported[0])).unwrap();
    settled(&svc);
    read_ahead_only(&svc, mp.path(), &imported[1..], lazy);
    rt.block_on(served.shutdown(&svc.store));
}

/// Once the warm-up of `svc` settled: reading `imported` under `mp` fetches nothing more,
/// reading `lazy` (imported only inside a function) does.
fn read_ahead_only(svc: &Services, mp: &Path, imported: &[String], lazy: &str) {
    let fetched = || svc.cache.stats.snapshot().bytes_fetched;
    let warmed = fetched();
    for p in imported {
        std::fs::read(mp.join(p)).unwrap();
        assert_eq!(fetched(), warmed, "{p} was not read ahead");
    }
    std::fs::read(mp.join(lazy)).unwrap();
    assert!(
        fetched() > warmed,
        "a module imported only in a function was read ahead"
    );
}
