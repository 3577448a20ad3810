//! Failover, switchover and soak: how long clients cannot write, measured on real clusters.

use crate::proxy::run_pgbench;
use crate::{cluster, mode, report, store_suffix, wait_for, Timing, BOOT};
use std::time::Duration;
use stolon_testkit::{lost_writes, ConnectionProbe, StoreBackend, Writer};
use tokio::time::Instant;

/// SIGKILL of the primary's keeper and postgres under a writer: time to the first write
/// sent after the kill and acknowledged through the proxy, and acknowledged writes lost.
pub(crate) async fn failover(runs: usize, timing: Timing<'_>, sync: bool, store: StoreBackend) {
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
pub(crate) async fn switchover(runs: usize, sync: bool, store: StoreBackend) {
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
pub(crate) async fn soak(minutes: u64, timing: Timing<'_>, store: StoreBackend) {
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
