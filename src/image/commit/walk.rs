//! A directory tree as a tar stream, for `commit` (an overlay upper becomes an OCI layer diff)
//! and `export` (a mounted rootfs becomes a flat tar).
//!
//! Never follows symlinks: every entry is examined with `lstat`, regular files are opened with
//! `O_NOFOLLOW` and checked to be the inode that was examined, and every directory is checked to
//! still resolve to its place under the root before it is read, so nothing outside the root is
//! archived even if the tree changes underneath (a running container). Entries on another
//! device than the root (mount points) are kept as empty directories or skipped. In
//! [`Mode::Upper`] the kernel-overlayfs whiteout format is translated into OCI names: a char
//! device 0/0 or an empty file with `trusted.overlay.whiteout` becomes `.wh.<name>`, a directory
//! with `trusted.overlay.opaque=y` gets a `.wh..wh..opq` entry. Overlay-private xattrs
//! (`trusted.overlay.*`, `user.overlay.*`) are never archived; the others travel as PAX
//! `SCHILY.xattr.*` records. Calls only std, libc and the `tar` crate.

use super::super::Error;
use crate::union::sys::{get_xattr, is_opaque, is_whiteout, list_xattrs};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::Metadata;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const WH_PREFIX: &str = ".wh.";
const WH_OPAQUE: &str = ".wh..wh..opq";
/// Overlay-private xattr prefixes (`userxattr` mounts use the `user.` spelling).
const PRIVATE_XATTRS: [&str; 2] = ["trusted.overlay.", "user.overlay."];

/// How to read the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A kernel-overlayfs upper directory: translate whiteouts and opaque directories.
    Upper,
    /// A plain (mounted) root file system: archive what is there.
    Rootfs,
}

/// What a walk archived.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalkStats {
    pub entries: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    pub hardlinks: u64,
    /// Sockets, names OCI cannot carry, mount points' contents.
    pub skipped: u64,
}

fn io_err(path: &Path, source: io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Archive the tree under `root` into `out` (the caller finishes the builder).
pub fn write_tree<W: Write>(
    root: &Path,
    mode: Mode,
    out: &mut tar::Builder<W>,
) -> Result<WalkStats, Error> {
    let canon = std::fs::canonicalize(root).map_err(|e| io_err(root, e))?;
    let meta = std::fs::symlink_metadata(&canon).map_err(|e| io_err(&canon, e))?;
    if !meta.is_dir() {
        return Err(Error::Invalid {
            what: canon.display().to_string(),
            msg: "not a directory".into(),
        });
    }
    let mut w = Walker {
        root: canon,
        dev: meta.dev(),
        mode,
        out,
        links: HashMap::new(),
        stats: WalkStats::default(),
    };
    if mode == Mode::Upper && is_opaque(&w.root) {
        w.whiteout_entry(Path::new(WH_OPAQUE), &meta)?;
        w.stats.opaque_dirs += 1;
    }
    w.walk_dir(Path::new(""))?;
    Ok(w.stats)
}

struct Walker<'a, W: Write> {
    root: PathBuf,
    dev: u64,
    mode: Mode,
    out: &'a mut tar::Builder<W>,
    /// (dev, ino) -> first archived path, for hard links.
    links: HashMap<(u64, u64), PathBuf>,
    stats: WalkStats,
}

impl<W: Write> Walker<'_, W> {
    fn write_err(&self, rel: &Path, source: io::Error) -> Error {
        Error::Io {
            path: format!("writing tar entry {}", rel.display()),
            source,
        }
    }

    /// Children of `rel` (a directory already archived, or the root), sorted by name.
    fn walk_dir(&mut self, rel: &Path) -> Result<(), Error> {
        let abs = self.root.join(rel);
        // A component swapped for a symlink since we looked would resolve elsewhere.
        let real = std::fs::canonicalize(&abs).map_err(|e| io_err(&abs, e))?;
        if real != abs {
            return Err(Error::Invalid {
                what: abs.display().to_string(),
                msg: format!(
                    "resolves to {} outside {}; refusing to follow it",
                    real.display(),
                    self.root.display()
                ),
            });
        }
        let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(&abs)
            .map_err(|e| io_err(&abs, e))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(|e| io_err(&abs, e))?;
        names.sort();
        for name in names {
            let child = rel.join(&name);
            let path = self.root.join(&child);
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                // Deleted by the running container meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path, e)),
            };
            self.entry(&child, &name, &path, &meta)?;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        rel: &Path,
        name: &OsStr,
        path: &Path,
        meta: &Metadata,
    ) -> Result<(), Error> {
        let ft = meta.file_type();
        if self.mode == Mode::Upper {
            if is_whiteout(path, meta) {
                let parent = rel.parent().unwrap_or(Path::new(""));
                let mut wh = std::ffi::OsString::from(WH_PREFIX);
                wh.push(name);
                self.stats.whiteouts += 1;
                return self.whiteout_entry(&parent.join(wh), meta);
            }
            if name.as_bytes().starts_with(WH_PREFIX.as_bytes()) {
                tracing::warn!(path = %path.display(), "name cannot be carried by an OCI layer (reserved .wh. prefix); skipped");
                self.stats.skipped += 1;
                return Ok(());
            }
        }
        if meta.dev() != self.dev {
            // A mount point (e.g. /proc inside a rootfs): keep the directory, not its contents.
            self.stats.skipped += 1;
            if ft.is_dir() {
                let mut h = header(meta, tar::EntryType::Directory);
                return self.append(rel, &mut h, io::empty());
            }
            return Ok(());
        }
        if ft.is_dir() {
            self.xattrs(rel, path)?;
            let mut h = header(meta, tar::EntryType::Directory);
            self.append(rel, &mut h, io::empty())?;
            if self.mode == Mode::Upper && is_opaque(path) {
                self.stats.opaque_dirs += 1;
                self.whiteout_entry(&rel.join(WH_OPAQUE), meta)?;
            }
            return self.walk_dir(rel);
        }
        if ft.is_socket() {
            tracing::warn!(path = %path.display(), "sockets cannot be archived; skipped");
            self.stats.skipped += 1;
            return Ok(());
        }
        if meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key).cloned() {
                let mut h = header(meta, tar::EntryType::Link);
                self.stats.hardlinks += 1;
                self.stats.entries += 1;
                return self
                    .out
                    .append_link(&mut h, rel, &first)
                    .map_err(|e| self.write_err(rel, e));
            }
            self.links.insert(key, rel.to_path_buf());
        }
        self.xattrs(rel, path)?;
        if ft.is_symlink() {
            let target = std::fs::read_link(path).map_err(|e| io_err(path, e))?;
            let mut h = header(meta, tar::EntryType::Symlink);
            self.stats.entries += 1;
            return self
                .out
                .append_link(&mut h, rel, &target)
                .map_err(|e| self.write_err(rel, e));
        }
        if ft.is_file() {
            return self.file(rel, path, meta);
        }
        let kind = if ft.is_char_device() {
            tar::EntryType::Char
        } else if ft.is_block_device() {
            tar::EntryType::Block
        } else {
            tar::EntryType::Fifo
        };
        let mut h = header(meta, kind);
        if kind != tar::EntryType::Fifo {
            let rdev = meta.rdev();
            h.set_device_major(libc::major(rdev))
                .and_then(|_| h.set_device_minor(libc::minor(rdev)))
                .map_err(|e| self.write_err(rel, e))?;
        }
        self.append(rel, &mut h, io::empty())
    }

    /// A regular file, opened without following links and checked to be what we examined.
    fn file(&mut self, rel: &Path, path: &Path, meta: &Metadata) -> Result<(), Error> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| io_err(path, e))?;
        let fmeta = f.metadata().map_err(|e| io_err(path, e))?;
        if fmeta.ino() != meta.ino() || fmeta.dev() != meta.dev() || !fmeta.is_file() {
            return Err(Error::Invalid {
                what: path.display().to_string(),
                msg: "changed while being archived (replaced by another file)".into(),
            });
        }
        let size = fmeta.len();
        let mut h = header(&fmeta, tar::EntryType::Regular);
        h.set_size(size);
        // A file that shrinks while we read (running container) is padded with zeros; one that
        // grows is cut at the size in the header, so the archive stays well-formed.
        let data = f.take(size).chain(io::repeat(0)).take(size);
        self.append(rel, &mut h, data)
    }

    /// An empty marker file (`.wh.<name>` or `.wh..wh..opq`).
    fn whiteout_entry(&mut self, rel: &Path, meta: &Metadata) -> Result<(), Error> {
        let mut h = header(meta, tar::EntryType::Regular);
        h.set_mode(0o644);
        self.append(rel, &mut h, io::empty())
    }

    fn append(&mut self, rel: &Path, h: &mut tar::Header, data: impl Read) -> Result<(), Error> {
        self.stats.entries += 1;
        self.out
            .append_data(h, rel, data)
            .map_err(|e| self.write_err(rel, e))
    }

    /// PAX record with the entry's visible xattrs, written just before its header.
    fn xattrs(&mut self, rel: &Path, path: &Path) -> Result<(), Error> {
        let mut records: Vec<(String, Vec<u8>)> = Vec::new();
        for name in list_xattrs(path).map_err(|e| io_err(path, e))? {
            if PRIVATE_XATTRS.iter().any(|p| name.starts_with(p)) {
                continue;
            }
            if let Some(v) = get_xattr(path, &name).map_err(|e| io_err(path, e))? {
                records.push((format!("SCHILY.xattr.{name}"), v));
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        records.sort();
        self.out
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .map_err(|e| self.write_err(rel, e))
    }
}

fn header(meta: &Metadata, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode() & 0o7777);
    h.set_uid(u64::from(meta.uid()));
    h.set_gid(u64::from(meta.gid()));
    h.set_mtime(meta.mtime().max(0) as u64);
    h.set_size(0);
    zero_devices(&mut h);
    h
}

/// Numeric (not blank) device fields, as Go's archive/tar and GNU tar write them.
fn zero_devices(h: &mut tar::Header) {
    let _ = h.set_device_major(0).and_then(|_| h.set_device_minor(0));
}
