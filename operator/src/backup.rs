//! The `RaftClusterBackup` resource (`raftlane.io/v1alpha1`): backups of one
//! RaftCluster, once or every `every`, the newest `keep` kept. A backup is
//! taken by `raftctl backup` from the cluster's leader (a consistent
//! snapshot, size and CRC32C checked, streamed to disk): locally by the
//! operator into `<state>/<cluster>/backups/`, on Kubernetes by a Job
//! writing to the PVC `<name>-backups`. The rules of when one is due and
//! how files are named live here, for both runtimes.

use std::time::Duration;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::crd::{duration, Condition};

/// Backups of one RaftCluster.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "raftlane.io",
    version = "v1alpha1",
    kind = "RaftClusterBackup",
    namespaced,
    shortname = "raftbackup",
    status = "RaftClusterBackupStatus",
    cel,
    // Its Jobs are `<name>-<yyyymmddhhmmss>`, and the Job name is a label
    // value of their pods (63 characters at most).
    validation = Rule::new(
        "size(self.metadata.name) <= 48 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
    )
    .message("metadata.name must be a DNS label of at most 48 characters starting with a letter"),
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(name = "Every", type_ = "string", json_path = ".spec.every"),
    printcolumn(name = "Last", type_ = "string", json_path = ".status.backups[0].file"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RaftClusterBackupSpec {
    /// The RaftCluster to back up, in the same namespace.
    #[x_kube(validation = Rule::new("self != ''").message("spec.cluster must name a RaftCluster"))]
    pub cluster: String,
    /// Take a backup this often, e.g. `24h`, `30m` (at least 10s); without
    /// it, one backup is taken when the resource is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"))]
    #[x_kube(validation = Rule::new("self != '' && duration(self) >= duration('10s')")
        .message("spec.every must be a duration of at least 10s such as 24h"))]
    pub every: Option<String>,
    /// How many backup files of this resource are kept, newest first; older
    /// ones are deleted after each successful backup.
    #[serde(default = "default_keep")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1000").message("spec.keep must be 1 to 1000"))]
    pub keep: u32,
    /// Kubernetes: the PVC `<name>-backups` the files are written to,
    /// created with this size when missing. It is not owned by this
    /// resource: deleting the resource keeps the backups.
    #[serde(default)]
    pub storage: BackupStorage,
}

fn default_keep() -> u32 {
    5
}

/// The backup volume (Kubernetes runtime only).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupStorage {
    /// Size of the PVC when it is created, e.g. `10Gi`.
    #[serde(default = "default_backup_size")]
    pub size: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

fn default_backup_size() -> String {
    "1Gi".into()
}

impl Default for BackupStorage {
    fn default() -> Self {
        BackupStorage {
            size: default_backup_size(),
            storage_class_name: None,
        }
    }
}

/// What was backed up, written by the operator alone.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RaftClusterBackupStatus {
    /// The backups kept, newest first.
    #[serde(default)]
    pub backups: Vec<BackupFile>,
    /// When the last backup was started (RFC 3339), successful or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt: Option<String>,
    /// Why the last attempt failed; cleared by a success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Kubernetes: the Job taking a backup now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Ready: the last attempt succeeded.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// One backup file.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BackupFile {
    /// Its name: a path locally, a file on the backup PVC on Kubernetes.
    pub file: String,
    /// When it was taken (RFC 3339).
    pub time: String,
    /// Bytes, and the file's own CRC32C (what a restore verifies), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32c: Option<u32>,
    /// The raft index the snapshot was taken at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
}

/// A failed attempt is tried again after this (or `every`, if shorter).
pub const RETRY_AFTER: Duration = Duration::from_secs(60);

impl RaftClusterBackupSpec {
    /// `every` as a duration; None without a schedule (or an invalid one).
    pub fn every(&self) -> Option<Duration> {
        self.every.as_deref().and_then(duration)
    }
}

/// When the next backup is due, from the status (None: not again).
pub fn next_due(
    spec: &RaftClusterBackupSpec,
    status: &RaftClusterBackupStatus,
) -> Option<jiff::Timestamp> {
    let Some(last) = status
        .last_attempt
        .as_deref()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    else {
        return Some(jiff::Timestamp::UNIX_EPOCH);
    };
    let failed = status.last_error.is_some();
    let wait = match (spec.every(), failed) {
        (Some(every), true) => every.min(RETRY_AFTER),
        (Some(every), false) => every,
        (None, true) => RETRY_AFTER,
        (None, false) => return None,
    };
    let wait = jiff::SignedDuration::try_from(wait).ok()?;
    last.checked_add(wait).ok()
}

/// True when a backup should start at `now` (none is running).
pub fn due(
    spec: &RaftClusterBackupSpec,
    status: &RaftClusterBackupStatus,
    now: jiff::Timestamp,
) -> bool {
    status.job.is_none() && next_due(spec, status).is_some_and(|t| t <= now)
}

/// The file a backup of resource `name` taken at `now` is written to:
/// `<name>-<yyyymmddThhmmssZ>.rlb`, which sorts by time (what `raftctl
/// backup --series <name> --keep N` relies on).
pub fn file_name(name: &str, now: jiff::Timestamp) -> String {
    format!("{name}-{}.rlb", now.strftime("%Y%m%dT%H%M%SZ"))
}

/// `status` after backup `file` succeeded at `now`: newest first, at most
/// `keep` listed (the older files are deleted by raftctl).
pub fn record_success(status: &mut RaftClusterBackupStatus, file: BackupFile, keep: u32) {
    status.last_error = None;
    status.job = None;
    status.backups.retain(|b| b.file != file.file);
    status.backups.insert(0, file);
    status.backups.truncate(keep as usize);
}

/// `status` after an attempt failed with `error`.
pub fn record_failure(status: &mut RaftClusterBackupStatus, error: String) {
    status.job = None;
    status.last_error = Some(error);
}

/// Sets the Ready condition from the last attempt (its time moves only when
/// its status does).
pub fn set_ready(status: &mut RaftClusterBackupStatus, now: &str) {
    let (value, reason, message) = match (&status.last_error, status.backups.first()) {
        (Some(e), _) => ("False", "BackupFailed", e.clone()),
        (None, Some(b)) => (
            "True",
            "BackedUp",
            format!("last backup {} at {}", b.file, b.time),
        ),
        (None, None) => ("False", "Pending", "no backup taken yet".to_string()),
    };
    let since = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == value)
        .map_or_else(|| now.to_string(), |c| c.last_transition_time.clone());
    status.conditions = vec![Condition {
        type_: "Ready".into(),
        status: value.into(),
        last_transition_time: since,
        reason: reason.into(),
        message,
    }];
}

/// How `raftctl backup` authenticates to the members: with the cluster's
/// admin certificate (PEM file paths), or plaintext for a cluster without TLS.
pub enum Auth {
    Tls {
        ca: String,
        cert: String,
        key: String,
    },
    Plaintext,
}

/// One backup run of RaftClusterBackup `name`, as both runtimes start it.
pub struct Run<'a> {
    /// The admin address of the member the backup is taken from (the leader).
    pub admin: &'a str,
    pub auth: &'a Auth,
    /// The file written (named by [`file_name`]).
    pub out: &'a str,
    pub name: &'a str,
    pub keep: u32,
    /// Where raftctl writes its JSON summary (size, CRC32C, index).
    pub summary: &'a str,
}

impl Run<'_> {
    /// raftctl's arguments: the backup, then the retention of the series
    /// `name` (the newest `keep` files beside `out`).
    pub fn raftctl_args(&self) -> Vec<String> {
        let mut args = vec!["--admin".to_string(), self.admin.to_string()];
        match self.auth {
            Auth::Tls { ca, cert, key } => {
                for (flag, path) in [("--cacert", ca), ("--cert", cert), ("--key", key)] {
                    args.extend([flag.to_string(), path.clone()]);
                }
            }
            Auth::Plaintext => args.push("--insecure-plaintext".into()),
        }
        args.extend(
            [
                "backup",
                "--out",
                self.out,
                "--series",
                self.name,
                "--keep",
                &self.keep.to_string(),
                "--summary-file",
                self.summary,
            ]
            .map(String::from),
        );
        args
    }
}

/// Reads a RaftClusterBackup manifest, checked against the CRD's rules.
pub fn parse_backup(value: &serde_json::Value) -> Result<RaftClusterBackup, String> {
    let b: RaftClusterBackup = serde_path_to_error::deserialize(value)
        .map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
    RaftClusterBackup::validate_cel(&b).map_err(|e| e.to_string())?;
    Ok(b)
}

/// The CRD manifest, as `crdgen` writes it to `crds/raftclusterbackup.yaml`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let body = serde_yaml::to_string(&RaftClusterBackup::crd()).expect("the CRD serializes");
    format!("# Generated by `raft-operator crdgen`; do not edit.\n{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(every: Option<&str>) -> RaftClusterBackupSpec {
        RaftClusterBackupSpec {
            cluster: "demo".into(),
            every: every.map(String::from),
            keep: 2,
            storage: BackupStorage::default(),
        }
    }

    fn at(t: &str) -> jiff::Timestamp {
        t.parse().unwrap()
    }

    #[test]
    fn a_first_backup_is_due_at_once_then_every_period_and_a_failure_is_retried_sooner() {
        let mut status = RaftClusterBackupStatus::default();
        let now = at("2026-12-01T10:00:00Z");
        assert!(due(&spec(None), &status, now));
        status.last_attempt = Some(now.to_string());
        let file = BackupFile {
            file: file_name("nightly", now),
            time: now.to_string(),
            ..Default::default()
        };
        assert_eq!(file.file, "nightly-20261201T100000Z.rlb");
        record_success(&mut status, file, 2);
        // Once: never again. Every hour: an hour later.
        assert!(!due(&spec(None), &status, at("2027-01-01T00:00:00Z")));
        assert!(!due(&spec(Some("1h")), &status, at("2026-12-01T10:59:59Z")));
        assert!(due(&spec(Some("1h")), &status, at("2026-12-01T11:00:00Z")));
        // A failure is retried after a minute, not an hour; a running job waits.
        record_failure(&mut status, "no leader".into());
        assert!(due(&spec(Some("1h")), &status, at("2026-12-01T10:01:00Z")));
        assert!(due(&spec(None), &status, at("2026-12-01T10:01:00Z")));
        status.job = Some("nightly-1".into());
        assert!(!due(&spec(Some("1h")), &status, at("2026-12-01T12:00:00Z")));
    }

    #[test]
    fn the_status_lists_the_newest_kept_backups_first() {
        let mut status = RaftClusterBackupStatus::default();
        for (i, t) in ["10:00:00", "11:00:00", "12:00:00"].iter().enumerate() {
            let now = at(&format!("2026-12-01T{t}Z"));
            let f = BackupFile {
                file: file_name("b", now),
                time: now.to_string(),
                size: Some(i as u64),
                ..Default::default()
            };
            record_success(&mut status, f, 2);
        }
        let files: Vec<&str> = status.backups.iter().map(|b| b.file.as_str()).collect();
        assert_eq!(files, ["b-20261201T120000Z.rlb", "b-20261201T110000Z.rlb"]);
        set_ready(&mut status, "t1");
        assert_eq!(status.conditions[0].status, "True");
        record_failure(&mut status, "member 1 is not reachable".into());
        set_ready(&mut status, "t2");
        assert_eq!(
            (
                status.conditions[0].status.as_str(),
                status.conditions[0].reason.as_str()
            ),
            ("False", "BackupFailed")
        );
    }

    #[test]
    fn bad_manifests_are_refused_naming_the_field() {
        let manifest = |spec: serde_json::Value| {
            serde_json::json!({
                "apiVersion": "raftlane.io/v1alpha1", "kind": "RaftClusterBackup",
                "metadata": {"name": "b"}, "spec": spec,
            })
        };
        for (spec, want) in [
            (
                serde_json::json!({"cluster": "demo", "keep": 0}),
                "spec.keep must be 1 to 1000",
            ),
            (
                serde_json::json!({"cluster": ""}),
                "spec.cluster must name a RaftCluster",
            ),
            (
                serde_json::json!({"cluster": "demo", "every": "5s"}),
                "spec.every",
            ),
            (serde_json::json!({"keep": 3}), "cluster"),
        ] {
            let e = parse_backup(&manifest(spec.clone())).unwrap_err();
            assert!(e.contains(want), "{spec}: {e}");
        }
        let mut long = manifest(serde_json::json!({"cluster": "demo"}));
        long["metadata"]["name"] = serde_json::json!("b".repeat(49));
        let e = parse_backup(&long).unwrap_err();
        assert!(e.contains("at most 48 characters"), "{e}");
        let ok = parse_backup(&manifest(
            serde_json::json!({"cluster": "demo", "every": "24h"}),
        ));
        assert_eq!(ok.unwrap().spec.keep, 5);
    }
}
