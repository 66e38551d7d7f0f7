//! Where a layer's compressed bytes come from: the registry (Range requests) or a local blob.

use crate::digest::Digest;
use crate::reference::Repository;
use crate::registry::Client;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

/// Compressed bytes of one layer blob, by range.
pub trait BlobSource: Send + Sync {
    fn fetch(&self, range: Range<u64>) -> BoxFuture<'static, Result<Bytes, String>>;
}

/// A blob in a registry (mirrors first, as the client is configured).
pub struct RegistryBlob {
    pub client: Arc<Client>,
    pub repo: Repository,
    pub digest: Digest,
}

impl BlobSource for RegistryBlob {
    fn fetch(&self, range: Range<u64>) -> BoxFuture<'static, Result<Bytes, String>> {
        let client = self.client.clone();
        let (repo, d) = (self.repo.clone(), self.digest);
        async move {
            client
                .get_blob_range(&repo, &d, range)
                .await
                .map_err(|e| e.to_string())
        }
        .boxed()
    }
}

/// A blob already in the local store.
pub struct LocalBlob {
    pub path: PathBuf,
}

impl BlobSource for LocalBlob {
    fn fetch(&self, range: Range<u64>) -> BoxFuture<'static, Result<Bytes, String>> {
        let path = self.path.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let f =
                    std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let mut buf = vec![0u8; (range.end - range.start) as usize];
                f.read_exact_at(&mut buf, range.start)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(Bytes::from(buf))
            })
            .await
            .map_err(|e| e.to_string())?
        }
        .boxed()
    }
}
