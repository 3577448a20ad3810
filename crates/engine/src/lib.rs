//! The decisions of stolon-rs, as pure functions over data.
//!
//! This crate owns *what* each daemon decides, never *how* it acts: the sentinel's planner
//! ([`sentinel::step`]), the keeper's reconciler ([`keeper::next_action`]) and its fence
//! without the store ([`store_loss::decide`]), and the proxy's routing ([`proxy::route`]).
//! No IO, no clock reads, no async, no randomness except an injected seed: the daemons
//! observe, call these, and act, and the tests drive them with plain values.

pub mod health;
pub mod ids;
pub mod keeper;
pub mod proxy;
pub mod sentinel;
pub mod store_loss;

use stolon_cluster::{ClusterData, ValidSpec};

/// The cluster data as a component read it from the store, with its spec validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    pub data: ClusterData,
    pub spec: ValidSpec,
}

/// One decision, with its reason, for the daemon to log as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub level: Level,
    pub message: &'static str,
    pub fields: Vec<(&'static str, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
}

impl Event {
    pub fn info(message: &'static str) -> Event {
        Event {
            level: Level::Info,
            message,
            fields: Vec::new(),
        }
    }

    pub fn warn(message: &'static str) -> Event {
        Event {
            level: Level::Warn,
            message,
            fields: Vec::new(),
        }
    }

    pub fn with(mut self, key: &'static str, value: impl ToString) -> Event {
        self.fields.push((key, value.to_string()));
        self
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message)?;
        for (k, v) in &self.fields {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}
