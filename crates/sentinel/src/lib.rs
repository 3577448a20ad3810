//! The sentinel: several run, one leads.
//!
//! Every sentinel publishes its info and campaigns for leadership. The leader, on every
//! change in the store (or every sleep interval), reads the cluster data and the keepers'
//! and proxies' infos, asks the engine's planner ([`stolon_engine::sentinel::step`]) for the
//! next cluster data, and writes it with compare-and-swap against the revision it read.
//! The engine's sentinel machine ([`stolon_engine::sentinel::machine`]) decides all of
//! that; this crate takes part in the election and carries out the machine's requests.

pub mod cli;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use stolon_cluster::{ClusterSpec, KeeperInfo, ProxyInfo, SentinelUid};
use stolon_daemon::metrics::{unix_seconds, Exposition};
use stolon_engine::sentinel::machine::{Input, Note, ReadOutcome, Request, SentinelMachine};
use stolon_engine::Level;
use stolon_store::{ChangeWaiter, Expect, InfoKind, Store, StoreError, WatchScope};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a leader keeps its leadership without renewing it.
pub const LEADER_TTL: Duration = Duration::from_secs(5);

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
    let mut machine = SentinelMachine::new(
        config.uid.clone(),
        config.initial_spec.clone(),
        stolon_daemon::random_seed(),
    );
    let store = store.as_ref();
    let origin = Instant::now();
    let mut changes = ChangeWaiter::new(WatchScope::Everything);
    // The last store error, told with the machine's note on the failed check.
    let mut failure: Option<StoreError> = None;
    let mut step = machine.start();
    loop {
        for note in &step.notes {
            tell(note, &term, failure.as_ref());
        }
        let input = match step.request {
            Request::ReadClusterData => {
                Input::Read(match stolon_store::read_cluster_view(store).await {
                    Ok(Some((view, revision))) => ReadOutcome::Data { view, revision },
                    Ok(None) => ReadOutcome::NoData,
                    Err(e) => {
                        failure = Some(e);
                        ReadOutcome::Failed
                    }
                })
            }
            Request::WriteInitial(cd) => {
                let written = store.put_cluster_data(cd.encode(), Expect::Absent).await;
                Input::Written {
                    succeeded: written_or_conflict(written.map(|_| ()), &mut failure),
                }
            }
            Request::Publish { info, ttl } => {
                let published = stolon_store::publish_info(
                    store,
                    InfoKind::Sentinel,
                    info.uid.as_str(),
                    &info,
                    ttl,
                )
                .await;
                let succeeded = published.is_ok();
                failure = published.err();
                Input::Published { succeeded }
            }
            Request::ReadInfos => Input::Infos(read_infos(store, &mut failure).await),
            Request::Write { data, revision } => {
                let written = store
                    .put_cluster_data(data.encode(), Expect::Revision(revision))
                    .await;
                Input::Written {
                    succeeded: written_or_conflict(written.map(|_| ()), &mut failure),
                }
            }
            Request::Sleep { max, debounce } => {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    changed = changes.wait(store, max) => {
                        if changed {
                            tokio::time::sleep(debounce).await;
                        }
                    }
                }
                Input::Woken
            }
        };
        step = machine.handle(origin.elapsed(), term.current(), input);
    }
    election.abort();
    Ok(())
}

/// A write's outcome: a conflict means the cluster data changed meanwhile, which the next
/// check reads and recomputes from.
fn written_or_conflict(written: Result<(), StoreError>, failure: &mut Option<StoreError>) -> bool {
    match written {
        Ok(()) => true,
        Err(StoreError::Conflict) => {
            tracing::debug!("cluster data changed meanwhile; recomputing");
            true
        }
        Err(e) => {
            *failure = Some(e);
            false
        }
    }
}

async fn read_infos(
    store: &dyn Store,
    failure: &mut Option<StoreError>,
) -> Option<(Vec<KeeperInfo>, Vec<ProxyInfo>)> {
    let read = async {
        let keepers = stolon_store::read_infos(store, InfoKind::Keeper).await?;
        let proxies = stolon_store::read_infos(store, InfoKind::Proxy).await?;
        Ok::<_, StoreError>((keepers, proxies))
    };
    match read.await {
        Ok(infos) => Some(infos),
        Err(e) => {
            *failure = Some(e);
            None
        }
    }
}

/// One line per decision of the machine.
fn tell(note: &Note, term: &LeaderTerm, failure: Option<&StoreError>) {
    match note {
        Note::Planner(event) => match event.level() {
            Level::Info => tracing::info!("{event}"),
            Level::Warn => tracing::warn!("{event}"),
        },
        Note::WritingInitialClusterData | Note::WaitingForClusterData => tracing::info!("{note}"),
        Note::CheckSucceeded => term.check_succeeded(),
        Note::CheckFailed => match failure {
            Some(e) => tracing::warn!(error = %e, "{note}"),
            None => tracing::warn!("{note}"),
        },
    }
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
