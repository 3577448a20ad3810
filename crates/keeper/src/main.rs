use stolon_keeper::cli::{Cli, ENV_PREFIX};
use stolon_keeper::KeeperConfig;

fn main() {
    stolon_daemon::daemon_main(ENV_PREFIX, |cli: &Cli| cli.common.log_level, run);
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    stolon_daemon::check_backend(&cli.common)?;
    let config = KeeperConfig::try_from(&cli)?;
    let shutdown = stolon_daemon::shutdown_on_signals();
    let Some(store) = stolon_daemon::connect_store_retrying(&cli.common, &shutdown).await? else {
        return Ok(());
    };
    stolon_keeper::run(config, store, shutdown).await
}
