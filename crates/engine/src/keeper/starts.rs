//! Failed starts of postgres, counted per db spec. The first few are retried at once (a
//! start can fail for a moment: a port still held, a file system not yet mounted); after
//! that each retry waits longer, up to half a minute, so that a postgres that cannot start (a
//! bad parameter, a full disk) is not restarted in a tight loop, yet comes back by itself
//! once the cause is gone. A new db spec starts the count afresh.

use std::time::Duration;
use stolon_cluster::{DbUid, Generation};

/// Starts tried without waiting.
const QUICK_ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The db spec a start is for.
pub type StartKey = Option<(DbUid, Generation)>;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailedStarts {
    key: StartKey,
    failures: u32,
    /// On the caller's monotonic clock.
    retry_at: Option<Duration>,
}

impl FailedStarts {
    /// How long a start for `key` must still wait; zero when it may be tried now.
    pub fn wait(&self, key: &StartKey, now: Duration) -> Duration {
        if *key != self.key {
            return Duration::ZERO;
        }
        self.retry_at
            .map_or(Duration::ZERO, |at| at.saturating_sub(now))
    }

    /// Records a start's outcome; after a failure past the quick attempts, returns how long
    /// the next start waits.
    pub fn record(&mut self, key: StartKey, succeeded: bool, now: Duration) -> Option<Duration> {
        if succeeded || key != self.key {
            *self = FailedStarts {
                key,
                ..FailedStarts::default()
            };
        }
        if succeeded {
            return None;
        }
        self.failures += 1;
        let backoff = backoff(self.failures)?;
        self.retry_at = Some(now + backoff);
        Some(backoff)
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// The wait after `failures` failed starts in a row: none for the quick attempts, then
/// 10, 20, then 30 seconds.
fn backoff(failures: u32) -> Option<Duration> {
    let beyond = failures.checked_sub(QUICK_ATTEMPTS)?;
    Some(
        FIRST_BACKOFF
            .saturating_mul(2u32.saturating_pow(beyond))
            .min(MAX_BACKOFF),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(generation: u64) -> StartKey {
        Some((DbUid::new("db"), Generation(generation)))
    }

    #[test]
    fn the_quick_attempts_wait_for_nothing_then_ten_twenty_and_thirty_seconds() {
        let waits: Vec<Option<u64>> = (1..=9).map(|n| backoff(n).map(|d| d.as_secs())).collect();
        assert_eq!(
            waits,
            [
                None,
                None,
                None,
                None,
                Some(10),
                Some(20),
                Some(30),
                Some(30),
                Some(30)
            ]
        );
        assert_eq!(backoff(u32::MAX), Some(MAX_BACKOFF));
    }

    #[test]
    fn a_start_waits_after_the_quick_attempts_and_a_new_spec_or_a_success_clears_it() {
        let now = Duration::from_secs(100);
        let mut starts = FailedStarts::default();
        for _ in 0..QUICK_ATTEMPTS - 1 {
            assert_eq!(starts.record(key(1), false, now), None);
            assert_eq!(starts.wait(&key(1), now), Duration::ZERO);
        }
        assert_eq!(
            starts.record(key(1), false, now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(starts.wait(&key(1), now), Duration::from_secs(10));
        assert_eq!(
            starts.wait(&key(1), now + Duration::from_secs(4)),
            Duration::from_secs(6)
        );
        assert_eq!(
            starts.wait(&key(1), now + Duration::from_secs(11)),
            Duration::ZERO
        );
        assert_eq!(starts.wait(&key(2), now), Duration::ZERO, "a new spec");
        assert_eq!(
            starts.record(key(1), false, now),
            Some(Duration::from_secs(20))
        );
        assert_eq!(starts.failures(), QUICK_ATTEMPTS + 1);
        assert_eq!(starts.record(key(1), true, now), None);
        assert_eq!(starts.wait(&key(1), now), Duration::ZERO);
        assert_eq!(starts.failures(), 0);
        starts.record(key(1), false, now);
        assert_eq!(starts.record(key(2), false, now), None, "counted afresh");
        assert_eq!(starts.failures(), 1);
    }
}
