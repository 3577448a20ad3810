//! The faults of the partition tests and of the chaos campaign, each undoable, and the
//! seeded schedules that combine them.
//!
//! A fault names a role ("the primary keeper", "the leading sentinel"), resolved to a host
//! when it is injected: the same seed replays the same schedule, and what it hits follows
//! the cluster's state at that moment.

use crate::net::{CutId, Direction, Host};
use crate::netcluster::NetCluster;
use nix::sys::signal::Signal;
use rand::{Rng, SeedableRng};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The primary's keeper host cut from every other host of the cluster (clients still
    /// reach it: the worst case, where a direct client may write to it).
    IsolatePrimary,
    /// The primary's keeper host cut from the etcd members only.
    PrimaryCutFromStore,
    /// What the primary's keeper host sends to the etcd members is dropped; it still
    /// receives.
    PrimaryStoreOutboundDropped,
    /// A keeper cut from the other keepers only (replication breaks, the store is fine).
    KeeperCutFromPeers(KeeperRole),
    /// The leading sentinel's host cut from every other host.
    IsolateSentinelLeader,
    /// A proxy's host cut from every other host of the cluster (clients still reach it).
    IsolateProxy(usize),
    /// SIGSTOP of a keeper with its postgres.
    FreezeKeeper(KeeperRole),
    /// SIGKILL of a keeper with its postgres; healing starts the keeper again.
    KillKeeper(KeeperRole),
    /// SIGSTOP of the leading sentinel.
    FreezeSentinelLeader,
    /// One etcd member killed; healing starts it again.
    EtcdMemberLost(usize),
    /// Every etcd member cut from the others: no quorum, every request fails.
    EtcdQuorumLost,
    /// The file system of a keeper's data directory full.
    KeeperDiskFull(KeeperRole),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeeperRole {
    Primary,
    /// The first keeper, in keeper order, that is not the primary.
    Standby,
}

/// A fault in place, with what undoes it.
pub struct Injected {
    pub description: String,
    undo: Undo,
}

enum Undo {
    Cuts(Vec<CutId>),
    Thaw(usize),
    Restart(usize),
    ThawSentinel(usize),
    RestartEtcd(usize),
    FreeDisk(usize),
}

impl Fault {
    pub async fn inject(self, cluster: &mut NetCluster) -> Injected {
        let (description, undo) = match self {
            Fault::IsolatePrimary => {
                let (k, label) = keeper(cluster, KeeperRole::Primary).await;
                let host = cluster.keepers[k].host.clone();
                let cut = isolate(cluster, &host);
                (
                    format!("isolate {} ({label})", host.name),
                    Undo::Cuts(vec![cut]),
                )
            }
            Fault::PrimaryCutFromStore => {
                let (k, label) = keeper(cluster, KeeperRole::Primary).await;
                let host = cluster.keepers[k].host.clone();
                let cut = cluster
                    .net
                    .cut(&host, &cluster.etcd_hosts(), Direction::Both);
                (
                    format!("cut {} ({label}) from the store", host.name),
                    Undo::Cuts(vec![cut]),
                )
            }
            Fault::PrimaryStoreOutboundDropped => {
                let (k, label) = keeper(cluster, KeeperRole::Primary).await;
                let host = cluster.keepers[k].host.clone();
                let cut = cluster
                    .net
                    .cut(&host, &cluster.etcd_hosts(), Direction::Outbound);
                (
                    format!("drop what {} ({label}) sends to the store", host.name),
                    Undo::Cuts(vec![cut]),
                )
            }
            Fault::KeeperCutFromPeers(role) => {
                let (k, label) = keeper(cluster, role).await;
                let host = cluster.keepers[k].host.clone();
                let peers: Vec<&Host> = cluster.keepers.iter().map(|k| &k.host).collect();
                let cut = cluster.net.cut(&host, &peers, Direction::Both);
                (
                    format!("cut {} ({label}) from the other keepers", host.name),
                    Undo::Cuts(vec![cut]),
                )
            }
            Fault::IsolateSentinelLeader => {
                let (s, role) = sentinel_leader(cluster).await;
                let host = cluster.sentinels[s].host.clone();
                let cut = isolate(cluster, &host);
                (
                    format!("isolate {} ({role})", host.name),
                    Undo::Cuts(vec![cut]),
                )
            }
            Fault::IsolateProxy(i) => {
                let host = cluster.proxies[i].host.clone();
                let cut = isolate(cluster, &host);
                (format!("isolate {}", host.name), Undo::Cuts(vec![cut]))
            }
            Fault::FreezeKeeper(role) => {
                let (k, label) = keeper(cluster, role).await;
                cluster.freeze_keeper(k, true);
                (
                    format!("freeze {} ({label})", cluster.keepers[k].uid),
                    Undo::Thaw(k),
                )
            }
            Fault::KillKeeper(role) => {
                let (k, label) = keeper(cluster, role).await;
                cluster.kill_keeper(k);
                (
                    format!("kill {} ({label})", cluster.keepers[k].uid),
                    Undo::Restart(k),
                )
            }
            Fault::FreezeSentinelLeader => {
                let (s, role) = sentinel_leader(cluster).await;
                signal(&cluster.sentinels[s].process, Signal::SIGSTOP);
                (
                    format!("freeze {} ({role})", cluster.sentinels[s].host.name),
                    Undo::ThawSentinel(s),
                )
            }
            Fault::EtcdMemberLost(i) => {
                if let Some(mut p) = cluster.etcd[i].process.take() {
                    p.kill();
                }
                (format!("kill etcd{i}"), Undo::RestartEtcd(i))
            }
            Fault::EtcdQuorumLost => {
                let members: Vec<Host> = cluster.etcd_hosts().into_iter().cloned().collect();
                let peers: Vec<&Host> = members.iter().collect();
                let cuts = members
                    .iter()
                    .map(|m| cluster.net.cut(m, &peers, Direction::Both))
                    .collect();
                (
                    "cut every etcd member from the others".to_string(),
                    Undo::Cuts(cuts),
                )
            }
            Fault::KeeperDiskFull(role) => {
                let (k, label) = keeper(cluster, role).await;
                cluster.fill_keeper_disk(k, true);
                (
                    format!("fill the disk of {} ({label})", cluster.keepers[k].uid),
                    Undo::FreeDisk(k),
                )
            }
        };
        Injected { description, undo }
    }
}

impl Injected {
    pub fn heal(self, cluster: &mut NetCluster) {
        match self.undo {
            Undo::Cuts(cuts) => cuts.into_iter().for_each(|c| cluster.net.heal(c)),
            Undo::Thaw(k) => cluster.freeze_keeper(k, false),
            // Two kills may overlap: the first heal starts the keeper, the second finds it
            // running.
            Undo::Restart(k) if cluster.keepers[k].process.is_none() => cluster.start_keeper(k),
            Undo::Restart(_) => {}
            Undo::ThawSentinel(s) => signal(&cluster.sentinels[s].process, Signal::SIGCONT),
            Undo::RestartEtcd(i) if cluster.etcd[i].process.is_none() => cluster.start_etcd(i),
            Undo::RestartEtcd(_) => {}
            Undo::FreeDisk(k) => cluster.fill_keeper_disk(k, false),
        }
    }
}

fn signal(process: &Option<crate::Process>, signal: Signal) {
    if let Some(p) = process {
        p.signal(signal);
    }
}

/// The leading sentinel; with none known (the store is out of reach, say) the first one
/// stands for it.
async fn sentinel_leader(cluster: &NetCluster) -> (usize, &'static str) {
    match cluster.leading_sentinel().await {
        Some(s) => (s, "leader"),
        None => (0, "no leader known"),
    }
}

/// `host` cut from every other host but the client.
fn isolate(cluster: &NetCluster, host: &Host) -> CutId {
    let others: Vec<&Host> = cluster
        .net
        .hosts()
        .iter()
        .filter(|h| h.name != "client")
        .collect();
    cluster.net.cut(host, &others, Direction::Both)
}

/// The keeper that has `role` now, and what the run's log calls it. With no primary known
/// (the store is out of reach, say), the first keeper stands for either role.
async fn keeper(cluster: &NetCluster, role: KeeperRole) -> (usize, &'static str) {
    let Some(primary) = cluster.master_keeper().await else {
        return (0, "role unknown");
    };
    match role {
        KeeperRole::Primary => (primary, "primary"),
        KeeperRole::Standby => (
            (0..cluster.keepers.len())
                .find(|&k| k != primary)
                .unwrap_or(primary),
            "standby",
        ),
    }
}

/// One fault of a schedule: injected `at` after the run starts, healed `hold` later.
#[derive(Debug, Clone, Copy)]
pub struct Planned {
    pub at: Duration,
    pub hold: Duration,
    pub fault: Fault,
}

/// The schedule `seed` draws for a run of `length`: faults one after another, each held
/// 3 to 20 s, sometimes overlapping the previous one, with quiet gaps of up to 10 s.
pub fn schedule(seed: u64, length: Duration, proxies: usize) -> Vec<Planned> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut plan = Vec::new();
    let mut at = Duration::from_secs(rng.random_range(2..6));
    while at < length {
        let hold = Duration::from_millis(rng.random_range(3_000..20_000));
        let fault = match rng.random_range(0..15) {
            0 | 1 => Fault::IsolatePrimary,
            2 => Fault::PrimaryCutFromStore,
            3 => Fault::PrimaryStoreOutboundDropped,
            4 => Fault::KeeperCutFromPeers(role(&mut rng)),
            5 => Fault::IsolateSentinelLeader,
            6 => Fault::IsolateProxy(rng.random_range(0..proxies.max(1))),
            7 => Fault::FreezeKeeper(role(&mut rng)),
            8 | 9 => Fault::KillKeeper(role(&mut rng)),
            10 => Fault::FreezeSentinelLeader,
            11 => Fault::EtcdMemberLost(rng.random_range(0..3)),
            12 => Fault::EtcdQuorumLost,
            13 => Fault::KeeperDiskFull(role(&mut rng)),
            _ => Fault::IsolatePrimary,
        };
        plan.push(Planned { at, hold, fault });
        // A third of the faults start while the previous one still holds.
        at += if rng.random_range(0..3) == 0 {
            Duration::from_millis(rng.random_range(500..hold.as_millis() as u64))
        } else {
            hold + Duration::from_millis(rng.random_range(1_000..10_000))
        };
    }
    plan
}

fn role(rng: &mut impl Rng) -> KeeperRole {
    if rng.random_range(0..2) == 0 {
        KeeperRole::Primary
    } else {
        KeeperRole::Standby
    }
}

/// Plays `plan` on `cluster` from now: injects and heals each fault on time, heals what
/// still holds at the end, and returns what it did, in order, with the second it did it.
pub async fn play(cluster: &mut NetCluster, plan: &[Planned]) -> Vec<String> {
    enum Step {
        Inject(usize),
        Heal(usize),
    }
    let mut steps: Vec<(Duration, Step)> = Vec::new();
    for (i, p) in plan.iter().enumerate() {
        steps.push((p.at, Step::Inject(i)));
        steps.push((p.at + p.hold, Step::Heal(i)));
    }
    steps.sort_by_key(|(at, step)| (*at, matches!(step, Step::Inject(_))));
    let start = Instant::now();
    let mut active: Vec<Option<Injected>> = plan.iter().map(|_| None).collect();
    let mut done = Vec::new();
    for (at, step) in steps {
        tokio::time::sleep_until(start + at).await;
        let second = start.elapsed().as_secs_f64();
        match step {
            Step::Inject(i) => {
                let injected = plan[i].fault.inject(cluster).await;
                eprintln!("chaos: {second:6.1}s {}", injected.description);
                done.push(format!("{second:.1}s {}", injected.description));
                active[i] = Some(injected);
            }
            Step::Heal(i) => {
                if let Some(injected) = active[i].take() {
                    eprintln!("chaos: {second:6.1}s heal: {}", injected.description);
                    done.push(format!("{second:.1}s heal: {}", injected.description));
                    injected.heal(cluster);
                }
            }
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_the_same_schedule() {
        let a = schedule(7, Duration::from_secs(120), 2);
        let b = schedule(7, Duration::from_secs(120), 2);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert!(a.len() > 2);
        assert_ne!(
            format!("{a:?}"),
            format!("{:?}", schedule(8, Duration::from_secs(120), 2))
        );
    }

    #[test]
    fn every_fault_is_healed_within_the_run_and_some_overlap() {
        let mut overlapping = 0;
        for seed in 0..200 {
            let plan = schedule(seed, Duration::from_secs(60), 2);
            for pair in plan.windows(2) {
                assert!(pair[1].at > pair[0].at);
                if pair[1].at < pair[0].at + pair[0].hold {
                    overlapping += 1;
                }
            }
            assert!(plan.iter().all(|p| p.hold <= Duration::from_secs(20)));
        }
        assert!(overlapping > 0);
    }
}
