//! Prints measured figures for the targets of DESIGN.md §6 that this build can reach:
//! bootstrap (nothing to a primary and 2 streaming standbys) and unplanned failover (SIGKILL
//! of the primary's keeper and postgres, to the first write acknowledged through the proxy).
//!
//! Usage: `cargo build --release --bins && target/release/stolon-bench [RUNS] [FAIL_INTERVAL]`
//! (defaults: 3 runs, failInterval 5s). Figures only: nothing here asserts a time.

use std::time::Duration;
use stolon_testkit::{connect, lost_writes, ClusterBuilder, Writer};
use tokio::time::Instant;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let fail_interval = args.get(2).cloned().unwrap_or_else(|| "5s".into());
    println!(
        "stolon-bench: {runs} runs, failInterval {fail_interval}, 3 keepers, 2 sentinels, 1 proxy"
    );
    let mut bootstrap = Vec::new();
    let mut unavailable = Vec::new();
    let mut lost = Vec::new();
    for run in 1..=runs {
        let started = Instant::now();
        let mut cluster = ClusterBuilder::new()
            .keepers(3)
            .sentinels(2)
            .spec("failInterval", fail_interval.clone().into())
            .start()
            .await;
        let master = cluster.wait_for_master(Duration::from_secs(120)).await;
        cluster.wait_for_standbys(2, Duration::from_secs(120)).await;
        let boot = started.elapsed();
        let client = connect(cluster.proxy_port())
            .await
            .expect("connect through the proxy");
        client
            .batch_execute("create table bench (id int primary key, at timestamptz default now())")
            .await
            .expect("create table");
        drop(client);

        let writer = Writer::start(cluster.proxy_port(), "bench");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let killed_at = Instant::now();
        cluster.kill_keeper_and_postgres(master);
        let first_after = loop {
            if let Some(at) = writer.first_acked_sent_after(killed_at) {
                break at;
            }
            assert!(
                killed_at.elapsed() < Duration::from_secs(180),
                "no write succeeded within 180s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let acked = writer.stop();
        let gap = first_after - killed_at;
        let missing = lost_writes(
            cluster.proxy_port(),
            "bench",
            &acked,
            Duration::from_secs(60),
        )
        .await
        .len();
        println!(
            "run {run}: bootstrap {:.2}s, kill -> first acknowledged write through the proxy {:.2}s, acknowledged writes lost (async) {missing}",
            boot.as_secs_f64(),
            gap.as_secs_f64()
        );
        bootstrap.push(boot.as_secs_f64());
        unavailable.push(gap.as_secs_f64());
        lost.push(missing as f64);
    }
    for (name, values) in [
        ("bootstrap (s)", &mut bootstrap),
        ("kill -> first write (s)", &mut unavailable),
        ("lost acknowledged writes (async)", &mut lost),
    ] {
        values.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{name}: min {:.2} median {:.2} max {:.2}",
            values[0],
            values[values.len() / 2],
            values[values.len() - 1]
        );
    }
}
