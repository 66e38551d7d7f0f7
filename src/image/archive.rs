//! `save` / `load`: a tar that is both a docker-archive (`manifest.json`) and an OCI image layout
//! (`oci-layout`, `index.json`, `blobs/sha256/*`), as `docker save` writes since Docker 25. Loads
//! either form, and the older docker-archive with `<id>/layer.tar` files.

use super::Error;
use crate::digest::Digest;
use crate::oci::{
    AnyManifest, Descriptor, ImageConfig, ImageManifest, DOCKER_CONFIG, DOCKER_MANIFEST, OCI_INDEX,
    OCI_LAYER_ZSTD,
};
use crate::reference::Reference;
use crate::store::{ImageRecord, Store};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::Path;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

const SMALL_FILE_LIMIT: u64 = 16 << 20;

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

fn familiar(tag_ref: &str) -> String {
    match tag_ref.parse::<Reference>() {
        Ok(r) => format!("{}:{}", r.familiar_name(), r.tag.unwrap_or_default()),
        Err(_) => tag_ref.to_string(),
    }
}

/// Write images (with the tags they are saved under) into a tar at `out`.
pub fn save(store: &Store, images: &[(ImageRecord, Vec<String>)], out: &Path) -> Result<(), Error> {
    let tmp = out.with_extension("strata-tmp");
    let file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let mut written = BTreeSet::new();
    let mut archive = Vec::new();
    let mut index = Vec::new();
    let mut add_blob = |tar: &mut tar::Builder<_>, d: &Digest| -> Result<(), Error> {
        if !written.insert(*d) {
            return Ok(());
        }
        let p = store.blob_path(d);
        let mut f = std::fs::File::open(&p).map_err(io_err(&p))?;
        tar.append_file(format!("blobs/sha256/{}", d.hex()), &mut f)
            .map_err(io_err(&p))
    };
    for (rec, tags) in images {
        if let Some(missing) = rec.layers.iter().find(|l| !store.has_blob(&l.digest)) {
            return Err(Error::Invalid {
                what: format!("image {}", rec.config_digest.short()),
                msg: format!(
                    "layer {} is not local; run `strata pull` first",
                    missing.digest
                ),
            });
        }
        add_blob(&mut tar, &rec.manifest_digest)?;
        add_blob(&mut tar, &rec.config_digest)?;
        for l in &rec.layers {
            add_blob(&mut tar, &l.digest)?;
        }
        archive.push(ArchiveEntry {
            config: format!("blobs/sha256/{}", rec.config_digest.hex()),
            repo_tags: Some(tags.iter().map(|t| familiar(t)).collect()),
            layers: rec
                .layers
                .iter()
                .map(|l| format!("blobs/sha256/{}", l.digest.hex()))
                .collect(),
        });
        let size = store.read_blob(&rec.manifest_digest)?.len() as u64;
        let names: Vec<Option<String>> = if tags.is_empty() {
            vec![None]
        } else {
            tags.iter().cloned().map(Some).collect()
        };
        for name in names {
            let mut d = Descriptor::new(&rec.manifest_media_type, rec.manifest_digest, size);
            if let Some(n) = name {
                let mut ann = BTreeMap::new();
                if let Ok(r) = n.parse::<Reference>() {
                    ann.insert(
                        "org.opencontainers.image.ref.name".to_string(),
                        r.tag.clone().unwrap_or_default(),
                    );
                }
                ann.insert("io.containerd.image.name".to_string(), n);
                d.annotations = Some(ann);
            }
            index.push(d);
        }
    }
    let add_json =
        |tar: &mut tar::Builder<_>, name: &str, v: &serde_json::Value| -> Result<(), Error> {
            let body = serde_json::to_vec(v).map_err(|e| Error::Invalid {
                what: name.into(),
                msg: e.to_string(),
            })?;
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, name, body.as_slice())
                .map_err(io_err(&tmp))
        };
    add_json(
        &mut tar,
        "oci-layout",
        &serde_json::json!({"imageLayoutVersion": "1.0.0"}),
    )?;
    add_json(
        &mut tar,
        "index.json",
        &serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": index}),
    )?;
    add_json(
        &mut tar,
        "manifest.json",
        &serde_json::to_value(&archive).unwrap_or_default(),
    )?;
    let mut inner = tar.into_inner().map_err(io_err(&tmp))?;
    inner.flush().map_err(io_err(&tmp))?;
    inner.get_ref().sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, out).map_err(io_err(out))?;
    Ok(())
}

/// Load a docker-archive or OCI-layout tar. Returns the records and the tags set.
pub fn load(
    store: &Store,
    input: &mut dyn Read,
    what: &str,
) -> Result<Vec<(ImageRecord, Vec<String>)>, Error> {
    let mut tar = tar::Archive::new(input);
    let mut small: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut path_digest: BTreeMap<String, Digest> = BTreeMap::new();
    let mut links: Vec<(String, String)> = Vec::new();
    let bad = |msg: String| Error::Invalid {
        what: what.to_string(),
        msg,
    };
    for entry in tar.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(format!("bad tar: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| bad(e.to_string()))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            if let Ok(Some(t)) = entry.link_name() {
                let t = t.to_string_lossy().into_owned();
                let base = Path::new(&path)
                    .parent()
                    .map(|p| p.join(&t))
                    .unwrap_or_else(|| t.clone().into());
                let target = if kind.is_symlink() {
                    normalize(&base.to_string_lossy())
                } else {
                    t
                };
                links.push((path, target));
            }
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            let d = Digest::from_hex(hex).map_err(|e| bad(format!("{path}: {e}")))?;
            if !store.has_blob(&d) {
                let mut w = store.blob_writer(d, format!("{what}: {path}"))?;
                copy_into(&mut entry, |b| w.write(b).map_err(Error::from))
                    .map_err(|e| bad(format!("{path}: {e}")))?;
                w.commit()?;
            }
            path_digest.insert(path, d);
        } else if path.ends_with(".json") || path == "repositories" || path == "oci-layout" {
            if entry.header().size().unwrap_or(u64::MAX) > SMALL_FILE_LIMIT {
                return Err(bad(format!("{path}: larger than {SMALL_FILE_LIMIT} bytes")));
            }
            let mut buf = Vec::new();
            entry
                .read_to_end(&mut buf)
                .map_err(|e| bad(format!("{path}: {e}")))?;
            small.insert(path, buf);
        } else {
            // Old docker-archive layer (`<id>/layer.tar`): hash while writing, publish by digest.
            let tmp = store.temp_path("load");
            let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
            let mut h = crate::digest::Verifier::new(Digest::of(b""));
            let r = copy_into(&mut entry, |b| {
                h.update(b);
                f.write_all(b).map_err(|e| Error::Io {
                    path: tmp.display().to_string(),
                    source: e,
                })
            });
            if let Err(e) = r {
                let _ = std::fs::remove_file(&tmp);
                return Err(bad(format!("{path}: {e}")));
            }
            let (d, _) = h.finish();
            f.sync_all().map_err(io_err(&tmp))?;
            std::fs::rename(&tmp, store.blob_path(&d)).map_err(io_err(&tmp))?;
            path_digest.insert(path, d);
        }
    }
    for (from, to) in links {
        if let Some(d) = path_digest.get(&to).copied() {
            path_digest.insert(from, d);
        }
    }
    // Small json files named by digest are blobs too (old format configs `<hex>.json`).
    for (p, b) in &small {
        let d = Digest::of(b);
        if p.trim_end_matches(".json") == d.hex() {
            store.put_blob(d, b, p)?;
            path_digest.insert(p.clone(), d);
        }
    }
    let mut out = Vec::new();
    if let Some(m) = small.get("manifest.json") {
        let entries: Vec<ArchiveEntry> =
            serde_json::from_slice(m).map_err(|e| bad(format!("manifest.json: {e}")))?;
        let oci: Vec<Digest> = index_manifests(store, &small)?;
        for e in entries {
            let cfg = *path_digest
                .get(&e.config)
                .ok_or_else(|| bad(format!("config {} missing", e.config)))?;
            let layers: Vec<Digest> = e
                .layers
                .iter()
                .map(|l| {
                    path_digest
                        .get(l)
                        .copied()
                        .ok_or_else(|| bad(format!("layer {l} missing")))
                })
                .collect::<Result<_, _>>()?;
            let existing = oci.iter().find_map(|md| {
                let b = store.read_blob(md).ok()?;
                match AnyManifest::parse(None, &b).ok()? {
                    AnyManifest::Image(im) if im.config.digest == cfg => Some((*md, im)),
                    _ => None,
                }
            });
            let (manifest_digest, media_type, image) = match existing {
                Some((md, im)) => (
                    md,
                    im.media_type
                        .clone()
                        .unwrap_or_else(|| crate::oci::OCI_MANIFEST.into()),
                    im,
                ),
                None => synthesize(store, cfg, &layers)?,
            };
            let tags = e.repo_tags.unwrap_or_default();
            let rec = record(store, manifest_digest, &media_type, &image)?;
            for t in &tags {
                let r: Reference = t.parse().map_err(|e| bad(format!("tag {t:?}: {e}")))?;
                store.tag(&r, &rec.manifest_digest)?;
            }
            out.push((rec, tags));
        }
    } else if small.contains_key("index.json") {
        let idx: crate::oci::ImageIndex = serde_json::from_slice(&small["index.json"])
            .map_err(|e| bad(format!("index.json: {e}")))?;
        for d in idx.manifests {
            let b = store.read_blob(&d.digest)?;
            let AnyManifest::Image(im) =
                AnyManifest::parse(Some(&d.media_type), &b).map_err(bad)?
            else {
                continue;
            };
            let rec = record(store, d.digest, &d.media_type, &im)?;
            let mut tags = Vec::new();
            if let Some(name) = d
                .annotation("io.containerd.image.name")
                // A bare `ref.name` is only a tag (OCI image layout): it names no repository.
                .or(d
                    .annotation("org.opencontainers.image.ref.name")
                    .filter(|n| n.contains('/') || n.contains(':')))
            {
                if let Ok(r) = name.parse::<Reference>() {
                    store.tag(&r, &rec.manifest_digest)?;
                    tags.push(name.to_string());
                }
            }
            out.push((rec, tags));
        }
    } else {
        return Err(bad(
            "neither manifest.json nor index.json found: not an image archive".into(),
        ));
    }
    Ok(out)
}

fn index_manifests(store: &Store, small: &BTreeMap<String, Vec<u8>>) -> Result<Vec<Digest>, Error> {
    let Some(b) = small.get("index.json") else {
        return Ok(Vec::new());
    };
    let idx: crate::oci::ImageIndex = match serde_json::from_slice(b) {
        Ok(i) => i,
        Err(_) => return Ok(Vec::new()),
    };
    Ok(idx
        .manifests
        .into_iter()
        .map(|d| d.digest)
        .filter(|d| store.has_blob(d))
        .collect())
}

/// Build a Docker schema2 manifest for an archive that carries none.
fn synthesize(
    store: &Store,
    cfg: Digest,
    layers: &[Digest],
) -> Result<(Digest, String, ImageManifest), Error> {
    let cfg_size = std::fs::metadata(store.blob_path(&cfg))
        .map(|m| m.len())
        .unwrap_or(0);
    let mut descs = Vec::new();
    for d in layers {
        let p = store.blob_path(d);
        let size = std::fs::metadata(&p).map_err(io_err(&p))?.len();
        let mut magic = [0u8; 4];
        let n = std::fs::File::open(&p)
            .and_then(|mut f| f.read(&mut magic))
            .unwrap_or(0);
        let mt = match &magic[..n.min(4)] {
            [0x1f, 0x8b, ..] => crate::oci::DOCKER_LAYER_GZIP,
            [0x28, 0xb5, 0x2f, 0xfd] => OCI_LAYER_ZSTD,
            _ => "application/vnd.docker.image.rootfs.diff.tar",
        };
        descs.push(Descriptor::new(mt, *d, size));
    }
    let m = ImageManifest {
        schema_version: 2,
        media_type: Some(DOCKER_MANIFEST.into()),
        artifact_type: None,
        config: Descriptor::new(DOCKER_CONFIG, cfg, cfg_size),
        layers: descs,
        subject: None,
        annotations: None,
    };
    let body = serde_json::to_vec(&m).map_err(|e| Error::Invalid {
        what: "manifest".into(),
        msg: e.to_string(),
    })?;
    let d = Digest::of(&body);
    store.put_blob(d, &body, "synthesized manifest")?;
    Ok((d, DOCKER_MANIFEST.into(), m))
}

fn record(
    store: &Store,
    manifest: Digest,
    media_type: &str,
    m: &ImageManifest,
) -> Result<ImageRecord, Error> {
    let raw = store.read_blob(&m.config.digest)?;
    let cfg: ImageConfig = serde_json::from_slice(&raw).map_err(|e| Error::Invalid {
        what: format!("config {}", m.config.digest),
        msg: e.to_string(),
    })?;
    let rec = ImageRecord {
        manifest_digest: manifest,
        manifest_media_type: media_type.to_string(),
        config_digest: m.config.digest,
        layers: m.layers.clone(),
        repo_digests: BTreeSet::new(),
        index_digest: None,
        created: cfg.created.clone(),
        platform: format!("{}/{}", cfg.os, cfg.architecture),
        stored_at: chrono::Utc::now().to_rfc3339(),
        complete: m.layers.iter().all(|l| store.has_blob(&l.digest)),
    };
    store.put_image(&rec)?;
    Ok(rec)
}

fn copy_into(
    r: &mut dyn Read,
    mut sink: impl FnMut(&[u8]) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = r.read(&mut buf).map_err(|e| Error::Io {
            path: "archive".into(),
            source: e,
        })?;
        if n == 0 {
            return Ok(());
        }
        sink(&buf[..n])?;
    }
}

fn normalize(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}
