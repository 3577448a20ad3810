//! stolonctl: the operator's command line over the store.

use anyhow::{bail, Context};
use serde::Serialize;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use stolon_cluster::{
    ClusterData, ClusterRole, ClusterSpec, ClusterUid, DataDisk, DbRole, GoDuration, KeeperInfo,
    KeeperUid, ProxyInfo, SentinelInfo, Switchover, SwitchoverPhase,
};
use stolon_ctl::cli::{Cli, ClusterdataCmd, Cmd, Format, ENV_PREFIX};
use stolon_engine::sentinel::{choose_new_master, election_rules, switchover_plan};
use stolon_store::{Expect, InfoKind, ReadClusterData, Store, StoreError};

fn main() {
    // The one command that needs no cluster.
    if std::env::args().nth(1).as_deref() == Some("version") {
        println!("stolonctl version {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let cli: Cli = stolon_daemon::parse_with_env_prefix(ENV_PREFIX);
    stolon_daemon::init_tracing(stolon_daemon::LogLevel::Warn);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(mut cli: Cli) -> anyhow::Result<()> {
    stolon_daemon::check_backend(&cli.common)?;
    cli.common.kube_client = cli.kube.clone();
    match cli.command {
        Cmd::Init {
            spec,
            file,
            yes,
            keep_existing,
        } => {
            let text = read_input(spec, file)?.unwrap_or_else(|| r#"{"initMode":"new"}"#.into());
            let spec = ClusterSpec::from_json(&text).context("invalid cluster spec")?;
            spec.validate().context("invalid cluster spec")?;
            let store = stolon_daemon::connect_store(&cli.common).await?;
            let existing = if keep_existing {
                Existing::Keep
            } else if yes {
                Existing::Replace
            } else {
                Existing::Ask
            };
            init(store.as_ref(), spec, existing).await
        }
        Cmd::Failkeeper { keeper } => {
            let store = stolon_daemon::connect_store(&cli.common).await?;
            update_cluster_data(store.as_ref(), |cd| {
                let k = cd
                    .keepers
                    .get_mut(&KeeperUid::new(&keeper))
                    .with_context(|| format!("keeper doesn't exist: {keeper}"))?;
                k.status.force_fail = true;
                Ok(())
            })
            .await?;
            println!("keeper {keeper} marked as failed for the next sentinel round");
            Ok(())
        }
        Cmd::Removekeeper { keeper } => {
            let store = stolon_daemon::connect_store(&cli.common).await?;
            update_cluster_data(store.as_ref(), |cd| {
                let uid = KeeperUid::new(&keeper);
                if !cd.keepers.contains_key(&uid) {
                    bail!("keeper doesn't exist: {keeper}");
                }
                if cd.master_db().is_some_and(|db| db.spec.keeper_uid == uid) {
                    bail!("keeper assigned db is the current cluster master db.");
                }
                cd.keepers.remove(&uid);
                cd.dbs.retain(|_, db| db.spec.keeper_uid != uid);
                Ok(())
            })
            .await?;
            println!("keeper {keeper} removed");
            Ok(())
        }
        Cmd::Spec { defaults } => {
            let store = stolon_daemon::connect_store(&cli.common).await?;
            let read = existing_cluster_data(store.as_ref()).await?;
            let spec = if defaults {
                read.data.cluster.spec.with_defaults()
            } else {
                read.data.cluster.spec
            };
            println!("{}", serde_json::to_string_pretty(&spec)?);
            Ok(())
        }
        Cmd::Update { spec, file, patch } => {
            let text = read_input(spec, file)?
                .context("give the spec (or patch) as an argument or with -f FILE")?;
            let given: serde_json::Value =
                serde_json::from_str(&text).context("the update is not valid JSON")?;
            let store = stolon_daemon::connect_store(&cli.common).await?;
            update_cluster_data(store.as_ref(), |cd| {
                let new = if patch {
                    let mut current = serde_json::to_value(&cd.cluster.spec)?;
                    merge_patch(&mut current, &given);
                    current
                } else {
                    given.clone()
                };
                let new =
                    ClusterSpec::from_json(&new.to_string()).context("invalid cluster spec")?;
                cd.cluster
                    .spec
                    .check_update(&new)
                    .context("invalid cluster spec update")?;
                cd.cluster.spec = new;
                Ok(())
            })
            .await?;
            println!("cluster spec updated");
            Ok(())
        }
        Cmd::Switchover {
            to,
            timeout,
            grace,
            no_wait,
        } => {
            let store = stolon_daemon::connect_store(&cli.common).await?;
            switchover(
                store.as_ref(),
                to.map(KeeperUid::new),
                timeout,
                grace,
                no_wait,
            )
            .await
        }
        Cmd::Promote { yes: _ } => {
            let store = stolon_daemon::connect_store(&cli.common).await?;
            let read = existing_cluster_data(store.as_ref()).await?;
            if read.data.cluster.spec.role.unwrap_or_default() == ClusterRole::Master {
                println!("cluster spec role already set to master");
                return Ok(());
            }
            update_cluster_data(store.as_ref(), |cd| {
                cd.cluster.spec.role = Some(ClusterRole::Master);
                Ok(())
            })
            .await?;
            println!("cluster spec role set to master");
            Ok(())
        }
        Cmd::Clusterdata { action } => {
            let store = stolon_daemon::connect_store(&cli.common).await?;
            match action {
                ClusterdataCmd::Read { pretty } => {
                    let (bytes, _) = store
                        .get_cluster_data()
                        .await?
                        .context("no cluster data in the store")?;
                    if pretty {
                        let value: serde_json::Value = serde_json::from_slice(&bytes)
                            .context("the stored cluster data is not JSON")?;
                        println!("{}", serde_json::to_string_pretty(&value)?);
                    } else {
                        println!("{}", String::from_utf8_lossy(&bytes));
                    }
                }
                ClusterdataCmd::Write { file, yes } => {
                    let text = read_input(None, Some(file.unwrap_or_else(|| "-".into())))?
                        .unwrap_or_default();
                    ClusterData::decode(text.as_bytes())
                        .context("refusing invalid cluster data")?;
                    let expect = if yes {
                        Expect::Anything
                    } else {
                        Expect::Absent
                    };
                    match store
                        .put_cluster_data(text.trim().as_bytes().to_vec(), expect)
                        .await
                    {
                        Err(StoreError::Conflict) => {
                            bail!("cluster data already exists: use --yes to overwrite it")
                        }
                        result => result?,
                    };
                    println!("successfully wrote cluster data into the new store");
                }
            }
            Ok(())
        }
        Cmd::Status { format } => {
            let store = stolon_daemon::connect_store(&cli.common).await?;
            let status = gather_status(store.as_ref()).await?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&status)?),
                Format::Text => print!("{}", render_status(&status)),
            }
            Ok(())
        }
    }
}

/// The text given inline, or read from a file ("-": standard input), if any.
fn read_input(inline: Option<String>, file: Option<PathBuf>) -> anyhow::Result<Option<String>> {
    Ok(match (inline, file) {
        (Some(text), _) => Some(text),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            Some(text)
        }
        (None, Some(path)) => Some(
            std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?,
        ),
        (None, None) => None,
    })
}

/// RFC 7386 JSON merge patch: objects merge recursively, `null` removes, anything else
/// replaces.
fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let serde_json::Value::Object(changes) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::Value::Object(Default::default());
    }
    let fields = target.as_object_mut().expect("made an object above");
    for (key, value) in changes {
        if value.is_null() {
            fields.remove(key);
        } else {
            merge_patch(
                fields.entry(key.clone()).or_insert(serde_json::Value::Null),
                value,
            );
        }
    }
}

/// The cluster data, which the commands other than init need to exist.
async fn existing_cluster_data(store: &dyn Store) -> anyhow::Result<ReadClusterData> {
    stolon_store::read_cluster_data(store)
        .await?
        .context("no cluster data: run stolonctl init first")
}

/// Applies `change` to the current cluster data with compare-and-swap, retrying a few times
/// when a sentinel wrote in between. A change that fails writes nothing.
async fn update_cluster_data(
    store: &dyn Store,
    mut change: impl FnMut(&mut ClusterData) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for _ in 0..5 {
        let read = existing_cluster_data(store).await?;
        let mut cd = read.data;
        change(&mut cd)?;
        match store
            .put_cluster_data(cd.encode(), Expect::Revision(read.revision))
            .await
        {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("the cluster data kept changing under us: try again")
}

/// Asks the sentinel for a switchover, checking first what it would check, then follows it
/// to its outcome.
async fn switchover(
    store: &dyn Store,
    to: Option<KeeperUid>,
    timeout: GoDuration,
    grace: GoDuration,
    no_wait: bool,
) -> anyhow::Result<()> {
    let id = stolon_daemon::random_uid();
    let mut plan = String::new();
    update_cluster_data(store, |cd| {
        if let Some(so) = &cd.cluster.status.switchover {
            bail!("a switchover is already in progress (id {})", so.id);
        }
        let spec = cd.cluster.spec.validate()?;
        // Which standbys have stalled only the sentinel knows: it checks again.
        let (master, target) = switchover_plan(cd, &spec, to.as_ref(), Default::default())
            .map_err(|reason| anyhow::anyhow!("cannot switch over: {reason}"))?;
        plan = format!(
            "switchover requested: from keeper {} (db {master}) to keeper {} (db {target})",
            cd.dbs[&master].spec.keeper_uid, cd.dbs[&target].spec.keeper_uid
        );
        cd.cluster.status.switchover = Some(Switchover {
            id: id.clone(),
            to_keeper: to.clone(),
            timeout,
            grace,
            phase: SwitchoverPhase::Requested,
            from_db: None,
            to_db: None,
            final_lsn: None,
            abandon_reason: String::new(),
        });
        Ok(())
    })
    .await?;
    println!("{plan}");
    if no_wait {
        return Ok(());
    }
    // The sentinel ends every switchover by itself; this only bounds a cluster without one.
    let give_up = std::time::Instant::now() + timeout.0 + std::time::Duration::from_secs(60);
    let mut last_phase = None;
    while std::time::Instant::now() < give_up {
        let cd = existing_cluster_data(store).await?.data;
        if let Some(outcome) = cd.cluster.status.last_switchover.filter(|o| o.id == id) {
            if outcome.succeeded {
                println!("{}", outcome.message);
                return Ok(());
            }
            bail!("switchover {}", outcome.message);
        }
        let phase = cd
            .cluster
            .status
            .switchover
            .filter(|so| so.id == id)
            .map(|so| so.phase);
        if let Some(now) = phase.filter(|p| Some(*p) != last_phase) {
            println!("{}", describe_phase(now));
            last_phase = Some(now);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    bail!("no outcome of switchover {id} yet: is a sentinel running? (stolonctl status shows the cluster)")
}

fn describe_phase(phase: SwitchoverPhase) -> &'static str {
    match phase {
        SwitchoverPhase::Requested => "waiting for the sentinel to accept the switchover",
        SwitchoverPhase::Holding => "proxies are holding new connections",
        SwitchoverPhase::Halting => "stopping the old primary after a checkpoint",
        SwitchoverPhase::CatchingUp => {
            "waiting for the target to receive the old primary's last WAL"
        }
        SwitchoverPhase::Promoting => "promoting the target",
        SwitchoverPhase::Restoring => "abandoning: restarting the old primary",
    }
}

/// What `init` does over a cluster the store already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Existing {
    Ask,
    Replace,
    Keep,
}

async fn init(store: &dyn Store, spec: ClusterSpec, existing: Existing) -> anyhow::Result<()> {
    let current = store.get_cluster_data().await?;
    let expect = match (&current, existing) {
        (Some((raw, _)), Existing::Keep) => {
            let uid = ClusterData::decode(raw)
                .map(|(cd, _)| cd.cluster.uid.to_string())
                .unwrap_or_else(|_| "unreadable".into());
            println!("cluster data already present (cluster {uid}): left as it is");
            return Ok(());
        }
        // Keep only replaces nothing: a cluster written meanwhile by someone else wins.
        (None, Existing::Keep) => Expect::Absent,
        (Some(_), Existing::Ask) => {
            eprintln!("WARNING: The current cluster data will be removed");
            eprintln!("WARNING: The databases managed by the keepers will be overwritten depending on the provided cluster spec.");
            if !confirm()? {
                bail!("not confirmed: nothing changed");
            }
            Expect::Anything
        }
        _ => Expect::Anything,
    };
    let cd = ClusterData::new(ClusterUid::new(stolon_daemon::random_uid()), spec);
    match store.put_cluster_data(cd.encode(), expect).await {
        Err(StoreError::Conflict) if existing == Existing::Keep => {
            println!("cluster data written meanwhile by another init: left as it is");
            return Ok(());
        }
        result => result?,
    };
    println!("cluster initialized: {}", cd.cluster.uid);
    Ok(())
}

fn confirm() -> anyhow::Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        eprint!("Are you sure you want to continue? [yes/no] ");
    } else {
        print!("Are you sure you want to continue? [yes/no] ");
        std::io::stdout().flush()?;
    }
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(answer.trim() == "yes")
}

#[derive(Debug, Serialize)]
struct Status {
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
}

async fn gather_status(store: &dyn Store) -> anyhow::Result<Status> {
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
        cluster.last_switchover = cd.cluster.status.last_switchover.as_ref().map(|o| {
            let how = if o.succeeded { "succeeded" } else { "failed" };
            format!("{how}: {}", o.message)
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
                (Some((master, _)), Some(db)) if db.uid == master.uid => "primary".to_string(),
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
                role: match db.map(|d| d.spec.role) {
                    Some(DbRole::Master) => "master".into(),
                    Some(DbRole::Standby) => "standby".into(),
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

fn render_status(s: &Status) -> String {
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

#[cfg(test)]
mod tests {
    use super::{describe_disk, merge_patch};
    use serde_json::json;
    use stolon_cluster::DataDisk;

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

    #[test]
    fn merge_patch_follows_rfc_7386() {
        for (target, patch, want) in [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [1]}),
                json!({"a": [2, 3]}),
                json!({"a": [2, 3]}),
            ),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
        ] {
            let mut got = target.clone();
            merge_patch(&mut got, &patch);
            assert_eq!(got, want, "{target} + {patch}");
        }
    }
}
