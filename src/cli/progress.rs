//! Progress bars of the commands whose downloads happen elsewhere: `run` and `mount` (the
//! daemon fetches whole layers of images without a lazy index) and `cache fetch` (the chunk
//! cache fetches every layer).
//!
//! [`LayerDownloads`] watches the store from this process: a whole-layer download is a temp
//! file `ROOT/tmp/<layer hex>.*` growing until it is renamed to `blobs/sha256/<hex>`, so a bar
//! per layer appears when its temp file does and finishes when the blob is published. Lazy
//! mounts download no whole layer and show nothing. [`CacheFetch`] follows the chunk cache's
//! fetched-bytes counter against the image's compressed size. Both are quiet (no bar, no
//! control characters) when stderr is not a terminal.

use crate::digest::Digest;
use crate::store::Store;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TICK: Duration = Duration::from_millis(100);

fn bar_style() -> Option<ProgressStyle> {
    ProgressStyle::with_template("{prefix}: {msg} [{bar:30}] {bytes}/{total_bytes}")
        .ok()
        .map(|s| s.progress_chars("=> "))
}

fn new_bar(multi: &MultiProgress, prefix: &str, msg: &str, total: u64) -> ProgressBar {
    let pb = multi.add(ProgressBar::new(total));
    if let Some(s) = bar_style() {
        pb.set_style(s);
    }
    pb.set_prefix(prefix.to_string());
    pb.set_message(msg.to_string());
    pb
}

/// Whether bars may be drawn: stderr is a terminal.
pub fn interactive() -> bool {
    std::io::stderr().is_terminal()
}

/// Bytes written so far to temp files of layer `hex` under `tmp`.
fn partial_bytes(tmp: &Path, hex: &str) -> Option<u64> {
    let prefix = format!("{hex}.");
    let mut found = None;
    for e in std::fs::read_dir(tmp).ok()?.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            found = Some(found.unwrap_or(0).max(len));
        }
    }
    found
}

/// Bars being drawn by a task of their own until [`Bars::finish`].
pub struct Bars {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Bars {
    /// Run `draw` (given the flag that asks it to make its final update and return).
    fn spawn<F>(draw: impl FnOnce(Arc<AtomicBool>) -> F) -> Bars
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(draw(stop.clone()));
        Bars { stop, task }
    }

    /// Final update, then stop drawing.
    pub async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
    }
}

/// Bars for whole-layer downloads by the daemon (see the module doc).
pub struct LayerDownloads;

impl LayerDownloads {
    /// Watch these layers. `None` when stderr is not a terminal.
    pub fn start_layers(store: Arc<Store>, layers: Vec<(Digest, u64)>) -> Option<Bars> {
        Self::start(store, layers, String::new())
    }

    /// Watch the layers of `image` (looked up in the store on every tick until the daemon
    /// has resolved it). `None` when stderr is not a terminal.
    pub fn start_image(store: Arc<Store>, image: String) -> Option<Bars> {
        Self::start(store, Vec::new(), image)
    }

    fn start(store: Arc<Store>, mut layers: Vec<(Digest, u64)>, image: String) -> Option<Bars> {
        if !interactive() {
            return None;
        }
        Some(Bars::spawn(|stop| async move {
            let multi = MultiProgress::new();
            let mut bars: HashMap<Digest, ProgressBar> = HashMap::new();
            let tmp = store.root().join("tmp");
            loop {
                let stopping = stop.load(Ordering::Relaxed);
                if layers.is_empty() && !image.is_empty() {
                    if let Ok(rec) = store.find_image(&image) {
                        layers = rec.layers.iter().map(|l| (l.digest, l.size)).collect();
                    }
                }
                for (d, size) in &layers {
                    let done = store.has_blob(d);
                    match (bars.get(d), done) {
                        (Some(pb), true) => {
                            if !pb.is_finished() {
                                pb.set_position(*size);
                                pb.finish_with_message("downloaded");
                            }
                        }
                        (Some(pb), false) => {
                            if let Some(n) = partial_bytes(&tmp, &d.hex()) {
                                pb.set_position(n);
                            }
                        }
                        (None, false) => {
                            if let Some(n) = partial_bytes(&tmp, &d.hex()) {
                                let pb = new_bar(&multi, &d.short(), "downloading", *size);
                                pb.set_position(n);
                                bars.insert(*d, pb);
                            }
                        }
                        (None, true) => {}
                    }
                }
                if stopping {
                    for pb in bars.values() {
                        if !pb.is_finished() {
                            pb.abandon();
                        }
                    }
                    break;
                }
                tokio::time::sleep(TICK).await;
            }
        }))
    }
}

/// One bar for `cache fetch`: compressed bytes fetched against the image's size.
pub struct CacheFetch;

impl CacheFetch {
    /// `fetched()` is read every tick; `None` when stderr is not a terminal.
    pub fn start(
        total: u64,
        fetched: impl Fn() -> u64 + Send + 'static,
        label: String,
    ) -> Option<Bars> {
        if !interactive() {
            return None;
        }
        Some(Bars::spawn(|stop| async move {
            let multi = MultiProgress::new();
            let pb = new_bar(&multi, &label, "fetching", total);
            let base = fetched();
            loop {
                let stopping = stop.load(Ordering::Relaxed);
                pb.set_position(fetched().saturating_sub(base).min(total));
                if stopping {
                    // Everything is cached now (what was cached before was not fetched).
                    pb.set_position(total);
                    pb.finish_with_message("fetched");
                    break;
                }
                tokio::time::sleep(TICK).await;
            }
        }))
    }
}
