//! The proxy's command line, shared by the program and by the generator of its manual
//! page and shell completions.

use clap::Parser;
use std::net::{IpAddr, SocketAddr};
use stolon_daemon::CommonArgs;

/// The prefix of the environment variables that stand for its flags.
pub const ENV_PREFIX: &str = "STPROXY";

/// Routes PostgreSQL client connections to the current primary of a stolon cluster.
#[derive(Debug, Parser)]
#[command(name = "stolon-proxy", version)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[arg(long, default_value = "127.0.0.1")]
    pub listen_address: IpAddr,
    #[arg(long, default_value_t = 5432)]
    pub port: u16,
    /// Stop listening while the store cannot be read, so load balancers see the proxy down.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub stop_listening: bool,
    /// The proxy's uid (letters a-z, digits, `_`); default a new random one at each start.
    /// A fixed uid keeps the proxy the same one for the sentinel across restarts.
    #[arg(long, value_parser = parse_uid)]
    pub uid: Option<String>,
    /// Seconds a connection stays idle before TCP keepalive probes start (0: the OS default).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..))]
    pub tcp_keepalive_idle: u64,
    /// Keepalive probes without answer before a connection is dropped (0: the OS default).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..))]
    pub tcp_keepalive_count: u32,
    /// Also serve read-only connections on this port (same listen address), balanced
    /// across the standbys that stream from the primary within --max-standby-lag.
    #[arg(long)]
    pub ro_port: Option<u16>,
    /// The most bytes a standby may be behind the primary to serve reads (default: the
    /// cluster spec's maxStandbyLag).
    #[arg(long)]
    pub max_standby_lag: Option<u64>,
    /// With no standby to read from, send read-only connections to the primary instead of
    /// refusing them.
    #[arg(long)]
    pub ro_fallback_to_primary: bool,
    /// Serve Prometheus metrics on this address (`/metrics`), e.g. 127.0.0.1:9090.
    #[arg(long)]
    pub metrics_listen_address: Option<SocketAddr>,
    /// Let the kernel move each session's bytes (a BPF sockmap: needs root, or CAP_BPF and
    /// CAP_NET_ADMIN) instead of relaying them in the proxy; falls back to the relay where
    /// the kernel refuses. Off by default: a session whose reader falls 64 MiB behind its
    /// writer is closed, where the relay would wait for it (docs/operations.md).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub kernel_splice: bool,
    /// Threads that carry client sessions, each with its own event loop (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    pub relay_threads: usize,
    /// Seconds between keepalive probes (0: the OS default).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..))]
    pub tcp_keepalive_interval: u64,
}

fn parse_uid(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(text.to_string())
    } else {
        Err(format!(
            "invalid uid {text:?}: only lowercase letters, digits and '_' are allowed"
        ))
    }
}
