//! What spliced sessions wait for: the end of either socket, and the verdict program's
//! reports that a socket has moved many bytes (time to check that its peer keeps up).
//!
//! The runtime's own epoll would wake the proxy for every segment the kernel redirects: it
//! watches readability, and the kernel signals readability after each redirect. This epoll
//! only asks for hang-ups and errors, which those signals do not match, and for the ring
//! buffer's records, so the proxy sleeps while sessions run smoothly.

use super::bpf::RingBuffer;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

/// What a session learns from the watch.
#[derive(Default)]
pub struct Signals {
    /// Sockets that ended (their cookies), with the epoll events that say how.
    ends: Mutex<Vec<(u64, u32)>>,
    /// A socket of the session has moved many bytes since the last check.
    busy: AtomicBool,
    changed: Notify,
}

impl Signals {
    /// Waits for an end, a busy report or `timeout`.
    pub async fn wait(&self, timeout: Option<Duration>) {
        let changed = self.changed.notified();
        if !self.ends.lock().unwrap().is_empty() || self.busy.load(Ordering::Acquire) {
            return;
        }
        match timeout {
            Some(timeout) => {
                let _ = tokio::time::timeout(timeout, changed).await;
            }
            None => changed.await,
        }
    }

    pub fn take_ends(&self) -> Vec<(u64, u32)> {
        std::mem::take(&mut *self.ends.lock().unwrap())
    }

    pub fn take_busy(&self) -> bool {
        self.busy.swap(false, Ordering::AcqRel)
    }
}

/// The epoll token of the ring buffer; socket tokens are their cookies, never 0.
const REPORTS: u64 = 0;

pub struct Watch {
    epoll: AsyncFd<OwnedFd>,
    reports: RingBuffer,
    /// Sessions by the cookies of their sockets.
    sessions: Mutex<HashMap<u64, Arc<Signals>>>,
}

impl Watch {
    pub fn new(reports: RingBuffer) -> io::Result<Watch> {
        // SAFETY: plain system call; a non-negative result is a new descriptor we own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        epoll_ctl(
            &epoll,
            libc::EPOLL_CTL_ADD,
            reports.fd(),
            libc::EPOLLIN as u32,
            REPORTS,
        )?;
        // SAFETY: the epoll descriptor is owned by the AsyncFd, which neither replaces nor
        // closes it while registered.
        let epoll =
            unsafe { AsyncFd::register_with_interest(epoll, tokio::io::Interest::READABLE)? };
        Ok(Watch {
            epoll,
            reports,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// Delivers the epoll's reports to the sessions, until the runtime shuts down.
    pub async fn run(self: Arc<Self>) {
        loop {
            match self.epoll.readable().await {
                Ok(mut guard) => {
                    if self.dispatch() {
                        guard.clear_ready();
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "spliced sessions are no longer watched");
                    return;
                }
            }
        }
    }

    /// Delivers what the epoll reports; true when it has no more to report.
    fn dispatch(&self) -> bool {
        const BATCH: usize = 64;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
        // SAFETY: the buffer holds BATCH events and outlives the call.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.get_ref().as_raw_fd(),
                events.as_mut_ptr(),
                BATCH as libc::c_int,
                0,
            )
        };
        if n < 0 {
            return false;
        }
        let sessions = self.sessions.lock().unwrap();
        let signal = |cookie: u64, ended: Option<u32>| {
            if let Some(signals) = sessions.get(&cookie) {
                match ended {
                    Some(events) => signals.ends.lock().unwrap().push((cookie, events)),
                    None => signals.busy.store(true, Ordering::Release),
                }
                signals.changed.notify_waiters();
            }
        };
        for event in &events[..n as usize] {
            match event.u64 {
                REPORTS => self.reports.drain(|record| {
                    if let Ok(cookie) = record.try_into() {
                        signal(u64::from_ne_bytes(cookie), None);
                    }
                }),
                cookie => signal(cookie, Some(event.events)),
            }
        }
        (n as usize) < BATCH
    }

    /// Watches `socket`, known by `cookie`, for the session's `signals` until the guard
    /// is dropped.
    pub fn watch<'a>(
        &'a self,
        socket: &impl AsRawFd,
        cookie: u64,
        signals: &Arc<Signals>,
    ) -> io::Result<Watched<'a>> {
        self.sessions
            .lock()
            .unwrap()
            .insert(cookie, signals.clone());
        let watched = Watched {
            watch: self,
            socket: socket.as_raw_fd(),
            cookie,
        };
        // Hang-ups and errors are always reported; one report per socket is enough.
        epoll_ctl(
            self.epoll.get_ref(),
            libc::EPOLL_CTL_ADD,
            socket.as_raw_fd(),
            (libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            cookie,
        )?;
        Ok(watched)
    }
}

fn epoll_ctl(
    epoll: &OwnedFd,
    op: libc::c_int,
    fd: RawFd,
    events: u32,
    token: u64,
) -> io::Result<()> {
    let mut event = libc::epoll_event { events, u64: token };
    // SAFETY: both descriptors are open; the event is read during the call only.
    let r = unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd, &mut event) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Watched<'_> {
    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    /// Watches for errors and hang-ups only, once more: after the peer's end has been
    /// reported, what is left to learn is a failure of the way back.
    pub fn watch_errors(&self) -> io::Result<()> {
        epoll_ctl(
            self.watch.epoll.get_ref(),
            libc::EPOLL_CTL_MOD,
            self.socket,
            libc::EPOLLONESHOT as u32,
            self.cookie,
        )
    }
}

/// A socket in the watch; dropping it takes it out.
pub struct Watched<'a> {
    watch: &'a Watch,
    socket: RawFd,
    cookie: u64,
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        // The session drops its sockets after this guard, so the descriptor is still the
        // one registered; one that is not registered only fails.
        let _ = epoll_ctl(
            self.watch.epoll.get_ref(),
            libc::EPOLL_CTL_DEL,
            self.socket,
            0,
            0,
        );
        self.watch.sessions.lock().unwrap().remove(&self.cookie);
    }
}
