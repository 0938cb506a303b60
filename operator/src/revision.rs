//! A spec's revision: what a member runs as, so that a change reaches running
//! members by a rolling update. It covers the fields a member is started
//! with and cannot take in place: the image (the raft-node binary locally),
//! its pull settings, resources, raft settings and placement. `replicas`,
//! `paused`, storage size and the rest are applied without restarting
//! anyone, and `tls` cannot change.

use serde::Serialize;

use crate::crd::{ImagePullPolicy, Placement, PullSecret, RaftClusterSpec, RaftSettings};

/// The fields of a spec a revision covers. Optional fields are skipped when
/// unset, so adding one later leaves existing revisions as they are.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Covered<'a> {
    image: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_pull_policy: Option<ImagePullPolicy>,
    #[serde(skip_serializing_if = "<[PullSecret]>::is_empty")]
    image_pull_secrets: &'a [PullSecret],
    #[serde(skip_serializing_if = "Option::is_none")]
    resources: Option<&'a k8s_openapi::api::core::v1::ResourceRequirements>,
    raft: &'a RaftSettings,
    #[serde(skip_serializing_if = "Option::is_none")]
    placement: Option<&'a Placement>,
}

/// The revision of a member started from a backup (`spec.restore`): never the
/// spec's, so once the cluster has formed the rolling update replaces each
/// such member, one at a time, by one started without the backup. A member
/// that kept `--restore-from` would be refused at its next start (its data
/// then holds state), and on Kubernetes a pod keeps its settings and volumes
/// for life.
pub fn restoring(spec: &RaftClusterSpec) -> String {
    format!("{}-restoring", of(spec))
}

/// The revision of `spec`: CRC32C of the covered fields' JSON, as 8 hex
/// digits (a label value; a collision would only skip one rollout).
pub fn of(spec: &RaftClusterSpec) -> String {
    let covered = Covered {
        image: &spec.image,
        image_pull_policy: spec.image_pull_policy,
        image_pull_secrets: &spec.image_pull_secrets,
        resources: spec.resources.as_ref(),
        raft: &spec.raft,
        placement: spec.placement.as_ref(),
    };
    let json = serde_json::to_vec(&covered).expect("the covered fields serialize");
    format!("{:08x}", crc32c::crc32c(&json))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: serde_json::Value) -> RaftClusterSpec {
        let mut v = serde_json::json!({"replicas": 3});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn only_what_a_member_is_started_with_changes_the_revision() {
        let base = of(&spec(serde_json::json!({})));
        assert_eq!(base.len(), 8);
        for same in [
            serde_json::json!({"replicas": 5}),
            serde_json::json!({"paused": true}),
            serde_json::json!({"storage": {"size": "2Gi"}}),
            serde_json::json!({"failureReplacement": {"after": "10m"}}),
            serde_json::json!({"updateStrategy": {"progressDeadline": "1m"}}),
        ] {
            assert_eq!(of(&spec(same.clone())), base, "{same}");
        }
        for changed in [
            serde_json::json!({"image": "/opt/raft-node-next"}),
            serde_json::json!({"imagePullPolicy": "Always"}),
            serde_json::json!({"raft": {"snapshotEntries": 5000}}),
            serde_json::json!({"resources": {"limits": {"memory": "1Gi"}}}),
            serde_json::json!({"placement": {"nodeSelector": {"disk": "ssd"}}}),
        ] {
            assert_ne!(of(&spec(changed.clone())), base, "{changed}");
        }
    }
}
