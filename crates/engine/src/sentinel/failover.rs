//! Failover: replacing a failed primary by the best standby, through the fenced handshake
//! of the module documentation, and the election rules it shares with switchover and
//! stolonctl.

use super::*;

impl Planner<'_> {
    pub(super) fn fail_over(&mut self, failed: &Db) {
        if self.cd.cluster.status.switchover.is_some() {
            self.release_held_connections();
            self.finish_switchover(false, format!("interrupted: db {} failed", failed.uid));
        }
        // A primary stopped cleanly for a switchover holds every commit, and its successor
        // never served: it is the one to bring back, in any replication mode.
        let cleanly_halted = self
            .cd
            .cluster
            .status
            .deposed_master
            .as_ref()
            .is_some_and(|d| d.spec.halt);
        if cleanly_halted && self.reinstate_deposed_master(failed) {
            return;
        }
        self.emit(
            Event::new(EventKind::FindingReplacement)
                .with("db", &failed.uid)
                .with("keeper", &failed.spec.keeper_uid),
        );
        let rules = ElectionRules {
            stalled: self.stalled_dbs(),
            ..election_rules(failed, self.spec.max_standby_lag)
        };
        let choice = choose_new_master(&self.cd, failed, &rules);
        for r in &choice.rejected {
            self.emit(
                Event::new(EventKind::IgnoringKeeper)
                    .with("keeper", &r.keeper)
                    .with("reason", r.reason),
            );
        }
        let Some(best) = choice.best else {
            if self.reinstate_deposed_master(failed) {
                return;
            }
            self.failed_master = Some(failed.uid.clone());
            let mut event = Event::new(EventKind::NoEligibleMaster);
            for r in &choice.rejected {
                event = event.with("rejected", format!("{}({})", r.keeper, r.reason));
            }
            self.emit(event);
            return;
        };
        let keeper = self.cd.dbs[&best].spec.keeper_uid.clone();
        self.emit(
            Event::new(EventKind::ElectingNewMaster)
                .with("db", &best)
                .with("keeper", &keeper)
                .with("why", &choice.why),
        );
        let why = format!(
            "failover from db {} (keeper {}): {}",
            failed.uid, failed.spec.keeper_uid, choice.why
        );
        self.replace_master(failed, &best, why);
    }

    /// Makes `best` the primary to be in place of `old`, whose db is removed: the proxies
    /// stop routing at once, and `best` is promoted once they have all acknowledged that.
    pub(super) fn replace_master(&mut self, old: &Db, best: &DbUid, why: String) {
        let served = self.cd.proxy.spec.master_db_uid.as_ref() == Some(&old.uid);
        if old.spec.role == DbRole::Master {
            self.emit(Event::new(EventKind::RemovingOldMaster).with("db", &old.uid));
        }
        // The primary that served is remembered until its successor serves; a candidate
        // that fails before that does not replace it in memory.
        if served || self.cd.cluster.status.deposed_master.is_none() {
            self.cd.cluster.status.deposed_master = Some(Box::new(old.clone()));
        }
        self.cd.dbs.remove(&old.uid);
        self.cd.cluster.status.master = Some(best.clone());
        self.cd.cluster.status.master_choice = why;
        // The new primary waits for the same standbys as the old one did (but itself),
        // so that commits keep waiting for a copy from the first moment it serves; in
        // synchronous mode it also waits for the other good standbys up to
        // maxSynchronousStandbys, recorded here before its keeper lists them, so that
        // commits resume as soon as one of them streams from it.
        let mut synchronous: Vec<DbUid> = old
            .spec
            .synchronous_standbys
            .iter()
            .filter(|uid| *uid != best)
            .cloned()
            .collect();
        if old.spec.synchronous_replication {
            let timeline = self.cd.dbs[best].status.timeline_id;
            let mut others: Vec<&Db> = self
                .cd
                .dbs
                .values()
                .filter(|db| {
                    db.uid != *best
                        && db.uid != old.uid
                        && !synchronous.contains(&db.uid)
                        && db.spec.role == DbRole::Standby
                        && db.status.healthy
                        && Self::converged(db)
                        && db.status.timeline_id == timeline
                        && self.cd.keepers.get(&db.spec.keeper_uid).is_some_and(|k| {
                            k.status.healthy && k.status.can_be_synchronous_replica
                        })
                })
                .collect();
            others.sort_by(|a, b| {
                b.status
                    .x_log_pos
                    .cmp(&a.status.x_log_pos)
                    .then(a.uid.cmp(&b.uid))
            });
            let room =
                usize::from(self.spec.max_synchronous_standbys).saturating_sub(synchronous.len());
            synchronous.extend(others.into_iter().take(room).map(|db| db.uid.clone()));
        }
        let new_master = self.cd.dbs.get_mut(best).expect("elected db exists");
        new_master.spec.synchronous_standbys = synchronous;
        new_master.status.synchronous_standbys.clear();
        new_master.spec.external_synchronous_standbys = if old.spec.synchronous_replication
            && new_master.spec.synchronous_standbys.len()
                < usize::from(self.spec.min_synchronous_standbys)
        {
            vec![FAKE_STANDBY_NAME.to_string()]
        } else {
            Vec::new()
        };
        self.clear_proxy_target();
    }

    /// When the standby elected to replace the primary fails before it serves and nothing
    /// else qualifies, the old primary comes back if its keeper is alive and still holds its
    /// data: in asynchronous mode it has every commit the cluster acknowledged. Not in
    /// synchronous mode, where only a known synchronous standby may take over.
    pub(super) fn reinstate_deposed_master(&mut self, failed: &Db) -> bool {
        let Some(deposed) = self.cd.cluster.status.deposed_master.clone() else {
            return false;
        };
        if deposed.uid == failed.uid {
            return false;
        }
        let synchronous = deposed.spec.synchronous_replication
            || failed.spec.synchronous_replication
            || self.spec.synchronous_replication;
        if synchronous && !deposed.spec.halt {
            self.emit(Event::new(EventKind::NotReinstatingInSyncMode).with("db", &deposed.uid));
            return false;
        }
        let keeper = &deposed.spec.keeper_uid;
        let alive = self
            .cd
            .keepers
            .get(keeper)
            .is_some_and(|k| k.status.healthy)
            && self
                .infos
                .get(keeper)
                .and_then(|i| i.postgres_state.as_ref())
                .is_some_and(|state| state.db_uid == deposed.uid)
            && self.cd.db_of_keeper(keeper).is_none();
        if !alive {
            return false;
        }
        if !self.proxies_behind().is_empty() || self.cd.proxy.spec.master_db_uid.is_some() {
            self.clear_proxy_target();
            self.emit(Event::new(EventKind::WaitingForProxies));
            return true;
        }
        self.emit(
            Event::new(EventKind::ReinstatingOldMaster)
                .with("db", &deposed.uid)
                .with("keeper", keeper),
        );
        self.cd.dbs.remove(&failed.uid);
        let mut db = *deposed;
        db.spec.halt = false;
        // It serves only once its keeper reports it running as a primary again.
        db.status.in_recovery = true;
        self.cd.cluster.status.master_choice = format!(
            "reinstated db {} (keeper {}): the standby elected to replace it (db {}) failed before serving and no other standby qualifies",
            db.uid, db.spec.keeper_uid, failed.uid
        );
        self.cd.cluster.status.master = Some(db.uid.clone());
        self.cd.cluster.status.deposed_master = None;
        self.memory.db_errors.remove(&db.uid);
        let uid = db.uid.clone();
        self.cd.dbs.insert(uid.clone(), db);
        self.make_leader(&uid);
        // What its keeper reports now, as any later step would read it.
        self.observe_db(&uid);
        true
    }

    /// The live proxies that have not yet applied the current proxy generation.
    pub(super) fn proxies_behind(&self) -> Vec<String> {
        let generation = self.cd.proxy.generation;
        self.live_proxies()
            .into_iter()
            .filter(|p| p.generation != generation)
            .map(|p| p.uid.to_string())
            .collect()
    }

    /// When a proxy this leader never saw has surely fenced itself. Its info may have left
    /// the store before this leader's first step, early if the store's clock jumped, so that
    /// only this leader's own clock can tell: the proxy has not read the store since before
    /// then, and so fences itself within the spec's proxyTimeout.
    pub(super) fn unseen_proxies_fenced_at(&self) -> Option<Duration> {
        let since = self.memory.leading_since?;
        Some(since + self.spec.proxy_timeout + PROXY_FENCE_MARGIN)
    }

    pub(super) fn clear_proxy_target(&mut self) {
        if self.cd.proxy.spec.master_db_uid.take().is_some() {
            self.cd.proxy.generation = self.cd.proxy.generation.next();
        }
    }

    pub(super) fn promote_when_proxies_fenced(&mut self, candidate: &Db) {
        self.clear_proxy_target();
        let generation = self.cd.proxy.generation;
        let lagging = self.proxies_behind();
        if !lagging.is_empty() {
            self.emit(
                Event::new(EventKind::WaitingForProxies)
                    .with("generation", generation)
                    .with("proxies", lagging.join(",")),
            );
            return;
        }
        if let Some(at) = self.unseen_proxies_fenced_at().filter(|at| self.now <= *at) {
            self.emit(
                Event::new(EventKind::WaitingForUnseenProxies)
                    .with("for", format!("{:?}", at - self.now)),
            );
            return;
        }
        let kind = if self.spec.is_standby_cluster() {
            EventKind::ProxiesFencedMakingStandbyLeader
        } else {
            EventKind::ProxiesFencedPromoting
        };
        self.emit(
            Event::new(kind)
                .with("db", &candidate.uid)
                .with("proxy_generation", generation),
        );
        self.make_leader(&candidate.uid);
        let db = self.cd.dbs.get_mut(&candidate.uid).expect("master exists");
        db.spec.init_mode = InitMode::None;
    }
}

/// What limits the choice of a new primary.
#[derive(Debug, Clone, Default)]
pub struct ElectionRules {
    /// Async mode: the most bytes a candidate may be behind the failed primary's last report.
    pub max_lag: u32,
    /// Dbs that did not apply their spec within convergenceTimeout.
    pub stalled: BTreeSet<DbUid>,
    /// Sync mode: the only dbs that may be chosen (known in sync with the failed primary).
    pub synchronous: Option<BTreeSet<DbUid>>,
}

/// The rules a replacement of `master` must follow: within `max_lag` of its last position
/// in asynchronous mode; in synchronous mode, among the standbys it knew in sync (and still
/// listed), which hold every acknowledged commit.
pub fn election_rules(master: &Db, max_lag: u32) -> ElectionRules {
    let synchronous = master.spec.synchronous_replication.then(|| {
        let spec: BTreeSet<&DbUid> = master.spec.synchronous_standbys.iter().collect();
        master
            .status
            .synchronous_standbys
            .iter()
            .filter(|uid| spec.contains(uid))
            .cloned()
            .collect::<BTreeSet<DbUid>>()
    });
    ElectionRules {
        max_lag,
        stalled: BTreeSet::new(),
        synchronous,
    }
}

/// A failover decision: the db to promote, why, and why every other standby was not chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub best: Option<DbUid>,
    /// Every db that may be promoted, best first.
    pub eligible: Vec<DbUid>,
    pub why: String,
    pub rejected: Vec<Rejection>,
}

/// The standby to promote in place of `failed`.
///
/// Eligible: a standby whose db is healthy and has applied a spec, whose keeper may be
/// master, on the failed primary's timeline, and either within `max_lag` bytes of its last
/// reported position (async) or known to have been synchronous (sync). Among them the highest
/// position wins (the least data lost: never a less advanced one), then the higher keeper
/// priority, then the lowest db uid so the choice is stable.
pub fn choose_new_master(cd: &ClusterData, failed: &Db, rules: &ElectionRules) -> Choice {
    let mut eligible: Vec<&Db> = Vec::new();
    let mut rejected = Vec::new();
    let priority = |db: &Db| {
        cd.keepers
            .get(&db.spec.keeper_uid)
            .map_or(0, |k| k.status.priority)
    };
    for db in cd.dbs.values().filter(|db| db.uid != failed.uid) {
        let keeper = cd.keepers.get(&db.spec.keeper_uid);
        let lag = failed
            .status
            .x_log_pos
            .0
            .saturating_sub(db.status.x_log_pos.0);
        let reason = if !keeper.is_some_and(|k| k.status.can_be_master) {
            Some("it cannot be master (--can-be-master=false)")
        } else if !db.status.healthy {
            Some("its db is not healthy")
        } else if rules.stalled.contains(&db.uid) {
            Some("its db has not converged within convergenceTimeout")
        } else if db.status.current_generation == Generation::NONE {
            Some("its db has not been initialized yet")
        } else if db.status.timeline_id != failed.status.timeline_id {
            Some("its db is on another timeline than the master")
        } else if let Some(sync) = &rules.synchronous {
            (!sync.contains(&db.uid))
                .then_some("it was not a known synchronous standby of the failed master")
        } else if lag > u64::from(rules.max_lag) {
            Some("it is behind the maximum xlog position (maxStandbyLag)")
        } else {
            None
        };
        match reason {
            Some(reason) => rejected.push(Rejection {
                keeper: db.spec.keeper_uid.clone(),
                reason,
            }),
            None => eligible.push(db),
        }
    }
    eligible.sort_by(|a, b| {
        b.status
            .x_log_pos
            .cmp(&a.status.x_log_pos)
            .then_with(|| priority(b).cmp(&priority(a)))
            .then_with(|| a.uid.cmp(&b.uid))
    });
    let Some(best) = eligible.first() else {
        return Choice {
            best: None,
            eligible: Vec::new(),
            why: String::new(),
            rejected,
        };
    };
    for other in &eligible[1..] {
        let reason = if other.status.x_log_pos < best.status.x_log_pos {
            "it is less advanced than the chosen standby"
        } else if priority(other) < priority(best) {
            "it has a lower priority than the equally advanced chosen standby"
        } else {
            "an equally advanced standby of equal priority has a lower db uid"
        };
        rejected.push(Rejection {
            keeper: other.spec.keeper_uid.clone(),
            reason,
        });
    }
    let mode = if rules.synchronous.is_some() {
        "known synchronous"
    } else {
        "eligible"
    };
    Choice {
        best: Some(best.uid.clone()),
        eligible: eligible.iter().map(|db| db.uid.clone()).collect(),
        why: format!(
            "highest xlog position {} (priority {}) among {} {mode} standbys",
            best.status.x_log_pos,
            priority(best),
            eligible.len()
        ),
        rejected,
    }
}
