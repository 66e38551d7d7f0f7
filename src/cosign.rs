//! cosign-compatible signatures ("simple signing" payloads with ECDSA P-256 / SHA-256 keys),
//! for `index-trust: signed` and `strata index --push --sign`.
//!
//! Leaf module: depends on nothing else in the crate but `digest`. The signature of an artifact
//! whose manifest digest is `sha256:HEX` is, the way cosign stores it, an image manifest tagged
//! `sha256-HEX.sig` ([`sig_tag`]) in the same repository; each of its layers of media type
//! [`SIMPLESIGNING`] is a JSON payload naming the signed digest
//! (`critical.image.docker-manifest-digest`), and carries in annotation
//! [`SIGNATURE_ANNOTATION`] the base64 of an ASN.1 DER ECDSA signature over the payload bytes.
//! Here: loading keys (PEM public keys, SubjectPublicKeyInfo; private keys PKCS#8 or SEC1),
//! making a payload and signing it, and checking one layer ([`verify_layer`]). Fetching the
//! signature manifest and its blobs (digest-checked) is `image/signed.rs`'s.

use crate::digest::Digest;
use base64::Engine as _;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _, EncodePublicKey as _};
use std::path::{Path, PathBuf};

/// Media type of a signature manifest layer holding a payload.
pub const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Layer annotation holding the base64 DER signature over the payload.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// `critical.type` of a cosign payload.
pub const PAYLOAD_TYPE: &str = "cosign container image signature";
/// Largest payload accepted (cosign's are a few hundred bytes).
pub const MAX_PAYLOAD_BYTES: usize = 64 << 10;

/// The tag under which cosign keeps the signatures of the manifest `d`: `sha256-HEX.sig`.
pub fn sig_tag(d: &Digest) -> String {
    format!("sha256-{}.sig", d.hex())
}

/// A configured verification key.
#[derive(Clone, Debug)]
pub struct PublicKey {
    key: VerifyingKey,
    /// sha256 of the key's SubjectPublicKeyInfo DER: what a trust mark records.
    pub fingerprint: Digest,
    /// The file it was read from.
    pub path: PathBuf,
}

impl PublicKey {
    /// Parse a PEM `PUBLIC KEY` (SubjectPublicKeyInfo of a P-256 key); `path` is for messages.
    pub fn from_pem(pem: &str, path: &Path) -> Result<PublicKey, String> {
        let key = VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| {
            format!(
                "{}: not a PEM P-256 public key (\"PUBLIC KEY\"): {e}",
                path.display()
            )
        })?;
        let der = key
            .to_public_key_der()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(PublicKey {
            key,
            fingerprint: Digest::of(der.as_bytes()),
            path: path.to_path_buf(),
        })
    }

    /// The public half of `key` (for checking which signatures it made).
    pub fn of(key: &SigningKey) -> Result<PublicKey, String> {
        let der = key
            .verifying_key()
            .to_public_key_der()
            .map_err(|e| e.to_string())?;
        Ok(PublicKey {
            key: *key.verifying_key(),
            fingerprint: Digest::of(der.as_bytes()),
            path: PathBuf::from("(signing key)"),
        })
    }

    /// Read and parse the PEM public key at `path`.
    pub fn load(path: &Path) -> Result<PublicKey, String> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| format!("reading public key {}: {e}", path.display()))?;
        PublicKey::from_pem(&pem, path)
    }
}

/// Every key of `paths` (`index-trust-keys`), or the first one that fails to load.
pub fn load_public_keys(paths: &[PathBuf]) -> Result<Vec<PublicKey>, String> {
    paths.iter().map(|p| PublicKey::load(p)).collect()
}

/// Read a P-256 private key: PEM PKCS#8 (`PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`).
/// cosign's own encrypted key files (`ENCRYPTED SIGSTORE PRIVATE KEY`) are not read.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, String> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("reading private key {}: {e}", path.display()))?;
    let pem = pem.trim();
    let secret = if pem.contains("-----BEGIN EC PRIVATE KEY-----") {
        p256::SecretKey::from_sec1_pem(pem).map_err(|e| e.to_string())
    } else {
        p256::SecretKey::from_pkcs8_pem(pem).map_err(|e| e.to_string())
    };
    secret.map(SigningKey::from).map_err(|e| {
        format!(
            "{}: not a PEM P-256 private key (\"PRIVATE KEY\" or \"EC PRIVATE KEY\"): {e}",
            path.display()
        )
    })
}

/// The cosign payload signing `digest`, as pushed by `docker_reference` (`host/repo`).
pub fn payload(docker_reference: &str, digest: &Digest) -> Vec<u8> {
    let v = serde_json::json!({
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": digest.to_string()},
            "type": PAYLOAD_TYPE,
        },
        "optional": null,
    });
    v.to_string().into_bytes()
}

/// The base64 of the DER ECDSA P-256 / SHA-256 signature of `payload` (the annotation value).
pub fn sign(key: &SigningKey, payload: &[u8]) -> String {
    let sig: Signature = key.sign(payload);
    base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
}

#[derive(serde::Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(serde::Deserialize)]
struct Critical {
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(serde::Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    digest: String,
}

/// Check one signature layer: `payload` (its blob, digest-checked by the caller) is signed by
/// one of `keys` with `signature_b64` (the annotation), and names `want` as the signed
/// manifest. Returns the key that signed it, or why not.
pub fn verify_layer<'k>(
    keys: &'k [PublicKey],
    payload: &[u8],
    signature_b64: &str,
    want: &Digest,
) -> Result<&'k PublicKey, String> {
    let der = base64::engine::general_purpose::STANDARD
        .decode(signature_b64.trim())
        .map_err(|e| format!("signature is not base64: {e}"))?;
    let sig = Signature::from_der(&der).map_err(|e| format!("signature is not DER ECDSA: {e}"))?;
    let key = keys
        .iter()
        .find(|k| k.key.verify(payload, &sig).is_ok())
        .ok_or_else(|| "signature made by none of the configured keys".to_string())?;
    let p: Payload = serde_json::from_slice(payload)
        .map_err(|e| format!("signed payload is not a cosign payload: {e}"))?;
    if p.critical.kind != PAYLOAD_TYPE {
        return Err(format!(
            "signed payload has type {:?}, not {PAYLOAD_TYPE:?}",
            p.critical.kind
        ));
    }
    let named: Digest = p
        .critical
        .image
        .digest
        .parse()
        .map_err(|e| format!("signed payload's docker-manifest-digest: {e}"))?;
    if named != *want {
        return Err(format!("signature is for {named}, not {want}"));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::pkcs8::{EncodePrivateKey as _, LineEnding};

    /// A key pair made here with p256 directly; the public half as cosign writes it (PEM).
    fn pair(seed: u8) -> (SigningKey, PublicKey) {
        let sk = SigningKey::from_bytes(&[seed; 32].into()).unwrap();
        let pem = sk
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        (
            sk,
            PublicKey::from_pem(&pem, Path::new("test.pub")).unwrap(),
        )
    }

    /// A cosign-format vector built independently of [`payload`] and [`sign`]: the payload
    /// text spelled out, the signature made with p256's signer and DER-encoded here.
    fn vector(sk: &SigningKey, digest: &str) -> (Vec<u8>, String) {
        let payload = format!(
            "{{\"critical\":{{\"identity\":{{\"docker-reference\":\"127.0.0.1:5000/a/b\"}},\
             \"image\":{{\"docker-manifest-digest\":\"{digest}\"}},\
             \"type\":\"cosign container image signature\"}},\"optional\":{{\"by\":\"test\"}}}}"
        );
        let sig: Signature = sk.sign(payload.as_bytes());
        let b64 = base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes());
        (payload.into_bytes(), b64)
    }

    #[test]
    fn verifies_an_independent_cosign_vector() {
        let (sk, pk) = pair(7);
        let (_, other) = pair(9);
        let d = Digest::of(b"artifact");
        let (payload, sig) = vector(&sk, &d.to_string());
        let keys = [other.clone(), pk.clone()];
        let k = verify_layer(&keys, &payload, &sig, &d).unwrap();
        assert_eq!(k.fingerprint, pk.fingerprint);
        // Another key only.
        let e = verify_layer(std::slice::from_ref(&other), &payload, &sig, &d).unwrap_err();
        assert!(e.contains("none of the configured keys"), "{e}");
        // A payload naming another digest, validly signed.
        let e = verify_layer(&keys, &payload, &sig, &Digest::of(b"other")).unwrap_err();
        assert!(e.contains("is for"), "{e}");
        // One byte of the payload changed.
        let mut bad = payload.clone();
        bad[10] ^= 1;
        assert!(verify_layer(&keys, &bad, &sig, &d).is_err());
        // Not base64, not DER.
        assert!(verify_layer(&keys, &payload, "!!", &d).is_err());
        assert!(verify_layer(&keys, &payload, "AAAA", &d).is_err());
    }

    #[test]
    fn own_signatures_verify_and_keys_load() {
        let (sk, pk) = pair(3);
        let d = Digest::of(b"x");
        let p = payload("host/repo", &d);
        let s = sign(&sk, &p);
        assert!(verify_layer(std::slice::from_ref(&pk), &p, &s, &d).is_ok());
        assert_eq!(PublicKey::of(&sk).unwrap().fingerprint, pk.fingerprint);
        let dir = tempfile::tempdir().unwrap();
        let pkcs8 = dir.path().join("k8.pem");
        std::fs::write(&pkcs8, sk.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
        let sec1 = dir.path().join("k1.pem");
        let secret = p256::SecretKey::from(&sk);
        std::fs::write(
            &sec1,
            secret.to_sec1_pem(LineEnding::LF).unwrap().as_bytes(),
        )
        .unwrap();
        for f in [&pkcs8, &sec1] {
            let k = load_signing_key(f).unwrap();
            assert_eq!(PublicKey::of(&k).unwrap().fingerprint, pk.fingerprint);
        }
        let e = PublicKey::load(&pkcs8).unwrap_err();
        assert!(e.contains("k8.pem"), "{e}");
        assert!(load_signing_key(&dir.path().join("none")).is_err());
        assert_eq!(
            sig_tag(&d),
            format!("sha256-{}.sig", d.hex()),
            "cosign's tag"
        );
    }
}
