//! The snapshotter's persistent metadata: every snapshot (key or committed name -> kind,
//! parent, labels, times, its directory id, for a remote snapshot the layer it views, for an
//! active snapshot served as a union mount the image),
//! kept in one JSON file (`ROOT/snapshots/meta.json`, written temp + fsync + rename after
//! every change), so Stat/Walk/Mounts/Usage answer the same after a daemon restart. Pure
//! bookkeeping: no mounts, no network; the rules (parents committed, no removal under a
//! child, unique names) live here so they can be tested without containerd.
//!
//! Calls `store` (atomic JSON writes) only.

use super::Error;
use crate::digest::Digest;
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What a snapshot is, as containerd names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    View,
    Active,
    Committed,
}

/// A committed snapshot that is a lazily served layer (no directory of extracted files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remote {
    /// The image, pinned to its manifest digest (`host/repo@sha256:...`).
    pub image: String,
    pub layer: Digest,
}

/// One snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Its directory: `ROOT/snapshots/<id>/`.
    pub id: u64,
    pub kind: Kind,
    /// Key of the parent (a committed snapshot); empty for none.
    pub parent: String,
    pub labels: HashMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
    #[serde(default)]
    pub remote: Option<Remote>,
    /// An active snapshot served as one strata union mount of this image (pinned) at
    /// `<dir>/rootfs`, its upper `<dir>/fs` (config `snapshotter-rootfs: union`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub union: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Table {
    next_id: u64,
    snapshots: BTreeMap<String, Record>,
}

/// The metadata table and where it is kept.
pub struct Meta {
    dir: PathBuf,
    file: PathBuf,
    t: Table,
}

impl Meta {
    /// Open (or start) the table under `ROOT/snapshots`.
    pub fn open(store: &Store) -> Result<Meta, Error> {
        let dir = store.root().join("snapshots");
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        let file = dir.join("meta.json");
        let t = store.read_json::<Table>(&file)?.unwrap_or_default();
        Ok(Meta { dir, file, t })
    }

    fn save(&self, store: &Store) -> Result<(), Error> {
        Ok(store.write_json(&self.file, &self.t)?)
    }

    /// The directory of snapshot `id`.
    pub fn dir_of(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string())
    }

    pub fn root(&self) -> &Path {
        &self.dir
    }

    pub fn get(&self, key: &str) -> Result<&Record, Error> {
        self.t
            .snapshots
            .get(key)
            .ok_or_else(|| Error::NotFound(key.to_string()))
    }

    pub fn contains(&self, key: &str) -> bool {
        self.t.snapshots.contains_key(key)
    }

    pub fn all(&self) -> impl Iterator<Item = (&String, &Record)> {
        self.t.snapshots.iter()
    }

    /// The chain of committed parents of `key`, nearest first (not `key` itself).
    pub fn parents(&self, key: &str) -> Result<Vec<(&str, &Record)>, Error> {
        let mut out = Vec::new();
        let mut p = self.get(key)?.parent.as_str();
        while !p.is_empty() {
            let (k, r) = self
                .t
                .snapshots
                .get_key_value(p)
                .ok_or_else(|| Error::NotFound(p.to_string()))?;
            out.push((k.as_str(), r));
            if out.len() > 10_000 {
                return Err(Error::Invalid(format!("parent chain of {key} loops")));
            }
            p = r.parent.as_str();
        }
        Ok(out)
    }

    /// Add a snapshot `key` of `kind` over `parent` (empty: none); its record.
    pub fn add(
        &mut self,
        store: &Store,
        key: &str,
        kind: Kind,
        parent: &str,
        labels: HashMap<String, String>,
        remote: Option<Remote>,
    ) -> Result<Record, Error> {
        if key.is_empty() {
            return Err(Error::Invalid("empty snapshot key".into()));
        }
        if self.contains(key) {
            return Err(Error::AlreadyExists(key.to_string()));
        }
        if !parent.is_empty() {
            let p = self.get(parent)?;
            if p.kind != Kind::Committed {
                return Err(Error::Precondition(format!(
                    "parent {parent} is not committed"
                )));
            }
        }
        self.t.next_id += 1;
        let now = SystemTime::now();
        let rec = Record {
            id: self.t.next_id,
            kind,
            parent: parent.to_string(),
            labels,
            created: now,
            updated: now,
            remote,
            union: None,
        };
        self.t.snapshots.insert(key.to_string(), rec.clone());
        if let Err(e) = self.save(store) {
            self.t.snapshots.remove(key);
            return Err(e);
        }
        Ok(rec)
    }

    /// Commit the active snapshot `key` as `name` (labels merged in).
    pub fn commit(
        &mut self,
        store: &Store,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), Error> {
        if self.contains(name) {
            return Err(Error::AlreadyExists(name.to_string()));
        }
        let rec = self.get(key)?;
        if rec.kind != Kind::Active {
            return Err(Error::Precondition(format!(
                "{key} is not an active snapshot"
            )));
        }
        let mut rec = rec.clone();
        rec.kind = Kind::Committed;
        rec.union = None;
        rec.labels.extend(labels);
        rec.updated = SystemTime::now();
        let old = self.t.snapshots.remove(key);
        self.t.snapshots.insert(name.to_string(), rec);
        if let Err(e) = self.save(store) {
            self.t.snapshots.remove(name);
            if let Some(o) = old {
                self.t.snapshots.insert(key.to_string(), o);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Forget `key` (no snapshot may have it as parent); its record.
    pub fn remove(&mut self, store: &Store, key: &str) -> Result<Record, Error> {
        self.get(key)?;
        if let Some((child, _)) = self.t.snapshots.iter().find(|(_, r)| r.parent == key) {
            return Err(Error::Precondition(format!(
                "{key} is the parent of {child}"
            )));
        }
        let rec = self
            .t
            .snapshots
            .remove(key)
            .ok_or_else(|| Error::NotFound(key.to_string()))?;
        if let Err(e) = self.save(store) {
            self.t.snapshots.insert(key.to_string(), rec);
            return Err(e);
        }
        Ok(rec)
    }

    /// Record whether active snapshot `key` is served as a union mount of `image`.
    pub fn set_union(
        &mut self,
        store: &Store,
        key: &str,
        image: Option<String>,
    ) -> Result<(), Error> {
        let rec = self
            .t
            .snapshots
            .get_mut(key)
            .ok_or_else(|| Error::NotFound(key.to_string()))?;
        let old = std::mem::replace(&mut rec.union, image);
        if let Err(e) = self.save(store) {
            if let Some(r) = self.t.snapshots.get_mut(key) {
                r.union = old;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Set the labels of `key` as containerd's `Update` asks: `fields` empty (or `labels`)
    /// replaces them all, `labels.NAME` sets or (absent in `labels`) deletes one.
    pub fn update_labels(
        &mut self,
        store: &Store,
        key: &str,
        labels: HashMap<String, String>,
        fields: &[String],
    ) -> Result<Record, Error> {
        let rec = self
            .t
            .snapshots
            .get_mut(key)
            .ok_or_else(|| Error::NotFound(key.to_string()))?;
        let old = rec.clone();
        if fields.is_empty() || fields.iter().any(|f| f == "labels") {
            rec.labels = labels;
        } else {
            for f in fields {
                let Some(name) = f.strip_prefix("labels.") else {
                    *rec = old;
                    return Err(Error::Invalid(format!(
                        "cannot update field {f:?} of snapshot {key}"
                    )));
                };
                match labels.get(name) {
                    Some(v) => rec.labels.insert(name.to_string(), v.clone()),
                    None => rec.labels.remove(name),
                };
            }
        }
        rec.updated = SystemTime::now();
        let out = rec.clone();
        if let Err(e) = self.save(store) {
            self.t.snapshots.insert(key.to_string(), old);
            return Err(e);
        }
        Ok(out)
    }

    /// Directory ids under `ROOT/snapshots` that no record names (left by a crash).
    pub fn orphans(&self) -> Vec<PathBuf> {
        let ids: std::collections::HashSet<u64> = self.t.snapshots.values().map(|r| r.id).collect();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let id: u64 = e.file_name().to_str()?.parse().ok()?;
                (!ids.contains(&id)).then(|| e.path())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        (d, s)
    }

    #[test]
    fn chain_commit_remove_and_reopen() {
        let (_d, s) = store();
        let mut m = Meta::open(&s).unwrap();
        m.add(&s, "a", Kind::Active, "", HashMap::new(), None)
            .unwrap();
        assert!(matches!(
            m.add(&s, "b", Kind::Active, "a", HashMap::new(), None),
            Err(Error::Precondition(_))
        ));
        m.commit(&s, "A", "a", HashMap::from([("x".into(), "1".into())]))
            .unwrap();
        m.add(&s, "b", Kind::Active, "A", HashMap::new(), None)
            .unwrap();
        assert!(matches!(m.remove(&s, "A"), Err(Error::Precondition(_))));
        assert!(matches!(
            m.add(&s, "b", Kind::View, "A", HashMap::new(), None),
            Err(Error::AlreadyExists(_))
        ));
        let m2 = Meta::open(&s).unwrap();
        assert_eq!(m2.get("A").unwrap().kind, Kind::Committed);
        assert_eq!(m2.get("A").unwrap().labels["x"], "1");
        let chain: Vec<&str> = m2.parents("b").unwrap().iter().map(|p| p.0).collect();
        assert_eq!(chain, vec!["A"]);
        assert!(matches!(m2.get("a"), Err(Error::NotFound(_))));
    }

    #[test]
    fn update_labels_by_field() {
        let (_d, s) = store();
        let mut m = Meta::open(&s).unwrap();
        let l = HashMap::from([("a".into(), "1".into()), ("b".into(), "2".into())]);
        m.add(&s, "k", Kind::Active, "", l, None).unwrap();
        let r = m
            .update_labels(
                &s,
                "k",
                HashMap::from([("c".into(), "3".into())]),
                &["labels.c".into(), "labels.a".into()],
            )
            .unwrap();
        assert_eq!(r.labels.get("a"), None);
        assert_eq!(r.labels["b"], "2");
        assert_eq!(r.labels["c"], "3");
        assert!(m
            .update_labels(&s, "k", HashMap::new(), &["kind".into()])
            .is_err());
        let r = m.update_labels(&s, "k", HashMap::new(), &[]).unwrap();
        assert!(r.labels.is_empty());
    }
}
