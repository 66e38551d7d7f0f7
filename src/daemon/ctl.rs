//! The private channel between the supervisor and the server it runs: a `SOCK_SEQPACKET`
//! socket pair, one JSON message per packet ([`Ctl`]), a FUSE device descriptor riding along
//! (`SCM_RIGHTS`) where a message hands one over. Also the hand-off of descriptors to a new
//! process at `exec` ([`Inherited`], in an environment variable).
//!
//! Calls only the OS (nix, libc).

use serde::{Deserialize, Serialize};
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

/// Environment variable carrying [`Inherited`] to a server started by the supervisor.
pub const CHILD_ENV: &str = "STRATA_DAEMON_CHILD";
/// Environment variable carrying the supervisor's own state across an upgrade `exec`.
pub const SUPERVISOR_ENV: &str = "STRATA_DAEMON_SUPERVISOR";
/// Largest control message (a mountpoint and a few words).
const MAX_MSG: usize = 16 * 1024;

/// One message on the control channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub enum Ctl {
    /// Server -> supervisor: keep this mount's FUSE device (attached to the packet).
    Add { mountpoint: PathBuf },
    /// Server -> supervisor: the mount is gone; drop its device.
    Del { mountpoint: PathBuf },
    /// Server -> supervisor: hand everything to a new server (`binary`: run that executable,
    /// for an upgrade; the supervisor re-executes itself as it first).
    Restart { binary: Option<PathBuf> },
    /// New server -> supervisor: every mount is prepared; waiting for `Go`.
    Ready { mounts: usize },
    /// Supervisor -> new server: the old one is gone, attach and serve.
    Go,
    /// Supervisor -> old server: stop serving now, without unmounting (a successor takes over).
    Quit,
}

/// A descriptor passed down at `exec`: its number and what it is for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InheritedMount {
    pub fd: RawFd,
    pub mountpoint: PathBuf,
}

/// What a server started by the supervisor inherits (in [`CHILD_ENV`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inherited {
    /// The control socket, listening.
    pub listener: RawFd,
    /// This server's end of the control channel.
    pub ctl: RawFd,
    /// The root's lock (held while any process has it open).
    pub lock: RawFd,
    /// Restart count: file handles of this server are numbered from `generation << 40`.
    pub generation: u64,
    /// Mounts to serve again (their devices).
    pub mounts: Vec<InheritedMount>,
    /// Wait for `Go` after `Ready` before attaching (an old server still runs).
    pub handover: bool,
    pub idle_exit_secs: Option<u64>,
    /// The supervisor keeps the devices in systemd's store: when it dies, quit at once
    /// (systemd starts a new one with the devices; it needs the root's lock).
    #[serde(default)]
    pub fd_store: bool,
}

impl Inherited {
    /// Read from the environment.
    pub fn from_env() -> Option<Result<Inherited, String>> {
        let v = std::env::var(CHILD_ENV).ok()?;
        Some(serde_json::from_str(&v).map_err(|e| format!("{CHILD_ENV}: {e}")))
    }
}

/// Take ownership of an inherited descriptor number.
///
/// # Safety
/// `fd` must be open, inherited for this purpose and owned by nothing else in this process.
pub unsafe fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: the caller promises `fd` is open and unowned.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A connected pair for the control channel (close-on-exec both; the end a child keeps is
/// made inheritable at spawn).
pub fn pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Send `msg` (with `fd` attached if given).
pub fn send(sock: &OwnedFd, msg: &Ctl, fd: Option<RawFd>) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let body = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    let iov = [std::io::IoSlice::new(&body)];
    let fds: Vec<RawFd> = fd.into_iter().collect();
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// Receive one message and the descriptor that came with it; `None` when the peer closed.
pub fn recv(sock: &OwnedFd) -> std::io::Result<Option<(Ctl, Option<OwnedFd>)>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = vec![0u8; MAX_MSG];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let (n, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => {
                let mut fds = Vec::new();
                if let Ok(cmsgs) = m.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(v) = c {
                            // SAFETY: the kernel just installed these descriptors for us.
                            fds.extend(v.into_iter().map(|fd| unsafe { own(fd) }));
                        }
                    }
                }
                break (m.bytes, fds);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if n == 0 {
        return Ok(None);
    }
    let msg: Ctl = serde_json::from_slice(&buf[..n])
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok(Some((msg, fds.into_iter().next())))
}

/// Let `fd` survive `exec` (call in the child between fork and exec, or before an exec of
/// ourselves).
pub fn inheritable(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor number; async-signal-safe, no memory involved.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
