//! The keeper: one per PostgreSQL instance.
//!
//! It owns the instance's data directory and process. It drives the engine's keeper
//! machine ([`stolon_engine::keeper::machine`]), which decides everything: each loop it
//! reads the cluster data, observes the instance and acts on it until the reconciler has
//! nothing more to do, publishes what it observed as its keeper info, and sleeps. This crate
//! only carries out the machine's requests. It never decides on its own to become a primary:
//! only the db spec the sentinel wrote can say so.

mod act;
pub mod cli;
mod config;
mod disk;
mod fence;
mod files;
mod observe;
mod passwords;
mod publish;
mod restore;
mod state;
mod status;
mod timeline;

use anyhow::Context;
pub use config::KeeperConfig;
use disk::DiskWatch;
pub use fence::StoreLoss;
use passwords::Passwords;
pub use passwords::RolePassword;
use state::{DataDir, DbState};
use status::Status;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use stolon_cluster::{ClusterData, Db, DbUid, KeeperUid};
use stolon_engine::keeper::machine::{Identity, Input, KeeperMachine, Note, ReadOutcome, Request};
use stolon_engine::keeper::Endpoint;
use stolon_engine::ClusterView;
use stolon_pg::ctl::PgCtl;
use stolon_pg::probe::LocalConn;
use stolon_store::{ChangeWaiter, Store, WatchScope};
use timeline::StandbyTimeline;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Where PostgreSQL puts its unix socket: the keeper talks to its instance through it.
const SOCKET_DIR: &str = "/tmp";
/// Until the cluster data says otherwise.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_DB_WAIT_READY_TIMEOUT: Duration = Duration::from_secs(60);

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
/// The keeper's state machine, shared by the loop that drives it and the fence's
/// watchdog; locked only while it decides, never across IO.
pub(crate) struct Machine {
    inner: Mutex<KeeperMachine>,
    /// The origin of the machine's clock.
    origin: Instant,
}

impl Machine {
    pub fn lock(&self) -> MutexGuard<'_, KeeperMachine> {
        self.inner.lock().unwrap()
    }

    /// The machine's clock.
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
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
    let identity = Identity {
        uid: uid.clone(),
        can_be_master: config.can_be_master,
        can_be_synchronous_replica: config.can_be_synchronous_replica,
        priority: config.priority,
        advertise: Endpoint {
            host: config.advertise_address.clone(),
            port: config.advertise_port,
        },
    };
    let fenced = config.store_loss == StoreLoss::Fence;
    let machine = Arc::new(Machine {
        inner: Mutex::new(KeeperMachine::new(
            identity,
            stolon_daemon::random_seed(),
            fenced,
        )),
        origin: Instant::now(),
    });
    let status = Arc::new(Status::new(
        config.cluster_name.clone(),
        uid.clone(),
        local_conn(&config, status::PROBE_TIMEOUT),
        store.clone(),
        machine.clone(),
    ));
    if let Some(address) = config.http {
        stolon_daemon::http::serve(address, status.clone().handler(), shutdown.clone()).await?;
    }
    let passwords = Passwords::new(config.su.clone(), config.repl.clone());
    let mut keeper = Keeper {
        uid,
        status,
        machine: machine.clone(),
        pg,
        data,
        config,
        store,
        view: None,
        sync_gate: false,
        last_pending_restart: Vec::new(),
        standby_timeline: StandbyTimeline::default(),
        disk: DiskWatch::new(),
        passwords,
        restartpoint: None,
        fence_lifted: Arc::new(Notify::new()),
    };
    let watchdog = shutdown.child_token();
    let watching = fenced.then(|| {
        let (pg, watchdog, machine) = (keeper.pg.clone(), watchdog.clone(), machine.clone());
        tokio::spawn(async move { fence::watch(&machine, &pg, &watchdog).await })
    });
    let result = keeper.run_loop(&shutdown).await;
    watchdog.cancel();
    if let Some(watching) = watching {
        let _ = watching.await;
    }
    let paused = machine.lock().paused();
    if paused {
        tracing::info!("the cluster is paused: leaving postgres running as the keeper exits");
    } else if keeper
        .pg
        .is_running(keeper.request_timeout())
        .await
        .unwrap_or(true)
    {
        tracing::info!("stopping database");
        if let Err(e) = keeper.pg.stop(keeper.db_wait_ready_timeout()).await {
            tracing::error!(error = %e, "failed to stop postgres");
        }
    }
    result
}

struct Keeper {
    uid: KeeperUid,
    status: Arc<Status>,
    machine: Arc<Machine>,
    pg: PgCtl,
    data: DataDir,
    config: KeeperConfig,
    store: Arc<dyn Store>,
    /// The cluster data the machine's last request was made against.
    view: Option<Arc<ClusterView>>,
    /// Whether, as of the machine's last request, only the keeper's own roles may connect.
    sync_gate: bool,
    /// The parameters last reported as waiting for a restart, to log them once.
    last_pending_restart: Vec<String>,
    standby_timeline: StandbyTimeline,
    disk: DiskWatch,
    passwords: Passwords,
    /// A restartpoint asked for in the background, so that a slow one delays no heartbeat.
    restartpoint: Option<tokio::task::JoinHandle<()>>,
    /// Wakes the loop when a publish's answer lifted the fence.
    fence_lifted: Arc<Notify>,
}

impl Keeper {
    /// Carries out the machine's requests, one at a time, until `shutdown`.
    async fn run_loop(&mut self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let mut changes = ChangeWaiter::new(WatchScope::ClusterData);
        let mut step = self.machine.lock().start();
        loop {
            for note in &step.notes {
                self.tell(note);
            }
            if let Some(publication) = step.publish {
                self.send(publication);
            }
            let input = match step.request {
                Request::ReadClusterData => Input::Read(self.read().await),
                Request::Observe { view, sync_gate } => {
                    (self.view, self.sync_gate) = (view, sync_gate);
                    let observation = self.observe().await;
                    self.status.observed(&observation, self.sync_gate);
                    Input::Observed(Box::new(observation))
                }
                Request::Act {
                    action,
                    view,
                    sync_gate,
                } => {
                    (self.view, self.sync_gate) = (view, sync_gate);
                    let view = self.view.clone();
                    let result = self.act(view.as_deref().map(|v| &v.data), &action).await;
                    self.status.acted(result.is_ok());
                    if let Err(e) = &result {
                        tracing::error!(action = ?action, error = %format!("{e:#}"), "action failed");
                    }
                    Input::Acted {
                        succeeded: result.is_ok(),
                    }
                }
                Request::Sleep {
                    max,
                    wake_on_change,
                    wake_on_exit,
                } => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = changes.wait(self.store.as_ref(), max), if wake_on_change => {}
                        _ = tokio::time::sleep(max), if !wake_on_change => {}
                        _ = self.fence_lifted.notified() => {}
                        _ = self.pg.wait_for_exit(), if wake_on_exit => {
                            tracing::warn!("postgres exited");
                        }
                    }
                    Input::Woken
                }
            };
            let now = self.machine.now();
            step = self.machine.lock().handle(now, input);
        }
    }

    /// One line per decision of the machine.
    fn tell(&self, note: &Note) {
        match note {
            Note::Converged => self.status.converged(),
            Note::StartBackoff { failures, .. } => tracing::error!(failures, "{note}"),
            Note::Waiting(_)
            | Note::SyncGateClosed
            | Note::SyncGateLifted
            | Note::FenceLifted { .. }
            | Note::LeftRunningWhilePaused => tracing::info!("{note}"),
        }
    }

    async fn read(&mut self) -> ReadOutcome {
        match stolon_store::read_cluster_view(self.store.as_ref()).await {
            Ok(Some((view, _))) => {
                self.status.read_cluster_data(view.clone());
                ReadOutcome::Data(view)
            }
            Ok(None) => ReadOutcome::NoData,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read cluster data; not acting on postgres until it can be read");
                ReadOutcome::Failed
            }
        }
    }

    /// The spec's requestTimeout: how long a request to postgres may take.
    fn request_timeout(&self) -> Duration {
        self.view
            .as_ref()
            .map_or(DEFAULT_REQUEST_TIMEOUT, |v| v.spec.request_timeout)
    }

    /// The spec's dbWaitReadyTimeout: how long postgres may take to start or stop.
    fn db_wait_ready_timeout(&self) -> Duration {
        self.view
            .as_ref()
            .map_or(DEFAULT_DB_WAIT_READY_TIMEOUT, |v| {
                v.spec.db_wait_ready_timeout
            })
    }

    /// The spec's syncTimeout: how long a restore or a recovery may take; None: no limit.
    fn sync_timeout(&self) -> Option<Duration> {
        self.view.as_ref().and_then(|v| v.spec.sync_timeout)
    }

    fn local_conn(&self) -> LocalConn {
        local_conn(&self.config, self.request_timeout())
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
        if self.pg.is_running(self.request_timeout()).await? {
            tracing::info!("stopping database");
            self.pg.stop(self.db_wait_ready_timeout()).await?;
        }
        Ok(())
    }
}
/// Where a configuration file makes the instance stream from, if anywhere.
fn upstream_of(conf: Option<&str>) -> Option<Endpoint> {
    conf.and_then(stolon_pg::conf::parse_upstream)
        .map(|(host, port)| Endpoint { host, port })
}
