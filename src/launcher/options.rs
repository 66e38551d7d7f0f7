//! Docker-style options of `strata run` ([`RunOptions`]) and the parsers of their values.
//!
//! Pure data and string parsing; reading `--env-file` files is the only I/O here. The CLI
//! fills a [`RunOptions`]; [`super::bundle`] turns it into an OCI spec. The options are
//! serialised into the container record so `start` can rebuild the same bundle.

use super::seccomp::SeccompOption;
use super::Error;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

/// The runtime binary used when [`RunOptions::runtime`] is `None`.
pub const DEFAULT_RUNTIME: &str = "runc";

/// Options of `strata run`, with docker's meaning.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunOptions {
    /// `COMMAND [ARG...]` after the image: replaces the image's Cmd.
    pub args: Vec<String>,
    /// `--entrypoint`: replaces the image's Entrypoint and clears its Cmd; `Some(vec![])` or
    /// `Some(vec!["".into()])` resets the Entrypoint to none.
    pub entrypoint: Option<Vec<String>>,
    /// `-e K=V` (or `-e K`: the host's value, dropped when the host has none), applied after
    /// the env files.
    pub env: Vec<String>,
    /// `--env-file`: lines of `K=V` or `K`; `#` comments and blank lines skipped.
    pub env_files: Vec<PathBuf>,
    /// `-w`: working directory (absolute); default the image's WorkingDir, else `/`.
    pub workdir: Option<String>,
    /// `-u NAME|UID[:GID|:GROUP]`, resolved through the rootfs's /etc/passwd and /etc/group.
    pub user: Option<String>,
    /// `--name`; a docker-style random name when `None`.
    pub name: Option<String>,
    /// `--hostname`; default the host's hostname with host networking (as docker), else
    /// the first 12 hex digits of the container id.
    pub hostname: Option<String>,
    /// `-t`: a pseudo terminal for the process.
    pub tty: bool,
    /// `-i`: keep stdin attached (otherwise the process reads /dev/null).
    pub interactive: bool,
    /// `-d`: run in the background, stdout and stderr to `containers/<id>/log`.
    pub detach: bool,
    /// `--rm`: the caller removes the container when it exits.
    pub remove: bool,
    /// `-v HOST:CTR[:ro|:rw]` bind mounts.
    pub volumes: Vec<Volume>,
    /// `--network`: `bridge` (default: a private namespace with slirp4netns), `host` or
    /// `none`.
    pub network: Network,
    /// `-p [IP:]HOST:CONTAINER[/tcp|/udp]`: host ports forwarded into a `bridge` container.
    pub publish: Vec<PortMapping>,
    /// `--security-opt seccomp=...`: docker's default profile, unconfined or a file's.
    pub seccomp: SeccompOption,
    /// `--security-opt no-new-privileges`: the process cannot gain privileges (setuid
    /// binaries, file capabilities).
    pub no_new_privileges: bool,
    /// `--read-only`: mount the container's root filesystem read-only.
    pub read_only: bool,
    /// `--tmpfs PATH[:OPTIONS]`.
    pub tmpfs: Vec<Tmpfs>,
    /// `--ulimit NAME=SOFT[:HARD]`; clamped to strata's own hard limits (see [`super::bundle`]).
    pub ulimits: Vec<Ulimit>,
    /// `--runtime`: the OCI runtime binary; default `runc` from PATH.
    pub runtime: Option<PathBuf>,
    /// `--cap-add NAME|ALL`.
    pub cap_add: Vec<String>,
    /// `--cap-drop NAME|ALL`.
    pub cap_drop: Vec<String>,
    /// `--privileged`: every capability strata holds, no masked or read-only /proc paths,
    /// all devices allowed by the device cgroup.
    pub privileged: bool,
    /// `--memory`: memory cgroup limit in bytes.
    pub memory: Option<i64>,
    /// `--cpus` in thousandths of a CPU (CFS quota over a 100 ms period).
    pub milli_cpus: Option<u64>,
}

impl RunOptions {
    /// The runtime binary to use.
    pub fn runtime_path(&self) -> PathBuf {
        self.runtime
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNTIME))
    }

    /// The user's environment in order: env files, then `-e`; `K` alone looks `K` up with
    /// `host` (dropped when absent). Later entries override earlier ones in the merge.
    pub fn user_env(&self, host: impl Fn(&str) -> Option<String>) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        for file in &self.env_files {
            let text = std::fs::read_to_string(file)
                .map_err(|e| Error::io("reading env file", file, e))?;
            for line in text.lines() {
                let line = line.trim_start();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                if let Some(kv) = env_entry(line, &host)? {
                    out.push(kv);
                }
            }
        }
        for e in &self.env {
            if let Some(kv) = env_entry(e, &host)? {
                out.push(kv);
            }
        }
        Ok(out)
    }
}

/// One `-e` value: `K=V` kept, `K` completed from `host`.
fn env_entry(s: &str, host: &impl Fn(&str) -> Option<String>) -> Result<Option<String>, Error> {
    let key = s.split_once('=').map_or(s, |(k, _)| k);
    if key.is_empty() || key.contains(char::is_whitespace) {
        return Err(Error::invalid(
            "environment variable",
            s,
            "the name must be non-empty and contain no whitespace",
        ));
    }
    if s.contains('=') {
        return Ok(Some(s.to_string()));
    }
    Ok(host(key).map(|v| format!("{key}={v}")))
}

/// `--network`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// docker's default: a private network namespace of the container's own (its loopback
    /// is its own) with outbound access through slirp4netns (user-mode NAT, no host
    /// interface touched) and `-p` forwards ([`super::network`]).
    #[default]
    Bridge,
    /// Share the host's network namespace.
    Host,
    /// A new, empty network namespace: only the loopback interface (runc brings `lo` up).
    None,
}

impl FromStr for Network {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "bridge" | "default" | "slirp4netns" => Ok(Network::Bridge),
            "host" => Ok(Network::Host),
            "none" => Ok(Network::None),
            _ => Err(Error::Unsupported(
                "--network",
                format!(
                    "{s:?}: user-defined networks are not supported; use bridge (default), host or none"
                ),
            )),
        }
    }
}

/// Transport of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

/// `-p [IP:]HOST:CONTAINER[/tcp|/udp]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// The host address to listen on; docker's default is every address.
    pub host_ip: std::net::IpAddr,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

impl FromStr for PortMapping {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::invalid("port mapping", s, reason);
        let (spec, proto) = match s.rsplit_once('/') {
            Some((spec, "tcp")) => (spec, Proto::Tcp),
            Some((spec, "udp")) => (spec, Proto::Udp),
            Some(_) => return Err(bad("the protocol must be tcp or udp")),
            None => (s, Proto::Tcp),
        };
        let port = |p: &str| -> Result<u16, Error> {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => Ok(n),
                _ if p.contains('-') => Err(bad("port ranges are not supported")),
                _ => Err(bad(&format!("{p:?} is not a port number (1-65535)"))),
            }
        };
        // IP:HOST:CONTAINER, with an IPv6 address in brackets.
        let (ip, rest) =
            match spec.strip_prefix('[') {
                Some(v6) => {
                    let (ip, rest) = v6
                        .split_once("]:")
                        .ok_or_else(|| bad("expected [IPv6]:HOST:CONTAINER"))?;
                    (Some(ip), rest)
                }
                None => match spec.matches(':').count() {
                    2 => {
                        let (ip, rest) = spec.split_once(':').unwrap_or_default();
                        (Some(ip), rest)
                    }
                    1 => (None, spec),
                    _ => return Err(bad(
                        "expected HOST:CONTAINER or IP:HOST:CONTAINER (a host port is required)",
                    )),
                },
            };
        let (host, ctr) = rest
            .split_once(':')
            .ok_or_else(|| bad("expected HOST:CONTAINER"))?;
        if host.is_empty() {
            return Err(bad(
                "a host port is required (random host ports are not supported)",
            ));
        }
        let host_ip = match ip {
            None | Some("") => std::net::IpAddr::from([0, 0, 0, 0]),
            Some(ip) => ip
                .parse()
                .map_err(|_| bad(&format!("{ip:?} is not an IP address")))?,
        };
        Ok(PortMapping {
            host_ip,
            host_port: port(host)?,
            container_port: port(ctr)?,
            proto,
        })
    }
}

/// One `--security-opt` value, applied to `opts`: `seccomp=unconfined|FILE`,
/// `no-new-privileges[=true|false]` (also docker's old `:` form); `apparmor=unconfined`
/// and `label=disable` are accepted and change nothing (strata applies neither).
pub fn apply_security_opt(opts: &mut RunOptions, value: &str) -> Result<(), Error> {
    let (key, val) = value
        .split_once('=')
        .or_else(|| value.split_once(':'))
        .unwrap_or((value, ""));
    match (key, val) {
        ("seccomp", v) if !v.is_empty() => opts.seccomp = SeccompOption::parse(v)?,
        ("no-new-privileges", "" | "true") => opts.no_new_privileges = true,
        ("no-new-privileges", "false") => opts.no_new_privileges = false,
        ("apparmor", "unconfined") | ("label", "disable") => {}
        _ => {
            return Err(Error::invalid(
                "--security-opt",
                value,
                "supported: seccomp=unconfined, seccomp=FILE, no-new-privileges[=true|false]",
            ))
        }
    }
    Ok(())
}

/// `-v HOST:CTR[:ro|:rw]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub host: PathBuf,
    pub container: String,
    pub read_only: bool,
}

impl FromStr for Volume {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::invalid("volume specification", s, reason);
        let parts: Vec<&str> = s.split(':').collect();
        let (host, ctr, mode) = match parts.as_slice() {
            [h, c] => (*h, *c, None),
            [h, c, m] => (*h, *c, Some(*m)),
            _ => return Err(bad("expected HOST:CONTAINER[:ro|rw]")),
        };
        if !host.starts_with('/') {
            return Err(bad(
                "the host path must be absolute (named volumes are not supported)",
            ));
        }
        check_container_path(ctr).map_err(|r| bad(&r))?;
        let read_only = match mode {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(m) => return Err(bad(&format!("unknown mode {m:?} (use ro or rw)"))),
        };
        Ok(Volume {
            host: PathBuf::from(host),
            container: ctr.to_string(),
            read_only,
        })
    }
}

/// A mount destination inside the container: absolute, no `..`, not `/` itself.
pub(crate) fn check_container_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("the container path {p:?} must be absolute"));
    }
    if Path::new(p)
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(format!("the container path {p:?} must not contain '..'"));
    }
    if Path::new(p).components().count() < 2 {
        return Err("cannot mount over the container's root '/'".to_string());
    }
    Ok(())
}

/// `--tmpfs PATH[:OPT,OPT...]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tmpfs {
    pub path: String,
    pub options: Vec<String>,
}

impl FromStr for Tmpfs {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let (path, opts) = s.split_once(':').unwrap_or((s, ""));
        check_container_path(path).map_err(|r| Error::invalid("tmpfs mount", s, r))?;
        Ok(Tmpfs {
            path: path.to_string(),
            options: opts
                .split(',')
                .filter(|o| !o.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }
}

/// `--ulimit NAME=SOFT[:HARD]`; `-1` means unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

/// Ulimit names docker accepts.
pub(crate) const ULIMIT_NAMES: &[&str] = &[
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

impl FromStr for Ulimit {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::invalid("ulimit", s, reason);
        let (name, vals) = s
            .split_once('=')
            .ok_or_else(|| bad("expected NAME=SOFT[:HARD]"))?;
        if !ULIMIT_NAMES.contains(&name) {
            return Err(bad(&format!("unknown limit {name:?}")));
        }
        let num = |v: &str| -> Result<u64, Error> {
            if v == "-1" || v == "unlimited" {
                return Ok(u64::MAX);
            }
            v.parse::<u64>().map_err(|_| bad("limits are numbers"))
        };
        let (soft, hard) = match vals.split_once(':') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(vals)?, num(vals)?),
        };
        if soft > hard {
            return Err(bad("the soft limit exceeds the hard limit"));
        }
        Ok(Ulimit {
            name: name.to_string(),
            soft,
            hard,
        })
    }
}

/// A signal by name (`SIGTERM`, `TERM`, `term`) or number (`15`).
pub fn parse_signal(s: &str) -> Result<Signal, Error> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| Error::invalid("signal", s, "unknown number"));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| Error::invalid("signal", s, "unknown name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes() {
        let v: Volume = "/data:/srv/data:ro".parse().unwrap();
        assert_eq!(v.host, PathBuf::from("/data"));
        assert_eq!(v.container, "/srv/data");
        assert!(v.read_only);
        let v: Volume = "/data:/srv".parse().unwrap();
        assert!(!v.read_only);
        for bad in [
            "/data",
            "data:/srv",
            "/data:srv",
            "/data:/srv/../etc",
            "/data:/",
            "/data:/srv:z",
            "/a:/b:ro:x",
        ] {
            assert!(bad.parse::<Volume>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn tmpfs_and_ulimits() {
        let t: Tmpfs = "/run:size=64m,mode=755".parse().unwrap();
        assert_eq!(t.path, "/run");
        assert_eq!(t.options, ["size=64m", "mode=755"]);
        assert!("run".parse::<Tmpfs>().is_err());
        let u: Ulimit = "nofile=1024:2048".parse().unwrap();
        assert_eq!((u.soft, u.hard), (1024, 2048));
        let u: Ulimit = "core=-1".parse().unwrap();
        assert_eq!(u.hard, u64::MAX);
        assert!("nofile=2048:1024".parse::<Ulimit>().is_err());
        assert!("bogus=1".parse::<Ulimit>().is_err());
    }

    #[test]
    fn env_sources() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("env");
        std::fs::write(&file, "# comment\n\nA=file\nFROMHOST\nMISSING\nB=x=y\n").unwrap();
        let opts = RunOptions {
            env_files: vec![file],
            env: vec!["A=flag".into(), "FROMHOST".into()],
            ..Default::default()
        };
        let host = |k: &str| (k == "FROMHOST").then(|| "h".to_string());
        let env = opts.user_env(host).unwrap();
        assert_eq!(
            env,
            ["A=file", "FROMHOST=h", "B=x=y", "A=flag", "FROMHOST=h"]
        );
        let bad = RunOptions {
            env: vec!["=x".into()],
            ..Default::default()
        };
        assert!(bad.user_env(host).is_err());
    }

    #[test]
    fn signals_and_network() {
        assert_eq!(parse_signal("TERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("sigkill").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("10").unwrap(), Signal::SIGUSR1);
        assert!(parse_signal("NOPE").is_err());
        assert_eq!("none".parse::<Network>().unwrap(), Network::None);
        assert_eq!("bridge".parse::<Network>().unwrap(), Network::Bridge);
        assert_eq!(Network::default(), Network::Bridge);
        assert!("mynet".parse::<Network>().is_err());
    }

    #[test]
    fn port_mappings() {
        let p: PortMapping = "8080:80".parse().unwrap();
        assert_eq!(
            (p.host_port, p.container_port, p.proto),
            (8080, 80, Proto::Tcp)
        );
        assert_eq!(p.host_ip.to_string(), "0.0.0.0");
        let p: PortMapping = "127.0.0.1:5353:53/udp".parse().unwrap();
        assert_eq!(p.host_ip.to_string(), "127.0.0.1");
        assert_eq!(
            (p.host_port, p.container_port, p.proto),
            (5353, 53, Proto::Udp)
        );
        let p: PortMapping = "[::1]:8080:80".parse().unwrap();
        assert_eq!(p.host_ip.to_string(), "::1");
        for bad in [
            "80",
            ":80",
            "8080:80/sctp",
            "x:80",
            "1-2:80",
            "0:80",
            "a:1:2:3",
            "9.9:1:2",
        ] {
            assert!(bad.parse::<PortMapping>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn security_opts() {
        let mut o = RunOptions::default();
        apply_security_opt(&mut o, "no-new-privileges").unwrap();
        assert!(o.no_new_privileges);
        apply_security_opt(&mut o, "no-new-privileges:false").unwrap();
        assert!(!o.no_new_privileges);
        apply_security_opt(&mut o, "seccomp=unconfined").unwrap();
        assert_eq!(o.seccomp, SeccompOption::Unconfined);
        assert!(apply_security_opt(&mut o, "seccomp=/nonexistent/profile.json").is_err());
        assert!(apply_security_opt(&mut o, "apparmor=docker-default").is_err());
    }
}
