//! Faults drawn from the seed: crashes, freezes, cuts from the store, isolated nodes, slow
//! disks, each healed after a while, all of them by the end of the fault window; and clock
//! jumps, which stay.

use crate::net::Node;
use crate::world::{Ev, World};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The keeper's machine: the keeper and its postgres die together.
    NodeCrash(usize),
    /// Only the keeper process dies; its postgres runs on.
    KeeperCrash(usize),
    /// Postgres dies; its keeper starts it again.
    PgCrash(usize),
    /// The process stops running (a long GC or VM pause), its connections kept.
    Freeze(Node),
    /// The process cannot reach the store.
    StoreCut(Node),
    /// A keeper's machine cut off from the store and from every other machine.
    Isolate(usize),
    /// Two machines cannot reach each other (a keeper and another keeper or a proxy).
    LinkCut(Node, Node),
    /// Every action of this keeper takes seconds.
    SlowDisk(usize),
    SentinelCrash(usize),
    ProxyCrash(usize),
    /// The process's monotonic clock jumps ahead by this much, for good: what it was
    /// timing across the jump ends early.
    ClockJump(Node, Duration),
    /// The store's clock jumps ahead: infos and the leader lease expire early.
    StoreClockJump(Duration),
    /// This keeper's postgres can start but never be promoted, for the rest of the run
    /// (a broken installation): the sentinel must give up on it as a new primary.
    PromoteFails(usize),
}

impl World {
    /// Draws the faults of the run: one every 1 to 12 s from 5 s on, each lasting up to
    /// 20 s and healed by the end of the fault window, but for clock jumps, which stay.
    pub(crate) fn plan_faults(&mut self) {
        let mut at = Duration::from_secs(5);
        let keepers = self.keepers.len() as u64;
        // Asynchronous mode only: in synchronous mode a standby that cannot be promoted may
        // be the only one known to hold every acknowledged commit, and then the sentinel
        // rightly promotes no other.
        let synchronous = self
            .store
            .spec()
            .is_some_and(|spec| spec.synchronous_replication);
        if !synchronous && self.rng.chance(25) {
            let k = self.rng.range(0, keepers) as usize;
            let when = self.jitter(0, self.faults_end.as_millis() as u64 / 2);
            self.plan_fault(when, None, Fault::PromoteFails(k));
        }
        let sentinels = self.sentinels.len() as u64;
        let proxies = self.proxies.len() as u64;
        loop {
            at += self.jitter(1000, 12_000);
            if at + Duration::from_secs(1) >= self.faults_end {
                break;
            }
            let k = self.rng.range(0, keepers) as usize;
            let s = self.rng.range(0, sentinels) as usize;
            let p = self.rng.range(0, proxies) as usize;
            let any = match self.rng.range(0, 3) {
                0 => Node::Keeper(k),
                1 => Node::Sentinel(s),
                _ => Node::Proxy(p),
            };
            let other = match self.rng.range(0, 2) {
                0 => Node::Keeper(
                    (k + 1 + self.rng.range(0, keepers - 1) as usize) % keepers as usize,
                ),
                _ => Node::Proxy(p),
            };
            let jump = self.jitter(500, 20_000);
            let fault = match self.rng.range(0, 106) {
                0..=17 => Fault::NodeCrash(k),
                18..=25 => Fault::KeeperCrash(k),
                26..=33 => Fault::PgCrash(k),
                34..=46 => Fault::Freeze(any),
                47..=59 => Fault::StoreCut(any),
                60..=69 => Fault::Isolate(k),
                70..=81 => Fault::LinkCut(Node::Keeper(k), other),
                82..=88 => Fault::SlowDisk(k),
                89..=94 => Fault::SentinelCrash(s),
                95..=99 => Fault::ProxyCrash(p),
                100..=103 => Fault::ClockJump(any, jump),
                _ => Fault::StoreClockJump(jump),
            };
            // A clock that jumped stays where it is: there is nothing to heal.
            let heal_at = match fault {
                Fault::ClockJump(..) | Fault::StoreClockJump(_) => None,
                _ => Some((at + self.jitter(500, 20_000)).min(self.faults_end)),
            };
            self.plan_fault(at, heal_at, fault);
        }
    }

    /// Records a fault of the plan (its number is its place in it) and schedules it, unless
    /// the run leaves it out.
    fn plan_fault(&mut self, at: Duration, heal_at: Option<Duration>, fault: Fault) {
        let number = self.plan.len();
        self.plan
            .push(format!("#{number} {fault:?} at {:.3}s", at.as_secs_f64()));
        if self.without_faults.contains(&number) {
            return;
        }
        self.schedule_at(at, Ev::Fault(fault));
        if let Some(heal_at) = heal_at {
            self.schedule_at(heal_at, Ev::Heal(fault));
        }
    }

    pub(crate) fn inject(&mut self, fault: Fault) {
        self.faults += 1;
        self.log(format!("FAULT {fault:?}"));
        match fault {
            Fault::NodeCrash(k) => {
                self.crash_keeper(k);
                self.keepers[k].pg.stop();
            }
            Fault::KeeperCrash(k) => self.crash_keeper(k),
            Fault::PgCrash(k) => {
                self.keepers[k].pg.stop();
                self.postgres_exited(k);
            }
            Fault::Freeze(node) => self.net.freeze(node, true),
            Fault::StoreCut(node) => self.net.cut_store(node, true),
            Fault::Isolate(k) => self.isolate(k, true),
            Fault::LinkCut(a, b) => self.net.cut_link(a, b, true),
            Fault::SlowDisk(k) => self.keepers[k].slow = true,
            Fault::SentinelCrash(s) => self.crash_sentinel(s),
            Fault::ProxyCrash(p) => self.crash_proxy(p),
            Fault::PromoteFails(k) => self.keepers[k].promote_fails = true,
            Fault::ClockJump(node, by) => self.jump_clock(node, by),
            Fault::StoreClockJump(by) => self.jump_store_clock(by),
        }
    }

    pub(crate) fn heal(&mut self, fault: Fault) {
        self.log(format!("HEAL {fault:?}"));
        match fault {
            Fault::NodeCrash(k) | Fault::KeeperCrash(k) => self.restart_keeper(k),
            Fault::PgCrash(_)
            | Fault::PromoteFails(_)
            | Fault::ClockJump(..)
            | Fault::StoreClockJump(_) => {}
            Fault::Freeze(node) => self.net.freeze(node, false),
            Fault::StoreCut(node) => self.net.cut_store(node, false),
            Fault::Isolate(k) => self.isolate(k, false),
            Fault::LinkCut(a, b) => self.net.cut_link(a, b, false),
            Fault::SlowDisk(k) => self.keepers[k].slow = false,
            Fault::SentinelCrash(s) => self.restart_sentinel(s),
            Fault::ProxyCrash(p) => self.restart_proxy(p),
        }
    }

    pub(crate) fn heal_everything(&mut self) {
        self.net.heal_all();
        for k in 0..self.keepers.len() {
            self.keepers[k].slow = false;
            self.restart_keeper(k);
        }
        for s in 0..self.sentinels.len() {
            self.heal(Fault::SentinelCrash(s));
        }
        for p in 0..self.proxies.len() {
            self.heal(Fault::ProxyCrash(p));
        }
    }

    fn crash_keeper(&mut self, k: usize) {
        let keeper = &mut self.keepers[k];
        keeper.alive = false;
        keeper.next_tick = None;
    }

    /// A new keeper process: a new boot, nothing remembered but its state file.
    fn restart_keeper(&mut self, k: usize) {
        if self.keepers[k].alive {
            return;
        }
        let seed = self.rng.next_u64();
        self.keepers[k].restart(k, seed);
        self.start_keeper(k, Duration::ZERO);
    }

    fn isolate(&mut self, k: usize, cut: bool) {
        let node = Node::Keeper(k);
        self.net.cut_store(node, cut);
        let others: Vec<Node> = (0..self.keepers.len())
            .filter(|&i| i != k)
            .map(Node::Keeper)
            .chain((0..self.proxies.len()).map(Node::Proxy))
            .collect();
        for other in others {
            self.net.cut_link(node, other, cut);
        }
    }
}
