//! The sentinel's command line, shared by the program and by the generator of its manual
//! page and shell completions.

use clap::Parser;
use std::path::PathBuf;
use stolon_daemon::CommonArgs;

/// The prefix of the environment variables that stand for its flags.
pub const ENV_PREFIX: &str = "STSENTINEL";

/// Watches the keepers and proxies of a stolon cluster and decides its shape.
#[derive(Debug, Parser)]
#[command(name = "stolon-sentinel", version)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    /// A cluster spec (JSON file) written as a new cluster when the store has no cluster data.
    #[arg(long)]
    pub initial_cluster_spec: Option<PathBuf>,
    /// Where to serve Prometheus `/metrics` (host:port); not served when not given.
    #[arg(long)]
    pub metrics_listen_address: Option<std::net::SocketAddr>,
}
