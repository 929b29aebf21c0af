//! A server embedded in another program (the desktop app's built-in server) takes the
//! flags' defaults and never a standalone server's `PEER_STREAM_*` variables, above all
//! `PEER_STREAM_REDIS` (#11: the app's built-in server never joins a cluster).
//!
//! Its own test binary with one test: it sets process environment variables.
#![allow(clippy::unwrap_used)]

use peer_stream_server::Config;

#[test]
fn defaults_ignoring_env_ignore_every_peer_stream_variable() {
    std::env::set_var("PEER_STREAM_REDIS", "redis://127.0.0.1:6399");
    std::env::set_var("PEER_STREAM_LISTEN", "127.0.0.1:4999");
    std::env::set_var("PEER_STREAM_RATE_BURST", "7");
    // What the standalone binary reads…
    let standalone = Config::default();
    assert_eq!(
        standalone.redis.as_deref(),
        Some("redis://127.0.0.1:6399"),
        "the variables are the ones the server reads"
    );
    assert_eq!(standalone.listen.to_string(), "127.0.0.1:4999");
    // …and what an embedded server gets.
    let embedded = Config::defaults_ignoring_env();
    assert_eq!(embedded.redis, None);
    assert_ne!(embedded.listen.to_string(), "127.0.0.1:4999");
    assert_ne!(embedded.rate_burst, standalone.rate_burst);
}
