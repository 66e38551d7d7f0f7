//! zstd-compressed copies of sidecar index heads. A mount needs each layer index's head (the
//! entry, string, seek and chunk sections: 3.5 MB for a layer of 29k files); compressed it is
//! about a quarter of that, and on a link of 200 Mbit/s the difference is most of a cold
//! mount's time. `strata index --push` publishes, beside each index blob, a blob of media type
//! [`HEAD_ZSTD_MEDIA_TYPE`] annotated with the index blob's digest ([`HEAD_OF_ANNOTATION`]);
//! readers that do not know it skip it (it has no layer annotation). A reader fetches it whole
//! (digest-checked against the artifact manifest), decompresses at most the annotated head
//! size and checks the result against the index descriptor's head sha256, so the trust chain
//! is the one of the uncompressed head; on any failure it falls back to the Range request.
//! The artifact manifest also lists them in an annotation ([`HEADS_ANNOTATION`]), which the
//! referrers listing carries: a mount starts fetching them with the manifest ([`speculate`]).
//! Pure functions and one registry fetch; the caller (`index.rs`) stores the head.

use crate::digest::Digest;
use crate::oci::Descriptor;
use crate::reference::Reference;
use crate::registry::Client;
use bytes::Bytes;
use std::collections::BTreeMap;

pub const HEAD_ZSTD_MEDIA_TYPE: &str = "application/vnd.strata.layer.index.head.v5+zstd";
/// On a compressed head: the digest of the index blob whose head it is.
pub const HEAD_OF_ANNOTATION: &str = "dev.strata.index.head.of";
/// On the sidecar artifact manifest (and so in the referrers listing, which carries a
/// manifest's annotations): its compressed heads as JSON `[{"layer", "digest", "size"}]`, so
/// a mount can fetch them in the same round trip as the manifest. Only a hint: a head fetched
/// this way is used only if the manifest lists the same blob.
pub const HEADS_ANNOTATION: &str = "dev.strata.index.heads";
/// Bytes of compressed heads fetched on the listing's word alone, at most.
const SPECULATIVE_MAX_BYTES: u64 = 64 << 20;

/// One compressed head as listed in [`HEADS_ANNOTATION`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Listed {
    /// The image layer whose index it is the head of.
    pub layer: Digest,
    pub digest: Digest,
    pub size: u64,
}

/// The [`HEADS_ANNOTATION`] value for `heads` (layer, compressed head).
pub fn annotation(heads: &[(Digest, &Descriptor)]) -> String {
    let v: Vec<Listed> = heads
        .iter()
        .map(|(layer, d)| Listed {
            layer: *layer,
            digest: d.digest,
            size: d.size,
        })
        .collect();
    serde_json::to_string(&v).unwrap_or_default()
}

/// Fetch, at the same time and each digest-checked, the compressed heads the listing entry
/// `listed` (the sidecar's descriptor in the referrers list) announces for the layers in
/// `need`; what fails is left out (the manifest's own list decides what is used).
pub async fn speculate(
    client: &Client,
    reference: &Reference,
    listed: Option<&Descriptor>,
    need: &std::collections::BTreeSet<Digest>,
) -> BTreeMap<Digest, Bytes> {
    let Some(v) = listed
        .and_then(|d| d.annotation(HEADS_ANNOTATION))
        .and_then(|s| serde_json::from_str::<Vec<Listed>>(s).ok())
    else {
        return BTreeMap::new();
    };
    let mut budget = SPECULATIVE_MAX_BYTES;
    let mut want = Vec::new();
    for h in v {
        if need.contains(&h.layer)
            && h.size <= budget
            && !want.iter().any(|w: &Listed| w.digest == h.digest)
        {
            budget -= h.size;
            want.push(h);
        }
    }
    // Smallest first: the first blob request to a mirror goes alone (its answer shows what
    // the mirror is), and a cache that fetches whole blobs on a miss then fetches the least.
    want.sort_by_key(|h| h.size);
    let repo = reference.repo();
    let got = futures::future::join_all(want.iter().map(|h| {
        let repo = &repo;
        async move {
            let limit = usize::try_from(h.size).ok()?;
            client
                .get_blob_verified(repo, &h.digest, limit)
                .await
                .ok()
                .map(|b| (h.digest, b))
        }
    }))
    .await;
    got.into_iter().flatten().collect()
}
/// Compression level for published heads (publishing is rare; smaller is read often).
const LEVEL: i32 = 12;

/// The compressed head of `index` (an index blob with digest `index_digest` whose head is
/// its first `head` bytes), as a descriptor and body, when compression saves at least a
/// tenth (tiny heads are not worth a second blob).
pub fn compress(index_digest: Digest, bytes: &[u8], head: u64) -> Option<(Descriptor, Bytes)> {
    let head = bytes.get(..usize::try_from(head).ok()?)?;
    let mut planed = head.to_vec();
    planes(&mut planed, false);
    let z = zstd::bulk::compress(&planed, LEVEL).ok()?;
    if z.len() as u64 * 10 > head.len() as u64 * 9 {
        return None;
    }
    let mut d = Descriptor::new(HEAD_ZSTD_MEDIA_TYPE, Digest::of(&z), z.len() as u64);
    d.annotations = Some(BTreeMap::from([(
        HEAD_OF_ANNOTATION.to_string(),
        index_digest.to_string(),
    )]));
    Some((d, Bytes::from(z)))
}

/// The compressed heads listed in an artifact's layers, by the index blob they belong to.
pub fn listed(layers: &[Descriptor]) -> BTreeMap<Digest, &Descriptor> {
    layers
        .iter()
        .filter(|d| d.media_type == HEAD_ZSTD_MEDIA_TYPE)
        .filter_map(|d| {
            let of = d.annotation(HEAD_OF_ANNOTATION)?.parse::<Digest>().ok()?;
            Some((of, d))
        })
        .collect()
}

/// Fetch the compressed head `z` (unless `have` is already its bytes, digest-checked) and
/// return the head it decompresses to, if that is exactly `size` bytes with sha256 `digest`;
/// `None` (logged) on any failure.
pub async fn fetch(
    client: &Client,
    reference: &Reference,
    z: &Descriptor,
    have: Option<Bytes>,
    size: u64,
    digest: Digest,
) -> Option<Bytes> {
    // A compressed head larger than the head itself is not one strata published.
    if z.size > size {
        return None;
    }
    let limit = usize::try_from(z.size).ok()?;
    let got = match have {
        Some(b) => Ok(b),
        None => {
            client
                .get_blob_verified(&reference.repo(), &z.digest, limit)
                .await
        }
    };
    let body = match got {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(blob = %z.digest, "compressed index head: {e}; fetching it uncompressed");
            return None;
        }
    };
    match decompress(&body, size, digest) {
        Ok(h) => Some(h),
        Err(msg) => {
            tracing::warn!(blob = %z.digest, "compressed index head: {msg}; fetching it uncompressed");
            None
        }
    }
}

/// Decompress a head of exactly `size` bytes with sha256 `digest` (never more than `size`
/// bytes are produced).
pub fn decompress(z: &[u8], size: u64, digest: Digest) -> Result<Bytes, String> {
    let cap = usize::try_from(size).map_err(|_| "head size out of range".to_string())?;
    let mut out =
        zstd::bulk::decompress(z, cap).map_err(|e| format!("does not decompress: {e}"))?;
    planes(&mut out, true);
    if out.len() as u64 != size {
        return Err(format!("decompresses to {} bytes, not {size}", out.len()));
    }
    if Digest::of(&out) != digest {
        return Err("decompresses to bytes that do not match the head digest".into());
    }
    Ok(Bytes::from(out))
}

/// The fixed-size records of a head (88-byte entries, 32-byte checkpoints) stored byte plane
/// by plane (every record's byte 0, then every byte 1, ...) in a compressed head: each field's
/// bytes side by side compress a fifth to a quarter smaller. The record counts and offsets are
/// read from the head's header and seek header, which are never moved, so `back` (after
/// decompressing) undoes exactly what the publisher did; a region that does not fit is left as
/// it is (the head's sha256 is checked afterwards either way).
fn planes(head: &mut [u8], back: bool) {
    let u64_at = |b: &[u8], o: usize| -> Option<usize> {
        let v = u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?);
        usize::try_from(v).ok()
    };
    let regions = |b: &[u8]| -> Vec<(usize, usize, usize)> {
        let mut out = Vec::new();
        if b.len() < 128 || &b[..8] != b"STRATAIX" {
            return out;
        }
        if let (Some(n), Some(eo)) = (u64_at(b, 16), u64_at(b, 112)) {
            out.push((eo, n, 88));
        }
        if let (Some(ko), Some(kl)) = (u64_at(b, 56), u64_at(b, 64)) {
            if kl >= 64 {
                if let Some(c) = ko.checked_add(32).and_then(|o| u64_at(b, o)) {
                    out.push((ko.saturating_add(64), c, 32));
                }
            }
        }
        // Never the header nor the seek header (where the counts are read), and not two
        // regions over the same bytes. Offsets come from untrusted bytes: no overflow.
        let seek = u64_at(b, 56).unwrap_or(0);
        let span = |&(o, n, r): &(usize, usize, usize)| {
            let end = n.checked_mul(r).and_then(|l| o.checked_add(l))?;
            (o >= 128 && end <= b.len() && (end <= seek || o >= seek.saturating_add(64)))
                .then_some(o..end)
        };
        out.retain(|x| span(x).is_some());
        if let [x, y] = &out[..] {
            let (a, c) = (span(x).unwrap_or_default(), span(y).unwrap_or_default());
            if a.start < c.end && c.start < a.end {
                out.clear();
            }
        }
        out
    };
    for (o, n, r) in regions(head) {
        let src = head[o..o + n * r].to_vec();
        let dst = &mut head[o..o + n * r];
        for i in 0..n {
            for j in 0..r {
                if back {
                    dst[i * r + j] = src[j * n + i];
                } else {
                    dst[j * n + i] = src[i * r + j];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        (0..200_000u32)
            .flat_map(|i| (i % 97).to_le_bytes())
            .collect()
    }

    #[test]
    fn round_trip_and_checks() {
        let bytes = sample();
        let head = 500_000u64;
        let ix = Digest::of(&bytes);
        let (d, z) = compress(ix, &bytes, head).expect("compressible");
        assert!(d.size < head / 4, "{}", d.size);
        assert_eq!(listed(std::slice::from_ref(&d)).get(&ix), Some(&&d));
        let hd = Digest::of(&bytes[..head as usize]);
        assert_eq!(
            decompress(&z, head, hd).unwrap(),
            Bytes::copy_from_slice(&bytes[..head as usize])
        );
        // Wrong size (bigger output refused, smaller noticed), wrong digest, garbage.
        assert!(decompress(&z, head - 1, hd).is_err());
        assert!(decompress(&z, head + 1, hd).is_err());
        assert!(decompress(&z, head, Digest::of(b"x")).is_err());
        assert!(decompress(b"not zstd", head, hd).is_err());
    }

    /// A real index head goes through the planes and back exactly, and compresses smaller
    /// with them.
    #[test]
    fn planes_round_trip_on_a_real_head() {
        let mut tar = ::tar::Builder::new(Vec::new());
        for i in 0..3000u32 {
            let data = format!("file {i}\n").repeat(1 + (i as usize % 300));
            let mut h = ::tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000 + u64::from(i % 7));
            h.set_cksum();
            tar.append_data(&mut h, format!("d{}/f{i}", i % 40), data.as_bytes())
                .unwrap();
        }
        let tar = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let blob = gz.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ix");
        let opts = crate::layer::BuildOptions {
            span: 64 << 10,
            ..Default::default()
        };
        crate::layer::build_index_with(&blob[..], crate::layer::MEDIA_TAR_GZIP, &out, &opts)
            .unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let head = crate::layer::head_len(&bytes).unwrap() as usize;
        let mut p = bytes[..head].to_vec();
        planes(&mut p, false);
        assert_ne!(p, &bytes[..head]);
        planes(&mut p, true);
        assert_eq!(p, &bytes[..head]);
        // Hostile offsets and counts (the planes run before the digest check): no panic.
        for (at, v) in [(56, u64::MAX), (16, u64::MAX / 8), (112, u64::MAX - 3)] {
            let mut h = bytes[..head].to_vec();
            h[at..at + 8].copy_from_slice(&v.to_le_bytes());
            planes(&mut h, true);
            planes(&mut h, false);
        }
        let (d, z) = compress(Digest::of(&bytes), &bytes, head as u64).unwrap();
        let plain = zstd::bulk::compress(&bytes[..head], LEVEL).unwrap();
        assert!(z.len() < plain.len(), "{} vs {}", z.len(), plain.len());
        let hd = Digest::of(&bytes[..head]);
        assert_eq!(decompress(&z, head as u64, hd).unwrap(), &bytes[..head]);
        assert_eq!(d.size, z.len() as u64);
    }

    #[test]
    fn incompressible_heads_are_not_published() {
        let mut x = 0x9e3779b97f4a7c15u64;
        let noise: Vec<u8> = (0..100_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(compress(Digest::of(&noise), &noise, noise.len() as u64).is_none());
        assert!(compress(Digest::of(&noise), &noise, noise.len() as u64 + 1).is_none());
    }
}
