//! The proxy's control loop as a state machine: the daemon and the simulator drive this one.
//!
//! Each check reads the cluster data, resolves where it routes, sets the gate (what new
//! connections get) and the read-only endpoint's standbys, publishes the proxy generation it
//! applied, and sleeps until the cluster data changes or the check interval passes. A
//! check that succeeded renews the proxy's fence ([`ProxyFence`]); the driver's watchdog
//! asks [`ProxyMachine::enforce_fence`] whether it has run out, which closes everything.
//!
//! The machine owns the gate: every [`Effect::SetGate`] it returns says what the change
//! does to the sessions piped so far. Addresses are the driver's (`T`): a socket address
//! in the daemon, a simulated host in the simulator.
//!
//! Time is the driver's monotonic clock, as a [`Duration`] since an origin of its choice.

use super::fence::{info_ttl, ProxyFence};
use super::{read_only_targets, route, sessions_on_gate_change, Backend, Gate, Route, Sessions};
use crate::ids::Ids;
use crate::ClusterView;
use std::sync::Arc;
use std::time::Duration;
use stolon_cluster::{ProxyInfo, ProxyUid};

/// Until the cluster data says otherwise.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// The read-only endpoint: new connections balanced across the standbys that serve reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOnly {
    /// The most bytes a standby may be behind the primary; None: the spec's maxStandbyLag.
    pub max_lag: Option<u64>,
    /// With no standby to read from, send reads to the primary instead of refusing them.
    pub fallback_to_primary: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub uid: ProxyUid,
    pub read_only: Option<ReadOnly>,
    /// Stop listening while fenced, so load balancers see the proxy as down.
    pub stop_listening: bool,
}

/// A cluster data read, as the store answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOutcome {
    Data(Arc<ClusterView>),
    /// The store holds no cluster data.
    NoData,
    /// What the store holds cannot be decoded (why): nothing is routed on it.
    Corrupt(String),
    /// The store could not be read.
    Failed,
}

/// The IO the machine asks of its driver next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Read the cluster data: answer [`Input::Read`].
    ReadClusterData,
    /// Find the addresses of these servers: answer [`Input::Resolved`].
    Resolve {
        primary: Option<Backend>,
        readers: Vec<Backend>,
    },
    /// Store the proxy info under a lease of `ttl`: answer [`Input::Published`].
    Publish { info: ProxyInfo, ttl: Duration },
    /// Wait for `max`, or less when the cluster data changes: answer [`Input::Woken`].
    Sleep { max: Duration },
}

/// The outcome of the last [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<T> {
    Read(ReadOutcome),
    /// The primary's address (None: it could not be resolved), and the readers' that could.
    Resolved {
        primary: Option<T>,
        readers: Vec<T>,
    },
    Published {
        succeeded: bool,
    },
    Woken,
}

/// What the driver does at once, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect<T> {
    /// New connections get `gate`; the sessions piped so far end as `sessions` says.
    SetGate {
        gate: Gate<T>,
        sessions: Sessions,
    },
    /// The read-only endpoint's standbys: sessions to one no longer listed end.
    SetReaders(Vec<T>),
    /// Listen for clients (a no-op while listening).
    Listen,
    StopListening,
    Tell(Note),
}

/// A decision worth one log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The route changed.
    Route(Route),
    /// The store holds no cluster data: nothing is routed.
    NoClusterData,
    /// The cluster data cannot be decoded (why): nothing is routed.
    Unusable(String),
    /// The read-only endpoint's standbys changed: these dbs now.
    Readers(Vec<String>),
    /// No successful check for the proxy timeout: every connection closed.
    Fenced,
    /// The check failed (the store did not answer, or did not take the info).
    CheckFailed,
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Note::Route(Route::To { .. }) => f.write_str("proxying to master address"),
            Note::Route(Route::Hold { .. }) => f.write_str(
                "switchover: holding new connections, closing existing ones after the grace period",
            ),
            Note::Route(Route::Nowhere(reason)) => reason.fmt(f),
            Note::NoClusterData => {
                f.write_str("no clusterdata available, closing connections to master")
            }
            Note::Unusable(_) => {
                f.write_str("unusable cluster data, closing connections to master")
            }
            Note::Readers(_) => f.write_str("read-only endpoint targets changed"),
            Note::Fenced => f.write_str("check timeout timer fired: closing connections to master"),
            Note::CheckFailed => f.write_str("check function error"),
        }
    }
}

/// What the machine asks next, with what the driver does first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step<T> {
    pub effects: Vec<Effect<T>>,
    pub request: Request,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Reading,
    Resolving {
        view: Arc<ClusterView>,
        route: Route,
        grace: Duration,
        reader_dbs: Vec<String>,
        /// The proxyTimeout this check announces.
        timeout: Duration,
    },
    Publishing {
        timeout: Duration,
        ttl: Duration,
    },
    Sleeping,
}

/// A check's routing decision with the addresses the driver resolved for it.
struct Routes<T> {
    decision: Route,
    grace: Duration,
    primary: Option<T>,
    readers: Vec<T>,
    reader_dbs: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ProxyMachine<T> {
    settings: Settings,
    ids: Ids,
    fence: ProxyFence,
    gate: Gate<T>,
    readers: Vec<T>,
    last_route: Option<Route>,
    /// How often to check, from the last cluster spec read.
    cadence: Duration,
    /// When the current check began: a successful one renews the fence from then.
    started: Duration,
    phase: Phase,
}

impl<T: Clone + PartialEq> ProxyMachine<T> {
    /// A proxy process starting; `seed` feeds its info ids.
    pub fn new(settings: Settings, seed: u64) -> ProxyMachine<T> {
        ProxyMachine {
            settings,
            ids: Ids::new(seed),
            fence: ProxyFence::default(),
            gate: Gate::Closed,
            readers: Vec::new(),
            last_route: None,
            cadence: DEFAULT_CHECK_INTERVAL,
            started: Duration::ZERO,
            phase: Phase::Sleeping,
        }
    }

    /// The first check, at `now`.
    pub fn start(&mut self, now: Duration) -> Step<T> {
        Step {
            effects: Vec::new(),
            request: self.check(now),
        }
    }

    /// The outcome of the last request, at `now`: the next request.
    pub fn handle(&mut self, now: Duration, input: Input<T>) -> Step<T> {
        let mut effects = Vec::new();
        let phase = std::mem::replace(&mut self.phase, Phase::Sleeping);
        let request = match (phase, input) {
            (Phase::Reading, Input::Read(outcome)) => self.read(outcome, &mut effects),
            (
                Phase::Resolving {
                    view,
                    route,
                    grace,
                    reader_dbs,
                    timeout,
                },
                Input::Resolved { primary, readers },
            ) => {
                let routes = Routes {
                    decision: route,
                    grace,
                    primary,
                    readers,
                    reader_dbs,
                };
                self.resolved(&view, routes, timeout, &mut effects)
            }
            (Phase::Publishing { timeout, ttl }, Input::Published { succeeded }) => {
                self.fence.announced(timeout, now + ttl);
                if succeeded {
                    self.fence.renewed(self.started);
                    effects.push(Effect::Listen);
                } else {
                    effects.push(Effect::Tell(Note::CheckFailed));
                }
                self.sleep()
            }
            (Phase::Sleeping, Input::Woken) => self.check(now),
            // An answer to a request not made: check again rather than act on it.
            _ => self.check(now),
        };
        // The store may have blocked past the fence's deadline.
        effects.extend(self.enforce_fence(now));
        Step { effects, request }
    }

    fn check(&mut self, now: Duration) -> Request {
        self.started = now;
        self.phase = Phase::Reading;
        Request::ReadClusterData
    }

    fn read(&mut self, outcome: ReadOutcome, effects: &mut Vec<Effect<T>>) -> Request {
        let view = match outcome {
            ReadOutcome::Data(view) => view,
            ReadOutcome::NoData => {
                self.set_readers(Vec::new(), Vec::new(), effects);
                if self.set_gate(Gate::Closed, Duration::ZERO, effects) {
                    effects.push(Effect::Tell(Note::NoClusterData));
                }
                // The store answered: nothing routes on it, and nothing is to be
                // acknowledged.
                self.fence.renewed(self.started);
                effects.push(Effect::Listen);
                return self.sleep();
            }
            ReadOutcome::Corrupt(why) => {
                self.set_readers(Vec::new(), Vec::new(), effects);
                if self.set_gate(Gate::Closed, Duration::ZERO, effects) {
                    effects.push(Effect::Tell(Note::Unusable(why)));
                }
                effects.push(Effect::Tell(Note::CheckFailed));
                return self.sleep();
            }
            ReadOutcome::Failed => {
                effects.push(Effect::Tell(Note::CheckFailed));
                return self.sleep();
            }
        };
        self.cadence = view.spec.proxy_check_cadence();
        // A lower timeout applies at once, before the info announcing it is stored.
        let timeout = self.fence.read_spec(self.started, view.spec.proxy_timeout);
        let decision = route(&view.data, &self.settings.uid);
        let (primary, grace) = match &decision {
            Route::To { db, address, port } => (
                Some(Backend {
                    db: db.clone(),
                    address: address.clone(),
                    port: *port,
                }),
                Duration::ZERO,
            ),
            Route::Hold { grace } => (None, *grace),
            Route::Nowhere(_) => (None, Duration::ZERO),
        };
        let readers = self.settings.read_only.map_or_else(Vec::new, |ro| {
            let max_lag = ro.max_lag.unwrap_or(u64::from(view.spec.max_standby_lag));
            read_only_targets(
                &view.data,
                &self.settings.uid,
                max_lag,
                ro.fallback_to_primary,
            )
        });
        self.phase = Phase::Resolving {
            view,
            route: decision,
            grace,
            reader_dbs: readers.iter().map(|r| r.db.clone()).collect(),
            timeout,
        };
        Request::Resolve { primary, readers }
    }

    fn resolved(
        &mut self,
        view: &ClusterView,
        routes: Routes<T>,
        timeout: Duration,
        effects: &mut Vec<Effect<T>>,
    ) -> Request {
        let Routes {
            decision,
            grace,
            primary,
            readers,
            reader_dbs,
        } = routes;
        let gate = match &decision {
            Route::To { .. } => primary.map_or(Gate::Closed, Gate::Open),
            Route::Hold { .. } => Gate::Hold,
            Route::Nowhere(_) => Gate::Closed,
        };
        if self.last_route.as_ref() != Some(&decision) {
            effects.push(Effect::Tell(Note::Route(decision.clone())));
            self.last_route = Some(decision);
        }
        self.set_gate(gate, grace, effects);
        if self.settings.read_only.is_some() {
            self.set_readers(readers, reader_dbs, effects);
        }
        let info = ProxyInfo {
            info_uid: self.ids.uid(),
            uid: self.settings.uid.clone(),
            generation: view.data.proxy.generation,
            proxy_timeout: timeout,
        };
        let ttl = info_ttl(timeout);
        self.phase = Phase::Publishing { timeout, ttl };
        Request::Publish { info, ttl }
    }

    fn sleep(&mut self) -> Request {
        self.phase = Phase::Sleeping;
        Request::Sleep { max: self.cadence }
    }

    /// Sets the gate; true when it changed.
    fn set_gate(&mut self, gate: Gate<T>, grace: Duration, effects: &mut Vec<Effect<T>>) -> bool {
        let sessions = sessions_on_gate_change(&self.gate, &gate, grace);
        if sessions == Sessions::Keep {
            return false;
        }
        self.gate = gate.clone();
        effects.push(Effect::SetGate { gate, sessions });
        true
    }

    fn set_readers(&mut self, readers: Vec<T>, dbs: Vec<String>, effects: &mut Vec<Effect<T>>) {
        if readers == self.readers {
            return;
        }
        self.readers = readers.clone();
        effects.push(Effect::SetReaders(readers));
        effects.push(Effect::Tell(Note::Readers(dbs)));
    }

    /// The watchdog's question at `now`: once the fence's deadline has passed, every
    /// connection is closed (and the proxy stops listening, when configured to).
    pub fn enforce_fence(&mut self, now: Duration) -> Vec<Effect<T>> {
        let mut effects = Vec::new();
        if !self.fence.expired(now) {
            return effects;
        }
        if self.set_gate(Gate::Closed, Duration::ZERO, &mut effects) {
            effects.push(Effect::Tell(Note::Fenced));
        }
        if !self.readers.is_empty() {
            self.readers.clear();
            effects.push(Effect::SetReaders(Vec::new()));
        }
        if self.settings.stop_listening {
            effects.push(Effect::StopListening);
        }
        effects
    }

    /// When the fence falls due unless a check succeeds first.
    pub fn deadline(&self) -> Option<Duration> {
        self.fence.deadline()
    }

    /// The proxy is shutting down: everything closed.
    pub fn shut_down(&mut self) -> Vec<Effect<T>> {
        let mut effects = Vec::new();
        self.set_gate(Gate::Closed, Duration::ZERO, &mut effects);
        if !self.readers.is_empty() {
            self.readers.clear();
            effects.push(Effect::SetReaders(Vec::new()));
        }
        effects.push(Effect::StopListening);
        effects
    }

    pub fn gate(&self) -> &Gate<T> {
        &self.gate
    }
}
