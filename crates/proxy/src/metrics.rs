//! What the proxy's `/metrics` reports.

use crate::{Gate, Shared};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use stolon_daemon::metrics::Exposition;

/// What `/metrics` reports.
#[derive(Default)]
pub(crate) struct Counters {
    pub accepted: AtomicU64,
    /// Closed at once: no route (no primary, fenced, not enabled, no standby to read from).
    pub refused: AtomicU64,
    /// Piped to a server now.
    pub piped: AtomicI64,
    /// Waiting for a switchover to end now.
    pub held: AtomicI64,
    /// Sessions whose bytes the kernel moves.
    pub spliced: AtomicU64,
    pub fences: AtomicU64,
}

/// Counts one while alive.
pub(crate) struct Gauge<'a>(&'a AtomicI64);

impl<'a> Gauge<'a> {
    pub fn up(gauge: &'a AtomicI64) -> Gauge<'a> {
        gauge.fetch_add(1, Ordering::Relaxed);
        Gauge(gauge)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    pub(crate) fn render_metrics(&self) -> String {
        let c = &self.counters;
        let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed) as f64;
        let gauge = |gauge: &AtomicI64| gauge.load(Ordering::Relaxed) as f64;
        let gate = self.routing.borrow().gate;
        let listening = !self.listeners.lock().unwrap().is_empty();
        let readers = self.readers.lock().unwrap().len();
        let mut e = Exposition::new("proxy", &self.config.cluster_name);
        e.counter(
            "stolon_proxy_client_connections_total",
            "Client connections accepted.",
            count(&c.accepted),
        )
        .counter(
            "stolon_proxy_refused_connections_total",
            "Client connections closed at once for want of a route.",
            count(&c.refused),
        )
        .gauge(
            "stolon_proxy_piped_connections",
            "Client connections piped to a server now.",
            gauge(&c.piped),
        )
        .gauge(
            "stolon_proxy_held_connections",
            "Client connections waiting for a switchover to end.",
            gauge(&c.held),
        )
        .counter(
            "stolon_proxy_spliced_connections_total",
            "Client connections whose bytes the kernel moved (BPF sockmap).",
            count(&c.spliced),
        )
        .counter(
            "stolon_proxy_fences_total",
            "Times the proxy fenced itself for want of the store.",
            count(&c.fences),
        )
        .gauge(
            "stolon_proxy_listening",
            "1 while the proxy listens.",
            f64::from(u8::from(listening)),
        )
        .gauge(
            "stolon_proxy_routing",
            "1 while new connections go to a primary.",
            f64::from(u8::from(matches!(gate, Gate::Open(_)))),
        )
        .gauge(
            "stolon_proxy_read_only_targets",
            "Standbys the read-only endpoint uses now.",
            readers as f64,
        )
        .gauge(
            "stolon_proxy_tasks",
            "Tasks alive in the proxy: a few of its own, one per client connection.",
            (tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
                + self.relays.tasks()) as f64,
        );
        e.finish()
    }
}
