//! Image references, normalised the way docker does it.
//!
//! Leaf module (uses only `digest`). `busybox` -> `docker.io/library/busybox:latest`;
//! `host:5000/a/b:tag`; `name@sha256:<hex>`; `name:tag@sha256:<hex>`. A [`Repository`]
//! (registry host + repository path, no tag or digest) is what every registry call addresses.

use crate::digest::Digest;
use std::fmt;
use std::str::FromStr;

pub const DEFAULT_REGISTRY: &str = "docker.io";
pub const DEFAULT_TAG: &str = "latest";

/// Why a reference string was refused; every message quotes the input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid reference format {0:?}: empty")]
    Empty(String),
    #[error("invalid reference format {0:?}: repository name must be lowercase")]
    Uppercase(String),
    #[error("invalid reference format {input:?}: bad repository component {component:?}")]
    BadComponent { input: String, component: String },
    #[error("invalid reference format {input:?}: bad tag {tag:?} (allowed: [A-Za-z0-9_.-], max 128, not starting with . or -)")]
    BadTag { input: String, tag: String },
    #[error("invalid reference format {input:?}: {source}")]
    BadDigest {
        input: String,
        #[source]
        source: crate::digest::DigestError,
    },
    #[error("invalid reference format {0:?}: repository name longer than 255 characters")]
    TooLong(String),
    #[error("invalid reference format {input:?}: bad registry host {host:?}")]
    BadHost { input: String, host: String },
}

/// A fully normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host as used for the API, e.g. `docker.io` or `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// Tag, if one was given (or implied: `latest` when there is no digest).
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

fn valid_component(c: &str) -> bool {
    // [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let ch = b[i];
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            i += 1;
            continue;
        }
        match ch {
            b'.' => {
                if !b[i + 1].is_ascii_alphanumeric() {
                    return false;
                }
                i += 1;
            }
            b'_' => {
                if b[i + 1] == b'_' {
                    i += 1;
                }
                if !b[i + 1].is_ascii_alphanumeric() {
                    return false;
                }
                i += 1;
            }
            b'-' => {
                while b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
    true
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || h.starts_with('[') => (host, Some(port)),
        _ => (h, None),
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|c| c.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'[' | b']' | b':'))
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.is_empty() {
            return Err(ReferenceError::Empty(input.to_string()));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => {
                let d = d
                    .parse::<Digest>()
                    .map_err(|source| ReferenceError::BadDigest {
                        input: input.to_string(),
                        source,
                    })?;
                (r, Some(d))
            }
            None => (input, None),
        };
        // A tag is after the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let i = last_slash + i;
                (&rest[..i], Some(&rest[i + 1..]))
            }
            None => (rest, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(ReferenceError::BadTag {
                    input: input.to_string(),
                    tag: t.to_string(),
                });
            }
        }
        if name.is_empty() {
            return Err(ReferenceError::Empty(input.to_string()));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                if !valid_host(first) {
                    return Err(ReferenceError::BadHost {
                        input: input.to_string(),
                        host: first.to_string(),
                    });
                }
                let reg = if first == "index.docker.io" || first == "registry-1.docker.io" {
                    DEFAULT_REGISTRY.to_string()
                } else {
                    first.to_string()
                };
                (reg, rest.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        if path.bytes().any(|c| c.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase(input.to_string()));
        }
        for c in path.split('/') {
            if !valid_component(c) {
                return Err(ReferenceError::BadComponent {
                    input: input.to_string(),
                    component: c.to_string(),
                });
            }
        }
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if registry.len() + 1 + repository.len() > 255 {
            return Err(ReferenceError::TooLong(input.to_string()));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

/// Whether `input` names no registry (`alpine`, `user/app:1`), so that docker puts it on
/// docker.io and registries.conf may search for it; `host.example/a`, `host:5000/a` and
/// `localhost/a` name one.
pub fn is_short_name(input: &str) -> bool {
    let name = input.split('@').next().unwrap_or(input);
    match name.split_once('/') {
        Some((first, _)) => !(first.contains('.') || first.contains(':') || first == "localhost"),
        None => true,
    }
}

impl Reference {
    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// Short name as `docker images` shows it: `busybox`, `user/app`, `host:5000/a`.
    pub fn familiar_name(&self) -> String {
        if self.registry == DEFAULT_REGISTRY {
            self.repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            self.name()
        }
    }

    /// What to ask the registry for: the digest when pinned, else the tag.
    pub fn api_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// The repository this reference is in (what registry calls address).
    pub fn repo(&self) -> Repository {
        Repository {
            registry: self.registry.clone(),
            name: self.repository.clone(),
        }
    }

    /// Same repository, pinned to `digest`, tag dropped.
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            tag: None,
            ..self.clone()
        }
    }
}

/// A repository on a registry: `registry/name`, no tag or digest. Built from a [`Reference`]
/// ([`Reference::repo`]); every registry call that addresses a repository takes one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Repository {
    /// Registry host as used for the API, e.g. `docker.io` or `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub name: String,
}

impl Repository {
    /// A reference to `tag` in this repository.
    pub fn tag(&self, tag: impl Into<String>) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.name.clone(),
            tag: Some(tag.into()),
            digest: None,
        }
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.name)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_table() {
        let d = format!("sha256:{}", "a".repeat(64));
        let cases: Vec<(String, &str, &str, Option<&str>, bool)> = vec![
            (
                "busybox".into(),
                "docker.io",
                "library/busybox",
                Some("latest"),
                false,
            ),
            (
                "python:3".into(),
                "docker.io",
                "library/python",
                Some("3"),
                false,
            ),
            (
                "user/app".into(),
                "docker.io",
                "user/app",
                Some("latest"),
                false,
            ),
            (
                "docker.io/library/ubuntu:22.04".into(),
                "docker.io",
                "library/ubuntu",
                Some("22.04"),
                false,
            ),
            (
                "index.docker.io/foo".into(),
                "docker.io",
                "library/foo",
                Some("latest"),
                false,
            ),
            (
                "host:5000/a/b:tag".into(),
                "host:5000",
                "a/b",
                Some("tag"),
                false,
            ),
            (
                "localhost/x".into(),
                "localhost",
                "x",
                Some("latest"),
                false,
            ),
            (
                "127.0.0.1:5000/x/y".into(),
                "127.0.0.1:5000",
                "x/y",
                Some("latest"),
                false,
            ),
            (format!("name@{d}"), "docker.io", "library/name", None, true),
            (
                format!("name:tag@{d}"),
                "docker.io",
                "library/name",
                Some("tag"),
                true,
            ),
            (
                "a.b/c__d-e.f:v1.0-rc_1".into(),
                "a.b",
                "c__d-e.f",
                Some("v1.0-rc_1"),
                false,
            ),
        ];
        for (input, reg, repo, tag, has_digest) in cases {
            let r: Reference = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.registry, reg, "{input}");
            assert_eq!(r.repository, repo, "{input}");
            assert_eq!(r.tag.as_deref(), tag, "{input}");
            assert_eq!(r.digest.is_some(), has_digest, "{input}");
        }
    }

    #[test]
    fn short_names() {
        for s in ["alpine", "alpine:3", "user/app:1", "a/b/c@sha256:00"] {
            assert!(is_short_name(s), "{s}");
        }
        for s in [
            "docker.io/alpine",
            "host:5000/a",
            "localhost/a:1",
            "r.example/x/y",
        ] {
            assert!(!is_short_name(s), "{s}");
        }
    }

    #[test]
    fn invalid_references_say_why() {
        for bad in [
            "",
            "UPPER",
            "a//b",
            "a/-b",
            "name:",
            "name:-tag",
            "name@sha256:zz",
            "name@md5:00",
            "a/b_",
            "a/b..c",
            "host:port/x",
        ] {
            let err = bad.parse::<Reference>().expect_err(bad);
            assert!(
                err.to_string().contains("invalid reference format"),
                "{bad}: {err}"
            );
        }
        let long = format!("a/{}", "b".repeat(300));
        assert!(matches!(
            long.parse::<Reference>(),
            Err(ReferenceError::TooLong(_))
        ));
    }

    #[test]
    fn display_and_familiar_name() {
        let r: Reference = "busybox".parse().unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.familiar_name(), "busybox");
        let r: Reference = "127.0.0.1:5000/a/b:t".parse().unwrap();
        assert_eq!(r.familiar_name(), "127.0.0.1:5000/a/b");
        assert_eq!(r.api_reference(), "t");
    }

    #[test]
    fn repository_of_a_reference() {
        let r: Reference = "127.0.0.1:5000/a/b:t@sha256:0000000000000000000000000000000000000000000000000000000000000000"
            .parse()
            .unwrap();
        let repo = r.repo();
        assert_eq!(repo.registry, "127.0.0.1:5000");
        assert_eq!(repo.name, "a/b");
        assert_eq!(repo.to_string(), r.name());
        let t = repo.tag("sha256-00");
        assert_eq!(t.to_string(), "127.0.0.1:5000/a/b:sha256-00");
        assert_eq!(t.repo(), repo);
    }
}
