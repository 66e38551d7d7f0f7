//! OCI runtime bundle generation: image config + [`RunOptions`] -> `config.json`.
//!
//! Docker's rules, implemented here and nowhere else: Entrypoint/Cmd overrides, environment
//! merge (default PATH, HOSTNAME, TERM for `-t`, then image Env, then the user's), WorkingDir,
//! `--user` (through [`super::user`]), the capability set (defaults, `--cap-add/--cap-drop`,
//! `--privileged`: [`super::caps`]), memory and CPU limits, masked and read-only paths, the default mounts plus generated /etc/hosts, /etc/hostname and /etc/resolv.conf
//! (files in the container directory, bind-mounted read-only), volumes and tmpfs mounts.
//! Namespaces: pid, ipc, uts, mount, and network unless `--network host` (`bridge` joins
//! the namespace [`super::network`] pinned). Seccomp: docker's default profile unless
//! unconfined or privileged ([`super::seccomp`]); `no-new-privileges`. Resource limits
//! are clamped to strata's own hard limits: without CAP_SYS_RESOURCE runc cannot raise a
//! hard limit and would fail to start the container. Uses oci-spec builders; writes files
//! only into the container directory, never into the rootfs.

use super::options::{RunOptions, Ulimit};
use super::{resolve_user, Error, Network, ResolvedUser};
use crate::oci::{ContainerConfig, ImageConfig};
use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimit, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Docker's default PATH for Linux containers.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `RLIMIT_NOFILE` given to containers unless `--ulimit nofile=` says otherwise (docker's
/// usual value), then clamped to strata's hard limit.
pub const DEFAULT_NOFILE: u64 = 1_048_576;

/// Docker's default capabilities (bounding, effective and permitted sets).
pub const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Docker's masked paths (an empty file or tmpfs mounted over them).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Everything a bundle is made from.
pub struct BundleInputs<'a> {
    /// The container id (64 hex).
    pub id: &'a str,
    /// The ready root filesystem (the caller's mount).
    pub rootfs: &'a Path,
    pub image: &'a ImageConfig,
    pub options: &'a RunOptions,
    /// `containers/<id>`: receives `hosts`, `hostname`, `resolv.conf` and `bundle/`.
    pub container_dir: &'a Path,
}

/// The container's argv: docker's Entrypoint/Cmd rules. Args replace the image Cmd;
/// `--entrypoint` replaces the image Entrypoint and drops the image Cmd; an empty
/// `--entrypoint` (`[]` or `[""]`) means no entrypoint.
pub fn process_args(
    image: Option<&ContainerConfig>,
    opts: &RunOptions,
) -> Result<Vec<String>, Error> {
    let image_entry = image.and_then(|c| c.entrypoint.clone()).unwrap_or_default();
    let image_cmd = image.and_then(|c| c.cmd.clone()).unwrap_or_default();
    let (entry, default_cmd) = match &opts.entrypoint {
        Some(e) if e.is_empty() || (e.len() == 1 && e[0].is_empty()) => (Vec::new(), Vec::new()),
        Some(e) => (e.clone(), Vec::new()),
        None => (image_entry, image_cmd),
    };
    let cmd = if opts.args.is_empty() {
        default_cmd
    } else {
        opts.args.clone()
    };
    let argv: Vec<String> = entry.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        return Err(Error::NoCommand);
    }
    Ok(argv)
}

/// What a container's start executes: its argv (`argv[0]` first), the PATH it is looked up in and the
/// working directory, as [`build_spec`] will set them (`None` when the options are invalid:
/// the spec's own error comes later).
pub fn start_command(
    image: &ImageConfig,
    opts: &RunOptions,
) -> Option<(Vec<String>, String, String)> {
    let config = image.config.as_ref();
    let argv = process_args(config, opts).ok()?;
    argv.first()?;
    let cwd = working_dir(config, opts).ok()?;
    let user_env = opts.user_env(|k| std::env::var(k).ok()).ok()?;
    let image_env = config.and_then(|c| c.env.clone()).unwrap_or_default();
    let env = merge_env(&image_env, &user_env, "", false, None);
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_string();
    Some((argv, path, cwd))
}

/// `K=V` entries of `overrides` replace same-key entries of `base` in place or are appended.
pub fn replace_or_append_env(base: &mut Vec<String>, overrides: &[String]) {
    for kv in overrides {
        let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        let existing = base
            .iter_mut()
            .find(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key);
        match existing {
            Some(e) => e.clone_from(kv),
            None => base.push(kv.clone()),
        }
    }
}

/// The process environment: PATH (docker's default), HOSTNAME, TERM=xterm with `-t`, then
/// the image's Env, then the user's (`-e`, env files); HOME from passwd when still unset.
pub fn merge_env(
    image_env: &[String],
    user_env: &[String],
    hostname: &str,
    tty: bool,
    home: Option<&str>,
) -> Vec<String> {
    let mut env = vec![
        format!("PATH={DEFAULT_PATH}"),
        format!("HOSTNAME={hostname}"),
    ];
    if tty {
        env.push("TERM=xterm".to_string());
    }
    replace_or_append_env(&mut env, image_env);
    replace_or_append_env(&mut env, user_env);
    if let Some(h) = home {
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            env.push(format!("HOME={h}"));
        }
    }
    env
}

/// The working directory: `-w`, else the image's WorkingDir, else `/`; must be absolute.
pub fn working_dir(image: Option<&ContainerConfig>, opts: &RunOptions) -> Result<String, Error> {
    if let Some(w) = &opts.workdir {
        if !w.starts_with('/') {
            return Err(Error::invalid(
                "working directory",
                w,
                "it needs to be an absolute path",
            ));
        }
        return Ok(w.clone());
    }
    match image.and_then(|c| c.working_dir.as_deref()) {
        Some(w) if w.starts_with('/') => Ok(w.to_string()),
        Some(w) if !w.is_empty() => Ok(format!("/{w}")),
        _ => Ok("/".to_string()),
    }
}

/// The container's hostname: `--hostname`, else the host's with host networking (docker),
/// else the first 12 hex digits of the id.
pub fn hostname(id: &str, opts: &RunOptions) -> String {
    if let Some(h) = &opts.hostname {
        return h.clone();
    }
    if opts.network == Network::Host {
        if let Ok(h) = nix::unistd::gethostname() {
            if let Some(s) = h.to_str() {
                return s.to_string();
            }
        }
    }
    id.chars().take(12).collect()
}

fn build<T>(r: Result<T, oci_spec::OciSpecError>) -> Result<T, Error> {
    r.map_err(Error::Spec)
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, Error> {
    build(
        MountBuilder::default()
            .destination(dest)
            .typ(typ)
            .source(source)
            .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build(),
    )
}

fn bind(source: &Path, dest: &str, read_only: bool) -> Result<Mount, Error> {
    let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
    if read_only {
        options.push("ro".to_string());
    }
    build(
        MountBuilder::default()
            .destination(dest)
            .typ("bind")
            .source(source)
            .options(options)
            .build(),
    )
}

/// Docker's default mounts.
fn default_mounts() -> Result<Vec<Mount>, Error> {
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
    ])
}

/// strata's current hard limit for `resource`; `u64::MAX` is unlimited.
fn current_hard_limit(resource: libc::__rlimit_resource_t) -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid, writable rlimit struct that outlives the call; getrlimit
    // only writes into it.
    let rc = unsafe { libc::getrlimit(resource, &mut rl) };
    if rc == 0 {
        rl.rlim_max
    } else {
        u64::MAX
    }
}

fn rlimit_kind(name: &str) -> Option<(PosixRlimitType, libc::__rlimit_resource_t)> {
    Some(match name {
        "as" => (PosixRlimitType::RlimitAs, libc::RLIMIT_AS),
        "core" => (PosixRlimitType::RlimitCore, libc::RLIMIT_CORE),
        "cpu" => (PosixRlimitType::RlimitCpu, libc::RLIMIT_CPU),
        "data" => (PosixRlimitType::RlimitData, libc::RLIMIT_DATA),
        "fsize" => (PosixRlimitType::RlimitFsize, libc::RLIMIT_FSIZE),
        "locks" => (PosixRlimitType::RlimitLocks, libc::RLIMIT_LOCKS),
        "memlock" => (PosixRlimitType::RlimitMemlock, libc::RLIMIT_MEMLOCK),
        "msgqueue" => (PosixRlimitType::RlimitMsgqueue, libc::RLIMIT_MSGQUEUE),
        "nice" => (PosixRlimitType::RlimitNice, libc::RLIMIT_NICE),
        "nofile" => (PosixRlimitType::RlimitNofile, libc::RLIMIT_NOFILE),
        "nproc" => (PosixRlimitType::RlimitNproc, libc::RLIMIT_NPROC),
        "rss" => (PosixRlimitType::RlimitRss, libc::RLIMIT_RSS),
        "rtprio" => (PosixRlimitType::RlimitRtprio, libc::RLIMIT_RTPRIO),
        "rttime" => (PosixRlimitType::RlimitRttime, libc::RLIMIT_RTTIME),
        "sigpending" => (PosixRlimitType::RlimitSigpending, libc::RLIMIT_SIGPENDING),
        "stack" => (PosixRlimitType::RlimitStack, libc::RLIMIT_STACK),
        _ => return None,
    })
}

/// `(soft, hard)` lowered so that `hard <= max_hard` and `soft <= hard`.
pub fn clamp_rlimit(soft: u64, hard: u64, max_hard: u64) -> (u64, u64) {
    let hard = hard.min(max_hard);
    (soft.min(hard), hard)
}

/// The rlimits: `nofile` [`DEFAULT_NOFILE`] unless overridden, then each `--ulimit`; every
/// value clamped to strata's own hard limit (warned about), since raising one needs
/// CAP_SYS_RESOURCE.
pub fn rlimits(ulimits: &[Ulimit]) -> Result<Vec<PosixRlimit>, Error> {
    let mut wanted: Vec<Ulimit> = Vec::new();
    if !ulimits.iter().any(|u| u.name == "nofile") {
        wanted.push(Ulimit {
            name: "nofile".into(),
            soft: DEFAULT_NOFILE,
            hard: DEFAULT_NOFILE,
        });
    }
    wanted.extend(ulimits.iter().cloned());
    let mut out = Vec::new();
    for u in &wanted {
        let (typ, res) = rlimit_kind(&u.name)
            .ok_or_else(|| Error::invalid("ulimit", &u.name, "unknown limit"))?;
        let max = current_hard_limit(res);
        let (soft, hard) = clamp_rlimit(u.soft, u.hard, max);
        if hard < u.hard && ulimits.contains(u) {
            tracing::warn!(
                limit = %u.name,
                wanted = u.hard,
                allowed = max,
                "ulimit lowered to strata's own hard limit (no CAP_SYS_RESOURCE to raise it)"
            );
        }
        out.retain(|r: &PosixRlimit| r.typ() != typ);
        out.push(build(
            PosixRlimitBuilder::default()
                .typ(typ)
                .soft(soft)
                .hard(hard)
                .build(),
        )?);
    }
    Ok(out)
}

/// The complete runtime spec. Reads the rootfs's /etc/passwd and /etc/group for `--user`,
/// env files, and strata's rlimits; writes nothing.
pub fn build_spec(inp: &BundleInputs<'_>) -> Result<Spec, Error> {
    let opts = inp.options;
    let image = inp.image.config.as_ref();
    let args = process_args(image, opts)?;
    let cwd = working_dir(image, opts)?;
    let host = hostname(inp.id, opts);

    let user_spec = opts
        .user
        .clone()
        .or_else(|| image.and_then(|c| c.user.clone()))
        .unwrap_or_default();
    let user: ResolvedUser = resolve_user(inp.rootfs, &user_spec)?;
    let user_env = opts.user_env(|k| std::env::var(k).ok())?;
    let image_env = image.and_then(|c| c.env.clone()).unwrap_or_default();
    let env = merge_env(&image_env, &user_env, &host, opts.tty, user.home.as_deref());

    let mut spec_user = UserBuilder::default().uid(user.uid).gid(user.gid);
    if !user.additional_gids.is_empty() {
        spec_user = spec_user.additional_gids(user.additional_gids.clone());
    }
    let caps = super::caps::capabilities(opts)?;
    // docker: --privileged implies seccomp=unconfined.
    let seccomp = if opts.privileged {
        None
    } else {
        super::seccomp::for_container(&opts.seccomp, &caps)?
    };
    let process = build(
        ProcessBuilder::default()
            .terminal(opts.tty)
            .user(build(spec_user.build())?)
            .args(args)
            .env(env)
            .cwd(cwd)
            .capabilities(build(
                // docker's sets: inheritable and ambient empty (oci-spec's builder would
                // fill them with its own defaults, which also break `--cap-drop ALL`).
                LinuxCapabilitiesBuilder::default()
                    .inheritable(Capabilities::new())
                    .ambient(Capabilities::new())
                    .bounding(caps.clone())
                    .effective(caps.clone())
                    .permitted(caps)
                    .build(),
            )?)
            .rlimits(rlimits(&opts.ulimits)?)
            .no_new_privileges(opts.no_new_privileges)
            .build(),
    )?;

    let mut namespaces = Vec::new();
    let kinds = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    for k in kinds {
        namespaces.push(build(LinuxNamespaceBuilder::default().typ(k).build())?);
    }
    match opts.network {
        Network::Host => {}
        Network::None => namespaces.push(build(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .build(),
        )?),
        Network::Bridge => namespaces.push(build(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(super::network::netns_path(inp.id))
                .build(),
        )?),
    }
    let paths = |p: &[&str]| -> Vec<String> {
        if opts.privileged {
            Vec::new()
        } else {
            p.iter().map(|s| s.to_string()).collect()
        }
    };
    let mut resources = LinuxResourcesBuilder::default().devices(vec![build(
        LinuxDeviceCgroupBuilder::default()
            .allow(opts.privileged)
            .access("rwm")
            .build(),
    )?]);
    if let Some(limit) = opts.memory {
        resources = resources.memory(build(LinuxMemoryBuilder::default().limit(limit).build())?);
    }
    if let Some(m) = opts.milli_cpus {
        let (quota, period) = super::caps::cpu_quota(m);
        resources = resources.cpu(build(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(period)
                .build(),
        )?);
    }
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(paths(MASKED_PATHS))
        .readonly_paths(paths(READONLY_PATHS))
        .resources(build(resources.build())?);
    if let Some(s) = seccomp {
        linux = linux.seccomp(s);
    }
    if opts.network != Network::Host {
        linux = linux.sysctl(HashMap::from([
            (
                "net.ipv4.ip_unprivileged_port_start".to_string(),
                "0".to_string(),
            ),
            (
                "net.ipv4.ping_group_range".to_string(),
                "0 2147483647".to_string(),
            ),
        ]));
    }

    let rootfs = std::fs::canonicalize(inp.rootfs)
        .map_err(|e| Error::io("resolving the rootfs", inp.rootfs, e))?;
    build(
        SpecBuilder::default()
            .version("1.0.2-dev")
            .root(build(
                RootBuilder::default()
                    .path(rootfs)
                    .readonly(opts.read_only)
                    .build(),
            )?)
            .hostname(host)
            .mounts(mounts(inp.container_dir, opts)?)
            .process(process)
            .linux(build(linux.build())?)
            .build(),
    )
}

/// Default mounts (minus those a user mount replaces), /etc files, volumes, tmpfs.
fn mounts(container_dir: &Path, opts: &RunOptions) -> Result<Vec<Mount>, Error> {
    let mut user: Vec<Mount> = Vec::new();
    for (file, dest) in ETC_FILES {
        user.push(bind(&container_dir.join(file), dest, true)?);
    }
    for v in &opts.volumes {
        user.push(bind(&v.host, &v.container, v.read_only)?);
    }
    for t in &opts.tmpfs {
        let mut o = vec!["nosuid".to_string(), "nodev".to_string()];
        if !t.options.iter().any(|x| x == "exec") {
            o.push("noexec".to_string());
        }
        o.extend(t.options.iter().cloned());
        user.push(build(
            MountBuilder::default()
                .destination(&t.path)
                .typ("tmpfs")
                .source("tmpfs")
                .options(o)
                .build(),
        )?);
    }
    let mut all: Vec<Mount> = default_mounts()?
        .into_iter()
        .filter(|d| !user.iter().any(|u| u.destination() == d.destination()))
        .collect();
    all.extend(user);
    Ok(all)
}

/// Files generated in the container directory and where they are mounted.
const ETC_FILES: [(&str, &str); 3] = [
    ("hosts", "/etc/hosts"),
    ("hostname", "/etc/hostname"),
    ("resolv.conf", "/etc/resolv.conf"),
];

/// /etc/hosts: the host's file with host networking (docker), else localhost entries; the
/// container's hostname is added on 127.0.0.1 when no line names it.
pub fn hosts_file(network: Network, hostname: &str, host_hosts: Option<&str>) -> String {
    let mut text = match (network, host_hosts) {
        (Network::Host, Some(h)) => h.to_string(),
        _ => "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
              fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
              ff02::2\tip6-allrouters\n"
            .to_string(),
    };
    let named = text.lines().any(|l| {
        let l = l.split('#').next().unwrap_or("");
        l.split_whitespace().skip(1).any(|n| n == hostname)
    });
    if !named {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("127.0.0.1\t{hostname}\n"));
    }
    text
}

fn write_file(path: &Path, content: &[u8]) -> Result<(), Error> {
    std::fs::write(path, content).map_err(|e| Error::io("writing", path, e))
}

/// Generate /etc files and volume sources, build the spec and write
/// `containers/<id>/bundle/config.json`. Returns the bundle directory and the spec.
pub fn write_bundle(inp: &BundleInputs<'_>) -> Result<(PathBuf, Spec), Error> {
    let spec = build_spec(inp)?;
    let dir = inp.container_dir;
    let host = spec.hostname().clone().unwrap_or_default();
    let host_hosts = std::fs::read_to_string("/etc/hosts").ok();
    write_file(
        &dir.join("hosts"),
        hosts_file(inp.options.network, &host, host_hosts.as_deref()).as_bytes(),
    )?;
    write_file(&dir.join("hostname"), format!("{host}\n").as_bytes())?;
    let resolv = if inp.options.network == Network::Bridge {
        // slirp4netns forwards DNS to the host's resolvers (which may be on the host's
        // loopback, out of the container's reach).
        format!("nameserver {}\n", super::network::DNS).into_bytes()
    } else {
        std::fs::read("/etc/resolv.conf")
            .unwrap_or_else(|_| b"nameserver 8.8.8.8\nnameserver 8.8.4.4\n".to_vec())
    };
    write_file(&dir.join("resolv.conf"), &resolv)?;
    // docker creates a missing bind-mount source directory.
    for v in &inp.options.volumes {
        if !v.host.exists() {
            std::fs::create_dir_all(&v.host)
                .map_err(|e| Error::io("creating volume source", &v.host, e))?;
        }
    }
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle).map_err(|e| Error::io("creating bundle dir", &bundle, e))?;
    let body = serde_json::to_vec_pretty(&spec).map_err(|source| Error::Json {
        path: bundle.join("config.json"),
        source,
    })?;
    let tmp = bundle.join("config.json.tmp");
    write_file(&tmp, &body)?;
    let dest = bundle.join("config.json");
    std::fs::rename(&tmp, &dest).map_err(|e| Error::io("renaming", &dest, e))?;
    Ok((bundle, spec))
}

#[cfg(test)]
#[path = "bundle_tests.rs"]
mod tests;
