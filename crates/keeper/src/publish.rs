//! What the keeper tells the sentinel: its instance's state, published under a lease,
//! early when something other than the WAL position changed.

use crate::{in_sync_dbs, Keeper, Seen};
use std::time::Duration;
use stolon_cluster::{
    ClusterData, Generation, KeeperInfo, Lsn, PgState, RemoteReplication, TimelineId,
    TimelineSwitch,
};
use stolon_store::InfoKind;

impl Keeper {
    pub(crate) fn pg_state(&self, seen: &Seen) -> Option<PgState> {
        let db = self.data.db_state().ok()?;
        if db.uid.is_empty() {
            return None;
        }
        let probe = seen.probe.as_ref();
        Some(PgState {
            db_uid: db.uid.as_str().into(),
            generation: Generation(db.generation),
            healthy: probe.is_some() && !db.initializing,
            down: !seen.instance.running,
            in_recovery: probe.is_some_and(|p| p.in_recovery),
            system_id: probe.map(|p| p.system_id.clone()).unwrap_or_default(),
            timeline_id: TimelineId(probe.map(|p| p.timeline_id).unwrap_or(0)),
            x_log_pos: probe.and_then(|p| Lsn::parse(&p.lsn)).unwrap_or_default(),
            listen_address: self.config.advertise_address.clone(),
            port: self.config.advertise_port,
            synchronous_standbys: probe.map(in_sync_dbs).unwrap_or_default(),
            older_wal_file: probe.map(|p| p.oldest_wal_file.clone()).unwrap_or_default(),
            init_pg_parameters: db.init_pg_parameters.clone(),
            shutdown_checkpoint: seen.shutdown_checkpoint,
            data_disk: seen.data_disk,
            remote: seen.remote.as_ref().map(|r| {
                let lsn = |text: &Option<String>| {
                    text.as_deref().and_then(Lsn::parse).unwrap_or_default()
                };
                RemoteReplication {
                    sender: r.sender.clone().unwrap_or_default(),
                    received: lsn(&r.received),
                    replayed: lsn(&r.replayed),
                    lag_bytes: r.lag_bytes.and_then(|b| u64::try_from(b).ok()),
                    replay_delay_ms: r.replay_delay_ms.and_then(|ms| u64::try_from(ms).ok()),
                }
            }),
            timelines_history: probe
                .filter(|p| !p.in_recovery && p.timeline_id > 1)
                .and_then(|p| {
                    self.pg
                        .read_file(&format!("pg_wal/{:08X}.history", p.timeline_id))
                })
                .map(|text| TimelineSwitch::parse_history(&text))
                .unwrap_or_default(),
        })
    }

    pub(crate) async fn publish(
        &self,
        cd: &ClusterData,
        state: Option<PgState>,
        heartbeat: Duration,
    ) -> anyhow::Result<()> {
        let info = KeeperInfo {
            info_uid: stolon_daemon::random_uid(),
            uid: self.uid.clone(),
            cluster_uid: cd.cluster.uid.clone(),
            boot_uuid: self.boot_uuid.clone(),
            can_be_master: self.config.can_be_master,
            can_be_synchronous_replica: self.config.can_be_synchronous_replica,
            priority: self.config.priority,
            postgres_state: state,
        };
        let ttl = (3 * heartbeat).max(Duration::from_secs(3));
        stolon_store::publish_info(
            self.store.as_ref(),
            InfoKind::Keeper,
            self.uid.as_str(),
            &info,
            ttl,
        )
        .await?;
        Ok(())
    }
}

/// Two reports that differ only by WAL position (a standby leader's progress behind the
/// remote included), or by the room on a disk that is full in both or in neither: not worth
/// an early publish.
pub(crate) fn same_but_position(a: Option<&PgState>, b: Option<&PgState>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            PgState {
                x_log_pos: b.x_log_pos,
                data_disk: b.data_disk,
                remote: b.remote.clone(),
                ..a.clone()
            } == *b
                && a.data_disk.map(|d| d.full()) == b.data_disk.map(|d| d.full())
                && a.remote.as_ref().map(|r| &r.sender) == b.remote.as_ref().map(|r| &r.sender)
        }
        (None, None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stolon_cluster::DataDisk;

    fn state(x_log_pos: u64, available_bytes: u64) -> PgState {
        PgState {
            x_log_pos: Lsn(x_log_pos),
            data_disk: Some(DataDisk {
                available_bytes,
                size_bytes: 1 << 30,
            }),
            ..PgState::default()
        }
    }

    #[test]
    fn only_a_new_position_or_room_is_not_worth_an_early_publish() {
        let before = state(100, 500 << 20);
        let same = |after: &PgState| same_but_position(Some(&before), Some(after));
        assert!(same(&state(200, 400 << 20)));
        assert!(!same(&state(100, 1 << 20)), "the disk became full");
        assert!(!same(&PgState {
            healthy: true,
            ..before.clone()
        }));
        assert!(!same(&PgState {
            data_disk: None,
            ..before.clone()
        }));
        assert!(same_but_position(None, None));
        assert!(!same_but_position(Some(&before), None));
    }
}
