//! stolonctl against a real cluster: spec, update, clusterdata, version.

use std::time::Duration;
use stolon_testkit::ClusterBuilder;

const BOOT: Duration = Duration::from_secs(90);

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Refused spec updates name the field and leave the stored cluster data byte-for-byte as
/// it was; accepted ones (full or merge patch) apply.
#[tokio::test(flavor = "multi_thread")]
async fn s_cfg_07_invalid_spec_updates_change_nothing() {
    let mut cluster = ClusterBuilder::new().keepers(1).start().await;
    cluster.wait_for_master(BOOT).await;
    // Without a sentinel nobody else writes the cluster data while we compare bytes.
    cluster.sentinels.clear();
    let stored = || async { cluster.store.get_cluster_data().await.unwrap().unwrap().0 };
    let before = stored().await;
    for (args, needle) in [
        (
            vec!["update", "--patch", r#"{"sleepIntervall":"1s"}"#],
            "sleepIntervall",
        ),
        (
            vec!["update", "--patch", r#"{"failInterval":"5"}"#],
            "invalid duration",
        ),
        (
            vec!["update", "--patch", r#"{"maxStandbys":-1}"#],
            "maxStandbys",
        ),
        (
            vec!["update", "--patch", r#"{"proxyCheckInterval":"1m"}"#],
            "proxyCheckInterval",
        ),
        (
            vec![
                "update",
                "--patch",
                r#"{"initMode":"existing","existingConfig":{"keeperUID":"keeper0"}}"#,
            ],
            "initMode cannot be changed",
        ),
        (
            vec!["update", "--patch", r#"{"role":"standby"}"#],
            "role cannot change from master to standby",
        ),
        (
            vec![
                "update",
                "--patch",
                r#"{"additionalMasterReplicationSlots":["Bad"]}"#,
            ],
            "additionalMasterReplicationSlots",
        ),
        (vec!["update", r#"{"failInterval":"5s"}"#], "initMode"),
        (vec!["update", "--patch", "not json"], "not valid JSON"),
    ] {
        let out = cluster.stolonctl(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
        assert_eq!(
            stored().await,
            before,
            "{args:?} changed the stored cluster data"
        );
    }

    let out = cluster.stolonctl(&["update", "--patch", r#"{"failInterval":"7s","pgHBA":null}"#]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cd = cluster.cluster_data().await.unwrap();
    assert_eq!(
        cd.cluster.spec.fail_interval.map(|d| d.0),
        Some(Duration::from_secs(7))
    );
    assert_eq!(
        cd.cluster.spec.sleep_interval.map(|d| d.0),
        Some(Duration::from_secs(1)),
        "a patch keeps the rest"
    );

    let out = cluster.stolonctl(&["update", r#"{"initMode":"new","sleepInterval":"2s"}"#]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cd = cluster.cluster_data().await.unwrap();
    assert_eq!(
        cd.cluster.spec.fail_interval, None,
        "a full update replaces the whole spec"
    );

    let spec = cluster.stolonctl(&["spec", "--defaults"]);
    let spec: serde_json::Value = serde_json::from_slice(&spec.stdout).unwrap();
    assert_eq!(spec["sleepInterval"], "2s");
    assert_eq!(spec["failInterval"], "10s");
    assert_eq!(spec["dbRestartTimeout"], "5s");
    assert_eq!(spec["maxStandbyLag"], 1048576);
}

#[tokio::test(flavor = "multi_thread")]
async fn clusterdata_read_write_and_version() {
    let cluster = ClusterBuilder::new().keepers(1).start().await;
    cluster.wait_for_master(BOOT).await;
    let read = cluster.stolonctl(&["clusterdata", "read"]);
    assert!(read.status.success(), "{}", stderr(&read));
    let path = cluster.root().join("cd.json");
    std::fs::write(&path, &read.stdout).unwrap();

    let refused = cluster.stolonctl(&["clusterdata", "write", "-f", path.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("--yes"), "{}", stderr(&refused));

    let garbage = cluster.root().join("garbage.json");
    std::fs::write(&garbage, "{\"formatVersion\": 7}").unwrap();
    let bad = cluster.stolonctl(&[
        "clusterdata",
        "write",
        "-y",
        "-f",
        garbage.to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("format version 7"),
        "{}",
        stderr(&bad)
    );

    let written = cluster.stolonctl(&["clusterdata", "write", "-y", "-f", path.to_str().unwrap()]);
    assert!(written.status.success(), "{}", stderr(&written));

    let pretty = cluster.stolonctl(&["clusterdata", "read", "--pretty"]);
    let value: serde_json::Value = serde_json::from_slice(&pretty.stdout).unwrap();
    assert_eq!(value["formatVersion"], 1);

    let version = std::process::Command::new(stolon_testkit::bin_dir().join("stolonctl"))
        .arg("version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("stolonctl version "));
}

/// `init --keep-existing` (the Helm chart's init Job) never replaces a cluster: run again
/// over a running one it succeeds and leaves the cluster data byte-for-byte as it was, while
/// a plain `init` without a terminal to confirm on refuses and changes nothing either.
#[tokio::test(flavor = "multi_thread")]
async fn init_keep_existing_leaves_a_running_cluster_alone() {
    let mut cluster = ClusterBuilder::new().keepers(1).start().await;
    cluster.wait_for_master(BOOT).await;
    cluster.sentinels.clear();
    let stored = || async { cluster.store.get_cluster_data().await.unwrap().unwrap().0 };
    let before = stored().await;

    let kept = cluster.stolonctl(&["init", "--keep-existing", r#"{"initMode":"new"}"#]);
    assert!(kept.status.success(), "{}", stderr(&kept));
    assert!(
        String::from_utf8_lossy(&kept.stdout).contains("left as it is"),
        "{}",
        String::from_utf8_lossy(&kept.stdout)
    );
    assert_eq!(stored().await, before);

    let unconfirmed = cluster.stolonctl(&["init", r#"{"initMode":"new"}"#]);
    assert_eq!(unconfirmed.status.code(), Some(1));
    assert!(
        stderr(&unconfirmed).contains("not confirmed"),
        "{}",
        stderr(&unconfirmed)
    );
    assert_eq!(stored().await, before);

    let both = cluster.stolonctl(&["init", "--keep-existing", "--yes"]);
    assert_eq!(both.status.code(), Some(2), "{}", stderr(&both));
    assert_eq!(stored().await, before);
}

async fn wait_for_log_line(log: &std::path::Path, text: &str) {
    stolon_testkit::wait_until(
        &format!("{} to say {text:?}", log.display()),
        BOOT,
        || async {
            std::fs::read_to_string(log)
                .ok()?
                .contains(text)
                .then_some(())
        },
    )
    .await;
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Maintenance mode (`stolonctl pause` / `resume`): while paused, a keeper restarted by hand
/// leaves its postgres serving, a killed primary is not replaced (the sentinel logs that it
/// held the failover back), the proxy stops routing to it, a switchover is refused, and
/// status shows who paused the cluster and why; after the resume the standby is elected.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_cluster_replaces_its_primary_only_after_the_resume() {
    let mut cluster = ClusterBuilder::new().keepers(2).start().await;
    let old = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(1, BOOT).await;
    let paused = cluster.stolonctl(&["pause", "--reason", "disk swap on keeper0"]);
    assert!(paused.status.success(), "{}", stderr(&paused));
    let again = cluster.stolonctl(&["pause"]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("is paused"), "{}", stderr(&again));
    let status = stdout(&cluster.stolonctl(&["status"]));
    assert!(
        status.contains("Maintenance: PAUSED") && status.contains("disk swap on keeper0"),
        "{status}"
    );
    let switchover = cluster.stolonctl(&["switchover", "--no-wait"]);
    assert!(!switchover.status.success());
    assert!(
        stderr(&switchover).contains("paused"),
        "{}",
        stderr(&switchover)
    );

    // A keeper restarted while paused (to upgrade it) leaves its postgres serving.
    let standby = 1 - old;
    let standby_port = cluster.keepers[standby].pg_port;
    let started = || async move {
        let client = stolon_testkit::connect(standby_port).await.ok()?;
        let row = client
            .query_one("select pg_postmaster_start_time()::text", &[])
            .await
            .ok()?;
        Some(row.get::<_, String>(0))
    };
    let before = started().await.expect("the standby serves");
    cluster.keepers[standby]
        .process
        .as_mut()
        .unwrap()
        .stop(Duration::from_secs(30));
    assert_eq!(
        started().await.as_ref(),
        Some(&before),
        "the keeper's exit stopped postgres"
    );
    cluster.start_keeper(standby);
    wait_for_log_line(
        &cluster.root().join(format!("logs/keeper{standby}.log")),
        "the cluster is paused (stolonctl resume ends it)",
    )
    .await;
    assert_eq!(
        started().await.as_ref(),
        Some(&before),
        "the keeper's start stopped postgres"
    );

    cluster.kill_keeper_and_postgres(old);
    wait_for_log_line(
        &cluster.root().join("logs/sentinel0.log"),
        "failover held back: the cluster is paused",
    )
    .await;
    stolon_testkit::wait_until("the proxies to route nowhere", BOOT, || async {
        let cd = cluster.cluster_data().await?;
        cd.proxy.spec.master_db_uid.is_none().then_some(())
    })
    .await;
    // Several failIntervals more: still no failover.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let cd = cluster.cluster_data().await.expect("cluster data");
    let master = cd.master_db().expect("a master db");
    assert_eq!(
        master.spec.keeper_uid.to_string(),
        cluster.keepers[old].uid.to_string(),
        "the paused cluster failed over"
    );
    assert!(!stolon_testkit::serves(cluster.proxy_port()).await);

    let resumed = cluster.stolonctl(&["resume"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(stdout(&resumed).contains("disk swap on keeper0"));
    let new = cluster.wait_for_new_master(old, BOOT).await;
    assert_ne!(new, old);
    let status = stdout(&cluster.stolonctl(&["status"]));
    assert!(!status.contains("Maintenance"), "{status}");
}
