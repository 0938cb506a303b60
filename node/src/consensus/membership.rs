//! Validates a single-step membership change against the current configuration
//! and turns it into the ConfChangeV2 raft proposes.

use raft::prelude::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState};

use super::handle::{MembershipChange, NodeError};

pub fn to_conf_change(change: MembershipChange, cs: &ConfState) -> Result<ConfChangeV2, NodeError> {
    let is_voter = |id| cs.voters.contains(&id);
    let is_learner = |id| cs.learners.contains(&id);
    let invalid = |why: String| Err(NodeError::InvalidChange(why));
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
            (ConfChangeType::AddNode, id)
        }
        MembershipChange::Remove(id) => {
            if !is_voter(id) && !is_learner(id) {
                return invalid(format!("member {id} is not in the cluster"));
            }
            if is_voter(id) && cs.voters.len() == 1 {
                return invalid(format!("member {id} is the last voter"));
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

    #[test]
    fn table() {
        let c = cs(&[1, 2, 3], &[4]);
        let cases = [
            (AddLearner(5), Some(ConfChangeType::AddLearnerNode)),
            (AddLearner(4), None),
            (AddLearner(2), None),
            (AddLearner(0), None),
            (Promote(4), Some(ConfChangeType::AddNode)),
            (Promote(3), None),
            (Remove(4), Some(ConfChangeType::RemoveNode)),
            (Remove(3), Some(ConfChangeType::RemoveNode)),
            (Remove(9), None),
        ];
        for (change, want) in cases {
            let got = to_conf_change(change, &c)
                .ok()
                .map(|cc| cc.changes[0].get_change_type());
            assert_eq!(got, want, "{change:?}");
        }
        assert!(to_conf_change(Remove(1), &cs(&[1], &[])).is_err());
    }
}
