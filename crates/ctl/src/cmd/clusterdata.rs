//! `stolonctl clusterdata read` and `write`: the stored document as it is, to back it up or
//! move it to another store.

use super::spec::read_input;
use anyhow::{bail, Context};
use std::path::PathBuf;
use stolon_cluster::ClusterData;
use stolon_store::{Expect, Store, StoreError};

pub(crate) async fn read(store: &dyn Store, pretty: bool) -> anyhow::Result<()> {
    let (bytes, _) = store
        .get_cluster_data()
        .await?
        .context("no cluster data in the store")?;
    if pretty {
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).context("the stored cluster data is not JSON")?;
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{}", String::from_utf8_lossy(&bytes));
    }
    Ok(())
}

/// Writes a document only after checking it decodes; over an existing one only with `yes`.
pub(crate) async fn write(
    store: &dyn Store,
    file: Option<PathBuf>,
    yes: bool,
) -> anyhow::Result<()> {
    let text = read_input(None, Some(file.unwrap_or_else(|| "-".into())))?.unwrap_or_default();
    ClusterData::decode(text.as_bytes()).context("refusing invalid cluster data")?;
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
    Ok(())
}
