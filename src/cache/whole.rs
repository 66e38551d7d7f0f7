//! The whole-layer digest check: while a layer is being fetched whole (background prefetch,
//! `strata cache fetch`), the compressed bytes every fetch decodes are also written, at their
//! offsets, into a sparse file `<cache dir>/<layer hex>/whole.part.<pid>` (beside the span
//! files: a killed process's one is removed by the next open of the cache, as temp files are); when every span is in,
//! the spans not decoded during the recording are fetched (and verified) once more, the bytes
//! that belong to no span (gzip trailer, eStargz TOC) are fetched raw, and the file's sha256 is
//! compared with the layer digest from the image manifest.
//!
//! Why this is sound: every served span was verified against the index, and so was the
//! recorded fetch of it (same sha256 per block, so the same bytes); the recorded fetches
//! agree wherever they overlap (a disagreement is itself a mismatch: two different answers for
//! one blob range); so when the file matches the layer digest, every span the cache holds is
//! the decode of the layer's true bytes, whatever index vouched for it. On a mismatch the layer
//! is poisoned (every later read fails with EIO), its spans are dropped from both tiers, and a
//! marker `<cache dir>.verdicts/<layer hex>.bad` tells other processes sharing the cache. A match
//! leaves `<cache dir>.verdicts/<layer hex>.verified` naming the index file it was checked under.
//!
//! Calls nothing outside `cache/` but `digest`; the fetching is `mod.rs`'s.

use crate::digest::Digest;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Per-layer state of the check; one per [`CachedLayer`](super::CachedLayer).
#[derive(Default)]
pub struct WholeCheck {
    rec: Mutex<Option<Recording>>,
    poisoned: AtomicBool,
}

struct Recording {
    file: std::fs::File,
    path: PathBuf,
    /// Recorded compressed ranges, merged (start -> end).
    covered: BTreeMap<u64, u64>,
    /// Spans decoded whole from recorded bytes.
    decoded: BTreeSet<usize>,
    /// Two fetches returned different bytes for one blob range.
    conflict: bool,
    /// Whole-layer fetches sharing this recording.
    users: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Parts of `r` not in `covered` (merged, sorted).
fn gaps(covered: &BTreeMap<u64, u64>, r: Range<u64>) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut at = r.start;
    let first = covered.range(..=r.start).next_back().map(|(&s, _)| s);
    let iter = covered.range(first.unwrap_or(r.start)..);
    for (&s, &e) in iter {
        if s >= r.end {
            break;
        }
        if e <= at {
            continue;
        }
        if s > at {
            out.push(at..s);
        }
        at = at.max(e);
        if at >= r.end {
            break;
        }
    }
    if at < r.end {
        out.push(at..r.end);
    }
    out
}

fn merge(covered: &mut BTreeMap<u64, u64>, r: Range<u64>) {
    let (mut s, mut e) = (r.start, r.end);
    let touching: Vec<(u64, u64)> = covered
        .range(..=e)
        .filter(|(_, &ce)| ce >= s)
        .map(|(&a, &b)| (a, b))
        .collect();
    for (a, b) in touching {
        covered.remove(&a);
        s = s.min(a);
        e = e.max(b);
    }
    covered.insert(s, e);
}

impl WholeCheck {
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    pub(super) fn poison(&self) {
        self.poisoned.store(true, Ordering::Release);
    }

    /// Start (or join) the recording into `path`.
    pub(super) fn begin(&self, path: &Path) -> std::io::Result<()> {
        let mut g = lock(&self.rec);
        if let Some(r) = g.as_mut() {
            r.users += 1;
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        *g = Some(Recording {
            file,
            path: path.to_path_buf(),
            covered: BTreeMap::new(),
            decoded: BTreeSet::new(),
            conflict: false,
            users: 1,
        });
        Ok(())
    }

    /// Whether a recording is running.
    pub(super) fn recording(&self) -> bool {
        lock(&self.rec).is_some()
    }

    /// Bytes `data` at compressed offset `at` were fetched and decoded (into whole spans
    /// `spans`, if any) without error. Blocking file I/O: call it on the blocking pool.
    pub(super) fn record(&self, at: u64, data: &[u8], spans: Option<Range<usize>>) {
        let mut g = lock(&self.rec);
        let Some(r) = g.as_mut() else { return };
        let whole = at..at + data.len() as u64;
        let new = gaps(&r.covered, whole.clone());
        // Where earlier fetches recorded bytes, these must be the same bytes.
        let mut old = Vec::new();
        let mut at2 = whole.start;
        for g in new.iter().chain(std::iter::once(&(whole.end..whole.end))) {
            if g.start > at2 {
                old.push(at2..g.start);
            }
            at2 = g.end;
        }
        for o in old {
            let mut buf = vec![0u8; (o.end - o.start) as usize];
            let same = r.file.read_exact_at(&mut buf, o.start).is_ok()
                && buf[..] == data[(o.start - at) as usize..(o.end - at) as usize];
            if !same {
                r.conflict = true;
            }
        }
        for g in new {
            let part = &data[(g.start - at) as usize..(g.end - at) as usize];
            if r.file.write_all_at(part, g.start).is_err() {
                // A gap stays a gap: it is fetched again at the end.
                continue;
            }
            merge(&mut r.covered, g);
        }
        if let Some(s) = spans {
            r.decoded.extend(s);
        }
    }

    /// Spans (of `count`) not decoded from recorded bytes, and the compressed ranges of
    /// `0..size` not recorded.
    pub(super) fn missing(&self, count: usize, size: u64) -> (Vec<usize>, Vec<Range<u64>>) {
        let g = lock(&self.rec);
        match g.as_ref() {
            Some(r) => (
                (0..count).filter(|i| !r.decoded.contains(i)).collect(),
                gaps(&r.covered, 0..size),
            ),
            None => (Vec::new(), Vec::new()),
        }
    }

    /// Leave the recording; the last user gets the recorded file (open, and its path) and
    /// whether fetches disagreed (the caller hashes it, then removes it).
    pub(super) fn end(&self) -> Option<(std::fs::File, PathBuf, bool)> {
        let mut g = lock(&self.rec);
        let r = g.as_mut()?;
        r.users -= 1;
        if r.users > 0 {
            return None;
        }
        let r = g.take()?;
        Some((r.file, r.path, r.conflict))
    }
}

/// Decompress the recorded layer at `path` (already matched against its digest) from its
/// start and check every span of `layout` against the index: the index's checkpoints and
/// stored windows decide how a fetched run is decoded, so true compressed bytes under a
/// forged index could still decode into altered spans; this pass compares the index with the
/// layer itself. eStargz layouts are skipped (their TOC digest is in the manifest).
/// Blocking; returns the first span that does not match.
pub(super) fn check_spans(file: &std::fs::File, layout: &super::Layout) -> Result<(), String> {
    use crate::layer::Compression;
    use std::io::{Read, Seek};
    let meta = layout.index().meta();
    if meta.estargz {
        return Ok(());
    }
    let mut f = file.try_clone().map_err(|e| e.to_string())?;
    f.seek(std::io::SeekFrom::Start(0))
        .map_err(|e| e.to_string())?;
    let r = std::io::BufReader::with_capacity(1 << 20, f);
    let mut dec: Box<dyn Read> = match meta.compression {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(r).map_err(|e| e.to_string())?)
        }
        _ => Box::new(r),
    };
    let mut pos = 0u64;
    let mut buf = Vec::new();
    for i in 0..layout.count() {
        let sr = layout.span_range(i);
        if sr.start < pos {
            return Err(format!("span {i} overlaps the one before"));
        }
        std::io::copy(&mut (&mut dec).take(sr.start - pos), &mut std::io::sink())
            .map_err(|e| e.to_string())?;
        buf.resize((sr.end - sr.start) as usize, 0);
        dec.read_exact(&mut buf)
            .map_err(|e| format!("span {i}: {e}"))?;
        pos = sr.end;
        if !layout.verify(i, &buf) {
            return Err(format!(
                "span {i} (uncompressed bytes {sr:?}) does not match the index"
            ));
        }
    }
    Ok(())
}

/// sha256 of `file` from its start (blocking; positional reads: the file may have been
/// unlinked by another process's cleanup of the cache directory meanwhile).
pub(super) fn hash_file(file: &std::fs::File) -> std::io::Result<Digest> {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = file.read_at(&mut buf, at)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(Digest::from_bytes(h.finalize().into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_and_merges() {
        let mut c = BTreeMap::new();
        assert_eq!(gaps(&c, 0..10), vec![0..10]);
        merge(&mut c, 2..4);
        merge(&mut c, 6..8);
        assert_eq!(gaps(&c, 0..10), vec![0..2, 4..6, 8..10]);
        assert_eq!(gaps(&c, 3..7), vec![4..6]);
        merge(&mut c, 4..6);
        assert_eq!(c.len(), 1);
        assert_eq!(gaps(&c, 0..10), vec![0..2, 8..10]);
    }

    #[test]
    fn disagreeing_fetches_are_a_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let w = WholeCheck::default();
        w.begin(&dir.path().join("x.part")).unwrap();
        w.record(0, b"abcd", Some(0..1));
        w.record(2, b"cdef", None);
        let (spans, holes) = w.missing(2, 8);
        assert_eq!(spans, vec![1]);
        assert_eq!(holes, vec![6..8]);
        w.record(5, b"Xgh", Some(1..2));
        let (file, path, conflict) = w.end().unwrap();
        assert!(conflict, "byte 5 was f, then X");
        assert_eq!(std::fs::read(path).unwrap(), b"abcdefgh");
        assert_eq!(hash_file(&file).unwrap(), Digest::of(b"abcdefgh"));
    }
}
