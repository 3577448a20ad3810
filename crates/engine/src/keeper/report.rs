//! What a keeper observes of its instance, and what it reports of it to the sentinel: one
//! builder of the keeper info's `postgres_state`, for the daemon and the simulator alike.

use super::{Endpoint, Instance, LocalDb};
use std::collections::BTreeMap;
use stolon_cluster::{
    DataDisk, DbUid, Lsn, PgState, RemoteReplication, ShutdownCheckpoint, TimelineId,
    TimelineSwitch,
};

/// One look at the instance: what the reconciler decides on and what the report carries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observation {
    /// The db the data directory holds, from the keeper's state file; None when that file
    /// cannot be read (the keeper then refuses to act).
    pub local: Option<LocalDb>,
    pub instance: Instance,
    /// What postgres said of itself over SQL; None when it is not running or not answering.
    pub probe: Option<Probe>,
    /// Where the WAL of the stopped instance ends, when it was stopped for a switchover.
    pub shutdown_checkpoint: Option<ShutdownCheckpoint>,
    pub data_disk: Option<DataDisk>,
    /// A standby leader's progress behind the remote primary.
    pub remote: Option<RemoteReplication>,
    /// The history of the timeline a primary runs on (beyond the first).
    pub timelines_history: Vec<TimelineSwitch>,
    /// The parameters of the `postgresql.conf` the db's data directory came with.
    pub init_pg_parameters: BTreeMap<String, String>,
}

/// A running instance's answers over SQL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Probe {
    pub in_recovery: bool,
    pub system_id: String,
    pub timeline_id: TimelineId,
    /// The WAL position: written on a primary, received on a standby.
    pub position: Lsn,
    /// Our standbys that `pg_stat_replication` reports in sync.
    pub in_sync: Vec<DbUid>,
    pub oldest_wal_file: String,
}

/// The keeper info's report of its instance; None while the data directory holds no db.
pub fn pg_state(observation: &Observation, advertise: &Endpoint) -> Option<PgState> {
    let local = observation.local.as_ref()?;
    let db_uid = local.uid.clone()?;
    let probe = observation.probe.as_ref();
    Some(PgState {
        db_uid,
        generation: local.generation,
        healthy: probe.is_some() && !local.initializing,
        down: !observation.instance.running,
        in_recovery: probe.is_some_and(|p| p.in_recovery),
        system_id: probe.map(|p| p.system_id.clone()).unwrap_or_default(),
        timeline_id: probe.map(|p| p.timeline_id).unwrap_or_default(),
        x_log_pos: probe.map(|p| p.position).unwrap_or_default(),
        listen_address: advertise.host.clone(),
        port: advertise.port,
        synchronous_standbys: probe.map(|p| p.in_sync.clone()).unwrap_or_default(),
        older_wal_file: probe.map(|p| p.oldest_wal_file.clone()).unwrap_or_default(),
        timelines_history: observation.timelines_history.clone(),
        shutdown_checkpoint: observation.shutdown_checkpoint,
        init_pg_parameters: observation.init_pg_parameters.clone(),
        data_disk: observation.data_disk,
        remote: observation.remote.clone(),
    })
}

/// Two reports that differ only by WAL position (a standby leader's progress behind the
/// remote included), or by the room on a disk that is full in both or in neither: not worth
/// an early publish.
pub fn same_but_position(a: Option<&PgState>, b: Option<&PgState>) -> bool {
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
    use stolon_cluster::Generation;

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

    fn advertise() -> Endpoint {
        Endpoint {
            host: "10.0.0.1".into(),
            port: 5433,
        }
    }

    #[test]
    fn no_db_no_report_and_a_silent_instance_is_reported_unhealthy_with_no_positions() {
        let mut observation = Observation::default();
        assert_eq!(pg_state(&observation, &advertise()), None, "no state file");
        observation.local = Some(LocalDb::default());
        assert_eq!(pg_state(&observation, &advertise()), None, "no db yet");
        observation.local = Some(LocalDb {
            uid: Some(DbUid::new("db1")),
            generation: Generation(3),
            initializing: false,
            system_id: Some("42".into()),
        });
        observation.instance.running = true;
        let state = pg_state(&observation, &advertise()).unwrap();
        assert!(!state.healthy && !state.down && !state.in_recovery);
        assert_eq!((state.generation, state.x_log_pos), (Generation(3), Lsn(0)));
        assert!(state.system_id.is_empty() && state.synchronous_standbys.is_empty());
        assert_eq!(
            (state.listen_address.as_str(), state.port),
            ("10.0.0.1", 5433)
        );
    }

    #[test]
    fn an_answering_instance_reports_its_probe_and_a_half_made_one_is_never_healthy() {
        let probe = Probe {
            in_recovery: false,
            system_id: "42".into(),
            timeline_id: TimelineId(2),
            position: Lsn(4096),
            in_sync: vec![DbUid::new("db2")],
            oldest_wal_file: "000000020000000000000001".into(),
        };
        let mut observation = Observation {
            local: Some(LocalDb {
                uid: Some(DbUid::new("db1")),
                ..LocalDb::default()
            }),
            probe: Some(probe),
            ..Observation::default()
        };
        observation.instance.running = true;
        let state = pg_state(&observation, &advertise()).unwrap();
        assert!(state.healthy);
        assert_eq!(state.synchronous_standbys, vec![DbUid::new("db2")]);
        assert_eq!(
            (state.timeline_id, state.x_log_pos),
            (TimelineId(2), Lsn(4096))
        );
        assert_eq!(state.older_wal_file, "000000020000000000000001");
        observation.local.as_mut().unwrap().initializing = true;
        assert!(!pg_state(&observation, &advertise()).unwrap().healthy);
    }
}
