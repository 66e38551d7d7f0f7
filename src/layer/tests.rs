//! Whole-module tests: fixture layers built in code (tar crate + flate2/zstd), indexed through
//! the public API, read back through the index and compared with the original bytes; plus
//! hostile inputs, each of which must be a clear error.

use super::*;
use crate::digest::Digest;
use crate::testdata::{pseudo_text, XorShift64};
use std::collections::BTreeMap;
use std::io::Write;

struct Fixture {
    tar: Vec<u8>,
    /// normalised path -> content of every regular file
    files: BTreeMap<String, Vec<u8>>,
}

fn header(kind: ::tar::EntryType, size: u64, mode: u32) -> ::tar::Header {
    let mut h = ::tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(1000);
    h.set_gid(100);
    h.set_mtime(1_700_000_000);
    h
}

fn fixture() -> Fixture {
    let mut b = ::tar::Builder::new(Vec::new());
    let mut files = BTreeMap::new();
    let mut add_file = |b: &mut ::tar::Builder<Vec<u8>>, path: &str, data: Vec<u8>| {
        let mut h = header(::tar::EntryType::Regular, data.len() as u64, 0o644);
        b.append_data(&mut h, path, &data[..]).unwrap();
        files.insert(normalize_path(path).unwrap(), data);
    };
    for d in ["./", "./etc/", "./usr/", "./usr/lib/", "./gone/"] {
        let mut h = header(::tar::EntryType::Directory, 0, 0o755);
        b.append_data(&mut h, d, &b""[..]).unwrap();
    }
    add_file(&mut b, "./etc/hostname", b"strata\n".to_vec());
    add_file(&mut b, "./usr/lib/big.bin", pseudo_text(3 << 20, 11));
    add_file(
        &mut b,
        "./usr/lib/bigger.bin",
        pseudo_text(5 << 20 | 123, 12),
    );
    add_file(&mut b, "./usr/empty", Vec::new());
    let long = format!("./usr/{}/file.txt", "d".repeat(150));
    add_file(&mut b, &long, b"long name (GNU L)".to_vec());
    // A file whose name comes from PAX, with xattrs.
    let pax_name = format!("usr/{}.pax", "p".repeat(120));
    b.append_pax_extensions([
        ("path", pax_name.as_bytes()),
        ("SCHILY.xattr.security.capability", &b"\x01\x00\x00\x02"[..]),
        ("SCHILY.xattr.user.note", &b"hello"[..]),
        ("mtime", &b"1700000001.25"[..]),
    ])
    .unwrap();
    let data = b"pax content".to_vec();
    let mut h = header(::tar::EntryType::Regular, data.len() as u64, 0o4755);
    b.append_data(&mut h, "usr/short", &data[..]).unwrap();
    files.insert(pax_name.clone(), data);
    // Symlink, hard link, devices, fifo.
    let mut h = header(::tar::EntryType::Symlink, 0, 0o777);
    b.append_link(&mut h, "./usr/lib/link", "/etc/hostname")
        .unwrap();
    let mut h = header(::tar::EntryType::Link, 0, 0o644);
    b.append_link(&mut h, "./usr/lib/hard", "./usr/lib/big.bin")
        .unwrap();
    let mut h = header(::tar::EntryType::Char, 0, 0o666);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    b.append_data(&mut h, "./dev/null", &b""[..]).unwrap();
    let mut h = header(::tar::EntryType::Fifo, 0, 0o600);
    b.append_data(&mut h, "./run/fifo", &b""[..]).unwrap();
    // Whiteouts and an opaque directory.
    let mut h = header(::tar::EntryType::Regular, 0, 0);
    b.append_data(&mut h, "./etc/.wh.passwd", &b""[..]).unwrap();
    let mut h = header(::tar::EntryType::Regular, 0, 0);
    b.append_data(&mut h, "./gone/.wh..wh..opq", &b""[..])
        .unwrap();
    let mut h = header(::tar::EntryType::Regular, 0, 0);
    b.append_data(&mut h, "./gone/.wh..wh.plnk", &b""[..])
        .unwrap();
    // Duplicate: the last one wins.
    for data in [&b"first"[..], b"second, wins"] {
        let mut h = header(::tar::EntryType::Regular, data.len() as u64, 0o644);
        b.append_data(&mut h, "./etc/motd", data).unwrap();
    }
    files.insert("etc/motd".into(), b"second, wins".to_vec());
    Fixture {
        tar: b.into_inner().unwrap(),
        files,
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn opts() -> BuildOptions {
    BuildOptions {
        span: 256 << 10,
        max_uncompressed: 1 << 30,
    }
}

fn check_reads(ix: &LayerIndex, blob: &[u8], files: &BTreeMap<String, Vec<u8>>) {
    let fetch = |r: std::ops::Range<u64>| Ok(blob[r.start as usize..r.end as usize].to_vec());
    let mut rng = XorShift64::from_state(0x9e37_79b9_7f4a_7c15);
    for (path, data) in files {
        let e = ix.lookup(path).unwrap_or_else(|| panic!("missing {path}"));
        assert_eq!(e.size(), data.len() as u64, "{path}");
        let len = data.len() as u64;
        let mut ranges = vec![
            0..len,
            0..len.min(1),
            len.saturating_sub(1)..len,
            0..len + 100,
        ];
        for _ in 0..12 {
            let s = rng.next_u64();
            let a = s % (len + 1);
            let n = (s >> 32) % 300_000;
            ranges.push(a..(a + n));
        }
        if let Some(t) = ix.seek_table() {
            for c in &t.checkpoints {
                if c.uout > e.offset() && c.uout < e.offset() + len {
                    let rel = c.uout - e.offset();
                    ranges.push(rel - 1..rel + 1);
                    ranges.push(rel - 4096.min(rel)..rel);
                }
            }
        }
        for r in ranges {
            let got = ix
                .read(&e, r.clone(), fetch)
                .unwrap_or_else(|err| panic!("{path} {r:?}: {err}"));
            let (a, b) = (r.start.min(len) as usize, r.end.min(len) as usize);
            assert_eq!(got, &data[a..b.max(a)], "{path} {r:?}");
        }
    }
}

fn check_entries(ix: &LayerIndex, subsec: bool) {
    let root = ix.lookup("").unwrap();
    assert_eq!(root.kind(), EntryKind::Dir);
    let etc: Vec<String> = ix.list_dir("etc").map(|e| e.name().to_string()).collect();
    assert_eq!(etc, ["hostname", "motd", "passwd"]);
    let wh = ix.lookup("etc/passwd").unwrap();
    assert_eq!(wh.kind(), EntryKind::Whiteout);
    assert!(ix.lookup("etc/.wh.passwd").is_none());
    let gone = ix.lookup("gone").unwrap();
    assert!(gone.opaque() && !gone.implicit());
    assert_eq!(ix.list_dir("gone").count(), 0);
    let link = ix.lookup("usr/lib/link").unwrap();
    assert_eq!(
        (link.kind(), link.link()),
        (EntryKind::Symlink, "/etc/hostname")
    );
    let hard = ix.lookup("usr/lib/hard").unwrap();
    assert_eq!(
        (hard.kind(), hard.link()),
        (EntryKind::Hardlink, "usr/lib/big.bin")
    );
    assert_eq!(hard.size(), 3 << 20);
    let null = ix.lookup("dev/null").unwrap();
    assert_eq!((null.kind(), null.dev()), (EntryKind::CharDev, (1, 3)));
    assert!(ix.lookup("dev").unwrap().implicit());
    assert_eq!(ix.lookup("run/fifo").unwrap().kind(), EntryKind::Fifo);
    let pax = ix.lookup(&format!("usr/{}.pax", "p".repeat(120))).unwrap();
    assert_eq!(pax.mode(), 0o4755);
    let x: Vec<(&str, &[u8])> = pax.xattrs().collect();
    assert_eq!(
        x,
        [
            ("security.capability", &b"\x01\x00\x00\x02"[..]),
            ("user.note", &b"hello"[..])
        ]
    );
    // eStargz TOCs carry RFC 3339 times without fractions (as Go's writer emits them).
    let nsec = if subsec { 250_000_000 } else { 0 };
    assert_eq!(
        pax.mtime(),
        Timestamp {
            sec: 1_700_000_001,
            nsec
        }
    );
    let motd = ix.lookup("etc/motd").unwrap();
    assert_eq!((motd.uid(), motd.gid(), motd.size()), (1000, 100, 12));
    // entries() and to_entry() agree with lookup.
    for e in ix.entries() {
        assert_eq!(ix.lookup(&e.path()).unwrap().index(), e.index());
        assert_eq!(e.to_entry().path, e.path());
    }
}

#[test]
fn tar_gzip_zstd_round_trip() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut zst = Vec::new();
    for part in fx.tar.chunks(700 << 10) {
        zst.extend(::zstd::encode_all(part, 3).unwrap());
    }
    let mut two_members = gzip(&fx.tar[..1 << 20]);
    two_members.extend(gzip(&fx.tar[1 << 20..]));
    for (name, blob, mt) in [
        ("tar", fx.tar.clone(), MEDIA_TAR),
        ("gz", gzip(&fx.tar), MEDIA_TAR_GZIP),
        ("gz2", two_members, MEDIA_DOCKER_GZIP),
        ("zst", zst, MEDIA_TAR_ZSTD),
    ] {
        let out = dir.path().join(name);
        let ix = build_index_with(&blob[..], mt, &out, &opts()).unwrap();
        assert_eq!(ix.meta().compressed_size, blob.len() as u64, "{name}");
        assert_eq!(ix.meta().uncompressed_size, fx.tar.len() as u64, "{name}");
        assert!(ix.seek_table().unwrap().checkpoints.len() > 10, "{name}");
        check_entries(&ix, true);
        check_reads(&ix, &blob, &fx.files);
        let reopened = LayerIndex::open(&out).unwrap();
        assert_eq!(reopened.len(), ix.len());
    }
}

#[test]
fn estargz_round_trip_and_toc_digest() {
    let fx = fixture();
    let (blob, toc_digest) = estargz::build(&fx.tar, 1 << 20).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let size = blob.len() as u64;
    let fr = estargz::footer_range(size).unwrap();
    let footer = &blob[fr.start as usize..];
    let tr = estargz::toc_range(footer, size).unwrap();
    let toc = &blob[tr.start as usize..tr.end as usize];
    let out = dir.path().join("esgz");
    let ix = estargz::build_index(footer, toc, size, &toc_digest, &out).unwrap();
    assert!(ix.meta().estargz);
    check_entries(&ix, false);
    check_reads(&ix, &blob, &fx.files);
    // The same blob is also an ordinary multi-member gzip layer.
    let ix2 = build_index_with(&blob[..], MEDIA_TAR_GZIP, &dir.path().join("g"), &opts()).unwrap();
    for (i, c) in ix2.seek_table().unwrap().checkpoints.iter().enumerate() {
        if c.member_start {
            assert_eq!(
                &blob[c.cin as usize..c.cin as usize + 2],
                &[0x1f, 0x8b],
                "{i} {c:?}"
            );
        }
    }
    let mut files = fx.files.clone();
    files.remove("stargz.index.json");
    check_reads(&ix2, &blob, &files);
    // Wrong annotation: refused before anything in the TOC is used.
    let wrong = Digest::of(b"not the toc");
    let err = estargz::build_index(footer, toc, size, &wrong, &out).unwrap_err();
    assert!(matches!(err, Error::TocDigest { .. }), "{err}");
    // A flipped byte inside a chunk: a chunk digest error, not wrong data.
    let e = ix.lookup("usr/lib/big.bin").unwrap();
    let plan = ix.plan_read(&e, 100..200).unwrap();
    let mut bad = blob[plan.compressed.start as usize..plan.compressed.end as usize].to_vec();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x20;
    let err = ix.decode_read(&plan, &bad).unwrap_err();
    assert!(
        matches!(err, Error::ChunkDigest { .. } | Error::Estargz { .. }),
        "{err}"
    );
}

/// A raw GNU header with arbitrary name bytes and size field.
fn raw_header(name: &[u8], typeflag: u8, size_field: [u8; 12]) -> [u8; 512] {
    let mut h = header(::tar::EntryType::Regular, 0, 0o644);
    let bytes = h.as_mut_bytes();
    bytes[..100].fill(0);
    bytes[..name.len()].copy_from_slice(name);
    bytes[124..136].copy_from_slice(&size_field);
    bytes[156] = typeflag;
    h.set_cksum();
    *h.as_bytes()
}

fn octal12(v: u64) -> [u8; 12] {
    let mut f = [0u8; 12];
    f[..11].copy_from_slice(format!("{v:011o}").as_bytes());
    f
}

fn scan_tar(tar: &[u8]) -> Result<Vec<Entry>> {
    scan(tar, Compression::Tar, &opts()).map(|(e, _)| e)
}

#[test]
fn hostile_tar_headers_are_errors() {
    // '..' and absolute paths.
    for name in [&b"../etc/passwd"[..], b"a/../../x", b"/etc/shadow"] {
        let mut t = raw_header(name, b'0', octal12(0)).to_vec();
        t.extend([0u8; 1024]);
        let err = scan_tar(&t).unwrap_err();
        assert!(matches!(err, Error::BadPath { .. }), "{err}");
        assert!(err
            .to_string()
            .contains(&String::from_utf8_lossy(name).to_string()));
    }
    // A base-256 size over 8 GiB with no data behind it: truncated, no huge allocation.
    let mut size = [0u8; 12];
    size[0] = 0x80;
    size[4..].copy_from_slice(&(9u64 << 30).to_be_bytes());
    let mut t = raw_header(b"huge.bin", b'0', size).to_vec();
    t.extend(vec![7u8; 4096]);
    let err = scan_tar(&t).unwrap_err();
    assert!(
        matches!(&err, Error::Truncated { path, size, .. } if path == "huge.bin" && *size == 9 << 30),
        "{err}"
    );
    // PAX size 2^60.
    let rec = format!("28 size={}\n", 1u64 << 60);
    assert_eq!(rec.len(), 28);
    let mut t = raw_header(b"pax", b'x', octal12(rec.len() as u64)).to_vec();
    let mut body = rec.into_bytes();
    body.resize(512, 0);
    t.extend(body);
    t.extend(raw_header(b"claims-2-60", b'0', octal12(0)));
    t.extend(vec![0u8; 2048]);
    let err = scan_tar(&t).unwrap_err();
    assert!(
        matches!(&err, Error::Truncated { size, .. } if *size == 1 << 60),
        "{err}"
    );
    // Oversized PAX header.
    let t = raw_header(b"pax", b'x', octal12(MAX_META + 1)).to_vec();
    assert!(matches!(
        scan_tar(&t).unwrap_err(),
        Error::MetaTooLarge { .. }
    ));
    // GNU sparse.
    let mut t = raw_header(b"sparse.img", b'S', octal12(0)).to_vec();
    t.extend([0u8; 1024]);
    let err = scan_tar(&t).unwrap_err();
    assert_eq!(
        err.to_string().split(" (").next().unwrap(),
        "sparse files unsupported: sparse.img"
    );
    // Bad checksum and a header cut short.
    let mut t = raw_header(b"x", b'0', octal12(0)).to_vec();
    t[0] = b'y';
    assert!(matches!(scan_tar(&t).unwrap_err(), Error::Header { .. }));
    assert!(matches!(
        scan_tar(&t[..300]).unwrap_err(),
        Error::Header { .. }
    ));
    // Unknown media type.
    let dir = tempfile::tempdir().unwrap();
    let err = build_index(&b""[..], "application/x-rar", &dir.path().join("i")).unwrap_err();
    assert!(matches!(err, Error::MediaType(_)));
}

#[test]
fn gzip_bomb_and_truncation_through_build_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = ::tar::Builder::new(Vec::new());
    let zeros = vec![0u8; 10 << 20];
    let mut h = header(::tar::EntryType::Regular, zeros.len() as u64, 0o644);
    b.append_data(&mut h, "zeros", &zeros[..]).unwrap();
    let blob = gzip(&b.into_inner().unwrap());
    let small = BuildOptions {
        span: 1 << 20,
        max_uncompressed: 2 << 20,
    };
    let err =
        build_index_with(&blob[..], MEDIA_TAR_GZIP, &dir.path().join("b"), &small).unwrap_err();
    assert!(matches!(err, Error::OutputLimit { .. }), "{err}");
    let cut = &blob[..blob.len() - 20];
    let err = build_index_with(cut, MEDIA_TAR_GZIP, &dir.path().join("c"), &opts()).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    assert!(!dir.path().join("c").exists());
}

#[test]
fn corrupt_index_files_are_errors() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    build_index_with(&fx.tar[..], MEDIA_TAR, &good, &opts()).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let bad = dir.path().join("bad");
    let mut s = 12345u64;
    for _ in 0..300 {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut b = bytes.clone();
        let i = (s >> 33) as usize % b.len().min(4096);
        b[i] ^= 1 << ((s >> 20) % 8);
        std::fs::write(&bad, &b).unwrap();
        if let Ok(ix) = LayerIndex::open(&bad) {
            // Still valid after the flip: every accessor must work without panicking.
            for e in ix.entries() {
                let _ = (e.path(), e.kind(), e.xattrs().count(), ix.lookup(&e.path()));
            }
            let _ = ix.list_dir("usr").count();
        }
    }
    for cut in [0, 100, 128, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&bad, &bytes[..cut]).unwrap();
        assert!(LayerIndex::open(&bad).is_err(), "cut at {cut}");
    }
    let mut b = bytes.clone();
    b[0] = b'X';
    std::fs::write(&bad, &b).unwrap();
    assert!(matches!(
        LayerIndex::open(&bad),
        Err(Error::CorruptIndex { .. })
    ));
    // A version 1, 3 or 4 file is refused by name, with what to do about it.
    for v in [1u32, 3, 4] {
        let mut b = bytes.clone();
        b[8..12].copy_from_slice(&v.to_le_bytes());
        std::fs::write(&bad, &b).unwrap();
        let err = LayerIndex::open(&bad).unwrap_err();
        assert!(
            matches!(
                err,
                Error::IndexVersion { found, supported: 5, .. } if found == v
            ),
            "{err}"
        );
        assert!(err.to_string().contains("rebuild"), "{err}");
    }
}

#[test]
fn lookup_on_many_entries() {
    let mut t = EntryTable::new();
    for d in 0..50 {
        for f in 0..40 {
            t.push(Entry::new(format!("d{d:02}/f{f:03}"), EntryKind::File));
        }
    }
    let entries = t.finish();
    assert_eq!(entries.len(), 50 * 40 + 50 + 1);
    let meta = LayerMeta {
        compression: Compression::Tar,
        estargz: false,
        whole: false,
        uncompressed_size: 0,
        compressed_size: 0,
    };
    let table = codec::index_stream(plain::TarSpans::new(&b""[..], 1024, 10)).unwrap();
    let bytes = index::encode(&meta, &entries, Some(&table), &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ix");
    index::write_atomic(&p, &bytes).unwrap();
    let ix = LayerIndex::open(&p).unwrap();
    assert_eq!(ix.list_dir("").count(), 50);
    assert_eq!(ix.list_dir("d07").count(), 40);
    assert_eq!(ix.list_dir("d07/f001").count(), 0);
    assert_eq!(ix.lookup("d49/f039").unwrap().path(), "d49/f039");
    assert!(ix.lookup("d49/f040").is_none());
    assert!(ix.lookup("d5").is_none());
}

#[test]
fn head_only_index_and_damaged_window_section() {
    let fx = fixture();
    let blob = gzip(&fx.tar);
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    build_index_with(&blob[..], MEDIA_TAR_GZIP, &full, &opts()).unwrap();
    let bytes = std::fs::read(&full).unwrap();
    let ix = LayerIndex::open(&full).unwrap();
    assert!(ix.tail_local());
    let t = ix.seek_table().unwrap();
    let head = head_len(&bytes).unwrap() as usize;
    let blen = t.block_section_len() as usize;
    assert_eq!((bytes.len() - head) as u64, blen as u64 + t.window_bytes);
    let wbase = head + blen;
    assert!(t.window_bytes > 0 && (0..t.checkpoints.len()).any(|i| t.needs_window(i)));
    let at = |name: &str, b: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, b).unwrap();
        p
    };
    // The head alone is a complete index: entries, spans and hashes, no windows.
    let hp = at("head", &bytes[..head]);
    let hix = LayerIndex::open(&hp).unwrap();
    assert!(!hix.tail_local());
    assert_eq!(hix.len(), ix.len());
    let ht = hix.seek_table().unwrap();
    assert!(!ht.blocks_local() && ht.block(0).is_none());
    // Without its block records a span does not decode (nothing to check it by).
    let plan0 = ht.span_plan(ht.span_range(0)).unwrap();
    let c0 = &blob[plan0.compressed.start as usize..plan0.compressed.end as usize];
    assert!(matches!(
        ht.decode_spans(&plan0, c0),
        Err(Error::Groups { .. })
    ));
    // The groups from the block section, each checked against the head: an altered one is
    // refused, the right ones are kept.
    let ngroups = ht.block_count().div_ceil(super::groups::GROUP);
    for g in 0..ngroups {
        let (r, _) = ht.group(g).unwrap();
        let mut rec = bytes[head + r.start as usize..head + r.end as usize].to_vec();
        rec[5] ^= 1;
        assert!(ht.load_group(g, &rec).is_err());
        rec[5] ^= 1;
        ht.load_group(g, &rec).unwrap();
    }
    // A full file whose block records were altered is refused at open.
    let mut b = bytes.clone();
    b[head + 3] ^= 1;
    assert!(matches!(
        LayerIndex::open(&at("badrec", &b)),
        Err(Error::CorruptIndex { .. })
    ));
    // Every span reads back through the head with the windows supplied one at a time
    // (what the cache does with windows fetched from a sidecar), every byte checked.
    for i in 0..ht.checkpoints.len() {
        let r = ht.span_range(i);
        let plan = ht.span_plan(r.clone()).unwrap();
        let c = &blob[plan.compressed.start as usize..plan.compressed.end as usize];
        let w = ht.window_range(i);
        let win = &bytes[wbase + w.start as usize..wbase + w.end as usize];
        let got = ht
            .decode_spans_with(&plan, c, ht.needs_window(i).then_some(Window::Stored(win)))
            .unwrap();
        assert_eq!(got, fx_tar_range(&fx, r), "span {i}");
        if ht.needs_window(i) {
            assert!(matches!(
                ht.decode_spans(&plan, c),
                Err(Error::WindowMissing { span }) if span == i
            ));
        }
    }
    // A truncated window section is refused at open (neither head-only nor whole).
    for cut in [head + 1, head + (bytes.len() - head) / 2, bytes.len() - 1] {
        let p = at("cut", &bytes[..cut]);
        assert!(
            matches!(LayerIndex::open(&p), Err(Error::CorruptIndex { .. })),
            "cut at {cut}"
        );
    }
    // A damaged window opens (windows are checked when used) and fails the blocks it
    // decodes to then (format 4: no sha256 of its own).
    let e = ix.lookup("usr/lib/bigger.bin").unwrap();
    let inside = |i: usize| {
        let s = t.span_range(i).start;
        s > e.offset() && s < e.offset() + e.size()
    };
    let i = (0..t.checkpoints.len())
        .find(|&i| t.needs_window(i) && inside(i))
        .unwrap();
    let mut b = bytes.clone();
    b[wbase + t.window_range(i).start as usize + 3] ^= 0x40;
    let dp = at("damaged", &b);
    let dix = LayerIndex::open(&dp).unwrap();
    let e = dix.lookup("usr/lib/bigger.bin").unwrap();
    let dt = dix.seek_table().unwrap();
    let rel = dt.span_range(i).start - e.offset();
    let err = dix
        .read(&e, rel..rel + 10, |r| {
            Ok(blob[r.start as usize..r.end as usize].to_vec())
        })
        .unwrap_err();
    assert!(
        matches!(err, Error::SpanDigest { span, .. } | Error::SpanDecode { span, .. } if span == i),
        "{err}"
    );
}

fn fx_tar_range(fx: &Fixture, r: std::ops::Range<u64>) -> Vec<u8> {
    fx.tar[r.start as usize..r.end as usize].to_vec()
}

#[test]
fn zstd_chunked_round_trip_checksum_and_chunk_digests() {
    let fx = fixture();
    // Small chunks: big files get many frames, each with its own chunkDigest.
    let (blob, ann) = zchunked::build(&fx.tar, 64 << 10).unwrap();
    let get = |k: &str| ann.get(k).cloned();
    let (checksum, position) = zchunked::annotations(get).unwrap();
    let checksum: Digest = checksum.parse().unwrap();
    let size = blob.len() as u64;
    let pos = zchunked::parse_position(&position, size).unwrap();
    let toc = &blob[pos.range().start as usize..pos.range().end as usize];
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("zc");
    let ix = zchunked::build_index(toc, &checksum, &position, size, &out).unwrap();
    assert!(ix.meta().estargz);
    assert_eq!(ix.meta().compression, Compression::Zstd);
    check_entries(&ix, false);
    check_reads(&ix, &blob, &fx.files);
    // Every chunk's range is exactly its frame(s): never past the next file's data.
    let big = ix.lookup("usr/lib/big.bin").unwrap();
    let chunks: Vec<Chunk> = ix.chunks_of(big.index()).map(|i| ix.chunk_at(i)).collect();
    assert!(chunks.len() > 2, "{}", chunks.len());
    for w in chunks.windows(2) {
        assert_eq!(w[0].compressed.end, w[1].compressed.start);
    }
    // The same blob is an ordinary zstd layer too (the TOC is in skippable frames).
    let mut plain = Vec::new();
    ::zstd::stream::read::Decoder::new(&blob[..])
        .unwrap()
        .read_to_end(&mut plain)
        .unwrap();
    assert_eq!(plain, fx.tar);
    // Wrong checksum: refused before anything in the TOC is used, no index written.
    let wrong = Digest::of(b"not the toc");
    let out2 = dir.path().join("zc2");
    let err = zchunked::build_index(toc, &wrong, &position, size, &out2).unwrap_err();
    assert!(matches!(err, Error::ZstdChunkedToc { .. }), "{err}");
    assert!(err.to_string().contains("manifest-checksum"), "{err}");
    assert!(!out2.exists());
    // Bad positions are errors, not panics.
    for bad in [
        "1:2:3",
        "x:1:1:1",
        "0:0:0:1",
        "1:2:3:2",
        &format!("{size}:10:10:1"),
    ] {
        assert!(zchunked::parse_position(bad, size).is_err(), "{bad}");
    }
    // A flipped byte inside a frame: an error (digest or zstd), never wrong data.
    let plan = ix.plan_read(&big, 100..200).unwrap();
    let mut bad = blob[plan.compressed.start as usize..plan.compressed.end as usize].to_vec();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x20;
    let err = ix.decode_read(&plan, &bad).unwrap_err();
    assert!(
        matches!(err, Error::ChunkDigest { .. } | Error::ZstdChunked { .. }),
        "{err}"
    );
}

#[test]
fn zstd_chunked_keeps_files_named_like_estargz_landmarks() {
    let mut b = ::tar::Builder::new(Vec::new());
    let mut h = header(::tar::EntryType::Regular, 1, 0o644);
    b.append_data(&mut h, ".prefetch.landmark", &b"x"[..])
        .unwrap();
    let tar = b.into_inner().unwrap();
    let (blob, ann) = zchunked::build(&tar, 1 << 20).unwrap();
    let (sum, position) = zchunked::annotations(|k| ann.get(k).cloned()).unwrap();
    let pos = zchunked::parse_position(&position, blob.len() as u64).unwrap();
    let toc = &blob[pos.range().start as usize..pos.range().end as usize];
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("zc");
    let ix = zchunked::build_index(
        toc,
        &sum.parse().unwrap(),
        &position,
        blob.len() as u64,
        &out,
    )
    .unwrap();
    let files = BTreeMap::from([(".prefetch.landmark".to_string(), b"x".to_vec())]);
    check_reads(&ix, &blob, &files);
}
