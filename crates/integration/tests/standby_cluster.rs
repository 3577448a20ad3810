//! S-STBY-01..03 and the standby-cluster variants of S-HA-02 and S-HA-09: a stolon-rs
//! cluster that follows another one on the same machine (its "remote primary", reached
//! through that cluster's proxy, as a second site would reach the first), restored from it
//! with pg_basebackup (initMode pitr), cascading to its own standbys, failing over among
//! them, and promoted when the first site is lost.

use serde_json::json;
use std::time::Duration;
use stolon_testkit::{
    connect, pg_bin_dir, wait_until, ClusterBuilder, TestCluster, REPL_PASSWORD, REPL_USER,
};
use tokio_postgres::error::SqlState;

const BOOT: Duration = Duration::from_secs(120);
const FAILOVER: Duration = Duration::from_secs(60);
/// The slot the first site keeps for the second (`additionalMasterReplicationSlots`).
const SITE_B_SLOT: &str = "stolon_site_b";

/// The first site: one keeper, a slot for the second site, a table with rows 1..=100.
async fn site_a(extra: &[(&str, serde_json::Value)]) -> TestCluster {
    let mut builder = ClusterBuilder::new()
        .keepers(1)
        .spec("additionalMasterReplicationSlots", json!(["site_b"]));
    for (field, value) in extra {
        builder = builder.spec(field, value.clone());
    }
    let a = builder.start().await;
    a.wait_for_master(BOOT).await;
    connect(a.proxy_port())
        .await
        .unwrap()
        .batch_execute(
            "create table t (id int primary key);
             insert into t select generate_series(1, 100);",
        )
        .await
        .unwrap();
    a
}

/// A base backup of the first site, taken through its proxy: the standby cluster's
/// dataRestoreCommand.
fn basebackup_from(a: &TestCluster) -> String {
    format!(
        "PGPASSWORD={REPL_PASSWORD} {} -D %d -h 127.0.0.1 -p {} -U {REPL_USER} -X stream -c fast -w",
        pg_bin_dir().join("pg_basebackup").display(),
        a.proxy_port()
    )
}

/// The second site: `keepers` keepers following the first through its proxy.
async fn site_b(a: &TestCluster, keepers: usize, standby_config: serde_json::Value) -> TestCluster {
    ClusterBuilder::new()
        .keepers(keepers)
        .spec("role", json!("standby"))
        .spec("initMode", json!("pitr"))
        .spec(
            "pitrConfig",
            json!({ "dataRestoreCommand": basebackup_from(a) }),
        )
        .spec("standbyConfig", standby_config)
        .start()
        .await
}

/// A two-keeper site B streaming from site A: its standby leader from site A, its standby
/// from the leader. Returns it with the two instances' ports.
async fn streaming_site_b(
    a: &TestCluster,
    standby_config: serde_json::Value,
) -> (TestCluster, u16, u16) {
    let b = site_b(a, 2, standby_config).await;
    let leader = b.wait_for_standby_leader(None, BOOT).await;
    let leader_port = b.keepers[leader].pg_port;
    let standby_port = b.keepers[other(leader)].pg_port;
    wait_streaming_from(
        "the standby leader to stream from site A",
        leader_port,
        a.proxy_port(),
    )
    .await;
    wait_streaming_from(
        "site B's standby to stream from its leader",
        standby_port,
        leader_port,
    )
    .await;
    (b, leader_port, standby_port)
}

fn streaming_from(a: &TestCluster) -> serde_json::Value {
    json!({
        "standbySettings": {
            "primaryConninfo": format!(
                "host=127.0.0.1 port={} user={REPL_USER} password={REPL_PASSWORD}",
                a.proxy_port()
            ),
            "primarySlotName": SITE_B_SLOT,
        }
    })
}

async fn count(port: u16) -> Option<i64> {
    let client = connect(port).await.ok()?;
    client
        .query_one("select count(*) from t", &[])
        .await
        .ok()
        .map(|r| r.get(0))
}

async fn wait_for_rows(what: &str, port: u16, rows: i64, timeout: Duration) {
    wait_until(what, timeout, || async move {
        (count(port).await? == rows).then_some(())
    })
    .await
}

/// The port the walreceiver of the instance at `port` streams from, once it streams (its
/// own walreceiver: what a base backup streams does not count).
async fn streams_from(port: u16) -> Option<i32> {
    let client = connect(port).await.ok()?;
    let row = client
        .query_opt(
            "select sender_port from pg_stat_wal_receiver where status = 'streaming'",
            &[],
        )
        .await
        .ok()??;
    Some(row.get(0))
}

async fn wait_streaming_from(what: &str, port: u16, upstream: u16) {
    wait_until(what, BOOT, || async move {
        (streams_from(port).await? == i32::from(upstream)).then_some(())
    })
    .await
}

async fn insert_on(cluster: &TestCluster, ids: std::ops::RangeInclusive<i32>) {
    connect(cluster.proxy_port())
        .await
        .unwrap()
        .execute(
            "insert into t select generate_series($1::int, $2::int)",
            &[ids.start(), ids.end()],
        )
        .await
        .unwrap();
}

fn status(cluster: &TestCluster) -> String {
    let out = cluster.stolonctl(&["status"]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The keeper of `cluster` other than `leader` (a two-keeper cluster).
fn other(leader: usize) -> usize {
    1 - leader
}

#[tokio::test(flavor = "multi_thread")]
async fn s_stby_01_a_standby_cluster_follows_the_remote_primary_and_cascades() {
    let a = site_a(&[]).await;
    let (b, leader_port, standby_port) = streaming_site_b(&a, streaming_from(&a)).await;
    let slot_active: bool = connect(a.proxy_port())
        .await
        .unwrap()
        .query_one(
            "select active from pg_replication_slots where slot_name = $1",
            &[&SITE_B_SLOT],
        )
        .await
        .unwrap()
        .get(0);
    assert!(slot_active, "site B streams through its slot on site A");

    insert_on(&a, 101..=200).await;
    wait_for_rows(
        "site A's rows on the standby leader",
        leader_port,
        200,
        BOOT,
    )
    .await;
    wait_for_rows(
        "site A's rows on site B's standby (cascaded)",
        standby_port,
        200,
        BOOT,
    )
    .await;

    // Site B's proxy routes to its standby leader: reads work, writes are refused.
    wait_for_rows(
        "site A's rows through site B's proxy",
        b.proxy_port(),
        200,
        BOOT,
    )
    .await;
    let through_b = connect(b.proxy_port()).await.unwrap();
    let refused = through_b
        .execute("insert into t values (1000)", &[])
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&SqlState::READ_ONLY_SQL_TRANSACTION),
        "{refused}"
    );

    let text = wait_until("status to show site B caught up", BOOT, || async {
        let text = status(&b);
        text.contains("Behind the remote primary: 0B behind, replay delay 0.0 s")
            .then_some(text)
    })
    .await;
    assert!(
        text.contains(&format!(
            "Standby cluster: the standby leader follows remote primary \"host=127.0.0.1 port={} user={REPL_USER} password=***\", slot {SITE_B_SLOT}",
            a.proxy_port()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "Standby leader streams from: 127.0.0.1:{}",
            a.proxy_port()
        )),
        "{text}"
    );
    assert!(text.contains("standby leader"), "{text}");
    assert!(
        !text.contains(REPL_PASSWORD),
        "the remote's password leaked: {text}"
    );
    let json = b.stolonctl(&["status", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["cluster"]["standby_cluster"]["lag_bytes"], 0, "{json}");

    let refused = b.stolonctl(&["switchover"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("a standby cluster has no primary to switch over"),
        "{refused:?}"
    );

    // Re-pointed with `stolonctl update`: straight at site A's primary instead of its proxy.
    let a_primary = a.keepers[0].pg_port;
    let patch = json!({"standbyConfig": {"standbySettings": {"primaryConninfo": format!(
        "host=127.0.0.1 port={a_primary} user={REPL_USER} password={REPL_PASSWORD}"
    )}}});
    let out = b.stolonctl(&["update", "--patch", &patch.to_string()]);
    assert!(out.status.success(), "{out:?}");
    wait_streaming_from(
        "the standby leader to stream from the new address",
        leader_port,
        a_primary,
    )
    .await;
    insert_on(&a, 201..=300).await;
    wait_for_rows(
        "site A's rows on site B's standby after the re-point",
        standby_port,
        300,
        BOOT,
    )
    .await;
}

/// Site A fails over to its standby (a new timeline); site B, following it through its
/// proxy and its slot (which site A's new primary keeps too), follows the new primary.
#[tokio::test(flavor = "multi_thread")]
async fn s_stby_01_a_standby_cluster_follows_the_remote_through_its_failover() {
    let mut a = ClusterBuilder::new()
        .keepers(2)
        .spec("additionalMasterReplicationSlots", json!(["site_b"]))
        .start()
        .await;
    let a_master = a.wait_for_master(BOOT).await;
    a.wait_for_standbys(1, BOOT).await;
    connect(a.proxy_port())
        .await
        .unwrap()
        .batch_execute(
            "create table t (id int primary key); insert into t select generate_series(1, 100);",
        )
        .await
        .unwrap();
    let b = site_b(&a, 2, streaming_from(&a)).await;
    let leader = b.wait_for_standby_leader(None, BOOT).await;
    let leader_port = b.keepers[leader].pg_port;
    wait_streaming_from(
        "the standby leader to stream from site A",
        leader_port,
        a.proxy_port(),
    )
    .await;

    a.kill_keeper_and_postgres(a_master);
    let a_new = a.wait_for_new_master(a_master, FAILOVER).await;
    insert_on(&a, 101..=200).await;
    wait_for_rows(
        "site A's new primary's rows on site B's standby leader",
        leader_port,
        200,
        BOOT,
    )
    .await;
    wait_for_rows(
        "... and on its standby",
        b.keepers[other(leader)].pg_port,
        200,
        BOOT,
    )
    .await;
    let client = connect(a.keepers[a_new].pg_port).await.unwrap();
    let new_timeline: i32 = client
        .query_one(
            "select ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(new_timeline > 1, "site A's failover made a new timeline");
    wait_until(
        "site B to stream site A's new timeline",
        BOOT,
        || async move {
            let client = connect(leader_port).await.ok()?;
            let row = client
                .query_opt(
                    "select received_tli from pg_stat_wal_receiver where status = 'streaming'",
                    &[],
                )
                .await
                .ok()??;
            (row.get::<_, i32>(0) == new_timeline).then_some(())
        },
    )
    .await;
}

/// The first site is lost; `stolonctl promote` makes the second a primary cluster. Its
/// standby leader delays replay by an hour, so the rows it received since it started are
/// not visible before the promotion: they are after it, none lost.
#[tokio::test(flavor = "multi_thread")]
async fn s_stby_02_promote_makes_the_standby_cluster_writable_with_all_it_received() {
    let a = site_a(&[]).await;
    let mut config = streaming_from(&a);
    config["standbySettings"]["recoveryMinApplyDelay"] = json!("1h");
    let (b, leader_port, standby_port) = streaming_site_b(&a, config).await;

    insert_on(&a, 101..=200).await;
    let sent: String = connect(a.proxy_port())
        .await
        .unwrap()
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    wait_until(
        "the standby leader to receive site A's last WAL",
        BOOT,
        || {
            let sent = sent.clone();
            async move {
                let client = connect(leader_port).await.ok()?;
                let caught_up: bool = client
                    .query_one(
                        "select pg_last_wal_receive_lsn() >= $1::text::pg_lsn",
                        &[&sent],
                    )
                    .await
                    .ok()?
                    .get(0);
                caught_up.then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        count(leader_port).await,
        Some(100),
        "the apply delay holds the received rows back"
    );
    drop(a);

    let out = b.stolonctl(&["promote", "--yes"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("cluster spec role set to master"),
        "{out:?}"
    );
    let writer = wait_until("a write through site B's proxy", FAILOVER, || async {
        let client = connect(b.proxy_port()).await.ok()?;
        client
            .execute("insert into t values (201)", &[])
            .await
            .ok()?;
        let port: i32 = client
            .query_one("select inet_server_port()", &[])
            .await
            .ok()?
            .get(0);
        Some(port)
    })
    .await;
    assert_eq!(
        writer,
        i32::from(leader_port),
        "the standby leader itself is promoted"
    );
    let ids: Vec<i32> = connect(b.proxy_port())
        .await
        .unwrap()
        .query("select id from t order by id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        ids,
        (1..=201).collect::<Vec<i32>>(),
        "rows lost in the promotion"
    );
    wait_for_rows(
        "the promoted primary's write on its standby",
        standby_port,
        201,
        BOOT,
    )
    .await;

    let again = b.stolonctl(&["promote", "--yes"]);
    assert!(again.status.success(), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("cluster spec role already set to master"),
        "{again:?}"
    );
    let text = status(&b);
    assert!(!text.contains("Standby cluster"), "{text}");
    assert!(
        text.contains("promoted: the cluster's role became master"),
        "{text}"
    );
}

/// A standby cluster fed only by the first site's WAL archive (no connection to it after
/// the base backup); its standby still cascades from the standby leader.
#[tokio::test(flavor = "multi_thread")]
async fn s_stby_03_a_standby_cluster_fed_only_by_restore_command() {
    let archive = tempfile::Builder::new()
        .prefix("stolon-test-archive-")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = archive.path();
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let a = site_a(&[(
        "pgParameters",
        json!({
            "archive_mode": "on",
            "archive_command": format!("test ! -f {0}/%f && cp %p {0}/%f", dir.display()),
        }),
    )])
    .await;
    let b = site_b(
        &a,
        2,
        json!({
            "archiveRecoverySettings": {
                "restoreCommand": format!("cp {}/%f %p", dir.display())
            }
        }),
    )
    .await;
    let leader = b.wait_for_standby_leader(None, BOOT).await;
    let leader_port = b.keepers[leader].pg_port;
    let standby_port = b.keepers[other(leader)].pg_port;
    wait_streaming_from(
        "site B's standby to stream from its leader",
        standby_port,
        leader_port,
    )
    .await;

    insert_on(&a, 101..=200).await;
    connect(a.proxy_port())
        .await
        .unwrap()
        .batch_execute("select pg_switch_wal()")
        .await
        .unwrap();
    wait_for_rows(
        "archived rows on the standby leader",
        leader_port,
        200,
        BOOT,
    )
    .await;
    wait_for_rows(
        "archived rows on site B's standby (cascaded)",
        standby_port,
        200,
        BOOT,
    )
    .await;
    assert_eq!(
        streams_from(leader_port).await,
        None,
        "the standby leader has no connection to site A"
    );
    let text = status(&b);
    assert!(
        text.contains("Standby cluster: the standby leader follows archive (restore_command"),
        "{text}"
    );
    assert!(
        text.contains("Standby leader streams from: (not streaming)"),
        "{text}"
    );
}

/// Waits for a standby leader other than keeper `old` that streams from site A and passes
/// on the rows `ids` written there to site B's proxy; returns its keeper's index.
async fn leader_replaced(
    a: &TestCluster,
    b: &TestCluster,
    old: usize,
    ids: std::ops::RangeInclusive<i32>,
) -> usize {
    let new = b.wait_for_standby_leader(Some(old), FAILOVER).await;
    wait_streaming_from(
        "the new standby leader to stream from site A",
        b.keepers[new].pg_port,
        a.proxy_port(),
    )
    .await;
    let rows = i64::from(*ids.end());
    insert_on(a, ids).await;
    wait_for_rows(
        "site A's rows through site B's proxy",
        b.proxy_port(),
        rows,
        BOOT,
    )
    .await;
    new
}

/// S-HA-09 then S-HA-02 in a standby cluster: `stolonctl failkeeper` on the standby leader,
/// then its successor killed with its postgres; each time a standby of the cluster becomes
/// the leader, streams from the remote primary, and the proxies route to it.
#[tokio::test(flavor = "multi_thread")]
async fn s_ha_09_and_s_ha_02_standby_cluster_elects_a_new_standby_leader() {
    let a = site_a(&[]).await;
    let mut b = site_b(&a, 3, streaming_from(&a)).await;
    let first = b.wait_for_standby_leader(None, BOOT).await;
    b.wait_for_standbys(3, BOOT).await;

    let out = b.stolonctl(&["failkeeper", b.keepers[first].uid.as_str()]);
    assert!(out.status.success(), "{out:?}");
    let second = leader_replaced(&a, &b, first, 101..=150).await;

    // The other two are standbys of the second leader before it is lost.
    b.wait_for_standbys(3, BOOT).await;
    b.kill_keeper_and_postgres(second);
    leader_replaced(&a, &b, second, 151..=200).await;
    let sentinels = b.sentinel_logs();
    assert!(
        sentinels
            .contains("proxies fenced: making db the standby leader, following the remote primary"),
        "{sentinels}"
    );
}
