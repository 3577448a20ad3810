//! A primary keeper's own fence when it cannot reach the store.
//!
//! The sentinel judges a keeper failed once its info has not changed for failInterval, as
//! the sentinel sees it; the info it saw last was sent no later than the keeper's last
//! successful publish. So a keeper that has not stored its info for failInterval may already
//! be replaced, and an old primary still running would take the writes of the clients
//! connected to it directly while another one is promoted. The proxies fence themselves
//! without the store; this is the same for the primary's own postgres: its keeper stops it
//! one heartbeat before the sentinel could judge it failed.
//!
//! Elapsed times are the caller's monotonic clock, measured from the moment the last
//! successful publish was *sent*: a publish whose answer came late (or was lost) only makes
//! the fence come sooner.

use std::time::Duration;
use stolon_cluster::ValidSpec;

/// The spec's timings the fence follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub fail_interval: Duration,
    /// How often the keeper publishes its info ([`ValidSpec::keeper_heartbeat`]).
    pub heartbeat: Duration,
}

impl Timing {
    pub fn of(spec: &ValidSpec) -> Timing {
        Timing {
            fail_interval: spec.fail_interval,
            heartbeat: spec.keeper_heartbeat(),
        }
    }

    /// How long a primary may go without storing its info: failInterval less one heartbeat,
    /// which leaves the keeper a heartbeat to stop postgres before the sentinel may judge
    /// it failed. A valid spec has at least three heartbeats per failInterval, so this is at
    /// least two: a keeper that misses one heartbeat is not fenced.
    pub fn limit(&self) -> Duration {
        self.fail_interval.saturating_sub(self.heartbeat)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to fence, however long the store stays away.
    Never,
    /// Fence once this much more time has passed without a successful publish.
    In(Duration),
    /// Fence now.
    Now,
}

/// Whether a keeper must fence its postgres now, `since_publish` after it sent its last
/// successful info publish (None: it has published nothing since it started), given the
/// timings and whether the cluster data it last read gives its db the master role.
///
/// A standby is never fenced: it takes no writes, and the sentinel replacing it harms no
/// one. Neither is a keeper that has published nothing since it started: the engine starts
/// no postgres until the sentinel has seen this keeper's boot ([`crate::keeper::next_action`]),
/// which only a publish can show it.
pub fn decide(since_publish: Option<Duration>, timing: Timing, master: bool) -> Verdict {
    let Some(elapsed) = since_publish.filter(|_| master) else {
        return Verdict::Never;
    };
    match timing.limit().checked_sub(elapsed) {
        Some(left) if !left.is_zero() => Verdict::In(left),
        _ => Verdict::Now,
    }
}
