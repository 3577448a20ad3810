//! A sentinel: the engine's sentinel machine (`sentinel::machine::SentinelMachine`, the one
//! the sentinel daemon drives) against the simulated store. What is simulated here is only
//! IO, and the store's election: a lease renewed every second while the store is
//! reachable, which a leader gives up when it could not renew it for the lease's time to
//! live (what the store client's election does for the daemon).

use crate::net::Node;
use crate::store::REQUEST_TIMEOUT;
use crate::world::{sooner, Delivery, Ev, World};
use std::sync::Arc;
use std::time::Duration;
use stolon_cluster::{ClusterData, SentinelUid};
use stolon_engine::sentinel::machine::{Input, Note, ReadOutcome, Request, SentinelMachine, Step};
use stolon_engine::ClusterView;

/// The leader lease's time to live (the sentinel daemon's).
pub const LEADER_TTL: Duration = Duration::from_secs(5);
/// How often a sentinel campaigns, or renews the lease it holds.
const CAMPAIGN_EVERY: Duration = Duration::from_secs(1);

/// What the sentinel process waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// Its check runs (between two events: nothing).
    Nothing,
    /// The store's answer to a request.
    Answer,
    /// The end of a sleep, or a change in the store and the debounce after it.
    Sleeping { debounce: Duration },
}

#[derive(Debug, Clone)]
pub struct SentinelSim {
    pub alive: bool,
    /// Each start of the sentinel process: events of an earlier one are stale.
    pub incarnation: u64,
    pub machine: SentinelMachine<u64>,
    /// The leadership term it believes it holds; 0: none.
    pub term: u64,
    /// When a renewal of the lease last succeeded, as the sentinel saw it.
    pub renewed: Option<Duration>,
    pub waiting: Waiting,
    pub next_tick: Option<Duration>,
    /// A change in the store the watch delivered while not sleeping on it.
    pub change_pending: bool,
}

impl SentinelSim {
    pub fn new(index: usize, seed: u64) -> SentinelSim {
        SentinelSim {
            alive: true,
            incarnation: 0,
            machine: machine(index, seed),
            term: 0,
            renewed: None,
            waiting: Waiting::Nothing,
            next_tick: None,
            change_pending: false,
        }
    }

    /// A new sentinel process: it remembers nothing.
    pub fn restart(&mut self, index: usize, seed: u64) {
        *self = SentinelSim {
            incarnation: self.incarnation + 1,
            ..SentinelSim::new(index, seed)
        };
    }
}

fn machine(index: usize, seed: u64) -> SentinelMachine<u64> {
    SentinelMachine::new(SentinelUid::new(format!("sentinel{index}")), None, seed)
}

impl World {
    /// Starts sentinel `s`'s process: its checks and its part in the election.
    pub(crate) fn start_sentinel(&mut self, s: usize, after: Duration) {
        let incarnation = self.sentinels[s].incarnation;
        self.schedule(after, Ev::SentinelStart(s, incarnation));
        self.schedule(after, Ev::SentinelCampaign(s, incarnation));
    }

    pub(crate) fn sentinel_start(&mut self, s: usize, incarnation: u64, ev: &Ev) {
        if !self.sentinel_current(s, incarnation) || !self.thawed(Node::Sentinel(s), ev) {
            return;
        }
        let step = self.sentinels[s].machine.start();
        self.sentinel_run(s, step);
    }

    fn sentinel_current(&self, s: usize, incarnation: u64) -> bool {
        self.sentinels[s].alive && self.sentinels[s].incarnation == incarnation
    }

    fn wake_sentinel(&mut self, s: usize, after: Duration) {
        let sentinel = &mut self.sentinels[s];
        if sentinel.alive && sooner(&mut sentinel.next_tick, self.now, after) {
            self.schedule(after, Ev::SentinelTick(s));
        }
    }

    /// A store write: every sentinel watches everything.
    pub(crate) fn wake_sentinels(&mut self) {
        for s in 0..self.sentinels.len() {
            let sentinel = &mut self.sentinels[s];
            match sentinel.waiting {
                Waiting::Sleeping { debounce } => self.wake_sentinel(s, debounce),
                _ => sentinel.change_pending = true,
            }
        }
    }

    /// Sentinel `s`'s clock jumped: a sleep that now reads as run out ends.
    pub(crate) fn sentinel_clock_jumped(&mut self, s: usize) {
        if let Waiting::Sleeping { .. } = self.sentinels[s].waiting {
            self.wake_sentinel(s, Duration::from_millis(1));
        }
    }

    pub(crate) fn sentinel_tick(&mut self, s: usize) {
        let sentinel = &self.sentinels[s];
        if !sentinel.alive
            || sentinel.next_tick != Some(self.now)
            || !matches!(sentinel.waiting, Waiting::Sleeping { .. })
        {
            return;
        }
        self.sentinels[s].next_tick = None;
        if self.net.frozen(Node::Sentinel(s)) {
            self.wake_sentinel(s, crate::keeper::FROZEN_POLL);
            return;
        }
        self.sentinel_input(s, Input::Woken);
    }

    /// The store's election, as the sentinel's store client takes part in it.
    pub(crate) fn sentinel_campaign(&mut self, s: usize, incarnation: u64, ev: &Ev) {
        if !self.sentinel_current(s, incarnation) || !self.thawed(Node::Sentinel(s), ev) {
            return;
        }
        let now = self.clock(Node::Sentinel(s));
        if self.net.reaches_store(Node::Sentinel(s)) {
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
        self.schedule(CAMPAIGN_EVERY, Ev::SentinelCampaign(s, incarnation));
    }

    /// The store's answer to sentinel `s`'s request.
    pub(crate) fn sentinel_answer(
        &mut self,
        s: usize,
        incarnation: u64,
        input: Input<u64>,
        ev: &Ev,
    ) {
        if !self.sentinel_current(s, incarnation)
            || self.sentinels[s].waiting != Waiting::Answer
            || !self.thawed(Node::Sentinel(s), ev)
        {
            return;
        }
        self.sentinel_input(s, input);
    }

    fn sentinel_input(&mut self, s: usize, input: Input<u64>) {
        self.sentinels[s].waiting = Waiting::Nothing;
        let now = self.clock(Node::Sentinel(s));
        let term = self.sentinels[s].term;
        let step = self.sentinels[s].machine.handle(now, term, input);
        self.sentinel_run(s, step);
    }

    /// Carries out the machine's requests until one takes time.
    fn sentinel_run(&mut self, s: usize, mut step: Step<u64>) {
        loop {
            for note in &step.notes {
                if *note != Note::CheckSucceeded {
                    self.log(format!("sentinel{s}: {note}"));
                }
            }
            let reaches = self.net.reaches_store(Node::Sentinel(s));
            let input = match step.request {
                Request::ReadClusterData => Input::Read(match self.store.read() {
                    Some(_) if !reaches => ReadOutcome::Failed,
                    Some((data, spec, revision)) => ReadOutcome::Data {
                        view: Arc::new(ClusterView { data, spec }),
                        revision,
                    },
                    None if !reaches => ReadOutcome::Failed,
                    None => ReadOutcome::NoData,
                }),
                Request::ReadInfos if reaches => Input::Infos(Some((
                    self.store.keeper_infos(self.store_clock()),
                    self.store.proxy_infos(self.store_clock()),
                ))),
                Request::ReadInfos => Input::Infos(None),
                // Sentinel infos are read by no one the simulation models: only whether the
                // store takes them matters.
                Request::Publish { .. } => {
                    let answered = match self.deliver_from(Node::Sentinel(s)) {
                        Delivery::Applied(Some(answer)) => Some(answer),
                        _ => None,
                    };
                    return self.sentinel_answer_in(
                        s,
                        answered.unwrap_or(REQUEST_TIMEOUT),
                        Input::Published {
                            succeeded: answered.is_some(),
                        },
                    );
                }
                Request::Write { data, revision } => {
                    return self.sentinel_write(s, *data, revision)
                }
                Request::WriteInitial(_) => {
                    unreachable!("the simulation starts with cluster data")
                }
                Request::Sleep { max, debounce } => {
                    let sentinel = &mut self.sentinels[s];
                    sentinel.waiting = Waiting::Sleeping { debounce };
                    sentinel.next_tick = None;
                    let woken = std::mem::take(&mut sentinel.change_pending);
                    let after = if woken { debounce } else { max };
                    return self.wake_sentinel(s, after.max(Duration::from_millis(1)));
                }
            };
            let now = self.clock(Node::Sentinel(s));
            let term = self.sentinels[s].term;
            step = self.sentinels[s].machine.handle(now, term, input);
        }
    }

    fn sentinel_answer_in(&mut self, s: usize, after: Duration, input: Input<u64>) {
        self.sentinels[s].waiting = Waiting::Answer;
        let incarnation = self.sentinels[s].incarnation;
        self.schedule(
            after,
            Ev::SentinelAnswer {
                sentinel: s,
                incarnation,
                input: Box::new(input),
            },
        );
    }

    /// A leader's write travels to the store, now and then slowly.
    fn sentinel_write(&mut self, s: usize, data: ClusterData, expect: u64) {
        self.sentinels[s].waiting = Waiting::Answer;
        let delay = if self.rng.chance(5) {
            self.jitter(500, 3000)
        } else {
            self.jitter(1, 50)
        };
        let incarnation = self.sentinels[s].incarnation;
        self.schedule(
            delay,
            Ev::SentinelWrite {
                sentinel: s,
                incarnation,
                data: Box::new(data),
                expect,
                sent: self.now,
            },
        );
    }

    /// A leader's write reaches the store: applied if the cluster data is still the one it
    /// read. The store applies it whoever sent it: a deposed leader's late write lands too
    /// when nobody wrote since it read.
    pub(crate) fn sentinel_write_arrives(
        &mut self,
        s: usize,
        incarnation: u64,
        data: ClusterData,
        expect: u64,
        sent: Duration,
    ) {
        let delivery = self.deliver_from(Node::Sentinel(s));
        if delivery != Delivery::Lost {
            let before = self.store.cluster_data().cloned();
            if self.store.compare_and_swap(data.clone(), expect) {
                self.cluster_data_written(before.as_ref(), &data);
                self.wake_sentinels();
                self.watch_cluster_data();
            }
        }
        if self.sentinel_current(s, incarnation) {
            // A conflict is an answer too; a write lost, or whose answer was, times out.
            let (after, succeeded) = match delivery {
                Delivery::Applied(Some(answer)) => (answer, true),
                _ => ((sent + REQUEST_TIMEOUT).saturating_sub(self.now), false),
            };
            self.sentinel_answer_in(s, after, Input::Written { succeeded });
        }
    }

    /// Sentinel `s`'s process dies.
    pub(crate) fn crash_sentinel(&mut self, s: usize) {
        let sentinel = &mut self.sentinels[s];
        sentinel.alive = false;
        sentinel.term = 0;
        sentinel.next_tick = None;
    }

    pub(crate) fn restart_sentinel(&mut self, s: usize) {
        if self.sentinels[s].alive {
            return;
        }
        let seed = self.rng.next_u64();
        self.sentinels[s].restart(s, seed);
        self.start_sentinel(s, Duration::ZERO);
    }
}
