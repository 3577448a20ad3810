//! The proxy: listening and fencing semantics (S-PROXY-01), the enabled proxies
//! (S-PROXY-02), its flags, and clients that misbehave.

use nix::sys::signal::Signal;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use stolon_cluster::DbRole;
use stolon_testkit::{
    connect, http_get, is_connection_loss, metric, wait_for_service, wait_until, ClusterBuilder,
    StoreBackend, TestCluster,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

const BOOT: Duration = Duration::from_secs(90);
const FAILOVER: Duration = Duration::from_secs(60);
/// Errors the scenarios provoke on purpose.
const EXPECTED: &[&str] = &["action failed", "cannot connect to master"];

async fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).await.is_ok()
}

/// Waits until the cluster data names a running primary (with no proxy to check through).
async fn wait_for_primary(cluster: &TestCluster) {
    wait_until("a primary", BOOT, || async {
        let cd = cluster.cluster_data().await?;
        let master = cd.master_db()?;
        (master.spec.role == DbRole::Master
            && master.status.healthy
            && !master.status.in_recovery
            && master.status.current_generation == master.generation)
            .then_some(())
    })
    .await
}

/// S-PROXY-01: not listening before the first read of the store; listening once it has
/// one; a store blip shorter than proxyTimeout/3 changes nothing; a store that refuses, or
/// hangs, for longer than proxyTimeout closes every connection and the listener; both come
/// back with the store.
#[tokio::test(flavor = "multi_thread")]
async fn s_proxy_01_the_proxy_listens_only_while_it_can_read_the_store() {
    proxy_follows_the_store(StoreBackend::Etcd).await;
}

/// S-PROXY-01 on the Kubernetes store: the API server refuses (killed) or hangs (SIGSTOP).
#[tokio::test(flavor = "multi_thread")]
async fn s_proxy_01_the_proxy_listens_only_while_it_can_read_the_store_k8s() {
    proxy_follows_the_store(StoreBackend::Kubernetes).await;
}

async fn proxy_follows_the_store(backend: StoreBackend) {
    let mut cluster = ClusterBuilder::new()
        .store_backend(backend)
        .keepers(1)
        .proxies(0)
        .start()
        .await;
    wait_for_primary(&cluster).await;

    cluster.kill_store();
    cluster.add_proxy();
    let port = cluster.proxy_port();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!listening(port).await, "no store read yet: not listening");
    cluster.restart_store();
    wait_for_service("the proxy once the store is up", port, BOOT).await;

    // proxyTimeout is 5s: a 1s blip is below a third of it.
    let session = connect(port).await.unwrap();
    cluster.store_process().signal(Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.store_process().signal(Signal::SIGCONT);
    tokio::time::sleep(Duration::from_secs(2)).await;
    session
        .simple_query("select 1")
        .await
        .expect("a store blip leaves sessions alone");
    let log = std::fs::read_to_string(&cluster.proxies[0].1.log).unwrap();
    assert!(!log.contains("check timeout timer fired"), "{log}");

    for (what, down, up) in [
        ("refuses", Signal::SIGKILL, None),
        ("hangs", Signal::SIGSTOP, Some(Signal::SIGCONT)),
    ] {
        let session = connect(port).await.unwrap();
        if down == Signal::SIGKILL {
            cluster.kill_store();
        } else {
            cluster.store_process().signal(down);
        }
        let err = wait_until(
            &format!("the proxy to cut the session when the store {what}"),
            Duration::from_secs(30),
            || async { session.simple_query("select 1").await.err() },
        )
        .await;
        assert!(is_connection_loss(&err), "{what}: {err:?}");
        wait_until(
            &format!("the proxy to stop listening when the store {what}"),
            Duration::from_secs(10),
            || async { (!listening(port).await).then_some(()) },
        )
        .await;
        match up {
            Some(signal) => cluster.store_process().signal(signal),
            None => cluster.restart_store(),
        }
        wait_for_service(&format!("the proxy after the store {what}"), port, BOOT).await;
    }
    cluster.assert_no_unexpected_errors(EXPECTED);
}

/// The uid of the sentinel that leads now, and its index.
async fn leading_sentinel(cluster: &TestCluster) -> usize {
    let uid = wait_until("a sentinel leader", BOOT, || async {
        cluster.store.leader().await.ok().flatten()
    })
    .await;
    cluster
        .sentinels
        .iter()
        .position(|s| s.log_text().contains(&format!("uid={uid}")))
        .expect("the leader is one of ours")
}

async fn enabled_proxies(cluster: &TestCluster) -> Vec<String> {
    let cd = cluster.cluster_data().await.unwrap();
    cd.proxy
        .spec
        .enabled_proxies
        .iter()
        .map(|p| p.to_string())
        .collect()
}

async fn wait_enabled(cluster: &TestCluster, want: &[&str], what: &str) {
    wait_until(what, FAILOVER, || async {
        let cd = cluster.cluster_data().await?;
        let now: Vec<&str> = cd
            .proxy
            .spec
            .enabled_proxies
            .iter()
            .map(|p| p.as_str())
            .collect();
        (now == want).then_some(())
    })
    .await
}

/// S-PROXY-02: the enabled proxies survive a sentinel leader change; a frozen proxy leaves
/// the list and comes back when it thaws; a restarted proxy keeps its `--uid`; a dead proxy
/// does not stop a failover.
#[tokio::test(flavor = "multi_thread")]
async fn s_proxy_02_enabled_proxies_follow_the_live_proxies() {
    let mut cluster = ClusterBuilder::new()
        .keepers(2)
        .sentinels(2)
        .proxies(2)
        .start()
        .await;
    let master = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(1, BOOT).await;
    wait_enabled(&cluster, &["proxy0", "proxy1"], "both proxies enabled").await;

    let leader = leading_sentinel(&cluster).await;
    let generation = cluster.cluster_data().await.unwrap().proxy.generation;
    cluster.sentinels[leader].kill();
    wait_until("another sentinel to lead", BOOT, || async {
        (leading_sentinel(&cluster).await != leader).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cd = cluster.cluster_data().await.unwrap();
    assert_eq!(enabled_proxies(&cluster).await, ["proxy0", "proxy1"]);
    assert_eq!(cd.proxy.generation, generation, "no proxy change at all");

    cluster.proxies[1].1.signal(Signal::SIGSTOP);
    wait_enabled(&cluster, &["proxy0"], "the frozen proxy to leave the list").await;
    cluster.proxies[1].1.signal(Signal::SIGCONT);
    wait_enabled(
        &cluster,
        &["proxy0", "proxy1"],
        "the thawed proxy to come back",
    )
    .await;
    wait_for_service("the thawed proxy", cluster.proxies[1].0, BOOT).await;

    cluster.proxies[1].1.kill();
    cluster.restart_proxy(1);
    wait_for_service("the restarted proxy", cluster.proxies[1].0, BOOT).await;
    assert_eq!(enabled_proxies(&cluster).await, ["proxy0", "proxy1"]);

    cluster.proxies[1].1.kill();
    cluster.kill_keeper_and_postgres(master);
    let new_master = cluster.wait_for_new_master(master, FAILOVER).await;
    assert_ne!(new_master, master);
    wait_for_service(
        "the live proxy after the failover",
        cluster.proxy_port(),
        BOOT,
    )
    .await;
    cluster.assert_no_unexpected_errors(EXPECTED);
}

/// Negative keepalive settings and malformed uids are refused at start-up.
#[tokio::test(flavor = "multi_thread")]
async fn bad_proxy_flags_are_refused() {
    for (flag, value, says) in [
        ("--tcp-keepalive-interval", "-1", "-1"),
        ("--tcp-keepalive-idle", "-5", "-5"),
        ("--tcp-keepalive-count", "-2", "-2"),
        ("--uid", "Proxy-1", "invalid uid"),
        ("--relay-threads", "-1", "-1"),
    ] {
        let out = std::process::Command::new(stolon_testkit::bin_dir().join("stolon-proxy"))
            .args(["--cluster-name", "x", "--store-backend", "etcdv3"])
            .arg(format!("{flag}={value}"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value} accepted");
        assert!(stderr.contains(says), "{flag} {value}: {stderr}");
    }
}

/// A client connection that reads no faster than a given rate.
struct SlowReader {
    inner: TcpStream,
    nanos_per_byte: u64,
    chunk: Vec<u8>,
    /// When the bytes read so far are due at that rate.
    due: tokio::time::Instant,
    pause: Pin<Box<tokio::time::Sleep>>,
}

impl SlowReader {
    fn new(inner: TcpStream, bytes_per_second: u64) -> SlowReader {
        SlowReader {
            inner,
            nanos_per_byte: 1_000_000_000 / bytes_per_second,
            chunk: vec![0; 64 * 1024],
            due: tokio::time::Instant::now(),
            pause: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }
}

impl AsyncRead for SlowReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        ready!(self.pause.as_mut().poll(cx));
        let this = &mut *self;
        let room = buf.remaining().min(this.chunk.len());
        let mut chunk = ReadBuf::new(&mut this.chunk[..room]);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
        buf.put_slice(chunk.filled());
        let now = tokio::time::Instant::now();
        this.due = this.due.max(now)
            + Duration::from_nanos(chunk.filled().len() as u64 * this.nanos_per_byte);
        // Sleeps shorter than the timer's millisecond are not worth taking.
        if this.due > now + Duration::from_millis(2) {
            this.pause.as_mut().reset(this.due);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SlowReader {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Rows of 1000 bytes a reader of `bytes_per_second` asks for through `port`: all of them,
/// or the error.
async fn slow_read(
    port: u16,
    rows: usize,
    bytes_per_second: u64,
) -> Result<usize, tokio_postgres::Error> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut config = tokio_postgres::Config::new();
    config
        .user(stolon_testkit::SU_USER)
        .password(stolon_testkit::SU_PASSWORD)
        .dbname("postgres");
    let (client, connection) = config
        .connect_raw(
            SlowReader::new(stream, bytes_per_second),
            tokio_postgres::NoTls,
        )
        .await?;
    tokio::spawn(connection);
    let sql = format!("select repeat('x', 1000) from generate_series(1, {rows})");
    let messages = client.simple_query(&sql).await?;
    Ok(messages
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0).map(str::len) == Some(1000)))
        .count())
}

/// A client that reads a large result more slowly than PostgreSQL sends it (on loopback,
/// well above 100 MB/s): the relay makes the server wait and delivers every row; a spliced
/// session is closed once the client is 64 MiB behind (the kernel would queue the rest
/// without bound), with a warning, and other sessions through that proxy go on.
#[tokio::test(flavor = "multi_thread")]
async fn slow_readers_wait_in_the_relay_and_are_cut_off_when_spliced() {
    let mut cluster = ClusterBuilder::new().keepers(1).proxies(1).start().await;
    cluster.add_proxy_with(&["--kernel-splice", "true"]);
    cluster.wait_for_master(BOOT).await;
    let (relayed, spliced) = (cluster.proxies[0].0, cluster.proxies[1].0);
    wait_for_service("the relaying proxy", relayed, BOOT).await;
    wait_for_service("the splicing proxy", spliced, BOOT).await;
    let witness = connect(spliced).await.unwrap();
    witness.simple_query("select 1").await.unwrap();

    assert_eq!(
        slow_read(relayed, 100_000, 32_000_000).await.unwrap(),
        100_000
    );
    let cut = slow_read(spliced, 300_000, 8_000_000).await;
    assert!(cut.is_err(), "a spliced slow reader got the whole result");
    let log = cluster.proxies[1].1.log_text();
    assert!(
        log.contains("closing a spliced session: its client reads too slowly to keep up"),
        "{log}"
    );
    witness
        .simple_query("select 1")
        .await
        .expect("other sessions go on");
    cluster.assert_no_unexpected_errors(EXPECTED);
}

/// The names of a process's threads that carry sessions.
fn relay_threads(pid: i32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .filter(|name| name.starts_with("relay-"))
        .collect();
    names.sort();
    names
}

/// `--relay-threads`: that many threads carry the sessions (by default one per CPU), and
/// sessions spread over them all keep working.
#[tokio::test(flavor = "multi_thread")]
async fn relay_threads_carry_the_sessions() {
    let mut cluster = ClusterBuilder::new().keepers(1).proxies(1).start().await;
    cluster.add_proxy_with(&["--relay-threads", "3"]);
    cluster.wait_for_master(BOOT).await;
    // Listening: each proxy has started its threads.
    let port = cluster.proxies[1].0;
    wait_for_service("the proxy", cluster.proxies[0].0, BOOT).await;
    wait_for_service("the proxy with 3 threads", port, BOOT).await;
    let per_cpu = std::thread::available_parallelism().unwrap().get();
    let default = cluster.proxies[0].1.pid().unwrap();
    let three = cluster.proxies[1].1.pid().unwrap();
    let expected: Vec<String> = (0..per_cpu).map(|i| format!("relay-{i}")).collect();
    assert_eq!(relay_threads(default), expected);
    assert_eq!(relay_threads(three), ["relay-0", "relay-1", "relay-2"]);
    let mut sessions = Vec::new();
    for _ in 0..6 {
        sessions.push(connect(port).await.unwrap());
    }
    for (i, s) in sessions.iter().enumerate() {
        let rows = s.simple_query(&format!("select {i}")).await.unwrap();
        let got = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        assert_eq!(got, Some(i.to_string()));
    }
    cluster.assert_no_unexpected_errors(EXPECTED);
}

/// What each of a process's descriptors is: a TCP socket's addresses and state (from
/// `/proc/<pid>/net/tcp`), or what the descriptor's link names.
fn descriptors(pid: i32) -> Vec<String> {
    let mut sockets = std::collections::HashMap::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for fields in text
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
        {
            // sl local remote st tx:rx tr:when retransmits uid timeout inode ...
            if let (Some(local), Some(remote), Some(state), Some(inode)) =
                (fields.get(1), fields.get(2), fields.get(3), fields.get(9))
            {
                let port =
                    |a: &str| u16::from_str_radix(a.rsplit(':').next().unwrap(), 16).unwrap();
                sockets.insert(
                    format!("socket:[{inode}]"),
                    format!("tcp :{} -> :{} state {state}", port(local), port(remote)),
                );
            }
        }
    }
    let mut out: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .map(|target| {
            let target = target.to_string_lossy().into_owned();
            sockets.get(&target).cloned().unwrap_or(target)
        })
        .collect();
    out.sort();
    out
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Garbage bytes, half-open and never-finishing connections, a client that goes away in
/// the middle of a result, and 10,000 idle connections: other clients are not affected,
/// and once they are gone the proxy holds no more descriptors (the store client's own
/// connections aside) and runs no more tasks than before (`stolon_proxy_tasks`).
#[tokio::test(flavor = "multi_thread")]
async fn hostile_clients_do_not_affect_others_or_leak() {
    hostile_clients(&[]).await;
}

/// The same through the kernel splice (the tests run as root).
#[tokio::test(flavor = "multi_thread")]
async fn hostile_clients_do_not_affect_others_or_leak_when_spliced() {
    hostile_clients(&["--kernel-splice", "true"]).await;
}

async fn hostile_clients(proxy_args: &[&str]) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let mut cluster = ClusterBuilder::new().keepers(1).proxies(0).start().await;
    let metrics = stolon_testkit::free_port();
    let metrics_flag = format!("127.0.0.1:{metrics}");
    cluster.add_proxy_with(&[proxy_args, &["--metrics-listen-address", &metrics_flag]].concat());
    cluster.wait_for_master(BOOT).await;
    let port = cluster.proxy_port();
    wait_for_service("the proxy", port, BOOT).await;
    let pid = cluster.proxies[0].1.pid().unwrap();
    let witness = connect(port).await.unwrap();
    witness.simple_query("select 1").await.unwrap();
    let tasks = || async {
        let (_, body) = http_get(metrics, "/metrics")
            .await
            .expect("the proxy's metrics");
        metric(&body, "stolon_proxy_tasks")
    };
    let tasks_before = tasks().await;
    // The store client manages its own connections (it may add one under load): every
    // other descriptor counts.
    let store_port = cluster
        .etcd
        .endpoint
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let store = format!("-> :{store_port} ");
    let own = || -> Vec<String> {
        descriptors(pid)
            .into_iter()
            .filter(|d| !d.contains(&store))
            .collect()
    };
    let before = own();
    let fds_before = before.len();
    let rss_before = rss_kib(pid);

    // Garbage instead of a startup packet: postgres refuses it, the connection ends.
    let mut garbage = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let noise: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    let _ = garbage.write_all(&noise).await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), garbage.read_to_end(&mut sink)).await;
    // Half-open, and a startup packet that never finishes.
    let silent = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut partial = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    partial.write_all(&[0, 0, 0, 80, 0, 3]).await.unwrap();
    // A client that leaves in the middle of a large result.
    let reader = connect(port).await.unwrap();
    let big = tokio::spawn(async move {
        reader
            .simple_query("select repeat('x', 1000) from generate_series(1, 200000)")
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    big.abort();
    witness
        .simple_query("select 1")
        .await
        .expect("unaffected by the others");

    let mut idle = Vec::new();
    for _ in 0..10_000 {
        idle.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = rss_kib(pid);
    let fds_idle = own().len();
    let tasks_idle = tasks().await;
    eprintln!(
        "10000 idle connections: proxy RSS {rss_before} KiB -> {rss_idle} KiB ({:.1} KiB per connection), fds {fds_before} -> {fds_idle}, tasks {tasks_before} -> {tasks_idle}",
        (rss_idle.saturating_sub(rss_before)) as f64 / 10_000.0
    );
    assert!(fds_idle >= fds_before + 10_000, "the proxy holds them all");
    assert!(
        tasks_idle >= tasks_before + 10_000.0,
        "a task per connection"
    );
    witness
        .simple_query("select 1")
        .await
        .expect("unaffected by 10,000 idle connections");
    let fresh = connect(port).await.expect("new clients still served");
    fresh.simple_query("select 1").await.unwrap();
    drop(fresh);

    drop(idle);
    drop(silent);
    drop(partial);
    drop(garbage);
    let released = tokio::time::timeout(BOOT, async {
        while own().len() > fds_before {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if released.is_err() {
        let mut left = own();
        for d in &before {
            if let Some(i) = left.iter().position(|l| l == d) {
                left.remove(i);
            }
        }
        panic!("the proxy still holds, besides what it held before: {left:#?}");
    }
    wait_until("the proxy to end every connection's task", BOOT, || async {
        (tasks().await <= tasks_before).then_some(())
    })
    .await;
    witness.simple_query("select 1").await.unwrap();
    cluster.assert_no_unexpected_errors(EXPECTED);
}

/// The server port a new connection through `port` lands on, if it is served.
async fn lands_on(port: u16) -> Option<i32> {
    let client = connect(port).await.ok()?;
    let row = client
        .query_one("select inet_server_port()", &[])
        .await
        .ok()?;
    Some(row.get(0))
}

/// A session through `port` that landed on the server port `on`.
async fn session_on(port: u16, on: i32) -> tokio_postgres::Client {
    wait_until(&format!("a read-only session on {on}"), BOOT, || async {
        let client = connect(port).await.ok()?;
        let row = client
            .query_one("select inet_server_port()", &[])
            .await
            .ok()?;
        (row.get::<_, i32>(0) == on).then_some(client)
    })
    .await
}

/// S-PROXY-04: the read-only endpoint balances new connections across the standbys and
/// never sends them to the primary; a standby promoted or left behind leaves it, with its
/// sessions closed; with no standby left it refuses, unless told to fall back to the
/// primary.
#[tokio::test(flavor = "multi_thread")]
async fn s_proxy_04_read_only_endpoint_uses_fresh_standbys_only() {
    let mut cluster = ClusterBuilder::new().keepers(3).start().await;
    let (ro, ro_fallback) = (stolon_testkit::free_port(), stolon_testkit::free_port());
    cluster.add_proxy_with(&["--ro-port", &ro.to_string()]);
    cluster.add_proxy_with(&[
        "--ro-port",
        &ro_fallback.to_string(),
        "--ro-fallback-to-primary",
    ]);
    let master = cluster.wait_for_master(BOOT).await;
    cluster.wait_for_standbys(2, BOOT).await;
    let ports: Vec<i32> = cluster.keepers.iter().map(|k| k.pg_port as i32).collect();
    let port_of = |i: usize| ports[i];
    let standbys: Vec<usize> = (0..3).filter(|i| *i != master).collect();

    let seen = wait_until("reads balanced over both standbys", BOOT, || async {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let on = lands_on(ro).await?;
            assert_ne!(
                on,
                port_of(master),
                "a read-only connection reached the primary"
            );
            seen.insert(on);
        }
        (seen.len() == 2).then_some(seen)
    })
    .await;
    assert_eq!(
        seen,
        standbys.iter().map(|i| port_of(*i)).collect(),
        "only the standbys serve reads"
    );

    // A failover: the promoted standby's read-only sessions end, it serves no more reads.
    let sessions = [
        session_on(ro, port_of(standbys[0])).await,
        session_on(ro, port_of(standbys[1])).await,
    ];
    cluster.kill_keeper_and_postgres(master);
    let promoted = cluster.wait_for_new_master(master, FAILOVER).await;
    let left = *standbys.iter().find(|i| **i != promoted).unwrap();
    let promoted_session = &sessions[standbys.iter().position(|i| *i == promoted).unwrap()];
    let err = wait_until("the promoted standby's reads to end", FAILOVER, || async {
        promoted_session.simple_query("select 1").await.err()
    })
    .await;
    assert!(is_connection_loss(&err), "{err:?}");
    wait_until("reads from the remaining standby", BOOT, || async {
        (lands_on(ro).await? == port_of(left)).then_some(())
    })
    .await;
    for _ in 0..10 {
        assert_eq!(lands_on(ro).await, Some(port_of(left)));
    }

    // The last standby stops receiving WAL while the primary writes: it leaves, and reads
    // are refused, or go to the primary where asked.
    let writer = connect(cluster.proxy_port()).await.unwrap();
    cluster.freeze_walreceiver(left, true);
    writer
        .batch_execute(
            "create table filler as select repeat('x', 1000) from generate_series(1, 5000)",
        )
        .await
        .unwrap();
    wait_until(
        "reads refused without a fresh standby",
        FAILOVER,
        || async { lands_on(ro).await.is_none().then_some(()) },
    )
    .await;
    // The other proxy drops the standby on its own read of the store.
    wait_until("reads falling back to the primary", FAILOVER, || async {
        (lands_on(ro_fallback).await == Some(port_of(promoted))).then_some(())
    })
    .await;
    cluster.freeze_walreceiver(left, false);
    wait_until(
        "the standby back in the read-only set",
        FAILOVER,
        || async { (lands_on(ro).await? == port_of(left)).then_some(()) },
    )
    .await;
    cluster.assert_no_unexpected_errors(EXPECTED);
}

/// `GET path` on 127.0.0.1:`port`: the status line and the body.
/// `--metrics-listen-address`: Prometheus text on `/metrics`, counting connections.
#[tokio::test(flavor = "multi_thread")]
async fn proxy_metrics_count_connections() {
    let mut cluster = ClusterBuilder::new().keepers(1).proxies(0).start().await;
    let metrics = stolon_testkit::free_port();
    cluster.add_proxy_with(&[
        "--metrics-listen-address",
        &format!("127.0.0.1:{metrics}"),
        "--kernel-splice",
        "true",
    ]);
    cluster.wait_for_master(BOOT).await;
    let port = cluster.proxy_port();
    wait_for_service("the proxy", port, BOOT).await;
    let (status, before) = http_get(metrics, "/metrics").await.unwrap();
    assert!(status.contains("200"), "{status}");
    assert_eq!(metric(&before, "stolon_proxy_listening"), 1.0);
    assert_eq!(metric(&before, "stolon_proxy_routing"), 1.0);
    let sessions = [connect(port).await.unwrap(), connect(port).await.unwrap()];
    for s in &sessions {
        s.simple_query("select 1").await.unwrap();
    }
    let (_, during) = http_get(metrics, "/metrics").await.unwrap();
    assert_eq!(
        metric(&during, "stolon_proxy_client_connections_total")
            - metric(&before, "stolon_proxy_client_connections_total"),
        2.0
    );
    assert!(
        metric(&during, "stolon_proxy_piped_connections") >= 2.0,
        "{during}"
    );
    // The tests run as root, where the kernel splices the sessions when asked to.
    assert_eq!(
        metric(&during, "stolon_proxy_spliced_connections_total")
            - metric(&before, "stolon_proxy_spliced_connections_total"),
        2.0,
        "{during}"
    );
    drop(sessions);
    let (status, _) = http_get(metrics, "/other").await.unwrap();
    assert!(status.contains("404"), "{status}");
    assert!(
        before.contains(r#"stolon_cluster_identifier{cluster_name="test",component="proxy"} 1"#),
        "{before}"
    );
    cluster.assert_no_unexpected_errors(EXPECTED);
}
