//! The manifests the suites apply, built in one place: JSON merge patches,
//! the Kubernetes suites' RaftCluster, and a RaftClusterBackup.

use serde_json::{json, Value};

/// The raft-node image both Kubernetes suites run (built from this
/// repository: loaded into kind, mapped to the binary by the process kubelet).
pub const NODE_IMAGE: &str = "raftlane/raft-node:e2e";
/// The same image under a second tag: a rolling update's new revision.
pub const NODE_IMAGE_NEXT: &str = "raftlane/raft-node:e2e-next";
/// An image no registry serves and the process kubelet maps to nothing: a
/// revision whose members never start.
pub const BROKEN_IMAGE: &str = "raftlane/raft-node-broken:e2e";

/// The image a Kubernetes suite rolls to: [`NODE_IMAGE_NEXT`] when it
/// `works`, else [`BROKEN_IMAGE`].
pub fn rollout_image(works: bool) -> &'static str {
    match works {
        true => NODE_IMAGE_NEXT,
        false => BROKEN_IMAGE,
    }
}

/// `patch` merged into `into` (JSON merge patch: objects merge, null removes).
pub fn merge(into: &mut Value, patch: Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                if v.is_null() {
                    a.remove(&k);
                } else {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (a, b) => *a = b,
    }
}

/// The Kubernetes suites' RaftCluster `name`: `replicas` members of
/// [`NODE_IMAGE`] on 256Mi volumes that go with the members, `spec` merged
/// into its spec.
pub fn cluster(name: &str, replicas: u32, spec: Value) -> Value {
    let mut m = json!({
        "apiVersion": "raftlane.io/v1alpha1",
        "kind": "RaftCluster",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "image": NODE_IMAGE,
            "storage": {
                "size": "256Mi",
                "retentionPolicy": {"whenScaled": "Delete", "whenDeleted": "Delete"},
            },
        },
    });
    merge(&mut m["spec"], spec);
    m
}

/// RaftClusterBackup `name` of RaftCluster `cluster`, `spec` merged over
/// `{cluster}`.
pub fn backup(name: &str, cluster: &str, spec: Value) -> Value {
    let mut full = json!({ "cluster": cluster });
    merge(&mut full, spec);
    json!({
        "apiVersion": "raftlane.io/v1alpha1",
        "kind": "RaftClusterBackup",
        "metadata": {"name": name},
        "spec": full,
    })
}
