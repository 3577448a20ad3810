//! Change notification: API server watches of the cluster data ConfigMap and, for
//! [`WatchScope::Everything`], of the cluster's Leases.
//!
//! Each watch starts from a fresh list's resourceVersion, so it reports only what changes
//! after it opened. When a watch ends (the server's timeout, 410 Gone, a broken connection)
//! the channel closes and the caller opens a new one, which lists again: nothing is missed
//! and nothing loops, since a caller waits before it watches again after a failure.

use crate::{bounded, names, KubeStore};
use futures::{Stream, StreamExt};
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::Api;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::pin::Pin;
use stolon_store::{StoreError, WatchScope};
use tokio::sync::mpsc;

/// How long the API server keeps one watch open before it ends it.
const WATCH_SECONDS: u32 = 290;

type Changes = Pin<Box<dyn Stream<Item = Result<(), ()>> + Send>>;

pub(crate) async fn start(
    store: &KubeStore,
    scope: WatchScope,
) -> Result<mpsc::Receiver<()>, StoreError> {
    let cluster_data = format!("metadata.name={}", names::cluster_data(&store.cluster));
    let mut streams: Vec<Changes> = vec![
        open(
            store,
            store.configmaps(),
            ListParams::default().fields(&cluster_data),
            WatchParams::default().fields(&cluster_data),
        )
        .await?,
    ];
    if scope == WatchScope::Everything {
        let selector = store.cluster_selector();
        streams.push(
            open(
                store,
                store.leases(),
                ListParams::default().labels(&selector),
                WatchParams::default().labels(&selector),
            )
            .await?,
        );
    }
    let mut merged = futures::stream::select_all(streams);
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                event = merged.next() => match event {
                    Some(Ok(())) => {
                        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(()) {
                            return;
                        }
                    }
                    // One of the watches ended: the caller watches anew.
                    Some(Err(())) | None => return,
                },
                _ = tx.closed() => return,
            }
        }
    });
    Ok(rx)
}

/// Lists to learn the current resourceVersion, then watches from it. The stream yields
/// `Ok` for each change and one `Err` when the watch ends.
async fn open<K>(
    store: &KubeStore,
    api: Api<K>,
    list: ListParams,
    watch: WatchParams,
) -> Result<Changes, StoreError>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let listed = bounded(store.timeout, "list", api.list_metadata(&list)).await?;
    let version = listed.metadata.resource_version.unwrap_or_default();
    let events = bounded(
        store.timeout,
        "watch",
        api.watch(&watch.timeout(WATCH_SECONDS).disable_bookmarks(), &version),
    )
    .await?;
    let changes = events
        .map(|event| match event {
            Ok(WatchEvent::Added(_) | WatchEvent::Modified(_) | WatchEvent::Deleted(_)) => {
                Some(Ok(()))
            }
            Ok(WatchEvent::Bookmark(_)) => None,
            Ok(WatchEvent::Error(status)) => {
                tracing::debug!(%status, "watch ended by the API server");
                Some(Err(()))
            }
            Err(e) => {
                tracing::debug!(error = %e, "watch broke");
                Some(Err(()))
            }
        })
        .filter_map(futures::future::ready)
        .chain(futures::stream::once(futures::future::ready(Err(()))));
    Ok(Box::pin(changes))
}
