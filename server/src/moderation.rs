//! Reports and bans, kept in a SQLite file so they survive restarts.
//!
//! Bans are by IP address or CIDR range: a session id lives only as long as its
//! connection, so a ban on it would end at the next reconnect. Active bans are mirrored in
//! memory so that checking a new connection never touches the disk.
//!
//! The file is shared with the operator's `peer-stream-server bans …` / `reports …`
//! commands, which run as other processes while the server is up (WAL mode, a busy
//! timeout). The server notices their writes through `PRAGMA data_version` ([`Moderation::watch`])
//! and reloads its mirror within [`BAN_POLL_INTERVAL`].
//!
//! Schema history (`PRAGMA user_version`): 0 = release 0.1.0 (`bans.ip` held single
//! addresses); 1 = `bans.ip` may also hold a CIDR range (`203.0.113.0/24`). The columns did
//! not change, so a file from 0.1.0 is upgraded in place by setting the version.

use crate::matchmaker::{Command, MatchmakerHandle};
use anyhow::Context;
use rusqlite::{params, Connection, OpenFlags};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// How often a running server looks for bans changed by another process.
pub const BAN_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The newest schema this release reads and writes (see the module docs).
const SCHEMA_VERSION: i64 = 1;

#[derive(Clone)]
pub struct Moderation {
    inner: Arc<Inner>,
}

struct Inner {
    db: Mutex<Connection>,
    /// Active bans, mirrored from the `bans` table.
    bans: RwLock<Bans>,
    /// `PRAGMA data_version` when the mirror was last loaded.
    data_version: AtomicI64,
    threshold: u32,
    window: Duration,
    duration: Duration,
}

/// A ban as a cluster shares it through Redis (`--redis`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedBan {
    /// An address or a CIDR range, as [`BanTarget`] prints it.
    pub target: String,
    /// Unix seconds.
    pub until: i64,
    pub reason: String,
}

/// One report, as the matchmaker knows it.
#[derive(Clone, Debug)]
pub struct Report {
    pub reporter_session: String,
    pub reporter_ip: IpAddr,
    pub reported_session: String,
    pub reported_ip: IpAddr,
    pub match_id: String,
    pub reason: String,
}

/// What a ban covers: one address, or a CIDR range of them. IPv4-mapped IPv6 addresses
/// (`::ffff:192.0.2.1`, what a dual-stack listener reports for IPv4 clients) count as the
/// IPv4 address they map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BanTarget {
    /// The network address (host bits zero).
    addr: IpAddr,
    prefix: u8,
}

fn max_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

impl BanTarget {
    /// A ban on exactly `ip`.
    pub fn single(ip: IpAddr) -> Self {
        let addr = ip.to_canonical();
        Self {
            addr,
            prefix: max_prefix(addr),
        }
    }

    /// The network address (the address itself for a single-address ban).
    pub fn network(&self) -> IpAddr {
        self.addr
    }

    /// True for a single address, false for a wider range.
    pub fn is_single(&self) -> bool {
        self.prefix == max_prefix(self.addr)
    }

    /// Whether `ip` is inside this target.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

impl FromStr for BanTarget {
    type Err = String;

    /// `203.0.113.7`, `2001:db8::1`, `203.0.113.0/24`, `2001:db8::/32`. Host bits in a
    /// range are cleared (`203.0.113.7/24` is `203.0.113.0/24`); a /32 (IPv4) or /128
    /// (IPv6) range is the single address.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let example = "e.g. 203.0.113.7, 2001:db8::1, 203.0.113.0/24 or 2001:db8::/32";
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or a CIDR range ({example})"))?;
        let Some(prefix_text) = prefix_text else {
            return Ok(Self::single(addr));
        };
        let max = max_prefix(addr);
        let prefix: u8 = prefix_text
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| {
                format!("{s:?}: the prefix length after '/' must be a number from 0 to {max}")
            })?;
        // An IPv4-mapped IPv6 range with a /96 or longer prefix is an IPv4 range.
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        Ok(Self {
            addr: mask(addr, prefix),
            prefix,
        })
    }
}

impl fmt::Display for BanTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_single() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// The in-memory mirror of the active bans: single addresses in a map, ranges in a list
/// (an operator bans a handful of ranges, not thousands).
#[derive(Default)]
struct Bans {
    exact: HashMap<IpAddr, i64>,
    ranges: Vec<(BanTarget, i64)>,
}

impl Bans {
    fn insert(&mut self, target: BanTarget, until: i64) {
        if target.is_single() {
            self.exact.insert(target.addr, until);
        } else {
            self.ranges.retain(|(t, _)| *t != target);
            self.ranges.push((target, until));
        }
    }

    fn covers(&self, ip: IpAddr, now: i64) -> bool {
        let ip = ip.to_canonical();
        self.exact.get(&ip).is_some_and(|until| *until > now)
            || self
                .ranges
                .iter()
                .any(|(t, until)| *until > now && t.contains(ip))
    }

    fn len(&self) -> usize {
        self.exact.len() + self.ranges.len()
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Pragmas and tables, created when missing; upgrades a file of an older schema in place.
fn prepare(db: &Connection, path: &Path) -> anyhow::Result<()> {
    db.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA busy_timeout = 5000;",
    )
    .with_context(|| format!("preparing the database {}", path.display()))?;
    let version: i64 = db
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .with_context(|| format!("reading the schema version of {}", path.display()))?;
    if version > SCHEMA_VERSION {
        anyhow::bail!(
            "the database {} has schema version {version}, newer than this release knows \
             ({SCHEMA_VERSION}); use a newer peer-stream-server",
            path.display()
        );
    }
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS reports (
             id INTEGER PRIMARY KEY,
             created_at INTEGER NOT NULL,
             reporter_session TEXT NOT NULL,
             reporter_ip TEXT NOT NULL,
             reported_session TEXT NOT NULL,
             reported_ip TEXT NOT NULL,
             match_id TEXT NOT NULL,
             reason TEXT NOT NULL
         );
         CREATE INDEX IF NOT EXISTS reports_by_ip ON reports (reported_ip, created_at);
         CREATE TABLE IF NOT EXISTS bans (
             ip TEXT PRIMARY KEY,
             until INTEGER NOT NULL,
             reason TEXT NOT NULL,
             created_at INTEGER NOT NULL
         );",
    )
    .with_context(|| format!("preparing the database {}", path.display()))?;
    if version < SCHEMA_VERSION {
        // 0 → 1: `bans.ip` may hold a CIDR range from now on; no row changes.
        db.pragma_update(None, "user_version", SCHEMA_VERSION)
            .with_context(|| format!("upgrading the database {}", path.display()))?;
    }
    Ok(())
}

/// The bans still in force.
fn load_bans(db: &Connection, now: i64) -> anyhow::Result<Bans> {
    let mut bans = Bans::default();
    let mut stmt = db.prepare("SELECT ip, until FROM bans WHERE until > ?1")?;
    let rows = stmt.query_map([now], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (ip, until) = row?;
        match ip.parse::<BanTarget>() {
            Ok(target) => bans.insert(target, until),
            Err(_) => tracing::warn!(%ip, "ignoring a ban with an unreadable address"),
        }
    }
    Ok(bans)
}

fn data_version(db: &Connection) -> anyhow::Result<i64> {
    Ok(db.query_row("PRAGMA data_version", [], |r| r.get(0))?)
}

impl Moderation {
    /// Opens (or creates) the database and loads the bans still in force.
    pub fn open(
        path: &Path,
        threshold: u32,
        window: Duration,
        duration: Duration,
    ) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the database folder {}", dir.display()))?;
        }
        let db = Connection::open(path)
            .with_context(|| format!("opening the database {}", path.display()))?;
        prepare(&db, path)?;
        let bans = load_bans(&db, unix_now())?;
        let version = data_version(&db)?;
        tracing::info!(path = %path.display(), active_bans = bans.len(), "moderation database open");
        Ok(Self {
            inner: Arc::new(Inner {
                db: Mutex::new(db),
                bans: RwLock::new(bans),
                data_version: AtomicI64::new(version),
                threshold,
                window,
                duration,
            }),
        })
    }

    /// Whether `ip` is banned right now (by its own ban or a range that holds it).
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        let bans = self
            .inner
            .bans
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        bans.covers(ip, unix_now())
    }

    /// Stores a report; returns true when it tipped the reported address into a ban.
    /// Blocking (SQLite): call from `spawn_blocking`.
    pub fn record_report(&self, report: &Report) -> anyhow::Result<bool> {
        self.record_report_counted(report, None)
    }

    /// How far back reports count toward a ban.
    pub fn window(&self) -> Duration {
        self.inner.window
    }

    /// [`Self::record_report`] for a cluster node: `cluster_distinct` is the number of
    /// distinct sessions that reported the address within the window on every node (from
    /// Redis); the ban comes when either count reaches the threshold.
    pub fn record_report_counted(
        &self,
        report: &Report,
        cluster_distinct: Option<u32>,
    ) -> anyhow::Result<bool> {
        let now = unix_now();
        let db = self.inner.db.lock().unwrap_or_else(PoisonError::into_inner);
        db.execute(
            "INSERT INTO reports (created_at, reporter_session, reporter_ip, reported_session, reported_ip, match_id, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                now,
                report.reporter_session,
                report.reporter_ip.to_string(),
                report.reported_session,
                report.reported_ip.to_string(),
                report.match_id,
                report.reason
            ],
        )?;
        if self.inner.threshold == 0 || self.is_banned(report.reported_ip) {
            return Ok(false);
        }
        let since = now - secs(self.inner.window);
        let distinct: u32 = db.query_row(
            "SELECT COUNT(DISTINCT reporter_session) FROM reports
             WHERE reported_ip = ?1 AND created_at > ?2",
            params![report.reported_ip.to_string(), since],
            |r| r.get(0),
        )?;
        let distinct = distinct.max(cluster_distinct.unwrap_or(0));
        if distinct < self.inner.threshold {
            return Ok(false);
        }
        let until = now.saturating_add(secs(self.inner.duration));
        let target = BanTarget::single(report.reported_ip);
        db.execute(
            "INSERT INTO bans (ip, until, reason, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(ip) DO UPDATE SET until = excluded.until, reason = excluded.reason",
            params![
                target.to_string(),
                until,
                format!("reported by {distinct} sessions"),
                now
            ],
        )?;
        self.inner
            .bans
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(target, until);
        tracing::warn!(ip = %report.reported_ip, distinct, "address banned after reports");
        Ok(true)
    }

    /// When the ban on exactly `ip` ends (unix seconds), if there is one in force.
    pub fn ban_until(&self, ip: IpAddr) -> Option<i64> {
        let bans = self
            .inner
            .bans
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        bans.exact
            .get(&ip.to_canonical())
            .copied()
            .filter(|until| *until > unix_now())
    }

    /// Applies the bans a cluster shares through Redis: each one in force is written to
    /// this node's file (so it outlives the cluster), each one `removed` from the shared
    /// set is deleted; the mirror is reloaded. True when anything changed. Blocking.
    pub fn apply_shared(&self, bans: &[SharedBan], removed: &[String]) -> anyhow::Result<bool> {
        let now = unix_now();
        let db = self.inner.db.lock().unwrap_or_else(PoisonError::into_inner);
        let mut changed = false;
        for b in bans.iter().filter(|b| b.until > now) {
            let Ok(target) = b.target.parse::<BanTarget>() else {
                tracing::warn!(target = %b.target, "ignoring a shared ban with an unreadable address");
                continue;
            };
            changed |= db.execute(
                "INSERT INTO bans (ip, until, reason, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(ip) DO UPDATE SET until = excluded.until, reason = excluded.reason
                 WHERE bans.until <> excluded.until",
                params![target.to_string(), b.until, b.reason, now],
            )? > 0;
        }
        for r in removed {
            if let Ok(target) = r.parse::<BanTarget>() {
                changed |= db.execute("DELETE FROM bans WHERE ip = ?1", [target.to_string()])? > 0;
            }
        }
        if changed {
            let bans = load_bans(&db, now)?;
            *self
                .inner
                .bans
                .write()
                .unwrap_or_else(PoisonError::into_inner) = bans;
            self.inner
                .data_version
                .store(data_version(&db)?, Ordering::Relaxed);
            tracing::info!("bans shared by the cluster applied");
        }
        Ok(changed)
    }

    /// Reloads the ban mirror when another process (the operator's `bans add/remove`)
    /// changed the file since the last look; true when it did. Blocking (SQLite).
    pub fn reload_if_changed(&self) -> anyhow::Result<bool> {
        let db = self.inner.db.lock().unwrap_or_else(PoisonError::into_inner);
        let version = data_version(&db)?;
        if self.inner.data_version.load(Ordering::Relaxed) == version {
            return Ok(false);
        }
        let bans = load_bans(&db, unix_now())?;
        let active = bans.len();
        *self
            .inner
            .bans
            .write()
            .unwrap_or_else(PoisonError::into_inner) = bans;
        self.inner.data_version.store(version, Ordering::Relaxed);
        tracing::info!(active_bans = active, "bans reloaded (the database changed)");
        Ok(true)
    }

    /// Until `shutdown`, looks every `every` for bans changed by another process; after a
    /// change, the matchmaker closes the sessions of every address that is now banned.
    pub async fn watch(
        self,
        every: Duration,
        matchmaker: MatchmakerHandle,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let this = self.clone();
            match tokio::task::spawn_blocking(move || this.reload_if_changed()).await {
                Ok(Ok(true)) => {
                    if !matchmaker.send(Command::BansChanged).await {
                        break;
                    }
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!("could not look for ban changes: {e:#}"),
                Err(e) => tracing::warn!("ban watcher task failed: {e}"),
            }
        }
    }
}

/// One row of the `bans` table, as the operator's commands show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanRecord {
    /// An address or a CIDR range (as stored; normally [`BanTarget`]'s text).
    pub address: String,
    pub reason: String,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds; the ban is over from then on.
    pub expires: i64,
}

/// One row of the `reports` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportRecord {
    /// Unix seconds.
    pub at: i64,
    pub match_id: String,
    pub reporter_ip: String,
    pub reporter_session: String,
    pub reported_ip: String,
    pub reported_session: String,
    pub reason: String,
}

/// The operator's side of the database (`peer-stream-server bans …` / `reports …`): opens
/// an existing file only, and works next to a running server on the same file.
pub struct ModerationDb {
    db: Connection,
}

impl ModerationDb {
    /// Opens the database at `path`; an error (and no new file) when it does not exist.
    pub fn open_existing(path: &Path) -> anyhow::Result<Self> {
        if !path.is_file() {
            anyhow::bail!(
                "the database {} does not exist (the server creates it on its first start; \
                 pass the server's file with --db, PEER_STREAM_DB or the config file's db key)",
                path.display()
            );
        }
        // No SQLITE_OPEN_CREATE: a file removed meanwhile is an error, not a new empty one.
        let db = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening the database {}", path.display()))?;
        let ours: bool = db
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'bans')",
                [],
                |r| r.get(0),
            )
            .with_context(|| format!("reading the database {}", path.display()))?;
        if !ours {
            anyhow::bail!(
                "{} is not a Peer Stream database (it has no bans table)",
                path.display()
            );
        }
        prepare(&db, path)?;
        Ok(Self { db })
    }

    /// Bans in force now (or every row, with `include_expired`), oldest first.
    pub fn bans(&self, include_expired: bool) -> anyhow::Result<Vec<BanRecord>> {
        let cutoff = if include_expired {
            i64::MIN
        } else {
            unix_now()
        };
        let mut stmt = self.db.prepare(
            "SELECT ip, reason, created_at, until FROM bans WHERE until > ?1
             ORDER BY created_at, rowid",
        )?;
        let rows = stmt.query_map([cutoff], |r| {
            Ok(BanRecord {
                address: r.get(0)?,
                reason: r.get(1)?,
                created: r.get(2)?,
                expires: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Bans `target` for `duration` from now, replacing an earlier ban on the same target.
    pub fn add_ban(
        &self,
        target: BanTarget,
        duration: Duration,
        reason: &str,
    ) -> anyhow::Result<BanRecord> {
        let now = unix_now();
        let record = BanRecord {
            address: target.to_string(),
            reason: reason.to_owned(),
            created: now,
            expires: now.saturating_add(secs(duration)),
        };
        self.db.execute(
            "INSERT INTO bans (ip, until, reason, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(ip) DO UPDATE SET until = excluded.until, reason = excluded.reason,
                 created_at = excluded.created_at",
            params![
                record.address,
                record.expires,
                record.reason,
                record.created
            ],
        )?;
        Ok(record)
    }

    /// Deletes the ban on exactly `target` (also an expired one); the removed rows.
    pub fn remove_ban(&self, target: BanTarget) -> anyhow::Result<Vec<BanRecord>> {
        let removed: Vec<BanRecord> = self
            .bans(true)?
            .into_iter()
            .filter(|b| b.address.parse::<BanTarget>().ok() == Some(target))
            .collect();
        for b in &removed {
            self.db
                .execute("DELETE FROM bans WHERE ip = ?1", [&b.address])?;
        }
        Ok(removed)
    }

    /// Reports, oldest first; only those of the last `since` when given.
    pub fn reports(&self, since: Option<Duration>) -> anyhow::Result<Vec<ReportRecord>> {
        let cutoff = since.map_or(i64::MIN, |d| unix_now().saturating_sub(secs(d)));
        let mut stmt = self.db.prepare(
            "SELECT created_at, match_id, reporter_ip, reporter_session, reported_ip,
                    reported_session, reason
             FROM reports WHERE created_at >= ?1 ORDER BY created_at, id",
        )?;
        let rows = stmt.query_map([cutoff], |r| {
            Ok(ReportRecord {
                at: r.get(0)?,
                match_id: r.get(1)?,
                reporter_ip: r.get(2)?,
                reporter_session: r.get(3)?,
                reported_ip: r.get(4)?,
                reported_session: r.get(5)?,
                reason: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(reporter: &str, reporter_ip: &str, reported_ip: &str) -> Report {
        Report {
            reporter_session: reporter.into(),
            reporter_ip: reporter_ip.parse().expect("ip"),
            reported_session: "bad".into(),
            reported_ip: reported_ip.parse().expect("ip"),
            match_id: "m".into(),
            reason: "spam".into(),
        }
    }

    #[test]
    fn distinct_reporters_ban_and_the_ban_persists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mod.sqlite3");
        let day = Duration::from_secs(86_400);
        let m = Moderation::open(&path, 2, day, day).expect("open");
        let bad: IpAddr = "10.9.9.9".parse().expect("ip");
        assert!(!m
            .record_report(&report("r1", "10.0.0.1", "10.9.9.9"))
            .expect("r1"));
        // The same reporter twice still counts once.
        assert!(!m
            .record_report(&report("r1", "10.0.0.1", "10.9.9.9"))
            .expect("r1 again"));
        assert!(!m.is_banned(bad));
        assert!(m
            .record_report(&report("r2", "10.0.0.2", "10.9.9.9"))
            .expect("r2"));
        assert!(m.is_banned(bad));
        drop(m);
        let again = Moderation::open(&path, 2, day, day).expect("reopen");
        assert!(again.is_banned(bad));
        assert!(!again.is_banned("10.0.0.1".parse().expect("ip")));
    }
}

#[cfg(test)]
mod target_tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn target(s: &str) -> BanTarget {
        s.parse().expect("target")
    }

    #[test]
    fn targets_parse_normalize_and_match() {
        assert_eq!(target("203.0.113.7").to_string(), "203.0.113.7");
        assert_eq!(target(" 203.0.113.7/24 ").to_string(), "203.0.113.0/24");
        assert_eq!(target("203.0.113.7/32").to_string(), "203.0.113.7");
        assert_eq!(target("2001:db8::1/32").to_string(), "2001:db8::/32");
        assert_eq!(target("2001:db8::1/128").to_string(), "2001:db8::1");
        assert_eq!(target("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(target("::ffff:192.0.2.1").to_string(), "192.0.2.1");
        assert_eq!(target("::ffff:192.0.2.0/120").to_string(), "192.0.2.0/24");
        for bad in [
            "",
            "nope",
            "300.1.1.1",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
            "2001:db8::/129",
            "/24",
        ] {
            assert!(
                bad.parse::<BanTarget>().is_err(),
                "{bad:?} should be rejected"
            );
        }
        let range = target("203.0.113.0/24");
        assert!(range.contains(ip("203.0.113.0")));
        assert!(range.contains(ip("203.0.113.255")));
        assert!(range.contains(ip("::ffff:203.0.113.9")));
        assert!(!range.contains(ip("203.0.114.0")));
        assert!(!range.contains(ip("2001:db8::1")));
        assert!(target("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(!target("0.0.0.0/0").contains(ip("::1")));
        let v6 = target("2001:db8::/32");
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(target("::/0").contains(ip("::1")));
    }

    #[test]
    fn the_mirror_covers_addresses_and_ranges_until_they_expire() {
        let mut bans = Bans::default();
        bans.insert(target("10.0.0.1"), 100);
        bans.insert(target("192.0.2.0/24"), 200);
        bans.insert(target("192.0.2.0/24"), 300); // replaces, not duplicates
        assert_eq!(bans.len(), 2);
        assert!(bans.covers(ip("10.0.0.1"), 99));
        assert!(!bans.covers(ip("10.0.0.1"), 100));
        assert!(bans.covers(ip("::ffff:10.0.0.1"), 50));
        assert!(bans.covers(ip("192.0.2.77"), 299));
        assert!(!bans.covers(ip("192.0.2.77"), 300));
        assert!(!bans.covers(ip("192.0.3.1"), 0));
    }

    #[test]
    fn bans_written_by_another_connection_are_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mod.sqlite3");
        let day = Duration::from_secs(86_400);
        let server = Moderation::open(&path, 0, day, day).expect("open");
        assert!(!server.reload_if_changed().expect("no change yet"));
        let admin = ModerationDb::open_existing(&path).expect("admin");
        admin
            .add_ban(target("198.51.100.0/24"), day, "range")
            .expect("add");
        assert!(
            !server.is_banned(ip("198.51.100.3")),
            "not before the reload"
        );
        assert!(server.reload_if_changed().expect("reload"));
        assert!(server.is_banned(ip("198.51.100.3")));
        assert!(!server.reload_if_changed().expect("nothing new"));
        let removed = admin.remove_ban(target("198.51.100.9/24")).expect("remove");
        assert_eq!(removed.len(), 1);
        assert!(server.reload_if_changed().expect("reload"));
        assert!(!server.is_banned(ip("198.51.100.3")));
        assert!(admin
            .remove_ban(target("198.51.100.0/24"))
            .expect("remove again")
            .is_empty());
    }

    #[test]
    fn a_missing_file_is_not_created_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.sqlite3");
        let err = ModerationDb::open_existing(&missing)
            .err()
            .expect("must fail");
        assert!(err.to_string().contains("does not exist"), "{err:#}");
        assert!(!missing.exists());

        let newer = dir.path().join("newer.sqlite3");
        Connection::open(&newer)
            .and_then(|c| {
                c.execute_batch(
                    "CREATE TABLE bans (ip TEXT PRIMARY KEY, until INTEGER NOT NULL,
                         reason TEXT NOT NULL, created_at INTEGER NOT NULL);
                     PRAGMA user_version = 99;",
                )
            })
            .expect("make a newer file");
        let err = ModerationDb::open_existing(&newer)
            .err()
            .expect("must fail");
        assert!(format!("{err:#}").contains("schema version 99"), "{err:#}");
        let day = Duration::from_secs(86_400);
        assert!(Moderation::open(&newer, 0, day, day).is_err());
    }
}
