//! The server's side of containerd's snapshots API: the snapshotter has its layer views and
//! union mounts mounted as mounts of this daemon ([`LayerMounter`], used by podman's layer
//! stores too), and [`start_snapshotter`] serves the API. Calls the parent's `mount` and
//! `unmount`, and `snapshotter`.

use super::{mount, unmount, State};
use crate::daemon::MountRequest;
use std::path::PathBuf;
use std::sync::Arc;

/// The containerd snapshotter's way to have layer views and union mounts mounted: as mounts
/// of this daemon.
pub(super) struct LayerMounter(pub(super) Arc<State>);

impl LayerMounter {
    /// Mount `req` (an image mountable by any user of the host: containers run as anyone).
    fn mount(&self, req: MountRequest) -> futures::future::BoxFuture<'static, MountResult> {
        let state = self.0.clone();
        Box::pin(async move { mount(&state, req).await.map(|_| ()) })
    }
}

type MountResult = Result<(), crate::mount::Error>;

impl crate::snapshotter::Mounter for LayerMounter {
    fn mount_layer(
        &self,
        image: String,
        layer: crate::digest::Digest,
        mountpoint: PathBuf,
    ) -> futures::future::BoxFuture<'static, MountResult> {
        self.mount(MountRequest::layer_view(
            image,
            layer,
            mountpoint,
            Vec::new(),
        ))
    }

    fn mount_image(
        &self,
        image: String,
        upper: (PathBuf, PathBuf),
        mountpoint: PathBuf,
        warm: crate::mount::warm::WarmList,
    ) -> futures::future::BoxFuture<'static, MountResult> {
        self.mount(MountRequest {
            image,
            platform: None,
            mountpoint,
            upper: Some(upper),
            prefetch: self.0.svc.config.prefetch,
            passthrough: false,
            allow_other: true,
            layer: None,
            warm,
        })
    }

    fn unmount(
        &self,
        mountpoint: PathBuf,
    ) -> futures::future::BoxFuture<'static, Result<(), crate::mount::Error>> {
        let state = self.0.clone();
        Box::pin(async move { unmount(&state, mountpoint, true).await })
    }
}

/// Serve containerd's snapshots API on `ROOT/containerd-snapshotter.sock` and mount again
/// the remote layers no handed-down connection brought back. A failure to start it is
/// logged: the daemon's own mounts are served regardless.
pub(super) fn start_snapshotter(state: &Arc<State>) -> Option<tokio::task::JoinHandle<()>> {
    let mounter = Arc::new(LayerMounter(state.clone()));
    let snap = match crate::snapshotter::Snapshotter::open(state.svc.clone(), mounter) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("containerd snapshotter: {}", crate::report::chain(&e));
            return None;
        }
    };
    let path = state.svc.store.root().join(crate::snapshotter::SOCKET);
    let task = match crate::snapshotter::serve(snap.clone(), &path) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("containerd snapshotter: {}", crate::report::chain(&e));
            return None;
        }
    };
    tokio::spawn(async move { snap.reattach().await });
    Some(task)
}
