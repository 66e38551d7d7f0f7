//! Image commands: pull, rmi, save, load, search, login, index, profile, cache (listings
//! are in `listing`, prunes in `system`).

use super::listing::split_name_tag;
use super::util::{human_size, print_table};
use super::{CacheCommand, Ctx, Error};
use crate::image::{self, Progress};
use crate::oci::Platform;
use crate::reference::Reference;
use crate::registry::auth::{Credentials, Secret, Stored};
use crate::store::ImageRecord;
use std::io::{BufRead, IsTerminal, Write};

pub(super) fn registry_name(r: Option<String>) -> String {
    match r {
        None => crate::reference::DEFAULT_REGISTRY.to_string(),
        Some(r) => {
            let r = r
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            let host = r.split('/').next().unwrap_or(r);
            match host {
                "index.docker.io" | "registry-1.docker.io" => {
                    crate::reference::DEFAULT_REGISTRY.to_string()
                }
                h => h.to_string(),
            }
        }
    }
}

/// An image's record: local if known, else resolved in the registry (see `image::resolve`).
async fn resolve_record(
    ctx: &Ctx,
    image: &str,
    platform: Option<&str>,
) -> Result<(Reference, ImageRecord), Error> {
    Ok(image::resolve(&ctx.client, &ctx.store, image, platform).await?)
}

pub(super) async fn index(
    ctx: &Ctx,
    image: &str,
    push: bool,
    bind: bool,
    sign: Option<&std::path::Path>,
    span: Option<u64>,
    platform: Option<&str>,
) -> Result<i32, Error> {
    // The key is read before anything is built or pushed: a bad one fails at once.
    let key = match sign {
        Some(p) => {
            Some(
                crate::cosign::load_signing_key(p).map_err(|msg| image::Error::Invalid {
                    what: "--sign".into(),
                    msg,
                })?,
            )
        }
        None => None,
    };
    let (reference, mut rec) = resolve_record(ctx, image, platform).await?;
    let progress = Progress::new(false);
    match image::index::index_image(
        &ctx.client,
        &ctx.store,
        &reference,
        &mut rec,
        push.then_some(image::index::Push {
            bind,
            sign: key.as_ref(),
        }),
        span,
        &progress,
    )
    .await?
    {
        Some(p) => {
            println!("{}", p.artifact);
            if let Some(b) = p.bound {
                println!("{}@{b}", reference.name());
            }
        }
        None => println!(
            "indexed {} layer(s); use --push to publish them",
            rec.layers.len()
        ),
    }
    Ok(0)
}

/// `strata convert --estargz [--profile FILE] SRC DST`.
pub(super) async fn convert(
    ctx: &Ctx,
    src: &str,
    dst: &str,
    profile: Option<&std::path::Path>,
    platform: Option<&str>,
) -> Result<i32, Error> {
    let dst_ref: Reference = dst.parse()?;
    let (reference, rec) = resolve_record(ctx, src, platform).await?;
    let profile = match profile {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| image::Error::Io {
                path: p.display().to_string(),
                source: e,
            })?;
            image::convert::parse_profile(&text)?
        }
        None => image::profile::local(&ctx.store, &rec.manifest_digest).unwrap_or_default(),
    };
    let progress = Progress::new(false);
    let (new, moved) = image::convert::convert_estargz(
        &ctx.client,
        &ctx.store,
        &rec,
        &reference,
        &profile,
        &progress,
    )
    .await?;
    ctx.store.tag(&dst_ref, &new.manifest_digest)?;
    eprintln!(
        "{} eStargz layer(s), prioritised files per layer: {moved:?}",
        new.layers.len()
    );
    println!("{}", new.manifest_digest);
    Ok(0)
}

pub(super) async fn profile(ctx: &Ctx, cmd: super::ProfileCommand) -> Result<i32, Error> {
    match cmd {
        super::ProfileCommand::Show { image, platform } => {
            let (_, rec) = resolve_record(ctx, &image, platform.as_deref()).await?;
            let Some(p) = image::profile::local(&ctx.store, &rec.manifest_digest) else {
                eprintln!("no access profile recorded for {image}");
                return Ok(1);
            };
            for (layer, path) in p {
                println!("{layer}\t/{path}");
            }
        }
        super::ProfileCommand::Push { image, platform } => {
            let (reference, rec) = resolve_record(ctx, &image, platform.as_deref()).await?;
            let d = image::profile::push(&ctx.client, &ctx.store, &reference, &rec).await?;
            println!("{d}");
        }
    }
    Ok(0)
}

/// `strata cache fetch IMAGE`: every layer into the chunk cache, all layers at once.
async fn cache_fetch(
    svc: &crate::mount::Services,
    image: &str,
    platform: Option<&str>,
) -> Result<i32, Error> {
    let progress = Progress::new(false);
    // Images without a lazy index: their whole layers are downloaded while opening.
    let watch = super::progress::LayerDownloads::start_image(svc.store.clone(), image.into());
    let lazy = crate::mount::open_image(svc, image, platform, &progress, Default::default()).await;
    if let Some(w) = watch {
        w.finish().await;
    }
    let lazy = lazy?;
    let cache = &svc.cache;
    let started = std::time::Instant::now();
    let stats = cache.stats.clone();
    let bar = super::progress::CacheFetch::start(
        lazy.record.layers.iter().map(|l| l.size).sum(),
        move || stats.snapshot().bytes_fetched,
        lazy.record.manifest_digest.short(),
    );
    let fetches = lazy.layers.iter().map(|l| cache.fetch_layer(l));
    let mut spans = 0;
    let mut failed = None;
    let results = futures::future::join_all(fetches).await;
    if let Some(b) = bar {
        b.finish().await;
    }
    for r in results {
        match r {
            Ok(n) => spans += n,
            Err(e) => {
                if crate::mount::whole_layer_failed(&svc.store, &lazy.reference, &e) {
                    eprintln!("strata: {}", e.report());
                }
                failed.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failed {
        return Err(e.into());
    }
    cache.flush().await;
    let took = started.elapsed().as_secs_f64();
    let s = cache.stats.snapshot();
    println!(
        "fetched {spans} spans of {} layer(s): {} compressed in {took:.2} s ({:.0} MB/s), verified and cached",
        lazy.layers.len(),
        human_size(s.bytes_fetched),
        s.bytes_fetched as f64 / took.max(1e-9) / 1e6
    );
    Ok(0)
}

pub(super) async fn cache(ctx: &Ctx, cmd: CacheCommand) -> Result<i32, Error> {
    let svc = ctx.services()?;
    let cache = &svc.cache;
    match cmd {
        CacheCommand::Fetch { image, platform } => {
            return cache_fetch(&svc, &image, platform.as_deref()).await;
        }
        CacheCommand::Ls => {
            let mut per_layer: std::collections::BTreeMap<String, (u64, usize)> =
                Default::default();
            let dir = ctx.store.root().join("cache");
            for l in std::fs::read_dir(&dir)
                .map_err(|source| Error::Io {
                    context: dir.display().to_string(),
                    source,
                })?
                .flatten()
            {
                let name = l.file_name().to_string_lossy().into_owned();
                for f in std::fs::read_dir(l.path()).into_iter().flatten().flatten() {
                    let e = per_layer.entry(name.clone()).or_default();
                    e.0 += f.metadata().map(|m| m.len()).unwrap_or(0);
                    e.1 += 1;
                }
            }
            let rows: Vec<Vec<String>> = per_layer
                .into_iter()
                .map(|(l, (b, n))| {
                    vec![
                        format!("sha256:{}", &l[..12.min(l.len())]),
                        n.to_string(),
                        human_size(b),
                    ]
                })
                .collect();
            print_table(&["LAYER", "SPANS", "SIZE"], &rows);
            let (bytes, n) = cache.disk_usage();
            println!(
                "total: {} in {n} spans (cap {})",
                human_size(bytes),
                human_size(ctx.config.cache_size)
            );
        }
        CacheCommand::Prune { keep } => {
            let keep = match keep {
                Some(k) => crate::config::parse_size(&k)
                    .ok_or_else(|| Error::Usage(format!("--keep {k:?} is not a size")))?,
                None => 0,
            };
            let freed = cache.prune(keep);
            println!("Total reclaimed space: {}", human_size(freed));
        }
    }
    Ok(0)
}

pub(super) async fn pull(
    ctx: &Ctx,
    image: &str,
    platform: Option<&str>,
    quiet: bool,
) -> Result<i32, Error> {
    let _: Reference = image.parse()?;
    let platform = match platform {
        Some(p) => p.parse::<Platform>().map_err(Error::Usage)?,
        None => Platform::host(),
    };
    // A short name may mean several registries (registries.conf): the first that has it.
    let candidates = ctx.client.candidates(image)?;
    let progress = Progress::new(quiet);
    let (reference, _) = image::pull_first(
        ctx.client.clone(),
        ctx.store.clone(),
        &candidates,
        &platform,
        &progress,
    )
    .await?;
    println!("{reference}");
    Ok(0)
}

pub(super) fn rmi(ctx: &Ctx, queries: &[String], force: bool) -> Result<i32, Error> {
    let mut code = 0;
    for q in queries {
        let rec = match ctx.store.find_image(q) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("Error: {e}");
                code = 1;
                continue;
            }
        };
        let tags = ctx.store.tags_of(&rec.manifest_digest)?;
        // By name: remove that tag; the image goes only when no tag is left.
        let by_tag = q.parse::<Reference>().ok().and_then(|r| {
            let t = r.tag.clone()?;
            let key = format!("{}:{t}", r.name());
            tags.contains(&key).then_some(key)
        });
        let untag: Vec<String> = match by_tag {
            Some(t) if tags.len() > 1 => vec![t],
            Some(t) => vec![t],
            None if tags.len() > 1 && !force => {
                eprintln!(
                    "Error: conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
                    rec.id().short()
                );
                code = 1;
                continue;
            }
            None => tags.clone(),
        };
        for t in &untag {
            ctx.store.untag(t)?;
            let (n, tag) = split_name_tag(t);
            println!("Untagged: {n}:{tag}");
        }
        if ctx.store.tags_of(&rec.manifest_digest)?.is_empty() {
            ctx.store.delete_image(&rec.manifest_digest)?;
            println!("Deleted: {}", rec.id());
        }
    }
    Ok(code)
}

pub(super) fn save(
    ctx: &Ctx,
    output: Option<std::path::PathBuf>,
    queries: &[String],
) -> Result<i32, Error> {
    let Some(out) = output else {
        return Err(Error::Usage(
            "save: -o FILE is required (refusing to write a tar to the terminal)".into(),
        ));
    };
    let mut list = Vec::new();
    for q in queries {
        let rec = ctx.store.find_image(q)?;
        let tags = match q.parse::<Reference>() {
            Ok(r)
                if r.digest.is_none()
                    && ctx
                        .store
                        .tags_of(&rec.manifest_digest)?
                        .contains(&r.to_string()) =>
            {
                vec![r.to_string()]
            }
            _ => ctx.store.tags_of(&rec.manifest_digest)?,
        };
        list.push((rec, tags));
    }
    image::save(&ctx.store, &list, &out)?;
    Ok(0)
}

pub(super) fn load(
    ctx: &Ctx,
    input: Option<std::path::PathBuf>,
    quiet: bool,
) -> Result<i32, Error> {
    let loaded = match &input {
        Some(p) => {
            let f = std::fs::File::open(p).map_err(|source| Error::Io {
                context: p.display().to_string(),
                source,
            })?;
            let mut r = std::io::BufReader::new(f);
            image::load(&ctx.store, &mut r, &p.display().to_string())?
        }
        None => image::load(&ctx.store, &mut std::io::stdin().lock(), "stdin")?,
    };
    if !quiet {
        for (rec, tags) in loaded {
            if tags.is_empty() {
                println!("Loaded image ID: {}", rec.id());
            }
            for t in tags {
                let (n, tag) = split_name_tag(&t);
                println!("Loaded image: {n}:{tag}");
            }
        }
    }
    Ok(0)
}

pub(super) async fn search(ctx: &Ctx, term: &str, limit: usize) -> Result<i32, Error> {
    let (registry, needle) = match term.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (
            crate::reference::DEFAULT_REGISTRY.to_string(),
            term.to_string(),
        ),
    };
    let rows: Vec<Vec<String>> = if crate::registry::search::is_docker_hub(&registry) {
        // Docker Hub has no _catalog: its search API answers.
        ctx.client
            .hub_search(&needle, limit)
            .await?
            .into_iter()
            .map(|r| {
                vec![
                    r.name,
                    r.description.replace(['\n', '\t'], " "),
                    r.star_count.to_string(),
                    if r.is_official { "[OK]" } else { "" }.to_string(),
                ]
            })
            .collect()
    } else {
        ctx.client
            .catalog(&registry)
            .await?
            .into_iter()
            .filter(|r| r.contains(&needle))
            .take(limit)
            .map(|r| {
                vec![
                    format!("{registry}/{r}"),
                    String::new(),
                    "0".into(),
                    String::new(),
                ]
            })
            .collect()
    };
    print_table(&["NAME", "DESCRIPTION", "STARS", "OFFICIAL"], &rows);
    Ok(0)
}

pub(super) async fn login(
    ctx: &Ctx,
    registry: Option<String>,
    username: Option<String>,
    password: Option<String>,
    password_stdin: bool,
) -> Result<i32, Error> {
    let reg = registry_name(registry);
    let io = |source| Error::Io {
        context: "reading credentials".into(),
        source,
    };
    let username = match username {
        Some(u) => u,
        None => {
            if !std::io::stdin().is_terminal() || password_stdin {
                return Err(Error::Usage(
                    "login: --username is required when stdin is not a terminal".into(),
                ));
            }
            print!("Username: ");
            std::io::stdout().flush().map_err(io)?;
            let mut u = String::new();
            std::io::stdin().lock().read_line(&mut u).map_err(io)?;
            u.trim().to_string()
        }
    };
    let password = match (password, password_stdin) {
        (Some(_), true) => {
            return Err(Error::Usage(
                "login: --password and --password-stdin are mutually exclusive".into(),
            ))
        }
        (Some(p), false) => {
            eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
            p
        }
        (None, true) => {
            let mut p = String::new();
            std::io::stdin().lock().read_line(&mut p).map_err(io)?;
            p.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) => {
            if !std::io::stdin().is_terminal() {
                return Err(Error::Usage(
                    "login: use --password-stdin when stdin is not a terminal".into(),
                ));
            }
            eprint!("Password: ");
            read_password().map_err(io)?
        }
    };
    if username.is_empty() || password.is_empty() {
        return Err(Error::Usage(
            "login: username and password must not be empty".into(),
        ));
    }
    let creds = Credentials::basic(username, Secret::new(password));
    // What the registry accepted: the password, or an identity token its token service gave.
    let keep = ctx.client.verify_login(&reg, creds).await?;
    let store = ctx.client.credential_store();
    if let Stored::File(path) = store.set(&reg, &keep)? {
        if keep.identity_token.is_none() {
            eprintln!(
                "WARNING! Your password is stored unencrypted in {}. Configure a credential \
                 helper (\"credsStore\" or \"credHelpers\" there) to avoid this.",
                path.display()
            );
        }
    }
    println!("Login Succeeded");
    Ok(0)
}

/// Read a line from the terminal with echo off.
fn read_password() -> std::io::Result<String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    let old = tcgetattr(&stdin).map_err(std::io::Error::from)?;
    let mut new = old.clone();
    new.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(&stdin, SetArg::TCSANOW, &new).map_err(std::io::Error::from)?;
    let mut p = String::new();
    let r = stdin.lock().read_line(&mut p);
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &old);
    eprintln!();
    r.map(|_| p.trim_end_matches(['\n', '\r']).to_string())
}
