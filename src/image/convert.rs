//! `strata convert --estargz`: rewrite a stored image's layers as eStargz, with the files of
//! an access profile moved to the front of each layer and a `.prefetch.landmark` after them,
//! so that any eStargz reader (stargz-snapshotter, strata) fetches them first.
//!
//! Each layer is downloaded whole if missing (digest-checked, `commit::fetch_missing_layers`),
//! decompressed (gzip, zstd or plain tar), reordered ([`prioritize`]: only regular files named
//! once in the layer move, in profile order, so no later duplicate, hard link or whiteout changes
//! meaning), written by `layer::estargz::build` and annotated with its TOC digest. The config's
//! `rootfs.diff_ids` get the new uncompressed digests; the new image is stored (and tagged by
//! the caller), never pushed here. Whole layers are held in memory while converted.

use super::commit::{fetch_missing_layers, store_image};
use super::index::TOC_ANNOTATION;
use super::profile::Profile;
use super::{Error, Progress};
use crate::digest::Digest;
use crate::layer::{self, TarReader};
use crate::oci::{Descriptor, OCI_LAYER_GZIP};
use crate::reference::Reference;
use crate::registry::Client;
use crate::store::{ImageRecord, Store};
use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

/// Name and content of the landmark stargz-snapshotter writes after the prioritised files.
pub const LANDMARK: &str = ".prefetch.landmark";
const LANDMARK_CONTENT: [u8; 1] = [0xf];
/// eStargz chunk size used by `convert` (stargz-snapshotter's default).
pub const CHUNK: u64 = 4 << 20;

fn bad(what: &str, msg: impl ToString) -> Error {
    Error::Invalid {
        what: what.into(),
        msg: msg.to_string(),
    }
}

/// `tar` with the regular files named in `first` (normalised paths, in that order) moved to
/// the front, followed by a `.prefetch.landmark` member; returns the new tar and how many
/// files moved. A path named more than once in the layer, or not a regular file, stays put.
/// Without any file to move the tar is returned unchanged (no landmark).
pub fn prioritize(tar: &[u8], first: &[String]) -> Result<(Vec<u8>, usize), layer::Error> {
    let mut r = TarReader::new(tar);
    // (normalised path, member bytes range, is regular file)
    let mut members: Vec<(String, std::ops::Range<usize>, bool)> = Vec::new();
    let mut end_of_members = 0usize;
    while let Some(e) = r.next_entry()? {
        let end = (e.offset + e.size) as usize;
        let padded = end.div_ceil(512) * 512;
        let path = layer::normalize_path(&e.path).unwrap_or_default();
        members.push((
            path,
            e.header_offset as usize..padded.min(tar.len()),
            matches!(e.typeflag, b'0' | 0 | b'7'),
        ));
        end_of_members = padded.min(tar.len());
    }
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (p, _, _) in &members {
        *count.entry(p.as_str()).or_default() += 1;
    }
    let position: HashMap<&str, usize> = members
        .iter()
        .enumerate()
        .filter(|(_, (p, _, reg))| *reg && count.get(p.as_str()) == Some(&1))
        .map(|(i, (p, _, _))| (p.as_str(), i))
        .collect();
    let mut moved = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for p in first {
        if let Some(&i) = position.get(p.as_str()) {
            if seen.insert(i) {
                moved.push(i);
            }
        }
    }
    if moved.is_empty() {
        return Ok((tar.to_vec(), 0));
    }
    let mut out = Vec::with_capacity(tar.len() + 2048);
    for &i in &moved {
        out.extend_from_slice(&tar[members[i].1.clone()]);
    }
    let mut h = ::tar::Header::new_ustar();
    h.set_size(LANDMARK_CONTENT.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(::tar::EntryType::Regular);
    h.set_path(LANDMARK).map_err(|e| layer::Error::Estargz {
        reason: format!("landmark header: {e}"),
    })?;
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&LANDMARK_CONTENT);
    out.resize(out.len().div_ceil(512) * 512, 0);
    for (i, m) in members.iter().enumerate() {
        if !seen.contains(&i) {
            out.extend_from_slice(&tar[m.1.clone()]);
        }
    }
    // What followed the last member (end-of-archive blocks, trailing padding).
    out.extend_from_slice(&tar[end_of_members..]);
    if tar.len() == end_of_members {
        out.extend_from_slice(&[0u8; 1024]);
    }
    Ok((out, moved.len()))
}

fn decompress(blob: &[u8], media_type: &str) -> Result<Vec<u8>, Error> {
    let mut tar = Vec::new();
    let res = match super::commit::Compression::detect(blob) {
        super::commit::Compression::Gzip => {
            flate2::read::MultiGzDecoder::new(blob).read_to_end(&mut tar)
        }
        super::commit::Compression::Zstd => {
            zstd::stream::read::Decoder::new(blob).and_then(|mut d| d.read_to_end(&mut tar))
        }
        super::commit::Compression::None => {
            tar.extend_from_slice(blob);
            Ok(tar.len())
        }
    };
    res.map_err(|e| bad(&format!("layer of type {media_type}"), e))?;
    Ok(tar)
}

/// Convert `src` (resolved from `src_ref`) to eStargz with `profile`'s files first; returns
/// the stored (untagged) record and how many files each layer prioritises.
pub async fn convert_estargz(
    client: &Client,
    store: &Arc<Store>,
    src: &ImageRecord,
    src_ref: &Reference,
    profile: &Profile,
    progress: &Progress,
) -> Result<(ImageRecord, Vec<usize>), Error> {
    fetch_missing_layers(client, store, src_ref, src, progress).await?;
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    let mut moved = Vec::new();
    for (i, l) in src.layers.iter().enumerate() {
        let first: Vec<String> = profile
            .iter()
            .filter(|(li, _)| *li == i)
            .map(|(_, p)| p.clone())
            .collect();
        let (s, d, mt) = (store.clone(), l.digest, l.media_type.clone());
        let (blob, toc, diff_id, n) = tokio::task::spawn_blocking(move || {
            let tar = decompress(&s.read_blob(&d)?, &mt)?;
            let (tar, n) = prioritize(&tar, &first)?;
            let (blob, toc) = layer::estargz::build(&tar, CHUNK)?;
            // The uncompressed stream includes the TOC member: hash what a puller decompresses.
            let diff_id = Digest::of(&decompress(&blob, OCI_LAYER_GZIP)?);
            s.put_blob(Digest::of(&blob), &blob, "eStargz layer")?;
            Ok::<_, Error>((blob, toc, diff_id, n))
        })
        .await
        .map_err(|e| bad("converting a layer", e))??;
        let mut desc = Descriptor::new(OCI_LAYER_GZIP, Digest::of(&blob), blob.len() as u64);
        desc.annotations = Some([(TOC_ANNOTATION.to_string(), toc.to_string())].into());
        progress.line(&format!(
            "{} -> {} (eStargz, {n} prioritised file(s))",
            l.digest.short(),
            desc.digest.short()
        ));
        layers.push(desc);
        diff_ids.push(serde_json::json!(diff_id.to_string()));
        moved.push(n);
    }
    let (_, mut raw) = store.config(src)?;
    let rootfs = raw
        .get_mut("rootfs")
        .and_then(|r| r.as_object_mut())
        .ok_or_else(|| bad("source image config", "no rootfs object"))?;
    rootfs.insert("diff_ids".into(), serde_json::Value::Array(diff_ids));
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    // eStargz layers are OCI media types: always an OCI manifest.
    let mut rec = store_image(store, raw, layers, false, &src.platform, &now)?;
    rec.complete = true;
    store.put_image(&rec)?;
    Ok((rec, moved))
}

/// A profile file: `strata profile show` output (`LAYER<TAB>/PATH` per line).
pub fn parse_profile(text: &str) -> Result<Profile, Error> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (layer, path) = line
            .split_once('\t')
            .and_then(|(l, p)| Some((l.trim().parse::<usize>().ok()?, p)))
            .ok_or_else(|| {
                bad(
                    "profile file",
                    format!("line {}: expected LAYER<TAB>/PATH", n + 1),
                )
            })?;
        let path = layer::normalize_path(path.trim().trim_start_matches('/'))
            .map_err(|e| bad("profile file", format!("line {}: {e}", n + 1)))?;
        out.push((layer, path));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = ::tar::Builder::new(Vec::new());
        for (p, d) in files {
            let mut h = ::tar::Header::new_gnu();
            h.set_size(d.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(::tar::EntryType::Regular);
            b.append_data(&mut h, p, *d).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn profile_files_move_first_with_a_landmark_and_the_toc_says_so() {
        let tar = tar_of(&[
            ("a", b"a"),
            ("dup", b"1"),
            ("b", b"bb"),
            ("dup", b"2"),
            ("c", b"ccc"),
        ]);
        let want: Vec<String> = ["c", "missing", "dup", "a"].map(String::from).to_vec();
        let (out, n) = prioritize(&tar, &want).unwrap();
        assert_eq!(n, 2);
        let mut r = TarReader::new(&out[..]);
        let mut names = Vec::new();
        while let Some(e) = r.next_entry().unwrap() {
            let c = &out[e.offset as usize..(e.offset + e.size) as usize];
            names.push((e.path.clone(), c.to_vec()));
        }
        let order: Vec<&str> = names.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(order, ["c", "a", LANDMARK, "dup", "b", "dup"]);
        assert_eq!(names[0].1, b"ccc");
        let (blob, toc) = layer::estargz::build(&out, 1 << 20).unwrap();
        let fr = layer::estargz::footer_range(blob.len() as u64).unwrap();
        let tr = layer::estargz::toc_range(&blob[fr.start as usize..], blob.len() as u64).unwrap();
        let parsed =
            layer::estargz::parse_toc(&blob[tr.start as usize..tr.end as usize], &toc).unwrap();
        assert_eq!(layer::estargz::prioritized_files(&parsed), ["c", "a"]);
        // Nothing to move: unchanged, no landmark.
        assert_eq!(prioritize(&tar, &[]).unwrap(), (tar.clone(), 0));
    }

    #[test]
    fn profile_files_parse_like_profile_show_prints_them() {
        let p = parse_profile("0\t/usr/bin/python3\n\n1\t/etc/os-release\n").unwrap();
        assert_eq!(
            p,
            vec![
                (0, "usr/bin/python3".to_string()),
                (1, "etc/os-release".to_string())
            ]
        );
        assert!(parse_profile("x /a\n").is_err());
    }
}
