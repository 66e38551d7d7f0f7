//! Configuration: `$STRATA_ROOT/config.json` (or `--config`), daemon.json style.
//!
//! Leaf module: calls nothing else in the crate but `reference` (Docker Hub's name) and
//! `cosign` (the keys of `index-trust: signed` are read and checked at load). Read once
//! at start (by `cli::Ctx`, and by a daemon when it starts) and handed down as `Arc<Config>`:
//! the registry client takes mirrors and their headers, insecure registries, where the
//! hosts.toml, certificate and registries.conf files are, `mount` the cache sizes, fetch
//! deadline and prefetch switches. Unknown keys and bad values are errors naming the key.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Default of `mirror-fill-wait` (seconds).
pub const DEFAULT_MIRROR_FILL_WAIT: f64 = 0.0;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("config {path}: key {key:?}: {msg}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        msg: String,
    },
}

/// Where a mount's access profile may come from (`prefetch-profile`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProfileSource {
    #[default]
    Registry,
    Local,
    None,
}

fn de_profile_source<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ProfileSource, D::Error> {
    let s = String::deserialize(d)?;
    match s.as_str() {
        "registry" => Ok(ProfileSource::Registry),
        "local" => Ok(ProfileSource::Local),
        "none" => Ok(ProfileSource::None),
        _ => Err(serde::de::Error::custom(format!(
            "prefetch-profile: {s:?} is not one of registry, local, none"
        ))),
    }
}

/// Which sidecar layer indexes a mount trusts (`index-trust`). Indexes bound to the image
/// (named by the digest the user gave, through a bound image index) and eStargz TOCs (their
/// digest is in the layer annotations) are trusted under every policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IndexTrust {
    /// Also unbound sidecars (found through the referrers API or tag), but only when they
    /// come from the image's own registry, never through a mirror.
    #[default]
    Registry,
    /// Only bound indexes and eStargz TOCs; a layer without one is fetched whole (its digest
    /// checked) and indexed here.
    Bound,
    /// Bound indexes, eStargz TOCs, and unbound sidecars (and SOCI v1 indexes) carrying a
    /// valid cosign signature by one of `index-trust-keys`, from any endpoint (mirrors too).
    Signed,
}

impl IndexTrust {
    pub fn as_str(self) -> &'static str {
        match self {
            IndexTrust::Registry => "registry",
            IndexTrust::Bound => "bound",
            IndexTrust::Signed => "signed",
        }
    }
}

/// What the containerd snapshotter hands a container whose image is served lazily
/// (`snapshotter-rootfs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SnapshotterRootfs {
    /// One strata union mount of the whole image with the container's upper in its snapshot
    /// directory (what `strata run` uses): measured as fast cold and faster warm.
    #[default]
    Union,
    /// Kernel overlayfs over one read-only view per layer (as the peer snapshotters do).
    Overlay,
}

fn de_snapshotter_rootfs<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<SnapshotterRootfs, D::Error> {
    let s = String::deserialize(d)?;
    match s.as_str() {
        "union" => Ok(SnapshotterRootfs::Union),
        "overlay" => Ok(SnapshotterRootfs::Overlay),
        _ => Err(serde::de::Error::custom(format!(
            "snapshotter-rootfs: {s:?} is not one of union, overlay"
        ))),
    }
}

fn de_index_trust<'de, D: serde::Deserializer<'de>>(d: D) -> Result<IndexTrust, D::Error> {
    let s = String::deserialize(d)?;
    match s.as_str() {
        "registry" => Ok(IndexTrust::Registry),
        "bound" => Ok(IndexTrust::Bound),
        "signed" => Ok(IndexTrust::Signed),
        _ => Err(serde::de::Error::custom(format!(
            "index-trust: {s:?} is not one of registry, bound, signed"
        ))),
    }
}

/// The whole configuration tree with defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Mirrors for docker.io, tried in order before the upstream.
    #[serde(default)]
    pub registry_mirrors: Vec<String>,
    /// Extension: mirrors for any registry host, `{"host:port": ["http://mirror", ...]}`.
    #[serde(default)]
    pub registry_mirrors_by_host: BTreeMap<String, Vec<String>>,
    /// Hosts (`host[:port]`) spoken to over plain http. Loopback always may be.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    #[serde(default = "default_downloads")]
    pub max_concurrent_downloads: usize,
    #[serde(default = "default_uploads")]
    pub max_concurrent_uploads: usize,
    /// Chunk cache size cap, e.g. "20GiB".
    #[serde(default = "default_cache_size", deserialize_with = "de_size")]
    pub cache_size: u64,
    /// Memory tier of the chunk cache (decompressed spans kept in the daemon), e.g. "64MiB":
    /// most of the daemon's memory.
    #[serde(default = "default_memory_cache_size", deserialize_with = "de_size")]
    pub memory_cache_size: u64,
    #[serde(default = "default_true")]
    pub prefetch: bool,
    /// Which access profile steers the first prefetch of a mount: `registry` (the local one,
    /// else one published with `strata profile push`), `local` (only one recorded here), or
    /// `none`.
    #[serde(default, deserialize_with = "de_profile_source")]
    pub prefetch_profile: ProfileSource,
    /// Which unbound sidecar indexes are trusted: `registry` (default: from the image's own
    /// registry, never through a mirror), `bound` (none: only bound indexes and eStargz) or
    /// `signed` (those with a cosign signature by a key of `index-trust-keys`).
    #[serde(default, deserialize_with = "de_index_trust")]
    pub index_trust: IndexTrust,
    /// PEM public keys (P-256, `PUBLIC KEY`) whose cosign signatures `index-trust: signed`
    /// accepts on a sidecar or SOCI v1 index. Required by `signed`, read at load.
    #[serde(default)]
    pub index_trust_keys: Vec<PathBuf>,
    /// Seconds a lazy read may wait for its bytes (all retries included) before it fails
    /// with ETIMEDOUT.
    #[serde(default = "default_fetch_timeout")]
    pub fetch_timeout: u64,
    /// Partial span fetches: a small read of a file that ends inside a span fetches the span
    /// only up to the compressed bound of the block holding the file's end (see
    /// docs/layer-index.md). Off by default: measured slower on the cold-start benchmark.
    #[serde(default)]
    pub partial_span_fetch: bool,
    /// Speculation after a read on demand misses (`cache/policy.rs`): spans fetched ahead after
    /// a miss near an earlier one in the same layer (this many), the gaps between nearby misses
    /// filled, a layer a quarter of whose spans missed fetched whole; all in a lane of its own
    /// that leaves most requests to reads on demand. A read that joins a speculative fetch
    /// which then fails fetches on its own. 0 (the default) turns speculation off: measured
    /// -9% on big/import-numpy, -3% on python/import-json, but +20% on minbase/echo
    /// (docs/benchmarks.md, issue 16); 4 is the setting measured.
    #[serde(default = "default_fetch_ahead")]
    pub fetch_ahead_spans: usize,
    /// Sibling fetch (`cache/policy.rs` `siblings`): once this many distinct files of one
    /// directory of a layer have been read, the directory's other files that share a word
    /// suffix with them (`.pyc`, `.so`; up to 1 MiB each, the spans nearest, 8 MiB of them at
    /// most) are fetched at once instead of one round trip each as a program loading a package
    /// asks for them; a Python package's `__init__` also fetches its subpackages'
    /// `__init__`s. 1 (the default): the first file read of a directory triggers it
    /// (measured with 512 KiB spans: python/import-json 1.07 -> 0.87-0.96 s,
    /// big/import-numpy 3.21 -> 2.67 s; docs/benchmarks.md, issue 16); 0 turns it off.
    #[serde(default = "default_fetch_siblings")]
    pub fetch_siblings: usize,
    /// On a near link (a server that answered in under 10 ms: loopback, the same host or
    /// rack; `cache/fetcher.rs`), a fetch on demand goes on over the following spans that are
    /// neither local nor being fetched until its request holds this many compressed bytes:
    /// a co-located registry's cost is per request, not per byte (the distribution registry
    /// reads 4 MiB for each). 256KiB (default): a cold unshaped `import numpy` on big made
    /// ~160 requests instead of ~260, 0.85 s instead of 1.0 s (docs/benchmarks.md, issue
    /// 16); 0 turns it off. Far links are never extended, nor is anything with
    /// `mirror-slice-size` set (a slicing mirror's upstream bytes count first there).
    #[serde(default = "default_near_request", deserialize_with = "de_near_request")]
    pub near_request_size: u64,
    /// Launch warm-up (`mount/warm.rs`): when `strata run` mounts a container's rootfs, read
    /// its command, the command's interpreters and libraries and the user database at once
    /// as soon as the image is open, instead of one round trip after another as the start
    /// discovers them. On by default.
    #[serde(default = "default_true")]
    pub warm_start: bool,
    /// Warm-up of the ELF objects a container opens as it runs (`mount/warm.rs` `LoadWarm`):
    /// at the first read of an object's header, its first 4 MiB, its writable segment and the
    /// libraries it needs are fetched at once; at the first read of a Python module, the
    /// modules it imports (`mount/python.rs`; Python modules then take no part in the
    /// sibling fetch). On by default.
    #[serde(default = "default_true")]
    pub warm_libraries: bool,
    /// Extra request headers per mirror URL of `registry-mirrors` / `registry-mirrors-by-host`
    /// (P2P proxies such as Dragonfly want one naming the upstream registry).
    #[serde(default)]
    pub registry_mirror_headers: BTreeMap<String, BTreeMap<String, String>>,
    /// containerd's registry host directory (`<dir>/<host>/hosts.toml`); "" turns it off.
    #[serde(default = "default_hosts_dir")]
    pub hosts_dir: PathBuf,
    /// docker-style certificate directories (`<dir>/<host[:port]>/` with `*.crt` CAs and
    /// `*.cert` + `*.key` client pairs), searched in order.
    #[serde(default = "default_certs_dirs")]
    pub certs_dirs: Vec<PathBuf>,
    /// containers' registries.conf (v2); absent: `$CONTAINERS_REGISTRIES_CONF`, else
    /// `~/.config/containers/registries.conf` if present, else
    /// `/etc/containers/registries.conf`; "" turns it off.
    #[serde(default)]
    pub registries_conf: Option<PathBuf>,
    /// The slice size of Range-aware caching mirrors (nginx's slice module, contrib/nginx):
    /// a Range request to a mirror is cut at multiples of it and the pieces are fetched
    /// concurrently, so each request maps to one cached slice. 0 (default) = off.
    #[serde(default, deserialize_with = "de_slice_size")]
    pub mirror_slice_size: u64,
    /// Seconds a mirror may take to answer a blob Range request (headers) before the
    /// request goes to the next endpoint and that blob skips the mirror for a while: a
    /// mirror slow to serve a range of a blob it does not hold (it fetches the whole blob
    /// first).
    #[serde(default = "default_mirror_timeout")]
    pub mirror_timeout: f64,
    /// Seconds a failed mirror (or a blob a mirror answered slowly or with the whole blob)
    /// is skipped before it is tried again; doubled after each further failure, up to 16x.
    #[serde(default = "default_mirror_retry_after")]
    pub mirror_retry_after: f64,
    /// The containerd snapshotter's active snapshots over an image all of whose layers are
    /// served lazily: `union` (default: one strata union mount of the image, upper in the
    /// snapshot directory, handed to containerd as a bind mount) or `overlay` (kernel
    /// overlayfs over the per-layer views). docs/integrations.md has the measurements.
    #[serde(default, deserialize_with = "de_snapshotter_rootfs")]
    pub snapshotter_rootfs: SnapshotterRootfs,
    /// Seconds to wait for a mirror that is filling a blob (answered a Range with the whole
    /// blob, or slowly: distribution's pull-through cache) to hold it, polling it with a
    /// one-byte Range request, before reading that blob from the upstream; 0 = go upstream at
    /// once. At most half of `fetch-timeout` is waited.
    #[serde(default = "default_mirror_fill_wait")]
    pub mirror_fill_wait: f64,
}

fn default_downloads() -> usize {
    3
}
fn default_uploads() -> usize {
    5
}
fn default_cache_size() -> u64 {
    20 << 30
}
fn default_memory_cache_size() -> u64 {
    64 << 20
}
fn default_true() -> bool {
    true
}
fn default_fetch_timeout() -> u64 {
    60
}
fn default_fetch_ahead() -> usize {
    0
}
fn default_fetch_siblings() -> usize {
    1
}
fn default_near_request() -> u64 {
    256 << 10
}
fn default_hosts_dir() -> PathBuf {
    PathBuf::from("/etc/containerd/certs.d")
}
fn default_certs_dirs() -> Vec<PathBuf> {
    vec![
        PathBuf::from("/etc/docker/certs.d"),
        PathBuf::from("/etc/containers/certs.d"),
    ]
}
fn default_mirror_timeout() -> f64 {
    5.0
}
fn default_mirror_retry_after() -> f64 {
    10.0
}
fn default_mirror_fill_wait() -> f64 {
    DEFAULT_MIRROR_FILL_WAIT
}

fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    de_size_named(d, "cache-size")
}

fn de_slice_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    de_size_named(d, "mirror-slice-size")
}

fn de_near_request<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    de_size_named(d, "near-request-size")
}

fn de_size_named<'de, D: serde::Deserializer<'de>>(d: D, key: &str) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum S {
        N(u64),
        S(String),
    }
    match S::deserialize(d)? {
        S::N(n) => Ok(n),
        S::S(s) => parse_size(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("{key} {s:?} is not a size like \"20GiB\""))
        }),
    }
}

/// Parse "20GiB", "512MB", "1048576", "10g" into bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        "t" | "tb" => 1000u64.pow(4),
        "tib" => 1 << 40,
        _ => return None,
    };
    if num < 0.0 || !num.is_finite() {
        return None;
    }
    Some((num * mult as f64) as u64)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            registry_mirrors: Vec::new(),
            registry_mirrors_by_host: BTreeMap::new(),
            insecure_registries: Vec::new(),
            max_concurrent_downloads: default_downloads(),
            max_concurrent_uploads: default_uploads(),
            cache_size: default_cache_size(),
            memory_cache_size: default_memory_cache_size(),
            prefetch: true,
            prefetch_profile: ProfileSource::default(),
            index_trust: IndexTrust::default(),
            index_trust_keys: Vec::new(),
            fetch_timeout: default_fetch_timeout(),
            partial_span_fetch: false,
            fetch_ahead_spans: default_fetch_ahead(),
            fetch_siblings: default_fetch_siblings(),
            near_request_size: default_near_request(),
            warm_libraries: true,
            warm_start: true,
            registry_mirror_headers: BTreeMap::new(),
            hosts_dir: default_hosts_dir(),
            certs_dirs: default_certs_dirs(),
            registries_conf: None,
            mirror_slice_size: 0,
            mirror_timeout: default_mirror_timeout(),
            mirror_retry_after: default_mirror_retry_after(),
            snapshotter_rootfs: SnapshotterRootfs::default(),
            mirror_fill_wait: default_mirror_fill_wait(),
        }
    }
}

impl Config {
    /// Load from `path`; a missing file means defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let cfg: Config = serde_json::from_slice(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, msg: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            msg,
        };
        if self.max_concurrent_downloads == 0 || self.max_concurrent_downloads > 64 {
            return Err(invalid(
                "max-concurrent-downloads",
                "must be between 1 and 64".into(),
            ));
        }
        if self.max_concurrent_uploads == 0 || self.max_concurrent_uploads > 64 {
            return Err(invalid(
                "max-concurrent-uploads",
                "must be between 1 and 64".into(),
            ));
        }
        if self.fetch_ahead_spans > 16 {
            return Err(invalid("fetch-ahead-spans", "must be at most 16".into()));
        }
        if self.fetch_timeout == 0 || self.fetch_timeout > 3600 {
            return Err(invalid(
                "fetch-timeout",
                "must be between 1 and 3600 seconds".into(),
            ));
        }
        if self.mirror_slice_size != 0 && !(4096..=(64 << 20)).contains(&self.mirror_slice_size) {
            return Err(invalid(
                "mirror-slice-size",
                "must be 0 (off) or between 4KiB and 64MiB".into(),
            ));
        }
        if !(0.05..=600.0).contains(&self.mirror_timeout) {
            return Err(invalid(
                "mirror-timeout",
                "must be between 0.05 and 600 seconds".into(),
            ));
        }
        if !(0.05..=3600.0).contains(&self.mirror_retry_after) {
            return Err(invalid(
                "mirror-retry-after",
                "must be between 0.05 and 3600 seconds".into(),
            ));
        }
        if !(0.0..=600.0).contains(&self.mirror_fill_wait) {
            return Err(invalid(
                "mirror-fill-wait",
                "must be between 0 (off) and 600 seconds".into(),
            ));
        }
        if self.index_trust == IndexTrust::Signed && self.index_trust_keys.is_empty() {
            return Err(invalid(
                "index-trust-keys",
                "`index-trust: signed` needs at least one public key: \"index-trust-keys\": \
                 [\"/path/to/cosign.pub\"]"
                    .into(),
            ));
        }
        if let Err(msg) = crate::cosign::load_public_keys(&self.index_trust_keys) {
            return Err(invalid("index-trust-keys", msg));
        }
        let all = self
            .registry_mirrors
            .iter()
            .chain(self.registry_mirrors_by_host.values().flatten());
        for m in all {
            if !(m.starts_with("http://") || m.starts_with("https://")) {
                return Err(invalid(
                    "registry-mirrors",
                    format!("mirror {m:?} must be an http:// or https:// URL"),
                ));
            }
        }
        for (m, headers) in &self.registry_mirror_headers {
            if !(m.starts_with("http://") || m.starts_with("https://")) {
                return Err(invalid(
                    "registry-mirror-headers",
                    format!("mirror {m:?} must be an http:// or https:// URL"),
                ));
            }
            for (k, v) in headers {
                let name_ok = !k.is_empty()
                    && k.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c));
                let value_ok = v.bytes().all(|c| c == b'\t' || (0x20..0x7f).contains(&c));
                if !name_ok || !value_ok {
                    return Err(invalid(
                        "registry-mirror-headers",
                        format!("mirror {m:?}: bad header {k:?}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Headers to send to mirror `url` (`registry-mirror-headers`, trailing `/` ignored).
    pub fn mirror_headers(&self, url: &str) -> Vec<(String, String)> {
        let want = url.trim_end_matches('/');
        self.registry_mirror_headers
            .iter()
            .filter(|(m, _)| m.trim_end_matches('/') == want)
            .flat_map(|(_, h)| h.iter().map(|(k, v)| (k.clone(), v.clone())))
            .collect()
    }

    /// Whether `host` is a loopback name or address (spoken to over plain http unless TLS is
    /// configured for it).
    pub fn is_loopback(host: &str) -> bool {
        let bare = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
        bare == "localhost" || bare.starts_with("127.") || bare == "[::1]"
    }

    /// Whether `host` is listed in `insecure-registries`.
    pub fn is_listed_insecure(&self, host: &str) -> bool {
        let bare = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
        self.insecure_registries
            .iter()
            .any(|h| h == host || h == bare)
    }

    /// Mirrors to try before `registry` itself, in order.
    pub fn mirrors_for(&self, registry: &str) -> Vec<String> {
        let mut out = self
            .registry_mirrors_by_host
            .get(registry)
            .cloned()
            .unwrap_or_default();
        if registry == crate::reference::DEFAULT_REGISTRY {
            out.extend(self.registry_mirrors.iter().cloned());
        }
        out
    }

    /// Whether `host` may be spoken to over plain http.
    pub fn is_insecure(&self, host: &str) -> bool {
        Self::is_loopback(host) || self.is_listed_insecure(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(&p, s).unwrap();
        Config::load(&p)
    }

    #[test]
    fn defaults_and_values() {
        let c =
            parse(r#"{"registry-mirrors": ["https://m.example"], "cache-size": "1GiB"}"#).unwrap();
        assert_eq!(c.cache_size, 1 << 30);
        assert_eq!(c.max_concurrent_downloads, 3);
        assert_eq!(
            c.mirrors_for("docker.io"),
            vec!["https://m.example".to_string()]
        );
        assert!(c.mirrors_for("quay.io").is_empty());
        assert!(c.is_insecure("127.0.0.1:5000"));
        assert!(!c.is_insecure("quay.io"));
    }

    #[test]
    fn unknown_key_and_bad_values_are_named() {
        let e = parse(r#"{"registry-mirror": []}"#).unwrap_err().to_string();
        assert!(e.contains("registry-mirror"), "{e}");
        let e = parse(r#"{"cache-size": "lots"}"#).unwrap_err().to_string();
        assert!(e.contains("cache-size"), "{e}");
        let e = parse(r#"{"prefetch-profile": "sometimes"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("prefetch-profile"), "{e}");
        assert_eq!(
            parse(r#"{"prefetch-profile": "local"}"#)
                .unwrap()
                .prefetch_profile,
            ProfileSource::Local
        );
        let e = parse(r#"{"index-trust": "anyone"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("index-trust"), "{e}");
        assert_eq!(
            parse(r#"{"index-trust": "bound"}"#).unwrap().index_trust,
            IndexTrust::Bound
        );
        assert_eq!(Config::default().index_trust, IndexTrust::Registry);
        let e = parse(r#"{"index-trust": "signed"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("index-trust-keys"), "{e}");
        let e = parse(r#"{"index-trust": "signed", "index-trust-keys": ["/nonexistent.pub"]}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("index-trust-keys") && e.contains("/nonexistent.pub"),
            "{e}"
        );
        let e = parse(r#"{"max-concurrent-downloads": 0}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("max-concurrent-downloads"), "{e}");
        let e = parse(r#"{"registry-mirrors": ["ftp://x"]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("registry-mirrors"), "{e}");
        for bad in [
            r#"{"mirror-slice-size": "100"}"#,
            r#"{"mirror-slice-size": "1GiB"}"#,
            r#"{"mirror-slice-size": "lots"}"#,
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("mirror-slice-size"), "{bad}: {e}");
        }
        let e = parse(r#"{"mirror-timeout": 0}"#).unwrap_err().to_string();
        assert!(e.contains("mirror-timeout"), "{e}");
        let e = parse(r#"{"mirror-retry-after": -1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("mirror-retry-after"), "{e}");
        let c = parse(r#"{"mirror-slice-size": "256KiB", "mirror-timeout": 0.5}"#).unwrap();
        assert_eq!(c.mirror_slice_size, 256 << 10);
        assert_eq!(c.mirror_timeout, 0.5);
        assert_eq!(Config::default().mirror_slice_size, 0);
        let e = parse(r#"{"mirror-fill-wait": 601}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("mirror-fill-wait"), "{e}");
        assert_eq!(
            parse(r#"{"mirror-fill-wait": 0}"#)
                .unwrap()
                .mirror_fill_wait,
            0.0
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("20GiB"), Some(20 << 30));
        assert_eq!(parse_size("512MB"), Some(512_000_000));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("x"), None);
    }
}
