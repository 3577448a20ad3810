use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A child process whose output goes to a log file. Dropping it kills it.
pub struct Process {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Process {
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Process {
        let log = log_dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("creating log file");
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        Process {
            name: name.to_string(),
            log,
            child: Some(child),
        }
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// Whether it has exited, and with which code.
    pub fn exit_code(&mut self) -> Option<Option<i32>> {
        let child = self.child.as_mut()?;
        child.try_wait().ok().flatten().map(|status| status.code())
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// A one-member etcd on free loopback ports.
pub struct EtcdServer {
    pub endpoint: String,
    pub process: Process,
    data_dir: PathBuf,
    log_dir: PathBuf,
    client: u16,
    peer: u16,
    tls: Option<EtcdTls>,
}

/// An etcd serving its clients over TLS, and only those with a certificate its CA signed
/// (`--client-cert-auth`).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub server: crate::tls::CertFiles,
    pub trusted_ca: PathBuf,
}

impl EtcdServer {
    pub fn start(dir: &Path, log_dir: &Path) -> EtcdServer {
        Self::start_with(dir, log_dir, None)
    }

    /// With `tls`, the endpoint is `https://127.0.0.1:<port>`.
    pub fn start_with(dir: &Path, log_dir: &Path, tls: Option<EtcdTls>) -> EtcdServer {
        Self::start_on(dir, log_dir, tls, crate::free_port(), crate::free_port())
    }

    /// On the given client and peer ports.
    pub fn start_on(
        dir: &Path,
        log_dir: &Path,
        tls: Option<EtcdTls>,
        client: u16,
        peer: u16,
    ) -> EtcdServer {
        let data_dir = dir.join("etcd");
        let process = Self::spawn(&data_dir, log_dir, client, peer, tls.as_ref());
        let scheme = if tls.is_some() { "https" } else { "http" };
        EtcdServer {
            endpoint: format!("{scheme}://127.0.0.1:{client}"),
            process,
            data_dir,
            log_dir: log_dir.to_path_buf(),
            client,
            peer,
            tls,
        }
    }

    /// Kills etcd: clients are refused until [`EtcdServer::restart`].
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts etcd again on the same data and ports.
    pub fn restart(&mut self) {
        self.process = Self::spawn(
            &self.data_dir,
            &self.log_dir,
            self.client,
            self.peer,
            self.tls.as_ref(),
        );
    }

    fn spawn(
        data_dir: &Path,
        log_dir: &Path,
        client: u16,
        peer: u16,
        tls: Option<&EtcdTls>,
    ) -> Process {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg("test")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen-client-urls")
            .arg(&endpoint)
            .arg("--advertise-client-urls")
            .arg(&endpoint)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(format!("test={peer_url}"));
        if let Some(tls) = tls {
            cmd.arg("--cert-file")
                .arg(&tls.server.cert)
                .arg("--key-file")
                .arg(&tls.server.key)
                .arg("--trusted-ca-file")
                .arg(&tls.trusted_ca)
                .arg("--client-cert-auth");
        }
        let process = Process::spawn("etcd", cmd, log_dir);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "etcd did not listen within 30s; is etcd-server installed (scripts/setup.sh)?"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        process
    }
}

/// The uid and gid of the `postgres` OS user, where it exists.
pub(crate) fn postgres_os_user() -> Option<(u32, u32)> {
    let user = nix::unistd::User::from_name("postgres").ok().flatten()?;
    Some((user.uid.as_raw(), user.gid.as_raw()))
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

/// Sends `signal` to the postmaster `pid` and every process it started: the whole instance,
/// where a child outliving its postmaster (a backend still serving its session, or one
/// frozen that would never notice) must go or stop with it.
pub(crate) fn signal_tree(pid: i32, signal: Signal) {
    for child in children_of(pid).into_iter().chain([pid]) {
        let _ = kill(Pid::from_raw(child), signal);
    }
}
