//! The timeline a standby reports with its position.
//!
//! PostgreSQL 15 tells a standby's timeline in two places: its walreceiver's (current, but
//! only while it streams) and its last restartpoint's in the control file (which stays on
//! the old timeline after a switch until the next restartpoint). When the primary dies the
//! walreceiver stops, and a report of the checkpoint's timeline with a position already on
//! the new one reads as a standby that went past the fork point: the sentinel would throw
//! away a good standby, perhaps the only synchronous one. So the keeper remembers the
//! timeline it saw streamed while the same postmaster runs (a standby never goes back a
//! timeline), and asks for a restartpoint when the control file lags, so that the right
//! timeline also survives a restart.

use stolon_pg::probe::Observed;

#[derive(Debug, Default)]
pub struct StandbyTimeline {
    /// The highest timeline streamed since the postmaster that started then.
    streamed: Option<(String, u32)>,
    /// The (control file, streamed) timelines a restartpoint was last asked for.
    restartpoint_for: Option<(u32, u32)>,
}

impl StandbyTimeline {
    /// The timeline to report for this observation.
    pub fn observe(&mut self, probe: &Observed) -> u32 {
        if !probe.in_recovery {
            self.streamed = None;
            return probe.timeline_id;
        }
        let remembered = self
            .streamed
            .as_ref()
            .filter(|(started, _)| *started == probe.postmaster_started)
            .map(|(_, tli)| *tli);
        let streamed = probe.receiving.max(remembered);
        self.streamed = streamed.map(|tli| (probe.postmaster_started.clone(), tli));
        probe.timeline_id.max(streamed.unwrap_or(0))
    }

    /// Whether the standby's control file names an older timeline than the one it streams:
    /// a restartpoint (`CHECKPOINT` on a standby) brings it up to date once a checkpoint
    /// record of the new timeline has been replayed. `Some(true)` the first time for these
    /// two timelines (worth a log line), `Some(false)` when asked again.
    pub fn restartpoint_due(&mut self, probe: &Observed) -> Option<bool> {
        let streamed = probe
            .receiving
            .filter(|tli| probe.in_recovery && *tli > probe.checkpoint_timeline)?;
        let pair = (probe.checkpoint_timeline, streamed);
        Some(self.restartpoint_for.replace(pair) != Some(pair))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standby(started: &str, receiving: Option<u32>, checkpoint: u32) -> Observed {
        Observed {
            in_recovery: true,
            system_id: "7000000000000000001".into(),
            timeline_id: receiving.unwrap_or(checkpoint),
            receiving,
            checkpoint_timeline: checkpoint,
            postmaster_started: started.into(),
            lsn: "0/5000000".into(),
            slots: Vec::new(),
            in_sync: Vec::new(),
            oldest_wal_file: String::new(),
            pending_restart: Vec::new(),
        }
    }

    #[test]
    fn a_standby_keeps_the_timeline_it_streamed_when_its_walreceiver_stops() {
        let mut t = StandbyTimeline::default();
        assert_eq!(t.observe(&standby("a", Some(2), 1)), 2);
        // The primary died: no walreceiver, the control file still says 1.
        assert_eq!(t.observe(&standby("a", None, 1)), 2);
        assert_eq!(t.observe(&standby("a", None, 1)), 2);
        // Streaming again from a primary on timeline 3.
        assert_eq!(t.observe(&standby("a", Some(3), 1)), 3);
        assert_eq!(t.observe(&standby("a", None, 1)), 3);
    }

    #[test]
    fn a_restarted_postmaster_is_judged_anew() {
        let mut t = StandbyTimeline::default();
        assert_eq!(t.observe(&standby("a", Some(2), 1)), 2);
        // A new postmaster (pg_rewind, a resync) starts from what its files say.
        assert_eq!(t.observe(&standby("b", None, 1)), 1);
        assert_eq!(t.observe(&standby("b", None, 2)), 2);
    }

    #[test]
    fn a_promoted_standby_reports_its_own_timeline() {
        let mut t = StandbyTimeline::default();
        assert_eq!(t.observe(&standby("a", Some(2), 2)), 2);
        let mut primary = standby("a", None, 2);
        primary.in_recovery = false;
        primary.timeline_id = 3;
        assert_eq!(t.observe(&primary), 3);
    }

    #[test]
    fn a_restartpoint_is_due_while_the_control_file_lags() {
        let mut t = StandbyTimeline::default();
        assert_eq!(t.restartpoint_due(&standby("a", Some(2), 1)), Some(true));
        assert_eq!(t.restartpoint_due(&standby("a", Some(2), 1)), Some(false));
        assert_eq!(t.restartpoint_due(&standby("a", Some(2), 2)), None);
        assert_eq!(t.restartpoint_due(&standby("a", None, 1)), None);
        assert_eq!(t.restartpoint_due(&standby("a", Some(3), 2)), Some(true));
    }
}
