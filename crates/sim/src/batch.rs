//! Many seeds at once, one thread per core, with the figures a batch prints.

use crate::world::{run, Config, Outcome};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a batch of seeds came to.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The runs that broke an invariant, by seed.
    pub violations: Vec<Outcome>,
    pub seeds: u64,
    pub events: u64,
    pub faults: usize,
    pub acked: usize,
    pub elapsed: Duration,
}

impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        write!(
            f,
            "{} seeds, {} violations ({} events, {} faults, {} commits acknowledged, {secs:.1} s, {:.0} seeds/s)",
            self.seeds,
            self.violations.len(),
            self.events,
            self.faults,
            self.acked,
            self.seeds as f64 / secs.max(1e-9)
        )
    }
}

/// Runs seeds `first..first + count` on every core; with `until_violation`, stops soon
/// after the first violation. `progress` is called with the number of seeds done so far.
pub fn run_seeds(
    first: u64,
    count: u64,
    config: &Config,
    until_violation: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Batch {
    let started = Instant::now();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (stop, done) = (&stop, &done);
                scope.spawn(move || {
                    let mut outcomes = Vec::new();
                    for seed in (first..first + count).filter(|seed| seed % threads == t) {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let outcome = run(seed, config);
                        if until_violation && outcome.violation.is_some() {
                            stop.store(true, Ordering::Relaxed);
                        }
                        outcomes.push(outcome);
                        progress(done.fetch_add(1, Ordering::Relaxed) + 1);
                    }
                    outcomes
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a simulation thread panicked"))
            .collect()
    });
    let mut violations: Vec<Outcome> = outcomes
        .iter()
        .filter(|o| o.violation.is_some())
        .cloned()
        .collect();
    violations.sort_by_key(|o| o.seed);
    Batch {
        violations,
        seeds: outcomes.len() as u64,
        events: outcomes.iter().map(|o| o.events).sum(),
        faults: outcomes.iter().map(|o| o.faults).sum(),
        acked: outcomes.iter().map(|o| o.acked).sum(),
        elapsed: started.elapsed(),
    }
}

/// The run of `seed` with as few of its faults as still break an invariant: each fault in
/// turn is left out, and stays out if the run still fails. The trace of that run is the
/// short story of the violation.
pub fn minimize(seed: u64, config: &Config) -> (Outcome, Config) {
    let mut config = config.clone();
    let mut failing = run(seed, &config);
    if failing.violation.is_none() {
        return (failing, config);
    }
    for number in 0..failing.plan.len() {
        let mut fewer = config.clone();
        fewer.without_faults.insert(number);
        let outcome = run(seed, &fewer);
        if outcome.violation.is_some() {
            config = fewer;
            failing = outcome;
        }
    }
    (failing, config)
}

/// A violation's seed, what broke, the faults it needed, the trace that led there, and
/// how to replay it.
pub fn describe(outcome: &Outcome, config: &Config) -> String {
    let Some(violation) = &outcome.violation else {
        return format!("seed {}: no violation", outcome.seed);
    };
    let mut out = format!(
        "seed {} ({} replication): at {:.3}s: {}\ntrace (the last {} events):\n",
        outcome.seed,
        if outcome.synchronous {
            "synchronous"
        } else {
            "asynchronous"
        },
        violation.at.as_secs_f64(),
        violation.what,
        outcome.trace.len()
    );
    for line in &outcome.trace {
        out += &format!("  {line}\n");
    }
    let kept: Vec<&str> = outcome
        .plan
        .iter()
        .enumerate()
        .filter(|(number, _)| !config.without_faults.contains(number))
        .map(|(_, fault)| fault.as_str())
        .collect();
    out += &format!(
        "faults of the run ({} of the seed's {}): {}\n",
        kept.len(),
        outcome.plan.len(),
        kept.join(", ")
    );
    out += &format!(
        "replay: cargo test -p stolon-sim -- --seed {}",
        outcome.seed
    );
    if !config.without_faults.is_empty() {
        let left_out: Vec<String> = config
            .without_faults
            .iter()
            .map(|n| n.to_string())
            .collect();
        out += &format!(" --without-faults {}", left_out.join(","));
    }
    out
}
