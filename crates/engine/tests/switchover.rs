//! Planned switchover (`stolonctl switchover`) in the sentinel's planner, the shorter
//! dbRestartTimeout for a primary whose live keeper reports it down, and the planner's
//! wake-up deadline (`StepOutput.wake_at`).

mod common;

use common::*;
use std::time::Duration;
use stolon_cluster::{
    ClusterData, DbRole, DbUid, Generation, GoDuration, Hold, KeeperUid, Lsn, PgState, ProxyUid,
    Switchover, SwitchoverPhase, TimelineId,
};
use stolon_engine::proxy::{route, Route};
use stolon_engine::sentinel::{
    election_rules, switchover_candidate, StepOutput, PROXY_FENCE_MARGIN,
};

const ID: &str = "so-1";
const PROXIES: [&str; 2] = ["p1", "p2"];
/// Where the old primary's WAL ends in every scenario (k0's position).
const FINAL: u64 = 1000;
/// How far past the shutdown checkpoint's start a standby that received it reports.
const CHECKPOINT_RECORD: u64 = 104;
const SYNC_1_1: &str =
    r#"{"synchronousReplication": true, "minSynchronousStandbys": 1, "maxSynchronousStandbys": 1}"#;

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

fn phase(cd: &ClusterData) -> Option<SwitchoverPhase> {
    cd.cluster.status.switchover.as_ref().map(|so| so.phase)
}

/// The outcome of switchover [`ID`]: (succeeded, message).
fn outcome(cd: &ClusterData) -> (bool, String) {
    let o = cd
        .cluster
        .status
        .last_switchover
        .as_ref()
        .expect("a switchover outcome");
    assert_eq!(o.id, ID);
    (o.succeeded, o.message.clone())
}

fn halted(cd: &ClusterData) -> Vec<&DbUid> {
    cd.dbs
        .values()
        .filter(|db| db.spec.halt)
        .map(|db| &db.uid)
        .collect()
}

/// What must hold after every step of a switchover from `old`, whatever happens to it.
fn check_invariants(cd: &ClusterData, old: &DbUid, at: Duration) {
    let ctx = format!("at {at:?}, phase {:?}", phase(cd));
    let hold = cd.proxy.spec.hold.as_ref();
    for p in PROXIES {
        match (hold, route(cd, &ProxyUid::new(p))) {
            // While held, no proxy hands a connection to anyone.
            (Some(hold), r) => assert_eq!(
                r,
                Route::Hold {
                    grace: hold.grace.0
                },
                "{ctx}"
            ),
            (None, Route::Hold { .. }) => panic!("{ctx}: {p} holds without a hold"),
            // A proxy only ever routes to the named primary, never to a halted one.
            (None, Route::To { db, .. }) => {
                let db = &cd.dbs[&DbUid::new(db)];
                assert_eq!(db.spec.role, DbRole::Master, "{ctx}");
                assert!(!db.spec.halt, "{ctx}: {p} routes to halted db {}", db.uid);
                assert_eq!(cd.cluster.status.master.as_ref(), Some(&db.uid), "{ctx}");
            }
            (None, Route::Nowhere(_)) => {}
        }
    }
    let masters = masters(cd);
    assert!(masters.len() <= 1, "{ctx}: several masters {masters:?}");
    for db in halted(cd) {
        assert_eq!(db, old, "{ctx}: only the old primary is ever halted");
        assert!(
            hold.is_some(),
            "{ctx}: the old primary is halted without a hold"
        );
    }
    // Once another db has the master role nothing may point at the old primary.
    if masters.iter().any(|m| *m != old) {
        assert!(
            !cd.dbs.contains_key(old),
            "{ctx}: the old primary is still listed"
        );
        assert_ne!(cd.proxy.spec.master_db_uid.as_ref(), Some(old), "{ctx}");
    }
    // The target is named primary only once it holds the old primary's final WAL.
    if let Some(so) = &cd.cluster.status.switchover {
        if let Some(to) = so.to_db.as_ref().and_then(|uid| cd.dbs.get(uid)) {
            if cd.cluster.status.master.as_ref() == Some(&to.uid) {
                let final_lsn = so
                    .final_lsn
                    .unwrap_or_else(|| panic!("{ctx}: no final lsn"));
                assert!(to.status.x_log_pos > final_lsn, "{ctx}");
            }
        }
    }
}

/// A switchover from k0 (at [`FINAL`]) in a world of k1 (at 900), k2 (at 950) and two
/// proxies, stepped one sleep interval at a time with the invariants checked after each step.
#[derive(Clone)]
struct Run {
    w: World,
    old: DbUid,
    /// The target streams the old primary's last WAL: once the final position is recorded
    /// it reports a position just past it.
    catch_up: bool,
    /// k0 does not apply the halt: it keeps reporting its db running at the generation
    /// before.
    ignores_halt: bool,
    /// The phase after every step since the run started.
    phases: Vec<Option<SwitchoverPhase>>,
}

impl Run {
    fn new(overrides: &str) -> Run {
        let w = World::normal_setup(overrides, &["k0", "k1", "k2"], &PROXIES, |w| {
            for (k, x) in [("k0", FINAL), ("k1", 900), ("k2", 950)] {
                w.keeper(k).xlog = x;
            }
        });
        let old = w.master_uid();
        assert_eq!(w.keeper_of(&old), "k0");
        Run {
            w,
            old,
            catch_up: true,
            ignores_halt: false,
            phases: Vec::new(),
        }
    }

    /// `stolonctl switchover`, as it writes into the cluster data.
    fn request(&mut self, to: Option<&str>, timeout: Duration, grace: Duration) {
        request(&mut self.w, to, timeout, grace);
    }

    fn target(&self) -> DbUid {
        self.w
            .cd
            .cluster
            .status
            .switchover
            .as_ref()
            .and_then(|so| so.to_db.clone())
            .expect("a switchover with a target")
    }

    fn old_db(&self) -> &stolon_cluster::Db {
        &self.w.cd.dbs[&self.old]
    }

    /// Every live keeper reports, then a step one sleep interval later.
    fn step(&mut self) -> StepOutput {
        let t = self.w.now + self.w.spec.sleep_interval;
        self.step_at(t, World::report_live)
    }

    fn step_at(&mut self, t: Duration, report: impl FnOnce(&mut World)) -> StepOutput {
        let so = self.w.cd.cluster.status.switchover.clone();
        if let (true, Some(so)) = (self.catch_up, so) {
            if let (Some(final_lsn), Some(to)) = (so.final_lsn, so.to_db) {
                let k = self.w.keeper_of(&to);
                self.w.keeper(&k).xlog = final_lsn.0 + CHECKPOINT_RECORD;
            }
        }
        report(&mut self.w);
        if self.ignores_halt && self.w.cd.dbs.get(&self.old).is_some_and(|db| db.spec.halt) {
            self.w.report_with("k0", |s| {
                s.healthy = true;
                s.shutdown_checkpoint = None;
                s.generation = Generation(s.generation.0 - 1);
            });
        }
        let out = self.w.step_at(t);
        check_invariants(&self.w.cd, &self.old, t);
        self.phases.push(phase(&self.w.cd));
        out
    }

    /// Steps until `done`, for at most 30 steps.
    fn step_until(&mut self, done: impl Fn(&ClusterData) -> bool) -> StepOutput {
        for _ in 0..30 {
            let out = self.step();
            if done(&out.data) {
                return out;
            }
        }
        panic!("not reached in 30 steps: {:#?}", self.w.cd.cluster.status);
    }

    /// The phases the run went through, each once.
    fn phase_sequence(&self) -> Vec<Option<SwitchoverPhase>> {
        let mut seq = self.phases.clone();
        seq.dedup();
        seq
    }
}

fn request(w: &mut World, to: Option<&str>, timeout: Duration, grace: Duration) {
    w.cd.cluster.status.switchover = Some(Switchover {
        id: ID.into(),
        to_keeper: to.map(KeeperUid::new),
        timeout: GoDuration(timeout),
        grace: GoDuration(grace),
        phase: SwitchoverPhase::Requested,
        from_db: None,
        to_db: None,
        final_lsn: None,
        abandon_reason: String::new(),
    });
}

fn is_phase(p: SwitchoverPhase) -> impl Fn(&ClusterData) -> bool {
    move |cd| phase(cd) == Some(p)
}

fn to_db_route(w: &World, db: &DbUid) -> Route {
    let k = w.keepers[&KeeperUid::new(w.keeper_of(db))].index;
    Route::To {
        db: db.to_string(),
        address: format!("10.0.0.{}", k + 1),
        port: 5432,
    }
}

// ---------------------------------------------------------------------------------------
// 1. The happy path, phase by phase
// ---------------------------------------------------------------------------------------

#[test]
fn async_switchover_moves_through_every_phase_with_new_connections_held_until_the_target_serves() {
    let mut r = Run::new("{}");
    let old = r.old.clone();
    let k2_db = r.w.db_of("k2").uid.clone();
    let log_start = r.w.log.len();
    let proxy_generation = r.w.cd.proxy.generation;
    r.request(None, secs(30), secs(2));

    // Requested -> Holding: the most advanced standby is the target; the proxies hold.
    let out = r.step();
    let t0 = r.w.now;
    let so = out.data.cluster.status.switchover.clone().unwrap();
    assert_eq!(so.phase, SwitchoverPhase::Holding);
    assert_eq!(so.from_db.as_ref(), Some(&old));
    assert_eq!(so.to_db.as_ref(), Some(&k2_db), "the most advanced standby");
    assert_eq!(
        out.data.proxy.spec.hold,
        Some(Hold {
            grace: GoDuration(secs(2))
        })
    );
    assert_eq!(out.data.proxy.generation, proxy_generation.next());
    assert!(halted(&out.data).is_empty());
    let ev = find(
        &out.events,
        "switchover: holding new client connections at the proxies",
    );
    assert_eq!(fields(ev, "to"), [k2_db.as_str()]);

    // The proxies acknowledge the hold at t0+1: the grace period runs from then.
    for s in 1..=2 {
        let out = r.step();
        assert_eq!(phase(&out.data), Some(SwitchoverPhase::Holding), "t0+{s}");
        assert!(
            halted(&out.data).is_empty(),
            "t0+{s}: not halted during grace"
        );
        assert!(has(
            &out.events,
            "switchover: letting existing sessions finish (grace period)"
        ));
    }
    let old_generation = r.old_db().generation;
    let out = r.step();
    assert_eq!(r.w.now, t0 + secs(3));
    assert_eq!(phase(&out.data), Some(SwitchoverPhase::Halting));
    assert_eq!(halted(&out.data), [&old]);
    assert_eq!(out.data.dbs[&old].generation, old_generation.next());

    // k0 reports its db stopped at the halt's generation: the final position is recorded.
    let out = r.step();
    let so = out.data.cluster.status.switchover.clone().unwrap();
    assert_eq!(so.phase, SwitchoverPhase::CatchingUp);
    assert_eq!(so.final_lsn, Some(Lsn(FINAL)));

    // The target at or below the final position: waiting.
    r.catch_up = false;
    for x in [950, FINAL] {
        r.w.keeper("k2").xlog = x;
        let out = r.step();
        assert_eq!(
            phase(&out.data),
            Some(SwitchoverPhase::CatchingUp),
            "at {x}"
        );
        assert!(has(
            &out.events,
            "switchover: waiting for the target to catch up"
        ));
        assert_eq!(out.data.cluster.status.master.as_ref(), Some(&old));
    }

    // Strictly past it: the target is named primary, still a standby, the old db removed.
    r.w.keeper("k2").xlog = FINAL + 1;
    let out = r.step();
    assert_eq!(phase(&out.data), Some(SwitchoverPhase::Promoting));
    assert_eq!(out.data.cluster.status.master.as_ref(), Some(&k2_db));
    assert!(!out.data.dbs.contains_key(&old));
    assert_eq!(out.data.dbs[&k2_db].spec.role, DbRole::Standby);
    assert_eq!(out.data.proxy.spec.master_db_uid, None);
    assert!(out.data.proxy.spec.hold.is_some());

    // Proxies fenced: the target gets the master role, still behind the hold.
    let out = r.step();
    assert!(has(&out.events, "proxies fenced: promoting db"));
    assert_eq!(out.data.dbs[&k2_db].spec.role, DbRole::Master);
    assert!(out.data.proxy.spec.hold.is_some());
    assert_eq!(out.data.proxy.spec.master_db_uid, None);

    // It reports a converged primary: the hold goes in the same step the proxies get it.
    let out = r.step();
    assert_eq!(out.data.cluster.status.switchover, None);
    assert_eq!(out.data.proxy.spec.hold, None);
    assert_eq!(out.data.proxy.spec.master_db_uid.as_ref(), Some(&k2_db));
    for p in PROXIES {
        assert_eq!(
            route(&out.data, &ProxyUid::new(p)),
            to_db_route(&r.w, &k2_db)
        );
    }
    assert_eq!(
        outcome(&out.data),
        (true, format!("switched over from db {old} to db {k2_db}"))
    );
    assert!(has(&out.events, "switchover completed"));

    // The old primary's keeper gets a new standby db that follows the new primary.
    r.w.settle();
    let k0_db = r.w.db_of("k0");
    assert_ne!(k0_db.uid, old);
    assert_eq!(k0_db.spec.role, DbRole::Standby);
    assert_eq!(
        k0_db
            .spec
            .follow_config
            .as_ref()
            .and_then(|f| f.followed_db()),
        Some(&k2_db)
    );
    assert!(!has(&r.w.log[log_start..], "master db is failed"));
    assert_eq!(
        r.phase_sequence(),
        [
            Some(SwitchoverPhase::Holding),
            Some(SwitchoverPhase::Halting),
            Some(SwitchoverPhase::CatchingUp),
            Some(SwitchoverPhase::Promoting),
            None
        ]
    );
}

#[test]
fn switchover_to_a_named_keeper_hands_over_to_its_db_even_if_not_the_most_advanced() {
    let mut r = Run::new("{}");
    let k1_db = r.w.db_of("k1").uid.clone();
    r.request(Some("k1"), secs(30), secs(1));
    r.step();
    assert_eq!(r.target(), k1_db);
    r.step_until(|cd| cd.cluster.status.switchover.is_none());
    assert!(outcome(&r.w.cd).0);
    assert_eq!(r.w.master_uid(), k1_db);
    assert_eq!(r.w.keeper_of(&r.w.master_uid()), "k1");
}

#[test]
fn sync_switchover_hands_over_to_a_known_synchronous_standby_that_always_waits_for_a_copy() {
    for to in [None, Some("k2")] {
        let mut r = Run::new(SYNC_1_1);
        assert_eq!(
            r.w.sync_status(),
            ["k2"],
            "the most advanced is synchronous"
        );
        let k2_db = r.w.db_of("k2").uid.clone();
        r.request(to, secs(30), secs(1));
        for _ in 0..30 {
            let out = r.step();
            // From the moment another db is named primary, its commits wait for a copy.
            if let Some(master) = out.data.master_db().filter(|m| m.uid != r.old) {
                let waits = master.spec.synchronous_standbys.len()
                    + master.spec.external_synchronous_standbys.len();
                assert!(waits > 0, "{to:?}: {master:#?}");
            }
            if out.data.cluster.status.switchover.is_none() {
                break;
            }
        }
        assert_eq!(
            outcome(&r.w.cd),
            (
                true,
                format!("switched over from db {} to db {k2_db}", r.old)
            )
        );
        assert_eq!(r.w.master_uid(), k2_db, "{to:?}");
        assert_eq!(
            r.phase_sequence(),
            [
                Some(SwitchoverPhase::Holding),
                Some(SwitchoverPhase::Halting),
                Some(SwitchoverPhase::CatchingUp),
                Some(SwitchoverPhase::Promoting),
                None
            ],
            "{to:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 2. Refusals
// ---------------------------------------------------------------------------------------

struct RefusalCase {
    name: &'static str,
    overrides: &'static str,
    keepers: &'static [(&'static str, u64, bool)],
    /// Applied to the settled world before the request.
    after: fn(&mut World),
    to: Option<&'static str>,
    /// The message starts with the first part and holds every other one.
    message: &'static [&'static str],
}

fn check_refusal(case: &RefusalCase) {
    let names: Vec<&str> = case.keepers.iter().map(|(k, _, _)| *k).collect();
    let mut w = World::normal_setup(case.overrides, &names, &PROXIES, |w| {
        for (k, x, can) in case.keepers {
            w.keeper(k).xlog = *x;
            w.keeper(k).can_be_master = *can;
        }
    });
    (case.after)(&mut w);
    let mut control = w.clone();
    request(&mut w, case.to, secs(30), secs(1));
    let out = w.step();
    let expected = control.step();

    let (succeeded, message) = outcome(&out.data);
    assert!(!succeeded, "{}", case.name);
    assert!(message.starts_with("refused: "), "{}", case.name);
    assert!(
        message.starts_with(case.message[0]),
        "{}: {message}",
        case.name
    );
    if let [exact] = case.message {
        assert_eq!(message, *exact, "{}", case.name);
    }
    for part in case.message {
        assert!(message.contains(part), "{}: {message}", case.name);
    }
    assert_eq!(out.data.cluster.status.switchover, None, "{}", case.name);
    assert!(
        has(&out.events, "switchover did not happen"),
        "{}",
        case.name
    );
    // Nothing else differs from a step without the request: no hold, no halt.
    let mut data = out.data.clone();
    data.cluster.status.last_switchover = None;
    assert_eq!(data, expected.data, "{}", case.name);
    assert_eq!(out.data.proxy.spec.hold, None, "{}", case.name);
    assert!(halted(&out.data).is_empty(), "{}", case.name);
}

#[test]
fn switchover_requests_that_cannot_be_honoured_are_refused_and_change_nothing() {
    let cases = [
        RefusalCase {
            name: "named keeper cannot be master",
            overrides: "{}",
            keepers: &[("k0", 1000, true), ("k1", 900, false), ("k2", 950, true)],
            after: |_| {},
            to: Some("k1"),
            message: &["refused: keeper k1 cannot become primary: it cannot be master (--can-be-master=false)"],
        },
        RefusalCase {
            name: "named keeper unknown",
            overrides: "{}",
            keepers: &[("k0", 1000, true), ("k1", 900, true), ("k2", 950, true)],
            after: |_| {},
            to: Some("k9"),
            message: &["refused: keeper k9 has no db in the cluster"],
        },
        RefusalCase {
            name: "named keeper already runs the primary",
            overrides: "{}",
            keepers: &[("k0", 1000, true), ("k1", 900, true), ("k2", 950, true)],
            after: |_| {},
            to: Some("k0"),
            message: &["refused: keeper k0 already runs the primary"],
        },
        RefusalCase {
            name: "named keeper behind maxStandbyLag",
            overrides: r#"{"maxStandbyLag": 1000}"#,
            keepers: &[("k0", 5000, true), ("k1", 100, true), ("k2", 4500, true)],
            after: |_| {},
            to: Some("k1"),
            message: &["refused: keeper k1 cannot become primary: it is behind the maximum xlog position (maxStandbyLag)"],
        },
        RefusalCase {
            name: "sync mode: named keeper is not a known synchronous standby",
            overrides: SYNC_1_1,
            keepers: &[("k0", 1000, true), ("k1", 900, true), ("k2", 950, true)],
            after: |w| assert_eq!(w.sync_status(), ["k2"]),
            to: Some("k1"),
            message: &["refused: keeper k1 cannot become primary: it was not a known synchronous standby of the failed master"],
        },
        RefusalCase {
            name: "no standby at all",
            overrides: "{}",
            keepers: &[("k0", 1000, true)],
            after: |_| {},
            to: None,
            message: &["refused: no standby to switch over to"],
        },
        RefusalCase {
            name: "no standby may become primary",
            overrides: "{}",
            keepers: &[("k0", 1000, true), ("k1", 900, false), ("k2", 950, false)],
            after: |_| {},
            to: None,
            // In the order of the dbs' uids, which are random here.
            message: &[
                "refused: no standby may become primary (",
                "keeper k1: it cannot be master (--can-be-master=false)",
                "keeper k2: it cannot be master (--can-be-master=false)",
            ],
        },
        RefusalCase {
            name: "the primary is not serving (failover in progress)",
            overrides: "{}",
            keepers: &[("k0", 1000, true), ("k1", 900, true), ("k2", 950, true)],
            after: |w| {
                w.fail_master().expect("a failover");
            },
            to: None,
            message: &["refused: the primary is not serving now (a failover or initialization is in progress)"],
        },
    ];
    for case in &cases {
        check_refusal(case);
    }
}

// ---------------------------------------------------------------------------------------
// 3. What each phase waits for
// ---------------------------------------------------------------------------------------

type Adjust = fn(&mut PgState);

#[test]
fn halting_advances_only_on_a_fresh_report_of_a_clean_stop_at_the_halt_generation() {
    let mut r = Run::new("{}");
    r.request(None, secs(30), secs(1));
    r.step_until(is_phase(SwitchoverPhase::Halting));
    let cases: [(&str, Adjust, Option<&str>); 6] = [
        (
            "still running at the generation before the halt",
            |s| {
                s.healthy = true;
                s.shutdown_checkpoint = None;
                s.generation = Generation(s.generation.0 - 1);
            },
            None,
        ),
        (
            "running at the halt's generation",
            |s| s.healthy = true,
            None,
        ),
        (
            "stopped without a shutdown checkpoint",
            |s| s.shutdown_checkpoint = None,
            None,
        ),
        (
            "stopped at the generation before the halt",
            |s| s.generation = Generation(s.generation.0 - 1),
            None,
        ),
        (
            "stopped on another timeline",
            |s| s.shutdown_checkpoint.as_mut().unwrap().timeline_id = TimelineId(2),
            Some("switchover: the old primary stopped on an unexpected timeline"),
        ),
        (
            "state of another db",
            |s| s.db_uid = DbUid::new("someone-else"),
            None,
        ),
    ];
    for (name, adjust, event) in cases {
        let mut r = r.clone();
        for i in 0..2 {
            let t = r.w.now + secs(1);
            let out = r.step_at(t, |w| {
                w.report_live();
                w.report_with("k0", adjust);
            });
            let so = out.data.cluster.status.switchover.as_ref().unwrap();
            assert_eq!(so.phase, SwitchoverPhase::Halting, "{name} ({i})");
            assert_eq!(so.final_lsn, None, "{name}");
            assert!(!has(&out.events, "master db is failed"), "{name}");
            if let Some(event) = event {
                assert!(has(&out.events, event), "{name}");
            }
        }
        // The same world with a proper report goes on.
        let out = r.step();
        assert_eq!(
            phase(&out.data),
            Some(SwitchoverPhase::CatchingUp),
            "{name}"
        );
    }

    // A report not refreshed within two sleep intervals does not count, whatever it says:
    // k0 stops publishing, then the stopped state appears under its old info uid.
    r.w.keeper("k0").alive = false;
    for _ in 0..3 {
        r.step();
    }
    r.w.report("k0");
    assert!(r
        .w
        .keeper("k0")
        .pg
        .as_ref()
        .unwrap()
        .shutdown_checkpoint
        .is_some());
    let out = r.step();
    assert_eq!(phase(&out.data), Some(SwitchoverPhase::Halting), "stale");
    r.w.keeper("k0").alive = true;
    let out = r.step();
    assert_eq!(phase(&out.data), Some(SwitchoverPhase::CatchingUp), "fresh");
    assert_eq!(
        out.data
            .cluster
            .status
            .switchover
            .as_ref()
            .unwrap()
            .final_lsn,
        Some(Lsn(FINAL))
    );
}

#[test]
fn catching_up_promotes_only_a_target_strictly_past_the_final_position_on_the_same_timeline() {
    let mut r = Run::new("{}");
    r.catch_up = false;
    r.request(None, secs(30), secs(1));
    r.step_until(is_phase(SwitchoverPhase::CatchingUp));
    let target = r.target();
    let k = r.w.keeper_of(&target);
    let cases: [(&str, Adjust); 3] = [
        ("behind", |s| s.x_log_pos = Lsn(950)),
        ("exactly at the final position", |s| {
            s.x_log_pos = Lsn(FINAL)
        }),
        ("past it, on another timeline", |s| {
            s.x_log_pos = Lsn(FINAL + 500);
            s.timeline_id = TimelineId(2);
        }),
    ];
    for (name, adjust) in cases {
        let mut r = r.clone();
        for _ in 0..2 {
            let t = r.w.now + secs(1);
            let out = r.step_at(t, |w| {
                w.report_live();
                w.report_with(&k, adjust);
            });
            assert_eq!(
                phase(&out.data),
                Some(SwitchoverPhase::CatchingUp),
                "{name}"
            );
            assert_eq!(out.data.cluster.status.master.as_ref(), Some(&r.old));
            assert_eq!(out.data.dbs[&target].spec.role, DbRole::Standby, "{name}");
        }
        let t = r.w.now + secs(1);
        let out = r.step_at(t, |w| {
            w.report_live();
            w.report_with(&k, |s| s.x_log_pos = Lsn(FINAL + 1));
        });
        assert_eq!(phase(&out.data), Some(SwitchoverPhase::Promoting), "{name}");
        assert_eq!(out.data.cluster.status.master.as_ref(), Some(&target));
    }
}

// ---------------------------------------------------------------------------------------
// 4. Abandoned: the old primary stays
// ---------------------------------------------------------------------------------------

struct AbandonCase {
    name: &'static str,
    timeout: u64,
    /// The trouble starts once the switchover is in this phase (None: right after the
    /// request step).
    from: Option<SwitchoverPhase>,
    trouble: fn(&mut Run),
    /// The phase the switchover is abandoned from.
    abandoned_in: SwitchoverPhase,
    reason: &'static str,
    /// Abandoned exactly once the timeout, counted from the request step, is over.
    by_timeout: bool,
}

fn check_abandon(case: &AbandonCase) {
    let name = case.name;
    let mut r = Run::new("{}");
    let old = r.old.clone();
    let log_start = r.w.log.len();
    r.request(None, secs(case.timeout), secs(2));
    r.step();
    let t0 = r.w.now;
    if let Some(from) = case.from {
        r.step_until(is_phase(from));
    }
    (case.trouble)(&mut r);
    let out = if case.by_timeout {
        let deadline = t0 + secs(case.timeout);
        while r.w.now + secs(1) <= deadline {
            let out = r.step();
            assert_ne!(
                phase(&out.data),
                Some(SwitchoverPhase::Restoring),
                "{name}: at {:?}, before the timeout",
                r.w.now
            );
        }
        let out = r.step_at(deadline, World::report_live);
        assert_eq!(phase(&out.data), Some(case.abandoned_in), "{name}");
        r.step_at(deadline + ms(1), World::report_live)
    } else {
        r.step_until(|cd| phase(cd) != Some(case.abandoned_in))
    };
    assert!(has(&out.events, "switchover abandoned"));
    let so = out.data.cluster.status.switchover.clone().unwrap();
    assert_eq!(so.phase, SwitchoverPhase::Restoring, "{name}");
    assert_eq!(so.abandon_reason, case.reason, "{name}");
    assert!(halted(&out.data).is_empty(), "{name}: halt cleared");
    assert!(out.data.proxy.spec.hold.is_some(), "{name}: still held");
    assert_eq!(out.data.cluster.status.master.as_ref(), Some(&old));
    assert_eq!(out.data.cluster.status.last_switchover, None, "{name}");

    // Until the old primary reports itself serving again, the proxies keep holding.
    let t = r.w.now + secs(1);
    let out = r.step_at(t, |w| {
        for k in ["k1", "k2"] {
            w.report(k);
        }
    });
    assert_eq!(phase(&out.data), Some(SwitchoverPhase::Restoring), "{name}");
    assert!(out.data.proxy.spec.hold.is_some(), "{name}");

    let out = r.step();
    assert_eq!(out.data.cluster.status.switchover, None, "{name}");
    assert_eq!(out.data.proxy.spec.hold, None, "{name}");
    assert_eq!(
        outcome(&out.data),
        (false, format!("abandoned: {}", case.reason)),
        "{name}"
    );
    assert_eq!(out.data.cluster.status.master.as_ref(), Some(&old));
    for p in PROXIES {
        assert_eq!(
            route(&out.data, &ProxyUid::new(p)),
            to_db_route(&r.w, &old),
            "{name}"
        );
    }
    assert!(!has(&r.w.log[log_start..], "electing db as the new master"));
    assert!(!has(&r.w.log[log_start..], "master db is failed"));
}

#[test]
fn an_abandoned_switchover_restarts_the_old_primary_and_releases_the_hold_once_it_serves() {
    let cases = [
        AbandonCase {
            name: "the target never catches up",
            timeout: 10,
            from: Some(SwitchoverPhase::CatchingUp),
            trouble: |r| r.catch_up = false,
            abandoned_in: SwitchoverPhase::CatchingUp,
            reason: "the target did not receive the old primary's final WAL position within 10s",
            by_timeout: true,
        },
        AbandonCase {
            name: "the old primary never stops",
            timeout: 10,
            from: None,
            trouble: |r| r.ignores_halt = true,
            abandoned_in: SwitchoverPhase::Halting,
            reason: "the old primary did not shut down cleanly within 10s",
            by_timeout: true,
        },
        AbandonCase {
            name: "the target's keeper dies",
            timeout: 60,
            from: Some(SwitchoverPhase::CatchingUp),
            trouble: |r| {
                r.catch_up = false;
                let k = r.w.keeper_of(&r.target());
                r.w.keeper(&k).alive = false;
            },
            abandoned_in: SwitchoverPhase::CatchingUp,
            reason: "the target failed",
            by_timeout: false,
        },
    ];
    for case in &cases {
        check_abandon(case);
    }
}

// ---------------------------------------------------------------------------------------
// 5. The old primary's keeper dies: failover instead
// ---------------------------------------------------------------------------------------

struct DeathCase {
    name: &'static str,
    grace: u64,
    catch_up: bool,
    dies_in: SwitchoverPhase,
    message_prefix: &'static str,
}

fn check_death(case: &DeathCase) {
    let name = case.name;
    let mut r = Run::new("{}");
    let old = r.old.clone();
    r.catch_up = case.catch_up;
    r.request(None, secs(60), secs(case.grace));
    r.step();
    if case.dies_in != SwitchoverPhase::Holding {
        r.step_until(is_phase(case.dies_in));
    }
    assert_eq!(phase(&r.w.cd), Some(case.dies_in), "{name}");
    r.w.keeper("k0").alive = false;
    let last = r.w.now;
    let fail = r.w.spec.fail_interval;

    let mut elected = None;
    for _ in 0..20 {
        let out = r.step();
        if has(&out.events, "electing db as the new master") {
            elected = Some(out);
            break;
        }
        assert_eq!(
            out.data.cluster.status.last_switchover, None,
            "{name}: still going"
        );
    }
    let out = elected.unwrap_or_else(|| panic!("{name}: no failover"));
    assert!(
        r.w.now > last + fail,
        "{name}: failover before failInterval"
    );
    assert!(r.w.now <= last + fail + secs(1), "{name}: failover late");
    assert_eq!(out.data.cluster.status.switchover, None, "{name}");
    assert_eq!(out.data.proxy.spec.hold, None, "{name}: hold cleared");
    let (succeeded, message) = outcome(&out.data);
    assert!(!succeeded, "{name}");
    assert!(
        message.starts_with(case.message_prefix),
        "{name}: {message}"
    );
    let new = out.data.cluster.status.master.clone().unwrap();
    assert_ne!(new, old, "{name}");
    assert!(!out.data.dbs.contains_key(&old), "{name}");

    // The normal failover then runs to its end.
    r.step_until(|cd| cd.proxy.spec.master_db_uid.is_some());
    assert_eq!(r.w.cd.proxy.spec.master_db_uid.as_ref(), Some(&new));
    assert_eq!(
        route(&r.w.cd, &ProxyUid::new("p1")),
        to_db_route(&r.w, &new),
        "{name}"
    );
}

#[test]
fn the_old_primarys_keeper_dying_mid_switchover_ends_it_and_fails_over_with_the_hold_released() {
    let cases = [
        DeathCase {
            name: "while holding",
            grace: 20,
            catch_up: true,
            dies_in: SwitchoverPhase::Holding,
            message_prefix: "abandoned: the old primary failed",
        },
        DeathCase {
            name: "while halting",
            grace: 1,
            catch_up: true,
            dies_in: SwitchoverPhase::Halting,
            message_prefix: "interrupted: ",
        },
        DeathCase {
            name: "while the target catches up",
            grace: 1,
            catch_up: false,
            dies_in: SwitchoverPhase::CatchingUp,
            message_prefix: "interrupted: ",
        },
    ];
    for case in &cases {
        check_death(case);
    }
}

// ---------------------------------------------------------------------------------------
// 6. Proxies
// ---------------------------------------------------------------------------------------

#[test]
fn a_live_proxy_that_never_holds_keeps_the_primary_running_until_the_timeout_abandons() {
    let mut r = Run::new("{}");
    let old = r.old.clone();
    r.w.proxy("p2").acks = false;
    r.request(None, secs(10), secs(1));
    r.step();
    let t0 = r.w.now;
    for s in 1..=10 {
        let out = r.step_at(t0 + secs(s), World::report_live);
        assert_eq!(phase(&out.data), Some(SwitchoverPhase::Holding), "t0+{s}");
        assert!(halted(&out.data).is_empty(), "t0+{s}");
        let ev = find(
            &out.events,
            "switchover: waiting for the proxies to hold new connections",
        );
        assert_eq!(fields(ev, "proxies"), ["p2"]);
        if s == 10 {
            assert!(
                out.wake_at.is_some_and(|at| at <= t0 + secs(10) + ms(5)),
                "the timeout is a deadline: {:?}",
                out.wake_at
            );
        }
    }
    let out = r.step_at(t0 + secs(10) + ms(1), World::report_live);
    assert_eq!(out.data.cluster.status.switchover, None);
    assert_eq!(
        outcome(&out.data),
        (
            false,
            "abandoned: the proxies did not all hold new connections within 10s".to_string()
        )
    );
    assert_eq!(out.data.proxy.spec.hold, None);
    assert_eq!(out.data.cluster.status.master.as_ref(), Some(&old));
    assert_eq!(
        route(&out.data, &ProxyUid::new("p1")),
        to_db_route(&r.w, &old)
    );
}

#[test]
fn a_proxy_silent_past_its_timeout_does_not_hold_up_the_switchover() {
    let mut r = Run::new("{}");
    r.w.proxy("p2").alive = false;
    for _ in 0..5 {
        r.step();
    }
    assert_eq!(
        r.w.cd.proxy.spec.enabled_proxies,
        [ProxyUid::new("p1")],
        "p2 is past its proxyTimeout"
    );
    r.request(None, secs(30), secs(1));
    r.step();
    let t0 = r.w.now;
    let out = r.step();
    assert_eq!(phase(&out.data), Some(SwitchoverPhase::Holding));
    let out = r.step();
    assert_eq!(r.w.now, t0 + secs(2));
    assert_eq!(phase(&out.data), Some(SwitchoverPhase::Halting));
}

#[test]
fn a_proxy_dying_while_holding_blocks_the_halt_only_until_its_timeout() {
    let mut r = Run::new("{}");
    r.request(None, secs(30), secs(1));
    r.step();
    let t0 = r.w.now;
    // p2 published at t0, then never again: live until t0 + proxyTimeout + the fence margin.
    r.w.proxy("p2").alive = false;
    let live_until = t0 + r.w.spec.proxy_timeout + PROXY_FENCE_MARGIN;
    assert_eq!(live_until, t0 + secs(4));
    for s in 1..=4 {
        let out = r.step();
        let ev = find(
            &out.events,
            "switchover: waiting for the proxies to hold new connections",
        );
        assert_eq!(fields(ev, "proxies"), ["p2"], "t0+{s}");
        assert!(halted(&out.data).is_empty());
    }
    // t0+5: p2 is past its timeout, the grace period starts; t0+6: halt.
    let out = r.step();
    assert_eq!(phase(&out.data), Some(SwitchoverPhase::Holding));
    assert!(has(
        &out.events,
        "switchover: letting existing sessions finish (grace period)"
    ));
    let out = r.step();
    assert_eq!(r.w.now, t0 + secs(6));
    assert_eq!(phase(&out.data), Some(SwitchoverPhase::Halting));
    assert_eq!(halted(&out.data), [&r.old]);
}

// ---------------------------------------------------------------------------------------
// 7. switchover_candidate
// ---------------------------------------------------------------------------------------

/// k0 primary at 1000, k1 at 900, k2 at 950, k3 registered without a db.
fn candidates() -> CdBuilder {
    CdBuilder::new()
        .keeper("k0", true)
        .keeper("k1", true)
        .keeper("k2", true)
        .keeper("k3", true)
        .db("db0", "k0", DbRole::Master, 1000)
        .db("db1", "k1", DbRole::Standby, 900)
        .db("db2", "k2", DbRole::Standby, 950)
        .follow("db1", "db0")
        .follow("db2", "db0")
        .master("db0")
        .proxy(Some("db0"), &["p1"])
}

struct CandidateCase {
    name: &'static str,
    cd: ClusterData,
    to: Option<&'static str>,
    stalled: &'static [&'static str],
    want: Result<&'static str, &'static str>,
}

#[test]
fn switchover_candidate_choice() {
    let cases = vec![
        CandidateCase {
            name: "default: the most advanced eligible standby",
            cd: candidates().build(),
            to: None,
            stalled: &[],
            want: Ok("db2"),
        },
        CandidateCase {
            name: "default: equal positions, the higher priority",
            cd: candidates()
                .adjust_db("db1", |db| db.status.x_log_pos = Lsn(950))
                .priority("k1", 5)
                .build(),
            to: None,
            stalled: &[],
            want: Ok("db1"),
        },
        CandidateCase {
            name: "default: a stalled standby is passed over",
            cd: candidates().build(),
            to: None,
            stalled: &["db2"],
            want: Ok("db1"),
        },
        CandidateCase {
            name: "default, sync: the known synchronous standby, though less advanced",
            cd: candidates().sync("db0", &["db1"], &["db1"]).build(),
            to: None,
            stalled: &[],
            want: Ok("db1"),
        },
        CandidateCase {
            name: "named: an eligible standby that is not the best",
            cd: candidates().build(),
            to: Some("k1"),
            stalled: &[],
            want: Ok("db1"),
        },
        CandidateCase {
            name: "named: cannot be master",
            cd: candidates().adjust_keeper("k1", |k| k.can_be_master = false).build(),
            to: Some("k1"),
            stalled: &[],
            want: Err("keeper k1 cannot become primary: it cannot be master (--can-be-master=false)"),
        },
        CandidateCase {
            name: "named: db not healthy",
            cd: candidates().adjust_db("db1", |db| db.status.healthy = false).build(),
            to: Some("k1"),
            stalled: &[],
            want: Err("keeper k1 cannot become primary: its db is not healthy"),
        },
        CandidateCase {
            name: "named: db not initialized",
            cd: candidates()
                .adjust_db("db1", |db| db.status.current_generation = Generation::NONE)
                .build(),
            to: Some("k1"),
            stalled: &[],
            want: Err("keeper k1 cannot become primary: its db has not been initialized yet"),
        },
        CandidateCase {
            name: "named: on another timeline",
            cd: candidates()
                .adjust_db("db1", |db| db.status.timeline_id = TimelineId(2))
                .build(),
            to: Some("k1"),
            stalled: &[],
            want: Err(
                "keeper k1 cannot become primary: its db is on another timeline than the master",
            ),
        },
        CandidateCase {
            name: "named: behind maxStandbyLag",
            cd: candidates()
                .adjust_db("db0", |db| db.status.x_log_pos = Lsn(2000))
                .adjust_db("db1", |db| db.status.x_log_pos = Lsn(999))
                .build(),
            to: Some("k1"),
            stalled: &[],
            want: Err("keeper k1 cannot become primary: it is behind the maximum xlog position (maxStandbyLag)"),
        },
        CandidateCase {
            name: "named: stalled",
            cd: candidates().build(),
            to: Some("k1"),
            stalled: &["db1"],
            want: Err("keeper k1 cannot become primary: its db has not converged within convergenceTimeout"),
        },
        CandidateCase {
            name: "named, sync: not a known synchronous standby",
            cd: candidates().sync("db0", &["db2"], &["db2"]).build(),
            to: Some("k1"),
            stalled: &[],
            want: Err("keeper k1 cannot become primary: it was not a known synchronous standby of the failed master"),
        },
        CandidateCase {
            name: "named: the primary's own keeper",
            cd: candidates().build(),
            to: Some("k0"),
            stalled: &[],
            want: Err("keeper k0 already runs the primary"),
        },
        CandidateCase {
            name: "named: a keeper without a db",
            cd: candidates().build(),
            to: Some("k3"),
            stalled: &[],
            want: Err("keeper k3 has no db in the cluster"),
        },
        CandidateCase {
            name: "named: an unknown keeper",
            cd: candidates().build(),
            to: Some("k9"),
            stalled: &[],
            want: Err("keeper k9 has no db in the cluster"),
        },
        CandidateCase {
            name: "default: none eligible, every reason given",
            cd: candidates()
                .adjust_keeper("k1", |k| k.can_be_master = false)
                .adjust_db("db2", |db| db.status.healthy = false)
                .build(),
            to: None,
            stalled: &[],
            want: Err("no standby may become primary (keeper k1: it cannot be master (--can-be-master=false); keeper k2: its db is not healthy)"),
        },
        CandidateCase {
            name: "default: no standby at all",
            cd: CdBuilder::new()
                .keeper("k0", true)
                .db("db0", "k0", DbRole::Master, 1000)
                .master("db0")
                .build(),
            to: None,
            stalled: &[],
            want: Err("no standby to switch over to"),
        },
    ];
    for case in cases {
        let master = case.cd.master_db().expect("a master");
        let mut rules = election_rules(master, 1000);
        rules.stalled = case.stalled.iter().map(|u| DbUid::new(*u)).collect();
        let to = case.to.map(KeeperUid::new);
        let got = switchover_candidate(&case.cd, master, to.as_ref(), &rules);
        let want = case.want.map(DbUid::new).map_err(str::to_string);
        assert_eq!(got, want, "{}", case.name);
    }
}

// ---------------------------------------------------------------------------------------
// 8. dbRestartTimeout
// ---------------------------------------------------------------------------------------

/// failInterval 10s, dbRestartTimeout 3s: far enough apart to tell which one applied.
const RESTART: &str = r#"{"failInterval": "10s", "dbRestartTimeout": "3s"}"#;

/// Every live keeper reports, k0 that no postgres runs.
fn k0_down(w: &mut World) {
    w.report_live();
    w.report_with("k0", |s| {
        s.healthy = false;
        s.down = true;
    });
}

fn restart_world() -> World {
    let w = World::normal_setup(RESTART, &["k0", "k1", "k2"], &["p1"], |w| {
        for (k, x) in [("k0", 1000), ("k1", 900), ("k2", 950)] {
            w.keeper(k).xlog = x;
        }
    });
    assert_eq!(w.keeper_of(&w.master_uid()), "k0");
    assert_eq!(w.spec.fail_interval, secs(10));
    assert_eq!(w.spec.db_restart_timeout, secs(3));
    w
}

#[test]
fn a_live_keeper_reporting_its_primary_down_fails_it_over_after_db_restart_timeout() {
    let mut w = restart_world();
    let old = w.master_uid();
    k0_down(&mut w);
    let out = w.step_after(secs(1));
    let t1 = w.now;
    assert!(has(&out.events, "db is not healthy"));
    for s in 1..=3 {
        k0_down(&mut w);
        let out = w.step_at(t1 + secs(s));
        assert!(!has(&out.events, "master db is failed"), "t1+{s}");
        assert_eq!(out.data.cluster.status.master.as_ref(), Some(&old));
    }
    k0_down(&mut w);
    let out = w.step_at(t1 + secs(3) + ms(1));
    assert!(has(&out.events, "master db is failed"));
    assert!(has(&out.events, "electing db as the new master"));
    assert_eq!(w.keeper_of(&w.master_uid()), "k2");
}

#[test]
fn wake_at_leads_to_the_failover_just_after_db_restart_timeout() {
    let mut w = restart_world();
    k0_down(&mut w);
    let mut out = w.step_after(secs(1));
    let t1 = w.now;
    // The sentinel steps only when it asks to; k0 keeps reporting its postgres down.
    for _ in 0..20 {
        let at = out
            .wake_at
            .expect("a deadline while the restart timeout runs");
        assert!(at <= t1 + secs(3) + ms(5), "{:?}", at - t1);
        k0_down(&mut w);
        out = w.step_at(at);
        if has(&out.events, "master db is failed") {
            break;
        }
    }
    assert!(has(&out.events, "electing db as the new master"));
    assert!(w.now > t1 + secs(3), "{:?}", w.now - t1);
}

#[test]
fn a_primary_back_up_within_db_restart_timeout_is_not_failed_over_and_its_clock_restarts() {
    let mut w = restart_world();
    let old = w.master_uid();
    let t1 = w.now + secs(1);
    // Down at t1..t1+2, up at t1+3, down again from t1+4.
    for s in 0..=7 {
        if s == 3 {
            w.report_live();
        } else {
            k0_down(&mut w);
        }
        let out = w.step_at(t1 + secs(s));
        assert!(!has(&out.events, "master db is failed"), "t1+{s}");
        assert_eq!(out.data.cluster.status.master.as_ref(), Some(&old));
    }
    k0_down(&mut w);
    let out = w.step_at(t1 + secs(7) + ms(1));
    assert!(has(&out.events, "master db is failed"));
}

#[test]
fn a_silent_keeper_is_judged_by_fail_interval_not_db_restart_timeout() {
    let mut w = restart_world();
    let old = w.master_uid();
    w.step_after(secs(1));
    let last = w.now;
    w.keeper("k0").alive = false;
    for s in 1..=10 {
        let out = w.step_at(last + secs(s));
        assert!(!has(&out.events, "master db is failed"), "last+{s}");
        assert_eq!(out.data.cluster.status.master.as_ref(), Some(&old));
    }
    let out = w.step_at(last + secs(10) + ms(1));
    assert!(has(&out.events, "master db is failed"));
    assert!(has(&out.events, "electing db as the new master"));
}

// ---------------------------------------------------------------------------------------
// 9. wake_at
// ---------------------------------------------------------------------------------------

#[test]
fn wake_at_leads_to_the_failover_just_after_a_silent_primarys_fail_interval() {
    let mut w = World::normal(&["k0", "k1", "k2"], &["p1"]);
    let mut out = w.step_after(secs(1));
    let last = w.now;
    let fail = w.spec.fail_interval;
    w.keeper("k0").alive = false;
    // The sentinel steps only when it asks to; the other keepers publish at each step.
    for _ in 0..20 {
        let at = out
            .wake_at
            .expect("a deadline while k0's failInterval runs");
        assert!(
            at <= last + fail + ms(5),
            "a deadline past the failInterval: {at:?}"
        );
        out = w.step_at(at);
        if has(&out.events, "master db is failed") {
            break;
        }
    }
    assert!(has(&out.events, "electing db as the new master"));
    assert!(
        w.now > last + fail && w.now <= last + fail + ms(5),
        "{:?}",
        w.now - last
    );
}

#[test]
fn stepping_at_wake_at_with_nothing_new_in_the_store_yields_the_failover_decision() {
    let mut w = World::normal(&["k0", "k1", "k2"], &["p1"]);
    let mut out = w.step_after(secs(1));
    let last = w.now;
    let fail = w.spec.fail_interval;
    for _ in 0..20 {
        let at = out.wake_at.expect("a deadline");
        assert!(at <= last + fail + ms(5), "{at:?}");
        w.now = at;
        out = w.step_unpublished();
        if has(&out.events, "master db is failed") {
            break;
        }
        assert!(w.now <= last + fail, "failed too early");
    }
    assert!(has(&out.events, "master db is failed"));
    assert!(w.now > last + fail && w.now <= last + fail + ms(5));
}

#[test]
fn wake_at_names_the_end_of_the_grace_period() {
    let mut r = Run::new("{}");
    r.request(None, secs(30), ms(500));
    r.step();
    let out = r.step();
    let held_since = r.w.now;
    assert_eq!(phase(&out.data), Some(SwitchoverPhase::Holding));
    let at = out.wake_at.expect("a deadline");
    assert!(
        at > held_since + ms(500) - ms(1) && at <= held_since + ms(500) + ms(5),
        "{:?}",
        at - held_since
    );
    r.w.now = at;
    let out = r.w.step_unpublished();
    assert_eq!(phase(&out.data), Some(SwitchoverPhase::Halting));
}

// ---------------------------------------------------------------------------------------
// A target that dies before it serves: the cleanly stopped old primary comes back.
// ---------------------------------------------------------------------------------------

/// The target is named primary (phase Promoting) and dies before it serves. The old primary's
/// keeper is alive, its db stopped cleanly at the final position, and no client reached the
/// target (the proxies held): the old primary has every commit.
fn target_dies_while_promoting(overrides: &str) -> (Run, Lsn) {
    let mut r = Run::new(overrides);
    r.request(None, secs(30), secs(1));
    let out = r.step_until(is_phase(SwitchoverPhase::Promoting));
    let final_lsn = out
        .data
        .cluster
        .status
        .switchover
        .as_ref()
        .unwrap()
        .final_lsn;
    let k = r.w.keeper_of(&r.target());
    r.w.keeper(&k).alive = false;
    (r, final_lsn.unwrap())
}

#[test]
fn async_a_target_dying_before_it_serves_never_costs_the_old_primarys_final_wal() {
    let (mut r, final_lsn) = target_dies_while_promoting("{}");
    r.step_until(|cd| cd.proxy.spec.master_db_uid.is_some());
    let serving = r.w.master();
    assert!(
        serving.status.x_log_pos >= final_lsn,
        "keeper {} serves at {}, behind the old primary's final position {final_lsn}",
        serving.spec.keeper_uid,
        serving.status.x_log_pos
    );
}

#[test]
fn sync_a_target_dying_before_it_serves_lets_the_cleanly_stopped_old_primary_serve_again() {
    let (mut r, _) = target_dies_while_promoting(SYNC_1_1);
    // Panics when no primary serves within 30 sleep intervals.
    r.step_until(|cd| cd.proxy.spec.master_db_uid.is_some());
    assert_eq!(r.w.keeper_of(&r.w.master_uid()), "k0");
}

#[test]
fn wake_at_names_the_removal_of_a_dead_keeper() {
    let mut w = World::normal_with(
        r#"{"maxStandbysPerSender": 1, "deadKeeperRemovalInterval": "30s"}"#,
        &["k0", "k1", "k2"],
        &[],
    );
    let free = ["k0", "k1", "k2"]
        .into_iter()
        .find(|k| w.cd.db_of_keeper(&KeeperUid::new(*k)).is_none())
        .expect("a keeper without a db");
    let last = w.now;
    w.keeper(free).alive = false;
    for s in 1..30 {
        w.step_at(last + secs(s));
    }
    let out = w.step_at(last + ms(29_500));
    assert!(w.cd.keepers.contains_key(&KeeperUid::new(free)));
    let at = out.wake_at.expect("a deadline");
    assert!(
        at <= last + secs(30) + ms(5),
        "wakes {:?} after the removal is due",
        at - last - secs(30)
    );
    let out = w.step_at(last + secs(30) + ms(1));
    assert!(has(&out.events, "removing old dead keeper"));
}

/// A postgres that runs but does not answer (overloaded, a stuck probe) is not restarting:
/// it gets failInterval, not dbRestartTimeout.
#[test]
fn a_primary_that_runs_but_does_not_answer_gets_fail_interval() {
    let mut w = restart_world();
    let old = w.master_uid();
    let t1 = w.now + secs(1);
    for s in 0..=10 {
        w.report_live();
        w.report_with("k0", |s| s.healthy = false);
        let out = w.step_at(t1 + secs(s));
        assert!(!has(&out.events, "master db is failed"), "t1+{s}");
        assert_eq!(out.data.cluster.status.master.as_ref(), Some(&old));
    }
    w.report_live();
    w.report_with("k0", |s| s.healthy = false);
    let out = w.step_at(t1 + secs(10) + ms(1));
    assert!(has(&out.events, "master db is failed"));
}
