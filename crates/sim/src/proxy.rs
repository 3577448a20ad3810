//! A proxy: the engine's proxy machine (`proxy::machine::ProxyMachine`, the one the proxy
//! daemon drives) against the simulated store. What is simulated here is only IO: whether
//! the store answers, where a host name leads, and the client sessions a gate change ends.

use crate::keeper::keeper_at;
use crate::net::Node;
use crate::store::REQUEST_TIMEOUT;
use crate::world::{sooner, Delivery, Ev, World};
use std::sync::Arc;
use std::time::Duration;
use stolon_cluster::{DbUid, ProxyUid};
use stolon_engine::proxy::machine::{
    Effect, Input, ProxyMachine, ReadOutcome, Request, Settings, Step,
};
use stolon_engine::proxy::{Backend, Sessions};
use stolon_engine::ClusterView;

/// Where new client connections go: the engine's gate, open to a db on a keeper's instance.
pub type Gate = stolon_engine::proxy::Gate<Target>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub db: DbUid,
    pub keeper: usize,
}

/// What the proxy process waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// Its check runs (between two events: nothing).
    Nothing,
    /// A publish's answer.
    Publishing,
    /// The end of a sleep, or a change of the cluster data.
    Sleeping,
}

#[derive(Debug, Clone)]
pub struct ProxySim {
    pub uid: ProxyUid,
    pub alive: bool,
    /// Each start of the proxy process: events of an earlier one are stale.
    pub incarnation: u64,
    pub machine: ProxyMachine<Target>,
    pub waiting: Waiting,
    pub next_tick: Option<Duration>,
    /// The fence deadline its watchdog's timer is set for.
    pub fence_timer: Option<Duration>,
    /// A change of the cluster data the watch delivered while not sleeping on it.
    pub change_pending: bool,
    /// The client sessions piped so far: each to the keeper its gate was open to then, and
    /// that instance's start (a stop ends them).
    pub sessions: Vec<(usize, u64)>,
}

impl ProxySim {
    pub fn new(index: usize, seed: u64) -> ProxySim {
        let uid = ProxyUid::new(format!("proxy{index}"));
        ProxySim {
            machine: machine(&uid, seed),
            uid,
            alive: true,
            incarnation: 0,
            waiting: Waiting::Nothing,
            next_tick: None,
            fence_timer: None,
            change_pending: false,
            sessions: Vec::new(),
        }
    }

    /// A new proxy process: it remembers nothing.
    pub fn restart(&mut self, seed: u64) {
        self.alive = true;
        self.incarnation += 1;
        self.machine = machine(&self.uid, seed);
        self.waiting = Waiting::Nothing;
        self.next_tick = None;
        self.fence_timer = None;
        self.change_pending = false;
    }

    pub fn gate(&self) -> &Gate {
        self.machine.gate()
    }
}

fn machine(uid: &ProxyUid, seed: u64) -> ProxyMachine<Target> {
    let settings = Settings {
        uid: uid.clone(),
        read_only: None,
        stop_listening: false,
    };
    ProxyMachine::new(settings, seed)
}

impl World {
    pub(crate) fn start_proxy(&mut self, p: usize, after: Duration) {
        let incarnation = self.proxies[p].incarnation;
        self.schedule(after, Ev::ProxyStart(p, incarnation));
    }

    pub(crate) fn proxy_start(&mut self, p: usize, incarnation: u64, ev: &Ev) {
        if !self.proxy_current(p, incarnation) || !self.thawed(Node::Proxy(p), ev) {
            return;
        }
        let now = self.clock(Node::Proxy(p));
        let step = self.proxies[p].machine.start(now);
        self.proxy_run(p, step);
    }

    fn proxy_current(&self, p: usize, incarnation: u64) -> bool {
        self.proxies[p].alive && self.proxies[p].incarnation == incarnation
    }

    fn wake_proxy(&mut self, p: usize, after: Duration) {
        let proxy = &mut self.proxies[p];
        if proxy.alive && sooner(&mut proxy.next_tick, self.now, after) {
            self.schedule(after, Ev::ProxyTick(p));
        }
    }

    /// The watch tells proxy `p` that the cluster data changed.
    pub(crate) fn proxy_watch(&mut self, p: usize) {
        let proxy = &mut self.proxies[p];
        if !proxy.alive {
            return;
        }
        if proxy.waiting == Waiting::Sleeping {
            self.wake_proxy(p, Duration::ZERO);
        } else {
            proxy.change_pending = true;
        }
    }

    pub(crate) fn proxy_tick(&mut self, p: usize) {
        let proxy = &self.proxies[p];
        if !proxy.alive || proxy.next_tick != Some(self.now) || proxy.waiting != Waiting::Sleeping {
            return;
        }
        self.proxies[p].next_tick = None;
        if self.net.frozen(Node::Proxy(p)) {
            self.wake_proxy(p, crate::keeper::FROZEN_POLL);
            return;
        }
        self.proxy_input(p, Input::Woken);
    }

    /// A publish's answer came, or the request timed out.
    pub(crate) fn proxy_published(&mut self, p: usize, incarnation: u64, succeeded: bool, ev: &Ev) {
        if !self.proxy_current(p, incarnation)
            || self.proxies[p].waiting != Waiting::Publishing
            || !self.thawed(Node::Proxy(p), ev)
        {
            return;
        }
        self.proxy_input(p, Input::Published { succeeded });
    }

    fn proxy_input(&mut self, p: usize, input: Input<Target>) {
        self.proxies[p].waiting = Waiting::Nothing;
        let now = self.clock(Node::Proxy(p));
        let step = self.proxies[p].machine.handle(now, input);
        self.proxy_run(p, step);
    }

    /// Carries out the machine's effects and requests until one takes time.
    fn proxy_run(&mut self, p: usize, mut step: Step<Target>) {
        loop {
            if self.proxies[p].machine.deadline() != self.proxies[p].fence_timer {
                self.schedule_fence_check(p);
            }
            for effect in step.effects {
                self.proxy_effect(p, effect);
            }
            let input = match step.request {
                Request::ReadClusterData => Input::Read(self.proxy_read(p)),
                Request::Resolve { primary, .. } => Input::Resolved {
                    primary: primary.and_then(|backend| resolve(&backend)),
                    readers: Vec::new(),
                },
                Request::Publish { info, ttl } => {
                    self.proxies[p].waiting = Waiting::Publishing;
                    let delivery = self.deliver_from(Node::Proxy(p));
                    if delivery != Delivery::Lost {
                        self.store.put_proxy_info(info, self.store_clock() + ttl);
                        self.wake_sentinels();
                    }
                    // Without an answer the request times out.
                    let (after, succeeded) = match delivery {
                        Delivery::Applied(Some(answer)) => (answer, true),
                        _ => (REQUEST_TIMEOUT, false),
                    };
                    let incarnation = self.proxies[p].incarnation;
                    return self.schedule(
                        after,
                        Ev::ProxyPublished {
                            proxy: p,
                            incarnation,
                            succeeded,
                        },
                    );
                }
                Request::Sleep { max } => {
                    let proxy = &mut self.proxies[p];
                    proxy.waiting = Waiting::Sleeping;
                    proxy.next_tick = None;
                    let woken = std::mem::take(&mut proxy.change_pending);
                    return self.wake_proxy(p, if woken { Duration::ZERO } else { max });
                }
            };
            let now = self.clock(Node::Proxy(p));
            step = self.proxies[p].machine.handle(now, input);
        }
    }

    fn proxy_read(&mut self, p: usize) -> ReadOutcome {
        if !self.net.reaches_store(Node::Proxy(p)) {
            return ReadOutcome::Failed;
        }
        match self.store.read() {
            Some((data, spec, _)) => ReadOutcome::Data(Arc::new(ClusterView { data, spec })),
            None => ReadOutcome::NoData,
        }
    }

    fn proxy_effect(&mut self, p: usize, effect: Effect<Target>) {
        match effect {
            Effect::SetGate { gate, sessions } => {
                self.log(format!("proxy{p}: gate {gate:?}"));
                match sessions {
                    Sessions::Keep => {}
                    Sessions::CloseNow => self.drop_connections_of(p),
                    Sessions::CloseAfter(grace) => {
                        let incarnation = self.proxies[p].incarnation;
                        let sessions = self.proxies[p].sessions.clone();
                        self.schedule(
                            grace,
                            Ev::ProxyDrain {
                                proxy: p,
                                incarnation,
                                sessions,
                            },
                        );
                    }
                }
            }
            Effect::Tell(note) => self.log(format!("proxy{p}: {note}")),
            // The simulated proxy has no read-only endpoint, and its clients reach it
            // whenever it runs: listening is not modelled.
            Effect::SetReaders(_) | Effect::Listen | Effect::StopListening => {}
        }
    }

    /// The grace of a switchover's hold ran out: the sessions piped before it end.
    pub(crate) fn proxy_drain(&mut self, p: usize, incarnation: u64, sessions: &[(usize, u64)]) {
        if self.proxy_current(p, incarnation) {
            // Commits waiting on an ended session are never acknowledged.
            self.proxies[p].sessions.retain(|s| !sessions.contains(s));
        }
    }

    /// The fence's timer, set for its current deadline (on the proxy's clock); a check
    /// that finds the deadline moved later does nothing.
    pub(crate) fn schedule_fence_check(&mut self, p: usize) {
        self.proxies[p].fence_timer = self.proxies[p].machine.deadline();
        if let Some(deadline) = self.proxies[p].fence_timer {
            let at = self.when_clock_reads(Node::Proxy(p), deadline);
            let incarnation = self.proxies[p].incarnation;
            self.schedule_at(at, Ev::ProxyFenceCheck(p, incarnation));
        }
    }

    /// The fence's watchdog, a task of its own in the proxy process.
    pub(crate) fn proxy_fence_check(&mut self, p: usize, incarnation: u64) {
        if !self.proxy_current(p, incarnation) {
            return;
        }
        let now = self.clock(Node::Proxy(p));
        let effects = self.proxies[p].machine.enforce_fence(now);
        for effect in effects {
            self.proxy_effect(p, effect);
        }
    }

    /// Proxy `p`'s process dies: its sessions with it.
    pub(crate) fn crash_proxy(&mut self, p: usize) {
        self.proxies[p].alive = false;
        self.drop_connections_of(p);
    }

    pub(crate) fn restart_proxy(&mut self, p: usize) {
        if self.proxies[p].alive {
            return;
        }
        let seed = self.rng.next_u64();
        self.proxies[p].restart(seed);
        self.start_proxy(p, Duration::ZERO);
    }
}

/// Where a simulated host name leads.
fn resolve(backend: &Backend) -> Option<Target> {
    Some(Target {
        db: DbUid::new(&backend.db),
        keeper: keeper_at(&backend.address)?,
    })
}
