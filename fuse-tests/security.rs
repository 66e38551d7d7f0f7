//! Security defaults, checked against real parts (docker-registry, FUSE, runc): a mount is
//! the mounting user's only unless `--allow-other`, the kernel checks permissions
//! (`default_permissions`), passwords and bearer tokens never reach a log or the store even
//! at `RUST_LOG=trace`, nothing strata writes is world-writable (even with umask 000), and a
//! container cannot reach `STRATA_ROOT` through its rootfs with `..` or symlinks.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::rel::{as_nobody, contains_jwt, mountinfo_options, output_with_umask, world_writable};
use common::{busybox_image, Entry, ImageBuilder, Layer, OutputExt, Registry, StrataEnv};

/// Unmounts (`strata umount -f`, then `umount -l`) on drop, also when the test panics.
/// A small image: a world-readable file, a root-only file and a root-only directory.
fn small_image(reg: &Registry, repo_tag: &str) -> String {
    ImageBuilder::new()
        .layer(
            Layer::new()
                .dir("etc")
                .file("etc/os-release", "NAME=security\n")
                .add(Entry::file("etc/shadow", "root:secret-hash:::::::\n").mode(0o600))
                .add(Entry::dir("root").mode(0o700))
                .file("root/notes", "root only\n"),
        )
        .build("v1")
        .push(reg, repo_tag);
    format!("{}/{repo_tag}", reg.host())
}

/// Make every directory from `/` down to `p` traversable by others (tempdirs are 0700), so
/// a refusal seen by another uid comes from the mount, not from the path leading to it.
fn open_path(p: &Path) {
    for a in p.ancestors() {
        if a == Path::new("/") || a == Path::new("/tmp") {
            continue;
        }
        let mode = std::fs::metadata(a).unwrap().permissions().mode();
        std::fs::set_permissions(a, std::fs::Permissions::from_mode(mode | 0o005)).unwrap();
    }
}

/// Without `--allow-other` only the mounting user (root) gets in: uid 65534 gets EACCES on
/// the mount point it could stat a moment before. With it, uid 65534 reads world-readable
/// files, and `default_permissions` (in the mount options) makes the kernel refuse it the
/// 0600 file and the 0700 directory.
#[test]
fn mount_is_owner_only_unless_allow_other_and_kernel_checks_permissions() {
    let reg = Registry::start();
    let reference = small_image(&reg, "sec/perm:v1");
    let env = StrataEnv::new();
    let dir = env.scratch().join("mnt");
    std::fs::create_dir_all(&dir).unwrap();
    open_path(&dir);
    let nobody_stat = |p: &Path| as_nobody("stat", &["-c", "%a %U", p.to_str().unwrap()]);
    nobody_stat(&dir).assert_success();

    {
        let m = env.mount_at(&reference, &dir, &[]);
        let opts = mountinfo_options(&m.dir).expect("mounted");
        eprintln!("default mount: {opts}");
        assert!(opts.contains("default_permissions"), "{opts}");
        assert!(!opts.contains("allow_other"), "{opts}");
        for p in [m.dir.clone(), m.dir.join("etc/os-release")] {
            let out = nobody_stat(&p);
            out.assert_failure();
            assert!(
                out.stderr_str().contains("Permission denied"),
                "{}: {}",
                p.display(),
                out.stderr_str()
            );
        }
        let out = as_nobody("cat", &[m.dir.join("etc/os-release").to_str().unwrap()]);
        out.assert_failure();
        assert!(out.stdout.is_empty());
        // The owner (root) is served.
        assert_eq!(
            std::fs::read_to_string(m.dir.join("etc/os-release")).unwrap(),
            "NAME=security\n"
        );
    }

    let m = env.mount_at(&reference, &dir, &["--allow-other"]);
    let opts = mountinfo_options(&m.dir).expect("mounted");
    eprintln!("--allow-other mount: {opts}");
    assert!(opts.contains("allow_other"), "{opts}");
    assert!(opts.contains("default_permissions"), "{opts}");
    let out = as_nobody("cat", &[m.dir.join("etc/os-release").to_str().unwrap()]);
    out.assert_success();
    assert_eq!(out.stdout_str(), "NAME=security\n");
    for p in ["etc/shadow", "root/notes"] {
        let out = as_nobody("cat", &[m.dir.join(p).to_str().unwrap()]);
        out.assert_failure();
        assert!(
            out.stderr_str().contains("Permission denied"),
            "{p}: {}",
            out.stderr_str()
        );
        assert!(out.stdout.is_empty(), "{p} leaked to uid 65534");
    }
    let out = as_nobody("ls", &[m.dir.join("root").to_str().unwrap()]);
    out.assert_failure();
    // Root still reads everything.
    assert_eq!(
        std::fs::read_to_string(m.dir.join("root/notes")).unwrap(),
        "root only\n"
    );
}

/// Every file under `dir` (recursively), as lossy text, with its path.
fn files_text(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else if meta.is_file() {
            let bytes = std::fs::read(&p).unwrap_or_default();
            out.push((p, String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    out
}

/// Login, pull, lazy mount + reads, umount and logout at `RUST_LOG=trace` against an htpasswd
/// registry and a bearer-token registry: neither the password, nor the Basic header made
/// from it, nor any bearer token appears in stdout, stderr, the mount daemon's log or any file
/// of `STRATA_ROOT`. (The credentials file itself is the one place the password lives.)
#[test]
fn credentials_and_tokens_are_never_logged() {
    use base64::Engine as _;
    for token_auth in [false, true] {
        let pass = "Pa55-never-logged-7f3c";
        let reg = if token_auth {
            Registry::with_token_options(common::TokenOptions {
                user: "alice".into(),
                pass: pass.into(),
                ..Default::default()
            })
        } else {
            Registry::with_htpasswd("alice", pass)
        };
        let reference = small_image(&reg, "sec/creds:v1");
        let env = StrataEnv::new();
        let mut transcript = String::new();
        let mut run = |args: &[&str], stdin: Option<&[u8]>| {
            let mut cmd = env.command(args);
            cmd.env("RUST_LOG", "trace");
            let out = match stdin {
                Some(s) => {
                    // Small input: fits the pipe buffer.
                    use std::io::Write as _;
                    cmd.stdin(std::process::Stdio::piped())
                        .stdout(std::process::Stdio::piped())
                        .stderr(std::process::Stdio::piped());
                    let mut child = cmd.spawn().unwrap();
                    child.stdin.take().unwrap().write_all(s).unwrap();
                    child.wait_with_output().unwrap()
                }
                None => output_with_umask(cmd, 0o022, Duration::from_secs(60)),
            };
            out.assert_success();
            transcript.push_str(&out.stdout_str());
            transcript.push_str(&out.stderr_str());
        };
        run(
            &["login", "-u", "alice", "--password-stdin", &reg.host()],
            Some(format!("{pass}\n").as_bytes()),
        );
        run(&["pull", &reference], None);
        let dir = env.scratch().join("mnt");
        std::fs::create_dir_all(&dir).unwrap();
        run(
            &["mount", &reference, dir.to_str().unwrap(), "--no-prefetch"],
            None,
        );
        let read = std::fs::read_to_string(dir.join("etc/os-release"));
        run(&["umount", dir.to_str().unwrap()], None);
        assert_eq!(read.unwrap(), "NAME=security\n");
        run(&["logout", &reg.host()], None);

        let basic = base64::engine::general_purpose::STANDARD.encode(format!("alice:{pass}"));
        let mut texts = vec![(PathBuf::from("<stdout+stderr>"), transcript)];
        texts.extend(files_text(&env.root()));
        let trace_lines: usize = texts
            .iter()
            .map(|(_, t)| t.lines().filter(|l| l.contains("TRACE")).count())
            .sum();
        eprintln!(
            "token_auth={token_auth}: {trace_lines} TRACE lines in {} texts",
            texts.len()
        );
        assert!(trace_lines > 0, "RUST_LOG=trace produced no trace output");
        let daemon_log = texts
            .iter()
            .any(|(p, t)| p.extension().is_some_and(|e| e == "log") && t.contains("DEBUG"));
        assert!(
            daemon_log,
            "no debug-level mount daemon log under STRATA_ROOT"
        );
        for (p, t) in &texts {
            assert!(!t.contains(pass), "password in {}", p.display());
            assert!(!t.contains(&basic), "Basic credentials in {}", p.display());
            assert!(!contains_jwt(t), "bearer token in {}", p.display());
        }
        if token_auth {
            let ts = reg.token_server().unwrap();
            assert!(
                ts.issued() > 0,
                "no token was issued: the test saw no bearer auth"
            );
        }
    }
}

/// With umask 000: login, pull, lazy mount + read, and a container run (which writes into
/// its upper) leave no world-writable file or directory under `STRATA_ROOT` outside the
/// containers' own filesystems (an upper holds what the container made, e.g. its 1777
/// /tmp, behind a directory others cannot enter), and the credentials file is 0600.
#[test]
fn store_cache_and_credentials_are_not_world_writable() {
    let reg = Registry::with_htpasswd("bob", "builder-pass");
    let img = busybox_image().layer(Layer::new().file("data/x", "x\n"));
    img.build("v1").push(&reg, "sec/bb:v1");
    let reference = format!("{}/sec/bb:v1", reg.host());
    let env = StrataEnv::new();
    std::fs::set_permissions(env.root(), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::remove_dir(env.root()).unwrap(); // strata creates it
    let run = |args: &[&str]| {
        let out = output_with_umask(env.command(args), 0, Duration::from_secs(120));
        out.assert_success();
        out
    };
    {
        let mut cmd = env.command(&["login", "-u", "bob", "--password-stdin", &reg.host()]);
        use std::io::Write as _;
        use std::os::unix::process::CommandExt as _;
        // SAFETY: umask(2) is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"builder-pass\n")
            .unwrap();
        assert!(child.wait().unwrap().success(), "login failed");
    }
    let creds = env.docker_config().join("config.json");
    assert_eq!(
        std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777,
        0o600,
        "credentials file mode"
    );
    run(&["pull", &reference]);
    let dir = env.scratch().join("mnt");
    std::fs::create_dir_all(&dir).unwrap();
    run(&["mount", &reference, dir.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(dir.join("data/x")).unwrap(), "x\n");
    run(&["umount", dir.to_str().unwrap()]);
    let out = run(&[
        "run",
        "--name",
        "kept",
        &reference,
        "sh",
        "-c",
        "echo hi > /tmp/made; mkdir -p /var/new; echo ok",
    ]);
    assert!(out.stdout_str().contains("ok"), "{}", out.stdout_str());

    // Below a container's upper is the container's own filesystem (its 1777 /tmp): judged
    // by whether others can reach it, not by its modes.
    let in_upper = |p: &Path| {
        p.ancestors()
            .skip(1)
            .any(|a| a.file_name().is_some_and(|n| n == "upper"))
    };
    let all = world_writable(&env.root());
    let bad: Vec<String> = all
        .iter()
        .filter(|(p, _)| !in_upper(p))
        .map(|(p, m)| format!("{:o} {}", m & 0o7777, p.display()))
        .collect();
    assert!(bad.is_empty(), "world-writable under STRATA_ROOT: {bad:#?}");
    let uppers: Vec<&PathBuf> = all.iter().map(|(p, _)| p).filter(|p| in_upper(p)).collect();
    assert!(
        !uppers.is_empty(),
        "the container's /tmp (1777) should be in its upper: the walk missed it"
    );
    for p in uppers {
        let upper = p
            .ancestors()
            .skip(1)
            .find(|a| a.file_name().is_some_and(|n| n == "upper"))
            .unwrap();
        let parent = upper.parent().unwrap();
        let mode = std::fs::metadata(parent).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o007,
            0,
            "{} ({:o}) lets others reach {}",
            parent.display(),
            mode & 0o7777,
            p.display()
        );
    }
    env.run(&["rm", "kept"]).assert_success();
}

/// A container whose image carries symlinks aimed at the host's `STRATA_ROOT` (a long `..`
/// chain and an absolute link) cannot read a marker file there or create a file there: its
/// root is the mount. From the host, the same absolute link does reach the marker, so the
/// trick is real.
#[test]
fn container_cannot_reach_strata_root_through_its_rootfs() {
    let reg = Registry::start();
    let env = StrataEnv::new();
    let root = env.root();
    let marker = "marker-8c1f-must-stay-on-the-host";
    std::fs::write(root.join("marker"), marker).unwrap();
    let rel_to_root = root
        .strip_prefix("/")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let dotdots = "../".repeat(16);
    busybox_image()
        .layer(
            Layer::new()
                .dir("esc")
                .symlink("esc/up", &dotdots)
                .symlink("esc/abs", root.to_str().unwrap())
                .symlink("esc/file", root.join("marker").to_str().unwrap())
                .symlink("esc/deep", &format!("{dotdots}{rel_to_root}")),
        )
        .build("v1")
        .push(&reg, "sec/esc:v1");
    let reference = format!("{}/sec/esc:v1", reg.host());
    let probes = [
        format!("/esc/up/{rel_to_root}/marker"),
        "/esc/abs/marker".to_string(),
        "/esc/file".to_string(),
        "/esc/deep/marker".to_string(),
        format!("/../../../../{rel_to_root}/marker"),
        format!("/proc/1/root/{rel_to_root}/marker"),
        format!("/proc/self/cwd/../../../{rel_to_root}/marker"),
    ];
    let mut script = String::new();
    for p in &probes {
        script.push_str(&format!("cat '{p}' 2>/dev/null && echo ' LEAK {p}'; "));
    }
    script.push_str(
        "echo pwned > /esc/abs/pwned 2>/dev/null; echo pwned > /esc/deep/pwned 2>/dev/null; ",
    );
    script.push_str("ls /esc/up/ | head -3; echo probes-done");
    let out = env.run(&["run", "--rm", &reference, "sh", "-c", &script]);
    out.assert_success();
    let stdout = out.stdout_str();
    eprintln!("container: {stdout}");
    assert!(stdout.contains("probes-done"), "{stdout}");
    assert!(
        !stdout.contains(marker),
        "marker read from the container:\n{stdout}"
    );
    assert!(!stdout.contains("LEAK"), "{stdout}");
    // `..` above the container root is the container root.
    assert!(stdout.contains("bin"), "{stdout}");
    assert!(
        !root.join("pwned").exists(),
        "the container wrote into STRATA_ROOT"
    );
    assert!(
        std::fs::read_dir(&root)
            .unwrap()
            .flatten()
            .all(|e| e.file_name() != "pwned"),
        "pwned file in STRATA_ROOT"
    );

    // Control: on the host, the absolute link inside a mount does lead to the marker.
    let dir = env.scratch().join("mnt");
    let m = env.mount_at(&reference, &dir, &["--no-prefetch"]);
    assert_eq!(
        std::fs::read_to_string(m.dir.join("esc/file")).unwrap(),
        marker,
        "host-side control"
    );
}
