//! Mirror health: which mirrors, and which blobs on a mirror, are skipped for a while.
//!
//! A mirror that failed (connection refused, 5xx, a broken answer, refused credentials) is
//! skipped by every request for a hold-off instead of costing each request a failed round
//! trip. A mirror that answered a blob Range request with the whole blob (200) or too slowly
//! is one that does not hold the blob and fetches it whole first (distribution's pull-through
//! cache does both); that blob goes to the next endpoint while the mirror fills, and the
//! other blobs keep using the mirror. The hold-off starts at `mirror-retry-after` and doubles
//! with each further failure of the probe that follows it, up to [`MAX_BACKOFF`] times; a
//! success forgets the mirror's failures. It also remembers which blobs a mirror has served
//! by range, so that a range cut into slice pieces is sent whole only to a mirror known to hold
//! the blob (a mirror filling a blob would start one whole-blob stream per piece), and which
//! mirrors served bytes of a blob at all: when a layer fetched whole does not match its digest,
//! those mirrors are dropped for the life of the client. Until a mirror has answered a blob by
//! range, one request for that blob at a time goes to it (the probe, [`Health::probe`]) and
//! the others wait for its verdict: a pull-through cache that does not hold the blob starts a
//! whole-blob download from its upstream for every request it gets meanwhile. Pure
//! bookkeeping, no I/O; used by `endpoint.rs` and `blobs.rs`. Uses `digest` and tokio's
//! `watch` channel (the probe's end wakes its waiters).

use crate::digest::Digest;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The hold-off grows to at most this multiple of the first one.
const MAX_BACKOFF: u32 = 16;

#[derive(Debug, Clone, Copy)]
struct Down {
    until: Instant,
    strikes: u32,
}

/// Why a mirror or a blob is being skipped (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The mirror failed: skip it for every request.
    Mirror,
    /// The mirror is filling this blob (answered a Range with 200, or slowly).
    Blob,
}

pub struct Health {
    first: Duration,
    mirrors: Mutex<HashMap<String, Down>>,
    blobs: Mutex<HashMap<(String, Digest), Down>>,
    /// (mirror, blob) pairs the mirror has answered with a range: it holds the blob.
    ranged: Mutex<HashSet<(String, Digest)>>,
    /// Mirrors that answered with any bytes of a blob (for naming and dropping them when the
    /// blob, fetched whole, turns out not to match its digest).
    served: Mutex<HashMap<Digest, HashSet<String>>>,
    /// Mirrors dropped for good (served bytes of a layer whose digest did not match).
    dropped: Mutex<HashSet<String>>,
    /// (mirror, blob) pairs with a probe in flight: its end (the sender dropped) wakes waiters.
    probes: Mutex<HashMap<(String, Digest), watch::Receiver<()>>>,
}

/// What a request for a blob the mirror has not served by range yet does.
pub enum Probe<'a> {
    /// Ask the mirror: the request is the probe (or the mirror is known to serve the blob).
    /// Dropping the guard ends the probe and wakes those waiting for it.
    Go(Option<ProbeGuard<'a>>),
    /// Another request is the probe: wait for it to end (`changed()` returns then), then
    /// decide again.
    Wait(watch::Receiver<()>),
}

/// The probe in flight for one (mirror, blob); its drop ends the probe.
pub struct ProbeGuard<'a> {
    health: &'a Health,
    key: (String, Digest),
    _done: watch::Sender<()>,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        lock(&self.health.probes).remove(&self.key);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Record a failure in `map` at `key`; returns the hold-off when this failure started a new
/// one (a failure seen while the key is already held off, by a request that was in flight
/// when the first one failed, changes nothing and returns `None`).
fn strike<K: std::hash::Hash + Eq>(
    map: &Mutex<HashMap<K, Down>>,
    key: K,
    first: Duration,
    now: Instant,
) -> Option<Duration> {
    let mut m = lock(map);
    let prev = m.get(&key).copied();
    if prev.is_some_and(|d| d.until > now) {
        return None;
    }
    let strikes = prev.map_or(1, |d| d.strikes + 1);
    let factor = 1u32 << (strikes - 1).min(MAX_BACKOFF.trailing_zeros());
    let hold = first.saturating_mul(factor);
    m.insert(
        key,
        Down {
            until: now + hold,
            strikes,
        },
    );
    Some(hold)
}

impl Health {
    pub fn new(first: Duration) -> Health {
        Health {
            first,
            mirrors: Mutex::new(HashMap::new()),
            blobs: Mutex::new(HashMap::new()),
            ranged: Mutex::new(HashSet::new()),
            served: Mutex::new(HashMap::new()),
            dropped: Mutex::new(HashSet::new()),
            probes: Mutex::new(HashMap::new()),
        }
    }

    /// May a request for `blob` go to mirror `base` now? Yes when the mirror serves the blob
    /// by range already, or when no other request is probing it (this one becomes the
    /// probe); otherwise wait for the probe's verdict.
    pub fn probe(&self, base: &str, blob: &Digest) -> Probe<'_> {
        if self.serves_ranges(base, blob) {
            return Probe::Go(None);
        }
        let key = (base.to_string(), *blob);
        let mut probes = lock(&self.probes);
        if let Some(rx) = probes.get(&key) {
            return Probe::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        probes.insert(key.clone(), rx);
        Probe::Go(Some(ProbeGuard {
            health: self,
            key,
            _done: tx,
        }))
    }

    /// The mirror answered a request for `blob` with bytes.
    pub fn served_blob(&self, base: &str, blob: &Digest) {
        let mut m = lock(&self.served);
        let set = m.entry(*blob).or_default();
        if !set.contains(base) {
            set.insert(base.to_string());
        }
    }

    /// Drop every mirror that served bytes of `blob` for the life of this client; returns
    /// them.
    pub fn drop_servers_of(&self, blob: &Digest) -> Vec<String> {
        let bases: Vec<String> = lock(&self.served)
            .remove(blob)
            .map(|s| s.into_iter().collect())
            .unwrap_or_default();
        lock(&self.dropped).extend(bases.iter().cloned());
        bases
    }

    /// Whether mirror `base` was dropped for good.
    pub fn is_dropped(&self, base: &str) -> bool {
        let d = lock(&self.dropped);
        !d.is_empty() && d.contains(base)
    }

    /// The mirror answered a Range request for `blob` with that range.
    pub fn served_range(&self, base: &str, blob: &Digest) {
        let mut r = lock(&self.ranged);
        if !r.contains(&(base.to_string(), *blob)) {
            r.insert((base.to_string(), *blob));
        }
    }

    /// Whether the mirror has answered a Range request for `blob` with that range before
    /// (and has not failed on it since).
    pub fn serves_ranges(&self, base: &str, blob: &Digest) -> bool {
        lock(&self.ranged).contains(&(base.to_string(), *blob))
    }

    /// Whether requests (for `blob`, if given) should skip mirror `base` now.
    pub fn skip(&self, base: &str, blob: Option<&Digest>, now: Instant) -> Option<Skip> {
        if self.is_dropped(base) {
            return Some(Skip::Mirror);
        }
        if lock(&self.mirrors).get(base).is_some_and(|d| d.until > now) {
            return Some(Skip::Mirror);
        }
        let blob = blob?;
        lock(&self.blobs)
            .get(&(base.to_string(), *blob))
            .is_some_and(|d| d.until > now)
            .then_some(Skip::Blob)
    }

    /// The mirror failed; `Some(hold-off)` when it starts being skipped now.
    pub fn mirror_failed(&self, base: &str, now: Instant) -> Option<Duration> {
        strike(&self.mirrors, base.to_string(), self.first, now)
    }

    /// The mirror does not serve `blob` by range yet; `Some(hold-off)` when the blob starts
    /// skipping it now.
    pub fn blob_failed(&self, base: &str, blob: &Digest, now: Instant) -> Option<Duration> {
        lock(&self.ranged).remove(&(base.to_string(), *blob));
        strike(&self.blobs, (base.to_string(), *blob), self.first, now)
    }

    /// The mirror answered (for `blob`, if given): forget its failures.
    pub fn ok(&self, base: &str, blob: Option<&Digest>) {
        {
            let mut m = lock(&self.mirrors);
            if m.contains_key(base) {
                m.remove(base);
            }
        }
        if let Some(b) = blob {
            let mut m = lock(&self.blobs);
            if !m.is_empty() {
                m.remove(&(base.to_string(), *b));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::of(&[n])
    }

    #[test]
    fn a_failed_mirror_is_skipped_for_a_growing_while() {
        let h = Health::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(h.skip("m", None, t0), None);
        assert_eq!(h.mirror_failed("m", t0), Some(Duration::from_secs(10)));
        // requests that were in flight fail too: no new hold-off, no growth
        assert_eq!(h.mirror_failed("m", t0 + Duration::from_secs(1)), None);
        assert_eq!(
            h.skip("m", None, t0 + Duration::from_secs(9)),
            Some(Skip::Mirror)
        );
        assert_eq!(h.skip("m", Some(&d(1)), t0), Some(Skip::Mirror));
        assert_eq!(h.skip("other", None, t0), None);
        // the probe after the hold-off fails again: twice as long, then 4x, ... up to 16x
        let mut t = t0 + Duration::from_secs(10);
        assert_eq!(h.skip("m", None, t), None);
        for want in [20, 40, 80, 160, 160, 160] {
            assert_eq!(h.mirror_failed("m", t), Some(Duration::from_secs(want)));
            t += Duration::from_secs(want);
        }
        // a success forgets every failure
        h.ok("m", None);
        assert_eq!(h.skip("m", None, t), None);
        assert_eq!(h.mirror_failed("m", t), Some(Duration::from_secs(10)));
    }

    #[test]
    fn a_blob_the_mirror_is_filling_skips_it_alone() {
        let h = Health::new(Duration::from_millis(500));
        let t0 = Instant::now();
        assert_eq!(
            h.blob_failed("m", &d(1), t0),
            Some(Duration::from_millis(500))
        );
        assert_eq!(h.skip("m", Some(&d(1)), t0), Some(Skip::Blob));
        assert_eq!(h.skip("m", Some(&d(2)), t0), None);
        assert_eq!(h.skip("m", None, t0), None);
        assert_eq!(h.skip("n", Some(&d(1)), t0), None);
        let later = t0 + Duration::from_millis(500);
        assert_eq!(h.skip("m", Some(&d(1)), later), None);
        assert_eq!(
            h.blob_failed("m", &d(1), later),
            Some(Duration::from_secs(1))
        );
        h.ok("m", Some(&d(1)));
        assert_eq!(h.skip("m", Some(&d(1)), later), None);
        assert!(!h.serves_ranges("m", &d(1)));
        h.served_range("m", &d(1));
        assert!(h.serves_ranges("m", &d(1)));
        assert!(!h.serves_ranges("m", &d(2)) && !h.serves_ranges("n", &d(1)));
        h.blob_failed("m", &d(1), later);
        assert!(!h.serves_ranges("m", &d(1)));
    }

    #[tokio::test]
    async fn one_probe_per_mirror_and_blob_the_others_wait_for_its_end() {
        let h = Health::new(Duration::from_secs(1));
        let Probe::Go(Some(guard)) = h.probe("m", &d(1)) else {
            panic!("the first request is the probe");
        };
        let Probe::Wait(mut rx) = h.probe("m", &d(1)) else {
            panic!("a second request waits for the probe");
        };
        // other blobs and other mirrors have their own probes
        assert!(matches!(h.probe("m", &d(2)), Probe::Go(Some(_))));
        assert!(matches!(h.probe("n", &d(1)), Probe::Go(Some(_))));
        h.served_range("m", &d(1));
        drop(guard);
        // the waiter wakes (the sender is gone) and the mirror now serves the blob by range
        assert!(rx.changed().await.is_err());
        assert!(matches!(h.probe("m", &d(1)), Probe::Go(None)));
        // a probe that ended without a range answer lets the next request probe again
        let Probe::Go(Some(g)) = h.probe("m", &d(3)) else {
            panic!("probe");
        };
        drop(g);
        assert!(matches!(h.probe("m", &d(3)), Probe::Go(Some(_))));
    }
}
