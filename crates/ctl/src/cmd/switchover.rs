//! `stolonctl switchover`: asks the sentinel for a planned switchover and follows it to
//! its outcome.

use super::pause::not_paused;
use super::store::{existing_cluster_data, update_cluster_data};
use anyhow::bail;
use stolon_cluster::{GoDuration, KeeperUid, Switchover, SwitchoverPhase};
use stolon_engine::sentinel::switchover_plan;
use stolon_store::Store;

/// Asks the sentinel for a switchover, checking first what it would check, then follows it
/// to its outcome.
pub(crate) async fn switchover(
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

pub(crate) fn describe_phase(phase: SwitchoverPhase) -> &'static str {
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
