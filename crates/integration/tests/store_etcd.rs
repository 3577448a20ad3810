//! The store conformance suite against a real etcd.

use std::time::Duration;
use stolon_store_etcd::EtcdStore;
use stolon_testkit::EtcdServer;

#[tokio::test(flavor = "multi_thread")]
async fn etcd_store_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdServer::start(dir.path(), dir.path());
    let endpoints = vec![etcd.endpoint.clone()];
    let connect = || {
        EtcdStore::connect(
            &endpoints,
            "stolon/cluster",
            "conformance",
            Duration::from_secs(5),
        )
    };
    let a = connect().await.unwrap();
    let b = connect().await.unwrap();
    stolon_store::conformance::run_all(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_store_reports_unavailable_when_etcd_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = EtcdServer::start(dir.path(), dir.path());
    let endpoints = vec![etcd.endpoint.clone()];
    let store = EtcdStore::connect(&endpoints, "stolon/cluster", "down", Duration::from_secs(2))
        .await
        .unwrap();
    etcd.process.kill();
    let err = stolon_store::Store::get_cluster_data(&store)
        .await
        .unwrap_err();
    assert!(
        matches!(err, stolon_store::StoreError::Unavailable(_)),
        "{err}"
    );
}
