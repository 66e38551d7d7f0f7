use super::*;
use crate::layer::EntryKind;
use crate::testdata::{pseudo, pseudo_text};
use std::io::Write;

/// A tar with a few files (text and random, some spanning checkpoints), a symlink, a hard
/// link, a whiteout and an opaque directory; and its files' contents.
fn tar_layer() -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    let mut files = vec![
        ("etc/motd".to_string(), b"hello soci\n".to_vec()),
        ("usr/lib/big.txt".to_string(), pseudo_text(900_000, 1)),
        ("usr/lib/rand.bin".to_string(), pseudo(300_000, 2)),
        ("usr/share/empty".to_string(), Vec::new()),
    ];
    for k in 0..20 {
        files.push((
            format!("usr/share/doc/f{k}"),
            pseudo_text(5_000 + k * 777, k as u64),
        ));
    }
    let mut b = tar::Builder::new(Vec::new());
    for (p, data) in &files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, p, &data[..]).unwrap();
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "usr/bin/motd", "../../etc/motd")
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    b.append_link(&mut h, "usr/lib/big-link", "usr/lib/big.txt")
        .unwrap();
    for p in ["var/.wh.gone", "opt/.wh..wh..opq"] {
        let mut h = tar::Header::new_ustar();
        h.set_size(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, p, &[][..]).unwrap();
    }
    (b.into_inner().unwrap(), files)
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn check_reads(ix: &LayerIndex, blob: &[u8], files: &[(String, Vec<u8>)]) {
    for (p, data) in files {
        let e = ix.lookup(p).unwrap_or_else(|| panic!("{p} missing"));
        let got = ix
            .read(&e, 0..u64::MAX, |r| {
                Ok(blob[r.start as usize..r.end as usize].to_vec())
            })
            .unwrap_or_else(|err| panic!("{p}: {err}"));
        assert_eq!(&got, data, "{p}");
    }
}

#[test]
fn gzip_ztoc_round_trip_reads_every_file() {
    let (tar, files) = tar_layer();
    let blob = gz(&tar);
    let ztoc = write_ztoc(&blob, Compression::Gzip, 64 << 10).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ix");
    let ix = index_from_ztoc(&ztoc, Compression::Gzip, blob.len() as u64, &out).unwrap();
    let t = ix.seek_table().unwrap();
    assert_eq!(t.check, SpanCheck::Compressed);
    assert!(t.checkpoints.len() > 5, "{}", t.checkpoints.len());
    // Checkpoint 0 sits after the 10-byte gzip header, as the C zinfo code puts it.
    assert_eq!((t.checkpoints[0].cin, t.checkpoints[0].uout), (10, 0));
    check_reads(&ix, &blob, &files);
    assert_eq!(ix.lookup("usr/bin/motd").unwrap().link(), "../../etc/motd");
    assert_eq!(
        ix.lookup("usr/lib/big-link").unwrap().kind(),
        EntryKind::Hardlink
    );
    assert_eq!(ix.lookup("var/gone").unwrap().kind(), EntryKind::Whiteout);
    assert!(ix.lookup("opt").unwrap().opaque());
    assert_eq!(ix.lookup("etc/motd").unwrap().mtime().sec, 1_700_000_000);
    // Every span decodes alone from exactly its compressed bytes.
    for i in 0..t.checkpoints.len() {
        let plan = t.span_plan(t.span_range(i)).unwrap();
        assert_eq!(plan.compressed, t.compressed_span(i));
        let c = &blob[plan.compressed.start as usize..plan.compressed.end as usize];
        let got = t.decode_spans(&plan, c).unwrap();
        let r = t.span_range(i);
        assert_eq!(got, &tar[r.start as usize..r.end as usize], "span {i}");
        // No partial span fetch: the digest covers the whole span.
        assert!(t.prefix_plan(i, 0).is_none());
    }
}

#[test]
fn tar_ztoc_round_trip() {
    let (tar, files) = tar_layer();
    let ztoc = write_ztoc(&tar, Compression::Tar, 100_000).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ix = index_from_ztoc(
        &ztoc,
        Compression::Tar,
        tar.len() as u64,
        &dir.path().join("ix"),
    )
    .unwrap();
    assert_eq!(
        ix.seek_table().unwrap().checkpoints.len(),
        tar.len().div_ceil(100_000)
    );
    check_reads(&ix, &tar, &files);
}

#[test]
fn altered_compressed_bytes_are_refused_before_decoding() {
    let (tar, files) = tar_layer();
    let blob = gz(&tar);
    let ztoc = write_ztoc(&blob, Compression::Gzip, 64 << 10).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ix = index_from_ztoc(
        &ztoc,
        Compression::Gzip,
        blob.len() as u64,
        &dir.path().join("ix"),
    )
    .unwrap();
    let e = ix.lookup("usr/lib/big.txt").unwrap();
    let mut bad = blob.clone();
    let t = ix.seek_table().unwrap();
    let r = t.compressed_span(2);
    // A flip in the last byte of span 2 (which a decoder might not even read).
    bad[r.end as usize - 1] ^= 1;
    let err = ix
        .read(&e, 0..u64::MAX, |r| {
            Ok(bad[r.start as usize..r.end as usize].to_vec())
        })
        .unwrap_err();
    assert!(
        matches!(err, Error::CompressedDigest { span: 2, .. }),
        "{err}"
    );
    // The true bytes still read.
    check_reads(&ix, &blob, &files);
}

#[test]
fn version_1_zinfo_without_checkpoint_0_is_read() {
    let (tar, files) = tar_layer();
    let blob = gz(&tar);
    let ztoc = write_ztoc(&blob, Compression::Gzip, 64 << 10).unwrap();
    let z = parse(&ztoc).unwrap();
    let (_, pts) = parse_gzip_zinfo(z.checkpoints).unwrap();
    // Re-serialise without checkpoint 0 (what zinfo_to_blob writes for a v1 zinfo).
    let mut v1 = z.checkpoints[..12].to_vec();
    v1.extend_from_slice(&z.checkpoints[12 + PACKED..]);
    let (_, pts1) = parse_gzip_zinfo(&v1).unwrap();
    assert_eq!(pts1.len(), pts.len());
    assert_eq!((pts1[0].cin, pts1[0].uout, pts1[0].bits), (10, 0, 0));
    assert!(pts1[0].window.is_none());
    for (a, b) in pts.iter().zip(&pts1).skip(1) {
        assert_eq!(
            (a.cin, a.uout, a.bits, a.window),
            (b.cin, b.uout, b.bits, b.window)
        );
    }
    let _ = files;
}

#[test]
fn wrong_layer_or_algorithm_is_refused() {
    let (tar, _) = tar_layer();
    let blob = gz(&tar);
    let ztoc = write_ztoc(&blob, Compression::Gzip, 64 << 10).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ix");
    let err = index_from_ztoc(&ztoc, Compression::Gzip, blob.len() as u64 + 1, &out).unwrap_err();
    assert!(err.to_string().contains("describes a"), "{err}");
    let err = index_from_ztoc(&ztoc, Compression::Tar, blob.len() as u64, &out).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    assert!(!out.exists(), "nothing written for a refused zTOC");
}

/// Every truncation and many byte flips of a zTOC: an error or a valid index, never a panic;
/// and nothing is written for an error.
#[test]
fn hostile_ztoc_never_panics() {
    let mut b = tar::Builder::new(Vec::new());
    for k in 0..3 {
        let data = pseudo_text(40_000, k);
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("f{k}"), &data[..]).unwrap();
    }
    let blob = gz(&b.into_inner().unwrap());
    let ztoc = write_ztoc(&blob, Compression::Gzip, 16 << 10).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ix");
    let size = blob.len() as u64;
    let mut errors = 0;
    for cut in (0..ztoc.len()).step_by(97) {
        if index_from_ztoc(&ztoc[..cut], Compression::Gzip, size, &out).is_err() {
            errors += 1;
            assert!(!out.exists());
        }
        let _ = std::fs::remove_file(&out);
    }
    assert!(errors > 0);
    let mut s = 7u64;
    // Flips anywhere except inside the windows (which only change what decodes, checked by
    // the span digests at read time).
    for _ in 0..3000 {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut bad = ztoc.clone();
        let at = (s >> 33) as usize % bad.len();
        bad[at] ^= 1 << ((s >> 20) % 8);
        let _ = index_from_ztoc(&bad, Compression::Gzip, size, &out);
        let _ = std::fs::remove_file(&out);
    }
}
