//! The names and labels of the objects a cluster keeps in its namespace. Stolon's where
//! Stolon has them, so that its tooling and habits carry over.

use stolon_store::InfoKind;

/// The annotation of the cluster data ConfigMap that holds the cluster data document.
pub const CLUSTER_DATA_ANNOTATION: &str = "stolon-clusterdata";
/// The annotation of an info Lease that holds the component's info document.
pub const STATUS_ANNOTATION: &str = "stolon-status";
/// The label naming the cluster an object belongs to.
pub const CLUSTER_LABEL: &str = "stolon-cluster";
/// The label naming the kind of component an info belongs to.
pub const COMPONENT_LABEL: &str = "component";

/// Every annotation of an object together may hold this many bytes (the API server's
/// `TotalAnnotationSizeLimitB`).
pub const ANNOTATIONS_LIMIT: usize = 256 * 1024;

/// Stolon's ConfigMap name for the cluster data.
pub fn cluster_data(cluster: &str) -> String {
    format!("stolon-cluster-{cluster}")
}

/// The sentinels' election Lease: an object of its own, so that no cluster data write
/// ever races a leader's renewal (Stolon's ConfigMap lock did).
pub fn leader_lease(cluster: &str) -> String {
    format!("stolon-cluster-{cluster}-sentinel-leader")
}

pub fn component(kind: InfoKind) -> &'static str {
    match kind {
        InfoKind::Keeper => "stolon-keeper",
        InfoKind::Sentinel => "stolon-sentinel",
        InfoKind::Proxy => "stolon-proxy",
    }
}

/// The Lease that holds a component's info. Uids allow `_`, object names do not: it
/// becomes `-`, and a short hash of the uid keeps two uids that differ only there apart.
pub fn info_lease(cluster: &str, kind: InfoKind, uid: &str) -> String {
    let mut name = format!("{}-{cluster}-{}", component(kind), uid.replace('_', "-"));
    if uid.contains('_') {
        name.push_str(&format!("-{:08x}", fnv1a(uid)));
    }
    name
}

/// FNV-1a, 32 bits: stable across builds and machines, unlike the standard hasher.
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// Whether `name` is a valid object name part (RFC 1123 label characters): checked on the
/// cluster name once, so that every name above is valid.
pub fn valid_name_part(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_stolon_and_stay_valid() {
        assert_eq!(cluster_data("kube-stolon"), "stolon-cluster-kube-stolon");
        assert_eq!(
            info_lease("c", InfoKind::Keeper, "keeper0"),
            "stolon-keeper-c-keeper0"
        );
        let a = info_lease("c", InfoKind::Keeper, "a_b");
        let b = info_lease("c", InfoKind::Keeper, "a-b");
        assert_ne!(a, b);
        assert!(a.starts_with("stolon-keeper-c-a-b-"), "{a}");
        assert_ne!(
            info_lease("c", InfoKind::Keeper, "x_y_"),
            info_lease("c", InfoKind::Keeper, "x__y"),
        );
    }

    #[test]
    fn cluster_names_that_cannot_name_objects_are_refused() {
        for ok in ["a", "kube-stolon", "stolon-stolon", "c1"] {
            assert!(valid_name_part(ok), "{ok}");
        }
        for bad in ["", "Stolon", "a_b", "-a", "a-", "a.b", &"x".repeat(41)] {
            assert!(!valid_name_part(bad), "{bad}");
        }
    }
}
