//! The event loop: virtual time, the queue of what happens next, the parts of the cluster,
//! and one run from a seed to its outcome.

use crate::clients::{Ack, Pending};
use crate::clocks::Clocks;
use crate::faults::Fault;
use crate::invariants::Watch;
use crate::keeper::KeeperSim;
use crate::net::{Net, Node};
use crate::proxy::ProxySim;
use crate::rng::Rng;
use crate::sentinel::SentinelSim;
use crate::store::Store;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::Duration;
use stolon_cluster::{ClusterData, ClusterSpec, ClusterUid};
use stolon_engine::sentinel::machine::Input;

/// How long after a write of the cluster data its watchers hear of it.
const WATCH_DELAY: Duration = Duration::from_millis(50);

/// What one run simulates.
#[derive(Debug, Clone)]
pub struct Config {
    pub keepers: usize,
    pub sentinels: usize,
    pub proxies: usize,
    /// Faults are injected from 5 s until this instant, and all healed by then.
    pub fault_window: Duration,
    /// After the faults, how long the cluster has to converge.
    pub settle: Duration,
    /// Lines of trace kept for a failing seed.
    pub trace_lines: usize,
    /// Faults of the seed's plan left out (by number), to find the few a violation needs.
    pub without_faults: BTreeSet<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            keepers: 3,
            sentinels: 2,
            proxies: 2,
            fault_window: Duration::from_secs(60),
            settle: Duration::from_secs(60),
            trace_lines: 400,
            without_faults: BTreeSet::new(),
        }
    }
}

/// A broken invariant: when, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub at: Duration,
    pub what: String,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub seed: u64,
    pub synchronous: bool,
    pub events: u64,
    pub acked: usize,
    pub faults: usize,
    /// The seed's faults, numbered, whether the run left them out or not.
    pub plan: Vec<String>,
    pub violation: Option<Violation>,
    /// The last events before the end (or the violation).
    pub trace: Vec<String>,
}

/// How a request to the store fares on the way there and back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// It never arrives: the caller's request times out.
    Lost,
    /// It is applied; its answer arrives after this long, or never.
    Applied(Option<Duration>),
}

#[derive(Debug, Clone)]
pub(crate) enum Ev {
    /// A sentinel process starts (its incarnation).
    SentinelStart(usize, u64),
    SentinelTick(usize),
    /// A sentinel campaigns for leadership, or renews its lease.
    SentinelCampaign(usize, u64),
    /// The store's answer to a sentinel's request.
    SentinelAnswer {
        sentinel: usize,
        incarnation: u64,
        input: Box<Input<u64>>,
    },
    /// A leader's write arrives at the store.
    SentinelWrite {
        sentinel: usize,
        incarnation: u64,
        data: Box<ClusterData>,
        expect: u64,
        /// When it was sent (true time): without an answer it times out from then.
        sent: Duration,
    },
    /// A keeper process starts (its incarnation).
    KeeperStart(usize, u64),
    KeeperTick(usize),
    KeeperActed(usize, u64),
    KeeperPublished {
        keeper: usize,
        incarnation: u64,
        /// When it was sent, on the keeper's clock.
        sent: Duration,
        succeeded: bool,
    },
    KeeperFenceCheck(usize, u64),
    /// The watch tells a keeper that the cluster data changed.
    KeeperWatch(usize),
    /// A proxy process starts (its incarnation).
    ProxyStart(usize, u64),
    ProxyTick(usize),
    ProxyPublished {
        proxy: usize,
        incarnation: u64,
        succeeded: bool,
    },
    ProxyFenceCheck(usize, u64),
    /// The watch tells a proxy that the cluster data changed.
    ProxyWatch(usize),
    /// A switchover's grace ran out: these sessions of the proxy end.
    ProxyDrain {
        proxy: usize,
        incarnation: u64,
        sessions: Vec<(usize, u64)>,
    },
    Replicate,
    ClientWrite,
    Fault(Fault),
    Heal(Fault),
    Settle,
}

pub struct World {
    pub(crate) now: Duration,
    pub(crate) rng: Rng,
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    events: BTreeMap<u64, Ev>,
    seq: u64,
    pub(crate) store: Store,
    pub(crate) keepers: Vec<KeeperSim>,
    pub(crate) sentinels: Vec<SentinelSim>,
    pub(crate) proxies: Vec<ProxySim>,
    pub(crate) net: Net,
    pub(crate) clocks: Clocks,
    pub(crate) next_txid: u64,
    pub(crate) pending: Vec<Pending>,
    pub(crate) acked: Vec<Ack>,
    pub(crate) watch: Watch,
    pub(crate) terms: u64,
    trace: VecDeque<String>,
    trace_lines: usize,
    pub(crate) violation: Option<Violation>,
    pub(crate) faults_end: Duration,
    pub(crate) faults: usize,
    pub(crate) plan: Vec<String>,
    pub(crate) without_faults: BTreeSet<usize>,
    end: Duration,
}

/// A loop's next tick, coalesced: records `now + after` and says to schedule it unless a
/// tick still to come is due by then. (An event at any other instant than the recorded one
/// is stale, and its loop ignores it.)
pub(crate) fn sooner(next_tick: &mut Option<Duration>, now: Duration, after: Duration) -> bool {
    let at = now + after;
    if next_tick.is_some_and(|t| t >= now && t <= at) {
        return false;
    }
    *next_tick = Some(at);
    true
}

/// The spec every run starts from: Stolon's defaults with the short timings the tests use,
/// synchronous or not as the seed says.
fn initial_spec(synchronous: bool) -> ClusterSpec {
    ClusterSpec::from_json(&format!(
        r#"{{"initMode": "new", "sleepInterval": "1s", "failInterval": "5s",
             "requestTimeout": "3s", "convergenceTimeout": "15s", "initTimeout": "30s",
             "proxyCheckInterval": "1s", "proxyTimeout": "5s",
             "synchronousReplication": {synchronous}}}"#
    ))
    .expect("the simulation's spec parses")
}

/// Runs one seed to its outcome.
pub fn run(seed: u64, config: &Config) -> Outcome {
    let mut rng = Rng::new(seed);
    let synchronous = rng.chance(50);
    let cd = ClusterData::new(ClusterUid::new("sim"), initial_spec(synchronous));
    let mut world = World {
        now: Duration::ZERO,
        rng,
        queue: BinaryHeap::new(),
        events: BTreeMap::new(),
        seq: 0,
        store: Store::with_cluster_data(cd),
        keepers: Vec::new(),
        sentinels: Vec::new(),
        proxies: Vec::new(),
        net: Net::default(),
        clocks: Clocks::default(),
        next_txid: 1,
        pending: Vec::new(),
        acked: Vec::new(),
        watch: Watch::default(),
        terms: 0,
        trace: VecDeque::new(),
        trace_lines: config.trace_lines,
        violation: None,
        faults_end: config.fault_window,
        faults: 0,
        plan: Vec::new(),
        without_faults: config.without_faults.clone(),
        end: config.fault_window + config.settle,
    };
    world.keepers = (0..config.keepers)
        .map(|k| KeeperSim::new(k, world.rng.next_u64()))
        .collect();
    world.sentinels = (0..config.sentinels)
        .map(|s| SentinelSim::new(s, world.rng.next_u64()))
        .collect();
    world.proxies = (0..config.proxies)
        .map(|p| ProxySim::new(p, world.rng.next_u64()))
        .collect();
    world.start();
    let mut events = 0;
    while let Some(Reverse((at, seq))) = world.queue.pop() {
        if at > world.end || world.violation.is_some() {
            break;
        }
        let ev = world.events.remove(&seq).expect("queued event");
        world.now = at;
        events += 1;
        world.handle(ev);
        if world.violation.is_none() {
            world.check_invariants();
        }
    }
    if world.violation.is_none() {
        world.now = world.end;
        world.check_converged();
    }
    Outcome {
        seed,
        synchronous,
        events,
        acked: world.acked.len(),
        faults: world.faults,
        plan: world.plan.clone(),
        violation: world.violation.clone(),
        trace: world.trace.into_iter().collect(),
    }
}

impl World {
    fn start(&mut self) {
        for i in 0..self.keepers.len() {
            let after = self.jitter(0, 1000);
            self.start_keeper(i, after);
        }
        for i in 0..self.sentinels.len() {
            let after = self.jitter(0, 1000);
            self.start_sentinel(i, after);
        }
        for i in 0..self.proxies.len() {
            let after = self.jitter(0, 1000);
            self.start_proxy(i, after);
        }
        self.schedule(Duration::from_millis(200), Ev::Replicate);
        self.schedule(Duration::from_secs(1), Ev::ClientWrite);
        self.plan_faults();
        self.schedule_at(self.faults_end, Ev::Settle);
    }

    /// A request to the store from `node`: lost when it cannot reach the store, otherwise
    /// [`World::deliver`].
    pub(crate) fn deliver_from(&mut self, node: Node) -> Delivery {
        if self.net.reaches_store(node) {
            self.deliver()
        } else {
            Delivery::Lost
        }
    }

    /// The watch tells every keeper and proxy that the cluster data changed, now and then
    /// late.
    pub(crate) fn watch_cluster_data(&mut self) {
        let watchers = (0..self.keepers.len())
            .map(Ev::KeeperWatch)
            .chain((0..self.proxies.len()).map(Ev::ProxyWatch))
            .collect::<Vec<_>>();
        for ev in watchers {
            let late = if self.rng.chance(5) {
                self.jitter(0, 2000)
            } else {
                Duration::ZERO
            };
            self.schedule(WATCH_DELAY + late, ev);
        }
    }

    /// A request to the store from a node that reaches it: during the fault window now and
    /// then lost, or its answer lost, or slow; once everything is healed, answered soon.
    pub(crate) fn deliver(&mut self) -> Delivery {
        if self.now >= self.faults_end {
            return Delivery::Applied(Some(self.jitter(1, 30)));
        }
        match self.rng.range(0, 100) {
            0..=1 => Delivery::Lost,
            2..=3 => Delivery::Applied(None),
            4..=6 => Delivery::Applied(Some(self.jitter(500, 3000))),
            _ => Delivery::Applied(Some(self.jitter(1, 30))),
        }
    }

    /// A random delay in milliseconds.
    pub(crate) fn jitter(&mut self, low_ms: u64, high_ms: u64) -> Duration {
        Duration::from_millis(self.rng.range(low_ms, high_ms))
    }

    pub(crate) fn schedule(&mut self, after: Duration, ev: Ev) {
        self.schedule_at(self.now + after, ev);
    }

    pub(crate) fn schedule_at(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.events.insert(self.seq, ev);
        self.queue.push(Reverse((at, self.seq)));
    }

    pub(crate) fn log(&mut self, line: impl Into<String>) {
        let line = format!("{:>9.3}s {}", self.now.as_secs_f64(), line.into());
        if self.trace.len() == self.trace_lines {
            self.trace.pop_front();
        }
        self.trace.push_back(line);
    }

    pub(crate) fn violate(&mut self, what: impl Into<String>) {
        if self.violation.is_none() {
            let what = what.into();
            self.log(format!("VIOLATION: {what}"));
            self.violation = Some(Violation { at: self.now, what });
        }
    }

    /// Whether `node` runs its events now; a frozen one does them once thawed.
    pub(crate) fn thawed(&mut self, node: Node, ev: &Ev) -> bool {
        if self.net.frozen(node) {
            self.schedule(crate::keeper::FROZEN_POLL, ev.clone());
            return false;
        }
        true
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::SentinelStart(s, incarnation) => self.sentinel_start(s, incarnation, &ev),
            Ev::SentinelTick(s) => self.sentinel_tick(s),
            Ev::SentinelCampaign(s, incarnation) => self.sentinel_campaign(s, incarnation, &ev),
            Ev::SentinelAnswer {
                sentinel,
                incarnation,
                ref input,
            } => {
                let input = (**input).clone();
                self.sentinel_answer(sentinel, incarnation, input, &ev)
            }
            Ev::SentinelWrite {
                sentinel,
                incarnation,
                data,
                expect,
                sent,
            } => self.sentinel_write_arrives(sentinel, incarnation, *data, expect, sent),
            Ev::KeeperStart(k, incarnation) => self.keeper_start(k, incarnation, &ev),
            Ev::KeeperTick(k) => self.keeper_tick(k),
            Ev::KeeperActed(k, incarnation) => self.keeper_acted(k, incarnation, &ev),
            Ev::KeeperPublished {
                keeper,
                incarnation,
                sent,
                succeeded,
            } => self.keeper_published(keeper, incarnation, sent, succeeded, &ev),
            Ev::KeeperFenceCheck(k, incarnation) => self.keeper_fence_check(k, incarnation),
            Ev::KeeperWatch(k) => self.cluster_data_changed(k),
            Ev::ProxyStart(p, incarnation) => self.proxy_start(p, incarnation, &ev),
            Ev::ProxyTick(p) => self.proxy_tick(p),
            Ev::ProxyPublished {
                proxy,
                incarnation,
                succeeded,
            } => self.proxy_published(proxy, incarnation, succeeded, &ev),
            Ev::ProxyFenceCheck(p, incarnation) => self.proxy_fence_check(p, incarnation),
            Ev::ProxyWatch(p) => self.proxy_watch(p),
            Ev::ProxyDrain {
                proxy,
                incarnation,
                ref sessions,
            } => self.proxy_drain(proxy, incarnation, sessions),
            Ev::Replicate => {
                self.replicate();
                self.schedule(Duration::from_millis(200), Ev::Replicate);
            }
            Ev::ClientWrite => {
                self.client_write();
                let after = self.jitter(50, 150);
                self.schedule(after, Ev::ClientWrite);
            }
            Ev::Fault(fault) => self.inject(fault),
            Ev::Heal(fault) => self.heal(fault),
            Ev::Settle => {
                self.log("faults over: everything healed, the cluster must converge");
                self.heal_everything();
            }
        }
    }
}
