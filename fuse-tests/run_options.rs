//! `strata run` options of issue 19: `--pull always|missing|never`, `--memory`/`--cpus`
//! (checked in the container's cgroup from the host), `--cap-add`/`--cap-drop`/
//! `--privileged` (checked in the container's /proc/self/status). Real registry, real runc.

mod common;

use common::{busybox_image, Layer, OutputExt, Registry, StrataEnv};

fn push(reg: &Registry, repo_tag: &str, marker: &str) -> String {
    busybox_image()
        .layer(Layer::new().file("data/marker", format!("{marker}\n")))
        .build("v1")
        .push(reg, repo_tag);
    format!("{}/{repo_tag}", reg.host())
}

#[test]
fn pull_policy_always_missing_never() {
    let reg = Registry::start();
    let env = StrataEnv::new();
    let reference = format!("{}/opts/moving:v1", reg.host());
    let out = env.run(&["run", "--rm", "--pull", "never", &reference, "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", out.stderr_str());
    assert!(
        out.stderr_str().contains("--pull never"),
        "{}",
        out.stderr_str()
    );
    push(&reg, "opts/moving:v1", "first");
    let cat = |policy: &str| {
        let out = env.run(&[
            "run",
            "--rm",
            "--pull",
            policy,
            &reference,
            "cat",
            "/data/marker",
        ]);
        out.assert_success();
        out.stdout_str()
    };
    assert_eq!(cat("missing"), "first\n");
    // The tag moves in the registry: missing and never keep the local image, always follows.
    push(&reg, "opts/moving:v1", "second");
    assert_eq!(cat("missing"), "first\n");
    assert_eq!(cat("never"), "first\n");
    assert_eq!(cat("always"), "second\n");
    assert_eq!(cat("missing"), "second\n");
    let out = env.run(&["run", "--pull", "sometimes", &reference, "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", out.stderr_str());
}

/// A controller's directory of a host process (cgroup v1 `N:ctrl:/path`, or v2 `0::/path`).
fn cgroup_dir(pid: &str, controller: &str) -> std::path::PathBuf {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in cg.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrls, path) = (f.next(), f.next().unwrap(), f.next().unwrap());
        if ctrls.split(',').any(|c| c == controller) {
            return format!("/sys/fs/cgroup/{controller}{path}").into();
        }
    }
    let path = cg.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    format!("/sys/fs/cgroup{path}").into()
}

#[test]
fn memory_and_cpus_reach_the_container_cgroup() {
    let reg = Registry::start();
    let reference = push(&reg, "opts/limits:v1", "limits");
    let env = StrataEnv::new();
    let out = env.run(&[
        "run", "-d", "--name", "lim", "--memory", "64m", "--cpus", "0.5", &reference, "sleep",
        "600",
    ]);
    out.assert_success();
    let pid = env
        .run(&["inspect", "-f", "{{.State.Pid}}", "lim"])
        .stdout_str();
    let pid = pid.trim();
    let mem = cgroup_dir(pid, "memory");
    let limit = std::fs::read_to_string(mem.join("memory.limit_in_bytes"))
        .or_else(|_| std::fs::read_to_string(mem.join("memory.max")))
        .unwrap();
    assert_eq!(limit.trim(), (64u64 << 20).to_string(), "{}", mem.display());
    let cpu = cgroup_dir(pid, "cpu");
    let quota = std::fs::read_to_string(cpu.join("cpu.cfs_quota_us"))
        .map(|q| q.trim().to_string())
        .or_else(|_| std::fs::read_to_string(cpu.join("cpu.max")).map(|m| m.replace(' ', "/")))
        .unwrap();
    assert!(
        quota == "50000" || quota.trim() == "50000/100000",
        "cpu quota {quota:?} in {}",
        cpu.display()
    );
    env.run(&["rm", "-f", "lim"]).assert_success();
    let out = env.run(&["run", "--rm", "--memory", "1k", &reference, "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", out.stderr_str());
    let out = env.run(&["run", "--rm", "--cpus", "lots", &reference, "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", out.stderr_str());
}

/// The effective capability mask the container's shell sees.
fn cap_eff(env: &StrataEnv, reference: &str, flags: &[&str]) -> u64 {
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[reference, "grep", "CapEff", "/proc/self/status"]);
    let out = env.run(&args);
    out.assert_success();
    let text = out.stdout_str();
    u64::from_str_radix(text.trim().trim_start_matches("CapEff:").trim(), 16)
        .unwrap_or_else(|_| panic!("{text}"))
}

#[test]
fn cap_add_cap_drop_and_privileged() {
    const CHOWN: u64 = 1 << 0;
    const NET_ADMIN: u64 = 1 << 12;
    const SYS_ADMIN: u64 = 1 << 21;
    let reg = Registry::start();
    let reference = push(&reg, "opts/caps:v1", "caps");
    let env = StrataEnv::new();
    let default = cap_eff(&env, &reference, &[]);
    assert!(default & CHOWN != 0 && default & NET_ADMIN == 0 && default & SYS_ADMIN == 0);
    let added = cap_eff(
        &env,
        &reference,
        &["--cap-add", "NET_ADMIN", "--cap-drop", "chown"],
    );
    assert_eq!(added, (default | NET_ADMIN) & !CHOWN);
    assert_eq!(cap_eff(&env, &reference, &["--cap-drop", "ALL"]), 0);
    let privileged = cap_eff(&env, &reference, &["--privileged"]);
    let host = std::fs::read_to_string("/proc/self/status").unwrap();
    let host_bnd = host
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|h| u64::from_str_radix(h.trim(), 16).unwrap())
        .unwrap();
    assert_eq!(
        privileged, host_bnd,
        "privileged: every capability strata holds"
    );
    // --privileged also unmasks /proc/timer_list (masked by default: reads as empty).
    let size = |flags: &[&str]| {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[reference.as_str(), "sh", "-c", "wc -c < /proc/timer_list"]);
        let out = env.run(&args);
        out.assert_success();
        out.stdout_str().trim().parse::<u64>().unwrap()
    };
    assert_eq!(size(&[]), 0, "/proc/timer_list not masked by default");
    assert!(
        size(&["--privileged"]) > 0,
        "/proc/timer_list masked when privileged"
    );
    let out = env.run(&["run", "--rm", "--cap-add", "FLY", &reference, "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", out.stderr_str());
}
