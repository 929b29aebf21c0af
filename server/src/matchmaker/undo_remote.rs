//! `undo_next` when the skipped partner is served by another node of a cluster
//! (PROTOCOL.md, "Undo an accidental next"). The same rules as on one node, split
//! between the two nodes that each know one side:
//!
//! 1. The skipper's node checks what it knows (the ticket, blocks) and sends the
//!    partner's node [`NodeMsg::UndoAsk`].
//! 2. The partner's node checks the partner is still free (connected, not stopped, not in
//!    or past a new match, no block) and opens the match again as any cross-node match,
//!    with `resumed` ([`NodeMsg::Matched`]); or it answers [`NodeMsg::UndoRefused`].
//! 3. The skipper's node ends a match the skipper got meanwhile, as on one node, and
//!    opens its side. No answer within [`REMOTE_UNDO_TIMEOUT`]: `undo_unavailable`.

use super::cluster::{Cluster, NodeMsg, Paired, RemoteSide};
use super::queue::Pair;
use super::{Match, Matchmaker};
use crate::metrics::UndoResult;
use peer_stream_shared::{MatchId, PartnerLeftReason, Role, SessionId};
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// How long the skipper's node waits for the partner's node to answer an undo.
const REMOTE_UNDO_TIMEOUT: Duration = Duration::from_secs(3);

/// The skipper of an `undo_next`, as its node describes it to the partner's node.
pub(super) struct Asker {
    pub session: SessionId,
    pub node: String,
    pub ip: IpAddr,
    pub interests: Vec<String>,
}

/// A rematch the partner's node opened: `(skipper, match_id, skipper's role, common
/// interests)`.
pub(super) type Rematch = (SessionId, MatchId, Role, Vec<String>);

impl<C: Cluster> Matchmaker<C> {
    /// The skipper's side: `session` wants back `partner`, served by `node`.
    pub(super) async fn ask_remote_undo(
        &mut self,
        session: SessionId,
        partner: SessionId,
        node: String,
        match_id: MatchId,
    ) {
        if self.cluster.blocked(&session, &partner) {
            return self.refuse_undo(
                &session,
                UndoResult::Blocked,
                "you can't be matched with this stranger again",
            );
        }
        let Some(c) = self.conns.get(&session) else {
            return;
        };
        let ask = NodeMsg::UndoAsk {
            to: partner.clone(),
            match_id,
            from: session.clone(),
            node: self.cluster.node_id().to_owned(),
            ip: c.ip,
            interests: c.interests.clone(),
        };
        if self.cluster.send_to(&node, &ask).await.is_err() {
            return self.refuse_undo(
                &session,
                UndoResult::Gone,
                "the stranger is connected to another server, which cannot be reached right now",
            );
        }
        self.remote_undos
            .insert(session, (partner, Instant::now() + REMOTE_UNDO_TIMEOUT));
    }

    /// The partner's side: `to` (served here) is asked back by `asker` for `match_id`.
    pub(super) async fn on_undo_ask(&mut self, to: SessionId, match_id: MatchId, asker: Asker) {
        if let Some((result, message)) = self.undo_refusal(&asker.session, &to, &match_id) {
            let refused = NodeMsg::UndoRefused {
                to: asker.session,
                result,
                message: message.to_owned(),
            };
            let _ = self.cluster.send_to(&asker.node, &refused).await;
            return;
        }
        self.cluster.remove(&to).await;
        let common_interests = self
            .conns
            .get(&to)
            .map(|p| {
                p.interests
                    .iter()
                    .filter(|i| asker.interests.contains(i))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        // As on one node: the skipped person offers.
        let paired = Paired {
            pair: Pair {
                first: to,
                second: asker.session.clone(),
                common_interests,
                first_waited: Duration::ZERO,
                second_waited: Duration::ZERO,
            },
            remote: Some(RemoteSide {
                session: asker.session,
                node: asker.node,
                ip: asker.ip,
            }),
        };
        self.open_match(paired, true).await;
    }

    /// The skipper's side: the partner's node opened the rematch `undo` with `partner`.
    pub(super) async fn on_remote_rematch(
        &mut self,
        undo: Rematch,
        partner: SessionId,
        partner_ip: IpAddr,
        from: String,
    ) {
        let (to, match_id, role, common_interests) = undo;
        let asked = self
            .remote_undos
            .get(&to)
            .is_some_and(|(p, _)| *p == partner);
        if !asked || !self.conns.contains_key(&to) {
            // Given up already (no answer in time), or gone: the partner hears it is over.
            return self.decline_match(&to, partner, match_id, &from).await;
        }
        self.remote_undos.remove(&to);
        self.cluster.remove(&to).await;
        // A match the skipper got meanwhile ends first; its partner, when served here,
        // goes back to the queue (another node re-queues its own).
        let third = self
            .end_current(&to, PartnerLeftReason::Skipped)
            .await
            .filter(|(_, _, node)| node.is_none())
            .map(|(_, p, _)| p);
        self.metrics.undo(UndoResult::Resumed);
        self.open_side(
            &to,
            &partner,
            partner_ip,
            true,
            role,
            None,
            &match_id,
            &common_interests,
            true,
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
        if let Some(third) = third {
            self.enqueue(third).await;
        }
    }

    /// The skipper's side: the partner's node said no.
    pub(super) fn on_undo_refused(&mut self, to: SessionId, result: UndoResult, message: &str) {
        if self.remote_undos.remove(&to).is_some() {
            self.refuse_undo(&to, result, message);
        }
    }

    /// Undos whose partner's node did not answer in time are refused.
    pub(super) fn expire_remote_undos(&mut self, now: Instant) {
        let due: Vec<SessionId> = self
            .remote_undos
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(s, _)| s.clone())
            .collect();
        for session in due {
            self.remote_undos.remove(&session);
            self.refuse_undo(
                &session,
                UndoResult::Gone,
                "the stranger's server did not answer",
            );
        }
    }
}
