//! Runs the simulation over a budget of seeds, or replays one.
//!
//! `cargo test -p stolon-sim` runs `STOLON_SIM_SEEDS` seeds (default 2,000) from
//! `STOLON_SIM_FIRST_SEED` (default 0) and prints `N seeds, 0 violations`; a violation
//! prints its seed, what broke and the trace that led there, and fails.
//! A violation is shown as the run of its seed with as few of the seed's faults as still
//! break an invariant, and the command that replays exactly that run.
//! `cargo test -p stolon-sim -- --seed N [--without-faults 1,4]` replays seed N (without
//! those faults of its plan) and prints its whole trace;
//! `--seeds K` and `--first S` set the budget; with `--until-violation` the run stops at the
//! first violation (the planted-bug check, `scripts/sim-planted-bugs.sh`, wants only that).
//!
//! The binary has no libtest harness (it takes `--seed`), so it answers the listing
//! nextest asks for itself: one test, `seeds`.

use stolon_sim::{describe, minimize, run, run_seeds, Config};

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
    let mut config = Config::default();
    if let Some(at) = args.iter().position(|a| a == "--without-faults") {
        let list = args.get(at + 1).map(String::as_str).unwrap_or_default();
        config.without_faults = list
            .split(',')
            .filter(|n| !n.is_empty())
            .map(|n| {
                n.parse()
                    .unwrap_or_else(|_| panic!("--without-faults takes numbers, not {n:?}"))
            })
            .collect();
    }
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
            eprintln!("{}", describe(&outcome, &config));
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
        let (short, with) = minimize(first.seed, &config);
        eprintln!("{}", describe(&short, &with));
        std::process::exit(1);
    }
}
