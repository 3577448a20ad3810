//! The proxy's routing: clients go to the primary only when the sentinel named it, it has a
//! known address, and this proxy is listed as enabled.

mod common;
#[path = "proxy/machine.rs"]
mod machine;

use common::CdBuilder;
use stolon_cluster::{ClusterData, DbRole, DbUid, FollowConfig, Generation, ProxyUid, TimelineId};
use stolon_engine::proxy::{route, NoRoute, Route};

fn base() -> CdBuilder {
    CdBuilder::new()
        .keeper("k1", true)
        .keeper("k2", true)
        .db("db-1", "k1", DbRole::Master, 100)
        .db("db-2", "k2", DbRole::Standby, 100)
        .follow("db-2", "db-1")
        .master("db-1")
}

fn to_db1() -> Route {
    Route::To {
        db: "db-1".into(),
        address: "k1.example".into(),
        port: 5432,
    }
}

struct Case {
    name: &'static str,
    cd: ClusterData,
    me: &'static str,
    want: Route,
}

fn check(case: Case) {
    let got = route(&case.cd, &ProxyUid::new(case.me));
    assert_eq!(got, case.want, "{}", case.name);
}

#[test]
fn route_table() {
    let cases = vec![
        Case {
            name: "named master with an address, proxy enabled",
            cd: base().proxy(Some("db-1"), &["p1", "p2"]).build(),
            me: "p2",
            want: to_db1(),
        },
        Case {
            name: "no master named (failover in progress)",
            cd: base().proxy(None, &["p1"]).build(),
            me: "p1",
            want: Route::Nowhere(NoRoute::NoMasterDb),
        },
        Case {
            name: "named master db does not exist",
            cd: base().proxy(Some("db-gone"), &["p1"]).build(),
            me: "p1",
            want: Route::Nowhere(NoRoute::MasterDbMissing),
        },
        Case {
            name: "this proxy is not enabled",
            cd: base().proxy(Some("db-1"), &["p1"]).build(),
            me: "p9",
            want: Route::Nowhere(NoRoute::NotEnabled),
        },
        Case {
            name: "no proxy enabled at all",
            cd: base().proxy(Some("db-1"), &[]).build(),
            me: "p1",
            want: Route::Nowhere(NoRoute::NotEnabled),
        },
        Case {
            name: "master without a listen address",
            cd: base()
                .adjust_db("db-1", |db| db.status.listen_address.clear())
                .proxy(Some("db-1"), &["p1"])
                .build(),
            me: "p1",
            want: Route::Nowhere(NoRoute::NoMasterAddress),
        },
        Case {
            name: "master without a port",
            cd: base()
                .adjust_db("db-1", |db| db.status.port = 0)
                .proxy(Some("db-1"), &["p1"])
                .build(),
            me: "p1",
            want: Route::Nowhere(NoRoute::NoMasterAddress),
        },
        Case {
            name: "routes to the db the proxy spec names, not to cluster.status.master",
            cd: base().master("db-2").proxy(Some("db-1"), &["p1"]).build(),
            me: "p1",
            want: to_db1(),
        },
    ];
    for case in cases {
        check(case);
    }
}

/// A stored document, in its wire form, routes the same way.
#[test]
fn routes_from_a_stored_cluster_data_document() {
    let text = include_str!("../testdata/cluster_data_normal.json");
    let (cd, _spec) = ClusterData::decode(text.as_bytes()).expect("fixture decodes");
    assert_eq!(
        route(&cd, &ProxyUid::new("proxy-a")),
        Route::To {
            db: "3f2a9c01".into(),
            address: "10.0.0.1".into(),
            port: 5432,
        }
    );
    assert!(matches!(
        route(&cd, &ProxyUid::new("proxy-z")),
        Route::Nowhere(_)
    ));
    assert_eq!(
        cd.cluster.status.master.as_ref(),
        Some(&DbUid::new("3f2a9c01"))
    );
}

/// A primary at 1000 with three standbys that follow it: db-2 at 1000, db-3 at 900, db-4
/// at 400.
fn readers() -> CdBuilder {
    CdBuilder::new()
        .keeper("k1", true)
        .keeper("k2", true)
        .keeper("k3", true)
        .keeper("k4", true)
        .db("db-1", "k1", DbRole::Master, 1000)
        .db("db-2", "k2", DbRole::Standby, 1000)
        .db("db-3", "k3", DbRole::Standby, 900)
        .db("db-4", "k4", DbRole::Standby, 400)
        .follow("db-2", "db-1")
        .follow("db-3", "db-1")
        .follow("db-4", "db-1")
        .master("db-1")
        .proxy(Some("db-1"), &["p1"])
}

struct ReadCase {
    name: &'static str,
    cd: ClusterData,
    max_lag: u64,
    fallback: bool,
    want: &'static [&'static str],
}

#[test]
fn read_only_targets_table() {
    use stolon_engine::proxy::read_only_targets;
    let cases = vec![
        ReadCase {
            name: "every standby within the lag bound, never the primary",
            cd: readers().build(),
            max_lag: 600,
            fallback: false,
            want: &["db-2", "db-3", "db-4"],
        },
        ReadCase {
            name: "a standby too far behind is left out",
            cd: readers().build(),
            max_lag: 100,
            fallback: false,
            want: &["db-2", "db-3"],
        },
        ReadCase {
            name: "unhealthy, converging, or following another db: left out",
            cd: readers()
                .adjust_db("db-2", |db| db.status.healthy = false)
                .adjust_db("db-3", |db| db.status.current_generation = Generation(2))
                .adjust_db("db-4", |db| {
                    db.spec.follow_config = Some(FollowConfig::db(&DbUid::new("db-3")))
                })
                .build(),
            max_lag: 1000,
            fallback: false,
            want: &[],
        },
        ReadCase {
            name: "a standby on another timeline is left out",
            cd: readers()
                .adjust_db("db-2", |db| db.status.timeline_id = TimelineId(2))
                .build(),
            max_lag: 1000,
            fallback: false,
            want: &["db-3", "db-4"],
        },
        ReadCase {
            name: "none left: the primary only when asked to fall back",
            cd: readers()
                .adjust_db("db-2", |db| db.status.healthy = false)
                .build(),
            max_lag: 50,
            fallback: true,
            want: &["db-1"],
        },
        ReadCase {
            name: "no route for writes (a failover, or not enabled): no reads either",
            cd: readers().proxy(None, &["p1"]).build(),
            max_lag: 1000,
            fallback: true,
            want: &[],
        },
        ReadCase {
            name: "not an enabled proxy: no reads",
            cd: readers().proxy(Some("db-1"), &["p2"]).build(),
            max_lag: 1000,
            fallback: true,
            want: &[],
        },
    ];
    for case in cases {
        let got: Vec<String> =
            read_only_targets(&case.cd, &ProxyUid::new("p1"), case.max_lag, case.fallback)
                .into_iter()
                .map(|t| t.db)
                .collect();
        assert_eq!(got, case.want, "{}", case.name);
    }
}
