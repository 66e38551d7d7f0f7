//! Verified blob writes: temp file -> sha256 check -> fsync -> rename. Nothing partial is ever
//! visible under `blobs/`.

use super::{Error, Store};
use crate::digest::{Digest, Verifier};
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

/// A blob being written. Dropped without [`BlobWriter::commit`], its temp file is removed.
pub struct BlobWriter {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
    verifier: Verifier,
    expected: Digest,
    what: String,
}

impl BlobWriter {
    pub(super) fn new(store: &Store, expected: Digest, what: String) -> Result<Self, Error> {
        let tmp = store.temp_path(&expected.hex());
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(BlobWriter {
            file: Some(file),
            tmp,
            dest: store.blob_path(&expected),
            verifier: Verifier::new(expected),
            expected,
            what,
        })
    }

    pub fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.verifier.update(data);
        match self.file.as_mut() {
            Some(f) => f.write_all(data).map_err(|e| Error::io(&self.tmp, e)),
            None => Ok(()),
        }
    }

    pub fn written(&self) -> u64 {
        self.verifier.len()
    }

    /// Verify the digest, fsync and publish. On mismatch the temp file is removed.
    pub fn commit(mut self) -> Result<(), Error> {
        let verifier = std::mem::replace(&mut self.verifier, Verifier::new(self.expected));
        let (got, ok) = verifier.finish();
        if !ok {
            return Err(Error::DigestMismatch {
                what: self.what.clone(),
                expected: self.expected,
                got,
            });
        }
        if let Some(f) = self.file.take() {
            f.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        }
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
        if let Some(dir) = self.dest.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.tmp.exists() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
