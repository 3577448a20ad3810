//! The sentinel's loop as a state machine: the daemon and the simulator drive this one.
//!
//! Each check reads the cluster data (writing the initial one when the store has none and
//! the sentinel was given a spec), publishes the sentinel's info once per sleepInterval,
//! and, while this sentinel leads, reads the keepers' and proxies' infos, runs the planner
//! ([`step`]) and writes what it computed with compare-and-swap against the revision it
//! read. Then it sleeps until the store changes (and a little more, to gather a burst of
//! changes), the planner's next deadline, or the sleep interval.
//!
//! Leadership is the store's (an election the driver takes part in); every input comes
//! with the term the driver holds then (0: not leading). The planner's memory lives for one
//! term. `R` is the store's revision type.
//!
//! Time is the driver's monotonic clock, as a [`Duration`] since an origin of its choice.

use super::{step, Memory, Observations};
use crate::ids::Ids;
use crate::{ClusterView, Event};
use std::sync::Arc;
use std::time::Duration;
use stolon_cluster::{
    ClusterData, ClusterSpec, ClusterUid, KeeperInfo, ProxyInfo, SentinelInfo, SentinelUid,
};

/// Until the cluster data says otherwise.
pub const DEFAULT_SLEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Store changes arrive in bursts (every component publishes): gather them.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// A cluster data read, as the store answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOutcome<R> {
    Data {
        view: Arc<ClusterView>,
        revision: R,
    },
    /// The store holds no cluster data.
    NoData,
    /// The store could not be read, or what it holds could not be decoded.
    Failed,
}

/// The IO the machine asks of its driver next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<R> {
    /// Read the cluster data: answer [`Input::Read`].
    ReadClusterData,
    /// Write this as the first cluster data, only if the store still has none: answer
    /// [`Input::Written`] (someone else's first write counts as success).
    WriteInitial(Box<ClusterData>),
    /// Store the sentinel's info under a lease of `ttl`: answer [`Input::Published`].
    Publish { info: SentinelInfo, ttl: Duration },
    /// Read every keeper's and proxy's info: answer [`Input::Infos`].
    ReadInfos,
    /// Write `data` if the stored cluster data is still at `revision`: answer
    /// [`Input::Written`] (a conflict counts as success: the next check reads again).
    Write { data: Box<ClusterData>, revision: R },
    /// Wait for `max`, or until the store changes and then `debounce` more: answer
    /// [`Input::Woken`].
    Sleep { max: Duration, debounce: Duration },
}

/// The outcome of the last [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<R> {
    Read(ReadOutcome<R>),
    Published {
        succeeded: bool,
    },
    /// The infos; None when they could not be read.
    Infos(Option<(Vec<KeeperInfo>, Vec<ProxyInfo>)>),
    Written {
        succeeded: bool,
    },
    Woken,
}

/// What the machine decided, one log line each (but [`Note::CheckSucceeded`], which only
/// the sentinel's metrics record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// A decision of the planner, told once while it repeats from check to check.
    Planner(Event),
    WritingInitialClusterData,
    /// The store has no cluster data, and this sentinel has no spec to write one with.
    WaitingForClusterData,
    CheckSucceeded,
    CheckFailed,
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Note::Planner(event) => event.fmt(f),
            Note::WritingInitialClusterData => f.write_str("writing initial cluster data"),
            Note::WaitingForClusterData => {
                f.write_str("no cluster data available, waiting for it to appear (stolonctl init)")
            }
            Note::CheckSucceeded => f.write_str("cluster check succeeded"),
            Note::CheckFailed => f.write_str("cluster check failed"),
        }
    }
}

/// What the machine asks next, with what it decided on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step<R> {
    pub notes: Vec<Note>,
    pub request: Request<R>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase<R> {
    Reading,
    WritingInitial,
    Publishing { view: Arc<ClusterView>, revision: R },
    ReadingInfos { view: Arc<ClusterView>, revision: R },
    Writing,
    Sleeping,
}

#[derive(Debug, Clone)]
pub struct SentinelMachine<R> {
    uid: SentinelUid,
    /// Written as a new cluster when the store holds no cluster data.
    initial_spec: Option<ClusterSpec>,
    ids: Ids,
    memory: Memory,
    /// The leadership term `memory` belongs to.
    memory_term: u64,
    /// The planner's events of the last step: only new ones are told.
    previous_events: Vec<Event>,
    info_published: Option<Duration>,
    /// When the planner asked to be run again.
    wake_at: Option<Duration>,
    sleep_interval: Duration,
    phase: Phase<R>,
}

impl<R: Clone> SentinelMachine<R> {
    /// A sentinel process starting; `seed` feeds the uids it makes.
    pub fn new(uid: SentinelUid, initial_spec: Option<ClusterSpec>, seed: u64) -> Self {
        SentinelMachine {
            uid,
            initial_spec,
            ids: Ids::new(seed),
            memory: Memory::default(),
            memory_term: 0,
            previous_events: Vec::new(),
            info_published: None,
            wake_at: None,
            sleep_interval: DEFAULT_SLEEP_INTERVAL,
            phase: Phase::Reading,
        }
    }

    /// The first request.
    pub fn start(&mut self) -> Step<R> {
        self.phase = Phase::Reading;
        Step {
            notes: Vec::new(),
            request: Request::ReadClusterData,
        }
    }

    /// The outcome of the last request, at `now`, while the driver holds leadership term
    /// `term` (0: none): the next request.
    pub fn handle(&mut self, now: Duration, term: u64, input: Input<R>) -> Step<R> {
        let mut notes = Vec::new();
        let phase = std::mem::replace(&mut self.phase, Phase::Sleeping);
        let request = match (phase, input) {
            (Phase::Reading, Input::Read(outcome)) => self.read(now, term, outcome, &mut notes),
            (Phase::WritingInitial, Input::Written { succeeded }) => {
                if !succeeded {
                    notes.push(Note::CheckFailed);
                }
                self.sleep(now)
            }
            (Phase::Publishing { view, revision }, Input::Published { succeeded }) => {
                if !succeeded {
                    notes.push(Note::CheckFailed);
                    return Step {
                        notes,
                        request: self.sleep(now),
                    };
                }
                self.info_published = Some(now);
                self.lead(now, term, view, revision, &mut notes)
            }
            (Phase::ReadingInfos { view, revision }, Input::Infos(Some((keepers, proxies)))) => {
                self.plan(now, term, &view, revision, &keepers, &proxies, &mut notes)
            }
            (Phase::ReadingInfos { .. }, Input::Infos(None)) => {
                notes.push(Note::CheckFailed);
                self.sleep(now)
            }
            (Phase::Writing, Input::Written { succeeded }) => {
                notes.push(if succeeded {
                    Note::CheckSucceeded
                } else {
                    Note::CheckFailed
                });
                self.sleep(now)
            }
            (Phase::Sleeping, Input::Woken) => self.check(),
            // An answer to a request not made: check again rather than act on it.
            _ => self.check(),
        };
        Step { notes, request }
    }

    fn check(&mut self) -> Request<R> {
        self.phase = Phase::Reading;
        Request::ReadClusterData
    }

    fn read(
        &mut self,
        now: Duration,
        term: u64,
        outcome: ReadOutcome<R>,
        notes: &mut Vec<Note>,
    ) -> Request<R> {
        let (view, revision) = match outcome {
            ReadOutcome::Data { view, revision } => (view, revision),
            ReadOutcome::NoData => {
                let Some(spec) = self.initial_spec.clone() else {
                    notes.push(Note::WaitingForClusterData);
                    return self.sleep(now);
                };
                notes.push(Note::WritingInitialClusterData);
                self.phase = Phase::WritingInitial;
                let cd = ClusterData::new(ClusterUid::new(self.ids.uid()), spec);
                return Request::WriteInitial(Box::new(cd));
            }
            ReadOutcome::Failed => {
                notes.push(Note::CheckFailed);
                return self.sleep(now);
            }
        };
        let interval = view.spec.sleep_interval;
        self.sleep_interval = interval;
        // Publishing wakes every watcher, this sentinel included: once per interval.
        if self
            .info_published
            .is_none_or(|at| now.saturating_sub(at) >= interval)
        {
            self.phase = Phase::Publishing { view, revision };
            return Request::Publish {
                info: SentinelInfo {
                    uid: self.uid.clone(),
                },
                ttl: (2 * interval).max(Duration::from_secs(3)),
            };
        }
        self.lead(now, term, view, revision, notes)
    }

    /// The part of a check only the leader does.
    fn lead(
        &mut self,
        now: Duration,
        term: u64,
        view: Arc<ClusterView>,
        revision: R,
        notes: &mut Vec<Note>,
    ) -> Request<R> {
        if term == 0 {
            notes.push(Note::CheckSucceeded);
            return self.sleep(now);
        }
        if term != self.memory_term {
            // A new term: what an earlier term remembered may be stale.
            self.memory = Memory::default();
            self.memory_term = term;
            self.previous_events.clear();
        }
        self.phase = Phase::ReadingInfos { view, revision };
        Request::ReadInfos
    }

    #[allow(clippy::too_many_arguments)]
    fn plan(
        &mut self,
        now: Duration,
        term: u64,
        view: &ClusterView,
        revision: R,
        keepers: &[KeeperInfo],
        proxies: &[ProxyInfo],
        notes: &mut Vec<Note>,
    ) -> Request<R> {
        let out = step(
            now,
            &view.data,
            &view.spec,
            Observations { keepers, proxies },
            &mut self.memory,
            self.ids.next_u64(),
        );
        notes.extend(
            out.events
                .iter()
                .filter(|e| !self.previous_events.contains(e))
                .cloned()
                .map(Note::Planner),
        );
        self.previous_events = out.events;
        self.wake_at = out.wake_at;
        // Leadership may have been lost since the infos were read: a deposed leader must
        // not write.
        if out.data == view.data || term != self.memory_term {
            notes.push(Note::CheckSucceeded);
            return self.sleep(now);
        }
        self.phase = Phase::Writing;
        Request::Write {
            data: Box::new(out.data),
            revision,
        }
    }

    fn sleep(&mut self, now: Duration) -> Request<R> {
        self.phase = Phase::Sleeping;
        // A deadline the planner named (a failInterval falling due) comes before the
        // fallback poll.
        let max = self.wake_at.take().map_or(self.sleep_interval, |at| {
            at.saturating_sub(now).min(self.sleep_interval)
        });
        Request::Sleep {
            max,
            debounce: DEBOUNCE,
        }
    }
}
