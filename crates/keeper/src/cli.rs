//! The keeper's command line, shared by the program and by the generator of its manual
//! page and shell completions.

use crate::StoreLoss;
use clap::Parser;
use std::path::PathBuf;
use stolon_daemon::CommonArgs;
use stolon_pg::conf::{AuthMethod, SslMode};

/// The prefix of the environment variables that stand for its flags.
pub const ENV_PREFIX: &str = "STKEEPER";

/// Manages one PostgreSQL instance of a stolon cluster.
#[derive(Debug, Parser)]
#[command(name = "stolon-keeper", version)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Keeper uid (a-z, 0-9, _); random and persisted in the data dir when not given.
    #[arg(long, alias = "id")]
    pub uid: Option<String>,
    /// Without --uid: the uid is this prefix followed by the ordinal that ends $POD_NAME, a
    /// StatefulSet pod's name (`keeper` in pod stolon-stolon-keeper-2 gives keeper2), as
    /// Stolon's chart computes it in a shell script.
    #[arg(long, conflicts_with = "uid")]
    pub uid_prefix: Option<String>,
    /// Keeper data directory; PostgreSQL's data directory is its `postgres` subdirectory.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// PostgreSQL's listen_addresses.
    #[arg(long)]
    pub pg_listen_address: String,
    /// The address the other components use to reach this instance (default: the listen address).
    #[arg(long)]
    pub pg_advertise_address: Option<String>,
    #[arg(long, default_value_t = 5432)]
    pub pg_port: u16,
    /// The port the other components use to reach this instance (default: --pg-port).
    #[arg(long)]
    pub pg_advertise_port: Option<u16>,
    /// Directory of initdb, pg_ctl, pg_basebackup (default: PATH).
    #[arg(long)]
    pub pg_bin_path: Option<PathBuf>,
    /// Superuser name (default: the OS user running PostgreSQL).
    #[arg(long)]
    pub pg_su_username: Option<String>,
    #[arg(long)]
    pub pg_su_password: Option<String>,
    /// Reread at every loop: a new password is set on the role (by the primary's keeper)
    /// without a restart, the previous one used until the instance holds the new one.
    #[arg(long)]
    pub pg_su_passwordfile: Option<PathBuf>,
    /// scram-sha-256, md5 or trust (no password).
    #[arg(long, default_value = "scram-sha-256", value_parser = AuthMethod::parse)]
    pub pg_su_auth_method: AuthMethod,
    #[arg(long)]
    pub pg_repl_username: String,
    /// scram-sha-256, md5 or trust (no password).
    #[arg(long, default_value = "scram-sha-256", value_parser = AuthMethod::parse)]
    pub pg_repl_auth_method: AuthMethod,
    #[arg(long)]
    pub pg_repl_password: Option<String>,
    /// Reread at every loop, as --pg-su-passwordfile.
    #[arg(long)]
    pub pg_repl_passwordfile: Option<PathBuf>,
    /// TLS of the connections to the primary (streaming, pg_basebackup, pg_rewind), as
    /// libpq's sslmode: disable, allow, prefer, require, verify-ca or verify-full.
    #[arg(long, default_value = "prefer", value_parser = SslMode::parse)]
    pub pg_repl_sslmode: SslMode,
    /// The CA that signed the primaries' certificates: required by verify-ca and
    /// verify-full.
    #[arg(long)]
    pub pg_repl_sslrootcert: Option<PathBuf>,
    /// Whether this keeper may be elected primary on failover.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub can_be_master: bool,
    /// Whether this keeper may be chosen as a synchronous standby.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub can_be_synchronous_replica: bool,
    /// Among equally advanced failover candidates, the higher priority wins; a lower
    /// priority never makes a less advanced standby win.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// When the keeper runs as root: the OS user PostgreSQL runs as.
    #[arg(long, default_value = "postgres")]
    pub pg_os_user: String,
    /// Where to serve Prometheus `/metrics` and the `/health`, `/primary` and `/replica`
    /// checks (host:port); not served when not given.
    #[arg(long)]
    pub metrics_listen_address: Option<std::net::SocketAddr>,
    /// When this keeper cannot store its info: `fence` stops a primary's postgres one
    /// heartbeat before the sentinel may replace it (failInterval less one heartbeat after
    /// its last stored info), so that clients connected to it directly cannot commit next
    /// to a new primary; `ignore` leaves postgres running, as Stolon does (only the proxies
    /// fence themselves).
    #[arg(long, value_enum, default_value_t = StoreLoss::Fence)]
    pub store_loss: StoreLoss,
}
