//! Capabilities and resource limits of `run`: `--cap-add`, `--cap-drop`, `--privileged`
//! (every capability strata itself holds), `--memory`, `--cpus`. Pure data plus reading
//! this process's capability bounding set; [`super::bundle`] puts the result in the spec.

use super::bundle::DEFAULT_CAPABILITIES;
use super::{Error, RunOptions};
use oci_spec::runtime::{Capabilities, Capability};

/// Linux capability numbers (capability.h), for reading `CapBnd`.
const NUMBERS: &[(&str, u32)] = &[
    ("CHOWN", 0),
    ("DAC_OVERRIDE", 1),
    ("DAC_READ_SEARCH", 2),
    ("FOWNER", 3),
    ("FSETID", 4),
    ("KILL", 5),
    ("SETGID", 6),
    ("SETUID", 7),
    ("SETPCAP", 8),
    ("LINUX_IMMUTABLE", 9),
    ("NET_BIND_SERVICE", 10),
    ("NET_BROADCAST", 11),
    ("NET_ADMIN", 12),
    ("NET_RAW", 13),
    ("IPC_LOCK", 14),
    ("IPC_OWNER", 15),
    ("SYS_MODULE", 16),
    ("SYS_RAWIO", 17),
    ("SYS_CHROOT", 18),
    ("SYS_PTRACE", 19),
    ("SYS_PACCT", 20),
    ("SYS_ADMIN", 21),
    ("SYS_BOOT", 22),
    ("SYS_NICE", 23),
    ("SYS_RESOURCE", 24),
    ("SYS_TIME", 25),
    ("SYS_TTY_CONFIG", 26),
    ("MKNOD", 27),
    ("LEASE", 28),
    ("AUDIT_WRITE", 29),
    ("AUDIT_CONTROL", 30),
    ("SETFCAP", 31),
    ("MAC_OVERRIDE", 32),
    ("MAC_ADMIN", 33),
    ("SYSLOG", 34),
    ("WAKE_ALARM", 35),
    ("BLOCK_SUSPEND", 36),
    ("AUDIT_READ", 37),
    ("PERFMON", 38),
    ("BPF", 39),
    ("CHECKPOINT_RESTORE", 40),
];

/// `NET_ADMIN`, `cap_net_admin` or `ALL` (None) as docker accepts them.
pub fn parse_cap(name: &str) -> Result<Option<Capability>, Error> {
    if name.eq_ignore_ascii_case("all") {
        return Ok(None);
    }
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .map(Some)
        .map_err(|_| Error::invalid("capability", name, "unknown capability name"))
}

/// Every capability in this process's bounding set: what `--privileged` or `--cap-add ALL`
/// can give (a capability strata lacks cannot be handed on).
pub fn held() -> Capabilities {
    let bnd = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        })
        .unwrap_or(0);
    NUMBERS
        .iter()
        .filter(|(_, n)| bnd & (1u64 << n) != 0)
        .filter_map(|(name, _)| parse_cap(name).ok().flatten())
        .collect()
}

/// The container's capability set: docker's defaults (or all held ones when privileged),
/// then `--cap-add`, then `--cap-drop` (`ALL` in either means every capability).
pub fn capabilities(opts: &RunOptions) -> Result<Capabilities, Error> {
    let mut set: Capabilities = if opts.privileged {
        held()
    } else {
        DEFAULT_CAPABILITIES.iter().copied().collect()
    };
    for c in &opts.cap_add {
        match parse_cap(c)? {
            Some(c) => {
                set.insert(c);
            }
            None => set.extend(held()),
        }
    }
    for c in &opts.cap_drop {
        match parse_cap(c)? {
            Some(c) => {
                set.remove(&c);
            }
            None => set.clear(),
        }
    }
    Ok(set)
}

/// `--cpus 1.5` as CFS quota over a 100 ms period: (quota µs, period µs).
pub fn cpu_quota(milli_cpus: u64) -> (i64, u64) {
    const PERIOD: u64 = 100_000;
    ((milli_cpus * PERIOD / 1000) as i64, PERIOD)
}

/// `--cpus` as docker takes it (a decimal number of CPUs) in thousandths.
pub fn parse_cpus(s: &str) -> Result<u64, Error> {
    let v: f64 = s
        .parse()
        .map_err(|_| Error::invalid("--cpus", s, "not a number"))?;
    if !(v > 0.0 && v <= 4096.0) {
        return Err(Error::invalid("--cpus", s, "must be above 0"));
    }
    Ok((v * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_drop_all_and_names() {
        let mut o = RunOptions::default();
        assert_eq!(
            parse_cap("cap_net_admin").unwrap(),
            Some(Capability::NetAdmin)
        );
        assert_eq!(parse_cap("ALL").unwrap(), None);
        assert!(parse_cap("FLY").is_err());
        o.cap_add = vec!["NET_ADMIN".into()];
        o.cap_drop = vec!["CHOWN".into()];
        let s = capabilities(&o).unwrap();
        assert!(s.contains(&Capability::NetAdmin) && !s.contains(&Capability::Chown));
        o.cap_drop = vec!["all".into()];
        assert!(capabilities(&o).unwrap().is_empty());
        assert_eq!(cpu_quota(parse_cpus("1.5").unwrap()), (150_000, 100_000));
        assert!(parse_cpus("0").is_err() && parse_cpus("x").is_err());
    }
}
