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
mod splice;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stolon_cluster::{ProxyInfo, ProxyUid};
use stolon_daemon::metrics::Exposition;
use stolon_engine::fence::{info_ttl, ProxyFence};
use stolon_engine::proxy::{read_only_targets, route, sessions_on_gate_change, Route, Sessions};
use stolon_store::{ChangeWaiter, InfoKind, Store, StoreError, WatchScope};
use tokio::io::{copy_bidirectional_with_sizes, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const RELAY_BUFFER: usize = 64 * 1024;
const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// The longest a new connection waits during a switchover; the sentinel ends every hold
/// long before (the switchover's timeout), this only bounds a proxy cut from it.
const MAX_HOLD: Duration = Duration::from_secs(60);

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
enum Endpoint {
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
    /// Swapped by the check loop, read by every new connection; held connections wait on
    /// its changes.
    routing: watch::Sender<Routing>,
    listeners: Mutex<Vec<(Endpoint, CancellationToken, JoinHandle<()>)>>,
    /// When this proxy must fence itself unless a check succeeds before, on the `origin`
    /// clock.
    fence: Mutex<ProxyFence>,
    origin: Instant,
    /// The read-only endpoint's standbys, each with the token that ends its connections.
    readers: Mutex<Vec<(SocketAddr, CancellationToken)>>,
    /// Round robin over `readers`.
    next_reader: AtomicUsize,
    counters: Counters,
    /// Present when sessions are spliced in the kernel.
    splicer: Option<splice::Splicer>,
    relays: Relays,
}

/// The threads that carry the sessions, each with an event loop of its own. A session lives
/// on one thread from its first byte to its last, so relaying a message hands nothing from
/// thread to thread: a work-stealing pool spends a good share of a small machine waking
/// its idle workers to look for work, for each message.
struct Relays {
    loops: Vec<tokio::runtime::Handle>,
    next: AtomicUsize,
    /// Ends the threads' loops, and with them whatever sessions remain.
    stop: CancellationToken,
}

impl Relays {
    fn start(threads: usize) -> std::io::Result<Relays> {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let stop = CancellationToken::new();
        let mut loops = Vec::with_capacity(threads);
        for i in 0..threads {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            loops.push(runtime.handle().clone());
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("relay-{i}"))
                .spawn(move || runtime.block_on(stop.cancelled()))?;
        }
        Ok(Relays {
            loops,
            next: AtomicUsize::new(0),
            stop,
        })
    }

    /// Runs `session` on the next thread, with `client` moved to that thread's loop.
    fn spawn<S, F>(&self, client: TcpStream, session: S)
    where
        S: FnOnce(TcpStream) -> F + Send + 'static,
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let client = match client.into_std() {
            Ok(client) => client,
            Err(e) => {
                tracing::debug!(error = %e, "cannot hand a client connection over");
                return;
            }
        };
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.loops.len();
        self.loops[i].spawn(async move {
            match TcpStream::from_std(client) {
                Ok(client) => session(client).await,
                Err(e) => tracing::debug!(error = %e, "cannot take a client connection over"),
            }
        });
    }

    /// Tasks alive on the relay threads.
    fn tasks(&self) -> usize {
        self.loops
            .iter()
            .map(|l| l.metrics().num_alive_tasks())
            .sum()
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What `/metrics` reports.
#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    /// Closed at once: no route (no primary, fenced, not enabled, no standby to read from).
    refused: AtomicU64,
    /// Piped to a server now.
    piped: AtomicI64,
    /// Waiting for a switchover to end now.
    held: AtomicI64,
    /// Sessions whose bytes the kernel moves.
    spliced: AtomicU64,
    fences: AtomicU64,
}

/// Counts one while alive.
struct Gauge<'a>(&'a AtomicI64);

impl<'a> Gauge<'a> {
    fn up(gauge: &'a AtomicI64) -> Gauge<'a> {
        gauge.fetch_add(1, Ordering::Relaxed);
        Gauge(gauge)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    /// Sets what new connections get. Leaving an open gate ends every connection piped
    /// through it: at once, or after `grace` when new connections are held meanwhile.
    fn set_gate(&self, gate: Gate, grace: Duration) -> bool {
        self.routing.send_if_modified(|routing| {
            match sessions_on_gate_change(&routing.gate, &gate, grace) {
                Sessions::Keep => return false,
                Sessions::CloseAfter(grace) => {
                    let draining = routing.connections.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(grace).await;
                        draining.cancel();
                    });
                }
                Sessions::CloseNow => {
                    routing.connections.cancel();
                    routing.connections = CancellationToken::new();
                }
            }
            routing.gate = gate;
            true
        })
    }

    async fn start_listening(self: &Arc<Self>) -> std::io::Result<()> {
        self.listen(Endpoint::Primary, self.config.listen)?;
        if let Some(ro) = &self.config.read_only {
            self.listen(Endpoint::ReadOnly, ro.listen)?;
        }
        Ok(())
    }

    fn listen(self: &Arc<Self>, endpoint: Endpoint, address: SocketAddr) -> std::io::Result<()> {
        let mut listeners = self.listeners.lock().unwrap();
        if listeners.iter().any(|(e, _, _)| *e == endpoint) {
            return Ok(());
        }
        let socket = match address {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(address)?;
        let listener = socket.listen(1024)?;
        match endpoint {
            Endpoint::Primary => tracing::info!(address = %address, "Starting proxying"),
            Endpoint::ReadOnly => {
                tracing::info!(address = %address, "Starting the read-only endpoint")
            }
        }
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(self.clone(), listener, stop.clone(), endpoint));
        listeners.push((endpoint, stop, task));
        Ok(())
    }

    fn stop_listening(&self) {
        let listeners = std::mem::take(&mut *self.listeners.lock().unwrap());
        if !listeners.is_empty() {
            tracing::info!("Stopping listening");
        }
        for (_, stop, _) in listeners {
            stop.cancel();
        }
    }

    /// Sets the standbys read-only connections go to; connections to a standby that left
    /// the set are closed, the others kept.
    fn set_readers(&self, addresses: &[SocketAddr]) -> bool {
        let mut readers = self.readers.lock().unwrap();
        if readers.len() == addresses.len()
            && readers.iter().zip(addresses).all(|((a, _), b)| a == b)
        {
            return false;
        }
        let mut kept = Vec::new();
        for (address, token) in readers.drain(..) {
            if addresses.contains(&address) {
                kept.push((address, token));
            } else {
                token.cancel();
            }
        }
        *readers = addresses
            .iter()
            .map(|address| {
                let token = kept
                    .iter()
                    .find(|(a, _)| a == address)
                    .map_or_else(CancellationToken::new, |(_, t)| t.clone());
                (*address, token)
            })
            .collect();
        true
    }

    fn pick_reader(&self) -> Option<(SocketAddr, CancellationToken)> {
        let readers = self.readers.lock().unwrap();
        if readers.is_empty() {
            return None;
        }
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % readers.len();
        Some(readers[i].clone())
    }

    fn render_metrics(&self) -> String {
        let c = &self.counters;
        let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed) as f64;
        let gauge = |gauge: &AtomicI64| gauge.load(Ordering::Relaxed) as f64;
        let gate = self.routing.borrow().gate;
        let listening = !self.listeners.lock().unwrap().is_empty();
        let readers = self.readers.lock().unwrap().len();
        let mut e = Exposition::new("proxy", &self.config.cluster_name);
        e.counter(
            "stolon_proxy_client_connections_total",
            "Client connections accepted.",
            count(&c.accepted),
        )
        .counter(
            "stolon_proxy_refused_connections_total",
            "Client connections closed at once for want of a route.",
            count(&c.refused),
        )
        .gauge(
            "stolon_proxy_piped_connections",
            "Client connections piped to a server now.",
            gauge(&c.piped),
        )
        .gauge(
            "stolon_proxy_held_connections",
            "Client connections waiting for a switchover to end.",
            gauge(&c.held),
        )
        .counter(
            "stolon_proxy_spliced_connections_total",
            "Client connections whose bytes the kernel moved (BPF sockmap).",
            count(&c.spliced),
        )
        .counter(
            "stolon_proxy_fences_total",
            "Times the proxy fenced itself for want of the store.",
            count(&c.fences),
        )
        .gauge(
            "stolon_proxy_listening",
            "1 while the proxy listens.",
            f64::from(u8::from(listening)),
        )
        .gauge(
            "stolon_proxy_routing",
            "1 while new connections go to a primary.",
            f64::from(u8::from(matches!(gate, Gate::Open(_)))),
        )
        .gauge(
            "stolon_proxy_read_only_targets",
            "Standbys the read-only endpoint uses now.",
            readers as f64,
        )
        .gauge(
            "stolon_proxy_tasks",
            "Tasks alive in the proxy: a few of its own, one per client connection.",
            (tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
                + self.relays.tasks()) as f64,
        );
        e.finish()
    }

    /// The proxy's monotonic clock, as the engine's fence reads it.
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Fences the proxy when its deadline has passed.
    fn enforce_deadline(&self) {
        let expired = self.fence.lock().unwrap().expired(self.now());
        if expired {
            if self.set_gate(Gate::Closed, Duration::ZERO) {
                tracing::warn!("check timeout timer fired: closing connections to master");
                self.counters.fences.fetch_add(1, Ordering::Relaxed);
            }
            self.set_readers(&[]);
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
        routing: watch::Sender::new(Routing {
            gate: Gate::Closed,
            connections: CancellationToken::new(),
        }),
        listeners: Mutex::new(Vec::new()),
        fence: Mutex::new(ProxyFence::default()),
        origin: Instant::now(),
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
    let mut last_route: Option<Route> = None;
    let mut changes = ChangeWaiter::new(WatchScope::ClusterData);
    while !shutdown.is_cancelled() {
        match check(&shared, store.as_ref(), &mut last_route).await {
            Ok(interval) => {
                check_interval = interval.unwrap_or(check_interval);
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
    shared.set_readers(&[]);
    shared.stop_listening();
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

/// Reads the cluster data, applies its route and acknowledges the proxy generation.
/// Returns how often to check, from the cluster spec.
async fn check(
    shared: &Shared,
    store: &dyn Store,
    last_route: &mut Option<Route>,
) -> Result<Option<Duration>, StoreError> {
    let started = shared.now();
    let read = match stolon_store::read_cluster_data(store).await {
        Ok(Some(read)) => read,
        Ok(None) => {
            shared.set_readers(&[]);
            if shared.set_gate(Gate::Closed, Duration::ZERO) {
                tracing::info!("no clusterdata available, closing connections to master");
            }
            shared.fence.lock().unwrap().renewed(started);
            return Ok(None);
        }
        Err(StoreError::Corrupt(e)) => {
            shared.set_readers(&[]);
            if shared.set_gate(Gate::Closed, Duration::ZERO) {
                tracing::error!(error = %e, "unusable cluster data, closing connections to master");
            }
            return Err(StoreError::Corrupt(e));
        }
        Err(e) => return Err(e),
    };
    let proxy_timeout = shared
        .fence
        .lock()
        .unwrap()
        .read_spec(started, read.spec.proxy_timeout);
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
    if let Some(ro) = &shared.config.read_only {
        let max_lag = ro.max_lag.unwrap_or(u64::from(read.spec.max_standby_lag));
        let targets = read_only_targets(
            &read.data,
            &shared.config.uid,
            max_lag,
            ro.fallback_to_primary,
        );
        let mut addresses = Vec::new();
        for t in &targets {
            if let Some(address) = resolve(&t.address, t.port).await {
                addresses.push(address);
            }
        }
        if shared.set_readers(&addresses) {
            let dbs: Vec<&str> = targets.iter().map(|t| t.db.as_str()).collect();
            tracing::info!(dbs = %dbs.join(","), "read-only endpoint targets changed");
        }
    }
    let info = ProxyInfo {
        info_uid: stolon_daemon::random_uid(),
        uid: shared.config.uid.clone(),
        generation: read.data.proxy.generation,
        proxy_timeout,
    };
    let ttl = info_ttl(proxy_timeout);
    let published = stolon_store::publish_info(
        store,
        InfoKind::Proxy,
        shared.config.uid.as_str(),
        &info,
        ttl,
    )
    .await;
    let mut fence = shared.fence.lock().unwrap();
    fence.announced(proxy_timeout, shared.now() + ttl);
    published?;
    fence.renewed(started);
    Ok(Some(read.spec.proxy_check_cadence()))
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

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    stop: CancellationToken,
    endpoint: Endpoint,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((client, _)) => {
                shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
                match endpoint {
                    Endpoint::Primary => {
                        let session = shared.clone();
                        shared
                            .relays
                            .spawn(client, move |client| serve(client, session));
                    }
                    Endpoint::ReadOnly => match shared.pick_reader() {
                        Some((target, connections)) => {
                            let session = shared.clone();
                            shared.relays.spawn(client, move |client| {
                                relay(client, target, connections, session)
                            });
                        }
                        // No standby to read from: dropping the client closes it at once.
                        None => {
                            shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                        }
                    },
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Gives a new client what the gate says, waiting while it holds.
async fn serve(client: TcpStream, shared: Arc<Shared>) {
    let mut routing = shared.routing.subscribe();
    let give_up = Instant::now() + MAX_HOLD;
    loop {
        let (gate, connections) = {
            let r = routing.borrow_and_update();
            (r.gate, r.connections.clone())
        };
        match gate {
            Gate::Open(target) => return relay(client, target, connections, shared.clone()).await,
            // Dropping the client closes it at once.
            Gate::Closed => {
                shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Gate::Hold => {
                let _held = Gauge::up(&shared.counters.held);
                match tokio::time::timeout_at(give_up, routing.changed()).await {
                    Ok(Ok(())) => continue,
                    _ => return,
                }
            }
        }
    }
}

async fn relay(
    mut client: TcpStream,
    target: SocketAddr,
    connections: CancellationToken,
    shared: Arc<Shared>,
) {
    // A PostgreSQL client speaks first, one length-prefixed message, and then waits for the
    // server: until it has spoken it costs no server connection (no backend process), so
    // idle and half-open clients only cost the proxy.
    let first = tokio::select! {
        _ = connections.cancelled() => return,
        first = tokio::time::timeout(STARTUP_TIMEOUT, read_first_message(&mut client)) => match first {
            Ok(Ok(first)) => first,
            // Silent for too long, or gone without a word.
            _ => return,
        },
    };
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
        shared.config.keepalive.apply(stream);
    }
    let _piped = Gauge::up(&shared.counters.piped);
    // The client now waits for the server's answer to its first message, so nothing is in
    // flight: the kernel can take over both directions from here without reordering bytes.
    let splicer = shared
        .splicer
        .as_ref()
        .filter(|_| first.complete && unread(&client) == Some(0));
    if let Some(splicer) = splicer {
        match splicer.splice(client, server) {
            Ok(session) => {
                shared.counters.spliced.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    _ = connections.cancelled() => {}
                    _ = session.run(&first.bytes) => {}
                }
                return;
            }
            Err(sockets) => (client, server) = sockets,
        }
    }
    tokio::select! {
        _ = connections.cancelled() => {}
        _ = async {
            server.write_all(&first.bytes).await?;
            copy_bidirectional_with_sizes(&mut client, &mut server, RELAY_BUFFER, RELAY_BUFFER).await
        } => {}
    }
}

/// The client's first message: a startup packet, or an SSL, GSS or cancel request.
struct FirstMessage {
    bytes: Vec<u8>,
    /// False when the length prefix is not a startup packet's: the bytes are only the
    /// prefix, and the rest is for the server to judge.
    complete: bool,
}

/// PostgreSQL's own bound on a startup packet.
const MAX_STARTUP_PACKET: usize = 10_000;
/// As long as PostgreSQL's default authentication_timeout.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

async fn read_first_message(client: &mut TcpStream) -> std::io::Result<FirstMessage> {
    let mut bytes = vec![0u8; 4];
    client.read_exact(&mut bytes).await?;
    let length = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    if !(8..=MAX_STARTUP_PACKET).contains(&length) {
        return Ok(FirstMessage {
            bytes,
            complete: false,
        });
    }
    bytes.resize(length, 0);
    client.read_exact(&mut bytes[4..]).await?;
    Ok(FirstMessage {
        bytes,
        complete: true,
    })
}

/// Bytes received and not yet read on `stream`.
fn unread(stream: &TcpStream) -> Option<usize> {
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer given, which lives across the call.
    let r = unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &mut unread) };
    (r == 0).then_some(unread as usize)
}
