//! Thin wrappers over the Linux calls the union needs and std lacks: extended attributes on
//! paths (not following symlinks), `mknod`, and overlay whiteout / opaque detection.
//! Every `unsafe` block here passes NUL-terminated paths and correctly sized buffers.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Overlay xattr marking an opaque directory (`y`) or one holding xattr whiteouts (`x`).
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Unprivileged spelling of [`OPAQUE_XATTR`] (directory lowers may use it).
pub const USER_OPAQUE_XATTR: &str = "user.overlay.opaque";
/// Overlay xattr whiteout (kernel >= 6.7).
pub const WHITEOUT_XATTR: &str = "trusted.overlay.whiteout";
/// Unprivileged spelling of [`WHITEOUT_XATTR`] (directory lowers may use it).
pub const USER_WHITEOUT_XATTR: &str = "user.overlay.whiteout";
/// Marker on a character device 0/0 that is a real device, not a whiteout (strata's own;
/// under `trusted.overlay.` so kernel overlayfs and strata both hide it).
pub const DEVICE_XATTR: &str = "trusted.overlay.strata.device";
/// Prefix of overlay-private xattrs, never shown to users.
pub const OVERLAY_PREFIX: &str = "trusted.overlay.";

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn cname(n: &str) -> io::Result<CString> {
    CString::new(n).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `lgetxattr`; `Ok(None)` when the attribute does not exist.
pub fn get_xattr(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let (p, n) = (cpath(path)?, cname(name)?);
    loop {
        // SAFETY: p and n are NUL-terminated; a null buffer with size 0 asks for the size.
        let size = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(None),
                _ => Err(e),
            };
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: buf is valid for buf.len() bytes.
        let got =
            unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) => continue, // grew meanwhile
                Some(libc::ENODATA) => return Ok(None),
                _ => return Err(e),
            }
        }
        buf.truncate(got as usize);
        return Ok(Some(buf));
    }
}

/// `llistxattr`, split into names.
pub fn list_xattrs(path: &Path) -> io::Result<Vec<String>> {
    let p = cpath(path)?;
    loop {
        // SAFETY: null buffer with size 0 asks for the size.
        let size = unsafe { libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOTSUP) => Ok(Vec::new()),
                _ => Err(e),
            };
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: buf is valid for buf.len() bytes.
        let got = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(e);
        }
        buf.truncate(got as usize);
        return Ok(buf
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect());
    }
}

/// `lsetxattr` with `flags` (`XATTR_CREATE` / `XATTR_REPLACE` / 0).
pub fn set_xattr(path: &Path, name: &str, value: &[u8], flags: i32) -> io::Result<()> {
    let (p, n) = (cpath(path)?, cname(name)?);
    // SAFETY: value is valid for value.len() bytes.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `lremovexattr`.
pub fn remove_xattr(path: &Path, name: &str) -> io::Result<()> {
    let (p, n) = (cpath(path)?, cname(name)?);
    // SAFETY: both NUL-terminated.
    let r = unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// All user-visible xattrs of `path` (overlay-private ones left out), sorted by name.
pub fn visible_xattrs(path: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for name in list_xattrs(path)? {
        if name.starts_with(OVERLAY_PREFIX) {
            continue;
        }
        if let Some(v) = get_xattr(path, &name)? {
            out.push((name, v));
        }
    }
    out.sort();
    Ok(out)
}

/// `mknod(path, mode, rdev)`.
pub fn mknod(path: &Path, mode: u32, rdev: u64) -> io::Result<()> {
    let p = cpath(path)?;
    // SAFETY: p is NUL-terminated.
    let r = unsafe { libc::mknod(p.as_ptr(), mode as libc::mode_t, rdev as libc::dev_t) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Is `meta` (of `path`) an overlay whiteout: char device 0/0 (unless it carries
/// [`DEVICE_XATTR`]), or an empty regular file with the `trusted.overlay.whiteout` (or
/// `user.overlay.whiteout`) xattr?
pub fn is_whiteout(path: &Path, meta: &std::fs::Metadata) -> bool {
    let ft = meta.file_type();
    if ft.is_char_device() {
        return meta.rdev() == 0 && !is_real_chardev00(path);
    }
    if ft.is_file() && meta.len() == 0 {
        let has = |n| matches!(get_xattr(path, n), Ok(Some(_)));
        return has(WHITEOUT_XATTR) || has(USER_WHITEOUT_XATTR);
    }
    false
}

/// Does the char device 0/0 at `path` carry the real-device marker?
pub fn is_real_chardev00(path: &Path) -> bool {
    matches!(get_xattr(path, DEVICE_XATTR), Ok(Some(v)) if v == b"y")
}

/// Is the directory at `path` opaque (`trusted.overlay.opaque=y`, or the `user.` spelling)?
pub fn is_opaque(path: &Path) -> bool {
    let y = |n| matches!(get_xattr(path, n), Ok(Some(v)) if v == b"y");
    y(OPAQUE_XATTR) || y(USER_OPAQUE_XATTR)
}

/// `lchown` that leaves ids it is not given alone.
pub fn lchown(path: &Path, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    std::os::unix::fs::lchown(path, uid, gid)
}

/// Set atime and mtime of `path` without following a symlink.
pub fn set_times(
    path: &Path,
    atime: Option<std::time::SystemTime>,
    mtime: Option<std::time::SystemTime>,
) -> io::Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let conv = |t: Option<std::time::SystemTime>| -> TimeSpec {
        match t {
            None => TimeSpec::new(0, libc::UTIME_OMIT),
            Some(t) => {
                let (s, n) = match t.duration_since(std::time::UNIX_EPOCH) {
                    Ok(d) => (d.as_secs() as i64, i64::from(d.subsec_nanos())),
                    Err(e) => {
                        let d = e.duration();
                        let (mut s, mut n) = (-(d.as_secs() as i64), -i64::from(d.subsec_nanos()));
                        if n < 0 {
                            s -= 1;
                            n += 1_000_000_000;
                        }
                        (s, n)
                    }
                };
                TimeSpec::new(s, n)
            }
        }
    };
    utimensat(
        None,
        path,
        &conv(atime),
        &conv(mtime),
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

/// Name bytes of an `OsStr` as a `&str` if valid UTF-8 (lower trees only hold UTF-8 names).
pub fn name_str(name: &OsStr) -> Option<&str> {
    std::str::from_utf8(name.as_bytes()).ok()
}
