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

/// What [`KeeperFence::enforce`] asks of the keeper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforce {
    /// Nothing until something changes.
    Idle,
    /// Nothing now; look again after this long.
    LookAgainIn(Duration),
    /// Keep postgres stopped. `fenced_now` is set when the fence falls due at this call,
    /// with how long no publish has been stored; `seen_stopped` once postgres was found
    /// stopped under this fence (so a running one was started again meanwhile).
    Stop {
        fenced_now: Option<Duration>,
        seen_stopped: bool,
    },
}

/// The keeper's store-loss fence as a state machine over the caller's monotonic clock: the
/// cluster data reads and publishes the loop records, and the watchdog's questions. Only a
/// successful publish lifts it: a read shows that the store answers, not that the sentinel
/// has heard from this keeper.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeeperFence {
    /// When the last successful publish was sent.
    last_sent: Option<Duration>,
    /// From the last cluster data read.
    timing: Option<Timing>,
    master: bool,
    /// Since when postgres is fenced, and whether it has been found stopped since.
    fenced: Option<(Duration, bool)>,
}

impl KeeperFence {
    /// What a cluster data read says: the timings and whether our db is the primary.
    pub fn read(&mut self, timing: Timing, master: bool) {
        self.timing = Some(timing);
        self.master = master;
    }

    pub fn timing(&self) -> Option<Timing> {
        self.timing
    }

    fn verdict(&self, now: Duration) -> Verdict {
        match self.timing {
            Some(timing) => decide(
                self.last_sent.map(|at| now.saturating_sub(at)),
                timing,
                self.master,
            ),
            None => Verdict::Never,
        }
    }

    /// A publish sent at `sent` succeeded, seen at `now`. Returns how long the fence held
    /// when this lifted it (a publish that took longer than the limit leaves it in place).
    pub fn published(&mut self, sent: Duration, now: Duration) -> Option<Duration> {
        self.last_sent = Some(self.last_sent.map_or(sent, |last| last.max(sent)));
        match self.fenced {
            Some((since, _)) if self.verdict(now) != Verdict::Now => {
                self.fenced = None;
                Some(now.saturating_sub(since))
            }
            _ => None,
        }
    }

    /// Whether postgres must be kept stopped now: fenced, or just falling due.
    pub fn holds(&self, now: Duration) -> bool {
        self.fenced.is_some() || self.verdict(now) == Verdict::Now
    }

    pub fn fenced(&self) -> bool {
        self.fenced.is_some()
    }

    /// The watchdog's question at `now`: fences when due.
    pub fn enforce(&mut self, now: Duration) -> Enforce {
        let fenced_now = match self.fenced {
            Some(_) => None,
            None => match self.verdict(now) {
                Verdict::Never => return Enforce::Idle,
                Verdict::In(left) => return Enforce::LookAgainIn(left),
                Verdict::Now => {
                    self.fenced = Some((now, false));
                    Some(
                        self.last_sent
                            .map_or(Duration::ZERO, |at| now.saturating_sub(at)),
                    )
                }
            },
        };
        Enforce::Stop {
            fenced_now,
            seen_stopped: self.fenced.is_some_and(|(_, seen)| seen),
        }
    }

    /// The watchdog found postgres stopped under the fence.
    pub fn seen_stopped(&mut self) {
        if let Some((_, seen)) = &mut self.fenced {
            *seen = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: Timing = Timing {
        fail_interval: Duration::from_secs(5),
        heartbeat: Duration::from_secs(1),
    };

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn a_primary_is_fenced_one_heartbeat_before_failinterval_and_lifted_by_a_publish() {
        let mut fence = KeeperFence::default();
        fence.read(TIMING, true);
        assert_eq!(
            fence.enforce(s(1)),
            Enforce::Idle,
            "never published: never fenced"
        );
        assert_eq!(fence.published(s(10), s(10)), None);
        assert_eq!(fence.enforce(s(11)), Enforce::LookAgainIn(s(3)));
        assert!(!fence.holds(s(13)));
        assert!(fence.holds(s(14)), "due at failInterval less a heartbeat");
        assert_eq!(
            fence.enforce(s(14)),
            Enforce::Stop {
                fenced_now: Some(s(4)),
                seen_stopped: false
            }
        );
        fence.seen_stopped();
        assert_eq!(
            fence.enforce(s(15)),
            Enforce::Stop {
                fenced_now: None,
                seen_stopped: true
            }
        );
        // A publish sent before the fence fell due, answered late, does not lift it.
        assert_eq!(fence.published(s(12), s(16)), None);
        assert!(fence.fenced());
        assert_eq!(fence.published(s(16), s(17)), Some(s(3)));
        assert!(!fence.holds(s(17)));
    }

    #[test]
    fn a_standby_is_never_fenced() {
        let mut fence = KeeperFence::default();
        fence.read(TIMING, false);
        fence.published(s(1), s(1));
        assert_eq!(fence.enforce(s(100)), Enforce::Idle);
        assert!(!fence.holds(s(100)));
    }
}
