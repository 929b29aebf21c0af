//! The `peer-stream-server` command line: the server's flags ([`Config`]), a TOML
//! configuration file merged beneath them, and the operator's subcommands (`config`,
//! `reports …`, `bans …`).
//!
//! Precedence: flag > `PEER_STREAM_*` variable > file > default. Clap parses twice: once
//! (tolerating errors) to learn the file's path and where each setting already comes
//! from, then again with the file's settings placed first on the command line for every
//! argument that would otherwise take its default, so clap itself still applies the
//! environment, checks values and builds `Config`.

pub mod file;
pub mod moderate;
pub mod show;
pub mod time;

use clap::parser::ValueSource;
use clap::{ArgMatches, Command, CommandFactory, FromArgMatches, Parser, Subcommand};
use peer_stream_server::moderation::BanTarget;
use peer_stream_server::Config;
use std::collections::HashSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "peer-stream-server",
    version,
    about = "Peer Stream signaling server: pairs strangers and relays their WebRTC negotiation",
    after_help = "Settings come from flags, then PEER_STREAM_* variables, then the --config \
                  file, then the defaults shown here."
)]
pub struct Cli {
    /// TOML file of settings: keys are the long flag names (`outbox-capacity` or
    /// `outbox_capacity`), lists are arrays; flags and variables override it.
    #[arg(long, env = "PEER_STREAM_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub server: Config,

    #[command(subcommand)]
    pub command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Print the effective configuration as TOML (secrets shown as ***) and exit.
    #[command(name = "config")]
    ShowConfig,
    /// Reports users sent about each other (read from the --db file).
    #[command(subcommand)]
    Reports(ReportsCmd),
    /// Bans on addresses and ranges (in the --db file; a running server applies changes
    /// within seconds).
    #[command(subcommand)]
    Bans(BansCmd),
}

#[derive(Debug, Subcommand)]
pub enum ReportsCmd {
    /// List reports, oldest first.
    List {
        /// Only the reports of the last DURATION (e.g. 30m, 24h, 7d).
        #[arg(long, value_name = "DURATION", value_parser = time::parse_duration)]
        since: Option<Duration>,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BansCmd {
    /// List the bans in force.
    List {
        /// Also list expired bans.
        #[arg(long)]
        all: bool,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Ban an IP address or a CIDR range; live sessions from it are closed.
    Add {
        /// IPv4 or IPv6 address, or CIDR range (203.0.113.0/24, 2001:db8::/32).
        #[arg(value_name = "ADDRESS")]
        address: BanTarget,
        /// How long (s, m, h, d: 30m, 12h, 7d); default: the server's --ban-duration-secs.
        #[arg(long = "for", value_name = "DURATION", value_parser = time::parse_duration)]
        duration: Option<Duration>,
        /// Why (shown by `bans list`).
        #[arg(long, default_value = "banned by the operator")]
        reason: String,
        /// Print the new ban as a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Lift the ban on exactly this address or range.
    Remove {
        #[arg(value_name = "ADDRESS")]
        address: BanTarget,
        /// Print the removed ban as a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Where an effective setting came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File,
    Env(String),
    Flag,
    Unset,
}

/// The parsed command line with the file merged in.
pub struct Parsed {
    pub cli: Cli,
    pub matches: ArgMatches,
    /// Ids of the settings that took their value from the file.
    pub from_file: HashSet<String>,
}

impl Parsed {
    pub fn source(&self, cmd: &Command, id: &str) -> Source {
        if self.from_file.contains(id) {
            return Source::File;
        }
        match self.matches.value_source(id) {
            Some(ValueSource::DefaultValue) => Source::Default,
            Some(ValueSource::EnvVariable) => {
                let var = cmd
                    .get_arguments()
                    .find(|a| a.get_id() == id)
                    .and_then(|a| a.get_env())
                    .map(|v| v.to_string_lossy().into_owned())
                    .unwrap_or_default();
                Source::Env(var)
            }
            Some(ValueSource::CommandLine) => Source::Flag,
            _ => Source::Unset,
        }
    }
}

/// The command, built (so arguments are final), as `--help` shows it.
pub fn command() -> Command {
    let mut cmd = Cli::command();
    cmd.build();
    cmd
}

/// Parses `args` (with the program name first), merging the configuration file. `--help`,
/// `--version` and flag errors exit the process like clap does; an error in the file is
/// returned as `FILE:LINE: message`.
pub fn parse(args: Vec<OsString>) -> Result<Parsed, String> {
    let cmd = command();
    let first = match cmd
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(args.iter())
    {
        Ok(m) => m,
        Err(e) => e.exit(),
    };
    let mut injected: Vec<OsString> = Vec::new();
    let mut from_file = HashSet::new();
    if let Some(path) = first.get_one::<PathBuf>("config") {
        for setting in file::read(path, &cmd)? {
            let replaceable = matches!(
                first.value_source(&setting.id),
                None | Some(ValueSource::DefaultValue)
            );
            if replaceable {
                injected.extend(setting.args.into_iter().map(OsString::from));
                from_file.insert(setting.id);
            }
        }
    }
    let mut argv = args.into_iter();
    let program = argv
        .next()
        .unwrap_or_else(|| OsString::from("peer-stream-server"));
    let full: Vec<OsString> = std::iter::once(program)
        .chain(injected)
        .chain(argv)
        .collect();
    let matches = cmd.try_get_matches_from(full).unwrap_or_else(|e| e.exit());
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    Ok(Parsed {
        cli,
        matches,
        from_file,
    })
}
