//! Command line: argument parsing (clap), dispatch and human output; no mount or image logic
//! of its own. Calls `image`, `mount`, `launcher`, `store`, `registry`, `cache` (stats, prune)
//! and `config`. Every command returns `Result<i32, Error>`; `main.rs` prints the error and
//! exits.

pub mod aliases;
mod commit;
mod daemon;
mod format;
mod images;
mod kovl;
mod listing;
pub mod mount;
mod overlay;
mod progress;
mod run;
mod system;
mod util;

pub use util::end_by_sigpipe;

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
    /// Any failure of `run` before or around the container (docker's exit status 125).
    #[error(transparent)]
    InRun(Box<Error>),
}

#[derive(Parser, Debug)]
#[command(
    name = "strata",
    version,
    about = "Run containers from OCI/Docker images without pulling them first",
    after_help = "docker's management forms work too: `image ls|rm|pull|push|tag|inspect|history|save|load|import|prune` and `container ls|rm|kill|stop|start|restart|logs|inspect|run|exec|wait|attach|pause|unpause|commit|export|prune`."
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
        /// Accepted for docker compatibility: strata keeps no intermediate images
        #[arg(short, long)]
        all: bool,
        #[arg(short, long)]
        quiet: bool,
        #[arg(long)]
        digests: bool,
        #[arg(long)]
        no_trunc: bool,
        #[command(flatten)]
        list: listing::ListArgs,
    },
    /// Show images' or containers' records as JSON (or through --format)
    Inspect {
        /// image or container (default: images first, then containers)
        #[arg(long = "type")]
        kind: Option<String>,
        /// Go-template style, e.g. "{{.Config.Env}}" or "{{json .State}}"
        #[arg(short, long)]
        format: Option<String>,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Show an image's history
    History {
        image: String,
        #[arg(long)]
        no_trunc: bool,
        #[arg(long)]
        format: Option<String>,
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
    /// Search Docker Hub (its search API) or a registry's catalog: [REGISTRY/]TERM
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
        /// With --push: also publish an image index binding the image to its sidecar, so
        /// the digest of that index covers the sidecar (a tag named is moved to it)
        #[arg(long, requires = "push")]
        bind: bool,
        /// With --push: sign the sidecar artifact the cosign way (`sha256-<hex>.sig` tag) with
        /// this P-256 private key (PEM, "PRIVATE KEY" or "EC PRIVATE KEY"), for readers whose
        /// config says `index-trust: signed`
        #[arg(long, requires = "push", value_name = "KEY.pem")]
        sign: Option<std::path::PathBuf>,
        /// Uncompressed bytes between the index's access points (e.g. 128KiB, 2MiB; 64KiB to
        /// 64MiB; default 256KiB): smaller makes a cold small read fetch less, larger makes
        /// the sidecar smaller (one ~13 KiB window per point). TOC layers keep their chunks.
        #[arg(long, value_name = "SIZE", value_parser = parse_span_size)]
        span_size: Option<u64>,
        #[arg(long)]
        platform: Option<String>,
    },
    /// Convert an image to eStargz (stored as DST; `strata push DST` publishes it), with the
    /// files of an access profile first in each layer, before a `.prefetch.landmark`
    Convert {
        /// Write eStargz layers (the only target format)
        #[arg(long, required = true)]
        estargz: bool,
        /// Profile file (`strata profile show` output: LAYER<TAB>/PATH per line); default:
        /// the profile recorded here for SRC, if any
        #[arg(long)]
        profile: Option<std::path::PathBuf>,
        src: String,
        dst: String,
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
    /// podman additional layer store (containers/storage `additionallayerstores`), served by
    /// the daemon
    Store {
        #[command(subcommand)]
        command: daemon::StoreCommand,
    },
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
        #[arg(long)]
        no_trunc: bool,
        #[command(flatten)]
        list: listing::ListArgs,
    },
    /// Freeze every process of running containers (runc pause, cgroup freezer)
    Pause {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Thaw paused containers
    Unpause {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Follow a detached container's output until it exits; its exit code (stdin is not
    /// attached)
    Attach { container: String },
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
    /// System information and cleanup
    System {
        #[command(subcommand)]
        command: SystemCommand,
    },
    /// Image management (`image prune`; the other `image` verbs alias top-level commands)
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Container management (`container prune`; the other verbs alias top-level commands)
    Container {
        #[command(subcommand)]
        command: ContainerCommand,
    },
    /// Version of strata and of the OCI runtime
    Version,
    /// Root, containers, images, cache size and use, mirrors, daemon state
    Info,
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Remove untagged images no container uses (-a: every image no container uses)
    Prune(system::PruneArgs),
}

#[derive(Subcommand, Debug)]
pub enum ContainerCommand {
    /// Remove all stopped containers
    Prune {
        #[arg(short, long)]
        force: bool,
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
    /// Remove stopped containers, dangling (-a: unused) images, unreferenced blobs, the
    /// chunk cache
    Prune(system::PruneArgs),
    /// Same as `strata info`
    Info,
}

impl Error {
    /// Exit status for this failure, as docker's: 127 for a command not found in the
    /// container, 126 for one that is not executable, 125 for any other failure of `run`
    /// (registry, image, options, runtime), else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Launcher(e) if e.exit_code() != 125 => e.exit_code(),
            Error::InRun(e) => match e.exit_code() {
                1 => 125,
                c => c,
            },
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
    let in_run = matches!(cli.command, Command::Run(_));
    let result = Ctx::open(&cli).and_then(|ctx| rt.block_on(dispatch(&ctx, cli.command)));
    match result {
        Err(e) if in_run => Err(Error::InRun(Box::new(e))),
        r => r,
    }
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
            all: _,
            quiet,
            digests,
            no_trunc,
            list,
        } => listing::images(ctx, quiet, digests, no_trunc, &list),
        Command::Inspect {
            kind,
            format,
            names,
        } => listing::inspect(ctx, &names, kind.as_deref(), format.as_deref()).await,
        Command::History {
            image,
            no_trunc,
            format,
        } => listing::history(ctx, &image, no_trunc, format.as_deref()),
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
        Command::System { command } => match command {
            SystemCommand::Df => system::system_df(ctx),
            SystemCommand::Prune(args) => system::system_prune(ctx, &args).await,
            SystemCommand::Info => system::info(ctx).await,
        },
        Command::Image {
            command: ImageCommand::Prune(args),
        } => system::image_prune(ctx, &args),
        Command::Container {
            command: ContainerCommand::Prune { force },
        } => system::container_prune(ctx, force).await,
        Command::Version => system::version(),
        Command::Info => system::info(ctx).await,
        Command::Index {
            image,
            push,
            bind,
            sign,
            span_size,
            platform,
        } => {
            images::index(
                ctx,
                &image,
                push,
                bind,
                sign.as_deref(),
                span_size,
                platform.as_deref(),
            )
            .await
        }
        Command::Convert {
            estargz: _,
            profile,
            src,
            dst,
            platform,
        } => images::convert(ctx, &src, &dst, profile.as_deref(), platform.as_deref()).await,
        Command::Profile { command } => images::profile(ctx, command).await,
        Command::Cache { command } => images::cache(ctx, command).await,
        Command::Mount(args) => mount::mount(ctx, args).await,
        Command::Store { command } => daemon::store(ctx, command).await,
        Command::Daemon(args) => daemon::daemon(ctx, args).await,
        Command::Overlay(args) => overlay::overlay(ctx, args).await,
        Command::Run(args) => run::run(ctx, *args).await,
        Command::Ps {
            all,
            quiet,
            no_trunc,
            list,
        } => listing::ps(ctx, all, quiet, no_trunc, &list).await,
        Command::Pause { containers } => run::pause(ctx, &containers, true).await,
        Command::Unpause { containers } => run::pause(ctx, &containers, false).await,
        Command::Attach { container } => run::attach(ctx, &container).await,
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

/// `--span-size`: a size ("512KiB", "2MiB", bytes); its range is checked by the index build.
fn parse_span_size(s: &str) -> Result<u64, String> {
    crate::config::parse_size(s).ok_or_else(|| format!("{s:?} is not a size (e.g. 512KiB, 2MiB)"))
}
