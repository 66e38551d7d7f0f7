//! The test-side zTOC writer: what the SOCI CLI (`soci create` / `soci convert`) would write
//! for a layer, field by field after awslabs/soci-snapshotter's `ztoc/ztoc_builder.go`,
//! `ztoc/toc_builder.go`, `ztoc/zinfo_builder.go` and `ztoc/compression/gzip_zinfo.c`
//! (`generate_zinfo_from_fp`, `zinfo_to_blob`). The SOCI tools are Go and cannot be installed
//! here, so the unit and integration tests build SOCI indexes with this; strata itself only
//! reads zTOCs. Not used by the daemon.

use super::super::error::{Error, Result};
use super::super::flatbuf::build::{Builder, Field, Ref};
use super::super::gzip::Inflater;
use super::super::seek::Compression;
use super::super::tar::TarReader;
use super::WINSIZE;
use libz_rs_sys as z;
use sha2::{Digest as _, Sha256};

/// One zinfo checkpoint as `add_checkpoint` fills it.
struct Point {
    cin: u64,
    uout: u64,
    bits: u8,
    window: Vec<u8>,
}

/// `generate_zinfo_from_fp`: inflate with `Z_BLOCK`; at a deflate block boundary that is not
/// the last block, add a checkpoint when nothing was output yet or more than `span` bytes
/// were since the last one; the window is the last 32 KiB of output (zeros before the start).
/// Gzip members after the first are crossed as the C code does. Returns the checkpoints and
/// the decompressed stream.
fn gzip_points(blob: &[u8], span: u64) -> Result<(Vec<Point>, Vec<u8>)> {
    let err = |m: String| Error::Ztoc(m);
    let mut inf = Inflater::new(false).map_err(err)?;
    let (mut totin, mut totout, mut last) = (0u64, 0u64, 0u64);
    let mut points = Vec::new();
    let mut out = Vec::new();
    let mut buf = vec![0u8; WINSIZE];
    let mut input = blob;
    loop {
        let step = inf.inflate(input, &mut buf, z::Z_BLOCK);
        input = &input[step.consumed..];
        totin += step.consumed as u64;
        totout += step.produced as u64;
        out.extend_from_slice(&buf[..step.produced]);
        match step.code {
            z::Z_STREAM_END => {
                if input.is_empty() {
                    break;
                }
                inf.reset_gzip().map_err(err)?;
                continue;
            }
            z::Z_OK => {}
            z::Z_BUF_ERROR if step.consumed > 0 || step.produced > 0 => {}
            code => return Err(err(format!("inflate failed ({code}) at {totin}"))),
        }
        let dt = inf.data_type();
        if dt & 128 != 0 && dt & 64 == 0 && (totout == 0 || totout - last > span) {
            let have = out.len().min(WINSIZE);
            let mut window = vec![0u8; WINSIZE - have];
            window.extend_from_slice(&out[out.len() - have..]);
            points.push(Point {
                cin: totin,
                uout: totout,
                bits: (dt & 7) as u8,
                window,
            });
            last = totout;
        }
    }
    Ok((points, out))
}

/// `zinfo_to_blob` (version 2): i32 count, i64 span, then in, out, bits, window each.
fn zinfo_blob(points: &[Point], span: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(12 + points.len() * super::PACKED);
    b.extend_from_slice(&(points.len() as i32).to_le_bytes());
    b.extend_from_slice(&(span as i64).to_le_bytes());
    for p in points {
        b.extend_from_slice(&(p.cin as i64).to_le_bytes());
        b.extend_from_slice(&(p.uout as i64).to_le_bytes());
        b.push(p.bits);
        b.extend_from_slice(&p.window);
    }
    b
}

/// Go's `time.Time.MarshalText` (RFC 3339 with nanoseconds when present, UTC).
fn rfc3339(sec: i64, nsec: u32) -> String {
    let t = chrono::DateTime::from_timestamp(sec, nsec).unwrap_or_default();
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// A zTOC for `blob` (a gzip or plain tar layer) with checkpoints about every `span`
/// uncompressed bytes; see the module docs.
pub fn write_ztoc(blob: &[u8], compression: Compression, span: u64) -> Result<Vec<u8>> {
    let mut fb = Builder::default();
    let (algorithm, max_span_id, digests, checkpoints, stream) = match compression {
        Compression::Gzip => {
            let (points, stream) = gzip_points(blob, span)?;
            let digests: Vec<String> = (0..points.len())
                .map(|i| {
                    let p = &points[i];
                    let start = (p.cin - u64::from(p.bits > 0)) as usize;
                    let end = points.get(i + 1).map_or(blob.len(), |n| n.cin as usize);
                    format!("sha256:{}", hex::encode(Sha256::digest(&blob[start..end])))
                })
                .collect();
            let blob_ref = fb.byte_vec(&zinfo_blob(&points, span));
            (1u8, points.len() as i32 - 1, digests, blob_ref, stream)
        }
        Compression::Tar => {
            let span = span.max(1);
            let n = (blob.len() as u64).div_ceil(span).max(1);
            let digests = (0..n)
                .map(|k| {
                    let s = (k * span) as usize;
                    let e = ((k + 1) * span).min(blob.len() as u64) as usize;
                    format!("sha256:{}", hex::encode(Sha256::digest(&blob[s..e])))
                })
                .collect();
            let mut tz = Builder::default();
            let t = tz.table(&[
                Some(Field::I32(2)),
                Some(Field::I64(span as i64)),
                Some(Field::I64(blob.len() as i64)),
            ]);
            let tar_zinfo = tz.finish(t);
            let r = fb.byte_vec(&tar_zinfo);
            (2u8, n as i32 - 1, digests, r, blob.to_vec())
        }
        Compression::Zstd => return Err(Error::Ztoc("SOCI has no zstd zTOCs".into())),
    };
    // toc_builder.go: one FileMetadata per tar member, offsets in the uncompressed stream.
    let mut tar = TarReader::new(&stream[..]);
    let mut files: Vec<Ref> = Vec::new();
    let mut end = 0u64;
    while let Some(e) = tar.next_entry()? {
        let kind = match e.typeflag {
            b'0' | 0 | b'7' => "reg",
            b'1' => "hardlink",
            b'2' => "symlink",
            b'3' => "char",
            b'4' => "block",
            b'5' => "dir",
            b'6' => "fifo",
            t => return Err(Error::Ztoc(format!("unsupported tar entry {t}"))),
        };
        end = end.max((e.offset + e.size).div_ceil(512) * 512);
        let mut xattrs = Vec::new();
        let mut pax: Vec<(String, &[u8])> = e
            .xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), &v[..]))
            .collect();
        pax.sort();
        for (k, v) in &pax {
            let (k, v) = (fb.bytes(k.as_bytes()), fb.bytes(v));
            xattrs.push(fb.table(&[Some(Field::Ref(k)), Some(Field::Ref(v))]));
        }
        let xattrs = fb.refs(&xattrs);
        let strs = [
            e.path.as_str(),
            kind,
            e.link.as_str(),
            "",
            "",
            &rfc3339(e.mtime.sec, e.mtime.nsec),
        ]
        .map(|s| fb.bytes(s.as_bytes()));
        files.push(fb.table(&[
            Some(Field::Ref(strs[0])),
            Some(Field::Ref(strs[1])),
            Some(Field::I64(e.offset as i64)),
            Some(Field::I64(e.size as i64)),
            Some(Field::Ref(strs[2])),
            Some(Field::I64(i64::from(e.mode))),
            Some(Field::U32(e.uid as u32)),
            Some(Field::U32(e.gid as u32)),
            Some(Field::Ref(strs[3])),
            Some(Field::Ref(strs[4])),
            Some(Field::Ref(strs[5])),
            Some(Field::I64(e.dev_major as i64)),
            Some(Field::I64(e.dev_minor as i64)),
            Some(Field::Ref(xattrs)),
        ]));
    }
    // Go's tar reader stops after the two zero blocks that end the archive.
    let uncompressed = (end + 1024).min(stream.len() as u64);
    let metadata = fb.refs(&files);
    let toc = fb.table(&[Some(Field::Ref(metadata))]);
    let digest_refs: Vec<Ref> = digests.iter().map(|d| fb.bytes(d.as_bytes())).collect();
    let digests = fb.refs(&digest_refs);
    let info = fb.table(&[
        Some(Field::U8(algorithm)),
        Some(Field::I32(max_span_id)),
        Some(Field::Ref(digests)),
        Some(Field::Ref(checkpoints)),
    ]);
    let (version, tool) = (fb.bytes(b"0.9"), fb.bytes(b"strata test writer"));
    let root = fb.table(&[
        Some(Field::Ref(version)),
        Some(Field::Ref(tool)),
        Some(Field::I64(blob.len() as i64)),
        Some(Field::I64(uncompressed as i64)),
        Some(Field::Ref(toc)),
        Some(Field::Ref(info)),
    ]);
    Ok(fb.finish(root))
}
