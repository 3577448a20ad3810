//! The keepers of a test cluster: their options, their command line, starting them again,
//! and the faults a test plays on a keeper and its postgres (kill, freeze).

use crate::process::{children_of, postgres_os_user, signal_tree};
use crate::{pg_bin_dir, Process, TestCluster, SU_USER};
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use stolon_cluster::KeeperUid;

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

pub struct KeeperHandle {
    pub uid: KeeperUid,
    pub data_dir: PathBuf,
    pub pg_port: u16,
    /// Where the keeper serves `/metrics`, `/health`, `/primary` and `/replica`.
    pub http_port: u16,
    pub options: KeeperOptions,
    pub process: Option<Process>,
    pub(crate) starts: usize,
}

impl KeeperHandle {
    /// A keeper `keeper<i>` of `cluster`, not started yet (see [`TestCluster::start_keeper`]).
    pub fn new(cluster: &TestCluster, i: usize, options: KeeperOptions) -> KeeperHandle {
        KeeperHandle {
            uid: KeeperUid::new(format!("keeper{i}")),
            data_dir: cluster.root().join(format!("keeper{i}")),
            pg_port: cluster.ports.postgres(i),
            http_port: cluster.ports.keeper_http(i),
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

impl TestCluster {
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
            signal_tree(pid, signal);
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
}
