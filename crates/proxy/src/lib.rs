//! The proxy: the clients' access point.
//!
//! It pipes each client connection to the db the cluster data names as primary, and only
//! while this proxy is among the enabled ones. It closes every piped connection when that
//! target changes, refuses connections while there is none, and fences itself (closes all,
//! stops listening) when it has not completed a successful check of the store within
//! proxyTimeout. After each successful check it publishes the proxy generation it applied:
//! the sentinel waits for that acknowledgement before it promotes a new primary. During a
//! planned switchover it holds new connections (they wait for the next route) and closes the
//! existing ones after the grace period the cluster data gives.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stolon_cluster::{ProxyInfo, ProxyUid};
use stolon_engine::proxy::{route, Route};
use stolon_store::{ChangeWaiter, InfoKind, Store, StoreError, WatchScope};
use tokio::io::copy_bidirectional_with_sizes;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const RELAY_BUFFER: usize = 64 * 1024;
const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_PROXY_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest a new connection waits during a switchover; the sentinel ends every hold
/// long before (the switchover's timeout), this only bounds a proxy cut from it.
const MAX_HOLD: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub uid: ProxyUid,
    pub listen: SocketAddr,
    /// Close the listening socket while fenced, so load balancers see the proxy as down.
    pub stop_listening: bool,
}

/// What happens to a new client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// Closed at once.
    Closed,
    /// Piped to this address.
    Open(SocketAddr),
    /// Kept waiting for the next gate (planned switchover).
    Hold,
}

/// The gate, and the token that ends every connection piped through it.
struct Routing {
    gate: Gate,
    connections: CancellationToken,
}

struct Shared {
    config: ProxyConfig,
    /// Swapped by the check loop, read by every new connection; held connections wait on
    /// its changes.
    routing: watch::Sender<Routing>,
    listener: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
    /// When this proxy must fence itself unless a check succeeds before.
    deadline: Mutex<Option<Instant>>,
}

impl Shared {
    /// Sets what new connections get. Leaving an open gate ends every connection piped
    /// through it: at once, or after `grace` when new connections are held meanwhile.
    fn set_gate(&self, gate: Gate, grace: Duration) -> bool {
        self.routing.send_if_modified(|routing| {
            if routing.gate == gate {
                return false;
            }
            if gate == Gate::Hold {
                let draining = routing.connections.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    draining.cancel();
                });
            } else {
                routing.connections.cancel();
                routing.connections = CancellationToken::new();
            }
            routing.gate = gate;
            true
        })
    }

    async fn start_listening(self: &Arc<Self>) -> std::io::Result<()> {
        if self.listener.lock().unwrap().is_some() {
            return Ok(());
        }
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(self.config.listen)?;
        let listener = socket.listen(1024)?;
        tracing::info!(address = %self.config.listen, "Starting proxying");
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(self.clone(), listener, stop.clone()));
        *self.listener.lock().unwrap() = Some((stop, task));
        Ok(())
    }

    fn stop_listening(&self) {
        if let Some((stop, _)) = self.listener.lock().unwrap().take() {
            tracing::info!("Stopping listening");
            stop.cancel();
        }
    }

    /// Fences the proxy when its deadline has passed.
    fn enforce_deadline(&self) {
        let expired = self
            .deadline
            .lock()
            .unwrap()
            .is_some_and(|d| Instant::now() >= d);
        if expired {
            if self.set_gate(Gate::Closed, Duration::ZERO) {
                tracing::warn!("check timeout timer fired: closing connections to master");
            }
            if self.config.stop_listening {
                self.stop_listening();
            }
        }
    }
}

/// Runs the proxy until `shutdown`.
pub async fn run(
    config: ProxyConfig,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let shared = Arc::new(Shared {
        config,
        routing: watch::Sender::new(Routing {
            gate: Gate::Closed,
            connections: CancellationToken::new(),
        }),
        listener: Mutex::new(None),
        deadline: Mutex::new(None),
    });
    // The store client may block past the deadline: the fence is enforced on its own.
    let fence = {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                shared.enforce_deadline();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut check_interval = DEFAULT_CHECK_INTERVAL;
    let mut proxy_timeout = DEFAULT_PROXY_TIMEOUT;
    let mut last_route: Option<Route> = None;
    let mut changes = ChangeWaiter::new(WatchScope::ClusterData);
    while !shutdown.is_cancelled() {
        let started = Instant::now();
        match check(&shared, store.as_ref(), &mut proxy_timeout, &mut last_route).await {
            Ok(interval) => {
                check_interval = interval.unwrap_or(check_interval);
                *shared.deadline.lock().unwrap() = Some(started + proxy_timeout);
                if let Err(e) = shared.start_listening().await {
                    tracing::error!(error = %e, address = %shared.config.listen, "cannot listen");
                }
            }
            Err(e) => tracing::warn!(error = %e, "check function error"),
        }
        shared.enforce_deadline();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = changes.wait(store.as_ref(), check_interval) => {}
        }
    }
    fence.abort();
    shared.set_gate(Gate::Closed, Duration::ZERO);
    shared.stop_listening();
    Ok(())
}

/// Reads the cluster data, applies its route and acknowledges the proxy generation.
/// Returns the check interval of the cluster spec.
async fn check(
    shared: &Shared,
    store: &dyn Store,
    proxy_timeout: &mut Duration,
    last_route: &mut Option<Route>,
) -> Result<Option<Duration>, StoreError> {
    let read = match stolon_store::read_cluster_data(store).await {
        Ok(Some(read)) => read,
        Ok(None) => {
            if shared.set_gate(Gate::Closed, Duration::ZERO) {
                tracing::info!("no clusterdata available, closing connections to master");
            }
            return Ok(None);
        }
        Err(StoreError::Corrupt(e)) => {
            if shared.set_gate(Gate::Closed, Duration::ZERO) {
                tracing::error!(error = %e, "unusable cluster data, closing connections to master");
            }
            return Err(StoreError::Corrupt(e));
        }
        Err(e) => return Err(e),
    };
    // Never shorten the timeout we announced: a sentinel may already count on it.
    *proxy_timeout = (*proxy_timeout).max(read.spec.proxy_timeout);
    let decision = route(&read.data, &shared.config.uid);
    let (gate, grace) = match &decision {
        Route::To { address, port, .. } => (
            resolve(address, *port)
                .await
                .map_or(Gate::Closed, Gate::Open),
            Duration::ZERO,
        ),
        Route::Hold { grace } => (Gate::Hold, *grace),
        Route::Nowhere(_) => (Gate::Closed, Duration::ZERO),
    };
    if last_route.as_ref() != Some(&decision) {
        match &decision {
            Route::To { db, address, port } => {
                tracing::info!(db = %db, address = %format!("{address}:{port}"), "proxying to master address")
            }
            Route::Hold { grace } => {
                tracing::info!(grace = ?grace, "switchover: holding new connections, closing existing ones after the grace period")
            }
            Route::Nowhere(reason) => tracing::info!("{reason}"),
        }
        *last_route = Some(decision);
    }
    shared.set_gate(gate, grace);
    let info = ProxyInfo {
        info_uid: stolon_daemon::random_uid(),
        uid: shared.config.uid.clone(),
        generation: read.data.proxy.generation,
        proxy_timeout: *proxy_timeout,
    };
    let ttl = (2 * *proxy_timeout).max(Duration::from_secs(3));
    stolon_store::publish_info(
        store,
        InfoKind::Proxy,
        shared.config.uid.as_str(),
        &info,
        ttl,
    )
    .await?;
    Ok(Some(read.spec.proxy_check_interval))
}

async fn resolve(address: &str, port: u16) -> Option<SocketAddr> {
    match tokio::net::lookup_host((address, port)).await {
        Ok(mut addrs) => addrs.next(),
        Err(e) => {
            tracing::warn!(address, error = %e, "cannot resolve master address");
            None
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((client, _)) => {
                tokio::spawn(serve(client, shared.routing.subscribe()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Gives a new client what the gate says, waiting while it holds.
async fn serve(client: TcpStream, mut routing: watch::Receiver<Routing>) {
    let give_up = Instant::now() + MAX_HOLD;
    loop {
        let (gate, connections) = {
            let r = routing.borrow_and_update();
            (r.gate, r.connections.clone())
        };
        match gate {
            Gate::Open(target) => return relay(client, target, connections).await,
            // Dropping the client closes it at once.
            Gate::Closed => return,
            Gate::Hold => match tokio::time::timeout_at(give_up, routing.changed()).await {
                Ok(Ok(())) => continue,
                _ => return,
            },
        }
    }
}

async fn relay(mut client: TcpStream, target: SocketAddr, connections: CancellationToken) {
    let mut server = tokio::select! {
        _ = connections.cancelled() => return,
        s = TcpStream::connect(target) => match s {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, target = %target, "cannot connect to master");
                return;
            }
        },
    };
    for stream in [&client, &server] {
        let _ = stream.set_nodelay(true);
        let sock = socket2::SockRef::from(stream);
        let _ = sock.set_keepalive(true);
    }
    tokio::select! {
        _ = connections.cancelled() => {}
        _ = copy_bidirectional_with_sizes(&mut client, &mut server, RELAY_BUFFER, RELAY_BUFFER) => {}
    }
}
