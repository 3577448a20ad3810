//! The proxy's control loop (`ProxyMachine`): a check's requests, the gate it sets and what
//! that does to the sessions, the acknowledgement it publishes, the fence and listening.

use super::base;
use super::common::{secs, valid};
use std::sync::Arc;
use std::time::Duration;
use stolon_cluster::{Hold, ProxyUid};
use stolon_engine::proxy::machine::{
    Effect, Input, Note, ProxyMachine, ReadOnly, ReadOutcome, Request, Settings, Step,
};
use stolon_engine::proxy::{Backend, Gate, Route, Sessions};
use stolon_engine::ClusterView;

/// The proxy's addresses in these tests: host names as they are.
type Machine = ProxyMachine<String>;

fn machine(read_only: Option<ReadOnly>) -> Machine {
    ProxyMachine::new(
        Settings {
            uid: ProxyUid::new("p1"),
            read_only,
            stop_listening: true,
        },
        3,
    )
}

/// db-1 on k1 is the primary the proxies route to, p1 among the enabled proxies;
/// proxyTimeout 3s, proxyCheckInterval 1s.
fn view() -> Arc<ClusterView> {
    Arc::new(ClusterView {
        data: base().proxy(Some("db-1"), &["p1"]).build(),
        spec: valid(r#"{"proxyTimeout": "3s", "proxyCheckInterval": "1s"}"#),
    })
}

/// One whole successful check at `now` (the machine woken for it), `view` read; returns its
/// effects in order.
fn check(m: &mut Machine, now: Duration, view: Arc<ClusterView>) -> Vec<Effect<String>> {
    let mut effects = m.handle(now, Input::Woken).effects;
    let step = m.handle(now, Input::Read(ReadOutcome::Data(view)));
    effects.extend(step.effects);
    let Request::Resolve { primary, readers } = step.request else {
        panic!("resolves next: {:?}", step.request);
    };
    let step = m.handle(
        now,
        Input::Resolved {
            primary: primary.map(|b| b.address),
            readers: readers.into_iter().map(|b| b.address).collect(),
        },
    );
    effects.extend(step.effects);
    assert!(
        matches!(step.request, Request::Publish { .. }),
        "{:?}",
        step.request
    );
    let step = m.handle(now, Input::Published { succeeded: true });
    effects.extend(step.effects);
    assert_eq!(step.request, Request::Sleep { max: secs(1) });
    effects
}

fn gates(effects: &[Effect<String>]) -> Vec<(Gate<String>, Sessions)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::SetGate { gate, sessions } => Some((gate.clone(), *sessions)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_check_routes_to_the_primary_publishes_its_generation_and_listens() {
    let mut m = machine(None);
    let step: Step<String> = m.start(secs(1));
    assert_eq!(step.request, Request::ReadClusterData);
    let step = m.handle(secs(1), Input::Read(ReadOutcome::Data(view())));
    assert_eq!(
        step.request,
        Request::Resolve {
            primary: Some(Backend {
                db: "db-1".into(),
                address: "k1.example".into(),
                port: 5432
            }),
            readers: Vec::new()
        }
    );
    let step = m.handle(
        secs(1),
        Input::Resolved {
            primary: Some("k1.example".into()),
            readers: Vec::new(),
        },
    );
    assert_eq!(
        gates(&step.effects),
        vec![(Gate::Open("k1.example".into()), Sessions::CloseNow)]
    );
    assert!(step
        .effects
        .iter()
        .any(|e| matches!(e, Effect::Tell(Note::Route(Route::To { .. })))));
    let Request::Publish { info, ttl } = step.request else {
        panic!("publishes next: {step:?}");
    };
    assert_eq!(info.generation.0, 7, "the generation it applied");
    assert_eq!(info.proxy_timeout, secs(3));
    assert_eq!(ttl, secs(4), "proxyTimeout plus the margin");
    let step = m.handle(secs(1), Input::Published { succeeded: true });
    assert_eq!(step.effects, vec![Effect::Listen]);
    assert_eq!(
        m.deadline(),
        Some(secs(4)),
        "renewed from the check's start"
    );
    // The same route again changes nothing and says nothing.
    let effects = check(&mut m, secs(2), view());
    assert_eq!(effects, vec![Effect::Listen]);
}

#[test]
fn a_failed_check_does_not_renew_the_fence_which_then_closes_everything() {
    let mut m = machine(None);
    let _ = m.start(secs(1));
    let _ = check(&mut m, secs(1), view());
    let _ = m.handle(secs(2), Input::Woken);
    let step = m.handle(secs(2), Input::Read(ReadOutcome::Failed));
    assert_eq!(step.effects, vec![Effect::Tell(Note::CheckFailed)]);
    assert_eq!(step.request, Request::Sleep { max: secs(1) });
    assert_eq!(m.deadline(), Some(secs(4)));
    assert!(m.enforce_fence(Duration::from_millis(3999)).is_empty());
    let effects = m.enforce_fence(secs(4));
    assert_eq!(
        effects,
        vec![
            Effect::SetGate {
                gate: Gate::Closed,
                sessions: Sessions::CloseNow
            },
            Effect::Tell(Note::Fenced),
            Effect::StopListening
        ]
    );
    assert_eq!(m.gate(), &Gate::Closed);
    // A check stuck in the store past the deadline is fenced when it returns.
    let mut m = machine(None);
    let _ = m.start(secs(1));
    let _ = check(&mut m, secs(1), view());
    let _ = m.handle(secs(2), Input::Woken);
    let step = m.handle(secs(9), Input::Read(ReadOutcome::Failed));
    assert!(step.effects.contains(&Effect::Tell(Note::Fenced)));
}

#[test]
fn a_publish_the_store_did_not_confirm_does_not_renew_but_its_timeout_counts() {
    let mut m = machine(None);
    let _ = m.start(secs(1));
    let _ = check(&mut m, secs(1), view());
    let _ = m.handle(secs(2), Input::Woken);
    let _ = m.handle(secs(2), Input::Read(ReadOutcome::Data(view())));
    let _ = m.handle(
        secs(2),
        Input::Resolved {
            primary: Some("k1".into()),
            readers: Vec::new(),
        },
    );
    let step = m.handle(secs(2), Input::Published { succeeded: false });
    assert_eq!(step.effects, vec![Effect::Tell(Note::CheckFailed)]);
    assert_eq!(m.deadline(), Some(secs(4)), "not renewed");
}

#[test]
fn no_cluster_data_closes_the_gate_but_counts_as_a_check_and_corrupt_data_does_not() {
    let mut m = machine(None);
    let _ = m.start(secs(1));
    let _ = check(&mut m, secs(1), view());
    let _ = m.handle(secs(2), Input::Woken);
    let step = m.handle(secs(2), Input::Read(ReadOutcome::NoData));
    assert_eq!(
        gates(&step.effects),
        vec![(Gate::Closed, Sessions::CloseNow)]
    );
    assert!(step.effects.contains(&Effect::Tell(Note::NoClusterData)));
    assert!(step.effects.contains(&Effect::Listen));
    assert_eq!(m.deadline(), Some(secs(5)), "renewed");

    let _ = check(&mut m, secs(3), view());
    let _ = m.handle(secs(4), Input::Woken);
    let step = m.handle(
        secs(4),
        Input::Read(ReadOutcome::Corrupt("bad json".into())),
    );
    assert_eq!(
        gates(&step.effects),
        vec![(Gate::Closed, Sessions::CloseNow)]
    );
    assert!(step
        .effects
        .contains(&Effect::Tell(Note::Unusable("bad json".into()))));
    assert!(!step.effects.contains(&Effect::Listen));
    assert_eq!(m.deadline(), Some(secs(6)), "not renewed");
}

#[test]
fn a_switchover_holds_new_connections_and_lets_the_old_ones_finish_within_the_grace() {
    let mut m = machine(None);
    let _ = m.start(secs(1));
    let _ = check(&mut m, secs(1), view());
    let mut held = (*view()).clone();
    held.data.proxy.spec.hold = Some(Hold {
        grace: stolon_cluster::GoDuration(secs(2)),
    });
    let _ = m.handle(secs(2), Input::Woken);
    let effects = check(&mut m, secs(2), Arc::new(held));
    assert_eq!(
        gates(&effects),
        vec![(Gate::Hold, Sessions::CloseAfter(secs(2)))]
    );
}

#[test]
fn an_unresolvable_primary_closes_the_gate_and_the_read_only_endpoint_follows_its_standbys() {
    let mut m = machine(Some(ReadOnly {
        max_lag: None,
        fallback_to_primary: false,
    }));
    let _ = m.start(secs(1));
    let step = m.handle(secs(1), Input::Read(ReadOutcome::Data(view())));
    let Request::Resolve { readers, .. } = &step.request else {
        panic!("{step:?}");
    };
    assert_eq!(
        readers.iter().map(|r| r.db.as_str()).collect::<Vec<_>>(),
        vec!["db-2"]
    );
    let step = m.handle(
        secs(1),
        Input::Resolved {
            primary: None,
            readers: vec!["k2".into()],
        },
    );
    assert!(
        gates(&step.effects).is_empty(),
        "closed it was, closed it stays"
    );
    assert!(step
        .effects
        .contains(&Effect::SetReaders(vec!["k2".to_string()])));
    assert!(step
        .effects
        .contains(&Effect::Tell(Note::Readers(vec!["db-2".into()]))));
    let _ = m.handle(secs(1), Input::Published { succeeded: true });
    // Fenced: the readers go too.
    let effects = m.enforce_fence(secs(10));
    assert!(effects.contains(&Effect::SetReaders(Vec::new())));
}

#[test]
fn shutting_down_closes_everything() {
    let mut m = machine(None);
    let _ = m.start(secs(1));
    let _ = check(&mut m, secs(1), view());
    assert_eq!(
        m.shut_down(),
        vec![
            Effect::SetGate {
                gate: Gate::Closed,
                sessions: Sessions::CloseNow
            },
            Effect::StopListening
        ]
    );
}
