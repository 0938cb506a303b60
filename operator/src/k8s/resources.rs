//! The Kubernetes objects of one RaftCluster, built from its spec alone: per
//! member a bare Pod, a PVC and (with TLS) a certificate Secret mounted at
//! [`TLS_DIR`]; per cluster a headless peer Service, a client Service, a
//! PodDisruptionBudget, a NetworkPolicy, the CA Secret and the users'
//! certificate Secrets (or cert-manager Certificates filling them). Names and labels live here so
//! the runtime, the controller and the tests agree on them.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::ByteString;
use kube::core::{ApiResource, DynamicObject};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::certs::{self, Ca, Leaf, StoredLeaf};
use crate::crd::{IssuerRef, RaftCluster, Retention};
use crate::revision;
use crate::runtime::launch::{ExpectState, Launch, Listen, Transport};

pub use crate::naming::{
    member_name, selector, selector_labels, ADMIN_PORT, CLIENT_PORT, METRICS_PORT, PEER_PORT,
};

/// Label carrying a member's raft id on its Pod and PVC.
pub const MEMBER_ID_LABEL: &str = "raftlane.io/member-id";
/// Label tying a PVC to one cluster incarnation (the RaftCluster's UID), so a
/// cluster re-created under the same name never adopts old volumes.
pub const CLUSTER_UID_LABEL: &str = "raftlane.io/cluster-uid";
/// Set on a PVC whose member left: it is kept (retention) but never reused.
pub const RETIRED_LABEL: &str = "raftlane.io/retired";
/// On a member Pod: the spec revision it was created at (see
/// [`crate::revision`]); a Pod at another revision is rolled.
pub const REVISION_LABEL: &str = "raftlane.io/revision";
/// Set on a member's volume and Pod once its `Status` showed raft state: every
/// later start of that member must find it (a wiped volume is refused).
pub const HOLDS_STATE_ANNOTATION: &str = "raftlane.io/holds-state";
/// Where a member pod sees its own [`HOLDS_STATE_ANNOTATION`] (a downward-API
/// volume), read by raft-node at every start as `--expect-state-file`.
const MEMBER_INFO_DIR: &str = "/etc/raftlane/member";
const HOLDS_STATE_FILE: &str = "holds-state";
/// A member pod's own scratch volume (emptyDir: it outlives container restarts
/// and node reboots, not the pod), where raft-node writes its state marker.
const MEMBER_SCRATCH_DIR: &str = "/var/run/raftlane";
/// The raft-node container of a member pod.
pub const CONTAINER: &str = "raft-node";
/// Where member data lives in the container.
const DATA_DIR: &str = "/data";
/// The non-root user of the raft-node image.
const RUN_AS: i64 = 65532;
/// Where a member pod mounts its TLS Secret (read-only).
pub const TLS_DIR: &str = "/etc/raftlane/tls";
/// On a certificate Secret: which certificate it holds (`ca`, `member-<id>`,
/// `admin`, `client`).
pub const CERTIFICATE_LABEL: &str = "raftlane.io/certificate";
/// On a certificate Secret: the generation of the CA that issued it.
pub const CA_GENERATION_ANNOTATION: &str = "raftlane.io/ca-generation";
/// Where the initial members of a restored cluster mount the backup volume.
pub const RESTORE_DIR: &str = "/restore";

/// The PVC the backups of RaftClusterBackup `backup` are written to.
pub fn backup_claim_name(backup: &str) -> String {
    format!("{backup}-backups")
}

/// The headless Service that gives each member a stable DNS name.
pub fn peer_service_name(cluster: &str) -> String {
    format!("{cluster}-peers")
}

fn labels(cluster: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(cluster);
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        "raft-operator".into(),
    );
    l.insert("app.kubernetes.io/component".into(), "member".into());
    l
}

fn member_labels(rc: &RaftCluster, id: u64) -> BTreeMap<String, String> {
    let mut l = labels(&rc.name_any());
    l.insert(MEMBER_ID_LABEL.into(), id.to_string());
    l
}

fn owner(rc: &RaftCluster) -> serde_json::Value {
    json!([rc
        .controller_owner_ref(&())
        .expect("a stored RaftCluster has a UID")])
}

/// Metadata of an object the cluster owns as a whole (Services, PDB).
fn cluster_object(rc: &RaftCluster, name: &str) -> serde_json::Value {
    json!({"name": name, "labels": labels(&rc.name_any()), "ownerReferences": owner(rc)})
}

/// The stable DNS name of member `id`'s peer port.
pub fn peer_dns(rc: &RaftCluster, id: u64) -> String {
    let name = rc.name_any();
    format!(
        "{}.{}.{}.svc:{PEER_PORT}",
        member_name(&name, id),
        peer_service_name(&name),
        rc.namespace().unwrap_or_default()
    )
}

/// The Secret holding the cluster's CA (ca.crt, ca.key, trust.crt, and the
/// rotation's previous.crt, generation and rotated-for).
pub fn ca_secret_name(cluster: &str) -> String {
    format!("{cluster}-ca")
}

/// The Secret of one certificate: `<name>-member-<id>-tls`, `<name>-admin-tls`,
/// `<name>-client-tls`, `<name>-backup-tls` (and `<name>-operator-tls`,
/// issued by cert-manager only).
pub fn leaf_secret_name(cluster: &str, leaf: &Leaf) -> String {
    format!("{cluster}-{}-tls", leaf.stem())
}

/// The NetworkPolicy of the cluster's member pods.
pub fn network_policy_name(cluster: &str) -> String {
    format!("{cluster}-peers")
}

/// The DNS names a member's certificate serves: its stable peer names and
/// the client Service's names.
pub fn member_names(rc: &RaftCluster, id: u64) -> Vec<String> {
    let name = rc.name_any();
    let ns = rc.namespace().unwrap_or_default();
    let pod = format!("{}.{}", member_name(&name, id), peer_service_name(&name));
    vec![
        format!("{pod}.{ns}.svc"),
        format!("{pod}.{ns}.svc.cluster.local"),
        name.clone(),
        format!("{name}.{ns}"),
        format!("{name}.{ns}.svc"),
        format!("{name}.{ns}.svc.cluster.local"),
    ]
}

fn secret_labels(rc: &RaftCluster, what: &str) -> BTreeMap<String, String> {
    let mut l = labels(&rc.name_any());
    l.insert(CERTIFICATE_LABEL.into(), what.into());
    l
}

fn bytes(s: &str) -> ByteString {
    ByteString(s.as_bytes().to_vec())
}

/// The CA Secret of `ca`, owned by the cluster (collected with it).
pub fn ca_secret(rc: &RaftCluster, ca: &Ca) -> Secret {
    let mut data = BTreeMap::from([
        ("ca.crt".to_string(), bytes(&ca.cert_pem)),
        ("ca.key".to_string(), bytes(&ca.key_pem)),
        ("trust.crt".to_string(), bytes(&ca.trust_bundle())),
        ("generation".to_string(), bytes(&ca.generation.to_string())),
    ]);
    if let Some(p) = &ca.previous_pem {
        data.insert("previous.crt".into(), bytes(p));
    }
    if let Some(r) = &ca.rotated_for {
        data.insert("rotated-for".into(), bytes(r));
    }
    if let Some(t) = ca.stage_since {
        data.insert("stage-since".into(), bytes(&unix_secs(t).to_string()));
    }
    let mut secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": ca_secret_name(&rc.name_any()),
            "labels": secret_labels(rc, "ca"),
            "ownerReferences": owner(rc),
        },
        "type": "Opaque",
    }))
    .expect("a valid Secret");
    secret.data = Some(data);
    secret
}

/// The Secret of one certificate (tls.crt, tls.key, and ca.crt: the trust
/// bundle), owned by the cluster.
pub fn leaf_secret(rc: &RaftCluster, leaf: &Leaf, stored: &StoredLeaf) -> Secret {
    let mut secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": leaf_secret_name(&rc.name_any(), leaf),
            "labels": secret_labels(rc, &leaf.stem()),
            "annotations": {CA_GENERATION_ANNOTATION: stored.generation.to_string()},
            "ownerReferences": owner(rc),
        },
        "type": "kubernetes.io/tls",
    }))
    .expect("a valid Secret");
    secret.data = Some(BTreeMap::from([
        ("tls.crt".to_string(), bytes(&stored.cert_pem)),
        ("tls.key".to_string(), bytes(&stored.key_pem)),
        ("ca.crt".to_string(), bytes(&stored.trust_pem)),
    ]));
    secret
}

/// One entry of a Secret's data as text.
pub fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    let b = secret.data.as_ref()?.get(key)?;
    String::from_utf8(b.0.clone()).ok()
}

/// The CA stored in `secret`, if it is whole.
pub fn ca_from_secret(secret: &Secret) -> Option<Ca> {
    Some(Ca {
        cert_pem: secret_text(secret, "ca.crt")?,
        key_pem: secret_text(secret, "ca.key")?,
        generation: secret_text(secret, "generation")?.trim().parse().ok()?,
        previous_pem: secret_text(secret, "previous.crt"),
        rotated_for: secret_text(secret, "rotated-for"),
        stage_since: secret_text(secret, "stage-since")
            .and_then(|t| t.trim().parse().ok())
            .map(|t| std::time::UNIX_EPOCH + std::time::Duration::from_secs(t)),
    })
}

/// Seconds since the Unix epoch, as stored.
fn unix_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The certificate stored in `secret`, if it is whole. A Secret without the
/// generation annotation (cert-manager's) reads as generation 0.
pub fn leaf_from_secret(secret: &Secret) -> Option<StoredLeaf> {
    Some(StoredLeaf {
        cert_pem: secret_text(secret, "tls.crt")?,
        key_pem: secret_text(secret, "tls.key")?,
        trust_pem: secret_text(secret, "ca.crt")?,
        generation: secret
            .annotations()
            .get(CA_GENERATION_ANNOTATION)
            .and_then(|g| g.parse().ok())
            .unwrap_or(0),
    })
}

/// Ingress to the cluster's peer port only from its own members. Only that
/// rule: policies add up, so any other port opened here would widen the
/// chart's policy (admin from the operator, client and metrics from the
/// configured sources), which a NetworkPolicy cannot scope per cluster.
pub fn network_policy(rc: &RaftCluster) -> NetworkPolicy {
    let name = rc.name_any();
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": cluster_object(rc, &network_policy_name(&name)),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(&name)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": selector_labels(&name)}}],
                    "ports": [{"protocol": "TCP", "port": PEER_PORT}],
                },
            ],
        },
    }))
    .expect("a valid NetworkPolicy")
}

/// cert-manager's Certificate kind (cert-manager.io/v1), served dynamically:
/// no cert-manager types are compiled in.
pub fn certificate_resource() -> ApiResource {
    ApiResource {
        group: "cert-manager.io".into(),
        version: "v1".into(),
        api_version: "cert-manager.io/v1".into(),
        kind: "Certificate".into(),
        plural: "certificates".into(),
    }
}

/// A cert-manager Certificate for `leaf`, issued by `issuer` into the Secret
/// the operator would otherwise write (members mount the same). cert-manager
/// renews it with a third of its 90 days left.
pub fn certificate(rc: &RaftCluster, leaf: &Leaf, issuer: &IssuerRef) -> DynamicObject {
    let name = rc.name_any();
    let uid = rc.uid().unwrap_or_default();
    let secret = leaf_secret_name(&name, leaf);
    let mut usages = vec!["digital signature", "key encipherment", "client auth"];
    let mut spec = json!({
        "secretName": secret,
        "secretTemplate": {"labels": secret_labels(rc, &leaf.stem())},
        "uris": [leaf.identity(&uid).uri()],
        // The operator's own rules: the same lifetime, renewed with a third left.
        "duration": format!("{}h", certs::LEAF_VALIDITY.as_secs() / 3600),
        "renewBefore": format!("{}h", certs::LEAF_VALIDITY.as_secs() / 3600 / 3),
        "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
        "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": issuer.group},
    });
    if let Some(id) = leaf.member_id() {
        usages.push("server auth");
        spec["dnsNames"] = json!(member_names(rc, id));
    }
    spec["usages"] = json!(usages);
    serde_json::from_value(json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {
            "name": secret,
            "labels": secret_labels(rc, &leaf.stem()),
            "ownerReferences": owner(rc),
        },
        "spec": spec,
    }))
    .expect("a valid Certificate")
}

/// Headless Service for peer traffic; it publishes members before they are
/// ready, because a member is ready only once it can reach its peers.
pub fn peer_service(rc: &RaftCluster) -> Service {
    let name = rc.name_any();
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": cluster_object(rc, &peer_service_name(&name)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": selector_labels(&name),
            "ports": [
                {"name": "peer", "port": PEER_PORT, "targetPort": "peer"},
                {"name": "admin", "port": ADMIN_PORT, "targetPort": "admin"},
            ],
        },
    }))
    .expect("a valid Service")
}

/// The Service clients use: the key-value API of every ready member.
pub fn client_service(rc: &RaftCluster) -> Service {
    let name = rc.name_any();
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": cluster_object(rc, &name),
        "spec": {
            "selector": selector_labels(&name),
            "ports": [{"name": "client", "port": CLIENT_PORT, "targetPort": "client"}],
        },
    }))
    .expect("a valid Service")
}

/// At most one member down by a voluntary disruption (drain, eviction).
pub fn disruption_budget(rc: &RaftCluster) -> PodDisruptionBudget {
    let name = rc.name_any();
    serde_json::from_value(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": cluster_object(rc, &name),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(&name)},
        },
    }))
    .expect("a valid PodDisruptionBudget")
}

/// A fresh volume for member `id` (a generated name: never an old volume's).
/// Owned by the cluster only when its data goes with the cluster.
pub fn volume_claim(rc: &RaftCluster, id: u64) -> PersistentVolumeClaim {
    let name = rc.name_any();
    let mut labels = member_labels(rc, id);
    labels.insert(CLUSTER_UID_LABEL.into(), rc.uid().unwrap_or_default());
    let storage = &rc.spec.storage;
    let mut claim = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "generateName": format!("data-{}-", member_name(&name, id)),
            "labels": labels,
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": storage.size}},
        },
    });
    if storage.retention_policy.when_deleted == Retention::Delete {
        claim["metadata"]["ownerReferences"] = owner(rc);
    }
    if let Some(class) = &storage.storage_class_name {
        claim["spec"]["storageClassName"] = json!(class);
    }
    serde_json::from_value(claim).expect("a valid PersistentVolumeClaim")
}

/// The securityContext of every pod the operator makes (members, backup
/// Jobs): the raft-node image's non-root user, seccomp RuntimeDefault.
pub fn pod_security() -> serde_json::Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

/// The securityContext of their containers: no privilege escalation, a
/// read-only root, no capabilities.
pub fn container_security() -> serde_json::Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "capabilities": {"drop": ["ALL"]},
    })
}

/// Member `id`'s Pod on volume `claim`. Peers are given by stable DNS name;
/// the operator pushes pod IPs once members run. `initial_voters` is set only
/// for the members that form a new cluster.
///
/// Whether raft-node must find state on the volume cannot live in the pod's
/// environment alone, which is fixed when the pod is created (the kubelet
/// restarts the container with it for the pod's whole life) while a member's
/// volume holds state only after its first start. Three things say it:
/// - raft-node's own state marker (`--state-marker`) on the pod's emptyDir,
///   written the moment its data first holds state, before anyone else could
///   know: a container restart or a node reboot within the pod finds it;
/// - the pod's [`HOLDS_STATE_ANNOTATION`], added to a running pod once the
///   operator sees the member's state and projected by a downward-API volume
///   (`--expect-state-file`, read at every start; the kubelet refreshes it
///   when it syncs the updated pod): it also covers a volume swapped under
///   the pod;
/// - for a pod created on a volume already known to hold state
///   (`holds_state`), `--expect-state` in its environment, which every
///   raft-node version reads.
pub fn member_pod(
    rc: &RaftCluster,
    id: u64,
    claim: &str,
    initial_voters: Option<&BTreeSet<u64>>,
    holds_state: bool,
) -> Pod {
    let name = rc.name_any();
    let spec = &rc.spec;
    let peers: BTreeMap<u64, String> = (1..=u64::from(spec.replicas).max(id))
        .map(|p| (p, peer_dns(rc, p)))
        .collect();
    let uid = rc.uid().unwrap_or_default();
    let launch = Launch {
        id,
        cluster_id: &uid,
        data_dir: DATA_DIR.into(),
        // `[::]` is the unspecified address of both families on Linux
        // (IPV6_V6ONLY off): the pod's IP may be IPv4 or IPv6.
        listen: Listen {
            peer: format!("[::]:{PEER_PORT}"),
            client: format!("[::]:{CLIENT_PORT}"),
            admin: format!("[::]:{ADMIN_PORT}"),
            metrics: format!("[::]:{METRICS_PORT}"),
            // Peers learn an unknown sender's address from its traffic: the
            // stable name is right for the pod's whole life (and needs no
            // IPv6 brackets).
            advertise: Some(peer_dns(rc, id)),
        },
        peers: &peers,
        initial_voters,
        expect_state: match holds_state {
            true => ExpectState::Yes,
            false => ExpectState::File(format!("{MEMBER_INFO_DIR}/{HOLDS_STATE_FILE}")),
        },
        state_marker: Some(format!("{MEMBER_SCRATCH_DIR}/{HOLDS_STATE_FILE}")),
        addrs_file: None,
        restore_from: spec
            .restore
            .as_ref()
            .map(|r| format!("{RESTORE_DIR}/{}", r.file)),
        raft: &spec.raft,
        transport: match spec.tls.enabled {
            true => Transport::Tls {
                cert: format!("{TLS_DIR}/tls.crt"),
                key: format!("{TLS_DIR}/tls.key"),
                ca: format!("{TLS_DIR}/ca.crt"),
                anonymous_clients: spec.tls.insecure_anonymous_clients,
            },
            false => Transport::Plaintext,
        },
    };
    let env: Vec<serde_json::Value> = launch
        .env()
        .into_iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": {"path": path, "port": "metrics"},
            "periodSeconds": period,
            "failureThreshold": failures,
        })
    };
    let mut pod_labels = member_labels(rc, id);
    // The initial members of a restored cluster read the backup from its
    // volume (read-only; the Kubernetes runtime refuses a restore naming no
    // RaftClusterBackup), at a revision of their own.
    let restore = spec.restore.as_ref().filter(|_| initial_voters.is_some());
    let revision = match restore {
        Some(_) => revision::restoring(spec),
        None => revision::of(spec),
    };
    pod_labels.insert(REVISION_LABEL.into(), revision);
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": member_name(&name, id),
            "labels": pod_labels,
            "ownerReferences": owner(rc),
        },
        "spec": {
            "hostname": member_name(&name, id),
            "subdomain": peer_service_name(&name),
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "enableServiceLinks": false,
            // Members never call the Kubernetes API: no token to steal.
            "automountServiceAccountToken": false,
            "securityContext": pod_security(),
            "containers": [{
                "name": CONTAINER,
                "image": spec.image,
                "env": env,
                // A refusal (a wiped volume) is told by its exit code; its
                // message, raft-node's last stderr lines, shows in the pod.
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "ports": [
                    {"name": "peer", "containerPort": PEER_PORT},
                    {"name": "client", "containerPort": CLIENT_PORT},
                    {"name": "admin", "containerPort": ADMIN_PORT},
                    {"name": "metrics", "containerPort": METRICS_PORT},
                ],
                // Neither probe needs a quorum: a forming cluster's members
                // must all be running before any of them can elect a leader.
                "startupProbe": probe("/healthz", 2, 30),
                "livenessProbe": probe("/healthz", 10, 3),
                "readinessProbe": probe("/readyz", 5, 2),
                "securityContext": container_security(),
                "volumeMounts": [
                    {"name": "data", "mountPath": DATA_DIR},
                    {"name": "member-info", "mountPath": MEMBER_INFO_DIR, "readOnly": true},
                    {"name": "member-scratch", "mountPath": MEMBER_SCRATCH_DIR},
                ],
            }],
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": claim}},
                {"name": "member-info", "downwardAPI": {"items": [{
                    "path": HOLDS_STATE_FILE,
                    "fieldRef": {
                        "fieldPath": format!("metadata.annotations['{HOLDS_STATE_ANNOTATION}']"),
                    },
                }]}},
                {"name": "member-scratch", "emptyDir": {"sizeLimit": "1Mi"}},
            ],
        },
    });
    if holds_state {
        pod["metadata"]["annotations"] = json!({HOLDS_STATE_ANNOTATION: "true"});
    }
    if spec.tls.enabled {
        // Group-readable: the files belong to root and the fsGroup. The
        // kubelet swaps them when the Secret is renewed; raft-node re-reads.
        pod["spec"]["volumes"]
            .as_array_mut()
            .expect("volumes")
            .push(json!({"name": "tls", "secret": {
                "secretName": leaf_secret_name(&name, &Leaf::Member(id)),
                "defaultMode": 0o440,
            }}));
        pod["spec"]["containers"][0]["volumeMounts"]
            .as_array_mut()
            .expect("volume mounts")
            .push(json!({"name": "tls", "mountPath": TLS_DIR, "readOnly": true}));
    }
    if let Some(backup) = restore.and_then(|r| r.backup.as_ref()) {
        pod["spec"]["volumes"]
            .as_array_mut()
            .expect("volumes")
            .push(json!({"name": "restore", "persistentVolumeClaim": {
                "claimName": backup_claim_name(backup),
                "readOnly": true,
            }}));
        pod["spec"]["containers"][0]["volumeMounts"]
            .as_array_mut()
            .expect("volume mounts")
            .push(json!({"name": "restore", "mountPath": RESTORE_DIR, "readOnly": true}));
    }
    pod["spec"]["containers"][0]["resources"] = match &spec.resources {
        Some(r) => json!(r),
        None => default_resources(),
    };
    if let Some(policy) = spec.image_pull_policy {
        pod["spec"]["containers"][0]["imagePullPolicy"] = json!(policy);
    }
    if !spec.image_pull_secrets.is_empty() {
        pod["spec"]["imagePullSecrets"] = json!(spec.image_pull_secrets);
    }
    if let Some(p) = &spec.placement {
        pod["spec"]["nodeSelector"] = json!(p.node_selector);
        pod["spec"]["tolerations"] = json!(p.tolerations);
        pod["spec"]["affinity"] = json!(p.affinity);
    }
    serde_json::from_value(pod).expect("a valid Pod")
}

/// A member's resources when the spec names none. Every port's buffers are
/// bounded (client 64 MiB, peer 128 MiB, admin 8 MiB of unfinished
/// messages), so a limit can be set without knowing the clients; the
/// key-value data lives in memory on top, so clusters holding more than
/// ~500 MiB of it set `spec.resources`.
fn default_resources() -> serde_json::Value {
    json!({
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"memory": "1Gi"},
    })
}
