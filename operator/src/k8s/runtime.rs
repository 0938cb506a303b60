//! The Kubernetes [`Runtime`]: a member is a bare Pod on its own PVC. Pods
//! are bare (not a StatefulSet) because only the operator knows when a member
//! may go: after it has left the raft membership.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::crd::{RaftCluster, Retention};
use crate::k8s::resources::{
    member_pod, pod_name, selector, volume_claim, ADMIN_PORT, CLIENT_PORT, CLUSTER_UID_LABEL,
    MEMBER_ID_LABEL, PEER_PORT, RETIRED_LABEL,
};
use crate::runtime::{Addrs, Member, Runtime};

/// Members of one RaftCluster as Pods and PVCs in its namespace.
pub struct KubeRuntime {
    cluster: RaftCluster,
    pods: Api<Pod>,
    claims: Api<PersistentVolumeClaim>,
    /// Live (not retired) volumes by member id, as of the last `list`.
    volumes: BTreeMap<u64, String>,
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

/// Volumes of this cluster incarnation, retired ones included.
pub async fn cluster_volumes(
    claims: &Api<PersistentVolumeClaim>,
    rc: &RaftCluster,
) -> kube::Result<Vec<PersistentVolumeClaim>> {
    let uid = rc.uid().unwrap_or_default();
    let list = claims
        .list(&ListParams::default().labels(&format!(
            "{},{CLUSTER_UID_LABEL}={uid}",
            selector(&rc.name_any())
        )))
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
            claims: Api::namespaced(client, &ns),
            volumes: BTreeMap::new(),
        }
    }

    fn owned(&self, pod: &Pod) -> bool {
        let uid = self.cluster.uid();
        pod.owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
    }
}

impl Runtime for KubeRuntime {
    async fn list(&mut self) -> anyhow::Result<Vec<Member>> {
        let name = self.cluster.name_any();
        let pods = self
            .pods
            .list(&ListParams::default().labels(&selector(&name)))
            .await?;
        let mut members = Vec::new();
        for pod in pods.items.iter().filter(|p| self.owned(p)) {
            let Some(id) = member_id(pod.labels()) else {
                continue;
            };
            let status = pod.status.as_ref();
            let phase = status.and_then(|s| s.phase.as_deref());
            // A bare pod that ended (evicted, failed) never runs again: delete
            // it so the member is recreated on its volume.
            if matches!(phase, Some("Failed" | "Succeeded"))
                && pod.metadata.deletion_timestamp.is_none()
            {
                delete_gone(&self.pods, &pod.name_any()).await?;
            }
            let ip = status
                .and_then(|s| s.pod_ip.clone())
                .filter(|_| pod.metadata.deletion_timestamp.is_none())
                .filter(|_| !matches!(phase, Some("Failed" | "Succeeded")));
            members.push(Member {
                id,
                addrs: ip.map(|ip| Addrs {
                    peer: format!("{ip}:{PEER_PORT}"),
                    client: format!("{ip}:{CLIENT_PORT}"),
                    admin: format!("{ip}:{ADMIN_PORT}"),
                }),
            });
        }
        self.volumes = cluster_volumes(&self.claims, &self.cluster)
            .await?
            .into_iter()
            .filter(|c| !c.labels().contains_key(RETIRED_LABEL))
            .filter_map(|c| Some((member_id(c.labels())?, c.name_any())))
            .collect();
        Ok(members)
    }

    async fn create(
        &mut self,
        id: u64,
        initial_voters: Option<&BTreeSet<u64>>,
        _peers: &BTreeMap<u64, String>,
    ) -> anyhow::Result<Member> {
        let claim = match self.volumes.get(&id) {
            Some(c) => c.clone(),
            None => {
                let c = self
                    .claims
                    .create(&PostParams::default(), &volume_claim(&self.cluster, id))
                    .await?
                    .name_any();
                self.volumes.insert(id, c.clone());
                c
            }
        };
        let pod = member_pod(&self.cluster, id, &claim, initial_voters);
        match self.pods.create(&PostParams::default(), &pod).await {
            // Created since the list (by a previous pass): it is there.
            Err(e) if is_conflict(&e) => {}
            r => {
                r?;
            }
        }
        Ok(Member { id, addrs: None })
    }

    async fn delete(&mut self, id: u64) -> anyhow::Result<()> {
        // Volume first: a crash before the pod goes leaves a pod the next
        // pass deletes again, never a live volume of a member that left.
        if let Some(claim) = self.volumes.remove(&id) {
            match self.cluster.spec.storage.retention_policy.when_scaled {
                Retention::Delete => delete_gone(&self.claims, &claim).await?,
                Retention::Retain => retire(&self.claims, &claim).await?,
            }
        }
        delete_gone(&self.pods, &pod_name(&self.cluster.name_any(), id)).await?;
        Ok(())
    }

    fn with_data(&self) -> anyhow::Result<BTreeSet<u64>> {
        Ok(self.volumes.keys().copied().collect())
    }
}
