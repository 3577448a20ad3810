//! `stolonctl spec` and `update`: the cluster spec as stored, and a new one or a merge
//! patch, checked as the sentinel would before it is written.

use super::store::{existing_cluster_data, update_cluster_data};
use anyhow::Context;
use std::io::Read;
use std::path::PathBuf;
use stolon_cluster::ClusterSpec;
use stolon_store::Store;

pub(crate) async fn show(store: &dyn Store, defaults: bool) -> anyhow::Result<()> {
    let read = existing_cluster_data(store).await?;
    let spec = if defaults {
        read.data.cluster.spec.with_defaults()
    } else {
        read.data.cluster.spec
    };
    println!("{}", serde_json::to_string_pretty(&spec)?);
    Ok(())
}

pub(crate) async fn update(
    store: &dyn Store,
    spec: Option<String>,
    file: Option<PathBuf>,
    patch: bool,
) -> anyhow::Result<()> {
    let text = read_input(spec, file)?
        .context("give the spec (or patch) as an argument or with -f FILE")?;
    let given: serde_json::Value =
        serde_json::from_str(&text).context("the update is not valid JSON")?;
    update_cluster_data(store, |cd| {
        let new = if patch {
            let mut current = serde_json::to_value(&cd.cluster.spec)?;
            merge_patch(&mut current, &given);
            current
        } else {
            given.clone()
        };
        let new = ClusterSpec::from_json(&new.to_string()).context("invalid cluster spec")?;
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

/// The text given inline, or read from a file ("-": standard input), if any.
pub(crate) fn read_input(
    inline: Option<String>,
    file: Option<PathBuf>,
) -> anyhow::Result<Option<String>> {
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
