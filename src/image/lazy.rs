//! Open an image lazily: resolve it, get every layer's index (see `index.rs`), and build the
//! union's view of it: one [`CacheLower`] per layer (bytes through the chunk cache) and the
//! merged tree. Nothing here downloads a layer unless no index can be found for it.

use super::index::{layer_indexes, IndexSource};
use super::{Error, Progress};
use crate::cache::{BlobSource, CachedLayer, ChunkCache, Layout, LocalBlob, RegistryBlob};
use crate::layer::Entry;
use crate::reference::Reference;
use crate::registry::manifest::ImageConfig;
use crate::registry::Client;
use crate::store::{ImageRecord, Store};
use crate::union::{LowerFile, LowerSource, MergedTree};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use std::path::PathBuf;
use std::sync::Arc;

/// A lower layer whose bytes come through the chunk cache.
pub struct CacheLower {
    pub cache: Arc<ChunkCache>,
    pub layer: Arc<CachedLayer>,
}

fn eio(msg: String) -> std::io::Error {
    std::io::Error::other(msg)
}

impl CacheLower {
    fn vrange(
        &self,
        file: &LowerFile,
        offset: u64,
        len: u32,
    ) -> std::io::Result<std::ops::Range<u64>> {
        let (start, n) = file.clamp(offset, len);
        let index = self.layer.layout.index();
        let entry = index.lookup(file.path()).ok_or_else(|| {
            eio(format!(
                "layer {}: {} not in index",
                self.layer.digest,
                file.path()
            ))
        })?;
        self.layer
            .layout
            .file_range(&entry, start..start + n as u64)
            .map_err(eio)
    }
}

impl LowerSource for CacheLower {
    fn read(
        &self,
        file: &LowerFile,
        offset: u64,
        len: u32,
    ) -> BoxFuture<'static, std::io::Result<Bytes>> {
        let r = self.vrange(file, offset, len);
        let (cache, layer) = (self.cache.clone(), self.layer.clone());
        async move {
            let r = r?;
            if r.is_empty() {
                return Ok(Bytes::new());
            }
            cache.read(&layer, r).await.map_err(|e| {
                tracing::error!("lazy read failed: {e}");
                eio(e.to_string())
            })
        }
        .boxed()
    }

    fn try_read_local(
        &self,
        file: &LowerFile,
        offset: u64,
        len: u32,
    ) -> Option<std::io::Result<Bytes>> {
        let r = match self.vrange(file, offset, len) {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        if r.is_empty() {
            return Some(Ok(Bytes::new()));
        }
        self.cache
            .try_read_local(&self.layer, r)
            .map(|res| res.map_err(|e| eio(e.to_string())))
    }

    fn local_path(&self, _file: &LowerFile) -> Option<PathBuf> {
        None
    }
}

/// An image ready to be mounted.
pub struct LazyImage {
    pub reference: Reference,
    pub record: ImageRecord,
    pub config: ImageConfig,
    pub layers: Vec<Arc<CachedLayer>>,
    pub index_sources: Vec<IndexSource>,
    pub tree: Arc<MergedTree>,
    pub lowers: Vec<Arc<dyn LowerSource>>,
}

/// Resolve indexes, make cached layers and build the merged tree.
pub async fn open(
    client: &Arc<Client>,
    store: &Arc<Store>,
    cache: &Arc<ChunkCache>,
    reference: &Reference,
    record: ImageRecord,
    progress: &Progress,
) -> Result<LazyImage, Error> {
    let (config, _) = store.config(&record)?;
    let indexes = layer_indexes(client, store, reference, &record, progress).await?;
    let mut layers = Vec::new();
    let mut lowers: Vec<Arc<dyn LowerSource>> = Vec::new();
    let mut sources = Vec::new();
    let mut entries: Vec<Vec<Entry>> = Vec::new();
    for (desc, (index, src)) in record.layers.iter().zip(indexes) {
        let source: Arc<dyn BlobSource> = if store.has_blob(&desc.digest) {
            Arc::new(LocalBlob {
                path: store.blob_path(&desc.digest),
            })
        } else {
            Arc::new(RegistryBlob {
                client: client.clone(),
                registry: reference.registry.clone(),
                repository: reference.repository.clone(),
                digest: desc.digest,
            })
        };
        entries.push(index.entries().map(|e| e.to_entry()).collect());
        let layer = Arc::new(CachedLayer {
            digest: desc.digest,
            layout: Layout::new(index),
            source,
        });
        lowers.push(Arc::new(CacheLower {
            cache: cache.clone(),
            layer: layer.clone(),
        }));
        layers.push(layer);
        sources.push(src);
    }
    let tree = tokio::task::spawn_blocking(move || MergedTree::build(&entries))
        .await
        .map_err(|e| Error::Invalid {
            what: reference.to_string(),
            msg: e.to_string(),
        })?
        .map_err(|e| Error::Invalid {
            what: format!("{reference}: merging layers"),
            msg: e.to_string(),
        })?;
    Ok(LazyImage {
        reference: reference.clone(),
        record,
        config,
        layers,
        index_sources: sources,
        tree: Arc::new(tree),
        lowers,
    })
}
