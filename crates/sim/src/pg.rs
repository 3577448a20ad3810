//! A PostgreSQL instance as far as high availability sees it: a WAL that is a list of
//! committed transactions, a timeline and its history, whether it runs and recovers, the
//! upstream and synchronous standbys its configuration names, its replication slots.

use stolon_cluster::{Lsn, TimelineId, TimelineSwitch};

/// WAL bytes per simulated transaction: maxStandbyLag (1 MiB by default) is about a
/// thousand transactions.
pub const RECORD_BYTES: u64 = 1000;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pg {
    pub initialized: bool,
    pub running: bool,
    /// Starts in recovery (a standby) until promoted.
    pub standby_signal: bool,
    pub system_id: String,
    pub timeline: u32,
    /// Where each earlier timeline of its lineage ended.
    pub history: Vec<TimelineSwitch>,
    /// The transactions in its WAL, in order: the position is their count.
    pub wal: Vec<u64>,
    /// The configuration as last written and loaded.
    pub config: Config,
    pub slots: Vec<String>,
    /// Its walreceiver streams from `config.upstream` and has caught up once.
    pub streaming: bool,
    /// Counts its starts: a session opened before the last one was ended by the stop.
    pub starts: u64,
}

/// What the configuration files say (the parts the simulation models).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// The keeper whose instance a standby streams from.
    pub upstream: Option<usize>,
    /// `synchronous_standby_names`: the application names a commit waits for.
    pub synchronous: Vec<String>,
}

impl Pg {
    pub fn writable(&self) -> bool {
        self.running && !self.standby_signal
    }

    pub fn in_recovery(&self) -> bool {
        self.running && self.standby_signal
    }

    pub fn position(&self) -> Lsn {
        Lsn(self.wal.len() as u64 * RECORD_BYTES)
    }

    pub fn timeline_id(&self) -> TimelineId {
        TimelineId(self.timeline)
    }

    /// A new primary: initdb.
    pub fn initdb(&mut self, system_id: String) {
        *self = Pg {
            initialized: true,
            running: true,
            system_id,
            timeline: 1,
            starts: self.starts + 1,
            ..Pg::default()
        };
    }

    pub fn start(&mut self) {
        self.running = true;
        self.streaming = false;
        self.starts += 1;
    }

    /// A copy of `source`'s data (a base backup, or a rewind to it), stopped, a standby.
    pub fn copy_of(&mut self, source: &Pg, upstream: usize) {
        *self = Pg {
            initialized: true,
            running: false,
            standby_signal: true,
            system_id: source.system_id.clone(),
            timeline: source.timeline,
            history: source.history.clone(),
            wal: source.wal.clone(),
            config: Config {
                upstream: Some(upstream),
                synchronous: Vec::new(),
            },
            slots: Vec::new(),
            streaming: false,
            starts: self.starts,
        };
    }

    /// Leaves recovery onto a new timeline that forks at the current position.
    pub fn promote(&mut self) {
        self.history.push(TimelineSwitch {
            timeline_id: TimelineId(self.timeline),
            switch_point: self.position(),
        });
        self.timeline += 1;
        self.standby_signal = false;
        self.streaming = false;
        self.config.upstream = None;
    }

    pub fn stop(&mut self) {
        self.running = false;
        self.streaming = false;
    }

    /// Whether a standby holding `self` can stream from `upstream`: the same system, and
    /// its WAL a prefix of the upstream's (it has nothing the upstream does not).
    pub fn can_follow(&self, upstream: &Pg) -> bool {
        self.system_id == upstream.system_id
            && self.wal.len() <= upstream.wal.len()
            && upstream.wal[..self.wal.len()] == self.wal[..]
    }

    /// Streams everything `upstream` has.
    pub fn receive_from(&mut self, upstream: &Pg) {
        let have = self.wal.len();
        self.wal.extend_from_slice(&upstream.wal[have..]);
        if self.timeline != upstream.timeline {
            self.timeline = upstream.timeline;
            self.history = upstream.history.clone();
        }
        self.streaming = true;
    }
}
