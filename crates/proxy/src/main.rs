use anyhow::Context;
use clap::Parser;
use std::net::{IpAddr, SocketAddr};
use stolon_cluster::ProxyUid;
use stolon_daemon::CommonArgs;
use stolon_proxy::ProxyConfig;

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
}

fn main() {
    stolon_daemon::daemon_main("STPROXY", |cli: &Cli| cli.common.log_level, run);
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    stolon_daemon::check_backend(&cli.common)?;
    let uid = ProxyUid::new(stolon_daemon::random_uid());
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
        listen: SocketAddr::new(cli.listen_address, cli.port),
        stop_listening: cli.stop_listening,
    };
    stolon_proxy::run(config, store, shutdown).await
}
