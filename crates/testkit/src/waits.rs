//! Waiting on a test cluster: for the proxies to route to a primary or a standby leader,
//! for standbys to stream, for an old primary to rejoin as a standby; the first of them
//! for either harness ([`Cluster`]).

use crate::{wait_until, TestCluster};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use stolon_cluster::{ClusterData, DbRole, KeeperUid};

/// What the waits read of a running cluster, whichever harness runs it: processes on
/// 127.0.0.1 ([`TestCluster`]) or hosts of their own in network namespaces
/// ([`crate::NetCluster`]).
pub trait Cluster {
    /// The cluster data, if the store can be read and holds some.
    fn cluster_data(&self) -> impl Future<Output = Option<ClusterData>>;
    fn keeper_index(&self, uid: &KeeperUid) -> usize;
    /// Where clients reach the first proxy, if there is one.
    fn first_proxy(&self) -> Option<SocketAddr>;
}

/// Waits until the proxies route to a primary: the cluster data points them at a db with
/// the master role, enables some proxy, and the first proxy serves a query. Returns its
/// keeper's index.
pub async fn wait_for_master(cluster: &impl Cluster, timeout: Duration) -> usize {
    let uid = wait_until("the proxies to route to a primary", timeout, || async {
        let cd = cluster.cluster_data().await?;
        let db = cd.proxied_db()?;
        if db.spec.role != DbRole::Master || cd.proxy.spec.enabled_proxies.is_empty() {
            return None;
        }
        if let Some(proxy) = cluster.first_proxy() {
            crate::serves_at(proxy).await.then_some(())?;
        }
        Some(db.spec.keeper_uid.clone())
    })
    .await;
    cluster.keeper_index(&uid)
}

impl Cluster for TestCluster {
    fn cluster_data(&self) -> impl Future<Output = Option<ClusterData>> {
        TestCluster::cluster_data(self)
    }

    fn keeper_index(&self, uid: &KeeperUid) -> usize {
        TestCluster::keeper_index(self, uid)
    }

    fn first_proxy(&self) -> Option<SocketAddr> {
        let (port, _) = self.proxies.first()?;
        Some(SocketAddr::from(([127, 0, 0, 1], *port)))
    }
}

impl TestCluster {
    /// Waits until the proxies route to a primary (see [`wait_for_master`]), and returns its
    /// keeper's index.
    pub async fn wait_for_master(&self, timeout: Duration) -> usize {
        wait_for_master(self, timeout).await
    }

    /// Waits until the proxies route to a primary on another keeper than `old`, and the
    /// first proxy serves a query: the cluster data names the route before a proxy has
    /// read it.
    pub async fn wait_for_new_master(&self, old: usize, timeout: Duration) -> usize {
        let old_uid = self.keepers[old].uid.clone();
        let uid = wait_until("the proxies to route to a new primary", timeout, || async {
            let cd = self.cluster_data().await?;
            let db = cd.proxied_db()?;
            if db.spec.role != DbRole::Master || db.spec.keeper_uid == old_uid {
                return None;
            }
            if let Some(proxy) = Cluster::first_proxy(self) {
                crate::serves_at(proxy).await.then_some(())?;
            }
            Some(db.spec.keeper_uid.clone())
        })
        .await;
        self.keeper_index(&uid)
    }

    /// Waits until keeper `i` (an old primary) owns a healthy standby db, failing at once if
    /// its postgres is ever seen running as a primary meanwhile.
    pub async fn wait_rejoined_never_primary(&self, i: usize, timeout: Duration) {
        let uid = self.keepers[i].uid.clone();
        let port = self.keepers[i].pg_port;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(client) = crate::connect(port).await {
                let recovery: Option<bool> = client
                    .query_one("select pg_is_in_recovery()", &[])
                    .await
                    .ok()
                    .map(|r| r.get(0));
                assert_ne!(
                    recovery,
                    Some(false),
                    "keeper{i}'s postgres ran as a primary"
                );
            }
            let rejoined = self.cluster_data().await.is_some_and(|cd| {
                cd.db_of_keeper(&uid).is_some_and(|db| {
                    db.spec.role == DbRole::Standby && db.status.healthy && db.status.in_recovery
                })
            });
            if rejoined {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "keeper{i} did not rejoin as a standby within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `n` standbys follow the primary, have applied their spec and are healthy.
    pub async fn wait_for_standbys(&self, n: usize, timeout: Duration) {
        wait_until(&format!("{n} healthy standbys"), timeout, || async {
            let cd = self.cluster_data().await?;
            let healthy = cd
                .dbs
                .values()
                .filter(|db| {
                    db.spec.role == DbRole::Standby
                        && db.status.healthy
                        && db.status.in_recovery
                        && db.status.current_generation == db.generation
                })
                .count();
            (healthy >= n).then_some(())
        })
        .await
    }

    /// Waits until the proxies of a standby cluster route to a standby leader other than
    /// keeper `not` (any with None) that follows the remote, has applied its spec and
    /// answers through the first proxy in recovery; returns its keeper's index.
    pub async fn wait_for_standby_leader(&self, not: Option<usize>, timeout: Duration) -> usize {
        let not = not.map(|i| self.keepers[i].uid.clone());
        let uid = wait_until(
            "the proxies to route to a standby leader",
            timeout,
            || async {
                let cd = self.cluster_data().await?;
                let db = cd.proxied_db()?;
                let ready = db.spec.follows_remote()
                    && db.status.in_recovery
                    && db.status.current_generation == db.generation
                    && Some(&db.spec.keeper_uid) != not.as_ref()
                    && !cd.proxy.spec.enabled_proxies.is_empty();
                if !ready {
                    return None;
                }
                let (port, _) = self.proxies.first()?;
                let client = crate::connect(*port).await.ok()?;
                let row = client
                    .query_one("select pg_is_in_recovery(), inet_server_port()", &[])
                    .await
                    .ok()?;
                let leader_port = self.keepers[self.keeper_index(&db.spec.keeper_uid)].pg_port;
                (row.get::<_, bool>(0) && row.get::<_, i32>(1) == i32::from(leader_port))
                    .then(|| db.spec.keeper_uid.clone())
            },
        )
        .await;
        self.keeper_index(&uid)
    }
}
