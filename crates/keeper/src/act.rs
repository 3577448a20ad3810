//! The keeper's actions on its instance: each step the engine decides (start, stop,
//! promote, initdb, base backup or rewind, reconfigure, ...), carried out.

use crate::state::DbState;
use crate::Keeper;
use std::time::Duration;
use stolon_cluster::{ClusterData, DbRole};
use stolon_engine::keeper::{Action, Endpoint};
use stolon_pg::ctl::{InitOptions, Upstream};
use stolon_pg::PgError;
use tokio::time::Instant;

impl Keeper {
    pub(crate) async fn act(
        &mut self,
        cd: Option<&ClusterData>,
        action: &Action,
    ) -> anyhow::Result<()> {
        match action {
            Action::Idle | Action::Wait(_) => {}
            Action::Stop(reason) => {
                tracing::info!("{reason}: stopping database");
                self.pg.stop(self.db_wait_ready_timeout()).await?;
            }
            Action::InitNew { db } => {
                tracing::info!(db = %db, "initializing the database cluster");
                self.begin_new_db(db).await?;
                self.pg.wipe_and_create_pgdata()?;
                let options = self
                    .my_db(cd)?
                    .spec
                    .new_config
                    .as_ref()
                    .map(|c| InitOptions {
                        su_auth: self.config.su.auth,
                        locale: c.locale.clone(),
                        encoding: c.encoding.clone(),
                        data_checksums: c.data_checksums.unwrap_or(false),
                    })
                    .unwrap_or(InitOptions {
                        su_auth: self.config.su.auth,
                        ..Default::default()
                    });
                self.pg
                    .initdb(
                        &self.config.su.role,
                        &self.config.su.password.current(),
                        &options,
                        self.db_wait_ready_timeout(),
                    )
                    .await?;
                // initdb's own choices for this machine.
                self.record_initial_parameters(db)?;
                self.write_files(cd)?;
                tracing::info!("starting database");
                self.pg.start(self.db_wait_ready_timeout()).await?;
                tracing::info!("setting roles");
                self.local_conn()
                    .setup_roles(
                        &self.config.repl.role,
                        &self.config.repl.password.current(),
                        self.config.repl.auth,
                    )
                    .await?;
                self.finish_new_db(db)?;
                tracing::info!(db = %db, "database cluster initialized");
            }
            Action::Restore { db } => self.restore(cd, db).await?,
            Action::Adopt { db } => {
                tracing::info!(db = %db, "adopting the existing database cluster (initMode existing)");
                let init_parameters = stolon_pg::conf::parse_parameters(
                    &self.pg.read_file("postgresql.conf").unwrap_or_default(),
                );
                let previous = self.data.db_state()?;
                let init_parameters = if previous.uid.is_empty() {
                    init_parameters
                } else {
                    // Our own former db: its parameters are the spec's, already in our file.
                    previous.init_pg_parameters
                };
                self.data.save_db_state(&DbState {
                    uid: db.to_string(),
                    generation: 0,
                    initializing: false,
                    system_id: self.pg.system_id().unwrap_or_default(),
                    init_pg_parameters: init_parameters,
                })?;
                self.write_files(cd)?;
                if self.pg.is_running(self.request_timeout()).await? {
                    self.pg.reload(self.request_timeout()).await?;
                }
            }
            Action::Resync {
                db,
                from,
                slot,
                rewind,
            } => {
                tracing::info!(db = %db, from = %format!("{}:{}", from.host, from.port), "resyncing the database cluster");
                self.begin_new_db(db).await?;
                let started = Instant::now();
                if !(*rewind && self.try_rewind(from).await) {
                    self.pg.wipe_and_create_pgdata()?;
                    tracing::info!(slot = %slot, "syncing from followed db: running pg_basebackup");
                    let copied = self
                        .pg
                        .basebackup(
                            &Upstream {
                                host: &from.host,
                                port: from.port,
                                user: &self.config.repl.role,
                                password: &self.config.repl.password.current(),
                                tls: &self.config.repl_tls,
                            },
                            slot,
                            Duration::from_secs(24 * 3600),
                        )
                        .await;
                    match copied {
                        // The primary's keeper creates our slot when it sees us among its
                        // followers; until then there is nothing to copy from.
                        Err(PgError::MissingSlot { .. }) => {
                            tracing::info!(slot = %slot, "the primary has not created our replication slot yet: retrying");
                            return Ok(());
                        }
                        copied => copied?,
                    }
                }
                // Both tools leave the source's configuration behind: ours replaces it.
                self.pg.write_file("standby.signal", "")?;
                self.pg.remove_file("postgresql.auto.conf")?;
                self.write_files(cd)?;
                self.finish_new_db(db)?;
                tracing::info!(db = %db, elapsed = ?started.elapsed(), "sync succeeded");
            }
            Action::Start { .. } => {
                self.write_files(cd)?;
                tracing::info!(standby = self.pg.has_standby_signal(), "starting database");
                self.pg.start(self.db_wait_ready_timeout()).await?;
            }
            Action::Promote => {
                tracing::info!("promoting to master");
                self.pg.promote(self.db_wait_ready_timeout()).await?;
                self.write_files(cd)?;
                self.pg.reload(self.request_timeout()).await?;
            }
            Action::Halt => {
                tracing::info!("switchover: checkpoint, then stopping the old primary");
                if let Err(e) = self.local_conn().checkpoint().await {
                    // Only the shutdown gets longer: its own checkpoint writes everything.
                    tracing::warn!(error = %e, "checkpoint before the switchover failed");
                }
                self.pg.stop(self.db_wait_ready_timeout()).await?;
            }
            Action::Reconfigure => {
                tracing::info!("postgres parameters changed, reloading postgres instance");
                self.write_files(cd)?;
                self.pg.reload(self.request_timeout()).await?;
                let db = self.my_db(cd)?;
                if db.spec.role == DbRole::Master && db.spec.synchronous_replication {
                    // Commits waiting for a standby just listed go as soon as it replies.
                    if let Err(e) = self.local_conn().nudge_standbys().await {
                        tracing::warn!(error = %e, "cannot nudge the synchronous standbys");
                    }
                }
            }
            Action::Restart => {
                tracing::info!(parameters = %self.last_pending_restart.join(","), "restarting postgres to apply parameters that need it (automaticPgRestart)");
                self.write_files(cd)?;
                self.pg.stop(self.db_wait_ready_timeout()).await?;
                self.pg.start(self.db_wait_ready_timeout()).await?;
            }
            Action::SyncSlots { create, drop } => {
                let conn = self.local_conn();
                for slot in create {
                    tracing::info!(slot = %slot, "creating replication slot");
                    conn.create_slot(slot).await?;
                }
                for slot in drop {
                    tracing::info!(slot = %slot, "dropping replication slot");
                    // A standby still attached keeps its slot busy; the next loop retries.
                    if let Err(e) = conn.drop_slot(slot).await {
                        tracing::warn!(slot = %slot, error = %e, "cannot drop replication slot yet");
                    }
                }
            }
            Action::MarkApplied(generation) => {
                let mut state = self.data.db_state()?;
                state.generation = generation.0;
                self.data.save_db_state(&state)?;
                tracing::info!(generation = %generation, "db spec applied");
            }
        }
        Ok(())
    }

    /// pg_rewind from the primary; false (logged) when it fails, for a base backup instead.
    async fn try_rewind(&self, from: &Endpoint) -> bool {
        tracing::info!("syncing using pg_rewind");
        let _ = self.pg.remove_file("postgresql.auto.conf");
        let su_password = self.config.su.password.current();
        let source = Upstream {
            host: &from.host,
            port: from.port,
            user: &self.config.su.role,
            password: &su_password,
            tls: &self.config.repl_tls,
        };
        if let Err(e) = stolon_pg::probe::checkpoint(
            source.host,
            source.port,
            source.user,
            source.password,
            self.db_wait_ready_timeout(),
        )
        .await
        {
            tracing::warn!(error = %e, "cannot checkpoint the primary before pg_rewind: falling back to pg_basebackup");
            return false;
        }
        match self
            .pg
            .rewind(
                &source,
                self.db_wait_ready_timeout().max(Duration::from_secs(600)),
            )
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "error syncing with pg_rewind: falling back to pg_basebackup");
                false
            }
        }
    }
}
