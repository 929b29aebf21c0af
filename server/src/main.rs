//! The `peer-stream-server` binary: the server (no subcommand), `config` (the effective
//! settings) and the moderation commands `reports list`, `bans list|add|remove`.

mod cli;

use anyhow::Context;
use cli::Cmd;
use peer_stream_server::{run, shutdown, Config};
use std::io::Write;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let parsed = match cli::parse(std::env::args_os().collect()) {
        Ok(p) => p,
        Err(message) => {
            let _ = writeln!(std::io::stderr().lock(), "error: {message}");
            return ExitCode::from(2);
        }
    };
    let result = match &parsed.cli.command {
        None => serve(parsed.cli.server),
        Some(Cmd::ShowConfig) => {
            let text = cli::show::render(&parsed, &cli::command());
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .context("writing to standard output")
        }
        Some(Cmd::Reports(cmd)) => cli::moderate::reports(cmd, &parsed.cli.server),
        Some(Cmd::Bans(cmd)) => cli::moderate::bans(cmd, &parsed.cli.server),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.log)
        .with_context(|| format!("invalid --log filter {:?}", config.log))?;
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        run(listener, config, shutdown::signal()).await
    })
}
