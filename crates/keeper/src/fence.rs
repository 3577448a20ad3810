//! The keeper's own fence when it cannot reach the store (`--store-loss fence`).
//!
//! A primary whose keeper cannot store its info may be replaced by the sentinel once
//! failInterval has passed; clients connected to it directly, not through a proxy, would
//! go on committing on the old primary meanwhile. So a watchdog task stops postgres when
//! [`stolon_engine::store_loss::decide`] says so, one heartbeat before the sentinel could
//! judge this keeper failed. It is a task of its own because the keeper's loop may be stuck
//! in a store request or a long action just then.
//!
//! The loop records here each successful publish and what each cluster data read says; it
//! leaves postgres alone while the fence holds. Only a successful publish lifts the fence:
//! a read shows that the store answers, not that the sentinel has heard from this keeper.

use std::sync::Mutex;
use std::time::Duration;
use stolon_engine::store_loss::{Enforce, KeeperFence, Timing};
use stolon_pg::ctl::PgCtl;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a keeper does with its postgres when it cannot store its info.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreLoss {
    /// A primary stops its postgres one heartbeat before the sentinel may replace it.
    Fence,
    /// Stolon's behaviour: postgres keeps running; only the proxies fence themselves.
    Ignore,
}

/// How often a fenced keeper makes sure its postgres stays stopped: one of the loop's
/// actions, begun before the fence, may start it again.
const RECHECK: Duration = Duration::from_millis(200);
/// How long a fenced postgres has to finish its fast shutdown before it is stopped
/// immediately.
const CLEAN_STOP: Duration = Duration::from_secs(5);
/// `pg_ctl status` answers at once unless the machine is overloaded.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct Fence {
    shared: Mutex<Shared>,
    changed: Notify,
    /// The origin of the engine fence's clock.
    origin: Instant,
}

#[derive(Default)]
struct Shared {
    fence: KeeperFence,
    stop_timeout: Duration,
}

impl Default for Fence {
    fn default() -> Self {
        Fence {
            shared: Mutex::default(),
            changed: Notify::new(),
            origin: Instant::now(),
        }
    }
}

impl Fence {
    fn at(&self, instant: Instant) -> Duration {
        instant.saturating_duration_since(self.origin)
    }

    /// What the cluster data just read says: the timings, whether our db is the primary,
    /// and how long postgres may take to stop (dbWaitReadyTimeout).
    pub fn read(&self, timing: Timing, master: bool, stop_timeout: Duration) {
        let mut shared = self.shared.lock().unwrap();
        shared.fence.read(timing, master);
        shared.stop_timeout = stop_timeout;
        drop(shared);
        self.changed.notify_one();
    }

    /// A publish sent at `sent` succeeded: the sentinel's count starts again from no earlier
    /// than that. Returns whether this lifted the fence (a publish that took longer than the
    /// limit itself leaves it in place).
    pub fn published(&self, sent: Instant) -> bool {
        let lifted = self
            .shared
            .lock()
            .unwrap()
            .fence
            .published(self.at(sent), self.at(Instant::now()));
        if let Some(held) = lifted {
            tracing::info!(
                "store reachable again: fence lifted after {}, postgres goes back to what the cluster data says",
                secs(held)
            );
        }
        self.changed.notify_one();
        lifted.is_some()
    }

    /// Whether postgres must be kept stopped now: fenced, or just falling due.
    pub fn holds(&self) -> bool {
        let now = self.at(Instant::now());
        self.shared.lock().unwrap().fence.holds(now)
    }

    /// Whether the watchdog has fenced postgres (and no publish has lifted the fence yet).
    pub fn fenced(&self) -> bool {
        self.shared.lock().unwrap().fence.fenced()
    }

    /// The watchdog: fences postgres when it falls due, and keeps it stopped until a publish
    /// lifts the fence.
    pub async fn watch(&self, pg: PgCtl, shutdown: CancellationToken) {
        loop {
            let wait = self.enforce(&pg).await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => {}
            }
        }
    }

    /// Fences when due and stops postgres while fenced; returns when to look again (None:
    /// when something changes).
    async fn enforce(&self, pg: &PgCtl) -> Option<Duration> {
        let now = self.at(Instant::now());
        let (stop_timeout, seen_stopped) = {
            let mut shared = self.shared.lock().unwrap();
            match shared.fence.enforce(now) {
                Enforce::Idle => return None,
                Enforce::LookAgainIn(left) => return Some(left),
                Enforce::Stop {
                    fenced_now,
                    seen_stopped,
                } => {
                    if let (Some(silent), Some(timing)) = (fenced_now, shared.fence.timing()) {
                        tracing::warn!(
                            "store unreachable: fencing postgres, no keeper info stored for {} (limit {} = failInterval {} - heartbeat {})",
                            secs(silent),
                            secs(timing.limit()),
                            secs(timing.fail_interval),
                            secs(timing.heartbeat),
                        );
                    }
                    (shared.stop_timeout, seen_stopped)
                }
            }
        };
        // Unknown counts as running: stopping a stopped postgres is harmless. A publish may
        // have lifted the fence meanwhile, and the loop started postgres again.
        if !matches!(pg.is_running(STATUS_TIMEOUT).await, Ok(false)) && self.fenced() {
            if seen_stopped {
                tracing::warn!("postgres runs again while fenced: stopping it");
            }
            // The fast shutdown ends every session at once: no commit is acknowledged after
            // it begins. Its checkpoint may then wait on walsenders whose standbys the
            // partition cut off, and the keeper must not wait with it.
            if let Err(e) = pg.stop(CLEAN_STOP).await {
                tracing::warn!(error = %e, "postgres did not stop cleanly while fenced: stopping it immediately");
                if let Err(e) = pg.stop_immediately(stop_timeout).await {
                    tracing::warn!(error = %e, "cannot stop postgres while fenced: retrying");
                    return Some(RECHECK);
                }
            }
        }
        self.shared.lock().unwrap().fence.seen_stopped();
        Some(RECHECK)
    }
}

/// Seconds with one decimal, the precision the fence's figures need.
fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
