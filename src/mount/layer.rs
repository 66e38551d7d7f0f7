//! A read-only view of one layer of a lazily opened image, in the form kernel overlayfs takes
//! as a lower directory (whiteouts as character devices 0/0, opaque directories marked with
//! `trusted.overlay.opaque=y`, nothing of the other layers applied): what the containerd
//! snapshotter hands out as a remote snapshot. The image is opened as for a whole-image mount
//! (shared, indexes, cached layers), so bytes come through the same chunk cache.
//!
//! Calls `union` (the layer-view tree, `UnionFs`), `fuse` and the sibling assembly helpers.

use super::lower::{AccessProfile, CacheLower};
use super::{open_image, start, start_warm, Error, LazyImage, Served, Services};
use crate::digest::Digest;
use crate::image::Progress;
use crate::union::{LowerSource, MergedTree, UnionFs, UnionOptions};
use std::path::Path;
use std::sync::Arc;

/// The union serving layer `layer` of `lazy` alone, in overlay format.
pub(super) fn layer_union(
    svc: &Services,
    lazy: &LazyImage,
    layer: &Digest,
) -> Result<UnionFs, Error> {
    let i = lazy
        .record
        .layers
        .iter()
        .position(|l| &l.digest == layer)
        .ok_or_else(|| Error::NoSuchLayer {
            image: lazy.reference.to_string(),
            layer: *layer,
        })?;
    let cached = lazy.layers.get(i).ok_or_else(|| Error::NoSuchLayer {
        image: lazy.reference.to_string(),
        layer: *layer,
    })?;
    let entries: Vec<crate::layer::Entry> = cached
        .layout
        .index()
        .entries()
        .map(|e| e.to_entry())
        .collect();
    let tree = MergedTree::build_layer_view(&entries).map_err(|e| Error::Tree {
        image: format!("{} layer {layer}", lazy.reference),
        layers: 1,
        source: Box::new(e),
    })?;
    // A profile of its own: the image's profile numbers layers of the whole image.
    let lower: Arc<dyn LowerSource> = Arc::new(CacheLower {
        cache: svc.cache.clone(),
        layer: cached.clone(),
        profile: Arc::new(AccessProfile::default()),
        loads: Some(lazy.load_warm.clone()),
        rt: tokio::runtime::Handle::try_current().ok(),
    });
    let rt = tokio::runtime::Handle::current();
    let fs = UnionFs::new(Arc::new(tree), vec![lower], None, Some(rt))
        .map_err(|e| Error::Union(Box::new(e)))?;
    Ok(fs.with_options(UnionOptions {
        overlay_xattrs: true,
        ..Default::default()
    }))
}

/// FUSE options of a layer view: read-only, usable by overlayfs for any container user.
pub(super) fn layer_options(lazy: &LazyImage, layer: &Digest) -> crate::fuse::MountOptions {
    crate::fuse::MountOptions {
        read_only: true,
        allow_other: true,
        dev_suid: true,
        fsname: format!("strata-layer:{}@{}", lazy.reference, layer.short()),
        ..Default::default()
    }
}

/// Mount layer `layer` of `image` (a reference pinned by digest is best) read-only at
/// `mountpoint`, lazily; no background prefetch. `warm`: files of the whole image to read
/// at once (`warm.rs`; one view of an image is enough, they share the cache).
pub async fn mount_layer(
    svc: &Services,
    image: &str,
    layer: &Digest,
    mountpoint: &Path,
    warm: super::warm::WarmList,
) -> Result<Served, Error> {
    let started = std::time::Instant::now();
    let lazy = open_image(svc, image, None, &Progress::silent(), Default::default()).await?;
    start_warm(svc, &lazy, warm, false);
    let fs = layer_union(svc, &lazy, layer)?;
    let opts = layer_options(&lazy, layer);
    let rt = tokio::runtime::Handle::current();
    let handle = crate::fuse::mount(Arc::new(fs), mountpoint, opts, rt)?;
    Ok(start(
        svc,
        handle,
        lazy,
        false,
        (started, svc.cache.stats.snapshot()),
    ))
}
