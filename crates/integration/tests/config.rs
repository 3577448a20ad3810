//! PostgreSQL configuration owned by the keepers: parameters, restarts, ALTER SYSTEM, slots.

use std::time::Duration;
use stolon_testkit::{connect, wait_until, ClusterBuilder};

const BOOT: Duration = Duration::from_secs(90);
const FAILOVER: Duration = Duration::from_secs(60);

async fn show(port: u16, name: &str) -> Option<String> {
    let client = connect(port).await.ok()?;
    let row = client.query_one(&format!("show {name}"), &[]).await.ok()?;
    Some(row.get(0))
}

async fn slots(port: u16) -> Option<Vec<String>> {
    let client = connect(port).await.ok()?;
    let rows = client
        .query(
            "select slot_name::text from pg_replication_slots order by 1",
            &[],
        )
        .await
        .ok()?;
    Some(rows.iter().map(|r| r.get(0)).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn s_cfg_01_parameters_reload_and_restart_when_asked() {
    let cluster = ClusterBuilder::new().keepers(1).start().await;
    let master = cluster.wait_for_master(BOOT).await;
    let port = cluster.keepers[master].pg_port;
    cluster
        .update_cluster_data(|cd| {
            cd.cluster.spec.pg_parameters = Some(
                [("work_mem", "8MB"), ("max_connections", "150")]
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .into(),
            )
        })
        .await;
    wait_until("work_mem reloaded", BOOT, || async {
        (show(port, "work_mem").await? == "8MB").then_some(())
    })
    .await;
    // max_connections needs a restart: reported, not applied.
    wait_until("the restart need to be reported", BOOT, || async {
        cluster
            .keeper_log(master)
            .contains("need a restart to take effect")
            .then_some(())
    })
    .await;
    assert_eq!(show(port, "max_connections").await.as_deref(), Some("100"));
    cluster
        .update_cluster_data(|cd| cd.cluster.spec.automatic_pg_restart = Some(true))
        .await;
    wait_until("max_connections applied by a restart", BOOT, || async {
        (show(port, "max_connections").await? == "150").then_some(())
    })
    .await;
    assert!(cluster
        .keeper_log(master)
        .contains("restarting postgres to apply parameters"));
    cluster.assert_no_unexpected_errors(&[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn s_cfg_02_wal_level_stays_replica_unless_logical() {
    let cluster = ClusterBuilder::new()
        .keepers(1)
        .spec("pgParameters", serde_json::json!({"wal_level": "minimal"}))
        .start()
        .await;
    let master = cluster.wait_for_master(BOOT).await;
    let port = cluster.keepers[master].pg_port;
    assert_eq!(show(port, "wal_level").await.as_deref(), Some("replica"));
    cluster
        .update_cluster_data(|cd| {
            cd.cluster.spec.pg_parameters =
                Some([("wal_level".to_string(), "logical".to_string())].into());
            cd.cluster.spec.automatic_pg_restart = Some(true);
        })
        .await;
    wait_until("wal_level logical", BOOT, || async {
        (show(port, "wal_level").await? == "logical").then_some(())
    })
    .await;
    cluster.assert_no_unexpected_errors(&[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn s_cfg_03_alter_system_cannot_change_the_configuration() {
    let cluster = ClusterBuilder::new().keepers(1).start().await;
    let master = cluster.wait_for_master(BOOT).await;
    let client = connect(cluster.proxy_port()).await.unwrap();
    let err = client
        .batch_execute("alter system set work_mem = '1MB'")
        .await
        .expect_err("ALTER SYSTEM must fail");
    let message = err
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("postgresql.auto.conf"), "{message}");
    client
        .batch_execute("select pg_reload_conf()")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        show(cluster.keepers[master].pg_port, "work_mem")
            .await
            .as_deref(),
        Some("4MB")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn s_cfg_04_additional_slots_on_the_primary_only_and_across_failover() {
    let mut cluster = ClusterBuilder::new()
        .keepers(2)
        .spec(
            "additionalMasterReplicationSlots",
            serde_json::json!(["backup"]),
        )
        .start()
        .await;
    let master = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(1, BOOT).await;
    let primary = cluster.keepers[master].pg_port;
    wait_until("the additional slot on the primary", BOOT, || async {
        slots(primary)
            .await?
            .contains(&"stolon_backup".to_string())
            .then_some(())
    })
    .await;
    let standby = 1 - master;
    assert!(!slots(cluster.keepers[standby].pg_port)
        .await
        .unwrap()
        .contains(&"stolon_backup".to_string()));

    cluster.kill_keeper_and_postgres(master);
    let new_master = cluster.wait_for_new_master(master, FAILOVER).await;
    let new_port = cluster.keepers[new_master].pg_port;
    wait_until("the additional slot on the new primary", BOOT, || async {
        slots(new_port)
            .await?
            .contains(&"stolon_backup".to_string())
            .then_some(())
    })
    .await;

    cluster
        .update_cluster_data(|cd| cd.cluster.spec.additional_master_replication_slots = None)
        .await;
    wait_until("the additional slot dropped", BOOT, || async {
        (!slots(new_port)
            .await?
            .contains(&"stolon_backup".to_string()))
        .then_some(())
    })
    .await;
    cluster.assert_no_unexpected_errors(&["action failed", "cannot connect to master"]);
}

/// A slot of the operator's, without our prefix, stays while the keeper replaces ours.
#[tokio::test(flavor = "multi_thread")]
async fn slots_without_our_prefix_are_never_dropped() {
    let cluster = ClusterBuilder::new()
        .keepers(1)
        .spec(
            "additionalMasterReplicationSlots",
            serde_json::json!(["one"]),
        )
        .start()
        .await;
    let master = cluster.wait_for_master(BOOT).await;
    let port = cluster.keepers[master].pg_port;
    wait_until("our slot", BOOT, || async {
        slots(port)
            .await?
            .contains(&"stolon_one".to_string())
            .then_some(())
    })
    .await;
    connect(port)
        .await
        .unwrap()
        .batch_execute("select pg_create_physical_replication_slot('custom')")
        .await
        .unwrap();
    cluster
        .update_cluster_data(|cd| {
            cd.cluster.spec.additional_master_replication_slots = Some(vec!["two".into()])
        })
        .await;
    wait_until("our slots replaced", BOOT, || async {
        let now = slots(port).await?;
        (now == ["custom", "stolon_two"]).then_some(())
    })
    .await;
    cluster.assert_no_unexpected_errors(&[]);
}

/// `pgHBA` replaces the default "everyone with a password" rules: only the listed users get
/// in, besides the superuser and the replication user.
#[tokio::test(flavor = "multi_thread")]
async fn s_cfg_06_pg_hba_entries_take_effect() {
    let cluster = ClusterBuilder::new()
        .keepers(1)
        .spec(
            "pgHBA",
            serde_json::json!(["host all app 127.0.0.1/32 md5"]),
        )
        .start()
        .await;
    let master = cluster.wait_for_master(BOOT).await;
    let port = cluster.keepers[master].pg_port;
    connect(port)
        .await
        .unwrap()
        .batch_execute(
            "create role app login password 'app-pw'; create role other login password 'other-pw'",
        )
        .await
        .unwrap();
    let login = |user: &'static str, password: &'static str| async move {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(port)
            .user(user)
            .password(password)
            .dbname("postgres");
        config.connect(tokio_postgres::NoTls).await.map(drop)
    };
    login("app", "app-pw")
        .await
        .expect("app is listed in pgHBA");
    let err = login("other", "other-pw")
        .await
        .expect_err("other is not listed");
    let message = err
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("pg_hba.conf"), "{message}");
    cluster.assert_no_unexpected_errors(&[]);
}

/// `--pg-advertise-port` is what the other components use: with a relay in front of the
/// primary, the proxy and the standby reach it only through the advertised port.
#[tokio::test(flavor = "multi_thread")]
async fn s_cfg_05_advertised_port_is_what_others_use() {
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let advertised = relay.local_addr().unwrap().port();
    let relayed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut cluster = ClusterBuilder::new().start().await;
    cluster.keepers.push(stolon_testkit::KeeperHandle::new(
        &cluster,
        0,
        stolon_testkit::KeeperOptions {
            advertise_port: Some(advertised),
            ..Default::default()
        },
    ));
    let target = cluster.keepers[0].pg_port;
    let count = relayed.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = relay.accept().await else {
                return;
            };
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    cluster.start_keeper(0);
    cluster.keepers.push(stolon_testkit::KeeperHandle::new(
        &cluster,
        1,
        Default::default(),
    ));
    cluster.start_keeper(1);
    assert_eq!(cluster.wait_for_master(BOOT).await, 0);
    cluster.wait_for_standbys(1, BOOT).await;
    let cd = cluster.cluster_data().await.unwrap();
    let primary = cd.db_of_keeper(&cluster.keepers[0].uid).unwrap();
    assert_eq!(
        primary.status.port, advertised,
        "the cluster data has the advertised port"
    );
    let standby_conf =
        std::fs::read_to_string(cluster.keepers[1].data_dir.join("postgres/postgresql.conf"))
            .unwrap();
    assert!(
        standby_conf.contains(&format!("port={advertised} ")),
        "the standby streams from the advertised port: {standby_conf}"
    );
    let before = relayed.load(std::sync::atomic::Ordering::SeqCst);
    connect(cluster.proxy_port())
        .await
        .unwrap()
        .simple_query("select 1")
        .await
        .unwrap();
    assert!(
        relayed.load(std::sync::atomic::Ordering::SeqCst) > before,
        "the proxy went through the relay"
    );
}
