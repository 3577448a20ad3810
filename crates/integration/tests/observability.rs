//! S-OBS-01: every daemon serves Prometheus `/metrics`; the keeper's `/health`, `/primary`
//! and `/replica` answer 200 or 503 by what its instance is now and what the cluster says,
//! and `/primary` never says yes for an instance the cluster has moved away from.

use std::time::Duration;
use stolon_testkit::{free_port, http_get, metric, wait_until, ClusterBuilder, TestCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BOOT: Duration = Duration::from_secs(90);
const FAILOVER: Duration = Duration::from_secs(60);
/// How long a change may take to show, with room for a loaded machine: the checks ask
/// PostgreSQL at request time, so this is mostly the probe's own timeout (2s).
const CHANGE: Duration = Duration::from_secs(15);

/// The status code of `GET path`, 0 when nothing answers.
async fn code(port: u16, path: &str) -> u16 {
    http_get(port, path)
        .await
        .and_then(|(line, _)| line.split(' ').nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Waits until the keeper serving on `port` answers `/health`, `/primary` and `/replica`
/// with `want`.
async fn wait_for_checks(what: &str, port: u16, want: [u16; 3]) {
    wait_until(what, CHANGE, || async {
        let got = [
            code(port, "/health").await,
            code(port, "/primary").await,
            code(port, "/replica").await,
        ];
        (got == want).then_some(())
    })
    .await
}

async fn body(port: u16, path: &str) -> String {
    http_get(port, path).await.expect("an answer").1
}

/// Sends `request` as is; returns the status line.
async fn raw(port: u16, request: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.lines().next().unwrap_or_default().to_string()
}

/// A cluster of two keepers, one sentinel and one proxy, the last two serving `/metrics`
/// on the ports returned; waits for a primary and its standby.
async fn observed_cluster() -> (TestCluster, u16, u16, usize) {
    let mut cluster = ClusterBuilder::new()
        .keepers(2)
        .sentinels(0)
        .proxies(0)
        .start()
        .await;
    let (sentinel_http, proxy_http) = (free_port(), free_port());
    cluster.add_sentinel_with(&[
        "--metrics-listen-address",
        &format!("127.0.0.1:{sentinel_http}"),
    ]);
    cluster.add_proxy_with(&[
        "--metrics-listen-address",
        &format!("127.0.0.1:{proxy_http}"),
    ]);
    let master = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(1, BOOT).await;
    (cluster, sentinel_http, proxy_http, master)
}

#[tokio::test(flavor = "multi_thread")]
async fn s_obs_01_every_daemon_serves_metrics_and_keepers_answer_by_role() {
    let (mut cluster, sentinel_http, proxy_http, master) = observed_cluster().await;
    let standby = 1 - master;
    let (m, s) = (
        cluster.keepers[master].http_port,
        cluster.keepers[standby].http_port,
    );
    wait_for_checks("the primary's checks", m, [200, 200, 503]).await;
    wait_for_checks("the standby's checks", s, [200, 503, 200]).await;
    let answer: serde_json::Value = serde_json::from_str(&body(s, "/primary").await).unwrap();
    assert_eq!(answer["role"], "standby", "{answer}");
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(
        answer["reason"].as_str().unwrap().contains("in recovery"),
        "{answer}"
    );
    assert_eq!(code(s, "/replica?lag=abc").await, 400);
    assert_eq!(code(m, "/nowhere").await, 404);
    assert!(raw(m, "POST /primary HTTP/1.1\r\n\r\n")
        .await
        .contains("405"));
    assert!(raw(m, "\u{1}\u{2}garbage\r\n\r\n").await.contains("400"));

    for (port, component) in [
        (m, "keeper"),
        (s, "keeper"),
        (sentinel_http, "sentinel"),
        (proxy_http, "proxy"),
    ] {
        let text = body(port, "/metrics").await;
        let identifier =
            format!(r#"stolon_cluster_identifier{{cluster_name="test",component="{component}"}}"#);
        assert_eq!(metric(&text, &identifier), 1.0, "{text}");
    }
    let primary = body(m, "/metrics").await;
    let replica = body(s, "/metrics").await;
    for (text, role) in [(&primary, "master"), (&replica, "standby")] {
        for family in ["stolon_keeper_target_role", "stolon_keeper_local_role"] {
            let sample = format!(r#"{family}{{role="{role}"}}"#);
            assert_eq!(metric(text, &sample), 1.0, "{text}");
        }
        assert!(
            metric(text, "stolon_keeper_clusterdata_last_valid_update_seconds") > 0.0,
            "{text}"
        );
        assert!(metric(text, "stolon_keeper_actions_total") > 0.0, "{text}");
        assert_eq!(metric(text, "stolon_keeper_sleep_interval"), 1.0, "{text}");
    }
    let sentinel = body(sentinel_http, "/metrics").await;
    assert_eq!(
        metric(&sentinel, "stolon_sentinel_is_leader"),
        1.0,
        "{sentinel}"
    );
    assert_eq!(
        metric(&sentinel, "stolon_sentinel_leader_count"),
        1.0,
        "{sentinel}"
    );
    assert!(
        metric(
            &sentinel,
            "stolon_sentinel_last_cluster_check_success_seconds"
        ) > 0.0
    );

    // Without the store, the primary no longer claims to be one, while it still accepts
    // connections; failInterval less one heartbeat after its last stored info, its keeper
    // fences it (--store-loss fence) and it accepts none.
    cluster.etcd.kill();
    wait_for_checks("the primary cut off from the store", m, [200, 503, 503]).await;
    let answer = body(m, "/primary").await;
    assert!(
        answer.contains("cannot read the cluster data") || answer.contains("fenced"),
        "{answer}"
    );
    wait_for_checks("the primary fenced by its keeper", m, [503, 503, 503]).await;
    let answer = body(m, "/primary").await;
    assert!(answer.contains("fenced"), "{answer}");
    cluster.etcd.restart();
    wait_for_checks("the primary with the store back", m, [200, 200, 503]).await;
    cluster.assert_no_unexpected_errors(&[]);
}

/// A primary whose PostgreSQL hangs: its `/health` fails; once the standby is promoted, the
/// new primary answers `/primary`; when the old instance thaws, still writable until its
/// keeper demotes it, its `/primary` never answers 200, and it ends as a `/replica`.
#[tokio::test(flavor = "multi_thread")]
async fn s_obs_01_keeper_checks_follow_a_failover() {
    let (cluster, _, _, old) = observed_cluster().await;
    let new = 1 - old;
    let (o, n) = (
        cluster.keepers[old].http_port,
        cluster.keepers[new].http_port,
    );
    wait_for_checks("the primary's checks", o, [200, 200, 503]).await;

    cluster.freeze_postgres(old, true);
    wait_for_checks("the frozen primary's checks", o, [503, 503, 503]).await;
    assert_eq!(cluster.wait_for_new_master(old, FAILOVER).await, new);
    wait_for_checks("the new primary's checks", n, [200, 200, 503]).await;

    cluster.freeze_postgres(old, false);
    let primary_answers = std::sync::Mutex::new(Vec::new());
    wait_until(
        "the old primary to serve reads as a standby",
        FAILOVER,
        || async {
            let answer = code(o, "/primary").await;
            primary_answers.lock().unwrap().push(answer);
            (code(o, "/replica").await == 200).then_some(())
        },
    )
    .await;
    let primary_answers = primary_answers.into_inner().unwrap();
    assert!(
        !primary_answers.contains(&200),
        "the old primary claimed to be one: {primary_answers:?}"
    );
    assert_eq!(code(n, "/primary").await, 200);
    cluster.assert_no_unexpected_errors(&["action failed"]);
}
