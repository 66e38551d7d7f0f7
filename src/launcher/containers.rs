//! Container records: `$STRATA_ROOT/containers/<id>/container.json` and the directory around it.
//!
//! A container directory holds `container.json`, the generated `hosts`, `hostname`,
//! `resolv.conf`, `bundle/config.json`, and for detached containers `log`, `pid` and `exit`.
//! The mount layer chooses and records the upper/work dirs and the rootfs mountpoint
//! ([`Containers::set_mount`]); this module never mounts or unmounts, and refuses to delete a
//! directory under which something is still mounted. Record updates are serialised by a file
//! lock (`containers/.lock`), which also keeps names unique. Uses `store` for the root only.

use super::runc::{read_exit_file, Runtime};
use super::{Error, RunOptions};
use crate::digest::Digest;
use crate::store::Store;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Lifecycle state as `ps` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Exited,
}

/// Paths the mount layer fills in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountPaths {
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    /// Where the container's rootfs is mounted.
    pub mountpoint: Option<PathBuf>,
}

/// One container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// 64 lower-case hex digits.
    pub id: String,
    pub name: String,
    /// The image reference as given (normalised by the caller).
    pub image: String,
    /// The image's manifest digest.
    pub image_digest: Option<Digest>,
    pub created: DateTime<Utc>,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    pub status: Status,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Host pid of the container's init while it runs.
    #[serde(default)]
    pub pid: Option<i32>,
    /// The process argv (after the Entrypoint/Cmd rules), filled in at start.
    #[serde(default)]
    pub command: Vec<String>,
    /// The image's StopSignal, filled in at start; `stop` uses it.
    #[serde(default)]
    pub stop_signal: Option<String>,
    #[serde(default)]
    pub mount: MountPaths,
    pub options: RunOptions,
}

impl ContainerRecord {
    pub fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }
}

/// What `create` needs.
#[derive(Debug, Clone)]
pub struct NewContainer {
    pub image: String,
    pub image_digest: Option<Digest>,
    pub options: RunOptions,
}

/// The container records of one store.
#[derive(Debug, Clone)]
pub struct Containers {
    dir: PathBuf,
}

impl Containers {
    pub fn new(store: &Store) -> Self {
        Self::at(store.root().join("containers"))
    }

    /// Records under `dir` (normally `$STRATA_ROOT/containers`).
    pub fn at(dir: PathBuf) -> Self {
        Containers { dir }
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }
    pub fn record_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("container.json")
    }
    pub fn bundle_dir(&self, id: &str) -> PathBuf {
        self.dir(id).join("bundle")
    }
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("log")
    }
    pub fn pid_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("pid")
    }
    pub fn exit_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("exit")
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<std::fs::File>, Error> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| Error::io("creating containers dir", &self.dir, e))?;
        let p = self.dir.join(".lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| Error::io("opening lock", &p, e))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::io("locking", &p, std::io::Error::from(e)))
    }

    fn write(&self, rec: &ContainerRecord) -> Result<(), Error> {
        let path = self.record_path(&rec.id);
        let tmp = self.dir(&rec.id).join(".container.json.tmp");
        let body = serde_json::to_vec_pretty(rec).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io("writing", &tmp, e))?;
        f.write_all(&body)
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io("writing", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io("renaming", &path, e))
    }

    /// The record of exactly `id`.
    pub fn get(&self, id: &str) -> Result<Option<ContainerRecord>, Error> {
        let path = self.record_path(id);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| Error::Json { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("reading", &path, e)),
        }
    }

    /// Every record, newest first.
    pub fn all(&self) -> Result<Vec<ContainerRecord>, Error> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("listing", &self.dir, e)),
        };
        let mut out = Vec::new();
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_id(&name) {
                continue;
            }
            if let Some(rec) = self.get(&name)? {
                out.push(rec);
            }
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.created));
        Ok(out)
    }

    /// `ps` (running only) or `ps -a` (all). Statuses are as recorded; call
    /// [`Containers::refresh`] first for detached containers that may have exited.
    pub fn list(&self, all: bool) -> Result<Vec<ContainerRecord>, Error> {
        let mut v = self.all()?;
        if !all {
            v.retain(|r| r.status == Status::Running);
        }
        Ok(v)
    }

    /// By full id, then name, then unique id prefix.
    pub fn lookup(&self, query: &str) -> Result<ContainerRecord, Error> {
        if is_id(query) {
            if let Some(r) = self.get(query)? {
                return Ok(r);
            }
        }
        let all = self.all()?;
        let query = query.strip_prefix('/').unwrap_or(query);
        if let Some(r) = all.iter().find(|r| r.name == query) {
            return Ok(r.clone());
        }
        let mut hits = all.into_iter().filter(|r| {
            !query.is_empty() && query.len() <= 64 && r.id.starts_with(&query.to_lowercase())
        });
        match (hits.next(), hits.next()) {
            (Some(r), None) => Ok(r),
            (Some(_), Some(_)) => Err(Error::Ambiguous(query.to_string())),
            _ => Err(Error::NoSuchContainer(query.to_string())),
        }
    }

    /// A new record in state `created` with a fresh id and its name (given or random).
    pub fn create(&self, new: NewContainer) -> Result<ContainerRecord, Error> {
        let _lock = self.lock()?;
        let existing = self.all()?;
        let taken = |n: &str| existing.iter().find(|r| r.name == n);
        let name = match &new.options.name {
            Some(n) => {
                let n = n.strip_prefix('/').unwrap_or(n);
                check_name(n)?;
                if let Some(r) = taken(n) {
                    return Err(Error::NameInUse {
                        name: n.to_string(),
                        id: r.id.clone(),
                    });
                }
                n.to_string()
            }
            None => {
                let mut attempt = 0u32;
                loop {
                    let n = random_name(attempt)?;
                    if taken(&n).is_none() {
                        break n;
                    }
                    attempt += 1;
                }
            }
        };
        let id = loop {
            let id = hex::encode(random_bytes::<32>()?);
            // docker avoids all-numeric short ids; more importantly, never reuse a dir.
            if !self.dir(&id).exists() && !id[..12].bytes().all(|b| b.is_ascii_digit()) {
                break id;
            }
        };
        let dir = self.dir(&id);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
        // The upper holds what the container made (a 1777 /tmp, setuid files): other host
        // users must not reach it, as docker keeps its layer dirs 0710.
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io("restricting", &dir, e))?;
        }
        let rec = ContainerRecord {
            id,
            name,
            image: new.image,
            image_digest: new.image_digest,
            created: Utc::now(),
            started_at: None,
            finished_at: None,
            status: Status::Created,
            exit_code: None,
            pid: None,
            command: Vec::new(),
            stop_signal: None,
            mount: MountPaths::default(),
            options: new.options,
        };
        self.write(&rec)?;
        Ok(rec)
    }

    /// Change a record under the lock; returns the new version.
    pub fn update(
        &self,
        id: &str,
        f: impl FnOnce(&mut ContainerRecord),
    ) -> Result<ContainerRecord, Error> {
        let _lock = self.lock()?;
        let mut rec = self
            .get(id)?
            .ok_or_else(|| Error::NoSuchContainer(id.to_string()))?;
        f(&mut rec);
        self.write(&rec)?;
        Ok(rec)
    }

    /// Record where the mount layer put the upper, work dir and rootfs mount.
    pub fn set_mount(&self, id: &str, mount: MountPaths) -> Result<ContainerRecord, Error> {
        self.update(id, |r| r.mount = mount)
    }

    /// Bring a `running` record up to date: a detached container's exit file, else the
    /// runtime's view (gone means exited with an unknown code).
    pub async fn refresh(&self, id: &str, runtime: &Runtime) -> Result<ContainerRecord, Error> {
        let rec = self
            .get(id)?
            .ok_or_else(|| Error::NoSuchContainer(id.to_string()))?;
        if rec.status != Status::Running {
            return Ok(rec);
        }
        if let Some(code) = read_exit_file(&self.exit_path(id))? {
            return self.mark_exited(id, Some(code));
        }
        match runtime.state(id).await? {
            Some(s) if s.is_running() => Ok(rec),
            _ => {
                // The shim may have written the file since we looked.
                let code = read_exit_file(&self.exit_path(id))?;
                self.mark_exited(id, code)
            }
        }
    }

    /// Record an exit.
    pub fn mark_exited(&self, id: &str, code: Option<i32>) -> Result<ContainerRecord, Error> {
        self.update(id, |r| {
            r.status = Status::Exited;
            r.exit_code = code;
            r.pid = None;
            r.finished_at = Some(Utc::now());
        })
    }

    /// First step of `rm`: refuse a running container unless `force`, which kills it
    /// (SIGKILL) and deletes its runtime state. Returns the record so the caller can unmount
    /// `mount.mountpoint` before [`Containers::remove`].
    pub async fn prepare_remove(
        &self,
        query: &str,
        force: bool,
        runtime: &Runtime,
    ) -> Result<ContainerRecord, Error> {
        let rec = self.lookup(query)?;
        let rec = self.refresh(&rec.id, runtime).await?;
        if rec.status == Status::Running {
            if !force {
                return Err(Error::Running(rec.id));
            }
            runtime
                .stop(&rec.id, nix::sys::signal::Signal::SIGKILL, Duration::ZERO)
                .await?;
        }
        runtime.delete(&rec.id, true).await?;
        self.refresh(&rec.id, runtime).await
    }

    /// Last step of `rm`: delete the record and directory. Refuses a record still marked
    /// running and a directory with anything mounted under it.
    pub fn remove(&self, id: &str) -> Result<(), Error> {
        let _lock = self.lock()?;
        let rec = self
            .get(id)?
            .ok_or_else(|| Error::NoSuchContainer(id.to_string()))?;
        if rec.status == Status::Running {
            return Err(Error::Running(rec.id));
        }
        let dir = self.dir(id);
        if let Some(m) = mount_under(&dir)? {
            return Err(Error::StillMounted(m));
        }
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io("removing", &dir, e))
    }
}

/// 64 lower-case hex digits.
pub fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// docker's rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
fn check_name(n: &str) -> Result<(), Error> {
    let mut chars = n.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if n.len() < 2 || !first_ok || !rest_ok {
        return Err(Error::invalid(
            "container name",
            n,
            "only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed, at least 2 characters",
        ));
    }
    Ok(())
}

/// A mount point at or below `dir`, from /proc/self/mountinfo.
fn mount_under(dir: &Path) -> Result<Option<PathBuf>, Error> {
    let info = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(info).map_err(|e| Error::io("reading", info, e))?;
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    Ok(text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .find(|m| m.starts_with(&dir)))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn random_bytes<const N: usize>() -> Result<[u8; N], Error> {
    use std::io::Read;
    let p = Path::new("/dev/urandom");
    let mut buf = [0u8; N];
    std::fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| Error::io("reading", p, e))?;
    Ok(buf)
}

const LEFT: &[&str] = &[
    "admiring",
    "adoring",
    "agitated",
    "amazing",
    "angry",
    "awesome",
    "blissful",
    "bold",
    "boring",
    "brave",
    "busy",
    "charming",
    "clever",
    "compassionate",
    "competent",
    "confident",
    "cool",
    "cranky",
    "crazy",
    "dazzling",
    "determined",
    "distracted",
    "dreamy",
    "eager",
    "ecstatic",
    "elastic",
    "elated",
    "elegant",
    "epic",
    "exciting",
    "fervent",
    "festive",
    "flamboyant",
    "focused",
    "friendly",
    "frosty",
    "funny",
    "gallant",
    "gifted",
    "goofy",
    "gracious",
    "great",
    "happy",
    "hardcore",
    "heuristic",
    "hopeful",
    "hungry",
    "infallible",
    "inspiring",
    "intelligent",
    "jolly",
    "jovial",
    "keen",
    "kind",
    "laughing",
    "loving",
    "lucid",
    "magical",
    "modest",
    "musing",
    "mystifying",
    "naughty",
    "nervous",
    "nice",
    "nifty",
    "nostalgic",
    "objective",
    "optimistic",
    "peaceful",
    "pedantic",
    "pensive",
    "practical",
    "priceless",
    "quirky",
    "quizzical",
    "relaxed",
    "reverent",
    "romantic",
    "sad",
    "serene",
    "sharp",
    "silly",
    "sleepy",
    "stoic",
    "strange",
    "stupefied",
    "suspicious",
    "sweet",
    "tender",
    "thirsty",
    "trusting",
    "upbeat",
    "vibrant",
    "vigilant",
    "vigorous",
    "wizardly",
    "wonderful",
    "xenodochial",
    "youthful",
    "zealous",
    "zen",
];

const RIGHT: &[&str] = &[
    "agnesi",
    "albattani",
    "allen",
    "almeida",
    "archimedes",
    "ardinghelli",
    "babbage",
    "banach",
    "bardeen",
    "bartik",
    "bassi",
    "bell",
    "bhabha",
    "blackwell",
    "bohr",
    "booth",
    "borg",
    "bose",
    "brahmagupta",
    "brattain",
    "brown",
    "carson",
    "cerf",
    "chandrasekhar",
    "clarke",
    "curie",
    "darwin",
    "davinci",
    "dijkstra",
    "easley",
    "einstein",
    "elion",
    "engelbart",
    "euclid",
    "euler",
    "fermat",
    "fermi",
    "feynman",
    "franklin",
    "galileo",
    "gauss",
    "goldberg",
    "goodall",
    "hamilton",
    "hawking",
    "heisenberg",
    "hodgkin",
    "hopper",
    "hypatia",
    "jang",
    "jennings",
    "johnson",
    "kalam",
    "kapitsa",
    "keller",
    "kepler",
    "khorana",
    "knuth",
    "kowalevski",
    "lamarr",
    "lamport",
    "leakey",
    "lovelace",
    "lumiere",
    "mayer",
    "mccarthy",
    "mcclintock",
    "meitner",
    "mendel",
    "merkle",
    "mirzakhani",
    "montalcini",
    "moore",
    "morse",
    "napier",
    "newton",
    "nobel",
    "noether",
    "pare",
    "pascal",
    "pasteur",
    "payne",
    "perlman",
    "pike",
    "poincare",
    "ptolemy",
    "raman",
    "ramanujan",
    "ritchie",
    "rosalind",
    "sammet",
    "shannon",
    "shockley",
    "sinoussi",
    "stonebraker",
    "swartz",
    "tesla",
    "thompson",
    "torvalds",
    "turing",
    "volhard",
    "wescoff",
    "wiles",
    "williams",
    "wozniak",
    "wright",
    "yalow",
    "yonath",
];

/// docker's `adjective_surname`, with a digit appended after the first clash.
fn random_name(attempt: u32) -> Result<String, Error> {
    let r = random_bytes::<6>()?;
    let a = u16::from_le_bytes([r[0], r[1]]) as usize % LEFT.len();
    let b = u16::from_le_bytes([r[2], r[3]]) as usize % RIGHT.len();
    let mut name = format!("{}_{}", LEFT[a], RIGHT[b]);
    if attempt > 0 {
        name.push_str(&(u16::from_le_bytes([r[4], r[5]]) % 10).to_string());
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(name: Option<&str>) -> NewContainer {
        NewContainer {
            image: "busybox:latest".into(),
            image_digest: None,
            options: RunOptions {
                name: name.map(str::to_string),
                ..Default::default()
            },
        }
    }

    #[test]
    fn create_lookup_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Containers::at(tmp.path().join("containers"));
        let a = c.create(new(Some("web"))).unwrap();
        assert!(is_id(&a.id));
        assert_eq!(a.status, Status::Created);
        assert!(matches!(
            c.create(new(Some("web"))),
            Err(Error::NameInUse { .. })
        ));
        assert!(c.create(new(Some("-bad"))).is_err());
        let b = c.create(new(None)).unwrap();
        assert!(b.name.contains('_'), "{}", b.name);
        assert_eq!(c.lookup("web").unwrap().id, a.id);
        assert_eq!(c.lookup("/web").unwrap().id, a.id);
        assert_eq!(c.lookup(&a.id).unwrap().id, a.id);
        assert_eq!(c.lookup(&a.id[..8]).unwrap().id, a.id);
        assert!(matches!(c.lookup("nope"), Err(Error::NoSuchContainer(_))));
        assert_eq!(c.list(true).unwrap().len(), 2);
        assert!(c.list(false).unwrap().is_empty());

        let r = c.update(&a.id, |r| r.status = Status::Running).unwrap();
        assert_eq!(r.status, Status::Running);
        assert_eq!(c.list(false).unwrap().len(), 1);
        assert!(matches!(c.remove(&a.id), Err(Error::Running(_))));
        let r = c.mark_exited(&a.id, Some(3)).unwrap();
        assert_eq!((r.status, r.exit_code), (Status::Exited, Some(3)));
        c.remove(&a.id).unwrap();
        assert!(c.get(&a.id).unwrap().is_none());
        assert!(!c.dir(&a.id).exists());
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert!(mount_under(Path::new("/proc")).unwrap().is_some());
    }
}
