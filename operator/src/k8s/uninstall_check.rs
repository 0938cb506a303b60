//! `raft-operator uninstall-check`, the chart's pre-delete hook. Deleting a
//! RaftCluster needs a running operator: its finalizer (`raftlane.io/volumes`)
//! releases the cluster's volumes, and only the operator removes it. An
//! operator uninstalled first leaves every RaftCluster stuck deleting with
//! nothing to say why, so the uninstall is refused while any is left, naming
//! them and what to do instead.

use anyhow::Context;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use crate::crd::RaftCluster;

/// The refusal when `left` (`namespace/name`) is not empty.
pub fn refusal(left: &[String]) -> Option<String> {
    if left.is_empty() {
        return None;
    }
    Some(format!(
        "refusing to uninstall raft-operator: {} RaftCluster(s) left ({}). Deleting a \
         RaftCluster needs the operator (it releases the volumes and removes the \
         finalizer {}); without it they would stay stuck deleting. Delete them first \
         (kubectl delete raftclusters --all -n NAMESPACE, and wait until they are gone), \
         then uninstall again. To uninstall anyway, skip this check with \
         `helm uninstall --no-hooks` (README: Uninstalling).",
        left.len(),
        left.join(", "),
        super::controller::FINALIZER
    ))
}

/// Lists the RaftClusters of `namespace` (every namespace when `None`) and
/// fails with [`refusal`] when there is any.
pub async fn run(namespace: Option<&str>) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("no Kubernetes configuration (in-cluster or kubeconfig)")?;
    let api: Api<RaftCluster> = match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let list = match api.list_metadata(&ListParams::default()).await {
        // The CRD is gone already: so is every RaftCluster.
        Err(kube::Error::Api(e)) if e.code == 404 => {
            println!("no RaftCluster CRD: the uninstall may proceed");
            return Ok(());
        }
        r => r.context("listing RaftClusters (helm uninstall --no-hooks skips this check)")?,
    };
    let left: Vec<String> = list
        .items
        .iter()
        .map(|c| format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any()))
        .collect();
    match refusal(&left) {
        Some(why) => anyhow::bail!(why),
        None => {
            println!("no RaftCluster left: the uninstall may proceed");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_refusal_names_each_cluster_the_finalizer_and_the_way_out() {
        assert_eq!(super::refusal(&[]), None);
        let why = super::refusal(&["a/demo".into(), "b/other".into()]).unwrap();
        for part in [
            "2 RaftCluster(s) left (a/demo, b/other)",
            "raftlane.io/volumes",
            "--no-hooks",
        ] {
            assert!(why.contains(part), "{why}");
        }
    }
}
