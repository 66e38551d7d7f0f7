//! What to fetch besides the bytes a read asked for, and when: readahead for a sequential
//! reader of a large file, whole layers that are mostly needed (a quarter missed, or read as
//! a sweep), speculation for a cold start walking nearby files (gap filling, fetch-ahead; off
//! by default), the siblings of files read from one directory (a package being imported),
//! partial span fetches for small files, and the pacing of background prefetch behind reads
//! on demand. Pure decisions over a layer's span layout and this module's own small state
//! (the misses per layer, the directories files were read from, the time of the last demand
//! miss); the cache acts on them. Calls nothing outside `cache/`; no I/O.

use super::CachedLayer;
use crate::digest::Digest;
use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Reads at least this long (the kernel's large sequential reads) may trigger readahead.
const READAHEAD_MIN_READ: u64 = 64 << 10;
/// How far (uncompressed bytes) past the end of the spans the file's furthest large miss
/// fetched a large read may start and still count as the next read of a file being streamed.
const READAHEAD_SLACK: u64 = 64 << 10;
/// A file's furthest large read that missed: where it started, its last span, where that
/// span ends (virtual offsets).
type LastMiss = (u64, usize, u64);
/// Files whose last large miss is remembered (the map is cleared when it grows past this).
const READAHEAD_FILES: usize = 4096;
/// Uncompressed bytes of spans fetched ahead of a sequential reader (in bytes, so that it
/// does not shrink with the span size of the index).
const READAHEAD_BYTES: u64 = 16 << 20;
/// A miss this many spans or fewer from one of the layer's last [`RECENT_MISSES`] misses
/// starts neighbour fetch-ahead.
const NEAR_MISS: usize = 8;
const RECENT_MISSES: usize = 8;
/// Misses this many spans apart or closer fill the gap between them.
const GAP: usize = 6;
/// A layer of at least this many spans whose missed spans reach 1/[`WHOLE_FRACTION`] of
/// them is fetched whole; so is one through which reads on demand sweep: [`SWEEP_SPANS`]
/// misses each at most [`SWEEP_GAP`] spans after the one before (a workload reading most of
/// the image in tar order, `tar cf - /usr`, was a serial chain of misses for ~3 s before a
/// quarter had missed: 1.43x `strata pull` + run on minbase). An eighth of the spans after
/// two seconds instead fetched layers whole in cold starts slowed by a busy machine
/// (ten nodes at once: 5.5 -> 7.4 s).
const WHOLE_MIN_SPANS: usize = 4;
const WHOLE_FRACTION: usize = 4;
const SWEEP_SPANS: usize = 16;
const SWEEP_GAP: usize = 4;
/// Sweeps followed at once per layer (other readers' misses interleave with a sweep).
const SWEEPS: usize = 4;
/// Sibling fetch: files larger than this are left to reads on demand.
const SIBLING_MAX_FILE: u64 = 1 << 20;
/// Sibling fetch: most uncompressed bytes of spans fetched for one directory (the spans
/// nearest the file that triggered it; at least one). In bytes, not spans, so that the
/// budget means the same whatever span size the index was built with.
const SIBLING_MAX_BYTES: u64 = 8 << 20;
/// Sibling fetch: most directory entries looked at.
const SIBLING_MAX_ENTRIES: usize = 4096;
/// Sibling fetch: most name suffixes remembered per directory.
const SIBLING_SUFFIXES: usize = 8;
/// Sibling fetch: most directories remembered per layer (a walk of a huge tree stops
/// triggering; nothing else changes).
const SIBLING_MAX_DIRS: usize = 65_536;

/// What a directory of a layer has seen: distinct files first read, their name suffixes, and
/// whether its siblings were fetched already.
#[derive(Default)]
struct DirSeen {
    files: usize,
    suffixes: Vec<Box<str>>,
    done: bool,
}

/// The distinct spans of one layer reads on demand had to fetch, until the layer is fetched
/// whole.
#[derive(Default)]
struct Missed {
    spans: std::collections::BTreeSet<usize>,
    whole: bool,
    /// Sweeps being followed: (last span missed, misses that continued it).
    sweeps: Vec<(usize, usize)>,
}

impl Missed {
    /// Note a miss in `spans`; the length of the sweep it continues (or starts).
    fn sweep(&mut self, spans: &Range<usize>) -> usize {
        let last = spans.end - 1;
        let goes_on = |&(p, _): &(usize, usize)| spans.start > p && spans.start <= p + SWEEP_GAP;
        if let Some(k) = self.sweeps.iter().position(goes_on) {
            let s = &mut self.sweeps[k];
            *s = (last, s.1 + 1);
            return s.1;
        }
        if self
            .sweeps
            .iter()
            .any(|&(p, _)| spans.start <= p && p < spans.end)
        {
            return 0; // a span of a sweep missed again (another reader): no news
        }
        if self.sweeps.len() >= SWEEPS {
            // The shortest sweep gives way.
            if let Some(k) = (0..self.sweeps.len()).min_by_key(|&k| self.sweeps[k].1) {
                self.sweeps.remove(k);
            }
        }
        self.sweeps.push((last, 1));
        1
    }
}

/// Whole-layer prefetch waits until reads on demand have not fetched for this long.
pub const PREFETCH_IDLE: Duration = Duration::from_secs(1);

pub(super) struct Policy {
    /// Fetch only a prefix of a span for a small read of a file ending in it.
    pub(super) partial_spans: bool,
    /// Spans fetched ahead after a miss near an earlier one (0 = no speculation at all).
    fetch_ahead: usize,
    /// Per layer, the spans of the last few reads on demand that had to fetch.
    recent_misses: Mutex<HashMap<Digest, VecDeque<usize>>>,
    /// Per layer, the distinct spans reads on demand had to fetch (the whole-layer rule).
    missed: Mutex<HashMap<Digest, Missed>>,
    /// Per file (layer, virtual end), the furthest large read on demand that had to fetch
    /// (sequential detection): where it started, its last span and where that span ends.
    last_miss: Mutex<HashMap<(Digest, u64), LastMiss>>,
    /// When this policy was made; `last_demand` counts milliseconds from here.
    epoch: Instant,
    /// Last time a read on demand had to fetch (ms since `epoch`, 0 = never).
    last_demand: AtomicU64,
    /// Distinct files first read from one directory of a layer after which its other files
    /// like them are fetched (0 = never).
    siblings_after: usize,
    /// Whether Python modules take part in the sibling fetch.
    siblings_python: bool,
    /// Per layer, the directories files were first read from.
    dirs: Mutex<HashMap<Digest, HashMap<Box<str>, DirSeen>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Policy {
    pub(super) fn new(
        partial_spans: bool,
        fetch_ahead: usize,
        siblings_after: usize,
        siblings_python: bool,
    ) -> Policy {
        Policy {
            partial_spans,
            fetch_ahead,
            siblings_after,
            siblings_python,
            dirs: Mutex::new(HashMap::new()),
            recent_misses: Mutex::new(HashMap::new()),
            missed: Mutex::new(HashMap::new()),
            last_miss: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            last_demand: AtomicU64::new(0),
        }
    }

    /// A read on demand had to fetch.
    pub(super) fn note_demand_miss(&self) {
        let now = (self.epoch.elapsed().as_millis() as u64).max(1);
        self.last_demand.store(now, Relaxed);
    }

    /// How long reads on demand have not had to fetch.
    fn demand_idle(&self) -> Duration {
        let last = self.last_demand.load(Relaxed);
        if last == 0 {
            return Duration::MAX;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(last))
    }

    /// Background prefetch yields to reads on demand: wait until they have been quiet for
    /// [`PREFETCH_IDLE`] and a fetch permit is free (`permits_free`).
    pub(super) async fn wait_for_quiet(&self, permits_free: impl Fn() -> bool) {
        loop {
            let idle = self.demand_idle();
            if idle >= PREFETCH_IDLE && permits_free() {
                return;
            }
            let wait = PREFETCH_IDLE
                .saturating_sub(idle)
                .max(Duration::from_millis(20));
            tokio::time::sleep(wait).await;
        }
    }

    /// Readahead: a large read (virtual `read`) that missed in `spans` where the same file's
    /// furthest large miss left off (starting at or after that read, and at most
    /// [`READAHEAD_SLACK`] past the end of the spans it fetched; the kernel's reads of one
    /// stream may arrive out of order, so only a read that gets further is remembered) looks
    /// like a file being streamed; the next spans of the file (which ends at virtual
    /// `file_end`) to fetch now, so the reader finds them local instead of waiting a round
    /// trip per span. Small reads (small files, the cold-start pattern) never trigger it, nor
    /// do large reads elsewhere in the file: a program mapping a 35 MB library reads its
    /// headers, then its symbol tables a few hundred KiB further on, and would otherwise have
    /// fetched 16 MiB it never reads.
    pub(super) fn readahead(
        &self,
        layer: &CachedLayer,
        spans: Range<usize>,
        read: Range<u64>,
        file_end: u64,
    ) -> Option<Range<usize>> {
        if read.end - read.start < READAHEAD_MIN_READ || spans.is_empty() {
            return None;
        }
        let sequential = {
            let mut last = lock(&self.last_miss);
            if last.len() >= READAHEAD_FILES {
                last.clear();
            }
            let end = layer.layout.span_range(spans.end - 1).end;
            let key = (layer.digest, file_end);
            let prev = last.get(&key).copied();
            let further = prev.is_none_or(|(_, p, _)| spans.end > p + 1);
            if further {
                last.insert(key, (read.start, spans.end - 1, end));
            }
            further
                && prev.is_some_and(|(start, _, pend)| {
                    read.start >= start && read.start <= pend + READAHEAD_SLACK
                })
        };
        if !sequential {
            return None;
        }
        let (n, mut end, mut ahead) = (layer.layout.count(), spans.end, 0);
        while end < n && ahead < READAHEAD_BYTES {
            let r = layer.layout.span_range(end);
            ahead += r.end - r.start;
            end += 1;
        }
        // Never past the file being read.
        while end > spans.end && layer.layout.span_range(end - 1).start >= file_end {
            end -= 1;
        }
        (end > spans.end).then_some(spans.end..end)
    }

    /// Whether a read on demand that missed in `spans` of `layer` makes it mostly needed: a
    /// layer of at least [`WHOLE_MIN_SPANS`] spans of which 1/[`WHOLE_FRACTION`] has missed,
    /// or through which reads sweep ([`SWEEP_SPANS`]), is fetched whole, at once (true once
    /// per layer). A workload that reads most of an image (`tar cf - /usr`) would otherwise
    /// be a serial chain of misses, one round trip each, while the whole-layer prefetch
    /// waits for reads on demand to be quiet.
    pub(super) fn mostly_needed(&self, layer: &CachedLayer, spans: Range<usize>) -> bool {
        let n = layer.layout.count();
        let mut dense = lock(&self.missed);
        let d = dense.entry(layer.digest).or_default();
        if d.whole || spans.is_empty() {
            return false;
        }
        let sweep = d.sweep(&spans);
        d.spans.extend(spans);
        if n >= WHOLE_MIN_SPANS
            && (d.spans.len() * WHOLE_FRACTION >= n || (sweep >= SWEEP_SPANS && n > SWEEP_SPANS))
        {
            tracing::debug!(layer = %layer.digest, missed = d.spans.len(), spans = n, sweep, "layer mostly needed: fetching it whole");
            d.whole = true;
            d.spans = Default::default();
            return true;
        }
        false
    }

    /// Speculation after a read on demand missed in `spans` of `layer` (off when
    /// `fetch_ahead` is 0): the runs of spans to fetch in the background, in the speculative
    /// lane (fewer requests in flight than reads on demand may use). A cold start walks a
    /// package: its files sit together in the tar stream, read in another order than stored,
    /// so misses land close to each other. Two rules:
    /// - a miss within [`GAP`] spans of one of the layer's last [`RECENT_MISSES`] misses fills
    ///   the gap between them (the files in between belong to the same region);
    /// - a miss within [`NEAR_MISS`] of an earlier one fetches the next `fetch_ahead` spans.
    ///
    /// (A layer mostly needed is [`Self::mostly_needed`], on whatever `fetch_ahead` says.)
    pub(super) fn speculate(&self, layer: &CachedLayer, spans: Range<usize>) -> Vec<Range<usize>> {
        if self.fetch_ahead == 0 || spans.is_empty() {
            return Vec::new();
        }
        let n = layer.layout.count();
        let mut out = Vec::new();
        let mut recent = lock(&self.recent_misses);
        let r = recent.entry(layer.digest).or_default();
        let mut near = false;
        for &p in r.iter() {
            if p < spans.start && spans.start - p <= GAP {
                out.push(p + 1..spans.start);
            } else if p >= spans.end && p - spans.end < GAP {
                out.push(spans.end..p);
            }
            near |= p + NEAR_MISS >= spans.start && p <= spans.end + NEAR_MISS;
        }
        r.push_back(spans.end - 1);
        if r.len() > RECENT_MISSES {
            r.pop_front();
        }
        if near {
            let end = (spans.end + self.fetch_ahead).min(n);
            if end > spans.end {
                out.push(spans.end..end);
            }
        }
        out.retain(|r| !r.is_empty());
        out
    }

    pub(super) fn siblings_on(&self) -> bool {
        self.siblings_after > 0
    }

    /// Sibling fetch, when the file at `path` of `layer` is read for the first time: once
    /// `siblings_after` distinct files of its directory with a word suffix have been, the
    /// spans holding the directory's other regular files that share a suffix with one of them
    /// (`.pyc` in a `__pycache__`, `.so` next to `.so`) and are at most [`SIBLING_MAX_FILE`]
    /// long, at most [`SIBLING_MAX_BYTES`] of them (the spans nearest the file), as runs of
    /// adjacent spans; once per directory; spans for which `have` holds (local or in flight)
    /// are left out before choosing. A Python package's `__pycache__/__init__.*` also names
    /// the `__pycache__/__init__` of each of its subpackages ([`subpackage_inits`], a budget
    /// of their own). A program loading a package reads its modules one after another, each
    /// a round trip when it misses: these are the files it is about to ask for. Python
    /// modules (sources, compiled, extensions) are left out when `siblings_python` is off (the
    /// mount follows their imports).
    pub(super) fn siblings(
        &self,
        layer: &CachedLayer,
        path: &str,
        have: impl Fn(usize) -> bool,
    ) -> Vec<Range<usize>> {
        if self.siblings_after == 0 {
            return Vec::new();
        }
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        // Only names with a word suffix count (`.pyc`, `.so`, `.js`): versioned libraries
        // (`libc.so.6`) and suffixless names say nothing about their neighbours.
        let Some(sfx) = suffix(name) else {
            return Vec::new();
        };
        // Extension modules too: the mount finds them by the imports it follows (a module
        // directory such as `lib-dynload` holds dozens a program never imports).
        let extension = name.contains(".cpython-3") || name.ends_with(".abi3.so");
        if !self.siblings_python && (matches!(sfx, "pyc" | "py") || extension) {
            return Vec::new();
        }
        let suffixes = {
            let mut dirs = lock(&self.dirs);
            let per = dirs.entry(layer.digest).or_default();
            if per.len() >= SIBLING_MAX_DIRS && !per.contains_key(dir) {
                return Vec::new();
            }
            let d = per.entry(dir.into()).or_default();
            if d.done {
                return Vec::new();
            }
            d.files += 1;
            if d.suffixes.len() < SIBLING_SUFFIXES && !d.suffixes.iter().any(|s| **s == *sfx) {
                d.suffixes.push(sfx.into());
            }
            if d.files < self.siblings_after {
                return Vec::new();
            }
            d.done = true;
            std::mem::take(&mut d.suffixes)
        };
        let layout = &layer.layout;
        let index = layout.index();
        let spans_of = |e: &crate::layer::EntryRef<'_>| {
            layout
                .file_range(e, 0..u64::MAX)
                .ok()
                .and_then(|r| layout.locate(r).ok())
        };
        let here = index
            .lookup(path)
            .and_then(|e| spans_of(&e))
            .map_or(0, |s| s.start);
        let mut spans = std::collections::BTreeSet::new();
        for e in index.list_dir(dir).take(SIBLING_MAX_ENTRIES) {
            let fits = e.kind() == crate::layer::EntryKind::File
                && (1..=SIBLING_MAX_FILE).contains(&e.size())
                && suffix(e.name()).is_some_and(|x| suffixes.iter().any(|s| **s == *x));
            if let Some(s) = fits.then(|| spans_of(&e)).flatten() {
                spans.extend(s);
            }
        }
        let within_budget = |spans: std::collections::BTreeSet<usize>| {
            let mut near: Vec<usize> = spans.into_iter().filter(|&i| !have(i)).collect();
            near.sort_by_key(|&i| i.abs_diff(here));
            let mut budget = SIBLING_MAX_BYTES;
            let keep = near
                .iter()
                .take_while(|&&i| {
                    let ok = budget > 0;
                    let r = layout.span_range(i);
                    budget = budget.saturating_sub(r.end - r.start);
                    ok
                })
                .count();
            near.truncate(keep);
            near
        };
        let mut near = within_budget(spans);
        // A Python package's own `__init__` (`P/__pycache__/__init__.*.pyc`): importing it
        // usually imports its subpackages next, each `__init__` in a directory of its own
        // (so never a sibling): theirs too, in a budget of their own.
        let pkg = dir.strip_suffix("/__pycache__");
        if let Some(pkg) = pkg.filter(|_| name.starts_with("__init__.")) {
            let mut inits = subpackage_inits(index, pkg, sfx, spans_of);
            inits.retain(|i| !near.contains(i));
            near.extend(within_budget(inits));
        }
        near.sort_unstable();
        let mut runs: Vec<Range<usize>> = Vec::new();
        for i in near {
            match runs.last_mut() {
                Some(r) if r.end == i => r.end = i + 1,
                _ => runs.push(i..i + 1),
            }
        }
        runs
    }

    /// Partial span fetch: for a small read `range` of a file ending at virtual `file_end`
    /// inside span `i`, the last block to fetch and the compressed bytes that decode blocks
    /// up to it. `None` when the whole span should be fetched: the file goes on past the span
    /// (a sequential reader wants the rest), the read leaves the span, the layer cannot decode
    /// a prefix, or the prefix would save little (over 3/4 of the span's compressed bytes).
    pub(super) fn prefix(
        &self,
        layer: &CachedLayer,
        i: usize,
        range: &Range<u64>,
        file_end: u64,
    ) -> Option<(usize, Range<u64>)> {
        if !self.partial_spans {
            return None;
        }
        let span = layer.layout.span_range(i);
        if file_end >= span.end || range.end > span.end || range.start < span.start {
            return None;
        }
        let upto = file_end.max(range.end);
        let k = layer
            .layout
            .blocks_covering(i, range.start..upto)
            .end
            .checked_sub(1)?;
        let crange = layer.layout.prefix_plan(i, k)?;
        let whole = layer.layout.compressed(i..i + 1).ok()?;
        if (crange.end - crange.start) * 4 > (whole.end - whole.start) * 3 {
            return None;
        }
        Some((k, crange))
    }
}

/// A file name's suffix for sibling matching: what follows its last dot when that is a word
/// of ASCII letters (`pyc`, `so`; not the `6` of `libc.so.6`), else none.
/// The spans of the `__pycache__/__init__.*.SFX` files (at most [`SIBLING_MAX_FILE`] long)
/// of the direct subdirectories of package directory `pkg` of `index`; `spans_of` locates a
/// file's spans.
fn subpackage_inits(
    index: &crate::layer::LayerIndex,
    pkg: &str,
    sfx: &str,
    spans_of: impl Fn(&crate::layer::EntryRef<'_>) -> Option<Range<usize>>,
) -> std::collections::BTreeSet<usize> {
    use crate::layer::EntryKind;
    let subs = index
        .list_dir(pkg)
        .take(SIBLING_MAX_ENTRIES)
        .filter(|sub| sub.kind() == EntryKind::Dir);
    let mut out = std::collections::BTreeSet::new();
    for sub in subs {
        let cache = format!("{pkg}/{}/__pycache__", sub.name());
        for e in index.list_dir(&cache).take(SIBLING_MAX_ENTRIES) {
            let fits = e.kind() == EntryKind::File
                && e.name().starts_with("__init__.")
                && (1..=SIBLING_MAX_FILE).contains(&e.size())
                && suffix(e.name()) == Some(sfx);
            out.extend(fits.then(|| spans_of(&e)).flatten().into_iter().flatten());
        }
    }
    out
}

fn suffix(name: &str) -> Option<&str> {
    let (stem, s) = name.rsplit_once('.')?;
    (!stem.is_empty()
        && !s.is_empty()
        && s.len() <= 16
        && s.bytes().all(|b| b.is_ascii_alphabetic()))
    .then_some(s)
}
