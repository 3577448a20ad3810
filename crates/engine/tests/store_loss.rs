//! The keeper's fence when it cannot reach the store: a primary stops its postgres one
//! heartbeat before the sentinel could judge it failed, and a keeper that keeps storing its
//! info at its cadence, even a heartbeat late, is never fenced.

mod common;

use common::{ms, secs, valid};
use proptest::prelude::*;
use std::time::Duration;
use stolon_engine::store_loss::{decide, Timing, Verdict};

/// The test kit's timings: failInterval 5s, sleepInterval 1s.
const KIT: Timing = Timing {
    fail_interval: Duration::from_secs(5),
    heartbeat: Duration::from_secs(1),
};

#[test]
fn a_master_is_fenced_one_heartbeat_before_fail_interval() {
    for (name, since, want) in [
        ("just published", ms(0), Verdict::In(secs(4))),
        ("a heartbeat late", ms(2000), Verdict::In(secs(2))),
        ("just before the limit", ms(3999), Verdict::In(ms(1))),
        ("at failInterval - heartbeat", ms(4000), Verdict::Now),
        ("past failInterval", secs(60), Verdict::Now),
    ] {
        assert_eq!(decide(Some(since), KIT, true), want, "{name}");
    }
}

#[test]
fn standbys_and_keepers_that_never_published_are_never_fenced() {
    for (name, since, master) in [
        ("a standby silent for a minute", Some(secs(60)), false),
        ("a standby that never published", None, false),
        // It runs no postgres: the sentinel must see its boot first.
        ("a master's keeper that never published", None, true),
    ] {
        assert_eq!(decide(since, KIT, master), Verdict::Never, "{name}");
    }
}

#[test]
fn the_limit_follows_the_spec() {
    for (name, overrides, fail, heartbeat) in [
        ("the test kit", "{}", secs(5), secs(1)),
        (
            "the defaults: a heartbeat every failInterval / 3",
            r#"{"sleepInterval": "5s", "failInterval": "10s"}"#,
            secs(10),
            secs(10) / 3,
        ),
        (
            "a long failInterval",
            r#"{"failInterval": "60s"}"#,
            secs(60),
            secs(1),
        ),
        (
            "failInterval below sleepInterval",
            r#"{"sleepInterval": "5s", "failInterval": "3s"}"#,
            secs(3),
            secs(1),
        ),
    ] {
        let timing = Timing::of(&valid(overrides));
        assert_eq!(
            timing,
            Timing {
                fail_interval: fail,
                heartbeat
            },
            "{name}"
        );
        assert_eq!(timing.limit(), fail - heartbeat, "{name}");
    }
}

/// A duration of 1 ns to about 28 hours, spread evenly over its orders of magnitude.
fn interval() -> impl Strategy<Value = Duration> {
    (0u32..47, any::<u64>()).prop_map(|(bits, extra)| {
        let base = 1u64 << bits;
        Duration::from_nanos(base + extra % base)
    })
}

fn ns(d: Duration) -> String {
    format!("{}ns", d.as_nanos())
}

/// The timings of a spec with this sleepInterval and failInterval, if the spec accepts them.
fn timing_of(sleep: Duration, fail: Duration) -> Timing {
    Timing::of(&valid(&format!(
        r#"{{"sleepInterval": "{}", "failInterval": "{}"}}"#,
        ns(sleep),
        ns(fail)
    )))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// A master that stops storing its info at 0 (the send of its last successful publish)
    /// is fenced at one instant `due`, after which the decision stays `Now`. The sentinel
    /// saw that info at 0 at the earliest and counts the keeper healthy while no more than
    /// failInterval has passed since: `due` comes at least one heartbeat before that, so
    /// strictly before the sentinel's earliest failure judgement.
    #[test]
    fn the_fence_falls_due_before_the_sentinel_may_judge_the_keeper_failed(
        sleep in interval(),
        fail in interval(),
        probes in prop::collection::vec(0u32..=2000, 1..20),
    ) {
        let timing = timing_of(sleep, fail);
        let due = match decide(Some(Duration::ZERO), timing, true) {
            Verdict::In(left) => left,
            Verdict::Now => Duration::ZERO,
            Verdict::Never => return Err(TestCaseError::fail("a master is never fenced")),
        };
        prop_assert!(due + timing.heartbeat <= fail, "due {due:?}, heartbeat {:?}, failInterval {fail:?}", timing.heartbeat);
        // Below 3 ns a failInterval has no whole heartbeat: the fence still lands while the
        // sentinel counts the keeper healthy.
        prop_assert!(due < fail || timing.heartbeat.is_zero(), "due {due:?} not before failInterval {fail:?}");
        prop_assert_eq!(decide(Some(due), timing, true), Verdict::Now);
        // Anywhere in [0, 2 x failInterval]: not due before `due`, and the time left
        // always lands on it.
        for per_mille in probes {
            let elapsed = fail * per_mille / 1000;
            match decide(Some(elapsed), timing, true) {
                Verdict::Now => prop_assert!(elapsed >= due, "fenced at {elapsed:?}, due {due:?}"),
                Verdict::In(left) => prop_assert_eq!(elapsed + left, due),
                Verdict::Never => return Err(TestCaseError::fail("a master is never fenced")),
            }
        }
    }

    /// A master whose publishes each succeed within a heartbeat after the previous one was
    /// due (so at most two heartbeats after the previous send, its answer included) is
    /// never fenced.
    #[test]
    fn a_keeper_publishing_every_heartbeat_even_a_heartbeat_late_is_never_fenced(
        sleep in interval(),
        fail in interval(),
        lateness in prop::collection::vec(0u32..1000, 1..50),
    ) {
        let timing = timing_of(sleep, fail);
        for per_mille in lateness {
            // The longest the watchdog measures from one send to the next success.
            let gap = timing.heartbeat + timing.heartbeat * per_mille / 1000;
            prop_assert!(
                matches!(decide(Some(gap), timing, true), Verdict::In(_)),
                "fenced {gap:?} after a publish, heartbeat {:?}, failInterval {fail:?}",
                timing.heartbeat
            );
        }
    }
}
