//! `strata commit`, `export` and `import` end to end: a lazily run busybox container's changes
//! committed as a new layer, pushed, pulled back with skopeo and unpacked with umoci (an
//! independent OCI implementation) to check the whiteouts and new files; the committed image run
//! from a fresh root; export of an exited container; import of a tar built here; bad input.

mod common;

use common::{busybox_image, skopeo_copy, Entry, Layer, OutputExt, Registry, StrataEnv};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;

/// busybox plus a layer with files the container deletes; pushed and indexed (runs are lazy).
fn base_image(reg: &Registry, repo_tag: &str) -> String {
    busybox_image()
        .layer(
            Layer::new()
                .file("etc/motd", "welcome\n")
                .file("data/greeting", "hello\n")
                .file("data/sub/x", "x\n"),
        )
        .build("v1")
        .push(reg, repo_tag);
    let reference = format!("{}/{repo_tag}", reg.host());
    StrataEnv::new()
        .run(&["index", &reference, "--push"])
        .assert_success();
    reference
}

/// What the container does: a new file, a hard link, deletions of lower files (whiteouts), a
/// lower directory replaced by a new one (opaque), a new directory. (Not /etc/hostname: the
/// runtime bind-mounts it, so `rm` gets EBUSY inside the container, as under docker.)
const CHANGES: &str = "echo new > /added; ln /added /added-link; \
     rm /etc/motd; rm -r /data; mkdir -p /data /d; echo y > /data/only; echo x > /d/f; \
     chmod 600 /d/f";

fn run_changes(env: &StrataEnv, reference: &str, name: &str) {
    env.run(&["run", "--name", name, reference, "sh", "-c", CHANGES])
        .assert_success();
}

fn mounts_under(dir: &Path) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let d = dir.to_string_lossy().to_string();
    info.lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&d)))
        .count()
}

/// Path -> (entry type, contents) of every entry in a tar.
fn tar_entries(bytes: &[u8]) -> BTreeMap<String, (tar::EntryType, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut a = tar::Archive::new(bytes);
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.insert(p, (e.header().entry_type(), data));
    }
    out
}

/// Entries of the last layer of the single image in an OCI layout.
fn top_layer_entries(layout: &Path) -> BTreeMap<String, (tar::EntryType, Vec<u8>)> {
    let blob = |d: &str| std::fs::read(layout.join("blobs/sha256").join(&d[7..])).unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m: serde_json::Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3, "{m}");
    let gz = blob(layers[2]["digest"].as_str().unwrap());
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .read_to_end(&mut tar)
        .unwrap();
    tar_entries(&tar)
}

#[test]
fn commit_push_pull_back_with_skopeo_umoci_and_run_fresh() {
    let reg = Registry::start();
    let reference = base_image(&reg, "commit/base:v1");
    let env = StrataEnv::new();
    run_changes(&env, &reference, "c1");
    let committed = format!("{}/commit/app:committed", reg.host());
    let out = env.run(&[
        "commit",
        "-m",
        "added files",
        "--author",
        "Tester <t@example.com>",
        "-c",
        r#"CMD ["cat", "/added"]"#,
        "c1",
        &committed,
    ]);
    out.assert_success();
    let id = out.stdout_str().trim().to_string();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    // The lazily mounted parent's layers were fetched so that push works.
    assert!(
        out.stderr_str().contains("fetched 2 layer(s)"),
        "{}",
        out.stderr_str()
    );
    let hist = env.run(&["history", "--no-trunc", &committed]);
    hist.assert_success();
    assert!(
        hist.stdout_str().contains("strata commit"),
        "{}",
        hist.stdout_str()
    );
    assert!(
        hist.stdout_str().contains("added files"),
        "{}",
        hist.stdout_str()
    );
    env.run(&["push", &committed]).assert_success();

    // An independent client pulls it back and applies the layers.
    let layout = tempfile::tempdir().unwrap();
    skopeo_copy(
        &format!("docker://{committed}"),
        &format!("oci:{}:committed", layout.path().display()),
        None,
        None,
        &[],
    );
    // The new (last) layer speaks OCI: whiteout names, an opaque marker, no overlay xattrs.
    let top = top_layer_entries(layout.path());
    assert!(top.contains_key("etc/.wh.motd"), "{:?}", top.keys());
    assert!(top.contains_key("data/.wh..wh..opq"), "{:?}", top.keys());
    assert_eq!(top["added"].1, b"new\n");
    assert_eq!(top["added-link"].0, tar::EntryType::Link);
    assert!(
        !top.contains_key("bin/busybox"),
        "unchanged lower file in the new layer"
    );
    let bundle = tempfile::tempdir().unwrap();
    let b = bundle.path().join("b");
    let u = Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:committed", layout.path().display()))
        .arg(&b)
        .output()
        .unwrap();
    assert!(u.status.success(), "{}", String::from_utf8_lossy(&u.stderr));
    let rootfs = b.join("rootfs");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("added")).unwrap(),
        "new\n"
    );
    assert!(rootfs.join("bin/busybox").is_file());
    for gone in ["etc/motd", "data/greeting", "data/sub"] {
        assert!(!rootfs.join(gone).exists(), "{gone} survived the commit");
    }
    assert_eq!(
        std::fs::read_to_string(rootfs.join("data/only")).unwrap(),
        "y\n"
    );
    assert_eq!(std::fs::read_to_string(rootfs.join("d/f")).unwrap(), "x\n");
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::metadata(rootfs.join("d/f")).unwrap();
    assert_eq!(f.mode() & 0o777, 0o600);
    let (a, l) = (
        std::fs::metadata(rootfs.join("added")).unwrap(),
        std::fs::metadata(rootfs.join("added-link")).unwrap(),
    );
    assert_eq!(a.ino(), l.ino(), "hard link lost");

    // A fresh root runs the pushed image (lazily) and sees the change, with the new CMD.
    let fresh = StrataEnv::new();
    let r = fresh.run(&["run", "--rm", &committed]);
    r.assert_success();
    assert_eq!(r.stdout_str(), "new\n", "{}", r.stderr_str());
    let r = fresh.run(&[
        "run",
        "--rm",
        &committed,
        "sh",
        "-c",
        "cat /added; test -e /etc/motd || echo motd-gone; ls /data",
    ]);
    assert_eq!(
        r.stdout_str(),
        "new\nmotd-gone\nonly\n",
        "{}",
        r.stderr_str()
    );
    assert_eq!(mounts_under(&fresh.root()), 0);
}

#[test]
fn export_of_an_exited_container_is_its_flattened_rootfs() {
    let reg = Registry::start();
    let reference = base_image(&reg, "commit/exp:v1");
    let env = StrataEnv::new();
    run_changes(&env, &reference, "c1");
    let out = env.scratch().join("f.tar");
    env.run(&["export", "c1", "-o", out.to_str().unwrap()])
        .assert_success();
    let t = tar_entries(&std::fs::read(&out).unwrap());
    assert_eq!(t["added"].1, b"new\n");
    assert_eq!(t["added-link"].0, tar::EntryType::Link);
    assert_eq!(t["data/only"].1, b"y\n");
    assert_eq!(t["bin/busybox"].1, std::fs::read("/bin/busybox").unwrap());
    assert_eq!(t["bin/sh"].0, tar::EntryType::Symlink);
    for gone in ["etc/motd", "data/greeting", "data/sub"] {
        assert!(!t.contains_key(gone), "{gone} in the export");
    }
    assert!(
        !t.keys().any(|k| k.contains(".wh.")),
        "whiteouts in a flat export"
    );
    // The temporary mount for the export is gone again.
    assert_eq!(mounts_under(&env.root()), 0);
}

#[test]
fn import_a_tar_and_run_it() {
    let reg = Registry::start();
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let tar = Layer::new()
        .dir("bin")
        .add(Entry::file("bin/busybox", busybox).mode(0o755))
        .symlink("bin/cat", "busybox")
        .symlink("bin/sh", "busybox")
        .dir("etc")
        .file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
        .file("etc/group", "root:x:0:\n")
        .file("file", "imported\n")
        .tar_bytes();
    let env = StrataEnv::new();
    let plain = env.scratch().join("f.tar");
    std::fs::write(&plain, &tar).unwrap();
    let imp = format!("{}/x:imp", reg.host());
    let out = env.run(&[
        "import",
        "-c",
        r#"CMD ["cat", "/file"]"#,
        plain.to_str().unwrap(),
        &imp,
    ]);
    out.assert_success();
    assert!(
        out.stdout_str().starts_with("sha256:"),
        "{}",
        out.stdout_str()
    );
    let r = env.run(&["run", "--rm", &imp, "cat", "/file"]);
    assert_eq!(r.stdout_str(), "imported\n", "{}", r.stderr_str());
    let r = env.run(&["run", "--rm", &imp]);
    assert_eq!(r.stdout_str(), "imported\n", "{}", r.stderr_str());
    // zstd from stdin gives the same layer (same diff, stored gzip).
    let zst = zstd::encode_all(tar.as_slice(), 3).unwrap();
    let imp2 = format!("{}/x:zst", reg.host());
    env.run_stdin(&["import", "-", &imp2], &zst)
        .assert_success();
    let inspect = |r: &str| -> serde_json::Value {
        let o = env.run(&["inspect", r]);
        o.assert_success();
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let (a, b) = (inspect(&imp), inspect(&imp2));
    assert_eq!(a[0]["RootFS"]["diff_ids"], b[0]["RootFS"]["diff_ids"]);
    assert_eq!(b[0]["Os"], "linux");
    assert_eq!(
        b[0]["Layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
}

#[test]
fn bad_input_gives_clear_errors() {
    let env = StrataEnv::new();
    let out = env.run(&["commit", "nope", "localhost:5999/x:y"]);
    out.assert_failure();
    assert!(
        out.stderr_str().contains("No such container: nope"),
        "{}",
        out.stderr_str()
    );
    let out = env.run(&["export", "nope", "-o", "/dev/null"]);
    out.assert_failure();
    assert!(
        out.stderr_str().contains("No such container: nope"),
        "{}",
        out.stderr_str()
    );
    let junk = env.scratch().join("junk.bin");
    std::fs::write(&junk, b"certainly not a tar archive\n".repeat(40)).unwrap();
    let out = env.run(&["import", junk.to_str().unwrap(), "localhost:5999/x:y"]);
    out.assert_failure();
    let err = out.stderr_str();
    assert!(
        err.contains("junk.bin") && err.contains("not a tar archive"),
        "{err}"
    );
    let missing = env.scratch().join("missing.tar");
    let out = env.run(&["import", missing.to_str().unwrap(), "localhost:5999/x:y"]);
    out.assert_failure();
    assert!(
        out.stderr_str().contains("missing.tar"),
        "{}",
        out.stderr_str()
    );
    let out = env.run(&["import", "-c", "RUN make", "-", "localhost:5999/x:y"]);
    out.assert_failure();
    assert!(
        out.stderr_str().contains("unsupported instruction"),
        "{}",
        out.stderr_str()
    );
    // Nothing was recorded.
    let images = env.run(&["images", "-q"]);
    assert_eq!(images.stdout_str().trim(), "");
}
