//! The on-disk layer index: one file, mmap-ed and used in place.
//!
//! Layout (all little-endian; byte-exact description in `docs/layer-index.md`): a 128-byte
//! header (`STRATAIX`, version, counts, section offsets, layer metadata), fixed 88-byte entry
//! records sorted by (parent directory, name), 16-byte xattr records, a deduplicated string
//! table, the encoded [`SeekTable`] and, for eStargz and zstd:chunked layers, 80-byte chunk
//! records sorted by (entry, file offset). `lookup` is a binary search, `list_dir` a contiguous
//! range found by two binary searches. [`LayerIndex::open`] checks every offset, length, kind,
//! UTF-8 string and the sort order once (a linear pass, ~1 ms per 100k entries), so accessors
//! cannot read out of bounds and a corrupt file is an error, never a panic. Files are written
//! atomically (temp file, fsync, rename, fsync of the directory) and never modified in place.

use super::entry::{split_path, Entry, EntryKind, Timestamp};
use super::error::{Error, Result};
use super::seek::{Compression, SeekTable};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"STRATAIX";
/// Format version. 2: per-block (64 KiB) sha256 and compressed bounds in the seek section.
/// 3: the gzip windows moved out of the seek section into a window section at the end of the
/// file, each with its sha256 in the seek section, so the head (everything before the windows)
/// is a complete index that can be fetched alone and windows fetched one at a time.
/// 4: no span or window sha256s in the seek section (the block sha256s check every byte a
/// span or a window decodes to; a SOCI zTOC's table keeps both), and gzip checkpoints closer
/// together among small files: a smaller head, less decoded before a small file.
/// 5: the block records left the head for a block section between the head and the windows
/// (`groups.rs`), the head keeps one sha256 per group of 64: a cold mount fetches the records
/// of the blocks it reads, by group, instead of all of them. Files of other versions are
/// refused with [`Error::IndexVersion`] (rebuild them).
pub const VERSION: u32 = 5;
const HEADER: usize = 128;
const RECORD: usize = 88;
const XATTR: usize = 16;
const CHUNK: usize = 80;
const FLAG_OPAQUE: u8 = 1;
const FLAG_IMPLICIT: u8 = 2;
const META_ESTARGZ: u8 = 1;
const META_WHOLE: u8 = 2;

/// Per-layer facts recorded in the index header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerMeta {
    pub compression: Compression,
    /// Built from a TOC (eStargz, or zstd:chunked when `compression` is zstd); content is
    /// read per chunk.
    pub estargz: bool,
    /// No interior access points (single-frame zstd): fetch the blob whole.
    pub whole: bool,
    pub uncompressed_size: u64,
    pub compressed_size: u64,
}

/// One TOC chunk: a gzip member (eStargz) or zstd frame (zstd:chunked) holding `size` bytes
/// of a file from `file_offset`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Index of the file's record in the entry table.
    pub entry: u32,
    pub file_offset: u64,
    pub size: u64,
    /// Compressed range of the gzip member(s) or zstd frame(s) holding the chunk.
    pub compressed: Range<u64>,
    /// Bytes to skip in the decompressed member before the chunk starts.
    pub inner_offset: u64,
    pub digest: [u8; 32],
}

fn corrupt(path: &Path, reason: impl Into<String>) -> Error {
    Error::CorruptIndex {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

#[derive(Default)]
struct Strings {
    blob: Vec<u8>,
    seen: HashMap<Vec<u8>, u32>,
}

impl Strings {
    fn add(&mut self, s: &[u8], what: &str) -> Result<(u32, u32)> {
        let too_big = || Error::IndexLimit {
            path: what.to_string(),
            reason: "string table over 4 GiB",
        };
        let len = u32::try_from(s.len()).map_err(|_| too_big())?;
        if let Some(&off) = self.seen.get(s) {
            return Ok((off, len));
        }
        let off = u32::try_from(self.blob.len()).map_err(|_| too_big())?;
        self.blob.extend_from_slice(s);
        if self.blob.len() > u32::MAX as usize {
            return Err(too_big());
        }
        self.seen.insert(s.to_vec(), off);
        Ok((off, len))
    }
}

/// Serialise an index. `entries` must be sorted by (parent, name) with unique paths (as
/// `EntryTable::finish` returns them); `chunks` refer to entries by index.
pub fn encode(
    meta: &LayerMeta,
    entries: &[Entry],
    seek: Option<&SeekTable>,
    chunks: &[Chunk],
) -> Result<Vec<u8>> {
    for w in entries.windows(2) {
        if w[0].split() >= w[1].split() {
            return Err(Error::IndexLimit {
                path: w[1].path.clone(),
                reason: "entries not sorted by (parent, name) or duplicated",
            });
        }
    }
    let mut strings = Strings::default();
    let mut records = Vec::with_capacity(entries.len() * RECORD);
    let mut xattrs = Vec::new();
    let mut nx: u64 = 0;
    for e in entries {
        let (parent, name) = e.split();
        let p = strings.add(parent.as_bytes(), &e.path)?;
        let n = strings.add(name.as_bytes(), &e.path)?;
        let link = if e.kind == EntryKind::Hardlink {
            &e.hardlink_target
        } else {
            &e.link_target
        };
        let l = strings.add(link.as_bytes(), &e.path)?;
        let xstart = u32::try_from(nx).map_err(|_| Error::IndexLimit {
            path: e.path.clone(),
            reason: "too many xattrs",
        })?;
        for (k, v) in &e.xattrs {
            let (ko, kl) = strings.add(k.as_bytes(), &e.path)?;
            let (vo, vl) = strings.add(v, &e.path)?;
            for x in [ko, kl, vo, vl] {
                xattrs.extend_from_slice(&x.to_le_bytes());
            }
            nx += 1;
        }
        for x in [p.0, p.1, n.0, n.1, l.0, l.1] {
            records.extend_from_slice(&x.to_le_bytes());
        }
        let flags =
            if e.opaque { FLAG_OPAQUE } else { 0 } | if e.implicit { FLAG_IMPLICIT } else { 0 };
        records.extend_from_slice(&[e.kind as u8, flags, 0, 0]);
        for x in [e.mode, e.uid, e.gid, e.dev_major, e.dev_minor] {
            records.extend_from_slice(&x.to_le_bytes());
        }
        records.extend_from_slice(&e.size.to_le_bytes());
        records.extend_from_slice(&e.offset.to_le_bytes());
        records.extend_from_slice(&e.mtime.sec.to_le_bytes());
        records.extend_from_slice(&e.mtime.nsec.to_le_bytes());
        records.extend_from_slice(&xstart.to_le_bytes());
        records.extend_from_slice(&(e.xattrs.len() as u32).to_le_bytes());
        records.extend_from_slice(&0u32.to_le_bytes());
    }
    let seek_bytes = seek.map(SeekTable::encode).unwrap_or_default();
    let mut chunk_bytes = Vec::with_capacity(chunks.len() * CHUNK);
    for c in chunks {
        chunk_bytes.extend_from_slice(&c.entry.to_le_bytes());
        chunk_bytes.extend_from_slice(&0u32.to_le_bytes());
        for x in [
            c.file_offset,
            c.size,
            c.compressed.start,
            c.compressed.end,
            c.inner_offset,
        ] {
            chunk_bytes.extend_from_slice(&x.to_le_bytes());
        }
        chunk_bytes.extend_from_slice(&c.digest);
    }
    let records_off = HEADER as u64;
    let xattrs_off = records_off + records.len() as u64;
    let strings_off = xattrs_off + xattrs.len() as u64;
    let seek_off = strings_off + strings.blob.len() as u64;
    let chunks_off = seek_off + seek_bytes.len() as u64;
    let mut out = Vec::with_capacity(chunks_off as usize + chunk_bytes.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(HEADER as u32).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    out.extend_from_slice(&(RECORD as u32).to_le_bytes());
    out.extend_from_slice(&(XATTR as u32).to_le_bytes());
    out.extend_from_slice(&nx.to_le_bytes());
    for x in [
        strings_off,
        strings.blob.len() as u64,
        seek_off,
        seek_bytes.len() as u64,
        chunks_off,
        chunks.len() as u64,
    ] {
        out.extend_from_slice(&x.to_le_bytes());
    }
    let mflags =
        if meta.estargz { META_ESTARGZ } else { 0 } | if meta.whole { META_WHOLE } else { 0 };
    out.extend_from_slice(&[meta.compression as u8, mflags, 0, 0, 0, 0, 0, 0]);
    for x in [
        meta.uncompressed_size,
        meta.compressed_size,
        records_off,
        xattrs_off,
    ] {
        out.extend_from_slice(&x.to_le_bytes());
    }
    debug_assert_eq!(out.len(), HEADER);
    out.extend_from_slice(&records);
    out.extend_from_slice(&xattrs);
    out.extend_from_slice(&strings.blob);
    out.extend_from_slice(&seek_bytes);
    out.extend_from_slice(&chunk_bytes);
    if let Some(t) = seek {
        out.extend_from_slice(&t.tail());
    }
    Ok(out)
}

/// Length of the head of an index file (everything before the window section), from its
/// header; `None` if `header` is not a current index header.
pub fn head_len(header: &[u8]) -> Option<u64> {
    if header.len() < HEADER || &header[..8] != MAGIC || u32_at(header, 8) != VERSION {
        return None;
    }
    u64_at(header, 72).checked_add(u64_at(header, 80).checked_mul(CHUNK as u64)?)
}

/// Write `bytes` to `path` atomically: temp file in the same directory, fsync, rename, fsync
/// of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let ioerr = |source| Error::IndexIo {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(ioerr)?;
    tmp.write_all(bytes).map_err(ioerr)?;
    tmp.as_file().sync_all().map_err(ioerr)?;
    tmp.persist(path).map_err(|e| ioerr(e.error))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ioerr)?;
    Ok(())
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    b.get(o..o + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// An open, validated index file; see the module docs.
pub struct LayerIndex {
    map: memmap2::Mmap,
    path: PathBuf,
    count: usize,
    records: usize,
    xattrs: usize,
    nxattrs: usize,
    strings: Range<usize>,
    chunks: usize,
    nchunks: usize,
    meta: LayerMeta,
    seek: Option<SeekTable>,
}

/// A borrowed view of one record.
#[derive(Clone, Copy)]
pub struct EntryRef<'a> {
    index: &'a LayerIndex,
    i: usize,
}

impl LayerIndex {
    /// Map and validate an index file.
    pub fn open(path: &Path) -> Result<Self> {
        let ioerr = |source| Error::IndexIo {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(ioerr)?;
        let len = file.metadata().map_err(ioerr)?.len();
        if len < HEADER as u64 {
            return Err(corrupt(
                path,
                format!("{len} bytes is shorter than the header"),
            ));
        }
        // SAFETY: index files are created by `write_atomic` (temp + rename) and never modified
        // in place, so the mapped bytes do not change while mapped; all reads are bounds-checked.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(ioerr)?;
        Self::from_map(map, path)
    }

    fn from_map(map: memmap2::Mmap, path: &Path) -> Result<Self> {
        let b: &[u8] = &map;
        if &b[..8] != MAGIC {
            return Err(corrupt(path, "bad magic (not a strata layer index)"));
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return Err(Error::IndexVersion {
                path: path.to_path_buf(),
                found: version,
                supported: VERSION,
            });
        }
        if u32_at(b, 12) as usize != HEADER
            || u32_at(b, 24) as usize != RECORD
            || u32_at(b, 28) as usize != XATTR
        {
            return Err(corrupt(path, "unexpected header or record size"));
        }
        let total = b.len() as u128;
        let section = |off: u64, count: u64, size: usize, what: &str| -> Result<usize> {
            let end = off as u128 + count as u128 * size as u128;
            if end > total {
                return Err(corrupt(
                    path,
                    format!("{what} section runs past the end of the file"),
                ));
            }
            Ok(off as usize)
        };
        let count = u64_at(b, 16);
        let nxattrs = u64_at(b, 32);
        let nchunks = u64_at(b, 80);
        let records = section(u64_at(b, 112), count, RECORD, "entry")?;
        let xattrs = section(u64_at(b, 120), nxattrs, XATTR, "xattr")?;
        let strings_off = section(u64_at(b, 40), u64_at(b, 48), 1, "string")?;
        let strings = strings_off..strings_off + u64_at(b, 48) as usize;
        let seek_off = section(u64_at(b, 56), u64_at(b, 64), 1, "seek")?;
        let seek_len = u64_at(b, 64) as usize;
        let chunks = section(u64_at(b, 72), nchunks, CHUNK, "chunk")?;
        // The window section follows the chunk records; the file ends either there (the head
        // alone: windows are fetched one at a time) or after the whole window section.
        let head = chunks + nchunks as usize * CHUNK;
        if seek_off + seek_len > head {
            return Err(corrupt(path, "seek section after the chunk records"));
        }
        let compression =
            Compression::from_u8(b[88]).ok_or_else(|| corrupt(path, "unknown compression"))?;
        let meta = LayerMeta {
            compression,
            estargz: b[89] & META_ESTARGZ != 0,
            whole: b[89] & META_WHOLE != 0,
            uncompressed_size: u64_at(b, 96),
            compressed_size: u64_at(b, 104),
        };
        let seek = if seek_len == 0 {
            None
        } else {
            let tail = &b[head..];
            let t = SeekTable::decode(&b[seek_off..seek_off + seek_len], tail)
                .map_err(|r| corrupt(path, r))?;
            if t.compression != compression || t.uncompressed_size != meta.uncompressed_size {
                return Err(corrupt(
                    path,
                    "seek table does not match the layer metadata",
                ));
            }
            Some(t)
        };
        if seek.is_none() && !meta.estargz {
            return Err(corrupt(path, "no seek table"));
        }
        if seek.is_none() && b.len() != head {
            return Err(corrupt(path, "bytes after the last section"));
        }
        let ix = LayerIndex {
            map,
            path: path.to_path_buf(),
            count: count as usize,
            records,
            xattrs,
            nxattrs: nxattrs as usize,
            strings,
            chunks,
            nchunks: nchunks as usize,
            meta,
            seek,
        };
        ix.validate()?;
        Ok(ix)
    }

    fn validate(&self) -> Result<()> {
        let b: &[u8] = &self.map;
        let slen = (self.strings.end - self.strings.start) as u64;
        let str_ok = |off: u32, len: u32| u64::from(off) + u64::from(len) <= slen;
        let mut prev: Option<(&str, &str)> = None;
        for i in 0..self.count {
            let o = self.records + i * RECORD;
            let bad = |what: &str| corrupt(&self.path, format!("entry record {i}: {what}"));
            for f in [0, 8, 16] {
                if !str_ok(u32_at(b, o + f), u32_at(b, o + f + 4)) {
                    return Err(bad("string out of bounds"));
                }
            }
            let (parent, name) = (self.str_at(o), self.str_at(o + 8));
            let (Some(parent), Some(name), Some(_)) = (parent, name, self.str_at(o + 16)) else {
                return Err(bad("string is not UTF-8"));
            };
            if EntryKind::from_u8(b[o + 24]).is_none() {
                return Err(bad("unknown kind"));
            }
            let (xs, xn) = (u32_at(b, o + 76) as u64, u32_at(b, o + 80) as u64);
            if xs + xn > self.nxattrs as u64 {
                return Err(bad("xattr range out of bounds"));
            }
            if let Some(p) = prev {
                if p >= (parent, name) {
                    return Err(bad("records not sorted by (parent, name)"));
                }
            }
            prev = Some((parent, name));
        }
        for i in 0..self.nxattrs {
            let o = self.xattrs + i * XATTR;
            let ok = str_ok(u32_at(b, o), u32_at(b, o + 4))
                && str_ok(u32_at(b, o + 8), u32_at(b, o + 12))
                && self.str_at(o).is_some();
            if !ok {
                return Err(corrupt(
                    &self.path,
                    format!("xattr record {i} out of bounds"),
                ));
            }
        }
        let mut prev_chunk: Option<(u32, u64)> = None;
        let mut total = Some(0u64);
        for i in 0..self.nchunks {
            let c = self.chunk_at(i);
            total = total.and_then(|t| t.checked_add(c.size));
            let ok = (c.entry as usize) < self.count
                && total.is_some()
                && c.file_offset.checked_add(c.size).is_some()
                && c.compressed.start <= c.compressed.end
                && c.compressed.end <= self.meta.compressed_size
                && prev_chunk.is_none_or(|p| p < (c.entry, c.file_offset));
            if !ok {
                return Err(corrupt(&self.path, format!("chunk record {i} is invalid")));
            }
            prev_chunk = Some((c.entry, c.file_offset));
        }
        Ok(())
    }

    /// A string field (offset, length) at byte `o`; `None` if out of bounds or not UTF-8.
    fn str_at(&self, o: usize) -> Option<&str> {
        let b = self.bytes_at(o)?;
        std::str::from_utf8(b).ok()
    }

    fn bytes_at(&self, o: usize) -> Option<&[u8]> {
        let b: &[u8] = &self.map;
        let off = self.strings.start + u32_at(b, o) as usize;
        let len = u32_at(b, o + 4) as usize;
        if off + len > self.strings.end {
            return None;
        }
        b.get(off..off + len)
    }

    pub(crate) fn chunk_at(&self, i: usize) -> Chunk {
        let b: &[u8] = &self.map;
        let o = self.chunks + i * CHUNK;
        let mut digest = [0u8; 32];
        if let Some(d) = b.get(o + 48..o + 80) {
            digest.copy_from_slice(d);
        }
        Chunk {
            entry: u32_at(b, o),
            file_offset: u64_at(b, o + 8),
            size: u64_at(b, o + 16),
            compressed: u64_at(b, o + 24)..u64_at(b, o + 32),
            inner_offset: u64_at(b, o + 40),
            digest,
        }
    }

    /// Chunks of entry `entry`, in file order.
    pub(crate) fn chunks_of(&self, entry: usize) -> Range<usize> {
        let key = |i: usize| u32_at(&self.map, self.chunks + i * CHUNK) as usize;
        let lo = partition(self.nchunks, |i| key(i) < entry);
        let hi = partition(self.nchunks, |i| key(i) <= entry);
        lo..hi
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn meta(&self) -> LayerMeta {
        self.meta
    }

    /// Whether this file holds its tail, block records and windows (built here), or only its
    /// head (from a sidecar: block records are fetched by group and windows one at a time
    /// when a span is first decoded).
    pub fn tail_local(&self) -> bool {
        self.seek.as_ref().is_none_or(SeekTable::tail_local)
    }

    pub fn seek_table(&self) -> Option<&SeekTable> {
        self.seek.as_ref()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// (parent, name) as bytes: validated UTF-8 at open, and bytewise order is `str` order.
    fn key(&self, i: usize) -> (&[u8], &[u8]) {
        let o = self.records + i * RECORD;
        (
            self.bytes_at(o).unwrap_or_default(),
            self.bytes_at(o + 8).unwrap_or_default(),
        )
    }

    /// The entry at a normalised path (`""` is the root). Binary search, no allocation.
    pub fn lookup(&self, path: &str) -> Option<EntryRef<'_>> {
        let (p, n) = split_path(path);
        let want = (p.as_bytes(), n.as_bytes());
        let i = partition(self.count, |i| self.key(i) < want);
        (i < self.count && self.key(i) == want).then_some(EntryRef { index: self, i })
    }

    /// Children of directory `path`, sorted by name (a contiguous record range).
    pub fn list_dir(&self, path: &str) -> impl Iterator<Item = EntryRef<'_>> + '_ {
        let path = path.as_bytes();
        let lo = partition(self.count, |i| self.key(i).0 < path);
        let hi = partition(self.count, |i| self.key(i).0.cmp(path) != Ordering::Greater);
        (lo..hi)
            .map(move |i| EntryRef { index: self, i })
            .filter(|e| !e.name().is_empty())
    }

    /// All entries in index order.
    pub fn entries(&self) -> impl Iterator<Item = EntryRef<'_>> + '_ {
        (0..self.count).map(move |i| EntryRef { index: self, i })
    }
}

/// First `i` in `0..n` for which `pred` is false (`pred` must be monotone).
fn partition(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

impl<'a> EntryRef<'a> {
    fn o(&self) -> usize {
        self.index.records + self.i * RECORD
    }
    fn b(&self) -> &'a [u8] {
        &self.index.map
    }
    /// Position in the index (stable for a given index file).
    pub fn index(&self) -> usize {
        self.i
    }
    pub fn parent(&self) -> &'a str {
        self.index.str_at(self.o()).unwrap_or_default()
    }
    pub fn name(&self) -> &'a str {
        self.index.str_at(self.o() + 8).unwrap_or_default()
    }
    /// Full normalised path (allocates).
    pub fn path(&self) -> String {
        match (self.parent(), self.name()) {
            ("", n) => n.to_string(),
            (p, n) => format!("{p}/{n}"),
        }
    }
    pub fn kind(&self) -> EntryKind {
        EntryKind::from_u8(self.b()[self.o() + 24]).unwrap_or(EntryKind::File)
    }
    pub fn opaque(&self) -> bool {
        self.b()[self.o() + 25] & FLAG_OPAQUE != 0
    }
    pub fn implicit(&self) -> bool {
        self.b()[self.o() + 25] & FLAG_IMPLICIT != 0
    }
    pub fn mode(&self) -> u32 {
        u32_at(self.b(), self.o() + 28)
    }
    pub fn uid(&self) -> u32 {
        u32_at(self.b(), self.o() + 32)
    }
    pub fn gid(&self) -> u32 {
        u32_at(self.b(), self.o() + 36)
    }
    pub fn dev(&self) -> (u32, u32) {
        (
            u32_at(self.b(), self.o() + 40),
            u32_at(self.b(), self.o() + 44),
        )
    }
    pub fn size(&self) -> u64 {
        u64_at(self.b(), self.o() + 48)
    }
    /// Content offset in the uncompressed tar stream.
    pub fn offset(&self) -> u64 {
        u64_at(self.b(), self.o() + 56)
    }
    pub fn mtime(&self) -> Timestamp {
        Timestamp {
            sec: u64_at(self.b(), self.o() + 64) as i64,
            nsec: u32_at(self.b(), self.o() + 72),
        }
    }
    /// Symlink target (symlinks) or hard link target path (hard links); `""` otherwise.
    pub fn link(&self) -> &'a str {
        self.index.str_at(self.o() + 16).unwrap_or_default()
    }
    /// Extended attributes as (name, value) pairs.
    pub fn xattrs(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        let index = self.index;
        let start = u32_at(self.b(), self.o() + 76) as usize;
        let n = u32_at(self.b(), self.o() + 80) as usize;
        (start..start + n).map(move |x| {
            let o = index.xattrs + x * XATTR;
            (
                index.str_at(o).unwrap_or_default(),
                index.bytes_at(o + 8).unwrap_or_default(),
            )
        })
    }
    /// An owned [`Entry`] with the same fields.
    pub fn to_entry(&self) -> Entry {
        let kind = self.kind();
        let mut e = Entry::new(self.path(), kind);
        e.opaque = self.opaque();
        e.implicit = self.implicit();
        e.mode = self.mode();
        e.uid = self.uid();
        e.gid = self.gid();
        e.size = self.size();
        e.mtime = self.mtime();
        e.offset = self.offset();
        (e.dev_major, e.dev_minor) = self.dev();
        e.xattrs = self
            .xattrs()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect();
        if kind == EntryKind::Hardlink {
            e.hardlink_target = self.link().to_string();
        } else {
            e.link_target = self.link().to_string();
        }
        e
    }
}

impl std::fmt::Debug for LayerIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerIndex")
            .field("path", &self.path)
            .field("entries", &self.count)
            .field("meta", &self.meta)
            .finish()
    }
}

impl std::fmt::Debug for EntryRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryRef")
            .field("path", &self.path())
            .field("kind", &self.kind())
            .field("size", &self.size())
            .finish()
    }
}
