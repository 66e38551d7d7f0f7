use clap::Parser;

/// Installed as `fuse-overlayfs` or `strata-overlay` (a symlink; mount.fuse3 runs the
/// latter for `-t fuse.strata-overlay`), act as `strata overlay ...`.
fn args() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let base = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|b| b.to_os_string());
    if base.is_some_and(|b| b == "fuse-overlayfs" || b == "strata-overlay") {
        args[0] = "strata".into();
        args.insert(1, "overlay".into());
    }
    args
}

fn main() {
    // What strata writes (store, cache, container dirs, logs) is never group- or
    // world-writable, whatever umask the caller had (a stricter one is kept). Modes inside a
    // container's upper are set explicitly with chmod and do not depend on it.
    {
        use nix::sys::stat::{umask, Mode};
        let old = umask(Mode::from_bits_truncate(0o022));
        umask(old | Mode::from_bits_truncate(0o022));
    }
    let cli = strata::cli::Cli::parse_from(args());
    let filter = if cli.debug {
        "debug".to_string()
    } else {
        std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,fuser=error,fuser::reply=off".into())
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    std::panic::set_hook(Box::new(|info| {
        tracing::error!("panic: {info}");
        eprintln!("strata: internal error: {info}");
    }));
    match strata::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let code = e.exit_code();
            let e = anyhow::Error::from(e);
            eprintln!("Error: {e:#}");
            std::process::exit(code);
        }
    }
}
