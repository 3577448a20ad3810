//! The configuration files the instance should have now (postgresql.conf, pg_hba.conf, the
//! replication passfile), rendered from the cluster data and the keeper's flags, and
//! written.

use crate::{upstream_of, Keeper, SOCKET_DIR};
use anyhow::Context;
use stolon_cluster::{ClusterData, Db, DbRole, SuReplAccessMode};
use stolon_engine::keeper::{slot_name, synchronous_standby_names, upstream, Endpoint};
use stolon_pg::conf::{
    render_pg_hba, render_postgresql_conf, ConfInput, HbaUsers, RemoteSource, StandbySettings,
    SuReplSources, WalSource,
};

impl Keeper {
    /// The configuration files the instance should have now: its local role decides
    /// whether it streams (from the followed db, or where it already streams from while that
    /// is unknown); a primary lists its synchronous standbys; the sync gate narrows access.
    pub(crate) fn desired_files(
        &self,
        cd: &ClusterData,
        db: &Db,
        following: Option<&Endpoint>,
    ) -> (String, String) {
        let spec = &db.spec;
        let in_recovery = self.pg.has_standby_signal();
        let remote = spec
            .follow_config
            .as_ref()
            .and_then(|f| f.remote())
            .filter(|_| in_recovery);
        let follow = upstream(cd, db, in_recovery, following);
        let app_name = slot_name(&db.uid);
        let passfile = self.pg.replication_passfile();
        let passfile = passfile.to_string_lossy();
        let standby = match remote {
            Some(remote) => {
                let settings = remote.standby_settings.as_ref();
                Some(WalSource::Remote(RemoteSource {
                    conninfo: settings.and_then(|s| s.primary_conninfo.as_deref()),
                    slot: settings.and_then(|s| s.primary_slot_name.as_deref()),
                    min_apply_delay: settings.and_then(|s| s.recovery_min_apply_delay.as_deref()),
                    restore_command: remote
                        .archive_recovery_settings
                        .as_ref()
                        .and_then(|a| a.restore_command.as_deref()),
                    application_name: &app_name,
                }))
            }
            None => follow.as_ref().map(|ep| {
                WalSource::Db(StandbySettings {
                    host: &ep.host,
                    port: ep.port,
                    user: &self.config.repl.role,
                    passfile: &passfile,
                    tls: &self.config.repl_tls,
                    application_name: &app_name,
                    slot: &app_name,
                })
            }),
        };
        let synchronous = synchronous_standby_names(db, in_recovery);
        // Until the sentinel has merged them into the spec, initdb's parameters stay.
        let parameters = if spec.include_previous_config {
            let mut merged = self
                .data
                .db_state()
                .map(|s| s.init_pg_parameters)
                .unwrap_or_default();
            merged.extend(spec.pg_parameters.clone());
            merged
        } else {
            spec.pg_parameters.clone()
        };
        let conf = render_postgresql_conf(&ConfInput {
            listen_address: &self.config.listen_address,
            port: self.config.port,
            socket_dir: SOCKET_DIR,
            max_standbys: spec.max_standbys,
            additional_wal_senders: spec.additional_wal_senders,
            user_parameters: &parameters,
            standby,
            synchronous_standbys: &synchronous,
            wal_log_hints: spec.use_pgrewind,
        });
        // Strict: only a primary accepts the two users, and only from the other dbs.
        let sources = match spec.default_su_repl_access_mode {
            SuReplAccessMode::All => SuReplSources::Anywhere,
            SuReplAccessMode::Strict if spec.role == DbRole::Master => SuReplSources::Only(
                cd.dbs
                    .values()
                    .filter(|other| other.uid != db.uid && !other.status.listen_address.is_empty())
                    .map(|other| other.status.listen_address.clone())
                    .collect(),
            ),
            SuReplAccessMode::Strict => SuReplSources::Only(Vec::new()),
        };
        let hba = render_pg_hba(
            &HbaUsers {
                su: &self.config.su.role,
                su_auth: self.config.su.auth,
                repl: &self.config.repl.role,
                repl_auth: self.config.repl.auth,
            },
            &sources,
            spec.pg_hba.as_deref(),
            self.sync_gate,
        );
        (conf, hba)
    }

    pub(crate) fn write_files(&self, cd: Option<&ClusterData>) -> anyhow::Result<()> {
        let cd = cd.context("no cluster data")?;
        let db = cd.db_of_keeper(&self.uid).context("no db assigned")?;
        let following = upstream_of(self.pg.read_file("postgresql.conf").as_deref());
        let (conf, hba) = self.desired_files(cd, db, following.as_ref());
        self.pg
            .write_replication_passfile(&self.config.repl.role, self.passwords.passfile())?;
        self.pg.write_file("postgresql.conf", &conf)?;
        self.pg.write_file("pg_hba.conf", &hba)?;
        self.pg.block_alter_system()?;
        Ok(())
    }
}
