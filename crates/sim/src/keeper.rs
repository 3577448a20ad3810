//! A keeper: the engine's keeper machine (`keeper::machine::KeeperMachine`, the one the
//! keeper daemon drives) against a simulated postgres and store. What is simulated here is
//! only IO: how long an action takes and what it does to the instance, what the instance
//! looks like, whether the store takes a publish and when its answer comes.

use crate::net::Node;
use crate::pg::{Config, Pg};
use crate::store::REQUEST_TIMEOUT;
use crate::world::{sooner, Delivery, Ev, World};
use std::sync::Arc;
use std::time::Duration;
use stolon_cluster::{ClusterData, Db, DbUid, KeeperUid};
use stolon_engine::keeper::machine::{
    Identity, Input, KeeperMachine, Note, Publication, ReadOutcome, Request, Step,
};
use stolon_engine::keeper::report::{Observation, Probe};
use stolon_engine::keeper::{
    slot_name, synchronous_standby_names, upstream, Action, Endpoint, Instance, LocalDb,
};
use stolon_engine::store_loss::Enforce;
use stolon_engine::ClusterView;

pub const PG_PORT: u16 = 5432;
/// How often a frozen process is looked at again.
pub const FROZEN_POLL: Duration = Duration::from_millis(100);
/// How often the fence's watchdog looks (the daemon's).
const WATCHDOG_RECHECK: Duration = Duration::from_millis(200);

/// What the keeper process waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// Its loop runs (between two events: nothing).
    Nothing,
    /// An action under way.
    Acting(Action),
    /// The end of a sleep, a change of the cluster data (with `wake_on_change`), or its
    /// postgres exiting (with `wake_on_exit`).
    Sleeping {
        wake_on_change: bool,
        wake_on_exit: bool,
    },
}

#[derive(Debug, Clone)]
pub struct KeeperSim {
    pub uid: KeeperUid,
    pub alive: bool,
    /// Each start of the keeper process: events of an earlier one are stale.
    pub incarnation: u64,
    pub machine: KeeperMachine,
    /// The keeper's state file.
    pub local: LocalDb,
    pub pg: Pg,
    pub waiting: Waiting,
    pub next_tick: Option<Duration>,
    /// A change of the cluster data the watch delivered while the loop was not sleeping on
    /// it: the next such sleep ends at once, as the daemon's watch channel does.
    pub change_pending: bool,
    /// A slow disk: every action takes seconds.
    pub slow: bool,
    /// Its postgres cannot be promoted.
    pub promote_fails: bool,
}

impl KeeperSim {
    pub fn new(index: usize, seed: u64) -> KeeperSim {
        let uid = KeeperUid::new(format!("keeper{index}"));
        KeeperSim {
            machine: machine(&uid, index, seed),
            uid,
            alive: true,
            incarnation: 0,
            local: LocalDb::default(),
            pg: Pg::default(),
            waiting: Waiting::Nothing,
            next_tick: None,
            change_pending: false,
            slow: false,
            promote_fails: false,
        }
    }

    /// A new keeper process: nothing remembered but its state file (and its postgres).
    pub fn restart(&mut self, index: usize, seed: u64) {
        self.alive = true;
        self.incarnation += 1;
        self.machine = machine(&self.uid, index, seed);
        self.waiting = Waiting::Nothing;
        self.next_tick = None;
        self.change_pending = false;
    }

    pub fn view(&self) -> Option<&ClusterView> {
        self.machine.view().map(|v| v.as_ref())
    }

    pub fn db<'a>(&self, cd: &'a ClusterData) -> Option<&'a Db> {
        cd.db_of_keeper(&self.uid)
    }
}

/// The machine of keeper `index`'s process, with the store-loss fence on.
fn machine(uid: &KeeperUid, index: usize, seed: u64) -> KeeperMachine {
    let identity = Identity {
        uid: uid.clone(),
        can_be_master: true,
        can_be_synchronous_replica: true,
        priority: 0,
        advertise: endpoint(index),
    };
    KeeperMachine::new(identity, seed, true)
}

pub fn endpoint(keeper: usize) -> Endpoint {
    Endpoint {
        host: format!("keeper{keeper}"),
        port: PG_PORT,
    }
}

pub fn keeper_at(host: &str) -> Option<usize> {
    host.strip_prefix("keeper")?.parse().ok()
}

/// The db uid a slot (or application name) is named after.
pub fn slot_db(name: &str) -> DbUid {
    DbUid::new(name.strip_prefix("stolon_").unwrap_or(name))
}

impl World {
    /// Starts keeper `k`'s process: its loop and its fence's watchdog.
    pub(crate) fn start_keeper(&mut self, k: usize, after: Duration) {
        let incarnation = self.keepers[k].incarnation;
        self.schedule(after, Ev::KeeperStart(k, incarnation));
        self.schedule(after, Ev::KeeperFenceCheck(k, incarnation));
    }

    pub(crate) fn keeper_start(&mut self, k: usize, incarnation: u64, ev: &Ev) {
        if !self.current(k, incarnation) || !self.thawed(Node::Keeper(k), ev) {
            return;
        }
        let step = self.keepers[k].machine.start();
        self.keeper_run(k, step);
    }

    /// Wakes keeper `k`'s sleep after `after`, unless it is due sooner.
    fn wake_keeper(&mut self, k: usize, after: Duration) {
        let keeper = &mut self.keepers[k];
        if keeper.alive && sooner(&mut keeper.next_tick, self.now, after) {
            self.schedule(after, Ev::KeeperTick(k));
        }
    }

    /// The watch tells keeper `k`'s process that the cluster data changed.
    pub(crate) fn cluster_data_changed(&mut self, k: usize) {
        let keeper = &mut self.keepers[k];
        if !keeper.alive {
            return;
        }
        match keeper.waiting {
            Waiting::Sleeping {
                wake_on_change: true,
                ..
            } => self.wake_keeper(k, Duration::ZERO),
            Waiting::Sleeping { .. } => {}
            _ => keeper.change_pending = true,
        }
    }

    /// Keeper `k`'s postgres stopped other than by its loop's action (it crashed, or the
    /// fence stopped it): a loop sleeping on its exit wakes.
    pub(crate) fn postgres_exited(&mut self, k: usize) {
        if let Waiting::Sleeping {
            wake_on_exit: true, ..
        } = self.keepers[k].waiting
        {
            self.wake_keeper(k, Duration::ZERO);
        }
    }

    pub(crate) fn keeper_tick(&mut self, k: usize) {
        let keeper = &self.keepers[k];
        if !keeper.alive
            || keeper.next_tick != Some(self.now)
            || !matches!(keeper.waiting, Waiting::Sleeping { .. })
        {
            return;
        }
        self.keepers[k].next_tick = None;
        if self.net.frozen(Node::Keeper(k)) {
            self.wake_keeper(k, FROZEN_POLL);
            return;
        }
        self.keeper_input(k, Input::Woken);
    }

    /// An action ended: what it did to the instance, then the machine goes on.
    pub(crate) fn keeper_acted(&mut self, k: usize, incarnation: u64, ev: &Ev) {
        if !self.current(k, incarnation) || !self.thawed(Node::Keeper(k), ev) {
            return;
        }
        let Waiting::Acting(action) = self.keepers[k].waiting.clone() else {
            return;
        };
        let succeeded = match self.apply(k, &action) {
            Ok(()) => true,
            Err(e) => {
                self.log(format!("keeper{k}: action failed: {action:?}: {e}"));
                false
            }
        };
        self.keeper_input(k, Input::Acted { succeeded });
    }

    /// A publish's answer came, or the request timed out.
    pub(crate) fn keeper_published(
        &mut self,
        k: usize,
        incarnation: u64,
        sent: Duration,
        succeeded: bool,
        ev: &Ev,
    ) {
        if !self.current(k, incarnation) || !self.thawed(Node::Keeper(k), ev) {
            return;
        }
        let now = self.clock(Node::Keeper(k));
        if let Some(note) = self.keepers[k].machine.published(now, sent, succeeded) {
            self.log(format!("keeper{k}: {note}: new boot"));
            self.wake_keeper(k, Duration::ZERO);
        }
    }

    fn current(&self, k: usize, incarnation: u64) -> bool {
        self.keepers[k].alive && self.keepers[k].incarnation == incarnation
    }

    fn keeper_input(&mut self, k: usize, input: Input) {
        self.keepers[k].waiting = Waiting::Nothing;
        let now = self.clock(Node::Keeper(k));
        let step = self.keepers[k].machine.handle(now, input);
        self.keeper_run(k, step);
    }

    /// Carries out the machine's requests until one takes time.
    fn keeper_run(&mut self, k: usize, mut step: Step) {
        loop {
            for note in &step.notes {
                if *note != Note::Converged {
                    self.log(format!("keeper{k}: {note}"));
                }
            }
            if let Some(publication) = step.publish {
                self.keeper_publish(k, publication);
            }
            let input = match step.request {
                Request::ReadClusterData => Input::Read(self.keeper_read(k)),
                Request::Observe { .. } => Input::Observed(Box::new(self.observation(k))),
                Request::Act { action, .. } => return self.begin(k, action),
                Request::Sleep {
                    max,
                    wake_on_change,
                    wake_on_exit,
                } => {
                    let keeper = &mut self.keepers[k];
                    keeper.waiting = Waiting::Sleeping {
                        wake_on_change,
                        wake_on_exit,
                    };
                    keeper.next_tick = None;
                    let woken = wake_on_change && std::mem::take(&mut keeper.change_pending);
                    let after = if woken { Duration::ZERO } else { max };
                    return self.wake_keeper(k, after);
                }
            };
            let now = self.clock(Node::Keeper(k));
            step = self.keepers[k].machine.handle(now, input);
        }
    }

    fn keeper_read(&mut self, k: usize) -> ReadOutcome {
        if !self.net.reaches_store(Node::Keeper(k)) {
            return ReadOutcome::Failed;
        }
        match self.store.read() {
            Some((data, spec, _)) => ReadOutcome::Data(Arc::new(ClusterView { data, spec })),
            None => ReadOutcome::NoData,
        }
    }

    fn keeper_publish(&mut self, k: usize, publication: Publication) {
        let incarnation = self.keepers[k].incarnation;
        let delivery = self.deliver_from(Node::Keeper(k));
        if let Delivery::Applied(_) = delivery {
            let expires = self.store_clock() + publication.ttl;
            self.store.put_keeper_info(publication.info, expires);
            self.wake_sentinels();
        }
        let (after, succeeded) = match delivery {
            Delivery::Applied(Some(answer)) => (answer, true),
            _ => (REQUEST_TIMEOUT, false),
        };

        self.schedule(
            after,
            Ev::KeeperPublished {
                keeper: k,
                incarnation,
                sent: publication.sent,
                succeeded,
            },
        );
    }

    /// The fence's watchdog, a task of its own in the keeper process.
    pub(crate) fn keeper_fence_check(&mut self, k: usize, incarnation: u64) {
        if !self.current(k, incarnation) {
            return;
        }
        if self.net.frozen(Node::Keeper(k)) {
            self.schedule(FROZEN_POLL, Ev::KeeperFenceCheck(k, incarnation));
            return;
        }
        let now = self.clock(Node::Keeper(k));
        let again = match self.keepers[k].machine.enforce_fence(now) {
            Enforce::Idle => WATCHDOG_RECHECK,
            Enforce::LookAgainIn(left) => left.min(WATCHDOG_RECHECK),
            Enforce::Stop { fenced_now, .. } => {
                if let Some(silent) = fenced_now {
                    self.log(format!(
                        "keeper{k}: store unreachable for {silent:?}: fencing postgres"
                    ));
                }
                if self.keepers[k].pg.running {
                    self.keepers[k].pg.stop();
                    self.log(format!("keeper{k}: postgres stopped by the fence"));
                    self.postgres_exited(k);
                }
                self.keepers[k].machine.fence_saw_stopped();
                WATCHDOG_RECHECK
            }
        };
        self.schedule(again, Ev::KeeperFenceCheck(k, incarnation));
    }

    fn begin(&mut self, k: usize, action: Action) {
        let slow = self.keepers[k].slow;
        let took = match &action {
            _ if slow => self.jitter(2000, 8000),
            Action::InitNew { .. } | Action::Resync { .. } => self.jitter(300, 2000),
            Action::MarkApplied(_) | Action::SyncSlots { .. } => self.jitter(1, 20),
            _ => self.jitter(20, 300),
        };
        if let Action::InitNew { db } | Action::Resync { db, .. } = &action {
            // The state file records the db before the data directory is touched.
            self.keepers[k].local = LocalDb {
                uid: Some(db.clone()),
                generation: Default::default(),
                initializing: true,
                system_id: None,
            };
        }
        self.log(format!("keeper{k}: {action:?} ({took:?})"));
        let incarnation = self.keepers[k].incarnation;
        self.keepers[k].waiting = Waiting::Acting(action);
        self.schedule(took, Ev::KeeperActed(k, incarnation));
    }

    fn apply(&mut self, k: usize, action: &Action) -> Result<(), String> {
        match action {
            Action::Idle | Action::Wait(_) => {}
            Action::Stop(_) | Action::Halt => self.keepers[k].pg.stop(),
            Action::InitNew { db } => {
                let system_id =
                    format!("{}", 7_000_000_000_000_000_000 + self.rng.range(0, 1 << 40));
                let keeper = &mut self.keepers[k];
                keeper.pg.initdb(system_id.clone());
                keeper.local = LocalDb {
                    uid: Some(db.clone()),
                    generation: Default::default(),
                    initializing: false,
                    system_id: Some(system_id),
                };
                self.keepers[k].pg.config = self.desired_config(k);
            }
            Action::Resync { db, from, slot, .. } => {
                let source = keeper_at(&from.host).ok_or("unknown source")?;
                let linked = self.net.linked(Node::Keeper(k), Node::Keeper(source));
                let upstream = &self.keepers[source].pg;
                if !linked || !upstream.running {
                    return Err("the source cannot be reached".into());
                }
                if !upstream.slots.contains(slot) {
                    return Err("the source has no slot for us yet".into());
                }
                let upstream = upstream.clone();
                let keeper = &mut self.keepers[k];
                keeper.pg.copy_of(&upstream, source);
                keeper.local = LocalDb {
                    uid: Some(db.clone()),
                    generation: Default::default(),
                    initializing: false,
                    system_id: Some(upstream.system_id.clone()),
                };
                self.keepers[k].pg.config = self.desired_config(k);
            }
            Action::Start { .. } => {
                let config = self.desired_config(k);
                let keeper = &mut self.keepers[k];
                keeper.pg.start();
                keeper.pg.config = config;
            }
            Action::Promote if self.keepers[k].promote_fails => {
                return Err("pg_ctl promote failed".into())
            }
            Action::Promote => {
                self.keepers[k].pg.promote();
                self.keepers[k].pg.config = self.desired_config(k);
                self.log(format!(
                    "keeper{k}: promoted, timeline {} at {}",
                    self.keepers[k].pg.timeline,
                    self.keepers[k].pg.position()
                ));
                self.check_promoted_has_synchronous_commits(k);
            }
            Action::Reconfigure => {
                self.keepers[k].pg.config = self.desired_config(k);
            }
            Action::Restart => {
                self.keepers[k].pg.config = self.desired_config(k);
                self.keepers[k].pg.start();
            }
            Action::SyncSlots { create, drop } => {
                let slots = &mut self.keepers[k].pg.slots;
                slots.extend(create.iter().cloned());
                slots.retain(|s| !drop.contains(s));
            }
            Action::MarkApplied(generation) => self.keepers[k].local.generation = *generation,
            Action::Restore { .. } | Action::Adopt { .. } => {
                return Err("initMode pitr and existing are not simulated".into())
            }
        }
        Ok(())
    }

    /// What the configuration files would say if written now: the parts of the keeper's
    /// `postgresql.conf` the simulated instance models, chosen by the engine's rules.
    fn desired_config(&self, k: usize) -> Config {
        let keeper = &self.keepers[k];
        let Some(view) = keeper.view() else {
            return keeper.pg.config.clone();
        };
        let Some(db) = keeper.db(&view.data) else {
            return keeper.pg.config.clone();
        };
        let following = keeper.pg.config.upstream.map(endpoint);
        let streams_from = upstream(&view.data, db, keeper.pg.standby_signal, following.as_ref());
        Config {
            upstream: streams_from.and_then(|e| keeper_at(&e.host)),
            synchronous: synchronous_standby_names(db, keeper.pg.standby_signal),
        }
    }

    /// What the keeper sees of its simulated instance.
    fn observation(&self, k: usize) -> Observation {
        let keeper = &self.keepers[k];
        let pg = &keeper.pg;
        let assigned = keeper
            .view()
            .is_some_and(|view| keeper.db(&view.data).is_some());
        Observation {
            local: Some(keeper.local.clone()),
            instance: Instance {
                initialized: pg.initialized,
                running: pg.running,
                standby_signal: pg.standby_signal,
                in_recovery: pg.running.then_some(pg.standby_signal),
                following: pg.config.upstream.map(endpoint),
                config_stale: pg.initialized && assigned && self.desired_config(k) != pg.config,
                system_id: pg.initialized.then(|| pg.system_id.clone()),
                slots: pg.running.then(|| pg.slots.clone()),
                pending_restart: false,
            },
            probe: pg.running.then(|| Probe {
                in_recovery: pg.in_recovery(),
                system_id: pg.system_id.clone(),
                timeline_id: pg.timeline_id(),
                position: pg.position(),
                in_sync: self.in_sync(k),
                oldest_wal_file: String::new(),
            }),
            timelines_history: if pg.writable() {
                pg.history.clone()
            } else {
                Vec::new()
            },
            ..Observation::default()
        }
    }

    /// The standbys streaming from keeper `k`'s primary that its configuration waits for.
    pub(crate) fn in_sync(&self, k: usize) -> Vec<DbUid> {
        let pg = &self.keepers[k].pg;
        pg.config
            .synchronous
            .iter()
            .filter(|name| {
                self.keepers.iter().enumerate().any(|(i, other)| {
                    other.local.uid.as_ref().map(slot_name).as_ref() == Some(*name)
                        && other.pg.in_recovery()
                        && other.pg.streaming
                        && other.pg.config.upstream == Some(k)
                        && self.net.linked(Node::Keeper(i), Node::Keeper(k))
                })
            })
            .map(|name| slot_db(name))
            .collect()
    }
}
