//! Mirror health: which mirrors, and which blobs on a mirror, are skipped for a while.
//!
//! A mirror that failed (connection refused, 5xx, a broken answer, refused credentials) is
//! skipped by every request for a hold-off instead of costing each request a failed round
//! trip. A mirror that answered a blob Range request with the whole blob (200) or too slowly
//! is one that does not hold the blob and fetches it whole first (distribution's pull-through
//! cache does both); that blob goes to the next endpoint while the mirror fills (or, with
//! `mirror-fill-wait`, after waiting for the fill for at most that long), and the
//! other blobs keep using the mirror. The hold-off starts at `mirror-retry-after` and doubles
//! with each further failure of the probe that follows it, up to [`MAX_BACKOFF`] times; a
//! success forgets the mirror's failures. It also remembers which blobs a mirror has served
//! by range, so that a range cut into slice pieces is sent whole only to a mirror known to hold
//! the blob (a mirror filling a blob would start one whole-blob stream per piece), and which
//! mirrors served bytes of a blob at all: when a layer fetched whole does not match its digest,
//! those mirrors are dropped for the life of the client. Until a mirror has answered a blob by
//! range, one request for that blob at a time goes to it (the probe, [`Health::probe`]) and
//! the others wait for its verdict: a pull-through cache that does not hold the blob starts a
//! whole-blob download from its upstream for every request it gets meanwhile. A mirror seen
//! answering a Range with a whole blob is asked for ranges only of the blobs it holds or
//! already fills for this client ([`Health::may_ask_range`]), unless fills are waited for. With
//! `mirror-fill-wait`, the probe that finds a mirror filling a blob waits for the fill
//! instead (bounded once per blob: [`Health::fill_deadline`]) and the other requests for the
//! blob wait with it; the asks whether the mirror holds the blob now go one at a time per
//! mirror, smallest blob first, with one backoff ([`Health::poll_turn`]: each ask during a
//! fill costs the mirror's upstream a whole-blob stream started and dropped), and a mirror
//! that let a wait run out is not waited for again. Pure
//! bookkeeping, no I/O; used by `endpoint.rs` and `blobs.rs`. Uses `digest` and tokio's
//! `watch` channel (the probe's end wakes its waiters).

use crate::digest::Digest;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The hold-off grows to at most this multiple of the first one.
const MAX_BACKOFF: u32 = 16;

/// How often a request waiting for a fill whose blob's turn has not come looks again.
const POLL_LOOK_AGAIN: Duration = Duration::from_millis(250);

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
    /// (mirror, blob) -> until when requests wait for the mirror to fill the blob (set when
    /// the mirror is first seen filling it, never moved: the wait is bounded per blob).
    fills: Mutex<HashMap<(String, Digest), Instant>>,
    /// Per mirror, the blobs being waited for and when the next ask may go out.
    polls: Mutex<HashMap<String, Polls>>,
    /// Mirrors that did not fill a blob within the wait (a proxy that ignores Range without
    /// caching): not waited for again.
    no_fill: Mutex<HashSet<String>>,
    /// Mirrors seen answering a Range with the whole blob: caches that fetch a whole blob
    /// from their upstream on a miss (distribution's pull-through cache).
    whole: Mutex<HashSet<String>>,
    /// (mirror, blob) pairs such a mirror was seen fetching whole for this client: the fill
    /// is under way (paid for), so the blob is asked again after its hold-off.
    set_off: Mutex<HashSet<(String, Digest)>>,
}

/// The asks of one mirror about the blobs it is filling: one at a time, the smallest blob
/// first (fills run side by side, so the smallest ends first), with one backoff per mirror.
/// Each ask while the mirror still fills costs its upstream a whole-blob stream started and
/// dropped: the asks of all blobs together are what the backoff bounds.
struct Polls {
    /// blob -> its size (`u64::MAX` when unknown).
    waiting: HashMap<Digest, u64>,
    next: Instant,
    pause: Duration,
}

/// Whether a request waiting for a fill may ask the mirror now.
#[derive(Debug, PartialEq, Eq)]
pub enum PollTurn {
    /// Ask now (the next ask of this mirror is booked after the current pause).
    Ask,
    /// Not this blob's turn yet: look again at the latest at this instant.
    Later(Instant),
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

/// The key probed for a mirror's first blob request ([`Health::knows`]): no blob's digest.
pub fn first_contact() -> Digest {
    static D: std::sync::OnceLock<Digest> = std::sync::OnceLock::new();
    *D.get_or_init(|| Digest::of(b"strata: the first blob request to a mirror"))
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
            fills: Mutex::new(HashMap::new()),
            polls: Mutex::new(HashMap::new()),
            no_fill: Mutex::new(HashSet::new()),
            whole: Mutex::new(HashSet::new()),
            set_off: Mutex::new(HashSet::new()),
        }
    }

    /// Mirror `base` answered a Range request for `blob` with the whole blob: it fetches
    /// whole blobs on a miss, and is fetching this one now.
    pub fn fetches_whole(&self, base: &str, blob: &Digest) {
        lock(&self.whole).insert(base.to_string());
        lock(&self.set_off).insert((base.to_string(), *blob));
        lock(&self.ranged).insert((base.to_string(), first_contact()));
    }

    /// Mirror `base` answered its first blob request (see [`Health::knows`]).
    pub fn contacted(&self, base: &str) {
        lock(&self.ranged).insert((base.to_string(), first_contact()));
    }

    /// Whether mirror `base` has answered a blob request (it served a range, fetches whole
    /// blobs on a miss, or said anything else); until then its blob requests go one at a time
    /// (`Client::on_endpoints`, probing [`first_contact`]).
    pub fn knows(&self, base: &str) -> bool {
        self.serves_ranges(base, &first_contact())
    }

    /// Whether any mirror was seen fetching whole blobs on a miss.
    pub fn any_fetches_whole(&self) -> bool {
        !lock(&self.whole).is_empty()
    }

    /// Whether a range of `blob` may be asked of mirror `base`: not of a mirror seen
    /// fetching whole blobs on a miss, unless it served this blob by range or is already
    /// fetching it for this client — asking would make it fetch the whole blob from its
    /// upstream for a lazy read of a few bytes.
    pub fn may_ask_range(&self, base: &str, blob: &Digest) -> bool {
        if !lock(&self.whole).contains(base) {
            return true;
        }
        let key = (base.to_string(), *blob);
        lock(&self.ranged).contains(&key) || lock(&self.set_off).contains(&key)
    }

    /// Mirror `base` did not fill a blob within the wait: do not wait for it again.
    pub fn fill_never_ended(&self, base: &str) {
        lock(&self.no_fill).insert(base.to_string());
    }

    /// Whether waiting for mirror `base` to fill a blob is pointless (it did not end one).
    pub fn fills_never_end(&self, base: &str) -> bool {
        let n = lock(&self.no_fill);
        !n.is_empty() && n.contains(base)
    }

    /// A request starts waiting for mirror `base` to fill `blob` (of `size` bytes, if
    /// known). The mirror's first ask is `first` from now.
    pub fn poll_join(
        &self,
        base: &str,
        blob: &Digest,
        size: Option<u64>,
        now: Instant,
        first: Duration,
    ) {
        let mut p = lock(&self.polls);
        let m = p.entry(base.to_string()).or_insert_with(|| Polls {
            waiting: HashMap::new(),
            next: now + first,
            pause: first,
        });
        if m.waiting.is_empty() {
            m.next = m.next.max(now + first);
        }
        m.waiting.insert(*blob, size.unwrap_or(u64::MAX));
    }

    /// The request waiting for `blob` stops (the mirror holds it, failed, or the wait is over).
    pub fn poll_leave(&self, base: &str, blob: &Digest) {
        if let Some(m) = lock(&self.polls).get_mut(base) {
            m.waiting.remove(blob);
        }
    }

    /// May the request waiting for `blob` ask mirror `base` now? Yes when it is the smallest
    /// blob waited for on that mirror and the mirror's pause is over; the next ask is then
    /// booked `pause` later.
    pub fn poll_turn(&self, base: &str, blob: &Digest, now: Instant) -> PollTurn {
        let mut p = lock(&self.polls);
        let Some(m) = p.get_mut(base) else {
            return PollTurn::Ask;
        };
        let mine = m.waiting.get(blob).copied().unwrap_or(u64::MAX);
        let first = m
            .waiting
            .iter()
            .all(|(d, &n)| (n, d.to_string()) >= (mine, blob.to_string()));
        if !first {
            return PollTurn::Later(now + POLL_LOOK_AGAIN);
        }
        if now < m.next {
            return PollTurn::Later(m.next);
        }
        m.next = now + m.pause;
        PollTurn::Ask
    }

    /// An ask found mirror `base` still filling: the pause doubles, up to `max`.
    pub fn poll_missed(&self, base: &str, now: Instant, max: Duration) {
        if let Some(m) = lock(&self.polls).get_mut(base) {
            m.pause = (m.pause * 2).min(max);
            m.next = m.next.max(now + m.pause);
        }
    }

    /// The mirror is filling `blob`: until when to wait for it. The first call for a
    /// (mirror, blob) sets it to `now + wait` and returns `(deadline, true)`; later calls
    /// return the same deadline (in the past once the wait is over) and `false`.
    pub fn fill_deadline(
        &self,
        base: &str,
        blob: &Digest,
        now: Instant,
        wait: Duration,
    ) -> (Instant, bool) {
        let mut f = lock(&self.fills);
        match f.get(&(base.to_string(), *blob)) {
            Some(d) => (*d, false),
            None => {
                f.insert((base.to_string(), *blob), now + wait);
                (now + wait, true)
            }
        }
    }

    /// Until when requests wait for mirror `base` to fill `blob`, if it was seen filling it.
    pub fn filling_until(&self, base: &str, blob: &Digest) -> Option<Instant> {
        let f = lock(&self.fills);
        if f.is_empty() {
            return None;
        }
        f.get(&(base.to_string(), *blob)).copied()
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
            r.insert((base.to_string(), first_contact()));
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
    fn a_mirror_fetching_whole_blobs_is_asked_only_for_blobs_it_holds_or_fills() {
        let h = Health::new(Duration::from_secs(10));
        assert!(!h.knows("m"));
        assert!(h.may_ask_range("m", &d(1)) && h.may_ask_range("m", &d(2)));
        h.served_range("m", &d(3));
        assert!(h.knows("m") && !h.any_fetches_whole());
        h.fetches_whole("m", &d(1));
        assert!(h.any_fetches_whole());
        assert!(
            h.may_ask_range("m", &d(1)),
            "the fill it set off is asked again"
        );
        assert!(h.may_ask_range("m", &d(3)), "it holds this one");
        assert!(
            !h.may_ask_range("m", &d(2)),
            "would set off a whole-blob fill"
        );
        assert!(h.may_ask_range("other", &d(2)));
        let g = Health::new(Duration::from_secs(10));
        g.contacted("n");
        assert!(g.knows("n") && g.may_ask_range("n", &d(2)));
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

    #[test]
    fn a_fill_is_waited_for_once_per_blob() {
        let h = Health::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let w = Duration::from_secs(30);
        assert_eq!(h.filling_until("m", &d(1)), None);
        assert_eq!(h.fill_deadline("m", &d(1), t0, w), (t0 + w, true));
        let later = t0 + Duration::from_secs(40);
        // the deadline does not move: a blob is waited for at most `w` in all
        assert_eq!(h.fill_deadline("m", &d(1), later, w), (t0 + w, false));
        assert_eq!(h.filling_until("m", &d(1)), Some(t0 + w));
        assert_eq!(h.filling_until("n", &d(1)), None);
        assert!(!h.fills_never_end("m"));
        h.fill_never_ended("m");
        assert!(h.fills_never_end("m") && !h.fills_never_end("n"));
    }

    #[test]
    fn a_mirror_is_asked_about_one_blob_at_a_time_smallest_first_with_backoff() {
        let h = Health::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let s1 = Duration::from_secs(1);
        let max = Duration::from_secs(8);
        h.poll_join("m", &d(1), Some(100), t0, s1);
        h.poll_join("m", &d(2), Some(10), t0, s1);
        h.poll_join("m", &d(3), None, t0, s1);
        h.poll_join("n", &d(1), Some(100), t0, s1);
        // nobody before the first pause
        assert_eq!(h.poll_turn("m", &d(2), t0), PollTurn::Later(t0 + s1));
        let t1 = t0 + s1;
        // the bigger and the unknown blob wait for the smallest
        assert!(matches!(h.poll_turn("m", &d(1), t1), PollTurn::Later(_)));
        assert!(matches!(h.poll_turn("m", &d(3), t1), PollTurn::Later(_)));
        assert_eq!(h.poll_turn("m", &d(2), t1), PollTurn::Ask);
        // another mirror has its own turn and backoff
        assert_eq!(h.poll_turn("n", &d(1), t1), PollTurn::Ask);
        // a miss doubles the pause: 2, 4, 8, 8 s
        let mut t = t1;
        for want in [2, 4, 8, 8] {
            h.poll_missed("m", t, max);
            assert_eq!(
                h.poll_turn("m", &d(2), t),
                PollTurn::Later(t + Duration::from_secs(want))
            );
            t += Duration::from_secs(want);
            assert_eq!(h.poll_turn("m", &d(2), t), PollTurn::Ask);
        }
        // the smallest is held now: the next one's turn comes after the pause
        h.poll_leave("m", &d(2));
        assert_eq!(h.poll_turn("m", &d(1), t), PollTurn::Later(t + max));
        assert_eq!(h.poll_turn("m", &d(1), t + max), PollTurn::Ask);
        h.poll_leave("m", &d(1));
        assert!(matches!(
            h.poll_turn("m", &d(3), t + max),
            PollTurn::Later(_)
        ));
        assert_eq!(h.poll_turn("m", &d(3), t + max + max), PollTurn::Ask);
    }
}
