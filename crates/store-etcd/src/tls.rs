//! etcd over TLS. The connection is made here rather than by the gRPC client, for three
//! reasons: the certificate files are read again at each new connection, so a certificate
//! replaced on disk is used without a restart; `--store-skip-tls-verify` exists (the gRPC
//! client has no such switch); and a refused handshake is reported in one line that says
//! which member refused what. With TLS 1.3 the server judges the client's certificate only
//! after the client's side of the handshake is done: its refusal (an alert) would reach the
//! gRPC client, which reports only "connection closed". So a new connection is handed over
//! only once the member has accepted it (its session tickets, which it sends after checking
//! the client's certificate) or refused it. What goes wrong on a connection later is kept
//! ([`Connector::last_failure`]) for the store's error to name.

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Stolon's `--store-ca-file`, `--store-cert-file`, `--store-key` and
/// `--store-skip-tls-verify`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that signed the members' certificates; the system's CAs without it.
    pub ca_file: Option<PathBuf>,
    /// The client certificate, for members started with `--client-cert-auth`.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate: encryption without authentication of the server.
    pub skip_verify: bool,
}

impl TlsFiles {
    pub fn any(&self) -> bool {
        *self != TlsFiles::default()
    }

    /// The client's TLS configuration from the files as they are now.
    fn client_config(&self) -> Result<ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = if self.skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        } else {
            builder.with_root_certificates(self.roots()?)
        };
        let mut config = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let chain = certificates(cert)?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("reading the key {}: {e}", key.display()))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    format!("the client certificate and key do not go together: {e}")
                })?
            }
            _ => builder.with_no_client_auth(),
        };
        // etcd's gRPC server insists on HTTP/2 being negotiated.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    fn roots(&self) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                for cert in certificates(path)? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("the CA file {}: {e}", path.display()))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err("no CA to verify etcd with: give --store-ca-file".into());
                }
            }
        }
        Ok(roots)
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let read = |e: &dyn std::fmt::Display| format!("reading {}: {e}", path.display());
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(&e))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// `--store-skip-tls-verify`: any certificate is taken for the server's, but the handshake's
/// signatures are still checked against it.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One etcd member, from an `https://host:port` endpoint.
#[derive(Debug, Clone)]
struct Member {
    host: String,
    port: u16,
    name: ServerName<'static>,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "https://{}:{}", self.host, self.port)
    }
}

fn member(endpoint: &str) -> Result<Member, String> {
    let bad = || format!("{endpoint:?} is not an https://host:port endpoint");
    let rest = endpoint.strip_prefix("https://").ok_or_else(bad)?;
    let authority = rest.trim_end_matches('/');
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => (host, port.parse().map_err(|_| bad())?),
        _ => return Err(bad()),
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let name = ServerName::try_from(host.clone()).map_err(|_| bad())?;
    Ok(Member { host, port, name })
}

/// Makes the gRPC client's connections: to each member in turn, starting after the one
/// used last, so that a connection lost with a member is made again with another.
#[derive(Clone)]
pub(crate) struct Connector {
    members: Arc<[Member]>,
    next: Arc<AtomicUsize>,
    files: Arc<TlsFiles>,
    timeout: Duration,
    failure: Failure,
}

/// The last failure of a connection since a member last sent anything on one.
type Failure = Arc<Mutex<Option<String>>>;

/// Why no member could be reached, member by member, in one line.
#[derive(Debug)]
pub(crate) struct ConnectError(String);

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectError {}

impl Connector {
    pub fn new(
        endpoints: &[String],
        files: TlsFiles,
        timeout: Duration,
    ) -> Result<Connector, String> {
        let members = endpoints
            .iter()
            .map(|e| member(e))
            .collect::<Result<Vec<_>, _>>()?;
        if members.is_empty() {
            return Err("no etcd endpoint given".into());
        }
        // The files themselves are read at each connection: one missing now may be
        // mounted later.
        if files.cert_file.is_some() != files.key_file.is_some() {
            return Err("a client certificate needs its key, and a key its certificate (--store-cert-file and --store-key)".into());
        }
        Ok(Connector {
            members: members.into(),
            next: Arc::new(AtomicUsize::new(0)),
            files: Arc::new(files),
            timeout,
            failure: Failure::default(),
        })
    }

    /// Why the last connection failed, unless a member answered on one since.
    pub fn last_failure(&self) -> Option<String> {
        self.failure.lock().unwrap().clone()
    }

    async fn connect(self) -> Result<TokioIo<Watched>, ConnectError> {
        let result = self.try_members().await;
        if let Err(e) = &result {
            *self.failure.lock().unwrap() = Some(e.0.clone());
        }
        result
    }

    async fn try_members(&self) -> Result<TokioIo<Watched>, ConnectError> {
        let config = Arc::new(self.files.client_config().map_err(ConnectError)?);
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut refusals = Vec::new();
        for i in 0..self.members.len() {
            let member = &self.members[(start + i) % self.members.len()];
            let attempt = async {
                let tcp = TcpStream::connect((member.host.as_str(), member.port))
                    .await
                    .map_err(|e| Refused::Other(e.to_string()))?;
                let _ = tcp.set_nodelay(true);
                let stream = TlsConnector::from(config.clone())
                    .connect(member.name.clone(), tcp)
                    .await
                    .map_err(|e| Refused::from_tls(&e, "TLS handshake refused: "))?;
                accepted(BufReader::new(stream)).await
            };
            match tokio::time::timeout(self.timeout, attempt).await {
                Ok(Ok(stream)) => {
                    return Ok(TokioIo::new(Watched {
                        stream,
                        member: member.to_string(),
                        failure: self.failure.clone(),
                        read_failed: false,
                        write_failed: false,
                    }))
                }
                Ok(Err(Refused::Alert(e))) => {
                    refusals.push(certificate_refusal(&member.to_string(), &e))
                }
                Ok(Err(Refused::Other(e))) => refusals.push(format!("{member}: {e}")),
                Err(_) => refusals.push(format!("{member}: no answer in {:?}", self.timeout)),
            }
        }
        Err(ConnectError(refusals.join("; ")))
    }
}

/// A connection that records how it failed, and clears the record when the member sends
/// anything. What the member says is read; the writes after it fail with a broken pipe that
/// says nothing, so the first read error of a connection is what it records, or its first
/// write error if no read failed.
pub(crate) struct Watched {
    stream: BufReader<TlsStream<TcpStream>>,
    member: String,
    failure: Failure,
    read_failed: bool,
    write_failed: bool,
}

impl Watched {
    fn watch<T>(
        &mut self,
        read: bool,
        result: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if let Poll::Ready(Err(e)) = &result {
            let first = if read {
                !std::mem::replace(&mut self.read_failed, true)
            } else {
                !self.read_failed && !std::mem::replace(&mut self.write_failed, true)
            };
            if first {
                *self.failure.lock().unwrap() = Some(format!("{}: {e}", self.member));
            }
        }
        result
    }
}

/// How long a member may take to accept or refuse a TLS 1.3 connection after the handshake;
/// one that says neither is used all the same.
const VERDICT_WAIT: Duration = Duration::from_secs(1);

/// The connection once the member accepted it (a TLS 1.3 session ticket, or any data),
/// or its refusal.
async fn accepted(
    mut stream: BufReader<TlsStream<TcpStream>>,
) -> Result<BufReader<TlsStream<TcpStream>>, Refused> {
    if stream.get_ref().get_ref().1.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        // TLS 1.2 checks the client's certificate within the handshake.
        return Ok(stream);
    }
    let verdict = std::future::poll_fn(|cx| {
        let read = match Pin::new(&mut stream).poll_fill_buf(cx) {
            Poll::Ready(Ok([])) => Some(Err(Refused::Other("closed the connection".to_string()))),
            Poll::Ready(Ok(_)) => Some(Ok(())),
            Poll::Ready(Err(e)) => Some(Err(Refused::from_tls(&e, ""))),
            Poll::Pending => None,
        };
        match read {
            Some(verdict) => Poll::Ready(verdict),
            None if stream.get_ref().get_ref().1.tls13_tickets_received() > 0 => {
                Poll::Ready(Ok(()))
            }
            None => Poll::Pending,
        }
    });
    match tokio::time::timeout(VERDICT_WAIT, verdict).await {
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) | Err(_) => Ok(stream),
    }
}

/// Why a member did not take a connection.
enum Refused {
    /// It sent a TLS alert (what it said, with `context`): during or right after the
    /// handshake, its refusal of our client certificate.
    Alert(String),
    Other(String),
}

impl Refused {
    fn from_tls(e: &std::io::Error, context: &str) -> Refused {
        let alert = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|e| matches!(e, rustls::Error::AlertReceived(_)));
        let said = format!("{context}{e}");
        if alert {
            Refused::Alert(said)
        } else {
            Refused::Other(said)
        }
    }
}

/// A member's alert right after the handshake refuses the client certificate, whatever
/// alert its TLS library chose to say it with.
fn certificate_refusal(member: &str, alert: &str) -> String {
    format!("{member} refused our client certificate (--store-cert-file): {alert}")
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            *self.failure.lock().unwrap() = None;
        }
        self.watch(true, result)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.watch(false, result)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.stream).poll_flush(cx);
        self.watch(false, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<Watched>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        Box::pin(self.clone().connect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_name_the_member_to_verify() {
        let m = member("https://etcd-0.etcd:2379").unwrap();
        assert_eq!((m.host.as_str(), m.port), ("etcd-0.etcd", 2379));
        let m = member("https://127.0.0.1:2379/").unwrap();
        assert_eq!((m.host.as_str(), m.port), ("127.0.0.1", 2379));
        let m = member("https://[::1]:2379").unwrap();
        assert_eq!((m.host.as_str(), m.port), ("::1", 2379));
        for bad in [
            "http://127.0.0.1:2379",
            "https://127.0.0.1",
            "https://:2379",
            "https://host:port",
        ] {
            assert!(member(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let files = TlsFiles {
            cert_file: Some("/nonexistent/cert.pem".into()),
            skip_verify: true,
            ..TlsFiles::default()
        };
        let e = Connector::new(
            &["https://127.0.0.1:2379".into()],
            files,
            Duration::from_secs(1),
        )
        .err()
        .unwrap();
        assert!(e.contains("needs its key"), "{e}");
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let files = TlsFiles {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsFiles::default()
        };
        let e = files.client_config().err().unwrap();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
