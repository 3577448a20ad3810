//! The keeper's own files in its data directory: who it is, and which db its PostgreSQL
//! data directory holds.

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use stolon_cluster::{DbUid, Generation};
use stolon_engine::keeper::LocalDb;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeeperState {
    #[serde(rename = "UID")]
    pub uid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DbState {
    #[serde(rename = "UID")]
    pub uid: String,
    #[serde(rename = "Generation")]
    pub generation: u64,
    #[serde(rename = "Initializing")]
    pub initializing: bool,
    /// The system identifier the data directory got when this keeper made it.
    #[serde(rename = "SystemID", default)]
    pub system_id: String,
    /// What initdb wrote in postgresql.conf, for `mergePgParameters`.
    #[serde(rename = "InitPGParameters", default)]
    pub init_pg_parameters: std::collections::BTreeMap<String, String>,
}

impl DbState {
    pub fn local_db(&self) -> LocalDb {
        LocalDb {
            uid: (!self.uid.is_empty()).then(|| DbUid::new(&self.uid)),
            generation: Generation(self.generation),
            initializing: self.initializing,
            system_id: (!self.system_id.is_empty()).then(|| self.system_id.clone()),
        }
    }
}

/// Writes through a temporary file, fsync and rename, so a crash leaves either the old
/// or the new content, never half of it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("{} is corrupt", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub struct DataDir {
    pub root: PathBuf,
    _lock: nix::fcntl::Flock<File>,
}

impl DataDir {
    /// Opens (creating it if needed) the keeper's data directory and takes its exclusive
    /// lock, so two keepers never manage the same instance.
    pub fn open(root: &Path) -> anyhow::Result<DataDir> {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let lock_path = root.join("lock");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| {
                anyhow::anyhow!(
                    "cannot take exclusive lock on data dir {}: {errno} (is another keeper running on it?)",
                    lock_path.display()
                )
            })?;
        tracing::info!(data_dir = %root.display(), "exclusive lock on data dir taken");
        Ok(DataDir {
            root: root.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn pgdata(&self) -> PathBuf {
        self.root.join("postgres")
    }

    /// The keeper's uid: the persisted one, which a different `--uid` may not change.
    pub fn resolve_uid(
        &self,
        wanted: Option<&str>,
        random: impl FnOnce() -> String,
    ) -> anyhow::Result<String> {
        let path = self.root.join("keeperstate");
        let stored: Option<KeeperState> = read_json(&path)?;
        let known = stored.is_some();
        let uid = match (stored, wanted) {
            (Some(s), Some(w)) if s.uid != w => bail!(
                "keeper uid {w:?} differs from the uid {:?} saved in the data dir {}: a data \
                 dir belongs to one keeper for its whole life",
                s.uid,
                self.root.display()
            ),
            (Some(s), _) => s.uid,
            (None, Some(w)) => w.to_string(),
            (None, None) => random(),
        };
        if !uid
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            || uid.is_empty()
        {
            bail!("invalid keeper uid {uid:?}: only a-z, 0-9 and _ are allowed");
        }
        // Written once: a keeper restarted on a full disk must still start, and report it.
        if !known {
            write_atomic(
                &path,
                &serde_json::to_vec(&KeeperState { uid: uid.clone() })?,
            )?;
        }
        Ok(uid)
    }

    pub fn db_state(&self) -> anyhow::Result<DbState> {
        Ok(read_json(&self.root.join("dbstate"))?.unwrap_or_default())
    }

    pub fn save_db_state(&self, state: &DbState) -> anyhow::Result<()> {
        write_atomic(&self.root.join("dbstate"), &serde_json::to_vec(state)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_the_same_data_dir_fails() {
        let dir = tempfile::tempdir().unwrap();
        let _first = DataDir::open(dir.path()).unwrap();
        let err = DataDir::open(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains("cannot take exclusive lock on data dir"),
            "{err}"
        );
    }

    #[test]
    fn uid_is_persisted_and_cannot_change() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        assert_eq!(data.resolve_uid(None, || "abc1".into()).unwrap(), "abc1");
        assert_eq!(
            data.resolve_uid(Some("abc1"), || unreachable!()).unwrap(),
            "abc1"
        );
        let err = data
            .resolve_uid(Some("other"), || unreachable!())
            .unwrap_err()
            .to_string();
        assert!(err.contains("differs"), "{err}");
        assert!(data.resolve_uid(None, || unreachable!()).is_ok());
        let fresh = tempfile::tempdir().unwrap();
        let d2 = DataDir::open(fresh.path()).unwrap();
        assert!(d2.resolve_uid(Some("Bad-Uid"), || unreachable!()).is_err());
    }
}
