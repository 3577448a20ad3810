//! Maintenance mode (`stolonctl pause`): the operator restarts, upgrades or moves instances
//! by hand, and the sentinel changes nothing they did not ask for: no failover, no
//! switchover, no db spec change. What it still does is keep the proxies off a primary that
//! is gone: they route to the primary while it serves, and nowhere while it is failed.

use super::*;
use stolon_cluster::Pause;

impl Planner<'_> {
    pub(super) fn run_paused(&mut self, pause: &Pause) {
        let Some(master) = self.cd.master_db().cloned() else {
            self.emit(Event::new(EventKind::NoMasterDb));
            return;
        };
        if self.cd.cluster.status.switchover.is_some() {
            self.emit(Event::new(EventKind::SwitchoverHeldByPause).with("paused_by", &pause.by));
        }
        if !master.status.healthy {
            let mut held = Event::new(EventKind::FailoverHeldByPause)
                .with("db", &master.uid)
                .with("paused_by", &pause.by);
            if !pause.reason.is_empty() {
                held = held.with("reason", &pause.reason);
            }
            self.emit(held);
            if self.cd.proxy.spec.master_db_uid.is_some() {
                self.emit(
                    Event::new(EventKind::ProxiesRouteNowhereWhilePaused).with("db", &master.uid),
                );
                self.clear_proxy_target();
            }
            return;
        }
        // A failover decided before the pause waits: its candidate's keeper acts only
        // after the resume.
        if master.spec.role == DbRole::Master {
            let serving = Self::converged(&master) && !master.status.in_recovery;
            self.publish_to_proxies(&master, serving);
        }
    }
}
