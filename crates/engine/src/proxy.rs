//! Where a proxy sends its clients.

use std::time::Duration;
use stolon_cluster::{ClusterData, ProxyUid};

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
    Nowhere(&'static str),
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
        return Route::Nowhere("no master db defined, closing connections to master");
    };
    let Some(db) = cd.dbs.get(master) else {
        return Route::Nowhere("no db object available, closing connections to master");
    };
    if !cd.proxy.spec.enabled_proxies.contains(me) {
        return Route::Nowhere(
            "not proxying to master address since we aren't in the enabled proxies list",
        );
    }
    if db.status.listen_address.is_empty() || db.status.port == 0 {
        return Route::Nowhere("master db has no known address, closing connections to master");
    }
    Route::To {
        db: master.to_string(),
        address: db.status.listen_address.clone(),
        port: db.status.port,
    }
}
