//! The controlplane suite's environment: the Go-built binaries (scripts/
//! controlplane.sh), the servers, the process kubelet, then the operator
//! installed as a user installs it: `kubectl apply -f crds/` and `helm
//! install` of charts/raft-operator. Everything goes on drop, in reverse.
//!
//! `RAFTLANE_E2E_CONTROLPLANE=1` enables it (`make e2e-controlplane`);
//! `RAFTLANE_CONTROLPLANE_BIN` names a directory holding etcd, kube-apiserver
//! and kube-controller-manager instead of running the build script;
//! `RAFTLANE_CONTROLPLANE_KEEP=1` keeps the state directory (logs, data).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use kube::Client;

use super::kubectl::Kubectl;
use super::kubelet::{ImageBinary, Kubelet, KubeletConfig};
use super::servers::ControlPlane;
use super::target::ControlPlaneTarget;
use crate::kind::cmd::{blocking, output, run_shown};
pub use crate::kube_target::RELEASE;
use crate::kube_target::{delete_raftcluster, Kubectl as _};

/// Where the operator runs and watches, and the RaftClusters live.
pub const NAMESPACE: &str = "raftlane-e2e";
pub const NODE: &str = "raftlane-e2e-node";
/// Bound on a cold build of the three binaries (measured 393 s on 2 cores
/// with empty Go caches, 567 s while other builds ran).
const GO_BUILD: Duration = Duration::from_secs(60 * 60);

/// Where kube-controller-manager's host-path provisioner makes PV directories.
const HOSTPATH_PV_DIR: &str = "/tmp/hostpath_pv/";

/// The default StorageClass: PVCs bind to host-path PVs that
/// kube-controller-manager's host-path provisioner makes under /tmp/hostpath_pv.
const STORAGE_CLASS: &str = "apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: \"true\"
provisioner: kubernetes.io/host-path
reclaimPolicy: Delete
volumeBindingMode: Immediate
";

fn flag(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ is inside the repository")
        .to_path_buf()
}

/// The directory of the Go-built binaries: built (or reused) by the script.
fn control_plane_bin(root: &Path) -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("RAFTLANE_CONTROLPLANE_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut build = Command::new("bash");
    build.arg(root.join("scripts/controlplane.sh"));
    // Its progress goes to stderr as it happens; stdout is the bin directory.
    build.stderr(std::process::Stdio::inherit());
    let out = output(&mut build, GO_BUILD)?;
    Ok(PathBuf::from(out.trim()))
}

/// kubectl and helm, pinned by scripts/tools.sh.
fn tools(root: &Path) -> anyhow::Result<PathBuf> {
    let bin = root.join(".tools/bin");
    if !(bin.join("kubectl").exists() && bin.join("helm").exists()) {
        let mut install = Command::new("bash");
        install.arg(root.join("scripts/tools.sh"));
        run_shown(&mut install, Duration::from_secs(10 * 60))?;
    }
    Ok(bin)
}

/// [`crate::manifests::cluster`] as text (JSON, which kubectl reads as YAML).
fn manifest(name: &str, replicas: u32) -> String {
    crate::manifests::cluster(name, replicas, serde_json::json!({})).to_string()
}

/// A running control plane with the operator installed in [`NAMESPACE`].
pub struct ControlPlaneEnv {
    // Dropped in this order: pods, then servers, then their files.
    kubelet: Option<Kubelet>,
    pub cp: Option<ControlPlane>,
    pub client: Client,
    pub kube: Kubectl,
    dir: Option<tempfile::TempDir>,
    /// Wall time of each setup step, printed by the suite.
    pub timings: Vec<(String, Duration)>,
    /// Set by [`ControlPlaneEnv::passed`]; dropped without it (a panic, the
    /// suite's overall timeout), the environment prints its diagnostics.
    passed: bool,
}

impl ControlPlaneEnv {
    /// Sets the environment up, or prints why the suite is skipped here.
    pub async fn start() -> anyhow::Result<Option<ControlPlaneEnv>> {
        if !flag("RAFTLANE_E2E_CONTROLPLANE") {
            println!(
                "e2e-controlplane: skipped (set RAFTLANE_E2E_CONTROLPLANE=1, as `make e2e-controlplane` does)"
            );
            return Ok(None);
        }
        let root = repo_root();
        let mut timings = Vec::new();
        let t = Instant::now();
        let raft_bins = crate::local::bin_dir()?;
        let r = root.clone();
        let bin = blocking(move || control_plane_bin(&r)).await?;
        let r = root.clone();
        let tools = blocking(move || tools(&r)).await?;
        timings.push((
            "binaries (Go build or cache, kubectl/helm)".into(),
            t.elapsed(),
        ));

        let dir = tempfile::Builder::new()
            .prefix("raftlane-controlplane-")
            .disable_cleanup(flag("RAFTLANE_CONTROLPLANE_KEEP"))
            .tempdir()?;
        eprintln!("e2e-controlplane: state in {}", dir.path().display());
        let t = Instant::now();
        let cp = ControlPlane::start(&bin, dir.path()).await?;
        timings.push((
            format!(
                "etcd + kube-apiserver {} + kube-controller-manager ready",
                cp.version
            ),
            t.elapsed(),
        ));
        let client = cp.client().await?;
        let kube = Kubectl::new(&tools, &cp.kubeconfig, NAMESPACE);
        let mut env = ControlPlaneEnv {
            kubelet: None,
            client: client.clone(),
            kube,
            cp: Some(cp),
            dir: Some(dir),
            timings,
            passed: false,
        };
        let images = BTreeMap::from([
            (
                "raft-node".to_string(),
                ImageBinary {
                    path: raft_bins.join("raft-node"),
                    default_args: vec![],
                },
            ),
            (
                "raft-operator".to_string(),
                ImageBinary {
                    path: raft_bins.join("raft-operator"),
                    default_args: vec!["run".into()],
                },
            ),
        ]);
        let config = KubeletConfig {
            node: NODE.into(),
            dir: env.dir().join("kubelet"),
            images,
            apiserver_port: env.cp.as_ref().map(|c| c.port).unwrap_or_default(),
        };
        let t = Instant::now();
        env.kubelet = Some(Kubelet::start(client, config).await?);
        env.timings
            .push(("process kubelet's Node Ready".into(), t.elapsed()));
        let t = Instant::now();
        if let Err(e) = env.install(&root).await {
            tokio::task::block_in_place(|| env.print_diagnostics());
            return Err(e);
        }
        env.timings.push((
            "CRD applied, chart installed, operator Ready".into(),
            t.elapsed(),
        ));
        Ok(Some(env))
    }

    /// Marks the run as passed: no diagnostics on drop.
    pub fn passed(&mut self) {
        self.passed = true;
    }

    /// A file in the suite's state directory.
    pub fn state_file(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    /// The repository (charts/, crds/).
    pub fn root(&self) -> PathBuf {
        repo_root()
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("set until drop").path()
    }

    async fn apply_text(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let path = self.dir().join(name);
        std::fs::write(&path, text)?;
        let path = path.display().to_string();
        self.kube.call(&["apply", "-f", &path]).await?;
        Ok(())
    }

    async fn install(&self, root: &Path) -> anyhow::Result<()> {
        self.apply_text("storageclass.yaml", STORAGE_CLASS).await?;
        let crds = root.join("crds").display().to_string();
        self.kube.call(&["apply", "-f", &crds]).await?;
        self.kube
            .call(&[
                "wait",
                "--for=condition=Established",
                "--timeout=30s",
                "crd/raftclusters.raftlane.io",
            ])
            .await?;
        let mut helm = self.kube.helm(&["upgrade", "--install", RELEASE]);
        helm.arg(root.join("charts/raft-operator"))
            .args(["--create-namespace"])
            .args([
                "--set",
                "image.repository=raftlane/raft-operator,image.tag=e2e",
            ])
            .args(["--wait", "--timeout", "3m"]);
        blocking(move || run_shown(&mut helm, Duration::from_secs(4 * 60))).await
    }

    /// Creates RaftCluster `name` of `replicas` members.
    pub async fn create_cluster(
        &self,
        name: &str,
        replicas: u32,
    ) -> anyhow::Result<ControlPlaneTarget> {
        self.create_cluster_from(name, &manifest(name, replicas))
            .await
    }

    /// Creates RaftCluster `name` from its manifest.
    pub async fn create_cluster_from(
        &self,
        name: &str,
        yaml: &str,
    ) -> anyhow::Result<ControlPlaneTarget> {
        self.apply_text(&format!("{name}.yaml"), yaml).await?;
        ControlPlaneTarget::new(self.kube.clone(), name)
    }

    /// `kubectl delete raftcluster`, then waits until its pods are gone.
    pub async fn delete_cluster(&self, name: &str) -> anyhow::Result<()> {
        delete_raftcluster(&self.kube, name).await
    }

    /// The directory of a running pod's files as the process kubelet laid them out.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        super::kubelet::pod_dir(&self.dir().join("kubelet"), uid)
    }

    /// Fails when a control-plane server has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.cp.as_mut().context("stopped")?.check_running()
    }

    /// What a failed run leaves to read: resources, events, the operator's,
    /// members' and servers' logs. Blocking (each kubectl call bounded).
    pub fn print_diagnostics(&self) {
        for args in [
            &[
                "get",
                "raftclusters,raftclusterbackups,jobs,pods,pvc,pv,nodes",
                "--output=wide",
            ][..],
            &["get", "raftclusters", "--output=yaml"],
            &["get", "events", "--sort-by=.metadata.creationTimestamp"],
        ] {
            match self.kube.run(args) {
                Ok(out) => eprintln!("--- kubectl {} ---\n{out}", args.join(" ")),
                Err(e) => eprintln!("--- kubectl {}: {e:#}", args.join(" ")),
            }
        }
        if let Some(k) = &self.kubelet {
            eprintln!("{}", k.log_tails(150));
        }
        if let Some(cp) = &self.cp {
            eprintln!("{}", cp.log_tails(60));
        }
    }
}

impl Drop for ControlPlaneEnv {
    fn drop(&mut self) {
        if !self.passed {
            self.print_diagnostics();
        }
        // The host-path PVs still there: kube-controller-manager's deleter
        // would remove their directories, but it stops with the rest.
        let pv_dirs = self
            .kube
            .run(&[
                "get",
                "pv",
                "--output=jsonpath={.items[*].spec.hostPath.path}",
            ])
            .unwrap_or_default();
        drop(self.kubelet.take());
        drop(self.cp.take());
        let keep = flag("RAFTLANE_CONTROLPLANE_KEEP");
        for dir in pv_dirs.split_whitespace() {
            // Only what the host-path provisioner makes.
            if dir.starts_with(HOSTPATH_PV_DIR) && !dir.contains("..") && !keep {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        if let Some(dir) = self.dir.take() {
            if keep {
                eprintln!("e2e-controlplane: kept {}", dir.path().display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn manifest_is_a_valid_raftcluster() {
        let c = raft_operator::crd::parse_cluster(&super::manifest("e2e", 3)).unwrap();
        assert_eq!(c.spec.replicas, 3);
        assert_eq!(c.spec.storage.size, "256Mi");
        let spec = serde_json::json!({"storage": {"size": "1Gi"}, "paused": true});
        let m = crate::manifests::cluster("e2e", 1, spec);
        let c = raft_operator::crd::parse_cluster(&m.to_string()).unwrap();
        assert_eq!((c.spec.replicas, c.spec.paused), (1, true));
        assert_eq!(c.spec.storage.size, "1Gi");
        assert_eq!(
            c.spec.storage.retention_policy.when_deleted,
            raft_operator::crd::Retention::Delete
        );
    }
}
