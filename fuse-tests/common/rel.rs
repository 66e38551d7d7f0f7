//! Helpers for the reliability and security tests (`faults.rs`, `security.rs`): a tmpfs
//! mount guard for disk-full runs, filling a filesystem to a given free space, running a
//! command as another uid, and walking a tree for permission bits.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A tmpfs of `size` bytes mounted on a directory for as long as this value lives
/// (unmounted lazily on drop, also when the test panics).
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// `mount -t tmpfs -o size=SIZE,mode=0700 tmpfs DIR` (DIR is created).
    pub fn mount(dir: &Path, size: u64) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mkdir tmpfs mountpoint");
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount tmpfs on {}: {st}", dir.display());
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Free bytes of the filesystem holding `dir` (for an unprivileged writer: `f_bavail`).
pub fn free_bytes(dir: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(dir).expect("statvfs");
    st.blocks_available() as u64 * st.fragment_size() as u64
}

/// Write `file` until at most `leave` bytes stay free on its filesystem (the last write may
/// stop at ENOSPC). Returns the file's size.
pub fn fill_leaving(file: &Path, leave: u64) -> u64 {
    use std::io::Write as _;
    let dir = file.parent().expect("file has a parent");
    let mut f = std::fs::File::create(file).expect("create filler");
    let chunk = vec![0x5au8; 64 << 10];
    let mut written = 0u64;
    loop {
        let free = free_bytes(dir);
        if free <= leave {
            break;
        }
        let n = ((free - leave) as usize).min(chunk.len());
        match f.write(&chunk[..n]) {
            Ok(0) => break,
            Ok(k) => written += k as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("fill {}: {e}", file.display()),
        }
    }
    f.sync_all().expect("sync filler");
    written
}

/// Run `program args` as uid/gid 65534 (nobody) with no supplementary groups.
pub fn as_nobody(program: &str, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(program)
        .args(args)
        .output()
        .expect("run setpriv")
}

/// Every path below `root` (itself included, symlinks not followed, other filesystems such
/// as image mounts not entered) whose mode has the world-write bit, with the mode; sticky
/// directories (like /tmp) are reported too.
pub fn world_writable(root: &Path) -> Vec<(PathBuf, u32)> {
    let dev = std::fs::symlink_metadata(root).expect("stat root").dev();
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.file_type().is_symlink() || meta.dev() != dev {
            continue;
        }
        let mode = meta.permissions().mode();
        if mode & 0o002 != 0 {
            out.push((p.clone(), mode));
        }
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    out
}

/// Device and inode of a path (to tell whether two paths are the same file).
pub fn dev_ino(p: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Run `cmd` with the given umask (set in the child between fork and exec), stdout and
/// stderr captured; panics if it has not finished after `timeout`.
pub fn output_with_umask(
    mut cmd: Command,
    umask: u32,
    timeout: std::time::Duration,
) -> std::process::Output {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: umask(2) is async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(umask as libc::mode_t);
            Ok(())
        });
    }
    let out = tempfile::NamedTempFile::new().expect("stdout file");
    let err = tempfile::NamedTempFile::new().expect("stderr file");
    cmd.stdin(std::process::Stdio::null())
        .stdout(out.reopen().expect("reopen"))
        .stderr(err.reopen().expect("reopen"));
    let mut child = cmd.spawn().expect("spawn");
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {timeout:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    Output {
        status,
        stdout: std::fs::read(out.path()).unwrap_or_default(),
        stderr: std::fs::read(err.path()).unwrap_or_default(),
    }
}

/// Options field (the 10th and later space-separated fields) of the mountinfo line whose
/// mount point is `p`, e.g. "rw,nosuid,nodev,relatime - fuse.strata strata rw,user_id=0,...".
pub fn mountinfo_options(p: &Path) -> Option<String> {
    let want = p.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .map(|l| l.split(' ').skip(5).collect::<Vec<_>>().join(" "))
}

/// Whether `hay` holds something shaped like a JWT (`eyJ...` header, `.`, `eyJ...` claims):
/// bearer tokens from the test issuer look like that.
pub fn contains_jwt(hay: &str) -> bool {
    let is_b64 = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    hay.match_indices("eyJ").any(|(i, _)| {
        let rest = &hay[i..];
        let header_len = rest.find(|c: char| !is_b64(c)).unwrap_or(rest.len());
        rest[header_len..].starts_with(".eyJ")
    })
}
