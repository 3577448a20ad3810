//! Bootstrap, replication, failover and proxy scenarios, asserted through the proxy.

use std::time::Duration;
use stolon_cluster::DbRole;
use stolon_testkit::{
    connect, is_connection_loss, wait_for_service, wait_until, ClusterBuilder, KeeperOptions,
    StoreBackend, TestCluster,
};

const BOOT: Duration = Duration::from_secs(90);
const FAILOVER: Duration = Duration::from_secs(60);

/// Errors that a scenario provokes on purpose (a killed primary, its lost connections).
const EXPECTED_IN_FAILOVER: &[&str] = &["action failed", "cannot connect to master"];

async fn query_one_i64(port: u16, sql: &str) -> Option<i64> {
    let client = connect(port).await.ok()?;
    let row = client.query_one(sql, &[]).await.ok()?;
    Some(row.get(0))
}

async fn in_recovery(port: u16) -> Option<bool> {
    let client = connect(port).await.ok()?;
    client
        .query_one("select pg_is_in_recovery()", &[])
        .await
        .ok()
        .map(|r| r.get(0))
}

/// Waits until a write through the proxy succeeds, and returns the server port it landed on.
async fn write_through_proxy(cluster: &TestCluster, id: i32, timeout: Duration) -> i32 {
    let port = cluster.proxy_port();
    wait_until("a write through the proxy", timeout, || async move {
        let client = connect(port).await.ok()?;
        client
            .execute(
                "insert into test values ($1, $2)",
                &[&id, &format!("value{id}")],
            )
            .await
            .ok()?;
        let row = client
            .query_one("select inet_server_port()", &[])
            .await
            .ok()?;
        Some(row.get::<_, i32>(0))
    })
    .await
}

async fn create_test_table(cluster: &TestCluster) {
    let client = connect(cluster.proxy_port())
        .await
        .expect("connect through proxy");
    client
        .batch_execute(
            "create table test (id int primary key not null, value text not null);
             insert into test values (1, 'value1');",
        )
        .await
        .expect("create and insert through the proxy");
}

/// The last position of `needle` in `log` before `before`.
fn last_before(log: &str, needle: &str, before: usize) -> Option<usize> {
    log[..before].rfind(needle)
}

#[tokio::test(flavor = "multi_thread")]
async fn s_seed_walkthrough() {
    seed_walkthrough(StoreBackend::Etcd).await;
}

/// The seed's walkthrough with the Kubernetes API server as the store.
#[tokio::test(flavor = "multi_thread")]
async fn s_seed_walkthrough_k8s() {
    seed_walkthrough(StoreBackend::Kubernetes).await;
}

async fn seed_walkthrough(backend: StoreBackend) {
    let mut cluster = ClusterBuilder::new()
        .store_backend(backend)
        .keepers(3)
        .sentinels(2)
        .start()
        .await;
    let master = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(2, BOOT).await;
    create_test_table(&cluster).await;

    let session = connect(cluster.proxy_port()).await.unwrap();
    let before: i64 = session
        .query_one("select count(*) from test", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(before, 1);

    cluster.kill_keeper_and_postgres(master);

    let err = wait_until("the open session to be cut", FAILOVER, || async {
        session.simple_query("select * from test").await.err()
    })
    .await;
    assert!(is_connection_loss(&err), "unexpected error: {err:?}");

    let port = write_through_proxy(&cluster, 2, FAILOVER).await;
    let new_master = cluster.wait_for_master(FAILOVER).await;
    assert_ne!(new_master, master, "a different keeper must be the primary");
    assert_eq!(port as u16, cluster.keepers[new_master].pg_port);

    let client = connect(cluster.proxy_port()).await.unwrap();
    let rows = client
        .query("select id, value from test order by id", &[])
        .await
        .unwrap();
    let rows: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        rows,
        vec![(1, "value1".to_string()), (2, "value2".to_string())]
    );

    let logs = cluster.sentinel_logs();
    let elect = logs
        .rfind("electing db as the new master")
        .expect("the leader logs the election");
    let trying = last_before(
        &logs,
        "trying to find a standby to replace failed master",
        elect,
    )
    .expect("logged before the election");
    let failed = last_before(&logs, "master db is failed", trying).expect("logged before trying");
    last_before(&logs, "no keeper info available", failed).expect("logged before the failure");
    cluster.assert_no_unexpected_errors(EXPECTED_IN_FAILOVER);
}

#[tokio::test(flavor = "multi_thread")]
async fn s_init_01_one_keeper_started_as_postgres_user() {
    let cluster = ClusterBuilder::new()
        .keeper(KeeperOptions {
            as_postgres_user: true,
            ..Default::default()
        })
        .start()
        .await;
    cluster.wait_for_master(BOOT).await;
    let client = connect(cluster.proxy_port())
        .await
        .expect("connect through proxy");
    let one: i32 = client.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let cd = cluster.cluster_data().await.unwrap();
    assert_eq!(
        cd.cluster.spec.fail_interval.map(|d| d.0),
        Some(Duration::from_secs(5)),
        "the initial cluster spec is the one given to the sentinel"
    );
    let pid = cluster.keepers[0].process.as_ref().unwrap().pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
    assert!(
        uid_line.split_whitespace().nth(1) == Some(&postgres.uid.to_string()),
        "keeper must run as the postgres OS user: {uid_line}"
    );
    cluster.assert_no_unexpected_errors(&[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn s_init_02_three_keepers_one_primary_two_streaming() {
    let cluster = ClusterBuilder::new().keepers(3).sentinels(2).start().await;
    let master = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(2, BOOT).await;
    let cd = cluster.cluster_data().await.unwrap();
    let masters = cd
        .dbs
        .values()
        .filter(|db| db.spec.role == DbRole::Master)
        .count();
    assert_eq!(masters, 1, "exactly one primary in the cluster data");

    let primary_port = cluster.keepers[master].pg_port;
    assert_eq!(in_recovery(primary_port).await, Some(false));
    let streaming = wait_until("two standbys streaming from the primary", BOOT, || async {
        let n = query_one_i64(
            primary_port,
            "select count(*) from pg_stat_replication where state = 'streaming'",
        )
        .await?;
        (n == 2).then_some(n)
    })
    .await;
    assert_eq!(streaming, 2);
    for (i, k) in cluster.keepers.iter().enumerate() {
        if i != master {
            assert_eq!(
                in_recovery(k.pg_port).await,
                Some(true),
                "keeper{i} is a standby"
            );
        }
    }
    cluster.assert_no_unexpected_errors(&[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn s_ha_01_async_replication_reaches_standbys() {
    let cluster = ClusterBuilder::new().keepers(2).start().await;
    let master = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(1, BOOT).await;
    create_test_table(&cluster).await;
    write_through_proxy(&cluster, 2, FAILOVER).await;
    let standby = 1 - master;
    let port = cluster.keepers[standby].pg_port;
    wait_until("the rows to reach the standby", BOOT, || async {
        let n = query_one_i64(port, "select count(*) from test").await?;
        (n == 2).then_some(())
    })
    .await;
    cluster.assert_no_unexpected_errors(&[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn s_ha_02_async_failover_and_old_primary_never_primary_again() {
    let mut cluster = ClusterBuilder::new().keepers(2).start().await;
    let master = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(1, BOOT).await;
    create_test_table(&cluster).await;
    let standby = 1 - master;
    let standby_port = cluster.keepers[standby].pg_port;
    wait_until("the row to reach the standby", BOOT, || async {
        (query_one_i64(standby_port, "select count(*) from test").await? == 1).then_some(())
    })
    .await;

    // A clean stop of the primary's keeper stops its postgres too.
    cluster.keepers[master]
        .process
        .take()
        .unwrap()
        .stop(Duration::from_secs(30));

    let port = write_through_proxy(&cluster, 2, FAILOVER).await;
    assert_eq!(port as u16, standby_port, "the standby is the new primary");
    assert_eq!(cluster.wait_for_master(FAILOVER).await, standby);

    // The old primary comes back: it must never serve as a primary again.
    let old_port = cluster.keepers[master].pg_port;
    cluster.start_keeper(master);
    cluster.wait_rejoined_never_primary(master, BOOT).await;
    write_through_proxy(&cluster, 3, FAILOVER).await;
    wait_until(
        "the new row to reach the old primary, now a standby",
        BOOT,
        || async {
            (query_one_i64(old_port, "select count(*) from test").await? == 3).then_some(())
        },
    )
    .await;
    cluster.assert_no_unexpected_errors(EXPECTED_IN_FAILOVER);
}

#[tokio::test(flavor = "multi_thread")]
async fn s_proxy_03_failover_closes_old_connections_and_routes_new_ones() {
    let mut cluster = ClusterBuilder::new().keepers(2).start().await;
    let master = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(1, BOOT).await;
    create_test_table(&cluster).await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(connect(cluster.proxy_port()).await.unwrap());
    }
    // Only the keeper dies: the old postgres keeps running, so only the proxy can cut the
    // sessions it carries.
    let old_postmaster = cluster.keepers[master]
        .postmaster_pid()
        .expect("postmaster runs");
    if let Some(mut keeper) = cluster.keepers[master].process.take() {
        keeper.kill();
    }
    let new_master = cluster.wait_for_new_master(master, FAILOVER).await;
    let new_port = write_through_proxy(&cluster, 2, FAILOVER).await;
    assert_eq!(new_port as u16, cluster.keepers[new_master].pg_port);
    for (i, session) in sessions.iter().enumerate() {
        let err = session
            .simple_query("select 1")
            .await
            .expect_err("a session to the old primary must have been closed by the proxy");
        assert!(is_connection_loss(&err), "session {i}: {err:?}");
    }
    assert!(
        std::path::Path::new(&format!("/proc/{old_postmaster}")).exists(),
        "the old primary still runs: the cut came from the proxy"
    );
    let fresh = connect(cluster.proxy_port()).await.unwrap();
    let port: i32 = fresh
        .query_one("select inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(port, new_port);
    cluster.assert_no_unexpected_errors(EXPECTED_IN_FAILOVER);
}

/// The proxy half of the fencing rule: no target, no connection; no store for proxyTimeout,
/// no connections at all and no listening socket; the store back, service back.
#[tokio::test(flavor = "multi_thread")]
async fn proxy_refuses_without_a_primary_and_fences_without_the_store() {
    let mut cluster = ClusterBuilder::new().start().await;
    let port = cluster.proxy_port();
    wait_until("the proxy to listen", BOOT, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
    })
    .await;
    assert!(
        connect(port).await.is_err(),
        "without a primary the proxy closes connections at once"
    );

    cluster.keepers.push(stolon_testkit::KeeperHandle::new(
        &cluster,
        0,
        KeeperOptions::default(),
    ));
    cluster.start_keeper(0);
    cluster.wait_for_master(BOOT).await;
    let session = wait_until("a session through the proxy", BOOT, || async {
        connect(port).await.ok()
    })
    .await;
    session.simple_query("select 1").await.unwrap();

    // A hung store counts as down: after proxyTimeout (5s) the proxy fences itself.
    cluster
        .etcd
        .process
        .signal(nix::sys::signal::Signal::SIGSTOP);
    let err = wait_until(
        "the proxy to cut the session",
        Duration::from_secs(30),
        || async { session.simple_query("select 1").await.err() },
    )
    .await;
    assert!(is_connection_loss(&err), "{err:?}");
    wait_until(
        "the proxy to stop listening",
        Duration::from_secs(10),
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .err()
        },
    )
    .await;

    cluster
        .etcd
        .process
        .signal(nix::sys::signal::Signal::SIGCONT);
    wait_for_service(
        "service through the proxy once the store is back",
        port,
        BOOT,
    )
    .await;
    cluster.assert_no_unexpected_errors(&[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn s_init_09_stolonctl_status_and_init_confirmation() {
    let cluster = ClusterBuilder::new().keepers(1).start().await;
    let master = cluster.wait_for_master(BOOT).await;

    let out = cluster.stolonctl(&["status", "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status["cluster"]["master_keeper_uid"].as_str(),
        Some(cluster.keepers[master].uid.as_str())
    );
    assert_eq!(
        status["cluster"]["available"],
        serde_json::Value::Bool(true)
    );
    let text = cluster.stolonctl(&["status"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("Master Keeper: keeper0"));
    assert_eq!(status["keepers"][0]["master_eligibility"], "primary");

    // Without -y an existing cluster is only replaced after a "yes".
    let before = cluster.cluster_data().await.unwrap();
    let refused = std::process::Command::new(stolon_testkit::bin_dir().join("stolonctl"))
        .args([
            "--cluster-name",
            "test",
            "--store-backend",
            "etcdv3",
            "--store-endpoints",
        ])
        .arg(&cluster.etcd.endpoint)
        .arg("init")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Are you sure you want to continue?"));
    assert_eq!(
        cluster.cluster_data().await.unwrap().cluster.uid,
        before.cluster.uid
    );

    let bad = cluster.stolonctl(&["init", "-y", r#"{"initMode":"new","failInterval":"5"}"#]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid duration"));
    assert_eq!(
        cluster.cluster_data().await.unwrap().cluster.uid,
        before.cluster.uid,
        "an invalid spec changes nothing"
    );

    let replaced = cluster.stolonctl(&["init", "-y"]);
    assert!(
        replaced.status.success(),
        "{}",
        String::from_utf8_lossy(&replaced.stderr)
    );
    assert_ne!(
        cluster.cluster_data().await.unwrap().cluster.uid,
        before.cluster.uid
    );
}
