use crate::{Expect, InfoKind, Leadership, Revision, Store, StoreError, WatchScope};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

/// An in-memory store for unit tests and simulation. Time is tokio's, so a test that pauses
/// tokio's clock controls lease expiry.
#[derive(Clone, Default)]
pub struct MemStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    leader_changed: Notify,
}

#[derive(Default)]
struct State {
    cluster_data: Option<(Vec<u8>, Revision)>,
    /// Counts every change: the revisions this store hands out.
    changes: u64,
    infos: BTreeMap<(&'static str, String), (Vec<u8>, Instant)>,
    leader: Option<(String, u64, watch::Sender<bool>)>,
    terms: u64,
    watchers: Vec<(WatchScope, mpsc::Sender<()>)>,
    unavailable: bool,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// Makes every call fail as if the store were unreachable, or heals it.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.inner.state.lock().unwrap().unavailable = unavailable;
    }

    /// Takes the leadership away from whoever holds it, as a lease expiry would.
    pub fn expire_leader(&self) {
        let mut state = self.inner.state.lock().unwrap();
        if let Some((_, _, lost)) = state.leader.take() {
            let _ = lost.send(true);
        }
        drop(state);
        self.inner.leader_changed.notify_waiters();
    }

    fn state(&self) -> Result<std::sync::MutexGuard<'_, State>, StoreError> {
        let state = self.inner.state.lock().unwrap();
        if state.unavailable {
            return Err(StoreError::Unavailable(
                "memory store set unavailable".into(),
            ));
        }
        Ok(state)
    }
}

impl State {
    fn changed(&mut self, what: WatchScope) {
        self.changes += 1;
        self.watchers.retain(|(scope, w)| {
            if what == WatchScope::Everything && *scope == WatchScope::ClusterData {
                return !w.is_closed();
            }
            match w.try_send(()) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => true,
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }
}

#[async_trait]
impl Store for MemStore {
    async fn get_cluster_data(&self) -> Result<Option<(Vec<u8>, Revision)>, StoreError> {
        Ok(self.state()?.cluster_data.clone())
    }

    async fn put_cluster_data(
        &self,
        bytes: Vec<u8>,
        expect: Expect,
    ) -> Result<Revision, StoreError> {
        let mut state = self.state()?;
        let current = state.cluster_data.as_ref().map(|(_, rev)| rev);
        let ok = match expect {
            Expect::Absent => current.is_none(),
            Expect::Revision(rev) => current == Some(&rev),
            Expect::Anything => true,
        };
        if !ok {
            return Err(StoreError::Conflict);
        }
        state.changed(WatchScope::ClusterData);
        let rev = Revision(state.changes.to_string());
        state.cluster_data = Some((bytes, rev.clone()));
        Ok(rev)
    }

    async fn publish(
        &self,
        kind: InfoKind,
        uid: &str,
        bytes: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut state = self.state()?;
        state
            .infos
            .insert((kind.dir(), uid.to_string()), (bytes, Instant::now() + ttl));
        state.changed(WatchScope::Everything);
        Ok(())
    }

    async fn infos(&self, kind: InfoKind) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut state = self.state()?;
        let now = Instant::now();
        state.infos.retain(|_, (_, expires)| *expires > now);
        Ok(state
            .infos
            .iter()
            .filter(|((dir, _), _)| *dir == kind.dir())
            .map(|(_, (bytes, _))| bytes.clone())
            .collect())
    }

    async fn watch(&self, scope: WatchScope) -> Result<mpsc::Receiver<()>, StoreError> {
        let (tx, rx) = mpsc::channel(1);
        self.state()?.watchers.push((scope, tx));
        Ok(rx)
    }

    async fn campaign(&self, candidate: &str, _ttl: Duration) -> Result<Leadership, StoreError> {
        loop {
            let notified = self.inner.leader_changed.notified();
            {
                let mut state = self.state()?;
                if state.leader.is_none() {
                    state.terms += 1;
                    let term = state.terms;
                    let (tx, rx) = watch::channel(false);
                    state.leader = Some((candidate.to_string(), term, tx));
                    let inner = self.inner.clone();
                    return Ok(Leadership {
                        lost: rx,
                        resign: Some(Box::new(move || {
                            let mut state = inner.state.lock().unwrap();
                            if state.leader.as_ref().is_some_and(|(_, t, _)| *t == term) {
                                state.leader = None;
                            }
                            drop(state);
                            inner.leader_changed.notify_waiters();
                        })),
                    });
                }
            }
            notified.await;
        }
    }

    async fn leader(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .state()?
            .leader
            .as_ref()
            .map(|(name, _, _)| name.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn memstore_passes_the_conformance_suite() {
        let store = MemStore::new();
        crate::conformance::run_all(&store, &store).await;
    }

    #[tokio::test]
    async fn unavailable_store_fails_every_call() {
        let store = MemStore::new();
        store.set_unavailable(true);
        assert!(matches!(
            store.get_cluster_data().await,
            Err(StoreError::Unavailable(_))
        ));
    }
}
