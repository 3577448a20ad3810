//! A primary cut off from the store, seen by a client connected to its postgres directly
//! (not through a proxy): with `--store-loss fence` (the default) its keeper stops postgres
//! before the sentinel could promote another keeper, and brings it back as the primary when
//! the store returns; with `--store-loss ignore` postgres keeps taking commits, as in Stolon.

use nix::sys::signal::Signal;
use std::time::{Duration, Instant};
use stolon_cluster::DbUid;
use stolon_testkit::{
    connect, http_get, metric, wait_until, ClusterBuilder, KeeperOptions, TestCluster,
};
use tokio_postgres::Client;

const BOOT: Duration = Duration::from_secs(90);
/// The test kit's failInterval (sleepInterval 1s: a heartbeat every second).
const FAIL_INTERVAL: Duration = Duration::from_secs(5);
const FENCED: &str = "store unreachable: fencing postgres";
const LIFTED: &str = "store reachable again: fence lifted";
/// Errors the store outage provokes on purpose.
const EXPECTED: &[&str] = &["action failed", "cannot connect to master"];

/// A client of one postgres, reconnecting after an error, that records the ids of the rows
/// whose commit was acknowledged.
struct Direct {
    port: u16,
    client: Option<Client>,
    next_id: i32,
    acked: Vec<i32>,
}

impl Direct {
    async fn new(port: u16) -> Direct {
        let client = connect(port).await.expect("connecting to the primary");
        client
            .batch_execute("create table direct (id int primary key)")
            .await
            .unwrap();
        Direct {
            port,
            client: Some(client),
            next_id: 0,
            acked: Vec::new(),
        }
    }

    /// One insert, on a new connection if the last one failed: whether it was committed.
    async fn commit(&mut self) -> Result<(), String> {
        self.next_id += 1;
        let id = self.next_id;
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = Some(connect(self.port).await.map_err(|e| e.to_string())?);
        }
        let client = self.client.as_ref().expect("connected above");
        match client
            .execute("insert into direct (id) values ($1)", &[&id])
            .await
        {
            Ok(_) => {
                self.acked.push(id);
                Ok(())
            }
            Err(e) => {
                self.client = None;
                Err(e.to_string())
            }
        }
    }
}

/// A cluster of two keepers started with `keeper_args`, with its primary's index, its db
/// and a direct client of its postgres.
async fn cluster_with_direct_client(keeper_args: &[&str]) -> (TestCluster, usize, DbUid, Direct) {
    let options = KeeperOptions {
        extra_args: keeper_args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    };
    let cluster = ClusterBuilder::new()
        .keeper(options.clone())
        .keeper(options)
        .start()
        .await;
    let primary = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(1, BOOT).await;
    let db = master_db(&cluster).await;
    let mut direct = Direct::new(cluster.keepers[primary].pg_port).await;
    direct.commit().await.expect("a commit before the outage");
    (cluster, primary, db, direct)
}

async fn master_db(cluster: &TestCluster) -> DbUid {
    cluster
        .cluster_data()
        .await
        .and_then(|cd| cd.master_db().map(|db| db.uid.clone()))
        .expect("a master db")
}

/// With the store back: the same keeper serves as the primary of the same db (no failover),
/// with every row it acknowledged.
async fn same_primary_back(cluster: &TestCluster, primary: usize, db: &DbUid, direct: &mut Direct) {
    wait_until(
        "the primary's postgres to take commits again",
        BOOT,
        || async {
            let client = connect(direct.port).await.ok()?;
            let in_recovery: bool = client
                .query_one("select pg_is_in_recovery()", &[])
                .await
                .ok()?
                .get(0);
            (!in_recovery).then_some(())
        },
    )
    .await;
    direct.commit().await.expect("a commit after the outage");
    assert_eq!(cluster.wait_for_master(BOOT).await, primary, "no failover");
    assert_eq!(&master_db(cluster).await, db, "the same master db");
    let client = connect(direct.port).await.unwrap();
    let present: Vec<i32> = client
        .query("select id from direct", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let lost: Vec<&i32> = direct
        .acked
        .iter()
        .filter(|id| !present.contains(id))
        .collect();
    assert!(lost.is_empty(), "acknowledged rows lost: {lost:?}");
}

async fn fenced_metric(http_port: u16) -> f64 {
    let (_, body) = http_get(http_port, "/metrics")
        .await
        .expect("the keeper's metrics");
    metric(&body, "stolon_keeper_fenced")
}

/// etcd killed: the primary still commits at first; within failInterval less a heartbeat of
/// its last stored info its keeper stops postgres (the fence line in its log), and it stays
/// stopped while the store is away. The store back, the same keeper's postgres is the
/// primary again, of the same db, with every acknowledged row.
#[tokio::test(flavor = "multi_thread")]
async fn primary_cut_from_store_stops_direct_writes() {
    fenced_while_the_store_is_away(Outage::Refuses).await;
}

/// The same with etcd hung (SIGSTOP): the keeper's loop waits in its store requests, and
/// the fence falls due all the same.
#[tokio::test(flavor = "multi_thread")]
async fn primary_with_a_hung_store_stops_direct_writes() {
    fenced_while_the_store_is_away(Outage::Hangs).await;
}

#[derive(Clone, Copy)]
enum Outage {
    Refuses,
    Hangs,
}

async fn fenced_while_the_store_is_away(outage: Outage) {
    let (mut cluster, primary, db, mut direct) = cluster_with_direct_client(&[]).await;
    assert!(!cluster.keeper_log(primary).contains(FENCED));

    match outage {
        Outage::Refuses => cluster.kill_store(),
        Outage::Hangs => cluster.store_process().signal(Signal::SIGSTOP),
    }
    let down = Instant::now();
    direct
        .commit()
        .await
        .expect("a commit right after the store went down");
    let bound = 3 * FAIL_INTERVAL;
    let refused = loop {
        if let Err(e) = direct.commit().await {
            break e;
        }
        assert!(
            down.elapsed() < bound,
            "direct commits still acknowledged {bound:?} after the store went down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = cluster.keeper_log(primary);
    assert!(log.contains(FENCED), "{refused}\n{log}");
    let http = cluster.keepers[primary].http_port;
    assert_eq!(fenced_metric(http).await, 1.0);
    // Fenced until the store comes back: nothing starts postgres again meanwhile.
    let fenced = Instant::now();
    while fenced.elapsed() < FAIL_INTERVAL {
        assert!(
            direct.commit().await.is_err(),
            "a direct commit acknowledged while fenced"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    match outage {
        Outage::Refuses => cluster.restart_store(),
        Outage::Hangs => cluster.store_process().signal(Signal::SIGCONT),
    }
    same_primary_back(&cluster, primary, &db, &mut direct).await;
    assert!(cluster.keeper_log(primary).contains(LIFTED));
    assert_eq!(fenced_metric(http).await, 0.0);
    cluster.assert_no_unexpected_errors(EXPECTED);
}

/// `--store-loss ignore`: with etcd killed the primary keeps acknowledging direct commits
/// for three failIntervals, and is still the primary when the store comes back.
#[tokio::test(flavor = "multi_thread")]
async fn store_loss_ignore_keeps_postgres_running() {
    let (mut cluster, primary, db, mut direct) =
        cluster_with_direct_client(&["--store-loss", "ignore"]).await;

    cluster.kill_store();
    let killed = Instant::now();
    while killed.elapsed() < 3 * FAIL_INTERVAL {
        direct
            .commit()
            .await
            .expect("a direct commit while the store is down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!cluster.keeper_log(primary).contains(FENCED));

    cluster.restart_store();
    same_primary_back(&cluster, primary, &db, &mut direct).await;
    cluster.assert_no_unexpected_errors(EXPECTED);
}

/// The first primary's keeper spends longer in initdb than failInterval - heartbeat without
/// publishing: while the cluster initialises no failover can replace it, so its fence must
/// not stop the instance it is making (it used to, and the init failed and started over).
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_initdb_is_not_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let slow = stolon_testkit::slow_pg_bin_dir(dir.path(), "initdb", Duration::from_secs(4));
    let cluster = ClusterBuilder::new()
        .keeper(KeeperOptions {
            pg_bin_dir: Some(slow),
            ..Default::default()
        })
        .spec("failInterval", "3s".into())
        .start()
        .await;
    cluster.wait_for_master(Duration::from_secs(90)).await;
    let log = cluster.keeper_log(0);
    assert!(!log.contains("fencing postgres"), "{log}");
    assert_eq!(
        log.matches("initializing the database cluster").count(),
        1,
        "{log}"
    );
    cluster.assert_no_unexpected_errors(&[]);
}
