use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use stolon_cluster::{ClusterSpec, SentinelUid};
use stolon_daemon::CommonArgs;
use stolon_sentinel::SentinelConfig;

/// Watches the keepers and proxies of a stolon cluster and decides its shape.
#[derive(Debug, Parser)]
#[command(name = "stolon-sentinel", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// A cluster spec (JSON file) written as a new cluster when the store has no cluster data.
    #[arg(long)]
    initial_cluster_spec: Option<PathBuf>,
    /// Where to serve Prometheus `/metrics` (host:port); not served when not given.
    #[arg(long)]
    metrics_listen_address: Option<std::net::SocketAddr>,
}

fn main() {
    stolon_daemon::daemon_main("STSENTINEL", |cli: &Cli| cli.common.log_level, run);
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    stolon_daemon::check_backend(&cli.common)?;
    let initial_spec = match &cli.initial_cluster_spec {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading initial cluster spec {}", path.display()))?;
            let spec = ClusterSpec::from_json(&text)
                .with_context(|| format!("invalid initial cluster spec {}", path.display()))?;
            spec.validate()
                .with_context(|| format!("invalid initial cluster spec {}", path.display()))?;
            Some(spec)
        }
        None => None,
    };
    let uid = SentinelUid::new(stolon_daemon::random_uid());
    tracing::info!(uid = %uid, "sentinel uid");
    let shutdown = stolon_daemon::shutdown_on_signals();
    let Some(store) = stolon_daemon::connect_store_retrying(&cli.common, &shutdown).await? else {
        return Ok(());
    };
    let config = SentinelConfig {
        uid,
        initial_spec,
        cluster_name: cli.common.cluster_name.clone(),
        metrics: cli.metrics_listen_address,
    };
    stolon_sentinel::run(config, store, shutdown).await
}
