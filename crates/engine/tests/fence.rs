//! The proxy's fence: the spec's proxyTimeout applies from the first read; a lower one at
//! once; a higher one only once no info announcing the lower one can be in the store.

use std::time::Duration;
use stolon_engine::proxy::fence::{ProxyFence, DEFAULT_PROXY_TIMEOUT};

fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// One successful check that began at `started`, read `timeout` and published an info with
/// the proxy's TTL (twice the timeout, at least 3 s) at `started` + 10 ms.
fn check(fence: &mut ProxyFence, started: Duration, timeout: Duration) -> Duration {
    let announced = fence.read_spec(started, timeout);
    let published = started + ms(10);
    fence.announced(announced, published + (2 * announced).max(s(3)));
    fence.renewed(started);
    announced
}

#[test]
fn before_any_check_the_proxy_has_no_deadline() {
    let fence = ProxyFence::default();
    assert_eq!(fence.deadline(), None);
    assert!(!fence.expired(s(1_000)));
    assert_eq!(fence.enforced(s(0)), DEFAULT_PROXY_TIMEOUT);
}

#[test]
fn the_spec_timeout_applies_from_the_first_read() {
    let mut fence = ProxyFence::default();
    assert_eq!(check(&mut fence, s(10), s(3)), s(3));
    assert_eq!(fence.deadline(), Some(s(13)));
    assert!(!fence.expired(s(13) - ms(1)));
    assert!(fence.expired(s(13)));
}

#[test]
fn each_successful_check_moves_the_deadline_from_its_start() {
    let mut fence = ProxyFence::default();
    check(&mut fence, s(10), s(3));
    check(&mut fence, s(11), s(3));
    assert_eq!(fence.deadline(), Some(s(14)));
    // A check that fails (no renewal) leaves the deadline where the last success put it.
    fence.read_spec(s(12), s(3));
    assert_eq!(fence.deadline(), Some(s(14)));
}

#[test]
fn a_lower_timeout_is_enforced_before_its_info_is_published() {
    let mut fence = ProxyFence::default();
    check(&mut fence, s(10), s(15));
    assert_eq!(fence.deadline(), Some(s(25)));
    // The next check reads 3 s: should its publish be confirmed or not, a sentinel may see
    // the 3 s announcement, so the deadline shrinks as soon as the spec is read.
    assert_eq!(fence.read_spec(s(11), s(3)), s(3));
    assert_eq!(fence.deadline(), Some(s(14)));
    assert_eq!(fence.enforced(s(11)), s(3));
    fence.announced(s(3), s(11) + s(6));
    fence.renewed(s(11));
    assert_eq!(fence.deadline(), Some(s(14)));
}

#[test]
fn a_higher_timeout_waits_until_the_lower_announcement_has_expired() {
    let mut fence = ProxyFence::default();
    check(&mut fence, s(10), s(3));
    check(&mut fence, s(11), s(3)); // info valid until 11.01 + 6 = 17.01
                                    // The spec now says 10 s: announced at once...
    assert_eq!(check(&mut fence, s(12), s(10)), s(10));
    // ...but 3 s stays enforced while the 3 s info may be in the store.
    assert_eq!(fence.enforced(s(12)), s(3));
    assert_eq!(fence.deadline(), Some(s(15)));
    check(&mut fence, s(17), s(10));
    assert_eq!(fence.deadline(), Some(s(20)), "17.01 has not passed at 17");
    check(&mut fence, s(18), s(10));
    assert_eq!(fence.enforced(s(18)), s(10));
    assert_eq!(fence.deadline(), Some(s(28)));
}

#[test]
fn an_announcement_whose_publish_failed_still_counts() {
    let mut fence = ProxyFence::default();
    check(&mut fence, s(10), s(3));
    // The publish of a 3 s info returned an error, yet may have been written.
    let announced = fence.read_spec(s(20), s(3));
    fence.announced(announced, s(26));
    // The spec is raised right after: 3 s stays enforced until that info has expired.
    check(&mut fence, s(21), s(10));
    assert_eq!(fence.deadline(), Some(s(24)));
}
