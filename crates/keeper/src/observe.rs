//! What the keeper sees of its instance at each loop: whether it runs, what it says about
//! itself over SQL, its files, its disk; and the upkeep done while looking (a restartpoint
//! that is due, the roles' passwords).

use crate::state::DbState;
use crate::{upstream_of, Keeper};
use stolon_cluster::DbUid;
use stolon_cluster::{Lsn, RemoteReplication, ShutdownCheckpoint, TimelineId, TimelineSwitch};
use stolon_engine::keeper::report::{Observation, Probe};
use stolon_engine::keeper::Instance;
use stolon_engine::keeper::SLOT_PREFIX;
use stolon_pg::probe::{Observed, UpstreamProgress};

impl Keeper {
    /// Looks at the instance against the cluster data of the machine's request.
    pub(crate) async fn observe(&mut self) -> Observation {
        let view = self.view.clone();
        let cd = view.as_deref().map(|v| &v.data);
        let initialized = self.pg.is_initialized();
        let running = match self.pg.is_running(self.request_timeout()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell whether postgres runs");
                false
            }
        };
        self.passwords.reread();
        let probe = if running {
            match self.local_conn().observe(SLOT_PREFIX).await {
                Ok(mut p) => {
                    p.timeline_id = self.standby_timeline.observe(&p);
                    self.restartpoint_if_due(&p);
                    self.sync_passwords(&p).await;
                    Some(p)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "postgres is running but does not answer");
                    None
                }
            }
        } else {
            None
        };
        let on_disk = self.pg.read_file("postgresql.conf");
        let following = upstream_of(on_disk.as_deref());
        let db = cd.and_then(|cd| cd.db_of_keeper(&self.uid).map(|db| (cd, db)));
        let config_stale = match db {
            Some((cd, db)) if initialized => {
                let (conf, hba) = self.desired_files(cd, db, following.as_ref());
                on_disk.as_deref() != Some(conf.as_str())
                    || self.pg.read_file("pg_hba.conf").as_deref() != Some(hba.as_str())
                    || !self.pg.alter_system_blocked()
            }
            _ => false,
        };
        let pending_restart = probe
            .as_ref()
            .is_some_and(|p| !p.pending_restart.is_empty());
        if let Some(p) = probe.as_ref().filter(|p| !p.pending_restart.is_empty()) {
            if self.last_pending_restart != p.pending_restart {
                tracing::warn!(parameters = %p.pending_restart.join(","), "postgres parameters changed that need a restart to take effect (automaticPgRestart restarts it)");
                self.last_pending_restart = p.pending_restart.clone();
            }
        }
        let halted = db.is_some_and(|(_, db)| db.spec.halt);
        let shutdown_checkpoint = if halted && initialized && !running {
            match self.pg.shutdown_checkpoint(self.request_timeout()).await {
                Ok(found) => found.and_then(|(timeline, location)| {
                    Some(ShutdownCheckpoint {
                        timeline_id: TimelineId(timeline),
                        location: Lsn::parse(&location)?,
                    })
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the control file");
                    None
                }
            }
        } else {
            None
        };
        let remote = match (&probe, db) {
            (Some(p), Some((_, db))) if p.in_recovery && db.spec.follows_remote() => {
                match self.local_conn().upstream_progress().await {
                    Ok(progress) => Some(remote_replication(&progress)),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the replication from the remote primary");
                        None
                    }
                }
            }
            _ => None,
        };
        let state = match self.data.db_state() {
            Ok(state) => Some(state),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot read our db state: refusing to act");
                None
            }
        };
        let timelines_history = probe
            .as_ref()
            .filter(|p| !p.in_recovery && p.timeline_id > 1)
            .and_then(|p| {
                self.pg
                    .read_file(&format!("pg_wal/{:08X}.history", p.timeline_id))
            })
            .map(|text| TimelineSwitch::parse_history(&text))
            .unwrap_or_default();
        Observation {
            local: state.as_ref().map(DbState::local_db),
            init_pg_parameters: state.map(|s| s.init_pg_parameters).unwrap_or_default(),
            remote,
            shutdown_checkpoint,
            data_disk: self.disk.measure(&self.data.root),
            timelines_history,
            instance: Instance {
                initialized,
                running,
                standby_signal: self.pg.has_standby_signal(),
                in_recovery: probe.as_ref().map(|p| p.in_recovery),
                following,
                slots: probe.as_ref().map(|p| p.slots.clone()),
                config_stale,
                system_id: if initialized {
                    self.pg.system_id()
                } else {
                    None
                },
                pending_restart,
            },
            probe: probe.as_ref().map(engine_probe),
        }
    }

    /// After a timeline switch a standby's control file names the old timeline until its
    /// next restartpoint: ask for one, so that its timeline is right after a restart too.
    pub(crate) fn restartpoint_if_due(&mut self, probe: &Observed) {
        if self.restartpoint.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let Some(first) = self.standby_timeline.restartpoint_due(probe) else {
            return;
        };
        if first {
            tracing::info!(
                control_file = probe.checkpoint_timeline,
                streaming = probe.timeline_id,
                "creating a restartpoint: the control file names an older timeline than the one streamed"
            );
        }
        let conn = self.local_conn();
        self.restartpoint = Some(tokio::spawn(async move {
            if let Err(e) = conn.checkpoint().await {
                tracing::warn!(error = %e, "restartpoint failed");
            }
        }));
    }

    /// Keeps the roles and the replication passfile in step with the password files; a
    /// new passfile takes effect at the walreceiver's next connection.
    pub(crate) async fn sync_passwords(&mut self, probe: &Observed) {
        let conn = self.local_conn();
        if self.passwords.sync(&conn, probe).await {
            if let Err(e) = self
                .pg
                .write_replication_passfile(&self.config.repl.role, self.passwords.passfile())
            {
                tracing::warn!(error = %e, "cannot write the replication passfile");
            }
        }
    }
}

/// What the engine reads of an instance's answers over SQL.
fn engine_probe(probe: &Observed) -> Probe {
    Probe {
        in_recovery: probe.in_recovery,
        system_id: probe.system_id.clone(),
        timeline_id: TimelineId(probe.timeline_id),
        position: Lsn::parse(&probe.lsn).unwrap_or_default(),
        in_sync: probe
            .in_sync
            .iter()
            .filter_map(|name| name.strip_prefix(SLOT_PREFIX))
            .map(DbUid::new)
            .collect(),
        oldest_wal_file: probe.oldest_wal_file.clone(),
    }
}

/// A standby leader's progress behind the remote primary, as its keeper info reports it.
fn remote_replication(progress: &UpstreamProgress) -> RemoteReplication {
    let lsn = |text: &Option<String>| text.as_deref().and_then(Lsn::parse).unwrap_or_default();
    RemoteReplication {
        sender: progress.sender.clone().unwrap_or_default(),
        received: lsn(&progress.received),
        replayed: lsn(&progress.replayed),
        lag_bytes: progress.lag_bytes.and_then(|b| u64::try_from(b).ok()),
        replay_delay_ms: progress
            .replay_delay_ms
            .and_then(|ms| u64::try_from(ms).ok()),
    }
}
