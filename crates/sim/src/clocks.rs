//! Each process's own clock, and the store's.
//!
//! A component measures every timeout on its monotonic clock: a sentinel the silence of a
//! keeper or a proxy and its leader lease, a proxy its fence, a keeper its store-loss fence.
//! The store measures the time to live of infos and of the leader lease on its own. All
//! start together; a clock jump fault moves one of them ahead for good (a monotonic clock
//! never goes back), so that what it measures across the jump lasts less than it says.

use crate::net::Node;
use crate::world::World;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Clocks {
    /// How far each process's clock has jumped ahead of true time.
    ahead: BTreeMap<Node, Duration>,
    /// How far the store's clock has jumped ahead.
    store_ahead: Duration,
}

impl Clocks {
    fn ahead(&self, node: Node) -> Duration {
        self.ahead.get(&node).copied().unwrap_or_default()
    }
}

impl World {
    /// What `node`'s clock reads now.
    pub(crate) fn clock(&self, node: Node) -> Duration {
        self.now + self.clocks.ahead(node)
    }

    /// What the store's clock reads now: the one its infos and lease expire by.
    pub(crate) fn store_clock(&self) -> Duration {
        self.now + self.clocks.store_ahead
    }

    /// When, in true time, `node`'s clock will read `instant` (now if it already does).
    pub(crate) fn when_clock_reads(&self, node: Node, instant: Duration) -> Duration {
        instant
            .saturating_sub(self.clocks.ahead(node))
            .max(self.now)
    }

    /// `node`'s clock jumps `by` ahead: its timers that now read as run out fire at once.
    pub(crate) fn jump_clock(&mut self, node: Node, by: Duration) {
        *self.clocks.ahead.entry(node).or_default() += by;
        match node {
            Node::Sentinel(s) => self.sentinel_clock_jumped(s),
            Node::Proxy(p) => self.schedule_fence_check(p),
            // Its store-loss watchdog looks every 200 ms.
            Node::Keeper(_) => {}
        }
    }

    pub(crate) fn jump_store_clock(&mut self, by: Duration) {
        self.clocks.store_ahead += by;
    }
}
