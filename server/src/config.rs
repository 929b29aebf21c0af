use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Server settings. Every flag has an environment fallback (`PEER_STREAM_*`), so a
/// self-hoster can configure the server from a systemd unit or a container without flags.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "peer-stream-server",
    version,
    about = "Peer Stream signaling server: pairs strangers and relays their WebRTC negotiation"
)]
pub struct Config {
    /// Address to listen on (HTTP, WebSocket at /ws, /healthz, /metrics).
    #[arg(long, env = "PEER_STREAM_LISTEN", default_value = "0.0.0.0:3000")]
    pub listen: SocketAddr,

    /// STUN URL handed to clients in `matched` (repeatable or comma-separated), e.g. stun:stun.example.org:3478.
    #[arg(long = "stun", env = "PEER_STREAM_STUN", value_delimiter = ',', value_parser = stun_url)]
    pub stun_urls: Vec<String>,

    /// TURN URL handed to clients (repeatable or comma-separated), e.g. turn:turn.example.org:3478?transport=udp.
    #[arg(long = "turn", env = "PEER_STREAM_TURN", value_delimiter = ',', value_parser = turn_url)]
    pub turn_urls: Vec<String>,

    /// Shared secret of the TURN server (coturn `static-auth-secret` with `use-auth-secret`).
    #[arg(
        long,
        env = "PEER_STREAM_TURN_SECRET",
        hide_env_values = true,
        value_parser = turn_secret
    )]
    pub turn_secret: Option<String>,

    /// Lifetime of TURN credentials, in seconds.
    #[arg(long, env = "PEER_STREAM_TURN_TTL", default_value_t = 600)]
    pub turn_ttl_secs: u64,

    /// How long someone with interests waits for a shared-interest match before anyone will do, in ms.
    #[arg(long, env = "PEER_STREAM_INTEREST_FALLBACK_MS", default_value_t = 5000)]
    pub interest_fallback_ms: u64,

    /// How long two people who just skipped each other are kept apart, in seconds.
    #[arg(long, env = "PEER_STREAM_REMATCH_COOLDOWN", default_value_t = 60)]
    pub rematch_cooldown_secs: u64,

    /// Largest WebSocket message accepted, in bytes; a larger one closes the connection (1009).
    #[arg(long, env = "PEER_STREAM_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024, value_parser = message_bytes)]
    pub max_message_bytes: usize,

    /// Messages per second a connection may send on average (0 turns rate limiting off).
    #[arg(long, env = "PEER_STREAM_RATE_PER_SEC", default_value_t = 20)]
    pub rate_per_sec: u32,

    /// Messages a connection may send in a burst above the average rate.
    #[arg(long, env = "PEER_STREAM_RATE_BURST", default_value_t = 60)]
    pub rate_burst: u32,

    /// Concurrent connections allowed from one IP address (0 = no limit).
    #[arg(long, env = "PEER_STREAM_MAX_CONNS_PER_IP", default_value_t = 20)]
    pub max_conns_per_ip: u32,

    /// Concurrent connections allowed in total (0 = no limit).
    #[arg(long, env = "PEER_STREAM_MAX_CONNECTIONS", default_value_t = 50_000)]
    pub max_connections: u32,

    /// Time a new connection has to send its HTTP request and then `hello`, in ms.
    #[arg(long, env = "PEER_STREAM_HELLO_TIMEOUT_MS", default_value_t = 10_000)]
    pub hello_timeout_ms: u64,

    /// Interval between WebSocket pings, in ms.
    #[arg(
        long,
        env = "PEER_STREAM_HEARTBEAT_INTERVAL_MS",
        default_value_t = 10_000
    )]
    pub heartbeat_interval_ms: u64,

    /// A connection silent (no frame, no pong) for this long is dropped, in ms.
    #[arg(
        long,
        env = "PEER_STREAM_HEARTBEAT_TIMEOUT_MS",
        default_value_t = 20_000
    )]
    pub heartbeat_timeout_ms: u64,

    /// Messages queued for one client before it counts as a slow reader and is disconnected.
    #[arg(long, env = "PEER_STREAM_OUTBOX", default_value_t = 256)]
    pub outbox_capacity: usize,

    /// How long a session whose connection was lost without a close frame waits for its
    /// client to come back with `hello` + `resume`, keeping its match or place in the queue,
    /// in seconds (0 = no resuming: a lost connection ends the session at once).
    #[arg(long, env = "PEER_STREAM_RESUME_WINDOW_SECS", default_value_t = 15)]
    pub resume_window_secs: u64,

    /// Run as one node of a cluster: the waiting queue, the online/waiting counts and the
    /// way to partners on other nodes live in this Redis (redis://HOST:PORT[/DB]); any number
    /// of nodes with the same URL act as one service. Without it: one node, in memory.
    /// Also read by `bans add|remove`, which then apply to every node of the cluster.
    #[arg(
        long,
        env = "PEER_STREAM_REDIS",
        value_name = "URL",
        value_parser = redis_url,
        global = true
    )]
    pub redis: Option<String>,

    /// Allowed values of the Origin header for /ws (repeatable or comma-separated; empty = any).
    /// Requests without an Origin (native apps) are always allowed.
    #[arg(
        long = "allow-origin",
        env = "PEER_STREAM_ALLOW_ORIGINS",
        value_delimiter = ',',
        value_parser = origin
    )]
    pub allowed_origins: Vec<String>,

    /// Take the client address from X-Forwarded-For (only behind a reverse proxy you run).
    #[arg(long, env = "PEER_STREAM_TRUST_PROXY", default_value_t = false)]
    pub trust_proxy: bool,

    /// SQLite file that keeps reports and bans (also for the `bans`/`reports` commands).
    #[arg(
        long = "db",
        env = "PEER_STREAM_DB",
        default_value = "peer-stream.sqlite3",
        global = true
    )]
    pub db_path: PathBuf,

    /// Distinct sessions whose reports within the window ban an address (0 = never ban).
    #[arg(long, env = "PEER_STREAM_BAN_THRESHOLD", default_value_t = 3)]
    pub ban_threshold: u32,

    /// The window in which reports count towards a ban, in seconds.
    #[arg(long, env = "PEER_STREAM_BAN_WINDOW", default_value_t = 86_400)]
    pub ban_window_secs: u64,

    /// How long a ban lasts, in seconds.
    #[arg(long, env = "PEER_STREAM_BAN_DURATION", default_value_t = 7 * 86_400)]
    pub ban_duration_secs: u64,

    /// On shutdown, how long connected clients get to close, in ms.
    #[arg(long, env = "PEER_STREAM_SHUTDOWN_GRACE_MS", default_value_t = 5000)]
    pub shutdown_grace_ms: u64,

    /// PEM certificate chain; with --tls-key the server speaks https:// and wss:// itself.
    #[arg(long, env = "PEER_STREAM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "PEER_STREAM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Log filter (tracing EnvFilter syntax), e.g. info or peer_stream_server=debug.
    #[arg(long, env = "PEER_STREAM_LOG", default_value = "info", value_parser = log_filter)]
    pub log: String,
}

impl Default for Config {
    /// The defaults of every flag, ignoring the environment's `PEER_STREAM_*` variables
    /// would be surprising, so this reads them like the binary does.
    fn default() -> Self {
        Config::parse_from(["peer-stream-server"])
    }
}

impl Config {
    /// The defaults of every flag without reading any `PEER_STREAM_*` variable: for a
    /// server embedded in another program (the desktop app's built-in server), which
    /// must not pick up settings meant for a standalone server on the same machine —
    /// above all `PEER_STREAM_REDIS`, which would make it join that cluster.
    pub fn defaults_ignoring_env() -> Config {
        use clap::{CommandFactory, FromArgMatches};
        let cmd = Config::command().mut_args(|arg| arg.env(None::<&str>));
        cmd.try_get_matches_from(["peer-stream-server"])
            .ok()
            .and_then(|m| Config::from_arg_matches(&m).ok())
            // Unreachable (no argument can be wrong), but never a cluster either way.
            .unwrap_or_else(|| Config {
                redis: None,
                ..Config::default()
            })
    }

    pub fn interest_fallback(&self) -> Duration {
        Duration::from_millis(self.interest_fallback_ms)
    }
    pub fn rematch_cooldown(&self) -> Duration {
        Duration::from_secs(self.rematch_cooldown_secs)
    }
    pub fn hello_timeout(&self) -> Duration {
        Duration::from_millis(self.hello_timeout_ms)
    }
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms.max(10))
    }
    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms.max(10))
    }
    pub fn resume_window(&self) -> Duration {
        Duration::from_secs(self.resume_window_secs)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

// Value checks shared by flags, `PEER_STREAM_*` variables and the config file (which runs
// every value through the flag's own parser), so a typo stops start-up with a plain
// message instead of a server that runs but hands out unusable ICE servers.

/// `--stun`: a `stun:` or `stuns:` URI (RFC 7064) naming a host.
fn stun_url(s: &str) -> Result<String, String> {
    ice_url(s, &["stun:", "stuns:"])
}

/// `--turn`: a `turn:` or `turns:` URI (RFC 7065) naming a host.
fn turn_url(s: &str) -> Result<String, String> {
    ice_url(s, &["turn:", "turns:"])
}

fn ice_url(s: &str, schemes: &[&str]) -> Result<String, String> {
    let s = s.trim();
    let lower = s.to_ascii_lowercase();
    let Some(scheme) = schemes.iter().find(|p| lower.starts_with(**p)) else {
        return Err(format!(
            "expected a URL starting with {}",
            schemes.join(" or ")
        ));
    };
    let host = s[scheme.len()..].split('?').next().unwrap_or_default();
    if host.is_empty() || host.starts_with('/') || host.chars().any(char::is_whitespace) {
        return Err(format!("expected {scheme}HOST[:PORT] (no spaces, no path)"));
    }
    Ok(s.to_owned())
}

/// `--allow-origin`: what browsers send in `Origin`: `scheme://host[:port]`, no path.
fn origin(s: &str) -> Result<String, String> {
    let s = s.trim();
    let ok = match s.split_once("://") {
        Some((scheme, host)) => {
            !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                && !host.is_empty()
                && !host.contains('/')
                && !host.chars().any(char::is_whitespace)
        }
        None => false,
    };
    if ok {
        Ok(s.to_owned())
    } else {
        Err(
            "expected an origin like https://chat.example.org (scheme://host[:port], no path)"
                .into(),
        )
    }
}

/// `--redis`: a URL the Redis client accepts (`redis://HOST:PORT[/DB]`, or
/// `redis+unix:///PATH`); checked at start-up rather than at the first `join`.
fn redis_url(s: &str) -> Result<String, String> {
    let s = s.trim();
    redis::Client::open(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("not a Redis URL (redis://HOST:PORT[/DB]): {e}"))
}

/// `--max-message-bytes`: below 1 KiB even a `hello` would be refused.
fn message_bytes(s: &str) -> Result<usize, String> {
    let n: usize = s.trim().parse().map_err(|e| format!("{e}"))?;
    if n < 1024 {
        return Err(format!("{n} is too small: at least 1024 bytes"));
    }
    Ok(n)
}

/// `--log`: an EnvFilter directive, checked now rather than when tracing starts.
fn log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("not a log filter: {e}"))
}

/// `--turn-secret`: refuses the `***` that `peer-stream-server config` prints in place of
/// the secret, so a pasted-back configuration cannot silently hand out bad credentials.
fn turn_secret(s: &str) -> Result<String, String> {
    if s.is_empty() || s.chars().all(|c| c == '*') {
        return Err(
            "this is the redacted placeholder (or empty): put the real TURN secret here".into(),
        );
    }
    Ok(s.to_owned())
}
