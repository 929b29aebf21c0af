//! The matchmaker: the one owner of who is waiting and who is matched with whom.
//!
//! It is an actor fed by a bounded channel, so the queue and the match table need no
//! locks and every decision (pairing, relaying, ending a match) happens in one order.
//! Connections talk to it through [`MatchmakerHandle`]; it talks back by pushing
//! ready-to-send frames into each connection's bounded outbox. A connection whose
//! outbox is full is a slow reader and gets disconnected instead of growing memory.

pub mod cluster;
pub mod handover;
pub mod queue;
mod undo_remote;

use crate::ice::IceConfig;
use crate::metrics::{Metrics, UndoResult};
use crate::moderation::{BanTarget, Moderation, Report, SharedBan};
use cluster::local::LocalCluster;
use cluster::redis::RedisCluster;
use cluster::{Cluster, NodeMsg, Paired, RemoteSide, Tick};
use handover::PendingResume;
use peer_stream_shared::{
    CallPath, ErrorCode, MatchId, NextReason, PartnerLeftReason, Role, ServerMessage, SessionId,
};
use queue::{Pair, Parked};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

/// How many matches back a user can report: the current (or last) one and the one before.
const REPORTABLE_MATCHES: usize = 2;

/// How long after its own `next` a session may send `undo_next` (PROTOCOL.md).
pub const UNDO_WINDOW: Duration = Duration::from_secs(5);

/// A node absent from the cluster's liveness list this long (after its key expired), or
/// the resume window if that is longer (its sessions may resume on other nodes from their
/// records meanwhile), is dead: its sessions' partners here get `partner_left`
/// `disconnected`. Longer than it takes every node to write its key again after a Redis
/// restart.
const DEAD_NODE_GRACE: Duration = Duration::from_secs(5);

/// A `counts` subscriber gets at most one `counts` message per this interval.
pub const COUNTS_INTERVAL: Duration = Duration::from_secs(1);

/// Frames queued for one connection's socket.
pub type Outbox = crate::outbox::Outbox;

/// While a session is detached (its connection lost, within the resume window), at most
/// this many relayed frames (`signal`, `chat`, `typing`) are held for it…
pub const RESUME_BACKLOG_FRAMES: usize = 128;
/// … taking at most this many bytes; a relay beyond either bound is dropped and its
/// sender gets `error` `rate_limited` (PROTOCOL.md, "Resuming a session").
pub const RESUME_BACKLOG_BYTES: usize = 1024 * 1024;

/// What the matchmaker answers a `Register`: the session the connection now serves and
/// what its `welcome` says.
#[derive(Debug)]
pub struct Registered {
    /// The new session, or the old one when `resumed`.
    pub session: SessionId,
    pub online: u64,
    /// The secret for the next `resume` (`None` when resuming is off).
    pub resume_token: Option<String>,
    pub resumed: bool,
    /// Frames held for the session while it was detached, oldest first: the connection
    /// writes them right after `welcome`, before anything from its outbox.
    pub backlog: Vec<Message>,
}

/// What connections (and report tasks) ask of the matchmaker.
#[derive(Debug)]
pub enum Command {
    /// A `hello`: a new session (`session`, chosen by the connection), or, when `resume`
    /// names a live session's token, that session moved onto this connection.
    Register {
        session: SessionId,
        ip: IpAddr,
        outbox: Outbox,
        kick: CancellationToken,
        /// Tells this connection apart from earlier ones of the same (resumed) session.
        conn: u64,
        reply: oneshot::Sender<Registered>,
        /// The `hello` asked for live `counts` messages.
        counts: bool,
        /// The `hello`'s `resume` token.
        resume: Option<String>,
    },
    Join {
        session: SessionId,
        interests: Vec<String>,
    },
    Next {
        session: SessionId,
        /// `connection_failed`: the partner is told `disconnected` and no undo window opens.
        reason: Option<NextReason>,
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
    /// The connection `conn` ended for good: a close frame from the client, a slow
    /// reader, a protocol violation, a ban, shutdown. The session ends at once (unless a
    /// resume already moved it to another connection).
    Disconnect {
        session: SessionId,
        conn: u64,
    },
    /// The connection `conn` was lost without a close frame (reset, EOF, heartbeat
    /// timeout, failed write): the session is detached and waits for a resume within the
    /// window. `outbox` hands back what was queued for it but never written.
    Detach {
        session: SessionId,
        conn: u64,
        outbox: crate::outbox::OutboxReceiver,
    },
    /// Bring back the partner skipped by this session's last `next` (within [`UNDO_WINDOW`]).
    UndoNext {
        session: SessionId,
    },
    /// Reply with the ICE server list, without touching the queue or the match.
    IceServers {
        session: SessionId,
    },
    /// Never pair this session with the partner of `match_id` (current or last match).
    Block {
        session: SessionId,
        match_id: MatchId,
    },
    /// How this side's call of `match_id` (current or last match) connected; counted once
    /// per side per match in `/metrics`. No reply on success.
    CallReport {
        session: SessionId,
        match_id: MatchId,
        path: CallPath,
        setup_ms: Option<u64>,
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
    /// The partner is served by another node.
    remote: bool,
    /// This side already sent its `call_report` for this match (later ones are ignored).
    call_reported: bool,
}

/// What a session's last `next` skipped, so `undo_next` can bring it back.
struct UndoTicket {
    partner: SessionId,
    /// The node serving the partner when it is not this one.
    node: Option<String>,
    /// The match the `next` ended.
    match_id: MatchId,
    until: Instant,
}

/// The `counts` numbers a subscriber was last sent, and when.
struct CountsSent {
    numbers: (u64, u64),
    at: Instant,
}

/// Where a session's frames go.
enum Link {
    /// A connection serves it.
    Live {
        outbox: Outbox,
        kick: CancellationToken,
        conn: u64,
    },
    /// Its connection was lost; frames wait here until a resume or the window's end.
    Away(Box<Detached>),
}

struct Detached {
    until: Instant,
    backlog: VecDeque<Message>,
    /// Relayed frames (and their bytes) in `backlog`, bounded by [`RESUME_BACKLOG_FRAMES`]
    /// and [`RESUME_BACKLOG_BYTES`].
    relayed: usize,
    relayed_bytes: usize,
    /// Its place in the queue, when it was waiting.
    parked: Option<Parked>,
}

struct Conn {
    ip: IpAddr,
    link: Link,
    /// The secret that moves this session onto a new connection (single use).
    resume_token: Option<String>,
    state: State,
    interests: Vec<String>,
    /// Set by a `next` that ended a match; taken by `undo_next`, dropped by `leave`.
    undo: Option<UndoTicket>,
    /// Idle because it sent `leave` (not because its partner left): undo leaves it alone.
    stopped: bool,
    /// `Some` when the session asked for live counts.
    counts: Option<CountsSent>,
    /// The current (or last) match and the one before it, newest first, so a partner
    /// can still be reported after a skip that led straight into a new match.
    recent_matches: VecDeque<PastMatch>,
    /// The token under which this session's resume record is stored in the cluster, if
    /// one is (see `handover.rs`).
    saved: Option<String>,
}

struct Match {
    a: SessionId,
    b: SessionId,
    /// The node serving `b` when it is not this one (`a` is then this node's session).
    remote: Option<String>,
}

impl Match {
    /// The other side of `session` in this match, and its node when it is not this one.
    fn partner_of(&self, session: &SessionId) -> (SessionId, Option<String>) {
        if &self.a == session {
            (self.b.clone(), self.remote.clone())
        } else {
            (self.a.clone(), None)
        }
    }
}

/// Where the queue lives: this process, or Redis shared with other nodes.
// Built once at start-up and moved into the actor: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    Local(LocalCluster),
    Redis(RedisCluster),
}

pub struct Matchmaker<C: Cluster> {
    conns: HashMap<SessionId, Conn>,
    matches: HashMap<MatchId, Match>,
    cluster: C,
    ice: IceConfig,
    metrics: Arc<Metrics>,
    moderation: Moderation,
    self_tx: mpsc::Sender<Command>,
    /// Sessions that asked for live counts.
    count_subscribers: usize,
    /// The numbers at the last counts tick, and whether a subscriber may still be owed
    /// newer ones (a fresh subscriber, or one skipped because it got counts < 1 s ago).
    counts_last: (u64, u64),
    counts_dirty: bool,
    /// How long a detached session waits for a resume (zero: sessions never detach).
    resume_window: Duration,
    /// Live resume tokens → their session.
    tokens: HashMap<String, SessionId>,
    /// When detached sessions' windows end (stale entries are skipped when popped).
    expiries: BinaryHeap<Reverse<(Instant, SessionId)>>,
    /// Nodes serving partners of this node's sessions that the last ticks did not see
    /// alive, since when.
    absent: HashMap<String, Instant>,
    /// The nodes the last cluster tick saw alive (`None`: no cluster, or not known yet).
    alive_nodes: Option<HashSet<String>>,
    /// `hello`s with another node's token, by request id, waiting for its handover…
    pending: HashMap<String, PendingResume>,
    /// … in the order they were asked (so, of their deadlines).
    pending_order: VecDeque<String>,
    /// Sessions handed over to another node → that node, until the resume window ends:
    /// what other nodes still send here for them is forwarded.
    moved: HashMap<SessionId, (String, Instant)>,
    /// `undo_next`s waiting for the partner's node: skipper → (partner, give up at).
    remote_undos: HashMap<SessionId, (SessionId, Instant)>,
    /// On shutdown, how long a cluster node keeps handing its sessions over to the nodes
    /// their clients reconnect to (zero: it stops at once).
    drain: Duration,
    /// A cluster node with resuming on keeps resume records (`handover.rs`)…
    keep_records: bool,
    /// … of these sessions, changed since the last tick wrote them…
    dirty: HashSet<SessionId>,
    /// … and deletes these (tokens of sessions that ended, moved or got a new token).
    stale_records: Vec<String>,
}

/// Starts the matchmaker task; it stops when `shutdown` is cancelled.
/// A lost connection's session waits `resume_window` for its client to come back.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    backend: Backend,
    ice: IceConfig,
    metrics: Arc<Metrics>,
    moderation: Moderation,
    resume_window: Duration,
    drain: Duration,
    shutdown: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> MatchmakerHandle {
    let (tx, rx) = mpsc::channel(16 * 1024);
    // Two concrete actors rather than a boxed trait object: the in-memory one costs
    // nothing extra, and each one's future is checked `Send` as it is.
    match backend {
        Backend::Local(c) => {
            let mut mm = Matchmaker::new(c, ice, metrics, moderation, resume_window, tx.clone());
            mm.drain = drain;
            mm.keep_records = mm.is_cluster() && !resume_window.is_zero();
            tracker.spawn(mm.run(rx, shutdown));
        }
        Backend::Redis(c) => {
            let mut mm = Matchmaker::new(c, ice, metrics, moderation, resume_window, tx.clone());
            mm.drain = drain;
            mm.keep_records = mm.is_cluster() && !resume_window.is_zero();
            tracker.spawn(mm.run(rx, shutdown));
        }
    }
    MatchmakerHandle { tx }
}

impl<C: Cluster> Matchmaker<C> {
    fn new(
        cluster: C,
        ice: IceConfig,
        metrics: Arc<Metrics>,
        moderation: Moderation,
        resume_window: Duration,
        tx: mpsc::Sender<Command>,
    ) -> Self {
        Matchmaker {
            conns: HashMap::new(),
            matches: HashMap::new(),
            cluster,
            ice,
            metrics,
            moderation,
            self_tx: tx,
            count_subscribers: 0,
            counts_last: (0, 0),
            counts_dirty: false,
            resume_window,
            tokens: HashMap::new(),
            expiries: BinaryHeap::new(),
            absent: HashMap::new(),
            alive_nodes: None,
            pending: HashMap::new(),
            pending_order: VecDeque::new(),
            moved: HashMap::new(),
            remote_undos: HashMap::new(),
            drain: Duration::ZERO,
            keep_records: false,
            dirty: HashSet::new(),
            stale_records: Vec::new(),
        }
    }
}

fn new_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes: [u8; 16] = rand::random();
    // By hand, not `format!` per byte: ids are made for every session, match and token,
    // and formatting them was a seventh of a pairing's instructions.
    let mut id = String::with_capacity(32);
    for b in bytes {
        id.push(char::from(HEX[usize::from(b >> 4)]));
        id.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    id
}

/// A fresh random id for a session or a match (128 bits, hex).
pub fn random_id() -> String {
    new_id()
}

impl<C: Cluster> Matchmaker<C> {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        let mut inbound = self.cluster.take_inbound();
        // The next time-based pairing chance, recomputed only when the queue changed
        // (most commands are relays that never touch it).
        let mut deadline = None;
        let mut seen_version = None;
        let mut counts_tick = tokio::time::interval(COUNTS_INTERVAL);
        counts_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Set when a cluster node stops: its connections close with 1012 and their
        // sessions wait (detached) for their clients to resume on other nodes, which ask
        // this one to hand them over, until every session is gone or this moment.
        let mut draining: Option<Instant> = None;
        loop {
            if draining.is_some() && self.conns.is_empty() && self.pending.is_empty() {
                break;
            }
            if seen_version != Some(self.cluster.version()) {
                seen_version = Some(self.cluster.version());
                deadline = self.cluster.next_deadline(Instant::now());
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if draining.is_none() => {
                    if self.drain.is_zero() || self.conns.is_empty() {
                        break;
                    }
                    tracing::info!(sessions = self.conns.len(), drain = ?self.drain, "draining: handing sessions over to other nodes");
                    draining = Some(Instant::now() + self.drain);
                }
                _ = sleep_until_opt(draining) => break,
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
                Some(msg) = recv_opt(&mut inbound) => self.on_node_msg(msg).await,
                _ = sleep_until_opt(deadline) => {
                    for paired in self.cluster.poll(Instant::now()).await {
                        self.start_match(paired).await;
                    }
                }
                _ = sleep_until_opt(self.expiries.peek().map(|Reverse((at, _))| *at)) => {
                    self.expire(Instant::now()).await;
                }
                _ = sleep_until_opt(self.next_pending_deadline()) => {
                    self.expire_pending(Instant::now()).await;
                }
                at = counts_tick.tick() => {
                    let tick = self.cluster.tick(self.conns.len() as u64).await;
                    self.on_tick(tick).await;
                    self.save_records().await;
                    self.send_counts(at.into_std());
                }
            }
            self.metrics
                .waiting
                .store(self.cluster.local_waiting() as i64, Relaxed);
        }
        // Partners on other nodes hear that this node's sessions are gone, and this
        // node's waiters leave the shared queue (a cluster's other nodes go on).
        let remote: Vec<(MatchId, SessionId, String)> = self
            .matches
            .iter()
            .filter_map(|(id, m)| Some((id.clone(), m.b.clone(), m.remote.clone()?)))
            .collect();
        for (match_id, to, node) in remote {
            let msg = NodeMsg::PartnerLeft {
                to,
                match_id,
                reason: PartnerLeftReason::Disconnected,
                cooldown: false,
            };
            let _ = self.cluster.send_to(&node, &msg).await;
        }
        // Sessions left here end with the node: nobody may resume them from a record.
        let saved: Vec<String> = self
            .conns
            .values_mut()
            .filter_map(|c| c.saved.take())
            .collect();
        self.dirty.clear();
        self.stale_records.extend(saved);
        self.save_records().await;
        self.cluster.shutdown().await;
        tracing::debug!("matchmaker stopped");
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Register {
                session,
                ip,
                outbox,
                kick,
                conn,
                reply,
                counts,
                resume,
            } => {
                let link = Link::Live { outbox, kick, conn };
                let (token, old) = match resume {
                    Some(token) => {
                        let old = self.tokens.remove(&token);
                        (Some(token), old)
                    }
                    None => (None, None),
                };
                let fresh = match (old, token) {
                    (Some(old), _) => self.resume(old, ip, link, counts, reply).await,
                    // Maybe another node's session: that node hands it over.
                    (None, Some(token)) => {
                        let pending = PendingResume {
                            session: session.clone(),
                            ip,
                            link,
                            counts,
                            reply,
                            until: Instant::now() + handover::HANDOVER_TIMEOUT,
                            token,
                        };
                        self.ask_handover(pending).await.map(|p| (p.link, p.reply))
                    }
                    (None, None) => Some((link, reply)),
                };
                if let Some((link, reply)) = fresh {
                    self.register(session, ip, link, counts, reply).await;
                }
            }
            Command::Join { session, interests } => self.join(session, interests).await,
            Command::Next { session, reason } => self.next(session, reason).await,
            Command::Leave { session } => {
                self.end_current(&session, PartnerLeftReason::Left).await;
                if self.cluster.remove(&session).await {
                    self.set_state(&session, State::Idle);
                }
                if let Some(c) = self.conns.get_mut(&session) {
                    c.undo = None;
                    c.stopped = true;
                }
            }
            Command::Relay {
                session,
                match_id,
                frame,
            } => self.relay(session, match_id, frame).await,
            Command::Report {
                session,
                match_id,
                reason,
            } => self.report(session, match_id, reason).await,
            Command::Disconnect { session, conn } => {
                if self.serves(&session, conn) {
                    self.end_session(&session).await;
                }
            }
            Command::Detach {
                session,
                conn,
                outbox,
            } => self.detach(session, conn, outbox).await,
            Command::UndoNext { session } => self.undo_next(session).await,
            Command::CallReport {
                session,
                match_id,
                path,
                setup_ms,
            } => self.call_report(session, match_id, path, setup_ms),
            Command::IceServers { session } => {
                let ice_servers = self.ice.servers_for(&session, SystemTime::now());
                self.send(&session, &ServerMessage::IceServers { ice_servers });
            }
            Command::Block { session, match_id } => self.block(session, match_id).await,
            Command::Banned { ip } => {
                let banned: Vec<SessionId> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.ip == ip)
                    .map(|(s, _)| s.clone())
                    .collect();
                for s in banned {
                    self.close_banned(&s, "you have been banned after reports from other users")
                        .await;
                }
                // Every node of a cluster applies it too (a single node: nothing to do).
                if let Some(until) = self.moderation.ban_until(ip) {
                    let ban = SharedBan {
                        target: BanTarget::single(ip).to_string(),
                        until,
                        reason: "reported by other users".to_owned(),
                    };
                    self.cluster.share_ban(ban).await;
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
                    self.close_banned(&s, "this address is banned").await;
                }
            }
        }
    }

    /// A new session: `welcome` (through `reply`), then `counts` when asked for.
    async fn register(
        &mut self,
        session: SessionId,
        ip: IpAddr,
        link: Link,
        counts: bool,
        reply: oneshot::Sender<Registered>,
    ) {
        // Banned between its connection check and its hello (an operator's ban).
        let banned = self.moderation.is_banned(ip);
        let numbers = self.cluster.counts(self.conns.len() as u64 + 1);
        let resume_token = if banned {
            None
        } else {
            self.new_token(&session)
        };
        self.conns.insert(
            session.clone(),
            Conn {
                ip,
                link,
                resume_token: resume_token.clone(),
                state: State::Idle,
                interests: Vec::new(),
                recent_matches: VecDeque::with_capacity(REPORTABLE_MATCHES),
                undo: None,
                stopped: false,
                counts: None,
                saved: None,
            },
        );
        self.metrics
            .sessions
            .store(self.conns.len() as i64, Relaxed);
        if self.keep_records && resume_token.is_some() {
            self.dirty.insert(session.clone());
        }
        let _ = reply.send(Registered {
            session: session.clone(),
            online: numbers.0,
            resume_token,
            resumed: false,
            backlog: Vec::new(),
        });
        if banned {
            self.close_banned(&session, "this address is banned").await;
        } else {
            self.subscribe_counts(&session, counts, numbers);
        }
    }

    /// `hello` with the token of `session`: moves the session onto the new connection
    /// `link` (a connection still serving it is dropped: the client already gave up on
    /// it), hands the connection what was held while it was away and a fresh token, and
    /// puts a parked waiter back in its place. The partner hears nothing. Returns the
    /// connection back when it must start a new session instead (the address is banned:
    /// the old session then ends at once, like a disconnect).
    async fn resume(
        &mut self,
        session: SessionId,
        ip: IpAddr,
        link: Link,
        counts: bool,
        reply: oneshot::Sender<Registered>,
    ) -> Option<(Link, oneshot::Sender<Registered>)> {
        if !self.conns.contains_key(&session) {
            return Some((link, reply));
        }
        if self.moderation.is_banned(ip) {
            self.end_session(&session).await;
            return Some((link, reply));
        }
        let numbers = self.cluster.counts(self.conns.len() as u64);
        let resume_token = self.new_token(&session);
        let c = self.conns.get_mut(&session)?;
        c.ip = ip;
        if let Some(old) = std::mem::replace(&mut c.resume_token, resume_token.clone()) {
            self.tokens.remove(&old);
        }
        let (backlog, parked) = match std::mem::replace(&mut c.link, link) {
            Link::Live { kick, .. } => {
                // Its old connection looked alive to us, not to the client: drop it. Its
                // `Disconnect` names a connection that no longer serves the session.
                kick.cancel();
                (Vec::new(), None)
            }
            Link::Away(d) => {
                self.metrics.sessions_detached.fetch_sub(1, Relaxed);
                (Vec::from(d.backlog), d.parked)
            }
        };
        let waiting = c.state == State::Waiting;
        if self.keep_records {
            self.dirty.insert(session.clone());
        }
        self.metrics.sessions_resumed_total.fetch_add(1, Relaxed);
        tracing::debug!(%session, held = backlog.len(), "session resumed");
        let _ = reply.send(Registered {
            session: session.clone(),
            online: numbers.0,
            resume_token,
            resumed: true,
            backlog,
        });
        self.subscribe_counts(&session, counts, numbers);
        if let Some(parked) = parked.filter(|_| waiting) {
            if let Some(paired) = self
                .cluster
                .unpark(session, parked, ip, Instant::now())
                .await
            {
                self.start_match(paired).await;
            }
        }
        None
    }

    /// A fresh resume token for `session` (none when resuming is off).
    fn new_token(&mut self, session: &SessionId) -> Option<String> {
        if self.resume_window.is_zero() {
            return None;
        }
        let token = self.token_for_node(new_id());
        self.tokens.insert(token.clone(), session.clone());
        Some(token)
    }

    /// Sets whether `session` gets live counts (as its latest `hello` asked) and, if so,
    /// queues the first one: the connection writes `welcome` before it reads its outbox.
    fn subscribe_counts(&mut self, session: &SessionId, counts: bool, numbers: (u64, u64)) {
        let Some(c) = self.conns.get_mut(session) else {
            return;
        };
        let was = c.counts.is_some();
        c.counts = counts.then(|| CountsSent {
            numbers,
            at: Instant::now(),
        });
        match (was, counts) {
            (false, true) => self.count_subscribers += 1,
            (true, false) => self.count_subscribers = self.count_subscribers.saturating_sub(1),
            _ => {}
        }
        if counts {
            self.counts_dirty = true;
            self.metrics.counts_sent_total.fetch_add(1, Relaxed);
            self.send(
                session,
                &ServerMessage::Counts {
                    online: numbers.0,
                    waiting: numbers.1,
                },
            );
        }
    }

    /// Whether the connection `conn` is the one serving `session`.
    fn serves(&self, session: &SessionId, conn: u64) -> bool {
        matches!(
            self.conns.get(session).map(|c| &c.link),
            Some(Link::Live { conn: c, .. }) if *c == conn
        )
    }

    /// The connection `conn` of `session` was lost without a close frame: the session
    /// keeps its match (or its place in the queue, parked), holds what is sent to it, and
    /// ends when the resume window does. Without resuming it ends at once.
    async fn detach(
        &mut self,
        session: SessionId,
        conn: u64,
        mut outbox: crate::outbox::OutboxReceiver,
    ) {
        if !self.serves(&session, conn) {
            return;
        }
        let resumable = self
            .conns
            .get(&session)
            .is_some_and(|c| c.resume_token.is_some());
        if !resumable {
            self.end_session(&session).await;
            return;
        }
        // What was queued for the lost connection but never written comes first.
        outbox.close();
        let mut backlog = VecDeque::new();
        while let Ok(msg) = outbox.try_recv() {
            if !matches!(msg, Message::Close(_)) {
                backlog.push_back(msg);
            }
        }
        let until = Instant::now() + self.resume_window;
        let waiting = self.conns.get(&session).map(|c| &c.state) == Some(&State::Waiting);
        let parked = if waiting {
            self.cluster.park(&session).await
        } else {
            None
        };
        let Some(c) = self.conns.get_mut(&session) else {
            return;
        };
        c.link = Link::Away(Box::new(Detached {
            until,
            backlog,
            relayed: 0,
            relayed_bytes: 0,
            parked,
        }));
        self.metrics.sessions_detached.fetch_add(1, Relaxed);
        tracing::debug!(%session, "connection lost; waiting for a resume");
        self.expiries.push(Reverse((until, session)));
    }

    /// Ends the detached sessions whose resume window is over, like disconnects.
    async fn expire(&mut self, now: Instant) {
        while self
            .expiries
            .peek()
            .is_some_and(|Reverse((at, _))| *at <= now)
        {
            let Some(Reverse((at, session))) = self.expiries.pop() else {
                break;
            };
            // A session that resumed (and maybe detached again since) is not due.
            let due = matches!(
                self.conns.get(&session).map(|c| &c.link),
                Some(Link::Away(d)) if d.until == at
            );
            if due {
                self.metrics.resume_expired_total.fetch_add(1, Relaxed);
                tracing::debug!(%session, "resume window over");
                self.end_session(&session).await;
            }
        }
    }

    /// The session is over: its partner gets `partner_left` `disconnected`, it leaves
    /// the queue, its blocks and its token are dropped.
    async fn end_session(&mut self, session: &SessionId) {
        self.end_current(session, PartnerLeftReason::Disconnected)
            .await;
        self.cluster.forget(session).await;
        if let Some(c) = self.conns.remove(session) {
            if c.counts.is_some() {
                self.count_subscribers = self.count_subscribers.saturating_sub(1);
            }
            if let Some(token) = c.resume_token {
                self.tokens.remove(&token);
            }
            self.stale_records.extend(c.saved);
            if matches!(c.link, Link::Away(_)) {
                self.metrics.sessions_detached.fetch_sub(1, Relaxed);
            }
        }
        self.metrics
            .sessions
            .store(self.conns.len() as i64, Relaxed);
    }

    /// Error `banned`, then close 1008: the connection ends once both are written. A
    /// detached session just ends (it would be refused on its way back anyway).
    async fn close_banned(&mut self, session: &SessionId, message: &str) {
        if matches!(
            self.conns.get(session).map(|c| &c.link),
            Some(Link::Away(_))
        ) {
            self.end_session(session).await;
            return;
        }
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
            if self.keep_records {
                self.dirty.insert(session.clone());
            }
        }
    }

    async fn join(&mut self, session: SessionId, interests: Vec<String>) {
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
        conn.stopped = false;
        self.enqueue(session).await;
    }

    /// `next`: ends the current match (the partner gets `partner_left` `skipped`, or
    /// `disconnected` for reason `connection_failed`) and re-queues the sender. A plain
    /// `next` that ended a match opens the undo window; a `connection_failed` one does not
    /// (and drops an older window). Both keep the rematch cooldown.
    async fn next(&mut self, session: SessionId, reason: Option<NextReason>) {
        if !self.conns.contains_key(&session) {
            return;
        }
        let connection_failed = reason == Some(NextReason::ConnectionFailed);
        let skipped = if connection_failed {
            self.end_current_as(&session, PartnerLeftReason::Disconnected, true)
                .await
        } else {
            self.end_current(&session, PartnerLeftReason::Skipped).await
        };
        if let Some(c) = self.conns.get_mut(&session) {
            c.stopped = false;
            if connection_failed {
                c.undo = None;
            } else if let Some((match_id, partner, node)) = skipped {
                c.undo = Some(UndoTicket {
                    partner,
                    node,
                    match_id,
                    until: Instant::now() + UNDO_WINDOW,
                });
            }
        }
        self.enqueue(session).await;
    }

    /// `undo_next`: re-pairs `session` with the partner its last `next` skipped, if that
    /// `next` was at most [`UNDO_WINDOW`] ago, the partner is still connected and has not
    /// moved on (waiting, or idle after `partner_left`), and neither blocked the other.
    /// A match the skipper got in the meantime ends first (its partner is re-queued).
    /// Otherwise `undo_unavailable`, and the sender keeps its place.
    async fn undo_next(&mut self, session: SessionId) {
        let now = Instant::now();
        let Some(conn) = self.conns.get_mut(&session) else {
            return;
        };
        // One attempt per `next`: the ticket is used up whatever the outcome.
        let Some(ticket) = conn.undo.take().filter(|t| now <= t.until) else {
            return self.refuse_undo(
                &session,
                UndoResult::Expired,
                "nothing to undo: undo works once, within 5 seconds of your own next",
            );
        };
        let partner = ticket.partner;
        if let Some(node) = ticket.node {
            // Served by another node: that node checks and answers (`undo_remote.rs`).
            return self
                .ask_remote_undo(session, partner, node, ticket.match_id)
                .await;
        }
        if let Some((result, message)) = self.undo_refusal(&session, &partner, &ticket.match_id) {
            return self.refuse_undo(&session, result, message);
        }
        self.cluster.remove(&session).await;
        self.cluster.remove(&partner).await;
        // A match the skipper got right after its `next` ends first; that partner goes
        // back to the queue on its own (when it is served here; another node re-queues
        // its own session when it hears `partner_left`).
        let third = self
            .end_current(&session, PartnerLeftReason::Skipped)
            .await
            .filter(|(_, _, node)| node.is_none())
            .map(|(_, p, _)| p);
        let common_interests = match (self.conns.get(&partner), self.conns.get(&session)) {
            (Some(p), Some(s)) => p
                .interests
                .iter()
                .filter(|i| s.interests.contains(i))
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        self.metrics.undo(UndoResult::Resumed);
        self.open_match(
            Paired::local(Pair {
                first: partner,
                second: session,
                common_interests,
                first_waited: Duration::ZERO,
                second_waited: Duration::ZERO,
            }),
            true,
        )
        .await;
        if let Some(third) = third {
            self.enqueue(third).await;
        }
    }

    /// Why `skipper` cannot have `partner` (served here) back from `match_id`, if it
    /// cannot: gone, stopped, away, already in or past a new match, or blocked.
    fn undo_refusal(
        &self,
        skipper: &SessionId,
        partner: &SessionId,
        match_id: &MatchId,
    ) -> Option<(UndoResult, &'static str)> {
        match self.conns.get(partner) {
            None => Some((UndoResult::Gone, "the stranger has left")),
            Some(p) if matches!(p.link, Link::Away(_)) => {
                Some((UndoResult::Gone, "the stranger's connection dropped"))
            }
            Some(p) if p.stopped && p.state == State::Idle => {
                Some((UndoResult::Gone, "the stranger has stopped"))
            }
            Some(p)
                if matches!(p.state, State::InMatch(_))
                    || p.recent_matches.front().map(|m| &m.match_id) != Some(match_id) =>
            {
                Some((
                    UndoResult::Busy,
                    "the stranger is already talking to someone new",
                ))
            }
            Some(_) if self.cluster.blocked(skipper, partner) => Some((
                UndoResult::Blocked,
                "you can't be matched with this stranger again",
            )),
            Some(_) => None,
        }
    }

    fn refuse_undo(&mut self, session: &SessionId, result: UndoResult, message: &str) {
        self.metrics.undo(result);
        self.send_error(session, ErrorCode::UndoUnavailable, message);
    }

    /// `call_report`: counts how this side's call of `match_id` (the current or a recent
    /// match) connected. Only the first report per side and match counts; later ones are
    /// ignored without a reply. Nothing is relayed to the partner; no reply on success.
    fn call_report(
        &mut self,
        session: SessionId,
        match_id: MatchId,
        path: CallPath,
        setup_ms: Option<u64>,
    ) {
        let Some(past) = self.recent_match(
            &session,
            &match_id,
            "you can report a call only for your current or previous match",
        ) else {
            return;
        };
        if std::mem::replace(&mut past.call_reported, true) {
            tracing::debug!(%session, "a second call_report for the same match, ignored");
            return;
        }
        self.metrics.observe_call(path, setup_ms);
    }

    /// `block`: the partner of `match_id` (the current or a recent match) and `session`
    /// are never paired again while both live. No reply on success.
    async fn block(&mut self, session: SessionId, match_id: MatchId) {
        let Some(past) = self.recent_match(
            &session,
            &match_id,
            "you can block only your current or previous partner",
        ) else {
            return;
        };
        let (partner, remote) = (past.partner.clone(), past.remote);
        self.metrics.blocks_total.fetch_add(1, Relaxed);
        // A partner that is gone never comes back (session ids are not reused): nothing
        // to remember, and nothing left behind for `forget` to clean. Whether a partner on
        // another node still lives is not known here: its block is kept (and dropped when
        // this session ends).
        if remote || self.conns.contains_key(&partner) {
            self.cluster.block(&session, &partner).await;
        }
    }

    /// The counts tick: sends `counts` to every subscriber whose last numbers differ from
    /// the current ones, unless it got some less than [`COUNTS_INTERVAL`] ago (then it
    /// gets the newest numbers at a later tick). Does nothing when nothing changed.
    fn send_counts(&mut self, at: Instant) {
        let numbers = self.cluster.counts(self.conns.len() as u64);
        if numbers == self.counts_last && !self.counts_dirty {
            return;
        }
        self.counts_last = numbers;
        self.counts_dirty = false;
        if self.count_subscribers == 0 {
            return;
        }
        let msg = Message::text(
            ServerMessage::Counts {
                online: numbers.0,
                waiting: numbers.1,
            }
            .to_json(),
        );
        let mut sent = 0;
        for (session, conn) in &mut self.conns {
            // A detached subscriber gets fresh counts when it resumes.
            let (Some(last), Link::Live { outbox, kick, .. }) = (conn.counts.as_mut(), &conn.link)
            else {
                continue;
            };
            if last.numbers == numbers {
                continue;
            }
            if at.saturating_duration_since(last.at) < COUNTS_INTERVAL {
                self.counts_dirty = true;
                continue;
            }
            last.numbers = numbers;
            last.at = at;
            sent += 1;
            push(outbox, kick, session, msg.clone(), &self.metrics);
        }
        self.metrics.counts_sent_total.fetch_add(sent, Relaxed);
    }

    /// Puts a session in the queue (keeping its place if already there), tells it so,
    /// and pairs it at once when someone compatible is waiting. When the shared queue is
    /// unreachable the session stays idle and gets `error` `unavailable` instead.
    async fn enqueue(&mut self, session: SessionId) {
        let Some(conn) = self.conns.get_mut(&session) else {
            return;
        };
        let (interests, ip) = (conn.interests.clone(), conn.ip);
        if let Link::Away(d) = &mut conn.link {
            // Its connection is lost: it gets a place in the queue, parked, so nobody is
            // paired with it unless it resumes.
            conn.state = State::Waiting;
            let fresh = d.parked.is_none();
            if fresh {
                let parked = self.cluster.parked_at_back(interests, Instant::now());
                if let Some(Conn {
                    link: Link::Away(d),
                    ..
                }) = self.conns.get_mut(&session)
                {
                    d.parked = Some(parked);
                }
            }
            let waiting = self.cluster.counts(0).1 + 1;
            self.send(&session, &ServerMessage::Queued { waiting });
            return;
        }
        match self
            .cluster
            .push(session.clone(), interests, ip, Instant::now())
            .await
        {
            Ok(pushed) => {
                self.set_state(&session, State::Waiting);
                self.send(
                    &session,
                    &ServerMessage::Queued {
                        waiting: pushed.waiting,
                    },
                );
                if let Some(paired) = pushed.paired {
                    self.start_match(paired).await;
                }
            }
            Err(cluster::Unavailable) => {
                self.set_state(&session, State::Idle);
                self.send_error(
                    &session,
                    ErrorCode::Unavailable,
                    "the service is busy (its shared queue cannot be reached); you are not \
                     queued: try again in a moment",
                );
            }
        }
    }

    async fn start_match(&mut self, paired: Paired) {
        self.open_match(paired, false).await;
    }

    /// Opens a match between the two sessions of `pair` (`first` is the offerer);
    /// `resumed` marks the rematch of an `undo_next`. A side served by another node is
    /// told through that node's channel; if that cannot be done, the local side gets
    /// `partner_left` `disconnected` at once.
    async fn open_match(&mut self, paired: Paired, resumed: bool) {
        let Paired { pair, remote } = paired;
        let match_id = MatchId(new_id());
        let ip_of = |s: &SessionId| match &remote {
            Some(r) if r.session == *s => Some(r.ip),
            _ => self.conns.get(s).map(|c| c.ip),
        };
        let (Some(ip_a), Some(ip_b)) = (ip_of(&pair.first), ip_of(&pair.second)) else {
            // Cannot happen: sessions leave the queue when they disconnect. Be safe anyway:
            // the one left is idle and can send `next` again.
            tracing::error!("paired a session that is gone; the other one is left idle");
            for s in [&pair.first, &pair.second] {
                self.set_state(s, State::Idle);
            }
            return;
        };
        let sides = [
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
        ];
        for (me, other, other_ip, role, waited) in sides {
            if remote.as_ref().is_some_and(|r| r.session == *me) {
                continue;
            }
            let other_node = remote.as_ref().map(|r| r.node.clone());
            self.open_side(
                me,
                other,
                other_ip,
                other_node.is_some(),
                role,
                (!resumed).then_some(waited),
                &match_id,
                &pair.common_interests,
                resumed,
            );
        }
        self.metrics.matches_total.fetch_add(1, Relaxed);
        self.metrics.active_matches.fetch_add(1, Relaxed);
        let Some(RemoteSide { session, node, .. }) = remote else {
            self.matches.insert(
                match_id,
                Match {
                    a: pair.first,
                    b: pair.second,
                    remote: None,
                },
            );
            return;
        };
        let (local, role, waited) = if session == pair.first {
            (pair.second, Role::Offerer, pair.first_waited)
        } else {
            (pair.first, Role::Answerer, pair.second_waited)
        };
        let local_ip = if role == Role::Offerer { ip_b } else { ip_a };
        self.matches.insert(
            match_id.clone(),
            Match {
                a: local.clone(),
                b: session.clone(),
                remote: Some(node.clone()),
            },
        );
        let msg = NodeMsg::Matched {
            to: session,
            match_id: match_id.clone(),
            role,
            common_interests: pair.common_interests,
            partner: local.clone(),
            partner_ip: local_ip,
            from: self.cluster.node_id().to_owned(),
            waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            resumed,
        };
        if self.cluster.send_to(&node, &msg).await.is_err() {
            tracing::warn!(%local, %node, "could not tell the partner's node about a match");
            self.end_remote_match(&match_id, PartnerLeftReason::Disconnected, false);
        }
    }

    /// One side of a new match: its state, its recent matches, its `matched` message.
    #[allow(clippy::too_many_arguments)]
    fn open_side(
        &mut self,
        me: &SessionId,
        other: &SessionId,
        other_ip: IpAddr,
        other_remote: bool,
        role: Role,
        waited: Option<Duration>,
        match_id: &MatchId,
        common_interests: &[String],
        resumed: bool,
    ) {
        if self.keep_records {
            self.dirty.insert(me.clone());
        }
        if let Some(c) = self.conns.get_mut(me) {
            c.state = State::InMatch(match_id.clone());
            c.recent_matches.truncate(REPORTABLE_MATCHES - 1);
            c.recent_matches.push_front(PastMatch {
                match_id: match_id.clone(),
                partner: other.clone(),
                partner_ip: other_ip,
                remote: other_remote,
                call_reported: false,
            });
        }
        if let Some(waited) = waited {
            self.metrics.observe_time_to_match(waited);
        }
        let msg = ServerMessage::Matched {
            match_id: match_id.clone(),
            role,
            common_interests: common_interests.to_vec(),
            ice_servers: self.ice.servers_for(me, SystemTime::now()),
            resumed,
        };
        self.send(me, &msg);
    }

    /// The partner on another node of `match_id` is gone (it told us, or it could not be
    /// reached): the local side is told `reason` and becomes idle.
    fn end_remote_match(&mut self, match_id: &MatchId, reason: PartnerLeftReason, cooldown: bool) {
        let Some(m) = self.matches.remove(match_id) else {
            return;
        };
        self.metrics.active_matches.fetch_sub(1, Relaxed);
        if cooldown {
            self.cluster.record_skip(&m.a, &m.b, Instant::now());
        }
        self.set_state(&m.a, State::Idle);
        self.send(
            &m.a,
            &ServerMessage::PartnerLeft {
                match_id: match_id.clone(),
                reason,
            },
        );
    }

    /// A message from another node about one of this node's sessions.
    async fn on_node_msg(&mut self, msg: NodeMsg) {
        // A session that just moved to another node: what is still sent here goes there.
        let to = match &msg {
            NodeMsg::Matched { to, .. }
            | NodeMsg::Relay { to, .. }
            | NodeMsg::PartnerLeft { to, .. }
            | NodeMsg::PartnerMoved { to, .. }
            | NodeMsg::UndoAsk { to, .. }
            | NodeMsg::UndoRefused { to, .. } => Some(to),
            _ => None,
        };
        if let Some(to) = to.filter(|to| !self.conns.contains_key(*to)).cloned() {
            if self.forward_moved(&to, &msg).await {
                return;
            }
        }
        match msg {
            NodeMsg::ResumeAsk {
                token,
                req,
                from,
                ip,
            } => self.on_resume_ask(token, req, from, ip).await,
            NodeMsg::Handover { req, session } => self.on_handover(req, *session).await,
            NodeMsg::ResumeRefused { req } => self.on_resume_refused(req).await,
            NodeMsg::UndoAsk {
                to,
                match_id,
                from,
                node,
                ip,
                interests,
            } => {
                let asker = undo_remote::Asker {
                    session: from,
                    node,
                    ip,
                    interests,
                };
                self.on_undo_ask(to, match_id, asker).await;
            }
            NodeMsg::UndoRefused {
                to,
                result,
                message,
            } => self.on_undo_refused(to, result, &message),
            NodeMsg::PartnerMoved {
                to,
                match_id,
                session,
                node,
            } => self.on_partner_moved(to, match_id, session, node).await,
            NodeMsg::Matched {
                to,
                match_id,
                role,
                common_interests,
                partner,
                partner_ip,
                from,
                waited_ms,
                resumed,
            } => {
                if resumed {
                    let undo = (to, match_id, role, common_interests);
                    return self
                        .on_remote_rematch(undo, partner, partner_ip, from)
                        .await;
                }
                if self.conns.get(&to).map(|c| &c.state) != Some(&State::Waiting) {
                    // It left the queue (or ended) while the other node paired it.
                    return self.decline_match(&to, partner, match_id, &from).await;
                }
                self.cluster.claimed(&to).await;
                if let Some(Conn {
                    link: Link::Away(d),
                    ..
                }) = self.conns.get_mut(&to)
                {
                    // Paired while its connection was away: it finds the match on resume.
                    d.parked = None;
                }
                self.open_side(
                    &to,
                    &partner,
                    partner_ip,
                    true,
                    role,
                    Some(Duration::from_millis(waited_ms)),
                    &match_id,
                    &common_interests,
                    false,
                );
                self.metrics.active_matches.fetch_add(1, Relaxed);
                self.matches.insert(
                    match_id,
                    Match {
                        a: to,
                        b: partner,
                        remote: Some(from),
                    },
                );
            }
            NodeMsg::Relay {
                to,
                match_id,
                frame,
            } => {
                let in_match = matches!(self.conns.get(&to).map(|c| &c.state), Some(State::InMatch(m)) if *m == match_id);
                if in_match {
                    if self.deliver_relay(&to, Utf8Bytes::from(frame)) {
                        self.metrics.messages_relayed.fetch_add(1, Relaxed);
                    } else {
                        tracing::debug!(%to, "relay from another node dropped: backlog full");
                    }
                }
            }
            NodeMsg::PartnerLeft {
                to,
                match_id,
                reason,
                cooldown,
            } => {
                let ours = self.matches.get(&match_id).is_some_and(|m| m.a == to);
                if ours {
                    self.end_remote_match(&match_id, reason, cooldown);
                }
            }
        }
    }

    /// `to` cannot take the match `match_id` that the node `from` opened with its session
    /// `partner`: that node hears the match is off (`left` if `to` is still here, else
    /// `disconnected`).
    async fn decline_match(
        &mut self,
        to: &SessionId,
        partner: SessionId,
        match_id: MatchId,
        from: &str,
    ) {
        let reason = if self.conns.contains_key(to) {
            PartnerLeftReason::Left
        } else {
            PartnerLeftReason::Disconnected
        };
        let reply = NodeMsg::PartnerLeft {
            to: partner,
            match_id,
            reason,
            cooldown: false,
        };
        let _ = self.cluster.send_to(from, &reply).await;
    }

    /// The cluster's periodic news: matches whose partner's node died end as disconnects.
    async fn on_tick(&mut self, tick: Tick) {
        if let Some(bans) = tick.bans {
            // SQLite off the actor; the sessions of newly banned addresses close when the
            // mirror is updated (`BansChanged`).
            let moderation = self.moderation.clone();
            let tx = self.self_tx.clone();
            tokio::spawn(async move {
                let applied = tokio::task::spawn_blocking(move || {
                    moderation.apply_shared(&bans.current, &bans.removed)
                })
                .await;
                match applied {
                    Ok(Ok(true)) => {
                        let _ = tx.send(Command::BansChanged).await;
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => tracing::error!("could not apply the shared bans: {e:#}"),
                    Err(e) => tracing::error!("shared bans task failed: {e}"),
                }
            });
        }
        self.prune_moved(Instant::now());
        self.expire_remote_undos(Instant::now());
        let Some(alive) = tick.alive else {
            return;
        };
        self.alive_nodes = Some(alive.clone());
        // A node missing for a while is dead. Not at once: after a Redis restart every
        // node's liveness key is gone until its next tick (within about a second).
        let now = Instant::now();
        let remote: std::collections::HashSet<&String> = self
            .matches
            .values()
            .filter_map(|m| m.remote.as_ref())
            .collect();
        self.absent
            .retain(|node, _| remote.contains(node) && !alive.contains(node));
        for node in remote {
            if !alive.contains(node) {
                self.absent.entry(node.clone()).or_insert(now);
            }
        }
        let dead: Vec<&String> = self
            .absent
            .iter()
            // Its sessions may resume on other nodes from their records meanwhile.
            .filter(|(_, since)| {
                now.saturating_duration_since(**since) >= DEAD_NODE_GRACE.max(self.resume_window)
            })
            .map(|(node, _)| node)
            .collect();
        let orphaned: Vec<MatchId> = self
            .matches
            .iter()
            .filter(|(_, m)| m.remote.as_ref().is_some_and(|n| dead.contains(&n)))
            .map(|(id, _)| id.clone())
            .collect();
        for match_id in orphaned {
            tracing::info!(%match_id, "the partner's node is gone");
            self.end_remote_match(&match_id, PartnerLeftReason::Disconnected, false);
        }
    }

    /// Ends `session`'s current match, if any: the partner is told why and becomes idle.
    /// Returns the match that ended, the partner, and the partner's node when it is not
    /// this one.
    async fn end_current(
        &mut self,
        session: &SessionId,
        reason: PartnerLeftReason,
    ) -> Option<(MatchId, SessionId, Option<String>)> {
        self.end_current_as(session, reason, reason != PartnerLeftReason::Disconnected)
            .await
    }

    /// [`Self::end_current`], choosing whether the pair gets the rematch cooldown (a
    /// `next` with `connection_failed` tells the partner `disconnected` but keeps it).
    async fn end_current_as(
        &mut self,
        session: &SessionId,
        reason: PartnerLeftReason,
        cooldown: bool,
    ) -> Option<(MatchId, SessionId, Option<String>)> {
        let Some(State::InMatch(match_id)) = self.conns.get(session).map(|c| &c.state) else {
            return None;
        };
        let match_id = match_id.clone();
        self.set_state(session, State::Idle);
        let m = self.matches.remove(&match_id)?;
        self.metrics.active_matches.fetch_sub(1, Relaxed);
        let (partner, node) = m.partner_of(session);
        if cooldown {
            self.cluster.record_skip(session, &partner, Instant::now());
        }
        let left = ServerMessage::PartnerLeft {
            match_id: match_id.clone(),
            reason,
        };
        match &node {
            None => {
                self.set_state(&partner, State::Idle);
                self.send(&partner, &left);
            }
            Some(node) => {
                let msg = NodeMsg::PartnerLeft {
                    to: partner.clone(),
                    match_id: match_id.clone(),
                    reason,
                    cooldown,
                };
                if self.cluster.send_to(node, &msg).await.is_err() {
                    // Its node notices the lost partner when the cluster is back (the
                    // liveness check), not before: documented as a gap.
                    tracing::warn!(%partner, %node, "could not tell the partner's node");
                }
            }
        }
        Some((match_id, partner, node))
    }

    async fn relay(&mut self, session: SessionId, match_id: MatchId, frame: Utf8Bytes) {
        let in_match = matches!(self.conns.get(&session).map(|c| &c.state), Some(State::InMatch(m)) if *m == match_id);
        let partner = in_match
            .then(|| self.matches.get(&match_id))
            .flatten()
            .map(|m| m.partner_of(&session));
        match partner {
            Some((partner, None)) => {
                if self.deliver_relay(&partner, frame) {
                    self.metrics.messages_relayed.fetch_add(1, Relaxed);
                } else {
                    let message = format!(
                        "not delivered: the stranger's connection dropped and is coming back; \
                         at most {RESUME_BACKLOG_FRAMES} messages ({} KiB) are held for them",
                        RESUME_BACKLOG_BYTES / 1024
                    );
                    self.send_error(&session, ErrorCode::RateLimited, &message);
                }
            }
            Some((partner, Some(node))) => {
                let msg = NodeMsg::Relay {
                    to: partner,
                    match_id,
                    frame: frame.as_str().to_owned(),
                };
                if self.cluster.send_to(&node, &msg).await.is_ok() {
                    self.metrics.messages_relayed.fetch_add(1, Relaxed);
                } else {
                    self.send_error(
                        &session,
                        ErrorCode::Unavailable,
                        "not delivered: the stranger is connected to another server, which \
                         cannot be reached right now",
                    );
                }
            }
            None => self.send_error(
                &session,
                ErrorCode::NotInMatch,
                "that match_id is not your current match; nothing was relayed",
            ),
        }
    }

    async fn report(&mut self, session: SessionId, match_id: MatchId, reason: String) {
        let Some(past) = self.recent_match(
            &session,
            &match_id,
            "you can report only your current or previous partner",
        ) else {
            return;
        };
        let (reported_session, reported_ip) = (past.partner.0.clone(), past.partner_ip);
        let Some(reporter_ip) = self.conns.get(&session).map(|c| c.ip) else {
            return;
        };
        self.metrics.reports_total.fetch_add(1, Relaxed);
        let report = Report {
            reporter_session: session.0.clone(),
            reporter_ip,
            reported_session,
            reported_ip,
            match_id: match_id.0,
            reason,
        };
        tracing::info!(reporter = %report.reporter_session, reported = %report.reported_session, ip = %report.reported_ip, "report received");
        // Counted over every node of a cluster (the report record itself stays here).
        let cluster_distinct = self
            .cluster
            .count_report(reported_ip, &session, self.moderation.window())
            .await;
        let moderation = self.moderation.clone();
        let tx = self.self_tx.clone();
        let metrics = Arc::clone(&self.metrics);
        tokio::spawn(async move {
            let ip = report.reported_ip;
            match tokio::task::spawn_blocking(move || {
                moderation.record_report_counted(&report, cluster_distinct)
            })
            .await
            {
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

    /// `match_id` among the sender's current and recent matches: what `report`, `block`
    /// and `call_report` may name. Otherwise answers `not_in_match` with `refusal`.
    fn recent_match(
        &mut self,
        session: &SessionId,
        match_id: &MatchId,
        refusal: &str,
    ) -> Option<&mut PastMatch> {
        let found = self
            .conns
            .get(session)?
            .recent_matches
            .iter()
            .position(|p| p.match_id == *match_id);
        let Some(i) = found else {
            self.send_error(session, ErrorCode::NotInMatch, refusal);
            return None;
        };
        self.conns.get_mut(session)?.recent_matches.get_mut(i)
    }

    fn send_error(&mut self, session: &SessionId, code: ErrorCode, message: &str) {
        self.metrics.error(code);
        self.send(session, &ServerMessage::error(code, message));
    }

    fn send(&mut self, session: &SessionId, msg: &ServerMessage) {
        self.deliver(session, Message::text(msg.to_json()));
    }

    /// Queues a frame for a session. A full outbox means the client stopped reading:
    /// it is disconnected rather than buffered without bound. A detached session holds
    /// the frame until it resumes (a close frame is not held: nothing is left to close).
    fn deliver(&mut self, session: &SessionId, msg: Message) {
        let Some(conn) = self.conns.get_mut(session) else {
            return;
        };
        match &mut conn.link {
            Link::Live { outbox, kick, .. } => push(outbox, kick, session, msg, &self.metrics),
            Link::Away(d) => {
                if !matches!(msg, Message::Close(_)) {
                    d.backlog.push_back(msg);
                }
            }
        }
    }

    /// [`Self::deliver`] for a relayed frame: a detached session holds at most
    /// [`RESUME_BACKLOG_FRAMES`] of them in [`RESUME_BACKLOG_BYTES`]; false when the
    /// frame was dropped because that is full.
    fn deliver_relay(&mut self, session: &SessionId, frame: Utf8Bytes) -> bool {
        let Some(conn) = self.conns.get_mut(session) else {
            return true;
        };
        match &mut conn.link {
            Link::Live { outbox, kick, .. } => {
                push(outbox, kick, session, Message::Text(frame), &self.metrics);
                true
            }
            Link::Away(d) => {
                let bytes = frame.as_str().len();
                if d.relayed >= RESUME_BACKLOG_FRAMES
                    || d.relayed_bytes + bytes > RESUME_BACKLOG_BYTES
                {
                    return false;
                }
                d.relayed += 1;
                d.relayed_bytes += bytes;
                d.backlog.push_back(Message::Text(frame));
                true
            }
        }
    }
}

/// Queues a frame in one connection's outbox; a full outbox kicks the connection.
fn push(
    outbox: &Outbox,
    kick: &CancellationToken,
    session: &SessionId,
    msg: Message,
    metrics: &Metrics,
) {
    match outbox.try_send(msg) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            if !kick.is_cancelled() {
                tracing::info!(%session, "disconnecting a slow reader");
                metrics.slow_readers_total.fetch_add(1, Relaxed);
                kick.cancel();
            }
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

/// The next message from other nodes; never, without a cluster.
async fn recv_opt(rx: &mut Option<mpsc::Receiver<NodeMsg>>) -> Option<NodeMsg> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
