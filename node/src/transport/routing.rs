//! Which lane carries each raft message type. One type always maps to one lane, so
//! per-type order to a peer holds; local-only types never reach the network.

use raft::prelude::MessageType;

/// A per-peer queue with its own sender task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Liveness and elections: must never wait behind bulk traffic.
    Heartbeat,
    /// Log replication.
    Replication,
    /// Snapshots, sent with `SendSnapshot`.
    Snapshot,
    /// Everything else that may cross the network.
    Other,
}

impl Lane {
    pub const ALL: [Lane; 4] = [
        Lane::Heartbeat,
        Lane::Replication,
        Lane::Snapshot,
        Lane::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Lane::Heartbeat => "heartbeat",
            Lane::Replication => "replication",
            Lane::Snapshot => "snapshot",
            Lane::Other => "other",
        }
    }
}

/// The lane of a message type, or `None` for types that must stay inside the node.
pub fn lane_of(t: MessageType) -> Option<Lane> {
    use MessageType::*;
    match t {
        MsgHeartbeat
        | MsgHeartbeatResponse
        | MsgRequestVote
        | MsgRequestVoteResponse
        | MsgRequestPreVote
        | MsgRequestPreVoteResponse
        | MsgReadIndex
        | MsgReadIndexResp
        | MsgTimeoutNow => Some(Lane::Heartbeat),
        MsgAppend | MsgAppendResponse => Some(Lane::Replication),
        MsgSnapshot => Some(Lane::Snapshot),
        MsgPropose | MsgTransferLeader => Some(Lane::Other),
        MsgHup | MsgBeat | MsgUnreachable | MsgSnapStatus | MsgCheckQuorum => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MessageType::*;

    /// Pins the whole table: a change to routing must change this test.
    #[test]
    fn every_message_type_is_routed() {
        let table = [
            (MsgHup, None),
            (MsgBeat, None),
            (MsgPropose, Some(Lane::Other)),
            (MsgAppend, Some(Lane::Replication)),
            (MsgAppendResponse, Some(Lane::Replication)),
            (MsgRequestVote, Some(Lane::Heartbeat)),
            (MsgRequestVoteResponse, Some(Lane::Heartbeat)),
            (MsgSnapshot, Some(Lane::Snapshot)),
            (MsgHeartbeat, Some(Lane::Heartbeat)),
            (MsgHeartbeatResponse, Some(Lane::Heartbeat)),
            (MsgUnreachable, None),
            (MsgSnapStatus, None),
            (MsgCheckQuorum, None),
            (MsgTransferLeader, Some(Lane::Other)),
            (MsgTimeoutNow, Some(Lane::Heartbeat)),
            (MsgReadIndex, Some(Lane::Heartbeat)),
            (MsgReadIndexResp, Some(Lane::Heartbeat)),
            (MsgRequestPreVote, Some(Lane::Heartbeat)),
            (MsgRequestPreVoteResponse, Some(Lane::Heartbeat)),
        ];
        for (i, (t, lane)) in table.iter().enumerate() {
            assert_eq!(*t as usize, i, "table is in enum order");
            assert_eq!(lane_of(*t), *lane, "{t:?}");
            assert_eq!(raft::raw_node::is_local_msg(*t), lane.is_none(), "{t:?}");
        }
    }
}
