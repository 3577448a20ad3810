//! The Kubernetes store against a real kube-apiserver: the conformance suite, and what it
//! does with refusals, bad values and broken watches.

use std::time::Duration;
use stolon_store::{Expect, InfoKind, Store, StoreError, WatchScope};
use stolon_store_k8s::{KubeOptions, KubeStore};
use stolon_testkit::{EtcdServer, KubeApiServer, ADMIN_USER};

struct Server {
    _etcd: EtcdServer,
    api: KubeApiServer,
    _dir: tempfile::TempDir,
}

fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdServer::start(dir.path(), dir.path());
    let api = KubeApiServer::start(&etcd, dir.path(), dir.path());
    Server {
        _etcd: etcd,
        api,
        _dir: dir,
    }
}

fn options(server: &Server, user: &str) -> KubeOptions {
    KubeOptions {
        kubeconfig: Some(server.api.kubeconfig(user, "default")),
        timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

async fn store(server: &Server, cluster: &str) -> KubeStore {
    KubeStore::connect(cluster, &options(server, ADMIN_USER))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn kube_store_passes_the_conformance_suite() {
    let server = start();
    let a = store(&server, "conformance").await;
    let b = store(&server, "conformance").await;
    stolon_store::conformance::run_all(&a, &b).await;
    // Stolon's layout, as kubectl shows it.
    let out = server.api.kubectl(
        "default",
        &[
            "get",
            "configmap",
            "stolon-cluster-conformance",
            "-o",
            "jsonpath={.metadata.annotations.stolon-clusterdata}",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "four");
    let out = server.api.kubectl(
        "default",
        &["get", "leases", "-l", "stolon-cluster=conformance"],
    );
    let leases = String::from_utf8_lossy(&out.stdout);
    assert!(
        leases.contains("stolon-cluster-conformance-sentinel-leader"),
        "{leases}"
    );
    assert!(leases.contains("stolon-proxy-conformance-p1"), "{leases}");
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_and_bad_values_are_clear_errors_that_change_nothing() {
    let server = start();
    // A user with no RBAC at all: the error says what to grant.
    let err = KubeStore::connect("c1", &options(&server, "nobody"))
        .await
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Refused(_)), "{text}");
    assert!(
        text.contains("RBAC") && text.contains("get configmaps"),
        "{text}"
    );

    let store = store(&server, "c1").await;
    // Cluster data too large for an annotation: refused before anything is written.
    store
        .put_cluster_data(b"{}".to_vec(), Expect::Absent)
        .await
        .unwrap();
    let big = vec![b'x'; 256 * 1024];
    let err = store
        .put_cluster_data(big, Expect::Anything)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Refused(m) if m.contains("256 KiB")),
        "{err}"
    );
    assert_eq!(store.get_cluster_data().await.unwrap().unwrap().0, b"{}");

    // Garbage in the annotation (written by hand): read, and refused as cluster data.
    let out = server.api.kubectl(
        "default",
        &[
            "annotate",
            "--overwrite",
            "configmap",
            "stolon-cluster-c1",
            "stolon-clusterdata=not json",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let err = stolon_store::read_cluster_data(&store).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");

    // An invalid cluster name cannot name the objects.
    let err = KubeStore::connect("Bad_Name", &options(&server, ADMIN_USER))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("cluster name"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn infos_belong_to_their_pod_and_expire_without_it() {
    let server = start();
    server.api.apply(
        "default",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: keeper-0\nspec:\n  containers:\n  - name: keeper\n    image: stolon-rs\n",
    );
    let mut opts = options(&server, ADMIN_USER);
    opts.pod_name = Some("keeper-0".into());
    let store = KubeStore::connect("c1", &opts).await.unwrap();
    store
        .publish(
            InfoKind::Keeper,
            "keeper0",
            b"{}".to_vec(),
            Duration::from_secs(3),
        )
        .await
        .unwrap();
    let out = server.api.kubectl(
        "default",
        &[
            "get",
            "lease",
            "stolon-keeper-c1-keeper0",
            "-o",
            "jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Pod/keeper-0");
    assert_eq!(store.infos(InfoKind::Keeper).await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        store.infos(InfoKind::Keeper).await.unwrap().is_empty(),
        "an info not renewed within its ttl no longer counts"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_ends_when_the_api_server_goes_and_works_again_after() {
    let mut server = start();
    let store = store(&server, "c1").await;
    let mut changes = store.watch(WatchScope::Everything).await.unwrap();
    server.api.process.kill();
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while changes.recv().await.is_some() {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the watch must end when its connection breaks"
    );
    assert!(store.watch(WatchScope::Everything).await.is_err());
    server.api.restart();
    let mut changes = store.watch(WatchScope::Everything).await.unwrap();
    store
        .publish(
            InfoKind::Proxy,
            "p1",
            b"{}".to_vec(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), changes.recv())
        .await
        .expect("a new watch sees changes")
        .expect("open");
}

/// The API server's certificate is verified with the kubeconfig's CA, as kubectl does: one
/// signed by another CA is refused, and the error says so in one line.
#[tokio::test(flavor = "multi_thread")]
async fn an_api_server_of_a_ca_not_trusted_is_refused() {
    let server = start();
    let other = stolon_testkit::tls::TestCa::new(server._dir.path(), "other");
    let trusted = options(&server, ADMIN_USER);
    let kubeconfig = trusted.kubeconfig.clone().unwrap();
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    let untrusting = server._dir.path().join("untrusting.kubeconfig");
    let ca_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("certificate-authority:"))
        .unwrap();
    std::fs::write(
        &untrusting,
        text.replace(
            ca_line,
            &format!("    certificate-authority: {}", other.cert.display()),
        ),
    )
    .unwrap();
    let refused = async {
        let store = KubeStore::connect(
            "untrusting",
            &KubeOptions {
                kubeconfig: Some(untrusting),
                ..trusted.clone()
            },
        )
        .await?;
        store.get_cluster_data().await.map(|_| ())
    };
    let e = refused.await.expect_err("a server of a CA not trusted");
    eprintln!("{e}");
    let text = e.to_string();
    assert!(text.contains("UnknownIssuer"), "{text}");
    assert!(!text.contains('\n'), "{text}");
    store(&server, "trusting")
        .await
        .get_cluster_data()
        .await
        .unwrap();
}
