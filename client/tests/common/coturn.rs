//! Debian's coturn (`turnserver`) on 127.0.0.1 for the tests that need a real STUN/TURN
//! server (`check.rs`, `turn.rs`): found on PATH (or skipped with a message, failing
//! under `CI=true`), started on a port free for UDP and TCP in a temp dir, and stopped
//! by PID when dropped, also on panic.

#![allow(clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `turnserver` is; `None` (after saying why) when it is not installed, a panic
/// instead under `CI=true`.
pub fn turnserver_binary() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/bin", "/usr/sbin", "/usr/local/bin"].map(PathBuf::from));
    if let Some(found) = dirs
        .iter()
        .map(|d| d.join("turnserver"))
        .find(|p| p.is_file())
    {
        return Some(found);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("turnserver is not installed; scripts/deps.sh --test installs it (Debian `coturn`)");
    }
    eprintln!(
        "SKIPPED: coturn's turnserver is not installed (apt-get install coturn, or \
         scripts/deps.sh --test)"
    );
    None
}

/// A port free for both UDP and TCP on 127.0.0.1 (coturn listens on both).
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP");
}

/// coturn on 127.0.0.1 (STUN and TURN on one port); stopped by PID when dropped.
pub struct Coturn {
    child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Coturn {
    /// Starts `turnserver` on a free port, in a fresh temp dir, with the arguments
    /// `configure` adds (given that port and dir); its stdout and stderr go to
    /// `stdout.log` there. Waits until it accepts TCP on the port. `None` when coturn
    /// is not installed (see [`turnserver_binary`]).
    pub fn start(configure: impl FnOnce(&mut Command, u16, &Path)) -> Option<Coturn> {
        let bin = turnserver_binary()?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("stdout.log")).unwrap();
        let mut cmd = Command::new(&bin);
        configure(&mut cmd, port, dir.path());
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut coturn = Coturn { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = coturn.child.try_wait() {
                panic!("coturn exited at start ({status}):\n{}", coturn.log());
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "coturn did not listen within 15 s:\n{}",
                coturn.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(coturn)
    }

    /// Everything coturn wrote: every `.log` file in its dir (its own log file, when
    /// configured there, gets a date appended by coturn).
    pub fn log(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().ends_with(".log") {
                    out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }
}
