//! What the About box says about this build: version, git commit, target, profile,
//! licence, repository. The commit, target and profile come from `build.rs`.

/// The app version (the workspace version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The short git commit the app was built from, or "unknown" (no git checkout).
pub const GIT_COMMIT: &str = env!("PEER_STREAM_GIT_COMMIT");
/// The target triple, e.g. `x86_64-unknown-linux-gnu`.
pub const TARGET: &str = env!("PEER_STREAM_TARGET");
/// The cargo profile's folder: `release` or `debug`.
pub const PROFILE: &str = env!("PEER_STREAM_PROFILE");
/// SPDX licence expression.
pub const LICENSE: &str = env!("CARGO_PKG_LICENSE");
/// Where the source code, releases and issue tracker are.
pub const REPOSITORY: &str = "https://github.com/peer-stream/peer-stream";

/// One line for the About box and bug reports: `commit abc1234 · x86_64-… · release`.
pub fn build_line() -> String {
    format!("commit {GIT_COMMIT} · {TARGET} · {PROFILE}")
}
