//! The leader sentinel's planner: from the cluster data it read and what the keepers and
//! proxies published, compute the next cluster data.
//!
//! Failover is a handshake spread over several steps, each one a separate compare-and-swap
//! write, so that there is never a moment where a proxy may route to a primary other than
//! the one the cluster data names:
//! 1. the primary's db is unhealthy for `failInterval` (or does not converge): choose the
//!    best standby, remove the old primary's db, name the candidate as `cluster.status.master`
//!    and clear the proxies' target (a new proxy generation); the candidate stays a standby;
//! 2. once every live proxy has published that generation (or has been silent for longer than
//!    its proxyTimeout, and so has fenced itself), give the candidate the master role;
//! 3. once it reports itself as a converged primary, point the proxies at it.

use crate::{DbProblem, Event, EventKind};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use stolon_cluster::{
    ClusterData, ClusterPhase, Db, DbRole, DbSpec, DbStatus, DbUid, FollowConfig, Generation, Hold,
    InitMode, Keeper, KeeperInfo, KeeperStatus, KeeperUid, Lsn, ProxyInfo, ProxyUid, Switchover,
    SwitchoverOutcome, SwitchoverPhase, ValidSpec, FAKE_STANDBY_NAME,
};

mod bootstrap;
mod clocks;
mod failover;
mod generations;
pub mod machine;
mod paused;
mod standby_leader;
mod standbys;
mod switchover;

use standbys::OrderReason;

pub use failover::{choose_new_master, election_rules, Choice, ElectionRules};
pub use switchover::{switchover_candidate, switchover_plan};

pub use crate::proxy::fence::PROXY_FENCE_MARGIN;

/// What the sentinel read from the store besides the cluster data.
#[derive(Debug, Clone, Copy)]
pub struct Observations<'a> {
    pub keepers: &'a [KeeperInfo],
    pub proxies: &'a [ProxyInfo],
}

/// When an info last changed, as seen by this sentinel.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Heartbeat {
    info_uid: String,
    changed_at: Duration,
}

/// A proxy's last info as this sentinel read it, and when it last changed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SeenProxy {
    info: ProxyInfo,
    changed_at: Duration,
}

impl SeenProxy {
    /// Whether, by this sentinel's clock, the proxy has been silent for longer than the
    /// proxyTimeout it announced plus [`PROXY_FENCE_MARGIN`].
    fn silent_past_timeout(&self, now: Duration) -> bool {
        now.saturating_sub(self.changed_at) > self.fence_wait()
    }

    /// How long after its last change this sentinel waits before taking it as fenced.
    fn fence_wait(&self) -> Duration {
        self.info.proxy_timeout + PROXY_FENCE_MARGIN
    }
}

/// What the leader remembers between steps. It lives only in memory and starts empty after
/// every leadership change, so failure detection restarts from zero on a new leader: a
/// conservative choice, since a new leader cannot know how long a component has been silent.
/// For the same reason it promotes no db until a proxyTimeout has passed since its first
/// step: it cannot know of a proxy whose info left the store before it looked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    keepers: BTreeMap<KeeperUid, Heartbeat>,
    proxies: BTreeMap<ProxyUid, SeenProxy>,
    db_errors: BTreeMap<DbUid, Duration>,
    convergence: BTreeMap<DbUid, (Generation, Duration)>,
    failed_init_keepers: BTreeSet<KeeperUid>,
    db_uids_used: BTreeSet<DbUid>,
    /// Per db, its last reported WAL position and since when it has been the same.
    wal_progress: BTreeMap<DbUid, (Lsn, Duration)>,
    /// Per db, since when its live keeper has reported its postgres down.
    db_down: BTreeMap<DbUid, Duration>,
    /// Orders against a keeper's data (give its db up, give it a db to resync), per keeper
    /// and reason: when the keeper's report that first called for the order was seen. The
    /// order waits until the primary has reported after it.
    pending_orders: BTreeMap<(KeeperUid, OrderReason), Duration>,
    switchover: Option<SwitchoverClock>,
    /// This leader's first step.
    leading_since: Option<Duration>,
    /// This leader's last step: when it last read the proxies' infos.
    last_step: Option<Duration>,
}

/// When this leader first saw the switchover in progress, and when every proxy held.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SwitchoverClock {
    id: String,
    started: Duration,
    held_since: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutput {
    pub data: ClusterData,
    pub events: Vec<Event>,
    /// The next instant at which a judgment may change with no new observation (a
    /// failInterval falling due, a timeout expiring): the caller should step again then.
    pub wake_at: Option<Duration>,
}

/// Computes the next cluster data. `now` is a monotonic instant of the caller's choosing,
/// `seed` feeds the names of new dbs. The input is never modified.
pub fn step(
    now: Duration,
    cd: &ClusterData,
    spec: &ValidSpec,
    obs: Observations<'_>,
    memory: &mut Memory,
    seed: u64,
) -> StepOutput {
    let mut planner = Planner {
        now,
        spec,
        cd: cd.clone(),
        memory,
        events: Vec::new(),
        seed,
        uids_made: 0,
        reported_sync: BTreeMap::new(),
        reported_oldest_wal: BTreeMap::new(),
        failed_master: None,
        infos: BTreeMap::new(),
        merged_parameters: None,
        orders_called_for: BTreeSet::new(),
    };
    planner.infos = obs
        .keepers
        .iter()
        .filter(|i| i.cluster_uid == cd.cluster.uid)
        .map(|i| (i.uid.clone(), i.clone()))
        .collect();
    planner.memory.leading_since.get_or_insert(now);
    planner.memory.db_uids_used.extend(cd.dbs.keys().cloned());
    planner.observe_keepers();
    planner.observe_dbs();
    planner.observe_proxies(obs.proxies);
    match planner.cd.cluster.status.phase {
        ClusterPhase::Initializing => planner.initialize(),
        ClusterPhase::Normal => planner.run_normal(),
    }
    let called_for = std::mem::take(&mut planner.orders_called_for);
    planner
        .memory
        .pending_orders
        .retain(|key, _| called_for.contains(key));
    // A paused cluster's keepers apply nothing: a new generation would only start a
    // convergence timer that runs out during the pause.
    if planner.cd.cluster.status.pause.is_none() {
        planner.copy_cluster_spec_into_dbs();
        planner.bump_changed_generations(cd);
    }
    planner.track_convergence();
    let wake_at = planner.next_deadline();
    StepOutput {
        data: planner.cd,
        events: planner.events,
        wake_at,
    }
}

struct Planner<'m> {
    now: Duration,
    spec: &'m ValidSpec,
    cd: ClusterData,
    memory: &'m mut Memory,
    events: Vec<Event>,
    seed: u64,
    uids_made: u64,
    /// Per db, the synchronous standbys its keeper reports in sync now.
    reported_sync: BTreeMap<DbUid, Vec<DbUid>>,
    /// Per db, the oldest WAL segment its keeper reports in `pg_wal`.
    reported_oldest_wal: BTreeMap<DbUid, String>,
    /// The primary this step found failed and could not replace.
    failed_master: Option<DbUid>,
    /// The keepers' infos of this cluster, as read for this step.
    infos: BTreeMap<KeeperUid, KeeperInfo>,
    /// The cluster's parameters if this step merged initdb's into them.
    merged_parameters: Option<BTreeMap<String, String>>,
    /// The pending orders this step still found called for.
    orders_called_for: BTreeSet<(KeeperUid, OrderReason)>,
}

/// A standby the planner would not promote, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub keeper: KeeperUid,
    pub reason: &'static str,
}

impl Planner<'_> {
    fn emit(&mut self, event: Event) {
        self.events.push(event);
    }

    fn observe_keepers(&mut self) {
        let infos = std::mem::take(&mut self.infos);
        for info in infos.values() {
            let changed = match self.memory.keepers.get(&info.uid) {
                Some(hb) => hb.info_uid != info.info_uid,
                None => true,
            };
            if changed {
                self.memory.keepers.insert(
                    info.uid.clone(),
                    Heartbeat {
                        info_uid: info.info_uid.clone(),
                        changed_at: self.now,
                    },
                );
            }
            // Only a keeper alive now joins: the leftover info of a keeper removed as dead
            // must not bring it back.
            if !self.cd.keepers.contains_key(&info.uid) && changed {
                self.emit(Event::new(EventKind::KeeperRegistered).with("keeper", &info.uid));
                self.cd.keepers.insert(
                    info.uid.clone(),
                    Keeper {
                        uid: info.uid.clone(),
                        status: KeeperStatus::default(),
                    },
                );
            }
        }
        let now = self.now;
        let uids: Vec<KeeperUid> = self.cd.keepers.keys().cloned().collect();
        for uid in uids {
            // A keeper we have never heard from since we became leader gets a full
            // failInterval from now before it is judged.
            let hb = self.memory.keepers.entry(uid.clone()).or_insert(Heartbeat {
                info_uid: String::new(),
                changed_at: now,
            });
            let healthy = now.saturating_sub(hb.changed_at) <= self.spec.fail_interval;
            let fresh = self.info_is_fresh(&uid, &infos);
            let keeper = self.cd.keepers.get_mut(&uid).expect("listed above");
            // `stolonctl failkeeper`: failed for this one round, then judged as usual.
            let forced = std::mem::take(&mut keeper.status.force_fail);
            keeper.status.healthy = healthy && !forced;
            if let (true, Some(info)) = (fresh, infos.get(&uid)) {
                keeper.status.boot_uuid = info.boot_uuid.clone();
                keeper.status.can_be_master = info.can_be_master;
                keeper.status.can_be_synchronous_replica = info.can_be_synchronous_replica;
                keeper.status.priority = info.priority;
            }
            if forced {
                self.emit(Event::new(EventKind::KeeperForcedToFail).with("keeper", &uid));
            }
        }
        self.infos = infos;
    }

    /// An info is fresh when it is in the store and changed within two heartbeats: a live
    /// keeper publishes once per [`ValidSpec::keeper_heartbeat`].
    fn info_is_fresh(&self, uid: &KeeperUid, infos: &BTreeMap<KeeperUid, KeeperInfo>) -> bool {
        infos.contains_key(uid)
            && self.memory.keepers.get(uid).is_some_and(|hb| {
                self.now.saturating_sub(hb.changed_at) <= 2 * self.spec.keeper_heartbeat()
            })
    }

    fn observe_dbs(&mut self) {
        let uids: Vec<DbUid> = self.cd.dbs.keys().cloned().collect();
        for uid in uids {
            self.observe_db(&uid);
        }
        self.memory
            .db_errors
            .retain(|uid, _| self.cd.dbs.contains_key(uid));
        self.memory
            .wal_progress
            .retain(|uid, _| self.cd.dbs.contains_key(uid));
        self.memory
            .db_down
            .retain(|uid, _| self.cd.dbs.contains_key(uid));
    }

    /// Updates a db's status from its keeper's report, and its health.
    fn observe_db(&mut self, uid: &DbUid) {
        let uid = uid.clone();
        {
            let keeper_uid = self.cd.dbs[&uid].spec.keeper_uid.clone();
            let info = self
                .infos
                .get(&keeper_uid)
                .filter(|_| self.info_is_fresh(&keeper_uid, &self.infos))
                .cloned();
            let problem = match info.as_ref().map(|i| &i.postgres_state) {
                None => Some(DbProblem::NoKeeperInfo),
                Some(None) => Some(DbProblem::NoDbState),
                Some(Some(state)) if state.db_uid != uid => Some(DbProblem::UnexpectedDbUid),
                Some(Some(state)) => {
                    let status = &mut self.cd.dbs.get_mut(&uid).expect("listed").status;
                    status.current_generation = state.generation;
                    status.listen_address = state.listen_address.clone();
                    status.port = state.port;
                    if state.healthy {
                        self.reported_sync
                            .insert(uid.clone(), state.synchronous_standbys.clone());
                        self.reported_oldest_wal
                            .insert(uid.clone(), state.older_wal_file.clone());
                        let now = self.now;
                        let progress = self
                            .memory
                            .wal_progress
                            .entry(uid.clone())
                            .or_insert((state.x_log_pos, now));
                        if progress.0 != state.x_log_pos {
                            *progress = (state.x_log_pos, now);
                        }
                        status.in_recovery = state.in_recovery;
                        status.system_id = state.system_id.clone();
                        status.timeline_id = state.timeline_id;
                        status.x_log_pos = state.x_log_pos;
                        status.timelines_history = state.timelines_history.clone();
                        None
                    } else if self.cd.dbs[&uid].spec.halt {
                        // Stopped on purpose for a switchover, which bounds it.
                        None
                    } else {
                        Some(DbProblem::NotHealthy)
                    }
                }
            };
            // The keeper is alive and says no postgres runs: it is restarting it, and has
            // dbRestartTimeout to succeed.
            let down = problem == Some(DbProblem::NotHealthy)
                && info
                    .as_ref()
                    .and_then(|i| i.postgres_state.as_ref())
                    .is_some_and(|state| state.down);
            let down_since = if down {
                Some(*self.memory.db_down.entry(uid.clone()).or_insert(self.now))
            } else {
                self.memory.db_down.remove(&uid);
                None
            };
            let error_since = match problem {
                None => {
                    self.memory.db_errors.remove(&uid);
                    None
                }
                Some(problem) => {
                    self.emit(
                        Event::new(EventKind::DbProblem(problem))
                            .with("db", &uid)
                            .with("keeper", &keeper_uid),
                    );
                    Some(*self.memory.db_errors.entry(uid.clone()).or_insert(self.now))
                }
            };
            let keeper_healthy = self
                .cd
                .keepers
                .get(&keeper_uid)
                .is_some_and(|k| k.status.healthy);
            let within = |since: Option<Duration>, limit: Duration| {
                since.is_none_or(|since| self.now.saturating_sub(since) <= limit)
            };
            let db_ok = within(error_since, self.spec.fail_interval)
                && within(down_since, self.spec.db_restart_timeout);
            self.cd.dbs.get_mut(&uid).expect("listed").status.healthy = db_ok && keeper_healthy;
        }
    }

    /// Remembers the proxies that may still be routing (see [`Self::live_proxies`]): every
    /// one whose info is in the store, and one whose info has left it until this sentinel
    /// has also seen it silent past its timeout.
    ///
    /// This sentinel's clock only witnesses a silence it watched: proxies publish every check
    /// and their publishes wake the sentinel, so it normally sees each info. After a gap in
    /// its steps longer than a check cadence (it was stuck in a store request, say), a proxy
    /// whose info is gone may have published infos it never saw, which a store whose clock
    /// jumped dropped at once: its silence counts from now.
    fn observe_proxies(&mut self, proxies: &[ProxyInfo]) {
        let now = self.now;
        let present: BTreeSet<&ProxyUid> = proxies.iter().map(|p| &p.uid).collect();
        let watched = self.spec.proxy_check_cadence() + PROXY_FENCE_MARGIN;
        let gap = self
            .memory
            .last_step
            .replace(now)
            .is_some_and(|last| now.saturating_sub(last) > watched);
        if gap {
            for (uid, seen) in &mut self.memory.proxies {
                if !present.contains(uid) {
                    seen.changed_at = seen.changed_at.max(now);
                }
            }
        }
        self.memory
            .proxies
            .retain(|uid, seen| present.contains(uid) || !seen.silent_past_timeout(now));
        for info in proxies {
            let changed = self
                .memory
                .proxies
                .get(&info.uid)
                .is_none_or(|seen| seen.info.info_uid != info.info_uid);
            if changed {
                let seen = SeenProxy {
                    info: info.clone(),
                    changed_at: now,
                };
                self.memory.proxies.insert(info.uid.clone(), seen);
            }
        }
    }

    /// Proxies that may still be routing, as of their last info. A proxy that cannot read
    /// the store closes its connections once its proxyTimeout has passed since its last
    /// successful check; two clocks say when that has surely happened, and a proxy counts as
    /// fenced only once both do: the store's, which drops its info
    /// [`crate::proxy::fence::info_ttl`] after its last publish, and this sentinel's, which must
    /// have seen it silent for its timeout plus [`PROXY_FENCE_MARGIN`]. So neither a jump of
    /// this sentinel's clock nor an info it read leaving the store early (the store's clock
    /// jumping) can make a new primary writable while a proxy still routes to the old.
    fn live_proxies(&self) -> Vec<&ProxyInfo> {
        self.memory
            .proxies
            .values()
            .map(|seen| &seen.info)
            .collect()
    }

    fn new_db_uid(&mut self) -> DbUid {
        self.uids_made += 1;
        let mut z = self
            .seed
            .wrapping_add(self.uids_made.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        DbUid(format!("{:08x}", z as u32))
    }

    fn new_db(&mut self, keeper: &KeeperUid, role: DbRole, init_mode: InitMode) -> DbUid {
        // A db uid names one incarnation: never hand out one this term has seen, even if
        // that db was removed since.
        let uid = loop {
            let uid = self.new_db_uid();
            if !self.cd.dbs.contains_key(&uid) && !self.memory.db_uids_used.contains(&uid) {
                break uid;
            }
        };
        let db = Db {
            uid: uid.clone(),
            generation: Generation::INITIAL,
            spec: DbSpec {
                keeper_uid: keeper.clone(),
                role,
                init_mode,
                follow_config: None,
                followers: Vec::new(),
                max_standbys: self.spec.max_standbys,
                additional_wal_senders: self.spec.additional_wal_senders,
                pg_parameters: self.spec.pg_parameters.clone(),
                pg_hba: self.spec.pg_hba.clone(),
                synchronous_replication: self.spec.synchronous_replication,
                synchronous_standbys: Vec::new(),
                external_synchronous_standbys: Vec::new(),
                use_pgrewind: self.spec.use_pgrewind,
                halt: false,
                additional_replication_slots: Vec::new(),
                automatic_pg_restart: self.spec.automatic_pg_restart,
                new_config: (init_mode == InitMode::New)
                    .then(|| self.spec.new_config.clone())
                    .flatten(),
                pitr_config: (init_mode == InitMode::Pitr)
                    .then(|| self.spec.pitr_config.clone())
                    .flatten(),
                default_su_repl_access_mode: self.spec.default_su_repl_access_mode,
                include_previous_config: matches!(
                    init_mode,
                    InitMode::New | InitMode::Existing | InitMode::Pitr
                ) && self.spec.merge_pg_parameters,
            },
            // A new db gets the same grace period as any db without a report yet, so
            // that the next step computes the same status.
            status: DbStatus {
                healthy: true,
                ..Default::default()
            },
        };
        self.memory.db_uids_used.insert(uid.clone());
        self.cd.dbs.insert(uid.clone(), db);
        uid
    }

    fn run_normal(&mut self) {
        if let Some(pause) = self.cd.cluster.status.pause.clone() {
            self.run_paused(&pause);
            return;
        }
        self.remove_dead_keepers();
        let Some(master) = self.cd.master_db().cloned() else {
            self.emit(Event::new(EventKind::NoMasterDb));
            return;
        };
        if self.drive_switchover(&master) {
            return;
        }
        let failed = if !master.status.healthy {
            self.emit(Event::new(EventKind::MasterFailed).with("db", &master.uid));
            true
        } else if self.convergence_expired(&master, self.spec.convergence_timeout) {
            self.emit(Event::new(EventKind::MasterNotConverged).with("db", &master.uid));
            true
        } else {
            false
        };
        if failed {
            self.fail_over(&master);
            return;
        }
        match master.spec.role {
            DbRole::Standby if master.spec.follows_remote() => self.run_standby_leader(&master),
            DbRole::Standby => self.promote_when_proxies_fenced(&master),
            DbRole::Master => {
                let serving = Self::converged(&master) && !master.status.in_recovery;
                if serving {
                    self.end_switchover_when_serving(&master);
                }
                self.publish_to_proxies(&master, serving);
                if serving {
                    self.cd.cluster.status.deposed_master = None;
                    self.manage_standbys(&master);
                }
            }
        }
    }

    /// The keepers that hold a db: one pass over the dbs, where asking each keeper in turn
    /// would cost a pass per keeper.
    fn db_owners(&self) -> BTreeSet<KeeperUid> {
        self.cd
            .dbs
            .values()
            .map(|db| db.spec.keeper_uid.clone())
            .collect()
    }

    /// Keepers without a db, silent for deadKeeperRemovalInterval, leave the cluster data.
    /// A keeper that owns a db stays: its data may still be needed.
    fn remove_dead_keepers(&mut self) {
        let owners = self.db_owners();
        let dead: Vec<KeeperUid> = self
            .cd
            .keepers
            .keys()
            .filter(|uid| !owners.contains(uid))
            .filter(|uid| {
                self.memory.keepers.get(*uid).is_some_and(|hb| {
                    self.now.saturating_sub(hb.changed_at) > self.spec.dead_keeper_removal_interval
                })
            })
            .cloned()
            .collect();
        for uid in dead {
            self.emit(Event::new(EventKind::RemovingDeadKeeper).with("keeper", &uid));
            self.cd.keepers.remove(&uid);
        }
    }
}
