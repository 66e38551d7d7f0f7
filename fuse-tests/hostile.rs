//! Hostile input: layers, TOCs, manifests and index artifacts crafted to attack strata, pushed
//! to a real registry and fed to `strata index` / `strata mount`, plus a deterministic
//! mutation smoke run over every parser entry point that the cargo-fuzz targets use
//! (`fuzz/src/lib.rs`, included below). Each case must end in a clear error naming the layer
//! and entry (or in correct behaviour), never a panic, never a wrong byte, never a write
//! outside strata's directories, and with memory bounded.

mod common;
use common::cli::Mounted;
use common::testdata::XorShift64;
#[path = "../fuzz/src/lib.rs"]
mod fuzz_entry;

use common::{http, Entry, Fault, FaultProxy, ImageBuilder, Layer, OutputExt, Registry, StrataEnv};
use serde_json::json;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const MT_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

// ---------------------------------------------------------------------------------------------
// Raw tar and image construction (no normalisation: names go into the tar exactly as given).

/// One ustar header. `size` is written in octal (or base-256 when it does not fit).
fn header(name: &str, typeflag: u8, size: u64, link: &str) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.as_bytes();
    assert!(n.len() <= 100, "use a PAX path for {name}");
    h[..n.len()].copy_from_slice(n);
    let mode = if typeflag == b'5' {
        "0000755\0"
    } else {
        "0000644\0"
    };
    h[100..108].copy_from_slice(mode.as_bytes());
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    if size < 0o77777777777 {
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    } else {
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    h[136..148].copy_from_slice(b"14534000000\0");
    h[156] = typeflag;
    let l = link.as_bytes();
    h[157..157 + l.len()].copy_from_slice(l);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A tar member: header + data padded to 512.
fn member(name: &str, typeflag: u8, data: &[u8], link: &str) -> Vec<u8> {
    let mut v = header(name, typeflag, data.len() as u64, link).to_vec();
    v.extend_from_slice(data);
    v.resize(v.len().div_ceil(512) * 512, 0);
    v
}

fn file(name: &str, data: &[u8]) -> Vec<u8> {
    member(name, b'0', data, "")
}

fn dir(name: &str) -> Vec<u8> {
    member(name, b'5', b"", "")
}

/// Members + end-of-archive.
fn tar(members: &[Vec<u8>]) -> Vec<u8> {
    let mut v: Vec<u8> = members.concat();
    v.extend_from_slice(&[0u8; 1024]);
    v
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Monolithic blob upload; returns the digest.
fn upload(reg: &Registry, repo: &str, data: &[u8]) -> String {
    let digest = common::sha256_digest(data);
    let r = http::request(
        &reg.host(),
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(r.status, 202, "POST upload: {}", r.text());
    let loc = r.header("location").expect("upload Location").to_string();
    let path = match loc.find("/v2/") {
        Some(i) => loc[i..].to_string(),
        None => loc,
    };
    let sep = if path.contains('?') { '&' } else { '?' };
    let r = http::request(
        &reg.host(),
        "PUT",
        &format!("{path}{sep}digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        data,
    )
    .unwrap();
    assert_eq!(r.status, 201, "PUT blob: {}", r.text());
    digest
}

/// PUT a manifest; returns (status, body text).
fn put_manifest(
    reg: &Registry,
    repo: &str,
    reference: &str,
    media: &str,
    body: &[u8],
) -> (u16, String) {
    let r = http::request(
        &reg.host(),
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Content-Type", media)],
        body,
    )
    .unwrap();
    (r.status, r.text())
}

/// A layer as pushed: blob, media type, uncompressed tar (for the diff_id), annotations.
struct RawLayer {
    blob: Vec<u8>,
    media: &'static str,
    tar: Vec<u8>,
    annotations: Option<serde_json::Value>,
}

impl RawLayer {
    fn plain(tar: Vec<u8>) -> RawLayer {
        RawLayer {
            blob: tar.clone(),
            media: MT_TAR,
            tar,
            annotations: None,
        }
    }

    fn gzip(tar: Vec<u8>) -> RawLayer {
        RawLayer {
            blob: gzip(&tar),
            media: MT_GZIP,
            tar,
            annotations: None,
        }
    }
}

/// What [`push_image`] pushed.
struct Pushed {
    reference: String,
    manifest: Vec<u8>,
    manifest_digest: String,
    layer_digests: Vec<String>,
}

/// Push an image made of `layers` as `repo:tag` over plain HTTP (no skopeo: lets a test
/// push layers no tool would produce). `extra` is merged into the manifest JSON.
fn push_image(
    reg: &Registry,
    repo: &str,
    tag: &str,
    layers: &[RawLayer],
    extra: serde_json::Value,
) -> Pushed {
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut layer_digests = Vec::new();
    for l in layers {
        let d = upload(reg, repo, &l.blob);
        let mut desc = json!({"mediaType": l.media, "digest": d, "size": l.blob.len()});
        if let Some(a) = &l.annotations {
            desc["annotations"] = a.clone();
        }
        descs.push(desc);
        diff_ids.push(common::sha256_digest(&l.tar));
        layer_digests.push(d);
    }
    let config = serde_json::to_vec(&json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let cd = upload(reg, repo, &config);
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": descs,
    });
    if let serde_json::Value::Object(x) = extra {
        for (k, v) in x {
            m[k] = v;
        }
    }
    let body = serde_json::to_vec(&m).unwrap();
    let (status, text) = put_manifest(reg, repo, tag, MT_MANIFEST, &body);
    assert_eq!(status, 201, "PUT manifest: {text}");
    Pushed {
        reference: format!("{}/{repo}:{tag}", reg.host()),
        manifest_digest: common::sha256_digest(&body),
        manifest: body,
        layer_digests,
    }
}

// ---------------------------------------------------------------------------------------------
// Running strata.

/// A mount that is unmounted (lazily if need be) when dropped.
/// `strata mount REF <scratch>/mnt --no-prefetch [extra]`; the output and, on success, a guard.
fn try_mount<'a>(
    env: &'a StrataEnv,
    reference: &str,
    extra: &[&str],
) -> (std::process::Output, Option<Mounted<'a>>) {
    env.try_mount_at(
        reference,
        &env.mnt_dir(),
        &[&["--no-prefetch"], extra].concat(),
    )
}

/// Every log strata wrote under its root (mount daemons) plus `extra` output.
fn assert_no_panic(env: &StrataEnv, outputs: &[&std::process::Output]) {
    let mut text = String::new();
    for o in outputs {
        text.push_str(&o.stderr_str());
        text.push_str(&o.stdout_str());
    }
    text.push_str(&env.daemon_logs());
    assert!(
        !text.contains("panicked") && !text.contains("panic:"),
        "strata panicked:\n{text}"
    );
}

/// The serving processes' logs.
fn daemon_logs(env: &StrataEnv) -> String {
    env.daemon_logs()
}

/// Files (recursively) below `dir` whose name is `name`.
fn find_named(dir: &Path, name: &str, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_name() == name {
            out.push(p.clone());
        }
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            find_named(&p, name, out);
        }
    }
}

/// Nothing named `name` anywhere in the test's tempdir tree except below `allowed`.
fn assert_nothing_outside(env: &StrataEnv, name: &str, allowed: Option<&Path>) {
    let top = env.root().parent().unwrap().to_path_buf();
    let mut found = Vec::new();
    find_named(&top, name, &mut found);
    for p in [
        top.parent().unwrap().join(name),
        PathBuf::from("/").join(name),
    ] {
        if p.exists() {
            found.push(p);
        }
    }
    found.retain(|p| allowed.is_none_or(|a| !p.starts_with(a)));
    // The mount itself shows the union (whose upper holds the file): not "outside".
    found.retain(|p| !p.starts_with(env.scratch().join("mnt")));
    assert!(found.is_empty(), "written outside strata's dirs: {found:?}");
}

// ---------------------------------------------------------------------------------------------
// Path attacks.

#[test]
fn dotdot_and_absolute_paths_are_refused_naming_layer_and_entry() {
    let reg = Registry::start();
    for (repo, bad) in [
        ("hostile/dotdot", "../../../strata-escape-dotdot"),
        ("hostile/abs", "/tmp/strata-escape-abs"),
        ("hostile/inner", "etc/../../strata-escape-inner"),
    ] {
        let t = tar(&[dir("etc/"), file("etc/ok", b"fine"), file(bad, b"pwned")]);
        let p = push_image(&reg, repo, "v1", &[RawLayer::gzip(t)], json!({}));
        let env = StrataEnv::new();
        let idx = env.run(&["index", &p.reference]);
        idx.assert_failure();
        let err = idx.stderr_str();
        assert!(
            err.contains(&p.layer_digests[0][7..19]) && err.contains(bad),
            "index error must name the layer and the entry {bad:?}:\n{err}"
        );
        let (out, m) = try_mount(&env, &p.reference, &[]);
        assert!(m.is_none(), "mounted a layer with {bad:?}");
        let err = out.stderr_str();
        assert!(
            err.contains(bad) && (err.contains("'..'") || err.contains("absolute")),
            "{err}"
        );
        assert_no_panic(&env, &[&idx, &out]);
        let name = bad.rsplit('/').next().unwrap();
        assert_nothing_outside(&env, name, None);
        assert!(!Path::new("/tmp/strata-escape-abs").exists());
    }
}

/// Hard link to a missing target, hard link out of the layer, duplicate entries (last wins,
/// as `tar -x`), a file replaced by a directory: index and mount behave, nothing panics.
#[test]
fn links_and_duplicates() {
    let reg = Registry::start();
    // Hard link escaping the root is refused with the entry named.
    let t = tar(&[
        dir("etc/"),
        member("etc/shadow-link", b'1', b"", "../../etc/shadow"),
    ]);
    let p = push_image(&reg, "hostile/hlout", "v1", &[RawLayer::gzip(t)], json!({}));
    let env = StrataEnv::new();
    let (out, m) = try_mount(&env, &p.reference, &[]);
    assert!(m.is_none());
    assert!(
        out.stderr_str().contains("etc/shadow-link"),
        "{}",
        out.stderr_str()
    );
    assert_no_panic(&env, &[&out]);

    // Missing hard link target + duplicates.
    let t = tar(&[
        dir("etc/"),
        member("etc/dangling", b'1', b"", "etc/not-there"),
        file("etc/dup", b"first version"),
        file("etc/dup", b"second, longer version"),
        file("etc/becomes-dir", b"x"),
        dir("etc/becomes-dir/"),
        file("etc/becomes-dir/inner", b"inner"),
        file("etc/ok", b"ok"),
    ]);
    let p = push_image(&reg, "hostile/links", "v1", &[RawLayer::gzip(t)], json!({}));
    let env = StrataEnv::new();
    let (out, m) = try_mount(&env, &p.reference, &[]);
    let msg = format!("{}{}", out.stdout_str(), out.stderr_str());
    match &m {
        None => assert!(msg.contains("etc/dangling"), "{msg}"),
        Some(m) => {
            let d = &m.dir;
            assert_eq!(
                std::fs::read(d.join("etc/dup")).unwrap(),
                b"second, longer version"
            );
            assert_eq!(
                std::fs::read(d.join("etc/becomes-dir/inner")).unwrap(),
                b"inner"
            );
            assert_eq!(std::fs::read(d.join("etc/ok")).unwrap(), b"ok");
            // The dangling link is either absent or an error; never bytes of another file.
            match std::fs::read(d.join("etc/dangling")) {
                Ok(b) => assert!(b.is_empty(), "dangling hard link read {b:?}"),
                Err(e) => assert!(
                    matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT) | Some(libc::EIO) | Some(libc::EINVAL)
                    ),
                    "{e}"
                ),
            }
            // The daemon survived.
            assert_eq!(std::fs::read(d.join("etc/ok")).unwrap(), b"ok");
        }
    }
    assert_no_panic(&env, &[&out]);
}

/// Huge PAX header, size claimed far beyond the blob: refused quickly, naming the offset or
/// the entry; memory stays small.
#[test]
fn huge_pax_header_and_claimed_size_beyond_blob() {
    let reg = Registry::start();
    // A PAX header claiming 64 GiB of records.
    let mut pax = header("PaxHeaders/huge", b'x', 64 << 30, "").to_vec();
    pax.extend_from_slice(&[b'9'; 512]);
    let t1 = [dir("etc/"), pax].concat();
    // A real PAX path record of ~900 KiB (under the 1 MiB limit): accepted or refused clearly.
    let long = format!("etc/{}", "a".repeat(200));
    let rec = |k: &str, v: &str| {
        let body = format!(" {k}={v}\n");
        let mut n = body.len() + 1;
        while format!("{n}{body}").len() != n {
            n = format!("{n}{body}").len();
        }
        format!("{n}{body}")
    };
    let records = format!(
        "{}{}",
        rec("path", &long),
        rec("comment", &"c".repeat(900 << 10))
    );
    let t2 = tar(&[
        dir("etc/"),
        member("PaxHeaders/x", b'x', records.as_bytes(), ""),
        file("placeholder", b"long name data"),
    ]);
    // A file claiming 1 TiB in a small blob.
    let mut t3 = [dir("etc/"), header("etc/liar", b'0', 1 << 40, "").to_vec()].concat();
    t3.extend_from_slice(&[7u8; 4096]);
    for (repo, t, want) in [
        ("hostile/pax", t1, "PAX"),
        ("hostile/paxlong", t2, ""),
        ("hostile/liar", t3, "etc/liar"),
    ] {
        let p = push_image(&reg, repo, "v1", &[RawLayer::gzip(t)], json!({}));
        let env = StrataEnv::new();
        let started = Instant::now();
        let (out, m) = try_mount(&env, &p.reference, &[]);
        assert!(started.elapsed() < Duration::from_secs(20));
        let err = out.stderr_str();
        if want.is_empty() {
            // The long-name entry: mounted with the PAX path, or refused with a clear error.
            match &m {
                Some(m) => assert_eq!(std::fs::read(m.dir.join(&long)).unwrap(), b"long name data"),
                None => assert!(err.contains("PAX") || err.contains("pax"), "{err}"),
            }
        } else {
            assert!(m.is_none(), "{repo} mounted");
            assert!(
                err.contains(want) && err.contains(&p.layer_digests[0][7..19]),
                "{repo}: error must name {want:?} and the layer:\n{err}"
            );
        }
        assert_no_panic(&env, &[&out]);
    }
}

/// Peak RSS (kB) of one strata run, via `/usr/bin/time -v`.
fn strata_max_rss(env: &StrataEnv, args: &[&str]) -> (std::process::Output, u64) {
    let base = env.command(args);
    let mut cmd = std::process::Command::new("/usr/bin/time");
    cmd.arg("-v").arg(common::cli::STRATA_BIN).args(args);
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd.output().expect("run /usr/bin/time");
    let rss = out
        .stderr_str()
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes):")
                .map(|v| v.trim().parse::<u64>().unwrap())
        })
        .expect("time -v output");
    (out, rss)
}

/// A layer of 256 MiB of zeros (about 250 KiB gzip): indexing streams it with memory bounded,
/// and the library's bomb guard stops at its limit.
#[test]
fn gzip_bomb_memory_is_bounded() {
    const ZEROS: u64 = 256 << 20;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&dir("etc/")).unwrap();
    enc.write_all(&header("bomb", b'0', ZEROS, "")).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..(ZEROS >> 20) {
        enc.write_all(&zeros).unwrap();
    }
    enc.write_all(&[0u8; 1024]).unwrap();
    let blob = enc.finish().unwrap();
    assert!(blob.len() < 2 << 20, "bomb is {} bytes", blob.len());

    // Library guard: a limit below the output is an error, not an allocation.
    let opts = strata::layer::BuildOptions {
        max_uncompressed: 16 << 20,
        ..Default::default()
    };
    let e = strata::layer::scan(
        std::io::Cursor::new(&blob),
        strata::layer::Compression::Gzip,
        &opts,
    )
    .expect_err("bomb over the limit must fail");
    assert!(e.to_string().contains("limit"), "{e}");

    let reg = Registry::start();
    let layer = RawLayer {
        blob,
        media: MT_GZIP,
        tar: Vec::new(),
        annotations: None,
    };
    // diff_id of the tar is not checked by index; compute it anyway for a valid config.
    let p = push_image(&reg, "hostile/bomb", "v1", &[layer], json!({}));
    let env = StrataEnv::new();
    let (out, rss_kb) = strata_max_rss(&env, &["index", &p.reference]);
    out.assert_success();
    assert!(
        rss_kb < 200 << 10,
        "indexing a 256 MiB layer peaked at {rss_kb} kB RSS"
    );
    assert_no_panic(&env, &[&out]);
}

// ---------------------------------------------------------------------------------------------
// Symlinks pointing outside + writes through the upper.

/// openat2(dirfd, path, O_CREAT|O_WRONLY, RESOLVE_IN_ROOT): how a container (rooted at the
/// mount) sees the path. Returns the fd or the errno.
fn create_in_root(root: &Path, rel: &str) -> Result<std::fs::File, i32> {
    use std::ffi::CString;
    use std::os::fd::FromRawFd;
    let rootf = std::fs::File::open(root).unwrap();
    let c = CString::new(rel).unwrap();
    // SAFETY: open_how is plain old data; all-zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC) as u64;
    how.mode = 0o644;
    how.resolve = libc::RESOLVE_IN_ROOT;
    use std::os::fd::AsRawFd;
    // EAGAIN: a mount or rename anywhere on the machine (other tests mount all the time) raced
    // the `..` check of RESOLVE_IN_ROOT; openat2(2) says to retry.
    let mut tries = 0;
    let fd = loop {
        // SAFETY: openat2 with a valid dirfd, NUL-terminated path and a correctly sized open_how.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                rootf.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            break fd;
        }
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        tries += 1;
        if errno != libc::EAGAIN || tries >= 100 {
            return Err(errno);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { std::fs::File::from_raw_fd(fd as i32) })
}

#[test]
fn symlinks_out_of_the_root_never_lead_writes_outside() {
    let reg = Registry::start();
    let outside = tempfile::Builder::new()
        .prefix("strata-outside-")
        .tempdir()
        .unwrap();
    let outside_s = outside.path().to_str().unwrap().to_string();
    let img = ImageBuilder::new()
        .layer(
            Layer::new()
                .dir("etc")
                .dir("hostdir")
                .file("etc/passwd", "root:x:0:0::/:/bin/sh\n")
                .symlink("etc/rel", "../../../../hostdir")
                .symlink("etc/abs", &outside_s)
                .symlink("etc/abs-file", &format!("{outside_s}/victim"))
                .add(Entry::symlink("etc/dotdot", "../../../../../../../../..")),
        )
        .build("v1");
    img.push(&reg, "hostile/symlinks:v1");
    std::fs::write(outside.path().join("victim"), b"untouched").unwrap();
    let reference = format!("{}/hostile/symlinks:v1", reg.host());
    let env = StrataEnv::new();
    let upper = env.scratch().join("upper");
    let (out, m) = try_mount(&env, &reference, &["--upper", upper.to_str().unwrap()]);
    out.assert_success();
    let m = m.unwrap();
    let mnt = &m.dir;

    // Through the relative link: lands in the image's /hostdir, i.e. in the upper.
    let mut f = create_in_root(mnt, "etc/rel/evil-rel").expect("create via etc/rel");
    f.write_all(b"rel").unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(
        std::fs::read(upper.join("hostdir/evil-rel")).unwrap(),
        b"rel"
    );
    // Through the absolute link: the host path does not exist inside the root -> ENOENT.
    let r = create_in_root(mnt, "etc/abs/evil-abs");
    assert_eq!(r.err(), Some(libc::ENOENT), "create via absolute link");
    // Through ../../.. past the root: clamped at the root.
    let mut f = create_in_root(mnt, "etc/dotdot/evil-root").expect("create via etc/dotdot");
    f.write_all(b"root").unwrap();
    drop(f);
    assert_eq!(std::fs::read(upper.join("evil-root")).unwrap(), b"root");
    // Opening the file link for writing from inside the root: ENOENT, victim untouched.
    let r = create_in_root(mnt, "etc/abs-file");
    assert_eq!(r.err(), Some(libc::ENOENT), "create via etc/abs-file");

    // Copy-up of the links themselves (lchown, rename) never follows them.
    std::os::unix::fs::lchown(mnt.join("etc/abs"), Some(0), Some(0)).unwrap();
    std::fs::rename(mnt.join("etc/abs-file"), mnt.join("etc/abs-file2")).unwrap();
    std::fs::rename(mnt.join("etc/rel"), mnt.join("etc/rel2")).unwrap();
    for (l, t) in [
        ("etc/abs", outside_s.clone()),
        ("etc/rel2", "../../../../hostdir".into()),
    ] {
        let meta = std::fs::symlink_metadata(upper.join(l)).unwrap();
        assert!(
            meta.file_type().is_symlink(),
            "{l} in the upper is not a symlink"
        );
        assert_eq!(std::fs::read_link(upper.join(l)).unwrap(), PathBuf::from(t));
    }
    // Writes into a copied-up directory stay there.
    std::fs::write(mnt.join("etc/passwd"), b"changed\n").unwrap();
    assert_eq!(
        std::fs::read(upper.join("etc/passwd")).unwrap(),
        b"changed\n"
    );

    // Nothing outside: the outside dir has only the victim, unchanged.
    let names: Vec<_> = std::fs::read_dir(outside.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("victim")]);
    assert_eq!(
        std::fs::read(outside.path().join("victim")).unwrap(),
        b"untouched"
    );
    for n in ["evil-rel", "evil-abs", "evil-root"] {
        assert_nothing_outside(&env, n, Some(&upper));
    }
    drop(m);
    assert_no_panic(&env, &[&out]);
}

// ---------------------------------------------------------------------------------------------
// eStargz TOC lies.

/// An eStargz blob: one gzip member per file content, the TOC member, the footer; the TOC
/// entries are whatever the caller says.
fn estargz_blob(
    contents: &[&[u8]],
    toc_entries: impl Fn(&[u64]) -> serde_json::Value,
) -> (Vec<u8>, String) {
    let mut blob = Vec::new();
    let mut offsets = Vec::new();
    for c in contents {
        offsets.push(blob.len() as u64);
        blob.extend_from_slice(&gzip(c));
    }
    let toc = serde_json::to_vec(&json!({"version": 1, "entries": toc_entries(&offsets)})).unwrap();
    let toc_off = blob.len() as u64;
    blob.extend_from_slice(&fuzz_entry::wrap_toc(&toc));
    blob.extend_from_slice(&strata::layer::estargz::footer(toc_off));
    (blob, common::sha256_digest(&toc))
}

#[test]
fn estargz_toc_with_out_of_range_and_overlapping_chunks() {
    let reg = Registry::start();
    let good = b"good file contents\n";
    let d = |b: &[u8]| common::sha256_digest(b);
    type Case<'a> = (&'a str, Box<dyn Fn(&[u64]) -> serde_json::Value>);
    let cases: Vec<Case> = vec![
        (
            "beyond-blob",
            Box::new(move |o: &[u64]| {
                json!([
                    {"name": "etc/", "type": "dir", "mode": 493},
                    {"name": "etc/good", "type": "reg", "size": good.len(), "offset": o[0],
                     "digest": d(good), "chunkDigest": d(good), "mode": 420},
                    {"name": "etc/far", "type": "reg", "size": 10, "offset": 1u64 << 50,
                     "digest": d(b"0123456789"), "chunkDigest": d(b"0123456789"), "mode": 420},
                ])
            }),
        ),
        (
            "overlap",
            Box::new(move |o: &[u64]| {
                // Two files claim the same member; the second with a lying size and digest.
                json!([
                    {"name": "etc/", "type": "dir", "mode": 493},
                    {"name": "etc/good", "type": "reg", "size": good.len(), "offset": o[0],
                     "digest": d(good), "chunkDigest": d(good), "mode": 420},
                    {"name": "etc/twin", "type": "reg", "size": 4096, "offset": o[0],
                     "digest": d(b"x"), "chunkDigest": d(b"x"), "mode": 420},
                    {"name": "etc/neg", "type": "reg", "size": 5, "offset": o[0],
                     "chunkOffset": 1u64 << 40, "chunkSize": 5,
                     "digest": d(b"x"), "chunkDigest": d(b"x"), "mode": 420},
                ])
            }),
        ),
    ];
    for (name, entries) in cases {
        let (blob, toc_digest) = estargz_blob(&[good], entries);
        let layer = RawLayer {
            blob,
            media: MT_GZIP,
            tar: Vec::new(),
            annotations: Some(json!({"containerd.io/snapshot/stargz/toc.digest": toc_digest})),
        };
        let p = push_image(
            &reg,
            &format!("hostile/stargz-{name}"),
            "v1",
            &[layer],
            json!({}),
        );
        let env = StrataEnv::new();
        let (out, m) = try_mount(&env, &p.reference, &[]);
        let msg = out.stderr_str();
        match &m {
            None => assert!(
                msg.contains(&p.layer_digests[0][7..19]) && msg.contains("etc/"),
                "{name}: refusal must name the layer and entry:\n{msg}"
            ),
            Some(m) => {
                // Mounted: the honest file reads right, liars fail with EIO, never bytes.
                let s = common::OutputExt::stdout_str(&env.run(&[
                    "stats",
                    "--json",
                    m.dir.to_str().unwrap(),
                ]));
                assert!(s.contains("Estargz"), "{name}: {s}");
                match std::fs::read(m.dir.join("etc/good")) {
                    Ok(b) => assert_eq!(b, good, "{name}: etc/good"),
                    // With liars sharing its gzip member, the honest file may fail too
                    // (see docs/reliability.md, known gaps); it must never be wrong.
                    Err(e) if name == "overlap" => {
                        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}")
                    }
                    Err(e) => panic!("{name}: etc/good: {e}\n{}", daemon_logs(&env)),
                }
                for liar in ["etc/far", "etc/twin", "etc/neg"] {
                    if let Ok(meta) = std::fs::metadata(m.dir.join(liar)) {
                        match std::fs::read(m.dir.join(liar)) {
                            Ok(b) => panic!(
                                "{name}: {liar} ({} bytes) served {} unverifiable bytes",
                                meta.len(),
                                b.len()
                            ),
                            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}"),
                        }
                    }
                }
            }
        }
        assert_no_panic(&env, &[&out]);
    }
}

// ---------------------------------------------------------------------------------------------
// Manifests.

#[test]
fn manifests_with_thousands_of_layers_or_huge_annotations() {
    let reg = Registry::start();
    let small = RawLayer::gzip(tar(&[dir("etc/"), file("etc/x", b"x")]));
    // Huge annotations: a manifest over MAX_MANIFEST_BYTES (4 MiB).
    let huge = "h".repeat(5 << 20);
    let layer_d = upload(&reg, "hostile/huge", &small.blob);
    let config = serde_json::to_vec(&json!({
        "architecture": oci_arch(), "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [common::sha256_digest(&small.tar)]},
    }))
    .unwrap();
    let cd = upload(&reg, "hostile/huge", &config);
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": MT_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": MT_GZIP, "digest": layer_d, "size": small.blob.len()}],
        "annotations": {"huge": huge},
    }))
    .unwrap();
    // The distribution registry refuses manifests over 4 MiB itself, so the proxy serves
    // this one in its place.
    assert!(m.len() > 5 << 20);
    let proxy = FaultProxy::in_front_of(&reg);
    proxy.on_path(
        "/v2/hostile/huge/manifests/",
        None,
        Fault::serve(MT_MANIFEST, m),
    );
    let env = StrataEnv::new();
    let (out, mm) = try_mount(&env, &format!("{}/hostile/huge:v1", proxy.host()), &[]);
    assert!(mm.is_none(), "a 5 MiB manifest was mounted");
    assert!(
        out.stderr_str().contains("larger than"),
        "{}",
        out.stderr_str()
    );
    assert!(
        proxy.faults_applied() >= 1,
        "the oversized manifest was never asked for: {:?}",
        proxy.requests()
    );
    assert_no_panic(&env, &[&out]);

    // 3000 layers (all the same small blob): refused clearly or mounted in bounded time.
    let layers: Vec<serde_json::Value> = (0..3000)
        .map(|_| json!({"mediaType": MT_GZIP, "digest": layer_d, "size": small.blob.len()}))
        .collect();
    let diff: Vec<String> = (0..3000)
        .map(|_| common::sha256_digest(&small.tar))
        .collect();
    let config = serde_json::to_vec(&json!({
        "architecture": oci_arch(), "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff},
    }))
    .unwrap();
    let cd = upload(&reg, "hostile/huge", &config);
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": MT_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": layers,
    }))
    .unwrap();
    let (status, text) = put_manifest(&reg, "hostile/huge", "many", MT_MANIFEST, &m);
    assert_eq!(status, 201, "{text}");
    let env = StrataEnv::new();
    let started = Instant::now();
    let (out, mm) = try_mount(&env, &format!("{}/hostile/huge:many", reg.host()), &[]);
    let took = started.elapsed();
    match &mm {
        Some(mm) => assert_eq!(std::fs::read(mm.dir.join("etc/x")).unwrap(), b"x"),
        None => assert!(
            out.stderr_str().contains("layers"),
            "refusal must say why: {}",
            out.stderr_str()
        ),
    }
    eprintln!("3000-layer image: mounted={} in {took:?}", mm.is_some());
    assert_no_panic(&env, &[&out]);
}

// ---------------------------------------------------------------------------------------------
// Index artifacts that lie.

/// Publish a forged strata index artifact for `subject`: its one index blob is `index_bytes`,
/// annotated as the index of `layer`. Uses the referrers tag schema (the registry has no
/// referrers API), replacing whatever was there.
fn push_forged_artifact(
    reg: &Registry,
    repo: &str,
    subject: &Pushed,
    layer: &str,
    index_bytes: &[u8],
) {
    let empty = upload(reg, repo, b"{}");
    let ib = upload(reg, repo, index_bytes);
    let art = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "artifactType": strata::image::index::ARTIFACT_TYPE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{
            "mediaType": strata::image::index::INDEX_MEDIA_TYPE,
            "digest": ib, "size": index_bytes.len(),
            "annotations": {strata::image::index::LAYER_ANNOTATION: layer},
        }],
        "subject": {"mediaType": MT_MANIFEST, "digest": subject.manifest_digest, "size": subject.manifest.len()},
    }))
    .unwrap();
    let ad = common::sha256_digest(&art);
    let (st, text) = put_manifest(reg, repo, &ad, MT_MANIFEST, &art);
    assert_eq!(st, 201, "{text}");
    let idx = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": MT_INDEX,
        "manifests": [{"mediaType": MT_MANIFEST, "digest": ad, "size": art.len(),
                       "artifactType": strata::image::index::ARTIFACT_TYPE}],
    }))
    .unwrap();
    let tag = format!("sha256-{}", &subject.manifest_digest[7..]);
    let (st, text) = put_manifest(reg, repo, &tag, MT_INDEX, &idx);
    assert_eq!(st, 201, "{text}");
}

#[test]
fn index_artifact_describing_another_layer_never_serves_wrong_bytes() {
    let reg = Registry::start();
    // Two plain-tar layers of identical shape (same names and sizes, so the same blob size)
    // but different bytes; and a third of a different size.
    let mk = |fill: u8, n: usize| {
        tar(&[
            dir("etc/"),
            file("etc/data", &vec![fill; n]),
            file("etc/small", &[fill; 7]),
        ])
    };
    let a = push_image(
        &reg,
        "hostile/sidecar",
        "a",
        &[RawLayer::plain(mk(b'A', 300_000))],
        json!({}),
    );
    let b = push_image(
        &reg,
        "hostile/sidecar",
        "b",
        &[RawLayer::plain(mk(b'B', 300_000))],
        json!({}),
    );
    let c = push_image(
        &reg,
        "hostile/sidecar",
        "c",
        &[RawLayer::plain(mk(b'C', 90_000))],
        json!({}),
    );
    // The honest index of A, built by a publisher.
    let publisher = StrataEnv::new();
    publisher.run(&["index", &a.reference]).assert_success();
    let a_index = std::fs::read(
        publisher
            .root()
            .join("indexes")
            .join(&a.layer_digests[0][7..]),
    )
    .unwrap();

    // B gets A's index (same size, wrong bytes): accepted as structure, but every read is
    // verified against A's span digests -> EIO, never A's bytes or unverified B bytes.
    push_forged_artifact(&reg, "hostile/sidecar", &b, &b.layer_digests[0], &a_index);
    let env = StrataEnv::new();
    let (out, m) = try_mount(&env, &b.reference, &[]);
    out.assert_success();
    let m = m.unwrap();
    for f in ["etc/data", "etc/small"] {
        match std::fs::read(m.dir.join(f)) {
            Ok(bytes) => assert!(
                bytes.iter().all(|&x| x == b'B'),
                "{f}: served bytes that are not B's"
            ),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{f}: {e}"),
        }
    }
    drop(m);
    assert_no_panic(&env, &[&out]);

    // C gets A's index (different blob size): refused, C is downloaded whole, bytes right.
    push_forged_artifact(&reg, "hostile/sidecar", &c, &c.layer_digests[0], &a_index);
    let env = StrataEnv::new();
    let (out, m) = try_mount(&env, &c.reference, &[]);
    out.assert_success();
    let m = m.unwrap();
    assert_eq!(
        std::fs::read(m.dir.join("etc/data")).unwrap(),
        vec![b'C'; 90_000]
    );
    let s = env.run(&["stats", "--json", m.dir.to_str().unwrap()]);
    assert!(s.stdout_str().contains("Built"), "{}", s.stdout_str());
    drop(m);
    assert_no_panic(&env, &[&out]);

    // Garbage as the index blob: refused (structure check), falls back, bytes right.
    push_forged_artifact(
        &reg,
        "hostile/sidecar",
        &c,
        &c.layer_digests[0],
        b"STRATAIX garbage",
    );
    let env = StrataEnv::new();
    let (out, m) = try_mount(&env, &c.reference, &[]);
    out.assert_success();
    let m = m.unwrap();
    assert_eq!(std::fs::read(m.dir.join("etc/small")).unwrap(), [b'C'; 7]);
    drop(m);
    assert_no_panic(&env, &[&out]);
}

// ---------------------------------------------------------------------------------------------
// Deterministic mutation smoke run over the fuzz entry points.

const INTERESTING: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, b'0', b'7', b'9', b' ', b'/', b'.', b'\n', b'"',
];

/// One random edit (or a few) of `seed`; `others` supplies splice material.
fn mutate(rng: &mut XorShift64, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 if len > 0 => v.truncate(rng.below(len)),
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                v.drain(a..b);
            }
            4 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(32);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                v.splice(at..at, bytes);
            }
            5 if len > 8 => {
                // Overwrite 8 bytes with a big or small integer (sizes, offsets, counts).
                let i = rng.below(len - 8);
                let x: u64 = [
                    0,
                    1,
                    u64::MAX,
                    u64::MAX / 2,
                    1 << 32,
                    1 << 40,
                    rng.next_u64(),
                ][rng.below(7)];
                if rng.below(2) == 0 {
                    v[i..i + 8].copy_from_slice(&x.to_le_bytes());
                } else {
                    v[i..i + 8].copy_from_slice(&x.to_be_bytes());
                }
            }
            6 if len > 0 => {
                // Replace digits with other digits (tar octal fields, JSON numbers).
                let i = rng.below(len);
                if v[i].is_ascii_digit() {
                    v[i] = b'0' + rng.below(10) as u8;
                }
            }
            7 if !others.is_empty() => {
                let o = &others[rng.below(others.len())];
                if !o.is_empty() {
                    let a = rng.below(o.len());
                    let b = (a + 1 + rng.below(512)).min(o.len());
                    let at = rng.below(len + 1);
                    v.splice(at..at, o[a..b].iter().copied());
                }
            }
            8 if len > 2 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(256)).min(len);
                let chunk = v[a..b].to_vec();
                let at = rng.below(len);
                v.splice(at..at, chunk);
            }
            _ => {}
        }
    }
    v
}

/// Valid inputs for each target (also written as cargo-fuzz corpus seeds when
/// `STRATA_FUZZ_SEEDS` names a directory).
fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    use strata::layer::{soci, BuildOptions, Compression};
    let layer = Layer::new()
        .dir("etc")
        .file("etc/passwd", "root:x:0:0::/:/bin/sh\n")
        .add(Entry::file("usr/bin/tool", vec![0x5a; 9000]).xattr("user.k", b"v".to_vec()))
        .hardlink("usr/bin/tool2", "usr/bin/tool")
        .symlink("usr/bin/link", "tool")
        .whiteout("var/gone")
        .opaque("opt")
        .file(&format!("deep/{}", "n".repeat(150)), "long name");
    let t = layer.tar_bytes();
    let gz = gzip(&t);
    let zs = zstd::encode_all(&t[..], 3).unwrap();
    let opts = BuildOptions {
        span: fuzz_entry::FUZZ_SPAN,
        max_uncompressed: fuzz_entry::FUZZ_LIMIT,
    };
    let (_, table) =
        strata::layer::scan(std::io::Cursor::new(&gz), Compression::Gzip, &opts).unwrap();
    let (_, ztable) =
        strata::layer::scan(std::io::Cursor::new(&zs), Compression::Zstd, &opts).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ix =
        strata::layer::build_index_with(&gz[..], MT_GZIP, &dir.path().join("ix"), &opts).unwrap();
    let ix_bytes = std::fs::read(ix.path()).unwrap();
    let (sblob, sdigest) = strata::layer::estargz::build(&t, 4096).unwrap();
    let foot = &sblob[sblob.len() - 51..];
    let toc_off = strata::layer::estargz::parse_footer(foot).unwrap() as usize;
    let sx = strata::layer::estargz::build_index(
        foot,
        &sblob[toc_off..sblob.len() - 51],
        sblob.len() as u64,
        &sdigest,
        &dir.path().join("sx"),
    )
    .unwrap();
    let sx_bytes = std::fs::read(sx.path()).unwrap();
    // TOC JSON: out of the TOC member.
    let toc_tar = {
        let mut out = Vec::new();
        use std::io::Read;
        flate2::read::MultiGzDecoder::new(&sblob[toc_off..sblob.len() - 51])
            .read_to_end(&mut out)
            .unwrap();
        out
    };
    let mut ar = tar::Archive::new(&toc_tar[..]);
    let mut json = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        use std::io::Read;
        if e.path().unwrap().to_str() == Some("stargz.index.json") {
            e.read_to_end(&mut json).unwrap();
        }
    }
    let mut toc_json = (sblob.len() as u64).to_le_bytes().to_vec();
    toc_json.extend_from_slice(&json);
    let img = ImageBuilder::new().layer(layer.clone()).build("v1");
    let index = common::two_platform_index("v1").index;
    vec![
        ("tar_reader", vec![t.clone(), tar(&[file("a", b"b")])]),
        (
            "layer_scan",
            vec![
                [&[0u8][..], &t].concat(),
                [&[1u8][..], &gz].concat(),
                [&[2u8][..], &zs].concat(),
            ],
        ),
        ("seek_table", vec![table.encode(), ztable.encode()]),
        ("index_open", vec![ix_bytes, sx_bytes]),
        ("tree_decode", vec![tree_seed()]),
        ("estargz", vec![sblob[toc_off..].to_vec()]),
        ("estargz_toc_json", vec![toc_json]),
        ("zchunked_toc_json", vec![zchunked_seed(&t)]),
        ("manifest", vec![img.manifest.clone(), index]),
        (
            "reference",
            [
                "busybox",
                "library/ubuntu:22.04",
                "127.0.0.1:5000/a/b/c:tag",
                "ghcr.io/o/r@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "localhost/x:y@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "[::1]:5000/img",
                "Docker.IO/Library/X",
            ]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect(),
        ),
        (
            "ztoc",
            vec![
                [&[0u8][..], &soci::write_ztoc(&gz, Compression::Gzip, 4096).unwrap()].concat(),
                [&[1u8][..], &soci::write_ztoc(&t, Compression::Tar, 4096).unwrap()].concat(),
            ],
        ),
    ]
}

/// Our writer's zstd:chunked TOC JSON for `tar`, after the 8-byte blob size.
fn zchunked_seed(tar: &[u8]) -> Vec<u8> {
    use strata::layer::zchunked;
    let (blob, ann) = zchunked::build(tar, 4096).unwrap();
    let (sum, position) = zchunked::annotations(|k| ann.get(k).cloned()).unwrap();
    let pos = zchunked::parse_position(&position, blob.len() as u64).unwrap();
    let toc = zchunked::parse_toc(
        &blob[pos.range().start as usize..pos.range().end as usize],
        &sum.parse().unwrap(),
        &pos,
    )
    .unwrap();
    let mut seed = (blob.len() as u64 * 2).to_le_bytes().to_vec();
    seed.extend_from_slice(&serde_json::to_vec(&toc).unwrap());
    seed
}

/// A stored merged tree of two layers with every kind of record (layer count byte first).
fn tree_seed() -> Vec<u8> {
    use strata::layer::{Entry as E, EntryKind as K};
    let mut f = E::new("etc/passwd", K::File);
    (f.size, f.offset) = (10, 512);
    f.xattrs = vec![("user.a".into(), vec![0xff, 0])];
    let mut l = E::new("etc/passwd2", K::Hardlink);
    l.hardlink_target = "etc/passwd".into();
    let mut s = E::new("etc/s", K::Symlink);
    s.link_target = "passwd".into();
    let mut c = E::new("etc/tty", K::CharDev);
    (c.dev_major, c.dev_minor) = (5, 0);
    let low = vec![E::new("etc", K::Dir), f, l, s, c];
    let high = vec![E::new("etc/s", K::Whiteout), E::new("usr", K::Dir)];
    let t = strata::union::MergedTree::build(&[low, high]).unwrap();
    [&[2u8][..], t.encode()].concat()
}

/// Thousands of mutated inputs per target, seeded and deterministic; a panic reports the
/// target, iteration and input (hex) so it can be replayed as a regression test.
#[test]
fn fuzz_smoke() {
    let iterations: usize = std::env::var("STRATA_FUZZ_SMOKE_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let budget = Duration::from_secs(
        std::env::var("STRATA_FUZZ_SMOKE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4),
    );
    let all = seeds();
    if let Ok(dir) = std::env::var("STRATA_FUZZ_SEEDS") {
        for (t, ss) in &all {
            for (i, s) in ss.iter().enumerate() {
                fuzz_entry::write_seed(Path::new(&dir), t, &format!("seed-{i}"), s);
            }
        }
    }
    assert_eq!(
        all.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        fuzz_entry::TARGETS
    );
    let mut scratch = fuzz_entry::Scratch::new();
    for (t, ss) in &all {
        let mut rng = XorShift64::from_state(0x5EED_0000 ^ (t.len() as u64 * 0x9E37_79B9));
        let started = Instant::now();
        // The seeds themselves first.
        for s in ss {
            fuzz_entry::run_target(t, &mut scratch, s);
        }
        let mut done = 0;
        for i in 0..iterations {
            if started.elapsed() > budget {
                break;
            }
            let pick = rng.below(ss.len());
            let input = mutate(&mut rng, &ss[pick], ss);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                fuzz_entry::run_target(t, &mut scratch, &input)
            }));
            if r.is_err() {
                let path = std::env::temp_dir().join(format!("strata-fuzz-crash-{t}-{i}"));
                let _ = std::fs::write(&path, &input);
                panic!(
                    "fuzz target {t} panicked at iteration {i}; input saved to {}",
                    path.display()
                );
            }
            done += 1;
        }
        eprintln!("fuzz smoke {t}: {done} inputs in {:?}", started.elapsed());
    }
}

/// Every input that once crashed a target (`fuzz/regressions/<target>/*`, also where
/// scripts/fuzz.sh copies new cargo-fuzz crashes) runs clean now.
#[test]
fn fuzz_regressions() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut scratch = fuzz_entry::Scratch::new();
    let mut n = 0;
    for t in fuzz_entry::TARGETS {
        let Ok(rd) = std::fs::read_dir(dir.join(t)) else {
            continue;
        };
        for f in rd.flatten() {
            let data = std::fs::read(f.path()).unwrap();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                fuzz_entry::run_target(t, &mut scratch, &data)
            }));
            assert!(r.is_ok(), "regression {} panics again", f.path().display());
            n += 1;
        }
    }
    assert!(n >= 2, "regression inputs missing from {}", dir.display());
}
