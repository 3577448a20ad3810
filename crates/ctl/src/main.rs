//! stolonctl: the operator's command line over the store (the commands: `stolon_ctl::cmd`).

use stolon_ctl::cli::{Cli, ENV_PREFIX};

fn main() {
    // The one command that needs no cluster.
    if std::env::args().nth(1).as_deref() == Some("version") {
        println!("stolonctl version {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let cli: Cli = stolon_daemon::parse_with_env_prefix(ENV_PREFIX);
    stolon_daemon::init_tracing(stolon_daemon::LogLevel::Warn);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = runtime.block_on(stolon_ctl::cmd::run(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
