//! What every command does with the store: read the cluster data it needs to exist, and
//! change it with compare-and-swap.

use anyhow::{bail, Context};
use std::io::{BufRead, IsTerminal, Write};
use stolon_cluster::ClusterData;
use stolon_store::{Expect, ReadClusterData, Store, StoreError};

/// The cluster data, which the commands other than init need to exist.
pub(crate) async fn existing_cluster_data(store: &dyn Store) -> anyhow::Result<ReadClusterData> {
    stolon_store::read_cluster_data(store)
        .await?
        .context("no cluster data: run stolonctl init first")
}

/// Applies `change` to the current cluster data with compare-and-swap, retrying a few times
/// when a sentinel wrote in between. A change that fails writes nothing.
pub(crate) async fn update_cluster_data(
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

/// Asks the operator to type `yes` before a change that cannot be undone.
pub(crate) fn confirm() -> anyhow::Result<bool> {
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
