//! The keeper: one per PostgreSQL instance.
//!
//! It owns the instance's data directory and process. Each loop it reads the cluster data,
//! observes its instance, asks the engine for the next action ([`stolon_engine::keeper`])
//! until there is none, and publishes what it observed as its keeper info. It never decides
//! on its own to become a primary: only the db spec the sentinel wrote can say so.

mod state;

use anyhow::Context;
use state::{DataDir, DbState};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use stolon_cluster::{
    ClusterData, DbSpec, DbUid, Generation, KeeperInfo, KeeperUid, Lsn, PgState, TimelineId,
};
use stolon_engine::keeper::{next_action, Action, Endpoint, Instance, SLOT_PREFIX};
use stolon_pg::conf::{render_pg_hba, render_postgresql_conf, ConfInput, StandbySettings};
use stolon_pg::ctl::{OsUser, PgCtl, Upstream};
use stolon_pg::probe::{LocalConn, Observed};
use stolon_store::{ChangeWaiter, InfoKind, Store, WatchScope};
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
    pub bin_dir: Option<PathBuf>,
    pub su_username: String,
    pub su_password: String,
    pub repl_username: String,
    pub repl_password: String,
    pub can_be_master: bool,
    /// The OS user PostgreSQL runs as, when the keeper runs as root.
    pub run_as: Option<OsUser>,
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
    let mut keeper = Keeper {
        uid: KeeperUid::new(uid),
        boot_uuid: format!(
            "{}{}",
            stolon_daemon::random_uid(),
            stolon_daemon::random_uid()
        ),
        pg,
        data,
        config,
        store,
        last_wait: None,
        request_timeout: Duration::from_secs(10),
        db_wait_ready_timeout: Duration::from_secs(60),
    };
    // A postgres left running by a previous keeper acts on decisions we did not see: stop
    // it, and start it again only once the sentinel has seen this boot.
    if keeper
        .pg
        .is_running(keeper.request_timeout)
        .await
        .unwrap_or(false)
    {
        tracing::info!("stopping postgres left running by a previous keeper process");
        keeper.pg.stop(keeper.db_wait_ready_timeout).await?;
    }
    let result = keeper.run_loop(&shutdown).await;
    if keeper
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
    boot_uuid: String,
    pg: PgCtl,
    data: DataDir,
    config: KeeperConfig,
    store: Arc<dyn Store>,
    last_wait: Option<&'static str>,
    request_timeout: Duration,
    db_wait_ready_timeout: Duration,
}

/// What one observation of the instance gave.
struct Seen {
    instance: Instance,
    probe: Option<Observed>,
}

impl Keeper {
    async fn run_loop(&mut self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let mut changes = ChangeWaiter::new(WatchScope::ClusterData);
        let mut sleep_interval = DEFAULT_SLEEP_INTERVAL;
        let mut last_published: Option<(Instant, Option<PgState>)> = None;
        loop {
            let cd = match stolon_store::read_cluster_data(self.store.as_ref()).await {
                Ok(cd) => cd,
                Err(e) => {
                    // Without the store we change nothing: the proxies fence the instance.
                    tracing::warn!(error = %e, "cannot read cluster data; leaving postgres as it is");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(sleep_interval.min(STORE_RETRY)) => continue,
                    }
                }
            };
            if let Some(cd) = &cd {
                sleep_interval = cd.spec.sleep_interval;
                self.request_timeout = cd.spec.request_timeout;
                self.db_wait_ready_timeout = cd.spec.db_wait_ready_timeout;
            }
            let data = cd.as_ref().map(|c| &c.data);
            let seen = self.reconcile(data).await;
            if let Some(cd) = data {
                let state = self.pg_state(&seen);
                let due = last_published.as_ref().is_none_or(|(at, prev)| {
                    at.elapsed() >= sleep_interval
                        || !same_but_position(prev.as_ref(), state.as_ref())
                });
                if due {
                    match self.publish(cd, state.clone(), sleep_interval).await {
                        Ok(()) => last_published = Some((Instant::now(), state)),
                        Err(e) => tracing::warn!(error = %e, "cannot publish keeper info"),
                    }
                }
            }
            let next_publish = last_published
                .as_ref()
                .map(|(at, _)| sleep_interval.saturating_sub(at.elapsed()))
                .unwrap_or(sleep_interval);
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = changes.wait(self.store.as_ref(), next_publish.max(Duration::from_millis(50))) => {}
            }
        }
    }

    /// Observes and acts until the engine has nothing more to do; returns the last
    /// observation.
    async fn reconcile(&mut self, cd: Option<&ClusterData>) -> Seen {
        let mut seen = self.observe().await;
        let mut previous: Option<Action> = None;
        for _ in 0..MAX_ACTIONS_PER_LOOP {
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
            if let Err(e) = self.act(cd, &action).await {
                tracing::error!(action = ?action, error = %format!("{e:#}"), "action failed");
                return self.observe().await;
            }
            seen = self.observe().await;
            previous = Some(action);
        }
        seen
    }

    async fn observe(&self) -> Seen {
        let initialized = self.pg.is_initialized();
        let running = match self.pg.is_running(self.request_timeout).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell whether postgres runs");
                false
            }
        };
        let probe = if running {
            match self.local_conn().observe(SLOT_PREFIX).await {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(error = %e, "postgres is running but does not answer");
                    None
                }
            }
        } else {
            None
        };
        let following = self
            .pg
            .read_file("postgresql.conf")
            .and_then(|c| stolon_pg::conf::parse_upstream(&c))
            .map(|(host, port)| Endpoint { host, port });
        Seen {
            instance: Instance {
                initialized,
                running,
                standby_signal: self.pg.has_standby_signal(),
                in_recovery: probe.as_ref().map(|p| p.in_recovery),
                following,
                slots: probe.as_ref().map(|p| p.slots.clone()),
            },
            probe,
        }
    }

    fn local_conn(&self) -> LocalConn {
        LocalConn {
            socket_dir: SOCKET_DIR.to_string(),
            port: self.config.port,
            user: self.config.su_username.clone(),
            password: self.config.su_password.clone(),
            timeout: self.request_timeout,
        }
    }

    fn pg_state(&self, seen: &Seen) -> Option<PgState> {
        let db = self.data.db_state().ok()?;
        if db.uid.is_empty() {
            return None;
        }
        let probe = seen.probe.as_ref();
        Some(PgState {
            db_uid: db.uid.as_str().into(),
            generation: Generation(db.generation),
            healthy: probe.is_some() && !db.initializing,
            in_recovery: probe.is_some_and(|p| p.in_recovery),
            system_id: probe.map(|p| p.system_id.clone()).unwrap_or_default(),
            timeline_id: TimelineId(probe.map(|p| p.timeline_id).unwrap_or(0)),
            x_log_pos: probe.and_then(|p| Lsn::parse(&p.lsn)).unwrap_or_default(),
            listen_address: self.config.advertise_address.clone(),
            port: self.config.port,
        })
    }

    async fn publish(
        &self,
        cd: &ClusterData,
        state: Option<PgState>,
        sleep_interval: Duration,
    ) -> anyhow::Result<()> {
        let info = KeeperInfo {
            info_uid: stolon_daemon::random_uid(),
            uid: self.uid.clone(),
            cluster_uid: cd.cluster.uid.clone(),
            boot_uuid: self.boot_uuid.clone(),
            can_be_master: self.config.can_be_master,
            postgres_state: state,
        };
        let ttl = (3 * sleep_interval).max(Duration::from_secs(3));
        stolon_store::publish_info(
            self.store.as_ref(),
            InfoKind::Keeper,
            self.uid.as_str(),
            &info,
            ttl,
        )
        .await?;
        Ok(())
    }

    fn my_db_spec<'a>(&self, cd: Option<&'a ClusterData>) -> anyhow::Result<&'a DbSpec> {
        cd.and_then(|cd| cd.db_of_keeper(&self.uid))
            .map(|db| &db.spec)
            .context("no db assigned")
    }

    /// Rewrites the configuration files for the instance's current local role.
    fn write_conf(
        &self,
        spec: &DbSpec,
        follow: Option<&Endpoint>,
        db_uid: &str,
    ) -> anyhow::Result<()> {
        let app_name = format!("{SLOT_PREFIX}{db_uid}");
        let standby = follow.map(|ep| StandbySettings {
            host: &ep.host,
            port: ep.port,
            user: &self.config.repl_username,
            password: &self.config.repl_password,
            application_name: &app_name,
            slot: &app_name,
        });
        let conf = render_postgresql_conf(&ConfInput {
            listen_address: &self.config.listen_address,
            port: self.config.port,
            socket_dir: SOCKET_DIR,
            max_standbys: spec.max_standbys,
            additional_wal_senders: spec.additional_wal_senders,
            user_parameters: &spec.pg_parameters,
            standby,
        });
        self.pg.write_file("postgresql.conf", &conf)?;
        let hba = render_pg_hba(
            &self.config.su_username,
            &self.config.repl_username,
            spec.pg_hba.as_deref(),
        );
        self.pg.write_file("pg_hba.conf", &hba)?;
        Ok(())
    }

    /// Marks the data directory as being made for `db` (so a crash midway is detected and
    /// the work redone), then empties it.
    async fn begin_new_db(&self, db: &DbUid) -> anyhow::Result<()> {
        self.data.save_db_state(&DbState {
            uid: db.to_string(),
            generation: 0,
            initializing: true,
        })?;
        self.stop_if_running().await?;
        self.pg.wipe_and_create_pgdata()?;
        Ok(())
    }

    fn finish_new_db(&self, db: &DbUid) -> anyhow::Result<()> {
        self.data.save_db_state(&DbState {
            uid: db.to_string(),
            generation: 0,
            initializing: false,
        })
    }

    async fn stop_if_running(&self) -> anyhow::Result<()> {
        if self.pg.is_running(self.request_timeout).await? {
            tracing::info!("stopping database");
            self.pg.stop(self.db_wait_ready_timeout).await?;
        }
        Ok(())
    }

    async fn act(&mut self, cd: Option<&ClusterData>, action: &Action) -> anyhow::Result<()> {
        let db_uid = || {
            cd.and_then(|cd| cd.db_of_keeper(&self.uid))
                .map(|db| db.uid.to_string())
                .unwrap_or_default()
        };
        match action {
            Action::Idle | Action::Wait(_) => {}
            Action::Stop(reason) => {
                tracing::info!("{reason}: stopping database");
                self.pg.stop(self.db_wait_ready_timeout).await?;
            }
            Action::InitNew { db } => {
                tracing::info!(db = %db, "initializing the database cluster");
                let spec = self.my_db_spec(cd)?.clone();
                self.begin_new_db(db).await?;
                self.pg
                    .initdb(
                        &self.config.su_username,
                        &self.config.su_password,
                        self.db_wait_ready_timeout,
                    )
                    .await?;
                self.write_conf(&spec, None, db.as_str())?;
                tracing::info!("starting database");
                self.pg.start(self.db_wait_ready_timeout).await?;
                tracing::info!("setting roles");
                self.local_conn()
                    .setup_roles(&self.config.repl_username, &self.config.repl_password)
                    .await?;
                self.finish_new_db(db)?;
                tracing::info!(db = %db, "database cluster initialized");
            }
            Action::Resync { db, from, slot } => {
                tracing::info!(db = %db, from = %format!("{}:{}", from.host, from.port), "resyncing the database cluster");
                let spec = self.my_db_spec(cd)?.clone();
                self.begin_new_db(db).await?;
                tracing::info!(slot = %slot, "running pg_basebackup");
                let started = Instant::now();
                self.pg
                    .basebackup(
                        &Upstream {
                            host: &from.host,
                            port: from.port,
                            user: &self.config.repl_username,
                            password: &self.config.repl_password,
                        },
                        slot,
                        Duration::from_secs(24 * 3600),
                    )
                    .await?;
                self.pg.write_file("standby.signal", "")?;
                self.pg.remove_file("postgresql.auto.conf")?;
                self.write_conf(&spec, Some(from), db.as_str())?;
                self.finish_new_db(db)?;
                tracing::info!(db = %db, elapsed = ?started.elapsed(), "sync succeeded");
            }
            Action::Start { follow } => {
                let spec = self.my_db_spec(cd)?.clone();
                self.write_conf(&spec, follow.as_ref(), &db_uid())?;
                tracing::info!(standby = self.pg.has_standby_signal(), "starting database");
                self.pg.start(self.db_wait_ready_timeout).await?;
            }
            Action::Promote => {
                tracing::info!("promoting to master");
                self.pg.promote(self.db_wait_ready_timeout).await?;
                let spec = self.my_db_spec(cd)?.clone();
                self.write_conf(&spec, None, &db_uid())?;
                self.pg.reload(self.request_timeout).await?;
            }
            Action::Follow(ep) => {
                tracing::info!(upstream = %format!("{}:{}", ep.host, ep.port), "recovery parameters changed, reloading postgres instance");
                let spec = self.my_db_spec(cd)?.clone();
                self.write_conf(&spec, Some(ep), &db_uid())?;
                self.pg.reload(self.request_timeout).await?;
            }
            Action::SyncSlots { create, drop } => {
                let conn = self.local_conn();
                for slot in create {
                    tracing::info!(slot = %slot, "creating replication slot");
                    conn.create_slot(slot).await?;
                }
                for slot in drop {
                    tracing::info!(slot = %slot, "dropping replication slot");
                    // A standby still attached keeps its slot busy; the next loop retries.
                    if let Err(e) = conn.drop_slot(slot).await {
                        tracing::warn!(slot = %slot, error = %e, "cannot drop replication slot yet");
                    }
                }
            }
            Action::MarkApplied(generation) => {
                let mut state = self.data.db_state()?;
                state.generation = generation.0;
                self.data.save_db_state(&state)?;
                tracing::info!(generation = %generation, "db spec applied");
            }
        }
        Ok(())
    }
}

/// Two reports that differ only by WAL position: not worth an early publish.
fn same_but_position(a: Option<&PgState>, b: Option<&PgState>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            PgState {
                x_log_pos: b.x_log_pos,
                ..a.clone()
            } == *b
        }
        (None, None) => true,
        _ => false,
    }
}
