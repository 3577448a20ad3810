//! S-PART: the single faults of a network that splits, each on a cluster whose every part
//! runs on a host of its own (three etcd members, three keepers, two sentinels, two
//! proxies), in both replication modes, with the checker's clients writing through both
//! proxies and straight to every keeper for the whole run.
//!
//! Each test holds one fault for [`HOLD`], heals it, and then asks of the checker: no
//! commit acknowledged through a proxy by a server that was no longer the primary, none
//! acknowledged straight by such a server either (the keeper fences a primary that loses
//! the store before another can be promoted), no acknowledged commit lost in synchronous
//! mode and none beyond maxStandbyLag in asynchronous mode, and every keeper back as a
//! streaming standby of one primary within a minute. The last one shows what the keeper's
//! fence prevents, with the fence off; and one that the fenced primary is down for good
//! before the heal.

use std::time::Duration;
use stolon_cluster::KeeperInfo;
use stolon_store::InfoKind;
use stolon_testkit::faults::{Fault, KeeperRole, Planned};
use stolon_testkit::{Checker, CheckerReport, NetCluster, NetClusterBuilder};

const BOOT: Duration = Duration::from_secs(120);
/// How long each fault holds: long enough for a failover at failInterval 5s and for the
/// old primary's direct clients to try it for a while after.
const HOLD: Duration = Duration::from_secs(15);
/// The spec's default maxStandbyLag.
const MAX_STANDBY_LAG: u64 = 1024 * 1024;

/// Plays `fault` for [`HOLD`] on a fresh cluster with the checker's clients writing, heals
/// it, and returns the checker's report.
fn run_with(builder: NetClusterBuilder, sync: bool, fault: Fault) -> CheckerReport {
    builder
        .spec("synchronousReplication", sync.into())
        .run(|mut cluster| async move {
            settle(&cluster).await;
            let checker = Checker::start(&cluster).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let plan = [Planned {
                at: Duration::ZERO,
                hold: HOLD,
                fault,
            }];
            let done = stolon_testkit::faults::play(&mut cluster, &plan).await;
            let report = checker.finish(&cluster, MAX_STANDBY_LAG).await;
            let mode = if sync { "sync" } else { "async" };
            eprintln!("{}", report.json(0, mode, &done));
            held_through_proxies(&report);
            report
        })
}

/// What a fault must not break, whatever the keeper's settings: every write through a
/// proxy went to the primary of its time, and the cluster settled after the heal.
fn held_through_proxies(report: &CheckerReport) {
    eprintln!("{}", report.explain());
    assert!(report.acked_proxy > 0, "no write went through the proxies");
    assert!(report.read_back, "the final primary could not be read");
    assert_eq!(
        report.split_brain_proxy,
        0,
        "commits acknowledged through a proxy by a server no longer the primary:\n{}",
        report.explain()
    );
    assert!(
        report.converged.is_some(),
        "the cluster did not settle within a minute of the heal:\n{}",
        report.explain()
    );
}

fn run(sync: bool, fault: Fault) {
    let report = run_with(NetClusterBuilder::new(), sync, fault);
    held(&report, sync);
}

/// With the keeper's default settings: no direct write to an old primary either, nothing
/// acknowledged lost in synchronous mode, nothing beyond maxStandbyLag in asynchronous.
fn held(report: &CheckerReport, sync: bool) {
    assert!(
        report.split_brain.is_empty(),
        "commits acknowledged straight by a server no longer the primary:\n{}",
        report.explain()
    );
    if sync {
        assert!(
            report.lost.is_empty(),
            "acknowledged commits lost in synchronous mode:\n{}",
            report.explain()
        );
    }
    assert_eq!(
        report.lost_beyond_lag,
        0,
        "acknowledged commits lost beyond maxStandbyLag:\n{}",
        report.explain()
    );
}

/// Waits for a primary behind the proxies and two streaming standbys.
async fn settle(cluster: &NetCluster) {
    cluster.wait_for_master(BOOT).await;
    stolon_testkit::wait_until("the cluster to settle", BOOT, || async {
        cluster.settled().await.then_some(())
    })
    .await;
}

#[test]
fn s_part_01_isolated_primary_sync() {
    run(true, Fault::IsolatePrimary);
}

#[test]
fn s_part_01_isolated_primary_async() {
    run(false, Fault::IsolatePrimary);
}

#[test]
fn s_part_02_primary_cut_from_store_sync() {
    run(true, Fault::PrimaryCutFromStore);
}

#[test]
fn s_part_02_primary_cut_from_store_async() {
    run(false, Fault::PrimaryCutFromStore);
}

#[test]
fn s_part_03_sentinel_leader_isolated_sync() {
    run(true, Fault::IsolateSentinelLeader);
}

#[test]
fn s_part_03_sentinel_leader_isolated_async() {
    run(false, Fault::IsolateSentinelLeader);
}

#[test]
fn s_part_04_proxy_isolated_sync() {
    run(true, Fault::IsolateProxy(0));
}

#[test]
fn s_part_04_proxy_isolated_async() {
    run(false, Fault::IsolateProxy(0));
}

#[test]
fn s_part_05_etcd_quorum_lost_sync() {
    run(true, Fault::EtcdQuorumLost);
}

#[test]
fn s_part_05_etcd_quorum_lost_async() {
    run(false, Fault::EtcdQuorumLost);
}

#[test]
fn s_part_06_primary_disk_full_sync() {
    primary_disk_full(true);
}

#[test]
fn s_part_06_primary_disk_full_async() {
    primary_disk_full(false);
}

/// S-PART-06: a primary whose disk is full stays the primary (its standbys hold the same
/// data on disks of the same size: a failover would move the problem, and lose what an
/// asynchronous standby lacks), its keeper reports the full disk, and it takes writes again
/// once there is room.
fn primary_disk_full(sync: bool) {
    let report = NetClusterBuilder::new()
        .spec("synchronousReplication", sync.into())
        .run(|mut cluster| async move {
            settle(&cluster).await;
            let old = cluster.master_keeper().await.expect("a primary");
            let checker = Checker::start(&cluster).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let fault = Fault::KeeperDiskFull(KeeperRole::Primary)
                .inject(&mut cluster)
                .await;
            let uid = cluster.keepers[old].uid.clone();
            let reported = stolon_testkit::wait_until(
                "the primary's keeper to report its disk full",
                HOLD,
                || async {
                    // The checkpointer may remove old WAL segments: keep the disk full.
                    cluster.fill_keeper_disk(old, true);
                    let infos: Vec<KeeperInfo> =
                        stolon_store::read_infos(cluster.store(), InfoKind::Keeper)
                            .await
                            .ok()?;
                    infos
                        .into_iter()
                        .find(|info| info.uid == uid)?
                        .postgres_state?
                        .data_disk
                        .filter(|disk| disk.full())
                },
            )
            .await;
            eprintln!("{uid} reported {reported:?}");
            tokio::time::sleep(HOLD).await;
            assert_eq!(
                cluster.master_keeper().await,
                Some(old),
                "the sentinel failed over from a primary whose disk was full"
            );
            fault.heal(&mut cluster);
            checker.finish(&cluster, MAX_STANDBY_LAG).await
        });
    held_through_proxies(&report);
    held(&report, sync);
}

/// S-PART-07: with `--store-loss ignore` (Stolon's behaviour) the isolated primary keeps
/// taking its direct clients' commits after another keeper was promoted, and the checker
/// sees it; the proxies still never reach it.
#[test]
fn s_part_07_store_loss_ignore_lets_an_isolated_primary_take_direct_writes() {
    let report = run_with(
        NetClusterBuilder::new().keeper_args(&["--store-loss", "ignore"]),
        false,
        Fault::IsolatePrimary,
    );
    assert!(
        !report.split_brain.is_empty(),
        "the isolated primary acknowledged no direct commit after the new primary's first:\n{}",
        report.explain()
    );
}

/// S-PART-08: the isolated primary's keeper gets its postgres fully down while still cut
/// off, although a fast shutdown cannot finish there (its walsenders wait to send the
/// shutdown checkpoint to standbys the partition made unreachable): a postgres stuck in
/// shutdown would keep the keeper from rejoining long after the heal.
#[test]
fn s_part_08_an_isolated_primary_is_fully_stopped_before_the_heal() {
    NetClusterBuilder::new()
        .spec("synchronousReplication", true.into())
        .run(|mut cluster| async move {
            settle(&cluster).await;
            let old = cluster.master_keeper().await.expect("a primary");
            let checker = Checker::start(&cluster).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let fault = Fault::IsolatePrimary.inject(&mut cluster).await;
            stolon_testkit::wait_until(
                "the isolated primary's postmaster to be gone",
                HOLD,
                || async {
                    cluster.keepers[old]
                        .postmaster_pid()
                        .is_none()
                        .then_some(())
                },
            )
            .await;
            fault.heal(&mut cluster);
            let report = checker.finish(&cluster, MAX_STANDBY_LAG).await;
            eprintln!("{}", report.explain());
            assert!(report.lost.is_empty(), "{}", report.explain());
            assert!(report.split_brain.is_empty(), "{}", report.explain());
            assert!(report.converged.is_some(), "{}", report.explain());
        });
}

/// S-PART-09 (campaign seed 4012): a standby's keeper restarted while its disk is full
/// cannot write its configuration, so every start of postgres fails at once, five of them
/// in a second. Once the disk has room again the keeper starts postgres by itself and the
/// standby streams again (a keeper used to give up after five failed starts until the db
/// spec changed, and that standby never came back).
#[test]
fn s_part_09_a_keeper_restarted_on_a_full_disk_starts_postgres_once_there_is_room() {
    let report = NetClusterBuilder::new()
        .spec("synchronousReplication", false.into())
        .run(|mut cluster| async move {
            settle(&cluster).await;
            let checker = Checker::start(&cluster).await;
            let primary = cluster.master_keeper().await.expect("a primary");
            let standby = (primary + 1) % cluster.keepers.len();
            cluster.kill_keeper(standby);
            cluster.fill_keeper_disk(standby, true);
            cluster.start_keeper(standby);
            stolon_testkit::wait_until("five failed starts on the full disk", HOLD * 2, || async {
                (cluster
                    .keeper_log(standby)
                    .matches("action failed action=Start")
                    .count()
                    >= 5)
                    .then_some(())
            })
            .await;
            cluster.fill_keeper_disk(standby, false);
            checker.finish(&cluster, MAX_STANDBY_LAG).await
        });
    held_through_proxies(&report);
    held(&report, false);
}
