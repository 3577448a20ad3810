//! The real-process test harness: etcd and the stolon binaries started on 127.0.0.1 in a
//! temporary directory, with their logs captured, helpers to wait for conditions with a
//! deadline and a message, SQL clients, and fault injection (SIGKILL, SIGSTOP).
//!
//! Nothing here installs anything: `scripts/setup.sh` does, and the binaries must have been
//! built (`cargo build --bins`) before the tests run.

mod checker;
mod cluster;
pub mod faults;
mod keepers;
mod kube;
pub mod net;
mod netcluster;
mod pgbin;
mod placement;
mod process;
pub mod tls;
mod waits;

pub use checker::{AckedCommit, Checker, CheckerReport, WriterKind, CONVERGE_LIMIT};
pub use cluster::{
    ClusterBuilder, StoreBackend, TestCluster, KUBE_NAMESPACE, REPL_PASSWORD, REPL_USER,
    SU_PASSWORD, SU_USER,
};
pub use keepers::{KeeperHandle, KeeperOptions};
pub use kube::{kube_bin_dir, kube_program, KubeApiServer, ADMIN_USER, USERS};
pub use netcluster::{NetCluster, NetClusterBuilder, NetDaemon, NetEtcd, NetKeeper};
pub use pgbin::{failing_pg_bin_dir, slow_pg_bin_dir};
pub use placement::FixedPorts;
pub use process::{EtcdServer, EtcdTls, Process};
pub use waits::{wait_for_master, Cluster};

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;

/// A free TCP port on 127.0.0.1, taken below the kernel's ephemeral range: a port from that
/// range may become the local port of some outgoing connection (a daemon's to etcd, say)
/// before the server meant to listen on it starts. Each process walks its own sequence from
/// a start derived from its pid, and skips ports something already listens on.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let high = ephemeral_low.max(2048);
    let low = high.saturating_sub(12_000).max(1024);
    let span = high - low;
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (low + (start + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 between {low} and {high}");
}

/// The directory with the workspace's binaries: a test executable lives in its `deps/`,
/// a benchmark binary beside them.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let here = exe.parent().expect("executable in a directory");
    let dir = if here.join("stolon-keeper").exists() {
        here.to_path_buf()
    } else {
        here.parent()
            .expect("test binary in target/<profile>/deps")
            .to_path_buf()
    };
    for bin in [
        "stolon-keeper",
        "stolon-sentinel",
        "stolon-proxy",
        "stolonctl",
    ] {
        assert!(
            dir.join(bin).exists(),
            "{bin} is not built in {}: run `cargo build --bins` first (scripts/test.sh does)",
            dir.display()
        );
    }
    dir
}

/// PostgreSQL's programs: the newest installed Debian server version.
pub fn pg_bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server is not installed: run scripts/setup.sh")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("postgres").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .expect("no PostgreSQL server in /usr/lib/postgresql: run scripts/setup.sh")
}

/// Polls `check` until it yields a value or `timeout` passes; panics with `what` then.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A SQL connection (no TLS) to 127.0.0.1:`port` as the test superuser.
pub async fn connect(port: u16) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    connect_to(std::net::SocketAddr::from(([127, 0, 0, 1], port))).await
}

/// A SQL connection (no TLS) to `address` as the test superuser.
pub async fn connect_to(
    address: std::net::SocketAddr,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    connect_as(address, SU_USER, SU_PASSWORD).await
}

/// A SQL connection (no TLS) to database `postgres` at `address` as `user`.
pub async fn connect_as(
    address: std::net::SocketAddr,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(address.ip().to_string())
        .port(address.port())
        .user(user)
        .password(password)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(3));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// How many of stolon's standbys stream from the primary `client` is connected to: their
/// walsenders in state `streaming` (a pg_basebackup's own stream is named otherwise).
pub async fn streaming_standbys(client: &tokio_postgres::Client) -> Option<i64> {
    let row = client
        .query_one(
            "select count(*) from pg_stat_replication where state = 'streaming' and application_name like 'stolon_%'",
            &[],
        )
        .await
        .ok()?;
    Some(row.get(0))
}

/// Whether `port` on 127.0.0.1 serves a query now.
pub async fn serves(port: u16) -> bool {
    serves_at(std::net::SocketAddr::from(([127, 0, 0, 1], port))).await
}

/// Whether `address` serves a query now (within 5 s).
pub async fn serves_at(address: std::net::SocketAddr) -> bool {
    let query = async { connect_to(address).await?.simple_query("select 1").await };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), query).await,
        Ok(Ok(_))
    )
}

/// Waits until `port` serves a query; panics with `what` after `timeout`.
pub async fn wait_for_service(what: &str, port: u16, timeout: Duration) {
    wait_until(
        what,
        timeout,
        || async move { serves(port).await.then_some(()) },
    )
    .await
}

/// `GET path` on 127.0.0.1:`port`: the status line and the body, or None when nothing
/// answers.
pub async fn http_get(port: u16, path: &str) -> Option<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        Some((head.lines().next()?.to_string(), body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()
        .flatten()
}

/// The value of the sample `name` (with its labels, if any) in a Prometheus text body.
pub fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {body}"))
}

/// Whether a client error means the server side of the connection went away: closed by the
/// proxy, reset, or a backend announcing its end because its postmaster died.
pub fn is_connection_loss(err: &tokio_postgres::Error) -> bool {
    err.is_closed()
        || err.to_string().contains("connection")
        || err
            .as_db_error()
            .is_some_and(|db| db.message().contains("terminating connection"))
}

/// One insert the server acknowledged.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    pub id: i32,
    pub sent: Instant,
    pub acked: Instant,
}

/// A client inserting one row every 20 ms through `port` into `table (id int primary key)`,
/// reconnecting after any error, and recording what was acknowledged: the measure of
/// availability and of lost writes.
pub struct Writer {
    acked: std::sync::Arc<std::sync::Mutex<Vec<Ack>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub fn start(port: u16, table: &'static str) -> Writer {
        let acked: std::sync::Arc<std::sync::Mutex<Vec<Ack>>> = Default::default();
        let log = acked.clone();
        let task = tokio::spawn(async move {
            let sql = format!("insert into {table} (id) values ($1)");
            let mut id = 0;
            loop {
                let Ok(client) = connect(port).await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                loop {
                    id += 1;
                    let sent = Instant::now();
                    match client.execute(&sql, &[&id]).await {
                        Ok(_) => log.lock().unwrap().push(Ack {
                            id,
                            sent,
                            acked: Instant::now(),
                        }),
                        Err(_) => break,
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Writer { acked, task }
    }

    pub fn acked(&self) -> Vec<Ack> {
        self.acked.lock().unwrap().clone()
    }

    /// The first acknowledgement of a write sent after `t` (a write sent before may still be
    /// acknowledged by the old primary).
    pub fn first_acked_sent_after(&self, t: Instant) -> Option<Instant> {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .find(|ack| ack.sent > t)
            .map(|ack| ack.acked)
    }

    pub fn stop(self) -> Vec<Ack> {
        self.task.abort();
        self.acked()
    }
}

/// One attempt of a [`ConnectionProbe`]: when it began and what failed, if anything.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub started: Instant,
    pub error: Option<String>,
}

/// A stream of new client connections through `port`, one every 20 ms, each running one
/// query: what clients that connect during an event see.
pub struct ConnectionProbe {
    attempts: std::sync::Arc<std::sync::Mutex<Vec<Attempt>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ConnectionProbe {
    pub fn start(port: u16) -> ConnectionProbe {
        let attempts: std::sync::Arc<std::sync::Mutex<Vec<Attempt>>> = Default::default();
        let log = attempts.clone();
        let task = tokio::spawn(async move {
            loop {
                let log = log.clone();
                // Each attempt on its own: a held connection must not delay the next one.
                tokio::spawn(async move {
                    let started = Instant::now();
                    let error = match connect(port).await {
                        Ok(client) => client.query_one("select 1", &[]).await.err(),
                        Err(e) => Some(e),
                    };
                    log.lock().unwrap().push(Attempt {
                        started,
                        error: error.map(|e| match e.as_db_error() {
                            Some(db) => format!("{}: {}", db.severity(), db.message()),
                            None => e.to_string(),
                        }),
                    });
                });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        ConnectionProbe { attempts, task }
    }

    /// Stops making new attempts and returns the finished ones.
    pub fn stop(self) -> Vec<Attempt> {
        self.task.abort();
        self.attempts.lock().unwrap().clone()
    }
}

/// The acknowledged ids missing from `table` as read through `port`.
pub async fn lost_writes(port: u16, table: &str, acked: &[Ack], timeout: Duration) -> Vec<i32> {
    let sql = format!("select id from {table}");
    let present: Vec<i32> = wait_until("reading back through the proxy", timeout, || {
        let sql = sql.clone();
        async move {
            let client = connect(port).await.ok()?;
            let rows = client.query(&sql, &[]).await.ok()?;
            Some(rows.iter().map(|r| r.get(0)).collect())
        }
    })
    .await;
    acked
        .iter()
        .map(|a| a.id)
        .filter(|id| !present.contains(id))
        .collect()
}
