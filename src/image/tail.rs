//! Where the tail of a head-only layer index comes from: an index fetched from a sidecar as
//! its head alone records the sidecar blob (`indexes/<layer>.windows-from`), and its block
//! record groups (format 5) and gzip windows are fetched from that blob's block and window
//! sections as spans need them (`cache::RemoteWindows`), their local copies kept in
//! `indexes/<layer>.groups/` and `indexes/<layer>.windows/`. Paths and the two sources only;
//! `index.rs` writes the record, `cache/` does the fetching.

use crate::digest::Digest;
use crate::layer::LayerIndex;
use crate::reference::Reference;
use crate::registry::Client;
use crate::store::Store;
use std::path::PathBuf;
use std::sync::Arc;

/// Where a head-only index (from a sidecar) records the blob its windows are in.
pub(super) fn windows_from_path(store: &Store, layer: &Digest) -> PathBuf {
    store
        .root()
        .join("indexes")
        .join(format!("{}.windows-from", layer.hex()))
}

/// Local copies of a head-only index's windows, one file per checkpoint.
pub(super) fn windows_dir(store: &Store, layer: &Digest) -> PathBuf {
    store
        .root()
        .join("indexes")
        .join(format!("{}.windows", layer.hex()))
}

/// Local copies of a head-only index's block record groups, one file per group (the path
/// `cache::Layout` reads them back from: the index file's path + `.groups`).
pub(super) fn groups_dir(store: &Store, layer: &Digest) -> PathBuf {
    store
        .root()
        .join("indexes")
        .join(format!("{}.groups", layer.hex()))
}

/// The sidecar blob holding the windows of a head-only index.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct WindowsFrom {
    pub(super) blob: Digest,
    pub(super) head: u64,
}

/// Where a layer's gzip windows and block record groups are fetched from.
pub type RemoteTail = (
    Option<Arc<crate::cache::RemoteWindows>>,
    Option<Arc<crate::cache::RemoteWindows>>,
);

/// For a layer whose local index holds only its head: where its gzip windows and its block
/// record groups are fetched from (the sidecar blob in `reference`'s repository); `None` for
/// what the index has.
pub fn remote_tail(
    client: &Arc<Client>,
    store: &Store,
    reference: &Reference,
    layer: &Digest,
    index: &LayerIndex,
) -> RemoteTail {
    let Some(t) = index.seek_table().filter(|t| !t.tail_local()) else {
        return (None, None);
    };
    let Some(from) = store
        .read_json::<WindowsFrom>(&windows_from_path(store, layer))
        .ok()
        .flatten()
    else {
        return (None, None);
    };
    let src: Arc<dyn crate::cache::BlobSource> = Arc::new(crate::cache::RegistryBlob {
        client: client.clone(),
        repo: reference.repo(),
        digest: from.blob,
        small_pieces: true,
    });
    let windows = (!t.windows_local()).then(|| {
        crate::cache::RemoteWindows::new(
            src.clone(),
            from.head + t.block_section_len(),
            windows_dir(store, layer),
        )
    });
    let groups = (!t.blocks_local())
        .then(|| crate::cache::RemoteWindows::groups(src, from.head, groups_dir(store, layer)));
    (windows, groups)
}
