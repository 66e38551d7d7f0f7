//! Container launcher: OCI runtime bundles (oci-spec), the runc runtime, container records.
//!
//! Top layer of the library below `cli`. It takes a ready root filesystem directory (the
//! caller mounts the lazy union there; tests use a plain directory), turns an image config and
//! docker-style [`RunOptions`] into an OCI runtime spec ([`bundle`]), drives an OCI runtime
//! binary, `runc` by default ([`runc`]), and keeps container records under
//! `$STRATA_ROOT/containers/<id>/` ([`containers`]). [`Launcher`] ties the three together.
//! Isolation follows docker's defaults: docker's seccomp profile ([`seccomp`]) and a private
//! network namespace with slirp4netns NAT and `-p` forwards ([`network`]).
//! It may use `store` (record files), `oci` (image config types) and `digest`; it never
//! talks to a registry and mounts nothing but the pinned network namespace file of
//! [`network`] (the caller owns the rootfs mount).
//!
//! Caller flow for `strata run`: [`Launcher::create`] (record, id, name) -> the caller mounts
//! the rootfs and records its paths with [`Containers::set_mount`] -> [`Launcher::run`]
//! (bundle, runtime, status and exit code) -> for `--rm`, [`Launcher::remove`] after
//! unmounting.

pub mod bundle;
pub mod caps;
pub mod containers;
mod lifecycle;
pub mod network;
pub mod options;
pub mod runc;
pub mod seccomp;
pub mod user;

pub use bundle::{build_spec, process_args, write_bundle, BundleInputs};
pub use containers::{ContainerRecord, Containers, MountPaths, NewContainer, Status};
pub use lifecycle::{Launcher, RunOutcome, DEFAULT_STOP_TIMEOUT};
pub use options::{
    apply_security_opt, parse_signal, Network, PortMapping, Proto, RunOptions, Tmpfs, Ulimit,
    Volume,
};
pub use runc::{
    DetachedFiles, DetachedStart, ExecOptions, ProcessIo, Runtime, RuntimeState, StdStream,
};
pub use seccomp::SeccompOption;
pub use user::{resolve_user, ResolvedUser};

use std::path::{Path, PathBuf};

/// Everything the launcher can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {context}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error("building the OCI runtime spec: {0}")]
    Spec(#[source] oci_spec::OciSpecError),
    #[error("{path}: bad JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A malformed option value: volume, tmpfs, env, ulimit, signal, name.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidOption {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("no command specified: the image has no Entrypoint or Cmd and none was given")]
    NoCommand,
    /// docker's message; exit status 127.
    #[error("exec: \"{0}\": executable file not found in $PATH")]
    CommandNotFound(String),
    /// docker's message; exit status 126.
    #[error("exec: \"{0}\": permission denied (not an executable file)")]
    NotExecutable(String),
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    #[error("{0}: unsupported: {1}")]
    Unsupported(&'static str, String),
    #[error("No such container: {0}")]
    NoSuchContainer(String),
    #[error("container reference {0:?} is ambiguous (matches several ids)")]
    Ambiguous(String),
    #[error("Conflict. The container name \"/{name}\" is already in use by container \"{id}\"")]
    NameInUse { name: String, id: String },
    #[error("container {0} is running: stop it first or force the removal")]
    Running(String),
    #[error("{0} is still mounted: unmount the container's rootfs before removing it")]
    StillMounted(PathBuf),
    #[error("starting OCI runtime {runtime}: {source}")]
    RuntimeSpawn {
        runtime: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{runtime} {op} {id} failed ({status}): {stderr}")]
    RuntimeFailed {
        runtime: PathBuf,
        op: &'static str,
        id: String,
        status: String,
        stderr: String,
    },
    /// Setting up the container's network (slirp4netns, `-p`).
    #[error("container network: {0}")]
    Network(String),
    #[error("timed out after {secs}s waiting for {what}")]
    Timeout { what: String, secs: u64 },
}

impl Error {
    /// The exit status docker gives a `run` that fails this way: 127 for a command that is
    /// not found, 126 for one that is not executable, 125 for everything else (a failure
    /// before the container runs).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::CommandNotFound(_) => 127,
            Error::NotExecutable(_) => 126,
            _ => 125,
        }
    }

    pub(crate) fn io(context: &'static str, path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            context,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn invalid(what: &'static str, value: &str, reason: impl Into<String>) -> Self {
        Error::InvalidOption {
            what,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}
