//! Where the passwords go: a standby streams with its replication password read from a
//! private password file, and after a failover with pg_rewind and a rejoin no other file of
//! the keepers' data directories, no log line of any program, and no answer of a keeper's
//! HTTP endpoints holds a password (nor do those show query text).

use std::path::{Path, PathBuf};
use std::time::Duration;
use stolon_testkit::{connect, http_get, wait_until, ClusterBuilder, REPL_PASSWORD, SU_PASSWORD};

const BOOT: Duration = Duration::from_secs(90);

/// Every file under `dir` (symbolic links not followed).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                found.push(entry.path());
            }
        }
    }
    found
}

fn holds(path: &Path, secret: &str) -> bool {
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes
        .windows(secret.len())
        .any(|window| window == secret.as_bytes())
}

async fn streaming_standbys(primary_port: u16) -> Option<i64> {
    let client = connect(primary_port).await.ok()?;
    let row = client
        .query_one(
            "select count(*) from pg_stat_replication where state = 'streaming' and application_name like 'stolon_%'",
            &[],
        )
        .await
        .ok()?;
    Some(row.get(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_private_password_files_hold_a_password() {
    let mut cluster = ClusterBuilder::new()
        .keepers(2)
        .spec("usePgrewind", true.into())
        .start()
        .await;
    let old = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(1, BOOT).await;
    let standby = 1 - old;
    let primary_port = cluster.keepers[old].pg_port;
    wait_until("the standby to stream", BOOT, || async {
        (streaming_standbys(primary_port).await? == 1).then_some(())
    })
    .await;
    let conninfo: String = connect(cluster.keepers[standby].pg_port)
        .await
        .unwrap()
        .query_one("show primary_conninfo", &[])
        .await
        .unwrap()
        .get(0);
    assert!(conninfo.contains("passfile="), "{conninfo}");
    assert!(!conninfo.contains(REPL_PASSWORD), "{conninfo}");

    // A failover, and the old primary rewound: pg_rewind and pg_basebackup get their
    // passwords the same way.
    cluster.kill_keeper_and_postgres(old);
    let new = cluster.wait_for_new_master(old, BOOT).await;
    cluster.start_keeper(old);
    cluster.wait_rejoined_never_primary(old, BOOT).await;
    let new_port = cluster.keepers[new].pg_port;
    wait_until(
        "the old primary to stream from the new one",
        BOOT,
        || async { (streaming_standbys(new_port).await? == 1).then_some(()) },
    )
    .await;

    let mut allowed = Vec::new();
    for keeper in &cluster.keepers {
        for file in files_under(&keeper.data_dir) {
            for secret in [SU_PASSWORD, REPL_PASSWORD] {
                if holds(&file, secret) {
                    allowed.push((file.clone(), secret));
                }
            }
        }
    }
    for (file, secret) in &allowed {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            file.file_name().and_then(|n| n.to_str()),
            Some("replication.pgpass"),
            "{} holds the password {secret:?}",
            file.display()
        );
        assert_eq!(*secret, REPL_PASSWORD, "{}", file.display());
        let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", file.display());
    }
    assert_eq!(
        allowed.len(),
        2,
        "each keeper has its replication password file: {allowed:?}"
    );
    for keeper in &cluster.keepers {
        for path in ["/metrics", "/health", "/primary", "/replica"] {
            let (status, body) = http_get(keeper.http_port, path).await.expect(path);
            let answer = format!("{status}\n{body}");
            for secret in [SU_PASSWORD, REPL_PASSWORD] {
                assert!(
                    !answer.contains(secret),
                    "{path} shows a password: {answer}"
                );
            }
            assert!(
                !answer.to_lowercase().contains("select "),
                "{path} shows query text: {answer}"
            );
        }
    }
    for log in files_under(&cluster.root().join("logs")) {
        for secret in [SU_PASSWORD, REPL_PASSWORD] {
            assert!(
                !holds(&log, secret),
                "{} logs the password {secret:?}",
                log.display()
            );
        }
    }
}
