//! `run` and the container lifecycle: start, stop, restart, kill, rm, logs, attach, pause,
//! exec, wait (`ps` is in `listing`).
//!
//! `run` resolves the image without pulling it, has the root's daemon mount it lazily over a
//! per-container upper (`containers/<id>/upper`) and hands the mount to the launcher; a
//! foreground run unmounts it when the container exits.

use super::util::human_size;
use super::{Ctx, Error};
use crate::launcher::{
    parse_signal, ExecOptions, Launcher, MountPaths, NewContainer, ProcessIo, RunOptions,
    RunOutcome, Status,
};
use crate::mount::is_mounted;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
#[command(trailing_var_arg = true)]
pub struct RunArgs {
    /// Remove the container when it exits
    #[arg(long)]
    pub rm: bool,
    /// Run in the background and print the container id
    #[arg(short, long)]
    pub detach: bool,
    /// Keep stdin open
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a pseudo terminal
    #[arg(short, long)]
    pub tty: bool,
    #[arg(long)]
    pub name: Option<String>,
    /// Overwrite the image's ENTRYPOINT ("" resets it)
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Set environment variables (K=V, or K to take the host's value)
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    #[arg(long)]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// NAME|UID[:GID|:GROUP], resolved through the image's /etc/passwd and /etc/group
    #[arg(short, long)]
    pub user: Option<String>,
    /// Bind mount HOST:CONTAINER[:ro|:rw]
    #[arg(short, long = "volume")]
    pub volume: Vec<String>,
    /// bridge (default: a private network namespace with slirp4netns NAT), host or none
    /// (loopback only)
    #[arg(long, default_value = "bridge")]
    pub network: String,
    /// Publish a container port: [IP:]HOST:CONTAINER[/tcp|/udp] (bridge network)
    #[arg(short, long = "publish")]
    pub publish: Vec<String>,
    /// seccomp=unconfined, seccomp=PROFILE.json (docker's format), no-new-privileges
    #[arg(long = "security-opt")]
    pub security_opt: Vec<String>,
    #[arg(long)]
    pub hostname: Option<String>,
    /// Mount the container's root file system read-only
    #[arg(long)]
    pub read_only: bool,
    /// Mount a tmpfs: PATH[:OPTIONS]
    #[arg(long)]
    pub tmpfs: Vec<String>,
    /// NAME=SOFT[:HARD]
    #[arg(long)]
    pub ulimit: Vec<String>,
    /// OCI runtime binary (default: runc)
    #[arg(long)]
    pub runtime: Option<PathBuf>,
    #[arg(long)]
    pub platform: Option<String>,
    /// When to ask the registry for the image: always, missing (default) or never
    #[arg(long, default_value = "missing")]
    pub pull: String,
    /// Memory limit, e.g. 256m or 1g (memory cgroup)
    #[arg(short, long)]
    pub memory: Option<String>,
    /// Number of CPUs, e.g. 1.5 (CFS quota)
    #[arg(long)]
    pub cpus: Option<String>,
    /// Add a Linux capability (NAME or ALL)
    #[arg(long)]
    pub cap_add: Vec<String>,
    /// Drop a Linux capability (NAME or ALL)
    #[arg(long)]
    pub cap_drop: Vec<String>,
    /// Every capability strata holds, no masked /proc paths, all devices allowed
    #[arg(long)]
    pub privileged: bool,
    /// Print where the time went and how many bytes were fetched
    #[arg(long)]
    pub timing: bool,
    /// Do not prefetch the rest of the image in the background
    #[arg(long)]
    pub no_prefetch: bool,
    /// Root file system as kernel overlayfs over the image's lazy layer views (metadata
    /// writes at kernel speed, kernel overlayfs semantics; docs/overlay.md)
    #[arg(long)]
    pub kernel_overlay: bool,
    /// Image, then the command and its arguments
    #[arg(required = true, num_args = 1..)]
    pub image_and_command: Vec<String>,
}

fn usage<E: std::fmt::Display>(e: E) -> Error {
    Error::Usage(e.to_string())
}

fn parse_all<T: std::str::FromStr>(v: &[String]) -> Result<Vec<T>, Error>
where
    T::Err: std::fmt::Display,
{
    v.iter().map(|s| s.parse().map_err(usage)).collect()
}

impl RunArgs {
    fn options(&self) -> Result<RunOptions, Error> {
        for c in self.cap_add.iter().chain(&self.cap_drop) {
            crate::launcher::caps::parse_cap(c)?;
        }
        let mut opts = RunOptions {
            args: self.image_and_command[1..].to_vec(),
            entrypoint: self.entrypoint.as_ref().map(|e| {
                if e.is_empty() {
                    vec![]
                } else {
                    vec![e.clone()]
                }
            }),
            env: self.env.clone(),
            env_files: self.env_file.clone(),
            workdir: self.workdir.clone(),
            user: self.user.clone(),
            name: self.name.clone(),
            hostname: self.hostname.clone(),
            tty: self.tty,
            interactive: self.interactive,
            detach: self.detach,
            remove: self.rm,
            volumes: parse_all(&self.volume)?,
            network: self.network.parse().map_err(usage)?,
            read_only: self.read_only,
            tmpfs: parse_all(&self.tmpfs)?,
            ulimits: parse_all(&self.ulimit)?,
            runtime: self.runtime.clone(),
            cap_add: self.cap_add.clone(),
            cap_drop: self.cap_drop.clone(),
            privileged: self.privileged,
            memory: self.memory.as_deref().map(parse_memory).transpose()?,
            milli_cpus: self
                .cpus
                .as_deref()
                .map(crate::launcher::caps::parse_cpus)
                .transpose()?,
            publish: parse_all(&self.publish)?,
            ..Default::default()
        };
        for s in &self.security_opt {
            crate::launcher::apply_security_opt(&mut opts, s)?;
        }
        if opts.network == crate::launcher::Network::None && !opts.publish.is_empty() {
            return Err(Error::Usage(
                "-p needs a network: --network none has only a loopback interface".into(),
            ));
        }
        Ok(opts)
    }
}

/// docker's `--memory` units: b, k, m, g (binary), at least 6 MiB as docker requires.
fn parse_memory(s: &str) -> Result<i64, Error> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'b')) => (&t[..i], 1),
        Some((i, 'k')) => (&t[..i], 1 << 10),
        Some((i, 'm')) => (&t[..i], 1 << 20),
        Some((i, 'g')) => (&t[..i], 1 << 30),
        _ => (t.as_str(), 1),
    };
    let n: i64 = num
        .parse()
        .map_err(|_| Error::Usage(format!("invalid --memory {s:?}: expected e.g. 256m")))?;
    let bytes = n.saturating_mul(mult);
    if bytes < 6 << 20 {
        return Err(Error::Usage(format!(
            "invalid --memory {s:?}: the minimum is 6m"
        )));
    }
    Ok(bytes)
}

fn launcher(ctx: &Ctx) -> Launcher {
    Launcher::new(&ctx.store)
}

struct Paths {
    upper: PathBuf,
    work: PathBuf,
    rootfs: PathBuf,
    /// Present when the rootfs is kernel overlayfs over layer views (`--kernel-overlay`).
    kovl: PathBuf,
}

fn paths(launcher: &Launcher, id: &str) -> Paths {
    let dir = launcher.containers().dir(id);
    Paths {
        upper: dir.join("upper"),
        work: dir.join("work"),
        rootfs: dir.join("rootfs"),
        kovl: dir.join("kernel-overlay"),
    }
}

pub async fn run(ctx: &Ctx, args: RunArgs) -> Result<i32, Error> {
    let t0 = Instant::now();
    let opts = args.options()?;
    if opts.detach && opts.remove {
        return Err(Error::Usage(
            "--rm and -d together are not supported yet".into(),
        ));
    }
    let image = &args.image_and_command[0];
    // The daemon (started if none runs) comes up while the image is resolved here, and
    // connects to the image's registry meanwhile (an older daemon may not know how: ignored).
    // Once the manifest is in (a cold image), the daemon starts the layer-index lookup from
    // it while the config is fetched here (`mount/early.rs`).
    let (early_tx, early_rx) = tokio::sync::oneshot::channel::<crate::daemon::Request>();
    let daemon = {
        let (root, config) = (ctx.store.root().to_path_buf(), ctx.config_path.clone());
        // Cold: no image of that name in the store yet (its index alias is worth a request).
        let cold = image
            .parse::<crate::reference::Reference>()
            .ok()
            .and_then(|r| Some(format!("{}:{}", r.name(), r.tag.as_deref()?)))
            .is_some_and(|t| ctx.store.tags().is_ok_and(|tags| !tags.contains_key(&t)));
        let connect = crate::daemon::Request::Connect {
            image: image.clone(),
            cold,
        };
        tokio::spawn(async move {
            let mut c = crate::daemon::Client::connect_or_start(&root, config.as_deref()).await?;
            let _ = c.call(&connect).await;
            if let Ok(lookup) = early_rx.await {
                let _ = c.call(&lookup).await;
            }
            Ok::<_, crate::daemon::Error>(c)
        })
    };
    let policy: crate::image::PullPolicy = args.pull.parse().map_err(Error::Usage)?;
    let early_tx = std::sync::Mutex::new(Some(early_tx));
    let hook = |r: &crate::reference::Reference, rec: &crate::store::ImageRecord| {
        let tx = early_tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(tx) = tx {
            let _ = tx.send(crate::daemon::Request::Lookup {
                image: r.to_string(),
                record: Box::new(rec.clone()),
            });
        }
    };
    let resolved = crate::image::resolve_early(
        &ctx.client,
        &ctx.store,
        image,
        args.platform.as_deref(),
        policy,
        Some(&hook),
    )
    .await;
    // A warm image (or a failed resolve): the daemon task goes on without a lookup.
    drop(early_tx);
    let (reference, rec) = resolved?;
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "run: resolved");
    let pinned = format!("{}@{}", reference.name(), rec.manifest_digest);
    let l = launcher(ctx);
    let c = l.create(NewContainer {
        image: reference.to_string(),
        image_digest: Some(rec.manifest_digest),
        options: opts.clone(),
    })?;
    let p = paths(&l, &c.id);
    std::fs::create_dir_all(&p.rootfs).map_err(|source| Error::Io {
        context: p.rootfs.display().to_string(),
        source,
    })?;
    if args.kernel_overlay {
        std::fs::write(&p.kovl, b"").map_err(|source| Error::Io {
            context: p.kovl.display().to_string(),
            source,
        })?;
    }
    l.containers().set_mount(
        &c.id,
        MountPaths {
            upper: Some(p.upper.clone()),
            work: Some(p.work.clone()),
            mountpoint: Some(p.rootfs.clone()),
        },
    )?;
    let (config, _) = ctx.store.config(&rec)?;
    let prefetch = ctx.config.prefetch && !args.no_prefetch;
    // A bar per whole layer the daemon downloads (images without a lazy index).
    let layers: Vec<_> = rec.layers.iter().map(|l| (l.digest, l.size)).collect();
    let watch = super::progress::LayerDownloads::start_layers(ctx.store.clone(), layers);
    if opts.detach {
        let mounted = ensure_mounted(ctx, &pinned, &rec, &p, prefetch).await;
        if let Some(w) = watch {
            w.finish().await;
        }
        mounted?;
        let outcome = l
            .run(&c.id, &config, &p.rootfs, ProcessIo::inherit(false))
            .await;
        return match outcome {
            Ok(o) => {
                watch_container(ctx, &p, &o).await;
                println!("{}", c.id);
                Ok(0)
            }
            Err(e) => {
                let _ = super::mount::umount(ctx, &p.rootfs, true).await;
                Err(e.into())
            }
        };
    }
    let rootfs = std::fs::canonicalize(&p.rootfs).unwrap_or_else(|_| p.rootfs.clone());
    let warm = warm_list(&config, &opts);
    let mut daemon = daemon.await.map_err(|source| Error::Join {
        what: "starting the strata daemon".into(),
        source,
    })??;
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "run: daemon ready");
    let mounted = if args.kernel_overlay {
        drop(daemon);
        let layers: Vec<_> = rec.layers.iter().map(|l| l.digest).collect();
        let at = (rootfs.as_path(), p.upper.as_path(), p.work.as_path());
        super::kovl::mount_with_daemon(ctx, &pinned, &layers, at, warm)
            .await
            .map(|()| None)
    } else {
        let req = rootfs_request(
            &pinned,
            args.platform.clone(),
            &p,
            rootfs.clone(),
            prefetch,
            warm,
        );
        let r = daemon.call(&crate::daemon::Request::Mount(req)).await;
        r.map(|m| m.record).map_err(Error::from)
    };
    if let Some(w) = watch {
        w.finish().await;
    }
    let mounted = mounted?;
    let t_mount = t0.elapsed();
    tracing::debug!(ms = t_mount.as_millis() as u64, "run: mounted");
    let result = l
        .run(
            &c.id,
            &config,
            &p.rootfs,
            ProcessIo::inherit(opts.interactive),
        )
        .await;
    let t_exit = t0.elapsed();
    tracing::debug!(ms = t_exit.as_millis() as u64, "run: runtime exited");
    // The daemon's cache is shared by all its mounts: count what it fetched meanwhile.
    let before = mounted.map(|r| *r);
    let after = if args.timing {
        super::daemon::stats(ctx, &rootfs).await.ok().flatten()
    } else {
        None
    };
    unmount_rootfs(ctx, &l, &c.id).await;
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "run: unmounted");
    if let (Some(before), Some(after)) = (before, after) {
        // From when the mount was asked for: opening the image fetches too (user database).
        let base = before.cache_at_start.as_ref().unwrap_or(&before.cache);
        let fetched = after.cache.bytes_fetched.saturating_sub(base.bytes_fetched);
        let requests = after.cache.requests.saturating_sub(base.requests);
        let image_bytes = after.image_bytes;
        eprintln!(
            "strata: mounted in {} ms (indexes: {}), runtime started at {} ms, exited at {} ms; fetched {} of {} ({:.1}%) in {} requests",
            t_mount.as_millis(),
            after.index_sources.join(","),
            t_mount.as_millis(),
            t_exit.as_millis(),
            human_size(fetched),
            human_size(image_bytes),
            100.0 * fetched as f64 / image_bytes.max(1) as f64,
            requests,
        );
    }
    if opts.remove {
        if let Err(e) = l.prepare_remove(&c.id, true).await {
            tracing::warn!("removing container {}: {e}", c.id);
        } else if let Err(e) = l.remove(&c.id) {
            tracing::warn!("removing container {}: {e}", c.id);
        }
    }
    tracing::debug!(ms = t0.elapsed().as_millis() as u64, "run: done");
    match result {
        Ok(RunOutcome::Exited(code)) => Ok(code),
        Ok(RunOutcome::Detached { .. }) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// A container's root file system: the image over the container's upper, usable by the
/// container's users (allow_other).
fn rootfs_request(
    image: &str,
    platform: Option<String>,
    p: &Paths,
    mountpoint: PathBuf,
    prefetch: bool,
    warm: crate::mount::warm::WarmList,
) -> crate::daemon::MountRequest {
    crate::daemon::MountRequest {
        image: image.to_string(),
        platform,
        mountpoint,
        upper: Some((p.upper.clone(), p.work.clone())),
        prefetch,
        passthrough: false,
        allow_other: true,
        layer: None,
        warm,
    }
}

/// What the container's start will read first (`mount::warm`), from its image config and
/// options.
fn warm_list(
    config: &crate::oci::ImageConfig,
    opts: &crate::launcher::RunOptions,
) -> crate::mount::warm::WarmList {
    match crate::launcher::bundle::start_command(config, opts) {
        Some((argv, path, cwd)) => crate::mount::warm::for_command(&argv, &path, &cwd),
        None => Vec::new(),
    }
}

/// Make sure a detached container's rootfs is served by the daemon (`image` pinned, `rec`
/// its record).
async fn ensure_mounted(
    ctx: &Ctx,
    image: &str,
    rec: &crate::store::ImageRecord,
    p: &Paths,
    prefetch: bool,
) -> Result<(), Error> {
    let rootfs = std::fs::canonicalize(&p.rootfs).unwrap_or_else(|_| p.rootfs.clone());
    if is_mounted(&rootfs) {
        return Ok(());
    }
    if p.kovl.exists() {
        let layers: Vec<_> = rec.layers.iter().map(|l| l.digest).collect();
        let at = (rootfs.as_path(), p.upper.as_path(), p.work.as_path());
        return super::kovl::mount_with_daemon(ctx, image, &layers, at, Vec::new()).await;
    }
    let req = rootfs_request(image, None, p, rootfs, prefetch, Vec::new());
    super::daemon::mount(ctx, req).await.map(|_| ())
}

/// Have the daemon unmount a detached container's rootfs and release its network when its
/// init exits (best effort: without it the rootfs stays mounted and slirp4netns runs until
/// `rm` or `stop`). A kernel-overlay rootfs is not a daemon mount: the daemon releases only
/// its network, the overlay and its views stay until `stop` or `rm`.
async fn watch_container(ctx: &Ctx, p: &Paths, o: &RunOutcome) {
    let RunOutcome::Detached { pid: Some(pid), .. } = o else {
        return;
    };
    let rootfs = &p.rootfs;
    let mountpoint = std::fs::canonicalize(rootfs).unwrap_or_else(|_| rootfs.to_path_buf());
    let req = crate::daemon::Request::Watch {
        mountpoint,
        pid: *pid,
    };
    let r = match crate::daemon::Client::connect(ctx.store.root()).await {
        Ok(mut c) => c.call(&req).await.map(|_| ()),
        Err(e) => Err(e),
    };
    if let Err(e) = r {
        tracing::warn!(
            "the daemon will not release {} by itself: {e}",
            rootfs.display()
        );
    }
}

pub(super) async fn unmount_rootfs(ctx: &Ctx, l: &Launcher, id: &str) {
    let rootfs = paths(l, id).rootfs;
    if is_mounted(&rootfs) {
        if let Err(e) = super::mount::umount(ctx, &rootfs, false).await {
            tracing::warn!("unmounting {}: {e}; detaching", rootfs.display());
            let _ = super::mount::umount(ctx, &rootfs, true).await;
        }
    }
}

pub async fn start(ctx: &Ctx, queries: &[String]) -> Result<i32, Error> {
    let l = launcher(ctx);
    for q in queries {
        let r = l.containers().lookup(q)?;
        let p = paths(&l, &r.id);
        let img = match r.image_digest {
            Some(d) => ctx.store.find_image(&d.to_string())?,
            None => ctx.store.find_image(&r.image)?,
        };
        let (config, _) = ctx.store.config(&img)?;
        let name = r.image.parse::<crate::reference::Reference>()?.name();
        let pinned = format!("{name}@{}", img.manifest_digest);
        ensure_mounted(ctx, &pinned, &img, &p, ctx.config.prefetch).await?;
        let o = l.start(&r.id, &config, &p.rootfs).await?;
        watch_container(ctx, &p, &o).await;
        println!("{q}");
    }
    Ok(0)
}

pub async fn stop(ctx: &Ctx, queries: &[String], timeout: Option<u64>) -> Result<i32, Error> {
    let l = launcher(ctx);
    for q in queries {
        stop_one(ctx, &l, q, timeout).await?;
        println!("{q}");
    }
    Ok(0)
}

/// Stop a container and unmount its rootfs now (the upper stays). Left to the daemon's
/// watch (up to a second after the init exits), the unmount could hit the rootfs a `start`
/// right after this had found still mounted and reused.
async fn stop_one(ctx: &Ctx, l: &Launcher, q: &str, timeout: Option<u64>) -> Result<(), Error> {
    l.stop(q, timeout.map(std::time::Duration::from_secs))
        .await?;
    let id = l.containers().lookup(q)?.id;
    unmount_rootfs(ctx, l, &id).await;
    Ok(())
}

pub async fn restart(ctx: &Ctx, queries: &[String], timeout: Option<u64>) -> Result<i32, Error> {
    let l = launcher(ctx);
    for q in queries {
        stop_one(ctx, &l, q, timeout).await?;
        start(ctx, std::slice::from_ref(q)).await?;
    }
    Ok(0)
}

pub async fn kill(ctx: &Ctx, queries: &[String], signal: &str) -> Result<i32, Error> {
    let sig = parse_signal(signal)?;
    let l = launcher(ctx);
    for q in queries {
        l.kill(q, sig).await?;
        println!("{q}");
    }
    Ok(0)
}

pub async fn rm(ctx: &Ctx, queries: &[String], force: bool) -> Result<i32, Error> {
    let l = launcher(ctx);
    let mut code = 0;
    for q in queries {
        let r = match l.prepare_remove(q, force).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("Error: {e}");
                code = 1;
                continue;
            }
        };
        unmount_rootfs(ctx, &l, &r.id).await;
        match l.remove(&r.id) {
            Ok(()) => println!("{q}"),
            Err(e) => {
                eprintln!("Error: {e}");
                code = 1;
            }
        }
    }
    Ok(code)
}

pub async fn logs(ctx: &Ctx, query: &str, follow: bool) -> Result<i32, Error> {
    let l = launcher(ctx);
    let r = l.containers().lookup(query)?;
    copy_log(ctx, &l, &r, follow, false).await?;
    Ok(0)
}

/// Copy a detached container's log to stdout: from the start, or (`from_end`) only what it
/// writes from now on; with `follow` until the container is no longer running.
async fn copy_log(
    ctx: &Ctx,
    l: &Launcher,
    r: &crate::launcher::ContainerRecord,
    follow: bool,
    from_end: bool,
) -> Result<(), Error> {
    use std::io::{Read, Seek, Write};
    let _ = ctx;
    let path = l.containers().log_path(&r.id);
    let mut f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(_) if !r.options.detach => {
            return Err(Error::Usage(format!(
                "{}: logs are kept for detached (-d) containers only",
                r.name
            )))
        }
        Err(source) => {
            return Err(Error::Io {
                context: path.display().to_string(),
                source,
            })
        }
    };
    if from_end {
        let _ = f.seek(std::io::SeekFrom::End(0));
    }
    let mut out = std::io::stdout();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = f.read(&mut buf).map_err(|source| Error::Io {
            context: path.display().to_string(),
            source,
        })?;
        if n > 0 {
            write_out(&mut out, &buf[..n]);
            continue;
        }
        let _ = out.flush();
        if !follow {
            return Ok(());
        }
        let now = l.containers().refresh(&r.id, &l.runtime_for(r)).await?;
        if now.status != Status::Running {
            // Drain what was written just before the exit.
            let mut rest = Vec::new();
            let _ = f.read_to_end(&mut rest);
            write_out(&mut out, &rest);
            let _ = out.flush();
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Write to stdout; a reader that went away ends the process as SIGPIPE would.
fn write_out(out: &mut std::io::Stdout, bytes: &[u8]) {
    use std::io::Write;
    if let Err(e) = out.write_all(bytes) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            super::util::end_by_sigpipe();
        }
    }
}

/// `strata attach`: follow a running detached container's output from now until it exits;
/// the container's exit code. Signals are not forwarded and stdin is not attached.
pub async fn attach(ctx: &Ctx, query: &str) -> Result<i32, Error> {
    let l = launcher(ctx);
    let r = l.containers().lookup(query)?;
    let r = l.containers().refresh(&r.id, &l.runtime_for(&r)).await?;
    if r.status != Status::Running {
        return Err(Error::Usage(format!(
            "{query}: you cannot attach to a stopped container, start it first"
        )));
    }
    copy_log(ctx, &l, &r, true, true).await?;
    let code = l.wait(&r.id).await?;
    Ok(code.unwrap_or(0))
}

/// `strata pause` / `unpause`.
pub async fn pause(ctx: &Ctx, queries: &[String], freeze: bool) -> Result<i32, Error> {
    let l = launcher(ctx);
    for q in queries {
        l.pause(q, freeze).await?;
        println!("{q}");
    }
    Ok(0)
}

pub async fn exec(ctx: &Ctx, args: ExecArgs) -> Result<i32, Error> {
    let l = launcher(ctx);
    let r = l.containers().lookup(&args.container)?;
    let user = match &args.user {
        Some(u) => Some(crate::launcher::resolve_user(&paths(&l, &r.id).rootfs, u)?),
        None => None,
    };
    let opts = ExecOptions {
        args: args.command.clone(),
        env: args.env.clone(),
        workdir: args.workdir.clone(),
        user,
        tty: args.tty,
        detach: args.detach,
    };
    Ok(
        l.exec(&args.container, &opts, ProcessIo::inherit(args.interactive))
            .await?,
    )
}

pub async fn wait(ctx: &Ctx, queries: &[String]) -> Result<i32, Error> {
    let l = launcher(ctx);
    for q in queries {
        let code = l.wait(q).await?;
        println!(
            "{}",
            code.map(|c| c.to_string()).unwrap_or_else(|| "?".into())
        );
    }
    Ok(0)
}

#[derive(clap::Args, Debug)]
#[command(trailing_var_arg = true)]
pub struct ExecArgs {
    #[arg(short, long)]
    pub interactive: bool,
    #[arg(short, long)]
    pub tty: bool,
    #[arg(short, long)]
    pub detach: bool,
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    #[arg(short, long)]
    pub workdir: Option<String>,
    #[arg(short, long)]
    pub user: Option<String>,
    pub container: String,
    #[arg(required = true, num_args = 1..)]
    pub command: Vec<String>,
}
