//! The `RaftCluster` custom resource (`raftlane.io/v1alpha1`): what a user asks
//! for (spec) and what the operator observed (status). The schema, CEL rules,
//! scale subresource and printer columns are generated from these types by
//! `raft-operator crdgen` into `crds/raftcluster.yaml`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Raft cluster of `raft-node` members.
// Each `printcolumn(...)` repeats the keys `name` and `type_`, which clippy's
// duplicated_attributes lint mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "raftlane.io",
    version = "v1alpha1",
    kind = "RaftCluster",
    namespaced,
    shortname = "raft",
    status = "RaftClusterStatus",
    cel,
    // Member pods are `<name>-<ordinal>` with hostname and subdomain
    // `<name>-peers`: the name must leave room in a 63-character DNS label.
    validation = Rule::new(
        "size(self.metadata.name) <= 50 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
    )
    .message("metadata.name must be a DNS label of at most 50 characters starting with a letter"),
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Updated", type_ = "integer", json_path = ".status.updatedReplicas"),
    printcolumn(name = "Leader", type_ = "string", json_path = ".status.leader"),
    printcolumn(
        name = "Available",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Available\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "has(self.restore) == has(oldSelf.restore) && (!has(self.restore) || self.restore == oldSelf.restore)"
)
.message(
    "spec.restore is set only when a cluster is created: a cluster that exists is never restored into"
))]
pub struct RaftClusterSpec {
    /// Members of the cluster (ids 1..=replicas), at most 254. Scale by changing it.
    #[x_kube(
        validation = Rule::new("self >= 1").message("replicas must be at least 1"),
        validation = Rule::new("self <= 254").message("spec.replicas must be at most 254")
    )]
    pub replicas: u32,
    /// Container image of raft-node (Kubernetes runtime only); defaults to the
    /// release of raft-node matching this operator's version.
    #[serde(default = "default_image")]
    pub image: String,
    /// Pull policy of the members' image: Always, IfNotPresent or Never; unset
    /// means Kubernetes' default (Always for `:latest`, else IfNotPresent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// Secrets in the cluster's namespace for pulling the members' image, as
    /// in a Pod: `[{name: regcred}]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<PullSecret>,
    /// Resources of each member's container (Kubernetes runtime only).
    /// Unset: requests 100m CPU and 256Mi memory, limit 1Gi memory (the
    /// ports' buffers are bounded; the key-value data is held in memory on
    /// top of them, so size the limit to the data plus 512Mi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default)]
    pub storage: StorageSpec,
    #[serde(default)]
    pub raft: RaftSettings,
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "spec.tls cannot change once the cluster exists: its members run with it \
         (create a new cluster from a backup instead)"
    ))]
    pub tls: TlsSpec,
    /// Pod placement overrides (Kubernetes runtime only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// While true the operator only observes and writes the status (condition
    /// ReconciliationPaused): no member is created, changed or deleted.
    #[serde(default)]
    pub paused: bool,
    /// Replace a member that stays unhealthy (down, unreachable, its node
    /// gone) for longer than `after`. Off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_replacement: Option<FailureReplacement>,
    /// How a change to `image`, `resources`, `raft` or `placement` reaches
    /// running members: a rolling update, one member at a time.
    #[serde(default)]
    pub update_strategy: UpdateStrategy,
    /// Start this new cluster from a backup: every initial member
    /// bootstraps from the file (its checksum verified), then replicates as
    /// usual. Set only when the cluster is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreSpec>,
}

/// Where a new cluster's initial state comes from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSpec {
    /// The backup file: locally its path; on Kubernetes its name on the
    /// backup volume of `backup` (as `status.backups[].file` lists it).
    #[x_kube(validation = Rule::new("self != ''").message("spec.restore.file must name a backup file"))]
    pub file: String,
    /// Kubernetes: the RaftClusterBackup whose PVC (`<backup>-backups`)
    /// holds `file`; the initial members mount it read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
}

/// A rolling update restarts members on their own data, one at a time,
/// followers first and the leader last (after moving leadership away), each
/// only once every other member is healthy and caught up.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStrategy {
    /// How long a member restarted at the new revision may stay unhealthy
    /// before the rollout is reported stalled (condition Degraded, reason
    /// RolloutStalled), e.g. `10m`, `90s` (at least 10s). The rollout never
    /// goes on past an unhealthy member; reverting the spec resumes it.
    #[serde(default = "default_progress_deadline")]
    #[schemars(regex(pattern = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"))]
    #[x_kube(validation = Rule::new("self != '' && duration(self) >= duration('10s')")
        .message("spec.updateStrategy.progressDeadline must be a duration of at least 10s such as 10m"))]
    pub progress_deadline: String,
}

fn default_progress_deadline() -> String {
    "10m".into()
}

impl Default for UpdateStrategy {
    fn default() -> Self {
        UpdateStrategy {
            progress_deadline: default_progress_deadline(),
        }
    }
}

impl UpdateStrategy {
    /// `progressDeadline` as a duration; None when it does not parse or is
    /// under 10 s.
    pub fn progress_deadline(&self) -> Option<std::time::Duration> {
        duration(&self.progress_deadline)
    }
}

/// A duration such as `1h30m`, `90s`; None when it does not parse or is under
/// 10 s (a restart or a reschedule takes about that long).
pub(crate) fn duration(text: &str) -> Option<std::time::Duration> {
    let mut secs = 0u64;
    let mut num = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = std::mem::take(&mut num).parse().ok()?;
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        secs = secs.checked_add(n.checked_mul(unit)?)?;
    }
    (num.is_empty() && secs >= 10).then(|| std::time::Duration::from_secs(secs))
}

/// Failed-member replacement: a member of the membership unhealthy for
/// longer than `after` has its process or pod deleted and its storage
/// retired, is removed from the membership, then added back as a new learner
/// on fresh storage and promoted once caught up. Only while a healthy quorum
/// holds without it, one member at a time, and never during another
/// membership operation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailureReplacement {
    /// How long a member may stay unhealthy, e.g. `10m`, `90s`, `1h30m`
    /// (at least 10s: a restart or a reschedule must not count).
    #[schemars(regex(pattern = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"))]
    #[x_kube(validation = Rule::new("self != '' && duration(self) >= duration('10s')")
        .message("spec.failureReplacement.after must be a duration of at least 10s such as 10m"))]
    pub after: String,
}

impl FailureReplacement {
    /// `after` as a duration; None when it does not parse or is under 10 s.
    pub fn after(&self) -> Option<std::time::Duration> {
        duration(&self.after)
    }
}

/// The most members a cluster may have, in every runtime: the local runtime
/// puts member `id` on 127.0.0.`id` (1 to 254). The CRD rule on
/// `spec.replicas` says the same number.
pub const MAX_REPLICAS: u32 = 254;

/// raft-node's image of this operator's own version, as the release
/// workflow (.github/workflows/release.yml) publishes it.
pub fn default_image() -> String {
    format!("ghcr.io/raftlane/raft-node:{}", env!("CARGO_PKG_VERSION"))
}

/// A container's image pull policy (the Pod field `imagePullPolicy`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// A Secret holding registry credentials, by name (a Pod's
/// `imagePullSecrets` entry).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PullSecret {
    pub name: String,
}

/// Each member's volume.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Volume size (a Kubernetes quantity such as 1Gi); it may grow, never
    /// shrink. At least 512Mi plus twice the data kept: raft-node's log is
    /// written in 128 MiB files, of which up to three may be on disk, and a
    /// snapshot is written beside the previous one. The default 1Gi leaves
    /// room for about 250 MiB of data.
    #[serde(default = "default_storage_size")]
    // The pattern is the quantity grammar of the schema check (`make
    // manifests`); the CEL rule says the same to `raft-operator validate`.
    #[schemars(regex(pattern = QUANTITY_PATTERN))]
    #[x_kube(
        validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))")
            .message("storage.size must be a positive quantity such as 1Gi or 500Mi"),
        validation = Rule::new("quantity(self).compareTo(quantity(oldSelf)) >= 0")
            .message("storage size cannot shrink")
    )]
    pub size: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    #[serde(default)]
    pub retention_policy: RetentionPolicy,
}

/// A Kubernetes quantity, as `resource.Quantity` parses it (no sign: a
/// volume's size is positive).
const QUANTITY_PATTERN: &str = r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

fn default_storage_size() -> String {
    "1Gi".into()
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_storage_size(),
            storage_class_name: None,
            retention_policy: RetentionPolicy::default(),
        }
    }
}

/// What happens to a member's volume when it is scaled away or the cluster is
/// deleted. A retained volume is never reused by another member identity.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RetentionPolicy {
    #[serde(default)]
    pub when_scaled: Retention,
    #[serde(default)]
    pub when_deleted: Retention,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Retention {
    #[default]
    Retain,
    Delete,
}

/// Raft timing and transport settings passed to every member.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.heartbeatTicks < self.electionTicks")
    .message("heartbeatTicks must be below electionTicks"))]
pub struct RaftSettings {
    /// Tick length, milliseconds.
    #[serde(default = "default_tick_ms")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 10000").message("tickMs must be 1 to 10000"))]
    pub tick_ms: u32,
    #[serde(default = "default_election_ticks")]
    pub election_ticks: u32,
    #[serde(default = "default_heartbeat_ticks")]
    #[x_kube(validation = Rule::new("self >= 1").message("heartbeatTicks must be at least 1"))]
    pub heartbeat_ticks: u32,
    /// Applied entries between snapshots.
    #[serde(default = "default_snapshot_entries")]
    #[x_kube(validation = Rule::new("self >= 1").message("snapshotEntries must be at least 1"))]
    pub snapshot_entries: u64,
    /// Lanes per peer: 4 (isolated) or 1 (multiplexed, for comparison).
    #[serde(default = "default_lanes")]
    #[x_kube(validation = Rule::new("self == 1 || self == 4").message("lanes must be 1 or 4"))]
    pub lanes: u32,
}

fn default_tick_ms() -> u32 {
    100
}
fn default_election_ticks() -> u32 {
    10
}
fn default_heartbeat_ticks() -> u32 {
    2
}
fn default_snapshot_entries() -> u64 {
    10_000
}
fn default_lanes() -> u32 {
    4
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            tick_ms: default_tick_ms(),
            election_ticks: default_election_ticks(),
            heartbeat_ticks: default_heartbeat_ticks(),
            snapshot_entries: default_snapshot_entries(),
            lanes: default_lanes(),
        }
    }
}

/// Mutual TLS on every member port. Each cluster has its own CA; every
/// member, the operator and the users' certificates name their identity
/// (`raftlane://<cluster>/member/<id>`, `/operator`, `/admin`, `/client/<name>`).
/// Certificates are renewed with a third of their lifetime left; set the
/// annotation `raftlane.io/rotate-ca` to a new value to rotate the CA.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.enabled || !has(self.issuerRef)")
    .message("spec.tls.issuerRef needs spec.tls.enabled: true"))]
#[x_kube(validation = Rule::new(
    "!has(self.issuerRef) || self.issuerRef.kind != 'ClusterIssuer' || self.insecureClusterIssuer")
    .message("spec.tls.issuerRef names a ClusterIssuer: whoever may create a Certificate for it in any namespace can mint this cluster's admin identity; use a namespaced Issuer, or set spec.tls.insecureClusterIssuer: true to accept that"))]
pub struct TlsSpec {
    /// TLS on every port (the default). false starts members with
    /// `--insecure-plaintext`: no encryption and no authentication, anyone who
    /// reaches a port can read and change the cluster. For benchmarks and
    /// isolated test networks only.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Let clients without a certificate read and write every key through
    /// the client port (still encrypted). Off by default: every port then
    /// requires a certificate of this cluster, and applications use the
    /// `client` certificate the operator issues (Secret `<name>-client-tls`).
    #[serde(default)]
    pub insecure_anonymous_clients: bool,
    /// Let cert-manager issue the certificates from this issuer instead of the
    /// operator's own CA: the operator creates cert-manager Certificates with
    /// the same Secret names (Kubernetes runtime only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
    /// Accept an `issuerRef` of kind ClusterIssuer. Identities are names in
    /// certificates, so anyone who may create a cert-manager Certificate for
    /// that issuer, in any namespace, can mint this cluster's admin (or a
    /// member's) identity. A namespaced Issuer whose CA serves this cluster
    /// alone needs no opt-in.
    #[serde(default)]
    pub insecure_cluster_issuer: bool,
}

fn default_true() -> bool {
    true
}

impl Default for TlsSpec {
    fn default() -> Self {
        TlsSpec {
            enabled: true,
            insecure_anonymous_clients: false,
            issuer_ref: None,
            insecure_cluster_issuer: false,
        }
    }
}

/// A cert-manager issuer, as a Certificate's `issuerRef` names it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// The Issuer's (or ClusterIssuer's) name.
    pub name: String,
    /// Issuer (in the cluster's namespace) or ClusterIssuer.
    #[serde(default = "default_issuer_kind")]
    #[x_kube(validation = Rule::new("self == 'Issuer' || self == 'ClusterIssuer'")
        .message("spec.tls.issuerRef.kind must be Issuer or ClusterIssuer"))]
    pub kind: String,
    /// The issuer's API group.
    #[serde(default = "default_issuer_group")]
    pub group: String,
}

fn default_issuer_kind() -> String {
    "Issuer".into()
}

fn default_issuer_group() -> String {
    "cert-manager.io".into()
}

/// Where member pods may run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
}

/// What the operator observed, written by it alone.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RaftClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Members that exist.
    #[serde(default)]
    pub replicas: u32,
    /// Members that are healthy (following the current leader).
    #[serde(default)]
    pub ready_replicas: u32,
    /// Label selector of the member pods, for the scale subresource.
    #[serde(default)]
    pub selector: String,
    /// Name of the leading member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    #[serde(default)]
    pub term: u64,
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub members: Vec<MemberStatus>,
    /// Available, Progressing, Degraded, ReconciliationPaused.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The membership change in flight, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// The voters the cluster was created with; members of this set are
    /// recreated with the same initial voters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_voters: Option<Vec<u64>>,
    /// Members of the membership that are not healthy, and since when: what
    /// failed-member replacement measures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub unhealthy: Vec<UnhealthyMember>,
    /// The revision every member ran when the last rollout completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    /// The revision of the spec now (a hash of image, resources, raft and
    /// placement): members at another one are rolled to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_revision: Option<String>,
    /// Members running at `updateRevision`.
    #[serde(default)]
    pub updated_replicas: u32,
}

impl RaftClusterStatus {
    /// Condition `type_` (see [`crate::naming::conditions`]) is `True`.
    pub fn is(&self, type_: &str) -> bool {
        self.conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
    }
}

/// A member that has not been healthy since `since` (RFC 3339), under the
/// spec revision `revision`: a spec change starts the count again (a revert
/// gives a member a failed rollout broke its chance to come back before it
/// could be taken for a failed member).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UnhealthyMember {
    pub id: u64,
    pub since: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

/// One member as last observed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    pub id: u64,
    pub name: String,
    /// Where its peer port listens now.
    pub address: String,
    pub role: MemberRole,
    pub healthy: bool,
    /// As of the last status write: progress alone does not cause one.
    pub applied_index: u64,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    Voter,
    Learner,
}

/// A condition whose transition time changes only when its status does.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    /// RFC 3339.
    pub last_transition_time: String,
    pub reason: String,
    pub message: String,
}

/// The CRD manifest, as `crdgen` writes it to `crds/raftcluster.yaml`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let body = serde_yaml::to_string(&RaftCluster::crd()).expect("the CRD serializes");
    format!("# Generated by `raft-operator crdgen`; do not edit.\n{body}")
}

/// Reads a RaftCluster manifest and checks it against the CRD's rules, so a bad
/// file is refused with the field and value named, as the API server would.
pub fn parse_cluster(yaml: &str) -> Result<RaftCluster, String> {
    let value: serde_json::Value =
        serde_yaml::from_str(yaml).map_err(|e| format!("not YAML: {e}"))?;
    let cluster: RaftCluster = serde_path(&value)?;
    RaftCluster::validate_cel(&cluster).map_err(|e| e.to_string())?;
    Ok(cluster)
}

/// A manifest of one RaftCluster and any RaftClusterBackups of it (YAML
/// documents separated by `---`), each checked as [`parse_cluster`] does.
pub fn parse_manifest(
    yaml: &str,
) -> Result<(RaftCluster, Vec<crate::backup::RaftClusterBackup>), String> {
    use serde::Deserialize as _;
    let (mut cluster, mut backups) = (None, Vec::new());
    for (i, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let value = serde_json::Value::deserialize(doc)
            .map_err(|e| format!("document {}: not YAML: {e}", i + 1))?;
        if value.is_null() {
            continue;
        }
        let in_doc = |e: String| format!("document {}: {e}", i + 1);
        match value["kind"].as_str() {
            Some("RaftCluster") if cluster.is_none() => {
                let c: RaftCluster = serde_path(&value).map_err(in_doc)?;
                RaftCluster::validate_cel(&c).map_err(|e| in_doc(e.to_string()))?;
                cluster = Some(c);
            }
            Some("RaftCluster") => return Err(in_doc("a second RaftCluster".into())),
            Some("RaftClusterBackup") => {
                backups.push(crate::backup::parse_backup(&value).map_err(in_doc)?)
            }
            other => {
                return Err(in_doc(format!(
                    "kind: {other:?} is neither RaftCluster nor RaftClusterBackup"
                )))
            }
        }
    }
    let cluster = cluster.ok_or("no RaftCluster in the manifest")?;
    let name = cluster.metadata.name.clone().unwrap_or_default();
    if let Some(b) = backups.iter().find(|b| b.spec.cluster != name) {
        return Err(format!(
            "RaftClusterBackup {}: spec.cluster: {:?} is not this manifest's cluster {name:?}",
            b.metadata.name.as_deref().unwrap_or_default(),
            b.spec.cluster
        ));
    }
    Ok((cluster, backups))
}

/// Deserializes, naming the path of a field whose value has the wrong shape.
fn serde_path(value: &serde_json::Value) -> Result<RaftCluster, String> {
    serde_path_to_error::deserialize(value).map_err(|e| format!("{}: {}", e.path(), e.inner()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn defaults_fill_an_minimal_spec() {
        let spec: RaftClusterSpec =
            serde_json::from_value(serde_json::json!({"replicas": 3})).unwrap();
        assert_eq!(spec.raft, RaftSettings::default());
        assert_eq!(spec.storage.size, "1Gi");
        assert!(
            spec.tls.enabled
                && !spec.tls.insecure_anonymous_clients
                && spec.tls.issuer_ref.is_none()
        );
        let spec: RaftClusterSpec = serde_json::from_value(
            serde_json::json!({"replicas": 3, "tls": {"issuerRef": {"name": "ca"}}}),
        )
        .unwrap();
        let issuer = spec.tls.issuer_ref.unwrap();
        assert_eq!(
            (issuer.kind.as_str(), issuer.group.as_str()),
            ("Issuer", "cert-manager.io")
        );
        assert!(spec.tls.enabled);
        let crd = serde_json::to_string(&RaftCluster::crd()).unwrap();
        for want in [
            "x-kubernetes-validations",
            "scale",
            "Available",
            "x-kubernetes-list-map-keys",
            "raft",
        ] {
            assert!(crd.contains(want), "CRD lacks {want}");
        }
    }
}
