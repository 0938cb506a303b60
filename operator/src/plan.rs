//! The reconcile planner: a pure function from the desired size and what was
//! observed (members the runtime runs, and what each member's raft reports) to the
//! next actions. Every step is derived from observed state alone, so a plan made
//! after an operator crash resumes the operation that was in flight.
//!
//! Safety rules it never breaks:
//! - one membership change at a time, applied before the next is proposed;
//! - scale up: create member → push addresses → add as learner → promote once
//!   caught up; scale down: highest id first, leadership moved away first,
//!   removed from raft membership before its process or pod is deleted;
//! - a membership change needs a leader, and a quorum of healthy voters after it;
//! - without a quorum, only missing members are restored;
//! - desired size comes only from the spec: a missing member is recreated with its
//!   id (and data), never read as a scale-in;
//! - a member whose data is gone is never restarted empty: it is removed from the
//!   membership (while a healthy quorum remains), then added back as a learner;
//! - initial voters are given only while a new cluster forms, and only to members
//!   without data: a formed cluster is never bootstrapped again (that could split
//!   it in two), not even when all of its data is gone;
//! - a membership removal needs a healthy quorum of the voters before and after;
//! - a member whose address changed has it pushed to every other member, in place;
//! - while paused (`spec.paused`), no step at all: [`Plan::pause`] holds them back;
//! - a failed member (unhealthy past `spec.failureReplacement.after`) is
//!   replaced only when nothing else is in flight, one at a time, and only
//!   while a healthy quorum holds without it: deleted with its storage
//!   retired, it then takes the lost-data path (removed, added back); never
//!   a member already at the new revision of a rollout in progress (that is
//!   the revision failing, not the member);
//! - a rolling update restarts one member at a time, only once the
//!   membership is settled and every other member is healthy and caught up
//!   (so never more than one is down), followers first (an unhealthy one
//!   before healthy ones, then highest id first), the leader last, after
//!   leadership moved to a member at the new revision.

use std::collections::{BTreeMap, BTreeSet};

/// A member the runtime has now (a process, or a pod), and where it listens
/// once it has an address. The planner reads only its peer address; the
/// pass uses the rest to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    /// None while it exists without an address (a pod being scheduled or
    /// terminating): it is neither missing nor reachable.
    pub addrs: Option<Addrs>,
    /// The spec revision it was started at (see [`crate::revision`]); None
    /// when it was started before revisions were recorded.
    pub revision: Option<String>,
}

/// Where one member listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addrs {
    pub peer: String,
    pub client: String,
    pub admin: String,
}

impl Member {
    pub fn at(id: u64, peer: String, client: String, admin: String) -> Member {
        Member {
            id,
            addrs: Some(Addrs {
                peer,
                client,
                admin,
            }),
            revision: None,
        }
    }

    /// Member `id` without an address yet.
    pub fn unreachable(id: u64) -> Member {
        Member {
            id,
            addrs: None,
            revision: None,
        }
    }

    /// This member, started at `revision`.
    pub fn at_revision(mut self, revision: Option<String>) -> Member {
        self.revision = revision;
        self
    }

    pub fn peer_addr(&self) -> Option<&str> {
        self.addrs.as_ref().map(|a| a.peer.as_str())
    }
}

/// What one member reported about itself and the cluster (admin `Status`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberReport {
    pub id: u64,
    pub term: u64,
    pub leader_id: u64,
    pub is_leader: bool,
    pub commit_index: u64,
    pub applied_index: u64,
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    pub conf_change_pending: bool,
    /// Its peer table: where it sends to each other member.
    pub peers: BTreeMap<u64, String>,
}

impl MemberReport {
    /// Its data holds raft state. raft has a term once it persisted anything
    /// (a bootstrap, a vote, a leader heard from); a member waiting empty to
    /// be added has none. The same line as raft-node's `LogStore::is_fresh`:
    /// the files an empty start leaves are not state.
    pub fn holds_state(&self) -> bool {
        self.term > 0
    }
}

/// Everything a plan is made from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Members that exist in the runtime, by id.
    pub running: BTreeMap<u64, Member>,
    /// Members that answered `Status`, by id.
    pub reports: BTreeMap<u64, MemberReport>,
    /// Members whose data (dir, volume) holds state, running or not.
    pub with_data: BTreeSet<u64>,
    /// Members whose storage exists, holding state or not yet confirmed to
    /// (`with_data` is part of it). A member of the membership without any
    /// has lost its data, and so has one whose storage was wiped in place:
    /// raft-node refuses it (state expected, none found) and the runtime
    /// retires it.
    pub with_storage: BTreeSet<u64>,
    /// Set while a new cluster forms: the voters its members were started with.
    /// Cleared (in status) once a leader was seen; never inferred.
    pub bootstrapped: Option<BTreeSet<u64>>,
    /// The cluster has formed (its status once named a leader): it is never
    /// started anew, even when no member and no data is left.
    pub formed: bool,
    /// Members unhealthy for longer than `spec.failureReplacement.after`.
    pub failed: BTreeSet<u64>,
    /// The spec's revision now: running members at another are rolled to
    /// it. None turns rolling updates off.
    pub update_revision: Option<String>,
    /// The revision of the last completed rollout (from the status).
    pub current_revision: Option<String>,
    /// Members not running at an old revision that stayed unhealthy past
    /// `spec.updateStrategy.progressDeadline` during a rollout: it stalled.
    pub stalled: BTreeSet<u64>,
}

impl Observed {
    fn has_storage(&self, id: &u64) -> bool {
        self.with_storage.contains(id) || self.with_data.contains(id)
    }

    /// The member that leads in the newest term: a deposed leader cut off
    /// from the others may still report itself leader of an older one.
    pub fn leader(&self) -> Option<&MemberReport> {
        self.reports
            .values()
            .filter(|r| r.is_leader)
            .max_by_key(|r| r.term)
    }

    /// A healthy member runs and follows the newest leader in that leader's
    /// term. The planner's guards and the status's health both read this.
    pub fn healthy(&self, id: u64) -> bool {
        let Some(leader) = self.leader() else {
            return false;
        };
        self.running.contains_key(&id)
            && self
                .reports
                .get(&id)
                .is_some_and(|r| r.leader_id == leader.id && r.term == leader.term)
    }

    /// How many of `voters` are healthy.
    pub fn healthy_voters(&self, voters: &BTreeSet<u64>) -> usize {
        voters.iter().filter(|v| self.healthy(**v)).count()
    }

    /// True when a quorum of `voters` is healthy (never for no voters).
    pub fn has_quorum(&self, voters: &BTreeSet<u64>) -> bool {
        self.healthy_voters(voters) >= quorum(voters.len())
    }

    /// True when member `id` is healthy and has applied within
    /// `CATCH_UP_SLACK` entries of the newest leader's commit index: a
    /// learner may be promoted, a rollout may go on to the next member.
    pub fn caught_up(&self, id: u64) -> bool {
        let Some(leader) = self.leader() else {
            return false;
        };
        self.healthy(id)
            && self
                .reports
                .get(&id)
                .is_some_and(|r| r.applied_index + CATCH_UP_SLACK >= leader.commit_index)
    }

    /// True when member `id` runs at a revision other than the spec's.
    pub fn outdated(&self, id: u64) -> bool {
        let Some(update) = &self.update_revision else {
            return false;
        };
        self.running
            .get(&id)
            .is_some_and(|m| m.revision.as_ref() != Some(update))
    }

    /// True while the spec's revision is not yet the one every member
    /// completed a rollout to.
    pub fn rolling(&self) -> bool {
        self.update_revision.is_some() && self.update_revision != self.current_revision
    }
}

/// One step toward the desired state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Start member `id`; `initial_voters` is set only for the bootstrap set.
    Create {
        id: u64,
        initial_voters: Option<BTreeSet<u64>>,
    },
    /// Set `peers` in member `on`'s peer table (UpsertPeers).
    PushAddresses {
        on: u64,
        peers: BTreeMap<u64, String>,
    },
    AddLearner {
        via: u64,
        id: u64,
    },
    Promote {
        via: u64,
        id: u64,
    },
    TransferLeader {
        via: u64,
        to: u64,
    },
    RemoveMember {
        via: u64,
        id: u64,
    },
    /// Stop and delete member `id`'s process or pod (it left the membership).
    Delete {
        id: u64,
    },
    /// Stop member `id` and start it again on its data and id at the spec's
    /// revision (a rolling update step).
    Restart {
        id: u64,
    },
}

impl Action {
    /// True for actions that change raft membership.
    pub fn changes_membership(&self) -> bool {
        matches!(
            self,
            Action::AddLearner { .. } | Action::Promote { .. } | Action::RemoveMember { .. }
        )
    }
}

/// The next actions, and why nothing more is done now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Set when a needed step is held back (shown in status and events).
    pub waiting: Option<String>,
    /// The wait is a safety guard refusing a step (no leader, no healthy
    /// quorum), not progress that will finish by itself.
    pub blocked: bool,
    /// Set while reconciliation is paused: the steps held back, not taken.
    pub held: Option<Vec<Action>>,
}

impl Plan {
    /// This plan with every step held back (`spec.paused`): nothing is done,
    /// and what would be done is kept to be shown in the status.
    pub fn pause(mut self) -> Plan {
        self.held = Some(std::mem::take(&mut self.actions));
        self
    }

    /// Holds a step back until it can proceed by itself.
    pub fn wait(&mut self, why: String) {
        self.waiting = Some(why);
        self.blocked = false;
    }

    /// Holds a step back because a safety guard refuses it. The last wait
    /// set is the one shown, so `blocked` always describes `waiting`.
    fn block(&mut self, why: String) {
        self.waiting = Some(why);
        self.blocked = true;
    }
}

/// A member is caught up (a learner may be promoted, a rollout may move on)
/// once it has applied within this many entries of the leader's commit index.
const CATCH_UP_SLACK: u64 = 100;

fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// The plan for a cluster of `replicas` members (ids `1..=replicas`).
pub fn plan(replicas: u64, obs: &Observed) -> Plan {
    let mut p = Plan::default();
    let desired: BTreeSet<u64> = (1..=replicas).collect();

    let leader = obs.leader();
    // Membership as the leader sees it; without one, as the freshest member does.
    let view = leader.or_else(|| {
        obs.reports
            .values()
            .max_by_key(|r| (r.term, r.commit_index))
    });
    // Initial voters for member `id`: only while the cluster forms, only without data.
    let initial = |id: u64| {
        obs.bootstrapped
            .as_ref()
            .filter(|b| b.contains(&id) && !obs.with_data.contains(&id))
            .cloned()
    };

    let Some(view) = view else {
        // A new cluster: nothing runs, nothing is stored, nothing is forming.
        let stored = obs.with_data.iter().chain(&obs.with_storage);
        let nothing_left = obs.running.is_empty() && stored.count() == 0;
        if nothing_left && obs.formed {
            p.block(
                "every member and its data is gone; the cluster is not started anew \
                 (delete and recreate the RaftCluster to start an empty one)"
                    .into(),
            );
            return p;
        }
        if nothing_left && obs.bootstrapped.is_none() {
            for id in &desired {
                p.actions.push(Action::Create {
                    id: *id,
                    initial_voters: Some(desired.clone()),
                });
            }
            return p;
        }
        // Nobody answers: start what has storage (and what is still forming),
        // then wait. This may go beyond the spec: until a member answers the
        // membership is unknown, and a quorum may need every member with data.
        let restart: BTreeSet<u64> = obs
            .with_data
            .iter()
            .chain(&obs.with_storage)
            .chain(obs.bootstrapped.iter().flatten())
            .copied()
            .filter(|id| !obs.running.contains_key(id))
            .collect();
        for id in restart {
            p.actions.push(Action::Create {
                id,
                initial_voters: initial(id),
            });
        }
        p.wait("no member answers yet".into());
        return p;
    };
    let (voters, learners) = (view.voters.clone(), view.learners.clone());
    let members: BTreeSet<u64> = voters.union(&learners).copied().collect();

    // Restore wanted members that are missing, with their id and data. Members
    // on their way out are removed, not restored; members whose data is gone
    // are never restarted empty (an empty voter could help elect a leader
    // lacking committed entries): they are removed, then added back.
    let forming = |id: &u64| obs.bootstrapped.as_ref().is_some_and(|b| b.contains(id));
    let mut lost = Vec::new();
    for id in members.intersection(&desired) {
        if !obs.running.contains_key(id) && !obs.has_storage(id) && !forming(id) {
            lost.push(*id);
        } else if !obs.running.contains_key(id) {
            p.actions.push(Action::Create {
                id: *id,
                initial_voters: initial(*id),
            });
        }
    }

    push_addresses(obs, &mut p);

    let Some(leader) = leader else {
        // A forming cluster has no leader until its members have started:
        // that is waiting. A formed one without a leader is refused steps.
        match &obs.bootstrapped {
            Some(_) => p.wait("the new cluster is electing its first leader".into()),
            None => p.block("no leader: only restoring members and addresses".into()),
        }
        return p;
    };
    if let Some(id) = lost.first() {
        p.wait(format!(
            "member {id} lost its data: it is removed, then added back as a new learner"
        ));
    }
    if leader.conf_change_pending {
        p.wait("a membership change is being applied".into());
        return p;
    }
    // A removal commits under the current voters and must leave a quorum of
    // the rest: both need enough healthy voters.
    let can_remove = |id: u64| {
        let mut after = voters.clone();
        after.remove(&id);
        !after.is_empty() && obs.has_quorum(&voters) && obs.has_quorum(&after)
    };
    // Members that left the membership (as the leader has applied it, with no
    // change in flight) are deleted, once a quorum follows that leader: its
    // view of the membership is then the current one.
    for id in obs.running.keys() {
        if !members.contains(id) && !desired.contains(id) {
            if obs.has_quorum(&voters) {
                p.actions.push(Action::Delete { id: *id });
            } else {
                p.block(format!(
                    "deleting {id} waits for a quorum to follow the leader"
                ));
            }
        }
    }
    let caught_up = |id: &u64| obs.caught_up(*id);

    // 0. A member that lost its data leaves the membership first.
    if let Some(&id) = lost.first() {
        if can_remove(id) {
            p.actions.push(Action::RemoveMember { via: leader.id, id });
        } else {
            p.block(format!(
                "member {id} lost its data and cannot be removed without a healthy quorum \
                 before and after; restore its data or the other members"
            ));
        }
        return p;
    }

    // 0b. Replace a failed member, when no membership operation is in flight.
    let settled = learners.is_empty() && desired.is_subset(&members);
    let rollout_victim = |id: u64| obs.rolling() && !obs.outdated(id);
    let failed = members.iter().find(|id| {
        obs.failed.contains(id) && !obs.healthy(**id) && **id != leader.id && !rollout_victim(**id)
    });
    if let (true, Some(&id)) = (settled, failed) {
        if can_remove(id) {
            // Not restored on its storage: that storage is retired.
            p.actions
                .retain(|a| !matches!(a, Action::Create { id: c, .. } if *c == id));
            p.actions.push(Action::Delete { id });
            p.wait(format!(
                "member {id} failed for longer than spec.failureReplacement.after: replaced \
                 (storage retired, removed, added back as a new learner)"
            ));
        } else {
            p.block(format!(
                "member {id} failed for longer than spec.failureReplacement.after, but \
                 replacing it needs a healthy quorum before and after"
            ));
        }
        return p;
    }

    // 1. Finish a scale-up in flight: promote a caught-up learner that is wanted.
    if let Some(id) = learners.iter().find(|id| desired.contains(id)) {
        if caught_up(id) {
            let mut after = voters.clone();
            after.insert(*id);
            if obs.has_quorum(&after) {
                p.actions.push(Action::Promote {
                    via: leader.id,
                    id: *id,
                });
            } else {
                p.block(format!("promoting {id} would leave no healthy quorum"));
            }
        } else {
            p.wait(format!("learner {id} is catching up"));
        }
        return p;
    }

    // 2. Scale down, highest id first: learners, then voters.
    if let Some(&id) = members.iter().rev().find(|id| !desired.contains(id)) {
        if id == leader.id {
            match voters
                .iter()
                .rev()
                .find(|v| **v != id && desired.contains(v) && obs.healthy(**v))
            {
                Some(to) => p.actions.push(Action::TransferLeader {
                    via: leader.id,
                    to: *to,
                }),
                None => p.block(format!("no healthy voter to take leadership from {id}")),
            }
            return p;
        }
        if can_remove(id) {
            p.actions.push(Action::RemoveMember { via: leader.id, id });
        } else {
            p.block(format!(
                "removing {id} needs a healthy quorum before and after"
            ));
        }
        return p;
    }

    // 3. Scale up, one member at a time, lowest new id first.
    if let Some(&id) = desired.iter().find(|id| !members.contains(id)) {
        match obs.running.get(&id) {
            None => p.actions.push(Action::Create {
                id,
                initial_voters: None,
            }),
            Some(m) if m.addrs.is_none() => p.wait(format!("member {id} has no address yet")),
            Some(_) if leader_knows(leader, obs, id) => {
                if obs.has_quorum(&voters) {
                    p.actions.push(Action::AddLearner { via: leader.id, id });
                } else {
                    p.block(format!("adding {id} needs a healthy quorum first"));
                }
            }
            Some(_) => p.wait(format!("waiting for the leader to learn {id}'s address")),
        }
        return p;
    }

    // 4. Roll members to the spec's revision, once the membership is settled
    //    and no member is being started.
    let starting = p.actions.iter().any(|a| matches!(a, Action::Create { .. }));
    if learners.is_empty() && !starting {
        roll(obs, leader, &voters, &mut p);
    }
    p
}

/// One rolling-update step: restart the next outdated member when every
/// other member is healthy and caught up, the leader only after leadership
/// moved to a member at the new revision.
fn roll(obs: &Observed, leader: &MemberReport, voters: &BTreeSet<u64>, p: &mut Plan) {
    let Some(revision) = &obs.update_revision else {
        return;
    };
    let caught_up = |id: u64| obs.caught_up(id);
    // Followers first, an unhealthy one before the rest (restarting it takes
    // nobody else down), then highest id first; the leader last.
    let next = voters
        .iter()
        .rev()
        .filter(|id| obs.outdated(**id))
        .min_by_key(|id| (**id == leader.id, caught_up(**id)));
    let Some(&id) = next else {
        return;
    };
    let updated = voters.iter().filter(|v| !obs.outdated(**v)).count();
    let progress = format!(
        "{updated} of {} members at revision {revision}",
        voters.len()
    );
    if let Some(stuck) = voters.iter().find(|v| **v != id && !caught_up(**v)) {
        if obs.stalled.contains(stuck) {
            p.block(format!(
                "rolling update stalled: member {stuck} at revision {revision} stayed unhealthy \
                 past spec.updateStrategy.progressDeadline ({progress}); fix or revert the spec \
                 to resume"
            ));
        } else {
            p.wait(format!(
                "rolling update: restarting {id} waits for member {stuck} to be healthy and \
                 caught up ({progress})"
            ));
        }
        return;
    }
    if id == leader.id && voters.len() > 1 {
        // To a member already at the new revision, else to any: every other
        // member is healthy and caught up here.
        let to = voters
            .iter()
            .rev()
            .filter(|v| **v != id)
            .min_by_key(|v| obs.outdated(**v));
        if let Some(&to) = to {
            p.actions.push(Action::TransferLeader { via: id, to });
            p.wait(format!(
                "rolling update: leadership moves from {id} to {to} before {id} restarts \
                 ({progress})"
            ));
        }
        return;
    }
    p.actions.push(Action::Restart { id });
    p.wait(format!(
        "rolling update: restarting member {id} at revision {revision} ({progress})"
    ));
}

/// True when the leader's peer table has `id` at its current address.
fn leader_knows(leader: &MemberReport, obs: &Observed, id: u64) -> bool {
    let current = obs.running.get(&id).and_then(Member::peer_addr);
    current.is_some() && leader.peers.get(&id).map(String::as_str) == current
}

/// Every member that answers learns the current address of each other member
/// it lacks or has wrong. (A member being created gets all of them as flags.)
fn push_addresses(obs: &Observed, p: &mut Plan) {
    let current: BTreeMap<u64, String> = obs
        .running
        .values()
        .filter_map(|m| Some((m.id, m.peer_addr()?.to_string())))
        .collect();
    for (on, report) in &obs.reports {
        if !obs.running.contains_key(on) {
            continue;
        }
        let stale: BTreeMap<u64, String> = current
            .iter()
            .filter(|(id, addr)| *id != on && report.peers.get(id) != Some(addr))
            .map(|(id, addr)| (*id, addr.clone()))
            .collect();
        if !stale.is_empty() {
            p.actions.push(Action::PushAddresses {
                on: *on,
                peers: stale,
            });
        }
    }
}
