//! The set-user-ID and set-group-ID bits a change drops (issue 17). The VFS drops them on a
//! write, truncate or chown (`setattr_should_drop_suidgid`, `chown_common`): S_ISUID always
//! (on a write or truncate only when the caller lacks CAP_FSETID), S_ISGID when the file is
//! group-executable **or the caller is neither in the file's group nor holds CAP_FSETID**.
//! strata negotiates `FUSE_HANDLE_KILLPRIV_V2` (the kernel then marks inodes "no security
//! xattrs" after a first write, so later writes send no GETXATTR), which leaves the drop to
//! the server: `fuse_setattr` strips it from what it sends. What reaches strata is a
//! SETATTR with `FATTR_KILL_SUIDGID` (a chown; a truncate, `O_TRUNC` opens included, by a
//! caller without CAP_FSETID), a create that truncates an existing file with
//! `FUSE_OPEN_KILL_SUIDGID`, a WRITE with `FUSE_WRITE_KILL_SUIDGID` (a caller without
//! CAP_FSETID), or an *empty* SETATTR: what is left of the kernel's own drop when a write or
//! fallocate finds set-ID bits on the file as it has cached it (`file_remove_privs`; also
//! for passthrough writes, which the daemon never sees), or of `chown(f, -1, -1)`.
//! [`mode_after`] finishes the SETATTRs and creates, [`write_kill`] a WRITE, as ext4 would
//! for that caller; a SETATTR of times only (utimensat) drops nothing. One case differs: an
//! empty SETATTR is also what a write by a caller *with* CAP_FSETID sends when it removes a
//! file's `security.capability`, and S_ISUID is dropped then too (ext4 keeps it; only a
//! set-user-ID file with file capabilities, written by root, shows it). `security.capability`
//! itself is the kernel's (GETXATTR, then REMOVEXATTR) and the upper filesystem's (every
//! write the daemon makes removes it). Whether the caller is in the group or holds
//! CAP_FSETID is read from `/proc/TID/status` of the calling thread (its supplementary
//! groups and effective capabilities; the FUSE request carries only its fsuid and fsgid).

use super::types::{Caller, SetAttr};
use super::{Attr, FileKind};

const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_IXGRP: u32 = 0o010;
const CAP_FSETID: u32 = 4;

/// The permission bits `s`, asked by `s.caller`, leaves on the object `a` when they are not
/// those the request names: `Some(bits)` to set instead (or as well).
pub(super) fn mode_after(a: &Attr, s: &SetAttr) -> Option<u32> {
    let caller = s.caller?;
    if a.kind == FileKind::Dir || a.kind == FileKind::Symlink {
        return None;
    }
    if s.times_only() {
        return None;
    }
    let bits = s.mode.map_or(a.perm as u32, |m| m & 0o7777);
    let out = dropped(bits, a.gid, &caller, s.kill_suidgid || s.is_empty());
    (out != bits).then_some(out)
}

/// The bits a WRITE with `FUSE_WRITE_KILL_SUIDGID` by `caller` leaves on a regular file of
/// permission bits `perm` and group `gid`, when they change.
pub(super) fn write_kill(perm: u32, gid: u32, caller: &Caller) -> Option<u32> {
    let out = dropped(perm, gid, caller, true);
    (out != perm).then_some(out)
}

/// `bits` after the drop: with `kill`, S_ISUID and a group-executable S_ISGID; S_ISGID
/// without group exec when `caller` is neither in group `gid` nor holds CAP_FSETID.
fn dropped(bits: u32, gid: u32, caller: &Caller, kill: bool) -> u32 {
    let mut out = bits;
    if kill {
        out &= !S_ISUID;
        if out & S_IXGRP != 0 {
            out &= !S_ISGID;
        }
    }
    if out & S_ISGID != 0 && out & S_IXGRP == 0 && !keeps_sgid(caller, gid) {
        out &= !S_ISGID;
    }
    out
}

/// Is `caller` in group `gid`, or does it hold CAP_FSETID (`in_group_or_capable`)?
fn keeps_sgid(caller: &Caller, gid: u32) -> bool {
    if caller.gid == gid {
        return true;
    }
    let status = match std::fs::read_to_string(format!("/proc/{}/status", caller.pid)) {
        Ok(s) if caller.pid != 0 => s,
        // The caller is gone or out of sight (another PID namespace): root keeps it.
        _ => return caller.uid == 0,
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let capable = field("CapEff:")
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_FSETID) != 0);
    let member = field("Groups:").is_some_and(|g| {
        g.split_whitespace()
            .any(|x| x.parse::<u32>().is_ok_and(|x| x == gid))
    });
    capable || member
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn attr(kind: FileKind, perm: u16, gid: u32) -> Attr {
        Attr {
            ino: 2,
            kind,
            perm,
            nlink: 1,
            uid: 1,
            gid,
            rdev: 0,
            size: 0,
            blocks: 0,
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            blksize: 4096,
            lower: false,
        }
    }

    /// A caller that cannot be looked up in /proc: only its fsgid and uid count.
    fn nobody() -> Option<Caller> {
        Some(Caller {
            uid: 4242,
            gid: 4242,
            pid: 0,
        })
    }

    #[test]
    fn drops_sgid_without_group_exec_for_non_members_only() {
        let f = attr(FileKind::File, 0o2664, 7);
        let trunc = SetAttr {
            size: Some(0),
            caller: nobody(),
            ..SetAttr::default()
        };
        assert_eq!(mode_after(&f, &trunc), Some(0o664));
        let empty = SetAttr {
            caller: nobody(),
            ..SetAttr::default()
        };
        assert_eq!(mode_after(&f, &empty), Some(0o664));
        // a write that also drops S_ISUID sends the mode with S_ISGID still set
        let kill = SetAttr {
            mode: Some(0o2664),
            caller: nobody(),
            ..SetAttr::default()
        };
        assert_eq!(
            mode_after(&attr(FileKind::File, 0o6664, 7), &kill),
            Some(0o664)
        );
        // a member (fsgid), root without /proc, times only, directories: nothing
        let member = SetAttr {
            size: Some(0),
            caller: Some(Caller {
                uid: 4242,
                gid: 7,
                pid: 0,
            }),
            ..SetAttr::default()
        };
        assert_eq!(mode_after(&f, &member), None);
        let root = SetAttr {
            size: Some(0),
            caller: Some(Caller::default()),
            ..SetAttr::default()
        };
        assert_eq!(mode_after(&f, &root), None);
        let times = SetAttr {
            mtime: Some(super::super::TimeSpec::Now),
            caller: nobody(),
            ..SetAttr::default()
        };
        assert_eq!(mode_after(&f, &times), None);
        assert_eq!(mode_after(&attr(FileKind::Dir, 0o2775, 7), &empty), None);
        // an empty SETATTR (a write's drop, chown(f, -1, -1)) drops S_ISUID and a
        // group-executable S_ISGID for anyone, members and root included
        let root_empty = SetAttr {
            caller: Some(Caller::default()),
            ..SetAttr::default()
        };
        assert_eq!(
            mode_after(&attr(FileKind::File, 0o2674, 7), &empty),
            Some(0o674)
        );
        assert_eq!(
            mode_after(&attr(FileKind::File, 0o6775, 7), &root_empty),
            Some(0o775)
        );
        assert_eq!(
            mode_after(&attr(FileKind::File, 0o6765, 0), &root_empty),
            Some(0o2765)
        );
        assert_eq!(
            mode_after(&attr(FileKind::File, 0o755, 7), &root_empty),
            None
        );
        // no caller (internal calls): nothing
        let internal = SetAttr {
            size: Some(0),
            ..SetAttr::default()
        };
        assert_eq!(mode_after(&f, &internal), None);
    }

    /// `FATTR_KILL_SUIDGID` (chown; truncate without CAP_FSETID) and
    /// `FUSE_WRITE_KILL_SUIDGID`: S_ISUID always, S_ISGID when group-executable or the caller
    /// is not in the group; nothing else changes.
    #[test]
    fn kill_requests_drop_as_the_kernel_would() {
        let f = attr(FileKind::File, 0o6754, 7);
        let chown = SetAttr {
            uid: Some(5),
            kill_suidgid: true,
            caller: Some(Caller::default()),
            ..SetAttr::default()
        };
        assert_eq!(mode_after(&f, &chown), Some(0o754));
        let trunc = SetAttr {
            size: Some(0),
            kill_suidgid: true,
            caller: Some(Caller {
                uid: 4242,
                gid: 7,
                pid: 0,
            }),
            ..SetAttr::default()
        };
        // a member keeps S_ISGID without group exec, loses S_ISUID
        assert_eq!(
            mode_after(&attr(FileKind::File, 0o6744, 7), &trunc),
            Some(0o2744)
        );
        // without the flag (a caller with CAP_FSETID truncating): nothing
        let plain = SetAttr {
            kill_suidgid: false,
            ..trunc
        };
        assert_eq!(mode_after(&attr(FileKind::File, 0o6744, 7), &plain), None);
        let member = Caller {
            uid: 4242,
            gid: 7,
            pid: 0,
        };
        assert_eq!(write_kill(0o4755, 7, &member), Some(0o755));
        assert_eq!(write_kill(0o2775, 7, &member), Some(0o775));
        assert_eq!(write_kill(0o2765, 7, &member), None);
        assert_eq!(write_kill(0o2765, 8, &nobody().unwrap()), Some(0o765));
        assert_eq!(write_kill(0o644, 8, &nobody().unwrap()), None);
    }

    #[test]
    fn reads_groups_and_capabilities_of_the_calling_thread() {
        // This test process: root with every capability, or not; either way its own
        // groups count.
        let me = Caller {
            uid: 4242,
            gid: 4242,
            pid: std::process::id(),
        };
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let groups = status
            .lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .unwrap()
            .to_string();
        if let Some(g) = groups.split_whitespace().next() {
            assert!(keeps_sgid(&me, g.parse().unwrap()));
        }
    }
}
