//! Peer Stream desktop app. The media engine and the window land in later milestones;
//! for now the binary parses its future command line and checks the server is reachable
//! by name, so packaging and CI already build it on every platform.

use clap::Parser;

/// Meet a random stranger over peer-to-peer video.
#[derive(Debug, Parser)]
#[command(name = "peer-stream", version, about)]
struct Args {
    /// Signaling server WebSocket URL.
    #[arg(long, env = "PEER_STREAM_SERVER", default_value = "ws://127.0.0.1:3000/ws")]
    server: String,
    /// Run without a window (bot mode for tests and demos).
    #[arg(long)]
    headless: bool,
    /// Use a synthetic test pattern and tone instead of camera and microphone.
    #[arg(long)]
    fake_media: bool,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    tracing::info!(
        server = %args.server,
        headless = args.headless,
        fake_media = args.fake_media,
        protocol = peer_stream_shared::PROTOCOL_VERSION,
        "peer-stream desktop app: the call window is not built yet; run the server with `make run`"
    );
    Ok(())
}
