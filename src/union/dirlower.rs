//! A plain directory as a lower layer (issue 9: fuse-overlayfs-style `lowerdir=`).
//!
//! As a [`LowerSource`] it reads file content from the directory itself, always locally.
//! `strata overlay` pairs [`DirLower::at`] (no walk) with [`super::DirTree`], which reads
//! directories as they are looked into. [`DirLower::open`] walks the directory once into `layer::Entry` values, honouring both
//! whiteout spellings: OCI names (`.wh.x`, `.wh..wh..opq`) and overlay format (char device 0/0,
//! an empty file with `trusted.overlay.whiteout`, `trusted.overlay.opaque=y` /
//! `user.overlay.opaque=y`). Files with several names become hard link entries. Content is read
//! from the files themselves, always locally.

use super::lower::{LowerFile, LowerRead, LowerSource};
use super::sys;
use super::{Error, Result};
use crate::layer::{Entry, EntryKind, EntryTable, Timestamp};
use bytes::Bytes;
use std::collections::HashMap;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A directory lower layer; see the module docs.
pub struct DirLower {
    root: PathBuf,
    entries: Vec<Entry>,
}

pub(super) const WH_PREFIX: &str = ".wh.";
pub(super) const WH_OPAQUE: &str = ".wh..wh..opq";

impl DirLower {
    /// `root` as a content source only, without walking it (entries are read lazily by
    /// [`super::DirTree`]); [`entries`](Self::entries) is empty.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        DirLower {
            root: root.into(),
            entries: Vec::new(),
        }
    }

    /// Walk `root` and build its entry list.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root: PathBuf = root.into();
        let mut table = EntryTable::new();
        let mut seen: HashMap<(u64, u64), String> = HashMap::new();
        let meta =
            std::fs::symlink_metadata(&root).map_err(|e| Error::io("stat lower dir", &root, e))?;
        if !meta.is_dir() {
            return Err(Error::NotDir(root.display().to_string()));
        }
        let mut rootent = entry_from(&root, "", &meta)?;
        rootent.opaque = sys::is_opaque(&root);
        table.push(rootent);
        let mut stack = vec![String::new()];
        while let Some(dir) = stack.pop() {
            let abs = root.join(&dir);
            let rd = std::fs::read_dir(&abs).map_err(|e| Error::io("read lower dir", &abs, e))?;
            for item in rd {
                let item = item.map_err(|e| Error::io("read lower dir", &abs, e))?;
                let Some(name) = item.file_name().to_str().map(str::to_string) else {
                    tracing::warn!(dir = %abs.display(), "non-UTF-8 name in lower directory skipped");
                    continue;
                };
                let rel = if dir.is_empty() {
                    name.clone()
                } else {
                    format!("{dir}/{name}")
                };
                let path = item.path();
                if name == WH_OPAQUE {
                    let mut e = entry_from(
                        &abs,
                        &dir,
                        &std::fs::symlink_metadata(&abs).map_err(|e| Error::io("stat", &abs, e))?,
                    )?;
                    e.opaque = true;
                    table.push(e);
                    continue;
                }
                if let Some(target) = name.strip_prefix(WH_PREFIX) {
                    if !target.is_empty() && !target.starts_with(WH_PREFIX) {
                        let p = if dir.is_empty() {
                            target.to_string()
                        } else {
                            format!("{dir}/{target}")
                        };
                        table.push(Entry::new(p, EntryKind::Whiteout));
                    }
                    continue;
                }
                let meta =
                    std::fs::symlink_metadata(&path).map_err(|e| Error::io("stat", &path, e))?;
                if sys::is_whiteout(&path, &meta) {
                    table.push(Entry::new(rel, EntryKind::Whiteout));
                    continue;
                }
                let mut e = entry_from(&path, &rel, &meta)?;
                if meta.is_dir() {
                    e.opaque = sys::is_opaque(&path);
                    stack.push(rel.clone());
                } else if meta.nlink() > 1 {
                    let key = (meta.dev(), meta.ino());
                    match seen.get(&key) {
                        Some(first) => {
                            e.kind = EntryKind::Hardlink;
                            e.hardlink_target = first.clone();
                        }
                        None => {
                            seen.insert(key, rel.clone());
                        }
                    }
                }
                table.push(e);
            }
        }
        Ok(DirLower {
            root,
            entries: table.finish(),
        })
    }

    /// The layer's normalised entries.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn read_at(&self, file: &LowerFile, offset: u64, len: u32) -> std::io::Result<Bytes> {
        let f = std::fs::File::open(self.root.join(file.path()))?;
        let (start, n) = file.clamp(offset, len);
        let mut buf = vec![0u8; n];
        let mut got = 0;
        while got < n {
            let k = f.read_at(&mut buf[got..], start + got as u64)?;
            if k == 0 {
                break;
            }
            got += k;
        }
        buf.truncate(got);
        Ok(Bytes::from(buf))
    }
}

fn entry_from(path: &Path, rel: &str, meta: &std::fs::Metadata) -> Result<Entry> {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_symlink() {
        EntryKind::Symlink
    } else if ft.is_char_device() {
        EntryKind::CharDev
    } else if ft.is_block_device() {
        EntryKind::BlockDev
    } else if ft.is_fifo() {
        EntryKind::Fifo
    } else if ft.is_file() {
        EntryKind::File
    } else {
        return Err(Error::NotSupported("sockets in a directory lower"));
    };
    let mut e = Entry::new(rel, kind);
    e.mode = meta.mode() & 0o7777;
    e.uid = meta.uid();
    e.gid = meta.gid();
    e.mtime = Timestamp {
        sec: meta.mtime(),
        nsec: meta.mtime_nsec().clamp(0, 999_999_999) as u32,
    };
    if kind == EntryKind::File {
        e.size = meta.len();
    }
    if kind == EntryKind::Symlink {
        let t = std::fs::read_link(path).map_err(|err| Error::io("readlink", path, err))?;
        e.link_target = t.to_string_lossy().into_owned();
    }
    if matches!(kind, EntryKind::CharDev | EntryKind::BlockDev) {
        let rdev = meta.rdev();
        e.dev_major = libc::major(rdev);
        e.dev_minor = libc::minor(rdev);
    }
    e.xattrs = sys::visible_xattrs(path).map_err(|err| Error::io("read xattrs", path, err))?;
    Ok(e)
}

impl LowerSource for DirLower {
    fn start_read(&self, file: &LowerFile, offset: u64, len: u32) -> LowerRead {
        LowerRead::Ready(self.read_at(file, offset, len))
    }

    fn local_path(&self, file: &LowerFile) -> Option<PathBuf> {
        Some(self.root.join(file.path()))
    }
}
