//! `strata overlay`: a fuse-overlayfs-compatible union of plain directories (issue 9).
//!
//! `strata overlay -o lowerdir=L1:L2,upperdir=U,workdir=W MOUNTPOINT` takes fuse-overlayfs's
//! option syntax (leftmost lowerdir on top, as overlayfs; `-o` repeatable; `[SOURCE]
//! MOUNTPOINT` as `/sbin/mount.fuse3` passes them), so it can be podman's `mount_program`
//! through a symlink named `fuse-overlayfs` or `strata-overlay` (`main.rs` rewrites that
//! argv[0] to `strata overlay`). Without `-f` it starts itself in the foreground in a new
//! session and returns once the mount is ready, like fuse-overlayfs. Parses and checks the
//! options here; the union is assembled and mounted by `mount::overlay`. Calls `mount` and
//! `fuse` (mount options); nothing else.

use super::{Ctx, Error};
use crate::fuse::{IdMap, MountOptions};
use std::io::{BufRead, BufReader, Read, Seek};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Environment variable asking a foreground overlay daemon to print `ready` on stdout.
const NOTIFY_ENV: &str = "STRATA_OVERLAY_NOTIFY";
/// Program name in messages (fuse-overlayfs prefixes its messages the same way).
const PROG: &str = "strata-overlay";

#[derive(clap::Args, Debug, Clone)]
pub struct OverlayArgs {
    /// Mount options (repeatable, comma separated): lowerdir=L1:L2:... (leftmost on top),
    /// upperdir=DIR, workdir=DIR, uidmapping=S:H:N[:...], gidmapping=..., squash_to_root,
    /// squash_to_uid=N, squash_to_gid=N, passthrough, ro; fuse-overlayfs's other options are
    /// accepted (unknown ones are ignored with a note)
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Stay in the foreground serving the mount
    #[arg(short = 'f', long)]
    pub foreground: bool,
    /// Foreground with debug logging (as fuse-overlayfs -d)
    #[arg(short = 'd')]
    pub fuse_debug: bool,
    /// Also use FUSE passthrough for directory-lower files on read-only unions (upper files use
    /// it by default where the kernel allows it)
    #[arg(long)]
    pub passthrough: bool,
    /// [SOURCE] MOUNTPOINT (mount.fuse3 passes a source first; it names the mount)
    /// (missing: "no mountpoint specified", exit status 1, as fuse-overlayfs)
    #[arg(num_args = 0..=2, value_name = "MOUNTPOINT")]
    pub paths: Vec<PathBuf>,
}

/// The parsed `-o` options.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct OverlayConfig {
    /// Lower directories, top first (as given).
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    pub ids: IdMap,
    pub passthrough: bool,
    pub read_only: bool,
    pub nodev_nosuid: bool,
    /// Options accepted without effect (reported only with -d).
    pub accepted: Vec<String>,
    /// Unknown options, ignored with a note.
    pub unknown: Vec<String>,
}

/// Options fuse-overlayfs (or mount(8) / podman) pass that need nothing from us.
const ACCEPTED: &[&str] = &[
    "noacl",
    "fsync",
    "static_nlink",
    "xino",
    "fast_ino",
    "timeout",
    "threaded",
    "writeback",
    "volatile",
    "debug",
    "noxattrs",
    "xattr_permissions",
    "plugins",
    "default_permissions",
    "allow_other",
    "allow_root",
    "rw",
    "dev",
    "suid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
    "lazytime",
    "nolazytime",
    "async",
    "sync",
    "dirsync",
    "context",
    "fscontext",
    "defcontext",
    "rootcontext",
    "redirect_dir",
    "index",
    "metacopy",
    "userxattr",
    "nfs_export",
    "max_read",
    "auto_unmount",
];

/// Split one `-o` argument on commas outside double quotes (SELinux `context="a,b"`).
fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in s.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                cur.push(ch);
            }
            ',' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(ch),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn usage(msg: impl std::fmt::Display) -> Error {
    Error::Usage(format!("{PROG}: {msg}"))
}

/// Parse every `-o` value (later options override earlier ones, as with mount(8)).
pub fn parse_options(opts: &[String]) -> Result<OverlayConfig, Error> {
    let mut c = OverlayConfig::default();
    for arg in opts {
        for o in split_options(arg) {
            let (key, val) = match o.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (o.as_str(), None),
            };
            let need = |v: Option<&str>| {
                v.filter(|v| !v.is_empty())
                    .map(str::to_string)
                    .ok_or_else(|| usage(format!("option {key} needs a value")))
            };
            match key {
                "lowerdir" => {
                    c.lowers = need(val)?
                        .split(':')
                        .filter(|p| !p.is_empty())
                        .map(PathBuf::from)
                        .collect();
                }
                "upperdir" => c.upper = Some(PathBuf::from(need(val)?)),
                "workdir" => c.work = Some(PathBuf::from(need(val)?)),
                "uidmapping" => {
                    c.ids.uids = IdMap::parse_ranges(&need(val)?)
                        .map_err(|e| usage(format!("{key}: {e}")))?;
                }
                "gidmapping" => {
                    c.ids.gids = IdMap::parse_ranges(&need(val)?)
                        .map_err(|e| usage(format!("{key}: {e}")))?;
                }
                "squash_to_root" => {
                    c.ids.squash_uid = Some(0);
                    c.ids.squash_gid = Some(0);
                }
                "squash_to_uid" | "squash_to_gid" => {
                    let v = need(val)?;
                    let n: u32 = v
                        .parse()
                        .map_err(|_| usage(format!("{key}: {v:?} is not a number")))?;
                    if key == "squash_to_uid" {
                        c.ids.squash_uid = Some(n);
                    } else {
                        c.ids.squash_gid = Some(n);
                    }
                }
                "passthrough" => c.passthrough = true,
                "ro" => c.read_only = true,
                "nodev" | "nosuid" => {
                    c.nodev_nosuid = true;
                    c.accepted.push(o.clone());
                }
                k if ACCEPTED.contains(&k) => c.accepted.push(o.clone()),
                _ => c.unknown.push(o.clone()),
            }
        }
    }
    Ok(c)
}

fn resolve(p: &Path, what: &str) -> Result<PathBuf, Error> {
    std::fs::canonicalize(p)
        .map_err(|e| usage(format!("cannot resolve {what} {}: {e}", p.display())))
}

/// Checked paths: lowers bottom first, (upper, work), mountpoint.
struct Checked {
    lowers: Vec<PathBuf>,
    upper: Option<(PathBuf, PathBuf)>,
    mountpoint: PathBuf,
}

/// The checks fuse-overlayfs makes, with its wording where it has one.
fn check(c: &OverlayConfig, mountpoint: &Path) -> Result<Checked, Error> {
    if c.lowers.is_empty() {
        return Err(usage("no lowerdir specified"));
    }
    let upper = match (&c.upper, &c.work) {
        (Some(_), None) => return Err(usage("workdir not specified")),
        (None, _) => None,
        (Some(u), Some(w)) => {
            let u = resolve(u, "upperdir")?;
            let w = resolve(w, "workdir")?;
            for (p, what) in [(&u, "upperdir"), (&w, "workdir")] {
                if !p.is_dir() {
                    return Err(usage(format!("{what} {} is not a directory", p.display())));
                }
            }
            let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
            if dev(&u) != dev(&w) {
                return Err(usage(format!(
                    "upperdir {} and workdir {} must be on the same file system",
                    u.display(),
                    w.display()
                )));
            }
            if u.starts_with(&w) || w.starts_with(&u) {
                return Err(usage("upperdir and workdir must not contain each other"));
            }
            Some((u, w))
        }
    };
    let mut lowers = Vec::new();
    for l in c.lowers.iter().rev() {
        let p = resolve(l, "lowerdir")?;
        if !p.is_dir() {
            return Err(usage(format!(
                "lowerdir {} is not a directory",
                p.display()
            )));
        }
        lowers.push(p);
    }
    let mountpoint = resolve(mountpoint, "mountpoint")?;
    if !mountpoint.is_dir() {
        return Err(usage(format!(
            "mountpoint {} is not a directory",
            mountpoint.display()
        )));
    }
    Ok(Checked {
        lowers,
        upper,
        mountpoint,
    })
}

/// `strata overlay`.
pub async fn overlay(ctx: &Ctx, args: OverlayArgs) -> Result<i32, Error> {
    let c = parse_options(&args.options)?;
    for u in &c.unknown {
        eprintln!("{PROG}: unknown option ignored: {u}");
    }
    let (source, mp) = match args.paths.as_slice() {
        [mp] => (None, mp.clone()),
        [src, mp] => (Some(src.to_string_lossy().into_owned()), mp.clone()),
        [] => return Err(usage("no mountpoint specified")),
        _ => return Err(usage("expected [SOURCE] MOUNTPOINT")),
    };
    if c.work.is_some() && c.upper.is_none() {
        // Kernel overlayfs and fuse-overlayfs both mount read-only and ignore the workdir.
        eprintln!("{PROG}: workdir without upperdir is ignored: mounting read-only");
    }
    let checked = check(&c, &mp)?;
    if !(args.foreground || args.fuse_debug) {
        return daemonize(ctx, &args);
    }
    serve(c, checked, source, args.passthrough).await
}

/// Re-run ourselves with `-f` in a new session; return when it prints `ready`.
fn daemonize(ctx: &Ctx, args: &OverlayArgs) -> Result<i32, Error> {
    use std::os::unix::process::CommandExt;
    let io = |context: &str| {
        let context = context.to_string();
        move |source| Error::Io { context, source }
    };
    let exe = std::env::current_exe().map_err(io("locating strata"))?;
    // stderr goes to an unlinked temporary file, so a chatty daemon can never block on a
    // pipe nobody reads and callers that wait for EOF (podman) are not held up.
    let mut errf = tempfile::tempfile().map_err(io("temporary file"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--root")
        .arg(ctx.store.root())
        .arg("overlay")
        .arg("-f");
    for o in &args.options {
        cmd.arg("-o").arg(o);
    }
    if args.passthrough {
        cmd.arg("--passthrough");
    }
    cmd.args(&args.paths)
        .env(NOTIFY_ENV, "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(errf.try_clone().map_err(io("temporary file"))?);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(io("starting overlay daemon"))?;
    let Some(out) = child.stdout.take() else {
        return Err(usage("overlay daemon has no stdout"));
    };
    for line in BufReader::new(out).lines() {
        if line.map_err(io("overlay daemon"))?.starts_with("ready") {
            return Ok(0);
        }
    }
    let status = child.wait().map_err(io("overlay daemon"))?;
    let mut msg = String::new();
    let _ = errf.rewind();
    let _ = errf.read_to_string(&mut msg);
    let msg = msg.trim();
    if msg.is_empty() {
        Err(usage(format!("mount failed ({status})")))
    } else {
        // The daemon's own message already names the program.
        Err(Error::Usage(msg.trim_start_matches("Error: ").to_string()))
    }
}

async fn serve(
    c: OverlayConfig,
    checked: Checked,
    source: Option<String>,
    passthrough_flag: bool,
) -> Result<i32, Error> {
    let read_only = c.read_only || checked.upper.is_none();
    let opts = MountOptions {
        passthrough: c.passthrough || passthrough_flag,
        read_only,
        dev_suid: !c.nodev_nosuid,
        fsname: source.unwrap_or_else(|| PROG.to_string()),
        ids: c.ids.clone(),
        ..MountOptions::default()
    };
    let handle = crate::mount::overlay::mount_dirs(
        checked.lowers.clone(),
        checked.upper.clone(),
        &checked.mountpoint,
        opts,
    )
    .await
    .map_err(|e| usage(crate::report::chain(&e)))?;
    tracing::info!(mountpoint = %checked.mountpoint.display(), passthrough = handle.passthrough_active(), "overlay ready");
    // Do not keep a directory of the caller busy.
    let _ = std::env::set_current_dir("/");
    if std::env::var_os(NOTIFY_ENV).is_some() {
        println!("ready");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        detach_stdio();
    }
    wait_unmounted(handle, &checked.mountpoint).await;
    Ok(0)
}

/// Point stdout and stderr at /dev/null once the starter has gone.
fn detach_stdio() {
    use std::os::fd::AsRawFd;
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        for fd in [1, 2] {
            // SAFETY: dup2 onto the process's own stdio descriptors; `null` stays open for
            // the call and the old descriptions are closed by the kernel.
            unsafe {
                libc::dup2(null.as_raw_fd(), fd);
            }
        }
    }
}

/// Serve until the file system is unmounted (umount, fusermount3 -u) or SIGTERM/SIGINT
/// arrive (then unmount it ourselves).
async fn wait_unmounted(handle: crate::fuse::MountHandle, mp: &Path) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut join = tokio::task::spawn_blocking(move || handle.join());
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        let _ = join.await;
        return;
    };
    tokio::select! {
        r = &mut join => {
            if let Ok(Err(e)) = r {
                tracing::warn!(error = %e, "overlay session ended with an error");
            }
            return;
        }
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    if nix::mount::umount(mp).is_err() {
        let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = join.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_as_podman_passes_them() {
        let c = parse_options(&[
            "lowerdir=l/A:l/B,upperdir=/u,workdir=/w,fsync=0".into(),
            "uidmapping=0:1000:1:1:100000:65536,gidmapping=0:1000:65537".into(),
            "context=\"system_u:object_r:container_file_t:s0:c1,c2\",noacl,bogus=1".into(),
        ])
        .unwrap();
        assert_eq!(c.lowers, vec![PathBuf::from("l/A"), PathBuf::from("l/B")]);
        assert_eq!(c.upper.as_deref(), Some(Path::new("/u")));
        assert_eq!(c.work.as_deref(), Some(Path::new("/w")));
        assert_eq!(c.ids.uids.len(), 2);
        assert_eq!(c.ids.uid_shown(0), 1000);
        assert_eq!(c.ids.uid_shown(5), 100004);
        assert_eq!(c.ids.uid_shown(70000), crate::fuse::OVERFLOW_ID);
        assert_eq!(c.ids.uid_stored(1000), 0);
        assert_eq!(c.ids.gid_shown(65536), 66536);
        assert_eq!(c.unknown, vec!["bogus=1".to_string()]);
        assert!(c.accepted.iter().any(|a| a.starts_with("context=")));
        assert!(parse_options(&["uidmapping=0:1".into()]).is_err());
        let s = parse_options(&["squash_to_root,squash_to_uid=7".into()]).unwrap();
        assert_eq!((s.ids.uid_shown(3), s.ids.gid_shown(3)), (7, 0));
    }

    #[test]
    fn bad_input_is_refused_with_clear_messages() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let msg = |o: &str| match check(&parse_options(&[o.into()]).unwrap(), d) {
            Err(e) => e.to_string(),
            Ok(_) => "ok".into(),
        };
        assert_eq!(msg("upperdir=/x"), "strata-overlay: no lowerdir specified");
        let l = d.display();
        assert_eq!(
            msg(&format!("lowerdir={l},upperdir={l}")),
            "strata-overlay: workdir not specified"
        );
        assert!(msg(&format!("lowerdir={l}/nope")).contains("cannot resolve lowerdir"));
        // As kernel overlayfs and fuse-overlayfs: a workdir alone is ignored (read-only mount).
        assert_eq!(msg(&format!("lowerdir={l},workdir={l}")), "ok");
        assert_eq!(msg(&format!("lowerdir={l}")), "ok");
        std::fs::create_dir(d.join("u")).unwrap();
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        let m = msg(&format!(
            "lowerdir={l},upperdir={l}/u,workdir={}",
            shm.path().display()
        ));
        assert!(m.contains("same file system"), "{m}");
    }
}
