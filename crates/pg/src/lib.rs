//! One PostgreSQL instance, as the keeper manages it.
//!
//! This crate owns the rendering of `postgresql.conf`, `pg_hba.conf` and the standby
//! settings (pure functions, see [`conf`]), the wrappers around `initdb`, `pg_ctl` and
//! `pg_basebackup` (with timeouts, captured stderr, and an unprivileged OS user when the
//! keeper runs as root, see [`ctl`]), and the SQL probes that tell the keeper what its
//! instance really is (see [`probe`]).

pub mod conf;
pub mod ctl;
pub mod probe;
pub mod secret;

/// Failures of a PostgreSQL operation, each with what the tool printed.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        tool: String,
        status: String,
        /// The exit code, when the tool exited rather than being killed by a signal.
        code: Option<i32>,
        stderr: String,
    },
    /// pg_basebackup found no replication slot of this name on the server it copies from:
    /// the primary's keeper creates it once it sees the new standby among its followers.
    #[error("the replication slot {slot} does not exist on the upstream yet: {stderr}")]
    MissingSlot { slot: String, stderr: String },
    #[error("{tool} did not finish within {timeout:?}")]
    Timeout {
        tool: String,
        timeout: std::time::Duration,
    },
    #[error("io error on {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sql: {}", sql_error_text(.0))]
    Sql(#[from] tokio_postgres::Error),
    #[error("unexpected answer from postgres: {0}")]
    Unexpected(String),
}

/// A server's error with its message ("password authentication failed for user ..."),
/// which the client error's own text ("db error") leaves out.
fn sql_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

impl PgError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PgError {
        let what = what.into();
        move |source| PgError::Io { what, source }
    }
}
