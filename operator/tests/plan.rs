//! The planner, situation by situation, and a property test over random cluster
//! states asserting that no plan breaks the safety rules.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use raft_operator::plan::{plan, Action, Member, MemberReport, Observed};

fn addr(id: u64, generation: u64) -> String {
    format!("127.0.{generation}.{id}:7000")
}

/// Member `id` as the runtime lists it, its peer port at `peer`.
fn listed(id: u64, peer: String) -> Member {
    let port = |p: &str| peer.replace(":7000", p);
    Member::at(id, port(":7000"), port(":7001"), port(":7002"))
}

fn set(ids: &[u64]) -> BTreeSet<u64> {
    ids.iter().copied().collect()
}

/// A healthy cluster: every member runs, answers, follows `leader`, is caught
/// up, and knows every address.
fn cluster(voters: &[u64], learners: &[u64], leader: u64) -> Observed {
    let all: Vec<u64> = voters.iter().chain(learners).copied().collect();
    // A formed cluster: no bootstrap record, every member holds data.
    let mut obs = Observed {
        with_data: all.iter().copied().collect(),
        ..Default::default()
    };
    for &id in &all {
        obs.running.insert(id, listed(id, addr(id, 0)));
        obs.reports.insert(
            id,
            MemberReport {
                id,
                term: 2,
                leader_id: leader,
                is_leader: id == leader,
                commit_index: 1000,
                applied_index: 1000,
                voters: set(voters),
                learners: set(learners),
                conf_change_pending: false,
                peers: all
                    .iter()
                    .filter(|p| **p != id)
                    .map(|p| (*p, addr(*p, 0)))
                    .collect(),
            },
        );
    }
    obs
}

fn membership(p: &raft_operator::plan::Plan) -> Vec<&Action> {
    p.actions
        .iter()
        .filter(|a| a.changes_membership() || matches!(a, Action::TransferLeader { .. }))
        .collect()
}

#[test]
fn new_cluster_creates_every_member_with_the_same_initial_voters() {
    let p = plan(3, &Observed::default());
    let want: Vec<Action> = (1..=3)
        .map(|id| Action::Create {
            id,
            initial_voters: Some(set(&[1, 2, 3])),
        })
        .collect();
    assert_eq!(p.actions, want);
}

#[test]
fn steady_cluster_needs_nothing() {
    let p = plan(3, &cluster(&[1, 2, 3], &[], 1));
    assert_eq!(p.actions, vec![]);
    assert_eq!(p.waiting, None);
}

#[test]
fn scale_up_is_create_then_addresses_then_learner_then_promote() {
    // Step 1: member 4 does not exist yet.
    let obs = cluster(&[1, 2, 3], &[], 1);
    assert_eq!(
        plan(5, &obs).actions,
        vec![Action::Create {
            id: 4,
            initial_voters: None
        }]
    );

    // Step 2: it runs; nobody knows its address yet.
    let mut obs = obs;
    obs.running.insert(4, listed(4, addr(4, 0)));
    let p = plan(5, &obs);
    for on in 1..=3 {
        let peers = BTreeMap::from([(4, addr(4, 0))]);
        assert!(
            p.actions.contains(&Action::PushAddresses { on, peers }),
            "{p:?}"
        );
    }
    assert!(
        membership(&p).is_empty(),
        "no learner before the leader knows where it is"
    );

    // Step 3: addresses pushed: add as learner, one at a time.
    for r in obs.reports.values_mut() {
        r.peers.insert(4, addr(4, 0));
    }
    assert_eq!(
        plan(5, &obs).actions,
        vec![Action::AddLearner { via: 1, id: 4 }]
    );

    // Step 4: a learner far behind waits; caught up, it is promoted.
    let mut obs = cluster(&[1, 2, 3], &[4], 1);
    obs.reports.get_mut(&4).unwrap().applied_index = 10;
    let p = plan(5, &obs);
    assert!(membership(&p).is_empty());
    assert!(p.waiting.unwrap().contains("catching up"));
    obs.reports.get_mut(&4).unwrap().applied_index = 990;
    assert_eq!(
        plan(5, &obs).actions,
        vec![Action::Promote { via: 1, id: 4 }]
    );

    // Step 5: the next member only once 4 votes.
    let obs = cluster(&[1, 2, 3, 4], &[], 1);
    assert_eq!(
        plan(5, &obs).actions,
        vec![Action::Create {
            id: 5,
            initial_voters: None
        }]
    );
}

#[test]
fn an_operation_in_flight_is_resumed_not_repeated() {
    // The operator died after "added as learner": the restart promotes it and
    // adds no second member.
    let obs = cluster(&[1, 2, 3], &[4], 1);
    assert_eq!(
        plan(5, &obs).actions,
        vec![Action::Promote { via: 1, id: 4 }]
    );
    // A change still being applied blocks the next one.
    let mut obs = cluster(&[1, 2, 3, 4], &[], 1);
    obs.reports.get_mut(&1).unwrap().conf_change_pending = true;
    let p = plan(5, &obs);
    assert!(membership(&p).is_empty());
    assert!(!p.actions.iter().any(|a| matches!(a, Action::Create { .. })));
}

#[test]
fn scale_down_moves_leadership_then_removes_then_deletes_highest_first() {
    let obs = cluster(&[1, 2, 3, 4, 5], &[], 5);
    assert_eq!(
        plan(3, &obs).actions,
        vec![Action::TransferLeader { via: 5, to: 3 }]
    );

    let obs = cluster(&[1, 2, 3, 4, 5], &[], 1);
    assert_eq!(
        plan(3, &obs).actions,
        vec![Action::RemoveMember { via: 1, id: 5 }]
    );

    // 5 left the membership: its process goes, and 4 is next.
    let mut obs = cluster(&[1, 2, 3, 4], &[], 1);
    obs.running.insert(5, listed(5, addr(5, 0)));
    let p = plan(3, &obs);
    assert!(p.actions.contains(&Action::Delete { id: 5 }));
    assert!(p.actions.contains(&Action::RemoveMember { via: 1, id: 4 }));
}

#[test]
fn an_unhealthy_member_may_be_removed_while_quorum_holds() {
    // Scale 5 -> 4 while 5 is down: the others keep a healthy quorum.
    let mut obs = cluster(&[1, 2, 3, 4, 5], &[], 1);
    obs.running.remove(&5);
    obs.reports.remove(&5);
    let p = plan(4, &obs);
    assert_eq!(
        membership(&p),
        vec![&Action::RemoveMember { via: 1, id: 5 }]
    );
    assert!(
        !p.actions.contains(&Action::Create {
            id: 5,
            initial_voters: None
        }),
        "never restored on its way out"
    );

    // But not when it would leave no healthy quorum.
    let mut obs = cluster(&[1, 2, 3, 4], &[], 1);
    for id in [2, 3] {
        obs.running.remove(&id);
        obs.reports.remove(&id);
    }
    let p = plan(3, &obs);
    assert!(membership(&p).is_empty());
    assert!(p.waiting.unwrap().contains("quorum"));
}

#[test]
fn a_missing_member_is_recreated_with_its_id_never_read_as_scale_in() {
    let mut obs = cluster(&[1, 2, 3], &[], 1);
    obs.running.remove(&2);
    obs.reports.remove(&2);
    let p = plan(3, &obs);
    assert_eq!(
        p.actions,
        vec![Action::Create {
            id: 2,
            initial_voters: None
        }]
    );
}

#[test]
fn a_formed_cluster_is_never_bootstrapped_again() {
    // Scaled 3 -> 1 (2 and 3 retired their data), everything stopped, then
    // asked for 3 again: only member 1 restarts; re-bootstrapping 2 and 3 with
    // initial voters would let them elect a second leader beside 1.
    let obs = Observed {
        with_data: set(&[1]),
        ..Default::default()
    };
    let p = plan(3, &obs);
    assert_eq!(
        p.actions,
        vec![Action::Create {
            id: 1,
            initial_voters: None
        }]
    );
    // A whole stopped cluster restarts from its data, without initial voters.
    let obs = Observed {
        with_data: set(&[1, 2, 3]),
        ..Default::default()
    };
    let p = plan(3, &obs);
    assert!(p.actions.iter().all(|a| matches!(
        a,
        Action::Create {
            initial_voters: None,
            ..
        }
    )));
    assert_eq!(p.actions.len(), 3);
}

#[test]
fn members_with_data_restart_when_nobody_answers_even_beyond_the_spec() {
    // replicas lowered to 1 while a 3-member cluster was stopped: all three start
    // again (1 alone has no quorum), then the normal scale-down removes 2 and 3.
    let obs = Observed {
        with_data: set(&[1, 2, 3]),
        ..Default::default()
    };
    let p = plan(1, &obs);
    let ids: Vec<u64> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Create {
                id,
                initial_voters: None,
            } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(ids, vec![1, 2, 3]);
}

#[test]
fn a_forming_cluster_restarts_a_missing_member_with_the_same_initial_voters() {
    let mut obs = Observed {
        bootstrapped: Some(set(&[1, 2, 3])),
        with_data: set(&[1, 2]),
        ..Default::default()
    };
    for id in [1, 2] {
        obs.running.insert(id, listed(id, addr(id, 0)));
    }
    let p = plan(3, &obs);
    assert_eq!(
        p.actions,
        vec![Action::Create {
            id: 3,
            initial_voters: Some(set(&[1, 2, 3]))
        }]
    );
}

#[test]
fn a_new_address_is_pushed_to_every_other_member_in_one_pass() {
    let mut obs = cluster(&[1, 2, 3], &[], 1);
    obs.running.insert(2, listed(2, addr(2, 1)));
    let p = plan(3, &obs);
    let peers = BTreeMap::from([(2, addr(2, 1))]);
    assert_eq!(
        p.actions,
        vec![
            Action::PushAddresses {
                on: 1,
                peers: peers.clone()
            },
            Action::PushAddresses { on: 3, peers },
        ]
    );
}

#[test]
fn without_a_leader_only_members_and_addresses_are_restored() {
    let mut obs = cluster(&[1, 2, 3], &[], 1);
    for id in [1, 3] {
        obs.running.remove(&id);
        obs.reports.remove(&id);
    }
    let r = obs.reports.get_mut(&2).unwrap();
    r.leader_id = 0;
    let p = plan(5, &obs);
    assert!(
        p.actions
            .iter()
            .all(|a| matches!(a, Action::Create { .. } | Action::PushAddresses { .. })),
        "{p:?}"
    );
    assert!(p.actions.contains(&Action::Create {
        id: 1,
        initial_voters: None
    }));
    assert!(p.waiting.unwrap().contains("no leader"));
}

#[test]
fn a_forming_cluster_without_a_leader_yet_is_waiting_not_blocked() {
    let mut obs = cluster(&[1, 2, 3], &[], 1);
    obs.bootstrapped = Some(set(&[1, 2, 3]));
    for r in obs.reports.values_mut() {
        r.leader_id = 0;
        r.is_leader = false;
    }
    let p = plan(3, &obs);
    assert!(!p.blocked, "{p:?}");
    assert!(p.waiting.unwrap().contains("electing its first leader"));
    // Formed, the same observation is a guard refusing steps.
    obs.bootstrapped = None;
    let p = plan(3, &obs);
    assert!(p.blocked, "{p:?}");
    assert!(p.waiting.unwrap().contains("no leader"));
}

#[test]
fn a_member_whose_data_is_lost_is_removed_then_added_back() {
    // Voter 3 is gone and so is its storage: never restarted empty.
    let mut obs = cluster(&[1, 2, 3], &[], 1);
    obs.running.remove(&3);
    obs.reports.remove(&3);
    obs.with_data.remove(&3);
    let p = plan(3, &obs);
    assert_eq!(p.actions, [Action::RemoveMember { via: 1, id: 3 }]);
    assert!(p.waiting.unwrap().contains("lost its data"));

    // Once removed, it is a new member: created empty, to join as a learner.
    let after = cluster(&[1, 2], &[], 1);
    assert_eq!(
        plan(3, &after).actions,
        [Action::Create {
            id: 3,
            initial_voters: None
        }]
    );

    // Its storage is there (state not yet confirmed): restarted on it.
    obs.with_storage.insert(3);
    assert_eq!(
        plan(3, &obs).actions,
        [Action::Create {
            id: 3,
            initial_voters: None
        }]
    );
}

#[test]
fn a_lost_member_is_not_removed_without_a_healthy_quorum_before_and_after() {
    let mut obs = cluster(&[1, 2, 3], &[], 1);
    for id in [2, 3] {
        obs.running.remove(&id);
        obs.reports.remove(&id);
    }
    obs.with_data.remove(&3);
    obs.with_storage.insert(2);
    let p = plan(3, &obs);
    assert_eq!(
        p.actions,
        [Action::Create {
            id: 2,
            initial_voters: None
        }]
    );
    assert!(
        p.blocked
            && p.waiting
                .unwrap()
                .contains("healthy quorum before and after")
    );
}

#[test]
fn a_forming_member_without_storage_is_created_not_lost() {
    // Member 1 of a forming cluster answers, no leader yet; 2 and 3 were never
    // created (a pass failed after creating 1).
    let mut obs = cluster(&[1, 2, 3], &[], 0);
    for id in [2, 3] {
        obs.running.remove(&id);
        obs.reports.remove(&id);
        obs.with_data.remove(&id);
    }
    obs.bootstrapped = Some(set(&[1, 2, 3]));
    let p = plan(3, &obs);
    for id in [2, 3] {
        assert!(p.actions.contains(&Action::Create {
            id,
            initial_voters: Some(set(&[1, 2, 3]))
        }));
    }
}

#[test]
fn a_formed_cluster_whose_data_is_all_gone_is_not_started_anew() {
    let obs = Observed {
        formed: true,
        ..Default::default()
    };
    let p = plan(3, &obs);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert!(p.blocked && p.waiting.unwrap().contains("not started anew"));
}

#[test]
fn a_failed_member_is_replaced_alone_while_a_healthy_quorum_holds_without_it() {
    // Voters 1-3, leader 1; 3 failed (not running) past the threshold.
    let mut obs = cluster(&[1, 2, 3], &[], 1);
    obs.running.remove(&3);
    obs.reports.remove(&3);
    obs.failed = set(&[3]);
    let p = plan(3, &obs);
    assert_eq!(p.actions, [Action::Delete { id: 3 }], "{p:?}");
    assert!(p.waiting.unwrap().contains("failureReplacement"));
    // Replacement off (nothing failed): the member is restored on its data.
    obs.failed.clear();
    assert_eq!(
        plan(3, &obs).actions,
        [Action::Create {
            id: 3,
            initial_voters: None
        }]
    );
    // Two of three failed: no healthy quorum without either, nothing deleted.
    let mut two = cluster(&[1, 2, 3], &[], 1);
    for id in [2, 3] {
        two.running.remove(&id);
        two.reports.remove(&id);
    }
    two.failed = set(&[2, 3]);
    let p = plan(3, &two);
    assert!(
        !p.actions.iter().any(|a| matches!(a, Action::Delete { .. })),
        "{p:?}"
    );
    assert!(p.blocked);
    // A learner in flight: the scale-up finishes first.
    let mut busy = cluster(&[1, 2, 3, 4, 5], &[6], 1);
    busy.reports.get_mut(&5).unwrap().leader_id = 0;
    busy.failed = set(&[5]);
    assert!(!plan(6, &busy)
        .actions
        .iter()
        .any(|a| matches!(a, Action::Delete { .. })));
}

#[test]
fn a_lost_voter_of_two_is_not_removed() {
    // The removal would need both voters to commit: it is refused, not
    // proposed to hang (the leader would step down under check-quorum).
    let mut obs = cluster(&[1, 2], &[], 1);
    obs.running.remove(&2);
    obs.reports.remove(&2);
    obs.with_data.remove(&2);
    let p = plan(2, &obs);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert!(p.blocked);
}

/// `obs` with every running member at revision `at`, except those in
/// `updated`, at `new`; the spec's revision is `new`.
fn revisions(mut obs: Observed, updated: &[u64]) -> Observed {
    for (id, m) in obs.running.iter_mut() {
        let at = if updated.contains(id) { "new" } else { "old" };
        m.revision = Some(at.into());
    }
    obs.update_revision = Some("new".into());
    obs.current_revision = Some("old".into());
    obs
}

#[test]
fn a_rolling_update_restarts_followers_highest_first_and_the_leader_last() {
    // Nothing updated: the highest follower first.
    let obs = revisions(cluster(&[1, 2, 3], &[], 2), &[]);
    let p = plan(3, &obs);
    assert_eq!(p.actions, vec![Action::Restart { id: 3 }]);
    assert!(p
        .waiting
        .unwrap()
        .contains("0 of 3 members at revision new"));

    // 3 restarted but not caught up yet: nothing moves.
    let mut obs = revisions(cluster(&[1, 2, 3], &[], 2), &[3]);
    obs.reports.get_mut(&3).unwrap().applied_index = 10;
    let p = plan(3, &obs);
    assert_eq!(p.actions, vec![]);
    assert!(
        p.waiting.as_ref().unwrap().contains("waits for member 3"),
        "{p:?}"
    );

    // Caught up: the other follower, then the leader's turn: leadership moves
    // to an updated member first, then the old leader restarts.
    let obs = revisions(cluster(&[1, 2, 3], &[], 2), &[3]);
    assert_eq!(plan(3, &obs).actions, vec![Action::Restart { id: 1 }]);
    let obs = revisions(cluster(&[1, 2, 3], &[], 2), &[1, 3]);
    assert_eq!(
        plan(3, &obs).actions,
        vec![Action::TransferLeader { via: 2, to: 3 }]
    );
    let obs = revisions(cluster(&[1, 2, 3], &[], 3), &[1, 3]);
    assert_eq!(plan(3, &obs).actions, vec![Action::Restart { id: 2 }]);

    // All at the new revision: nothing to do.
    let obs = revisions(cluster(&[1, 2, 3], &[], 3), &[1, 2, 3]);
    assert_eq!(plan(3, &obs).actions, vec![]);
}

#[test]
fn a_rollout_never_takes_a_second_member_down_and_an_unhealthy_outdated_one_goes_first() {
    // Follower 1 is down (not answering): restarting it takes nobody else
    // down, so it goes first; any other restart waits for it.
    let mut obs = revisions(cluster(&[1, 2, 3], &[], 2), &[]);
    obs.reports.remove(&1);
    assert_eq!(plan(3, &obs).actions, vec![Action::Restart { id: 1 }]);

    // Member 3 restarted at the new revision and stays unhealthy: stalled,
    // the rollout stops there (no other member restarts).
    let mut obs = revisions(cluster(&[1, 2, 3], &[], 2), &[3]);
    obs.reports.remove(&3);
    obs.stalled = set(&[3]);
    let p = plan(3, &obs);
    assert_eq!(p.actions, vec![]);
    assert!(p.blocked && p.waiting.unwrap().contains("stalled"));

    // The spec reverted: 3 is the outdated one now, and is restarted alone.
    let mut obs = revisions(cluster(&[1, 2, 3], &[], 2), &[1, 2]);
    obs.reports.remove(&3);
    assert_eq!(plan(3, &obs).actions, vec![Action::Restart { id: 3 }]);

    // A member being created, a scale-up or a learner in flight: no restart.
    let mut obs = revisions(cluster(&[1, 2, 3], &[], 2), &[]);
    obs.running.remove(&3);
    assert!(!plan(3, &obs)
        .actions
        .iter()
        .any(|a| matches!(a, Action::Restart { .. })));
    let obs = revisions(cluster(&[1, 2, 3], &[4], 2), &[]);
    assert_eq!(
        plan(4, &obs).actions,
        vec![Action::Promote { via: 2, id: 4 }]
    );
}

#[test]
fn a_one_member_cluster_restarts_its_only_member() {
    let obs = revisions(cluster(&[1], &[], 1), &[]);
    assert_eq!(plan(1, &obs).actions, vec![Action::Restart { id: 1 }]);
}

#[test]
fn a_member_failing_at_the_new_revision_is_not_replaced() {
    let mut obs = revisions(cluster(&[1, 2, 3], &[], 2), &[3]);
    obs.reports.remove(&3);
    obs.failed = set(&[3]);
    assert!(!plan(3, &obs)
        .actions
        .iter()
        .any(|a| matches!(a, Action::Delete { .. })));
    // At the old revision, it is (the member failed, not the revision).
    let mut obs = revisions(cluster(&[1, 2, 3], &[], 2), &[]);
    obs.reports.remove(&3);
    obs.failed = set(&[3]);
    assert_eq!(plan(3, &obs).actions, vec![Action::Delete { id: 3 }]);
}

/// A random cluster state over ids 1..=7 with a desired size of 1..=7, biased
/// toward the states operators meet (most members up and answering, a live
/// leader, usually no change pending) so every kind of step is exercised.
fn any_state() -> impl Strategy<Value = (u64, Observed)> {
    let member = (
        prop_oneof![1 => Just(0u8), 5 => Just(1u8), 1 => Just(2u8), 3 => Just(3u8)],
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.9),
        prop_oneof![4 => Just(0u64), 1 => Just(1u64)],
        prop::bool::weighted(0.8),
        prop_oneof![3 => Just(1000u64), 1 => 0u64..1000],
    );
    (
        1u64..=7,
        proptest::collection::vec(member, 7),
        0usize..8,
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.2),
        0u16..256,
        0usize..40,
        (
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.05),
            prop::bool::weighted(0.5),
            // Members failed past spec.failureReplacement.after.
            prop_oneof![1 => Just(0u8), 2 => any::<u8>()],
        ),
        (
            // A settled cluster of `replicas` voters, maybe one member down.
            prop::bool::weighted(0.3),
            0u64..10,
            // Each member's revision: none, "old", "new".
            proptest::collection::vec(0u8..3, 7),
            // The spec's revision and the last completed one: none, "old", "new".
            prop_oneof![1 => Just(0u8), 4 => Just(2u8), 1 => Just(1u8)],
            0u8..3,
            // Members stalled past spec.updateStrategy.progressDeadline.
            prop_oneof![2 => Just(0u8), 1 => any::<u8>()],
        ),
    )
        .prop_map(
            |(replicas, per, leader_pick, pending, forming, data_mask, lost_pick, flags, rolls)| {
                let (deposed, fresh, formed, failed_mask) = flags;
                let (steady, down, revs, update, current, stalled_mask) = rolls;
                // A fresh start: nothing runs and nothing is stored.
                let per = if fresh {
                    vec![(0u8, false, false, 0u64, false, 0u64); 7]
                } else if steady {
                    (1..=7u64)
                        .map(|id| match (id <= replicas, id == down) {
                            (false, _) => (0u8, false, false, 0u64, false, 0u64),
                            (true, false) => (1, true, true, 0, true, 1000),
                            (true, true) => (1, down % 2 == 0, false, 0, true, 1000),
                        })
                        .collect()
                } else {
                    per
                };
                let (pending, forming, lost_pick) = match steady {
                    true => (false, false, 40),
                    false => (pending, forming, lost_pick),
                };
                let revision = |r: u8| match r {
                    1 => Some("old".to_string()),
                    2 => Some("new".to_string()),
                    _ => None,
                };
                // role: 0 absent, 1 voter, 2 learner, 3 left over (running, not a member)
                let voters: BTreeSet<u64> =
                    (1..=7).filter(|id| per[*id as usize - 1].0 == 1).collect();
                let learners: BTreeSet<u64> =
                    (1..=7).filter(|id| per[*id as usize - 1].0 == 2).collect();
                let live: Vec<u64> = voters
                    .iter()
                    .copied()
                    .filter(|id| per[*id as usize - 1].1 && per[*id as usize - 1].2)
                    .collect();
                // Mostly a live voter leads; sometimes nobody does.
                let leader = live.get(leader_pick).copied().unwrap_or(0);
                // Storage is mostly there; a member without it lost its data.
                let stored = |id: &u64| !fresh && *id != lost_pick as u64 + 1;
                let mut obs = Observed {
                    bootstrapped: forming.then(|| set(&[1, 2, 3])),
                    formed: formed && !forming,
                    with_data: (1..=7)
                        .filter(|id| data_mask & (1 << id) != 0 && stored(id))
                        .collect(),
                    with_storage: (1..=7).filter(stored).collect(),
                    failed: (1..=7).filter(|id| failed_mask & (1 << id) != 0).collect(),
                    update_revision: revision(update),
                    current_revision: revision(current),
                    stalled: (1..=7).filter(|id| stalled_mask & (1 << id) != 0).collect(),
                    ..Default::default()
                };
                // Sometimes a deposed leader of an older term still says it leads.
                let stale_leader = live
                    .iter()
                    .copied()
                    .find(|id| *id != leader)
                    .filter(|_| deposed);
                for id in 1..=7u64 {
                    let (role, running, answers, generation, knows_all, applied) =
                        per[id as usize - 1];
                    // A member whose storage is gone is not running either.
                    if role == 0 || !running || !stored(&id) {
                        continue;
                    }
                    let m = listed(id, addr(id, generation))
                        .at_revision(revision(revs[id as usize - 1]));
                    obs.running.insert(id, m);
                    // A member that runs has data.
                    obs.with_data.insert(id);
                    obs.with_storage.insert(id);
                    if answers {
                        let peers = (1..=7u64)
                            .filter(|p| *p != id && (knows_all || p % 2 == 0))
                            .map(|p| (p, addr(p, 0)))
                            .collect();
                        obs.reports.insert(
                            id,
                            MemberReport {
                                id,
                                term: if Some(id) == stale_leader { 2 } else { 3 },
                                leader_id: if Some(id) == stale_leader { id } else { leader },
                                is_leader: id == leader || Some(id) == stale_leader,
                                commit_index: 1000,
                                applied_index: applied,
                                voters: voters.clone(),
                                learners: learners.clone(),
                                conf_change_pending: pending,
                                peers,
                            },
                        );
                    }
                }
                (replicas, obs)
            },
        )
}

/// The generator reaches every kind of step often enough to be tested.
#[test]
fn random_states_exercise_every_kind_of_step() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..10_000 {
        let (replicas, obs) = any_state().new_tree(&mut runner).unwrap().current();
        for a in plan(replicas, &obs).actions {
            let mut kind = format!("{a:?}")
                .split([' ', '{'])
                .next()
                .unwrap()
                .to_string();
            match &a {
                Action::RemoveMember { id, .. } if *id <= replicas => kind = "RemoveLost".into(),
                Action::Delete { id } if *id <= replicas => kind = "ReplaceFailed".into(),
                Action::Restart { id } if obs.leader().is_some_and(|l| l.id == *id) => {
                    kind = "RestartLeader".into()
                }
                Action::TransferLeader { via, .. } if *via <= replicas => {
                    kind = "TransferForRollout".into()
                }
                Action::Create {
                    initial_voters: Some(_),
                    ..
                } if obs.bootstrapped.is_none() => kind = "CreateNewCluster".into(),
                _ => {}
            }
            *kinds.entry(kind).or_default() += 1;
        }
    }
    for kind in [
        "Create",
        "CreateNewCluster",
        "PushAddresses",
        "AddLearner",
        "Promote",
        "TransferLeader",
        "RemoveMember",
        "RemoveLost",
        "Delete",
        "ReplaceFailed",
        "Restart",
        "RestartLeader",
        "TransferForRollout",
    ] {
        assert!(
            kinds.get(kind).copied().unwrap_or(0) >= 20,
            "{kind} rarely generated: {kinds:?}"
        );
    }
}

proptest! {
    // 2000 cases by default; PROPTEST_CASES=50000 for a deeper run after
    // planner changes (rare states need it).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_paused_plan_takes_no_action_and_holds_back_every_step((replicas, obs) in any_state()) {
        let p = plan(replicas, &obs);
        let paused = p.clone().pause();
        prop_assert!(paused.actions.is_empty());
        prop_assert_eq!(paused.held, Some(p.actions));
        prop_assert_eq!(paused.waiting, p.waiting);
    }

    #[test]
    fn no_plan_breaks_the_safety_rules((replicas, obs) in any_state()) {
        let p = plan(replicas, &obs);
        let desired: BTreeSet<u64> = (1..=replicas).collect();
        // The planner's leader: of those saying they lead, the newest term's.
        let leader = obs.reports.values().filter(|r| r.is_leader).max_by_key(|r| r.term);
        prop_assert_eq!(leader, obs.leader());
        let view = leader.or_else(|| obs.reports.values().max_by_key(|r| (r.term, r.commit_index)));
        let changes: Vec<&Action> = p.actions.iter().filter(|a| a.changes_membership()).collect();

        // One membership change at a time, only through a leader with none pending.
        prop_assert!(changes.len() <= 1, "{:?}", p.actions);
        if !changes.is_empty() {
            let l = leader.expect("membership change without a leader");
            prop_assert!(!l.conf_change_pending);
        }
        let healthy = |id: &u64| {
            let l = leader.unwrap();
            obs.running.contains_key(id)
                && obs.reports.get(id).is_some_and(|r| r.leader_id == l.id && r.term == l.term)
        };
        let caught_up = |id: &u64| {
            healthy(id) && obs.reports[id].applied_index + 100 >= leader.unwrap().commit_index
        };
        for a in &p.actions {
            match a {
                Action::Create { id, initial_voters } => {
                    // Beyond the spec only an existing member (with data, or of the
                    // forming set) is started again, and only while no member
                    // answers: the membership is unknown and a quorum may need it.
                    let forming = obs.bootstrapped.as_ref().is_some_and(|b| b.contains(id));
                    let stored = obs.with_data.contains(id) || obs.with_storage.contains(id);
                    let restarting = obs.reports.is_empty() && (stored || forming);
                    prop_assert!(desired.contains(id) || restarting, "created {id} beyond the spec");
                    // A member of the membership is restarted only on its data.
                    if let Some(v) = view {
                        let member = v.voters.contains(id) || v.learners.contains(id);
                        prop_assert!(!member || stored || forming, "member {id} restarted without its data");
                    }
                    if let Some(v) = initial_voters {
                        let new_cluster = obs.running.is_empty() && obs.with_data.is_empty()
                            && obs.with_storage.is_empty() && obs.bootstrapped.is_none()
                            && !obs.formed;
                        let forming = obs.bootstrapped.as_ref() == Some(v) && v.contains(id) && !obs.with_data.contains(id);
                        prop_assert!(new_cluster || forming, "initial voters for {id} in a formed cluster");
                    }
                }
                Action::AddLearner { via, id } => {
                    let l = leader.unwrap();
                    prop_assert_eq!(*via, l.id);
                    prop_assert!(desired.contains(id) && !l.voters.contains(id) && !l.learners.contains(id));
                    let current = obs.running.get(id).and_then(Member::peer_addr);
                    prop_assert!(current.is_some() && l.peers.get(id).map(String::as_str) == current, "learner the leader cannot reach");
                }
                Action::Promote { id, .. } => {
                    let l = leader.unwrap();
                    prop_assert!(l.learners.contains(id) && desired.contains(id));
                    prop_assert!(obs.reports[id].applied_index + 100 >= l.commit_index, "promoted before caught up");
                }
                Action::RemoveMember { id, .. } => {
                    let l = leader.unwrap();
                    let lost = !obs.running.contains_key(id)
                        && !obs.with_data.contains(id) && !obs.with_storage.contains(id);
                    prop_assert!(!desired.contains(id) || lost, "removed a wanted member");
                    prop_assert!(*id != l.id, "removed the leader without moving leadership");
                    // It commits under the current voters and must leave a quorum.
                    let healthy_now = l.voters.iter().filter(|v| healthy(v)).count();
                    prop_assert!(healthy_now > l.voters.len() / 2, "removal without a healthy quorum to commit it");
                    let mut after = l.voters.clone();
                    after.remove(id);
                    let healthy_after = after.iter().filter(|v| healthy(v)).count();
                    prop_assert!(healthy_after > after.len() / 2, "removal leaves no healthy quorum");
                    // Highest first (a member that lost its data goes before any).
                    let members: BTreeSet<u64> = l.voters.union(&l.learners).copied().collect();
                    prop_assert!(lost || members.iter().all(|m| m <= id || desired.contains(m)));
                }
                Action::TransferLeader { via, to } => {
                    prop_assert!(desired.contains(to) && healthy(to));
                    if desired.contains(via) {
                        // A rollout's: the leader goes last, once every other
                        // member runs the new revision, healthy and caught up.
                        let l = leader.unwrap();
                        prop_assert!(obs.outdated(*via), "leadership moved from an updated leader");
                        for v in l.voters.iter().filter(|v| *v != via) {
                            prop_assert!(!obs.outdated(*v) && caught_up(v), "leader {} moved before {} was done", via, v);
                        }
                    }
                }
                Action::Restart { id } => {
                    let l = leader.expect("restart without a leader");
                    // Settled: no membership operation in flight, none beside it.
                    prop_assert!(!l.conf_change_pending && l.learners.is_empty());
                    prop_assert!(desired == l.voters, "restart during a scale operation");
                    // Beside it only addresses and the deletion of processes
                    // outside the membership, which take no member down.
                    let beside = |a: &Action| match a {
                        Action::PushAddresses { .. } => true,
                        Action::Delete { id } => !l.voters.contains(id),
                        other => other == &Action::Restart { id: *id },
                    };
                    prop_assert!(changes.is_empty() && p.actions.iter().all(beside),
                        "a restart beside another step: {:?}", p.actions);
                    prop_assert!(obs.outdated(*id), "restarted member {} already at the revision", id);
                    // Never a second member down: every other is healthy and caught up.
                    for v in l.voters.iter().filter(|v| *v != id) {
                        prop_assert!(caught_up(v), "restarted {} while {} is not healthy and caught up", id, v);
                    }
                    // The leader last, and only when nobody can take over.
                    prop_assert!(*id != l.id || l.voters.len() == 1, "restarted the leader {}", id);
                }
                Action::Delete { id } => {
                    let l = leader.expect("delete without a leader");
                    prop_assert!(!l.conf_change_pending, "delete while a change is in flight");
                    let healthy_now = l.voters.iter().filter(|v| healthy(v)).count();
                    prop_assert!(healthy_now > l.voters.len() / 2, "delete without a quorum following the leader");
                    let member = l.voters.contains(id) || l.learners.contains(id);
                    if member {
                        // Only a failed member is replaced, alone, with nothing
                        // else in flight, and a healthy quorum holds without it.
                        prop_assert!(obs.failed.contains(id) && !healthy(id) && *id != l.id,
                            "deleted member {} still in the membership", id);
                        prop_assert!(!obs.rolling() || obs.outdated(*id),
                            "replaced member {} failing at the new revision", id);
                        prop_assert!(l.learners.is_empty() && desired.iter().all(|d| l.voters.contains(d)),
                            "replacement while another operation is in flight");
                        let replaced = p.actions.iter().filter(|a| matches!(a, Action::Delete { id }
                            if l.voters.contains(id) || l.learners.contains(id))).count();
                        prop_assert!(changes.is_empty() && replaced == 1,
                            "two replacements or changes at once: {:?}", p.actions);
                        let mut after = l.voters.clone();
                        after.remove(id);
                        let healthy_after = after.iter().filter(|v| healthy(v)).count();
                        prop_assert!(!after.is_empty() && healthy_after > after.len() / 2,
                            "replacement leaves no healthy quorum");
                    } else {
                        prop_assert!(!desired.contains(id), "deleted wanted member {}", id);
                    }
                }
                Action::PushAddresses { on, peers } => {
                    prop_assert!(!peers.contains_key(on));
                    for (id, a) in peers {
                        prop_assert_eq!(obs.running[id].peer_addr(), Some(a.as_str()));
                    }
                }
            }
        }
    }
}
