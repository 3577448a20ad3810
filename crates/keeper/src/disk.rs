//! Room on the data directory's filesystem. A full disk stops every write on a primary
//! while PostgreSQL keeps answering reads, so the keeper still reports it healthy and the
//! sentinel does not fail over (its standbys hold the same data on disks of the same size,
//! and would fill next). What the keeper does is make it visible: in its published state
//! (`stolonctl status`), its metrics, and one log line each way.

use std::path::Path;
use stolon_cluster::DataDisk;

/// Measures the filesystem of the data directory; `None` (logged once) when it cannot.
pub(crate) struct DiskWatch {
    /// Whether the last measure found the disk full; `None` before the first one.
    full: Option<bool>,
    failing: bool,
}

impl DiskWatch {
    pub fn new() -> DiskWatch {
        DiskWatch {
            full: None,
            failing: false,
        }
    }

    pub fn measure(&mut self, dir: &Path) -> Option<DataDisk> {
        let disk = match nix::sys::statvfs::statvfs(dir) {
            Ok(stat) => {
                self.failing = false;
                let fragment = stat.fragment_size();
                DataDisk {
                    available_bytes: stat.blocks_available() * fragment,
                    size_bytes: stat.blocks() * fragment,
                }
            }
            Err(errno) => {
                if !self.failing {
                    tracing::warn!(dir = %dir.display(), error = %errno, "cannot measure the data directory's filesystem");
                    self.failing = true;
                }
                return None;
            }
        };
        let full = disk.full();
        match (self.full, full) {
            (Some(false) | None, true) => tracing::warn!(
                available_bytes = disk.available_bytes,
                size_bytes = disk.size_bytes,
                "the data directory's filesystem is full: postgres cannot write, and while it answers no failover is made for it (the standbys hold the same data); free space or grow the volume"
            ),
            (Some(true), false) => tracing::info!(
                available_bytes = disk.available_bytes,
                size_bytes = disk.size_bytes,
                "the data directory's filesystem has room again"
            ),
            _ => {}
        }
        self.full = Some(full);
        Some(disk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_the_filesystem_of_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskWatch::new().measure(dir.path()).unwrap();
        assert!(disk.size_bytes > 0);
        assert!(disk.available_bytes <= disk.size_bytes);
    }

    #[test]
    fn a_missing_directory_has_no_measure() {
        let dir = tempfile::tempdir().unwrap();
        let mut watch = DiskWatch::new();
        assert_eq!(watch.measure(&dir.path().join("gone")), None);
        assert_eq!(watch.measure(&dir.path().join("gone")), None);
    }
}
