//! A small world for scenario tests: simulated keepers and proxies that publish infos, a
//! clock the test moves by hand, and the sentinel's memory carried from step to step.
//!
//! Each test crate uses a different part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;
use stolon_cluster::{
    ClusterData, ClusterPhase, ClusterSpec, ClusterUid, Db, DbRole, DbSpec, DbStatus, DbUid,
    FollowConfig, Generation, InitMode, Keeper, KeeperInfo, KeeperStatus, KeeperUid, Lsn, PgState,
    ProxyInfo, ProxyUid, ShutdownCheckpoint, TimelineId, TimelineSwitch, ValidSpec,
};
use stolon_engine::proxy::fence::info_ttl;
use stolon_engine::sentinel::{self, Memory, Observations, StepOutput};
use stolon_engine::Event;

pub const CLUSTER: &str = "c1";

/// The spec every scenario starts from: short intervals keep the time arithmetic readable.
/// sleepInterval 1s, failInterval 5s, proxyTimeout 3s, convergenceTimeout 10s,
/// initTimeout 10s, maxStandbyLag 1000 bytes.
pub const BASE_SPEC: &str = r#"{
    "initMode": "new",
    "sleepInterval": "1s",
    "failInterval": "5s",
    "proxyCheckInterval": "1s",
    "proxyTimeout": "3s",
    "convergenceTimeout": "10s",
    "initTimeout": "10s",
    "maxStandbyLag": 1000
}"#;

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// [`BASE_SPEC`] with the fields of `overrides` (a JSON object) replaced.
pub fn spec(overrides: &str) -> ClusterSpec {
    let mut base: serde_json::Value = serde_json::from_str(BASE_SPEC).unwrap();
    let extra: serde_json::Value = serde_json::from_str(overrides).unwrap();
    for (k, v) in extra.as_object().expect("overrides must be a JSON object") {
        base[k] = v.clone();
    }
    ClusterSpec::from_json(&base.to_string()).unwrap()
}

pub fn valid(overrides: &str) -> ValidSpec {
    spec(overrides).validate().unwrap()
}

/// A keeper process as the sentinel sees it through its published info.
#[derive(Debug, Clone)]
pub struct KeeperSim {
    pub uid: KeeperUid,
    pub index: usize,
    pub can_be_master: bool,
    pub can_be_synchronous_replica: bool,
    pub priority: i32,
    pub boot_uuid: String,
    /// Publishes a new info (a new info_uid) before every step.
    pub alive: bool,
    /// Its info is in the store: a keeper that stopped publishing leaves its last info
    /// there until the lease expires.
    pub present: bool,
    pub info_uid: String,
    pub pg: Option<PgState>,
    /// The WAL position the next [`World::report`] publishes.
    pub xlog: u64,
    /// What the next report of a primary gives as its standbys in sync now: exactly these
    /// when set; otherwise every db of its `spec.synchronous_standbys` whose keeper is alive,
    /// as a real primary's `pg_stat_replication` would.
    pub in_sync: Option<Vec<DbUid>>,
    /// The timeline the next report gives, and, for a primary, the history that led to it.
    pub timeline: u32,
    pub history: Vec<TimelineSwitch>,
    /// Its reports reach the sentinel one publish late (after those of the others): each
    /// publish carries the report of the publish before.
    pub lag: bool,
    /// What its info in the store holds: the report its last publish carried, and the one
    /// before (what a lagging delivery shows).
    on_time: Option<PgState>,
    late: Option<PgState>,
    /// The step at which it last published.
    pub published_step: Option<u64>,
}

/// A proxy as the sentinel sees it through its published info.
#[derive(Debug, Clone)]
pub struct ProxySim {
    pub uid: ProxyUid,
    pub alive: bool,
    pub present: bool,
    /// Publishes the proxy generation it read last; when false it keeps its old one.
    pub acks: bool,
    pub info_uid: String,
    pub generation: Generation,
    pub timeout: Duration,
    /// When it last published a new info.
    pub published_at: Duration,
}

#[derive(Debug, Clone)]
pub struct World {
    pub now: Duration,
    pub cd: ClusterData,
    pub spec: ValidSpec,
    pub memory: Memory,
    pub keepers: BTreeMap<KeeperUid, KeeperSim>,
    pub proxies: BTreeMap<ProxyUid, ProxySim>,
    /// When set every step gets this seed; otherwise each step gets a new one, like a
    /// daemon drawing a random seed per step.
    pub fixed_seed: Option<u64>,
    pub steps: u64,
    publishes: u64,
    /// Every event of every step, in order.
    pub log: Vec<Event>,
}

impl World {
    pub fn new(keepers: &[&str]) -> World {
        World::with_spec("{}", keepers)
    }

    pub fn with_spec(overrides: &str, keepers: &[&str]) -> World {
        let cluster_spec = spec(overrides);
        let mut w = World {
            now: secs(100),
            cd: ClusterData::new(ClusterUid::new(CLUSTER), cluster_spec.clone()),
            spec: cluster_spec.validate().unwrap(),
            memory: Memory::default(),
            keepers: BTreeMap::new(),
            proxies: BTreeMap::new(),
            fixed_seed: None,
            steps: 0,
            publishes: 0,
            log: Vec::new(),
        };
        for k in keepers {
            w.add_keeper(k);
        }
        w
    }

    pub fn add_keeper(&mut self, k: &str) {
        let index = self.keepers.len();
        self.keepers.insert(
            KeeperUid::new(k),
            KeeperSim {
                uid: KeeperUid::new(k),
                index,
                can_be_master: true,
                can_be_synchronous_replica: true,
                priority: 0,
                boot_uuid: format!("boot-{k}"),
                alive: true,
                present: true,
                info_uid: String::new(),
                pg: None,
                xlog: 0,
                in_sync: None,
                timeline: 1,
                history: Vec::new(),
                lag: false,
                on_time: None,
                late: None,
                published_step: None,
            },
        );
    }

    pub fn add_proxy(&mut self, p: &str) {
        let timeout = self.spec.proxy_timeout;
        self.proxies.insert(
            ProxyUid::new(p),
            ProxySim {
                uid: ProxyUid::new(p),
                alive: true,
                present: true,
                acks: true,
                info_uid: String::new(),
                generation: Generation::NONE,
                timeout,
                published_at: Duration::ZERO,
            },
        );
    }

    pub fn cannot_be_master(mut self, k: &str) -> World {
        self.keeper(k).can_be_master = false;
        self
    }

    pub fn keeper(&mut self, k: &str) -> &mut KeeperSim {
        self.keepers
            .get_mut(&KeeperUid::new(k))
            .unwrap_or_else(|| panic!("no keeper {k}"))
    }

    pub fn proxy(&mut self, p: &str) -> &mut ProxySim {
        self.proxies
            .get_mut(&ProxyUid::new(p))
            .unwrap_or_else(|| panic!("no proxy {p}"))
    }

    /// Live components publish a new info, reading the cluster data of before this step.
    pub fn publish(&mut self) {
        let proxy_generation = self.cd.proxy.generation;
        let now = self.now;
        for k in self.keepers.values_mut() {
            if k.alive {
                self.publishes += 1;
                k.present = true;
                k.info_uid = format!("{}-{}", k.uid, self.publishes);
                k.late = std::mem::replace(&mut k.on_time, k.pg.clone());
                k.published_step = Some(self.steps + 1);
            }
        }
        for p in self.proxies.values_mut() {
            if p.alive {
                self.publishes += 1;
                p.present = true;
                p.info_uid = format!("{}-{}", p.uid, self.publishes);
                p.published_at = now;
                if p.acks {
                    p.generation = proxy_generation;
                }
            }
        }
    }

    /// The infos in the store right now.
    pub fn observations(&self) -> (Vec<KeeperInfo>, Vec<ProxyInfo>) {
        let keepers = self
            .keepers
            .values()
            .filter(|k| k.present && !k.info_uid.is_empty())
            .map(|k| KeeperInfo {
                info_uid: k.info_uid.clone(),
                uid: k.uid.clone(),
                cluster_uid: ClusterUid::new(CLUSTER),
                boot_uuid: k.boot_uuid.clone(),
                can_be_master: k.can_be_master,
                can_be_synchronous_replica: k.can_be_synchronous_replica,
                priority: k.priority,
                postgres_state: if k.lag {
                    k.late.clone()
                } else {
                    k.on_time.clone()
                },
            })
            .collect();
        // A proxy's info expires from the store by itself, as it does in etcd.
        let proxies = self
            .proxies
            .values()
            .filter(|p| p.present && !p.info_uid.is_empty())
            .filter(|p| self.now < p.published_at + info_ttl(p.timeout))
            .map(|p| ProxyInfo {
                info_uid: p.info_uid.clone(),
                uid: p.uid.clone(),
                generation: p.generation,
                proxy_timeout: p.timeout,
            })
            .collect();
        (keepers, proxies)
    }

    pub fn next_seed(&mut self) -> u64 {
        self.steps += 1;
        self.fixed_seed
            .unwrap_or_else(|| self.steps.wrapping_mul(0x2545_F491_4F6C_DD1D))
    }

    /// Publishes, runs one sentinel step at the current time and keeps its output.
    pub fn step(&mut self) -> StepOutput {
        self.publish();
        self.step_unpublished()
    }

    /// One sentinel step on the infos already in the store, with nothing published first: the
    /// sentinel waking up by itself. Checks that a `wake_at` it returns lies in the future.
    pub fn step_unpublished(&mut self) -> StepOutput {
        let (keepers, proxies) = self.observations();
        let seed = self.next_seed();
        let out = sentinel::step(
            self.now,
            &self.cd,
            &self.spec,
            Observations {
                keepers: &keepers,
                proxies: &proxies,
            },
            &mut self.memory,
            seed,
        );
        if let Some(at) = out.wake_at {
            assert!(
                at > self.now,
                "wake_at {at:?} is not after now {:?}",
                self.now
            );
        }
        self.cd = out.data.clone();
        self.log.extend(out.events.iter().cloned());
        out
    }

    pub fn step_after(&mut self, d: Duration) -> StepOutput {
        self.now += d;
        self.step()
    }

    /// The sentinel's clock jumps `by` ahead, the store's does not: the infos in the store
    /// expire when they would have without the jump.
    pub fn jump_sentinel_clock(&mut self, by: Duration) {
        self.now += by;
        for p in self.proxies.values_mut() {
            p.published_at += by;
        }
    }

    pub fn step_at(&mut self, t: Duration) -> StepOutput {
        assert!(t >= self.now, "time goes forward");
        self.now = t;
        self.step()
    }

    /// The keeper publishes its db as converged: at the db's generation, healthy, in
    /// recovery exactly when its role is standby, at its current `xlog`.
    pub fn report(&mut self, k: &str) {
        self.report_with(k, |_| {});
    }

    pub fn report_with(&mut self, k: &str, adjust: impl FnOnce(&mut PgState)) {
        let db = self.cd.db_of_keeper(&KeeperUid::new(k)).cloned();
        let Some(db) = db else { return };
        let auto_sync: Vec<DbUid> = if db.spec.role == DbRole::Master {
            db.spec
                .synchronous_standbys
                .iter()
                .filter(|uid| {
                    self.cd.dbs.get(*uid).is_some_and(|s| {
                        self.keepers
                            .get(&s.spec.keeper_uid)
                            .is_some_and(|sim| sim.alive)
                    })
                })
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let sim = self.keeper(k);
        let synchronous_standbys = sim.in_sync.clone().unwrap_or(auto_sync);
        let mut state = PgState {
            db_uid: db.uid.clone(),
            generation: db.generation,
            healthy: true,
            down: false,
            in_recovery: db.spec.role == DbRole::Standby,
            system_id: "7000000000000000001".into(),
            timeline_id: TimelineId(sim.timeline),
            x_log_pos: Lsn(sim.xlog),
            listen_address: format!("10.0.0.{}", sim.index + 1),
            port: 5432,
            synchronous_standbys,
            older_wal_file: String::new(),
            timelines_history: if db.spec.role == DbRole::Master {
                sim.history.clone()
            } else {
                Vec::new()
            },
            init_pg_parameters: Default::default(),
            shutdown_checkpoint: None,
            data_disk: None,
            remote: None,
        };
        // A db halted for a switchover is stopped cleanly where its WAL ends.
        if db.spec.halt && db.spec.role == DbRole::Master {
            state.healthy = false;
            state.down = true;
            state.shutdown_checkpoint = Some(ShutdownCheckpoint {
                timeline_id: TimelineId(sim.timeline),
                location: Lsn(sim.xlog),
            });
        }
        adjust(&mut state);
        sim.pg = Some(state);
    }

    /// Every live keeper reports its db ([`World::report`]).
    pub fn report_live(&mut self) {
        let live: Vec<String> = self
            .keepers
            .values()
            .filter(|k| k.alive)
            .map(|k| k.uid.to_string())
            .collect();
        for k in &live {
            self.report(k);
        }
    }

    /// Every live keeper reports its db, every step one sleep interval apart, until the
    /// cluster data stops changing.
    pub fn settle(&mut self) {
        for _ in 0..20 {
            self.report_live();
            let before = self.cd.clone();
            let sleep = self.spec.sleep_interval;
            self.step_after(sleep);
            if self.cd == before {
                return;
            }
        }
        panic!("cluster did not settle: {:#?}", self.cd);
    }

    /// A settled cluster in phase Normal whose primary serves and whose proxies route to it.
    pub fn normal(keepers: &[&str], proxies: &[&str]) -> World {
        World::normal_with("{}", keepers, proxies)
    }

    pub fn normal_with(overrides: &str, keepers: &[&str], proxies: &[&str]) -> World {
        World::normal_setup(overrides, keepers, proxies, |_| {})
    }

    /// [`World::normal_with`], with `setup` applied to the keepers before the first step.
    pub fn normal_setup(
        overrides: &str,
        keepers: &[&str],
        proxies: &[&str],
        setup: impl FnOnce(&mut World),
    ) -> World {
        let mut w = World::with_spec(overrides, keepers);
        for p in proxies {
            w.add_proxy(p);
        }
        setup(&mut w);
        w.step();
        w.settle();
        assert_eq!(w.cd.cluster.status.phase, ClusterPhase::Normal);
        let master = w.master_uid();
        assert_eq!(w.cd.proxy.spec.master_db_uid.as_ref(), Some(&master));
        w
    }

    pub fn master_uid(&self) -> DbUid {
        self.cd.cluster.status.master.clone().expect("a master")
    }

    pub fn master(&self) -> &Db {
        self.cd.master_db().expect("a master db")
    }

    pub fn db_of(&self, k: &str) -> &Db {
        self.cd
            .db_of_keeper(&KeeperUid::new(k))
            .unwrap_or_else(|| panic!("keeper {k} has no db"))
    }

    pub fn keeper_of(&self, db: &DbUid) -> String {
        self.cd.dbs[db].spec.keeper_uid.to_string()
    }

    /// Sets each keeper's WAL position and lets the sentinel read them.
    pub fn set_xlogs(&mut self, xlogs: &[(&str, u64)]) {
        for (k, x) in xlogs {
            self.keeper(k).xlog = *x;
        }
        self.settle();
    }

    /// The primary's keeper stops publishing; steps every sleep interval until the sentinel
    /// elects a new master (or gives up after a minute), returning the elected db.
    pub fn fail_master(&mut self) -> Option<DbUid> {
        let old = self.master_uid();
        let k = self.keeper_of(&old);
        self.keeper(&k).alive = false;
        let sleep = self.spec.sleep_interval;
        for _ in 0..60 {
            let out = self.step_after(sleep);
            if has(&out.events, "electing db as the new master") {
                return Some(self.master_uid());
            }
        }
        None
    }

    /// `stolonctl failkeeper k`: the flag is written into the cluster data the sentinel
    /// reads next.
    pub fn fail_keeper(&mut self, k: &str) {
        self.cd
            .keepers
            .get_mut(&KeeperUid::new(k))
            .unwrap_or_else(|| panic!("no keeper {k} in the cluster data"))
            .status
            .force_fail = true;
    }

    /// The db of each keeper, in the order given.
    pub fn dbs_of(&self, ks: &[&str]) -> Vec<DbUid> {
        ks.iter().map(|k| self.db_of(k).uid.clone()).collect()
    }

    /// The primary's keeper reports exactly the dbs of these keepers in sync from now on,
    /// starting with a report now.
    pub fn report_in_sync(&mut self, ks: &[&str]) {
        let uids = self.dbs_of(ks);
        let master = self.master_uid();
        let k = self.keeper_of(&master);
        self.keeper(&k).in_sync = Some(uids);
        self.report(&k);
    }

    /// The primary's `spec.synchronous_standbys`, as keepers, sorted.
    pub fn sync_spec(&self) -> Vec<String> {
        self.keepers_of(&self.master().spec.synchronous_standbys)
    }

    /// The primary's `status.synchronous_standbys`, as keepers, sorted.
    pub fn sync_status(&self) -> Vec<String> {
        self.keepers_of(&self.master().status.synchronous_standbys)
    }

    pub fn keepers_of(&self, dbs: &[DbUid]) -> Vec<String> {
        let mut ks: Vec<String> = dbs.iter().map(|db| self.keeper_of(db)).collect();
        ks.sort();
        ks
    }
}

pub fn messages(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(|e| e.message()).collect()
}

pub fn has(events: &[Event], message: &str) -> bool {
    events.iter().any(|e| e.message() == message)
}

pub fn find<'a>(events: &'a [Event], message: &str) -> &'a Event {
    events
        .iter()
        .find(|e| e.message() == message)
        .unwrap_or_else(|| panic!("no event {message:?} in {:#?}", messages(events)))
}

/// The values of every field `key` of an event.
pub fn fields<'a>(event: &'a Event, key: &str) -> Vec<&'a str> {
    event
        .fields
        .iter()
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Asserts that `wanted` appear in `events` in this order (other events may come between).
pub fn assert_in_order(events: &[Event], wanted: &[&str]) {
    let mut rest = events.iter();
    for w in wanted {
        assert!(
            rest.any(|e| e.message() == *w),
            "event {w:?} missing or out of order in {:#?}",
            messages(events)
        );
    }
}

/// The dbs of the master kind: primaries, and standby leaders (which follow the remote).
pub fn masters(cd: &ClusterData) -> Vec<&DbUid> {
    cd.dbs
        .values()
        .filter(|db| db.spec.role == DbRole::Master || db.spec.follows_remote())
        .map(|db| &db.uid)
        .collect()
}

/// Cluster data written by hand, for the pure functions that only read it.
pub struct CdBuilder {
    cd: ClusterData,
}

impl Default for CdBuilder {
    fn default() -> Self {
        CdBuilder::new()
    }
}

impl CdBuilder {
    /// A cluster in phase Normal with no keepers and no dbs.
    pub fn new() -> CdBuilder {
        let mut cd = ClusterData::new(ClusterUid::new(CLUSTER), spec("{}"));
        cd.cluster.status.phase = ClusterPhase::Normal;
        CdBuilder { cd }
    }

    pub fn keeper(mut self, k: &str, can_be_master: bool) -> CdBuilder {
        self.cd.keepers.insert(
            KeeperUid::new(k),
            Keeper {
                uid: KeeperUid::new(k),
                status: KeeperStatus {
                    healthy: true,
                    boot_uuid: format!("boot-{k}"),
                    can_be_master,
                    can_be_synchronous_replica: true,
                    priority: 0,
                    force_fail: false,
                },
            },
        );
        self
    }

    pub fn adjust_keeper(mut self, k: &str, adjust: impl FnOnce(&mut KeeperStatus)) -> CdBuilder {
        adjust(
            &mut self
                .cd
                .keepers
                .get_mut(&KeeperUid::new(k))
                .expect("keeper added first")
                .status,
        );
        self
    }

    pub fn priority(self, k: &str, priority: i32) -> CdBuilder {
        self.adjust_keeper(k, |s| s.priority = priority)
    }

    /// Synchronous replication on every db, and on `master` the standbys it must wait for
    /// (`spec`) and those known in sync (`status`).
    pub fn sync(mut self, master: &str, spec: &[&str], status: &[&str]) -> CdBuilder {
        for db in self.cd.dbs.values_mut() {
            db.spec.synchronous_replication = true;
        }
        let uids = |v: &[&str]| v.iter().map(|u| DbUid::new(*u)).collect::<Vec<_>>();
        let (spec, status) = (uids(spec), uids(status));
        self.adjust_db(master, |db| {
            db.spec.synchronous_standbys = spec;
            db.status.synchronous_standbys = status;
        })
    }

    /// A converged, healthy db on timeline 1 at position `xlog`, listening on a known
    /// address; `adjust` changes what the case is about.
    pub fn db(mut self, uid: &str, k: &str, role: DbRole, xlog: u64) -> CdBuilder {
        self.cd.dbs.insert(
            DbUid::new(uid),
            Db {
                uid: DbUid::new(uid),
                generation: Generation(3),
                spec: DbSpec {
                    keeper_uid: KeeperUid::new(k),
                    role,
                    init_mode: InitMode::None,
                    follow_config: None,
                    followers: Vec::new(),
                    max_standbys: 20,
                    additional_wal_senders: 5,
                    pg_parameters: BTreeMap::new(),
                    pg_hba: None,
                    synchronous_replication: false,
                    synchronous_standbys: Vec::new(),
                    external_synchronous_standbys: Vec::new(),
                    use_pgrewind: false,
                    halt: false,
                    additional_replication_slots: Vec::new(),
                    automatic_pg_restart: false,
                    new_config: None,
                    pitr_config: None,
                    default_su_repl_access_mode: Default::default(),
                    include_previous_config: false,
                },
                status: DbStatus {
                    healthy: true,
                    current_generation: Generation(3),
                    listen_address: format!("{k}.example"),
                    port: 5432,
                    in_recovery: role == DbRole::Standby,
                    system_id: "7000000000000000001".into(),
                    timeline_id: TimelineId(1),
                    x_log_pos: Lsn(xlog),
                    synchronous_standbys: Vec::new(),
                    timelines_history: Vec::new(),
                },
            },
        );
        self
    }

    pub fn adjust_db(mut self, uid: &str, adjust: impl FnOnce(&mut Db)) -> CdBuilder {
        adjust(
            self.cd
                .dbs
                .get_mut(&DbUid::new(uid))
                .expect("db added first"),
        );
        self
    }

    pub fn follow(self, standby: &str, master: &str) -> CdBuilder {
        let master_uid = DbUid::new(master);
        let standby_uid = DbUid::new(standby);
        self.adjust_db(standby, |db| {
            db.spec.follow_config = Some(FollowConfig::db(&master_uid))
        })
        .adjust_db(master, |db| db.spec.followers.push(standby_uid))
    }

    pub fn master(mut self, uid: &str) -> CdBuilder {
        self.cd.cluster.status.master = Some(DbUid::new(uid));
        self
    }

    pub fn proxy(mut self, master: Option<&str>, enabled: &[&str]) -> CdBuilder {
        self.cd.proxy.generation = Generation(7);
        self.cd.proxy.spec.master_db_uid = master.map(DbUid::new);
        self.cd.proxy.spec.enabled_proxies = enabled.iter().map(|p| ProxyUid::new(*p)).collect();
        self
    }

    pub fn build(self) -> ClusterData {
        self.cd
    }
}
