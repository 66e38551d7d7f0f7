//! docker's CLI habits (issue 19): a closed pipe ends quietly, docker's exit codes, the
//! management-command forms, `--format`/`--filter`, pause/unpause/attach, the prunes,
//! version and info. Real registry, real runc, the strata binary.

mod common;

use common::{busybox_image, DeadPort, Layer, OutputExt, Registry, StrataEnv};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

/// A busybox image with a marker layer pushed as `repo_tag`; its reference.
fn image(reg: &Registry, repo_tag: &str, marker: &str) -> (String, common::BuiltImage) {
    let img = busybox_image()
        .layer(
            Layer::new()
                .file("data/marker", marker)
                .created_by(&format!("marker {marker}")),
        )
        .env("GREETING=image")
        .build("v1");
    img.push(reg, repo_tag);
    (format!("{}/{repo_tag}", reg.host()), img)
}

/// A pipe whose reader is already gone, as `| head -1` leaves it once head has exited.
fn closed_pipe() -> std::os::fd::OwnedFd {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills two fresh descriptors; both are owned below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    use std::os::fd::FromRawFd;
    // SAFETY: fds[0] and fds[1] are open and owned by nobody else.
    let (r, w) = unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    drop(r);
    w
}

#[test]
fn a_closed_pipe_ends_quietly_not_with_an_abort() {
    let env = StrataEnv::new();
    let dead = DeadPort::new();
    let reference = format!("{}/x:1", dead.host());
    for args in [vec!["pull", reference.as_str()], vec!["images"]] {
        let w = closed_pipe();
        let out = env
            .command(&args)
            .stdout(Stdio::from(w.try_clone().unwrap()))
            .stderr(Stdio::from(w))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "strata {args:?} ended with {} (SIGABRT is {})",
            out.status,
            libc::SIGABRT
        );
    }
    // stdout closed, stderr a file: the panic message must not appear either.
    let out = env
        .command(&["images"])
        .stdout(Stdio::from(closed_pipe()))
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{}", out.status);
    assert!(out.stderr.is_empty(), "{}", out.stderr_str());
}

#[test]
fn exit_codes_are_dockers() {
    let reg = Registry::start();
    let (reference, _) = image(&reg, "habits/codes:v1", "codes");
    let env = StrataEnv::new();
    let dead = DeadPort::new();
    // strata itself fails: registry unreachable, bad option, bad option value.
    let unreachable = format!("{}/x:1", dead.host());
    let out = env.run(&["run", "--rm", &unreachable, "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", out.stderr_str());
    let out = env.run(&["run", "--no-such-flag", &reference, "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", out.stderr_str());
    let out = env.run(&[
        "--root",
        env.root().to_str().unwrap(),
        "run",
        "--bogus",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(125), "{}", out.stderr_str());
    let out = env.run(&["run", "--rm", "--ulimit", "nofile=x", &reference, "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", out.stderr_str());
    // Other commands keep clap's and 1.
    assert_eq!(env.run(&["pull", "--no-such-flag"]).status.code(), Some(2));
    assert_eq!(env.run(&["stop", "nosuch"]).status.code(), Some(1));
    // The command: not found 127, not executable 126, else its own code.
    let out = env.run(&["run", "--rm", &reference, "no-such-binary"]);
    assert_eq!(out.status.code(), Some(127), "{}", out.stderr_str());
    let out = env.run(&["run", "--rm", &reference, "/data/marker"]);
    assert_eq!(out.status.code(), Some(126), "{}", out.stderr_str());
    assert!(
        out.stderr_str().contains("/data/marker"),
        "{}",
        out.stderr_str()
    );
    let out = env.run(&["run", "--rm", &reference, "/etc"]);
    assert_eq!(out.status.code(), Some(126), "{}", out.stderr_str());
    let out = env.run(&["container", "run", "--rm", &reference, "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", out.stderr_str());
}

fn lines(s: String) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_string).collect();
    v.sort();
    v
}

#[test]
fn image_management_forms_format_filter_and_prune() {
    let reg = Registry::start();
    let (a, _) = image(&reg, "habits/alpha:v1", "alpha");
    let (b, built_b) = image(&reg, "habits/beta:v1", "beta");
    let env = StrataEnv::new();
    env.run(&["image", "pull", "-q", &a]).assert_success();
    env.run(&["image", "pull", "-q", &b]).assert_success();
    env.run(&[
        "image",
        "tag",
        &a,
        &format!("{}/habits/alpha:v2", reg.host()),
    ])
    .assert_success();
    // A third image pulled by digest only: untagged, docker's "dangling".
    let (c, built_c) = image(&reg, "habits/gamma:v1", "gamma");
    let by_digest = format!(
        "{}@{}",
        c.rsplit_once(':').unwrap().0,
        built_c.manifest_digest
    );
    env.run(&["pull", "-q", &by_digest]).assert_success();

    let host = reg.host();
    let out = env.run(&["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert_eq!(
        lines(out.assert_success().stdout_str()),
        vec![
            format!("{host}/habits/alpha:v1"),
            format!("{host}/habits/alpha:v2"),
            format!("{host}/habits/beta:v1"),
            format!("{host}/habits/gamma:<none>"),
        ]
    );
    let out = env.run(&[
        "images",
        "-a",
        "--filter",
        &format!("reference={host}/habits/al*"),
        "--format",
        "{{.Tag}}",
    ]);
    assert_eq!(lines(out.assert_success().stdout_str()), vec!["v1", "v2"]);
    let gamma_id = built_c.config_digest.trim_start_matches("sha256:")[..12].to_string();
    let out = env.run(&["images", "--filter", "dangling=true", "-q"]);
    assert_eq!(out.assert_success().stdout_str().trim(), gamma_id);
    let out = env.run(&[
        "images",
        "--format",
        "table {{.ID}}\t{{.Tag}}",
        "-f",
        "dangling=true",
    ]);
    let text = out.assert_success().stdout_str();
    let mut l = text.lines();
    assert!(l.next().unwrap().starts_with("IMAGE ID"), "{text}");
    assert!(l.next().unwrap().starts_with(&gamma_id), "{text}");
    assert!(env.run(&["images", "--filter", "color=red"]).status.code() == Some(1));
    assert!(!env.run(&["images", "--format", "{{.ID"]).status.success());

    // inspect / history through their management forms, with --format.
    let out = env.run(&[
        "image",
        "inspect",
        "--format",
        "{{.Id}} {{json .Config.Env}}",
        &b,
    ]);
    let text = out.assert_success().stdout_str();
    assert!(text.starts_with(&built_b.config_digest), "{text}");
    assert!(text.contains("\"GREETING=image\""), "{text}");
    let out = env.run(&["image", "history", "--format", "{{.CreatedBy}}", &b]);
    let text = out.assert_success().stdout_str();
    assert_eq!(text.lines().next(), Some("marker beta"), "{text}");
    let out = env.run(&["container", "inspect", &b]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr_str().contains("No such container"),
        "{}",
        out.stderr_str()
    );

    // image prune: only the dangling one; -a: everything no container uses.
    let out = env.run(&["image", "prune", "-f"]);
    let text = out.assert_success().stdout_str();
    assert!(text.contains(&built_c.manifest_digest), "{text}");
    let out = env.run(&["images", "--format", "{{.Repository}}"]);
    assert!(!out.stdout_str().contains("gamma"), "{}", out.stdout_str());
    // Without -f and with no "y" on stdin nothing goes.
    env.run(&["image", "prune", "-a"]).assert_success();
    assert_eq!(env.run(&["images", "-q"]).stdout_str().lines().count(), 2);
    let out = env.run_stdin(&["image", "prune", "-a"], b"y\n");
    out.assert_success();
    assert_eq!(env.run(&["images", "-q"]).stdout_str(), "");
    assert!(
        env.blob_hexes().is_empty(),
        "blobs left: {:?}",
        env.blob_hexes()
    );
    env.run(&["image", "rm", "nosuch"]).assert_failure();
}

#[test]
fn version_and_info() {
    let env = StrataEnv::new();
    env.write_config(&serde_json::json!({
        "registry-mirrors": ["http://127.0.0.1:9/mirror"],
    }));
    let out = env.run(&["version"]);
    let text = out.assert_success().stdout_str();
    assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
    assert!(text.contains("runc version"), "{text}");
    let out = env.run(&["info"]);
    let text = out.assert_success().stdout_str();
    assert!(
        text.contains(&format!("Root Dir: {}", env.root().display())),
        "{text}"
    );
    assert!(text.contains("http://127.0.0.1:9/mirror"), "{text}");
    assert!(text.contains("Daemon: not running"), "{text}");
    assert!(text.contains("Chunk Cache: "), "{text}");
    assert_eq!(env.run(&["system", "info"]).stdout_str(), text);
}

/// The freezer state of a process's cgroup (v1 `freezer.state` or v2 `cgroup.freeze`).
fn frozen(pid: &str) -> bool {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in cg.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrl, path) = (f.next(), f.next().unwrap(), f.next().unwrap());
        if ctrl == "freezer" {
            let s = std::fs::read_to_string(format!("/sys/fs/cgroup/freezer{path}/freezer.state"))
                .unwrap();
            return s.trim() == "FROZEN";
        }
    }
    let path = cg.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    std::fs::read_to_string(format!("/sys/fs/cgroup{path}/cgroup.freeze"))
        .unwrap()
        .trim()
        == "1"
}

#[test]
fn container_forms_ps_filters_pause_attach_and_system_prune() {
    let reg = Registry::start();
    let (reference, _) = image(&reg, "habits/ctr:v1", "ctr");
    let env = StrataEnv::new();
    let share = env.scratch().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let vol = format!("{}:/w", share.display());
    env.run(&["run", "--name", "done", &reference, "sh", "-c", "exit 3"]);
    let out = env.run(&[
        "run",
        "-d",
        "--name",
        "looper",
        "-v",
        &vol,
        &reference,
        "sh",
        "-c",
        "while [ ! -e /w/go ]; do echo tick; sleep 0.1; done; echo done-output; exit 4",
    ]);
    out.assert_success();

    let out = env.run(&["ps", "-a", "--format", "{{.Names}} {{.State}}"]);
    assert_eq!(
        lines(out.assert_success().stdout_str()),
        vec!["done exited", "looper running"]
    );
    let out = env.run(&[
        "container",
        "ls",
        "--filter",
        "status=exited",
        "--format",
        "{{.Names}}",
    ]);
    assert_eq!(out.assert_success().stdout_str(), "done\n");
    let out = env.run(&[
        "ps",
        "--filter",
        "name=loop",
        "--format",
        "table {{.Names}}",
    ]);
    assert_eq!(out.assert_success().stdout_str(), "NAMES\nlooper\n");
    assert_eq!(
        env.run(&["ps", "--filter", "status=bogus"]).status.code(),
        Some(1)
    );
    let pid = env.run(&["container", "inspect", "-f", "{{.State.Pid}}", "looper"]);
    let pid = pid.assert_success().stdout_str().trim().to_string();
    assert!(pid.parse::<u32>().unwrap() > 1, "{pid}");

    // pause freezes the container's cgroup; ps and inspect say so; unpause thaws it.
    env.run(&["pause", "looper"]).assert_success();
    assert!(frozen(&pid), "cgroup of {pid} not frozen after pause");
    let out = env.run(&["ps", "--filter", "status=paused", "--format", "{{.Names}}"]);
    assert_eq!(out.stdout_str(), "looper\n");
    let out = env.run(&["inspect", "-f", "{{.State.Status}}", "looper"]);
    assert_eq!(out.stdout_str(), "paused\n");
    env.run(&["container", "unpause", "looper"])
        .assert_success();
    assert!(!frozen(&pid), "still frozen after unpause");

    // attach follows the output from now on and returns the container's exit code.
    let scratch = env.scratch();
    let out_path = scratch.join("attach.out");
    let mut attach = env
        .command(&["attach", "looper"])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    common::poll_until(
        "attach to show the container's output",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            std::fs::read_to_string(&out_path)
                .unwrap()
                .contains("tick")
                .then_some(())
        },
    );
    std::fs::write(share.join("go"), "").unwrap();
    let status = common::poll_until(
        "attach to end",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || attach.try_wait().unwrap(),
    );
    assert_eq!(status.code(), Some(4));
    assert!(std::fs::read_to_string(&out_path)
        .unwrap()
        .contains("done-output"));
    assert_eq!(env.run(&["attach", "looper"]).status.code(), Some(1));

    // container prune removes the stopped ones; system prune -a the images, blobs no image
    // names (once old enough) and the chunk cache.
    let keep = env.run(&["run", "-d", "--name", "keeper", &reference, "sleep", "600"]);
    keep.assert_success();
    let out = env.run(&["container", "prune", "-f"]);
    out.assert_success();
    let out = env.run(&["ps", "-a", "--format", "{{.Names}}"]);
    assert_eq!(out.stdout_str(), "keeper\n");
    env.run(&["container", "kill", "keeper"]).assert_success();
    let blobs = env.root().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let old = blobs.join("a".repeat(64));
    let fresh = blobs.join("b".repeat(64));
    std::fs::write(&old, "stray").unwrap();
    std::fs::write(&fresh, "in flight").unwrap();
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    env.run(&["cache", "fetch", &reference]).assert_success();
    assert!(env.root().join("cache").read_dir().unwrap().count() > 0);
    let out = env.run(&["system", "prune", "-a", "-f"]);
    let text = out.assert_success().stdout_str();
    assert!(text.contains("Deleted 1 unreferenced blob"), "{text}");
    assert_eq!(env.run(&["ps", "-a", "-q"]).stdout_str(), "");
    assert_eq!(env.run(&["images", "-q"]).stdout_str(), "");
    assert!(!old.exists() && fresh.exists());
    let out = env.run(&["cache", "ls"]);
    assert!(
        out.stdout_str().contains("total: 0B in 0 spans"),
        "chunk cache not emptied: {}",
        out.stdout_str()
    );
}
