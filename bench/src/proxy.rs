//! The proxy's overhead: pgbench straight to the primary, through stolon-proxy and through
//! HAProxy, in interleaved rounds.

use crate::{cluster, cpu_seconds, Timing, BOOT};
use std::time::Duration;
use stolon_testkit::{wait_for_service, StoreBackend};
use tokio::time::Instant;

/// Runs pgbench against `port` as the test superuser; its progress goes to stderr.
pub(crate) fn run_pgbench(port: u16, args: &[&str]) -> String {
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
pub(crate) fn pgbench(port: u16, args: &[&str], log_dir: &std::path::Path) -> (f64, f64, f64) {
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

/// pgbench straight to the primary, through stolon-proxy and through HAProxy, in
/// interleaved rounds: each round measures every path once, and each path's ratio is taken
/// against the direct run of the same round, so that drift of the machine (the direct
/// figure alone moves by 20 % from run to run here) weighs on all paths alike.
pub(crate) async fn proxy_overhead(seconds: u64, rounds: usize) {
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
