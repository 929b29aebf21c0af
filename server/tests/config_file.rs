//! `--config FILE`: TOML keys named like the long flags (`-` or `_`), arrays for lists,
//! precedence flag > env > file > default, errors with file:line, the `config` subcommand
//! (effective settings, secrets redacted) and the example file in deploy/.
#![allow(clippy::unwrap_used)]

mod cli_support;

use cli_support::*;
use std::path::Path;

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/peer-stream-server.toml"
);

fn value(map: &std::collections::BTreeMap<String, Shown>, key: &str) -> String {
    map.get(key)
        .unwrap_or_else(|| panic!("`config` printed no {key:?}: {map:?}"))
        .value
        .clone()
}

fn source(map: &std::collections::BTreeMap<String, Shown>, key: &str) -> String {
    map.get(key)
        .unwrap_or_else(|| panic!("`config` printed no {key:?}: {map:?}"))
        .source
        .clone()
}

#[test]
fn precedence_is_flag_then_env_then_file_then_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        "peer-stream.toml",
        "listen = \"127.0.0.1:4001\"\n\
         outbox-capacity = 111\n\
         rate-burst = 222\n\
         max-connections = 333\n",
    );
    let mut cmd = server_cmd();
    cmd.env("PEER_STREAM_OUTBOX", "444")
        .env("PEER_STREAM_RATE_BURST", "555")
        .env("PEER_STREAM_HELLO_TIMEOUT_MS", "666")
        .arg("--config")
        .arg(&file)
        .args(["--rate-burst", "777", "--rate-per-sec", "5", "config"]);
    let shown = shown_config(cmd);
    // file only
    assert_eq!(value(&shown, "listen"), "\"127.0.0.1:4001\"");
    assert_eq!(source(&shown, "listen"), "config file");
    assert_eq!(value(&shown, "max-connections"), "333");
    // env beats file
    assert_eq!(value(&shown, "outbox-capacity"), "444");
    assert_eq!(
        source(&shown, "outbox-capacity"),
        "environment PEER_STREAM_OUTBOX"
    );
    // flag beats env and file
    assert_eq!(value(&shown, "rate-burst"), "777");
    assert_eq!(source(&shown, "rate-burst"), "command line");
    // env alone, flag alone
    assert_eq!(value(&shown, "hello-timeout-ms"), "666");
    assert_eq!(value(&shown, "rate-per-sec"), "5");
    // default
    assert_eq!(value(&shown, "heartbeat-interval-ms"), "10000");
    assert_eq!(source(&shown, "heartbeat-interval-ms"), "default");
    assert_eq!(value(&shown, "trust-proxy"), "false");
}

#[test]
fn keys_with_dashes_or_underscores_arrays_and_switches() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        "c.toml",
        "# a comment\n\
         outbox_capacity = 7\n\
         max-message-bytes = 1_024\n\
         allow_origin = [\"https://a.example\", \"https://b.example\"]\n\
         stun = [\"stun:one.example:3478\", \"stun:two.example:3478\"]\n\
         turn = []\n\
         trust_proxy = true\n\
         log = \"debug\"\n\
         db = \"/tmp/somewhere/x.sqlite3\"\n",
    );
    let mut cmd = server_cmd();
    cmd.arg("config").arg("--config").arg(&file); // --config after the subcommand too
    let shown = shown_config(cmd);
    assert_eq!(value(&shown, "outbox-capacity"), "7");
    assert_eq!(value(&shown, "max-message-bytes"), "1024");
    assert_eq!(
        value(&shown, "allow-origin"),
        "[\"https://a.example\", \"https://b.example\"]"
    );
    assert_eq!(
        value(&shown, "stun"),
        "[\"stun:one.example:3478\", \"stun:two.example:3478\"]"
    );
    assert_eq!(value(&shown, "turn"), "[]");
    assert_eq!(value(&shown, "trust-proxy"), "true");
    assert_eq!(source(&shown, "trust-proxy"), "config file");
    assert_eq!(value(&shown, "log"), "\"debug\"");
    assert_eq!(value(&shown, "db"), "\"/tmp/somewhere/x.sqlite3\"");

    // A flag given on the command line replaces the file's whole list.
    let mut cmd = server_cmd();
    cmd.arg("--config")
        .arg(&file)
        .args(["--stun", "stun:flag.example:1", "config"]);
    let shown = shown_config(cmd);
    assert_eq!(value(&shown, "stun"), "[\"stun:flag.example:1\"]");
}

#[test]
fn config_path_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "env.toml", "rate-burst = 9\n");
    let mut cmd = server_cmd();
    cmd.env("PEER_STREAM_CONFIG", &file).arg("config");
    let shown = shown_config(cmd);
    assert_eq!(value(&shown, "rate-burst"), "9");
    assert_eq!(source(&shown, "rate-burst"), "config file");
}

/// Runs `config` with a file of `text`; expects exit 2 and `FILE:LINE: …` with `parts`.
fn expect_file_error(text: &str, line: usize, parts: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "peer-stream.toml", text);
    for args in [vec!["config"], vec![]] {
        // Both `config` and starting the server stop on a bad file.
        let mut cmd = server_cmd();
        cmd.arg("--config").arg(&file).args(&args);
        let r = run(cmd);
        r.fails_with(2)
            .stderr_has(&format!("{}:{line}: ", file.display()));
        for part in parts {
            r.stderr_has(part);
        }
    }
}

#[test]
fn unknown_key_names_the_file_line_and_a_suggestion() {
    expect_file_error(
        "listen = \"127.0.0.1:4002\"\n\n# comment\noutbox-capasity = 10\n",
        4,
        &["unknown key \"outbox-capasity\" (did you mean \"outbox-capacity\"?)"],
    );
    expect_file_error(
        "frobnicate-everything = true\n",
        1,
        &["unknown key \"frobnicate-everything\"", "--help"],
    );
    // A section header is not a key either.
    expect_file_error(
        "[server]\nlisten = \"127.0.0.1:1\"\n",
        1,
        &["unknown key \"server\""],
    );
    // Subcommand options are not settings.
    expect_file_error("json = true\n", 1, &["unknown key \"json\""]);
    expect_file_error(
        "config = \"other.toml\"\n",
        1,
        &["\"config\" cannot be set"],
    );
}

#[test]
fn bad_values_name_the_file_line_and_the_problem() {
    let cases: &[(&str, usize, &[&str])] = &[
        (
            "log = \"info\"\nlisten = \"nope\"\n",
            2,
            &[
                "invalid value 'nope' for '--listen",
                "invalid socket address",
            ],
        ),
        (
            "outbox-capacity = \"256\"\n",
            1,
            &["\"outbox-capacity\" takes a whole number", "not a string"],
        ),
        (
            "outbox-capacity = -1\n",
            1,
            &["invalid value '-1' for '--outbox-capacity"],
        ),
        (
            "rate-per-sec = 99999999999\n",
            1,
            &["invalid value '99999999999' for '--rate-per-sec"],
        ),
        (
            "rate-per-sec = 1.5\n",
            1,
            &["takes a whole number", "not a decimal number"],
        ),
        (
            "stun = \"stun:x.example:3478\"\n",
            1,
            &["\"stun\" takes an array of strings"],
        ),
        (
            "allow-origin = [\n  \"https://a\",\n  3,\n]\n",
            3,
            &["one item is a number"],
        ),
        (
            "trust-proxy = \"yes\"\n",
            1,
            &["\"trust-proxy\" takes true or false"],
        ),
        ("log = 3\n", 1, &["\"log\" takes a string"]),
        (
            "listen.port = 3000\n",
            1,
            &["\"listen\" takes a string", "not a table"],
        ),
        ("turn-ttl-secs = 1979-05-27\n", 1, &["not a date"]),
        (
            "outbox-capacity = 1\noutbox_capacity = 2\n",
            2,
            &["\"outbox-capacity\" is set twice (also on line 1)"],
        ),
        (
            "stun = [\"garbage url\"]\n",
            1,
            &["invalid value 'garbage url' for '--stun", "stun: or stuns:"],
        ),
        (
            "turn = [\"turn:ok.example:3478\", \"http://x\"]\n",
            1,
            &["invalid value 'http://x' for '--turn", "turn: or turns:"],
        ),
        (
            "allow-origin = [\"not an origin\"]\n",
            1,
            &["invalid value 'not an origin' for '--allow-origin"],
        ),
        (
            "log = \"[[[\"\n",
            1,
            &["invalid value '[[[' for '--log", "not a log filter"],
        ),
        (
            "max-message-bytes = 0\n",
            1,
            &[
                "invalid value '0' for '--max-message-bytes",
                "at least 1024",
            ],
        ),
        (
            "turn-secret = \"***\"\n",
            1,
            &[
                "invalid value '***' for '--turn-secret",
                "redacted placeholder",
            ],
        ),
        // TOML syntax errors carry their line too.
        ("rate-burst = 3\nlisten = \n", 2, &[]),
        ("rate-burst = 3\nrate-burst = 4\n", 2, &["duplicate key"]),
    ];
    for (text, line, parts) in cases {
        expect_file_error(text, *line, parts);
    }
}

#[test]
fn an_invalid_env_value_is_reported_even_when_a_file_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "ok.toml", "rate-burst = 9\n");
    let mut cmd = server_cmd();
    cmd.env("PEER_STREAM_LISTEN", "garbage")
        .arg("--config")
        .arg(&file)
        .arg("config");
    run(cmd)
        .fails_with(2)
        .stderr_has("invalid value 'garbage' for '--listen");
}

#[test]
fn a_missing_config_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let mut cmd = server_cmd();
    cmd.arg("--config").arg(&missing).arg("config");
    run(cmd).fails_with(2).stderr_has(&format!(
        "{}: cannot read the configuration file",
        missing.display()
    ));
}

#[test]
fn config_redacts_secrets_and_url_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        "s.toml",
        "turn = [\"turn:alice:filepass@turn.example.org:3478?transport=udp\"]\n\
         turn-secret = \"file-secret-value\"\n",
    );
    // From the file
    let r = run_args(&["--config", file.to_str().unwrap(), "config"]);
    r.ok();
    assert!(!r.stdout.contains("file-secret-value"), "{}", r.stdout);
    assert!(!r.stdout.contains("filepass"), "{}", r.stdout);
    let shown = parse_shown(&r.stdout);
    assert_eq!(value(&shown, "turn-secret"), "\"***\"");
    assert_eq!(
        value(&shown, "turn"),
        "[\"turn:alice:***@turn.example.org:3478?transport=udp\"]"
    );
    // From flags and the environment
    let mut cmd = server_cmd();
    cmd.env("PEER_STREAM_TURN_SECRET", "env-secret-value")
        .args([
            "--stun",
            "stun:bob:stunpass@stun.example.org:3478?password=querypass",
            "--allow-origin",
            "https://carol:originpass@chat.example.org",
            "config",
        ]);
    let r = run(cmd);
    r.ok();
    for secret in ["env-secret-value", "stunpass", "querypass", "originpass"] {
        assert!(!r.stdout.contains(secret), "{secret} leaked:\n{}", r.stdout);
    }
    let shown = parse_shown(&r.stdout);
    assert_eq!(value(&shown, "turn-secret"), "\"***\"");
    assert_eq!(
        value(&shown, "stun"),
        "[\"stun:bob:***@stun.example.org:3478?password=***\"]"
    );
    // Not set: no value at all (not even ***).
    let shown = shown_config({
        let mut c = server_cmd();
        c.arg("config");
        c
    });
    assert_eq!(value(&shown, "turn-secret"), "(not set)");
}

#[test]
fn config_output_pastes_back_as_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = server_cmd();
    cmd.env("PEER_STREAM_BAN_THRESHOLD", "005").args([
        "--listen",
        "127.0.0.1:4999",
        "--stun",
        "stun:a.example:3478,stun:b.example:3478",
        "--trust-proxy",
        "--log",
        "warn,peer_stream_server[conn{name=\"x\"}]=debug",
        "config",
    ]);
    let r = run(cmd);
    r.ok();
    let first = parse_shown(&r.stdout);
    let file = write_file(dir.path(), "pasted.toml", &r.stdout);
    let mut cmd = server_cmd();
    cmd.arg("--config").arg(&file).arg("config");
    let second = shown_config(cmd);
    for (key, shown) in &first {
        assert_eq!(
            &second[key].value, &shown.value,
            "{key} changed in the round trip"
        );
    }
    assert_eq!(source(&second, "ban-threshold"), "config file");
    assert_eq!(value(&second, "ban-threshold"), "5");
}

#[test]
fn the_example_file_parses_holds_the_defaults_and_lists_every_key() {
    let example = std::fs::read_to_string(EXAMPLE).unwrap();
    let mut cmd = server_cmd();
    cmd.arg("--config").arg(EXAMPLE).arg("config");
    let with_file = shown_config(cmd);
    let defaults = shown_config({
        let mut c = server_cmd();
        c.arg("config");
        c
    });
    assert_eq!(
        with_file.keys().collect::<Vec<_>>(),
        defaults.keys().collect::<Vec<_>>()
    );
    for (key, default) in &defaults {
        assert_eq!(
            with_file[key].value, default.value,
            "deploy/peer-stream-server.toml should give {key} its default"
        );
        let listed = example.lines().any(|l| {
            let l = l.trim_start_matches('#').trim_start();
            l.starts_with(&format!("{key} ="))
        });
        assert!(
            listed,
            "deploy/peer-stream-server.toml has no line for {key:?}: add it (with a comment) \
             when adding a flag"
        );
    }
    // Every commented-out example line is valid too once uncommented.
    let uncommented: String = example
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| {
            l.split_once(" = ")
                .is_some_and(|(k, _)| defaults.contains_key(k.trim()))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(uncommented.contains("turn-secret ="), "{uncommented}");
    let dir = tempfile::tempdir().unwrap();
    // tls files must exist to start, but `config` only checks the values.
    let file = write_file(dir.path(), "uncommented.toml", &uncommented);
    let mut cmd = server_cmd();
    cmd.arg("--config").arg(&file).arg("config");
    let shown = shown_config(cmd);
    assert_eq!(value(&shown, "turn-secret"), "\"***\"");
    assert!(value(&shown, "turn").contains("turn:turn.example.org"));
    assert_eq!(source(&shown, "tls-cert"), "config file");
    assert!(Path::new(EXAMPLE).is_file());
}

#[test]
fn help_lists_the_config_flag_and_the_subcommands() {
    let r = run_args(&["--help"]);
    r.ok();
    for part in [
        "--config <FILE>",
        "config",
        "reports",
        "bans",
        "--outbox-capacity",
    ] {
        assert!(
            r.stdout.contains(part),
            "--help lacks {part:?}:\n{}",
            r.stdout
        );
    }
}
