//! Prints measured figures for the targets of DESIGN.md §6, on real etcd, PostgreSQL and
//! stolon-rs processes on 127.0.0.1. Nothing here asserts a time.
//!
//! Usage (after `cargo build --release --bins`):
//!   target/release/stolon-bench failover [RUNS] [FAIL_INTERVAL] [async|sync]
//!   target/release/stolon-bench switchover [RUNS] [async|sync]
//!   target/release/stolon-bench all [RUNS]
//!   target/release/stolon-bench soak [MINUTES] [FAIL_INTERVAL]
//! `all` measures failover at failInterval 10s and 3s in both modes, then switchover.
//! `soak` runs pgbench through the proxy (default 10 minutes at failInterval 3s) and counts
//! the failovers that happened although nothing failed: the figure must be 0.
//! Every figure set ends with a table and one JSON line (`{"bench": ...}`) for machines.

use std::time::Duration;
use stolon_testkit::{connect, lost_writes, ClusterBuilder, ConnectionProbe, TestCluster, Writer};
use tokio::time::Instant;

const BOOT: Duration = Duration::from_secs(120);

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    let runs = |i: usize| arg(i).and_then(|a| a.parse().ok()).unwrap_or(10);
    let sync = |i: usize| arg(i) == Some("sync");
    match arg(0) {
        Some("failover") => failover(runs(1), arg(2).unwrap_or("10s"), sync(3)).await,
        Some("switchover") => switchover(runs(1), sync(2)).await,
        Some("soak") => {
            let minutes = arg(1).and_then(|a| a.parse().ok()).unwrap_or(10);
            soak(minutes, arg(2).unwrap_or("3s")).await
        }
        Some("all") => {
            for fail_interval in ["10s", "3s"] {
                for sync in [false, true] {
                    failover(runs(1), fail_interval, sync).await;
                }
            }
            switchover(runs(1), false).await;
            switchover(runs(1), true).await;
        }
        _ => {
            eprintln!(
                "usage: stolon-bench failover [RUNS] [FAIL_INTERVAL] [async|sync]\n       stolon-bench switchover [RUNS] [async|sync]\n       stolon-bench all [RUNS]\n       stolon-bench soak [MINUTES] [FAIL_INTERVAL]"
            );
            std::process::exit(2);
        }
    }
}

fn mode(sync: bool) -> &'static str {
    if sync {
        "sync"
    } else {
        "async"
    }
}

/// A cluster of 3 keepers, 2 sentinels and a proxy, serving, with an empty `bench` table.
async fn cluster(fail_interval: &str, sync: bool) -> (TestCluster, usize, Duration) {
    let started = Instant::now();
    let mut builder = ClusterBuilder::new()
        .keepers(3)
        .sentinels(2)
        .spec("failInterval", fail_interval.into())
        .spec("usePgrewind", true.into());
    if sync {
        builder = builder.spec("synchronousReplication", true.into());
    }
    let cluster = builder.start().await;
    let master = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(2, BOOT).await;
    let boot = started.elapsed();
    let client = connect(cluster.proxy_port())
        .await
        .expect("connect through the proxy");
    client
        .batch_execute("create table bench (id int primary key)")
        .await
        .expect("create table");
    (cluster, master, boot)
}

/// SIGKILL of the primary's keeper and postgres under a writer: time to the first write
/// sent after the kill and acknowledged through the proxy, and acknowledged writes lost.
async fn failover(runs: usize, fail_interval: &str, sync: bool) {
    let title = format!("failover, failInterval {fail_interval}, {}", mode(sync));
    println!("== {title}: {runs} runs, 3 keepers, 2 sentinels, 1 proxy");
    let (mut bootstrap, mut unavailable, mut lost) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        let (mut cluster, master, boot) = cluster(fail_interval, sync).await;
        let writer = Writer::start(cluster.proxy_port(), "bench");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let killed_at = Instant::now();
        cluster.kill_keeper_and_postgres(master);
        let first_after = wait_for(Duration::from_secs(180), || {
            writer.first_acked_sent_after(killed_at)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let acked = writer.stop();
        let missing = lost_writes(cluster.proxy_port(), "bench", &acked, BOOT)
            .await
            .len();
        let gap = (first_after - killed_at).as_secs_f64();
        println!(
            "run {run}: bootstrap {:.2}s, kill -> first acknowledged write {gap:.2}s, acknowledged writes lost {missing}",
            boot.as_secs_f64()
        );
        bootstrap.push(boot.as_secs_f64());
        unavailable.push(gap);
        lost.push(missing as f64);
    }
    report(
        &title,
        &[
            ("bootstrap_s", bootstrap),
            ("kill_to_first_write_s", unavailable),
            ("lost_acknowledged_writes", lost),
        ],
    );
}

/// `stolonctl switchover` under a writer and a stream of new connections: the longest gap
/// between two acknowledged writes, and the new connections that failed.
async fn switchover(runs: usize, sync: bool) {
    let title = format!("switchover, {}", mode(sync));
    println!("== {title}: {runs} runs, 3 keepers, 2 sentinels, 1 proxy");
    let (mut pauses, mut errors, mut lost, mut command) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        let (cluster, _, _) = cluster("10s", sync).await;
        let writer = Writer::start(cluster.proxy_port(), "bench");
        let probe = ConnectionProbe::start(cluster.proxy_port());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let asked = Instant::now();
        let out = tokio::task::block_in_place(|| cluster.stolonctl(&["switchover"]));
        let took = asked.elapsed().as_secs_f64();
        if !out.status.success() {
            println!(
                "run {run}: switchover failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let attempts = probe.stop();
        let acked = writer.stop();
        let pause = acked
            .windows(2)
            .filter(|w| w[1].acked > asked)
            .map(|w| (w[1].acked - w[0].acked).as_secs_f64())
            .fold(0.0, f64::max);
        let failed = attempts
            .iter()
            .filter(|a| a.started >= asked && a.error.is_some())
            .count();
        let missing = lost_writes(cluster.proxy_port(), "bench", &acked, BOOT)
            .await
            .len();
        println!(
            "run {run}: longest write pause {pause:.2}s, new connections failed {failed} of {}, acknowledged writes lost {missing}, stolonctl {took:.2}s",
            attempts.iter().filter(|a| a.started >= asked).count()
        );
        pauses.push(pause);
        errors.push(failed as f64);
        lost.push(missing as f64);
        command.push(took);
    }
    report(
        &title,
        &[
            ("write_pause_s", pauses),
            ("new_connection_errors", errors),
            ("lost_acknowledged_writes", lost),
            ("stolonctl_s", command),
        ],
    );
}

/// pgbench through the proxy for `minutes` on a healthy cluster: any failover is a false one.
async fn soak(minutes: u64, fail_interval: &str) {
    println!("== soak: pgbench (scale 10, 8 clients, -j 2) through the proxy for {minutes} min at failInterval {fail_interval}");
    let (cluster, master, _) = cluster(fail_interval, false).await;
    let pgbench = |args: &[String]| {
        let status = std::process::Command::new(stolon_testkit::pg_bin_dir().join("pgbench"))
            .args(["-h", "127.0.0.1", "-p", &cluster.proxy_port().to_string()])
            .args(["-U", stolon_testkit::SU_USER, "postgres"])
            .args(args)
            .env("PGPASSWORD", stolon_testkit::SU_PASSWORD)
            .status()
            .expect("running pgbench");
        assert!(status.success(), "pgbench failed: {status}");
    };
    tokio::task::block_in_place(|| {
        pgbench(&["-i".into(), "-q".into(), "-s".into(), "10".into()]);
        let secs = (minutes * 60).to_string();
        pgbench(&["-c", "8", "-j", "2", "-P", "60", "-T", &secs].map(String::from));
    });
    let logs = cluster.sentinel_logs();
    let failed = logs.matches("master db is failed").count();
    let elections = logs.matches("electing db as the new master").count();
    let now = cluster.wait_for_master(BOOT).await;
    println!(
        "soak: primary unchanged {}, 'master db is failed' {failed}, elections {elections}",
        now == master
    );
    report(
        &format!("soak {minutes} min, failInterval {fail_interval}"),
        &[("false_failovers", vec![elections as f64])],
    );
}

async fn wait_for<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(
            started.elapsed() < limit,
            "nothing happened within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Prints min / median / p90 / max per figure, as a table and as one JSON line.
fn report(title: &str, figures: &[(&str, Vec<f64>)]) {
    println!(
        "{:<28} {:>8} {:>8} {:>8} {:>8}",
        title, "min", "median", "p90", "max"
    );
    let mut json = Vec::new();
    for (name, values) in figures {
        let mut sorted = values.clone();
        sorted.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        let (min, median, p90, max) = (at(0.0), at(0.5), at(0.9), at(1.0));
        println!("{name:<28} {min:>8.2} {median:>8.2} {p90:>8.2} {max:>8.2}");
        let raw: Vec<String> = values.iter().map(|v| format!("{v:.3}")).collect();
        json.push(format!(
            "\"{name}\":{{\"min\":{min:.3},\"median\":{median:.3},\"p90\":{p90:.3},\"max\":{max:.3},\"runs\":[{}]}}",
            raw.join(",")
        ));
    }
    println!("{{\"bench\":\"{title}\",{}}}", json.join(","));
}
