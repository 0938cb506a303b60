//! The kind suite's environment: both images built and loaded into a kind
//! cluster, the CRD applied and the operator installed by its Helm chart; at the
//! end the kind cluster is deleted unless it was reused or is to be kept.
//!
//! Everything outside cargo comes from `scripts/kind.sh`: the Docker engine
//! (started, or installed, when none answers), kind, kubectl and helm under
//! .tools/, the offline node image and the multi-node cluster (`up`), and the
//! images from the workspace's prebuilt binaries (`images`: target/debug, or
//! target/release with `RAFTLANE_IMAGE_PROFILE=release`).
//!
//! `RAFTLANE_E2E_KIND=1` enables it (`make e2e-kind`); `RAFTLANE_KIND_CLUSTER`
//! names a kind cluster to reuse (created when absent); `RAFTLANE_KIND_KEEP=1`
//! keeps a cluster this run created.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::cmd::{blocking, output, run_shown, set_tool_paths, tool, Kubectl};
use super::{KindTarget, NAMESPACE};
use crate::kube_target::{delete_raftcluster, operator_selector, KubeCore, Kubectl as _, RELEASE};

const DEFAULT_CLUSTER: &str = "raftlane-e2e";
use crate::manifests::{NODE_IMAGE, NODE_IMAGE_NEXT};
const OPERATOR_IMAGE: &str = "raftlane/raft-operator:e2e";
/// Starting (or apt-installing) the Docker engine.
const ENGINE: Duration = Duration::from_secs(10 * 60);
/// Both images from prebuilt binaries (plus a debootstrap base the first time).
const IMAGE_BUILD: Duration = Duration::from_secs(10 * 60);
/// Tools, node image and cluster from cold Go caches (~25 min on 2 cores);
/// seconds when all are cached.
const CLUSTER_UP: Duration = Duration::from_secs(45 * 60);
const CLUSTER_CHANGE: Duration = Duration::from_secs(6 * 60);

/// A kind cluster with the operator running in [`NAMESPACE`].
pub struct KindEnv {
    cluster: String,
    /// Created by this run (not reused): deleted at the end unless kept.
    created: bool,
    keep: bool,
    kube: Kubectl,
    manifests: tempfile::TempDir,
}

fn flag(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `bash scripts/kind.sh ARGS`, from the repository root.
fn kind_sh(root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("scripts/kind.sh"))
        .args(args)
        .current_dir(root);
    cmd
}

/// Why the suite cannot run here, if it cannot: only a Docker engine that
/// cannot be started (or installed) at all skips it.
fn skip_reason(root: &Path) -> Option<String> {
    if !flag("RAFTLANE_E2E_KIND") {
        return Some("set RAFTLANE_E2E_KIND=1, as `make e2e-kind` does".into());
    }
    output(&mut kind_sh(root, &["docker"]), ENGINE)
        .err()
        .map(|e| format!("no Docker engine could be started: {e:#}"))
}

/// The `name=path` lines `scripts/kind.sh up` prints, as tool paths.
fn tool_paths(stdout: &str) -> HashMap<String, PathBuf> {
    stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| ["kind", "kubectl", "helm"].contains(k))
        .map(|(k, v)| (k.to_string(), PathBuf::from(v.trim())))
        .collect()
}

/// Whether kind cluster `name` has nodes, from the label kind puts on their
/// containers (no kind binary needed before `scripts/kind.sh` built it).
fn kind_cluster_exists(name: &str) -> anyhow::Result<bool> {
    let label = format!("label=io.x-k8s.kind.cluster={name}");
    let ids = output(
        Command::new("docker").args(["ps", "--all", "--quiet", "--filter", &label]),
        Duration::from_secs(30),
    )?;
    Ok(!ids.trim().is_empty())
}

/// The operator's Deployment, found by the chart's instance label.
fn operator_deployment(kube: &Kubectl) -> anyhow::Result<String> {
    let selector = operator_selector();
    let names = kube.run(&[
        "get",
        "deployments",
        "--selector",
        &selector,
        "--output=name",
    ])?;
    match names.split_whitespace().collect::<Vec<_>>()[..] {
        [one] => Ok(one.to_string()),
        ref other => anyhow::bail!("expected one Deployment labelled {selector}, found {other:?}"),
    }
}

/// [`crate::manifests::cluster`] as text (JSON, which kubectl reads as YAML).
fn manifest(name: &str, replicas: u32) -> String {
    crate::manifests::cluster(name, replicas, serde_json::json!({})).to_string()
}

/// `scripts/kind.sh up` on existing kind cluster `cluster`: its nodes' CNI
/// configuration, pod routes and masquerade rule installed again, and every
/// node Ready.
pub(super) fn rerun_up(cluster: &str) -> anyhow::Result<()> {
    output(&mut kind_sh(&repo_root(), &["up", cluster]), CLUSTER_CHANGE).map(|_| ())
}

impl KindEnv {
    /// Sets the environment up, or prints the one line saying why the suite is
    /// skipped here and returns None.
    pub async fn start() -> anyhow::Result<Option<KindEnv>> {
        if let Some(why) = blocking(|| Ok(skip_reason(&repo_root()))).await? {
            println!("e2e-kind: skipped ({why})");
            return Ok(None);
        }
        blocking(KindEnv::set_up).await.map(Some)
    }

    fn set_up() -> anyhow::Result<KindEnv> {
        let root = repo_root();
        // Before the cluster exists: the likeliest to fail (binaries not built).
        run_shown(&mut kind_sh(&root, &["images"]), IMAGE_BUILD)?;
        let cluster =
            std::env::var("RAFTLANE_KIND_CLUSTER").unwrap_or_else(|_| DEFAULT_CLUSTER.into());
        let created = !kind_cluster_exists(&cluster)?;
        // Creates the cluster, or checks a reused one (its CNI and routes).
        let up = output(&mut kind_sh(&root, &["up", &cluster]), CLUSTER_UP)?;
        set_tool_paths(tool_paths(&up));
        // From here on, dropping the environment cleans up after a failed step.
        let env = KindEnv {
            kube: Kubectl {
                context: format!("kind-{cluster}"),
                namespace: NAMESPACE.into(),
            },
            cluster,
            created,
            keep: flag("RAFTLANE_KIND_KEEP"),
            manifests: tempfile::tempdir()?,
        };
        let installed = env
            .load_images()
            .and_then(|()| env.install_crd(&root))
            .and_then(|()| env.install_operator(&root));
        if let Err(e) = installed {
            env.print_diagnostics();
            return Err(e);
        }
        Ok(env)
    }

    fn load_images(&self) -> anyhow::Result<()> {
        let mut tag = Command::new("docker");
        tag.args(["tag", NODE_IMAGE, NODE_IMAGE_NEXT]);
        run_shown(&mut tag, CLUSTER_CHANGE)?;
        let mut load = tool("kind");
        load.args([
            "load",
            "docker-image",
            NODE_IMAGE,
            NODE_IMAGE_NEXT,
            OPERATOR_IMAGE,
        ])
        .args(["--name", &self.cluster]);
        run_shown(&mut load, CLUSTER_CHANGE)
    }

    /// Applies the generated CRDs (RaftCluster, RaftClusterBackup); the
    /// chart's copies in crds/ are then skipped by helm.
    fn install_crd(&self, root: &Path) -> anyhow::Result<()> {
        for (file, crd) in [
            ("crds/raftcluster.yaml", "crd/raftclusters.raftlane.io"),
            (
                "crds/raftclusterbackup.yaml",
                "crd/raftclusterbackups.raftlane.io",
            ),
        ] {
            let path = root.join(file);
            let path = path.to_str().expect("a UTF-8 repository path");
            self.kube
                .run(&["apply", "--server-side", "--force-conflicts", "-f", path])?;
            self.kube
                .run(&["wait", "--for=condition=Established", "--timeout=25s", crd])?;
        }
        Ok(())
    }

    fn install_operator(&self, root: &Path) -> anyhow::Result<()> {
        let mut helm = tool("helm");
        helm.args(["upgrade", "--install", RELEASE])
            .arg(root.join("charts/raft-operator"))
            .args(["--kube-context", &self.kube.context])
            .args(["--namespace", NAMESPACE, "--create-namespace"])
            .args(["--set", "image.repository=raftlane/raft-operator"])
            .args(["--set", "image.tag=e2e,image.pullPolicy=Never"])
            .args(["--wait", "--timeout", "4m"]);
        run_shown(&mut helm, Duration::from_secs(5 * 60))?;
        if !self.created {
            // A reused cluster may still run an older image under the same tag.
            self.kube
                .rollout_restart(&operator_deployment(&self.kube)?)?;
        }
        Ok(())
    }

    /// Creates RaftCluster `name` of `replicas` members (after removing one a
    /// kept run left behind).
    pub async fn create_cluster(&self, name: &str, replicas: u32) -> anyhow::Result<KindTarget> {
        self.delete_named(name).await?;
        let path = self.manifests.path().join(format!("{name}.yaml"));
        std::fs::write(&path, manifest(name, replicas))?;
        let path = path.to_str().expect("a UTF-8 temporary path");
        self.kube.call(&["apply", "-f", path]).await?;
        KindTarget::new(KubeCore::new(self.kube.clone(), name)?)
    }

    /// Deletes the cluster's RaftCluster and waits until its pods are gone.
    pub async fn delete_cluster(&self, t: KindTarget) -> anyhow::Result<()> {
        let name = t.core.name.clone();
        drop(t);
        self.delete_named(&name).await
    }

    /// Deletes RaftCluster `name` and waits until its pods are gone.
    pub async fn delete_named(&self, name: &str) -> anyhow::Result<()> {
        delete_raftcluster(&self.kube, name).await
    }

    /// What a failed run leaves to read: resources, events, the operator's log.
    fn print_diagnostics(&self) {
        let show = |args: &[&str]| match self.kube.run(args) {
            Ok(out) => eprintln!("--- kubectl {} ---\n{out}", args.join(" ")),
            Err(e) => eprintln!("--- kubectl {}: {e:#}", args.join(" ")),
        };
        show(&[
            "get",
            "raftclusters,raftclusterbackups,jobs,pods,pvc",
            "--output=wide",
        ]);
        show(&["get", "raftclusters", "--output=yaml"]);
        show(&["get", "events", "--sort-by=.metadata.creationTimestamp"]);
        match operator_deployment(&self.kube) {
            Ok(d) => show(&["logs", &d, "--tail=300"]),
            Err(e) => eprintln!("--- the operator's log: {e:#}"),
        }
        // Every node's journal, kubelet and containerd logs and pod logs.
        let dir = repo_root().join("target/kind-logs").join(&self.cluster);
        let mut export = tool("kind");
        export
            .args(["export", "logs", "--name", &self.cluster])
            .arg(&dir);
        match output(&mut export, Duration::from_secs(180)) {
            Ok(_) => eprintln!("--- kind export logs: {}", dir.display()),
            Err(e) => eprintln!("--- kind export logs: {e:#}"),
        }
    }
}

impl Drop for KindEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_diagnostics();
        }
        if !self.created || self.keep {
            println!(
                "e2e-kind: kind cluster {} left running (kubectl --context kind-{0})",
                self.cluster
            );
            return;
        }
        let mut delete = tool("kind");
        delete.args(["delete", "cluster", "--name", &self.cluster]);
        if let Err(e) = run_shown(&mut delete, CLUSTER_CHANGE) {
            eprintln!("e2e-kind: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tool_paths_are_the_scripts_lines() {
        let out =
            "kind=/t/kind/bin/kind\nkubectl=/t/bin/kubectl\nhelm=/t/bin/helm\ncontext=kind-x\n";
        let paths = super::tool_paths(out);
        assert_eq!(paths.len(), 3);
        assert_eq!(paths["kubectl"], std::path::PathBuf::from("/t/bin/kubectl"));
        assert_eq!(paths["kind"], std::path::PathBuf::from("/t/kind/bin/kind"));
    }

    /// The suite's RaftCluster passes the CRD's schema and rules, checked here
    /// where no API server is at hand.
    #[test]
    fn manifest_is_a_valid_raftcluster() {
        let c = raft_operator::crd::parse_cluster(&super::manifest("e2e", 3)).unwrap();
        assert_eq!(c.spec.replicas, 3);
        assert_eq!(c.spec.image, super::NODE_IMAGE);
        assert_eq!(c.spec.storage.size, "256Mi");
        let m = crate::manifests::cluster("e2e", 1, serde_json::json!({"paused": true}));
        let c = raft_operator::crd::parse_cluster(&m.to_string()).unwrap();
        assert_eq!((c.spec.replicas, c.spec.paused), (1, true));
        assert_eq!(c.spec.image, super::NODE_IMAGE);
    }
}
