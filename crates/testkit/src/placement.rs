//! Where a cluster lives and listens: a temporary directory and free ports for a test, or a
//! directory and ports of the caller's choice for a cluster someone uses by hand (the demo),
//! whose instructions name them.

use std::path::{Path, PathBuf};

/// The ports of a cluster placed by hand: each keeper's postgres and HTTP port count up
/// from the first; etcd's peer port is the one after its client port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedPorts {
    pub etcd: u16,
    /// The Kubernetes API server's, on the Kubernetes store.
    pub kube: u16,
    /// The first proxy's; the next ones count up from it.
    pub proxy: u16,
    pub postgres: u16,
    pub keeper_http: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ports {
    Free,
    Fixed(FixedPorts),
}

impl Ports {
    fn pick(&self, fixed: impl FnOnce(&FixedPorts) -> u16) -> u16 {
        match self {
            Ports::Free => crate::free_port(),
            Ports::Fixed(ports) => fixed(ports),
        }
    }

    pub fn etcd(&self) -> (u16, u16) {
        (self.pick(|p| p.etcd), self.pick(|p| p.etcd + 1))
    }

    pub fn kube(&self) -> u16 {
        self.pick(|p| p.kube)
    }

    pub fn proxy(&self, i: usize) -> u16 {
        self.pick(|p| p.proxy + i as u16)
    }

    pub fn postgres(&self, i: usize) -> u16 {
        self.pick(|p| p.postgres + i as u16)
    }

    pub fn keeper_http(&self, i: usize) -> u16 {
        self.pick(|p| p.keeper_http + i as u16)
    }
}

/// A cluster's directory: removed with it (a test's, kept when the test fails), or the
/// caller's, always kept.
pub(crate) enum ClusterDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl ClusterDir {
    pub fn path(&self) -> &Path {
        match self {
            ClusterDir::Temp(dir) => dir.path(),
            ClusterDir::Kept(dir) => dir,
        }
    }

    /// Keeps it after the cluster: returns where it is.
    pub fn keep(self) -> PathBuf {
        match self {
            ClusterDir::Temp(dir) => dir.keep(),
            ClusterDir::Kept(dir) => dir,
        }
    }

    pub fn is_temporary(&self) -> bool {
        matches!(self, ClusterDir::Temp(_))
    }
}
