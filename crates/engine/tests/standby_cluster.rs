//! A standby cluster (role standby): its master db is a standby leader that follows the
//! remote primary, its other dbs follow the leader, its proxies route to the leader. A
//! failover elects a new leader that follows the remote; `stolonctl promote` (role master)
//! makes the leader a primary where it stands; `stolonctl update` re-points it.

mod common;

use common::*;
use stolon_cluster::{ClusterRole, DbRole, FollowConfig, StandbyConfig};
use stolon_engine::keeper::{next_action, Action, Instance, LocalDb};
use stolon_engine::sentinel::switchover_plan;

const STANDBY: &str = r#"{
    "role": "standby",
    "initMode": "pitr",
    "pitrConfig": {"dataRestoreCommand": "pg_basebackup -D %d -h site-a"},
    "standbyConfig": {"standbySettings": {"primaryConninfo": "host=site-a port=5432", "primarySlotName": "site_b"}}
}"#;

fn remote_conninfo(config: Option<&FollowConfig>) -> Option<String> {
    config
        .and_then(FollowConfig::remote)
        .and_then(|r| r.standby_settings.as_ref())
        .and_then(|s| s.primary_conninfo.clone())
}

fn standby_cluster() -> World {
    World::normal_with(STANDBY, &["k0", "k1", "k2"], &["p1"])
}

#[test]
fn the_master_db_of_a_standby_cluster_is_a_standby_leader_that_the_others_follow() {
    let w = standby_cluster();
    let leader = w.master().clone();
    assert_eq!(leader.spec.role, DbRole::Standby);
    assert_eq!(
        remote_conninfo(leader.spec.follow_config.as_ref()).as_deref(),
        Some("host=site-a port=5432")
    );
    assert!(!leader.spec.synchronous_replication);
    let mut followers = Vec::new();
    for db in w.cd.dbs.values().filter(|db| db.uid != leader.uid) {
        assert_eq!(db.spec.role, DbRole::Standby);
        assert_eq!(
            db.spec.follow_config.as_ref().and_then(|f| f.followed_db()),
            Some(&leader.uid),
            "a standby of the standby cluster follows its leader"
        );
        followers.push(db.uid.clone());
    }
    followers.sort();
    assert_eq!(leader.spec.followers, followers);
    assert_eq!(w.cd.proxy.spec.master_db_uid.as_ref(), Some(&leader.uid));
}

#[test]
fn a_failed_standby_leader_is_replaced_by_the_most_advanced_standby_which_follows_the_remote() {
    let mut w = standby_cluster();
    let old = w.master_uid();
    let others: Vec<String> = ["k0", "k1", "k2"]
        .into_iter()
        .filter(|k| *k != w.keeper_of(&old))
        .map(String::from)
        .collect();
    w.set_xlogs(&[(&others[0], 9_000), (&others[1], 9_500)]);
    let new = w.fail_master().expect("a new standby leader");
    assert_eq!(
        w.keeper_of(&new),
        others[1],
        "the highest received position wins"
    );
    assert_eq!(w.cd.proxy.spec.master_db_uid, None, "proxies fenced first");
    w.settle();
    let leader = w.master().clone();
    assert_eq!(leader.uid, new);
    assert_eq!(leader.spec.role, DbRole::Standby, "never promoted");
    assert!(remote_conninfo(leader.spec.follow_config.as_ref()).is_some());
    assert!(has(
        &w.log,
        "proxies fenced: making db the standby leader, following the remote primary"
    ));
    let standby = w.db_of(&others[0]);
    assert_eq!(
        standby
            .spec
            .follow_config
            .as_ref()
            .and_then(|f| f.followed_db()),
        Some(&new),
        "the other standby re-points to the new leader"
    );
    assert_eq!(w.cd.proxy.spec.master_db_uid.as_ref(), Some(&new));
}

#[test]
fn promotion_makes_the_standby_leader_a_primary_where_it_stands() {
    let mut w = standby_cluster();
    let leader = w.master_uid();
    let proxy_generation = w.cd.proxy.generation;
    w.cd.cluster.spec.role = Some(ClusterRole::Master);
    w.spec = w.cd.cluster.spec.validate().unwrap();
    w.report_live();
    w.step();
    let db = w.master().clone();
    assert_eq!(db.uid, leader);
    assert_eq!(db.spec.role, DbRole::Master);
    assert_eq!(db.spec.follow_config, None);
    assert!(has(
        &w.log,
        "promoting the standby leader: the cluster's role is master now"
    ));
    w.settle();
    assert_eq!(w.master_uid(), leader);
    assert_eq!(
        w.cd.proxy.spec.master_db_uid.as_ref(),
        Some(&leader),
        "the proxies stay on the promoted leader"
    );
    assert_eq!(w.cd.proxy.generation, proxy_generation);
    for db in w.cd.dbs.values().filter(|db| db.uid != leader) {
        assert_eq!(
            db.spec.follow_config.as_ref().and_then(|f| f.followed_db()),
            Some(&leader)
        );
    }
}

#[test]
fn an_updated_primary_conninfo_re_points_the_standby_leader() {
    let mut w = standby_cluster();
    let leader = w.master_uid();
    let generation = w.master().generation;
    let mut config: StandbyConfig = w.cd.cluster.spec.standby_config.clone().unwrap();
    config.standby_settings.as_mut().unwrap().primary_conninfo =
        Some("host=site-c port=5432".into());
    w.cd.cluster.spec.standby_config = Some(config);
    w.spec = w.cd.cluster.spec.validate().unwrap();
    w.settle();
    let db = &w.cd.dbs[&leader];
    assert_eq!(
        remote_conninfo(db.spec.follow_config.as_ref()).as_deref(),
        Some("host=site-c port=5432")
    );
    assert!(
        db.generation > generation,
        "the keeper must apply the change"
    );
    assert_eq!(w.master_uid(), leader);
}

#[test]
fn a_standby_cluster_refuses_a_switchover() {
    let w = standby_cluster();
    let refused = switchover_plan(&w.cd, &w.spec, None, Default::default()).unwrap_err();
    assert!(
        refused.contains("a standby cluster has no primary to switch over"),
        "{refused}"
    );
}

/// The keeper of a standby leader starts it following the remote, keeps its followers'
/// slots, and promotes it once its role is master.
#[test]
fn the_standby_leader_keeper_starts_it_keeps_slots_and_promotes_it() {
    let mut w = standby_cluster();
    let leader = w.master().clone();
    let me = leader.spec.keeper_uid.clone();
    let local = LocalDb {
        uid: Some(leader.uid.clone()),
        generation: leader.generation,
        initializing: false,
        system_id: None,
    };
    let boot = w.cd.keepers[&me].status.boot_uuid.clone();
    let stopped = Instance {
        initialized: true,
        standby_signal: true,
        ..Default::default()
    };
    assert_eq!(
        next_action(Some(&w.cd), &me, &boot, &local, &stopped),
        Action::Start { follow: None }
    );
    let running = Instance {
        running: true,
        in_recovery: Some(true),
        slots: Some(Vec::new()),
        ..stopped.clone()
    };
    match next_action(Some(&w.cd), &me, &boot, &local, &running) {
        Action::SyncSlots { create, drop } => {
            assert_eq!(create.len(), leader.spec.followers.len());
            assert!(drop.is_empty());
        }
        other => panic!("expected the followers' slots, got {other:?}"),
    }
    let with_slots = Instance {
        slots: Some(
            leader
                .spec
                .followers
                .iter()
                .map(stolon_engine::keeper::slot_name)
                .collect(),
        ),
        ..running.clone()
    };
    assert_eq!(
        next_action(Some(&w.cd), &me, &boot, &local, &with_slots),
        Action::Idle
    );
    w.cd.cluster.spec.role = Some(ClusterRole::Master);
    w.spec = w.cd.cluster.spec.validate().unwrap();
    w.report_live();
    w.step();
    let promoted = w.cd.dbs[&leader.uid].clone();
    let local = LocalDb {
        generation: promoted.generation,
        ..local
    };
    assert_eq!(
        next_action(Some(&w.cd), &me, &boot, &local, &with_slots),
        Action::Promote
    );
    // A standby of the cluster still follows its db, never the remote.
    let other =
        w.cd.dbs
            .values()
            .find(|db| db.uid != leader.uid)
            .unwrap()
            .clone();
    assert!(!other.spec.follows_remote());
}

/// Writes go nowhere else than the standby leader, whose sessions are read-only; the
/// read-only endpoint balances across the cluster's own standbys.
#[test]
fn the_proxies_route_to_the_standby_leader_and_read_only_sessions_to_its_standbys() {
    let w = standby_cluster();
    let leader = w.master().clone();
    let me = stolon_cluster::ProxyUid::new("p1");
    match stolon_engine::proxy::route(&w.cd, &me) {
        stolon_engine::proxy::Route::To { db, .. } => assert_eq!(db, leader.uid.to_string()),
        other => panic!("expected a route to the standby leader, got {other:?}"),
    }
    let mut targets: Vec<String> = stolon_engine::proxy::read_only_targets(&w.cd, &me, 1000, false)
        .into_iter()
        .map(|t| t.db)
        .collect();
    targets.sort();
    let followers: Vec<String> = leader
        .spec
        .followers
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(targets, followers);
}

/// initMode existing in a standby cluster: the named keeper's data becomes the standby
/// leader, never a primary.
#[test]
fn an_existing_standby_is_adopted_as_the_standby_leader() {
    let mut w = World::with_spec(
        r#"{"role": "standby", "initMode": "existing", "existingConfig": {"keeperUID": "k1"},
            "standbyConfig": {"standbySettings": {"primaryConninfo": "host=site-a"}}}"#,
        &["k0", "k1"],
    );
    w.step();
    let db = w.db_of("k1").clone();
    assert_eq!(w.master_uid(), db.uid);
    assert_eq!(db.spec.init_mode, stolon_cluster::InitMode::Existing);
    assert_eq!(db.spec.role, DbRole::Standby);
    assert!(db.spec.follows_remote());
    w.settle();
    assert_eq!(
        w.cd.cluster.status.phase,
        stolon_cluster::ClusterPhase::Normal
    );
    assert_eq!(w.master().spec.role, DbRole::Standby);
}
