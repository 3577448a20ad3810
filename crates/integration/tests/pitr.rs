//! S-PITR-01, S-PITR-02: a new cluster initialised with initMode pitr from another
//! cluster's base backup and WAL archive: to the end of the archive, and to a recovery
//! target time.

use serde_json::json;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use stolon_testkit::{connect, wait_until, ClusterBuilder, TestCluster, REPL_PASSWORD, REPL_USER};

const BOOT: Duration = Duration::from_secs(90);

fn postgres_user() -> nix::unistd::User {
    nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("the postgres OS user")
}

/// A directory PostgreSQL's OS user owns.
fn postgres_dir(path: PathBuf) -> PathBuf {
    let user = postgres_user();
    std::fs::create_dir_all(&path).unwrap();
    nix::unistd::chown(&path, Some(user.uid), Some(user.gid)).unwrap();
    path
}

/// What the source cluster left: its base backup and its WAL archive, and the rows it
/// committed before and after the recovery target time it returns.
struct Source {
    _cluster: TestCluster,
    _dir: tempfile::TempDir,
    backup: PathBuf,
    archive: PathBuf,
    target_time: String,
}

/// One keeper archiving its WAL; rows 1-100 before a base backup, 101-200 after it, then
/// the target time, then rows 201-300; every segment archived.
async fn source() -> Source {
    let scratch = tempfile::Builder::new()
        .prefix("stolon-test-pitr-")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = scratch.path().to_path_buf();
    // PostgreSQL's OS user reads the backup and the archive under it.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let archive = postgres_dir(dir.join("archive"));
    let cluster = ClusterBuilder::new()
        .keepers(1)
        .spec(
            "pgParameters",
            json!({
                "archive_mode": "on",
                "archive_command": format!("cp %p {}/%f", archive.display()),
            }),
        )
        .start()
        .await;
    let master = cluster.wait_for_master(BOOT).await;
    let client = connect(cluster.keepers[master].pg_port).await.unwrap();
    client
        .batch_execute(
            "create table t (id int primary key);
             insert into t select generate_series(1, 100);",
        )
        .await
        .unwrap();

    let backup = postgres_dir(dir.join("backup"));
    let user = postgres_user();
    let out = Command::new(stolon_testkit::pg_bin_dir().join("pg_basebackup"))
        .args(["-D", &backup.to_string_lossy(), "-h", "127.0.0.1"])
        .args(["-p", &cluster.keepers[master].pg_port.to_string()])
        .args(["-U", REPL_USER, "-X", "stream", "-c", "fast", "-w"])
        .env("PGPASSWORD", REPL_PASSWORD)
        .uid(user.uid.as_raw())
        .gid(user.gid.as_raw())
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_basebackup: {out:?}");

    client
        .batch_execute("insert into t select generate_series(101, 200)")
        .await
        .unwrap();
    let target_time: String = client
        .query_one("select now()::text", &[])
        .await
        .unwrap()
        .get(0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client
        .batch_execute("insert into t select generate_series(201, 300)")
        .await
        .unwrap();
    let last: String = client
        .query_one("select pg_walfile_name(pg_switch_wal())", &[])
        .await
        .unwrap()
        .get(0);
    wait_until("the last segment in the archive", BOOT, || async {
        archive.join(&last).exists().then_some(())
    })
    .await;
    Source {
        _cluster: cluster,
        _dir: scratch,
        backup,
        archive,
        target_time,
    }
}

/// A new cluster of two keepers restored from `source` with `targets`.
async fn restored(source: &Source, targets: serde_json::Value) -> TestCluster {
    let cluster = ClusterBuilder::new()
        .keepers(2)
        .spec("initMode", "pitr".into())
        .spec("mergePgParameters", false.into())
        .spec(
            "pitrConfig",
            json!({
                "dataRestoreCommand": format!("cp -a {}/. %d", source.backup.display()),
                "archiveRecoverySettings": {
                    "restoreCommand": format!("cp {}/%f %p", source.archive.display()),
                },
                "recoveryTargetSettings": targets,
            }),
        )
        .start()
        .await;
    cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(1, BOOT).await;
    cluster
}

/// The ids in `t` through the proxy, and on the standby.
async fn ids(cluster: &TestCluster) -> (Vec<i32>, Vec<i32>) {
    let query = "select id from t order by id";
    let primary = connect(cluster.proxy_port()).await.unwrap();
    let on_primary: Vec<i32> = primary
        .query(query, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let master = cluster.wait_for_master(BOOT).await;
    let standby = connect(cluster.keepers[1 - master].pg_port).await.unwrap();
    let on_standby = wait_until("the standby to replay the primary", BOOT, || async {
        let rows: Vec<i32> = standby
            .query(query, &[])
            .await
            .ok()?
            .iter()
            .map(|r| r.get(0))
            .collect();
        (rows == on_primary).then_some(rows)
    })
    .await;
    (on_primary, on_standby)
}

fn span(from: i32, to: i32) -> Vec<i32> {
    (from..=to).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn s_pitr_01_a_new_cluster_restores_a_base_backup_and_replays_the_archive() {
    let source = source().await;
    let cluster = restored(&source, json!({})).await;
    let (primary, standby) = ids(&cluster).await;
    assert_eq!(primary, span(1, 300), "everything the archive holds");
    assert_eq!(standby, primary);
    let master = cluster.wait_for_master(BOOT).await;
    let log = cluster.keeper_log(master);
    for line in [
        "restoring the database cluster (initMode pitr)",
        "running dataRestoreCommand",
        "recovery finished",
    ] {
        assert!(log.contains(line), "{line}: {log}");
    }
    cluster.assert_no_unexpected_errors(&[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn s_pitr_02_a_recovery_target_time_stops_the_replay_there() {
    let source = source().await;
    let cluster = restored(&source, json!({ "recoveryTargetTime": source.target_time })).await;
    let (primary, standby) = ids(&cluster).await;
    assert_eq!(
        primary,
        span(1, 200),
        "what was committed before the target"
    );
    assert_eq!(standby, primary);
    // The restored primary writes on a timeline of its own.
    connect(cluster.proxy_port())
        .await
        .unwrap()
        .batch_execute("insert into t values (1000)")
        .await
        .unwrap();
    cluster.assert_no_unexpected_errors(&[]);
}

/// A dataRestoreCommand that fails leaves an empty data directory, is retried, and no
/// primary appears; nothing else is touched.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_data_restore_command_leaves_nothing_behind() {
    let mut cluster = ClusterBuilder::new()
        .keepers(1)
        .spec("initMode", "pitr".into())
        .spec(
            "pitrConfig",
            json!({ "dataRestoreCommand": "touch %d/PG_VERSION; echo no backup here >&2; exit 3" }),
        )
        .start()
        .await;
    wait_until("the restore to fail twice", BOOT, || async {
        (cluster
            .keeper_log(0)
            .matches("running dataRestoreCommand")
            .count()
            >= 2)
            .then_some(())
    })
    .await;
    let log = cluster.keeper_log(0);
    assert!(log.contains("no backup here"), "{log}");
    let cd = cluster.cluster_data().await.expect("cluster data");
    assert_eq!(cd.proxy.spec.master_db_uid, None, "no primary to route to");
    // A keeper asked to stop finishes the attempt under way, clean-up included.
    cluster.keepers[0]
        .process
        .take()
        .unwrap()
        .stop(Duration::from_secs(20));
    let pgdata = cluster.keepers[0].data_dir.join("postgres");
    assert!(
        std::fs::read_dir(&pgdata).unwrap().next().is_none(),
        "the half restored directory is emptied"
    );
    cluster.assert_no_unexpected_errors(&["action failed"]);
}
