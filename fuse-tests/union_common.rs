//! Helpers for the union FUSE tests: fixture layers built in code as tar files, a strata
//! mount over them (`TarBytesLower`), the kernel-overlayfs oracle over the same layers
//! extracted with `tar -x --xattrs` (OCI whiteouts converted to overlay format), RAII guards
//! that unmount on drop (also on panic), and a tree listing used to compare mounts. Unlike
//! `common` (which it builds on: each includer also declares `mod common`), it calls the
//! strata library.
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use strata::union::{LowerSource, MergedTree, TarBytesLower, UnionFs, Upper};

/// Builds one layer tar.
pub struct LayerTar {
    b: tar::Builder<Vec<u8>>,
}

fn hdr(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

impl LayerTar {
    pub fn new() -> Self {
        let mut l = LayerTar {
            b: tar::Builder::new(Vec::new()),
        };
        l.dir("./", 0o755);
        l
    }
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let mut h = hdr(tar::EntryType::Directory, 0, mode);
        let p = if path.ends_with('/') {
            path.to_string()
        } else {
            format!("{path}/")
        };
        self.b.append_data(&mut h, p, &b""[..]).unwrap();
        self
    }
    pub fn file(&mut self, path: &str, data: &[u8], mode: u32) -> &mut Self {
        let mut h = hdr(tar::EntryType::Regular, data.len() as u64, mode);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }
    pub fn file_xattr(&mut self, path: &str, data: &[u8], xattrs: &[(&str, &[u8])]) -> &mut Self {
        let keys: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
            .collect();
        self.b
            .append_pax_extensions(keys.iter().map(|(k, v)| (k.as_str(), *v)))
            .unwrap();
        self.file(path, data, 0o644)
    }
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = hdr(tar::EntryType::Symlink, 0, 0o777);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }
    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = hdr(tar::EntryType::Link, 0, 0o644);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }
    /// OCI whiteout of `dir/name`.
    pub fn whiteout(&mut self, dir: &str, name: &str) -> &mut Self {
        let p = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&p, b"", 0o644)
    }
    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        self.file(&format!("{dir}/.wh..wh..opq"), b"", 0o644)
    }
    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

pub use crate::common::testdata::pseudo;

pub fn set_xattr(p: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let (cp, cn) = (
        CString::new(p.as_os_str().as_bytes()).unwrap(),
        CString::new(name).unwrap(),
    );
    let r = unsafe {
        libc::lsetxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub fn xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 65536];
    let n = unsafe { libc::llistxattr(cp.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for name in buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
    {
        let cn = CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
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

/// Extract `tar` into `dir` with GNU tar and convert OCI whiteouts to overlay format.
pub fn extract_for_overlay(tar: &[u8], dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut c = Command::new("tar")
        .args([
            "-x",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-p",
            "-C",
        ])
        .arg(dir)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(tar).unwrap();
    assert!(c.wait().unwrap().success(), "tar -x failed");
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let p = e.path();
            if name == ".wh..wh..opq" {
                std::fs::remove_file(&p).unwrap();
                set_xattr(&d, "trusted.overlay.opaque", b"y").unwrap();
            } else if let Some(t) = name.strip_prefix(".wh.") {
                std::fs::remove_file(&p).unwrap();
                let c = CString::new(d.join(t).as_os_str().as_bytes()).unwrap();
                assert_eq!(unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) }, 0);
            } else if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
}

/// Kernel overlayfs options that make its writes behave as strata's: `redirect_dir=on` (a
/// lower directory can be renamed; strata never returns EXDEV) and `index=on` (copy-up keeps
/// hard links together, as strata always does).
pub const AS_STRATA: &[&str] = &["redirect_dir=on", "index=on"];

/// A kernel overlayfs mount, the oracle of the union tests, unmounted on drop.
pub struct OverlayMount {
    pub dir: PathBuf,
}

impl OverlayMount {
    /// `lowers` bottom first; `upper` is (upperdir, workdir).
    pub fn new(lowers: &[PathBuf], upper: Option<(&Path, &Path)>, dir: &Path) -> Self {
        Self::with_options(lowers, upper, dir, &[])
    }

    /// As [`OverlayMount::new`], with mount `options` after the directories (e.g.
    /// [`AS_STRATA`]). Creates `dir` and the upper and work directories if missing.
    pub fn with_options(
        lowers: &[PathBuf],
        upper: Option<(&Path, &Path)>,
        dir: &Path,
        options: &[&str],
    ) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let lowerdir: Vec<String> = lowers
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect();
        let mut opts = format!("lowerdir={}", lowerdir.join(":"));
        if let Some((u, w)) = upper {
            std::fs::create_dir_all(u).unwrap();
            std::fs::create_dir_all(w).unwrap();
            opts.push_str(&format!(
                ",upperdir={},workdir={}",
                u.display(),
                w.display()
            ));
        }
        for o in options {
            opts.push(',');
            opts.push_str(o);
        }
        let st = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount overlay {opts}");
        OverlayMount {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// A runtime + strata mount over in-memory tar layers.
pub struct StrataMount {
    pub handle: Option<strata::fuse::MountHandle>,
    pub dir: PathBuf,
    pub rt: tokio::runtime::Runtime,
}

impl StrataMount {
    pub fn new(layers: Vec<TarBytesLower>, upper: Option<(&Path, &Path)>, dir: &Path) -> Self {
        let entries: Vec<Vec<strata::layer::Entry>> =
            layers.iter().map(|l| l.entries().to_vec()).collect();
        let sources: Vec<Arc<dyn LowerSource>> = layers
            .into_iter()
            .map(|l| Arc::new(l) as Arc<dyn LowerSource>)
            .collect();
        Self::with(
            entries,
            sources,
            upper,
            dir,
            strata::union::UnionOptions::default(),
            strata::fuse::MountOptions::default(),
        )
    }

    /// A mount over plain directory lowers (bottom first), as `strata overlay` builds it.
    pub fn dirs(
        lowers: &[PathBuf],
        upper: Option<(&Path, &Path)>,
        dir: &Path,
        uopts: strata::union::UnionOptions,
        mopts: strata::fuse::MountOptions,
    ) -> Self {
        let tree = Arc::new(strata::union::DirTree::open(lowers).unwrap());
        let sources: Vec<Arc<dyn LowerSource>> = lowers
            .iter()
            .map(|l| Arc::new(strata::union::DirLower::at(l)) as Arc<dyn LowerSource>)
            .collect();
        Self::mount(tree.into(), sources, upper, dir, uopts, mopts)
    }

    pub fn with(
        entries: Vec<Vec<strata::layer::Entry>>,
        sources: Vec<Arc<dyn LowerSource>>,
        upper: Option<(&Path, &Path)>,
        dir: &Path,
        uopts: strata::union::UnionOptions,
        mopts: strata::fuse::MountOptions,
    ) -> Self {
        let tree = Arc::new(MergedTree::build(&entries).unwrap());
        Self::mount(tree.into(), sources, upper, dir, uopts, mopts)
    }

    fn mount(
        tree: strata::union::LowerTree,
        sources: Vec<Arc<dyn LowerSource>>,
        upper: Option<(&Path, &Path)>,
        dir: &Path,
        uopts: strata::union::UnionOptions,
        mopts: strata::fuse::MountOptions,
    ) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let up = upper.map(|(u, w)| Upper::open(u, w).unwrap());
        let fs = Arc::new(
            UnionFs::new(tree, sources, up, Some(rt.handle().clone()))
                .unwrap()
                .with_options(uopts),
        );
        let handle = strata::fuse::mount(fs, dir, mopts, rt.handle().clone()).unwrap();
        StrataMount {
            handle: Some(handle),
            dir: dir.to_path_buf(),
            rt,
        }
    }
}

impl Drop for StrataMount {
    fn drop(&mut self) {
        drop(self.handle.take());
    }
}

fn sha(p: &Path) -> String {
    let data = std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    hex::encode(Sha256::digest(&data))
}

/// One line per object under `root`: path, type, mode, owner, size, content hash / link
/// target / device, nlink (non-directories), xattrs.
pub fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for e in
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let p = root.join(&r);
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let (t, detail) = if ft.is_dir() {
                stack.push(r.clone());
                ("d", String::new())
            } else if ft.is_symlink() {
                ("l", std::fs::read_link(&p).unwrap().display().to_string())
            } else if ft.is_file() {
                ("f", sha(&p))
            } else if ft.is_fifo() {
                ("p", String::new())
            } else if ft.is_char_device() {
                ("c", format!("{}", m.rdev()))
            } else {
                ("?", String::new())
            };
            let nlink = if ft.is_dir() { 0 } else { m.nlink() };
            let size = if ft.is_dir() { 0 } else { m.size() };
            let xa: Vec<String> = xattrs(&p)
                .into_iter()
                .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(&v)))
                .collect();
            out.push(format!(
                "{} {t} {:o} {}:{} size={size} nlink={nlink} {detail} [{}]",
                r.display(),
                m.mode() & 0o7777,
                m.uid(),
                m.gid(),
                xa.join(",")
            ));
        }
    }
    out.sort();
    out
}

/// Assert two listings are equal, printing only the differing lines.
pub fn assert_same(what: &str, a: &[String], b: &[String]) {
    if a == b {
        return;
    }
    let only_a: Vec<&String> = a.iter().filter(|x| !b.contains(x)).collect();
    let only_b: Vec<&String> = b.iter().filter(|x| !a.contains(x)).collect();
    panic!(
        "{what}: listings differ\n only in first:\n  {}\n only in second:\n  {}",
        only_a
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  "),
        only_b
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

/// Three fixture layers (bottom first): files, dirs, symlinks, hard links, xattrs, a 5 MiB
/// file, OCI whiteouts of a file and of a directory, an opaque directory, and a directory
/// re-created above its whiteout.
pub fn fixture_layers() -> Vec<Vec<u8>> {
    let mut l0 = LayerTar::new();
    for d in [
        "etc",
        "usr",
        "usr/bin",
        "usr/lib",
        "var",
        "var/cache",
        "opt",
        "opt/old",
        "keep",
        "keep/sub",
    ] {
        l0.dir(d, 0o755);
    }
    l0.dir("tmp", 0o1777);
    l0.file("etc/hostname", b"base\n", 0o644)
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644)
        .file("etc/shadow", b"secret\n", 0o600)
        .file("usr/bin/tool", &pseudo(70_000, 1), 0o755)
        .hardlink("usr/bin/tool2", "usr/bin/tool")
        .symlink("usr/bin/link", "tool")
        .symlink("etc/abs", "/etc/hostname")
        .file("usr/lib/big.bin", &pseudo(5 << 20, 2), 0o644)
        .file("usr/lib/libx.so", &pseudo(4097, 3), 0o755)
        .file("var/cache/a", b"a", 0o644)
        .file("var/cache/b", b"b", 0o644)
        .file("opt/old/x", b"x", 0o644)
        .file("opt/old/y", b"y", 0o644)
        .file("keep/1", b"one", 0o644)
        .file("keep/sub/2", b"two", 0o644)
        .file_xattr(
            "etc/cap",
            b"cap",
            &[("user.note", b"hello"), ("user.other", b"x")],
        );
    let mut l1 = LayerTar::new();
    for d in ["etc", "var", "var/cache", "opt", "usr", "usr/lib"] {
        l1.dir(d, 0o755);
    }
    l1.whiteout("etc", "passwd")
        .file("etc/hostname", b"layer1\n", 0o644)
        .opaque("var/cache")
        .file("var/cache/c", b"c", 0o644)
        .whiteout("opt", "old")
        .file("usr/lib/more.bin", &pseudo(3 << 20 | 17, 4), 0o640);
    let mut l2 = LayerTar::new();
    for d in ["opt", "opt/old", "data"] {
        l2.dir(d, 0o755);
    }
    l2.file("opt/old/z", b"z", 0o644)
        .file("data/h1", b"hard", 0o644)
        .hardlink("data/h2", "data/h1")
        .dir("usr", 0o755)
        .dir("usr/lib", 0o700);
    vec![l0.finish(), l1.finish(), l2.finish()]
}

/// Extract `layers` under `base/l<i>` for the oracle; returns the dirs, bottom first.
pub fn extract_all(layers: &[Vec<u8>], base: &Path) -> Vec<PathBuf> {
    layers
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let d = base.join(format!("l{i}"));
            extract_for_overlay(t, &d);
            d
        })
        .collect()
}

pub fn tar_lowers(layers: &[Vec<u8>]) -> Vec<TarBytesLower> {
    layers
        .iter()
        .map(|t| TarBytesLower::new(t.clone()).unwrap())
        .collect()
}
