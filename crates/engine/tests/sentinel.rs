//! Scenarios for the sentinel's planner: initial primary, failover choice and timing, the
//! proxy handshake, standbys.

mod common;

use common::*;
use stolon_cluster::{
    ClusterPhase, DbRole, DbUid, Generation, InitMode, KeeperUid, ProxyUid, TimelineId,
};
use stolon_engine::keeper;
use stolon_engine::sentinel::{self, choose_new_master, Observations, Rejection};

// ---------------------------------------------------------------------------------------
// 1. Initial primary
// ---------------------------------------------------------------------------------------

struct InitialCase {
    name: &'static str,
    /// (keeper, can_be_master), in registration order.
    keepers: &'static [(&'static str, bool)],
    /// Ok(keeper that gets the master db) or Err(warning event).
    expect: Result<&'static str, &'static str>,
}

fn check_initial(case: &InitialCase) {
    let names: Vec<&str> = case.keepers.iter().map(|(k, _)| *k).collect();
    let mut w = World::new(&names);
    for (k, can) in case.keepers {
        w.keeper(k).can_be_master = *can;
    }
    let out = w.step();
    let cd = &out.data;
    assert_eq!(
        cd.cluster.status.phase,
        ClusterPhase::Initializing,
        "{}",
        case.name
    );
    match case.expect {
        Ok(keeper) => {
            assert_eq!(cd.dbs.len(), 1, "{}: exactly one db", case.name);
            let db = cd.dbs.values().next().unwrap();
            assert_eq!(db.spec.role, DbRole::Master, "{}", case.name);
            assert_eq!(db.spec.init_mode, InitMode::New, "{}", case.name);
            assert_eq!(db.spec.keeper_uid, KeeperUid::new(keeper), "{}", case.name);
            assert_eq!(
                cd.cluster.status.master.as_ref(),
                Some(&db.uid),
                "{}",
                case.name
            );
            let ev = find(&out.events, "initializing cluster");
            assert_eq!(fields(ev, "keeper"), [keeper], "{}", case.name);
        }
        Err(warning) => {
            assert!(cd.dbs.is_empty(), "{}: no db", case.name);
            assert_eq!(cd.cluster.status.master, None, "{}", case.name);
            assert!(
                has(&out.events, warning),
                "{}: {:?}",
                case.name,
                messages(&out.events)
            );
        }
    }
}

#[test]
fn initial_master_choice() {
    let cases = [
        InitialCase {
            name: "lowest uid among keepers that can be master",
            keepers: &[("k0", false), ("k1", true), ("k2", true)],
            expect: Ok("k1"),
        },
        InitialCase {
            name: "registration order does not matter",
            keepers: &[("k2", true), ("k1", true), ("k0", false)],
            expect: Ok("k1"),
        },
        InitialCase {
            name: "all eligible",
            keepers: &[("k0", true), ("k1", true)],
            expect: Ok("k0"),
        },
        InitialCase {
            name: "no keepers",
            keepers: &[],
            expect: Err("cannot choose initial master: no keepers registered"),
        },
        InitialCase {
            name: "no keeper may be master",
            keepers: &[("k0", false), ("k1", false)],
            expect: Err("cannot choose initial master: no healthy keeper that can be master"),
        },
    ];
    for case in &cases {
        check_initial(case);
    }
}

#[test]
fn infos_of_another_cluster_are_ignored() {
    let mut w = World::new(&["k0", "k1"]);
    w.publish();
    let (mut keepers, proxies) = w.observations();
    keepers[0].cluster_uid = stolon_cluster::ClusterUid::new("another-cluster");
    let out = sentinel::step(
        w.now,
        &w.cd,
        &w.spec,
        Observations {
            keepers: &keepers,
            proxies: &proxies,
        },
        &mut w.memory,
        1,
    );
    assert!(!out.data.keepers.contains_key(&KeeperUid::new("k0")));
    let db = out.data.master_db().expect("a master db");
    assert_eq!(db.spec.keeper_uid, KeeperUid::new("k1"));
}

/// One step after the initial master db was created on k1.
fn initializing() -> (World, DbUid) {
    let mut w = World::new(&["k0", "k1", "k2"]).cannot_be_master("k0");
    w.step();
    let db = w.master_uid();
    assert_eq!(w.keeper_of(&db), "k1");
    (w, db)
}

#[test]
fn phase_stays_initializing_until_the_db_reports_its_generation_applied() {
    let (w, db) = initializing();
    type Setup = fn(&mut World);
    let cases: [(&str, Setup); 4] = [
        ("no postgres state", |_| {}),
        ("state of another db", |w| {
            w.report_with("k1", |s| s.db_uid = DbUid::new("someone-else"))
        }),
        ("generation not applied yet", |w| {
            w.report_with("k1", |s| s.generation = Generation::NONE)
        }),
        ("only another keeper reports the db", |w| {
            w.report("k1");
            let state = w.keeper("k1").pg.take();
            w.keeper("k2").pg = state;
        }),
    ];
    for (name, setup) in cases {
        let mut w = w.clone();
        setup(&mut w);
        for _ in 0..3 {
            let out = w.step_after(secs(1));
            assert_eq!(
                out.data.cluster.status.phase,
                ClusterPhase::Initializing,
                "{name}"
            );
            assert!(!has(&out.events, "db initialized"), "{name}");
            assert_eq!(out.data.cluster.status.master.as_ref(), Some(&db), "{name}");
            assert_eq!(out.data.dbs[&db].spec.init_mode, InitMode::New, "{name}");
        }
    }

    let mut w = w;
    w.report("k1");
    let out = w.step_after(secs(1));
    assert_eq!(out.data.cluster.status.phase, ClusterPhase::Normal);
    assert_eq!(
        fields(find(&out.events, "db initialized"), "db"),
        [db.as_str()]
    );
    assert_eq!(out.data.dbs[&db].spec.init_mode, InitMode::None);
    assert_eq!(out.data.dbs[&db].spec.role, DbRole::Master);
}

/// The brief: Normal only once the db reports itself *healthy* at the applied generation.
#[test]
fn an_unhealthy_report_does_not_end_initialization() {
    let (mut w, _) = initializing();
    w.report_with("k1", |s| s.healthy = false);
    let out = w.step_after(secs(1));
    assert_eq!(out.data.cluster.status.phase, ClusterPhase::Initializing);
    assert!(!has(&out.events, "db initialized"));
}

#[test]
fn init_timeout_removes_the_db_and_the_next_step_picks_another_keeper() {
    let (mut w, first) = initializing();
    let created = w.now;
    let init_timeout = w.spec.init_timeout;

    // Not before the timeout: the keeper publishes but never reports the db.
    let out = w.step_at(created + init_timeout);
    assert!(has(&out.events, "waiting for db"));
    assert_eq!(out.data.cluster.status.master.as_ref(), Some(&first));

    let out = w.step_at(created + init_timeout + ms(1));
    let ev = find(&out.events, "db failed to initialize");
    assert_eq!(fields(ev, "keeper"), ["k1"]);
    assert!(out.data.dbs.is_empty());
    assert_eq!(out.data.cluster.status.master, None);
    assert_eq!(out.data.cluster.status.phase, ClusterPhase::Initializing);

    let out = w.step_after(secs(1));
    assert_eq!(out.data.dbs.len(), 1);
    let second = w.master_uid();
    assert_ne!(second, first);
    assert_eq!(w.keeper_of(&second), "k2");
    assert_eq!(out.data.dbs[&second].spec.role, DbRole::Master);
    assert_eq!(out.data.dbs[&second].spec.init_mode, InitMode::New);
}

// ---------------------------------------------------------------------------------------
// 2. Failover choice and timing
// ---------------------------------------------------------------------------------------

/// A standby as one failover case describes it.
#[derive(Clone, Copy)]
struct Sb {
    keeper: &'static str,
    xlog: u64,
    can_be_master: bool,
    healthy: bool,
    timeline: u32,
    initialized: bool,
}

const fn sb(keeper: &'static str, xlog: u64) -> Sb {
    Sb {
        keeper,
        xlog,
        can_be_master: true,
        healthy: true,
        timeline: 1,
        initialized: true,
    }
}

struct ChoiceCase {
    name: &'static str,
    master_xlog: u64,
    max_lag: u32,
    standbys: Vec<Sb>,
    /// The keeper whose db is chosen.
    winner: Option<&'static str>,
    /// (keeper, reason) of every standby passed over.
    rejected: &'static [(&'static str, &'static str)],
}

const CANNOT: &str = "it cannot be master (--can-be-master=false)";
const LAGGING: &str = "it is behind the maximum xlog position (maxStandbyLag)";

fn check_choice(case: &ChoiceCase) {
    let mut b = CdBuilder::new()
        .keeper("m", true)
        .db("db-m", "m", DbRole::Master, case.master_xlog)
        .master("db-m");
    for s in &case.standbys {
        let uid = format!("db-{}", s.keeper);
        let s = *s;
        b = b
            .keeper(s.keeper, s.can_be_master)
            .db(&uid, s.keeper, DbRole::Standby, s.xlog)
            .adjust_db(&uid, move |db| {
                db.status.healthy = s.healthy;
                db.status.timeline_id = TimelineId(s.timeline);
                if !s.initialized {
                    db.status.current_generation = Generation::NONE;
                }
            })
            .follow(&uid, "db-m");
    }
    let cd = b.build();
    let failed = &cd.dbs[&DbUid::new("db-m")];
    let (best, rejected) = choose_new_master(&cd, failed, case.max_lag, &Default::default());
    let want = case.winner.map(|k| DbUid::new(format!("db-{k}")));
    assert_eq!(best, want, "{}", case.name);
    let want_rejected: Vec<Rejection> = case
        .rejected
        .iter()
        .map(|(k, reason)| Rejection {
            keeper: KeeperUid::new(*k),
            reason,
        })
        .collect();
    assert_eq!(rejected, want_rejected, "{}", case.name);
}

#[test]
fn failover_choice() {
    let cases = vec![
        ChoiceCase {
            name: "highest position wins",
            master_xlog: 1000,
            max_lag: 1000,
            standbys: vec![sb("k1", 900), sb("k2", 950), sb("k3", 100)],
            winner: Some("k2"),
            rejected: &[],
        },
        ChoiceCase {
            name: "equal positions: lowest db uid",
            master_xlog: 1000,
            max_lag: 1000,
            standbys: vec![sb("k2", 950), sb("k1", 950)],
            winner: Some("k1"),
            rejected: &[],
        },
        ChoiceCase {
            name: "a standby beyond maxStandbyLag is rejected",
            master_xlog: 10_000,
            max_lag: 1000,
            standbys: vec![sb("k1", 9000), sb("k2", 8999)],
            winner: Some("k1"),
            rejected: &[("k2", LAGGING)],
        },
        ChoiceCase {
            name: "a keeper that cannot be master is never chosen, even the most advanced",
            master_xlog: 1000,
            max_lag: 1000,
            standbys: vec![
                sb("k1", 500),
                Sb {
                    can_be_master: false,
                    ..sb("k2", 1000)
                },
            ],
            winner: Some("k1"),
            rejected: &[("k2", CANNOT)],
        },
        ChoiceCase {
            name: "unhealthy, uninitialized, other timeline",
            master_xlog: 1000,
            max_lag: 1000,
            standbys: vec![
                Sb {
                    healthy: false,
                    ..sb("k1", 1000)
                },
                Sb {
                    initialized: false,
                    ..sb("k2", 1000)
                },
                Sb {
                    timeline: 2,
                    ..sb("k3", 1000)
                },
                sb("k4", 10),
            ],
            winner: Some("k4"),
            rejected: &[
                ("k1", "its db is not healthy"),
                ("k2", "its db has not been initialized yet"),
                ("k3", "its db is on another timeline than the master"),
            ],
        },
        ChoiceCase {
            name: "nothing qualifies",
            master_xlog: 5000,
            max_lag: 1000,
            standbys: vec![
                sb("k1", 100),
                Sb {
                    can_be_master: false,
                    ..sb("k2", 5000)
                },
            ],
            winner: None,
            rejected: &[("k1", LAGGING), ("k2", CANNOT)],
        },
        ChoiceCase {
            name: "no standbys",
            master_xlog: 5000,
            max_lag: 1000,
            standbys: vec![],
            winner: None,
            rejected: &[],
        },
    ];
    for case in &cases {
        check_choice(case);
    }
}

#[test]
fn failover_only_after_fail_interval_then_elects_the_most_advanced_standby() {
    let mut w = World::normal(&["k0", "k1", "k2"], &[]);
    w.set_xlogs(&[("k0", 1000), ("k1", 900), ("k2", 950)]);
    let old = w.master_uid();
    assert_eq!(w.keeper_of(&old), "k0");
    let log_start = w.log.len();

    // k0's last info was published at the last step; it stays in the store unchanged.
    w.keeper("k0").alive = false;
    let last_change = w.now;
    let fail_interval = w.spec.fail_interval;
    for s in 1..=fail_interval.as_secs() {
        let out = w.step_at(last_change + secs(s));
        assert_eq!(
            out.data.cluster.status.master.as_ref(),
            Some(&old),
            "at +{s}s"
        );
        assert_eq!(out.data.dbs[&old].spec.role, DbRole::Master, "at +{s}s");
        assert!(!has(&out.events, "master db is failed"), "at +{s}s");
        assert!(
            !has(&out.events, "electing db as the new master"),
            "at +{s}s"
        );
    }

    let out = w.step_at(last_change + fail_interval + ms(1));
    let elected = w.master_uid();
    assert_eq!(w.keeper_of(&elected), "k2", "highest xlog position");
    assert!(
        !out.data.dbs.contains_key(&old),
        "the old master db is removed"
    );
    assert_in_order(
        &w.log[log_start..],
        &[
            "no keeper info available",
            "master db is failed",
            "trying to find a standby to replace failed master",
            "electing db as the new master",
        ],
    );
    let ev = find(&out.events, "electing db as the new master");
    assert_eq!(fields(ev, "keeper"), ["k2"]);
}

#[test]
fn no_failover_when_no_standby_qualifies() {
    let mut w = World::normal_with(r#"{"maxStandbyLag": 1000}"#, &["k0", "k1", "k2"], &["p1"]);
    w.keeper("k2").can_be_master = false;
    w.set_xlogs(&[("k0", 5000), ("k1", 100), ("k2", 5000)]);
    let before = w.cd.clone();
    let old = w.master_uid();

    w.keeper("k0").alive = false;
    let last_change = w.now;
    let out = w.step_at(last_change + w.spec.fail_interval + ms(1));

    assert!(has(&out.events, "master db is failed"));
    let ev = find(&out.events, "no eligible masters: no failover");
    let mut rejected = fields(ev, "rejected");
    rejected.sort();
    assert_eq!(
        rejected,
        [format!("k1({LAGGING})"), format!("k2({CANNOT})")]
    );
    assert!(!has(&out.events, "electing db as the new master"));
    assert_eq!(out.data.cluster.status.master.as_ref(), Some(&old));
    assert_eq!(out.data.dbs[&old].spec.role, DbRole::Master);
    assert_eq!(out.data.dbs.len(), before.dbs.len());
    assert_eq!(
        out.data.proxy, before.proxy,
        "the proxies keep their target"
    );
}

// ---------------------------------------------------------------------------------------
// 3. The proxy handshake
// ---------------------------------------------------------------------------------------

#[test]
fn election_clears_the_proxy_target_and_keeps_the_candidate_a_standby() {
    let mut w = World::normal(&["k0", "k1", "k2"], &["p1", "p2"]);
    let generation = w.cd.proxy.generation;
    let enabled = w.cd.proxy.spec.enabled_proxies.clone();
    assert_eq!(enabled, [ProxyUid::new("p1"), ProxyUid::new("p2")]);

    let candidate = w.fail_master().expect("a new master");
    let cd = &w.cd;
    assert_eq!(cd.proxy.spec.master_db_uid, None);
    assert_eq!(cd.proxy.generation, generation.next());
    assert_eq!(cd.dbs[&candidate].spec.role, DbRole::Standby);
    assert_eq!(cd.cluster.status.master.as_ref(), Some(&candidate));
    assert!(masters(cd).is_empty(), "no db has the master role yet");
}

#[test]
fn a_live_proxy_on_the_old_generation_blocks_promotion_until_it_acks() {
    let mut w = World::normal(&["k0", "k1", "k2"], &["p1", "p2"]);
    // p1 keeps publishing, but the generation it reports stays the old one.
    w.proxy("p1").acks = false;
    let candidate = w.fail_master().expect("a new master");
    let new_generation = w.cd.proxy.generation;

    for i in 0..8 {
        let out = w.step_after(secs(1));
        let ev = find(
            &out.events,
            "waiting for proxies to be converged to the current generation",
        );
        assert_eq!(fields(ev, "proxies"), ["p1"], "step {i}");
        assert_eq!(
            out.data.dbs[&candidate].spec.role,
            DbRole::Standby,
            "step {i}"
        );
        assert!(masters(&out.data).is_empty(), "step {i}");
    }

    w.proxy("p1").acks = true;
    let out = w.step_after(secs(1));
    assert!(has(&out.events, "proxies fenced: promoting db"));
    let db = &out.data.dbs[&candidate];
    assert_eq!(db.spec.role, DbRole::Master);
    assert_eq!(db.spec.follow_config, None);
    assert_eq!(masters(&out.data), [&candidate]);
    assert_eq!(out.data.proxy.generation, new_generation);
    assert_eq!(out.data.proxy.spec.master_db_uid, None, "not converged yet");
}

#[test]
fn a_silent_proxy_stops_blocking_after_its_timeout_plus_a_sleep_interval() {
    let mut w = World::normal(&["k0", "k1", "k2"], &["p1", "p2"]);
    // p2 publishes a long timeout, then goes silent together with the primary's keeper.
    w.proxy("p2").timeout = secs(10);
    w.step_after(secs(1));
    let last_change = w.now;
    w.proxy("p2").alive = false;
    let old = w.master_uid();
    let k = w.keeper_of(&old);
    w.keeper(&k).alive = false;

    let fail_at = last_change + w.spec.fail_interval + ms(1);
    let out = w.step_at(fail_at);
    assert!(has(&out.events, "electing db as the new master"));
    let candidate = w.master_uid();

    let deadline = last_change + secs(10) + w.spec.sleep_interval;
    let mut t = fail_at;
    while t + secs(1) <= deadline {
        t += secs(1);
        let out = w.step_at(t);
        let ev = find(
            &out.events,
            "waiting for proxies to be converged to the current generation",
        );
        assert_eq!(fields(ev, "proxies"), ["p2"]);
        assert_eq!(out.data.dbs[&candidate].spec.role, DbRole::Standby);
    }
    let out = w.step_at(deadline);
    assert_eq!(
        out.data.dbs[&candidate].spec.role,
        DbRole::Standby,
        "at the deadline"
    );

    let out = w.step_at(deadline + ms(1));
    assert!(has(&out.events, "proxies fenced: promoting db"));
    assert_eq!(out.data.dbs[&candidate].spec.role, DbRole::Master);
}

#[test]
fn proxies_route_to_the_new_master_only_once_it_reports_a_converged_primary() {
    let mut w = World::normal(&["k0", "k1", "k2"], &["p1", "p2"]);
    w.proxy("p2").alive = false; // dies for good: it will not be enabled again
    let candidate = w.fail_master().expect("a new master");
    let k = w.keeper_of(&candidate);

    // Wait for the promotion (p2 must first be past its timeout).
    for _ in 0..10 {
        w.step_after(secs(1));
        if w.cd.dbs[&candidate].spec.role == DbRole::Master {
            break;
        }
    }
    assert_eq!(w.cd.dbs[&candidate].spec.role, DbRole::Master);
    let generation = w.cd.dbs[&candidate].generation;

    /// Makes the candidate's keeper report something short of a converged primary.
    type Report = fn(&mut World, &str, Generation);
    let not_yet: [(&str, Report); 3] = [
        ("promotion not reported at all", |_, _, _| {}),
        ("generation applied, still in recovery", |w, k, _| {
            w.report_with(k, |s| s.in_recovery = true)
        }),
        ("out of recovery, generation not applied", |w, k, g| {
            w.report_with(k, |s| s.generation = Generation(g.0 - 1))
        }),
    ];
    for (name, report) in not_yet {
        let mut w = w.clone();
        report(&mut w, &k, generation);
        for _ in 0..2 {
            let out = w.step_after(secs(1));
            assert_eq!(out.data.proxy.spec.master_db_uid, None, "{name}");
            assert_eq!(out.data.cluster.status.master.as_ref(), Some(&candidate));
        }
    }

    w.report(&k);
    let before = w.cd.proxy.generation;
    let out = w.step_after(secs(1));
    assert!(has(&out.events, "proxies may now route to the master db"));
    assert_eq!(out.data.proxy.spec.master_db_uid.as_ref(), Some(&candidate));
    assert_eq!(out.data.proxy.spec.enabled_proxies, [ProxyUid::new("p1")]);
    assert_eq!(out.data.proxy.generation, before.next());
}

// ---------------------------------------------------------------------------------------
// 4. Standbys
// ---------------------------------------------------------------------------------------

#[test]
fn free_healthy_keepers_get_standbys_up_to_max_standbys_per_sender() {
    let mut w = World::with_spec(
        r#"{"maxStandbysPerSender": 2}"#,
        &["k0", "k1", "k2", "k3", "k4"],
    );
    w.step();
    let master = w.master_uid();
    assert_eq!(w.keeper_of(&master), "k0");
    // k1 registered, then went silent: by the time the master serves it is unhealthy.
    w.keeper("k1").alive = false;
    for _ in 0..6 {
        w.step_after(secs(1));
    }
    w.report("k0");
    let out = w.step_after(secs(1));
    assert!(has(&out.events, "db initialized"));
    assert_eq!(
        out.data.dbs.len(),
        1,
        "no standbys before the master converged"
    );
    let out = w.step_after(secs(1));
    assert_eq!(
        out.data.dbs.len(),
        1,
        "no standbys before the master converged"
    );
    assert!(!out.data.keepers[&KeeperUid::new("k1")].status.healthy);

    w.report("k0");
    let out = w.step_after(secs(1));
    let cd = &out.data;
    assert_eq!(cd.dbs.len(), 3);
    let mut standbys: Vec<DbUid> = Vec::new();
    for k in ["k2", "k3"] {
        let db = w.db_of(k);
        assert_eq!(db.spec.role, DbRole::Standby, "{k}");
        assert_eq!(db.spec.init_mode, InitMode::Resync, "{k}");
        assert_eq!(
            db.spec.follow_config.as_ref().map(|f| &f.db_uid),
            Some(&master),
            "{k}"
        );
        standbys.push(db.uid.clone());
    }
    for k in ["k1", "k4"] {
        assert!(
            cd.db_of_keeper(&KeeperUid::new(k)).is_none(),
            "{k} gets no db"
        );
    }
    standbys.sort();
    assert_eq!(cd.dbs[&master].spec.followers, standbys);
    assert_eq!(
        fields(find(&out.events, "added new standby db"), "keeper"),
        ["k2"]
    );

    // Once converged they keep their place and lose their init mode.
    w.settle();
    assert_eq!(w.cd.dbs.len(), 3);
    for k in ["k2", "k3"] {
        assert_eq!(w.db_of(k).spec.init_mode, InitMode::None, "{k}");
        assert!(w.db_of(k).status.healthy, "{k}");
    }
    assert_eq!(w.master().spec.followers, standbys);
}

// ---------------------------------------------------------------------------------------
// Findings (ignored until the engine is fixed; see the report)
// ---------------------------------------------------------------------------------------

/// Stepping again at the same time, with the same observations and the memory the first
/// step left, changes nothing: here right after the initial master db is created.
#[test]
fn a_step_that_creates_a_db_is_idempotent() {
    let mut w = World::new(&["k0", "k1", "k2"]);
    w.publish();
    let (keepers, proxies) = w.observations();
    let obs = Observations {
        keepers: &keepers,
        proxies: &proxies,
    };
    let first = sentinel::step(w.now, &w.cd, &w.spec, obs, &mut w.memory, 1);
    assert!(has(&first.events, "initializing cluster"));
    let mut memory = w.memory.clone();
    let again = sentinel::step(w.now, &first.data, &w.spec, obs, &mut memory, 1);
    assert_eq!(again.data, first.data);
}

/// A daemon that passes the same seed on every step gets, for the next new db, the uid of a
/// db removed in between. The old primary's keeper then holds that uid in its data directory
/// and takes the standby db it is given for its own: it never resyncs.
#[test]
fn a_removed_db_uid_is_never_handed_out_again() {
    let mut w = World::new(&["k0", "k1", "k2"]);
    w.fixed_seed = Some(7);
    w.step();
    w.settle();
    let old = w.master_uid();
    assert_eq!(w.keeper_of(&old), "k0");
    let old_generation = w.cd.dbs[&old].generation;

    let new = w.fail_master().expect("a new master");
    let k = w.keeper_of(&new);
    w.step_after(secs(1)); // no proxies: promoted at once
    assert_eq!(w.cd.dbs[&new].spec.role, DbRole::Master);
    w.report(&k);
    // The old primary comes back: its keeper publishes again, its postgres is stopped.
    w.keeper("k0").alive = true;
    for _ in 0..5 {
        w.step_after(secs(1));
    }
    let given = w.db_of("k0").clone();
    assert_eq!(given.spec.role, DbRole::Standby);
    assert_eq!(given.spec.init_mode, InitMode::Resync);

    let action = keeper::next_action(
        Some(&w.cd),
        &KeeperUid::new("k0"),
        "boot-k0",
        &keeper::LocalDb {
            uid: Some(old.clone()),
            generation: old_generation,
            initializing: false,
        },
        &keeper::Instance {
            initialized: true,
            ..Default::default()
        },
    );
    assert_ne!(
        given.uid, old,
        "the old primary's db uid is reused; keeper: {action:?}"
    );
    assert!(
        matches!(action, keeper::Action::Resync { .. }),
        "{action:?}"
    );
}

/// A standby that has not applied its spec for longer than convergenceTimeout is one the
/// planner fails as soon as it is the master; electing it only to remove it on the next
/// step throws its db away and delays the failover.
#[test]
fn a_standby_past_its_convergence_timeout_is_not_elected() {
    let mut w = World::normal(&["k0", "k1", "k2"], &["p1"]);
    w.set_xlogs(&[("k0", 1000), ("k1", 990), ("k2", 900)]);
    let stuck = w.db_of("k1").uid.clone();
    // A spec change every db must apply; k1 keeps publishing its old state.
    w.spec.pg_parameters.insert("work_mem".into(), "8MB".into());
    w.step_after(secs(1));
    let changed_at = w.now;
    assert_ne!(
        w.cd.dbs[&stuck].generation,
        w.cd.dbs[&stuck].status.current_generation
    );
    while w.now < changed_at + w.spec.convergence_timeout {
        w.report("k0");
        w.report("k2");
        w.step_after(secs(1));
    }
    assert!(
        w.cd.dbs.contains_key(&stuck),
        "a failed standby is kept while there is room"
    );

    let elected = w.fail_master().expect("a new master");
    let out = w.step_after(secs(1));
    assert!(
        !has(&out.events, "db not converged"),
        "the elected db is failed at once: {:?}",
        messages(&out.events)
    );
    assert_eq!(w.keeper_of(&elected), "k2");
    assert!(w.cd.dbs.contains_key(&stuck));
}
