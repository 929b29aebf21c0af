//! Churn over three `--redis` nodes (issue #11): real WebSocket clients spread over three
//! in-process nodes on one real `redis-server` do a few thousand random `join`, `next`,
//! `leave`, disconnects and reconnects, then everyone joins once more. An invariant checker
//! reads every client's messages afterwards:
//! - nobody is paired twice: a connection never gets more `matched` than it sent `join`
//!   or `next` (a waiter claimed by two nodes would get two);
//! - a match has two sides, on two different connections, one offerer and one answerer;
//!   only a match whose other side left the queue while it was being paired may have one
//!   side, and that side is then told (`partner_left`) — no one stays in a match with
//!   nobody;
//! - at the end nobody waits while another compatible person waits (no interests, no
//!   cooldown: everyone is compatible, so at most one is left unpaired), and every final
//!   match has both its sides.
#![allow(clippy::unwrap_used)]

mod common;
mod redis_support;

use common::*;
use futures_util::{SinkExt, StreamExt};
use redis_support::RedisServer;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const NODES: usize = 3;
const CLIENTS: usize = 24;
const EVENTS: usize = 3000;

type Sink = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;

/// What a client sent (recorded just before sending, so it precedes every reply) or got.
#[derive(Debug)]
enum Event {
    Sent(&'static str),
    Got(Value),
}

/// One connection of one client: its number (a reconnect is a new connection).
type Conn = (usize, u32);

struct Client {
    sink: Option<Sink>,
    generation: u32,
}

async fn connect(node: &TestServer, who: Conn, log: mpsc::UnboundedSender<(Conn, Event)>) -> Sink {
    let (ws, _) = tokio::time::timeout(
        RECV_TIMEOUT,
        tokio_tungstenite::connect_async(node.ws_url()),
    )
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
                if log.send((who, Event::Got(v))).is_err() {
                    return;
                }
            }
        }
    });
    sink
}

async fn send(
    c: &mut Client,
    who: Conn,
    what: &'static str,
    log: &mpsc::UnboundedSender<(Conn, Event)>,
) {
    log.send((who, Event::Sent(what))).unwrap();
    if let Some(sink) = c.sink.as_mut() {
        let _ = sink
            .send(Message::text(json!({"type": what}).to_string()))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_over_three_nodes_keeps_the_invariants() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        let mut cfg = test_config();
        cfg.redis = Some(redis.url());
        cfg.rematch_cooldown_secs = 0;
        // A lost connection ends its session at once: disconnects are part of the churn.
        cfg.resume_window_secs = 0;
        // The churn sends fast; rate limiting is tested elsewhere.
        cfg.rate_per_sec = 0;
        nodes.push(spawn_server(cfg).await);
    }
    let (log_tx, mut log_rx) = mpsc::unbounded_channel::<(Conn, Event)>();
    let mut clients: Vec<Client> = Vec::new();
    for i in 0..CLIENTS {
        let sink = connect(&nodes[i % NODES], (i, 0), log_tx.clone()).await;
        clients.push(Client {
            sink: Some(sink),
            generation: 0,
        });
    }

    // A small deterministic generator: the same run every time.
    let mut seed: u64 = 0x5eed_1234_abcd_ef01;
    let mut rand = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for _ in 0..EVENTS {
        let i = rand(CLIENTS);
        let c = &mut clients[i];
        let who = (i, c.generation);
        match (c.sink.is_some(), rand(10)) {
            (false, _) => {
                c.generation += 1;
                let node = &nodes[rand(NODES)];
                c.sink = Some(connect(node, (i, c.generation), log_tx.clone()).await);
            }
            (true, 0..=3) => send(c, who, "join", &log_tx).await,
            (true, 4..=6) => send(c, who, "next", &log_tx).await,
            (true, 7..=8) => send(c, who, "leave", &log_tx).await,
            (true, _) => {
                // A clean close: the session ends at once, the partner is told.
                log_tx.send((who, Event::Sent("close"))).unwrap();
                if let Some(mut sink) = c.sink.take() {
                    let _ = sink.close().await;
                }
            }
        }
        if rand(4) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    // Settle: everyone connected and idle, then everyone joins once.
    for (i, c) in clients.iter_mut().enumerate() {
        if c.sink.is_none() {
            c.generation += 1;
            let node = &nodes[i % NODES];
            c.sink = Some(connect(node, (i, c.generation), log_tx.clone()).await);
        }
        send(c, (i, c.generation), "leave", &log_tx).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (i, c) in clients.iter_mut().enumerate() {
        log_tx
            .send(((i, c.generation), Event::Sent("final_join")))
            .unwrap();
        if let Some(sink) = c.sink.as_mut() {
            sink.send(Message::text(json!({"type": "join"}).to_string()))
                .await
                .unwrap();
        }
    }
    // Pairing is immediate (no interests), polls run every second: generous.
    tokio::time::sleep(Duration::from_secs(4)).await;
    drop(log_tx);
    let mut events: Vec<(Conn, Event)> = Vec::new();
    while let Ok(e) = log_rx.try_recv() {
        events.push(e);
    }

    // The checker.
    let mut requeues: HashMap<Conn, usize> = HashMap::new();
    let mut matches: HashMap<Conn, usize> = HashMap::new();
    let mut sides: HashMap<String, Vec<(Conn, String)>> = HashMap::new();
    let mut final_phase: HashMap<Conn, bool> = HashMap::new();
    let mut final_match: HashMap<Conn, Option<String>> = HashMap::new();
    let mut matched_total = 0;
    // Matches that ended for the side that saw them: it got partner_left, or it sent
    // next/leave/close after the request that queued it (its own sends run ahead of the
    // replies, so "after the request", not "after the matched").
    let mut ended: std::collections::HashSet<(Conn, String)> = Default::default();
    let mut enders: HashMap<Conn, Vec<usize>> = HashMap::new();
    let mut matched_after: HashMap<String, usize> = HashMap::new();
    let mut latest_request: HashMap<Conn, usize> = HashMap::new();
    for (idx, (who, e)) in events.iter().enumerate() {
        match e {
            Event::Sent("join" | "next" | "final_join") => {
                latest_request.insert(*who, idx);
            }
            Event::Got(v) if v["type"] == "matched" => {
                let id = v["match_id"].as_str().unwrap().to_owned();
                matched_after.insert(id, latest_request.get(who).copied().unwrap_or(0));
            }
            _ => {}
        }
        if let Event::Sent("next" | "leave" | "close") = e {
            enders.entry(*who).or_default().push(idx);
        }
    }
    for (who, e) in &events {
        match e {
            Event::Sent("join" | "next") => *requeues.entry(*who).or_default() += 1,
            Event::Sent("final_join") => {
                *requeues.entry(*who).or_default() += 1;
                final_phase.insert(*who, true);
                final_match.insert(*who, None);
            }
            Event::Sent(_) => {}
            Event::Got(v) if v["type"] == "matched" => {
                matched_total += 1;
                let m = matches.entry(*who).or_default();
                *m += 1;
                let sent = requeues.get(who).copied().unwrap_or(0);
                assert!(
                    *m <= sent,
                    "connection {who:?} got {m} matched for {sent} join/next: paired twice ({v})"
                );
                let id = v["match_id"].as_str().unwrap().to_owned();
                let role = v["role"].as_str().unwrap().to_owned();
                sides.entry(id.clone()).or_default().push((*who, role));
                if final_phase.get(who) == Some(&true) {
                    final_match.insert(*who, Some(id));
                }
            }
            Event::Got(v) if v["type"] == "partner_left" => {
                if let Some(id) = v["match_id"].as_str() {
                    ended.insert((*who, id.to_owned()));
                }
                if let Some(cur) = final_match.get_mut(who) {
                    if cur.as_deref() == v["match_id"].as_str() {
                        *cur = None;
                    }
                }
            }
            Event::Got(v) if v["type"] == "error" => {
                let code = v["code"].as_str().unwrap_or_default();
                assert!(
                    code == "invalid",
                    "only `join` during a match may be refused; {who:?} got {v}"
                );
            }
            Event::Got(_) => {}
        }
    }
    assert!(
        matched_total > EVENTS / 10,
        "the churn made matches: {matched_total}"
    );
    let mut one_sided = 0;
    for (id, s) in &sides {
        if s.len() == 1 {
            // The other side left the queue while this match was being made.
            let after = matched_after.get(id).copied().unwrap_or(0);
            let own_end = enders
                .get(&s[0].0)
                .is_some_and(|list| list.iter().any(|i| *i > after));
            if !own_end && !ended.contains(&(s[0].0, id.clone())) {
                let mine: Vec<&(Conn, Event)> =
                    events.iter().filter(|(w, _)| *w == s[0].0).collect();
                panic!("match {id} has one side, which was never told it ended: {s:?}\n{mine:#?}");
            }
            one_sided += 1;
            continue;
        }
        assert_eq!(s.len(), 2, "match {id} must have at most two sides: {s:?}");
        assert_ne!(s[0].0, s[1].0, "match {id}: one connection on both sides");
        assert_ne!(
            s[0].1, s[1].1,
            "match {id}: one offerer, one answerer: {s:?}"
        );
    }
    // (Many one-sided matches are the closing side's: its reader stops at its own close,
    // so the `matched` the server sent it just before is not in the log.)
    assert!(
        one_sided * 2 < sides.len(),
        "most matches have both sides: {one_sided} of {} have one",
        sides.len()
    );
    let live: Vec<Conn> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| (i, c.generation))
        .collect();
    let unpaired: Vec<&Conn> = live
        .iter()
        .filter(|c| final_match.get(c).cloned().flatten().is_none())
        .collect();
    assert!(
        unpaired.len() <= 1,
        "everyone is compatible, so at most one may wait; unpaired: {unpaired:?}"
    );
    let mut final_ids: HashMap<&str, usize> = HashMap::new();
    for c in &live {
        if let Some(Some(id)) = final_match.get(c) {
            *final_ids.entry(id.as_str()).or_default() += 1;
        }
    }
    for (id, n) in final_ids {
        assert_eq!(n, 2, "final match {id} must have both sides live");
    }
    for node in nodes {
        node.stop().await;
    }
}
