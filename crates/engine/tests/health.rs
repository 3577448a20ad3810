//! The keeper's health endpoints: `/primary` only for the writable instance of the db the
//! proxies route to, by the cluster data just read; `/replica` only for a standby the
//! read-only endpoint would use; `/health` for any instance that accepts connections.

mod common;

use common::{valid, CdBuilder};
use stolon_cluster::{ClusterData, DbRole, Generation, KeeperUid, ValidSpec};
use stolon_engine::health::{answer, Check, Facts};

/// db-1 on k1 is the primary at 1000, db-2 on k2 streams from it at 900 (failInterval 5s,
/// maxStandbyLag 1000).
fn cluster() -> CdBuilder {
    CdBuilder::new()
        .keeper("k1", true)
        .keeper("k2", true)
        .keeper("k3", true)
        .db("db-1", "k1", DbRole::Master, 1000)
        .db("db-2", "k2", DbRole::Standby, 900)
        .follow("db-2", "db-1")
        .master("db-1")
        .proxy(Some("db-1"), &["p1"])
}

struct Case {
    name: &'static str,
    check: Check,
    keeper: &'static str,
    /// The instance's answer: in recovery or not; None: no answer.
    in_recovery: Option<bool>,
    /// The cluster data the store returned; None: unreadable.
    cd: Option<ClusterData>,
    sync_gate: bool,
    fenced: bool,
    /// Whether the answer is yes, and a piece of its reason.
    want: (bool, &'static str),
}

fn case(name: &'static str, check: Check, keeper: &'static str, in_recovery: bool) -> Case {
    Case {
        name,
        check,
        keeper,
        in_recovery: Some(in_recovery),
        cd: Some(cluster().build()),
        sync_gate: false,
        fenced: false,
        want: (true, ""),
    }
}

fn check(cases: Vec<Case>) {
    let spec: ValidSpec = valid("{}");
    for c in cases {
        let keeper = KeeperUid::new(c.keeper);
        let got = answer(
            c.check,
            &Facts {
                in_recovery: c.in_recovery,
                view: c.cd.as_ref().map(|cd| (cd, &spec)),
                keeper: &keeper,
                sync_gate: c.sync_gate,
                fenced: c.fenced,
            },
        );
        assert_eq!(got.ok, c.want.0, "{}: {got:?}", c.name);
        assert!(got.reason.contains(c.want.1), "{}: {got:?}", c.name);
    }
}

const PRIMARY: Check = Check::Primary;
const REPLICA: Check = Check::Replica { max_lag: None };

#[test]
fn health_is_whether_postgres_answers() {
    check(vec![
        Case {
            want: (true, "accepts connections"),
            ..case("a primary", Check::Health, "k1", false)
        },
        Case {
            // Neither the store nor the role matters to a liveness probe.
            cd: None,
            want: (true, "accepts connections"),
            ..case(
                "a standby that never reached the store",
                Check::Health,
                "k3",
                true,
            )
        },
        Case {
            in_recovery: None,
            want: (false, "does not accept connections"),
            ..case("postgres down", Check::Health, "k1", false)
        },
    ]);
}

#[test]
fn primary_only_for_the_routed_writable_instance() {
    check(vec![
        Case {
            want: (true, "primary"),
            ..case("the routed primary", PRIMARY, "k1", false)
        },
        Case {
            in_recovery: None,
            want: (false, "does not accept connections"),
            ..case("postgres down", PRIMARY, "k1", false)
        },
        Case {
            want: (false, "in recovery"),
            ..case("a standby", PRIMARY, "k2", true)
        },
        Case {
            want: (false, "the primary is db db-1"),
            ..case(
                "an old primary not demoted yet, still writable",
                PRIMARY,
                "k2",
                false,
            )
        },
        Case {
            cd: Some(cluster().proxy(None, &["p1"]).build()),
            want: (false, "no primary"),
            ..case(
                "a failover in progress: the proxies route nowhere",
                PRIMARY,
                "k1",
                false,
            )
        },
        Case {
            want: (false, "no db"),
            ..case("a keeper without a db", PRIMARY, "k3", false)
        },
        Case {
            // Fenced because the store was unreachable; postgres not stopped yet, or started
            // again by a concurrent action, while the store answers this check.
            fenced: true,
            want: (false, "fenced"),
            ..case(
                "a primary fenced by its keeper, still writable",
                PRIMARY,
                "k1",
                false,
            )
        },
        Case {
            // Once stopped, every check says why.
            fenced: true,
            in_recovery: None,
            want: (false, "fenced"),
            ..case("a primary fenced and stopped", Check::Health, "k1", false)
        },
        Case {
            sync_gate: true,
            want: (false, "synchronous standbys"),
            ..case(
                "a synchronous primary refusing normal users",
                PRIMARY,
                "k1",
                false,
            )
        },
    ]);
}

/// Without the cluster data of this moment there is no telling whether the cluster has
/// moved on: no.
#[test]
fn primary_and_replica_fence_themselves_without_the_store() {
    check(vec![
        Case {
            cd: None,
            want: (false, "cannot read the cluster data"),
            ..case("a primary cut off from the store", PRIMARY, "k1", false)
        },
        Case {
            cd: None,
            want: (false, "cannot read the cluster data"),
            ..case("a standby cut off from the store", REPLICA, "k2", true)
        },
    ]);
}

#[test]
fn replica_only_for_a_standby_the_read_only_endpoint_would_use() {
    check(vec![
        Case {
            want: (true, "standby of db db-1 within 1000 bytes"),
            ..case("a streaming standby 100 bytes behind", REPLICA, "k2", true)
        },
        Case {
            check: Check::Replica { max_lag: Some(50) },
            want: (false, "too far behind"),
            ..case("behind more than ?lag=50", REPLICA, "k2", true)
        },
        Case {
            cd: Some(
                cluster()
                    .adjust_db("db-2", |db| db.status.healthy = false)
                    .build(),
            ),
            want: (false, "healthy"),
            ..case("reported unhealthy", REPLICA, "k2", true)
        },
        Case {
            cd: Some(
                cluster()
                    .adjust_db("db-2", |db| db.status.current_generation = Generation(9))
                    .build(),
            ),
            want: (false, "latest spec"),
            ..case("converging", REPLICA, "k2", true)
        },
        Case {
            want: (false, "not in recovery"),
            ..case("the primary", REPLICA, "k1", false)
        },
        Case {
            want: (false, "not a standby of the primary"),
            ..case(
                "the primary's keeper with postgres in recovery (being demoted)",
                REPLICA,
                "k1",
                true,
            )
        },
        Case {
            in_recovery: None,
            want: (false, "does not accept connections"),
            ..case("postgres down", REPLICA, "k2", true)
        },
        Case {
            cd: Some(cluster().proxy(None, &["p1"]).build()),
            want: (false, "no primary"),
            ..case("no primary to be a standby of", REPLICA, "k2", true)
        },
    ]);
}
