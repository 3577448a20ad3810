//! The Kubernetes backend of the store: the cluster's objects in one namespace of the API
//! server, no etcd of its own.
//!
//! - The cluster data: the annotation `stolon-clusterdata` of the ConfigMap
//!   `stolon-cluster-<cluster>` (Stolon's layout). Compare-and-swap is a merge patch that
//!   carries the `resourceVersion` read: the API server answers 409 when it moved.
//! - Each component's info: a `coordination.k8s.io/v1` Lease of its own, the info in its
//!   annotation `stolon-status`, `renewTime` and `leaseDurationSeconds` saying until when it
//!   counts; owned by the component's pod when `POD_NAME` names one, so that it goes with it.
//!   Unlike Stolon's pod annotations, an info expires when its component stops renewing it.
//! - The sentinels' election: a Lease of its own (`election`).
//! - Watches of the ConfigMap and the Leases wake the daemons as etcd's do (`watch`).

mod client;
mod election;
pub mod names;
mod watch;

pub use client::KubeOptions;

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::Api;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use stolon_store::{Expect, InfoKind, Leadership, Revision, Store, StoreError, WatchScope};
use tokio::sync::mpsc;

/// One cluster's objects in a Kubernetes namespace.
#[derive(Clone)]
pub struct KubeStore {
    client: kube::Client,
    namespace: String,
    cluster: String,
    /// The pod the infos this process publishes belong to.
    owner: Option<OwnerReference>,
    timeout: Duration,
}

impl KubeStore {
    /// Connects as `options` say and checks that the namespace can be read.
    pub async fn connect(cluster: &str, options: &KubeOptions) -> Result<KubeStore, StoreError> {
        if !names::valid_name_part(cluster) {
            return Err(StoreError::Refused(format!(
                "cluster name {cluster:?} cannot name Kubernetes objects: use at most 40 lowercase letters, digits and '-', starting and ending with a letter or digit"
            )));
        }
        let (client, namespace) = client::connect(options).await?;
        let mut store = KubeStore {
            client,
            namespace,
            cluster: cluster.to_string(),
            owner: None,
            timeout: options.timeout,
        };
        // One read proves the API server answers and lets us read here.
        store
            .bounded(
                "get configmaps",
                store.configmaps().get_opt(&store.cluster_data_name()),
            )
            .await?;
        if let Some(pod) = &options.pod_name {
            store.owner = store.pod_owner(pod).await;
        }
        Ok(store)
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn configmaps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn cluster_data_name(&self) -> String {
        names::cluster_data(&self.cluster)
    }

    fn cluster_selector(&self) -> String {
        format!("{}={}", names::CLUSTER_LABEL, self.cluster)
    }

    /// The owner reference to our pod, so that our infos are deleted with it. Without
    /// permission to read pods the infos simply have no owner: they still expire.
    async fn pod_owner(&self, pod: &str) -> Option<OwnerReference> {
        let pods: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(self.client.clone(), &self.namespace);
        match self.bounded("get pods", pods.get(pod)).await {
            Ok(found) => Some(OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: pod.to_string(),
                uid: found.metadata.uid.unwrap_or_default(),
                ..Default::default()
            }),
            Err(e) => {
                tracing::warn!(pod, error = %e, "cannot read our pod: our infos will not be deleted with it, only expire");
                None
            }
        }
    }

    async fn create_cluster_data(&self, value: String) -> Result<Revision, StoreError> {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.cluster_data_name()),
                labels: Some(BTreeMap::from([(
                    names::CLUSTER_LABEL.to_string(),
                    self.cluster.clone(),
                )])),
                annotations: Some(BTreeMap::from([(
                    names::CLUSTER_DATA_ANNOTATION.to_string(),
                    value,
                )])),
                ..Default::default()
            },
            ..Default::default()
        };
        // A 409 here is AlreadyExists: someone created it meanwhile.
        let created = self
            .bounded(
                "create configmaps",
                self.configmaps().create(&PostParams::default(), &cm),
            )
            .await?;
        revision_of(&created.metadata)
    }

    /// Sets the cluster data annotation, only if the ConfigMap is still at `precondition`
    /// when one is given (the API server answers 409 otherwise). None: there is no
    /// ConfigMap.
    async fn patch_cluster_data(
        &self,
        value: &str,
        precondition: Option<&str>,
    ) -> Result<Option<Revision>, StoreError> {
        let mut metadata = serde_json::json!({
            "labels": { names::CLUSTER_LABEL: self.cluster },
            "annotations": { names::CLUSTER_DATA_ANNOTATION: value },
        });
        if let Some(rv) = precondition {
            metadata["resourceVersion"] = rv.into();
        }
        let patch = serde_json::json!({ "metadata": metadata });
        let patched = self
            .bounded_found(
                "patch configmaps",
                self.configmaps().patch(
                    &self.cluster_data_name(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                ),
            )
            .await?;
        patched.map(|cm| revision_of(&cm.metadata)).transpose()
    }

    /// [`KubeStore::bounded`], with 404 Not Found as `None`.
    async fn bounded_found<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<Option<T>, StoreError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(timed_out(self.timeout, what)),
            Ok(Ok(found)) => Ok(Some(found)),
            Ok(Err(kube::Error::Api(status))) if status.is_not_found() => Ok(None),
            Ok(Err(e)) => Err(store_error(e, what)),
        }
    }

    /// Bounds a request by the store timeout and turns the API server's refusals into
    /// errors that say what to fix. `what` names the permission the request needs.
    async fn bounded<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, StoreError> {
        bounded(self.timeout, what, fut).await
    }
}

async fn bounded<T>(
    timeout: Duration,
    what: &str,
    fut: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| timed_out(timeout, what))?
        .map_err(|e| store_error(e, what))
}

fn timed_out(timeout: Duration, what: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "the API server did not answer within {timeout:?} ({what})"
    ))
}

/// What an API server's answer means to the store's callers.
fn store_error(e: kube::Error, what: &str) -> StoreError {
    match e {
        // A stale resourceVersion (Conflict) and a create that another client won
        // (AlreadyExists) are both a lost compare-and-swap.
        kube::Error::Api(status) if status.code == 409 => StoreError::Conflict,
        kube::Error::Api(status) if status.is_forbidden() => StoreError::Refused(format!(
            "{}: the service account needs RBAC permission to {what} in this namespace (see docs/kubernetes.md, RBAC)",
            status.message
        )),
        kube::Error::Api(status) if status.code == 401 => StoreError::Refused(format!(
            "{}: the API server does not accept our credentials (token, client certificate)",
            status.message
        )),
        kube::Error::Api(status) if status.code == 413 || status.code == 422 => {
            StoreError::Refused(status.message.clone())
        }
        kube::Error::Api(status) => StoreError::Unavailable(format!(
            "{} ({} {})",
            status.message, status.code, status.reason
        )),
        other => StoreError::Unavailable(stolon_store::describe_error(&other)),
    }
}

fn annotation(meta: &ObjectMeta, key: &str) -> Option<String> {
    meta.annotations.as_ref()?.get(key).cloned()
}

fn revision_of(meta: &ObjectMeta) -> Result<Revision, StoreError> {
    meta.resource_version.clone().map(Revision).ok_or_else(|| {
        StoreError::Corrupt("the API server answered without a resourceVersion".into())
    })
}

/// The cluster data as an annotation value, refused before the write when the API server
/// would refuse it (every annotation of an object together has 256 KiB).
fn cluster_data_value(bytes: Vec<u8>) -> Result<String, StoreError> {
    let value = String::from_utf8(bytes)
        .map_err(|_| StoreError::Corrupt("cluster data is not UTF-8".into()))?;
    let room = names::ANNOTATIONS_LIMIT - names::CLUSTER_DATA_ANNOTATION.len();
    if value.len() > room {
        return Err(StoreError::Refused(format!(
            "the cluster data is {} bytes, more than the {room} a ConfigMap annotation can hold (Kubernetes allows 256 KiB of annotations per object): remove keepers that are gone (stolonctl removekeeper) or shorten the spec",
            value.len()
        )));
    }
    Ok(value)
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// Whether a Lease's holder renewed it within its duration, by the wall clock: Kubernetes
/// nodes keep their clocks in step, and every component reads the same times.
fn lease_is_live(spec: &LeaseSpec) -> bool {
    let (Some(renewed), Some(duration)) = (&spec.renew_time, spec.lease_duration_seconds) else {
        return false;
    };
    let expires = renewed.0 + Duration::from_secs(u64::try_from(duration).unwrap_or(0));
    expires > Timestamp::now()
}

#[async_trait]
impl Store for KubeStore {
    async fn get_cluster_data(&self) -> Result<Option<(Vec<u8>, Revision)>, StoreError> {
        let found = self
            .bounded(
                "get configmaps",
                self.configmaps().get_opt(&self.cluster_data_name()),
            )
            .await?;
        let Some(cm) = found else {
            return Ok(None);
        };
        match annotation(&cm.metadata, names::CLUSTER_DATA_ANNOTATION) {
            Some(value) => Ok(Some((value.into_bytes(), revision_of(&cm.metadata)?))),
            None => Ok(None),
        }
    }

    async fn put_cluster_data(
        &self,
        bytes: Vec<u8>,
        expect: Expect,
    ) -> Result<Revision, StoreError> {
        let value = cluster_data_value(bytes)?;
        // The resourceVersion the write must find, if any.
        let precondition = match expect {
            Expect::Revision(rev) => Some(rev.0),
            Expect::Anything => None,
            Expect::Absent => {
                let name = self.cluster_data_name();
                match self
                    .bounded("get configmaps", self.configmaps().get_opt(&name))
                    .await?
                {
                    None => return self.create_cluster_data(value).await,
                    Some(cm)
                        if annotation(&cm.metadata, names::CLUSTER_DATA_ANNOTATION).is_some() =>
                    {
                        return Err(StoreError::Conflict)
                    }
                    // A ConfigMap made by someone else, without cluster data: ours to fill.
                    Some(cm) => Some(revision_of(&cm.metadata)?.0),
                }
            }
        };
        match self
            .patch_cluster_data(&value, precondition.as_deref())
            .await?
        {
            Some(rev) => Ok(rev),
            // The object whose revision was read is gone.
            None if precondition.is_some() => Err(StoreError::Conflict),
            None => self.create_cluster_data(value).await,
        }
    }

    async fn publish(
        &self,
        kind: InfoKind,
        uid: &str,
        bytes: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let value = String::from_utf8(bytes)
            .map_err(|_| StoreError::Corrupt("info is not UTF-8".into()))?;
        let name = names::info_lease(&self.cluster, kind, uid);
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([
                    (names::CLUSTER_LABEL.to_string(), self.cluster.clone()),
                    (
                        names::COMPONENT_LABEL.to_string(),
                        names::component(kind).to_string(),
                    ),
                ])),
                annotations: Some(BTreeMap::from([(
                    names::STATUS_ANNOTATION.to_string(),
                    value,
                )])),
                owner_references: self.owner.clone().map(|o| vec![o]),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(uid.to_string()),
                lease_duration_seconds: Some(ttl.as_secs().max(1) as i32),
                renew_time: Some(now()),
                ..Default::default()
            }),
        };
        let api = self.leases();
        // Only this component writes its Lease: a merge patch needs no precondition.
        let patch = serde_json::to_value(&lease).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let patched = self
            .bounded_found(
                "patch leases",
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .await?;
        if patched.is_some() {
            return Ok(());
        }
        match self
            .bounded("create leases", api.create(&PostParams::default(), &lease))
            .await
        {
            // Created by our own earlier attempt whose answer was lost.
            Ok(_) | Err(StoreError::Conflict) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn infos(&self, kind: InfoKind) -> Result<Vec<Vec<u8>>, StoreError> {
        let selector = format!(
            "{},{}={}",
            self.cluster_selector(),
            names::COMPONENT_LABEL,
            names::component(kind)
        );
        let list = self
            .bounded(
                "list leases",
                self.leases().list(&ListParams::default().labels(&selector)),
            )
            .await?;
        Ok(list
            .items
            .iter()
            .filter(|lease| lease.spec.as_ref().is_some_and(lease_is_live))
            .filter_map(|lease| annotation(&lease.metadata, names::STATUS_ANNOTATION))
            .map(String::into_bytes)
            .collect())
    }

    async fn watch(&self, scope: WatchScope) -> Result<mpsc::Receiver<()>, StoreError> {
        watch::start(self, scope).await
    }

    async fn campaign(&self, candidate: &str, ttl: Duration) -> Result<Leadership, StoreError> {
        election::campaign(self, candidate, ttl).await
    }

    async fn leader(&self) -> Result<Option<String>, StoreError> {
        election::leader(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api_error(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Status::failure("refused", reason).with_code(code).boxed())
    }

    #[test]
    fn a_lost_race_is_a_conflict_whether_stale_or_already_created() {
        for reason in ["Conflict", "AlreadyExists"] {
            let error = store_error(api_error(409, reason), "create leases");
            assert!(matches!(error, StoreError::Conflict), "{reason}: {error}");
        }
    }

    #[test]
    fn refusals_name_their_cause_and_other_failures_stay_short() {
        let StoreError::Refused(forbidden) =
            store_error(api_error(403, "Forbidden"), "patch leases")
        else {
            panic!("403 is a refusal");
        };
        assert!(
            forbidden.contains("RBAC permission to patch leases"),
            "{forbidden}"
        );
        let StoreError::Unavailable(failed) =
            store_error(api_error(503, "ServiceUnavailable"), "get configmaps")
        else {
            panic!("503 is a passing failure");
        };
        assert_eq!(failed, "refused (503 ServiceUnavailable)");
    }
}
