//! The threads that carry the client sessions (`--relay-threads`), each a single-threaded
//! event loop: the accept loop hands each new client socket to the next one.

use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// The threads that carry the sessions, each with an event loop of its own. A session lives
/// on one thread from its first byte to its last, so relaying a message hands nothing from
/// thread to thread: a work-stealing pool spends a good share of a small machine waking
/// its idle workers to look for work, for each message.
pub(crate) struct Relays {
    loops: Vec<tokio::runtime::Handle>,
    next: AtomicUsize,
    /// Ends the threads' loops, and with them whatever sessions remain.
    pub stop: CancellationToken,
}

impl Relays {
    pub fn start(threads: usize) -> std::io::Result<Relays> {
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
    pub fn spawn<S, F>(&self, client: TcpStream, session: S)
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
    pub fn tasks(&self) -> usize {
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
