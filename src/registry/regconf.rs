//! containers' `registries.conf` (version 2, as podman, buildah, skopeo and CRI-O read it):
//! `[[registry]]` entries (`prefix`, `location`, `insecure`, `blocked`,
//! `mirror-by-digest-only`, `[[registry.mirror]]` with `location`, `insecure`,
//! `pull-from-mirror`), `unqualified-search-registries`, `short-name-mode` and `[aliases]`.
//!
//! Which file: the `registries-conf` config key, else `$CONTAINERS_REGISTRIES_CONF`, else
//! `~/.config/containers/registries.conf` when it exists, else
//! `/etc/containers/registries.conf`; then the `*.conf` drop-ins of the directory beside it
//! named `<file>.d`, in name order. A later file replaces an entry with the same prefix, the
//! search list and the mode, and adds aliases. Parsing and matching only; the mirror list is
//! put together in `routes`. Uses `reference` and the parent's error type.

use super::Error;
use crate::reference::{Reference, DEFAULT_REGISTRY};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Value;

/// How short names with several search registries are treated (`short-name-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShortNameMode {
    /// Several candidates are an error (containers would ask on a terminal).
    #[default]
    Enforcing,
    /// Try the candidates in order.
    Permissive,
}

/// Which requests a registries.conf mirror serves (`pull-from-mirror`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullFrom {
    All,
    DigestOnly,
    TagOnly,
}

#[derive(Debug, Clone)]
pub struct Mirror {
    pub location: String,
    pub insecure: bool,
    pub pull_from: PullFrom,
}

/// One `[[registry]]`.
#[derive(Debug, Clone)]
pub struct Entry {
    /// `host[/path]` or `*.domain`.
    pub prefix: String,
    /// `host[:port][/path]`; equal to the prefix when not given (no rewrite).
    pub location: String,
    pub insecure: bool,
    pub blocked: bool,
    pub mirrors: Vec<Mirror>,
    /// The file it came from.
    pub source: PathBuf,
}

/// The merged configuration.
#[derive(Debug, Clone, Default)]
pub struct RegistriesConf {
    pub files: Vec<PathBuf>,
    pub registries: Vec<Entry>,
    /// `None`: no file set it (docker's rule: short names are on docker.io).
    pub search: Option<Vec<String>>,
    pub mode: ShortNameMode,
    pub aliases: BTreeMap<String, String>,
}

/// The entry matching a repository, and the part of `registry/name` after its prefix.
#[derive(Debug, Clone)]
pub struct Match<'a> {
    pub entry: &'a Entry,
    /// What follows the prefix (empty, or starting with `/`).
    pub rest: String,
}

/// `location + rest` split into (host, repository path); `None` when there is no path.
pub fn rewrite(location: &str, rest: &str) -> Option<(String, String)> {
    let full = format!("{location}{rest}");
    let (host, path) = full.split_once('/')?;
    (!host.is_empty() && !path.is_empty()).then(|| (host.to_string(), path.to_string()))
}

fn bad(path: &Path, key: &str, msg: impl Into<String>) -> Error {
    Error::ConfigValue {
        path: path.display().to_string(),
        key: key.to_string(),
        msg: msg.into(),
    }
}

impl RegistriesConf {
    /// The file to read when the config does not name one (see the module comment).
    pub fn default_path() -> PathBuf {
        if let Some(p) = std::env::var_os("CONTAINERS_REGISTRIES_CONF").filter(|v| !v.is_empty()) {
            return PathBuf::from(p);
        }
        if let Some(h) = std::env::var_os("HOME") {
            let user = PathBuf::from(h).join(".config/containers/registries.conf");
            if user.is_file() {
                return user;
            }
        }
        PathBuf::from("/etc/containers/registries.conf")
    }

    /// Read `path` (missing: nothing) and its `<path>.d/*.conf` drop-ins.
    pub fn load(path: &Path) -> Result<RegistriesConf, Error> {
        let mut conf = RegistriesConf::default();
        let mut files = vec![path.to_path_buf()];
        let dropins = PathBuf::from(format!("{}.d", path.display()));
        if let Ok(rd) = std::fs::read_dir(&dropins) {
            let mut more: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "conf") && p.is_file())
                .collect();
            more.sort();
            files.extend(more);
        }
        for f in files {
            let text = match std::fs::read_to_string(&f) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(Error::Io {
                        path: f.display().to_string(),
                        source,
                    })
                }
            };
            conf.add(&f, &text)?;
        }
        Ok(conf)
    }

    /// Merge one file's text into `self`.
    pub fn add(&mut self, path: &Path, text: &str) -> Result<(), Error> {
        let doc: toml::Table = text.parse().map_err(|source| Error::ConfigFile {
            path: path.display().to_string(),
            source: Box::new(source),
        })?;
        self.files.push(path.to_path_buf());
        let strings = |k: &str, v: &Value| -> Result<Vec<String>, Error> {
            v.as_array()
                .and_then(|a| a.iter().map(|x| x.as_str().map(str::to_string)).collect())
                .ok_or_else(|| bad(path, k, "must be a list of strings"))
        };
        for (k, v) in &doc {
            match k.as_str() {
                "unqualified-search-registries" => self.search = Some(strings(k, v)?),
                "short-name-mode" => {
                    self.mode = match v.as_str() {
                        Some("enforcing") => ShortNameMode::Enforcing,
                        Some("permissive") | Some("disabled") => ShortNameMode::Permissive,
                        _ => {
                            return Err(bad(
                                path,
                                k,
                                "must be \"enforcing\", \"permissive\" or \"disabled\"",
                            ))
                        }
                    }
                }
                "aliases" => {
                    let t = v
                        .as_table()
                        .ok_or_else(|| bad(path, k, "must be a table"))?;
                    for (name, target) in t {
                        let target = target.as_str().ok_or_else(|| {
                            bad(path, &format!("aliases.{name}"), "must be a string")
                        })?;
                        self.aliases.insert(name.clone(), target.to_string());
                    }
                }
                "registry" => {
                    let arr = v
                        .as_array()
                        .ok_or_else(|| bad(path, k, "must be [[registry]] tables"))?;
                    for (i, r) in arr.iter().enumerate() {
                        let e = entry(path, i, r)?;
                        self.registries.retain(|x| x.prefix != e.prefix);
                        self.registries.push(e);
                    }
                }
                "registries" => {
                    return Err(bad(
                        path,
                        k,
                        "registries.conf version 1 ([registries.search] ...) is not supported; \
                         use version 2 ([[registry]], unqualified-search-registries)",
                    ))
                }
                "credential-helpers" | "additional-layer-store-auth-helper" => {}
                other => tracing::warn!("{}: unknown key {other}, ignored", path.display()),
            }
        }
        Ok(())
    }

    /// The entry with the longest prefix matching `registry/name`.
    pub fn find(&self, registry: &str, name: &str) -> Option<Match<'_>> {
        let full = if name.is_empty() {
            registry.to_string()
        } else {
            format!("{registry}/{name}")
        };
        let mut best: Option<(usize, Match<'_>)> = None;
        for e in &self.registries {
            let matched = if let Some(domain) = e.prefix.strip_prefix("*.") {
                let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
                (host.ends_with(&format!(".{domain}"))).then_some(registry.len())
            } else if full == e.prefix
                || (full.starts_with(&e.prefix) && full[e.prefix.len()..].starts_with('/'))
            {
                Some(e.prefix.len())
            } else {
                None
            };
            if let Some(len) = matched {
                if best.as_ref().is_none_or(|(l, _)| len > *l) {
                    best = Some((
                        len,
                        Match {
                            entry: e,
                            rest: full[len..].to_string(),
                        },
                    ));
                }
            }
        }
        best.map(|(_, m)| m)
    }

    /// The references a user's `input` may mean, in the order to try: the input itself when
    /// it names a registry; an alias; else one per search registry (docker.io when none is
    /// configured). Several candidates in enforcing mode are an error listing them.
    pub fn candidates(&self, input: &str) -> Result<Vec<Reference>, Error> {
        let parse = |s: &str| {
            s.parse::<Reference>().map_err(|source| Error::ShortName {
                name: input.to_string(),
                msg: source.to_string(),
            })
        };
        if !crate::reference::is_short_name(input) {
            return Ok(vec![parse(input)?]);
        }
        let (name, suffix) = split_suffix(input);
        if let Some(target) = self.aliases.get(name) {
            return Ok(vec![parse(&format!("{target}{suffix}"))?]);
        }
        let search: Vec<String> = match &self.search {
            Some(s) if !s.is_empty() => s.clone(),
            _ => vec![DEFAULT_REGISTRY.to_string()],
        };
        if search.len() > 1 && self.mode == ShortNameMode::Enforcing {
            return Err(Error::AmbiguousShortName {
                name: input.to_string(),
                candidates: search
                    .iter()
                    .map(|r| format!("{r}/{name}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                files: self
                    .files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        search
            .iter()
            .map(|r| parse(&format!("{r}/{input}")))
            .collect()
    }
}

/// `name:tag@digest` -> (`name`, `:tag@digest`).
fn split_suffix(input: &str) -> (&str, &str) {
    let at = input.find('@').unwrap_or(input.len());
    let head = &input[..at];
    let last_slash = head.rfind('/').map_or(0, |i| i + 1);
    let cut = head[last_slash..].find(':').map_or(at, |i| last_slash + i);
    (&input[..cut], &input[cut..])
}

fn entry(path: &Path, i: usize, v: &Value) -> Result<Entry, Error> {
    let key = |k: &str| format!("registry[{i}].{k}");
    let t = v
        .as_table()
        .ok_or_else(|| bad(path, &format!("registry[{i}]"), "must be a table"))?;
    let s = |k: &str| -> Result<Option<String>, Error> {
        match t.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim_end_matches('/').to_string())),
            Some(_) => Err(bad(path, &key(k), "must be a string")),
        }
    };
    let b = |k: &str| -> Result<bool, Error> {
        match t.get(k) {
            None => Ok(false),
            Some(Value::Boolean(b)) => Ok(*b),
            Some(_) => Err(bad(path, &key(k), "must be true or false")),
        }
    };
    let location = s("location")?.filter(|l| !l.is_empty());
    let prefix = s("prefix")?.filter(|p| !p.is_empty());
    let (prefix, location) = match (prefix, location) {
        (Some(p), Some(l)) => (p, l),
        (Some(p), None) => (p.clone(), p),
        (None, Some(l)) => (l.clone(), l),
        (None, None) => return Err(bad(path, &key("location"), "needs a location or a prefix")),
    };
    if let Some(domain) = prefix.strip_prefix("*.") {
        if domain.is_empty() || domain.contains(['/', '*']) || location != prefix {
            return Err(bad(
                path,
                &key("prefix"),
                "a wildcard prefix is \"*.domain\" and takes no location",
            ));
        }
    } else if prefix.contains('*') {
        return Err(bad(path, &key("prefix"), format!("bad prefix {prefix:?}")));
    }
    let digest_only = b("mirror-by-digest-only")?;
    let mut mirrors = Vec::new();
    match t.get("mirror") {
        None => {}
        Some(Value::Array(arr)) => {
            for (j, m) in arr.iter().enumerate() {
                let mk = |k: &str| format!("registry[{i}].mirror[{j}].{k}");
                let mt = m
                    .as_table()
                    .ok_or_else(|| bad(path, &mk(""), "must be a table"))?;
                let location = mt
                    .get("location")
                    .and_then(Value::as_str)
                    .map(|l| l.trim_end_matches('/').to_string())
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| bad(path, &mk("location"), "is required"))?;
                let insecure = match mt.get("insecure") {
                    None => false,
                    Some(Value::Boolean(b)) => *b,
                    Some(_) => return Err(bad(path, &mk("insecure"), "must be true or false")),
                };
                let pull_from = match mt.get("pull-from-mirror").map(|v| v.as_str()) {
                    None if digest_only => PullFrom::DigestOnly,
                    None | Some(Some("all")) | Some(Some("")) => PullFrom::All,
                    Some(Some("digest-only")) => PullFrom::DigestOnly,
                    Some(Some("tag-only")) => PullFrom::TagOnly,
                    _ => {
                        return Err(bad(
                            path,
                            &mk("pull-from-mirror"),
                            "must be \"all\", \"digest-only\" or \"tag-only\"",
                        ))
                    }
                };
                mirrors.push(Mirror {
                    location,
                    insecure,
                    pull_from,
                });
            }
        }
        Some(_) => {
            return Err(bad(
                path,
                &key("mirror"),
                "must be [[registry.mirror]] tables",
            ))
        }
    }
    Ok(Entry {
        prefix,
        location,
        insecure: b("insecure")?,
        blocked: b("blocked")?,
        mirrors,
        source: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(text: &str) -> RegistriesConf {
        let mut c = RegistriesConf::default();
        c.add(Path::new("/etc/test-registries.conf"), text).unwrap();
        c
    }

    #[test]
    fn longest_prefix_wins_and_rewrites() {
        let c = conf(
            r#"
[[registry]]
prefix = "example.com"
location = "internal.example:5000"

[[registry]]
prefix = "example.com/team"
location = "team.example/mirror/team"
insecure = true
[[registry.mirror]]
location = "cache.local:5000/ex"
pull-from-mirror = "digest-only"

[[registry]]
location = "blocked.example"
blocked = true

[[registry]]
prefix = "*.corp.example"
[[registry.mirror]]
location = "corp-mirror.local"
"#,
        );
        let m = c.find("example.com", "team/app").unwrap();
        assert_eq!(m.entry.location, "team.example/mirror/team");
        assert_eq!(m.rest, "/app");
        assert_eq!(
            rewrite(&m.entry.location, &m.rest),
            Some(("team.example".into(), "mirror/team/app".into()))
        );
        assert_eq!(m.entry.mirrors[0].pull_from, PullFrom::DigestOnly);
        assert_eq!(
            rewrite(&m.entry.mirrors[0].location, &m.rest),
            Some(("cache.local:5000".into(), "ex/app".into()))
        );
        // "teamx" is not under "team".
        let m = c.find("example.com", "teamx/app").unwrap();
        assert_eq!(
            rewrite(&m.entry.location, &m.rest),
            Some(("internal.example:5000".into(), "teamx/app".into()))
        );
        assert!(c.find("blocked.example", "a/b").unwrap().entry.blocked);
        let m = c.find("eu.corp.example", "x").unwrap();
        assert_eq!(m.rest, "/x");
        assert_eq!(
            rewrite(&m.entry.mirrors[0].location, &m.rest),
            Some(("corp-mirror.local".into(), "x".into()))
        );
        assert!(c.find("corp.example", "x").is_none());
        assert!(c.find("other.example", "x").is_none());
    }

    #[test]
    fn short_names() {
        let c = conf(
            r#"
unqualified-search-registries = ["quay.example", "docker.io"]
[aliases]
"fedora" = "registry.fedora.example/fedora"
"#,
        );
        let e = c.candidates("alpine:3").unwrap_err().to_string();
        assert!(
            e.contains("alpine:3")
                && e.contains("quay.example/alpine")
                && e.contains("docker.io/alpine"),
            "{e}"
        );
        assert!(e.contains("/etc/test-registries.conf"), "{e}");
        let r = c.candidates("fedora:40").unwrap();
        assert_eq!(r[0].to_string(), "registry.fedora.example/fedora:40");
        let r = c.candidates("host.example:5000/a:1").unwrap();
        assert_eq!(r.len(), 1);
        let mut p = c.clone();
        p.mode = ShortNameMode::Permissive;
        let r = p.candidates("alpine").unwrap();
        assert_eq!(r[0].registry, "quay.example");
        assert_eq!(r[0].repository, "alpine");
        assert_eq!(r[1].repository, "library/alpine");
        let one = conf("unqualified-search-registries = [\"quay.example\"]\n");
        let r = one
            .candidates(
                "app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            )
            .unwrap();
        assert_eq!(r[0].registry, "quay.example");
        assert!(r[0].digest.is_some());
        let none = RegistriesConf::default();
        assert_eq!(
            none.candidates("alpine").unwrap()[0].to_string(),
            "docker.io/library/alpine:latest"
        );
    }

    #[test]
    fn bad_files_are_named() {
        let mut c = RegistriesConf::default();
        let p = Path::new("/x/registries.conf");
        let e = c
            .add(p, "[registries.search]\nregistries = []\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/x/registries.conf") && e.contains("version 1"),
            "{e}"
        );
        let e = c
            .add(
                p,
                "[[registry]]\nprefix = \"*.a.example\"\nlocation = \"b.example\"\n",
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("registry[0].prefix"), "{e}");
        let e = c
            .add(
                p,
                "[[registry]]\nlocation = \"a\"\n[[registry.mirror]]\ninsecure = true\n",
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("mirror[0].location"), "{e}");
        let e = c
            .add(p, "short-name-mode = \"sometimes\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("short-name-mode"), "{e}");
    }

    #[test]
    fn dropins_replace_same_prefix_and_merge_aliases() {
        let d = tempfile::tempdir().unwrap();
        let main = d.path().join("registries.conf");
        std::fs::write(
            &main,
            "unqualified-search-registries = [\"a.example\", \"b.example\"]\n\
             [aliases]\n\"x\" = \"a.example/x\"\n\
             [[registry]]\nlocation = \"r.example\"\ninsecure = true\n",
        )
        .unwrap();
        std::fs::create_dir_all(d.path().join("registries.conf.d")).unwrap();
        std::fs::write(
            d.path().join("registries.conf.d/10-more.conf"),
            "unqualified-search-registries = [\"c.example\"]\n\
             [aliases]\n\"y\" = \"c.example/y\"\n\
             [[registry]]\nlocation = \"r.example\"\nblocked = true\n",
        )
        .unwrap();
        let c = RegistriesConf::load(&main).unwrap();
        assert_eq!(c.search, Some(vec!["c.example".to_string()]));
        assert_eq!(c.aliases.len(), 2);
        assert_eq!(c.registries.len(), 1);
        assert!(c.registries[0].blocked && !c.registries[0].insecure);
        assert!(RegistriesConf::load(&d.path().join("absent.conf"))
            .unwrap()
            .registries
            .is_empty());
    }
}
