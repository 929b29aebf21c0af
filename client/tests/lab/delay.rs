//! Delay and jitter for the network lab without netem (this kernel has no netem qdisc):
//! the router's `iptables -t mangle PREROUTING … -j NFQUEUE` hands every UDP packet that
//! enters it from a peer to a small userspace program, which holds the packet for
//! `delay ± jitter` ms and then lets it on with an ACCEPT verdict. The packet itself
//! never leaves the kernel (only its metadata is copied), so it then takes the router's
//! real path: forwarding, coturn, nftables loss, the tbf rate limit.
//!
//! The program is this test binary re-executed in the router namespace (like the
//! signaling server, see [`DELAY_HELPER_TEST`]), so no code here needs `unsafe` to
//! enter a namespace. It stops when its stdin closes (the lab drops its end) or when the
//! lab kills it by PID; packets still held are let through first.
//!
//! Jitter keeps each link's order: a packet's release time is `arrival + d` with `d`
//! uniform in `delay ± jitter`, but never before the previous packet from the same
//! interface, as on a real path whose queueing delay varies (netem with a rate, not
//! netem's reordering jitter). So bursts (a video frame's packets) tend to the high end:
//! the helper reports the holds it really applied ([`DELAY_STATS`] lines).

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use rand::Rng;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The test (in every binary that uses delay) that runs the NFQUEUE program when
/// [`DELAY_ENV`] is set; `netlab.rs` defines it.
pub const DELAY_HELPER_TEST: &str = "lab_delay_process";
/// `delay_ms|jitter_ms` for [`DELAY_HELPER_TEST`].
pub const DELAY_ENV: &str = "PEER_STREAM_LAB_DELAY";
/// What the helper prints once it is bound to the queue.
pub const DELAY_READY: &str = "LAB_DELAY_READY";
/// The prefix of the helper's statistics lines (one a second and one at the end).
pub const DELAY_STATS: &str = "LAB_DELAY_STATS";
/// The NFQUEUE number in the router namespace (queues are per namespace).
pub const QUEUE_NUM: u16 = 7;
/// Most packets the kernel keeps queued for us: ~1 s of both directions of a call.
const QUEUE_MAX_LEN: u32 = 4096;

/// One-way delay added to UDP entering the router from either peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DelaySpec {
    pub delay_ms: u16,
    pub jitter_ms: u16,
}

impl DelaySpec {
    pub fn env_value(&self) -> String {
        format!("{}|{}", self.delay_ms, self.jitter_ms)
    }

    fn parse(spec: &str) -> Option<DelaySpec> {
        let (d, j) = spec.split_once('|')?;
        let spec = DelaySpec {
            delay_ms: d.parse().ok()?,
            jitter_ms: j.parse().ok()?,
        };
        (spec.jitter_ms <= spec.delay_ms).then_some(spec)
    }
}

/// Holds actually applied, for the report.
#[derive(Default)]
struct Holds {
    ms: Vec<f64>,
}

impl Holds {
    fn line(&mut self, dropped: &str) -> String {
        let n = self.ms.len();
        if n == 0 {
            return format!("{DELAY_STATS} packets=0 {dropped}");
        }
        self.ms.sort_by(f64::total_cmp);
        let mean = self.ms.iter().sum::<f64>() / n as f64;
        let pct = |p: f64| self.ms[((n as f64 - 1.0) * p).round() as usize];
        format!(
            "{DELAY_STATS} packets={n} hold_ms_mean={mean:.1} p1={:.1} p50={:.1} p99={:.1} {dropped}",
            pct(0.01),
            pct(0.5),
            pct(0.99)
        )
    }
}

/// The kernel's own count of packets it dropped on our queue (full queue, or a failed
/// hand-over to us): `queue_dropped` and `user_dropped` of
/// /proc/net/netfilter/nfnetlink_queue for [`QUEUE_NUM`], in this namespace.
fn kernel_drops() -> String {
    let text = std::fs::read_to_string("/proc/net/netfilter/nfnetlink_queue").unwrap_or_default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first().and_then(|q| q.parse::<u16>().ok()) == Some(QUEUE_NUM) && f.len() >= 7 {
            return format!("queue_dropped={} user_dropped={}", f[5], f[6]);
        }
    }
    "queue_dropped=? user_dropped=?".to_owned()
}

/// The body of [`DELAY_HELPER_TEST`]: runs the delay program as [`DELAY_ENV`] says
/// until stdin closes; returns at once when it is not set.
pub fn delay_helper() {
    let Ok(spec) = std::env::var(DELAY_ENV) else {
        return;
    };
    let spec = DelaySpec::parse(&spec).unwrap_or_else(|| panic!("bad {DELAY_ENV}: {spec}"));
    let mut queue = nfq::Queue::open().expect("open an NFQUEUE netlink socket");
    queue.bind(QUEUE_NUM).expect("bind the NFQUEUE");
    // Metadata only: the verdict needs the packet id, not the bytes.
    queue.set_copy_range(QUEUE_NUM, 0).expect("copy range");
    queue
        .set_queue_max_len(QUEUE_NUM, QUEUE_MAX_LEN)
        .expect("queue length");
    queue.set_nonblocking(true);

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            // EOF (or an error) on stdin: the lab is done with us.
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            stop.store(true, Ordering::Relaxed);
        });
    }
    say(DELAY_READY);

    let mut rng = rand::rng();
    let (lo, hi) = (
        f64::from(spec.delay_ms - spec.jitter_ms),
        f64::from(spec.delay_ms + spec.jitter_ms),
    );
    // Per input interface: (release at, arrived at, packet), release times in order.
    let mut held: HashMap<u32, VecDeque<(Instant, Instant, nfq::Message)>> = HashMap::new();
    let mut holds = Holds::default();
    let mut last_report = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        loop {
            match queue.recv() {
                Ok(msg) => {
                    let d = Duration::from_secs_f64(rng.random_range(lo..=hi) / 1000.0);
                    let link = held.entry(msg.get_indev()).or_default();
                    let after = link.back().map(|(at, _, _)| *at);
                    let at = after.map_or(now + d, |prev| prev.max(now + d));
                    link.push_back((at, now, msg));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // Interrupted or a transient netlink error: try again next round.
                Err(e) => {
                    eprintln!("lab delay: recv: {e}");
                    break;
                }
            }
        }
        let now = Instant::now();
        let mut next = now + Duration::from_millis(1);
        for link in held.values_mut() {
            while link.front().is_some_and(|(at, _, _)| *at <= now) {
                let (_, arrived, msg) = link.pop_front().unwrap();
                release(&mut queue, msg);
                holds
                    .ms
                    .push(now.duration_since(arrived).as_secs_f64() * 1000.0);
            }
            if let Some((at, _, _)) = link.front() {
                next = next.min(*at);
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            let mut copy = Holds {
                ms: holds.ms.clone(),
            };
            say(&copy.line(&kernel_drops()));
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    for (_, _, msg) in held.into_values().flatten() {
        release(&mut queue, msg);
    }
    say(&holds.line(&kernel_drops()));
}

fn release(queue: &mut nfq::Queue, mut msg: nfq::Message) {
    msg.set_verdict(nfq::Verdict::Accept);
    if let Err(e) = queue.verdict(msg) {
        eprintln!("lab delay: verdict: {e}");
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
