//! What the keeper tells the outside world over HTTP: Prometheus `/metrics`, and the
//! `/health`, `/primary` and `/replica` checks of load balancers and Kubernetes probes, which
//! [`stolon_engine::health`] decides.
//!
//! The checks ask PostgreSQL, and `/primary` and `/replica` read the cluster data from the
//! store, at request time: a crash, a promotion or a new primary shows at once rather than
//! at the keeper's next loop. Answers are shared for [`PROBE_REUSE`] so that a burst of
//! checks costs one connection and one store read.

use crate::Machine;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use stolon_cluster::{DataDisk, DbRole, KeeperUid};
use stolon_daemon::http::{Answer, Handler, Request, Response};
use stolon_daemon::metrics::{unix_seconds, Exposition};
use stolon_engine::health::{answer, Check, Facts};
use stolon_engine::keeper::report::Observation;
use stolon_engine::ClusterView;
use stolon_pg::probe::LocalConn;
use stolon_store::Store;
use tokio::time::Instant;

/// How long one answer of PostgreSQL, or one read of the store, serves later checks.
const PROBE_REUSE: Duration = Duration::from_millis(250);
/// Load balancers give a check a few seconds; PostgreSQL and the store must answer well
/// within them.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

const ROLES: [&str; 3] = ["undefined", "master", "standby"];

pub(crate) struct Status {
    cluster_name: String,
    uid: KeeperUid,
    conn: LocalConn,
    store: Arc<dyn Store>,
    /// The keeper's machine: its store-loss fence.
    machine: Arc<Machine>,
    known: Mutex<Known>,
    /// PostgreSQL's last answer (in recovery or not; None: no answer) and when it came.
    probe: tokio::sync::Mutex<Option<(Instant, Option<bool>)>>,
    /// The store's last answer (None: unreadable, or no cluster data) and when it came.
    read: tokio::sync::Mutex<Option<(Instant, Option<Arc<ClusterView>>)>>,
}

/// What the keeper's loop has recorded.
#[derive(Default)]
struct Known {
    view: Option<Arc<ClusterView>>,
    view_read_at: Option<SystemTime>,
    sync_gate: bool,
    /// From the loop's last observation: whether postgres runs and is in recovery.
    running: bool,
    in_recovery: Option<bool>,
    needs_restart: bool,
    data_disk: Option<DataDisk>,
    converged_at: Option<SystemTime>,
    actions: u64,
    failed_actions: u64,
}

impl Status {
    /// `conn` should time out after [`PROBE_TIMEOUT`].
    pub fn new(
        cluster_name: String,
        uid: KeeperUid,
        conn: LocalConn,
        store: Arc<dyn Store>,
        machine: Arc<Machine>,
    ) -> Status {
        Status {
            cluster_name,
            uid,
            conn,
            store,
            machine,
            known: Mutex::new(Known::default()),
            probe: tokio::sync::Mutex::new(None),
            read: tokio::sync::Mutex::new(None),
        }
    }

    pub fn read_cluster_data(&self, view: Arc<ClusterView>) {
        let mut known = self.known.lock().unwrap();
        known.view = Some(view);
        known.view_read_at = Some(SystemTime::now());
    }

    pub fn observed(&self, observation: &Observation, sync_gate: bool) {
        let mut known = self.known.lock().unwrap();
        known.data_disk = observation.data_disk;
        known.running = observation.instance.running;
        known.in_recovery = observation.instance.in_recovery;
        known.needs_restart = observation.instance.pending_restart;
        known.sync_gate = sync_gate;
    }

    pub fn acted(&self, succeeded: bool) {
        let mut known = self.known.lock().unwrap();
        known.actions += 1;
        if !succeeded {
            known.failed_actions += 1;
        }
    }

    pub fn converged(&self) {
        self.known.lock().unwrap().converged_at = Some(SystemTime::now());
    }

    pub fn handler(self: Arc<Self>) -> Handler {
        Arc::new(move |request: Request| {
            let status = self.clone();
            Box::pin(async move { status.answer(request).await }) as Answer
        })
    }

    async fn answer(&self, request: Request) -> Response {
        let check = match request.path.as_str() {
            "/metrics" => return Response::metrics(self.render_metrics()),
            "/health" => Check::Health,
            "/primary" => Check::Primary,
            "/replica" => match request.param("lag").map(str::parse::<u64>) {
                None => Check::Replica { max_lag: None },
                Some(Ok(lag)) => Check::Replica { max_lag: Some(lag) },
                Some(Err(_)) => {
                    return Response::text(400, "lag: a number of bytes, such as lag=1048576\n")
                }
            },
            _ => {
                return Response::text(
                    404,
                    "not found: try /health, /primary, /replica[?lag=BYTES] or /metrics\n",
                )
            }
        };
        let (in_recovery, view) = match check {
            Check::Health => (self.in_recovery().await, None),
            Check::Primary | Check::Replica { .. } => {
                tokio::join!(self.in_recovery(), self.cluster_data())
            }
        };
        let sync_gate = self.known.lock().unwrap().sync_gate;
        let verdict = answer(
            check,
            &Facts {
                in_recovery,
                view: view.as_deref().map(|read| (&read.data, &read.spec)),
                keeper: &self.uid,
                sync_gate,
                fenced: self.machine.lock().fence_holds(self.machine.now()),
            },
        );
        let role = match in_recovery {
            None => "down",
            Some(true) => "standby",
            Some(false) => "primary",
        };
        Response::json(
            if verdict.ok { 200 } else { 503 },
            &json!({
                "keeper": self.uid.as_str(),
                "role": role,
                "ok": verdict.ok,
                "reason": verdict.reason,
            }),
        )
    }

    /// PostgreSQL's answer, fresh or at most [`PROBE_REUSE`] old.
    async fn in_recovery(&self) -> Option<bool> {
        let mut last = self.probe.lock().await;
        if let Some((at, answer)) = *last {
            if at.elapsed() < PROBE_REUSE {
                return answer;
            }
        }
        let answer = self.conn.in_recovery().await.ok();
        *last = Some((Instant::now(), answer));
        answer
    }

    /// The cluster data as the store has it, read at most [`PROBE_REUSE`] ago.
    async fn cluster_data(&self) -> Option<Arc<ClusterView>> {
        let mut last = self.read.lock().await;
        if let Some((at, read)) = last.as_ref() {
            if at.elapsed() < PROBE_REUSE {
                return read.clone();
            }
        }
        let read = tokio::time::timeout(
            PROBE_TIMEOUT,
            stolon_store::read_cluster_view(self.store.as_ref()),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
        .map(|(view, _)| view);
        *last = Some((Instant::now(), read.clone()));
        read
    }

    fn render_metrics(&self) -> String {
        let known = self.known.lock().unwrap();
        let target_role = known
            .view
            .as_ref()
            .and_then(|read| read.data.db_of_keeper(&self.uid))
            .map_or("undefined", |db| match db.spec.role {
                DbRole::Master => "master",
                DbRole::Standby => "standby",
            });
        let local_role = match (known.running, known.in_recovery) {
            (true, Some(false)) => "master",
            (true, Some(true)) => "standby",
            _ => "undefined",
        };
        let sleep_interval = known
            .view
            .as_ref()
            .map_or(0.0, |read| read.spec.sleep_interval.as_secs_f64());
        let mut e = Exposition::new("keeper", &self.cluster_name);
        e.gauge(
            "stolon_keeper_clusterdata_last_valid_update_seconds",
            "When the keeper last read valid cluster data (unix time).",
            unix_seconds(known.view_read_at),
        )
        .one_of(
            "stolon_keeper_target_role",
            "The role the cluster data gives this keeper's db.",
            "role",
            &ROLES,
            target_role,
        )
        .one_of(
            "stolon_keeper_local_role",
            "The role the local instance runs in.",
            "role",
            &ROLES,
            local_role,
        )
        .gauge(
            "stolon_keeper_needs_restart",
            "1 when changed parameters wait for a restart.",
            f64::from(u8::from(known.needs_restart)),
        )
        .gauge(
            "stolon_keeper_last_sync_success_seconds",
            "When the instance last matched its db spec (unix time).",
            unix_seconds(known.converged_at),
        )
        .gauge(
            "stolon_keeper_fenced",
            "1 while the keeper keeps its postgres stopped because it could not store its info (--store-loss fence).",
            f64::from(u8::from(self.machine.lock().fenced())),
        )
        .gauge(
            "stolon_keeper_data_disk_available_bytes",
            "Room left on the data directory's filesystem for postgres (NaN: not measured).",
            known
                .data_disk
                .map_or(f64::NAN, |d| d.available_bytes as f64),
        )
        .gauge(
            "stolon_keeper_data_disk_size_bytes",
            "The size of the data directory's filesystem (NaN: not measured).",
            known.data_disk.map_or(f64::NAN, |d| d.size_bytes as f64),
        )
        .gauge(
            "stolon_keeper_sleep_interval",
            "The spec's sleepInterval, in seconds.",
            sleep_interval,
        )
        .counter(
            "stolon_keeper_actions_total",
            "Actions taken on the instance (start, promote, resync, reconfigure, ...).",
            known.actions as f64,
        )
        .counter(
            "stolon_keeper_failed_actions_total",
            "Actions that failed.",
            known.failed_actions as f64,
        );
        drop(known);
        e.finish()
    }
}
