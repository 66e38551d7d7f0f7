//! zstd:chunked layers (containers/storage's partial-pull format): the TOC located by layer
//! annotations, its checksum checked, turned into a chunk index; and a writer for tests.
//!
//! The format, as containers/storage writes it (`pkg/chunked/compressor/compressor.go`,
//! `pkg/chunked/internal/minimal/compression.go`, 1.43 to 1.5x): the blob is one zstd stream
//! in which each regular file's content starts a new frame, and each of the file's chunks
//! (rollsum-cut) is its own frame; tar headers and padding sit in the frames between. After
//! the last data frame come skippable frames (magic `0x184D2A50`): the zstd-compressed TOC
//! (JSON), in newer writers the compressed tar-split data, and a footer (40 bytes in 1.43,
//! 64 later) that readers need not use. The layer annotations locate the TOC:
//! `…zstd-chunked.manifest-checksum` (sha256 of the *compressed* TOC) and
//! `…zstd-chunked.manifest-position` (`offset:length:uncompressedLength:type`, type 1), under
//! the prefix `io.github.containers.` (containers/storage ≥ 1.45) or `io.containers.` (older,
//! what Debian's skopeo 1.9 writes). The image manifest's digest covers the annotations, so
//! one Range read gives a TOC the image vouches for, and every chunk read is checked against
//! the TOC's digests.
//!
//! TOC fields relied on (Go `FileMetadata` JSON tags): `type` (`reg dir symlink hardlink char
//! block fifo chunk`), `name`, `linkName`, `mode`, `size`, `uid`, `gid`, `modtime` (RFC 3339),
//! `devMajor`, `devMinor`, `xattrs` (base64 values), `digest` (sha256 of the whole file:
//! the check for a file with no `chunk` entries), `offset` (compressed offset of the file's,
//! or chunk's, first frame), `endOffset` (end of the file's last frame), `chunkOffset`,
//! `chunkSize`, `chunkDigest` (set on the `reg` entry and each `chunk` entry once a file has
//! more than one chunk). `chunkType` `zeros` chunks are frames of zeros like any other and are
//! read the same way. Ignored: `accesstime`, `changetime`, `tarSplitDigest` and the tar-split
//! annotation (strata never rebuilds the tar stream). Entries then follow the eStargz rules
//! (`estargz::index_from_entries`: whiteouts, duplicates, `..`), with each chunk's compressed
//! range ending exactly at the next chunk's frame or the file's `endOffset`.

use super::error::{Error, Result};
use super::estargz::{self, TocEntry};
use super::index::LayerIndex;
use super::seek::Compression;
use super::tar::TarReader;
use crate::digest::Digest;
use base64::Engine as _;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::ops::Range;
use std::path::Path;

/// Annotation prefixes, newest first.
pub const PREFIXES: [&str; 2] = ["io.github.containers.", "io.containers."];
/// Annotation (after a prefix): sha256 of the compressed TOC.
pub const CHECKSUM_KEY: &str = "zstd-chunked.manifest-checksum";
/// Annotation (after a prefix): `offset:length:uncompressedLength:type` of the TOC.
pub const POSITION_KEY: &str = "zstd-chunked.manifest-position";
/// Largest compressed TOC accepted (one Range read).
pub const MAX_TOC_COMPRESSED: u64 = 64 << 20;
/// Largest uncompressed TOC accepted.
pub const MAX_TOC: u64 = 256 << 20;
const SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];
const FOOTER_MAGIC: &[u8; 8] = b"GnUlInUx";

fn err(reason: impl Into<String>) -> Error {
    Error::ZstdChunked {
        reason: reason.into(),
    }
}

/// Where the TOC is, from the `manifest-position` annotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub offset: u64,
    pub length: u64,
    pub uncompressed: u64,
}

/// The zstd:chunked annotations of a layer, if it has them: (checksum, position).
pub fn annotations(get: impl Fn(&str) -> Option<String>) -> Option<(String, String)> {
    PREFIXES.iter().find_map(|p| {
        Some((
            get(&format!("{p}{CHECKSUM_KEY}"))?,
            get(&format!("{p}{POSITION_KEY}"))?,
        ))
    })
}

/// Parse `offset:length:uncompressedLength:type` and check it against the blob size.
pub fn parse_position(s: &str, blob_size: u64) -> Result<Position> {
    let parts: Vec<&str> = s.split(':').collect();
    let num = |i: usize, what: &str| -> Result<u64> {
        parts
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| err(format!("manifest-position {s:?}: bad {what}")))
    };
    if parts.len() != 4 {
        return Err(err(format!(
            "manifest-position {s:?} is not offset:length:uncompressedLength:type"
        )));
    }
    let p = Position {
        offset: num(0, "offset")?,
        length: num(1, "length")?,
        uncompressed: num(2, "uncompressed length")?,
    };
    let kind = num(3, "type")?;
    if kind != 1 {
        return Err(err(format!(
            "manifest-position {s:?}: TOC type {kind}, only type 1 (CRFS) is known"
        )));
    }
    if p.length == 0 || p.length > MAX_TOC_COMPRESSED || p.uncompressed > MAX_TOC {
        return Err(err(format!(
            "manifest-position {s:?}: TOC of {} compressed / {} bytes is out of bounds \
             (at most {MAX_TOC_COMPRESSED} / {MAX_TOC})",
            p.length, p.uncompressed
        )));
    }
    if p.offset.checked_add(p.length).is_none_or(|e| e > blob_size) {
        return Err(err(format!(
            "manifest-position {s:?}: TOC beyond the blob's {blob_size} bytes"
        )));
    }
    Ok(p)
}

impl Position {
    pub fn range(&self) -> Range<u64> {
        self.offset..self.offset + self.length
    }
}

/// The TOC as published (only the fields strata reads; unknown ones are ignored).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Toc {
    pub version: i64,
    pub entries: Vec<FileMetadata>,
}

/// One TOC entry; field names follow the Go `FileMetadata` JSON tags.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct FileMetadata {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    #[serde(rename = "linkName", skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub mode: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub size: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub uid: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub gid: i64,
    #[serde(rename = "modtime", skip_serializing_if = "Option::is_none")]
    pub mod_time: Option<String>,
    #[serde(rename = "devMajor", skip_serializing_if = "is_zero")]
    pub dev_major: i64,
    #[serde(rename = "devMinor", skip_serializing_if = "is_zero")]
    pub dev_minor: i64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub digest: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub offset: i64,
    #[serde(rename = "endOffset", skip_serializing_if = "is_zero")]
    pub end_offset: i64,
    #[serde(rename = "chunkSize", skip_serializing_if = "is_zero")]
    pub chunk_size: i64,
    #[serde(rename = "chunkOffset", skip_serializing_if = "is_zero")]
    pub chunk_offset: i64,
    #[serde(rename = "chunkDigest", skip_serializing_if = "String::is_empty")]
    pub chunk_digest: String,
    #[serde(rename = "chunkType", skip_serializing_if = "String::is_empty")]
    pub chunk_type: String,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// Check the compressed TOC against the annotation's checksum, then decompress and parse it.
pub fn parse_toc(compressed: &[u8], expected: &Digest, pos: &Position) -> Result<Toc> {
    let got = Digest::of(compressed);
    if got != *expected {
        return Err(Error::ZstdChunkedToc {
            expected: *expected,
            got,
        });
    }
    let mut json = Vec::new();
    let limit = pos.uncompressed.min(MAX_TOC);
    ::zstd::stream::read::Decoder::new(compressed)
        .map_err(|e| err(format!("TOC: {e}")))?
        .take(limit + 1)
        .read_to_end(&mut json)
        .map_err(|e| err(format!("TOC is not valid zstd: {e}")))?;
    if json.len() as u64 != pos.uncompressed {
        return Err(err(format!(
            "TOC decompresses to {}{} bytes, the annotation says {}",
            json.len(),
            if json.len() as u64 > limit { "+" } else { "" },
            pos.uncompressed
        )));
    }
    parse_toc_json(&json)
}

/// The TOC JSON (already checked and decompressed by [`parse_toc`]; also a fuzz entry point).
pub fn parse_toc_json(json: &[u8]) -> Result<Toc> {
    serde_json::from_slice(json).map_err(|e| err(format!("TOC JSON: {e}")))
}

/// The entries in the eStargz shape plus each chunk's explicit compressed end.
fn to_estargz(toc: &Toc) -> Result<(Vec<TocEntry>, Vec<u64>)> {
    let mut out = Vec::with_capacity(toc.entries.len());
    let mut ends = Vec::with_capacity(toc.entries.len());
    let nonneg = |v: i64, what: &str, name: &str| {
        u64::try_from(v).map_err(|_| err(format!("{name}: negative {what}")))
    };
    let mut file_end = 0u64; // endOffset of the last `reg` entry
    for (i, m) in toc.entries.iter().enumerate() {
        let name = m.name.as_str();
        if m.kind == "reg" {
            file_end = nonneg(m.end_offset, "endOffset", name)?;
        }
        let has_data = matches!(m.kind.as_str(), "reg" | "chunk") && m.offset > 0;
        let chunk_digest = match (&m.chunk_digest, has_data) {
            (d, true) if !d.is_empty() => d.clone(),
            // A file stored as one chunk carries only the digest of its whole content.
            (_, true) if m.kind == "reg" && m.chunk_size == 0 && !m.digest.is_empty() => {
                m.digest.clone()
            }
            (_, true) => return Err(err(format!("{name}: data without a digest"))),
            (_, false) => String::new(),
        };
        let end = if !has_data {
            0
        } else {
            match toc.entries.get(i + 1) {
                Some(n) if n.kind == "chunk" && n.name == m.name && n.offset > 0 => {
                    nonneg(n.offset, "offset", name)?
                }
                _ => file_end,
            }
        };
        ends.push(end);
        out.push(TocEntry {
            name: m.name.clone(),
            kind: m.kind.clone(),
            size: m.size,
            mod_time: m.mod_time.clone().unwrap_or_default(),
            link_name: m.link_name.clone(),
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            offset: m.offset,
            dev_major: m.dev_major,
            dev_minor: m.dev_minor,
            xattrs: m.xattrs.clone(),
            digest: m.digest.clone(),
            chunk_offset: m.chunk_offset,
            chunk_size: m.chunk_size,
            chunk_digest,
            ..TocEntry::default()
        });
    }
    Ok((out, ends))
}

/// Turn a verified TOC into an index file at `out`.
pub fn index_from_toc(toc: &Toc, pos: &Position, blob_size: u64, out: &Path) -> Result<LayerIndex> {
    let (entries, ends) = to_estargz(toc)?;
    // Data frames precede the TOC's skippable frame header (8 bytes).
    let data_end = pos.offset.saturating_sub(8);
    estargz::index_from_entries(&entries, &ends, data_end, blob_size, Compression::Zstd, out)
}

/// TOC bytes + annotations -> verified index at `out`.
pub fn build_index(
    toc: &[u8],
    checksum: &Digest,
    position: &str,
    blob_size: u64,
    out: &Path,
) -> Result<LayerIndex> {
    let pos = parse_position(position, blob_size)?;
    let toc = parse_toc(toc, checksum, &pos)?;
    index_from_toc(&toc, &pos, blob_size, out)
}

fn frame(data: &[u8]) -> Vec<u8> {
    // Compressing into a Vec cannot fail.
    ::zstd::bulk::compress(data, 3).unwrap_or_default()
}

fn skippable(data: &[u8]) -> Vec<u8> {
    let mut f = SKIPPABLE_MAGIC.to_vec();
    f.extend_from_slice(&(data.len() as u32).to_le_bytes());
    f.extend_from_slice(data);
    f
}

/// Build a zstd:chunked blob from an uncompressed tar (test helper, also for integration
/// tests), laid out as containers/storage's compressor lays it out but with fixed-size
/// chunks (`chunk_size`) instead of rollsum cuts: tar headers in frames of their own, each
/// chunk of a file one frame, then the TOC in a skippable frame and the 64-byte footer (no
/// tar-split frame: its offset and lengths are zero). Returns the blob and its layer
/// annotations (`io.github.containers.` prefix).
pub fn build(tar: &[u8], chunk_size: u64) -> Result<(Vec<u8>, BTreeMap<String, String>)> {
    let chunk_size = chunk_size.max(1);
    let mut blob = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut entries = Vec::new();
    let mut r = TarReader::new(tar);
    let mut pos: u64 = 0;
    let slice = |r: Range<u64>| -> Result<&[u8]> {
        tar.get(r.start as usize..r.end as usize)
            .ok_or_else(|| err("tar shorter than its headers claim"))
    };
    while let Some(e) = r.next_entry()? {
        pending.extend_from_slice(slice(pos..e.offset)?);
        let kind = estargz::toc_kind(e.typeflag)
            .ok_or_else(|| err(format!("{}: unsupported tar type", e.path)))?;
        let content = slice(e.offset..e.offset + e.size)?;
        let mut m = FileMetadata {
            kind: kind.into(),
            name: e.path.trim_start_matches("./").to_string(),
            link_name: e.link.clone(),
            mode: i64::from(e.mode),
            size: e.size as i64,
            uid: e.uid as i64,
            gid: e.gid as i64,
            mod_time: Some(estargz::rfc3339(e.mtime)),
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
            ..FileMetadata::default()
        };
        if kind == "reg" && e.size > 0 {
            blob.extend(frame(&pending));
            pending.clear();
            m.digest = Digest::of(content).to_string();
            m.offset = blob.len() as i64;
            let pieces: Vec<&[u8]> = content.chunks(chunk_size as usize).collect();
            let mut file = vec![m];
            for (i, piece) in pieces.iter().enumerate() {
                let start = blob.len() as i64;
                blob.extend(frame(piece));
                if pieces.len() > 1 {
                    if i > 0 {
                        file.push(FileMetadata {
                            kind: "chunk".into(),
                            name: file[0].name.clone(),
                            ..FileMetadata::default()
                        });
                    }
                    let c = &mut file[i];
                    c.offset = start;
                    c.chunk_offset = (i as u64 * chunk_size) as i64;
                    c.chunk_size = piece.len() as i64;
                    c.chunk_digest = Digest::of(piece).to_string();
                }
            }
            file[0].end_offset = blob.len() as i64;
            entries.extend(file);
        } else {
            entries.push(m);
        }
        pos = e.offset + e.size;
    }
    pending.extend_from_slice(slice(pos..tar.len() as u64)?);
    blob.extend(frame(&pending));
    let json = serde_json::to_vec(&Toc {
        version: 1,
        entries,
    })
    .map_err(|e| err(format!("TOC JSON: {e}")))?;
    let toc = frame(&json);
    let toc_offset = blob.len() as u64 + 8;
    blob.extend(skippable(&toc));
    let mut footer = Vec::with_capacity(64);
    for v in [toc_offset, toc.len() as u64, json.len() as u64, 1, 0, 0, 0] {
        footer
            .write_all(&v.to_le_bytes())
            .map_err(|e| err(e.to_string()))?;
    }
    footer.extend_from_slice(FOOTER_MAGIC);
    blob.extend(skippable(&footer));
    let mut ann = BTreeMap::new();
    ann.insert(
        format!("{}{CHECKSUM_KEY}", PREFIXES[0]),
        Digest::of(&toc).to_string(),
    );
    ann.insert(
        format!("{}{POSITION_KEY}", PREFIXES[0]),
        format!("{toc_offset}:{}:{}:1", toc.len(), json.len()),
    );
    Ok((blob, ann))
}
