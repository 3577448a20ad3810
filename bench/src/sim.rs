//! `stolon-bench sim [SEEDS] [FIRST]`: the deterministic simulation over many more seeds
//! than the test suite runs, with its speed.

use stolon_sim::{describe, minimize, run_seeds, Config};

pub fn sim(args: &[String]) {
    let seeds = args.first().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let first = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(0);
    println!("simulation: seeds {first}..{} on every core", first + seeds);
    let step = (seeds / 20).max(1);
    let batch = run_seeds(first, seeds, &Config::default(), false, &|done| {
        if done % step == 0 {
            println!("simulation: {done} of {seeds} seeds");
        }
    });
    println!("simulation: {batch}");
    for outcome in &batch.violations {
        let (short, with) = minimize(outcome.seed, &Config::default());
        println!("{}", describe(&short, &with));
    }
}
