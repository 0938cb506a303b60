//! Validates a single-step membership change against the current configuration
//! and the leader's view of its peers, and turns it into the ConfChangeV2 raft
//! proposes. The node refuses unsafe changes itself, whoever calls its admin
//! port (etcd's strict reconfiguration is the model):
//! - the leader is never removed: leadership must move first, or the removed
//!   leader keeps leading a configuration it is not part of;
//! - a learner is promoted only when it is recently active and caught up, so the
//!   new quorum does not wait for a member still replaying the log;
//! - no removal or promotion may leave fewer healthy voters than a quorum.

use std::collections::{BTreeMap, BTreeSet};

use raft::prelude::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState};

use super::handle::{MembershipChange, NodeError};

/// What the leader knows of a peer when a change is proposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerHealth {
    /// Highest log index known to be replicated on the peer.
    pub matched: u64,
    /// Heard from within the last election timeout.
    pub active: bool,
    /// The leader is sending it a snapshot (raft's Snapshot state).
    pub snapshot_pending: bool,
}

/// The leader's view a change is checked against.
pub struct LeaderView<'a> {
    pub leader: u64,
    pub last_index: u64,
    /// A learner is caught up when it matched within this many entries of `last_index`.
    pub max_promote_lag: u64,
    /// Every member but the leader itself (which is healthy by definition).
    pub peers: &'a BTreeMap<u64, PeerHealth>,
}

impl LeaderView<'_> {
    fn healthy(&self, id: u64) -> bool {
        id == self.leader || self.peers.get(&id).is_some_and(|p| p.active)
    }

    /// Refuses a voter set with fewer healthy members than a quorum of it.
    fn check_quorum(&self, change: &str, voters: &BTreeSet<u64>) -> Result<(), NodeError> {
        let (healthy, unhealthy): (Vec<u64>, Vec<u64>) =
            voters.iter().partition(|id| self.healthy(**id));
        let quorum = voters.len() / 2 + 1;
        if healthy.len() >= quorum {
            return Ok(());
        }
        Err(NodeError::UnsafeChange(format!(
            "{change} would leave voters {:?} with only {healthy:?} healthy, below a quorum of \
             {quorum}; members {unhealthy:?} have not been heard from within an election timeout",
            voters.iter().collect::<Vec<_>>()
        )))
    }
}

pub fn to_conf_change(
    change: MembershipChange,
    cs: &ConfState,
    view: &LeaderView<'_>,
) -> Result<ConfChangeV2, NodeError> {
    let is_voter = |id| cs.voters.contains(&id);
    let is_learner = |id| cs.learners.contains(&id);
    let invalid = |why: String| Err(NodeError::InvalidChange(why));
    let mut voters: BTreeSet<u64> = cs.voters.iter().copied().collect();
    let (kind, id) = match change {
        MembershipChange::AddLearner(id) => {
            if id == 0 {
                return invalid("member id 0 is reserved".into());
            }
            if is_voter(id) || is_learner(id) {
                return invalid(format!("member {id} is already in the cluster"));
            }
            (ConfChangeType::AddLearnerNode, id)
        }
        MembershipChange::Promote(id) => {
            if !is_learner(id) {
                return invalid(format!("member {id} is not a learner"));
            }
            let peer = view.peers.get(&id).copied().unwrap_or(PeerHealth {
                matched: 0,
                active: false,
                snapshot_pending: false,
            });
            if !peer.active {
                return Err(NodeError::NotYet(format!(
                    "learner {id} has not been heard from within an election timeout; \
                     promote it once it is running"
                )));
            }
            // A learner that holds nothing yet would look caught up by the lag
            // alone while the leader's log is short (a young cluster).
            if peer.matched == 0 || peer.snapshot_pending {
                return Err(NodeError::NotYet(format!(
                    "learner {id} is still catching up (it has not installed the leader's \
                     snapshot yet; matched {}); retry once it has",
                    peer.matched
                )));
            }
            let lag = view.last_index.saturating_sub(peer.matched);
            if lag > view.max_promote_lag {
                return Err(NodeError::NotYet(format!(
                    "learner {id} is {lag} entries behind the leader's last index {} \
                     (matched {}; at most {} allowed by --max-promote-lag); retry once it \
                     has caught up",
                    view.last_index, peer.matched, view.max_promote_lag
                )));
            }
            voters.insert(id);
            view.check_quorum(&format!("promoting member {id}"), &voters)?;
            (ConfChangeType::AddNode, id)
        }
        MembershipChange::Remove(id) => {
            if !is_voter(id) && !is_learner(id) {
                return invalid(format!("member {id} is not in the cluster"));
            }
            if id == view.leader {
                return Err(NodeError::UnsafeChange(format!(
                    "member {id} is the leader; transfer leadership to another voter first \
                     (raftctl transfer-leader ID), then remove it through the new leader"
                )));
            }
            if is_voter(id) {
                voters.remove(&id);
                view.check_quorum(&format!("removing member {id}"), &voters)?;
            }
            (ConfChangeType::RemoveNode, id)
        }
    };
    let mut single = ConfChangeSingle::default();
    single.set_change_type(kind);
    single.node_id = id;
    let mut cc = ConfChangeV2::default();
    cc.mut_changes().push(single);
    Ok(cc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use MembershipChange::*;

    fn cs(voters: &[u64], learners: &[u64]) -> ConfState {
        ConfState {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            ..Default::default()
        }
    }

    /// Leader 1 at last index 100; `peers` are (id, matched, active).
    fn check(
        c: &ConfState,
        peers: &[(u64, u64, bool)],
        change: MembershipChange,
    ) -> Result<ConfChangeType, NodeError> {
        let peers: BTreeMap<u64, PeerHealth> = peers
            .iter()
            .map(|&(id, matched, active)| {
                let health = PeerHealth {
                    matched,
                    active,
                    snapshot_pending: false,
                };
                (id, health)
            })
            .collect();
        let view = LeaderView {
            leader: 1,
            last_index: 100,
            max_promote_lag: 10,
            peers: &peers,
        };
        to_conf_change(change, c, &view).map(|cc| cc.changes[0].get_change_type())
    }

    const HEALTHY: &[(u64, u64, bool)] = &[(2, 100, true), (3, 100, true), (4, 95, true)];

    #[test]
    fn valid_changes_on_a_healthy_cluster() {
        let c = cs(&[1, 2, 3], &[4]);
        let cases = [
            (AddLearner(5), ConfChangeType::AddLearnerNode),
            (Promote(4), ConfChangeType::AddNode),
            (Remove(4), ConfChangeType::RemoveNode),
            (Remove(3), ConfChangeType::RemoveNode),
        ];
        for (change, want) in cases {
            assert_eq!(check(&c, HEALTHY, change), Ok(want), "{change:?}");
        }
    }

    #[test]
    fn invalid_changes_name_the_member() {
        let c = cs(&[1, 2, 3], &[4]);
        for (change, says) in [
            (AddLearner(4), "member 4 is already in the cluster"),
            (AddLearner(2), "member 2 is already in the cluster"),
            (AddLearner(0), "member id 0 is reserved"),
            (Promote(3), "member 3 is not a learner"),
            (Remove(9), "member 9 is not in the cluster"),
        ] {
            let err = check(&c, HEALTHY, change).unwrap_err();
            assert!(matches!(err, NodeError::InvalidChange(_)), "{change:?}");
            assert!(err.to_string().contains(says), "{change:?}: {err}");
        }
    }

    #[test]
    fn the_leader_is_never_removed() {
        let err = check(&cs(&[1, 2, 3], &[]), HEALTHY, Remove(1)).unwrap_err();
        assert!(
            err.to_string()
                .contains("member 1 is the leader; transfer leadership"),
            "{err}"
        );
        let err = check(&cs(&[1], &[]), &[], Remove(1)).unwrap_err();
        assert!(err.to_string().contains("is the leader"), "{err}");
    }

    /// The young-cluster case: the leader's log is shorter than the allowed lag,
    /// so a learner that has received nothing (matched 0, snapshot pending)
    /// would look caught up by the lag alone.
    #[test]
    fn a_learner_still_waiting_for_its_snapshot_is_not_promoted() {
        let healthy = PeerHealth {
            matched: 8,
            active: true,
            snapshot_pending: false,
        };
        let waiting = PeerHealth {
            matched: 0,
            active: true,
            snapshot_pending: true,
        };
        let peers = BTreeMap::from([(2, healthy), (3, healthy), (4, waiting)]);
        let view = LeaderView {
            leader: 1,
            last_index: 8,
            max_promote_lag: 1000,
            peers: &peers,
        };
        let err = to_conf_change(Promote(4), &cs(&[1, 2, 3], &[4]), &view).unwrap_err();
        assert!(matches!(err, NodeError::NotYet(_)));
        assert!(
            err.to_string().contains("learner 4 is still catching up"),
            "{err}"
        );
        let peers = BTreeMap::from([(2, healthy), (3, healthy), (4, healthy)]);
        let view = LeaderView {
            peers: &peers,
            ..view
        };
        assert!(to_conf_change(Promote(4), &cs(&[1, 2, 3], &[4]), &view).is_ok());
    }

    #[test]
    fn a_lagging_or_silent_learner_is_not_promoted() {
        let c = cs(&[1, 2, 3], &[4]);
        let err = check(
            &c,
            &[(2, 100, true), (3, 100, true), (4, 50, true)],
            Promote(4),
        )
        .unwrap_err();
        assert!(matches!(err, NodeError::NotYet(_)));
        assert!(
            err.to_string().contains("learner 4 is 50 entries behind"),
            "{err}"
        );
        let err = check(
            &c,
            &[(2, 100, true), (3, 100, true), (4, 100, false)],
            Promote(4),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("learner 4 has not been heard from"),
            "{err}"
        );
        let err = check(&c, &[(2, 100, true), (3, 100, true)], Promote(4)).unwrap_err();
        assert!(
            err.to_string()
                .contains("learner 4 has not been heard from"),
            "{err}"
        );
    }

    #[test]
    fn no_change_leaves_fewer_healthy_voters_than_a_quorum() {
        // 3 voters, 3 down: removing the healthy 2 would leave [1, 3] with 1 healthy.
        let c = cs(&[1, 2, 3], &[4]);
        let down3 = &[(2, 100, true), (3, 100, false), (4, 100, true)];
        let err = check(&c, down3, Remove(2)).unwrap_err();
        assert!(matches!(err, NodeError::UnsafeChange(_)));
        let msg = err.to_string();
        assert!(
            msg.contains("removing member 2 would leave voters [1, 3] with only [1] healthy"),
            "{msg}"
        );
        assert!(
            msg.contains("members [3] have not been heard from"),
            "{msg}"
        );
        // Removing the unhealthy member keeps a healthy quorum: allowed.
        assert_eq!(check(&c, down3, Remove(3)), Ok(ConfChangeType::RemoveNode));
        // 5 voters with 2 down: promoting a 6th makes 6 voters, 4 healthy = quorum 4: allowed;
        // with 3 down it is refused.
        let c5 = cs(&[1, 2, 3, 4, 5], &[6]);
        let two_down = &[
            (2, 100, true),
            (3, 100, true),
            (4, 100, false),
            (5, 100, false),
            (6, 100, true),
        ];
        assert_eq!(
            check(&c5, two_down, Promote(6)),
            Ok(ConfChangeType::AddNode)
        );
        let three_down = &[
            (2, 100, true),
            (3, 100, false),
            (4, 100, false),
            (5, 100, false),
            (6, 100, true),
        ];
        let err = check(&c5, three_down, Promote(6)).unwrap_err();
        assert!(err.to_string().contains("promoting member 6 would leave voters [1, 2, 3, 4, 5, 6] with only [1, 2, 6] healthy, below a quorum of 4"), "{err}");
        // Learners never count: removing one needs no quorum check.
        assert_eq!(check(&c, &[], Remove(4)), Ok(ConfChangeType::RemoveNode));
    }
}
