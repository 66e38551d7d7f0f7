//! Content-addressed local store under `$STRATA_ROOT`.
//!
//! Layout: `blobs/sha256/<hex>` (verified before visible), `tmp/` (in-progress writes, cleaned of
//! dead writers at open), `refs.json` (name:tag -> image), `images/<manifest-hex>.json` (image
//! records), `indexes/`, `containers/`. Uses `digest`, `reference`, `oci` types
//! only; it never talks to the network (nor knows the registry client).

mod blobs;

pub use blobs::BlobWriter;

use crate::digest::Digest;
use crate::oci::{Descriptor, ImageConfig};
use crate::reference::Reference;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: digest mismatch: expected {expected}, got {got}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        got: Digest,
    },
    #[error("{path}: corrupt store record: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("No such image: {0}")]
    NoSuchImage(String),
    #[error("{0}")]
    Conflict(String),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What the store knows of one image (one platform manifest).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    pub config_digest: Digest,
    pub layers: Vec<Descriptor>,
    /// Digests a registry knows this image by (`name@digest`), e.g. the index digest.
    #[serde(default)]
    pub repo_digests: BTreeSet<String>,
    /// Index (manifest list) blobs kept so `save`/`push` can reproduce the repo digest.
    #[serde(default)]
    pub index_digest: Option<Digest>,
    pub created: Option<String>,
    pub platform: String,
    pub stored_at: String,
    /// Whether every layer blob is in `blobs/` (false for lazily mounted images).
    #[serde(default)]
    pub complete: bool,
}

impl ImageRecord {
    /// Docker's image id: the config digest.
    pub fn id(&self) -> Digest {
        self.config_digest
    }

    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Refs {
    /// `registry/repo:tag` -> manifest digest
    tags: BTreeMap<String, Digest>,
}

/// The store. All methods take `&self`; record updates are serialised by a file lock.
pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn open(root: &Path) -> Result<Store, Error> {
        for d in [
            "blobs/sha256",
            "tmp",
            "images",
            "indexes",
            "containers",
            "cache",
            "mounts",
        ] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        }
        let store = Store {
            root: root.to_path_buf(),
        };
        store.clean_tmp();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// A fresh temp path tagged with our pid, so a later process can tell stale ones apart.
    pub fn temp_path(&self, stem: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{stem}.{}.{n}", std::process::id()))
    }

    /// Remove temp files left by processes that no longer run (kill -9, power loss).
    fn clean_tmp(&self) {
        let Ok(rd) = std::fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.rsplit('.').nth(1).and_then(|p| p.parse::<i32>().ok());
            let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).exists()
    }

    pub fn blob_writer(
        &self,
        expected: Digest,
        what: impl Into<String>,
    ) -> Result<BlobWriter, Error> {
        BlobWriter::new(self, expected, what.into())
    }

    /// Write a whole blob held in memory (verified).
    pub fn put_blob(&self, expected: Digest, data: &[u8], what: &str) -> Result<(), Error> {
        if self.has_blob(&expected) {
            return Ok(());
        }
        let mut w = self.blob_writer(expected, what)?;
        w.write(data)?;
        w.commit()
    }

    /// Read a small blob and re-verify it (manifests, configs).
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, Error> {
        let p = self.blob_path(d);
        let data = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        let got = Digest::of(&data);
        if got != *d {
            return Err(Error::DigestMismatch {
                what: p.display().to_string(),
                expected: *d,
                got,
            });
        }
        Ok(data)
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<std::fs::File>, Error> {
        let p = self.root.join(".lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| Error::io(&p, e))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::io(&p, std::io::Error::from(e)))
    }

    /// Atomically write a JSON record.
    pub fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), Error> {
        use std::io::Write;
        let tmp = self.temp_path("record");
        let body = serde_json::to_vec_pretty(value)
            .map_err(|e| Error::io(path, std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(&body)
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }

    pub fn read_json<T: for<'de> Deserialize<'de>>(&self, path: &Path) -> Result<Option<T>, Error> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| Error::Corrupt {
                    path: path.to_path_buf(),
                    source,
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn refs_path(&self) -> PathBuf {
        self.root.join("refs.json")
    }

    fn image_path(&self, manifest: &Digest) -> PathBuf {
        self.root
            .join("images")
            .join(format!("{}.json", manifest.hex()))
    }

    fn load_refs(&self) -> Result<Refs, Error> {
        Ok(self.read_json(&self.refs_path())?.unwrap_or_default())
    }

    pub fn put_image(&self, rec: &ImageRecord) -> Result<(), Error> {
        let _l = self.lock()?;
        let path = self.image_path(&rec.manifest_digest);
        let mut rec = rec.clone();
        if let Some(old) = self.read_json::<ImageRecord>(&path)? {
            rec.repo_digests.extend(old.repo_digests);
            rec.complete |= old.complete;
        }
        self.write_json(&path, &rec)
    }

    pub fn get_image(&self, manifest: &Digest) -> Result<Option<ImageRecord>, Error> {
        self.read_json(&self.image_path(manifest))
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>, Error> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .flatten()
        {
            if e.path().extension().is_some_and(|x| x == "json") {
                if let Some(r) = self.read_json::<ImageRecord>(&e.path())? {
                    out.push(r);
                }
            }
        }
        out.sort_by(|a, b| b.stored_at.cmp(&a.stored_at));
        Ok(out)
    }

    /// Point `name:tag` at an image (the image record must exist).
    pub fn tag(&self, reference: &Reference, manifest: &Digest) -> Result<(), Error> {
        let Some(tag) = &reference.tag else {
            return Err(Error::Conflict(format!(
                "{reference}: a tag is needed to name an image"
            )));
        };
        let _l = self.lock()?;
        let mut refs = self.load_refs()?;
        refs.tags
            .insert(format!("{}:{tag}", reference.name()), *manifest);
        self.write_json(&self.refs_path(), &refs)
    }

    /// All `name:tag` -> manifest pairs.
    pub fn tags(&self) -> Result<BTreeMap<String, Digest>, Error> {
        Ok(self.load_refs()?.tags)
    }

    /// Tags pointing at a manifest.
    pub fn tags_of(&self, manifest: &Digest) -> Result<Vec<String>, Error> {
        Ok(self
            .tags()?
            .into_iter()
            .filter(|(_, d)| d == manifest)
            .map(|(k, _)| k)
            .collect())
    }

    pub fn untag(&self, name_tag: &str) -> Result<bool, Error> {
        let _l = self.lock()?;
        let mut refs = self.load_refs()?;
        let removed = refs.tags.remove(name_tag).is_some();
        if removed {
            self.write_json(&self.refs_path(), &refs)?;
        }
        Ok(removed)
    }

    /// Find a local image by `name:tag`, `name@digest`, manifest digest, or image-id prefix.
    pub fn find_image(&self, query: &str) -> Result<ImageRecord, Error> {
        let images = self.images()?;
        let q = query.strip_prefix("sha256:").unwrap_or(query);
        if q.len() >= 4 && q.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<&ImageRecord> = images
                .iter()
                .filter(|i| {
                    i.config_digest.hex().starts_with(q) || i.manifest_digest.hex().starts_with(q)
                })
                .collect();
            let ids: BTreeSet<Digest> = hits.iter().map(|i| i.manifest_digest).collect();
            if ids.len() == 1 {
                return Ok(hits[0].clone());
            }
            if ids.len() > 1 {
                return Err(Error::Conflict(format!(
                    "{query}: ambiguous image id prefix ({} images match)",
                    ids.len()
                )));
            }
        }
        if let Ok(r) = query.parse::<Reference>() {
            if let Some(d) = r.digest {
                if let Some(img) = images.iter().find(|i| {
                    i.manifest_digest == d
                        || i.index_digest == Some(d)
                        || i.repo_digests.contains(&format!("{}@{d}", r.name()))
                }) {
                    return Ok(img.clone());
                }
            } else if let Some(tag) = &r.tag {
                if let Some(m) = self.tags()?.get(&format!("{}:{tag}", r.name())) {
                    if let Some(img) = self.get_image(m)? {
                        return Ok(img);
                    }
                }
            }
        }
        Err(Error::NoSuchImage(query.to_string()))
    }

    /// Delete an image record and every blob no remaining image uses. Returns deleted digests.
    pub fn delete_image(&self, manifest: &Digest) -> Result<Vec<Digest>, Error> {
        let _l = self.lock()?;
        let Some(rec) = self.get_image(manifest)? else {
            return Err(Error::NoSuchImage(manifest.to_string()));
        };
        let path = self.image_path(manifest);
        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        // stored merged trees of this image (`trees/<manifest hex>-<key>.tree`)
        let prefix = format!("{}-", manifest.hex());
        if let Ok(rd) = std::fs::read_dir(self.root.join("trees")) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let mut in_use = BTreeSet::new();
        for other in self.images()? {
            in_use.insert(other.manifest_digest);
            in_use.insert(other.config_digest);
            in_use.extend(other.index_digest);
            in_use.extend(other.layers.iter().map(|l| l.digest));
        }
        let mut candidates = vec![rec.manifest_digest, rec.config_digest];
        candidates.extend(rec.index_digest);
        candidates.extend(rec.layers.iter().map(|l| l.digest));
        let mut deleted = Vec::new();
        for d in candidates {
            if !in_use.contains(&d) && self.has_blob(&d) {
                let p = self.blob_path(&d);
                std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
                deleted.push(d);
            }
        }
        Ok(deleted)
    }

    /// Delete blobs no image record names (left by an interrupted pull or `rmi` of another
    /// tool) whose last change is older than `min_age`, so a pull or commit still writing its
    /// blobs before the record is not raced. Returns (blobs deleted, bytes freed).
    pub fn gc_blobs(&self, min_age: std::time::Duration) -> Result<(usize, u64), Error> {
        let _l = self.lock()?;
        let mut in_use = BTreeSet::new();
        for rec in self.images()? {
            in_use.insert(rec.manifest_digest.hex());
            in_use.insert(rec.config_digest.hex());
            in_use.extend(rec.index_digest.map(|d| d.hex()));
            in_use.extend(rec.layers.iter().map(|l| l.digest.hex()));
        }
        let dir = self.root.join("blobs/sha256");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Ok((0, 0));
        };
        let (mut n, mut bytes) = (0, 0);
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(m) = e.metadata() else { continue };
            let old = m
                .modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= min_age);
            if !m.is_file() || in_use.contains(&name) || !old || name.len() != 64 {
                continue;
            }
            std::fs::remove_file(e.path()).map_err(|err| Error::io(&e.path(), err))?;
            n += 1;
            bytes += m.len();
        }
        Ok((n, bytes))
    }

    /// Parsed config of an image.
    pub fn config(&self, rec: &ImageRecord) -> Result<(ImageConfig, serde_json::Value), Error> {
        let raw = self.read_blob(&rec.config_digest)?;
        let path = self.blob_path(&rec.config_digest);
        let cfg = serde_json::from_slice(&raw).map_err(|source| Error::Corrupt {
            path: path.clone(),
            source,
        })?;
        let val = serde_json::from_slice(&raw).map_err(|source| Error::Corrupt { path, source })?;
        Ok((cfg, val))
    }

    /// Bytes used under a subdirectory of the root.
    pub fn du(&self, sub: &str) -> u64 {
        fn walk(p: &Path) -> u64 {
            let Ok(rd) = std::fs::read_dir(p) else {
                return 0;
            };
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.root.join(sub))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_write_verifies_and_leaves_nothing_on_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let good = Digest::of(b"hello");
        s.put_blob(good, b"hello", "test").unwrap();
        assert_eq!(s.read_blob(&good).unwrap(), b"hello");
        let other = Digest::of(b"other");
        let err = s.put_blob(other, b"not other", "layer x").unwrap_err();
        assert!(err.to_string().contains("layer x"), "{err}");
        assert!(!s.has_blob(&other));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn stale_temp_files_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        // pid 0 never names a live process in /proc
        std::fs::write(dir.path().join("tmp/abc.999999999.0"), b"partial").unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
    }
}
