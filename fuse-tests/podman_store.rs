//! strata as podman's additional layer store (issue 18, part 2): Debian's podman 4.3
//! (containers/storage 1.43, containers/image 5.23; runc, cgroupfs, lowered ulimits as
//! PLATFORM.md says) in a throwaway storage root whose storage.conf has
//! `additionallayerstores = ["DIR:ref"]`, DIR being `strata store mount DIR` of the test's
//! daemon; images come from the real docker-registry the harness starts.
//!
//! - `podman run REF cat FILE` of a ~200 MB indexed image: the registry sends less than 10%
//!   of the image's bytes from the pull on (podman skips every layer: "already exists"), no
//!   whole-blob GET of a layer, and podman's layers are symlinks into DIR.
//! - The container sees what kernel overlayfs makes of the layer views: a whiteout hides a
//!   file, an opaque directory hides what is below.
//! - `info` is the layer JSON containers/storage decodes; `blob` reads the compressed blob;
//!   a user other than root cannot look a layer up.
//! - After `strata daemon restart` the store is mounted again and a new container of the
//!   stored image starts and reads a file nobody read before; so does one after a kill -9 of
//!   the server, and one after the whole
//!   daemon was stopped and started (the store is mounted from its list, views on lookup).
//! - An image without a lazy index: the store answers ENOENT, podman pulls it itself and runs
//!   it.
//! - `podman rmi` releases the layers (containers/storage's rmdir is answered ENOENT) and
//!   `strata store umount DIR` ends the store.

mod common;

use common::testdata::pseudo;
use common::{busybox_image, Layer, OutputExt, Registry, StrataEnv};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

/// podman on a private storage root configured by a storage.conf of the test's own.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new(store: &Path) -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("strata-podman-als-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let d = dir.path();
        let conf = format!(
            "[storage]\ndriver = \"overlay\"\nrunroot = \"{run}\"\ngraphroot = \"{graph}\"\n\
             [storage.options]\nadditionallayerstores = [\"{store}:ref\"]\n",
            run = d.join("run").display(),
            graph = d.join("storage").display(),
            store = store.display(),
        );
        std::fs::write(d.join("storage.conf"), conf).expect("storage.conf");
        Podman { dir }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("timeout");
        c.args(["-k", "5", "300", "podman", "--tmpdir"])
            .arg(d.join("tmp"))
            .args([
                "--runtime",
                "runc",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .args(args)
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run podman")
    }

    /// The `diff` of every layer podman stored: (layer dir, symlink target if a symlink).
    fn layer_diffs(&self) -> Vec<(PathBuf, Option<PathBuf>)> {
        let overlay = self.dir.path().join("storage/overlay");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&overlay).into_iter().flatten().flatten() {
            let diff = e.path().join("diff");
            if e.file_name() == "l" || std::fs::symlink_metadata(&diff).is_err() {
                continue;
            }
            out.push((e.path(), std::fs::read_link(&diff).ok()));
        }
        out
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-af"]);
        let _ = self.run(&["rmi", "-af"]);
        let ours = self.dir.path().to_string_lossy().to_string();
        let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&ours))
            .collect();
        for m in mounts.iter().rev() {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

const RUN_OPTS: [&str; 7] = [
    "--rm",
    "--tls-verify=false",
    "--network",
    "none",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit=nproc=4096:4096",
];

#[test]
fn podman_runs_an_indexed_image_lazily_through_the_additional_layer_store() {
    let reg = Registry::start();
    let host = reg.host();
    // ~200 MB of incompressible data in one layer, then a layer with a whiteout and an
    // opaque directory over it.
    let (total, layer_digests) = {
        let mut data = Layer::new()
            .dir("data")
            .dir("data/old")
            .file("data/old/a", "a");
        for i in 0..8 {
            data = data.file(&format!("data/f{i}"), pseudo(25 << 20, 200 + i));
        }
        data = data.file("data/hello.txt", "hello from a lazy layer\n");
        let top = Layer::new()
            .dir("data")
            .whiteout("data/f7")
            .opaque("data/old")
            .file("data/old/b", "b");
        let img = busybox_image().layer(data).layer(top).build("v1");
        img.push(&reg, "big:v1");
        let total: u64 = img.layers.iter().map(|l| l.size).sum();
        (total, img.layer_digests())
    };
    assert!(total > 200_000_000, "image of {total} bytes");
    // An image without a lazy index (a layer of its own: the busybox layer is shared).
    busybox_image()
        .layer(Layer::new().file("plain.txt", "plain\n"))
        .cmd(&["cat", "/plain.txt"])
        .build("v1")
        .push(&reg, "plain:v1");
    let reference = format!("{host}/big:v1");
    StrataEnv::new()
        .run(&["index", &reference, "--push"])
        .assert_success();

    // A fresh root: the sidecar index comes from the registry.
    let env = StrataEnv::new();
    env.write_config(&serde_json::json!({"prefetch": false}));
    env.run(&["daemon"]).assert_success();
    let store = env.scratch().join("als");
    std::fs::create_dir_all(&store).unwrap();
    let store_s = store.display().to_string();
    let out = env.run(&["store", "mount", &store_s]);
    out.assert_success();
    let podman = Podman::new(&store);
    let fail = |what: &str, out: &Output| -> ! {
        panic!(
            "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}\n--- strata daemon log\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            env.daemon_logs()
        )
    };

    let mark = reg.served().len();
    let t0 = Instant::now();
    let mut args: Vec<&str> = vec!["run"];
    args.extend(RUN_OPTS);
    args.extend([
        reference.as_str(),
        "sh",
        "-c",
        "cat /data/hello.txt; ls /data/old; test -e /data/f7 || echo f7-gone",
    ]);
    let out = podman.run(&args);
    let ran_ms = t0.elapsed().as_millis();
    if !out.status.success() {
        fail("podman run", &out);
    }
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from a lazy layer\nb\nf7-gone\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // containers/storage warns when creating `use` or removing a layer directory is not
    // answered ENOENT ("GC doesn't seem to be supported").
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("podman run's stderr:\n{stderr}");
    assert!(!stderr.contains("Additional Layer Store"), "{stderr}");
    let sent: u64 = reg.served().iter().skip(mark).map(|s| s.bytes).sum();
    eprintln!(
        "podman run (pull included) {ran_ms} ms; registry sent {sent} of {total} bytes ({:.2}%)",
        sent as f64 * 100.0 / total as f64
    );
    assert!(
        sent * 10 < total,
        "registry sent {sent} bytes of a {total}-byte image\n{}",
        env.daemon_logs()
    );
    for s in reg.served().iter().skip(mark) {
        if layer_digests.iter().any(|d| s.uri.ends_with(d.as_str())) {
            assert_eq!(s.status, 206, "whole-blob GET of a lazy layer: {s:?}");
        }
    }
    if std::env::var_os("PODMAN_STORE_COMPARE").is_some() {
        // For docs/integrations.md: the same run by a podman without the store (pulls).
        let classic = Podman::new(&store);
        let conf = classic.dir.path().join("storage.conf");
        let text = std::fs::read_to_string(&conf).unwrap();
        let text = text.replace("additionallayerstores", "# additionallayerstores");
        std::fs::write(&conf, text).unwrap();
        let t = Instant::now();
        let out = classic.run(&args);
        assert!(out.status.success(), "classic podman run: {out:?}");
        eprintln!(
            "podman run without the store (pull + run): {} ms",
            t.elapsed().as_millis()
        );
    }
    // podman's layers are the store's: their diff is a symlink into DIR.
    let diffs = podman.layer_diffs();
    let additional = diffs
        .iter()
        .filter(|(_, t)| t.as_ref().is_some_and(|t| t.starts_with(&store)))
        .count();
    assert_eq!(
        additional,
        layer_digests.len(),
        "podman's layers: {diffs:?}"
    );
    // info as containers/storage reads it.
    let b64 = base64_std(reference.as_bytes());
    let info: serde_json::Value = serde_json::from_slice(
        &std::fs::read(store.join(&b64).join(&layer_digests[1]).join("info")).expect("info"),
    )
    .expect("info is JSON");
    assert_eq!(info["compressed-diff-digest"], layer_digests[1].as_str());
    assert_eq!(info["compression"], 2);
    assert!(
        info["diff-size"].as_u64().is_some_and(|n| n > 200_000_000),
        "{info}"
    );
    // Only root may look layers up (they resolve with the daemon's credentials).
    let nobody = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "stat"])
        .arg(store.join(&b64).join(&layer_digests[1]).join("info"))
        .output()
        .expect("setpriv");
    assert!(
        !nobody.status.success(),
        "a non-root user looked a layer up"
    );
    // blob: the compressed bytes (a gzip member starts 1f 8b), read from the registry.
    let mut head = [0u8; 2];
    std::io::Read::read_exact(
        &mut std::fs::File::open(store.join(&b64).join(&layer_digests[1]).join("blob"))
            .expect("blob"),
        &mut head,
    )
    .expect("read blob");
    assert_eq!(head, [0x1f, 0x8b]);

    // A restart of the daemon: the store is mounted again by the new server, layer views are
    // handed over; a new container of the stored image starts (its lower directories
    // resolve through the store again) and reads a file nobody read before.
    env.run(&["daemon", "restart"]).assert_success();
    common::poll_until(
        "the store mounted again",
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(50),
        || {
            std::fs::metadata(store.join(&b64).join(&layer_digests[1]).join("diff"))
                .ok()
                .map(|_| ())
        },
    );
    let mut args: Vec<&str> = vec!["run"];
    args.extend(RUN_OPTS);
    args.extend([
        reference.as_str(),
        "sh",
        "-c",
        "head -c 4096 /data/f3 | wc -c",
    ]);
    let out = podman.run(&args);
    if !out.status.success() {
        fail("podman run after a daemon restart", &out);
    }
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "4096");

    // A kill -9 of the server: the supervisor starts a new one with the views' connections;
    // the store's connection died with the old server and is mounted again.
    let root = env.root();
    let pid: i32 = std::fs::read_to_string(root.join("daemon.pid"))
        .expect("daemon.pid")
        .trim()
        .parse()
        .expect("pid");
    // SAFETY: kill(2) of the server this test's daemon runs (its pid file).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    common::poll_until(
        "a new server with the store mounted",
        std::time::Duration::from_secs(60),
        std::time::Duration::from_millis(50),
        || {
            let now = std::fs::read_to_string(root.join("daemon.pid")).ok()?;
            (now.trim() != pid.to_string()).then_some(())?;
            std::fs::metadata(store.join(&b64).join(&layer_digests[1]).join("diff"))
                .ok()
                .map(|_| ())
        },
    );
    let mut args: Vec<&str> = vec!["run"];
    args.extend(RUN_OPTS);
    args.extend([
        reference.as_str(),
        "sh",
        "-c",
        "head -c 4096 /data/f5 | wc -c",
    ]);
    let out = podman.run(&args);
    if !out.status.success() {
        fail("podman run after a kill -9 of the server", &out);
    }
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "4096");

    // The whole daemon stopped (views and store end) and started again: the new daemon
    // mounts the store from its list, and the first lookup mounts the layer view again.
    env.run(&["daemon", "--stop"]).assert_success();
    common::poll_until(
        "the daemon gone",
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(50),
        || (!env.root().join("strata.sock").exists()).then_some(()),
    );
    env.run(&["daemon"]).assert_success();
    common::poll_until(
        "the store mounted by the new daemon",
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(50),
        || {
            std::fs::metadata(store.join(&b64).join(&layer_digests[1]).join("diff"))
                .ok()
                .map(|_| ())
        },
    );
    let mut args: Vec<&str> = vec!["run"];
    args.extend(RUN_OPTS);
    args.extend([
        reference.as_str(),
        "sh",
        "-c",
        "head -c 4096 /data/f4 | wc -c",
    ]);
    let out = podman.run(&args);
    if !out.status.success() {
        fail("podman run after the daemon was stopped and started", &out);
    }
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "4096");

    // No lazy index: podman pulls the image itself.
    let plain = format!("{host}/plain:v1");
    let mut args: Vec<&str> = vec!["run"];
    args.extend(RUN_OPTS);
    args.push(plain.as_str());
    let out = podman.run(&args);
    if !out.status.success() {
        fail("podman run of an image without index", &out);
    }
    assert_eq!(String::from_utf8_lossy(&out.stdout), "plain\n");
    let extracted = podman
        .layer_diffs()
        .iter()
        .filter(|(_, t)| t.is_none())
        .count();
    assert!(extracted >= 1, "the plain image's layer was not extracted");

    // Removing the image releases the layers; the store then unmounts.
    let out = podman.run(&["rmi", "-f", &reference]);
    if !out.status.success() {
        fail("podman rmi", &out);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("Additional Layer Store"), "{stderr}");
    env.run(&["store", "umount", &store_s]).assert_success();
    let still = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(store_s.as_str()));
    assert!(!still, "the store is still mounted");
}

fn base64_std(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
