//! The operator scenarios against the local runtime: real raft-operator and
//! raft-node processes on loopback.

use raftlane_e2e::local::LocalTarget;
use raftlane_e2e::scenarios;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_scale_up_and_scale_down() {
    let mut t = LocalTarget::start(3).unwrap();
    let keys = scenarios::create_three(&t).await.unwrap();
    scenarios::tls_closes_every_port(&t).await.unwrap();
    let took = scenarios::scale_up_to_five(&mut t, &keys).await.unwrap();
    eprintln!("measured: edit to 5 voting members (1000 keys): {took:?}");
    let (took, writes) = scenarios::rolling_update_under_writes(&mut t, 5, &keys)
        .await
        .unwrap();
    eprintln!(
        "measured: rolling update of 5 members under writes: {took:?} ({} writes acknowledged, {} retried)",
        writes.acked.len(),
        writes.retried
    );
    scenarios::scale_down_to_three(&mut t, &keys).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_follower_and_leader_come_back_on_new_addresses() {
    let mut t = LocalTarget::start(3).unwrap();
    let keys = scenarios::create_three(&t).await.unwrap();
    let took = scenarios::kill_member_comes_back(&mut t, false, &keys)
        .await
        .unwrap();
    eprintln!("measured: follower killed to peers updated and the leader streaming to its new address: {took:?}");
    let took = scenarios::kill_member_comes_back(&mut t, true, &keys)
        .await
        .unwrap();
    eprintln!("measured: leader killed to peers updated and the leader streaming to its new address: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_members_killed_at_once_recover() {
    let mut t = LocalTarget::start(3).unwrap();
    let keys = scenarios::create_three(&t).await.unwrap();
    let took = scenarios::all_members_killed_recover(&mut t, &keys)
        .await
        .unwrap();
    eprintln!("measured: every member killed to all back and agreeing on a leader: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_data_is_lost_rejoins_as_a_new_member() {
    let mut t = LocalTarget::start(3).unwrap();
    let keys = scenarios::create_three(&t).await.unwrap();
    let took = scenarios::lost_member_rejoins_empty(&mut t, &keys)
        .await
        .unwrap();
    eprintln!("measured: data dir lost to three healthy voters again: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_wiped_under_its_process_is_replaced_not_restarted_empty() {
    let mut t = LocalTarget::start(3).unwrap();
    let keys = scenarios::create_three(&t).await.unwrap();
    let [initial, added] = scenarios::wiped_member_is_replaced(&mut t, &keys)
        .await
        .unwrap();
    eprintln!("measured: data dir wiped under a running member to all voters healthy again: initial member {initial:?}, scale-up member {added:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_killed_mid_operation_resumes_it() {
    let mut t = LocalTarget::start(3).unwrap();
    scenarios::operator_crash_between_add_and_promote(&mut t)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_every_step_then_a_member_that_cannot_start_is_replaced() {
    let mut t = LocalTarget::start(3).unwrap();
    let keys = scenarios::create_three(&t).await.unwrap();
    scenarios::paused_cluster_is_left_alone(&mut t, &keys)
        .await
        .unwrap();
    let took = scenarios::failed_member_is_replaced(&mut t, &keys)
        .await
        .unwrap();
    eprintln!("measured: member unable to start to replaced and healthy (after: 10s): {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_under_writes_then_a_failed_rollout_is_reverted() {
    let mut t = LocalTarget::start(3).unwrap();
    let keys = scenarios::create_three(&t).await.unwrap();
    scenarios::rollouts(&mut t, &keys, "members").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_100k_keys_restores_a_new_cluster_with_every_key() {
    let mut t = LocalTarget::start(3).unwrap();
    let r = scenarios::backup_and_restore(&mut t, 100_000)
        .await
        .unwrap();
    eprintln!("measured: 100000 keys: {r}");
}
