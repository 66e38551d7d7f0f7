//! Convert an OCI image layout to eStargz with strata's own writer (`layer::estargz::build`),
//! for `scripts/bench-startup.sh` (the `strata-estargz` method): it works on OCI layouts,
//! without a store or registry; `strata convert --estargz` is the product command.
//!
//!   cargo run --release --example estargz_convert -- SRC_LAYOUT DST_LAYOUT [CHUNK_BYTES]
//!
//! Reads the manifest tagged `latest` in SRC_LAYOUT, rewrites every layer (gzip or plain tar)
//! as an eStargz blob (one gzip member per file chunk, TOC, footer) annotated with
//! `containerd.io/snapshot/stargz/toc.digest`, updates the config's `rootfs.diff_ids` to the
//! new uncompressed digests and writes DST_LAYOUT (tag `latest`).

use sha2::{Digest as _, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn blob_path(layout: &Path, digest: &str) -> Res<PathBuf> {
    let (alg, hex) = digest.split_once(':').ok_or("bad digest")?;
    Ok(layout.join("blobs").join(alg).join(hex))
}

fn put_blob(layout: &Path, bytes: &[u8]) -> Res<String> {
    let hex = hex::encode(Sha256::digest(bytes));
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(&hex), bytes)?;
    Ok(format!("sha256:{hex}"))
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: estargz_convert SRC_LAYOUT DST_LAYOUT [CHUNK_BYTES]".into());
    }
    let (src, dst) = (Path::new(&args[1]), Path::new(&args[2]));
    let chunk: u64 = args.get(3).map_or(Ok(4 << 20), |s| s.parse())?;
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(src.join("index.json"))?)?;
    let desc = index["manifests"]
        .as_array()
        .and_then(|m| {
            m.iter().find(|d| {
                d["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some("latest")
            })
        })
        .ok_or("no manifest tagged latest")?;
    let mdigest = desc["digest"].as_str().ok_or("manifest digest")?;
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob_path(src, mdigest)?)?)?;
    let cdigest = manifest["config"]["digest"]
        .as_str()
        .ok_or("config digest")?
        .to_string();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob_path(src, &cdigest)?)?)?;
    std::fs::create_dir_all(dst.join("blobs/sha256"))?;
    let mut diff_ids = Vec::new();
    let layers = manifest["layers"].as_array_mut().ok_or("no layers")?;
    for l in layers.iter_mut() {
        let d = l["digest"].as_str().ok_or("layer digest")?.to_string();
        let media = l["mediaType"].as_str().unwrap_or_default().to_string();
        let raw = std::fs::read(blob_path(src, &d)?)?;
        let tar = if media.ends_with("gzip") {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(&raw[..]).read_to_end(&mut out)?;
            out
        } else {
            raw
        };
        let (blob, toc) = strata::layer::estargz::build(&tar, chunk)?;
        let mut plain = Vec::new();
        flate2::read::MultiGzDecoder::new(&blob[..]).read_to_end(&mut plain)?;
        diff_ids.push(format!("sha256:{}", hex::encode(Sha256::digest(&plain))));
        let nd = put_blob(dst, &blob)?;
        eprintln!(
            "{d} ({} bytes) -> {nd} ({} bytes, toc {toc})",
            l["size"],
            blob.len()
        );
        *l = serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": nd,
            "size": blob.len(),
            "annotations": {
                "containerd.io/snapshot/stargz/toc.digest": toc.to_string(),
                "io.containers.estargz.uncompressed-size": plain.len().to_string(),
            },
        });
    }
    config["rootfs"]["diff_ids"] = serde_json::json!(diff_ids);
    let cbytes = serde_json::to_vec(&config)?;
    let cd = put_blob(dst, &cbytes)?;
    manifest["config"]["digest"] = serde_json::json!(cd);
    manifest["config"]["size"] = serde_json::json!(cbytes.len());
    let mbytes = serde_json::to_vec(&manifest)?;
    let md = put_blob(dst, &mbytes)?;
    let idx = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md,
            "size": mbytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    std::fs::write(dst.join("index.json"), serde_json::to_vec(&idx)?)?;
    std::fs::write(dst.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(())
}
