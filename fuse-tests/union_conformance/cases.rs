//! Named cases of issue 17, each run on a lazy strata mount and on ext4 holding the same tree
//! (the random test may take long to draw them): S_ISUID / S_ISGID dropped by writes,
//! truncates and chowns as ext4 drops them, `chown(f, -1, -1)` moving ctime, character
//! devices (0/0 included) and block devices as real devices, and `O_TMPFILE` (refused with
//! EOPNOTSUPP by design, docs/overlay.md).

use super::*;

/// Apply `cases` in order to a fresh strata mount (both fixture layers) and to ext4; the
/// result lines of both, strata first.
fn both(cases: &[(Caller, Op)]) -> (Vec<String>, Vec<String>) {
    let reg = Registry::start();
    let mut b = ImageBuilder::new();
    for l in fixture() {
        b = b.layer(l);
    }
    let reference = common::union_extra::publish_indexed(&reg, &b.build("v1"), "posix/cases:v1");
    let env = StrataEnv::new();
    let t = env.scratch();
    open_path_to(&t);
    let ext4 = Ext4::new(&t.join("ext4.img"), &t.join("ext4"));
    let sm = env.mount_at(
        &reference,
        &t.join("strata"),
        &[
            "--allow-other",
            "--no-prefetch",
            "--upper",
            t.join("up").to_str().unwrap(),
        ],
    );
    let st = Command::new("cp")
        .args(["-a"])
        .arg(sm.dir.join("w"))
        .arg(ext4.dir.join("w"))
        .status()
        .unwrap();
    assert!(st.success());
    let run = |root: &Path| -> Vec<String> {
        let mut out: Vec<String> = cases
            .iter()
            .map(|(who, op)| format!("uid {} {op:?}: {}", who.uid, apply(root, *who, op)))
            .collect();
        out.extend(tree(root));
        out
    };
    let got = run(&sm.dir);
    let want = run(&ext4.dir);
    (got, want)
}

fn assert_same(got: &[String], want: &[String]) {
    let diff: Vec<String> = got
        .iter()
        .zip(want)
        .filter(|(g, w)| g != w)
        .map(|(g, w)| format!("strata: {g}\next4:   {w}"))
        .collect();
    assert!(
        diff.is_empty() && got.len() == want.len(),
        "strata differs from ext4:\n{}",
        diff.join("\n")
    );
}

fn chmod(path: &str, mode: u32) -> (Caller, Op) {
    (
        ROOT,
        Op::Chmod {
            path: path.into(),
            mode,
        },
    )
}

fn chown(who: Caller, path: &str, uid: u32, gid: u32) -> (Caller, Op) {
    (
        who,
        Op::Chown {
            path: path.into(),
            uid,
            gid,
        },
    )
}

/// S_ISUID is dropped by every write or truncate of a caller without CAP_FSETID; S_ISGID
/// too when the file is group-executable, or when the caller is not in the file's group
/// (`setattr_should_drop_sgid`); chown drops both the same way; `chown(f, -1, -1)` changes
/// nothing but ctime.
#[test]
fn setid_bits_and_chown_noop_as_ext4() {
    let write = |who, path: &str| {
        (
            who,
            Op::Write {
                path: path.into(),
                len: 3,
            },
        )
    };
    let truncate = |who, path: &str| {
        (
            who,
            Op::Truncate {
                path: path.into(),
                len: 1,
            },
        )
    };
    let create = |who, path: &str, mode| {
        (
            who,
            Op::Open {
                path: path.into(),
                flags: libc::O_CREAT | libc::O_RDWR,
                mode,
                len: 2,
            },
        )
    };
    let mut cases = vec![
        // created S_ISGID without group exec in the setgid directory (group 3000), then
        // ftruncate: bob is not in 3000 and loses it, alice keeps it
        create(BOB, "w/sg/k", 0o2660),
        create(ALICE, "w/sg/k2", 0o2660),
        // bob's own file, group 2000 (his): S_ISUID goes, S_ISGID without exec stays
        chmod("w/mine", 0o6666),
        write(BOB, "w/mine"),
        // group 3000 (not bob's): S_ISGID goes too
        chown(ROOT, "w/mine", 2000, 3000),
        chmod("w/mine", 0o2666),
        write(BOB, "w/mine"),
        // group-executable: S_ISGID goes for a member too
        chmod("w/sg/lf", 0o2676),
        write(ALICE, "w/sg/lf"),
        // truncate by a non-member, and by root (CAP_FSETID: nothing dropped)
        chmod("w/st/a", 0o6666),
        chown(ROOT, "w/st/a", 1000, 2000),
        truncate(ROOT, "w/st/a"),
        write(ROOT, "w/st/a"),
        truncate(ALICE, "w/st/a"),
        // chown by the owner to her own group, from a group she is not in
        chmod("w/ld/a", 0o2646),
        chown(ROOT, "w/ld/a", 1000, 2000),
        chmod("w/ld/a", 0o2646),
        chown(ALICE, "w/ld/a", u32::MAX, 1000),
        // chown(f, -1, -1): ctime moves (root, owner, anyone), set-id bits as chown drops them
        chown(ROOT, "w/lf", u32::MAX, u32::MAX),
        chown(ROOT, "w/rd", u32::MAX, u32::MAX),
        chown(BOB, "w/lf", u32::MAX, u32::MAX),
        chown(BOB, "w/mine", u32::MAX, u32::MAX),
        chmod("w/lf", 0o4755),
        chown(ROOT, "w/lf", u32::MAX, u32::MAX),
        chmod("w/lf", 0o2755),
        chown(ROOT, "w/lf", u32::MAX, u32::MAX),
        chmod("w/lf", 0o2745),
        chown(ROOT, "w/lf", u32::MAX, u32::MAX),
        // by a non-owner, of a file without set-id bits
        chmod("w/rd", 0o755),
        chmod("w/lf", 0o755),
        chown(BOB, "w/lf", u32::MAX, u32::MAX),
        // a write by a non-member who does not own the file
        chown(ROOT, "w/sg/k2", 0, 3000),
        chmod("w/sg/k2", 0o2666),
        write(BOB, "w/sg/k2"),
    ];
    // the same on upper files (the ones above are copied up by their first change)
    cases.push(create(BOB, "w/k3", 0o666));
    cases.push(chmod("w/k3", 0o2666));
    cases.push(chown(ROOT, "w/k3", 2000, 3000));
    cases.push(chmod("w/k3", 0o2666));
    cases.push(write(BOB, "w/k3"));
    // By design (docs/overlay.md): `chown(f, -1, -1)` by a caller who does not own a
    // set-user-ID file, or a set-group-ID file without group exec whose group he is not
    // in, fails with EPERM on ext4; strata drops the bit (the FUSE kernel sends it the same
    // request as for a write by that caller, which must drop it).
    cases.push(chmod("w/sg/k2", 0o2666));
    cases.push(chown(BOB, "w/sg/k2", u32::MAX, u32::MAX));
    let k2 = cases.len() - 1;
    cases.push(chmod("w/sg/k2", 0o666));
    cases.push(chmod("w/lf", 0o4755));
    cases.push(chown(BOB, "w/lf", u32::MAX, u32::MAX));
    let lf = cases.len() - 1;
    cases.push(chmod("w/lf", 0o755));
    let (got, want) = both(&cases);
    let op = "uid 2000 Chown { path: \"w/sg/k2\", uid: 4294967295, gid: 4294967295 }";
    let dir = "w/sg: dir 2777 0:3000 ctime same";
    assert_eq!(
        want[k2],
        format!("{op}: E1 | w/sg/k2: file 2666 0:3000 size=3 nlink=1 ctime same | {dir}")
    );
    assert_eq!(
        got[k2],
        format!("{op}: ok | w/sg/k2: file 666 0:3000 size=3 nlink=1 ctime new | {dir}")
    );
    let op = "uid 2000 Chown { path: \"w/lf\", uid: 4294967295, gid: 4294967295 }";
    let dir = "w: dir 777 0:0 ctime same";
    assert_eq!(
        want[lf],
        format!("{op}: E1 | w/lf: file 4755 0:0 size=7 nlink=1 ctime same | {dir}")
    );
    assert_eq!(
        got[lf],
        format!("{op}: ok | w/lf: file 755 0:0 size=7 nlink=1 ctime new | {dir}")
    );
    let (mut got, mut want) = (got, want);
    for i in [lf, k2] {
        got.remove(i);
        want.remove(i);
    }
    assert_same(&got, &want);
}

/// Devices users make are devices: a character device 0/0 (the overlay whiteout's own
/// form) and others, block devices, over lower names and whiteouts, listed, renamed,
/// linked, opened and removed as on ext4; only root may make them.
#[test]
fn character_and_block_devices_as_ext4() {
    let mknod = |who, path: &str, mode, dev| {
        (
            who,
            Op::Mknod {
                path: path.into(),
                mode,
                dev,
            },
        )
    };
    let chr = libc::S_IFCHR | 0o640;
    let list = |path: &str| (ROOT, Op::List { path: path.into() });
    let open = |who, path: &str, flags| {
        (
            who,
            Op::Open {
                path: path.into(),
                flags,
                mode: 0,
                len: 0,
            },
        )
    };
    let rename = |from: &str, to: &str| {
        (
            ROOT,
            Op::Rename {
                from: from.into(),
                to: to.into(),
            },
        )
    };
    let unlink = |path: &str| (ROOT, Op::Unlink { path: path.into() });
    let cases = vec![
        mknod(ROOT, "w/c00", chr, (0, 0)),
        mknod(ROOT, "w/c13", chr, (1, 3)),
        mknod(ROOT, "w/b73", libc::S_IFBLK | 0o600, (7, 3)),
        mknod(ALICE, "w/c00a", chr, (0, 0)),
        mknod(ROOT, "w/c00", chr, (0, 0)),
        list("w"),
        open(ROOT, "w/c00", libc::O_RDONLY),
        open(ALICE, "w/c00", libc::O_RDONLY),
        open(ROOT, "w/c13", libc::O_RDWR),
        // over a lower file (its whiteout) and a lower directory
        unlink("w/lf"),
        mknod(ROOT, "w/lf", chr, (0, 0)),
        (
            ROOT,
            Op::Rmdir {
                path: "w/rd".into(),
            },
        ),
        mknod(ROOT, "w/rd", chr, (0, 0)),
        list("w"),
        chmod("w/lf", 0o600),
        chown(ROOT, "w/lf", 1000, 1000),
        // rename within and across directories, over a lower file, link
        rename("w/c00", "w/sg/c00"),
        rename("w/lf", "w/mine"),
        rename("w/rd", "w/st/b"),
        (
            ROOT,
            Op::Link {
                from: "w/sg/c00".into(),
                to: "w/sg/c00l".into(),
            },
        ),
        list("w"),
        list("w/sg"),
        list("w/st"),
        open(ROOT, "w/mine", libc::O_RDONLY),
        // removal: the lower names stay gone, nothing below shows through
        unlink("w/sg/c00"),
        unlink("w/mine"),
        unlink("w/st/b"),
        list("w"),
        list("w/sg"),
        list("w/st"),
        unlink("w/sg/c00l"),
        list("w/sg"),
        mknod(ROOT, "w/st/b", chr, (0, 0)),
        list("w/st"),
    ];
    let (got, want) = both(&cases);
    assert_same(&got, &want);
}

/// `open(dir, O_TMPFILE)` fails with EOPNOTSUPP on strata (by design, docs/overlay.md: the
/// FUSE library strata uses has no TMPFILE request), where ext4 makes a nameless file; the
/// directory is left alone on both.
#[test]
fn o_tmpfile_is_refused_with_eopnotsupp() {
    let cases = vec![(
        ALICE,
        Op::TmpFile {
            path: "w".into(),
            mode: 0o600,
        },
    )];
    let (got, want) = both(&cases);
    assert!(
        want[0].contains(": ok |"),
        "ext4 makes O_TMPFILE files: {}",
        want[0]
    );
    assert_eq!(
        got[0],
        want[0].replace(": ok |", &format!(": E{} |", libc::EOPNOTSUPP)),
        "strata refuses O_TMPFILE with EOPNOTSUPP and changes nothing"
    );
    assert_same(&got[1..], &want[1..]);
}
