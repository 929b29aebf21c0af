//! The matchmaker: the one owner of who is waiting and who is matched with whom.
//!
//! It is an actor fed by a bounded channel, so the queue and the match table need no
//! locks and every decision (pairing, relaying, ending a match) happens in one order.
//! Connections talk to it through [`MatchmakerHandle`]; it talks back by pushing
//! ready-to-send frames into each connection's bounded outbox. A connection whose
//! outbox is full is a slow reader and gets disconnected instead of growing memory.

pub mod queue;

use crate::ice::IceConfig;
use crate::metrics::Metrics;
use crate::moderation::{Moderation, Report};
use peer_stream_shared::{ErrorCode, MatchId, PartnerLeftReason, Role, ServerMessage, SessionId};
use queue::{MatchQueue, Pair};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

/// How many matches back a user can report: the current (or last) one and the one before.
const REPORTABLE_MATCHES: usize = 2;

/// Frames queued for one connection's socket.
pub type Outbox = mpsc::Sender<Message>;

/// What connections (and report tasks) ask of the matchmaker.
#[derive(Debug)]
pub enum Command {
    Register {
        session: SessionId,
        ip: IpAddr,
        outbox: Outbox,
        kick: CancellationToken,
        online: oneshot::Sender<u64>,
    },
    Join {
        session: SessionId,
        interests: Vec<String>,
    },
    Next {
        session: SessionId,
    },
    Leave {
        session: SessionId,
    },
    /// A signal/chat/typing frame already serialized as the partner will receive it.
    Relay {
        session: SessionId,
        match_id: MatchId,
        frame: Utf8Bytes,
    },
    Report {
        session: SessionId,
        match_id: MatchId,
        reason: String,
    },
    Disconnect {
        session: SessionId,
    },
    /// An address was just banned: close its connections.
    Banned {
        ip: IpAddr,
    },
    /// The bans were reloaded (an operator changed them): close the sessions of every
    /// address that is banned now.
    BansChanged,
}

#[derive(Clone)]
pub struct MatchmakerHandle {
    tx: mpsc::Sender<Command>,
}

impl MatchmakerHandle {
    /// Sends a command; false when the matchmaker has stopped (server shutting down).
    pub async fn send(&self, cmd: Command) -> bool {
        self.tx.send(cmd).await.is_ok()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Idle,
    Waiting,
    InMatch(MatchId),
}

struct PastMatch {
    match_id: MatchId,
    partner: SessionId,
    partner_ip: IpAddr,
}

struct Conn {
    ip: IpAddr,
    outbox: Outbox,
    kick: CancellationToken,
    state: State,
    interests: Vec<String>,
    /// The current (or last) match and the one before it, newest first, so a partner
    /// can still be reported after a skip that led straight into a new match.
    recent_matches: VecDeque<PastMatch>,
}

struct Match {
    a: SessionId,
    b: SessionId,
}

pub struct Matchmaker {
    conns: HashMap<SessionId, Conn>,
    matches: HashMap<MatchId, Match>,
    queue: MatchQueue,
    ice: IceConfig,
    metrics: Arc<Metrics>,
    moderation: Moderation,
    self_tx: mpsc::Sender<Command>,
}

/// Starts the matchmaker task; it stops when `shutdown` is cancelled.
pub fn spawn(
    queue: MatchQueue,
    ice: IceConfig,
    metrics: Arc<Metrics>,
    moderation: Moderation,
    shutdown: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> MatchmakerHandle {
    let (tx, rx) = mpsc::channel(16 * 1024);
    let mm = Matchmaker {
        conns: HashMap::new(),
        matches: HashMap::new(),
        queue,
        ice,
        metrics,
        moderation,
        self_tx: tx.clone(),
    };
    tracker.spawn(mm.run(rx, shutdown));
    MatchmakerHandle { tx }
}

fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh random id for a session or a match (128 bits, hex).
pub fn random_id() -> String {
    new_id()
}

impl Matchmaker {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        // The next time-based pairing chance, recomputed only when the queue changed
        // (most commands are relays that never touch it).
        let mut deadline = None;
        let mut seen_version = None;
        loop {
            if seen_version != Some(self.queue.version()) {
                seen_version = Some(self.queue.version());
                deadline = self.queue.next_deadline(Instant::now());
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd),
                    None => break,
                },
                _ = sleep_until_opt(deadline) => {
                    for pair in self.queue.poll(Instant::now()) {
                        self.start_match(pair);
                    }
                }
            }
            self.metrics.waiting.store(self.queue.len() as i64, Relaxed);
        }
        tracing::debug!("matchmaker stopped");
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Register {
                session,
                ip,
                outbox,
                kick,
                online,
            } => {
                // Banned between its connection check and its hello (an operator's ban).
                let banned = self.moderation.is_banned(ip);
                self.conns.insert(
                    session.clone(),
                    Conn {
                        ip,
                        outbox,
                        kick,
                        state: State::Idle,
                        interests: Vec::new(),
                        recent_matches: VecDeque::with_capacity(REPORTABLE_MATCHES),
                    },
                );
                self.metrics
                    .sessions
                    .store(self.conns.len() as i64, Relaxed);
                let _ = online.send(self.conns.len() as u64);
                if banned {
                    self.close_banned(&session, "this address is banned");
                }
            }
            Command::Join { session, interests } => self.join(session, interests),
            Command::Next { session } => self.next(session),
            Command::Leave { session } => {
                self.end_current(&session, PartnerLeftReason::Left);
                if self.queue.remove(&session) {
                    self.set_state(&session, State::Idle);
                }
            }
            Command::Relay {
                session,
                match_id,
                frame,
            } => self.relay(session, match_id, frame),
            Command::Report {
                session,
                match_id,
                reason,
            } => self.report(session, match_id, reason),
            Command::Disconnect { session } => {
                self.end_current(&session, PartnerLeftReason::Disconnected);
                self.queue.forget(&session);
                self.conns.remove(&session);
                self.metrics
                    .sessions
                    .store(self.conns.len() as i64, Relaxed);
            }
            Command::Banned { ip } => {
                let banned: Vec<SessionId> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.ip == ip)
                    .map(|(s, _)| s.clone())
                    .collect();
                for s in banned {
                    self.close_banned(&s, "you have been banned after reports from other users");
                }
            }
            Command::BansChanged => {
                let banned: Vec<SessionId> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| self.moderation.is_banned(c.ip))
                    .map(|(s, _)| s.clone())
                    .collect();
                for s in banned {
                    self.close_banned(&s, "this address is banned");
                }
            }
        }
    }

    /// Error `banned`, then close 1008: the connection ends once both are written.
    fn close_banned(&mut self, session: &SessionId, message: &str) {
        self.send_error(session, ErrorCode::Banned, message);
        self.deliver(
            session,
            Message::Close(Some(CloseFrame {
                code: CloseCode::Policy,
                reason: Utf8Bytes::from_static("banned"),
            })),
        );
    }

    fn set_state(&mut self, session: &SessionId, state: State) {
        if let Some(c) = self.conns.get_mut(session) {
            c.state = state;
        }
    }

    fn join(&mut self, session: SessionId, interests: Vec<String>) {
        let Some(conn) = self.conns.get_mut(&session) else {
            return;
        };
        if matches!(conn.state, State::InMatch(_)) {
            self.send_error(
                &session,
                ErrorCode::Invalid,
                "already in a match: send next to skip or leave to stop",
            );
            return;
        }
        conn.interests = interests;
        self.enqueue(session);
    }

    fn next(&mut self, session: SessionId) {
        if !self.conns.contains_key(&session) {
            return;
        }
        self.end_current(&session, PartnerLeftReason::Skipped);
        self.enqueue(session);
    }

    /// Puts a session in the queue (keeping its place if already there), tells it so,
    /// and pairs it at once when someone compatible is waiting.
    fn enqueue(&mut self, session: SessionId) {
        let Some(conn) = self.conns.get_mut(&session) else {
            return;
        };
        conn.state = State::Waiting;
        let interests = conn.interests.clone();
        let already = self.queue.contains(&session);
        let waiting = self.queue.len() as u64 + u64::from(!already);
        self.send(&session, &ServerMessage::Queued { waiting });
        if let Some(pair) = self.queue.push(session, interests, Instant::now()) {
            self.start_match(pair);
        }
    }

    fn start_match(&mut self, pair: Pair) {
        let match_id = MatchId(new_id());
        let now = SystemTime::now();
        let (Some(ip_a), Some(ip_b)) = (
            self.conns.get(&pair.first).map(|c| c.ip),
            self.conns.get(&pair.second).map(|c| c.ip),
        ) else {
            // Cannot happen: sessions leave the queue when they disconnect. Be safe anyway.
            tracing::error!("paired a session that is gone; putting the other back");
            for s in [pair.first, pair.second] {
                if self.conns.contains_key(&s) {
                    self.enqueue(s);
                }
            }
            return;
        };
        for (me, other, other_ip, role, waited) in [
            (
                &pair.first,
                &pair.second,
                ip_b,
                Role::Offerer,
                pair.first_waited,
            ),
            (
                &pair.second,
                &pair.first,
                ip_a,
                Role::Answerer,
                pair.second_waited,
            ),
        ] {
            if let Some(c) = self.conns.get_mut(me) {
                c.state = State::InMatch(match_id.clone());
                c.recent_matches.truncate(REPORTABLE_MATCHES - 1);
                c.recent_matches.push_front(PastMatch {
                    match_id: match_id.clone(),
                    partner: other.clone(),
                    partner_ip: other_ip,
                });
            }
            self.metrics.observe_time_to_match(waited);
            let msg = ServerMessage::Matched {
                match_id: match_id.clone(),
                role,
                common_interests: pair.common_interests.clone(),
                ice_servers: self.ice.servers_for(me, now),
                resumed: false,
            };
            self.send(me, &msg);
        }
        self.metrics.matches_total.fetch_add(1, Relaxed);
        self.metrics.active_matches.fetch_add(1, Relaxed);
        self.matches.insert(
            match_id,
            Match {
                a: pair.first,
                b: pair.second,
            },
        );
    }

    /// Ends `session`'s current match, if any: the partner is told why and becomes idle.
    fn end_current(&mut self, session: &SessionId, reason: PartnerLeftReason) {
        let Some(State::InMatch(match_id)) = self.conns.get(session).map(|c| &c.state) else {
            return;
        };
        let match_id = match_id.clone();
        self.set_state(session, State::Idle);
        let Some(m) = self.matches.remove(&match_id) else {
            return;
        };
        self.metrics.active_matches.fetch_sub(1, Relaxed);
        let partner = if &m.a == session { m.b } else { m.a };
        if reason != PartnerLeftReason::Disconnected {
            self.queue.record_skip(session, &partner, Instant::now());
        }
        self.set_state(&partner, State::Idle);
        self.send(&partner, &ServerMessage::PartnerLeft { match_id, reason });
    }

    fn relay(&mut self, session: SessionId, match_id: MatchId, frame: Utf8Bytes) {
        let in_match = matches!(self.conns.get(&session).map(|c| &c.state), Some(State::InMatch(m)) if *m == match_id);
        let partner = in_match
            .then(|| self.matches.get(&match_id))
            .flatten()
            .map(|m| {
                if m.a == session {
                    m.b.clone()
                } else {
                    m.a.clone()
                }
            });
        match partner {
            Some(partner) => {
                self.metrics.messages_relayed.fetch_add(1, Relaxed);
                self.deliver(&partner, Message::Text(frame));
            }
            None => self.send_error(
                &session,
                ErrorCode::NotInMatch,
                "that match_id is not your current match; nothing was relayed",
            ),
        }
    }

    fn report(&mut self, session: SessionId, match_id: MatchId, reason: String) {
        let Some(conn) = self.conns.get(&session) else {
            return;
        };
        let Some(past) = conn.recent_matches.iter().find(|p| p.match_id == match_id) else {
            self.send_error(
                &session,
                ErrorCode::NotInMatch,
                "you can report only your current or previous partner",
            );
            return;
        };
        self.metrics.reports_total.fetch_add(1, Relaxed);
        let report = Report {
            reporter_session: session.0.clone(),
            reporter_ip: conn.ip,
            reported_session: past.partner.0.clone(),
            reported_ip: past.partner_ip,
            match_id: match_id.0,
            reason,
        };
        tracing::info!(reporter = %report.reporter_session, reported = %report.reported_session, ip = %report.reported_ip, "report received");
        let moderation = self.moderation.clone();
        let tx = self.self_tx.clone();
        let metrics = Arc::clone(&self.metrics);
        tokio::spawn(async move {
            let ip = report.reported_ip;
            match tokio::task::spawn_blocking(move || moderation.record_report(&report)).await {
                Ok(Ok(true)) => {
                    metrics.bans_total.fetch_add(1, Relaxed);
                    let _ = tx.send(Command::Banned { ip }).await;
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::error!("could not store a report: {e:#}"),
                Err(e) => tracing::error!("report task failed: {e}"),
            }
        });
    }

    fn send_error(&mut self, session: &SessionId, code: ErrorCode, message: &str) {
        self.metrics.error(code);
        self.send(session, &ServerMessage::error(code, message));
    }

    fn send(&mut self, session: &SessionId, msg: &ServerMessage) {
        self.deliver(session, Message::text(msg.to_json()));
    }

    /// Queues a frame for a session. A full outbox means the client stopped reading:
    /// it is disconnected rather than buffered without bound.
    fn deliver(&mut self, session: &SessionId, msg: Message) {
        let Some(conn) = self.conns.get(session) else {
            return;
        };
        match conn.outbox.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !conn.kick.is_cancelled() {
                    tracing::info!(%session, "disconnecting a slow reader");
                    self.metrics.slow_readers_total.fetch_add(1, Relaxed);
                    conn.kick.cancel();
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
