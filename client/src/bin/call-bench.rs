//! Call benchmark: runs the real server and two headless peers on loopback and reports
//! call setup (matched → first decoded frame) p50/p99 over many matches, capture →
//! decoded-frame latency, and the CPU each peer uses during one steady two-way call.
//!
//! `cargo build --release -p peer-stream -p peer-stream-server && \
//!  target/release/call-bench --matches 24`

#![allow(clippy::print_stdout)]

use anyhow::{bail, Context};
use clap::Parser;
use peer_stream::engine::stats::percentile;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Measure call setup, latency and CPU of headless peers on loopback")]
struct Args {
    /// Matches to measure setup over (two peers skipping each other).
    #[arg(long, default_value_t = 24)]
    matches: u32,
    /// Seconds of the steady call measured for CPU.
    #[arg(long, default_value_t = 20)]
    cpu_secs: u64,
    /// Loopback port for the server.
    #[arg(long, default_value_t = 39_517)]
    port: u16,
    /// The peers' `--video-codec` (auto, h264, vp8).
    #[arg(long, default_value = "auto")]
    video_codec: String,
}

fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().context("no parent dir")?.to_path_buf())
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn peer(dir: &Path, port: u16, codec: &str, extra: &[String]) -> anyhow::Result<Child> {
    Ok(Command::new(dir.join("peer-stream"))
        .args([
            "--headless",
            "--fake-media",
            "--udp-addr",
            "127.0.0.1:0",
            "--log",
            "warn",
        ])
        .args(["--server", &format!("ws://127.0.0.1:{port}/ws")])
        .args(["--video-codec", codec])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()?)
}

fn finish(child: Child) -> anyhow::Result<Value> {
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(serde_json::from_str(
        text.lines().last().unwrap_or_default(),
    )?)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = bin_dir()?;
    let db = std::env::temp_dir().join(format!("call-bench-{}.sqlite3", std::process::id()));
    let mut server = Command::new(dir.join("peer-stream-server"))
        .args([
            "--listen",
            &format!("127.0.0.1:{}", args.port),
            "--log",
            "warn",
        ])
        .args(["--rematch-cooldown-secs", "0", "--db"])
        .arg(&db)
        .spawn()
        .context("start peer-stream-server (build it in the same profile)")?;
    std::thread::sleep(Duration::from_millis(500));

    // 1. Setup time over many matches: A skips 1.5 s after each call goes live.
    let secs = (args.matches as f64 * 2.2 + 4.0).to_string();
    let a = peer(
        &dir,
        args.port,
        &args.video_codec,
        &[
            "--duration".into(),
            secs.clone(),
            "--next-after".into(),
            "1.5".into(),
        ],
    )?;
    let b = peer(
        &dir,
        args.port,
        &args.video_codec,
        &["--duration".into(), secs],
    )?;
    let (a, b) = (finish(a)?, finish(b)?);
    let mut setups = Vec::new();
    let mut latencies = Vec::new();
    for s in [&a, &b] {
        for m in s["per_match"].as_array().cloned().unwrap_or_default() {
            if let Some(v) = m["setup_ms"].as_f64() {
                setups.push(v);
            }
        }
        if let Some(l) = s["latency_ms"].as_f64() {
            latencies.push(l);
        }
    }
    if setups.is_empty() {
        let _ = server.kill();
        bail!("no match decoded video: {a} {b}");
    }

    // 2. CPU of one steady two-way call.
    let a = peer(
        &dir,
        args.port,
        &args.video_codec,
        &["--duration".into(), (args.cpu_secs + 4).to_string()],
    )?;
    let b = peer(
        &dir,
        args.port,
        &args.video_codec,
        &["--duration".into(), (args.cpu_secs + 4).to_string()],
    )?;
    std::thread::sleep(Duration::from_secs(3));
    let t0 = Instant::now();
    let start = [cpu_ticks(a.id()), cpu_ticks(b.id())];
    std::thread::sleep(Duration::from_secs(args.cpu_secs));
    let end = [cpu_ticks(a.id()), cpu_ticks(b.id())];
    let wall = t0.elapsed().as_secs_f64();
    let cpu: Vec<f64> = start
        .iter()
        .zip(end.iter())
        .map(|(s, e)| match (s, e) {
            (Some(s), Some(e)) => (e - s) as f64 / 100.0 / wall * 100.0,
            _ => f64::NAN,
        })
        .collect();
    let (ca, cb) = (finish(a)?, finish(b)?);
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_file(&db);

    let p = |v: &[f64], q: f64| percentile(v, q).unwrap_or(f64::NAN);
    println!("matches measured           {}", setups.len());
    println!(
        "setup ms p50 / p99         {:.0} / {:.0}",
        p(&setups, 50.0),
        p(&setups, 99.0)
    );
    println!("latency ms p50 (per peer)  {latencies:?}");
    println!(
        "steady call latency ms     {:?} / {:?}",
        ca["latency_ms"].as_f64(),
        cb["latency_ms"].as_f64()
    );
    println!("CPU % of one core per peer {:.0} / {:.0}", cpu[0], cpu[1]);
    println!(
        "frames decoded in {}s call  {} / {}",
        args.cpu_secs + 4,
        ca["frames_decoded"],
        cb["frames_decoded"]
    );
    let json = serde_json::json!({
        "matches": setups.len(),
        "setup_ms_p50": p(&setups, 50.0),
        "setup_ms_p99": p(&setups, 99.0),
        "latency_ms_p50": [ca["latency_ms"], cb["latency_ms"]],
        "cpu_percent_per_peer": cpu,
        "video_codec": [ca["per_match"][0]["video_codec"].clone(), cb["per_match"][0]["video_codec"].clone()],
    });
    println!("{json}");
    Ok(())
}
