//! Helpers for the union tests that go through a real registry: publishing an image with its
//! strata sidecar index, a lazy `strata mount` daemon (optionally with an upper) unmounted on
//! drop, killing that daemon from a watchdog, and a metadata + sha256 walk of a tree for
//! comparisons against an independent extraction.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

use super::cli::{OutputExt, StrataEnv};
use super::image::BuiltImage;
use super::registry::Registry;

/// Push `img` to `reg` as `repo_tag`, build and push its strata sidecar index (so a mount is
/// lazy), and return the full reference.
pub fn publish_indexed(reg: &Registry, img: &BuiltImage, repo_tag: &str) -> String {
    img.push(reg, repo_tag);
    let reference = format!("{}/{}", reg.host(), repo_tag);
    let publisher = StrataEnv::new();
    publisher
        .run(&["index", &reference, "--push"])
        .assert_success();
    reference
}

/// A `strata mount` daemon; unmounted (and the daemon waited for by `strata umount`) on drop.
pub struct LazyMount<'a> {
    pub env: &'a StrataEnv,
    pub dir: PathBuf,
    pub pid: Option<u32>,
}

impl<'a> LazyMount<'a> {
    /// Mount `reference` at `<scratch>/<name>` without prefetch; with an upper when given.
    pub fn new(
        env: &'a StrataEnv,
        reference: &str,
        name: &str,
        upper: Option<(&Path, &Path)>,
    ) -> LazyMount<'a> {
        let dir = env.scratch().join(name);
        std::fs::create_dir_all(&dir).expect("mkdir mountpoint");
        let mut args: Vec<String> = vec![
            "mount".into(),
            reference.into(),
            dir.display().to_string(),
            "--no-prefetch".into(),
        ];
        if let Some((u, w)) = upper {
            args.extend([
                "--upper".into(),
                u.display().to_string(),
                "--work".into(),
                w.display().to_string(),
            ]);
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        env.run(&argv).assert_success();
        let out = env.run(&["stats", "--json", &dir.display().to_string()]);
        let pid = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["pid"].as_u64())
            .map(|p| p as u32);
        LazyMount { env, dir, pid }
    }

    /// Kill the daemon and detach the mount (a watchdog's last resort: blocked callers get
    /// ENOTCONN instead of hanging forever).
    pub fn kill(&self) {
        if let Some(pid) = self.pid {
            // SAFETY: plain kill(2) of the daemon this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }

    /// Unmount now (so the upper can be inspected).
    pub fn unmount(self) {
        drop(self)
    }
}

impl Drop for LazyMount<'_> {
    fn drop(&mut self) {
        let _ = self
            .env
            .run(&["umount", self.dir.to_str().unwrap_or_default()]);
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Extended attributes of `p` (not following a symlink), sorted; none if unsupported.
pub fn lxattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let cp = CString::new(p.as_os_str().as_bytes()).expect("path");
    let mut buf = vec![0u8; 65536];
    // SAFETY: cp is NUL-terminated, buf is valid for its length.
    let n = unsafe { libc::llistxattr(cp.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for name in buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
    {
        let cn = CString::new(name).expect("xattr name");
        let mut v = vec![0u8; 65536];
        // SAFETY: as above.
        let k =
            unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        if k >= 0 {
            v.truncate(k as usize);
            out.push((String::from_utf8_lossy(name).into_owned(), v));
        }
    }
    out.sort();
    out
}

/// What an image comparison records per path (no inode numbers, no times: see callers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Regular files and symlinks only (directory sizes are filesystem-specific).
    pub size: u64,
    /// sha256 of a regular file, target of a symlink, rdev of a device.
    pub detail: String,
    /// Non-directories only (directory link counts are filesystem-specific).
    pub nlink: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Walk `root` (not following symlinks) into path -> [`Meta`]. Files are hashed streaming,
/// so multi-GiB trees need no memory. `keep_xattr` filters xattr names.
pub fn walk_meta(root: &Path, keep_xattr: &dyn Fn(&str) -> bool) -> BTreeMap<String, Meta> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let rd =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()));
        for e in rd {
            let e = e.unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()));
            let r = rel.join(e.file_name());
            let p = root.join(&r);
            let m = std::fs::symlink_metadata(&p)
                .unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
            let ft = m.file_type();
            let (kind, detail) = if ft.is_dir() {
                stack.push(r.clone());
                ('d', String::new())
            } else if ft.is_symlink() {
                let t = std::fs::read_link(&p)
                    .unwrap_or_else(|e| panic!("readlink {}: {e}", p.display()));
                ('l', t.display().to_string())
            } else if ft.is_file() {
                ('f', sha256_file(&p))
            } else if ft.is_fifo() {
                ('p', String::new())
            } else if ft.is_char_device() {
                ('c', m.rdev().to_string())
            } else if ft.is_block_device() {
                ('b', m.rdev().to_string())
            } else if ft.is_socket() {
                ('s', String::new())
            } else {
                ('?', String::new())
            };
            let dir = kind == 'd';
            out.insert(
                r.display().to_string(),
                Meta {
                    kind,
                    mode: m.mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                    size: if dir { 0 } else { m.size() },
                    detail,
                    nlink: if dir { 0 } else { m.nlink() },
                    xattrs: lxattrs(&p)
                        .into_iter()
                        .filter(|(k, _)| keep_xattr(k))
                        .collect(),
                },
            );
        }
    }
    out
}

/// Streaming sha256 of a file.
pub fn sha256_file(p: &Path) -> String {
    let mut f = std::fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Compare two walks; panic listing every difference (at most `max` lines of each kind).
pub fn assert_same_meta(
    what: &str,
    got: &BTreeMap<String, Meta>,
    want: &BTreeMap<String, Meta>,
    max: usize,
) {
    let mut lines = Vec::new();
    for (p, w) in want {
        match got.get(p) {
            None => lines.push(format!("missing in strata: {p} {w:?}")),
            Some(g) if g != w => {
                lines.push(format!("differs: {p}\n   strata: {g:?}\n   oracle: {w:?}"))
            }
            _ => {}
        }
    }
    for (p, g) in got {
        if !want.contains_key(p) {
            lines.push(format!("only in strata: {p} {g:?}"));
        }
    }
    if !lines.is_empty() {
        let n = lines.len();
        lines.truncate(max);
        panic!(
            "{what}: {n} differences ({} paths compared)\n{}",
            want.len(),
            lines.join("\n")
        );
    }
}
