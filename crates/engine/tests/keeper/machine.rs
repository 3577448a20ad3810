//! The keeper's loop (`KeeperMachine`): the requests it makes in each situation, the failed
//! start backoff, the publish cadence, the store-loss fence and the sync gate.

use super::common::{secs, valid, CdBuilder};
use std::sync::Arc;
use std::time::Duration;
use stolon_cluster::{ClusterData, DbRole, DbUid, Generation, KeeperUid, Pause};
use stolon_engine::keeper::machine::{
    Identity, Input, KeeperMachine, Note, Publication, ReadOutcome, Request, Step,
    MAX_ACTIONS_PER_LOOP,
};
use stolon_engine::keeper::report::{Observation, Probe};
use stolon_engine::keeper::{Action, Endpoint, Instance, LocalDb};
use stolon_engine::store_loss::Enforce;
use stolon_engine::ClusterView;

fn identity() -> Identity {
    Identity {
        uid: KeeperUid::new("k1"),
        can_be_master: true,
        can_be_synchronous_replica: true,
        priority: 2,
        advertise: Endpoint {
            host: "k1.example".into(),
            port: 5432,
        },
    }
}

/// k1's db-1 is the primary (synchronous when `sync`, with db-2 on k2 to wait for), and the
/// cluster data records `boot` as k1's boot.
fn primary_view(boot: &str, sync: bool) -> ClusterView {
    let builder = CdBuilder::new()
        .keeper("k1", true)
        .keeper("k2", true)
        .db("db-1", "k1", DbRole::Master, 100)
        .db("db-2", "k2", DbRole::Standby, 100)
        .follow("db-2", "db-1")
        .master("db-1")
        .adjust_keeper("k1", |k| k.boot_uuid = boot.into());
    let data: ClusterData = if sync {
        builder.sync("db-1", &["db-2"], &["db-2"]).build()
    } else {
        builder.build()
    };
    ClusterView {
        data,
        spec: valid(r#"{"sleepInterval": "1s", "failInterval": "5s"}"#),
    }
}

fn applied() -> LocalDb {
    LocalDb {
        uid: Some(DbUid::new("db-1")),
        generation: Generation(3),
        initializing: false,
        system_id: None,
    }
}

/// A primary's instance as the keeper observes it.
fn primary(running: bool, in_sync: &[&str]) -> Observation {
    Observation {
        local: Some(applied()),
        instance: Instance {
            initialized: true,
            running,
            in_recovery: running.then_some(false),
            slots: running.then(|| vec!["stolon_db-2".to_string()]),
            ..Instance::default()
        },
        probe: running.then(|| Probe {
            in_sync: in_sync.iter().map(|d| DbUid::new(*d)).collect(),
            ..Probe::default()
        }),
        ..Observation::default()
    }
}

/// A machine with the fence on, started, whose boot the cluster data will record.
fn machine() -> (KeeperMachine, Step) {
    let mut m = KeeperMachine::new(identity(), 7, true);
    let step = m.start();
    (m, step)
}

fn read(m: &mut KeeperMachine, now: Duration, view: ClusterView) -> Step {
    m.handle(now, Input::Read(ReadOutcome::Data(Arc::new(view))))
}

/// Takes a fresh machine through its first loop at 1 s: it starts postgres, which then
/// serves; returns the step that ends the loop.
fn serving(m: &mut KeeperMachine, sync: bool) -> Step {
    let boot = m.boot_uuid().to_string();
    let _ = read(m, secs(1), primary_view(&boot, sync));
    let step = m.handle(secs(1), Input::Observed(Box::new(primary(false, &[]))));
    assert!(
        matches!(act_of(&step), Some(Action::Start { .. })),
        "{step:?}"
    );
    let _ = m.handle(secs(1), Input::Acted { succeeded: true });
    m.handle(secs(1), Input::Observed(Box::new(primary(true, &[]))))
}

fn act_of(step: &Step) -> Option<&Action> {
    match &step.request {
        Request::Act { action, .. } => Some(action),
        _ => None,
    }
}

fn sleeps(step: &Step) -> Option<Duration> {
    match step.request {
        Request::Sleep { max, .. } => Some(max),
        _ => None,
    }
}

#[test]
fn a_loop_reads_observes_acts_until_idle_then_publishes_and_sleeps() {
    let (mut m, step) = machine();
    assert_eq!(step.request, Request::ReadClusterData);
    let boot = m.boot_uuid().to_string();
    let step = read(&mut m, secs(1), primary_view(&boot, false));
    assert!(matches!(
        step.request,
        Request::Observe {
            sync_gate: false,
            ..
        }
    ));
    let step = m.handle(secs(1), Input::Observed(Box::new(primary(false, &[]))));
    assert_eq!(act_of(&step), Some(&Action::Start { follow: None }));
    let step = m.handle(secs(1), Input::Acted { succeeded: true });
    assert!(matches!(step.request, Request::Observe { .. }));
    let step = m.handle(secs(1), Input::Observed(Box::new(primary(true, &[]))));
    assert_eq!(step.notes, vec![Note::Converged]);
    let Some(Publication { info, ttl, sent }) = &step.publish else {
        panic!("the first loop publishes: {step:?}");
    };
    assert_eq!((*ttl, *sent), (secs(3), secs(1)), "3 heartbeats of 1s");
    assert_eq!(info.boot_uuid, boot);
    assert_eq!(info.priority, 2);
    let state = info.postgres_state.as_ref().expect("a db");
    assert!(state.healthy && !state.in_recovery && !state.down);
    assert_eq!(state.listen_address, "k1.example");
    assert_eq!(
        step.request,
        Request::Sleep {
            max: secs(1),
            wake_on_change: true,
            wake_on_exit: true
        }
    );
    // Half a heartbeat later nothing changed: no publish, a sleep until the next one.
    let step = m.handle(Duration::from_millis(1500), Input::Woken);
    assert_eq!(step.request, Request::ReadClusterData);
    let step = read(
        &mut m,
        Duration::from_millis(1500),
        primary_view(&boot, false),
    );
    assert!(matches!(step.request, Request::Observe { .. }));
    let step = m.handle(
        Duration::from_millis(1500),
        Input::Observed(Box::new(primary(true, &[]))),
    );
    assert_eq!(step.publish, None);
    assert_eq!(sleeps(&step), Some(Duration::from_millis(500)));
    // A changed report is published at once; a new position alone is not.
    let _ = m.handle(Duration::from_millis(1600), Input::Woken);
    let _ = read(
        &mut m,
        Duration::from_millis(1600),
        primary_view(&boot, false),
    );
    let mut moved = primary(true, &[]);
    moved.probe.as_mut().unwrap().position = stolon_cluster::Lsn(4096);
    let step = m.handle(
        Duration::from_millis(1600),
        Input::Observed(Box::new(moved)),
    );
    assert_eq!(step.publish, None);
    let _ = m.handle(Duration::from_millis(1700), Input::Woken);
    let _ = read(
        &mut m,
        Duration::from_millis(1700),
        primary_view(&boot, false),
    );
    let step = m.handle(
        Duration::from_millis(1700),
        Input::Observed(Box::new(primary(true, &["db-2"]))),
    );
    assert!(
        step.publish.is_some(),
        "a standby in sync: worth telling now"
    );
}

#[test]
fn postgres_left_running_by_an_earlier_process_is_stopped_unless_the_cluster_is_paused() {
    let (mut m, _) = machine();
    let boot = m.boot_uuid().to_string();
    let _ = read(&mut m, secs(1), primary_view(&boot, false));
    let step = m.handle(secs(1), Input::Observed(Box::new(primary(true, &[]))));
    assert!(matches!(act_of(&step), Some(Action::Stop(_))), "{step:?}");

    let (mut m, _) = machine();
    let mut paused = primary_view("another boot", false);
    paused.data.cluster.status.pause = Some(Pause {
        reason: "upgrading keepers".into(),
        by: "admin@host".into(),
        since: "2026-12-07T00:00:00Z".into(),
    });
    let _ = read(&mut m, secs(1), paused);
    let step = m.handle(secs(1), Input::Observed(Box::new(primary(true, &[]))));
    assert!(step.notes.contains(&Note::LeftRunningWhilePaused));
    assert_eq!(act_of(&step), None, "nothing done to it: {step:?}");
    assert!(m.paused());

    // The store could not be read: stopped all the same (no paused cluster known).
    let (mut m, _) = machine();
    let _ = m.handle(secs(1), Input::Read(ReadOutcome::Failed));
    let step = m.handle(secs(1), Input::Observed(Box::new(primary(true, &[]))));
    assert!(matches!(act_of(&step), Some(Action::Stop(_))));
}

#[test]
fn without_the_store_the_keeper_observes_publishes_against_its_last_read_and_does_not_act() {
    let (mut m, _) = machine();
    let boot = m.boot_uuid().to_string();
    let _ = read(&mut m, secs(1), primary_view(&boot, false));
    let _ = m.handle(secs(1), Input::Observed(Box::new(primary(false, &[]))));
    let _ = m.handle(secs(1), Input::Acted { succeeded: true });
    let _ = m.handle(secs(1), Input::Observed(Box::new(primary(true, &[]))));
    let _ = m.handle(secs(2), Input::Woken);
    let step = m.handle(secs(2), Input::Read(ReadOutcome::Failed));
    assert!(matches!(
        step.request,
        Request::Observe { view: Some(_), .. }
    ));
    // postgres died: without the cluster data of now, no start.
    let step = m.handle(secs(2), Input::Observed(Box::new(primary(false, &[]))));
    assert_eq!(act_of(&step), None);
    assert!(step.publish.is_some(), "its report still goes out");
    assert_eq!(
        step.request,
        Request::Sleep {
            max: secs(1),
            wake_on_change: false,
            wake_on_exit: false
        },
        "the store is read again after a second"
    );
}

#[test]
fn a_loop_takes_at_most_its_share_of_actions_and_never_repeats_one_at_once() {
    let (mut m, _) = machine();
    let boot = m.boot_uuid().to_string();
    let _ = serving(&mut m, false);
    let _ = m.handle(secs(1), Input::Woken);
    let _ = read(&mut m, secs(1), primary_view(&boot, false));
    let mut instance = primary(true, &[]);
    instance.instance.config_stale = true;
    let step = m.handle(secs(1), Input::Observed(Box::new(instance.clone())));
    assert_eq!(act_of(&step), Some(&Action::Reconfigure));
    let step = m.handle(secs(1), Input::Acted { succeeded: true });
    assert!(matches!(step.request, Request::Observe { .. }));
    // The files still differ: the same action waits for the next loop.
    let step = m.handle(secs(1), Input::Observed(Box::new(instance.clone())));
    assert!(sleeps(&step).is_some(), "{step:?}");

    let _ = m.handle(secs(2), Input::Woken);
    let _ = read(&mut m, secs(2), primary_view(&boot, false));
    let mut step = m.handle(secs(2), Input::Observed(Box::new(instance.clone())));
    for n in 0..MAX_ACTIONS_PER_LOOP {
        assert!(act_of(&step).is_some(), "action {n}: {step:?}");
        let _ = m.handle(secs(2), Input::Acted { succeeded: true });
        // Each action seems to do something else, so that none is a repeat.
        instance.instance.config_stale = n % 2 == 1;
        instance.instance.slots = Some(if n % 2 == 0 {
            vec![]
        } else {
            vec!["stolon_db-2".into()]
        });
        step = m.handle(secs(2), Input::Observed(Box::new(instance.clone())));
    }
    assert!(
        sleeps(&step).is_some(),
        "the loop ends after its share: {step:?}"
    );
}

#[test]
fn failed_starts_back_off_after_five_and_a_failed_action_ends_the_loop() {
    let (mut m, _) = machine();
    let boot = m.boot_uuid().to_string();
    let mut now = secs(1);
    let mut backoff = None;
    for attempt in 1..=6 {
        let _ = read(&mut m, now, primary_view(&boot, false));
        let step = m.handle(now, Input::Observed(Box::new(primary(false, &[]))));
        if attempt == 6 {
            assert_eq!(act_of(&step), None, "the sixth waits: {step:?}");
            break;
        }
        assert_eq!(act_of(&step), Some(&Action::Start { follow: None }));
        let step = m.handle(now, Input::Acted { succeeded: false });
        assert!(matches!(step.request, Request::Observe { .. }));
        backoff = step
            .notes
            .iter()
            .find_map(|n| match n {
                Note::StartBackoff { retry_in, failures } => Some((*failures, *retry_in)),
                _ => None,
            })
            .or(backoff);
        let step = m.handle(now, Input::Observed(Box::new(primary(false, &[]))));
        assert!(
            sleeps(&step).is_some(),
            "no retry in the same loop: {step:?}"
        );
        now += Duration::from_millis(100);
        let _ = m.handle(now, Input::Woken);
    }
    assert_eq!(backoff, Some((5, secs(10))));
    // Ten seconds after the fifth failure, it tries again.
    now += secs(10);
    let _ = m.handle(now, Input::Woken);
    let _ = read(&mut m, now, primary_view(&boot, false));
    let step = m.handle(now, Input::Observed(Box::new(primary(false, &[]))));
    assert_eq!(act_of(&step), Some(&Action::Start { follow: None }));
}

#[test]
fn a_synchronous_primary_starts_gated_until_its_standbys_are_in_sync() {
    let (mut m, _) = machine();
    let boot = m.boot_uuid().to_string();
    let _ = read(&mut m, secs(1), primary_view(&boot, true));
    let step = m.handle(secs(1), Input::Observed(Box::new(primary(false, &[]))));
    assert!(step.notes.contains(&Note::SyncGateClosed));
    assert!(matches!(
        step.request,
        Request::Act {
            action: Action::Start { .. },
            sync_gate: true,
            ..
        }
    ));
    let _ = m.handle(secs(1), Input::Acted { succeeded: true });
    let step = m.handle(secs(1), Input::Observed(Box::new(primary(true, &[]))));
    assert!(m.sync_gate(), "db-2 is not in sync yet: {step:?}");
    let _ = m.handle(secs(2), Input::Woken);
    let _ = read(&mut m, secs(2), primary_view(&boot, true));
    let step = m.handle(secs(2), Input::Observed(Box::new(primary(true, &["db-2"]))));
    assert!(step.notes.contains(&Note::SyncGateLifted));
    assert!(
        matches!(
            step.request,
            Request::Observe {
                sync_gate: false,
                ..
            }
        ),
        "looked at again: its access rules now differ from the files: {step:?}"
    );
    assert!(!m.sync_gate());
}

#[test]
fn the_fence_stops_a_primary_without_a_stored_info_and_only_a_publish_lifts_it_with_a_new_boot() {
    let (mut m, _) = machine();
    let boot = m.boot_uuid().to_string();
    let step = serving(&mut m, false);
    let sent = step.publish.expect("published").sent;
    assert_eq!(m.published(secs(1), sent, true), None, "nothing to lift");
    assert_eq!(m.enforce_fence(secs(2)), Enforce::LookAgainIn(secs(3)));
    assert!(!m.fence_holds(Duration::from_millis(4999)));
    assert!(m.fence_holds(secs(5)), "failInterval 5s less a heartbeat");
    assert!(matches!(
        m.enforce_fence(secs(5)),
        Enforce::Stop {
            fenced_now: Some(_),
            ..
        }
    ));
    m.fence_saw_stopped();
    // While the fence holds, the loop does not act: postgres stays down.
    let _ = m.handle(secs(5), Input::Woken);
    let _ = read(&mut m, secs(5), primary_view(&boot, false));
    let step = m.handle(secs(5), Input::Observed(Box::new(primary(false, &[]))));
    assert_eq!(act_of(&step), None);
    let sent = step.publish.expect("due").sent;
    // A failed publish lifts nothing; a successful one does, with a new boot.
    assert_eq!(m.published(secs(6), sent, false), None);
    assert!(m.fenced());
    assert_eq!(
        m.published(secs(6), sent, true),
        Some(Note::FenceLifted { held: secs(1) })
    );
    assert!(!m.fenced());
    assert_ne!(m.boot_uuid(), boot);
    // The new boot goes out at the end of the next loop, even before a heartbeat passed.
    let _ = m.handle(Duration::from_millis(6100), Input::Woken);
    let _ = read(
        &mut m,
        Duration::from_millis(6100),
        primary_view(&boot, false),
    );
    let step = m.handle(
        Duration::from_millis(6100),
        Input::Observed(Box::new(primary(false, &[]))),
    );
    assert!(
        matches!(act_of(&step), None | Some(Action::Stop(_))),
        "the cluster data does not record the new boot: no start: {step:?}"
    );
}

#[test]
fn without_the_fence_the_watchdog_has_nothing_to_do() {
    let mut m = KeeperMachine::new(identity(), 7, false);
    let _ = m.start();
    let step = serving(&mut m, false);
    let sent = step.publish.expect("published").sent;
    assert_eq!(m.published(secs(1), sent, true), None);
    assert_eq!(m.enforce_fence(secs(100)), Enforce::Idle);
    assert!(!m.fence_holds(secs(100)));
}

#[test]
fn the_same_seed_makes_the_same_boot_and_info_ids() {
    let a = KeeperMachine::new(identity(), 42, true);
    let b = KeeperMachine::new(identity(), 42, true);
    let c = KeeperMachine::new(identity(), 43, true);
    assert_eq!(a.boot_uuid(), b.boot_uuid());
    assert_ne!(a.boot_uuid(), c.boot_uuid());
    assert_eq!(a.boot_uuid().len(), 16);
}
