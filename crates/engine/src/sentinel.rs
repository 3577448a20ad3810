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
    ClusterData, ClusterPhase, Db, DbRole, DbSpec, DbStatus, DbUid, FollowConfig, Generation,
    InitMode, Keeper, KeeperInfo, KeeperStatus, KeeperUid, ProxyInfo, ProxyUid, ValidSpec,
};

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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutput {
    pub data: ClusterData,
    pub events: Vec<Event>,
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
    };
    let infos: BTreeMap<&KeeperUid, &KeeperInfo> = obs
        .keepers
        .iter()
        .filter(|i| i.cluster_uid == cd.cluster.uid)
        .map(|i| (&i.uid, i))
        .collect();
    planner.memory.db_uids_used.extend(cd.dbs.keys().cloned());
    planner.observe_keepers(&infos);
    planner.observe_dbs(&infos);
    planner.observe_proxies(obs.proxies);
    match planner.cd.cluster.status.phase {
        ClusterPhase::Initializing => planner.initialize(),
        ClusterPhase::Normal => planner.run_normal(),
    }
    planner.copy_cluster_spec_into_dbs();
    planner.bump_changed_generations(cd);
    planner.track_convergence();
    StepOutput {
        data: planner.cd,
        events: planner.events,
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

    fn observe_keepers(&mut self, infos: &BTreeMap<&KeeperUid, &KeeperInfo>) {
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
            if !self.cd.keepers.contains_key(&info.uid) {
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
            let fresh = self.info_is_fresh(&uid, infos);
            let keeper = self.cd.keepers.get_mut(&uid).expect("listed above");
            keeper.status.healthy = healthy;
            if let (true, Some(info)) = (fresh, infos.get(&uid)) {
                keeper.status.boot_uuid = info.boot_uuid.clone();
                keeper.status.can_be_master = info.can_be_master;
            }
        }
    }

    /// An info is fresh when it is in the store and changed within two sleep intervals: a
    /// live keeper publishes once per interval.
    fn info_is_fresh(&self, uid: &KeeperUid, infos: &BTreeMap<&KeeperUid, &KeeperInfo>) -> bool {
        infos.contains_key(uid)
            && self.memory.keepers.get(uid).is_some_and(|hb| {
                self.now.saturating_sub(hb.changed_at) <= 2 * self.spec.sleep_interval
            })
    }

    fn observe_dbs(&mut self, infos: &BTreeMap<&KeeperUid, &KeeperInfo>) {
        let uids: Vec<DbUid> = self.cd.dbs.keys().cloned().collect();
        for uid in uids {
            let keeper_uid = self.cd.dbs[&uid].spec.keeper_uid.clone();
            let info = infos
                .get(&keeper_uid)
                .filter(|_| self.info_is_fresh(&keeper_uid, infos));
            let problem = match info.map(|i| &i.postgres_state) {
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
                        status.in_recovery = state.in_recovery;
                        status.system_id = state.system_id.clone();
                        status.timeline_id = state.timeline_id;
                        status.x_log_pos = state.x_log_pos;
                        None
                    } else {
                        Some("db is not healthy")
                    }
                }
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
            let db_ok = error_since
                .is_none_or(|since| self.now.saturating_sub(since) <= self.spec.fail_interval);
            self.cd.dbs.get_mut(&uid).expect("listed").status.healthy = db_ok && keeper_healthy;
        }
        self.memory
            .db_errors
            .retain(|uid, _| self.cd.dbs.contains_key(uid));
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

    /// Proxies that may still be routing: silent for less than their proxyTimeout (plus a
    /// sleep interval of margin for our own polling). A proxy silent for longer cannot have
    /// read the store successfully, so it has closed its connections by itself.
    fn live_proxies<'p>(&self, proxies: &'p [ProxyInfo]) -> Vec<&'p ProxyInfo> {
        proxies
            .iter()
            .filter(|p| {
                self.memory
                    .proxies
                    .get(&p.uid)
                    .is_some_and(|(hb, timeout)| {
                        self.now.saturating_sub(hb.changed_at)
                            <= *timeout + self.spec.sleep_interval
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
            let master = self.cd.dbs.get_mut(&master_uid).expect("present");
            master.spec.init_mode = InitMode::None;
            self.cd.cluster.status.phase = ClusterPhase::Normal;
            self.emit(Event::info("db initialized").with("db", &master_uid));
        } else if self.convergence_expired(&db, self.spec.init_timeout) {
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

    fn choose_initial_master(&mut self) {
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
        let db = self.new_db(&keeper, DbRole::Master, InitMode::New);
        self.cd.cluster.status.master = Some(db.clone());
        self.emit(
            Event::info("initializing cluster")
                .with("db", db)
                .with("keeper", keeper),
        );
    }

    fn run_normal(&mut self) {
        let Some(master) = self.cd.master_db().cloned() else {
            self.emit(Event::warn(
                "cluster has no master db: nothing can be decided",
            ));
            return;
        };
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
                self.publish_to_proxies(&master, serving);
                if serving {
                    self.manage_standbys(&master);
                }
            }
        }
    }

    fn fail_over(&mut self, failed: &Db) {
        self.emit(
            Event::info("trying to find a standby to replace failed master")
                .with("db", &failed.uid)
                .with("keeper", &failed.spec.keeper_uid),
        );
        let stalled: BTreeSet<DbUid> = self
            .cd
            .dbs
            .values()
            .filter(|db| self.convergence_expired(db, self.spec.convergence_timeout))
            .map(|db| db.uid.clone())
            .collect();
        let (best, rejected) =
            choose_new_master(&self.cd, failed, self.spec.max_standby_lag, &stalled);
        let Some(best) = best else {
            let mut event = Event::warn("no eligible masters: no failover");
            for r in &rejected {
                event = event.with("rejected", format!("{}({})", r.keeper, r.reason));
            }
            self.emit(event);
            return;
        };
        for r in rejected {
            self.emit(
                Event::info("ignoring keeper as new master")
                    .with("keeper", r.keeper)
                    .with("reason", r.reason),
            );
        }
        let keeper = self.cd.dbs[&best].spec.keeper_uid.clone();
        self.emit(
            Event::info("electing db as the new master")
                .with("db", &best)
                .with("keeper", keeper),
        );
        if failed.spec.role == DbRole::Master {
            self.emit(Event::info("removing old master db").with("db", &failed.uid));
        }
        self.cd.dbs.remove(&failed.uid);
        self.cd.cluster.status.master = Some(best);
        self.clear_proxy_target();
    }

    fn clear_proxy_target(&mut self) {
        if self.cd.proxy.spec.master_db_uid.take().is_some() {
            self.cd.proxy.generation = self.cd.proxy.generation.next();
        }
    }

    fn promote_when_proxies_fenced(&mut self, candidate: &Db) {
        self.clear_proxy_target();
        let generation = self.cd.proxy.generation;
        let lagging: Vec<String> = self
            .live_proxies(self.proxies)
            .into_iter()
            .filter(|p| p.generation != generation)
            .map(|p| p.uid.to_string())
            .collect();
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
        let standbys: Vec<Db> = self
            .cd
            .dbs
            .values()
            .filter(|db| db.uid != master.uid)
            .cloned()
            .collect();
        let (mut good, mut converging, mut failed) = (Vec::new(), Vec::new(), Vec::new());
        for db in standbys {
            let keeper_healthy = self
                .cd
                .keepers
                .get(&db.spec.keeper_uid)
                .is_some_and(|k| k.status.healthy);
            if keeper_healthy && Self::converged(&db) && db.status.healthy {
                good.push(db);
            } else if keeper_healthy
                && !Self::converged(&db)
                && db.spec.init_mode == InitMode::Resync
            {
                // A basebackup can take as long as the data is big: no timeout here.
                converging.push(db);
            } else if keeper_healthy
                && !Self::converged(&db)
                && !self.convergence_expired(&db, self.spec.convergence_timeout)
            {
                converging.push(db);
            } else {
                failed.push(db);
            }
        }
        let wanted = usize::from(self.spec.max_standbys_per_sender);
        if good.len() >= wanted {
            for db in failed.iter().chain(converging.iter()) {
                self.emit(Event::info("removing non good standby").with("db", &db.uid));
                self.cd.dbs.remove(&db.uid);
            }
            // Keep the most advanced standbys: they are the best failover candidates.
            good.sort_by(|a, b| {
                b.status
                    .x_log_pos
                    .cmp(&a.status.x_log_pos)
                    .then(a.uid.cmp(&b.uid))
            });
            for db in good.iter().skip(wanted) {
                self.emit(Event::info("removing good standby in excess").with("db", &db.uid));
                self.cd.dbs.remove(&db.uid);
            }
        } else {
            let room = wanted.saturating_sub(good.len() + converging.len());
            let free: Vec<KeeperUid> = self
                .cd
                .keepers
                .values()
                .filter(|k| k.status.healthy && self.cd.db_of_keeper(&k.uid).is_none())
                .map(|k| k.uid.clone())
                .take(room)
                .collect();
            for keeper in free {
                let db = self.new_db(&keeper, DbRole::Standby, InitMode::Resync);
                self.emit(
                    Event::info("added new standby db")
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

    fn copy_cluster_spec_into_dbs(&mut self) {
        for db in self.cd.dbs.values_mut() {
            db.spec.max_standbys = self.spec.max_standbys;
            db.spec.additional_wal_senders = self.spec.additional_wal_senders;
            db.spec.pg_parameters = self.spec.pg_parameters.clone();
            db.spec.pg_hba = self.spec.pg_hba.clone();
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

/// The standby to promote in place of `failed`, and why every other one was passed over.
///
/// Eligible: a standby whose db is healthy, whose keeper may be master, on the failed
/// primary's timeline and within `max_lag` bytes of its last reported position. Among them
/// the highest position wins (the least data lost), then the lowest db uid so the choice is
/// stable. `stalled` dbs did not apply their spec within convergenceTimeout: a keeper stuck
/// there would not promote either.
pub fn choose_new_master(
    cd: &ClusterData,
    failed: &Db,
    max_lag: u32,
    stalled: &BTreeSet<DbUid>,
) -> (Option<DbUid>, Vec<Rejection>) {
    let mut eligible: Vec<&Db> = Vec::new();
    let mut rejected = Vec::new();
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
        } else if stalled.contains(&db.uid) {
            Some("its db has not converged within convergenceTimeout")
        } else if db.status.current_generation == Generation::NONE {
            Some("its db has not been initialized yet")
        } else if db.status.timeline_id != failed.status.timeline_id {
            Some("its db is on another timeline than the master")
        } else if lag > u64::from(max_lag) {
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
    let best = eligible
        .into_iter()
        .max_by(|a, b| {
            a.status
                .x_log_pos
                .cmp(&b.status.x_log_pos)
                .then_with(|| b.uid.cmp(&a.uid))
        })
        .map(|db| db.uid.clone());
    (best, rejected)
}
