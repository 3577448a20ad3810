//! Runs the simulation over a budget of seeds, or replays one.
//!
//! `cargo test -p stolon-sim` runs `STOLON_SIM_SEEDS` seeds (default 2,000) from
//! `STOLON_SIM_FIRST_SEED` (default 0) and prints `N seeds, 0 violations`; a violation
//! prints its seed, what broke and the trace that led there, and fails.
//! `cargo test -p stolon-sim -- --seed N` replays seed N and prints its whole trace;
//! `--seeds K` and `--first S` set the budget; with `--until-violation` the run stops at the
//! first violation (the planted-bug check, `scripts/sim-planted-bugs.sh`, wants only that).
//!
//! The binary has no libtest harness (it takes `--seed`), so it answers the listing
//! nextest asks for itself: one test, `seeds`.

use stolon_sim::{describe, run, run_seeds, Config};

fn arg(args: &[String], name: &str) -> Option<u64> {
    let at = args.iter().position(|a| a == name)?;
    let value = args.get(at + 1)?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name} takes a number, not {value:?}")),
    )
}

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        if !args.iter().any(|a| a == "--ignored") {
            println!("seeds: test");
        }
        return;
    }
    let config = Config::default();
    if let Some(seed) = arg(&args, "--seed") {
        let outcome = run(seed, &config);
        for line in &outcome.trace {
            println!("{line}");
        }
        println!(
            "seed {seed}: {} events, {} faults, {} commits acknowledged, {}",
            outcome.events,
            outcome.faults,
            outcome.acked,
            outcome
                .violation
                .as_ref()
                .map_or("no violation".to_string(), |v| v.what.clone())
        );
        if outcome.violation.is_some() {
            eprintln!("{}", describe(&outcome));
            std::process::exit(1);
        }
        return;
    }
    let seeds = arg(&args, "--seeds")
        .or_else(|| env("STOLON_SIM_SEEDS"))
        .unwrap_or(2000);
    let first = arg(&args, "--first")
        .or_else(|| env("STOLON_SIM_FIRST_SEED"))
        .unwrap_or(0);
    let until_violation = args.iter().any(|a| a == "--until-violation");
    let batch = run_seeds(first, seeds, &config, until_violation, &|_| {});
    println!("{batch}");
    if let Some(first) = batch.violations.first() {
        for o in &batch.violations {
            let what = &o.violation.as_ref().expect("a violation").what;
            eprintln!("violation: seed {}: {what}", o.seed);
        }
        eprintln!("{}", describe(first));
        std::process::exit(1);
    }
}
