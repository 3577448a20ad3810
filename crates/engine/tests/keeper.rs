//! The keeper's reconciler: one table of situations and the single action each one calls for,
//! plus sweeps over the situations where a destructive action must never be chosen.

mod common;
#[path = "keeper/machine.rs"]
mod machine;

use common::CdBuilder;
use stolon_cluster::{ClusterData, Db, DbRole, DbUid, Generation, InitMode, KeeperUid};
use stolon_engine::keeper::{
    self, followed_endpoint, next_action, slot_name, sync_gate_lifted, Action, Endpoint, Instance,
    LocalDb, Refusal, StopReason, WaitReason,
};

const ME: &str = "k1";
const BOOT: &str = "boot-k1";

/// k1 holds db-1, k2 holds db-2; `my_role` is db-1's role, the other db has the other one.
fn cluster(my_role: DbRole, init_mode: InitMode) -> ClusterData {
    let (mine, other) = match my_role {
        DbRole::Master => (DbRole::Master, DbRole::Standby),
        DbRole::Standby => (DbRole::Standby, DbRole::Master),
    };
    let b = CdBuilder::new()
        .keeper("k1", true)
        .keeper("k2", true)
        .db("db-1", "k1", mine, 100)
        .db("db-2", "k2", other, 100)
        .adjust_db("db-1", |db| db.spec.init_mode = init_mode);
    match my_role {
        DbRole::Master => b.follow("db-2", "db-1").master("db-1"),
        DbRole::Standby => b.follow("db-1", "db-2").master("db-2"),
    }
    .build()
}

fn standby(init_mode: InitMode) -> ClusterData {
    cluster(DbRole::Standby, init_mode)
}

fn master() -> ClusterData {
    cluster(DbRole::Master, InitMode::None)
}

/// db-1's generation in [`cluster`].
const GEN: Generation = Generation(3);

fn upstream() -> Endpoint {
    Endpoint {
        host: "k2.example".into(),
        port: 5432,
    }
}

fn local(uid: &str, generation: Generation) -> LocalDb {
    LocalDb {
        uid: Some(DbUid::new(uid)),
        generation,
        initializing: false,
        system_id: None,
    }
}

fn applied() -> LocalDb {
    local("db-1", GEN)
}

fn empty_dir() -> Instance {
    Instance::default()
}

fn running_standby(following: Option<Endpoint>) -> Instance {
    Instance {
        initialized: true,
        running: true,
        standby_signal: true,
        in_recovery: Some(true),
        following,
        config_stale: false,
        system_id: None,
        slots: None,
        pending_restart: false,
    }
}

fn stopped_standby() -> Instance {
    Instance {
        running: false,
        in_recovery: None,
        ..running_standby(Some(upstream()))
    }
}

fn running_primary(slots: &[&str]) -> Instance {
    Instance {
        initialized: true,
        running: true,
        standby_signal: false,
        in_recovery: Some(false),
        following: None,
        config_stale: false,
        system_id: None,
        slots: Some(slots.iter().map(|s| s.to_string()).collect()),
        pending_restart: false,
    }
}

fn stopped_primary() -> Instance {
    Instance {
        running: false,
        in_recovery: None,
        slots: None,
        ..running_primary(&[])
    }
}

enum Expect {
    Is(Action),
    /// Stop when postgres runs, Wait otherwise, for this reason.
    Refuses(Refusal),
}

struct Case {
    name: &'static str,
    cd: Option<ClusterData>,
    boot: &'static str,
    local: LocalDb,
    pg: Instance,
    want: Expect,
}

fn check(case: Case) {
    let got = next_action(
        case.cd.as_ref(),
        &KeeperUid::new(ME),
        case.boot,
        &case.local,
        &case.pg,
    );
    match case.want {
        Expect::Is(want) => assert_eq!(got, want, "{}", case.name),
        Expect::Refuses(want) => {
            let want = if case.pg.running {
                Action::Stop(StopReason::Refused(want))
            } else {
                Action::Wait(WaitReason::Refused(want))
            };
            assert_eq!(got, want, "{}", case.name);
        }
    }
}

#[test]
fn next_action_table() {
    let without_me = {
        let mut cd = standby(InitMode::None);
        cd.keepers.remove(&KeeperUid::new(ME));
        cd
    };
    let unassigned = {
        let mut cd = standby(InitMode::None);
        cd.dbs.remove(&DbUid::new("db-1"));
        cd
    };
    let upstream_unknown = {
        let mut cd = standby(InitMode::Resync);
        cd.dbs
            .get_mut(&DbUid::new("db-2"))
            .unwrap()
            .status
            .listen_address = String::new();
        cd
    };
    let master_with_followers = {
        let mut cd = master();
        cd.dbs.get_mut(&DbUid::new("db-1")).unwrap().spec.followers =
            vec![DbUid::new("db-2"), DbUid::new("db-3")];
        cd
    };
    let cases = vec![
        Case {
            name: "no cluster data",
            cd: None,
            boot: BOOT,
            local: applied(),
            pg: running_primary(&[]),
            want: Expect::Is(Action::Wait(WaitReason::NoClusterData)),
        },
        Case {
            name: "our keeper is not in the cluster data yet",
            cd: Some(without_me),
            boot: BOOT,
            local: applied(),
            pg: stopped_standby(),
            want: Expect::Is(Action::Wait(WaitReason::NoKeeperData)),
        },
        Case {
            name: "boot uuid mismatch, running",
            cd: Some(standby(InitMode::None)),
            boot: "boot-other",
            local: applied(),
            pg: running_standby(Some(upstream())),
            want: Expect::Refuses(Refusal::BootUidChanged),
        },
        Case {
            name: "boot uuid mismatch, stopped",
            cd: Some(standby(InitMode::None)),
            boot: "boot-other",
            local: applied(),
            pg: stopped_standby(),
            want: Expect::Refuses(Refusal::BootUidChanged),
        },
        Case {
            name: "no db assigned to a running old primary: stop it",
            cd: Some(unassigned.clone()),
            boot: BOOT,
            local: applied(),
            pg: running_primary(&["stolon_db-2"]),
            want: Expect::Is(Action::Stop(StopReason::Refused(Refusal::NoDbAssigned))),
        },
        Case {
            name: "no db assigned, stopped",
            cd: Some(unassigned),
            boot: BOOT,
            local: applied(),
            pg: stopped_primary(),
            want: Expect::Is(Action::Wait(WaitReason::Refused(Refusal::NoDbAssigned))),
        },
        Case {
            name: "new db with init mode new",
            cd: Some(cluster(DbRole::Master, InitMode::New)),
            boot: BOOT,
            local: LocalDb::default(),
            pg: empty_dir(),
            want: Expect::Is(Action::InitNew {
                db: DbUid::new("db-1"),
            }),
        },
        Case {
            name: "new db with init mode pitr: restored and recovered",
            cd: Some(cluster(DbRole::Master, InitMode::Pitr)),
            boot: BOOT,
            local: LocalDb::default(),
            pg: empty_dir(),
            want: Expect::Is(Action::Restore {
                db: DbUid::new("db-1"),
            }),
        },
        Case {
            name: "a restore that stopped midway is redone",
            cd: Some(cluster(DbRole::Master, InitMode::Pitr)),
            boot: BOOT,
            local: LocalDb {
                initializing: true,
                ..local("db-1", Generation::NONE)
            },
            pg: stopped_primary(),
            want: Expect::Is(Action::Restore {
                db: DbUid::new("db-1"),
            }),
        },
        Case {
            name: "half-made init of the same db is redone",
            cd: Some(cluster(DbRole::Master, InitMode::New)),
            boot: BOOT,
            local: LocalDb {
                initializing: true,
                ..local("db-1", Generation::NONE)
            },
            pg: empty_dir(),
            want: Expect::Is(Action::InitNew {
                db: DbUid::new("db-1"),
            }),
        },
        Case {
            name: "resync from a known upstream, through our slot",
            cd: Some(standby(InitMode::Resync)),
            boot: BOOT,
            local: local("db-old", Generation(9)),
            pg: stopped_primary(),
            want: Expect::Is(Action::Resync {
                db: DbUid::new("db-1"),
                from: upstream(),
                slot: "stolon_db-1".into(),
                rewind: false,
            }),
        },
        Case {
            name: "resync waits for the upstream's address",
            cd: Some(upstream_unknown.clone()),
            boot: BOOT,
            local: local("db-old", Generation(9)),
            pg: stopped_primary(),
            want: Expect::Refuses(Refusal::NoUpstreamAddress),
        },
        Case {
            name: "resync waits for the upstream's address, stopping a running instance",
            cd: Some(upstream_unknown),
            boot: BOOT,
            local: local("db-old", Generation(9)),
            pg: running_primary(&[]),
            want: Expect::Refuses(Refusal::NoUpstreamAddress),
        },
        Case {
            name: "another db in our directory and no init mode: refuse",
            cd: Some(standby(InitMode::None)),
            boot: BOOT,
            local: local("db-old", GEN),
            pg: running_standby(Some(upstream())),
            want: Expect::Refuses(Refusal::NotOurDb),
        },
        Case {
            name: "state says initialised, directory is empty: refuse",
            cd: Some(standby(InitMode::Resync)),
            boot: BOOT,
            local: applied(),
            pg: empty_dir(),
            want: Expect::Refuses(Refusal::DataDirectoryLost),
        },
        Case {
            name: "master role on a running standby: promote",
            cd: Some(master()),
            boot: BOOT,
            local: local("db-1", Generation(2)),
            pg: running_standby(Some(upstream())),
            want: Expect::Is(Action::Promote),
        },
        Case {
            name: "master role, stopped primary: start it without upstream",
            cd: Some(master()),
            boot: BOOT,
            local: applied(),
            pg: stopped_primary(),
            want: Expect::Is(Action::Start { follow: None }),
        },
        Case {
            name: "master role, postgres not answering",
            cd: Some(master()),
            boot: BOOT,
            local: applied(),
            pg: Instance {
                in_recovery: None,
                ..running_primary(&[])
            },
            want: Expect::Is(Action::Wait(WaitReason::NotAnswering)),
        },
        Case {
            name: "standby role on a running local primary",
            cd: Some(standby(InitMode::None)),
            boot: BOOT,
            local: applied(),
            pg: running_primary(&[]),
            want: Expect::Is(Action::Wait(WaitReason::MasterToStandby)),
        },
        Case {
            name: "standby role on a stopped local primary",
            cd: Some(standby(InitMode::None)),
            boot: BOOT,
            local: applied(),
            pg: stopped_primary(),
            want: Expect::Is(Action::Wait(WaitReason::MasterToStandby)),
        },
        Case {
            name: "standby role, stopped standby: start following the upstream",
            cd: Some(standby(InitMode::None)),
            boot: BOOT,
            local: applied(),
            pg: stopped_standby(),
            want: Expect::Is(Action::Start {
                follow: Some(upstream()),
            }),
        },
        Case {
            name: "standby following the wrong upstream",
            cd: Some(standby(InitMode::None)),
            boot: BOOT,
            local: applied(),
            pg: running_standby(Some(Endpoint {
                host: "old.example".into(),
                port: 5432,
            })),
            want: Expect::Is(Action::Reconfigure),
        },
        Case {
            name: "slots: create the followers', drop the others",
            cd: Some(master_with_followers),
            boot: BOOT,
            local: applied(),
            pg: running_primary(&["stolon_db-2", "stolon_gone"]),
            want: Expect::Is(Action::SyncSlots {
                create: vec!["stolon_db-3".into()],
                drop: vec!["stolon_gone".into()],
            }),
        },
        Case {
            name: "master converged on an older generation: mark applied",
            cd: Some(master()),
            boot: BOOT,
            local: local("db-1", Generation(2)),
            pg: running_primary(&["stolon_db-2"]),
            want: Expect::Is(Action::MarkApplied(GEN)),
        },
        Case {
            name: "master converged and recorded: idle",
            cd: Some(master()),
            boot: BOOT,
            local: applied(),
            pg: running_primary(&["stolon_db-2"]),
            want: Expect::Is(Action::Idle),
        },
        Case {
            name: "standby converged on an older generation: mark applied",
            cd: Some(standby(InitMode::None)),
            boot: BOOT,
            local: local("db-1", Generation(1)),
            pg: running_standby(Some(upstream())),
            want: Expect::Is(Action::MarkApplied(GEN)),
        },
        Case {
            name: "standby converged and recorded: idle",
            cd: Some(standby(InitMode::None)),
            boot: BOOT,
            local: applied(),
            pg: running_standby(Some(upstream())),
            want: Expect::Is(Action::Idle),
        },
    ];
    for case in cases {
        check(case);
    }
}

#[test]
fn slot_names_carry_the_stolon_prefix() {
    assert_eq!(slot_name(&DbUid::new("0a1b2c3d")), "stolon_0a1b2c3d");
}

fn destructive(action: &Action) -> bool {
    matches!(
        action,
        Action::InitNew { .. } | Action::Resync { .. } | Action::Restore { .. }
    )
}

fn all_instances() -> Vec<Instance> {
    vec![
        empty_dir(),
        running_standby(Some(upstream())),
        stopped_standby(),
        running_primary(&["stolon_db-2"]),
        stopped_primary(),
    ]
}

/// A db uid in the cluster data that is not the one in our directory, without an init mode:
/// whatever the role and the instance, the keeper never wipes its data.
#[test]
fn a_foreign_db_without_init_mode_is_never_wiped() {
    let locals = [
        LocalDb::default(),
        local("db-old", GEN),
        LocalDb {
            initializing: true,
            ..applied()
        },
    ];
    for role in [DbRole::Master, DbRole::Standby] {
        let cd = cluster(role, InitMode::None);
        for local in &locals {
            for pg in all_instances() {
                let got = next_action(Some(&cd), &KeeperUid::new(ME), BOOT, local, &pg);
                assert!(!destructive(&got), "{role:?} {local:?} {pg:?}: {got:?}");
                let refused = if pg.running {
                    matches!(got, Action::Stop(_))
                } else {
                    matches!(got, Action::Wait(_))
                };
                assert!(refused, "{role:?} {local:?} {pg:?}: {got:?}");
            }
        }
    }
}

/// Our state file names the assigned db but the data directory is not initialised: whatever
/// the init mode asks, the keeper never initialises it again by itself.
#[test]
fn a_lost_data_directory_of_our_own_db_is_never_reinitialised() {
    for role in [DbRole::Master, DbRole::Standby] {
        for init_mode in [InitMode::None, InitMode::New, InitMode::Resync] {
            let cd = cluster(role, init_mode);
            for running in [false, true] {
                let pg = Instance {
                    running,
                    ..empty_dir()
                };
                let got = next_action(Some(&cd), &KeeperUid::new(ME), BOOT, &applied(), &pg);
                assert!(
                    !destructive(&got),
                    "{role:?} {init_mode:?} {running}: {got:?}"
                );
                assert!(
                    matches!(got, Action::Stop(_) | Action::Wait(_)),
                    "{role:?} {init_mode:?} {running}: {got:?}"
                );
            }
        }
    }
}

/// A running instance without `standby.signal` is a primary even while it does not answer:
/// with a standby role the keeper must not repoint it nor record the standby spec as applied.
#[test]
fn a_running_primary_that_does_not_answer_is_not_taken_for_a_standby() {
    let pg = Instance {
        in_recovery: None,
        ..running_primary(&[])
    };
    for local in [local("db-1", Generation(1)), applied()] {
        let got = next_action(
            Some(&standby(InitMode::None)),
            &KeeperUid::new(ME),
            BOOT,
            &local,
            &pg,
        );
        assert!(
            matches!(got, Action::Wait(_) | Action::Stop(_)),
            "{local:?}: {got:?}"
        );
    }
}

/// A data directory that holds a PostgreSQL cluster but no record of a db this keeper made
/// (someone else's data, or a keeper state file that was lost) is never wiped, whatever
/// init mode the cluster data asks for.
#[test]
fn an_initialised_data_directory_without_our_record_is_never_wiped() {
    for role in [DbRole::Master, DbRole::Standby] {
        for init_mode in [InitMode::New, InitMode::Resync, InitMode::Pitr] {
            let cd = cluster(role, init_mode);
            for running in [false, true] {
                let pg = Instance {
                    initialized: true,
                    running,
                    ..Instance::default()
                };
                let got = next_action(
                    Some(&cd),
                    &KeeperUid::new(ME),
                    BOOT,
                    &LocalDb::default(),
                    &pg,
                );
                assert!(
                    !destructive(&got),
                    "{role:?} {init_mode:?} running={running}: {got:?}"
                );
                assert!(
                    matches!(
                        got,
                        Action::Wait(WaitReason::Refused(Refusal::ForeignData))
                            | Action::Stop(StopReason::Refused(Refusal::ForeignData))
                    ),
                    "{role:?} {init_mode:?} running={running}: {got:?}"
                );
            }
        }
    }
}

const SYSTEM: &str = "7000000000000000001";

fn with_system_id(pg: Instance, id: Option<&str>) -> Instance {
    Instance {
        system_id: id.map(String::from),
        ..pg
    }
}

fn recorded(local: LocalDb, id: Option<&str>) -> LocalDb {
    LocalDb {
        system_id: id.map(String::from),
        ..local
    }
}

/// db-1 is a standby to resync from db-2, with usePgrewind as given.
fn resync(use_pgrewind: bool) -> ClusterData {
    let mut cd = standby(InitMode::Resync);
    cd.dbs
        .get_mut(&DbUid::new("db-1"))
        .unwrap()
        .spec
        .use_pgrewind = use_pgrewind;
    cd
}

fn resync_action(rewind: bool) -> Expect {
    Expect::Is(Action::Resync {
        db: DbUid::new("db-1"),
        from: upstream(),
        slot: "stolon_db-1".into(),
        rewind,
    })
}

#[test]
fn rewind_table() {
    let upstream_system_unknown = {
        let mut cd = resync(true);
        cd.dbs
            .get_mut(&DbUid::new("db-2"))
            .unwrap()
            .status
            .system_id = String::new();
        cd
    };
    let old_primary = || with_system_id(stopped_primary(), Some(SYSTEM));
    let cases = vec![
        Case {
            name: "usePgrewind, same system, initialised, not half made: rewind",
            cd: Some(resync(true)),
            boot: BOOT,
            local: local("db-old", Generation(9)),
            pg: old_primary(),
            want: resync_action(true),
        },
        Case {
            name: "the same, with the system id recorded and matching: rewind",
            cd: Some(resync(true)),
            boot: BOOT,
            local: recorded(local("db-old", Generation(9)), Some(SYSTEM)),
            pg: old_primary(),
            want: resync_action(true),
        },
        Case {
            name: "a running old primary is rewound too (the daemon stops it first)",
            cd: Some(resync(true)),
            boot: BOOT,
            local: local("db-old", Generation(9)),
            pg: with_system_id(running_primary(&[]), Some(SYSTEM)),
            want: resync_action(true),
        },
        Case {
            name: "usePgrewind off: base backup",
            cd: Some(resync(false)),
            boot: BOOT,
            local: local("db-old", Generation(9)),
            pg: old_primary(),
            want: resync_action(false),
        },
        Case {
            name: "data directory not initialised: base backup",
            cd: Some(resync(true)),
            boot: BOOT,
            local: local("db-old", Generation(9)),
            pg: with_system_id(empty_dir(), Some(SYSTEM)),
            want: resync_action(false),
        },
        Case {
            name: "a half-made resync is redone from scratch",
            cd: Some(resync(true)),
            boot: BOOT,
            local: LocalDb {
                initializing: true,
                ..local("db-1", Generation::NONE)
            },
            pg: old_primary(),
            want: resync_action(false),
        },
        Case {
            name: "another system: base backup",
            cd: Some(resync(true)),
            boot: BOOT,
            local: local("db-old", Generation(9)),
            pg: with_system_id(stopped_primary(), Some("7000000000000000999")),
            want: resync_action(false),
        },
        Case {
            name: "our system id unknown: base backup",
            cd: Some(resync(true)),
            boot: BOOT,
            local: local("db-old", Generation(9)),
            pg: with_system_id(stopped_primary(), None),
            want: resync_action(false),
        },
        Case {
            name: "the upstream's system id unknown: base backup",
            cd: Some(upstream_system_unknown),
            boot: BOOT,
            local: local("db-old", Generation(9)),
            pg: old_primary(),
            want: resync_action(false),
        },
    ];
    for case in cases {
        check(case);
    }
}

#[test]
fn system_id_mismatch_table() {
    const OTHER: &str = "7000000000000000999";
    const REFUSE: Refusal = Refusal::SystemIdChanged;
    let cases = vec![
        Case {
            name: "standby, running, another system in the directory: stop",
            cd: Some(standby(InitMode::None)),
            boot: BOOT,
            local: recorded(applied(), Some(SYSTEM)),
            pg: with_system_id(running_standby(Some(upstream())), Some(OTHER)),
            want: Expect::Refuses(REFUSE),
        },
        Case {
            name: "standby, stopped, another system in the directory: wait",
            cd: Some(standby(InitMode::None)),
            boot: BOOT,
            local: recorded(applied(), Some(SYSTEM)),
            pg: with_system_id(stopped_standby(), Some(OTHER)),
            want: Expect::Refuses(REFUSE),
        },
        Case {
            name: "primary, running, another system in the directory: stop",
            cd: Some(master()),
            boot: BOOT,
            local: recorded(applied(), Some(SYSTEM)),
            pg: with_system_id(running_primary(&["stolon_db-2"]), Some(OTHER)),
            want: Expect::Refuses(REFUSE),
        },
        Case {
            name: "a resync asked for does not override the refusal",
            cd: Some(resync(true)),
            boot: BOOT,
            local: recorded(local("db-old", Generation(9)), Some(SYSTEM)),
            pg: with_system_id(stopped_primary(), Some(OTHER)),
            want: Expect::Refuses(REFUSE),
        },
        Case {
            name: "mismatch while initialising (half-made resync): redo it",
            cd: Some(resync(true)),
            boot: BOOT,
            local: recorded(
                LocalDb {
                    initializing: true,
                    ..local("db-1", Generation::NONE)
                },
                Some(SYSTEM),
            ),
            pg: with_system_id(stopped_primary(), Some(OTHER)),
            want: resync_action(false),
        },
        Case {
            name: "same system: idle",
            cd: Some(standby(InitMode::None)),
            boot: BOOT,
            local: recorded(applied(), Some(SYSTEM)),
            pg: with_system_id(running_standby(Some(upstream())), Some(SYSTEM)),
            want: Expect::Is(Action::Idle),
        },
        Case {
            name: "no system id recorded: not judged",
            cd: Some(standby(InitMode::None)),
            boot: BOOT,
            local: recorded(applied(), None),
            pg: with_system_id(running_standby(Some(upstream())), Some(OTHER)),
            want: Expect::Is(Action::Idle),
        },
        Case {
            name: "system id of the directory unknown: not judged",
            cd: Some(master()),
            boot: BOOT,
            local: recorded(applied(), Some(SYSTEM)),
            pg: with_system_id(running_primary(&["stolon_db-2"]), None),
            want: Expect::Is(Action::Idle),
        },
    ];
    for case in cases {
        check(case);
    }
}

#[test]
fn reconfigure_table() {
    let stale = |pg: Instance| Instance {
        config_stale: true,
        ..pg
    };
    let upstream_unknown = {
        let mut cd = standby(InitMode::None);
        cd.dbs.get_mut(&DbUid::new("db-2")).unwrap().status.port = 0;
        cd
    };
    let master_with_followers = {
        let mut cd = master();
        cd.dbs.get_mut(&DbUid::new("db-1")).unwrap().spec.followers =
            vec![DbUid::new("db-2"), DbUid::new("db-3")];
        cd
    };
    let cases = vec![
        Case {
            name: "running primary with a stale configuration",
            cd: Some(master()),
            boot: BOOT,
            local: applied(),
            pg: stale(running_primary(&["stolon_db-2"])),
            want: Expect::Is(Action::Reconfigure),
        },
        Case {
            name: "running primary, stale configuration before slots",
            cd: Some(master_with_followers),
            boot: BOOT,
            local: applied(),
            pg: stale(running_primary(&["stolon_gone"])),
            want: Expect::Is(Action::Reconfigure),
        },
        Case {
            name: "running primary, stale, on an older generation: reconfigure before marking",
            cd: Some(master()),
            boot: BOOT,
            local: local("db-1", Generation(2)),
            pg: stale(running_primary(&["stolon_db-2"])),
            want: Expect::Is(Action::Reconfigure),
        },
        Case {
            name: "stopped primary with a stale configuration: start (it reads the new one)",
            cd: Some(master()),
            boot: BOOT,
            local: applied(),
            pg: stale(stopped_primary()),
            want: Expect::Is(Action::Start { follow: None }),
        },
        Case {
            name: "primary role on a stale standby: promote first",
            cd: Some(master()),
            boot: BOOT,
            local: applied(),
            pg: stale(running_standby(Some(upstream()))),
            want: Expect::Is(Action::Promote),
        },
        Case {
            name: "running standby on the right upstream with a stale configuration",
            cd: Some(standby(InitMode::None)),
            boot: BOOT,
            local: applied(),
            pg: stale(running_standby(Some(upstream()))),
            want: Expect::Is(Action::Reconfigure),
        },
        Case {
            name: "running standby, stale, on an older generation: reconfigure before marking",
            cd: Some(standby(InitMode::None)),
            boot: BOOT,
            local: local("db-1", Generation(1)),
            pg: stale(running_standby(Some(upstream()))),
            want: Expect::Is(Action::Reconfigure),
        },
        Case {
            name: "running standby without a known upstream in its configuration",
            cd: Some(standby(InitMode::None)),
            boot: BOOT,
            local: applied(),
            pg: running_standby(None),
            want: Expect::Is(Action::Reconfigure),
        },
        Case {
            name: "running standby on another port of the same host",
            cd: Some(standby(InitMode::None)),
            boot: BOOT,
            local: applied(),
            pg: running_standby(Some(Endpoint {
                port: 5433,
                ..upstream()
            })),
            want: Expect::Is(Action::Reconfigure),
        },
        Case {
            name: "stopped standby with a stale configuration: start following",
            cd: Some(standby(InitMode::None)),
            boot: BOOT,
            local: applied(),
            pg: stale(stopped_standby()),
            want: Expect::Is(Action::Start {
                follow: Some(upstream()),
            }),
        },
        Case {
            name: "upstream address unknown: keep following the old one",
            cd: Some(upstream_unknown.clone()),
            boot: BOOT,
            local: applied(),
            pg: running_standby(Some(Endpoint {
                host: "old.example".into(),
                port: 5432,
            })),
            want: Expect::Is(Action::Idle),
        },
        Case {
            name: "upstream address unknown, stale configuration: reconfigure",
            cd: Some(upstream_unknown),
            boot: BOOT,
            local: applied(),
            pg: stale(running_standby(Some(upstream()))),
            want: Expect::Is(Action::Reconfigure),
        },
    ];
    for case in cases {
        check(case);
    }
}

#[test]
fn followed_endpoint_table() {
    let cd = standby(InitMode::None);
    let db = |cd: &ClusterData, uid: &str| cd.dbs[&DbUid::new(uid)].clone();
    let no_port = {
        let mut cd = cd.clone();
        cd.dbs.get_mut(&DbUid::new("db-2")).unwrap().status.port = 0;
        cd
    };
    let no_address = {
        let mut cd = cd.clone();
        cd.dbs
            .get_mut(&DbUid::new("db-2"))
            .unwrap()
            .status
            .listen_address
            .clear();
        cd
    };
    let followed_gone = {
        let mut cd = cd.clone();
        cd.dbs.remove(&DbUid::new("db-2"));
        cd
    };
    let cases: Vec<(&str, &ClusterData, Db, Option<Endpoint>)> = vec![
        (
            "standby following a known db",
            &cd,
            db(&cd, "db-1"),
            Some(upstream()),
        ),
        ("the primary follows no one", &cd, db(&cd, "db-2"), None),
        (
            "followed db without a port",
            &no_port,
            db(&no_port, "db-1"),
            None,
        ),
        (
            "followed db without an address",
            &no_address,
            db(&no_address, "db-1"),
            None,
        ),
        ("followed db gone", &followed_gone, db(&cd, "db-1"), None),
    ];
    for (name, cd, db, want) in cases {
        assert_eq!(followed_endpoint(cd, &db), want, "{name}");
    }
}

#[test]
fn a_standby_streams_from_the_db_it_follows_or_where_it_streams_while_that_is_unknown() {
    let cd = standby(InitMode::None);
    let me = cd.dbs[&DbUid::new("db-1")].clone();
    let elsewhere = Endpoint {
        host: "k9.example".into(),
        port: 5433,
    };
    assert_eq!(keeper::upstream(&cd, &me, true, None), Some(upstream()));
    assert_eq!(
        keeper::upstream(&cd, &me, true, Some(&elsewhere)),
        Some(upstream()),
        "the followed db's address wins"
    );
    let mut unknown = cd.clone();
    unknown.dbs.remove(&DbUid::new("db-2"));
    assert_eq!(
        keeper::upstream(&unknown, &me, true, Some(&elsewhere)),
        Some(elsewhere.clone()),
        "kept while the followed db's address is unknown"
    );
    assert_eq!(keeper::upstream(&unknown, &me, true, None), None);
    assert_eq!(
        keeper::upstream(&cd, &me, false, Some(&elsewhere)),
        None,
        "out of recovery: streams from no one"
    );
    let mut leader = me.clone();
    leader.spec.follow_config = Some(stolon_cluster::FollowConfig::Remote {
        remote: Default::default(),
    });
    assert_eq!(
        keeper::upstream(&cd, &leader, true, Some(&elsewhere)),
        None,
        "a standby leader follows the remote its spec names"
    );
}

#[test]
fn sync_gate_table() {
    let u = |v: &[&str]| v.iter().map(|s| DbUid::new(*s)).collect::<Vec<_>>();
    let cases: [(&str, &[&str], &[&str], bool); 6] = [
        ("nothing to wait for", &[], &[], true),
        ("nothing to wait for, some in sync", &[], &["a"], true),
        ("the one wanted is in sync", &["a"], &["a"], true),
        (
            "all wanted in sync, and more",
            &["a", "b"],
            &["b", "c", "a"],
            true,
        ),
        ("none in sync", &["a"], &[], false),
        ("one of two missing", &["a", "b"], &["a"], false),
    ];
    for (name, wanted, in_sync, lifted) in cases {
        assert_eq!(sync_gate_lifted(&u(wanted), &u(in_sync)), lifted, "{name}");
    }
}

/// A primary keeps one slot per follower plus `stolon_<name>` for every additional slot the
/// spec lists, drops other `stolon_` slots, and never sees slots without the prefix (the
/// daemon lists only ours).
#[test]
fn primary_keeps_additional_replication_slots() {
    let mut cd = cluster(DbRole::Master, InitMode::None);
    let db_uid = cd.db_of_keeper(&KeeperUid::new(ME)).unwrap().uid.clone();
    let db = cd.dbs.get_mut(&db_uid).unwrap();
    db.spec.additional_replication_slots = vec!["backup".into()];
    db.spec.followers.clear();
    let pg = running_primary(&["stolon_gone"]);
    let got = next_action(Some(&cd), &KeeperUid::new(ME), BOOT, &applied(), &pg);
    assert_eq!(
        got,
        Action::SyncSlots {
            create: vec!["stolon_backup".into()],
            drop: vec!["stolon_gone".into()],
        }
    );
}

/// Parameters waiting for a restart restart postgres only when automaticPgRestart says so.
#[test]
fn pending_restart_restarts_only_with_automatic_pg_restart() {
    for (automatic, want) in [(true, Action::Restart), (false, Action::Idle)] {
        let mut cd = cluster(DbRole::Master, InitMode::None);
        let db_uid = cd.db_of_keeper(&KeeperUid::new(ME)).unwrap().uid.clone();
        let db = cd.dbs.get_mut(&db_uid).unwrap();
        db.spec.automatic_pg_restart = automatic;
        db.spec.followers.clear();
        let pg = Instance {
            pending_restart: true,
            ..running_primary(&[])
        };
        let got = next_action(Some(&cd), &KeeperUid::new(ME), BOOT, &applied(), &pg);
        assert_eq!(got, want, "automaticPgRestart={automatic}");
    }
}

/// initMode existing adopts the data as it is, even data this keeper never made (the
/// cluster data names it for that); with no data there is nothing to adopt.
#[test]
fn existing_mode_adopts_without_wiping() {
    let cd = cluster(DbRole::Master, InitMode::Existing);
    let db = cd.db_of_keeper(&KeeperUid::new(ME)).unwrap().uid.clone();
    let data = Instance {
        initialized: true,
        ..Instance::default()
    };
    for local in [LocalDb::default(), local("db-old", GEN)] {
        let got = next_action(Some(&cd), &KeeperUid::new(ME), BOOT, &local, &data);
        assert_eq!(got, Action::Adopt { db: db.clone() }, "{local:?}");
    }
    let got = next_action(
        Some(&cd),
        &KeeperUid::new(ME),
        BOOT,
        &LocalDb::default(),
        &empty_dir(),
    );
    assert!(
        matches!(
            got,
            Action::Wait(WaitReason::Refused(Refusal::NothingToAdopt))
        ),
        "{got:?}"
    );
}
