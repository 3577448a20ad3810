use crate::duration::GoDuration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Stolon's is 20 s; the sentinel here reacts to events, so half of it still leaves a wide
/// margin over a keeper's publishing interval.
const DEFAULT_FAIL_INTERVAL_SECS: u64 = 10;
const DEFAULT_DB_RESTART_TIMEOUT_SECS: u64 = 5;

/// The operator's wishes for the cluster, as written by `stolonctl init` / `update` or
/// `--initial-cluster-spec`. Every field is optional: what is absent takes the default of
/// [`ValidSpec`]. Field names and units are Stolon's, so a Stolon spec file loads unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sleep_interval: Option<GoDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<GoDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub convergence_timeout: Option<GoDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_timeout: Option<GoDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_timeout: Option<GoDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_wait_ready_timeout: Option<GoDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail_interval: Option<GoDuration>,
    /// Beyond Stolon: how long a live keeper may take to bring its postgres back (restart
    /// in place) before the sentinel treats the db as failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_restart_timeout: Option<GoDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_keeper_removal_interval: Option<GoDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_check_interval: Option<GoDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_timeout: Option<GoDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_standbys: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_standbys_per_sender: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_standby_lag: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synchronous_replication: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_synchronous_standbys: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_synchronous_standbys: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub additional_wal_senders: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub additional_master_replication_slots: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_pgrewind: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_mode: Option<ClusterSpecInitMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merge_pg_parameters: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<ClusterRole>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_config: Option<NewConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pitr_config: Option<PitrConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub existing_config: Option<ExistingConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standby_config: Option<StandbyConfig>,
    #[serde(
        rename = "defaultSUReplAccessMode",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_su_repl_access_mode: Option<SuReplAccessMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pg_parameters: Option<BTreeMap<String, String>>,
    #[serde(rename = "pgHBA", skip_serializing_if = "Option::is_none")]
    pub pg_hba: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub automatic_pg_restart: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterSpecInitMode {
    New,
    Existing,
    Pitr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClusterRole {
    #[default]
    Master,
    Standby,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SuReplAccessMode {
    #[default]
    All,
    Strict,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_checksums: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PitrConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_restore_command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive_recovery_settings: Option<ArchiveRecoverySettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_target_settings: Option<RecoveryTargetSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArchiveRecoverySettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore_command: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecoveryTargetSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_target_lsn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_target_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_target_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_target_xid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_target_timeline: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StandbyConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standby_settings: Option<StandbySettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive_recovery_settings: Option<ArchiveRecoverySettings>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StandbySettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_conninfo: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_slot_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_min_apply_delay: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExistingConfig {
    #[serde(rename = "keeperUID", skip_serializing_if = "Option::is_none")]
    pub keeper_uid: Option<String>,
}

/// A spec field the engine cannot work with, named so the operator can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{0}")]
    Json(String),
    #[error("initMode is required (one of new, existing, pitr)")]
    MissingInitMode,
    #[error("{field} must be greater than zero")]
    MustBePositive { field: &'static str },
    #[error("proxyCheckInterval ({check}) must be shorter than proxyTimeout ({timeout})")]
    ProxyCheckNotBelowTimeout {
        check: GoDuration,
        timeout: GoDuration,
    },
    #[error("maxSynchronousStandbys ({max}) must be at least minSynchronousStandbys ({min})")]
    SyncBounds { min: u16, max: u16 },
    #[error("pitrConfig.dataRestoreCommand is required with initMode pitr")]
    MissingDataRestoreCommand,
    #[error("role standby needs initMode pitr (a base backup of the remote primary, such as pg_basebackup as the dataRestoreCommand) or existing: initMode new makes a primary of its own")]
    StandbyFromNew,
    #[error("role standby needs standbyConfig with standbySettings.primaryConninfo, archiveRecoverySettings.restoreCommand, or both: where the standby leader gets its WAL")]
    MissingStandbySource,
    #[error("pitrConfig.recoveryTargetSettings cannot be used with role standby: a standby cluster follows the remote primary instead of stopping at a target")]
    StandbyRecoveryTarget,
    #[error("standbyConfig.standbySettings.primarySlotName: invalid slot name {0:?} (only a-z, 0-9 and _)")]
    PrimarySlotName(String),
    #[error("standbyConfig.standbySettings.recoveryMinApplyDelay: {0:?} is not a duration PostgreSQL reads (a whole number with an optional unit: ms, s, min, h, d)")]
    ApplyDelay(String),
    #[error("existingConfig.keeperUID is required with initMode existing")]
    MissingExistingKeeper,
    #[error("additionalMasterReplicationSlots: invalid slot name {0:?} (only a-z, 0-9 and _, not starting with \"stolon_\")")]
    SlotName(String),
    #[error("pgHBA: entry {0:?} contains a newline")]
    HbaNewline(String),
    #[error("initMode cannot be changed (from {from} to {to})")]
    InitModeChange { from: String, to: String },
    #[error("role cannot change from master to standby")]
    RoleDemotion,
}

/// A spec with every default filled in and every rule checked: what the engine reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidSpec {
    pub sleep_interval: Duration,
    pub request_timeout: Duration,
    pub convergence_timeout: Duration,
    pub init_timeout: Duration,
    pub db_wait_ready_timeout: Duration,
    pub fail_interval: Duration,
    pub db_restart_timeout: Duration,
    pub dead_keeper_removal_interval: Duration,
    pub proxy_check_interval: Duration,
    pub proxy_timeout: Duration,
    pub max_standbys: u16,
    pub max_standbys_per_sender: u16,
    pub max_standby_lag: u32,
    pub additional_wal_senders: u16,
    pub synchronous_replication: bool,
    pub min_synchronous_standbys: u16,
    pub max_synchronous_standbys: u16,
    pub use_pgrewind: bool,
    pub additional_master_replication_slots: Vec<String>,
    pub automatic_pg_restart: bool,
    pub new_config: Option<NewConfig>,
    pub default_su_repl_access_mode: SuReplAccessMode,
    pub merge_pg_parameters: bool,
    /// initMode existing: the keeper whose data becomes the primary.
    pub existing_keeper: Option<String>,
    /// initMode pitr: how to restore the primary's data and recover it.
    pub pitr_config: Option<PitrConfig>,
    /// How long a resyncing standby may take to converge; None: as long as it takes.
    pub sync_timeout: Option<Duration>,
    pub init_mode: ClusterSpecInitMode,
    pub pg_parameters: BTreeMap<String, String>,
    pub pg_hba: Option<Vec<String>>,
    /// Set for a standby cluster (role standby): where its standby leader gets its WAL.
    pub standby_config: Option<StandbyConfig>,
}

impl ValidSpec {
    pub fn is_standby_cluster(&self) -> bool {
        self.standby_config.is_some()
    }
}

impl ClusterSpec {
    /// Parses a spec document, rejecting unknown fields and malformed values with a message
    /// that names the field.
    pub fn from_json(text: &str) -> Result<ClusterSpec, SpecError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let spec = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            match path.as_str() {
                "." | "" => SpecError::Json(e.into_inner().to_string()),
                _ => SpecError::Json(format!("{path}: {}", e.into_inner())),
            }
        })?;
        de.end().map_err(|e| SpecError::Json(e.to_string()))?;
        Ok(spec)
    }

    /// Fills in defaults and checks the rules between fields.
    pub fn validate(&self) -> Result<ValidSpec, SpecError> {
        let d = |v: Option<GoDuration>, default_secs: u64| {
            v.map(|g| g.0).unwrap_or(Duration::from_secs(default_secs))
        };
        let init_mode = self.init_mode.ok_or(SpecError::MissingInitMode)?;
        match init_mode {
            ClusterSpecInitMode::New => {}
            ClusterSpecInitMode::Existing => {
                if self
                    .existing_config
                    .as_ref()
                    .and_then(|c| c.keeper_uid.as_ref())
                    .is_none_or(|k| k.is_empty())
                {
                    return Err(SpecError::MissingExistingKeeper);
                }
            }
            ClusterSpecInitMode::Pitr => {
                if self
                    .pitr_config
                    .as_ref()
                    .and_then(|c| c.data_restore_command.as_ref())
                    .is_none_or(|c| c.trim().is_empty())
                {
                    return Err(SpecError::MissingDataRestoreCommand);
                }
            }
        }
        let role = self.role.unwrap_or_default();
        if role == ClusterRole::Standby {
            self.check_standby_cluster(init_mode)?;
        }
        let (min_sync, max_sync) = (
            self.min_synchronous_standbys.unwrap_or(1),
            self.max_synchronous_standbys.unwrap_or(1),
        );
        let spec = ValidSpec {
            sleep_interval: d(self.sleep_interval, 5),
            request_timeout: d(self.request_timeout, 10),
            convergence_timeout: d(self.convergence_timeout, 30),
            init_timeout: d(self.init_timeout, 300),
            db_wait_ready_timeout: d(self.db_wait_ready_timeout, 60),
            fail_interval: d(self.fail_interval, DEFAULT_FAIL_INTERVAL_SECS),
            db_restart_timeout: d(self.db_restart_timeout, DEFAULT_DB_RESTART_TIMEOUT_SECS),
            dead_keeper_removal_interval: d(self.dead_keeper_removal_interval, 48 * 3600),
            proxy_check_interval: d(self.proxy_check_interval, 5),
            proxy_timeout: d(self.proxy_timeout, 15),
            max_standbys: self.max_standbys.unwrap_or(20),
            max_standbys_per_sender: self.max_standbys_per_sender.unwrap_or(3),
            max_standby_lag: self.max_standby_lag.unwrap_or(1024 * 1024),
            additional_wal_senders: self.additional_wal_senders.unwrap_or(5),
            // A standby leader has no commits to wait for: Stolon's rule, and promotion
            // brings the setting into force.
            synchronous_replication: self.synchronous_replication.unwrap_or(false)
                && role == ClusterRole::Master,
            min_synchronous_standbys: min_sync,
            max_synchronous_standbys: max_sync,
            use_pgrewind: self.use_pgrewind.unwrap_or(false),
            additional_master_replication_slots: self
                .additional_master_replication_slots
                .clone()
                .unwrap_or_default(),
            automatic_pg_restart: self.automatic_pg_restart.unwrap_or(false),
            new_config: self.new_config.clone(),
            default_su_repl_access_mode: self.default_su_repl_access_mode.unwrap_or_default(),
            merge_pg_parameters: self.merge_pg_parameters.unwrap_or(true),
            existing_keeper: self
                .existing_config
                .as_ref()
                .and_then(|c| c.keeper_uid.clone()),
            pitr_config: (init_mode == ClusterSpecInitMode::Pitr)
                .then(|| self.pitr_config.clone())
                .flatten(),
            sync_timeout: self.sync_timeout.map(|d| d.0).filter(|d| !d.is_zero()),
            init_mode,
            pg_parameters: self.pg_parameters.clone().unwrap_or_default(),
            pg_hba: self.pg_hba.clone(),
            standby_config: (role == ClusterRole::Standby)
                .then(|| self.standby_config.clone())
                .flatten(),
        };
        for (field, value) in [
            ("sleepInterval", spec.sleep_interval),
            ("requestTimeout", spec.request_timeout),
            ("failInterval", spec.fail_interval),
            ("dbRestartTimeout", spec.db_restart_timeout),
            ("proxyCheckInterval", spec.proxy_check_interval),
            ("proxyTimeout", spec.proxy_timeout),
        ] {
            if value.is_zero() {
                return Err(SpecError::MustBePositive { field });
            }
        }
        for (field, value) in [
            ("maxStandbys", spec.max_standbys),
            ("maxStandbysPerSender", spec.max_standbys_per_sender),
        ] {
            if value == 0 {
                return Err(SpecError::MustBePositive { field });
            }
        }
        if spec.proxy_check_interval >= spec.proxy_timeout {
            return Err(SpecError::ProxyCheckNotBelowTimeout {
                check: GoDuration(spec.proxy_check_interval),
                timeout: GoDuration(spec.proxy_timeout),
            });
        }
        let (min, max) = (min_sync, max_sync);
        if max == 0 {
            return Err(SpecError::MustBePositive {
                field: "maxSynchronousStandbys",
            });
        }
        if max < min {
            return Err(SpecError::SyncBounds { min, max });
        }
        for slot in self.additional_master_replication_slots.iter().flatten() {
            let valid = !slot.is_empty()
                && slot
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !slot.starts_with("stolon_");
            if !valid {
                return Err(SpecError::SlotName(slot.clone()));
            }
        }
        if let Some(line) = self
            .pg_hba
            .iter()
            .flatten()
            .find(|l| l.contains(['\n', '\r']))
        {
            return Err(SpecError::HbaNewline(line.clone()));
        }
        Ok(spec)
    }
}

/// Heartbeats per failInterval (keepers) or proxyTimeout (proxies): a component may miss two
/// in a row (a slow store write, a long probe of its postgres) before it is judged. Patroni
/// keeps the same ratio between its loop_wait and its ttl.
const HEARTBEATS_PER_TIMEOUT: u32 = 3;

impl ValidSpec {
    /// How often a keeper publishes its info: every sleepInterval, and at least
    /// `HEARTBEATS_PER_TIMEOUT` (3) times per failInterval, so that a failInterval shorter than
    /// sleepInterval never fails a live keeper between two of its heartbeats.
    pub fn keeper_heartbeat(&self) -> Duration {
        self.sleep_interval
            .min(self.fail_interval / HEARTBEATS_PER_TIMEOUT)
    }

    /// How often a proxy checks the store (and so publishes its info): every
    /// proxyCheckInterval, and at least `HEARTBEATS_PER_TIMEOUT` (3) times per proxyTimeout, so
    /// that one slow check does not fence a proxy whose check interval is close to its
    /// timeout.
    pub fn proxy_check_cadence(&self) -> Duration {
        self.proxy_check_interval
            .min(self.proxy_timeout / HEARTBEATS_PER_TIMEOUT)
    }
}

impl ClusterSpec {
    /// The rules of a standby cluster (Stolon's, plus a source of WAL that must exist).
    fn check_standby_cluster(&self, init_mode: ClusterSpecInitMode) -> Result<(), SpecError> {
        match init_mode {
            ClusterSpecInitMode::New => return Err(SpecError::StandbyFromNew),
            ClusterSpecInitMode::Pitr
                if self
                    .pitr_config
                    .as_ref()
                    .is_some_and(|c| c.recovery_target_settings.is_some()) =>
            {
                return Err(SpecError::StandbyRecoveryTarget)
            }
            _ => {}
        }
        let config = self.standby_config.as_ref();
        let settings = config.and_then(|c| c.standby_settings.as_ref());
        let set = |v: Option<&String>| v.is_some_and(|v| !v.trim().is_empty());
        let conninfo = set(settings.and_then(|s| s.primary_conninfo.as_ref()));
        let restore = set(config
            .and_then(|c| c.archive_recovery_settings.as_ref())
            .and_then(|a| a.restore_command.as_ref()));
        if !conninfo && !restore {
            return Err(SpecError::MissingStandbySource);
        }
        if let Some(slot) = settings.and_then(|s| s.primary_slot_name.as_ref()) {
            if slot.is_empty()
                || !slot
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(SpecError::PrimarySlotName(slot.clone()));
            }
        }
        if let Some(delay) = settings.and_then(|s| s.recovery_min_apply_delay.as_ref()) {
            if !is_pg_duration(delay) {
                return Err(SpecError::ApplyDelay(delay.clone()));
            }
        }
        Ok(())
    }
}

/// A value PostgreSQL accepts for a time parameter: an integer, a space or not, a unit.
fn is_pg_duration(text: &str) -> bool {
    let text = text.trim();
    let digits = text.chars().take_while(|c| c.is_ascii_digit()).count();
    let unit = text[digits..].trim_start();
    digits > 0 && ["", "us", "ms", "s", "min", "h", "d"].contains(&unit)
}

impl ClusterSpec {
    /// Checks that replacing `self` by `new` is allowed: the init mode is fixed for the
    /// cluster's life, and a primary cluster never becomes a standby cluster.
    pub fn check_update(&self, new: &ClusterSpec) -> Result<ValidSpec, SpecError> {
        if self.init_mode != new.init_mode {
            let name = |m: Option<ClusterSpecInitMode>| {
                m.map(|m| format!("{m:?}").to_lowercase())
                    .unwrap_or_else(|| "none".into())
            };
            return Err(SpecError::InitModeChange {
                from: name(self.init_mode),
                to: name(new.init_mode),
            });
        }
        if self.role.unwrap_or_default() == ClusterRole::Master
            && new.role.unwrap_or_default() == ClusterRole::Standby
        {
            return Err(SpecError::RoleDemotion);
        }
        new.validate()
    }

    /// This spec with every absent field set to its default (`stolonctl spec --defaults`).
    pub fn with_defaults(&self) -> ClusterSpec {
        let d = |v: Option<GoDuration>, secs: u64| Some(v.unwrap_or(GoDuration::from_secs(secs)));
        ClusterSpec {
            sleep_interval: d(self.sleep_interval, 5),
            request_timeout: d(self.request_timeout, 10),
            convergence_timeout: d(self.convergence_timeout, 30),
            init_timeout: d(self.init_timeout, 300),
            sync_timeout: d(self.sync_timeout, 0),
            db_wait_ready_timeout: d(self.db_wait_ready_timeout, 60),
            fail_interval: d(self.fail_interval, DEFAULT_FAIL_INTERVAL_SECS),
            db_restart_timeout: d(self.db_restart_timeout, DEFAULT_DB_RESTART_TIMEOUT_SECS),
            dead_keeper_removal_interval: d(self.dead_keeper_removal_interval, 48 * 3600),
            proxy_check_interval: d(self.proxy_check_interval, 5),
            proxy_timeout: d(self.proxy_timeout, 15),
            max_standbys: Some(self.max_standbys.unwrap_or(20)),
            max_standbys_per_sender: Some(self.max_standbys_per_sender.unwrap_or(3)),
            max_standby_lag: Some(self.max_standby_lag.unwrap_or(1024 * 1024)),
            synchronous_replication: Some(self.synchronous_replication.unwrap_or(false)),
            min_synchronous_standbys: Some(self.min_synchronous_standbys.unwrap_or(1)),
            max_synchronous_standbys: Some(self.max_synchronous_standbys.unwrap_or(1)),
            additional_wal_senders: Some(self.additional_wal_senders.unwrap_or(5)),
            additional_master_replication_slots: Some(
                self.additional_master_replication_slots
                    .clone()
                    .unwrap_or_default(),
            ),
            use_pgrewind: Some(self.use_pgrewind.unwrap_or(false)),
            init_mode: self.init_mode,
            merge_pg_parameters: Some(self.merge_pg_parameters.unwrap_or(true)),
            role: Some(self.role.unwrap_or_default()),
            new_config: self.new_config.clone(),
            pitr_config: self.pitr_config.clone(),
            existing_config: self.existing_config.clone(),
            standby_config: self.standby_config.clone(),
            default_su_repl_access_mode: Some(self.default_su_repl_access_mode.unwrap_or_default()),
            pg_parameters: Some(self.pg_parameters.clone().unwrap_or_default()),
            pg_hba: self.pg_hba.clone(),
            automatic_pg_restart: Some(self.automatic_pg_restart.unwrap_or(false)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_spec_takes_the_defaults() {
        let spec = ClusterSpec::from_json(r#"{"initMode":"new"}"#).unwrap();
        let v = spec.validate().unwrap();
        assert_eq!(v.sleep_interval, Duration::from_secs(5));
        assert_eq!(v.fail_interval, Duration::from_secs(10));
        assert_eq!(v.db_restart_timeout, Duration::from_secs(5));
        assert_eq!(v.proxy_timeout, Duration::from_secs(15));
        assert_eq!(v.max_standbys_per_sender, 3);
    }

    #[test]
    fn heartbeats_come_at_least_three_times_per_timeout() {
        let cadence = |json: &str| {
            let v = ClusterSpec::from_json(json).unwrap().validate().unwrap();
            (v.keeper_heartbeat(), v.proxy_check_cadence())
        };
        let ms = Duration::from_millis;
        // failInterval 3s under the default sleepInterval of 5s: a heartbeat every second.
        assert_eq!(
            cadence(r#"{"initMode":"new","failInterval":"3s"}"#).0,
            ms(1000)
        );
        // A short sleepInterval stays as it is.
        assert_eq!(
            cadence(r#"{"initMode":"new","sleepInterval":"1s","failInterval":"20s"}"#).0,
            ms(1000)
        );
        // The defaults: failInterval 10s, proxyTimeout 15s, proxyCheckInterval 5s.
        assert_eq!(
            cadence(r#"{"initMode":"new"}"#),
            (Duration::from_secs(10) / 3, ms(5000))
        );
        // A check interval just under the timeout is shortened.
        assert_eq!(
            cadence(r#"{"initMode":"new","proxyCheckInterval":"2900ms","proxyTimeout":"3s"}"#).1,
            ms(1000)
        );
    }

    #[test]
    fn stolon_example_spec_loads() {
        let text = r#"{
            "initMode": "new", "sleepInterval": "1s", "failInterval": "5s",
            "maxStandbyLag": 1048576, "synchronousReplication": false,
            "pgParameters": {"max_connections": "100"}, "pgHBA": null,
            "defaultSUReplAccessMode": "all", "newConfig": {"dataChecksums": true},
            "usePgrewind": true, "mergePgParameters": true, "role": "master"
        }"#;
        let spec = ClusterSpec::from_json(text).unwrap();
        let v = spec.validate().unwrap();
        assert_eq!(v.fail_interval, Duration::from_secs(5));
        let again = serde_json::to_string(&spec).unwrap();
        assert_eq!(ClusterSpec::from_json(&again).unwrap(), spec);
    }

    /// A Stolon spec with every field loads unchanged and writes back the same document.
    #[test]
    fn a_stolon_spec_with_every_field_round_trips() {
        let text = include_str!("../testdata/stolon-spec-every-field.json");
        let spec = ClusterSpec::from_json(text).unwrap();
        let original: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_value(&spec).unwrap(), original);
        // Every Stolon field is set; dbRestartTimeout is ours alone.
        let stolon_fields_only = ClusterSpec {
            db_restart_timeout: None,
            ..spec.with_defaults()
        };
        assert_eq!(stolon_fields_only, spec, "every field is set");
        spec.validate().unwrap();
    }

    #[test]
    fn defaults_fill_every_field_and_validate() {
        let full = ClusterSpec::from_json(r#"{"initMode":"new"}"#)
            .unwrap()
            .with_defaults();
        let json = serde_json::to_value(&full).unwrap();
        for field in [
            "sleepInterval",
            "maxStandbyLag",
            "proxyTimeout",
            "automaticPgRestart",
            "role",
        ] {
            assert!(json.get(field).is_some(), "{field} missing in {json}");
        }
        assert_eq!(json["maxStandbyLag"], 1048576);
        assert_eq!(
            full.validate().unwrap(),
            full.with_defaults().validate().unwrap()
        );
    }

    /// initMode pitr carries its pitrConfig to the engine; other modes do not.
    #[test]
    fn pitr_config_reaches_the_engine_only_for_pitr() {
        let pitr = r#"{"dataRestoreCommand":"cp -a /b/. %d",
            "recoveryTargetSettings":{"recoveryTargetTime":"2026-11-25 00:00:00+00"}}"#;
        let v = ClusterSpec::from_json(&format!(r#"{{"initMode":"pitr","pitrConfig":{pitr}}}"#))
            .unwrap()
            .validate()
            .unwrap();
        let config = v.pitr_config.expect("pitrConfig");
        assert_eq!(
            config.data_restore_command.as_deref(),
            Some("cp -a /b/. %d")
        );
        let v = ClusterSpec::from_json(&format!(r#"{{"initMode":"new","pitrConfig":{pitr}}}"#))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(v.pitr_config, None);
    }

    #[test]
    fn updates_keep_init_mode_and_never_demote() {
        let old = ClusterSpec::from_json(r#"{"initMode":"new"}"#).unwrap();
        let to_existing =
            ClusterSpec::from_json(r#"{"initMode":"existing","existingConfig":{"keeperUID":"k"}}"#)
                .unwrap();
        assert!(old
            .check_update(&to_existing)
            .unwrap_err()
            .to_string()
            .contains("initMode cannot be changed"));
        let standby = ClusterSpec::from_json(r#"{"initMode":"new","role":"standby"}"#).unwrap();
        assert!(old.check_update(&standby).is_err());
        let faster = ClusterSpec::from_json(r#"{"initMode":"new","failInterval":"3s"}"#).unwrap();
        assert!(old.check_update(&faster).is_ok());
    }

    /// A standby cluster: restored (pitr) or adopted (existing), from a remote primary or
    /// an archive, never made by initdb, never stopped at a recovery target.
    #[test]
    fn standby_cluster_rules() {
        let spec = |extra: &str| {
            ClusterSpec::from_json(&format!(
                r#"{{"role":"standby","initMode":"pitr","pitrConfig":{{"dataRestoreCommand":"x"}}{extra}}}"#
            ))
            .unwrap()
            .validate()
        };
        let streaming = spec(
            r#","standbyConfig":{"standbySettings":{"primaryConninfo":"host=a port=5432","primarySlotName":"site_b","recoveryMinApplyDelay":"5min"}}"#,
        )
        .unwrap();
        assert!(streaming.is_standby_cluster());
        let archive_only = spec(
            r#","standbyConfig":{"archiveRecoverySettings":{"restoreCommand":"cp /a/%f %p"}}"#,
        )
        .unwrap();
        assert!(archive_only.is_standby_cluster());
        let synchronous = spec(
            r#","synchronousReplication":true,"standbyConfig":{"standbySettings":{"primaryConninfo":"host=a"}}"#,
        )
        .unwrap();
        assert!(
            !synchronous.synchronous_replication,
            "a standby leader waits for no one"
        );
        for (extra, needle) in [
            ("", "role standby needs standbyConfig"),
            (
                r#","standbyConfig":{"standbySettings":{"primaryConninfo":" "}}"#,
                "role standby needs standbyConfig",
            ),
            (
                r#","standbyConfig":{"standbySettings":{"primaryConninfo":"host=a","primarySlotName":"Site-B"}}"#,
                "primarySlotName",
            ),
            (
                r#","standbyConfig":{"standbySettings":{"primaryConninfo":"host=a","recoveryMinApplyDelay":"5 minutes"}}"#,
                "recoveryMinApplyDelay",
            ),
        ] {
            let err = spec(extra).unwrap_err().to_string();
            assert!(err.contains(needle), "{extra}: {err}");
        }
        let with_target = ClusterSpec::from_json(
            r#"{"role":"standby","initMode":"pitr","standbyConfig":{"standbySettings":{"primaryConninfo":"host=a"}},
                "pitrConfig":{"dataRestoreCommand":"x","recoveryTargetSettings":{"recoveryTargetName":"n"}}}"#,
        )
        .unwrap();
        assert_eq!(
            with_target.validate(),
            Err(SpecError::StandbyRecoveryTarget)
        );
        let from_new = ClusterSpec::from_json(
            r#"{"role":"standby","initMode":"new","standbyConfig":{"standbySettings":{"primaryConninfo":"host=a"}}}"#,
        )
        .unwrap();
        assert_eq!(from_new.validate(), Err(SpecError::StandbyFromNew));
        let existing = ClusterSpec::from_json(
            r#"{"role":"standby","initMode":"existing","existingConfig":{"keeperUID":"k"},"standbyConfig":{"standbySettings":{"primaryConninfo":"host=a"}}}"#,
        )
        .unwrap();
        assert!(existing.validate().unwrap().is_standby_cluster());
        // Promotion is an update to role master; the way back is refused.
        let mut promoted = existing.clone();
        promoted.role = Some(ClusterRole::Master);
        assert!(!existing
            .check_update(&promoted)
            .unwrap()
            .is_standby_cluster());
        assert_eq!(
            promoted.check_update(&existing),
            Err(SpecError::RoleDemotion)
        );
    }

    #[test]
    fn bad_specs_name_the_field() {
        for (text, needle) in [
            (
                r#"{"initMode":"new","sleepIntervall":"1s"}"#,
                "sleepIntervall",
            ),
            (
                r#"{"initMode":"new","failInterval":"5"}"#,
                "invalid duration",
            ),
            (
                r#"{"initMode":"new","maxStandbys":-1}"#,
                "maxStandbys: invalid value",
            ),
            (
                r#"{"initMode":"new","proxyCheckInterval":"20s"}"#,
                "proxyCheckInterval",
            ),
            (
                r#"{"initMode":"new","maxStandbysPerSender":0}"#,
                "maxStandbysPerSender",
            ),
            (r#"{"sleepInterval":"1s"}"#, "initMode is required"),
            (r#"{"initMode":"sometimes"}"#, "unknown variant"),
            (
                r#"{"initMode":"new","additionalMasterReplicationSlots":["Bad-Name"]}"#,
                "additionalMasterReplicationSlots",
            ),
            (
                r#"{"initMode":"new","additionalMasterReplicationSlots":["stolon_x"]}"#,
                "additionalMasterReplicationSlots",
            ),
            (
                r#"{"initMode":"new","pitrConfig":{"dataRestoreComand":"x"}}"#,
                "dataRestoreComand",
            ),
            (
                r#"{"initMode":"new","pgHBA":["host all all 0.0.0.0/0 md5\nlocal all all trust"]}"#,
                "pgHBA",
            ),
            (r#"{"initMode":"pitr"}"#, "dataRestoreCommand is required"),
            (
                r#"{"initMode":"pitr","pitrConfig":{"dataRestoreCommand":" "}}"#,
                "dataRestoreCommand is required",
            ),
        ] {
            let err = ClusterSpec::from_json(text)
                .and_then(|s| s.validate().map(|_| ()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
