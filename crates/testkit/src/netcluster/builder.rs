//! Making a [`NetCluster`]: its network, its hosts, and every part started on them.

use super::{
    mount_tmpfs, sweep_orphan_mounts, NetCluster, NetDaemon, NetEtcd, NetKeeper, CLUSTER_NAME,
    ETCD_CLIENT_PORT, MOUNT_PREFIX, PROXY_PORT,
};
use crate::cluster::{short_timings, write_password_files};
use crate::net::{Host, Network};
use crate::{bin_dir, free_port, wait_until};
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;
use stolon_cluster::KeeperUid;
use stolon_store::Store;
use stolon_store_etcd::EtcdStore;

/// What a [`NetCluster`] is made of; [`NetClusterBuilder::run`] makes it and runs a test on it.
pub struct NetClusterBuilder {
    keepers: usize,
    sentinels: usize,
    proxies: usize,
    keeper_args: Vec<String>,
    spec: serde_json::Value,
}

impl NetClusterBuilder {
    /// Three keepers, two sentinels, two proxies, with the test kit's short timings.
    pub fn new() -> NetClusterBuilder {
        NetClusterBuilder {
            keepers: 3,
            sentinels: 2,
            proxies: 2,
            keeper_args: Vec::new(),
            spec: short_timings(),
        }
    }

    /// Extra flags for every keeper.
    pub fn keeper_args(mut self, args: &[&str]) -> Self {
        self.keeper_args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Sets a field of the initial cluster spec.
    pub fn spec(mut self, field: &str, value: serde_json::Value) -> Self {
        self.spec
            .as_object_mut()
            .unwrap()
            .insert(field.to_string(), value);
        self
    }

    /// Makes the hosts and runs `test` with the started cluster on a thread of the client
    /// host, with a runtime of its own. The cluster, its processes, mounts and namespaces
    /// are gone when this returns or panics; the calling thread stays where it is.
    pub fn run<F, Fut, T>(self, test: F) -> T
    where
        F: FnOnce(NetCluster) -> Fut + Send,
        Fut: Future<Output = T>,
        T: Send,
    {
        let mut net = Network::new();
        let client = net.add_host("client");
        let mut names: Vec<String> = (0..3).map(|i| format!("etcd{i}")).collect();
        names.extend((0..self.keepers).map(|i| format!("keeper{i}")));
        names.extend((0..self.sentinels).map(|i| format!("sentinel{i}")));
        names.extend((0..self.proxies).map(|i| format!("proxy{i}")));
        for name in &names {
            net.add_host(name);
        }
        std::thread::scope(|scope| {
            let on_client = scope.spawn(move || {
                net.enter(&client);
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("a runtime on the client host");
                runtime.block_on(async move {
                    let cluster = self.start(net).await;
                    test(cluster).await
                })
            });
            match on_client.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    async fn start(self, net: Network) -> NetCluster {
        sweep_orphan_mounts();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{MOUNT_PREFIX}{}-", std::process::id()))
            .tempdir_in("/tmp")
            .expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let log_dir = dir.path().join("logs");
        std::fs::create_dir_all(&log_dir).unwrap();
        write_password_files(dir.path(), crate::SU_PASSWORD, crate::REPL_PASSWORD);
        let spec_path = dir.path().join("cluster-spec.json");
        std::fs::write(&spec_path, self.spec.to_string()).unwrap();
        let etcd_hosts: Vec<Host> = (0..3)
            .map(|i| net.host(&format!("etcd{i}")).clone())
            .collect();
        let endpoints: Vec<String> = etcd_hosts
            .iter()
            .map(|h| format!("http://{}:{ETCD_CLIENT_PORT}", h.ip))
            .collect();
        let mut cluster = NetCluster {
            etcd: Vec::new(),
            keepers: Vec::new(),
            sentinels: Vec::new(),
            proxies: Vec::new(),
            store: None,
            endpoints,
            keeper_args: self.keeper_args,
            bin: bin_dir(),
            spec_path,
            log_dir,
            dir: Some(dir),
            mounts: Vec::new(),
            net,
            keep_files: false,
        };
        for (i, host) in etcd_hosts.into_iter().enumerate() {
            cluster.etcd.push(NetEtcd {
                host,
                process: None,
            });
            cluster.start_etcd(i);
        }
        let store: Arc<dyn Store> = Arc::new(
            wait_until("the etcd cluster to serve", Duration::from_secs(60), || {
                let endpoints = cluster.endpoints.clone();
                async move {
                    EtcdStore::connect(&endpoints, "stolon/cluster", CLUSTER_NAME, STORE_TIMEOUT)
                        .await
                        .ok()
                }
            })
            .await,
        );
        cluster.store = Some(store);
        for i in 0..self.sentinels {
            let host = cluster.net.host(&format!("sentinel{i}")).clone();
            cluster.sentinels.push(NetDaemon {
                host,
                port: 0,
                process: None,
            });
            cluster.start_sentinel(i);
        }
        for i in 0..self.keepers {
            let host = cluster.net.host(&format!("keeper{i}")).clone();
            let data_dir = cluster.root().join(format!("keeper{i}"));
            std::fs::create_dir_all(&data_dir).unwrap();
            mount_tmpfs(&data_dir);
            cluster.mounts.push(data_dir.clone());
            cluster.keepers.push(NetKeeper {
                uid: KeeperUid::new(format!("keeper{i}")),
                host,
                data_dir,
                pg_port: free_port(),
                process: None,
            });
            cluster.start_keeper(i);
        }
        for i in 0..self.proxies {
            let host = cluster.net.host(&format!("proxy{i}")).clone();
            cluster.proxies.push(NetDaemon {
                host,
                port: PROXY_PORT,
                process: None,
            });
            cluster.start_proxy(i);
        }
        cluster
    }
}

impl Default for NetClusterBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// How long the test's own store requests may take.
const STORE_TIMEOUT: Duration = Duration::from_secs(3);
