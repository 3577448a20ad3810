//! The sentinel's loop (`SentinelMachine`): a check's requests, leading and following, the
//! initial cluster data, the info cadence and events told once.

use super::common::{valid, CdBuilder};
use std::sync::Arc;
use std::time::Duration;
use stolon_cluster::{ClusterSpec, DbRole, SentinelUid};
use stolon_engine::sentinel::machine::{
    Input, Note, ReadOutcome, Request, SentinelMachine, Step, DEBOUNCE,
};
use stolon_engine::ClusterView;

type Machine = SentinelMachine<u64>;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn machine(initial: Option<ClusterSpec>) -> Machine {
    SentinelMachine::new(SentinelUid::new("s1"), initial, 11)
}

/// A cluster whose db-1 on k1 is the primary: nothing for a leader to change but the
/// keepers' reports.
fn view() -> Arc<ClusterView> {
    Arc::new(ClusterView {
        data: CdBuilder::new()
            .keeper("k1", true)
            .db("db-1", "k1", DbRole::Master, 100)
            .master("db-1")
            .build(),
        spec: valid(r#"{"sleepInterval": "2s"}"#),
    })
}

fn read(m: &mut Machine, now: Duration, term: u64, revision: u64) -> Step<u64> {
    m.handle(
        now,
        term,
        Input::Read(ReadOutcome::Data {
            view: view(),
            revision,
        }),
    )
}

#[test]
fn a_follower_publishes_its_info_once_per_interval_and_never_plans() {
    let mut m = machine(None);
    assert_eq!(m.start().request, Request::ReadClusterData);
    let step = read(&mut m, secs(1), 0, 1);
    let Request::Publish { info, ttl } = &step.request else {
        panic!("{step:?}");
    };
    assert_eq!((info.uid.as_str(), *ttl), ("s1", secs(4)));
    let step = m.handle(secs(1), 0, Input::Published { succeeded: true });
    assert_eq!(step.notes, vec![Note::CheckSucceeded]);
    assert_eq!(
        step.request,
        Request::Sleep {
            max: secs(2),
            debounce: DEBOUNCE
        }
    );
    // A second later: the info is not due yet, and a follower reads no infos.
    let _ = m.handle(secs(2), 0, Input::Woken);
    let step = read(&mut m, secs(2), 0, 1);
    assert_eq!(step.notes, vec![Note::CheckSucceeded]);
    assert!(matches!(step.request, Request::Sleep { .. }));
}

#[test]
fn a_leader_plans_and_writes_against_the_revision_it_read_and_tells_each_event_once() {
    let mut m = machine(None);
    let _ = m.start();
    let _ = read(&mut m, secs(1), 1, 7);
    let step = m.handle(secs(1), 1, Input::Published { succeeded: true });
    assert_eq!(step.request, Request::ReadInfos);
    // No keeper info at all: the planner has something to say, and a db status to change.
    let step = m.handle(secs(1), 1, Input::Infos(Some((Vec::new(), Vec::new()))));
    let told: Vec<String> = step.notes.iter().map(ToString::to_string).collect();
    assert!(
        told.iter()
            .any(|t| t.starts_with("no keeper info available")),
        "{told:?}"
    );
    let Request::Write { revision, .. } = step.request else {
        panic!("{:?}", step.request);
    };
    assert_eq!(revision, 7);
    let step = m.handle(secs(1), 1, Input::Written { succeeded: true });
    assert_eq!(step.notes, vec![Note::CheckSucceeded]);
    // The same situation again: nothing new to tell.
    let _ = m.handle(secs(2), 1, Input::Woken);
    let _ = read(&mut m, secs(2), 1, 8);
    let step = m.handle(secs(2), 1, Input::Infos(Some((Vec::new(), Vec::new()))));
    assert!(
        step.notes.iter().all(|n| !matches!(n, Note::Planner(_))),
        "{:?}",
        step.notes
    );
}

#[test]
fn a_leader_deposed_while_it_planned_does_not_write_and_a_new_term_forgets() {
    let mut m = machine(None);
    let _ = m.start();
    let _ = read(&mut m, secs(1), 1, 7);
    let _ = m.handle(secs(1), 1, Input::Published { succeeded: true });
    let step = m.handle(secs(1), 0, Input::Infos(Some((Vec::new(), Vec::new()))));
    assert!(
        matches!(step.request, Request::Sleep { .. }),
        "lost the lease meanwhile: {:?}",
        step.request
    );
    // Term 2: the planner starts from nothing, and tells what it sees again.
    let _ = m.handle(secs(2), 2, Input::Woken);
    let _ = read(&mut m, secs(4), 2, 8);
    let step = m.handle(secs(4), 2, Input::Published { succeeded: true });
    assert_eq!(step.request, Request::ReadInfos);
    let step = m.handle(secs(4), 2, Input::Infos(Some((Vec::new(), Vec::new()))));
    assert!(step
        .notes
        .iter()
        .any(|n| n.to_string().starts_with("no keeper info available")));
}

#[test]
fn a_failed_request_ends_the_check_and_is_told() {
    let mut m = machine(None);
    let _ = m.start();
    let step = m.handle(secs(1), 1, Input::Read(ReadOutcome::Failed));
    assert_eq!(step.notes, vec![Note::CheckFailed]);
    assert!(matches!(step.request, Request::Sleep { .. }));
    let _ = m.handle(secs(2), 1, Input::Woken);
    let _ = read(&mut m, secs(2), 1, 1);
    let step = m.handle(secs(2), 1, Input::Published { succeeded: false });
    assert_eq!(step.notes, vec![Note::CheckFailed]);
    assert!(matches!(step.request, Request::Sleep { .. }));
    // The info was not stored: the next check publishes it again.
    let _ = m.handle(secs(3), 1, Input::Woken);
    let step = read(&mut m, secs(3), 1, 1);
    assert!(matches!(step.request, Request::Publish { .. }));
}

#[test]
fn the_initial_spec_is_written_only_to_an_empty_store() {
    let spec = ClusterSpec::from_json(r#"{"initMode": "new"}"#).unwrap();
    let mut m = machine(Some(spec.clone()));
    let _ = m.start();
    let step = m.handle(secs(1), 0, Input::Read(ReadOutcome::NoData));
    assert_eq!(step.notes, vec![Note::WritingInitialClusterData]);
    let Request::WriteInitial(cd) = &step.request else {
        panic!("{step:?}");
    };
    assert_eq!(cd.cluster.spec, spec);
    assert_eq!(cd.cluster.uid.as_str().len(), 8);
    let step = m.handle(secs(1), 0, Input::Written { succeeded: true });
    assert!(matches!(step.request, Request::Sleep { .. }));

    let mut m = machine(None);
    let _ = m.start();
    let step = m.handle(secs(1), 0, Input::Read(ReadOutcome::NoData));
    assert_eq!(step.notes, vec![Note::WaitingForClusterData]);
    assert!(matches!(step.request, Request::Sleep { .. }));
}
