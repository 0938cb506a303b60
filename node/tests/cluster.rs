//! A three-member cluster of real processes on loopback: replication, leader
//! failure, restarts on the same data dir and on a new address. Every scenario
//! runs with four lanes per peer and with one multiplexed lane.

mod common;

use std::time::{Duration, Instant};

use common::{assert_keys, write_keys, Cluster, ELECTION};
use raft_node::storage::BOOTSTRAP_INDEX;

async fn replicates_and_survives_leader_kill(lanes: &[&str]) {
    let mut c = Cluster::start(3, lanes);
    let leader = c.wait_leader(ELECTION * 20).await;

    // 1000 puts spread over every endpoint.
    let kv = c.kv(&[1, 2, 3]);
    let keys = write_keys(&kv, "k", 0..1000).await;
    for id in 1..=3 {
        assert_keys(&c.kv(&[id]), &keys).await;
    }

    // kill -9 the leader: the others elect a new one within a few election timeouts.
    let killed_at = Instant::now();
    c.kill9(leader);
    let new_leader = c.wait_leader(ELECTION * 10).await;
    let took = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    eprintln!("new leader {new_leader} after {took:?}");
    let survivors: Vec<u64> = c.running_ids();
    assert_keys(&c.kv(&survivors), &keys).await;
    let more = write_keys(&c.kv(&survivors), "after-kill-", 0..100).await;

    // The killed member restarts on its data dir and catches up.
    c.spawn(leader, &[]);
    let target = c.status(new_leader).await.unwrap().commit_index;
    c.wait_status(leader, ELECTION * 20, "caught up", |s| {
        s.applied_index >= target
    })
    .await;
    assert_keys(&c.kv(&[leader]), &keys).await;
    assert_keys(&c.kv(&[leader]), &more).await;

    // The current leader streams to every follower: no fallback, its lanes open.
    let s = c.status(new_leader).await.unwrap();
    for p in &s.peers {
        assert!(!p.no_stream, "peer {} fell back to unary", p.id);
        let open: Vec<&str> = p
            .lanes
            .iter()
            .filter(|l| l.stream_open)
            .map(|l| l.name.as_str())
            .collect();
        assert!(
            open.contains(&"heartbeat") || open.contains(&"all"),
            "leader's stream to {} not open: {:?}",
            p.id,
            p.lanes
        );
    }
}

async fn member_rejoins_on_a_new_address_without_restarting_others(lanes: &[&str]) {
    let mut c = Cluster::start(3, lanes);
    let leader = c.wait_leader(ELECTION * 20).await;
    let moved = if leader == 3 { 2 } else { 3 };
    let others: Vec<u64> = (1..=3).filter(|i| *i != moved).collect();
    let pids: Vec<u32> = others.iter().map(|i| c.pid(*i)).collect();
    let keys = write_keys(&c.kv(&[1, 2, 3]), "before-", 0..200).await;

    c.kill9(moved);
    c.readdress(moved);
    c.spawn(moved, &[]);
    let new_addr = c.members[&moved].peer.clone();
    for id in &others {
        let changed = c.upsert(*id, &[(moved, new_addr.clone())]).await;
        assert_eq!(changed, vec![moved], "member {id} saw the new address");
        // Same address again: nothing changes.
        assert!(c.upsert(*id, &[(moved, new_addr.clone())]).await.is_empty());
    }

    let after = write_keys(&c.kv(&others), "after-", 0..200).await;
    let target = c.status(leader).await.unwrap().commit_index;
    c.wait_status(moved, ELECTION * 20, "caught up", |s| {
        s.applied_index >= target
    })
    .await;
    assert_keys(&c.kv(&[moved]), &keys).await;
    assert_keys(&c.kv(&[moved]), &after).await;
    for (id, pid) in others.iter().zip(pids) {
        assert_eq!(c.pid(*id), pid, "member {id} was not restarted");
        let s = c.status(*id).await.unwrap();
        let p = s.peers.iter().find(|p| p.id == moved).unwrap();
        assert_eq!(p.address, new_addr);
    }
}

async fn acknowledged_writes_survive_killing_every_member(lanes: &[&str]) {
    let mut c = Cluster::start(3, lanes);
    c.wait_leader(ELECTION * 20).await;
    let kv = c.kv(&[1, 2, 3]);
    let keys = write_keys(&kv, "durable-", 0..500).await;
    for id in 1..=3 {
        c.kill9(id);
    }
    for id in 1..=3 {
        c.spawn(id, &[]);
    }
    c.wait_leader(ELECTION * 20).await;
    assert_keys(&c.kv(&[1, 2, 3]), &keys).await;
}

async fn learner_catches_up_by_snapshot_then_is_promoted_and_removed(lanes: &[&str]) {
    let mut c = Cluster::start(3, &[lanes, &["--snapshot-entries", "100"]].concat());
    let leader = c.wait_leader(ELECTION * 20).await;
    let keys = write_keys(&c.kv(&[1, 2, 3]), "pre-", 0..600).await;
    // The leader compacted past its bootstrap snapshot.
    c.wait_status(leader, ELECTION * 10, "compacted", |s| {
        s.snapshot_index > BOOTSTRAP_INDEX
    })
    .await;

    // Writes keep going in the background through the whole membership dance.
    let kv = c.kv(&[1, 2, 3]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 100_000 {
                let k = format!("during-{i:06}");
                kv.put(k.as_bytes(), format!("value-{i}").as_bytes())
                    .await
                    .expect("write during membership change");
                acked.push(k);
                i += 1;
            }
            acked
        })
    };

    let s4 = c.add_learner_and_wait(leader, 4).await;
    assert_eq!(s4.role, "learner");
    let mut admin = c.admin(leader).await;
    assert!(
        s4.snapshot_index > 0,
        "member 4 installed a snapshot: {s4:?}"
    );
    assert!(c.metric(4, "raftlane_snapshot_received_bytes_total").await > 0.0);
    assert!(c.metric(leader, "raftlane_snapshot_sent_bytes_total").await > 0.0);

    admin
        .promote_learner(raftlane_proto::admin::MemberRequest { id: 4 })
        .await
        .expect("promote");
    // Every member's own view, the newcomer's included.
    for id in 1..=4 {
        c.wait_status(id, ELECTION * 10, "4 votes", |s| {
            s.voters == vec![1, 2, 3, 4] && s.learners.is_empty()
        })
        .await;
    }
    assert_keys(&c.kv(&[4]), &keys).await;

    admin
        .remove_member(raftlane_proto::admin::MemberRequest { id: 4 })
        .await
        .expect("remove");
    for id in 1..=3 {
        c.wait_status(id, ELECTION * 10, "4 removed", |s| {
            s.voters == vec![1, 2, 3] && s.learners.is_empty()
        })
        .await;
    }
    c.kill9(4);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let during = writer.await.unwrap();
    assert!(!during.is_empty());
    assert_keys(&c.kv(&[1, 2, 3]), &during).await;
}

/// A learner added after writes stopped: the newest snapshot predates it (its
/// configuration lacks the learner, which would refuse it), so a fresh one is taken.
async fn learner_added_after_writes_stop_gets_a_fresh_snapshot(lanes: &[&str]) {
    let mut c = Cluster::start(3, &[lanes, &["--snapshot-entries", "100"]].concat());
    let leader = c.wait_leader(ELECTION * 20).await;
    let keys = write_keys(&c.kv(&[1, 2, 3]), "k", 0..300).await;
    c.wait_status(leader, ELECTION * 10, "compacted", |s| {
        s.snapshot_index > BOOTSTRAP_INDEX
    })
    .await;
    let s4 = c.add_learner_and_wait(leader, 4).await;
    assert!(s4.snapshot_index > 0, "caught up by a snapshot: {s4:?}");
    assert_keys(&c.kv(&[4]), &keys).await;
}

/// Runs each scenario as two tests: `lanes4::name` and `lanes1::name`.
macro_rules! in_both_lane_modes {
    ($($name:ident),* $(,)?) => {
        mod lanes4 {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(&["--lanes", "4"]).await
            })*
        }
        mod lanes1 {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(&["--lanes", "1"]).await
            })*
        }
    };
}

in_both_lane_modes!(
    replicates_and_survives_leader_kill,
    member_rejoins_on_a_new_address_without_restarting_others,
    acknowledged_writes_survive_killing_every_member,
    learner_catches_up_by_snapshot_then_is_promoted_and_removed,
    learner_added_after_writes_stop_gets_a_fresh_snapshot,
);

/// Reads in flight when the leader dies, or issued before the new leader has
/// committed an entry of its term, are answered once there is a leader that can
/// serve them; none waits into its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_around_an_election_are_answered_not_timed_out() {
    use raftlane_proto::kv::{kv_client::KvClient, GetRequest};
    use tonic::Code;

    let mut c = Cluster::start(3, &["--request-timeout-ms", "4000"]);
    let leader = c.wait_leader(ELECTION * 20).await;
    c.kv(&[1, 2, 3]).put(b"k", b"v").await.unwrap();
    let survivors: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    let stop_at = Instant::now() + ELECTION * 8;
    let mut readers = Vec::new();
    for id in &survivors {
        for _ in 0..4 {
            let mut kv = KvClient::new(c.channel(&c.members[id].client, Duration::from_secs(30)));
            readers.push(tokio::spawn(async move {
                let (mut ok, mut unavailable, mut timed_out) = (0u32, 0u32, 0u32);
                while Instant::now() < stop_at {
                    match kv.get(GetRequest { key: b"k".to_vec() }).await {
                        Ok(r) => {
                            assert_eq!(r.into_inner().value, b"v");
                            ok += 1;
                        }
                        Err(s) if s.code() == Code::DeadlineExceeded => timed_out += 1,
                        Err(_) => {
                            unavailable += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                (ok, unavailable, timed_out)
            }));
        }
    }
    tokio::time::sleep(ELECTION).await;
    c.kill9(leader);
    let (mut ok, mut unavailable, mut timed_out) = (0, 0, 0);
    for r in readers {
        let (o, u, t) = r.await.unwrap();
        (ok, unavailable, timed_out) = (ok + o, unavailable + u, timed_out + t);
    }
    eprintln!(
        "reads around the election: {ok} ok, {unavailable} unavailable, {timed_out} timed out"
    );
    assert_eq!(timed_out, 0, "reads waited into their deadline");
    let new_leader = c.wait_leader(ELECTION * 10).await;
    assert_ne!(new_leader, leader);
    assert!(ok > 0);
}
