//! Durable state of a member: the raft log and hard state in raft-engine, and
//! state-machine snapshots as checksummed files beside it.

mod log_store;
mod snapshot_store;

pub use log_store::LogStore;
pub use snapshot_store::{SnapshotStore, SnapshotWriter, VerifiedBody};
