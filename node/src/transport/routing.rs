//! Which lane carries each raft message type. One type always maps to one lane, so
//! per-type order to a peer holds; local-only types never reach the network.

use raft::prelude::MessageType;

/// A kind of lane: a per-peer queue with its own sender task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LaneKind {
    /// Liveness and elections: must never wait behind bulk traffic.
    Heartbeat,
    /// Log replication.
    Replication,
    /// Snapshots, sent with `SendSnapshot`.
    Snapshot,
    /// Everything else that may cross the network.
    Other,
}

impl LaneKind {
    pub const ALL: [LaneKind; 4] = [
        LaneKind::Heartbeat,
        LaneKind::Replication,
        LaneKind::Snapshot,
        LaneKind::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LaneKind::Heartbeat => "heartbeat",
            LaneKind::Replication => "replication",
            LaneKind::Snapshot => "snapshot",
            LaneKind::Other => "other",
        }
    }
}

/// The lane of a message type, or `None` for types that must stay inside the node.
pub fn lane_of(t: MessageType) -> Option<LaneKind> {
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
        | MsgTimeoutNow => Some(LaneKind::Heartbeat),
        MsgAppend | MsgAppendResponse => Some(LaneKind::Replication),
        MsgSnapshot => Some(LaneKind::Snapshot),
        MsgPropose | MsgTransferLeader => Some(LaneKind::Other),
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
            (MsgPropose, Some(LaneKind::Other)),
            (MsgAppend, Some(LaneKind::Replication)),
            (MsgAppendResponse, Some(LaneKind::Replication)),
            (MsgRequestVote, Some(LaneKind::Heartbeat)),
            (MsgRequestVoteResponse, Some(LaneKind::Heartbeat)),
            (MsgSnapshot, Some(LaneKind::Snapshot)),
            (MsgHeartbeat, Some(LaneKind::Heartbeat)),
            (MsgHeartbeatResponse, Some(LaneKind::Heartbeat)),
            (MsgUnreachable, None),
            (MsgSnapStatus, None),
            (MsgCheckQuorum, None),
            (MsgTransferLeader, Some(LaneKind::Other)),
            (MsgTimeoutNow, Some(LaneKind::Heartbeat)),
            (MsgReadIndex, Some(LaneKind::Heartbeat)),
            (MsgReadIndexResp, Some(LaneKind::Heartbeat)),
            (MsgRequestPreVote, Some(LaneKind::Heartbeat)),
            (MsgRequestPreVoteResponse, Some(LaneKind::Heartbeat)),
        ];
        for (i, (t, lane)) in table.iter().enumerate() {
            assert_eq!(*t as usize, i, "table is in enum order");
            assert_eq!(lane_of(*t), *lane, "{t:?}");
            assert_eq!(raft::raw_node::is_local_msg(*t), lane.is_none(), "{t:?}");
        }
    }
}
