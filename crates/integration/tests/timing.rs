//! Timings the docs allow, run as users would: a failInterval shorter than sleepInterval, a
//! short proxyTimeout and its changes at run time, and the reports a dying primary leaves
//! behind, older than its standbys'.

use nix::sys::signal::Signal;
use std::time::Duration;
use stolon_cluster::{DbRole, ProxyInfo};
use stolon_store::InfoKind;
use stolon_testkit::{
    connect, is_connection_loss, wait_for_service, wait_until, ClusterBuilder, TestCluster, Writer,
};
use tokio::net::TcpStream;

const BOOT: Duration = Duration::from_secs(90);
/// Errors the scenarios provoke on purpose.
const EXPECTED: &[&str] = &["action failed", "cannot connect to master"];

async fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).await.is_ok()
}

/// failInterval 3s under the default sleepInterval of 5s, and a proxyCheckInterval just
/// under proxyTimeout: 30 s with nothing happening fail no primary and fence no proxy, and
/// a writer through the proxy sees every write acknowledged.
#[tokio::test(flavor = "multi_thread")]
async fn idle_cluster_with_fail_interval_below_sleep_interval_never_fails_over() {
    let cluster = ClusterBuilder::new()
        .keepers(3)
        .sentinels(2)
        .spec("sleepInterval", serde_json::Value::Null)
        .spec("failInterval", "3s".into())
        .spec("proxyCheckInterval", "2900ms".into())
        .spec("proxyTimeout", "3s".into())
        .start()
        .await;
    cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(2, BOOT).await;
    let port = cluster.proxy_port();
    wait_until("creating the table", BOOT, || async {
        let client = connect(port).await.ok()?;
        client
            .batch_execute("create table idle (id int primary key)")
            .await
            .ok()
    })
    .await;
    let spec = cluster.cluster_data().await.unwrap().cluster.spec;
    assert_eq!(
        spec.sleep_interval, None,
        "sleepInterval at its default, 5s"
    );

    let before: Vec<usize> = cluster
        .sentinels
        .iter()
        .map(|s| s.log_text().len())
        .collect();
    let writer = Writer::start(port, "idle");
    tokio::time::sleep(Duration::from_secs(30)).await;
    let acked = writer.stop();

    let idle: Vec<String> = cluster
        .sentinels
        .iter()
        .zip(before)
        .map(|(s, from)| s.log_text()[from..].to_string())
        .collect();
    for alarm in [
        "master db is failed",
        "electing db as the new master",
        "no keeper info available",
    ] {
        for log in &idle {
            assert!(!log.contains(alarm), "{alarm:?} while idle:\n{log}");
        }
    }
    let proxy_log = cluster.proxies[0].1.log_text();
    assert!(
        !proxy_log.contains("check timeout timer fired"),
        "{proxy_log}"
    );
    // The writer takes a new id for every attempt: a failed write leaves a hole.
    assert!(acked.len() > 100, "only {} writes in 30 s", acked.len());
    let ids: Vec<i32> = acked.iter().map(|a| a.id).collect();
    let expected: Vec<i32> = (ids[0]..ids[0] + ids.len() as i32).collect();
    assert_eq!(ids, expected, "a write through the proxy failed");
    cluster.assert_no_unexpected_errors(EXPECTED);
}

/// The proxyTimeout each proxy announces now.
async fn announced(cluster: &TestCluster) -> Vec<(String, Duration)> {
    let mut infos: Vec<ProxyInfo> =
        stolon_store::read_infos(cluster.store.as_ref(), InfoKind::Proxy)
            .await
            .unwrap_or_default();
    infos.sort_by(|a, b| a.uid.cmp(&b.uid));
    infos
        .into_iter()
        .map(|i| (i.uid.to_string(), i.proxy_timeout))
        .collect()
}

async fn wait_announced(cluster: &TestCluster, timeout: Duration) {
    wait_until(
        &format!("every proxy to announce proxyTimeout {timeout:?}"),
        BOOT,
        || async {
            let now = announced(cluster).await;
            (!now.is_empty() && now.iter().all(|(_, t)| *t == timeout)).then_some(())
        },
    )
    .await
}

async fn enabled(cluster: &TestCluster) -> Option<Vec<String>> {
    let cd = cluster.cluster_data().await?;
    Some(
        cd.proxy
            .spec
            .enabled_proxies
            .iter()
            .map(|p| p.to_string())
            .collect(),
    )
}

/// Hangs the store (etcd SIGSTOPped): the session through proxy 0 is cut and its listener
/// closed within twice `timeout`; then the store comes back.
async fn store_hangs(cluster: &TestCluster, timeout: Duration) {
    let port = cluster.proxy_port();
    wait_for_service("the proxy", port, BOOT).await;
    let session = connect(port).await.unwrap();
    session.simple_query("select 1").await.unwrap();
    cluster.etcd.process.signal(Signal::SIGSTOP);
    let err = wait_until(
        &format!("the session to be cut within 2 x proxyTimeout ({timeout:?})"),
        2 * timeout,
        || async { session.simple_query("select 1").await.err() },
    )
    .await;
    assert!(is_connection_loss(&err), "{err:?}");
    wait_until(
        &format!("the listener to close within 2 x proxyTimeout ({timeout:?})"),
        2 * timeout,
        || async { (!listening(port).await).then_some(()) },
    )
    .await;
    cluster.etcd.process.signal(Signal::SIGCONT);
    wait_for_service("the proxy after the store came back", port, BOOT).await;
}

/// proxyTimeout 3s applies from the proxy's first read: a hung store fences the proxy within
/// 6 s, and the sentinel stops waiting for a frozen proxy as soon. Raised to 12 s, it is
/// announced at once; lowered to 3 s again, it is enforced from the next check.
#[tokio::test(flavor = "multi_thread")]
async fn a_short_proxy_timeout_is_enforced_and_followed_by_the_sentinel() {
    let short = Duration::from_secs(3);
    let cluster = ClusterBuilder::new()
        .keepers(1)
        .proxies(2)
        .spec("proxyTimeout", "3s".into())
        .start()
        .await;
    cluster.wait_for_master(BOOT).await;
    wait_announced(&cluster, short).await;
    wait_until("both proxies enabled", BOOT, || async {
        (enabled(&cluster).await? == ["proxy0", "proxy1"]).then_some(())
    })
    .await;

    cluster.proxies[1].1.signal(Signal::SIGSTOP);
    wait_until(
        "the sentinel to drop the frozen proxy within 2 x proxyTimeout",
        2 * short,
        || async { (enabled(&cluster).await? == ["proxy0"]).then_some(()) },
    )
    .await;
    cluster.proxies[1].1.signal(Signal::SIGCONT);
    wait_until("the thawed proxy enabled again", BOOT, || async {
        (enabled(&cluster).await? == ["proxy0", "proxy1"]).then_some(())
    })
    .await;

    store_hangs(&cluster, short).await;

    let update = |patch: &str| {
        let out = cluster.stolonctl(&["update", "--patch", patch]);
        assert!(out.status.success(), "{out:?}");
    };
    update(r#"{"proxyTimeout": "12s"}"#);
    wait_announced(&cluster, Duration::from_secs(12)).await;
    update(r#"{"proxyTimeout": "3s"}"#);
    wait_announced(&cluster, short).await;
    store_hangs(&cluster, short).await;

    let cd = cluster.cluster_data().await.unwrap();
    assert_eq!(cd.master_db().map(|db| db.spec.role), Some(DbRole::Master));
    cluster.assert_no_unexpected_errors(EXPECTED);
}

/// The timeline keeper `i` reports for its db.
async fn reported_timeline(cluster: &TestCluster, i: usize) -> Option<u32> {
    let cd = cluster.cluster_data().await?;
    let db = cd.db_of_keeper(&cluster.keepers[i].uid)?;
    Some(db.status.timeline_id.0)
}

/// Two failovers in a row, the second before the remaining standby's control file could
/// know of the first one's timeline on its own: once its walreceiver stops with the second
/// primary, it still reports the timeline it streamed, keeps its db (nothing is resynced
/// from the dead primary) and is elected.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_keeps_its_timeline_when_its_primary_dies() {
    let mut cluster = ClusterBuilder::new()
        .keepers(3)
        .sentinels(2)
        .spec("usePgrewind", true.into())
        .start()
        .await;
    let first = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(2, BOOT).await;
    cluster.kill_keeper_and_postgres(first);
    let second = cluster.wait_for_new_master(first, BOOT).await;
    let last = (0..3).find(|i| *i != first && *i != second).unwrap();
    wait_until(
        "the remaining standby to stream timeline 2",
        BOOT,
        || async {
            let cd = cluster.cluster_data().await?;
            let db = cd.db_of_keeper(&cluster.keepers[last].uid)?;
            let master = cd.master_db()?;
            (db.status.timeline_id.0 == 2
                && db.status.healthy
                && db.spec.follow_config.as_ref().and_then(|f| f.followed_db())
                    == Some(&master.uid)
                && db.status.current_generation == db.generation)
                .then_some(())
        },
    )
    .await;
    let db_before = cluster.cluster_data().await.and_then(|cd| {
        cd.db_of_keeper(&cluster.keepers[last].uid)
            .map(|db| db.uid.clone())
    });
    let logs_before: Vec<usize> = cluster
        .sentinels
        .iter()
        .map(|s| s.log_text().len())
        .collect();

    cluster.kill_keeper_and_postgres(second);
    let third = cluster.wait_for_new_master(second, BOOT).await;
    assert_eq!(third, last, "the only standby left takes over");
    let cd = cluster.cluster_data().await.unwrap();
    let db = cd.db_of_keeper(&cluster.keepers[last].uid).unwrap();
    assert_eq!(
        Some(&db.uid),
        db_before.as_ref(),
        "it kept its db: no resync"
    );
    assert!(
        reported_timeline(&cluster, last).await.unwrap() >= 3,
        "promoted anew"
    );
    for (s, from) in cluster.sentinels.iter().zip(logs_before) {
        let log = &s.log_text()[from..];
        assert!(!log.contains("removing invalid db"), "{log}");
        assert!(
            !log.contains("its db is on another timeline than the master"),
            "{log}"
        );
    }
    let keeper_log = cluster.keeper_log(last);
    assert!(
        keeper_log.contains("creating a restartpoint"),
        "the standby asked for a restartpoint on the new timeline:\n{keeper_log}"
    );
    cluster.assert_no_unexpected_errors(EXPECTED);
}
