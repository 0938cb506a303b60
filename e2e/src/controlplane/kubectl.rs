//! kubectl and helm as a user runs them against the control plane: the
//! pinned binaries scripts/tools.sh installs into .tools/bin, the admin
//! kubeconfig, one namespace, a deadline per call.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::kind::cmd::output;

/// Bound on one kubectl call: above the longest `--timeout` a call passes
/// (120 s), so kubectl's own timeout speaks first.
const CALL: Duration = Duration::from_secs(150);

#[derive(Clone, Debug)]
pub struct Kubectl {
    pub kubectl: PathBuf,
    pub helm: PathBuf,
    pub kubeconfig: PathBuf,
    pub namespace: String,
}

impl Kubectl {
    pub fn new(tools: &Path, kubeconfig: &Path, namespace: &str) -> Kubectl {
        Kubectl {
            kubectl: tools.join("kubectl"),
            helm: tools.join("helm"),
            kubeconfig: kubeconfig.to_path_buf(),
            namespace: namespace.to_string(),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args);
        cmd
    }

    pub fn helm(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.helm);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args)
            // helm's own state (repositories, cache) stays out of $HOME.
            .env(
                "HELM_CACHE_HOME",
                self.kubeconfig.with_file_name("helm-cache"),
            )
            .env(
                "HELM_CONFIG_HOME",
                self.kubeconfig.with_file_name("helm-config"),
            )
            .env(
                "HELM_DATA_HOME",
                self.kubeconfig.with_file_name("helm-data"),
            );
        cmd
    }

    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        output(&mut self.command(args), CALL)
    }
}

impl crate::kube_target::Kubectl for Kubectl {
    fn command(&self, args: &[&str]) -> Command {
        Kubectl::command(self, args)
    }
}
