//! TURN for real: two headless peers with `--ice-policy relay` call each other through
//! Debian's coturn running the shipped `deploy/coturn/turnserver.conf` (only its port
//! and secret swapped, plus loopback-only test settings appended), with the signaling
//! server handing out TURN REST credentials for the same secret. Both sides must decode
//! video and audio over a `relay` candidate pair, and coturn's log must show the
//! allocations, so the call cannot have gone direct.
//!
//! Also: `--ice-policy relay` against a server without TURN says so once and never
//! falls back to a direct path.
//!
//! Without coturn the relayed-call test skips with a message, and fails under
//! `CI=true` (`scripts/deps.sh --test` installs it).

#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SHIPPED_CONF: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/coturn/turnserver.conf"
);
const SECRET: &str = "relay-test-secret-4f2a";

/// One call at a time: the peers are CPU-heavy.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn turnserver_binary() -> Option<PathBuf> {
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
fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP");
}

/// Replaces `from`, which must occur exactly once in the shipped file.
fn swap(conf: &mut String, from: &str, to: &str) {
    let n = conf.matches(from).count();
    assert_eq!(
        n,
        1,
        "deploy/coturn/turnserver.conf should contain `{}` exactly once (found {n}); \
         client/tests/turn.rs derives its config from those lines",
        from.trim()
    );
    *conf = conf.replacen(from, to, 1);
}

/// The shipped configuration on `port` with [`SECRET`], confined to loopback.
fn test_conf(port: u16, dir: &Path) -> String {
    let mut conf = std::fs::read_to_string(SHIPPED_CONF)
        .unwrap_or_else(|e| panic!("read {SHIPPED_CONF}: {e}"));
    swap(
        &mut conf,
        "\nlistening-port=3478\n",
        &format!("\nlistening-port={port}\n"),
    );
    swap(
        &mut conf,
        "\nstatic-auth-secret=CHANGE_ME\n",
        &format!("\nstatic-auth-secret={SECRET}\n"),
    );
    let d = dir.display();
    // Both peers' relay addresses are 127.0.0.1 here, which the shipped file (rightly)
    // refuses as a peer: let exactly that address through, as its comment describes.
    conf.push_str(&format!(
        "\n# --- appended by client/tests/turn.rs ---\n\
         listening-ip=127.0.0.1\nrelay-ip=127.0.0.1\n\
         allow-loopback-peers\nallowed-peer-ip=127.0.0.1\n\
         pidfile={d}/turnserver.pid\nuserdb={d}/turndb\nverbose\n"
    ));
    conf
}

/// coturn on 127.0.0.1; killed by PID when dropped (also on panic).
struct Coturn {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Coturn {
    fn start() -> Option<Coturn> {
        let bin = turnserver_binary()?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("turnserver.conf");
        std::fs::write(&conf, test_conf(port, dir.path())).unwrap();
        let log = std::fs::File::create(dir.path().join("coturn.log")).unwrap();
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&conf)
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

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("coturn.log")).unwrap_or_default()
    }
}

/// A relay-only headless peer; its stderr goes to `stderr_path`.
fn relay_peer(port: u16, stderr_path: &Path, extra: &[&str]) -> Child {
    let mut cmd = common::headless_peer(port, "warn,rtc=error,webrtc=error");
    cmd.args(["--ice-policy", "relay"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(stderr_path).unwrap());
    cmd.spawn().expect("start a headless peer")
}

/// Waits for a peer to exit by itself and returns its JSON summary.
fn summary(mut child: Child, limit: Duration) -> Value {
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a headless peer did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad summary {line:?}: {e}"))
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_call_through_coturn() {
    let _serial = SERIAL.lock().await;
    let Some(coturn) = Coturn::start() else {
        return;
    };
    let turn_url = format!("turn:127.0.0.1:{}?transport=udp", coturn.port);
    let server = common::start_server_with(0, None, |cfg| {
        cfg.turn_urls = vec![turn_url.clone()];
        cfg.turn_secret = Some(SECRET.to_owned());
    })
    .await;
    let logs = tempfile::tempdir().unwrap();
    let (a_err, b_err) = (logs.path().join("a.log"), logs.path().join("b.log"));
    let a = relay_peer(
        server.port,
        &a_err,
        &["--duration", "14", "--tone-hz", "440"],
    );
    let b = relay_peer(
        server.port,
        &b_err,
        &["--duration", "14", "--tone-hz", "660"],
    );
    let (a, b) = tokio::task::spawn_blocking(move || {
        (
            summary(a, Duration::from_secs(90)),
            summary(b, Duration::from_secs(90)),
        )
    })
    .await
    .unwrap();
    server.stop().await;
    let log = coturn.log();
    drop(coturn);
    eprintln!("A: {a}\nB: {b}");
    let peer_logs = || {
        format!(
            "A stderr:\n{}\nB stderr:\n{}\ncoturn log (tail):\n{}",
            std::fs::read_to_string(&a_err).unwrap_or_default(),
            std::fs::read_to_string(&b_err).unwrap_or_default(),
            log.lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        )
    };

    for (me, partner_tone) in [(&a, 660.0), (&b, 440.0)] {
        assert_eq!(u(me, "matches"), 1, "{me}\n{}", peer_logs());
        assert!(u(me, "frames_decoded") >= 60, "{me}\n{}", peer_logs());
        assert!(u(me, "audio_frames_decoded") >= 50, "{me}\n{}", peer_logs());
        let hz = me["audio_dominant_hz"].as_f64().expect("received audio");
        assert!((hz - partner_tone).abs() <= 20.0, "heard {hz} Hz: {me}");
        assert_eq!(me["candidate_type"], "relay", "{me}");
        assert_eq!(me["per_match"][0]["candidate_type"], "relay", "{me}");
    }
    // coturn really relayed: each peer allocated, and permissions for the partner's
    // relay address were installed.
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    assert!(
        count("ALLOCATE processed, success") >= 2,
        "coturn shows fewer than two allocations:\n{}",
        peer_logs()
    );
    assert!(
        count("CREATE_PERMISSION processed, success") + count("CHANNEL_BIND processed, success")
            >= 2,
        "coturn shows no permissions for the partners:\n{}",
        peer_logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_policy_without_turn_warns_and_never_goes_direct() {
    let _serial = SERIAL.lock().await;
    // The usual test server: a STUN URL at most, no TURN.
    let server = common::start_server(0, None, 600).await;
    let logs = tempfile::tempdir().unwrap();
    let (a_err, b_err) = (logs.path().join("a.log"), logs.path().join("b.log"));
    let a = relay_peer(server.port, &a_err, &["--duration", "6"]);
    let b = relay_peer(server.port, &b_err, &["--duration", "6"]);
    let (a, b) = tokio::task::spawn_blocking(move || {
        (
            summary(a, Duration::from_secs(60)),
            summary(b, Duration::from_secs(60)),
        )
    })
    .await
    .unwrap();
    server.stop().await;
    for (me, err) in [(&a, &a_err), (&b, &b_err)] {
        let stderr = std::fs::read_to_string(err).unwrap();
        // webrtc refuses to build a relay-only connection without a TURN server, so
        // the call never starts: no media, no candidate, one plain warning.
        assert_eq!(
            u(me, "frames_decoded"),
            0,
            "no relay, so no media: {me}\n{stderr}"
        );
        assert_eq!(me["candidate_type"], Value::Null, "{me}");
        assert_eq!(me["per_match"][0]["candidate_type"], Value::Null, "{me}");
        let warnings = stderr
            .lines()
            .filter(|l| l.contains("offers no TURN server"))
            .count();
        assert_eq!(warnings, 1, "one clear warning expected:\n{stderr}");
    }
}
