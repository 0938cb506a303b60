//! The Kubernetes adapter, pass by pass: every request a reconcile sends to the
//! API server is recorded by a `tower-test` fake and asserted in order (method,
//! path, body). Members are real raft-node processes on loopback "pod IPs",
//! so membership steps and pushed addresses are carried out for real.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use raft_node::client::KvClient;
use raft_operator::certs::{Ca, Leaf, StoredLeaf, LEAF_VALIDITY};
use raft_operator::crd::RaftCluster;
use raft_operator::k8s::controller::{reconcile, Context, PolicyScope, FINALIZER, STATUS_MANAGER};
use raft_operator::k8s::metrics::Metrics;
use raft_operator::k8s::resources::{
    ca_secret, client_service, disruption_budget, leaf_secret, member_pod, network_policy,
    peer_service, volume_claim, CLIENT_PORT, HOLDS_STATE_ANNOTATION, PEER_PORT, TLS_DIR,
};
use raft_operator::runtime::WIPED_EXIT_CODE;
use serde_json::{json, Value};
use support::fake_api::{
    budgets_path, certificates_path, claims_path, clusters_path, events_path, pods_path,
    policies_path, secrets_path, services_path, storage_classes_path, Call, FakeApi, NS,
};
use support::members::Members;

const UID: &str = "0d6c2a1e-raft-demo";

fn cluster(replicas: u32, storage: Value) -> Value {
    json!({
        "apiVersion": "raftlane.io/v1alpha1",
        "kind": "RaftCluster",
        "metadata": {
            "name": "demo", "namespace": NS, "uid": UID, "generation": 1,
            "finalizers": [FINALIZER],
        },
        "spec": {
            "replicas": replicas, "storage": storage, "image": "raftlane/raft-node:test",
            "imagePullPolicy": "IfNotPresent", "imagePullSecrets": [{"name": "regcred"}],
        },
    })
}

fn typed(v: &Value) -> RaftCluster {
    serde_json::from_value(v.clone()).unwrap()
}

fn context(client: kube::Client) -> Arc<Context> {
    let reporter = Reporter {
        controller: "raft-operator".into(),
        instance: None,
    };
    Arc::new(Context::new(client, reporter, Metrics::default()))
}

/// One reconcile pass on the stored RaftCluster; returns its requests.
async fn pass(api: &FakeApi, ctx: &Arc<Context>) -> (Action, Vec<Call>) {
    let stored = api.get(&clusters_path(), "demo").expect("the RaftCluster");
    let guard: DeserializeGuard<RaftCluster> = serde_json::from_value(stored).unwrap();
    let action = reconcile(Arc::new(guard), ctx.clone())
        .await
        .expect("the pass succeeds");
    (action, api.take_calls())
}

fn lines(calls: &[Call]) -> Vec<String> {
    calls.iter().map(Call::line).collect()
}

fn get(collection: String, name: &str) -> String {
    format!("GET {collection}/{name}")
}

/// The reads every pass makes: cluster objects, then pods and volumes.
fn reads() -> Vec<String> {
    vec![
        get(clusters_path(), "demo"),
        get(services_path(), "demo-peers"),
        get(services_path(), "demo"),
        get(budgets_path(), "demo"),
        get(policies_path(), "demo-peers"),
        format!("GET {}", secrets_path()),
        format!("GET {}", claims_path()),
        format!("GET {}", pods_path()),
    ]
}

/// Stores `obj` as created earlier (a resourceVersion, so it can be replaced).
fn put_stored(api: &FakeApi, collection: &str, obj: impl serde::Serialize) {
    let mut v = serde_json::to_value(obj).unwrap();
    v["metadata"]["resourceVersion"] = json!("1");
    v["metadata"]["namespace"] = json!(NS);
    api.put(collection, v);
}

fn event_reasons(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.path.starts_with(&events_path()) && c.is_write())
        .map(|c| c.body["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn env<'a>(pod: &'a Value, name: &str) -> Option<&'a str> {
    pod["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
}

/// A running pod of member `id` at `ip`, as the kubelet reports it.
fn running_pod(rc: &RaftCluster, id: u64, claim: &str, ip: &str) -> Value {
    let mut pod = serde_json::to_value(member_pod(rc, id, claim, None, false)).unwrap();
    pod["metadata"]["namespace"] = json!(NS);
    pod["metadata"]["uid"] = json!(format!("pod-{id}-{ip}"));
    pod["status"] = json!({"phase": "Running", "podIP": ip});
    pod
}

/// Stores a volume of member `id` as created by an earlier pass.
fn stored_claim(api: &FakeApi, rc: &RaftCluster, id: u64) -> String {
    let mut claim = serde_json::to_value(volume_claim(rc, id)).unwrap();
    let name = format!("data-demo-{}-seed", id - 1);
    claim["metadata"]["name"] = json!(name);
    api.put(&claims_path(), claim);
    name
}

/// A formed cluster of `n` real members whose pods, volumes and Services
/// exist, reconciled until a pass writes nothing.
async fn running_cluster(n: u64) -> (FakeApi, Arc<Context>, Members) {
    let (api, client) = FakeApi::start();
    let ctx = context(client);
    let rc_json = cluster(n as u32, json!({}));
    let rc = typed(&rc_json);
    api.put(&clusters_path(), rc_json);
    for svc in [peer_service(&rc), client_service(&rc)] {
        api.put(&services_path(), serde_json::to_value(svc).unwrap());
    }
    api.put(
        &budgets_path(),
        serde_json::to_value(disruption_budget(&rc)).unwrap(),
    );
    api.put(
        &policies_path(),
        serde_json::to_value(network_policy(&rc)).unwrap(),
    );
    let mut members = Members::new(UID);
    // The CA the members' certificates come from is the cluster's.
    put_stored(&api, &secrets_path(), ca_secret(&rc, &members.ca));
    let voters: Vec<u64> = (1..=n).collect();
    let peers: Vec<(u64, String)> = voters
        .iter()
        .map(|id| (*id, members.peer(&members.ip(*id, 0))))
        .collect();
    for id in 1..=n {
        let ip = members.ip(id, 0);
        members.start(id, &ip, &voters, &peers);
        let claim = stored_claim(&api, &rc, id);
        api.put(&pods_path(), running_pod(&rc, id, &claim, &ip));
    }
    members.wait_leader(&members.ip(1, 0)).await;
    settle(&api, &ctx).await;
    (api, ctx, members)
}

/// Runs passes until one writes nothing (bounded in count and time).
async fn settle(api: &FakeApi, ctx: &Arc<Context>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for _ in 0..60 {
        let (_, calls) = pass(api, ctx).await;
        if !calls.iter().any(Call::is_write) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not settled: {:?}",
            lines(&calls)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("the cluster did not settle within 60 passes");
}

/// Sets `spec.replicas` as `kubectl scale` would (a new generation).
fn scale(api: &FakeApi, replicas: u32) {
    api.update(&clusters_path(), "demo", |rc| {
        rc["spec"]["replicas"] = json!(replicas);
        rc["metadata"]["generation"] = json!(2);
    });
}

/// Runs passes until `done` holds, returning every request (bounded).
async fn passes_until(
    api: &FakeApi,
    ctx: &Arc<Context>,
    mut done: impl FnMut(&FakeApi, &[Call]) -> bool,
) -> Vec<Vec<Call>> {
    let mut all = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && all.len() < 200 {
        let (_, calls) = pass(api, ctx).await;
        let finished = done(api, &calls);
        all.push(calls);
        if finished {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("not done after {} passes", all.len());
}

#[tokio::test]
async fn create_cluster_writes_services_budget_volumes_pods_then_status() {
    let (api, client) = FakeApi::start();
    let ctx = context(client);
    let mut rc = cluster(3, json!({"size": "2Gi", "storageClassName": "fast"}));
    rc["metadata"]["finalizers"] = json!([]);
    api.put(&clusters_path(), rc);

    // First pass: only the finalizer is added.
    let (action, calls) = pass(&api, &ctx).await;
    assert_eq!(action, Action::await_change());
    assert_eq!(lines(&calls), [format!("PATCH {}/demo", clusters_path())]);
    assert!(calls[0].body.to_string().contains(FINALIZER));

    let (action, calls) = pass(&api, &ctx).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(2)));
    let mut want = vec![
        get(clusters_path(), "demo"),
        get(services_path(), "demo-peers"),
        format!("POST {}", services_path()),
        get(services_path(), "demo"),
        format!("POST {}", services_path()),
        get(budgets_path(), "demo"),
        format!("POST {}", budgets_path()),
        get(policies_path(), "demo-peers"),
        format!("POST {}", policies_path()),
        format!("GET {}", secrets_path()),
    ];
    // The CA, each member's certificate, then the users' and the backup
    // Jobs': before any pod.
    for _ in 0..7 {
        want.push(format!("POST {}", secrets_path()));
    }
    want.extend([
        format!("POST {}", events_path()),
        format!("GET {}", claims_path()),
        format!("GET {}", pods_path()),
        format!("PATCH {}/demo/status", clusters_path()),
    ]);
    for _ in 1..=3 {
        want.push(format!("POST {}", claims_path()));
        want.push(format!("POST {}", pods_path()));
        want.push(format!("POST {}", events_path()));
    }
    want.push(format!("PATCH {}/demo/status", clusters_path()));
    assert_eq!(lines(&calls), want);
    // The pass starts from a fresh read of the cluster, not the watch cache.
    let calls = &calls[1..];

    let peers = &calls[1].body;
    assert_eq!(peers["metadata"]["name"], "demo-peers");
    assert_eq!(peers["spec"]["clusterIP"], "None");
    assert_eq!(peers["spec"]["publishNotReadyAddresses"], true);
    assert_eq!(peers["metadata"]["ownerReferences"][0]["uid"], UID);
    assert_eq!(calls[3].body["spec"]["ports"][0]["port"], 7001);
    assert_eq!(calls[5].body["spec"]["maxUnavailable"], 1);
    assert!(calls[17].query.contains("labelSelector="));

    // The NetworkPolicy: the peer port only from this cluster's members, and
    // nothing else (the chart's policy covers the other ports; policies add up).
    let policy = &calls[7].body;
    assert_eq!(policy["metadata"]["name"], "demo-peers");
    assert_eq!(policy["metadata"]["ownerReferences"][0]["uid"], UID);
    let members_only =
        json!({"app.kubernetes.io/name": "raft-node", "app.kubernetes.io/instance": "demo"});
    assert_eq!(policy["spec"]["podSelector"]["matchLabels"], members_only);
    let ingress = policy["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress[0]["ports"][0]["port"], 7000);
    assert_eq!(
        ingress[0]["from"][0]["podSelector"]["matchLabels"],
        members_only
    );
    assert_eq!(ingress.len(), 1, "{ingress:?}");

    // Secrets: the CA, members 1-3, admin, client, backup; each owned by the
    // cluster (collected with it).
    assert!(calls[8].query.contains("labelSelector="));
    let names: Vec<&str> = calls[9..16]
        .iter()
        .map(|c| c.body["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "demo-ca",
            "demo-member-1-tls",
            "demo-member-2-tls",
            "demo-member-3-tls",
            "demo-admin-tls",
            "demo-client-tls",
            "demo-backup-tls"
        ]
    );
    for c in &calls[9..16] {
        let owner = &c.body["metadata"]["ownerReferences"][0];
        assert_eq!(
            (&owner["uid"], &owner["kind"]),
            (&json!(UID), &json!("RaftCluster"))
        );
        let data = c.body["data"].as_object().unwrap();
        let keys: Vec<&String> = data.keys().collect();
        if c.body["metadata"]["name"] == "demo-ca" {
            assert!(
                ["ca.crt", "ca.key", "trust.crt", "generation"]
                    .iter()
                    .all(|k| data.contains_key(*k)),
                "{keys:?}"
            );
        } else {
            assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
            assert_eq!(c.body["type"], "kubernetes.io/tls");
        }
    }
    assert_eq!(calls[16].body["reason"], "CertificatesIssued");
    // No certificate is written again by the next pass.
    let stored = api.get(&secrets_path(), "demo-member-1-tls").unwrap();
    assert_eq!(
        stored["metadata"]["annotations"]["raftlane.io/ca-generation"],
        "1"
    );

    // The bootstrap voters are written before the first member is created.
    let bootstrap = &calls[19];
    assert!(bootstrap
        .query
        .contains(&format!("fieldManager={STATUS_MANAGER}")));
    assert!(bootstrap.query.contains("force=true"));
    assert_eq!(
        bootstrap.body["status"]["bootstrapVoters"],
        json!([1, 2, 3])
    );

    for (i, id) in (1..=3u64).enumerate() {
        let claim = &calls[20 + 3 * i];
        assert_eq!(
            claim.body["metadata"]["generateName"],
            format!("data-demo-{}-", id - 1)
        );
        assert_eq!(
            claim.body["spec"]["resources"]["requests"]["storage"],
            "2Gi"
        );
        assert_eq!(claim.body["spec"]["storageClassName"], "fast");
        assert_eq!(
            claim.body["metadata"]["labels"]["raftlane.io/cluster-uid"],
            UID
        );
        // Retained on deletion (the default): not owned, so not collected.
        assert!(claim.body["metadata"]["ownerReferences"].is_null());
        let claim_name = api.list(&claims_path())[i]["metadata"]["name"].clone();

        let pod = &calls[21 + 3 * i].body;
        assert_eq!(pod["metadata"]["name"], format!("demo-{}", id - 1));
        assert_eq!(pod["spec"]["hostname"], format!("demo-{}", id - 1));
        assert_eq!(pod["spec"]["subdomain"], "demo-peers");
        assert_eq!(
            pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
            claim_name
        );
        assert_eq!(env(pod, "RAFTLANE_ID"), Some(id.to_string().as_str()));
        assert_eq!(env(pod, "RAFTLANE_CLUSTER_ID"), Some(UID));
        assert_eq!(env(pod, "RAFTLANE_INITIAL_VOTERS"), Some("1,2,3"));
        assert!(
            pod["metadata"]["annotations"][HOLDS_STATE_ANNOTATION].is_null(),
            "a fresh volume holds no state"
        );
        let others: Vec<String> = (1..=3u64)
            .filter(|p| *p != id)
            .map(|p| format!("{p}=demo-{}.demo-peers.{NS}.svc:{PEER_PORT}", p - 1))
            .collect();
        assert_eq!(env(pod, "RAFTLANE_PEERS"), Some(others.join(",").as_str()));
        // The unspecified address of both families: IPv6-only clusters work.
        assert_eq!(env(pod, "RAFTLANE_PEER_ADDR"), Some("[::]:7000"));
        assert_eq!(env(pod, "RAFTLANE_CLIENT_ADDR"), Some("[::]:7001"));
        assert_eq!(env(pod, "RAFTLANE_ADMIN_ADDR"), Some("[::]:7002"));
        assert_eq!(env(pod, "RAFTLANE_METRICS_ADDR"), Some("[::]:7003"));
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["image"], "raftlane/raft-node:test");
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(
            pod["spec"]["imagePullSecrets"],
            json!([{"name": "regcred"}])
        );
        // A refusal's message (raft-node's last stderr lines) shows in the pod.
        assert_eq!(c["terminationMessagePolicy"], "FallbackToLogsOnError");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
        // Members never call the Kubernetes API: no ServiceAccount token inside.
        assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
        assert_eq!(calls[22 + 3 * i].body["reason"], "MemberCreated");
        // The member's Secret, mounted read-only; raft-node told where.
        assert_eq!(
            named(&pod["spec"]["volumes"], "tls")["secret"]["secretName"],
            format!("demo-member-{id}-tls")
        );
        let mount = named(&c["volumeMounts"], "tls");
        assert_eq!(
            (&mount["mountPath"], &mount["readOnly"]),
            (&json!(TLS_DIR), &json!(true))
        );
        assert_eq!(
            env(pod, "RAFTLANE_TLS_CERT"),
            Some("/etc/raftlane/tls/tls.crt")
        );
        assert_eq!(
            env(pod, "RAFTLANE_TLS_KEY"),
            Some("/etc/raftlane/tls/tls.key")
        );
        assert_eq!(
            env(pod, "RAFTLANE_TLS_CA"),
            Some("/etc/raftlane/tls/ca.crt")
        );
        assert_eq!(env(pod, "RAFTLANE_INSECURE_PLAINTEXT"), None);
        assert_eq!(env(pod, "RAFTLANE_TLS_CLIENT_AUTH"), None);
    }
    let status = &calls[29].body["status"];
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["bootstrapVoters"], json!([1, 2, 3]));
    let progressing = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Progressing")
        .unwrap();
    assert_eq!(progressing["status"], "True");
}

#[tokio::test]
async fn a_restored_clusters_initial_pods_read_the_backup_volume_and_later_pods_do_not() {
    let (api, client) = FakeApi::start();
    let ctx = context(client);
    let mut rc = cluster(3, json!({}));
    rc["spec"]["restore"] = json!({"file": "snap-20261201T100000Z.rlb", "backup": "snap"});
    api.put(&clusters_path(), rc);
    let (_, calls) = pass(&api, &ctx).await;
    let pods: Vec<&Value> = calls
        .iter()
        .filter(|c| c.method == "POST" && c.path == pods_path())
        .map(|c| &c.body)
        .collect();
    assert_eq!(pods.len(), 3, "{:?}", lines(&calls));
    for pod in &pods {
        assert_eq!(
            env(pod, "RAFTLANE_RESTORE_FROM"),
            Some("/restore/snap-20261201T100000Z.rlb")
        );
        assert!(env(pod, "RAFTLANE_INITIAL_VOTERS").is_some());
        let volume = pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "restore")
            .expect("the backup volume");
        assert_eq!(volume["persistentVolumeClaim"]["claimName"], "snap-backups");
        assert_eq!(volume["persistentVolumeClaim"]["readOnly"], true);
        let mounts = pod["spec"]["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap();
        assert!(mounts
            .iter()
            .any(|m| m["mountPath"] == "/restore" && m["readOnly"] == true));
    }
    // A member created once the cluster formed (no initial voters) does not.
    let rc = typed(&api.get(&clusters_path(), "demo").unwrap());
    let later = serde_json::to_value(member_pod(&rc, 4, "data-demo-3-x", None, false)).unwrap();
    assert_eq!(env(&later, "RAFTLANE_RESTORE_FROM"), None);
    assert!(!later.to_string().contains("snap-backups"));
}

#[tokio::test]
async fn a_restore_naming_no_backup_is_refused_before_any_pod() {
    let (api, client) = FakeApi::start();
    let ctx = context(client);
    let mut rc = cluster(3, json!({}));
    rc["spec"]["restore"] = json!({"file": "snap.rlb"});
    api.put(&clusters_path(), rc.clone());
    let guard: DeserializeGuard<RaftCluster> = serde_json::from_value(rc).unwrap();
    let err = reconcile(Arc::new(guard), ctx.clone()).await.unwrap_err();
    assert!(err.to_string().contains("spec.restore.backup"), "{err}");
    let calls = api.take_calls();
    assert!(
        !calls
            .iter()
            .any(|c| c.method == "POST" && c.path == pods_path()),
        "{:?}",
        lines(&calls)
    );
    let failed = calls
        .iter()
        .find(|c| c.path == events_path() && c.body["type"] == "Warning")
        .expect("a Warning event");
    let note = failed.body["note"].as_str().unwrap();
    assert!(
        note.contains("spec.restore.backup must name the RaftClusterBackup"),
        "{note}"
    );
}

#[tokio::test]
async fn scale_up_one_step_creates_then_adds_a_learner_then_promotes() {
    let (api, ctx, mut members) = running_cluster(3).await;
    scale(&api, 4);

    // Pass 1: the new member's volume and pod; no membership change yet.
    let (_, calls) = pass(&api, &ctx).await;
    let mut want = reads();
    want.insert(1, format!("POST {}", events_path()));
    // Member 4's certificate first.
    want.insert(7, format!("POST {}", secrets_path()));
    want.insert(8, format!("POST {}", events_path()));
    want.extend([
        format!("POST {}", claims_path()),
        format!("POST {}", pods_path()),
        format!("POST {}", events_path()),
        format!("PATCH {}/demo/status", clusters_path()),
    ]);
    assert_eq!(lines(&calls), want);
    assert_eq!(calls[1].body["reason"], "Scaling");
    assert_eq!(calls[1].body["note"], "3 → 4 members");
    assert_eq!(calls[7].body["metadata"]["name"], "demo-member-4-tls");
    let pod = &calls[12].body;
    assert_eq!(pod["metadata"]["name"], "demo-3");
    assert_eq!(
        env(pod, "RAFTLANE_INITIAL_VOTERS"),
        None,
        "a joining member never bootstraps"
    );
    assert_eq!(calls[13].body["reason"], "MemberCreated");

    // The kubelet starts it: a new member, empty, at its pod IP.
    let ip = members.ip(4, 0);
    members.start(4, &ip, &[], &[]);
    api.update(&pods_path(), "demo-3", |p| {
        p["status"] = json!({"phase": "Running", "podIP": ip});
    });

    // Then: addresses pushed, learner added, learner promoted: each pass reads
    // the same way and writes only events and status (no pod is recreated),
    // and once its volume, then its pod, marked as holding state when
    // member 4 shows raft state.
    let passes = passes_until(&api, &ctx, |_, calls| {
        event_reasons(calls).contains(&"LearnerPromoted".to_string())
    })
    .await;
    let mut steps = Vec::new();
    let mut marked = Vec::new();
    for calls in &passes {
        assert_eq!(lines(&calls[..8]), reads());
        for c in calls[8..].iter() {
            let marks = c.path.starts_with(&claims_path()) || c.path.starts_with(&pods_path());
            if c.method == "PATCH" && marks {
                assert_eq!(
                    c.body["metadata"]["annotations"]["raftlane.io/holds-state"],
                    "true"
                );
                marked.push(c.path.clone());
                continue;
            }
            assert!(
                c.path.starts_with(&events_path()) || c.path.ends_with("/demo/status"),
                "unexpected write {}",
                c.line()
            );
        }
        steps.extend(
            event_reasons(calls)
                .into_iter()
                .filter(|r| r != "Waiting" && r != "Blocked"),
        );
    }
    assert_eq!(
        steps,
        [
            "AddressesPushed",
            "AddressesPushed",
            "AddressesPushed",
            "AddressesPushed",
            "LearnerAdded",
            "LearnerPromoted"
        ]
    );
    assert_eq!(
        marked.len(),
        2,
        "member 4's volume, then its pod, each marked once: {marked:?}"
    );
    assert!(marked[0].starts_with(&format!("{}/data-demo-3-", claims_path())));
    assert_eq!(marked[1], format!("{}/demo-3", pods_path()));
    members.wait_voters(1, &[1, 2, 3, 4]).await;
}

#[tokio::test]
async fn scale_down_one_step_leaves_the_membership_before_the_pod_goes() {
    let (api, ctx, members) = running_cluster(4).await;
    scale(&api, 3);
    let passes = passes_until(&api, &ctx, |api, _| {
        api.get(&pods_path(), "demo-3").is_none()
    })
    .await;
    let all: Vec<&Call> = passes.iter().flatten().collect();
    let at = |pred: &dyn Fn(&Call) -> bool| all.iter().position(|c| pred(c));
    let removed = at(&|c| c.body["reason"] == "MemberRemoved").expect("a MemberRemoved event");
    let retired = at(&|c| c.method == "PATCH" && c.path.starts_with(&claims_path()))
        .expect("the volume retired (whenScaled: Retain)");
    let deleted =
        at(&|c| c.method == "DELETE" && c.path.starts_with(&pods_path())).expect("a DELETE");
    assert!(
        removed < retired && retired < deleted,
        "order: removed {removed}, retired {retired}, deleted {deleted}"
    );
    assert_eq!(
        all[deleted].line(),
        format!("DELETE {}/demo-3", pods_path())
    );
    assert_eq!(
        all[retired].path,
        format!("{}/data-demo-3-seed", claims_path())
    );
    assert_eq!(
        all[retired].body["metadata"]["labels"]["raftlane.io/retired"],
        "true"
    );
    let deletes: Vec<String> = all
        .iter()
        .filter(|c| c.method == "DELETE")
        .map(|c| c.line())
        .collect();
    assert_eq!(
        deletes,
        [
            format!("DELETE {}/demo-3", pods_path()),
            format!("DELETE {}/demo-member-4-tls", secrets_path())
        ],
        "one pod deleted, then its certificate"
    );
    members.wait_voters(1, &[1, 2, 3]).await;
    let real = members.status(&members.ip(1, 0)).await.unwrap();
    assert!(real.learners.is_empty());
    // Scaling up again gives member 4 a fresh volume, never the retired one.
    api.update(&clusters_path(), "demo", |rc| {
        rc["spec"]["replicas"] = json!(4)
    });
    let (_, calls) = pass(&api, &ctx).await;
    let posted: Vec<&Call> = calls
        .iter()
        .filter(|c| c.method == "POST" && c.path != events_path())
        .collect();
    assert_eq!(
        posted.len(),
        3,
        "a certificate, a volume and a pod: {:?}",
        lines(&calls)
    );
    assert_eq!(posted[0].body["metadata"]["name"], "demo-member-4-tls");
    assert_eq!(posted[1].path, claims_path());
    let claim = &posted[2].body["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"];
    assert_ne!(claim, "data-demo-3-seed");
    assert!(claim.as_str().unwrap().starts_with("data-demo-3-"));
}

#[tokio::test]
async fn a_member_whose_volume_is_lost_is_removed_then_added_back_empty() {
    let (api, ctx, mut members) = running_cluster(3).await;
    // Member 3's pod and volume are gone (a lost disk, a deleted PVC).
    members.lose(3);
    api.remove(&pods_path(), "demo-2");
    api.remove(&claims_path(), "data-demo-2-seed");

    // Never restarted empty with its old identity: removed first (once the
    // others have a leader, if member 3 led).
    let passes = passes_until(&api, &ctx, |_, calls| {
        event_reasons(calls).contains(&"MemberRemoved".to_string())
    })
    .await;
    for calls in &passes {
        assert_eq!(lines(&calls[..8]), reads());
        let created = calls
            .iter()
            .filter(|c| c.method == "POST" && c.path != events_path());
        assert_eq!(created.count(), 0, "{:?}", lines(calls));
    }
    let notes: Vec<String> = passes
        .iter()
        .flatten()
        .filter(|c| c.body["reason"] == "Waiting")
        .map(|c| c.body["note"].to_string())
        .collect();
    assert!(
        notes.iter().any(|n| n.contains("member 3 lost its data")),
        "{notes:?}"
    );
    // The removal is proposed by the pass and applied by raft shortly after.
    members.wait_voters(1, &[1, 2]).await;

    // Then it comes back as a new member: a fresh volume, joined as a learner.
    let passes = passes_until(&api, &ctx, |api, _| {
        api.get(&pods_path(), "demo-2").is_some()
    })
    .await;
    let claim = passes
        .iter()
        .flatten()
        .find(|c| c.method == "POST" && c.path == claims_path());
    assert!(claim.is_some(), "a fresh volume");
    let ip = members.ip(3, 1);
    members.start(3, &ip, &[], &[]);
    api.update(&pods_path(), "demo-2", |p| {
        p["status"] = json!({"phase": "Running", "podIP": ip});
    });
    passes_until(&api, &ctx, |_, calls| {
        event_reasons(calls).contains(&"LearnerPromoted".to_string())
    })
    .await;
    members.wait_voters(1, &[1, 2, 3]).await;
}

#[tokio::test]
async fn a_member_whose_volume_is_being_deleted_keeps_running_until_it_goes() {
    let (api, ctx, _members) = running_cluster(3).await;
    // `kubectl delete pvc` on a mounted volume: it waits for its pod.
    api.update(&claims_path(), "data-demo-2-seed", |c| {
        c["metadata"]["deletionTimestamp"] = json!("2026-11-23T00:00:00Z");
    });
    let (_, calls) = pass(&api, &ctx).await;
    assert_eq!(lines(&calls), reads(), "nothing is deleted or created");
}

#[tokio::test]
async fn two_live_volumes_for_one_member_stop_the_pass() {
    let (api, ctx, _members) = running_cluster(3).await;
    let rc = typed(&api.get(&clusters_path(), "demo").unwrap());
    let mut twin = serde_json::to_value(volume_claim(&rc, 2)).unwrap();
    twin["metadata"]["name"] = json!("data-demo-1-twin");
    api.put(&claims_path(), twin);
    let stored = api.get(&clusters_path(), "demo").unwrap();
    let guard: DeserializeGuard<RaftCluster> = serde_json::from_value(stored).unwrap();
    let err = reconcile(Arc::new(guard), ctx.clone()).await.unwrap_err();
    assert!(
        err.to_string().contains("member 2 has two live volumes"),
        "{err}"
    );
    let calls = api.take_calls();
    assert!(
        !calls
            .iter()
            .any(|c| c.method == "DELETE" || (c.method == "POST" && c.path != events_path())),
        "no pod or volume touched: {:?}",
        lines(&calls)
    );
}

#[tokio::test]
async fn pod_ip_change_pushes_the_address_in_place_and_touches_no_pod() {
    let (api, ctx, mut members) = running_cluster(3).await;
    // Member 2's pod is replaced: same volume, new pod IP. Its peers still
    // send to the old address.
    let new_ip = members.ip(2, 1);
    let peers: Vec<(u64, String)> = [1, 3]
        .map(|id| (id, members.peer(&members.ip(id, 0))))
        .to_vec();
    members.start(2, &new_ip, &[], &peers);
    api.update(&pods_path(), "demo-1", |p| {
        p["metadata"]["uid"] = json!("pod-2-replaced");
        p["status"] = json!({"phase": "Running", "podIP": new_ip});
    });

    let (_, calls) = pass(&api, &ctx).await;
    assert_eq!(lines(&calls[..8]), reads());
    let writes: Vec<&Call> = calls[8..].iter().collect();
    assert!(
        writes
            .iter()
            .all(|c| c.path.starts_with(&events_path()) || c.path.ends_with("/demo/status")),
        "only events and status are written: {:?}",
        writes.iter().map(|c| c.line()).collect::<Vec<_>>()
    );
    let pushed: Vec<&str> = writes
        .iter()
        .filter(|c| c.body["reason"] == "AddressesPushed")
        .map(|c| c.body["note"].as_str().unwrap())
        .collect();
    let new_peer = members.peer(&new_ip);
    assert_eq!(
        pushed,
        [
            format!("member 1 now reaches 2={new_peer}"),
            format!("member 3 now reaches 2={new_peer}")
        ]
    );
    for id in [1, 3] {
        let s = members.status(&members.ip(id, 0)).await.unwrap();
        let to_two = s.peers.iter().find(|p| p.id == 2).unwrap();
        assert_eq!(to_two.address, new_peer, "member {id}'s peer table");
    }
    // The replaced member follows the leader again at its new address.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = members.status(&new_ip).await;
        if s.is_some_and(|s| s.leader_id != 0 && s.commit_index > 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "member 2 does not follow at {new_ip}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn idle_cluster_only_reads_even_under_client_writes() {
    let (api, ctx, members) = running_cluster(3).await;
    let endpoints: Vec<String> = (1..=3)
        .map(|id| format!("{}:{CLIENT_PORT}", members.ip(id, 0)))
        .collect();
    let kv = KvClient::new(&endpoints, Duration::from_secs(10), members.dialer()).unwrap();
    for round in 0..3 {
        // Applied indexes move; nothing else does: no status write.
        for i in 0..20 {
            kv.put(format!("k{round}-{i}").as_bytes(), b"v")
                .await
                .unwrap();
        }
        let (action, calls) = pass(&api, &ctx).await;
        assert_eq!(lines(&calls), reads());
        assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    }
}

#[tokio::test]
async fn a_paused_cluster_is_read_and_its_status_written_and_nothing_else() {
    let (api, ctx, _members) = running_cluster(3).await;
    // Paused, then scaled, and a member's pod lost: neither is acted on.
    api.update(&clusters_path(), "demo", |rc| {
        rc["spec"]["paused"] = json!(true);
        rc["spec"]["replicas"] = json!(4);
        rc["metadata"]["generation"] = json!(2);
    });
    api.remove(&pods_path(), "demo-2");
    let paused_reads = [
        get(clusters_path(), "demo"),
        format!("GET {}", secrets_path()),
        format!("GET {}", claims_path()),
        format!("GET {}", pods_path()),
    ];
    let (action, calls) = pass(&api, &ctx).await;
    let mut want = paused_reads.to_vec();
    want.push(format!("PATCH {}/demo/status", clusters_path()));
    assert_eq!(lines(&calls), want);
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    let conditions = calls[4].body["status"]["conditions"].as_array().unwrap();
    let paused = conditions
        .iter()
        .find(|c| c["type"] == "ReconciliationPaused")
        .unwrap();
    assert_eq!(paused["status"], "True");
    assert_eq!(paused["reason"], "Paused");
    assert!(
        paused["message"].as_str().unwrap().contains("held back"),
        "{paused}"
    );

    // While nothing changes, a paused pass only reads.
    let (_, calls) = pass(&api, &ctx).await;
    assert_eq!(lines(&calls), paused_reads);

    // Resumed: the lost pod is created again.
    api.update(&clusters_path(), "demo", |rc| {
        rc["spec"]["paused"] = json!(false);
    });
    let (_, calls) = pass(&api, &ctx).await;
    assert!(
        calls
            .iter()
            .any(|c| c.line() == format!("POST {}", pods_path())),
        "{:?}",
        lines(&calls)
    );
}

#[tokio::test]
async fn a_rolling_update_step_recreates_one_follower_pod_on_its_volume_at_the_new_revision() {
    let (api, ctx, mut members) = running_cluster(3).await;
    let leader = members.wait_leader(&members.ip(1, 0)).await;
    // The highest follower goes first.
    let id = (1..=3u64).rev().find(|id| *id != leader).unwrap();
    let pod = format!("demo-{}", id - 1);
    let old_revision =
        api.get(&pods_path(), &pod).unwrap()["metadata"]["labels"]["raftlane.io/revision"].clone();
    api.update(&clusters_path(), "demo", |rc| {
        rc["spec"]["image"] = json!("registry.example/raft-node:next");
        rc["metadata"]["generation"] = json!(2);
    });

    // Step 1: that member's pod alone is deleted; its volume and its
    // certificate stay, nothing else is written but events and status.
    let (_, calls) = pass(&api, &ctx).await;
    assert_eq!(lines(&calls[..8]), reads());
    let writes: Vec<String> = calls[8..]
        .iter()
        .filter(|c| !c.path.starts_with(&events_path()))
        .map(Call::line)
        .collect();
    assert_eq!(
        writes,
        [
            format!("DELETE {}/{pod}", pods_path()),
            format!("PATCH {}/demo/status", clusters_path()),
        ]
    );
    assert_eq!(event_reasons(&calls), ["Waiting", "MemberRestarted"]);
    let status = &calls.last().unwrap().body["status"];
    assert_eq!(status["currentRevision"], old_revision);
    assert_ne!(status["updateRevision"], old_revision);
    let progressing = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Progressing")
        .unwrap();
    assert_eq!(progressing["reason"], "RollingUpdate");

    // Step 2: the pod is gone; it is created again on the same volume, with
    // the new image and revision, and no new volume.
    let (_, calls) = pass(&api, &ctx).await;
    let posts: Vec<&Call> = calls
        .iter()
        .filter(|c| c.method == "POST" && c.path != events_path())
        .collect();
    assert_eq!(posts.len(), 1, "{:?}", lines(&calls));
    let created = &posts[0].body;
    assert_eq!(posts[0].path, pods_path());
    assert_eq!(created["metadata"]["name"], pod.as_str());
    assert_eq!(
        created["spec"]["containers"][0]["image"],
        "registry.example/raft-node:next"
    );
    assert_eq!(
        created["metadata"]["labels"]["raftlane.io/revision"],
        status["updateRevision"]
    );
    assert_eq!(
        created["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        format!("data-demo-{}-seed", id - 1)
    );
    assert!(!calls.iter().any(|c| c.method == "DELETE"));

    // The kubelet runs it on its data at a new IP; the next member goes only
    // after its peers learned that address, and it is a follower, not the
    // leader.
    let new_ip = members.ip(id, 1);
    let peers: Vec<(u64, String)> = (1..=3u64)
        .filter(|p| *p != id)
        .map(|p| (p, members.peer(&members.ip(p, 0))))
        .collect();
    members.start(id, &new_ip, &[], &peers);
    api.update(&pods_path(), &pod, |p| {
        p["metadata"]["namespace"] = json!(NS);
        p["metadata"]["uid"] = json!(format!("pod-{id}-rolled"));
        p["status"] = json!({"phase": "Running", "podIP": new_ip});
    });
    let passes = passes_until(&api, &ctx, |_, calls| {
        calls.iter().any(|c| c.method == "DELETE")
    })
    .await;
    let all: Vec<&Call> = passes.iter().flatten().collect();
    let pushed = all
        .iter()
        .position(|c| c.body["reason"] == "AddressesPushed")
        .expect("the new address pushed");
    let deleted = all.iter().position(|c| c.method == "DELETE").unwrap();
    assert!(pushed < deleted, "the next restart before the peers knew");
    let next = (1..=3u64).rev().find(|p| *p != leader && *p != id).unwrap();
    assert_eq!(
        all[deleted].line(),
        format!("DELETE {}/demo-{}", pods_path(), next - 1)
    );
}

#[tokio::test]
async fn a_volume_refused_as_wiped_is_retired_only_once_the_cluster_resumes() {
    let (api, ctx, mut members) = running_cluster(3).await;
    api.update(&clusters_path(), "demo", |rc| {
        rc["spec"]["paused"] = json!(true)
    });
    members.lose(3);
    let rc = typed(&api.get(&clusters_path(), "demo").unwrap());
    let ip = members.ip(3, 0);
    let (code, _) = refusal(&members, &rc, 3, &ip);
    api.update(&pods_path(), "demo-2", |p| {
        p["status"] = json!({
            "phase": "Running",
            "podIP": ip,
            "containerStatuses": [{
                "name": "raft-node", "image": "raftlane/raft-node:test", "imageID": "",
                "ready": false, "restartCount": 1,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": code, "reason": "Error"}},
            }],
        });
    });
    let (_, calls) = pass(&api, &ctx).await;
    let writes: Vec<String> = calls
        .iter()
        .filter(|c| c.is_write())
        .map(Call::line)
        .collect();
    assert_eq!(writes, [format!("PATCH {}/demo/status", clusters_path())]);

    api.update(&clusters_path(), "demo", |rc| {
        rc["spec"]["paused"] = json!(false)
    });
    let (_, calls) = pass(&api, &ctx).await;
    let lines = lines(&calls);
    let retired = format!("PATCH {}/data-demo-2-seed", claims_path());
    let deleted = format!("DELETE {}/demo-2", pods_path());
    assert!(
        lines.contains(&retired) && lines.contains(&deleted),
        "{lines:?}"
    );
}

#[tokio::test]
async fn a_replica_that_lost_the_lease_writes_nothing() {
    let (api, ctx, _members) = running_cluster(3).await;
    let (lost_tx, lost) = tokio::sync::watch::channel(false);
    let reporter = Reporter {
        controller: "raft-operator".into(),
        instance: None,
    };
    let client = ctx.client.clone();
    let ctx = Arc::new(Context::new(client, reporter, Metrics::default()).leading_while(lost));
    lost_tx.send(true).unwrap();
    scale(&api, 4);
    api.remove(&pods_path(), "demo-2");
    let stored = api.get(&clusters_path(), "demo").unwrap();
    let guard: DeserializeGuard<RaftCluster> = serde_json::from_value(stored).unwrap();
    let err = reconcile(Arc::new(guard), ctx).await.unwrap_err();
    assert!(err.to_string().contains("no longer holds"), "{err}");
    let writes: Vec<String> = api
        .take_calls()
        .iter()
        .filter(|c| c.is_write())
        .map(Call::line)
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
}

#[tokio::test]
async fn a_pass_on_a_stale_cached_object_uses_the_stored_status() {
    let (api, client) = FakeApi::start();
    let ctx = context(client);
    let stale = cluster(3, json!({}));
    api.put(&clusters_path(), stale.clone());
    pass(&api, &ctx).await; // creates the members, records bootstrap voters
                            // The watch cache still holds the object without a status.
    let guard: DeserializeGuard<RaftCluster> = serde_json::from_value(stale).unwrap();
    reconcile(Arc::new(guard), ctx.clone()).await.unwrap();
    let calls = api.take_calls();
    assert_eq!(lines(&calls[..8]), reads());
    let created = calls
        .iter()
        .filter(|c| c.method == "POST" && c.path != events_path());
    assert_eq!(
        created.count(),
        0,
        "nothing is created twice: {:?}",
        lines(&calls)
    );
    // Its status write (now waiting for members to answer) keeps the voters.
    let stored = api.get(&clusters_path(), "demo").unwrap();
    assert_eq!(stored["status"]["bootstrapVoters"], json!([1, 2, 3]));
}

#[tokio::test]
async fn a_forming_member_whose_pod_was_never_created_still_bootstraps() {
    let (api, client) = FakeApi::start();
    let ctx = context(client);
    api.put(&clusters_path(), cluster(3, json!({})));
    pass(&api, &ctx).await;
    // As if the pass had crashed between member 1's volume and its pod.
    let claim = api.list(&claims_path())[0]["metadata"]["name"].clone();
    api.remove(&pods_path(), "demo-0");
    let (_, calls) = pass(&api, &ctx).await;
    let posted: Vec<&Call> = calls
        .iter()
        .filter(|c| c.method == "POST" && c.path != events_path())
        .collect();
    assert_eq!(posted.len(), 1, "only the pod: {:?}", lines(&calls));
    let pod = &posted[0].body;
    assert_eq!(pod["metadata"]["name"], "demo-0");
    assert_eq!(
        pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        claim
    );
    assert_eq!(env(pod, "RAFTLANE_INITIAL_VOTERS"), Some("1,2,3"));
    assert!(event_reasons(&calls).contains(&"MemberCreated".to_string()));
}

/// The environment of a member pod, as the kubelet would give it.
fn pod_env(pod: &Value) -> Vec<(String, String)> {
    pod["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let v = e["value"].as_str().expect("plain values only");
            (e["name"].as_str().unwrap().to_string(), v.to_string())
        })
        .collect()
}

/// The entry called `name` of a JSON list of named things (volumes,
/// mounts), or null.
fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|l| l.iter().find(|v| v["name"] == name))
        .unwrap_or(&Value::Null)
}

/// raft-node as the kubelet runs it from `pod` (its environment only, at
/// this test's "pod IP" `ip`), with `scratch` standing in for its
/// volumes: `scratch/data` for the data volume (not created),
/// `scratch/member-info` for the downward-API volume, rendered from the pod's
/// annotations as a kubelet renders it, and `scratch/member-scratch` for its
/// emptyDir.
fn pod_process(members: &Members, pod: &Value, ip: &str, scratch: &Path) -> std::process::Command {
    let id: u64 = env(pod, "RAFTLANE_ID").unwrap().parse().unwrap();
    // The Secret volume: this member's certificate from the members' CA.
    let (cert, _, _) = members.tls_files(id);
    let tls_dir = cert.parent().unwrap().display().to_string();
    let info = scratch.join("member-info");
    std::fs::create_dir_all(&info).unwrap();
    let volume = named(&pod["spec"]["volumes"], "member-info");
    let mount = named(&pod["spec"]["containers"][0]["volumeMounts"], "member-info");
    let mount = mount["mountPath"].as_str().expect("its mount").to_string();
    for item in volume["downwardAPI"]["items"].as_array().unwrap() {
        let field = item["fieldRef"]["fieldPath"].as_str().unwrap();
        let key = field
            .strip_prefix("metadata.annotations['")
            .and_then(|k| k.strip_suffix("']"))
            .expect("an annotation");
        let value = pod["metadata"]["annotations"][key].as_str().unwrap_or("");
        std::fs::write(info.join(item["path"].as_str().unwrap()), value).unwrap();
    }
    let info = info.display().to_string();
    let data = scratch.join("data").display().to_string();
    let empty = scratch.join("member-scratch");
    std::fs::create_dir_all(&empty).unwrap();
    let empty_mount = named(
        &pod["spec"]["containers"][0]["volumeMounts"],
        "member-scratch",
    );
    let empty_mount = empty_mount["mountPath"]
        .as_str()
        .expect("its mount")
        .to_string();
    let empty = empty.display().to_string();
    let mut cmd = std::process::Command::new(members.bin());
    cmd.env_clear()
        .envs(pod_env(pod).into_iter().map(|(k, v)| {
            let v = v
                .replace("[::]", ip)
                .replace(TLS_DIR, &tls_dir)
                .replace(&mount, &info)
                .replace(&empty_mount, &empty);
            match k.as_str() {
                "RAFTLANE_DATA_DIR" => (k, data.clone()),
                _ => (k, v),
            }
        }))
        .stdout(std::process::Stdio::null());
    cmd
}

#[tokio::test]
async fn the_pod_environment_starts_raft_node() {
    // A one-member cluster: the pod's own environment must be accepted by
    // raft-node and bootstrap a leader (listening on this test's "pod IP").
    let rc = typed(&cluster(1, json!({})));
    let pod = serde_json::to_value(member_pod(&rc, 1, "data", Some(&[1].into()), false)).unwrap();
    let members = Members::new(UID);
    let ip = members.ip(1, 0);
    let scratch = tempfile::tempdir().unwrap();
    let mut child = pod_process(&members, &pod, &ip, scratch.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let leader = tokio::time::timeout(Duration::from_secs(30), members.wait_leader(&ip)).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        leader.expect("raft-node started from the pod env elects itself"),
        1
    );
}

/// Runs raft-node from the pod of a member whose volume held state, on an
/// empty data dir (a wiped volume): returns its exit code and stderr.
fn refusal(members: &Members, rc: &RaftCluster, id: u64, ip: &str) -> (i32, String) {
    let pod = serde_json::to_value(member_pod(rc, id, "data", None, true)).unwrap();
    assert_eq!(
        pod["metadata"]["annotations"][HOLDS_STATE_ANNOTATION],
        "true"
    );
    let wiped = tempfile::tempdir().unwrap();
    let out = pod_process(members, &pod, ip, wiped.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stderr)
}

#[tokio::test]
async fn the_pod_environment_of_a_volume_that_held_state_refuses_an_empty_data_dir() {
    let rc = typed(&cluster(3, json!({})));
    let members = Members::new(UID);
    let (code, stderr) = refusal(&members, &rc, 2, &members.ip(2, 0));
    assert_eq!(code, WIPED_EXIT_CODE, "{stderr}");
    assert!(stderr.contains("--expect-state"), "{stderr}");
}

#[tokio::test]
async fn a_pod_recreated_on_a_volume_that_held_state_expects_state() {
    let (api, ctx, _members) = running_cluster(3).await;
    let claim = api.get(&claims_path(), "data-demo-1-seed").unwrap();
    assert_eq!(
        claim["metadata"]["annotations"]["raftlane.io/holds-state"],
        "true"
    );
    api.remove(&pods_path(), "demo-1");
    let (_, calls) = pass(&api, &ctx).await;
    let pod = calls
        .iter()
        .find(|c| c.method == "POST" && c.path == pods_path())
        .map(|c| &c.body)
        .expect("the pod created again");
    assert_eq!(
        pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "data-demo-1-seed"
    );
    assert_eq!(
        pod["metadata"]["annotations"][HOLDS_STATE_ANNOTATION],
        "true"
    );
}

#[tokio::test]
async fn a_running_pod_is_marked_once_its_member_holds_state() {
    // The pods were created on fresh volumes, unmarked; the pass that sees
    // each member's state marks its volume, then its running pod, once.
    let (api, _ctx, _members) = running_cluster(3).await;
    for i in 0..3 {
        let pod = api.get(&pods_path(), &format!("demo-{i}")).unwrap();
        assert_eq!(
            pod["metadata"]["annotations"][HOLDS_STATE_ANNOTATION], "true",
            "{pod}"
        );
        // raft-node reads the mark through the downward API at every start.
        assert_eq!(
            env(&pod, "RAFTLANE_EXPECT_STATE_FILE"),
            Some("/etc/raftlane/member/holds-state")
        );
        assert_eq!(env(&pod, "RAFTLANE_EXPECT_STATE"), None);
    }
}

#[tokio::test]
async fn a_member_whose_volume_was_wiped_is_refused_then_replaced_on_a_fresh_volume() {
    let (api, ctx, mut members) = running_cluster(3).await;
    // Member 3's volume is emptied under its pod; the kubelet restarts the
    // container, which refuses, and backs off: the pod reports that exit.
    members.lose(3);
    let rc = typed(&api.get(&clusters_path(), "demo").unwrap());
    let ip = members.ip(3, 0);
    let (code, _) = refusal(&members, &rc, 3, &ip);
    api.update(&pods_path(), "demo-2", |p| {
        p["status"] = json!({
            "phase": "Running",
            "podIP": ip,
            "containerStatuses": [{
                "name": "raft-node", "image": "raftlane/raft-node:test", "imageID": "",
                "ready": false, "restartCount": 1,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": code, "reason": "Error"}},
            }],
        });
    });

    // The volume is retired and the pod deleted, then the member removed as
    // one whose data is lost; nothing is created before that.
    let passes = passes_until(&api, &ctx, |_, calls| {
        event_reasons(calls).contains(&"MemberRemoved".to_string())
    })
    .await;
    let all: Vec<&Call> = passes.iter().flatten().collect();
    let at = |pred: &dyn Fn(&Call) -> bool| all.iter().position(|c| pred(c));
    let seed = format!("{}/data-demo-2-seed", claims_path());
    let retired = at(&|c| c.method == "PATCH" && c.path == seed).expect("the volume retired");
    assert_eq!(
        all[retired].body["metadata"]["labels"]["raftlane.io/retired"],
        "true"
    );
    let deleted = at(&|c| c.line() == format!("DELETE {}/demo-2", pods_path()))
        .expect("the refused pod deleted");
    let removed = at(&|c| c.body["reason"] == "MemberRemoved").unwrap();
    assert!(
        retired < deleted && deleted < removed,
        "order: retired {retired}, deleted {deleted}, removed {removed}"
    );
    assert!(
        !all.iter()
            .any(|c| c.method == "POST" && (c.path == pods_path() || c.path == claims_path())),
        "nothing created before the removal"
    );
    members.wait_voters(1, &[1, 2]).await;

    // Then it comes back on a fresh volume, not expecting state, as a learner.
    let passes = passes_until(&api, &ctx, |api, _| {
        api.get(&pods_path(), "demo-2").is_some()
    })
    .await;
    let pod = passes
        .iter()
        .flatten()
        .find(|c| c.method == "POST" && c.path == pods_path())
        .map(|c| c.body.clone())
        .expect("the pod created again");
    let claim = &pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"];
    assert_ne!(claim, "data-demo-2-seed");
    assert!(
        pod["metadata"]["annotations"][HOLDS_STATE_ANNOTATION].is_null(),
        "{pod}"
    );
    let ip = members.ip(3, 1);
    members.start(3, &ip, &[], &[]);
    api.update(&pods_path(), "demo-2", |p| {
        p["status"] = json!({"phase": "Running", "podIP": ip});
    });
    passes_until(&api, &ctx, |_, calls| {
        event_reasons(calls).contains(&"LearnerPromoted".to_string())
    })
    .await;
    members.wait_voters(1, &[1, 2, 3]).await;
}

/// A cluster being deleted with two volumes (one live, one retired by an
/// earlier scale-down) and a volume of another cluster incarnation.
async fn deleting(when_deleted: &str) -> Vec<Call> {
    let (api, client) = FakeApi::start();
    let ctx = context(client);
    let mut rc_json = cluster(1, json!({"retentionPolicy": {"whenDeleted": when_deleted}}));
    rc_json["metadata"]["deletionTimestamp"] = json!("2026-11-23T00:00:00Z");
    let rc = typed(&rc_json);
    api.put(&clusters_path(), rc_json);
    stored_claim(&api, &rc, 1);
    let retired = stored_claim(&api, &rc, 2);
    api.update(&claims_path(), &retired, |c| {
        c["metadata"]["labels"]["raftlane.io/retired"] = json!("true");
    });
    let mut other = serde_json::to_value(volume_claim(&rc, 1)).unwrap();
    other["metadata"]["name"] = json!("data-demo-0-old");
    other["metadata"]["labels"]["raftlane.io/cluster-uid"] = json!("an-older-demo");
    api.put(&claims_path(), other);

    let (action, calls) = pass(&api, &ctx).await;
    assert_eq!(action, Action::await_change());
    assert!(
        api.get(&claims_path(), "data-demo-0-old").is_some(),
        "another incarnation's volume is left alone"
    );
    let last = calls.last().unwrap();
    assert_eq!(last.line(), format!("PATCH {}/demo", clusters_path()));
    assert_eq!(
        last.body[1]["op"], "remove",
        "the finalizer is removed last"
    );
    calls
}

#[tokio::test]
async fn finalizer_deletes_every_volume_when_deleted_is_delete() {
    let calls = deleting("Delete").await;
    assert_eq!(
        lines(&calls),
        [
            format!("GET {}", claims_path()),
            format!("DELETE {}/data-demo-0-seed", claims_path()),
            format!("DELETE {}/data-demo-1-seed", claims_path()),
            format!("POST {}", events_path()),
            format!("PATCH {}/demo", clusters_path()),
        ]
    );
    assert_eq!(calls[3].body["reason"], "VolumesDeleted");
}

#[tokio::test]
async fn finalizer_retires_live_volumes_when_deleted_is_retain() {
    let calls = deleting("Retain").await;
    assert_eq!(
        lines(&calls),
        [
            format!("GET {}", claims_path()),
            format!("PATCH {}/data-demo-0-seed", claims_path()),
            format!("POST {}", events_path()),
            format!("PATCH {}/demo", clusters_path()),
        ]
    );
    let retire = &calls[1].body["metadata"];
    assert_eq!(retire["labels"]["raftlane.io/retired"], "true");
    assert!(
        retire["ownerReferences"].is_null()
            && retire.as_object().unwrap().contains_key("ownerReferences")
    );
    assert_eq!(calls[2].body["reason"], "VolumesRetained");
}

#[tokio::test]
async fn an_unreadable_cluster_being_deleted_has_its_volumes_retired_and_goes() {
    let (api, client) = FakeApi::start();
    let ctx = context(client);
    let mut rc = cluster(3, json!({}));
    stored_claim(&api, &typed(&rc), 1);
    rc["spec"]["replicas"] = json!("three");
    rc["metadata"]["deletionTimestamp"] = json!("2026-11-23T00:00:00Z");
    rc["metadata"]["resourceVersion"] = json!("7");
    api.put(&clusters_path(), rc);
    let (action, calls) = pass(&api, &ctx).await;
    assert_eq!(action, Action::await_change());
    assert_eq!(
        lines(&calls),
        [
            format!("POST {}", events_path()),
            format!("GET {}", claims_path()),
            format!("PATCH {}/data-demo-0-seed", claims_path()),
            format!("POST {}", events_path()),
            format!("PATCH {}/demo", clusters_path()),
        ]
    );
    assert_eq!(calls[0].body["reason"], "InvalidSpec");
    assert_eq!(calls[3].body["reason"], "VolumesRetained");
    let remove = &calls[4].body["metadata"];
    assert_eq!(remove["finalizers"], json!([]));
    assert_eq!(remove["resourceVersion"], "7", "a compare-and-set");
}

#[tokio::test]
async fn an_unreadable_cluster_gets_an_event_and_no_other_request() {
    let (api, client) = FakeApi::start();
    let ctx = context(client);
    let mut rc = cluster(3, json!({}));
    rc["spec"]["replicas"] = json!("three");
    api.put(&clusters_path(), rc);
    let (action, calls) = pass(&api, &ctx).await;
    assert_eq!(action, Action::await_change());
    assert_eq!(lines(&calls), [format!("POST {}", events_path())]);
    assert_eq!(calls[0].body["reason"], "InvalidSpec");
    assert!(calls[0].body["note"].as_str().unwrap().contains("three"));
}

/// A cluster of `replicas` whose CA and certificates were written by an
/// earlier pass (no members run).
fn with_certificates(api: &FakeApi, replicas: u32) -> (RaftCluster, Ca) {
    let rc_json = cluster(replicas, json!({}));
    let rc = typed(&rc_json);
    api.put(&clusters_path(), rc_json);
    let ca = Ca::generate(UID, 1).unwrap();
    put_stored(api, &secrets_path(), ca_secret(&rc, &ca));
    let authority = ca.authority().unwrap();
    let mut leaves: Vec<Leaf> = (1..=u64::from(replicas)).map(Leaf::Member).collect();
    leaves.extend([Leaf::Admin, Leaf::Client, Leaf::Backup]);
    for leaf in leaves {
        let issued = authority
            .issue(&leaf.identity(UID), &[], LEAF_VALIDITY)
            .unwrap();
        let stored = StoredLeaf {
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            generation: 1,
            trust_pem: ca.cert_pem.clone(),
        };
        put_stored(api, &secrets_path(), leaf_secret(&rc, &leaf, &stored));
    }
    (rc, ca)
}

fn secret_text(secret: &Value, key: &str) -> String {
    let s: k8s_openapi::api::core::v1::Secret = serde_json::from_value(secret.clone()).unwrap();
    raft_operator::k8s::resources::secret_text(&s, key).unwrap()
}

#[tokio::test]
async fn a_member_certificate_due_for_renewal_is_replaced_in_place() {
    let (api, client) = FakeApi::start();
    let ctx = context(client);
    let (rc, ca) = with_certificates(&api, 2);
    // Member 2's certificate has a minute left of six: renewal is due.
    let short = ca
        .authority()
        .unwrap()
        .issue(&Leaf::Member(2).identity(UID), &[], Duration::from_secs(60))
        .unwrap();
    let due = StoredLeaf {
        cert_pem: short.cert_pem.clone(),
        key_pem: short.key_pem,
        generation: 1,
        trust_pem: ca.cert_pem.clone(),
    };
    put_stored(
        &api,
        &secrets_path(),
        leaf_secret(&rc, &Leaf::Member(2), &due),
    );

    let (_, calls) = pass(&api, &ctx).await;
    let secret_writes: Vec<String> = calls
        .iter()
        .filter(|c| c.is_write() && c.path.starts_with(&secrets_path()))
        .map(Call::line)
        .collect();
    assert_eq!(
        secret_writes,
        [format!("PUT {}/demo-member-2-tls", secrets_path())],
        "only the due certificate, replaced (an update, not a new Secret)"
    );
    let renewed = api.get(&secrets_path(), "demo-member-2-tls").unwrap();
    let cert = secret_text(&renewed, "tls.crt");
    assert_ne!(cert, short.cert_pem);
    assert!(!raftlane_tls::issue::renewal_due(
        &cert,
        std::time::SystemTime::now()
    ));
    assert_eq!(secret_text(&renewed, "ca.crt"), ca.cert_pem);
    assert_eq!(renewed["metadata"]["ownerReferences"][0]["uid"], UID);
    // Renewed, it is left alone.
    let (_, calls) = pass(&api, &ctx).await;
    assert!(!calls
        .iter()
        .any(|c| c.is_write() && c.path.starts_with(&secrets_path())));
}

#[tokio::test]
async fn a_new_rotate_ca_annotation_reissues_every_certificate_trusting_both_cas() {
    let (api, client) = FakeApi::start();
    let ctx = context(client);
    let (_, old) = with_certificates(&api, 2);
    let leaf_secrets = [
        "demo-member-1-tls",
        "demo-member-2-tls",
        "demo-admin-tls",
        "demo-client-tls",
        "demo-backup-tls",
    ];
    let puts = |calls: &[Call]| -> Vec<String> {
        calls
            .iter()
            .filter(|c| c.method == "PUT")
            .map(|c| c.body["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    // Each stage is held until the kubelet had time to refresh the volumes:
    // the CA Secret records when it began; moved back, the next stage is due.
    let stage_over = || {
        let long_ago = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 3600;
        api.update(&secrets_path(), "demo-ca", |s| {
            s["data"]["stage-since"] =
                serde_json::to_value(k8s_openapi::ByteString(long_ago.to_string().into_bytes()))
                    .unwrap();
        });
    };
    api.update(&clusters_path(), "demo", |rc| {
        rc["metadata"]["annotations"] = json!({"raftlane.io/rotate-ca": "2026-12"});
    });
    let member_cert = secret_text(
        &api.get(&secrets_path(), "demo-member-1-tls").unwrap(),
        "tls.crt",
    );

    // Stage 1: a new CA, every bundle trusts both; certificates unchanged.
    let (_, calls) = pass(&api, &ctx).await;
    assert_eq!(puts(&calls), [&["demo-ca"][..], &leaf_secrets].concat());
    assert!(event_reasons(&calls).contains(&"CARotated".to_string()));
    let new_ca = secret_text(&api.get(&secrets_path(), "demo-ca").unwrap(), "ca.crt");
    assert_ne!(new_ca, old.cert_pem);
    let member = api.get(&secrets_path(), "demo-member-1-tls").unwrap();
    let trust = secret_text(&member, "ca.crt");
    assert!(trust.contains(&new_ca) && trust.contains(&old.cert_pem));
    assert_eq!(
        secret_text(&member, "tls.crt"),
        member_cert,
        "not reissued yet"
    );
    let (_, calls) = pass(&api, &ctx).await;
    assert!(puts(&calls).is_empty(), "held: {:?}", lines(&calls));

    // Stage 2: every certificate reissued by the new CA, both still trusted.
    stage_over();
    let (_, calls) = pass(&api, &ctx).await;
    assert_eq!(puts(&calls), [&["demo-ca"][..], &leaf_secrets].concat());
    assert!(event_reasons(&calls).contains(&"CertificatesReissued".to_string()));
    let member = api.get(&secrets_path(), "demo-member-1-tls").unwrap();
    assert_ne!(secret_text(&member, "tls.crt"), member_cert);
    assert!(secret_text(&member, "ca.crt").contains(&old.cert_pem));

    // Stage 3: the old CA leaves every bundle.
    stage_over();
    let (_, calls) = pass(&api, &ctx).await;
    assert!(event_reasons(&calls).contains(&"CARotationDone".to_string()));
    let member = api.get(&secrets_path(), "demo-member-1-tls").unwrap();
    assert_eq!(secret_text(&member, "ca.crt"), new_ca);
}

/// Outside the namespaces the chart covers with its members policy, a
/// cluster gets no peer policy (alone it would close the admin, client and
/// metrics ports), and one left from before is deleted.
#[tokio::test]
async fn no_peer_policy_where_the_chart_has_no_members_policy_and_a_stale_one_is_deleted() {
    let (api, client) = FakeApi::start();
    let reporter = Reporter {
        controller: "raft-operator".into(),
        instance: None,
    };
    let scope = PolicyScope::Namespaces(["elsewhere".to_string()].into());
    let ctx =
        Arc::new(Context::new(client, reporter, Metrics::default()).network_policies_in(scope));
    api.put(&clusters_path(), cluster(1, json!({})));
    let (_, calls) = pass(&api, &ctx).await;
    assert!(
        !calls
            .iter()
            .any(|c| c.line() == format!("POST {}", policies_path())),
        "{:?}",
        lines(&calls)
    );
    let stored = api.get(&clusters_path(), "demo").unwrap();
    let rc: RaftCluster = serde_json::from_value(stored).unwrap();
    api.put(
        &policies_path(),
        serde_json::to_value(network_policy(&rc)).unwrap(),
    );
    let (_, calls) = pass(&api, &ctx).await;
    assert!(
        calls
            .iter()
            .any(|c| c.line() == format!("DELETE {}/demo-peers", policies_path())),
        "{:?}",
        lines(&calls)
    );
    assert!(api.get(&policies_path(), "demo-peers").is_none());
}

#[tokio::test]
async fn without_tls_no_secret_is_written_and_members_are_told_plaintext() {
    let (api, client) = FakeApi::start();
    let ctx = context(client);
    let mut rc = cluster(2, json!({}));
    rc["spec"]["tls"] = json!({"enabled": false});
    api.put(&clusters_path(), rc);
    let (_, calls) = pass(&api, &ctx).await;
    assert!(
        !calls.iter().any(|c| c.path.starts_with(&secrets_path())),
        "{:?}",
        lines(&calls)
    );
    assert!(calls
        .iter()
        .any(|c| c.line() == format!("POST {}", policies_path())));
    let pods: Vec<&Value> = calls
        .iter()
        .filter(|c| c.line() == format!("POST {}", pods_path()))
        .map(|c| &c.body)
        .collect();
    assert_eq!(pods.len(), 2);
    for pod in pods {
        assert_eq!(env(pod, "RAFTLANE_INSECURE_PLAINTEXT"), Some("true"));
        assert_eq!(env(pod, "RAFTLANE_TLS_CERT"), None);
        assert!(named(&pod["spec"]["volumes"], "tls").is_null(), "{pod}");
    }
}

/// A ClusterIssuer lets any namespace with Certificate rights mint this
/// cluster's identities: refused, naming the opt-in, with nothing requested.
#[tokio::test]
async fn a_cluster_issuer_without_the_opt_in_is_refused() {
    let (api, client) = FakeApi::start();
    let ctx = context(client);
    let mut rc = cluster(2, json!({}));
    rc["spec"]["tls"] = json!({"issuerRef": {"name": "raft-ca", "kind": "ClusterIssuer"}});
    api.put(&clusters_path(), rc);
    let stored = api.get(&clusters_path(), "demo").unwrap();
    let guard: DeserializeGuard<RaftCluster> = serde_json::from_value(stored).unwrap();
    let err = reconcile(Arc::new(guard), ctx.clone()).await.unwrap_err();
    assert!(
        err.to_string().contains("spec.tls.insecureClusterIssuer"),
        "{err}"
    );
    assert!(!api
        .take_calls()
        .iter()
        .any(|c| c.line() == format!("POST {}", certificates_path())));
}

#[tokio::test]
async fn with_an_issuer_cert_manager_certificates_are_requested() {
    let (api, client) = FakeApi::start();
    let ctx = context(client);
    let mut rc = cluster(2, json!({}));
    rc["spec"]["tls"] = json!({"insecureAnonymousClients": true, "insecureClusterIssuer": true,
               "issuerRef": {"name": "raft-ca", "kind": "ClusterIssuer"}});
    api.put(&clusters_path(), rc);
    let stored = api.get(&clusters_path(), "demo").unwrap();
    let guard: DeserializeGuard<RaftCluster> = serde_json::from_value(stored).unwrap();
    let err = reconcile(Arc::new(guard), ctx.clone()).await.unwrap_err();
    assert!(err.to_string().contains("demo-operator-tls"), "{err}");
    let calls = api.take_calls();
    let posted: Vec<&Call> = calls
        .iter()
        .filter(|c| c.line() == format!("POST {}", certificates_path()))
        .collect();
    let names: Vec<&str> = posted
        .iter()
        .map(|c| c.body["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "demo-member-1-tls",
            "demo-member-2-tls",
            "demo-operator-tls",
            "demo-admin-tls",
            "demo-client-tls",
            "demo-backup-tls"
        ]
    );
    assert!(
        !calls
            .iter()
            .any(|c| c.line() == format!("POST {}", secrets_path())),
        "the operator issues nothing itself"
    );
    let member = &posted[0].body;
    assert_eq!(member["apiVersion"], "cert-manager.io/v1");
    assert_eq!(member["kind"], "Certificate");
    assert_eq!(member["metadata"]["ownerReferences"][0]["uid"], UID);
    let spec = &member["spec"];
    assert_eq!(spec["secretName"], "demo-member-1-tls");
    assert_eq!(spec["uris"], json!([format!("raftlane://{UID}/member/1")]));
    assert_eq!(
        spec["issuerRef"],
        json!({"name": "raft-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );
    let dns = spec["dnsNames"].as_array().unwrap();
    assert!(dns.contains(&json!(format!("demo-0.demo-peers.{NS}.svc"))));
    assert!(dns.contains(&json!(format!("demo-0.demo-peers.{NS}.svc.cluster.local"))));
    assert!(dns.contains(&json!(format!("demo.{NS}.svc"))));
    assert!(spec["usages"]
        .as_array()
        .unwrap()
        .contains(&json!("server auth")));
    let operator = &posted[2].body["spec"];
    assert_eq!(
        operator["uris"],
        json!([format!("raftlane://{UID}/operator")])
    );
    assert!(operator["dnsNames"].is_null());
    assert!(!operator["usages"]
        .as_array()
        .unwrap()
        .contains(&json!("server auth")));
    assert_eq!(
        posted[4].body["spec"]["uris"],
        json!([format!("raftlane://{UID}/client/default")])
    );
}

/// Every member volume bound at `size`, in `class` when given (else it names
/// none and the default class applies).
fn bind_volumes(api: &FakeApi, class: Option<&str>, size: &str) {
    for claim in api.list(&claims_path()) {
        let name = claim["metadata"]["name"].as_str().unwrap().to_string();
        api.update(&claims_path(), &name, |c| {
            if let Some(class) = class {
                c["spec"]["storageClassName"] = json!(class);
            }
            c["status"] = json!({"phase": "Bound", "capacity": {"storage": size}});
        });
    }
}

fn storage_class(name: &str, expandable: Option<bool>, default: bool) -> Value {
    let mut class = json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": name}, "provisioner": "csi.example.com",
    });
    if let Some(allow) = expandable {
        class["allowVolumeExpansion"] = json!(allow);
    }
    if default {
        class["metadata"]["annotations"] =
            json!({"storageclass.kubernetes.io/is-default-class": "true"});
    }
    class
}

/// Sets `spec.storage.size` (a new generation).
fn resize(api: &FakeApi, size: &str) {
    api.update(&clusters_path(), "demo", |rc| {
        rc["spec"]["storage"]["size"] = json!(size);
        rc["metadata"]["generation"] = json!(2);
    });
}

const CLAIMS: [&str; 3] = ["data-demo-0-seed", "data-demo-1-seed", "data-demo-2-seed"];

fn volume_condition(api: &FakeApi) -> Value {
    let rc = api.get(&clusters_path(), "demo").unwrap();
    rc["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "VolumeExpansion")
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_larger_storage_size_expands_every_member_volume_and_touches_no_pod() {
    let (api, ctx, _members) = running_cluster(3).await;
    bind_volumes(&api, Some("fast"), "1Gi");
    api.put(
        &storage_classes_path(),
        storage_class("fast", Some(true), false),
    );
    let (_, calls) = pass(&api, &ctx).await;
    assert_eq!(
        lines(&calls),
        reads(),
        "volumes at the spec's size: no request"
    );

    // Paused, the larger size is not acted on: no StorageClass read, no patch.
    api.update(&clusters_path(), "demo", |rc| {
        rc["spec"]["paused"] = json!(true)
    });
    resize(&api, "2Gi");
    let (_, calls) = pass(&api, &ctx).await;
    assert!(
        !calls
            .iter()
            .any(|c| c.path.starts_with(&claims_path()) && c.is_write()
                || c.path.starts_with(&storage_classes_path())),
        "{:?}",
        lines(&calls)
    );
    api.update(&clusters_path(), "demo", |rc| {
        rc["spec"]["paused"] = json!(false)
    });

    // Resumed: the class is read once, every PVC patched to 2Gi, an event each.
    let (_, calls) = pass(&api, &ctx).await;
    let mut want = reads();
    want.push(format!("PATCH {}/demo/status", clusters_path()));
    want.push(get(storage_classes_path(), "fast"));
    for claim in CLAIMS {
        want.push(format!("PATCH {}/{claim}", claims_path()));
    }
    for _ in CLAIMS {
        want.push(format!("POST {}", events_path()));
    }
    want.push(format!("PATCH {}/demo/status", clusters_path()));
    assert_eq!(lines(&calls), want);
    for (c, claim) in calls[10..13].iter().zip(CLAIMS) {
        assert_eq!(
            c.body,
            json!({"spec": {"resources": {"requests": {"storage": "2Gi"}}}})
        );
        let stored = api.get(&claims_path(), claim).unwrap();
        assert_eq!(stored["spec"]["resources"]["requests"]["storage"], "2Gi");
    }
    for (c, claim) in calls[13..16].iter().zip(CLAIMS) {
        assert_eq!(
            (&c.body["reason"], &c.body["type"]),
            (&json!("VolumeExpanding"), &json!("Normal"))
        );
        assert_eq!(
            c.body["note"],
            format!("{claim}: 1Gi → 2Gi (StorageClass fast allows expansion)")
        );
    }
    assert!(!calls
        .iter()
        .any(|c| c.path.starts_with(&pods_path()) && c.is_write()));
    let cond = &calls[16].body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "VolumeExpansion")
        .cloned()
        .unwrap();
    assert_eq!(
        (&cond["status"], &cond["reason"]),
        (&json!("True"), &json!("Expanding"))
    );
    assert_eq!(
        cond["message"],
        format!("expanding to 2Gi: {}", CLAIMS.join(", "))
    );

    // While the resize is under way, a pass only reads.
    let (_, calls) = pass(&api, &ctx).await;
    assert_eq!(lines(&calls), reads());

    // The volumes reach 2Gi: the condition says so, once.
    bind_volumes(&api, None, "2Gi");
    let (_, calls) = pass(&api, &ctx).await;
    let mut want = reads();
    want.push(format!("PATCH {}/demo/status", clusters_path()));
    assert_eq!(lines(&calls), want);
    let cond = volume_condition(&api);
    assert_eq!(
        (&cond["status"], &cond["reason"]),
        (&json!("True"), &json!("Complete"))
    );
    let (_, calls) = pass(&api, &ctx).await;
    assert_eq!(lines(&calls), reads());
}

#[tokio::test]
async fn a_storage_class_without_expansion_gets_a_warning_and_the_condition_once() {
    let (api, ctx, _members) = running_cluster(3).await;
    // The claims name no class: the default one is theirs.
    bind_volumes(&api, None, "1Gi");
    api.put(
        &storage_classes_path(),
        storage_class("other", Some(true), false),
    );
    api.put(
        &storage_classes_path(),
        storage_class("standard", None, true),
    );
    resize(&api, "2Gi");

    let (_, calls) = pass(&api, &ctx).await;
    let mut want = reads();
    want.extend([
        format!("PATCH {}/demo/status", clusters_path()),
        format!("GET {}", storage_classes_path()),
        format!("POST {}", events_path()),
        format!("PATCH {}/demo/status", clusters_path()),
    ]);
    assert_eq!(lines(&calls), want);
    let event = &calls[10].body;
    assert_eq!(
        (&event["reason"], &event["type"]),
        (&json!("VolumeExpansionNotAllowed"), &json!("Warning"))
    );
    let note = event["note"].as_str().unwrap();
    assert!(
        note.starts_with("StorageClass standard does not allow volume expansion")
            && note.contains(&CLAIMS.join(", "))
            && note.ends_with("not expanded to 2Gi"),
        "{note}"
    );
    let cond = volume_condition(&api);
    assert_eq!(
        (&cond["status"], &cond["reason"]),
        (&json!("False"), &json!("NotAllowedByStorageClass"))
    );
    assert_eq!(cond["message"], note);
    for claim in CLAIMS {
        let stored = api.get(&claims_path(), claim).unwrap();
        assert_eq!(stored["spec"]["resources"]["requests"]["storage"], "1Gi");
    }

    // The next passes read the class again, and write nothing.
    for _ in 0..2 {
        let (_, calls) = pass(&api, &ctx).await;
        let mut want = reads();
        want.push(format!("GET {}", storage_classes_path()));
        assert_eq!(lines(&calls), want);
    }
}

#[tokio::test]
async fn a_smaller_storage_size_shrinks_nothing_and_says_so_once() {
    let (api, ctx, _members) = running_cluster(3).await;
    // The volumes were expanded by hand beyond the spec's 1Gi.
    bind_volumes(&api, Some("fast"), "2Gi");
    for claim in CLAIMS {
        api.update(&claims_path(), claim, |c| {
            c["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        });
    }
    api.put(
        &storage_classes_path(),
        storage_class("fast", Some(true), false),
    );

    let (_, calls) = pass(&api, &ctx).await;
    let mut want = reads();
    want.extend([
        format!("POST {}", events_path()),
        format!("PATCH {}/demo/status", clusters_path()),
    ]);
    assert_eq!(lines(&calls), want);
    assert_eq!(calls[8].body["reason"], "VolumeShrinkRefused");
    assert_eq!(calls[8].body["type"], "Warning");
    let cond = volume_condition(&api);
    assert_eq!(
        (&cond["status"], &cond["reason"]),
        (&json!("False"), &json!("ShrinkRefused"))
    );
    assert!(
        cond["message"]
            .as_str()
            .unwrap()
            .contains("data-demo-0-seed (2Gi)"),
        "{cond}"
    );
    let (_, calls) = pass(&api, &ctx).await;
    assert_eq!(lines(&calls), reads(), "told once");
}

/// A client that reaches `inner` (the fake's) through `hook`, which sees each
/// request ("METHOD /path") just before it is answered.
fn hooked(inner: kube::Client, hook: impl Fn(&str) + Send + 'static) -> kube::Client {
    type Req = http::Request<kube::client::Body>;
    type Resp = http::Response<kube::client::Body>;
    let (svc, mut handle) = tower_test::mock::pair::<Req, Resp>();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            hook(&format!("{} {}", req.method(), req.uri().path()));
            match inner.send(req).await {
                Ok(resp) => send.send_response(resp),
                Err(e) => send.send_error(e),
            }
        }
    });
    kube::Client::new(svc, NS)
}

/// A context that loses the Lease when the request `at` is sent (the fake
/// still answers that one), or from the start when `at` is None.
fn losing_at(client: kube::Client, at: Option<String>) -> Arc<Context> {
    let (lost_tx, lost) = tokio::sync::watch::channel(at.is_none());
    let client = hooked(client, move |line| {
        if at.as_deref() == Some(line) {
            let _ = lost_tx.send(true);
        }
    });
    let reporter = Reporter {
        controller: "raft-operator".into(),
        instance: None,
    };
    Arc::new(Context::new(client, reporter, Metrics::default()).leading_while(lost))
}

/// One pass on the stored RaftCluster with a context that loses the Lease
/// at `at`: it fails as not leading, and sends no write from `at` on (none
/// at all when lost from the start). Returns its requests.
async fn pass_losing_at(api: &FakeApi, client: &kube::Client, at: Option<String>) -> Vec<Call> {
    let ctx = losing_at(client.clone(), at.clone());
    let stored = api.get(&clusters_path(), "demo").expect("the RaftCluster");
    let guard: DeserializeGuard<RaftCluster> = serde_json::from_value(stored).unwrap();
    let err = reconcile(Arc::new(guard), ctx).await.unwrap_err();
    let calls = api.take_calls();
    assert_eq!(err.reason(), "not_leader", "{err}: {:?}", lines(&calls));
    let from = match &at {
        Some(at) => calls
            .iter()
            .position(|c| c.line() == *at)
            .unwrap_or_else(|| panic!("{at} was never sent: {:?}", lines(&calls))),
        None => 0,
    };
    let writes: Vec<String> = calls[from..]
        .iter()
        .filter(|c| c.is_write())
        .map(Call::line)
        .collect();
    assert!(writes.is_empty(), "lost at {at:?}, then wrote {writes:?}");
    calls
}

#[tokio::test]
async fn a_replica_that_loses_the_lease_mid_pass_writes_nothing_from_then_on() {
    let (api, ctx, _members) = running_cluster(3).await;
    // Work for a pass: a Scaling event, a Service to create again, a member
    // to add, a status to write.
    scale(&api, 4);
    api.remove(&services_path(), "demo");
    // Not asserted here: lost during `tls::sync` (after its read of the
    // Secrets), a new member's certificate is still written.
    for at in [
        get(clusters_path(), "demo"),
        get(services_path(), "demo"),
        format!("GET {}", pods_path()),
    ] {
        pass_losing_at(&api, &ctx.client, Some(at)).await;
    }
    // Nothing of it was done; the service was created while still leading.
    assert!(api.get(&services_path(), "demo").is_some());
    assert!(api.get(&pods_path(), "demo-3").is_none());
    let stored = api.get(&clusters_path(), "demo").unwrap();
    assert_ne!(stored["status"]["observedGeneration"], 2);
    // Still leading, the same pass does write.
    let (_, calls) = pass(&api, &ctx).await;
    assert!(calls.iter().any(Call::is_write), "{:?}", lines(&calls));
}

#[tokio::test]
async fn a_replica_that_loses_the_lease_during_a_resize_writes_no_event_and_no_condition() {
    let (api, ctx, _members) = running_cluster(3).await;
    bind_volumes(&api, None, "1Gi");
    api.put(
        &storage_classes_path(),
        storage_class("standard", None, true),
    );
    resize(&api, "2Gi");
    // Lost while the StorageClasses are read: no Warning event, no condition.
    let at = format!("GET {}", storage_classes_path());
    pass_losing_at(&api, &ctx.client, Some(at)).await;
    assert_eq!(volume_condition(&api), Value::Null);
    // Leading, the same pass writes both.
    let (_, calls) = pass(&api, &ctx).await;
    assert_eq!(event_reasons(&calls), ["VolumeExpansionNotAllowed"]);
    assert_ne!(volume_condition(&api), Value::Null);
}

#[tokio::test]
async fn a_replica_that_lost_the_lease_adds_no_finalizer_and_releases_no_volume() {
    let (api, client) = FakeApi::start();

    // A new cluster: the finalizer would be added first.
    let mut rc_json = cluster(1, json!({"retentionPolicy": {"whenDeleted": "Delete"}}));
    rc_json["metadata"]["finalizers"] = json!([]);
    api.put(&clusters_path(), rc_json.clone());
    let calls = pass_losing_at(&api, &client, None).await;
    assert!(calls.is_empty(), "{:?}", lines(&calls));

    // An unreadable one: it would get an event.
    let mut unreadable = rc_json.clone();
    unreadable["spec"]["replicas"] = json!("one");
    api.put(&clusters_path(), unreadable);
    let calls = pass_losing_at(&api, &client, None).await;
    assert!(calls.is_empty(), "{:?}", lines(&calls));

    // One being deleted, its volumes to delete: lost before the pass, or
    // while they are listed.
    rc_json["metadata"]["finalizers"] = json!([FINALIZER]);
    rc_json["metadata"]["deletionTimestamp"] = json!("2026-11-23T00:00:00Z");
    api.put(&clusters_path(), rc_json.clone());
    for id in [1, 2] {
        stored_claim(&api, &typed(&rc_json), id);
    }
    pass_losing_at(&api, &client, None).await;
    pass_losing_at(&api, &client, Some(format!("GET {}", claims_path()))).await;
    assert_eq!(api.list(&claims_path()).len(), 2, "no volume deleted");
    let stored = api.get(&clusters_path(), "demo").unwrap();
    assert_eq!(stored["metadata"]["finalizers"], json!([FINALIZER]));

    // Leading, the same pass deletes them and removes the finalizer.
    let (_, calls) = pass(&api, &context(client)).await;
    assert_eq!(
        calls.iter().filter(|c| c.method == "DELETE").count(),
        2,
        "{:?}",
        lines(&calls)
    );
    assert_eq!(api.list(&claims_path()).len(), 0);
}

/// A member's container gets bounded memory by default; `spec.resources`
/// replaces the default whole.
#[test]
fn member_pods_have_default_resources_unless_the_spec_names_them() {
    let rc = typed(&cluster(1, json!({})));
    let pod = serde_json::to_value(member_pod(&rc, 1, "data", None, false)).unwrap();
    let r = &pod["spec"]["containers"][0]["resources"];
    assert_eq!(r["limits"]["memory"], "1Gi", "{r}");
    assert_eq!(r["requests"]["memory"], "256Mi", "{r}");
    let mut v = cluster(1, json!({}));
    v["spec"]["resources"] = json!({"limits": {"memory": "4Gi"}});
    let pod = serde_json::to_value(member_pod(&typed(&v), 1, "data", None, false)).unwrap();
    assert_eq!(
        pod["spec"]["containers"][0]["resources"],
        json!({"limits": {"memory": "4Gi"}})
    );
}
