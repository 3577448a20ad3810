//! Certificates made by the test: a CA of its own and the leaves it signs, written as PEM
//! files, for servers (etcd, PostgreSQL) and their clients.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate authority of the test's own, its certificate in `<dir>/<name>-ca.pem`.
pub struct TestCa {
    name: String,
    dir: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub cert: PathBuf,
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
}

impl TestCa {
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        let cert = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&cert, issuer.pem()).expect("writing the CA certificate");
        TestCa {
            name: name.into(),
            dir: dir.to_path_buf(),
            issuer,
            cert,
        }
    }

    /// A certificate valid now for `names` (DNS names or IP addresses; a client's first
    /// name is also its common name, which PostgreSQL's cert authentication reads).
    pub fn issue(&self, file: &str, usage: Usage, names: &[&str]) -> CertFiles {
        self.issue_valid(file, usage, names, false)
    }

    /// A certificate that expired in 2001.
    pub fn issue_expired(&self, file: &str, usage: Usage, names: &[&str]) -> CertFiles {
        self.issue_valid(file, usage, names, true)
    }

    fn issue_valid(&self, file: &str, usage: Usage, names: &[&str], expired: bool) -> CertFiles {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        if let Some(name) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *name);
        }
        params.extended_key_usages = vec![match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        let files = CertFiles {
            cert: self.dir.join(format!("{}-{file}.pem", self.name)),
            key: self.dir.join(format!("{}-{file}-key.pem", self.name)),
        };
        std::fs::write(&files.cert, cert.pem()).expect("writing a certificate");
        write_private(&files.key, &key.serialize_pem());
        files
    }
}

/// A signing key pair (a Kubernetes API server's for service-account tokens, say): the
/// private key in `<dir>/<name>-key.pem`, the public one in `<dir>/<name>.pub.pem`.
pub fn signing_key(dir: &Path, name: &str) -> KeyFiles {
    let key = KeyPair::generate().expect("signing key");
    let files = KeyFiles {
        private: dir.join(format!("{name}-key.pem")),
        public: dir.join(format!("{name}.pub.pem")),
    };
    std::fs::write(&files.public, key.public_key_pem()).expect("writing a public key");
    write_private(&files.private, &key.serialize_pem());
    files
}

/// A key pair, as files.
#[derive(Debug, Clone)]
pub struct KeyFiles {
    pub private: PathBuf,
    pub public: PathBuf,
}

/// Mode 0600 from the start, and owned by the postgres OS user when there is one:
/// PostgreSQL refuses a key others can read, or that it cannot.
fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("creating a key file");
    file.write_all(text.as_bytes()).expect("writing a key file");
    if let Some((uid, gid)) = crate::process::postgres_os_user() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown of a key file");
    }
}
