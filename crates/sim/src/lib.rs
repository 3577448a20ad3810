//! Deterministic simulation of a whole stolon-rs cluster.
//!
//! Every component runs its real decision code from `stolon-engine`: the sentinels
//! `sentinel::step`, the keepers `keeper::next_action`, the store-loss fence and the
//! `/primary` answer (`health::answer`), the proxies `proxy::route` and `ProxyFence`. What
//! is simulated is everything around it: the store (linearizable compare-and-swap,
//! expiring infos, the leader lease), PostgreSQL (a WAL of transactions, timelines,
//! streaming, synchronous commit, promotion, base backups), clients writing through the
//! proxies, the network, and the clocks. One seeded generator draws every delay and every
//! fault, and events run in virtual time, so a seed replays exactly.
//!
//! After every event the invariants are checked ([`invariants`]); a run ends with the faults
//! healed and a bound within which the cluster must have converged.

mod batch;
mod clients;
mod clocks;
mod faults;
pub mod invariants;
mod keeper;
mod net;
pub mod pg;
mod proxy;
pub mod rng;
mod sentinel;
pub mod store;
mod world;

pub use batch::{describe, minimize, run_seeds, Batch};
pub use world::{run, Config, Outcome, Violation};
