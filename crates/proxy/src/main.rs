use anyhow::Context;
use clap::Parser;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use stolon_cluster::ProxyUid;
use stolon_daemon::CommonArgs;
use stolon_proxy::{Keepalive, ProxyConfig, ReadOnlyConfig};

fn nonzero_secs(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// Routes PostgreSQL client connections to the current primary of a stolon cluster.
#[derive(Debug, Parser)]
#[command(name = "stolon-proxy", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[arg(long, default_value = "127.0.0.1")]
    listen_address: IpAddr,
    #[arg(long, default_value_t = 5432)]
    port: u16,
    /// Stop listening while the store cannot be read, so load balancers see the proxy down.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    stop_listening: bool,
    /// The proxy's uid (letters a-z, digits, `_`); default a new random one at each start.
    /// A fixed uid keeps the proxy the same one for the sentinel across restarts.
    #[arg(long, value_parser = parse_uid)]
    uid: Option<String>,
    /// Seconds a connection stays idle before TCP keepalive probes start (0: the OS default).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..))]
    tcp_keepalive_idle: u64,
    /// Keepalive probes without answer before a connection is dropped (0: the OS default).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..))]
    tcp_keepalive_count: u32,
    /// Also serve read-only connections on this port (same listen address), balanced
    /// across the standbys that stream from the primary within --max-standby-lag.
    #[arg(long)]
    ro_port: Option<u16>,
    /// The most bytes a standby may be behind the primary to serve reads (default: the
    /// cluster spec's maxStandbyLag).
    #[arg(long)]
    max_standby_lag: Option<u64>,
    /// With no standby to read from, send read-only connections to the primary instead of
    /// refusing them.
    #[arg(long)]
    ro_fallback_to_primary: bool,
    /// Serve Prometheus metrics on this address (`/metrics`), e.g. 127.0.0.1:9090.
    #[arg(long)]
    metrics_listen_address: Option<SocketAddr>,
    /// Let the kernel move each session's bytes (a BPF sockmap: needs root, or CAP_BPF and
    /// CAP_NET_ADMIN) instead of relaying them in the proxy; falls back to the relay where
    /// the kernel refuses. Off by default: a session whose reader falls 64 MiB behind its
    /// writer is closed, where the relay would wait for it (docs/operations.md).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    kernel_splice: bool,
    /// Threads that carry client sessions, each with its own event loop (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    relay_threads: usize,
    /// Seconds between keepalive probes (0: the OS default).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..))]
    tcp_keepalive_interval: u64,
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

fn main() {
    stolon_daemon::daemon_main("STPROXY", |cli: &Cli| cli.common.log_level, run);
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    stolon_daemon::check_backend(&cli.common)?;
    let uid = ProxyUid::new(cli.uid.clone().unwrap_or_else(stolon_daemon::random_uid));
    tracing::info!(uid = %uid, "proxy uid");
    let shutdown = stolon_daemon::shutdown_on_signals();
    let Some(store) = stolon_daemon::connect_store_retrying(&cli.common, &shutdown)
        .await
        .context("connecting to the store")?
    else {
        return Ok(());
    };
    let config = ProxyConfig {
        uid,
        cluster_name: cli.common.cluster_name.clone(),
        listen: SocketAddr::new(cli.listen_address, cli.port),
        stop_listening: cli.stop_listening,
        keepalive: Keepalive {
            idle: nonzero_secs(cli.tcp_keepalive_idle),
            interval: nonzero_secs(cli.tcp_keepalive_interval),
            count: (cli.tcp_keepalive_count > 0).then_some(cli.tcp_keepalive_count),
        },
        read_only: cli.ro_port.map(|port| ReadOnlyConfig {
            listen: SocketAddr::new(cli.listen_address, port),
            max_lag: cli.max_standby_lag,
            fallback_to_primary: cli.ro_fallback_to_primary,
        }),
        metrics: cli.metrics_listen_address,
        kernel_splice: cli.kernel_splice,
        relay_threads: cli.relay_threads,
    };
    stolon_proxy::run(config, store, shutdown).await
}
