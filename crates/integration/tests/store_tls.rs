//! The etcd store over TLS and with etcd's own users, against a real etcd that asks every
//! client for a certificate signed by the test's CA (`--client-cert-auth`): what a valid
//! certificate may do, how each wrong one is refused, and that a certificate fixed on disk
//! is taken up by the store, and by a daemon, without a restart.

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use stolon_store::{Store, StoreError};
use stolon_store_etcd::{EtcdAccess, EtcdStore, TlsFiles};
use stolon_testkit::tls::{CertFiles, TestCa, Usage};
use stolon_testkit::{EtcdServer, EtcdTls, Process};

const TIMEOUT: Duration = Duration::from_secs(3);

/// A TLS etcd, the CA it trusts, another CA it does not, and a valid client certificate.
struct Bed {
    dir: tempfile::TempDir,
    etcd: EtcdServer,
    ca: TestCa,
    other: TestCa,
    client: CertFiles,
}

impl Bed {
    fn new() -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path(), "trusted");
        let other = TestCa::new(dir.path(), "other");
        let server = ca.issue("server", Usage::Server, &["127.0.0.1"]);
        let etcd = EtcdServer::start_with(
            dir.path(),
            dir.path(),
            Some(EtcdTls {
                server,
                trusted_ca: ca.cert.clone(),
            }),
        );
        let client = ca.issue("client", Usage::Client, &["stolon"]);
        Bed {
            dir,
            etcd,
            ca,
            other,
            client,
        }
    }

    /// A client certificate of the CA etcd does not trust, at paths a fixed one can later
    /// be copied over.
    fn install_foreign_client_certificate(&self) -> CertFiles {
        let foreign = self.other.issue("client", Usage::Client, &["stolon"]);
        let installed = CertFiles {
            cert: self.dir.path().join("installed.pem"),
            key: self.dir.path().join("installed-key.pem"),
        };
        copy(&foreign, &installed);
        installed
    }

    /// Verifies the server with the trusted CA, and shows `client`.
    fn files(&self, client: Option<&CertFiles>) -> TlsFiles {
        TlsFiles {
            ca_file: Some(self.ca.cert.clone()),
            cert_file: client.map(|c| c.cert.clone()),
            key_file: client.map(|c| c.key.clone()),
            skip_verify: false,
        }
    }
}

async fn connect(endpoint: &str, access: &EtcdAccess) -> Result<EtcdStore, StoreError> {
    EtcdStore::connect_with(
        &[endpoint.to_string()],
        "stolon/cluster",
        "tls",
        TIMEOUT,
        access,
    )
    .await
}

/// One read of the store, with the error's text.
async fn read(endpoint: &str, tls: TlsFiles) -> Result<(), String> {
    let access = EtcdAccess { tls, user: None };
    let store = connect(endpoint, &access)
        .await
        .map_err(|e| e.to_string())?;
    store
        .get_cluster_data()
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_of_the_trusted_ca_passes_the_conformance_suite() {
    let bed = Bed::new();
    let access = EtcdAccess {
        tls: bed.files(Some(&bed.client)),
        user: None,
    };
    let a = connect(&bed.etcd.endpoint, &access).await.unwrap();
    let b = connect(&bed.etcd.endpoint, &access).await.unwrap();
    stolon_store::conformance::run_all(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_wrong_certificate_is_refused_in_one_clear_line() {
    let bed = Bed::new();
    let endpoint = bed.etcd.endpoint.clone();
    let by_name = endpoint.replace("127.0.0.1", "localhost");
    let foreign = bed.other.issue("client", Usage::Client, &["stolon"]);
    let expired = bed.ca.issue_expired("expired", Usage::Client, &["stolon"]);
    let untrusting = TlsFiles {
        ca_file: Some(bed.other.cert.clone()),
        ..bed.files(Some(&bed.client))
    };
    for (case, endpoint, tls, expected) in [
        (
            "no client certificate",
            &endpoint,
            bed.files(None),
            "refused our client certificate",
        ),
        (
            "a client certificate of another CA",
            &endpoint,
            bed.files(Some(&foreign)),
            "refused our client certificate",
        ),
        (
            "an expired client certificate",
            &endpoint,
            bed.files(Some(&expired)),
            "refused our client certificate",
        ),
        (
            "a server name the certificate does not hold",
            &by_name,
            bed.files(Some(&bed.client)),
            "not valid for name \"localhost\"",
        ),
        (
            "a server certificate of a CA not trusted",
            &endpoint,
            untrusting,
            "UnknownIssuer",
        ),
    ] {
        let e = read(endpoint, tls).await.expect_err(case);
        eprintln!("{case}: {e}");
        assert!(e.contains(expected), "{case}: {e}");
        assert!(!e.contains('\n'), "{case}: more than one line: {e}");
    }
    assert_eq!(read(&endpoint, bed.files(Some(&bed.client))).await, Ok(()));
}

#[tokio::test(flavor = "multi_thread")]
async fn skipping_verification_accepts_a_server_of_any_ca() {
    let bed = Bed::new();
    let tls = TlsFiles {
        ca_file: Some(bed.other.cert.clone()),
        skip_verify: true,
        ..bed.files(Some(&bed.client))
    };
    assert_eq!(read(&bed.etcd.endpoint, tls).await, Ok(()));
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_settings_that_contradict_each_other_are_refused_before_any_connection() {
    let bed = Bed::new();
    let http = bed.etcd.endpoint.replace("https://", "http://");
    for (case, endpoints, tls, expected) in [
        (
            "TLS files with http endpoints",
            vec![http.clone()],
            bed.files(Some(&bed.client)),
            "use https:// endpoints",
        ),
        (
            "http and https endpoints",
            vec![http, bed.etcd.endpoint.clone()],
            bed.files(Some(&bed.client)),
            "mix http:// and https://",
        ),
        (
            "a certificate without its key",
            vec![bed.etcd.endpoint.clone()],
            TlsFiles {
                key_file: None,
                ..bed.files(Some(&bed.client))
            },
            "needs its key",
        ),
    ] {
        let access = EtcdAccess { tls, user: None };
        let e = EtcdStore::connect_with(&endpoints, "p", "c", TIMEOUT, &access)
            .await
            .err()
            .expect(case);
        assert!(
            matches!(&e, StoreError::Misconfigured(m) if m.contains(expected)),
            "{case}: {e}"
        );
    }
}

/// etcd's own users (not in Stolon): a wrong password is refused at connection, a client
/// without a user may not read, one with the right password may.
#[tokio::test(flavor = "multi_thread")]
async fn etcd_users_are_authenticated_by_password() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdServer::start(dir.path(), dir.path());
    let mut admin = etcd_client::Client::connect([&etcd.endpoint], None)
        .await
        .unwrap();
    admin.user_add("root", "root-secret", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();
    let as_user = |user: Option<(&str, &str)>| EtcdAccess {
        tls: TlsFiles::default(),
        user: user.map(|(n, p)| (n.to_string(), p.to_string())),
    };
    let e = connect(&etcd.endpoint, &as_user(Some(("root", "wrong"))))
        .await
        .err()
        .expect("a wrong password");
    assert!(e.to_string().contains("authentication failed"), "{e}");
    let anonymous = connect(&etcd.endpoint, &as_user(None)).await.unwrap();
    let e = anonymous.get_cluster_data().await.unwrap_err();
    assert!(e.to_string().contains("user name is empty"), "{e}");
    let root = connect(&etcd.endpoint, &as_user(Some(("root", "root-secret"))))
        .await
        .unwrap();
    root.get_cluster_data().await.unwrap();
}

fn copy(from: &CertFiles, to: &CertFiles) {
    std::fs::copy(&from.cert, &to.cert).unwrap();
    std::fs::copy(&from.key, &to.key).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_replaced_on_disk_is_used_without_a_restart() {
    let bed = Bed::new();
    let installed = bed.install_foreign_client_certificate();
    let access = EtcdAccess {
        tls: bed.files(Some(&installed)),
        user: None,
    };
    let store = connect(&bed.etcd.endpoint, &access).await.unwrap();
    let e = store.get_cluster_data().await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
    copy(&bed.client, &installed);
    stolon_testkit::wait_until(
        "the store to take the new certificate",
        Duration::from_secs(20),
        || async { store.get_cluster_data().await.ok() },
    )
    .await;
}

fn sentinel(bed: &Bed, installed: &CertFiles, log_dir: &Path) -> Process {
    let mut cmd = Command::new(stolon_testkit::bin_dir().join("stolon-sentinel"));
    cmd.args(["--cluster-name", "tls", "--store-backend", "etcdv3"])
        .arg("--store-endpoints")
        .arg(&bed.etcd.endpoint)
        .arg("--store-ca-file")
        .arg(&bed.ca.cert)
        .env("STSENTINEL_STORE_CERT_FILE", &installed.cert)
        .env("STSENTINEL_STORE_KEY", &installed.key);
    Process::spawn("sentinel", cmd, log_dir)
}

/// A daemon whose certificate etcd refuses keeps running and saying why, and leads once
/// the certificate on disk is fixed.
#[tokio::test(flavor = "multi_thread")]
async fn a_sentinel_waits_out_a_refused_certificate_and_leads_once_it_is_fixed() {
    let bed = Bed::new();
    let installed = bed.install_foreign_client_certificate();
    let mut sentinel = sentinel(&bed, &installed, bed.dir.path());
    stolon_testkit::wait_until(
        "the sentinel to say etcd refuses it",
        Duration::from_secs(20),
        || async {
            sentinel
                .log_text()
                .lines()
                .find(|l| l.contains("refused our client certificate"))
                .map(String::from)
        },
    )
    .await;
    assert_eq!(sentinel.exit_code(), None, "the sentinel exited");
    copy(&bed.client, &installed);
    let access = EtcdAccess {
        tls: bed.files(Some(&bed.client)),
        user: None,
    };
    let store = connect(&bed.etcd.endpoint, &access).await.unwrap();
    stolon_testkit::wait_until("the sentinel to lead", Duration::from_secs(30), || async {
        store.leader().await.ok().flatten()
    })
    .await;
    assert_eq!(sentinel.exit_code(), None, "the sentinel exited");
}
