//! The standbys of a serving primary: which dbs follow it, which are synchronous, which are
//! removed, and what the proxies are told.

use super::*;

impl Planner<'_> {
    /// Points the proxies at a primary that serves, and keeps the list of proxies allowed to
    /// route equal to the live ones. One generation bump per change of either.
    pub(super) fn publish_to_proxies(&mut self, master: &Db, serving: bool) {
        let mut spec = self.cd.proxy.spec.clone();
        if spec.master_db_uid.is_none() && serving {
            self.emit(Event::new(EventKind::ProxiesRouteToMaster).with("db", &master.uid));
            spec.master_db_uid = Some(master.uid.clone());
        }
        if spec.master_db_uid.is_some() {
            // Including the proxies whose info has left the store but which may still route.
            let mut live: Vec<ProxyUid> = self
                .live_proxies()
                .into_iter()
                .map(|p| p.uid.clone())
                .collect();
            live.sort();
            spec.enabled_proxies = live;
        }
        if spec != self.cd.proxy.spec {
            self.cd.proxy.spec = spec;
            self.cd.proxy.generation = self.cd.proxy.generation.next();
        }
    }

    pub(super) fn manage_standbys(&mut self, master: &Db) {
        self.remove_invalid_standbys(master);
        self.remove_standbys_missing_wal(master);
        let (mut good, converging, failed) = self.classify_standbys(master);
        if master.spec.synchronous_replication {
            self.manage_synchronous_standbys(master, &good, &converging);
        }
        // Synchronous standbys are never removed here, neither those the primary waited for
        // when this step began nor those it waits for now: they are the only failover
        // candidates. One that leaves the set may go in a later step.
        let protected: BTreeSet<DbUid> = master
            .spec
            .synchronous_standbys
            .iter()
            .chain(&self.cd.dbs[&master.uid].spec.synchronous_standbys)
            .cloned()
            .collect();
        let wanted = usize::from(self.spec.max_standbys_per_sender);
        if good.len() >= wanted {
            for db in failed.iter().chain(converging.iter()) {
                if !protected.contains(&db.uid) {
                    self.emit(Event::new(EventKind::RemovingNonGoodStandby).with("db", &db.uid));
                    self.cd.dbs.remove(&db.uid);
                }
            }
            // The least advanced go first: the others are the better failover candidates.
            good.sort_by(|a, b| {
                a.status
                    .x_log_pos
                    .cmp(&b.status.x_log_pos)
                    .then(b.uid.cmp(&a.uid))
            });
            let mut excess = good.len() - wanted;
            for db in &good {
                if excess == 0 {
                    break;
                }
                if !protected.contains(&db.uid) {
                    self.emit(Event::new(EventKind::RemovingExcessStandby).with("db", &db.uid));
                    self.cd.dbs.remove(&db.uid);
                    excess -= 1;
                }
            }
        } else {
            // Failed standbys stay while there is room: they may come back.
            let room = wanted.saturating_sub(good.len() + converging.len());
            let owners = self.db_owners();
            let free: Vec<KeeperUid> = self
                .cd
                .keepers
                .values()
                // Only keepers heard from just now: one gone quiet would hold the db hostage.
                .filter(|k| {
                    k.status.healthy
                        && self.info_is_fresh(&k.uid, &self.infos)
                        && !owners.contains(&k.uid)
                })
                .map(|k| k.uid.clone())
                .take(room)
                .collect();
            for keeper in free {
                // The primary is the resync's source: it must have reported after the
                // keeper, or it may be dead already.
                if !self.master_reported_since(master, &keeper, OrderReason::NewStandby) {
                    continue;
                }
                let db = self.new_db(&keeper, DbRole::Standby, InitMode::Resync);
                self.emit(
                    Event::new(EventKind::AddedNewStandby)
                        .with("db", db)
                        .with("keeper", keeper),
                );
            }
        }
        for db in self.cd.dbs.values_mut() {
            if db.uid == master.uid {
                continue;
            }
            db.spec.role = DbRole::Standby;
            db.spec.followers.clear();
            db.spec.follow_config = Some(FollowConfig::db(&master.uid));
            db.spec.synchronous_standbys.clear();
            db.spec.external_synchronous_standbys.clear();
            db.status.synchronous_standbys.clear();
            if Self::converged(db) && db.status.healthy {
                db.spec.init_mode = InitMode::None;
            }
        }
        let followers: Vec<DbUid> = self
            .cd
            .dbs
            .values()
            .filter(|db| db.uid != master.uid)
            .map(|db| db.uid.clone())
            .collect();
        self.cd
            .dbs
            .get_mut(&master.uid)
            .expect("master")
            .spec
            .followers = followers;
    }

    /// A standby whose position has not moved for a while and whose next WAL segment the
    /// primary no longer has will never catch up: its keeper gets a fresh db (a new base
    /// backup).
    pub(super) fn remove_standbys_missing_wal(&mut self, master: &Db) {
        let Some(oldest) = self
            .reported_oldest_wal
            .get(&master.uid)
            .and_then(|name| name.get(8..24))
            .filter(|name| name.len() == 16)
        else {
            return;
        };
        let stuck_for = STUCK_STANDBY_SLEEP_INTERVALS * self.spec.sleep_interval;
        let hopeless: Vec<Db> = self
            .cd
            .dbs
            .values()
            .filter(|db| db.uid != master.uid && db.generation != Generation::INITIAL)
            .filter(|db| db.status.healthy && db.status.x_log_pos != master.status.x_log_pos)
            .filter(|db| {
                self.memory
                    .wal_progress
                    .get(&db.uid)
                    .is_some_and(|(lsn, since)| {
                        *lsn == db.status.x_log_pos && self.now.saturating_sub(*since) > stuck_for
                    })
            })
            .filter(|db| wal_segment(db.status.x_log_pos).as_str() < oldest)
            .cloned()
            .collect();
        for db in hopeless {
            if !self.master_reported_since(master, &db.spec.keeper_uid, OrderReason::MissingWal) {
                continue;
            }
            let uid = db.uid;
            self.emit(Event::new(EventKind::RemovingStandbyMissingWal).with("db", &uid));
            self.cd.dbs.remove(&uid);
        }
    }

    /// A standby whose data comes from another cluster (system identifier) or that went
    /// past the primary's timeline cannot stream from it: its keeper gets a fresh db.
    pub(super) fn remove_invalid_standbys(&mut self, master: &Db) {
        let invalid: Vec<(Db, InvalidStandby)> = self
            .cd
            .dbs
            .values()
            .filter(|db| db.uid != master.uid && db.status.current_generation != Generation::NONE)
            .filter_map(|db| {
                if !db.status.system_id.is_empty()
                    && !master.status.system_id.is_empty()
                    && db.status.system_id != master.status.system_id
                {
                    Some((db.clone(), InvalidStandby::OtherSystem))
                } else if db.status.timeline_id > master.status.timeline_id {
                    Some((db.clone(), InvalidStandby::LaterTimeline))
                } else if diverged(db, master) {
                    Some((db.clone(), InvalidStandby::PastFork))
                } else {
                    None
                }
            })
            .collect();
        for (db, why) in invalid {
            let order = OrderReason::Invalid(why);
            if !self.master_reported_since(master, &db.spec.keeper_uid, order) {
                continue;
            }
            self.emit(
                Event::new(EventKind::RemovingInvalidDb)
                    .with("db", &db.uid)
                    .with("reason", why.message()),
            );
            self.cd.dbs.remove(&db.uid);
        }
    }

    /// Whether the primary has reported since the report of `keeper` that first called for
    /// an order against its data, given for `reason`. A dead primary's last report is older
    /// than the reports its standbys make after it died, so it never confirms anything: an
    /// order is only taken on a primary that was alive after the report calling for it.
    pub(super) fn master_reported_since(
        &mut self,
        master: &Db,
        keeper: &KeeperUid,
        reason: OrderReason,
    ) -> bool {
        let key = (keeper.clone(), reason);
        self.orders_called_for.insert(key.clone());
        let changed_at = |k: &KeeperUid| self.memory.keepers.get(k).map(|hb| hb.changed_at);
        let Some(reported) = changed_at(keeper) else {
            return false;
        };
        let since = *self.memory.pending_orders.entry(key).or_insert(reported);
        let confirmed = self.info_is_fresh(&master.spec.keeper_uid, &self.infos)
            && changed_at(&master.spec.keeper_uid).is_some_and(|at| at > since);
        if !confirmed {
            self.emit(
                Event::new(EventKind::WaitingForMasterReport)
                    .with("keeper", keeper)
                    .with("reason", reason.message()),
            );
        }
        confirmed
    }

    /// Splits the standbys into good (healthy and converged), converging (still applying
    /// their spec in time) and failed.
    pub(super) fn classify_standbys(&mut self, master: &Db) -> (Vec<Db>, Vec<Db>, Vec<Db>) {
        let (mut good, mut converging, mut failed) = (Vec::new(), Vec::new(), Vec::new());
        let standbys: Vec<Db> = self
            .cd
            .dbs
            .values()
            .filter(|db| db.uid != master.uid)
            .cloned()
            .collect();
        for db in standbys {
            let keeper_healthy = self
                .cd
                .keepers
                .get(&db.spec.keeper_uid)
                .is_some_and(|k| k.status.healthy);
            // A basebackup takes as long as the data is big: syncTimeout, if any, bounds it.
            let timeout = match db.spec.init_mode {
                InitMode::Resync => self.spec.sync_timeout,
                _ => Some(self.spec.convergence_timeout),
            };
            let timed_out = timeout.is_some_and(|t| self.convergence_expired(&db, t));
            if keeper_healthy && Self::converged(&db) && db.status.healthy {
                good.push(db);
            } else if keeper_healthy && !Self::converged(&db) && !timed_out {
                converging.push(db);
            } else {
                failed.push(db);
            }
        }
        (good, converging, failed)
    }

    /// Keeps the primary's synchronous standby set: only change it from a state where every
    /// listed standby is known in sync, add new members before removing old ones, and list
    /// a placeholder when there are fewer real ones than minSynchronousStandbys.
    pub(super) fn manage_synchronous_standbys(
        &mut self,
        master: &Db,
        good: &[Db],
        converging: &[Db],
    ) {
        let min = usize::from(self.spec.min_synchronous_standbys);
        let max = usize::from(self.spec.max_synchronous_standbys);
        let good_set: BTreeSet<&DbUid> = good.iter().map(|db| &db.uid).collect();
        let reported: BTreeSet<DbUid> = self
            .reported_sync
            .get(&master.uid)
            .map(|v| v.iter().cloned().collect())
            .unwrap_or_default();
        let mut spec: BTreeSet<DbUid> = master.spec.synchronous_standbys.iter().cloned().collect();
        let mut status: BTreeSet<DbUid> =
            master.status.synchronous_standbys.iter().cloned().collect();
        if status != spec {
            status = status
                .intersection(&spec)
                .chain(reported.intersection(&spec))
                .cloned()
                .collect();
            // A standby still applying its spec (re-pointed to a new primary, say) may yet
            // come in sync: only a failed or removed one makes the wait hopeless.
            let converging: BTreeSet<&DbUid> = converging.iter().map(|db| &db.uid).collect();
            let hopeless = spec.iter().any(|uid| {
                !status.contains(uid)
                    && (!self.cd.dbs.contains_key(uid)
                        || !(good_set.contains(uid) || converging.contains(uid)))
            });
            if hopeless {
                self.emit(Event::new(EventKind::ResettingExpectedSyncStandbys));
                spec = status.clone();
            }
        }
        if status == spec {
            let previous = spec.clone();
            let mut next: BTreeSet<DbUid> = previous
                .iter()
                .filter(|uid| good_set.contains(uid))
                .cloned()
                .collect();
            for gone in previous.difference(&next) {
                self.emit(Event::new(EventKind::RemovingFailedSyncStandby).with("db", gone));
            }
            let mut by_position: Vec<&Db> = good.iter().collect();
            by_position.sort_by(|a, b| {
                b.status
                    .x_log_pos
                    .cmp(&a.status.x_log_pos)
                    .then(a.uid.cmp(&b.uid))
            });
            while next.len() > max {
                let least = by_position
                    .iter()
                    .rev()
                    .find(|db| next.contains(&db.uid))
                    .map(|db| db.uid.clone())
                    .expect("members of next are good");
                next.remove(&least);
            }
            for db in &by_position {
                if next.len() >= max {
                    break;
                }
                let can = self
                    .cd
                    .keepers
                    .get(&db.spec.keeper_uid)
                    .is_some_and(|k| k.status.can_be_synchronous_replica);
                if can
                    && !next.contains(&db.uid)
                    && db.status.timeline_id == master.status.timeline_id
                {
                    self.emit(Event::new(EventKind::AddingSyncStandby).with("db", &db.uid));
                    next.insert(db.uid.clone());
                }
            }
            // Below the minimum, keep the previous ones even if failed: one of them may come
            // back, and until then commits must wait anyway.
            if next.len() < min {
                next.extend(
                    previous
                        .iter()
                        .filter(|uid| self.cd.dbs.contains_key(*uid))
                        .cloned(),
                );
            }
            if next.iter().any(|uid| !previous.contains(uid)) && !previous.is_empty() {
                self.emit(Event::new(EventKind::MergingSyncStandbys));
                next.extend(
                    previous
                        .iter()
                        .filter(|uid| self.cd.dbs.contains_key(*uid))
                        .cloned(),
                );
            }
            if next != spec {
                self.emit(
                    Event::new(EventKind::SyncStandbysChanged).with(
                        "standbys",
                        next.iter()
                            .map(|u| u.to_string())
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                );
            }
            spec = next;
            status.retain(|uid| spec.contains(uid));
        } else {
            self.emit(Event::new(EventKind::WaitingForSyncStandbys));
        }
        let external = if spec.len() < min {
            self.emit(Event::new(EventKind::UsingFakeSyncStandby));
            vec![FAKE_STANDBY_NAME.to_string()]
        } else {
            Vec::new()
        };
        let master = self.cd.dbs.get_mut(&master.uid).expect("master");
        master.spec.synchronous_standbys = spec.into_iter().collect();
        master.spec.external_synchronous_standbys = external;
        master.status.synchronous_standbys = status.into_iter().collect();
    }
}

/// Whether `db`, on an earlier timeline than `master`, wrote past the point where the
/// master's history left that timeline: it holds WAL the master never had and cannot follow
/// it (PostgreSQL: "new timeline forked off current database system timeline before current
/// recovery point").
fn diverged(db: &Db, master: &Db) -> bool {
    db.status.timeline_id < master.status.timeline_id
        && master
            .status
            .timelines_history
            .iter()
            .find(|switch| switch.timeline_id == db.status.timeline_id)
            .is_some_and(|switch| db.status.x_log_pos > switch.switch_point)
}

/// Why the planner gives an order against a keeper's data: with the keeper, what
/// [`Memory`] keys a pending order by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum OrderReason {
    /// A free keeper gets a new standby db, resynced from the primary.
    NewStandby,
    /// A standby that can never catch up gets a fresh db.
    MissingWal,
    /// A standby that cannot stream from the primary gets a fresh db.
    Invalid(InvalidStandby),
}

impl OrderReason {
    /// As the operator reads it: a new standby or a standby missing WAL is named by the
    /// event that carries the order out, an invalid standby by what makes it invalid.
    fn message(self) -> &'static str {
        match self {
            OrderReason::NewStandby => EventKind::AddedNewStandby.message(),
            OrderReason::MissingWal => EventKind::RemovingStandbyMissingWal.message(),
            OrderReason::Invalid(why) => why.message(),
        }
    }
}

/// Why a standby cannot stream from the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum InvalidStandby {
    /// Its data comes from another cluster (system identifier).
    OtherSystem,
    LaterTimeline,
    /// It wrote past the point where the primary's timeline forked from its own.
    PastFork,
}

impl InvalidStandby {
    fn message(self) -> &'static str {
        match self {
            InvalidStandby::OtherSystem => "its system identifier differs from the master's",
            InvalidStandby::LaterTimeline => "it is on a later timeline than the master",
            InvalidStandby::PastFork => {
                "it went past the point where the master's timeline forked from its own"
            }
        }
    }
}

/// How many sleep intervals a standby's position may stay still before a missing WAL
/// segment on the primary is taken as the reason.
pub(super) const STUCK_STANDBY_SLEEP_INTERVALS: u32 = 10;

/// The WAL segment holding `lsn`, named as in `pg_wal` without its timeline part (16 MiB
/// segments).
fn wal_segment(lsn: Lsn) -> String {
    format!("{:08X}{:08X}", lsn.0 >> 32, (lsn.0 & 0xffff_ffff) >> 24)
}
