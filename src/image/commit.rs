//! Images from containers: `commit` (a container's upper dir becomes a new layer on top of its
//! image), `export` (a mounted rootfs as one flat tar) and `import` (a tar becomes a one-layer
//! image).
//!
//! Layers are streamed: tar -> sha256 (diff_id) -> gzip -> sha256 (digest) -> a temp file in the
//! store, then published through the store's verified blob writer; no layer is ever held in
//! memory. Configs and manifests are new documents derived from the parent's raw config JSON
//! (unknown fields kept). Calls `store`, `registry` (through `pull::fetch_blob`, to make a lazily
//! mounted parent's layers local so the result can be pushed) and the tree walker in
//! `commit/walk.rs`; knows nothing of containers or the CLI: callers pass the upper dir or
//! rootfs path.

mod walk;

pub use walk::{Mode, WalkStats};

use super::{Error, Progress};
use crate::digest::Digest;
use crate::oci::{
    Descriptor, Platform, DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST, OCI_CONFIG,
    OCI_LAYER_GZIP, OCI_MANIFEST,
};
use crate::reference::Reference;
use crate::registry::Client;
use crate::store::{ImageRecord, Store};
use futures::StreamExt;
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};
use std::io::{BufRead, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// What a new image's config gets besides its layer.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// History comment (`-m`).
    pub message: Option<String>,
    /// Image author (`--author`).
    pub author: Option<String>,
    /// Dockerfile-style config changes (`-c 'CMD ["sh"]'`), applied in order.
    pub changes: Vec<String>,
}

/// A layer blob now in the store.
#[derive(Debug, Clone)]
pub struct NewLayer {
    pub descriptor: Descriptor,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    pub stats: WalkStats,
}

/// Result of [`commit`].
#[derive(Debug, Clone)]
pub struct Committed {
    pub record: ImageRecord,
    pub layer: NewLayer,
    /// Parent layers that were not local and were fetched so the image can be pushed.
    pub fetched_parent_layers: usize,
}

/// A writer that hashes what passes through it.
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashWriter<W> {
    fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    fn finish(self) -> (W, Digest, u64) {
        (
            self.inner,
            Digest::from_bytes(self.hasher.finalize().into()),
            self.len,
        )
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Removes a temp file on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

type GzSink = HashWriter<flate2::write::GzEncoder<HashWriter<BufWriter<std::fs::File>>>>;

/// An uncompressed tar stream being gzipped into a temp file, both sides hashed.
struct LayerSink {
    w: GzSink,
    tmp: TempFile,
}

impl LayerSink {
    fn new(store: &Store) -> Result<Self, Error> {
        let tmp = TempFile(store.temp_path("layer"));
        let f = std::fs::File::create(&tmp.0).map_err(|source| Error::Io {
            path: tmp.0.display().to_string(),
            source,
        })?;
        let gz = flate2::write::GzEncoder::new(
            HashWriter::new(BufWriter::with_capacity(1 << 20, f)),
            flate2::Compression::default(),
        );
        Ok(LayerSink {
            w: HashWriter::new(gz),
            tmp,
        })
    }

    fn io(&self, source: std::io::Error) -> Error {
        Error::Io {
            path: self.tmp.0.display().to_string(),
            source,
        }
    }

    /// Finish compression and publish the blob through the store's verified writer.
    fn publish(self, store: &Store, media_type: &str, stats: WalkStats) -> Result<NewLayer, Error> {
        let LayerSink { w, tmp } = self;
        let io = |source| Error::Io {
            path: tmp.0.display().to_string(),
            source,
        };
        let (gz, diff_id, _) = w.finish();
        let hw = gz.finish().map_err(io)?;
        let (buf, digest, size) = hw.finish();
        buf.into_inner()
            .map_err(|e| io(e.into_error()))?
            .sync_all()
            .map_err(io)?;
        if !store.has_blob(&digest) {
            let mut src = std::fs::File::open(&tmp.0).map_err(io)?;
            let mut blob = store.blob_writer(digest, format!("new layer {digest}"))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = src.read(&mut buf).map_err(io)?;
                if n == 0 {
                    break;
                }
                blob.write(&buf[..n])?;
            }
            blob.commit()?;
        }
        Ok(NewLayer {
            descriptor: Descriptor::new(media_type, digest, size),
            diff_id,
            stats,
        })
    }
}

/// Archive a kernel-overlayfs upper dir as a gzip layer with OCI whiteouts and store it. A
/// missing upper (the container never wrote) gives an empty layer.
pub fn layer_from_upper(store: &Store, upper: &Path, media_type: &str) -> Result<NewLayer, Error> {
    let sink = LayerSink::new(store)?;
    let mut tar = tar::Builder::new(sink.w);
    tar.mode(tar::HeaderMode::Complete);
    let stats = if upper.exists() {
        walk::write_tree(upper, Mode::Upper, &mut tar)?
    } else {
        WalkStats::default()
    };
    let w = tar.into_inner().map_err(|source| Error::Io {
        path: format!("finishing layer of {}", upper.display()),
        source,
    })?;
    LayerSink { w, tmp: sink.tmp }.publish(store, media_type, stats)
}

/// Write the tree under `rootfs` as one flat tar to `out` (no whiteouts; other file systems
/// mounted inside are not entered).
pub fn export(rootfs: &Path, out: impl Write) -> Result<WalkStats, Error> {
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Complete);
    let stats = walk::write_tree(rootfs, Mode::Rootfs, &mut tar)?;
    tar.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(|source| Error::Io {
            path: format!("finishing export of {}", rootfs.display()),
            source,
        })?;
    Ok(stats)
}

/// Fetch the parent's layer blobs that are not local (a lazily mounted image), so the
/// committed image can be pushed and saved. Returns how many were fetched.
pub async fn fetch_missing_layers(
    client: &Client,
    store: &Store,
    reference: &Reference,
    parent: &ImageRecord,
    progress: &Progress,
) -> Result<usize, Error> {
    let missing: Vec<&Descriptor> = parent
        .layers
        .iter()
        .filter(|l| !store.has_blob(&l.digest))
        .collect();
    let limit = client.config().max_concurrent_downloads.max(1);
    let results: Vec<Result<(), Error>> = futures::stream::iter(missing.iter().map(|l| async {
        progress.line(&format!(
            "{}: fetching parent layer from {}",
            l.digest.short(),
            reference.name()
        ));
        super::pull::fetch_blob(client, store, reference, &l.digest, l.size, None)
            .await
            .map_err(|e| Error::Layer {
                digest: l.digest,
                source: Box::new(e),
            })
    }))
    .buffer_unordered(limit)
    .collect()
    .await;
    results.into_iter().collect::<Result<Vec<()>, Error>>()?;
    Ok(missing.len())
}

/// Commit `upper` on top of `parent` (whose blobs are fetched from `parent_ref`'s registry when
/// not local) as a new image; the record is stored, not tagged.
pub async fn commit(
    client: &Client,
    store: &std::sync::Arc<Store>,
    parent: &ImageRecord,
    parent_ref: &Reference,
    upper: &Path,
    opts: &CommitOptions,
    progress: &Progress,
) -> Result<Committed, Error> {
    let fetched = fetch_missing_layers(client, store, parent_ref, parent, progress).await?;
    let docker = parent.manifest_media_type == DOCKER_MANIFEST;
    let layer_type = if docker {
        DOCKER_LAYER_GZIP
    } else {
        OCI_LAYER_GZIP
    };
    let (s, u) = (store.clone(), upper.to_path_buf());
    let layer = tokio::task::spawn_blocking(move || layer_from_upper(&s, &u, layer_type))
        .await
        .map_err(|e| Error::Invalid {
            what: format!("committing {}", upper.display()),
            msg: e.to_string(),
        })??;
    let (_, raw) = store.config(parent)?;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let config = child_config(raw, &layer.diff_id, &now, "strata commit", opts)?;
    let mut layers = parent.layers.clone();
    layers.push(layer.descriptor.clone());
    let mut record = store_image(store, config, layers, docker, &parent.platform, &now)?;
    record.complete = record.layers.iter().all(|l| store.has_blob(&l.digest));
    store.put_image(&record)?;
    Ok(Committed {
        record,
        layer,
        fetched_parent_layers: fetched,
    })
}

/// The parent's config with one more layer and history entry, and `opts` applied.
fn child_config(
    mut raw: Value,
    diff_id: &Digest,
    now: &str,
    created_by: &str,
    opts: &CommitOptions,
) -> Result<Value, Error> {
    let Some(obj) = raw.as_object_mut() else {
        return Err(Error::Invalid {
            what: "parent image config".into(),
            msg: "is not a JSON object".into(),
        });
    };
    obj.insert("created".into(), json!(now));
    if let Some(a) = &opts.author {
        obj.insert("author".into(), json!(a));
    }
    // Docker's per-build leftovers would describe the parent's build, not this commit.
    obj.remove("container");
    obj.remove("container_config");
    let rootfs = obj.entry("rootfs").or_insert_with(|| json!({}));
    let rootfs = object(rootfs, "rootfs")?;
    rootfs.insert("type".into(), json!("layers"));
    array(
        rootfs.entry("diff_ids").or_insert_with(|| json!([])),
        "diff_ids",
    )?
    .push(json!(diff_id.to_string()));
    array(obj.entry("history").or_insert_with(|| json!([])), "history")?
        .push(history(now, created_by, opts));
    let cfg = object(obj.entry("config").or_insert_with(|| json!({})), "config")?;
    for c in &opts.changes {
        apply_change(cfg, c)?;
    }
    Ok(raw)
}

fn history(now: &str, created_by: &str, opts: &CommitOptions) -> Value {
    let mut h = Map::new();
    h.insert("created".into(), json!(now));
    h.insert("created_by".into(), json!(created_by));
    if let Some(a) = &opts.author {
        h.insert("author".into(), json!(a));
    }
    if let Some(m) = &opts.message {
        h.insert("comment".into(), json!(m));
    }
    Value::Object(h)
}

fn object<'a>(v: &'a mut Value, what: &str) -> Result<&'a mut Map<String, Value>, Error> {
    if v.is_null() {
        *v = json!({});
    }
    v.as_object_mut().ok_or_else(|| Error::Invalid {
        what: format!("image config {what}"),
        msg: "is not a JSON object".into(),
    })
}

fn array<'a>(v: &'a mut Value, what: &str) -> Result<&'a mut Vec<Value>, Error> {
    if v.is_null() {
        *v = json!([]);
    }
    v.as_array_mut().ok_or_else(|| Error::Invalid {
        what: format!("image config {what}"),
        msg: "is not a JSON array".into(),
    })
}

/// Store config and manifest blobs and return the (not yet stored) record.
pub(super) fn store_image(
    store: &Store,
    config: Value,
    layers: Vec<Descriptor>,
    docker: bool,
    platform: &str,
    now: &str,
) -> Result<ImageRecord, Error> {
    let json_err = |what: &str, e: serde_json::Error| Error::Invalid {
        what: what.into(),
        msg: e.to_string(),
    };
    let cfg_bytes = serde_json::to_vec(&config).map_err(|e| json_err("new image config", e))?;
    let cfg_digest = Digest::of(&cfg_bytes);
    store.put_blob(cfg_digest, &cfg_bytes, "new image config")?;
    let (manifest_type, config_type) = if docker {
        (DOCKER_MANIFEST, DOCKER_CONFIG)
    } else {
        (OCI_MANIFEST, OCI_CONFIG)
    };
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": Descriptor::new(config_type, cfg_digest, cfg_bytes.len() as u64),
        "layers": layers,
    });
    let m_bytes = serde_json::to_vec(&manifest).map_err(|e| json_err("new manifest", e))?;
    let m_digest = Digest::of(&m_bytes);
    store.put_blob(m_digest, &m_bytes, "new image manifest")?;
    Ok(ImageRecord {
        manifest_digest: m_digest,
        manifest_media_type: manifest_type.into(),
        config_digest: cfg_digest,
        layers,
        repo_digests: Default::default(),
        index_digest: None,
        created: Some(now.to_string()),
        platform: platform.to_string(),
        stored_at: chrono::Utc::now().to_rfc3339(),
        complete: false,
    })
}

/// Compression of an import stream, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Copies what is read from `inner` into `sink`.
struct Tee<'a, R> {
    inner: R,
    sink: &'a mut GzSink,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sink.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// `import`: a tar stream (plain, gzip or zstd) becomes a one-layer image (stored gzip), with
/// a fresh config for this host's platform. `source` names the input in errors. The tar is
/// checked entry by entry while it is copied; the record is stored, not tagged.
pub fn import(
    store: &Store,
    input: &mut dyn BufRead,
    source: &str,
    opts: &CommitOptions,
) -> Result<ImageRecord, Error> {
    let io = |e: std::io::Error| Error::Io {
        path: source.to_string(),
        source: e,
    };
    let head = input.fill_buf().map_err(io)?;
    let compression = Compression::detect(head);
    let decoded: Box<dyn Read + '_> = match compression {
        Compression::None => Box::new(input),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(input).map_err(io)?),
    };
    let mut sink = LayerSink::new(store)?;
    let not_tar = |msg: String| Error::Invalid {
        what: source.to_string(),
        msg: format!("not a tar archive (plain, gzip or zstd): {msg}"),
    };
    let mut entries = 0u64;
    {
        let mut archive = tar::Archive::new(Tee {
            inner: decoded,
            sink: &mut sink.w,
        });
        for e in archive.entries().map_err(|e| not_tar(e.to_string()))? {
            let mut e = e.map_err(|e| not_tar(e.to_string()))?;
            // Read the body through the tee (the iterator would skip it the same way).
            std::io::copy(&mut e, &mut std::io::sink()).map_err(|e| not_tar(e.to_string()))?;
            entries += 1;
        }
        // Trailing zero blocks / record padding belong to the diff as read.
        std::io::copy(&mut archive.into_inner(), &mut std::io::sink())
            .map_err(|e| not_tar(e.to_string()))?;
    }
    if entries == 0 {
        return Err(not_tar("no entries".into()));
    }
    sink.w.flush().map_err(|e| sink.io(e))?;
    let stats = WalkStats {
        entries,
        ..Default::default()
    };
    let layer = sink.publish(store, OCI_LAYER_GZIP, stats)?;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let host = Platform::host();
    let mut cfg = Map::new();
    for c in &opts.changes {
        apply_change(&mut cfg, c)?;
    }
    let mut config = json!({
        "created": now,
        "architecture": host.architecture,
        "os": host.os,
        "config": cfg,
        "rootfs": { "type": "layers", "diff_ids": [layer.diff_id.to_string()] },
        "history": [history(&now, "strata import", opts)],
    });
    if let (Some(a), Some(o)) = (&opts.author, config.as_object_mut()) {
        o.insert("author".into(), json!(a));
    }
    let mut record = store_image(
        store,
        config,
        vec![layer.descriptor],
        false,
        &host.to_string(),
        &now,
    )?;
    record.complete = true;
    store.put_image(&record)?;
    Ok(record)
}

/// Apply one Dockerfile-style change to an image config's `config` object. Supported: CMD,
/// ENTRYPOINT (JSON array or shell form), ENV, LABEL, WORKDIR, USER, EXPOSE, VOLUME,
/// STOPSIGNAL.
pub fn apply_change(cfg: &mut Map<String, Value>, change: &str) -> Result<(), Error> {
    let bad = |msg: &str| Error::Invalid {
        what: format!("change {change:?}"),
        msg: msg.into(),
    };
    let change = change.trim();
    let (instr, rest) = change
        .split_once(char::is_whitespace)
        .map(|(i, r)| (i, r.trim()))
        .unwrap_or((change, ""));
    if rest.is_empty() {
        return Err(bad("needs an argument"));
    }
    let argv = || -> Result<Vec<String>, Error> {
        if rest.starts_with('[') {
            serde_json::from_str::<Vec<String>>(rest)
                .map_err(|e| bad(&format!("bad JSON array: {e}")))
        } else {
            Ok(vec!["/bin/sh".into(), "-c".into(), rest.into()])
        }
    };
    let pairs = || -> Result<Vec<(String, String)>, Error> {
        if !rest.contains('=') {
            // Legacy `ENV KEY value`.
            let (k, v) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            return Ok(vec![(k.to_string(), v.trim().to_string())]);
        }
        split_words(rest)
            .into_iter()
            .map(|w| {
                w.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| bad(&format!("{w:?} is not KEY=VALUE")))
            })
            .collect()
    };
    match instr.to_ascii_uppercase().as_str() {
        "CMD" => {
            cfg.insert("Cmd".into(), json!(argv()?));
        }
        "ENTRYPOINT" => {
            cfg.insert("Entrypoint".into(), json!(argv()?));
        }
        "WORKDIR" => {
            cfg.insert("WorkingDir".into(), json!(rest));
        }
        "USER" => {
            cfg.insert("User".into(), json!(rest));
        }
        "STOPSIGNAL" => {
            cfg.insert("StopSignal".into(), json!(rest));
        }
        "ENV" => {
            let env = array(cfg.entry("Env").or_insert_with(|| json!([])), "Env")?;
            for (k, v) in pairs()? {
                let prefix = format!("{k}=");
                env.retain(|e| !e.as_str().is_some_and(|s| s.starts_with(&prefix)));
                env.push(json!(format!("{k}={v}")));
            }
        }
        "LABEL" => {
            let labels = object(cfg.entry("Labels").or_insert_with(|| json!({})), "Labels")?;
            for (k, v) in pairs()? {
                labels.insert(k, json!(v));
            }
        }
        "EXPOSE" | "VOLUME" => {
            let (key, words) = if instr.eq_ignore_ascii_case("EXPOSE") {
                let ports = split_words(rest)
                    .into_iter()
                    .map(|p| if p.contains('/') { p } else { format!("{p}/tcp") });
                ("ExposedPorts", ports.collect::<Vec<_>>())
            } else if rest.starts_with('[') {
                ("Volumes", argv()?)
            } else {
                ("Volumes", split_words(rest))
            };
            let set = object(cfg.entry(key).or_insert_with(|| json!({})), key)?;
            for w in words {
                set.insert(w, json!({}));
            }
        }
        other => {
            return Err(bad(&format!(
                "unsupported instruction {other:?} (supported: CMD, ENTRYPOINT, ENV, LABEL, WORKDIR, USER, EXPOSE, VOLUME, STOPSIGNAL)"
            )))
        }
    }
    Ok(())
}

/// Split on whitespace, honouring double quotes (which are removed).
fn split_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut any) = (false, false);
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests;
