//! The Redis side of a cluster benchmark: a `redis-server` the generator starts for the
//! run (`--spawn-redis`), and the command counters (`INFO commandstats`) read before and
//! after a measurement window, so a figure can say how many Redis commands one pairing or
//! one relayed message cost.
//!
//! The generator talks RESP by hand (one `INFO` request on a short-lived TCP connection):
//! a client library would be a dependency for two lines of protocol.

use anyhow::{anyhow, bail, Context as _, Result};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IO_TIMEOUT: Duration = Duration::from_secs(5);
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest `INFO` reply accepted (a real one is a few KiB).
const MAX_REPLY: usize = 1 << 20;

/// Calls per Redis command (`cmdstat_<name>:calls=N,…`), e.g. `evalsha` → 1200.
pub type CommandCalls = BTreeMap<String, u64>;

/// A Redis the run reads counters from: spawned by the generator or given by `--redis`.
pub struct RedisSide {
    pub addr: SocketAddr,
    pub url: String,
    /// Set when the generator started it; the process is killed on drop.
    spawned: Option<SpawnedRedis>,
    /// The CPU a spawned Redis is pinned to.
    pub pinned_cpu: Option<u32>,
}

struct SpawnedRedis {
    child: Child,
    dir: PathBuf,
}

impl Drop for SpawnedRedis {
    fn drop(&mut self) {
        // By its own pid, never by name.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RedisSide {
    /// A Redis that already runs, at a loopback `redis://HOST:PORT[/DB]` URL.
    pub fn external(url: &str) -> Result<RedisSide> {
        let addr = parse_redis_url(url)?;
        let side = RedisSide {
            addr,
            url: url.to_string(),
            spawned: None,
            pinned_cpu: None,
        };
        side.command_calls()
            .with_context(|| format!("reading INFO commandstats from {url}"))?;
        Ok(side)
    }

    /// Starts `redis-server` on a free loopback port, without persistence, in a temporary
    /// directory, pinned to `cpu` when given (with `taskset`); it stops when the returned
    /// value is dropped.
    ///
    /// Pinned explicitly: started by a generator that already pinned itself, it would
    /// otherwise inherit the generator's CPU and compete there with its busy-polling pacer
    /// (which made cross-node relays wait for a time slice: tens of ms at p99).
    pub fn spawn(port: u16, cpu: Option<u32>) -> Result<RedisSide> {
        let bin = super::find_in_path("redis-server")
            .ok_or_else(|| anyhow!("redis-server not found (Debian package redis-server)"))?;
        let dir = std::env::temp_dir().join(format!(
            "peer-stream-loadgen-redis-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let taskset = cpu.and_then(|c| super::find_in_path("taskset").map(|t| (t, c)));
        let mut command = match &taskset {
            Some((taskset, cpu)) => {
                let mut c = Command::new(taskset);
                c.arg("-c").arg(cpu.to_string()).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let child = command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let side = RedisSide {
            addr,
            url: format!("redis://{addr}"),
            spawned: Some(SpawnedRedis { child, dir }),
            pinned_cpu: taskset.map(|(_, cpu)| cpu),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match side.command_calls() {
                Ok(_) => return Ok(side),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!(
                        "redis-server did not answer within {START_TIMEOUT:?}"
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The Redis process's pid when the generator started it (for its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.spawned.as_ref().map(|s| s.child.id())
    }

    /// `INFO commandstats`: calls per command since the server started.
    pub fn command_calls(&self) -> Result<CommandCalls> {
        let mut tcp = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT)
            .with_context(|| format!("connecting to Redis at {}", self.addr))?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        tcp.write_all(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")?;
        let mut reader = BufReader::new(tcp);
        let mut head = String::new();
        reader.read_line(&mut head)?;
        let len: usize = match head.trim_end().strip_prefix('$') {
            Some(n) => n
                .parse()
                .map_err(|_| anyhow!("bad INFO reply header {head:?}"))?,
            None => bail!("Redis answered INFO with {:?}", head.trim_end()),
        };
        if len > MAX_REPLY {
            bail!("INFO reply of {len} bytes is too large");
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        Ok(parse_commandstats(&String::from_utf8_lossy(&body)))
    }
}

/// `redis://HOST:PORT[/DB]` → the socket address; only loopback addresses (the generator
/// never leaves this machine).
pub fn parse_redis_url(url: &str) -> Result<SocketAddr> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| anyhow!("expected redis://HOST:PORT[/DB], got {url:?}"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        bail!("credentials in the Redis URL are not supported here: {url:?}");
    }
    let authority = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:6379")
    };
    let authority = authority.replace("localhost", "127.0.0.1");
    let addr: SocketAddr = authority
        .parse()
        .map_err(|_| anyhow!("expected a loopback IP address and port in {url:?}"))?;
    if !addr.ip().is_loopback() {
        bail!("refusing {url:?}: only loopback Redis servers");
    }
    Ok(addr)
}

/// The `calls=` of every `cmdstat_<name>:` line of an `INFO commandstats` reply.
pub fn parse_commandstats(text: &str) -> CommandCalls {
    let mut out = CommandCalls::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, fields)) = rest.split_once(':') else {
            continue;
        };
        let calls = fields
            .split(',')
            .find_map(|f| f.strip_prefix("calls="))
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(calls) = calls {
            out.insert(name.to_string(), calls);
        }
    }
    out
}

/// Calls made between two readings, per command (commands with no new call left out;
/// the `info` calls the generator made itself are not counted).
pub fn calls_between(before: &CommandCalls, after: &CommandCalls) -> CommandCalls {
    after
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .filter_map(|(name, &n)| {
            let d = n.saturating_sub(before.get(name).copied().unwrap_or(0));
            (d > 0).then(|| (name.clone(), d))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_calls_of_every_command() {
        let text = "# Commandstats\r\n\
            cmdstat_publish:calls=1200,usec=3400,usec_per_call=2.83,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_evalsha:calls=17,usec=99,usec_per_call=5.8,rejected_calls=0,failed_calls=1\r\n\
            cmdstat_broken\r\n\
            cmdstat_info:calls=x\r\n";
        let calls = parse_commandstats(text);
        assert_eq!(calls.get("publish"), Some(&1200));
        assert_eq!(calls.get("evalsha"), Some(&17));
        assert_eq!(calls.len(), 2, "{calls:?}");
    }

    #[test]
    fn the_difference_leaves_out_info_and_idle_commands() {
        let a = parse_commandstats(
            "cmdstat_publish:calls=10\ncmdstat_info:calls=1\ncmdstat_get:calls=4\n",
        );
        let b = parse_commandstats("cmdstat_publish:calls=25\ncmdstat_info:calls=3\ncmdstat_get:calls=4\ncmdstat_incr:calls=2\n");
        let d = calls_between(&a, &b);
        assert_eq!(d.get("publish"), Some(&15));
        assert_eq!(d.get("incr"), Some(&2));
        assert_eq!(d.len(), 2, "{d:?}");
    }

    #[test]
    fn only_loopback_redis_urls() {
        assert_eq!(
            parse_redis_url("redis://127.0.0.1:6390/2").ok(),
            Some(SocketAddr::from(([127, 0, 0, 1], 6390)))
        );
        assert_eq!(
            parse_redis_url("redis://localhost").ok(),
            Some(SocketAddr::from(([127, 0, 0, 1], 6379)))
        );
        assert!(parse_redis_url("redis://10.0.0.5:6379").is_err());
        assert!(parse_redis_url("redis://user:pw@127.0.0.1:6379").is_err());
        assert!(parse_redis_url("http://127.0.0.1:6379").is_err());
        assert!(parse_redis_url("redis://example.org:6379").is_err());
    }
}
