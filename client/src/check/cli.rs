//! `peer-stream --check [--server URL]`: the setup check without a window. The server is
//! the one given, else the one the app saved, else the app's built-in server (started
//! in-process for the check, like the app does).

use super::devices::DeviceChoices;
use super::{CheckOptions, CheckReport};
use crate::app::embedded::EmbeddedServer;
use crate::net::peer::IcePolicy;
use anyhow::Context;
use std::time::Duration;

/// Flags that matter to the check.
#[derive(Clone, Debug, Default)]
pub struct CliOptions {
    /// `--server`, when given on the command line (or in `PEER_STREAM_SERVER`).
    pub server: Option<String>,
    pub udp_addrs: Vec<String>,
    pub ice_policy: IcePolicy,
}

/// Runs the check on its own runtime and returns the report (the caller prints it).
pub fn run(opts: CliOptions) -> anyhow::Result<CheckReport> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let saved = super::saved::load();
    let devices = saved
        .as_ref()
        .map(|s| DeviceChoices {
            camera: s.camera,
            microphone: s.microphone,
            speaker: s.speaker,
        })
        .unwrap_or_default();
    let saved_server = saved
        .map(|s| s.server_url.trim().to_owned())
        .filter(|u| !u.is_empty());
    let mut embedded = None;
    let server_url = match (opts.server, saved_server) {
        (Some(url), _) => url,
        (None, Some(url)) => {
            tracing::info!(%url, "checking the server saved in the app's settings");
            url
        }
        (None, None) => {
            let db = super::saved::storage_dir()
                .unwrap_or_else(std::env::temp_dir)
                .join("server.sqlite3");
            let server = EmbeddedServer::start(runtime.handle(), false, db)
                .context("starting the built-in server")?;
            tracing::info!(url = %server.local_url, "checking the app's built-in server");
            let url = server.local_url.clone();
            embedded = Some(server);
            url
        }
    };
    let report = runtime.block_on(super::run(CheckOptions {
        server_url,
        udp_addrs: opts.udp_addrs,
        ice_policy: opts.ice_policy,
        devices,
    }));
    drop(embedded);
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(report)
}
