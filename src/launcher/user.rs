//! `--user` resolution through the container's own /etc/passwd and /etc/group.
//!
//! Follows runc's `GetExecUser`, which docker uses: `NAME|UID[:GID|:GROUP]`; a numeric uid
//! missing from passwd is allowed (gid 0, home `/`), a name must exist; a group part by name
//! must exist in /etc/group, by number need not; supplementary groups (groups listing the
//! user as a member) only when no group part was given and the user was found in passwd.
//! Files are read through [`scoped_path`], so a symlinked /etc/passwd in an image cannot make
//! strata read a host file. Reads files only; no other layer is called.

use super::Error;
use std::path::{Component, Path, PathBuf};

/// The identity the container process runs as.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// The passwd name, when the user was found there.
    pub name: Option<String>,
    /// The passwd home directory, when the user was found there.
    pub home: Option<String>,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry<'_>> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?,
                uid: f.get(2)?.trim().parse().ok()?,
                gid: f.get(3)?.trim().parse().ok()?,
                home: f.get(5).copied().unwrap_or("/"),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry<'_>> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: f.first()?,
                gid: f.get(2)?.trim().parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Resolve `spec` (`""` means root) against the files of `rootfs`.
pub fn resolve_user(rootfs: &Path, spec: &str) -> Result<ResolvedUser, Error> {
    let passwd = read_optional(rootfs, "/etc/passwd")?;
    let group = read_optional(rootfs, "/etc/group")?;
    resolve_with(passwd.as_deref(), group.as_deref(), spec)
}

fn read_optional(rootfs: &Path, path: &str) -> Result<Option<String>, Error> {
    let p = scoped_path(rootfs, path)?;
    match std::fs::read(&p) {
        Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("reading the image's user database", &p, e)),
    }
}

/// Resolution on file contents (`None`: the file does not exist).
pub(crate) fn resolve_with(
    passwd: Option<&str>,
    group: Option<&str>,
    spec: &str,
) -> Result<ResolvedUser, Error> {
    let (user_arg, group_arg) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_arg = if user_arg.is_empty() { "0" } else { user_arg };
    let users = parse_passwd(passwd.unwrap_or(""));
    let groups = parse_group(group.unwrap_or(""));

    let numeric_uid = user_arg.parse::<u32>().ok();
    let found = users.iter().find(|u| match numeric_uid {
        Some(n) => u.uid == n,
        None => u.name == user_arg,
    });
    let mut out = match (found, numeric_uid) {
        (Some(u), _) => ResolvedUser {
            uid: u.uid,
            gid: u.gid,
            additional_gids: Vec::new(),
            name: Some(u.name.to_string()),
            home: Some(u.home.to_string()),
        },
        (None, Some(n)) => ResolvedUser {
            uid: n,
            ..Default::default()
        },
        (None, None) => return Err(Error::UnknownUser(user_arg.to_string())),
    };

    match group_arg {
        Some(g) if !g.is_empty() => {
            let numeric_gid = g.parse::<u32>().ok();
            let found = groups.iter().find(|e| match numeric_gid {
                Some(n) => e.gid == n,
                None => e.name == g,
            });
            out.gid = match (found, numeric_gid) {
                (Some(e), _) => e.gid,
                (None, Some(n)) => n,
                (None, None) => return Err(Error::UnknownGroup(g.to_string())),
            };
        }
        _ => {
            if let Some(name) = out.name.as_deref() {
                for e in groups.iter().filter(|e| e.members.contains(&name)) {
                    if !out.additional_gids.contains(&e.gid) {
                        out.additional_gids.push(e.gid);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// `path` (absolute, as seen inside the container) resolved under `root` with every symlink
/// followed inside `root`: `..` and absolute link targets never leave it. The last component
/// need not exist.
pub fn scoped_path(root: &Path, path: &str) -> Result<PathBuf, Error> {
    const MAX_LINKS: usize = 40;
    let mut links = 0;
    // Components still to walk, in reverse order (a stack).
    let mut todo: Vec<String> = rev_components(path);
    let mut resolved: Vec<String> = Vec::new();
    while let Some(c) = todo.pop() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved
            .iter()
            .fold(root.to_path_buf(), |p, c| p.join(c))
            .join(&c);
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(Error::io(
                        "resolving inside the rootfs",
                        &candidate,
                        std::io::Error::from_raw_os_error(libc::ELOOP),
                    ));
                }
                let target = std::fs::read_link(&candidate)
                    .map_err(|e| Error::io("reading symlink", &candidate, e))?;
                let target = target.to_string_lossy();
                if target.starts_with('/') {
                    resolved.clear();
                }
                todo.extend(rev_components(&target));
            }
            _ => resolved.push(c),
        }
    }
    Ok(resolved.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

fn rev_components(p: &str) -> Vec<String> {
    let mut v: Vec<String> = Path::new(p)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".to_string()),
            _ => None,
        })
        .collect();
    v.reverse();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        app:x:1000:1000::/home/app:/bin/sh\n\
        # comment\n\
        broken-line\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nextra:x:2000:app\nwheel:x:10:root,app\n";

    fn ok(passwd: Option<&str>, group: Option<&str>, spec: &str) -> (u32, u32, Vec<u32>) {
        let u = resolve_with(passwd, group, spec).unwrap();
        (u.uid, u.gid, u.additional_gids)
    }

    #[test]
    fn table() {
        let p = Some(PASSWD);
        let g = Some(GROUP);
        type Case<'a> = (&'a str, (u32, u32, &'a [u32]));
        let cases: &[Case] = &[
            ("", (0, 0, &[10])),
            ("root", (0, 0, &[10])),
            ("app", (1000, 1000, &[2000, 10])),
            ("1000", (1000, 1000, &[2000, 10])),
            ("app:extra", (1000, 2000, &[])),
            ("app:0", (1000, 0, &[])),
            ("1234", (1234, 0, &[])),
            ("1234:5678", (1234, 5678, &[])),
            ("1234:extra", (1234, 2000, &[])),
            ("daemon", (1, 1, &[])),
            ("app:", (1000, 1000, &[2000, 10])),
        ];
        for (spec, (uid, gid, sg)) in cases {
            assert_eq!(ok(p, g, spec), (*uid, *gid, sg.to_vec()), "spec {spec:?}");
        }
    }

    #[test]
    fn errors_and_missing_files() {
        assert!(matches!(
            resolve_with(Some(PASSWD), Some(GROUP), "nobody"),
            Err(Error::UnknownUser(u)) if u == "nobody"
        ));
        assert!(matches!(
            resolve_with(Some(PASSWD), Some(GROUP), "app:nogroup"),
            Err(Error::UnknownGroup(g)) if g == "nogroup"
        ));
        assert_eq!(ok(None, None, "42:43"), (42, 43, vec![]));
        assert_eq!(ok(None, None, ""), (0, 0, vec![]));
        assert!(resolve_with(None, None, "app").is_err());
        let u = resolve_with(Some(PASSWD), None, "app").unwrap();
        assert_eq!(u.home.as_deref(), Some("/home/app"));
        assert_eq!(u.name.as_deref(), Some("app"));
    }

    #[test]
    fn scoped_symlinks_stay_inside() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("etc/real")).unwrap();
        std::fs::write(r.join("etc/real/passwd"), "u:x:7:7::/:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("/etc/real/passwd", r.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc/shadow", r.join("etc/group")).unwrap();
        assert_eq!(
            scoped_path(r, "/etc/passwd").unwrap(),
            r.join("etc/real/passwd")
        );
        assert_eq!(scoped_path(r, "/etc/group").unwrap(), r.join("etc/shadow"));
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        assert!(scoped_path(r, "/loop").is_err());
        let u = resolve_user(r, "u").unwrap();
        assert_eq!((u.uid, u.gid), (7, 7));
    }
}
