//! The keeper's loop as a state machine: the daemon and the simulator drive this one.
//!
//! One loop reads the cluster data, observes the instance and acts on it until the
//! reconciler ([`next_action`]) has nothing more to do, then publishes what it observed and
//! sleeps until the cluster data changes, postgres exits or the next heartbeat is due. Each
//! [`Request`] is one piece of IO for the driver; its outcome comes back as an [`Input`],
//! and the machine answers with the next request and the [`Note`]s worth a log line.
//!
//! A publish does not hold the loop: the driver sends it on its own and hands its answer to
//! [`KeeperMachine::published`] whenever it comes. A store that leaves a request unanswered
//! until the request times out would otherwise keep the keeper from its next heartbeat for
//! that long, and with tuned timings one such request was enough for the fence below to
//! stop a healthy primary. The store-loss fence ([`KeeperFence`]) lives here too: the
//! driver's watchdog asks [`KeeperMachine::enforce_fence`] while the loop may be stuck in a
//! request.
//!
//! Time is the driver's monotonic clock, as a [`Duration`] since an origin of its choice.

mod io;

pub use io::{Identity, Input, Note, Publication, ReadOutcome, Request, Step};

use super::report::{pg_state, same_but_position, Observation};
use super::starts::{FailedStarts, StartKey};
use super::{next_action, sync_gate_lifted, Action, StopReason, WaitReason};
use crate::ids::Ids;
use crate::store_loss::{Enforce, KeeperFence, Timing};
use crate::ClusterView;
use std::sync::Arc;
use std::time::Duration;
use stolon_cluster::{ClusterPhase, Db, DbRole, KeeperInfo, PgState};

/// Until the cluster data says otherwise.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// How soon to read the store again after a read failed.
pub const STORE_RETRY: Duration = Duration::from_secs(1);
/// The most actions one loop takes before publishing what it has done.
pub const MAX_ACTIONS_PER_LOOP: usize = 8;
/// The shortest sleep: a publish falling due at once still waits for this.
const MIN_SLEEP: Duration = Duration::from_millis(50);
/// Until the cluster data says otherwise (its dbWaitReadyTimeout).
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Reading,
    Observing {
        /// Whether this loop may act: its cluster data read succeeded.
        reconcile: bool,
        actions: usize,
        /// The action just carried out: the same again waits for the next loop.
        previous: Option<Action>,
    },
    Acting {
        action: Action,
        actions: usize,
    },
    Sleeping,
}

/// The last keeper info sent.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sent {
    at: Duration,
    state: Option<PgState>,
}

#[derive(Debug, Clone)]
pub struct KeeperMachine {
    identity: Identity,
    ids: Ids,
    boot_uuid: String,
    /// With `--store-loss fence`.
    fence: Option<KeeperFence>,
    phase: Phase,
    /// The last cluster data read: while the store cannot be read, the keeper still
    /// publishes what it observes against it.
    view: Option<Arc<ClusterView>>,
    /// Whether the current loop's read succeeded.
    read: bool,
    paused: bool,
    heartbeat: Duration,
    stop_timeout: Duration,
    sync_gate: bool,
    failed_starts: FailedStarts,
    last_wait: Option<WaitReason>,
    last_sent: Option<Sent>,
    /// The publication of the loop that just ended, for its [`Step`].
    outgoing: Option<Publication>,
    observation: Observation,
    /// Until the first observation: a postgres running then was started by an earlier
    /// keeper process, on decisions this one did not see.
    fresh: bool,
}

impl KeeperMachine {
    /// A keeper process starting; `seed` feeds its boot and info ids; `fence` with
    /// `--store-loss fence`.
    pub fn new(identity: Identity, seed: u64, fence: bool) -> KeeperMachine {
        let mut ids = Ids::new(seed);
        KeeperMachine {
            identity,
            boot_uuid: new_boot_uuid(&mut ids),
            ids,
            fence: fence.then(KeeperFence::default),
            phase: Phase::Reading,
            view: None,
            read: false,
            paused: false,
            heartbeat: DEFAULT_HEARTBEAT,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            sync_gate: false,
            failed_starts: FailedStarts::default(),
            last_wait: None,
            last_sent: None,
            outgoing: None,
            observation: Observation::default(),
            fresh: true,
        }
    }

    /// The first request.
    pub fn start(&mut self) -> Step {
        self.phase = Phase::Reading;
        Step {
            notes: Vec::new(),
            publish: None,
            request: Request::ReadClusterData,
        }
    }

    /// The outcome of the last request, at `now`: the next request.
    pub fn handle(&mut self, now: Duration, input: Input) -> Step {
        let mut notes = Vec::new();
        let phase = std::mem::replace(&mut self.phase, Phase::Sleeping);
        let request = match (phase, input) {
            (Phase::Reading, Input::Read(outcome)) => self.read(outcome),
            (
                Phase::Observing {
                    reconcile,
                    actions,
                    previous,
                },
                Input::Observed(observation),
            ) => self.observed(now, *observation, reconcile, actions, previous, &mut notes),
            (Phase::Acting { action, actions }, Input::Acted { succeeded }) => {
                self.acted(action, actions, succeeded, now, &mut notes)
            }
            (Phase::Sleeping, Input::Woken) => self.next_loop(),
            // An answer to a request not made: start the loop over rather than act on it.
            _ => self.next_loop(),
        };
        Step {
            notes,
            publish: self.outgoing.take(),
            request,
        }
    }

    fn next_loop(&mut self) -> Request {
        self.phase = Phase::Reading;
        Request::ReadClusterData
    }

    fn read(&mut self, outcome: ReadOutcome) -> Request {
        self.read = outcome != ReadOutcome::Failed;
        match outcome {
            ReadOutcome::Data(view) => {
                let spec = &view.spec;
                self.paused = view.data.cluster.status.pause.is_some();
                self.heartbeat = spec.keeper_heartbeat();
                self.stop_timeout = spec.db_wait_ready_timeout;
                // While the cluster initialises no failover can replace this keeper, whose
                // loop may be busy in initdb for longer than the fence's limit.
                let master = view.data.cluster.status.phase == ClusterPhase::Normal
                    && self
                        .my_db_in(&view)
                        .is_some_and(|db| db.spec.role == DbRole::Master);
                if let Some(fence) = &mut self.fence {
                    fence.read(Timing::of(spec), master);
                }
                self.view = Some(view);
            }
            ReadOutcome::NoData => self.view = None,
            ReadOutcome::Failed => {}
        }
        self.observe(Phase::Observing {
            reconcile: self.read,
            actions: 0,
            previous: None,
        })
    }

    fn observe(&mut self, phase: Phase) -> Request {
        self.phase = phase;
        Request::Observe {
            view: self.view.clone(),
            sync_gate: self.sync_gate,
        }
    }

    fn observed(
        &mut self,
        now: Duration,
        observation: Observation,
        reconcile: bool,
        actions: usize,
        previous: Option<Action>,
        notes: &mut Vec<Note>,
    ) -> Request {
        self.observation = observation;
        let phase = Phase::Observing {
            reconcile,
            actions,
            previous: previous.clone(),
        };
        if std::mem::take(&mut self.fresh) && self.observation.instance.running {
            if self.paused {
                // Decisions are frozen, and the operator restarting this keeper (to upgrade
                // it) keeps the instance serving.
                notes.push(Note::LeftRunningWhilePaused);
            } else {
                return self.act(Action::Stop(StopReason::LeftRunning), 0);
            }
        }
        if self.sync_gate && self.gate_lifts() {
            self.sync_gate = false;
            notes.push(Note::SyncGateLifted);
            // The access rules on disk now differ from what the files would say.
            return self.observe(phase);
        }
        if !reconcile || actions >= MAX_ACTIONS_PER_LOOP {
            return self.sleep(now);
        }
        // Checked before each action: the fence may fall due during one.
        if self.fence.as_ref().is_some_and(|f| f.holds(now)) {
            return self.sleep(now);
        }
        let Some(local) = self.observation.local.clone() else {
            return self.sleep(now);
        };
        let action = next_action(
            self.view.as_deref().map(|v| &v.data),
            &self.identity.uid,
            &self.boot_uuid,
            &local,
            &self.observation.instance,
        );
        // The same action again right after it succeeded did not change what we observe
        // (a slot still in use, say): retry on the next loop rather than spin now.
        if previous.as_ref() == Some(&action) {
            return self.sleep(now);
        }
        match action {
            Action::Idle => {
                self.last_wait = None;
                notes.push(Note::Converged);
                return self.sleep(now);
            }
            Action::Wait(reason) => {
                if self.last_wait != Some(reason) {
                    notes.push(Note::Waiting(reason));
                    self.last_wait = Some(reason);
                }
                return self.sleep(now);
            }
            _ => self.last_wait = None,
        }
        if let Action::Start { .. } = action {
            if !self.failed_starts.wait(&self.start_key(), now).is_zero() {
                return self.sleep(now);
            }
            if self
                .my_db()
                .is_some_and(|db| db.spec.role == DbRole::Master && db.spec.synchronous_replication)
            {
                self.sync_gate = true;
                notes.push(Note::SyncGateClosed);
            }
        }
        self.act(action, actions)
    }

    fn act(&mut self, action: Action, actions: usize) -> Request {
        self.phase = Phase::Acting {
            action: action.clone(),
            actions,
        };
        Request::Act {
            action,
            view: self.view.clone(),
            sync_gate: self.sync_gate,
        }
    }

    /// Whether a synchronous primary's standbys are all in sync again.
    fn gate_lifts(&self) -> bool {
        match (&self.observation.probe, self.my_db()) {
            (Some(probe), Some(db)) => {
                sync_gate_lifted(&db.spec.synchronous_standbys, &probe.in_sync)
            }
            _ => false,
        }
    }

    fn acted(
        &mut self,
        action: Action,
        actions: usize,
        succeeded: bool,
        now: Duration,
        notes: &mut Vec<Note>,
    ) -> Request {
        if let Action::Start { .. } = action {
            if let Some(retry_in) = self.failed_starts.record(self.start_key(), succeeded, now) {
                notes.push(Note::StartBackoff {
                    failures: self.failed_starts.failures(),
                    retry_in,
                });
            }
        }
        if succeeded {
            self.observe(Phase::Observing {
                reconcile: self.read,
                actions: actions + 1,
                previous: Some(action),
            })
        } else {
            // Look again, and publish what a failed action left.
            self.observe(Phase::Observing {
                reconcile: false,
                actions,
                previous: None,
            })
        }
    }

    /// The keeper info to send as the loop goes to sleep, when one is due: a heartbeat after
    /// the last, or at once when the report changed.
    fn publication(&mut self, now: Duration) -> Option<Publication> {
        let view = self.view.clone()?;
        let state = pg_state(&self.observation, &self.identity.advertise);
        // During a switchover the target's position is what the sentinel waits for.
        let switching = view.data.cluster.status.switchover.is_some();
        let due = self.last_sent.as_ref().is_none_or(|last| {
            now.saturating_sub(last.at) >= self.heartbeat
                || !same_but_position(last.state.as_ref(), state.as_ref())
                || (switching && last.state != state)
        });
        if !due {
            return None;
        }
        let info = KeeperInfo {
            info_uid: self.ids.uid(),
            uid: self.identity.uid.clone(),
            cluster_uid: view.data.cluster.uid.clone(),
            boot_uuid: self.boot_uuid.clone(),
            can_be_master: self.identity.can_be_master,
            can_be_synchronous_replica: self.identity.can_be_synchronous_replica,
            priority: self.identity.priority,
            postgres_state: state.clone(),
        };
        self.last_sent = Some(Sent { at: now, state });
        Some(Publication {
            info,
            ttl: info_ttl(self.heartbeat),
            sent: now,
        })
    }

    /// The answer to the publication sent at `sent` came at `now` (or the request failed).
    /// Returns what it decided, and whether the loop should wake at once: when the answer
    /// lifted the fence, the keeper takes a new boot and publishes it.
    pub fn published(&mut self, now: Duration, sent: Duration, succeeded: bool) -> Option<Note> {
        if !succeeded {
            return None;
        }
        let held = self.fence.as_mut()?.published(sent, now)?;
        // The sentinel may have decided on this keeper from what it knew before the fence
        // lifted, and its decision may not be in the store yet. A new boot makes the
        // reconciler wait for cluster data that records it, which the sentinel writes only
        // after reading our info of then: any earlier decision is in it.
        self.boot_uuid = new_boot_uuid(&mut self.ids);
        self.last_sent = None;
        Some(Note::FenceLifted { held })
    }

    /// Ends the loop: publishes when due, and sleeps.
    fn sleep(&mut self, now: Duration) -> Request {
        self.phase = Phase::Sleeping;
        self.outgoing = self.publication(now);
        if !self.read {
            return Request::Sleep {
                max: self.heartbeat.min(STORE_RETRY),
                wake_on_change: false,
                wake_on_exit: false,
            };
        }
        let next_publish = self.last_sent.as_ref().map_or(self.heartbeat, |last| {
            self.heartbeat.saturating_sub(now.saturating_sub(last.at))
        });
        Request::Sleep {
            max: next_publish.max(MIN_SLEEP),
            wake_on_change: true,
            wake_on_exit: self.observation.instance.running,
        }
    }

    /// The db and generation a start is for: failed starts are counted per spec.
    fn start_key(&self) -> StartKey {
        self.my_db().map(|db| (db.uid.clone(), db.generation))
    }

    fn my_db(&self) -> Option<&Db> {
        self.view.as_deref().and_then(|view| self.my_db_in(view))
    }

    fn my_db_in<'a>(&self, view: &'a ClusterView) -> Option<&'a Db> {
        view.data.db_of_keeper(&self.identity.uid)
    }

    /// The watchdog's question at `now`: whether postgres must be stopped because the
    /// store has been out of reach too long (never without the fence).
    pub fn enforce_fence(&mut self, now: Duration) -> Enforce {
        self.fence
            .as_mut()
            .map_or(Enforce::Idle, |fence| fence.enforce(now))
    }

    /// The watchdog found postgres stopped under the fence.
    pub fn fence_saw_stopped(&mut self) {
        if let Some(fence) = &mut self.fence {
            fence.seen_stopped();
        }
    }

    /// Whether postgres must be kept stopped at `now`: fenced, or just falling due.
    pub fn fence_holds(&self, now: Duration) -> bool {
        self.fence.as_ref().is_some_and(|fence| fence.holds(now))
    }

    /// Whether the watchdog has fenced postgres (and no publish has lifted the fence yet).
    pub fn fenced(&self) -> bool {
        self.fence.as_ref().is_some_and(KeeperFence::fenced)
    }

    /// The timings the fence follows, from the last cluster data read.
    pub fn fence_timing(&self) -> Option<Timing> {
        self.fence.as_ref().and_then(KeeperFence::timing)
    }

    /// How long postgres may take to stop: the spec's dbWaitReadyTimeout.
    pub fn stop_timeout(&self) -> Duration {
        self.stop_timeout
    }

    /// Whether only the keeper's own roles may connect.
    pub fn sync_gate(&self) -> bool {
        self.sync_gate
    }

    /// Whether the last cluster data read says the cluster is paused: the keeper then
    /// leaves postgres running when it exits.
    pub fn paused(&self) -> bool {
        self.paused
    }

    pub fn boot_uuid(&self) -> &str {
        &self.boot_uuid
    }

    pub fn view(&self) -> Option<&Arc<ClusterView>> {
        self.view.as_ref()
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }
}

/// How long a keeper info stays in the store: three heartbeats, and at least 3 s.
pub fn info_ttl(heartbeat: Duration) -> Duration {
    (3 * heartbeat).max(Duration::from_secs(3))
}

/// Identifies one run of postgres under this keeper: the reconciler acts only on cluster
/// data that records the current one.
fn new_boot_uuid(ids: &mut Ids) -> String {
    format!("{}{}", ids.uid(), ids.uid())
}
