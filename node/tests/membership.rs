//! Membership safety with real processes, checked from every member's own
//! `Status`, never only the leader's: a member that joins a young cluster (no
//! compaction yet, the default `--snapshot-entries`) learns every voter, and the
//! node itself refuses changes that would make the cluster unsafe or unwritable.

mod common;

use std::time::{Duration, Instant};

use common::{write_keys, Cluster, ELECTION};
use raftlane_proto::admin::MemberRequest;
use tonic::Code;

/// Timing for tests that act on one leader across several steps: a 3 s
/// election timeout, so a loaded machine does not elect another meanwhile.
const SLOW: [&str; 4] = ["--tick-ms", "100", "--election-ticks", "30"];
const SLOW_ELECTION: Duration = Duration::from_secs(3);

/// Waits until every listed member's own view has exactly these voters and
/// learners, and no change pending.
async fn wait_every_view(c: &Cluster, ids: &[u64], voters: &[u64], learners: &[u64]) {
    for id in ids {
        c.wait_status(*id, SLOW_ELECTION * 10, "configuration view", |s| {
            s.voters == voters && s.learners == learners && !s.conf_change_pending
        })
        .await;
    }
}

async fn promote(c: &Cluster, leader: u64, id: u64) -> Result<u64, tonic::Status> {
    let mut admin = c.admin(leader).await;
    admin
        .promote_learner(MemberRequest { id })
        .await
        .map(|r| r.into_inner().index)
}

/// Promotes learner `id`, retrying while the leader answers ABORTED "not
/// yet" (as the operator does): a learner whose snapshot install the leader
/// has not heard of yet is still catching up.
async fn promote_when_ready(c: &Cluster, leader: u64, id: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = promote(c, leader, id).await {
        let not_yet = [
            "has not been heard from",
            "still catching up",
            "entries behind",
        ];
        assert!(not_yet.iter().any(|m| e.message().contains(m)), "{e:?}");
        assert_eq!(e.code(), Code::Aborted, "{e:?}");
        assert!(Instant::now() < deadline, "never promoted: {e:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn remove(c: &Cluster, leader: u64, id: u64) -> Result<u64, tonic::Status> {
    let mut admin = c.admin(leader).await;
    admin
        .remove_member(MemberRequest { id })
        .await
        .map(|r| r.into_inner().index)
}

fn assert_refused(r: Result<u64, tonic::Status>, says: &str) {
    assert_refused_as(r, Code::FailedPrecondition, says);
}

/// Refused for now: ABORTED, ask again later (a learner not caught up yet).
fn assert_not_yet(r: Result<u64, tonic::Status>, says: &str) {
    assert_refused_as(r, Code::Aborted, says);
}

fn assert_refused_as(r: Result<u64, tonic::Status>, code: Code, says: &str) {
    let err = r.expect_err("change refused");
    assert_eq!(err.code(), code, "{err:?}");
    assert!(
        err.message().contains(says),
        "{:?} lacks {says:?}",
        err.message()
    );
}

/// The split brain found on 2a0427e: member 4 joined a young cluster, replayed
/// the log from index 1, never saw the bootstrap voters, and after promotion
/// believed it was the only voter; with 1–3 paused it elected itself and
/// acknowledged a put.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_a_young_cluster_learns_every_voter_and_never_leads_alone() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_leader(ELECTION * 20).await;
    write_keys(&c.kv(&[1, 2, 3]), "young-", 0..20).await;
    let s4 = c.add_learner_and_wait(leader, 4).await;
    assert_eq!(s4.voters, vec![1, 2, 3], "member 4's own view as a learner");
    assert_eq!(s4.learners, vec![4]);
    promote_when_ready(&c, leader, 4).await;
    wait_every_view(&c, &[1, 2, 3, 4], &[1, 2, 3, 4], &[]).await;

    // With 1–3 stalled, member 4 is one voter of four: it must not win an
    // election, and no write may be acknowledged through it.
    for id in 1..=3 {
        c.signal(id, "STOP");
    }
    let kv4 =
        raft_node::client::KvClient::new(&c.endpoints(&[4]), Duration::from_secs(3), &c.dialer())
            .unwrap();
    let stalled = Instant::now();
    let mut attempts = 0;
    while stalled.elapsed() < ELECTION * 8 {
        attempts += 1;
        let r = kv4.put(b"split-brain", b"acknowledged-by-4-alone").await;
        assert!(
            r.is_err(),
            "member 4 acknowledged a write with 1-3 paused: {r:?}"
        );
    }
    let s4 = c.status(4).await.expect("member 4 answers");
    assert_ne!(s4.role, "leader", "member 4 elected itself: {s4:?}");
    assert_eq!(s4.voters, vec![1, 2, 3, 4], "{s4:?}");
    for id in 1..=3 {
        c.signal(id, "CONT");
    }
    eprintln!("{attempts} writes through member 4 refused while 1-3 were paused");

    // Back together: one leader, every member's own view agrees, writes work.
    let leader = c.wait_leader(ELECTION * 20).await;
    write_keys(&c.kv(&[1, 2, 3, 4]), "after-", 0..20).await;
    let commit = c.status(leader).await.unwrap().commit_index;
    for id in 1..=4 {
        let s = c
            .wait_status(id, ELECTION * 20, "applied the leader's commit", |s| {
                s.applied_index >= commit
            })
            .await;
        assert_eq!(s.voters, vec![1, 2, 3, 4], "member {id}: {s:?}");
        assert_eq!(s.leader_id, leader, "member {id}: {s:?}");
    }
}

/// On 2a0427e `remove <leader>` was accepted and every later write failed with
/// "proposal dropped": the removed leader kept leading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_leader_is_refused_and_the_cluster_stays_writable() {
    let c = Cluster::start(3, &SLOW);
    let leader = c.wait_leader(SLOW_ELECTION * 20).await;
    assert_refused(
        remove(&c, leader, leader).await,
        &format!("member {leader} is the leader; transfer leadership to another voter first"),
    );
    let kv = c.kv(&[1, 2, 3]);
    write_keys(&kv, "still-writable-", 0..10).await;
    wait_every_view(&c, &[1, 2, 3], &[1, 2, 3], &[]).await;

    // The way the message names: move leadership, then remove through the new leader.
    let next = if leader == 1 { 2 } else { 1 };
    let mut admin = c.admin(leader).await;
    admin
        .transfer_leader(MemberRequest { id: next })
        .await
        .expect("transfer");
    let new_leader = c.wait_leader(SLOW_ELECTION * 10).await;
    assert_eq!(new_leader, next);
    remove(&c, new_leader, leader)
        .await
        .expect("remove the old leader");
    let removed_at = Instant::now();
    let rest: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    write_keys(&c.kv(&rest), "after-removal-", 0..10).await;
    let took = removed_at.elapsed();
    assert!(
        took < SLOW_ELECTION * 2 + Duration::from_secs(5),
        "writable again after {took:?}"
    );
    let mut expected = rest.clone();
    expected.sort_unstable();
    wait_every_view(&c, &rest, &expected, &[]).await;
    eprintln!("writable {took:?} after removing the old leader");
}

/// A removal that would leave fewer healthy voters than a quorum is refused
/// naming the members; removing the unhealthy member instead is allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_that_leaves_no_healthy_quorum_is_refused_naming_the_members() {
    let mut c = Cluster::start(3, &SLOW);
    let leader = c.wait_leader(SLOW_ELECTION * 20).await;
    let others: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    let (healthy, dead) = (others[0], others[1]);
    c.kill9(dead);
    // Until an election timeout passes, the leader may still count `dead` as heard from.
    tokio::time::sleep(SLOW_ELECTION + Duration::from_secs(1)).await;
    let mut rest = vec![leader, dead];
    rest.sort_unstable();
    assert_refused(
        remove(&c, leader, healthy).await,
        &format!(
            "removing member {healthy} would leave voters {rest:?} with only [{leader}] healthy"
        ),
    );
    assert_refused(
        remove(&c, leader, healthy).await,
        &format!("members [{dead}] have not been heard from"),
    );
    remove(&c, leader, dead)
        .await
        .expect("removing the dead member keeps a healthy quorum");
    let mut two = vec![leader, healthy];
    two.sort_unstable();
    wait_every_view(&c, &two, &two, &[]).await;
    write_keys(&c.kv(&two), "two-voters-", 0..10).await;
}

/// A learner is promoted only when it runs and is caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoting_a_stopped_or_lagging_learner_is_refused() {
    // The slow timing also keeps a paused learner counted as heard from while it
    // falls behind.
    let mut c = Cluster::start(3, &[&SLOW[..], &["--max-promote-lag", "10"]].concat());
    let leader = c.wait_leader(SLOW_ELECTION * 20).await;
    c.add_learner_and_wait(leader, 4).await;

    c.signal(4, "STOP");
    write_keys(&c.kv(&[1, 2, 3]), "behind-", 0..50).await;
    let r = promote(&c, leader, 4).await;
    c.signal(4, "CONT");
    assert_not_yet(r, "entries behind the leader's last index");
    let s = c.status(leader).await.unwrap();
    assert!(s.learners == vec![4] && s.voters == vec![1, 2, 3], "{s:?}");

    c.kill9(4);
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_not_yet(
        promote(&c, leader, 4).await,
        "learner 4 has not been heard from",
    );

    // Running again: promoted once the leader hears from it (the refusal says
    // to retry then).
    c.spawn(4, &[]);
    promote_when_ready(&c, leader, 4).await;
    wait_every_view(&c, &[1, 2, 3, 4], &[1, 2, 3, 4], &[]).await;
}
