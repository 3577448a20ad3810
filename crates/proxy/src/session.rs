//! The clients' sessions: accepted on a listener, given what the gate says (piped to the
//! primary, refused, or held during a switchover), their first message read, then relayed
//! to the server until either side closes or the gate changes.

use crate::metrics::Gauge;
use crate::{Gate, Listener, Shared};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{copy_bidirectional_with_sizes, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const RELAY_BUFFER: usize = 64 * 1024;
/// The longest a new connection waits during a switchover; the sentinel ends every hold
/// long before (the switchover's timeout), this only bounds a proxy cut from it.
const MAX_HOLD: Duration = Duration::from_secs(60);

pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    stop: CancellationToken,
    listener_kind: Listener,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((client, _)) => {
                shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
                match listener_kind {
                    Listener::Primary => {
                        let session = shared.clone();
                        shared
                            .relays
                            .spawn(client, move |client| serve(client, session));
                    }
                    Listener::ReadOnly => match shared.pick_reader() {
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
#[allow(unsafe_code)]
fn unread(stream: &TcpStream) -> Option<usize> {
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer given, which lives across the call.
    let r = unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &mut unread) };
    (r == 0).then_some(unread as usize)
}
