//! Clients writing through the proxies, the commits they are acknowledged, and the WAL
//! streaming that acknowledges synchronous ones.

use crate::keeper::slot_db;
use crate::net::Node;
use crate::proxy::{Gate, Target};
use crate::world::World;
use stolon_engine::keeper::slot_name;

/// A commit the client was told succeeded.
#[derive(Debug, Clone)]
pub struct Ack {
    pub txid: u64,
    /// The primary waited for synchronous standbys before acknowledging it.
    pub synchronous: bool,
    pub keeper: usize,
}

/// A commit written on a primary that waits for its synchronous standbys.
#[derive(Debug, Clone)]
pub struct Pending {
    pub txid: u64,
    pub keeper: usize,
    pub proxy: usize,
    /// Its place in the primary's WAL.
    pub index: usize,
}

impl World {
    /// One client commit through a random proxy.
    pub(crate) fn client_write(&mut self) {
        let Some(&p) = self.rng.pick(&(0..self.proxies.len()).collect::<Vec<_>>()) else {
            return;
        };
        let proxy = &self.proxies[p];
        if !proxy.alive || self.net.frozen(Node::Proxy(p)) {
            return;
        }
        // A session already piped, or a new one through the gate.
        let reuse = !proxy.sessions.is_empty() && self.rng.chance(60);
        let (k, starts) = if reuse {
            let at = self.rng.range(0, self.proxies[p].sessions.len() as u64) as usize;
            self.proxies[p].sessions[at]
        } else {
            let Gate::Open(Target { keeper, .. }) = *self.proxies[p].gate() else {
                return;
            };
            let session = (keeper, self.keepers[keeper].pg.starts);
            self.proxies[p].sessions.push(session);
            session
        };
        let keeper = &self.keepers[k];
        if !self.net.linked(Node::Proxy(p), Node::Keeper(k))
            || !keeper.pg.writable()
            || keeper.pg.starts != starts
            || keeper.machine.sync_gate()
        {
            return;
        }
        let txid = self.next_txid;
        self.next_txid += 1;
        let pg = &mut self.keepers[k].pg;
        pg.wal.push(txid);
        if pg.config.synchronous.is_empty() {
            self.acked.push(Ack {
                txid,
                synchronous: false,
                keeper: k,
            });
        } else {
            let index = pg.wal.len() - 1;
            self.pending.push(Pending {
                txid,
                keeper: k,
                proxy: p,
                index,
            });
        }
    }

    /// A proxy's gate changed or its fence fired: its sessions end, their commits
    /// unacknowledged.
    pub(crate) fn drop_connections_of(&mut self, p: usize) {
        self.proxies[p].sessions.clear();
        self.pending.retain(|c| c.proxy != p);
    }

    /// Standbys stream from their upstream; then synchronous commits are acknowledged.
    pub(crate) fn replicate(&mut self) {
        for k in 0..self.keepers.len() {
            let pg = &self.keepers[k].pg;
            let Some(j) = pg.config.upstream.filter(|_| pg.in_recovery()) else {
                self.keepers[k].pg.streaming = false;
                continue;
            };
            let slot = self.keepers[k].local.uid.as_ref().map(slot_name);
            let upstream = &self.keepers[j].pg;
            let can = j != k
                && self.net.linked(Node::Keeper(k), Node::Keeper(j))
                && upstream.running
                && slot.is_some_and(|s| upstream.slots.contains(&s))
                && pg.can_follow(upstream);
            if can {
                let (standby, upstream) = if k < j {
                    let (low, high) = self.keepers.split_at_mut(j);
                    (&mut low[k].pg, &high[0].pg)
                } else {
                    let (low, high) = self.keepers.split_at_mut(k);
                    (&mut high[0].pg, &low[j].pg)
                };
                standby.receive_from(upstream);
            } else {
                self.keepers[k].pg.streaming = false;
            }
        }
        self.acknowledge_synchronous();
    }

    fn acknowledge_synchronous(&mut self) {
        let mut acked = Vec::new();
        let mut kept = Vec::new();
        for commit in std::mem::take(&mut self.pending) {
            let primary = &self.keepers[commit.keeper];
            let session_open = self.proxies[commit.proxy]
                .sessions
                .contains(&(commit.keeper, primary.pg.starts));
            if !primary.pg.writable() || !session_open {
                continue;
            }
            // Like PostgreSQL, waiting commits are judged by the configuration loaded now: a
            // reload that lists fewer standbys releases them sooner, one that lists none at
            // once (and then the primary did not wait for anyone).
            let waits_for = &primary.pg.config.synchronous;
            let confirmed = waits_for.iter().all(|name| {
                self.keepers.iter().any(|standby| {
                    standby.local.uid.as_ref() == Some(&slot_db(name))
                        && standby.pg.streaming
                        && standby.pg.config.upstream == Some(commit.keeper)
                        && standby.pg.wal.get(commit.index) == Some(&commit.txid)
                })
            });
            if confirmed {
                acked.push(Ack {
                    txid: commit.txid,
                    synchronous: !waits_for.is_empty(),
                    keeper: commit.keeper,
                });
            } else {
                kept.push(commit);
            }
        }
        self.pending = kept;
        self.acked.extend(acked);
    }
}
