//! Layer index round trip on a file larger than 100 MiB (issue 3): gzip and plain tar layers,
//! random ranges including span boundaries and the last byte, every read verified against the
//! original bytes. Library-level: no registry, no mount.

use std::io::Write;
use testdata::XorShift64;

#[path = "../src/testdata.rs"]
mod testdata;
use strata::layer::{BuildOptions, LayerIndex, MEDIA_TAR, MEDIA_TAR_GZIP};

const SIZE: usize = 130 << 20;

fn data() -> Vec<u8> {
    // Runs of a repeated byte between pseudo-random words: compresses ~3:1, fast to make.
    let mut out = Vec::with_capacity(SIZE);
    let mut rng = XorShift64::from_state(0x9E37_79B9_7F4A_7C15);
    while out.len() < SIZE {
        let x = rng.next_u64();
        out.extend_from_slice(&x.to_le_bytes());
        out.resize(out.len() + (x >> 59) as usize, (x >> 8) as u8);
    }
    out.truncate(SIZE);
    out
}

fn tar_with(big: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::with_capacity(SIZE + (1 << 20)));
    for (name, body) in [
        ("a/small", &b"before"[..]),
        ("a/big.bin", big),
        ("z/after", &b"after"[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, body).expect("tar");
    }
    b.into_inner().expect("tar")
}

fn check(index: &LayerIndex, blob: &[u8], big: &[u8]) {
    let e = index.lookup("a/big.bin").expect("big.bin indexed");
    assert_eq!(e.size(), SIZE as u64);
    let span = 2u64 << 20;
    let mut ranges: Vec<(u64, u64)> = vec![
        (0, 1),
        (SIZE as u64 - 1, SIZE as u64),
        (SIZE as u64 - 5000, SIZE as u64 + 100),
    ];
    for k in [1u64, 7, 33, 64] {
        let b = k * span;
        ranges.push((b - 3, b + 3));
        ranges.push((b - 100_000, b + 3 * span + 17));
    }
    let mut x = 12345u64;
    for _ in 0..20 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let s = (x >> 11) % SIZE as u64;
        ranges.push((s, s + (x >> 50) % (1 << 20)));
    }
    for (s, end) in ranges {
        let got = index
            .read(&e, s..end, |r| {
                Ok(blob[r.start as usize..r.end as usize].to_vec())
            })
            .unwrap_or_else(|err| panic!("read {s}..{end}: {err}"));
        let end = end.min(SIZE as u64);
        assert_eq!(got.len() as u64, end - s, "length of {s}..{end}");
        assert!(
            got == big[s as usize..end as usize],
            "bytes {s}..{end} differ"
        );
    }
    let small = index.lookup("z/after").expect("after");
    assert_eq!(
        index
            .read(&small, 0..100, |r| Ok(blob
                [r.start as usize..r.end as usize]
                .to_vec()))
            .expect("after"),
        b"after"
    );
}

#[test]
fn file_over_100_mib_round_trips_through_gzip_and_tar_indexes() {
    let big = data();
    let tar = tar_with(&big);
    let dir = tempfile::tempdir().expect("tempdir");

    let ix = strata::layer::build_index_with(
        &tar[..],
        MEDIA_TAR,
        &dir.path().join("tar.ix"),
        &BuildOptions::default(),
    )
    .expect("tar index");
    check(&ix, &tar, &big);

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gzip");
    let blob = gz.finish().expect("gzip");
    drop(tar);
    let ix = strata::layer::build_index_with(
        &blob[..],
        MEDIA_TAR_GZIP,
        &dir.path().join("gz.ix"),
        &BuildOptions::default(),
    )
    .expect("gzip index");
    assert!(ix.seek_table().expect("seek table").checkpoints.len() >= 60);
    check(&ix, &blob, &big);
    // A flipped compressed byte in the middle is an error, never different bytes.
    let mut bad = blob.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    let e = ix.lookup("a/big.bin").expect("entry");
    let s = (SIZE / 2) as u64;
    let r = ix.read(&e, s - (8 << 20)..s + (8 << 20), |r| {
        Ok(bad[r.start as usize..r.end as usize].to_vec())
    });
    assert!(r.is_err(), "corrupt compressed bytes produced data");
}
