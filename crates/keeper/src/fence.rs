//! The keeper's own fence when it cannot reach the store (`--store-loss fence`): the
//! watchdog that carries out the machine's fence.
//!
//! A primary whose keeper cannot store its info may be replaced by the sentinel once
//! failInterval has passed; clients connected to it directly, not through a proxy, would
//! go on committing on the old primary meanwhile. So a watchdog task stops postgres when the
//! engine's fence ([`stolon_engine::store_loss`], inside the keeper's machine) says so, one
//! heartbeat before the sentinel could judge this keeper failed. It is a task of its own
//! because the keeper's loop may be stuck in a store request or a long action just then.

use crate::Machine;
use std::time::Duration;
use stolon_engine::store_loss::Enforce;
use stolon_pg::ctl::PgCtl;
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
/// actions, begun before the fence, may start it again. Also how often the watchdog looks
/// when nothing is due: the machine learns of reads and publishes from the loop.
const RECHECK: Duration = Duration::from_millis(200);
/// How long a fenced postgres has to finish its fast shutdown before it is stopped
/// immediately.
const CLEAN_STOP: Duration = Duration::from_secs(5);
/// `pg_ctl status` answers at once unless the machine is overloaded.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// The watchdog: fences postgres when it falls due, and keeps it stopped until a publish
/// lifts the fence.
pub(crate) async fn watch(machine: &Machine, pg: &PgCtl, shutdown: &CancellationToken) {
    loop {
        let wait = enforce(machine, pg).await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Fences when due and stops postgres while fenced; returns when to look again.
async fn enforce(machine: &Machine, pg: &PgCtl) -> Duration {
    let (stop_timeout, seen_stopped) = {
        let now = machine.now();
        let mut machine = machine.lock();
        match machine.enforce_fence(now) {
            Enforce::Idle => return RECHECK,
            Enforce::LookAgainIn(left) => return left.min(RECHECK),
            Enforce::Stop {
                fenced_now,
                seen_stopped,
            } => {
                if let (Some(silent), Some(timing)) = (fenced_now, machine.fence_timing()) {
                    tracing::warn!(
                        "store unreachable: fencing postgres, no keeper info stored for {} (limit {} = failInterval {} - heartbeat {})",
                        secs(silent),
                        secs(timing.limit()),
                        secs(timing.fail_interval),
                        secs(timing.heartbeat),
                    );
                }
                (machine.stop_timeout(), seen_stopped)
            }
        }
    };
    // Unknown counts as running: stopping a stopped postgres is harmless. A publish may
    // have lifted the fence meanwhile, and the loop started postgres again.
    if !matches!(pg.is_running(STATUS_TIMEOUT).await, Ok(false)) && machine.lock().fenced() {
        if seen_stopped {
            tracing::warn!("postgres runs again while fenced: stopping it");
        }
        // The fast shutdown ends every session at once: no commit is acknowledged after it
        // begins. Its checkpoint may then wait on walsenders whose standbys the partition
        // cut off, and the keeper must not wait with it.
        if let Err(e) = pg.stop(CLEAN_STOP).await {
            tracing::warn!(error = %e, "postgres did not stop cleanly while fenced: stopping it immediately");
            if let Err(e) = pg.stop_immediately(stop_timeout).await {
                tracing::warn!(error = %e, "cannot stop postgres while fenced: retrying");
                return RECHECK;
            }
        }
    }
    machine.lock().fence_saw_stopped();
    RECHECK
}

/// Seconds with one decimal, the precision the fence's figures need.
fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
