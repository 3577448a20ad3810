//! PostgreSQL over TLS: the keepers' instances serve TLS with the certificate the spec's
//! pgParameters name (as with Stolon), standbys verify their primary's certificate
//! (`--pg-repl-sslmode verify-full`) and refuse one their CA did not sign, and the proxy
//! passes a client's TLS through to the primary untouched.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;
use stolon_testkit::tls::{TestCa, Usage};
use stolon_testkit::{
    connect, pg_bin_dir, wait_until, ClusterBuilder, KeeperHandle, KeeperOptions, SU_PASSWORD,
    SU_USER,
};

const BOOT: Duration = Duration::from_secs(90);

fn verifying_keeper(ca: &TestCa) -> KeeperOptions {
    KeeperOptions {
        extra_args: vec![
            "--pg-repl-sslmode".into(),
            "verify-full".into(),
            "--pg-repl-sslrootcert".into(),
            ca.cert.to_string_lossy().into_owned(),
        ],
        ..KeeperOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn standbys_verify_the_primary_and_clients_get_tls_through_the_proxy() {
    let certs = tempfile::tempdir().unwrap();
    // The postgres OS user reads the certificates.
    std::fs::set_permissions(certs.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ca = TestCa::new(certs.path(), "pg");
    let other = TestCa::new(certs.path(), "other");
    let server = ca.issue("server", Usage::Server, &["127.0.0.1", "localhost"]);
    let mut cluster = ClusterBuilder::new()
        .keeper(verifying_keeper(&ca))
        .keeper(verifying_keeper(&ca))
        .spec(
            "pgParameters",
            serde_json::json!({
                "ssl": "on",
                "ssl_cert_file": server.cert,
                "ssl_key_file": server.key,
            }),
        )
        .start()
        .await;
    let primary = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(1, BOOT).await;
    let primary_port = cluster.keepers[primary].pg_port;
    wait_until("the standby to stream over TLS", BOOT, || async {
        let client = connect(primary_port).await.ok()?;
        let row = client
            .query_one(
                "select count(*) from pg_stat_replication r join pg_stat_ssl s using (pid) where r.state = 'streaming' and s.ssl",
                &[],
            )
            .await
            .ok()?;
        (row.get::<_, i64>(0) == 1).then_some(())
    })
    .await;

    // A client verifying the server through the proxy talks TLS with the primary itself.
    let proxy_port = cluster.proxy_port();
    let psql = |root_cert: &std::path::Path| {
        std::process::Command::new(pg_bin_dir().join("psql"))
            .arg(format!(
                "host=127.0.0.1 port={proxy_port} user={SU_USER} dbname=postgres sslmode=verify-full sslrootcert={}",
                root_cert.display()
            ))
            .args([
                "-XAtc",
                "select ssl, pg_is_in_recovery() from pg_stat_ssl where pid = pg_backend_pid()",
            ])
            .env("PGPASSWORD", SU_PASSWORD)
            .output()
            .unwrap()
    };
    let through = psql(&ca.cert);
    assert!(
        through.status.success(),
        "{}",
        String::from_utf8_lossy(&through.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&through.stdout).trim(), "t|f");
    let refused = psql(&other.cert);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("certificate verify failed"), "{stderr}");

    // A standby whose CA did not sign the primary's certificate refuses to copy from it.
    let newcomer = cluster.keepers.len();
    let keeper = KeeperHandle::new(&cluster, newcomer, verifying_keeper(&other));
    cluster.keepers.push(keeper);
    cluster.start_keeper(newcomer);
    wait_until(
        "the keeper trusting another CA to refuse the primary",
        BOOT,
        || async {
            cluster
                .keeper_log(newcomer)
                .contains("certificate verify failed")
                .then_some(())
        },
    )
    .await;
    let cd = cluster.cluster_data().await.unwrap();
    let db = cd.db_of_keeper(&cluster.keepers[newcomer].uid);
    assert!(
        db.is_none_or(|db| !db.status.healthy || db.status.current_generation != db.generation),
        "a standby of a primary it cannot verify: {db:?}"
    );
}
