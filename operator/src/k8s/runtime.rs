//! The Kubernetes [`Runtime`]: a member is a bare Pod on its own PVC. Pods
//! are bare (not a StatefulSet) because only the operator knows when a member
//! may go: after it has left the raft membership.
//!
//! A member whose `Status` showed raft state has its volume and its pod
//! annotated as holding state; raft-node reads the pod's annotation at every
//! start (see [`member_pod`]). A pod whose container last exited with
//! [`WIPED_EXIT_CODE`] (and is not running) found that volume empty: the
//! volume is retired and the pod deleted, so the planner sees a member
//! without storage (data lost) and replaces it.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::certs::Leaf;
use crate::crd::{RaftCluster, Retention};
use crate::k8s::resources::{
    leaf_secret_name, member_name, member_pod, selector, volume_claim, ADMIN_PORT, CLIENT_PORT,
    CLUSTER_UID_LABEL, CONTAINER, HOLDS_STATE_ANNOTATION, MEMBER_ID_LABEL, PEER_PORT,
    RETIRED_LABEL, REVISION_LABEL,
};
use crate::plan::Member;
use crate::runtime::{Runtime, WIPED_EXIT_CODE};

/// Members of one RaftCluster as Pods and PVCs in its namespace.
pub struct KubeRuntime {
    cluster: RaftCluster,
    pods: Api<Pod>,
    claims: Api<PersistentVolumeClaim>,
    secrets: Api<Secret>,
    /// Live (not retired, not being deleted) volumes by member id, as of the
    /// last `list`.
    volumes: BTreeMap<u64, Volume>,
    /// Member pods (by id, as of the last `list`) not yet annotated as
    /// holding state.
    unmarked_pods: BTreeMap<u64, String>,
}

struct Volume {
    name: String,
    /// Marked once its member's `Status` showed raft state: it holds it.
    holds_state: bool,
    /// The claim as listed (or created), for volume growth.
    claim: PersistentVolumeClaim,
}

fn member_id(meta_labels: &BTreeMap<String, String>) -> Option<u64> {
    meta_labels.get(MEMBER_ID_LABEL)?.parse().ok()
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// The volume a member pod mounts.
fn claim_of(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()?
        .volumes
        .as_ref()?
        .iter()
        .find_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.as_str())
}

/// True when the pod's raft-node is not running and its last exit was the
/// refusal of an empty data dir under `--expect-state`. While the kubelet
/// backs off, that exit is the last state; right after it, the state itself.
fn refused_wiped(pod: &Pod) -> bool {
    let Some(c) = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == CONTAINER))
    else {
        return false;
    };
    let state = c.state.as_ref();
    if state.is_some_and(|s| s.running.is_some()) {
        return false;
    }
    state
        .and_then(|s| s.terminated.as_ref())
        .or_else(|| c.last_state.as_ref()?.terminated.as_ref())
        .is_some_and(|t| t.exit_code == WIPED_EXIT_CODE)
}

/// How long past the end of its grace period a pod may still be being
/// deleted before it counts as stuck: a kubelet that answers confirms a
/// deletion by then (it kills the container when the grace period ends).
pub const FORCE_DELETE_AFTER: std::time::Duration = std::time::Duration::from_secs(15);

/// True when `pod` is being deleted and its deletion time (set to the end of
/// its grace period) passed more than [`FORCE_DELETE_AFTER`] before `now`.
fn deletion_overdue(pod: &Pod, now: jiff::Timestamp) -> bool {
    pod.metadata
        .deletion_timestamp
        .as_ref()
        .is_some_and(|t| now.duration_since(t.0).as_secs() > FORCE_DELETE_AFTER.as_secs() as i64)
}

/// Deletes a pod with no grace period (the API server removes it without
/// waiting for its kubelet), treating "already gone" as done.
async fn force_delete(pods: &Api<Pod>, name: &str) -> kube::Result<()> {
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    match pods.delete(name, &now).await {
        Err(e) if is_not_found(&e) => Ok(()),
        r => r.map(|_| ()),
    }
}

/// Volumes of one cluster incarnation (`uid`), retired ones included.
pub async fn cluster_volumes(
    claims: &Api<PersistentVolumeClaim>,
    cluster: &str,
    uid: &str,
) -> kube::Result<Vec<PersistentVolumeClaim>> {
    let list = claims
        .list(
            &ListParams::default()
                .labels(&format!("{},{CLUSTER_UID_LABEL}={uid}", selector(cluster))),
        )
        .await?;
    Ok(list.items)
}

/// Marks a volume as retired: kept, never mounted again, and no longer
/// collected with the cluster.
pub async fn retire(claims: &Api<PersistentVolumeClaim>, name: &str) -> kube::Result<()> {
    let patch = json!({
        "metadata": {
            "labels": {RETIRED_LABEL: "true"},
            "ownerReferences": null,
        }
    });
    claims
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Deletes an object, treating "already gone" as done.
pub async fn delete_gone<K>(api: &Api<K>, name: &str) -> kube::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Err(e) if is_not_found(&e) => Ok(()),
        r => r.map(|_| ()),
    }
}

impl KubeRuntime {
    pub fn new(client: Client, cluster: &RaftCluster) -> KubeRuntime {
        let ns = cluster.namespace().unwrap_or_default();
        KubeRuntime {
            cluster: cluster.clone(),
            pods: Api::namespaced(client.clone(), &ns),
            claims: Api::namespaced(client.clone(), &ns),
            secrets: Api::namespaced(client, &ns),
            volumes: BTreeMap::new(),
            unmarked_pods: BTreeMap::new(),
        }
    }

    fn owned(&self, pod: &Pod) -> bool {
        let uid = self.cluster.uid();
        pod.owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
    }

    /// The live volumes (not retired, not being deleted) as of the last
    /// `list`, with those created since.
    pub fn claims(&self) -> Vec<PersistentVolumeClaim> {
        self.volumes.values().map(|v| v.claim.clone()).collect()
    }

    /// The PVC API of the cluster's namespace.
    pub fn claims_api(&self) -> &Api<PersistentVolumeClaim> {
        &self.claims
    }

    /// Fails unless the existing pod `name` is this cluster's own.
    async fn check_owned(&self, name: &str) -> anyhow::Result<()> {
        let pod = self.pods.get(name).await?;
        anyhow::ensure!(
            self.owned(&pod),
            "pod {name} exists but belongs to another owner; delete it to let member {name} start"
        );
        Ok(())
    }
}

impl Runtime for KubeRuntime {
    async fn list(&mut self, repair: bool) -> anyhow::Result<Vec<Member>> {
        let name = self.cluster.name_any();
        let uid = self.cluster.uid().unwrap_or_default();
        // Volumes first: a pod on a retired volume is no member.
        let volumes = cluster_volumes(&self.claims, &name, &uid).await?;
        let retired: BTreeSet<String> = volumes
            .iter()
            .filter(|c| c.labels().contains_key(RETIRED_LABEL))
            .map(|c| c.name_any())
            .collect();
        self.volumes.clear();
        for c in volumes
            .iter()
            .filter(|c| !c.labels().contains_key(RETIRED_LABEL))
        {
            // A volume being deleted is no storage (its data goes with its pod).
            if c.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(id) = member_id(c.labels()) else {
                continue;
            };
            let volume = Volume {
                holds_state: c.annotations().contains_key(HOLDS_STATE_ANNOTATION),
                name: c.name_any(),
                claim: c.clone(),
            };
            if let Some(other) = self.volumes.insert(id, volume) {
                anyhow::bail!(
                    "member {id} has two live volumes ({} and {}): delete the one its pod \
                     does not mount",
                    other.name,
                    c.name_any()
                );
            }
        }
        let pods = self
            .pods
            .list(&ListParams::default().labels(&selector(&name)))
            .await?;
        let mut members = Vec::new();
        self.unmarked_pods.clear();
        let owned: Vec<&Pod> = pods.items.iter().filter(|p| self.owned(p)).collect();
        for pod in owned {
            let Some(id) = member_id(pod.labels()) else {
                continue;
            };
            let status = pod.status.as_ref();
            // A bare pod that ended (evicted, failed) never runs again, and a
            // pod on a retired volume belongs to a member that already left
            // (a delete cut short): delete either. A pod whose volume is being
            // deleted keeps running: it is still a member until it goes.
            let ended = matches!(
                status.and_then(|s| s.phase.as_deref()),
                Some("Failed" | "Succeeded")
            );
            let on_retired = claim_of(pod).is_some_and(|c| retired.contains(c));
            let deleting = pod.metadata.deletion_timestamp.is_some();
            // Volume first, as in `delete`: after a crash in between, the pod
            // is found on a retired volume and deleted.
            let wiped =
                self.volumes.get(&id).map(|v| v.name.clone()).filter(|v| {
                    repair && !deleting && claim_of(pod) == Some(v) && refused_wiped(pod)
                });
            if let Some(volume) = wiped {
                tracing::warn!(
                    member = id,
                    volume,
                    "member {id} refused to start: its volume is empty although it held \
                     state (wiped); the volume is retired and the member replaced"
                );
                retire(&self.claims, &volume).await?;
                self.volumes.remove(&id);
                delete_gone(&self.pods, &pod.name_any()).await?;
                continue;
            }
            if (ended || on_retired) && !deleting && repair {
                delete_gone(&self.pods, &pod.name_any()).await?;
            }
            // A pod whose member was given up (its volume retired or being
            // deleted: replaced after a failure, or removed) and whose
            // kubelet has not confirmed its deletion long past the grace
            // period is on a node that is gone or cut off: nothing else
            // will ever remove it, and while it exists the member's new pod
            // (same name) cannot be created. Removed from the API at once;
            // its volume is retired, so its process, if it still runs
            // somewhere, holds data no member uses again.
            let live = self.volumes.get(&id).map(|v| v.name.as_str());
            if repair && claim_of(pod) != live && deletion_overdue(pod, jiff::Timestamp::now()) {
                tracing::warn!(
                    member = id,
                    pod = pod.name_any(),
                    node = pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                    "the pod of a replaced member is still being deleted {}s past its grace \
                     period (its node does not answer): deleted with no grace",
                    FORCE_DELETE_AFTER.as_secs()
                );
                force_delete(&self.pods, &pod.name_any()).await?;
                continue;
            }
            if !deleting && !pod.annotations().contains_key(HOLDS_STATE_ANNOTATION) {
                self.unmarked_pods.insert(id, pod.name_any());
            }
            let ip = status
                .and_then(|s| s.pod_ip.clone())
                .filter(|_| !on_retired && !ended && !deleting)
                // An IPv6 pod IP is bracketed in host:port form.
                .map(|ip| {
                    if ip.contains(':') {
                        format!("[{ip}]")
                    } else {
                        ip
                    }
                });
            let member = match ip {
                Some(ip) => Member::at(
                    id,
                    format!("{ip}:{PEER_PORT}"),
                    format!("{ip}:{CLIENT_PORT}"),
                    format!("{ip}:{ADMIN_PORT}"),
                ),
                None => Member::unreachable(id),
            };
            members.push(member.at_revision(pod.labels().get(REVISION_LABEL).cloned()));
        }
        Ok(members)
    }

    async fn create(
        &mut self,
        id: u64,
        initial_voters: Option<&BTreeSet<u64>>,
        _peers: &BTreeMap<u64, String>,
    ) -> anyhow::Result<Member> {
        if let Some(r) = self
            .cluster
            .spec
            .restore
            .as_ref()
            .filter(|_| initial_voters.is_some())
        {
            anyhow::ensure!(
                r.backup.is_some(),
                "spec.restore.backup must name the RaftClusterBackup whose volume holds {}",
                r.file
            );
            anyhow::ensure!(
                !r.file.contains('/') && r.file != ".." && r.file != ".",
                "spec.restore.file {:?} must be a file name on the backup volume (as \
                 status.backups[].file lists it), not a path",
                r.file
            );
        }
        let claim = match self.volumes.get(&id) {
            Some(v) => v.name.clone(),
            None => {
                let claim = self
                    .claims
                    .create(&PostParams::default(), &volume_claim(&self.cluster, id))
                    .await?;
                let name = claim.name_any();
                let volume = Volume {
                    name: name.clone(),
                    holds_state: false,
                    claim,
                };
                self.volumes.insert(id, volume);
                name
            }
        };
        let holds_state = self.volumes.get(&id).is_some_and(|v| v.holds_state);
        let pod = member_pod(&self.cluster, id, &claim, initial_voters, holds_state);
        match self.pods.create(&PostParams::default(), &pod).await {
            // Created since the list: fine if it is ours (a pass that crashed).
            Err(e) if is_conflict(&e) => self.check_owned(&pod.name_any()).await?,
            r => {
                r?;
            }
        }
        Ok(Member::unreachable(id))
    }

    async fn delete(&mut self, id: u64) -> anyhow::Result<()> {
        // Volume first: after a crash in between, the next `list` finds the
        // pod on a volume that is no longer live and deletes it.
        if let Some(v) = self.volumes.remove(&id) {
            match self.cluster.spec.storage.retention_policy.when_scaled {
                Retention::Delete => delete_gone(&self.claims, &v.name).await?,
                Retention::Retain => retire(&self.claims, &v.name).await?,
            }
        }
        let name = self.cluster.name_any();
        delete_gone(&self.pods, &member_name(&name, id)).await?;
        // Its certificate goes with it (a member created again gets a new one).
        if self.cluster.spec.tls.enabled && self.cluster.spec.tls.issuer_ref.is_none() {
            let secret = leaf_secret_name(&name, &Leaf::Member(id));
            delete_gone(&self.secrets, &secret).await?;
        }
        Ok(())
    }

    /// Deletes the pod (gracefully: raft-node stops on SIGTERM) and keeps
    /// its volume: the next pass finds the member missing and creates its
    /// pod again from the spec as it is now.
    async fn restart(&mut self, id: u64, _peers: &BTreeMap<u64, String>) -> anyhow::Result<Member> {
        delete_gone(&self.pods, &member_name(&self.cluster.name_any(), id)).await?;
        Ok(Member::unreachable(id))
    }

    /// Marks the volumes of members holding state, once each (one annotation
    /// write in a volume's life), then their pods: a volume first, so a pod
    /// created after a crash in between is created marked. Until then a
    /// volume counts as empty, so a member of a forming cluster whose pod
    /// never ran still gets the initial voters; raft-node ignores them on a
    /// volume with state. A pod of a marked volume that lacks the mark (made
    /// before the volume held state) gets it here too.
    async fn record_state(&mut self, holding: &BTreeSet<u64>) -> anyhow::Result<()> {
        let mark = json!({"metadata": {"annotations": {HOLDS_STATE_ANNOTATION: "true"}}});
        for id in holding {
            let Some(v) = self.volumes.get_mut(id).filter(|v| !v.holds_state) else {
                continue;
            };
            self.claims
                .patch(&v.name, &PatchParams::default(), &Patch::Merge(&mark))
                .await?;
            v.holds_state = true;
        }
        for id in self.with_data()? {
            let Some(pod) = self.unmarked_pods.remove(&id) else {
                continue;
            };
            match self
                .pods
                .patch(&pod, &PatchParams::default(), &Patch::Merge(&mark))
                .await
            {
                Err(e) if is_not_found(&e) => {}
                r => {
                    r?;
                }
            }
        }
        Ok(())
    }

    fn with_storage(&self) -> anyhow::Result<BTreeSet<u64>> {
        Ok(self.volumes.keys().copied().collect())
    }

    fn with_data(&self) -> anyhow::Result<BTreeSet<u64>> {
        Ok(self
            .volumes
            .iter()
            .filter(|(_, v)| v.holds_state)
            .map(|(id, _)| *id)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(state: serde_json::Value, last: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "status": {"containerStatuses": [{
                "name": CONTAINER, "image": "i", "imageID": "", "ready": false,
                "restartCount": 1, "state": state, "lastState": last,
            }]},
        }))
        .unwrap()
    }

    #[test]
    fn a_deletion_is_overdue_only_well_past_its_grace_period() {
        let now: jiff::Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let deleting = |at: &str| -> Pod {
            serde_json::from_value(json!({"metadata": {"deletionTimestamp": at}})).unwrap()
        };
        assert!(!deletion_overdue(&Pod::default(), now), "not being deleted");
        assert!(
            !deletion_overdue(&deleting("2026-01-01T00:01:20Z"), now),
            "grace left"
        );
        assert!(
            !deletion_overdue(&deleting("2026-01-01T00:00:50Z"), now),
            "just past"
        );
        assert!(
            deletion_overdue(&deleting("2026-01-01T00:00:40Z"), now),
            "20 s past"
        );
    }

    #[test]
    fn only_a_container_not_running_whose_last_exit_was_the_refusal_reads_as_wiped() {
        let refused = json!({"terminated": {"exitCode": WIPED_EXIT_CODE}});
        let failed = json!({"terminated": {"exitCode": 1}});
        let waiting = json!({"waiting": {"reason": "CrashLoopBackOff"}});
        let running = json!({"running": {}});
        for (state, last, wiped) in [
            (&refused, &json!({}), true),
            (&waiting, &refused, true),
            (&running, &refused, false),
            (&waiting, &failed, false),
            (&failed, &refused, false),
            (&waiting, &json!({}), false),
        ] {
            assert_eq!(
                refused_wiped(&pod(state.clone(), last.clone())),
                wiped,
                "state {state}, last state {last}"
            );
        }
        assert!(!refused_wiped(&Pod::default()), "a pod without status");
    }
}
