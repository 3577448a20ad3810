//! A keeper: the real reconciler (`keeper::next_action`) and store-loss fence
//! (`store_loss::KeeperFence`) driving a simulated postgres, with the loop of the keeper
//! daemon around them: read the cluster data, act until idle, publish.

use crate::net::Node;
use crate::pg::{Config, Pg};
use crate::world::{sooner, Delivery, Ev, World};
use std::time::Duration;
use stolon_cluster::{
    ClusterData, ClusterPhase, Db, DbRole, DbUid, KeeperInfo, KeeperUid, PgState, ValidSpec,
};
use stolon_engine::keeper::{
    followed_endpoint, next_action, slot_name, sync_gate_lifted, synchronous_standby_names, Action,
    Endpoint, Instance, LocalDb,
};
use stolon_engine::store_loss::{Enforce, KeeperFence, Timing};

pub const PG_PORT: u16 = 5432;
/// How often a frozen process is looked at again.
pub const FROZEN_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct KeeperSim {
    pub uid: KeeperUid,
    pub alive: bool,
    /// Each start of the keeper process; a restart also changes `boot_uuid`.
    pub incarnation: u64,
    pub boot_uuid: String,
    pub local: LocalDb,
    pub pg: Pg,
    pub fence: KeeperFence,
    pub view: Option<(ClusterData, ValidSpec)>,
    /// The action under way, begun at the loop whose read is in `view`.
    pub acting: Option<Action>,
    /// The last action of the current loop: the same again waits for the next loop.
    pub previous: Option<Action>,
    pub next_tick: Option<std::time::Duration>,
    /// After a synchronous primary starts, only the keeper's own roles may connect until its
    /// standbys are in sync again.
    pub sync_gate: bool,
    /// A slow disk: every action takes seconds.
    pub slow: bool,
    /// Its postgres cannot be promoted.
    pub promote_fails: bool,
}

impl KeeperSim {
    pub fn new(index: usize) -> KeeperSim {
        KeeperSim {
            uid: KeeperUid::new(format!("keeper{index}")),
            alive: true,
            incarnation: 0,
            boot_uuid: "boot-0".into(),
            local: LocalDb::default(),
            pg: Pg::default(),
            fence: KeeperFence::default(),
            view: None,
            acting: None,
            previous: None,
            next_tick: None,
            sync_gate: false,
            slow: false,
            promote_fails: false,
        }
    }

    pub fn db<'a>(&self, cd: &'a ClusterData) -> Option<&'a Db> {
        cd.db_of_keeper(&self.uid)
    }
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
    /// Wakes keeper `k`'s loop after `after`, unless it is due sooner.
    pub(crate) fn wake_keeper(&mut self, k: usize, after: Duration) {
        let keeper = &mut self.keepers[k];
        if keeper.alive && sooner(&mut keeper.next_tick, self.now, after) {
            self.schedule(after, Ev::KeeperTick(k));
        }
    }

    pub(crate) fn keeper_tick(&mut self, k: usize) {
        let keeper = &self.keepers[k];
        if !keeper.alive || keeper.next_tick != Some(self.now) || keeper.acting.is_some() {
            return;
        }
        self.keepers[k].next_tick = None;
        if self.net.frozen(Node::Keeper(k)) {
            self.wake_keeper(k, FROZEN_POLL);
            return;
        }
        self.keepers[k].previous = None;
        self.keeper_loop(k);
    }

    /// An action ended: its effect, then the loop goes on.
    pub(crate) fn keeper_acted(&mut self, k: usize, ev: &Ev) {
        if !self.keepers[k].alive || self.keepers[k].acting.is_none() {
            return;
        }
        if !self.thawed(Node::Keeper(k), ev) {
            return;
        }
        let action = self.keepers[k].acting.take().expect("checked");
        match self.apply(k, &action) {
            Ok(()) => self.keepers[k].previous = Some(action),
            Err(e) => {
                self.log(format!("keeper{k}: action failed: {action:?}: {e}"));
                self.keepers[k].previous = None;
                self.publish_and_sleep(k);
                return;
            }
        }
        self.keeper_loop(k);
    }

    /// Read, then act until idle or waiting, then publish: one loop of the keeper daemon.
    fn keeper_loop(&mut self, k: usize) {
        let reachable = self.net.reaches_store(Node::Keeper(k));
        let read = if reachable { self.store.read() } else { None };
        if let Some((cd, spec, _)) = read {
            let master = cd.cluster.status.phase == ClusterPhase::Normal
                && self.keepers[k]
                    .db(&cd)
                    .is_some_and(|db| db.spec.role == DbRole::Master);
            self.keepers[k].fence.read(Timing::of(&spec), master);
            self.keepers[k].view = Some((cd, spec));
        } else if reachable {
            self.keepers[k].view = None;
        }
        if reachable && !self.keepers[k].fence.holds(self.clock(Node::Keeper(k))) {
            let keeper = &self.keepers[k];
            let cd = keeper.view.as_ref().map(|(cd, _)| cd);
            let instance = self.instance(k);
            let action = next_action(cd, &keeper.uid, &keeper.boot_uuid, &keeper.local, &instance);
            let repeated = keeper.previous.as_ref() == Some(&action);
            if !matches!(action, Action::Idle | Action::Wait(_)) && !repeated {
                self.begin(k, action);
                return;
            }
        }
        self.publish_and_sleep(k);
    }

    fn publish_and_sleep(&mut self, k: usize) {
        let heartbeat = self.keepers[k]
            .view
            .as_ref()
            .map_or(Duration::from_secs(1), |(_, spec)| spec.keeper_heartbeat());
        if self.net.reaches_store(Node::Keeper(k)) {
            if let Some((cd, _)) = &self.keepers[k].view {
                let info = KeeperInfo {
                    info_uid: format!("{:x}", self.rng.next_u64()),
                    uid: self.keepers[k].uid.clone(),
                    cluster_uid: cd.cluster.uid.clone(),
                    boot_uuid: self.keepers[k].boot_uuid.clone(),
                    can_be_master: true,
                    can_be_synchronous_replica: true,
                    priority: 0,
                    postgres_state: self.pg_state(k),
                };
                let ttl = (3 * heartbeat).max(Duration::from_secs(3));
                if let Delivery::Applied(answer) = self.deliver() {
                    self.store.put_keeper_info(info, self.store_clock() + ttl);
                    self.wake_sentinels();
                    if let Some(answer) = answer {
                        let boot = self.keepers[k].boot_uuid.clone();
                        self.schedule(
                            answer,
                            Ev::KeeperPublished {
                                keeper: k,
                                sent: self.clock(Node::Keeper(k)),
                                boot,
                            },
                        );
                    }
                }
            }
        }
        self.wake_keeper(k, heartbeat);
    }

    /// The answer to a publish: it lifts the fence; a lifted fence means a new boot, so
    /// that the keeper acts only on cluster data written after the sentinel saw it again.
    pub(crate) fn keeper_published(&mut self, k: usize, sent: Duration, boot: &str) {
        let keeper = &self.keepers[k];
        if !keeper.alive || keeper.boot_uuid != boot || !self.net.reaches_store(Node::Keeper(k)) {
            return;
        }
        let now = self.clock(Node::Keeper(k));
        let keeper = &mut self.keepers[k];
        if let Some(held) = keeper.fence.published(sent, now) {
            keeper.boot_uuid = format!(
                "boot-{}-lifted-{}",
                keeper.incarnation,
                self.now.as_millis()
            );
            self.log(format!(
                "keeper{k}: store reachable again, fence lifted after {held:?}: new boot"
            ));
        }
    }

    /// The fence's watchdog, a task of its own in the keeper process.
    pub(crate) fn keeper_fence_check(&mut self, k: usize, incarnation: u64) {
        let keeper = &self.keepers[k];
        if !keeper.alive || keeper.incarnation != incarnation {
            return;
        }
        if self.net.frozen(Node::Keeper(k)) {
            self.schedule(
                Duration::from_millis(100),
                Ev::KeeperFenceCheck(k, incarnation),
            );
            return;
        }
        let now = self.clock(Node::Keeper(k));
        let again = match self.keepers[k].fence.enforce(now) {
            Enforce::Idle => Duration::from_millis(200),
            Enforce::LookAgainIn(left) => left.min(Duration::from_millis(200)),
            Enforce::Stop { fenced_now, .. } => {
                if let Some(silent) = fenced_now {
                    self.log(format!(
                        "keeper{k}: store unreachable for {silent:?}: fencing postgres"
                    ));
                }
                if self.keepers[k].pg.running {
                    self.keepers[k].pg.stop();
                    self.log(format!("keeper{k}: postgres stopped by the fence"));
                }
                self.keepers[k].fence.seen_stopped();
                Duration::from_millis(200)
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
        self.keepers[k].acting = Some(action);
        self.schedule(took, Ev::KeeperActed(k));
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
                let synchronous_master = self.keepers[k].view.as_ref().is_some_and(|(cd, _)| {
                    self.keepers[k].db(cd).is_some_and(|db| {
                        db.spec.role == DbRole::Master && db.spec.synchronous_replication
                    })
                });
                let config = self.desired_config(k);
                let keeper = &mut self.keepers[k];
                keeper.pg.start();
                keeper.pg.config = config;
                if synchronous_master {
                    keeper.sync_gate = true;
                }
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

    /// What the configuration files would say if written now (the keeper's desired_files).
    fn desired_config(&self, k: usize) -> Config {
        let keeper = &self.keepers[k];
        let Some((cd, _)) = &keeper.view else {
            return keeper.pg.config.clone();
        };
        let Some(db) = keeper.db(cd) else {
            return keeper.pg.config.clone();
        };
        let upstream = keeper
            .pg
            .standby_signal
            .then(|| {
                followed_endpoint(cd, db)
                    .and_then(|e| keeper_at(&e.host))
                    .or(keeper.pg.config.upstream)
            })
            .flatten();
        Config {
            upstream,
            synchronous: synchronous_standby_names(db, keeper.pg.standby_signal),
        }
    }

    fn instance(&self, k: usize) -> Instance {
        let keeper = &self.keepers[k];
        let pg = &keeper.pg;
        let assigned = keeper
            .view
            .as_ref()
            .is_some_and(|(cd, _)| keeper.db(cd).is_some());
        Instance {
            initialized: pg.initialized,
            running: pg.running,
            standby_signal: pg.standby_signal,
            in_recovery: pg.running.then_some(pg.standby_signal),
            following: pg.config.upstream.map(endpoint),
            config_stale: pg.initialized && assigned && self.desired_config(k) != pg.config,
            system_id: pg.initialized.then(|| pg.system_id.clone()),
            slots: pg.running.then(|| pg.slots.clone()),
            pending_restart: false,
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

    fn pg_state(&mut self, k: usize) -> Option<PgState> {
        let in_sync = self.in_sync(k);
        let keeper = &mut self.keepers[k];
        let uid = keeper.local.uid.clone()?;
        if keeper.sync_gate {
            let wanted = keeper
                .view
                .as_ref()
                .and_then(|(cd, _)| keeper.db(cd))
                .map(|db| db.spec.synchronous_standbys.clone())
                .unwrap_or_default();
            if sync_gate_lifted(&wanted, &in_sync) {
                keeper.sync_gate = false;
            }
        }
        let pg = &keeper.pg;
        let answers = pg.running;
        Some(PgState {
            db_uid: uid,
            generation: keeper.local.generation,
            healthy: answers && !keeper.local.initializing,
            down: !pg.running,
            in_recovery: pg.in_recovery(),
            system_id: if answers {
                pg.system_id.clone()
            } else {
                String::new()
            },
            timeline_id: if answers {
                pg.timeline_id()
            } else {
                Default::default()
            },
            x_log_pos: if answers {
                pg.position()
            } else {
                Default::default()
            },
            listen_address: endpoint(k).host,
            port: PG_PORT,
            synchronous_standbys: if pg.writable() { in_sync } else { Vec::new() },
            older_wal_file: String::new(),
            timelines_history: if pg.writable() {
                pg.history.clone()
            } else {
                Vec::new()
            },
            shutdown_checkpoint: None,
            init_pg_parameters: Default::default(),
            data_disk: None,
            remote: None,
        })
    }
}
