//! A throwaway certificate authority for TLS tests (rcgen): a CA certificate, server
//! certificates for 127.0.0.1, client certificates, all ECDSA P-256 in PEM. Files written by
//! the test where it needs them (certs.d directories, hosts.toml paths, the registry); a TLS
//! registry holding an image, pushed with skopeo over verified TLS.

use std::fs;
use std::path::Path;

use super::image::BuiltImage;
use super::registry::{Registry, RegistryAuth, RegistryTls};
use super::skopeo::skopeo;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// A certificate authority.
pub struct TestCa {
    cert: Certificate,
    key: KeyPair,
}

/// A certificate and its private key, PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    /// Write `<dir>/<stem>.cert` and `<dir>/<stem>.key` (the docker certs.d client layout).
    pub fn write_pair(&self, dir: &Path, stem: &str) {
        fs::create_dir_all(dir).expect("mkdir cert dir");
        fs::write(dir.join(format!("{stem}.cert")), &self.cert_pem).expect("write .cert");
        fs::write(dir.join(format!("{stem}.key")), &self.key_pem).expect("write .key");
    }
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa { cert, key }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// Write the CA certificate to `path` (parent directories created).
    pub fn write_cert(&self, path: &Path) {
        if let Some(p) = path.parent() {
            fs::create_dir_all(p).expect("mkdir");
        }
        fs::write(path, self.cert_pem()).expect("write CA cert");
    }

    fn issue(&self, sans: &[&str], cn: &str, eku: ExtendedKeyUsagePurpose) -> Issued {
        let key = KeyPair::generate().expect("leaf key");
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![eku];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign leaf");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A server certificate for 127.0.0.1 and localhost.
    pub fn server(&self) -> Issued {
        self.issue(
            &["127.0.0.1", "localhost"],
            "strata test registry",
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate.
    pub fn client(&self, cn: &str) -> Issued {
        self.issue(&[], cn, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// Push `img` to a TLS registry with skopeo, trusting and presenting what `cert_dir` holds.
pub fn push_tls(img: &BuiltImage, reg: &Registry, repo_tag: &str, cert_dir: &Path) {
    let dest = format!("docker://{}/{repo_tag}", reg.host());
    let oci = img.oci_ref();
    let creds = reg.creds().map(|(u, p)| format!("{u}:{p}"));
    let mut args = vec![
        "copy",
        "--quiet",
        "--preserve-digests",
        "--dest-tls-verify=true",
        "--dest-cert-dir",
        cert_dir.to_str().unwrap(),
    ];
    if let Some(c) = &creds {
        args.extend(["--dest-creds", c.as_str()]);
    }
    args.extend([oci.as_str(), dest.as_str()]);
    let out = skopeo(&args);
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TLS registry signed by `ca` (client certificates from `ca` required when `mtls`),
/// holding `img` as `repo_tag`.
pub fn tls_registry(ca: &TestCa, mtls: bool, img: &BuiltImage, repo_tag: &str) -> Registry {
    let server = ca.server();
    let reg = Registry::with_tls(
        RegistryAuth::Anonymous,
        RegistryTls {
            cert_pem: server.cert_pem,
            key_pem: server.key_pem,
            client_ca_pem: mtls.then(|| ca.cert_pem()),
        },
    );
    let push_dir = tempfile::tempdir().unwrap();
    ca.write_cert(&push_dir.path().join("ca.crt"));
    ca.client("pusher").write_pair(push_dir.path(), "client");
    push_tls(img, &reg, repo_tag, push_dir.path());
    reg
}
