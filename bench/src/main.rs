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
mod sim;

use std::collections::BTreeMap;
use std::time::Duration;
use stolon_testkit::{
    connect, lost_writes, wait_for_service, ClusterBuilder, ConnectionProbe, StoreBackend,
    TestCluster, Writer,
};
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
            failover(runs(1), timing, sync(3), store).await
        }
        Some("switchover") => switchover(runs(1), sync(2), store).await,
        Some("soak") => {
            let minutes = arg(1).and_then(|a| a.parse().ok()).unwrap_or(10);
            let timing = Timing {
                fail_interval: arg(2).unwrap_or("3s"),
                sleep_interval: arg(3).unwrap_or("1s"),
            };
            soak(minutes, timing, store).await
        }
        Some("proxy") => {
            let seconds = arg(1).and_then(|a| a.parse().ok()).unwrap_or(10);
            let rounds = arg(2).and_then(|a| a.parse().ok()).unwrap_or(3);
            proxy_overhead(seconds, rounds).await
        }
        Some("idle") => idle(arg(1).and_then(|a| a.parse().ok()).unwrap_or(60), store).await,
        Some("all") => {
            for (fail_interval, sleep_interval) in [("10s", "1s"), ("3s", "1s"), ("3s", "5s")] {
                let timing = Timing {
                    fail_interval,
                    sleep_interval,
                };
                for sync in [false, true] {
                    failover(runs(1), timing, sync, store).await;
                }
            }
            switchover(runs(1), false, store).await;
            switchover(runs(1), true, store).await;
        }
        _ => {
            eprintln!(
                "usage: stolon-bench [--store etcdv3|kubernetes] failover [RUNS] [FAIL_INTERVAL] [async|sync] [SLEEP_INTERVAL]\n       stolon-bench switchover [RUNS] [async|sync]\n       stolon-bench all [RUNS]\n       stolon-bench soak [MINUTES] [FAIL_INTERVAL] [SLEEP_INTERVAL]\n       stolon-bench proxy [SECONDS] [ROUNDS]\n       stolon-bench idle [SECONDS]\n       stolon-bench chaos [--seed N] [--runs K] [--minutes M] [--sync|--async]\n       stolon-bench sim [SEEDS] [FIRST]"
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

/// SIGKILL of the primary's keeper and postgres under a writer: time to the first write
/// sent after the kill and acknowledged through the proxy, and acknowledged writes lost.
async fn failover(runs: usize, timing: Timing<'_>, sync: bool, store: StoreBackend) {
    let title = format!(
        "failover, failInterval {}, sleepInterval {}, {}{}",
        timing.fail_interval,
        timing.sleep_interval,
        mode(sync),
        store_suffix(store)
    );
    println!("== {title}: {runs} runs, 3 keepers, 2 sentinels, 1 proxy");
    let (mut bootstrap, mut unavailable, mut lost) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        let (mut cluster, master, boot) = cluster(timing, sync, store).await;
        let writer = Writer::start(cluster.proxy_port(), "bench");
        tokio::time::sleep(Duration::from_secs(2)).await;
        // From the last signal: a write acknowledged by the old primary while its
        // processes were being killed one by one is not one after its loss.
        let killed_at = Instant::from_std(cluster.kill_keeper_and_postgres(master));
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
async fn switchover(runs: usize, sync: bool, store: StoreBackend) {
    let title = format!("switchover, {}{}", mode(sync), store_suffix(store));
    println!("== {title}: {runs} runs, 3 keepers, 2 sentinels, 1 proxy");
    let (mut pauses, mut errors, mut lost, mut command) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        let (cluster, _, _) = cluster(Timing::DEFAULT, sync, store).await;
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
        let stopped = Instant::now();
        // The longest time without an acknowledgement from the last one before the
        // request to the end of the observation: a writer still blocked counts too.
        let mut moments: Vec<Instant> = acked.iter().map(|a| a.acked).collect();
        moments.push(stopped);
        let pause = moments
            .windows(2)
            .filter(|w| w[1] > asked)
            .map(|w| (w[1] - w[0]).as_secs_f64())
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
async fn soak(minutes: u64, timing: Timing<'_>, store: StoreBackend) {
    let fail_interval = timing.fail_interval;
    println!(
        "== soak: pgbench (scale 10, 8 clients, -j 2) through the proxy for {minutes} min at failInterval {fail_interval}, sleepInterval {}{}",
        timing.sleep_interval,
        store_suffix(store)
    );
    let (cluster, master, _) = cluster(timing, false, store).await;
    let port = cluster.proxy_port();
    tokio::task::block_in_place(|| {
        run_pgbench(port, &["-i", "-q", "-s", "10"]);
        let secs = (minutes * 60).to_string();
        print!(
            "{}",
            run_pgbench(port, &["-c", "8", "-j", "2", "-P", "60", "-T", &secs])
        );
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

/// Runs pgbench against `port` as the test superuser; its progress goes to stderr.
fn run_pgbench(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new(stolon_testkit::pg_bin_dir().join("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", stolon_testkit::SU_USER])
        .args(args)
        .arg("postgres")
        .env("PGPASSWORD", stolon_testkit::SU_PASSWORD)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("running pgbench");
    assert!(out.status.success(), "pgbench failed: {}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One pgbench run against `port`: TPS, mean and p99 latency in ms.
fn pgbench(port: u16, args: &[&str], log_dir: &std::path::Path) -> (f64, f64, f64) {
    let _ = std::fs::remove_dir_all(log_dir);
    std::fs::create_dir_all(log_dir).unwrap();
    let prefix = format!("--log-prefix={}/tx", log_dir.display());
    let mut all = args.to_vec();
    all.extend(["--log", prefix.as_str()]);
    let text = run_pgbench(port, &all);
    let figure = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // Per transaction: client, number, latency in microseconds, ...
    let mut latencies: Vec<u64> = std::fs::read_dir(log_dir)
        .unwrap()
        .flatten()
        .flat_map(|f| {
            std::fs::read_to_string(f.path())
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
                .collect::<Vec<u64>>()
        })
        .collect();
    latencies.sort_unstable();
    let p99 = latencies
        .get(latencies.len().saturating_sub(1) * 99 / 100)
        .map_or(f64::NAN, |us| *us as f64 / 1000.0);
    (figure("tps = "), figure("latency average = "), p99)
}

/// A minimal HAProxy in TCP mode in front of `target`, if haproxy is installed.
fn haproxy(target: u16, dir: &std::path::Path) -> Option<(u16, std::process::Child)> {
    let port = stolon_testkit::free_port();
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n  maxconn 1000\ndefaults\n  mode tcp\n  timeout connect 1s\n  timeout client 30m\n  timeout server 30m\nlisten pg\n  bind 127.0.0.1:{port}\n  server primary 127.0.0.1:{target}\n"
        ),
    )
    .unwrap();
    let child = std::process::Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((port, child))
}

/// Each daemon's CPU while the cluster has nothing to do but watch itself, and on the
/// Kubernetes store the API server's requests.
async fn idle(seconds: u64, store: StoreBackend) {
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

/// CPU time (user and system, all threads) a process has used so far, in seconds.
#[allow(unsafe_code)]
fn cpu_seconds(pid: i32) -> f64 {
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

/// pgbench straight to the primary, through stolon-proxy and through HAProxy, in
/// interleaved rounds: each round measures every path once, and each path's ratio is taken
/// against the direct run of the same round, so that drift of the machine (the direct
/// figure alone moves by 20 % from run to run here) weighs on all paths alike.
async fn proxy_overhead(seconds: u64, rounds: usize) {
    println!("== proxy overhead: pgbench scale 10, 8 clients, -j 2, {seconds}s per run, {rounds} interleaved rounds");
    let (mut cluster, master, _) = cluster(Timing::DEFAULT, false, StoreBackend::Etcd).await;
    cluster.add_proxy_with(&["--kernel-splice", "true"]);
    let spliced = cluster.proxies[1].0;
    wait_for_service("the splicing proxy", spliced, BOOT).await;
    let direct = cluster.keepers[master].pg_port;
    let logs = cluster.root().join("pgbench");
    tokio::task::block_in_place(|| {
        run_pgbench(direct, &["-i", "-q", "-s", "10"]);
        // Each path: name, port, the proxy process (whose CPU is measured) if any, and the
        // child to stop at the end.
        let mut paths = vec![
            ("direct", direct, None, None),
            (
                "stolon-proxy",
                cluster.proxy_port(),
                cluster.proxies[0].1.pid(),
                None,
            ),
            ("st-proxy splice", spliced, cluster.proxies[1].1.pid(), None),
        ];
        match haproxy(direct, cluster.root()) {
            Some((port, child)) => {
                let pid = child.id() as i32;
                paths.push(("haproxy", port, Some(pid), Some(child)))
            }
            None => println!("haproxy is not installed: skipping it (apt-get install haproxy)"),
        }
        let secs = seconds.to_string();
        let mut json = Vec::new();
        for (script, extra) in [("select-only (-S)", vec!["-S"]), ("tpcb (default)", vec![])] {
            println!(
                "{script:<18} {:<6} {:<14} {:>10} {:>10} {:>10} {:>8} {:>10}",
                "round", "path", "tps", "mean ms", "p99 ms", "ratio", "proxy cpu"
            );
            // Per path: [tps, mean, p99, ratio] of each round.
            let mut figures: Vec<Vec<[f64; 4]>> = vec![Vec::new(); paths.len()];
            for round in 1..=rounds {
                let mut direct_tps = f64::NAN;
                for (i, (name, port, proxy, _)) in paths.iter().enumerate() {
                    let mut args = vec!["-c", "8", "-j", "2", "-T", &secs];
                    args.extend(extra.iter().copied());
                    let cpu_before = proxy.map(cpu_seconds);
                    let started = Instant::now();
                    let (tps, mean, p99) = pgbench(*port, &args, &logs.join(name));
                    // The proxy process's share of one core during the run.
                    let cpu = proxy.zip(cpu_before).map_or(f64::NAN, |(pid, before)| {
                        100.0 * (cpu_seconds(pid) - before) / started.elapsed().as_secs_f64()
                    });
                    if *name == "direct" {
                        direct_tps = tps;
                    }
                    let ratio = tps / direct_tps;
                    figures[i].push([tps, mean, p99, ratio]);
                    let cpu_column = if cpu.is_nan() {
                        "-".to_string()
                    } else {
                        format!("{cpu:.1}%")
                    };
                    println!(
                        "{:<18} {round:<6} {name:<14} {tps:>10.0} {mean:>10.3} {p99:>10.3} {ratio:>8.2} {cpu_column:>10}",
                        ""
                    );
                    json.push(format!(
                        "{{\"script\":\"{script}\",\"round\":{round},\"path\":\"{name}\",\"tps\":{tps:.1},\"mean_ms\":{mean:.3},\"p99_ms\":{p99:.3},\"ratio\":{ratio:.3},\"proxy_cpu_percent\":{}}}",
                        if cpu.is_nan() { "null".to_string() } else { format!("{cpu:.1}") }
                    ));
                }
            }
            for ((name, _, _, _), runs) in paths.iter().zip(&figures) {
                let median = |figure: usize| {
                    let mut values: Vec<f64> = runs.iter().map(|r| r[figure]).collect();
                    values.sort_by(f64::total_cmp);
                    values[values.len() / 2]
                };
                println!(
                    "{:<18} {:<6} {name:<14} {:>10.0} {:>10.3} {:>10.3} {:>8.2}",
                    "",
                    "median",
                    median(0),
                    median(1),
                    median(2),
                    median(3)
                );
            }
        }
        println!(
            "{{\"bench\":\"proxy overhead\",\"runs\":[{}]}}",
            json.join(",")
        );
        for (_, _, _, child) in &mut paths {
            if let Some(child) = child {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    });
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
