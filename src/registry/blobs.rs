//! Blob downloads: a streamed GET (optionally of a byte range, the answer's `Content-Range`
//! checked), a ranged read into memory (cut at the mirror's slice size for a Range-aware
//! caching mirror, each piece asked to its slice's end and the rest kept for the next read of
//! that slice), and a whole small blob verified against its digest. Mirrors first (those
//! that serve content by digest), then the upstream; a mirror that answers a Range with the
//! whole blob or too slowly is filling that blob: it is waited for (`mirror-fill-wait`,
//! polled with one-byte Range requests) and then skipped for that blob for a while
//! (`health.rs`). Uses the parent's client, error type, helpers and endpoint walk.

use super::health::{PollTurn, Skip};
use super::{check_status, range, read_limited, Client, Endpoint, Error, Op};
use crate::digest::Digest;
use crate::reference::Repository;
use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::RANGE;
use reqwest::{Method, Response, StatusCode};
use std::ops::Range;
use std::time::{Duration, Instant};

/// Slice-aligned pieces of one range fetched from a mirror at once.
const MAX_PIECES_IN_FLIGHT: usize = 8;
/// Request header marking a Range request for a small piece of a blob read scattered
/// ([`Client::get_blob_piece`]), sent to mirrors only.
pub const SMALL_PIECE_HEADER: &str = "x-strata-piece";

/// One slice of one blob on one mirror: (endpoint base, blob, slice number).
type SliceKey = (String, Digest, u64);

/// The slices of a slicing mirror's blobs this client has a request for under way. A second
/// request for a slice waits for the first to end instead of going out at once: nginx holds
/// a request for a slice another one is filling (`proxy_cache_lock`) and looks again only
/// every 500 ms (measured: 50 of a cold node's requests waited exactly 0.5 s, when adjacent
/// runs or windows shared a slice); after the first, the slice is in the mirror's cache.
#[derive(Default)]
pub(super) struct SliceLocks(
    std::sync::Mutex<std::collections::HashMap<SliceKey, std::sync::Arc<tokio::sync::Mutex<()>>>>,
);

/// A slice's turn, held while its request is under way; the last holder forgets the slice.
struct SliceTurn<'a> {
    locks: &'a SliceLocks,
    key: SliceKey,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl SliceLocks {
    async fn turn(&self, key: SliceKey) -> SliceTurn<'_> {
        let m = {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        let guard = m.lock_owned().await;
        SliceTurn {
            locks: self,
            key,
            guard: Some(guard),
        }
    }
}

impl Drop for SliceTurn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.0.lock().unwrap_or_else(|p| p.into_inner());
        if map
            .get(&self.key)
            .is_some_and(|m| std::sync::Arc::strong_count(m) == 1)
        {
            map.remove(&self.key);
        }
    }
}

/// What this client received of slicing mirrors' slices (it asks to the slice's end, see
/// [`Client::get_blob_range`]), kept for its next request of that slice: adjacent runs often
/// share a slice (and, in a gzip layer, the byte where one ends and the next begins). The
/// bytes are verified where they are used, as any other; when they fail, the client
/// distrusts the mirror for that blob and forgets what it kept of the blob
/// ([`SliceTails::forget`]).
pub(super) struct SliceTails(std::sync::Mutex<(Tails, usize)>);

/// Slice -> (blob offset of the first byte kept, the bytes); with the bytes kept in all.
type Tails = lru::LruCache<SliceKey, (u64, Bytes)>;

/// Most bytes of slices kept per client.
const SLICE_TAILS_MAX_BYTES: usize = 32 << 20;

impl Default for SliceTails {
    fn default() -> Self {
        SliceTails(std::sync::Mutex::new((lru::LruCache::unbounded(), 0)))
    }
}

impl SliceTails {
    /// The bytes `range` of slice `key` if what is kept of it holds them all.
    fn take(&self, key: &SliceKey, range: &Range<u64>) -> Option<Bytes> {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (start, b) = g.0.get(key)?;
        let end = start + b.len() as u64;
        if range.start < *start || range.end > end {
            return None;
        }
        Some(b.slice((range.start - start) as usize..(range.end - start) as usize))
    }

    /// What is kept of slice `key` when it begins after `from` and reaches `to` (or begins
    /// after it): the blob offset it begins at and the bytes (a later run of the slice was
    /// fetched first).
    fn after(&self, key: &SliceKey, from: u64, to: u64) -> Option<(u64, Bytes)> {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (start, b) = g.0.get(key)?;
        (from < *start && to <= start + b.len() as u64).then(|| (*start, b.clone()))
    }

    /// Keep `b`, the bytes of slice `key` from blob offset `start`.
    fn keep(&self, key: SliceKey, start: u64, b: Bytes) {
        if b.is_empty() {
            return;
        }
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (tails, bytes) = &mut *g;
        *bytes += b.len();
        if let Some((_, old)) = tails.put(key, (start, b)) {
            *bytes -= old.len();
        }
        while *bytes > SLICE_TAILS_MAX_BYTES {
            match tails.pop_lru() {
                Some((_, (_, old))) => *bytes -= old.len(),
                None => break,
            }
        }
    }

    /// Forget everything kept of `blob` (its bytes failed verification).
    pub(super) fn forget(&self, blob: &Digest) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (tails, bytes) = &mut *g;
        let keys: Vec<SliceKey> = tails
            .iter()
            .filter(|(k, _)| k.1 == *blob)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            if let Some((_, b)) = tails.pop(&k) {
                *bytes -= b.len();
            }
        }
    }
}

/// The first pause before asking a filling mirror whether it holds a blob now; doubled after
/// each ask that finds it still filling, up to [`FILL_POLL_MAX`] (one backoff per mirror).
const FILL_POLL_FIRST: Duration = Duration::from_secs(1);
const FILL_POLL_MAX: Duration = Duration::from_secs(8);

/// `range` cut at multiples of `slice` (0 = not cut).
fn slice_pieces(range: &Range<u64>, slice: u64) -> Vec<Range<u64>> {
    if slice == 0 || range.is_empty() {
        return vec![range.clone()];
    }
    let mut out = Vec::new();
    let mut at = range.start;
    while at < range.end {
        let next = ((at / slice) + 1).saturating_mul(slice).min(range.end);
        out.push(at..next);
        at = next;
    }
    out
}

impl Client {
    /// Start a blob download, optionally of a byte range. The caller streams and verifies.
    pub async fn get_blob(
        &self,
        repo: &Repository,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<Response, Error> {
        self.on_endpoints(repo, Op::Pull, Some(digest), |ep| {
            let range = range.clone();
            async move {
                if range.is_some() {
                    self.may_ask_range(&ep, digest)?;
                }
                self.blob_response(&ep, repo, digest, range).await
            }
        })
        .await
    }

    /// `Err` when a range of `blob` is not to be asked of `ep`: a mirror seen fetching whole
    /// blobs on a miss is asked only for the blobs it holds or already fetches for this
    /// client (see [`Health::may_ask_range`](super::health::Health::may_ask_range)), so a
    /// lazy read never sets off a whole-layer fill; with `mirror-fill-wait` set it is asked
    /// (and waited for) as before.
    fn may_ask_range(&self, ep: &Endpoint, blob: &Digest) -> Result<(), Error> {
        match ep.mirror
            && self.fill_wait().is_zero()
            && !self.health.may_ask_range(&ep.base, blob)
        {
            true => Err(Error::NotFound {
                what: format!(
                    "blob {blob} on mirror {} (not asked: it fetches whole blobs on a miss and does not hold this one)",
                    ep.base
                ),
            }),
            false => Ok(()),
        }
    }

    /// A blob GET on one endpoint, its status and `Content-Range` checked. A mirror gets
    /// `mirror-timeout` to answer a Range request: one that takes longer is filling the blob
    /// before it answers, and the request moves on to the next endpoint.
    async fn blob_response(
        &self,
        ep: &Endpoint,
        repo: &Repository,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<Response, Error> {
        let need = range.as_ref().map_or(0, |r| r.end);
        Ok(self
            .blob_response_to(ep, repo, digest, range, need, false)
            .await?
            .0)
    }

    /// [`Self::blob_response`] for a range asked past the bytes needed (up to `need_end`):
    /// the answer may end at the blob's end before the range does. Also gives the end of
    /// the bytes the answer carries (the range's end, or the blob's).
    async fn blob_response_to(
        &self,
        ep: &Endpoint,
        repo: &Repository,
        digest: &Digest,
        range: Option<Range<u64>>,
        need_end: u64,
        small: bool,
    ) -> Result<(Response, u64), Error> {
        let what = format!("blob {digest} in {repo}");
        let url = ep.url(&repo.name, &format!("blobs/{digest}"));
        let scope = Self::scope_pull(ep.repo_name(&repo.name));
        let send = self.send(ep, &scope, Method::GET, &url, |r| {
            let r = match (small, ep.mirror) {
                (true, true) => r.header(SMALL_PIECE_HEADER, "small"),
                _ => r,
            };
            match &range {
                Some(rg) => r.header(
                    RANGE,
                    format!("bytes={}-{}", rg.start, rg.end.saturating_sub(1)),
                ),
                None => r,
            }
        });
        let resp = match (&range, ep.mirror) {
            (Some(_), true) => {
                let after = Duration::try_from_secs_f64(self.config.mirror_timeout)
                    .unwrap_or(Duration::from_secs(5));
                tokio::time::timeout(after, send)
                    .await
                    .map_err(|_| Error::MirrorSlow {
                        what: what.clone(),
                        mirror: ep.base.clone(),
                        after,
                    })??
            }
            _ => send.await?,
        };
        let resp = check_status(resp, Method::GET, &url, &what).await?;
        let mut end = 0;
        if let Some(rg) = &range {
            if resp.status() != StatusCode::PARTIAL_CONTENT {
                if ep.mirror {
                    self.health.fetches_whole(&ep.base, digest);
                }
                // Dropped unread: the connection closes at once (a mirror streaming the whole
                // blob stops when its next write fails).
                return Err(Error::RangeIgnored {
                    what,
                    status: resp.status(),
                    length: resp.content_length(),
                });
            }
            end = range::check_content_range(resp.headers(), rg, need_end, &what)?;
            if ep.mirror {
                self.health.served_range(&ep.base, digest);
            }
        }
        Ok((resp, end))
    }

    /// Fetch a byte range of a blob into memory (bounded by the range length). From a mirror
    /// with `mirror-slice-size` set, the range is cut at slice boundaries and the pieces are
    /// fetched concurrently: each maps to one slice of the mirror's cache (collapsed with
    /// every other client's request for it), and none waits for the mirror to walk several
    /// slices in turn; this client's requests of one slice go one at a time
    /// ([`SliceLocks`]).
    pub async fn get_blob_range(
        &self,
        repo: &Repository,
        digest: &Digest,
        range: Range<u64>,
    ) -> Result<Bytes, Error> {
        self.blob_range(repo, digest, range, false).await
    }

    /// [`Self::get_blob_range`] for one of many small pieces of a blob read scattered (the
    /// gzip windows of a sidecar index): from a mirror, asked as it is (not to the end of a
    /// slice) and marked with the [`SMALL_PIECE_HEADER`], so that a mirror that knows it
    /// caches such pieces by smaller slices (`contrib/nginx/strata-mirror.conf`: 16 KiB):
    /// each then costs the mirror's upstream about its own size, not a whole slice.
    pub async fn get_blob_piece(
        &self,
        repo: &Repository,
        digest: &Digest,
        range: Range<u64>,
    ) -> Result<Bytes, Error> {
        self.blob_range(repo, digest, range, true).await
    }

    async fn blob_range(
        &self,
        repo: &Repository,
        digest: &Digest,
        range: Range<u64>,
        small: bool,
    ) -> Result<Bytes, Error> {
        let slice = match small {
            true => 0,
            false => self.config.mirror_slice_size,
        };
        self.on_endpoints(repo, Op::Pull, Some(digest), |ep| {
            let range = range.clone();
            async move {
                self.may_ask_range(&ep, digest)?;
                let pieces = match ep.mirror {
                    true => slice_pieces(&range, slice),
                    false => vec![range.clone()],
                };
                if pieces.len() <= 1 {
                    return self.range_from(&ep, repo, digest, range, small).await;
                }
                let mut out = Vec::with_capacity((range.end - range.start) as usize);
                let mut rest = &pieces[..];
                if !self.health.serves_ranges(&ep.base, digest) {
                    // The first piece alone: a mirror that does not hold the blob would start
                    // a whole-blob stream (or a fill) for every piece sent at once.
                    out.extend_from_slice(
                        &self
                            .range_from(&ep, repo, digest, pieces[0].clone(), small)
                            .await?,
                    );
                    rest = &pieces[1..];
                }
                let mut bodies = futures::stream::iter(rest.iter().cloned())
                    .map(|p| self.range_from(&ep, repo, digest, p, small))
                    .buffered(MAX_PIECES_IN_FLIGHT);
                while let Some(b) = bodies.next().await {
                    out.extend_from_slice(&b?);
                }
                Ok(Bytes::from(out))
            }
        })
        .await
    }

    /// A whole blob from mirror `ep`, asked as `Range: bytes=0-` (see
    /// [`Self::get_blob_verified`]); the answer's status is recorded in the mirror's health.
    async fn blob_from_start(
        &self,
        ep: &Endpoint,
        repo: &Repository,
        digest: &Digest,
    ) -> Result<Response, Error> {
        let what = format!("blob {digest} in {repo}");
        let url = ep.url(&repo.name, &format!("blobs/{digest}"));
        let scope = Self::scope_pull(ep.repo_name(&repo.name));
        let resp = self
            .send(ep, &scope, Method::GET, &url, |r| {
                r.header(RANGE, "bytes=0-")
            })
            .await?;
        let resp = check_status(resp, Method::GET, &url, &what).await?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => self.health.served_range(&ep.base, digest),
            _ => self.health.fetches_whole(&ep.base, digest),
        }
        Ok(resp)
    }

    /// Bytes `range` of a blob from one endpoint, the body's length checked.
    async fn range_from(
        &self,
        ep: &Endpoint,
        repo: &Repository,
        digest: &Digest,
        range: Range<u64>,
        small: bool,
    ) -> Result<Bytes, Error> {
        let len = range.end.saturating_sub(range.start) as usize;
        let url = format!("{repo}@{digest} bytes {}..{}", range.start, range.end);
        // A range within one slice of a slicing mirror: one request per slice at a time, and
        // asked to the slice's end. The mirror fills the whole slice from its upstream
        // whatever part is asked; answering a part that ends earlier, it would still be
        // filling the slice when this client's next request of it comes (the next run often
        // begins where this one ends), and nginx holds that request for 500 ms
        // (`proxy_cache_lock` polls). Asked to the end, the answer ends when the slice is in
        // the mirror's cache. The bytes past the range cost only the mirror's own link.
        let slice = self.config.mirror_slice_size;
        let one_slice = !small
            && ep.mirror
            && slice > 0
            && len > 0
            && range.start / slice == (range.end - 1) / slice;
        let key = one_slice.then(|| (ep.base.clone(), *digest, range.start / slice));
        // When the slice's bytes from some offset on are kept (a later run of the slice came
        // first), only the bytes before them are asked: the mirror holds the whole slice by
        // then (that answer ended when it did), so a request ending inside it waits for
        // nothing, and no byte is asked twice.
        let (_turn, ask, kept) = match &key {
            Some(key) => {
                let turn = self.slices.turn(key.clone()).await;
                if let Some(b) = self.tails.take(key, &range) {
                    return Ok(b);
                }
                match self.tails.after(key, range.start, range.end) {
                    Some((at, kept)) => (Some(turn), range.start..at, Some(kept)),
                    None => {
                        let end = (key.2.saturating_add(1))
                            .saturating_mul(slice)
                            .max(range.end);
                        (Some(turn), range.start..end, None)
                    }
                }
            }
            None => (None, range.clone(), None),
        };
        let ask_len = (ask.end - ask.start) as usize;
        let need_end = range.end.min(ask.end);
        let (resp, end) = self
            .blob_response_to(ep, repo, digest, Some(ask), need_end, small)
            .await?;
        let carried = end.saturating_sub(range.start) as usize;
        let mut body = read_limited(resp, ask_len, &url).await?;
        let need = (need_end - range.start) as usize;
        if body.len() != carried || body.len() < need {
            return Err(Error::Status {
                method: Method::GET,
                url,
                status: StatusCode::PARTIAL_CONTENT,
                body: format!("short body: {} of {carried} bytes", body.len()),
            });
        }
        if let Some(kept) = kept {
            let mut whole = Vec::with_capacity(body.len() + kept.len());
            whole.extend_from_slice(&body);
            whole.extend_from_slice(&kept);
            body = Bytes::from(whole);
        }
        if let Some(key) = key {
            self.tails.keep(key, range.start, body.clone());
        }
        body.truncate(len);
        Ok(body)
    }

    /// Mirror `ep` answered a Range request for `blob` with the whole blob or too slowly
    /// (`e`): it is filling the blob. Wait for the fill (`mirror-fill-wait`, counted from
    /// the first time this client saw the mirror filling the blob), asking the mirror for
    /// one byte of the blob until it answers with that byte (206: it holds the blob now).
    /// Each ask while the mirror fills makes it start another whole-blob stream from its
    /// upstream, dropped when this client hangs up at once: so the asks of one mirror go
    /// one at a time, smallest blob first, 1, 2, 4, 8, 8, ... seconds apart
    /// ([`Health::poll_turn`]). `true` when the mirror holds the blob; `false` when the wait
    /// is over or the mirror failed (recorded: the blob, or the mirror, skips it for a while).
    /// A mirror that let a wait run out (a proxy that ignores Range and keeps nothing) is not
    /// waited for again.
    pub(super) async fn wait_for_fill(
        &self,
        ep: &Endpoint,
        repo: &Repository,
        blob: &Digest,
        e: &Error,
    ) -> bool {
        let now = Instant::now();
        let wait = self.fill_wait();
        let (deadline, first) = self.health.fill_deadline(&ep.base, blob, now, wait);
        if deadline <= now || self.health.fills_never_end(&ep.base) {
            self.mirror_failed(&ep.base, Some(blob), e);
            return false;
        }
        if first {
            tracing::warn!(mirror = %ep.base, "mirror is filling blob {blob}; waiting up to {wait:?} for it: {e}");
        }
        let size = match e {
            Error::RangeIgnored { length, .. } => *length,
            _ => None,
        };
        self.health
            .poll_join(&ep.base, blob, size, now, FILL_POLL_FIRST);
        let held = self.poll_fill(ep, repo, blob, deadline).await;
        self.health.poll_leave(&ep.base, blob);
        match held {
            Ok(true) => {
                tracing::info!(mirror = %ep.base, waited = ?now.elapsed(), "mirror holds blob {blob} now");
                true
            }
            Ok(false) => {
                tracing::warn!(mirror = %ep.base, "mirror did not fill blob {blob} within {wait:?}; not waiting for it again");
                self.health.fill_never_ended(&ep.base);
                self.mirror_failed(&ep.base, Some(blob), e);
                false
            }
            Err(err) => {
                self.mirror_failed(&ep.base, Some(blob), &err);
                false
            }
        }
    }

    /// Ask mirror `ep` for one byte of `blob` when it is this blob's turn, until it answers
    /// with that byte (`Ok(true)`), `deadline` passes (`Ok(false)`) or it fails. The mirror
    /// is asked at least once when its turn comes: a wait whose first turn slipped past the
    /// deadline (a host too busy to wake this task in time) still asks before it gives up.
    async fn poll_fill(
        &self,
        ep: &Endpoint,
        repo: &Repository,
        blob: &Digest,
        deadline: Instant,
    ) -> Result<bool, Error> {
        let mut asked = false;
        loop {
            let now = Instant::now();
            let over = now >= deadline;
            if over && asked {
                return Ok(false);
            }
            match self.health.poll_turn(&ep.base, blob, now) {
                PollTurn::Later(at) if !over => {
                    tokio::time::sleep_until(at.min(deadline).into()).await;
                    continue;
                }
                // another blob's turn, or the mirror was asked a moment ago
                PollTurn::Later(_) => return Ok(false),
                PollTurn::Ask => asked = true,
            }
            match self.blob_response(ep, repo, blob, Some(0..1)).await {
                Ok(resp) => {
                    // one byte: read it so the connection can be reused
                    let _ = read_limited(resp, 1, "fill poll").await;
                    return Ok(true);
                }
                Err(err) if err.mirror_verdict() == Some(Skip::Blob) => {
                    tracing::debug!(mirror = %ep.base, "mirror still filling blob {blob}: {err}");
                    self.health
                        .poll_missed(&ep.base, Instant::now(), FILL_POLL_MAX);
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Fetch a whole small blob (config, index artifact) and verify it. Bytes from a mirror
    /// that fail verification count as the mirror's failure: the next endpoint is tried. A
    /// mirror is asked for it as a range from its first byte: one that holds the blob answers
    /// 206, one that fetches whole blobs on a miss answers 200 — it shows itself on this
    /// small blob, before any layer is asked of it (`Health::fetches_whole`).
    pub async fn get_blob_verified(
        &self,
        repo: &Repository,
        digest: &Digest,
        limit: usize,
    ) -> Result<Bytes, Error> {
        self.on_endpoints(repo, Op::Pull, Some(digest), |ep| async move {
            // Not of a mirror seen fetching whole blobs, unless it holds this one: during its
            // fill every ask costs its upstream another whole copy.
            self.may_ask_range(&ep, digest)?;
            let resp = match ep.mirror {
                true => self.blob_from_start(&ep, repo, digest).await?,
                false => self.blob_response(&ep, repo, digest, None).await?,
            };
            let what = format!("blob {digest} in {repo}");
            let body = read_limited(resp, limit, &what).await?;
            let got = Digest::of(&body);
            if got != *digest {
                return Err(Error::DigestMismatch {
                    what,
                    expected: *digest,
                    got,
                });
            }
            Ok(body)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::{slice_pieces, SliceLocks};
    use crate::digest::Digest;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    use std::time::Duration;

    /// Requests for one slice go one at a time, other slices (or blobs) at once, and the
    /// table forgets a slice when its last request ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_request_per_slice_at_a_time() {
        let locks = Arc::new(SliceLocks::default());
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let keys = [
            ("m".to_string(), a, 3),
            ("m".to_string(), a, 3),
            ("m".to_string(), a, 3),
            ("m".to_string(), a, 4),
            ("m".to_string(), b, 3),
            ("n".to_string(), a, 3),
        ];
        let inside = Arc::new(AtomicUsize::new(0));
        let most_same = Arc::new(AtomicUsize::new(0));
        let most_all = Arc::new(AtomicUsize::new(0));
        let t0 = std::time::Instant::now();
        let mut tasks = Vec::new();
        for (i, k) in keys.into_iter().enumerate() {
            let (locks, inside, most_same, most_all) = (
                locks.clone(),
                inside.clone(),
                most_same.clone(),
                most_all.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let same = i < 3;
                let _turn = locks.turn(k).await;
                let n = inside.fetch_add(1, SeqCst) + 1;
                most_all.fetch_max(n, SeqCst);
                if same {
                    most_same.fetch_add(1, SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                if same {
                    most_same.fetch_sub(1, SeqCst);
                }
                inside.fetch_sub(1, SeqCst);
            }));
        }
        // Sample: never two of the same slice at once.
        let mut seen_same = 0;
        while tasks.iter().any(|t| !t.is_finished()) {
            seen_same = seen_same.max(most_same.load(SeqCst));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(seen_same, 1, "two requests of one slice at once");
        assert!(most_all.load(SeqCst) >= 4, "other slices waited");
        assert!(
            t0.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t0.elapsed()
        );
        assert!(locks.0.lock().unwrap().is_empty(), "slices not forgotten");
    }

    #[test]
    fn ranges_are_cut_at_slice_boundaries() {
        assert_eq!(slice_pieces(&(10..20), 0), vec![10..20]);
        assert_eq!(slice_pieces(&(10..20), 100), vec![10..20]);
        assert_eq!(slice_pieces(&(0..100), 100), vec![0..100]);
        assert_eq!(slice_pieces(&(90..110), 100), vec![90..100, 100..110]);
        assert_eq!(
            slice_pieces(&(50..350), 100),
            vec![50..100, 100..200, 200..300, 300..350]
        );
        assert_eq!(slice_pieces(&(100..300), 100), vec![100..200, 200..300]);
        assert_eq!(slice_pieces(&(5..5), 100), vec![5..5]);
    }
}
