//! Durable state of a member: the raft log and hard state in raft-engine, and
//! state-machine snapshots as checksummed files beside it.

mod log_store;
mod snapshot_store;
mod staged;

pub use log_store::{member_ids, LogStore, BOOTSTRAP_INDEX, BOOTSTRAP_TERM};
pub use snapshot_store::{open_backup, SnapshotStore, SnapshotWriter, VerifiedBody};
pub use staged::StagedSnapshot;

/// Writes `body` to `path` whole: a temporary file in the same folder,
/// fsynced, renamed in, the folder fsynced. A reader sees the previous file
/// or this one, never part of one, and after a crash the rename is durable.
pub fn write_file_atomically(path: &std::path::Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_parent_dir(path)
}

/// Fsyncs the directory holding `path`: a rename into it (or a creation)
/// is durable only then.
pub fn sync_parent_dir(path: &std::path::Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}
