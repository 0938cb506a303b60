//! End-to-end scenarios, written once against [`Target`]: the local runtime
//! implements it (`local.rs`), so does a real control plane built from Go
//! modules with a process kubelet (`controlplane.rs`), and a kind cluster
//! driven through kubectl (`kind.rs`) where kind and Docker exist. Every wait
//! is bounded in time.

pub mod controlplane;
pub mod kind;
pub mod kube_target;
pub mod local;
pub mod manifests;
pub mod scenarios;

use std::time::{Duration, Instant};

use raft_operator::backup::RaftClusterBackupStatus;
use raft_operator::crd::RaftClusterStatus;
use raftlane_tls::files::Material;
use raftlane_tls::{Dialer, TlsSource};

/// A running RaftCluster, however it is hosted.
#[allow(async_fn_in_trait)]
pub trait Target {
    /// Sets `spec.replicas` as a user would (edit the file, `kubectl scale`).
    async fn scale(&mut self, replicas: u32) -> anyhow::Result<()>;
    /// The status the operator last wrote.
    async fn status(&self) -> anyhow::Result<Option<RaftClusterStatus>>;
    /// Client endpoints of the members.
    async fn endpoints(&self) -> anyhow::Result<Vec<String>>;
    /// Admin address of member `id`.
    async fn admin(&self, id: u64) -> anyhow::Result<String>;
    /// How a user dials the members with the certificate the operator issued
    /// for `user` (`admin` or `client`): a file under the state dir, a Secret.
    async fn dialer_for(&self, user: &str) -> anyhow::Result<Dialer>;
    /// As the cluster's admin.
    async fn dialer(&self) -> anyhow::Result<Dialer> {
        self.dialer_for("admin").await
    }
    /// Merges `spec` (JSON) into the RaftCluster's spec, as `kubectl patch
    /// --type=merge` does (an edit of the file locally).
    async fn patch_spec(&mut self, spec: serde_json::Value) -> anyhow::Result<()>;
    /// Sets `spec.paused`.
    async fn set_paused(&mut self, paused: bool) -> anyhow::Result<()> {
        self.patch_spec(serde_json::json!({ "paused": paused }))
            .await
    }
    /// Sets `spec.failureReplacement.after` (e.g. "10s").
    async fn replace_failed_after(&mut self, after: &str) -> anyhow::Result<()> {
        self.patch_spec(serde_json::json!({ "failureReplacement": { "after": after } }))
            .await
    }
    /// An image (`spec.image`) other than the one members run now: with
    /// `works`, raft-node under another name (locally a copy of the binary at
    /// another path, on Kubernetes another tag of its image); without, one
    /// whose members never become healthy (a raft-node that exits at start,
    /// an image that does not exist).
    async fn rollout_image(&mut self, works: bool) -> anyhow::Result<String>;
    /// Applies RaftClusterBackup `name` of this cluster: `spec` merged over
    /// `{cluster: <this cluster>}` (a document beside the cluster's in the
    /// local manifest, `kubectl apply` on Kubernetes).
    async fn apply_backup(&mut self, name: &str, spec: serde_json::Value) -> anyhow::Result<()>;
    /// The status the operator last wrote for RaftClusterBackup `name`.
    async fn backup_status(&self, name: &str) -> anyhow::Result<Option<RaftClusterBackupStatus>>;
    /// A new RaftCluster `name` of `replicas` members beside this one (its
    /// own operator locally, the same namespace and operator on
    /// Kubernetes), with `spec` merged into its spec.
    async fn new_cluster(
        &mut self,
        name: &str,
        replicas: u32,
        spec: serde_json::Value,
    ) -> anyhow::Result<Self>
    where
        Self: Sized;
    /// Makes member `id` unable to start from now on (its data dir turned
    /// into a file, so raft-node fails at start every time) and kills it.
    async fn break_member(&mut self, id: u64) -> anyhow::Result<()>;
    /// Kills member `id`'s process with `kill -9` and leaves the restart to
    /// the runtime: the kubelet restarts the container in place (same pod,
    /// same environment and volumes); the local operator starts the process
    /// again.
    async fn kill_process(&mut self, id: u64) -> anyhow::Result<()>;
    /// Empties member `id`'s storage under its running instance (its raft log
    /// and snapshots removed, as a volume swapped or wiped under it), then
    /// [`Target::kill_process`].
    async fn wipe_member(&mut self, id: u64) -> anyhow::Result<()>;
    /// Kills member `id` abruptly (`kill -9`, pod deleted with no grace).
    async fn kill_member(&mut self, id: u64) -> anyhow::Result<()>;
    /// Kills member `id` and destroys its data, as a lost disk would (data dir
    /// removed, PVC deleted).
    async fn lose_member(&mut self, id: u64) -> anyhow::Result<()>;
    /// Identity of member `id`'s running instance (pid, pod uid): unchanged
    /// means not restarted.
    async fn incarnation(&self, id: u64) -> anyhow::Result<Option<String>>;
    /// Stops the operator and starts it again; with `failpoint`, the new one
    /// crashes at that point.
    async fn restart_operator(&mut self, failpoint: Option<&str>) -> anyhow::Result<()>;
    /// True once the operator has exited (a failpoint fired).
    async fn operator_exited(&mut self) -> anyhow::Result<bool>;
}

/// The `kubectl` calls that roll the operator's Deployment `deployment` with
/// the operator's failpoint set to `failpoint` (cleared with None), in order.
pub fn failpoint_rollout(deployment: &str, failpoint: Option<&str>) -> [Vec<String>; 3] {
    use raft_operator::reconcile::FAILPOINT_ENV;
    let env = match failpoint {
        Some(f) => format!("{FAILPOINT_ENV}={f}"),
        None => format!("{FAILPOINT_ENV}-"),
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect();
    [
        args(&["set", "env", deployment, &env]),
        args(&["rollout", "restart", deployment]),
        args(&["rollout", "status", deployment, "--timeout=90s"]),
    ]
}

/// True when a container of `pod` (the API's JSON) ended, now or last time,
/// with the operator's failpoint exit code.
pub fn ended_at_failpoint(pod: &serde_json::Value) -> bool {
    let code = serde_json::json!(raft_operator::reconcile::FAILPOINT_EXIT_CODE);
    let statuses = pod["status"]["containerStatuses"].as_array();
    statuses.into_iter().flatten().any(|c| {
        c["state"]["terminated"]["exitCode"] == code
            || c["lastState"]["terminated"]["exitCode"] == code
    })
}

/// `kubectl` arguments that merge `spec` (JSON) into RaftCluster `name`'s spec.
pub fn spec_patch(name: &str, spec: serde_json::Value) -> [String; 5] {
    [
        "patch".into(),
        format!("raftcluster/{name}"),
        "--type=merge".into(),
        "--patch".into(),
        serde_json::json!({ "spec": spec }).to_string(),
    ]
}

/// Name of the Secret holding `user`'s certificate (`admin`, `client`), as
/// the operator names it.
pub fn user_secret(cluster: &str, user: &str) -> anyhow::Result<String> {
    use raft_operator::certs::Leaf;
    let leaf = match user {
        "admin" => Leaf::Admin,
        "client" => Leaf::Client,
        other => anyhow::bail!("no user certificate {other:?}"),
    };
    Ok(raft_operator::k8s::resources::leaf_secret_name(
        cluster, &leaf,
    ))
}

/// A dialer from the PEM of a user Secret's `tls.crt`, `tls.key`, `ca.crt`.
pub fn dialer_from_pem(cert: &[u8], key: &[u8], ca: &[u8]) -> anyhow::Result<Dialer> {
    let m = Material::from_pem(Some(cert), Some(key), ca)?;
    Ok(Dialer::Tls(TlsSource::fixed(m)))
}

/// A dialer from user Secret `secret` (named `name` in errors).
pub fn dialer_from_secret(
    name: &str,
    secret: Option<k8s_openapi::api::core::v1::Secret>,
) -> anyhow::Result<Dialer> {
    use anyhow::Context;
    let secret = secret.with_context(|| format!("Secret {name} not found"))?;
    let data = secret.data.unwrap_or_default();
    let field = |k: &str| {
        data.get(k)
            .map(|b| b.0.clone())
            .with_context(|| format!("Secret {name} lacks {k}"))
    };
    dialer_from_pem(&field("tls.crt")?, &field("tls.key")?, &field("ca.crt")?)
}

/// Polls `check` every 200 ms until it returns Some, failing after `within`.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: not reached within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
