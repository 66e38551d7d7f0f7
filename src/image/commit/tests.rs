//! Unit tests for `commit`: overlay upper -> OCI layer rules (whiteouts, opaque dirs, hard
//! links, xattrs, devices), digests of stored layers, import format detection, config changes.

use super::*;
use std::collections::BTreeMap;
use std::os::unix::fs::symlink;

fn setxattr(p: &Path, name: &str, value: &[u8]) {
    let cp = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let cn = std::ffi::CString::new(name).unwrap();
    // SAFETY: NUL-terminated strings; value valid for value.len() bytes.
    let r = unsafe {
        libc::lsetxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr {name}: {}", std::io::Error::last_os_error());
}

fn mknod(p: &Path, kind: libc::mode_t, major: u32, minor: u32) {
    let cp = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: NUL-terminated path.
    let r = unsafe { libc::mknod(cp.as_ptr(), kind | 0o644, libc::makedev(major, minor)) };
    assert_eq!(r, 0, "mknod: {}", std::io::Error::last_os_error());
}

#[derive(Debug)]
struct Seen {
    kind: tar::EntryType,
    link: Option<String>,
    mode: u32,
    uid: u64,
    data: Vec<u8>,
    xattrs: BTreeMap<String, Vec<u8>>,
    dev: Option<(u32, u32)>,
}

fn read_tar(bytes: &[u8]) -> BTreeMap<String, Seen> {
    let mut out = BTreeMap::new();
    let mut a = tar::Archive::new(bytes);
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let mut xattrs = BTreeMap::new();
        if let Some(ext) = e.pax_extensions().unwrap() {
            for x in ext {
                let x = x.unwrap();
                if let Some(n) = x.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.insert(n.to_string(), x.value_bytes().to_vec());
                }
            }
        }
        let h = e.header().clone();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        let dev =
            matches!(h.entry_type(), tar::EntryType::Char | tar::EntryType::Block).then(|| {
                (
                    h.device_major().unwrap().unwrap(),
                    h.device_minor().unwrap().unwrap(),
                )
            });
        out.insert(
            path.trim_end_matches('/').to_string(),
            Seen {
                kind: h.entry_type(),
                link: e
                    .link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned()),
                mode: h.mode().unwrap(),
                uid: h.uid().unwrap(),
                data,
                xattrs,
                dev,
            },
        );
    }
    out
}

/// An upper dir in kernel-overlayfs format with one of everything.
fn sample_upper(dir: &Path) {
    std::fs::write(dir.join("a"), b"hello").unwrap();
    std::fs::set_permissions(dir.join("a"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::lchown(dir.join("a"), Some(1000), Some(1000)).unwrap();
    setxattr(&dir.join("a"), "user.note", b"kept");
    setxattr(&dir.join("a"), "trusted.overlay.origin", b"private");
    std::fs::hard_link(dir.join("a"), dir.join("b")).unwrap();
    symlink("a", dir.join("s")).unwrap();
    symlink("/etc", dir.join("escape")).unwrap();
    mknod(&dir.join("gone"), libc::S_IFCHR, 0, 0);
    std::fs::write(dir.join("gone2"), b"").unwrap();
    setxattr(&dir.join("gone2"), "trusted.overlay.whiteout", b"");
    std::fs::create_dir(dir.join("op")).unwrap();
    setxattr(&dir.join("op"), "trusted.overlay.opaque", b"y");
    std::fs::write(dir.join("op/x"), b"x").unwrap();
    std::fs::create_dir(dir.join("dx")).unwrap();
    setxattr(&dir.join("dx"), "trusted.overlay.opaque", b"x");
    mknod(&dir.join("dx/gone"), libc::S_IFCHR, 0, 0);
    mknod(&dir.join("null"), libc::S_IFCHR, 1, 3);
    mknod(&dir.join("p"), libc::S_IFIFO, 0, 0);
}

use std::os::unix::fs::PermissionsExt;

#[test]
fn upper_becomes_oci_layer() {
    let dir = tempfile::tempdir().unwrap();
    sample_upper(dir.path());
    let mut b = tar::Builder::new(Vec::new());
    let stats = walk::write_tree(dir.path(), Mode::Upper, &mut b).unwrap();
    let t = read_tar(&b.into_inner().unwrap());
    let names: Vec<&str> = t.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            ".wh.gone",
            ".wh.gone2",
            "a",
            "b",
            "dx",
            "dx/.wh.gone",
            "escape",
            "null",
            "op",
            "op/.wh..wh..opq",
            "op/x",
            "p",
            "s"
        ]
    );
    assert_eq!(stats.whiteouts, 3);
    assert_eq!(stats.opaque_dirs, 1);
    assert_eq!(stats.hardlinks, 1);
    let a = &t["a"];
    assert_eq!(
        (a.kind, a.mode, a.uid),
        (tar::EntryType::Regular, 0o640, 1000)
    );
    assert_eq!(a.data, b"hello");
    assert_eq!(
        a.xattrs.get("user.note").map(Vec::as_slice),
        Some(&b"kept"[..])
    );
    assert!(
        !a.xattrs.keys().any(|k| k.starts_with("trusted.overlay.")),
        "{:?}",
        a.xattrs
    );
    assert_eq!(t["b"].kind, tar::EntryType::Link);
    assert_eq!(t["b"].link.as_deref(), Some("a"));
    assert_eq!(t["s"].kind, tar::EntryType::Symlink);
    assert_eq!(t["escape"].link.as_deref(), Some("/etc"));
    assert_eq!(t["null"].kind, tar::EntryType::Char);
    assert_eq!(t["null"].dev, Some((1, 3)));
    assert_eq!(t["p"].kind, tar::EntryType::Fifo);
    assert_eq!(t["op"].kind, tar::EntryType::Directory);
    assert!(t["dx"].xattrs.is_empty(), "{:?}", t["dx"].xattrs);
}

#[test]
fn rootfs_export_keeps_devices_and_never_follows_links() {
    let dir = tempfile::tempdir().unwrap();
    sample_upper(dir.path());
    let mut b = tar::Builder::new(Vec::new());
    walk::write_tree(dir.path(), Mode::Rootfs, &mut b).unwrap();
    let t = read_tar(&b.into_inner().unwrap());
    assert_eq!(t["gone"].kind, tar::EntryType::Char);
    assert!(!t.contains_key(".wh.gone"));
    assert!(!t.contains_key("op/.wh..wh..opq"));
    assert!(!t.keys().any(|k| k.starts_with("escape/")));
}

#[test]
fn walk_refuses_a_root_that_is_not_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let e = walk::write_tree(&dir.path().join("f"), Mode::Upper, &mut b).unwrap_err();
    assert!(e.to_string().contains("not a directory"), "{e}");
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn stored_layer_has_matching_digest_and_diff_id() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let upper = tempfile::tempdir().unwrap();
    sample_upper(upper.path());
    let l = layer_from_upper(&store, upper.path(), OCI_LAYER_GZIP).unwrap();
    let blob = std::fs::read(store.blob_path(&l.descriptor.digest)).unwrap();
    assert_eq!(Digest::of(&blob), l.descriptor.digest);
    assert_eq!(blob.len() as u64, l.descriptor.size);
    assert_eq!(Digest::of(&gunzip(&blob)), l.diff_id);
    assert_eq!(
        std::fs::read_dir(root.path().join("tmp")).unwrap().count(),
        0
    );
    // A container that never wrote commits an empty layer.
    let empty = layer_from_upper(&store, &upper.path().join("missing"), OCI_LAYER_GZIP).unwrap();
    assert_eq!(empty.stats.entries, 0);
    assert!(store.has_blob(&empty.descriptor.digest));
}

fn small_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "file", &b"abc"[..]).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn import_detects_compression_and_rejects_non_tars() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap();
    let plain = small_tar();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&plain[..], 3).unwrap();
    let opts = CommitOptions {
        changes: vec![r#"CMD ["/file"]"#.into()],
        ..Default::default()
    };
    let mut ids = Vec::new();
    for input in [&plain, &gz, &zst] {
        let rec = import(&store, &mut &input[..], "test input", &opts).unwrap();
        assert!(rec.complete);
        assert_eq!(rec.layers.len(), 1);
        let (cfg, raw) = store.config(&rec).unwrap();
        assert_eq!(cfg.rootfs.diff_ids, vec![Digest::of(&plain)]);
        assert_eq!(cfg.os, "linux");
        assert_eq!(raw["config"]["Cmd"], json!(["/file"]));
        assert_eq!(cfg.history[0].created_by.as_deref(), Some("strata import"));
        let blob = std::fs::read(store.blob_path(&rec.layers[0].digest)).unwrap();
        assert_eq!(gunzip(&blob), plain);
        ids.push(rec.layers[0].digest);
    }
    assert_eq!(ids[0], ids[1]);
    for bad in [
        &b"this is not a tar archive at all"[..],
        &[0u8; 0][..],
        &[7u8; 1024][..],
    ] {
        let e = import(&store, &mut &bad[..], "junk.bin", &opts).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("junk.bin") && msg.contains("not a tar"),
            "{msg}"
        );
    }
    assert_eq!(
        std::fs::read_dir(root.path().join("tmp")).unwrap().count(),
        0
    );
}

#[test]
fn child_config_appends_layer_and_history() {
    let parent = json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Cmd": ["sh"], "Env": ["PATH=/bin", "A=1"] },
        "container_config": { "Cmd": ["old"] },
        "rootfs": { "type": "layers", "diff_ids": [Digest::of(b"l1").to_string()] },
        "history": [{ "created_by": "base" }],
        "x-unknown": 7
    });
    let opts = CommitOptions {
        message: Some("msg".into()),
        author: Some("me".into()),
        changes: vec!["ENV A=2 B=\"x y\"".into(), "WORKDIR /w".into()],
    };
    let d = Digest::of(b"l2");
    let c = child_config(parent, &d, "2024-01-01T00:00:00Z", "strata commit", &opts).unwrap();
    assert_eq!(c["rootfs"]["diff_ids"][1], json!(d.to_string()));
    assert_eq!(c["history"][1]["created_by"], json!("strata commit"));
    assert_eq!(c["history"][1]["comment"], json!("msg"));
    assert_eq!(c["history"][1]["author"], json!("me"));
    assert_eq!(c["author"], json!("me"));
    assert_eq!(c["x-unknown"], json!(7));
    assert!(c.get("container_config").is_none());
    assert_eq!(c["config"]["Env"], json!(["PATH=/bin", "A=2", "B=x y"]));
    assert_eq!(c["config"]["WorkingDir"], json!("/w"));
    assert_eq!(c["config"]["Cmd"], json!(["sh"]));
}

#[test]
fn changes_table() {
    let cases: &[(&str, &str, Value)] = &[
        (r#"CMD ["a", "b"]"#, "Cmd", json!(["a", "b"])),
        ("CMD echo hi", "Cmd", json!(["/bin/sh", "-c", "echo hi"])),
        (r#"entrypoint ["/e"]"#, "Entrypoint", json!(["/e"])),
        ("USER 1000:1000", "User", json!("1000:1000")),
        ("ENV K v w", "Env", json!(["K=v w"])),
        (
            "LABEL a=1 \"b\"=\"two words\"",
            "Labels",
            json!({"a": "1", "b": "two words"}),
        ),
        (
            "EXPOSE 80 53/udp",
            "ExposedPorts",
            json!({"80/tcp": {}, "53/udp": {}}),
        ),
        (r#"VOLUME ["/data"]"#, "Volumes", json!({"/data": {}})),
        ("STOPSIGNAL SIGINT", "StopSignal", json!("SIGINT")),
    ];
    for (change, key, want) in cases {
        let mut cfg = Map::new();
        apply_change(&mut cfg, change).unwrap();
        assert_eq!(&cfg[*key], want, "{change}");
    }
    for bad in ["RUN make", "CMD", r#"CMD ["unterminated"#, "LABEL a=1 b"] {
        let mut cfg = Map::new();
        let e = apply_change(&mut cfg, bad).unwrap_err().to_string();
        assert!(e.contains(bad.split_whitespace().next().unwrap()), "{e}");
    }
}
