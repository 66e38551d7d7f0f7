//! `skopeo` wrappers: copy images between OCI layouts and registries over plain http, with
//! the signature policy off and no ambient credentials (`REGISTRY_AUTH_FILE` points nowhere).

use std::process::{Command, Output};

use super::registry::Registry;

/// Run skopeo with `args` (policy check off); panics if it cannot be started.
pub fn skopeo(args: &[&str]) -> Output {
    Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .env("REGISTRY_AUTH_FILE", "/nonexistent/strata-test-auth.json")
        .output()
        .expect("run skopeo")
}

/// `skopeo copy` with plain-http registries on both sides; panics with skopeo's output on
/// failure. `src_creds`/`dest_creds` are "user:pass".
pub fn skopeo_copy(
    src: &str,
    dest: &str,
    src_creds: Option<&str>,
    dest_creds: Option<&str>,
    extra: &[&str],
) -> Output {
    let mut args = vec![
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
    ];
    if let Some(c) = src_creds {
        args.extend(["--src-creds", c]);
    }
    if let Some(c) = dest_creds {
        args.extend(["--dest-creds", c]);
    }
    args.extend_from_slice(extra);
    args.push(src);
    args.push(dest);
    let out = skopeo(&args);
    assert!(
        out.status.success(),
        "skopeo {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub(crate) fn push_oci(src: &str, registry: &Registry, repo_tag: &str, all: bool) {
    let creds = registry.creds().map(|(u, p)| format!("{u}:{p}"));
    let dest = format!("docker://{}/{}", registry.host(), repo_tag);
    let mut extra = vec!["--preserve-digests"];
    if all {
        extra.push("--all");
    }
    skopeo_copy(src, &dest, None, creds.as_deref(), &extra);
}
