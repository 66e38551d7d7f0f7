//! Seccomp for `run`: docker's default profile, docker-format profile files, and their
//! resolution into the OCI spec's `linux.seccomp` for one container.
//!
//! Pure data: a profile is read in docker's JSON format ([`Profile`]: `defaultAction`,
//! `archMap`/`architectures`, `syscalls` with `includes`/`excludes` on capabilities,
//! architectures and kernel version); [`default_profile`] is docker's default allow-list
//! (default action `ERRNO(EPERM)`, about 350 allowed calls, more when the container holds
//! the capability a call needs) written as such a profile. [`resolve`] evaluates the
//! conditions against the container's capability set, this machine's architecture and
//! kernel, and yields an oci-spec [`LinuxSeccomp`] for runc (which compiles it with
//! libseccomp). [`super::bundle`] calls it unless `--security-opt seccomp=unconfined` or
//! `--privileged`. Reads nothing but the kernel release (uname).

use super::Error;
use oci_spec::runtime::{
    Arch, Capabilities, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompBuilder,
    LinuxSeccompFilterFlag, LinuxSyscall, LinuxSyscallBuilder,
};
use serde::{Deserialize, Serialize};

/// Seccomp part of `--security-opt`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompOption {
    /// docker's default profile ([`default_profile`]).
    #[default]
    Default,
    /// `seccomp=unconfined`: no filter.
    Unconfined,
    /// `seccomp=FILE`: the file's JSON (docker's format), read and checked when the
    /// container is created so `start` does not depend on the file.
    Custom(String),
}

impl SeccompOption {
    /// `seccomp=...` value: `unconfined` or a profile file (read and parsed now).
    pub fn parse(value: &str) -> Result<Self, Error> {
        if value == "unconfined" {
            return Ok(SeccompOption::Unconfined);
        }
        let path = std::path::Path::new(value);
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io("reading the seccomp profile", path, e))?;
        Profile::from_json(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(SeccompOption::Custom(text))
    }
}

/// A docker-format seccomp profile (`docker run --security-opt seccomp=FILE`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub default_action: LinuxSeccompAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    /// Flat architecture list (older profiles); used when `archMap` is absent.
    #[serde(default)]
    pub architectures: Vec<Arch>,
    #[serde(default)]
    pub arch_map: Vec<ArchMap>,
    #[serde(default)]
    pub flags: Vec<LinuxSeccompFilterFlag>,
    #[serde(default)]
    pub syscalls: Vec<Rule>,
}

/// A native architecture and the ones its kernel also runs (x86_64: x86, x32).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchMap {
    pub architecture: Arch,
    #[serde(default)]
    pub sub_architectures: Vec<Arch>,
}

/// One `syscalls` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub names: Vec<String>,
    /// Single-name form of old profiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: LinuxSeccompAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    #[serde(default)]
    pub args: Vec<LinuxSeccompArg>,
    #[serde(default)]
    pub includes: Filter,
    #[serde(default)]
    pub excludes: Filter,
}

/// When a rule applies: every listed capability held, this architecture (Go names:
/// `amd64`, `arm64`, ...), kernel at least `minKernel`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    #[serde(default)]
    pub caps: Vec<String>,
    #[serde(default)]
    pub arches: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_kernel: Option<String>,
}

impl Profile {
    pub fn from_json(text: &str) -> Result<Profile, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// What [`resolve`] evaluates conditions against.
#[derive(Debug, Clone)]
pub struct Target {
    /// Capability names, `CAP_SYS_ADMIN` style.
    pub caps: Vec<String>,
    /// Go's name for this architecture (`amd64`, `arm64`, `s390x`, `riscv64`, `ppc64le`).
    pub arch: &'static str,
    /// The running kernel's (major, minor).
    pub kernel: (u32, u32),
}

impl Target {
    /// This machine and `caps` (the container's bounding set).
    pub fn native(caps: &Capabilities) -> Target {
        let caps = caps
            .iter()
            .filter_map(|c| match serde_json::to_value(c) {
                Ok(serde_json::Value::String(s)) => Some(s),
                _ => None,
            })
            .collect();
        Target {
            caps,
            arch: go_arch(),
            kernel: kernel_version(),
        }
    }
}

/// Go's GOARCH for the architecture strata was built for (docker's profiles use these).
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "x86",
        "aarch64" => "arm64",
        "arm" => "arm",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "powerpc64" => "ppc64le",
        "mips64" => "mips64le",
        other => other,
    }
}

/// The seccomp architecture of this build.
fn native_arch() -> Option<Arch> {
    Some(match std::env::consts::ARCH {
        "x86_64" => Arch::ScmpArchX86_64,
        "x86" => Arch::ScmpArchX86,
        "aarch64" => Arch::ScmpArchAarch64,
        "arm" => Arch::ScmpArchArm,
        "s390x" => Arch::ScmpArchS390x,
        "riscv64" => Arch::ScmpArchRiscv64,
        "powerpc64" => Arch::ScmpArchPpc64le,
        "mips64" => Arch::ScmpArchMipsel64,
        _ => return None,
    })
}

/// (major, minor) of the running kernel; (0, 0) when unreadable.
fn kernel_version() -> (u32, u32) {
    let release = nix::sys::utsname::uname()
        .ok()
        .and_then(|u| u.release().to_str().map(str::to_string))
        .unwrap_or_default();
    parse_kernel(&release).unwrap_or((0, 0))
}

fn parse_kernel(s: &str) -> Option<(u32, u32)> {
    let mut it = s.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

impl Filter {
    fn is_empty(&self) -> bool {
        self.caps.is_empty() && self.arches.is_empty() && self.min_kernel.is_none()
    }
}

/// Whether `rule` applies to `t` (docker's rules: every `includes` condition holds, and no
/// `excludes` condition does).
fn applies(rule: &Rule, t: &Target) -> Result<bool, Error> {
    let kernel_at_least = |v: &str| -> Result<bool, Error> {
        let want = parse_kernel(v)
            .ok_or_else(|| Error::invalid("seccomp minKernel", v, "expected MAJOR.MINOR"))?;
        Ok(t.kernel >= want)
    };
    let inc = &rule.includes;
    if !inc.is_empty() {
        if !inc.caps.iter().all(|c| t.caps.contains(c)) {
            return Ok(false);
        }
        if !inc.arches.is_empty() && !inc.arches.iter().any(|a| a == t.arch) {
            return Ok(false);
        }
        if let Some(k) = &inc.min_kernel {
            if !kernel_at_least(k)? {
                return Ok(false);
            }
        }
    }
    let exc = &rule.excludes;
    if exc.caps.iter().any(|c| t.caps.contains(c)) {
        return Ok(false);
    }
    if exc.arches.iter().any(|a| a == t.arch) {
        return Ok(false);
    }
    if let Some(k) = &exc.min_kernel {
        if kernel_at_least(k)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The OCI `linux.seccomp` of `profile` for `target`.
pub fn resolve(profile: &Profile, target: &Target) -> Result<LinuxSeccomp, Error> {
    fn spec<T>(r: Result<T, oci_spec::OciSpecError>) -> Result<T, Error> {
        r.map_err(Error::Spec)
    }
    let mut arches: Vec<Arch> = Vec::new();
    if profile.arch_map.is_empty() {
        arches.extend(profile.architectures.iter().copied());
    } else {
        let native = native_arch();
        for m in &profile.arch_map {
            if Some(m.architecture) == native {
                arches.push(m.architecture);
                arches.extend(m.sub_architectures.iter().copied());
            }
        }
    }
    let mut syscalls: Vec<LinuxSyscall> = Vec::new();
    for rule in &profile.syscalls {
        if !applies(rule, target)? {
            continue;
        }
        let mut names = rule.names.clone();
        names.extend(rule.name.clone());
        if names.is_empty() {
            return Err(Error::invalid(
                "seccomp profile",
                &format!("{:?}", rule.action),
                "a syscalls entry names no system call",
            ));
        }
        let mut b = LinuxSyscallBuilder::default()
            .names(names)
            .action(rule.action);
        if let Some(e) = rule.errno_ret {
            b = b.errno_ret(e);
        }
        if !rule.args.is_empty() {
            b = b.args(rule.args.clone());
        }
        syscalls.push(spec(b.build())?);
    }
    let mut b = LinuxSeccompBuilder::default()
        .default_action(profile.default_action)
        .architectures(arches)
        .syscalls(syscalls);
    if let Some(e) = profile.default_errno_ret {
        b = b.default_errno_ret(e);
    }
    if !profile.flags.is_empty() {
        b = b.flags(profile.flags.clone());
    }
    spec(b.build())
}

/// The filter for `opt` and the container's capabilities; `None` when unconfined.
pub fn for_container(
    opt: &SeccompOption,
    caps: &Capabilities,
) -> Result<Option<LinuxSeccomp>, Error> {
    let profile = match opt {
        SeccompOption::Unconfined => return Ok(None),
        SeccompOption::Default => default_profile(),
        SeccompOption::Custom(text) => Profile::from_json(text).map_err(|source| Error::Json {
            path: "seccomp profile".into(),
            source,
        })?,
    };
    resolve(&profile, &Target::native(caps)).map(Some)
}

#[path = "seccomp_default.rs"]
mod default;
pub use default::default_profile;

#[cfg(test)]
mod tests {
    use super::*;

    fn target(caps: &[&str]) -> Target {
        Target {
            caps: caps.iter().map(|s| s.to_string()).collect(),
            arch: "amd64",
            kernel: (6, 1),
        }
    }

    fn allowed(s: &LinuxSeccomp, name: &str) -> bool {
        s.syscalls().iter().flatten().any(|r| {
            r.action() == LinuxSeccompAction::ScmpActAllow
                && r.args().is_none()
                && r.names().iter().any(|n| n == name)
        })
    }

    #[test]
    fn default_profile_blocks_keyctl_and_follows_capabilities() {
        let p = default_profile();
        assert_eq!(p.default_action, LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret, Some(libc::EPERM as u32));
        let plain = resolve(&p, &target(&["CAP_CHOWN"])).unwrap();
        for ok in ["read", "openat", "execve", "arch_prctl"] {
            assert!(allowed(&plain, ok), "{ok} should be allowed");
        }
        for blocked in ["keyctl", "add_key", "mount", "unshare", "reboot", "bpf"] {
            assert!(!allowed(&plain, blocked), "{blocked} should be blocked");
        }
        // clone3 answers ENOSYS (so libcs fall back to clone, whose flags are checked).
        let clone3 = plain
            .syscalls()
            .iter()
            .flatten()
            .find(|r| r.names().iter().any(|n| n == "clone3"))
            .unwrap();
        assert_eq!(clone3.errno_ret(), Some(libc::ENOSYS as u32));
        let admin = resolve(&p, &target(&["CAP_SYS_ADMIN"])).unwrap();
        assert!(allowed(&admin, "mount") && allowed(&admin, "unshare"));
        assert!(!allowed(&admin, "keyctl"));
        // x86_64 with its sub-architectures on this build.
        if std::env::consts::ARCH == "x86_64" {
            assert_eq!(
                plain.architectures().as_deref(),
                Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
            );
        }
    }

    #[test]
    fn docker_format_file() {
        let text = r#"{
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                {"name": "chmod", "action": "SCMP_ACT_ERRNO",
                 "excludes": {"caps": ["CAP_FOWNER"]}},
                {"names": ["uname"], "action": "SCMP_ACT_ERRNO",
                 "includes": {"arches": ["s390x"]}},
                {"names": ["sync"], "action": "SCMP_ACT_ERRNO",
                 "includes": {"minKernel": "99.0"}}
            ]
        }"#;
        let p = Profile::from_json(text).unwrap();
        let s = resolve(&p, &target(&["CAP_FOWNER"])).unwrap();
        let rules = s.syscalls().clone().unwrap();
        assert_eq!(rules.len(), 1, "{rules:?}");
        assert_eq!(rules[0].errno_ret(), Some(13));
        let s = resolve(&p, &target(&[])).unwrap();
        assert_eq!(s.syscalls().as_ref().unwrap().len(), 2);
        assert!(Profile::from_json(r#"{"defaultAction": "SCMP_ACT_NOPE"}"#).is_err());
        assert_eq!(parse_kernel("6.18.44-fc"), Some((6, 18)));
    }
}
