//! The decisions of stolon-rs, as pure functions over data.
//!
//! This crate owns *what* each daemon decides, never *how* it acts: the sentinel's planner
//! ([`sentinel::step`]), the keeper's reconciler ([`keeper::next_action`]) and its fence
//! without the store ([`store_loss::decide`]), and the proxy's routing ([`proxy::route`]).
//! No IO, no clock reads, no async, no randomness except an injected seed: the daemons
//! observe, call these, and act, and the tests drive them with plain values.

mod event;
pub mod health;
pub mod ids;
pub mod keeper;
pub mod proxy;
pub mod sentinel;
pub mod store_loss;

pub use event::{DbProblem, Event, EventKind, Level};
use stolon_cluster::{ClusterData, ValidSpec};

/// The cluster data as a component read it from the store, with its spec validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    pub data: ClusterData,
    pub spec: ValidSpec,
}
