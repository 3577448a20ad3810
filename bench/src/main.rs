//! Prints measured figures for the speed targets (failover, switchover, the proxy, the
//! simulation), on real etcd, PostgreSQL and stolon-rs processes on 127.0.0.1. Nothing here
//! asserts a time.
//!
//! Usage (after `cargo build --release --bins`), with `--store kubernetes` anywhere to run the
//! clusters of failover, switchover, soak and idle on a real kube-apiserver (default etcdv3):
//! ```text
//!   target/release/stolon-bench failover [RUNS] [FAIL_INTERVAL] [async|sync] [SLEEP_INTERVAL]
//!   target/release/stolon-bench switchover [RUNS] [async|sync]
//!   target/release/stolon-bench all [RUNS]
//!   target/release/stolon-bench soak [MINUTES] [FAIL_INTERVAL] [SLEEP_INTERVAL]
//!   target/release/stolon-bench proxy [SECONDS] [ROUNDS]
//!   target/release/stolon-bench idle [SECONDS]
//! ```
//! `failover` runs at sleepInterval 1s unless SLEEP_INTERVAL says otherwise. `all` measures
//! failover at failInterval 10s and 3s in both modes, then at failInterval 3s under the
//! default sleepInterval of 5s (keepers heartbeat three times per failInterval), then
//! switchover.
//! `soak` runs pgbench through the proxy (default 10 minutes at failInterval 3s) and counts
//! the failovers that happened although nothing failed: the figure must be 0.
//! `proxy` runs pgbench (scale 10, 8 clients, -j 2, `-S` and the default script, SECONDS
//! per run, default 10) straight to the primary, through stolon-proxy (its default
//! userspace relay, and a second one with `--kernel-splice true`) and, when `haproxy` is
//! installed, through a minimal HAProxy of our own, in ROUNDS interleaved rounds (default
//! 3), and prints TPS, mean and p99 latency, each ratio to the same round's direct run, the
//! proxy process's CPU (share of one core) and the medians.
//! `idle` leaves a settled cluster (3 keepers, 2 sentinels, 1 proxy) with the spec's default
//! timings alone for SECONDS (default 60) and prints each daemon's CPU as a share of one
//! core; on the Kubernetes store also the requests per second the API server served.
//! The planner's own figures: `cargo bench -p stolon-engine --bench planner`.
//! `chaos` is the fault campaign on hosts of their own (see `chaos.rs`; scripts/chaos.sh
//! builds and runs it):
//!   target/release/stolon-bench chaos [--seed N] [--runs K] [--minutes M] [--sync|--async]
//! Every figure set ends with a table and one JSON line (`{"bench": ...}`) for machines.

mod chaos;
mod demo;
mod ha;
mod idle;
mod proxy;
mod sim;

use std::time::Duration;
use stolon_testkit::{connect, ClusterBuilder, StoreBackend, TestCluster};
use tokio::time::Instant;

const BOOT: Duration = Duration::from_secs(120);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The campaign runs its clusters on a runtime of their client host.
    if args.first().map(String::as_str) == Some("chaos") {
        return chaos::chaos(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("sim") {
        return sim::sim(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("demo") {
        return demo::demo(&args[1..]);
    }
    tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(measure(args));
}

async fn measure(mut args: Vec<String>) {
    let store = match args.iter().position(|a| a == "--store") {
        Some(at) => {
            let backend = match args.get(at + 1).map(String::as_str) {
                Some("etcdv3") => StoreBackend::Etcd,
                Some("kubernetes") => StoreBackend::Kubernetes,
                other => {
                    eprintln!("--store takes etcdv3 or kubernetes, not {other:?}");
                    std::process::exit(2);
                }
            };
            args.drain(at..at + 2);
            backend
        }
        None => StoreBackend::Etcd,
    };
    let arg = |i: usize| args.get(i).map(String::as_str);
    let runs = |i: usize| arg(i).and_then(|a| a.parse().ok()).unwrap_or(10);
    let sync = |i: usize| arg(i) == Some("sync");
    match arg(0) {
        Some("failover") => {
            let timing = Timing {
                fail_interval: arg(2).unwrap_or("10s"),
                sleep_interval: arg(4).unwrap_or("1s"),
            };
            ha::failover(runs(1), timing, sync(3), store).await
        }
        Some("switchover") => ha::switchover(runs(1), sync(2), store).await,
        Some("soak") => {
            let minutes = arg(1).and_then(|a| a.parse().ok()).unwrap_or(10);
            let timing = Timing {
                fail_interval: arg(2).unwrap_or("3s"),
                sleep_interval: arg(3).unwrap_or("1s"),
            };
            ha::soak(minutes, timing, store).await
        }
        Some("proxy") => {
            let seconds = arg(1).and_then(|a| a.parse().ok()).unwrap_or(10);
            let rounds = arg(2).and_then(|a| a.parse().ok()).unwrap_or(3);
            proxy::proxy_overhead(seconds, rounds).await
        }
        Some("idle") => idle::idle(arg(1).and_then(|a| a.parse().ok()).unwrap_or(60), store).await,
        Some("all") => {
            for (fail_interval, sleep_interval) in [("10s", "1s"), ("3s", "1s"), ("3s", "5s")] {
                let timing = Timing {
                    fail_interval,
                    sleep_interval,
                };
                for sync in [false, true] {
                    ha::failover(runs(1), timing, sync, store).await;
                }
            }
            ha::switchover(runs(1), false, store).await;
            ha::switchover(runs(1), true, store).await;
        }
        _ => {
            eprintln!(
                "usage: stolon-bench [--store etcdv3|kubernetes] failover [RUNS] [FAIL_INTERVAL] [async|sync] [SLEEP_INTERVAL]\n       stolon-bench switchover [RUNS] [async|sync]\n       stolon-bench all [RUNS]\n       stolon-bench soak [MINUTES] [FAIL_INTERVAL] [SLEEP_INTERVAL]\n       stolon-bench proxy [SECONDS] [ROUNDS]\n       stolon-bench idle [SECONDS]\n       stolon-bench chaos [--seed N] [--runs K] [--minutes M] [--sync|--async]\n       stolon-bench sim [SEEDS] [FIRST]\n       stolon-bench demo [--store etcdv3|kubernetes]"
            );
            std::process::exit(2);
        }
    }
}

/// Names the store in a title when it is not the default one.
fn store_suffix(store: StoreBackend) -> &'static str {
    match store {
        StoreBackend::Etcd => "",
        StoreBackend::Kubernetes => ", Kubernetes store",
    }
}

fn mode(sync: bool) -> &'static str {
    if sync {
        "sync"
    } else {
        "async"
    }
}

/// The spec's failInterval and sleepInterval for a run.
#[derive(Debug, Clone, Copy)]
struct Timing<'a> {
    fail_interval: &'a str,
    sleep_interval: &'a str,
}

impl Timing<'_> {
    const DEFAULT: Timing<'static> = Timing {
        fail_interval: "10s",
        sleep_interval: "1s",
    };
}

/// A cluster of 3 keepers, 2 sentinels and a proxy, serving, with an empty `bench` table.
async fn cluster(
    timing: Timing<'_>,
    sync: bool,
    store: StoreBackend,
) -> (TestCluster, usize, Duration) {
    let started = Instant::now();
    let mut builder = ClusterBuilder::new()
        .store_backend(store)
        .keepers(3)
        .sentinels(2)
        .spec("failInterval", timing.fail_interval.into())
        .spec("sleepInterval", timing.sleep_interval.into())
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

/// CPU time (user and system, all threads) a process has used so far, in seconds.
#[allow(unsafe_code)]
pub(crate) fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // utime and stime: fields 14 and 15 of the line, the state being field 3.
    match (ticks(14 - 3), ticks(15 - 3)) {
        (Some(user), Some(system)) => (user + system) / ticks_per_second,
        _ => f64::NAN,
    }
}
