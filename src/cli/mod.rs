//! Command line: argument parsing (clap), dispatch and human output; no mount or image logic
//! of its own. Calls `image`, `mount`, `launcher`, `store`, `registry`, `cache` (stats, prune)
//! and `config`. Every command returns `Result<i32, Error>`; `main.rs` prints the error and
//! exits.

mod commit;
mod daemon;
mod images;
pub mod mount;
mod overlay;
mod run;
mod util;

use crate::config::Config;
use crate::registry::auth::CredentialStore;
use crate::registry::Client;
use crate::store::Store;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Registry(#[from] crate::registry::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error(transparent)]
    Image(#[from] crate::image::Error),
    #[error(transparent)]
    Reference(#[from] crate::reference::ReferenceError),
    #[error(transparent)]
    Launcher(#[from] crate::launcher::Error),
    #[error(transparent)]
    Mount(#[from] crate::mount::Error),
    #[error(transparent)]
    Daemon(#[from] crate::daemon::Error),
    #[error(transparent)]
    Cache(#[from] crate::cache::Error),
    #[error(transparent)]
    Creds(#[from] crate::registry::auth::CredError),
    #[error("{0}")]
    Usage(String),
    #[error("{what}: worker task failed")]
    Join {
        what: String,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("container {container}: rootfs {} is not mounted and mounting it failed", .rootfs.display())]
    RootfsMount {
        container: String,
        rootfs: PathBuf,
        #[source]
        source: Box<crate::mount::Error>,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Parser, Debug)]
#[command(
    name = "strata",
    version,
    about = "Run containers from OCI/Docker images without pulling them first"
)]
pub struct Cli {
    /// State directory (blobs, indexes, containers, cache)
    #[arg(
        long,
        global = true,
        env = "STRATA_ROOT",
        default_value = "/var/lib/strata"
    )]
    pub root: PathBuf,
    /// Configuration file (default: ROOT/config.json)
    #[arg(long, global = true, env = "STRATA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Verbose logging (same as RUST_LOG=debug)
    #[arg(long, short = 'D', global = true)]
    pub debug: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Download an image and all its layers
    Pull {
        image: String,
        /// os/arch[/variant] to pick from a multi-platform image (default: this host)
        #[arg(long)]
        platform: Option<String>,
        #[arg(long, short)]
        quiet: bool,
    },
    /// List images
    Images {
        #[arg(short, long)]
        quiet: bool,
        #[arg(long)]
        digests: bool,
        #[arg(long)]
        no_trunc: bool,
    },
    /// Show an image's record and configuration as JSON
    Inspect {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Show an image's history
    History {
        image: String,
        #[arg(long)]
        no_trunc: bool,
    },
    /// Give an image another name
    Tag { source: String, target: String },
    /// Remove images (blobs no other image uses are deleted)
    Rmi {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Upload an image to a registry
    Push {
        image: String,
        #[arg(long, short)]
        quiet: bool,
    },
    /// Write images to a tar (docker-archive + OCI layout)
    Save {
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Load images from a tar written by `save` or `docker save`
    Load {
        #[arg(short, long)]
        input: Option<PathBuf>,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Search a registry's catalog: [REGISTRY/]TERM
    Search {
        term: String,
        #[arg(long, default_value_t = 25)]
        limit: usize,
    },
    /// Log in to a registry (credentials verified before they are saved)
    Login {
        registry: Option<String>,
        #[arg(short, long)]
        username: Option<String>,
        /// Password (prefer --password-stdin)
        #[arg(short, long)]
        password: Option<String>,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove saved credentials for a registry
    Logout { registry: Option<String> },
    /// Build layer indexes for an image; with --push publish them as a sidecar artifact so
    /// the image can be mounted lazily without changing its layers
    Index {
        image: String,
        #[arg(long)]
        push: bool,
        #[arg(long)]
        platform: Option<String>,
    },
    /// Access profiles (which files a workload reads first): show or publish
    Profile {
        #[command(subcommand)]
        command: ProfileCommand,
    },
    /// Chunk cache: list or prune
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Mount an image lazily as a FUSE union file system
    Mount(mount::MountArgs),
    /// Run the daemon that serves every mount of this root (started on demand otherwise)
    Daemon(daemon::DaemonArgs),
    /// Mount a union of plain directories, fuse-overlayfs compatible (-o lowerdir=...)
    Overlay(overlay::OverlayArgs),
    /// Unmount a strata mount
    Umount {
        mountpoint: PathBuf,
        /// Detach even if busy or stale (daemon gone)
        #[arg(short, long)]
        force: bool,
    },
    /// Counters of a mount: bytes fetched, hits, prefetch progress, fetch latency
    Stats {
        mountpoint: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Run a command in a new container on a lazily mounted image (no pull needed)
    Run(Box<run::RunArgs>),
    /// List containers
    Ps {
        #[arg(short, long)]
        all: bool,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Start stopped containers (detached)
    Start {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Stop running containers (StopSignal or SIGTERM, then SIGKILL)
    Stop {
        #[arg(short, long)]
        time: Option<u64>,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Stop then start containers
    Restart {
        #[arg(short, long)]
        time: Option<u64>,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Send a signal to containers
    Kill {
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers (their upper layers and mounts)
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Output of a detached container
    Logs {
        #[arg(short, long)]
        follow: bool,
        container: String,
    },
    /// Run a command in a running container
    Exec(run::ExecArgs),
    /// Wait for containers to exit and print their exit codes
    Wait {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Create a new image from a container's changes (its upper layer)
    Commit(commit::CommitArgs),
    /// Write a container's root file system as a flat tar
    Export(commit::ExportArgs),
    /// Create a one-layer image from a root file system tar (plain, gzip or zstd)
    Import(commit::ImportArgs),
    /// System information
    System {
        #[command(subcommand)]
        command: SystemCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum ProfileCommand {
    /// Files of the profile recorded on this machine, first read first
    Show {
        image: String,
        #[arg(long)]
        platform: Option<String>,
    },
    /// Publish this machine's profile next to the image (an OCI artifact whose subject is the
    /// image manifest): cold starts elsewhere prefetch those files first
    Push {
        image: String,
        #[arg(long)]
        platform: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum CacheCommand {
    /// Cached bytes per layer
    Ls,
    /// Fetch every layer of an image into the cache now (verified; spans decoded in parallel)
    Fetch {
        image: String,
        #[arg(long)]
        platform: Option<String>,
    },
    /// Evict cached spans (least recently used first) down to a size
    Prune {
        /// Keep at most this much, e.g. "1GiB" (default: nothing)
        #[arg(long)]
        keep: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum SystemCommand {
    /// Disk usage of images, indexes, cache and containers
    Df,
}

impl Error {
    /// Exit status for this failure: docker's 125/127 for `run` failures, else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Launcher(e) => e.exit_code(),
            _ => 1,
        }
    }
}

/// Everything a command needs, opened once.
pub struct Ctx {
    /// `--config` as given (passed on to a daemon this command starts).
    pub config_path: Option<PathBuf>,
    pub store: Arc<Store>,
    pub config: Arc<Config>,
    pub client: Arc<Client>,
}

impl Ctx {
    /// The registry client, store, configuration and a chunk cache over `ROOT/cache`, for
    /// the commands that mount or read images lazily.
    pub fn services(&self) -> Result<crate::mount::Services, Error> {
        Ok(crate::mount::Services::open(
            self.client.clone(),
            self.store.clone(),
            self.config.clone(),
        )?)
    }
}

impl Ctx {
    fn open(cli: &Cli) -> Result<Ctx, Error> {
        let cfg_path = cli
            .config
            .clone()
            .unwrap_or_else(|| cli.root.join("config.json"));
        let config = Arc::new(Config::load(&cfg_path)?);
        let store = Arc::new(Store::open(&cli.root)?);
        let client = Arc::new(Client::new(
            config.clone(),
            CredentialStore::default_location(),
        )?);
        Ok(Ctx {
            config_path: cli.config.clone(),
            store,
            config,
            client,
        })
    }
}

/// Run a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32, Error> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            context: "starting tokio runtime".into(),
            source,
        })?;
    let ctx = Ctx::open(&cli)?;
    rt.block_on(dispatch(&ctx, cli.command))
}

/// Run one command.
async fn dispatch(ctx: &Ctx, cmd: Command) -> Result<i32, Error> {
    match cmd {
        Command::Pull {
            image,
            platform,
            quiet,
        } => images::pull(ctx, &image, platform.as_deref(), quiet).await,
        Command::Images {
            quiet,
            digests,
            no_trunc,
        } => images::images(ctx, quiet, digests, no_trunc),
        Command::Inspect { images } => images::inspect(ctx, &images),
        Command::History { image, no_trunc } => images::history(ctx, &image, no_trunc),
        Command::Tag { source, target } => {
            let rec = ctx.store.find_image(&source)?;
            let dst: crate::reference::Reference = target.parse()?;
            ctx.store.tag(&dst, &rec.manifest_digest)?;
            Ok(0)
        }
        Command::Rmi { force, images } => images::rmi(ctx, &images, force),
        Command::Push { image, quiet } => {
            let target: crate::reference::Reference = image.parse()?;
            let rec = ctx.store.find_image(&image)?;
            crate::image::push(
                &ctx.client,
                &ctx.store,
                &rec,
                &target,
                &crate::image::Progress::new(quiet),
            )
            .await?;
            Ok(0)
        }
        Command::Save { output, images } => images::save(ctx, output, &images),
        Command::Load { input, quiet } => images::load(ctx, input, quiet),
        Command::Search { term, limit } => images::search(ctx, &term, limit).await,
        Command::Login {
            registry,
            username,
            password,
            password_stdin,
        } => images::login(ctx, registry, username, password, password_stdin).await,
        Command::Logout { registry } => {
            let reg = images::registry_name(registry);
            if ctx.client.credential_store().remove(&reg)? {
                println!("Removing login credentials for {reg}");
            } else {
                println!("Not logged in to {reg}");
            }
            Ok(0)
        }
        Command::System {
            command: SystemCommand::Df,
        } => images::system_df(ctx),
        Command::Index {
            image,
            push,
            platform,
        } => images::index(ctx, &image, push, platform.as_deref()).await,
        Command::Profile { command } => images::profile(ctx, command).await,
        Command::Cache { command } => images::cache(ctx, command).await,
        Command::Mount(args) => mount::mount(ctx, args).await,
        Command::Daemon(args) => daemon::daemon(ctx, args).await,
        Command::Overlay(args) => overlay::overlay(ctx, args).await,
        Command::Run(args) => run::run(ctx, *args).await,
        Command::Ps { all, quiet } => run::ps(ctx, all, quiet).await,
        Command::Start { containers } => run::start(ctx, &containers).await,
        Command::Stop { time, containers } => run::stop(ctx, &containers, time).await,
        Command::Restart { time, containers } => run::restart(ctx, &containers, time).await,
        Command::Kill { signal, containers } => run::kill(ctx, &containers, &signal).await,
        Command::Rm { force, containers } => run::rm(ctx, &containers, force).await,
        Command::Logs { follow, container } => run::logs(ctx, &container, follow).await,
        Command::Exec(args) => run::exec(ctx, args).await,
        Command::Wait { containers } => run::wait(ctx, &containers).await,
        Command::Commit(args) => commit::commit(ctx, args).await,
        Command::Export(args) => commit::export(ctx, args).await,
        Command::Import(args) => commit::import(ctx, args).await,
        Command::Umount { mountpoint, force } => mount::umount(ctx, &mountpoint, force).await,
        Command::Stats { mountpoint, json } => mount::stats(ctx, &mountpoint, json).await,
    }
}
