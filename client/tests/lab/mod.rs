//! A small network lab for the client's tests (`netlab.rs`): three network namespaces,
//! peer A, peer B and a router between them, joined by veth pairs:
//!
//! ```text
//!   A: eth0 10.77.1.2/24 ── ra 10.77.1.1 ┐
//!                                        ├ router (forwarding on; lo 10.77.0.1: the
//!   B: eth0 10.77.2.2/24 ── rb 10.77.2.1 ┘   signaling server on :3000, coturn on :3478)
//! ```
//!
//! The router hosts the signaling server (this very test binary, re-executed inside the
//! router namespace to run `peer_stream_server::run`, see [`SERVER_HELPER_TEST`]) and a
//! real coturn (`turnserver`, TURN REST auth with the server's `--turn-secret`). Peers are
//! `peer-stream --headless` processes started with `ip netns exec`. Impairments are
//! nftables rules in the router: random UDP loss (`numgen random mod 100 < N drop`) and
//! "no direct path" (the peers reach each other only through coturn's port); delay and
//! jitter come from an NFQUEUE program in the router (`delay.rs`), a rate limit from a
//! `tbf` qdisc on the router's links (this kernel has no netem).
//!
//! Each lab has its own namespaces (`psl<pid>x<n>{a,b,r}`), so parallel tests and runs
//! never collide; addresses repeat but live in separate namespaces. Dropping a lab kills
//! every process it started (by PID, and whatever else still runs in its namespaces)
//! and deletes the namespaces, also on panic. Namespaces left by a crashed run (their
//! creator's PID is gone) are removed when the next lab starts.
//!
//! Needs root, `ip` (iproute2), `nft` (nftables) and `turnserver` (coturn): without them
//! [`Lab::new`] returns `None` after printing why, and panics instead under `CI=true`.
//! Delay also needs `iptables-legacy` (Debian iptables; [`delay_available`]), a rate
//! limit `tc` (iproute2).

#![allow(dead_code, clippy::unwrap_used, clippy::print_stderr)]

pub mod delay;

use delay::DelaySpec;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Prefix of every namespace a lab creates.
const PREFIX: &str = "psl";
pub const ROUTER_IP: &str = "10.77.0.1";
pub const A_IP: &str = "10.77.1.2";
pub const B_IP: &str = "10.77.2.2";
pub const SERVER_PORT: u16 = 3000;
pub const TURN_PORT: u16 = 3478;
pub const TURN_SECRET: &str = "netlab-turn-secret-93c1";
/// The test (in every binary that uses the lab) that runs the signaling server when the
/// environment variable [`SERVER_ENV`] is set; `netlab.rs` defines it.
pub const SERVER_HELPER_TEST: &str = "lab_server_process";
/// `listen-address|turn-url|turn-secret|db-dir` for [`SERVER_HELPER_TEST`].
pub const SERVER_ENV: &str = "PEER_STREAM_LAB_SERVER";
/// What the server helper prints once it listens.
pub const SERVER_READY: &str = "LAB_SERVER_READY";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a command, failing the test with its output when it fails.
fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `nft -f -` inside namespace `ns` with `script` on stdin.
pub fn nft(ns: &str, script: &str) {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nft");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn on_path(bin: &str) -> bool {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/bin", "/usr/sbin", "/sbin", "/bin"].map(PathBuf::from));
    dirs.iter().any(|d| d.join(bin).is_file())
}

/// Whether the lab's delay can run here (it needs `iptables-legacy` for the NFQUEUE
/// rule: nftables' own `queue` is not in this kernel); `false` after printing why (a
/// panic under `CI=true`).
pub fn delay_available() -> bool {
    if on_path("iptables-legacy") {
        return true;
    }
    let why = "the network lab's delay needs `iptables-legacy` (Debian iptables)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}; CI=true, so this must run (scripts/deps.sh --test installs it)");
    }
    eprintln!("SKIPPED: {why}");
    false
}

/// Whether the lab can run here; `false` after printing why (a panic under `CI=true`).
pub fn available() -> bool {
    let missing = if !is_root() {
        Some("the network lab needs root (network namespaces, veth, nftables)".to_owned())
    } else if !on_path("ip") {
        Some("the network lab needs `ip` (Debian iproute2)".to_owned())
    } else if !on_path("nft") {
        Some("the network lab needs `nft` (Debian nftables)".to_owned())
    } else if !on_path("turnserver") {
        Some("the network lab needs coturn's `turnserver` (Debian coturn)".to_owned())
    } else {
        None
    };
    let Some(why) = missing else {
        return true;
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}; CI=true, so this must run (scripts/deps.sh --test installs the tools)");
    }
    eprintln!("SKIPPED: {why}");
    false
}

/// Lab namespaces whose creating process is gone (a crashed or killed earlier run):
/// the processes still inside are killed by PID and the namespaces deleted.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('x').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("network lab: removing stale namespace {name}");
        kill_all_in(name);
        let _ = Command::new("ip").args(["netns", "del", name]).status();
    }
}

/// Kills (SIGKILL, by PID) every process still inside namespace `ns`.
fn kill_all_in(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if pid.parse::<u32>().is_ok_and(|p| p != std::process::id()) {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
}

/// How the network between the peers misbehaves. Every drop happens away from the
/// sender's own namespace (on the router's or the receiver's input), as on a real
/// network: a packet dropped by nftables in its sender's namespace fails `sendto` with
/// `EPERM` instead of vanishing, and coturn closes a client's whole session on any send
/// error, which is not what loss on a real link does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Impairment {
    /// End-to-end random UDP loss in percent, in each direction, on every path: each
    /// access link (peer → router and router → peer) drops `1 - sqrt(1 - p)` of the UDP
    /// packets crossing it, so a path over both links (direct, or through coturn) loses
    /// `p`, and TURN requests and responses are each lost about half as often.
    pub loss_percent: u8,
    /// The peers cannot reach each other directly, as behind two port-restricted NATs:
    /// the router drops UDP forwarded between their subnets, and each peer accepts UDP
    /// from the router only from coturn's port, so only relay pairs can work.
    pub no_direct_path: bool,
    /// One-way delay (± jitter) for every UDP packet entering the router from a peer,
    /// so each direction of a path (direct, or through coturn) gets it once.
    pub delay: Option<DelaySpec>,
    /// A bottleneck in kbit/s on both access links (the router's egress toward each
    /// peer: `tbf`, queue of [`RATE_QUEUE_MS`]), so each direction of every path is
    /// limited to it; 0 = none.
    pub rate_kbit: u32,
}

/// The tbf's queue at a rate limit, in ms of the rate (its `latency`): a modest
/// router buffer; packets beyond it are dropped.
pub const RATE_QUEUE_MS: u32 = 200;

impl Impairment {
    /// Per-link drop probability in basis points (1/10 000) for [`Self::loss_percent`].
    fn link_loss_bp(&self) -> u32 {
        let p = f64::from(self.loss_percent.min(100)) / 100.0;
        let link = 1.0 - (1.0 - p).sqrt();
        (link * 10_000.0).round() as u32
    }
}

/// A running lab; everything is torn down on drop.
pub struct Lab {
    pub a: String,
    pub b: String,
    pub router: String,
    pub dir: tempfile::TempDir,
    server: Option<Child>,
    coturn: Option<Child>,
    peers: Vec<Child>,
    created: Vec<String>,
    /// Behind a lock so [`Lab::impair`] stays `&self`.
    delay: Mutex<Option<DelayProc>>,
}

/// The running delay program in the router (see `delay.rs`).
struct DelayProc {
    spec: DelaySpec,
    child: Child,
    /// Its stdin: dropping it tells the program to let held packets go and exit.
    stdin: Option<ChildStdin>,
    /// Its latest statistics line.
    stats: Arc<Mutex<String>>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in self
            .peers
            .iter_mut()
            .chain(self.server.as_mut())
            .chain(self.coturn.as_mut())
            .chain(
                self.delay
                    .get_mut()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .as_mut()
                    .map(|d| &mut d.child),
            )
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.created {
            kill_all_in(ns);
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if std::env::var("PEER_STREAM_NETLAB_KEEP").is_ok_and(|v| v == "1") {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            eprintln!("network lab: logs kept in {}", dir.keep().display());
        }
    }
}

/// One headless peer inside the lab (see [`Lab::peer`]).
pub struct Peer {
    pub child: Child,
    pub stderr_path: PathBuf,
}

impl Lab {
    /// Builds the namespaces and links, starts coturn and the signaling server in the
    /// router. `None` (after a message) when the lab cannot run here; see [`available`].
    pub fn new() -> Option<Lab> {
        if !available() {
            return None;
        }
        remove_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("{PREFIX}{}x{n}", std::process::id());
        let mut lab = Lab {
            a: format!("{base}a"),
            b: format!("{base}b"),
            router: format!("{base}r"),
            dir: tempfile::tempdir().unwrap(),
            server: None,
            coturn: None,
            peers: Vec::new(),
            created: Vec::new(),
            delay: Mutex::new(None),
        };
        for ns in [lab.router.clone(), lab.a.clone(), lab.b.clone()] {
            run(&["ip", "netns", "add", &ns]);
            lab.created.push(ns.clone());
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        let r = lab.router.clone();
        for (ns, dev, net) in [(&lab.a, "ra", "10.77.1"), (&lab.b, "rb", "10.77.2")] {
            run(&[
                "ip", "-n", &r, "link", "add", dev, "type", "veth", "peer", "name", "eth0",
                "netns", ns,
            ]);
            run(&[
                "ip",
                "-n",
                &r,
                "addr",
                "add",
                &format!("{net}.1/24"),
                "dev",
                dev,
            ]);
            run(&["ip", "-n", &r, "link", "set", dev, "up"]);
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{net}.2/24"),
                "dev",
                "eth0",
            ]);
            run(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
            run(&[
                "ip",
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &format!("{net}.1"),
            ]);
        }
        run(&[
            "ip",
            "-n",
            &r,
            "addr",
            "add",
            &format!("{ROUTER_IP}/32"),
            "dev",
            "lo",
        ]);
        run(&[
            "ip",
            "netns",
            "exec",
            &r,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
        ]);
        lab.start_coturn();
        lab.start_server();
        Some(lab)
    }

    /// Sets the network's impairment (replacing the previous one): nftables tables
    /// `lab` in the router and in both peers.
    pub fn impair(&self, imp: Impairment) {
        let table = |body: &str| {
            format!("table inet lab\ndelete table inet lab\ntable inet lab {{\n{body}}}\n")
        };
        let loss = imp.link_loss_bp();
        let drop_random = |iif: &str| {
            if loss == 0 {
                String::new()
            } else {
                format!(
                    "add rule inet lab loss iifname {iif} meta l4proto udp \
                     numgen random mod 10000 < {loss} drop\n"
                )
            }
        };
        // The router: uplink loss (from either peer) and no forwarding between peers.
        let mut router = table(
            "chain loss { type filter hook prerouting priority -150; policy accept; }\n\
             chain between { type filter hook forward priority 0; policy accept; }\n",
        );
        router.push_str(&drop_random("{ \"ra\", \"rb\" }"));
        if imp.no_direct_path {
            router.push_str("add rule inet lab between meta l4proto udp drop\n");
        }
        nft(&self.router, &router);
        self.set_delay(imp.delay);
        for dev in ["ra", "rb"] {
            self.set_rate(dev, imp.rate_kbit);
        }
        // Each peer: downlink loss, and its "NAT" admitting only coturn's port.
        for ns in [&self.a, &self.b] {
            let mut peer = table(
                "chain loss { type filter hook prerouting priority -150; policy accept; }\n\
                 chain gate { type filter hook input priority 0; policy accept; }\n",
            );
            peer.push_str(&drop_random("\"eth0\""));
            if imp.no_direct_path {
                peer.push_str(&format!(
                    "add rule inet lab gate iifname \"eth0\" meta l4proto udp \
                     udp sport != {TURN_PORT} drop\n"
                ));
            }
            nft(ns, &peer);
        }
    }

    /// A tbf of `kbit` on the router's egress `dev` (none for 0). The bucket holds a
    /// few full-size packets; the queue [`RATE_QUEUE_MS`] of the rate.
    fn set_rate(&self, dev: &str, kbit: u32) {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.router,
                "tc",
                "qdisc",
                "del",
                "dev",
                dev,
                "root",
            ])
            .stderr(Stdio::null())
            .status();
        if kbit == 0 {
            return;
        }
        run(&[
            "ip",
            "netns",
            "exec",
            &self.router,
            "tc",
            "qdisc",
            "add",
            "dev",
            dev,
            "root",
            "tbf",
            "rate",
            &format!("{kbit}kbit"),
            "burst",
            "6kb",
            "latency",
            &format!("{RATE_QUEUE_MS}ms"),
        ]);
    }

    /// Starts, replaces or stops the delay program and its NFQUEUE rules in the router.
    fn set_delay(&self, spec: Option<DelaySpec>) {
        let mut running = self.delay.lock().unwrap();
        if running.as_ref().map(|d| d.spec) == spec {
            return;
        }
        // Rules first: a rule whose queue has no listener drops the packets.
        let ipt = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", &self.router, "iptables-legacy"];
            all.extend_from_slice(args);
            run(&all);
        };
        if running.is_some() {
            ipt(&["-t", "mangle", "-F", "PREROUTING"]);
        }
        if let Some(old) = running.take() {
            let line = stop_delay(old);
            eprintln!("network lab: delay stopped: {line}");
        }
        let Some(spec) = spec else {
            return;
        };
        assert!(
            delay_available(),
            "the lab's delay needs iptables-legacy (Debian iptables)"
        );
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.router])
            .arg(exe)
            .args([
                "--exact",
                delay::DELAY_HELPER_TEST,
                "--ignored",
                "--nocapture",
            ])
            .args(["--test-threads", "1"])
            .env(delay::DELAY_ENV, spec.env_value())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(self.dir.path().join("delay.log")).unwrap())
            .spawn()
            .expect("start the delay program in the router");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let stats = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let stats = Arc::clone(&stats);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line.contains(delay::DELAY_READY) {
                        let _ = tx.send(());
                    } else if line.starts_with(delay::DELAY_STATS) {
                        *stats.lock().unwrap() = line;
                    }
                }
            });
        }
        let proc = DelayProc {
            spec,
            child,
            stdin,
            stats,
        };
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = stop_delay(proc);
            panic!(
                "the delay program did not start in the router:
{}",
                std::fs::read_to_string(self.dir.path().join("delay.log")).unwrap_or_default()
            );
        }
        *running = Some(proc);
        for dev in ["ra", "rb"] {
            ipt(&[
                "-t",
                "mangle",
                "-A",
                "PREROUTING",
                "-i",
                dev,
                "-p",
                "udp",
                "-j",
                "NFQUEUE",
                "--queue-num",
                &delay::QUEUE_NUM.to_string(),
            ]);
        }
    }

    /// The rate limits' counters (`tc -s`: bytes and packets sent, dropped, since the
    /// limit was set), empty without one.
    pub fn rate_stats(&self) -> String {
        let mut out = String::new();
        for dev in ["ra", "rb"] {
            let Ok(o) = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.router,
                    "tc",
                    "-s",
                    "qdisc",
                    "show",
                    "dev",
                    dev,
                ])
                .output()
            else {
                continue;
            };
            let text = String::from_utf8_lossy(&o.stdout);
            if let Some(line) = text.lines().find(|l| l.trim_start().starts_with("Sent")) {
                if text.contains("tbf") {
                    out.push_str(&format!("{dev}: {}; ", line.trim()));
                }
            }
        }
        out
    }

    /// The delay program's latest statistics (holds applied so far, kernel drops),
    /// empty without delay.
    pub fn delay_stats(&self) -> String {
        self.delay
            .lock()
            .unwrap()
            .as_ref()
            .map(|d| d.stats.lock().unwrap().clone())
            .unwrap_or_default()
    }

    fn coturn_log_path(&self) -> PathBuf {
        self.dir.path().join("coturn.log")
    }

    fn start_coturn(&mut self) {
        let d = self.dir.path();
        let out = std::fs::File::create(d.join("coturn-stdout.txt")).unwrap();
        let port = TURN_PORT.to_string();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.router, "turnserver", "-n"])
            .args(["--listening-ip", ROUTER_IP, "--relay-ip", ROUTER_IP])
            .args(["--listening-port", &port])
            .args(["--use-auth-secret", "--static-auth-secret", TURN_SECRET])
            .args(["--realm", "netlab", "--no-tls", "--no-dtls", "--no-cli"])
            .args(["--allowed-peer-ip", "10.77.0.0-10.77.255.255"])
            .args(["--verbose", "--simple-log", "--no-stdout-log"])
            .arg("--log-file")
            .arg(self.coturn_log_path())
            .arg("--pidfile")
            .arg(d.join("turnserver.pid"))
            .arg("--userdb")
            .arg(d.join("turndb"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start turnserver");
        self.coturn = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.coturn.as_mut().unwrap().try_wait().unwrap() {
                panic!("coturn exited at start ({status}):\n{}", self.coturn_log());
            }
            // coturn opens its listeners before it writes this line.
            if self.coturn_log().contains("Total General servers") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "coturn did not start within 20 s:\n{}",
                self.coturn_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything coturn wrote so far (its log file and its stdout).
    pub fn coturn_log(&self) -> String {
        let mut out = std::fs::read_to_string(self.coturn_log_path()).unwrap_or_default();
        out.push_str(
            &std::fs::read_to_string(self.dir.path().join("coturn-stdout.txt")).unwrap_or_default(),
        );
        out
    }

    fn start_server(&mut self) {
        let db = self.dir.path().join("server");
        std::fs::create_dir_all(&db).unwrap();
        let spec = format!(
            "{ROUTER_IP}:{SERVER_PORT}|turn:{ROUTER_IP}:{TURN_PORT}?transport=udp|{TURN_SECRET}|{}",
            db.display()
        );
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.router])
            .arg(exe)
            .args(["--exact", SERVER_HELPER_TEST, "--ignored", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(SERVER_ENV, spec)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(self.dir.path().join("server.log")).unwrap())
            .spawn()
            .expect("start the signaling server in the router");
        let stdout = child.stdout.take().unwrap();
        self.server = Some(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || wait_ready(stdout, tx));
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(true) => {}
            _ => panic!(
                "the signaling server did not start in the router namespace:\n{}",
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
            ),
        }
    }

    /// A headless peer (`--fake-media`) in namespace `ns` (`self.a` or `self.b`), bound
    /// to that namespace's address unless `extra` names `--udp-addr` itself, with
    /// `extra` flags; stdout is piped (the JSON summary), stderr goes to a file. The
    /// binary is this build's `peer-stream`, or `PEER_STREAM_NETLAB_PEER` when set (a
    /// copy that other builds in the same target directory cannot replace mid-benchmark).
    pub fn peer(&mut self, ns: &str, log: &str, extra: &[&str]) -> Peer {
        let ip = if ns == self.a { A_IP } else { B_IP };
        let tag = if ns == self.a { "a" } else { "b" };
        let n = self.peers.len();
        let stderr_path = self.dir.path().join(format!("peer-{tag}-{n}.log"));
        let bin = std::env::var("PEER_STREAM_NETLAB_PEER")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_peer-stream").to_owned());
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, &bin])
            .args(["--headless", "--fake-media"])
            .args(["--server", &format!("ws://{ROUTER_IP}:{SERVER_PORT}/ws")])
            .args(["--log", log]);
        if !extra.contains(&"--udp-addr") {
            cmd.args(["--udp-addr", &format!("{ip}:0")]);
        }
        let child = cmd
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("start a headless peer in the lab");
        Peer { child, stderr_path }
    }

    /// The log of the signaling server in the router.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

/// Stops a delay program (stdin closed: it lets its held packets go and reports), by
/// PID after 5 s; returns its last statistics line.
fn stop_delay(mut proc: DelayProc) -> String {
    drop(proc.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(5);
    while proc.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = proc.child.kill();
    let _ = proc.child.wait();
    // The reader thread stores the final line right before the pipe closes.
    std::thread::sleep(Duration::from_millis(50));
    let line = proc.stats.lock().unwrap().clone();
    line
}

fn wait_ready(stdout: ChildStdout, tx: std::sync::mpsc::Sender<bool>) {
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        if line.contains(SERVER_READY) {
            let _ = tx.send(true);
            // Keep draining, so the helper never blocks on a full pipe.
            for _ in lines.by_ref() {}
            return;
        }
    }
    let _ = tx.send(false);
}

/// The body of [`SERVER_HELPER_TEST`]: runs the signaling server as [`SERVER_ENV`]
/// describes until the process is killed; returns at once when it is not set.
pub async fn server_helper() {
    let Ok(spec) = std::env::var(SERVER_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let [listen, turn, secret, db] = parts[..] else {
        panic!("bad {SERVER_ENV}: {spec}");
    };
    let cfg = peer_stream_server::Config {
        db_path: Path::new(db).join("lab.sqlite3"),
        turn_urls: vec![turn.to_owned()],
        turn_secret: Some(secret.to_owned()),
        heartbeat_interval_ms: 500,
        heartbeat_timeout_ms: 5000,
        rematch_cooldown_secs: 0,
        ..peer_stream_server::Config::default()
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .unwrap_or_else(|e| panic!("bind {listen}: {e}"));
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{SERVER_READY}").unwrap();
        out.flush().unwrap();
    }
    let never = std::future::pending::<()>();
    let _ = peer_stream_server::run(listener, cfg, never).await;
}

/// Waits (blocking) for a lab peer to exit by itself and returns its JSON summary
/// (its last stdout line) and stderr; kills it and fails after `limit`.
pub fn summary(mut peer: Peer, limit: Duration) -> (serde_json::Value, String) {
    let start = Instant::now();
    while peer.child.try_wait().expect("wait").is_none() {
        if start.elapsed() > limit {
            let _ = peer.child.kill();
            let _ = peer.child.wait();
            panic!(
                "a lab peer did not exit within {limit:?}:\n{}",
                std::fs::read_to_string(&peer.stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = peer.child.wait_with_output().expect("output");
    let stderr = std::fs::read_to_string(&peer.stderr_path).unwrap_or_default();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let v = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("bad summary {line:?}: {e}\nstderr:\n{stderr}"));
    (v, stderr)
}

impl Lab {
    /// A's network vanishes for UDP: every UDP packet from A is dropped on the router's
    /// input and every UDP packet to A on A's input, in tables `cut` of their own beside
    /// the lab's (the signaling WebSocket is TCP and stays up; coturn is out of A's
    /// reach too, so no relay path can replace the direct one).
    pub fn cut_udp_of_a(&self) {
        nft(
            &self.router,
            "table inet cut {\n chain pre { type filter hook prerouting priority -200; policy accept; \
             iifname \"ra\" meta l4proto udp drop; }\n}\n",
        );
        nft(
            &self.a,
            "table inet cut {\n chain pre { type filter hook prerouting priority -200; policy accept; \
             iifname \"eth0\" meta l4proto udp drop; }\n}\n",
        );
    }

    /// A's network is back (undoes [`Lab::cut_udp_of_a`]).
    pub fn restore_udp_of_a(&self) {
        nft(&self.router, "delete table inet cut\n");
        nft(&self.a, "delete table inet cut\n");
    }
}
