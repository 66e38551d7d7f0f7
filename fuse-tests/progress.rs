//! Progress bars of `run` and `cache fetch` (issue 19): drawn on a terminal (a pty from
//! util-linux `script`), nothing but plain lines when stderr is not a terminal. Real
//! registry, real daemon and runc.

mod common;

use common::{busybox_image, Layer, OutputExt, Registry, StrataEnv};
use std::process::Command;

fn push(reg: &Registry, repo_tag: &str) -> String {
    // A few MB so the whole-layer download is not instant.
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    busybox_image()
        .layer(Layer::new().file("data/blob", data))
        .build("v1")
        .push(reg, repo_tag);
    format!("{}/{repo_tag}", reg.host())
}

fn has_control(s: &str) -> bool {
    s.contains('\x1b') || s.contains('\r')
}

#[test]
fn quiet_without_a_terminal() {
    let reg = Registry::start();
    let reference = push(&reg, "progress/plain:v1");
    let env = StrataEnv::new();
    let out = env.run(&["run", "--rm", &reference, "true"]);
    out.assert_success();
    assert!(!has_control(&out.stderr_str()), "{:?}", out.stderr_str());
    let env = StrataEnv::new();
    let out = env.run(&["cache", "fetch", &reference]);
    out.assert_success();
    assert!(!has_control(&out.stderr_str()), "{:?}", out.stderr_str());
    assert!(!has_control(&out.stdout_str()), "{:?}", out.stdout_str());
    assert!(out.stdout_str().contains("fetched"), "{}", out.stdout_str());
}

#[test]
fn a_bar_on_a_terminal() {
    let reg = Registry::start();
    let reference = push(&reg, "progress/tty:v1");
    let env = StrataEnv::new();
    let base = env.command(&["cache", "fetch", &reference]);
    let bin = base.get_program().to_string_lossy().into_owned();
    let mut cmd = Command::new("script");
    cmd.args([
        "-qec",
        &format!("{bin} cache fetch {reference}"),
        "/dev/null",
    ]);
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd.output().expect("script (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    // The cache bar ends at the image's full size.
    assert!(
        text.contains("fetching") || text.contains("fetched ["),
        "{text:?}"
    );
    assert!(text.contains("] "), "{text:?}");
}
