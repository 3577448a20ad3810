use anyhow::Context;
use stolon_cluster::{ClusterSpec, SentinelUid};
use stolon_sentinel::cli::{Cli, ENV_PREFIX};
use stolon_sentinel::SentinelConfig;

fn main() {
    stolon_daemon::daemon_main(ENV_PREFIX, |cli: &Cli| cli.common.log_level, run);
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
