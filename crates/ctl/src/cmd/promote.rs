//! `stolonctl promote`: a standby cluster stops following its remote primary and takes
//! writes.

use super::pause::not_paused;
use super::store::{confirm, existing_cluster_data, update_cluster_data};
use anyhow::bail;
use stolon_cluster::ClusterRole;
use stolon_store::Store;

pub(crate) async fn promote(store: &dyn Store, yes: bool) -> anyhow::Result<()> {
    let read = existing_cluster_data(store).await?;
    if read.data.cluster.spec.role.unwrap_or_default() == ClusterRole::Master {
        println!("cluster spec role already set to master");
        return Ok(());
    }
    not_paused(&read.data)?;
    if !yes {
        eprintln!(
            "WARNING: this cluster will stop following its remote primary and accept writes."
        );
        eprintln!("WARNING: writes the remote primary accepts from now on never reach this cluster: stop its clients first.");
        if !confirm()? {
            bail!("not confirmed: nothing changed");
        }
    }
    update_cluster_data(store, |cd| {
        not_paused(cd)?;
        cd.cluster.spec.role = Some(ClusterRole::Master);
        cd.cluster.spec.validate()?;
        Ok(())
    })
    .await?;
    println!("cluster spec role set to master: the sentinel promotes the standby leader (see stolonctl status)");
    Ok(())
}
