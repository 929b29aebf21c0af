//! One node, in memory: today's [`MatchQueue`] behind the [`Cluster`] seam. Every partner
//! is local, so nothing is ever sent to another node.

use super::{Cluster, NodeMsg, Paired, Pushed, Tick, Unavailable};
use crate::matchmaker::queue::{MatchQueue, Parked};
use crate::moderation::SharedBan;
use peer_stream_shared::SessionId;
use std::net::IpAddr;
use std::time::Instant;
use tokio::sync::mpsc;

pub struct LocalCluster {
    queue: MatchQueue,
}

impl LocalCluster {
    pub fn new(queue: MatchQueue) -> Self {
        LocalCluster { queue }
    }
}

impl Cluster for LocalCluster {
    fn node_id(&self) -> &str {
        "local"
    }

    fn version(&self) -> u64 {
        self.queue.version()
    }

    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        self.queue.next_deadline(now)
    }

    async fn poll(&mut self, now: Instant) -> Vec<Paired> {
        self.queue
            .poll(now)
            .into_iter()
            .map(Paired::local)
            .collect()
    }

    fn contains(&self, session: &SessionId) -> bool {
        self.queue.contains(session)
    }

    fn local_waiting(&self) -> usize {
        self.queue.len()
    }

    fn counts(&self, local_online: u64) -> (u64, u64) {
        (local_online, self.queue.len() as u64)
    }

    async fn push(
        &mut self,
        session: SessionId,
        interests: Vec<String>,
        _ip: IpAddr,
        now: Instant,
    ) -> Result<Pushed, Unavailable> {
        let already = self.queue.contains(&session);
        let waiting = self.queue.len() as u64 + u64::from(!already);
        let paired = self.queue.push(session, interests, now).map(Paired::local);
        Ok(Pushed { waiting, paired })
    }

    async fn remove(&mut self, session: &SessionId) -> bool {
        self.queue.remove(session)
    }

    async fn park(&mut self, session: &SessionId) -> Option<Parked> {
        self.queue.park(session)
    }

    fn parked_at_back(&mut self, interests: Vec<String>, now: Instant) -> Parked {
        self.queue.parked_at_back(interests, now)
    }

    async fn unpark(
        &mut self,
        session: SessionId,
        parked: Parked,
        _ip: IpAddr,
        now: Instant,
    ) -> Option<Paired> {
        self.queue.unpark(session, parked, now).map(Paired::local)
    }

    fn record_skip(&mut self, a: &SessionId, b: &SessionId, now: Instant) {
        self.queue.record_skip(a, b, now);
    }

    async fn block(&mut self, a: &SessionId, b: &SessionId) {
        self.queue.block(a, b);
    }

    fn blocked(&self, a: &SessionId, b: &SessionId) -> bool {
        self.queue.blocked(a, b)
    }

    async fn forget(&mut self, session: &SessionId) {
        self.queue.forget(session);
    }

    async fn send_to(&mut self, node: &str, _msg: &NodeMsg) -> Result<(), Unavailable> {
        // Every partner is local: nothing should ever be addressed to another node.
        tracing::error!(node, "a message for another node without a cluster");
        Err(Unavailable)
    }

    fn take_inbound(&mut self) -> Option<mpsc::Receiver<NodeMsg>> {
        None
    }

    async fn tick(&mut self, _local_online: u64) -> Tick {
        Tick::default()
    }

    async fn count_report(
        &mut self,
        _reported: IpAddr,
        _reporter: &SessionId,
        _window: std::time::Duration,
    ) -> Option<u32> {
        None
    }

    async fn share_ban(&mut self, _ban: SharedBan) {}

    async fn claimed(&mut self, session: &SessionId) {
        self.queue.remove(session);
    }

    async fn shutdown(&mut self) {}
}
