//! stolonctl: the operator's command line over the store.

mod status;

use anyhow::{bail, Context};
use serde::Serialize;
use status::{gather_status, render_status};
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use stolon_cluster::{
    ClusterData, ClusterRole, ClusterSpec, ClusterUid, DataDisk, Db, DbRole, GoDuration,
    KeeperInfo, KeeperUid, Pause, ProxyInfo, SentinelInfo, Switchover, SwitchoverPhase,
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
        Cmd::Pause { reason } => {
            let store = stolon_daemon::connect_store(&cli.common).await?;
            let pause = Pause {
                reason,
                by: operator(),
                since: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            };
            update_cluster_data(store.as_ref(), |cd| {
                not_paused(cd)?;
                if let Some(so) = &cd.cluster.status.switchover {
                    bail!(
                        "a switchover is in progress (id {}): pause once it has ended",
                        so.id
                    );
                }
                cd.cluster.status.pause = Some(pause.clone());
                Ok(())
            })
            .await?;
            println!("cluster paused: no failover, no switchover, and the keepers leave postgres as it is until `stolonctl resume`");
            Ok(())
        }
        Cmd::Resume => {
            let store = stolon_daemon::connect_store(&cli.common).await?;
            let mut was = None;
            update_cluster_data(store.as_ref(), |cd| {
                was = cd.cluster.status.pause.take();
                if was.is_none() {
                    bail!("the cluster is not paused");
                }
                Ok(())
            })
            .await?;
            if let Some(was) = was {
                println!(
                    "cluster resumed ({}): the sentinel and the keepers act again",
                    describe_pause(&was)
                );
            }
            Ok(())
        }
        Cmd::Failkeeper { keeper } => {
            let store = stolon_daemon::connect_store(&cli.common).await?;
            update_cluster_data(store.as_ref(), |cd| {
                not_paused(cd)?;
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
        Cmd::Promote { yes } => {
            let store = stolon_daemon::connect_store(&cli.common).await?;
            let read = existing_cluster_data(store.as_ref()).await?;
            if read.data.cluster.spec.role.unwrap_or_default() == ClusterRole::Master {
                println!("cluster spec role already set to master");
                return Ok(());
            }
            not_paused(&read.data)?;
            if !yes {
                eprintln!("WARNING: this cluster will stop following its remote primary and accept writes.");
                eprintln!("WARNING: writes the remote primary accepts from now on never reach this cluster: stop its clients first.");
                if !confirm()? {
                    bail!("not confirmed: nothing changed");
                }
            }
            update_cluster_data(store.as_ref(), |cd| {
                not_paused(cd)?;
                cd.cluster.spec.role = Some(ClusterRole::Master);
                cd.cluster.spec.validate()?;
                Ok(())
            })
            .await?;
            println!("cluster spec role set to master: the sentinel promotes the standby leader (see stolonctl status)");
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
/// Refuses what a paused cluster would only hold back.
fn not_paused(cd: &ClusterData) -> anyhow::Result<()> {
    match &cd.cluster.status.pause {
        Some(pause) => bail!(
            "the cluster is paused ({}): run `stolonctl resume` first",
            describe_pause(pause)
        ),
        None => Ok(()),
    }
}

fn describe_pause(pause: &Pause) -> String {
    let mut text = format!("since {} by {}", pause.since, pause.by);
    if !pause.reason.is_empty() {
        text += &format!(": {}", pause.reason);
    }
    text
}

/// `user@host` of whoever runs stolonctl, for the pause's record.
fn operator() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{host}")
}

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
        not_paused(cd)?;
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

#[cfg(test)]
mod tests {
    use super::merge_patch;
    use serde_json::json;

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
