//! The names users and tests see, written once: a member's name, the labels
//! that select a cluster's members, the ports, and the condition types. The
//! Kubernetes resources, the status, the local runtime and the end-to-end
//! targets all take them from here, so they cannot drift apart.

use std::collections::BTreeMap;

/// A member's raft peer port (raft messages and forwarded client requests).
pub const PEER_PORT: u16 = 7000;
/// The KV client port.
pub const CLIENT_PORT: u16 = 7001;
/// The admin port (`NodeAdmin`).
pub const ADMIN_PORT: u16 = 7002;
/// `/metrics`, `/healthz`, `/readyz`.
pub const METRICS_PORT: u16 = 7003;

/// Condition types of a RaftCluster's status.
pub mod conditions {
    /// A leader and a healthy quorum of voters.
    pub const AVAILABLE: &str = "Available";
    /// A step is being taken or waited for, or a rollout runs.
    pub const PROGRESSING: &str = "Progressing";
    /// Something is missing, unhealthy or stalled.
    pub const DEGRADED: &str = "Degraded";
    /// `spec.paused`: observed, nothing done.
    pub const RECONCILIATION_PAUSED: &str = "ReconciliationPaused";
}

/// Member `id` of `cluster`: `<cluster>-<ordinal>`, ordinal = id - 1. Its pod
/// and hostname on Kubernetes, and its name in the status in both runtimes.
pub fn member_name(cluster: &str, id: u64) -> String {
    format!("{cluster}-{}", id - 1)
}

/// Labels shared by every member object of `cluster` (the status selector).
pub fn selector_labels(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "raft-node".into()),
        ("app.kubernetes.io/instance".into(), cluster.into()),
    ])
}

/// [`selector_labels`] as a label selector string for list calls.
pub fn selector(cluster: &str) -> String {
    selector_labels(cluster)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
