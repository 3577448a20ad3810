//! The sentinels' election on a Lease of its own.
//!
//! Taking the Lease is a create (409: someone else did) or a replace carrying the
//! resourceVersion read (409: someone else wrote first), so two candidates never both win.
//! A candidate takes a held Lease only once it has seen the record unchanged for its whole
//! duration, timed on its own monotonic clock from when it saw it change (as client-go
//! does), never by comparing the holder's `renewTime` with its own clock. The leader counts
//! its leadership lost a duration after the last renewal it sent that the server accepted:
//! before anyone else may have taken it.

use crate::{bounded, names, now, KubeStore};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use std::collections::BTreeMap;
use std::time::Duration;
use stolon_store::{Leadership, StoreError};
use tokio::sync::watch;
use tokio::time::Instant;

/// How often a candidate looks at a Lease someone else holds.
const RETRY: Duration = Duration::from_millis(500);

pub(crate) async fn campaign(
    store: &KubeStore,
    candidate: &str,
    ttl: Duration,
) -> Result<Leadership, StoreError> {
    let ttl = ttl.max(Duration::from_secs(2));
    let api = store.leases();
    let name = names::leader_lease(&store.cluster);
    // The record as last seen changing, and when.
    let mut seen: Option<(String, Instant)> = None;
    let held = loop {
        let sent_at = Instant::now();
        let current = store.bounded("get leases", api.get_opt(&name)).await?;
        let taken = match current {
            None => {
                let lease = record(store, &name, candidate, ttl, None, 0, now());
                store
                    .bounded("create leases", api.create(&PostParams::default(), &lease))
                    .await
            }
            Some(lease) => {
                let version = lease.metadata.resource_version.clone().unwrap_or_default();
                let spec = lease.spec.clone().unwrap_or_default();
                let holder = spec.holder_identity.clone().unwrap_or_default();
                let observed_at = match &seen {
                    Some((v, at)) if *v == version => *at,
                    _ => {
                        seen = Some((version.clone(), Instant::now()));
                        Instant::now()
                    }
                };
                let duration =
                    Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
                let free =
                    holder.is_empty() || holder == candidate || observed_at.elapsed() > duration;
                if !free {
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
                let transitions =
                    spec.lease_transitions.unwrap_or(0) + i32::from(holder != candidate);
                let lease = record(
                    store,
                    &name,
                    candidate,
                    ttl,
                    Some(version),
                    transitions,
                    now(),
                );
                store
                    .bounded(
                        "update leases",
                        api.replace(&name, &PostParams::default(), &lease),
                    )
                    .await
            }
        };
        match taken {
            Ok(lease) => break (lease, sent_at),
            Err(StoreError::Conflict) => tokio::time::sleep(RETRY).await,
            Err(e) => return Err(e),
        }
    };
    tracing::debug!(lease = %name, "took the sentinel leader lease");
    let (lost_tx, lost_rx) = watch::channel(false);
    let renewer = tokio::spawn(renew(
        store.clone(),
        candidate.to_string(),
        ttl,
        held,
        lost_tx,
    ));
    let resigner = store.clone();
    let resigning = candidate.to_string();
    Ok(Leadership {
        lost: lost_rx,
        resign: Some(Box::new(move || {
            renewer.abort();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { resign(&resigner, &resigning).await });
            }
        })),
    })
}

/// Renews the Lease every third of its duration with the resourceVersion of our last write;
/// a 409 means someone took it.
async fn renew(
    store: KubeStore,
    candidate: String,
    ttl: Duration,
    (mut lease, mut last_renewed): (Lease, Instant),
    lost: watch::Sender<bool>,
) {
    let api = store.leases();
    let name = names::leader_lease(&store.cluster);
    loop {
        tokio::time::sleep(ttl / 3).await;
        let sent_at = Instant::now();
        let version = lease.metadata.resource_version.clone();
        let spec = lease.spec.clone().unwrap_or_default();
        let next = record(
            &store,
            &name,
            &candidate,
            ttl,
            version,
            spec.lease_transitions.unwrap_or(0),
            spec.acquire_time.unwrap_or_else(now),
        );
        let left = ttl.saturating_sub(last_renewed.elapsed());
        match bounded(
            left.min(store.timeout),
            "update leases",
            api.replace(&name, &PostParams::default(), &next),
        )
        .await
        {
            Ok(renewed) => {
                lease = renewed;
                last_renewed = sent_at;
            }
            Err(StoreError::Conflict) => {
                tracing::warn!(lease = %name, "the sentinel leader lease was taken by another");
                let _ = lost.send(true);
                return;
            }
            Err(e) => {
                tracing::warn!(lease = %name, error = %e, "cannot renew the sentinel leader lease")
            }
        }
        if last_renewed.elapsed() >= ttl {
            let _ = lost.send(true);
            return;
        }
    }
}

/// Gives the Lease up, so that another candidate takes it at once.
async fn resign(store: &KubeStore, candidate: &str) {
    let api = store.leases();
    let name = names::leader_lease(&store.cluster);
    let Ok(Some(mut lease)) = store.bounded("get leases", api.get_opt(&name)).await else {
        return;
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(candidate) {
        return;
    }
    spec.holder_identity = None;
    let _ = store
        .bounded(
            "update leases",
            api.replace(&name, &PostParams::default(), &lease),
        )
        .await;
}

pub(crate) async fn leader(store: &KubeStore) -> Result<Option<String>, StoreError> {
    let name = names::leader_lease(&store.cluster);
    let lease = store
        .bounded("get leases", store.leases().get_opt(&name))
        .await?;
    Ok(lease
        .and_then(|l| l.spec)
        .filter(crate::lease_is_live)
        .and_then(|spec| spec.holder_identity)
        .filter(|holder| !holder.is_empty()))
}

fn record(
    store: &KubeStore,
    name: &str,
    holder: &str,
    ttl: Duration,
    resource_version: Option<String>,
    transitions: i32,
    acquired: MicroTime,
) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            resource_version,
            labels: Some(BTreeMap::from([(
                names::CLUSTER_LABEL.to_string(),
                store.cluster.clone(),
            )])),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.to_string()),
            lease_duration_seconds: Some(ttl.as_secs() as i32),
            acquire_time: Some(acquired),
            renew_time: Some(now()),
            lease_transitions: Some(transitions),
            ..Default::default()
        }),
    }
}
