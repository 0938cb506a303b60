//! Durable state of a member: the raft log and hard state in raft-engine, and
//! state-machine snapshots as checksummed files beside it.

mod log_store;
mod snapshot_store;
mod staged;

pub use log_store::{member_ids, LogStore, BOOTSTRAP_INDEX, BOOTSTRAP_TERM};
pub use snapshot_store::{open_backup, SnapshotStore, SnapshotWriter, VerifiedBody};
pub use staged::StagedSnapshot;
