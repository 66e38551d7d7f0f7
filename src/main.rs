use clap::Parser;

fn main() {
    let cli = strata::cli::Cli::parse();
    let filter = if cli.debug {
        "debug".to_string()
    } else {
        std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,fuser=error".into())
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
