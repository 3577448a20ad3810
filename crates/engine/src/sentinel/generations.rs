//! Spec changes reaching the dbs: each db gets the cluster spec's settings, and a new
//! generation when its spec changed.

use super::*;

impl Planner<'_> {
    pub(super) fn copy_cluster_spec_into_dbs(&mut self) {
        self.copy_remote_settings();
        // While the primary is failed and not replaced, the standbys get no spec changes: a
        // new generation would restart the convergence timers that decide who may replace
        // it. The failed primary itself does, but for its synchronous settings, which say
        // who may replace it: the change may be the operator's fix for what keeps its
        // postgres from starting.
        let failed_master = self.failed_master.clone();
        let merged_parameters = self.merged_parameters.clone();
        for db in self.cd.dbs.values_mut() {
            if failed_master.as_ref().is_some_and(|uid| *uid != db.uid) {
                continue;
            }
            db.spec.max_standbys = self.spec.max_standbys;
            db.spec.additional_wal_senders = self.spec.additional_wal_senders;
            // This step may have merged initdb's parameters into the cluster spec.
            db.spec.pg_parameters = merged_parameters
                .clone()
                .unwrap_or_else(|| self.spec.pg_parameters.clone());
            db.spec.pg_hba = self.spec.pg_hba.clone();
            db.spec.use_pgrewind = self.spec.use_pgrewind;
            db.spec.automatic_pg_restart = self.spec.automatic_pg_restart;
            db.spec.default_su_repl_access_mode = self.spec.default_su_repl_access_mode;
            db.spec.additional_replication_slots =
                if db.spec.role == DbRole::Master || db.spec.follows_remote() {
                    self.spec.additional_master_replication_slots.clone()
                } else {
                    Vec::new()
                };
            if failed_master.is_some() {
                continue;
            }
            db.spec.synchronous_replication = self.spec.synchronous_replication;
            if !self.spec.synchronous_replication {
                db.spec.synchronous_standbys.clear();
                db.spec.external_synchronous_standbys.clear();
                db.status.synchronous_standbys.clear();
            }
        }
    }

    pub(super) fn bump_changed_generations(&mut self, before: &ClusterData) {
        for db in self.cd.dbs.values_mut() {
            if let Some(old) = before.dbs.get(&db.uid) {
                if old.spec != db.spec {
                    db.generation = old.generation.next();
                }
            }
        }
    }
}
