//! The sentinel: several run, one leads.
//!
//! Every sentinel publishes its info and campaigns for leadership. The leader, on every
//! change in the store (or every sleep interval), reads the cluster data and the keepers'
//! and proxies' infos, asks the engine's planner ([`stolon_engine::sentinel::step`]) for the
//! next cluster data, and writes it with compare-and-swap against the revision it read.

pub mod cli;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use stolon_cluster::{
    ClusterData, ClusterSpec, ClusterUid, KeeperInfo, ProxyInfo, SentinelInfo, SentinelUid,
};
use stolon_daemon::metrics::{unix_seconds, Exposition};
use stolon_engine::sentinel::{step, Memory, Observations};
use stolon_engine::{Event, Level};
use stolon_store::{ChangeWaiter, Expect, InfoKind, Store, StoreError, WatchScope};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a leader keeps its leadership without renewing it.
pub const LEADER_TTL: Duration = Duration::from_secs(5);
/// Until the cluster data says otherwise.
const DEFAULT_SLEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Store changes arrive in bursts (every component publishes): gather them.
const DEBOUNCE: Duration = Duration::from_millis(50);

pub struct SentinelConfig {
    pub uid: SentinelUid,
    /// Written as a new cluster when the store holds no cluster data.
    pub initial_spec: Option<ClusterSpec>,
    /// Names the cluster in `/metrics`.
    pub cluster_name: String,
    /// Where to serve Prometheus `/metrics`, when asked for.
    pub metrics: Option<SocketAddr>,
}

/// Leadership as the election loop sees it, and what `/metrics` reports.
#[derive(Default)]
struct LeaderTerm {
    /// The number of the term being led; 0 means not leading now.
    current: AtomicU64,
    /// Terms won since the sentinel started.
    won: AtomicU64,
    /// When a cluster check last succeeded.
    last_check_ok: Mutex<Option<SystemTime>>,
}

impl LeaderTerm {
    fn current(&self) -> u64 {
        self.current.load(Ordering::SeqCst)
    }

    fn check_succeeded(&self) {
        *self.last_check_ok.lock().unwrap() = Some(SystemTime::now());
    }

    fn render_metrics(&self, cluster_name: &str) -> String {
        let mut e = Exposition::new("sentinel", cluster_name);
        e.gauge(
            "stolon_sentinel_is_leader",
            "1 while this sentinel leads.",
            f64::from(u8::from(self.current() != 0)),
        )
        .counter(
            "stolon_sentinel_leader_count",
            "Leadership terms this sentinel has won.",
            self.won.load(Ordering::SeqCst) as f64,
        )
        .gauge(
            "stolon_sentinel_last_cluster_check_success_seconds",
            "When a cluster check last succeeded (unix time).",
            unix_seconds(*self.last_check_ok.lock().unwrap()),
        );
        e.finish()
    }
}

/// Runs the sentinel until `shutdown`.
pub async fn run(
    config: SentinelConfig,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let term = Arc::new(LeaderTerm::default());
    if let Some(address) = config.metrics {
        let (term, cluster_name) = (term.clone(), config.cluster_name.clone());
        stolon_daemon::http::serve(
            address,
            stolon_daemon::http::metrics_only(move || term.render_metrics(&cluster_name)),
            shutdown.clone(),
        )
        .await?;
    }
    let election = tokio::spawn(election_loop(
        store.clone(),
        config.uid.clone(),
        term.clone(),
        shutdown.clone(),
    ));
    let mut sentinel = Sentinel {
        config,
        store,
        term,
        memory: Memory::default(),
        memory_term: 0,
        events: EventLog::default(),
        started: Instant::now(),
        info_published: None,
        wake_at: None,
    };
    let mut sleep_interval = DEFAULT_SLEEP_INTERVAL;
    let mut changes = ChangeWaiter::new(WatchScope::Everything);
    while !shutdown.is_cancelled() {
        match sentinel.check().await {
            Ok(Some(interval)) => {
                sentinel.term.check_succeeded();
                sleep_interval = interval;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cluster check failed"),
        }
        let store = sentinel.store.clone();
        // A deadline the planner named (a failInterval falling due) comes before the
        // fallback poll.
        let wait = sentinel.wake_at.take().map_or(sleep_interval, |at| {
            at.saturating_sub(sentinel.started.elapsed())
                .min(sleep_interval)
        });
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = changes.wait(store.as_ref(), wait) => {
                if changed {
                    tokio::time::sleep(DEBOUNCE).await;
                }
            }
        }
    }
    election.abort();
    Ok(())
}

struct Sentinel {
    config: SentinelConfig,
    store: Arc<dyn Store>,
    term: Arc<LeaderTerm>,
    memory: Memory,
    /// The leadership term `memory` belongs to.
    memory_term: u64,
    events: EventLog,
    started: Instant,
    info_published: Option<Instant>,
    /// When the planner asked to be run again, on the `started` clock.
    wake_at: Option<Duration>,
}

async fn election_loop(
    store: Arc<dyn Store>,
    uid: SentinelUid,
    term: Arc<LeaderTerm>,
    shutdown: CancellationToken,
) {
    loop {
        tracing::info!("Trying to acquire sentinels leadership");
        let campaign = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = store.campaign(uid.as_str(), LEADER_TTL) => c,
        };
        match campaign {
            Ok(mut leadership) => {
                let won = term.won.fetch_add(1, Ordering::SeqCst) + 1;
                term.current.store(won, Ordering::SeqCst);
                tracing::info!("sentinel leadership acquired");
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        term.current.store(0, Ordering::SeqCst);
                        return;
                    }
                    _ = leadership.lost() => {}
                }
                term.current.store(0, Ordering::SeqCst);
                tracing::warn!("sentinel leadership lost");
            }
            Err(e) => {
                tracing::warn!(error = %e, "election loop error");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

impl Sentinel {
    /// One round. Returns the sleep interval of the cluster spec, when there is cluster data.
    async fn check(&mut self) -> Result<Option<Duration>, StoreError> {
        let store = self.store.as_ref();
        let Some(read) = stolon_store::read_cluster_data(store).await? else {
            if let Some(spec) = &self.config.initial_spec {
                tracing::info!("writing initial cluster data");
                let cd =
                    ClusterData::new(ClusterUid::new(stolon_daemon::random_uid()), spec.clone());
                match store.put_cluster_data(cd.encode(), Expect::Absent).await {
                    Ok(_) | Err(StoreError::Conflict) => {}
                    Err(e) => return Err(e),
                }
            } else {
                tracing::info!(
                    "no cluster data available, waiting for it to appear (stolonctl init)"
                );
            }
            return Ok(None);
        };
        let interval = read.spec.sleep_interval;
        // Publishing wakes every watcher, us included: once per interval is enough.
        if self
            .info_published
            .is_none_or(|at| at.elapsed() >= interval)
        {
            stolon_store::publish_info(
                store,
                InfoKind::Sentinel,
                self.config.uid.as_str(),
                &SentinelInfo {
                    uid: self.config.uid.clone(),
                },
                (2 * interval).max(Duration::from_secs(3)),
            )
            .await?;
            self.info_published = Some(Instant::now());
        }
        let current_term = self.term.current();
        if current_term == 0 {
            return Ok(Some(interval));
        }
        if current_term != self.memory_term {
            // A new term: what an earlier term remembered may be stale.
            self.memory = Memory::default();
            self.memory_term = current_term;
        }
        let keepers: Vec<KeeperInfo> = stolon_store::read_infos(store, InfoKind::Keeper).await?;
        let proxies: Vec<ProxyInfo> = stolon_store::read_infos(store, InfoKind::Proxy).await?;
        let out = step(
            self.started.elapsed(),
            &read.data,
            &read.spec,
            Observations {
                keepers: &keepers,
                proxies: &proxies,
            },
            &mut self.memory,
            rand::random(),
        );
        self.events.log(out.events);
        self.wake_at = out.wake_at;
        // Leadership may have been lost while we computed: a deposed leader must not write.
        if out.data != read.data && self.term.current() == current_term {
            match store
                .put_cluster_data(out.data.encode(), Expect::Revision(read.revision))
                .await
            {
                Ok(_) => {}
                Err(StoreError::Conflict) => {
                    tracing::debug!("cluster data changed meanwhile; recomputing")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Some(interval))
    }
}

/// Logs the engine's events, one line each, skipping those already logged in the previous
/// round so that a steady state does not repeat itself every loop.
#[derive(Default)]
pub struct EventLog {
    previous: Vec<Event>,
}

impl EventLog {
    pub fn log(&mut self, events: Vec<Event>) {
        for event in &events {
            if self.previous.contains(event) {
                continue;
            }
            match event.level {
                Level::Info => tracing::info!("{event}"),
                Level::Warn => tracing::warn!("{event}"),
            }
        }
        self.previous = events;
    }
}
