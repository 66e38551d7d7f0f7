//! A SOCI writer for the integration tests, independent of strata's code (the SOCI CLI is Go
//! and cannot be installed here). Written field by field after awslabs/soci-snapshotter:
//! - the zTOC FlatBuffers schema `ztoc/fbs/ztoc.fbs` (field ids in declaration order:
//!   `Ztoc{version, build_tool_identifier, compressed_archive_size,
//!   uncompressed_archive_size, toc, compression_info}`, `TOC{metadata}`,
//!   `FileMetadata{name, type, uncompressed_offset, uncompressed_size, linkname, mode, uid,
//!   gid, uname, gname, mod_time, devmajor, devminor, xattrs}`, `Xattr{key, value}`,
//!   `CompressionInfo{compression_algorithm (Gzip = 1), max_span_id, span_digests,
//!   checkpoints}`), serialised by a forward FlatBuffers encoder of its own;
//! - the gzip zinfo blob of `gzip_zinfo.c` (`zinfo_to_blob`, version 2): i32 count, i64 span
//!   size, then per checkpoint i64 `in`, i64 `out`, u8 `bits`, 32 KiB window;
//! - span digests as `zinfo_builder.go`'s `getPerSpanDigests`: sha256 of the compressed bytes
//!   from `StartCompressedOffset` (`in`, minus one when `bits`) to the next checkpoint's `in`
//!   (the last: the end of the blob), as `sha256:<hex>` strings;
//! - the TOC as `toc_builder.go` (type names `reg`, `dir`, `symlink`, `hardlink`, `char`,
//!   `block`, `fifo`; offsets of content in the uncompressed tar; raw PAX records as xattrs;
//!   Go's `time.MarshalText` for mod_time);
//! - the SOCI index manifests of `soci/soci_index.go` and `soci_convert.go` (v1: config media
//!   type the v1 artifact type, `subject` the image manifest; v2: no subject, the image
//!   manifest annotated with `com.amazon.soci.index-digest`, both in an image index).
//!
//! The layer's gzip is written here too, with a full flush every span (so every checkpoint
//! is a byte-aligned deflate block boundary, `bits` 0, which `generate_zinfo_from_fp`
//! would also accept); checkpoint 0 follows the 10-byte gzip header with a zero window, as
//! the C code records it.

use sha2::{Digest as _, Sha256};
use std::io::Read;

pub const V1: &str = "application/vnd.amazon.soci.index.v1+json";
pub const V2: &str = "application/vnd.amazon.soci.index.v2+json";
const WIN: usize = 32 << 10;

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// A FlatBuffers value for the forward encoder.
pub enum F {
    I64(i64),
    I32(i32),
    U32(u32),
    U8(u8),
    Str(Vec<u8>),
    Bytes(Vec<u8>),
    Table(Vec<Option<F>>),
    Tables(Vec<Vec<Option<F>>>),
    Strs(Vec<Vec<u8>>),
}

fn pad(buf: &mut Vec<u8>, align: usize) {
    while !buf.len().is_multiple_of(align) {
        buf.push(0);
    }
}

fn patch(buf: &mut [u8], at: usize, target: usize) {
    let rel = (target - at) as u32;
    buf[at..at + 4].copy_from_slice(&rel.to_le_bytes());
}

/// Write a table (vtable first, then the table, then its children) and return its position.
fn table(buf: &mut Vec<u8>, fields: &[Option<F>]) -> usize {
    // Slot sizes in the table body.
    let size = |f: &F| match f {
        F::I64(_) => 8,
        F::I32(_) | F::U32(_) => 4,
        F::U8(_) => 1,
        _ => 4,
    };
    pad(buf, 2);
    let vt = buf.len();
    let vsize = 4 + 2 * fields.len();
    buf.resize(vt + vsize, 0);
    // Table start: 8-aligned so that 8-byte fields can be aligned by their offsets.
    while !buf.len().is_multiple_of(8) {
        buf.push(0);
    }
    let t = buf.len();
    buf.extend_from_slice(&((t - vt) as i32).to_le_bytes());
    let mut refs = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        let Some(f) = f else { continue };
        let n = size(f);
        pad(buf, n);
        let at = buf.len();
        match f {
            F::I64(v) => buf.extend_from_slice(&v.to_le_bytes()),
            F::I32(v) => buf.extend_from_slice(&v.to_le_bytes()),
            F::U32(v) => buf.extend_from_slice(&v.to_le_bytes()),
            F::U8(v) => buf.push(*v),
            _ => {
                buf.extend_from_slice(&[0; 4]);
                refs.push((at, f));
            }
        }
        let off = (at - t) as u16;
        buf[vt + 4 + 2 * i..vt + 6 + 2 * i].copy_from_slice(&off.to_le_bytes());
    }
    let tsize = (buf.len() - t) as u16;
    buf[vt..vt + 2].copy_from_slice(&(vsize as u16).to_le_bytes());
    buf[vt + 2..vt + 4].copy_from_slice(&tsize.to_le_bytes());
    for (at, f) in refs {
        let target = child(buf, f);
        patch(buf, at, target);
    }
    t
}

fn string(buf: &mut Vec<u8>, s: &[u8], nul: bool) -> usize {
    pad(buf, 4);
    let at = buf.len();
    buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
    buf.extend_from_slice(s);
    if nul {
        buf.push(0);
    }
    at
}

fn child(buf: &mut Vec<u8>, f: &F) -> usize {
    match f {
        F::Str(s) => string(buf, s, true),
        F::Bytes(b) => string(buf, b, false),
        F::Table(fields) => table(buf, fields),
        F::Tables(items) => {
            pad(buf, 4);
            let v = buf.len();
            buf.extend_from_slice(&(items.len() as u32).to_le_bytes());
            buf.resize(v + 4 + 4 * items.len(), 0);
            for (k, it) in items.iter().enumerate() {
                let t = table(buf, it);
                patch(buf, v + 4 + 4 * k, t);
            }
            v
        }
        F::Strs(items) => {
            pad(buf, 4);
            let v = buf.len();
            buf.extend_from_slice(&(items.len() as u32).to_le_bytes());
            buf.resize(v + 4 + 4 * items.len(), 0);
            for (k, s) in items.iter().enumerate() {
                let p = string(buf, s, true);
                patch(buf, v + 4 + 4 * k, p);
            }
            v
        }
        _ => unreachable!("scalars are inline"),
    }
}

/// A FlatBuffers buffer whose root is the table `root`.
pub fn flatbuffer(root: Vec<Option<F>>) -> Vec<u8> {
    let mut buf = vec![0u8; 8];
    let t = table(&mut buf, &root);
    patch(&mut buf, 0, t);
    buf
}

/// One checkpoint.
struct Point {
    cin: u64,
    uout: u64,
    window: Vec<u8>,
}

/// gzip `tar` with a full flush every `span` bytes; the blob and its checkpoints.
fn gzip_with_points(tar: &[u8], span: usize, level: u32) -> (Vec<u8>, Vec<Point>) {
    use flate2::{Compress, Compression, FlushCompress};
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut c = Compress::new(Compression::new(level), false);
    let mut points = Vec::new();
    let mut at = 0usize;
    while at < tar.len() || points.is_empty() {
        let end = (at + span).min(tar.len());
        let w0 = at.saturating_sub(WIN);
        let mut window = vec![0u8; WIN - (at - w0)];
        window.extend_from_slice(&tar[w0..at]);
        points.push(Point {
            cin: out.len() as u64,
            uout: at as u64,
            window,
        });
        let flush = if end == tar.len() {
            FlushCompress::Finish
        } else {
            FlushCompress::Full
        };
        let mut pos = at;
        loop {
            out.reserve(256 << 10);
            let before = c.total_in();
            let st = c.compress_vec(&tar[pos..end], &mut out, flush).unwrap();
            pos += (c.total_in() - before) as usize;
            let room = out.len() < out.capacity();
            if st == flate2::Status::StreamEnd
                || (pos == end && room && flush != FlushCompress::Finish)
            {
                break;
            }
        }
        at = end;
    }
    let mut crc = flate2::Crc::new();
    crc.update(tar);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(tar.len() as u32).to_le_bytes());
    (out, points)
}

/// Go's `time.Time.MarshalText` of a unix time (UTC, whole seconds).
fn go_time(secs: u64) -> Vec<u8> {
    let t = chrono::DateTime::from_timestamp(secs as i64, 0).unwrap();
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string().into_bytes()
}

/// The TOC of `tar` as `toc_builder.go` makes it.
fn toc(tar: &[u8]) -> Vec<Vec<Option<F>>> {
    let mut a = tar::Archive::new(tar);
    let mut files = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let kind: &[u8] = match h.entry_type() {
            tar::EntryType::Regular => b"reg",
            tar::EntryType::Directory => b"dir",
            tar::EntryType::Symlink => b"symlink",
            tar::EntryType::Link => b"hardlink",
            tar::EntryType::Char => b"char",
            tar::EntryType::Block => b"block",
            tar::EntryType::Fifo => b"fifo",
            t => panic!("tar entry type {t:?}"),
        };
        let name = e.path_bytes().into_owned();
        let link = e
            .link_name_bytes()
            .map(|l| l.into_owned())
            .unwrap_or_default();
        let mut pax = Vec::new();
        if let Ok(Some(exts)) = e.pax_extensions() {
            for x in exts.flatten() {
                pax.push(vec![
                    Some(F::Str(x.key_bytes().to_vec())),
                    Some(F::Str(x.value_bytes().to_vec())),
                ]);
            }
        }
        let pos = e.raw_file_position() as i64;
        let size = h.size().unwrap() as i64;
        let mut rest = Vec::new();
        e.read_to_end(&mut rest).unwrap();
        files.push(vec![
            Some(F::Str(name)),
            Some(F::Str(kind.to_vec())),
            Some(F::I64(pos)),
            Some(F::I64(size)),
            Some(F::Str(link)),
            Some(F::I64(h.mode().unwrap() as i64)),
            Some(F::U32(h.uid().unwrap() as u32)),
            Some(F::U32(h.gid().unwrap() as u32)),
            Some(F::Str(Vec::new())),
            Some(F::Str(Vec::new())),
            Some(F::Str(go_time(h.mtime().unwrap()))),
            Some(F::I64(0)),
            Some(F::I64(0)),
            Some(F::Tables(pax)),
        ]);
    }
    files
}

/// A gzip layer blob of `tar` (deflate `level`; 0: stored blocks, whose size depends on the
/// input's length alone) and its zTOC (spans of `span` uncompressed bytes).
pub struct SociLayer {
    pub blob: Vec<u8>,
    pub ztoc: Vec<u8>,
}

pub fn gzip_layer(tar: &[u8], span: usize, level: u32) -> SociLayer {
    let (blob, points) = gzip_with_points(tar, span, level);
    let mut zinfo = Vec::new();
    zinfo.extend_from_slice(&(points.len() as i32).to_le_bytes());
    zinfo.extend_from_slice(&(span as i64).to_le_bytes());
    let mut digests = Vec::new();
    for (i, p) in points.iter().enumerate() {
        zinfo.extend_from_slice(&(p.cin as i64).to_le_bytes());
        zinfo.extend_from_slice(&(p.uout as i64).to_le_bytes());
        zinfo.push(0);
        zinfo.extend_from_slice(&p.window);
        let end = points.get(i + 1).map_or(blob.len(), |n| n.cin as usize);
        digests.push(sha(&blob[p.cin as usize..end]).into_bytes());
    }
    let ztoc = flatbuffer(vec![
        Some(F::Str(b"0.9".to_vec())),
        Some(F::Str(b"AWS SOCI CLI v0.2".to_vec())),
        Some(F::I64(blob.len() as i64)),
        Some(F::I64(tar.len() as i64)),
        Some(F::Table(vec![Some(F::Tables(toc(tar)))])),
        Some(F::Table(vec![
            Some(F::U8(1)),
            Some(F::I32(points.len() as i32 - 1)),
            Some(F::Strs(digests)),
            Some(F::Bytes(zinfo)),
        ])),
    ]);
    SociLayer { blob, ztoc }
}

/// The SOCI index manifest (`MarshalIndex`): an OCI image manifest whose config is `{}` with
/// the artifact type as media type, one zTOC descriptor per layer `(ztoc digest, size, layer
/// digest, layer media type)`, and for v1 the image manifest as subject.
pub fn index_manifest(
    version: &str,
    ztocs: &[(String, usize, String, String)],
    subject: Option<(&str, usize)>,
    span: usize,
) -> Vec<u8> {
    let layers: Vec<_> = ztocs
        .iter()
        .map(|(d, n, layer, media)| {
            serde_json::json!({
                "mediaType": "application/octet-stream",
                "digest": d,
                "size": n,
                "annotations": {
                    "com.amazon.soci.image-layer-mediaType": media,
                    "com.amazon.soci.image-layer-digest": layer,
                    "com.amazon.soci.span-size": span.to_string(),
                },
            })
        })
        .collect();
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": version,
            "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
            "size": 2,
        },
        "layers": layers,
        "annotations": {"com.amazon.soci.build-tool-identifier": "AWS SOCI CLI v0.2"},
    });
    if let Some((d, n)) = subject {
        m["subject"] = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": d,
            "size": n,
        });
    }
    serde_json::to_vec(&m).unwrap()
}
