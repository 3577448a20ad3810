//! In-kernel splicing of a client connection to its server connection.
//!
//! A userspace relay costs every query two wakeups of the proxy and a handful of system
//! calls, which on a small machine compete with the database for the CPU. Linux can move
//! the bytes itself: a small stream-verdict program, which the kernel runs on every segment
//! a spliced socket receives, redirects the segment to the peer socket's send queue (a BPF
//! sockhash). The proxy sleeps until a session ends.
//!
//! The kernel queues redirected bytes without limit when the receiving end does not read:
//! the sending socket gives each segment up at once, so its TCP window never closes on the
//! writer. The proxy bounds them itself. The program counts each socket's bytes and reports
//! the socket every [`REPORT_EVERY`] bytes; the session then compares what was redirected
//! with what the other end has acknowledged, and closes both connections when one end is
//! more than [`CUT_ABOVE`] behind. It does not hand such a session over to a userspace
//! relay, because no hand-over is safe: a socket cannot leave the sockhash while segments
//! arrive (the kernel drops a segment that comes in while its socket is being detached),
//! and the one way to stop redirecting without leaving it is to let the segments pass to
//! the socket's own queue, whose reads returned one 64 KiB segment twice under load on
//! Linux 6.18 (the stream then carried 65,483 bytes more than the server had sent).
//!
//! Sockets are keyed by their cookies (`SO_COOKIE`). Loading the program needs root
//! (`CAP_BPF` and `CAP_NET_ADMIN`); where the kernel refuses, the proxy relays in userspace.

mod bpf;
mod events;

use bpf::{Map, RingBuffer};
use events::{Signals, Watch};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// How many redirected bytes make the program report a socket.
const REPORT_EVERY: u32 = 1 << 20;
/// Bytes in flight toward one end of a session above which the session is closed: well
/// above what the socket buffers of a reader that keeps up hold (Linux lets them grow to
/// about 10 MiB), and the most kernel memory a session can take.
const CUT_ABOVE: u64 = 64 << 20;
/// How often a session checks the progress of its last bytes.
const PROGRESS_CHECK: Duration = Duration::from_millis(10);

pub struct Splicer {
    /// Each spliced socket under its peer's cookie: where the peer's bytes go. The program
    /// runs on the sockets in here.
    peers: Map,
    /// The program's byte counts by cookie.
    counters: Map,
    _program: OwnedFd,
    watch: Arc<Watch>,
    dispatcher: JoinHandle<()>,
}

impl Drop for Splicer {
    fn drop(&mut self) {
        self.dispatcher.abort();
    }
}

impl Splicer {
    /// Loads the verdict program; fails where the kernel or the privileges do not allow it.
    /// `capacity` bounds how many sockets (two per session) can be spliced at once. Must
    /// be called within the runtime.
    pub fn new(capacity: u32) -> io::Result<Splicer> {
        let peers = Map::sockets(capacity)?;
        let counters = Map::counters(capacity)?;
        let reports = RingBuffer::new(1 << 16)?;
        let program = bpf::load_verdict(&peers, &counters, &reports, REPORT_EVERY)?;
        let watch = Arc::new(Watch::new(reports)?);
        let dispatcher = tokio::spawn(watch.clone().run());
        Ok(Splicer {
            peers,
            counters,
            _program: program,
            watch,
            dispatcher,
        })
    }

    /// Splices a client that waits for its server's answer, with nothing unread on either
    /// socket, to that server. Gives the sockets back when the kernel refuses (a full map,
    /// say).
    pub fn splice(
        &self,
        client: TcpStream,
        server: TcpStream,
    ) -> Result<Session<'_>, (TcpStream, TcpStream)> {
        let cookies = match (cookie(&client), cookie(&server)) {
            (Ok(c), Ok(s)) => [c, s],
            _ => return Err((client, server)),
        };
        let keys = Keys {
            splicer: self,
            cookies,
        };
        match keys.insert(&client, &server) {
            Ok(()) => Ok(Session {
                keys,
                client,
                server,
            }),
            Err(e) => {
                tracing::debug!(error = %e, "cannot splice, relaying in userspace");
                drop(keys);
                Err((client, server))
            }
        }
    }

    /// Bytes redirected toward `direction`'s target that its peer has not acknowledged;
    /// None once the target's connection is closed.
    fn in_flight(&self, direction: &Direction<'_>) -> io::Result<Option<u64>> {
        let redirected = self.counters.counter(direction.cookie)?.redirected;
        let Some(acknowledged) = bytes_acked(direction.target)? else {
            return Ok(None);
        };
        Ok(Some((redirected + direction.written).saturating_sub(
            acknowledged.saturating_sub(direction.acked_before),
        )))
    }
}

/// A session's entries in the maps; dropping it removes them.
struct Keys<'a> {
    splicer: &'a Splicer,
    /// The client's, then the server's.
    cookies: [u64; 2],
}

impl Keys<'_> {
    fn insert(&self, client: &impl AsFd, server: &impl AsFd) -> io::Result<()> {
        let s = self.splicer;
        let [client_cookie, server_cookie] = self.cookies;
        s.counters.insert_counter(client_cookie)?;
        s.counters.insert_counter(server_cookie)?;
        // What arrives on one socket leaves by the other.
        s.peers.insert_socket(client_cookie, server)?;
        s.peers.insert_socket(server_cookie, client)
    }
}

impl Drop for Keys<'_> {
    fn drop(&mut self) {
        for cookie in self.cookies {
            self.splicer.peers.remove(cookie);
            self.splicer.counters.remove(cookie);
        }
    }
}

/// A client and its server connection, spliced; dropping it closes both.
pub struct Session<'a> {
    keys: Keys<'a>,
    client: TcpStream,
    server: TcpStream,
}

/// One direction of a session: the bytes the socket known by `cookie` receives leave by
/// `target`.
struct Direction<'a> {
    cookie: u64,
    /// Who reads what `target` sends: for the log.
    reader: &'static str,
    target: &'a std::net::TcpStream,
    /// Bytes the proxy itself wrote to `target`.
    written: u64,
    /// What `target`'s peer had acknowledged before the session (the SYN counts on one
    /// side only).
    acked_before: u64,
    state: Flow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Open,
    /// The source has sent its last byte: once the target's peer has them all, the end is
    /// passed on.
    Draining,
    Done,
}

impl Session<'_> {
    /// Sends the client's first message on and returns when the session is over: both
    /// sides have finished, one has failed, or one reads too slowly to keep up.
    pub async fn run(self, first: &[u8]) -> io::Result<()> {
        let Session {
            keys,
            client,
            mut server,
        } = self;
        let acked_before = [
            bytes_acked(&server)?.unwrap_or(0),
            bytes_acked(&client)?.unwrap_or(0),
        ];
        // The splice is in place before the server can answer.
        server.write_all(first).await?;
        // Off the runtime's epoll, which would wake up for every redirected segment.
        let (client, server) = (client.into_std()?, server.into_std()?);
        let mut directions = [
            Direction {
                cookie: keys.cookies[0],
                reader: "server",
                target: &server,
                written: first.len() as u64,
                acked_before: acked_before[0],
                state: Flow::Open,
            },
            Direction {
                cookie: keys.cookies[1],
                reader: "client",
                target: &client,
                written: 0,
                acked_before: acked_before[1],
                state: Flow::Open,
            },
        ];
        keys.splicer
            .spliced(&client, &server, &mut directions)
            .await
    }
}

impl Splicer {
    /// Watches a spliced session until it is over or must be cut.
    async fn spliced(
        &self,
        client: &std::net::TcpStream,
        server: &std::net::TcpStream,
        directions: &mut [Direction<'_>; 2],
    ) -> io::Result<()> {
        let signals = Arc::new(Signals::default());
        // The client's direction starts at the client, the server's at the server.
        let watched = [
            self.watch.watch(client, directions[0].cookie, &signals)?,
            self.watch.watch(server, directions[1].cookie, &signals)?,
        ];
        loop {
            let draining = directions.iter().any(|d| d.state == Flow::Draining);
            signals.wait(draining.then_some(PROGRESS_CHECK)).await;
            for (cookie, events) in signals.take_ends() {
                if events & libc::EPOLLERR as u32 != 0 {
                    return Ok(());
                }
                for d in directions.iter_mut().filter(|d| d.cookie == cookie) {
                    if d.state == Flow::Open {
                        d.state = Flow::Draining;
                    }
                }
                // Still open the other way: a failure there must end the session.
                if events & libc::EPOLLHUP as u32 == 0 {
                    for w in watched.iter().filter(|w| w.cookie() == cookie) {
                        w.watch_errors()?;
                    }
                }
            }
            let busy = signals.take_busy();
            for direction in directions.iter_mut() {
                if direction.state == Flow::Done || !(busy || direction.state == Flow::Draining) {
                    continue;
                }
                let Some(in_flight) = self.in_flight(direction)? else {
                    return Ok(());
                };
                if in_flight > CUT_ABOVE {
                    tracing::warn!(
                        behind_mib = in_flight >> 20,
                        "closing a spliced session: its {} reads too slowly to keep up",
                        direction.reader
                    );
                    return Ok(());
                }
                if direction.state == Flow::Draining && in_flight == 0 {
                    direction.target.shutdown(std::net::Shutdown::Write)?;
                    direction.state = Flow::Done;
                }
            }
            if directions.iter().all(|d| d.state == Flow::Done) {
                return Ok(());
            }
        }
    }
}

/// Bytes of ours the socket's peer has acknowledged; None once the connection is closed.
fn bytes_acked(socket: &impl AsRawFd) -> io::Result<Option<u64>> {
    const TCP_CLOSE: u8 = 7;
    // SAFETY: tcp_info is plain old data: any bytes, zeroes included, are a valid value.
    let info: libc::tcp_info = unsafe { socket_option(socket, libc::IPPROTO_TCP, libc::TCP_INFO)? };
    Ok((info.tcpi_state != TCP_CLOSE).then_some(info.tcpi_bytes_acked))
}

/// The kernel's unique, never reused id of a socket.
fn cookie(socket: &impl AsRawFd) -> io::Result<u64> {
    const SO_COOKIE: libc::c_int = 57;
    // SAFETY: any 8 bytes are a u64.
    unsafe { socket_option(socket, libc::SOL_SOCKET, SO_COOKIE) }
}

/// Reads a socket option into a zeroed `T`.
///
/// # Safety
/// `T` must be plain old data, valid whatever bytes the kernel writes (or leaves zero).
unsafe fn socket_option<T>(
    socket: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<T> {
    // SAFETY: the caller vouches that all zeroes is a valid T.
    let mut value: T = unsafe { std::mem::zeroed() };
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes to `value`, which outlives the call.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            name,
            &mut value as *mut T as *mut libc::c_void,
            &mut len,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// Splicing needs root: these tests run where the project's tests run, as root.
    fn splicer() -> &'static Splicer {
        let splicer = Splicer::new(1024)
            .expect("the kernel refuses to splice: these tests must run as root on Linux");
        Box::leak(Box::new(splicer))
    }

    /// A client and a server whose proxy-side sockets are spliced, the session running in
    /// the background; the server has already read the client's first message.
    async fn session(splicer: &'static Splicer) -> (TcpStream, TcpStream, JoinHandle<()>) {
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(proxy.local_addr().unwrap())
            .await
            .unwrap();
        let (from_client, _) = proxy.accept().await.unwrap();
        let to_server = TcpStream::connect(server_listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = server_listener.accept().await.unwrap();
        let session = splicer.splice(from_client, to_server).ok().unwrap();
        let task = tokio::spawn(async move {
            session.run(b"first").await.unwrap();
        });
        let mut first = [0u8; 5];
        server.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"first");
        (client, server, task)
    }

    /// `len` bytes of a pattern that reveals any loss, duplication or reordering.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len / 4)
            .flat_map(|i| (i as u32).to_be_bytes())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bytes_cross_both_ways_whole_and_in_order() {
        let (mut client, mut server, _session) = session(splicer()).await;
        client.write_all(b"ping").await.unwrap();
        let mut four = [0u8; 4];
        server.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"ping");
        server.write_all(b"pong").await.unwrap();
        client.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"pong");

        // Both directions at once, far more than any socket buffer.
        let big = pattern(48 << 20);
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let sent = big.clone();
        let up = tokio::spawn(async move { client_write.write_all(&sent).await.unwrap() });
        let sent = big.clone();
        let down = tokio::spawn(async move { server_write.write_all(&sent).await.unwrap() });
        let mut at_server = vec![0u8; big.len()];
        let mut at_client = vec![0u8; big.len()];
        let (a, b) = tokio::join!(
            server_read.read_exact(&mut at_server),
            client_read.read_exact(&mut at_client)
        );
        a.unwrap();
        b.unwrap();
        up.await.unwrap();
        down.await.unwrap();
        assert!(at_server == big, "client to server bytes altered");
        assert!(at_client == big, "server to client bytes altered");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_sessions_never_cross() {
        let splicer = splicer();
        let mut sessions = Vec::new();
        for id in 0..50u32 {
            let (mut client, mut server, session) = session(splicer).await;
            sessions.push(tokio::spawn(async move {
                for round in 0..100u32 {
                    let query = format!("{id}:{round}");
                    client.write_all(query.as_bytes()).await.unwrap();
                    let mut got = vec![0u8; query.len()];
                    server.read_exact(&mut got).await.unwrap();
                    assert_eq!(got, query.as_bytes(), "a query reached another server");
                    let answer = format!("{round}:{id}");
                    server.write_all(answer.as_bytes()).await.unwrap();
                    let mut got = vec![0u8; answer.len()];
                    client.read_exact(&mut got).await.unwrap();
                    assert_eq!(got, answer.as_bytes(), "an answer reached another client");
                }
                drop(client);
                drop(server);
                session.await.unwrap();
            }));
        }
        for session in sessions {
            session.await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_reader_that_falls_far_behind_is_cut_off() {
        let (client, mut server, session) = session(splicer()).await;
        let writer = tokio::spawn(async move {
            let chunk = vec![7u8; 1 << 20];
            let mut written = 0u64;
            while written < 1 << 30 && server.write_all(&chunk).await.is_ok() {
                written += chunk.len() as u64;
            }
            written
        });
        // The client reads nothing.
        ends(session).await;
        let written = tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .expect("the server's writes end")
            .unwrap();
        assert!(
            written < 1 << 30,
            "1 GiB taken in for a client that reads nothing"
        );
        assert!(written >= CUT_ABOVE, "cut after only {written} bytes");
        drop(client);
    }

    /// What `socket` receives until its peer closes it, which must happen soon.
    async fn until_closed(socket: &mut TcpStream, what: &str) -> Vec<u8> {
        let mut received = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut received))
            .await
            .unwrap_or_else(|_| panic!("{what} is not closed"))
            .unwrap();
        received
    }

    async fn ends(session: JoinHandle<()>) {
        tokio::time::timeout(Duration::from_secs(5), session)
            .await
            .expect("the session ends")
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_servers_last_words_reach_the_client_before_the_end() {
        let (mut client, mut server, session) = session(splicer()).await;
        server
            .write_all(b"FATAL: terminating connection")
            .await
            .unwrap();
        drop(server);
        let received = until_closed(&mut client, "the client's socket").await;
        assert_eq!(received, b"FATAL: terminating connection");
        drop(client);
        ends(session).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_client_that_leaves_ends_the_session_and_the_server_connection() {
        let (client, mut server, session) = session(splicer()).await;
        drop(client);
        assert!(until_closed(&mut server, "the server's socket")
            .await
            .is_empty());
        drop(server);
        ends(session).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn ending_a_session_closes_both_sockets() {
        let (mut client, mut server, session) = session(splicer()).await;
        session.abort();
        assert!(until_closed(&mut server, "the server's socket")
            .await
            .is_empty());
        assert!(until_closed(&mut client, "the client's socket")
            .await
            .is_empty());
    }
}
