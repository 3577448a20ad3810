//! A real Kubernetes API server for the tests: kube-apiserver (built once per machine by
//! `scripts/kube-tools.sh`) against the test's etcd, on its secure port with a self-signed
//! certificate, bearer tokens and service-account keys, so that clients run as they do in a
//! cluster (TLS, a token, a CA file). No controllers, scheduler or kubelet: objects are
//! stored and watched, pods stay pending.

use crate::process::{EtcdServer, Process};
use crate::tls::{signing_key, TestCa, Usage};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The users the API server knows, by bearer token: `admin` may do anything
/// (`system:masters`); the others have only what RBAC objects grant them.
pub const ADMIN_USER: &str = "admin";
pub const USERS: [&str; 3] = [ADMIN_USER, "stolon", "nobody"];

/// Where scripts/kube-tools.sh put kube-apiserver, kubectl and helm.
pub fn kube_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STOLON_KUBE_BIN") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("STOLON_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/stolon-rs"), PathBuf::from);
    cache.join("kubernetes/bin")
}

/// A Kubernetes program, or a panic that names what is missing and how to get it.
pub fn kube_program(name: &str) -> PathBuf {
    let path = kube_bin_dir().join(name);
    assert!(
        path.exists(),
        "{name} is not installed at {}: run scripts/setup.sh as root (it builds kube-apiserver from Debian's kubernetes source package and fetches helm and kubectl, once per machine)",
        path.display()
    );
    path
}

pub struct KubeApiServer {
    pub process: Process,
    pub port: u16,
    dir: PathBuf,
    log_dir: PathBuf,
    etcd_endpoint: String,
}

impl KubeApiServer {
    /// Starts it on the test etcd (its objects under their own prefix there) and waits until
    /// it is ready.
    pub fn start(etcd: &EtcdServer, dir: &Path, log_dir: &Path) -> KubeApiServer {
        Self::start_on(etcd, dir, log_dir, crate::free_port())
    }

    /// On the given port.
    pub fn start_on(etcd: &EtcdServer, dir: &Path, log_dir: &Path, port: u16) -> KubeApiServer {
        let dir = dir.join("kube");
        std::fs::create_dir_all(&dir).unwrap();
        make_credentials(&dir);
        let server = KubeApiServer {
            process: spawn(&dir, log_dir, &etcd.endpoint, port),
            port,
            dir,
            log_dir: log_dir.to_path_buf(),
            etcd_endpoint: etcd.endpoint.clone(),
        };
        server.wait_ready();
        server
    }

    /// Starts it again after a kill, on the same port and data.
    pub fn restart(&mut self) {
        self.process = spawn(&self.dir, &self.log_dir, &self.etcd_endpoint, self.port);
        self.wait_ready();
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// A kubeconfig for `user` (one of [`USERS`]) whose context's namespace is `namespace`.
    pub fn kubeconfig(&self, user: &str, namespace: &str) -> PathBuf {
        assert!(USERS.contains(&user), "unknown API server user {user}");
        let path = self.dir.join(format!("kubeconfig-{user}-{namespace}"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: {user}\n    namespace: {namespace}\ncurrent-context: test\nusers:\n- name: {user}\n  user:\n    token: {}\n",
            self.url(),
            self.dir.join("kube-ca.pem").display(),
            token(user),
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs kubectl as the administrator in `namespace`.
    pub fn kubectl(&self, namespace: &str, args: &[&str]) -> Output {
        Command::new(kube_program("kubectl"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig(ADMIN_USER, namespace))
            .args(args)
            .output()
            .expect("running kubectl")
    }

    /// Applies a manifest as the administrator, failing the test with kubectl's words if it
    /// is refused.
    pub fn apply(&self, namespace: &str, manifest: &str) {
        if let Err(refusal) = self.try_apply(namespace, manifest) {
            panic!("kubectl apply refused:\n{refusal}\n{manifest}");
        }
    }

    /// Applies a manifest as the administrator; kubectl's words if it is refused.
    pub fn try_apply(&self, namespace: &str, manifest: &str) -> Result<(), String> {
        let path = self
            .dir
            .join(format!("manifest-{}.yaml", crate::free_port()));
        std::fs::write(&path, manifest).unwrap();
        let out = self.kubectl(namespace, &["apply", "-f", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(&path);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.kubectl("default", &["get", "--raw", "/readyz"]);
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "kube-apiserver was not ready within 60 s; its log: {}\n{}",
                self.process.log.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A fixed token per user: the test's own API server, on loopback only.
fn token(user: &str) -> String {
    format!("{user}-token-for-the-test-api-server")
}

fn spawn(dir: &Path, log_dir: &Path, etcd: &str, port: u16) -> Process {
    let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let mut cmd = Command::new(kube_program("kube-apiserver"));
    cmd.arg(format!("--etcd-servers={etcd}"))
        .arg("--etcd-prefix=/kubernetes")
        .arg("--bind-address=127.0.0.1")
        .arg("--advertise-address=127.0.0.1")
        .arg(format!("--secure-port={port}"))
        .arg("--insecure-port=0")
        .arg(format!("--tls-cert-file={}", file("kube-apiserver.pem")))
        .arg(format!(
            "--tls-private-key-file={}",
            file("kube-apiserver-key.pem")
        ))
        .arg(format!("--token-auth-file={}", file("tokens.csv")))
        .arg("--authorization-mode=RBAC")
        .arg(format!("--service-account-key-file={}", file("sa.pub.pem")))
        .arg(format!(
            "--service-account-signing-key-file={}",
            file("sa-key.pem")
        ))
        .arg("--service-account-issuer=https://kubernetes.default.svc")
        .arg("--service-cluster-ip-range=10.96.0.0/24")
        .arg(format!("--cert-dir={}", file("certs")))
        // Without a controller manager nobody creates the default service account that
        // this admission plugin requires of every pod.
        .arg("--disable-admission-plugins=ServiceAccount")
        .arg("--v=0");
    Process::spawn("kube-apiserver", cmd, log_dir)
}

/// A CA (clients trust its certificate), the server's certificate, the service-account
/// signing keys, and the token file.
fn make_credentials(dir: &Path) {
    if dir.join("tokens.csv").exists() {
        return;
    }
    // A CA of the test's own and a server certificate it signs: rustls refuses a CA
    // certificate presented as the server's own.
    let ca = TestCa::new(dir, "kube");
    ca.issue(
        "apiserver",
        Usage::Server,
        &["127.0.0.1", "localhost", "kubernetes.default.svc"],
    );
    signing_key(dir, "sa");
    let tokens: String = USERS
        .iter()
        .map(|user| {
            let groups = if *user == ADMIN_USER {
                "system:masters"
            } else {
                "system:authenticated"
            };
            format!("{},{user},{user},\"{groups}\"\n", token(user))
        })
        .collect();
    std::fs::write(dir.join("tokens.csv"), tokens).unwrap();
}
