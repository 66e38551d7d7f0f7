//! `strata daemon`: the one process that serves every mount of a root (see `crate::daemon`),
//! and the CLI's side of talking to it: mount requests from `mount`, `run`, `start`, and
//! `strata store mount|umount` (podman additional layer stores).

use super::{Ctx, Error};
use crate::daemon::{Client, MountRequest, Request, Response};
use std::time::Duration;

/// How long `daemon --stop` waits for the daemon to exit (the server gives its mounts 30 s
/// to end, then flushes the cache).
const STOP_WAIT: Duration = Duration::from_secs(60);

#[derive(clap::Args, Debug, Clone)]
pub struct DaemonArgs {
    /// Serve in this process (for service managers) instead of starting in the background
    #[arg(long)]
    pub foreground: bool,
    /// Exit after this many seconds without any mount (default: serve until stopped)
    #[arg(long, value_name = "SECS")]
    pub idle_exit: Option<u64>,
    /// Ask the running daemon to unmount everything and exit
    #[arg(long, conflicts_with_all = ["foreground", "idle_exit"])]
    pub stop: bool,
    /// (internal) Serve as the server process under a supervisor
    #[arg(long, hide = true)]
    pub serve_child: bool,
    #[command(subcommand)]
    pub action: Option<DaemonAction>,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum DaemonAction {
    /// Hand every mount to a new server process without unmounting (readers only pause)
    Restart,
    /// Like restart, running BINARY (default: this strata executable) from now on
    Upgrade {
        #[arg(long, value_name = "PATH")]
        binary: Option<std::path::PathBuf>,
    },
}

pub async fn daemon(ctx: &Ctx, args: DaemonArgs) -> Result<i32, Error> {
    let root = ctx.store.root().to_path_buf();
    if let Some(action) = &args.action {
        return restart(ctx, action).await;
    }
    if args.serve_child {
        let inh = match crate::daemon::Inherited::from_env() {
            Some(Ok(i)) => i,
            Some(Err(msg)) => return Err(Error::Usage(msg)),
            None => {
                return Err(Error::Usage(
                    "--serve-child is started by `strata daemon`, not by hand".into(),
                ))
            }
        };
        let svc = ctx.services()?;
        let opts = crate::daemon::DaemonOptions {
            idle_exit: inh.idle_exit_secs.map(Duration::from_secs),
        };
        crate::daemon::serve(svc, opts, inh, |sock| {
            tracing::info!("strata server: serving {}", sock.display())
        })
        .await?;
        return Ok(0);
    }
    if let Some(r) = crate::daemon::resume().await {
        return Ok(r?);
    }
    if args.stop {
        return match Client::connect(&root).await {
            Ok(mut c) => {
                let procs = crate::daemon::daemon_processes(&root);
                let r = c.call(&Request::Shutdown).await?;
                drop(c);
                println!("strata daemon (pid {}) stopping", r.pid);
                // Stopped means stopped: the next `strata daemon` (or run) takes the lock.
                if crate::daemon::wait_exited(&procs, STOP_WAIT).await {
                    println!("strata daemon stopped");
                    Ok(0)
                } else {
                    eprintln!(
                        "strata daemon (pid {}) still quitting after {} s (ending its mounts)",
                        r.pid,
                        STOP_WAIT.as_secs()
                    );
                    Ok(1)
                }
            }
            Err(_) => {
                println!("no strata daemon serves {}", root.display());
                Ok(0)
            }
        };
    }
    let idle_exit = args.idle_exit.map(Duration::from_secs);
    if args.foreground {
        let opts = crate::daemon::SupervisorOptions {
            root: root.clone(),
            config: ctx.config_path.clone(),
            idle_exit_secs: args.idle_exit,
        };
        let code = crate::daemon::supervise(opts, |sock| {
            eprintln!("strata daemon: serving {}", sock.display())
        })
        .await?;
        return Ok(code);
    }
    if let Ok(mut c) = Client::connect(&root).await {
        let r = c.call(&Request::Ping).await?;
        println!(
            "strata daemon already serving {} (pid {})",
            root.display(),
            r.pid
        );
        return Ok(0);
    }
    let log = root.join("daemon.log");
    crate::daemon::start_background(&root, ctx.config_path.as_deref(), &log, idle_exit)?;
    let mut c = Client::wait_for(&root, &log).await?;
    let r = c.call(&Request::Ping).await?;
    println!("strata daemon serving {} (pid {})", root.display(), r.pid);
    Ok(0)
}

/// `strata daemon restart|upgrade`: have the running daemon hand its mounts to a new server
/// and wait until that one answers.
async fn restart(ctx: &Ctx, action: &DaemonAction) -> Result<i32, Error> {
    let root = ctx.store.root();
    let binary = match action {
        DaemonAction::Restart => None,
        DaemonAction::Upgrade { binary: Some(b) } => Some(
            std::fs::canonicalize(b).map_err(|e| Error::Usage(format!("{}: {e}", b.display())))?,
        ),
        DaemonAction::Upgrade { binary: None } => Some(
            std::env::current_exe()
                .map_err(|e| Error::Usage(format!("this executable's path: {e}")))?,
        ),
    };
    let t0 = std::time::Instant::now();
    let mut c = match Client::connect(root).await {
        Ok(c) => c,
        Err(_) => {
            println!("no strata daemon serves {}", root.display());
            return Ok(1);
        }
    };
    let old = c.call(&Request::Ping).await?.pid;
    let r = c.call(&Request::Restart { binary }).await?;
    drop(c);
    let deadline = t0 + Duration::from_secs(150);
    loop {
        if let Ok(mut c) = Client::connect(root).await {
            if let Ok(p) = c.call(&Request::Ping).await {
                if p.pid != old {
                    println!(
                        "strata daemon restarted: server pid {old} -> {} in {} ms ({})",
                        p.pid,
                        t0.elapsed().as_millis(),
                        r.message.unwrap_or_default()
                    );
                    return Ok(0);
                }
            }
        }
        if std::time::Instant::now() > deadline {
            eprintln!(
                "strata daemon: no new server answered within 150 s (log: {})",
                root.join("daemon.log").display()
            );
            return Ok(1);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Ask the root's daemon (started if none runs) to mount; its answer.
pub async fn mount(ctx: &Ctx, req: MountRequest) -> Result<Response, Error> {
    let mut c = Client::connect_or_start(ctx.store.root(), ctx.config_path.as_deref()).await?;
    Ok(c.call(&Request::Mount(req)).await?)
}

/// The daemon's fresh record of one of its mounts.
pub async fn stats(
    ctx: &Ctx,
    mountpoint: &std::path::Path,
) -> Result<Option<crate::mount::MountRecord>, Error> {
    let mut c = Client::connect(ctx.store.root()).await?;
    let r = c
        .call(&Request::Stats {
            mountpoint: mountpoint.to_path_buf(),
        })
        .await?;
    Ok(r.record.map(|b| *b))
}

/// Have the root's daemon unmount `mountpoint` (canonical) if it serves it: `Ok(false)` when no
/// daemon runs or it does not serve that mount (the caller unmounts it itself).
pub async fn unmount(ctx: &Ctx, mountpoint: &std::path::Path, force: bool) -> Result<bool, Error> {
    let Ok(mut c) = Client::connect(ctx.store.root()).await else {
        return Ok(false);
    };
    let req = Request::Unmount {
        mountpoint: mountpoint.to_path_buf(),
        force,
    };
    match c.call(&req).await {
        Ok(_) => Ok(true),
        Err(crate::daemon::Error::Remote(msg)) if msg.contains("not a strata mount") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum StoreCommand {
    /// Serve DIR as a containers/storage additional layer store (storage.conf:
    /// additionallayerstores = ["DIR:ref"]); layers of images with lazy indexes are read lazily
    Mount { dir: std::path::PathBuf },
    /// Stop serving the store at DIR (layer views podman uses stay mounted)
    Umount { dir: std::path::PathBuf },
}

/// `strata store mount|umount DIR`: asked of the daemon (started when none runs).
pub async fn store(ctx: &Ctx, command: StoreCommand) -> Result<i32, Error> {
    let req = match command {
        StoreCommand::Mount { dir } => Request::StoreMount { dir },
        StoreCommand::Umount { dir } => Request::StoreUnmount { dir },
    };
    let mut c = Client::connect_or_start(ctx.store.root(), ctx.config_path.as_deref()).await?;
    let r = c.call(&req).await?;
    if let Some(m) = r.message {
        println!("{m}");
    }
    Ok(0)
}
