//! Image operations that join the registry client and the store: resolve, pull, push, save,
//! load, commit/import/export, convert (to eStargz), and the artifacts published next to an image (layer index
//! sidecars in `index`, which of them to trust and indexes bound to the image in `bind`, cosign
//! signatures on them in `signed`,
//! SOCI indexes published by AWS's SOCI tools in `soci`, access profiles in `profile`).
//!
//! Calls `registry`, `store`, `layer`, `cache` (the blob source and windows of a sidecar
//! index) and `union::sys` (upper-directory conventions for commit); formats nothing for
//! humans (that is `cli/`), except progress reporting through [`Progress`]. Mounting is
//! `mount/`'s.

pub mod alias;
mod archive;
mod artifact;
pub mod bind;
pub mod commit;
pub mod convert;
pub mod head;
pub mod index;
pub mod profile;
mod pull;
mod push;
pub mod signed;
pub mod soci;
mod tail;
mod toc;

pub use archive::{load, save};
pub use pull::{
    pull, pull_first, record_image, resolve, resolve_early, resolve_first, resolve_with, EarlyHook,
    PullPolicy,
};
pub use push::push;

use crate::digest::Digest;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Registry(#[from] crate::registry::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error(transparent)]
    Reference(#[from] crate::reference::ReferenceError),
    #[error("layer {digest}: {source}")]
    Layer {
        digest: Digest,
        #[source]
        source: Box<Error>,
    },
    #[error("{what}: {msg}")]
    Invalid { what: String, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Progress reporting: indicatif bars on a TTY, one plain line per event otherwise.
#[derive(Clone)]
pub struct Progress {
    multi: Option<indicatif::MultiProgress>,
    quiet: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        use std::io::IsTerminal;
        let multi = (!quiet && std::io::stderr().is_terminal()).then(indicatif::MultiProgress::new);
        Progress { multi, quiet }
    }

    pub fn silent() -> Self {
        Progress {
            multi: None,
            quiet: true,
        }
    }

    /// A line of status (plain mode) or a message above the bars.
    pub fn line(&self, msg: &str) {
        if self.quiet {
            return;
        }
        match &self.multi {
            Some(m) => {
                let _ = m.println(msg);
            }
            None => println!("{msg}"),
        }
    }

    /// A byte counter for one blob; `None` in plain mode.
    pub fn bar(&self, id: &Digest, total: u64, verb: &str) -> Option<indicatif::ProgressBar> {
        let m = self.multi.as_ref()?;
        let pb = m.add(indicatif::ProgressBar::new(total));
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{prefix}: {msg} [{bar:30}] {bytes}/{total_bytes}",
        ) {
            pb.set_style(style.progress_chars("=> "));
        }
        pb.set_prefix(id.short());
        pb.set_message(verb.to_string());
        Some(pb)
    }
}
