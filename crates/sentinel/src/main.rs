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
}

fn main() {
    let cli: Cli = stolon_daemon::parse_with_env_prefix("STSENTINEL");
    stolon_daemon::init_tracing(cli.common.log_level);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(cli)) {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
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
    stolon_sentinel::run(SentinelConfig { uid, initial_spec }, store, shutdown).await
}
