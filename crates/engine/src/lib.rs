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

/// What every machine decides on: the cluster data as read, with its spec validated.
pub use stolon_cluster::ClusterView;
