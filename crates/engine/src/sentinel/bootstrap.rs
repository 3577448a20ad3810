//! Bootstrapping: the first primary (or standby leader) of a new cluster, its db made by
//! initdb, restored, or adopted from an existing data directory.

use super::*;

impl Planner<'_> {
    pub(super) fn initialize(&mut self) {
        let Some(master_uid) = self.cd.cluster.status.master.clone() else {
            self.choose_initial_master();
            return;
        };
        let Some(db) = self.cd.dbs.get(&master_uid).cloned() else {
            self.cd.cluster.status.master = None;
            return;
        };
        // A db in its grace period after a bad report still reads as healthy: initialization
        // needs a good report now.
        let reported_ok = db.status.healthy && !self.memory.db_errors.contains_key(&master_uid);
        if Self::converged(&db) && reported_ok {
            if db.spec.include_previous_config {
                self.merge_init_parameters(&db);
            }
            let master = self.cd.dbs.get_mut(&master_uid).expect("present");
            master.spec.init_mode = InitMode::None;
            master.spec.include_previous_config = false;
            master.spec.pitr_config = None;
            self.cd.cluster.status.phase = ClusterPhase::Normal;
            self.emit(Event::new(EventKind::DbInitialized).with("db", &master_uid));
        } else if db.spec.init_mode != InitMode::Pitr
            // A restore takes as long as the backup and the archive need: no timeout.
            && self.convergence_expired(&db, self.spec.init_timeout)
        {
            self.emit(
                Event::new(EventKind::DbFailedToInitialize)
                    .with("db", &master_uid)
                    .with("keeper", &db.spec.keeper_uid),
            );
            self.memory
                .failed_init_keepers
                .insert(db.spec.keeper_uid.clone());
            self.cd.dbs.remove(&master_uid);
            self.cd.cluster.status.master = None;
        } else {
            self.emit(Event::new(EventKind::WaitingForDb).with("db", &master_uid));
        }
    }

    /// `mergePgParameters`: the parameters initdb wrote become the cluster's, under the
    /// ones the spec already sets.
    pub(super) fn merge_init_parameters(&mut self, db: &Db) {
        let Some(reported) = self
            .infos
            .get(&db.spec.keeper_uid)
            .and_then(|i| i.postgres_state.as_ref())
            .filter(|state| state.db_uid == db.uid)
            .map(|state| state.init_pg_parameters.clone())
        else {
            return;
        };
        let mut merged = reported;
        merged.extend(
            self.cd
                .cluster
                .spec
                .pg_parameters
                .clone()
                .unwrap_or_default(),
        );
        self.emit(Event::new(EventKind::MergingInitParameters).with("parameters", merged.len()));
        self.cd.cluster.spec.pg_parameters = Some(merged.clone());
        self.merged_parameters = Some(merged);
    }

    pub(super) fn choose_initial_master(&mut self) {
        if let Some(keeper) = self.spec.existing_keeper.clone() {
            self.adopt_existing(KeeperUid::new(keeper));
            return;
        }
        self.emit(Event::new(EventKind::FindingInitialMaster));
        let candidate = self
            .cd
            .keepers
            .values()
            .find(|k| {
                k.status.healthy
                    && k.status.can_be_master
                    && !self.memory.failed_init_keepers.contains(&k.uid)
            })
            .map(|k| k.uid.clone());
        let Some(keeper) = candidate else {
            let why = if self.cd.keepers.is_empty() {
                EventKind::NoKeepersRegistered
            } else {
                EventKind::NoInitialMasterCandidate
            };
            self.emit(Event::new(why));
            return;
        };
        let (mode, kind) = if self.spec.pitr_config.is_some() {
            (InitMode::Pitr, EventKind::InitializingClusterWithPitr)
        } else {
            (InitMode::New, EventKind::InitializingCluster)
        };
        let db = self.new_db(&keeper, DbRole::Master, mode);
        self.make_leader(&db);
        self.cd.cluster.status.master = Some(db.clone());
        self.cd.cluster.status.master_choice = format!(
            "initial master: keeper {keeper} is the first healthy keeper that can be master"
        );
        self.emit(Event::new(kind).with("db", db).with("keeper", keeper));
    }

    /// initMode existing: the named keeper's data becomes the primary, as it is.
    pub(super) fn adopt_existing(&mut self, keeper: KeeperUid) {
        if !self
            .cd
            .keepers
            .get(&keeper)
            .is_some_and(|k| k.status.healthy)
        {
            self.emit(Event::new(EventKind::ExistingKeeperNotAvailable).with("keeper", keeper));
            return;
        }
        let db = self.new_db(&keeper, DbRole::Master, InitMode::Existing);
        self.make_leader(&db);
        self.cd.cluster.status.master = Some(db.clone());
        self.cd.cluster.status.master_choice =
            format!("initial master: keeper {keeper} named by existingConfig");
        self.emit(
            Event::new(EventKind::InitializingClusterFromExisting)
                .with("db", db)
                .with("keeper", keeper),
        );
    }
}
