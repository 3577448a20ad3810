use crate::duration::GoDuration;
use crate::ids::{ClusterUid, DbUid, Generation, KeeperUid, Lsn, ProxyUid, TimelineId};
use crate::info::TimelineSwitch;
use crate::spec::{ClusterSpec, NewConfig, PitrConfig, StandbyConfig, SuReplAccessMode, ValidSpec};
use crate::DecodeError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The only cluster data format this build reads and writes. Any other value makes every
/// component refuse to act rather than guess.
pub const CURRENT_FORMAT_VERSION: u32 = 1;

/// The `synchronous_standby_names` entry that no standby answers to: listing it blocks
/// commits while there are fewer real synchronous standbys than required.
pub const FAKE_STANDBY_NAME: &str = "stolonfakestandby";

/// The single document that holds the sentinel's decisions and the observed status. Every
/// change between components goes through one compare-and-swap write of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterData {
    pub format_version: u32,
    pub cluster: Cluster,
    #[serde(default)]
    pub keepers: BTreeMap<KeeperUid, Keeper>,
    #[serde(default)]
    pub dbs: BTreeMap<DbUid, Db>,
    #[serde(default)]
    pub proxy: Proxy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cluster {
    pub uid: ClusterUid,
    pub generation: Generation,
    pub spec: ClusterSpec,
    pub status: ClusterStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterStatus {
    pub phase: ClusterPhase,
    /// The db that is, or is being made, the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<DbUid>,
    /// Why the sentinel chose the current primary, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub master_choice: String,
    /// The primary a failover in progress replaces, kept until the new primary serves: if
    /// the elected standby fails before that, the old primary can be reinstated (async).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deposed_master: Option<Box<Db>>,
    /// A planned switchover in progress (`stolonctl switchover`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover: Option<Switchover>,
    /// How the last switchover ended, for `stolonctl switchover` to report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_switchover: Option<SwitchoverOutcome>,
    /// Maintenance mode (`stolonctl pause`): no failover, no switchover, no change to any
    /// db's spec, and the keepers leave postgres as it is, until `stolonctl resume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Pause>,
}

/// Who paused the cluster, when, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pause {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// `user@host` of the stolonctl that paused it.
    pub by: String,
    /// RFC 3339, UTC, by the clock of that stolonctl's machine.
    pub since: String,
}

/// A planned change of primary, driven by the sentinel one phase per step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Switchover {
    /// Chosen by the requester, to recognise its outcome.
    pub id: String,
    /// The keeper asked for; none: the best candidate.
    #[serde(
        rename = "toKeeperUID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub to_keeper: Option<KeeperUid>,
    /// How long the target may take to catch up before the switchover is abandoned.
    pub timeout: GoDuration,
    /// How long the proxies let existing sessions run once new ones are held.
    pub grace: GoDuration,
    #[serde(default)]
    pub phase: SwitchoverPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_db: Option<DbUid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_db: Option<DbUid>,
    /// The old primary's shutdown checkpoint: the target must hold WAL past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_lsn: Option<Lsn>,
    /// Why it is being abandoned, while the old primary comes back.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub abandon_reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum SwitchoverPhase {
    /// Written by the requester; the sentinel has not checked it yet.
    #[default]
    Requested,
    /// The proxies hold new connections instead of handing them to the primary.
    Holding,
    /// The old primary checkpoints and shuts down.
    Halting,
    /// Waiting for the target to receive the old primary's last WAL.
    CatchingUp,
    /// The target is being promoted; the proxies release the held connections to it.
    Promoting,
    /// Abandoned: the old primary starts again before the proxies release the connections.
    Restoring,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SwitchoverOutcome {
    pub id: String,
    pub succeeded: bool,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClusterPhase {
    #[default]
    Initializing,
    Normal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Keeper {
    pub uid: KeeperUid,
    pub status: KeeperStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeeperStatus {
    pub healthy: bool,
    /// The keeper process start the sentinel has seen; a restarted keeper keeps postgres
    /// down until this matches its own, so it never acts on a decision made before it died.
    #[serde(default)]
    pub boot_uuid: String,
    #[serde(default = "yes")]
    pub can_be_master: bool,
    #[serde(default = "yes")]
    pub can_be_synchronous_replica: bool,
    #[serde(default)]
    pub priority: i32,
    /// Set by `stolonctl failkeeper`: the sentinel treats the keeper as failed for one round.
    #[serde(default)]
    pub force_fail: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Db {
    pub uid: DbUid,
    pub generation: Generation,
    pub spec: DbSpec,
    #[serde(default)]
    pub status: DbStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DbRole {
    Master,
    Standby,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InitMode {
    #[default]
    None,
    New,
    Resync,
    /// Adopt the data the keeper already has.
    Existing,
    /// Restore a backup (`pitrConfig.dataRestoreCommand`) and recover it from the archive.
    Pitr,
}

/// Where a standby gets its WAL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FollowConfig {
    /// Another db of this cluster, through the replication slot named after this db.
    Db {
        #[serde(rename = "dbuid")]
        db_uid: DbUid,
    },
    /// The remote primary, or only its archive: a standby cluster's standby leader.
    Remote { remote: StandbyConfig },
}

impl FollowConfig {
    pub fn db(db_uid: &DbUid) -> FollowConfig {
        FollowConfig::Db {
            db_uid: db_uid.clone(),
        }
    }

    /// The db of this cluster followed, if it is one.
    pub fn followed_db(&self) -> Option<&DbUid> {
        match self {
            FollowConfig::Db { db_uid } => Some(db_uid),
            FollowConfig::Remote { .. } => None,
        }
    }

    pub fn remote(&self) -> Option<&StandbyConfig> {
        match self {
            FollowConfig::Remote { remote } => Some(remote),
            FollowConfig::Db { .. } => None,
        }
    }
}

/// What a keeper must make of its instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DbSpec {
    #[serde(rename = "keeperUID")]
    pub keeper_uid: KeeperUid,
    pub role: DbRole,
    #[serde(default)]
    pub init_mode: InitMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_config: Option<FollowConfig>,
    /// The dbs streaming from this one: a primary keeps a replication slot for each.
    #[serde(default)]
    pub followers: Vec<DbUid>,
    pub max_standbys: u16,
    pub additional_wal_senders: u16,
    #[serde(default)]
    pub pg_parameters: BTreeMap<String, String>,
    #[serde(rename = "pgHBA", default, skip_serializing_if = "Option::is_none")]
    pub pg_hba: Option<Vec<String>>,
    #[serde(default)]
    pub synchronous_replication: bool,
    /// The standbys the primary must wait for on commit. The sentinel records a standby
    /// here before the keeper lists it in `synchronous_standby_names`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub synchronous_standbys: Vec<DbUid>,
    /// Names listed besides our standbys: the placeholder that blocks commits while there
    /// are too few real synchronous standbys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_synchronous_standbys: Vec<String>,
    #[serde(default)]
    pub use_pgrewind: bool,
    /// Extra physical slots a primary keeps (`stolon_<name>`), for clients of the operator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_replication_slots: Vec<String>,
    /// Planned switchover: checkpoint, shut down and stay down, so that the target can
    /// catch up with the final WAL position.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub halt: bool,
    /// Restart postgres when a changed parameter needs it.
    #[serde(default)]
    pub automatic_pg_restart: bool,
    /// initdb options of a new cluster (initMode new).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_config: Option<NewConfig>,
    /// How to restore and recover the data (initMode pitr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pitr_config: Option<PitrConfig>,
    /// Where the superuser and replication user may connect from.
    #[serde(rename = "defaultSUReplAccessMode", default)]
    pub default_su_repl_access_mode: SuReplAccessMode,
    /// Keep the parameters initdb wrote until the sentinel has merged them into the spec
    /// (`mergePgParameters`).
    #[serde(default)]
    pub include_previous_config: bool,
}

impl DbSpec {
    /// A standby cluster's standby leader: it follows the remote primary (or its archive).
    pub fn follows_remote(&self) -> bool {
        self.follow_config
            .as_ref()
            .is_some_and(|f| f.remote().is_some())
    }
}

/// What the sentinel last learned of a db from its keeper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DbStatus {
    pub healthy: bool,
    pub current_generation: Generation,
    #[serde(default)]
    pub listen_address: String,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub in_recovery: bool,
    #[serde(rename = "systemID", default)]
    pub system_id: String,
    #[serde(rename = "timelineID", default)]
    pub timeline_id: TimelineId,
    #[serde(default)]
    pub x_log_pos: Lsn,
    /// Standbys known to have been in sync while listed in the spec: only these may be
    /// promoted when the primary fails in synchronous mode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub synchronous_standbys: Vec<DbUid>,
    /// Where the db's earlier timelines ended, as its keeper last reported them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timelines_history: Vec<TimelineSwitch>,
}

/// The proxies' routing: where to send clients and which proxies may do so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Proxy {
    pub generation: Generation,
    pub spec: ProxySpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxySpec {
    #[serde(
        rename = "masterDbUid",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub master_db_uid: Option<DbUid>,
    #[serde(default)]
    pub enabled_proxies: Vec<ProxyUid>,
    /// Planned switchover: new client connections wait at the proxies instead of going to
    /// a primary; existing ones are closed after the grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hold {
    pub grace: GoDuration,
}

/// The cluster data as a component read it from the store, with its spec validated: what
/// every component decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    pub data: ClusterData,
    pub spec: ValidSpec,
}

impl ClusterData {
    /// A fresh cluster in its initializing phase.
    pub fn new(uid: ClusterUid, spec: ClusterSpec) -> ClusterData {
        ClusterData {
            format_version: CURRENT_FORMAT_VERSION,
            cluster: Cluster {
                uid,
                generation: Generation::INITIAL,
                spec,
                status: ClusterStatus::default(),
            },
            keepers: BTreeMap::new(),
            dbs: BTreeMap::new(),
            proxy: Proxy::default(),
        }
    }

    /// Decodes stored bytes, refusing unknown format versions and invalid specs so that no
    /// component ever acts on a document it does not fully understand.
    pub fn decode(bytes: &[u8]) -> Result<(ClusterData, ValidSpec), DecodeError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct VersionOnly {
            format_version: u32,
        }
        let version: VersionOnly = serde_json::from_slice(bytes)?;
        if version.format_version != CURRENT_FORMAT_VERSION {
            return Err(DecodeError::FormatVersion {
                found: version.format_version,
                expected: CURRENT_FORMAT_VERSION,
            });
        }
        let data: ClusterData = serde_json::from_slice(bytes)?;
        let spec = data.cluster.spec.validate()?;
        Ok((data, spec))
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("cluster data always serializes")
    }

    /// The db a keeper owns, if any: a keeper owns at most one at a time.
    pub fn db_of_keeper(&self, keeper: &KeeperUid) -> Option<&Db> {
        self.dbs.values().find(|db| &db.spec.keeper_uid == keeper)
    }

    /// The db the proxies route to, if any.
    pub fn proxied_db(&self) -> Option<&Db> {
        self.proxy
            .spec
            .master_db_uid
            .as_ref()
            .and_then(|uid| self.dbs.get(uid))
    }

    pub fn master_db(&self) -> Option<&Db> {
        self.cluster
            .status
            .master
            .as_ref()
            .and_then(|uid| self.dbs.get(uid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ClusterData {
        let spec = ClusterSpec::from_json(r#"{"initMode":"new"}"#).unwrap();
        ClusterData::new(ClusterUid::new("c1"), spec)
    }

    #[test]
    fn encode_decode_round_trip() {
        let cd = sample();
        let (back, _) = ClusterData::decode(&cd.encode()).unwrap();
        assert_eq!(back, cd);
    }

    #[test]
    fn refuses_other_format_versions_and_garbage() {
        let mut cd = sample();
        cd.format_version = 2;
        let err = ClusterData::decode(&cd.encode()).unwrap_err().to_string();
        assert!(err.contains("format version 2"), "{err}");
        assert!(ClusterData::decode(b"{not json").is_err());
        assert!(ClusterData::decode(b"{\"formatVersion\":1}").is_err());
    }

    /// Dbs written before standby clusters follow their db as before; a standby leader's
    /// remote round-trips.
    #[test]
    fn follow_configs_of_both_kinds_decode() {
        let db: FollowConfig = serde_json::from_str(r#"{"dbuid":"ab12"}"#).unwrap();
        assert_eq!(db.followed_db(), Some(&DbUid("ab12".into())));
        let remote = FollowConfig::Remote {
            remote: StandbyConfig {
                standby_settings: Some(crate::StandbySettings {
                    primary_conninfo: Some("host=a".into()),
                    ..Default::default()
                }),
                archive_recovery_settings: None,
            },
        };
        let text = serde_json::to_string(&remote).unwrap();
        assert_eq!(serde_json::from_str::<FollowConfig>(&text).unwrap(), remote);
        assert_eq!(remote.followed_db(), None);
        assert!(serde_json::from_str::<FollowConfig>(r#"{"dbuid":5}"#).is_err());
    }

    #[test]
    fn refuses_invalid_spec() {
        let mut cd = sample();
        cd.cluster.spec.max_standbys_per_sender = Some(0);
        let err = ClusterData::decode(&cd.encode()).unwrap_err().to_string();
        assert!(err.contains("maxStandbysPerSender"), "{err}");
    }
}
