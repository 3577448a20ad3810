//! A proxy: the real routing (`proxy::route`) and fence (`ProxyFence`), with the loop of
//! the proxy daemon: check the store, set the gate (closing every connection when it
//! changes), publish, and close everything when the fence's deadline passes.

use crate::keeper::keeper_at;
use crate::net::Node;
use crate::world::{Delivery, Ev, World};
use std::time::Duration;
use stolon_cluster::{DbUid, ProxyInfo, ProxyUid};
use stolon_engine::fence::{info_ttl, ProxyFence};
use stolon_engine::proxy::{route, sessions_on_gate_change, Route, Sessions};

/// Where new client connections go: the engine's gate, open to a db on a keeper's instance.
pub type Gate = stolon_engine::proxy::Gate<Target>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub db: DbUid,
    pub keeper: usize,
}

#[derive(Debug, Clone)]
pub struct ProxySim {
    pub uid: ProxyUid,
    pub alive: bool,
    pub fence: ProxyFence,
    pub gate: Gate,
    /// The client sessions piped so far: each to the keeper its gate was open to then, and
    /// that instance's start (a stop ends them).
    pub sessions: Vec<(usize, u64)>,
}

impl ProxySim {
    pub fn new(index: usize) -> ProxySim {
        ProxySim {
            uid: ProxyUid::new(format!("proxy{index}")),
            alive: true,
            fence: ProxyFence::default(),
            gate: Gate::Closed,
            sessions: Vec::new(),
        }
    }
}

impl World {
    pub(crate) fn proxy_check(&mut self, p: usize, ev: &Ev) {
        if !self.proxies[p].alive {
            // The process is down: its checks resume when it is back.
            self.schedule(Duration::from_secs(1), Ev::ProxyCheck(p));
            return;
        }
        if !self.thawed(Node::Proxy(p), ev) {
            return;
        }
        let started = self.clock(Node::Proxy(p));
        let mut cadence = Duration::from_secs(1);
        if self.net.reaches_store(Node::Proxy(p)) {
            match self.store.read() {
                None => {
                    self.set_gate(p, Gate::Closed);
                    self.proxies[p].fence.renewed(started);
                }
                Some((cd, spec, _)) => {
                    cadence = spec.proxy_check_cadence();
                    let deadline = self.proxies[p].fence.deadline();
                    let timeout = self.proxies[p].fence.read_spec(started, spec.proxy_timeout);
                    // A lower timeout brings the deadline forward at once.
                    if self.proxies[p].fence.deadline() != deadline {
                        self.schedule_fence_check(p);
                    }
                    let gate = match route(&cd, &self.proxies[p].uid) {
                        Route::To { db, address, .. } => match keeper_at(&address) {
                            Some(keeper) => Gate::Open(Target {
                                db: DbUid::new(db),
                                keeper,
                            }),
                            None => Gate::Closed,
                        },
                        Route::Hold { .. } => Gate::Hold,
                        Route::Nowhere(_) => Gate::Closed,
                    };
                    self.set_gate(p, gate);
                    let info = ProxyInfo {
                        info_uid: format!("{:x}", self.rng.next_u64()),
                        uid: self.proxies[p].uid.clone(),
                        generation: cd.proxy.generation,
                        proxy_timeout: timeout,
                    };
                    let ttl = info_ttl(timeout);
                    let delivery = self.deliver();
                    if delivery != Delivery::Lost {
                        self.store.put_proxy_info(info, self.store_clock() + ttl);
                        self.wake_sentinels();
                    }
                    // Without an answer the request times out after requestTimeout.
                    let (after, answered) = match delivery {
                        Delivery::Applied(Some(answer)) => (answer, true),
                        _ => (spec.request_timeout, false),
                    };
                    self.schedule(
                        after,
                        Ev::ProxyPublished {
                            proxy: p,
                            started,
                            timeout,
                            answered,
                        },
                    );
                }
            }
        }
        self.schedule(cadence, Ev::ProxyCheck(p));
    }

    /// The answer to a publish. The info may be in the store whether or not the answer
    /// arrives: its timeout is announced either way; only an answer renews the fence.
    pub(crate) fn proxy_published(
        &mut self,
        p: usize,
        started: Duration,
        timeout: Duration,
        answered: bool,
    ) {
        if !self.proxies[p].alive {
            return;
        }
        let ttl = info_ttl(timeout);
        let now = self.clock(Node::Proxy(p));
        let fence = &mut self.proxies[p].fence;
        fence.announced(timeout, now + ttl);
        if answered && self.net.reaches_store(Node::Proxy(p)) {
            fence.renewed(started);
            self.schedule_fence_check(p);
        }
    }

    /// The fence's timer, set for its current deadline (on the proxy's clock); a check
    /// that finds the deadline moved later does nothing.
    pub(crate) fn schedule_fence_check(&mut self, p: usize) {
        if let Some(deadline) = self.proxies[p].fence.deadline() {
            let at = self.when_clock_reads(Node::Proxy(p), deadline);
            self.schedule_at(at, Ev::ProxyFenceCheck(p));
        }
    }

    pub(crate) fn proxy_fence_check(&mut self, p: usize) {
        if !self.proxies[p].alive || !self.proxies[p].fence.expired(self.clock(Node::Proxy(p))) {
            return;
        }
        if self.proxies[p].gate != Gate::Closed {
            self.log(format!(
                "proxy{p}: check timeout timer fired: closing connections"
            ));
            self.set_gate(p, Gate::Closed);
        }
    }

    /// A new gate; what becomes of the sessions is the engine's decision, as in the daemon.
    /// (No switchover is simulated, so no grace period either.)
    pub(crate) fn set_gate(&mut self, p: usize, gate: Gate) {
        let sessions = sessions_on_gate_change(&self.proxies[p].gate, &gate, Duration::ZERO);
        if sessions == Sessions::Keep {
            return;
        }
        self.log(format!("proxy{p}: {:?} -> {gate:?}", self.proxies[p].gate));
        self.proxies[p].gate = gate;
        self.drop_connections_of(p);
    }
}
