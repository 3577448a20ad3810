use crate::kube::{KubeApiServer, ADMIN_USER};
use crate::process::{EtcdServer, Process};
use crate::{bin_dir, free_port, pg_bin_dir};
use nix::sys::signal::Signal;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;
use stolon_cluster::{ClusterData, KeeperUid, ProxyUid};
use stolon_store::Store;
use stolon_store_etcd::EtcdStore;
use stolon_store_k8s::{KubeOptions, KubeStore};

pub const SU_USER: &str = "stolon";
pub const SU_PASSWORD: &str = "su-secret";
pub const REPL_USER: &str = "repluser";
pub const REPL_PASSWORD: &str = "repl-secret";
const CLUSTER_NAME: &str = "test";

#[derive(Debug, Clone)]
pub struct KeeperOptions {
    pub can_be_master: bool,
    pub can_be_synchronous_replica: bool,
    pub priority: i32,
    /// PostgreSQL's programs for this keeper, instead of the installed ones (fault injection).
    pub pg_bin_dir: Option<PathBuf>,
    /// `--pg-advertise-port`: the port the others use (a relay in front of postgres).
    pub advertise_port: Option<u16>,
    /// Start the keeper itself as the `postgres` OS user instead of root.
    pub as_postgres_user: bool,
    /// More flags, after the test kit's own.
    pub extra_args: Vec<String>,
}

impl Default for KeeperOptions {
    fn default() -> Self {
        KeeperOptions {
            can_be_master: true,
            can_be_synchronous_replica: true,
            priority: 0,
            pg_bin_dir: None,
            advertise_port: None,
            as_postgres_user: false,
            extra_args: Vec::new(),
        }
    }
}

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
            auth_method: "scram-sha-256".to_string(),
            repl_user: REPL_USER.to_string(),
            repl_password: REPL_PASSWORD.to_string(),
            keepers: Vec::new(),
            sentinels: 1,
            proxies: 1,
            spec: short_timings(),
        }
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
        let dir = tempfile::Builder::new()
            .prefix("stolon-test-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        // Keepers running as root hand PostgreSQL to the postgres OS user, which must reach
        // its directories.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let log_dir = dir.path().join("logs");
        std::fs::create_dir_all(&log_dir).unwrap();
        let etcd = EtcdServer::start(dir.path(), &log_dir);
        let kube = (self.backend == StoreBackend::Kubernetes)
            .then(|| KubeApiServer::start(&etcd, dir.path(), &log_dir));
        let store: Arc<dyn Store> = match &kube {
            None => Arc::new(
                EtcdStore::connect(
                    std::slice::from_ref(&etcd.endpoint),
                    "stolon/cluster",
                    CLUSTER_NAME,
                    Duration::from_secs(5),
                )
                .await
                .expect("connecting to the test etcd"),
            ),
            Some(api) => Arc::new(
                KubeStore::connect(
                    CLUSTER_NAME,
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

pub(crate) fn postgres_os_user() -> Option<(u32, u32)> {
    let user = nix::unistd::User::from_name("postgres").ok().flatten()?;
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

pub struct KeeperHandle {
    pub uid: KeeperUid,
    pub data_dir: PathBuf,
    pub pg_port: u16,
    /// Where the keeper serves `/metrics`, `/health`, `/primary` and `/replica`.
    pub http_port: u16,
    pub options: KeeperOptions,
    pub process: Option<Process>,
    starts: usize,
}

impl KeeperHandle {
    /// A keeper `keeper<i>` of `cluster`, not started yet (see [`TestCluster::start_keeper`]).
    pub fn new(cluster: &TestCluster, i: usize, options: KeeperOptions) -> KeeperHandle {
        KeeperHandle {
            uid: KeeperUid::new(format!("keeper{i}")),
            data_dir: cluster.root().join(format!("keeper{i}")),
            pg_port: free_port(),
            http_port: free_port(),
            options,
            process: None,
            starts: 0,
        }
    }

    /// The pid of the postmaster running on this keeper's data directory, if any.
    pub fn postmaster_pid(&self) -> Option<i32> {
        postmaster_pid(&self.data_dir)
    }
}

/// The pid of the postmaster running on the keeper data directory `data_dir`, if any.
pub(crate) fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postgres/postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
    cmdline.contains("postgres").then_some(pid)
}

/// What a keeper's command line says, wherever it runs.
pub(crate) struct KeeperCommand<'a> {
    pub uid: &'a KeeperUid,
    pub data_dir: &'a Path,
    pub listen_address: &'a str,
    pub pg_port: u16,
    pub pg_bin_dir: &'a Path,
    /// Where [`write_password_files`] put the password files.
    pub secrets_dir: &'a Path,
    pub repl_user: &'a str,
    pub auth_method: &'a str,
    pub options: &'a KeeperOptions,
    pub http: std::net::SocketAddr,
}

/// Adds the keeper's flags (all but the store's) to `cmd`.
pub(crate) fn keeper_command(cmd: &mut Command, k: &KeeperCommand<'_>) {
    cmd.arg("--uid")
        .arg(k.uid.as_str())
        .arg("--data-dir")
        .arg(k.data_dir)
        .arg("--pg-listen-address")
        .arg(k.listen_address)
        .arg("--pg-port")
        .arg(k.pg_port.to_string())
        .arg("--pg-bin-path")
        .arg(k.options.pg_bin_dir.as_deref().unwrap_or(k.pg_bin_dir))
        .arg("--pg-su-username")
        .arg(SU_USER)
        .arg("--pg-su-passwordfile")
        .arg(k.secrets_dir.join("su-password"))
        .arg("--pg-repl-username")
        .arg(k.repl_user)
        .arg("--pg-repl-passwordfile")
        .arg(k.secrets_dir.join("repl-password"))
        .arg("--pg-su-auth-method")
        .arg(k.auth_method)
        .arg("--pg-repl-auth-method")
        .arg(k.auth_method)
        .arg("--can-be-master")
        .arg(k.options.can_be_master.to_string())
        .arg("--can-be-synchronous-replica")
        .arg(k.options.can_be_synchronous_replica.to_string())
        .arg("--priority")
        .arg(k.options.priority.to_string())
        .arg("--metrics-listen-address")
        .arg(k.http.to_string());
    if let Some(port) = k.options.advertise_port {
        cmd.arg("--pg-advertise-port").arg(port.to_string());
    }
    cmd.args(&k.options.extra_args);
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
    bin: PathBuf,
    log_dir: PathBuf,
    spec_path: PathBuf,
    dir: Option<tempfile::TempDir>,
}

impl TestCluster {
    pub fn root(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    /// Replaces the password files every keeper was started with, as an operator rotating
    /// the passwords does.
    pub fn rewrite_password_files(&self, su_password: &str, repl_password: &str) {
        write_password_files(self.root(), su_password, repl_password);
    }

    /// The store flags of every program; a daemon also gets `pod`, the name of the Pod
    /// object it runs as on the Kubernetes store.
    fn common_args(&self, cmd: &mut Command, pod: Option<&str>) {
        cmd.arg("--cluster-name").arg(CLUSTER_NAME);
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
        let port = free_port();
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

    /// (Re)starts keeper `i` with the same uid, data dir and port.
    pub fn start_keeper(&mut self, i: usize) {
        let mut cmd = Command::new(self.bin.join("stolon-keeper"));
        let pod = self.keepers[i].uid.to_string();
        self.common_args(&mut cmd, Some(&pod));
        let k = &self.keepers[i];
        keeper_command(
            &mut cmd,
            &KeeperCommand {
                uid: &k.uid,
                data_dir: &k.data_dir,
                listen_address: "127.0.0.1",
                pg_port: k.pg_port,
                pg_bin_dir: &pg_bin_dir(),
                secrets_dir: self.root(),
                repl_user: &self.repl_user,
                auth_method: &self.auth_method,
                options: &k.options,
                http: std::net::SocketAddr::from(([127, 0, 0, 1], k.http_port)),
            },
        );
        if k.options.as_postgres_user {
            let (uid, gid) = postgres_os_user().expect("the postgres OS user exists");
            std::fs::create_dir_all(&k.data_dir).unwrap();
            std::os::unix::fs::chown(&k.data_dir, Some(uid), Some(gid)).unwrap();
            std::os::unix::process::CommandExt::uid(&mut cmd, uid);
            std::os::unix::process::CommandExt::gid(&mut cmd, gid);
            cmd.env("HOME", &k.data_dir);
        }
        let name = match k.starts {
            0 => k.uid.to_string(),
            n => format!("{}-restart{n}", k.uid),
        };
        let process = Process::spawn(&name, cmd, &self.log_dir);
        let k = &mut self.keepers[i];
        k.starts += 1;
        k.process = Some(process);
    }

    /// A lost node: SIGKILL the keeper, its postmaster and every postgres process. Returns
    /// when the last signal was sent: from then on the node acknowledges nothing.
    pub fn kill_keeper_and_postgres(&mut self, i: usize) -> std::time::Instant {
        let k = &mut self.keepers[i];
        let postmaster = k.postmaster_pid();
        let mut killed = std::time::Instant::now();
        if let Some(mut p) = k.process.take() {
            p.signal(Signal::SIGKILL);
            killed = std::time::Instant::now();
            p.kill();
        }
        if let Some(pid) = postmaster {
            // The whole node is lost: a backend outliving its postmaster would still commit
            // (and acknowledge) writes on the session it serves.
            for child in children_of(pid) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), Signal::SIGKILL);
            }
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            killed = std::time::Instant::now();
            // Gone means reaped too: a zombie still answers signal 0.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while nix::sys::signal::kill(pid, None).is_ok() && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        killed
    }

    /// A frozen node: SIGSTOP (or with `false`, SIGCONT) the keeper, its postmaster and
    /// every postgres process the postmaster started.
    pub fn freeze_keeper_and_postgres(&self, i: usize, frozen: bool) {
        if let Some(p) = &self.keepers[i].process {
            p.signal(if frozen {
                Signal::SIGSTOP
            } else {
                Signal::SIGCONT
            });
        }
        self.freeze_postgres(i, frozen);
    }

    /// SIGSTOP (or SIGCONT) keeper `i`'s postmaster and the processes it started.
    pub fn freeze_postgres(&self, i: usize, frozen: bool) {
        let signal = if frozen {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        if let Some(pid) = self.keepers[i].postmaster_pid() {
            for child in children_of(pid).into_iter().chain([pid]) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), signal);
            }
        }
    }

    /// SIGSTOP (or SIGCONT) only keeper `i`'s WAL receiver: the standby stays up and
    /// answers, but receives nothing more.
    pub fn freeze_walreceiver(&self, i: usize, frozen: bool) {
        let signal = if frozen {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        let pid = self.keepers[i].postmaster_pid().expect("postgres runs");
        for child in children_of(pid) {
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("walreceiver") {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), signal);
            }
        }
    }

    /// SIGKILLs every process whose command line names keeper `i`'s data directory and
    /// `program` (a pg_basebackup the keeper started, say).
    pub fn kill_processes_of(&self, i: usize, program: &str) {
        let dir = self.keepers[i].data_dir.to_string_lossy().into_owned();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains(program) && cmdline.contains(&dir) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
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

    /// The log of keeper `i`, every start of it in order.
    pub fn keeper_log(&self, i: usize) -> String {
        let k = &self.keepers[i];
        (0..k.starts)
            .map(|n| match n {
                0 => format!("{}.log", k.uid),
                n => format!("{}-restart{n}.log", k.uid),
            })
            .map(|name| std::fs::read_to_string(self.log_dir.join(name)).unwrap_or_default())
            .collect()
    }

    /// The log of keeper `i`'s latest start.
    pub fn keeper_last_log(&self, i: usize) -> String {
        let k = &self.keepers[i];
        let name = match k.starts {
            0 | 1 => format!("{}.log", k.uid),
            n => format!("{}-restart{}.log", k.uid, n - 1),
        };
        std::fs::read_to_string(self.log_dir.join(name)).unwrap_or_default()
    }

    pub fn keeper_index(&self, uid: &KeeperUid) -> usize {
        self.keepers
            .iter()
            .position(|k| &k.uid == uid)
            .unwrap_or_else(|| panic!("no keeper {uid}"))
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
                for child in children_of(pid).into_iter().chain([pid]) {
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), Signal::SIGKILL);
                }
            }
        }
        self.sentinels.clear();
        if std::env::var_os("STOLON_TEST_KEEP").is_some() {
            let dir = self.dir.take().unwrap().keep();
            eprintln!("STOLON_TEST_KEEP: cluster files kept in {}", dir.display());
        } else if std::thread::panicking() {
            let dir = self.dir.take().unwrap().keep();
            eprintln!("test failed: cluster files kept in {}", dir.display());
            print_log_tails(&dir.join("logs"));
        }
    }
}

/// The last lines of every log in `log_dir`, for a failed test's output.
pub(crate) fn print_log_tails(log_dir: &Path) {
    for entry in std::fs::read_dir(log_dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!(
            "----- {} (last 40 lines)",
            entry.file_name().to_string_lossy()
        );
        for line in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("{line}");
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

/// The pids whose parent is `pid`.
pub(crate) fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        // pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// A copy of PostgreSQL's bin directory in `dir` where `program` always fails: the others
/// are links to the real ones.
pub fn failing_pg_bin_dir(dir: &Path, program: &str) -> PathBuf {
    pg_bin_dir_with(
        dir,
        program,
        &format!("echo \"{program}: fault injected by the test\" >&2\nexit 1"),
    )
}

/// PostgreSQL's programs, `program` taking `delay` more than usual to start its work.
pub fn slow_pg_bin_dir(dir: &Path, program: &str, delay: Duration) -> PathBuf {
    let real = pg_bin_dir().join(program);
    pg_bin_dir_with(
        dir,
        program,
        &format!("sleep {}\nexec {} \"$@\"", delay.as_secs(), real.display()),
    )
}

/// PostgreSQL's programs in `dir`, `program` replaced by a shell script running `body`.
fn pg_bin_dir_with(dir: &Path, program: &str, body: &str) -> PathBuf {
    let real = pg_bin_dir();
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(&real).unwrap().flatten() {
        let name = entry.file_name();
        if name != program {
            std::os::unix::fs::symlink(entry.path(), dir.join(&name)).unwrap();
        }
    }
    let fake = dir.join(program);
    std::fs::write(&fake, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir.to_path_buf()
}
