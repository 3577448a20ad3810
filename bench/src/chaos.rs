//! The fault campaign: runs of seeded fault schedules on a cluster whose every part is a
//! host of its own (three etcd members, three keepers, two sentinels, two proxies), each
//! ending with the checker. Prints one JSON line per run, then a table and a summary.
//!
//!   stolon-bench chaos [--seed N] [--runs K] [--minutes M] [--sync|--async]
//!
//! Run `r` plays the schedule of seed N + r (default N: from the clock, printed), so a run
//! replays with `--seed <its seed> --runs 1`. The exit status is 1 when any run broke a
//! rule the checker holds the cluster to.

use std::time::Duration;
use stolon_testkit::faults::{play, schedule};
use stolon_testkit::{Checker, CheckerReport, NetCluster, NetClusterBuilder};

const BOOT: Duration = Duration::from_secs(120);
/// The spec's default maxStandbyLag.
const MAX_STANDBY_LAG: u64 = 1024 * 1024;

struct Options {
    seed: u64,
    runs: u64,
    length: Duration,
    sync: bool,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1),
        runs: 10,
        length: Duration::from_secs(120),
        sync: false,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or(format!("{name} takes a number"))
        };
        match arg.as_str() {
            "--seed" => options.seed = value("--seed")? as u64,
            "--runs" => options.runs = value("--runs")? as u64,
            "--minutes" => options.length = Duration::from_secs_f64(value("--minutes")? * 60.0),
            "--sync" => options.sync = true,
            "--async" => options.sync = false,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(options)
}

/// One run's figures, for the table.
struct Run {
    seed: u64,
    faults: usize,
    report: CheckerReport,
}

impl Run {
    fn broken(&self, sync: bool) -> bool {
        broken(&self.report, sync)
    }
}

/// Whether a run broke a rule the checker holds the cluster to.
fn broken(report: &CheckerReport, sync: bool) -> bool {
    (sync && !report.lost.is_empty())
        || !report.split_brain.is_empty()
        || report.lost_beyond_lag > 0
        || report.converged.is_none()
        || !report.read_back
}

pub fn chaos(args: &[String]) {
    let options = match parse(args) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("{e}\nusage: stolon-bench chaos [--seed N] [--runs K] [--minutes M] [--sync|--async]");
            std::process::exit(2);
        }
    };
    let mode = if options.sync { "sync" } else { "async" };
    eprintln!(
        "chaos: {} runs of {:.1} minutes, {mode}, seeds {}..{}",
        options.runs,
        options.length.as_secs_f64() / 60.0,
        options.seed,
        options.seed + options.runs - 1
    );
    let mut runs = Vec::new();
    for r in 0..options.runs {
        let seed = options.seed + r;
        let plan = schedule(seed, options.length, 2);
        let (faults, report) = NetClusterBuilder::new()
            .spec("synchronousReplication", options.sync.into())
            .run(|mut cluster| async move {
                settle(&cluster).await;
                let checker = Checker::start(&cluster).await;
                let done = play(&mut cluster, &plan).await;
                let report = checker.finish(&cluster, MAX_STANDBY_LAG).await;
                // A run that broke a rule may not break it again when replayed (timings
                // differ): its logs are all there is to explain it.
                if broken(&report, options.sync) {
                    cluster.keep_files();
                }
                (done, report)
            });
        println!("{}", report.json(seed, mode, &faults));
        let run = Run {
            seed,
            faults: faults.iter().filter(|f| !f.contains(" heal: ")).count(),
            report,
        };
        if run.broken(options.sync) {
            eprintln!("chaos: seed {seed} BROKE A RULE: {}", run.report.explain());
        }
        runs.push(run);
    }
    print_table(&runs, mode, options.sync);
    if runs.iter().any(|r| r.broken(options.sync)) {
        std::process::exit(1);
    }
}

async fn settle(cluster: &NetCluster) {
    cluster.wait_for_master(BOOT).await;
    stolon_testkit::wait_until("the cluster to settle", BOOT, || async {
        cluster.settled().await.then_some(())
    })
    .await;
}

fn print_table(runs: &[Run], mode: &str, sync: bool) {
    println!(
        "\n{:>12} {:>6} {:>7} {:>6} {:>9} {:>12} {:>9} {:>10}",
        "seed", "faults", "acked", "lost", "lost>lag", "split brain", "unavail", "converged"
    );
    for run in runs {
        let r = &run.report;
        println!(
            "{:>12} {:>6} {:>7} {:>6} {:>9} {:>12} {:>8.1}s {:>10}",
            run.seed,
            run.faults,
            r.acked,
            r.lost.len(),
            r.lost_beyond_lag,
            format!("{} ({})", r.split_brain.len(), r.split_brain_proxy),
            r.max_unavailable.as_secs_f64(),
            r.converged
                .map(|d| format!("{:.1}s", d.as_secs_f64()))
                .unwrap_or_else(|| "NO".into())
        );
    }
    let sum = |f: &dyn Fn(&Run) -> usize| runs.iter().map(f).sum::<usize>();
    let longest = runs
        .iter()
        .map(|r| r.report.max_unavailable.as_secs_f64())
        .fold(0.0, f64::max);
    let summary = serde_json::json!({
        "bench": "chaos",
        "mode": mode,
        "runs": runs.len(),
        "faults": sum(&|r| r.faults),
        "acked": sum(&|r| r.report.acked),
        "lost": sum(&|r| r.report.lost.len()),
        "lost_beyond_lag": sum(&|r| r.report.lost_beyond_lag),
        "split_brain": sum(&|r| r.report.split_brain.len()),
        "split_brain_proxy": sum(&|r| r.report.split_brain_proxy),
        "max_unavailable_s": (longest * 10.0).round() / 10.0,
        "not_converged": runs.iter().filter(|r| r.report.converged.is_none()).count(),
        "broken_runs": runs.iter().filter(|r| r.broken(sync)).count(),
    });
    println!(
        "\n{mode}: {} runs, {} faults, {} acknowledged commits, {} lost ({} beyond maxStandbyLag), {} split brain ({} through proxies), longest unavailability {longest:.1}s, {} runs did not converge",
        runs.len(),
        summary["faults"],
        summary["acked"],
        summary["lost"],
        summary["lost_beyond_lag"],
        summary["split_brain"],
        summary["split_brain_proxy"],
        summary["not_converged"],
    );
    println!("{summary}");
}
