//! The podman additional layer store (containers/storage `additionallayerstores`, the
//! stargz-store layout): a read-only tree `DIR/<base64 of an image reference>/<layer
//! digest>/{diff,info,blob}` that the daemon serves over FUSE (`fuse::layer_store`). A
//! reference directory is resolved lazily when a layer digest is looked up in it: the image
//! is resolved through strata's own path (local record or registry), and the layer is served
//! only if every layer of the image has a lazy index (eStargz TOC, strata sidecar, or one
//! built before; otherwise ENOENT and podman pulls the layer itself). Then the layer is
//! mounted alone, lazily and read-only, in kernel-overlayfs lower format (`mount::layer`,
//! the containerd snapshotter's layer views) as a daemon mount under `ROOT/als/views/`, and
//! `diff` is a symlink to that mount; `info` is the layer JSON containers/storage decodes
//! into its `Layer` (compressed and uncompressed digests and sizes, compression);
//! `blob` reads the compressed blob from the registry, range by range. Creating `use` in a
//! layer directory and removing the layer directory (what containers/storage does to
//! count its users) are counted and answered ENOENT, as stargz-store does.
//!
//! Calls `image` (resolve, lazy index lookup), `store` (the image config), `registry` (blob
//! ranges) and the daemon through the snapshotter's [`Mounter`]; implements
//! `fuse::layer_store::StoreFs`, names no fuser type.

use crate::digest::Digest;
use crate::fuse::layer_store::{NodeAttr, NodeKind, StoreFs};
use crate::image::Progress;
use crate::mount::Services;
use crate::reference::Reference;
use crate::snapshotter::Mounter;
use base64::Engine;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

/// Inode of the store's root directory.
pub const ROOT_INO: u64 = 1;
/// Longest accumulated reference name (a base64 name split by its own `/` characters).
const MAX_ENCODED: usize = 4096;

/// One layer served: the image it was resolved in, its view and its `info`.
pub struct Layer {
    /// The image reference pinned to its manifest digest.
    pub image: Reference,
    pub digest: Digest,
    /// Compressed size (of `blob`).
    pub size: u64,
    /// Where its overlay-format view is mounted (`diff` points here).
    pub view: PathBuf,
    /// The `info` file.
    pub info: Vec<u8>,
    /// containers/storage's users of the layer (`use` created minus directories removed).
    uses: AtomicI64,
}

type LayerCell = Arc<tokio::sync::OnceCell<Arc<Layer>>>;

enum Node {
    Root,
    /// `encoded`: the base64 name, with `/` where base64 itself put one (nested dirs).
    Ref {
        encoded: String,
    },
    Layer(Arc<Layer>),
    Diff(Arc<Layer>),
    Info(Arc<Layer>),
    Blob(Arc<Layer>),
}

#[derive(Default)]
struct Table {
    /// Node of inode `i + 1`.
    nodes: Vec<Node>,
    children: HashMap<(u64, String), u64>,
}

impl Table {
    fn add(&mut self, parent: u64, name: &str, node: Node) -> u64 {
        if let Some(&ino) = self.children.get(&(parent, name.to_string())) {
            return ino;
        }
        self.nodes.push(node);
        let ino = self.nodes.len() as u64;
        self.children.insert((parent, name.to_string()), ino);
        ino
    }
    fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get((ino as usize).checked_sub(1)?)
    }
}

/// The layer store behind one `strata store mount DIR`.
pub struct LayerStore {
    svc: Services,
    mounter: Arc<dyn Mounter>,
    views: PathBuf,
    table: Mutex<Table>,
    /// Layers served, by (pinned image, layer): one view mount each.
    layers: Mutex<HashMap<(String, Digest), LayerCell>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The reference a (possibly partial) base64 name decodes to, if it does.
pub fn decode_reference(encoded: &str) -> Option<Reference> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded.as_bytes())
        .ok()?;
    std::str::from_utf8(&raw).ok()?.parse().ok()
}

/// containers/storage's `archive.Compression` number of a layer media type.
fn compression(media_type: &str) -> u8 {
    if media_type.contains("zstd") {
        4
    } else if media_type.contains("gzip") {
        2
    } else {
        0
    }
}

impl LayerStore {
    /// A store whose layer views are mounted by `mounter` under `views`.
    pub fn new(svc: Services, mounter: Arc<dyn Mounter>, views: PathBuf) -> Arc<LayerStore> {
        let table = Table {
            nodes: vec![Node::Root],
            children: HashMap::new(),
        };
        Arc::new(LayerStore {
            svc,
            mounter,
            views,
            table: Mutex::new(table),
            layers: Mutex::new(HashMap::new()),
        })
    }

    fn attr_of(ino: u64, node: &Node) -> NodeAttr {
        let (kind, size, perm) = match node {
            // Only root may look anything up: a lookup resolves images with the daemon's
            // credentials (the mount is allow_other with default_permissions).
            Node::Root => (NodeKind::Dir, 0, 0o700),
            Node::Ref { .. } | Node::Layer(_) => (NodeKind::Dir, 0, 0o755),
            Node::Diff(l) => (NodeKind::Symlink, l.view.as_os_str().len() as u64, 0o777),
            Node::Info(l) => (NodeKind::File, l.info.len() as u64, 0o444),
            Node::Blob(l) => (NodeKind::File, l.size, 0o444),
        };
        NodeAttr {
            ino,
            kind,
            size,
            perm,
        }
    }

    /// Attributes of `ino`.
    fn attr(&self, ino: u64) -> Result<NodeAttr, i32> {
        let t = lock(&self.table);
        t.get(ino)
            .map(|n| Self::attr_of(ino, n))
            .ok_or(libc::ENOENT)
    }

    /// Look `name` up in directory `parent`; a layer digest in a reference directory resolves
    /// the image and mounts the layer's view (once).
    async fn find(self: &Arc<Self>, parent: u64, name: &str) -> Result<NodeAttr, i32> {
        enum Next {
            Ref(String),
            Layer(String),
            LayerFile(Arc<Layer>),
        }
        let next = {
            let t = lock(&self.table);
            if let Some(&ino) = t.children.get(&(parent, name.to_string())) {
                let node = t.get(ino).ok_or(libc::ENOENT)?;
                return Ok(Self::attr_of(ino, node));
            }
            match t.get(parent).ok_or(libc::ENOENT)? {
                Node::Root => Next::Ref(name.to_string()),
                Node::Ref { encoded } => match name.parse::<Digest>() {
                    Ok(_) => Next::Layer(encoded.clone()),
                    Err(_) => Next::Ref(format!("{encoded}/{name}")),
                },
                Node::Layer(l) => Next::LayerFile(l.clone()),
                _ => return Err(libc::ENOTDIR),
            }
        };
        let node = match next {
            Next::Ref(encoded) => {
                let b64 = |c: char| c.is_ascii_alphanumeric() || "+/=".contains(c);
                if encoded.len() > MAX_ENCODED || !encoded.chars().all(b64) {
                    return Err(libc::ENOENT);
                }
                Node::Ref { encoded }
            }
            Next::Layer(encoded) => {
                let reference = decode_reference(&encoded).ok_or(libc::ENOENT)?;
                let digest: Digest = name.parse().map_err(|_| libc::ENOENT)?;
                match self.layer(&reference, &digest).await {
                    Ok(Some(l)) => Node::Layer(l),
                    Ok(None) => return Err(libc::ENOENT),
                    Err(e) => {
                        tracing::warn!(image = %reference, layer = %digest, "additional layer store: {e}");
                        return Err(libc::ENOENT);
                    }
                }
            }
            Next::LayerFile(l) => match name {
                "diff" => Node::Diff(l),
                "info" => Node::Info(l),
                "blob" => Node::Blob(l),
                _ => return Err(libc::ENOENT),
            },
        };
        let mut t = lock(&self.table);
        let ino = t.add(parent, name, node);
        let node = t.get(ino).ok_or(libc::EIO)?;
        Ok(Self::attr_of(ino, node))
    }

    /// The layer `digest` of `reference`, resolved and its view mounted; `None` when the image
    /// has no such layer or some layer of it has no lazy index (not remembered: an index
    /// pushed later is found by the next lookup).
    async fn layer(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<Option<Arc<Layer>>, String> {
        let svc = &self.svc;
        let name = reference.to_string();
        let chain = |e: crate::image::Error| crate::report::chain(&e);
        let (mut reference, mut rec) = crate::image::resolve(&svc.client, &svc.store, &name, None)
            .await
            .map_err(chain)?;
        if !rec.layers.iter().any(|l| &l.digest == digest) && reference.digest.is_none() {
            // A tag known here may have moved in the registry since.
            (reference, rec) = crate::image::resolve_with(
                &svc.client,
                &svc.store,
                &name,
                None,
                crate::image::PullPolicy::Always,
            )
            .await
            .map_err(chain)?;
        }
        let Some(i) = rec.layers.iter().position(|l| &l.digest == digest) else {
            return Ok(None);
        };
        let pinned = reference.with_digest(rec.manifest_digest);
        let key = (pinned.to_string(), *digest);
        // One resolve and one view mount per layer; lookups of other layers go on meanwhile.
        let cell = lock(&self.layers).entry(key.clone()).or_default().clone();
        let r = cell
            .get_or_try_init(|| async {
                match self.open_layer(&reference, &rec, i, &pinned).await {
                    Ok(Some(l)) => Ok(l),
                    Ok(None) => Err(None),
                    Err(e) => Err(Some(e)),
                }
            })
            .await;
        match r {
            Ok(l) => Ok(Some(l.clone())),
            Err(None) => Ok(None),
            Err(Some(e)) => Err(e),
        }
    }

    /// Layer `i` of the image `rec` (`pinned`), if every layer has a lazy index: its `info`
    /// and its view, mounted.
    async fn open_layer(
        &self,
        reference: &Reference,
        rec: &crate::store::ImageRecord,
        i: usize,
        pinned: &Reference,
    ) -> Result<Option<Arc<Layer>>, String> {
        let svc = &self.svc;
        let found = crate::image::index::lazy_indexes(
            &svc.client,
            &svc.store,
            reference,
            rec,
            &Progress::silent(),
        )
        .await
        .map_err(|e| crate::report::chain(&e))?;
        let missing = found.iter().filter(|f| f.is_none()).count();
        if missing > 0 {
            tracing::info!(image = %pinned, "{missing} layer(s) without a lazy index: podman pulls this image itself");
            return Ok(None);
        }
        let (config, _) = svc
            .store
            .config(rec)
            .map_err(|e| crate::report::chain(&e))?;
        let diff_id = config
            .rootfs
            .diff_ids
            .get(i)
            .ok_or_else(|| format!("the config of {pinned} lists no diff id for layer {i}"))?;
        let desc = &rec.layers[i];
        let mut info = serde_json::json!({
            "compressed-diff-digest": desc.digest.to_string(),
            "compressed-size": desc.size,
            "diff-digest": diff_id.to_string(),
            "compression": compression(&desc.media_type),
        });
        if let Some(Some((index, _))) = found.get(i) {
            info["diff-size"] = index.meta().uncompressed_size.into();
        }
        let key = format!("{pinned}\n{}", desc.digest);
        let view = self.views.join(&Digest::of(key.as_bytes()).hex()[..32]);
        std::fs::create_dir_all(&view).map_err(|e| format!("{}: {e}", view.display()))?;
        let mounted = crate::fuse::is_mounted(&view);
        if mounted && std::fs::metadata(&view).is_err() {
            // Left by a daemon that is gone (ENOTCONN): mount it afresh.
            let _ = nix::mount::umount2(&view, nix::mount::MntFlags::MNT_DETACH);
        }
        if !mounted || !crate::fuse::is_mounted(&view) {
            self.mounter
                .mount_layer(pinned.to_string(), desc.digest, view.clone())
                .await
                .map_err(|e| crate::report::chain(&e))?;
        }
        tracing::info!(image = %pinned, layer = %desc.digest, view = %view.display(), "additional layer store: layer served lazily");
        Ok(Some(Arc::new(Layer {
            image: pinned.clone(),
            digest: desc.digest,
            size: desc.size,
            view,
            info: serde_json::to_vec(&info).map_err(|e| e.to_string())?,
            uses: AtomicI64::new(0),
        })))
    }

    /// Entries of directory `ino`: (inode, kind, name); only names looked up so far.
    fn entries(&self, ino: u64) -> Result<Vec<(u64, NodeKind, String)>, i32> {
        let t = lock(&self.table);
        match t.get(ino).ok_or(libc::ENOENT)? {
            Node::Root | Node::Ref { .. } | Node::Layer(_) => {}
            _ => return Err(libc::ENOTDIR),
        }
        let mut out: Vec<_> = t
            .children
            .iter()
            .filter(|((p, _), _)| *p == ino)
            .filter_map(|((_, name), &c)| {
                let n = t.get(c)?;
                Some((c, Self::attr_of(c, n).kind, name.clone()))
            })
            .collect();
        out.sort_by(|a, b| a.2.cmp(&b.2));
        Ok(out)
    }

    /// Target of the `diff` symlink `ino`.
    fn link(&self, ino: u64) -> Result<PathBuf, i32> {
        match lock(&self.table).get(ino) {
            Some(Node::Diff(l)) => Ok(l.view.clone()),
            Some(_) => Err(libc::EINVAL),
            None => Err(libc::ENOENT),
        }
    }

    /// Bytes `offset..offset+size` of file `ino` (`info` from memory, `blob` from the
    /// registry).
    async fn read_at(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
        let layer = match lock(&self.table).get(ino) {
            Some(Node::Info(l)) => {
                let start = (offset as usize).min(l.info.len());
                let end = start.saturating_add(size as usize).min(l.info.len());
                return Ok(l.info[start..end].to_vec());
            }
            Some(Node::Blob(l)) => l.clone(),
            Some(_) => return Err(libc::EISDIR),
            None => return Err(libc::ENOENT),
        };
        let end = offset.saturating_add(size as u64).min(layer.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        match self
            .svc
            .client
            .get_blob_range(&layer.image.repo(), &layer.digest, offset..end)
            .await
        {
            Ok(b) => Ok(b.to_vec()),
            Err(e) => {
                tracing::warn!(layer = %layer.digest, "additional layer store: blob read: {}", crate::report::chain(&e));
                Err(libc::EIO)
            }
        }
    }

    /// containers/storage creates `use` in a layer directory when it starts using the layer:
    /// counted; always ENOENT (the answer a notification-aware store gives).
    fn use_file(&self, parent: u64, name: &str) -> i32 {
        if name == "use" {
            if let Some(Node::Layer(l)) = lock(&self.table).get(parent) {
                let n = l.uses.fetch_add(1, Ordering::SeqCst) + 1;
                tracing::debug!(layer = %l.digest, uses = n, "additional layer in use");
            }
        } else {
            return libc::EROFS;
        }
        libc::ENOENT
    }

    /// containers/storage removes the layer directory when it stops using the layer:
    /// counted; ENOENT (nothing is removed: the view stays mounted, see the docs).
    fn release(&self, parent: u64, name: &str) -> i32 {
        let t = lock(&self.table);
        let child = t.children.get(&(parent, name.to_string()));
        if let Some(Node::Layer(l)) = child.and_then(|&c| t.get(c)) {
            let n = l.uses.fetch_sub(1, Ordering::SeqCst) - 1;
            tracing::debug!(layer = %l.digest, uses = n, "additional layer released");
        }
        libc::ENOENT
    }

    /// The views this store mounted.
    pub fn views(&self) -> Vec<PathBuf> {
        let t = lock(&self.table);
        t.nodes
            .iter()
            .filter_map(|n| match n {
                Node::Layer(l) => Some(l.view.clone()),
                _ => None,
            })
            .collect()
    }

    /// Where views are mounted.
    pub fn views_dir(&self) -> &Path {
        &self.views
    }
}

impl StoreFs for LayerStore {
    fn lookup(
        self: Arc<Self>,
        parent: u64,
        name: String,
    ) -> BoxFuture<'static, Result<NodeAttr, i32>> {
        Box::pin(async move { self.find(parent, &name).await })
    }
    fn getattr(&self, ino: u64) -> Result<NodeAttr, i32> {
        self.attr(ino)
    }
    fn readdir(&self, ino: u64) -> Result<Vec<(u64, NodeKind, String)>, i32> {
        self.entries(ino)
    }
    fn readlink(&self, ino: u64) -> Result<PathBuf, i32> {
        self.link(ino)
    }
    fn read(
        self: Arc<Self>,
        ino: u64,
        offset: u64,
        size: u32,
    ) -> BoxFuture<'static, Result<Vec<u8>, i32>> {
        Box::pin(async move { self.read_at(ino, offset, size).await })
    }
    fn create(&self, parent: u64, name: &str) -> i32 {
        self.use_file(parent, name)
    }
    fn rmdir(&self, parent: u64, name: &str) -> i32 {
        self.release(parent, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_references_and_compression() {
        let enc = base64::engine::general_purpose::STANDARD.encode("localhost:5000/big:latest");
        let r = decode_reference(&enc).expect("decodes");
        assert_eq!(r.repository, "big");
        assert!(decode_reference("not base64!").is_none());
        assert_eq!(
            compression("application/vnd.oci.image.layer.v1.tar+gzip"),
            2
        );
        assert_eq!(
            compression("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            2
        );
        assert_eq!(
            compression("application/vnd.oci.image.layer.v1.tar+zstd"),
            4
        );
        assert_eq!(compression("application/vnd.oci.image.layer.v1.tar"), 0);
    }
}
