//! Deterministic simulation of a whole stolon-rs cluster.
//!
//! Every component runs the state machine its daemon runs, from `stolon-engine`: the
//! sentinels `sentinel::machine` (the planner inside), the keepers `keeper::machine` (the
//! reconciler, the store-loss fence, the failed-start backoff, the sync gate) and their
//! `/primary` answer (`health::answer`), the proxies `proxy::machine` (routing, the gate and
//! its sessions, the fence). What is simulated is only what lies outside the programs, and
//! the IO between: the store (linearizable compare-and-swap, expiring infos, the leader
//! lease and the election its client runs), PostgreSQL (a WAL of transactions, timelines,
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
