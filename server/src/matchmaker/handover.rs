//! Resuming a session on another node of a cluster (issue #11, "calls outlive the
//! signaling connection").
//!
//! A resume token names the node that issued it (its first 32 hex digits are the node id,
//! the rest a secret). A client whose connection was lost reconnects through the load
//! balancer, maybe to another node, and sends `hello` with `resume`:
//!
//! 1. The node it reached (B) does not know the token but knows the node that issued it
//!    (A) is alive: it holds the new connection and asks A ([`NodeMsg::ResumeAsk`]).
//! 2. A takes the session out of its tables without telling the partner and sends it
//!    over ([`NodeMsg::Handover`]): its match (partner, partner's node), its place in the
//!    queue, its blocks and cooldowns, what was held for it while it was away. A partner
//!    on a third node is told where the session went ([`NodeMsg::PartnerMoved`]); what
//!    still reaches A for the session in the meantime, A forwards to B.
//! 3. B serves the session from then on: `welcome` with `resumed: true`, the held frames,
//!    and the call goes on. The partner is told nothing.
//!
//! A refused token, a node that is gone, or no answer within [`HANDOVER_TIMEOUT`] give
//! the client a new session, as an unknown token does on a single node. A node stopped
//! gracefully closes its connections with 1012 and keeps answering `ResumeAsk` while it
//! drains (see `Matchmaker::run`), so a restart costs its users nothing.

use super::cluster::{Cluster, NodeMsg};
use super::queue::Parked;
use super::{Conn, Link, Match, Matchmaker, PastMatch, Registered, State, REPORTABLE_MATCHES};
use peer_stream_shared::{MatchId, PartnerLeftReason, ServerMessage, SessionId};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

/// How long a node waits for the issuing node to hand a session over before it gives the
/// client a new session instead. Two pub/sub hops on a healthy cluster take milliseconds.
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(2);

/// Characters of a node id (`random_id`: 128 bits in hex) at the start of its tokens.
const NODE_ID_CHARS: usize = 32;

/// A session on its way from one node to another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HandedOver {
    pub session: SessionId,
    pub state: HandedState,
    pub interests: Vec<String>,
    /// Idle because it sent `leave`.
    pub stopped: bool,
    /// Its current and last matches, newest first (what `report` and `block` may name).
    pub recent: Vec<HandedMatch>,
    /// Frames held for it while its connection was away, oldest first.
    pub backlog: Vec<String>,
    /// Its cooldowns and blocks ([`Cluster::avoid_of`]).
    pub avoid: Vec<(SessionId, u64)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "s", rename_all = "snake_case")]
pub enum HandedState {
    Idle,
    /// Waiting in the queue: its arrival number keeps its place.
    Waiting {
        seq: u64,
        waited_ms: u64,
    },
    InMatch {
        match_id: MatchId,
        partner: SessionId,
        /// The node serving the partner (maybe the receiver itself).
        partner_node: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HandedMatch {
    pub match_id: MatchId,
    pub partner: SessionId,
    pub partner_ip: IpAddr,
    pub call_reported: bool,
}

/// A `hello` with another node's token, waiting for that node's answer.
pub(super) struct PendingResume {
    /// The new session it gets if the resume fails.
    pub session: SessionId,
    pub ip: IpAddr,
    pub link: Link,
    pub counts: bool,
    pub reply: oneshot::Sender<Registered>,
    pub until: Instant,
    /// The token it asked with (for the resume record, should the node not answer).
    pub token: String,
}

/// The node that issued `token`, when it is a cluster token.
fn token_node(token: &str) -> Option<&str> {
    (token.len() == 2 * NODE_ID_CHARS && token.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| &token[..NODE_ID_CHARS])
}

/// Whether `node` is a cluster node id (a single node's id is not).
fn is_cluster_node(node: &str) -> bool {
    node.len() == NODE_ID_CHARS && node.chars().all(|c| c.is_ascii_hexdigit())
}

impl<C: Cluster> Matchmaker<C> {
    /// Whether this node is one of a cluster's.
    pub(super) fn is_cluster(&self) -> bool {
        is_cluster_node(self.cluster.node_id())
    }

    /// A fresh token: in a cluster it starts with this node's id, so any node can tell
    /// where the session lives.
    pub(super) fn token_for_node(&self, secret: String) -> String {
        let node = self.cluster.node_id();
        if is_cluster_node(node) {
            format!("{node}{secret}")
        } else {
            secret
        }
    }

    /// `hello` with a token this node does not know. When another live node issued it,
    /// the connection waits for that node's answer and `None` is returned; otherwise the
    /// connection is handed back for a new session.
    pub(super) async fn ask_handover(&mut self, pending: PendingResume) -> Option<PendingResume> {
        let me = self.cluster.node_id().to_owned();
        let token = pending.token.clone();
        let Some(node) = token_node(&token).filter(|n| *n != me && is_cluster_node(&me)) else {
            return Some(pending);
        };
        // A node the last liveness tick did not see is gone, and its sessions with it.
        if self
            .alive_nodes
            .as_ref()
            .is_some_and(|alive| !alive.contains(node))
        {
            return self.resume_from_record(pending).await;
        }
        let node = node.to_owned();
        let req = super::new_id();
        let ask = NodeMsg::ResumeAsk {
            token: pending.token.clone(),
            req: req.clone(),
            from: me,
            ip: pending.ip,
        };
        if self.cluster.send_to(&node, &ask).await.is_err() {
            return Some(pending);
        }
        tracing::debug!(%node, "asked another node to hand a session over");
        self.pending.insert(req.clone(), pending);
        self.pending_order.push_back(req);
        None
    }

    /// The earliest moment a pending resume gives up.
    pub(super) fn next_pending_deadline(&self) -> Option<Instant> {
        self.pending_order
            .iter()
            .find_map(|req| self.pending.get(req))
            .map(|p| p.until)
    }

    /// Pending resumes whose node did not answer in time get new sessions.
    pub(super) async fn expire_pending(&mut self, now: Instant) {
        while let Some(req) = self.pending_order.front().cloned() {
            match self.pending.get(&req) {
                None => {
                    self.pending_order.pop_front();
                }
                Some(p) if p.until <= now => {
                    self.pending_order.pop_front();
                    if let Some(p) = self.pending.remove(&req) {
                        // The node is gone (or hopelessly slow): its record, if any.
                        tracing::info!("no handover in time; trying the resume record");
                        if let Some(p) = self.resume_from_record(p).await {
                            self.register_pending(p).await;
                        }
                    }
                }
                Some(_) => break,
            }
        }
    }

    async fn register_pending(&mut self, p: PendingResume) {
        self.register(p.session, p.ip, p.link, p.counts, p.reply)
            .await;
    }

    /// Another node asks for the session of `token`: hand it over, or refuse.
    pub(super) async fn on_resume_ask(
        &mut self,
        token: String,
        req: String,
        from: String,
        ip: IpAddr,
    ) {
        let session = self.tokens.remove(&token);
        let refuse = match &session {
            None => true,
            Some(s) if self.moderation.is_banned(ip) => {
                let s = s.clone();
                self.end_session(&s).await;
                true
            }
            Some(_) => false,
        };
        let Some(session) = session.filter(|_| !refuse) else {
            let _ = self
                .cluster
                .send_to(&from, &NodeMsg::ResumeRefused { req })
                .await;
            return;
        };
        let Some(handed) = self.take_out(&session, &from).await else {
            let _ = self
                .cluster
                .send_to(&from, &NodeMsg::ResumeRefused { req })
                .await;
            return;
        };
        let msg = NodeMsg::Handover {
            req,
            session: Box::new(handed),
        };
        if self.cluster.send_to(&from, &msg).await.is_err() {
            // The session is out of this node's tables already: it is lost, as if its
            // window had ended. Its partner's node notices when the cluster is back.
            tracing::warn!(%session, node = %from, "could not hand a session over");
            return;
        }
        self.metrics
            .sessions_handed_over_total
            .fetch_add(1, Relaxed);
        tracing::debug!(%session, node = %from, "session handed over");
        self.moved
            .insert(session, (from, Instant::now() + self.resume_window));
    }

    /// Takes `session` out of this node's tables without telling its partner, for the node
    /// `to`: its match now points there, and a partner on a third node is told so.
    async fn take_out(&mut self, session: &SessionId, to: &str) -> Option<HandedOver> {
        let c = self.conns.remove(session)?;
        self.dirty.remove(session);
        self.stale_records.extend(c.saved.clone());
        if c.counts.is_some() {
            self.count_subscribers = self.count_subscribers.saturating_sub(1);
        }
        let (backlog, parked) = match c.link {
            Link::Live { kick, .. } => {
                // The client gave up on this connection (it reconnected elsewhere).
                kick.cancel();
                (Vec::new(), None)
            }
            Link::Away(d) => {
                self.metrics.sessions_detached.fetch_sub(1, Relaxed);
                (Vec::from(d.backlog), d.parked)
            }
        };
        let backlog = backlog
            .into_iter()
            .filter_map(|m| match m {
                Message::Text(t) => Some(t.as_str().to_owned()),
                _ => None,
            })
            .collect();
        let state = match &c.state {
            State::Idle => HandedState::Idle,
            State::Waiting => {
                let parked = match parked {
                    Some(p) => Some(p),
                    None => self.cluster.park(session).await,
                };
                match parked {
                    Some(p) => HandedState::Waiting {
                        seq: p.seq,
                        waited_ms: u64::try_from(p.since.elapsed().as_millis()).unwrap_or(0),
                    },
                    None => HandedState::Idle,
                }
            }
            State::InMatch(match_id) => match self.matches.remove(match_id) {
                None => HandedState::Idle,
                Some(m) => {
                    let (partner, node) = m.partner_of(session);
                    match &node {
                        None => {
                            // The partner stays here; the session is now on `to`.
                            self.matches.insert(
                                match_id.clone(),
                                Match {
                                    a: partner.clone(),
                                    b: session.clone(),
                                    remote: Some(to.to_owned()),
                                },
                            );
                        }
                        Some(node) => {
                            self.metrics.active_matches.fetch_sub(1, Relaxed);
                            if node != to {
                                let moved = NodeMsg::PartnerMoved {
                                    to: partner.clone(),
                                    match_id: match_id.clone(),
                                    session: session.clone(),
                                    node: to.to_owned(),
                                };
                                let _ = self.cluster.send_to(node, &moved).await;
                            }
                        }
                    }
                    HandedState::InMatch {
                        match_id: match_id.clone(),
                        partner,
                        partner_node: node.unwrap_or_else(|| self.cluster.node_id().to_owned()),
                    }
                }
            },
        };
        let avoid = self.cluster.avoid_of(session);
        self.cluster.moved_away(session).await;
        self.metrics
            .sessions
            .store(self.conns.len() as i64, Relaxed);
        Some(HandedOver {
            session: session.clone(),
            state,
            interests: c.interests,
            stopped: c.stopped,
            recent: c
                .recent_matches
                .into_iter()
                .map(|p| HandedMatch {
                    match_id: p.match_id,
                    partner: p.partner,
                    partner_ip: p.partner_ip,
                    call_reported: p.call_reported,
                })
                .collect(),
            backlog,
            avoid,
        })
    }

    /// The answer to one of this node's `ResumeAsk`s: the session is served here now.
    pub(super) async fn on_handover(&mut self, req: String, h: HandedOver) {
        let Some(p) = self.pending.remove(&req) else {
            // Given up on already (the client got a new session): the handed-over session
            // ends as a disconnect would.
            tracing::info!(session = %h.session, "a handover arrived too late");
            self.adopt(h, None).await;
            return;
        };
        self.adopt(h, Some(p)).await;
    }

    /// Serves the handed-over session `h` on the pending connection `p` (`None`: nobody
    /// waits for it any more; it ends at once, its partner told).
    async fn adopt(&mut self, h: HandedOver, p: Option<PendingResume>) {
        let me = self.cluster.node_id().to_owned();
        let session = h.session.clone();
        if self.conns.contains_key(&session) {
            if let Some(p) = p {
                self.register_pending(p).await;
            }
            return;
        }
        let (ip, link, counts, reply) = match p {
            Some(p) => (p.ip, p.link, p.counts, Some(p.reply)),
            None => {
                let (tx, _) = crate::outbox::channel(1);
                let link = Link::Live {
                    outbox: tx,
                    kick: tokio_util::sync::CancellationToken::new(),
                    conn: 0,
                };
                (IpAddr::from([0, 0, 0, 0]), link, false, None)
            }
        };
        let recent: VecDeque<PastMatch> = h
            .recent
            .into_iter()
            .take(REPORTABLE_MATCHES)
            .map(|m| PastMatch {
                remote: !self.conns.contains_key(&m.partner),
                match_id: m.match_id,
                partner: m.partner,
                partner_ip: m.partner_ip,
                call_reported: m.call_reported,
            })
            .collect();
        let mut state = State::Idle;
        let mut parked = None;
        let mut lost_match = None;
        match h.state {
            HandedState::Idle => {}
            HandedState::Waiting { seq, waited_ms } => {
                let now = Instant::now();
                parked = Some(Parked {
                    seq,
                    interests: h.interests.clone(),
                    since: now
                        .checked_sub(Duration::from_millis(waited_ms))
                        .unwrap_or(now),
                });
                state = State::Waiting;
            }
            HandedState::InMatch {
                match_id,
                partner,
                partner_node,
            } => {
                if partner_node == me {
                    // The partner is served here: its match record pointed at the old node.
                    match self.matches.get_mut(&match_id) {
                        Some(m) if m.a == partner => {
                            m.remote = None;
                            state = State::InMatch(match_id);
                        }
                        _ => lost_match = Some(match_id),
                    }
                } else {
                    self.metrics.active_matches.fetch_add(1, Relaxed);
                    self.matches.insert(
                        match_id.clone(),
                        Match {
                            a: session.clone(),
                            b: partner,
                            remote: Some(partner_node),
                        },
                    );
                    state = State::InMatch(match_id);
                }
            }
        }
        self.cluster.adopt_avoid(&session, h.avoid);
        let secret = super::new_id();
        let token = self.token_for_node(secret);
        self.tokens.insert(token.clone(), session.clone());
        self.conns.insert(
            session.clone(),
            Conn {
                ip,
                link,
                resume_token: Some(token.clone()),
                state,
                interests: h.interests,
                undo: None,
                stopped: h.stopped,
                counts: None,
                recent_matches: recent,
                saved: None,
            },
        );
        if self.keep_records {
            self.dirty.insert(session.clone());
        }
        self.metrics
            .sessions
            .store(self.conns.len() as i64, Relaxed);
        let Some(reply) = reply else {
            self.end_session(&session).await;
            return;
        };
        self.metrics.sessions_resumed_total.fetch_add(1, Relaxed);
        let numbers = self.cluster.counts(self.conns.len() as u64);
        let backlog: Vec<Message> = h.backlog.into_iter().map(Message::text).collect();
        tracing::debug!(%session, held = backlog.len(), "session resumed from another node");
        let _ = reply.send(Registered {
            session: session.clone(),
            online: numbers.0,
            resume_token: Some(token),
            resumed: true,
            backlog,
        });
        self.subscribe_counts(&session, counts, numbers);
        if let Some(match_id) = lost_match {
            // Its partner here ended the match while the session was on its way.
            self.send(
                &session,
                &ServerMessage::PartnerLeft {
                    match_id,
                    reason: PartnerLeftReason::Disconnected,
                },
            );
        }
        if let Some(parked) = parked {
            if let Some(paired) = self
                .cluster
                .unpark(session, parked, ip, Instant::now())
                .await
            {
                self.start_match(paired).await;
            }
        }
    }

    /// The issuing node refused one of this node's `ResumeAsk`s: a new session.
    pub(super) async fn on_resume_refused(&mut self, req: String) {
        if let Some(p) = self.pending.remove(&req) {
            self.register_pending(p).await;
        }
    }

    /// The partner of `to` in `match_id` moved to `node`. If the match is over here (it
    /// resumed from a record after its node died, too late), that node hears so.
    pub(super) async fn on_partner_moved(
        &mut self,
        to: SessionId,
        match_id: MatchId,
        session: SessionId,
        node: String,
    ) {
        match self.matches.get_mut(&match_id) {
            Some(m) if m.a == to => m.remote = Some(node),
            Some(m) if m.b == to && m.remote.is_none() => {
                // Both sides were here; `to`'s partner (`b`) moved: re-orient the record.
                let (a, b) = (m.a.clone(), m.b.clone());
                m.a = b;
                m.b = a;
                m.remote = Some(node);
            }
            _ => {
                let left = NodeMsg::PartnerLeft {
                    to: session,
                    match_id,
                    reason: PartnerLeftReason::Disconnected,
                    cooldown: false,
                };
                let _ = self.cluster.send_to(&node, &left).await;
            }
        }
    }

    /// Resumes the session of `p.token` from its resume record (its node died): `None`
    /// when it did, else `p` back for a new session.
    async fn resume_from_record(&mut self, p: PendingResume) -> Option<PendingResume> {
        let Some(json) = self.cluster.take_resume(&p.token).await else {
            return Some(p);
        };
        let h: HandedOver = match serde_json::from_str(&json) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("an unreadable resume record: {e}");
                return Some(p);
            }
        };
        tracing::info!(session = %h.session, "resuming a session of a node that is gone");
        let me = self.cluster.node_id().to_owned();
        if let HandedState::InMatch {
            match_id,
            partner,
            partner_node,
        } = &h.state
        {
            if *partner_node != me {
                // The partner's node keeps the match past the node's death for a resume
                // window; from now on it sends here.
                let moved = NodeMsg::PartnerMoved {
                    to: partner.clone(),
                    match_id: match_id.clone(),
                    session: h.session.clone(),
                    node: me.clone(),
                };
                let _ = self.cluster.send_to(partner_node, &moved).await;
            }
        }
        self.adopt(h, Some(p)).await;
        None
    }

    /// What another node needs to resume `session` should this one die (no held frames:
    /// they die with the node). A waiter gets a new place at the back of the queue.
    fn snapshot(&self, session: &SessionId) -> Option<HandedOver> {
        let c = self.conns.get(session)?;
        let state = match &c.state {
            State::Idle => HandedState::Idle,
            State::Waiting => HandedState::Waiting {
                seq: 0,
                waited_ms: 0,
            },
            State::InMatch(match_id) => {
                let m = self.matches.get(match_id)?;
                let (partner, node) = m.partner_of(session);
                HandedState::InMatch {
                    match_id: match_id.clone(),
                    partner,
                    partner_node: node.unwrap_or_else(|| self.cluster.node_id().to_owned()),
                }
            }
        };
        Some(HandedOver {
            session: session.clone(),
            state,
            interests: c.interests.clone(),
            stopped: c.stopped,
            recent: c
                .recent_matches
                .iter()
                .map(|p| HandedMatch {
                    match_id: p.match_id.clone(),
                    partner: p.partner.clone(),
                    partner_ip: p.partner_ip,
                    call_reported: p.call_reported,
                })
                .collect(),
            backlog: Vec::new(),
            avoid: self.cluster.avoid_of(session),
        })
    }

    /// Writes the resume records of the sessions that changed since the last tick, and
    /// deletes the stale ones: one batch a second, whatever the load.
    pub(super) async fn save_records(&mut self) {
        if self.dirty.is_empty() && self.stale_records.is_empty() {
            return;
        }
        let mut writes: Vec<(String, Option<String>)> = std::mem::take(&mut self.stale_records)
            .into_iter()
            .map(|t| (t, None))
            .collect();
        for session in std::mem::take(&mut self.dirty) {
            let Some(token) = self
                .conns
                .get(&session)
                .and_then(|c| c.resume_token.clone())
            else {
                continue;
            };
            let Some(json) = self
                .snapshot(&session)
                .and_then(|h| serde_json::to_string(&h).ok())
            else {
                continue;
            };
            if let Some(c) = self.conns.get_mut(&session) {
                if let Some(old) = c.saved.replace(token.clone()).filter(|o| *o != token) {
                    writes.push((old, None));
                }
            }
            writes.push((token, Some(json)));
        }
        self.cluster.save_resume(writes).await;
    }

    /// A message for a session that moved from here to another node in the last resume
    /// window: sent on to that node. True when it was forwarded.
    pub(super) async fn forward_moved(&mut self, to: &SessionId, msg: &NodeMsg) -> bool {
        let Some((node, _)) = self.moved.get(to) else {
            return false;
        };
        let node = node.clone();
        let _ = self.cluster.send_to(&node, msg).await;
        true
    }

    /// Drops forwarding entries older than the resume window.
    pub(super) fn prune_moved(&mut self, now: Instant) {
        self.moved.retain(|_, (_, until)| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_128_random_bits_in_lowercase_hex() {
        let a = super::super::random_id();
        let b = super::super::random_id();
        assert_eq!(a.len(), 32);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
            "{a}"
        );
        assert_ne!(a, b);
        assert!(is_cluster_node(&a), "a node id is such an id");
    }

    #[test]
    fn only_cluster_tokens_name_a_node() {
        let node = "0123456789abcdef0123456789abcdef";
        let token = format!("{node}{}", "f".repeat(32));
        assert_eq!(token_node(&token), Some(node));
        assert_eq!(token_node(&"a".repeat(32)), None, "a single node's token");
        assert_eq!(token_node(&format!("{node}zz{}", "f".repeat(30))), None);
        assert!(!is_cluster_node("local"));
        assert!(is_cluster_node(node));
    }

    #[test]
    fn a_handed_over_session_survives_the_wire() {
        let h = HandedOver {
            session: SessionId("s".into()),
            state: HandedState::InMatch {
                match_id: MatchId("m".into()),
                partner: SessionId("p".into()),
                partner_node: "n".into(),
            },
            interests: vec!["chess".into()],
            stopped: false,
            recent: vec![HandedMatch {
                match_id: MatchId("m".into()),
                partner: SessionId("p".into()),
                partner_ip: IpAddr::from([10, 0, 0, 1]),
                call_reported: true,
            }],
            backlog: vec![r#"{"type":"chat","text":"hi"}"#.into()],
            avoid: vec![(SessionId("x".into()), u64::MAX)],
        };
        let msg = NodeMsg::Handover {
            req: "r".into(),
            session: Box::new(h),
        };
        let json = serde_json::to_string(&msg).expect("serializes");
        let back: NodeMsg = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, msg);
    }
}
