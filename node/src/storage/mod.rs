//! Durable state of a member: the raft log and hard state in raft-engine, and
//! state-machine snapshots as checksummed files beside it.

mod log_store;
mod snapshot_store;
mod staged;

pub use log_store::{member_ids, LogStore, BOOTSTRAP_INDEX, BOOTSTRAP_TERM};
pub use snapshot_store::{open_backup, SnapshotStore, SnapshotWriter, VerifiedBody};
pub use staged::StagedSnapshot;

/// True when raft-node has written its log under the data dir `data_dir` (it
/// does before it can answer or join): `--expect-state` and the operator's
/// local runtime ask the same question.
pub fn holds_raft_state(data_dir: &std::path::Path) -> std::io::Result<bool> {
    match std::fs::read_dir(data_dir.join("raft")) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}
