//! The third kind of master db: a standby cluster's **standby leader**, a standby of the
//! remote primary (or of its archive only) that the cluster's own standbys follow. It is
//! elected, fenced and published to the proxies like a primary, but "promoting" a candidate
//! means pointing it at the remote; it becomes a primary only when the spec's role becomes
//! master (`stolonctl promote`).

use super::*;

impl Planner<'_> {
    /// What the master db follows: nothing for a primary, the remote of the spec for a
    /// standby leader.
    pub(super) fn leader_follow(&self) -> Option<FollowConfig> {
        self.spec
            .standby_config
            .clone()
            .map(|remote| FollowConfig::Remote { remote })
    }

    /// Gives `uid` the master db's role: primary, or in a standby cluster standby leader.
    pub(super) fn make_leader(&mut self, uid: &DbUid) {
        let follow = self.leader_follow();
        let db = self.cd.dbs.get_mut(uid).expect("the leader's db exists");
        db.spec.role = if follow.is_some() {
            DbRole::Standby
        } else {
            DbRole::Master
        };
        db.spec.follow_config = follow;
    }

    /// A standby leader in place: it serves once converged and in recovery, and its
    /// standbys are managed as a primary's are. When the spec's role has become master, it
    /// is promoted; the proxies keep routing to it, and it accepts writes once its keeper
    /// has promoted it (a standby cluster has no other primary that could take them).
    pub(super) fn run_standby_leader(&mut self, leader: &Db) {
        if !self.spec.is_standby_cluster() {
            self.emit(Event::new(EventKind::PromotingStandbyLeader).with("db", &leader.uid));
            self.make_leader(&leader.uid);
            self.cd.cluster.status.master_choice = format!(
                "standby leader db {} (keeper {}) promoted: the cluster's role became master",
                leader.uid, leader.spec.keeper_uid
            );
            return;
        }
        let serving = Self::converged(leader) && leader.status.in_recovery;
        self.publish_to_proxies(leader, serving);
        if serving {
            self.cd.cluster.status.deposed_master = None;
            self.manage_standbys(leader);
        }
    }

    /// The remote settings of the spec reach the standby leader (`stolonctl update`
    /// re-points it).
    pub(super) fn copy_remote_settings(&mut self) {
        let follow = self.leader_follow();
        if follow.is_none() {
            return;
        }
        for db in self.cd.dbs.values_mut() {
            if db.spec.follows_remote() {
                db.spec.follow_config = follow.clone();
            }
        }
    }
}
