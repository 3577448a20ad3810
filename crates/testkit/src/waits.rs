//! Waiting on a test cluster: for the proxies to route to a primary or a standby leader,
//! for standbys to stream, for an old primary to rejoin as a standby.

use crate::{wait_until, TestCluster};
use std::time::Duration;
use stolon_cluster::DbRole;

impl TestCluster {
    /// Waits until the proxies route to a primary (the cluster data says so and the first
    /// proxy serves a query), and returns its keeper's index.
    pub async fn wait_for_master(&self, timeout: Duration) -> usize {
        let uid = wait_until("the proxies to route to a primary", timeout, || async {
            let cd = self.cluster_data().await?;
            let routed = cd.proxy.spec.master_db_uid.as_ref()?;
            let db = cd.dbs.get(routed)?;
            if db.spec.role != DbRole::Master || cd.proxy.spec.enabled_proxies.is_empty() {
                return None;
            }
            if let Some((port, _)) = self.proxies.first() {
                crate::serves(*port).await.then_some(())?;
            }
            Some(db.spec.keeper_uid.clone())
        })
        .await;
        self.keeper_index(&uid)
    }

    /// Waits until the proxies route to a primary on another keeper than `old`.
    pub async fn wait_for_new_master(&self, old: usize, timeout: Duration) -> usize {
        let old_uid = self.keepers[old].uid.clone();
        let uid = wait_until("the proxies to route to a new primary", timeout, || async {
            let cd = self.cluster_data().await?;
            let db = cd.proxied_db()?;
            (db.spec.role == DbRole::Master && db.spec.keeper_uid != old_uid)
                .then(|| db.spec.keeper_uid.clone())
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
