//! The names a component makes for what it publishes (an info's uid, a keeper's boot id, a
//! new cluster's uid), drawn from a seed the daemon takes from the OS and the simulator
//! from its run's seed: the engine's only randomness, and a replayable one.

/// splitmix64: small, fast, and every seed gives a full-period sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    state: u64,
}

impl Ids {
    pub fn new(seed: u64) -> Ids {
        Ids { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Eight hex digits, as Stolon's uids.
    pub fn uid(&mut self) -> String {
        format!("{:08x}", self.next_u64() >> 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_eight_hex_digits_that_follow_from_the_seed() {
        let (mut a, mut b) = (Ids::new(7), Ids::new(7));
        let uids: Vec<String> = (0..100).map(|_| a.uid()).collect();
        assert!(uids
            .iter()
            .all(|u| u.len() == 8 && u.chars().all(|c| c.is_ascii_hexdigit())));
        assert_eq!(uids, (0..100).map(|_| b.uid()).collect::<Vec<_>>());
        let distinct: std::collections::BTreeSet<&String> = uids.iter().collect();
        assert_eq!(distinct.len(), 100);
        assert_ne!(Ids::new(8).uid(), uids[0]);
    }
}
