//! Wire types that live in the store, shared by every component.
//!
//! This crate owns the JSON shape of the cluster spec (the operator's wishes), the cluster
//! data (the sentinel's decisions plus observed status) and the infos each daemon publishes.
//! It does no IO and no async: it only parses, validates and renders values, so that the
//! engine can stay pure and every daemon agrees on the same bytes.

mod data;
mod duration;
mod ids;
mod info;
mod spec;

pub use data::{
    Cluster, ClusterData, ClusterPhase, ClusterStatus, ClusterView, Db, DbRole, DbSpec, DbStatus,
    FollowConfig, Hold, InitMode, Keeper, KeeperStatus, Pause, Proxy, ProxySpec, Switchover,
    SwitchoverOutcome, SwitchoverPhase, CURRENT_FORMAT_VERSION, FAKE_STANDBY_NAME,
};
pub use duration::GoDuration;
pub use ids::{ClusterUid, DbUid, Generation, KeeperUid, Lsn, ProxyUid, SentinelUid, TimelineId};
pub use info::{
    DataDisk, KeeperInfo, PgState, ProxyInfo, RemoteReplication, SentinelInfo, ShutdownCheckpoint,
    TimelineSwitch,
};
pub use spec::{
    ArchiveRecoverySettings, ClusterRole, ClusterSpec, ClusterSpecInitMode, ExistingConfig,
    NewConfig, PitrConfig, RecoveryTargetSettings, SpecError, StandbyConfig, StandbySettings,
    SuReplAccessMode, ValidSpec,
};

/// Errors met while decoding a stored document.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "unsupported cluster data format version {found} (this build reads version {expected})"
    )]
    FormatVersion { found: u32, expected: u32 },
    #[error("invalid cluster spec: {0}")]
    Spec(#[from] SpecError),
}
