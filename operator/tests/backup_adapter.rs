//! The RaftClusterBackup controller, pass by pass, against the fake API
//! server: every request a pass sends is recorded and asserted in order
//! (method, path, body). The Job controller and the kubelet are played by
//! the test, which marks the Job finished in the fake store.

// The members of the shared support are not used here.
#[allow(dead_code)]
mod support;

use std::sync::Arc;
use std::time::Duration;

use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use raft_operator::backup::{RaftClusterBackup, RaftClusterBackupStatus};
use raft_operator::k8s::backups::{reconcile, FILE_ANNOTATION, JOB_LABEL};
use raft_operator::k8s::controller::{Context, Error};
use raft_operator::k8s::metrics::Metrics;
use serde_json::{json, Value};
use support::fake_api::{
    backups_path, claims_path, clusters_path, events_path, jobs_path, pods_path, Call, FakeApi, NS,
};

fn cluster(name: &str, leader: Option<&str>) -> Value {
    let mut rc = json!({
        "apiVersion": "raftlane.io/v1alpha1",
        "kind": "RaftCluster",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"), "generation": 1},
        "spec": {
            "replicas": 3, "image": "raftlane/raft-node:test",
            "imagePullPolicy": "IfNotPresent", "imagePullSecrets": [{"name": "regcred"}],
        },
        "status": {"replicas": 3, "readyReplicas": 3, "selector": "", "term": 2},
    });
    if let Some(l) = leader {
        rc["status"]["leader"] = json!(l);
    }
    rc
}

fn backup(name: &str, cluster: &str) -> Value {
    json!({
        "apiVersion": "raftlane.io/v1alpha1",
        "kind": "RaftClusterBackup",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"), "generation": 1},
        "spec": {"cluster": cluster, "keep": 3, "storage": {"size": "2Gi", "storageClassName": "fast"}},
    })
}

fn leader_pod(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}")},
        "spec": {"containers": [{"name": "raft-node", "image": "raftlane/raft-node:test"}]},
        "status": {"phase": "Running", "podIP": ip},
    })
}

fn context(client: kube::Client) -> Arc<Context> {
    let reporter = Reporter {
        controller: "raft-operator".into(),
        instance: None,
    };
    Arc::new(Context::new(client, reporter, Metrics::default()))
}

async fn try_pass(api: &FakeApi, ctx: &Arc<Context>, name: &str) -> Result<Action, Error> {
    let stored = api
        .get(&backups_path(), name)
        .expect("the RaftClusterBackup");
    let guard: DeserializeGuard<RaftClusterBackup> = serde_json::from_value(stored).unwrap();
    reconcile(Arc::new(guard), ctx.clone()).await
}

/// One pass on the stored RaftClusterBackup `name`; returns its requests.
async fn pass(api: &FakeApi, ctx: &Arc<Context>, name: &str) -> (Action, Vec<Call>) {
    let action = try_pass(api, ctx, name).await.expect("the pass succeeds");
    (action, api.take_calls())
}

fn lines(calls: &[Call]) -> Vec<String> {
    calls.iter().map(Call::line).collect()
}

fn status(api: &FakeApi, name: &str) -> RaftClusterBackupStatus {
    let b = api.get(&backups_path(), name).unwrap();
    serde_json::from_value(b["status"].clone()).unwrap()
}

fn event_reasons(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.path.starts_with(&events_path()) && c.is_write())
        .map(|c| c.body["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn body<'a>(calls: &'a [Call], line: &str) -> &'a Value {
    &calls
        .iter()
        .find(|c| c.line() == line)
        .unwrap_or_else(|| panic!("no {line} in {:?}", lines(calls)))
        .body
}

#[tokio::test]
async fn a_backup_creates_its_pvc_and_a_job_then_lists_the_file_once_the_job_succeeded() {
    let (api, client) = FakeApi::start();
    let ctx = context(client);
    api.put(&clusters_path(), cluster("demo", Some("demo-0")));
    api.put(&pods_path(), leader_pod("demo-0", "10.1.0.5"));
    api.put(&backups_path(), backup("nightly", "demo"));

    // Pass 1: the PVC, then the Job against the leader, then the status.
    let (action, calls) = pass(&api, &ctx, "nightly").await;
    let status_line = format!("PATCH {}/nightly/status", backups_path());
    let created: Vec<String> = lines(&calls)
        .into_iter()
        .filter(|l| !l.contains("/events"))
        .collect();
    assert_eq!(
        created,
        [
            format!("GET {}/nightly", backups_path()),
            format!("GET {}/nightly-backups", claims_path()),
            format!("POST {}", claims_path()),
            format!("GET {}", jobs_path()),
            format!("GET {}/demo", clusters_path()),
            format!("GET {}/demo-0", pods_path()),
            format!("POST {}", jobs_path()),
            status_line.clone(),
        ]
    );
    assert_eq!(event_reasons(&calls), ["BackupStarted"]);
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));

    let claim = body(&calls, &format!("POST {}", claims_path()));
    assert_eq!(claim["metadata"]["name"], "nightly-backups");
    assert_eq!(claim["metadata"]["labels"]["raftlane.io/backup"], "nightly");
    assert_eq!(
        claim["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "raft-operator"
    );
    assert!(
        claim["metadata"]["ownerReferences"].is_null(),
        "the backups outlive the resource: {claim}"
    );
    assert_eq!(claim["spec"]["accessModes"], json!(["ReadWriteOnce"]));
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "2Gi");
    assert_eq!(claim["spec"]["storageClassName"], "fast");

    let job = body(&calls, &format!("POST {}", jobs_path())).clone();
    let job_name = job["metadata"]["name"].as_str().unwrap().to_string();
    let file = job["metadata"]["annotations"][FILE_ANNOTATION]
        .as_str()
        .unwrap()
        .to_string();
    assert!(job_name.starts_with("nightly-") && job_name.len() == "nightly-".len() + 14);
    assert!(
        file.starts_with("nightly-") && file.ends_with("Z.rlb"),
        "{file}"
    );
    let owner = &job["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "RaftClusterBackup");
    assert_eq!(owner["uid"], "uid-nightly");
    assert_eq!(owner["controller"], true);
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(
        job["spec"]["template"]["metadata"]["labels"][JOB_LABEL],
        "nightly"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "raftlane/raft-node:test");
    assert_eq!(c["command"], json!(["/usr/local/bin/raftctl"]));
    let out = format!("/backups/{file}");
    assert_eq!(
        c["args"],
        json!([
            "--admin",
            "10.1.0.5:7002",
            "--cacert",
            "/tls/ca.crt",
            "--cert",
            "/tls/tls.crt",
            "--key",
            "/tls/tls.key",
            "backup",
            "--out",
            out,
            "--series",
            "nightly",
            "--keep",
            "3",
            "--summary-file",
            "/dev/termination-log",
        ])
    );
    assert_eq!(
        pod["volumes"],
        json!([
            {"name": "backups", "persistentVolumeClaim": {"claimName": "nightly-backups"}},
            {"name": "tls", "secret": {"secretName": "demo-backup-tls", "defaultMode": 0o440}},
        ])
    );
    let s = status(&api, "nightly");
    assert_eq!(s.job.as_deref(), Some(job_name.as_str()));
    assert!(s.last_attempt.is_some() && s.backups.is_empty());
    assert_eq!(
        (
            s.conditions[0].status.as_str(),
            s.conditions[0].reason.as_str()
        ),
        ("False", "Pending")
    );

    // While the Job runs: reads only.
    let (action, calls) = pass(&api, &ctx, "nightly").await;
    assert!(!calls.iter().any(Call::is_write), "{:?}", lines(&calls));
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));

    // The Job succeeded; its pod's termination message holds raftctl's summary.
    api.update(&jobs_path(), &job_name, |j| {
        j["status"] = json!({
            "startTime": "2026-12-01T10:00:01Z", "succeeded": 1,
            "conditions": [{"type": "Complete", "status": "True"}],
        });
    });
    api.put(
        &pods_path(),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{job_name}-x7k2p"), "namespace": NS,
                         "labels": {"batch.kubernetes.io/job-name": job_name}},
            "spec": {"containers": [{"name": "raftctl", "image": "raftlane/raft-node:test"}]},
            "status": {"phase": "Succeeded", "containerStatuses": [{
                "name": "raftctl", "image": "raftlane/raft-node:test", "imageID": "",
                "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "message":
                    format!(r#"{{"file":"{out}","size":4096,"crc32c":305419896,"index":42}}"#)}},
            }]},
        }),
    );
    let (action, calls) = pass(&api, &ctx, "nightly").await;
    let writes: Vec<String> = calls
        .iter()
        .filter(|c| c.is_write() && !c.path.starts_with(&events_path()))
        .map(Call::line)
        .collect();
    assert_eq!(writes, [status_line]);
    assert!(lines(&calls).contains(&format!("GET {}/{job_name}", jobs_path())));
    assert_eq!(event_reasons(&calls), ["BackedUp"]);
    // Once, with no schedule: not again.
    assert_eq!(action, Action::await_change());
    let s = status(&api, "nightly");
    assert_eq!(s.job, None);
    assert_eq!(s.last_error, None);
    assert_eq!(s.backups.len(), 1);
    let b = &s.backups[0];
    assert_eq!(
        (b.file.as_str(), b.time.as_str()),
        (file.as_str(), "2026-12-01T10:00:01Z")
    );
    assert_eq!(
        (b.size, b.crc32c, b.index),
        (Some(4096), Some(305419896), Some(42))
    );
    let ready = &s.conditions[0];
    assert_eq!(
        (
            ready.type_.as_str(),
            ready.status.as_str(),
            ready.reason.as_str()
        ),
        ("Ready", "True", "BackedUp")
    );

    // Settled: a pass reads and writes nothing.
    let (_, calls) = pass(&api, &ctx, "nightly").await;
    assert!(!calls.iter().any(Call::is_write), "{:?}", lines(&calls));
}

#[tokio::test]
async fn a_cluster_without_a_leader_or_a_missing_cluster_records_a_failure_and_starts_no_job() {
    let (api, client) = FakeApi::start();
    let ctx = context(client);
    api.put(&clusters_path(), cluster("lonely", None));
    api.put(&backups_path(), backup("lonely-backup", "lonely"));
    api.put(&backups_path(), backup("ghost-backup", "ghost"));

    let (action, calls) = pass(&api, &ctx, "lonely-backup").await;
    assert!(!lines(&calls).contains(&format!("POST {}", jobs_path())));
    assert_eq!(event_reasons(&calls), ["BackupFailed"]);
    let s = status(&api, "lonely-backup");
    assert_eq!(
        s.last_error.as_deref(),
        Some("cluster lonely has no leader")
    );
    assert_eq!(s.job, None);
    assert!(s.last_attempt.is_some());
    let ready = &s.conditions[0];
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "BackupFailed")
    );
    // Tried again after RETRY_AFTER (a minute).
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    // Within the minute: no new attempt, nothing written.
    let (_, calls) = pass(&api, &ctx, "lonely-backup").await;
    assert!(!calls.iter().any(Call::is_write), "{:?}", lines(&calls));

    let (_, calls) = pass(&api, &ctx, "ghost-backup").await;
    assert!(!lines(&calls).contains(&format!("POST {}", jobs_path())));
    let s = status(&api, "ghost-backup");
    assert_eq!(
        s.last_error.as_deref(),
        Some(format!("RaftCluster ghost not found in namespace {NS}").as_str())
    );
}

#[tokio::test]
async fn a_failed_job_is_recorded_and_a_vanished_one_too() {
    let (api, client) = FakeApi::start();
    let ctx = context(client);
    api.put(&clusters_path(), cluster("demo", Some("demo-1")));
    api.put(&pods_path(), leader_pod("demo-1", "fd00::5"));
    let mut b = backup("hourly", "demo");
    b["spec"]["every"] = json!("1h");
    api.put(&backups_path(), b);

    let (_, calls) = pass(&api, &ctx, "hourly").await;
    let job = body(&calls, &format!("POST {}", jobs_path())).clone();
    let job_name = job["metadata"]["name"].as_str().unwrap().to_string();
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["args"][1],
        "[fd00::5]:7002"
    );
    api.update(&jobs_path(), &job_name, |j| {
        j["status"] = json!({"failed": 1, "conditions": [{
            "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
            "message": "Job has reached the specified backoff limit",
        }]});
    });
    let (action, calls) = pass(&api, &ctx, "hourly").await;
    assert_eq!(event_reasons(&calls), ["BackupFailed"]);
    let s = status(&api, "hourly");
    assert_eq!(
        s.last_error,
        Some(format!(
            "job {job_name}: BackoffLimitExceeded: Job has reached the specified backoff limit"
        ))
    );
    assert_eq!(s.job, None);
    assert_ne!(action, Action::await_change());

    // A Job that disappears while listed is a failure naming it.
    api.update(&backups_path(), "hourly", |b| {
        b["status"]["job"] = json!("hourly-gone");
    });
    let (_, calls) = pass(&api, &ctx, "hourly").await;
    assert_eq!(event_reasons(&calls), ["BackupFailed"]);
    assert_eq!(
        status(&api, "hourly").last_error.as_deref(),
        Some("job hourly-gone disappeared")
    );
}

#[tokio::test]
async fn a_replica_that_lost_the_lease_writes_nothing() {
    let (api, client) = FakeApi::start();
    let (_tx, lost) = tokio::sync::watch::channel(true);
    let reporter = Reporter {
        controller: "raft-operator".into(),
        instance: None,
    };
    let ctx = Arc::new(Context::new(client, reporter, Metrics::default()).leading_while(lost));
    api.put(&clusters_path(), cluster("demo", Some("demo-0")));
    api.put(&pods_path(), leader_pod("demo-0", "10.1.0.5"));
    api.put(&backups_path(), backup("nightly", "demo"));
    let r = try_pass(&api, &ctx, "nightly").await;
    assert!(matches!(r, Err(Error::NotLeader)), "{r:?}");
    let calls = api.take_calls();
    assert!(!calls.iter().any(Call::is_write), "{:?}", lines(&calls));
}
