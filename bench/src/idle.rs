//! What a settled cluster costs when nothing happens: each daemon's CPU, and the API
//! server's request rate on the Kubernetes store.

use crate::{cpu_seconds, store_suffix, BOOT};
use std::collections::BTreeMap;
use std::time::Duration;
use stolon_testkit::{ClusterBuilder, StoreBackend, TestCluster};
use tokio::time::Instant;

/// Each daemon's CPU while the cluster has nothing to do but watch itself, and on the
/// Kubernetes store the API server's requests.
pub(crate) async fn idle(seconds: u64, store: StoreBackend) {
    println!(
        "== idle CPU: 3 keepers, 2 sentinels, 1 proxy, the spec's default timings, {seconds}s{}",
        store_suffix(store)
    );
    // The builder's short test timings give way to the defaults.
    let mut builder = ClusterBuilder::new()
        .store_backend(store)
        .keepers(3)
        .sentinels(2);
    for field in [
        "sleepInterval",
        "failInterval",
        "requestTimeout",
        "proxyCheckInterval",
        "proxyTimeout",
    ] {
        builder = builder.spec(field, serde_json::Value::Null);
    }
    let cluster = builder.start().await;
    cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(2, BOOT).await;
    // Let the last generations settle before measuring.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let mut daemons: Vec<(String, i32)> = Vec::new();
    for (i, k) in cluster.keepers.iter().enumerate() {
        daemons.extend(
            k.process
                .as_ref()
                .and_then(|p| p.pid())
                .map(|pid| (format!("keeper{i}"), pid)),
        );
    }
    for (i, s) in cluster.sentinels.iter().enumerate() {
        daemons.extend(s.pid().map(|pid| (format!("sentinel{i}"), pid)));
    }
    daemons.extend(
        cluster.proxies[0]
            .1
            .pid()
            .map(|pid| ("proxy".to_string(), pid)),
    );
    let store_server = match store {
        StoreBackend::Etcd => "etcd",
        StoreBackend::Kubernetes => "kube-apiserver",
    };
    daemons.extend(
        cluster
            .store_process()
            .pid()
            .map(|pid| (store_server.to_string(), pid)),
    );
    let before: Vec<f64> = daemons.iter().map(|(_, pid)| cpu_seconds(*pid)).collect();
    let requests_before = api_requests(&cluster);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let elapsed = started.elapsed().as_secs_f64();
    if let (Some(before), Some(after)) = (requests_before, api_requests(&cluster)) {
        print_api_request_rates(&before, &after, elapsed);
    }
    println!("{:<15} {:>14}", "daemon", "cpu % of a core");
    let mut json = Vec::new();
    for ((name, pid), before) in daemons.iter().zip(before) {
        let percent = 100.0 * (cpu_seconds(*pid) - before) / elapsed;
        println!("{name:<15} {percent:>14.2}");
        json.push(format!(
            "{{\"daemon\":\"{name}\",\"cpu_percent\":{percent:.3}}}"
        ));
    }
    println!(
        "{{\"bench\":\"idle cpu\",\"seconds\":{elapsed:.1},\"daemons\":[{}]}}",
        json.join(",")
    );
}

/// The API server's count of requests served so far, by verb and resource, from its
/// `apiserver_request_total` metric; `None` on etcd. Requests for no resource (this
/// function's own `/metrics` reads among them) are left out.
fn api_requests(cluster: &TestCluster) -> Option<BTreeMap<(String, String), f64>> {
    let api = cluster.kube.as_ref()?;
    let out = api.kubectl("default", &["get", "--raw", "/metrics"]);
    assert!(
        out.status.success(),
        "reading the API server's metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut counts = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(sample) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = sample.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|pair| pair.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let resource = label("resource");
        if resource.is_empty() {
            continue;
        }
        *counts.entry((label("verb"), resource)).or_default() += value.parse().unwrap_or(0.0);
    }
    Some(counts)
}

fn print_api_request_rates(
    before: &BTreeMap<(String, String), f64>,
    after: &BTreeMap<(String, String), f64>,
    elapsed: f64,
) {
    println!("{:<10} {:<14} {:>12}", "verb", "resource", "requests/s");
    let mut total = 0.0;
    let mut json = Vec::new();
    for ((verb, resource), count) in after {
        let rate = (count
            - before
                .get(&(verb.clone(), resource.clone()))
                .unwrap_or(&0.0))
            / elapsed;
        if rate == 0.0 {
            continue;
        }
        total += rate;
        println!("{verb:<10} {resource:<14} {rate:>12.2}");
        json.push(format!(
            "{{\"verb\":\"{verb}\",\"resource\":\"{resource}\",\"per_second\":{rate:.3}}}"
        ));
    }
    println!("{:<25} {total:>12.2}", "all");
    println!(
        "{{\"bench\":\"idle api requests\",\"seconds\":{elapsed:.1},\"per_second\":{total:.3},\"by\":[{}]}}",
        json.join(",")
    );
}
