//! SOCI zTOCs (the per-layer blobs of an AWS SOCI index) -> a strata layer index.
//!
//! A zTOC is a FlatBuffers table (`ztoc/fbs/ztoc.fbs` of awslabs/soci-snapshotter): version,
//! build tool, compressed and uncompressed archive sizes, a TOC (one `FileMetadata` per tar
//! member: name, type, content offset and size in the uncompressed stream, link name, mode,
//! uid, gid, RFC 3339 mod time, device numbers, raw PAX records) and `CompressionInfo`
//! (algorithm `Gzip` = 1 or `Uncompressed` = 2, `max_span_id`, one `sha256:` digest per span of
//! the *compressed* blob, and the checkpoints blob). For gzip the checkpoints blob is the C
//! zinfo serialisation (`ztoc/compression/gzip_zinfo.c`, `zinfo_to_blob`): i32 checkpoint
//! count, i64 span size, then per checkpoint i64 compressed offset `in` (first whole byte),
//! i64 uncompressed offset `out`, u8 `bits` (of the byte at `in - 1`), the 32 KiB window; a
//! version-1 blob lacks checkpoint 0, which is then `in = 10, out = 0` with a zero window.
//! For uncompressed layers it is a FlatBuffers `TarZinfo` (version, span size, size).
//!
//! [`index_from_ztoc`] turns one into a strata index file: entries through the same ingest
//! rules as a tar scan (whiteouts, opaque directories), and a seek table of kind
//! [`SpanCheck::Compressed`]: the zTOC's checkpoints (windows deflate-packed into the window
//! section), its span digests checked against the compressed bytes of each span before they
//! are decoded. Every field is checked (a hostile zTOC is an [`Error::Ztoc`] naming the
//! problem, never a panic). [`write_ztoc`] is the test-side writer. Uses `flatbuf`, `entry`,
//! `seek`, `gzip` (window packing, the inflater), `index` and `estargz` (RFC 3339 parsing).

use super::entry::{EntryTable, RawEntry, Timestamp};
use super::error::{Error, Result};
use super::flatbuf;
use super::gzip::pack_window;
use super::index::{self, LayerIndex, LayerMeta};
use super::seek::{Block, Checkpoint, Compression, SeekTable, SpanCheck, BLOCK};
use sha2::{Digest as _, Sha256};
use std::path::Path;

/// Media type of a zTOC blob in a SOCI index.
pub const ZTOC_MEDIA_TYPE: &str = "application/octet-stream";
/// zinfo window size (gzip's 32 KiB).
const WINSIZE: usize = 32 << 10;
/// One packed gzip checkpoint: in, out, bits, window.
const PACKED: usize = 8 + 8 + 1 + WINSIZE;
/// Most checkpoints accepted from a zTOC.
const MAX_CHECKPOINTS: usize = 1 << 20;

fn bad(msg: impl Into<String>) -> Error {
    Error::Ztoc(msg.into())
}

/// One `FileMetadata` of a zTOC's TOC.
#[derive(Debug, Clone)]
struct FileMeta<'a> {
    name: &'a str,
    kind: &'a str,
    offset: i64,
    size: i64,
    link: &'a str,
    mode: i64,
    uid: u32,
    gid: u32,
    mod_time: &'a str,
    dev_major: i64,
    dev_minor: i64,
    pax: Vec<(&'a str, &'a [u8])>,
}

/// The fields of a zTOC strata relies on.
struct Ztoc<'a> {
    compressed_size: i64,
    uncompressed_size: i64,
    files: Vec<FileMeta<'a>>,
    /// 1 gzip, 2 uncompressed.
    algorithm: u8,
    max_span_id: i32,
    span_digests: Vec<&'a str>,
    checkpoints: &'a [u8],
}

fn parse(buf: &[u8]) -> std::result::Result<Ztoc<'_>, String> {
    let root = flatbuf::root(buf)?;
    let toc = root.table(4, "toc")?.ok_or("no toc")?;
    let info = root
        .table(5, "compression_info")?
        .ok_or("no compression_info")?;
    let mut files = Vec::new();
    for (k, m) in toc.tables(0, "toc.metadata")?.into_iter().enumerate() {
        let w = |f: &str| format!("toc entry {k}: {f}");
        let mut pax = Vec::new();
        for x in m.tables(13, &w("xattrs"))? {
            pax.push((
                x.str(0, &w("xattr key"))?,
                x.bytes_field(1, &w("xattr value"))?,
            ));
        }
        files.push(FileMeta {
            name: m.str(0, &w("name"))?,
            kind: m.str(1, &w("type"))?,
            offset: m.i64(2, 0, &w("uncompressed_offset"))?,
            size: m.i64(3, 0, &w("uncompressed_size"))?,
            link: m.str(4, &w("linkname"))?,
            mode: m.i64(5, 0, &w("mode"))?,
            uid: m.u32(6, 0, &w("uid"))?,
            gid: m.u32(7, 0, &w("gid"))?,
            mod_time: m.str(10, &w("mod_time"))?,
            dev_major: m.i64(11, 0, &w("devmajor"))?,
            dev_minor: m.i64(12, 0, &w("devminor"))?,
            pax,
        });
    }
    Ok(Ztoc {
        compressed_size: root.i64(2, 0, "compressed_archive_size")?,
        uncompressed_size: root.i64(3, 0, "uncompressed_archive_size")?,
        files,
        algorithm: info.u8(0, 1, "compression_algorithm")?,
        max_span_id: info.i32(1, 0, "max_span_id")?,
        span_digests: info.strs(2, "span_digests")?,
        checkpoints: info.bytes_field(3, "checkpoints")?,
    })
}

/// One zinfo checkpoint (window borrowed from the blob; `None`: the implicit zero window).
struct Zpoint<'a> {
    cin: u64,
    uout: u64,
    bits: u8,
    window: Option<&'a [u8]>,
}

/// The gzip zinfo blob (see the module docs), version 2 or 1.
fn parse_gzip_zinfo(b: &[u8]) -> Result<(u64, Vec<Zpoint<'_>>)> {
    let head = b
        .get(..12)
        .ok_or_else(|| bad("checkpoints blob shorter than its 12-byte header"))?;
    let have = i32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let span = i64::from_le_bytes(head[4..12].try_into().unwrap_or([0; 8]));
    let n = usize::try_from(have)
        .ok()
        .filter(|&n| n > 0 && n <= MAX_CHECKPOINTS)
        .ok_or_else(|| bad(format!("checkpoints blob claims {have} checkpoints")))?;
    let body = b.len() - 12;
    let first = if body == n * PACKED {
        0
    } else if body == (n - 1) * PACKED {
        1 // version 1: checkpoint 0 not stored
    } else {
        return Err(bad(format!(
            "checkpoints blob of {} bytes does not hold {n} checkpoints",
            b.len()
        )));
    };
    let mut out = Vec::with_capacity(n);
    if first == 1 {
        out.push(Zpoint {
            cin: 10,
            uout: 0,
            bits: 0,
            window: None,
        });
    }
    for k in 0..n - first {
        let p = &b[12 + k * PACKED..12 + (k + 1) * PACKED];
        let cin = i64::from_le_bytes(p[0..8].try_into().unwrap_or([0; 8]));
        let uout = i64::from_le_bytes(p[8..16].try_into().unwrap_or([0; 8]));
        let (Ok(cin), Ok(uout)) = (u64::try_from(cin), u64::try_from(uout)) else {
            return Err(bad(format!("checkpoint {}: negative offset", k + first)));
        };
        out.push(Zpoint {
            cin,
            uout,
            bits: p[16],
            window: Some(&p[17..]),
        });
    }
    let span = u64::try_from(span).map_err(|_| bad("negative span size"))?;
    Ok((span, out))
}

/// The `TarZinfo` of an uncompressed layer: checkpoints every span size.
fn tar_points(b: &[u8], size: u64) -> Result<(u64, Vec<Zpoint<'static>>)> {
    let t = flatbuf::root(b).map_err(|e| bad(format!("TarZinfo: {e}")))?;
    let span = t.i64(1, 0, "span_size").map_err(bad)?;
    let zsize = t.i64(2, 0, "size").map_err(bad)?;
    let span = u64::try_from(span)
        .ok()
        .filter(|&s| s > 0)
        .ok_or_else(|| bad(format!("TarZinfo span size {span}")))?;
    if u64::try_from(zsize).ok() != Some(size) {
        return Err(bad(format!(
            "TarZinfo size {zsize} is not the layer's {size} bytes"
        )));
    }
    let n = size.div_ceil(span).max(1);
    if n > MAX_CHECKPOINTS as u64 {
        return Err(bad(format!("{n} spans is too many")));
    }
    let points = (0..n)
        .map(|k| Zpoint {
            cin: k * span,
            uout: k * span,
            bits: 0,
            window: None,
        })
        .collect();
    Ok((span, points))
}

fn digest_of(s: &str, k: usize) -> Result<[u8; 32]> {
    let d: crate::digest::Digest = s
        .parse()
        .map_err(|e| bad(format!("span digest {k} {s:?}: {e}")))?;
    Ok(*d.as_bytes())
}

/// Check the zTOC's checkpoints and digests and build the seek table.
fn seek_table(z: &Ztoc<'_>, compression: Compression, size: u64) -> Result<(SeekTable, u64)> {
    let usize_ = u64::try_from(z.uncompressed_size)
        .map_err(|_| bad("negative uncompressed_archive_size"))?;
    let (span, points) = match (z.algorithm, compression) {
        (1, Compression::Gzip) => parse_gzip_zinfo(z.checkpoints)?,
        (2, Compression::Tar) => tar_points(z.checkpoints, size)?,
        (a, c) => {
            return Err(bad(format!(
                "compression algorithm {a} does not match the layer's {c:?} media type"
            )))
        }
    };
    // For a plain tar every byte of the blob is a byte of the stream.
    let usize_ = if compression == Compression::Tar {
        size
    } else {
        usize_
    };
    let n = points.len();
    if i64::from(z.max_span_id) + 1 != n as i64 || z.span_digests.len() != n {
        return Err(bad(format!(
            "{n} checkpoints, max_span_id {} and {} span digests disagree",
            z.max_span_id,
            z.span_digests.len()
        )));
    }
    let mut checkpoints = Vec::with_capacity(n);
    let mut windows = Vec::new();
    let mut window_digests = Vec::with_capacity(n);
    for (k, p) in points.iter().enumerate() {
        let prev = checkpoints.last().map(|c: &Checkpoint| (c.uout, c.cin));
        let ordered = match prev {
            None => p.uout == 0,
            Some((u, c)) => p.uout > u && p.cin >= c,
        };
        if !ordered || p.uout >= usize_.max(1) || p.cin > size || p.bits > 7 {
            return Err(bad(format!(
                "checkpoint {k} (in {}, out {}, bits {}) is out of order or beyond the layer",
                p.cin, p.uout, p.bits
            )));
        }
        if p.bits > 0 && p.cin == 0 {
            return Err(bad(format!(
                "checkpoint {k}: bits without a byte before it"
            )));
        }
        let window = match (compression, p.window) {
            (Compression::Tar, _) => 0..0,
            (_, w) => {
                let packed = pack_window(w.unwrap_or(&[0; WINSIZE]));
                let start = windows.len() as u64;
                window_digests.push(<[u8; 32]>::from(Sha256::digest(&packed)));
                windows.extend_from_slice(&packed);
                start..windows.len() as u64
            }
        };
        if compression == Compression::Tar {
            window_digests.push([0; 32]);
        }
        checkpoints.push(Checkpoint {
            uout: p.uout,
            cin: p.cin,
            bits: p.bits,
            member_start: false,
            window,
        });
    }
    let digests = z
        .span_digests
        .iter()
        .enumerate()
        .map(|(k, s)| digest_of(s, k))
        .collect::<Result<Vec<_>>>()?;
    let mut t = SeekTable {
        compression,
        span,
        uncompressed_size: usize_,
        compressed_size: size,
        whole: false,
        checkpoints,
        digests,
        block: BLOCK,
        blocks: Vec::new(),
        lazy: None,
        block_starts: Vec::with_capacity(n + 1),
        window_bytes: windows.len() as u64,
        windows,
        window_digests,
        check: SpanCheck::Compressed,
    };
    // Zero block records: the shape every table has, no digests (see `SpanCheck`).
    for i in 0..n {
        t.block_starts.push(t.blocks.len());
        let r = t.span_range(i);
        let cend = t.compressed_span(i).end;
        for _ in 0..(r.end - r.start).div_ceil(BLOCK) {
            t.blocks.push(Block {
                digest: [0; 32],
                cend,
            });
        }
    }
    t.block_starts.push(t.blocks.len());
    Ok((t, usize_))
}

fn raw_entry(f: &FileMeta<'_>, usize_: u64) -> Result<RawEntry> {
    let name = f.name;
    let nonneg =
        |v: i64, what: &str| u64::try_from(v).map_err(|_| bad(format!("{name}: negative {what}")));
    let typeflag = match f.kind {
        "reg" => b'0',
        "hardlink" => b'1',
        "symlink" => b'2',
        "char" => b'3',
        "block" => b'4',
        "dir" => b'5',
        "fifo" => b'6',
        other => return Err(bad(format!("{name}: unknown entry type {other:?}"))),
    };
    let (offset, size) = (nonneg(f.offset, "offset")?, nonneg(f.size, "size")?);
    let size = if typeflag == b'0' { size } else { 0 };
    if offset.checked_add(size).is_none_or(|e| e > usize_) {
        return Err(bad(format!(
            "{name}: content {offset}+{size} beyond the {usize_}-byte archive"
        )));
    }
    let mtime = match f.mod_time {
        "" => Timestamp::default(),
        s => super::estargz::parse_rfc3339(s)
            .ok_or_else(|| bad(format!("{name}: bad mod_time {s:?}")))?,
    };
    // PAX records as Go's archive/tar keeps them: xattrs are `SCHILY.xattr.<name>`.
    let xattrs = f
        .pax
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("SCHILY.xattr.")?.to_string(), v.to_vec())))
        .collect();
    Ok(RawEntry {
        path: name.to_string(),
        typeflag,
        mode: (f.mode & 0o7777) as u32,
        uid: u64::from(f.uid),
        gid: u64::from(f.gid),
        size,
        mtime,
        link: f.link.to_string(),
        dev_major: nonneg(f.dev_major, "devmajor")?,
        dev_minor: nonneg(f.dev_minor, "devminor")?,
        xattrs,
        header_offset: offset,
        offset,
    })
}

/// The size of the blob a zTOC describes (`compressed_archive_size`), to compare with the
/// layer's before converting it.
pub fn described_size(bytes: &[u8]) -> Result<u64> {
    let root = flatbuf::root(bytes).map_err(bad)?;
    let n = root.i64(2, 0, "compressed_archive_size").map_err(bad)?;
    u64::try_from(n).map_err(|_| bad(format!("compressed_archive_size {n}")))
}

/// Build the strata index of a layer (`size` bytes, compressed as `compression`) from its
/// zTOC `bytes`, written atomically to `out`; see the module docs.
pub fn index_from_ztoc(
    bytes: &[u8],
    compression: Compression,
    size: u64,
    out: &Path,
) -> Result<LayerIndex> {
    let z = parse(bytes).map_err(bad)?;
    if u64::try_from(z.compressed_size).ok() != Some(size) {
        return Err(bad(format!(
            "describes a {}-byte blob, the layer has {size}",
            z.compressed_size
        )));
    }
    let (table, usize_) = seek_table(&z, compression, size)?;
    let mut files = z.files.clone();
    files.sort_by_key(|f| f.offset);
    let mut entries = EntryTable::new();
    for f in &files {
        entries.push_raw(raw_entry(f, usize_)?)?;
    }
    let entries = entries.finish();
    let meta = LayerMeta {
        compression,
        estargz: false,
        whole: false,
        uncompressed_size: table.uncompressed_size,
        compressed_size: size,
    };
    let body = index::encode(&meta, &entries, Some(&table), &[])?;
    index::write_atomic(out, &body)?;
    LayerIndex::open(out)
}

#[path = "soci_writer.rs"]
mod writer;
pub use writer::write_ztoc;

#[cfg(test)]
#[path = "soci_tests.rs"]
mod tests;
