//! `peer-stream-server config`: the effective settings as TOML that can be pasted back
//! into a `--config` file, each line commented with where its value came from. Secrets
//! (the TURN secret, passwords inside URLs) are replaced by `***`.

use super::file::{kind, settable, Kind};
use super::{Parsed, Source};
use clap::Command;

const REDACTED: &str = "***";

/// A TOML basic string (JSON's escaping is a subset of TOML's).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{}\"", s.escape_default()))
}

/// Whether a flag holds a secret as a whole.
fn is_secret(cmd: &Command, id: &str) -> bool {
    cmd.get_arguments()
        .find(|a| a.get_id() == id)
        .is_some_and(|a| {
            let long = a.get_long().unwrap_or_default();
            a.is_hide_env_values_set()
                || ["secret", "password", "token"]
                    .iter()
                    .any(|w| long.contains(w))
        })
}

/// Replaces the password of a URL's userinfo: `turn:user:pass@host` →
/// `turn:user:***@host`, `redis://:pass@host/0` → `redis://:***@host/0`.
pub fn redact_url(value: &str) -> String {
    redact_query(&redact_userinfo(value))
}

/// Query parameters that carry a secret (`?password=…`, `&credential=…`) become `***`.
fn redact_query(value: &str) -> String {
    let Some((head, query)) = value.split_once('?') else {
        return value.to_owned();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let params: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _))
                if ["password", "pass", "pwd", "credential", "secret", "token"]
                    .contains(&key.to_ascii_lowercase().as_str()) =>
            {
                format!("{key}={REDACTED}")
            }
            _ => pair.to_owned(),
        })
        .collect();
    let mut out = format!("{head}?{}", params.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

fn redact_userinfo(value: &str) -> String {
    let Some(colon) = value.find(':') else {
        return value.to_owned();
    };
    let scheme = &value[..colon];
    let scheme_ok = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return value.to_owned();
    }
    let rest = &value[colon + 1..];
    let (slashes, after) = match rest.strip_prefix("//") {
        Some(a) => ("//", a),
        None => ("", rest),
    };
    let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let authority = &after[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return value.to_owned();
    };
    let userinfo = &authority[..at];
    let Some(pw) = userinfo.find(':') else {
        return value.to_owned();
    };
    format!(
        "{scheme}:{slashes}{}:{REDACTED}{}",
        &userinfo[..pw],
        &after[at..]
    )
}

fn source_note(source: &Source) -> String {
    match source {
        Source::Default => "default".to_owned(),
        Source::File => "config file".to_owned(),
        Source::Env(var) => format!("environment {var}"),
        Source::Flag => "command line".to_owned(),
        Source::Unset => "not set".to_owned(),
    }
}

/// The effective configuration as TOML.
pub fn render(parsed: &Parsed, cmd: &Command) -> String {
    let mut lines: Vec<(String, String)> = Vec::new();
    for arg in settable(cmd) {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else { continue };
        let secret = is_secret(cmd, id);
        let raw: Vec<String> = parsed
            .matches
            .get_raw(id)
            .map(|vals| {
                vals.map(|v| v.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let text = |v: &str| {
            if secret {
                quoted(REDACTED)
            } else {
                quoted(&redact_url(v))
            }
        };
        let line = match kind(arg) {
            Kind::Switch => {
                let on = parsed.matches.get_flag(id);
                format!("{long} = {on}")
            }
            Kind::List => {
                let items: Vec<String> = raw.iter().map(|v| text(v)).collect();
                format!("{long} = [{}]", items.join(", "))
            }
            Kind::Integer => match raw.first() {
                // Normalized: clap accepts `007` or `+5`, TOML wants `7` and `5`.
                Some(n) => match n.parse::<i128>() {
                    Ok(v) => format!("{long} = {v}"),
                    Err(_) => format!("{long} = {}", quoted(n)),
                },
                None => format!("# {long} = (not set)"),
            },
            Kind::Text => match raw.first() {
                Some(v) => format!("{long} = {}", text(v)),
                None => format!("# {long} = (not set)"),
            },
        };
        lines.push((line, source_note(&parsed.source(cmd, id))));
    }
    let width = lines.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let mut out = format!(
        "# Effective configuration of peer-stream-server {} (flag > environment > file > default).\n\
         # Secrets are shown as {REDACTED}: put the real ones back before using this as a file.\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(path) = parsed.cli.config.as_ref() {
        out.push_str(&format!("# Configuration file: {}\n", path.display()));
    }
    for (line, note) in lines {
        out.push_str(&format!("{line:<width$}  # {note}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_redacted() {
        assert_eq!(
            redact_url("turn:user:pass@turn.example.org:3478?transport=udp"),
            "turn:user:***@turn.example.org:3478?transport=udp"
        );
        assert_eq!(
            redact_url("redis://:hunter2@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("https://a:b@example.org/x@y"),
            "https://a:***@example.org/x@y"
        );
        for same in [
            "stun:stun.example.org:3478",
            "turn:user@turn.example.org",
            "https://example.org",
            "0.0.0.0:3000",
            "/var/lib/peer-stream/db.sqlite3",
            "info",
        ] {
            assert_eq!(redact_url(same), same);
        }
    }
}
