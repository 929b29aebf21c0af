//! `peer-stream`: the desktop app, or with `--headless` a bot peer without a window.

use anyhow::Context;
use clap::Parser;
use peer_stream::engine::EngineConfig;
use peer_stream::headless::{self, HeadlessOptions};
use peer_stream::media::capture::{AudioChoice, VideoChoice};
use peer_stream::media::codec::video::VideoCodecChoice;
use peer_stream::media::playback::SinkChoice;
use peer_stream::net::peer::IcePolicy;
use std::io::Write;
use std::time::Duration;

/// Meet a random stranger over peer-to-peer video.
#[derive(Debug, Parser)]
#[command(name = "peer-stream", version, about)]
struct Args {
    /// Signaling server WebSocket URL. The desktop app defaults to its built-in server.
    #[arg(
        long,
        env = "PEER_STREAM_SERVER",
        default_value = "ws://127.0.0.1:3000/ws"
    )]
    server: String,
    #[arg(skip)]
    server_given: bool,
    /// Run without a window: a bot that meets strangers and prints a JSON summary at exit.
    #[arg(long)]
    headless: bool,
    /// Check this setup without a window (server, devices, what the network allows) and
    /// print one JSON line; exit 0 when calls can connect (`can_call` direct or relay).
    /// Uses --server, else the app's saved server, else its built-in server.
    #[arg(long, conflicts_with = "headless")]
    check: bool,
    /// Use a synthetic moving test pattern and a tone instead of camera and microphone
    /// (chosen automatically when no device exists).
    #[arg(long)]
    fake_media: bool,
    /// Interests to be matched on, comma-separated.
    #[arg(long, value_delimiter = ',')]
    interests: Vec<String>,
    /// Headless: skip to the next stranger this many seconds after a call goes live.
    #[arg(long, value_name = "SECS")]
    next_after: Option<f64>,
    /// Headless: exit after this many seconds.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Headless: what to say to every new stranger.
    #[arg(long, default_value = "hello from a peer-stream bot")]
    say: String,
    /// Frequency of the synthetic tone, in Hz.
    #[arg(long, default_value_t = 440.0)]
    tone_hz: f32,
    /// Local UDP address for WebRTC host candidates (repeatable), e.g. 127.0.0.1:0.
    #[arg(long = "udp-addr")]
    udp_addrs: Vec<String>,
    /// Which network paths a call may use: `all` (direct when possible) or `relay` (only
    /// through the server's TURN relay, so the stranger never sees your IP address).
    #[arg(
        long,
        value_enum,
        default_value = "all",
        env = "PEER_STREAM_ICE_POLICY"
    )]
    ice_policy: IcePolicy,
    /// Which video codecs calls may use: `auto` (H.264 when the stranger has it, else
    /// VP8), `h264` or `vp8` (a stranger without it gets an audio-only call).
    #[arg(
        long,
        value_enum,
        default_value = "auto",
        env = "PEER_STREAM_VIDEO_CODEC"
    )]
    video_codec: VideoCodecChoice,
    /// Video bitrate in kbit/s.
    #[arg(long, default_value_t = 1000)]
    bitrate_kbps: u32,
    /// Do not search again by itself when a stranger leaves.
    #[arg(long)]
    no_auto_requeue: bool,
    /// Desktop: skip the home screen and start searching at once (kiosk use, tests).
    #[arg(long)]
    start: bool,
    /// Desktop: save a PNG of the window here once a call shows the stranger's video.
    #[arg(long, value_name = "PATH")]
    screenshot: Option<std::path::PathBuf>,
    /// Desktop, after --screenshot: press Next, save a PNG here while the Undo button
    /// counts down, then press Undo (docs and tests).
    #[arg(long, value_name = "PATH", requires = "screenshot")]
    screenshot_undo: Option<std::path::PathBuf>,
    /// Desktop: save a PNG here the first time a call says "Connection to the stranger
    /// lost — reconnecting…" (docs and tests).
    #[arg(long, value_name = "PATH")]
    screenshot_reconnecting: Option<std::path::PathBuf>,
    /// Desktop: save a PNG here a moment after the chat first says "Couldn't connect to
    /// this stranger — finding someone new" (docs and tests).
    #[arg(long, value_name = "PATH")]
    screenshot_gave_up: Option<std::path::PathBuf>,
    /// Desktop: open the "Check my setup" screen at start (the check runs at once).
    #[arg(long)]
    check_screen: bool,
    /// Log filter (tracing EnvFilter syntax); logs go to stderr.
    #[arg(long, env = "PEER_STREAM_LOG", default_value = "info")]
    log: String,
}

mod gui;

impl Args {
    fn gui_options(&self) -> gui::GuiOptions {
        gui::GuiOptions {
            server: self.server_given.then(|| self.server.clone()),
            fake_media: self.fake_media,
            interests: self.interests.clone(),
            start: self.start,
            duration: self.duration.map(Duration::from_secs_f64),
            screenshot: self.screenshot.clone(),
            screenshot_undo: self.screenshot_undo.clone(),
            screenshot_reconnecting: self.screenshot_reconnecting.clone(),
            screenshot_gave_up: self.screenshot_gave_up.clone(),
            check_screen: self.check_screen,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let matches = <Args as clap::CommandFactory>::command().get_matches();
    let mut args = <Args as clap::FromArgMatches>::from_arg_matches(&matches)?;
    // The desktop app uses its built-in server unless a server was named explicitly.
    args.server_given =
        matches.value_source("server") != Some(clap::parser::ValueSource::DefaultValue);
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .with_context(|| format!("invalid --log filter {:?}", args.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if args.check {
        return run_check(&args);
    }

    let mut engine = EngineConfig::new(args.server.clone());
    if args.fake_media {
        engine.video = VideoChoice::Synthetic;
        engine.audio_in = AudioChoice::Synthetic;
        engine.audio_out = SinkChoice::Null;
    }
    engine.tone_hz = args.tone_hz;
    engine.udp_addrs = args.udp_addrs.clone();
    engine.ice_policy = args.ice_policy;
    engine.video_codecs = args.video_codec.codecs();
    if engine.video_codecs.is_empty() {
        anyhow::bail!(
            "--video-codec {:?}: this build has no such codec (built without the `vp8` feature)",
            args.video_codec
        );
    }
    engine.video_settings.bitrate_bps = args.bitrate_kbps.saturating_mul(1000);
    engine.auto_requeue = !args.no_auto_requeue;

    if !args.headless {
        return gui::run(args.gui_options(), engine);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let opts = HeadlessOptions {
        engine,
        interests: args.interests.clone(),
        next_after: args.next_after.map(Duration::from_secs_f64),
        duration: args.duration.map(Duration::from_secs_f64),
        say: args.say.clone(),
    };
    let summary = runtime.block_on(headless::run(opts, shutdown_signal()));
    let json = serde_json::to_string(&summary).context("encoding the summary")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{json}").context("writing the summary")?;
    out.flush().ok();
    drop(out);
    runtime.shutdown_timeout(Duration::from_secs(2));
    if summary.success() {
        Ok(())
    } else {
        std::process::exit(1);
    }
}

/// `--check`: the report as one JSON line on stdout (also when the server is
/// unreachable); exit status 0 when calls can connect, 1 otherwise.
fn run_check(args: &Args) -> anyhow::Result<()> {
    let report = peer_stream::check::cli::run(peer_stream::check::cli::CliOptions {
        server: args.server_given.then(|| args.server.clone()),
        udp_addrs: args.udp_addrs.clone(),
        ice_policy: args.ice_policy,
    })?;
    let json = serde_json::to_string(&report).context("encoding the report")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{json}").context("writing the report")?;
    out.flush().ok();
    drop(out);
    if report.can_call.works() {
        Ok(())
    } else {
        std::process::exit(1);
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
