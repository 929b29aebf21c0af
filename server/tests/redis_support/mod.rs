//! A real `redis-server` for the cluster tests: on a free loopback port, no persistence,
//! its files in a temporary directory, stopped by its own process id (also when a test
//! fails: [`Drop`]). Without `redis-server` the tests skip with a message, and fail under
//! `CI=true` (`scripts/deps.sh --test` installs Debian's `redis-server`).
//!
//! Also [`ProcessNode`]: the server binary as one node of such a cluster, in its own
//! process, so a test can kill it (SIGKILL) the way a crashed machine goes.
#![allow(dead_code, clippy::print_stderr)]

use crate::common::{eventually, TestClient, RECV_TIMEOUT};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct RedisServer {
    bin: PathBuf,
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
}

fn redis_binary() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/bin", "/usr/local/bin", "/usr/sbin"].map(PathBuf::from));
    if let Some(found) = dirs
        .iter()
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
    {
        return Some(found);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("redis-server is not installed; scripts/deps.sh --test installs it (Debian `redis-server`)");
    }
    eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server, or scripts/deps.sh --test)");
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

impl RedisServer {
    /// Starts redis-server, or `None` (skip) when it is not installed.
    pub async fn start() -> Option<RedisServer> {
        let bin = redis_binary()?;
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let mut server = RedisServer {
            bin,
            child: None,
            port: free_port(),
            dir,
        };
        server.launch().await;
        Some(server)
    }

    /// `redis://127.0.0.1:PORT` for `--redis`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn launch(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("redis.log")).expect("redis log");
        let child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers().await {
            if Instant::now() >= deadline {
                let log =
                    std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
                panic!("redis-server did not answer PING within 10 s:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether it answers `PING` (inline command) with `+PONG`.
    async fn answers(&self) -> bool {
        let attempt = async {
            let mut tcp = TcpStream::connect(("127.0.0.1", self.port)).await.ok()?;
            tcp.write_all(b"PING\r\n").await.ok()?;
            let mut buf = [0u8; 16];
            let n = tcp.read(&mut buf).await.ok()?;
            Some(buf[..n].starts_with(b"+PONG"))
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), attempt).await,
            Ok(Some(true))
        )
    }

    /// Kills redis-server (by its process id) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty: nothing was persisted).
    pub async fn restart(&mut self) {
        self.stop();
        self.launch().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

const SERVER_BIN: &str = env!("CARGO_BIN_EXE_peer-stream-server");

/// The server binary as a node of `redis`'s cluster, killed (by its pid) when dropped.
pub struct ProcessNode {
    child: Child,
    pub addr: SocketAddr,
    _dir: TempDir,
}

impl ProcessNode {
    pub async fn start(redis: &RedisServer) -> ProcessNode {
        ProcessNode::start_with(redis, &[]).await
    }

    /// A node with more command-line flags (e.g. `--resume-window-secs 0`).
    pub async fn start_with(redis: &RedisServer, extra: &[&str]) -> ProcessNode {
        let dir = tempfile::tempdir().expect("temp dir for the node");
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let child = Command::new(SERVER_BIN)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--redis")
            .arg(redis.url())
            .arg("--db")
            .arg(dir.path().join("node.sqlite3"))
            .args(["--max-conns-per-ip", "0", "--log", "warn"])
            .args(extra)
            .env_remove("PEER_STREAM_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the server binary");
        let node = ProcessNode {
            child,
            addr,
            _dir: dir,
        };
        eventually(RECV_TIMEOUT, "the node process listens", || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        node
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// A fresh client that said `hello`, labelled for failure messages.
    pub async fn client(&self, label: &str) -> TestClient {
        let mut c = TestClient::connect(self.addr).await.label(label);
        c.hello().await;
        c
    }

    /// SIGKILL: no goodbye to Redis or to anyone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ProcessNode {
    fn drop(&mut self) {
        self.kill();
    }
}
