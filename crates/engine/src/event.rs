//! What the sentinel's planner tells: every kind of decision it logs, each with its level
//! and its message. The message text is a contract: operators and tests grep the log lines
//! for it, so a kind's text never changes with the code around it.

use std::fmt;

/// One decision, with its reason, for the daemon to log as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// The details of the line, `key=value`: only for the operator to read.
    pub fields: Vec<(&'static str, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
}

impl Event {
    pub fn new(kind: EventKind) -> Event {
        Event {
            kind,
            fields: Vec::new(),
        }
    }

    pub fn with(mut self, key: &'static str, value: impl ToString) -> Event {
        self.fields.push((key, value.to_string()));
        self
    }

    pub fn level(&self) -> Level {
        self.kind.level()
    }

    pub fn message(&self) -> &'static str {
        self.kind.message()
    }
}

/// `message key=value key=value...`
impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())?;
        for (k, v) in &self.fields {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

/// Every kind of decision the planner tells, in the order of the cluster's life: keepers
/// and dbs observed, bootstrap, failover, standbys, switchover, pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    KeeperRegistered,
    /// `stolonctl failkeeper`.
    KeeperForcedToFail,
    /// A db's report is missing or bad: it fails once this lasts failInterval.
    DbProblem(DbProblem),
    NoMasterDb,
    MasterFailed,
    MasterNotConverged,
    RemovingDeadKeeper,

    DbInitialized,
    DbFailedToInitialize,
    WaitingForDb,
    MergingInitParameters,
    FindingInitialMaster,
    NoKeepersRegistered,
    NoInitialMasterCandidate,
    InitializingCluster,
    InitializingClusterWithPitr,
    /// initMode existing names a keeper that is not healthy.
    ExistingKeeperNotAvailable,
    InitializingClusterFromExisting,

    FindingReplacement,
    IgnoringKeeper,
    NoEligibleMaster,
    ElectingNewMaster,
    RemovingOldMaster,
    NotReinstatingInSyncMode,
    WaitingForProxies,
    ReinstatingOldMaster,
    WaitingForUnseenProxies,
    ProxiesFencedPromoting,
    ProxiesFencedMakingStandbyLeader,
    PromotingStandbyLeader,

    ProxiesRouteToMaster,
    RemovingNonGoodStandby,
    RemovingExcessStandby,
    AddedNewStandby,
    RemovingStandbyMissingWal,
    RemovingInvalidDb,
    /// An order against a keeper's data waits for proof that the primary is alive.
    WaitingForMasterReport,
    ResettingExpectedSyncStandbys,
    RemovingFailedSyncStandby,
    AddingSyncStandby,
    MergingSyncStandbys,
    SyncStandbysChanged,
    WaitingForSyncStandbys,
    UsingFakeSyncStandby,

    SwitchoverHolding,
    SwitchoverWaitingForProxies,
    SwitchoverGracePeriod,
    SwitchoverHalting,
    SwitchoverWaitingForHalt,
    SwitchoverUnexpectedTimeline,
    SwitchoverOldPrimaryStopped,
    SwitchoverWaitingForCatchUp,
    SwitchoverElectingTarget,
    SwitchoverAbandoned,
    SwitchoverCompleted,
    SwitchoverDidNotHappen,

    SwitchoverHeldByPause,
    FailoverHeldByPause,
    ProxiesRouteNowhereWhilePaused,
}

impl EventKind {
    pub fn level(self) -> Level {
        self.describe().0
    }

    pub fn message(self) -> &'static str {
        self.describe().1
    }

    /// Level and message side by side, so that each kind reads as one line.
    fn describe(self) -> (Level, &'static str) {
        use EventKind as K;
        use Level::{Info, Warn};
        match self {
            K::KeeperRegistered => (Info, "new keeper registered"),
            K::KeeperForcedToFail => (Warn, "keeper forced to fail (stolonctl failkeeper)"),
            K::DbProblem(problem) => (Warn, problem.message()),
            K::NoMasterDb => (Warn, "cluster has no master db: nothing can be decided"),
            K::MasterFailed => (Warn, "master db is failed"),
            K::MasterNotConverged => (Warn, "db not converged"),
            K::RemovingDeadKeeper => (Info, "removing old dead keeper"),

            K::DbInitialized => (Info, "db initialized"),
            K::DbFailedToInitialize => (Warn, "db failed to initialize"),
            K::WaitingForDb => (Info, "waiting for db"),
            K::MergingInitParameters => (
                Info,
                "merging the initial postgres parameters into the cluster spec",
            ),
            K::FindingInitialMaster => (Info, "trying to find initial master"),
            K::NoKeepersRegistered => (
                Warn,
                "cannot choose initial master: no keepers registered",
            ),
            K::NoInitialMasterCandidate => (
                Warn,
                "cannot choose initial master: no healthy keeper that can be master",
            ),
            K::InitializingCluster => (Info, "initializing cluster"),
            K::InitializingClusterWithPitr => (
                Info,
                "initializing cluster using point in time recovery",
            ),
            K::ExistingKeeperNotAvailable => (Warn, "keeper state not available"),
            K::InitializingClusterFromExisting => {
                (Info, "initializing cluster using existing data")
            }

            K::FindingReplacement => (Info, "trying to find a standby to replace failed master"),
            K::IgnoringKeeper => (Info, "ignoring keeper as new master"),
            K::NoEligibleMaster => (Warn, "no eligible masters: no failover"),
            K::ElectingNewMaster => (Info, "electing db as the new master"),
            K::RemovingOldMaster => (Info, "removing old master db"),
            K::NotReinstatingInSyncMode => (
                Info,
                "not reinstating the old master: synchronous replication only promotes a known synchronous standby",
            ),
            K::WaitingForProxies => (
                Info,
                "waiting for proxies to be converged to the current generation",
            ),
            K::ReinstatingOldMaster => (
                Info,
                "reinstating the old master db: the standby elected to replace it failed before serving",
            ),
            K::WaitingForUnseenProxies => (
                Info,
                "waiting for proxies this leader never saw to be fenced",
            ),
            K::ProxiesFencedPromoting => (Info, "proxies fenced: promoting db"),
            K::ProxiesFencedMakingStandbyLeader => (
                Info,
                "proxies fenced: making db the standby leader, following the remote primary",
            ),
            K::PromotingStandbyLeader => (
                Info,
                "promoting the standby leader: the cluster's role is master now",
            ),

            K::ProxiesRouteToMaster => (Info, "proxies may now route to the master db"),
            K::RemovingNonGoodStandby => (Info, "removing non good standby"),
            K::RemovingExcessStandby => (Info, "removing good standby in excess"),
            K::AddedNewStandby => (Info, "added new standby db"),
            K::RemovingStandbyMissingWal => (
                Warn,
                "removing db that won't be able to sync due to missing wals on current master",
            ),
            K::RemovingInvalidDb => (Warn, "removing invalid db"),
            K::WaitingForMasterReport => (
                Info,
                "waiting for the master to report again before acting",
            ),
            K::ResettingExpectedSyncStandbys => (
                Info,
                "setting the expected sync-standbys to the current known in sync sync-standbys",
            ),
            K::RemovingFailedSyncStandby => (Info, "removing failed synchronous standby"),
            K::AddingSyncStandby => (
                Info,
                "adding new synchronous standby in good state trying to reach MaxSynchronousStandbys",
            ),
            K::MergingSyncStandbys => (Info, "merging current and previous synchronous standbys"),
            K::SyncStandbysChanged => (Info, "synchronousStandbys changed"),
            K::WaitingForSyncStandbys => (
                Info,
                "waiting for new defined synchronous standbys to be in sync",
            ),
            K::UsingFakeSyncStandby => (
                Info,
                "using a fake synchronous standby since there are not enough real standbys available",
            ),

            K::SwitchoverHolding => (
                Info,
                "switchover: holding new client connections at the proxies",
            ),
            K::SwitchoverWaitingForProxies => (
                Info,
                "switchover: waiting for the proxies to hold new connections",
            ),
            K::SwitchoverGracePeriod => (
                Info,
                "switchover: letting existing sessions finish (grace period)",
            ),
            K::SwitchoverHalting => (
                Info,
                "switchover: stopping the old primary after a checkpoint",
            ),
            K::SwitchoverWaitingForHalt => {
                (Info, "switchover: waiting for the old primary to shut down")
            }
            K::SwitchoverUnexpectedTimeline => (
                Warn,
                "switchover: the old primary stopped on an unexpected timeline",
            ),
            K::SwitchoverOldPrimaryStopped => (Info, "switchover: old primary stopped"),
            K::SwitchoverWaitingForCatchUp => {
                (Info, "switchover: waiting for the target to catch up")
            }
            K::SwitchoverElectingTarget => (
                Info,
                "switchover: target has the old primary's final WAL position: electing it",
            ),
            K::SwitchoverAbandoned => (Warn, "switchover abandoned"),
            K::SwitchoverCompleted => (Info, "switchover completed"),
            K::SwitchoverDidNotHappen => (Warn, "switchover did not happen"),

            K::SwitchoverHeldByPause => (Warn, "switchover held back: the cluster is paused"),
            K::FailoverHeldByPause => (Warn, "failover held back: the cluster is paused"),
            K::ProxiesRouteNowhereWhilePaused => (
                Info,
                "proxies told to route nowhere: the paused cluster's master db is failed",
            ),
        }
    }
}

/// Why the sentinel takes a db's report as bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbProblem {
    /// Its keeper's info is missing from the store or stale.
    NoKeeperInfo,
    NoDbState,
    /// Its keeper reports on another db (its previous one, say).
    UnexpectedDbUid,
    NotHealthy,
}

impl DbProblem {
    pub fn message(self) -> &'static str {
        match self {
            DbProblem::NoKeeperInfo => "no keeper info available",
            DbProblem::NoDbState => "no db state available",
            DbProblem::UnexpectedDbUid => "received db state for unexpected db uid",
            DbProblem::NotHealthy => "db is not healthy",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log line is the kind's message, then each field as ` key=value`, in order.
    #[test]
    fn an_event_prints_its_message_then_its_fields() {
        let event = Event::new(EventKind::ElectingNewMaster)
            .with("db", "db-1")
            .with("keeper", "k1");
        assert_eq!(
            event.to_string(),
            "electing db as the new master db=db-1 keeper=k1"
        );
        let problem = Event::new(EventKind::DbProblem(DbProblem::NotHealthy));
        assert_eq!(problem.to_string(), "db is not healthy");
        assert_eq!(problem.level(), Level::Warn);
    }
}
