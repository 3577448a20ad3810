//! SQL against the local instance: what it is, and the few changes made through SQL.

use crate::secret::Password;
use crate::PgError;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};

/// How the keeper reaches its own instance: the unix socket, as the superuser.
#[derive(Debug, Clone)]
pub struct LocalConn {
    pub socket_dir: String,
    pub port: u16,
    pub user: String,
    pub password: Password,
    pub timeout: Duration,
}

/// What the instance says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub in_recovery: bool,
    pub system_id: String,
    /// A primary's current timeline; a standby's is `receiving` or, when its walreceiver
    /// does not run, `checkpoint_timeline`.
    pub timeline_id: u32,
    /// A standby's walreceiver: the timeline of the last WAL it received, if it runs.
    pub receiving: Option<u32>,
    /// The timeline of the last checkpoint (a standby's last restartpoint): it lags behind
    /// a timeline switch until the next one.
    pub checkpoint_timeline: u32,
    /// When the postmaster started: a standby's timeline never goes back while it runs.
    pub postmaster_started: String,
    pub lsn: String,
    pub slots: Vec<String>,
    /// Application names of the standbys in sync now (`pg_stat_replication`).
    pub in_sync: Vec<String>,
    /// The oldest WAL segment file still in `pg_wal`.
    pub oldest_wal_file: String,
    /// Parameters changed in the configuration that only a restart applies.
    pub pending_restart: Vec<String>,
}

/// How far a standby is behind the primary it follows, as that primary's messages tell.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamProgress {
    /// `host:port` of the walsender it streams from; none when it does not stream.
    pub sender: Option<String>,
    pub received: Option<String>,
    pub replayed: Option<String>,
    /// WAL the primary had at its last message that this standby has not replayed.
    pub lag_bytes: Option<i64>,
    /// 0 when it has replayed all the primary had at its last message; otherwise (and
    /// when it does not stream) the age of the last replayed commit.
    pub replay_delay_ms: Option<i64>,
}

impl LocalConn {
    /// Logs in with the current password or, while a rotation is under way, with one it
    /// replaced that the instance still holds.
    pub async fn connect(&self) -> Result<Client, PgError> {
        let mut candidates = self.password.candidates().into_iter().peekable();
        loop {
            let password = candidates.next().unwrap_or_default();
            match self.connect_with(&password).await {
                Err(PgError::Sql(e))
                    if e.code() == Some(&SqlState::INVALID_PASSWORD)
                        && candidates.peek().is_some() => {}
                answer => return answer,
            }
        }
    }

    async fn connect_with(&self, password: &str) -> Result<Client, PgError> {
        let mut config = Config::new();
        config
            .host_path(&self.socket_dir)
            .port(self.port)
            .user(&self.user)
            .password(password)
            .dbname("postgres")
            .application_name("stolon-keeper")
            .connect_timeout(self.timeout);
        let (client, connection) = tokio::time::timeout(self.timeout, config.connect(NoTls))
            .await
            .map_err(|_| {
                PgError::Unexpected("connection to the local instance timed out".into())
            })??;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, PgError> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| PgError::Unexpected(format!("query timed out after {:?}", self.timeout)))?
            .map_err(PgError::from)
    }

    /// Whether the instance is in recovery: the cheapest question that proves it accepts
    /// connections and runs queries.
    pub async fn in_recovery(&self) -> Result<bool, PgError> {
        let client = self.connect().await?;
        let row = self
            .bounded(client.query_one("select pg_is_in_recovery()", &[]))
            .await?;
        Ok(row.get(0))
    }

    pub async fn observe(&self, slot_prefix: &str) -> Result<Observed, PgError> {
        let client = self.connect().await?;
        // A primary's timeline comes from its current WAL file name. A standby's is the
        // walreceiver's while it streams; its checkpoint's lags behind a timeline switch.
        let row = self
            .bounded(client.query_one(
                "select pg_is_in_recovery(),
                        (select system_identifier::text from pg_control_system()),
                        case when pg_is_in_recovery()
                             then (select timeline_id from pg_control_checkpoint())
                             else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
                        end,
                        case when pg_is_in_recovery()
                             then greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::text
                             else pg_current_wal_lsn()::text
                        end,
                        (select min(name) from pg_ls_waldir() where name ~ '^[0-9A-F]{24}$'),
                        (select received_tli from pg_stat_wal_receiver where received_tli > 0),
                        (select timeline_id from pg_control_checkpoint()),
                        pg_postmaster_start_time()::text",
                &[],
            ))
            .await?;
        let slots = self
            .bounded(client.query(
                "select slot_name::text from pg_replication_slots
                  where not temporary and starts_with(slot_name::text, $1) order by 1",
                &[&slot_prefix],
            ))
            .await?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
        let in_sync = self
            .bounded(client.query(
                "select application_name::text from pg_stat_replication
                  where sync_state in ('sync', 'quorum') order by 1",
                &[],
            ))
            .await?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
        let pending_restart = self
            .bounded(client.query(
                "select name::text from pg_settings where pending_restart order by 1",
                &[],
            ))
            .await?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
        let timeline = |value: i32| {
            u32::try_from(value).map_err(|_| PgError::Unexpected(format!("timeline {value}")))
        };
        let receiving = row.get::<_, Option<i32>>(5).map(timeline).transpose()?;
        let in_recovery: bool = row.get(0);
        Ok(Observed {
            in_recovery,
            system_id: row.get(1),
            timeline_id: match receiving {
                Some(tli) if in_recovery => tli,
                _ => timeline(row.get(2))?,
            },
            receiving: receiving.filter(|_| in_recovery),
            checkpoint_timeline: timeline(row.get(6))?,
            postmaster_started: row.get(7),
            lsn: row
                .get::<_, Option<String>>(3)
                .unwrap_or_else(|| "0/0".into()),
            slots,
            in_sync,
            oldest_wal_file: row.get::<_, Option<String>>(4).unwrap_or_default(),
            pending_restart,
        })
    }

    /// A standby's progress behind its upstream (a standby leader's behind the remote).
    pub async fn upstream_progress(&self) -> Result<UpstreamProgress, PgError> {
        let client = self.connect().await?;
        let row = self
            .bounded(client.query_one(
                "with r as (select sender_host, sender_port, latest_end_lsn
                              from pg_stat_wal_receiver where status = 'streaming')
                 select (select sender_host || ':' || sender_port from r),
                        pg_last_wal_receive_lsn()::text,
                        pg_last_wal_replay_lsn()::text,
                        (select greatest(pg_wal_lsn_diff(latest_end_lsn, pg_last_wal_replay_lsn()), 0)::bigint from r),
                        case when (select latest_end_lsn from r) <= pg_last_wal_replay_lsn() then 0::bigint
                             else (extract(epoch from now() - pg_last_xact_replay_timestamp()) * 1000)::bigint
                        end",
                &[],
            ))
            .await?;
        Ok(UpstreamProgress {
            sender: row.get(0),
            received: row.get(1),
            replayed: row.get(2),
            lag_bytes: row.get(3),
            replay_delay_ms: row.get(4),
        })
    }

    /// Writes and flushes one commit record without waiting for any standby: a primary
    /// releases commits waiting for a synchronous standby only when that standby replies,
    /// and it replies when it has flushed something new.
    pub async fn nudge_standbys(&self) -> Result<(), PgError> {
        let client = self.connect().await?;
        self.bounded(client.batch_execute(
            "begin; set local synchronous_commit = local; select txid_current(); commit;",
        ))
        .await
    }

    /// Flushes dirty buffers now, so that the shutdown that follows has little left to write.
    pub async fn checkpoint(&self) -> Result<(), PgError> {
        let client = self.connect().await?;
        self.bounded(client.batch_execute("checkpoint")).await
    }

    pub async fn create_slot(&self, name: &str) -> Result<(), PgError> {
        let client = self.connect().await?;
        self.bounded(client.execute("select pg_create_physical_replication_slot($1)", &[&name]))
            .await
            .map(drop)
    }

    pub async fn drop_slot(&self, name: &str) -> Result<(), PgError> {
        let client = self.connect().await?;
        self.bounded(client.execute("select pg_drop_replication_slot($1)", &[&name]))
            .await
            .map(drop)
    }

    /// Gives the replication user its role (the superuser itself when they are the same),
    /// its password stored for `auth`.
    pub async fn setup_roles(
        &self,
        repl_user: &str,
        repl_password: &str,
        auth: crate::conf::AuthMethod,
    ) -> Result<(), PgError> {
        let client = self.connect().await?;
        let sql = if repl_user == self.user {
            format!("alter role {} replication", quote_ident(repl_user))
        } else {
            let password = auth
                .verifier(repl_user, repl_password)
                .map(|v| format!(" password {}", quote_literal(&v)))
                .unwrap_or_default();
            format!(
                "create role {} login replication{password}",
                quote_ident(repl_user)
            )
        };
        self.bounded(client.batch_execute(&sql)).await
    }

    /// What each of `roles` stores as its password (`None`: no password, or no such role).
    pub async fn role_passwords(
        &self,
        roles: &[&str],
    ) -> Result<Vec<(String, Option<String>)>, PgError> {
        let client = self.connect().await?;
        let names: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        let rows = self
            .bounded(client.query(
                "select rolname::text, rolpassword from pg_authid where rolname = any($1)",
                &[&names],
            ))
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Stores `verifier` as `role`'s password. The change waits for no synchronous
    /// standby: one lost in a failover is set again by the next primary's keeper, which
    /// finds its role holding another password than its file.
    pub async fn set_role_password(&self, role: &str, verifier: &str) -> Result<(), PgError> {
        let client = self.connect().await?;
        let sql = format!(
            "begin; set local synchronous_commit = local; alter role {} password {}; commit;",
            quote_ident(role),
            quote_literal(verifier)
        );
        self.bounded(client.batch_execute(&sql)).await
    }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Asks a (remote) primary for a checkpoint. A freshly promoted primary records its new
/// timeline in its control file only at its next checkpoint, and pg_rewind reads the
/// timeline from there: without it, pg_rewind sees no divergence and does nothing.
pub async fn checkpoint(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    timeout: Duration,
) -> Result<(), PgError> {
    let mut config = Config::new();
    config
        .host(host)
        .port(port)
        .user(user)
        .password(password)
        .dbname("postgres")
        .application_name("stolon-keeper")
        .connect_timeout(timeout);
    let (client, connection) = tokio::time::timeout(timeout, config.connect(NoTls))
        .await
        .map_err(|_| PgError::Unexpected("connection to the primary timed out".into()))??;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    tokio::time::timeout(timeout, client.batch_execute("checkpoint"))
        .await
        .map_err(|_| PgError::Unexpected("checkpoint timed out".into()))?
        .map_err(PgError::from)
}
