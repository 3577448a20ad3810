//! Properties of the sentinel's planner over random histories of a 3-keeper, 2-proxy cluster:
//! keepers publishing or going silent, their positions moving, proxies acknowledging or not,
//! synchronous replication turned on and off, primaries reporting random sets of standbys in
//! sync, primaries moving to new timelines and standbys following them or reporting a
//! timeline behind their position, reports delivered late and out of order, time advancing
//! by random amounts. Checked after every step.

mod common;

use common::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use stolon_cluster::{
    ClusterData, ClusterPhase, DbRole, DbUid, Generation, KeeperUid, Lsn, TimelineId,
    TimelineSwitch,
};
use stolon_engine::health::{answer, Check, Facts};
use stolon_engine::sentinel::{self, Memory, Observations, StepOutput, PROXY_FENCE_MARGIN};

const KEEPERS: [&str; 3] = ["k0", "k1", "k2"];
const PROXIES: [&str; 2] = ["p0", "p1"];

#[derive(Debug, Clone)]
enum Op {
    /// Time passes (milliseconds).
    Advance(u64),
    /// The keeper publishes its db as it sees it: converged, at its position.
    Report(usize),
    /// The keeper publishes its db as not answering.
    ReportUnhealthy(usize),
    /// The keeper's WAL position moves forward (seen at its next report).
    Write(usize, u64),
    /// The keeper stops publishing; its info stays in the store.
    KeeperSilent(usize),
    KeeperAlive(usize),
    /// The keeper's info expires from the store.
    KeeperGone(usize),
    /// The proxy reports the generation it reads (true) or keeps its old one (false).
    ProxyAcks(usize, bool),
    ProxySilent(usize),
    ProxyAlive(usize),
    /// The proxy's info expires from the store.
    ProxyGone(usize),
    /// Another sentinel becomes leader: the memory starts empty.
    NewLeader,
    /// `stolonctl update` turns synchronous replication on or off.
    SyncMode(bool),
    /// From its next report on, the keeper gives as in sync the dbs of the keepers whose bit
    /// is set (as they are now)...
    ReportSync(usize, u8),
    /// ...or, again, the synchronous standbys of its spec whose keepers are alive.
    AutoSync(usize),
    /// The keeper's reports reach the sentinel one publish late (true), or on time again.
    Lag(usize, bool),
    /// The keeper moves to a new timeline that forks from its current one at its position,
    /// as a promoted primary does...
    NewTimeline(usize),
    /// ...and another takes that timeline (a standby that follows it, or was rewound)...
    Follow(usize, usize),
    /// ...or reports one timeline less than it is on (a standby's checkpoint lagging
    /// behind a timeline switch).
    TimelineBehind(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..KEEPERS.len();
    let p = 0..PROXIES.len();
    prop_oneof![
        6 => (0u64..8_000).prop_map(Op::Advance),
        6 => k.clone().prop_map(Op::Report),
        1 => k.clone().prop_map(Op::ReportUnhealthy),
        2 => (k.clone(), 0u64..1_500).prop_map(|(k, n)| Op::Write(k, n)),
        1 => k.clone().prop_map(Op::KeeperSilent),
        2 => k.clone().prop_map(Op::KeeperAlive),
        1 => k.clone().prop_map(Op::KeeperGone),
        2 => (p.clone(), any::<bool>()).prop_map(|(p, a)| Op::ProxyAcks(p, a)),
        1 => p.clone().prop_map(Op::ProxySilent),
        1 => p.clone().prop_map(Op::ProxyAlive),
        1 => p.prop_map(Op::ProxyGone),
        1 => Just(Op::NewLeader),
        1 => any::<bool>().prop_map(Op::SyncMode),
        2 => (k.clone(), 0u8..8).prop_map(|(k, m)| Op::ReportSync(k, m)),
        1 => k.clone().prop_map(Op::AutoSync),
        1 => (k.clone(), any::<bool>()).prop_map(|(k, on)| Op::Lag(k, on)),
        1 => k.clone().prop_map(Op::NewTimeline),
        1 => (k.clone(), k.clone()).prop_map(|(k, to)| Op::Follow(k, to)),
        1 => k.clone().prop_map(Op::TimelineBehind),
    ]
}

fn apply(w: &mut World, op: &Op) {
    match *op {
        Op::Advance(ms_) => w.now += ms(ms_),
        Op::Report(k) => w.report(KEEPERS[k]),
        Op::ReportUnhealthy(k) => w.report_with(KEEPERS[k], |s| s.healthy = false),
        Op::Write(k, n) => w.keeper(KEEPERS[k]).xlog += n,
        Op::KeeperSilent(k) => w.keeper(KEEPERS[k]).alive = false,
        Op::KeeperAlive(k) => w.keeper(KEEPERS[k]).alive = true,
        Op::KeeperGone(k) => {
            let sim = w.keeper(KEEPERS[k]);
            sim.alive = false;
            sim.present = false;
        }
        Op::ProxyAcks(p, acks) => w.proxy(PROXIES[p]).acks = acks,
        Op::ProxySilent(p) => w.proxy(PROXIES[p]).alive = false,
        Op::ProxyAlive(p) => w.proxy(PROXIES[p]).alive = true,
        Op::ProxyGone(p) => {
            let sim = w.proxy(PROXIES[p]);
            sim.alive = false;
            sim.present = false;
        }
        Op::NewLeader => w.memory = Memory::default(),
        // A standby cluster's spec never has it in force.
        Op::SyncMode(on) => w.spec.synchronous_replication = on && !w.spec.is_standby_cluster(),
        Op::ReportSync(k, mask) => {
            let dbs: Vec<DbUid> = KEEPERS
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .filter_map(|(_, k)| w.cd.db_of_keeper(&(*k).into()).map(|db| db.uid.clone()))
                .collect();
            w.keeper(KEEPERS[k]).in_sync = Some(dbs);
        }
        Op::AutoSync(k) => w.keeper(KEEPERS[k]).in_sync = None,
        Op::Lag(k, on) => w.keeper(KEEPERS[k]).lag = on,
        Op::NewTimeline(k) => {
            let sim = w.keeper(KEEPERS[k]);
            sim.history.push(TimelineSwitch {
                timeline_id: TimelineId(sim.timeline),
                switch_point: Lsn(sim.xlog),
            });
            sim.timeline += 1;
        }
        Op::Follow(k, to) => {
            let (timeline, history) = {
                let leader = w.keeper(KEEPERS[to]);
                (leader.timeline, leader.history.clone())
            };
            let sim = w.keeper(KEEPERS[k]);
            sim.timeline = timeline;
            sim.history = history;
        }
        Op::TimelineBehind(k) => {
            let sim = w.keeper(KEEPERS[k]);
            sim.timeline = sim.timeline.saturating_sub(1).max(1);
        }
    }
}

/// What must hold of every cluster data the planner writes, and between consecutive ones.
#[derive(Debug, Clone, Default)]
struct Watch {
    proxy_generation: Generation,
    /// The highest generation each db uid was ever written with.
    db_generations: BTreeMap<DbUid, Generation>,
}

impl Watch {
    fn check(&mut self, cd: &ClusterData) -> Result<(), TestCaseError> {
        let ms = masters(cd);
        prop_assert!(ms.len() <= 1, "more than one master role: {ms:?}");

        prop_assert!(
            cd.proxy.generation >= self.proxy_generation,
            "proxy generation went back from {} to {}",
            self.proxy_generation,
            cd.proxy.generation
        );
        self.proxy_generation = cd.proxy.generation;
        for db in cd.dbs.values() {
            let seen = self.db_generations.entry(db.uid.clone()).or_default();
            prop_assert!(
                db.generation >= *seen,
                "db {} generation went back from {} to {}",
                db.uid,
                seen,
                db.generation
            );
            *seen = db.generation;
        }

        if cd.cluster.status.phase == ClusterPhase::Normal {
            let master = cd.cluster.status.master.as_ref();
            prop_assert!(
                master.is_some_and(|m| cd.dbs.contains_key(m)),
                "cluster.status.master {master:?} is not a db"
            );
        }

        if let Some(target) = &cd.proxy.spec.master_db_uid {
            prop_assert!(
                masters(cd).contains(&target),
                "proxies target {}, neither a primary nor a standby leader",
                target
            );
            prop_assert_eq!(cd.cluster.status.master.as_ref(), Some(target));
        }

        // The keepers' `/primary`: even if every instance were writable, at most one says
        // yes, the one the proxies route to.
        let spec = valid("{}");
        let yes: Vec<&KeeperUid> = cd
            .keepers
            .keys()
            .filter(|keeper| {
                let facts = Facts {
                    in_recovery: Some(false),
                    view: Some((cd, &spec)),
                    keeper,
                    sync_gate: false,
                    fenced: false,
                };
                answer(Check::Primary, &facts).ok
            })
            .collect();
        prop_assert!(yes.len() <= 1, "several keepers answer /primary: {yes:?}");
        if let Some(keeper) = yes.first() {
            let db = cd.db_of_keeper(keeper).map(|db| &db.uid);
            prop_assert_eq!(db, cd.proxy.spec.master_db_uid.as_ref());
        }

        let mut owners = BTreeMap::new();
        for db in cd.dbs.values() {
            let other = owners.insert(&db.spec.keeper_uid, &db.uid);
            prop_assert!(
                other.is_none(),
                "keeper {} owns two dbs",
                db.spec.keeper_uid
            );
        }
        Ok(())
    }
}

/// The fencing rule of the failover handshake: a db gets the master role only while the
/// proxies are told to route nowhere and every proxy that published within its proxyTimeout
/// plus the fence margin has acknowledged that; and a db has the master role only as
/// `cluster.status.master`.
fn check_fencing(
    w: &World,
    input: &ClusterData,
    output: &ClusterData,
) -> Result<(), TestCaseError> {
    for uid in masters(output) {
        prop_assert_eq!(output.cluster.status.master.as_ref(), Some(uid));
        let promoted = input
            .dbs
            .get(uid)
            .is_some_and(|db| db.spec.role == DbRole::Standby && !db.spec.follows_remote());
        if !promoted {
            continue;
        }
        prop_assert_eq!(output.proxy.spec.master_db_uid.as_ref(), None);
        for p in w
            .proxies
            .values()
            .filter(|p| p.present && !p.info_uid.is_empty())
        {
            if w.now.saturating_sub(p.published_at) <= p.timeout + PROXY_FENCE_MARGIN {
                prop_assert_eq!(
                    p.generation,
                    output.proxy.generation,
                    "{} promoted while live proxy {} is on an old generation",
                    uid,
                    p.uid
                );
            }
        }
    }
    Ok(())
}

/// The handshakes whose next stage the planner takes on the very next step, even at the same
/// time, by design: (event of the step that opened it, event of the step that continues it).
/// Each is one compare-and-swap write of its own.
const CONTINUATIONS: [(&str, &str); 4] = [
    ("db failed to initialize", "initializing cluster"),
    (
        "electing db as the new master",
        "proxies fenced: promoting db",
    ),
    (
        "electing db as the new master",
        "proxies fenced: making db the standby leader, following the remote primary",
    ),
    (
        "reinstating the old master db: the standby elected to replace it failed before serving",
        "proxies may now route to the master db",
    ),
];

/// Whether stepping `out` again, giving `again`, is one of the [`CONTINUATIONS`] the
/// planner may take at the same time.
fn continues(out: &StepOutput, again: &StepOutput) -> bool {
    CONTINUATIONS
        .iter()
        .any(|(opened, next)| has(&out.events, opened) && has(&again.events, next))
}

/// Synchronous replication: a failover elects only a db the failed primary listed in its
/// spec *and* knew in sync; and a db the primary waits for (listed in its spec) is never
/// removed by the step that reads it there: it must leave the spec first. Unless it is
/// invalid (it cannot stream from the primary: another system, a later timeline, past the
/// fork point), which makes it no failover candidate either: [`check_evidence`] checks that
/// judgment was made on a report the primary made after it.
fn check_sync(input: &ClusterData, out: &StepOutput) -> Result<(), TestCaseError> {
    let output = &out.data;
    let (Some(old), Some(new)) = (
        input.cluster.status.master.as_ref(),
        output.cluster.status.master.as_ref(),
    ) else {
        return Ok(());
    };
    let Some(primary) = input.dbs.get(old) else {
        return Ok(());
    };
    if new != old && primary.spec.synchronous_replication {
        let spec: BTreeSet<&DbUid> = primary.spec.synchronous_standbys.iter().collect();
        let known: BTreeSet<&DbUid> = primary.status.synchronous_standbys.iter().collect();
        prop_assert!(
            spec.contains(new) && known.contains(new),
            "elected {} in synchronous mode, not in spec {:?} ∩ status {:?} of failed {}",
            new,
            spec,
            known,
            old
        );
    }
    // Whatever the mode, the elected db is never behind a healthy known synchronous standby
    // of the failed primary that was also eligible (same timeline, can be master), as the
    // step read their reports.
    if new != old
        && input
            .dbs
            .get(new)
            .is_some_and(|db| db.spec.role == DbRole::Standby)
    {
        let elected = &output.dbs[new];
        for uid in &primary.status.synchronous_standbys {
            let Some(sync) = output.dbs.get(uid) else {
                continue;
            };
            let eligible = sync.status.healthy
                && sync.status.timeline_id == elected.status.timeline_id
                && primary.spec.synchronous_standbys.contains(uid)
                && output
                    .keepers
                    .get(&sync.spec.keeper_uid)
                    .is_some_and(|k| k.status.can_be_master);
            prop_assert!(
                !eligible || sync.status.x_log_pos <= elected.status.x_log_pos,
                "elected {} at {} behind healthy synchronous standby {} at {}",
                new,
                elected.status.x_log_pos,
                uid,
                sync.status.x_log_pos
            );
        }
    }
    let invalid: Vec<&str> = out
        .events
        .iter()
        .filter(|e| e.message() == "removing invalid db")
        .flat_map(|e| fields(e, "db"))
        .collect();
    for uid in &primary.spec.synchronous_standbys {
        if input.dbs.contains_key(uid) && !invalid.contains(&uid.as_str()) {
            prop_assert!(
                output.dbs.contains_key(uid),
                "synchronous standby {} of {} removed while listed in the spec",
                uid,
                old
            );
        }
    }
    Ok(())
}

/// What a step orders that destroys a standby's data or starts a base backup, each only on
/// evidence a dead primary cannot give: a standby is given up (invalid, or missing WAL) only
/// in a step where the primary's keeper published a new info, so its report is the newest;
/// a free keeper gets a db to resync only if the primary's keeper published no earlier
/// than it. Once a primary's info stops changing, neither happens again.
fn check_evidence(
    w: &World,
    step: u64,
    input: &ClusterData,
    out: &StepOutput,
) -> Result<(), TestCaseError> {
    let Some(master) = input.master_db() else {
        return Ok(());
    };
    let published = |k: &KeeperUid| w.keepers.get(k).and_then(|sim| sim.published_step);
    let master_published = published(&master.spec.keeper_uid);
    for event in &out.events {
        let removal = event.message() == "removing invalid db"
            || event.message()
                == "removing db that won't be able to sync due to missing wals on current master";
        if removal {
            prop_assert_eq!(
                master_published,
                Some(step),
                "{} while the primary {} last published at step {:?} (now {})",
                event,
                master.uid,
                master_published,
                step
            );
        }
        if event.message() == "added new standby db" {
            let keeper = KeeperUid::new(fields(event, "keeper")[0]);
            prop_assert!(
                master_published >= published(&keeper),
                "{} while the primary {} last published at step {:?}, before the keeper at {:?}",
                event,
                master.uid,
                master_published,
                published(&keeper)
            );
        }
    }
    Ok(())
}

/// One step as [`World::step`] does it, checked against the invariants; then the same step
/// again on its own output, at the same time, with the same observations and a clone of the
/// memory it left: it must change nothing, unless it continues one of the [`CONTINUATIONS`],
/// and then a fixpoint must come within two more steps.
fn step_checked(w: &mut World, watch: &mut Watch) -> Result<StepOutput, TestCaseError> {
    w.publish();
    let (keepers, proxies) = w.observations();
    let obs = Observations {
        keepers: &keepers,
        proxies: &proxies,
    };
    let seed = w.next_seed();
    let input = w.cd.clone();
    let first = sentinel::step(w.now, &input, &w.spec, obs, &mut w.memory, seed);
    watch.check(&first.data)?;
    check_fencing(w, &input, &first.data)?;
    check_sync(&input, &first)?;
    check_evidence(w, w.steps, &input, &first)?;
    w.cd = first.data.clone();

    let mut memory = w.memory.clone();
    let mut watch = watch.clone();
    let mut out = first.clone();
    for _ in 0..3 {
        let again = sentinel::step(w.now, &out.data, &w.spec, obs, &mut memory, seed);
        let again_data = again.data.clone();
        if again_data == out.data {
            return Ok(first);
        }
        prop_assert!(
            continues(&out, &again),
            "stepping again at the same time changed the data\n{}\n\
             events: {:?}\nagain: {:?}",
            diff(&out.data, &again_data).join("\n"),
            messages(&out.events),
            messages(&again.events)
        );
        watch.check(&again.data)?;
        check_fencing(w, &out.data, &again.data)?;
        check_sync(&out.data, &again)?;
        // The same observations as the first step's: what was new there is new here.
        check_evidence(w, w.steps, &out.data, &again)?;
        out = again;
    }
    Err(TestCaseError::fail("no fixpoint at the same time"))
}

/// The JSON paths where two cluster data differ, with both values.
fn diff(a: &ClusterData, b: &ClusterData) -> Vec<String> {
    fn walk(path: String, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let null = serde_json::Value::Null;
                    let (va, vb) = (x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null));
                    walk(format!("{path}.{k}"), va, vb, out);
                }
            }
            _ if a != b => out.push(format!("{path}: {a} -> {b}")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    let (a, b) = (
        serde_json::to_value(a).unwrap(),
        serde_json::to_value(b).unwrap(),
    );
    walk(String::new(), &a, &b, &mut out);
    out
}

/// The cluster spec of one history.
#[derive(Debug, Clone)]
struct Setup {
    /// A standby cluster: its master db is a standby leader following a remote primary.
    standby_cluster: bool,
    synchronous: bool,
    min_sync: u16,
    max_sync: u16,
    max_standbys_per_sender: u16,
}

fn setup() -> impl Strategy<Value = Setup> {
    (any::<bool>(), any::<bool>(), 0u16..=2, 1u16..=2, 1u16..=3).prop_map(
        |(standby_cluster, synchronous, min, max, per)| Setup {
            standby_cluster,
            synchronous,
            min_sync: min.min(max),
            max_sync: max,
            max_standbys_per_sender: per,
        },
    )
}

fn run(setup: &Setup, start_normal: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    let standby_cluster = if setup.standby_cluster {
        r#""role": "standby", "initMode": "pitr", "pitrConfig": {"dataRestoreCommand": "restore %d"},
           "standbyConfig": {"standbySettings": {"primaryConninfo": "host=site-a"}},"#
    } else {
        ""
    };
    let overrides = format!(
        r#"{{{standby_cluster} "synchronousReplication": {}, "minSynchronousStandbys": {}, "maxSynchronousStandbys": {}, "maxStandbysPerSender": {}}}"#,
        setup.synchronous, setup.min_sync, setup.max_sync, setup.max_standbys_per_sender
    );
    let mut w = if start_normal {
        World::normal_with(&overrides, &KEEPERS, &PROXIES)
    } else {
        let mut w = World::with_spec(&overrides, &KEEPERS);
        for p in PROXIES {
            w.add_proxy(p);
        }
        w
    };
    let mut watch = Watch::default();
    watch.check(&w.cd)?;
    for (i, op) in ops.iter().enumerate() {
        apply(&mut w, op);
        step_checked(&mut w, &mut watch)
            .map_err(|e| TestCaseError::fail(format!("after op {i} {op:?}: {e}")))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn planner_invariants_hold_after_every_step(
        setup in setup(),
        start_normal in any::<bool>(),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        run(&setup, start_normal, &ops)?;
    }
}
