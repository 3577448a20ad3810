//! A cluster whose every part runs on a host of its own ([`crate::net`]): three etcd
//! members (a real quorum), the keepers with their postgres, the sentinels and the proxies,
//! plus a `client` host for the test's own connections, which no fault ever cuts.
//!
//! The test's connections must come from the client host: [`NetClusterBuilder::run`] runs
//! the test on a thread of that host, with a runtime of its own.

mod builder;

pub use builder::NetClusterBuilder;

use crate::keepers::{keeper_command, KeeperCommand};
use crate::net::{Host, Network};
use crate::process::{signal_tree, Process};
use crate::{connect_to, pg_bin_dir, KeeperOptions};
use nix::sys::signal::Signal;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use stolon_cluster::{ClusterData, DbRole, KeeperUid};
use stolon_store::Store;

pub(super) const CLUSTER_NAME: &str = "net";
pub(super) const ETCD_CLIENT_PORT: u16 = 2379;
const ETCD_PEER_PORT: u16 = 2380;
pub(super) const PROXY_PORT: u16 = 25432;
/// Each keeper's data directory is a tmpfs of this size, which a test can fill.
const KEEPER_DISK: &str = "1g";

pub struct NetEtcd {
    pub host: Host,
    pub process: Option<Process>,
}

/// A sentinel or a proxy on its host.
pub struct NetDaemon {
    pub host: Host,
    /// Where a proxy listens (0 for a sentinel).
    pub port: u16,
    pub process: Option<Process>,
}

impl NetDaemon {
    pub fn address(&self) -> SocketAddr {
        SocketAddr::from((self.host.ip, self.port))
    }
}

pub struct NetKeeper {
    pub uid: KeeperUid,
    pub host: Host,
    pub data_dir: PathBuf,
    pub pg_port: u16,
    pub process: Option<Process>,
}

impl NetKeeper {
    /// Where its postgres listens.
    pub fn pg_address(&self) -> SocketAddr {
        SocketAddr::from((self.host.ip, self.pg_port))
    }

    pub fn postmaster_pid(&self) -> Option<i32> {
        crate::keepers::postmaster_pid(&self.data_dir)
    }
}

/// Fields drop in order: the daemons (keepers stop their postgres), etcd, the keepers'
/// tmpfs mounts, then the hosts with whatever still runs on them.
pub struct NetCluster {
    pub proxies: Vec<NetDaemon>,
    pub keepers: Vec<NetKeeper>,
    pub sentinels: Vec<NetDaemon>,
    pub etcd: Vec<NetEtcd>,
    store: Option<Arc<dyn Store>>,
    endpoints: Vec<String>,
    keeper_args: Vec<String>,
    bin: PathBuf,
    spec_path: PathBuf,
    log_dir: PathBuf,
    dir: Option<tempfile::TempDir>,
    mounts: Vec<PathBuf>,
    pub net: Network,
    keep_files: bool,
}

impl NetCluster {
    /// Keeps the logs and data directories for a post-mortem, as `STOLON_TEST_KEEP` does.
    pub fn keep_files(&mut self) {
        self.keep_files = true;
    }

    pub fn root(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    /// The test's own connection to the store, from the client host.
    pub fn store(&self) -> &dyn Store {
        self.store.as_deref().expect("connected at start")
    }

    pub fn etcd_hosts(&self) -> Vec<&Host> {
        self.etcd.iter().map(|e| &e.host).collect()
    }

    fn store_args(&self, cmd: &mut std::process::Command) {
        cmd.arg("--cluster-name")
            .arg(CLUSTER_NAME)
            .arg("--store-backend")
            .arg("etcdv3")
            .arg("--store-endpoints")
            .arg(self.endpoints.join(","));
    }

    /// (Re)starts etcd member `i` on its data.
    pub fn start_etcd(&mut self, i: usize) {
        // Every member is named before the first one starts.
        let initial: Vec<String> = (0..3)
            .map(|j| {
                let ip = self.net.host(&format!("etcd{j}")).ip;
                format!("etcd{j}=http://{ip}:{ETCD_PEER_PORT}")
            })
            .collect();
        let host = self.etcd[i].host.clone();
        let client = format!("http://{}:{ETCD_CLIENT_PORT}", host.ip);
        let peer = format!("http://{}:{ETCD_PEER_PORT}", host.ip);
        let mut cmd = self.net.command(&host, "etcd");
        cmd.arg("--name")
            .arg(&host.name)
            .arg("--data-dir")
            .arg(self.root().join(&host.name))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(initial.join(","))
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(CLUSTER_NAME);
        let name = self.log_name(&host.name);
        self.etcd[i].process = Some(Process::spawn(&name, cmd, &self.log_dir));
    }

    /// A log file name not used yet by an earlier start of `name`.
    fn log_name(&self, name: &str) -> String {
        (0..)
            .map(|n| match n {
                0 => name.to_string(),
                n => format!("{name}-restart{n}"),
            })
            .find(|candidate| !self.log_dir.join(format!("{candidate}.log")).exists())
            .expect("a free log name")
    }

    pub fn start_sentinel(&mut self, i: usize) {
        let host = self.sentinels[i].host.clone();
        let mut cmd = self.net.command(&host, self.bin.join("stolon-sentinel"));
        self.store_args(&mut cmd);
        cmd.arg("--initial-cluster-spec").arg(&self.spec_path);
        let name = self.log_name(&host.name);
        self.sentinels[i].process = Some(Process::spawn(&name, cmd, &self.log_dir));
    }

    pub fn start_proxy(&mut self, i: usize) {
        let d = &self.proxies[i];
        let mut cmd = self.net.command(&d.host, self.bin.join("stolon-proxy"));
        self.store_args(&mut cmd);
        cmd.arg("--listen-address")
            .arg(d.host.ip.to_string())
            .arg("--port")
            .arg(d.port.to_string())
            .arg("--uid")
            .arg(&d.host.name);
        let name = self.log_name(&d.host.name);
        self.proxies[i].process = Some(Process::spawn(&name, cmd, &self.log_dir));
    }

    /// (Re)starts keeper `i` on its data directory.
    pub fn start_keeper(&mut self, i: usize) {
        let k = &self.keepers[i];
        let mut cmd = self.net.command(&k.host, self.bin.join("stolon-keeper"));
        self.store_args(&mut cmd);
        let options = KeeperOptions {
            extra_args: self.keeper_args.clone(),
            ..KeeperOptions::default()
        };
        keeper_command(
            &mut cmd,
            &KeeperCommand {
                uid: &k.uid,
                data_dir: &k.data_dir,
                listen_address: &k.host.ip.to_string(),
                pg_port: k.pg_port,
                pg_bin_dir: &pg_bin_dir(),
                secrets_dir: self.root(),
                repl_user: crate::REPL_USER,
                auth_method: "scram-sha-256",
                options: &options,
                http: SocketAddr::from((k.host.ip, 8080)),
            },
        );
        let name = self.log_name(k.uid.as_str());
        let process = Process::spawn(&name, cmd, &self.log_dir);
        self.keepers[i].process = Some(process);
    }

    /// Every log of keeper `i`, in start order.
    pub fn keeper_log(&self, i: usize) -> String {
        self.logs_of(self.keepers[i].uid.as_str())
    }

    /// Every log of the host called `name`, in start order.
    pub fn logs_of(&self, name: &str) -> String {
        (0..)
            .map(|n| match n {
                0 => format!("{name}.log"),
                n => format!("{name}-restart{n}.log"),
            })
            .map_while(|file| std::fs::read_to_string(self.log_dir.join(file)).ok())
            .collect()
    }

    /// SIGSTOP (or SIGCONT) keeper `i` with its postmaster and every postgres process.
    pub fn freeze_keeper(&self, i: usize, frozen: bool) {
        let signal = if frozen {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        let k = &self.keepers[i];
        if let Some(p) = &k.process {
            p.signal(signal);
        }
        if let Some(pid) = k.postmaster_pid() {
            signal_tree(pid, signal);
        }
    }

    /// SIGKILL keeper `i`, its postmaster and every postgres process: a lost node.
    pub fn kill_keeper(&mut self, i: usize) {
        let k = &mut self.keepers[i];
        let postmaster = k.postmaster_pid();
        if let Some(mut p) = k.process.take() {
            p.kill();
        }
        if let Some(pid) = postmaster {
            signal_tree(pid, Signal::SIGKILL);
        }
    }

    /// Fills the file system of keeper `i`'s data directory (or, with `false`, frees it);
    /// calling it again tops the filler up with whatever postgres freed meanwhile.
    pub fn fill_keeper_disk(&self, i: usize, full: bool) {
        let filler = self.keepers[i].data_dir.join("disk-full-filler");
        if !full {
            let _ = std::fs::remove_file(&filler);
            return;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&filler)
            .expect("creating the filler file");
        // A tmpfs gives back the whole of an allocation that does not fit, and postgres
        // writes while this runs: one allocation of the free space seen a moment before
        // could fill nothing. Chunks, halved at each refusal, leave less than a page.
        let mut chunk: i64 = 64 << 20;
        while chunk >= 4096 {
            let len = file.metadata().map(|m| m.len() as i64).unwrap_or(0);
            if nix::fcntl::posix_fallocate(&file, len, chunk).is_err() {
                chunk /= 2;
            }
        }
    }

    pub async fn cluster_data(&self) -> Option<ClusterData> {
        crate::cluster::cluster_data_in(self.store()).await
    }

    pub fn keeper_index(&self, uid: &KeeperUid) -> usize {
        self.keepers
            .iter()
            .position(|k| &k.uid == uid)
            .unwrap_or_else(|| panic!("no keeper {uid}"))
    }

    /// The keeper whose db the cluster data names as the primary, if any.
    pub async fn master_keeper(&self) -> Option<usize> {
        let cd = self.cluster_data().await?;
        let db = cd.dbs.get(cd.cluster.status.master.as_ref()?)?;
        (db.spec.role == DbRole::Master).then(|| self.keeper_index(&db.spec.keeper_uid))
    }

    /// Waits until the proxies route to a primary (see [`crate::wait_for_master`]),
    /// and returns its keeper's index.
    pub async fn wait_for_master(&self, timeout: Duration) -> usize {
        crate::waits::wait_for_master(self, timeout).await
    }

    /// The index of the sentinel that leads now, if the store says (it may be out of reach).
    pub async fn leading_sentinel(&self) -> Option<usize> {
        let uid = self.store().leader().await.ok().flatten()?;
        (0..self.sentinels.len()).find(|&i| {
            self.logs_of(&format!("sentinel{i}"))
                .contains(&format!("uid={uid}"))
        })
    }

    /// Whether the cluster has settled: the proxies route to the primary, and every other
    /// keeper's db is a healthy standby on its current spec whose WAL receiver streams
    /// from the primary (a row in the primary's `pg_stat_replication` under the standby's
    /// own application name, which pg_basebackup's stream does not carry).
    pub async fn settled(&self) -> bool {
        let Some(cd) = self.cluster_data().await else {
            return false;
        };
        let Some(primary) = cd.proxied_db().filter(|db| db.spec.role == DbRole::Master) else {
            return false;
        };
        let standbys: Vec<_> = cd.dbs.values().filter(|db| db.uid != primary.uid).collect();
        let keepers_with_dbs = standbys.len() + 1;
        if keepers_with_dbs < self.keepers.len()
            || !standbys.iter().all(|db| {
                db.spec.role == DbRole::Standby
                    && db.status.healthy
                    && db.status.in_recovery
                    && db.status.current_generation == db.generation
            })
        {
            return false;
        }
        let address = self.keepers[self.keeper_index(&primary.spec.keeper_uid)].pg_address();
        let Ok(client) = connect_to(address).await else {
            return false;
        };
        let Ok(rows) = client
            .query(
                "select application_name from pg_stat_replication where state = 'streaming'",
                &[],
            )
            .await
        else {
            return false;
        };
        let streaming: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        standbys
            .iter()
            .all(|db| streaming.contains(&format!("stolon_{}", db.uid)))
    }
}

impl crate::Cluster for NetCluster {
    fn cluster_data(&self) -> impl Future<Output = Option<ClusterData>> {
        NetCluster::cluster_data(self)
    }

    fn keeper_index(&self, uid: &KeeperUid) -> usize {
        NetCluster::keeper_index(self, uid)
    }

    fn first_proxy(&self) -> Option<SocketAddr> {
        Some(self.proxies.first()?.address())
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        self.proxies.clear();
        for k in &mut self.keepers {
            if let Some(mut p) = k.process.take() {
                p.stop(Duration::from_secs(20));
            }
        }
        self.sentinels.clear();
        self.etcd.clear();
        // Whatever still runs on the hosts (a postmaster of a killed keeper) holds the
        // mounts: the namespaces' clean-up kills it, so kill it now.
        for k in &self.keepers {
            if let Some(pid) = k.postmaster_pid() {
                signal_tree(pid, Signal::SIGKILL);
            }
        }
        self.net.heal_all();
        let keep = self.keep_files
            || std::env::var_os("STOLON_TEST_KEEP").is_some()
            || std::thread::panicking();
        for mount in &self.mounts {
            if keep {
                // The data dirs go with the mounts; keep a copy for the post-mortem.
                let copy = mount.with_extension("saved");
                let _ = std::process::Command::new("cp")
                    .arg("-a")
                    .arg(mount)
                    .arg(&copy)
                    .status();
            }
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(mount)
                .status();
        }
        if keep {
            let dir = self.dir.take().unwrap().keep();
            eprintln!("cluster files kept in {}", dir.display());
            crate::process::print_log_tails(&dir.join("logs"));
        }
    }
}

/// A cluster's files are in `/tmp/<MOUNT_PREFIX><pid>-...`, pid being the test process's.
pub(super) const MOUNT_PREFIX: &str = "stolon-net-";

/// Unmounts the keepers' file systems left by test processes that are gone (killed before
/// their clean-up ran).
pub(super) fn sweep_orphan_mounts() {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for point in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
        let Some(pid) = point
            .strip_prefix("/tmp/")
            .and_then(|rest| rest.strip_prefix(MOUNT_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(point)
                .status();
        }
    }
}

pub(super) fn mount_tmpfs(dir: &Path) {
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o"])
        .arg(format!("size={KEEPER_DISK},mode=0755"))
        .arg("tmpfs")
        .arg(dir)
        .status()
        .expect("running mount");
    assert!(status.success(), "mounting a tmpfs on {}", dir.display());
}
