//! The operator scenarios against a real control plane on this machine:
//! etcd, kube-apiserver and kube-controller-manager built from their Go
//! modules, pods run as local processes by the process kubelet, the operator
//! installed with `kubectl apply -f crds/` and `helm install`. The same
//! scenario functions as tests/local.rs and tests/kind.rs. Runs with
//! RAFTLANE_E2E_CONTROLPLANE=1 (`make e2e-controlplane`); otherwise it prints
//! one skip line and passes.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams};
use raft_operator::crd::RaftCluster;
use raftlane_e2e::controlplane::env::NAMESPACE;
use raftlane_e2e::controlplane::servers::client_from;
use raftlane_e2e::controlplane::{checks, ControlPlaneEnv};
use raftlane_e2e::{kube_target, scenarios};

/// Bounds the whole suite, the Go build of a cold machine included.
const WHOLE_RUN: Duration = Duration::from_secs(80 * 60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_scenarios_on_a_real_control_plane() {
    tokio::time::timeout(WHOLE_RUN, scenarios_on_control_plane())
        .await
        .expect("the controlplane suite did not finish within 80 minutes");
}

fn forbidden<T: std::fmt::Debug>(r: Result<T, kube::Error>, what: &str) {
    match r {
        Err(kube::Error::Api(e)) if e.code == 403 => {
            eprintln!("rbac: {what}: denied by the API server ({})", e.message)
        }
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

/// The operator's own ServiceAccount token (the one the kubelet projected
/// into its pod) may do what the chart's Role allows and nothing else.
async fn operator_rbac(env: &ControlPlaneEnv) {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), NAMESPACE);
    let selector = "app.kubernetes.io/instance=raft-operator";
    let op = pods
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap();
    let op = op.items.first().expect("the operator's pod");
    let uid = op.metadata.uid.clone().unwrap();
    let sa = op
        .spec
        .as_ref()
        .unwrap()
        .service_account_name
        .clone()
        .unwrap();
    // The kubeconfig the kubelet wrote for the operator names its projected
    // token file.
    let kubeconfig = env.pod_dir(&uid).join("operator.kubeconfig");
    let client = client_from(&kubeconfig).await.unwrap();
    let as_operator = |c: &kube::Client| -> Api<Pod> { Api::namespaced(c.clone(), NAMESPACE) };
    as_operator(&client)
        .list(&ListParams::default())
        .await
        .expect("the Role allows listing pods");
    eprintln!("rbac: as system:serviceaccount:{NAMESPACE}:{sa}: list pods allowed");
    // Certificates live in Secrets: the Role reads them here, nowhere else.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    secrets
        .list(&ListParams::default())
        .await
        .expect("the Role allows listing secrets of the watched namespace");
    forbidden(
        Api::<Secret>::namespaced(client.clone(), "default")
            .list(&ListParams::default())
            .await,
        "list secrets outside the watched namespace",
    );
    let clusters: Api<RaftCluster> = Api::namespaced(client.clone(), NAMESPACE);
    forbidden(
        clusters.delete("e2e", &DeleteParams::default()).await,
        "delete a RaftCluster (the Role has no delete on raftclusters)",
    );
    let elsewhere: Api<Pod> = Api::namespaced(client.clone(), "default");
    forbidden(
        elsewhere.list(&ListParams::default()).await,
        "list pods outside the watched namespace",
    );
}

async fn scenarios_on_control_plane() {
    let suite = Instant::now();
    let Some(mut env) = ControlPlaneEnv::start().await.unwrap() else {
        return;
    };
    for (step, took) in &env.timings {
        eprintln!("measured: {step}: {took:?}");
    }

    let created = Instant::now();
    let since = jiff::Timestamp::now().to_string();
    let mut t = env.create_cluster("e2e", 3).await.unwrap();
    kube_target::settled_since(&t, created).await.unwrap();
    let keys = kube_target::first_checks(&mut t).await.unwrap();
    checks::no_warnings_since(&env, &since, "create")
        .await
        .unwrap();
    kube_target::wiped_volumes(&mut t, &keys).await.unwrap();

    checks::tls_secrets_of(&env, &t.name, 3).await.unwrap();

    checks::printer_columns(&env, &t.name).await.unwrap();
    checks::describe_shows_conditions_and_events(&env, &t.name)
        .await
        .unwrap();
    checks::invalid_cluster_refused(&env).await.unwrap();
    operator_rbac(&env).await;

    let since = jiff::Timestamp::now().to_string();
    kube_target::scale_suite(&mut t, &keys).await.unwrap();
    checks::no_warnings_since(&env, &since, "scale 3 to 5 and back")
        .await
        .unwrap();

    kube_target::member_suite(&mut t, &keys).await.unwrap();

    let took = checks::wiped_volume_is_replaced(&env, &mut t, &keys)
        .await
        .unwrap();
    eprintln!("measured: follower's volume wiped to three healthy voters again: {took:?}");

    let took = checks::two_operators_hand_over(&env).await.unwrap();
    eprintln!(
        "measured: Lease holder's pod deleted to the other operator holding the Lease: {took:?}"
    );
    // The new holder acts: a deleted member is repaired in place again.
    let took = scenarios::kill_member_comes_back(&mut t, false, &keys)
        .await
        .unwrap();
    eprintln!("measured: (new operator) follower pod deleted to peers updated in place: {took:?}");

    let crashed = Instant::now();
    scenarios::operator_crash_between_add_and_promote(&mut t)
        .await
        .unwrap();
    eprintln!(
        "measured: operator killed between add-learner and promote to 4 voters by the next one: {:?}",
        crashed.elapsed()
    );

    checks::uninstall_refused_while_a_cluster_exists(&env, &t.name)
        .await
        .unwrap();
    let deleted = Instant::now();
    let since = jiff::Timestamp::now().to_string();
    env.delete_cluster(&t.name).await.unwrap();
    checks::nothing_left_of(&env, &t.name).await.unwrap();
    checks::no_warnings_since(&env, &since, "kubectl delete raftcluster")
        .await
        .unwrap();
    eprintln!(
        "measured: kubectl delete raftcluster to nothing of it left: {:?}",
        deleted.elapsed()
    );
    checks::retained_volume_survives_deletion(&env)
        .await
        .unwrap();
    eprintln!("measured: suite wall time: {:?}", suite.elapsed());
    env.passed();
}
