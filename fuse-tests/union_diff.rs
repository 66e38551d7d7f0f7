//! Differential test: one sequence of mutating operations on a strata mount (with an upper)
//! and on kernel overlayfs over the same layers; results (errno values) and the final trees
//! must match. Then kernel overlayfs is mounted over strata's upper directory and must show
//! the same tree (upper format compatibility).

mod common;
#[path = "union_common.rs"]
mod union_common;

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use union_common::*;

fn res<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(-1)),
    }
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn rename2(a: &Path, b: &Path, flags: u32) -> std::io::Result<()> {
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c(a).as_ptr(),
            libc::AT_FDCWD,
            c(b).as_ptr(),
            flags,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn mknod(p: &Path, mode: u32, dev: u64) -> std::io::Result<()> {
    if unsafe { libc::mknod(c(p).as_ptr(), mode, dev) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The operation sequence; returns one line per step with its result.
fn run_ops(r: &Path) -> Vec<String> {
    let mut log = Vec::new();
    let mut step = |name: &str, out: String| log.push(format!("{name}: {out}"));
    // A read-only descriptor opened on a lower file reads the upper copy once another
    // descriptor has copied it up (overlayfs since 4.19), also after its name is unlinked.
    let ro = std::fs::File::open(r.join("keep/1"));
    // never read before the unlink, so no page of it is cached: the read reaches the fs
    let ro2 = std::fs::File::open(r.join("var/cache/c"));
    let pread = |f: &std::io::Result<std::fs::File>| -> String {
        let mut b = [0u8; 8];
        match f.as_ref().map(|f| f.read_at(&mut b, 0)) {
            Ok(Ok(n)) => String::from_utf8_lossy(&b[..n]).into_owned(),
            Ok(Err(e)) => format!("err {e}"),
            Err(e) => format!("open err {e}"),
        }
    };
    step("ro fd on lower", pread(&ro));
    step(
        "copy up under ro fd",
        res(std::fs::OpenOptions::new()
            .write(true)
            .open(r.join("keep/1"))
            .and_then(|mut f| f.write_all(b"ONE"))),
    );
    step("ro fd after copy-up", pread(&ro));
    step(
        "unlink copied-up",
        res(std::fs::remove_file(r.join("keep/1"))),
    );
    step("ro fd after unlink", pread(&ro));
    step(
        "copy up under unread ro fd",
        res(std::fs::OpenOptions::new()
            .write(true)
            .open(r.join("var/cache/c"))
            .and_then(|mut f| f.write_all(b"C"))),
    );
    step(
        "unlink it",
        res(std::fs::remove_file(r.join("var/cache/c"))),
    );
    step("unread ro fd after unlink", pread(&ro2));
    drop((ro, ro2));
    step("create", res(std::fs::write(r.join("new.txt"), b"hello")));
    step(
        "append",
        res(std::fs::OpenOptions::new()
            .append(true)
            .open(r.join("new.txt"))
            .and_then(|mut f| f.write_all(b" world"))),
    );
    step(
        "write lower",
        res(std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(r.join("etc/hostname"))
            .and_then(|mut f| f.write_all(b"changed\n"))),
    );
    step(
        "partial overwrite lower",
        res(std::fs::OpenOptions::new()
            .write(true)
            .open(r.join("usr/bin/tool"))
            .and_then(|mut f| f.write_all(b"XYZ"))),
    );
    step(
        "truncate lower",
        res(std::fs::OpenOptions::new()
            .write(true)
            .open(r.join("usr/lib/big.bin"))
            .and_then(|f| f.set_len(1000))),
    );
    step(
        "chmod lower",
        res(std::fs::set_permissions(
            r.join("etc/shadow"),
            std::fs::Permissions::from_mode(0o640),
        )),
    );
    step(
        "rename file across layers",
        res(std::fs::rename(
            r.join("usr/lib/libx.so"),
            r.join("opt/libx.so"),
        )),
    );
    step(
        "rename lower dir",
        res(std::fs::rename(r.join("keep"), r.join("keep2"))),
    );
    step("unlink lower", res(std::fs::remove_file(r.join("etc/abs"))));
    step(
        "rmdir non-empty",
        res(std::fs::remove_dir(r.join("usr/bin"))),
    );
    for f in ["tool", "tool2", "link"] {
        step(
            "empty usr/bin",
            res(std::fs::remove_file(r.join("usr/bin").join(f))),
        );
    }
    step("rmdir emptied", res(std::fs::remove_dir(r.join("usr/bin"))));
    step(
        "link lower",
        res(std::fs::hard_link(
            r.join("etc/cap"),
            r.join("etc/cap.link"),
        )),
    );
    step(
        "symlink",
        res(std::os::unix::fs::symlink("new.txt", r.join("sl"))),
    );
    step(
        "mkfifo",
        res(mknod(&r.join("fifo"), libc::S_IFIFO | 0o644, 0)),
    );
    step(
        "setxattr lower",
        res(set_xattr(&r.join("usr/lib/more.bin"), "user.added", b"1")),
    );
    step(
        "exchange",
        res(rename2(
            &r.join("etc/shadow"),
            &r.join("usr/lib/more.bin"),
            libc::RENAME_EXCHANGE,
        )),
    );
    step(
        "noreplace",
        res(rename2(
            &r.join("new.txt"),
            &r.join("etc/cap"),
            libc::RENAME_NOREPLACE,
        )),
    );
    step(
        "excl existing",
        res(std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(r.join("etc/cap"))),
    );
    step(
        "long name",
        res(std::fs::write(r.join("n".repeat(300)), b"")),
    );
    step(
        "rmdir lower children",
        res(std::fs::remove_dir(r.join("keep2/sub"))),
    );
    step(
        "unlink in renamed",
        res(std::fs::remove_file(r.join("keep2/sub/2"))),
    );
    step(
        "rmdir after emptying",
        res(std::fs::remove_dir(r.join("keep2/sub"))),
    );
    step("unlink z", res(std::fs::remove_file(r.join("opt/old/z"))));
    step("rmdir old", res(std::fs::remove_dir(r.join("opt/old"))));
    step(
        "mkdir over whiteout",
        res(std::fs::create_dir(r.join("opt/old"))),
    );
    step(
        "new in recreated",
        res(std::fs::write(r.join("opt/old/n"), b"n")),
    );
    step(
        "chardev 0/0",
        res(mknod(&r.join("wh"), libc::S_IFCHR | 0o600, 0)),
    );
    step(
        "rename over lower",
        res(std::fs::rename(r.join("new.txt"), r.join("etc/hostname"))),
    );
    step(
        "O_TRUNC lower",
        res(std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .custom_flags(0)
            .open(r.join("data/h1"))),
    );
    step(
        "unlink whiteouted",
        res(std::fs::remove_file(r.join("etc/passwd"))),
    );
    step("mkdir exists", res(std::fs::create_dir(r.join("etc"))));
    log
}

#[test]
fn same_operations_same_results_as_kernel_overlayfs() {
    differential(Lowers::Tar);
}

/// The same sequence with plain directory lowers (the kernel oracle's own lower dirs, in
/// overlay format: char 0/0 whiteouts, `trusted.overlay.opaque`), as `strata overlay` uses.
#[test]
fn same_operations_same_results_with_directory_lowers() {
    differential(Lowers::Dirs);
}

#[derive(Clone, Copy)]
enum Lowers {
    Tar,
    Dirs,
}

fn differential(kind: Lowers) {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let layers = fixture_layers();
    let lowers = extract_all(&layers, &t.join("x"));

    // Oracle: kernel overlayfs with its writes made to behave as strata's.
    let (ou, ow) = (t.join("o-upper"), t.join("o-work"));
    let ovl = OverlayMount::with_options(&lowers, Some((&ou, &ow)), &t.join("ovl"), AS_STRATA);
    let want_log = run_ops(&ovl.dir);
    let want = listing(&ovl.dir);

    let (su, sw) = (t.join("s-upper"), t.join("s-work"));
    let sm = match kind {
        Lowers::Tar => StrataMount::new(tar_lowers(&layers), Some((&su, &sw)), &t.join("mnt")),
        Lowers::Dirs => StrataMount::dirs(
            &lowers,
            Some((&su, &sw)),
            &t.join("mnt"),
            Default::default(),
            Default::default(),
        ),
    };
    let got_log = run_ops(&sm.dir);
    let got = listing(&sm.dir);
    assert_eq!(got_log, want_log, "operation results differ");
    assert_same(
        "strata vs kernel overlayfs after the operations",
        &got,
        &want,
    );
    drop(sm);

    // Kernel overlayfs over strata's upper shows the same tree.
    let w2 = t.join("k-work");
    let compat = OverlayMount::new(&lowers, Some((&su, &w2)), &t.join("compat"));
    let again = listing(&compat.dir);
    assert_same(
        "kernel overlayfs over strata's upper vs strata",
        &again,
        &got,
    );
}
