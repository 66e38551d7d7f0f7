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

/// A `println!`/`eprintln!` that failed because the reader went away (`strata images | head
/// -1`): Rust ignores SIGPIPE, so the write fails with EPIPE and the print macros panic.
fn closed_pipe(info: &std::panic::PanicHookInfo<'_>) -> bool {
    let msg = info
        .payload()
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| info.payload().downcast_ref::<&str>().copied())
        .unwrap_or_default();
    msg.starts_with("failed printing to std") && msg.contains("Broken pipe")
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
    let args = strata::cli::aliases::expand(args());
    let cli = match strata::cli::Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ if strata::cli::aliases::is_run_command(&args) => 125,
                _ => e.exit_code(),
            };
            std::process::exit(code);
        }
    };
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
        if closed_pipe(info) {
            strata::cli::end_by_sigpipe();
        }
        tracing::error!("panic: {info}");
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "strata: internal error: {info}");
    }));
    match strata::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let code = e.exit_code();
            let e = anyhow::Error::from(e);
            // The cause chain, each cause once: many errors already print their source in
            // their own message (and name it as `source()` too).
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg = format!("{msg}: {c}");
                }
            }
            eprintln!("Error: {msg}");
            std::process::exit(code);
        }
    }
}
