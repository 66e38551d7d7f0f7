//! Behaviour users rely on that no other test covers: several strata processes on one
//! `STRATA_ROOT` at once (pulls racing each other and a mount the daemon serves, mounts
//! started together), a non-root user writing on an `--allow-other` mount, and full paths
//! near PATH_MAX inside a mount. Real registry, real FUSE; the non-root user is uid/gid 65534
//! through util-linux `setpriv`.

mod common;

use common::testdata::pseudo;
use common::{Entry, ImageBuilder, Layer, OutputExt, Registry, StrataEnv};
use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

fn stats(env: &StrataEnv, dir: &Path) -> serde_json::Value {
    let out = env.run(&["stats", "--json", dir.to_str().unwrap()]);
    out.assert_success();
    serde_json::from_str(&out.stdout_str()).unwrap()
}

/// Every file of `files` reads back right under `dir`.
fn check_files(dir: &Path, files: &[(&str, Vec<u8>)]) {
    for (p, want) in files {
        let got = std::fs::read(dir.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert!(got == *want, "{p}: wrong bytes");
    }
}

/// Two `strata pull`s of one image race each other while the daemon serves a mount of a
/// second image that a reader keeps reading, and two `strata mount`s start at the same time:
/// every command succeeds, one daemon serves all mounts, the store ends up with both images
/// whole and verified, and the mount never returns a wrong byte.
#[test]
fn pulls_and_mounts_share_one_root_at_once() {
    let reg = Registry::start();
    let a_files = vec![
        ("a/one.bin", pseudo(3 << 20, 1)),
        ("a/two.txt", b"two\n".to_vec()),
    ];
    let b_files = vec![
        ("b/big.bin", pseudo(4 << 20, 2)),
        ("b/small", b"small\n".to_vec()),
    ];
    let image = |files: &[(&str, Vec<u8>)], dir: &str| {
        let mut l = Layer::new().dir(dir);
        for (p, d) in files {
            l = l.file(p, d.clone());
        }
        ImageBuilder::new().layer(l).build("v1")
    };
    let a = image(&a_files, "a");
    let b = image(&b_files, "b");
    a.push(&reg, "share/a:v1");
    b.push(&reg, "share/b:v1");
    let (ra, rb) = (
        format!("{}/share/a:v1", reg.host()),
        format!("{}/share/b:v1", reg.host()),
    );
    StrataEnv::new()
        .run(&["index", &ra, "--push"])
        .assert_success();
    let env = StrataEnv::new();
    let m1 = env.mount_at(&ra, &env.scratch().join("m1"), &["--no-prefetch"]);
    let pid = stats(&env, &m1.dir)["pid"].clone();

    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut rounds = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) || rounds == 0 {
                check_files(&m1.dir, &a_files);
                rounds += 1;
            }
            rounds
        });
        let pulls: Vec<_> = [&rb, &rb, &ra]
            .into_iter()
            .map(|r| s.spawn(|| env.run(&["pull", r])))
            .collect();
        let mounts: Vec<_> = ["m2", "m3"]
            .into_iter()
            .map(|name| {
                let (ra, rb, env) = (&ra, &rb, &env);
                s.spawn(move || {
                    let dir = env.scratch().join(name);
                    let r = if name == "m2" { ra } else { rb };
                    let (out, guard) = env.try_mount_at(r, &dir, &["--no-prefetch"]);
                    // Unmounted by the guards made again below, after the threads.
                    std::mem::forget(guard);
                    out
                })
            })
            .collect();
        for p in pulls {
            p.join().unwrap().assert_success();
        }
        for m in mounts {
            m.join().unwrap().assert_success();
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let rounds = reader.join().unwrap();
        eprintln!("reader: {rounds} rounds during the pulls and mounts");
    });
    let m2 = common::cli::Mounted {
        env: &env,
        dir: env.scratch().join("m2"),
    };
    let m3 = common::cli::Mounted {
        env: &env,
        dir: env.scratch().join("m3"),
    };
    check_files(&m2.dir, &a_files);
    check_files(&m3.dir, &b_files);
    // One daemon serves all three mounts.
    for m in [&m1.dir, &m2.dir, &m3.dir] {
        assert_eq!(stats(&env, m)["pid"], pid, "{}", m.display());
    }
    // Both images are in the store, whole: every blob present and its bytes match its name.
    for img in [&a, &b] {
        for l in &img.layers {
            let p = env.blob_path(&l.digest);
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert_eq!(common::sha256_digest(&data), l.digest);
        }
    }
    let images = env.run(&["images"]);
    images.assert_success();
    for repo in ["share/a", "share/b"] {
        assert!(
            images.stdout_str().contains(repo),
            "{}",
            images.stdout_str()
        );
    }
    // Nothing left half-written.
    let tmp: Vec<_> = std::fs::read_dir(env.root().join("tmp"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "left in tmp/: {tmp:?}");
}

/// Run `sh -c script` as uid/gid 65534 (no supplementary groups); (exit code, stderr).
fn as_nobody(script: &str) -> (i32, String) {
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "/bin/sh",
            "-c",
            script,
        ])
        .output()
        .expect("run setpriv (util-linux)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Let other users reach `dir`: search permission on it and every ancestor (test tempdirs
/// are 0700).
fn open_path_to(dir: &Path) {
    for a in dir.ancestors() {
        if a == Path::new("/") {
            break;
        }
        let mode = std::fs::metadata(a).unwrap().permissions().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(a, std::fs::Permissions::from_mode(mode | 0o011)).unwrap();
        }
    }
}

/// A non-root user on an `--allow-other` mount with an upper: writes where the image's
/// permissions allow it (a sticky world-writable dir, its own home, a copy-up of its own
/// lower file), is refused with EACCES where they do not, and without `--allow-other` cannot
/// enter the mount at all.
#[test]
fn non_root_user_writes_on_an_allow_other_mount() {
    let reg = Registry::start();
    let img = ImageBuilder::new()
        .layer(
            Layer::new()
                .add(Entry::dir("tmp").mode(0o1777))
                .add(Entry::dir("etc").mode(0o755))
                .file("etc/conf", "root's\n")
                .add(Entry::dir("home").mode(0o755))
                .add(Entry::dir("home/nobody").mode(0o755).owner(65534, 65534))
                .add(
                    Entry::file("home/nobody/notes", "lower line\n")
                        .mode(0o644)
                        .owner(65534, 65534),
                ),
        )
        .build("v1");
    img.push(&reg, "share/users:v1");
    let reference = format!("{}/share/users:v1", reg.host());
    StrataEnv::new()
        .run(&["index", &reference, "--push"])
        .assert_success();
    let env = StrataEnv::new();
    let upper = env.scratch().join("upper");
    let mnt = env.scratch().join("mnt");
    open_path_to(&env.scratch());
    let m = env.mount_at(
        &reference,
        &mnt,
        &["--allow-other", "--upper", upper.to_str().unwrap()],
    );
    let d = m.dir.display().to_string();
    let (code, err) = as_nobody(&format!(
        "set -e; echo mine > {d}/tmp/new; echo more >> {d}/home/nobody/notes; \
         mkdir {d}/home/nobody/sub; echo deep > {d}/home/nobody/sub/f; \
         mv {d}/home/nobody/sub/f {d}/home/nobody/g; cat {d}/etc/conf >/dev/null"
    ));
    assert_eq!(code, 0, "as uid 65534: {err}");
    assert_eq!(std::fs::read(m.dir.join("tmp/new")).unwrap(), b"mine\n");
    assert_eq!(
        std::fs::read(m.dir.join("home/nobody/notes")).unwrap(),
        b"lower line\nmore\n"
    );
    assert_eq!(
        std::fs::read(m.dir.join("home/nobody/g")).unwrap(),
        b"deep\n"
    );
    // In the upper, the copied-up file kept its owner.
    let meta = std::fs::metadata(upper.join("home/nobody/notes")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    // Refused where the image's permissions say so; nothing reached the upper.
    for (what, script) in [
        ("create in root's /etc", format!("echo x > {d}/etc/evil")),
        ("write root's file", format!("echo x >> {d}/etc/conf")),
        ("remove root's file", format!("rm -f {d}/etc/conf")),
    ] {
        let (code, err) = as_nobody(&script);
        assert_ne!(code, 0, "{what} succeeded as uid 65534");
        assert!(err.contains("Permission denied"), "{what}: {err}");
    }
    assert!(!upper.join("etc/evil").exists());
    assert_eq!(std::fs::read(m.dir.join("etc/conf")).unwrap(), b"root's\n");
    drop(m);

    // Without --allow-other the mount is the mounting user's only.
    let m = env.mount_at(&reference, &mnt, &[]);
    let (code, err) = as_nobody(&format!("ls {}/tmp", m.dir.display()));
    assert_ne!(code, 0, "uid 65534 entered a mount without --allow-other");
    assert!(err.contains("Permission denied"), "{err}");
}

/// Files created by a non-root user belong to that user (POSIX; ext4 and kernel overlayfs
/// do so).
#[test]
fn files_created_by_a_non_root_user_belong_to_it() {
    let reg = Registry::start();
    let img = ImageBuilder::new()
        .layer(Layer::new().add(Entry::dir("tmp").mode(0o1777)))
        .build("v1");
    img.push(&reg, "share/owner:v1");
    let reference = format!("{}/share/owner:v1", reg.host());
    let env = StrataEnv::new();
    let upper = env.scratch().join("upper");
    let mnt = env.scratch().join("mnt");
    open_path_to(&env.scratch());
    let m = env.mount_at(
        &reference,
        &mnt,
        &["--allow-other", "--upper", upper.to_str().unwrap()],
    );
    let d = m.dir.display();
    let (code, err) = as_nobody(&format!("echo x > {d}/tmp/f && mkdir {d}/tmp/dir"));
    assert_eq!(code, 0, "{err}\n{}", env.daemon_logs());
    for p in ["tmp/f", "tmp/dir"] {
        let meta = std::fs::metadata(m.dir.join(p)).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (65534, 65534),
            "{p} through the mount"
        );
        let meta = std::fs::metadata(upper.join(p)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "{p} in the upper");
    }
}

/// `*at` calls relative to a directory fd: (fd of `dir`).
fn dir_fd(dir: &Path) -> std::fs::File {
    std::fs::File::open(dir).unwrap()
}

fn cpath(p: &str) -> CString {
    CString::new(p).unwrap()
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A relative path of `total` bytes: components of 250 bytes and a last one making up the rest.
fn long_path(total: usize) -> Vec<String> {
    let mut comps = Vec::new();
    let mut len = 0;
    let mut i = 0;
    while len + 251 < total {
        comps.push(format!("{i:03}{}", "d".repeat(247)));
        len += 251;
        i += 1;
    }
    comps.push("f".repeat(total - len));
    comps
}

/// Operations on a path of `total` bytes relative to `root`: mkdirat down the chain (one
/// component at a time), then the full path in one call each: create + write, fstatat,
/// open + read, renameat, unlinkat. Returns the first failing step and its errno.
fn long_path_ops(root: &Path, total: usize) -> Result<(), (String, i32)> {
    let comps = long_path(total);
    let full = comps.join("/");
    assert_eq!(full.len(), total);
    let fd = dir_fd(root);
    use std::os::fd::AsRawFd;
    let r = fd.as_raw_fd();
    let mut prefix = String::new();
    for c in &comps[..comps.len() - 1] {
        prefix = if prefix.is_empty() {
            c.clone()
        } else {
            format!("{prefix}/{c}")
        };
        // SAFETY: valid dirfd and NUL-terminated path.
        if unsafe { libc::mkdirat(r, cpath(&prefix).as_ptr(), 0o755) } != 0 {
            return Err((format!("mkdirat {} bytes", prefix.len()), errno()));
        }
    }
    // SAFETY: as above.
    let f = unsafe {
        libc::openat(
            r,
            cpath(&full).as_ptr(),
            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
            0o644,
        )
    };
    if f < 0 {
        return Err(("openat O_CREAT".into(), errno()));
    }
    // SAFETY: f is a descriptor we own; the buffer is valid for 5 bytes.
    let n = unsafe { libc::write(f, b"deep\n".as_ptr().cast(), 5) };
    // SAFETY: f is ours.
    unsafe { libc::close(f) };
    if n != 5 {
        return Err(("write".into(), errno()));
    }
    // SAFETY: stat is plain old data.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid dirfd, path and stat buffer.
    if unsafe { libc::fstatat(r, cpath(&full).as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(("fstatat".into(), errno()));
    }
    if st.st_size != 5 {
        return Err((format!("size {}", st.st_size), 0));
    }
    let renamed = format!("{}g", &full[..full.len() - 1]);
    // SAFETY: valid dirfds and paths.
    if unsafe { libc::renameat(r, cpath(&full).as_ptr(), r, cpath(&renamed).as_ptr()) } != 0 {
        return Err(("renameat".into(), errno()));
    }
    // SAFETY: as above.
    let f = unsafe {
        libc::openat(
            r,
            cpath(&renamed).as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if f < 0 {
        return Err(("openat read".into(), errno()));
    }
    let mut buf = [0u8; 16];
    // SAFETY: f is ours; buf is 16 bytes.
    let n = unsafe { libc::read(f, buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: f is ours.
    unsafe { libc::close(f) };
    if n != 5 || &buf[..5] != b"deep\n" {
        return Err(("read back".into(), errno()));
    }
    // SAFETY: valid dirfd and path.
    if unsafe { libc::unlinkat(r, cpath(&renamed).as_ptr(), 0) } != 0 {
        return Err(("unlinkat".into(), errno()));
    }
    Ok(())
}

/// The path lengths tried: well inside PATH_MAX, and PATH_MAX - 1 (4095, the longest a
/// path argument can be).
const LONG: [usize; 2] = [2000, libc::PATH_MAX as usize - 1];

/// The oracle: a plain directory on the host's file system takes every step at every length.
#[test]
fn long_paths_work_on_the_host_file_system() {
    for total in LONG {
        let dir = tempfile::tempdir().unwrap();
        long_path_ops(dir.path(), total)
            .unwrap_or_else(|(step, e)| panic!("host fs, {total}-byte path: {step}: errno {e}"));
    }
}

/// A file of the image (a lower) at a 4000-byte path reads back through the mount.
#[test]
fn long_lower_paths_read_through_the_mount() {
    let reg = Registry::start();
    let comps = long_path(4000);
    let mut l = Layer::new();
    for k in 1..comps.len() {
        l = l.dir(&comps[..k].join("/"));
    }
    let full = comps.join("/");
    let img = ImageBuilder::new()
        .layer(l.file(&full, "at the bottom\n"))
        .build("v1");
    img.push(&reg, "share/deep:v1");
    let reference = format!("{}/share/deep:v1", reg.host());
    let env = StrataEnv::new();
    let m = env.mount(&reference, &[]);
    let fd = dir_fd(&m.dir);
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: valid dirfd and path.
    let f = unsafe { libc::openat(fd.as_raw_fd(), cpath(&full).as_ptr(), libc::O_RDONLY) };
    assert!(
        f >= 0,
        "openat of a 4000-byte lower path: errno {}",
        errno()
    );
    // SAFETY: f is a fresh descriptor we own.
    let mut f = unsafe { std::fs::File::from_raw_fd(f) };
    let mut s = String::new();
    std::io::Read::read_to_string(&mut f, &mut s).unwrap();
    assert_eq!(s, "at the bottom\n");
}

/// Every step of [`long_path_ops`] at a `total`-byte path inside a mount with an upper.
fn long_path_in_a_mount(total: usize) {
    let reg = Registry::start();
    let img = ImageBuilder::new()
        .layer(Layer::new().dir("etc"))
        .build("v1");
    img.push(&reg, "share/long:v1");
    let reference = format!("{}/share/long:v1", reg.host());
    let env = StrataEnv::new();
    let upper = env.scratch().join("upper");
    let m = env.mount(&reference, &["--upper", upper.to_str().unwrap()]);
    // A fresh top-level directory, and the rest of the path sized so that the whole path
    // inside the mount is `total` bytes.
    let top = format!("w{total}");
    if let Err(e) = std::fs::create_dir(m.dir.join(&top)) {
        panic!("mkdir {top} in the mount: {e}\n{}", env.daemon_logs());
    }
    if let Err((step, e)) = long_path_ops(&m.dir.join(&top), total - top.len() - 1) {
        panic!(
            "strata mount, {total}-byte path: {step}: errno {e} ({})",
            std::io::Error::from_raw_os_error(e)
        );
    }
}

/// Writes at a 2000-byte path inside a mount with an upper: every step the host file system
/// takes (see above) works on strata too.
#[test]
fn long_paths_work_inside_a_mount_with_an_upper() {
    long_path_in_a_mount(LONG[0]);
}

/// The same at PATH_MAX - 1 bytes.
#[test]
fn path_max_paths_work_inside_a_mount_with_an_upper() {
    long_path_in_a_mount(LONG[1]);
}
