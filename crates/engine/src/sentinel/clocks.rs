//! The planner's clocks: convergence timeouts, and when the sentinel must look again
//! although nothing changed.

use super::standbys::STUCK_STANDBY_SLEEP_INTERVALS;
use super::*;
use crate::proxy::fence::info_ttl;

impl Planner<'_> {
    pub(super) fn converged(db: &Db) -> bool {
        db.status.current_generation == db.generation
    }

    pub(super) fn convergence_expired(&self, db: &Db, timeout: Duration) -> bool {
        !Self::converged(db)
            && self
                .memory
                .convergence
                .get(&db.uid)
                .is_some_and(|(generation, since)| {
                    *generation == db.generation && self.now.saturating_sub(*since) > timeout
                })
    }

    pub(super) fn stalled_dbs(&self) -> BTreeSet<DbUid> {
        self.cd
            .dbs
            .values()
            .filter(|db| self.convergence_expired(db, self.spec.convergence_timeout))
            .map(|db| db.uid.clone())
            .collect()
    }

    /// The earliest instant after now at which a remembered clock runs out.
    pub(super) fn next_deadline(&self) -> Option<Duration> {
        let spec = self.spec;
        let m = &self.memory;
        let keepers = m.keepers.values().flat_map(|hb| {
            [
                hb.changed_at + spec.fail_interval,
                hb.changed_at + 2 * spec.keeper_heartbeat(),
            ]
        });
        // A silent proxy stops counting once its info has also left the store: the store
        // drops it within its time to live of the change this sentinel saw.
        let proxies = m.proxies.values().flat_map(|seen| {
            [
                seen.changed_at + seen.fence_wait(),
                seen.changed_at + info_ttl(seen.info.proxy_timeout),
            ]
        });
        let unseen_proxies = self.unseen_proxies_fenced_at();
        let errors = m
            .db_errors
            .values()
            .map(|since| *since + spec.fail_interval);
        let down = m
            .db_down
            .values()
            .map(|since| *since + spec.db_restart_timeout);
        let removal = m
            .keepers
            .values()
            .map(|hb| hb.changed_at + spec.dead_keeper_removal_interval);
        let stuck = m
            .wal_progress
            .values()
            .map(|(_, since)| *since + STUCK_STANDBY_SLEEP_INTERVALS * spec.sleep_interval);
        let convergence = m.convergence.values().flat_map(|(_, since)| {
            [spec.convergence_timeout, spec.init_timeout]
                .into_iter()
                .chain(spec.sync_timeout)
                .map(move |t| *since + t)
        });
        let switchover = self.memory.switchover.iter().flat_map(|clock| {
            let so = self.cd.cluster.status.switchover.as_ref();
            let timeout = so.map_or(Duration::ZERO, |so| so.timeout.0);
            let grace = so.map_or(Duration::ZERO, |so| so.grace.0);
            [
                Some(clock.started + timeout),
                clock.held_since.map(|h| h + grace),
            ]
            .into_iter()
            .flatten()
        });
        // Judgments compare with `>`: wake just after the limit.
        keepers
            .chain(proxies)
            .chain(unseen_proxies)
            .chain(errors)
            .chain(down)
            .chain(removal)
            .chain(stuck)
            .chain(convergence)
            .chain(switchover)
            .map(|t| t + Duration::from_millis(1))
            .filter(|t| *t > self.now)
            .min()
    }

    pub(super) fn track_convergence(&mut self) {
        let now = self.now;
        self.memory
            .convergence
            .retain(|uid, _| self.cd.dbs.contains_key(uid));
        // Paused keepers apply nothing: the pause stops every convergence clock, and the
        // resume starts them again from zero.
        let paused = self.cd.cluster.status.pause.is_some();
        for db in self.cd.dbs.values() {
            let entry = self.memory.convergence.get(&db.uid);
            if paused || entry.is_none_or(|(generation, _)| *generation != db.generation) {
                self.memory
                    .convergence
                    .insert(db.uid.clone(), (db.generation, now));
            }
        }
    }
}
