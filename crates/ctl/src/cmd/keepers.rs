//! `stolonctl failkeeper` and `removekeeper`: the operator's say over a keeper.

use super::pause::not_paused;
use super::store::update_cluster_data;
use anyhow::{bail, Context};
use stolon_cluster::KeeperUid;
use stolon_store::Store;

/// Marks a keeper failed: the sentinel fails it over at its next round.
pub(crate) async fn fail(store: &dyn Store, keeper: &str) -> anyhow::Result<()> {
    update_cluster_data(store, |cd| {
        not_paused(cd)?;
        let k = cd
            .keepers
            .get_mut(&KeeperUid::new(keeper))
            .with_context(|| format!("keeper doesn't exist: {keeper}"))?;
        k.status.force_fail = true;
        Ok(())
    })
    .await?;
    println!("keeper {keeper} marked as failed for the next sentinel round");
    Ok(())
}

/// Forgets a keeper and its db; never the primary's.
pub(crate) async fn remove(store: &dyn Store, keeper: &str) -> anyhow::Result<()> {
    update_cluster_data(store, |cd| {
        let uid = KeeperUid::new(keeper);
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
