//! What a keeper's health endpoints answer (`/health`, `/primary`, `/replica`), for load
//! balancers and Kubernetes probes.
//!
//! `/primary` is the dangerous one: a load balancer that trusts it sends writes there. So it
//! answers yes only when the instance is writable *and* the cluster data, read from the store
//! for this check, names its db as the one the proxies route to. A view kept from earlier
//! will not do: the sentinel may have elected another primary since (a failed db, a
//! `failkeeper`) while this instance came back writable. Without the store there is no
//! answer but no, as the proxies fence themselves without it; nor from a keeper that fenced
//! its postgres, even while the store answers its check again.

use crate::proxy::unreadable;
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
    /// The cluster data read from the store for this check, with its spec; None when the
    /// store could not be read (or holds none).
    pub view: Option<(&'a ClusterData, &'a ValidSpec)>,
    pub keeper: &'a KeeperUid,
    /// Only internal roles may connect: a synchronous primary waiting for its standbys.
    pub sync_gate: bool,
    /// The keeper has fenced its postgres, having stored no info for too long
    /// ([`crate::store_loss`]); whatever still runs is about to be stopped.
    pub fenced: bool,
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

pub fn answer(check: Check, facts: &Facts<'_>) -> Answer {
    const FENCED: &str =
        "fenced: this keeper could not store its info for too long, the cluster may have moved on";
    let Some(in_recovery) = facts.in_recovery else {
        // Why it is down is what an operator looking at a stopped primary needs.
        return Answer::no(if facts.fenced {
            FENCED
        } else {
            "postgres does not accept connections"
        });
    };
    match check {
        Check::Health => Answer::yes("postgres accepts connections"),
        Check::Primary if in_recovery => Answer::no("postgres is in recovery"),
        Check::Primary if facts.fenced => Answer::no(FENCED),
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

/// This keeper's db and the primary's, from the cluster data just read.
fn placement<'a>(facts: &Facts<'a>) -> Result<(&'a Db, &'a Db, &'a ValidSpec), Answer> {
    let Some((cd, spec)) = facts.view else {
        return Err(Answer::no(
            "cannot read the cluster data from the store: the cluster may have moved on",
        ));
    };
    let Some(db) = cd.db_of_keeper(facts.keeper) else {
        return Err(Answer::no("no db is assigned to this keeper"));
    };
    let Some(master) = cd.proxied_db() else {
        return Err(Answer::no("the proxies route to no primary now"));
    };
    Ok((db, master, spec))
}
