//! What the keeper's machine asks of its driver and hears back: the IO requests, their
//! outcomes, the decisions worth telling, and what the keeper publishes about itself.

use crate::keeper::report::Observation;
use crate::keeper::{Action, Endpoint, WaitReason};
use crate::ClusterView;
use std::sync::Arc;
use std::time::Duration;
use stolon_cluster::{KeeperInfo, KeeperUid};

/// What the keeper publishes about itself besides its instance's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: KeeperUid,
    pub can_be_master: bool,
    pub can_be_synchronous_replica: bool,
    /// Among equally advanced failover candidates, the higher priority wins.
    pub priority: i32,
    /// Where the other components reach its postgres.
    pub advertise: Endpoint,
}

/// A cluster data read, as the store answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOutcome {
    Data(Arc<ClusterView>),
    /// The store holds no cluster data.
    NoData,
    /// The store could not be read, or what it holds could not be decoded: the keeper then
    /// publishes against the cluster data it read last, and does not act.
    Failed,
}

/// The IO the machine asks of its driver next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Read the cluster data: answer [`Input::Read`].
    ReadClusterData,
    /// Look at the instance (configuration files rendered for `view` and `sync_gate`):
    /// answer [`Input::Observed`].
    Observe {
        view: Option<Arc<ClusterView>>,
        sync_gate: bool,
    },
    /// Carry out `action` (configuration files rendered for `view` and `sync_gate`):
    /// answer [`Input::Acted`].
    Act {
        action: Action,
        view: Option<Arc<ClusterView>>,
        sync_gate: bool,
    },
    /// Wait for `max`, or less when the cluster data changes (with `wake_on_change`) or
    /// postgres exits (with `wake_on_exit`): answer [`Input::Woken`].
    Sleep {
        max: Duration,
        wake_on_change: bool,
        wake_on_exit: bool,
    },
}

/// The outcome of the last [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Read(ReadOutcome),
    Observed(Box<Observation>),
    Acted { succeeded: bool },
    Woken,
}

/// A decision worth telling: one log line each (but [`Note::Converged`], which only the
/// keeper's status records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The reconciler waits, for this reason (told once until the reason changes).
    Waiting(WaitReason),
    /// The instance matches its db spec.
    Converged,
    /// postgres failed to start repeatedly: the next start waits.
    StartBackoff {
        failures: u32,
        retry_in: Duration,
    },
    /// A synchronous primary starts: only the keeper's own roles may connect until its
    /// synchronous standbys are in sync again.
    SyncGateClosed,
    SyncGateLifted,
    /// A publish reached the store again: the fence is lifted, and the keeper takes a new
    /// boot id so that it only acts on cluster data the sentinel wrote after seeing it.
    FenceLifted {
        held: Duration,
    },
    /// The cluster is paused: a postgres found running at the keeper's start is left so.
    LeftRunningWhilePaused,
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Note::Waiting(reason) => reason.fmt(f),
            Note::Converged => f.write_str("converged"),
            Note::StartBackoff { retry_in, .. } => write!(
                f,
                "postgres failed to start repeatedly: trying again in {retry_in:?} (at once if the db spec changes)"
            ),
            Note::SyncGateClosed => f.write_str(
                "not allowing connection as normal users since synchronous replication is enabled and instance was down",
            ),
            Note::SyncGateLifted => {
                f.write_str("synchronous standbys in sync: allowing connections from normal users")
            }
            Note::FenceLifted { held } => write!(
                f,
                "store reachable again: fence lifted after {:.1}s, postgres goes back to what the cluster data says",
                held.as_secs_f64()
            ),
            Note::LeftRunningWhilePaused => {
                f.write_str("the cluster is paused: leaving the running postgres as it is")
            }
        }
    }
}

/// What the machine asks next, with what it decided on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub notes: Vec<Note>,
    /// A keeper info to store now, without waiting for its answer.
    pub publish: Option<Publication>,
    pub request: Request,
}

/// A keeper info to store under a lease of `ttl`; its answer goes to
/// [`super::KeeperMachine::published`] with `sent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub info: KeeperInfo,
    pub ttl: Duration,
    /// When it was sent, on the machine's clock.
    pub sent: Duration,
}
