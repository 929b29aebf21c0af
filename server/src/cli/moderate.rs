//! `peer-stream-server reports list` and `bans list|add|remove`: the operator's view of
//! the moderation database, safe to use while the server runs on the same file.
//!
//! Output: a table, or with `--json` an array of objects. Timestamps are RFC 3339 strings
//! in UTC with whole seconds (`2026-12-02T03:45:00Z`).

use super::time::rfc3339;
use super::{BansCmd, ReportsCmd};
use anyhow::Context;
use peer_stream_server::matchmaker::cluster::redis::{share_ban_blocking, unshare_ban_blocking};
use peer_stream_server::moderation::{BanRecord, BanTarget, ModerationDb, ReportRecord, SharedBan};
use peer_stream_server::Config;
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;

/// A column-aligned table with a header row; control characters become spaces.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clean(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = w.saturating_sub(cell.chars().count());
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn ban_json(b: &BanRecord) -> Value {
    json!({
        "address": b.address,
        "reason": b.reason,
        "created": rfc3339(b.created),
        "expires": rfc3339(b.expires),
    })
}

fn report_json(r: &ReportRecord) -> Value {
    json!({
        "match_id": r.match_id,
        "reporter": r.reporter_ip,
        "reported": r.reported_ip,
        "reason": r.reason,
        "at": rfc3339(r.at),
    })
}

fn bans_output(bans: &[BanRecord], json: bool) -> anyhow::Result<String> {
    if json {
        let list: Vec<Value> = bans.iter().map(ban_json).collect();
        return Ok(format!("{}\n", serde_json::to_string_pretty(&list)?));
    }
    let rows: Vec<Vec<String>> = bans
        .iter()
        .map(|b| {
            vec![
                b.address.clone(),
                rfc3339(b.created),
                rfc3339(b.expires),
                b.reason.clone(),
            ]
        })
        .collect();
    Ok(table(&["ADDRESS", "CREATED", "EXPIRES", "REASON"], &rows))
}

fn reports_output(reports: &[ReportRecord], json: bool) -> anyhow::Result<String> {
    if json {
        let list: Vec<Value> = reports.iter().map(report_json).collect();
        return Ok(format!("{}\n", serde_json::to_string_pretty(&list)?));
    }
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            vec![
                rfc3339(r.at),
                r.match_id.clone(),
                r.reporter_ip.clone(),
                r.reported_ip.clone(),
                r.reason.clone(),
            ]
        })
        .collect();
    Ok(table(
        &["AT", "MATCH_ID", "REPORTER", "REPORTED", "REASON"],
        &rows,
    ))
}

fn write_out(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing to standard output")
}

pub fn reports(cmd: &ReportsCmd, config: &Config) -> anyhow::Result<()> {
    let db = ModerationDb::open_existing(&config.db_path)?;
    match cmd {
        ReportsCmd::List { since, json } => {
            let list = db.reports(*since)?;
            write_out(&reports_output(&list, *json)?)
        }
    }
}

pub fn bans(cmd: &BansCmd, config: &Config) -> anyhow::Result<()> {
    let db = ModerationDb::open_existing(&config.db_path)?;
    match cmd {
        BansCmd::List { all, json } => {
            let list = db.bans(*all)?;
            write_out(&bans_output(&list, *json)?)
        }
        BansCmd::Add {
            address,
            duration,
            reason,
            json,
        } => {
            let duration = duration.unwrap_or(Duration::from_secs(config.ban_duration_secs));
            if duration.is_zero() {
                anyhow::bail!("the ban would end at once: give --for (e.g. --for 7d)");
            }
            let ban = db.add_ban(*address, duration, reason)?;
            if let Some(url) = &config.redis {
                // A cluster: every node applies it within seconds (and keeps it in its file).
                let shared = SharedBan {
                    target: ban.address.clone(),
                    until: ban.expires,
                    reason: ban.reason.clone(),
                };
                share_ban_blocking(url, &shared)
                    .context("banned in this node's file, but not shared with the cluster")?;
            }
            write_out(&bans_output(&[ban], *json)?)
        }
        BansCmd::Remove { address, json } => {
            let removed = db.remove_ban(*address)?;
            if let Some(url) = &config.redis {
                unshare_ban_blocking(url, &address.to_string())
                    .context("lifted in this node's file, but not for the cluster")?;
            }
            if removed.is_empty() && config.redis.is_none() {
                let covering: Vec<String> = db
                    .bans(false)?
                    .into_iter()
                    .filter(|b| {
                        b.address.parse::<BanTarget>().is_ok_and(|t| {
                            !t.is_single() && address.is_single() && t.contains(address.network())
                        })
                    })
                    .map(|b| b.address)
                    .collect();
                if !covering.is_empty() {
                    anyhow::bail!(
                        "there is no ban on {address}; it is inside the banned range {} \
                         (remove that instead)",
                        covering.join(", ")
                    );
                }
                anyhow::bail!("there is no ban on {address}");
            }
            write_out(&bans_output(&removed, *json)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_clean_control_characters() {
        let t = table(
            &["A", "B", "C"],
            &[
                vec!["long value".into(), "x".into(), "line\nbreak".into()],
                vec!["s".into(), "yy".into(), String::new()],
            ],
        );
        assert_eq!(
            t,
            "A           B   C\nlong value  x   line break\ns           yy\n"
        );
    }
}
