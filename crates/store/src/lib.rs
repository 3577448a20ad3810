//! The store: the only channel between keepers, sentinels, proxies and stolonctl.
//!
//! This crate owns the [`Store`] trait (cluster data with compare-and-swap on a revision,
//! lease-bound component infos, sentinel leader election, change notification), the typed
//! helpers every component uses on top of it, an in-memory [`MemStore`] for unit tests, and
//! the [`conformance`] suite that every backend must pass.

pub mod conformance;
mod mem;

pub use mem::MemStore;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;
use stolon_cluster::{ClusterData, ClusterView, DecodeError, ValidSpec};
use tokio::sync::{mpsc, watch};

/// A store's version of the cluster data document, opaque (etcd's mod revision, Kubernetes'
/// resourceVersion): compare-and-swap compares it for equality, nothing else does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision(pub String);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The cluster data changed since it was read; read again and recompute.
    #[error("cluster data was modified concurrently")]
    Conflict,
    /// The store could not be reached or did not answer in time.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered with a value we refuse to act on.
    #[error("corrupt store value: {0}")]
    Corrupt(String),
    /// The store refused the request (permissions, a value too large for it): asking again
    /// will not help until that is fixed. The message says what to fix.
    #[error("store refused the request: {0}")]
    Refused(String),
    /// How to reach the store makes no sense (flags that contradict each other): no retry
    /// can help.
    #[error("store misconfigured: {0}")]
    Misconfigured(String),
}

/// An error with its causes, in one line: client libraries' own words ("transport error",
/// "client error (Connect)") say nothing of a refused certificate or an unreachable
/// server, their sources do.
pub fn describe_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !line.contains(&cause_text) {
            line = format!("{line}: {cause_text}");
        }
        source = cause.source();
    }
    line.replace('\n', " ")
}

/// What a cluster data write expects to find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Only write if there is no cluster data yet.
    Absent,
    /// Only write if the stored document is still at this revision.
    Revision(Revision),
    /// Overwrite whatever is there (operator commands that say so explicitly).
    Anything,
}

/// The kinds of info components publish under leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfoKind {
    Keeper,
    Sentinel,
    Proxy,
}

impl InfoKind {
    pub fn dir(self) -> &'static str {
        match self {
            InfoKind::Keeper => "keepers/info",
            InfoKind::Sentinel => "sentinels/info",
            InfoKind::Proxy => "proxies/info",
        }
    }
}

/// What a watch reports changes of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchScope {
    /// Only the cluster data document.
    ClusterData,
    /// Every key of the cluster, infos included.
    Everything,
}

/// Held while a candidate leads. `is_leader` turns false, and stays false, when the
/// leadership is lost (the lease could not be renewed in time); dropping it resigns.
pub struct Leadership {
    pub lost: watch::Receiver<bool>,
    pub resign: Option<Box<dyn FnOnce() + Send>>,
}

impl Leadership {
    pub fn is_leader(&self) -> bool {
        !*self.lost.borrow()
    }

    /// Completes when the leadership is lost.
    pub async fn lost(&mut self) {
        while !*self.lost.borrow() {
            if self.lost.changed().await.is_err() {
                return;
            }
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if let Some(resign) = self.resign.take() {
            resign();
        }
    }
}

/// One cluster's view of a store backend. Every key lives under the cluster's own prefix.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The raw cluster data document and its revision, if there is one.
    async fn get_cluster_data(&self) -> Result<Option<(Vec<u8>, Revision)>, StoreError>;

    /// Writes the cluster data if `expect` holds, returning the new revision; otherwise
    /// [`StoreError::Conflict`] and nothing changes.
    async fn put_cluster_data(
        &self,
        bytes: Vec<u8>,
        expect: Expect,
    ) -> Result<Revision, StoreError>;

    /// Publishes a component's info; it disappears by itself `ttl` after the last publish.
    async fn publish(
        &self,
        kind: InfoKind,
        uid: &str,
        bytes: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), StoreError>;

    /// Every live info of a kind.
    async fn infos(&self, kind: InfoKind) -> Result<Vec<Vec<u8>>, StoreError>;

    /// A channel that receives a message after a change in `scope`. It closes when the
    /// watch breaks; callers then watch again.
    async fn watch(&self, scope: WatchScope) -> Result<mpsc::Receiver<()>, StoreError>;

    /// Waits until `candidate` leads the sentinels. The leadership lasts while the store
    /// can renew it within `ttl`.
    async fn campaign(&self, candidate: &str, ttl: Duration) -> Result<Leadership, StoreError>;

    /// The current leader's candidate name, if any.
    async fn leader(&self) -> Result<Option<String>, StoreError>;
}

/// Cluster data as read, decoded and validated, with the revision to write back against.
#[derive(Debug, Clone)]
pub struct ReadClusterData {
    pub data: ClusterData,
    pub spec: ValidSpec,
    pub revision: Revision,
}

/// Reads and decodes the cluster data; an undecodable document is [`StoreError::Corrupt`]
/// so that no caller ever acts on it.
pub async fn read_cluster_data(store: &dyn Store) -> Result<Option<ReadClusterData>, StoreError> {
    let Some((bytes, revision)) = store.get_cluster_data().await? else {
        return Ok(None);
    };
    let (data, spec) =
        ClusterData::decode(&bytes).map_err(|e: DecodeError| StoreError::Corrupt(e.to_string()))?;
    Ok(Some(ReadClusterData {
        data,
        spec,
        revision,
    }))
}

/// [`read_cluster_data`] as the daemons' machines take it: the view, shared, and the revision
/// to write back against.
pub async fn read_cluster_view(
    store: &dyn Store,
) -> Result<Option<(std::sync::Arc<ClusterView>, Revision)>, StoreError> {
    Ok(read_cluster_data(store).await?.map(|read| {
        let view = ClusterView {
            data: read.data,
            spec: read.spec,
        };
        (std::sync::Arc::new(view), read.revision)
    }))
}

pub async fn publish_info<T: Serialize + Sync>(
    store: &dyn Store,
    kind: InfoKind,
    uid: &str,
    info: &T,
    ttl: Duration,
) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(info).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    store.publish(kind, uid, bytes, ttl).await
}

/// Every decodable info of a kind. An undecodable one (another version, garbage) is
/// skipped with a warning: one bad publisher must not blind the reader to the others.
pub async fn read_infos<T: DeserializeOwned>(
    store: &dyn Store,
    kind: InfoKind,
) -> Result<Vec<T>, StoreError> {
    let raw = store.infos(kind).await?;
    Ok(raw
        .iter()
        .filter_map(|bytes| match serde_json::from_slice(bytes) {
            Ok(info) => Some(info),
            Err(error) => {
                tracing::warn!(kind = kind.dir(), %error, "ignoring undecodable info");
                None
            }
        })
        .collect())
}

/// Waits for the next change in a scope, or for a timeout, keeping one watch open across
/// calls and opening a new one when it breaks.
pub struct ChangeWaiter {
    scope: WatchScope,
    changes: Option<mpsc::Receiver<()>>,
}

impl ChangeWaiter {
    pub fn new(scope: WatchScope) -> ChangeWaiter {
        ChangeWaiter {
            scope,
            changes: None,
        }
    }

    /// Returns true after a change, false after `max`. Without a watch it opens one and
    /// returns true at once: what changed before it was open is unknown.
    pub async fn wait(&mut self, store: &dyn Store, max: Duration) -> bool {
        let Some(changes) = self.changes.as_mut() else {
            return match store.watch(self.scope).await {
                Ok(changes) => {
                    self.changes = Some(changes);
                    true
                }
                Err(_) => {
                    tokio::time::sleep(max).await;
                    false
                }
            };
        };
        tokio::select! {
            _ = tokio::time::sleep(max) => false,
            changed = changes.recv() => {
                if changed.is_none() {
                    self.changes = None;
                }
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::describe_error;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn an_error_is_told_with_its_causes_in_one_line() {
        let e = Layer(
            "client error (Connect)",
            Some(Box::new(Layer(
                "Connect",
                Some(Box::new(Layer("invalid peer\ncertificate", None))),
            ))),
        );
        assert_eq!(
            describe_error(&e),
            "client error (Connect): invalid peer certificate"
        );
    }
}
