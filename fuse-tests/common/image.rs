//! Image fixtures built in code: layers as tar (gzip / zstd / plain) from in-memory entry
//! lists, OCI config + manifest, OCI image layout directories (single image or a
//! multi-platform index), and `skopeo` helpers to push them to a [`Registry`].
//! Everything is deterministic (fixed mtimes and timestamps), so the same builder gives the
//! same digests.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;
use tempfile::TempDir;

use super::registry::Registry;
use super::sha256_digest;
use super::skopeo::push_oci;

pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// Fixed mtime of entries unless set (2024-01-01T00:00:00Z).
pub const FIXED_MTIME: u64 = 1_704_067_200;

/// What a layer entry is.
#[derive(Clone, Debug)]
pub enum EntryKind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    /// Hard link to another path in the same layer (tar link name, no leading '/').
    Hardlink(String),
    /// OCI whiteout of the entry at `path` (tar name `dir/.wh.name`).
    Whiteout,
    /// Opaque marker for the directory at `path` (tar name `path/.wh..wh..opq`).
    Opaque,
}

/// One tar entry. Paths are relative to the root (a leading '/' is dropped).
#[derive(Clone, Debug)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

fn clean(path: &str) -> String {
    path.trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

impl Entry {
    fn new(path: &str, kind: EntryKind, mode: u32) -> Entry {
        Entry {
            path: clean(path),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: FIXED_MTIME,
            xattrs: Vec::new(),
        }
    }

    /// Regular file, mode 0644.
    pub fn file(path: &str, data: impl Into<Vec<u8>>) -> Entry {
        Self::new(path, EntryKind::File(data.into()), 0o644)
    }

    /// Directory, mode 0755.
    pub fn dir(path: &str) -> Entry {
        Self::new(path, EntryKind::Dir, 0o755)
    }

    pub fn symlink(path: &str, target: &str) -> Entry {
        Self::new(path, EntryKind::Symlink(target.to_string()), 0o777)
    }

    /// Hard link `path` -> `target` (target must come earlier in the same layer).
    pub fn hardlink(path: &str, target: &str) -> Entry {
        Self::new(path, EntryKind::Hardlink(clean(target)), 0o644)
    }

    /// Delete `path` from lower layers.
    pub fn whiteout(path: &str) -> Entry {
        Self::new(path, EntryKind::Whiteout, 0o644)
    }

    /// Hide everything below directory `dir` from lower layers.
    pub fn opaque(dir: &str) -> Entry {
        Self::new(dir, EntryKind::Opaque, 0o644)
    }

    pub fn mode(mut self, mode: u32) -> Entry {
        self.mode = mode;
        self
    }

    pub fn owner(mut self, uid: u64, gid: u64) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn mtime(mut self, mtime: u64) -> Entry {
        self.mtime = mtime;
        self
    }

    /// Extended attribute, stored as a PAX `SCHILY.xattr.<name>` record.
    pub fn xattr(mut self, name: &str, value: impl Into<Vec<u8>>) -> Entry {
        self.xattrs.push((name.to_string(), value.into()));
        self
    }

    /// Name of this entry inside the tar.
    pub fn tar_name(&self) -> String {
        match self.kind {
            EntryKind::Whiteout => match self.path.rsplit_once('/') {
                Some((dir, base)) => format!("{dir}/.wh.{base}"),
                None => format!(".wh.{}", self.path),
            },
            EntryKind::Opaque if self.path.is_empty() => ".wh..wh..opq".to_string(),
            EntryKind::Opaque => format!("{}/.wh..wh..opq", self.path),
            EntryKind::Dir => format!("{}/", self.path),
            _ => self.path.clone(),
        }
    }
}

/// Layer blob compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

impl Compression {
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
        }
    }
}

/// A layer under construction: entries in tar order.
#[derive(Clone, Debug)]
pub struct Layer {
    pub entries: Vec<Entry>,
    pub compression: Compression,
    /// `created_by` of this layer's history entry.
    pub created_by: String,
}

impl Default for Layer {
    fn default() -> Self {
        Layer {
            entries: Vec::new(),
            compression: Compression::Gzip,
            created_by: "strata-test layer".into(),
        }
    }
}

impl Layer {
    pub fn new() -> Layer {
        Layer::default()
    }

    pub fn add(mut self, entry: Entry) -> Layer {
        self.entries.push(entry);
        self
    }

    pub fn file(self, path: &str, data: impl Into<Vec<u8>>) -> Layer {
        self.add(Entry::file(path, data))
    }

    pub fn dir(self, path: &str) -> Layer {
        self.add(Entry::dir(path))
    }

    pub fn symlink(self, path: &str, target: &str) -> Layer {
        self.add(Entry::symlink(path, target))
    }

    pub fn hardlink(self, path: &str, target: &str) -> Layer {
        self.add(Entry::hardlink(path, target))
    }

    pub fn whiteout(self, path: &str) -> Layer {
        self.add(Entry::whiteout(path))
    }

    pub fn opaque(self, dir: &str) -> Layer {
        self.add(Entry::opaque(dir))
    }

    pub fn compression(mut self, c: Compression) -> Layer {
        self.compression = c;
        self
    }

    pub fn created_by(mut self, s: &str) -> Layer {
        self.created_by = s.to_string();
        self
    }

    /// The uncompressed tar stream.
    pub fn tar_bytes(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        b.mode(tar::HeaderMode::Complete);
        for e in &self.entries {
            if !e.xattrs.is_empty() {
                let recs: Vec<(String, &[u8])> = e
                    .xattrs
                    .iter()
                    .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
                    .collect();
                b.append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), *v)))
                    .expect("pax xattrs");
            }
            let mut h = tar::Header::new_gnu();
            h.set_mode(e.mode);
            h.set_uid(e.uid);
            h.set_gid(e.gid);
            h.set_mtime(e.mtime);
            h.set_size(0);
            let name = e.tar_name();
            match &e.kind {
                EntryKind::File(data) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, &name, data.as_slice())
                        .expect("tar file");
                }
                EntryKind::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    b.append_data(&mut h, &name, std::io::empty())
                        .expect("tar dir");
                }
                EntryKind::Symlink(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    b.append_link(&mut h, &name, target).expect("tar symlink");
                }
                EntryKind::Hardlink(target) => {
                    h.set_entry_type(tar::EntryType::Link);
                    b.append_link(&mut h, &name, target).expect("tar hardlink");
                }
                EntryKind::Whiteout | EntryKind::Opaque => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    b.append_data(&mut h, &name, std::io::empty())
                        .expect("tar whiteout");
                }
            }
        }
        b.into_inner().expect("finish tar")
    }

    /// Tar, compress and digest.
    pub fn build(&self) -> BuiltLayer {
        let tar = self.tar_bytes();
        let blob = match self.compression {
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                enc.write_all(&tar).expect("gzip");
                enc.finish().expect("gzip finish")
            }
            Compression::Zstd => zstd::encode_all(tar.as_slice(), 3).expect("zstd"),
            Compression::None => tar.clone(),
        };
        BuiltLayer {
            digest: sha256_digest(&blob),
            diff_id: sha256_digest(&tar),
            size: blob.len() as u64,
            media_type: self.compression.media_type().to_string(),
            blob,
            tar,
        }
    }
}

/// A finished layer blob.
#[derive(Clone, Debug)]
pub struct BuiltLayer {
    /// `sha256:` of the (compressed) blob: the manifest's layer digest.
    pub digest: String,
    /// `sha256:` of the uncompressed tar: the config's `rootfs.diff_ids` entry.
    pub diff_id: String,
    pub size: u64,
    pub media_type: String,
    pub blob: Vec<u8>,
    pub tar: Vec<u8>,
}

/// Builds one image (config + manifest + layers) for one platform.
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    pub layers: Vec<Layer>,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    pub env: Vec<String>,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub labels: Vec<(String, String)>,
    /// Manifest annotations.
    pub annotations: Vec<(String, String)>,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        ImageBuilder {
            layers: Vec::new(),
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cmd: None,
            entrypoint: None,
            working_dir: None,
            user: None,
            labels: Vec::new(),
            annotations: Vec::new(),
        }
    }
}

/// Blobs and digests of one built image.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    /// OCI layout directory holding this image (possibly shared with other images).
    pub layout: PathBuf,
    /// `org.opencontainers.image.ref.name` in the layout's index.json.
    pub tag: String,
    pub manifest_digest: String,
    pub manifest: Vec<u8>,
    pub config_digest: String,
    pub config: Vec<u8>,
    pub layers: Vec<BuiltLayer>,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    _dir: Option<Arc<TempDir>>,
}

/// A multi-platform image: an OCI index over several [`BuiltImage`]s in one layout.
#[derive(Clone, Debug)]
pub struct BuiltIndex {
    pub layout: PathBuf,
    pub tag: String,
    pub index_digest: String,
    pub index: Vec<u8>,
    pub images: Vec<BuiltImage>,
    _dir: Option<Arc<TempDir>>,
}

fn write_blob(layout: &Path, bytes: &[u8]) -> String {
    let digest = sha256_digest(bytes);
    let dir = layout.join("blobs/sha256");
    fs::create_dir_all(&dir).expect("mkdir blobs");
    fs::write(dir.join(&digest["sha256:".len()..]), bytes).expect("write blob");
    digest
}

fn write_layout_index(layout: &Path, media_type: &str, digest: &str, size: usize, tag: &str) {
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("write oci-layout");
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX,
        "manifests": [{
            "mediaType": media_type,
            "digest": digest,
            "size": size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    fs::write(layout.join("index.json"), index.to_string()).expect("write index.json");
}

fn new_layout_dir() -> (PathBuf, Arc<TempDir>) {
    let dir = tempfile::Builder::new()
        .prefix("strata-oci-")
        .tempdir()
        .expect("layout tempdir");
    let layout = dir.path().join("layout");
    fs::create_dir_all(&layout).expect("mkdir layout");
    (layout, Arc::new(dir))
}

impl ImageBuilder {
    /// linux/amd64, a default PATH, no layers.
    pub fn new() -> ImageBuilder {
        ImageBuilder::default()
    }

    pub fn layer(mut self, layer: Layer) -> ImageBuilder {
        self.layers.push(layer);
        self
    }

    pub fn platform(mut self, os: &str, arch: &str, variant: Option<&str>) -> ImageBuilder {
        self.os = os.into();
        self.architecture = arch.into();
        self.variant = variant.map(str::to_string);
        self
    }

    /// Add `KEY=VALUE` to config.Env.
    pub fn env(mut self, kv: &str) -> ImageBuilder {
        self.env.push(kv.into());
        self
    }

    pub fn cmd(mut self, argv: &[&str]) -> ImageBuilder {
        self.cmd = Some(argv.iter().map(|s| s.to_string()).collect());
        self
    }

    pub fn entrypoint(mut self, argv: &[&str]) -> ImageBuilder {
        self.entrypoint = Some(argv.iter().map(|s| s.to_string()).collect());
        self
    }

    pub fn workdir(mut self, dir: &str) -> ImageBuilder {
        self.working_dir = Some(dir.into());
        self
    }

    pub fn user(mut self, user: &str) -> ImageBuilder {
        self.user = Some(user.into());
        self
    }

    pub fn label(mut self, k: &str, v: &str) -> ImageBuilder {
        self.labels.push((k.into(), v.into()));
        self
    }

    pub fn annotation(mut self, k: &str, v: &str) -> ImageBuilder {
        self.annotations.push((k.into(), v.into()));
        self
    }

    /// The image config JSON for these layers.
    pub fn config_json(&self, layers: &[BuiltLayer]) -> serde_json::Value {
        let mut config = serde_json::Map::new();
        config.insert("Env".into(), json!(self.env));
        if let Some(c) = &self.cmd {
            config.insert("Cmd".into(), json!(c));
        }
        if let Some(e) = &self.entrypoint {
            config.insert("Entrypoint".into(), json!(e));
        }
        if let Some(w) = &self.working_dir {
            config.insert("WorkingDir".into(), json!(w));
        }
        if let Some(u) = &self.user {
            config.insert("User".into(), json!(u));
        }
        if !self.labels.is_empty() {
            let labels: serde_json::Map<String, serde_json::Value> = self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            config.insert("Labels".into(), serde_json::Value::Object(labels));
        }
        let mut v = json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": self.architecture,
            "os": self.os,
            "config": config,
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
            "history": self.layers.iter().map(|l| json!({
                "created": "2024-01-01T00:00:00Z",
                "created_by": l.created_by,
            })).collect::<Vec<_>>(),
        });
        if let Some(var) = &self.variant {
            v["variant"] = json!(var);
        }
        v
    }

    /// Write blobs, config and manifest into `layout` (no index.json); return the image.
    fn write_blobs(&self, layout: &Path, tag: &str) -> BuiltImage {
        let layers: Vec<BuiltLayer> = self.layers.iter().map(Layer::build).collect();
        for l in &layers {
            write_blob(layout, &l.blob);
        }
        let config = serde_json::to_vec(&self.config_json(&layers)).expect("config json");
        let config_digest = write_blob(layout, &config);
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": {
                "mediaType": MT_OCI_CONFIG,
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": layers.iter().map(|l| json!({
                "mediaType": l.media_type,
                "digest": l.digest,
                "size": l.size,
            })).collect::<Vec<_>>(),
        });
        if !self.annotations.is_empty() {
            let a: serde_json::Map<String, serde_json::Value> = self
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            manifest["annotations"] = serde_json::Value::Object(a);
        }
        let manifest = serde_json::to_vec(&manifest).expect("manifest json");
        let manifest_digest = write_blob(layout, &manifest);
        BuiltImage {
            layout: layout.to_path_buf(),
            tag: tag.to_string(),
            manifest_digest,
            manifest,
            config_digest,
            config,
            layers,
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone(),
            _dir: None,
        }
    }

    /// Write an OCI image layout for this image into `layout` with ref name `tag`.
    pub fn write_layout(&self, layout: &Path, tag: &str) -> BuiltImage {
        fs::create_dir_all(layout).expect("mkdir layout");
        let img = self.write_blobs(layout, tag);
        write_layout_index(
            layout,
            MT_OCI_MANIFEST,
            &img.manifest_digest,
            img.manifest.len(),
            tag,
        );
        img
    }

    /// Write the layout into a fresh tempdir that lives as long as the returned image.
    pub fn build(&self, tag: &str) -> BuiltImage {
        let (layout, dir) = new_layout_dir();
        let mut img = self.write_layout(&layout, tag);
        img._dir = Some(dir);
        img
    }
}

/// Build several platform images into one layout under an OCI image index.
pub fn build_index(images: &[ImageBuilder], tag: &str) -> BuiltIndex {
    let (layout, dir) = new_layout_dir();
    let built: Vec<BuiltImage> = images
        .iter()
        .map(|b| {
            let mut img = b.write_blobs(&layout, tag);
            img._dir = Some(dir.clone());
            img
        })
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX,
        "manifests": built.iter().map(|img| {
            let mut platform = json!({"architecture": img.architecture, "os": img.os});
            if let Some(v) = &img.variant {
                platform["variant"] = json!(v);
            }
            json!({
                "mediaType": MT_OCI_MANIFEST,
                "digest": img.manifest_digest,
                "size": img.manifest.len(),
                "platform": platform,
            })
        }).collect::<Vec<_>>(),
    });
    let index = serde_json::to_vec(&index).expect("index json");
    let index_digest = write_blob(&layout, &index);
    write_layout_index(&layout, MT_OCI_INDEX, &index_digest, index.len(), tag);
    BuiltIndex {
        layout,
        tag: tag.to_string(),
        index_digest,
        index,
        images: built,
        _dir: Some(dir),
    }
}

/// linux/amd64 + linux/arm64. Each has `/etc/arch` containing its architecture name plus a
/// per-platform file (`/amd64-only`, `/arm64-only`), so a test can tell which was pulled.
pub fn two_platform_index(tag: &str) -> BuiltIndex {
    let mk = |arch: &str| {
        ImageBuilder::new()
            .platform(
                "linux",
                arch,
                if arch == "arm64" { Some("v8") } else { None },
            )
            .layer(
                Layer::new()
                    .dir("etc")
                    .file("etc/arch", format!("{arch}\n"))
                    .file(&format!("{arch}-only"), arch.as_bytes().to_vec()),
            )
            .cmd(&["/bin/sh"])
            .label("strata.test.arch", arch)
    };
    build_index(&[mk("amd64"), mk("arm64")], tag)
}

impl BuiltIndex {
    /// The image for `arch` (panics if absent).
    pub fn image(&self, arch: &str) -> &BuiltImage {
        self.images
            .iter()
            .find(|i| i.architecture == arch)
            .unwrap_or_else(|| panic!("no {arch} image in index"))
    }

    /// `oci:<layout>:<tag>` for skopeo.
    pub fn oci_ref(&self) -> String {
        format!("oci:{}:{}", self.layout.display(), self.tag)
    }

    /// Push the whole index (`skopeo copy --all`) to `registry` as `repo_tag` ("name:tag").
    pub fn push(&self, registry: &Registry, repo_tag: &str) {
        push_oci(&self.oci_ref(), registry, repo_tag, true);
    }
}

impl BuiltImage {
    /// `oci:<layout>:<tag>` for skopeo.
    pub fn oci_ref(&self) -> String {
        format!("oci:{}:{}", self.layout.display(), self.tag)
    }

    pub fn layer_digests(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.digest.clone()).collect()
    }

    /// Manifest, config and layer digests: every blob a pull must store.
    pub fn all_digests(&self) -> Vec<String> {
        let mut v = vec![self.manifest_digest.clone(), self.config_digest.clone()];
        v.extend(self.layer_digests());
        v
    }

    /// Push to `registry` as `repo_tag` ("name:tag"), digests preserved.
    pub fn push(&self, registry: &Registry, repo_tag: &str) {
        push_oci(&self.oci_ref(), registry, repo_tag, false);
    }
}

/// Applets linked to /bin/busybox in [`busybox_image`].
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh",
    "ls",
    "cat",
    "echo",
    "true",
    "false",
    "sleep",
    "id",
    "env",
    "pwd",
    "mkdir",
    "rm",
    "mv",
    "cp",
    "ln",
    "touch",
    "stat",
    "sha256sum",
    "head",
    "tail",
    "wc",
    "grep",
    "sed",
    "find",
    "chmod",
    "chown",
    "uname",
    "hostname",
    "mount",
    "ps",
    "dd",
    "test",
    "[",
    "printf",
    "readlink",
];

/// A runnable image: one gzip layer with the host's static `/bin/busybox`, applet symlinks
/// in /bin, minimal /etc/passwd and /etc/group and the usual empty mount-point dirs.
/// Cmd `["sh"]`. Call `.build(tag)` and `.push(...)`.
pub fn busybox_image() -> ImageBuilder {
    let busybox = fs::read("/bin/busybox").expect("read /bin/busybox (busybox-static)");
    let mut layer = Layer::new()
        .created_by("strata-test busybox")
        .dir("bin")
        .add(Entry::file("bin/busybox", busybox).mode(0o755));
    for applet in BUSYBOX_APPLETS {
        layer = layer.symlink(&format!("bin/{applet}"), "busybox");
    }
    for d in ["dev", "proc", "sys", "run", "var", "usr", "usr/bin"] {
        layer = layer.dir(d);
    }
    let layer = layer
        .add(Entry::dir("tmp").mode(0o1777))
        .add(Entry::dir("root").mode(0o700))
        .dir("etc")
        .file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        )
        .file("etc/group", "root:x:0:\nnogroup:x:65534:\n")
        .file("etc/hostname", "strata\n");
    ImageBuilder::new()
        .layer(layer)
        .cmd(&["sh"])
        .label("strata.test", "busybox")
}
