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

use crate::Event;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use stolon_cluster::{
    ClusterData, ClusterPhase, Db, DbRole, DbSpec, DbStatus, DbUid, FollowConfig, Generation, Hold,
    InitMode, Keeper, KeeperInfo, KeeperStatus, KeeperUid, Lsn, ProxyInfo, ProxyUid, Switchover,
    SwitchoverOutcome, SwitchoverPhase, ValidSpec, FAKE_STANDBY_NAME,
};

/// How long after a proxy's proxyTimeout the sentinel takes it as fenced. The proxy counts
/// its timeout from the start of the check whose info the sentinel saw after, so the margin
/// only covers the proxy's fence timer (it looks every 100 ms) and closing its connections.
/// It does not depend on sleepInterval: the sentinel wakes when the wait runs out.
pub const PROXY_FENCE_MARGIN: Duration = Duration::from_secs(1);

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

/// What the leader remembers between steps. It lives only in memory and starts empty after
/// every leadership change, so failure detection restarts from zero on a new leader: a
/// conservative choice, since a new leader cannot know how long a component has been silent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    keepers: BTreeMap<KeeperUid, Heartbeat>,
    proxies: BTreeMap<ProxyUid, (Heartbeat, Duration)>,
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
    pending_orders: BTreeMap<(KeeperUid, &'static str), Duration>,
    switchover: Option<SwitchoverClock>,
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
        proxies: obs.proxies,
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
    planner.copy_cluster_spec_into_dbs();
    planner.bump_changed_generations(cd);
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
    proxies: &'m [ProxyInfo],
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
    orders_called_for: BTreeSet<(KeeperUid, &'static str)>,
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
                self.emit(Event::info("new keeper registered").with("keeper", &info.uid));
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
                self.emit(
                    Event::warn("keeper forced to fail (stolonctl failkeeper)")
                        .with("keeper", &uid),
                );
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
                None => Some("no keeper info available"),
                Some(None) => Some("no db state available"),
                Some(Some(state)) if state.db_uid != uid => {
                    Some("received db state for unexpected db uid")
                }
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
                        Some("db is not healthy")
                    }
                }
            };
            // The keeper is alive and says no postgres runs: it is restarting it, and has
            // dbRestartTimeout to succeed.
            let down = problem == Some("db is not healthy")
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
                Some(reason) => {
                    self.emit(
                        Event::warn(reason)
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

    fn observe_proxies(&mut self, proxies: &[ProxyInfo]) {
        let present: BTreeSet<&ProxyUid> = proxies.iter().map(|p| &p.uid).collect();
        self.memory.proxies.retain(|uid, _| present.contains(uid));
        for info in proxies {
            let changed = self
                .memory
                .proxies
                .get(&info.uid)
                .is_none_or(|(hb, _)| hb.info_uid != info.info_uid);
            if changed {
                self.memory.proxies.insert(
                    info.uid.clone(),
                    (
                        Heartbeat {
                            info_uid: info.info_uid.clone(),
                            changed_at: self.now,
                        },
                        info.proxy_timeout,
                    ),
                );
            }
        }
    }

    /// Proxies that may still be routing: silent for less than their proxyTimeout plus
    /// [`PROXY_FENCE_MARGIN`]. A proxy silent for longer cannot have read the store
    /// successfully, so it has closed its connections by itself.
    fn live_proxies<'p>(&self, proxies: &'p [ProxyInfo]) -> Vec<&'p ProxyInfo> {
        proxies
            .iter()
            .filter(|p| {
                self.memory
                    .proxies
                    .get(&p.uid)
                    .is_some_and(|(hb, timeout)| {
                        self.now.saturating_sub(hb.changed_at) <= *timeout + PROXY_FENCE_MARGIN
                    })
            })
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

    fn converged(db: &Db) -> bool {
        db.status.current_generation == db.generation
    }

    fn convergence_expired(&self, db: &Db, timeout: Duration) -> bool {
        !Self::converged(db)
            && self
                .memory
                .convergence
                .get(&db.uid)
                .is_some_and(|(generation, since)| {
                    *generation == db.generation && self.now.saturating_sub(*since) > timeout
                })
    }

    fn initialize(&mut self) {
        let Some(master_uid) = self.cd.cluster.status.master.clone() else {
            self.choose_initial_master();
            return;
        };
        let Some(db) = self.cd.dbs.get(&master_uid).cloned() else {
            self.cd.cluster.status.master = None;
            return;
        };
        // A db in its grace period after a bad report still reads as healthy: initialization
        // needs a good report now.
        let reported_ok = db.status.healthy && !self.memory.db_errors.contains_key(&master_uid);
        if Self::converged(&db) && reported_ok {
            if db.spec.include_previous_config {
                self.merge_init_parameters(&db);
            }
            let master = self.cd.dbs.get_mut(&master_uid).expect("present");
            master.spec.init_mode = InitMode::None;
            master.spec.include_previous_config = false;
            master.spec.pitr_config = None;
            self.cd.cluster.status.phase = ClusterPhase::Normal;
            self.emit(Event::info("db initialized").with("db", &master_uid));
        } else if db.spec.init_mode != InitMode::Pitr
            // A restore takes as long as the backup and the archive need: no timeout.
            && self.convergence_expired(&db, self.spec.init_timeout)
        {
            self.emit(
                Event::warn("db failed to initialize")
                    .with("db", &master_uid)
                    .with("keeper", &db.spec.keeper_uid),
            );
            self.memory
                .failed_init_keepers
                .insert(db.spec.keeper_uid.clone());
            self.cd.dbs.remove(&master_uid);
            self.cd.cluster.status.master = None;
        } else {
            self.emit(Event::info("waiting for db").with("db", &master_uid));
        }
    }

    /// `mergePgParameters`: the parameters initdb wrote become the cluster's, under the
    /// ones the spec already sets.
    fn merge_init_parameters(&mut self, db: &Db) {
        let Some(reported) = self
            .infos
            .get(&db.spec.keeper_uid)
            .and_then(|i| i.postgres_state.as_ref())
            .filter(|state| state.db_uid == db.uid)
            .map(|state| state.init_pg_parameters.clone())
        else {
            return;
        };
        let mut merged = reported;
        merged.extend(
            self.cd
                .cluster
                .spec
                .pg_parameters
                .clone()
                .unwrap_or_default(),
        );
        self.emit(
            Event::info("merging the initial postgres parameters into the cluster spec")
                .with("parameters", merged.len()),
        );
        self.cd.cluster.spec.pg_parameters = Some(merged.clone());
        self.merged_parameters = Some(merged);
    }

    fn choose_initial_master(&mut self) {
        if let Some(keeper) = self.spec.existing_keeper.clone() {
            self.adopt_existing(KeeperUid::new(keeper));
            return;
        }
        self.emit(Event::info("trying to find initial master"));
        let candidate = self
            .cd
            .keepers
            .values()
            .find(|k| {
                k.status.healthy
                    && k.status.can_be_master
                    && !self.memory.failed_init_keepers.contains(&k.uid)
            })
            .map(|k| k.uid.clone());
        let Some(keeper) = candidate else {
            let why = if self.cd.keepers.is_empty() {
                "cannot choose initial master: no keepers registered"
            } else {
                "cannot choose initial master: no healthy keeper that can be master"
            };
            self.emit(Event::warn(why));
            return;
        };
        let (mode, message) = if self.spec.pitr_config.is_some() {
            (
                InitMode::Pitr,
                "initializing cluster using point in time recovery",
            )
        } else {
            (InitMode::New, "initializing cluster")
        };
        let db = self.new_db(&keeper, DbRole::Master, mode);
        self.cd.cluster.status.master = Some(db.clone());
        self.cd.cluster.status.master_choice = format!(
            "initial master: keeper {keeper} is the first healthy keeper that can be master"
        );
        self.emit(Event::info(message).with("db", db).with("keeper", keeper));
    }

    /// initMode existing: the named keeper's data becomes the primary, as it is.
    fn adopt_existing(&mut self, keeper: KeeperUid) {
        if !self
            .cd
            .keepers
            .get(&keeper)
            .is_some_and(|k| k.status.healthy)
        {
            self.emit(Event::warn("keeper state not available").with("keeper", keeper));
            return;
        }
        let db = self.new_db(&keeper, DbRole::Master, InitMode::Existing);
        self.cd.cluster.status.master = Some(db.clone());
        self.cd.cluster.status.master_choice =
            format!("initial master: keeper {keeper} named by existingConfig");
        self.emit(
            Event::info("initializing cluster using existing data")
                .with("db", db)
                .with("keeper", keeper),
        );
    }

    fn run_normal(&mut self) {
        self.remove_dead_keepers();
        let Some(master) = self.cd.master_db().cloned() else {
            self.emit(Event::warn(
                "cluster has no master db: nothing can be decided",
            ));
            return;
        };
        if self.drive_switchover(&master) {
            return;
        }
        let failed = if !master.status.healthy {
            self.emit(Event::warn("master db is failed").with("db", &master.uid));
            true
        } else if self.convergence_expired(&master, self.spec.convergence_timeout) {
            self.emit(Event::warn("db not converged").with("db", &master.uid));
            true
        } else {
            false
        };
        if failed {
            self.fail_over(&master);
            return;
        }
        match master.spec.role {
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
            self.emit(Event::info("removing old dead keeper").with("keeper", &uid));
            self.cd.keepers.remove(&uid);
        }
    }

    fn fail_over(&mut self, failed: &Db) {
        if self.cd.cluster.status.switchover.is_some() {
            self.release_held_connections();
            self.finish_switchover(false, format!("interrupted: db {} failed", failed.uid));
        }
        // A primary stopped cleanly for a switchover holds every commit, and its successor
        // never served: it is the one to bring back, in any replication mode.
        let cleanly_halted = self
            .cd
            .cluster
            .status
            .deposed_master
            .as_ref()
            .is_some_and(|d| d.spec.halt);
        if cleanly_halted && self.reinstate_deposed_master(failed) {
            return;
        }
        self.emit(
            Event::info("trying to find a standby to replace failed master")
                .with("db", &failed.uid)
                .with("keeper", &failed.spec.keeper_uid),
        );
        let rules = ElectionRules {
            stalled: self.stalled_dbs(),
            ..election_rules(failed, self.spec.max_standby_lag)
        };
        let choice = choose_new_master(&self.cd, failed, &rules);
        for r in &choice.rejected {
            self.emit(
                Event::info("ignoring keeper as new master")
                    .with("keeper", &r.keeper)
                    .with("reason", r.reason),
            );
        }
        let Some(best) = choice.best else {
            if self.reinstate_deposed_master(failed) {
                return;
            }
            self.failed_master = Some(failed.uid.clone());
            let mut event = Event::warn("no eligible masters: no failover");
            for r in &choice.rejected {
                event = event.with("rejected", format!("{}({})", r.keeper, r.reason));
            }
            self.emit(event);
            return;
        };
        let keeper = self.cd.dbs[&best].spec.keeper_uid.clone();
        self.emit(
            Event::info("electing db as the new master")
                .with("db", &best)
                .with("keeper", &keeper)
                .with("why", &choice.why),
        );
        let why = format!(
            "failover from db {} (keeper {}): {}",
            failed.uid, failed.spec.keeper_uid, choice.why
        );
        self.replace_master(failed, &best, why);
    }

    /// Makes `best` the primary to be in place of `old`, whose db is removed: the proxies
    /// stop routing at once, and `best` is promoted once they have all acknowledged that.
    fn replace_master(&mut self, old: &Db, best: &DbUid, why: String) {
        let served = self.cd.proxy.spec.master_db_uid.as_ref() == Some(&old.uid);
        if old.spec.role == DbRole::Master {
            self.emit(Event::info("removing old master db").with("db", &old.uid));
        }
        // The primary that served is remembered until its successor serves; a candidate
        // that fails before that does not replace it in memory.
        if served || self.cd.cluster.status.deposed_master.is_none() {
            self.cd.cluster.status.deposed_master = Some(Box::new(old.clone()));
        }
        self.cd.dbs.remove(&old.uid);
        self.cd.cluster.status.master = Some(best.clone());
        self.cd.cluster.status.master_choice = why;
        // The new primary waits for the same standbys as the old one did (but itself),
        // so that commits keep waiting for a copy from the first moment it serves; in
        // synchronous mode it also waits for the other good standbys up to
        // maxSynchronousStandbys, recorded here before its keeper lists them, so that
        // commits resume as soon as one of them streams from it.
        let mut synchronous: Vec<DbUid> = old
            .spec
            .synchronous_standbys
            .iter()
            .filter(|uid| *uid != best)
            .cloned()
            .collect();
        if old.spec.synchronous_replication {
            let timeline = self.cd.dbs[best].status.timeline_id;
            let mut others: Vec<&Db> = self
                .cd
                .dbs
                .values()
                .filter(|db| {
                    db.uid != *best
                        && db.uid != old.uid
                        && !synchronous.contains(&db.uid)
                        && db.spec.role == DbRole::Standby
                        && db.status.healthy
                        && Self::converged(db)
                        && db.status.timeline_id == timeline
                        && self.cd.keepers.get(&db.spec.keeper_uid).is_some_and(|k| {
                            k.status.healthy && k.status.can_be_synchronous_replica
                        })
                })
                .collect();
            others.sort_by(|a, b| {
                b.status
                    .x_log_pos
                    .cmp(&a.status.x_log_pos)
                    .then(a.uid.cmp(&b.uid))
            });
            let room =
                usize::from(self.spec.max_synchronous_standbys).saturating_sub(synchronous.len());
            synchronous.extend(others.into_iter().take(room).map(|db| db.uid.clone()));
        }
        let new_master = self.cd.dbs.get_mut(best).expect("elected db exists");
        new_master.spec.synchronous_standbys = synchronous;
        new_master.status.synchronous_standbys.clear();
        new_master.spec.external_synchronous_standbys = if old.spec.synchronous_replication
            && new_master.spec.synchronous_standbys.len()
                < usize::from(self.spec.min_synchronous_standbys)
        {
            vec![FAKE_STANDBY_NAME.to_string()]
        } else {
            Vec::new()
        };
        self.clear_proxy_target();
    }

    /// When the standby elected to replace the primary fails before it serves and nothing
    /// else qualifies, the old primary comes back if its keeper is alive and still holds its
    /// data: in asynchronous mode it has every commit the cluster acknowledged. Not in
    /// synchronous mode, where only a known synchronous standby may take over.
    fn reinstate_deposed_master(&mut self, failed: &Db) -> bool {
        let Some(deposed) = self.cd.cluster.status.deposed_master.clone() else {
            return false;
        };
        if deposed.uid == failed.uid {
            return false;
        }
        let synchronous = deposed.spec.synchronous_replication
            || failed.spec.synchronous_replication
            || self.spec.synchronous_replication;
        if synchronous && !deposed.spec.halt {
            self.emit(
                Event::info("not reinstating the old master: synchronous replication only promotes a known synchronous standby")
                    .with("db", &deposed.uid),
            );
            return false;
        }
        let keeper = &deposed.spec.keeper_uid;
        let alive = self
            .cd
            .keepers
            .get(keeper)
            .is_some_and(|k| k.status.healthy)
            && self
                .infos
                .get(keeper)
                .and_then(|i| i.postgres_state.as_ref())
                .is_some_and(|state| state.db_uid == deposed.uid)
            && self.cd.db_of_keeper(keeper).is_none();
        if !alive {
            return false;
        }
        if !self.proxies_behind().is_empty() || self.cd.proxy.spec.master_db_uid.is_some() {
            self.clear_proxy_target();
            self.emit(Event::info(
                "waiting for proxies to be converged to the current generation",
            ));
            return true;
        }
        self.emit(
            Event::info("reinstating the old master db: the standby elected to replace it failed before serving")
                .with("db", &deposed.uid)
                .with("keeper", keeper),
        );
        self.cd.dbs.remove(&failed.uid);
        let mut db = *deposed;
        db.spec.role = DbRole::Master;
        db.spec.follow_config = None;
        db.spec.halt = false;
        // It serves only once its keeper reports it running as a primary again.
        db.status.in_recovery = true;
        self.cd.cluster.status.master_choice = format!(
            "reinstated db {} (keeper {}): the standby elected to replace it (db {}) failed before serving and no other standby qualifies",
            db.uid, db.spec.keeper_uid, failed.uid
        );
        self.cd.cluster.status.master = Some(db.uid.clone());
        self.cd.cluster.status.deposed_master = None;
        self.memory.db_errors.remove(&db.uid);
        let uid = db.uid.clone();
        self.cd.dbs.insert(uid.clone(), db);
        // What its keeper reports now, as any later step would read it.
        self.observe_db(&uid);
        true
    }

    /// The live proxies that have not yet applied the current proxy generation.
    fn proxies_behind(&self) -> Vec<String> {
        let generation = self.cd.proxy.generation;
        self.live_proxies(self.proxies)
            .into_iter()
            .filter(|p| p.generation != generation)
            .map(|p| p.uid.to_string())
            .collect()
    }

    fn clear_proxy_target(&mut self) {
        if self.cd.proxy.spec.master_db_uid.take().is_some() {
            self.cd.proxy.generation = self.cd.proxy.generation.next();
        }
    }

    fn promote_when_proxies_fenced(&mut self, candidate: &Db) {
        self.clear_proxy_target();
        let generation = self.cd.proxy.generation;
        let lagging = self.proxies_behind();
        if !lagging.is_empty() {
            self.emit(
                Event::info("waiting for proxies to be converged to the current generation")
                    .with("generation", generation)
                    .with("proxies", lagging.join(",")),
            );
            return;
        }
        self.emit(
            Event::info("proxies fenced: promoting db")
                .with("db", &candidate.uid)
                .with("proxy_generation", generation),
        );
        let db = self.cd.dbs.get_mut(&candidate.uid).expect("master exists");
        db.spec.role = DbRole::Master;
        db.spec.follow_config = None;
        db.spec.init_mode = InitMode::None;
    }
}

/// Planned switchover, one phase per step (see [`SwitchoverPhase`]): hold new connections
/// at the proxies, stop the old primary after a checkpoint, wait until the target has all
/// its WAL, then hand over through the same fenced promotion as a failover.
impl Planner<'_> {
    /// Advances a switchover in progress. True when this step belongs to it entirely.
    fn drive_switchover(&mut self, master: &Db) -> bool {
        let Some(mut so) = self.cd.cluster.status.switchover.clone() else {
            self.memory.switchover = None;
            return false;
        };
        let clock = match self.memory.switchover.take() {
            Some(clock) if clock.id == so.id => clock,
            _ => SwitchoverClock {
                id: so.id.clone(),
                started: self.now,
                held_since: None,
            },
        };
        let timed_out = self.now.saturating_sub(clock.started) > so.timeout.0;
        self.memory.switchover = Some(clock);
        match so.phase {
            SwitchoverPhase::Requested => {
                self.start_switchover(so);
                self.cd.cluster.status.switchover.is_some()
            }
            SwitchoverPhase::Holding | SwitchoverPhase::Halting | SwitchoverPhase::CatchingUp => {
                if let Some(reason) = self.switchover_obstacle(master, &so, timed_out) {
                    self.abandon_switchover(master, so, reason);
                    return false;
                }
                match so.phase {
                    SwitchoverPhase::Holding => self.halt_when_held(master, &mut so),
                    SwitchoverPhase::Halting => self.record_final_lsn(master, &mut so),
                    _ => {
                        if self.promote_when_caught_up(master, &mut so) {
                            return true;
                        }
                    }
                }
                self.cd.cluster.status.switchover = Some(so);
                true
            }
            SwitchoverPhase::Promoting => {
                if so.to_db.as_ref() != Some(&master.uid) {
                    self.release_held_connections();
                    self.finish_switchover(false, "interrupted: another db became master".into());
                }
                false
            }
            SwitchoverPhase::Restoring => false,
        }
    }

    fn start_switchover(&mut self, mut so: Switchover) {
        let plan = switchover_plan(
            &self.cd,
            self.spec,
            so.to_keeper.as_ref(),
            self.stalled_dbs(),
        );
        let (master, target) = match plan {
            Ok(plan) => plan,
            Err(reason) => {
                self.finish_switchover(false, format!("refused: {reason}"));
                return;
            }
        };
        self.emit(
            Event::info("switchover: holding new client connections at the proxies")
                .with("from", &master)
                .with("to", &target),
        );
        so.from_db = Some(master);
        so.to_db = Some(target);
        so.phase = SwitchoverPhase::Holding;
        self.cd.proxy.spec.hold = Some(Hold { grace: so.grace });
        self.cd.proxy.generation = self.cd.proxy.generation.next();
        self.cd.cluster.status.switchover = Some(so);
    }

    /// What forbids going on with the switchover, if anything.
    fn switchover_obstacle(&self, master: &Db, so: &Switchover, timed_out: bool) -> Option<String> {
        let target = so.to_db.as_ref().and_then(|uid| self.cd.dbs.get(uid));
        let master_keeper_ok = self
            .cd
            .keepers
            .get(&master.spec.keeper_uid)
            .is_some_and(|k| k.status.healthy);
        if so.from_db.as_ref() != Some(&master.uid) {
            Some("the primary changed meanwhile".into())
        } else if !master_keeper_ok || !master.status.healthy {
            Some("the old primary failed".into())
        } else if !target.is_some_and(|t| t.status.healthy) {
            Some("the target failed".into())
        } else if timed_out {
            Some(match so.phase {
                SwitchoverPhase::Holding => {
                    format!(
                        "the proxies did not all hold new connections within {}",
                        so.timeout
                    )
                }
                SwitchoverPhase::Halting => {
                    format!(
                        "the old primary did not shut down cleanly within {}",
                        so.timeout
                    )
                }
                _ => format!(
                    "the target did not receive the old primary's final WAL position within {}",
                    so.timeout
                ),
            })
        } else {
            None
        }
    }

    /// Once every live proxy holds new connections and the grace period is over, stop the
    /// old primary.
    fn halt_when_held(&mut self, master: &Db, so: &mut Switchover) {
        let lagging = self.proxies_behind();
        if !lagging.is_empty() {
            self.emit(
                Event::info("switchover: waiting for the proxies to hold new connections")
                    .with("proxies", lagging.join(",")),
            );
            return;
        }
        let now = self.now;
        let clock = self.memory.switchover.as_mut().expect("set by the caller");
        let held_since = *clock.held_since.get_or_insert(now);
        if now.saturating_sub(held_since) < so.grace.0 {
            self.emit(Event::info(
                "switchover: letting existing sessions finish (grace period)",
            ));
            return;
        }
        self.emit(
            Event::info("switchover: stopping the old primary after a checkpoint")
                .with("db", &master.uid),
        );
        self.cd.dbs.get_mut(&master.uid).expect("master").spec.halt = true;
        so.phase = SwitchoverPhase::Halting;
    }

    fn record_final_lsn(&mut self, master: &Db, so: &mut Switchover) {
        let stopped = self
            .infos
            .get(&master.spec.keeper_uid)
            .filter(|_| self.info_is_fresh(&master.spec.keeper_uid, &self.infos))
            .and_then(|i| i.postgres_state.as_ref())
            .filter(|s| s.db_uid == master.uid && s.generation == master.generation && !s.healthy)
            .and_then(|s| s.shutdown_checkpoint);
        let Some(checkpoint) = stopped else {
            self.emit(
                Event::info("switchover: waiting for the old primary to shut down")
                    .with("db", &master.uid),
            );
            return;
        };
        if checkpoint.timeline_id != master.status.timeline_id {
            // Never the case for a primary that served: rather than compare positions across
            // timelines, wait for the timeout to abandon the switchover.
            self.emit(
                Event::warn("switchover: the old primary stopped on an unexpected timeline")
                    .with("db", &master.uid)
                    .with("timeline", checkpoint.timeline_id),
            );
            return;
        }
        self.emit(
            Event::info("switchover: old primary stopped")
                .with("db", &master.uid)
                .with("final_lsn", checkpoint.location),
        );
        so.final_lsn = Some(checkpoint.location);
        so.phase = SwitchoverPhase::CatchingUp;
    }

    /// True when the target was elected: the switchover then lives in the new cluster data.
    fn promote_when_caught_up(&mut self, master: &Db, so: &mut Switchover) -> bool {
        let (Some(final_lsn), Some(target_uid)) = (so.final_lsn, so.to_db.clone()) else {
            return false;
        };
        let target = &self.cd.dbs[&target_uid];
        // The shutdown checkpoint is the old primary's last record: a target past its start
        // holds every commit the old primary made.
        let caught_up = target.status.timeline_id == master.status.timeline_id
            && target.status.x_log_pos > final_lsn;
        if !caught_up {
            self.emit(
                Event::info("switchover: waiting for the target to catch up")
                    .with("db", &target_uid)
                    .with("position", target.status.x_log_pos)
                    .with("final_lsn", final_lsn),
            );
            return false;
        }
        let keeper = target.spec.keeper_uid.clone();
        self.emit(
            Event::info("switchover: target has the old primary's final WAL position: electing it")
                .with("db", &target_uid)
                .with("keeper", &keeper)
                .with("position", target.status.x_log_pos),
        );
        so.phase = SwitchoverPhase::Promoting;
        self.cd.cluster.status.switchover = Some(so.clone());
        let why = format!(
            "switchover from db {} (keeper {}): keeper {keeper} caught up to {final_lsn}",
            master.uid, master.spec.keeper_uid
        );
        self.replace_master(master, &target_uid, why);
        true
    }

    /// Gives up the switchover: before the old primary was stopped the proxies simply route
    /// to it again; after, it starts again and the proxies keep holding until it serves.
    fn abandon_switchover(&mut self, master: &Db, mut so: Switchover, reason: String) {
        self.emit(
            Event::warn("switchover abandoned")
                .with("db", &master.uid)
                .with("reason", &reason),
        );
        if so.phase == SwitchoverPhase::Holding || so.from_db.as_ref() != Some(&master.uid) {
            self.release_held_connections();
            self.finish_switchover(false, format!("abandoned: {reason}"));
            return;
        }
        self.cd.dbs.get_mut(&master.uid).expect("master").spec.halt = false;
        so.phase = SwitchoverPhase::Restoring;
        so.abandon_reason = reason;
        self.cd.cluster.status.switchover = Some(so);
    }

    /// The primary serves: a switchover that was promoting it, or restoring it, is over.
    fn end_switchover_when_serving(&mut self, master: &Db) {
        let Some(so) = self.cd.cluster.status.switchover.clone() else {
            return;
        };
        let message = match so.phase {
            SwitchoverPhase::Promoting if so.to_db.as_ref() == Some(&master.uid) => format!(
                "switched over from db {} to db {}",
                so.from_db.map(|d| d.to_string()).unwrap_or_default(),
                master.uid
            ),
            SwitchoverPhase::Restoring
                if so.from_db.as_ref() == Some(&master.uid) && !master.spec.halt =>
            {
                format!("abandoned: {}", so.abandon_reason)
            }
            _ => return,
        };
        self.release_held_connections();
        let succeeded = so.phase == SwitchoverPhase::Promoting;
        self.finish_switchover(succeeded, message);
    }

    fn release_held_connections(&mut self) {
        if self.cd.proxy.spec.hold.take().is_some() {
            self.cd.proxy.generation = self.cd.proxy.generation.next();
        }
    }

    fn finish_switchover(&mut self, succeeded: bool, message: String) {
        let Some(so) = self.cd.cluster.status.switchover.take() else {
            return;
        };
        let event = if succeeded {
            Event::info("switchover completed")
        } else {
            Event::warn("switchover did not happen")
        };
        self.emit(event.with("reason", &message));
        self.memory.switchover = None;
        self.cd.cluster.status.last_switchover = Some(SwitchoverOutcome {
            id: so.id,
            succeeded,
            message,
        });
    }

    fn stalled_dbs(&self) -> BTreeSet<DbUid> {
        self.cd
            .dbs
            .values()
            .filter(|db| self.convergence_expired(db, self.spec.convergence_timeout))
            .map(|db| db.uid.clone())
            .collect()
    }

    /// The earliest instant after now at which a remembered clock runs out.
    fn next_deadline(&self) -> Option<Duration> {
        let spec = self.spec;
        let m = &self.memory;
        let keepers = m.keepers.values().flat_map(|hb| {
            [
                hb.changed_at + spec.fail_interval,
                hb.changed_at + 2 * spec.keeper_heartbeat(),
            ]
        });
        let proxies = m
            .proxies
            .values()
            .map(|(hb, timeout)| hb.changed_at + *timeout + PROXY_FENCE_MARGIN);
        let errors = m
            .db_errors
            .values()
            .map(|since| *since + spec.fail_interval);
        let down = m
            .db_down
            .values()
            .map(|since| *since + spec.db_restart_timeout);
        let removal = m
            .keepers
            .values()
            .map(|hb| hb.changed_at + spec.dead_keeper_removal_interval);
        let stuck = m
            .wal_progress
            .values()
            .map(|(_, since)| *since + STUCK_STANDBY_SLEEP_INTERVALS * spec.sleep_interval);
        let convergence = m.convergence.values().flat_map(|(_, since)| {
            [spec.convergence_timeout, spec.init_timeout]
                .into_iter()
                .chain(spec.sync_timeout)
                .map(move |t| *since + t)
        });
        let switchover = self.memory.switchover.iter().flat_map(|clock| {
            let so = self.cd.cluster.status.switchover.as_ref();
            let timeout = so.map_or(Duration::ZERO, |so| so.timeout.0);
            let grace = so.map_or(Duration::ZERO, |so| so.grace.0);
            [
                Some(clock.started + timeout),
                clock.held_since.map(|h| h + grace),
            ]
            .into_iter()
            .flatten()
        });
        // Judgments compare with `>`: wake just after the limit.
        keepers
            .chain(proxies)
            .chain(errors)
            .chain(down)
            .chain(removal)
            .chain(stuck)
            .chain(convergence)
            .chain(switchover)
            .map(|t| t + Duration::from_millis(1))
            .filter(|t| *t > self.now)
            .min()
    }
}

impl Planner<'_> {
    /// Points the proxies at a primary that serves, and keeps the list of proxies allowed to
    /// route equal to the live ones. One generation bump per change of either.
    fn publish_to_proxies(&mut self, master: &Db, serving: bool) {
        let mut spec = self.cd.proxy.spec.clone();
        if spec.master_db_uid.is_none() && serving {
            self.emit(
                Event::info("proxies may now route to the master db").with("db", &master.uid),
            );
            spec.master_db_uid = Some(master.uid.clone());
        }
        if spec.master_db_uid.is_some() {
            let mut live: Vec<ProxyUid> = self
                .live_proxies(self.proxies)
                .into_iter()
                .map(|p| p.uid.clone())
                .collect();
            live.sort();
            spec.enabled_proxies = live;
        }
        if spec != self.cd.proxy.spec {
            self.cd.proxy.spec = spec;
            self.cd.proxy.generation = self.cd.proxy.generation.next();
        }
    }

    fn manage_standbys(&mut self, master: &Db) {
        self.remove_invalid_standbys(master);
        self.remove_standbys_missing_wal(master);
        let (mut good, converging, failed) = self.classify_standbys(master);
        if master.spec.synchronous_replication {
            self.manage_synchronous_standbys(master, &good, &converging);
        }
        // Synchronous standbys are never removed here, neither those the primary waited for
        // when this step began nor those it waits for now: they are the only failover
        // candidates. One that leaves the set may go in a later step.
        let protected: BTreeSet<DbUid> = master
            .spec
            .synchronous_standbys
            .iter()
            .chain(&self.cd.dbs[&master.uid].spec.synchronous_standbys)
            .cloned()
            .collect();
        let wanted = usize::from(self.spec.max_standbys_per_sender);
        if good.len() >= wanted {
            for db in failed.iter().chain(converging.iter()) {
                if !protected.contains(&db.uid) {
                    self.emit(Event::info("removing non good standby").with("db", &db.uid));
                    self.cd.dbs.remove(&db.uid);
                }
            }
            // The least advanced go first: the others are the better failover candidates.
            good.sort_by(|a, b| {
                a.status
                    .x_log_pos
                    .cmp(&b.status.x_log_pos)
                    .then(b.uid.cmp(&a.uid))
            });
            let mut excess = good.len() - wanted;
            for db in &good {
                if excess == 0 {
                    break;
                }
                if !protected.contains(&db.uid) {
                    self.emit(Event::info("removing good standby in excess").with("db", &db.uid));
                    self.cd.dbs.remove(&db.uid);
                    excess -= 1;
                }
            }
        } else {
            // Failed standbys stay while there is room: they may come back.
            let room = wanted.saturating_sub(good.len() + converging.len());
            let owners = self.db_owners();
            let free: Vec<KeeperUid> = self
                .cd
                .keepers
                .values()
                // Only keepers heard from just now: one gone quiet would hold the db hostage.
                .filter(|k| {
                    k.status.healthy
                        && self.info_is_fresh(&k.uid, &self.infos)
                        && !owners.contains(&k.uid)
                })
                .map(|k| k.uid.clone())
                .take(room)
                .collect();
            for keeper in free {
                // The primary is the resync's source: it must have reported after the
                // keeper, or it may be dead already.
                if !self.master_reported_since(master, &keeper, NEW_STANDBY) {
                    continue;
                }
                let db = self.new_db(&keeper, DbRole::Standby, InitMode::Resync);
                self.emit(
                    Event::info(NEW_STANDBY)
                        .with("db", db)
                        .with("keeper", keeper),
                );
            }
        }
        for db in self.cd.dbs.values_mut() {
            if db.uid == master.uid {
                continue;
            }
            db.spec.role = DbRole::Standby;
            db.spec.followers.clear();
            db.spec.follow_config = Some(FollowConfig {
                db_uid: master.uid.clone(),
            });
            db.spec.synchronous_standbys.clear();
            db.spec.external_synchronous_standbys.clear();
            db.status.synchronous_standbys.clear();
            if Self::converged(db) && db.status.healthy {
                db.spec.init_mode = InitMode::None;
            }
        }
        let followers: Vec<DbUid> = self
            .cd
            .dbs
            .values()
            .filter(|db| db.uid != master.uid)
            .map(|db| db.uid.clone())
            .collect();
        self.cd
            .dbs
            .get_mut(&master.uid)
            .expect("master")
            .spec
            .followers = followers;
    }

    /// A standby whose position has not moved for a while and whose next WAL segment the
    /// primary no longer has will never catch up: its keeper gets a fresh db (a new base
    /// backup).
    fn remove_standbys_missing_wal(&mut self, master: &Db) {
        let Some(oldest) = self
            .reported_oldest_wal
            .get(&master.uid)
            .and_then(|name| name.get(8..24))
            .filter(|name| name.len() == 16)
        else {
            return;
        };
        let stuck_for = STUCK_STANDBY_SLEEP_INTERVALS * self.spec.sleep_interval;
        let hopeless: Vec<Db> = self
            .cd
            .dbs
            .values()
            .filter(|db| db.uid != master.uid && db.generation != Generation::INITIAL)
            .filter(|db| db.status.healthy && db.status.x_log_pos != master.status.x_log_pos)
            .filter(|db| {
                self.memory
                    .wal_progress
                    .get(&db.uid)
                    .is_some_and(|(lsn, since)| {
                        *lsn == db.status.x_log_pos && self.now.saturating_sub(*since) > stuck_for
                    })
            })
            .filter(|db| wal_segment(db.status.x_log_pos).as_str() < oldest)
            .cloned()
            .collect();
        for db in hopeless {
            if !self.master_reported_since(master, &db.spec.keeper_uid, MISSING_WAL) {
                continue;
            }
            let uid = db.uid;
            self.emit(Event::warn(MISSING_WAL).with("db", &uid));
            self.cd.dbs.remove(&uid);
        }
    }

    /// A standby whose data comes from another cluster (system identifier) or that went
    /// past the primary's timeline cannot stream from it: its keeper gets a fresh db.
    fn remove_invalid_standbys(&mut self, master: &Db) {
        let invalid: Vec<(Db, &'static str)> = self
            .cd
            .dbs
            .values()
            .filter(|db| db.uid != master.uid && db.status.current_generation != Generation::NONE)
            .filter_map(|db| {
                if !db.status.system_id.is_empty()
                    && !master.status.system_id.is_empty()
                    && db.status.system_id != master.status.system_id
                {
                    Some((
                        db.clone(),
                        "its system identifier differs from the master's",
                    ))
                } else if db.status.timeline_id > master.status.timeline_id {
                    Some((db.clone(), "it is on a later timeline than the master"))
                } else if diverged(db, master) {
                    Some((
                        db.clone(),
                        "it went past the point where the master's timeline forked from its own",
                    ))
                } else {
                    None
                }
            })
            .collect();
        for (db, reason) in invalid {
            if !self.master_reported_since(master, &db.spec.keeper_uid, reason) {
                continue;
            }
            self.emit(
                Event::warn("removing invalid db")
                    .with("db", &db.uid)
                    .with("reason", reason),
            );
            self.cd.dbs.remove(&db.uid);
        }
    }

    /// Whether the primary has reported since the report of `keeper` that first called for
    /// an order against its data, given for `reason`. A dead primary's last report is older
    /// than the reports its standbys make after it died, so it never confirms anything: an
    /// order is only taken on a primary that was alive after the report calling for it.
    fn master_reported_since(
        &mut self,
        master: &Db,
        keeper: &KeeperUid,
        reason: &'static str,
    ) -> bool {
        let key = (keeper.clone(), reason);
        self.orders_called_for.insert(key.clone());
        let changed_at = |k: &KeeperUid| self.memory.keepers.get(k).map(|hb| hb.changed_at);
        let Some(reported) = changed_at(keeper) else {
            return false;
        };
        let since = *self.memory.pending_orders.entry(key).or_insert(reported);
        let confirmed = self.info_is_fresh(&master.spec.keeper_uid, &self.infos)
            && changed_at(&master.spec.keeper_uid).is_some_and(|at| at > since);
        if !confirmed {
            self.emit(
                Event::info("waiting for the master to report again before acting")
                    .with("keeper", keeper)
                    .with("reason", reason),
            );
        }
        confirmed
    }

    /// Splits the standbys into good (healthy and converged), converging (still applying
    /// their spec in time) and failed.
    fn classify_standbys(&mut self, master: &Db) -> (Vec<Db>, Vec<Db>, Vec<Db>) {
        let (mut good, mut converging, mut failed) = (Vec::new(), Vec::new(), Vec::new());
        let standbys: Vec<Db> = self
            .cd
            .dbs
            .values()
            .filter(|db| db.uid != master.uid)
            .cloned()
            .collect();
        for db in standbys {
            let keeper_healthy = self
                .cd
                .keepers
                .get(&db.spec.keeper_uid)
                .is_some_and(|k| k.status.healthy);
            // A basebackup takes as long as the data is big: syncTimeout, if any, bounds it.
            let timeout = match db.spec.init_mode {
                InitMode::Resync => self.spec.sync_timeout,
                _ => Some(self.spec.convergence_timeout),
            };
            let timed_out = timeout.is_some_and(|t| self.convergence_expired(&db, t));
            if keeper_healthy && Self::converged(&db) && db.status.healthy {
                good.push(db);
            } else if keeper_healthy && !Self::converged(&db) && !timed_out {
                converging.push(db);
            } else {
                failed.push(db);
            }
        }
        (good, converging, failed)
    }

    /// Keeps the primary's synchronous standby set: only change it from a state where every
    /// listed standby is known in sync, add new members before removing old ones, and list
    /// a placeholder when there are fewer real ones than minSynchronousStandbys.
    fn manage_synchronous_standbys(&mut self, master: &Db, good: &[Db], converging: &[Db]) {
        let min = usize::from(self.spec.min_synchronous_standbys);
        let max = usize::from(self.spec.max_synchronous_standbys);
        let good_set: BTreeSet<&DbUid> = good.iter().map(|db| &db.uid).collect();
        let reported: BTreeSet<DbUid> = self
            .reported_sync
            .get(&master.uid)
            .map(|v| v.iter().cloned().collect())
            .unwrap_or_default();
        let mut spec: BTreeSet<DbUid> = master.spec.synchronous_standbys.iter().cloned().collect();
        let mut status: BTreeSet<DbUid> =
            master.status.synchronous_standbys.iter().cloned().collect();
        if status != spec {
            status = status
                .intersection(&spec)
                .chain(reported.intersection(&spec))
                .cloned()
                .collect();
            // A standby still applying its spec (re-pointed to a new primary, say) may yet
            // come in sync: only a failed or removed one makes the wait hopeless.
            let converging: BTreeSet<&DbUid> = converging.iter().map(|db| &db.uid).collect();
            let hopeless = spec.iter().any(|uid| {
                !status.contains(uid)
                    && (!self.cd.dbs.contains_key(uid)
                        || !(good_set.contains(uid) || converging.contains(uid)))
            });
            if hopeless {
                self.emit(Event::info(
                    "setting the expected sync-standbys to the current known in sync sync-standbys",
                ));
                spec = status.clone();
            }
        }
        if status == spec {
            let previous = spec.clone();
            let mut next: BTreeSet<DbUid> = previous
                .iter()
                .filter(|uid| good_set.contains(uid))
                .cloned()
                .collect();
            for gone in previous.difference(&next) {
                self.emit(Event::info("removing failed synchronous standby").with("db", gone));
            }
            let mut by_position: Vec<&Db> = good.iter().collect();
            by_position.sort_by(|a, b| {
                b.status
                    .x_log_pos
                    .cmp(&a.status.x_log_pos)
                    .then(a.uid.cmp(&b.uid))
            });
            while next.len() > max {
                let least = by_position
                    .iter()
                    .rev()
                    .find(|db| next.contains(&db.uid))
                    .map(|db| db.uid.clone())
                    .expect("members of next are good");
                next.remove(&least);
            }
            for db in &by_position {
                if next.len() >= max {
                    break;
                }
                let can = self
                    .cd
                    .keepers
                    .get(&db.spec.keeper_uid)
                    .is_some_and(|k| k.status.can_be_synchronous_replica);
                if can
                    && !next.contains(&db.uid)
                    && db.status.timeline_id == master.status.timeline_id
                {
                    self.emit(
                        Event::info("adding new synchronous standby in good state trying to reach MaxSynchronousStandbys")
                            .with("db", &db.uid),
                    );
                    next.insert(db.uid.clone());
                }
            }
            // Below the minimum, keep the previous ones even if failed: one of them may come
            // back, and until then commits must wait anyway.
            if next.len() < min {
                next.extend(
                    previous
                        .iter()
                        .filter(|uid| self.cd.dbs.contains_key(*uid))
                        .cloned(),
                );
            }
            if next.iter().any(|uid| !previous.contains(uid)) && !previous.is_empty() {
                self.emit(Event::info(
                    "merging current and previous synchronous standbys",
                ));
                next.extend(
                    previous
                        .iter()
                        .filter(|uid| self.cd.dbs.contains_key(*uid))
                        .cloned(),
                );
            }
            if next != spec {
                self.emit(
                    Event::info("synchronousStandbys changed").with(
                        "standbys",
                        next.iter()
                            .map(|u| u.to_string())
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                );
            }
            spec = next;
            status.retain(|uid| spec.contains(uid));
        } else {
            self.emit(Event::info(
                "waiting for new defined synchronous standbys to be in sync",
            ));
        }
        let external = if spec.len() < min {
            self.emit(Event::info(
                "using a fake synchronous standby since there are not enough real standbys available",
            ));
            vec![FAKE_STANDBY_NAME.to_string()]
        } else {
            Vec::new()
        };
        let master = self.cd.dbs.get_mut(&master.uid).expect("master");
        master.spec.synchronous_standbys = spec.into_iter().collect();
        master.spec.external_synchronous_standbys = external;
        master.status.synchronous_standbys = status.into_iter().collect();
    }

    fn copy_cluster_spec_into_dbs(&mut self) {
        // While the primary is failed and not replaced, the standbys get no spec changes: a
        // new generation would restart the convergence timers that decide who may replace
        // it. The failed primary itself does, but for its synchronous settings, which say
        // who may replace it: the change may be the operator's fix for what keeps its
        // postgres from starting.
        let failed_master = self.failed_master.clone();
        let merged_parameters = self.merged_parameters.clone();
        for db in self.cd.dbs.values_mut() {
            if failed_master.as_ref().is_some_and(|uid| *uid != db.uid) {
                continue;
            }
            db.spec.max_standbys = self.spec.max_standbys;
            db.spec.additional_wal_senders = self.spec.additional_wal_senders;
            // This step may have merged initdb's parameters into the cluster spec.
            db.spec.pg_parameters = merged_parameters
                .clone()
                .unwrap_or_else(|| self.spec.pg_parameters.clone());
            db.spec.pg_hba = self.spec.pg_hba.clone();
            db.spec.use_pgrewind = self.spec.use_pgrewind;
            db.spec.automatic_pg_restart = self.spec.automatic_pg_restart;
            db.spec.default_su_repl_access_mode = self.spec.default_su_repl_access_mode;
            db.spec.additional_replication_slots = if db.spec.role == DbRole::Master {
                self.spec.additional_master_replication_slots.clone()
            } else {
                Vec::new()
            };
            if failed_master.is_some() {
                continue;
            }
            db.spec.synchronous_replication = self.spec.synchronous_replication;
            if !self.spec.synchronous_replication {
                db.spec.synchronous_standbys.clear();
                db.spec.external_synchronous_standbys.clear();
                db.status.synchronous_standbys.clear();
            }
        }
    }

    fn bump_changed_generations(&mut self, before: &ClusterData) {
        for db in self.cd.dbs.values_mut() {
            if let Some(old) = before.dbs.get(&db.uid) {
                if old.spec != db.spec {
                    db.generation = old.generation.next();
                }
            }
        }
    }

    fn track_convergence(&mut self) {
        let now = self.now;
        self.memory
            .convergence
            .retain(|uid, _| self.cd.dbs.contains_key(uid));
        for db in self.cd.dbs.values() {
            let entry = self.memory.convergence.get(&db.uid);
            if entry.is_none_or(|(generation, _)| *generation != db.generation) {
                self.memory
                    .convergence
                    .insert(db.uid.clone(), (db.generation, now));
            }
        }
    }
}

/// Whether `db`, on an earlier timeline than `master`, wrote past the point where the
/// master's history left that timeline: it holds WAL the master never had and cannot follow
/// it (PostgreSQL: "new timeline forked off current database system timeline before current
/// recovery point").
fn diverged(db: &Db, master: &Db) -> bool {
    db.status.timeline_id < master.status.timeline_id
        && master
            .status
            .timelines_history
            .iter()
            .find(|switch| switch.timeline_id == db.status.timeline_id)
            .is_some_and(|switch| db.status.x_log_pos > switch.switch_point)
}

const NEW_STANDBY: &str = "added new standby db";
const MISSING_WAL: &str =
    "removing db that won't be able to sync due to missing wals on current master";

/// How many sleep intervals a standby's position may stay still before a missing WAL
/// segment on the primary is taken as the reason.
const STUCK_STANDBY_SLEEP_INTERVALS: u32 = 10;

/// The WAL segment holding `lsn`, named as in `pg_wal` without its timeline part (16 MiB
/// segments).
fn wal_segment(lsn: Lsn) -> String {
    format!("{:08X}{:08X}", lsn.0 >> 32, (lsn.0 & 0xffff_ffff) >> 24)
}

/// What limits the choice of a new primary.
#[derive(Debug, Clone, Default)]
pub struct ElectionRules {
    /// Async mode: the most bytes a candidate may be behind the failed primary's last report.
    pub max_lag: u32,
    /// Dbs that did not apply their spec within convergenceTimeout.
    pub stalled: BTreeSet<DbUid>,
    /// Sync mode: the only dbs that may be chosen (known in sync with the failed primary).
    pub synchronous: Option<BTreeSet<DbUid>>,
}

/// The rules a replacement of `master` must follow: within `max_lag` of its last position
/// in asynchronous mode; in synchronous mode, among the standbys it knew in sync (and still
/// listed), which hold every acknowledged commit.
pub fn election_rules(master: &Db, max_lag: u32) -> ElectionRules {
    let synchronous = master.spec.synchronous_replication.then(|| {
        let spec: BTreeSet<&DbUid> = master.spec.synchronous_standbys.iter().collect();
        master
            .status
            .synchronous_standbys
            .iter()
            .filter(|uid| spec.contains(uid))
            .cloned()
            .collect::<BTreeSet<DbUid>>()
    });
    ElectionRules {
        max_lag,
        stalled: BTreeSet::new(),
        synchronous,
    }
}

/// A failover decision: the db to promote, why, and why every other standby was not chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub best: Option<DbUid>,
    /// Every db that may be promoted, best first.
    pub eligible: Vec<DbUid>,
    pub why: String,
    pub rejected: Vec<Rejection>,
}

/// The standby to promote in place of `failed`.
///
/// Eligible: a standby whose db is healthy and has applied a spec, whose keeper may be
/// master, on the failed primary's timeline, and either within `max_lag` bytes of its last
/// reported position (async) or known to have been synchronous (sync). Among them the highest
/// position wins (the least data lost: never a less advanced one), then the higher keeper
/// priority, then the lowest db uid so the choice is stable.
pub fn choose_new_master(cd: &ClusterData, failed: &Db, rules: &ElectionRules) -> Choice {
    let mut eligible: Vec<&Db> = Vec::new();
    let mut rejected = Vec::new();
    let priority = |db: &Db| {
        cd.keepers
            .get(&db.spec.keeper_uid)
            .map_or(0, |k| k.status.priority)
    };
    for db in cd.dbs.values().filter(|db| db.uid != failed.uid) {
        let keeper = cd.keepers.get(&db.spec.keeper_uid);
        let lag = failed
            .status
            .x_log_pos
            .0
            .saturating_sub(db.status.x_log_pos.0);
        let reason = if !keeper.is_some_and(|k| k.status.can_be_master) {
            Some("it cannot be master (--can-be-master=false)")
        } else if !db.status.healthy {
            Some("its db is not healthy")
        } else if rules.stalled.contains(&db.uid) {
            Some("its db has not converged within convergenceTimeout")
        } else if db.status.current_generation == Generation::NONE {
            Some("its db has not been initialized yet")
        } else if db.status.timeline_id != failed.status.timeline_id {
            Some("its db is on another timeline than the master")
        } else if let Some(sync) = &rules.synchronous {
            (!sync.contains(&db.uid))
                .then_some("it was not a known synchronous standby of the failed master")
        } else if lag > u64::from(rules.max_lag) {
            Some("it is behind the maximum xlog position (maxStandbyLag)")
        } else {
            None
        };
        match reason {
            Some(reason) => rejected.push(Rejection {
                keeper: db.spec.keeper_uid.clone(),
                reason,
            }),
            None => eligible.push(db),
        }
    }
    eligible.sort_by(|a, b| {
        b.status
            .x_log_pos
            .cmp(&a.status.x_log_pos)
            .then_with(|| priority(b).cmp(&priority(a)))
            .then_with(|| a.uid.cmp(&b.uid))
    });
    let Some(best) = eligible.first() else {
        return Choice {
            best: None,
            eligible: Vec::new(),
            why: String::new(),
            rejected,
        };
    };
    for other in &eligible[1..] {
        let reason = if other.status.x_log_pos < best.status.x_log_pos {
            "it is less advanced than the chosen standby"
        } else if priority(other) < priority(best) {
            "it has a lower priority than the equally advanced chosen standby"
        } else {
            "an equally advanced standby of equal priority has a lower db uid"
        };
        rejected.push(Rejection {
            keeper: other.spec.keeper_uid.clone(),
            reason,
        });
    }
    let mode = if rules.synchronous.is_some() {
        "known synchronous"
    } else {
        "eligible"
    };
    Choice {
        best: Some(best.uid.clone()),
        eligible: eligible.iter().map(|db| db.uid.clone()).collect(),
        why: format!(
            "highest xlog position {} (priority {}) among {} {mode} standbys",
            best.status.x_log_pos,
            priority(best),
            eligible.len()
        ),
        rejected,
    }
}

/// What a planned switchover would do now: from the serving primary (its db uid first) to
/// the standby [`switchover_candidate`] picks. The error says why it cannot happen.
pub fn switchover_plan(
    cd: &ClusterData,
    spec: &ValidSpec,
    to: Option<&KeeperUid>,
    stalled: BTreeSet<DbUid>,
) -> Result<(DbUid, DbUid), String> {
    let master = cd
        .master_db()
        .filter(|m| {
            m.spec.role == DbRole::Master
                && m.status.healthy
                && cd.proxy.spec.master_db_uid.as_ref() == Some(&m.uid)
        })
        .ok_or("the primary is not serving now (a failover or initialization is in progress)")?;
    let rules = ElectionRules {
        stalled,
        ..election_rules(master, spec.max_standby_lag)
    };
    let target = switchover_candidate(cd, master, to, &rules)?;
    Ok((master.uid.clone(), target))
}

/// The standby a planned switchover from `master` hands over to: `to` if it names a keeper
/// whose db may be promoted under `rules`, otherwise the best such standby. The error says
/// why there is none, in words for the operator.
pub fn switchover_candidate(
    cd: &ClusterData,
    master: &Db,
    to: Option<&KeeperUid>,
    rules: &ElectionRules,
) -> Result<DbUid, String> {
    let choice = choose_new_master(cd, master, rules);
    let Some(keeper) = to else {
        return choice.best.ok_or_else(|| {
            let reasons: Vec<String> = choice
                .rejected
                .iter()
                .map(|r| format!("keeper {}: {}", r.keeper, r.reason))
                .collect();
            if reasons.is_empty() {
                "no standby to switch over to".to_string()
            } else {
                format!("no standby may become primary ({})", reasons.join("; "))
            }
        });
    };
    if master.spec.keeper_uid == *keeper {
        return Err(format!("keeper {keeper} already runs the primary"));
    }
    let Some(db) = cd.db_of_keeper(keeper) else {
        return Err(format!("keeper {keeper} has no db in the cluster"));
    };
    if choice.eligible.contains(&db.uid) {
        return Ok(db.uid.clone());
    }
    let reason = choice
        .rejected
        .iter()
        .find(|r| r.keeper == *keeper)
        .map_or("it is not a standby of the primary", |r| r.reason);
    Err(format!("keeper {keeper} cannot become primary: {reason}"))
}
