//! Where a proxy sends its clients, its fence without the store, and its control loop.

pub mod fence;
pub mod machine;

use std::time::Duration;
use stolon_cluster::{ClusterData, Db, DbRole, ProxyUid};

/// The proxy's routing decision for one cluster data read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Pipe new connections to this address.
    To {
        db: String,
        address: String,
        port: u16,
    },
    /// Planned switchover: new connections wait for the next route; existing ones are
    /// closed after `grace`.
    Hold { grace: Duration },
    /// Close every connection and refuse new ones, for the reason given.
    Nowhere(NoRoute),
}

/// Why a proxy routes nowhere. Each prints as the proxy's log line has always read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoute {
    /// The sentinel names no primary for the proxies (a failover is under way).
    NoMasterDb,
    /// The primary named is not among the dbs.
    MasterDbMissing,
    /// This proxy is not listed as enabled: the sentinel may not wait for it.
    NotEnabled,
    NoMasterAddress,
}

impl std::fmt::Display for NoRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NoRoute::NoMasterDb => "no master db defined, closing connections to master",
            NoRoute::MasterDbMissing => "no db object available, closing connections to master",
            NoRoute::NotEnabled => {
                "not proxying to master address since we aren't in the enabled proxies list"
            }
            NoRoute::NoMasterAddress => {
                "master db has no known address, closing connections to master"
            }
        })
    }
}

/// What happens to a new client connection: piped to `A` (an address) when open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate<A> {
    /// Closed at once.
    Closed,
    /// Piped to this target.
    Open(A),
    /// Kept waiting for the next gate (planned switchover).
    Hold,
}

/// What becomes of the sessions a proxy has piped so far when its gate changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sessions {
    /// The same gate: they go on.
    Keep,
    /// They end now: the primary they talk to may no longer be the one.
    CloseNow,
    /// New connections are held for a switchover: the sessions have this long to finish.
    CloseAfter(Duration),
}

/// The sessions piped through `old` when the gate becomes `new`: any change ends them, at
/// once unless new connections are held for a switchover (`grace`).
pub fn sessions_on_gate_change<A: PartialEq>(
    old: &Gate<A>,
    new: &Gate<A>,
    grace: Duration,
) -> Sessions {
    if old == new {
        Sessions::Keep
    } else if matches!(new, Gate::Hold) {
        Sessions::CloseAfter(grace)
    } else {
        Sessions::CloseNow
    }
}

/// Routes only when the sentinel has named a primary *and* listed this proxy as enabled: a
/// proxy the sentinel does not know of could otherwise keep serving an old primary while
/// the sentinel, not waiting for it, promotes a new one.
pub fn route(cd: &ClusterData, me: &ProxyUid) -> Route {
    // Holding never hands a connection to anyone, so it needs no other condition.
    if let Some(hold) = &cd.proxy.spec.hold {
        return Route::Hold {
            grace: hold.grace.0,
        };
    }
    let Some(master) = &cd.proxy.spec.master_db_uid else {
        return Route::Nowhere(NoRoute::NoMasterDb);
    };
    let Some(db) = cd.dbs.get(master) else {
        return Route::Nowhere(NoRoute::MasterDbMissing);
    };
    if !cd.proxy.spec.enabled_proxies.contains(me) {
        return Route::Nowhere(NoRoute::NotEnabled);
    }
    if db.status.listen_address.is_empty() || db.status.port == 0 {
        return Route::Nowhere(NoRoute::NoMasterAddress);
    }
    Route::To {
        db: master.to_string(),
        address: db.status.listen_address.clone(),
        port: db.status.port,
    }
}

/// A server a connection may go to: the primary, or a standby for a read-only connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub db: String,
    pub address: String,
    pub port: u16,
}

/// Where the read-only endpoint sends new connections: every standby that streams from the
/// primary, has applied its spec, reported itself healthy, and was at most `max_lag` bytes
/// behind the primary at their last reports. With none and `fallback_to_primary`, the
/// primary. Nothing at all while this proxy may not route (not enabled, no primary, a
/// switchover holding): the same fencing as for writes, since a standby cut off from the
/// cluster may serve ever staler data.
pub fn read_only_targets(
    cd: &ClusterData,
    me: &ProxyUid,
    max_lag: u64,
    fallback_to_primary: bool,
) -> Vec<Backend> {
    let Route::To { db, address, port } = route(cd, me) else {
        return Vec::new();
    };
    let Some(master) = cd.proxied_db() else {
        return Vec::new();
    };
    let standbys: Vec<Backend> = cd
        .dbs
        .values()
        .filter(|s| {
            unreadable(master, s, max_lag).is_none()
                && !s.status.listen_address.is_empty()
                && s.status.port != 0
        })
        .map(|s| Backend {
            db: s.uid.to_string(),
            address: s.status.listen_address.clone(),
            port: s.status.port,
        })
        .collect();
    if standbys.is_empty() && fallback_to_primary {
        return vec![Backend { db, address, port }];
    }
    standbys
}

/// Why `standby` may not serve reads, or None when it may: it must stream from `master`,
/// have applied its spec, report itself healthy, be on the primary's timeline, and have been
/// at most `max_lag` bytes behind the primary at their last reports.
pub fn unreadable(master: &Db, standby: &Db, max_lag: u64) -> Option<&'static str> {
    let follows_master = standby.uid != master.uid
        && standby.spec.role == DbRole::Standby
        && standby
            .spec
            .follow_config
            .as_ref()
            .is_some_and(|f| f.followed_db() == Some(&master.uid));
    let behind = master
        .status
        .x_log_pos
        .0
        .saturating_sub(standby.status.x_log_pos.0);
    if !follows_master {
        Some("not a standby of the primary")
    } else if !standby.status.healthy || !standby.status.in_recovery {
        Some("not reported healthy and in recovery")
    } else if standby.status.current_generation != standby.generation {
        Some("has not applied its latest spec yet")
    } else if standby.status.timeline_id != master.status.timeline_id {
        Some("not on the primary's timeline")
    } else if behind > max_lag {
        Some("too far behind the primary")
    } else {
        None
    }
}
