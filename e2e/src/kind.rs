//! [`Target`] on a kind cluster, driven the way a user would: every call shells
//! out to kubectl (with a deadline), and members are reached through
//! `kubectl port-forward` since pod IPs are not routable from the host.
//! [`KindEnv`] sets up and tears down the cluster around it.

pub(crate) mod cmd;
mod env;
mod forward;
pub mod real;

use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use raft_operator::backup::RaftClusterBackupStatus;
use raft_operator::crd::RaftClusterStatus;
use raft_operator::naming::{member_name, ADMIN_PORT, CLIENT_PORT};
use raftlane_tls::Dialer;

pub use crate::kube_target::ScaleBy;
use crate::kube_target::{delete_raftcluster, KubeCore, KubeTarget};
use crate::Target;
use cmd::{blocking, Kubectl};
pub use env::KindEnv;
use forward::Forwards;

/// Where the operator runs and watches, and the RaftClusters live.
pub const NAMESPACE: &str = "raftlane-e2e";

/// One RaftCluster of the kind suite, created by [`KindEnv::create_cluster`].
pub struct KindTarget {
    core: KubeCore<Kubectl>,
    // Dropped before `_logs`: kills the kubectl children writing there.
    forwards: Arc<Mutex<Forwards>>,
    _logs: tempfile::TempDir,
}

impl KindTarget {
    /// The kind node running member `id`'s pod, and its volume's directory
    /// there (kind's local-path volumes are directories of the node).
    async fn volume_on_node(&self, id: u64) -> anyhow::Result<(String, String)> {
        let pod = self
            .core
            .pod(id)
            .await?
            .with_context(|| format!("member {id} has no pod"))?;
        let node = pod
            .node
            .with_context(|| format!("member {id}'s pod is not scheduled"))?;
        let claim = pod
            .claim
            .with_context(|| format!("member {id}'s pod has no volume claim"))?;
        Ok((node, self.core.volume_dir(&claim).await?))
    }

    fn new(core: KubeCore<Kubectl>) -> anyhow::Result<KindTarget> {
        let logs = tempfile::tempdir()?;
        Ok(KindTarget {
            forwards: Arc::new(Mutex::new(Forwards::new(core.kube.clone(), logs.path()))),
            core,
            _logs: logs,
        })
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

impl KubeTarget for KindTarget {
    fn scale_by(&mut self, by: ScaleBy) {
        self.core.scale_by = by;
    }

    async fn delete_cluster(&self, name: &str) -> anyhow::Result<()> {
        delete_raftcluster(&self.core.kube, name).await
    }
}

impl Target for KindTarget {
    async fn scale(&mut self, replicas: u32) -> anyhow::Result<()> {
        self.core.scale(replicas).await
    }

    async fn patch_spec(&mut self, spec: serde_json::Value) -> anyhow::Result<()> {
        self.core.patch_spec(spec).await
    }

    /// A second tag of the raft-node image, loaded with it (see
    /// `KindEnv::load_images`); a broken one that no registry serves.
    async fn rollout_image(&mut self, works: bool) -> anyhow::Result<String> {
        Ok(crate::manifests::rollout_image(works).into())
    }

    async fn apply_backup(&mut self, name: &str, spec: serde_json::Value) -> anyhow::Result<()> {
        self.core.apply_backup(name, spec).await
    }

    async fn backup_status(&self, name: &str) -> anyhow::Result<Option<RaftClusterBackupStatus>> {
        self.core.backup_status(name).await
    }

    /// RaftCluster `name` as `KindEnv::create_cluster` makes it (after
    /// removing one a kept run left behind), with `spec` merged in.
    async fn new_cluster(
        &mut self,
        name: &str,
        replicas: u32,
        spec: serde_json::Value,
    ) -> anyhow::Result<Self> {
        delete_raftcluster(&self.core.kube, name).await?;
        KindTarget::new(self.core.apply_cluster(name, replicas, spec).await?)
    }

    /// The raft log directory on the member's volume becomes a file, on the
    /// kind node that runs its pod: every start of raft-node fails reading
    /// it, as on the control plane.
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
        self.core.status().await
    }

    /// In the order of the status' members; a member whose pod is not running
    /// gets a loopback port nothing listens on, which the client passes over as
    /// it would a down member.
    async fn endpoints(&self) -> anyhow::Result<Vec<String>> {
        let members = self.status().await?.unwrap_or_default().members;
        let pods = self.core.pods().await?;
        let mut endpoints = Vec::new();
        for m in &members {
            let name = member_name(&self.core.name, m.id);
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
        self.core.dialer_for(user).await
    }

    async fn admin(&self, id: u64) -> anyhow::Result<String> {
        let pod = self
            .core
            .pod(id)
            .await?
            .filter(|p| p.running)
            .with_context(|| format!("member {id}: no running pod"))?;
        self.forward(member_name(&self.core.name, id), pod.uid, ADMIN_PORT)
            .await
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
