//! The attack material of the index-trust tests (`trust.rs`, `signed.rs`): an honest image
//! and an altered one of the same layer size, a sidecar forged over the altered layer with
//! strata's own index code (so its span hashes match the altered bytes), pushing blobs and
//! manifests straight to the registry, and a fault proxy made to serve the altered layer and
//! the forged referrers in place of the honest ones.

use super::image::{BuiltImage, Compression};
use super::testdata::pseudo;
use super::{http, sha256_digest, FaultProxy, ImageBuilder, Layer, OutputExt, Registry, StrataEnv};
use std::path::Path;

pub const FILES: usize = 4;
/// 2 MiB each (eight spans per file at the default 256 KiB span size): 8 MiB, many spans.
pub const FILE_LEN: usize = 2 << 20;

pub fn honest(i: usize) -> Vec<u8> {
    pseudo(FILE_LEN, 300 + i as u64)
}

pub fn altered(i: usize) -> Vec<u8> {
    pseudo(FILE_LEN, 900 + i as u64)
}

/// One plain-tar layer of `FILES` files: the altered layer differs only in the file bytes, so
/// its blob has the same size (an index describing a blob of another size is refused).
pub fn image(content: fn(usize) -> Vec<u8>) -> BuiltImage {
    let mut l = Layer::new().compression(Compression::None).dir("data");
    for i in 0..FILES {
        l = l.file(&format!("data/f{i}"), content(i));
    }
    ImageBuilder::new().layer(l).build("v1")
}

pub fn hex(d: &str) -> &str {
    d.trim_start_matches("sha256:")
}

pub fn put_blob(reg: &Registry, repo: &str, data: &[u8]) -> String {
    let d = sha256_digest(data);
    let r = http::request(
        &reg.host(),
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        &[],
    )
    .expect("start upload");
    assert_eq!(r.status, 202, "start upload: {}", r.text());
    let loc = r.header("location").expect("upload location").to_string();
    let path = match loc.find("/v2/") {
        Some(i) => loc[i..].to_string(),
        None => loc,
    };
    let sep = if path.contains('?') { '&' } else { '?' };
    let r = http::request(
        &reg.host(),
        "PUT",
        &format!("{path}{sep}digest={d}"),
        &[("Content-Type", "application/octet-stream")],
        data,
    )
    .expect("upload");
    assert_eq!(r.status, 201, "upload {d}: {}", r.text());
    d
}

pub fn put_manifest(reg: &Registry, repo: &str, reference: &str, media_type: &str, body: &[u8]) {
    let r = http::request(
        &reg.host(),
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Content-Type", media_type)],
        body,
    )
    .expect("put manifest");
    assert_eq!(r.status, 201, "put {repo}:{reference}: {}", r.text());
}

/// What [`forge`] made.
pub struct Forged {
    /// The forged sidecar artifact (manifest digest).
    pub art: String,
    /// Its index blob (strata's index over the altered layer).
    pub index_blob: String,
    /// Its empty config blob.
    pub empty: String,
    /// The altered layer's own digest (in `evil/<name>`).
    pub evil_layer: String,
}

/// The attack's material: the altered image pushed to `evil/<name>`, and a sidecar forged for
/// the honest image (subject: its manifest; layer annotation: its layer digest) whose index
/// blob is strata's own index over the altered layer, published in repository `into` with the
/// referrers tag of the honest manifest pointing at it.
pub fn forge(
    reg: &Registry,
    good: &BuiltImage,
    evil: &BuiltImage,
    name: &str,
    into: &str,
) -> Forged {
    let evil_repo = format!("evil/{name}");
    evil.push(reg, &format!("{evil_repo}:v1"));
    let builder = StrataEnv::new();
    builder
        .run(&["index", &format!("{}/{evil_repo}:v1", reg.host())])
        .assert_success();
    let evil_layer = evil.layers[0].digest.clone();
    let index = std::fs::read(builder.root().join("indexes").join(hex(&evil_layer)))
        .expect("strata's index of the altered layer");
    let index_blob = put_blob(reg, into, &index);
    let empty = put_blob(reg, into, b"{}");
    let art = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.strata.index.v5",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{
            "mediaType": "application/vnd.strata.layer.index.v5",
            "digest": index_blob,
            "size": index.len(),
            "annotations": {"dev.strata.layer.digest": good.layers[0].digest},
        }],
        "subject": {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": good.manifest_digest,
            "size": good.manifest.len(),
        },
    });
    let art = serde_json::to_vec(&art).unwrap();
    let art_digest = sha256_digest(&art);
    put_manifest(
        reg,
        into,
        &art_digest,
        "application/vnd.oci.image.manifest.v1+json",
        &art,
    );
    let referrers = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": art_digest,
            "size": art.len(),
            "artifactType": "application/vnd.strata.index.v5",
        }],
    });
    put_manifest(
        reg,
        into,
        &format!("sha256-{}", hex(&good.manifest_digest)),
        "application/vnd.oci.image.index.v1+json",
        &serde_json::to_vec(&referrers).unwrap(),
    );
    Forged {
        art: art_digest,
        index_blob,
        empty,
        evil_layer,
    }
}

/// Make `proxy` answer requests about `repo`'s image with the altered layer and, with
/// `referrers`, the forged sidecar (kept in `evil/<name>`): referrers API and tag, the
/// artifact, its blobs.
pub fn poison_proxy(
    proxy: &FaultProxy,
    repo: &str,
    name: &str,
    good: &BuiltImage,
    f: &Forged,
    referrers: bool,
) {
    let evil_repo = format!("evil/{name}");
    proxy.substitute(
        &format!("/v2/{repo}/blobs/{}", good.layers[0].digest),
        &format!("/v2/{evil_repo}/blobs/{}", f.evil_layer),
    );
    if referrers {
        for p in [
            "referrers/".to_string(),
            "manifests/sha256-".to_string(),
            format!("manifests/{}", f.art),
            format!("blobs/{}", f.index_blob),
            format!("blobs/{}", f.empty),
        ] {
            proxy.substitute(&format!("/v2/{repo}/{p}"), &format!("/v2/{evil_repo}/{p}"));
        }
    }
}

/// The proxy really serves the altered layer bytes under the honest layer digest.
pub fn assert_proxy_serves_altered(
    proxy: &FaultProxy,
    repo: &str,
    good: &BuiltImage,
    evil: &BuiltImage,
) {
    let r = http::request(
        &proxy.host(),
        "GET",
        &format!("/v2/{repo}/blobs/{}", good.layers[0].digest),
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body, evil.layers[0].blob,
        "the proxy must serve the altered layer"
    );
    assert_ne!(r.body, good.layers[0].blob);
}

/// Read every file through the mount: each must be the honest bytes or fail (EIO); never the
/// altered bytes. Returns how many read honestly.
pub fn read_all_never_altered(mnt: &Path) -> usize {
    let mut ok = 0;
    for i in 0..FILES {
        match std::fs::read(mnt.join(format!("data/f{i}"))) {
            Ok(b) => {
                assert!(b != altered(i), "data/f{i}: ALTERED bytes reached a reader");
                assert!(
                    b == honest(i),
                    "data/f{i}: neither honest nor altered bytes"
                );
                ok += 1;
            }
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "data/f{i}: {e}"),
        }
    }
    ok
}

pub fn mirror_env(reg: &Registry, proxy: &FaultProxy, extra: serde_json::Value) -> StrataEnv {
    let env = StrataEnv::new();
    let mut cfg = serde_json::json!({"registry-mirrors-by-host": {reg.host(): [proxy.url()]}});
    if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    env.write_config(&cfg);
    env
}

/// A P-256 key pair made by the harness with p256 directly (not strata's code), written as
/// PEM files: the public key (`PUBLIC KEY`), the private key as PKCS#8 and as SEC1.
pub struct TestKey {
    pub sk: p256::ecdsa::SigningKey,
    pub public_pem: std::path::PathBuf,
    pub pkcs8_pem: std::path::PathBuf,
    pub sec1_pem: std::path::PathBuf,
}

pub fn test_key(dir: &Path, seed: u8) -> TestKey {
    use p256::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
    let sk = p256::ecdsa::SigningKey::from_bytes(&[seed; 32].into()).unwrap();
    let key = TestKey {
        public_pem: dir.join(format!("key{seed}.pub")),
        pkcs8_pem: dir.join(format!("key{seed}.pkcs8.pem")),
        sec1_pem: dir.join(format!("key{seed}.sec1.pem")),
        sk,
    };
    let public = key.sk.verifying_key().to_public_key_pem(LineEnding::LF);
    std::fs::write(&key.public_pem, public.unwrap()).unwrap();
    let pkcs8 = key.sk.to_pkcs8_pem(LineEnding::LF).unwrap();
    std::fs::write(&key.pkcs8_pem, pkcs8.as_bytes()).unwrap();
    let sec1 = p256::SecretKey::from(&key.sk)
        .to_sec1_pem(LineEnding::LF)
        .unwrap();
    std::fs::write(&key.sec1_pem, sec1.as_bytes()).unwrap();
    key
}

const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const SIGNATURE: &str = "dev.cosignproject.cosign/signature";

/// Sign artifact `signed` in `repo` the way cosign stores it, with a payload naming `named`
/// as the signed manifest (`signed` itself for an honest signature): the payload blob and an
/// image manifest with it as its one layer, tagged `sha256-<hex of signed>.sig`. Returns the
/// payload blob's digest.
pub fn cosign_sign(
    reg: &Registry,
    repo: &str,
    signed: &str,
    named: &str,
    sk: &p256::ecdsa::SigningKey,
) -> String {
    use base64::Engine as _;
    use p256::ecdsa::signature::Signer as _;
    let payload = serde_json::to_vec(&serde_json::json!({
        "critical": {
            "identity": {"docker-reference": format!("{}/{repo}", reg.host())},
            "image": {"docker-manifest-digest": named},
            "type": "cosign container image signature",
        },
        "optional": null,
    }))
    .unwrap();
    let sig: p256::ecdsa::Signature = sk.sign(&payload);
    let sig = base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes());
    let payload_digest = put_blob(reg, repo, &payload);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "", "os": "", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [payload_digest]},
    }))
    .unwrap();
    let config_digest = put_blob(reg, repo, &config);
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": SIMPLESIGNING, "digest": payload_digest,
                    "size": payload.len(), "annotations": {SIGNATURE: sig}}],
    });
    put_manifest(
        reg,
        repo,
        &format!("sha256-{}.sig", hex(signed)),
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&m).unwrap(),
    );
    payload_digest
}

/// Sign artifact `signed` in `repo` the way cosign's OCI 1.1 mode stores it: a manifest of
/// artifact type `application/vnd.dev.cosign.artifact.sig.v1+json`, empty config, the payload
/// layer, `subject` = the artifact; listed under the referrers tag schema's `sha256-<hex>` tag
/// (the registry has no referrers API).
pub fn cosign_sign_referrer(
    reg: &Registry,
    repo: &str,
    signed: &str,
    art_size: usize,
    sk: &p256::ecdsa::SigningKey,
) {
    use base64::Engine as _;
    use p256::ecdsa::signature::Signer as _;
    const SIG_TYPE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
    let payload = serde_json::to_vec(&serde_json::json!({
        "critical": {
            "identity": {"docker-reference": format!("{}/{repo}", reg.host())},
            "image": {"docker-manifest-digest": signed},
            "type": "cosign container image signature",
        },
        "optional": {},
    }))
    .unwrap();
    let sig: p256::ecdsa::Signature = sk.sign(&payload);
    let sig = base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes());
    let payload_digest = put_blob(reg, repo, &payload);
    let empty = put_blob(reg, repo, b"{}");
    let m = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": SIG_TYPE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": SIMPLESIGNING, "digest": payload_digest,
                    "size": payload.len(), "annotations": {SIGNATURE: sig}}],
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": signed, "size": art_size},
    }))
    .unwrap();
    let d = sha256_digest(&m);
    put_manifest(
        reg,
        repo,
        &d,
        "application/vnd.oci.image.manifest.v1+json",
        &m,
    );
    let referrers = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": d, "size": m.len(), "artifactType": SIG_TYPE}],
    });
    put_manifest(
        reg,
        repo,
        &format!("sha256-{}", hex(signed)),
        "application/vnd.oci.image.index.v1+json",
        &serde_json::to_vec(&referrers).unwrap(),
    );
}

/// The harness's own check of a cosign signature (what `cosign verify --key` does with it):
/// the `.sig` manifest of `signed` in `repo` has a simple-signing layer whose blob matches its
/// digest, names `signed` and is signed by `vk`.
pub fn cosign_verifies(
    reg: &Registry,
    repo: &str,
    signed: &str,
    vk: &p256::ecdsa::VerifyingKey,
) -> bool {
    use base64::Engine as _;
    use p256::ecdsa::signature::Verifier as _;
    let r = http::request(
        &reg.host(),
        "GET",
        &format!("/v2/{repo}/manifests/sha256-{}.sig", hex(signed)),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        &[],
    )
    .unwrap();
    if r.status != 200 {
        return false;
    }
    let m: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    m["layers"].as_array().into_iter().flatten().any(|l| {
        let (Some(d), Some(sig)) = (l["digest"].as_str(), l["annotations"][SIGNATURE].as_str())
        else {
            return false;
        };
        let b = http::request(
            &reg.host(),
            "GET",
            &format!("/v2/{repo}/blobs/{d}"),
            &[],
            &[],
        )
        .unwrap();
        let der = base64::engine::general_purpose::STANDARD
            .decode(sig)
            .unwrap();
        let sig = p256::ecdsa::Signature::from_der(&der).unwrap();
        let payload: serde_json::Value = serde_json::from_slice(&b.body).unwrap();
        l["mediaType"] == SIMPLESIGNING
            && sha256_digest(&b.body) == d
            && payload["critical"]["image"]["docker-manifest-digest"] == signed
            && payload["critical"]["type"] == "cosign container image signature"
            && vk.verify(&b.body, &sig).is_ok()
    })
}
