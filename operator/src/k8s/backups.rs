//! The RaftClusterBackup controller: a second kube-rs `Controller` beside the
//! RaftCluster one, sharing its [`Context`] (the Lease, the bounded request
//! client, events). Triggers: a change to a RaftClusterBackup or to a Job it
//! owns, or a requeue. One pass, from a fresh read of the resource:
//!
//! 1. the PVC `<name>-backups` exists (created with `spec.storage` when
//!    missing). It is **not owned** by the RaftClusterBackup: deleting the
//!    resource keeps the PVC and every backup on it, so a cluster can still
//!    be restored from them; delete the PVC yourself to drop them;
//! 2. with a Job in `status.job`: once it succeeded the file (its
//!    `raftlane.io/backup-file` annotation) is listed, once it failed the
//!    failure is recorded, and a Job that is gone is a failure too;
//! 3. else, when a backup is due ([`crate::backup::due`]), a Job
//!    `<name>-<yyyymmddhhmmss>` runs `raftctl backup` against the admin port
//!    of the cluster's leader pod, writing `/backups/<file>` on the PVC and
//!    pruning the series to `spec.keep` files;
//! 4. the Ready condition is set and the status written (server-side apply
//!    of the status subresource) only when it changed; events `BackupStarted`,
//!    `BackedUp`, `BackupFailed`.
//!
//! Requeued every 5 s while a Job runs, else when the next backup is due (at
//! most an hour away, so a missed trigger is caught up), and not at all when
//! none is due again. No write once the Lease is lost.
//!
//! Size, CRC32C and raft index of a backup come from the backup pod's
//! termination message: raftctl writes its JSON summary there.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{ListParams, PostParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use crate::backup::{
    self, due, file_name, next_due, record_failure, record_success, set_ready, BackupFile,
    RaftClusterBackup, RaftClusterBackupStatus,
};
use crate::certs::Leaf;
use crate::crd::RaftCluster;
use crate::k8s::controller::{apply_status, Context, Error};
use crate::k8s::metrics::FailureLabel;
use crate::k8s::resources::{self, backup_claim_name, leaf_secret_name, ADMIN_PORT};

/// On the backup PVC and on each Job: the RaftClusterBackup it serves.
pub const BACKUP_LABEL: &str = "raftlane.io/backup";
/// On a backup Job's pods: the RaftClusterBackup (the members' NetworkPolicy
/// admits pods with this label to the admin port).
pub const JOB_LABEL: &str = "raftlane.io/backup-job";
/// On a backup Job: the file it writes on the PVC.
pub const FILE_ANNOTATION: &str = "raftlane.io/backup-file";
/// The label the Job controller puts on a Job's pods.
const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
/// The container of a backup Job.
pub const CONTAINER: &str = "raftctl";
const RAFTCTL: &str = "/usr/local/bin/raftctl";
/// Where the Job mounts the backup PVC.
pub const BACKUP_DIR: &str = "/backups";
/// Where the Job mounts the cluster's admin certificate.
pub const JOB_TLS_DIR: &str = "/tls";
/// The container's termination message file (Kubernetes' default path).
pub const TERMINATION_LOG: &str = "/dev/termination-log";
/// A Job that did not finish in an hour is failed by the Job controller.
const ACTIVE_DEADLINE_SECS: i64 = 3600;
/// Finished Jobs are collected after a day (their outcome is recorded long
/// before).
const TTL_AFTER_FINISHED_SECS: i32 = 86_400;
/// Requeue while a Job runs.
const RUNNING_REQUEUE: Duration = Duration::from_secs(5);
/// Longest requeue: a backup due later is looked at again within this.
const MAX_REQUEUE: Duration = Duration::from_secs(3600);
/// Requeue after a failed pass (the RaftCluster controller's backoff is per
/// cluster; a fixed pause is enough here: a pass is a few reads).
const ERROR_REQUEUE: Duration = Duration::from_secs(10);

/// The Job of a backup of `name` started at `now` (seconds).
pub fn job_name(name: &str, now: jiff::Timestamp) -> String {
    format!("{name}-{}", now.strftime("%Y%m%d%H%M%S"))
}

fn labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_string(),
            "raft-operator".to_string(),
        ),
        (BACKUP_LABEL.to_string(), name.to_string()),
    ])
}

/// The backup PVC, ReadWriteOnce, of `spec.storage`; no owner reference.
pub fn backup_claim(b: &RaftClusterBackup) -> PersistentVolumeClaim {
    let name = b.name_any();
    let storage = &b.spec.storage;
    let mut claim = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": backup_claim_name(&name), "labels": labels(&name)},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": storage.size}},
        },
    });
    if let Some(class) = &storage.storage_class_name {
        claim["spec"]["storageClassName"] = json!(class);
    }
    serde_json::from_value(claim).expect("a valid PersistentVolumeClaim")
}

/// `ip:port`, bracketed for IPv6.
fn admin_addr(ip: &str) -> String {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]:{ADMIN_PORT}"),
        _ => format!("{ip}:{ADMIN_PORT}"),
    }
}

/// The Job taking backup `backup::file_name(name, now)` of `rc` from its
/// leader at `leader_ip`: raftctl in the cluster's image, as the members run
/// (non-root, nothing writable but the backup volume), with the backup
/// certificate, which may take a backup and change nothing (or plaintext when the cluster has no TLS), writing to the
/// PVC `<name>-backups` and keeping `spec.keep` files of the series `<name>`.
/// Owned by the RaftClusterBackup; one try, at most an hour.
pub fn backup_job(
    b: &RaftClusterBackup,
    rc: &RaftCluster,
    leader_ip: &str,
    now: jiff::Timestamp,
) -> Job {
    let name = b.name_any();
    let file = file_name(&name, now);
    let spec = &rc.spec;
    let auth = match spec.tls.enabled {
        true => backup::Auth::Tls {
            ca: format!("{JOB_TLS_DIR}/ca.crt"),
            cert: format!("{JOB_TLS_DIR}/tls.crt"),
            key: format!("{JOB_TLS_DIR}/tls.key"),
        },
        false => backup::Auth::Plaintext,
    };
    // raftctl writes its summary in place into the termination log, which
    // the kubelet turns into the container's message.
    let args = backup::Run {
        admin: &admin_addr(leader_ip),
        auth: &auth,
        out: &format!("{BACKUP_DIR}/{file}"),
        name: &name,
        keep: b.spec.keep,
        summary: TERMINATION_LOG,
    }
    .raftctl_args();
    let mut pod_labels = BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_string(),
            "raft-operator".to_string(),
        ),
        (JOB_LABEL.to_string(), name.clone()),
    ]);
    pod_labels.insert(BACKUP_LABEL.into(), name.clone());
    let mut job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(&name, now),
            "labels": labels(&name),
            "annotations": {FILE_ANNOTATION: file},
            "ownerReferences": [b
                .controller_owner_ref(&())
                .expect("a stored RaftClusterBackup has a UID")],
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": ACTIVE_DEADLINE_SECS,
            "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_SECS,
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "restartPolicy": "Never",
                    "enableServiceLinks": false,
                    // raftctl never calls the Kubernetes API.
                    "automountServiceAccountToken": false,
                    "securityContext": resources::pod_security(),
                    "containers": [{
                        "name": CONTAINER,
                        "image": spec.image,
                        "command": [RAFTCTL],
                        "args": args,
                        "terminationMessagePath": TERMINATION_LOG,
                        // A failure's message is raftctl's last stderr lines.
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                        "securityContext": resources::container_security(),
                        "volumeMounts": [{"name": "backups", "mountPath": BACKUP_DIR}],
                    }],
                    "volumes": [{
                        "name": "backups",
                        "persistentVolumeClaim": {"claimName": backup_claim_name(&name)},
                    }],
                },
            },
        },
    });
    let pod = &mut job["spec"]["template"]["spec"];
    if spec.tls.enabled {
        pod["volumes"]
            .as_array_mut()
            .expect("volumes")
            .push(json!({"name": "tls", "secret": {
                "secretName": leaf_secret_name(&rc.name_any(), &Leaf::Backup),
                "defaultMode": 0o440,
            }}));
        pod["containers"][0]["volumeMounts"]
            .as_array_mut()
            .expect("volume mounts")
            .push(json!({"name": "tls", "mountPath": JOB_TLS_DIR, "readOnly": true}));
    }
    if let Some(policy) = spec.image_pull_policy {
        pod["containers"][0]["imagePullPolicy"] = json!(policy);
    }
    if !spec.image_pull_secrets.is_empty() {
        pod["imagePullSecrets"] = json!(spec.image_pull_secrets);
    }
    serde_json::from_value(job).expect("a valid Job")
}

/// Where a Job is.
#[derive(Debug, PartialEq)]
enum Outcome {
    Running,
    Succeeded,
    Failed(String),
}

fn outcome(job: &Job) -> Outcome {
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten();
    for c in conditions {
        match (c.type_.as_str(), c.status.as_str()) {
            ("Complete", "True") => return Outcome::Succeeded,
            ("Failed", "True") => {
                let why = [c.reason.as_deref(), c.message.as_deref()]
                    .into_iter()
                    .flatten()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(": ");
                return Outcome::Failed(if why.is_empty() {
                    "the Job failed".into()
                } else {
                    why
                });
            }
            _ => {}
        }
    }
    Outcome::Running
}

/// What raftctl's `--summary-file` JSON says, when a termination message
/// holds it.
#[derive(serde::Deserialize, Debug, Default, PartialEq)]
struct Summary {
    size: Option<u64>,
    crc32c: Option<u32>,
    index: Option<u64>,
}

fn summary(message: &str) -> Option<Summary> {
    serde_json::from_str(message.trim()).ok()
}

/// The first termination message of the Job's pods, if any.
async fn termination_message(ctx: &Context, ns: &str, job: &str) -> Result<Option<String>, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("{JOB_NAME_LABEL}={job}")))
        .await?;
    Ok(list
        .items
        .iter()
        .flat_map(|p| {
            p.status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
        })
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
        .find(|m| !m.trim().is_empty()))
}

/// When the Job started (RFC 3339): its start time, else its creation.
fn started_at(job: &Job, now: jiff::Timestamp) -> String {
    job.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .or(job.metadata.creation_timestamp.as_ref())
        .map_or(now, |t| t.0)
        .to_string()
}

/// One pass for one RaftClusterBackup. One whose stored form cannot be read
/// gets an event and is left alone; it never stops the watch.
pub async fn reconcile(
    obj: Arc<DeserializeGuard<RaftClusterBackup>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    ctx.still_leading()?;
    let started = Instant::now();
    let result = match &obj.0 {
        Ok(b) => apply(b, &ctx).await,
        Err(invalid) => {
            ctx.unreadable("RaftClusterBackup", &obj.object_ref(&()), invalid)
                .await;
            Ok(Action::await_change())
        }
    };
    ctx.metrics.observe_pass(started.elapsed());
    result
}

/// A failed pass is tried again after [`ERROR_REQUEUE`], counted by reason.
pub fn error_policy(
    obj: Arc<DeserializeGuard<RaftClusterBackup>>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.metrics
        .failures
        .get_or_create(&FailureLabel {
            reason: err.reason(),
        })
        .inc();
    tracing::warn!(name = %obj.name_any(), error = %err, "backup reconcile failed");
    Action::requeue(ERROR_REQUEUE)
}

async fn apply(cached: &RaftClusterBackup, ctx: &Context) -> Result<Action, Error> {
    if !ctx.leading() {
        return Err(Error::NotLeader);
    }
    let ns = cached.namespace().unwrap_or_default();
    // A fresh read, not the watch cache: the Job in the status must be the
    // last one written, or a stale copy would start a second backup.
    let api: Api<RaftClusterBackup> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(b) = api.get_opt(&cached.name_any()).await? else {
        return Ok(Action::await_change());
    };
    if b.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = b.name_any();
    // Whole seconds: the file and Job names and the status times agree.
    let now = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
        .unwrap_or_else(|_| jiff::Timestamp::now());
    let previous = b.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    let mut events: Vec<(EventType, &str, String)> = Vec::new();

    ensure_claim(&b, ctx).await?;

    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(job_name) = status.job.clone() {
        match jobs.get_opt(&job_name).await? {
            None => {
                let why = format!("job {job_name} disappeared");
                record_failure(&mut status, why.clone());
                events.push((EventType::Warning, "BackupFailed", why));
            }
            Some(job) => match outcome(&job) {
                Outcome::Running => {}
                Outcome::Succeeded => {
                    let file = job.annotations().get(FILE_ANNOTATION).cloned();
                    match file {
                        Some(file) => {
                            let message = termination_message(ctx, &ns, &job_name).await?;
                            let s = message.as_deref().and_then(summary).unwrap_or_default();
                            let taken = BackupFile {
                                file: file.clone(),
                                time: started_at(&job, now),
                                size: s.size,
                                crc32c: s.crc32c,
                                index: s.index,
                            };
                            let mut note = format!("{file} written by job {job_name}");
                            if let (Some(size), Some(index)) = (s.size, s.index) {
                                note.push_str(&format!(" ({size} bytes, raft index {index})"));
                            }
                            record_success(&mut status, taken, b.spec.keep);
                            events.push((EventType::Normal, "BackedUp", note));
                        }
                        None => {
                            let why = format!("job {job_name} has no {FILE_ANNOTATION} annotation");
                            record_failure(&mut status, why.clone());
                            events.push((EventType::Warning, "BackupFailed", why));
                        }
                    }
                }
                Outcome::Failed(why) => {
                    let mut why = format!("job {job_name}: {why}");
                    if let Some(m) = termination_message(ctx, &ns, &job_name).await? {
                        why.push_str(&format!("; raftctl: {}", m.trim()));
                    }
                    record_failure(&mut status, why.clone());
                    events.push((EventType::Warning, "BackupFailed", why));
                }
            },
        }
    } else if due(&b.spec, &status, now) {
        status.last_attempt = Some(now.to_string());
        match start(&b, ctx, &jobs, now).await? {
            Ok((job, note)) => {
                status.job = Some(job);
                events.push((EventType::Normal, "BackupStarted", note));
            }
            Err(why) => {
                record_failure(&mut status, why.clone());
                events.push((EventType::Warning, "BackupFailed", why));
            }
        }
    }

    set_ready(&mut status, &now.to_string());
    if status != previous {
        apply_status(&b, ctx, &status).await?;
    }
    let reference = b.object_ref(&());
    for (type_, reason, note) in events {
        ctx.publish(&reference, type_, reason, note).await;
    }
    tracing::debug!(backup = %name, job = ?status.job, "backup pass done");
    Ok(requeue(&b, &status, now))
}

/// When to look again (see the module docs).
fn requeue(
    b: &RaftClusterBackup,
    status: &RaftClusterBackupStatus,
    now: jiff::Timestamp,
) -> Action {
    if status.job.is_some() {
        return Action::requeue(RUNNING_REQUEUE);
    }
    match next_due(&b.spec, status) {
        None => Action::await_change(),
        Some(t) => {
            let wait = Duration::try_from(t.duration_since(now)).unwrap_or_default();
            Action::requeue(wait.clamp(Duration::from_secs(1), MAX_REQUEUE))
        }
    }
}

/// Creates the backup PVC when it is missing (a read, never a write, when
/// it exists).
async fn ensure_claim(b: &RaftClusterBackup, ctx: &Context) -> Result<(), Error> {
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &b.namespace().unwrap_or_default());
    if claims
        .get_opt(&backup_claim_name(&b.name_any()))
        .await?
        .is_some()
    {
        return Ok(());
    }
    ctx.still_leading()?;
    match claims
        .create(&PostParams::default(), &backup_claim(b))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn unfinished_of(job: &Job, uid: &str) -> bool {
    let owned = job
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid);
    owned && outcome(job) == Outcome::Running
}

/// Starts a backup: the Job's name and the event's note, or why none could
/// start. A Job of this resource still running (one whose start a failed
/// status write did not record) is taken up instead of starting another.
async fn start(
    b: &RaftClusterBackup,
    ctx: &Context,
    jobs: &Api<Job>,
    now: jiff::Timestamp,
) -> Result<Result<(String, String), String>, Error> {
    let name = b.name_any();
    let ns = b.namespace().unwrap_or_default();
    let uid = b.uid().unwrap_or_default();
    let mine = jobs
        .list(&ListParams::default().labels(&format!("{BACKUP_LABEL}={name}")))
        .await?;
    if let Some(j) = mine.items.iter().find(|j| unfinished_of(j, &uid)) {
        let job = j.name_any();
        return Ok(Ok((job.clone(), format!("job {job} is still running"))));
    }
    let cluster = &b.spec.cluster;
    let clusters: Api<RaftCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(rc) = clusters.get_opt(cluster).await? else {
        return Ok(Err(format!(
            "RaftCluster {cluster} not found in namespace {ns}"
        )));
    };
    let no_leader = format!("cluster {cluster} has no leader");
    let Some(leader) = rc.status.as_ref().and_then(|s| s.leader.clone()) else {
        return Ok(Err(no_leader));
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let ip = pods.get_opt(&leader).await?.and_then(|p| {
        let s = p.status?;
        (p.metadata.deletion_timestamp.is_none())
            .then_some(s.pod_ip)
            .flatten()
    });
    let Some(ip) = ip.filter(|ip| !ip.is_empty()) else {
        return Ok(Err(format!("{no_leader} (pod {leader} has no IP)")));
    };
    let job = backup_job(b, &rc, &ip, now);
    let job_name = job.name_any();
    let file = job
        .annotations()
        .get(FILE_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    ctx.still_leading()?;
    match jobs.create(&PostParams::default(), &job).await {
        Ok(_) => {}
        // The same name is the same second: this pass's Job.
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let note = format!(
        "job {job_name}: backup of cluster {cluster} from its leader {leader} ({ip}) to {}/{file}",
        backup_claim_name(&name)
    );
    Ok(Ok((job_name, note)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup() -> RaftClusterBackup {
        serde_json::from_value(json!({
            "apiVersion": "raftlane.io/v1alpha1", "kind": "RaftClusterBackup",
            "metadata": {"name": "nightly", "namespace": "raft", "uid": "uid-b"},
            "spec": {"cluster": "demo", "every": "24h", "keep": 3},
        }))
        .unwrap()
    }

    fn cluster(tls: bool) -> RaftCluster {
        serde_json::from_value(json!({
            "apiVersion": "raftlane.io/v1alpha1", "kind": "RaftCluster",
            "metadata": {"name": "demo", "namespace": "raft", "uid": "uid-c"},
            "spec": {
                "replicas": 3, "image": "raftlane/raft-node:1",
                "imagePullPolicy": "IfNotPresent", "imagePullSecrets": [{"name": "regcred"}],
                "tls": {"enabled": tls},
            },
        }))
        .unwrap()
    }

    fn at(t: &str) -> jiff::Timestamp {
        t.parse().unwrap()
    }

    #[test]
    fn the_job_runs_raftctl_backup_against_the_leader_onto_the_pvc() {
        let now = at("2026-12-01T10:00:00Z");
        let job =
            serde_json::to_value(backup_job(&backup(), &cluster(true), "10.0.0.7", now)).unwrap();
        assert_eq!(job["metadata"]["name"], "nightly-20261201100000");
        assert_eq!(
            job["metadata"]["annotations"][FILE_ANNOTATION],
            "nightly-20261201T100000Z.rlb"
        );
        let owner = &job["metadata"]["ownerReferences"][0];
        assert_eq!(
            (
                &owner["kind"],
                &owner["name"],
                &owner["uid"],
                &owner["controller"]
            ),
            (
                &json!("RaftClusterBackup"),
                &json!("nightly"),
                &json!("uid-b"),
                &json!(true)
            )
        );
        assert_eq!(job["metadata"]["labels"][BACKUP_LABEL], "nightly");
        let spec = &job["spec"];
        assert_eq!(
            (
                &spec["backoffLimit"],
                &spec["activeDeadlineSeconds"],
                &spec["ttlSecondsAfterFinished"]
            ),
            (&json!(0), &json!(3600), &json!(86400))
        );
        let labels = &spec["template"]["metadata"]["labels"];
        assert_eq!(labels[JOB_LABEL], "nightly");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "raft-operator");
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["securityContext"]["runAsUser"], 65532);
        assert_eq!(pod["securityContext"]["fsGroup"], 65532);
        assert_eq!(pod["imagePullSecrets"], json!([{"name": "regcred"}]));
        let c = &pod["containers"][0];
        assert_eq!(c["image"], "raftlane/raft-node:1");
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["command"], json!(["/usr/local/bin/raftctl"]));
        assert_eq!(
            c["args"],
            json!([
                "--admin",
                "10.0.0.7:7002",
                "--cacert",
                "/tls/ca.crt",
                "--cert",
                "/tls/tls.crt",
                "--key",
                "/tls/tls.key",
                "backup",
                "--out",
                "/backups/nightly-20261201T100000Z.rlb",
                "--series",
                "nightly",
                "--keep",
                "3",
                "--summary-file",
                "/dev/termination-log",
            ])
        );
        assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(
            c["volumeMounts"],
            json!([
                {"name": "backups", "mountPath": "/backups"},
                {"name": "tls", "mountPath": "/tls", "readOnly": true},
            ])
        );
        assert_eq!(
            pod["volumes"],
            json!([
                {"name": "backups", "persistentVolumeClaim": {"claimName": "nightly-backups"}},
                {"name": "tls", "secret": {"secretName": "demo-backup-tls", "defaultMode": 0o440}},
            ])
        );
    }

    #[test]
    fn without_tls_the_job_speaks_plaintext_and_an_ipv6_leader_is_bracketed() {
        let now = at("2026-12-01T10:00:00Z");
        let job =
            serde_json::to_value(backup_job(&backup(), &cluster(false), "fd00::7", now)).unwrap();
        let pod = &job["spec"]["template"]["spec"];
        let args = &pod["containers"][0]["args"];
        assert_eq!(
            args.as_array().unwrap()[0..3],
            [
                json!("--admin"),
                json!("[fd00::7]:7002"),
                json!("--insecure-plaintext")
            ]
        );
        assert_eq!(pod["volumes"].as_array().unwrap().len(), 1, "{pod}");
    }

    #[test]
    fn the_pvc_is_not_owned_and_the_summary_is_read_from_a_termination_message() {
        let claim = serde_json::to_value(backup_claim(&backup())).unwrap();
        assert_eq!(claim["metadata"]["name"], "nightly-backups");
        assert!(claim["metadata"]["ownerReferences"].is_null(), "{claim}");
        assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "1Gi");
        let s = summary(r#"{"file":"/backups/x.rlb","size":42,"crc32c":7,"term":2,"index":9}"#);
        assert_eq!(
            s,
            Some(Summary {
                size: Some(42),
                crc32c: Some(7),
                index: Some(9)
            })
        );
        assert_eq!(summary("error: connection refused"), None);
    }
}
