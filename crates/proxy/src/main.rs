use anyhow::Context;
use std::net::SocketAddr;
use std::time::Duration;
use stolon_cluster::ProxyUid;
use stolon_proxy::cli::{Cli, ENV_PREFIX};
use stolon_proxy::{Keepalive, ProxyConfig, ReadOnlyConfig};

fn nonzero_secs(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

fn main() {
    stolon_daemon::daemon_main(ENV_PREFIX, |cli: &Cli| cli.common.log_level, run);
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
