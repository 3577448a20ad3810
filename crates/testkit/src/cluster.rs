use crate::bin_dir;
use crate::keepers::{KeeperHandle, KeeperOptions};
use crate::kube::{KubeApiServer, ADMIN_USER};
use crate::placement::{ClusterDir, FixedPorts, Ports};
use crate::process::{postgres_os_user, print_log_tails, signal_tree, EtcdServer, Process};
use nix::sys::signal::Signal;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;
use stolon_cluster::{ClusterData, ProxyUid};
use stolon_store::Store;
use stolon_store_etcd::EtcdStore;
use stolon_store_k8s::{KubeOptions, KubeStore};

pub const SU_USER: &str = "stolon";
pub const SU_PASSWORD: &str = "su-secret";
pub const REPL_USER: &str = "repluser";
pub const REPL_PASSWORD: &str = "repl-secret";
const CLUSTER_NAME: &str = "test";

/// Where a test cluster keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreBackend {
    Etcd,
    /// A real kube-apiserver on the test's etcd; each component runs with the `POD_NAME`
    /// and `POD_NAMESPACE` of a Pod object the test creates for it (nothing runs it).
    Kubernetes,
}

/// The namespace of a Kubernetes test cluster's objects.
pub const KUBE_NAMESPACE: &str = "default";

pub struct ClusterBuilder {
    backend: StoreBackend,
    name: String,
    /// With [`ClusterBuilder::placed`]: the directory and ports of the caller's choice.
    placed: Option<(PathBuf, FixedPorts)>,
    auth_method: String,
    repl_user: String,
    repl_password: String,
    keepers: Vec<KeeperOptions>,
    sentinels: usize,
    proxies: usize,
    spec: serde_json::Value,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ClusterBuilder {
    /// Short timings, as the scenarios ask: sleepInterval 1s, failInterval 5s.
    pub fn new() -> ClusterBuilder {
        ClusterBuilder {
            backend: StoreBackend::Etcd,
            name: CLUSTER_NAME.to_string(),
            placed: None,
            auth_method: "scram-sha-256".to_string(),
            repl_user: REPL_USER.to_string(),
            repl_password: REPL_PASSWORD.to_string(),
            keepers: Vec::new(),
            sentinels: 1,
            proxies: 1,
            spec: short_timings(),
        }
    }

    /// The cluster's name (`--cluster-name`; default `test`).
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// Lives in `dir` (made fresh, and kept afterwards) and listens on `ports`, instead of a
    /// temporary directory and free ports.
    pub fn placed(mut self, dir: &Path, ports: FixedPorts) -> Self {
        self.placed = Some((dir.to_path_buf(), ports));
        self
    }

    pub fn store_backend(mut self, backend: StoreBackend) -> Self {
        self.backend = backend;
        self
    }

    pub fn keepers(mut self, n: usize) -> Self {
        self.keepers = vec![KeeperOptions::default(); n];
        self
    }

    pub fn keeper(mut self, options: KeeperOptions) -> Self {
        self.keepers.push(options);
        self
    }

    pub fn sentinels(mut self, n: usize) -> Self {
        self.sentinels = n;
        self
    }

    pub fn proxies(mut self, n: usize) -> Self {
        self.proxies = n;
        self
    }

    /// How the superuser and the replication user authenticate (scram-sha-256, the
    /// keeper's default, or md5).
    pub fn auth_method(mut self, method: &str) -> Self {
        self.auth_method = method.to_string();
        self
    }

    /// The replication user the keepers use (the superuser's name makes them one role).
    pub fn replication_user(mut self, user: &str, password: &str) -> Self {
        self.repl_user = user.to_string();
        self.repl_password = password.to_string();
        self
    }

    /// Sets (or with `null`, removes) a field of the initial cluster spec.
    pub fn spec(mut self, field: &str, value: serde_json::Value) -> Self {
        let spec = self.spec.as_object_mut().unwrap();
        if value.is_null() {
            spec.remove(field);
        } else {
            spec.insert(field.to_string(), value);
        }
        self
    }

    pub async fn start(self) -> TestCluster {
        let (dir, ports) = match &self.placed {
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("stolon-test-")
                    .tempdir_in("/tmp")
                    .expect("temp dir");
                (ClusterDir::Temp(dir), Ports::Free)
            }
            Some((path, ports)) => {
                std::fs::create_dir_all(path).expect("the cluster's directory");
                (ClusterDir::Kept(path.clone()), Ports::Fixed(*ports))
            }
        };
        // Keepers running as root hand PostgreSQL to the postgres OS user, which must reach
        // its directories.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let log_dir = dir.path().join("logs");
        std::fs::create_dir_all(&log_dir).unwrap();
        let (etcd_client, etcd_peer) = ports.etcd();
        let etcd = EtcdServer::start_on(dir.path(), &log_dir, None, etcd_client, etcd_peer);
        let kube = (self.backend == StoreBackend::Kubernetes)
            .then(|| KubeApiServer::start_on(&etcd, dir.path(), &log_dir, ports.kube()));
        let store: Arc<dyn Store> = match &kube {
            None => Arc::new(
                EtcdStore::connect(
                    std::slice::from_ref(&etcd.endpoint),
                    "stolon/cluster",
                    &self.name,
                    Duration::from_secs(5),
                )
                .await
                .expect("connecting to the test etcd"),
            ),
            Some(api) => Arc::new(
                KubeStore::connect(
                    &self.name,
                    &KubeOptions {
                        kubeconfig: Some(api.kubeconfig(ADMIN_USER, KUBE_NAMESPACE)),
                        timeout: Duration::from_secs(5),
                        ..Default::default()
                    },
                )
                .await
                .expect("connecting to the test kube-apiserver"),
            ),
        };
        let spec_path = dir.path().join("cluster-spec.json");
        std::fs::write(&spec_path, self.spec.to_string()).unwrap();
        write_password_files(dir.path(), SU_PASSWORD, &self.repl_password);
        let mut cluster = TestCluster {
            name: self.name.clone(),
            ports,
            auth_method: self.auth_method.clone(),
            repl_user: self.repl_user.clone(),
            proxies: Vec::new(),
            proxy_args: Vec::new(),
            keepers: Vec::new(),
            sentinels: Vec::new(),
            etcd,
            kube,
            store,
            bin: bin_dir(),
            log_dir,
            spec_path,
            dir: Some(dir),
        };
        for _ in 0..self.sentinels {
            cluster.add_sentinel();
        }
        for (i, options) in self.keepers.into_iter().enumerate() {
            cluster
                .keepers
                .push(KeeperHandle::new(&cluster, i, options));
            cluster.start_keeper(i);
        }
        for _ in 0..self.proxies {
            cluster.add_proxy();
        }
        cluster
    }
}

/// The superuser's and the replication user's password files in `dir`, readable by the
/// postgres OS user only; each replaced whole, as a rotated secret is.
pub(crate) fn write_password_files(dir: &Path, su_password: &str, repl_password: &str) {
    for (name, content) in [
        ("su-password", su_password),
        ("repl-password", repl_password),
    ] {
        let path = dir.join(name);
        let written = dir.join(format!(".{name}.new"));
        std::fs::write(&written, content).unwrap();
        std::fs::set_permissions(&written, std::fs::Permissions::from_mode(0o600)).unwrap();
        if let Some(pg) = postgres_os_user() {
            std::os::unix::fs::chown(&written, Some(pg.0), Some(pg.1)).unwrap();
        }
        std::fs::rename(&written, &path).unwrap();
    }
}

/// The initial cluster spec of the test kit's clusters: short timings, as the scenarios
/// ask (sleepInterval 1s, failInterval 5s, proxyTimeout 5s).
pub(crate) fn short_timings() -> serde_json::Value {
    serde_json::json!({
        "initMode": "new",
        "sleepInterval": "1s",
        "failInterval": "5s",
        "requestTimeout": "3s",
        "proxyCheckInterval": "1s",
        "proxyTimeout": "5s",
    })
}

/// A running cluster. Fields drop in order: proxies, keepers (stopping PostgreSQL),
/// sentinels, the API server, etcd; leftover postmasters of killed keepers are killed last.
pub struct TestCluster {
    pub auth_method: String,
    pub repl_user: String,
    pub proxies: Vec<(u16, Process)>,
    /// Each proxy's extra flags.
    proxy_args: Vec<Vec<String>>,
    pub keepers: Vec<KeeperHandle>,
    pub sentinels: Vec<Process>,
    /// The API server holding the cluster's state, with [`StoreBackend::Kubernetes`].
    pub kube: Option<KubeApiServer>,
    pub etcd: EtcdServer,
    pub store: Arc<dyn Store>,
    pub(crate) bin: PathBuf,
    pub(crate) log_dir: PathBuf,
    spec_path: PathBuf,
    dir: Option<ClusterDir>,
    /// `--cluster-name`.
    pub name: String,
    pub(crate) ports: Ports,
}

impl TestCluster {
    pub fn root(&self) -> &Path {
        self.dir.as_ref().expect("until dropped").path()
    }

    /// Replaces the password files every keeper was started with, as an operator rotating
    /// the passwords does.
    pub fn rewrite_password_files(&self, su_password: &str, repl_password: &str) {
        write_password_files(self.root(), su_password, repl_password);
    }

    /// The store flags of every program; a daemon also gets `pod`, the name of the Pod
    /// object it runs as on the Kubernetes store.
    pub(crate) fn common_args(&self, cmd: &mut Command, pod: Option<&str>) {
        cmd.arg("--cluster-name").arg(&self.name);
        let Some(api) = &self.kube else {
            cmd.arg("--store-backend")
                .arg("etcdv3")
                .arg("--store-endpoints")
                .arg(&self.etcd.endpoint);
            return;
        };
        cmd.arg("--store-backend")
            .arg("kubernetes")
            .arg("--kube-resource-kind")
            .arg("configmap")
            .env("KUBECONFIG", api.kubeconfig(ADMIN_USER, KUBE_NAMESPACE))
            .env("POD_NAMESPACE", KUBE_NAMESPACE);
        if let Some(pod) = pod {
            let pod = pod.replace('_', "-");
            let manifest = format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\nspec:\n  containers:\n  - name: stolon\n    image: stolon-rs\n"
            );
            // A component started while the API server is down (on purpose) runs without
            // its Pod object: its infos then have no owner, and still expire.
            if let Err(refusal) = api.try_apply(KUBE_NAMESPACE, &manifest) {
                eprintln!("no Pod object for {pod}: {refusal}");
            }
            cmd.env("POD_NAME", pod);
        }
    }

    /// The process of the store's server: etcd, or the API server on the Kubernetes store.
    pub fn store_process(&self) -> &Process {
        self.kube
            .as_ref()
            .map_or(&self.etcd.process, |api| &api.process)
    }

    /// Kills the store's server: clients are refused until [`TestCluster::restart_store`].
    pub fn kill_store(&mut self) {
        match &mut self.kube {
            Some(api) => api.process.kill(),
            None => self.etcd.kill(),
        }
    }

    pub fn restart_store(&mut self) {
        match &mut self.kube {
            Some(api) => api.restart(),
            None => self.etcd.restart(),
        }
    }

    /// The initial cluster spec file every sentinel started from now on reads.
    pub fn spec_path(&self) -> &Path {
        &self.spec_path
    }

    pub fn add_sentinel(&mut self) {
        self.add_sentinel_with(&[]);
    }

    /// A sentinel started with extra flags.
    pub fn add_sentinel_with(&mut self, args: &[&str]) {
        let mut cmd = Command::new(self.bin.join("stolon-sentinel"));
        let name = format!("sentinel{}", self.sentinels.len());
        self.common_args(&mut cmd, Some(&name));
        cmd.arg("--initial-cluster-spec")
            .arg(&self.spec_path)
            .args(args);
        self.sentinels
            .push(Process::spawn(&name, cmd, &self.log_dir));
    }

    pub fn add_proxy(&mut self) {
        self.add_proxy_with(&[]);
    }

    /// A proxy started with extra flags (kept for its restarts).
    pub fn add_proxy_with(&mut self, args: &[&str]) {
        let i = self.proxies.len();
        let port = self.ports.proxy(i);
        self.proxy_args
            .push(args.iter().map(|a| a.to_string()).collect());
        let process = self.spawn_proxy(i, port);
        self.proxies.push((port, process));
    }

    /// Starts proxy `i` again (after a kill), with the same uid and port.
    pub fn restart_proxy(&mut self, i: usize) {
        let port = self.proxies[i].0;
        self.proxies[i].1 = self.spawn_proxy(i, port);
    }

    /// Proxy `i` runs with uid `proxy<i>`.
    pub fn proxy_uid(&self, i: usize) -> ProxyUid {
        ProxyUid::new(format!("proxy{i}"))
    }

    fn spawn_proxy(&self, i: usize, port: u16) -> Process {
        let mut cmd = Command::new(self.bin.join("stolon-proxy"));
        self.common_args(&mut cmd, Some(&format!("proxy{i}")));
        cmd.arg("--listen-address")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(port.to_string())
            .arg("--uid")
            .arg(self.proxy_uid(i).as_str())
            .args(&self.proxy_args[i]);
        Process::spawn(&format!("proxy{i}"), cmd, &self.log_dir)
    }

    pub fn proxy_port(&self) -> u16 {
        self.proxies[0].0
    }

    /// Changes the stored cluster data with compare-and-swap, as stolonctl would.
    pub async fn update_cluster_data(&self, change: impl Fn(&mut ClusterData)) {
        loop {
            let read = stolon_store::read_cluster_data(self.store.as_ref())
                .await
                .unwrap()
                .expect("cluster data");
            let mut cd = read.data;
            change(&mut cd);
            match self
                .store
                .put_cluster_data(cd.encode(), stolon_store::Expect::Revision(read.revision))
                .await
            {
                Ok(_) => return,
                Err(stolon_store::StoreError::Conflict) => continue,
                Err(e) => panic!("writing cluster data: {e}"),
            }
        }
    }

    pub async fn cluster_data(&self) -> Option<ClusterData> {
        cluster_data_in(self.store.as_ref()).await
    }

    pub fn stolonctl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(self.bin.join("stolonctl"));
        self.common_args(&mut cmd, None);
        cmd.args(args);
        cmd.output().expect("running stolonctl")
    }

    /// Every sentinel's log, in sentinel order.
    pub fn sentinel_logs(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| s.log_text())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Fails on any ERROR line in the logs that no `allowed` pattern explains: an error
    /// nobody expected is a bug even when the scenario's assertions pass.
    pub fn assert_no_unexpected_errors(&self, allowed: &[&str]) {
        let mut unexpected = Vec::new();
        for entry in std::fs::read_dir(&self.log_dir).unwrap().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            for line in text.lines() {
                if line.contains(" ERROR ") && !allowed.iter().any(|a| line.contains(a)) {
                    unexpected.push(format!("{}: {line}", entry.file_name().to_string_lossy()));
                }
            }
        }
        assert!(
            unexpected.is_empty(),
            "unexpected ERROR lines:\n{}",
            unexpected.join("\n")
        );
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.proxies.clear();
        for k in &mut self.keepers {
            if let Some(mut p) = k.process.take() {
                p.stop(Duration::from_secs(20));
            }
        }
        for k in &self.keepers {
            if let Some(pid) = k.postmaster_pid() {
                // Children too: a frozen one would never notice its postmaster is gone.
                signal_tree(pid, Signal::SIGKILL);
            }
        }
        self.sentinels.clear();
        let dir = self.dir.take().expect("dropped once");
        if !dir.is_temporary() {
            return;
        }
        if std::env::var_os("STOLON_TEST_KEEP").is_some() {
            let dir = dir.keep();
            eprintln!("STOLON_TEST_KEEP: cluster files kept in {}", dir.display());
        } else if std::thread::panicking() {
            let dir = dir.keep();
            eprintln!("test failed: cluster files kept in {}", dir.display());
            print_log_tails(&dir.join("logs"));
        }
    }
}

/// The cluster data in `store`, if it can be read and holds some.
pub(crate) async fn cluster_data_in(store: &dyn Store) -> Option<ClusterData> {
    stolon_store::read_cluster_data(store)
        .await
        .ok()
        .flatten()
        .map(|r| r.data)
}
