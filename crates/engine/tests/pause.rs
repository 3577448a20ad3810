//! Maintenance mode: while the cluster is paused the sentinel replaces no primary and
//! changes no db's spec, yet keeps the proxies off a primary that is gone; the keepers leave
//! postgres as it is. After the resume, what was held back happens.

mod common;

use common::*;
use stolon_cluster::{ClusterData, DbRole, InitMode, Pause};
use stolon_engine::keeper::{next_action, Action, Instance, LocalDb, WaitReason};

fn pause(cd: &mut ClusterData) {
    cd.cluster.status.pause = Some(Pause {
        reason: "moving k0 to a new disk".into(),
        by: "alice@ops1".into(),
        since: "2026-12-03T18:00:00Z".into(),
    });
}

#[test]
fn a_failed_primary_is_not_replaced_while_paused_and_is_after_the_resume() {
    let mut w = World::normal(&["k0", "k1", "k2"], &["p1"]);
    let old = w.master_uid();
    pause(&mut w.cd);
    let generations: Vec<_> = w.cd.dbs.values().map(|db| db.generation).collect();

    w.keeper(&w.keeper_of(&old)).alive = false;
    let sleep = w.spec.sleep_interval;
    let mut held = 0;
    for _ in 0..30 {
        let out = w.step_after(sleep);
        assert!(!has(&out.events, "electing db as the new master"));
        held += usize::from(has(
            &out.events,
            "failover held back: the cluster is paused",
        ));
    }
    assert!(held > 0, "no step said the failover was held back");
    let ev = find(&w.log, "failover held back: the cluster is paused");
    assert_eq!(fields(ev, "paused_by"), ["alice@ops1"]);
    assert_eq!(fields(ev, "reason"), ["moving k0 to a new disk"]);
    assert_eq!(w.master_uid(), old);
    assert_eq!(w.cd.dbs[&old].spec.role, DbRole::Master);
    assert_eq!(
        w.cd.proxy.spec.master_db_uid, None,
        "the proxies still route to a primary that is gone"
    );
    assert_eq!(
        w.cd.dbs
            .values()
            .map(|db| db.generation)
            .collect::<Vec<_>>(),
        generations,
        "a db's spec changed while paused"
    );

    w.cd.cluster.status.pause = None;
    let new = w.fail_master().expect("a new master after the resume");
    assert_ne!(new, old);
}

#[test]
fn a_primary_back_while_paused_gets_the_proxies_again() {
    let mut w = World::normal(&["k0", "k1"], &["p1"]);
    let old = w.master_uid();
    pause(&mut w.cd);
    let k = w.keeper_of(&old);
    w.keeper(&k).alive = false;
    let sleep = w.spec.sleep_interval;
    for _ in 0..10 {
        w.step_after(sleep);
    }
    assert_eq!(w.cd.proxy.spec.master_db_uid, None);
    // The operator restarted it by hand.
    w.keeper(&k).alive = true;
    w.settle();
    assert_eq!(w.cd.proxy.spec.master_db_uid.as_ref(), Some(&old));
    assert_eq!(w.master_uid(), old);
}

#[test]
fn a_paused_keeper_leaves_postgres_as_it_is() {
    let mut cd = CdBuilder::new()
        .keeper("k1", true)
        .db("db-1", "k1", DbRole::Master, 100)
        .adjust_db("db-1", |db| db.spec.init_mode = InitMode::None)
        .master("db-1")
        .build();
    pause(&mut cd);
    let local = LocalDb {
        uid: None,
        generation: Default::default(),
        initializing: false,
        system_id: None,
    };
    // Stopped, a db it does not hold, a stale configuration: each would call for an action.
    for running in [false, true] {
        let pg = Instance {
            running,
            config_stale: true,
            ..Default::default()
        };
        let me = stolon_cluster::KeeperUid::new("k1");
        assert!(
            matches!(
                next_action(Some(&cd), &me, "boot-k1", &local, &pg),
                Action::Wait(WaitReason::Paused)
            ),
            "running {running}"
        );
    }
}
