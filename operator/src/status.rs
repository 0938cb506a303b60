//! The `RaftCluster` status, computed from one observation and its plan. Health
//! is measured from the members themselves: Available means a leader and a
//! quorum of voters following it, never merely "pods are running".

use std::collections::BTreeSet;

use crate::crd::{Condition, MemberRole, MemberStatus, RaftClusterStatus, UnhealthyMember};
use crate::naming::conditions::{AVAILABLE, DEGRADED, PROGRESSING, RECONCILIATION_PAUSED};
use crate::naming::{member_name, selector};
use crate::plan::{Action, Observed, Plan};

/// True when `next` is worth writing over `previous`: applied indexes move
/// with every client write, so alone they never cause a write (they are
/// refreshed whenever something else changes).
pub fn changed(previous: &RaftClusterStatus, next: &RaftClusterStatus) -> bool {
    let without_progress = |s: &RaftClusterStatus| {
        let mut s = s.clone();
        s.members.iter_mut().for_each(|m| m.applied_index = 0);
        s
    };
    without_progress(previous) != without_progress(next)
}

/// Builds the status; conditions keep their transition time while unchanged.
pub fn compute(
    name: &str,
    obs: &Observed,
    plan: &Plan,
    previous: &RaftClusterStatus,
    now: &str,
) -> RaftClusterStatus {
    let leader = obs.leader();
    let (voters, learners): (BTreeSet<u64>, BTreeSet<u64>) = match leader {
        Some(l) => (l.voters.clone(), l.learners.clone()),
        None => (BTreeSet::new(), BTreeSet::new()),
    };
    let members: Vec<MemberStatus> = obs
        .running
        .values()
        .filter(|m| voters.contains(&m.id) || learners.contains(&m.id))
        .map(|m| MemberStatus {
            id: m.id,
            name: member_name(name, m.id),
            address: m.peer_addr().unwrap_or_default().to_string(),
            role: if learners.contains(&m.id) {
                MemberRole::Learner
            } else {
                MemberRole::Voter
            },
            healthy: obs.healthy(m.id),
            applied_index: obs.reports.get(&m.id).map_or(0, |r| r.applied_index),
        })
        .collect();
    let healthy_voters = obs.healthy_voters(&voters);
    let available = leader.is_some() && obs.has_quorum(&voters);
    let paused = plan.held.as_ref();
    // A rollout completes when every member runs at the spec's revision and
    // is healthy, with no membership change left.
    let at_update = |id: &u64| {
        let running = obs.running.get(id);
        running.is_some_and(|m| m.revision.is_some() && m.revision == obs.update_revision)
    };
    let updated = members.iter().filter(|m| at_update(&m.id)).count();
    let missing = leader.is_none() || voters.iter().any(|v| !obs.running.contains_key(v));
    let complete = !missing
        && learners.is_empty()
        && !members.is_empty()
        && members.iter().all(|m| m.healthy && at_update(&m.id));
    let rolling = obs.rolling() && !complete;
    let progressing =
        paused.is_none() && (!plan.actions.is_empty() || plan.waiting.is_some() || rolling);
    let stalled = !obs.stalled.is_empty();
    let degraded = missing || stalled || members.iter().any(|m| !m.healthy);
    let revision = obs.update_revision.as_deref().unwrap_or_default();
    let progress = format!(
        "{updated} of {} members at revision {revision}",
        members.len()
    );
    let cond = |type_: &str, on: bool, reason: &str, message: String| {
        let status = if on { "True" } else { "False" }.to_string();
        let since = previous
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(|| now.to_string(), |c| c.last_transition_time.clone());
        Condition {
            type_: type_.into(),
            status,
            last_transition_time: since,
            reason: reason.into(),
            message,
        }
    };
    let mut conditions = vec![
        cond(
            AVAILABLE,
            available,
            if available {
                "QuorumHealthy"
            } else {
                "NoQuorum"
            },
            format!(
                "{healthy_voters} of {} voters follow a leader",
                voters.len()
            ),
        ),
        cond(
            PROGRESSING,
            progressing,
            if paused.is_some() {
                "Paused"
            } else if rolling {
                "RollingUpdate"
            } else if progressing {
                "Reconciling"
            } else {
                "Settled"
            },
            match (&plan.waiting, rolling) {
                (Some(why), _) => why.clone(),
                (None, true) => format!("rolling update: {progress}"),
                (None, false) => String::new(),
            },
        ),
        cond(
            DEGRADED,
            degraded,
            if leader.is_none() {
                "NoLeader"
            } else if stalled {
                "RolloutStalled"
            } else if missing {
                "MemberMissing"
            } else if degraded {
                "MemberUnhealthy"
            } else {
                "AllHealthy"
            },
            if stalled {
                let ids: Vec<String> = obs.stalled.iter().map(u64::to_string).collect();
                format!(
                    "members {} at revision {revision} stayed unhealthy past \
                     spec.updateStrategy.progressDeadline: the rollout is stopped ({progress}); \
                     fix or revert the spec to resume",
                    ids.join(", ")
                )
            } else {
                degraded_message(obs, &members, leader.is_none(), &voters)
            },
        ),
        cond(
            RECONCILIATION_PAUSED,
            paused.is_some(),
            if paused.is_some() {
                "Paused"
            } else {
                "Reconciling"
            },
            paused.map_or_else(String::new, |held| held_message(held)),
        ),
    ];
    // Conditions a runtime keeps itself (VolumeExpansion on Kubernetes) are
    // carried over as they were: this status is written whole.
    let kept: Vec<Condition> = previous
        .conditions
        .iter()
        .filter(|c| !conditions.iter().any(|own| own.type_ == c.type_))
        .cloned()
        .collect();
    conditions.extend(kept);
    RaftClusterStatus {
        observed_generation: previous.observed_generation,
        replicas: obs.running.len() as u32,
        ready_replicas: members.iter().filter(|m| m.healthy).count() as u32,
        selector: selector(name),
        leader: leader.map(|l| member_name(name, l.id)),
        // Raft terms never go back: the newest ever seen is kept.
        term: obs
            .reports
            .values()
            .map(|r| r.term)
            .chain([previous.term])
            .max()
            .unwrap_or(0),
        members,
        conditions,
        operation: plan.waiting.clone().or_else(|| {
            plan.actions
                .iter()
                .find(|a| a.changes_membership())
                .map(|a| format!("{a:?}"))
        }),
        bootstrap_voters: previous.bootstrap_voters.clone(),
        unhealthy: unhealthy(obs, previous, now),
        current_revision: match complete {
            true => obs.update_revision.clone(),
            false => previous.current_revision.clone(),
        },
        update_revision: obs.update_revision.clone(),
        updated_replicas: updated as u32,
    }
}

/// Members of the membership that are not healthy, each since the first
/// status that saw it so under the spec's revision now. Without a leader the
/// membership is unknown and the list is kept as it was.
fn unhealthy(obs: &Observed, previous: &RaftClusterStatus, now: &str) -> Vec<UnhealthyMember> {
    let Some(leader) = obs.leader() else {
        return previous.unhealthy.clone();
    };
    leader
        .voters
        .union(&leader.learners)
        .filter(|id| !obs.healthy(**id))
        .map(|id| UnhealthyMember {
            id: *id,
            since: previous
                .unhealthy
                .iter()
                .find(|u| u.id == *id && u.revision == obs.update_revision)
                .map_or_else(|| now.to_string(), |u| u.since.clone()),
            revision: obs.update_revision.clone(),
        })
        .collect()
}

/// What a paused pass tells the user: that nothing is done, and what would be.
fn held_message(held: &[Action]) -> String {
    let why = "spec.paused is true: members are observed, no step is taken";
    match held {
        [] => format!("{why}; none is due"),
        [first, ..] => format!(
            "{why}; steps held back: {}, the first {first:?}",
            held.len()
        ),
    }
}

/// What makes a cluster Degraded, other than a stalled rollout: which
/// members lack a leader, are missing, or are unhealthy; empty when none.
fn degraded_message(
    obs: &Observed,
    members: &[MemberStatus],
    no_leader: bool,
    voters: &BTreeSet<u64>,
) -> String {
    let list = |ids: Vec<u64>| {
        let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
        ids.join(", ")
    };
    let missing: Vec<u64> = voters
        .iter()
        .copied()
        .filter(|v| !obs.running.contains_key(v))
        .collect();
    let unhealthy: Vec<u64> = members
        .iter()
        .filter(|m| !m.healthy)
        .map(|m| m.id)
        .collect();
    let mut parts = Vec::new();
    if no_leader {
        parts.push(format!(
            "no member reports a leader ({} of {} members answer)",
            obs.reports.len(),
            obs.running.len()
        ));
    }
    if !missing.is_empty() {
        parts.push(format!("voters {} are not running", list(missing)));
    }
    if !unhealthy.is_empty() {
        parts.push(format!("members {} are unhealthy", list(unhealthy)));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Member, MemberReport};

    fn seen(leader: u64, up: &[u64]) -> Observed {
        let mut observed = Observed::default();
        for &id in up {
            observed.running.insert(
                id,
                Member::at(
                    id,
                    format!("127.0.0.{id}:7000"),
                    format!("127.0.0.{id}:7001"),
                    format!("127.0.0.{id}:7002"),
                ),
            );
            observed.reports.insert(
                id,
                MemberReport {
                    id,
                    term: 2,
                    leader_id: leader,
                    is_leader: id == leader,
                    voters: [1, 2, 3].into(),
                    ..Default::default()
                },
            );
        }
        observed
    }

    fn cond<'a>(s: &'a RaftClusterStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn available_needs_a_quorum_and_times_move_only_on_change() {
        let plan = Plan::default();
        let s1 = compute(
            "demo",
            &seen(1, &[1, 2, 3]),
            &plan,
            &RaftClusterStatus::default(),
            "t1",
        );
        assert_eq!(cond(&s1, "Available").status, "True");
        assert_eq!(cond(&s1, "Degraded").status, "False");
        assert_eq!(s1.leader.as_deref(), Some("demo-0"));

        // Same state later: transition times keep their first value.
        let s2 = compute("demo", &seen(1, &[1, 2, 3]), &plan, &s1, "t2");
        assert_eq!(cond(&s2, "Available").last_transition_time, "t1");

        // Two of three gone: no quorum of healthy voters, Degraded, new times.
        let s3 = compute("demo", &seen(1, &[1]), &plan, &s2, "t3");
        assert_eq!(cond(&s3, "Available").status, "False");
        assert_eq!(cond(&s3, "Available").last_transition_time, "t3");
        assert_eq!(cond(&s3, "Degraded").status, "True");

        assert_eq!(cond(&s3, "ReconciliationPaused").status, "False");

        // No leader at all: Degraded, reason NoLeader.
        let s4 = compute("demo", &seen(0, &[1, 2, 3]), &plan, &s3, "t4");
        assert_eq!(cond(&s4, "Degraded").reason, "NoLeader");
        assert_eq!(cond(&s4, "Available").status, "False");
    }

    #[test]
    fn degraded_says_why() {
        let plan = Plan::default();
        let none = RaftClusterStatus::default();
        let s = compute("demo", &seen(1, &[1, 2]), &plan, &none, "t");
        let d = cond(&s, "Degraded");
        assert_eq!(d.reason, "MemberMissing");
        assert_eq!(d.message, "voters 3 are not running");
        let s = compute("demo", &seen(0, &[1, 2, 3]), &plan, &none, "t");
        let d = cond(&s, "Degraded");
        assert_eq!(d.reason, "NoLeader");
        assert_eq!(
            d.message,
            "no member reports a leader (3 of 3 members answer)"
        );
        let s = compute("demo", &seen(1, &[1, 2, 3]), &plan, &none, "t");
        assert_eq!(cond(&s, "Degraded").message, "");
    }

    #[test]
    fn a_spec_change_starts_the_unhealthy_count_again() {
        let plan = Plan::default();
        let mut obs = seen(1, &[1, 2]);
        obs.update_revision = Some("a".into());
        let s1 = compute("demo", &obs, &plan, &RaftClusterStatus::default(), "t1");
        assert_eq!(s1.unhealthy[0].id, 3);
        let s2 = compute("demo", &obs, &plan, &s1, "t2");
        assert_eq!(s2.unhealthy[0].since, "t1", "kept while the spec stays");
        obs.update_revision = Some("b".into());
        let s3 = compute("demo", &obs, &plan, &s2, "t3");
        assert_eq!(
            s3.unhealthy[0].since, "t3",
            "counted again under the new revision"
        );
    }

    #[test]
    fn a_condition_the_runtime_keeps_is_carried_over_unchanged() {
        let plan = Plan::default();
        let mut previous = compute(
            "demo",
            &seen(1, &[1, 2, 3]),
            &plan,
            &RaftClusterStatus::default(),
            "t1",
        );
        let volumes = Condition {
            type_: "VolumeExpansion".into(),
            status: "False".into(),
            last_transition_time: "t0".into(),
            reason: "NotAllowedByStorageClass".into(),
            message: "no".into(),
        };
        previous.conditions.push(volumes.clone());
        let next = compute("demo", &seen(1, &[1, 2, 3]), &plan, &previous, "t2");
        assert_eq!(cond(&next, "VolumeExpansion"), &volumes);
        assert_eq!(next.conditions.len(), 5);
        assert!(!changed(&previous, &next), "nothing to write");
    }

    #[test]
    fn a_paused_plan_reads_as_paused_not_progressing_and_names_what_it_holds() {
        let held = Plan {
            actions: vec![Action::Create {
                id: 4,
                initial_voters: None,
            }],
            ..Plan::default()
        }
        .pause();
        let s = compute(
            "demo",
            &seen(1, &[1, 2, 3]),
            &held,
            &RaftClusterStatus::default(),
            "t1",
        );
        let paused = cond(&s, "ReconciliationPaused");
        assert_eq!(
            (paused.status.as_str(), paused.reason.as_str()),
            ("True", "Paused")
        );
        assert!(
            paused
                .message
                .contains("steps held back: 1, the first Create { id: 4"),
            "{}",
            paused.message
        );
        let progressing = cond(&s, "Progressing");
        assert_eq!(
            (progressing.status.as_str(), progressing.reason.as_str()),
            ("False", "Paused")
        );
        assert_eq!(cond(&s, "Available").status, "True", "still observed");
    }
}
