//! Where the passwords go: a standby streams with its replication password read from a
//! private password file, and after a failover with pg_rewind and a rejoin no other file of
//! the keepers' data directories, no log line of any program, and no answer of a keeper's
//! HTTP endpoints holds a password (nor do those show query text). And how they change:
//! rewritten password files are taken on a live cluster, without a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;
use stolon_testkit::{
    connect, connect_as, http_get, wait_until, ClusterBuilder, REPL_PASSWORD, REPL_USER,
    SU_PASSWORD, SU_USER,
};

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
    stolon_testkit::streaming_standbys(&client).await
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

const NEW_SU_PASSWORD: &str = "rotated su pw";
const NEW_REPL_PASSWORD: &str = "rotated:repl\\pw";
/// As a passfile line spells it: its separator and escape character escaped.
const NEW_REPL_PASSWORD_ESCAPED: &str = r"rotated\:repl\\pw";

fn local(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// Whether the superuser logs in to the instance on `port` with `password`.
async fn su_logs_in(port: u16, password: &str) -> bool {
    connect_as(local(port), SU_USER, password).await.is_ok()
}

/// What the instance on `port` stores as `role`'s password, read as the superuser.
async fn stored_password(port: u16, su_password: &str, role: &str) -> Option<String> {
    let client = connect_as(local(port), SU_USER, su_password).await.ok()?;
    client
        .query_one(
            "select rolpassword from pg_authid where rolname = $1",
            &[&role],
        )
        .await
        .ok()?
        .get(0)
}

/// The documented rotation: the password files are replaced on every keeper; the primary's
/// keeper sets both roles' new passwords, the standby replays them and its keeper writes the
/// new replication password to its passfile, and the standby streams again with it after
/// its connection breaks. The old passwords are refused; no keeper restarted, no log line
/// holds a new password.
#[tokio::test(flavor = "multi_thread")]
async fn rewritten_password_files_are_taken_by_the_live_cluster() {
    let cluster = ClusterBuilder::new().keepers(2).start().await;
    let primary = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(1, BOOT).await;
    let standby = 1 - primary;
    let primary_port = cluster.keepers[primary].pg_port;
    let standby_port = cluster.keepers[standby].pg_port;
    wait_until("the standby to stream", BOOT, || async {
        (streaming_standbys(primary_port).await? == 1).then_some(())
    })
    .await;
    let keeper_pids = || -> Vec<Option<i32>> {
        cluster
            .keepers
            .iter()
            .map(|k| k.process.as_ref().and_then(|p| p.pid()))
            .collect()
    };
    let pids = keeper_pids();

    cluster.rewrite_password_files(NEW_SU_PASSWORD, NEW_REPL_PASSWORD);
    for (what, port) in [("primary", primary_port), ("standby", standby_port)] {
        let repl = wait_until(
            &format!("the {what} to hold both new passwords"),
            BOOT,
            || async {
                let repl = stored_password(port, NEW_SU_PASSWORD, REPL_USER).await?;
                stolon_pg::secret::verifier_accepts(&repl, REPL_USER, NEW_REPL_PASSWORD)
                    .then_some(repl)
            },
        )
        .await;
        assert!(
            !stolon_pg::secret::verifier_accepts(&repl, REPL_USER, REPL_PASSWORD),
            "the {what}'s replication role still takes the old password"
        );
        assert!(
            !su_logs_in(port, SU_PASSWORD).await,
            "the {what} still takes the superuser's old password"
        );
    }
    let passfile = cluster.keepers[standby].data_dir.join("replication.pgpass");
    wait_until(
        "the standby's passfile to name the new password",
        BOOT,
        || async { holds(&passfile, NEW_REPL_PASSWORD_ESCAPED).then_some(()) },
    )
    .await;
    assert!(!holds(&passfile, REPL_PASSWORD), "{}", passfile.display());

    // The walreceiver logs in again: with the new password, as the old one is refused.
    let client = connect_as(local(primary_port), SU_USER, NEW_SU_PASSWORD)
        .await
        .unwrap();
    let cut: String = client
        .query_one("select now()::text", &[])
        .await
        .unwrap()
        .get(0);
    client
        .execute(
            "select pg_terminate_backend(pid) from pg_stat_replication where application_name like 'stolon_%'",
            &[],
        )
        .await
        .unwrap();
    wait_until("the standby to stream again", BOOT, || async {
        let row = client
            .query_one(
                "select count(*) from pg_stat_replication where state = 'streaming' and application_name like 'stolon_%' and backend_start > $1::text::timestamptz",
                &[&cut],
            )
            .await
            .ok()?;
        (row.get::<_, i64>(0) == 1).then_some(())
    })
    .await;
    assert_eq!(keeper_pids(), pids, "a keeper restarted");
    for log in files_under(&cluster.root().join("logs")) {
        for secret in [NEW_SU_PASSWORD, NEW_REPL_PASSWORD] {
            assert!(
                !holds(&log, secret),
                "{} logs the password {secret:?}",
                log.display()
            );
        }
    }
}
