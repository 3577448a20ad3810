//! The keeper: one per PostgreSQL instance.
//!
//! It owns the instance's data directory and process. Each loop it reads the cluster data,
//! observes its instance, asks the engine for the next action ([`stolon_engine::keeper`])
//! until there is none, and publishes what it observed as its keeper info. It never decides
//! on its own to become a primary: only the db spec the sentinel wrote can say so.

mod act;
pub mod cli;
mod disk;
mod fence;
mod files;
mod observe;
mod passwords;
mod publish;
mod restore;
mod starts;
mod state;
mod status;
mod timeline;

use anyhow::Context;
use disk::DiskWatch;
use fence::Fence;
pub use fence::StoreLoss;
use passwords::Passwords;
pub use passwords::RolePassword;
use publish::same_but_position;
use starts::{FailedStarts, StartKey};
use state::{DataDir, DbState};
use status::Status;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use stolon_cluster::{
    ClusterData, ClusterPhase, DataDisk, Db, DbRole, DbUid, KeeperUid, Lsn, PgState,
    ShutdownCheckpoint, SuReplAccessMode, TimelineId,
};
use stolon_engine::keeper::{
    followed_endpoint, next_action, slot_name, sync_gate_lifted, synchronous_standby_names, Action,
    Endpoint, Instance, SLOT_PREFIX,
};
use stolon_engine::store_loss::Timing;
use stolon_pg::conf::{
    render_pg_hba, render_postgresql_conf, ConfInput, HbaUsers, RemoteSource, ReplicationTls,
    StandbySettings, SuReplSources, WalSource,
};
use stolon_pg::ctl::{OsUser, PgCtl};
use stolon_pg::probe::{LocalConn, Observed, UpstreamProgress};
use stolon_store::{ChangeWaiter, Store, WatchScope};
use timeline::StandbyTimeline;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Where PostgreSQL puts its unix socket: the keeper talks to its instance through it.
const SOCKET_DIR: &str = "/tmp";
/// Until the cluster data says otherwise.
const DEFAULT_SLEEP_INTERVAL: Duration = Duration::from_secs(5);
/// How soon to read the store again after it failed.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// The most actions one loop takes before publishing what it has done.
const MAX_ACTIONS_PER_LOOP: usize = 8;

#[derive(Debug, Clone)]
pub struct KeeperConfig {
    pub uid: Option<String>,
    pub data_dir: PathBuf,
    pub listen_address: String,
    pub advertise_address: String,
    pub port: u16,
    /// The port the other components use (default: `port`).
    pub advertise_port: u16,
    pub bin_dir: Option<PathBuf>,
    /// The superuser: its password empty with the trust method.
    pub su: RolePassword,
    /// The replication user: the superuser's own password when they are one role.
    pub repl: RolePassword,
    /// TLS of the connections to the primary: streaming, pg_basebackup and pg_rewind.
    pub repl_tls: ReplicationTls,
    pub can_be_master: bool,
    pub can_be_synchronous_replica: bool,
    /// Among equally advanced failover candidates, the higher priority wins.
    pub priority: i32,
    /// The OS user PostgreSQL runs as, when the keeper runs as root.
    pub run_as: Option<OsUser>,
    /// Names the cluster in `/metrics`.
    pub cluster_name: String,
    /// Where to serve `/metrics`, `/health`, `/primary` and `/replica`, when asked for.
    pub http: Option<SocketAddr>,
    /// Whether a primary stops its postgres when it cannot store its info.
    pub store_loss: StoreLoss,
}

/// How the keeper reaches its own instance.
fn local_conn(config: &KeeperConfig, timeout: Duration) -> LocalConn {
    LocalConn {
        socket_dir: SOCKET_DIR.to_string(),
        port: config.port,
        user: config.su.role.clone(),
        password: config.su.password.clone(),
        timeout,
    }
}

/// Runs the keeper until `shutdown`, then stops PostgreSQL.
pub async fn run(
    config: KeeperConfig,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let data = DataDir::open(&config.data_dir)?;
    let uid = data.resolve_uid(config.uid.as_deref(), stolon_daemon::random_uid)?;
    tracing::info!(uid = %uid, "keeper uid");
    let pg = PgCtl {
        bin_dir: config.bin_dir.clone(),
        pgdata: data.pgdata(),
        log_file: data.root.join("postgres.log"),
        run_as: config.run_as,
    };
    pg.chown(&data.root)
        .context("giving the data dir to postgres' OS user")?;
    let uid = KeeperUid::new(uid);
    let fence = (config.store_loss == StoreLoss::Fence).then(|| Arc::new(Fence::default()));
    let status = Arc::new(Status::new(
        config.cluster_name.clone(),
        uid.clone(),
        local_conn(&config, status::PROBE_TIMEOUT),
        store.clone(),
        fence.clone(),
    ));
    if let Some(address) = config.http {
        stolon_daemon::http::serve(address, status.clone().handler(), shutdown.clone()).await?;
    }
    let passwords = Passwords::new(config.su.clone(), config.repl.clone());
    let mut keeper = Keeper {
        uid,
        status,
        fence: fence.clone(),
        boot_uuid: new_boot_uuid(),
        pg,
        data,
        config,
        store,
        last_wait: None,
        request_timeout: Duration::from_secs(10),
        db_wait_ready_timeout: Duration::from_secs(60),
        sync_timeout: None,
        sync_gate: false,
        failed_starts: FailedStarts::default(),
        last_pending_restart: Vec::new(),
        standby_timeline: StandbyTimeline::default(),
        disk: DiskWatch::new(),
        passwords,
        restartpoint: None,
        paused: false,
    };
    // A postgres left running by a previous keeper acts on decisions we did not see: stop
    // it, and start it again only once the sentinel has seen this boot. Unless the cluster
    // is paused: then decisions are frozen, and the operator restarting this keeper (to
    // upgrade it) keeps the instance serving.
    keeper.paused = stolon_store::read_cluster_data(keeper.store.as_ref())
        .await
        .ok()
        .flatten()
        .is_some_and(|cd| cd.data.cluster.status.pause.is_some());
    if keeper
        .pg
        .is_running(keeper.request_timeout)
        .await
        .unwrap_or(false)
    {
        if keeper.paused {
            tracing::info!("the cluster is paused: leaving the running postgres as it is");
        } else {
            tracing::info!("stopping postgres left running by a previous keeper process");
            keeper.pg.stop(keeper.db_wait_ready_timeout).await?;
        }
    }
    let watchdog = shutdown.child_token();
    let watching = fence.map(|fence| {
        let (pg, watchdog) = (keeper.pg.clone(), watchdog.clone());
        tokio::spawn(async move { fence.watch(pg, watchdog).await })
    });
    let result = keeper.run_loop(&shutdown).await;
    watchdog.cancel();
    if let Some(watching) = watching {
        let _ = watching.await;
    }
    if keeper.paused {
        tracing::info!("the cluster is paused: leaving postgres running as the keeper exits");
    } else if keeper
        .pg
        .is_running(keeper.request_timeout)
        .await
        .unwrap_or(true)
    {
        tracing::info!("stopping database");
        if let Err(e) = keeper.pg.stop(keeper.db_wait_ready_timeout).await {
            tracing::error!(error = %e, "failed to stop postgres");
        }
    }
    result
}

struct Keeper {
    uid: KeeperUid,
    status: Arc<Status>,
    /// With `--store-loss fence`.
    fence: Option<Arc<Fence>>,
    boot_uuid: String,
    pg: PgCtl,
    data: DataDir,
    config: KeeperConfig,
    store: Arc<dyn Store>,
    last_wait: Option<&'static str>,
    request_timeout: Duration,
    db_wait_ready_timeout: Duration,
    /// How long a restore or a recovery may take (the spec's syncTimeout); None: no limit.
    sync_timeout: Option<Duration>,
    /// Set when a synchronous primary starts: only internal roles may connect until its
    /// synchronous standbys are in sync again.
    sync_gate: bool,
    failed_starts: FailedStarts,
    /// The parameters last reported as waiting for a restart, to log them once.
    last_pending_restart: Vec<String>,
    standby_timeline: StandbyTimeline,
    disk: DiskWatch,
    passwords: Passwords,
    /// Whether the cluster data last read says the cluster is paused (`stolonctl pause`).
    paused: bool,
    /// A restartpoint asked for in the background, so that a slow one delays no heartbeat.
    restartpoint: Option<tokio::task::JoinHandle<()>>,
}

/// What one observation of the instance gave.
struct Seen {
    instance: Instance,
    probe: Option<Observed>,
    /// Where the WAL of the stopped instance ends, when it was stopped for a switchover.
    shutdown_checkpoint: Option<ShutdownCheckpoint>,
    data_disk: Option<DataDisk>,
    /// A standby leader's progress behind the remote primary.
    remote: Option<UpstreamProgress>,
}

impl Keeper {
    async fn run_loop(&mut self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let mut changes = ChangeWaiter::new(WatchScope::ClusterData);
        let mut heartbeat = DEFAULT_SLEEP_INTERVAL;
        let mut last_published: Option<(Instant, Option<PgState>)> = None;
        // The last cluster data read: while the store cannot be read, the keeper still
        // publishes what it observes against it.
        let mut view = None;
        loop {
            let read = match stolon_store::read_cluster_data(self.store.as_ref()).await {
                Ok(cd) => {
                    view = cd;
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read cluster data; not acting on postgres until it can be read");
                    false
                }
            };
            if let (true, Some(cd)) = (read, &view) {
                self.status.read_cluster_data(cd);
                self.paused = cd.data.cluster.status.pause.is_some();
                heartbeat = cd.spec.keeper_heartbeat();
                self.request_timeout = cd.spec.request_timeout;
                self.db_wait_ready_timeout = cd.spec.db_wait_ready_timeout;
                self.sync_timeout = cd.spec.sync_timeout;
                if let Some(fence) = &self.fence {
                    // While the cluster initialises, no failover can replace this keeper,
                    // whose loop may be busy in initdb for longer than the fence's limit.
                    let master = cd.data.cluster.status.phase == ClusterPhase::Normal
                        && cd
                            .data
                            .db_of_keeper(&self.uid)
                            .is_some_and(|db| db.spec.role == DbRole::Master);
                    fence.read(Timing::of(&cd.spec), master, self.db_wait_ready_timeout);
                }
            }
            let data = view.as_ref().map(|c| &c.data);
            let seen = if read {
                self.reconcile(data).await
            } else {
                self.observe(data).await
            };
            let running = seen.instance.running;
            self.status.observed(
                running,
                seen.instance.in_recovery,
                seen.instance.pending_restart,
                self.sync_gate,
                seen.data_disk,
            );
            let mut lifted = false;
            if let Some(cd) = data {
                let state = self.pg_state(&seen);
                // During a switchover the target's position is what the sentinel waits for.
                let switching = cd.cluster.status.switchover.is_some();
                let due = last_published.as_ref().is_none_or(|(at, prev)| {
                    at.elapsed() >= heartbeat
                        || !same_but_position(prev.as_ref(), state.as_ref())
                        || (switching && prev != &state)
                });
                if due {
                    // The sentinel may have seen this info from the moment it was sent.
                    let sent = Instant::now();
                    match self.publish(cd, state.clone(), heartbeat).await {
                        Ok(()) => {
                            last_published = Some((sent, state));
                            lifted = self.fence.as_ref().is_some_and(|f| f.published(sent));
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot publish keeper info"),
                    }
                }
            }
            if lifted {
                // The sentinel may have decided on this keeper from what it knew before the
                // fence lifted, and its decision may not be in the store yet. A new boot
                // makes the engine wait for cluster data that records it, which the sentinel
                // writes only after reading our info of now: any earlier decision is in it.
                self.boot_uuid = new_boot_uuid();
                last_published = None;
                continue;
            }
            if !read {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(heartbeat.min(STORE_RETRY)) => continue,
                }
            }
            let next_publish = last_published
                .as_ref()
                .map(|(at, _)| heartbeat.saturating_sub(at.elapsed()))
                .unwrap_or(heartbeat);
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = changes.wait(self.store.as_ref(), next_publish.max(Duration::from_millis(50))) => {}
                _ = self.pg.wait_for_exit(), if running => {
                    tracing::warn!("postgres exited");
                }
            }
        }
    }

    /// Observes and acts until the engine has nothing more to do, or the store-loss fence
    /// holds (checked before each action: it may fall due during one); returns the last
    /// observation.
    async fn reconcile(&mut self, cd: Option<&ClusterData>) -> Seen {
        let mut seen = self.observe(cd).await;
        let mut previous: Option<Action> = None;
        for _ in 0..MAX_ACTIONS_PER_LOOP {
            if self.fence.as_ref().is_some_and(|f| f.holds()) {
                return seen;
            }
            let local = match self.data.db_state() {
                Ok(s) => s.local_db(),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot read our db state: refusing to act");
                    return seen;
                }
            };
            let action = next_action(cd, &self.uid, &self.boot_uuid, &local, &seen.instance);
            // The same action again right after it succeeded did not change what we observe
            // (a slot still in use, say): retry on the next loop rather than spin now.
            if previous.as_ref() == Some(&action) {
                return seen;
            }
            match &action {
                Action::Idle => {
                    self.last_wait = None;
                    self.status.converged();
                    return seen;
                }
                Action::Wait(reason) => {
                    if self.last_wait != Some(reason) {
                        tracing::info!("{reason}");
                        self.last_wait = Some(reason);
                    }
                    return seen;
                }
                _ => self.last_wait = None,
            }
            let starting = matches!(action, Action::Start { .. });
            if starting
                && !self
                    .failed_starts
                    .wait(&self.start_key(cd), Instant::now())
                    .is_zero()
            {
                return seen;
            }
            let result = self.act(cd, &action).await;
            self.status.acted(result.is_ok());
            if starting {
                let retry_in =
                    self.failed_starts
                        .record(self.start_key(cd), result.is_ok(), Instant::now());
                if let Some(retry_in) = retry_in {
                    tracing::error!(
                        failures = self.failed_starts.failures(),
                        "postgres failed to start repeatedly: trying again in {retry_in:?} (at once if the db spec changes)"
                    );
                }
            }
            if let Err(e) = result {
                tracing::error!(action = ?action, error = %format!("{e:#}"), "action failed");
                return self.observe(cd).await;
            }
            seen = self.observe(cd).await;
            previous = Some(action);
        }
        seen
    }

    /// The db and generation a start is for: failed starts are counted per spec.
    fn start_key(&self, cd: Option<&ClusterData>) -> StartKey {
        cd.and_then(|cd| cd.db_of_keeper(&self.uid))
            .map(|db| (db.uid.clone(), db.generation))
    }

    fn local_conn(&self) -> LocalConn {
        local_conn(&self.config, self.request_timeout)
    }

    fn my_db<'a>(&self, cd: Option<&'a ClusterData>) -> anyhow::Result<&'a Db> {
        cd.and_then(|cd| cd.db_of_keeper(&self.uid))
            .context("no db assigned")
    }

    /// Marks the data directory as being made for `db` (so a crash midway is detected and
    /// the work redone), then empties it.
    async fn begin_new_db(&self, db: &DbUid) -> anyhow::Result<()> {
        self.data.save_db_state(&DbState {
            uid: db.to_string(),
            generation: 0,
            initializing: true,
            system_id: String::new(),
            init_pg_parameters: Default::default(),
        })?;
        self.stop_if_running().await?;
        Ok(())
    }

    /// Records the parameters of the `postgresql.conf` a db's data directory came with,
    /// before our file replaces it: mergePgParameters merges them into the spec.
    fn record_initial_parameters(&self, db: &DbUid) -> anyhow::Result<()> {
        let init_pg_parameters = stolon_pg::conf::parse_parameters(
            &self.pg.read_file("postgresql.conf").unwrap_or_default(),
        );
        self.data.save_db_state(&DbState {
            uid: db.to_string(),
            generation: 0,
            initializing: true,
            system_id: String::new(),
            init_pg_parameters,
        })?;
        Ok(())
    }

    /// Records the finished db with the system identifier its data directory now has.
    fn finish_new_db(&self, db: &DbUid) -> anyhow::Result<()> {
        let previous = self.data.db_state()?;
        self.data.save_db_state(&DbState {
            uid: db.to_string(),
            generation: 0,
            initializing: false,
            system_id: self.pg.system_id().unwrap_or_default(),
            init_pg_parameters: previous.init_pg_parameters,
        })
    }

    async fn stop_if_running(&self) -> anyhow::Result<()> {
        if self.pg.is_running(self.request_timeout).await? {
            tracing::info!("stopping database");
            self.pg.stop(self.db_wait_ready_timeout).await?;
        }
        Ok(())
    }
}

/// Identifies one run of postgres under this keeper: the engine acts only on cluster data
/// that records the current one.
fn new_boot_uuid() -> String {
    format!(
        "{}{}",
        stolon_daemon::random_uid(),
        stolon_daemon::random_uid()
    )
}

/// Where a configuration file makes the instance stream from, if anywhere.
fn upstream_of(conf: Option<&str>) -> Option<Endpoint> {
    conf.and_then(stolon_pg::conf::parse_upstream)
        .map(|(host, port)| Endpoint { host, port })
}

/// Our standbys that a primary's `pg_stat_replication` reports in sync.
fn in_sync_dbs(probe: &Observed) -> Vec<DbUid> {
    probe
        .in_sync
        .iter()
        .filter_map(|name| name.strip_prefix(SLOT_PREFIX))
        .map(DbUid::new)
        .collect()
}
