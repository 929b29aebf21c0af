//! Many nodes, one queue: the waiting queue in Redis, partners on other nodes reached
//! through their node's pub/sub channel.
//!
//! Keys (all under `ps:`; pick a database with the URL's `/DB` to share a Redis):
//! - `ps:waiters` (hash): session id → `SEQ|NODE|{json}`: the arrival number (from
//!   `INCR ps:seq`), the node serving the session, and its interests, its arrival time,
//!   its address and the sessions it must not be paired with (cooldowns and blocks, with
//!   their end). The whole value is compared when a pair is claimed, so a waiter that
//!   changed in between (or was paired by another node) is never claimed.
//! - `ps:online` (hash): node → its sessions; `ps:alive:NODE`: the node's liveness, a key
//!   that expires [`ALIVE_TTL`] after the node's last tick. A node whose key is gone is
//!   dropped from `ps:online` and its waiters leave the queue (by whichever node ticks first).
//! - `ps:node:NODE`: the node's pub/sub channel ([`NodeMsg`] as JSON).
//! - `ps:bans` (hash): address or range → `UNTIL|REASON` (unix seconds), the bans every node
//!   applies (and writes to its own SQLite file); `ps:bans:v` counts changes, so a node
//!   reads the hash only when it changed (its tick returns the counter).
//! - `ps:reports:ADDRESS` (sorted set): reporter session → when (ms), within the ban
//!   window: the reports toward the automatic ban, counted over every node.
//!
//! A pairing costs one script call per side's `join` (the push script adds the waiter and,
//! for the second one, reads the queue, chooses the partner with the same rules as the
//! in-memory queue and claims both, atomically), plus 1 publish when the partner is on
//! another node (pipelined with the other messages for other nodes, not waited for). A
//! relayed frame to another node is 1 publish, pipelined likewise. Waiters left unpaired
//! are paired by one script call per node and second (fallbacks, cooldowns ending).
//!
//! When Redis cannot be reached, every call fails fast ([`Unavailable`]) instead of
//! waiting, `/readyz` answers 503, and a health task notices when Redis is back; this
//! node's waiters are then written again (a restarted Redis forgot them).

use super::{Cluster, NodeMsg, Paired, Pushed, RemoteSide, SharedBans, Tick, Unavailable};
use crate::matchmaker::queue::{Pair, Parked};
use crate::moderation::SharedBan;
use futures_util::StreamExt;
use peer_stream_shared::SessionId;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const WAITERS: &str = "ps:waiters";
const SEQ: &str = "ps:seq";
const ONLINE: &str = "ps:online";
const ALIVE_PREFIX: &str = "ps:alive:";
const CHANNEL_PREFIX: &str = "ps:node:";
/// A session's resume record, by resume token (`handover.rs`): how another node resumes
/// it after this one died. Deleted when the session ends or moves; kept at most a day.
const RESUME_PREFIX: &str = "ps:resume:";
const RESUME_RECORD_TTL_SECS: u64 = 86_400;
const BANS: &str = "ps:bans";
const BANS_VERSION: &str = "ps:bans:v";
const REPORTS_PREFIX: &str = "ps:reports:";

/// A node whose liveness key is older than this is dead: its waiters leave the queue and
/// its partners on other nodes are told `disconnected`.
pub const ALIVE_TTL: Duration = Duration::from_secs(10);
/// Any one Redis call; past it the call fails and the node counts Redis as unreachable.
const OP_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the health task pings Redis.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
/// How often a node with waiters re-reads the queue: remote waiters reaching their
/// fallback, cooldowns ending (each node also pairs its own waiters at their deadlines).
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// `partner_left` messages kept for nodes while Redis is unreachable, sent when it is back
/// (beyond this, the oldest are dropped: those partners learn it from the liveness check
/// only if the node dies).
const PENDING_MAX: usize = 10_000;
/// Messages for other nodes queued for the publisher; a relay beyond it answers
/// `unavailable` (Redis cannot keep up).
const OUTGOING_MAX: usize = 64 * 1024;
/// Messages published in one pipelined round trip.
const PUBLISH_BATCH: usize = 256;

/// One message for another node, as the publisher sends it.
struct Outgoing {
    channel: String,
    payload: String,
    /// Kept and sent again after a failure (a `partner_left`), rather than dropped.
    retry: bool,
}

/// Publishes what the actor queued for other nodes, in order, as pipelines of up to
/// [`PUBLISH_BATCH`] (one round trip each), so relaying to another node costs the actor
/// no wait. Messages to retry wait while Redis is unreachable. Ends when the queue closes
/// (the node stops), after one last attempt.
async fn publisher_task(
    mut con: ConnectionManager,
    mut rx: mpsc::Receiver<Outgoing>,
    health: Health,
) {
    let mut pending: std::collections::VecDeque<Outgoing> = std::collections::VecDeque::new();
    let mut retry = tokio::time::interval(HEALTH_INTERVAL);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut open = true;
    while open || !pending.is_empty() {
        let mut batch: Vec<Outgoing> = Vec::new();
        tokio::select! {
            got = rx.recv(), if open => match got {
                Some(first) => {
                    batch.push(first);
                    while batch.len() < PUBLISH_BATCH {
                        match rx.try_recv() {
                            Ok(o) => batch.push(o),
                            Err(_) => break,
                        }
                    }
                }
                None => open = false,
            },
            _ = retry.tick() => {}
        }
        if health.ready.load(Relaxed) {
            // Older messages first: what waited for Redis goes before what came after.
            let mut all: Vec<Outgoing> = pending.drain(..).collect();
            all.append(&mut batch);
            batch = all;
        }
        if batch.is_empty() {
            if !open {
                // Closed, and Redis is unreachable: what waits is lost with this node.
                return;
            }
            continue;
        }
        let sent = health.ready.load(Relaxed) && {
            let mut pipe = redis::pipe();
            for o in &batch {
                pipe.cmd("PUBLISH").arg(&o.channel).arg(&o.payload).ignore();
            }
            matches!(
                tokio::time::timeout(OP_TIMEOUT, pipe.query_async::<()>(&mut con)).await,
                Ok(Ok(()))
            )
        };
        if !sent {
            if health.ready.swap(false, SeqCst) {
                tracing::warn!("Redis unreachable (publishing to other nodes)");
            }
            for o in batch.into_iter().filter(|o| o.retry) {
                if pending.len() >= PENDING_MAX {
                    pending.pop_front();
                }
                pending.push_back(o);
            }
            if !open {
                return;
            }
        }
    }
}

/// The partner rule of [`crate::matchmaker::queue::choose`] in Lua, with the cooldowns and
/// blocks both waiters carry, so that reading the queue, choosing and claiming is one script
/// call (one round trip, atomic: nobody is claimed twice). Defines `queue(key)` (the waiters,
/// longest-waiting first) and `pick(all, me, now_ms, fallback_ms, taken)` (the waiter `me`
/// is paired with: the first sharing an interest with it, else the first with whom both
/// are open to anyone; `nil` if nobody). Kept in step with `choose` by the cluster tests,
/// which check the same rules over several nodes as `pairing.rs` checks on one.
const PICK_LUA: &str = r"
local function avoids(body, other, now)
  for _, p in ipairs(body.a or {}) do
    if p[1] == other and p[2] > now then return true end
  end
  return false
end
local function is_open(body, now, fallback)
  return #(body.i or {}) == 0 or math.max(now - body.t, 0) >= fallback
end
local function decoded(e)
  if e.parsed == nil then
    local ok, b = pcall(cjson.decode, e.body)
    if ok and type(b) == 'table' then e.parsed = b else e.parsed = false end
  end
  return e.parsed
end
local function queue(key)
  local flat = redis.call('HGETALL', key)
  local all = {}
  for i = 1, #flat, 2 do
    local seq, node, body = string.match(flat[i + 1], '^(%d+)|([^|]*)|(.*)$')
    if seq then
      table.insert(all, {seq = tonumber(seq), session = flat[i], node = node, body = body, raw = flat[i + 1]})
    end
  end
  table.sort(all, function(x, y) return x.seq < y.seq end)
  return all
end
local function pick(all, me, now, fallback, taken)
  local mb = decoded(me)
  if not mb then return nil end
  local mine = mb.i or {}
  local me_open = is_open(mb, now, fallback)
  local second_choice = nil
  for _, e in ipairs(all) do
    if e.session ~= me.session and not taken[e.session] then
      local b = decoded(e)
      if b and not avoids(mb, e.session, now) and not avoids(b, me.session, now) then
        local theirs = b.i or {}
        for _, x in ipairs(mine) do
          for _, y in ipairs(theirs) do
            if x == y then return e end
          end
        end
        if second_choice == nil and me_open and is_open(b, now, fallback) then
          if #mine == 0 then return e end
          second_choice = e
        end
      end
    end
  end
  return second_choice
end
";

/// Adds (or updates) a waiter and, when asked, pairs it at once: returns `{seq, waiting,
/// partner, partner's value}` (strings; `partner` empty when nobody was claimed; `waiting`
/// counted before the claim). `{-1, 0, '', ''}` when asked to update a waiter that is no
/// longer there (another node paired it).
/// KEYS: waiters, seq. ARGV: session, node, body, seq ('' = take the next), only-if-present,
/// pair ('1'), now (ms), fallback (ms).
const PUSH_LUA: &str = r"
local w = KEYS[1]
if ARGV[5] == '1' and redis.call('HEXISTS', w, ARGV[1]) == 0 then
  return {'-1', '0', '', ''}
end
local seq = ARGV[4]
if seq == '' then seq = tostring(redis.call('INCR', KEYS[2])) end
local raw = seq .. '|' .. ARGV[2] .. '|' .. ARGV[3]
redis.call('HSET', w, ARGV[1], raw)
local waiting = tostring(redis.call('HLEN', w))
if ARGV[6] ~= '1' then return {seq, waiting, '', ''} end
local me = {seq = tonumber(seq), session = ARGV[1], node = ARGV[2], body = ARGV[3], raw = raw}
local other = pick(queue(w), me, tonumber(ARGV[7]), tonumber(ARGV[8]), {})
if not other then return {seq, waiting, '', ''} end
redis.call('HDEL', w, ARGV[1], other.session)
return {seq, waiting, other.session, other.raw}
";

/// Pairs this node's waiters (longest-waiting first) with anyone: returns `{waiting after,
/// a, a's value, b, b's value, …}` (strings), each `a` this node's.
/// KEYS: waiters. ARGV: node, now (ms), fallback (ms).
const POLL_LUA: &str = r"
local all = queue(KEYS[1])
local now, fallback = tonumber(ARGV[2]), tonumber(ARGV[3])
local taken = {}
local out = {''}
for _, me in ipairs(all) do
  if me.node == ARGV[1] and not taken[me.session] then
    local other = pick(all, me, now, fallback, taken)
    if other then
      taken[me.session] = true
      taken[other.session] = true
      redis.call('HDEL', KEYS[1], me.session, other.session)
      table.insert(out, me.session)
      table.insert(out, me.raw)
      table.insert(out, other.session)
      table.insert(out, other.raw)
    end
  end
end
out[1] = tostring(redis.call('HLEN', KEYS[1]))
return out
";

/// A node's tick: refreshes its liveness and its online count, drops dead nodes and their
/// waiters; returns `{online (all live nodes), waiting, live nodes, bans version}`.
/// KEYS: online, waiters, bans version. ARGV: node, its sessions, liveness ttl ms, liveness key prefix.
const TICK_LUA: &str = r"
redis.call('SET', ARGV[4] .. ARGV[1], '1', 'PX', ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local alive = {}
local total = 0
local nodes = redis.call('HGETALL', KEYS[1])
for i = 1, #nodes, 2 do
  if redis.call('EXISTS', ARGV[4] .. nodes[i]) == 1 then
    total = total + tonumber(nodes[i + 1])
    table.insert(alive, nodes[i])
  else
    redis.call('HDEL', KEYS[1], nodes[i])
  end
end
local known = {}
local waiters = redis.call('HGETALL', KEYS[2])
for i = 1, #waiters, 2 do
  local node = string.match(waiters[i + 1], '^%d+|([^|]*)|')
  if node then
    if known[node] == nil then known[node] = redis.call('EXISTS', ARGV[4] .. node) end
    if known[node] == 0 then redis.call('HDEL', KEYS[2], waiters[i]) end
  end
end
return {total, redis.call('HLEN', KEYS[2]), alive, tonumber(redis.call('GET', KEYS[3]) or '0')}
";

/// The JSON part of a waiter's value.
#[derive(Debug, Serialize, Deserialize)]
struct Body {
    /// Interests.
    i: Vec<String>,
    /// When it started waiting (ms since the Unix epoch).
    t: u64,
    /// Its address (for reports made by its partner).
    ip: IpAddr,
    /// Sessions it must not be paired with, until when (ms; `u64::MAX` for a block).
    #[serde(default)]
    a: Vec<(SessionId, u64)>,
}

/// One waiter as read from Redis.
#[derive(Debug)]
struct Entry {
    session: SessionId,
    seq: u64,
    node: String,
    body: Body,
    /// The whole value, compared by the claim.
    raw: String,
}

impl Entry {
    fn parse(session: String, raw: String) -> Option<Entry> {
        let mut parts = raw.splitn(3, '|');
        let seq = parts.next()?.parse().ok()?;
        let node = parts.next()?.to_owned();
        let body = serde_json::from_str(parts.next()?).ok()?;
        Some(Entry {
            session: SessionId(session),
            seq,
            node,
            body,
            raw,
        })
    }
}

/// What this node knows of its own waiters.
#[derive(Debug)]
struct Mine {
    seq: u64,
    /// Written again after Redis came back: another node may have claimed it just before,
    /// so when that node's `matched` arrives its entry is deleted once more.
    resynced: bool,
    interests: Vec<String>,
    since_ms: u64,
    ip: IpAddr,
}

/// What writing a waiter did.
struct Put {
    /// The people waiting, including it (before it was paired).
    waiting: u64,
    /// The pair formed at once.
    paired: Option<Paired>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Redis is reachable (shared with `/readyz`), and how many times it came back.
#[derive(Clone, Debug, Default)]
pub struct Health {
    pub ready: Arc<AtomicBool>,
    comebacks: Arc<AtomicU64>,
}

pub struct RedisCluster {
    node: String,
    con: ConnectionManager,
    health: Health,
    /// `health.comebacks` when this node last wrote its waiters.
    synced: u64,
    fallback: Duration,
    cooldown: Duration,
    mine: HashMap<SessionId, Mine>,
    /// This node's sessions → sessions they skipped (or were skipped by) → until (ms).
    cooldowns: HashMap<SessionId, HashMap<SessionId, u64>>,
    /// Blocks involving this node's sessions, in both directions.
    blocks: HashMap<SessionId, HashSet<SessionId>>,
    inbound: Option<mpsc::Receiver<NodeMsg>>,
    version: u64,
    last_poll: Instant,
    /// Sessions on the other live nodes, and the people waiting, as last read.
    others_online: u64,
    waiting: u64,
    push: Script,
    pair: Script,
    tick: Script,
    /// Relays and `partner_left` messages for other nodes, published in order by
    /// [`publisher_task`] (pipelined: the actor never waits for them). `None` once shut down.
    outgoing: Option<mpsc::Sender<Outgoing>>,
    publisher: Option<tokio::task::JoinHandle<()>>,
    /// `ps:bans:v` at the last read of the shared bans, and the targets read then.
    bans_version: Option<i64>,
    bans_seen: HashSet<String>,
    /// Stops the pub/sub and health tasks.
    stop: CancellationToken,
}

impl RedisCluster {
    /// Connects to Redis at `url` (`redis://HOST:PORT[/DB]`), subscribes to this node's
    /// channel and starts the health task. An unreachable Redis is not an error here: the
    /// node starts not ready (`/readyz` 503, `join` answers `unavailable`) and becomes
    /// ready when Redis answers. A malformed URL is an error.
    pub async fn connect(
        url: &str,
        fallback: Duration,
        cooldown: Duration,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) -> anyhow::Result<Self> {
        // TCP_NODELAY (the client's default leaves Nagle's algorithm on): a publish or a
        // script call must not wait behind an earlier small write's acknowledgement.
        let info = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| anyhow::anyhow!("--redis {url:?} is not a usable Redis URL: {e}"))?;
        let info = info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info)
            .map_err(|e| anyhow::anyhow!("--redis {url:?} is not a usable Redis URL: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let con = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| anyhow::anyhow!("cannot set up the Redis connection: {e}"))?;
        let node = crate::matchmaker::random_id();
        // Not a child of `shutdown`: a stopping node keeps its channel while it hands its
        // sessions over (the matchmaker's drain); `Cluster::shutdown` ends it.
        let _ = shutdown;
        let stop = CancellationToken::new();
        let health = Health::default();
        let (inbound_tx, inbound) = mpsc::channel(16 * 1024);
        let (subscribed_tx, mut subscribed) = watch::channel(false);
        tracker.spawn(pubsub_task(
            client,
            format!("{CHANNEL_PREFIX}{node}"),
            inbound_tx,
            subscribed_tx,
            stop.clone(),
        ));
        // Ready at once when Redis answers, so the first `join` does not wait for the
        // health task; and subscribed before serving, so no match message is missed.
        let mut first = con.clone();
        if ping(&mut first).await {
            health.ready.store(true, SeqCst);
        }
        let _ = tokio::time::timeout(Duration::from_secs(3), subscribed.wait_for(|s| *s)).await;
        let (outgoing, outgoing_rx) = mpsc::channel(OUTGOING_MAX);
        let publisher = tracker.spawn(publisher_task(con.clone(), outgoing_rx, health.clone()));
        tracker.spawn(health_task(
            con.clone(),
            subscribed,
            health.clone(),
            stop.clone(),
        ));
        tracing::info!(%node, ready = health.ready.load(SeqCst), "cluster node (Redis)");
        let mut cluster = RedisCluster {
            node,
            con,
            synced: health.comebacks.load(SeqCst),
            health,
            fallback,
            cooldown,
            mine: HashMap::new(),
            cooldowns: HashMap::new(),
            blocks: HashMap::new(),
            inbound: Some(inbound),
            version: 0,
            last_poll: Instant::now(),
            others_online: 0,
            waiting: 0,
            push: Script::new(&format!("{PICK_LUA}{PUSH_LUA}")),
            pair: Script::new(&format!("{PICK_LUA}{POLL_LUA}")),
            tick: Script::new(TICK_LUA),
            outgoing: Some(outgoing),
            publisher: Some(publisher),
            bans_version: None,
            bans_seen: HashSet::new(),
            stop,
        };
        // Alive from the start, so other nodes do not take our first waiters for orphans.
        cluster.tick(0).await;
        Ok(cluster)
    }

    /// Readiness, for `/readyz`.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    fn ready(&self) -> bool {
        self.health.ready.load(Relaxed)
    }

    /// A failed call: Redis counts as unreachable until the health task hears it again.
    fn failed(&self, what: &str, e: &dyn std::fmt::Display) {
        if self.health.ready.swap(false, SeqCst) {
            tracing::warn!("Redis unreachable ({what}: {e}); join/next answer unavailable");
        }
    }

    /// Runs one Redis call with the time limit; `None` (and not ready) when it fails.
    async fn call<T, F>(&self, what: &str, fut: F) -> Option<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(OP_TIMEOUT, fut).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.failed(what, &e);
                None
            }
            Err(_) => {
                self.failed(what, &"timed out");
                None
            }
        }
    }

    /// What `session` must not be paired with now: its cooldowns and blocks.
    fn avoid_list(&self, session: &SessionId, now_ms: u64) -> Vec<(SessionId, u64)> {
        let cooling = self
            .cooldowns
            .get(session)
            .into_iter()
            .flatten()
            .filter(|(_, until)| **until > now_ms)
            .map(|(s, until)| (s.clone(), *until));
        let blocked = self
            .blocks
            .get(session)
            .into_iter()
            .flatten()
            .map(|s| (s.clone(), u64::MAX));
        cooling.chain(blocked).collect()
    }

    /// Writes this node's waiter `session` (a new one takes the next arrival number unless
    /// `seq` is given) and, with `pair`, pairs it at once in the same script call.
    /// `Ok(None)`: `only_if_present` and the waiter was no longer there (another node
    /// paired it).
    async fn put(
        &mut self,
        session: &SessionId,
        seq: Option<u64>,
        only_if_present: bool,
        pair: bool,
    ) -> Result<Option<Put>, Unavailable> {
        if !self.ready() {
            return Err(Unavailable);
        }
        let Some(me) = self.mine.get(session) else {
            return Ok(None);
        };
        let now = now_ms();
        let body = Body {
            i: me.interests.clone(),
            t: me.since_ms,
            ip: me.ip,
            a: self.avoid_list(session, now),
        };
        let json = serde_json::to_string(&body).map_err(|_| Unavailable)?;
        let mut con = self.con.clone();
        let mut inv = self.push.prepare_invoke();
        inv.key(WAITERS)
            .key(SEQ)
            .arg(&session.0)
            .arg(&self.node)
            .arg(&json)
            .arg(seq.map(|s| s.to_string()).unwrap_or_default())
            .arg(if only_if_present { "1" } else { "0" })
            .arg(if pair { "1" } else { "0" })
            .arg(now)
            .arg(millis(self.fallback));
        let (seq, waiting, partner, partner_raw): (i64, u64, String, String) = self
            .call("queue a waiter", inv.invoke_async(&mut con))
            .await
            .ok_or(Unavailable)?;
        self.version += 1;
        let Ok(seq) = u64::try_from(seq) else {
            return Ok(None);
        };
        if let Some(me) = self.mine.get_mut(session) {
            me.seq = seq;
        }
        self.waiting = waiting;
        if partner.is_empty() {
            return Ok(Some(Put {
                waiting,
                paired: None,
            }));
        }
        self.waiting = waiting.saturating_sub(2);
        let me = Entry {
            session: session.clone(),
            seq,
            node: self.node.clone(),
            body,
            raw: format!("{seq}|{}|{json}", self.node),
        };
        // Both left the queue. An unreadable partner (cannot happen: every node writes the
        // same format) is put back as it was, and so is this waiter.
        let paired = match Entry::parse(partner.clone(), partner_raw.clone()) {
            Some(other) => self.claimed_pair(me, other, now).await,
            None => {
                tracing::warn!("an unreadable waiter in Redis, put back");
                self.restore(&[(&partner, &partner_raw), (&me.session.0, &me.raw)])
                    .await;
                None
            }
        };
        Ok(Some(Put { waiting, paired }))
    }

    /// Two waiters a script claimed: their pair, unless a side of this node no longer
    /// waits here (an entry left behind while Redis was unreachable); then the other side
    /// gets its place in the queue back.
    async fn claimed_pair(&mut self, x: Entry, y: Entry, now_ms: u64) -> Option<Paired> {
        let stale = |e: &Entry| e.node == self.node && !self.mine.contains_key(&e.session);
        let (sx, sy) = (stale(&x), stale(&y));
        if !sx && !sy {
            return Some(self.paired(&x, &y, now_ms));
        }
        tracing::warn!("a stale waiter of this node was claimed; the other is put back");
        let back: Vec<(&String, &String)> = [(&x, sx), (&y, sy)]
            .into_iter()
            .filter(|(_, stale)| !*stale)
            .map(|(e, _)| (&e.session.0, &e.raw))
            .collect();
        self.restore(&back).await;
        None
    }

    /// Puts claimed waiters back as they were (unless written again meanwhile).
    async fn restore(&mut self, entries: &[(&String, &String)]) {
        if entries.is_empty() {
            return;
        }
        let mut con = self.con.clone();
        let mut pipe = redis::pipe();
        for (session, raw) in entries {
            pipe.cmd("HSETNX")
                .arg(WAITERS)
                .arg(*session)
                .arg(*raw)
                .ignore();
        }
        let _: Option<()> = self
            .call("put waiters back", pipe.query_async(&mut con))
            .await;
        self.version += 1;
    }

    /// The pair of two claimed waiters, as this node sees it; both leave `mine`.
    fn paired(&mut self, x: &Entry, y: &Entry, now_ms: u64) -> Paired {
        let (first, second) = if x.seq <= y.seq { (x, y) } else { (y, x) };
        let common_interests = first
            .body
            .i
            .iter()
            .filter(|i| second.body.i.contains(i))
            .cloned()
            .collect();
        let waited = |e: &Entry| Duration::from_millis(now_ms.saturating_sub(e.body.t));
        let pair = Pair {
            first: first.session.clone(),
            second: second.session.clone(),
            common_interests,
            first_waited: waited(first),
            second_waited: waited(second),
        };
        let remote = [first, second]
            .into_iter()
            .find(|e| e.node != self.node)
            .map(|e| RemoteSide {
                session: e.session.clone(),
                node: e.node.clone(),
                ip: e.body.ip,
            });
        for e in [first, second] {
            if e.node == self.node {
                self.mine.remove(&e.session);
            }
        }
        Paired { pair, remote }
    }

    async fn hdel(&mut self, sessions: &[&SessionId]) -> Option<i64> {
        if !self.ready() || sessions.is_empty() {
            return None;
        }
        let mut con = self.con.clone();
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(WAITERS);
        for s in sessions {
            cmd.arg(&s.0);
        }
        self.version += 1;
        self.call("leave the queue", cmd.query_async(&mut con))
            .await
    }

    /// After Redis came back (maybe restarted, empty): writes this node's waiters again.
    async fn resync(&mut self) {
        let comebacks = self.health.comebacks.load(SeqCst);
        if comebacks == self.synced {
            return;
        }
        self.synced = comebacks;
        let sessions: Vec<(SessionId, u64)> =
            self.mine.iter().map(|(s, m)| (s.clone(), m.seq)).collect();
        tracing::info!(
            waiters = sessions.len(),
            "Redis is back: re-queueing this node's waiters"
        );
        for (s, seq) in sessions {
            if let Some(me) = self.mine.get_mut(&s) {
                me.resynced = true;
            }
            if self
                .put(&s, Some(seq).filter(|n| *n > 0), false, false)
                .await
                .is_err()
            {
                // Still unreachable: try again at the next comeback.
                self.synced = comebacks.wrapping_sub(1);
                return;
            }
        }
    }
}

impl Cluster for RedisCluster {
    fn node_id(&self) -> &str {
        &self.node
    }

    fn version(&self) -> u64 {
        self.version
    }

    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        if self.mine.is_empty() {
            return None;
        }
        let now_ms = now_ms();
        let fallback = millis(self.fallback);
        let fallbacks = self
            .mine
            .values()
            .filter(|m| !m.interests.is_empty())
            .map(|m| m.since_ms.saturating_add(fallback))
            .filter(|at| *at > now_ms)
            .map(|at| now + Duration::from_millis(at - now_ms));
        fallbacks
            .chain(std::iter::once(self.last_poll + POLL_INTERVAL))
            .min()
    }

    async fn poll(&mut self, now: Instant) -> Vec<Paired> {
        self.last_poll = now;
        self.version += 1;
        if self.mine.is_empty() || !self.ready() {
            return Vec::new();
        }
        // One script call reads the queue and claims every pair it can make for this
        // node's waiters (remote waiters reaching their fallback, cooldowns ending).
        let now_ms = now_ms();
        let mut con = self.con.clone();
        let mut inv = self.pair.prepare_invoke();
        inv.key(WAITERS)
            .arg(&self.node)
            .arg(now_ms)
            .arg(millis(self.fallback));
        let Some(flat) = self
            .call::<Vec<String>, _>("pair waiters", inv.invoke_async(&mut con))
            .await
        else {
            return Vec::new();
        };
        self.version += 1;
        let mut it = flat.into_iter();
        if let Some(waiting) = it.next().and_then(|w| w.parse().ok()) {
            self.waiting = waiting;
        }
        let mut pairs = Vec::new();
        while let (Some(a), Some(a_raw), Some(b), Some(b_raw)) =
            (it.next(), it.next(), it.next(), it.next())
        {
            match (
                Entry::parse(a.clone(), a_raw.clone()),
                Entry::parse(b.clone(), b_raw.clone()),
            ) {
                (Some(x), Some(y)) => {
                    if let Some(p) = self.claimed_pair(x, y, now_ms).await {
                        pairs.push(p);
                    }
                }
                _ => {
                    tracing::warn!("an unreadable waiter in Redis, put back");
                    self.restore(&[(&a, &a_raw), (&b, &b_raw)]).await;
                }
            }
        }
        pairs
    }

    fn contains(&self, session: &SessionId) -> bool {
        self.mine.contains_key(session)
    }

    fn local_waiting(&self) -> usize {
        self.mine.len()
    }

    fn counts(&self, local_online: u64) -> (u64, u64) {
        (self.others_online + local_online, self.waiting)
    }

    async fn push(
        &mut self,
        session: SessionId,
        interests: Vec<String>,
        ip: IpAddr,
        _now: Instant,
    ) -> Result<Pushed, Unavailable> {
        if !self.ready() {
            return Err(Unavailable);
        }
        let present = self.mine.contains_key(&session);
        match self.mine.get_mut(&session) {
            Some(me) => {
                me.interests = interests;
                me.ip = ip;
            }
            None => {
                self.mine.insert(
                    session.clone(),
                    Mine {
                        seq: 0,
                        resynced: false,
                        interests,
                        since_ms: now_ms(),
                        ip,
                    },
                );
            }
        }
        let seq = self.mine.get(&session).map(|m| m.seq).filter(|s| *s > 0);
        let put = match self.put(&session, seq, present, true).await {
            Ok(Some(put)) => put,
            // Already paired by another node: its `matched` is on the way.
            Ok(None) => {
                return Ok(Pushed {
                    waiting: self.waiting.max(1),
                    paired: None,
                })
            }
            Err(e) => {
                if !present {
                    self.mine.remove(&session);
                }
                return Err(e);
            }
        };
        Ok(Pushed {
            waiting: put.waiting,
            paired: put.paired,
        })
    }

    async fn remove(&mut self, session: &SessionId) -> bool {
        if self.mine.remove(session).is_none() {
            return false;
        }
        // Not there any more: another node paired it, and answers its `matched` with
        // `partner_left` when it arrives (the session is no longer waiting).
        self.hdel(&[session]).await;
        true
    }

    async fn park(&mut self, session: &SessionId) -> Option<Parked> {
        let me = self.mine.remove(session)?;
        self.hdel(&[session]).await;
        let waited = Duration::from_millis(now_ms().saturating_sub(me.since_ms));
        let now = Instant::now();
        Some(Parked {
            seq: me.seq,
            interests: me.interests,
            since: now.checked_sub(waited).unwrap_or(now),
        })
    }

    fn parked_at_back(&mut self, interests: Vec<String>, now: Instant) -> Parked {
        Parked {
            seq: 0,
            interests,
            since: now,
        }
    }

    async fn unpark(
        &mut self,
        session: SessionId,
        parked: Parked,
        ip: IpAddr,
        now: Instant,
    ) -> Option<Paired> {
        let waited = now.saturating_duration_since(parked.since);
        self.mine.insert(
            session.clone(),
            Mine {
                seq: parked.seq,
                resynced: false,
                interests: parked.interests,
                since_ms: now_ms().saturating_sub(millis(waited)),
                ip,
            },
        );
        // Unreachable: it stays in `mine` and is written again when Redis is back.
        let seq = Some(parked.seq).filter(|s| *s > 0);
        self.put(&session, seq, false, true).await.ok()??.paired
    }

    fn record_skip(&mut self, a: &SessionId, b: &SessionId, now: Instant) {
        if self.cooldown.is_zero() {
            return;
        }
        let _ = now;
        let now_ms = now_ms();
        let until = now_ms.saturating_add(millis(self.cooldown));
        for (x, y) in [(a, b), (b, a)] {
            let map = self.cooldowns.entry(x.clone()).or_default();
            map.retain(|_, u| *u > now_ms);
            map.insert(y.clone(), until);
        }
        self.version += 1;
    }

    async fn block(&mut self, a: &SessionId, b: &SessionId) {
        if a == b {
            return;
        }
        self.blocks.entry(a.clone()).or_default().insert(b.clone());
        self.blocks.entry(b.clone()).or_default().insert(a.clone());
        self.version += 1;
        // A waiter's entry carries its blocks: write it again so other nodes see this one.
        for s in [a, b] {
            if let Some(seq) = self.mine.get(s).map(|m| m.seq) {
                let _ = self.put(s, Some(seq).filter(|n| *n > 0), true, false).await;
            }
        }
    }

    fn blocked(&self, a: &SessionId, b: &SessionId) -> bool {
        self.blocks.get(a).is_some_and(|set| set.contains(b))
    }

    fn avoid_of(&self, session: &SessionId) -> Vec<(SessionId, u64)> {
        self.avoid_list(session, now_ms())
    }

    fn adopt_avoid(&mut self, session: &SessionId, avoid: Vec<(SessionId, u64)>) {
        for (other, until) in avoid {
            if until == u64::MAX {
                self.blocks
                    .entry(session.clone())
                    .or_default()
                    .insert(other.clone());
                self.blocks
                    .entry(other)
                    .or_default()
                    .insert(session.clone());
            } else {
                for (x, y) in [(session, &other), (&other, session)] {
                    self.cooldowns
                        .entry(x.clone())
                        .or_default()
                        .insert(y.clone(), until);
                }
            }
        }
        self.version += 1;
    }

    async fn moved_away(&mut self, session: &SessionId) {
        self.remove(session).await;
        self.cooldowns.remove(session);
        self.blocks.remove(session);
    }

    async fn save_resume(&mut self, records: Vec<(String, Option<String>)>) {
        if records.is_empty() || !self.ready() {
            return;
        }
        let mut pipe = redis::pipe();
        for (token, record) in &records {
            let key = format!("{RESUME_PREFIX}{token}");
            match record {
                Some(json) => pipe
                    .cmd("SET")
                    .arg(&key)
                    .arg(json)
                    .arg("EX")
                    .arg(RESUME_RECORD_TTL_SECS)
                    .ignore(),
                None => pipe.cmd("DEL").arg(&key).ignore(),
            };
        }
        let mut con = self.con.clone();
        let _: Option<()> = self
            .call("save resume records", pipe.query_async(&mut con))
            .await;
    }

    async fn take_resume(&mut self, token: &str) -> Option<String> {
        if !self.ready() {
            return None;
        }
        let mut con = self.con.clone();
        let mut cmd = redis::cmd("GETDEL");
        cmd.arg(format!("{RESUME_PREFIX}{token}"));
        self.call(
            "take a resume record",
            cmd.query_async::<Option<String>>(&mut con),
        )
        .await
        .flatten()
    }

    async fn forget(&mut self, session: &SessionId) {
        self.remove(session).await;
        self.cooldowns.remove(session);
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
        // Cooldowns other sessions hold with this one end by themselves.
    }

    async fn send_to(&mut self, node: &str, msg: &NodeMsg) -> Result<(), Unavailable> {
        // `retry`: kept and sent again should a publish fail (when Redis is back). `now`:
        // refused at once while Redis is unreachable.
        let (retry, now) = match msg {
            // Through the ordered publisher like a relay, so a pairing costs the actor no
            // round trip; kept, so the partner's node learns of the match even after a
            // failed publish (or the liveness check ends it here). While Redis is
            // unreachable the local side is told the match is off instead.
            NodeMsg::Matched { .. } => (true, true),
            NodeMsg::Relay { .. } => (false, true),
            // Questions with a deadline on the asking side (a held `hello`, an `undo_next`):
            // refused at once (a new session, `undo_unavailable`), never asked late.
            NodeMsg::ResumeAsk { .. } | NodeMsg::UndoAsk { .. } => (false, true),
            // A partner on another node must not stay in a match with nobody; a handover
            // and the answers must reach the asking node.
            _ => (true, false),
        };
        let ready = self.ready();
        if now && !ready {
            return Err(Unavailable);
        }
        let payload = serde_json::to_string(msg).map_err(|_| Unavailable)?;
        let out = Outgoing {
            channel: format!("{CHANNEL_PREFIX}{node}"),
            payload,
            retry,
        };
        match self.outgoing.as_ref().map(|tx| tx.try_send(out)) {
            Some(Ok(())) if ready => Ok(()),
            _ => Err(Unavailable),
        }
    }

    fn take_inbound(&mut self) -> Option<mpsc::Receiver<NodeMsg>> {
        self.inbound.take()
    }

    async fn tick(&mut self, local_online: u64) -> Tick {
        if !self.ready() {
            return Tick::default();
        }
        let mut con = self.con.clone();
        let mut inv = self.tick.prepare_invoke();
        inv.key(ONLINE)
            .key(WAITERS)
            .key(BANS_VERSION)
            .arg(&self.node)
            .arg(local_online)
            .arg(millis(ALIVE_TTL))
            .arg(ALIVE_PREFIX);
        let Some((online, waiting, alive, bans_version)) = self
            .call::<(u64, u64, Vec<String>, i64), _>("tick", inv.invoke_async(&mut con))
            .await
        else {
            return Tick::default();
        };
        self.others_online = online.saturating_sub(local_online);
        self.waiting = waiting;
        // After the liveness key is written, not before: a restarted Redis has no key for
        // this node yet, and another node's tick would take the re-written waiters for a
        // dead node's.
        self.resync().await;
        let bans = if self.bans_version == Some(bans_version) {
            None
        } else {
            self.read_bans(bans_version).await
        };
        Tick {
            alive: Some(alive.into_iter().collect()),
            bans,
        }
    }

    async fn count_report(
        &mut self,
        reported: IpAddr,
        reporter: &SessionId,
        window: Duration,
    ) -> Option<u32> {
        if !self.ready() {
            return None;
        }
        // One sorted set per reported address: reporter session → when (ms); older
        // entries than the window are dropped, so its size is the distinct reporters.
        let key = format!("{REPORTS_PREFIX}{}", reported.to_canonical());
        let now = now_ms();
        let mut con = self.con.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("ZADD")
            .arg(&key)
            .arg(now)
            .arg(&reporter.0)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now.saturating_sub(millis(window)))
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(millis(window).max(1))
            .ignore()
            .cmd("ZCARD")
            .arg(&key);
        let (count,): (u32,) = self
            .call("count a report", pipe.query_async(&mut con))
            .await?;
        Some(count)
    }

    async fn share_ban(&mut self, ban: SharedBan) {
        if !self.ready() {
            tracing::warn!(target = %ban.target, "Redis unreachable: this ban stays on this node");
            return;
        }
        let mut con = self.con.clone();
        let _: Option<()> = self
            .call("share a ban", share_ban_pipe(&ban).query_async(&mut con))
            .await;
    }

    async fn claimed(&mut self, session: &SessionId) {
        // The claimer already removed it from Redis; this only matters if it was written
        // again meanwhile (a resync after an outage), so it cannot be paired twice.
        if self.mine.remove(session).is_some_and(|m| m.resynced) {
            self.hdel(&[session]).await;
        }
    }

    async fn shutdown(&mut self) {
        // What is queued for other nodes (the `partner_left` of this node's matches) goes
        // out first: closing the queue ends the publisher once it is flushed.
        self.outgoing = None;
        if let Some(publisher) = self.publisher.take() {
            let _ = tokio::time::timeout(OP_TIMEOUT * 2, publisher).await;
        }
        let sessions: Vec<SessionId> = self.mine.keys().cloned().collect();
        let refs: Vec<&SessionId> = sessions.iter().collect();
        self.hdel(&refs).await;
        self.mine.clear();
        if self.ready() {
            let mut con = self.con.clone();
            let mut pipe = redis::pipe();
            pipe.cmd("HDEL")
                .arg(ONLINE)
                .arg(&self.node)
                .ignore()
                .cmd("DEL")
                .arg(format!("{ALIVE_PREFIX}{}", self.node))
                .ignore();
            let _: Option<()> = self
                .call("leave the cluster", pipe.query_async(&mut con))
                .await;
        }
        self.stop.cancel();
    }
}

async fn ping(con: &mut ConnectionManager) -> bool {
    matches!(
        tokio::time::timeout(OP_TIMEOUT, redis::cmd("PING").query_async::<String>(con)).await,
        Ok(Ok(_))
    )
}

/// Pings Redis: sets `ready` (Redis answers and this node hears its channel), and counts
/// each return after an outage.
async fn health_task(
    mut con: ConnectionManager,
    subscribed: watch::Receiver<bool>,
    health: Health,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
        }
        let ok = ping(&mut con).await && *subscribed.borrow();
        let was = health.ready.swap(ok, SeqCst);
        if ok && !was {
            health.comebacks.fetch_add(1, SeqCst);
            tracing::info!("Redis reachable again");
        } else if !ok && was {
            tracing::warn!("Redis unreachable; join/next answer unavailable");
        }
    }
}

/// Keeps this node subscribed to its channel (again after every lost connection) and
/// hands what arrives to the actor.
async fn pubsub_task(
    client: redis::Client,
    channel: String,
    inbound: mpsc::Sender<NodeMsg>,
    subscribed: watch::Sender<bool>,
    stop: CancellationToken,
) {
    loop {
        let session = async {
            let mut ps = match tokio::time::timeout(OP_TIMEOUT, client.get_async_pubsub()).await {
                Ok(Ok(ps)) => ps,
                Ok(Err(e)) => return tracing::debug!("pub/sub connection failed: {e}"),
                Err(_) => return tracing::debug!("pub/sub connection timed out"),
            };
            if let Err(e) = ps.subscribe(&channel).await {
                return tracing::debug!("subscribing failed: {e}");
            }
            subscribed.send_replace(true);
            let mut messages = ps.into_on_message();
            while let Some(msg) = messages.next().await {
                let parsed = std::str::from_utf8(msg.get_payload_bytes())
                    .ok()
                    .and_then(|text| serde_json::from_str::<NodeMsg>(text).ok());
                match parsed {
                    Some(m) => {
                        if inbound.send(m).await.is_err() {
                            return;
                        }
                    }
                    None => tracing::warn!("an unreadable message from another node, dropped"),
                }
            }
            tracing::debug!("pub/sub connection lost");
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = session => {}
        }
        subscribed.send_replace(false);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

impl RedisCluster {
    /// The shared bans (after `ps:bans:v` moved to `version`), and which were dropped
    /// since the last read.
    async fn read_bans(&mut self, version: i64) -> Option<SharedBans> {
        let mut con = self.con.clone();
        let flat: Vec<String> = self
            .call(
                "read the shared bans",
                redis::cmd("HGETALL").arg(BANS).query_async(&mut con),
            )
            .await?;
        let mut current = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(target), Some(value)) = (it.next(), it.next()) {
            let Some((until, reason)) = value.split_once('|') else {
                continue;
            };
            let Ok(until) = until.parse() else {
                continue;
            };
            current.push(SharedBan {
                target,
                until,
                reason: reason.to_owned(),
            });
        }
        let now: HashSet<String> = current.iter().map(|b| b.target.clone()).collect();
        let removed = self.bans_seen.difference(&now).cloned().collect();
        self.bans_seen = now;
        self.bans_version = Some(version);
        Some(SharedBans { current, removed })
    }
}

/// HSET the ban and bump the version, in one round trip.
fn share_ban_pipe(ban: &SharedBan) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("HSET")
        .arg(BANS)
        .arg(&ban.target)
        .arg(format!("{}|{}", ban.until, ban.reason))
        .ignore()
        .cmd("INCR")
        .arg(BANS_VERSION)
        .ignore();
    pipe
}

/// For the operator's `bans add --redis`: shares a ban with every node of the cluster
/// (each applies it within seconds and writes it to its own file). Blocking.
pub fn share_ban_blocking(url: &str, ban: &SharedBan) -> anyhow::Result<()> {
    let mut con = blocking_connection(url)?;
    share_ban_pipe(ban)
        .query::<()>(&mut con)
        .map_err(|e| anyhow::anyhow!("sharing the ban through Redis failed: {e}"))
}

/// For the operator's `bans remove --redis`: lifts a shared ban on every node. Blocking.
pub fn unshare_ban_blocking(url: &str, target: &str) -> anyhow::Result<()> {
    let mut con = blocking_connection(url)?;
    redis::pipe()
        .atomic()
        .cmd("HDEL")
        .arg(BANS)
        .arg(target)
        .ignore()
        .cmd("INCR")
        .arg(BANS_VERSION)
        .ignore()
        .query::<()>(&mut con)
        .map_err(|e| anyhow::anyhow!("lifting the ban through Redis failed: {e}"))
}

fn blocking_connection(url: &str) -> anyhow::Result<redis::Connection> {
    let client = redis::Client::open(url)
        .map_err(|e| anyhow::anyhow!("--redis {url:?} is not a usable Redis URL: {e}"))?;
    let con = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .map_err(|e| anyhow::anyhow!("cannot reach Redis at {url}: {e}"))?;
    con.set_read_timeout(Some(Duration::from_secs(5)))
        .and_then(|()| con.set_write_timeout(Some(Duration::from_secs(5))))
        .map_err(|e| anyhow::anyhow!("Redis connection: {e}"))?;
    Ok(con)
}
