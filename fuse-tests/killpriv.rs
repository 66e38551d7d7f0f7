//! Set-ID bits and file capabilities on writes, truncates and chowns through `strata overlay`
//! with `FUSE_HANDLE_KILLPRIV_V2` (issue 17): the kernel leaves the S_ISUID / S_ISGID drop
//! to the server, so every case runs on the mount and on a plain directory of the host
//! filesystem (ext4 here) and must end the same, through the mount's stat, in the upper
//! file, and for `security.capability`. "Unprivileged" is root without CAP_FSETID
//! (`setpriv --bounding-set -fsetid`), as a container without that capability; "root" keeps
//! it. Writes go through passthrough (the daemon never sees them) and, with `O_DIRECT`,
//! through WRITE requests.

mod common;
#[path = "union_common.rs"]
mod union_common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use strata::fuse::MountOptions;
use strata::union::UnionOptions;
use union_common::*;

/// `sh -c cmd f`, as root with or without CAP_FSETID.
fn sh(f: &Path, cmd: &str, fsetid: bool) {
    let mut c = Command::new("setpriv");
    if !fsetid {
        c.args(["--bounding-set", "-fsetid"]);
    }
    let st = c
        .args(["--", "sh", "-c", cmd])
        .arg(f)
        .status()
        .expect("setpriv (util-linux)");
    assert!(st.success(), "{cmd} on {}", f.display());
}

fn has_caps(f: &Path) -> bool {
    let p = CString::new(f.as_os_str().as_bytes()).unwrap();
    let n = c"security.capability";
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    r > 0
}

fn setcap(f: &Path) {
    let st = Command::new("setcap")
        .arg("cap_net_raw+ep")
        .arg(f)
        .status()
        .expect("setcap (libcap2-bin)");
    assert!(st.success());
    assert!(
        has_caps(f),
        "security.capability not set on {}",
        f.display()
    );
}

const APPEND: &str = "printf x >> \"$0\"";
const TRUNCATE: &str = "truncate -s 1 \"$0\"";
const OTRUNC: &str = ": > \"$0\"";
const FALLOCATE: &str = "fallocate -l 65536 \"$0\"";
const DIRECT: &str =
    "dd if=/dev/zero of=\"$0\" bs=4096 count=1 oflag=direct conv=notrunc status=none";

/// The cases under `root`, one result line each: mode as stat shows it, and whether
/// `security.capability` is there.
fn run(root: &Path) -> Vec<String> {
    // (name, mode, gid, file capabilities, command, CAP_FSETID)
    let cases: &[(&str, u32, u32, bool, &str, bool)] = &[
        ("w-suid", 0o4755, 0, false, APPEND, false),
        ("w-sgid-gexec", 0o2775, 0, false, APPEND, false),
        ("w-sgid-member", 0o2765, 0, false, APPEND, false),
        ("w-sgid-nonmember", 0o2765, 4321, false, APPEND, false),
        ("w-cap", 0o755, 0, true, APPEND, false),
        ("trunc-setid", 0o6755, 0, false, TRUNCATE, false),
        ("otrunc-suid", 0o4755, 0, false, OTRUNC, false),
        ("fallocate-suid", 0o4755, 0, false, FALLOCATE, false),
        ("direct-suid", 0o4755, 0, false, DIRECT, false),
        ("direct-cap", 0o755, 0, true, DIRECT, false),
        ("root-w-setid", 0o6755, 0, false, APPEND, true),
        ("root-trunc-setid", 0o6755, 0, false, TRUNCATE, true),
        ("root-otrunc-setid", 0o6755, 0, false, OTRUNC, true),
        ("root-w-cap", 0o755, 0, true, APPEND, true),
        ("root-chown", 0o6745, 0, false, "chown 1 \"$0\"", true),
        ("w-chown", 0o6745, 0, false, "chown 1 \"$0\"", false),
    ];
    let mut out = Vec::new();
    let line = |name: &str, f: &Path| {
        let m = std::fs::metadata(f).unwrap();
        format!(
            "{name}: mode {:o} uid {} size {} caps {}",
            m.mode() & 0o7777,
            m.uid(),
            m.len(),
            has_caps(f)
        )
    };
    for &(name, mode, gid, caps, cmd, fsetid) in cases {
        let f = root.join(name);
        std::fs::write(&f, b"abcd").unwrap();
        std::os::unix::fs::chown(&f, None, Some(gid)).unwrap();
        if caps {
            setcap(&f);
        }
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
        sh(&f, cmd, fsetid);
        out.push(line(name, &f));
    }
    // After a first write has let the kernel mark the inode "no set-ID, no capability"
    // (SB_NOSEC), a chmod / setcap must bring the check back for the next write.
    let f = root.join("again");
    std::fs::write(&f, b"abcd").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    sh(&f, APPEND, false);
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4755)).unwrap();
    sh(&f, APPEND, false);
    out.push(line("again-chmod", &f));
    setcap(&f);
    sh(&f, APPEND, false);
    out.push(line("again-setcap", &f));
    // The same open descriptor across the chmod (passthrough: the daemon never sees writes).
    let f = root.join("open-across-chmod");
    std::fs::write(&f, b"abcd").unwrap();
    let cmd = "exec 3>>\"$0\"; printf x >&3; chmod 4755 \"$0\"; printf y >&3";
    sh(&f, cmd, false);
    out.push(line("open-across-chmod", &f));
    out
}

#[test]
fn set_id_bits_and_capabilities_dropped_as_on_the_host_filesystem() {
    let tmp = tempfile::tempdir().unwrap();
    let l = tmp.path().join("l");
    std::fs::create_dir_all(&l).unwrap();
    let (u, w) = (tmp.path().join("u"), tmp.path().join("w"));
    let m = StrataMount::dirs(
        std::slice::from_ref(&l),
        Some((&u, &w)),
        &tmp.path().join("mnt"),
        UnionOptions::default(),
        MountOptions::default(),
    );
    assert!(m.handle.as_ref().unwrap().passthrough_active());
    let host = tmp.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    let want = run(&host);
    let got = run(&m.dir);
    // The upper files hold what the mount shows (no stale set-ID bit behind a cached mode).
    let upper: Vec<String> = got
        .iter()
        .map(|l| {
            let name = l.split(':').next().unwrap();
            let name = if name.starts_with("again-") {
                "again"
            } else {
                name
            };
            let f = u.join(name);
            let md = std::fs::metadata(&f).unwrap();
            let mode = format!("mode {:o} ", md.mode() & 0o7777);
            assert!(l.contains(&mode), "upper {name}: {mode}, mount: {l}");
            format!("{name}: caps {}", has_caps(&f))
        })
        .collect();
    assert!(!upper.is_empty());
    let diff: Vec<String> = got
        .iter()
        .zip(&want)
        .filter(|(g, w)| g != w)
        .map(|(g, w)| format!("strata: {g}\nhost:   {w}"))
        .collect();
    assert!(
        diff.is_empty() && got.len() == want.len(),
        "strata differs from the host filesystem:\n{}",
        diff.join("\n")
    );
    // The expectations themselves (so that a host that drops nothing fails too).
    let find = |n: &str| {
        want.iter()
            .find(|l| l.starts_with(&format!("{n}:")))
            .unwrap()
    };
    assert!(find("w-suid").contains("mode 755 "));
    assert!(find("w-sgid-member").contains("mode 2765 "));
    assert!(find("w-sgid-nonmember").contains("mode 765 "));
    assert!(find("w-cap").contains("caps false"));
    assert!(find("root-w-setid").contains("mode 6755 "));
    assert!(find("root-w-cap").contains("caps false"));
    assert!(find("again-chmod").contains("mode 755 "));
    assert!(find("again-setcap").contains("caps false"));
}
