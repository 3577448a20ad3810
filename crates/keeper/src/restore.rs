//! initMode pitr: the operator's dataRestoreCommand fills the data directory, and
//! PostgreSQL replays the archive before the instance starts as the cluster's primary; in
//! a standby cluster, the restored instance starts as the standby leader instead.

use crate::Keeper;
use anyhow::Context;
use std::time::Duration;
use stolon_cluster::{ClusterData, DbUid};
use stolon_pg::conf::{render_archive_recovery, ArchiveRecovery};
use tokio::time::Instant;

/// How long `pg_ctl start` may wait for a recovering instance to accept connections when
/// syncTimeout sets no limit: replaying to a consistent state can take long.
const RECOVERY_START_LIMIT: Duration = Duration::from_secs(24 * 3600);
/// How often a long recovery logs that it goes on.
const RECOVERY_PROGRESS_EVERY: Duration = Duration::from_secs(10);

impl Keeper {
    /// initMode pitr: the operator's dataRestoreCommand fills the emptied data directory,
    /// PostgreSQL replays the archive up to the target (or its end) and promotes itself,
    /// and the instance is stopped, to start next as the cluster's primary.
    pub(crate) async fn restore(
        &mut self,
        cd: Option<&ClusterData>,
        db: &DbUid,
    ) -> anyhow::Result<()> {
        let pitr = self
            .my_db(cd)?
            .spec
            .pitr_config
            .clone()
            .context("initMode pitr, but the db spec has no pitrConfig")?;
        let command = pitr
            .data_restore_command
            .as_deref()
            .map(|c| expand_data_dir(c, &self.pg.pgdata))
            .context("pitrConfig.dataRestoreCommand is missing")?;
        tracing::info!(db = %db, "restoring the database cluster (initMode pitr)");
        self.begin_new_db(db).await?;
        self.pg.wipe_and_create_pgdata()?;
        tracing::info!(command = %command, "running dataRestoreCommand");
        let restored = self
            .pg
            .run_shell(&command, "dataRestoreCommand", self.sync_timeout())
            .await
            .map_err(anyhow::Error::from)
            .and_then(|()| {
                anyhow::ensure!(
                    self.pg.is_initialized(),
                    "dataRestoreCommand left no database cluster in the data directory"
                );
                Ok(())
            });
        if let Err(e) = restored {
            // A half restored directory must never pass for data later.
            self.pg.wipe_and_create_pgdata()?;
            return Err(e);
        }
        // Copying a backup directory copies its mode too, and PostgreSQL insists on 0700.
        self.pg.secure_pgdata()?;
        // The backup's own parameters.
        self.record_initial_parameters(db)?;
        if self.my_db(cd)?.spec.follows_remote() {
            return self.follow_remote_after_restore(cd, db).await;
        }
        // A backup of a standby carries its signal: this instance recovers to be a primary.
        self.pg.remove_file("standby.signal")?;
        self.pg.remove_file("recovery.signal")?;
        self.write_files(cd)?;
        let restore_command = pitr
            .archive_recovery_settings
            .as_ref()
            .and_then(|a| a.restore_command.as_deref());
        if let Some(restore_command) = restore_command {
            let targets = pitr.recovery_target_settings.unwrap_or_default();
            let conf = self.pg.read_file("postgresql.conf").unwrap_or_default();
            let recovery = render_archive_recovery(&ArchiveRecovery {
                restore_command,
                targets: [
                    ("recovery_target", &targets.recovery_target),
                    ("recovery_target_lsn", &targets.recovery_target_lsn),
                    ("recovery_target_name", &targets.recovery_target_name),
                    ("recovery_target_time", &targets.recovery_target_time),
                    ("recovery_target_xid", &targets.recovery_target_xid),
                ]
                .into_iter()
                .filter_map(|(name, value)| value.as_deref().map(|v| (name, v)))
                .collect(),
                timeline: targets.recovery_target_timeline.as_deref(),
            });
            self.pg
                .write_file("postgresql.conf", &format!("{conf}{recovery}"))?;
            self.pg.write_file("recovery.signal", "")?;
        }
        let limit = self.sync_timeout().unwrap_or(RECOVERY_START_LIMIT);
        tracing::info!(
            archive = restore_command.is_some(),
            "starting database to recover it"
        );
        self.pg.start(limit).await?;
        self.await_recovery_end().await?;
        tracing::info!("recovery finished: stopping the database to start it as the primary");
        self.pg.stop(self.db_wait_ready_timeout()).await?;
        self.finish_new_db(db)?;
        tracing::info!(db = %db, "database cluster restored");
        Ok(())
    }

    /// A standby cluster's first db: the restored backup becomes the standby leader, a
    /// standby of the remote primary (or of its archive) that never promotes by itself.
    async fn follow_remote_after_restore(
        &mut self,
        cd: Option<&ClusterData>,
        db: &DbUid,
    ) -> anyhow::Result<()> {
        self.pg.remove_file("recovery.signal")?;
        self.pg.write_file("standby.signal", "")?;
        self.write_files(cd)?;
        let limit = self.sync_timeout().unwrap_or(RECOVERY_START_LIMIT);
        tracing::info!(
            "starting the restored database as the standby leader, following the remote primary"
        );
        self.pg.start(limit).await?;
        self.finish_new_db(db)?;
        tracing::info!(db = %db, "database cluster restored: it follows the remote primary");
        Ok(())
    }

    /// Waits, showing progress, until the instance has left recovery.
    async fn await_recovery_end(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut reported = Instant::now();
        loop {
            if !self.pg.is_running(self.request_timeout()).await? {
                anyhow::bail!(
                    "postgres stopped during recovery (a recovery target never reached?): {}",
                    self.pg.log_tail()
                );
            }
            if let Ok(false) = self.local_conn().in_recovery().await {
                return Ok(());
            }
            if self
                .sync_timeout()
                .is_some_and(|limit| started.elapsed() > limit)
            {
                anyhow::bail!("recovery did not finish within syncTimeout");
            }
            if reported.elapsed() >= RECOVERY_PROGRESS_EVERY {
                tracing::info!(elapsed = ?started.elapsed(), "still recovering from the archive");
                reported = Instant::now();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// A dataRestoreCommand with `%d` replaced by the data directory and `%%` by `%`.
fn expand_data_dir(command: &str, data_dir: &std::path::Path) -> String {
    let mut out = String::new();
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('%', Some('d')) => {
                out.push_str(&data_dir.to_string_lossy());
                chars.next();
            }
            ('%', Some('%')) => {
                out.push('%');
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::expand_data_dir;
    use std::path::Path;

    #[test]
    fn data_restore_command_names_the_data_directory() {
        let dir = Path::new("/var/lib/k/postgres");
        assert_eq!(
            expand_data_dir("cp -a /backup/. %d && echo 100%% > %d/done", dir),
            "cp -a /backup/. /var/lib/k/postgres && echo 100% > /var/lib/k/postgres/done"
        );
        assert_eq!(
            expand_data_dir("tar xf b.tar -C %d %", dir),
            "tar xf b.tar -C /var/lib/k/postgres %"
        );
        assert_eq!(expand_data_dir("%%d", dir), "%d");
    }
}
