//! The proxy's own fence: how long it may go on routing without a successful check of the
//! store, and which proxyTimeout it announces to the sentinels.
//!
//! A sentinel that stops hearing from a proxy takes it as fenced once the proxyTimeout its
//! last info announced has passed (plus [`PROXY_FENCE_MARGIN`]), and then
//! may promote a new primary. So the timeout a proxy enforces must never exceed one that a
//! sentinel may still be counting on:
//! - a lower timeout in the spec is enforced at once, from the check that reads it: fencing
//!   sooner than announced is always safe;
//! - a higher one is announced at once, but the lower one stays enforced until every info
//!   that announced it has expired from the store.
//!
//! Instants are the caller's monotonic clock, as [`Duration`]s since an origin of its choice.

use std::time::Duration;

/// How long after a proxy's proxyTimeout the sentinel takes it as fenced. The proxy counts
/// its timeout from the start of the check whose info the sentinel saw after, so the margin
/// only covers the proxy's fence timer (it looks every 100 ms) and closing its connections.
/// It does not depend on sleepInterval: the sentinel wakes when the wait runs out.
pub const PROXY_FENCE_MARGIN: Duration = Duration::from_secs(1);

/// The timeout a proxy enforces before it has read any spec.
pub const DEFAULT_PROXY_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a proxy's info stays in the store after it is published: the timeout it
/// announces plus [`PROXY_FENCE_MARGIN`], rounded up to whole seconds
/// (stores count leases in seconds), and at least 3 s. By the store's clock, then, an
/// expired info means the same as a sentinel seeing the proxy silent past its timeout plus
/// the margin by its own; a sentinel waits for both.
pub fn info_ttl(timeout: Duration) -> Duration {
    let ttl = timeout + PROXY_FENCE_MARGIN;
    let whole = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    Duration::from_secs(whole.max(3))
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyFence {
    /// The timeouts announced by infos that may still be in the store: (timeout, when that
    /// info expires).
    announced: Vec<(Duration, Duration)>,
    /// The spec's timeout, as of the last check that read one.
    spec_timeout: Option<Duration>,
    /// When the proxy must fence itself; None before the first successful check.
    deadline: Option<Duration>,
}

impl ProxyFence {
    /// A check that began at `started` read `spec_timeout` from the cluster spec. Returns the
    /// timeout to announce in the info this check publishes. A lower enforced timeout
    /// applies at once, before the info announcing it can reach a sentinel.
    pub fn read_spec(&mut self, started: Duration, spec_timeout: Duration) -> Duration {
        self.spec_timeout = Some(spec_timeout);
        let enforced = self.enforced(started);
        if let Some(deadline) = &mut self.deadline {
            *deadline = (*deadline).min(started + enforced);
        }
        spec_timeout
    }

    /// An info announcing `timeout`, valid until `expires`, may be in the store: the proxy
    /// tried to publish it. Recorded whether or not the store confirmed the write, which
    /// may have happened even when the answer was lost.
    pub fn announced(&mut self, timeout: Duration, expires: Duration) {
        self.announced.push((timeout, expires));
    }

    /// A check that began at `started` succeeded (and published its info, when there was
    /// cluster data to acknowledge): the proxy may route until `started` plus the enforced
    /// timeout.
    pub fn renewed(&mut self, started: Duration) {
        self.announced.retain(|(_, expires)| *expires > started);
        self.deadline = Some(started + self.enforced(started));
    }

    /// The lowest of the spec's timeout and of every timeout announced by an info that has
    /// not expired at `now`.
    pub fn enforced(&self, now: Duration) -> Duration {
        self.announced
            .iter()
            .filter(|(_, expires)| *expires > now)
            .map(|(timeout, _)| *timeout)
            .chain(self.spec_timeout)
            .min()
            .unwrap_or(DEFAULT_PROXY_TIMEOUT)
    }

    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// Whether the proxy must be fenced at `now`: it has routed once and its last successful
    /// check is older than its enforced timeout.
    pub fn expired(&self, now: Duration) -> bool {
        self.deadline.is_some_and(|deadline| now >= deadline)
    }
}
