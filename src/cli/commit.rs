//! `commit`, `export`, `import`: images from containers and root file systems from images.
//!
//! Finds the container (record, upper dir, rootfs mountpoint) through `launcher`, then calls
//! `image::commit` for the work; formats output and errors for humans. `export` reads the
//! container's mounted rootfs, mounting it for the duration when no mount serves it.

use super::{Ctx, Error};
use crate::image::commit::{self as lib, CommitOptions};
use crate::image::Progress;
use crate::launcher::{ContainerRecord, Launcher};
use crate::mount::{is_mounted, mount_image, MountSpec};
use crate::reference::Reference;
use crate::store::ImageRecord;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct CommitArgs {
    /// Commit message (history comment)
    #[arg(short, long)]
    pub message: Option<String>,
    /// Author, e.g. "Jane <jane@example.com>"
    #[arg(short, long)]
    pub author: Option<String>,
    /// Apply a Dockerfile instruction to the config: CMD, ENTRYPOINT, ENV, LABEL, WORKDIR,
    /// USER, EXPOSE, VOLUME, STOPSIGNAL
    #[arg(short = 'c', long = "change")]
    pub change: Vec<String>,
    /// Print only the image id
    #[arg(short, long)]
    pub quiet: bool,
    pub container: String,
    /// Name (REPOSITORY[:TAG]) for the new image
    pub reference: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Write to this file (default: stdout, if it is not a terminal)
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    pub container: String,
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// Commit message (history comment)
    #[arg(short, long)]
    pub message: Option<String>,
    /// Apply a Dockerfile instruction to the config (see `commit --help`)
    #[arg(short = 'c', long = "change")]
    pub change: Vec<String>,
    /// Tar file (plain, gzip or zstd), or - for stdin
    pub file: String,
    /// Name (REPOSITORY[:TAG]) for the new image
    pub reference: String,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

fn joined<T>(r: Result<T, tokio::task::JoinError>, what: &str) -> Result<T, Error> {
    r.map_err(|source| Error::Join {
        what: what.to_string(),
        source,
    })
}

/// The image a container was created from.
fn parent_image(ctx: &Ctx, r: &ContainerRecord) -> Result<ImageRecord, Error> {
    let found = match r.image_digest {
        Some(d) => ctx.store.get_image(&d)?,
        None => ctx.store.find_image(&r.image).ok(),
    };
    found.ok_or_else(|| {
        Error::Usage(format!(
            "container {}: its image {} is no longer in the store",
            r.name, r.image
        ))
    })
}

fn tag_parse(reference: &str) -> Result<Reference, Error> {
    let r: Reference = reference.parse()?;
    if r.digest.is_some() {
        return Err(Error::Usage(format!(
            "{reference}: name the new image with a tag, not a digest"
        )));
    }
    Ok(r)
}

pub async fn commit(ctx: &Ctx, args: CommitArgs) -> Result<i32, Error> {
    let target = args.reference.as_deref().map(tag_parse).transpose()?;
    let l = Launcher::new(&ctx.store);
    let r = l.containers().lookup(&args.container)?;
    let parent = parent_image(ctx, &r)?;
    let parent_ref: Reference = r.image.parse()?;
    let upper = r
        .mount
        .upper
        .clone()
        .unwrap_or_else(|| l.containers().dir(&r.id).join("upper"));
    let opts = CommitOptions {
        message: args.message,
        author: args.author,
        changes: args.change,
    };
    // Check the changes before any layer is fetched or written.
    let mut probe = serde_json::Map::new();
    for c in &opts.changes {
        lib::apply_change(&mut probe, c)?;
    }
    // Only the image id goes to stdout.
    let progress = Progress::silent();
    let done = lib::commit(
        &ctx.client,
        &ctx.store,
        &parent,
        &parent_ref,
        &upper,
        &opts,
        &progress,
    )
    .await?;
    if done.fetched_parent_layers > 0 && !args.quiet {
        eprintln!(
            "strata: fetched {} layer(s) of {} that were only mounted lazily, so the new image can be pushed",
            done.fetched_parent_layers, r.image
        );
    }
    if let Some(t) = &target {
        ctx.store.tag(t, &done.record.manifest_digest)?;
    }
    println!("{}", done.record.id());
    Ok(0)
}

pub async fn export(ctx: &Ctx, args: ExportArgs) -> Result<i32, Error> {
    let l = Launcher::new(&ctx.store);
    let r = l.containers().lookup(&args.container)?;
    if args.output.is_none() && std::io::stdout().is_terminal() {
        return Err(Error::Usage(
            "export: refusing to write a tar to the terminal; use -o FILE or redirect stdout"
                .into(),
        ));
    }
    let dir = l.containers().dir(&r.id);
    let rootfs = r
        .mount
        .mountpoint
        .clone()
        .unwrap_or_else(|| dir.join("rootfs"));
    let rootfs = std::fs::canonicalize(&rootfs).unwrap_or(rootfs);
    // A foreground container's mount ends with it; serve the rootfs ourselves meanwhile.
    let temp_mount = if is_mounted(&rootfs) {
        None
    } else {
        Some(mount_for_export(ctx, &r, &dir, &rootfs).await?)
    };
    let out = args.output.clone();
    let root = rootfs.clone();
    let result = tokio::task::spawn_blocking(move || write_export(&root, out.as_deref())).await;
    if let Some(handle) = temp_mount {
        tokio::task::spawn_blocking(move || drop(handle)).await.ok();
    }
    let stats = joined(result, "export")??;
    tracing::debug!(?stats, "exported {}", rootfs.display());
    Ok(0)
}

/// Mount a stopped container's rootfs (image + its upper) in this process.
async fn mount_for_export(
    ctx: &Ctx,
    r: &ContainerRecord,
    dir: &std::path::Path,
    rootfs: &std::path::Path,
) -> Result<crate::fuse::MountHandle, Error> {
    let parent = parent_image(ctx, r)?;
    let name = r.image.parse::<Reference>()?.name();
    let pinned = format!("{name}@{}", parent.manifest_digest);
    let upper = r.mount.upper.clone().unwrap_or_else(|| dir.join("upper"));
    let work = r.mount.work.clone().unwrap_or_else(|| dir.join("work"));
    std::fs::create_dir_all(rootfs).map_err(io_err(rootfs.display().to_string()))?;
    let spec = MountSpec {
        image: &pinned,
        platform: None,
        mountpoint: rootfs,
        upper: Some((upper, work)),
        prefetch: false,
        passthrough: false,
        allow_other: false,
        warm: Vec::new(),
    };
    let served = mount_image(&ctx.services()?, spec, &Progress::silent())
        .await
        .map_err(|e| Error::RootfsMount {
            container: r.name.clone(),
            rootfs: rootfs.to_path_buf(),
            source: Box::new(e),
        })?;
    Ok(served.handle)
}

fn write_export(
    rootfs: &std::path::Path,
    out: Option<&std::path::Path>,
) -> Result<lib::WalkStats, Error> {
    let Some(path) = out else {
        let stdout = std::io::stdout().lock();
        return Ok(lib::export(rootfs, std::io::BufWriter::new(stdout))?);
    };
    let f = std::fs::File::create(path).map_err(io_err(path.display().to_string()))?;
    let w = std::io::BufWriter::with_capacity(1 << 20, f);
    match lib::export(rootfs, w) {
        Ok(s) => Ok(s),
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(e.into())
        }
    }
}

pub async fn import(ctx: &Ctx, args: ImportArgs) -> Result<i32, Error> {
    let target = tag_parse(&args.reference)?;
    let opts = CommitOptions {
        message: args.message,
        author: None,
        changes: args.change,
    };
    let mut probe = serde_json::Map::new();
    for c in &opts.changes {
        lib::apply_change(&mut probe, c)?;
    }
    let store = ctx.store.clone();
    let file = args.file.clone();
    let rec = tokio::task::spawn_blocking(move || -> Result<ImageRecord, Error> {
        if file == "-" {
            let mut stdin = std::io::stdin().lock();
            return Ok(lib::import(&store, &mut stdin, "stdin", &opts)?);
        }
        let f = std::fs::File::open(&file).map_err(io_err(file.clone()))?;
        let mut r = std::io::BufReader::with_capacity(1 << 20, f);
        Ok(lib::import(&store, &mut r, &file, &opts)?)
    })
    .await;
    let rec = joined(rec, "import")??;
    ctx.store.tag(&target, &rec.manifest_digest)?;
    println!("{}", rec.id());
    Ok(0)
}
