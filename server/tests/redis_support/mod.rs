//! A real `redis-server` for the cluster tests: on a free loopback port, no persistence,
//! its files in a temporary directory, stopped by its own process id (also when a test
//! fails: [`Drop`]). Without `redis-server` the tests skip with a message, and fail under
//! `CI=true` (`scripts/deps.sh --test` installs Debian's `redis-server`).
#![allow(dead_code, clippy::print_stderr)]

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
