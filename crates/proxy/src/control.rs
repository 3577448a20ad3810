//! The proxy's control plane: it carries out the requests and effects of the engine's proxy
//! machine ([`stolon_engine::proxy::machine`]), which decides everything: what the gate is,
//! which standbys the read-only endpoint uses, when to listen, when the fence closes all.

use crate::{Gate, Listener, Shared};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use stolon_engine::proxy::machine::{Effect, Input, Note, ReadOutcome, Request};
use stolon_engine::proxy::{Backend, Route, Sessions};
use stolon_store::{ChangeWaiter, InfoKind, Store, StoreError, WatchScope};
use tokio_util::sync::CancellationToken;

/// How often the watchdog asks whether the fence has run out: the store client may block
/// past the deadline, so the fence is enforced on its own.
const FENCE_POLL: Duration = Duration::from_millis(100);

/// Carries out the machine's requests until `shutdown`.
pub(crate) async fn run_checks(
    shared: &Arc<Shared>,
    store: &dyn Store,
    shutdown: &CancellationToken,
) {
    let mut changes = ChangeWaiter::new(WatchScope::ClusterData);
    // The last store error, told with the machine's note on the failed check.
    let mut failure: Option<StoreError> = None;
    let now = shared.now();
    let mut step = shared.machine().start(now);
    loop {
        for effect in step.effects {
            shared.apply(effect, failure.as_ref());
        }
        let input = match step.request {
            Request::ReadClusterData => {
                Input::Read(match stolon_store::read_cluster_view(store).await {
                    Ok(Some((view, _))) => ReadOutcome::Data(view),
                    Ok(None) => ReadOutcome::NoData,
                    Err(StoreError::Corrupt(why)) => ReadOutcome::Corrupt(why),
                    Err(e) => {
                        failure = Some(e);
                        ReadOutcome::Failed
                    }
                })
            }
            Request::Resolve { primary, readers } => {
                let primary = match primary {
                    Some(backend) => resolve(&backend).await,
                    None => None,
                };
                let mut resolved = Vec::new();
                for backend in &readers {
                    resolved.extend(resolve(backend).await);
                }
                Input::Resolved {
                    primary,
                    readers: resolved,
                }
            }
            Request::Publish { info, ttl } => {
                let stored = stolon_store::publish_info(
                    store,
                    InfoKind::Proxy,
                    info.uid.as_str(),
                    &info,
                    ttl,
                )
                .await;
                let succeeded = stored.is_ok();
                failure = stored.err();
                Input::Published { succeeded }
            }
            Request::Sleep { max } => {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = changes.wait(store, max) => {}
                }
                Input::Woken
            }
        };
        let now = shared.now();
        step = shared.machine().handle(now, input);
    }
    let effects = shared.machine().shut_down();
    for effect in effects {
        shared.apply(effect, None);
    }
}

/// The fence's watchdog: a task of its own, since the checks may be stuck in a store
/// request when the deadline passes.
pub(crate) async fn watch_fence(shared: Arc<Shared>) {
    loop {
        let now = shared.now();
        let effects = shared.machine().enforce_fence(now);
        for effect in effects {
            shared.apply(effect, None);
        }
        tokio::time::sleep(FENCE_POLL).await;
    }
}

async fn resolve(backend: &Backend) -> Option<SocketAddr> {
    match tokio::net::lookup_host((backend.address.as_str(), backend.port)).await {
        Ok(mut addrs) => addrs.next(),
        Err(e) => {
            tracing::warn!(address = %backend.address, error = %e, "cannot resolve master address");
            None
        }
    }
}

impl Shared {
    fn apply(self: &Arc<Self>, effect: Effect<SocketAddr>, failure: Option<&StoreError>) {
        match effect {
            Effect::SetGate { gate, sessions } => self.set_gate(gate, sessions),
            Effect::SetReaders(addresses) => self.set_readers(&addresses),
            Effect::Listen => {
                if let Err(e) = self.start_listening() {
                    tracing::error!(error = %e, address = %self.config.listen, "cannot listen");
                }
            }
            Effect::StopListening => self.stop_listening(),
            Effect::Tell(note) => self.tell(&note, failure),
        }
    }

    fn tell(&self, note: &Note, failure: Option<&StoreError>) {
        match note {
            Note::Route(Route::To { db, address, port }) => {
                tracing::info!(db = %db, address = %format!("{address}:{port}"), "{note}")
            }
            Note::Route(Route::Hold { grace }) => tracing::info!(grace = ?grace, "{note}"),
            Note::Route(Route::Nowhere(_)) | Note::NoClusterData => tracing::info!("{note}"),
            Note::Unusable(why) => tracing::error!(error = %why, "{note}"),
            Note::Readers(dbs) => tracing::info!(dbs = %dbs.join(","), "{note}"),
            Note::Fenced => {
                tracing::warn!("{note}");
                self.counters.fences.fetch_add(1, Ordering::Relaxed);
            }
            Note::CheckFailed => match failure {
                Some(e) => tracing::warn!(error = %e, "{note}"),
                None => tracing::warn!("{note}"),
            },
        }
    }

    /// What new connections get from now on, and what becomes of the sessions piped
    /// through the gate so far.
    fn set_gate(&self, gate: Gate, sessions: Sessions) {
        self.routing.send_modify(|routing| {
            match sessions {
                Sessions::Keep => {}
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
        });
    }

    fn start_listening(self: &Arc<Self>) -> std::io::Result<()> {
        self.listen(Listener::Primary, self.config.listen)?;
        if let Some(ro) = &self.config.read_only {
            self.listen(Listener::ReadOnly, ro.listen)?;
        }
        Ok(())
    }

    fn listen(self: &Arc<Self>, kind: Listener, address: SocketAddr) -> std::io::Result<()> {
        let mut listeners = self.listeners.lock().unwrap();
        if listeners.iter().any(|(k, _, _)| *k == kind) {
            return Ok(());
        }
        let socket = match address {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(address)?;
        let listener = socket.listen(1024)?;
        match kind {
            Listener::Primary => tracing::info!(address = %address, "Starting proxying"),
            Listener::ReadOnly => {
                tracing::info!(address = %address, "Starting the read-only endpoint")
            }
        }
        let stop = CancellationToken::new();
        let task = tokio::spawn(crate::session::accept_loop(
            self.clone(),
            listener,
            stop.clone(),
            kind,
        ));
        listeners.push((kind, stop, task));
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
    fn set_readers(&self, addresses: &[SocketAddr]) {
        let mut readers = self.readers.lock().unwrap();
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
    }

    pub(crate) fn pick_reader(&self) -> Option<(SocketAddr, CancellationToken)> {
        let readers = self.readers.lock().unwrap();
        if readers.is_empty() {
            return None;
        }
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % readers.len();
        Some(readers[i].clone())
    }
}
