//! The behaviour every store backend must show. Backends run [`run_all`] in their tests,
//! against a real server where there is one.

use crate::{Expect, InfoKind, Store, StoreError, WatchScope};
use std::time::Duration;

/// Runs every check. `a` and `b` are two clients of the same cluster in the same store, so
/// that election and watches are checked across clients.
pub async fn run_all(a: &dyn Store, b: &dyn Store) {
    cluster_data_compare_and_swap(a, b).await;
    infos_expire_after_their_ttl(a).await;
    watch_sees_changes_from_other_clients(a, b).await;
    election_has_one_leader_at_a_time(a, b).await;
}

pub async fn cluster_data_compare_and_swap(a: &dyn Store, b: &dyn Store) {
    assert!(
        a.get_cluster_data().await.unwrap().is_none(),
        "store must start empty"
    );
    let rev1 = a
        .put_cluster_data(b"one".to_vec(), Expect::Absent)
        .await
        .unwrap();
    assert!(
        matches!(
            b.put_cluster_data(b"again".to_vec(), Expect::Absent).await,
            Err(StoreError::Conflict)
        ),
        "create-if-absent must fail when data exists"
    );
    let (bytes, rev) = b.get_cluster_data().await.unwrap().unwrap();
    assert_eq!((bytes.as_slice(), &rev), (b"one".as_slice(), &rev1));
    let rev2 = b
        .put_cluster_data(b"two".to_vec(), Expect::Revision(rev1.clone()))
        .await
        .unwrap();
    assert_ne!(rev2, rev1, "a write must change the revision");
    assert_eq!(b.get_cluster_data().await.unwrap().unwrap().1, rev2);
    assert!(
        matches!(
            a.put_cluster_data(b"stale".to_vec(), Expect::Revision(rev1))
                .await,
            Err(StoreError::Conflict)
        ),
        "a write against a stale revision must be refused"
    );
    assert_eq!(a.get_cluster_data().await.unwrap().unwrap().0, b"two");
    a.put_cluster_data(b"three".to_vec(), Expect::Anything)
        .await
        .unwrap();
    assert_eq!(b.get_cluster_data().await.unwrap().unwrap().0, b"three");
}

pub async fn infos_expire_after_their_ttl(a: &dyn Store) {
    a.publish(
        InfoKind::Keeper,
        "k1",
        b"{}".to_vec(),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    a.publish(
        InfoKind::Proxy,
        "p1",
        b"[]".to_vec(),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(
        a.infos(InfoKind::Keeper).await.unwrap(),
        vec![b"{}".to_vec()]
    );
    assert_eq!(
        a.infos(InfoKind::Proxy).await.unwrap(),
        vec![b"[]".to_vec()]
    );
    // Publishing again keeps the info alive past its first deadline.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.publish(
        InfoKind::Keeper,
        "k1",
        b"{\"n\":2}".to_vec(),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        a.infos(InfoKind::Keeper).await.unwrap(),
        vec![b"{\"n\":2}".to_vec()]
    );
    // Etcd rounds lease expiry to its own ticks: allow it a few seconds.
    let mut gone = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if a.infos(InfoKind::Keeper).await.unwrap().is_empty() {
            gone = true;
            break;
        }
    }
    assert!(
        gone,
        "an info must disappear after its ttl without a new publish"
    );
    assert_eq!(a.infos(InfoKind::Proxy).await.unwrap().len(), 1);
}

pub async fn watch_sees_changes_from_other_clients(a: &dyn Store, b: &dyn Store) {
    let mut everything = a.watch(WatchScope::Everything).await.unwrap();
    let mut cluster_data = a.watch(WatchScope::ClusterData).await.unwrap();
    b.publish(
        InfoKind::Sentinel,
        "s1",
        b"{}".to_vec(),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(10), everything.recv())
        .await
        .expect("watch must report a change made by another client")
        .expect("watch must stay open");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), cluster_data.recv())
            .await
            .is_err(),
        "a cluster data watch must not wake on an info change"
    );
    b.put_cluster_data(b"four".to_vec(), Expect::Anything)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), cluster_data.recv())
        .await
        .expect("cluster data watch must report a cluster data change")
        .expect("watch must stay open");
}

pub async fn election_has_one_leader_at_a_time(a: &dyn Store, b: &dyn Store) {
    let ttl = Duration::from_secs(3);
    assert_eq!(
        a.leader().await.unwrap(),
        None,
        "no one has campaigned yet: no leader, and no error"
    );
    let lead_a = a.campaign("sentinel-a", ttl).await.unwrap();
    assert!(lead_a.is_leader());
    assert_eq!(b.leader().await.unwrap().as_deref(), Some("sentinel-a"));
    let campaign_b = b.campaign("sentinel-b", ttl);
    tokio::pin!(campaign_b);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut campaign_b)
            .await
            .is_err(),
        "a second candidate must not lead while the first does"
    );
    drop(lead_a);
    let lead_b = tokio::time::timeout(Duration::from_secs(10), campaign_b)
        .await
        .expect("the second candidate must lead once the first resigns")
        .unwrap();
    assert!(lead_b.is_leader());
    assert_eq!(a.leader().await.unwrap().as_deref(), Some("sentinel-b"));
}
