//! The simulated store: linearizable compare-and-swap of the cluster data, infos that
//! expire with their lease, and the sentinels' leader lease. Every operation is applied at
//! the instant the world delivers it; delays and losses are the world's.

use std::collections::BTreeMap;
use std::time::Duration;
use stolon_cluster::{ClusterData, KeeperInfo, KeeperUid, ProxyInfo, ProxyUid, ValidSpec};

/// How long a component waits for the store's answer before its request fails: the
/// daemons' `--store-timeout`, as the simulated cluster runs them (below its proxyTimeout,
/// as the defaults are).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Default)]
pub struct Store {
    cd: Option<ClusterData>,
    /// The spec of `cd`, validated once per write.
    spec: Option<ValidSpec>,
    revision: u64,
    keepers: BTreeMap<KeeperUid, (KeeperInfo, Duration)>,
    proxies: BTreeMap<ProxyUid, (ProxyInfo, Duration)>,
    /// The sentinel holding the leader lease, and when the lease runs out.
    leader: Option<(usize, Duration)>,
}

impl Store {
    pub fn with_cluster_data(cd: ClusterData) -> Store {
        Store {
            spec: cd.cluster.spec.validate().ok(),
            cd: Some(cd),
            revision: 1,
            ..Store::default()
        }
    }

    /// The cluster data with its validated spec and its revision.
    pub fn read(&self) -> Option<(ClusterData, ValidSpec, u64)> {
        Some((self.cd.clone()?, self.spec.clone()?, self.revision))
    }

    pub fn cluster_data(&self) -> Option<&ClusterData> {
        self.cd.as_ref()
    }

    pub fn spec(&self) -> Option<&ValidSpec> {
        self.spec.as_ref()
    }

    /// Writes `cd` if the revision is still `expect`.
    pub fn compare_and_swap(&mut self, cd: ClusterData, expect: u64) -> bool {
        if self.revision != expect {
            return false;
        }
        self.spec = cd.cluster.spec.validate().ok();
        self.cd = Some(cd);
        self.revision += 1;
        true
    }

    pub fn put_keeper_info(&mut self, info: KeeperInfo, expires: Duration) {
        self.keepers.insert(info.uid.clone(), (info, expires));
    }

    pub fn put_proxy_info(&mut self, info: ProxyInfo, expires: Duration) {
        self.proxies.insert(info.uid.clone(), (info, expires));
    }

    pub fn keeper_infos(&self, now: Duration) -> Vec<KeeperInfo> {
        self.keepers
            .values()
            .filter(|(_, expires)| *expires > now)
            .map(|(info, _)| info.clone())
            .collect()
    }

    pub fn proxy_infos(&self, now: Duration) -> Vec<ProxyInfo> {
        self.proxies
            .values()
            .filter(|(_, expires)| *expires > now)
            .map(|(info, _)| info.clone())
            .collect()
    }

    /// Takes or renews the leader lease for `sentinel`; false while another holds it.
    pub fn campaign(&mut self, sentinel: usize, now: Duration, ttl: Duration) -> bool {
        match self.leader {
            Some((holder, expires)) if holder != sentinel && expires > now => false,
            _ => {
                self.leader = Some((sentinel, now + ttl));
                true
            }
        }
    }
}
