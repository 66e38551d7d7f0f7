//! Table tests for docker's Entrypoint/Cmd, env, workdir rules and the generated spec.

use super::*;
use crate::launcher::{Tmpfs, Volume};

fn cfg(entry: Option<&[&str]>, cmd: Option<&[&str]>) -> ContainerConfig {
    let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    ContainerConfig {
        entrypoint: entry.map(v),
        cmd: cmd.map(v),
        ..Default::default()
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn entrypoint_cmd_rules() {
    type Case<'a> = (
        Option<&'a [&'a str]>, // image Entrypoint
        Option<&'a [&'a str]>, // image Cmd
        Option<&'a [&'a str]>, // --entrypoint
        &'a [&'a str],         // args
        Option<&'a [&'a str]>, // expected argv (None: NoCommand)
    );
    let cases: &[Case] = &[
        (None, Some(&["sh"]), None, &[], Some(&["sh"])),
        (
            None,
            Some(&["sh"]),
            None,
            &["ls", "-l"],
            Some(&["ls", "-l"]),
        ),
        (
            Some(&["echo", "e"]),
            Some(&["c"]),
            None,
            &[],
            Some(&["echo", "e", "c"]),
        ),
        (
            Some(&["echo", "e"]),
            Some(&["c"]),
            None,
            &["a"],
            Some(&["echo", "e", "a"]),
        ),
        (Some(&["echo"]), None, None, &[], Some(&["echo"])),
        // --entrypoint drops the image Cmd
        (
            Some(&["echo"]),
            Some(&["c"]),
            Some(&["cat"]),
            &[],
            Some(&["cat"]),
        ),
        (
            Some(&["echo"]),
            Some(&["c"]),
            Some(&["cat"]),
            &["f"],
            Some(&["cat", "f"]),
        ),
        // empty --entrypoint resets it
        (
            Some(&["echo"]),
            Some(&["c"]),
            Some(&[""]),
            &["ls"],
            Some(&["ls"]),
        ),
        (
            Some(&["echo"]),
            Some(&["c"]),
            Some(&[]),
            &["ls"],
            Some(&["ls"]),
        ),
        (Some(&["echo"]), Some(&["c"]), Some(&[""]), &[], None),
        (None, None, None, &[], None),
        (Some(&[]), Some(&[]), None, &[], None),
    ];
    for (i, (entry, cmd, over, args, want)) in cases.iter().enumerate() {
        let image = cfg(*entry, *cmd);
        let opts = RunOptions {
            entrypoint: over.map(strs),
            args: strs(args),
            ..Default::default()
        };
        let got = process_args(Some(&image), &opts);
        match want {
            Some(w) => assert_eq!(got.unwrap(), strs(w), "case {i}"),
            None => assert!(matches!(got, Err(Error::NoCommand)), "case {i}: {got:?}"),
        }
    }
}

#[test]
fn env_rules() {
    type Case<'a> = (
        &'a [&'a str],
        &'a [&'a str],
        bool,
        Option<&'a str>,
        &'a [&'a str],
    );
    let p = format!("PATH={DEFAULT_PATH}");
    let cases: &[Case] = &[
        (&[], &[], false, None, &[&p, "HOSTNAME=h"]),
        (&[], &[], true, None, &[&p, "HOSTNAME=h", "TERM=xterm"]),
        (&["PATH=/x"], &[], false, None, &["PATH=/x", "HOSTNAME=h"]),
        (
            &["A=1", "B=2"],
            &["B=3", "C=4"],
            false,
            Some("/root"),
            &[&p, "HOSTNAME=h", "A=1", "B=3", "C=4", "HOME=/root"],
        ),
        (
            &["HOME=/img"],
            &[],
            false,
            Some("/root"),
            &[&p, "HOSTNAME=h", "HOME=/img"],
        ),
        (
            &[],
            &["TERM=dumb", "X=1", "X=2"],
            true,
            None,
            &[&p, "HOSTNAME=h", "TERM=dumb", "X=2"],
        ),
        (
            &[],
            &["PATH=/u", "EMPTY="],
            false,
            None,
            &["PATH=/u", "HOSTNAME=h", "EMPTY="],
        ),
    ];
    for (i, (image, user, tty, home, want)) in cases.iter().enumerate() {
        let got = merge_env(&strs(image), &strs(user), "h", *tty, *home);
        assert_eq!(got, strs(want), "case {i}");
    }
}

#[test]
fn workdir_rules() {
    let mut image = cfg(None, Some(&["sh"]));
    let opts = RunOptions::default();
    assert_eq!(working_dir(Some(&image), &opts).unwrap(), "/");
    image.working_dir = Some("/srv".into());
    assert_eq!(working_dir(Some(&image), &opts).unwrap(), "/srv");
    image.working_dir = Some("app".into());
    assert_eq!(working_dir(Some(&image), &opts).unwrap(), "/app");
    let w = RunOptions {
        workdir: Some("/tmp".into()),
        ..Default::default()
    };
    assert_eq!(working_dir(Some(&image), &w).unwrap(), "/tmp");
    let bad = RunOptions {
        workdir: Some("tmp".into()),
        ..Default::default()
    };
    assert!(working_dir(None, &bad).is_err());
}

#[test]
fn rlimit_clamping() {
    assert_eq!(clamp_rlimit(1024, 4096, 2048), (1024, 2048));
    assert_eq!(clamp_rlimit(4096, 4096, 2048), (2048, 2048));
    assert_eq!(clamp_rlimit(10, 20, u64::MAX), (10, 20));
    let limits = rlimits(&[]).unwrap();
    assert_eq!(limits.len(), 1);
    let nofile = &limits[0];
    assert_eq!(nofile.typ(), PosixRlimitType::RlimitNofile);
    assert!(nofile.hard() <= current_hard_limit(libc::RLIMIT_NOFILE));
    assert!(nofile.soft() <= nofile.hard());
    let huge = Ulimit {
        name: "nproc".into(),
        soft: u64::MAX,
        hard: u64::MAX,
    };
    let limits = rlimits(&[huge]).unwrap();
    let nproc = limits
        .iter()
        .find(|r| r.typ() == PosixRlimitType::RlimitNproc)
        .unwrap();
    assert!(nproc.hard() <= current_hard_limit(libc::RLIMIT_NPROC));
}

#[test]
fn hosts_content() {
    let h = hosts_file(Network::None, "box", None);
    assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
    assert!(h.ends_with("127.0.0.1\tbox\n"));
    let h = hosts_file(Network::Host, "box", Some("10.0.0.1 box other"));
    assert_eq!(h, "10.0.0.1 box other");
    let h = hosts_file(Network::Host, "box", Some("127.0.0.1 localhost # box"));
    assert_eq!(h, "127.0.0.1 localhost # box\n127.0.0.1\tbox\n");
}

#[test]
fn spec_shape() {
    let rootfs = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(rootfs.path().join("etc")).unwrap();
    std::fs::write(
        rootfs.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        rootfs.path().join("etc/group"),
        "app:x:1000:\nextra:x:2000:app\n",
    )
    .unwrap();
    let cdir = tempfile::tempdir().unwrap();
    let image = ImageConfig {
        config: Some(ContainerConfig {
            cmd: Some(strs(&["sh"])),
            env: Some(strs(&["A=1"])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let opts = RunOptions {
        user: Some("app".into()),
        network: Network::None,
        read_only: true,
        volumes: vec![Volume {
            host: cdir.path().join("vol"),
            container: "/data".into(),
            read_only: true,
        }],
        tmpfs: vec![Tmpfs {
            path: "/dev/shm".into(),
            options: vec!["size=1m".into()],
        }],
        ..Default::default()
    };
    let id = "0123456789abcdef".repeat(4);
    let inp = BundleInputs {
        id: &id,
        rootfs: rootfs.path(),
        image: &image,
        options: &opts,
        container_dir: cdir.path(),
    };
    let (bundle, _) = write_bundle(&inp).unwrap();
    let spec: Spec =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(spec.hostname().as_deref(), Some("0123456789ab"));
    let root = spec.root().as_ref().unwrap();
    assert_eq!(root.readonly(), Some(true));
    let process = spec.process().as_ref().unwrap();
    assert_eq!(process.user().uid(), 1000);
    assert_eq!(
        process.user().additional_gids().as_deref(),
        Some(&[2000][..])
    );
    let env = process.env().clone().unwrap();
    assert!(env.contains(&"A=1".to_string()));
    assert!(env.contains(&"HOME=/home/app".to_string()));
    let caps = process.capabilities().as_ref().unwrap();
    assert_eq!(caps.bounding().as_ref().unwrap().len(), 14);
    assert!(!caps
        .bounding()
        .as_ref()
        .unwrap()
        .contains(&Capability::SysAdmin));
    let linux = spec.linux().as_ref().unwrap();
    let ns: Vec<_> = linux
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| n.typ())
        .collect();
    assert!(ns.contains(&LinuxNamespaceType::Network));
    assert!(!ns.contains(&LinuxNamespaceType::Cgroup));
    assert!(linux
        .masked_paths()
        .as_ref()
        .unwrap()
        .contains(&"/proc/kcore".to_string()));
    let mounts = spec.mounts().as_ref().unwrap();
    let dests: Vec<_> = mounts.iter().map(|m| m.destination().clone()).collect();
    for d in [
        "/proc",
        "/dev",
        "/dev/pts",
        "/sys",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/data",
    ] {
        assert!(dests.contains(&PathBuf::from(d)), "{d} missing");
    }
    let shm: Vec<_> = mounts
        .iter()
        .filter(|m| m.destination() == Path::new("/dev/shm"))
        .collect();
    assert_eq!(shm.len(), 1, "--tmpfs /dev/shm replaces the default");
    let data = mounts
        .iter()
        .find(|m| m.destination() == Path::new("/data"))
        .unwrap();
    assert!(data.options().as_ref().unwrap().contains(&"ro".to_string()));
    assert!(cdir.path().join("vol").is_dir(), "volume source created");
    assert!(cdir.path().join("hosts").is_file());
    assert_eq!(
        std::fs::read_to_string(cdir.path().join("hostname")).unwrap(),
        "0123456789ab\n"
    );
}
