//! `stolonctl init`: a new cluster's first cluster data.

use super::store::confirm;
use anyhow::bail;
use stolon_cluster::{ClusterData, ClusterSpec, ClusterUid};
use stolon_store::{Expect, Store, StoreError};

/// What `init` does over a cluster the store already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Existing {
    Ask,
    Replace,
    Keep,
}

pub(crate) async fn init(
    store: &dyn Store,
    spec: ClusterSpec,
    existing: Existing,
) -> anyhow::Result<()> {
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
