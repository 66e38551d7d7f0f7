//! System-wide commands: version, info, system df, and the prunes (`container prune`,
//! `image prune`, `system prune`). Calls `store` (images, blob gc), `launcher` (container
//! records), `cache` (through `Ctx::services`), `daemon` (is one running) and `config`.

use super::util::{human_size, print_table};
use super::{Ctx, Error};
use crate::launcher::{Launcher, Status};
use std::io::{BufRead, Write};

/// Blobs no image names are deleted only once this old: a pull or commit in progress writes
/// its blobs before its record.
const BLOB_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

#[derive(clap::Args, Debug)]
pub struct PruneArgs {
    /// Images: every image no container uses, not only untagged ones
    #[arg(short, long)]
    pub all: bool,
    /// Do not ask for confirmation
    #[arg(short, long)]
    pub force: bool,
}

/// `strata version`.
pub fn version() -> Result<i32, Error> {
    let rows = [
        ("Version", env!("CARGO_PKG_VERSION").to_string()),
        ("OS/Arch", crate::oci::Platform::host().to_string()),
        ("Runtime", runtime_version()),
    ];
    println!("Client: strata");
    for (k, v) in rows {
        println!(" {:<12}{v}", format!("{k}:"));
    }
    Ok(0)
}

fn runtime_version() -> String {
    std::process::Command::new(crate::launcher::options::DEFAULT_RUNTIME)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "runc not found".into())
}

/// `strata info`: root, images, containers, cache size and use, mirrors, daemon state.
pub async fn info(ctx: &Ctx) -> Result<i32, Error> {
    let root = ctx.store.root();
    let l = Launcher::new(&ctx.store);
    let mut counts = [0usize; 3];
    for r in l.containers().list(true)? {
        let r = l
            .containers()
            .refresh(&r.id, &l.runtime_for(&r))
            .await
            .unwrap_or(r);
        counts[match r.status {
            Status::Running => 0,
            Status::Exited => 1,
            Status::Created => 2,
        }] += 1;
    }
    let daemon = match crate::daemon::Client::connect(root).await {
        Ok(mut c) => match c.call(&crate::daemon::Request::Ping).await {
            Ok(r) => format!("running (pid {})", r.pid),
            Err(e) => format!("not answering: {e}"),
        },
        Err(_) => "not running (started on demand)".into(),
    };
    let cache = ctx.store.du("cache");
    println!("Root Dir: {}", root.display());
    println!(
        "Containers: {}\n Running: {}\n Stopped: {}\n Created: {}",
        counts.iter().sum::<usize>(),
        counts[0],
        counts[1],
        counts[2]
    );
    println!("Images: {}", ctx.store.images()?.len());
    println!(
        "Chunk Cache: {} used of {} ({:.0}%)",
        human_size(cache),
        human_size(ctx.config.cache_size),
        100.0 * cache as f64 / ctx.config.cache_size.max(1) as f64
    );
    println!("Daemon: {daemon}");
    println!("Runtime: {}", runtime_version());
    println!("OS/Arch: {}", crate::oci::Platform::host());
    println!("Registry Mirrors:");
    for m in &ctx.config.registry_mirrors {
        println!(" docker.io: {m}");
    }
    for (host, ms) in &ctx.config.registry_mirrors_by_host {
        for m in ms {
            println!(" {host}: {m}");
        }
    }
    println!("Insecure Registries:");
    for r in &ctx.config.insecure_registries {
        println!(" {r}");
    }
    println!("Hosts Dir: {}", ctx.config.hosts_dir.display());
    Ok(0)
}

pub(super) fn system_df(ctx: &Ctx) -> Result<i32, Error> {
    let images = ctx.store.images()?;
    let blobs = ctx.store.du("blobs");
    let rows = vec![
        vec![
            "Images".into(),
            images.len().to_string(),
            "0".into(),
            human_size(blobs),
            format!("{} (100%)", human_size(blobs)),
        ],
        vec![
            "Containers".into(),
            count_dir(&ctx.store.root().join("containers")).to_string(),
            "0".into(),
            human_size(ctx.store.du("containers")),
            human_size(0),
        ],
        vec![
            "Layer indexes".into(),
            count_dir(&ctx.store.root().join("indexes")).to_string(),
            "0".into(),
            human_size(ctx.store.du("indexes")),
            human_size(0),
        ],
        vec![
            "Chunk cache".into(),
            "-".into(),
            "-".into(),
            human_size(ctx.store.du("cache")),
            format!("{} (100%)", human_size(ctx.store.du("cache"))),
        ],
    ];
    print_table(&["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], &rows);
    Ok(0)
}

fn count_dir(p: &std::path::Path) -> usize {
    std::fs::read_dir(p).map(|r| r.count()).unwrap_or(0)
}

/// docker's prompt: true when `force`, else the answer read from stdin is y/yes.
fn confirm(force: bool, what: &str) -> Result<bool, Error> {
    if force {
        return Ok(true);
    }
    eprint!("WARNING! This will remove:\n{what}\nAre you sure you want to continue? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|source| Error::Io {
            context: "reading the answer".into(),
            source,
        })?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "Yes"))
}

/// Remove every container that is not running; returns bytes freed.
async fn prune_containers(ctx: &Ctx) -> Result<u64, Error> {
    let l = Launcher::new(&ctx.store);
    let mut freed = 0;
    println!("Deleted Containers:");
    for r in l.containers().list(true)? {
        let r = l.containers().refresh(&r.id, &l.runtime_for(&r)).await?;
        if r.status == Status::Running {
            continue;
        }
        let size = du(&l.containers().dir(&r.id));
        let r = l.prepare_remove(&r.id, false).await?;
        super::run::unmount_rootfs(ctx, &l, &r.id).await;
        match l.remove(&r.id) {
            Ok(()) => {
                println!("{}", r.id);
                freed += size;
            }
            Err(e) => eprintln!("Error: {e}"),
        }
    }
    Ok(freed)
}

fn du(p: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Remove untagged images (`all`: every image) no container refers to; returns bytes freed.
fn prune_images(ctx: &Ctx, all: bool) -> Result<u64, Error> {
    let l = Launcher::new(&ctx.store);
    let used: std::collections::BTreeSet<_> = l
        .containers()
        .list(true)?
        .into_iter()
        .filter_map(|r| r.image_digest)
        .collect();
    let mut freed = 0u64;
    println!("Deleted Images:");
    for rec in ctx.store.images()? {
        if used.contains(&rec.manifest_digest) {
            continue;
        }
        let tags = ctx.store.tags_of(&rec.manifest_digest)?;
        if !tags.is_empty() && !all {
            continue;
        }
        for t in &tags {
            ctx.store.untag(t)?;
            let (n, tag) = super::listing::split_name_tag(t);
            println!("untagged: {n}:{tag}");
        }
        let before = ctx.store.du("blobs");
        for d in ctx.store.delete_image(&rec.manifest_digest)? {
            println!("deleted: {d}");
        }
        freed += before.saturating_sub(ctx.store.du("blobs"));
    }
    Ok(freed)
}

/// `container prune [-f]`.
pub async fn container_prune(ctx: &Ctx, force: bool) -> Result<i32, Error> {
    if !confirm(force, "  - all stopped containers")? {
        return Ok(0);
    }
    let freed = prune_containers(ctx).await?;
    println!("\nTotal reclaimed space: {}", human_size(freed));
    Ok(0)
}

/// `image prune [-a] [-f]`.
pub fn image_prune(ctx: &Ctx, args: &PruneArgs) -> Result<i32, Error> {
    let what = if args.all {
        "  - all images without at least one container associated to them"
    } else {
        "  - all dangling images"
    };
    if !confirm(args.force, what)? {
        return Ok(0);
    }
    let freed = prune_images(ctx, args.all)?;
    println!("\nTotal reclaimed space: {}", human_size(freed));
    Ok(0)
}

/// `system prune [-a] [-f]`: stopped containers, dangling (or all unused) images, blobs no
/// image names, and the chunk cache.
pub async fn system_prune(ctx: &Ctx, args: &PruneArgs) -> Result<i32, Error> {
    let images = if args.all {
        "  - all images without at least one container associated to them"
    } else {
        "  - all dangling images"
    };
    let what = format!(
        "  - all stopped containers\n{images}\n  - all blobs no image refers to\n  - the chunk cache"
    );
    if !confirm(args.force, &what)? {
        return Ok(0);
    }
    let mut freed = prune_containers(ctx).await?;
    freed += prune_images(ctx, args.all)?;
    let (n, bytes) = ctx.store.gc_blobs(BLOB_GRACE)?;
    if n > 0 {
        println!("Deleted {n} unreferenced blob(s)");
    }
    freed += bytes;
    freed += ctx.services()?.cache.prune(0);
    println!("\nTotal reclaimed space: {}", human_size(freed));
    Ok(0)
}
