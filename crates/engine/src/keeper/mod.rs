//! The keeper's reconciler: given the cluster data and what the keeper sees of its local
//! instance, the one next action that moves the instance toward its db spec.
//!
//! The daemon calls [`next_action`], performs the action, observes again and repeats until
//! the answer is [`Action::Idle`] or [`Action::Wait`]. Every destructive action (a wipe for
//! init or resync) is only ever chosen because the cluster data asks for a db this keeper
//! does not have yet.

use stolon_cluster::{ClusterData, Db, DbRole, DbUid, Generation, InitMode, KeeperUid};

pub mod machine;
mod reasons;
pub mod report;
pub mod starts;

pub use reasons::{Refusal, StopReason, WaitReason};

/// Where a standby streams from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

/// The db the keeper's data directory holds, from its own state file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocalDb {
    pub uid: Option<DbUid>,
    /// The db spec generation fully applied.
    pub generation: Generation,
    /// An init or resync started and never finished: the data directory is half made.
    pub initializing: bool,
    /// The system identifier the data directory had when the keeper made it.
    pub system_id: Option<String>,
}

/// What the keeper sees of its PostgreSQL instance right now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Instance {
    /// The data directory holds an initialised cluster.
    pub initialized: bool,
    pub running: bool,
    /// `standby.signal` is present: the instance starts in recovery.
    pub standby_signal: bool,
    /// From SQL, when running and reachable.
    pub in_recovery: Option<bool>,
    /// The upstream its configuration streams from, when it is a standby.
    pub following: Option<Endpoint>,
    /// The configuration files on disk differ from what the db spec asks for now.
    pub config_stale: bool,
    /// The system identifier in the data directory's control file.
    pub system_id: Option<String>,
    /// Our replication slots (`stolon_` prefix), when the instance is a reachable primary.
    pub slots: Option<Vec<String>>,
    /// Changed parameters that only a restart applies.
    pub pending_restart: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing can be done now; the reason is worth one log line.
    Wait(WaitReason),
    /// Stop postgres, for the reason given.
    Stop(StopReason),
    /// Wipe the data directory and create a new primary (initdb, roles).
    InitNew {
        db: DbUid,
    },
    /// Wipe the data directory, restore a backup into it and recover it from the archive
    /// (initMode pitr); it ends as a stopped primary.
    Restore {
        db: DbUid,
    },
    /// Take the data directory as it is for the new db `db` (initMode existing).
    Adopt {
        db: DbUid,
    },
    /// Make the data directory a copy of `from`'s, streaming through `slot`: with
    /// `rewind`, try pg_rewind first (same system, only diverged); otherwise, or when that
    /// fails, wipe it and take a base backup.
    Resync {
        db: DbUid,
        from: Endpoint,
        slot: String,
        rewind: bool,
    },
    /// Start postgres in its local role: a standby streams from `follow`, a standby
    /// cluster's standby leader (`follow` None) from the remote its spec names.
    Start {
        follow: Option<Endpoint>,
    },
    Promote,
    /// Planned switchover: checkpoint, then shut down cleanly and stay down.
    Halt,
    /// Rewrite the configuration (upstream, synchronous standbys, access rules) and reload.
    Reconfigure,
    /// Stop and start postgres to apply parameters a reload cannot (`automaticPgRestart`).
    Restart,
    SyncSlots {
        create: Vec<String>,
        drop: Vec<String>,
    },
    /// The instance matches the db spec of this generation: record it.
    MarkApplied(Generation),
    /// Converged.
    Idle,
}

pub const SLOT_PREFIX: &str = "stolon_";

pub fn slot_name(db: &DbUid) -> String {
    format!("{SLOT_PREFIX}{db}")
}

/// Where `db` streams from: the followed db's advertised address, once it is known.
pub fn followed_endpoint(cd: &ClusterData, db: &Db) -> Option<Endpoint> {
    db.spec
        .follow_config
        .as_ref()
        .and_then(|f| f.followed_db())
        .and_then(|uid| cd.dbs.get(uid))
        .filter(|f| !f.status.listen_address.is_empty() && f.status.port != 0)
        .map(|f| Endpoint {
            host: f.status.listen_address.clone(),
            port: f.status.port,
        })
}

/// Where a db's configuration makes its instance stream from: the db it follows, or, while
/// that one's address is unknown, where it streams from now (`following`). Nowhere for an
/// instance that is not in recovery, nor for a standby cluster's standby leader, which
/// follows the remote its spec names.
pub fn upstream(
    cd: &ClusterData,
    db: &Db,
    in_recovery: bool,
    following: Option<&Endpoint>,
) -> Option<Endpoint> {
    if !in_recovery || db.spec.follows_remote() {
        return None;
    }
    followed_endpoint(cd, db).or_else(|| following.cloned())
}

fn followed_system_id<'a>(cd: &'a ClusterData, db: &Db) -> Option<&'a str> {
    let followed = cd.dbs.get(db.spec.follow_config.as_ref()?.followed_db()?)?;
    Some(followed.status.system_id.as_str()).filter(|id| !id.is_empty())
}

/// The application names a db's configuration lists in `synchronous_standby_names`: its
/// synchronous standbys' and the placeholders, when it is a primary (not in recovery) in
/// synchronous mode; none otherwise.
pub fn synchronous_standby_names(db: &Db, in_recovery: bool) -> Vec<String> {
    let spec = &db.spec;
    if spec.role != DbRole::Master || !spec.synchronous_replication || in_recovery {
        return Vec::new();
    }
    spec.synchronous_standbys
        .iter()
        .map(slot_name)
        .chain(spec.external_synchronous_standbys.iter().cloned())
        .collect()
}

/// After a restart in synchronous mode, a primary only lets its own roles in until every
/// standby it must wait for is in sync again: a commit acknowledged now could otherwise be
/// lost in a failover that follows.
pub fn sync_gate_lifted(wanted: &[DbUid], in_sync: &[DbUid]) -> bool {
    wanted.iter().all(|uid| in_sync.contains(uid))
}

/// The replication slots to create and drop on a db that others stream from: one per
/// follower, and the operator's additional slots.
fn slot_changes(db: &Db, pg: &Instance) -> Option<Action> {
    let slots = pg.slots.as_ref()?;
    let wanted: Vec<String> = db
        .spec
        .followers
        .iter()
        .map(slot_name)
        .chain(
            db.spec
                .additional_replication_slots
                .iter()
                .map(|name| format!("{SLOT_PREFIX}{name}")),
        )
        .collect();
    let create: Vec<String> = wanted
        .iter()
        .filter(|s| !slots.contains(s))
        .cloned()
        .collect();
    let drop: Vec<String> = slots
        .iter()
        .filter(|s| !wanted.contains(s))
        .cloned()
        .collect();
    (!create.is_empty() || !drop.is_empty()).then_some(Action::SyncSlots { create, drop })
}

pub fn next_action(
    cd: Option<&ClusterData>,
    me: &KeeperUid,
    boot_uuid: &str,
    local: &LocalDb,
    pg: &Instance,
) -> Action {
    let stop_or_wait = |why: Refusal| {
        if pg.running {
            Action::Stop(StopReason::Refused(why))
        } else {
            Action::Wait(WaitReason::Refused(why))
        }
    };
    let Some(cd) = cd else {
        return Action::Wait(WaitReason::NoClusterData);
    };
    if cd.cluster.status.pause.is_some() {
        return Action::Wait(WaitReason::Paused);
    }
    let Some(keeper) = cd.keepers.get(me) else {
        return Action::Wait(WaitReason::NoKeeperData);
    };
    if keeper.status.boot_uuid != boot_uuid {
        return stop_or_wait(Refusal::BootUidChanged);
    }
    let Some(db) = cd.db_of_keeper(me) else {
        return stop_or_wait(Refusal::NoDbAssigned);
    };
    let followed = followed_endpoint(cd, db);
    if let (Some(local_id), Some(recorded)) = (&pg.system_id, &local.system_id) {
        if local_id != recorded && !local.initializing {
            return stop_or_wait(Refusal::SystemIdChanged);
        }
    }

    if local.uid.as_ref() != Some(&db.uid) || local.initializing {
        return match db.spec.init_mode {
            // Adopting wipes nothing, and the cluster data names this keeper for it.
            InitMode::Existing if pg.initialized => Action::Adopt { db: db.uid.clone() },
            InitMode::Existing => stop_or_wait(Refusal::NothingToAdopt),
            // Every db this keeper makes is recorded before its data directory is touched,
            // so an initialised data directory without a record is someone else's: never
            // wiped.
            _ if local.uid.is_none() && pg.initialized => stop_or_wait(Refusal::ForeignData),
            InitMode::New => Action::InitNew { db: db.uid.clone() },
            InitMode::Pitr => Action::Restore { db: db.uid.clone() },
            InitMode::Resync => match followed {
                Some(from) => Action::Resync {
                    db: db.uid.clone(),
                    from,
                    slot: slot_name(&db.uid),
                    rewind: db.spec.use_pgrewind
                        && pg.initialized
                        && !local.initializing
                        && pg.system_id.is_some()
                        && pg.system_id.as_deref() == followed_system_id(cd, db),
                },
                None => stop_or_wait(Refusal::NoUpstreamAddress),
            },
            InitMode::None => stop_or_wait(Refusal::NotOurDb),
        };
    }
    if !pg.initialized {
        return stop_or_wait(Refusal::DataDirectoryLost);
    }

    match db.spec.role {
        DbRole::Master if db.spec.halt => {
            if pg.running {
                return Action::Halt;
            }
            if local.generation == db.generation {
                return Action::Wait(WaitReason::HaltedForSwitchover);
            }
        }
        DbRole::Master => {
            if !pg.running {
                let follow = if pg.standby_signal { followed } else { None };
                return Action::Start { follow };
            }
            match pg.in_recovery {
                None => return Action::Wait(WaitReason::NotAnswering),
                Some(true) => return Action::Promote,
                Some(false) => {}
            }
            if pg.config_stale {
                return Action::Reconfigure;
            }
            if pg.pending_restart && db.spec.automatic_pg_restart {
                return Action::Restart;
            }
            if let Some(sync) = slot_changes(db, pg) {
                return sync;
            }
        }
        DbRole::Standby => {
            let locally_primary = if pg.running {
                match pg.in_recovery {
                    None => return Action::Wait(WaitReason::NotAnswering),
                    Some(in_recovery) => !in_recovery,
                }
            } else {
                !pg.standby_signal
            };
            if locally_primary {
                return Action::Wait(WaitReason::MasterToStandby);
            }
            // A standby cluster's standby leader: its upstream is the remote of its spec.
            let leads = db.spec.follows_remote();
            if !pg.running && leads {
                return Action::Start { follow: None };
            }
            if !pg.running {
                return match followed.or_else(|| pg.following.clone()) {
                    Some(from) => Action::Start { follow: Some(from) },
                    None => Action::Wait(WaitReason::Refused(Refusal::NoUpstreamAddress)),
                };
            }
            if followed.is_some_and(|want| pg.following.as_ref() != Some(&want)) || pg.config_stale
            {
                return Action::Reconfigure;
            }
            if pg.pending_restart && db.spec.automatic_pg_restart {
                return Action::Restart;
            }
            // The cluster's standbys stream from the standby leader through their slots.
            if let Some(sync) = slot_changes(db, pg).filter(|_| leads) {
                return sync;
            }
        }
    }
    if local.generation != db.generation {
        return Action::MarkApplied(db.generation);
    }
    Action::Idle
}
