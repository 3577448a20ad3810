//! Replication lifecycle scenarios: synchronous replication, rejoin, standby management,
//! keeper management. Real etcd and PostgreSQL; assertions through the proxy.

use std::time::Duration;
use stolon_cluster::{DbRole, DbUid};
use stolon_testkit::{
    connect, failing_pg_bin_dir, lost_writes, wait_for_service, wait_until, Ack, Attempt,
    ClusterBuilder, ConnectionProbe, KeeperHandle, KeeperOptions, StoreBackend, TestCluster,
    Writer,
};
use tokio::time::Instant;

const BOOT: Duration = Duration::from_secs(90);
const FAILOVER: Duration = Duration::from_secs(60);
/// Errors scenarios provoke on purpose (killed primaries, their cut connections).
const EXPECTED: &[&str] = &["action failed", "cannot connect to master"];

async fn execute(port: u16, sql: &str) -> Option<()> {
    let client = connect(port).await.ok()?;
    client.batch_execute(sql).await.ok()
}

async fn count(port: u16, table: &str) -> Option<i64> {
    let client = connect(port).await.ok()?;
    let row = client
        .query_one(&format!("select count(*) from {table}"), &[])
        .await
        .ok()?;
    Some(row.get(0))
}

async fn create_table(cluster: &TestCluster, table: &str) {
    let port = cluster.proxy_port();
    let sql = format!("create table {table} (id int primary key)");
    wait_until("creating a table through the proxy", BOOT, || {
        execute(port, &sql)
    })
    .await;
}

/// The db uid a keeper owns now.
async fn db_of(cluster: &TestCluster, i: usize) -> Option<DbUid> {
    let cd = cluster.cluster_data().await?;
    cd.db_of_keeper(&cluster.keepers[i].uid)
        .map(|db| db.uid.clone())
}

/// Waits until keeper `i` owns a healthy standby db that has applied its spec.
async fn wait_for_standby(cluster: &TestCluster, i: usize, timeout: Duration) {
    let uid = cluster.keepers[i].uid.clone();
    wait_until(
        &format!("keeper{i} to be a healthy standby"),
        timeout,
        || async {
            let cd = cluster.cluster_data().await?;
            let db = cd.db_of_keeper(&uid)?;
            (db.spec.role == DbRole::Standby
                && db.status.healthy
                && db.status.in_recovery
                && db.status.current_generation == db.generation)
                .then_some(())
        },
    )
    .await
}

/// Waits until the primary lists `n` standbys as known in sync, and returns them.
async fn wait_for_sync_standbys(cluster: &TestCluster, n: usize) -> Vec<DbUid> {
    wait_until(&format!("{n} known synchronous standbys"), BOOT, || async {
        let cd = cluster.cluster_data().await?;
        let master = cd.master_db()?;
        let known = &master.status.synchronous_standbys;
        (known.len() == n && master.spec.synchronous_standbys == *known).then(|| known.clone())
    })
    .await
}

/// Waits until a write sent after `since` is acknowledged through the proxy, then stops the
/// writer and returns every acknowledgement it got.
async fn writes_resume(writer: Writer, since: Instant) -> Vec<Ack> {
    wait_until("writes through the proxy again", FAILOVER, || async {
        writer.first_acked_sent_after(since)
    })
    .await;
    writer.stop()
}

/// Fails when an acknowledged write is missing from `table` as read through the proxy.
async fn assert_none_lost(cluster: &TestCluster, table: &str, acked: &[Ack]) {
    let lost = lost_writes(cluster.proxy_port(), table, acked, FAILOVER).await;
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}

fn sync_cluster(keepers: usize) -> ClusterBuilder {
    ClusterBuilder::new()
        .keepers(keepers)
        .spec("synchronousReplication", true.into())
        .spec("minSynchronousStandbys", 1.into())
        .spec("maxSynchronousStandbys", 1.into())
}

#[tokio::test(flavor = "multi_thread")]
async fn s_ha_01_sync_replication_standby_is_in_the_reported_set() {
    let cluster = sync_cluster(2).start().await;
    let master = cluster.wait_for_master(BOOT).await;
    let standby = 1 - master;
    wait_for_standby(&cluster, standby, BOOT).await;
    let sync = wait_for_sync_standbys(&cluster, 1).await;
    assert_eq!(Some(&sync[0]), db_of(&cluster, standby).await.as_ref());
    // The primary really waits for it: pg_stat_replication says so.
    let primary_port = cluster.keepers[master].pg_port;
    let client = connect(primary_port).await.unwrap();
    let state: String = client
        .query_one(
            "select sync_state::text from pg_stat_replication where application_name = $1",
            &[&format!("stolon_{}", sync[0])],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "sync");
    create_table(&cluster, "t").await;
    execute(cluster.proxy_port(), "insert into t values (1), (2)")
        .await
        .unwrap();
    // A synchronous commit is on the standby when it returns.
    assert_eq!(count(cluster.keepers[standby].pg_port, "t").await, Some(2));
    cluster.assert_no_unexpected_errors(&[]);
}

/// Synchronous failover under a steady write load: the known synchronous standby is
/// promoted and no acknowledged write is lost.
#[tokio::test(flavor = "multi_thread")]
async fn s_ha_02_sync_failover_loses_no_acknowledged_write() {
    failover_under_load(StoreBackend::Etcd, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s_ha_02_sync_failover_loses_no_acknowledged_write_k8s() {
    failover_under_load(StoreBackend::Kubernetes, true).await;
}

/// Asynchronous failover on the Kubernetes store: a standby takes over, what was written
/// before the standbys caught up is there, and writes resume.
#[tokio::test(flavor = "multi_thread")]
async fn s_ha_02_async_failover_k8s() {
    failover_under_load(StoreBackend::Kubernetes, false).await;
}

/// Kills the primary under a steady write load. Synchronous: the known synchronous standby
/// is promoted and no acknowledged write is lost. Asynchronous: the rows every standby had
/// before the load began are there.
async fn failover_under_load(backend: StoreBackend, sync: bool) {
    let builder = if sync {
        sync_cluster(3)
    } else {
        ClusterBuilder::new().keepers(3)
    };
    let mut cluster = builder.store_backend(backend).start().await;
    let master = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(2, BOOT).await;
    let sync_set = if sync {
        wait_for_sync_standbys(&cluster, 1).await
    } else {
        Vec::new()
    };
    create_table(&cluster, "w").await;
    execute(
        cluster.proxy_port(),
        "insert into w select generate_series(-100, -1)",
    )
    .await
    .expect("the first rows");
    for i in (0..3).filter(|i| *i != master) {
        let port = cluster.keepers[i].pg_port;
        wait_until(
            &format!("keeper{i} to replay the first rows"),
            BOOT,
            || async move { (count(port, "w").await? == 100).then_some(()) },
        )
        .await;
    }
    let writer = Writer::start(cluster.proxy_port(), "w");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let killed = Instant::now();
    cluster.kill_keeper_and_postgres(master);
    let new_master = cluster.wait_for_new_master(master, FAILOVER).await;
    if sync {
        assert_eq!(
            db_of(&cluster, new_master).await.as_ref(),
            Some(&sync_set[0]),
            "the synchronous standby is promoted"
        );
    }
    wait_until("writes through the proxy again", FAILOVER, || async {
        writer.first_acked_sent_after(killed)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked = writer.stop();
    assert!(
        acked.len() > 20,
        "the writer made progress: {}",
        acked.len()
    );
    let first_rows = wait_until("reading back through the proxy", FAILOVER, || async {
        let client = connect(cluster.proxy_port()).await.ok()?;
        let row = client
            .query_one("select count(*) from w where id < 0", &[])
            .await
            .ok()?;
        Some(row.get::<_, i64>(0))
    })
    .await;
    assert_eq!(first_rows, 100, "the rows every standby had");
    if sync {
        assert_none_lost(&cluster, "w", &acked).await;
    }
    cluster.assert_no_unexpected_errors(EXPECTED);
}

/// The old primary, SIGKILLed and restarted after a failover, comes back as a standby of
/// the new primary and receives new rows; it is never a primary again.
async fn old_primary_rejoins(rewind: bool, sync: bool, min_sync: u16) {
    let mut builder = ClusterBuilder::new()
        .keepers(3)
        .spec("usePgrewind", rewind.into());
    if sync {
        builder = builder
            .spec("synchronousReplication", true.into())
            .spec("minSynchronousStandbys", min_sync.into());
    }
    let mut cluster = builder.start().await;
    let master = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(2, BOOT).await;
    create_table(&cluster, "r").await;
    execute(
        cluster.proxy_port(),
        "insert into r select generate_series(1, 100)",
    )
    .await
    .unwrap();
    // Let the standbys report the rows (async mode elects within maxStandbyLag).
    tokio::time::sleep(Duration::from_secs(2)).await;

    cluster.kill_keeper_and_postgres(master);
    let new_master = cluster.wait_for_new_master(master, FAILOVER).await;
    let port = cluster.proxy_port();
    wait_until("a write on the new primary", FAILOVER, || {
        execute(port, "insert into r select generate_series(101, 200)")
    })
    .await;

    // The new primary reports where timeline 1 ended: what tells a diverged standby apart.
    wait_until("the new primary's timeline history", BOOT, || async {
        let cd = cluster.cluster_data().await?;
        let history = &cd.master_db()?.status.timelines_history;
        (history.first()?.timeline_id.0 == 1).then_some(())
    })
    .await;
    let old_port = cluster.keepers[master].pg_port;
    cluster.start_keeper(master);
    cluster.wait_rejoined_never_primary(master, BOOT).await;
    wait_until("new rows on the old primary", BOOT, || async {
        (count(old_port, "r").await? == 200).then_some(())
    })
    .await;
    let restart_log = &cluster.keeper_last_log(master);
    if rewind {
        assert!(
            restart_log.contains("syncing using pg_rewind"),
            "{restart_log}"
        );
        assert!(
            !restart_log.contains("falling back to pg_basebackup"),
            "{restart_log}"
        );
    } else {
        assert!(!restart_log.contains("pg_rewind"), "{restart_log}");
        assert!(
            restart_log.contains("running pg_basebackup"),
            "{restart_log}"
        );
    }
    assert_ne!(new_master, master);
    cluster.assert_no_unexpected_errors(EXPECTED);
}

#[tokio::test(flavor = "multi_thread")]
async fn s_ha_04_old_primary_rejoins_with_pg_rewind() {
    old_primary_rejoins(true, false, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s_ha_04_old_primary_rejoins_with_basebackup() {
    old_primary_rejoins(false, false, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s_ha_04_old_primary_rejoins_sync_with_pg_rewind() {
    old_primary_rejoins(true, true, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s_ha_04_old_primary_rejoins_sync_without_pg_rewind() {
    old_primary_rejoins(false, true, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s_ha_04_old_primary_rejoins_sync_min_synchronous_standbys_0() {
    old_primary_rejoins(true, true, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s_ha_05_frozen_primary_is_replaced_and_rejoins_when_thawed() {
    let cluster = ClusterBuilder::new().keepers(2).start().await;
    let master = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(1, BOOT).await;
    create_table(&cluster, "f").await;
    // Asynchronous replication: only what reached the standby survives the failover.
    let standby_port = cluster.keepers[1 - master].pg_port;
    wait_until("the table to reach the standby", BOOT, || async {
        count(standby_port, "f").await
    })
    .await;
    cluster.freeze_keeper_and_postgres(master, true);
    let new_master = cluster.wait_for_new_master(master, FAILOVER).await;
    let port = cluster.proxy_port();
    wait_until("a write through the proxy", FAILOVER, || {
        execute(port, "insert into f values (1)")
    })
    .await;
    cluster.freeze_keeper_and_postgres(master, false);
    wait_for_standby(&cluster, master, BOOT).await;
    execute(port, "insert into f values (2)").await.unwrap();
    let old_port = cluster.keepers[master].pg_port;
    wait_until("the thawed primary to catch up", BOOT, || async {
        (count(old_port, "f").await? == 2).then_some(())
    })
    .await;
    assert_ne!(new_master, master);
    cluster.assert_no_unexpected_errors(EXPECTED);
}

#[tokio::test(flavor = "multi_thread")]
async fn s_ha_06_failed_standby_is_replaced_by_a_free_keeper() {
    let mut cluster = ClusterBuilder::new()
        .keepers(3)
        .spec("maxStandbysPerSender", 1.into())
        .start()
        .await;
    let master = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(1, BOOT).await;
    let cd = cluster.cluster_data().await.unwrap();
    let standby = (0..3)
        .find(|&i| i != master && cd.db_of_keeper(&cluster.keepers[i].uid).is_some())
        .unwrap();
    let free = 3 - master - standby;
    assert!(
        db_of(&cluster, free).await.is_none(),
        "one keeper is free with maxStandbysPerSender 1"
    );
    let failed_db = db_of(&cluster, standby).await.unwrap();
    cluster.kill_keeper_and_postgres(standby);
    wait_for_standby(&cluster, free, BOOT).await;
    wait_until("the failed standby's db to be removed", BOOT, || async {
        let cd = cluster.cluster_data().await?;
        (!cd.dbs.contains_key(&failed_db)).then_some(())
    })
    .await;
    cluster.assert_no_unexpected_errors(EXPECTED);
}

#[tokio::test(flavor = "multi_thread")]
async fn s_ha_07_lowering_max_standbys_per_sender_removes_the_excess() {
    let cluster = ClusterBuilder::new().keepers(3).start().await;
    cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(2, BOOT).await;
    cluster
        .update_cluster_data(|cd| cd.cluster.spec.max_standbys_per_sender = Some(1))
        .await;
    wait_until("one standby to be removed", BOOT, || async {
        let cd = cluster.cluster_data().await?;
        (cd.dbs.len() == 2).then_some(())
    })
    .await;
    // The keeper left without a db stops its postgres.
    let cd = cluster.cluster_data().await.unwrap();
    let freed = (0..3)
        .find(|&i| cd.db_of_keeper(&cluster.keepers[i].uid).is_none())
        .unwrap();
    wait_until("the freed keeper to stop postgres", BOOT, || async {
        cluster.keepers[freed]
            .postmaster_pid()
            .is_none()
            .then_some(())
    })
    .await;
    cluster.assert_no_unexpected_errors(&[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn s_ha_08_dead_keepers_and_removekeeper() {
    let mut cluster = ClusterBuilder::new()
        .keepers(3)
        .spec("maxStandbysPerSender", 1.into())
        .spec("deadKeeperRemovalInterval", "8s".into())
        .start()
        .await;
    let master = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(1, BOOT).await;
    // The keeper running pg_basebackup does not publish its info meanwhile; when that
    // outlasts the info's TTL the sentinel gives the third keeper a standby too, then removes
    // it once the first is streaming: wait for the steady state, one keeper without a db.
    let free = wait_until("one keeper left without a db", BOOT, || async {
        let cd = cluster.cluster_data().await?;
        (0..3).find(|&i| cd.db_of_keeper(&cluster.keepers[i].uid).is_none())
    })
    .await;
    let standby = 3 - master - free;
    let free_uid = cluster.keepers[free].uid.clone();
    let standby_uid = cluster.keepers[standby].uid.clone();

    // The primary's keeper cannot be removed.
    let refused = cluster.stolonctl(&["removekeeper", cluster.keepers[master].uid.as_str()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("current cluster master db"));

    // A dead keeper without a db goes; a dead keeper owning a db stays.
    cluster.kill_keeper_and_postgres(free);
    cluster.kill_keeper_and_postgres(standby);
    wait_until("the dead free keeper to be removed", BOOT, || async {
        let cd = cluster.cluster_data().await?;
        (!cd.keepers.contains_key(&free_uid)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cd = cluster.cluster_data().await.unwrap();
    assert!(
        cd.keepers.contains_key(&standby_uid),
        "a keeper owning a db is kept"
    );

    let removed = cluster.stolonctl(&["removekeeper", standby_uid.as_str()]);
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    let cd = cluster.cluster_data().await.unwrap();
    assert!(!cd.keepers.contains_key(&standby_uid));
    assert!(cd.db_of_keeper(&standby_uid).is_none());
    cluster.assert_no_unexpected_errors(EXPECTED);
}

async fn failkeeper_fails_over(sync: bool) {
    let builder = if sync {
        sync_cluster(3)
    } else {
        ClusterBuilder::new().keepers(3)
    };
    let cluster = builder.start().await;
    let master = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(2, BOOT).await;
    let sync_set = if sync {
        wait_for_sync_standbys(&cluster, 1).await
    } else {
        Vec::new()
    };
    create_table(&cluster, "k").await;
    let writer = Writer::start(cluster.proxy_port(), "k");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = cluster.stolonctl(&["failkeeper", cluster.keepers[master].uid.as_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let forced = Instant::now();
    let new_master = cluster.wait_for_new_master(master, FAILOVER).await;
    if sync {
        assert_eq!(
            db_of(&cluster, new_master).await.as_ref(),
            Some(&sync_set[0])
        );
    }
    let acked = writes_resume(writer, forced).await;
    if sync {
        assert_none_lost(&cluster, "k", &acked).await;
    }
    assert!(cluster
        .sentinel_logs()
        .contains("keeper forced to fail (stolonctl failkeeper)"));
    let unknown = cluster.stolonctl(&["failkeeper", "nosuchkeeper"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("keeper doesn't exist"));
    cluster.assert_no_unexpected_errors(EXPECTED);
}

#[tokio::test(flavor = "multi_thread")]
async fn s_ha_09_failkeeper_async() {
    failkeeper_fails_over(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s_ha_09_failkeeper_sync() {
    failkeeper_fails_over(true).await;
}

/// Equally advanced standbys: the higher --priority wins; --can-be-master=false is never
/// chosen even when it has the highest priority.
#[tokio::test(flavor = "multi_thread")]
async fn s_ha_10_candidate_choice_priority_and_can_be_master() {
    let mut cluster = ClusterBuilder::new()
        .keeper(KeeperOptions::default())
        .keeper(KeeperOptions {
            priority: 1,
            ..Default::default()
        })
        .keeper(KeeperOptions {
            priority: 5,
            ..Default::default()
        })
        .keeper(KeeperOptions {
            priority: 9,
            can_be_master: false,
            ..Default::default()
        })
        .start()
        .await;
    let master = cluster.wait_for_master(BOOT).await;
    assert_eq!(
        master, 0,
        "the initial primary is the first keeper that can be master"
    );
    cluster.wait_for_standbys(3, BOOT).await;
    // Idle: every standby reports the primary's position.
    wait_until("standbys at the same position", BOOT, || async {
        let cd = cluster.cluster_data().await?;
        let positions: std::collections::BTreeSet<_> =
            cd.dbs.values().map(|db| db.status.x_log_pos).collect();
        (positions.len() == 1).then_some(())
    })
    .await;
    // stolonctl status tells beforehand who would be elected, and why the others would not.
    let status = cluster.stolonctl(&["status", "--format", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let eligibility = |i: usize| {
        status["keepers"][i]["master_eligibility"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        eligibility(2).starts_with("would be elected"),
        "{}",
        eligibility(2)
    );
    assert!(
        eligibility(3).contains("--can-be-master=false"),
        "{}",
        eligibility(3)
    );
    assert!(
        eligibility(1).contains("lower priority"),
        "{}",
        eligibility(1)
    );
    cluster.kill_keeper_and_postgres(master);
    let new_master = cluster.wait_for_new_master(master, FAILOVER).await;
    assert_eq!(
        new_master, 2,
        "highest priority among the equally advanced that can be master"
    );
    let cd = cluster.cluster_data().await.unwrap();
    assert!(
        cd.cluster.status.master_choice.contains("priority 5"),
        "{}",
        cd.cluster.status.master_choice
    );
    let logs = cluster.sentinel_logs();
    assert!(
        logs.contains("it cannot be master (--can-be-master=false)"),
        "rejections are logged"
    );
    assert!(logs.contains("lower priority"), "rejections are logged");
    cluster.assert_no_unexpected_errors(EXPECTED);
}

#[tokio::test(flavor = "multi_thread")]
async fn s_ha_10_can_be_synchronous_replica_false_is_never_synchronous() {
    let cluster = ClusterBuilder::new()
        .keeper(KeeperOptions::default())
        .keeper(KeeperOptions {
            can_be_synchronous_replica: false,
            ..Default::default()
        })
        .keeper(KeeperOptions::default())
        .spec("synchronousReplication", true.into())
        .spec("maxSynchronousStandbys", 2.into())
        .start()
        .await;
    let master = cluster.wait_for_master(BOOT).await;
    assert_eq!(master, 0);
    cluster.wait_for_standbys(2, BOOT).await;
    let sync = wait_for_sync_standbys(&cluster, 1).await;
    assert_eq!(Some(&sync[0]), db_of(&cluster, 2).await.as_ref());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cd = cluster.cluster_data().await.unwrap();
    let never = db_of(&cluster, 1).await.unwrap();
    assert!(!cd
        .master_db()
        .unwrap()
        .spec
        .synchronous_standbys
        .contains(&never));
    cluster.assert_no_unexpected_errors(&[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn s_init_07_second_keeper_on_the_same_data_dir_fails() {
    let cluster = ClusterBuilder::new().keepers(1).start().await;
    cluster.wait_for_master(BOOT).await;
    let out = std::process::Command::new(stolon_testkit::bin_dir().join("stolon-keeper"))
        .args([
            "--cluster-name",
            "test",
            "--store-backend",
            "etcdv3",
            "--store-endpoints",
        ])
        .arg(&cluster.etcd.endpoint)
        .arg("--data-dir")
        .arg(&cluster.keepers[0].data_dir)
        .args(["--pg-listen-address", "127.0.0.1", "--pg-su-password", "x"])
        .args(["--pg-repl-username", "r", "--pg-repl-password", "y"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("cannot take exclusive lock on data dir"),
        "{text}"
    );
    cluster.assert_no_unexpected_errors(&[]);
}

/// After a keeper restart, postgres left running is stopped and stays down until the
/// sentinel has seen the new keeper process; then it comes back.
#[tokio::test(flavor = "multi_thread")]
async fn keeper_restart_waits_for_the_sentinel_before_starting_postgres() {
    let mut cluster = ClusterBuilder::new().keepers(2).start().await;
    let master = cluster.wait_for_master(BOOT).await;
    let standby = 1 - master;
    wait_for_standby(&cluster, standby, BOOT).await;
    if let Some(mut keeper) = cluster.keepers[standby].process.take() {
        keeper.kill();
    }
    assert!(
        cluster.keepers[standby].postmaster_pid().is_some(),
        "postgres outlives a killed keeper"
    );
    cluster.start_keeper(standby);
    wait_until("the restarted keeper to start postgres", BOOT, || async {
        cluster
            .keeper_last_log(standby)
            .contains("starting database")
            .then_some(())
    })
    .await;
    wait_for_standby(&cluster, standby, BOOT).await;
    let restart = &cluster.keeper_last_log(standby);
    let stopped = restart
        .find("stopping postgres left running by a previous keeper process")
        .expect(restart);
    let waited = restart
        .find("our db boot UID is different than the cluster data one")
        .expect(restart);
    let started = restart.find("starting database").expect(restart);
    assert!(stopped < waited && waited < started, "{restart}");
    cluster.assert_no_unexpected_errors(&[]);
}

/// A resync that crashed midway (the keeper killed during its base backup) is redone when
/// the keeper comes back.
#[tokio::test(flavor = "multi_thread")]
async fn crashed_resync_is_redone() {
    let mut cluster = ClusterBuilder::new().keepers(1).start().await;
    cluster.wait_for_master(BOOT).await;
    // A frozen primary holds the new standby's base backup in the middle.
    cluster.freeze_postgres(0, true);
    cluster
        .keepers
        .push(KeeperHandle::new(&cluster, 1, KeeperOptions::default()));
    cluster.start_keeper(1);
    wait_until("the base backup to start", BOOT, || async {
        cluster
            .keeper_log(1)
            .contains("running pg_basebackup")
            .then_some(())
    })
    .await;
    if let Some(mut keeper) = cluster.keepers[1].process.take() {
        keeper.kill();
    }
    cluster.kill_processes_of(1, "pg_basebackup");
    cluster.freeze_postgres(0, false);
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(cluster.keepers[1].data_dir.join("dbstate")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        state["Initializing"], true,
        "the crash left the resync marked unfinished"
    );

    cluster.start_keeper(1);
    wait_for_standby(&cluster, 1, BOOT).await;
    let restart = &cluster.keeper_last_log(1);
    assert!(
        restart.contains("resyncing the database cluster"),
        "{restart}"
    );
    cluster.assert_no_unexpected_errors(EXPECTED);
}

/// A primary whose data directory disappeared is never initialised again on its own: its
/// keeper refuses, and the sentinel fails over to the standby.
#[tokio::test(flavor = "multi_thread")]
async fn disappeared_data_dir_is_never_reinitialised() {
    let mut cluster = ClusterBuilder::new().keepers(2).start().await;
    let master = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(1, BOOT).await;
    cluster.kill_keeper_and_postgres(master);
    std::fs::remove_dir_all(cluster.keepers[master].data_dir.join("postgres")).unwrap();
    cluster.start_keeper(master);
    let new_master = cluster.wait_for_new_master(master, FAILOVER).await;
    assert_ne!(new_master, master);
    let restart = &cluster.keeper_last_log(master);
    assert!(
        restart.contains("refusing to re-initialise it on our own"),
        "{restart}"
    );
    assert!(
        !restart.contains("initializing the database cluster"),
        "{restart}"
    );
    cluster.assert_no_unexpected_errors(EXPECTED);
}

/// Postgres killed under a live keeper is restarted by it: no failover.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_killed_under_a_live_keeper_is_restarted() {
    let cluster = ClusterBuilder::new()
        .keepers(2)
        .spec("failInterval", "20s".into())
        .start()
        .await;
    let master = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(1, BOOT).await;
    create_table(&cluster, "p").await;
    let pid = cluster.keepers[master].postmaster_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let port = cluster.proxy_port();
    wait_until("writes through the proxy again", FAILOVER, || {
        execute(port, "insert into p values (1)")
    })
    .await;
    assert_eq!(
        cluster.wait_for_master(BOOT).await,
        master,
        "the same primary, restarted"
    );
    assert_ne!(cluster.keepers[master].postmaster_pid(), Some(pid));
    cluster.assert_no_unexpected_errors(EXPECTED);
}

/// The keeper refuses a data directory whose system identifier is not the one it recorded.
#[tokio::test(flavor = "multi_thread")]
async fn keeper_refuses_a_data_dir_of_another_system() {
    let mut cluster = ClusterBuilder::new().keepers(2).start().await;
    let master = cluster.wait_for_master(BOOT).await;
    let standby = 1 - master;
    wait_for_standby(&cluster, standby, BOOT).await;
    cluster.kill_keeper_and_postgres(standby);
    let state_path = cluster.keepers[standby].data_dir.join("dbstate");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state["SystemID"] = "12345".into();
    std::fs::write(&state_path, state.to_string()).unwrap();
    cluster.start_keeper(standby);
    let log_has = |needle: &'static str| {
        let cluster = &cluster;
        async move { cluster.keeper_log(standby).contains(needle).then_some(()) }
    };
    wait_until("the keeper to refuse the data dir", BOOT, || {
        log_has("system identifier differs")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        cluster.keepers[standby].postmaster_pid().is_none(),
        "postgres is not started on it"
    );
    cluster.assert_no_unexpected_errors(EXPECTED);
}

/// Synchronous replication switched on and off on a running cluster.
#[tokio::test(flavor = "multi_thread")]
async fn synchronous_replication_can_be_switched_at_runtime() {
    let cluster = ClusterBuilder::new().keepers(2).start().await;
    let master = cluster.wait_for_master(BOOT).await;
    wait_for_standby(&cluster, 1 - master, BOOT).await;
    let primary_port = cluster.keepers[master].pg_port;
    let names = || async move {
        let client = connect(primary_port).await.ok()?;
        let row = client
            .query_one("show synchronous_standby_names", &[])
            .await
            .ok()?;
        Some(row.get::<_, String>(0))
    };
    assert_eq!(names().await.as_deref(), Some(""));

    cluster
        .update_cluster_data(|cd| cd.cluster.spec.synchronous_replication = Some(true))
        .await;
    let sync = wait_for_sync_standbys(&cluster, 1).await;
    let want = format!("\"stolon_{}\"", sync[0]);
    wait_until(
        "the primary to wait for its synchronous standby",
        BOOT,
        || async { (names().await? == want).then_some(()) },
    )
    .await;

    cluster
        .update_cluster_data(|cd| cd.cluster.spec.synchronous_replication = Some(false))
        .await;
    wait_until("the primary to stop waiting", BOOT, || async {
        names().await?.is_empty().then_some(())
    })
    .await;
    let cd = cluster.cluster_data().await.unwrap();
    assert!(cd.master_db().unwrap().spec.synchronous_standbys.is_empty());
    cluster.assert_no_unexpected_errors(&[]);
}

/// After its postgres restarts in synchronous mode, a primary only lets the internal roles
/// in until its synchronous standby is in sync again.
#[tokio::test(flavor = "multi_thread")]
async fn restarted_sync_primary_admits_only_internal_roles_until_standbys_sync() {
    let cluster = sync_cluster(2)
        .spec("failInterval", "30s".into())
        .start()
        .await;
    let master = cluster.wait_for_master(BOOT).await;
    let standby = 1 - master;
    wait_for_standby(&cluster, standby, BOOT).await;
    wait_for_sync_standbys(&cluster, 1).await;
    let port = cluster.proxy_port();
    execute(port, "create role app login password 'app-secret'")
        .await
        .unwrap();
    let primary_port = cluster.keepers[master].pg_port;
    let app_connects = || async move {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(primary_port)
            .user("app")
            .password("app-secret")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(3));
        match config.connect(tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                drop(client);
                Some(true)
            }
            Err(e)
                if e.as_db_error()
                    .is_some_and(|d| d.message().contains("pg_hba.conf")) =>
            {
                Some(false)
            }
            Err(_) => None,
        }
    };
    wait_until("the app user to get in", BOOT, || async {
        app_connects().await?.then_some(())
    })
    .await;

    // The standby cannot sync while frozen; the primary's postgres dies and its keeper
    // restarts it.
    cluster.freeze_postgres(standby, true);
    let pid = cluster.keepers[master].postmaster_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(
        "the restarted primary to refuse the app user",
        BOOT,
        || async { (!app_connects().await?).then_some(()) },
    )
    .await;
    let su = wait_until("the superuser to get in meanwhile", BOOT, || async {
        connect(primary_port).await.ok()
    })
    .await;
    su.simple_query("select 1").await.unwrap();

    cluster.freeze_postgres(standby, false);
    wait_until(
        "the app user to get in once the standby is in sync",
        BOOT,
        || async { app_connects().await?.then_some(()) },
    )
    .await;
    assert!(cluster.keeper_log(master).contains(
        "not allowing connection as normal users since synchronous replication is enabled"
    ));
    cluster.assert_no_unexpected_errors(EXPECTED);
}

/// The standby elected to replace a lost primary dies before it is promoted (a proxy that
/// does not acknowledge holds the promotion back); then the old
/// primary comes back. In asynchronous mode it has every acknowledged commit and is
/// reinstated; in synchronous mode only a known synchronous standby may take over, so the
/// cluster waits for that one.
async fn failover_fails_midway(sync: bool) {
    let builder = if sync {
        sync_cluster(2)
    } else {
        ClusterBuilder::new().keepers(2)
    };
    let mut cluster = builder.start().await;
    let old = cluster.wait_for_master(BOOT).await;
    let elected = 1 - old;
    wait_for_standby(&cluster, elected, BOOT).await;
    if sync {
        wait_for_sync_standbys(&cluster, 1).await;
    }
    create_table(&cluster, "m").await;
    execute(cluster.proxy_port(), "insert into m values (1)")
        .await
        .unwrap();
    let elected_db = db_of(&cluster, elected).await.unwrap();
    let old_db = db_of(&cluster, old).await.unwrap();

    // A live proxy that never acknowledges (its info is published by the test, always with
    // the generation from before the failover) holds the elected standby unpromoted.
    let generation = cluster.cluster_data().await.unwrap().proxy.generation;
    let store = cluster.store.clone();
    let stubborn = tokio::spawn(async move {
        for n in 0.. {
            let info = stolon_cluster::ProxyInfo {
                info_uid: format!("stubborn-{n}"),
                uid: stolon_cluster::ProxyUid::new("stubborn"),
                generation,
                proxy_timeout: Duration::from_secs(5),
            };
            let _ = stolon_store::publish_info(
                store.as_ref(),
                stolon_store::InfoKind::Proxy,
                "stubborn",
                &info,
                Duration::from_secs(10),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.kill_keeper_and_postgres(old);
    wait_until("the standby to be elected", FAILOVER, || async {
        let cd = cluster.cluster_data().await?;
        (cd.cluster.status.master.as_ref() == Some(&elected_db)).then_some(())
    })
    .await;
    cluster.kill_keeper_and_postgres(elected);
    let cd = cluster.cluster_data().await.unwrap();
    assert_eq!(
        cd.dbs[&elected_db].spec.role,
        DbRole::Standby,
        "killed before its promotion"
    );
    // The stubborn proxy goes away: silent past its proxyTimeout, it is no longer waited for.
    stubborn.abort();

    cluster.start_keeper(old);
    if !sync {
        let master = cluster.wait_for_master(FAILOVER).await;
        assert_eq!(master, old, "the old primary is reinstated");
        assert_eq!(
            db_of(&cluster, old).await,
            Some(old_db),
            "with its own data"
        );
    } else {
        tokio::time::sleep(Duration::from_secs(15)).await;
        let cd = cluster.cluster_data().await.unwrap();
        assert_ne!(
            cd.cluster.status.master.as_ref(),
            Some(&old_db),
            "not in synchronous mode"
        );
        assert!(cluster
            .sentinel_logs()
            .contains("not reinstating the old master"));
        assert_eq!(
            connect(cluster.keepers[old].pg_port).await.ok().map(|_| ()),
            None,
            "the old primary's postgres stays stopped"
        );
        cluster.start_keeper(elected);
        assert_eq!(cluster.wait_for_master(FAILOVER).await, elected);
    }
    let port = cluster.proxy_port();
    wait_until("a write through the proxy", FAILOVER, || {
        execute(port, "insert into m values (2)")
    })
    .await;
    assert_eq!(
        count(port, "m").await,
        Some(2),
        "nothing acknowledged was lost"
    );
    cluster.assert_no_unexpected_errors(EXPECTED);
}

#[tokio::test(flavor = "multi_thread")]
async fn s_ha_03_failover_fails_midway_async_reinstates_the_old_primary() {
    failover_fails_midway(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s_ha_03_failover_fails_midway_sync_never_reinstates_the_old_primary() {
    failover_fails_midway(true).await;
}

/// The most advanced standby wins even against a higher priority: a standby held behind
/// (its WAL receiver frozen while the primary writes) loses to one that has the rows.
#[tokio::test(flavor = "multi_thread")]
async fn s_ha_10_most_advanced_standby_wins_over_priority() {
    let mut cluster = ClusterBuilder::new()
        .keeper(KeeperOptions::default())
        .keeper(KeeperOptions::default())
        .keeper(KeeperOptions {
            priority: 10,
            ..Default::default()
        })
        .start()
        .await;
    let master = cluster.wait_for_master(BOOT).await;
    assert_eq!(master, 0);
    cluster.wait_for_standbys(2, BOOT).await;
    create_table(&cluster, "x").await;
    let behind_db = db_of(&cluster, 2).await.unwrap();
    // keeper2 stops receiving WAL while the primary writes.
    cluster.freeze_walreceiver(2, true);
    let primary = connect(cluster.keepers[master].pg_port).await.unwrap();
    primary
        .batch_execute("insert into x select generate_series(1, 1000)")
        .await
        .unwrap();
    drop(primary);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let cd = cluster.cluster_data().await.unwrap();
    let ahead = &cd.db_of_keeper(&cluster.keepers[1].uid).unwrap().status;
    let behind = &cd.dbs[&behind_db].status;
    assert!(
        ahead.x_log_pos > behind.x_log_pos,
        "keeper2 is behind: {ahead:?} {behind:?}"
    );

    cluster.kill_keeper_and_postgres(master);
    let new_master = cluster.wait_for_new_master(master, FAILOVER).await;
    assert_eq!(
        new_master, 1,
        "the most advanced standby, not the higher priority one"
    );
    cluster.freeze_walreceiver(2, false);
    assert_eq!(count(cluster.proxy_port(), "x").await, Some(1000));
    assert!(cluster
        .sentinel_logs()
        .contains("it is less advanced than the chosen standby"));
    cluster.assert_no_unexpected_errors(EXPECTED);
}

/// A pg_rewind that fails (injected: the program exits 1) falls back to a base backup, and
/// the old primary rejoins all the same.
#[tokio::test(flavor = "multi_thread")]
async fn failed_pg_rewind_falls_back_to_a_base_backup() {
    let mut cluster = ClusterBuilder::new()
        .keepers(2)
        .spec("usePgrewind", true.into())
        .start()
        .await;
    let master = cluster.wait_for_master(BOOT).await;
    wait_for_standby(&cluster, 1 - master, BOOT).await;
    create_table(&cluster, "b").await;
    execute(cluster.proxy_port(), "insert into b values (1)")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.kill_keeper_and_postgres(master);
    cluster.wait_for_new_master(master, FAILOVER).await;
    let fake = failing_pg_bin_dir(&cluster.root().join("failing-rewind"), "pg_rewind");
    cluster.keepers[master].options.pg_bin_dir = Some(fake);
    cluster.start_keeper(master);
    wait_for_standby(&cluster, master, BOOT).await;
    let log = cluster.keeper_last_log(master);
    assert!(log.contains("syncing using pg_rewind"), "{log}");
    assert!(
        log.contains("error syncing with pg_rewind: falling back to pg_basebackup"),
        "{log}"
    );
    assert!(log.contains("running pg_basebackup"), "{log}");
    let port = cluster.keepers[master].pg_port;
    wait_until("the row on the rejoined standby", BOOT, || async {
        (count(port, "b").await? == 1).then_some(())
    })
    .await;
    cluster.assert_no_unexpected_errors(EXPECTED);
}

/// A postgres that cannot start (a parameter it rejects) is tried five times at once, then
/// again after ten seconds (then twenty, then every thirty), not in a tight loop; the
/// keeper says so and reports the db unhealthy meanwhile. Removing the parameter recovers.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_that_cannot_start_is_retried_with_growing_waits() {
    let cluster = ClusterBuilder::new()
        .keepers(1)
        .spec("failInterval", "60s".into())
        .start()
        .await;
    let master = cluster.wait_for_master(BOOT).await;
    cluster
        .update_cluster_data(|cd| {
            cd.cluster.spec.pg_parameters =
                Some([("shared_buffers".to_string(), "not-a-size".to_string())].into())
        })
        .await;
    // The reload keeps the old value; the next start fails on it.
    wait_until("the bad parameter to be written", BOOT, || async {
        cluster
            .keeper_log(master)
            .contains("postgres parameters changed")
            .then_some(())
    })
    .await;
    let pid = cluster.keepers[master].postmaster_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let failed_starts = || {
        cluster
            .keeper_log(master)
            .matches("action failed action=Start")
            .count()
    };
    wait_until(
        "the keeper to start waiting between starts",
        BOOT,
        || async {
            cluster
                .keeper_log(master)
                .contains("postgres failed to start repeatedly: trying again in 10s")
                .then_some(())
        },
    )
    .await;
    let waiting_since = Instant::now();
    assert_eq!(failed_starts(), 5, "{}", cluster.keeper_log(master));
    wait_until("a sixth start, after the wait", BOOT, || async {
        (failed_starts() == 6).then_some(())
    })
    .await;
    assert!(
        waiting_since.elapsed() >= Duration::from_secs(8),
        "the sixth start came {:?} after the fifth",
        waiting_since.elapsed()
    );
    assert!(cluster
        .keeper_log(master)
        .contains("postgres failed to start repeatedly: trying again in 20s"));
    let cd = cluster.cluster_data().await.unwrap();
    let info: Vec<stolon_cluster::KeeperInfo> =
        stolon_store::read_infos(cluster.store.as_ref(), stolon_store::InfoKind::Keeper)
            .await
            .unwrap();
    let state = info[0].postgres_state.as_ref().unwrap();
    assert!(!state.healthy, "the keeper reports its postgres down");
    assert!(cd.master_db().is_some());

    // Removing the bad parameter is a new db spec: the keeper tries again, and it starts.
    cluster
        .update_cluster_data(|cd| cd.cluster.spec.pg_parameters = None)
        .await;
    let port = cluster.proxy_port();
    wait_for_service("service again without the bad parameter", port, BOOT).await;
    cluster.assert_no_unexpected_errors(&["action failed", "postgres failed to start repeatedly"]);
}

/// `stolonctl switchover ARGS`, which waits for the outcome, run off the async workers.
fn stolonctl_switchover(cluster: &TestCluster, args: &[&str]) -> std::process::Output {
    let args: Vec<&str> = ["switchover"]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    tokio::task::block_in_place(|| cluster.stolonctl(&args))
}

/// Stops the probe once the connections it made during an event had time to finish, and
/// returns those that failed after checking that some were made.
async fn failed_attempts(probe: ConnectionProbe, since: Instant) -> Vec<Attempt> {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attempts = probe.stop();
    let during = attempts.iter().filter(|a| a.started >= since).count();
    assert!(
        during > 10,
        "new connections were made during the event: {during}"
    );
    attempts.into_iter().filter(|a| a.error.is_some()).collect()
}

/// S-SW-01: a planned switchover under a steady write load and a stream of new
/// connections: none of those fails (they wait), no acknowledged write is lost, and the old
/// primary rejoins as a standby.
async fn switchover_under_load(backend: StoreBackend, sync: bool) {
    let builder = if sync {
        sync_cluster(3)
    } else {
        ClusterBuilder::new().keepers(3)
    }
    .store_backend(backend);
    // The probe opens a connection every 20 ms and the proxies hold them for the whole
    // switchover (about 2 s here): they all reach the new primary at once, more than the
    // default 100 connections.
    let cluster = builder
        .spec("usePgrewind", true.into())
        .spec(
            "pgParameters",
            serde_json::json!({"max_connections": "500"}),
        )
        .start()
        .await;
    let master = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(2, BOOT).await;
    let sync_set = if sync {
        wait_for_sync_standbys(&cluster, 1).await
    } else {
        Vec::new()
    };
    create_table(&cluster, "s").await;
    let writer = Writer::start(cluster.proxy_port(), "s");
    let probe = ConnectionProbe::start(cluster.proxy_port());
    tokio::time::sleep(Duration::from_secs(1)).await;

    let requested = Instant::now();
    let out = stolonctl_switchover(&cluster, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("switched over"), "{stdout}");
    let status = cluster.stolonctl(&["status"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("Last switchover: succeeded: switched over"),
        "{status}"
    );
    let new_master = cluster.wait_for_new_master(master, FAILOVER).await;
    if sync {
        assert_eq!(
            db_of(&cluster, new_master).await.as_ref(),
            Some(&sync_set[0]),
            "the synchronous standby takes over"
        );
    }
    let failed = failed_attempts(probe, requested).await;
    assert!(failed.is_empty(), "new connections failed: {failed:?}");
    let done = Instant::now();
    let acked = writes_resume(writer, done).await;
    assert_none_lost(&cluster, "s", &acked).await;
    cluster.wait_rejoined_never_primary(master, BOOT).await;
    cluster.assert_no_unexpected_errors(EXPECTED);
}

#[tokio::test(flavor = "multi_thread")]
async fn s_sw_01_switchover_async() {
    switchover_under_load(StoreBackend::Etcd, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s_sw_01_switchover_sync() {
    switchover_under_load(StoreBackend::Etcd, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s_sw_01_switchover_async_k8s() {
    switchover_under_load(StoreBackend::Kubernetes, false).await;
}

/// A target that cannot catch up (its WAL receiver frozen) makes the switchover give up:
/// the old primary serves again, held connections go to it, nothing is lost.
#[tokio::test(flavor = "multi_thread")]
async fn abandoned_switchover_restores_the_old_primary() {
    let cluster = ClusterBuilder::new()
        .keepers(2)
        // The old primary's shutdown waits for its standby's reply at most this long; the
        // new connections held meanwhile all arrive at once when it serves again.
        .spec(
            "pgParameters",
            serde_json::json!({"wal_sender_timeout": "2s", "max_connections": "500"}),
        )
        .start()
        .await;
    let master = cluster.wait_for_master(BOOT).await;
    let standby = 1 - master;
    wait_for_standby(&cluster, standby, BOOT).await;
    create_table(&cluster, "a").await;
    let writer = Writer::start(cluster.proxy_port(), "a");
    cluster.freeze_walreceiver(standby, true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let probe = ConnectionProbe::start(cluster.proxy_port());

    let requested = Instant::now();
    let target = cluster.keepers[standby].uid.to_string();
    let out = stolonctl_switchover(&cluster, &["--to", &target, "--timeout", "3s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the switchover must fail");
    assert!(stderr.contains("abandoned"), "{stderr}");
    assert_eq!(
        cluster.wait_for_master(BOOT).await,
        master,
        "the old primary serves again"
    );
    let failed = failed_attempts(probe, requested).await;
    assert!(failed.is_empty(), "new connections failed: {failed:?}");
    let restored = Instant::now();
    let acked = writes_resume(writer, restored).await;
    cluster.freeze_walreceiver(standby, false);
    assert_none_lost(&cluster, "a", &acked).await;
    cluster.assert_no_unexpected_errors(EXPECTED);
}

/// No eligible target: refused with the reason, and the cluster data is left alone.
#[tokio::test(flavor = "multi_thread")]
async fn switchover_without_an_eligible_target_is_refused() {
    let cluster = ClusterBuilder::new()
        .keeper(KeeperOptions::default())
        .keeper(KeeperOptions {
            can_be_master: false,
            ..Default::default()
        })
        .start()
        .await;
    let master = cluster.wait_for_master(BOOT).await;
    wait_for_standby(&cluster, 1 - master, BOOT).await;
    let before = cluster.cluster_data().await.unwrap();
    let out = stolonctl_switchover(&cluster, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot be master"), "{stderr}");
    let own = cluster.keepers[master].uid.to_string();
    let out = stolonctl_switchover(&cluster, &["--to", &own]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("already runs the primary"), "{stderr}");
    let after = cluster.cluster_data().await.unwrap();
    assert_eq!(after.cluster.status.switchover, None);
    assert_eq!(after.cluster.status.master, before.cluster.status.master);
    cluster.assert_no_unexpected_errors(EXPECTED);
}

/// A primary whose postgres cannot start again under its live keeper is failed over once
/// dbRestartTimeout has passed, long before the (here very long) failInterval.
#[tokio::test(flavor = "multi_thread")]
async fn primary_that_cannot_restart_is_failed_over_after_db_restart_timeout() {
    let mut cluster = ClusterBuilder::new()
        .keepers(2)
        .spec("failInterval", "600s".into())
        .spec("dbRestartTimeout", "3s".into())
        .start()
        .await;
    let master = cluster.wait_for_master(BOOT).await;
    wait_for_standby(&cluster, 1 - master, BOOT).await;
    let pid = cluster.keepers[master].postmaster_pid().unwrap();
    let port = cluster.keepers[master].pg_port;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Someone else takes the port: every restart fails.
    let squatter = wait_until("taking the primary's port", BOOT, || async {
        std::net::TcpListener::bind(("127.0.0.1", port)).ok()
    })
    .await;
    let new_master = cluster.wait_for_new_master(master, FAILOVER).await;
    assert_ne!(new_master, master);
    assert_eq!(
        cluster.keepers[master]
            .process
            .as_mut()
            .unwrap()
            .exit_code(),
        None,
        "the old primary's keeper is alive all along"
    );
    assert!(cluster.sentinel_logs().contains("master db is failed"));
    drop(squatter);
    cluster.wait_rejoined_never_primary(master, BOOT).await;
    cluster.assert_no_unexpected_errors(&[
        "action failed",
        "cannot connect to master",
        "postgres failed to start repeatedly",
    ]);
}
