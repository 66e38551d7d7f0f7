//! Listings with docker's `--format` and `--filter`: images, ps, inspect (images and
//! containers), history. Each builds rows as JSON objects with docker's field names, then
//! prints docker's default table or the template (see `format`). Reads the store and the
//! launcher's container records; changes nothing.

use super::format::{glob, Filters, Template};
use super::util::{human_age, human_size, print_table};
use super::{Ctx, Error};
use crate::launcher::{ContainerRecord, Launcher, Status};
use crate::reference::Reference;
use crate::store::ImageRecord;
use serde_json::{json, Value};

/// Options shared by the listing commands.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ListArgs {
    /// Go-template style: "{{.ID}}", "{{json .}}", "table {{.Repository}}\t{{.Tag}}"
    #[arg(long)]
    pub format: Option<String>,
    /// KEY=VALUE (images: dangling, reference; ps: status, name, id, ancestor)
    #[arg(short, long = "filter")]
    pub filter: Vec<String>,
}

pub(super) fn split_name_tag(name_tag: &str) -> (String, String) {
    match name_tag.parse::<Reference>() {
        Ok(r) => (r.familiar_name(), r.tag.unwrap_or_else(|| "<none>".into())),
        Err(_) => (name_tag.to_string(), "<none>".into()),
    }
}

/// One `images` row per name of each image (`<none>` for an untagged one).
fn image_rows(ctx: &Ctx, no_trunc: bool) -> Result<Vec<Value>, Error> {
    let recs = ctx.store.images()?;
    let tags = ctx.store.tags()?;
    let mut rows = Vec::new();
    for r in &recs {
        let mut names: Vec<(String, String)> = tags
            .iter()
            .filter(|(_, d)| **d == r.manifest_digest)
            .map(|(nt, _)| split_name_tag(nt))
            .collect();
        // docker's dangling: no tag (an image pulled by digest only is one too).
        let dangling = names.is_empty();
        if names.is_empty() {
            // Pulled by digest only: docker shows the repository with tag <none>.
            names.extend(r.repo_digests.iter().filter_map(|rd| {
                let (n, _) = rd.split_once('@')?;
                Some((
                    n.parse::<Reference>().ok()?.familiar_name(),
                    "<none>".to_string(),
                ))
            }));
            names.dedup();
        }
        if names.is_empty() {
            names.push(("<none>".into(), "<none>".into()));
        }
        for (repo, tag) in names {
            let digest = r
                .repo_digests
                .iter()
                .find_map(|rd| {
                    let (n, d) = rd.split_once('@')?;
                    let fam = n.parse::<Reference>().ok()?.familiar_name();
                    (fam == repo).then(|| d.to_string())
                })
                .unwrap_or_else(|| "<none>".into());
            let id = if no_trunc {
                r.id().to_string()
            } else {
                r.id().short()
            };
            rows.push(json!({
                "Repository": repo,
                "Tag": tag,
                "Digest": digest,
                "ID": id,
                "CreatedAt": r.created.clone().unwrap_or_default(),
                "CreatedSince": human_age(r.created.as_deref()),
                "Size": human_size(r.size()),
                "Dangling": dangling,
                "ManifestDigest": r.manifest_digest.to_string(),
            }));
        }
    }
    Ok(rows)
}

const IMAGE_HEADERS: &[(&str, &str)] = &[
    ("ID", "IMAGE ID"),
    ("CreatedSince", "CREATED"),
    ("CreatedAt", "CREATED AT"),
];

/// `images [-a] [-q] [--digests] [--no-trunc] [--format T] [--filter K=V]`. strata keeps no
/// intermediate images, so `-a` lists what the default does.
pub(super) fn images(
    ctx: &Ctx,
    quiet: bool,
    digests: bool,
    no_trunc: bool,
    list: &ListArgs,
) -> Result<i32, Error> {
    let filters = Filters::parse(&list.filter, &["dangling", "reference"])?;
    let template = list.format.as_deref().map(Template::parse).transpose()?;
    let dangling = filters.bool("dangling")?;
    let rows: Vec<Value> = image_rows(ctx, no_trunc)?
        .into_iter()
        .filter(|r| dangling.is_none_or(|d| r["Dangling"] == d))
        .filter(|r| {
            let repo = r["Repository"].as_str().unwrap_or_default();
            let tag = r["Tag"].as_str().unwrap_or_default();
            filters.any_or_none("reference", |p| {
                glob(p, repo) || glob(p, &format!("{repo}:{tag}"))
            })
        })
        .collect();
    if quiet {
        let mut seen = std::collections::BTreeSet::new();
        for r in &rows {
            let id = r["ID"].as_str().unwrap_or_default().to_string();
            if seen.insert(id.clone()) {
                println!("{id}");
            }
        }
        return Ok(0);
    }
    if let Some(t) = template {
        t.print(&rows, IMAGE_HEADERS);
        return Ok(0);
    }
    let mut fields = vec!["Repository", "Tag"];
    let mut header = vec!["REPOSITORY", "TAG"];
    if digests {
        fields.push("Digest");
        header.push("DIGEST");
    }
    fields.extend(["ID", "CreatedSince", "Size"]);
    header.extend(["IMAGE ID", "CREATED", "SIZE"]);
    let cells = field_cells(&rows, &fields);
    print_table(&header, &cells);
    Ok(0)
}

fn image_inspect(ctx: &Ctx, rec: &ImageRecord) -> Result<Value, Error> {
    let (_, raw) = ctx.store.config(rec)?;
    let tags: Vec<String> = ctx
        .store
        .tags_of(&rec.manifest_digest)?
        .into_iter()
        .map(|t| {
            let (n, tag) = split_name_tag(&t);
            format!("{n}:{tag}")
        })
        .collect();
    Ok(json!({
        "Id": rec.id().to_string(),
        "RepoTags": tags,
        "RepoDigests": rec.repo_digests,
        "Created": rec.created,
        "Author": raw.get("author"),
        "Architecture": raw.get("architecture"),
        "Variant": raw.get("variant"),
        "Os": raw.get("os"),
        "Config": raw.get("config"),
        "RootFS": raw.get("rootfs"),
        "Size": rec.size(),
        "Descriptor": {
            "mediaType": rec.manifest_media_type,
            "digest": rec.manifest_digest.to_string(),
        },
        "Layers": rec.layers,
        "Metadata": { "StoredAt": rec.stored_at, "Complete": rec.complete },
    }))
}

/// docker's container inspect fields strata has, plus its own record under `Strata`.
fn container_inspect(r: &ContainerRecord, paused: bool) -> Value {
    let status = match r.status {
        Status::Running if paused => "paused",
        Status::Running => "running",
        Status::Exited => "exited",
        Status::Created => "created",
    };
    json!({
        "Id": r.id,
        "Name": format!("/{}", r.name),
        "Created": r.created.to_rfc3339(),
        "Image": r.image_digest.map(|d| d.to_string()),
        "Path": r.command.first(),
        "Args": r.command.get(1..).unwrap_or_default(),
        "State": {
            "Status": status,
            "Running": r.status == Status::Running,
            "Paused": paused,
            "Pid": r.pid.unwrap_or(0),
            "ExitCode": r.exit_code.unwrap_or(0),
            "StartedAt": r.started_at.map(|t| t.to_rfc3339()),
            "FinishedAt": r.finished_at.map(|t| t.to_rfc3339()),
        },
        "Config": {
            "Image": r.image,
            "Hostname": r.options.hostname,
            "Env": r.options.env,
            "Tty": r.options.tty,
            "OpenStdin": r.options.interactive,
        },
        "GraphDriver": {
            "Name": "strata",
            "Data": {
                "UpperDir": r.mount.upper,
                "WorkDir": r.mount.work,
                "MergedDir": r.mount.mountpoint,
            },
        },
        "Strata": r,
    })
}

/// `inspect [--type image|container] [--format T] NAME...`: images first, then containers
/// (docker's order without `--type`).
pub(super) async fn inspect(
    ctx: &Ctx,
    queries: &[String],
    kind: Option<&str>,
    format: Option<&str>,
) -> Result<i32, Error> {
    let (images, containers) = match kind {
        None => (true, true),
        Some("image") => (true, false),
        Some("container") => (false, true),
        Some(k) => {
            return Err(Error::Usage(format!(
                "--type {k:?}: expected image or container"
            )))
        }
    };
    let template = format.map(Template::parse).transpose()?;
    let l = Launcher::new(&ctx.store);
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for q in queries {
        if images {
            match ctx.store.find_image(q) {
                Ok(rec) => {
                    out.push(image_inspect(ctx, &rec)?);
                    continue;
                }
                Err(crate::store::Error::NoSuchImage(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if containers {
            if let Ok(r) = l.containers().lookup(q) {
                let r = l
                    .containers()
                    .refresh(&r.id, &l.runtime_for(&r))
                    .await
                    .unwrap_or(r);
                let paused = l.is_paused(&r).await;
                out.push(container_inspect(&r, paused));
                continue;
            }
        }
        missing.push(q.clone());
    }
    match template {
        Some(t) => {
            for v in &out {
                println!("{}", t.render(v));
            }
        }
        None => println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default()),
    }
    if !missing.is_empty() {
        let what = match kind {
            Some("container") => "container",
            Some("image") => "image",
            _ => "object",
        };
        for m in &missing {
            eprintln!("Error: No such {what}: {m}");
        }
        return Ok(1);
    }
    Ok(0)
}

/// `history [--no-trunc] [--format T] IMAGE`, newest step first.
pub(super) fn history(
    ctx: &Ctx,
    q: &str,
    no_trunc: bool,
    format: Option<&str>,
) -> Result<i32, Error> {
    let template = format.map(Template::parse).transpose()?;
    let rec = ctx.store.find_image(q)?;
    let (cfg, _) = ctx.store.config(&rec)?;
    let mut layer_sizes = rec.layers.iter().map(|l| l.size);
    let mut rows: Vec<Value> = Vec::new();
    for h in &cfg.history {
        let size = if h.empty_layer {
            0
        } else {
            layer_sizes.next().unwrap_or(0)
        };
        let by = h.created_by.clone().unwrap_or_default();
        let short = if !no_trunc && by.chars().count() > 45 {
            by.chars().take(44).collect::<String>() + "…"
        } else {
            by.clone()
        };
        rows.push(json!({
            "ID": "<missing>",
            "CreatedAt": h.created.clone().unwrap_or_default(),
            "CreatedSince": human_age(h.created.as_deref()),
            "CreatedBy": if template.is_some() { by } else { short },
            "Size": human_size(size),
            "Comment": h.comment.clone().unwrap_or_default(),
        }));
    }
    rows.reverse();
    if let Some(first) = rows.first_mut() {
        first["ID"] = json!(if no_trunc {
            rec.id().to_string()
        } else {
            rec.id().short()
        });
    }
    if let Some(t) = template {
        t.print(
            &rows,
            &[
                ("ID", "IMAGE"),
                ("CreatedSince", "CREATED"),
                ("CreatedBy", "CREATED BY"),
            ],
        );
        return Ok(0);
    }
    let fields = ["ID", "CreatedSince", "CreatedBy", "Size", "Comment"];
    let cells = field_cells(&rows, &fields);
    print_table(
        &["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
        &cells,
    );
    Ok(0)
}

/// One `ps` row with docker's field names; `State` is created, running, paused or exited.
fn ps_row(r: &ContainerRecord, paused: bool, no_trunc: bool) -> Value {
    let status = match r.status {
        Status::Running => format!(
            "Up (since {}){}",
            human_age(r.started_at.map(|t| t.to_rfc3339()).as_deref()),
            if paused { " (Paused)" } else { "" }
        ),
        Status::Exited => format!(
            "Exited ({}) {}",
            r.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "?".into()),
            human_age(r.finished_at.map(|t| t.to_rfc3339()).as_deref())
        ),
        Status::Created => "Created".into(),
    };
    let state = match r.status {
        Status::Running if paused => "paused",
        Status::Running => "running",
        Status::Exited => "exited",
        Status::Created => "created",
    };
    let mut cmd = r.command.join(" ");
    if !no_trunc && cmd.chars().count() > 30 {
        cmd = cmd.chars().take(29).collect::<String>() + "…";
    }
    json!({
        "ID": if no_trunc { r.id.as_str() } else { r.short_id() },
        "Image": r.image,
        "Command": format!("\"{cmd}\""),
        "CreatedAt": r.created.to_rfc3339(),
        "RunningFor": human_age(Some(&r.created.to_rfc3339())),
        "Status": status,
        "State": state,
        "Names": r.name,
        "ExitCode": r.exit_code,
    })
}

/// `ps [-a] [-q] [--no-trunc] [--format T] [--filter K=V]`; a `status=` filter other than
/// running lists stopped containers too, as docker's does.
pub(super) async fn ps(
    ctx: &Ctx,
    all: bool,
    quiet: bool,
    no_trunc: bool,
    list: &ListArgs,
) -> Result<i32, Error> {
    let filters = Filters::parse(&list.filter, &["status", "name", "id", "ancestor"])?;
    for s in filters.values("status") {
        if !["created", "running", "paused", "exited"].contains(&s) {
            return Err(Error::Usage(format!(
                "invalid filter 'status={s}': expected created, running, paused or exited"
            )));
        }
    }
    let all = all
        || filters
            .values("status")
            .any(|s| s != "running" && s != "paused");
    let template = list.format.as_deref().map(Template::parse).transpose()?;
    let l = Launcher::new(&ctx.store);
    let mut rows = Vec::new();
    for r in l.containers().list(true)? {
        let r = l
            .containers()
            .refresh(&r.id, &l.runtime_for(&r))
            .await
            .unwrap_or(r);
        if !all && r.status != Status::Running {
            continue;
        }
        let paused = l.is_paused(&r).await;
        let row = ps_row(&r, paused, no_trunc);
        let state = row["State"].as_str().unwrap_or_default();
        if !filters.any_or_none("status", |s| s == state)
            || !filters.any_or_none("name", |n| r.name.contains(n))
            || !filters.any_or_none("id", |i| r.id.starts_with(i))
            || !filters.any_or_none("ancestor", |a| {
                r.image == a
                    || r.image.parse::<Reference>().is_ok_and(|x| {
                        x.familiar_name() == a
                            || glob(a, &x.familiar_name())
                            || a.parse::<Reference>().is_ok_and(|y| y == x)
                    })
            })
        {
            continue;
        }
        rows.push(row);
    }
    if quiet {
        for r in &rows {
            println!("{}", r["ID"].as_str().unwrap_or_default());
        }
        return Ok(0);
    }
    if let Some(t) = template {
        t.print(
            &rows,
            &[
                ("ID", "CONTAINER ID"),
                ("RunningFor", "CREATED"),
                ("CreatedAt", "CREATED AT"),
            ],
        );
        return Ok(0);
    }
    let fields = ["ID", "Image", "Command", "RunningFor", "Status", "Names"];
    let cells = field_cells(&rows, &fields);
    print_table(
        &[
            "CONTAINER ID",
            "IMAGE",
            "COMMAND",
            "CREATED",
            "STATUS",
            "NAMES",
        ],
        &cells,
    );
    Ok(0)
}

/// The string values of `fields` of each row, as table cells.
fn field_cells(rows: &[serde_json::Value], fields: &[&str]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| {
            fields
                .iter()
                .map(|f| r[*f].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .collect()
}
