//! Churn over a `--redis` cluster with a node killed mid-run (issue #11): real WebSocket
//! clients spread over in-process nodes and one node that is the real server binary in its
//! own process, all on one real `redis-server`, do thousands of random `join`, `next`,
//! `leave`, clean closes and reconnects. Halfway through, the process node is killed
//! (SIGKILL: no goodbye to Redis or anyone); its clients lose their sockets and reconnect to
//! the surviving nodes later. After the dead node is noticed (its liveness key expires),
//! every connected client sends `join` once more. An invariant checker reads every client's
//! messages afterwards and lists every violation:
//! - nobody is paired twice: a connection never gets more `matched` than it sent `join` or
//!   `next` (a waiter claimed by two nodes would get two), and a match has at most two
//!   sides, on two different connections, one offerer and one answerer;
//! - no match with a side missing: a match that only one side saw (the other left the
//!   queue while it was being paired, or died with its node) was ended for that side, by
//!   `partner_left` or by its own `next`/`leave`/close;
//! - the killed node's clients lose their sockets, and their partners on the surviving
//!   nodes get `partner_left` `disconnected` within the liveness window (30 s, #11);
//! - once things settled: whoever the final `join` finds in a match (`error` `invalid`) is
//!   in it with a live connection that is in the same match — nobody is left in a match
//!   with a dead node's session; and everyone else is paired again, but for at most one
//!   (no interests, no cooldown: everyone is compatible with everyone).
//!
//! `make test` runs a short churn (3000 events, 24 clients, three nodes). The scale run
//! (≥ 100,000 events) is `#[ignore]`d; BENCHMARKS.md ("Cluster through Redis") has its
//! command and figures.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;
mod redis_support;

use common::*;
use futures_util::{SinkExt, StreamExt};
use redis_support::{ProcessNode, RedisServer};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Partners of a dead node's sessions are told within this (#11: at most 30 s).
const DEATH_NOTICED: Duration = Duration::from_secs(30);
/// Pairs made on purpose across the doomed node just before it is killed, so every run
/// checks the partner side of a node death (the churn makes more by chance).
const SENTINEL_PAIRS: usize = 2;

type Sink = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;

/// What a client sent (recorded just before sending, so it precedes every reply) or got,
/// or that its socket ended.
#[derive(Debug)]
enum Event {
    Sent(&'static str),
    Got(Value),
    Closed,
}

/// One connection of one client: its number (a reconnect is a new connection). Sentinels
/// are clients numbered after the churn's.
type Conn = (usize, u32);

type Log = mpsc::UnboundedSender<(Conn, Event, Instant)>;

struct Client {
    sink: Option<Sink>,
    generation: u32,
}

/// One churn run.
struct Plan {
    /// Nodes running in this test's process (they survive the run).
    in_process: usize,
    clients: usize,
    events: usize,
    /// The node in its own process is killed after this many events.
    kill_after: usize,
    seed: u64,
}

/// What a run found.
struct Outcome {
    nodes: usize,
    events_logged: usize,
    matches: usize,
    cross_dead_told: usize,
    lost_sockets: usize,
    slowest_notice: Duration,
    violations: Vec<String>,
    elapsed: Duration,
}

async fn connect(url: &str, who: Conn, log: Log) -> Sink {
    let (ws, _) = tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("WebSocket connect");
    let (mut sink, mut stream) = ws.split();
    sink.send(Message::text(hello_msg().to_string()))
        .await
        .expect("send hello");
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(t.as_str()).expect("server sends JSON");
                if log.send((who, Event::Got(v), Instant::now())).is_err() {
                    return;
                }
            }
        }
        let _ = log.send((who, Event::Closed, Instant::now()));
    });
    sink
}

async fn send(c: &mut Client, who: Conn, what: &'static str, msg: Value, log: &Log) {
    log.send((who, Event::Sent(what), Instant::now())).unwrap();
    if let Some(sink) = c.sink.as_mut() {
        let _ = sink.send(Message::text(msg.to_string())).await;
    }
}

/// A small deterministic generator: the same run every time.
fn xorshift(mut seed: u64) -> impl FnMut(usize) -> usize {
    move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    }
}

fn drain(
    rx: &mut mpsc::UnboundedReceiver<(Conn, Event, Instant)>,
    into: &mut Vec<(Conn, Event, Instant)>,
) {
    while let Ok(e) = rx.try_recv() {
        into.push(e);
    }
}

async fn churn(plan: Plan) -> Option<Outcome> {
    let redis = RedisServer::start().await?;
    let started = Instant::now();
    let mut urls = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..plan.in_process {
        let mut cfg = test_config();
        cfg.redis = Some(redis.url());
        cfg.rematch_cooldown_secs = 0;
        // A lost connection ends its session at once: disconnects are part of the churn.
        cfg.resume_window_secs = 0;
        // The churn sends fast; rate limiting is tested elsewhere.
        cfg.rate_per_sec = 0;
        let s = spawn_server(cfg).await;
        urls.push(s.ws_url());
        servers.push(s);
    }
    let mut doomed = ProcessNode::start_with(
        &redis,
        &[
            "--rematch-cooldown-secs",
            "0",
            "--resume-window-secs",
            "0",
            "--rate-per-sec",
            "0",
        ],
    )
    .await;
    let dead_node = urls.len();
    urls.push(doomed.ws_url());
    let mut alive: Vec<usize> = (0..urls.len()).collect();

    let (log_tx, mut log_rx) = mpsc::unbounded_channel();
    let mut node_of: HashMap<Conn, usize> = HashMap::new();
    let mut clients: Vec<Client> = Vec::new();
    for i in 0..plan.clients {
        let node = i % urls.len();
        node_of.insert((i, 0), node);
        let sink = connect(&urls[node], (i, 0), log_tx.clone()).await;
        clients.push(Client {
            sink: Some(sink),
            generation: 0,
        });
    }

    let mut rand = xorshift(plan.seed);
    let mut killed_at = None;
    let mut lost: HashSet<Conn> = HashSet::new();
    let mut sentinels: Vec<(Conn, Conn)> = Vec::new();
    // The log, read as it goes (in order: one channel).
    let mut events: Vec<(Conn, Event, Instant)> = Vec::new();
    for event in 0..plan.events {
        if event == plan.kill_after {
            // Pairs across the doomed node, each on an interest of its own (the churn's
            // clients have none, so they pair with nobody else before the fallback).
            for k in 0..SENTINEL_PAIRS {
                let survivor = alive[k % (alive.len() - 1)];
                for (j, node) in [(0, dead_node), (1, survivor)] {
                    let i = clients.len();
                    let who = (i, 0);
                    node_of.insert(who, node);
                    let mut c = Client {
                        sink: Some(connect(&urls[node], who, log_tx.clone()).await),
                        generation: 0,
                    };
                    let join = json!({"type": "join", "interests": [format!("sentinel-{k}")]});
                    send(&mut c, who, "join", join, &log_tx).await;
                    clients.push(c);
                    if j == 1 {
                        sentinels.push(((i - 1, 0), who));
                    }
                }
            }
            // Both sides matched before the kill (polled from the log).
            let deadline = Instant::now() + RECV_TIMEOUT;
            loop {
                drain(&mut log_rx, &mut events);
                let matched: HashSet<Conn> = events
                    .iter()
                    .filter(|(_, e, _)| matches!(e, Event::Got(v) if v["type"] == "matched"))
                    .map(|(w, _, _)| *w)
                    .collect();
                if sentinels
                    .iter()
                    .all(|(d, s)| matched.contains(d) && matched.contains(s))
                    || Instant::now() > deadline
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            doomed.kill();
            killed_at = Some(Instant::now());
            alive.retain(|n| *n != dead_node);
            for (i, c) in clients.iter_mut().enumerate() {
                let who = (i, c.generation);
                if node_of.get(&who) == Some(&dead_node) && c.sink.is_some() {
                    // Its socket is gone with the node; it reconnects when picked next.
                    c.sink = None;
                    lost.insert(who);
                }
            }
        }
        let i = rand(plan.clients);
        let c = &mut clients[i];
        let who = (i, c.generation);
        match (c.sink.is_some(), rand(10)) {
            (false, _) => {
                c.generation += 1;
                let node = alive[rand(alive.len())];
                let who = (i, c.generation);
                node_of.insert(who, node);
                c.sink = Some(connect(&urls[node], who, log_tx.clone()).await);
            }
            (true, 0..=3) => send(c, who, "join", json!({"type": "join"}), &log_tx).await,
            (true, 4..=6) => send(c, who, "next", json!({"type": "next"}), &log_tx).await,
            (true, 7..=8) => send(c, who, "leave", json!({"type": "leave"}), &log_tx).await,
            (true, _) => {
                // A clean close: the session ends at once, the partner is told.
                log_tx
                    .send((who, Event::Sent("close"), Instant::now()))
                    .unwrap();
                if let Some(mut sink) = c.sink.take() {
                    let _ = sink.close().await;
                }
            }
        }
        if rand(4) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let killed_at = killed_at.expect("the node was killed mid-run");

    // Settle: the dead node noticed (its partners told), everyone connected again.
    let mut told: HashSet<Conn> = HashSet::new();
    let mut read = 0;
    while Instant::now() < killed_at + DEATH_NOTICED
        && !sentinels.iter().all(|(_, s)| told.contains(s))
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        drain(&mut log_rx, &mut events);
        for (w, e, _) in &events[read..] {
            if matches!(e, Event::Got(v) if v["type"] == "partner_left") {
                told.insert(*w);
            }
        }
        read = events.len();
    }
    // Matches made with the dead node's waiters after the kill end at the same check, or
    // at the next one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (i, c) in clients.iter_mut().enumerate().take(plan.clients) {
        if c.sink.is_none() {
            c.generation += 1;
            let node = alive[i % alive.len()];
            let who = (i, c.generation);
            node_of.insert(who, node);
            c.sink = Some(connect(&urls[node], who, log_tx.clone()).await);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The final `join`: those in a match answer `invalid`, the others queue and pair.
    for (i, c) in clients.iter_mut().enumerate() {
        if c.sink.is_some() {
            let who = (i, c.generation);
            send(c, who, "final_join", json!({"type": "join"}), &log_tx).await;
        }
    }
    // Pairing is immediate (no interests), polls run every second: generous.
    tokio::time::sleep(Duration::from_secs(4)).await;
    drop(log_tx);
    drain(&mut log_rx, &mut events);
    let live: Vec<Conn> = clients
        .iter()
        .enumerate()
        .filter(|(_, c)| c.sink.is_some())
        .map(|(i, c)| (i, c.generation))
        .collect();
    let mut out = check(
        &events, &live, &lost, &node_of, dead_node, killed_at, &sentinels,
    );
    out.nodes = urls.len();
    out.elapsed = started.elapsed();
    // The survivors stop (the killed node's process is gone already).
    for s in servers {
        s.stop().await;
    }
    Some(out)
}

/// The invariant checker over the whole log (see the module's comment).
fn check(
    events: &[(Conn, Event, Instant)],
    live: &[Conn],
    lost: &HashSet<Conn>,
    node_of: &HashMap<Conn, usize>,
    dead_node: usize,
    killed_at: Instant,
    sentinels: &[(Conn, Conn)],
) -> Outcome {
    let mut violations: Vec<String> = Vec::new();
    let mut requests: HashMap<Conn, usize> = HashMap::new();
    let mut matched_count: HashMap<Conn, usize> = HashMap::new();
    let mut sides: HashMap<String, Vec<(Conn, String)>> = HashMap::new();
    // Matches that ended for the side that saw them: it got partner_left, or it sent
    // next/leave/close after the request that queued it (its own sends run ahead of the
    // replies, so "after the request", not "after the matched").
    let mut told: HashMap<(Conn, String), Instant> = HashMap::new();
    let mut enders: HashMap<Conn, Vec<usize>> = HashMap::new();
    let mut matched_after: HashMap<(Conn, String), usize> = HashMap::new();
    let mut latest_request: HashMap<Conn, usize> = HashMap::new();
    // The final `join`: where it was sent, and the match each connection was in when it
    // was answered `invalid` (`None`: it queued), and what it got after queueing.
    let mut final_sent: HashMap<Conn, usize> = HashMap::new();
    let mut current: HashMap<Conn, String> = HashMap::new();
    let mut final_answer: HashMap<Conn, Option<String>> = HashMap::new();
    let mut final_pair: HashMap<Conn, String> = HashMap::new();
    let mut closed: HashSet<Conn> = HashSet::new();
    for (idx, (who, e, at)) in events.iter().enumerate() {
        match e {
            Event::Sent(what @ ("join" | "next" | "final_join")) => {
                latest_request.insert(*who, idx);
                *requests.entry(*who).or_default() += 1;
                if *what == "final_join" {
                    final_sent.insert(*who, idx);
                }
            }
            Event::Sent(_) => {}
            Event::Closed => {
                closed.insert(*who);
            }
            Event::Got(v) => match v["type"].as_str().unwrap_or_default() {
                "matched" => {
                    let m = matched_count.entry(*who).or_default();
                    *m += 1;
                    let sent = requests.get(who).copied().unwrap_or(0);
                    if *m > sent {
                        violations.push(format!(
                            "{who:?} got {m} matched for {sent} join/next: paired twice ({v})"
                        ));
                    }
                    let id = v["match_id"].as_str().unwrap_or_default().to_owned();
                    let role = v["role"].as_str().unwrap_or_default().to_owned();
                    sides.entry(id.clone()).or_default().push((*who, role));
                    matched_after.insert(
                        (*who, id.clone()),
                        latest_request.get(who).copied().unwrap_or(0),
                    );
                    if final_answer.get(who) == Some(&None) {
                        final_pair.insert(*who, id.clone());
                    }
                    current.insert(*who, id);
                }
                "partner_left" => {
                    let id = v["match_id"].as_str().unwrap_or_default().to_owned();
                    told.insert((*who, id.clone()), *at);
                    if current.get(who) == Some(&id) {
                        current.remove(who);
                    }
                    if final_pair.get(who) == Some(&id) {
                        final_pair.remove(who);
                    }
                }
                "queued" if final_sent.contains_key(who) && !final_answer.contains_key(who) => {
                    final_answer.insert(*who, None);
                }
                "error" => {
                    let code = v["code"].as_str().unwrap_or_default();
                    if code != "invalid" {
                        violations.push(format!(
                            "only `join` during a match may be refused; {who:?} got {v}"
                        ));
                    } else if final_sent.contains_key(who) && !final_answer.contains_key(who) {
                        final_answer
                            .insert(*who, Some(current.get(who).cloned().unwrap_or_default()));
                    }
                }
                _ => {}
            },
        }
        if let Event::Sent("next" | "leave" | "close") = e {
            enders.entry(*who).or_default().push(idx);
        }
    }
    let ended_by_self = |who: Conn, id: &str| {
        let after = matched_after
            .get(&(who, id.to_owned()))
            .copied()
            .unwrap_or(0);
        enders
            .get(&who)
            .is_some_and(|list| list.iter().any(|i| *i > after))
    };

    // Nobody paired twice; no match with a side missing.
    let mut one_sided = 0;
    for (id, s) in &sides {
        if s.len() == 1 {
            one_sided += 1;
            let who = s[0].0;
            // A side that died with its node is past telling.
            if lost.contains(&who) {
                continue;
            }
            if !ended_by_self(who, id) && !told.contains_key(&(who, id.clone())) {
                violations.push(format!(
                    "match {id} has one side, {who:?}, which was never told it ended"
                ));
            }
            continue;
        }
        if s.len() != 2 {
            violations.push(format!("match {id} has more than two sides: {s:?}"));
            continue;
        }
        if s[0].0 == s[1].0 {
            violations.push(format!("match {id}: one connection on both sides"));
        }
        if s[0].1 == s[1].1 {
            violations.push(format!(
                "match {id}: not one offerer and one answerer: {s:?}"
            ));
        }
    }
    // (Many one-sided matches are the closing side's: its reader stops at its own close,
    // so the `matched` the server sent it just before is not in the log.)
    if one_sided * 2 >= sides.len() {
        violations.push(format!(
            "most matches should have both sides: {one_sided} of {} have one",
            sides.len()
        ));
    }

    // The killed node: its clients lost their sockets; their partners were told in time.
    for who in lost {
        if !closed.contains(who) {
            violations.push(format!("{who:?} on the killed node kept its socket"));
        }
    }
    let mut cross_dead_told = 0;
    let mut slowest_notice = Duration::ZERO;
    for (id, s) in &sides {
        let Some((dead_side, _)) = s.iter().find(|(w, _)| lost.contains(w)) else {
            continue;
        };
        for (who, _) in s.iter().filter(|(w, _)| w != dead_side) {
            if node_of.get(who) == Some(&dead_node) {
                continue;
            }
            if let Some(at) = told.get(&(*who, id.clone())).filter(|at| **at > killed_at) {
                cross_dead_told += 1;
                let after = at.saturating_duration_since(killed_at);
                slowest_notice = slowest_notice.max(after);
                if after > DEATH_NOTICED {
                    violations.push(format!(
                        "{who:?} was told its partner on the killed node left {after:?} after the kill"
                    ));
                }
            }
        }
    }
    for (dead, survivor) in sentinels {
        // Its first match, made before the kill (it is paired again at the end).
        let id = events.iter().find_map(|(w, e, _)| match e {
            Event::Got(v) if w == survivor && v["type"] == "matched" => {
                v["match_id"].as_str().map(str::to_owned)
            }
            _ => None,
        });
        let Some(id) = id else {
            violations.push(format!("sentinel {survivor:?} was never matched"));
            continue;
        };
        if !sides[&id].iter().any(|(w, _)| w == dead) {
            violations.push(format!(
                "sentinel {survivor:?} was not matched across the killed node"
            ));
        }
        if !told.contains_key(&(*survivor, id.clone())) {
            violations.push(format!(
                "sentinel {survivor:?}, whose partner was on the killed node, was never told"
            ));
        }
    }

    // Settled: a match found by the final `join` has both sides live in it; everyone else
    // was paired again, but for at most one.
    let live_set: HashSet<Conn> = live.iter().copied().collect();
    let mut unpaired = Vec::new();
    for who in live {
        match final_answer.get(who) {
            None => violations.push(format!("{who:?} got no answer to its final join")),
            Some(Some(id)) => {
                let partner = sides
                    .get(id)
                    .and_then(|s| s.iter().find(|(w, _)| w != who))
                    .map(|(w, _)| *w);
                match partner {
                    Some(p)
                        if live_set.contains(&p)
                            && final_answer.get(&p) == Some(&Some(id.clone())) => {}
                    _ => violations.push(format!(
                        "{who:?} is in match {id} with nobody live in it (partner {partner:?})"
                    )),
                }
            }
            Some(None) => match final_pair.get(who) {
                Some(id) => {
                    let both = sides.get(id).is_some_and(|s| {
                        s.iter().filter(|(w, _)| live_set.contains(w)).count() == 2
                    });
                    if !both {
                        violations.push(format!("final match {id} of {who:?} lacks a live side"));
                    }
                }
                None => unpaired.push(*who),
            },
        }
    }
    if unpaired.len() > 1 {
        violations.push(format!(
            "everyone is compatible, so at most one may wait; unpaired: {unpaired:?}"
        ));
    }
    Outcome {
        nodes: 0,
        events_logged: events.len(),
        matches: sides.len(),
        cross_dead_told,
        lost_sockets: lost.len(),
        slowest_notice,
        violations,
        elapsed: Duration::ZERO,
    }
}

fn report(plan_events: usize, clients: usize, out: &Outcome) {
    eprintln!(
        "churn: {plan_events} events, {} nodes (one killed mid-run), {clients} clients: \
         {} matches, {} sockets lost with the node, {} partners told (slowest {:.1} s after \
         the kill), {} messages logged, {} violations, {:.1} s",
        out.nodes,
        out.matches,
        out.lost_sockets,
        out.cross_dead_told,
        out.slowest_notice.as_secs_f64(),
        out.events_logged,
        out.violations.len(),
        out.elapsed.as_secs_f64()
    );
    for v in out.violations.iter().take(20) {
        eprintln!("  violation: {v}");
    }
}

fn assert_clean(plan_events: usize, out: &Outcome) {
    assert!(
        out.matches > plan_events / 10,
        "the churn made matches: {}",
        out.matches
    );
    assert!(out.lost_sockets > 0, "the killed node had clients");
    assert!(
        out.cross_dead_told >= SENTINEL_PAIRS,
        "partners of the killed node's clients were told: {}",
        out.cross_dead_told
    );
    assert!(
        out.violations.is_empty(),
        "{} invariant violations, the first: {:#?}",
        out.violations.len(),
        &out.violations[..out.violations.len().min(20)]
    );
}

/// Runs `plan` (unless redis-server is missing), prints its figures and checks them.
async fn churn_and_check(plan: Plan) {
    let (events, clients) = (plan.events, plan.clients);
    let Some(out) = churn(plan).await else {
        return;
    };
    report(events, clients, &out);
    assert_clean(events, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_with_a_node_killed_keeps_the_invariants() {
    churn_and_check(Plan {
        in_process: 2,
        clients: 24,
        events: 3000,
        kill_after: 1500,
        seed: 0x5eed_1234_abcd_ef01,
    })
    .await;
}

/// The scale run of #11 (≥ 100,000 events with a node killed mid-run), minutes long:
/// `cargo test -p peer-stream-server --test cluster_churn -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long; run by hand for BENCHMARKS.md"]
async fn churn_at_scale_with_a_node_killed() {
    churn_and_check(Plan {
        in_process: 3,
        clients: 120,
        events: 100_000,
        kill_after: 50_000,
        seed: 0x0bad_5eed_1e55_c0de,
    })
    .await;
}
