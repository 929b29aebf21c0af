//! Build information for the About box: the git commit (`git rev-parse --short HEAD`,
//! "unknown" outside a git checkout, e.g. a source tarball or the Docker build context),
//! the target triple and the profile. Read by `src/app/build_info.rs`.

// Cargo reads a build script's instructions from its stdout.
#![allow(clippy::print_stdout)]

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // CI or a packager may name the commit itself (e.g. a build from a tarball).
    println!("cargo:rerun-if-env-changed=PEER_STREAM_GIT_COMMIT");
    let commit = std::env::var("PEER_STREAM_GIT_COMMIT")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| {
            let commit = git(&["rev-parse", "--short", "HEAD"])?;
            // Build again when HEAD moves: a commit, a checkout. Only files that exist
            // (a missing path would make cargo re-run this script on every build).
            if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
                let mut watch = vec![format!("{git_dir}/HEAD"), format!("{git_dir}/packed-refs")];
                if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
                    watch.push(format!("{git_dir}/{head_ref}"));
                }
                for path in watch.iter().filter(|p| Path::new(p).exists()) {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
            Some(commit)
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=PEER_STREAM_GIT_COMMIT={commit}");
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_owned());
    println!("cargo:rustc-env=PEER_STREAM_TARGET={target}");
    // "debug" for the dev and test profiles, "release" for release.
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".to_owned());
    println!("cargo:rustc-env=PEER_STREAM_PROFILE={profile}");
}
