//! Planned switchover, one phase per step (see [`SwitchoverPhase`]): hold new connections
//! at the proxies, stop the old primary after a checkpoint, wait until the target has all
//! its WAL, then hand over through the same fenced promotion as a failover.

use super::*;

impl Planner<'_> {
    /// Advances a switchover in progress. True when this step belongs to it entirely.
    pub(super) fn drive_switchover(&mut self, master: &Db) -> bool {
        let Some(mut so) = self.cd.cluster.status.switchover.clone() else {
            self.memory.switchover = None;
            return false;
        };
        let clock = match self.memory.switchover.take() {
            Some(clock) if clock.id == so.id => clock,
            _ => SwitchoverClock {
                id: so.id.clone(),
                started: self.now,
                held_since: None,
            },
        };
        let timed_out = self.now.saturating_sub(clock.started) > so.timeout.0;
        self.memory.switchover = Some(clock);
        match so.phase {
            SwitchoverPhase::Requested => {
                self.start_switchover(so);
                self.cd.cluster.status.switchover.is_some()
            }
            SwitchoverPhase::Holding | SwitchoverPhase::Halting | SwitchoverPhase::CatchingUp => {
                if let Some(reason) = self.switchover_obstacle(master, &so, timed_out) {
                    self.abandon_switchover(master, so, reason);
                    return false;
                }
                match so.phase {
                    SwitchoverPhase::Holding => self.halt_when_held(master, &mut so),
                    SwitchoverPhase::Halting => self.record_final_lsn(master, &mut so),
                    _ => {
                        if self.promote_when_caught_up(master, &mut so) {
                            return true;
                        }
                    }
                }
                self.cd.cluster.status.switchover = Some(so);
                true
            }
            SwitchoverPhase::Promoting => {
                if so.to_db.as_ref() != Some(&master.uid) {
                    self.release_held_connections();
                    self.finish_switchover(false, "interrupted: another db became master".into());
                }
                false
            }
            SwitchoverPhase::Restoring => false,
        }
    }

    pub(super) fn start_switchover(&mut self, mut so: Switchover) {
        let plan = switchover_plan(
            &self.cd,
            self.spec,
            so.to_keeper.as_ref(),
            self.stalled_dbs(),
        );
        let (master, target) = match plan {
            Ok(plan) => plan,
            Err(reason) => {
                self.finish_switchover(false, format!("refused: {reason}"));
                return;
            }
        };
        self.emit(
            Event::new(EventKind::SwitchoverHolding)
                .with("from", &master)
                .with("to", &target),
        );
        so.from_db = Some(master);
        so.to_db = Some(target);
        so.phase = SwitchoverPhase::Holding;
        self.cd.proxy.spec.hold = Some(Hold { grace: so.grace });
        self.cd.proxy.generation = self.cd.proxy.generation.next();
        self.cd.cluster.status.switchover = Some(so);
    }

    /// What forbids going on with the switchover, if anything.
    pub(super) fn switchover_obstacle(
        &self,
        master: &Db,
        so: &Switchover,
        timed_out: bool,
    ) -> Option<String> {
        let target = so.to_db.as_ref().and_then(|uid| self.cd.dbs.get(uid));
        let master_keeper_ok = self
            .cd
            .keepers
            .get(&master.spec.keeper_uid)
            .is_some_and(|k| k.status.healthy);
        if so.from_db.as_ref() != Some(&master.uid) {
            Some("the primary changed meanwhile".into())
        } else if !master_keeper_ok || !master.status.healthy {
            Some("the old primary failed".into())
        } else if !target.is_some_and(|t| t.status.healthy) {
            Some("the target failed".into())
        } else if timed_out {
            Some(match so.phase {
                SwitchoverPhase::Holding => {
                    format!(
                        "the proxies did not all hold new connections within {}",
                        so.timeout
                    )
                }
                SwitchoverPhase::Halting => {
                    format!(
                        "the old primary did not shut down cleanly within {}",
                        so.timeout
                    )
                }
                _ => format!(
                    "the target did not receive the old primary's final WAL position within {}",
                    so.timeout
                ),
            })
        } else {
            None
        }
    }

    /// Once every live proxy holds new connections and the grace period is over, stop the
    /// old primary.
    pub(super) fn halt_when_held(&mut self, master: &Db, so: &mut Switchover) {
        let lagging = self.proxies_behind();
        if !lagging.is_empty() {
            self.emit(
                Event::new(EventKind::SwitchoverWaitingForProxies)
                    .with("proxies", lagging.join(",")),
            );
            return;
        }
        let now = self.now;
        let clock = self.memory.switchover.as_mut().expect("set by the caller");
        let held_since = *clock.held_since.get_or_insert(now);
        if now.saturating_sub(held_since) < so.grace.0 {
            self.emit(Event::new(EventKind::SwitchoverGracePeriod));
            return;
        }
        self.emit(Event::new(EventKind::SwitchoverHalting).with("db", &master.uid));
        self.cd.dbs.get_mut(&master.uid).expect("master").spec.halt = true;
        so.phase = SwitchoverPhase::Halting;
    }

    pub(super) fn record_final_lsn(&mut self, master: &Db, so: &mut Switchover) {
        let stopped = self
            .infos
            .get(&master.spec.keeper_uid)
            .filter(|_| self.info_is_fresh(&master.spec.keeper_uid, &self.infos))
            .and_then(|i| i.postgres_state.as_ref())
            .filter(|s| s.db_uid == master.uid && s.generation == master.generation && !s.healthy)
            .and_then(|s| s.shutdown_checkpoint);
        let Some(checkpoint) = stopped else {
            self.emit(Event::new(EventKind::SwitchoverWaitingForHalt).with("db", &master.uid));
            return;
        };
        if checkpoint.timeline_id != master.status.timeline_id {
            // Never the case for a primary that served: rather than compare positions across
            // timelines, wait for the timeout to abandon the switchover.
            self.emit(
                Event::new(EventKind::SwitchoverUnexpectedTimeline)
                    .with("db", &master.uid)
                    .with("timeline", checkpoint.timeline_id),
            );
            return;
        }
        self.emit(
            Event::new(EventKind::SwitchoverOldPrimaryStopped)
                .with("db", &master.uid)
                .with("final_lsn", checkpoint.location),
        );
        so.final_lsn = Some(checkpoint.location);
        so.phase = SwitchoverPhase::CatchingUp;
    }

    /// True when the target was elected: the switchover then lives in the new cluster data.
    pub(super) fn promote_when_caught_up(&mut self, master: &Db, so: &mut Switchover) -> bool {
        let (Some(final_lsn), Some(target_uid)) = (so.final_lsn, so.to_db.clone()) else {
            return false;
        };
        let target = &self.cd.dbs[&target_uid];
        // The shutdown checkpoint is the old primary's last record: a target past its start
        // holds every commit the old primary made.
        let caught_up = target.status.timeline_id == master.status.timeline_id
            && target.status.x_log_pos > final_lsn;
        if !caught_up {
            self.emit(
                Event::new(EventKind::SwitchoverWaitingForCatchUp)
                    .with("db", &target_uid)
                    .with("position", target.status.x_log_pos)
                    .with("final_lsn", final_lsn),
            );
            return false;
        }
        let keeper = target.spec.keeper_uid.clone();
        self.emit(
            Event::new(EventKind::SwitchoverElectingTarget)
                .with("db", &target_uid)
                .with("keeper", &keeper)
                .with("position", target.status.x_log_pos),
        );
        so.phase = SwitchoverPhase::Promoting;
        self.cd.cluster.status.switchover = Some(so.clone());
        let why = format!(
            "switchover from db {} (keeper {}): keeper {keeper} caught up to {final_lsn}",
            master.uid, master.spec.keeper_uid
        );
        self.replace_master(master, &target_uid, why);
        true
    }

    /// Gives up the switchover: before the old primary was stopped the proxies simply route
    /// to it again; after, it starts again and the proxies keep holding until it serves.
    pub(super) fn abandon_switchover(&mut self, master: &Db, mut so: Switchover, reason: String) {
        self.emit(
            Event::new(EventKind::SwitchoverAbandoned)
                .with("db", &master.uid)
                .with("reason", &reason),
        );
        if so.phase == SwitchoverPhase::Holding || so.from_db.as_ref() != Some(&master.uid) {
            self.release_held_connections();
            self.finish_switchover(false, format!("abandoned: {reason}"));
            return;
        }
        self.cd.dbs.get_mut(&master.uid).expect("master").spec.halt = false;
        so.phase = SwitchoverPhase::Restoring;
        so.abandon_reason = reason;
        self.cd.cluster.status.switchover = Some(so);
    }

    /// The primary serves: a switchover that was promoting it, or restoring it, is over.
    pub(super) fn end_switchover_when_serving(&mut self, master: &Db) {
        let Some(so) = self.cd.cluster.status.switchover.clone() else {
            return;
        };
        let message = match so.phase {
            SwitchoverPhase::Promoting if so.to_db.as_ref() == Some(&master.uid) => format!(
                "switched over from db {} to db {}",
                so.from_db.map(|d| d.to_string()).unwrap_or_default(),
                master.uid
            ),
            SwitchoverPhase::Restoring
                if so.from_db.as_ref() == Some(&master.uid) && !master.spec.halt =>
            {
                format!("abandoned: {}", so.abandon_reason)
            }
            _ => return,
        };
        self.release_held_connections();
        let succeeded = so.phase == SwitchoverPhase::Promoting;
        self.finish_switchover(succeeded, message);
    }

    pub(super) fn release_held_connections(&mut self) {
        if self.cd.proxy.spec.hold.take().is_some() {
            self.cd.proxy.generation = self.cd.proxy.generation.next();
        }
    }

    pub(super) fn finish_switchover(&mut self, succeeded: bool, message: String) {
        let Some(so) = self.cd.cluster.status.switchover.take() else {
            return;
        };
        let kind = if succeeded {
            EventKind::SwitchoverCompleted
        } else {
            EventKind::SwitchoverDidNotHappen
        };
        self.emit(Event::new(kind).with("reason", &message));
        self.memory.switchover = None;
        self.cd.cluster.status.last_switchover = Some(SwitchoverOutcome {
            id: so.id,
            succeeded,
            message,
        });
    }
}

/// What a planned switchover would do now: from the serving primary (its db uid first) to
/// the standby [`switchover_candidate`] picks. The error says why it cannot happen.
pub fn switchover_plan(
    cd: &ClusterData,
    spec: &ValidSpec,
    to: Option<&KeeperUid>,
    stalled: BTreeSet<DbUid>,
) -> Result<(DbUid, DbUid), String> {
    if spec.is_standby_cluster() {
        return Err(
            "a standby cluster has no primary to switch over: its standby leader is \
                    replaced by a failover (stolonctl failkeeper), and stolonctl promote makes \
                    it a primary"
                .into(),
        );
    }
    let master = cd
        .master_db()
        .filter(|m| {
            m.spec.role == DbRole::Master
                && m.status.healthy
                && cd.proxy.spec.master_db_uid.as_ref() == Some(&m.uid)
        })
        .ok_or("the primary is not serving now (a failover or initialization is in progress)")?;
    let rules = ElectionRules {
        stalled,
        ..election_rules(master, spec.max_standby_lag)
    };
    let target = switchover_candidate(cd, master, to, &rules)?;
    Ok((master.uid.clone(), target))
}

/// The standby a planned switchover from `master` hands over to: `to` if it names a keeper
/// whose db may be promoted under `rules`, otherwise the best such standby. The error says
/// why there is none, in words for the operator.
pub fn switchover_candidate(
    cd: &ClusterData,
    master: &Db,
    to: Option<&KeeperUid>,
    rules: &ElectionRules,
) -> Result<DbUid, String> {
    let choice = choose_new_master(cd, master, rules);
    let Some(keeper) = to else {
        return choice.best.ok_or_else(|| {
            let reasons: Vec<String> = choice
                .rejected
                .iter()
                .map(|r| format!("keeper {}: {}", r.keeper, r.reason))
                .collect();
            if reasons.is_empty() {
                "no standby to switch over to".to_string()
            } else {
                format!("no standby may become primary ({})", reasons.join("; "))
            }
        });
    };
    if master.spec.keeper_uid == *keeper {
        return Err(format!("keeper {keeper} already runs the primary"));
    }
    let Some(db) = cd.db_of_keeper(keeper) else {
        return Err(format!("keeper {keeper} has no db in the cluster"));
    };
    if choice.eligible.contains(&db.uid) {
        return Ok(db.uid.clone());
    }
    let reason = choice
        .rejected
        .iter()
        .find(|r| r.keeper == *keeper)
        .map_or("it is not a standby of the primary", |r| r.reason);
    Err(format!("keeper {keeper} cannot become primary: {reason}"))
}
