use crate::ids::{
    ClusterUid, DbUid, Generation, KeeperUid, Lsn, ProxyUid, SentinelUid, TimelineId,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What a keeper publishes about itself, under a lease, every loop. `info_uid` changes on
/// every publish: the sentinel reads a keeper as alive while it keeps changing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeeperInfo {
    #[serde(rename = "infoUID")]
    pub info_uid: String,
    pub uid: KeeperUid,
    #[serde(rename = "clusterUID")]
    pub cluster_uid: ClusterUid,
    #[serde(rename = "bootUUID")]
    pub boot_uuid: String,
    pub can_be_master: bool,
    #[serde(default = "yes")]
    pub can_be_synchronous_replica: bool,
    /// Among equally advanced failover candidates, the higher priority wins.
    #[serde(default)]
    pub priority: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_state: Option<PgState>,
}

fn yes() -> bool {
    true
}

/// The keeper's honest view of its local instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PgState {
    #[serde(rename = "uid")]
    pub db_uid: DbUid,
    /// The db spec generation the keeper has fully applied.
    pub generation: Generation,
    /// Running and answering queries.
    pub healthy: bool,
    /// No postgres runs at all (crashed, stopped, failing to start): the keeper restarts
    /// it, and the sentinel gives it dbRestartTimeout. One that runs but does not answer is
    /// only unhealthy, and judged with failInterval.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub down: bool,
    pub in_recovery: bool,
    #[serde(rename = "systemID")]
    pub system_id: String,
    #[serde(rename = "timelineID")]
    pub timeline_id: TimelineId,
    pub x_log_pos: Lsn,
    pub listen_address: String,
    pub port: u16,
    /// On a primary: our standbys that `pg_stat_replication` reports in sync now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub synchronous_standbys: Vec<DbUid>,
    /// The oldest WAL segment still in `pg_wal`: a standby needing older WAL cannot catch up.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub older_wal_file: String,
    /// On a primary: where each earlier timeline ended (its history file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timelines_history: Vec<TimelineSwitch>,
    /// When postgres is stopped after a clean shutdown: where its WAL ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_checkpoint: Option<ShutdownCheckpoint>,
    /// The parameters initdb wrote, for `mergePgParameters`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub init_pg_parameters: std::collections::BTreeMap<String, String>,
    /// The filesystem of the keeper's data directory; absent from keepers that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_disk: Option<DataDisk>,
    /// A standby cluster's standby leader: how it keeps up with the remote primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteReplication>,
}

/// How far a standby leader is behind the remote primary it follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RemoteReplication {
    /// `host:port` its walreceiver streams from now; empty when it does not stream (an
    /// archive-only standby, or the remote unreachable).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sender: String,
    pub received: Lsn,
    pub replayed: Lsn,
    /// WAL the remote primary had, at its last message, that this db has not replayed;
    /// unknown when it does not stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
    /// How long ago the last replayed transaction committed on the remote primary, or 0
    /// when everything received is replayed; unknown before the first replayed commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_delay_ms: Option<u64>,
}

/// Room on the filesystem that holds the data directory, as an unprivileged user sees it
/// (the blocks reserved for root are not postgres's to use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataDisk {
    pub available_bytes: u64,
    pub size_bytes: u64,
}

impl DataDisk {
    /// One WAL segment at its default size: with less room postgres can neither start a
    /// new segment nor, soon after, extend a table, and every write fails.
    pub const FULL_BELOW: u64 = 16 << 20;

    pub fn full(&self) -> bool {
        self.available_bytes < Self::FULL_BELOW
    }
}

/// The last record a cleanly stopped postgres wrote: its WAL ends with this record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShutdownCheckpoint {
    #[serde(rename = "timelineID")]
    pub timeline_id: TimelineId,
    pub location: Lsn,
}

/// One line of a timeline history file: timeline `timeline_id` ended at `switch_point`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimelineSwitch {
    #[serde(rename = "timelineID")]
    pub timeline_id: TimelineId,
    pub switch_point: Lsn,
}

impl TimelineSwitch {
    /// Parses PostgreSQL's `NNNNNNNN.history` file: `timeline<TAB>X/Y<TAB>reason` lines.
    pub fn parse_history(text: &str) -> Vec<TimelineSwitch> {
        text.lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let timeline = parts.next()?.parse().ok()?;
                let switch_point = Lsn::parse(parts.next()?)?;
                Some(TimelineSwitch {
                    timeline_id: TimelineId(timeline),
                    switch_point,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_history_file() {
        let text =
            "1\t0/4024A10\tno recovery target specified\n\n2\t0/5000000\tbefore 2000\n# comment\n";
        assert_eq!(
            TimelineSwitch::parse_history(text),
            vec![
                TimelineSwitch {
                    timeline_id: TimelineId(1),
                    switch_point: Lsn(0x402_4A10)
                },
                TimelineSwitch {
                    timeline_id: TimelineId(2),
                    switch_point: Lsn(0x500_0000)
                },
            ]
        );
    }

    #[test]
    fn a_disk_is_full_below_one_wal_segment_of_room() {
        let disk = |available_bytes| DataDisk {
            available_bytes,
            size_bytes: 1 << 30,
        };
        assert!(disk(0).full());
        assert!(disk(DataDisk::FULL_BELOW - 1).full());
        assert!(!disk(DataDisk::FULL_BELOW).full());
        assert!(!disk(1 << 29).full());
    }

    #[test]
    fn the_data_disk_is_published_and_may_be_missing() {
        let state = PgState {
            data_disk: Some(DataDisk {
                available_bytes: 5,
                size_bytes: 10,
            }),
            ..PgState::default()
        };
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!(
            json["dataDisk"],
            serde_json::json!({"availableBytes": 5, "sizeBytes": 10})
        );
        let mut older = json;
        older.as_object_mut().unwrap().remove("dataDisk");
        let parsed: PgState = serde_json::from_value(older).unwrap();
        assert_eq!(parsed.data_disk, None);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SentinelInfo {
    #[serde(rename = "UID")]
    pub uid: SentinelUid,
}

/// What a proxy publishes after each successful check: the proxy generation it has applied
/// is its acknowledgement that it no longer routes to an old primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyInfo {
    #[serde(rename = "infoUID")]
    pub info_uid: String,
    #[serde(rename = "UID")]
    pub uid: ProxyUid,
    pub generation: Generation,
    #[serde(with = "duration_nanos")]
    pub proxy_timeout: Duration,
}

/// Stolon publishes proxyTimeout as Go's integer nanoseconds.
mod duration_nanos {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_nanos() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_nanos(u64::deserialize(d)?))
    }
}
