//! `stolonctl status`: what every component published and what the cluster data says,
//! gathered from the store, as a table or as JSON.

use super::pause::describe_pause;
use super::switchover::describe_phase;
use anyhow::bail;
use serde::Serialize;
use stolon_cluster::{DataDisk, Db, DbRole, KeeperInfo, ProxyInfo, SentinelInfo};
use stolon_engine::sentinel::{choose_new_master, election_rules};
use stolon_store::{InfoKind, Store, StoreError};

#[derive(Debug, Serialize)]
pub(crate) struct Status {
    sentinels: Vec<SentinelStatus>,
    proxies: Vec<ProxyStatus>,
    keepers: Vec<KeeperStatus>,
    cluster: ClusterStatus,
}

#[derive(Debug, Serialize)]
struct SentinelStatus {
    uid: String,
    leader: bool,
}

#[derive(Debug, Serialize)]
struct ProxyStatus {
    uid: String,
    generation: u64,
}

#[derive(Debug, Serialize)]
struct KeeperStatus {
    uid: String,
    listen_address: String,
    healthy: bool,
    pg_healthy: bool,
    pg_wanted_generation: u64,
    pg_current_generation: u64,
    role: String,
    timeline: u32,
    xlog_pos: String,
    /// The room on the data directory's filesystem, as the keeper last measured it.
    data_disk: Option<DataDisk>,
    data_disk_full: bool,
    /// Whether the sentinel would promote it if the primary failed now, and why not.
    master_eligibility: String,
}

#[derive(Debug, Serialize)]
struct ClusterStatus {
    available: bool,
    master_keeper_uid: Option<String>,
    master_db_uid: Option<String>,
    phase: Option<String>,
    proxy_generation: Option<u64>,
    proxies_route_to: Option<String>,
    master_choice: Option<String>,
    synchronous_standbys: Vec<String>,
    /// The switchover in progress, in words.
    switchover: Option<String>,
    /// How the last switchover ended.
    last_switchover: Option<String>,
    /// Maintenance mode: since when, by whom, why.
    paused: Option<String>,
    /// Set for a standby cluster: what its standby leader follows, and how far behind.
    standby_cluster: Option<StandbyClusterStatus>,
}

#[derive(Debug, Serialize, Default)]
struct StandbyClusterStatus {
    /// The remote primary's connection string, its password hidden.
    primary_conninfo: Option<String>,
    primary_slot_name: Option<String>,
    restore_command: Option<String>,
    recovery_min_apply_delay: Option<String>,
    /// `host:port` the standby leader streams from now; none when it does not stream.
    streaming_from: Option<String>,
    received: Option<String>,
    replayed: Option<String>,
    lag_bytes: Option<u64>,
    replay_delay_ms: Option<u64>,
}

pub(crate) async fn gather_status(store: &dyn Store) -> anyhow::Result<Status> {
    let leader = store.leader().await?;
    let mut sentinels: Vec<SentinelStatus> =
        stolon_store::read_infos::<SentinelInfo>(store, InfoKind::Sentinel)
            .await?
            .into_iter()
            .map(|s| SentinelStatus {
                leader: leader.as_deref() == Some(s.uid.as_str()),
                uid: s.uid.to_string(),
            })
            .collect();
    sentinels.sort_by(|a, b| a.uid.cmp(&b.uid));
    let mut proxies: Vec<ProxyStatus> =
        stolon_store::read_infos::<ProxyInfo>(store, InfoKind::Proxy)
            .await?
            .into_iter()
            .map(|p| ProxyStatus {
                uid: p.uid.to_string(),
                generation: p.generation.0,
            })
            .collect();
    proxies.sort_by(|a, b| a.uid.cmp(&b.uid));
    let infos: Vec<KeeperInfo> = stolon_store::read_infos(store, InfoKind::Keeper).await?;
    let read = match stolon_store::read_cluster_data(store).await {
        Ok(read) => read,
        Err(StoreError::Corrupt(e)) => bail!("cannot use the cluster data: {e}"),
        Err(e) => return Err(e.into()),
    };
    let mut keepers = Vec::new();
    let mut cluster = ClusterStatus {
        available: false,
        master_keeper_uid: None,
        master_db_uid: None,
        phase: None,
        proxy_generation: None,
        proxies_route_to: None,
        master_choice: None,
        synchronous_standbys: Vec::new(),
        switchover: None,
        last_switchover: None,
        paused: None,
        standby_cluster: None,
    };
    if let Some(read) = &read {
        let cd = &read.data;
        cluster.phase = Some(format!("{:?}", cd.cluster.status.phase).to_lowercase());
        cluster.proxy_generation = Some(cd.proxy.generation.0);
        cluster.proxies_route_to = cd.proxy.spec.master_db_uid.as_ref().map(|d| d.to_string());
        cluster.switchover = cd
            .cluster
            .status
            .switchover
            .as_ref()
            .map(|so| describe_phase(so.phase).to_string());
        cluster.paused = cd.cluster.status.pause.as_ref().map(describe_pause);
        cluster.last_switchover = cd.cluster.status.last_switchover.as_ref().map(|o| {
            let how = if o.succeeded { "succeeded" } else { "failed" };
            format!("{how}: {}", o.message)
        });
        cluster.standby_cluster = read.spec.standby_config.as_ref().map(|config| {
            let settings = config.standby_settings.as_ref();
            let progress = cd
                .master_db()
                .filter(|db| db.spec.follows_remote())
                .and_then(|db| infos.iter().find(|i| i.uid == db.spec.keeper_uid))
                .and_then(|i| i.postgres_state.as_ref())
                .and_then(|s| s.remote.clone())
                .unwrap_or_default();
            StandbyClusterStatus {
                primary_conninfo: settings
                    .and_then(|s| s.primary_conninfo.as_deref())
                    .map(hide_password),
                primary_slot_name: settings.and_then(|s| s.primary_slot_name.clone()),
                recovery_min_apply_delay: settings.and_then(|s| s.recovery_min_apply_delay.clone()),
                restore_command: config
                    .archive_recovery_settings
                    .as_ref()
                    .and_then(|a| a.restore_command.clone()),
                streaming_from: Some(progress.sender).filter(|s| !s.is_empty()),
                received: Some(progress.received.to_string()).filter(|_| progress.received.0 > 0),
                replayed: Some(progress.replayed.to_string()).filter(|_| progress.replayed.0 > 0),
                lag_bytes: progress.lag_bytes,
                replay_delay_ms: progress.replay_delay_ms,
            }
        });
        if let Some(master) = cd.master_db() {
            cluster.available =
                master.status.healthy && cd.proxy.spec.master_db_uid.as_ref() == Some(&master.uid);
            cluster.master_db_uid = Some(master.uid.to_string());
            cluster.master_keeper_uid = Some(master.spec.keeper_uid.to_string());
            cluster.master_choice =
                Some(cd.cluster.status.master_choice.clone()).filter(|c| !c.is_empty());
            cluster.synchronous_standbys = master
                .spec
                .synchronous_standbys
                .iter()
                .filter_map(|db| cd.dbs.get(db))
                .map(|db| db.spec.keeper_uid.to_string())
                .collect();
        }
        // What a failover decided now would make of each keeper (the sentinel's own rules).
        let choice = cd.master_db().map(|master| {
            let rules = election_rules(master, read.spec.max_standby_lag);
            (master, choose_new_master(cd, master, &rules))
        });
        for keeper in cd.keepers.values() {
            let db = cd.db_of_keeper(&keeper.uid);
            let master_eligibility = match (&choice, db) {
                (_, None) => "no db".to_string(),
                (None, Some(_)) => "no primary to replace".to_string(),
                (Some((master, _)), Some(db)) if db.uid == master.uid => {
                    leader_role(db).to_string()
                }
                (Some((_, choice)), Some(db)) if choice.best.as_ref() == Some(&db.uid) => {
                    format!("would be elected: {}", choice.why)
                }
                (Some((_, choice)), Some(_)) => choice
                    .rejected
                    .iter()
                    .find(|r| r.keeper == keeper.uid)
                    .map(|r| format!("not eligible: {}", r.reason))
                    .unwrap_or_else(|| "not eligible".to_string()),
            };
            let info = infos.iter().find(|i| i.uid == keeper.uid);
            let data_disk = info
                .and_then(|i| i.postgres_state.as_ref())
                .and_then(|s| s.data_disk);
            keepers.push(KeeperStatus {
                uid: keeper.uid.to_string(),
                listen_address: db
                    .map(|d| format!("{}:{}", d.status.listen_address, d.status.port))
                    .unwrap_or_else(|| "(unknown)".into()),
                healthy: keeper.status.healthy,
                pg_healthy: db.is_some_and(|d| d.status.healthy),
                pg_wanted_generation: db.map(|d| d.generation.0).unwrap_or(0),
                pg_current_generation: db.map(|d| d.status.current_generation.0).unwrap_or(0),
                role: match db {
                    Some(d) if d.spec.role == DbRole::Master => "master".into(),
                    Some(d) if d.spec.follows_remote() => "standby leader".into(),
                    Some(_) => "standby".into(),
                    None => "(no db)".into(),
                },
                timeline: info
                    .and_then(|i| i.postgres_state.as_ref())
                    .map(|s| s.timeline_id.0)
                    .unwrap_or(0),
                xlog_pos: info
                    .and_then(|i| i.postgres_state.as_ref())
                    .map(|s| s.x_log_pos.to_string())
                    .unwrap_or_default(),
                data_disk,
                data_disk_full: data_disk.is_some_and(|d| d.full()),
                master_eligibility,
            });
        }
    }
    Ok(Status {
        sentinels,
        proxies,
        keepers,
        cluster,
    })
}

fn leader_role(db: &Db) -> &'static str {
    if db.spec.follows_remote() {
        "standby leader"
    } else {
        "primary"
    }
}

/// A libpq connection string with its password value replaced: status output ends up in
/// tickets and chat.
fn hide_password(conninfo: &str) -> String {
    let mut out = String::new();
    let mut rest = conninfo;
    while let Some(at) = rest.find("password") {
        let (before, after) = rest.split_at(at);
        out.push_str(before);
        let value = after["password".len()..].trim_start();
        let Some(value) = value.strip_prefix('=') else {
            out.push_str("password");
            rest = &after["password".len()..];
            continue;
        };
        let value = value.trim_start();
        let end = if let Some(quoted) = value.strip_prefix('\'') {
            let mut escaped = false;
            quoted
                .char_indices()
                .find(|&(_, c)| {
                    let closes = c == '\'' && !escaped;
                    escaped = c == '\\' && !escaped;
                    closes
                })
                .map_or(value.len(), |(i, _)| i + 2)
        } else {
            value.find(char::is_whitespace).unwrap_or(value.len())
        };
        out.push_str("password=***");
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
            + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// Free room of total, in binary units; a full disk says so first.
fn describe_disk(disk: DataDisk) -> String {
    let room = format!(
        "{}/{}",
        binary_size(disk.available_bytes),
        binary_size(disk.size_bytes)
    );
    if disk.full() {
        format!("FULL {room}")
    } else {
        room
    }
}

fn binary_size(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", units[unit])
    }
}

pub(crate) fn render_status(s: &Status) -> String {
    let mut out = String::from("=== Active sentinels ===\n\n");
    out += &table(
        &["ID", "LEADER"],
        s.sentinels
            .iter()
            .map(|x| vec![x.uid.clone(), x.leader.to_string()])
            .collect(),
    );
    out += "\n=== Active proxies ===\n\n";
    out += &table(
        &["ID", "GENERATION"],
        s.proxies
            .iter()
            .map(|x| vec![x.uid.clone(), x.generation.to_string()])
            .collect(),
    );
    out += "\n=== Keepers ===\n\n";
    out += &table(
        &[
            "UID",
            "HEALTHY",
            "PG LISTENADDRESS",
            "PG HEALTHY",
            "PG WANTEDGENERATION",
            "PG CURRENTGENERATION",
            "ROLE",
            "TIMELINE",
            "XLOGPOS",
            "DISK FREE",
            "AS NEW PRIMARY",
        ],
        s.keepers
            .iter()
            .map(|k| {
                vec![
                    k.uid.clone(),
                    k.healthy.to_string(),
                    k.listen_address.clone(),
                    k.pg_healthy.to_string(),
                    k.pg_wanted_generation.to_string(),
                    k.pg_current_generation.to_string(),
                    k.role.clone(),
                    k.timeline.to_string(),
                    k.xlog_pos.clone(),
                    k.data_disk.map(describe_disk).unwrap_or_default(),
                    k.master_eligibility.clone(),
                ]
            })
            .collect(),
    );
    out += "\n=== Cluster Info ===\n\n";
    match &s.cluster.phase {
        None => out += "No cluster data available (run stolonctl init)\n",
        Some(phase) => {
            out += &format!("Phase: {phase}\n");
            if let Some(paused) = &s.cluster.paused {
                out += &format!(
                    "Maintenance: PAUSED {paused} (no failover, no switchover; stolonctl resume ends it)\n"
                );
            }
            out += &format!(
                "Master Keeper: {}\n",
                s.cluster.master_keeper_uid.as_deref().unwrap_or("(none)")
            );
            if let Some(choice) = &s.cluster.master_choice {
                out += &format!("Master chosen because: {choice}\n");
            }
            if !s.cluster.synchronous_standbys.is_empty() {
                out += &format!(
                    "Synchronous standby keepers: {}\n",
                    s.cluster.synchronous_standbys.join(", ")
                );
            }
            out += &format!(
                "Proxies route to db: {}\n",
                s.cluster
                    .proxies_route_to
                    .as_deref()
                    .unwrap_or("(none: connections refused)")
            );
            if let Some(standby) = &s.cluster.standby_cluster {
                out += &describe_standby_cluster(standby);
            }
            if let Some(phase) = &s.cluster.switchover {
                out += &format!("Switchover in progress: {phase}\n");
            }
            if let Some(last) = &s.cluster.last_switchover {
                out += &format!("Last switchover: {last}\n");
            }
        }
    }
    out
}

/// A standby cluster's lines: what it follows, from where it streams, how far behind.
fn describe_standby_cluster(s: &StandbyClusterStatus) -> String {
    let mut sources = Vec::new();
    if let Some(conninfo) = &s.primary_conninfo {
        let slot = s
            .primary_slot_name
            .as_ref()
            .map(|slot| format!(", slot {slot}"))
            .unwrap_or_default();
        sources.push(format!("remote primary \"{conninfo}\"{slot}"));
    }
    if let Some(command) = &s.restore_command {
        sources.push(format!("archive (restore_command \"{command}\")"));
    }
    let mut out = format!(
        "Standby cluster: the standby leader follows {}\n",
        sources.join(" and ")
    );
    if let Some(delay) = &s.recovery_min_apply_delay {
        out += &format!("Apply delay (recoveryMinApplyDelay): {delay}\n");
    }
    out += &format!(
        "Standby leader streams from: {}\n",
        s.streaming_from.as_deref().unwrap_or("(not streaming)")
    );
    let bytes = s
        .lag_bytes
        .map(|b| format!("{} behind", binary_size(b)))
        .unwrap_or_else(|| "unknown bytes behind".into());
    let delay = s
        .replay_delay_ms
        .map(|ms| format!("replay delay {:.1} s", ms as f64 / 1000.0))
        .unwrap_or_else(|| "replay delay unknown".into());
    out += &format!(
        "Behind the remote primary: {bytes}, {delay} (received {}, replayed {})\n",
        s.received.as_deref().unwrap_or("-"),
        s.replayed.as_deref().unwrap_or("-")
    );
    out
}

#[cfg(test)]
mod tests {
    use super::{describe_disk, hide_password};
    use stolon_cluster::DataDisk;

    #[test]
    fn the_remote_password_never_shows() {
        assert_eq!(
            hide_password("host=a password=s3cret user=r"),
            "host=a password=*** user=r"
        );
        assert_eq!(
            hide_password("password = 'with space \\' quote' host=a"),
            "password=*** host=a"
        );
        assert_eq!(
            hide_password("host=a passwordless=1"),
            "host=a passwordless=1"
        );
        assert_eq!(hide_password("host=a"), "host=a");
    }

    #[test]
    fn a_disk_is_described_by_its_room_and_when_full_says_so() {
        let disk = |available_bytes, size_bytes| {
            describe_disk(DataDisk {
                available_bytes,
                size_bytes,
            })
        };
        assert_eq!(disk(700 << 20, 1 << 30), "700.0MiB/1.0GiB");
        assert_eq!(disk(3 << 20, 1 << 30), "FULL 3.0MiB/1.0GiB");
        assert_eq!(disk(0, 1000), "FULL 0B/1000B");
        assert_eq!(disk(5 << 40, 10 << 40), "5.0TiB/10.0TiB");
    }
}
