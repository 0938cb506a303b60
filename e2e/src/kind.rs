//! [`Target`] on a kind cluster, driven the way a user would: every call shells
//! out to kubectl (with a deadline), and members are reached through
//! `kubectl port-forward` since pod IPs are not routable from the host.
//! [`KindEnv`] sets up and tears down the cluster around it.

pub(crate) mod cmd;
mod env;
mod forward;
pub mod real;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use raft_operator::backup::RaftClusterBackupStatus;
use raft_operator::crd::RaftClusterStatus;
use serde_json::Value;

use raftlane_tls::Dialer;

use crate::Target;
use cmd::{blocking, Kubectl};
pub use env::KindEnv;
use forward::Forwards;

/// Where the operator runs and watches, and the RaftClusters live.
pub const NAMESPACE: &str = "raftlane-e2e";
use raft_operator::naming::{member_name, selector, ADMIN_PORT, CLIENT_PORT};

/// How [`Target::scale`] sets `spec.replicas`; the suite uses both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleBy {
    /// `kubectl scale`, through the scale subresource.
    Subresource,
    /// `kubectl patch` of `spec.replicas`, as an edit of the spec.
    Patch,
}

/// What the scenarios need of a member pod.
struct Pod {
    uid: String,
    /// Phase Running and not being deleted: port-forward can reach it.
    running: bool,
    restarts: u64,
}

impl Pod {
    fn from_json(v: &Value) -> Pod {
        let restarts = v["status"]["containerStatuses"].as_array().map_or(0, |cs| {
            cs.iter().filter_map(|c| c["restartCount"].as_u64()).sum()
        });
        Pod {
            uid: v["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            running: v["status"]["phase"] == "Running"
                && v["metadata"]["deletionTimestamp"].is_null(),
            restarts,
        }
    }
}

/// One RaftCluster of the kind suite, created by [`KindEnv::create_cluster`].
pub struct KindTarget {
    kube: Kubectl,
    name: String,
    /// The operator's Deployment, as `deployment.apps/<name>`.
    operator: String,
    // Dropped before `_logs`: kills the kubectl children writing there.
    forwards: Arc<Mutex<Forwards>>,
    _logs: tempfile::TempDir,
    /// The way the next [`Target::scale`] edits the resource.
    pub scale_by: ScaleBy,
}

impl KindTarget {
    /// The kind node running member `id`'s pod, and its volume's directory
    /// there.
    async fn volume_on_node(&self, id: u64) -> anyhow::Result<(String, String)> {
        let (spec, claim) = self.pod_and_claim(id).await?;
        let node = spec["spec"]["nodeName"]
            .as_str()
            .with_context(|| format!("member {id}'s pod is not scheduled"))?
            .to_string();
        let pvc = self.kube.get_json(&["pvc", &claim]).await?;
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
        let dir = pv["spec"]["hostPath"]["path"]
            .as_str()
            .or(pv["spec"]["local"]["path"].as_str())
            .with_context(|| format!("{claim}'s volume is neither hostPath nor local"))?
            .trim_end_matches('/')
            .to_string();
        Ok((node, dir))
    }

    fn new(kube: Kubectl, name: &str, operator: String) -> anyhow::Result<KindTarget> {
        let logs = tempfile::tempdir()?;
        Ok(KindTarget {
            forwards: Arc::new(Mutex::new(Forwards::new(kube.clone(), logs.path()))),
            kube,
            name: name.to_string(),
            operator,
            _logs: logs,
            scale_by: ScaleBy::Subresource,
        })
    }

    /// `kubectl apply` of `manifest`, written as `<stem>.json` in this
    /// target's temporary directory.
    async fn apply(&self, stem: &str, manifest: &Value) -> anyhow::Result<()> {
        let path = self._logs.path().join(format!("{stem}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(manifest)?)
            .with_context(|| format!("writing {}", path.display()))?;
        let path = path.to_str().expect("a UTF-8 temporary path");
        self.kube.call(&["apply", "-f", path]).await?;
        Ok(())
    }

    /// Member `id`'s pod (as JSON) and the PVC it mounts.
    async fn pod_and_claim(&self, id: u64) -> anyhow::Result<(Value, String)> {
        let pod = member_name(&self.name, id);
        let spec = self
            .kube
            .get_json(&["pod", &pod])
            .await?
            .with_context(|| format!("pod {pod} not found"))?;
        let claim = spec["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
            .with_context(|| format!("pod {pod} has no volume claim"))?
            .to_string();
        Ok((spec, claim))
    }

    /// Member pods by name.
    async fn pods(&self) -> anyhow::Result<HashMap<String, Pod>> {
        let selector = selector(&self.name);
        let list = self
            .kube
            .get_json(&["pods", "--selector", &selector])
            .await?
            .unwrap_or_default();
        let items = list["items"].as_array().cloned().unwrap_or_default();
        Ok(items
            .iter()
            .map(|p| {
                let name = p["metadata"]["name"].as_str().unwrap_or_default();
                (name.to_string(), Pod::from_json(p))
            })
            .collect())
    }

    async fn pod(&self, id: u64) -> anyhow::Result<Option<Pod>> {
        let pod = self
            .kube
            .get_json(&["pod", &member_name(&self.name, id)])
            .await?;
        Ok(pod.as_ref().map(Pod::from_json))
    }

    /// A loopback address forwarded to `remote` on `pod`.
    async fn forward(&self, pod: String, uid: String, remote: u16) -> anyhow::Result<String> {
        let forwards = Arc::clone(&self.forwards);
        let port = blocking(move || {
            let mut f = forwards.lock().unwrap_or_else(PoisonError::into_inner);
            f.port(&pod, &uid, remote)
        })
        .await?;
        Ok(format!("127.0.0.1:{port}"))
    }
}

impl Target for KindTarget {
    async fn scale(&mut self, replicas: u32) -> anyhow::Result<()> {
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

    async fn patch_spec(&mut self, spec: serde_json::Value) -> anyhow::Result<()> {
        let args = crate::spec_patch(&self.name, spec);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.kube.call(&args).await?;
        Ok(())
    }

    /// A second tag of the raft-node image, loaded with it (see
    /// `KindEnv::load_images`); a broken one that no registry serves.
    async fn rollout_image(&mut self, works: bool) -> anyhow::Result<String> {
        Ok(crate::manifests::rollout_image(works).into())
    }

    /// `kubectl apply` of RaftClusterBackup `name` in the suite's namespace.
    async fn apply_backup(&mut self, name: &str, spec: serde_json::Value) -> anyhow::Result<()> {
        let manifest = crate::manifests::backup(name, &self.name, spec);
        self.apply(&format!("backup-{name}"), &manifest).await
    }

    /// The `.status` of RaftClusterBackup `name`; None while the operator
    /// wrote none (or the resource is not there).
    async fn backup_status(&self, name: &str) -> anyhow::Result<Option<RaftClusterBackupStatus>> {
        let Some(b) = self.kube.get_json(&["raftclusterbackup", name]).await? else {
            return Ok(None);
        };
        match &b["status"] {
            Value::Null => Ok(None),
            s => Ok(Some(serde_json::from_value(s.clone())?)),
        }
    }

    /// RaftCluster `name` as `KindEnv::create_cluster` makes it (after
    /// removing one a kept run left behind), with `spec` merged in.
    async fn new_cluster(
        &mut self,
        name: &str,
        replicas: u32,
        spec: serde_json::Value,
    ) -> anyhow::Result<Self> {
        env::delete_raftcluster(&self.kube, name).await?;
        self.apply(name, &crate::manifests::cluster(name, replicas, spec))
            .await?;
        KindTarget::new(self.kube.clone(), name, self.operator.clone())
    }

    /// The raft log directory on the member's volume becomes a file, on the
    /// kind node that runs its pod (kind's local-path volumes are directories
    /// of the node): every start of raft-node fails reading it, as on the
    /// control plane.
    async fn break_member(&mut self, id: u64) -> anyhow::Result<()> {
        let (node, dir) = self.volume_on_node(id).await?;
        let script = format!("rm -rf '{dir}/raft' && echo 'not a directory' > '{dir}/raft'");
        on_node(node, script).await?;
        self.kill_member(id).await
    }

    /// On the member's node, its raft-node process (the one whose mounts
    /// include the member's volume) is killed; the kubelet restarts the
    /// container in the same pod.
    async fn kill_process(&mut self, id: u64) -> anyhow::Result<()> {
        let (node, dir) = self.volume_on_node(id).await?;
        on_node(node, kill_raft_node_on(&dir)).await
    }

    async fn wipe_member(&mut self, id: u64) -> anyhow::Result<()> {
        let (node, dir) = self.volume_on_node(id).await?;
        let script = format!(
            "rm -rf '{dir}/raft' '{dir}/snapshots' && {}",
            kill_raft_node_on(&dir)
        );
        on_node(node, script).await
    }

    async fn status(&self) -> anyhow::Result<Option<RaftClusterStatus>> {
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

    /// In the order of the status' members; a member whose pod is not running
    /// gets a loopback port nothing listens on, which the client passes over as
    /// it would a down member.
    async fn endpoints(&self) -> anyhow::Result<Vec<String>> {
        let members = self.status().await?.unwrap_or_default().members;
        let pods = self.pods().await?;
        let mut endpoints = Vec::new();
        for m in &members {
            let name = member_name(&self.name, m.id);
            let addr = match pods.get(&name) {
                Some(p) if p.running => self.forward(name, p.uid.clone(), CLIENT_PORT).await?,
                // A member without a running pod: a port nothing listens on
                // (never one a later forward could take).
                _ => "127.0.0.1:1".to_string(),
            };
            endpoints.push(addr);
        }
        Ok(endpoints)
    }

    async fn dialer_for(&self, user: &str) -> anyhow::Result<Dialer> {
        let name = crate::user_secret(&self.name, user)?;
        let secret = match self.kube.get_json(&["secret", &name]).await? {
            Some(v) => Some(serde_json::from_value(v)?),
            None => None,
        };
        crate::dialer_from_secret(&name, secret)
    }

    async fn admin(&self, id: u64) -> anyhow::Result<String> {
        let pod = self
            .pod(id)
            .await?
            .filter(|p| p.running)
            .with_context(|| format!("member {id}: no running pod"))?;
        self.forward(member_name(&self.name, id), pod.uid, ADMIN_PORT)
            .await
    }

    async fn kill_member(&mut self, id: u64) -> anyhow::Result<()> {
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
    async fn lose_member(&mut self, id: u64) -> anyhow::Result<()> {
        let (_, claim) = self.pod_and_claim(id).await?;
        self.kube
            .call(&["delete", "pvc", &claim, "--wait=false"])
            .await?;
        self.kill_member(id).await
    }

    /// The pod's UID and its containers' restart count: a new pod or a restarted
    /// container both change it.
    async fn incarnation(&self, id: u64) -> anyhow::Result<Option<String>> {
        Ok(self
            .pod(id)
            .await?
            .map(|p| format!("{}/{}", p.uid, p.restarts)))
    }

    /// Rolls the operator's Deployment, setting or clearing the failpoint in
    /// its pod template.
    async fn restart_operator(&mut self, failpoint: Option<&str>) -> anyhow::Result<()> {
        for args in crate::failpoint_rollout(&self.operator, failpoint) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.kube.call(&args).await?;
        }
        Ok(())
    }

    /// The Deployment restarts an operator that exits: the sign is an
    /// operator container whose current or last run ended with the
    /// failpoint's exit code.
    async fn operator_exited(&mut self) -> anyhow::Result<bool> {
        let selector = "app.kubernetes.io/component=operator";
        let list = self
            .kube
            .get_json(&["pods", "--selector", selector])
            .await?
            .unwrap_or_default();
        let pods = list["items"].as_array().cloned().unwrap_or_default();
        Ok(pods.iter().any(crate::ended_at_failpoint))
    }
}

/// Runs `script` with `sh -c` on kind node `node` (a container of this
/// machine's Docker engine).
async fn on_node(node: String, script: String) -> anyhow::Result<()> {
    cmd::blocking(move || {
        let mut exec = std::process::Command::new("docker");
        exec.args(["exec", &node, "sh", "-c", &script]);
        cmd::output(&mut exec, std::time::Duration::from_secs(30)).map(|_| ())
    })
    .await
}

/// A shell script for a kind node that kills (`kill -9`) the one raft-node
/// process with volume directory `dir` among its mounts, and fails unless
/// exactly one was. The mount's source is matched by the directory's name
/// (`pvc-<uid>_<namespace>_<claim>`, unique): the node's /var is itself a
/// volume, so mountinfo shows the path as the host sees it.
fn kill_raft_node_on(dir: &str) -> String {
    let name = dir.rsplit('/').next().unwrap_or(dir);
    format!(
        "killed=0; for p in /proc/[0-9]*; do \
           [ \"$(cat $p/comm 2>/dev/null)\" = raft-node ] || continue; \
           grep -q '/{name} ' $p/mountinfo 2>/dev/null || continue; \
           kill -9 ${{p#/proc/}} && killed=$((killed+1)); \
         done; [ $killed = 1 ]"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_fields_from_kubectl_json() {
        let v = serde_json::json!({
            "metadata": {"name": "e2e-0", "uid": "u1"},
            "status": {"phase": "Running", "containerStatuses": [{"restartCount": 2}]}
        });
        let p = Pod::from_json(&v);
        assert_eq!((p.uid.as_str(), p.running, p.restarts), ("u1", true, 2));
        let deleting = serde_json::json!({
            "metadata": {"uid": "u1", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"phase": "Running"}
        });
        assert!(!Pod::from_json(&deleting).running);
        assert_eq!(member_name("e2e", 1), "e2e-0");
    }
}
