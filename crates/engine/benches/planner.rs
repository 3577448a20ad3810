//! How long one sentinel step takes on a large cluster (DESIGN's target: under 10 ms with
//! 1,000 keepers). Prints figures; asserts none.
//!
//! `cargo bench -p stolon-engine --bench planner [-- KEEPERS]` (default 1000): a settled
//! cluster where every keeper holds a db (one primary, the rest standbys) and three proxies
//! route to it; steps with every keeper republishing, then the steps of a failover.

// The engine's clippy.toml forbids clock reads; a benchmark is the one place that needs one.
#![allow(clippy::disallowed_methods)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::{has, World};
use std::time::{Duration, Instant};
use stolon_engine::sentinel::{self, Observations, StepOutput};

const STEADY_STEPS: usize = 50;

/// One step on freshly published infos, timed without the simulation's own work.
fn timed_step(w: &mut World) -> (Duration, StepOutput) {
    w.publish();
    let (keepers, proxies) = w.observations();
    let seed = w.next_seed();
    let started = Instant::now();
    let out = sentinel::step(
        w.now,
        &w.cd,
        &w.spec,
        Observations {
            keepers: &keepers,
            proxies: &proxies,
        },
        &mut w.memory,
        seed,
    );
    let took = started.elapsed();
    w.cd = out.data.clone();
    (took, out)
}

fn summary(name: &str, mut times: Vec<Duration>) -> String {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = ms(times[times.len() / 2]);
    let p99 = ms(times[(times.len() * 99 / 100).min(times.len() - 1)]);
    let max = ms(*times.last().unwrap());
    println!(
        "{name:<34} {:>6} {median:>10.2} {p99:>10.2} {max:>10.2}",
        times.len()
    );
    format!("{{\"figure\":\"{name}\",\"steps\":{},\"median_ms\":{median:.3},\"p99_ms\":{p99:.3},\"max_ms\":{max:.3}}}", times.len())
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    let names: Vec<String> = (0..n).map(|i| format!("k{i:04}")).collect();
    let keepers: Vec<&str> = names.iter().map(String::as_str).collect();
    let spec = format!(r#"{{"maxStandbys": {n}, "maxStandbysPerSender": {n}}}"#);
    let setup = Instant::now();
    let mut w = World::normal_with(&spec, &keepers, &["p1", "p2", "p3"]);
    println!(
        "== sentinel planner: {n} keepers, {} dbs, 3 proxies (settled in {:.1}s)",
        w.cd.dbs.len(),
        setup.elapsed().as_secs_f64()
    );
    println!(
        "{:<34} {:>6} {:>10} {:>10} {:>10}",
        "", "steps", "median ms", "p99 ms", "max ms"
    );
    let mut steady = Vec::new();
    for _ in 0..STEADY_STEPS {
        w.report_live();
        w.now += w.spec.sleep_interval;
        steady.push(timed_step(&mut w).0);
    }
    let mut json = vec![summary("steady (every keeper republished)", steady)];

    let master = w.keeper_of(&w.master_uid());
    w.keeper(&master).alive = false;
    let mut failover = Vec::new();
    let mut elected = None;
    for _ in 0..60 {
        w.report_live();
        w.now += w.spec.sleep_interval;
        let (took, out) = timed_step(&mut w);
        failover.push(took);
        if has(&out.events, "electing db as the new master") {
            elected = Some(took);
            break;
        }
    }
    json.push(summary("failover (until a master is elected)", failover));
    match elected {
        Some(took) => println!(
            "{:<34} {:>6} {:>10.2}",
            "  the electing step",
            1,
            took.as_secs_f64() * 1000.0
        ),
        None => println!("no master was elected within 60 steps"),
    }
    println!(
        "{{\"bench\":\"planner\",\"keepers\":{n},\"figures\":[{}]}}",
        json.join(",")
    );
}
