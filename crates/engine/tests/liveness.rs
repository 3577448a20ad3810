//! Liveness under every timing the spec accepts: keepers that publish at the cadence the
//! spec gives them ([`ValidSpec::keeper_heartbeat`]), each publish late by up to one more
//! heartbeat, never get a healthy primary failed over; proxies that check the store at
//! their cadence ([`ValidSpec::proxy_check_cadence`]), each check late by up to one more,
//! never fence themselves and are never dropped from the proxies allowed to route.

mod common;

use common::*;
use proptest::prelude::*;
use std::time::Duration;
use stolon_cluster::{ProxyUid, ValidSpec};
use stolon_engine::proxy::fence::ProxyFence;

const KEEPERS: [&str; 3] = ["k0", "k1", "k2"];
const PROXIES: [&str; 2] = ["p0", "p1"];

/// What must never happen to a cluster where every component is alive.
const FALSE_ALARMS: [&str; 4] = [
    "master db is failed",
    "electing db as the new master",
    "db not converged",
    "removing non good standby",
];

/// A duration of 100 ms to about 50 s, spread evenly over its orders of magnitude.
fn interval() -> impl Strategy<Value = Duration> {
    (0u32..=9, 0u64..100).prop_map(|(doublings, extra)| ms((100 + extra) << doublings))
}

/// sleepInterval, failInterval, proxyCheckInterval and proxyTimeout, as any valid spec may
/// combine them (proxyCheckInterval below proxyTimeout, and at least a hundredth of it, which
/// keeps the number of checks to simulate bounded).
fn timings() -> impl Strategy<Value = (Duration, Duration, Duration, Duration)> {
    (interval(), interval(), interval(), 10u64..1000).prop_map(
        |(sleep, fail, timeout, per_mille)| {
            let check = timeout * per_mille as u32 / 1000;
            (sleep, fail, check, timeout)
        },
    )
}

fn go(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// A small xorshift generator: each publish's lateness, from the case's seed.
struct Lateness(u64);

impl Lateness {
    /// Up to (not including) one more `cadence`.
    fn next(&mut self, cadence: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        cadence.mul_f64((self.0 % 1000) as f64 / 1000.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Keeper(usize),
    Proxy(usize),
}

fn run(timing: (Duration, Duration, Duration, Duration), seed: u64) -> Result<(), TestCaseError> {
    let (sleep, fail, check, timeout) = timing;
    let overrides = format!(
        r#"{{"sleepInterval": "{}", "failInterval": "{}", "proxyCheckInterval": "{}", "proxyTimeout": "{}"}}"#,
        go(sleep),
        go(fail),
        go(check),
        go(timeout),
    );
    let mut w = World::normal_with(&overrides, &KEEPERS, &PROXIES);
    let spec: ValidSpec = w.spec.clone();
    let (heartbeat, cadence) = (spec.keeper_heartbeat(), spec.proxy_check_cadence());
    let mut lateness = Lateness(seed | 1);
    let mut fences: Vec<ProxyFence> = PROXIES.iter().map(|_| ProxyFence::default()).collect();
    let start = w.now;
    let end = start + 4 * fail.max(timeout).max(sleep);
    let mut next: Vec<(Duration, Who)> = Vec::new();
    for k in 0..KEEPERS.len() {
        next.push((start + lateness.next(heartbeat), Who::Keeper(k)));
    }
    for p in 0..PROXIES.len() {
        next.push((start + lateness.next(cadence), Who::Proxy(p)));
    }
    for fence in &mut fences {
        let announced = fence.read_spec(start, spec.proxy_timeout);
        fence.announced(announced, start + 2 * announced);
        fence.renewed(start);
    }
    let mut wake_at: Option<Duration> = None;
    loop {
        next.sort();
        let (at, who) = next[0];
        if at > end {
            break;
        }
        // The sentinel also wakes by itself at the deadline it named.
        if let Some(wake) = wake_at.filter(|wake| *wake < at) {
            w.now = wake;
            wake_at = w.step_unpublished().wake_at;
            continue;
        }
        for k in w.keepers.values_mut() {
            k.alive = who == Who::Keeper(k.index);
        }
        for (i, p) in PROXIES.iter().enumerate() {
            w.proxy(p).alive = who == Who::Proxy(i);
        }
        match who {
            Who::Keeper(k) => {
                w.report(KEEPERS[k]);
                next[0].0 = at + heartbeat + lateness.next(heartbeat);
            }
            Who::Proxy(p) => {
                let fence = &mut fences[p];
                prop_assert!(
                    !fence.expired(at),
                    "proxy {} fenced itself: check at {:?}, deadline {:?}",
                    PROXIES[p],
                    at - start,
                    fence.deadline().map(|d| d - start)
                );
                let announced = fence.read_spec(at, spec.proxy_timeout);
                fence.announced(announced, at + 2 * announced);
                fence.renewed(at);
                next[0].0 = at + cadence + lateness.next(cadence);
            }
        }
        let out = w.step_at(at);
        wake_at = out.wake_at;
        let enabled: Vec<ProxyUid> = PROXIES.iter().map(|p| ProxyUid::new(*p)).collect();
        prop_assert_eq!(
            &out.data.proxy.spec.enabled_proxies,
            &enabled,
            "at {:?}",
            at - start
        );
    }
    for alarm in FALSE_ALARMS {
        prop_assert!(
            !w.log.iter().any(|e| e.message() == alarm),
            "{:?} with sleepInterval {:?}, failInterval {:?}; the first events: {:?}",
            alarm,
            sleep,
            fail,
            &messages(&w.log)[..w.log.len().min(20)]
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn live_components_are_never_judged_failed(timing in timings(), seed in any::<u64>()) {
        run(timing, seed)?;
    }
}

/// The combination of the report: failInterval 3s under the default sleepInterval of 5s.
#[test]
fn fail_interval_below_sleep_interval_fails_no_primary() {
    run((secs(5), secs(3), secs(5), secs(15)), 7).unwrap();
}
