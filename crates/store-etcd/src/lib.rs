//! The etcd v3 backend of the store.
//!
//! Layout under `<prefix>/<cluster-name>`: `clusterdata` (written with a transaction that
//! compares its mod revision), `keepers/info/<uid>`, `sentinels/info/<uid>` and
//! `proxies/info/<uid>` (each put under a fresh lease of the info's ttl), and the election
//! `sentinel-leader` (etcd's election service, held by a lease kept alive in the
//! background).

use async_trait::async_trait;
mod tls;

pub use tls::TlsFiles;

use etcd_client::{
    Channel, Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, ResignOptions,
    Txn, TxnOp, WatchOptions,
};
use std::future::Future;
use std::time::Duration;
use stolon_store::{Expect, InfoKind, Leadership, Revision, Store, StoreError, WatchScope};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// One cluster's keys in an etcd v3 cluster.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    /// Without a request timeout: a campaign waits as long as another candidate leads.
    campaign_client: Client,
    base: String,
    timeout: Duration,
    /// With TLS: what the transport saw go wrong, which the gRPC client's errors omit.
    connector: Option<tls::Connector>,
}

/// The message of etcd's `ErrElectionNoLeader` (server/etcdserver/api/v3election).
const ELECTION_NO_LEADER: &str = "election: no leader";

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// How often an idle connection is checked; a member that does not answer within the
/// store timeout is given up for another.
const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// A gRPC channel whose connections [`tls::Connector`] makes. The URI only fills the
/// requests' headers: the connector chooses the member.
fn tls_channel(
    connector: tls::Connector,
    timeout: Duration,
    request_timeout: Option<Duration>,
) -> tonic::transport::Channel {
    let mut endpoint = tonic::transport::Endpoint::from_static("http://etcd")
        .connect_timeout(timeout)
        .http2_keep_alive_interval(KEEP_ALIVE)
        .keep_alive_timeout(timeout)
        .keep_alive_while_idle(true);
    if let Some(t) = request_timeout {
        endpoint = endpoint.timeout(t);
    }
    endpoint.connect_with_connector_lazy(connector)
}

/// How the store reaches etcd besides its endpoints: TLS, and etcd's own users.
#[derive(Debug, Clone, Default)]
pub struct EtcdAccess {
    pub tls: TlsFiles,
    /// An etcd user and its password, for members with authentication enabled.
    pub user: Option<(String, String)>,
}

impl EtcdStore {
    /// Connects to `endpoints` as anyone, without TLS.
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        cluster_name: &str,
        timeout: Duration,
    ) -> Result<EtcdStore, StoreError> {
        Self::connect_with(
            endpoints,
            prefix,
            cluster_name,
            timeout,
            &EtcdAccess::default(),
        )
        .await
    }

    /// Connects to `endpoints`, all `http://` or all `https://`; `prefix` is used exactly
    /// as given (Stolon's etcdv3 habit), and `timeout` bounds every request.
    pub async fn connect_with(
        endpoints: &[String],
        prefix: &str,
        cluster_name: &str,
        timeout: Duration,
        access: &EtcdAccess,
    ) -> Result<EtcdStore, StoreError> {
        let https = endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        let tls = match (https, access.tls.any()) {
            (0, false) => None,
            (0, true) => {
                return Err(StoreError::Misconfigured(
                    "TLS files were given for etcd, but its endpoints are http://: use https:// endpoints".into(),
                ))
            }
            (n, _) if n == endpoints.len() => Some(
                tls::Connector::new(endpoints, access.tls.clone(), timeout)
                    .map_err(StoreError::Misconfigured)?,
            ),
            _ => {
                return Err(StoreError::Misconfigured(format!(
                    "etcd endpoints mix http:// and https://: {}",
                    endpoints.join(",")
                )))
            }
        };
        let options = |request_timeout: Option<Duration>| {
            let mut options = ConnectOptions::new()
                .with_connect_timeout(timeout)
                .with_keep_alive(KEEP_ALIVE, timeout);
            if let Some(t) = request_timeout {
                options = options.with_timeout(t);
            }
            if let Some((name, password)) = &access.user {
                options = options.with_user(name, password);
            }
            options
        };
        let connect = |request_timeout: Option<Duration>| {
            let options = options(request_timeout);
            let tls = tls.clone();
            async move {
                let client = match tls {
                    None => Client::connect(endpoints, Some(options)).await,
                    Some(connector) => {
                        Client::from_channel(
                            Channel::Tonic(tls_channel(connector, timeout, request_timeout)),
                            Some(options),
                        )
                        .await
                    }
                };
                client.map_err(|e| unavailable(stolon_store::describe_error(&e)))
            }
        };
        let bounded = |request_timeout| async move {
            tokio::time::timeout(timeout, connect(request_timeout))
                .await
                .map_err(|_| {
                    unavailable(format!("connecting to etcd at {endpoints:?} timed out"))
                })?
        };
        let client = bounded(Some(timeout)).await?;
        // Without a request timeout: a campaign waits as long as another candidate leads.
        let campaign_client = bounded(None).await?;
        Ok(EtcdStore {
            client,
            campaign_client,
            base: format!("{}/{}", prefix.trim_end_matches('/'), cluster_name),
            timeout,
            connector: tls,
        })
    }

    fn key(&self, rest: &str) -> String {
        format!("{}/{}", self.base, rest)
    }

    fn election_name(&self) -> String {
        self.key("sentinel-leader")
    }

    /// Bounds a request by the store timeout even where the client would wait longer
    /// (a connection being re-established).
    async fn bounded<T>(
        &self,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| unavailable("etcd request timed out"))?
            .map_err(|e| unavailable(self.explain(&e)))
    }

    /// What the connection saw go wrong, when it did (no member has sent anything since,
    /// so the gRPC error can only be its consequence); the gRPC error otherwise.
    fn explain(&self, e: &etcd_client::Error) -> String {
        self.connector
            .as_ref()
            .and_then(|c| c.last_failure())
            .unwrap_or_else(|| stolon_store::describe_error(e))
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get_cluster_data(&self) -> Result<Option<(Vec<u8>, Revision)>, StoreError> {
        let mut client = self.client.clone();
        let resp = self
            .bounded(client.get(self.key("clusterdata"), None))
            .await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), Revision(kv.mod_revision().to_string()))))
    }

    async fn put_cluster_data(
        &self,
        bytes: Vec<u8>,
        expect: Expect,
    ) -> Result<Revision, StoreError> {
        let key = self.key("clusterdata");
        let put = TxnOp::put(key.clone(), bytes, None);
        let txn = match expect {
            Expect::Absent => Txn::new().when([Compare::create_revision(key, CompareOp::Equal, 0)]),
            Expect::Revision(rev) => {
                let rev: i64 = rev.0.parse().map_err(|_| {
                    StoreError::Corrupt(format!("{:?} is not an etcd revision", rev.0))
                })?;
                Txn::new().when([Compare::mod_revision(key, CompareOp::Equal, rev)])
            }
            Expect::Anything => Txn::new(),
        }
        .and_then([put]);
        let mut client = self.client.clone();
        let resp = self.bounded(client.txn(txn)).await?;
        if !resp.succeeded() {
            return Err(StoreError::Conflict);
        }
        resp.header()
            .map(|h| Revision(h.revision().to_string()))
            .ok_or_else(|| StoreError::Corrupt("etcd answered without a header".into()))
    }

    async fn publish(
        &self,
        kind: InfoKind,
        uid: &str,
        bytes: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        // A fresh lease per publish: the key moves to it and the previous lease, left with
        // no key, expires by itself. Two requests, and nothing to keep alive in between.
        let mut client = self.client.clone();
        let ttl_secs = ttl.as_secs().max(1) as i64;
        let lease = self.bounded(client.lease_grant(ttl_secs, None)).await?;
        let key = self.key(&format!("{}/{}", kind.dir(), uid));
        self.bounded(client.put(key, bytes, Some(PutOptions::new().with_lease(lease.id()))))
            .await?;
        Ok(())
    }

    async fn infos(&self, kind: InfoKind) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut client = self.client.clone();
        let resp = self
            .bounded(client.get(
                self.key(&format!("{}/", kind.dir())),
                Some(GetOptions::new().with_prefix()),
            ))
            .await?;
        Ok(resp.kvs().iter().map(|kv| kv.value().to_vec()).collect())
    }

    async fn watch(&self, scope: WatchScope) -> Result<mpsc::Receiver<()>, StoreError> {
        let mut client = self.campaign_client.clone();
        let (key, options) = match scope {
            WatchScope::ClusterData => (self.key("clusterdata"), None),
            WatchScope::Everything => (
                format!("{}/", self.base),
                Some(WatchOptions::new().with_prefix()),
            ),
        };
        let mut stream = self.bounded(client.watch(key, options)).await?;
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    msg = stream.message() => match msg {
                        // The first answer only confirms the watch exists.
                        Ok(Some(resp)) if resp.events().is_empty() => {}
                        Ok(Some(_)) => {
                            if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(()) {
                                return;
                            }
                        }
                        Ok(None) | Err(_) => return,
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(rx)
    }

    async fn campaign(&self, candidate: &str, ttl: Duration) -> Result<Leadership, StoreError> {
        let ttl_secs = ttl.as_secs().max(2) as i64;
        let mut client = self.client.clone();
        let lease = self.bounded(client.lease_grant(ttl_secs, None)).await?.id();
        let (mut keeper, mut responses) = self.bounded(client.lease_keep_alive(lease)).await?;
        let (lost_tx, lost_rx) = watch::channel(false);
        let renew_every = Duration::from_secs(ttl_secs as u64) / 3;
        let lease_ttl = Duration::from_secs(ttl_secs as u64);
        let request_timeout = self.timeout;
        // The lease is renewed from the start so that a long campaign does not lose it.
        // Leadership is taken as lost once the lease could have expired: a ttl after the
        // last renewal request that the server answered.
        let renewer = tokio::spawn(async move {
            let mut last_renewed = Instant::now();
            loop {
                let sent_at = Instant::now();
                let answered = tokio::time::timeout(request_timeout, async {
                    keeper.keep_alive().await?;
                    responses.message().await
                })
                .await;
                match answered {
                    Ok(Ok(Some(resp))) if resp.ttl() > 0 => last_renewed = sent_at,
                    Ok(Ok(Some(_))) => {
                        let _ = lost_tx.send(true);
                        return;
                    }
                    _ => {}
                }
                if last_renewed.elapsed() >= lease_ttl {
                    let _ = lost_tx.send(true);
                    return;
                }
                tokio::time::sleep(renew_every).await;
            }
        });
        let mut campaign_client = self.campaign_client.clone();
        let won = campaign_client
            .campaign(self.election_name(), candidate, lease)
            .await;
        let leader_key = match won {
            Ok(resp) => resp.leader().cloned(),
            Err(e) => {
                renewer.abort();
                let _ = client.lease_revoke(lease).await;
                return Err(unavailable(self.explain(&e)));
            }
        };
        let mut resign_client = self.client.clone();
        Ok(Leadership {
            lost: lost_rx,
            resign: Some(Box::new(move || {
                renewer.abort();
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        if let Some(key) = leader_key {
                            let _ = resign_client
                                .resign(Some(ResignOptions::new().with_leader(key)))
                                .await;
                        }
                        let _ = resign_client.lease_revoke(lease).await;
                    });
                }
            })),
        })
    }

    async fn leader(&self) -> Result<Option<String>, StoreError> {
        let mut client = self.client.clone();
        let asked = tokio::time::timeout(self.timeout, client.leader(self.election_name()));
        match asked.await {
            Err(_) => Err(unavailable("etcd request timed out")),
            Ok(Ok(resp)) => Ok(resp
                .kv()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())),
            // etcd answers an election without a leader with an error, not an empty answer:
            // its v3election service's ErrElectionNoLeader, which reaches the client as a
            // status of code Unknown whose message is all that tells it apart.
            Ok(Err(etcd_client::Error::GRpcStatus(status)))
                if status.message() == ELECTION_NO_LEADER =>
            {
                Ok(None)
            }
            Ok(Err(e)) => Err(unavailable(self.explain(&e))),
        }
    }
}
