//! The safety invariants, checked after every event, and convergence at the end of a run:
//! - at most one instance takes writes through the proxies, and no other answers
//!   `/primary` yes;
//! - no commit acknowledged in synchronous mode is missing from a new primary;
//! - a proxy routes only to the db the cluster data names, or named within its timeout;
//! - generations only grow, and at most one db has the master role;
//! - once the faults stop, the cluster converges: one primary that every proxy routes to,
//!   every other keeper's instance streaming from it, every db at its generation.

use crate::net::Node;
use crate::proxy::{Gate, Target};
use crate::world::World;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use stolon_cluster::{ClusterData, DbRole, DbUid, Generation};
use stolon_engine::health::{answer, Check, Facts};

#[derive(Debug, Clone, Default)]
pub struct Watch {
    /// Per db, until when the proxies were last told to route to it (absent while they
    /// are now).
    named_until: BTreeMap<DbUid, Duration>,
}

impl World {
    pub(crate) fn check_invariants(&mut self) {
        let mut writable: BTreeSet<usize> = BTreeSet::new();
        let named = self
            .store
            .cluster_data()
            .and_then(|cd| cd.proxy.spec.master_db_uid.clone());
        let timeout = self
            .store
            .spec()
            .map_or(Duration::from_secs(15), |spec| spec.proxy_timeout);
        for p in 0..self.proxies.len() {
            let proxy = &self.proxies[p];
            if !proxy.alive {
                continue;
            }
            // Sessions piped earlier reach their instance whatever the gate is now.
            for &(keeper, starts) in &proxy.sessions {
                if self.pipes_to_writable(p, keeper) && self.keepers[keeper].pg.starts == starts {
                    writable.insert(keeper);
                }
            }
            let &Gate::Open(Target { keeper, ref db }) = proxy.gate() else {
                continue;
            };
            if named.as_ref() != Some(db) {
                let stale = self
                    .watch
                    .named_until
                    .get(db)
                    .map(|until| self.now.saturating_sub(*until));
                if stale.is_none_or(|stale| stale > timeout) {
                    let what = format!(
                        "proxy{p} routes to db {db}, which the cluster data stopped naming {stale:?} ago (proxyTimeout {timeout:?})"
                    );
                    self.violate(what);
                    return;
                }
            }
            if self.pipes_to_writable(p, keeper) {
                writable.insert(keeper);
            }
        }
        if writable.len() > 1 {
            self.violate(format!(
                "two writable primaries reachable through the proxies: keepers {writable:?}"
            ));
            return;
        }
        // A load balancer that trusts `/primary` is one more way in: it must agree with the
        // proxies.
        let primary = self.keepers_answering_primary();
        if writable.union(&primary).count() > 1 {
            self.violate(format!(
                "writable primaries reachable through the proxies (keepers {writable:?}) and through keepers answering /primary yes (keepers {primary:?})"
            ));
        }
    }

    /// Whether what proxy `p` pipes to keeper `keeper`'s instance arrives there now, and
    /// that instance takes writes.
    fn pipes_to_writable(&self, p: usize, keeper: usize) -> bool {
        !self.net.frozen(Node::Proxy(p))
            && self.net.linked(Node::Proxy(p), Node::Keeper(keeper))
            && self.keepers[keeper].pg.writable()
    }

    /// The keepers whose `/primary` says yes now: the keeper's real answer, from what it
    /// would read for the check (its postgres, the store if it reaches it, its fence).
    fn keepers_answering_primary(&self) -> BTreeSet<usize> {
        let view = self.store.cluster_data().zip(self.store.spec());
        (0..self.keepers.len())
            .filter(|&k| {
                let keeper = &self.keepers[k];
                let node = Node::Keeper(k);
                if !keeper.alive || self.net.frozen(node) {
                    return false;
                }
                let facts = Facts {
                    in_recovery: keeper.pg.running.then(|| keeper.pg.in_recovery()),
                    view: view.filter(|_| self.net.reaches_store(node)),
                    keeper: &keeper.uid,
                    sync_gate: keeper.machine.sync_gate(),
                    fenced: keeper.machine.fence_holds(self.clock(node)),
                };
                answer(Check::Primary, &facts).ok
            })
            .collect()
    }

    /// A compare-and-swap of the cluster data succeeded.
    pub(crate) fn cluster_data_written(
        &mut self,
        before: Option<&ClusterData>,
        after: &ClusterData,
    ) {
        let masters: Vec<&DbUid> = after
            .dbs
            .values()
            .filter(|db| db.spec.role == DbRole::Master)
            .map(|db| &db.uid)
            .collect();
        if masters.len() > 1 {
            self.violate(format!("several dbs have the master role: {masters:?}"));
        }
        let Some(before) = before else { return };
        if after.proxy.generation < before.proxy.generation {
            self.violate(format!(
                "the proxy generation went back from {} to {}",
                before.proxy.generation, after.proxy.generation
            ));
        }
        for db in after.dbs.values() {
            let earlier = before
                .dbs
                .get(&db.uid)
                .map_or(Generation::NONE, |d| d.generation);
            if db.generation < earlier {
                self.violate(format!(
                    "db {} generation went back from {earlier} to {}",
                    db.uid, db.generation
                ));
            }
        }
        let (was, now) = (
            before.proxy.spec.master_db_uid.as_ref(),
            after.proxy.spec.master_db_uid.as_ref(),
        );
        if was != now {
            if let Some(was) = was {
                self.watch.named_until.insert(was.clone(), self.now);
            }
            if let Some(now) = now {
                self.watch.named_until.remove(now);
            }
            self.log(format!("proxies told to route to {now:?} (was {was:?})"));
        }
        if before.cluster.status.master != after.cluster.status.master {
            self.log(format!(
                "master db: {:?} -> {:?}",
                before.cluster.status.master, after.cluster.status.master
            ));
        }
    }

    /// A standby was just promoted: in synchronous mode it must hold every commit any
    /// primary acknowledged after waiting for its standbys.
    pub(crate) fn check_promoted_has_synchronous_commits(&mut self, k: usize) {
        let wal: BTreeSet<u64> = self.keepers[k].pg.wal.iter().copied().collect();
        let missing: Vec<String> = self
            .acked
            .iter()
            .filter(|a| a.synchronous && !wal.contains(&a.txid))
            .map(|a| format!("{} (acknowledged by keeper{})", a.txid, a.keeper))
            .take(5)
            .collect();
        if !missing.is_empty() {
            self.violate(format!(
                "keeper{k} was promoted without synchronously acknowledged commits {missing:?}"
            ));
        }
    }

    /// The end of a run: everything healed a while ago, the cluster must have converged.
    pub(crate) fn check_converged(&mut self) {
        if let Err(why) = self.converged() {
            self.violate(format!("not converged after the faults: {why}"));
        }
    }

    fn converged(&self) -> Result<(), String> {
        let cd = self.store.cluster_data().ok_or("no cluster data")?;
        let master = cd.master_db().ok_or("no master db")?;
        if master.spec.role != DbRole::Master {
            return Err(format!("master db {} is not a primary yet", master.uid));
        }
        let primary = self
            .keepers
            .iter()
            .position(|k| k.uid == master.spec.keeper_uid)
            .ok_or("the master db's keeper is unknown")?;
        if !self.keepers[primary].pg.writable() {
            return Err(format!("keeper{primary}'s instance does not take writes"));
        }
        for (p, proxy) in self.proxies.iter().enumerate() {
            match proxy.gate() {
                Gate::Open(target) if target.db == master.uid => {}
                gate => return Err(format!("proxy{p} is {gate:?}, not open to {}", master.uid)),
            }
        }
        for db in cd.dbs.values() {
            if db.status.current_generation != db.generation || !db.status.healthy {
                return Err(format!(
                    "db {} not converged (generation {} of {}, healthy {})",
                    db.uid, db.status.current_generation, db.generation, db.status.healthy
                ));
            }
        }
        for (k, keeper) in self.keepers.iter().enumerate() {
            if k == primary {
                continue;
            }
            let pg = &keeper.pg;
            let follows = pg.in_recovery()
                && pg.streaming
                && pg.config.upstream == Some(primary)
                && keeper.db(cd).is_some();
            if !follows {
                return Err(format!(
                    "keeper{k} does not stream from the primary keeper{primary}"
                ));
            }
        }
        Ok(())
    }
}
