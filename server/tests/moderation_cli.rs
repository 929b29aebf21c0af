//! The operator's moderation commands (`reports list`, `bans list|add|remove`) on the
//! server's SQLite file: table and JSON output, a missing file refused, bad input
//! rejected, old databases upgraded in place, CIDR bans enforced, and a running server
//! applying bans from another process within 5 s.
#![allow(clippy::unwrap_used)]

mod cli_support;
mod common;

use cli_support::*;
use common::*;
use peer_stream_server::moderation::{Moderation, Report};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// How long a running server may take to apply a ban change made by the CLI.
const APPLY_WITHIN: Duration = Duration::from_secs(5);

const DAY: Duration = Duration::from_secs(86_400);

/// A database made by the server's own code, with three reports in it.
fn db_with_reports(dir: &Path) -> PathBuf {
    let path = dir.join("peer-stream.sqlite3");
    let m = Moderation::open(&path, 0, DAY, DAY).unwrap();
    for (i, (reporter, reported, reason)) in [
        ("10.0.0.1", "10.9.9.9", "spam"),
        ("10.0.0.2", "10.9.9.9", "abuse"),
        ("10.0.0.3", "2001:db8::7", "rude\nwith a newline"),
    ]
    .into_iter()
    .enumerate()
    {
        m.record_report(&Report {
            reporter_session: format!("session-r{i}"),
            reporter_ip: reporter.parse().unwrap(),
            reported_session: format!("session-x{i}"),
            reported_ip: reported.parse().unwrap(),
            match_id: format!("match-{i}"),
            reason: reason.to_owned(),
        })
        .unwrap();
    }
    drop(m);
    path
}

fn cli(db: &Path, args: &[&str]) -> Run {
    let mut cmd = server_cmd();
    cmd.args(args).arg("--db").arg(db);
    run(cmd)
}

fn bans_json(db: &Path) -> Vec<Value> {
    let r = cli(db, &["bans", "list", "--json"]);
    r.ok();
    r.json().as_array().unwrap().clone()
}

fn addresses(bans: &[Value]) -> Vec<String> {
    bans.iter()
        .map(|b| b["address"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn subcommands_refuse_a_database_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sqlite3");
    for args in [
        vec!["reports", "list"],
        vec!["bans", "list"],
        vec!["bans", "add", "203.0.113.9", "--for", "1h"],
        vec!["bans", "remove", "203.0.113.9"],
    ] {
        let r = cli(&missing, &args);
        r.fails_with(1).stderr_has(&format!(
            "the database {} does not exist",
            missing.display()
        ));
    }
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "no file may be created"
    );
    // A file that is not the server's database is left alone.
    let text = write_file(
        dir.path(),
        "notes.txt",
        "not a database at all, just some text\n",
    );
    cli(&text, &["bans", "list"])
        .fails_with(1)
        .stderr_has("notes.txt");
    let empty = write_file(dir.path(), "empty.sqlite3", "");
    cli(&empty, &["bans", "add", "192.0.2.1", "--for", "1h"])
        .fails_with(1)
        .stderr_has("is not a Peer Stream database");
    assert_eq!(
        std::fs::metadata(&empty).unwrap().len(),
        0,
        "nothing written"
    );
}

#[test]
fn reports_list_as_table_and_json_with_since() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_with_reports(dir.path());
    // One old report, written directly with an old timestamp.
    let old = unix_now() - 2 * 86_400;
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "INSERT INTO reports (created_at, reporter_session, reporter_ip, reported_session,
                 reported_ip, match_id, reason)
             VALUES (?1, 'old-r', '10.1.1.1', 'old-x', '10.2.2.2', 'match-old', 'long ago')",
            [old],
        )
        .unwrap();

    let r = cli(&db, &["reports", "list", "--json"]);
    r.ok();
    let all = r.json();
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 4, "{all:?}");
    // Oldest first.
    assert_eq!(all[0]["match_id"], "match-old");
    let first_new = &all[1];
    let keys: Vec<&String> = first_new.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["match_id", "reporter", "reported", "reason", "at"]);
    assert_eq!(first_new["match_id"], "match-0");
    assert_eq!(first_new["reporter"], "10.0.0.1");
    assert_eq!(first_new["reported"], "10.9.9.9");
    assert_eq!(first_new["reason"], "spam");
    assert_eq!(all[3]["reported"], "2001:db8::7");
    assert_eq!(all[3]["reason"], "rude\nwith a newline");
    let at = unix_of(first_new["at"].as_str().unwrap());
    assert!((at - unix_now()).abs() < 600, "at {at} is not about now");
    assert_eq!(unix_of(all[0]["at"].as_str().unwrap()), old);

    let r = cli(&db, &["reports", "list", "--since", "24h", "--json"]);
    r.ok();
    let recent: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["match_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recent, ["match-0", "match-1", "match-2"]);

    let r = cli(&db, &["reports", "list", "--since", "24h"]);
    r.ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "header + 3 rows:\n{}", r.stdout);
    for col in ["AT", "MATCH_ID", "REPORTER", "REPORTED", "REASON"] {
        assert!(lines[0].contains(col), "header {:?}", lines[0]);
    }
    assert!(
        lines[1].contains("match-0") && lines[1].contains("10.9.9.9") && lines[1].ends_with("spam")
    );
    assert!(lines[3].ends_with("rude with a newline"), "{:?}", lines[3]);

    let r = cli(&db, &["reports", "list", "--since", "30m"]);
    r.ok();
    assert_eq!(r.stdout.lines().count(), 4);
    // An empty list is an empty array.
    let empty_dir = tempfile::tempdir().unwrap();
    let empty = empty_dir.path().join("e.sqlite3");
    drop(Moderation::open(&empty, 0, DAY, DAY).unwrap());
    let r = cli(&empty, &["reports", "list", "--json"]);
    r.ok();
    assert_eq!(r.json(), serde_json::json!([]));
}

#[test]
fn bans_add_list_remove_in_table_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_with_reports(dir.path());
    assert!(bans_json(&db).is_empty());

    let r = cli(
        &db,
        &[
            "bans",
            "add",
            "203.0.113.77/24",
            "--for",
            "7d",
            "--reason",
            "spam wave",
            "--json",
        ],
    );
    r.ok();
    let added = r.json();
    let added = added.as_array().unwrap();
    assert_eq!(added.len(), 1);
    // Host bits of a range are cleared.
    assert_eq!(added[0]["address"], "203.0.113.0/24");
    assert_eq!(added[0]["reason"], "spam wave");
    let created = unix_of(added[0]["created"].as_str().unwrap());
    let expires = unix_of(added[0]["expires"].as_str().unwrap());
    assert_eq!(expires - created, 7 * 86_400);
    assert!((created - unix_now()).abs() < 600);

    let r = cli(&db, &["bans", "add", "2001:db8::/32", "--for", "12h"]);
    r.ok();
    assert!(
        r.stdout.lines().next().unwrap().starts_with("ADDRESS"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("2001:db8::/32"), "{}", r.stdout);
    assert!(r.stdout.contains("banned by the operator"), "{}", r.stdout);
    cli(
        &db,
        &[
            "bans",
            "add",
            "198.51.100.7",
            "--for",
            "30m",
            "--reason",
            "r",
        ],
    )
    .ok();
    cli(&db, &["bans", "add", "192.0.2.1", "--for", "90s"]).ok();
    // Without --for: the server's ban duration (default 7 days), here from the flag.
    cli(
        &db,
        &["bans", "add", "192.0.2.2", "--ban-duration-secs", "3600"],
    )
    .fails_with(2);
    let mut cmd = server_cmd();
    cmd.env("PEER_STREAM_BAN_DURATION", "3600")
        .args(["bans", "add", "192.0.2.2", "--json", "--db"])
        .arg(&db);
    let r = run(cmd);
    r.ok();
    let b = &r.json()[0];
    assert_eq!(
        unix_of(b["expires"].as_str().unwrap()) - unix_of(b["created"].as_str().unwrap()),
        3600
    );

    let bans = bans_json(&db);
    assert_eq!(
        addresses(&bans),
        [
            "203.0.113.0/24",
            "2001:db8::/32",
            "198.51.100.7",
            "192.0.2.1",
            "192.0.2.2"
        ]
    );
    let span = |b: &Value| {
        unix_of(b["expires"].as_str().unwrap()) - unix_of(b["created"].as_str().unwrap())
    };
    assert_eq!(span(&bans[1]), 12 * 3600);
    assert_eq!(span(&bans[2]), 30 * 60);
    assert_eq!(span(&bans[3]), 90);
    for b in &bans {
        let keys: Vec<&String> = b.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["address", "reason", "created", "expires"]);
    }

    let r = cli(&db, &["bans", "list"]);
    r.ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{}", r.stdout);
    for col in ["ADDRESS", "CREATED", "EXPIRES", "REASON"] {
        assert!(lines[0].contains(col));
    }
    assert!(lines[1].starts_with("203.0.113.0/24") && lines[1].ends_with("spam wave"));

    // Adding again replaces the ban.
    cli(
        &db,
        &[
            "bans",
            "add",
            "198.51.100.7",
            "--for",
            "1d",
            "--reason",
            "again",
        ],
    )
    .ok();
    let bans = bans_json(&db);
    assert_eq!(bans.len(), 5);
    let again = bans
        .iter()
        .find(|b| b["address"] == "198.51.100.7")
        .unwrap();
    assert_eq!(again["reason"], "again");
    assert_eq!(span(again), 86_400);

    // Remove: JSON of the removed ban, gone from the list, a second remove fails.
    let r = cli(&db, &["bans", "remove", "203.0.113.0/24", "--json"]);
    r.ok();
    assert_eq!(r.json()[0]["address"], "203.0.113.0/24");
    assert_eq!(r.json()[0]["reason"], "spam wave");
    let r = cli(&db, &["bans", "remove", "2001:db8::/32"]);
    r.ok();
    assert!(r.stdout.contains("2001:db8::/32") && r.stdout.starts_with("ADDRESS"));
    // (Re-adding 198.51.100.7 renewed its `created`, which may have moved it to the end.)
    let mut left = addresses(&bans_json(&db));
    left.sort();
    assert_eq!(left, ["192.0.2.1", "192.0.2.2", "198.51.100.7"]);
    cli(&db, &["bans", "remove", "203.0.113.0/24"])
        .fails_with(1)
        .stderr_has("there is no ban on 203.0.113.0/24");
    // An address inside a banned range: the error names the range.
    cli(&db, &["bans", "add", "100.64.0.0/10", "--for", "1h"]).ok();
    cli(&db, &["bans", "remove", "100.64.1.2"])
        .fails_with(1)
        .stderr_has("inside the banned range 100.64.0.0/10");

    // Expired bans only with --all.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "INSERT INTO bans (ip, until, reason, created_at) VALUES ('192.0.2.200', ?1, 'old', ?2)",
            [unix_now() - 10, unix_now() - 100],
        )
        .unwrap();
    assert!(!addresses(&bans_json(&db)).contains(&"192.0.2.200".to_owned()));
    let r = cli(&db, &["bans", "list", "--all", "--json"]);
    r.ok();
    let all = r.json();
    assert!(addresses(all.as_array().unwrap()).contains(&"192.0.2.200".to_owned()));
}

#[test]
fn db_and_config_are_global_and_come_from_env_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_with_reports(dir.path());
    let db_s = db.to_str().unwrap();
    cli(&db, &["bans", "add", "192.0.2.50", "--for", "1h"]).ok();
    let expect_one = |r: Run| {
        r.ok();
        assert_eq!(addresses(r.json().as_array().unwrap()), ["192.0.2.50"]);
    };
    // --db before the subcommand, between, after
    expect_one(run_args(&["--db", db_s, "bans", "list", "--json"]));
    expect_one(run_args(&["bans", "--db", db_s, "list", "--json"]));
    expect_one(run_args(&["bans", "list", "--json", "--db", db_s]));
    // from the environment
    let mut cmd = server_cmd();
    cmd.env("PEER_STREAM_DB", &db)
        .args(["bans", "list", "--json"]);
    expect_one(run(cmd));
    // from the config file, with --config before or after the subcommand
    let file = write_file(dir.path(), "c.toml", &format!("db = {:?}\n", db_s));
    let f = file.to_str().unwrap();
    expect_one(run_args(&["--config", f, "bans", "list", "--json"]));
    expect_one(run_args(&["bans", "list", "--json", "--config", f]));
    // a flag beats the file
    let other = dir.path().join("other.sqlite3");
    run_args(&[
        "bans",
        "list",
        "--config",
        f,
        "--db",
        other.to_str().unwrap(),
    ])
    .fails_with(1)
    .stderr_has("other.sqlite3 does not exist");
    // a bad config file stops the subcommand too
    let bad = write_file(dir.path(), "bad.toml", "db = 5\n");
    run_args(&["bans", "list", "--config", bad.to_str().unwrap()])
        .fails_with(2)
        .stderr_has("bad.toml:1: \"db\" takes a string");
}

#[test]
fn bad_addresses_and_durations_are_rejected_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_with_reports(dir.path());
    let cases: &[(&[&str], &str)] = &[
        (
            &["bans", "add", "300.1.1.1", "--for", "1h"],
            "is not an IP address or a CIDR range",
        ),
        (
            &["bans", "add", "nope", "--for", "1h"],
            "is not an IP address or a CIDR range",
        ),
        (
            &["bans", "add", "10.0.0.0/33", "--for", "1h"],
            "prefix length after '/' must be a number from 0 to 32",
        ),
        (
            &["bans", "add", "2001:db8::/129", "--for", "1h"],
            "from 0 to 128",
        ),
        (
            &["bans", "add", "10.0.0.0/x", "--for", "1h"],
            "prefix length",
        ),
        (
            &["bans", "add", "10.0.0.1", "--for", "7w"],
            "is not a duration",
        ),
        (
            &["bans", "add", "10.0.0.1", "--for", "1.5h"],
            "is not a duration",
        ),
        (
            &["bans", "add", "10.0.0.1", "--for", "d"],
            "is not a duration",
        ),
        (
            &["bans", "add", "10.0.0.1", "--for=-3d"],
            "is not a duration",
        ),
        (
            &["bans", "add", "10.0.0.1", "--for", "0m"],
            "must be more than zero",
        ),
        (
            &["bans", "add", "10.0.0.1", "--for", "99999999999d"],
            "too long",
        ),
        (&["bans", "add", "--for", "1h"], "ADDRESS"),
        (&["bans", "remove", "10.0.0.256"], "is not an IP address"),
        (
            &["reports", "list", "--since", "yesterday"],
            "is not a duration",
        ),
    ];
    for (args, part) in cases {
        let r = cli(&db, args);
        r.fails_with(2).stderr_has(part);
    }
    // No --for and a server ban duration of 0: refused rather than a ban that never holds.
    let mut cmd = server_cmd();
    cmd.env("PEER_STREAM_BAN_DURATION", "0")
        .args(["bans", "add", "10.0.0.1", "--db"])
        .arg(&db);
    run(cmd)
        .fails_with(1)
        .stderr_has("the ban would end at once: give --for");
    assert!(bans_json(&db).is_empty(), "nothing may have been added");
}

/// The exact schema of release 0.1.0 (no user_version), with one ban and one report.
fn legacy_db(dir: &Path) -> PathBuf {
    let path = dir.join("peer-stream.sqlite3");
    let db = rusqlite::Connection::open(&path).unwrap();
    let now = unix_now();
    db.execute_batch(
        "CREATE TABLE reports (
             id INTEGER PRIMARY KEY,
             created_at INTEGER NOT NULL,
             reporter_session TEXT NOT NULL,
             reporter_ip TEXT NOT NULL,
             reported_session TEXT NOT NULL,
             reported_ip TEXT NOT NULL,
             match_id TEXT NOT NULL,
             reason TEXT NOT NULL
         );
         CREATE INDEX reports_by_ip ON reports (reported_ip, created_at);
         CREATE TABLE bans (
             ip TEXT PRIMARY KEY,
             until INTEGER NOT NULL,
             reason TEXT NOT NULL,
             created_at INTEGER NOT NULL
         );",
    )
    .unwrap();
    db.execute(
        "INSERT INTO bans VALUES ('127.0.0.9', ?1, 'reported by 3 sessions', ?2)",
        [now + 86_400, now - 60],
    )
    .unwrap();
    db.execute(
        "INSERT INTO reports (created_at, reporter_session, reporter_ip, reported_session,
             reported_ip, match_id, reason)
         VALUES (?1, 'a', '127.0.0.2', 'b', '127.0.0.9', 'm-legacy', 'spam')",
        [now - 120],
    )
    .unwrap();
    path
}

fn user_version(db: &Path) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn a_database_of_the_previous_release_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let db = legacy_db(dir.path());
    assert_eq!(user_version(&db), 0);
    let r = cli(&db, &["bans", "list", "--json"]);
    r.ok();
    assert_eq!(addresses(r.json().as_array().unwrap()), ["127.0.0.9"]);
    assert_eq!(r.json()[0]["reason"], "reported by 3 sessions");
    let r = cli(&db, &["reports", "list", "--json"]);
    r.ok();
    assert_eq!(r.json()[0]["match_id"], "m-legacy");
    assert_eq!(user_version(&db), 1, "upgraded in place");
    // A range ban next to the old single-address ban; the server enforces both.
    cli(&db, &["bans", "add", "127.0.5.0/24", "--for", "1h"]).ok();
    let server = spawn_server_in(test_config(), dir).await;
    assert_eq!(server.db_path, db);
    assert!(connect_outcome(server.addr, [127, 0, 0, 9]).await.is_err());
    assert!(connect_outcome(server.addr, [127, 0, 5, 200])
        .await
        .is_err());
    assert!(connect_outcome(server.addr, [127, 0, 6, 1]).await.is_ok());
    server.stop().await;
}

/// Connects from `ip` and says hello: `Ok` on welcome, `Err` with what happened when the
/// server refused with error `banned` and close 1008 (anything else fails the test).
async fn connect_outcome(addr: SocketAddr, ip: [u8; 4]) -> Result<(), String> {
    match ban_probe(addr, ip, Duration::from_millis(1500)).await {
        Ok(false) => Ok(()),
        Ok(true) => Err(format!("{ip:?} banned")),
        Err(e) => panic!("{ip:?}: {e}"),
    }
}

/// Expects `c` to get error `banned` and close 1008 within [`APPLY_WITHIN`] of `since`
/// (when the CLI had written the ban).
async fn expect_kicked(c: &mut TestClient, since: Instant) {
    let closed = c
        .recv_until_close(APPLY_WITHIN + Duration::from_secs(1))
        .await;
    assert!(
        closed.has_error("banned"),
        "expected error banned before the close: {closed:?}"
    );
    assert_eq!(closed.close_code, Some(1008), "{closed:?}");
    assert!(
        since.elapsed() <= APPLY_WITHIN,
        "the ban took {:?} to apply",
        since.elapsed()
    );
}

async fn cli_async(db: PathBuf, args: Vec<&'static str>) -> Run {
    tokio::task::spawn_blocking(move || cli(&db, &args))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_running_server_applies_cli_bans_on_ranges_and_lifts_them() {
    let server = spawn_server(test_config()).await;
    let db = server.db_path.clone();
    let mut inside = TestClient::connect_from(server.addr, [127, 0, 7, 1]).await;
    inside.hello().await;
    inside.join(&[]).await;
    let mut waiting = TestClient::connect_from(server.addr, [127, 0, 7, 2]).await;
    waiting.hello().await; // registered, not queued
    let mut outside = TestClient::connect_from(server.addr, [127, 0, 8, 1]).await;
    outside.hello().await;

    cli_async(
        db.clone(),
        vec!["bans", "add", "127.0.7.0/24", "--for", "1h"],
    )
    .await
    .ok();
    let t = Instant::now(); // the ban is in the file
    expect_kicked(&mut inside, t).await;
    expect_kicked(&mut waiting, t).await;
    outside.assert_alive().await;
    assert!(connect_outcome(server.addr, [127, 0, 7, 99]).await.is_err());

    cli_async(db.clone(), vec!["bans", "remove", "127.0.7.0/24"])
        .await
        .ok();
    let addr = server.addr;
    eventually(
        APPLY_WITHIN,
        "the lifted range ban to let 127.0.7.1 in",
        || async move { connect_outcome(addr, [127, 0, 7, 1]).await.is_ok() },
    )
    .await;
    outside.assert_alive().await;
    server.stop().await;
}

/// A `peer-stream-server` process, killed when dropped (also when the test fails).
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_server_binary_with_a_config_file_obeys_bans_added_and_removed_by_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state").join("peer-stream.sqlite3");
    let port = free_port();
    let file = write_file(
        dir.path(),
        "peer-stream-server.toml",
        &format!(
            "listen = \"127.0.0.1:{port}\"\n\
             db = {:?}\n\
             log = \"warn\"\n\
             max_conns_per_ip = 0\n\
             shutdown-grace-ms = 500\n",
            db.to_str().unwrap()
        ),
    );
    let mut cmd = server_cmd();
    cmd.arg("--config")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut process = ServerProcess(cmd.spawn().unwrap());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = process.0.try_wait().unwrap() {
            panic!("the server exited at startup: {status}");
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not listen on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(http_get(addr, "/healthz").await.status, 200);
    assert!(
        db.is_file(),
        "the server creates its database from the config file's db"
    );

    let mut c = TestClient::connect_from(addr, LOCALHOST).await;
    c.hello().await;
    c.join(&[]).await;
    let mut add = server_cmd();
    add.args([
        "bans",
        "add",
        "127.0.0.1",
        "--for",
        "10m",
        "--reason",
        "test",
        "--config",
    ])
    .arg(&file);
    tokio::task::spawn_blocking(move || run(add))
        .await
        .unwrap()
        .ok();
    let t = Instant::now(); // the ban is in the file
    expect_kicked(&mut c, t).await;
    assert!(connect_outcome(addr, LOCALHOST).await.is_err());

    let mut remove = server_cmd();
    remove
        .args(["bans", "remove", "127.0.0.1", "--config"])
        .arg(&file);
    tokio::task::spawn_blocking(move || run(remove))
        .await
        .unwrap()
        .ok();
    eventually(
        APPLY_WITHIN,
        "127.0.0.1 to be let in again",
        || async move { connect_outcome(addr, LOCALHOST).await.is_ok() },
    )
    .await;
    drop(process);
}
