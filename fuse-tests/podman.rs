//! podman with strata as its overlay `mount_program` (issue 9): `scripts/podman-overlay.sh`
//! loads a busybox image into a throwaway containers-storage root and runs containers through
//! podman (Debian 4.3, runc, cgroupfs), with strata symlinked as `fuse-overlayfs`. The script
//! checks the container output, that the root is a strata FUSE mount, that writes land in the
//! container's upper in overlay format (a deleted image file is a 0/0 whiteout there) and that
//! the image layer stays untouched. podman and runc come from `scripts/install-deps.sh`.

use std::process::Command;

#[test]
fn podman_runs_containers_with_strata_as_mount_program() {
    let out = Command::new("scripts/podman-overlay.sh")
        .arg(env!("CARGO_BIN_EXE_strata"))
        .output()
        .expect("run scripts/podman-overlay.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "podman-overlay.sh failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    // The script's last line is printed only after every step passed.
    assert!(stdout.contains("podman + strata overlay: OK"), "{stdout}");
}
