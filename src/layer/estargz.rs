//! eStargz layers: footer, TOC, per-chunk verified reads, and a builder for tests.
//!
//! An eStargz blob is a gzip-compressed tar in which every file chunk starts its own gzip
//! member, followed by a member holding a tar with `stargz.index.json` (the TOC) and a 51-byte
//! footer: an empty gzip member whose FEXTRA subfield `SG` carries `"%016xSTARGZ"`, the TOC's
//! compressed offset. The async caller reads the footer ([`footer_range`]), computes the TOC
//! range ([`toc_range`], pure), reads it, and calls [`index_from_toc`], which checks the TOC's
//! sha256 against the `containerd.io/snapshot/stargz/toc.digest` annotation before trusting
//! anything in it. TOC entries go through the same ingest rules as tar members (whiteouts,
//! `..`, duplicates); chunks keep their member offset and `chunkDigest`, and every chunk read
//! is verified against it. The `.prefetch.landmark` / `.no.prefetch.landmark` files are
//! dropped. [`build`] writes the published layout and is used by tests here and elsewhere.

use super::entry::{EntryKind, EntryTable, RawEntry, Timestamp};
use super::error::{Error, Result};
use super::index::{self, Chunk, LayerIndex, LayerMeta};
use super::seek::Compression;
use super::tar::TarReader;
use crate::digest::Digest;
use base64::Engine as _;
use flate2::write::GzEncoder;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::ops::Range;
use std::path::Path;

/// Size of the eStargz footer.
pub const FOOTER_SIZE: u64 = 51;
/// Name of the TOC inside its tar.
pub const TOC_NAME: &str = "stargz.index.json";
/// Largest decompressed TOC member accepted.
pub const MAX_TOC: u64 = 256 << 20;
const LANDMARKS: [&str; 2] = [".prefetch.landmark", ".no.prefetch.landmark"];

fn err(reason: impl Into<String>) -> Error {
    Error::Estargz {
        reason: reason.into(),
    }
}

/// The files eStargz marks for prefetch: the regular files before a `.prefetch.landmark`
/// entry, in TOC order (paths normalised like index entries). Empty when the layer has no
/// landmark or the `.no.prefetch.landmark` (nothing to prioritise).
pub fn prioritized_files(toc: &Toc) -> Vec<String> {
    let is = |e: &TocEntry, n: &str| e.name.trim_start_matches("./") == n;
    let Some(end) = toc.entries.iter().position(|e| is(e, LANDMARKS[0])) else {
        return Vec::new();
    };
    toc.entries[..end]
        .iter()
        .filter(|e| e.kind == "reg")
        .filter_map(|e| crate::layer::normalize_path(&e.name).ok())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The TOC as published (`stargz.index.json`).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Toc {
    pub version: i64,
    pub entries: Vec<TocEntry>,
}

/// One TOC entry; field names follow the Go `TOCEntry` JSON tags.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TocEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub size: i64,
    #[serde(rename = "modtime", skip_serializing_if = "String::is_empty")]
    pub mod_time: String,
    #[serde(rename = "linkName", skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub mode: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub uid: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub gid: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub offset: i64,
    #[serde(rename = "innerOffset", skip_serializing_if = "is_zero")]
    pub inner_offset: i64,
    #[serde(rename = "devMajor", skip_serializing_if = "is_zero")]
    pub dev_major: i64,
    #[serde(rename = "devMinor", skip_serializing_if = "is_zero")]
    pub dev_minor: i64,
    /// name -> base64 value (Go marshals `[]byte` as base64).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub digest: String,
    #[serde(rename = "chunkOffset", skip_serializing_if = "is_zero")]
    pub chunk_offset: i64,
    #[serde(rename = "chunkSize", skip_serializing_if = "is_zero")]
    pub chunk_size: i64,
    #[serde(rename = "chunkDigest", skip_serializing_if = "String::is_empty")]
    pub chunk_digest: String,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// Where the footer is in a blob of `blob_size` bytes.
pub fn footer_range(blob_size: u64) -> Result<Range<u64>> {
    if blob_size < FOOTER_SIZE {
        return Err(err(format!(
            "blob of {blob_size} bytes is too small for a footer"
        )));
    }
    Ok(blob_size - FOOTER_SIZE..blob_size)
}

/// The TOC's compressed offset, from the 51 footer bytes.
pub fn parse_footer(footer: &[u8]) -> Result<u64> {
    if footer.len() as u64 != FOOTER_SIZE {
        return Err(err(format!(
            "footer is {} bytes, expected 51",
            footer.len()
        )));
    }
    let ok_header = footer[0] == 0x1f && footer[1] == 0x8b && footer[2] == 8 && footer[3] & 4 != 0;
    let xlen = u16::from_le_bytes([footer[10], footer[11]]);
    let sub_len = u16::from_le_bytes([footer[14], footer[15]]);
    if !ok_header || xlen != 26 || &footer[12..14] != b"SG" || sub_len != 22 {
        return Err(err(
            "footer is not an eStargz footer (gzip FEXTRA 'SG' subfield)",
        ));
    }
    let payload = &footer[16..38];
    if &payload[16..] != b"STARGZ" {
        return Err(err("footer subfield does not end in STARGZ"));
    }
    let hex = std::str::from_utf8(&payload[..16]).map_err(|_| err("footer offset is not hex"))?;
    u64::from_str_radix(hex, 16).map_err(|_| err("footer offset is not hex"))
}

/// The compressed range holding the TOC member (pure; from the footer bytes).
pub fn toc_range(footer: &[u8], blob_size: u64) -> Result<Range<u64>> {
    let off = parse_footer(footer)?;
    let end = footer_range(blob_size)?.start;
    if off >= end {
        return Err(err(format!(
            "TOC offset {off} is beyond the footer at {end}"
        )));
    }
    Ok(off..end)
}

/// The footer bytes for a TOC at `toc_offset`.
pub fn footer(toc_offset: u64) -> Vec<u8> {
    let mut f = vec![
        0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 26, 0, b'S', b'G', 22, 0,
    ];
    f.extend_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    // Empty final stored block, then CRC32 and ISIZE of nothing.
    f.extend_from_slice(&[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    f
}

/// Decompress the TOC member, check its digest against `expected`, and parse it.
pub fn parse_toc(toc_gz: &[u8], expected: &Digest) -> Result<Toc> {
    let mut tar = Vec::new();
    flate2::read::MultiGzDecoder::new(toc_gz)
        .take(MAX_TOC + 1)
        .read_to_end(&mut tar)
        .map_err(|e| err(format!("TOC member is not valid gzip: {e}")))?;
    if tar.len() as u64 > MAX_TOC {
        return Err(Error::OutputLimit { limit: MAX_TOC });
    }
    let mut r = TarReader::new(&tar[..]);
    let json = loop {
        let Some(e) = r.next_entry()? else {
            return Err(err(format!("TOC tar has no {TOC_NAME}")));
        };
        if e.path == TOC_NAME {
            let start = e.offset as usize;
            let json = tar
                .get(start..start.saturating_add(e.size as usize))
                .ok_or_else(|| err("TOC entry is truncated"))?;
            break json;
        }
    };
    let got = Digest::of(json);
    if got != *expected {
        return Err(Error::TocDigest {
            expected: *expected,
            got,
        });
    }
    serde_json::from_slice(json).map_err(|e| err(format!("TOC JSON: {e}")))
}

/// RFC 3339 (`2006-01-02T15:04:05[.frac](Z|±hh:mm)`) to a timestamp.
pub(crate) fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    let num =
        |r: Range<usize>| -> Option<i64> { std::str::from_utf8(b.get(r)?).ok()?.parse().ok() };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut nsec: u32 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let mut digits = 0;
        while let Some(c) = b.get(i).filter(|c| c.is_ascii_digit()) {
            if digits < 9 {
                nsec = nsec * 10 + u32::from(c - b'0');
            }
            digits += 1;
            i += 1;
        }
        for _ in digits..9 {
            nsec *= 10;
        }
    }
    let offset = match b.get(i)? {
        b'Z' | b'z' => 0,
        &sign @ (b'+' | b'-') => {
            let o = num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60;
            if sign == b'-' {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(Timestamp {
        sec: days * 86_400 + h * 3600 + mi * 60 + sec - offset,
        nsec,
    })
}

fn digest_field(s: &str, what: &str, name: &str) -> Result<[u8; 32]> {
    let d: Digest = s
        .parse()
        .map_err(|_| err(format!("{name}: {what} {s:?} is not a sha256 digest")))?;
    Ok(*d.as_bytes())
}

/// (name, file offset, size, member offset, explicit end or 0, inner offset, chunkDigest,
/// owning TOC position)
type RawChunk = (String, u64, u64, u64, u64, u64, [u8; 32], usize);

/// Turn a verified TOC into an index file at `out`.
pub fn index_from_toc(
    toc: &Toc,
    toc_offset: u64,
    blob_size: u64,
    out: &Path,
) -> Result<LayerIndex> {
    index_from_entries(
        &toc.entries,
        &[],
        toc_offset,
        blob_size,
        Compression::Gzip,
        out,
    )
}

/// The shared core of [`index_from_toc`] and the zstd:chunked reader: `entries` in the
/// CRFS-style TOC shape both formats use. `ends[i]` (when present and non-zero) is where the
/// compressed bytes of the chunk at TOC position `i` end; otherwise a chunk runs to the next
/// chunk offset of any file (or `toc_offset`), as eStargz TOCs imply.
pub(crate) fn index_from_entries(
    entries: &[TocEntry],
    ends: &[u64],
    toc_offset: u64,
    blob_size: u64,
    compression: Compression,
    out: &Path,
) -> Result<LayerIndex> {
    let mut table = EntryTable::new();
    let mut raw_chunks: Vec<RawChunk> = Vec::new();
    // name -> TOC position of its latest "reg" entry: the last entry for a name wins, chunks
    // of an earlier duplicate are dropped.
    let mut owner: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut offsets: Vec<u64> = vec![toc_offset];
    let mut sizes: BTreeMap<&str, u64> = BTreeMap::new();
    let nonneg = |v: i64, what: &str, name: &str| {
        u64::try_from(v).map_err(|_| err(format!("{name}: negative {what}")))
    };
    for (pos, e) in entries.iter().enumerate() {
        let name = e.name.as_str();
        if e.kind == "reg" {
            owner.insert(name, pos);
        }
        // Landmarks are eStargz's; in a zstd:chunked layer such a name is an ordinary file.
        if compression == Compression::Gzip && LANDMARKS.contains(&name.trim_start_matches("./")) {
            continue;
        }
        let typeflag = match e.kind.as_str() {
            "reg" => b'0',
            "dir" => b'5',
            "symlink" => b'2',
            "hardlink" => b'1',
            "char" => b'3',
            "block" => b'4',
            "fifo" => b'6',
            "chunk" => 0,
            other => return Err(err(format!("{name}: unknown TOC entry type {other:?}"))),
        };
        if matches!(e.kind.as_str(), "reg" | "chunk") && e.offset > 0 {
            let size = if e.kind == "reg" {
                nonneg(e.size, "size", name)?
            } else {
                *sizes
                    .get(name)
                    .ok_or_else(|| err(format!("{name}: chunk before its file")))?
            };
            if e.kind == "reg" {
                sizes.insert(name, size);
            }
            let coff = nonneg(e.chunk_offset, "chunkOffset", name)?;
            let csize = match nonneg(e.chunk_size, "chunkSize", name)? {
                0 => size
                    .checked_sub(coff)
                    .ok_or_else(|| err(format!("{name}: chunkOffset beyond the file")))?,
                n => n,
            };
            if coff.checked_add(csize).is_none_or(|end| end > size) {
                return Err(err(format!(
                    "{name}: chunk {coff}+{csize} beyond the file size {size}"
                )));
            }
            let off = nonneg(e.offset, "offset", name)?;
            if off >= toc_offset {
                return Err(err(format!(
                    "{name}: chunk offset {off} is not before the TOC"
                )));
            }
            offsets.push(off);
            let digest = digest_field(&e.chunk_digest, "chunkDigest", name)?;
            let inner = nonneg(e.inner_offset, "innerOffset", name)?;
            let gen = owner.get(name).copied().unwrap_or(usize::MAX);
            let end = ends.get(pos).copied().unwrap_or(0);
            if end != 0 && (end <= off || end > toc_offset) {
                return Err(err(format!(
                    "{name}: chunk end {end} is not between its offset {off} and the TOC"
                )));
            }
            raw_chunks.push((name.to_string(), coff, csize, off, end, inner, digest, gen));
        } else if e.kind == "reg" {
            sizes.insert(name, nonneg(e.size, "size", name)?);
        }
        if e.kind == "chunk" {
            continue;
        }
        let mut xattrs = Vec::new();
        for (k, v) in &e.xattrs {
            let v = base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|_| err(format!("{name}: xattr {k} is not base64")))?;
            xattrs.push((k.clone(), v));
        }
        table.push_raw(RawEntry {
            path: name.to_string(),
            typeflag,
            mode: (e.mode & 0o7777) as u32,
            uid: nonneg(e.uid, "uid", name)?,
            gid: nonneg(e.gid, "gid", name)?,
            size: if e.kind == "reg" {
                nonneg(e.size, "size", name)?
            } else {
                0
            },
            mtime: if e.mod_time.is_empty() {
                Timestamp::default()
            } else {
                parse_rfc3339(&e.mod_time)
                    .ok_or_else(|| err(format!("{name}: bad modtime {:?}", e.mod_time)))?
            },
            link: e.link_name.clone(),
            dev_major: nonneg(e.dev_major, "devMajor", name)?,
            dev_minor: nonneg(e.dev_minor, "devMinor", name)?,
            xattrs,
            header_offset: 0,
            offset: 0,
        })?;
    }
    let entries = table.finish();
    offsets.sort_unstable();
    offsets.dedup();
    let mut chunks = Vec::with_capacity(raw_chunks.len());
    for (name, file_offset, size, off, end, inner, digest, gen) in raw_chunks {
        if owner.get(name.as_str()) != Some(&gen) {
            continue;
        }
        let path = super::normalize_path(&name).map_err(|r| err(format!("{name}: {r}")))?;
        let key = super::split_path(&path);
        let Ok(entry) = entries.binary_search_by(|e| e.split().cmp(&key)) else {
            continue; // replaced by a later entry with the same name
        };
        if entries[entry].kind != EntryKind::File {
            continue;
        }
        let next = match end {
            0 => {
                offsets[offsets
                    .partition_point(|&o| o <= off)
                    .min(offsets.len() - 1)]
            }
            end => end,
        };
        chunks.push(Chunk {
            entry: entry as u32,
            file_offset,
            size,
            compressed: off..next.max(off),
            inner_offset: inner,
            digest,
        });
    }
    chunks.sort_by_key(|c| (c.entry, c.file_offset));
    chunks.dedup_by_key(|c| (c.entry, c.file_offset));
    let meta = LayerMeta {
        compression,
        estargz: true,
        whole: false,
        uncompressed_size: 0,
        compressed_size: blob_size,
    };
    let bytes = index::encode(&meta, &entries, None, &chunks)?;
    index::write_atomic(out, &bytes)?;
    LayerIndex::open(out)
}

/// Footer + TOC bytes -> verified index at `out` (the two small Range reads done by the caller).
pub fn build_index(
    footer_bytes: &[u8],
    toc_gz: &[u8],
    blob_size: u64,
    expected_toc: &Digest,
    out: &Path,
) -> Result<LayerIndex> {
    let toc_off = toc_range(footer_bytes, blob_size)?.start;
    let toc = parse_toc(toc_gz, expected_toc)?;
    index_from_toc(&toc, toc_off, blob_size, out)
}

/// Decode and verify chunks `chunks` of the file at `path` from `compressed` (which starts at
/// blob offset `range.start`); returns the chunks' bytes concatenated.
pub(crate) fn decode_chunks(
    index: &LayerIndex,
    path: &str,
    chunks: Range<usize>,
    range: Range<u64>,
    compressed: &[u8],
) -> Result<Vec<u8>> {
    if compressed.len() as u64 != range.end - range.start {
        return Err(Error::FetchLength {
            range: range.clone(),
            expected: range.end - range.start,
            got: compressed.len() as u64,
        });
    }
    let mut out = Vec::new();
    for i in chunks {
        let c = index.chunk_at(i);
        let (s, e) = (
            c.compressed.start - range.start,
            c.compressed.end - range.start,
        );
        let member = compressed
            .get(s as usize..e as usize)
            .ok_or_else(|| err(format!("{path}: chunk {i} outside the fetched bytes")))?;
        let start = out.len();
        let zstd = index.meta().compression == Compression::Zstd;
        let at = |e: std::io::Error| {
            let reason = format!("{path}: chunk at {}: {e}", c.file_offset);
            match zstd {
                true => Error::ZstdChunked { reason },
                false => err(reason),
            }
        };
        // eStargz chunks are gzip members, zstd:chunked ones zstd frames (the decoder reads
        // on across frames and skips skippable ones, as gzip does across members).
        let mut dec: Box<dyn Read> = match index.meta().compression {
            Compression::Zstd => Box::new(::zstd::stream::read::Decoder::new(member).map_err(at)?),
            _ => Box::new(flate2::read::MultiGzDecoder::new(member)),
        };
        std::io::copy(&mut (&mut dec).take(c.inner_offset), &mut std::io::sink()).map_err(at)?;
        let n = (&mut dec).take(c.size).read_to_end(&mut out).map_err(at)?;
        let got = Digest::of(&out[start..]);
        if n as u64 != c.size || got.as_bytes() != &c.digest {
            return Err(Error::ChunkDigest {
                path: path.to_string(),
                offset: c.file_offset,
                expected: Digest::from_bytes(c.digest),
                got,
            });
        }
    }
    Ok(out)
}

fn gz_member(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

pub(crate) fn toc_kind(typeflag: u8) -> Option<&'static str> {
    Some(match typeflag {
        b'0' | 0 | b'7' => "reg",
        b'5' => "dir",
        b'2' => "symlink",
        b'1' => "hardlink",
        b'3' => "char",
        b'4' => "block",
        b'6' => "fifo",
        _ => return None,
    })
}

pub(crate) fn rfc3339(t: Timestamp) -> String {
    let days = t.sec.div_euclid(86_400);
    let secs = t.sec.rem_euclid(86_400);
    // Civil from days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Build an eStargz blob from an uncompressed tar (test helper, also for integration tests):
/// each file chunk (`chunk_size` bytes) in its own gzip member, the TOC as the last tar entry
/// in its own member, then the footer. Returns the blob and the TOC digest (the value of the
/// `containerd.io/snapshot/stargz/toc.digest` annotation).
pub fn build(tar: &[u8], chunk_size: u64) -> Result<(Vec<u8>, Digest)> {
    let chunk_size = chunk_size.max(1);
    let mut blob = Vec::new();
    let mut pending: Vec<u8> = Vec::new(); // uncompressed bytes of the open member
    let mut toc = Toc {
        version: 1,
        entries: Vec::new(),
    };
    let mut r = TarReader::new(tar);
    let mut pos: u64 = 0;
    let slice = |r: Range<u64>| -> Result<&[u8]> {
        tar.get(r.start as usize..r.end as usize)
            .ok_or_else(|| err("tar shorter than its headers claim"))
    };
    while let Some(e) = r.next_entry()? {
        pending.extend_from_slice(slice(pos..e.offset)?);
        let kind =
            toc_kind(e.typeflag).ok_or_else(|| err(format!("{}: unsupported tar type", e.path)))?;
        let name = e.path.trim_start_matches("./").to_string();
        let content = slice(e.offset..e.offset + e.size)?;
        let mut te = TocEntry {
            name: name.clone(),
            kind: kind.to_string(),
            size: e.size as i64,
            mod_time: rfc3339(e.mtime),
            link_name: e.link.clone(),
            mode: i64::from(e.mode),
            uid: e.uid as i64,
            gid: e.gid as i64,
            dev_major: e.dev_major as i64,
            dev_minor: e.dev_minor as i64,
            xattrs: e
                .xattrs
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        base64::engine::general_purpose::STANDARD.encode(v),
                    )
                })
                .collect(),
            ..TocEntry::default()
        };
        if kind == "reg" {
            // Like the reference writer (stargz-snapshotter), empty files carry a digest too.
            te.digest = Digest::of(content).to_string();
        }
        if kind == "reg" && e.size > 0 {
            for (i, chunk) in content.chunks(chunk_size as usize).enumerate() {
                blob.extend(gz_member(&pending));
                pending.clear();
                let mut ce = if i == 0 {
                    std::mem::take(&mut te)
                } else {
                    TocEntry {
                        name: name.clone(),
                        kind: "chunk".into(),
                        ..TocEntry::default()
                    }
                };
                ce.offset = blob.len() as i64;
                ce.chunk_offset = i as i64 * chunk_size as i64;
                // The spec: chunkSize is 0 (absent) for the last chunk and for a file that is
                // not chunked.
                if (i as u64 + 1) * chunk_size < e.size {
                    ce.chunk_size = chunk.len() as i64;
                }
                ce.chunk_digest = Digest::of(chunk).to_string();
                toc.entries.push(ce);
                pending.extend_from_slice(chunk);
            }
        } else {
            toc.entries.push(te);
        }
        pos = e.offset + e.size;
    }
    // Everything up to (not including) the end-of-archive block.
    let end = r.position().saturating_sub(512).max(pos);
    pending.extend_from_slice(slice(pos..end)?);
    if !pending.is_empty() {
        blob.extend(gz_member(&pending));
    }
    let toc_off = blob.len() as u64;
    let json = serde_json::to_vec_pretty(&toc).map_err(|e| err(format!("TOC JSON: {e}")))?;
    let mut tb = ::tar::Builder::new(Vec::new());
    let mut h = ::tar::Header::new_ustar();
    h.set_size(json.len() as u64);
    h.set_mode(0o444);
    h.set_entry_type(::tar::EntryType::Regular);
    let toc_tar = h
        .set_path(TOC_NAME)
        .and_then(|_| {
            h.set_cksum();
            tb.append(&h, &json[..])
        })
        .and_then(|_| tb.into_inner())
        .map_err(|e| err(format!("writing TOC tar: {e}")))?;
    blob.extend(gz_member(&toc_tar));
    blob.extend(footer(toc_off));
    Ok((blob, Digest::of(&json)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_round_trip() {
        let f = footer(0x1234_5678);
        assert_eq!(f.len() as u64, FOOTER_SIZE);
        assert_eq!(parse_footer(&f).unwrap(), 0x1234_5678);
        // The footer is a valid, empty gzip member.
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&f[..])
            .read_to_end(&mut out)
            .unwrap();
        assert!(out.is_empty());
        let mut bad = f.clone();
        bad[20] = b'X';
        assert!(parse_footer(&bad).is_err());
        bad = f.clone();
        bad[12] = b'X';
        assert!(parse_footer(&bad).is_err());
        assert!(toc_range(&f, 100).is_err());
    }

    #[test]
    fn rfc3339_round_trip() {
        for sec in [0i64, 1_700_000_000, 951_782_400, -86_400] {
            let t = Timestamp { sec, nsec: 0 };
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t), "{}", rfc3339(t));
        }
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.5+01:00"),
            Some(Timestamp {
                sec: 1_700_000_000 - 3600,
                nsec: 500_000_000
            })
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
