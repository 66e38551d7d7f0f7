//! The set-group-ID bit a change drops where the FUSE kernel leaves it (issue 17). The VFS
//! drops S_ISUID and S_ISGID on a write, truncate or chown by a caller without CAP_FSETID
//! (`setattr_should_drop_suidgid`): S_ISUID always, S_ISGID when the file is
//! group-executable **or the caller is not in the file's group**. Without
//! `FUSE_HANDLE_KILLPRIV(_V2)` the FUSE kernel (`fuse_setattr`) turns such a drop into a
//! SETATTR of the mode by an older rule that keeps S_ISGID on a file without group exec, so
//! what reaches strata is: a SETATTR of the size (truncate) or of the owner (chown), an
//! *empty* SETATTR (a write's or fallocate's privilege drop, or `chown(f, -1, -1)`), or a
//! mode that still has S_ISGID (a write that also drops S_ISUID; `setattr_prepare` is
//! skipped for these, where a chmod by a non-member always arrives without S_ISGID). For
//! each, [`mode_after`] finishes the drop as ext4 does; a SETATTR of times only (utimensat)
//! drops nothing. Whether the caller is in the group or holds CAP_FSETID is read from
//! `/proc/TID/status` of the calling thread (its supplementary groups and effective
//! capabilities; the FUSE request carries only its fsuid and fsgid).

use super::types::{Caller, SetAttr};
use super::{Attr, FileKind};

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
    if bits & S_ISGID == 0 || bits & S_IXGRP != 0 || keeps_sgid(&caller, a.gid) {
        return None;
    }
    Some(bits & !S_ISGID)
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
        // group-executable files: the kernel drops S_ISGID itself
        assert_eq!(mode_after(&attr(FileKind::File, 0o2674, 7), &empty), None);
        // no caller (internal calls): nothing
        let internal = SetAttr {
            size: Some(0),
            ..SetAttr::default()
        };
        assert_eq!(mode_after(&f, &internal), None);
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
