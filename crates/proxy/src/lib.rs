//! The proxy: the clients' access point.
//!
//! It pipes each client connection to the db the cluster data names as primary, and only
//! while this proxy is among the enabled ones. It closes every piped connection when that
//! target changes, refuses connections while there is none, and fences itself (closes all,
//! stops listening) when it has not completed a successful check of the store within
//! proxyTimeout. After each successful check it publishes the proxy generation it applied:
//! the sentinel waits for that acknowledgement before it promotes a new primary. During a
//! planned switchover it holds new connections (they wait for the next route) and closes the
//! existing ones after the grace period the cluster data gives. The kernel moves each
//! session's bytes where it allows (`splice`); elsewhere a userspace relay does.

pub mod cli;
mod control;
mod metrics;
mod relays;
mod session;
// The only unsafe code of stolon-rs: the kernel's socket options, epoll and BPF interfaces.
#[allow(unsafe_code)]
mod splice;

use metrics::Counters;
use relays::Relays;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use stolon_cluster::ProxyUid;
use stolon_engine::proxy::machine::{ProxyMachine, ReadOnly, Settings};
use stolon_store::Store;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub uid: ProxyUid,
    /// Names the cluster in `/metrics`.
    pub cluster_name: String,
    pub listen: SocketAddr,
    /// Close the listening socket while fenced, so load balancers see the proxy as down.
    pub stop_listening: bool,
    pub keepalive: Keepalive,
    /// The read-only endpoint, when asked for.
    pub read_only: Option<ReadOnlyConfig>,
    /// Where to serve Prometheus `/metrics`, when asked for.
    pub metrics: Option<SocketAddr>,
    /// Let the kernel move the bytes of each session (BPF sockmap) where it can.
    pub kernel_splice: bool,
    /// Threads that carry the sessions; 0: one per CPU.
    pub relay_threads: usize,
}

/// The read-only endpoint: new connections balanced across the standbys that serve reads.
#[derive(Debug, Clone)]
pub struct ReadOnlyConfig {
    pub listen: SocketAddr,
    /// The most bytes a standby may be behind the primary; None: the spec's maxStandbyLag.
    pub max_lag: Option<u64>,
    /// With no standby to read from, send reads to the primary instead of refusing them.
    pub fallback_to_primary: bool,
}

/// Which of the proxy's endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    Primary,
    ReadOnly,
}

/// TCP keepalive settings for both sides of every piped connection (keepalive is always
/// on); None leaves the OS default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Keepalive {
    pub idle: Option<Duration>,
    pub interval: Option<Duration>,
    pub count: Option<u32>,
}

impl Keepalive {
    fn apply(&self, stream: &TcpStream) {
        let mut settings = socket2::TcpKeepalive::new();
        if let Some(idle) = self.idle {
            settings = settings.with_time(idle);
        }
        if let Some(interval) = self.interval {
            settings = settings.with_interval(interval);
        }
        if let Some(count) = self.count {
            settings = settings.with_retries(count);
        }
        let sock = socket2::SockRef::from(stream);
        if let Err(e) = sock.set_tcp_keepalive(&settings) {
            tracing::debug!(error = %e, "cannot set TCP keepalive");
        }
    }
}

/// What happens to a new client connection.
type Gate = stolon_engine::proxy::Gate<SocketAddr>;

/// The gate, and the token that ends every connection piped through it.
struct Routing {
    gate: Gate,
    connections: CancellationToken,
}

struct Shared {
    config: ProxyConfig,
    /// The engine's proxy machine: the checks drive it, the fence's watchdog asks it.
    machine: Mutex<ProxyMachine<SocketAddr>>,
    /// The origin of the machine's clock.
    origin: Instant,
    /// What the machine's gate says, read by every new connection; held connections wait
    /// on its changes.
    routing: watch::Sender<Routing>,
    listeners: Mutex<Vec<(Listener, CancellationToken, JoinHandle<()>)>>,
    /// The read-only endpoint's standbys, each with the token that ends its connections.
    readers: Mutex<Vec<(SocketAddr, CancellationToken)>>,
    /// Round robin over `readers`.
    next_reader: AtomicUsize,
    counters: Counters,
    /// Present when sessions are spliced in the kernel.
    splicer: Option<splice::Splicer>,
    relays: Relays,
}

impl Shared {
    fn machine(&self) -> MutexGuard<'_, ProxyMachine<SocketAddr>> {
        self.machine.lock().unwrap()
    }

    /// The machine's clock.
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// Runs the proxy until `shutdown`.
pub async fn run(
    config: ProxyConfig,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let settings = Settings {
        uid: config.uid.clone(),
        read_only: config.read_only.as_ref().map(|ro| ReadOnly {
            max_lag: ro.max_lag,
            fallback_to_primary: ro.fallback_to_primary,
        }),
        stop_listening: config.stop_listening,
    };
    let shared = Arc::new(Shared {
        machine: Mutex::new(ProxyMachine::new(settings, stolon_daemon::random_seed())),
        origin: Instant::now(),
        routing: watch::Sender::new(Routing {
            gate: Gate::Closed,
            connections: CancellationToken::new(),
        }),
        listeners: Mutex::new(Vec::new()),
        readers: Mutex::new(Vec::new()),
        next_reader: AtomicUsize::new(0),
        counters: Counters::default(),
        splicer: kernel_splicer(&config),
        relays: Relays::start(config.relay_threads)?,
        config,
    });
    if let Some(address) = shared.config.metrics {
        let metrics = shared.clone();
        stolon_daemon::http::serve(
            address,
            stolon_daemon::http::metrics_only(move || metrics.render_metrics()),
            shutdown.clone(),
        )
        .await?;
    }
    let fence = tokio::spawn(control::watch_fence(shared.clone()));
    control::run_checks(&shared, store.as_ref(), &shutdown).await;
    fence.abort();
    shared.relays.stop.cancel();
    Ok(())
}

/// Sockets spliced at once: two per session.
const SPLICE_CAPACITY: u32 = 1 << 18;

fn kernel_splicer(config: &ProxyConfig) -> Option<splice::Splicer> {
    if !config.kernel_splice {
        return None;
    }
    match splice::Splicer::new(SPLICE_CAPACITY) {
        Ok(splicer) => {
            tracing::info!("sessions are spliced in the kernel (BPF sockmap)");
            Some(splicer)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot splice sessions in the kernel, relaying them in userspace");
            None
        }
    }
}
