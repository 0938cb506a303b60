//! [`Target`] on the real control plane: user actions and reads through
//! kubectl, the same as on kind ([`KubeCore`]). Members are reached at their
//! pod IPs (127.1.x.y), which are routable here, so no port-forward is
//! needed; their processes and host-path volumes are on this host.

use std::path::PathBuf;

use anyhow::Context;
use raft_operator::backup::RaftClusterBackupStatus;
use raft_operator::crd::RaftClusterStatus;
use raftlane_tls::Dialer;

use super::kubectl::Kubectl;
use crate::kube_target::{delete_raftcluster, KubeCore, KubeTarget, MemberPod, ScaleBy};
use crate::manifests;
use crate::Target;

use raft_operator::naming::{ADMIN_PORT, CLIENT_PORT};

/// One RaftCluster on the control plane.
pub struct ControlPlaneTarget {
    core: KubeCore<Kubectl>,
    pub name: String,
}

impl ControlPlaneTarget {
    pub fn new(kube: Kubectl, name: &str) -> anyhow::Result<ControlPlaneTarget> {
        Ok(ControlPlaneTarget::of(KubeCore::new(kube, name)?))
    }

    fn of(core: KubeCore<Kubectl>) -> ControlPlaneTarget {
        ControlPlaneTarget {
            name: core.name.clone(),
            core,
        }
    }

    pub async fn pod(&self, id: u64) -> anyhow::Result<Option<MemberPod>> {
        self.core.pod(id).await
    }

    /// The PVC member `id`'s pod mounts.
    pub async fn claim(&self, id: u64) -> anyhow::Result<String> {
        self.core.claim(id).await
    }

    /// The host directory behind PVC `claim` (the controller-manager's
    /// host-path provisioner makes them under /tmp/hostpath_pv).
    pub async fn volume_dir(&self, claim: &str) -> anyhow::Result<PathBuf> {
        let dir = PathBuf::from(self.core.volume_dir(claim).await?);
        anyhow::ensure!(
            dir.starts_with("/tmp/hostpath_pv"),
            "unexpected PV dir {dir:?}"
        );
        Ok(dir)
    }

    async fn member_addr(&self, id: u64, port: u16) -> anyhow::Result<Option<String>> {
        Ok(self
            .core
            .pod(id)
            .await?
            .filter(|p| p.running)
            .and_then(|p| p.ip)
            .map(|ip| format!("{ip}:{port}")))
    }
}

impl KubeTarget for ControlPlaneTarget {
    fn scale_by(&mut self, by: ScaleBy) {
        self.core.scale_by = by;
    }

    async fn delete_cluster(&self, name: &str) -> anyhow::Result<()> {
        delete_raftcluster(&self.core.kube, name).await
    }
}

impl Target for ControlPlaneTarget {
    async fn scale(&mut self, replicas: u32) -> anyhow::Result<()> {
        self.core.scale(replicas).await
    }

    async fn patch_spec(&mut self, spec: serde_json::Value) -> anyhow::Result<()> {
        self.core.patch_spec(spec).await
    }

    /// The process kubelet maps an image to a binary by name, whatever
    /// the tag: another tag runs raft-node; an unknown name never starts.
    async fn rollout_image(&mut self, works: bool) -> anyhow::Result<String> {
        Ok(manifests::rollout_image(works).into())
    }

    async fn apply_backup(&mut self, name: &str, spec: serde_json::Value) -> anyhow::Result<()> {
        self.core.apply_backup(name, spec).await
    }

    async fn backup_status(&self, name: &str) -> anyhow::Result<Option<RaftClusterBackupStatus>> {
        self.core.backup_status(name).await
    }

    /// `kubectl apply` of RaftCluster `name`, the suite's manifest (as
    /// `ControlPlaneEnv::create_cluster` makes it) with `spec` merged in.
    async fn new_cluster(
        &mut self,
        name: &str,
        replicas: u32,
        spec: serde_json::Value,
    ) -> anyhow::Result<Self> {
        let core = self.core.apply_cluster(name, replicas, spec).await?;
        Ok(ControlPlaneTarget::of(core))
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
        self.core.status().await
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
        self.core.dialer_for(user).await
    }

    async fn admin(&self, id: u64) -> anyhow::Result<String> {
        self.member_addr(id, ADMIN_PORT)
            .await?
            .with_context(|| format!("member {id}: no running pod"))
    }

    async fn kill_member(&mut self, id: u64) -> anyhow::Result<()> {
        self.core.kill_member(id).await
    }

    async fn lose_member(&mut self, id: u64) -> anyhow::Result<()> {
        self.core.lose_member(id).await
    }

    async fn incarnation(&self, id: u64) -> anyhow::Result<Option<String>> {
        self.core.incarnation(id).await
    }

    async fn restart_operator(&mut self, failpoint: Option<&str>) -> anyhow::Result<()> {
        self.core.restart_operator(failpoint).await
    }

    async fn operator_exited(&mut self) -> anyhow::Result<bool> {
        self.core.operator_exited().await
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
