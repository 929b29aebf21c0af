//! The cluster seam: where the matchmaker actor keeps its waiting queue and how it reaches
//! a partner served by another node.
//!
//! The actor owns its node's sessions (their outboxes, states, matches) either way; what
//! differs is behind [`Cluster`]:
//! - [`local::LocalCluster`] (no `--redis`): the in-memory [`MatchQueue`](super::queue::MatchQueue)
//!   of a single node; every call is answered at once and every partner is local.
//! - [`redis::RedisCluster`] (`--redis URL`): the waiting queue lives in Redis and is shared
//!   by every node; one Lua script call adds a waiter, reads the queue, picks a partner
//!   with the rules of [`super::queue::choose`] and claims both waiters atomically, so
//!   nobody is paired twice. A partner on another node is reached through that node's own
//!   pub/sub channel with a [`NodeMsg`].

pub mod local;
pub mod redis;

use super::queue::{Pair, Parked};
use crate::moderation::SharedBan;
use peer_stream_shared::{MatchId, PartnerLeftReason, Role, SessionId};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::future::Future;
use std::net::IpAddr;
use std::time::Instant;
use tokio::sync::mpsc;

/// The shared store cannot be reached: `join`/`next` answer `error` `unavailable`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unavailable;

/// The side of a pair that another node serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteSide {
    pub session: SessionId,
    pub node: String,
    pub ip: IpAddr,
}

/// Two sessions the queue paired; at most one of them is served by another node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paired {
    pub pair: Pair,
    pub remote: Option<RemoteSide>,
}

impl Paired {
    pub fn local(pair: Pair) -> Self {
        Paired { pair, remote: None }
    }
}

/// What a `push` did.
#[derive(Debug)]
pub struct Pushed {
    /// The people waiting, including the pushed session (what `queued` says).
    pub waiting: u64,
    /// The pair formed at once, if someone compatible was waiting.
    pub paired: Option<Paired>,
}

/// What one node tells another about a session the receiver serves (`to`). Sent over the
/// receiver's own channel (one per node, never a broadcast).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum NodeMsg {
    /// The sender paired `to` (waiting on the receiver) with its own session `partner`; both
    /// already left the shared queue. The receiver answers `partner_left` if `to` is no
    /// longer waiting.
    Matched {
        to: SessionId,
        match_id: MatchId,
        role: Role,
        common_interests: Vec<String>,
        partner: SessionId,
        partner_ip: IpAddr,
        /// The sender's node id: where `partner` is served.
        from: String,
        waited_ms: u64,
        /// The rematch of an `undo_next` (`to` asked for it with [`NodeMsg::UndoAsk`]).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        resumed: bool,
    },
    /// A relayed `signal`/`chat`/`typing` frame, already serialized for `to`.
    Relay {
        to: SessionId,
        match_id: MatchId,
        frame: String,
    },
    /// `to`'s partner in `match_id` left (`next`, `leave`, disconnect); `cooldown`: the
    /// two are kept apart for the rematch cooldown.
    PartnerLeft {
        to: SessionId,
        match_id: MatchId,
        reason: PartnerLeftReason,
        cooldown: bool,
    },
    /// A client reconnected to the sender (`from`) with the resume token of a session the
    /// receiver serves: the receiver answers `req` with [`NodeMsg::Handover`] (and stops
    /// serving the session) or [`NodeMsg::ResumeRefused`]. `ip`: the client's address now.
    ResumeAsk {
        token: String,
        req: String,
        from: String,
        ip: IpAddr,
    },
    /// The answer to `ResumeAsk` `req`: the session, which the receiver serves from now on.
    Handover {
        req: String,
        session: Box<super::handover::HandedOver>,
    },
    /// The answer to `ResumeAsk` `req`: the token is unknown, used or expired (or the
    /// address is banned); the receiver starts a new session.
    ResumeRefused { req: String },
    /// `from` (served by `node`) sent `undo_next` for its `next` that ended `match_id`
    /// with `to`, served by the receiver: the receiver checks `to` is still free and opens
    /// the match again (a `Matched` with `resumed`), or answers `UndoRefused`.
    UndoAsk {
        to: SessionId,
        match_id: MatchId,
        from: SessionId,
        node: String,
        ip: IpAddr,
        interests: Vec<String>,
    },
    /// The answer to `UndoAsk` from `to`: no rematch (`result`, and why, for the user).
    UndoRefused {
        to: SessionId,
        result: crate::metrics::UndoResult,
        message: String,
    },
    /// `to`'s partner `session` in `match_id` moved (resumed) to the node `node`.
    PartnerMoved {
        to: SessionId,
        match_id: MatchId,
        session: SessionId,
        node: String,
    },
}

/// What the periodic cluster tick learned.
#[derive(Debug, Default)]
pub struct Tick {
    /// The nodes alive now (`None` without a cluster, or when the store was unreachable):
    /// matches with a partner on any other node end as disconnects.
    pub alive: Option<HashSet<String>>,
    /// The bans shared by the cluster, when they changed since the last tick (all of them
    /// at a node's first tick).
    pub bans: Option<SharedBans>,
}

/// The cluster's shared bans, as a tick read them.
#[derive(Debug, Default)]
pub struct SharedBans {
    /// Every shared ban (also expired ones: the receiver skips those).
    pub current: Vec<SharedBan>,
    /// Targets that were shared at the previous read and are not any more (unbanned).
    pub removed: Vec<String>,
}

/// The matchmaker's queue and relay, in memory or shared through Redis. Every method is
/// called from the actor only, in order.
pub trait Cluster: Send + 'static {
    /// This node's id (the name remote nodes use to reach it).
    fn node_id(&self) -> &str;
    /// Changes whenever [`Cluster::next_deadline`] may have changed.
    fn version(&self) -> u64;
    /// When [`Cluster::poll`] could pair someone it cannot pair now.
    fn next_deadline(&self, now: Instant) -> Option<Instant>;
    /// Pairs whoever can be paired now (this node's waiters, with anyone).
    fn poll(&mut self, now: Instant) -> impl Future<Output = Vec<Paired>> + Send;
    /// Whether `session` (of this node) waits in the queue.
    fn contains(&self, session: &SessionId) -> bool;
    /// This node's waiters.
    fn local_waiting(&self) -> usize;
    /// `(online, waiting)` for the whole service; `local_online` is this node's sessions.
    fn counts(&self, local_online: u64) -> (u64, u64);
    /// Puts `session` at the back of the queue (or updates its interests, keeping its
    /// place) and pairs it at once when someone compatible waits.
    fn push(
        &mut self,
        session: SessionId,
        interests: Vec<String>,
        ip: IpAddr,
        now: Instant,
    ) -> impl Future<Output = Result<Pushed, Unavailable>> + Send;
    /// Takes `session` out of the queue; false if it was not waiting.
    fn remove(&mut self, session: &SessionId) -> impl Future<Output = bool> + Send;
    /// Takes a waiting `session` out of the queue, keeping its place for [`Cluster::unpark`].
    fn park(&mut self, session: &SessionId) -> impl Future<Output = Option<Parked>> + Send;
    /// A parked entry for a session that was not waiting (its place: the back of the queue).
    fn parked_at_back(&mut self, interests: Vec<String>, now: Instant) -> Parked;
    /// Puts a parked session back in its place and pairs it at once if possible.
    fn unpark(
        &mut self,
        session: SessionId,
        parked: Parked,
        ip: IpAddr,
        now: Instant,
    ) -> impl Future<Output = Option<Paired>> + Send;
    /// `a` (of this node) and `b` skipped each other: kept apart for the cooldown.
    fn record_skip(&mut self, a: &SessionId, b: &SessionId, now: Instant);
    /// `a` (of this node) blocked `b`: never paired while both live.
    fn block(&mut self, a: &SessionId, b: &SessionId) -> impl Future<Output = ()> + Send;
    fn blocked(&self, a: &SessionId, b: &SessionId) -> bool;
    /// The session ended: out of the queue, its blocks dropped.
    fn forget(&mut self, session: &SessionId) -> impl Future<Output = ()> + Send;
    /// Sends `msg` to the node `node`.
    fn send_to(
        &mut self,
        node: &str,
        msg: &NodeMsg,
    ) -> impl Future<Output = Result<(), Unavailable>> + Send;
    /// The messages other nodes send this one (taken once by the actor; `None`: no cluster).
    fn take_inbound(&mut self) -> Option<mpsc::Receiver<NodeMsg>>;
    /// Called every second: liveness, service-wide counts.
    fn tick(&mut self, local_online: u64) -> impl Future<Output = Tick> + Send;
    /// Counts a report of `reported` by `reporter` toward the automatic ban, across every
    /// node: the distinct reporters within `window` (`None` without a cluster, or when
    /// the count could not be had; the node's own count applies then).
    fn count_report(
        &mut self,
        reported: IpAddr,
        reporter: &SessionId,
        window: std::time::Duration,
    ) -> impl Future<Output = Option<u32>> + Send;
    /// A ban this node made (after reports): every node applies it within seconds.
    fn share_ban(&mut self, ban: SharedBan) -> impl Future<Output = ()> + Send;
    /// `session`, waiting here, was paired by another node: drop it from this node's view
    /// of the queue (and from the shared queue, should it have been re-added meanwhile).
    fn claimed(&mut self, session: &SessionId) -> impl Future<Output = ()> + Send;
    /// The node stops: its waiters leave the shared queue, its liveness ends.
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send;
    /// What `session` must not be paired with: `(other, until)` in ms since the Unix
    /// epoch, `u64::MAX` for a block. Carried along when the session moves to another
    /// node (a resume there); a single node has nobody to hand it to.
    fn avoid_of(&self, _session: &SessionId) -> Vec<(SessionId, u64)> {
        Vec::new()
    }
    /// Takes on the cooldowns and blocks of `session`, which moved here from another node.
    fn adopt_avoid(&mut self, _session: &SessionId, _avoid: Vec<(SessionId, u64)>) {}
    /// `session` moved to another node: its own queue entry, cooldowns and blocks go
    /// (that node holds them now); other sessions' records of it stay, as they still apply.
    fn moved_away(&mut self, session: &SessionId) -> impl Future<Output = ()> + Send {
        self.forget(session)
    }
    /// Writes (`Some`) or deletes (`None`) the resume records of this node's sessions, by
    /// resume token: what another node needs to resume a session after this one died
    /// (see `handover.rs`). Written in one batch per tick; a single node keeps none.
    fn save_resume(
        &mut self,
        _records: Vec<(String, Option<String>)>,
    ) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
    /// Takes (reads and deletes, atomically) the resume record of `token`, if any.
    fn take_resume(&mut self, _token: &str) -> impl Future<Output = Option<String>> + Send {
        std::future::ready(None)
    }
}
