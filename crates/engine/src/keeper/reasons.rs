//! Why the reconciler waits or stops postgres: the reasons [`super::Action::Wait`] and
//! [`super::Action::Stop`] carry. Each prints as the keeper's log line has always read, since
//! operators grep for it.

use std::fmt;

/// Why nothing can be done now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    NoClusterData,
    /// `stolonctl pause`: postgres is left as it is.
    Paused,
    /// The cluster data does not list this keeper yet.
    NoKeeperData,
    /// Halted for a switchover: the sentinel decides what comes next.
    HaltedForSwitchover,
    NotAnswering,
    /// The cluster data asks a standby of an instance that runs as a primary.
    MasterToStandby,
    /// postgres is not running, and may not run now.
    Refused(Refusal),
}

/// Why postgres must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The keeper starts and finds it running: it only serves once the keeper says so.
    LeftRunning,
    Refused(Refusal),
}

/// Why the keeper will not run postgres now: it stops a running one, and otherwise waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The sentinel has not seen this keeper's current boot yet.
    BootUidChanged,
    NoDbAssigned,
    /// The data directory is not the one this keeper made.
    SystemIdChanged,
    /// initMode existing, with nothing to adopt.
    NothingToAdopt,
    /// Someone else's data: never wiped.
    ForeignData,
    /// The db to follow has no known address yet.
    NoUpstreamAddress,
    /// The data directory holds another db, and nothing asks to initialise a new one.
    NotOurDb,
    /// The state file says the data directory was made, and it is empty.
    DataDirectoryLost,
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WaitReason::NoClusterData => "no cluster data available, waiting for it to appear",
            WaitReason::Paused => {
                "the cluster is paused (stolonctl resume ends it): postgres is left as it is"
            }
            WaitReason::NoKeeperData => {
                "our keeper data is not available, waiting for it to appear"
            }
            WaitReason::HaltedForSwitchover => {
                "postgres stopped for a switchover: waiting for the sentinel"
            }
            WaitReason::NotAnswering => "postgres is not answering yet",
            WaitReason::MasterToStandby => "cannot move from master role to standby role",
            WaitReason::Refused(refusal) => return refusal.fmt(f),
        })
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::LeftRunning => {
                f.write_str("stopping postgres left running by a previous keeper process")
            }
            StopReason::Refused(refusal) => refusal.fmt(f),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::BootUidChanged => {
                "our db boot UID is different than the cluster data one, waiting for it to be updated"
            }
            Refusal::NoDbAssigned => "no db assigned",
            Refusal::SystemIdChanged => {
                "the data directory's system identifier differs from the one recorded when \
                 this keeper made it: refusing to act on it"
            }
            Refusal::NothingToAdopt => {
                "initMode existing, but the data directory holds no database cluster"
            }
            Refusal::ForeignData => {
                "the data directory holds a PostgreSQL cluster this keeper did not create: \
                 refusing to wipe it (move it away to let the keeper initialise a new one)"
            }
            Refusal::NoUpstreamAddress => "waiting for the db to follow to have a known address",
            Refusal::NotOurDb => {
                "our data directory does not hold the db the cluster data assigns us, and the \
                 cluster data does not ask to initialise it: refusing to act (check that the \
                 keeper data is on a persistent volume)"
            }
            Refusal::DataDirectoryLost => {
                "database cluster not initialized although our state says it was: refusing to \
                 re-initialise it on our own"
            }
        })
    }
}
