//! What the two Kubernetes targets share, written once: kubectl actions on
//! one RaftCluster (scale, patch, apply, delete a pod or a volume, roll the
//! operator's Deployment), reads of its status, pods, volumes and Secrets as
//! kubectl prints them, and the suite sequence both suites run. The kind
//! target (`kind.rs`) and the control-plane target (`controlplane/target.rs`)
//! add only what their runtime does differently: how a member's port is
//! reached (a port-forward, or the pod IP) and how a member's process or
//! volume is reached (inside a kind node, or on this host).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use raft_operator::backup::RaftClusterBackupStatus;
use raft_operator::crd::RaftClusterStatus;
use raft_operator::naming::{member_name, selector};
use raftlane_tls::Dialer;
use serde_json::Value;

use crate::kind::cmd::{blocking, output};
use crate::{scenarios, wait_for, Target};

/// Bound on one kubectl call: above the longest `--timeout` a call passes
/// (`rollout status --timeout=90s`, `delete --timeout=120s`), so kubectl's
/// own timeout speaks first.
const CALL: Duration = Duration::from_secs(150);
/// From `kubectl delete raftcluster` to its pods gone.
const PODS_GONE: Duration = Duration::from_secs(120);

/// The operator's Helm release in both suites; its objects carry
/// `app.kubernetes.io/instance=<it>`.
pub const RELEASE: &str = "raft-operator";

/// The selector of the operator's own pods (the chart's instance label).
pub fn operator_selector() -> String {
    format!("app.kubernetes.io/instance={RELEASE}")
}

/// kubectl bound to one cluster (a kube context, a kubeconfig) and one
/// namespace.
pub trait Kubectl: Clone + Send + Sync + 'static {
    /// `kubectl <cluster and namespace flags> ARGS`.
    fn command(&self, args: &[&str]) -> Command;

    /// One kubectl call off the async workers, bounded by [`CALL`],
    /// returning its stdout.
    #[allow(async_fn_in_trait)]
    async fn call(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = self.command(args);
        blocking(move || output(&mut cmd, CALL)).await
    }

    /// `kubectl get ... -o json`, parsed; None when `--ignore-not-found`
    /// found nothing.
    #[allow(async_fn_in_trait)]
    async fn get_json(&self, args: &[&str]) -> anyhow::Result<Option<Value>> {
        let mut full = vec!["get", "--ignore-not-found", "--output", "json"];
        full.extend_from_slice(args);
        let text = self.call(&full).await?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        Ok(Some(serde_json::from_str(&text)?))
    }
}

/// How [`Target::scale`] sets `spec.replicas`; the suites use both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleBy {
    /// `kubectl scale`, through the scale subresource.
    Subresource,
    /// `kubectl patch` of `spec.replicas`, as an edit of the spec.
    Patch,
}

/// What the targets need of a member pod, from kubectl's JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberPod {
    pub uid: String,
    /// Phase Running and not being deleted: its ports answer.
    pub running: bool,
    pub restarts: u64,
    pub ip: Option<String>,
    /// The PVC it mounts.
    pub claim: Option<String>,
    /// The node it is scheduled on.
    pub node: Option<String>,
}

impl MemberPod {
    pub fn from_json(v: &Value) -> MemberPod {
        let restarts = v["status"]["containerStatuses"].as_array().map_or(0, |cs| {
            cs.iter().filter_map(|c| c["restartCount"].as_u64()).sum()
        });
        let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
        MemberPod {
            uid: text(&v["metadata"]["uid"]).unwrap_or_default(),
            running: v["status"]["phase"] == "Running"
                && v["metadata"]["deletionTimestamp"].is_null(),
            restarts,
            ip: text(&v["status"]["podIP"]),
            claim: v["spec"]["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|v| text(&v["persistentVolumeClaim"]["claimName"])),
            node: text(&v["spec"]["nodeName"]),
        }
    }

    /// The pod's UID and its containers' restart count: a new pod or a
    /// restarted container both change it.
    pub fn incarnation(&self) -> String {
        format!("{}/{}", self.uid, self.restarts)
    }
}

/// One RaftCluster, and the kubectl actions both Kubernetes targets take on
/// it the same way.
pub struct KubeCore<K> {
    pub kube: K,
    pub name: String,
    /// The operator's Deployment, as `deployment/<name>`.
    pub operator: String,
    /// The way the next [`Target::scale`] edits the resource.
    pub scale_by: ScaleBy,
    /// Where applied manifests are written.
    manifests: tempfile::TempDir,
}

impl<K: Kubectl> KubeCore<K> {
    pub fn new(kube: K, name: &str) -> anyhow::Result<KubeCore<K>> {
        Ok(KubeCore {
            kube,
            name: name.to_string(),
            operator: format!("deployment/{RELEASE}"),
            scale_by: ScaleBy::Subresource,
            manifests: tempfile::tempdir()?,
        })
    }

    /// The same kubectl and operator, for RaftCluster `name`.
    pub fn of(&self, name: &str) -> anyhow::Result<KubeCore<K>> {
        KubeCore::new(self.kube.clone(), name)
    }

    /// `kubectl apply` of `manifest`, written as `<stem>.json`.
    pub async fn apply(&self, stem: &str, manifest: &Value) -> anyhow::Result<()> {
        let path = self.manifests.path().join(format!("{stem}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(manifest)?)
            .with_context(|| format!("writing {}", path.display()))?;
        let path = path.to_str().expect("a UTF-8 temporary path");
        self.kube.call(&["apply", "-f", path]).await?;
        Ok(())
    }

    pub async fn scale(&self, replicas: u32) -> anyhow::Result<()> {
        let resource = format!("raftcluster/{}", self.name);
        match self.scale_by {
            ScaleBy::Subresource => {
                let n = format!("--replicas={replicas}");
                self.kube.call(&["scale", &resource, &n]).await?
            }
            ScaleBy::Patch => {
                let patch = format!(r#"{{"spec":{{"replicas":{replicas}}}}}"#);
                let args = ["patch", &resource, "--type=merge", "--patch", &patch];
                self.kube.call(&args).await?
            }
        };
        Ok(())
    }

    pub async fn patch_spec(&self, spec: Value) -> anyhow::Result<()> {
        let args = crate::spec_patch(&self.name, spec);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.kube.call(&args).await?;
        Ok(())
    }

    /// `kubectl apply` of RaftClusterBackup `name` of this cluster.
    pub async fn apply_backup(&self, name: &str, spec: Value) -> anyhow::Result<()> {
        let manifest = crate::manifests::backup(name, &self.name, spec);
        self.apply(&format!("backup-{name}"), &manifest).await
    }

    /// `kubectl apply` of the suites' RaftCluster `name` with `spec` merged
    /// in; the new cluster's core.
    pub async fn apply_cluster(
        &self,
        name: &str,
        replicas: u32,
        spec: Value,
    ) -> anyhow::Result<KubeCore<K>> {
        self.apply(name, &crate::manifests::cluster(name, replicas, spec))
            .await?;
        self.of(name)
    }

    /// The `.status` of RaftClusterBackup `name`; None while the operator
    /// wrote none (or the resource is not there).
    pub async fn backup_status(
        &self,
        name: &str,
    ) -> anyhow::Result<Option<RaftClusterBackupStatus>> {
        let Some(b) = self.kube.get_json(&["raftclusterbackup", name]).await? else {
            return Ok(None);
        };
        match &b["status"] {
            Value::Null => Ok(None),
            s => Ok(Some(serde_json::from_value(s.clone())?)),
        }
    }

    pub async fn status(&self) -> anyhow::Result<Option<RaftClusterStatus>> {
        let rc = self
            .kube
            .get_json(&["raftcluster", &self.name])
            .await?
            .with_context(|| format!("RaftCluster {} not found", self.name))?;
        match &rc["status"] {
            Value::Null => Ok(None),
            s => Ok(Some(serde_json::from_value(s.clone())?)),
        }
    }

    /// Member `id`'s pod, if it has one.
    pub async fn pod(&self, id: u64) -> anyhow::Result<Option<MemberPod>> {
        let pod = self
            .kube
            .get_json(&["pod", &member_name(&self.name, id)])
            .await?;
        Ok(pod.as_ref().map(MemberPod::from_json))
    }

    /// Member pods by name.
    pub async fn pods(&self) -> anyhow::Result<std::collections::HashMap<String, MemberPod>> {
        let list = self
            .kube
            .get_json(&["pods", "--selector", &selector(&self.name)])
            .await?
            .unwrap_or_default();
        let items = list["items"].as_array().cloned().unwrap_or_default();
        Ok(items
            .iter()
            .map(|p| {
                let name = p["metadata"]["name"].as_str().unwrap_or_default();
                (name.to_string(), MemberPod::from_json(p))
            })
            .collect())
    }

    /// The PVC member `id`'s pod mounts.
    pub async fn claim(&self, id: u64) -> anyhow::Result<String> {
        self.pod(id)
            .await?
            .with_context(|| format!("member {id} has no pod"))?
            .claim
            .with_context(|| format!("member {id}'s pod has no volume claim"))
    }

    /// The directory behind PVC `claim` (a hostPath or local PV), on the
    /// node that holds it.
    pub async fn volume_dir(&self, claim: &str) -> anyhow::Result<String> {
        let pvc = self.kube.get_json(&["pvc", claim]).await?;
        let pv = pvc
            .as_ref()
            .and_then(|c| c["spec"]["volumeName"].as_str())
            .with_context(|| format!("{claim} is not bound"))?
            .to_string();
        let pv = self
            .kube
            .get_json(&["pv", &pv])
            .await?
            .with_context(|| format!("PV {pv} not found"))?;
        Ok(pv["spec"]["hostPath"]["path"]
            .as_str()
            .or(pv["spec"]["local"]["path"].as_str())
            .with_context(|| format!("{claim}'s volume is neither hostPath nor local"))?
            .trim_end_matches('/')
            .to_string())
    }

    /// A dialer with the certificate of `user`'s Secret.
    pub async fn dialer_for(&self, user: &str) -> anyhow::Result<Dialer> {
        let name = crate::user_secret(&self.name, user)?;
        let secret = match self.kube.get_json(&["secret", &name]).await? {
            Some(v) => Some(serde_json::from_value(v)?),
            None => None,
        };
        crate::dialer_from_secret(&name, secret)
    }

    /// `kubectl delete pod --grace-period=0 --force` of member `id`'s pod.
    pub async fn kill_member(&self, id: u64) -> anyhow::Result<()> {
        let pod = member_name(&self.name, id);
        let args = [
            "delete",
            "pod",
            &pod,
            "--grace-period=0",
            "--force",
            "--wait=false",
        ];
        self.kube.call(&args).await?;
        Ok(())
    }

    /// Deletes the member's PVC (it goes once its pod is gone), then the pod.
    pub async fn lose_member(&self, id: u64) -> anyhow::Result<()> {
        let claim = self.claim(id).await?;
        self.kube
            .call(&["delete", "pvc", &claim, "--wait=false"])
            .await?;
        self.kill_member(id).await
    }

    pub async fn incarnation(&self, id: u64) -> anyhow::Result<Option<String>> {
        Ok(self.pod(id).await?.map(|p| p.incarnation()))
    }

    /// Rolls the operator's Deployment, setting or clearing the failpoint in
    /// its pod template (the chart's operator reads it in the same reconcile
    /// pass as the local runtime).
    pub async fn restart_operator(&self, failpoint: Option<&str>) -> anyhow::Result<()> {
        for args in crate::failpoint_rollout(&self.operator, failpoint) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.kube.call(&args).await?;
        }
        Ok(())
    }

    /// The Deployment restarts an operator that exits: the sign is an
    /// operator container whose current or last run ended with the
    /// failpoint's exit code.
    pub async fn operator_exited(&self) -> anyhow::Result<bool> {
        let list = self
            .kube
            .get_json(&["pods", "--selector", &operator_selector()])
            .await?
            .unwrap_or_default();
        let pods = list["items"].as_array().cloned().unwrap_or_default();
        Ok(pods.iter().any(crate::ended_at_failpoint))
    }
}

/// `kubectl delete raftcluster <name>`, then waits until its pods are gone
/// (a no-op when there is none).
pub async fn delete_raftcluster<K: Kubectl>(kube: &K, name: &str) -> anyhow::Result<()> {
    kube.call(&[
        "delete",
        "raftcluster",
        name,
        "--ignore-not-found",
        "--timeout=120s",
    ])
    .await?;
    let selector = selector(name);
    wait_for(&format!("the pods of {name} gone"), PODS_GONE, || async {
        let pods = kube
            .call(&["get", "pods", "--selector", &selector, "--output=name"])
            .await?;
        Ok(pods.trim().is_empty().then_some(()))
    })
    .await
}

/// A Kubernetes target, as the shared suite sequence needs it.
#[allow(async_fn_in_trait)]
pub trait KubeTarget: Target {
    /// Sets how the next [`Target::scale`] edits the resource.
    fn scale_by(&mut self, by: ScaleBy);
    /// Deletes RaftCluster `name` of the same namespace, and waits until
    /// its pods are gone.
    async fn delete_cluster(&self, name: &str) -> anyhow::Result<()>;
}

/// The first checks of a new 3-member cluster, the same on every
/// Kubernetes target: writes and reads, TLS on every port. Returns the keys
/// written.
pub async fn first_checks<T: KubeTarget>(t: &mut T) -> anyhow::Result<Vec<String>> {
    let keys = scenarios::create_three(t).await?;
    scenarios::tls_closes_every_port(t).await?;
    Ok(keys)
}

/// A volume wiped under an initial member (no mark at creation, initial
/// voters in its environment), then under a scale-up member.
pub async fn wiped_volumes<T: KubeTarget>(t: &mut T, keys: &[String]) -> anyhow::Result<()> {
    let [initial, added] = scenarios::wiped_member_is_replaced(t, keys).await?;
    eprintln!("measured: volume wiped under a running member's pod, container killed, to all voters healthy again: initial member {initial:?}, scale-up member {added:?}");
    Ok(())
}

/// `kubectl scale` 3 to 5 (the scale subresource) and a patch of
/// `spec.replicas` back to 3.
pub async fn scale_suite<T: KubeTarget>(t: &mut T, keys: &[String]) -> anyhow::Result<()> {
    t.scale_by(ScaleBy::Subresource);
    let took = scenarios::scale_up_to_five(t, keys).await?;
    eprintln!("measured: kubectl scale 3 to 5 voting members (1000 keys): {took:?}");
    t.scale_by(ScaleBy::Patch);
    scenarios::scale_down_to_three(t, keys).await
}

/// The member scenarios both Kubernetes suites run, in this order: pods
/// deleted, paused, a failed member replaced, rollouts, backup and restore,
/// a lost volume, every pod deleted.
pub async fn member_suite<T: KubeTarget>(t: &mut T, keys: &[String]) -> anyhow::Result<()> {
    let took = scenarios::kill_member_comes_back(t, false, keys).await?;
    eprintln!("measured: follower pod deleted to peers updated in place and the leader streaming to its new IP: {took:?}");
    let took = scenarios::kill_member_comes_back(t, true, keys).await?;
    eprintln!("measured: leader pod deleted to peers updated in place and the leader streaming to its new IP: {took:?}");

    scenarios::paused_cluster_is_left_alone(t, keys).await?;
    eprintln!("checked: paused, a deleted follower pod stays gone for 6 s; unpaused, it is back");

    let took = scenarios::failed_member_is_replaced(t, keys).await?;
    eprintln!("measured: member whose raft-node cannot start to replaced and healthy (after: 10s): {took:?}");

    scenarios::rollouts(t, keys, "member pods").await?;

    let r = scenarios::backup_and_restore(t, 100_000).await?;
    eprintln!("measured: 100000 keys (a Job): {r}");
    t.delete_cluster("restored").await?;

    let took = scenarios::lost_member_rejoins_empty(t, keys).await?;
    eprintln!("measured: PVC and pod deleted to three healthy voters again: {took:?}");

    let took = scenarios::all_members_killed_recover(t, keys).await?;
    eprintln!("measured: every pod deleted to all back and agreeing on a leader: {took:?}");
    Ok(())
}

/// Creates-to-Available of a cluster just applied, printed as measured.
pub async fn settled_since<T: Target>(t: &T, created: Instant) -> anyhow::Result<()> {
    scenarios::wait_settled(t, 3).await?;
    eprintln!(
        "measured: RaftCluster created to Available with 3 voters: {:?}",
        created.elapsed()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_fields_from_kubectl_json() {
        let v = serde_json::json!({
            "metadata": {"name": "e2e-0", "uid": "u1"},
            "spec": {"nodeName": "w1", "volumes": [
                {"name": "tmp", "emptyDir": {}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "data-e2e-0-x"}},
            ]},
            "status": {"phase": "Running", "podIP": "10.244.1.5",
                       "containerStatuses": [{"restartCount": 2}]}
        });
        let p = MemberPod::from_json(&v);
        assert_eq!((p.uid.as_str(), p.running, p.restarts), ("u1", true, 2));
        assert_eq!(p.ip.as_deref(), Some("10.244.1.5"));
        assert_eq!(p.claim.as_deref(), Some("data-e2e-0-x"));
        assert_eq!(p.node.as_deref(), Some("w1"));
        assert_eq!(p.incarnation(), "u1/2");
        let deleting = serde_json::json!({
            "metadata": {"uid": "u1", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"phase": "Running"}
        });
        let p = MemberPod::from_json(&deleting);
        assert!(!p.running);
        assert_eq!((p.ip, p.claim, p.node), (None, None, None));
        assert_eq!(member_name("e2e", 1), "e2e-0");
    }
}
