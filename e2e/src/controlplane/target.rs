//! [`Target`] on the real control plane: user actions through kubectl
//! (`kubectl scale`, `kubectl patch`, `kubectl delete pod --force`), reads
//! through the API. Members are reached at their pod IPs (127.1.x.y), which
//! are routable here, so no port-forward is needed.

use anyhow::Context;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::Api;
use kube::Client;
use raft_operator::backup::{RaftClusterBackup, RaftClusterBackupStatus};
use raft_operator::crd::{RaftCluster, RaftClusterStatus};
use raftlane_tls::Dialer;

use super::env::NAMESPACE;
use super::kubectl::Kubectl;
use crate::kind::ScaleBy;
use crate::manifests;
use crate::Target;

use raft_operator::naming::{member_name, ADMIN_PORT, CLIENT_PORT};

/// Phase Running, not being deleted, with an IP: its ports answer.
fn running_ip(p: &Pod) -> Option<String> {
    let s = p.status.as_ref()?;
    (s.phase.as_deref() == Some("Running") && p.metadata.deletion_timestamp.is_none())
        .then(|| s.pod_ip.clone())
        .flatten()
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |cs| cs.iter().map(|c| c.restart_count).sum())
}

/// One RaftCluster on the control plane.
pub struct ControlPlaneTarget {
    client: Client,
    kube: Kubectl,
    pub name: String,
    /// The way the next [`Target::scale`] edits the resource.
    pub scale_by: ScaleBy,
}

impl ControlPlaneTarget {
    pub fn new(client: Client, kube: Kubectl, name: &str) -> ControlPlaneTarget {
        ControlPlaneTarget {
            client,
            kube,
            name: name.into(),
            scale_by: ScaleBy::Subresource,
        }
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    pub async fn pod(&self, id: u64) -> anyhow::Result<Option<Pod>> {
        Ok(self.pods().get_opt(&member_name(&self.name, id)).await?)
    }

    /// The PVC member `id`'s pod mounts.
    pub async fn claim(&self, id: u64) -> anyhow::Result<String> {
        let pod = self
            .pod(id)
            .await?
            .with_context(|| format!("member {id} has no pod"))?;
        pod.spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .find_map(|v| v.persistent_volume_claim.as_ref())
            .map(|c| c.claim_name.clone())
            .with_context(|| format!("member {id}'s pod has no volume claim"))
    }

    /// The host directory behind PVC `claim` (the controller-manager's
    /// host-path provisioner makes them under /tmp/hostpath_pv).
    pub async fn volume_dir(&self, claim: &str) -> anyhow::Result<std::path::PathBuf> {
        use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), NAMESPACE);
        let pv = claims
            .get(claim)
            .await?
            .spec
            .and_then(|s| s.volume_name)
            .with_context(|| format!("{claim} not bound"))?;
        let dir = Api::<PersistentVolume>::all(self.client.clone())
            .get(&pv)
            .await?
            .spec
            .and_then(|s| s.host_path)
            .map(|h| std::path::PathBuf::from(h.path))
            .with_context(|| format!("{pv} is not host-path"))?;
        anyhow::ensure!(
            dir.starts_with("/tmp/hostpath_pv"),
            "unexpected PV dir {dir:?}"
        );
        Ok(dir)
    }

    /// `kubectl apply` of `manifest`, written as `<stem>.json` beside the
    /// admin kubeconfig (the suite's state directory).
    async fn apply(&self, stem: &str, manifest: &serde_json::Value) -> anyhow::Result<()> {
        let path = self.kube.kubeconfig.with_file_name(format!("{stem}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(manifest)?)
            .with_context(|| format!("writing {}", path.display()))?;
        let path = path.display().to_string();
        self.kube.call(&["apply", "-f", &path]).await?;
        Ok(())
    }

    async fn member_addr(&self, id: u64, port: u16) -> anyhow::Result<Option<String>> {
        Ok(self
            .pod(id)
            .await?
            .as_ref()
            .and_then(running_ip)
            .map(|ip| format!("{ip}:{port}")))
    }
}

impl Target for ControlPlaneTarget {
    async fn scale(&mut self, replicas: u32) -> anyhow::Result<()> {
        let resource = format!("raftcluster/{}", self.name);
        match self.scale_by {
            ScaleBy::Subresource => {
                let n = format!("--replicas={replicas}");
                self.kube.call(&["scale", &resource, &n]).await?
            }
            ScaleBy::Patch => {
                let patch = format!(r#"{{"spec":{{"replicas":{replicas}}}}}"#);
                self.kube
                    .call(&["patch", &resource, "--type=merge", "--patch", &patch])
                    .await?
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

    /// The process kubelet maps an image to a binary by name, whatever
    /// the tag: another tag runs raft-node; an unknown name never starts.
    async fn rollout_image(&mut self, works: bool) -> anyhow::Result<String> {
        Ok(manifests::rollout_image(works).into())
    }

    /// `kubectl apply` of RaftClusterBackup `name` in the suite's namespace.
    async fn apply_backup(&mut self, name: &str, spec: serde_json::Value) -> anyhow::Result<()> {
        let manifest = manifests::backup(name, &self.name, spec);
        self.apply(&format!("backup-{name}"), &manifest).await
    }

    /// The `.status` of RaftClusterBackup `name`; None while the operator
    /// wrote none (or the resource is not there).
    async fn backup_status(&self, name: &str) -> anyhow::Result<Option<RaftClusterBackupStatus>> {
        let api: Api<RaftClusterBackup> = Api::namespaced(self.client.clone(), NAMESPACE);
        Ok(api.get_opt(name).await?.and_then(|b| b.status))
    }

    /// `kubectl apply` of RaftCluster `name`, the suite's manifest (as
    /// `ControlPlaneEnv::create_cluster` makes it) with `spec` merged in.
    async fn new_cluster(
        &mut self,
        name: &str,
        replicas: u32,
        spec: serde_json::Value,
    ) -> anyhow::Result<Self> {
        let manifest = manifests::cluster(name, replicas, spec);
        self.apply(name, &manifest).await?;
        Ok(ControlPlaneTarget::new(
            self.client.clone(),
            self.kube.clone(),
            name,
        ))
    }

    /// The raft log directory on the member's host-path volume becomes a
    /// file: every start of raft-node fails reading it (not the refusal of
    /// a wiped volume, exit 66: it is a member that cannot start).
    async fn break_member(&mut self, id: u64) -> anyhow::Result<()> {
        let raft = self.volume_dir(&self.claim(id).await?).await?.join("raft");
        std::fs::remove_dir_all(&raft).with_context(|| format!("removing {}", raft.display()))?;
        std::fs::write(&raft, b"not a directory\n")?;
        self.kill_member(id).await
    }

    /// The process kubelet runs raft-node with `RAFTLANE_DATA_DIR` rewritten
    /// to the volume's host directory: that names the member's process.
    async fn kill_process(&mut self, id: u64) -> anyhow::Result<()> {
        let dir = self.volume_dir(&self.claim(id).await?).await?;
        let pid = process_with_env(&format!("RAFTLANE_DATA_DIR={}", dir.display()))?
            .with_context(|| format!("no process runs on {}", dir.display()))?;
        let ok = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()?
            .success();
        anyhow::ensure!(ok, "kill -9 {pid} failed");
        Ok(())
    }

    async fn wipe_member(&mut self, id: u64) -> anyhow::Result<()> {
        let dir = self.volume_dir(&self.claim(id).await?).await?;
        for sub in ["raft", "snapshots"] {
            let d = dir.join(sub);
            std::fs::remove_dir_all(&d).with_context(|| format!("removing {}", d.display()))?;
        }
        self.kill_process(id).await
    }

    async fn status(&self) -> anyhow::Result<Option<RaftClusterStatus>> {
        let api: Api<RaftCluster> = Api::namespaced(self.client.clone(), NAMESPACE);
        let rc = api
            .get_opt(&self.name)
            .await?
            .with_context(|| format!("RaftCluster {} not found", self.name))?;
        Ok(rc.status)
    }

    /// In the order of the status' members; a member without a running pod
    /// gets a port nothing listens on, which the client passes over.
    async fn endpoints(&self) -> anyhow::Result<Vec<String>> {
        let members = self.status().await?.unwrap_or_default().members;
        let mut out = Vec::new();
        for m in &members {
            let addr = self.member_addr(m.id, CLIENT_PORT).await?;
            out.push(addr.unwrap_or_else(|| "127.0.0.1:1".into()));
        }
        Ok(out)
    }

    async fn dialer_for(&self, user: &str) -> anyhow::Result<Dialer> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), NAMESPACE);
        let name = crate::user_secret(&self.name, user)?;
        crate::dialer_from_secret(&name, secrets.get_opt(&name).await?)
    }

    async fn admin(&self, id: u64) -> anyhow::Result<String> {
        self.member_addr(id, ADMIN_PORT)
            .await?
            .with_context(|| format!("member {id}: no running pod"))
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
        let claim = self.claim(id).await?;
        self.kube
            .call(&["delete", "pvc", &claim, "--wait=false"])
            .await?;
        self.kill_member(id).await
    }

    /// The pod's UID and its containers' restart count.
    async fn incarnation(&self, id: u64) -> anyhow::Result<Option<String>> {
        Ok(self.pod(id).await?.map(|p| {
            format!(
                "{}/{}",
                p.metadata.uid.clone().unwrap_or_default(),
                restarts(&p)
            )
        }))
    }

    /// Rolls the operator's Deployment, setting or clearing the failpoint in
    /// its pod template (the chart's operator reads `RAFTLANE_FAILPOINT` in
    /// the same reconcile pass as the local runtime).
    async fn restart_operator(&mut self, failpoint: Option<&str>) -> anyhow::Result<()> {
        let deployment = format!("deployment/{}", super::env::RELEASE);
        for args in crate::failpoint_rollout(&deployment, failpoint) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.kube.call(&args).await?;
        }
        Ok(())
    }

    /// The Deployment restarts an operator that exits, so the sign is an
    /// operator container whose current or last run ended with the
    /// failpoint's exit code.
    async fn operator_exited(&mut self) -> anyhow::Result<bool> {
        let selector = format!("app.kubernetes.io/instance={}", super::env::RELEASE);
        let list = self
            .pods()
            .list(&kube::api::ListParams::default().labels(&selector))
            .await?;
        let pods = serde_json::to_value(&list.items)?;
        Ok(pods
            .as_array()
            .into_iter()
            .flatten()
            .any(crate::ended_at_failpoint))
    }
}

/// The process whose environment holds `var` (`NAME=value`), if one does.
fn process_with_env(var: &str) -> anyhow::Result<Option<u32>> {
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // Gone since the listing, or not ours to read: not the one.
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|v| v == var.as_bytes()) {
            return Ok(Some(pid));
        }
    }
    Ok(None)
}
