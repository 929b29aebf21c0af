//! The waiting queue and its pairing rules, as pure code: no sockets, no clock (every
//! call takes `now`), so the rules are unit- and property-tested directly.
//!
//! Rules, in order of precedence:
//! - nobody is paired with themselves, and a paired session leaves the queue at once;
//! - two sessions that just skipped each other are not paired until their cooldown ends;
//! - two sessions one of which blocked the other are never paired (while both live);
//! - people who share an interest are paired first;
//! - someone with interests is "open to anyone" only after waiting `fallback`;
//!   someone without interests is open to anyone from the start; two open people match;
//! - the person who waited longest is served first, and takes the longest-waiting
//!   compatible partner.

use peer_stream_shared::SessionId;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
struct Waiter {
    session: SessionId,
    interests: Vec<String>,
    since: Instant,
}

/// A waiter taken out of the queue while its connection is away (see
/// [`MatchQueue::park`]): it keeps its arrival number and waiting time, so
/// [`MatchQueue::unpark`] puts it back in its old place.
#[derive(Clone, Debug)]
pub struct Parked {
    /// The arrival number (in the Redis cluster: 0 for "the back of the queue", as Redis
    /// numbers arrivals from 1).
    pub(crate) seq: u64,
    pub(crate) interests: Vec<String>,
    pub(crate) since: Instant,
}

/// Two sessions the queue paired. `first` waited longer than `second`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub first: SessionId,
    pub second: SessionId,
    /// Interests both share, in `first`'s order (empty for a fallback match).
    pub common_interests: Vec<String>,
    pub first_waited: Duration,
    pub second_waited: Duration,
}

#[derive(Debug)]
pub struct MatchQueue {
    /// Waiters by arrival number: iteration order is longest-waiting first.
    waiters: BTreeMap<u64, Waiter>,
    by_session: HashMap<SessionId, u64>,
    next_seq: u64,
    fallback: Duration,
    cooldown: Duration,
    /// Unordered session pair (smaller id first) → the instant the pair may match again.
    cooldowns: HashMap<(SessionId, SessionId), Instant>,
    /// Bumped on every change, so the owner recomputes [`MatchQueue::next_deadline`]
    /// only when something changed.
    version: u64,
    /// Expired cooldowns are swept when the map reaches this size.
    prune_at: usize,
    /// Blocked pairs, stored in both directions so a disconnect drops its entries in
    /// O(its blocks): session → the sessions it must never be paired with.
    blocks: HashMap<SessionId, HashSet<SessionId>>,
}

const MIN_PRUNE_AT: usize = 4096;

/// The partner rule, shared by the in-memory queue and the Redis cluster (which reads the
/// waiters from Redis and applies the same rule in Rust): among `others` — the allowed
/// candidates (not me, not cooling down with me, not blocked), longest-waiting first, each
/// with its interests and whether it is open to anyone — the first one sharing an interest
/// with me, else the first one with whom both of us are open to anyone.
pub fn choose<'a, K>(
    my_interests: &[String],
    me_open: bool,
    others: impl IntoIterator<Item = (K, &'a [String], bool)>,
) -> Option<K> {
    let mut fallback = None;
    for (k, interests, open) in others {
        if !my_interests.is_empty() && my_interests.iter().any(|i| interests.contains(i)) {
            return Some(k);
        }
        if fallback.is_none() && me_open && open {
            if my_interests.is_empty() {
                // Nobody can share an interest with someone who has none.
                return Some(k);
            }
            fallback = Some(k);
        }
    }
    fallback
}

fn pair_key(a: &SessionId, b: &SessionId) -> (SessionId, SessionId) {
    if a <= b {
        (a.clone(), b.clone())
    } else {
        (b.clone(), a.clone())
    }
}

impl MatchQueue {
    pub fn new(fallback: Duration, cooldown: Duration) -> Self {
        Self {
            waiters: BTreeMap::new(),
            by_session: HashMap::new(),
            next_seq: 0,
            fallback,
            cooldown,
            cooldowns: HashMap::new(),
            version: 0,
            prune_at: MIN_PRUNE_AT,
            blocks: HashMap::new(),
        }
    }

    /// Changes whenever the queue or its cooldowns change.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn len(&self) -> usize {
        self.waiters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    pub fn contains(&self, session: &SessionId) -> bool {
        self.by_session.contains_key(session)
    }

    /// Puts `session` at the back of the queue (or, if it is already waiting, updates its
    /// interests and keeps its place) and pairs it at once if a compatible waiter exists.
    pub fn push(
        &mut self,
        session: SessionId,
        interests: Vec<String>,
        now: Instant,
    ) -> Option<Pair> {
        self.version += 1;
        if let Some(seq) = self.by_session.get(&session) {
            if let Some(w) = self.waiters.get_mut(seq) {
                w.interests = interests;
            }
            let seq = *seq;
            return self.match_one(seq, now);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_session.insert(session.clone(), seq);
        self.waiters.insert(
            seq,
            Waiter {
                session,
                interests,
                since: now,
            },
        );
        self.match_one(seq, now)
    }

    /// Takes `session` out of the queue; false if it was not waiting.
    pub fn remove(&mut self, session: &SessionId) -> bool {
        self.version += 1;
        match self.by_session.remove(session) {
            Some(seq) => self.waiters.remove(&seq).is_some(),
            None => false,
        }
    }

    /// Takes a waiting `session` out of the queue without losing its place: nobody is
    /// paired with it until [`MatchQueue::unpark`]. `None` if it was not waiting.
    pub fn park(&mut self, session: &SessionId) -> Option<Parked> {
        let seq = self.by_session.remove(session)?;
        self.version += 1;
        let w = self.waiters.remove(&seq)?;
        Some(Parked {
            seq,
            interests: w.interests,
            since: w.since,
        })
    }

    /// A parked entry for a session that was not waiting: it gets the place at the back
    /// of the queue it would have had if it had joined `now`.
    pub fn parked_at_back(&mut self, interests: Vec<String>, now: Instant) -> Parked {
        let seq = self.next_seq;
        self.next_seq += 1;
        Parked {
            seq,
            interests,
            since: now,
        }
    }

    /// Puts a parked session back in its old place (ahead of everyone who came after it)
    /// and pairs it at once if a compatible waiter exists. Nothing happens if the session
    /// is already waiting.
    pub fn unpark(&mut self, session: SessionId, parked: Parked, now: Instant) -> Option<Pair> {
        if self.by_session.contains_key(&session) || self.waiters.contains_key(&parked.seq) {
            return None;
        }
        self.version += 1;
        self.by_session.insert(session.clone(), parked.seq);
        self.waiters.insert(
            parked.seq,
            Waiter {
                session,
                interests: parked.interests,
                since: parked.since,
            },
        );
        self.match_one(parked.seq, now)
    }

    /// Records that `a` and `b` skipped each other: they are not paired again for the cooldown.
    pub fn record_skip(&mut self, a: &SessionId, b: &SessionId, now: Instant) {
        if self.cooldown.is_zero() {
            return;
        }
        self.version += 1;
        if self.cooldowns.len() >= self.prune_at {
            // Amortized O(1): the next sweep waits until the map has doubled again.
            self.cooldowns.retain(|_, until| *until > now);
            self.prune_at = (self.cooldowns.len() * 2).max(MIN_PRUNE_AT);
        }
        self.cooldowns.insert(pair_key(a, b), now + self.cooldown);
    }

    /// Records that `a` blocked `b` (or the reverse; it is symmetric): the two are never
    /// paired again until one of them is forgotten. Not a skip: no cooldown is involved.
    pub fn block(&mut self, a: &SessionId, b: &SessionId) {
        if a == b {
            return;
        }
        self.version += 1;
        self.blocks.entry(a.clone()).or_default().insert(b.clone());
        self.blocks.entry(b.clone()).or_default().insert(a.clone());
    }

    /// Whether `a` and `b` must never be paired (one blocked the other).
    pub fn blocked(&self, a: &SessionId, b: &SessionId) -> bool {
        self.blocks.get(a).is_some_and(|set| set.contains(b))
    }

    /// A session disconnected: it leaves the queue and its blocks are dropped (in both
    /// directions). Its cooldown entries (its id never comes back) are dropped with the
    /// other expired ones in `record_skip`, so a disconnect costs O(its blocks) instead
    /// of a scan of every cooldown.
    pub fn forget(&mut self, session: &SessionId) {
        self.remove(session);
        if let Some(others) = self.blocks.remove(session) {
            for other in others {
                if let Some(set) = self.blocks.get_mut(&other) {
                    set.remove(session);
                    if set.is_empty() {
                        self.blocks.remove(&other);
                    }
                }
            }
        }
    }

    /// How many sessions have at least one block (for tests: disconnects drop them).
    pub fn blocking_sessions(&self) -> usize {
        self.blocks.len()
    }

    /// Pairs everyone who can be paired now, longest waiter first. Afterwards no two
    /// remaining waiters are compatible (until time makes someone open to anyone or a
    /// cooldown ends; [`MatchQueue::next_deadline`] says when).
    pub fn poll(&mut self, now: Instant) -> Vec<Pair> {
        self.version += 1;
        let mut pairs = Vec::new();
        let seqs: Vec<u64> = self.waiters.keys().copied().collect();
        for seq in seqs {
            if !self.waiters.contains_key(&seq) {
                continue;
            }
            if let Some(p) = self.match_one(seq, now) {
                pairs.push(p);
            }
        }
        pairs
    }

    /// The next instant at which `poll` could pair someone it cannot pair now: a waiter
    /// with interests reaching the fallback, or a cooldown between two waiters ending.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        if self.waiters.len() < 2 {
            return None;
        }
        let fallback = self
            .waiters
            .values()
            .filter(|w| !w.interests.is_empty())
            .map(|w| w.since + self.fallback)
            .filter(|t| *t > now);
        let cooldowns = self
            .cooldowns
            .iter()
            .filter(|((a, b), until)| **until > now && self.contains(a) && self.contains(b))
            .map(|(_, until)| *until);
        fallback.chain(cooldowns).min()
    }

    fn open_to_anyone(&self, w: &Waiter, now: Instant) -> bool {
        w.interests.is_empty() || now.saturating_duration_since(w.since) >= self.fallback
    }

    fn cooling(&self, a: &SessionId, b: &SessionId, now: Instant) -> bool {
        self.cooldowns
            .get(&pair_key(a, b))
            .is_some_and(|until| *until > now)
    }

    fn common(a: &Waiter, b: &Waiter) -> Vec<String> {
        a.interests
            .iter()
            .filter(|i| b.interests.contains(i))
            .cloned()
            .collect()
    }

    /// Finds the best partner for the waiter `seq` among all others and pairs them.
    /// Preference: the longest-waiting one sharing an interest, else the longest-waiting
    /// one with whom both are open to anyone.
    fn match_one(&mut self, seq: u64, now: Instant) -> Option<Pair> {
        let me = self.waiters.get(&seq)?;
        let me_open = self.open_to_anyone(me, now);
        // Looked up once: most sessions block no one.
        let my_blocks = self.blocks.get(&me.session);
        let others = self.waiters.iter().filter(|(other_seq, other)| {
            **other_seq != seq
                && other.session != me.session
                && !my_blocks.is_some_and(|b| b.contains(&other.session))
                && !self.cooling(&me.session, &other.session, now)
        });
        let other_seq = choose(
            &me.interests,
            me_open,
            others.map(|(k, o)| (*k, o.interests.as_slice(), self.open_to_anyone(o, now))),
        )?;
        let (a_seq, b_seq) = if other_seq < seq {
            (other_seq, seq)
        } else {
            (seq, other_seq)
        };
        let a = self.waiters.remove(&a_seq)?;
        let b = self.waiters.remove(&b_seq)?;
        self.by_session.remove(&a.session);
        self.by_session.remove(&b.session);
        Some(Pair {
            common_interests: Self::common(&a, &b),
            first_waited: now.saturating_duration_since(a.since),
            second_waited: now.saturating_duration_since(b.since),
            first: a.session,
            second: b.session,
        })
    }

    /// Whether two waiting sessions could be paired now (used by tests and debug checks).
    pub fn compatible(&self, a: &SessionId, b: &SessionId, now: Instant) -> bool {
        let (Some(wa), Some(wb)) = (
            self.by_session.get(a).and_then(|s| self.waiters.get(s)),
            self.by_session.get(b).and_then(|s| self.waiters.get(s)),
        ) else {
            return false;
        };
        if wa.session == wb.session || self.cooling(a, b, now) || self.blocked(a, b) {
            return false;
        }
        !Self::common(wa, wb).is_empty()
            || (self.open_to_anyone(wa, now) && self.open_to_anyone(wb, now))
    }

    /// Sessions waiting, longest first.
    pub fn waiting(&self) -> impl Iterator<Item = &SessionId> {
        self.waiters.values().map(|w| &w.session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn s(n: u32) -> SessionId {
        SessionId(format!("s{n:03}"))
    }

    fn tags(t: &[&str]) -> Vec<String> {
        t.iter().map(|x| x.to_string()).collect()
    }

    const FB: Duration = Duration::from_secs(5);
    const CD: Duration = Duration::from_secs(60);

    #[test]
    fn first_come_first_served_without_interests() {
        let t0 = Instant::now();
        let mut q = MatchQueue::new(FB, CD);
        assert_eq!(q.push(s(1), vec![], t0), None);
        let p = q.push(s(2), vec![], t0).expect("pair");
        assert_eq!((p.first, p.second), (s(1), s(2)));
        assert_eq!(q.push(s(3), vec![], t0), None);
        let p = q.push(s(4), vec![], t0).expect("pair");
        assert_eq!((p.first, p.second), (s(3), s(4)));
        assert!(q.is_empty());
    }

    #[test]
    fn shared_interest_beats_an_older_stranger() {
        let t0 = Instant::now();
        let mut q = MatchQueue::new(Duration::ZERO, CD);
        q.push(s(1), vec![], t0);
        q.push(s(2), tags(&["rust"]), t0).map(|_| ()).unwrap_or(());
        // s(2) was open to anyone at once (fallback 0), so it paired with s(1).
        assert!(q.is_empty());
        q.push(s(3), tags(&["go"]), t0);
        q.push(s(4), tags(&["music"]), t0);
        // s3 and s4 are open (fallback 0) and paired with each other.
        assert!(q.is_empty());

        let mut q = MatchQueue::new(FB, CD);
        q.push(s(1), vec![], t0);
        assert_eq!(q.push(s(2), tags(&["rust"]), t0), None, "not open yet");
        let p = q.push(s(3), tags(&["music", "rust"]), t0).expect("pair");
        assert_eq!((p.first.clone(), p.second.clone()), (s(2), s(3)));
        assert_eq!(p.common_interests, tags(&["rust"]));
        assert_eq!(q.waiting().cloned().collect::<Vec<_>>(), vec![s(1)]);
    }

    #[test]
    fn a_parked_waiter_is_skipped_and_gets_its_place_back() {
        let t0 = Instant::now();
        let mut q = MatchQueue::new(FB, CD);
        assert_eq!(q.push(s(1), tags(&["a"]), t0), None);
        assert_eq!(q.push(s(2), tags(&["b"]), t0), None);
        let parked = q.park(&s(1)).expect("s1 was waiting");
        assert!(q.park(&s(1)).is_none(), "parked once");
        assert!(!q.contains(&s(1)));
        assert_eq!(q.len(), 1);
        // Nobody is paired with a parked waiter.
        assert_eq!(q.push(s(3), tags(&["a"]), t0), None);
        assert_eq!(q.park(&s(3)).map(|_| ()), Some(()));
        // Back in its old place: ahead of s2, so a newcomer sharing both interests gets s1.
        assert_eq!(q.unpark(s(1), parked, t0), None);
        let p = q.push(s(4), tags(&["b", "a"]), t0).expect("pair");
        assert_eq!((p.first, p.second), (s(1), s(4)));
        assert_eq!(p.common_interests, tags(&["a"]));
        // Unparking pairs at once when someone compatible waits.
        let late = q.parked_at_back(vec![], t0);
        let p = q
            .unpark(s(5), late, t0 + FB)
            .expect("s2 is open to anyone by now");
        assert_eq!((p.first, p.second), (s(2), s(5)));
        assert!(q.is_empty());
    }

    #[test]
    fn interests_fall_back_to_anyone_after_the_wait() {
        let t0 = Instant::now();
        let mut q = MatchQueue::new(FB, CD);
        assert_eq!(q.push(s(1), tags(&["chess"]), t0), None);
        assert_eq!(q.push(s(2), tags(&["golf"]), t0), None);
        assert!(q.poll(t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(q.next_deadline(t0), Some(t0 + FB));
        let pairs = q.poll(t0 + FB);
        assert_eq!(pairs.len(), 1);
        assert!(pairs[0].common_interests.is_empty());
    }

    #[test]
    fn a_user_without_interests_waits_for_an_open_one() {
        let t0 = Instant::now();
        let mut q = MatchQueue::new(FB, CD);
        assert_eq!(q.push(s(1), tags(&["chess"]), t0), None);
        assert_eq!(q.push(s(2), vec![], t0 + Duration::from_secs(1)), None);
        let pairs = q.poll(t0 + FB);
        assert_eq!(pairs.len(), 1);
        assert_eq!(
            (pairs[0].first.clone(), pairs[0].second.clone()),
            (s(1), s(2))
        );
    }

    #[test]
    fn skipped_pairs_wait_for_the_cooldown() {
        let t0 = Instant::now();
        let mut q = MatchQueue::new(FB, CD);
        q.record_skip(&s(1), &s(2), t0);
        assert_eq!(q.push(s(2), vec![], t0), None);
        assert_eq!(q.push(s(1), vec![], t0), None);
        assert_eq!(q.next_deadline(t0), Some(t0 + CD));
        assert!(q.poll(t0 + Duration::from_secs(59)).is_empty());
        let p = q
            .push(s(3), vec![], t0)
            .expect("a newcomer pairs with the longest waiter");
        assert_eq!((p.first, p.second), (s(2), s(3)));
        q.push(s(2), vec![], t0);
        assert_eq!(q.poll(t0 + CD).len(), 1, "cooldown over");
    }

    #[test]
    fn blocked_pairs_are_never_paired() {
        let t0 = Instant::now();
        let mut q = MatchQueue::new(FB, CD);
        q.block(&s(2), &s(1));
        assert!(
            q.blocked(&s(1), &s(2)) && q.blocked(&s(2), &s(1)),
            "symmetric"
        );
        assert_eq!(q.push(s(1), vec![], t0), None);
        assert_eq!(q.push(s(2), vec![], t0), None, "blocked: not paired");
        // Unlike a cooldown, time does not lift a block.
        assert!(q.poll(t0 + CD * 10).is_empty());
        assert_eq!(q.next_deadline(t0), None, "no deadline can pair them");
        let p = q.push(s(3), vec![], t0).expect("a third person pairs");
        assert_eq!((p.first, p.second), (s(1), s(3)));
        assert_eq!(q.waiting().cloned().collect::<Vec<_>>(), vec![s(2)]);
        // Blocking yourself is a no-op.
        q.block(&s(4), &s(4));
        assert!(!q.blocked(&s(4), &s(4)));
    }

    #[test]
    fn forgetting_a_session_drops_its_blocks() {
        let t0 = Instant::now();
        let mut q = MatchQueue::new(FB, CD);
        q.block(&s(1), &s(2));
        q.block(&s(1), &s(3));
        assert_eq!(q.blocking_sessions(), 3);
        q.forget(&s(1));
        assert_eq!(q.blocking_sessions(), 0, "both directions dropped");
        assert!(!q.blocked(&s(2), &s(1)));
        q.push(s(2), vec![], t0);
        assert!(q.push(s(3), vec![], t0).is_some());
    }

    #[test]
    fn pushing_twice_keeps_one_entry() {
        let t0 = Instant::now();
        let mut q = MatchQueue::new(FB, CD);
        q.push(s(1), tags(&["a"]), t0);
        assert_eq!(
            q.push(s(1), tags(&["b"]), t0),
            None,
            "never paired with itself"
        );
        assert_eq!(q.len(), 1);
        let p = q
            .push(s(2), tags(&["b"]), t0)
            .expect("updated interests count");
        assert_eq!(p.common_interests, tags(&["b"]));
    }

    #[test]
    fn every_change_bumps_the_version() {
        let t0 = Instant::now();
        let mut q = MatchQueue::new(FB, CD);
        let mut last = q.version();
        let mut changed = |q: &MatchQueue| {
            let moved = q.version() != last;
            last = q.version();
            moved
        };
        q.push(s(1), tags(&["a"]), t0);
        assert!(changed(&q), "push");
        q.record_skip(&s(1), &s(2), t0);
        assert!(changed(&q), "skip");
        q.poll(t0);
        assert!(changed(&q), "poll");
        q.remove(&s(1));
        assert!(changed(&q), "remove");
        q.block(&s(1), &s(2));
        assert!(changed(&q), "block");
        assert!(!changed(&q), "nothing happened");
    }

    #[derive(Clone, Debug)]
    enum Op {
        Push(u32, Vec<String>),
        Remove(u32),
        Skip(u32, u32),
        Block(u32, u32),
        Advance(u64),
        Poll,
    }

    fn op() -> impl Strategy<Value = Op> {
        let interest = prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(String::from);
        prop_oneof![
            4 => (0u32..12, prop::collection::vec(interest, 0..3)).prop_map(|(n, i)| Op::Push(n, i)),
            1 => (0u32..12).prop_map(Op::Remove),
            1 => (0u32..12, 0u32..12).prop_map(|(a, b)| Op::Skip(a, b)),
            1 => (0u32..12, 0u32..12).prop_map(|(a, b)| Op::Block(a, b)),
            2 => (0u64..4000).prop_map(Op::Advance),
            2 => Just(Op::Poll),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The invariants of the queue under any sequence of operations.
        #[test]
        fn invariants_hold(ops in prop::collection::vec(op(), 1..80)) {
            let t0 = Instant::now();
            let fallback = Duration::from_millis(2500);
            let cooldown = Duration::from_millis(5000);
            let mut q = MatchQueue::new(fallback, cooldown);
            let mut now = t0;
            // Who is in a match right now; matched sessions are not pushed again until
            // a Remove "ends" their match, as the actor does.
            let mut matched: HashSet<SessionId> = HashSet::new();
            let mut interests: HashMap<SessionId, Vec<String>> = HashMap::new();
            let mut joined_at: HashMap<SessionId, Instant> = HashMap::new();
            let mut skips: HashMap<(SessionId, SessionId), Instant> = HashMap::new();
            let mut blocks: HashSet<(SessionId, SessionId)> = HashSet::new();
            for op in ops {
                let mut pairs = Vec::new();
                match op {
                    Op::Push(n, i) => {
                        let id = s(n);
                        if matched.contains(&id) { continue; }
                        if !q.contains(&id) { joined_at.insert(id.clone(), now); }
                        interests.insert(id.clone(), i.clone());
                        pairs.extend(q.push(id, i, now));
                    }
                    Op::Remove(n) => {
                        q.remove(&s(n));
                        matched.remove(&s(n));
                    }
                    Op::Skip(a, b) => {
                        q.record_skip(&s(a), &s(b), now);
                        skips.insert(pair_key(&s(a), &s(b)), now + cooldown);
                    }
                    Op::Block(a, b) => {
                        q.block(&s(a), &s(b));
                        if a != b {
                            blocks.insert(pair_key(&s(a), &s(b)));
                        }
                    }
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                    Op::Poll => {
                        pairs.extend(q.poll(now));
                        // Maximal: no two remaining waiters could be paired now.
                        let left: Vec<SessionId> = q.waiting().cloned().collect();
                        for (i, a) in left.iter().enumerate() {
                            for b in &left[i + 1..] {
                                prop_assert!(!q.compatible(a, b, now), "{a} and {b} left unpaired");
                            }
                        }
                    }
                }
                for p in pairs {
                    prop_assert_ne!(&p.first, &p.second, "paired with itself");
                    prop_assert!(!q.contains(&p.first) && !q.contains(&p.second), "still queued");
                    prop_assert!(matched.insert(p.first.clone()), "{} paired twice", p.first);
                    prop_assert!(matched.insert(p.second.clone()), "{} paired twice", p.second);
                    if let Some(until) = skips.get(&pair_key(&p.first, &p.second)) {
                        prop_assert!(*until <= now, "re-paired during cooldown");
                    }
                    prop_assert!(!blocks.contains(&pair_key(&p.first, &p.second)), "paired a blocked pair");
                    let ia = &interests[&p.first];
                    let ib = &interests[&p.second];
                    let shares = ia.iter().any(|x| ib.contains(x));
                    let open = |i: &Vec<String>, s: &SessionId| i.is_empty() || now.duration_since(joined_at[s]) >= fallback;
                    prop_assert!(shares || (open(ia, &p.first) && open(ib, &p.second)), "incompatible pair");
                    prop_assert_eq!(shares, !p.common_interests.is_empty());
                    prop_assert!(joined_at[&p.first] <= joined_at[&p.second], "first waited longer");
                }
            }
        }

        /// Without interests and skips, pairs form strictly in arrival order.
        #[test]
        fn fifo_without_interests(n in 2u32..40) {
            let t0 = Instant::now();
            let mut q = MatchQueue::new(FB, CD);
            let mut pairs = Vec::new();
            for i in 0..n {
                pairs.extend(q.push(s(i), vec![], t0));
            }
            prop_assert_eq!(pairs.len() as u32, n / 2);
            for (k, p) in pairs.iter().enumerate() {
                prop_assert_eq!(&p.first, &s(2 * k as u32));
                prop_assert_eq!(&p.second, &s(2 * k as u32 + 1));
            }
        }
    }
}
