//! What a keeper's health endpoints answer (`/health`, `/primary`, `/replica`), for load
//! balancers and Kubernetes probes.
//!
//! `/primary` is the dangerous one: a load balancer that trusts it sends writes there. So it
//! answers yes only when the instance is writable *and* the cluster data names its db as the
//! one the proxies route to *and* the keeper's view is recent. A keeper that has not
//! published to the store for half of failInterval says no: the sentinel cannot have
//! declared it failed and elected another primary before a full failInterval after that
//! publish, which leaves the load balancer the other half to notice.

use crate::proxy::unreadable;
use std::time::Duration;
use stolon_cluster::{ClusterData, Db, KeeperUid, ValidSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// PostgreSQL accepts connections.
    Health,
    /// Writes may come here.
    Primary,
    /// Reads may come here: a standby of the primary, within `max_lag` bytes of it (the
    /// spec's maxStandbyLag when None).
    Replica { max_lag: Option<u64> },
}

/// What the keeper knows when it is asked.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// What the instance said just now: whether it is in recovery; None when it does not
    /// accept connections.
    pub in_recovery: Option<bool>,
    /// The cluster data last read, with its spec.
    pub view: Option<(&'a ClusterData, &'a ValidSpec)>,
    /// How long ago the keeper last published its state to the store; None: not yet.
    pub since_published: Option<Duration>,
    pub keeper: &'a KeeperUid,
    /// Only internal roles may connect: a synchronous primary waiting for its standbys.
    pub sync_gate: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub ok: bool,
    pub reason: String,
}

impl Answer {
    fn yes(reason: impl Into<String>) -> Answer {
        Answer {
            ok: true,
            reason: reason.into(),
        }
    }

    fn no(reason: impl Into<String>) -> Answer {
        Answer {
            ok: false,
            reason: reason.into(),
        }
    }
}

pub fn answer(check: Check, facts: &Facts) -> Answer {
    let Some(in_recovery) = facts.in_recovery else {
        return Answer::no("postgres does not accept connections");
    };
    match check {
        Check::Health => Answer::yes("postgres accepts connections"),
        Check::Primary if in_recovery => Answer::no("postgres is in recovery"),
        Check::Primary => match placement(facts) {
            Err(no) => no,
            Ok((db, master, _)) if master.uid != db.uid => {
                Answer::no(format!("the primary is db {}", master.uid))
            }
            Ok(_) if facts.sync_gate => {
                Answer::no("waiting for the synchronous standbys: only internal roles may connect")
            }
            Ok(_) => Answer::yes("the cluster's primary"),
        },
        Check::Replica { .. } if !in_recovery => Answer::no("postgres is not in recovery"),
        Check::Replica { max_lag } => match placement(facts) {
            Err(no) => no,
            Ok((db, master, spec)) => {
                let max_lag = max_lag.unwrap_or(u64::from(spec.max_standby_lag));
                match unreadable(master, db, max_lag) {
                    Some(why) => Answer::no(why),
                    None => Answer::yes(format!(
                        "a standby of db {} within {max_lag} bytes",
                        master.uid
                    )),
                }
            }
        },
    }
}

/// This keeper's db and the primary's, from a recent enough view.
fn placement<'a>(facts: &Facts<'a>) -> Result<(&'a Db, &'a Db, &'a ValidSpec), Answer> {
    let Some((cd, spec)) = facts.view else {
        return Err(Answer::no("no cluster data read yet"));
    };
    match facts.since_published {
        Some(age) if age <= spec.fail_interval / 2 => {}
        Some(age) => {
            return Err(Answer::no(format!(
                "last reached the store {:.1}s ago, over half of failInterval: the cluster may have moved on",
                age.as_secs_f64()
            )))
        }
        None => return Err(Answer::no("not reached the store yet")),
    }
    let Some(db) = cd.db_of_keeper(facts.keeper) else {
        return Err(Answer::no("no db is assigned to this keeper"));
    };
    let Some(master) = cd.proxied_db() else {
        return Err(Answer::no("the proxies route to no primary now"));
    };
    Ok((db, master, spec))
}
