#![allow(clippy::print_stdout, clippy::print_stderr)]
//! `peer-stream-loadgen`: load generator and benchmark for the signaling server.
//!
//! By default it spawns `peer-stream-server` (found next to its own executable) on a free
//! loopback port with a temporary database, no per-IP cap and no rate limiting, pins the
//! server to one CPU and itself to another, runs one scenario and prints the figures:
//!
//! * `bare`: clients loop `join` → `matched` → `leave`; pairings per second.
//! * `full`: each pairing also exchanges an offer, an answer and ICE candidates both ways.
//! * `relay`: matched pairs exchange timestamped `signal`s; one-way relay latency
//!   percentiles at an offered rate, and the maximum relay throughput (closed loop).
//! * `idle`: server RSS before and after opening N idle connections (held by worker
//!   processes, so that neither side runs out of file descriptors).
//!
//! Several nodes: `--nodes N` spawns N servers (`--server URL` may also be repeated for
//! nodes that already run) and spreads the clients over them round-robin; with
//! `--spawn-redis` (or `--redis URL`) the nodes share one Redis (`--redis` on each node)
//! and the figures add the Redis commands per pairing / per message (`INFO commandstats`).
//!
//! Every scenario is bounded in time and count and only ever talks to loopback addresses.
//! With `--json` the figures are also printed as one JSON object on stdout (the human
//! readable lines then go to stderr).

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use peer_stream_shared::{ClientMessage, ServerMessage, PROTOCOL_VERSION, WS_PATH};
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener as StdTcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout, timeout_at};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

mod redis;

use redis::{CommandCalls, RedisSide};

type Ws = WebSocketStream<TcpStream>;

/// Longest measurement window any scenario accepts, in seconds.
const MAX_DURATION_SECS: f64 = 120.0;
/// Longest warm-up, in seconds.
const MAX_WARMUP_SECS: f64 = 30.0;
/// Connections the `idle` scenario never exceeds (the server must stay under ~19,500 fds).
const MAX_IDLE_CONNS: usize = 19_500;
/// File descriptors kept free in the server besides the idle connections.
const SERVER_FD_RESERVE: u64 = 500;
/// File descriptors kept free in this process besides its client sockets.
const SELF_FD_RESERVE: u64 = 100;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
const MATCH_TIMEOUT: Duration = Duration::from_secs(30);
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(3);
const DRAIN_QUIET: Duration = Duration::from_millis(300);
const WORKER_READY_TIMEOUT: Duration = Duration::from_secs(240);
const CLIENT_NAME: &str = concat!("peer-stream-loadgen/", env!("CARGO_PKG_VERSION"));

// ---------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------

#[derive(Parser, Debug)]
#[command(
    name = "peer-stream-loadgen",
    version,
    about = "Load generator and benchmark for peer-stream-server (loopback only)",
    long_about = "Load generator and benchmark for peer-stream-server.\n\n\
        By default it spawns the peer-stream-server binary found next to its own executable \
        on 127.0.0.1:<free port> (temporary database, --max-conns-per-ip 0, --rate-per-sec 0, \
        --log warn), pins the server to CPU 0 and itself to CPU 1, runs one scenario and \
        prints the figures. It only ever connects to loopback addresses."
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Matchmaking throughput: clients loop join → matched → leave; reports pairings/s.
    Bare(BareArgs),
    /// Full negotiations: offer, answer and candidates both ways per pairing; full pairings/s.
    Full(FullArgs),
    /// One-way relay latency of signal messages between matched pairs, and max relay throughput.
    Relay(RelayArgs),
    /// Server memory per idle connection (RSS before and after opening N connections).
    Idle(IdleArgs),
    /// Internal: one worker process of `idle`, holding connections until stdin closes.
    #[command(hide = true)]
    IdleWorker(WorkerArgs),
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Target an already-running server instead of spawning one, e.g. ws://127.0.0.1:3000/ws
    /// (loopback addresses only). Repeat it (or separate URLs with commas) for several
    /// nodes of one cluster: clients are spread over them round-robin.
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    server: Vec<String>,

    /// Pid of each --server process, in the same order, to report their CPU time and memory.
    #[arg(long, value_name = "PID", requires = "server", value_delimiter = ',')]
    server_pid: Vec<u32>,

    /// Spawn this many server nodes (all pinned to --server-cpu) and spread the clients
    /// over them round-robin. Without a shared Redis (--spawn-redis or --redis) the nodes
    /// are independent servers.
    #[arg(long, default_value_t = 1, value_name = "N", conflicts_with = "server")]
    nodes: usize,

    /// Start a redis-server (on a free loopback port, no persistence) for the run and give
    /// every spawned node `--redis` to it; Redis commands per unit of work are reported.
    #[arg(long, conflicts_with_all = ["server", "redis"])]
    spawn_redis: bool,

    /// A running Redis (loopback redis://HOST:PORT[/DB]): spawned nodes get `--redis URL`,
    /// and its command counters are reported per unit of work.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,

    /// Server binary to spawn [default: peer-stream-server next to this executable].
    #[arg(long, value_name = "PATH", conflicts_with = "server")]
    server_bin: Option<PathBuf>,

    /// Extra argument for the spawned server (repeatable), e.g.
    /// --server-arg=--rematch-cooldown-secs=0. It replaces a default flag of the same name.
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true)]
    server_args: Vec<String>,

    /// Print one JSON object with every figure on stdout (the human-readable lines go to stderr).
    #[arg(long)]
    json: bool,

    /// Do not pin the server and the generator to separate CPUs.
    #[arg(long)]
    no_pin: bool,

    /// CPU the spawned server is pinned to.
    #[arg(long, default_value_t = 0, value_name = "CPU")]
    server_cpu: u32,

    /// CPU the generator (and its worker processes) is pinned to.
    #[arg(long, default_value_t = 1, value_name = "CPU")]
    client_cpu: u32,
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    /// Length of the measurement window, in seconds (at most 120).
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    duration: f64,

    /// Warm-up before the measurement window, in seconds (at most 30).
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    warmup: f64,

    /// Connections opened in parallel during set-up.
    #[arg(long, default_value_t = 200, value_name = "N")]
    connect_parallel: usize,
}

#[derive(Args, Debug)]
struct BareArgs {
    /// Concurrent clients; they pair among themselves (the server pairs FIFO).
    #[arg(long, default_value_t = 2000, value_name = "N")]
    clients: usize,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct FullArgs {
    /// Concurrent clients; they pair among themselves.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    clients: usize,
    /// ICE candidate signals each side sends per pairing.
    #[arg(long, default_value_t = 10, value_name = "N")]
    candidates: usize,
    /// Size of the SDP string in the offer and the answer, in bytes.
    #[arg(long, default_value_t = 2048, value_name = "BYTES")]
    sdp_bytes: usize,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct RelayArgs {
    /// Matched pairs exchanging signals.
    #[arg(long, default_value_t = 500, value_name = "N")]
    pairs: usize,
    /// Offered load in relayed messages per second (all clients together) [default: half of
    /// the maximum measured first].
    #[arg(long, value_name = "MSGS_PER_SEC", conflicts_with = "max")]
    rate: Option<f64>,
    /// Only measure the maximum relay throughput (closed loop, --window messages in flight
    /// per client).
    #[arg(long)]
    max: bool,
    /// Messages in flight per client in the closed-loop (max) phase.
    #[arg(long, default_value_t = 4, value_name = "N")]
    window: usize,
    /// Measurement window of the max phase when it precedes the fixed-rate phase, in seconds.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    max_duration: f64,
    /// Padding bytes in each signal payload.
    #[arg(long, default_value_t = 100, value_name = "BYTES")]
    pad: usize,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct IdleArgs {
    /// Idle connections to open; a comma-separated ascending list measures at each step
    /// (e.g. 10000,19000). Capped so the server stays under its open-files limit.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10000",
        value_name = "N[,N…]"
    )]
    conns: Vec<usize>,
    /// Also send `join` on every connection (they then pair up and sit in idle matches).
    #[arg(long)]
    join: bool,
    /// Connections held by one worker process at most.
    #[arg(long, default_value_t = 9000, value_name = "N")]
    per_worker: usize,
    /// Connections each worker opens in parallel.
    #[arg(long, default_value_t = 256, value_name = "N")]
    connect_parallel: usize,
    /// Pause before each RSS reading, in seconds.
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    settle: f64,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct WorkerArgs {
    /// WebSocket URL of the server (loopback only).
    #[arg(long)]
    url: String,
    /// Connections to open and hold.
    #[arg(long)]
    count: usize,
    /// Send `join` after `hello`.
    #[arg(long)]
    join: bool,
    /// Connections opened in parallel.
    #[arg(long, default_value_t = 256)]
    connect_parallel: usize,
    /// Exit after this many seconds even if stdin stays open.
    #[arg(long, default_value_t = 600.0)]
    max_hold: f64,
}

impl Scenario {
    fn common(&self) -> Option<&Common> {
        match self {
            Scenario::Bare(a) => Some(&a.common),
            Scenario::Full(a) => Some(&a.common),
            Scenario::Relay(a) => Some(&a.common),
            Scenario::Idle(a) => Some(&a.common),
            Scenario::IdleWorker(_) => None,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Scenario::Bare(_) => "bare",
            Scenario::Full(_) => "full",
            Scenario::Relay(_) => "relay",
            Scenario::Idle(_) => "idle",
            Scenario::IdleWorker(_) => "idle-worker",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.scenario.common() {
        None => match cli.scenario {
            Scenario::IdleWorker(args) => run_runtime(worker_main(args)),
            _ => Err(anyhow!("internal: scenario without common options")),
        },
        Some(common) => {
            let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
            // Pin before the runtime exists, so every thread (and every worker process
            // spawned later) inherits the affinity.
            let self_pinned = if common.no_pin || nproc < 2 {
                false
            } else {
                pin_self(common.client_cpu)
            };
            run_runtime(run_scenario(cli.scenario, nproc, self_pinned))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peer-stream-loadgen: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `fut` on a single-threaded runtime (the generator is pinned to one core anyway);
/// Ctrl-C drops it, which kills a spawned server and closes every connection.
fn run_runtime<F: Future<Output = Result<()>>>(fut: F) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    rt.block_on(async move {
        tokio::select! {
            r = fut => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    })
}

// ---------------------------------------------------------------------------------------
// Targets, the spawned server and /proc figures
// ---------------------------------------------------------------------------------------

/// A loopback WebSocket endpoint.
#[derive(Clone, Debug)]
struct Target {
    addr: SocketAddr,
    url: String,
}

/// Parses `ws://host[:port][/path]`, refusing anything that is not a loopback address
/// (127.0.0.0/8, ::1 or `localhost` resolving only to those).
fn parse_target(url: &str) -> Result<Target> {
    let rest = url.strip_prefix("ws://").ok_or_else(|| {
        anyhow!("only ws:// URLs to a loopback address are supported, got {url:?}")
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, WS_PATH),
    };
    if authority.contains('@') {
        bail!("credentials in the URL are not supported: {url:?}");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| anyhow!("bad IPv6 address in {url:?}"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p
                .parse::<u16>()
                .with_context(|| format!("bad port in {url:?}"))?,
            None if after.is_empty() => 80,
            None => bail!("bad authority in {url:?}"),
        };
        (h, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .with_context(|| format!("bad port in {url:?}"))?,
            ),
            None => (authority, 80),
        }
    };
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        let addrs: Vec<SocketAddr> = (host, port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {host}"))?
            .collect();
        if addrs.is_empty() || addrs.iter().any(|a| !a.ip().is_loopback()) {
            bail!("{host} does not resolve to loopback addresses only: {addrs:?}");
        }
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .map(|a| a.ip())
            .ok_or_else(|| anyhow!("{host} has no address"))?
    } else {
        host.parse().map_err(|_| {
            anyhow!("refusing {url:?}: only loopback IP addresses (127.0.0.0/8, ::1) or localhost")
        })?
    };
    if !ip.is_loopback() {
        bail!("refusing {url:?}: {ip} is not a loopback address (only 127.0.0.0/8 and ::1 are allowed)");
    }
    let addr = SocketAddr::new(ip, port);
    Ok(Target {
        addr,
        url: format!("ws://{addr}{path}"),
    })
}

/// Where the server nodes run and which processes they are (for CPU and memory figures).
struct ServerSide {
    nodes: Vec<Node>,
    pinned_cpu: Option<u32>,
    /// The Redis the nodes share, when the run knows it.
    redis: Option<RedisSide>,
}

/// One server node.
struct Node {
    target: Target,
    pid: Option<u32>,
    spawned: Option<SpawnedServer>,
}

impl ServerSide {
    fn targets(&self) -> Vec<Target> {
        self.nodes.iter().map(|n| n.target.clone()).collect()
    }

    /// The first node (the only one for single-node scenarios such as `idle`).
    fn first(&self) -> &Node {
        &self.nodes[0]
    }

    /// utime + stime of every node together; `None` when a node's pid is unknown.
    fn cpu_ticks(&self) -> Option<u64> {
        self.nodes
            .iter()
            .map(|n| n.pid.and_then(|p| proc_cpu_ticks(&p.to_string())))
            .sum()
    }

    /// utime alone (the server's own code; stime is mostly the kernel's loopback TCP).
    fn user_ticks(&self) -> Option<u64> {
        self.nodes
            .iter()
            .map(|n| n.pid.and_then(|p| proc_user_ticks(&p.to_string())))
            .sum()
    }
}

/// A server started by the generator; killed (and its temporary directory removed) on drop,
/// including on errors and Ctrl-C.
struct SpawnedServer {
    child: Child,
    dir: PathBuf,
    log: PathBuf,
    /// The binary and its modification time (seconds since the epoch), to tell builds apart.
    bin: PathBuf,
    bin_mtime: Option<u64>,
}

impl SpawnedServer {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(description)` when the server process has exited.
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown ({e})")),
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Pins this process (all its threads) to `cpu` with `taskset`; false when that failed.
fn pin_self(cpu: u32) -> bool {
    if find_in_path("taskset").is_none() {
        eprintln!("note: taskset not found; the generator is not pinned");
        return false;
    }
    let pid = std::process::id().to_string();
    match Command::new("taskset")
        .args(["-a", "-cp", &cpu.to_string(), &pid])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            eprintln!(
                "note: could not pin the generator to CPU {cpu}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("note: could not run taskset: {e}");
            false
        }
    }
}

fn free_port() -> Result<u16> {
    let l = StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Flags the spawned server gets unless `--server-arg` sets the same flag.
fn default_server_flags(listen: SocketAddr, db: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("--listen", listen.to_string()),
        ("--db", db.display().to_string()),
        ("--max-conns-per-ip", "0".into()),
        ("--rate-per-sec", "0".into()),
        ("--log", "warn".into()),
    ]
}

fn spawn_server(
    common: &Common,
    nproc: usize,
    redis: Option<&str>,
) -> Result<(SpawnedServer, Target, Option<u32>)> {
    let bin = match &common.server_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locating this executable")?
            .parent()
            .ok_or_else(|| anyhow!("this executable has no parent directory"))?
            .join("peer-stream-server"),
    };
    if !bin.is_file() {
        bail!(
            "server binary {} not found: build it with `cargo build --release -p peer-stream-server`, \
             or pass --server-bin PATH or --server ws://127.0.0.1:PORT/ws",
            bin.display()
        );
    }
    let port = free_port()?;
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "peer-stream-loadgen-{}-{port}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = dir.join("server.log");
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let log_file2 = log_file.try_clone()?;

    let mut args: Vec<String> = Vec::new();
    for (flag, value) in default_server_flags(listen, &dir.join("bench.sqlite3")) {
        let overridden = common
            .server_args
            .iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")));
        if !overridden {
            args.push(flag.to_string());
            args.push(value);
        }
    }
    args.extend(common.server_args.iter().cloned());
    if let Some(url) = redis {
        args.push(format!("--redis={url}"));
    }

    let pin = !common.no_pin && nproc >= 2 && find_in_path("taskset").is_some();
    // Raise the soft open-files limit to the hard one, pin, then exec the server itself so
    // that the child's pid is the server's.
    let script = if pin {
        format!(
            "ulimit -n \"$(ulimit -Hn)\" 2>/dev/null; exec taskset -c {} \"$0\" \"$@\"",
            common.server_cpu
        )
    } else {
        "ulimit -n \"$(ulimit -Hn)\" 2>/dev/null; exec \"$0\" \"$@\"".to_string()
    };
    let child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(&bin)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file))
        .stderr(Stdio::from(log_file2))
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))?;
    let bin_mtime = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    let server = SpawnedServer {
        child,
        dir,
        log,
        bin,
        bin_mtime,
    };
    let target = Target {
        addr: listen,
        url: format!("ws://{listen}{WS_PATH}"),
    };
    Ok((server, target, pin.then_some(common.server_cpu)))
}

async fn setup_server(common: &Common, nproc: usize) -> Result<ServerSide> {
    let redis = if common.spawn_redis {
        // On the servers' CPU: Redis is part of the service under test, not of the generator.
        let cpu = (!common.no_pin && nproc >= 2).then_some(common.server_cpu);
        let side = RedisSide::spawn(free_port()?, cpu)?;
        progress(format!("started redis-server at {}", side.url));
        Some(side)
    } else {
        common
            .redis
            .as_deref()
            .map(RedisSide::external)
            .transpose()?
    };
    if !common.server.is_empty() {
        if !common.server_pid.is_empty() && common.server_pid.len() != common.server.len() {
            bail!(
                "give one --server-pid per --server ({} URLs, {} pids)",
                common.server.len(),
                common.server_pid.len()
            );
        }
        let mut nodes = Vec::new();
        for (i, url) in common.server.iter().enumerate() {
            let target = parse_target(url)?;
            let mut ws = open_session(&target, ws_config(8 * 1024))
                .await
                .with_context(|| format!("connecting to {}", target.url))?;
            let _ = ws.close(None).await;
            let pid = common.server_pid.get(i).copied();
            if let Some(pid) = pid {
                if proc_cpu_ticks(&pid.to_string()).is_none() {
                    bail!("no process {pid} (--server-pid) readable in /proc");
                }
            }
            nodes.push(Node {
                target,
                pid,
                spawned: None,
            });
        }
        return Ok(ServerSide {
            nodes,
            pinned_cpu: None,
            redis,
        });
    }
    if common.nodes == 0 || common.nodes > 16 {
        bail!("--nodes must be between 1 and 16");
    }
    let mut nodes = Vec::new();
    let mut pinned_cpu = None;
    for _ in 0..common.nodes {
        let (server, target, pinned) =
            spawn_server(common, nproc, redis.as_ref().map(|r| r.url.as_str()))?;
        pinned_cpu = pinned;
        nodes.push(Node {
            target,
            pid: Some(server.pid()),
            spawned: Some(server),
        });
    }
    for node in &mut nodes {
        wait_until_serving(node).await?;
    }
    Ok(ServerSide {
        nodes,
        pinned_cpu,
        redis,
    })
}

/// Waits until a spawned node answers `hello`; fails with its log when it exits or stays
/// silent.
async fn wait_until_serving(node: &mut Node) -> Result<()> {
    let target = node.target.clone();
    let Some(server) = node.spawned.as_mut() else {
        return Ok(());
    };
    let deadline = Instant::now() + SERVER_START_TIMEOUT;
    loop {
        if let Some(status) = server.exited() {
            bail!(
                "the server exited during start-up ({status}); its output:\n{}",
                tail(&server.log_text(), 40)
            );
        }
        let last_err = match timeout(
            Duration::from_secs(2),
            open_session(&target, ws_config(8 * 1024)),
        )
        .await
        {
            Ok(Ok(mut ws)) => {
                let _ = ws.close(None).await;
                return Ok(());
            }
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => "timed out".to_string(),
        };
        if Instant::now() > deadline {
            bail!(
                "the server did not answer hello on {} within {:?} (last error: {last_err}); its output:\n{}",
                target.url,
                SERVER_START_TIMEOUT,
                tail(&server.log_text(), 40)
            );
        }
        sleep(Duration::from_millis(100)).await;
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// utime of a process, in clock ticks (`who` is a pid or `self`).
fn proc_user_ticks(who: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{who}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    rest.split_whitespace().nth(11)?.parse().ok()
}

/// utime + stime of a process, in clock ticks (`who` is a pid or `self`).
fn proc_cpu_ticks(who: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{who}/stat")).ok()?;
    // The command name may contain spaces; the fields after it start with the state.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` line of /proc/<who>/status, e.g. `VmRSS`.
fn proc_status_kib(who: &str, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{who}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Machine-wide CPU ticks from /proc/stat: (user + nice + system, irq + softirq, steal).
fn system_ticks() -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    Some((get(0) + get(1) + get(2), get(5) + get(6), get(7)))
}

fn proc_fd_count(who: &str) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{who}/fd")).ok()?.count() as u64)
}

/// (soft, hard) open-files limits of a process; `None` stands for unlimited.
fn proc_nofile(who: &str) -> Option<(Option<u64>, Option<u64>)> {
    let limits = std::fs::read_to_string(format!("/proc/{who}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut it = line["Max open files".len()..].split_whitespace();
    let soft = it.next()?;
    let hard = it.next()?;
    Some((soft.parse().ok(), hard.parse().ok()))
}

fn local_port_range() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace();
    let lo: u64 = it.next()?.parse().ok()?;
    let hi: u64 = it.next()?.parse().ok()?;
    Some(hi.saturating_sub(lo) + 1)
}

fn clk_tck() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Refuses a client count this process cannot hold sockets for.
fn check_own_fds(clients: usize) -> Result<()> {
    if let Some((Some(soft), hard)) = proc_nofile("self") {
        if clients as u64 + SELF_FD_RESERVE > soft {
            let hard = hard.map_or("unlimited".to_string(), |h| h.to_string());
            bail!(
                "{clients} clients need about {} open files but this process may only open {soft} \
                 (hard limit {hard}); raise it with `ulimit -n` or use fewer clients",
                clients as u64 + SELF_FD_RESERVE
            );
        }
    }
    Ok(())
}

fn check_duration(name: &str, secs: f64, max: f64) -> Result<Duration> {
    if !secs.is_finite() || secs <= 0.0 || secs > max {
        bail!("--{name} must be in (0, {max}] seconds, got {secs}");
    }
    Ok(Duration::from_secs_f64(secs))
}

// ---------------------------------------------------------------------------------------
// Measurement windows and the report
// ---------------------------------------------------------------------------------------

/// Counters shared by every client task of one run (relaxed atomics: one thread anyway).
#[derive(Default)]
struct Counters {
    matched: AtomicU64,
    completed: AtomicU64,
    aborted: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    errors: AtomicU64,
    failures: AtomicU64,
}

#[derive(Clone, Copy, Default, Debug)]
struct CounterSnap {
    matched: u64,
    completed: u64,
    aborted: u64,
    sent: u64,
    received: u64,
    errors: u64,
    failures: u64,
}

impl Counters {
    fn snap(&self) -> CounterSnap {
        CounterSnap {
            matched: self.matched.load(Relaxed),
            completed: self.completed.load(Relaxed),
            aborted: self.aborted.load(Relaxed),
            sent: self.sent.load(Relaxed),
            received: self.received.load(Relaxed),
            errors: self.errors.load(Relaxed),
            failures: self.failures.load(Relaxed),
        }
    }
}

impl CounterSnap {
    fn minus(self, o: CounterSnap) -> CounterSnap {
        CounterSnap {
            matched: self.matched.saturating_sub(o.matched),
            completed: self.completed.saturating_sub(o.completed),
            aborted: self.aborted.saturating_sub(o.aborted),
            sent: self.sent.saturating_sub(o.sent),
            received: self.received.saturating_sub(o.received),
            errors: self.errors.saturating_sub(o.errors),
            failures: self.failures.saturating_sub(o.failures),
        }
    }
}

/// Counts of notable events by description (server error codes, anomalies, failures).
#[derive(Default)]
struct Tally(Mutex<BTreeMap<String, u64>>);

impl Tally {
    fn add(&self, what: impl Into<String>) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(what.into()).or_default() += 1;
        }
    }

    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// State shared by the client tasks of one run.
struct Shared {
    c: Counters,
    tally: Tally,
    stop: watch::Receiver<bool>,
    base: Instant,
    /// Relay latencies are recorded for messages sent in [window_start, window_end) (ns
    /// since `base`).
    window_start: AtomicU64,
    window_end: AtomicU64,
}

impl Shared {
    fn new() -> (Arc<Shared>, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(false);
        let shared = Shared {
            c: Counters::default(),
            tally: Tally::default(),
            stop: rx,
            base: Instant::now(),
            window_start: AtomicU64::new(u64::MAX),
            window_end: AtomicU64::new(u64::MAX),
        };
        (Arc::new(shared), tx)
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn server_error(&self, code: Option<&str>) {
        self.c.errors.fetch_add(1, Relaxed);
        self.tally
            .add(format!("server error: {}", code.unwrap_or("(no code)")));
    }

    fn anomaly(&self, what: &str) {
        self.c.errors.fetch_add(1, Relaxed);
        self.tally.add(what);
    }

    /// A future that completes once the run is told to stop.
    fn stopped(&self) -> impl Future<Output = ()> + 'static {
        let mut rx = self.stop.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }
}

/// CPU and counters at one instant.
struct Snap {
    at: Instant,
    server_ticks: Option<u64>,
    server_user_ticks: Option<u64>,
    self_ticks: Option<u64>,
    system: Option<(u64, u64, u64)>,
    /// Redis's own CPU (when the run started it) and its command counters.
    redis_ticks: Option<u64>,
    redis_calls: Option<CommandCalls>,
    c: CounterSnap,
}

impl Snap {
    fn take(server: &ServerSide, c: &Counters) -> Snap {
        let redis = server.redis.as_ref();
        Snap {
            at: Instant::now(),
            server_ticks: server.cpu_ticks(),
            server_user_ticks: server.user_ticks(),
            self_ticks: proc_cpu_ticks("self"),
            system: system_ticks(),
            redis_ticks: redis
                .and_then(|r| r.pid())
                .and_then(|p| proc_cpu_ticks(&p.to_string())),
            redis_calls: redis.and_then(|r| match r.command_calls() {
                Ok(calls) => Some(calls),
                Err(e) => {
                    progress(format!("could not read Redis counters: {e:#}"));
                    None
                }
            }),
            c: c.snap(),
        }
    }
}

/// What happened between two snapshots.
struct Window {
    secs: f64,
    server_cpu_s: Option<f64>,
    /// The user-space part of `server_cpu_s`.
    server_user_cpu_s: Option<f64>,
    self_cpu_s: Option<f64>,
    /// CPU time of every other process (user + system), in seconds: a build running next
    /// to the benchmark shows up here.
    other_cpu_s: Option<f64>,
    /// Interrupt and softirq time of the whole machine (loopback TCP is partly here).
    irq_cpu_s: Option<f64>,
    /// Time the hypervisor gave our virtual CPUs to someone else.
    steal_cpu_s: Option<f64>,
    /// Redis's CPU time (when the run started it) and its commands in the window.
    redis_cpu_s: Option<f64>,
    redis_calls: Option<CommandCalls>,
    c: CounterSnap,
}

impl Window {
    fn between(a: &Snap, b: &Snap, tck: u64) -> Window {
        let cpu = |x: Option<u64>, y: Option<u64>| match (x, y) {
            (Some(x), Some(y)) => Some(y.saturating_sub(x) as f64 / tck as f64),
            _ => None,
        };
        let server_cpu_s = cpu(a.server_ticks, b.server_ticks);
        let self_cpu_s = cpu(a.self_ticks, b.self_ticks);
        let redis_cpu_s = cpu(a.redis_ticks, b.redis_ticks);
        let (other_cpu_s, irq_cpu_s, steal_cpu_s) = match (a.system, b.system) {
            (Some((au, ai, ast)), Some((bu, bi, bst))) => {
                let busy = bu.saturating_sub(au) as f64 / tck as f64;
                let ours = server_cpu_s.unwrap_or(0.0)
                    + self_cpu_s.unwrap_or(0.0)
                    + redis_cpu_s.unwrap_or(0.0);
                (
                    Some((busy - ours).max(0.0)),
                    Some(bi.saturating_sub(ai) as f64 / tck as f64),
                    Some(bst.saturating_sub(ast) as f64 / tck as f64),
                )
            }
            _ => (None, None, None),
        };
        Window {
            secs: b.at.duration_since(a.at).as_secs_f64(),
            server_cpu_s,
            server_user_cpu_s: cpu(a.server_user_ticks, b.server_user_ticks),
            self_cpu_s,
            other_cpu_s,
            irq_cpu_s,
            steal_cpu_s,
            redis_cpu_s,
            redis_calls: match (&a.redis_calls, &b.redis_calls) {
                (Some(x), Some(y)) => Some(redis::calls_between(x, y)),
                _ => None,
            },
            c: b.c.minus(a.c),
        }
    }

    fn server_us_per(&self, n: u64) -> Option<f64> {
        self.server_cpu_s
            .filter(|_| n > 0)
            .map(|s| s * 1e6 / n as f64)
    }
}

/// Human-readable lines plus the figures as one JSON object.
struct Report {
    json: bool,
    map: Map<String, Value>,
}

impl Report {
    fn new(json: bool) -> Report {
        Report {
            json,
            map: Map::new(),
        }
    }

    fn line(&self, text: impl AsRef<str>) {
        if self.json {
            eprintln!("{}", text.as_ref());
        } else {
            println!("{}", text.as_ref());
        }
    }

    fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.map.insert(key.to_string(), value.into());
    }

    fn set_opt(&mut self, key: &str, value: Option<f64>) {
        self.map.insert(
            key.to_string(),
            value.map_or(Value::Null, |v| json!(round2(v))),
        );
    }

    /// Server and generator CPU of a window, as lines and `<prefix>server_cpu_s` etc.
    fn cpu(&mut self, prefix: &str, w: &Window, unit: &str, units: u64, busy_polls: bool) {
        let per = w.server_us_per(units);
        self.set_opt(&format!("{prefix}server_cpu_s"), w.server_cpu_s);
        self.set_opt(
            &format!("{prefix}server_cpu_util"),
            w.server_cpu_s.map(|s| s / w.secs),
        );
        self.set_opt(&format!("{prefix}server_cpu_us_per_{unit}"), per);
        let user_per = w
            .server_user_cpu_s
            .filter(|_| units > 0)
            .map(|s| s * 1e6 / units as f64);
        self.set_opt(&format!("{prefix}server_user_cpu_us_per_{unit}"), user_per);
        if let (Some(per), Some(user)) = (per, user_per) {
            self.line(format!(
                "  server cpu per {unit}: {user:.1} µs in user space, {:.1} µs in the kernel",
                per - user
            ));
        }
        self.redis(prefix, w, unit, units);
        self.set_opt(&format!("{prefix}loadgen_cpu_s"), w.self_cpu_s);
        self.set_opt(
            &format!("{prefix}loadgen_cpu_util"),
            w.self_cpu_s.map(|s| s / w.secs),
        );
        match (w.server_cpu_s, per) {
            (Some(s), Some(per)) => self.line(format!(
                "  server cpu:  {s:.2} s in {:.2} s ({:.0}% of one core) = {per:.1} µs per {unit} \
                 (≈ {:.0} {unit}s/s per core of server CPU)",
                w.secs,
                100.0 * s / w.secs,
                1e6 / per
            )),
            (Some(s), None) => self.line(format!(
                "  server cpu:  {s:.2} s in {:.2} s ({:.0}% of one core)",
                w.secs,
                100.0 * s / w.secs
            )),
            _ => self.line("  server cpu:  n/a (pass --server-pid with --server)"),
        }
        self.set_opt(
            &format!("{prefix}other_cpu_util"),
            w.other_cpu_s.map(|s| s / w.secs),
        );
        self.set_opt(
            &format!("{prefix}irq_cpu_util"),
            w.irq_cpu_s.map(|s| s / w.secs),
        );
        self.set_opt(
            &format!("{prefix}steal_cpu_util"),
            w.steal_cpu_s.map(|s| s / w.secs),
        );
        if let Some(steal) = w.steal_cpu_s.map(|s| s / w.secs) {
            if steal > 0.05 {
                self.line(format!(
                    "  WARNING: the hypervisor stole {:.0}% of a core during the window",
                    100.0 * steal
                ));
            }
        }
        if let Some(other) = w.other_cpu_s.map(|s| s / w.secs) {
            // Only meaningful when the server is ours or its pid is known.
            if w.server_cpu_s.is_some() && other > 0.25 {
                self.line(format!(
                    "  WARNING: other processes used {:.0}% of a core during the window: \
                     the figures are disturbed",
                    100.0 * other
                ));
            }
        }
        if let Some(s) = w.self_cpu_s {
            let util = s / w.secs;
            self.line(format!(
                "  loadgen cpu: {s:.2} s ({:.0}% of one core){}",
                100.0 * util,
                if busy_polls {
                    " (its pacer busy-polls between sends)"
                } else if util > 0.9 {
                    " — the generator is saturated: the rate is bounded by the client side"
                } else {
                    ""
                }
            ));
        }
    }

    /// Redis commands (and Redis CPU) per unit of work, when the nodes share a Redis.
    fn redis(&mut self, prefix: &str, w: &Window, unit: &str, units: u64) {
        let Some(calls) = &w.redis_calls else {
            return;
        };
        let total: u64 = calls.values().sum();
        let per = |n: u64| (units > 0).then(|| n as f64 / units as f64);
        self.set(&format!("{prefix}redis_commands"), total);
        self.set_opt(&format!("{prefix}redis_commands_per_{unit}"), per(total));
        let by_cmd: Map<String, Value> = calls
            .iter()
            .map(|(k, &v)| (k.clone(), json!(per(v).map(round2))))
            .collect();
        self.set(
            &format!("{prefix}redis_commands_per_{unit}_by_command"),
            Value::Object(by_cmd),
        );
        self.set_opt(&format!("{prefix}redis_cpu_s"), w.redis_cpu_s);
        let detail: Vec<String> = calls
            .iter()
            .map(|(k, &v)| match per(v) {
                Some(p) => format!("{k} {p:.2}"),
                None => format!("{k} {v}"),
            })
            .collect();
        self.line(format!(
            "  redis:       {total} commands = {} per {unit} ({}){}",
            per(total).map_or("n/a".to_string(), |p| format!("{p:.2}")),
            detail.join(", "),
            w.redis_cpu_s.map_or(String::new(), |s| format!(
                "; redis cpu {:.0}% of one core",
                100.0 * s / w.secs
            ))
        ));
    }

    fn tally(&mut self, key: &str, tally: &BTreeMap<String, u64>) {
        let obj: Map<String, Value> = tally.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        if tally.is_empty() {
            self.line("  errors:      none");
        } else {
            self.line("  errors/anomalies:");
            for (k, v) in tally {
                self.line(format!("    {v:>8} × {k}"));
            }
        }
        self.set(key, Value::Object(obj));
    }

    fn finish(self) {
        if self.json {
            println!("{}", Value::Object(self.map));
        }
    }
}

fn round2(v: f64) -> f64 {
    if v.is_finite() {
        (v * 100.0).round() / 100.0
    } else {
        0.0
    }
}

fn progress(text: impl AsRef<str>) {
    eprintln!("[loadgen] {}", text.as_ref());
}

// ---------------------------------------------------------------------------------------
// WebSocket client plumbing
// ---------------------------------------------------------------------------------------

fn ws_config(read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(read_buffer)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// The constant messages clients send, serialized once from the shared protocol types.
struct Msgs {
    hello: Utf8Bytes,
    join: Utf8Bytes,
    leave: Utf8Bytes,
}

impl Msgs {
    fn new() -> Msgs {
        Msgs {
            hello: ClientMessage::Hello {
                version: PROTOCOL_VERSION,
                client: CLIENT_NAME.to_string(),
                counts: false,
                resume: None,
            }
            .to_json()
            .into(),
            join: ClientMessage::Join {
                interests: Vec::new(),
            }
            .to_json()
            .into(),
            leave: ClientMessage::Leave.to_json().into(),
        }
    }
}

/// The fields of a server message the generator looks at, borrowed from the frame
/// (cheaper than a full `ServerMessage` on the hot path).
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(default, borrow)]
    match_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    role: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    payload: Option<PayloadPeek<'a>>,
}

#[derive(Deserialize)]
struct PayloadPeek<'a> {
    #[serde(default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    t: Option<u64>,
}

fn parse_incoming(text: &str) -> Option<Incoming<'_>> {
    serde_json::from_str(text).ok()
}

/// The next text frame (pings are answered by tungstenite while reading).
async fn next_text(ws: &mut Ws) -> Result<Utf8Bytes> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t),
            Some(Ok(Message::Close(frame))) => match frame {
                Some(f) => bail!("closed by the server: {} {}", u16::from(f.code), f.reason),
                None => bail!("closed by the server"),
            },
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(anyhow!(e)),
            None => bail!("connection closed"),
        }
    }
}

async fn open_ws(t: &Target, cfg: WebSocketConfig) -> Result<Ws> {
    let tcp = timeout(CONNECT_TIMEOUT, TcpStream::connect(t.addr))
        .await
        .map_err(|_| anyhow!("TCP connect timed out"))?
        .context("TCP connect")?;
    tcp.set_nodelay(true)?;
    let (ws, _response) = timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::client_async_with_config(t.url.as_str(), tcp, Some(cfg)),
    )
    .await
    .map_err(|_| anyhow!("WebSocket handshake timed out"))?
    .context("WebSocket handshake")?;
    Ok(ws)
}

/// Connects and says hello; the welcome is checked against the shared protocol types.
async fn open_session(t: &Target, cfg: WebSocketConfig) -> Result<Ws> {
    thread_local! {
        static HELLO: Utf8Bytes = Msgs::new().hello;
    }
    let hello = HELLO.with(|h| h.clone());
    let mut ws = open_ws(t, cfg).await?;
    ws.send(Message::Text(hello))
        .await
        .context("sending hello")?;
    let text = timeout(REPLY_TIMEOUT, next_text(&mut ws))
        .await
        .map_err(|_| anyhow!("no welcome within {REPLY_TIMEOUT:?}"))??;
    match serde_json::from_str::<ServerMessage>(text.as_str()) {
        Ok(ServerMessage::Welcome { .. }) => Ok(ws),
        Ok(ServerMessage::Error { code, message }) => {
            bail!("server refused hello: {code}: {message}")
        }
        Ok(_) => bail!("expected welcome, got {}", clip(text.as_str(), 200)),
        Err(e) => bail!(
            "welcome does not match the protocol ({e}): {}",
            clip(text.as_str(), 200)
        ),
    }
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        s.to_string()
    } else {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

/// Opens `n` sessions, `parallel` at a time. Returns the sessions, the failure count and
/// the distinct failure reasons.
async fn open_sessions(
    targets: &[Target],
    n: usize,
    parallel: usize,
    cfg: WebSocketConfig,
) -> (Vec<Ws>, usize, BTreeMap<String, u64>) {
    let mut ok = Vec::with_capacity(n);
    let mut failed = 0;
    let mut reasons = BTreeMap::new();
    if targets.is_empty() {
        return (ok, n, reasons);
    }
    // Round-robin over the nodes: client i talks to node i mod N.
    let mut stream = futures_util::stream::iter(0..n)
        .map(|i| open_session(&targets[i % targets.len()], cfg))
        .buffer_unordered(parallel.max(1));
    while let Some(r) = stream.next().await {
        match r {
            Ok(ws) => ok.push(ws),
            Err(e) => {
                failed += 1;
                *reasons.entry(clip(&format!("{e:#}"), 160)).or_default() += 1;
            }
        }
    }
    (ok, failed, reasons)
}

/// Opens the clients of a throughput scenario; fails when more than 1% could not connect.
async fn open_clients(server: &ServerSide, n: usize, parallel: usize) -> Result<Vec<Ws>> {
    check_own_fds(n)?;
    let started = Instant::now();
    progress(format!("opening {n} connections ({parallel} in parallel)…"));
    let (conns, failed, reasons) =
        open_sessions(&server.targets(), n, parallel, ws_config(16 * 1024)).await;
    progress(format!(
        "{} connected in {:.2} s, {failed} failed",
        conns.len(),
        started.elapsed().as_secs_f64()
    ));
    for (why, count) in &reasons {
        progress(format!("  {count} × {why}"));
    }
    if conns.len() < 2 || failed * 100 > n {
        bail!("too many connections failed ({failed} of {n})");
    }
    Ok(conns)
}

/// Tells the tasks to stop, waits up to `grace` for them, aborts the rest; returns the
/// outputs of the tasks that finished.
async fn wind_down<T: 'static>(
    set: &mut JoinSet<T>,
    stop: &watch::Sender<bool>,
    grace: Duration,
) -> Vec<T> {
    let _ = stop.send(true);
    let deadline = tokio::time::Instant::now() + grace;
    let mut out = Vec::new();
    loop {
        match timeout_at(deadline, set.join_next()).await {
            Ok(Some(Ok(v))) => out.push(v),
            Ok(Some(Err(_))) => {}
            Ok(None) => break,
            Err(_) => {
                set.abort_all();
                while set.join_next().await.is_some() {}
                break;
            }
        }
    }
    out
}

/// Records a client task's failure (unless the run is already stopping).
fn record_failure(sh: &Shared, e: &anyhow::Error) {
    if !*sh.stop.borrow() {
        sh.c.failures.fetch_add(1, Relaxed);
        sh.tally.add(format!(
            "client connection failed: {}",
            clip(&format!("{e:#}"), 120)
        ));
    }
}

fn json_str(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

fn signal_text(match_id_json: &str, payload: &str) -> Utf8Bytes {
    let mut s = String::with_capacity(40 + match_id_json.len() + payload.len());
    s.push_str(r#"{"type":"signal","match_id":"#);
    s.push_str(match_id_json);
    s.push_str(r#","payload":"#);
    s.push_str(payload);
    s.push('}');
    s.into()
}

// ---------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------

async fn run_scenario(scenario: Scenario, nproc: usize, self_pinned: bool) -> Result<()> {
    let common = scenario
        .common()
        .cloned()
        .ok_or_else(|| anyhow!("internal: no common options"))?;
    let mut server = setup_server(&common, nproc).await?;
    let mut rep = Report::new(common.json);
    let tck = clk_tck();
    rep.set("scenario", scenario.name());
    let first = server.first();
    let spawned = first.spawned.is_some();
    rep.set("server_url", first.target.url.clone());
    rep.set("server_spawned", spawned);
    rep.set("server_pid", first.pid.map_or(Value::Null, |p| json!(p)));
    rep.set("nodes", server.nodes.len());
    rep.set(
        "node_urls",
        json!(server
            .nodes
            .iter()
            .map(|n| n.target.url.clone())
            .collect::<Vec<_>>()),
    );
    rep.set(
        "redis_url",
        server
            .redis
            .as_ref()
            .map_or(Value::Null, |r| json!(r.url.clone())),
    );
    rep.set(
        "server_pinned_cpu",
        server.pinned_cpu.map_or(Value::Null, |c| json!(c)),
    );
    rep.set(
        "loadgen_pinned_cpu",
        if self_pinned {
            json!(common.client_cpu)
        } else {
            Value::Null
        },
    );
    rep.set("nproc", nproc);
    rep.set("clk_tck", tck);
    if let Some(s) = &first.spawned {
        rep.set("server_bin", s.bin.display().to_string());
        rep.set(
            "server_bin_mtime_unix",
            s.bin_mtime.map_or(Value::Null, |t| json!(t)),
        );
    }
    rep.line(format!(
        "peer-stream-loadgen {}: server {}{} ({}{}), generator {}",
        scenario.name(),
        first.target.url,
        match (server.nodes.len(), &server.redis) {
            (1, None) => String::new(),
            (n, None) => format!(" and {} more node(s)", n - 1),
            (n, Some(r)) => format!(
                " and {} more node(s), Redis {}{}",
                n - 1,
                r.url,
                r.pinned_cpu
                    .map_or(String::new(), |c| format!(" (pinned to CPU {c})"))
            ),
        },
        if spawned { "spawned" } else { "external" },
        server
            .pinned_cpu
            .map_or(String::new(), |c| format!(", pinned to CPU {c}")),
        if self_pinned {
            format!("pinned to CPU {}", common.client_cpu)
        } else {
            "not pinned".to_string()
        },
    ));

    let result = match &scenario {
        Scenario::Bare(a) => bare(a, &server, &mut rep, tck).await,
        Scenario::Full(a) => full(a, &server, &mut rep, tck).await,
        Scenario::Relay(a) => relay(a, &server, &mut rep, tck).await,
        Scenario::Idle(a) => idle(a, &server, &mut rep, tck).await,
        Scenario::IdleWorker(_) => Err(anyhow!("internal: worker is not a scenario")),
    };

    let mut exited = None;
    let mut log_lines = 0;
    for (i, node) in server.nodes.iter_mut().enumerate() {
        let Some(spawned) = node.spawned.as_mut() else {
            continue;
        };
        if let Some(status) = spawned.exited() {
            rep.line(format!(
                "  SERVER (node {i}) EXITED during the run: {status}"
            ));
            rep.set("server_exited", status.clone());
            exited = Some(status);
        }
        let log = spawned.log_text();
        let lines = log.lines().count();
        log_lines += lines;
        if lines > 0 {
            eprintln!(
                "[loadgen] node {i} logged {lines} line(s) at warn level or above; last ones:"
            );
            eprintln!("{}", tail(&log, 15));
        }
    }
    if server.nodes.iter().any(|n| n.spawned.is_some()) {
        rep.set("server_log_lines", log_lines);
    }
    result?;
    rep.finish();
    match exited {
        Some(status) => Err(anyhow!("the server exited during the run ({status})")),
        None => Ok(()),
    }
}

// --- bare ------------------------------------------------------------------------------

async fn bare(a: &BareArgs, server: &ServerSide, rep: &mut Report, tck: u64) -> Result<()> {
    let duration = check_duration("duration", a.run.duration, MAX_DURATION_SECS)?;
    let warmup = check_duration("warmup", a.run.warmup, MAX_WARMUP_SECS)?;
    let conns = open_clients(server, a.clients, a.run.connect_parallel).await?;
    let held = conns.len();
    let msgs = Arc::new(Msgs::new());
    let (sh, stop) = Shared::new();
    let mut set = JoinSet::new();
    for ws in conns {
        let (sh, msgs) = (sh.clone(), msgs.clone());
        set.spawn(async move {
            if let Err(e) = bare_client(ws, &sh, &msgs).await {
                record_failure(&sh, &e);
            }
        });
    }
    progress(format!(
        "bare: {held} clients looping join → matched → leave; warm-up {:.1} s, window {:.1} s",
        warmup.as_secs_f64(),
        duration.as_secs_f64()
    ));
    sleep(warmup).await;
    let s0 = Snap::take(server, &sh.c);
    sleep(duration).await;
    let s1 = Snap::take(server, &sh.c);
    wind_down(&mut set, &stop, STOP_GRACE).await;
    let w = Window::between(&s0, &s1, tck);

    let pairings = w.c.matched / 2;
    let rate = pairings as f64 / w.secs;
    rep.line(format!(
        "bare pairings: {rate:.0}/s ({pairings} pairings in {:.2} s, {held} clients)",
        w.secs
    ));
    rep.set("clients", a.clients);
    rep.set("connections_held", held);
    rep.set("duration_s", round2(w.secs));
    rep.set("pairings", pairings);
    rep.set("pairings_per_sec", round2(rate));
    rep.cpu("", &w, "pairing", pairings, false);
    rep.set("client_failures", w.c.failures);
    rep.tally("errors", &sh.tally.snapshot());
    Ok(())
}

async fn bare_client(mut ws: Ws, sh: &Shared, m: &Msgs) -> Result<()> {
    let stopped = sh.stopped();
    tokio::pin!(stopped);
    ws.send(Message::Text(m.join.clone())).await?;
    loop {
        let text = tokio::select! {
            biased;
            () = &mut stopped => break,
            r = next_text(&mut ws) => r?,
        };
        let Some(msg) = parse_incoming(text.as_str()) else {
            sh.anomaly("unparsable server message");
            continue;
        };
        match msg.ty.as_ref() {
            "matched" => {
                sh.c.matched.fetch_add(1, Relaxed);
                ws.feed(Message::Text(m.leave.clone())).await?;
                ws.feed(Message::Text(m.join.clone())).await?;
                ws.flush().await?;
            }
            "queued" | "partner_left" => {}
            "error" => sh.server_error(msg.code.as_deref()),
            other => sh.anomaly(&format!("unexpected `{}` message", clip(other, 32))),
        }
    }
    let _ = ws.send(Message::Text(m.leave.clone())).await;
    let _ = ws.close(None).await;
    Ok(())
}

// --- full ------------------------------------------------------------------------------

/// Pre-serialized signal payloads of one negotiation.
struct FullPayloads {
    offer: String,
    answer: String,
    candidates: Vec<String>,
}

impl FullPayloads {
    fn new(sdp_bytes: usize, candidates: usize) -> FullPayloads {
        let sdp = |kind: &str| {
            let mut s = format!(
                "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
                 a=group:BUNDLE 0 1\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS {kind}\r\n"
            );
            let lines = [
                "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 104 105 106 107\r\n",
                "c=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n",
                "a=ice-ufrag:Xq3b\r\na=ice-pwd:2o9ZbL1oE5u0bE6m2iQ1YnHz\r\na=ice-options:trickle\r\n",
                "a=fingerprint:sha-256 6B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08\r\n",
                "a=setup:actpass\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\na=rtcp-rsize\r\n",
                "a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 goog-remb\r\na=rtcp-fb:96 transport-cc\r\na=rtcp-fb:96 ccm fir\r\n",
                "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n",
            ];
            let mut i = 0;
            while s.len() < sdp_bytes {
                s.push_str(lines[i % lines.len()]);
                i += 1;
            }
            s.truncate(sdp_bytes.max(1));
            s
        };
        FullPayloads {
            offer: json!({"kind": "offer", "sdp": sdp("offer")}).to_string(),
            answer: json!({"kind": "answer", "sdp": sdp("answer")}).to_string(),
            candidates: (0..candidates)
                .map(|i| {
                    json!({
                        "kind": "candidate",
                        "candidate": format!(
                            "candidate:{} 1 udp 2122260223 192.168.1.{} {} typ host generation 0 ufrag Xq3b network-id 1",
                            1_000_000 + i,
                            10 + i % 200,
                            50_000 + i
                        ),
                        "sdp_mid": "0",
                        "sdp_mline_index": 0
                    })
                    .to_string()
                })
                .collect(),
        }
    }
}

async fn full(a: &FullArgs, server: &ServerSide, rep: &mut Report, tck: u64) -> Result<()> {
    let duration = check_duration("duration", a.run.duration, MAX_DURATION_SECS)?;
    let warmup = check_duration("warmup", a.run.warmup, MAX_WARMUP_SECS)?;
    if a.candidates > 100 || a.sdp_bytes > 60_000 {
        bail!("--candidates is at most 100 and --sdp-bytes at most 60000");
    }
    let conns = open_clients(server, a.clients, a.run.connect_parallel).await?;
    let held = conns.len();
    let msgs = Arc::new(Msgs::new());
    let payloads = Arc::new(FullPayloads::new(a.sdp_bytes, a.candidates));
    let (sh, stop) = Shared::new();
    let mut set = JoinSet::new();
    for ws in conns {
        let (sh, msgs, payloads) = (sh.clone(), msgs.clone(), payloads.clone());
        set.spawn(async move {
            if let Err(e) = full_client(ws, &sh, &msgs, &payloads).await {
                record_failure(&sh, &e);
            }
        });
    }
    progress(format!(
        "full: {held} clients negotiating (offer + answer of {} B, {} candidates each way); \
         warm-up {:.1} s, window {:.1} s",
        a.sdp_bytes,
        a.candidates,
        warmup.as_secs_f64(),
        duration.as_secs_f64()
    ));
    sleep(warmup).await;
    let s0 = Snap::take(server, &sh.c);
    sleep(duration).await;
    let s1 = Snap::take(server, &sh.c);
    wind_down(&mut set, &stop, STOP_GRACE).await;
    let w = Window::between(&s0, &s1, tck);

    // Each side counts a completion when it received everything from its partner.
    let full_pairings = w.c.completed / 2;
    let rate = full_pairings as f64 / w.secs;
    let relayed_per = 2 * (1 + a.candidates as u64);
    rep.line(format!(
        "full pairings: {rate:.0}/s ({full_pairings} in {:.2} s, {held} clients, {relayed_per} \
         relayed signals + 2 matched + 2 leave each; {} pairings started)",
        w.secs,
        w.c.matched / 2
    ));
    rep.set("clients", a.clients);
    rep.set("connections_held", held);
    rep.set("candidates", a.candidates);
    rep.set("sdp_bytes", a.sdp_bytes);
    rep.set("duration_s", round2(w.secs));
    rep.set("full_pairings", full_pairings);
    rep.set("full_pairings_per_sec", round2(rate));
    rep.set(
        "signals_relayed_per_sec",
        round2(w.c.received as f64 / w.secs),
    );
    rep.set("negotiations_aborted", w.c.aborted);
    rep.cpu("", &w, "full_pairing", full_pairings, false);
    rep.set("client_failures", w.c.failures);
    rep.tally("errors", &sh.tally.snapshot());
    Ok(())
}

/// One side of the current match in `full`.
struct Negotiation {
    id_json: String,
    id: String,
    offerer: bool,
    got_sdp: bool,
    candidates: usize,
}

async fn full_client(mut ws: Ws, sh: &Shared, m: &Msgs, p: &FullPayloads) -> Result<()> {
    let stopped = sh.stopped();
    tokio::pin!(stopped);
    let want = p.candidates.len();
    let mut cur: Option<Negotiation> = None;
    ws.send(Message::Text(m.join.clone())).await?;
    loop {
        let text = tokio::select! {
            biased;
            () = &mut stopped => break,
            r = next_text(&mut ws) => r?,
        };
        let Some(msg) = parse_incoming(text.as_str()) else {
            sh.anomaly("unparsable server message");
            continue;
        };
        match msg.ty.as_ref() {
            "matched" => {
                sh.c.matched.fetch_add(1, Relaxed);
                if cur.is_some() {
                    sh.anomaly("matched while still in a match");
                }
                let id = msg.match_id.as_deref().unwrap_or_default().to_string();
                let offerer = msg.role.as_deref() == Some("offerer");
                let n = Negotiation {
                    id_json: json_str(&id),
                    id,
                    offerer,
                    got_sdp: false,
                    candidates: 0,
                };
                if offerer {
                    ws.feed(Message::Text(signal_text(&n.id_json, &p.offer)))
                        .await?;
                    for c in &p.candidates {
                        ws.feed(Message::Text(signal_text(&n.id_json, c))).await?;
                    }
                    ws.flush().await?;
                    sh.c.sent.fetch_add(1 + want as u64, Relaxed);
                }
                cur = Some(n);
            }
            "signal" => {
                sh.c.received.fetch_add(1, Relaxed);
                let Some(n) = cur.as_mut() else {
                    sh.anomaly("signal outside a match");
                    continue;
                };
                if msg.match_id.as_deref() != Some(n.id.as_str()) {
                    sh.anomaly("signal for another match");
                    continue;
                }
                match msg.payload.as_ref().and_then(|p| p.kind.as_deref()) {
                    Some("offer") if !n.offerer && !n.got_sdp => {
                        n.got_sdp = true;
                        ws.feed(Message::Text(signal_text(&n.id_json, &p.answer)))
                            .await?;
                        for c in &p.candidates {
                            ws.feed(Message::Text(signal_text(&n.id_json, c))).await?;
                        }
                        ws.flush().await?;
                        sh.c.sent.fetch_add(1 + want as u64, Relaxed);
                    }
                    Some("answer") if n.offerer && !n.got_sdp => n.got_sdp = true,
                    Some("candidate") => n.candidates += 1,
                    _ => sh.anomaly("unexpected signal payload"),
                }
                if n.got_sdp && n.candidates >= want {
                    sh.c.completed.fetch_add(1, Relaxed);
                    cur = None;
                    ws.feed(Message::Text(m.leave.clone())).await?;
                    ws.feed(Message::Text(m.join.clone())).await?;
                    ws.flush().await?;
                }
            }
            "partner_left" => {
                // Only a partner_left of the match still being negotiated matters; one for an
                // already completed match is the partner's own leave.
                if cur
                    .as_ref()
                    .is_some_and(|n| msg.match_id.as_deref() == Some(n.id.as_str()))
                {
                    sh.c.aborted.fetch_add(1, Relaxed);
                    sh.anomaly("partner left before the negotiation finished");
                    cur = None;
                    ws.send(Message::Text(m.join.clone())).await?;
                }
            }
            "queued" => {}
            "error" => sh.server_error(msg.code.as_deref()),
            other => sh.anomaly(&format!("unexpected `{}` message", clip(other, 32))),
        }
    }
    let _ = ws.send(Message::Text(m.leave.clone())).await;
    let _ = ws.close(None).await;
    Ok(())
}

// --- relay -----------------------------------------------------------------------------

/// One client of a matched pair in `relay`.
struct Peer {
    ws: Ws,
    /// `{"type":"signal","match_id":"…","payload":{"kind":"bench","t":`
    prefix: String,
}

#[derive(Clone, Copy, Debug)]
enum RelayMode {
    /// A pacer spreads `rate` messages per second evenly over the clients and over time.
    Rate { rate: f64 },
    /// Each client keeps `window` messages in flight: it sends one per message received.
    Closed { window: usize },
}

struct PhaseResult {
    w: Window,
    latencies_ns: Vec<u64>,
    clients: usize,
    tally: BTreeMap<String, u64>,
}

impl PhaseResult {
    fn pct_us(&self, q: f64) -> Option<f64> {
        let v = &self.latencies_ns;
        if v.is_empty() {
            return None;
        }
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Some(v[rank - 1] as f64 / 1000.0)
    }
}

async fn relay(a: &RelayArgs, server: &ServerSide, rep: &mut Report, tck: u64) -> Result<()> {
    let duration = check_duration("duration", a.run.duration, MAX_DURATION_SECS)?;
    let warmup = check_duration("warmup", a.run.warmup, MAX_WARMUP_SECS)?;
    let max_duration = check_duration("max-duration", a.max_duration, MAX_DURATION_SECS)?;
    if a.window == 0 || a.window > 64 {
        bail!("--window must be in 1..=64");
    }
    if a.pad > 60_000 {
        bail!("--pad is at most 60000 bytes");
    }
    if let Some(r) = a.rate {
        if !r.is_finite() || r <= 0.0 || r > 5_000_000.0 {
            bail!("--rate must be in (0, 5000000] messages per second");
        }
    }
    let mut peers = open_pairs(server, a.pairs, a.run.connect_parallel).await?;
    rep.set("pairs", peers.len() / 2);
    rep.set("connections_held", peers.len());
    rep.set("pad_bytes", a.pad);
    let suffix = format!(r#","pad":{}}}}}"#, json_str(&"x".repeat(a.pad)));

    // Maximum throughput (closed loop), unless a rate was given.
    let mut tally = BTreeMap::new();
    let mut max_rate = None;
    if a.rate.is_none() {
        let window = if a.max { duration } else { max_duration };
        progress(format!(
            "relay max: {} clients, {} messages in flight each; warm-up {:.1} s, window {:.1} s",
            peers.len(),
            a.window,
            warmup.as_secs_f64(),
            window.as_secs_f64()
        ));
        let (back, r) = relay_phase(
            peers,
            RelayMode::Closed { window: a.window },
            &suffix,
            server,
            warmup,
            window,
            tck,
        )
        .await?;
        peers = back;
        let rate = r.w.c.received as f64 / r.w.secs;
        max_rate = Some(rate);
        rep.line(format!(
            "relay max throughput: {rate:.0} msgs/s ({} relayed in {:.2} s, {} clients × {} in flight)",
            r.w.c.received, r.w.secs, r.clients, a.window
        ));
        report_latency(rep, "relay_max_", &r);
        rep.set("relay_max_msgs_per_sec", round2(rate));
        rep.set("relay_max_window", a.window);
        rep.cpu("relay_max_", &r.w, "msg", r.w.c.received, false);
        if a.max {
            for (alias, key) in [
                ("relay_p50_us", "relay_max_p50_us"),
                ("relay_p99_us", "relay_max_p99_us"),
                ("relay_p999_us", "relay_max_p999_us"),
                ("server_cpu_us_per_msg", "relay_max_server_cpu_us_per_msg"),
            ] {
                let v = rep.map.get(key).cloned().unwrap_or(Value::Null);
                rep.set(alias, v);
            }
            merge_tally(&mut tally, "max phase", &r);
            rep.tally("errors", &tally);
            return Ok(());
        }
        merge_tally(&mut tally, "max phase", &r);
        if peers.len() < 2 {
            bail!("every client was lost during the max phase");
        }
    }

    let rate = match (a.rate, max_rate) {
        (Some(r), _) => r,
        (None, Some(m)) if m > 0.0 => m / 2.0,
        _ => bail!("the max phase relayed nothing; cannot derive a rate"),
    };
    let per_client = rate / peers.len() as f64;
    let period = Duration::from_secs_f64(1.0 / per_client);
    progress(format!(
        "relay rate: {rate:.0} msgs/s offered by {} clients (one every {:.2} ms each); \
         warm-up {:.1} s, window {:.1} s",
        peers.len(),
        period.as_secs_f64() * 1e3,
        warmup.as_secs_f64(),
        duration.as_secs_f64()
    ));
    let (_peers, r) = relay_phase(
        peers,
        RelayMode::Rate { rate },
        &suffix,
        server,
        warmup,
        duration,
        tck,
    )
    .await?;
    let sent_rate = r.w.c.sent as f64 / r.w.secs;
    let recv_rate = r.w.c.received as f64 / r.w.secs;
    rep.line(format!(
        "relay at {rate:.0} msgs/s offered{}: sent {sent_rate:.0}/s, relayed {recv_rate:.0}/s, {} clients",
        max_rate.map_or(String::new(), |_| " (half of max)".to_string()),
        r.clients
    ));
    report_latency(rep, "relay_", &r);
    rep.set("relay_rate_offered", round2(rate));
    rep.set("relay_rate_sent", round2(sent_rate));
    rep.set("relay_rate_relayed", round2(recv_rate));
    rep.cpu("", &r.w, "msg", r.w.c.received, true);
    if sent_rate < 0.95 * rate {
        rep.line("  note: the generator could not send at the offered rate");
    }
    merge_tally(&mut tally, "rate phase", &r);
    rep.tally("errors", &tally);
    Ok(())
}

/// Adds a phase's tally to `all`, each entry prefixed with the phase name.
fn merge_tally(all: &mut BTreeMap<String, u64>, phase: &str, r: &PhaseResult) {
    for (k, v) in &r.tally {
        *all.entry(format!("{phase}: {k}")).or_default() += v;
    }
}

fn report_latency(rep: &mut Report, prefix: &str, r: &PhaseResult) {
    let p50 = r.pct_us(0.50);
    let p90 = r.pct_us(0.90);
    let p99 = r.pct_us(0.99);
    let p999 = r.pct_us(0.999);
    let max = r.pct_us(1.0);
    let f = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.0}"));
    rep.line(format!(
        "  one-way latency µs: p50 {} p90 {} p99 {} p99.9 {} max {} ({} samples)",
        f(p50),
        f(p90),
        f(p99),
        f(p999),
        f(max),
        r.latencies_ns.len()
    ));
    rep.set_opt(&format!("{prefix}p50_us"), p50);
    rep.set_opt(&format!("{prefix}p90_us"), p90);
    rep.set_opt(&format!("{prefix}p99_us"), p99);
    rep.set_opt(&format!("{prefix}p999_us"), p999);
    rep.set_opt(&format!("{prefix}max_us"), max);
    rep.set(&format!("{prefix}samples"), r.latencies_ns.len());
}

/// Opens 2 × `pairs` sessions, joins them all and waits until each is matched.
///
/// With several nodes every pair is split over two nodes (pair k: node k mod N and node
/// k + 1 mod N), so every relayed message crosses nodes: the two sides of a pair join
/// with an interest of their own (`p<k>`), which the server pairs first.
async fn open_pairs(server: &ServerSide, pairs: usize, parallel: usize) -> Result<Vec<Peer>> {
    if pairs == 0 {
        bail!("--pairs must be at least 1");
    }
    let conns: Vec<(Ws, Utf8Bytes)> = if server.nodes.len() < 2 {
        let join = Msgs::new().join;
        open_clients(server, 2 * pairs, parallel)
            .await?
            .into_iter()
            .map(|ws| (ws, join.clone()))
            .collect()
    } else {
        cross_node_clients(server, pairs, parallel).await?
    };
    let mut set = JoinSet::new();
    for (mut ws, join) in conns {
        set.spawn(async move {
            ws.send(Message::Text(join)).await?;
            let deadline = tokio::time::Instant::now() + MATCH_TIMEOUT;
            loop {
                let text = timeout_at(deadline, next_text(&mut ws))
                    .await
                    .map_err(|_| anyhow!("not matched within {MATCH_TIMEOUT:?}"))??;
                if let Some(msg) = parse_incoming(text.as_str()) {
                    if msg.ty == "matched" {
                        let id = msg.match_id.as_deref().unwrap_or_default();
                        let prefix = format!(
                            r#"{{"type":"signal","match_id":{},"payload":{{"kind":"bench","t":"#,
                            json_str(id)
                        );
                        return Ok::<Peer, anyhow::Error>(Peer { ws, prefix });
                    }
                }
            }
        });
    }
    let mut peers = Vec::with_capacity(2 * pairs);
    let mut failed = 0;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(p)) => peers.push(p),
            _ => failed += 1,
        }
    }
    progress(format!("{} clients matched, {failed} not", peers.len()));
    if peers.len() < 2 {
        bail!("no pair could be matched");
    }
    Ok(peers)
}

/// Both sides of every pair, each with the `join` that names the pair's own interest.
async fn cross_node_clients(
    server: &ServerSide,
    pairs: usize,
    parallel: usize,
) -> Result<Vec<(Ws, Utf8Bytes)>> {
    let n = server.nodes.len();
    check_own_fds(2 * pairs)?;
    let mut per_node: Vec<Vec<usize>> = vec![Vec::new(); n];
    for k in 0..pairs {
        per_node[k % n].push(k);
        per_node[(k + 1) % n].push(k);
    }
    progress(format!(
        "opening {} connections over {n} nodes, every pair split over two nodes…",
        2 * pairs
    ));
    let mut out = Vec::with_capacity(2 * pairs);
    for (node, ks) in server.nodes.iter().zip(&per_node) {
        let (conns, failed, reasons) = open_sessions(
            std::slice::from_ref(&node.target),
            ks.len(),
            parallel,
            ws_config(16 * 1024),
        )
        .await;
        if failed > 0 {
            let why: Vec<String> = reasons.iter().map(|(k, v)| format!("{v} × {k}")).collect();
            bail!(
                "{failed} connections to {} failed: {}",
                node.target.url,
                why.join("; ")
            );
        }
        for (ws, &k) in conns.into_iter().zip(ks) {
            let join: Utf8Bytes = ClientMessage::Join {
                interests: vec![format!("p{k}")],
            }
            .to_json()
            .into();
            out.push((ws, join));
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn relay_phase(
    peers: Vec<Peer>,
    mode: RelayMode,
    suffix: &str,
    server: &ServerSide,
    warmup: Duration,
    window: Duration,
    tck: u64,
) -> Result<(Vec<Peer>, PhaseResult)> {
    let (sh, stop) = Shared::new();
    let suffix: Arc<str> = Arc::from(suffix);
    let clients = peers.len();
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut set = JoinSet::new();
    let mut triggers = Vec::with_capacity(clients);
    for p in peers {
        let trigger = Arc::new(Trigger::default());
        triggers.push(trigger.clone());
        let (sh, suffix) = (sh.clone(), suffix.clone());
        set.spawn(async move {
            let r = relay_client(p, &sh, mode, &suffix, start, &trigger).await;
            if let Err(e) = &r {
                record_failure(&sh, e);
            }
            r.ok()
        });
    }
    let pacer = match mode {
        RelayMode::Rate { rate } => {
            // Visit the clients in a random order, then round-robin: every client sends at
            // rate / clients, and consecutive messages come from different connections.
            let mut rng = rand::rng();
            for i in (1..triggers.len()).rev() {
                triggers.swap(i, rng.random_range(0..=i));
            }
            Some(tokio::spawn(pace(triggers, rate, start, sh.stopped())))
        }
        RelayMode::Closed { .. } => None,
    };
    sleep(warmup).await;
    sh.window_start.store(sh.now_ns(), Relaxed);
    let s0 = Snap::take(server, &sh.c);
    sleep(window).await;
    sh.window_end.store(sh.now_ns(), Relaxed);
    let s1 = Snap::take(server, &sh.c);
    // Messages sent in the window but still in flight are drained and counted.
    let outs = wind_down(&mut set, &stop, STOP_GRACE + DRAIN_QUIET * 2).await;
    if let Some(pacer) = pacer {
        pacer.abort();
    }
    let w = Window::between(&s0, &s1, tck);
    let mut back = Vec::with_capacity(clients);
    let mut latencies_ns = Vec::new();
    for (p, lats) in outs.into_iter().flatten() {
        back.push(p);
        latencies_ns.extend(lats);
    }
    latencies_ns.sort_unstable();
    Ok((
        back,
        PhaseResult {
            w,
            latencies_ns,
            clients,
            tally: sh.tally.snapshot(),
        },
    ))
}

async fn send_bench(p: &mut Peer, sh: &Shared, suffix: &str, flush: bool) -> Result<()> {
    let t = sh.now_ns();
    let mut s = String::with_capacity(p.prefix.len() + 20 + suffix.len());
    s.push_str(&p.prefix);
    s.push_str(&t.to_string());
    s.push_str(suffix);
    sh.c.sent.fetch_add(1, Relaxed);
    if flush {
        p.ws.send(Message::Text(s.into())).await?;
    } else {
        p.ws.feed(Message::Text(s.into())).await?;
    }
    Ok(())
}

/// Handles one received frame; true when it was a bench message.
fn on_relay_text(text: &str, sh: &Shared, lats: &mut Vec<u64>) -> bool {
    let now = sh.now_ns();
    let Some(msg) = parse_incoming(text) else {
        sh.anomaly("unparsable server message");
        return false;
    };
    match msg.ty.as_ref() {
        "signal" => {
            let Some(t) = msg
                .payload
                .as_ref()
                .filter(|p| p.kind.as_deref() == Some("bench"))
                .and_then(|p| p.t)
            else {
                sh.anomaly("unexpected signal payload");
                return false;
            };
            sh.c.received.fetch_add(1, Relaxed);
            if t >= sh.window_start.load(Relaxed) && t < sh.window_end.load(Relaxed) {
                lats.push(now.saturating_sub(t));
            }
            true
        }
        "error" => {
            sh.server_error(msg.code.as_deref());
            false
        }
        "partner_left" => {
            sh.anomaly("partner left");
            false
        }
        other => {
            sh.anomaly(&format!("unexpected `{}` message", clip(other, 32)));
            false
        }
    }
}

/// Tells one relay client how many messages to send now.
#[derive(Default)]
struct Trigger {
    due: AtomicU64,
    notify: Notify,
}

/// Sends `rate` messages per second in total, evenly spaced: message k is due at
/// `start + k / rate` and goes to client k mod n. Tokio timers have a 1 ms resolution,
/// which would release the messages in 1 ms bursts (and measure queueing behind the
/// burst rather than the relay), so when the next message is less than 2 ms away the
/// pacer yields to the runtime in a loop instead of sleeping (it busy-polls its core).
async fn pace(
    triggers: Vec<Arc<Trigger>>,
    rate: f64,
    start: tokio::time::Instant,
    stopped: impl Future<Output = ()>,
) {
    if triggers.is_empty() || rate.is_nan() || rate <= 0.0 {
        return;
    }
    tokio::pin!(stopped);
    let start: Instant = start.into_std();
    tokio::time::sleep_until(start.into()).await;
    let period_ns = 1e9 / rate;
    let mut sent: u64 = 0;
    let mut next_client = 0;
    loop {
        let now_ns = start.elapsed().as_nanos() as f64;
        let due = (now_ns / period_ns) as u64 + 1;
        while sent < due {
            let t = &triggers[next_client];
            t.due.fetch_add(1, Relaxed);
            t.notify.notify_one();
            next_client = (next_client + 1) % triggers.len();
            sent += 1;
        }
        let wait_ns = sent as f64 * period_ns - start.elapsed().as_nanos() as f64;
        let pause = async {
            if wait_ns > 2e6 {
                sleep(Duration::from_nanos((wait_ns - 1e6) as u64)).await;
            } else {
                tokio::task::yield_now().await;
            }
        };
        tokio::select! {
            biased;
            () = &mut stopped => return,
            () = pause => {}
        }
    }
}

async fn relay_client(
    mut p: Peer,
    sh: &Shared,
    mode: RelayMode,
    suffix: &str,
    start: tokio::time::Instant,
    trigger: &Trigger,
) -> Result<(Peer, Vec<u64>)> {
    let mut lats = Vec::new();
    let stopped = sh.stopped();
    tokio::pin!(stopped);
    match mode {
        RelayMode::Rate { .. } => loop {
            tokio::select! {
                biased;
                () = &mut stopped => break,
                () = trigger.notify.notified() => {
                    let n = trigger.due.swap(0, Relaxed);
                    for _ in 0..n {
                        send_bench(&mut p, sh, suffix, false).await?;
                    }
                    p.ws.flush().await?;
                }
                r = next_text(&mut p.ws) => {
                    let text = r?;
                    on_relay_text(text.as_str(), sh, &mut lats);
                }
            }
        },
        RelayMode::Closed { window } => {
            tokio::time::sleep_until(start).await;
            for _ in 0..window {
                send_bench(&mut p, sh, suffix, false).await?;
            }
            p.ws.flush().await?;
            loop {
                let text = tokio::select! {
                    biased;
                    () = &mut stopped => break,
                    r = next_text(&mut p.ws) => r?,
                };
                if on_relay_text(text.as_str(), sh, &mut lats) {
                    send_bench(&mut p, sh, suffix, true).await?;
                }
            }
        }
    }
    // Drain what is still in flight (its latency counts when it was sent in the window).
    while let Ok(r) = timeout(DRAIN_QUIET, next_text(&mut p.ws)).await {
        let text = r?;
        on_relay_text(text.as_str(), sh, &mut lats);
    }
    Ok((p, lats))
}

// --- idle ------------------------------------------------------------------------------

/// One `idle-worker` child process.
struct Worker {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    count: usize,
}

fn spawn_worker(
    exe: &Path,
    target: &Target,
    count: usize,
    join: bool,
    parallel: usize,
) -> Result<Worker> {
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("idle-worker")
        .arg("--url")
        .arg(&target.url)
        .arg("--count")
        .arg(count.to_string())
        .arg("--connect-parallel")
        .arg(parallel.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if join {
        cmd.arg("--join");
    }
    let mut child = cmd.spawn().context("spawning an idle worker")?;
    let stdin = child.stdin.take();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("worker has no stdout"))?;
    Ok(Worker {
        child,
        stdin,
        lines: tokio::io::BufReader::new(stdout).lines(),
        count,
    })
}

/// Reads a worker's `ready ok=N failed=M` line.
async fn worker_ready(w: &mut Worker) -> Result<(usize, usize)> {
    let line = timeout(WORKER_READY_TIMEOUT, w.lines.next_line())
        .await
        .map_err(|_| anyhow!("worker not ready within {WORKER_READY_TIMEOUT:?}"))?
        .context("reading from a worker")?
        .ok_or_else(|| anyhow!("worker exited before it was ready"))?;
    let field = |name: &str| -> Option<usize> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    match (line.starts_with("ready"), field("ok"), field("failed")) {
        (true, Some(ok), Some(failed)) => Ok((ok, failed)),
        _ => bail!("unexpected worker output: {line}"),
    }
}

async fn stop_workers(workers: &mut Vec<Worker>) {
    for w in workers.iter_mut() {
        w.stdin = None; // EOF tells the worker to close its connections and exit
    }
    for w in workers.iter_mut() {
        if timeout(Duration::from_secs(10), w.child.wait())
            .await
            .is_err()
        {
            let _ = w.child.kill().await;
        }
    }
    workers.clear();
}

async fn idle(a: &IdleArgs, server: &ServerSide, rep: &mut Report, tck: u64) -> Result<()> {
    let settle = check_duration("settle", a.settle, 60.0)?;
    if a.per_worker == 0 || a.per_worker > 15_000 {
        bail!("--per-worker must be in 1..=15000");
    }
    let mut steps = a.conns.clone();
    steps.sort_unstable();
    steps.dedup();
    steps.retain(|&n| n > 0);
    if steps.is_empty() {
        bail!("--conns needs at least one positive count");
    }
    if server.nodes.len() != 1 {
        bail!("idle measures one node's memory: run it with one node");
    }
    let node = server.first();
    let pid = node.pid.map(|p| p.to_string());
    // Cap so that the server stays under its open-files limit and the ports suffice.
    let mut cap = MAX_IDLE_CONNS as u64;
    if let Some((Some(soft), _)) = pid.as_deref().and_then(proc_nofile) {
        cap = cap.min(soft.saturating_sub(SERVER_FD_RESERVE));
        rep.set("server_nofile_limit", soft);
    }
    if let Some(ports) = local_port_range() {
        cap = cap.min(ports.saturating_sub(1000));
    }
    let cap = usize::try_from(cap).unwrap_or(MAX_IDLE_CONNS);
    if steps.iter().any(|&n| n > cap) {
        progress(format!(
            "capping at {cap} connections (server open-files limit minus {SERVER_FD_RESERVE}, \
             local port range)"
        ));
    }
    let mut steps: Vec<usize> = steps.into_iter().map(|n| n.min(cap)).collect();
    steps.dedup();
    let exe = std::env::current_exe().context("locating this executable")?;

    sleep(settle).await;
    let rss0 = pid.as_deref().and_then(|p| proc_status_kib(p, "VmRSS"));
    let fds0 = pid.as_deref().and_then(proc_fd_count);
    rep.set("rss_baseline_kib", rss0.map_or(Value::Null, |v| json!(v)));
    rep.line(format!(
        "idle: server RSS before: {}, fds {}",
        rss0.map_or("n/a".to_string(), |v| format!("{v} KiB")),
        fds0.map_or("n/a".to_string(), |v| v.to_string())
    ));

    let mut workers: Vec<Worker> = Vec::new();
    let mut held = 0usize;
    let mut requested = 0usize;
    let mut prev_rss = rss0;
    let mut step_reports = Vec::new();
    let result: Result<()> = async {
        for &step in &steps {
            if step <= requested {
                continue;
            }
            let t0 = Instant::now();
            let cpu0 = pid.as_deref().and_then(proc_cpu_ticks);
            let mut need = step - requested;
            let mut new = Vec::new();
            while need > 0 {
                let n = need.min(a.per_worker);
                new.push(spawn_worker(
                    &exe,
                    &node.target,
                    n,
                    a.join,
                    a.connect_parallel,
                )?);
                need -= n;
            }
            progress(format!(
                "opening {} more connections in {} worker process(es)…",
                step - requested,
                new.len()
            ));
            let mut opened = 0;
            let mut failed = 0;
            for w in &mut new {
                let (ok, bad) = worker_ready(w).await?;
                opened += ok;
                failed += bad;
                requested += w.count;
            }
            workers.extend(new);
            held += opened;
            let open_secs = t0.elapsed().as_secs_f64();
            let cpu1 = pid.as_deref().and_then(proc_cpu_ticks);
            progress(format!(
                "{held} connections held ({failed} failed in this step) after {open_secs:.1} s; \
                 settling {:.1} s",
                settle.as_secs_f64()
            ));
            sleep(settle).await;
            let rss = pid.as_deref().and_then(|p| proc_status_kib(p, "VmRSS"));
            let fds = pid.as_deref().and_then(proc_fd_count);
            let per_conn = match (rss0, rss) {
                (Some(a), Some(b)) if held > 0 => Some(b.saturating_sub(a) as f64 / held as f64),
                _ => None,
            };
            let incremental = match (prev_rss, rss) {
                (Some(a), Some(b)) if opened > 0 => {
                    Some(b.saturating_sub(a) as f64 / opened as f64)
                }
                _ => None,
            };
            let cpu_us_per_conn = match (cpu0, cpu1) {
                (Some(a), Some(b)) if opened > 0 => {
                    Some(b.saturating_sub(a) as f64 / tck as f64 * 1e6 / opened as f64)
                }
                _ => None,
            };
            prev_rss = rss;
            rep.line(format!(
                "idle connections: {held} held → server RSS {} ({} per connection; this step {}), \
                 fds {}, opened at {:.0} conns/s, server cpu {} per connection",
                rss.map_or("n/a".into(), |v| format!("{v} KiB")),
                per_conn.map_or("n/a".into(), |v| format!("{v:.2} KiB")),
                incremental.map_or("n/a".into(), |v| format!("{v:.2} KiB")),
                fds.map_or("n/a".into(), |v| v.to_string()),
                opened as f64 / open_secs,
                cpu_us_per_conn.map_or("n/a".into(), |v| format!("{v:.0} µs")),
            ));
            step_reports.push(json!({
                "connections_requested": step,
                "connections_held": held,
                "failed": failed,
                "rss_kib": rss,
                "rss_per_conn_kib": per_conn.map(round2),
                "rss_per_conn_incremental_kib": incremental.map(round2),
                "server_fds": fds,
                "open_secs": round2(open_secs),
                "server_cpu_us_per_conn": cpu_us_per_conn.map(round2),
            }));
            rep.set("connections_held", held);
            rep.set_opt("rss_per_conn_kib", per_conn);
            rep.set_opt("server_cpu_us_per_conn", cpu_us_per_conn);
            if let Some(spawned) = &node.spawned {
                // A server that died (e.g. out of fds) makes the figures meaningless.
                if proc_cpu_ticks(&spawned.pid().to_string()).is_none() {
                    bail!("the server process is gone");
                }
            }
        }
        Ok(())
    }
    .await;
    rep.set("idle_steps", Value::Array(step_reports));
    rep.set("joined", a.join);
    progress("closing idle connections…");
    stop_workers(&mut workers).await;
    result
}

/// `idle-worker`: opens `count` sessions, prints `ready ok=N failed=M`, keeps reading them
/// (answering pings) until stdin closes or `max_hold` passes.
async fn worker_main(a: WorkerArgs) -> Result<()> {
    let target = parse_target(&a.url)?;
    let max_hold = check_duration("max-hold", a.max_hold, 3600.0)?;
    check_own_fds(a.count)?;
    let (conns, failed, reasons) = open_sessions(
        std::slice::from_ref(&target),
        a.count,
        a.connect_parallel,
        ws_config(4096),
    )
    .await;
    for (why, n) in &reasons {
        eprintln!("[idle-worker] {n} × {why}");
    }
    let join = Msgs::new().join;
    let mut set = JoinSet::new();
    for mut ws in conns {
        let join = join.clone();
        let with_join = a.join;
        set.spawn(async move {
            if with_join && ws.send(Message::Text(join)).await.is_err() {
                return;
            }
            while let Some(Ok(_)) = ws.next().await {}
        });
    }
    // Let the joins go out before reporting ready.
    tokio::task::yield_now().await;
    let mut out = std::io::stdout();
    writeln!(out, "ready ok={} failed={failed}", set.len())?;
    out.flush()?;
    let stdin_closed = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        while let Ok(n) = stdin.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::select! {
        () = stdin_closed => {}
        () = sleep(max_hold) => {}
    }
    set.abort_all();
    Ok(())
}
