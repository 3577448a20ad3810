//! The checker of the partition tests: clients that write unique ids through every proxy
//! and straight to every keeper's postgres (what a misconfigured client does), recording
//! each acknowledged commit with the server that acknowledged it; after the faults heal,
//! it reads the final primary back and reports what was lost, what two primaries
//! acknowledged at once, and how long no proxy acknowledged anything.
//!
//! A commit counts as acknowledged when its `COMMIT` returned success. A write whose
//! outcome the client never learnt (the connection broke, or it hung past
//! [`WRITE_TIMEOUT`]) is neither acknowledged nor lost.

use crate::netcluster::NetCluster;
use crate::{connect_to, is_connection_loss, wait_until};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// How long a client waits for one write before it gives up on the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Between two writes of one client.
const WRITE_PAUSE: Duration = Duration::from_millis(20);
/// How long the cluster has to settle once every fault is healed.
pub const CONVERGE_LIMIT: Duration = Duration::from_secs(60);
const TABLE: &str = "chaos_writes";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterKind {
    /// Through a proxy: what the cluster promises to keep safe.
    Proxy,
    /// Straight to a keeper's postgres.
    Direct,
}

/// One acknowledged commit.
#[derive(Debug, Clone)]
pub struct AckedCommit {
    pub writer: String,
    pub kind: WriterKind,
    pub id: i64,
    /// The postgres that acknowledged it (address:port, as that server saw itself).
    pub server: String,
    pub system_id: i64,
    pub timeline: u32,
    /// Where that timeline began on that server (from its history file), when it could be
    /// read. Two servers promoted from the same timeline both name the next one alike:
    /// the beginning tells the branches apart.
    pub timeline_begin: Option<u64>,
    /// Where the server's WAL insert position was right after the row.
    pub lsn: u64,
    pub sent: Instant,
    pub acked: Instant,
}

pub struct Checker {
    acks: Arc<Mutex<Vec<AckedCommit>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl Checker {
    /// Creates the table through the first proxy, then starts one client per proxy and one
    /// per keeper.
    pub async fn start(cluster: &NetCluster) -> Checker {
        let proxy = cluster.proxies[0].address();
        wait_until("creating the checker's table", Duration::from_secs(60), || async {
            let client = connect_to(proxy).await.ok()?;
            client
                .batch_execute(&format!(
                    "create table if not exists {TABLE} (id bigint primary key, writer text not null)"
                ))
                .await
                .ok()
        })
        .await;
        let mut targets: Vec<(String, WriterKind, SocketAddr)> = cluster
            .proxies
            .iter()
            .map(|p| (p.host.name.clone(), WriterKind::Proxy, p.address()))
            .collect();
        targets.extend(cluster.keepers.iter().map(|k| {
            (
                format!("direct-{}", k.uid),
                WriterKind::Direct,
                k.pg_address(),
            )
        }));
        let acks: Arc<Mutex<Vec<AckedCommit>>> = Default::default();
        let tasks = targets
            .into_iter()
            .enumerate()
            .map(|(n, (name, kind, address))| {
                tokio::spawn(write_forever(n as i64, name, kind, address, acks.clone()))
            })
            .collect();
        Checker {
            acks,
            tasks,
            started: Instant::now(),
        }
    }

    pub fn acked(&self) -> usize {
        self.acks.lock().unwrap().len()
    }

    /// Once every fault is healed: waits for the cluster to settle (at most
    /// [`CONVERGE_LIMIT`]), lets the clients write a little longer, stops them, reads the
    /// final primary and reports. `max_standby_lag` is the spec's, in bytes.
    pub async fn finish(self, cluster: &NetCluster, max_standby_lag: u64) -> CheckerReport {
        let healed = Instant::now();
        let mut converged = None;
        while healed.elapsed() < CONVERGE_LIMIT {
            if cluster.settled().await {
                converged = Some(healed.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Writes after the heal belong to the run: a cluster that settled but serves no
        // writes would show as unavailability.
        tokio::time::sleep(Duration::from_secs(2)).await;
        for task in &self.tasks {
            task.abort();
        }
        let stopped = Instant::now();
        let acks = self.acks.lock().unwrap().clone();
        let last = final_state(cluster).await;
        let mut report = CheckerReport {
            acked: acks.len(),
            acked_proxy: acks.iter().filter(|a| a.kind == WriterKind::Proxy).count(),
            converged,
            read_back: last.is_some(),
            max_unavailable: longest_gap(&acks, self.started, stopped),
            ..Default::default()
        };
        let split = split_brain(&acks);
        report.split_brain_proxy = split.iter().filter(|a| a.kind == WriterKind::Proxy).count();
        report.split_brain = split;
        if let Some(last) = last {
            report.lost = acks
                .iter()
                .filter(|a| !last.ids.contains(&a.id))
                .cloned()
                .collect();
            let left = |a: &AckedCommit| last.lineage.left(a.timeline, a.timeline_begin);
            report.rewound = report
                .lost
                .iter()
                .filter(|a| left(a).is_some_and(|switch| a.lsn > switch))
                .count();
            report.lost_beyond_lag = report
                .lost
                .iter()
                .filter(|a| left(a).is_none_or(|switch| a.lsn > switch + max_standby_lag))
                .count();
        }
        report
    }
}

/// One client: connects, writes one row per transaction, reconnects after a lost
/// connection, and records every acknowledged commit.
async fn write_forever(
    n: i64,
    name: String,
    kind: WriterKind,
    address: SocketAddr,
    acks: Arc<Mutex<Vec<AckedCommit>>>,
) {
    let mut seq: i64 = 0;
    loop {
        // The timeline this session last wrote on, and where it began.
        let mut branch: Option<(u32, Option<u64>)> = None;
        let mut client = match tokio::time::timeout(WRITE_TIMEOUT, connect_to(address)).await {
            Ok(Ok(client)) => client,
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        loop {
            seq += 1;
            let id = (n << 40) | seq;
            let sent = Instant::now();
            match tokio::time::timeout(WRITE_TIMEOUT, write_one(&mut client, id, &name)).await {
                Ok(Ok(at)) => {
                    let acked = Instant::now();
                    let timeline_begin = match branch {
                        Some((timeline, begin)) if timeline == at.timeline => begin,
                        _ => {
                            let begin = timeline_begin(&client, at.timeline).await;
                            branch = Some((at.timeline, begin));
                            begin
                        }
                    };
                    acks.lock().unwrap().push(AckedCommit {
                        writer: name.clone(),
                        kind,
                        id,
                        server: at.server,
                        system_id: at.system_id,
                        timeline: at.timeline,
                        timeline_begin,
                        lsn: at.lsn,
                        sent,
                        acked,
                    })
                }
                // A standby refuses the write: try again on the same session.
                Ok(Err(e)) if !is_connection_loss(&e) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                _ => break,
            }
            tokio::time::sleep(WRITE_PAUSE).await;
        }
    }
}

struct WrittenAt {
    server: String,
    system_id: i64,
    timeline: u32,
    lsn: u64,
}

async fn write_one(
    client: &mut tokio_postgres::Client,
    id: i64,
    writer: &str,
) -> Result<WrittenAt, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let row = tx
        .query_one(
            &format!(
                "insert into {TABLE} (id, writer) values ($1, $2) returning \
                 host(inet_server_addr()) || ':' || inet_server_port(), \
                 (select system_identifier from pg_control_system()), \
                 pg_walfile_name(pg_current_wal_insert_lsn()), \
                 pg_current_wal_insert_lsn()::text"
            ),
            &[&id, &writer],
        )
        .await?;
    tx.commit().await?;
    let walfile: String = row.get(2);
    Ok(WrittenAt {
        server: row.get(0),
        system_id: row.get(1),
        timeline: u32::from_str_radix(&walfile[..8], 16).unwrap_or(0),
        lsn: parse_lsn(&row.get::<_, String>(3)),
    })
}

/// Where `timeline` began on the server of `client`: the last switch point of its history
/// file (the first timeline begins at 0).
async fn timeline_begin(client: &tokio_postgres::Client, timeline: u32) -> Option<u64> {
    if timeline <= 1 {
        return Some(0);
    }
    let history: Option<String> = tokio::time::timeout(
        WRITE_TIMEOUT,
        client.query_one(
            &format!("select pg_read_file('pg_wal/{timeline:08X}.history', 0, 1000000, true)"),
            &[],
        ),
    )
    .await
    .ok()?
    .ok()?
    .get(0);
    // Timelines grow along a history: its parent, where this one began, is its last line.
    parse_history(&history?).values().next_back().copied()
}

fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

fn parse_lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap_or(("0", "0"));
    (u64::from_str_radix(hi, 16).unwrap_or(0) << 32) | u64::from_str_radix(lo, 16).unwrap_or(0)
}

/// What the final primary holds.
struct FinalState {
    ids: BTreeSet<i64>,
    lineage: Lineage,
}

/// The timelines the final primary descends from, with where each began and ended.
#[derive(Debug)]
struct Lineage {
    /// For each timeline its history left behind, the position where it ended.
    ended: BTreeMap<u32, u64>,
    /// The final primary's own timeline.
    current: u32,
}

impl Lineage {
    fn began(&self, timeline: u32) -> u64 {
        self.ended
            .range(..timeline)
            .next_back()
            .map_or(0, |(_, &at)| at)
    }

    /// Where the final history left the branch a commit was written on (timeline
    /// `timeline`, begun at `begin`): what a failover kept of it ends there. `None` when
    /// it never left it: the branch is the final primary's own.
    fn left(&self, timeline: u32, begin: Option<u64>) -> Option<u64> {
        if timeline == self.current || self.ended.contains_key(&timeline) {
            let began = self.began(timeline);
            match begin {
                Some(begin) if begin != began => {
                    // Another server promoted from the same parent and named its timeline
                    // alike: the two part where the first of them began.
                    Some(begin.min(began))
                }
                _ => self.ended.get(&timeline).copied(),
            }
        } else {
            // A branch the history never took: it parted from it where it began.
            begin
        }
    }
}

async fn final_state(cluster: &NetCluster) -> Option<FinalState> {
    let read = || async {
        let master = cluster.master_keeper().await?;
        let client = connect_to(cluster.keepers[master].pg_address())
            .await
            .ok()?;
        if client
            .query_one("select pg_is_in_recovery()", &[])
            .await
            .ok()?
            .get::<_, bool>(0)
        {
            return None;
        }
        let ids = client
            .query(&format!("select id from {TABLE}"), &[])
            .await
            .ok()?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let row = client
            .query_one(
                "select substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8), \
                 pg_read_file('pg_wal/' || substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8) || '.history', 0, 1000000, true)",
                &[],
            )
            .await
            .ok()?;
        let history: Option<String> = row.get(1);
        Some(FinalState {
            ids,
            lineage: Lineage {
                ended: parse_history(history.as_deref().unwrap_or("")),
                current: u32::from_str_radix(row.get(0), 16).ok()?,
            },
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(state) = read().await {
            return Some(state);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A timeline history file: `parent_tli <tab> switchpoint <tab> reason` per line.
fn parse_history(text: &str) -> BTreeMap<u32, u64> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let tli = fields.next()?.parse().ok()?;
            Some((tli, parse_lsn(fields.next()?)))
        })
        .collect()
}

/// The acknowledgements of a server that was no longer the primary: another server had
/// already acknowledged a commit on a newer branch before this one was even sent. A
/// newer branch is on a later timeline, or on the same one (two servers promoted from the
/// same parent) with a later first acknowledgement.
fn split_brain(acks: &[AckedCommit]) -> Vec<AckedCommit> {
    // The first acknowledgement on each (timeline, server).
    let mut first: BTreeMap<(u32, &str), Instant> = BTreeMap::new();
    for a in acks {
        let at = first.entry((a.timeline, &a.server)).or_insert(a.acked);
        *at = (*at).min(a.acked);
    }
    acks.iter()
        .filter(|a| {
            let began = first[&(a.timeline, a.server.as_str())];
            first.iter().any(|(&(timeline, server), &at)| {
                let newer = timeline > a.timeline || (timeline == a.timeline && at > began);
                newer && server != a.server && at < a.sent
            })
        })
        .cloned()
        .collect()
}

/// The longest time between `start` and `end` during which no proxy acknowledged a write.
fn longest_gap(acks: &[AckedCommit], start: Instant, end: Instant) -> Duration {
    let mut times: Vec<Instant> = acks
        .iter()
        .filter(|a| a.kind == WriterKind::Proxy)
        .map(|a| a.acked)
        .collect();
    times.sort();
    let mut previous = start;
    let mut longest = Duration::ZERO;
    for t in times.into_iter().chain([end]) {
        longest = longest.max(t.saturating_duration_since(previous));
        previous = t;
    }
    longest
}

#[derive(Debug, Default)]
pub struct CheckerReport {
    pub acked: usize,
    pub acked_proxy: usize,
    /// Acknowledged commits the final primary does not hold.
    pub lost: Vec<AckedCommit>,
    /// Of those, the ones written past the point where the final history left their
    /// branch (a timeline on one server): acknowledged by a primary whose later commits
    /// were rewound away.
    pub rewound: usize,
    /// Of those, the ones not explained by an asynchronous failover: on the final
    /// primary's own branch, or further than maxStandbyLag past where the history left
    /// theirs.
    pub lost_beyond_lag: usize,
    /// Commits acknowledged by a server that was not the primary any more.
    pub split_brain: Vec<AckedCommit>,
    pub split_brain_proxy: usize,
    /// The longest time no proxy acknowledged a write.
    pub max_unavailable: Duration,
    /// How long the cluster took to settle after the heal, if it did within the limit.
    pub converged: Option<Duration>,
    /// Whether the final primary could be read.
    pub read_back: bool,
}

impl CheckerReport {
    /// The run's JSON line.
    pub fn json(&self, seed: u64, mode: &str, faults: &[String]) -> serde_json::Value {
        serde_json::json!({
            "seed": seed,
            "mode": mode,
            "faults": faults,
            "acked": self.acked,
            "acked_proxy": self.acked_proxy,
            "lost": self.lost.len(),
            "lost_proxy": self.lost.iter().filter(|a| a.kind == WriterKind::Proxy).count(),
            "rewound": self.rewound,
            "lost_beyond_lag": self.lost_beyond_lag,
            "split_brain": self.split_brain.len(),
            "split_brain_proxy": self.split_brain_proxy,
            "max_unavailable_s": (self.max_unavailable.as_secs_f64() * 10.0).round() / 10.0,
            "converged": self.converged.is_some(),
            "converge_s": self.converged.map(|d| (d.as_secs_f64() * 10.0).round() / 10.0),
            "read_back": self.read_back,
        })
    }

    /// A few lines a person reads: the figures, then each lost or split-brain commit.
    pub fn explain(&self) -> String {
        let mut out = format!(
            "acked {} ({} through proxies), lost {} ({} rewound away, {} beyond maxStandbyLag), split brain {} ({} through proxies), longest unavailability {:.1}s, converged {}",
            self.acked,
            self.acked_proxy,
            self.lost.len(),
            self.rewound,
            self.lost_beyond_lag,
            self.split_brain.len(),
            self.split_brain_proxy,
            self.max_unavailable.as_secs_f64(),
            match self.converged {
                Some(d) => format!("in {:.1}s", d.as_secs_f64()),
                None => "NO".to_string(),
            }
        );
        for (what, acks) in [("lost", &self.lost), ("split brain", &self.split_brain)] {
            for a in acks.iter().take(10) {
                out.push_str(&format!(
                    "\n  {what}: id {} by {} acked by {} on timeline {} (begun at {}) at {}",
                    a.id,
                    a.writer,
                    a.server,
                    a.timeline,
                    a.timeline_begin.map_or("?".into(), lsn_text),
                    lsn_text(a.lsn),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(
        server: &str,
        timeline: u32,
        sent_ms: u64,
        acked_ms: u64,
        t0: Instant,
    ) -> AckedCommit {
        AckedCommit {
            writer: "w".into(),
            kind: WriterKind::Direct,
            id: 0,
            server: server.into(),
            system_id: 1,
            timeline,
            timeline_begin: None,
            lsn: 0,
            sent: t0 + Duration::from_millis(sent_ms),
            acked: t0 + Duration::from_millis(acked_ms),
        }
    }

    #[test]
    fn an_old_primary_acknowledging_after_the_new_one_is_split_brain() {
        let t0 = Instant::now();
        let acks = [
            commit("a", 1, 0, 5, t0),
            commit("b", 2, 100, 105, t0),
            // Sent before b's first acknowledgement: the two may not have overlapped.
            commit("a", 1, 104, 110, t0),
            commit("a", 1, 200, 205, t0),
        ];
        let split = split_brain(&acks);
        assert_eq!(split.len(), 1);
        assert_eq!(split[0].sent, t0 + Duration::from_millis(200));
    }

    #[test]
    fn a_failover_in_order_is_not_split_brain() {
        let t0 = Instant::now();
        let acks = [
            commit("a", 1, 0, 5, t0),
            commit("b", 2, 100, 105, t0),
            commit("b", 2, 200, 205, t0),
        ];
        assert!(split_brain(&acks).is_empty());
    }

    #[test]
    fn a_second_server_promoted_to_the_same_timeline_is_newer() {
        let t0 = Instant::now();
        let acks = [
            commit("a", 1, 0, 5, t0),
            commit("b", 2, 100, 105, t0),
            commit("c", 2, 200, 205, t0),
            commit("b", 2, 250, 255, t0),
        ];
        let split = split_brain(&acks);
        assert_eq!(split.len(), 1);
        assert_eq!(split[0].server, "b");
        assert_eq!(split[0].sent, t0 + Duration::from_millis(250));
    }

    #[test]
    fn a_lost_commit_is_placed_on_its_own_branch() {
        // 1 ended at 0x1000, 2 at 0x5000; the final primary is on 3.
        let lineage = Lineage {
            ended: parse_history("1\t0/1000\tx\n2\t0/5000\tx\n"),
            current: 3,
        };
        assert_eq!(lineage.began(2), 0x1000);
        assert_eq!(lineage.began(3), 0x5000);
        // The tail of a timeline the history left, whether its beginning is known or not.
        assert_eq!(lineage.left(2, Some(0x1000)), Some(0x5000));
        assert_eq!(lineage.left(2, None), Some(0x5000));
        // Another 2, begun on 1 at 0x800 by a server the sentinel gave up on.
        assert_eq!(lineage.left(2, Some(0x800)), Some(0x800));
        // Another 3, begun on 2 past where the final primary was promoted.
        assert_eq!(lineage.left(3, Some(0x5200)), Some(0x5000));
        // The final primary's own branch: nothing left it.
        assert_eq!(lineage.left(3, Some(0x5000)), None);
        // A 4 begun on 3 that the history never took.
        assert_eq!(lineage.left(4, Some(0x6000)), Some(0x6000));
    }

    #[test]
    fn history_gives_where_each_timeline_ended() {
        let history =
            "1\t0/3000060\tno recovery target specified\n\n2\t1/A0\tno recovery target specified\n";
        let points = parse_history(history);
        assert_eq!(points[&1], 0x3000060);
        assert_eq!(points[&2], (1 << 32) | 0xA0);
    }

    #[test]
    fn the_longest_gap_counts_the_end_of_the_run() {
        let t0 = Instant::now();
        let mut acks = vec![commit("a", 1, 0, 100, t0), commit("a", 1, 0, 300, t0)];
        for a in &mut acks {
            a.kind = WriterKind::Proxy;
        }
        assert_eq!(
            longest_gap(&acks, t0, t0 + Duration::from_millis(1000)),
            Duration::from_millis(700)
        );
    }
}
