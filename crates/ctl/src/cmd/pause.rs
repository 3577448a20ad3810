//! `stolonctl pause` and `resume`: maintenance mode, in which the sentinel changes nothing
//! the operator did not ask for and the keepers leave postgres as it is.

use super::store::update_cluster_data;
use anyhow::bail;
use stolon_cluster::{ClusterData, Pause};
use stolon_store::Store;

pub(crate) async fn pause(store: &dyn Store, reason: String) -> anyhow::Result<()> {
    let pause = Pause {
        reason,
        by: operator(),
        since: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    update_cluster_data(store, |cd| {
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

pub(crate) async fn resume(store: &dyn Store) -> anyhow::Result<()> {
    let mut was = None;
    update_cluster_data(store, |cd| {
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

/// Refuses what a paused cluster would only hold back.
pub(crate) fn not_paused(cd: &ClusterData) -> anyhow::Result<()> {
    match &cd.cluster.status.pause {
        Some(pause) => bail!(
            "the cluster is paused ({}): run `stolonctl resume` first",
            describe_pause(pause)
        ),
        None => Ok(()),
    }
}

pub(crate) fn describe_pause(pause: &Pause) -> String {
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
