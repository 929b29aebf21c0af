//! Running the real `peer-stream-server` binary for the command-line tests: a clean
//! environment (no PEER_STREAM_* from the caller), captured output, a temp directory.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_peer-stream-server");

/// The binary with an environment free of PEER_STREAM_* variables.
pub fn server_cmd() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PEER_STREAM_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd
}

/// What a run printed and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code,
            Some(0),
            "expected success; stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// A clean failure: the given exit code, no panic, nothing on stdout.
    pub fn fails_with(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit code {code}; stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        assert!(
            !self.stderr.contains("panicked"),
            "the binary panicked:\n{}",
            self.stderr
        );
        assert!(
            self.stdout.trim().is_empty(),
            "nothing should go to stdout on failure; got:\n{}",
            self.stdout
        );
        self
    }

    pub fn stderr_has(&self, part: &str) -> &Self {
        assert!(
            self.stderr.contains(part),
            "stderr should contain {part:?}; got:\n{}",
            self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

pub fn run(mut cmd: Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
    Run {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Runs the binary with `args` (clean environment).
pub fn run_args(args: &[&str]) -> Run {
    let mut cmd = server_cmd();
    cmd.args(args);
    run(cmd)
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// One line of `peer-stream-server config`: the TOML value as text and the source note.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    pub value: String,
    pub source: String,
}

/// Parses the output of `config` into key → (value, source); checks it is valid TOML.
pub fn parse_shown(stdout: &str) -> BTreeMap<String, Shown> {
    stdout
        .parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("`config` output is not valid TOML ({e}):\n{stdout}"));
    let mut map = BTreeMap::new();
    for line in stdout.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            // "# tls-cert = (not set)  # not set"
            if let Some(rest) = line.strip_prefix("# ") {
                if let Some((key, _)) = rest.split_once(" = (not set)") {
                    map.insert(
                        key.to_owned(),
                        Shown {
                            value: "(not set)".to_owned(),
                            source: "not set".to_owned(),
                        },
                    );
                }
            }
            continue;
        }
        let (key, rest) = line
            .split_once(" = ")
            .unwrap_or_else(|| panic!("unexpected line in `config` output: {line:?}"));
        let (value, source) = rest
            .rsplit_once("  # ")
            .unwrap_or_else(|| panic!("no source comment on line {line:?}"));
        map.insert(
            key.to_owned(),
            Shown {
                value: value.trim().to_owned(),
                source: source.trim().to_owned(),
            },
        );
    }
    map
}

/// `config` with `args` before it, parsed.
pub fn shown_config(cmd: Command) -> BTreeMap<String, Shown> {
    let r = run(cmd);
    r.ok();
    parse_shown(&r.stdout)
}

/// Unix seconds of an RFC 3339 UTC timestamp `YYYY-MM-DDTHH:MM:SSZ` (the moderation
/// commands' format), or a panic naming the text.
pub fn unix_of(ts: &str) -> i64 {
    let b = ts.as_bytes();
    let well_formed = ts.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z';
    assert!(well_formed, "not an RFC 3339 UTC timestamp: {ts:?}");
    let n = |r: std::ops::Range<usize>| -> i64 {
        ts[r.clone()]
            .parse()
            .unwrap_or_else(|_| panic!("bad number in {ts:?}"))
    };
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // days_from_civil (Howard Hinnant)
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
