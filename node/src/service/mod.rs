//! The client-facing gRPC services: key-value on the client port, administration
//! on the admin port. Both are thin: they validate input and ask the raft loop.

pub mod admin;
pub mod forward;
pub mod kv;

use std::future::Future;
use std::time::Duration;

use tonic::Status;

use crate::consensus::NodeError;

/// Metadata key naming the leader's member id on UNAVAILABLE and FAILED_PRECONDITION.
pub const LEADER_ID_HEADER: &str = "x-raftlane-leader-id";
/// Metadata key with the leader's peer address on UNAVAILABLE from the `Kv`
/// service: members know each other's peer addresses, not client addresses.
pub const LEADER_PEER_ADDR_HEADER: &str = "x-raftlane-leader-peer-addr";

pub fn to_status(e: NodeError) -> Status {
    let mut s = match &e {
        NodeError::NoLeader | NodeError::Dropped(_) | NodeError::Shutdown => {
            Status::unavailable(e.to_string())
        }
        NodeError::NotLeader { .. }
        | NodeError::ChangeInProgress
        | NodeError::InvalidChange(_)
        | NodeError::UnsafeChange(_) => Status::failed_precondition(e.to_string()),
        // ABORTED: retry later, nothing is wrong (the admin API's contract).
        NodeError::TransferFailed(_) | NodeError::NotYet(_) => Status::aborted(e.to_string()),
        NodeError::Storage(_) => Status::internal(e.to_string()),
    };
    if let NodeError::NotLeader { leader_id } = e {
        if let Ok(v) = leader_id.to_string().parse() {
            s.metadata_mut().insert(LEADER_ID_HEADER, v);
        }
    }
    s
}

/// Runs a request against the raft loop with a deadline.
pub async fn bounded<T>(
    timeout: Duration,
    what: &str,
    fut: impl Future<Output = Result<T, NodeError>>,
) -> Result<T, Status> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(to_status),
        Err(_) => Err(deadline(what, timeout)),
    }
}

pub fn deadline(what: &str, timeout: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "{what} not completed within {} ms; it may still take effect, retrying is safe",
        timeout.as_millis()
    ))
}
