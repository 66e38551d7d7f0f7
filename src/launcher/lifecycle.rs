//! [`Launcher`]: the container lifecycle on top of records, bundles and the runtime.
//!
//! run/start (bundle -> runtime -> status and exit code in the record), stop, kill, exec,
//! wait. The caller owns the rootfs mount: it passes the mounted directory in and unmounts
//! after the container has exited (and before [`Launcher::remove`]).

use super::bundle::{write_bundle, BundleInputs};
use super::containers::{ContainerRecord, Containers, NewContainer, Status};
use super::runc::{DetachedFiles, DetachedStart, ExecOptions, ProcessIo, Runtime};
use super::user::scoped_path;
use super::{parse_signal, Error};
use crate::oci::ImageConfig;
use crate::store::Store;
use chrono::Utc;
use nix::sys::signal::Signal;
use oci_spec::runtime::Spec;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// docker stop's default grace period.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a detached start may take before it is reported as failed.
pub const DETACHED_START_TIMEOUT: Duration = Duration::from_secs(30);

/// What [`Launcher::run`] ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// A foreground container exited with this code (128+N for signal N).
    Exited(i32),
    /// A detached container was started: its init pid, or the exit code when it had already
    /// finished by the time strata looked.
    Detached {
        pid: Option<i32>,
        exit_code: Option<i32>,
    },
}

/// Records + runtime.
#[derive(Debug, Clone)]
pub struct Launcher {
    containers: Containers,
    runtime_state_root: Option<PathBuf>,
}

impl Launcher {
    pub fn new(store: &Store) -> Self {
        Self::with_containers(Containers::new(store))
    }

    pub fn with_containers(containers: Containers) -> Self {
        Launcher {
            containers,
            runtime_state_root: None,
        }
    }

    /// Pass `--root` to the runtime (tests; several strata roots on one host).
    pub fn with_runtime_state_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.runtime_state_root = Some(root.into());
        self
    }

    pub fn containers(&self) -> &Containers {
        &self.containers
    }

    /// The runtime a container was created with (`--runtime`, default runc).
    pub fn runtime_for(&self, rec: &ContainerRecord) -> Runtime {
        let rt = Runtime::new(rec.options.runtime_path());
        match &self.runtime_state_root {
            Some(r) => rt.with_state_root(r),
            None => rt,
        }
    }

    /// A new `created` record (id, name); the caller then mounts the rootfs.
    pub fn create(&self, new: NewContainer) -> Result<ContainerRecord, Error> {
        self.containers.create(new)
    }

    fn record(&self, id: &str) -> Result<ContainerRecord, Error> {
        self.containers
            .get(id)?
            .ok_or_else(|| Error::NoSuchContainer(id.to_string()))
    }

    /// Write the bundle for `id` and check the command exists in the rootfs. Returns the
    /// bundle directory and the spec.
    pub fn prepare(
        &self,
        id: &str,
        image: &ImageConfig,
        rootfs: &Path,
    ) -> Result<(PathBuf, Spec), Error> {
        let rec = self.record(id)?;
        let dir = self.containers.dir(id);
        let inputs = BundleInputs {
            id,
            rootfs,
            image,
            options: &rec.options,
            container_dir: &dir,
        };
        let (bundle, spec) = write_bundle(&inputs)?;
        check_command(rootfs, &spec)?;
        Ok((bundle, spec))
    }

    /// `strata run` after `create` and the mount: foreground or detached per the record's
    /// options. The record ends `exited` with the exit code (foreground) or `running` with
    /// the pid (detached).
    pub async fn run(
        &self,
        id: &str,
        image: &ImageConfig,
        rootfs: &Path,
        io: ProcessIo,
    ) -> Result<RunOutcome, Error> {
        let detach = self.record(id)?.options.detach;
        self.launch(id, image, rootfs, io, detach).await
    }

    /// `strata start`: run an existing, not running container again, detached.
    pub async fn start(
        &self,
        id: &str,
        image: &ImageConfig,
        rootfs: &Path,
    ) -> Result<RunOutcome, Error> {
        self.launch(id, image, rootfs, ProcessIo::inherit(false), true)
            .await
    }

    async fn launch(
        &self,
        id: &str,
        image: &ImageConfig,
        rootfs: &Path,
        io: ProcessIo,
        detach: bool,
    ) -> Result<RunOutcome, Error> {
        let rec = self.record(id)?;
        let runtime = self.runtime_for(&rec);
        if self.containers.refresh(id, &runtime).await?.status == Status::Running {
            return Err(Error::Running(id.to_string()));
        }
        if detach && rec.options.tty {
            return Err(Error::Unsupported(
                "-d with -t",
                "a detached pty needs a console-socket holder, not there yet; drop -t or -d".into(),
            ));
        }
        let t0 = std::time::Instant::now();
        let (bundle, spec) = self.prepare(id, image, rootfs)?;
        let t_prepare = t0.elapsed();
        // Leftovers of a crashed earlier run would make `runc run` fail; a container never
        // started has none (one runc process less on every `strata run`).
        if rec.started_at.is_some() {
            runtime.delete(id, true).await?;
        }
        let t_delete = t0.elapsed();
        self.network_setup(&rec)?;
        tracing::debug!(
            prepare_ms = t_prepare.as_secs_f64() * 1e3,
            delete_ms = (t_delete - t_prepare).as_secs_f64() * 1e3,
            network_ms = (t0.elapsed() - t_delete).as_secs_f64() * 1e3,
            "launch: ready to run"
        );
        let command = spec
            .process()
            .as_ref()
            .and_then(|p| p.args().clone())
            .unwrap_or_default();
        let stop_signal = image.config.as_ref().and_then(|c| c.stop_signal.clone());
        self.containers.update(id, |r| {
            r.status = Status::Running;
            r.started_at = Some(Utc::now());
            r.finished_at = None;
            r.exit_code = None;
            r.pid = None;
            r.command = command;
            r.stop_signal = stop_signal;
        })?;

        if detach {
            let files = DetachedFiles {
                log: self.containers.log_path(id),
                pid: self.containers.pid_path(id),
                exit: self.containers.exit_path(id),
            };
            let started = runtime
                .run_detached(id, &bundle, &files, DETACHED_START_TIMEOUT)
                .await;
            return match started {
                Ok(DetachedStart::Running { pid }) => {
                    self.containers.update(id, |r| r.pid = Some(pid))?;
                    Ok(RunOutcome::Detached {
                        pid: Some(pid),
                        exit_code: None,
                    })
                }
                Ok(DetachedStart::Exited { code }) => {
                    self.containers.mark_exited(id, Some(code))?;
                    Ok(RunOutcome::Detached {
                        pid: None,
                        exit_code: Some(code),
                    })
                }
                Err(e) => {
                    let _ = runtime.delete(id, true).await;
                    let _ = self.network_teardown(id);
                    self.containers.mark_exited(id, None)?;
                    Err(e)
                }
            };
        }

        let tty = rec.options.tty;
        let pid_file = self.containers.pid_path(id);
        let result = runtime.run(id, &bundle, io, tty, Some(&pid_file)).await;
        // `runc run` deletes its state on exit; this covers runc itself failing.
        let cleanup = runtime.delete(id, true).await;
        let net = self.network_teardown(id);
        let code = result.as_ref().ok().copied();
        self.containers.mark_exited(id, code)?;
        let code = result?;
        cleanup?;
        net?;
        Ok(RunOutcome::Exited(code))
    }

    /// The container's own network namespace and slirp4netns for `--network bridge`.
    fn network_setup(&self, rec: &ContainerRecord) -> Result<(), Error> {
        let opts = &rec.options;
        match opts.network {
            super::Network::Bridge => super::network::setup(&rec.id, opts),
            super::Network::Host | super::Network::None => {
                if !opts.publish.is_empty() {
                    tracing::warn!(
                        "published ports are discarded with --network {:?}",
                        opts.network
                    );
                }
                Ok(())
            }
        }
    }

    /// Stop the container's slirp4netns and drop its network namespace (if any).
    pub fn network_teardown(&self, id: &str) -> Result<(), Error> {
        super::network::teardown(id)
    }

    /// docker stop: the image's StopSignal (or SIGTERM), SIGKILL after `timeout` (default
    /// 10 s). Returns the updated record.
    pub async fn stop(
        &self,
        query: &str,
        timeout: Option<Duration>,
    ) -> Result<ContainerRecord, Error> {
        let rec = self.containers.lookup(query)?;
        let runtime = self.runtime_for(&rec);
        let rec = self.containers.refresh(&rec.id, &runtime).await?;
        if rec.status != Status::Running {
            // It exited by itself: its network may still be up.
            self.network_teardown(&rec.id)?;
            return Ok(rec);
        }
        let sig = match rec.stop_signal.as_deref() {
            Some(s) => parse_signal(s)?,
            None => Signal::SIGTERM,
        };
        runtime
            .stop(&rec.id, sig, timeout.unwrap_or(DEFAULT_STOP_TIMEOUT))
            .await?;
        let rec = self.settle(&rec, &runtime).await?;
        self.network_teardown(&rec.id)?;
        Ok(rec)
    }

    /// After the process is gone: let a detached container's shim write its exit code, then
    /// refresh the record. Foreground containers are marked by their own strata process.
    async fn settle(
        &self,
        rec: &ContainerRecord,
        runtime: &Runtime,
    ) -> Result<ContainerRecord, Error> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let exit = self.containers.exit_path(&rec.id);
        while rec.options.detach && !exit.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.containers.refresh(&rec.id, runtime).await
    }

    /// `strata kill`: send `sig` to the container's init.
    pub async fn kill(&self, query: &str, sig: Signal) -> Result<(), Error> {
        let rec = self.containers.lookup(query)?;
        let runtime = self.runtime_for(&rec);
        if self.containers.refresh(&rec.id, &runtime).await?.status != Status::Running {
            return Err(Error::NotRunning(rec.id));
        }
        runtime.kill(&rec.id, sig, false).await
    }

    /// `strata pause` / `unpause`: freeze or thaw every process of a running container.
    pub async fn pause(&self, query: &str, pause: bool) -> Result<(), Error> {
        let rec = self.containers.lookup(query)?;
        let runtime = self.runtime_for(&rec);
        if self.containers.refresh(&rec.id, &runtime).await?.status != Status::Running {
            return Err(Error::NotRunning(rec.id));
        }
        runtime.pause(&rec.id, pause).await
    }

    /// Whether the runtime has this running container frozen (`pause`).
    pub async fn is_paused(&self, rec: &ContainerRecord) -> bool {
        rec.status == Status::Running
            && matches!(
                self.runtime_for(rec).state(&rec.id).await,
                Ok(Some(s)) if s.status == "paused"
            )
    }

    /// `strata exec`: another process in a running container; its exit code.
    pub async fn exec(&self, query: &str, opts: &ExecOptions, io: ProcessIo) -> Result<i32, Error> {
        let rec = self.containers.lookup(query)?;
        let runtime = self.runtime_for(&rec);
        if self.containers.refresh(&rec.id, &runtime).await?.status != Status::Running {
            return Err(Error::NotRunning(rec.id));
        }
        runtime.exec(&rec.id, opts, io).await
    }

    /// `strata wait`: block until the container exits; its exit code (None if unknown).
    pub async fn wait(&self, query: &str) -> Result<Option<i32>, Error> {
        let rec = self.containers.lookup(query)?;
        let runtime = self.runtime_for(&rec);
        loop {
            let r = self.containers.refresh(&rec.id, &runtime).await?;
            if r.status != Status::Running {
                return Ok(r.exit_code);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `strata rm`, first step: see [`Containers::prepare_remove`]; then the caller unmounts
    /// and calls [`Launcher::remove`].
    pub async fn prepare_remove(&self, query: &str, force: bool) -> Result<ContainerRecord, Error> {
        let rec = self.containers.lookup(query)?;
        let runtime = self.runtime_for(&rec);
        let rec = self
            .containers
            .prepare_remove(&rec.id, force, &runtime)
            .await?;
        self.network_teardown(&rec.id)?;
        Ok(rec)
    }

    /// `strata rm`, last step: delete the record and directory (nothing may be mounted).
    pub fn remove(&self, id: &str) -> Result<(), Error> {
        self.containers.remove(id)
    }
}

/// docker's "executable file not found" check, done before starting so the error is clear
/// and the exit status 127 (126 when the file is there but not an executable file): argv[0]
/// through the process PATH, inside the rootfs.
fn check_command(rootfs: &Path, spec: &Spec) -> Result<(), Error> {
    let Some(process) = spec.process().as_ref() else {
        return Err(Error::NoCommand);
    };
    let Some(argv0) = process.args().as_ref().and_then(|a| a.first()) else {
        return Err(Error::NoCommand);
    };
    #[derive(PartialEq)]
    enum Found {
        Executable,
        NotExecutable,
        Missing,
    }
    let probe = |p: &str| -> Result<Found, Error> {
        let path = scoped_path(rootfs, p)?;
        Ok(match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Found::Executable,
            Ok(_) => Found::NotExecutable,
            Err(_) => Found::Missing,
        })
    };
    if argv0.contains('/') {
        let full = if argv0.starts_with('/') {
            argv0.clone()
        } else {
            format!("{}/{argv0}", process.cwd().display())
        };
        return match probe(&full)? {
            Found::Executable => Ok(()),
            Found::NotExecutable => Err(Error::NotExecutable(argv0.clone())),
            Found::Missing => Err(Error::CommandNotFound(argv0.clone())),
        };
    }
    let path = process
        .env()
        .as_ref()
        .and_then(|env| env.iter().find_map(|e| e.strip_prefix("PATH=")))
        .unwrap_or(super::bundle::DEFAULT_PATH);
    let mut not_executable = false;
    for dir in path.split(':').filter(|d| d.starts_with('/')) {
        match probe(&format!("{dir}/{argv0}"))? {
            Found::Executable => return Ok(()),
            Found::NotExecutable => not_executable = true,
            Found::Missing => {}
        }
    }
    if not_executable {
        return Err(Error::NotExecutable(argv0.clone()));
    }
    Err(Error::CommandNotFound(argv0.clone()))
}
