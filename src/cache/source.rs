//! Where a layer's compressed bytes come from: the registry (Range requests through
//! `registry::Client`) or a local blob file. Knows nothing of spans or verification.

use crate::digest::Digest;
use crate::reference::Repository;
use crate::registry::Client;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

/// Why a [`BlobSource`] could not deliver a range. `Clone` (causes behind `Arc`) because a
/// fetch's result is shared by every reader waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("registry")]
    Registry(#[source] Arc<crate::registry::Error>),
    #[error("local blob {path}")]
    Local {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("reading local blob {path}: task failed")]
    Task {
        path: PathBuf,
        #[source]
        source: Arc<tokio::task::JoinError>,
    },
}

impl FetchError {
    /// `ETIMEDOUT` for a request that timed out, a local blob's own I/O errno, else `EIO`.
    pub fn errno(&self) -> i32 {
        use crate::registry::Error as R;
        match self {
            FetchError::Registry(e) => match &**e {
                R::Http { source, .. } if source.is_timeout() => libc::ETIMEDOUT,
                R::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
                _ => libc::EIO,
            },
            FetchError::Local { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            FetchError::Task { .. } => libc::EIO,
        }
    }
}

/// Compressed bytes of one layer blob, by range.
pub trait BlobSource: Send + Sync {
    fn fetch(&self, range: Range<u64>) -> BoxFuture<'static, Result<Bytes, FetchError>>;

    /// Bytes this source delivered failed verification: where it can choose (a registry's
    /// mirrors), the next fetch should come from elsewhere.
    fn distrust(&self) {}

    /// Whether the whole blob was verified against its digest already (a blob of the local
    /// store): the whole-layer check is then not needed.
    fn verified_whole(&self) -> bool {
        false
    }

    /// The blob, fetched whole, did not match its digest: stop using every mirror that
    /// served part of it; returns them.
    fn drop_servers(&self) -> Vec<String> {
        Vec::new()
    }

    /// The fastest its server has answered any request so far, if the source knows (a
    /// registry client's [`Client::fastest_answer`]).
    fn fastest_answer(&self) -> Option<std::time::Duration> {
        None
    }
}

/// A blob in a registry (mirrors first, as the client is configured).
pub struct RegistryBlob {
    pub client: Arc<Client>,
    pub repo: Repository,
    pub digest: Digest,
    /// Read in small scattered pieces (a sidecar's gzip windows): asked with
    /// `Client::get_blob_piece`, which a slicing mirror caches by smaller slices.
    pub small_pieces: bool,
}

impl BlobSource for RegistryBlob {
    fn fetch(&self, range: Range<u64>) -> BoxFuture<'static, Result<Bytes, FetchError>> {
        let client = self.client.clone();
        let (repo, d, small) = (self.repo.clone(), self.digest, self.small_pieces);
        async move {
            let got = match small {
                true => client.get_blob_piece(&repo, &d, range).await,
                false => client.get_blob_range(&repo, &d, range).await,
            };
            got.map_err(|e| FetchError::Registry(Arc::new(e)))
        }
        .boxed()
    }

    fn distrust(&self) {
        self.client.distrust_mirrors(&self.repo, &self.digest);
    }

    fn drop_servers(&self) -> Vec<String> {
        self.client.drop_mirrors_that_served(&self.digest)
    }

    fn fastest_answer(&self) -> Option<std::time::Duration> {
        self.client.fastest_answer()
    }
}

/// A blob already in the local store.
pub struct LocalBlob {
    pub path: PathBuf,
}

impl BlobSource for LocalBlob {
    fn verified_whole(&self) -> bool {
        true
    }

    fn fetch(&self, range: Range<u64>) -> BoxFuture<'static, Result<Bytes, FetchError>> {
        let path = self.path.clone();
        async move {
            let p = path.clone();
            let read = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let f = std::fs::File::open(&p)?;
                let mut buf = vec![0u8; (range.end - range.start) as usize];
                f.read_exact_at(&mut buf, range.start)?;
                Ok::<_, std::io::Error>(Bytes::from(buf))
            })
            .await;
            match read {
                Ok(Ok(b)) => Ok(b),
                Ok(Err(e)) => Err(FetchError::Local {
                    path,
                    source: Arc::new(e),
                }),
                Err(e) => Err(FetchError::Task {
                    path,
                    source: Arc::new(e),
                }),
            }
        }
        .boxed()
    }
}
