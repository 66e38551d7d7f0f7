//! A pull-through cache as mirror: docker-registry with `proxy: remoteurl` (distribution's
//! pull-through cache, which fills a blob whole at its first miss and answers a Range with a
//! whole-blob 200 until then) in front of a real registry, its link to the registry shaped by
//! scripts/lib/shaper.py. Three strata roots reading the same lazy files at once through the
//! cold cache cost the registry no more layer bytes than the three reading it without a
//! mirror (the registry's own log is the oracle): with `mirror-fill-wait`, a root that finds
//! the cache filling waits for the fill instead of reading the layer from the registry as
//! well. The bytes read are checked.

mod common;
use common::testdata::pseudo;

use common::{ImageBuilder, Layer, OutputExt, Registry, StrataEnv};
use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROOTS: usize = 3;
const FILES: usize = 48;
const FILE_LEN: usize = 1 << 20;
/// Files each root reads whole: most of the layer, so that three roots reading them straight
/// from the registry cost more than one fill of the whole layer plus the whole-blob streams
/// the cache starts and drops for each root's first ask and each ask during the fill (up to
/// ~5 MB each through the shaper: the registry's socket buffer).
const READ: std::ops::Range<usize> = 0..40;

fn file(i: usize) -> Vec<u8> {
    pseudo(FILE_LEN, 300 + i as u64)
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
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Poll `url` until it answers 200.
fn wait_http(url: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let ok = Command::new("curl")
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

/// The shaped link (200 Mbit/s, 5 ms each way) and the pull-through cache behind it.
struct Cache {
    // Dropped in this order: the cache, the shaper, then their files.
    _procs: Vec<Proc>,
    url: String,
    dir: tempfile::TempDir,
}

impl Cache {
    fn start(reg: &Registry) -> Cache {
        let dir = tempfile::Builder::new()
            .prefix("strata-pullthrough-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let mut procs = Vec::new();
        let mut shaper = Command::new("python3");
        shaper
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lib/shaper.py"))
            .args([
                "--target",
                &reg.host(),
                "--rate-mbit",
                "100",
                "--delay-ms",
                "5",
            ])
            .args(["--port", "0", "--port-file"])
            .arg(d.join("shaper.port"));
        procs.push(Proc::spawn(shaper, &d.join("shaper.log")));
        let deadline = Instant::now() + Duration::from_secs(10);
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(d.join("shaper.port")) {
                if let Ok(p) = p.trim().parse::<u16>() {
                    break p;
                }
            }
            assert!(Instant::now() < deadline, "shaper did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mport = common::free_port();
        let cfg = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{mport}\nproxy:\n  remoteurl: http://127.0.0.1:{port}\n",
            d.join("data").display()
        );
        std::fs::write(d.join("config.yml"), cfg).unwrap();
        let mut cache = Command::new("docker-registry");
        cache
            .arg("serve")
            .arg(d.join("config.yml"))
            .env_remove("REGISTRY_HTTP_ADDR");
        procs.push(Proc::spawn(cache, &d.join("cache.log")));
        let url = format!("http://127.0.0.1:{mport}");
        wait_http(&format!("{url}/v2/"), &d.join("cache.log"));
        Cache {
            _procs: procs,
            url,
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cache.log")).unwrap_or_default()
    }
}

/// The image: one layer of `FILES` incompressible 1 MiB files, its sidecar index published.
/// Returns the layer's digest.
fn publish(reg: &Registry) -> String {
    let mut l = Layer::new().dir("data");
    for i in 0..FILES {
        l = l.file(&format!("data/f{i}"), file(i));
    }
    let img = ImageBuilder::new().layer(l).build("v1");
    img.push(reg, "fill/app:v1");
    StrataEnv::new()
        .run(&["index", &format!("{}/fill/app:v1", reg.host()), "--push"])
        .assert_success();
    img.layers[0].digest.clone()
}

/// Bytes the registry wrote for GETs of blob `digest` (its `response completed` lines).
fn layer_bytes(reg: &Registry, digest: &str) -> u64 {
    reg.settle_logs();
    reg.log()
        .lines()
        .filter(|l| l.contains("response completed") && l.contains("http.request.method=GET"))
        .filter(|l| l.contains(&format!("/blobs/{digest}")))
        .filter_map(|l| {
            let rest = &l[l.find("http.response.written=")? + 22..];
            rest.split([' ', '"']).next()?.parse::<u64>().ok()
        })
        .sum()
}

/// `ROOTS` fresh roots with config `cfg` mount the image and read the `READ` files at once;
/// every byte is checked. Returns the roots (for their logs).
fn roots_read(reg: &Registry, cfg: serde_json::Value) -> Vec<StrataEnv> {
    let envs: Vec<StrataEnv> = (0..ROOTS)
        .map(|_| {
            let env = StrataEnv::new();
            env.write_config(&cfg);
            env
        })
        .collect();
    let reference = format!("{}/fill/app:v1", reg.host());
    let mounts: Vec<_> = envs
        .iter()
        .map(|e| e.mount(&reference, &["--no-prefetch"]))
        .collect();
    let dirs: Vec<PathBuf> = mounts.iter().map(|m| m.dir.clone()).collect();
    std::thread::scope(|s| {
        for dir in &dirs {
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
    drop(mounts);
    for env in &envs {
        env.stop_daemon();
    }
    envs
}

/// Three roots through a cold pull-through cache cost the registry at most what three roots
/// without a mirror cost it, and their reads are right.
#[test]
fn three_roots_wait_for_a_filling_pull_through_cache() {
    let reg = Registry::start();
    let layer = publish(&reg);
    let before = layer_bytes(&reg, &layer);
    roots_read(&reg, serde_json::json!({"prefetch": false}));
    let direct = layer_bytes(&reg, &layer) - before;

    let cache = Cache::start(&reg);
    let mark = layer_bytes(&reg, &layer);
    let t0 = Instant::now();
    let envs = roots_read(
        &reg,
        serde_json::json!({
            "prefetch": false,
            "registry-mirrors-by-host": { reg.host(): [cache.url.clone()] },
            "mirror-fill-wait": 20,
        }),
    );
    let took = t0.elapsed();
    // The cache's fill goes on after a root hangs up on its whole-blob answer: let it end.
    std::thread::sleep(Duration::from_millis(500));
    let through = layer_bytes(&reg, &layer) - mark;
    let logs: String = envs.iter().map(|e| e.daemon_logs()).collect();
    eprintln!(
        "layer bytes from the registry: {direct} without a mirror, {through} through the \
         pull-through cache ({took:?})"
    );
    assert!(
        through <= direct,
        "{through} layer bytes from the registry through the cache > {direct} without it\n\
         cache log:\n{}\nstrata logs:\n{logs}",
        cache.log()
    );
    assert!(logs.contains("is filling blob"), "{logs}");
    assert!(!logs.contains("going upstream"), "{logs}");
    // The roots read the layer from the cache, by range.
    let ranged = cache
        .log()
        .lines()
        .filter(|l| l.contains("response completed") && l.contains(&layer))
        .filter(|l| l.contains("http.response.status=206"))
        .count();
    assert!(ranged >= ROOTS, "{ranged} ranged answers of the layer");
}
