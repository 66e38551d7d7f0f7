//! `strata run` end to end: a busybox image in a real registry, mounted lazily over FUSE with a
//! per-container upper, run by real runc; lifecycle (detached, exec, stop/start keeps the
//! upper, rm unmounts and deletes) and docker's exit codes.

mod common;

use common::{busybox_image, Layer, OutputExt, Registry, StrataEnv};

fn image(reg: &Registry, repo_tag: &str) -> String {
    let img = busybox_image()
        .layer(
            Layer::new()
                .file("data/greeting", "hello from a lazy layer\n")
                .whiteout("etc/hostname"),
        )
        .env("GREETING=image");
    img.build("v1").push(reg, repo_tag);
    let reference = format!("{}/{repo_tag}", reg.host());
    StrataEnv::new()
        .run(&["index", &reference, "--push"])
        .assert_success();
    reference
}

fn mounts_under(dir: &std::path::Path) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let d = dir.to_string_lossy().to_string();
    info.lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&d)))
        .count()
}

#[test]
fn foreground_run_is_lazy_and_returns_the_exit_code() {
    let reg = Registry::start();
    let reference = image(&reg, "run/bb:v1");
    let env = StrataEnv::new();
    let out = env.run(&[
        "run",
        "--rm",
        "--timing",
        "-e",
        "EXTRA=1",
        &reference,
        "sh",
        "-c",
        "cat /data/greeting; echo $GREETING $EXTRA; test -e /etc/hostname-gone || true; exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", out.stderr_str());
    let stdout = out.stdout_str();
    assert!(stdout.contains("hello from a lazy layer"), "{stdout}");
    assert!(stdout.contains("image 1"), "{stdout}");
    assert!(
        out.stderr_str().contains("indexes: Sidecar,Sidecar"),
        "{}",
        out.stderr_str()
    );
    // No layer blob was pulled, and --rm left no container and no mount behind.
    for l in env.blob_hexes() {
        let p = env.blob_path(&format!("sha256:{l}"));
        assert!(
            std::fs::metadata(&p).unwrap().len() < 64 << 10,
            "a layer-sized blob was stored: {}",
            p.display()
        );
    }
    let left: Vec<_> = std::fs::read_dir(env.root().join("containers"))
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(left.is_empty(), "--rm left {left:?}");
    assert_eq!(mounts_under(&env.root()), 0);
}

#[test]
fn missing_command_is_127_and_bad_options_are_named() {
    let reg = Registry::start();
    let reference = image(&reg, "run/bb2:v1");
    let env = StrataEnv::new();
    let out = env.run(&["run", "--rm", &reference, "no-such-binary"]);
    assert_eq!(out.status.code(), Some(127), "{}", out.stderr_str());
    assert!(
        out.stderr_str().contains("no-such-binary"),
        "{}",
        out.stderr_str()
    );
    let out = env.run(&["run", "--rm", "--network", "mynet", &reference, "true"]);
    assert!(!out.status.success());
    assert!(
        out.stderr_str().contains("--network"),
        "{}",
        out.stderr_str()
    );
    assert_eq!(mounts_under(&env.root()), 0);
}

#[test]
fn detached_container_keeps_its_upper_across_stop_and_start() {
    detached_lifecycle("run/bb3:v1", &[], "fuse");
}

/// The same with the rootfs as kernel overlayfs over lazy layer views (`--kernel-overlay`).
#[test]
fn kernel_overlay_container_keeps_its_upper_across_stop_and_start() {
    detached_lifecycle("run/bb4:v1", &["--kernel-overlay"], "overlay");
}

/// A detached container that exits by itself has its network (slirp4netns and the pinned
/// namespace) ended by the daemon, whether its rootfs is the daemon's union mount or kernel
/// overlayfs over layer views; `rm` then finds nothing running.
#[test]
fn a_detached_container_that_exits_releases_its_network() {
    let reg = Registry::start();
    let reference = image(&reg, "run/bb5:v1");
    let env = StrataEnv::new();
    for (name, extra) in [("by-union", None), ("by-kovl", Some("--kernel-overlay"))] {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend(extra);
        args.extend_from_slice(&[&reference, "sh", "-c", "sleep 0.5; exit 3"]);
        let out = env.run(&args);
        out.assert_success();
        let id = out.stdout_str().trim().to_string();
        let net = std::path::Path::new("/run/strata/net").join(&id);
        assert!(
            net.exists(),
            "{name}: no network state at {}",
            net.display()
        );
        common::poll_until(
            "the container's network to end",
            std::time::Duration::from_secs(15),
            std::time::Duration::from_millis(100),
            || (!net.exists()).then_some(()),
        );
        let ps = env.run(&["ps", "-a"]).stdout_str();
        assert!(ps.contains("Exited (3)"), "{ps}");
        env.run(&["rm", name]).assert_success();
    }
    assert_eq!(mounts_under(&env.root()), 0);
    env.run(&["daemon", "--stop"]).assert_success();
}

/// A detached container run with `extra` options whose rootfs is a `fs_type` mount: its
/// upper survives stop and start, rm -f unmounts everything.
fn detached_lifecycle(repo_tag: &str, extra: &[&str], rootfs_type: &str) {
    let reg = Registry::start();
    let reference = image(&reg, repo_tag);
    let env = StrataEnv::new();
    // A failed assertion must not leave the container running.
    struct RemoveOnDrop<'a>(&'a StrataEnv);
    impl Drop for RemoveOnDrop<'_> {
        fn drop(&mut self) {
            let _ = self.0.run(&["rm", "-f", "keeper"]);
        }
    }
    let _cleanup = RemoveOnDrop(&env);
    let mut args = vec!["run", "-d", "--name", "keeper"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        &reference,
        "sh",
        "-c",
        "[ -e /state ] || { echo made > /state; rm /data/greeting; }; echo started; trap 'exit 0' TERM; while true; do sleep 0.2; done",
    ]);
    let out = env.run(&args);
    out.assert_success();
    let id = out.stdout_str().trim().to_string();
    assert_eq!(id.len(), 64, "{id}");
    let wait_log = |n: usize| {
        common::poll_until(
            "container log",
            std::time::Duration::from_secs(10),
            std::time::Duration::from_millis(100),
            || {
                let l = env.run(&["logs", "keeper"]).stdout_str();
                (l.matches("started").count() >= n).then_some(())
            },
        )
    };
    wait_log(1);
    let e = env.run(&["exec", "keeper", "cat", "/state"]);
    assert_eq!(e.stdout_str(), "made\n", "{}", e.stderr_str());
    let rootfs = env.root().join("containers").join(&id).join("rootfs");
    assert_eq!(common::fs_type(&rootfs).as_deref(), Some(rootfs_type));
    // The upper is in kernel-overlayfs format: a whiteout for the deleted lower file.
    let upper = env.root().join("containers").join(&id).join("upper");
    let wh = std::fs::symlink_metadata(upper.join("data/greeting")).unwrap();
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "not a whiteout"
    );
    env.run(&["stop", "-t", "5", "keeper"]).assert_success();
    let ps = env.run(&["ps", "-a"]).stdout_str();
    assert!(ps.contains("Exited (0)"), "{ps}");
    env.run(&["start", "keeper"]).assert_success();
    wait_log(2);
    let e = env.run(&["exec", "keeper", "sh", "-c", "cat /state; ls /data"]);
    assert_eq!(
        e.stdout_str(),
        "made\n",
        "upper lost across restart: {}",
        e.stderr_str()
    );
    let rm = env.run(&["rm", "keeper"]);
    assert!(
        !rm.status.success(),
        "rm of a running container must be refused"
    );
    env.run(&["rm", "-f", "keeper"]).assert_success();
    assert!(!env.root().join("containers").join(&id).exists());
    assert_eq!(mounts_under(&env.root()), 0);
}

/// docker-style size as `strata run --timing` prints it (decimal units, 3 significant digits):
/// the display rule, written again here so the test does not call strata's own.
fn human_size(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let (mut v, mut i) = (n as f64, 0);
    while v >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        return format!("{n}B");
    }
    let s = format!("{v:.3}");
    let s = if s.len() > 4 {
        s[..4].trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{}", UNITS[i])
}

/// The `run --timing` line's "fetched X of Y in N requests" against the registry's access log:
/// N is the number of Range requests the registry answered for the image's layers during the
/// run, X the bytes it sent for them, Y the image's compressed size.
#[test]
fn timing_line_counts_what_the_registry_sent() {
    let reg = Registry::start();
    let data = common::testdata::pseudo(3 << 20, 21);
    let img = busybox_image()
        .layer(Layer::new().dir("data").file("data/blob.bin", data.clone()))
        .build("v1");
    img.push(&reg, "run/timed:v1");
    let reference = format!("{}/run/timed:v1", reg.host());
    StrataEnv::new()
        .run(&["index", &reference, "--push"])
        .assert_success();
    let digests: Vec<String> = img.layers.iter().map(|l| l.digest.clone()).collect();
    let image_bytes: u64 = img.layers.iter().map(|l| l.size).sum();
    let env = StrataEnv::new();
    let mark = reg.served().len();
    let out = env.run(&[
        "run",
        "--rm",
        "--timing",
        "--no-prefetch",
        &reference,
        "sha256sum",
        "/data/blob.bin",
    ]);
    out.assert_success();
    let want = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&data))
    };
    assert!(out.stdout_str().starts_with(&want), "{}", out.stdout_str());
    let (gets, bytes) = reg.range_gets_since(mark, &digests);
    assert!(
        bytes >= (data.len() as u64) / 2,
        "reading 3 MiB fetched only {bytes} bytes"
    );
    let err = out.stderr_str();
    let line = err
        .lines()
        .find(|l| l.starts_with("strata: mounted in"))
        .unwrap_or_else(|| panic!("no timing line:\n{err}"));
    let tail = line.split("; fetched ").nth(1).expect("fetched part");
    let want_tail = format!(
        "{} of {} ({:.1}%) in {gets} requests",
        human_size(bytes),
        human_size(image_bytes),
        100.0 * bytes as f64 / image_bytes as f64
    );
    assert_eq!(tail, want_tail, "{line}");
}
