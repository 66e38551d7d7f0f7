//! A union of plain directories (`strata overlay`, fuse-overlayfs compatible): lower
//! directories read as they are looked into (`union::DirTree`), an optional upper, mounted
//! with `fuse`. Argument syntax and checks are `cli/overlay.rs`'s; this is the assembly.
//!
//! Calls `union` (DirLower, DirTree, Upper, UnionFs) and `fuse`; nothing else.

use super::Error;
use crate::fuse::{MountHandle, MountOptions};
use crate::union::{DirLower, DirTree, LowerSource, UnionFs, UnionOptions, Upper};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Build the union over checked paths. Only the lower roots are read here: each lower
/// directory is read when it is first looked into (see `union::DirTree`).
pub fn build_union(
    lowers_bottom_first: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    rt: Option<tokio::runtime::Handle>,
) -> Result<UnionFs, crate::union::Error> {
    let tree = Arc::new(DirTree::open(lowers_bottom_first)?);
    let sources: Vec<Arc<dyn LowerSource>> = lowers_bottom_first
        .iter()
        .map(|l| Arc::new(DirLower::at(l)) as Arc<dyn LowerSource>)
        .collect();
    let up = match upper {
        Some((u, w)) => Some(Upper::open(u, w)?),
        None => None,
    };
    Ok(
        UnionFs::new(tree, sources, up, rt)?.with_options(UnionOptions {
            allow_chardev00: true,
            ..Default::default()
        }),
    )
}

/// Build the union of `lowers_bottom_first` (+ `upper` as (upper, work)) off the async
/// threads and mount it at `mountpoint`.
pub async fn mount_dirs(
    lowers_bottom_first: Vec<PathBuf>,
    upper: Option<(PathBuf, PathBuf)>,
    mountpoint: &Path,
    opts: MountOptions,
) -> Result<MountHandle, Error> {
    let rt = tokio::runtime::Handle::current();
    let rt2 = rt.clone();
    let fs = tokio::task::spawn_blocking(move || {
        let up = upper.as_ref().map(|(u, w)| (u.as_path(), w.as_path()));
        build_union(&lowers_bottom_first, up, Some(rt2))
    })
    .await
    .map_err(|source| Error::Join {
        what: "building the union".into(),
        source,
    })?
    .map_err(|e| Error::Union(Box::new(e)))?;
    Ok(crate::fuse::mount(Arc::new(fs), mountpoint, opts, rt)?)
}
