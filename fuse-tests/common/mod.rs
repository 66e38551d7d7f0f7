//! Shared harness for strata's integration tests (`fuse-tests/`).
//!
//! Included from every test file with `mod common;`. It starts real parts on 127.0.0.1 only:
//! the Debian `docker-registry` (anonymous, htpasswd or bearer-token auth with an in-process
//! token issuer), a fault-injecting HTTP proxy, OCI image layouts built in code and pushed
//! with `skopeo`, and a runner for the `strata` binary with its state in a tempdir.
//! Nothing here talks to the strata library: the harness is an independent oracle.
#![allow(dead_code, unused_imports)]

pub mod cli;
pub mod containerd;
pub mod credhelper;
pub mod forge;
pub mod http;
pub mod image;
pub mod pki;
pub mod proxy;
pub mod registry;
pub mod rel;
pub mod skopeo;
pub mod soci;
/// Deterministic test data: the library's unit tests and the benches compile the same file.
#[path = "../../src/testdata.rs"]
pub mod testdata;
pub mod token;
pub mod union_extra;

pub use cli::{strata, OutputExt, StrataEnv};
pub use image::{
    busybox_image, two_platform_index, BuiltImage, BuiltIndex, BuiltLayer, Compression, Entry,
    ImageBuilder, Layer,
};
pub use pki::TestCa;
pub use proxy::{Fault, FaultProxy};
pub use registry::{Registry, RegistryAuth, RegistryTls};
pub use skopeo::{skopeo, skopeo_copy};
pub use token::{TokenOptions, TokenServer};

use std::net::TcpListener;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// A port that was free a moment ago on 127.0.0.1 (bind :0, read, release). Callers that
/// hand it to another process must retry with a new port if that process fails to bind.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// A loopback TCP port that refuses connections for as long as this value lives: a socket
/// bound to 127.0.0.1:0 that never listens, so no other test or process can take the port
/// (a plain [`free_port`] could be reused by a concurrent test's server). Use it for "this
/// mirror / registry is down".
pub struct DeadPort {
    fd: std::os::fd::OwnedFd,
    port: u16,
}

impl DeadPort {
    pub fn new() -> DeadPort {
        use std::os::fd::FromRawFd as _;
        // SAFETY: plain socket(2); the returned descriptor is checked and owned below.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        addr.sin_port = 0;
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        use std::os::fd::AsRawFd as _;
        // SAFETY: `addr` is a valid sockaddr_in of `len` bytes; fd is open.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                len,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        // SAFETY: as above, plain old data.
        let mut out: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut out_len = len;
        // SAFETY: `out` has room for a sockaddr_in; `out_len` holds its size.
        let rc = unsafe {
            libc::getsockname(
                fd.as_raw_fd(),
                &mut out as *mut _ as *mut libc::sockaddr,
                &mut out_len,
            )
        };
        assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
        DeadPort {
            fd,
            port: u16::from_be(out.sin_port),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// "http://127.0.0.1:PORT".
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// "127.0.0.1:PORT".
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Default for DeadPort {
    fn default() -> Self {
        Self::new()
    }
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// Poll `probe` every `interval` until it returns `Some`, or panic with `what` after `timeout`.
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(interval);
    }
}

/// The file system type /proc/self/mounts gives for the mount at `dir` (the topmost).
pub fn fs_type(dir: &std::path::Path) -> Option<String> {
    let want = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mounts")
        .ok()?
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 2 && f[1] == want).then(|| f[2].to_string())
        })
        .next_back()
}
