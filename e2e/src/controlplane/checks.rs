//! What only a real API server can show, checked the way a user sees it:
//! the CRD's validation naming the field, `kubectl get raft` columns,
//! `kubectl describe` events and conditions, leader election between two
//! operator replicas, and what `kubectl delete raftcluster` leaves behind.

use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};
use raft_operator::certs::Leaf;
use raft_operator::crd::RaftCluster;
use raft_operator::k8s::resources::{ca_secret_name, leaf_secret_name};
use raft_operator::naming::conditions::{AVAILABLE, DEGRADED, PROGRESSING};

use super::env::{ControlPlaneEnv, NAMESPACE, RELEASE};
use crate::kind::cmd::{blocking, output};
use crate::kube_target::Kubectl as _;
use crate::wait_for;

const HANDOVER: Duration = Duration::from_secs(60);
/// As long as a scenario gives a membership operation.
const OPERATION: Duration = Duration::from_secs(90);

/// `kubectl apply` of an invalid RaftCluster fails, naming the field and
/// the CRD rule's message.
pub async fn invalid_cluster_refused(env: &ControlPlaneEnv) -> anyhow::Result<()> {
    let path = env.state_file("invalid.yaml");
    std::fs::write(
        &path,
        "apiVersion: raftlane.io/v1alpha1\nkind: RaftCluster\nmetadata:\n  name: invalid\nspec:\n  \
         replicas: 0\n  image: raftlane/raft-node:e2e\n  storage:\n    size: 256Mi\n",
    )?;
    let mut apply = env
        .kube
        .command(&["apply", "-f", &path.display().to_string()]);
    let err = blocking(move || output(&mut apply, Duration::from_secs(60)))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a RaftCluster with replicas: 0 was accepted"))?;
    let msg = format!("{err:#}");
    anyhow::ensure!(
        msg.contains("spec.replicas") && msg.contains("replicas must be at least 1"),
        "refusal does not name spec.replicas and its rule: {msg}"
    );
    eprintln!(
        "checked: replicas: 0 refused by the API server: {}",
        msg.rsplit("is invalid: ").next().unwrap_or_default().trim()
    );
    Ok(())
}

/// `kubectl get raft` (the short name) prints the printer columns, filled.
pub async fn printer_columns(env: &ControlPlaneEnv, name: &str) -> anyhow::Result<()> {
    let out = env.kube.call(&["get", "raft", name]).await?;
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    for col in ["NAME", "REPLICAS", "READY", "UPDATED", "LEADER", "AGE"] {
        anyhow::ensure!(header.contains(&col), "no {col} column: {header:?}");
    }
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let cell = |col: &str| {
        let i = header.iter().position(|h| *h == col)?;
        row.get(i).copied()
    };
    anyhow::ensure!(
        row.len() == header.len()
            && cell("NAME") == Some(name)
            && cell("REPLICAS") == Some("3")
            && cell("READY") == Some("3")
            && cell("UPDATED") == Some("3")
            && cell("LEADER").is_some_and(|l| l.starts_with(name)),
        "row {row:?} under {header:?}"
    );
    eprintln!("checked: kubectl get raft:\n{}", out.trim_end());
    Ok(())
}

/// `kubectl describe raftcluster` shows the conditions and the operator's events.
pub async fn describe_shows_conditions_and_events(
    env: &ControlPlaneEnv,
    name: &str,
) -> anyhow::Result<()> {
    let out = env.kube.call(&["describe", "raftcluster", name]).await?;
    anyhow::ensure!(out.contains("Conditions:"), "no conditions:\n{out}");
    for cond in [AVAILABLE, PROGRESSING, DEGRADED] {
        anyhow::ensure!(out.contains(cond), "no {cond} condition:\n{out}");
    }
    let events = out.split("Events:").nth(1).unwrap_or_default();
    let rows: Vec<&str> = events
        .lines()
        .filter(|l| l.trim_start().starts_with("Normal") || l.trim_start().starts_with("Warning"))
        .collect();
    anyhow::ensure!(!rows.is_empty(), "no events in describe:\n{out}");
    eprintln!(
        "checked: kubectl describe shows the conditions and {} events, e.g. {}",
        rows.len(),
        rows[0].split_whitespace().collect::<Vec<_>>().join(" ")
    );
    Ok(())
}

async fn holder(env: &ControlPlaneEnv) -> anyhow::Result<Option<String>> {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), NAMESPACE);
    Ok(leases
        .get_opt(RELEASE)
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity))
}

async fn operator_pods(env: &ControlPlaneEnv) -> anyhow::Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), NAMESPACE);
    let selector = format!("app.kubernetes.io/instance={RELEASE}");
    let list = pods.list(&ListParams::default().labels(&selector)).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect())
}

/// `raft_operator_is_leader` of one operator pod, from its metrics port.
async fn is_leader(pod: &Pod) -> anyhow::Result<Option<bool>> {
    let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
        return Ok(None);
    };
    let addr = format!("{ip}:8080");
    let body = tokio::time::timeout(Duration::from_secs(5), async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&addr).await?;
        let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        anyhow::Ok(body)
    })
    .await;
    let Ok(Ok(body)) = body else { return Ok(None) };
    Ok(body
        .lines()
        .find_map(|l| l.strip_prefix("raft_operator_is_leader "))
        .map(|v| v.trim() == "1"))
}

/// Two operator replicas (helm upgrade --set replicaCount=2): the Lease
/// holder alone reports itself leader; the holder's pod deleted, the other
/// takes the Lease. Returns the handover time.
pub async fn two_operators_hand_over(env: &ControlPlaneEnv) -> anyhow::Result<Duration> {
    let mut helm = env.kube.helm(&["upgrade", RELEASE]);
    helm.arg(env.root().join("charts/raft-operator"))
        .args(["--reuse-values", "--set", "replicaCount=2"])
        .args(["--wait", "--timeout", "3m"]);
    blocking(move || output(&mut helm, Duration::from_secs(4 * 60))).await?;
    let first = wait_for("two operator pods, one leading", HANDOVER, || async {
        let pods = operator_pods(env).await?;
        let Some(h) = holder(env).await? else {
            return Ok(None);
        };
        if pods.len() != 2 {
            return Ok(None);
        }
        let mut leaders = Vec::new();
        for p in &pods {
            match is_leader(p).await? {
                Some(l) => leaders.push((p.metadata.name.clone().unwrap_or_default(), l)),
                None => return Ok(None),
            }
        }
        let leading: Vec<&String> = leaders.iter().filter(|(_, l)| *l).map(|(n, _)| n).collect();
        anyhow::ensure!(
            leading.len() <= 1,
            "two operators lead at once: {leaders:?}"
        );
        Ok((leading == [&h]).then_some(h))
    })
    .await?;
    eprintln!("checked: two operator replicas, only the Lease holder {first} leads");
    let killed = Instant::now();
    env.kube
        .call(&[
            "delete",
            "pod",
            &first,
            "--grace-period=0",
            "--force",
            "--wait=false",
        ])
        .await?;
    let second = wait_for("the other operator holding the Lease", HANDOVER, || async {
        Ok(holder(env).await?.filter(|h| h != &first))
    })
    .await?;
    let took = killed.elapsed();
    eprintln!("checked: holder {first} killed, {second} took the Lease");
    Ok(took)
}

/// After `kubectl delete raftcluster` (retention whenDeleted: Delete): no
/// pod, PVC, Service or PDB of the cluster is left (finalizer, then garbage
/// collection by owner references).
pub async fn nothing_left_of(env: &ControlPlaneEnv, name: &str) -> anyhow::Result<()> {
    let selector = raft_operator::naming::selector(name);
    let lp = ListParams::default().labels(&selector);
    let ns = NAMESPACE;
    wait_for(
        "the cluster's objects collected",
        Duration::from_secs(90),
        || async {
            let c = &env.client;
            let pods = Api::<Pod>::namespaced(c.clone(), ns)
                .list(&lp)
                .await?
                .items
                .len();
            let pvcs = Api::<PersistentVolumeClaim>::namespaced(c.clone(), ns)
                .list(&lp)
                .await?
                .items
                .len();
            let svcs = Api::<Service>::namespaced(c.clone(), ns)
                .list(&lp)
                .await?
                .items
                .len();
            let pdbs = Api::<PodDisruptionBudget>::namespaced(c.clone(), ns)
                .list(&lp)
                .await?
                .items
                .len();
            // Secrets by name prefix: garbage collection follows owners, not labels.
            let secrets = Api::<Secret>::namespaced(c.clone(), ns)
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .filter(|s| {
                    s.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| n.starts_with(&format!("{name}-")))
                })
                .count();
            Ok((pods + pvcs + svcs + pdbs + secrets == 0).then_some(()))
        },
    )
    .await?;
    eprintln!("checked: kubectl delete raftcluster left no pod, PVC, Service, PDB or Secret");
    Ok(())
}

/// The certificates the operator issued for RaftCluster `name` with
/// `members` members: the CA, one per member, the admin and client ones,
/// each owned by the RaftCluster (so deleting it collects them).
pub async fn tls_secrets_of(env: &ControlPlaneEnv, name: &str, members: u64) -> anyhow::Result<()> {
    let rc: Api<RaftCluster> = Api::namespaced(env.client.clone(), NAMESPACE);
    let uid = rc
        .get(name)
        .await?
        .metadata
        .uid
        .context("RaftCluster uid")?;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), NAMESPACE);
    let mut names = vec![
        ca_secret_name(name),
        leaf_secret_name(name, &Leaf::Admin),
        leaf_secret_name(name, &Leaf::Client),
    ];
    names.extend((1..=members).map(|id| leaf_secret_name(name, &Leaf::Member(id))));
    for n in &names {
        let s = secrets
            .get_opt(n)
            .await?
            .with_context(|| format!("Secret {n} missing"))?;
        let owned = s
            .metadata
            .owner_references
            .unwrap_or_default()
            .iter()
            .any(|o| o.uid == uid && o.kind == "RaftCluster");
        anyhow::ensure!(owned, "Secret {n} is not owned by RaftCluster {name}");
    }
    eprintln!(
        "checked: {} certificate Secrets, each owned by RaftCluster {name}",
        names.len()
    );
    Ok(())
}

/// A RaftCluster with `whenDeleted: Retain`, deleted: its pods go, its
/// volume stays, Bound, marked `raftlane.io/retired=true` and owned by
/// nothing (so garbage collection keeps it). The volume is deleted after.
pub async fn retained_volume_survives_deletion(env: &ControlPlaneEnv) -> anyhow::Result<()> {
    let name = "kept";
    let yaml = format!(
        "apiVersion: raftlane.io/v1alpha1\nkind: RaftCluster\nmetadata:\n  name: {name}\nspec:\n  \
         replicas: 1\n  image: raftlane/raft-node:e2e\n  storage:\n    size: 64Mi\n    \
         retentionPolicy:\n      whenScaled: Delete\n      whenDeleted: Retain\n"
    );
    let t = env.create_cluster_from(name, &yaml).await?;
    crate::scenarios::wait_settled(&t, 1).await?;
    env.delete_cluster(name).await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), NAMESPACE);
    let selector = raft_operator::naming::selector(name);
    let left = claims
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    anyhow::ensure!(
        left.len() == 1,
        "expected the one volume kept, found {}",
        left.len()
    );
    let pvc = &left[0];
    let labels = pvc.metadata.labels.clone().unwrap_or_default();
    let phase = pvc.status.as_ref().and_then(|s| s.phase.clone());
    anyhow::ensure!(
        labels.get("raftlane.io/retired").map(String::as_str) == Some("true")
            && pvc
                .metadata
                .owner_references
                .as_ref()
                .is_none_or(|o| o.is_empty())
            && phase.as_deref() == Some("Bound"),
        "kept volume: labels {labels:?}, owners {:?}, phase {phase:?}",
        pvc.metadata.owner_references
    );
    let pvc_name = pvc.metadata.name.clone().unwrap_or_default();
    eprintln!("checked: whenDeleted: Retain kept {pvc_name}, Bound, retired, owned by nothing");
    env.kube
        .call(&["delete", "pvc", &pvc_name, "--timeout=60s"])
        .await?;
    Ok(())
}

/// A follower's volume wiped under it (its host-path PV directory emptied)
/// and its pod deleted: the new pod's raft-node refuses the empty data dir
/// (exit 66, reported by the kubelet as the container's last state), the
/// operator retires that volume, and the member comes back on a fresh one
/// with every key. Returns the time from the wipe to three healthy voters.
pub async fn wiped_volume_is_replaced(
    env: &ControlPlaneEnv,
    t: &mut super::ControlPlaneTarget,
    keys: &[String],
) -> anyhow::Result<Duration> {
    use crate::Target;
    let s = crate::scenarios::wait_settled(t, 3).await?;
    let victim = crate::scenarios::follower(&s)?;
    let claim = t.claim(victim).await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), NAMESPACE);
    let dir = t.volume_dir(&claim).await?;
    let wiped = Instant::now();
    for entry in std::fs::read_dir(&dir)? {
        let p = entry?.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    t.kill_member(victim).await?;
    wait_for("the wiped volume retired", OPERATION, || async {
        let c = claims.get_opt(&claim).await?;
        Ok(c.filter(|c| {
            c.metadata.deletion_timestamp.is_some()
                || c.metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key("raftlane.io/retired"))
        })
        .map(|_| ()))
    })
    .await?;
    wait_for("a fresh volume for the member", OPERATION, || async {
        let p = t.pod(victim).await?;
        Ok(p.and_then(|p| p.claim).filter(|c| *c != claim).map(|_| ()))
    })
    .await?;
    crate::scenarios::wait_settled(t, 3).await?;
    let took = wiped.elapsed();
    crate::scenarios::check_keys(t, &[victim], keys).await?;
    eprintln!("checked: member {victim}'s wiped volume {claim} refused, retired and replaced");
    Ok(took)
}

/// What a Warning may be about for the no-warning checks: the operator's
/// RaftClusters and their pods and volumes. Endpoints and EndpointSlices are
/// left out: the controller manager refuses this harness's loopback pod IPs
/// there, which a real network never gives.
const WATCHED_KINDS: [&str; 3] = ["RaftCluster", "Pod", "PersistentVolumeClaim"];

/// Warning events about [`WATCHED_KINDS`] in the suite's namespace, as
/// `object: reason: message` lines, whose last occurrence is at or after
/// `since` (RFC 3339, second resolution).
pub async fn warnings_since(env: &ControlPlaneEnv, since: &str) -> anyhow::Result<Vec<String>> {
    use k8s_openapi::api::events::v1::Event;
    let since: jiff::Timestamp = since.parse()?;
    let events: Api<Event> = Api::namespaced(env.client.clone(), NAMESPACE);
    let list = events.list(&ListParams::default()).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter(|e| {
            let kind = e.regarding.as_ref().and_then(|r| r.kind.as_deref());
            kind.is_some_and(|k| WATCHED_KINDS.contains(&k))
        })
        .filter(|e| {
            let last = e
                .series
                .as_ref()
                .map(|s| s.last_observed_time.0)
                .or(e.event_time.as_ref().map(|t| t.0))
                .or(e.deprecated_last_timestamp.as_ref().map(|t| t.0));
            last.is_some_and(|t| t.as_second() >= since.as_second())
        })
        .map(|e| {
            let on = e.regarding.and_then(|r| r.name).unwrap_or_default();
            format!(
                "{on}: {}: {}",
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default()
            )
        })
        .collect())
}

/// A normal lifecycle step (creating, scaling, deleting) emits no Warning
/// event: waiting is not failing.
pub async fn no_warnings_since(
    env: &ControlPlaneEnv,
    since: &str,
    during: &str,
) -> anyhow::Result<()> {
    let warnings = warnings_since(env, since).await?;
    anyhow::ensure!(
        warnings.is_empty(),
        "Warning events during {during}: {warnings:#?}"
    );
    eprintln!("checked: no Warning event during {during}");
    Ok(())
}

/// `helm uninstall` while RaftCluster `name` exists is refused by the chart's
/// pre-delete hook, naming the cluster, and leaves the operator installed.
pub async fn uninstall_refused_while_a_cluster_exists(
    env: &ControlPlaneEnv,
    name: &str,
) -> anyhow::Result<()> {
    let mut helm = env
        .kube
        .helm(&["uninstall", RELEASE, "--wait", "--timeout", "2m"]);
    let refused = blocking(move || output(&mut helm, Duration::from_secs(3 * 60))).await;
    let err = match refused {
        Ok(out) => anyhow::bail!("helm uninstall went ahead with RaftCluster {name}: {out}"),
        Err(e) => format!("{e:#}"),
    };
    anyhow::ensure!(err.contains("uninstall-check"), "helm: {err}");
    let job = format!("{RELEASE}-uninstall-check");
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), NAMESPACE);
    let selector = "app.kubernetes.io/component=uninstall-check";
    let said = pods
        .list(&ListParams::default().labels(selector))
        .await?
        .items
        .iter()
        .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
        .collect::<Vec<_>>()
        .join("\n");
    anyhow::ensure!(
        said.contains(&format!("{NAMESPACE}/{name}")) && said.contains("--no-hooks"),
        "Job {job}'s termination message: {said:?}"
    );
    let deployments = env
        .kube
        .call(&["get", "deployments", "--output=name"])
        .await?;
    anyhow::ensure!(
        deployments.contains(RELEASE),
        "the operator was uninstalled: {deployments}"
    );
    eprintln!("checked: helm uninstall refused while RaftCluster {name} exists: {said}");
    Ok(())
}
