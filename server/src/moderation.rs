//! Reports and bans, kept in a SQLite file so they survive restarts.
//!
//! Bans are by IP address: a session id lives only as long as its connection, so a ban on
//! it would end at the next reconnect. Active bans are mirrored in memory so that checking
//! a new connection never touches the disk.

use anyhow::Context;
use rusqlite::{params, Connection};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone)]
pub struct Moderation {
    inner: Arc<Inner>,
}

struct Inner {
    db: Mutex<Connection>,
    /// Banned address → unix time the ban ends.
    bans: RwLock<HashMap<IpAddr, i64>>,
    threshold: u32,
    window: Duration,
    duration: Duration,
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

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
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
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS reports (
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
        let now = unix_now();
        let mut bans = HashMap::new();
        {
            let mut stmt = db.prepare("SELECT ip, until FROM bans WHERE until > ?1")?;
            let rows =
                stmt.query_map([now], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (ip, until) = row?;
                match ip.parse::<IpAddr>() {
                    Ok(ip) => {
                        bans.insert(ip, until);
                    }
                    Err(_) => tracing::warn!(%ip, "ignoring a ban with an unreadable address"),
                }
            }
        }
        tracing::info!(path = %path.display(), active_bans = bans.len(), "moderation database open");
        Ok(Self {
            inner: Arc::new(Inner {
                db: Mutex::new(db),
                bans: RwLock::new(bans),
                threshold,
                window,
                duration,
            }),
        })
    }

    /// Whether `ip` is banned right now.
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        let bans = self
            .inner
            .bans
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        bans.get(&ip).is_some_and(|until| *until > unix_now())
    }

    /// Stores a report; returns true when it tipped the reported address into a ban.
    /// Blocking (SQLite): call from `spawn_blocking`.
    pub fn record_report(&self, report: &Report) -> anyhow::Result<bool> {
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
        if distinct < self.inner.threshold {
            return Ok(false);
        }
        let until = now.saturating_add(secs(self.inner.duration));
        db.execute(
            "INSERT INTO bans (ip, until, reason, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(ip) DO UPDATE SET until = excluded.until, reason = excluded.reason",
            params![
                report.reported_ip.to_string(),
                until,
                format!("reported by {distinct} sessions"),
                now
            ],
        )?;
        self.inner
            .bans
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(report.reported_ip, until);
        tracing::warn!(ip = %report.reported_ip, distinct, "address banned after reports");
        Ok(true)
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
