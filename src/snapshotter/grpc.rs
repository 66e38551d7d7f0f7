//! containerd's snapshots.v1 gRPC service over the [`Snapshotter`]: the `containerd-snapshots`
//! crate (containerd/rust-extensions) provides the protos and the tonic service; this file
//! converts its types and our errors (NotFound, AlreadyExists, FailedPrecondition,
//! InvalidArgument, else Internal with the whole cause chain) and serves it on a unix socket.
//!
//! Calls the sibling snapshotter only.

use super::meta::{Kind, Record};
use super::{Error, MountSpec, Snapshotter};
use containerd_snapshots as cs;
use cs::tonic::{self, Status};
use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

fn status(e: Error) -> Status {
    let msg = crate::report::chain(&e);
    match e {
        Error::NotFound(_) => Status::not_found(msg),
        Error::AlreadyExists(_) => Status::already_exists(msg),
        Error::Precondition(_) => Status::failed_precondition(msg),
        Error::Invalid(_) => Status::invalid_argument(msg),
        _ => Status::internal(msg),
    }
}

fn info(key: String, r: Record) -> cs::Info {
    cs::Info {
        kind: match r.kind {
            Kind::View => cs::Kind::View,
            Kind::Active => cs::Kind::Active,
            Kind::Committed => cs::Kind::Committed,
        },
        name: key,
        parent: r.parent,
        labels: r.labels,
        created_at: r.created,
        updated_at: r.updated,
    }
}

fn mounts(m: Vec<MountSpec>) -> Vec<cs::api::types::Mount> {
    m.into_iter()
        .map(|m| cs::api::types::Mount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

/// The service: the snapshotter behind containerd's API.
struct Service(Arc<Snapshotter>);

type InfoStream = futures::stream::Iter<std::vec::IntoIter<Result<cs::Info, Status>>>;

#[tonic::async_trait]
impl cs::Snapshotter for Service {
    type Error = Status;

    async fn stat(&self, key: String) -> Result<cs::Info, Status> {
        let (k, r) = self.0.stat(&key).map_err(status)?;
        Ok(info(k, r))
    }

    async fn update(
        &self,
        i: cs::Info,
        fieldpaths: Option<Vec<String>>,
    ) -> Result<cs::Info, Status> {
        let fields = fieldpaths.unwrap_or_default();
        let r = self.0.update(&i.name, i.labels, &fields).map_err(status)?;
        Ok(info(i.name, r))
    }

    async fn usage(&self, key: String) -> Result<cs::Usage, Status> {
        let (size, inodes) = self.0.usage(&key).await.map_err(status)?;
        Ok(cs::Usage { inodes, size })
    }

    async fn mounts(&self, key: String) -> Result<Vec<cs::api::types::Mount>, Status> {
        self.0.mounts(&key).map(mounts).map_err(status)
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<cs::api::types::Mount>, Status> {
        tracing::debug!(%key, %parent, ?labels, "snapshot prepare");
        self.0
            .create(Kind::Active, &key, &parent, labels)
            .await
            .map(mounts)
            .map_err(status)
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<cs::api::types::Mount>, Status> {
        self.0
            .create(Kind::View, &key, &parent, labels)
            .await
            .map(mounts)
            .map_err(status)
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), Status> {
        self.0.commit(&name, &key, labels).await.map_err(status)
    }

    async fn remove(&self, key: String) -> Result<(), Status> {
        self.0.remove(&key).await.map_err(status)
    }

    async fn clear(&self) -> Result<(), Status> {
        self.0.cleanup().await.map_err(status)
    }

    type InfoStream = InfoStream;

    /// Every snapshot (containerd's metadata store above applies the filters).
    async fn list(
        &self,
        _snapshotter: String,
        _filters: Vec<String>,
    ) -> Result<InfoStream, Status> {
        let mut all: Vec<Result<cs::Info, Status>> = Vec::new();
        for (k, r) in self.0.list() {
            all.push(Ok(info(k, r)));
        }
        Ok(futures::stream::iter(all))
    }
}

/// A unix connection as tonic's server takes it.
struct Conn(tokio::net::UnixStream);

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Serve containerd's snapshots API on a new socket at `path` (a file left there is
/// replaced; mode 0600) until the returned task is aborted.
pub fn serve(snap: Arc<Snapshotter>, path: &Path) -> Result<tokio::task::JoinHandle<()>, Error> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    let incoming = futures::stream::unfold(listener, |l| async move {
        let c = l.accept().await.map(|(s, _)| Conn(s));
        Some((c, l))
    });
    let svc = cs::server(Arc::new(Service(snap)));
    let shown = path.display().to_string();
    Ok(tokio::spawn(async move {
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await
        {
            tracing::error!(socket = %shown, "containerd snapshotter service ended: {e}");
        }
    }))
}
