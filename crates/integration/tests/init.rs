//! Cluster initialisation: users, password files, the initial spec, initdb options.

use std::time::Duration;
use stolon_testkit::{
    connect, wait_for_service, wait_until, ClusterBuilder, TestCluster, SU_PASSWORD, SU_USER,
};

const BOOT: Duration = Duration::from_secs(90);

async fn role_can_replicate(port: u16, role: &str) -> Option<bool> {
    let client = connect(port).await.ok()?;
    let row = client
        .query_opt(
            "select rolreplication from pg_roles where rolname = $1",
            &[&role],
        )
        .await
        .ok()?;
    Some(row.is_some_and(|r| r.get(0)))
}

#[tokio::test(flavor = "multi_thread")]
async fn s_init_05_separate_superuser_and_replication_user() {
    let cluster = ClusterBuilder::new().keepers(2).start().await;
    let master = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(1, BOOT).await;
    let port = cluster.keepers[master].pg_port;
    assert_eq!(
        role_can_replicate(port, &cluster.repl_user).await,
        Some(true)
    );
    let client = connect(port).await.unwrap();
    let superuser: bool = client
        .query_one(
            "select rolsuper from pg_roles where rolname = $1",
            &[&cluster.repl_user],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!superuser, "the replication user is not a superuser");
}

#[tokio::test(flavor = "multi_thread")]
async fn s_init_05_superuser_is_the_replication_user() {
    let cluster = ClusterBuilder::new()
        .keepers(2)
        .replication_user(SU_USER, SU_PASSWORD)
        .start()
        .await;
    let master = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(1, BOOT).await;
    let port = cluster.keepers[master].pg_port;
    assert_eq!(role_can_replicate(port, SU_USER).await, Some(true));
    assert_eq!(
        role_can_replicate(port, "repluser").await,
        Some(false),
        "no second role"
    );
}

/// `--initial-cluster-spec` only writes a cluster when the store has none.
#[tokio::test(flavor = "multi_thread")]
async fn s_init_06_initial_spec_only_without_cluster_data() {
    let mut cluster = ClusterBuilder::new().keepers(1).start().await;
    cluster.wait_for_master(BOOT).await;
    let before = cluster.cluster_data().await.unwrap();
    std::fs::write(
        cluster.spec_path(),
        r#"{"initMode":"new","sleepInterval":"2s","failInterval":"9s"}"#,
    )
    .unwrap();
    cluster.add_sentinel();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = cluster.cluster_data().await.unwrap();
    assert_eq!(after.cluster.uid, before.cluster.uid);
    assert_eq!(after.cluster.spec, before.cluster.spec);
}

/// A password file's trailing newline is removed with a warning; a file with only a newline
/// is fatal.
#[tokio::test(flavor = "multi_thread")]
async fn s_init_08_password_files() {
    let mut cluster = ClusterBuilder::new().keepers(1).start().await;
    let master = cluster.wait_for_master(BOOT).await;
    cluster.keepers[master]
        .process
        .take()
        .unwrap()
        .stop(Duration::from_secs(30));
    let file = cluster.root().join("su-password");
    std::fs::write(&file, format!("{SU_PASSWORD}\n")).unwrap();
    cluster.start_keeper(master);
    let port = cluster.proxy_port();
    wait_for_service("service with the trimmed password", port, BOOT).await;
    assert!(cluster
        .keeper_last_log(master)
        .contains("superuser password contain trailing new line, removing"));

    cluster.keepers[master]
        .process
        .take()
        .unwrap()
        .stop(Duration::from_secs(30));
    std::fs::write(&file, "\n").unwrap();
    cluster.start_keeper(master);
    let code = wait_until("the keeper to exit", BOOT, || {
        let code = cluster.keepers[master]
            .process
            .as_mut()
            .unwrap()
            .exit_code();
        async move { code }
    })
    .await;
    assert_eq!(code, Some(1));
    assert!(cluster
        .keeper_last_log(master)
        .contains("superuser password is empty after removing trailing new line"));
}

#[tokio::test(flavor = "multi_thread")]
async fn new_config_initdb_options_are_applied() {
    let cluster = ClusterBuilder::new()
        .keepers(1)
        .spec(
            "newConfig",
            serde_json::json!({"dataChecksums": true, "encoding": "UTF8", "locale": "C"}),
        )
        .start()
        .await;
    let master = cluster.wait_for_master(BOOT).await;
    let client = connect(cluster.keepers[master].pg_port).await.unwrap();
    let checksums: String = client
        .query_one("show data_checksums", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(checksums, "on");
    let encoding: String = client
        .query_one("show server_encoding", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(encoding, "UTF8");
}

/// How the superuser's and the replication user's passwords are stored, by role.
async fn stored_passwords(port: u16) -> Vec<(String, String)> {
    let client = connect(port).await.unwrap();
    client
        .query(
            "select rolname::text, rolpassword from pg_authid where rolpassword is not null order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// scram-sha-256 by default for the superuser and the replication user: the keepers' own
/// connections, base backups, streaming and clients through the proxy all work with it,
/// and both passwords are stored as SCRAM verifiers.
#[tokio::test(flavor = "multi_thread")]
async fn scram_sha_256_authentication_is_the_default() {
    let cluster = ClusterBuilder::new().keepers(2).start().await;
    auth_method_is_used(&cluster, "scram-sha-256", "SCRAM-SHA-256$").await;
}

/// md5 stays selectable: the pg_hba lines say md5, and the replication user's password is
/// stored as an md5 hash.
#[tokio::test(flavor = "multi_thread")]
async fn md5_authentication_stays_selectable() {
    let cluster = ClusterBuilder::new()
        .keepers(2)
        .auth_method("md5")
        .start()
        .await;
    auth_method_is_used(&cluster, "md5", "md5").await;
}

async fn auth_method_is_used(cluster: &TestCluster, method: &str, stored_prefix: &str) {
    let master = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(1, BOOT).await;
    let hba = std::fs::read_to_string(
        cluster.keepers[master]
            .data_dir
            .join("postgres/pg_hba.conf"),
    )
    .unwrap();
    for line in [
        format!("host replication {} 0.0.0.0/0 {method}", cluster.repl_user),
        format!("host all {SU_USER} 0.0.0.0/0 {method}"),
    ] {
        assert!(hba.contains(&line), "{line} is not in\n{hba}");
    }
    let stored = stored_passwords(cluster.proxy_port()).await;
    assert!(
        stored.iter().any(|(role, _)| role == &cluster.repl_user),
        "{stored:?}"
    );
    if method == "scram-sha-256" {
        for (role, password) in &stored {
            assert!(password.starts_with(stored_prefix), "{role}: {password}");
        }
    } else {
        let (_, repl) = stored
            .iter()
            .find(|(role, _)| role == &cluster.repl_user)
            .unwrap();
        assert!(repl.starts_with(stored_prefix), "{repl}");
    }
}

/// mergePgParameters (default true) copies the parameters initdb chose into the spec, under
/// the ones the spec sets; false leaves the spec alone.
async fn merge_pg_parameters(merge: bool) {
    let cluster = ClusterBuilder::new()
        .keepers(1)
        .spec("mergePgParameters", merge.into())
        .spec("pgParameters", serde_json::json!({"max_connections": "77"}))
        .start()
        .await;
    let master = cluster.wait_for_master(BOOT).await;
    let cd = cluster.cluster_data().await.unwrap();
    let params = cd.cluster.spec.pg_parameters.clone().unwrap_or_default();
    assert_eq!(
        params.get("max_connections").map(String::as_str),
        Some("77"),
        "the spec wins"
    );
    assert_eq!(params.contains_key("shared_buffers"), merge, "{params:?}");
    assert!(
        !params.contains_key("port"),
        "managed parameters are never merged"
    );
    let client = connect(cluster.keepers[master].pg_port).await.unwrap();
    let max: String = client
        .query_one("show max_connections", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(max, "77");
}

#[tokio::test(flavor = "multi_thread")]
async fn s_init_03_merge_pg_parameters() {
    merge_pg_parameters(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s_init_03_no_merge_pg_parameters() {
    merge_pg_parameters(false).await;
}

/// initMode existing: a new cluster adopts the data a keeper already has, with or without
/// merging its parameters into the spec.
async fn adopt_existing(merge: bool) {
    let cluster = ClusterBuilder::new().keepers(1).start().await;
    let master = cluster.wait_for_master(BOOT).await;
    let port = cluster.proxy_port();
    connect(port)
        .await
        .unwrap()
        .batch_execute("create table kept (id int); insert into kept values (42)")
        .await
        .unwrap();
    let before = cluster.cluster_data().await.unwrap();
    let spec = serde_json::json!({
        "initMode": "existing",
        "existingConfig": {"keeperUID": cluster.keepers[master].uid.as_str()},
        "mergePgParameters": merge,
        "sleepInterval": "1s", "failInterval": "5s", "requestTimeout": "3s",
        "proxyCheckInterval": "1s", "proxyTimeout": "5s",
    });
    let out = cluster.stolonctl(&["init", "-y", &spec.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        "the adopted cluster to serve the old rows",
        BOOT,
        || async {
            let cd = cluster.cluster_data().await?;
            if cd.cluster.uid == before.cluster.uid
                || cd.cluster.status.phase != stolon_cluster::ClusterPhase::Normal
            {
                return None;
            }
            let client = connect(port).await.ok()?;
            let row = client.query_one("select id from kept", &[]).await.ok()?;
            (row.get::<_, i32>(0) == 42).then_some(())
        },
    )
    .await;
    let cd = cluster.cluster_data().await.unwrap();
    let params = cd.cluster.spec.pg_parameters.clone().unwrap_or_default();
    assert_eq!(params.contains_key("shared_buffers"), merge, "{params:?}");
    assert!(cluster
        .sentinel_logs()
        .contains("initializing cluster using existing data"));
    assert_eq!(
        cluster
            .keeper_log(master)
            .matches("initializing the database cluster")
            .count(),
        1,
        "the data was not initialised again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn s_init_04_existing_with_merge() {
    adopt_existing(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s_init_04_existing_without_merge() {
    adopt_existing(false).await;
}

/// A data directory made group-writable while its keeper was down (what a volume with an
/// fsGroup gets at each mount on Kubernetes) is made private again before PostgreSQL starts
/// on it, which it would refuse to do.
#[tokio::test(flavor = "multi_thread")]
async fn a_group_writable_data_directory_is_secured_before_start() {
    use std::os::unix::fs::PermissionsExt;
    let mut cluster = ClusterBuilder::new().keepers(1).start().await;
    cluster.wait_for_master(BOOT).await;
    cluster.kill_keeper_and_postgres(0);
    let pgdata = cluster.keepers[0].data_dir.join("postgres");
    std::fs::set_permissions(&pgdata, std::fs::Permissions::from_mode(0o2770)).unwrap();

    cluster.start_keeper(0);
    wait_for_service("the restarted primary", cluster.keepers[0].pg_port, BOOT).await;
    let mode = std::fs::metadata(&pgdata).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "mode {mode:o}");
}
