//! A sentinel: the real planner (`sentinel::step`) with the loop of the sentinel daemon
//! around it: keep the leader lease, read, step, write with compare-and-swap.

use crate::net::Node;
use crate::world::{sooner, Delivery, Ev, World};
use std::time::Duration;
use stolon_cluster::ClusterData;
use stolon_engine::sentinel::{step, Memory, Observations};

/// The leader lease's time to live (the sentinel daemon's).
pub const LEADER_TTL: Duration = Duration::from_secs(5);
/// A write wakes the sentinels after this long (the daemon's debounce).
const DEBOUNCE: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Default)]
pub struct SentinelSim {
    pub alive: bool,
    /// The leadership term it believes it holds; 0: none.
    pub term: u64,
    /// When a renewal of the lease last succeeded, as the sentinel saw it.
    pub renewed: Option<Duration>,
    pub memory: Memory,
    pub memory_term: u64,
    pub wake_at: Option<Duration>,
    pub next_tick: Option<Duration>,
    /// The events of its last step: like the daemon, it logs only new ones.
    pub previous_events: Vec<stolon_engine::Event>,
}

impl World {
    pub(crate) fn wake_sentinel(&mut self, s: usize, after: Duration) {
        if sooner(&mut self.sentinels[s].next_tick, self.now, after) {
            self.schedule(after, Ev::SentinelTick(s));
        }
    }

    /// A store write wakes every sentinel (they watch everything).
    pub(crate) fn wake_sentinels(&mut self) {
        for s in 0..self.sentinels.len() {
            self.wake_sentinel(s, DEBOUNCE);
        }
    }

    pub(crate) fn sentinel_tick(&mut self, s: usize) {
        if !self.sentinels[s].alive || self.sentinels[s].next_tick != Some(self.now) {
            return;
        }
        self.sentinels[s].next_tick = None;
        if self.net.frozen(Node::Sentinel(s)) {
            self.wake_sentinel(s, crate::keeper::FROZEN_POLL);
            return;
        }
        let reachable = self.net.reaches_store(Node::Sentinel(s));
        let now = self.clock(Node::Sentinel(s));
        if reachable {
            if self.store.campaign(s, self.store_clock(), LEADER_TTL) {
                if self.sentinels[s].term == 0 {
                    self.terms += 1;
                    self.sentinels[s].term = self.terms;
                    self.log(format!(
                        "sentinel{s}: leadership acquired (term {})",
                        self.terms
                    ));
                }
                self.sentinels[s].renewed = Some(now);
            } else if self.sentinels[s].term != 0 {
                self.sentinels[s].term = 0;
                self.log(format!("sentinel{s}: leadership lost"));
            }
        }
        // Without an answer to its renewals, a leader steps down when the lease may have run
        // out at the store.
        let sentinel = &mut self.sentinels[s];
        if sentinel.term != 0
            && sentinel
                .renewed
                .is_none_or(|at| now.saturating_sub(at) >= LEADER_TTL)
        {
            sentinel.term = 0;
            self.log(format!("sentinel{s}: leadership lost (lease not renewed)"));
        }
        let mut sleep = Duration::from_secs(1);
        let read = if reachable { self.store.read() } else { None };
        if let (Some((cd, spec, revision)), true) = (read, self.sentinels[s].term != 0) {
            sleep = spec.sleep_interval;
            let sentinel = &mut self.sentinels[s];
            if sentinel.term != sentinel.memory_term {
                sentinel.memory = Memory::default();
                sentinel.memory_term = sentinel.term;
            }
            let keepers = self.store.keeper_infos(self.store_clock());
            let proxies = self.store.proxy_infos(self.store_clock());
            let seed = self.rng.next_u64();
            let sentinel = &mut self.sentinels[s];
            let out = step(
                now,
                &cd,
                &spec,
                Observations {
                    keepers: &keepers,
                    proxies: &proxies,
                },
                &mut sentinel.memory,
                seed,
            );
            sentinel.wake_at = out.wake_at;
            let term = sentinel.term;
            let new: Vec<String> = out
                .events
                .iter()
                .filter(|e| !self.sentinels[s].previous_events.contains(e))
                .map(|e| format!("sentinel{s}: {e}"))
                .collect();
            self.sentinels[s].previous_events = out.events.clone();
            for line in new {
                self.log(line);
            }
            if out.data != cd {
                let delay = if self.rng.chance(5) {
                    self.jitter(500, 3000)
                } else {
                    self.jitter(1, 50)
                };
                self.schedule(
                    delay,
                    Ev::SentinelWrite {
                        sentinel: s,
                        term,
                        data: Box::new(out.data),
                        expect: revision,
                    },
                );
            }
        }
        let wait = self.sentinels[s]
            .wake_at
            .take()
            .map_or(sleep, |at| at.saturating_sub(now).min(sleep));
        self.wake_sentinel(s, wait.max(Duration::from_millis(1)));
    }

    /// A leader's write reaches the store: applied if the cluster data is still the one it
    /// read and the sentinel still believes it leads (the daemon's own check).
    pub(crate) fn sentinel_write(&mut self, s: usize, term: u64, data: ClusterData, expect: u64) {
        let sentinel = &self.sentinels[s];
        if !sentinel.alive || sentinel.term != term || !self.net.reaches_store(Node::Sentinel(s)) {
            return;
        }
        if self.deliver() == Delivery::Lost {
            return;
        }
        let before = self.store.cluster_data().cloned();
        if self.store.compare_and_swap(data.clone(), expect) {
            self.cluster_data_written(before.as_ref(), &data);
            self.wake_sentinels();
            // Watches are sometimes late.
            for k in 0..self.keepers.len() {
                let late = if self.rng.chance(5) {
                    self.jitter(0, 2000)
                } else {
                    Duration::ZERO
                };
                self.schedule(DEBOUNCE + late, Ev::KeeperWatch(k));
            }
            for p in 0..self.proxies.len() {
                let late = if self.rng.chance(5) {
                    self.jitter(0, 2000)
                } else {
                    Duration::ZERO
                };
                self.schedule(DEBOUNCE + late, Ev::ProxyWatch(p));
            }
        }
    }
}
