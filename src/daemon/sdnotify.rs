//! systemd's side channels for the supervisor: the notification socket (`NOTIFY_SOCKET`:
//! `READY=1`, and the file descriptor store: `FDSTORE=1` keeps a descriptor in systemd,
//! `FDSTOREREMOVE=1` drops it) and the descriptors systemd hands back at the next start
//! (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`, numbered from 3), as sd_notify(3) and
//! sd_listen_fds(3) describe them. With the store, the FUSE connections outlive the
//! supervisor itself: systemd keeps a copy of every mount's device while the unit restarts.
//!
//! Calls only the OS (nix, libc).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;
/// Prefix of the store names of FUSE devices (`fuse-KEY`, KEY as in `ROOT/mounts/KEY.*`).
pub const FUSE_PREFIX: &str = "fuse-";

/// The notification socket of the service manager, if one gave us one.
#[derive(Debug, Clone)]
pub struct Notifier {
    path: std::path::PathBuf,
}

impl Notifier {
    /// From `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
    pub fn from_env() -> Option<Notifier> {
        let v = std::env::var_os("NOTIFY_SOCKET")?;
        if v.is_empty() {
            return None;
        }
        Some(Notifier { path: v.into() })
    }

    /// Send one notification (`state`: newline-separated `KEY=VALUE` lines) with `fds`
    /// attached.
    pub fn send(&self, state: &str, fds: &[RawFd]) -> std::io::Result<()> {
        use nix::sys::socket::{
            sendmsg, socket, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
        };
        use std::os::unix::ffi::OsStrExt;
        let sock = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let bytes = self.path.as_os_str().as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => UnixAddr::new_abstract(name)?,
            None => UnixAddr::new(&self.path)?,
        };
        let iov = [std::io::IoSlice::new(state.as_bytes())];
        let cmsg = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
        sendmsg(
            sock.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            Some(&addr),
        )?;
        Ok(())
    }

    /// Keep `fd` in the store under `name`.
    pub fn store(&self, name: &str, fd: RawFd) -> std::io::Result<()> {
        self.send(&format!("FDSTORE=1\nFDNAME={name}\n"), &[fd])
    }

    /// Drop the descriptors stored under `name`.
    pub fn unstore(&self, name: &str) -> std::io::Result<()> {
        self.send(&format!("FDSTOREREMOVE=1\nFDNAME={name}\n"), &[])
    }
}

/// Whether the service manager passed descriptors to this process (`LISTEN_PID` is ours).
pub fn listen_fds_for_us() -> bool {
    let pid = std::env::var("LISTEN_PID").ok();
    pid.and_then(|p| p.trim().parse::<u32>().ok()) == Some(std::process::id())
        && std::env::var("LISTEN_FDS").is_ok_and(|n| n.trim() != "0")
}

/// The descriptors the service manager passed to this process, with their names (empty
/// when unnamed); none unless `LISTEN_PID` is our pid. The variables are removed (children
/// must not take them for theirs) and every descriptor made close-on-exec.
pub fn take_listen_fds() -> Vec<(String, OwnedFd)> {
    let ours = listen_fds_for_us();
    let n = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(v);
    }
    let Some(n) = n
        .and_then(|n| n.trim().parse::<RawFd>().ok())
        .filter(|_| ours)
    else {
        return Vec::new();
    };
    let mut names = names.split(':');
    (0..n.clamp(0, 65536))
        .filter_map(|i| {
            let fd = LISTEN_FDS_START + i;
            let name = names.next().unwrap_or("").to_string();
            // SAFETY: fcntl on a descriptor number; F_GETFD fails on closed ones.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
                return None;
            }
            // SAFETY: the service manager passed this open descriptor to us alone.
            Some((name, unsafe { OwnedFd::from_raw_fd(fd) }))
        })
        .collect()
}

/// The store name of the FUSE device of the mount whose files are `ROOT/mounts/KEY.*`.
pub fn fuse_name(key: &str) -> String {
    format!("{FUSE_PREFIX}{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_and_descriptors_reach_the_socket() {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let l = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let n = Notifier { path: path.clone() };
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        n.store("fuse-abc", a.as_raw_fd()).unwrap();
        let mut buf = [0u8; 256];
        let mut space = nix::cmsg_space!([RawFd; 2]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let m =
            recvmsg::<()>(l.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty()).unwrap();
        let got: Vec<RawFd> = m
            .cmsgs()
            .unwrap()
            .flat_map(|c| match c {
                ControlMessageOwned::ScmRights(v) => v,
                _ => Vec::new(),
            })
            .collect();
        let len = m.bytes;
        assert_eq!(got.len(), 1);
        // SAFETY: the kernel installed it for us.
        drop(unsafe { OwnedFd::from_raw_fd(got[0]) });
        assert_eq!(&buf[..len], b"FDSTORE=1\nFDNAME=fuse-abc\n");
    }
}
