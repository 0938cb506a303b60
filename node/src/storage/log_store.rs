//! raft-rs `Storage` on raft-engine: entries, hard state and the metadata of the
//! latest snapshot, with every write that raft depends on fsynced.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use raft_engine::{Command, Config as EngineConfig, Engine, LogBatch, MessageExt};

use super::{SnapshotStore, SnapshotWriter, VerifiedBody};
use crate::state_machine::KvStateMachine;

/// Index and term of the empty snapshot every initial voter of a new cluster
/// starts from (the values TiKV uses for the same purpose).
pub const BOOTSTRAP_INDEX: u64 = 5;
pub const BOOTSTRAP_TERM: u64 = 5;

/// Every id a configuration names: voters, learners and those of a joint
/// configuration's other half.
pub fn member_ids(cs: &ConfState) -> BTreeSet<u64> {
    [
        &cs.voters,
        &cs.learners,
        &cs.voters_outgoing,
        &cs.learners_next,
    ]
    .into_iter()
    .flatten()
    .copied()
    .collect()
}

/// The single raft group this member stores.
const GROUP: u64 = 1;
const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_SNAPSHOT_META: &[u8] = b"snapshot_meta";

/// Tells raft-engine how to index raft-rs entries.
#[derive(Clone)]
struct EntryExt;

impl MessageExt for EntryExt {
    type Entry = Entry;
    fn index(e: &Entry) -> u64 {
        e.index
    }
}

/// Raft log, hard state and snapshot metadata of one member.
///
/// The log may keep some entries at or below the snapshot index (the compaction
/// margin), so followers that lag a little get entries rather than a snapshot.
pub struct LogStore {
    engine: Arc<Engine>,
    hard_state: HardState,
    snapshot_meta: SnapshotMetadata,
    /// Set when raft asked for a snapshot the stored one cannot serve.
    snapshot_wanted: AtomicBool,
    /// Where to record, once, that this log holds raft state
    /// (`--state-marker`); taken when written.
    state_marker: Option<std::path::PathBuf>,
}

/// How long to wait for the log's lock file: a member recreated on its volume
/// (a replaced pod, a restarted process) can start while the old process is
/// still exiting and holds it.
const LOCK_WAIT: Duration = Duration::from_secs(15);

/// Opens raft-engine, waiting a bounded time for another process to release
/// the directory's lock; every other error is returned at once.
fn open_engine(cfg: EngineConfig) -> raft::Result<Engine> {
    let deadline = Instant::now() + LOCK_WAIT;
    let mut logged = false;
    loop {
        match Engine::open(cfg.clone()) {
            Ok(engine) => return Ok(engine),
            Err(e)
                if e.to_string().contains("Failed to lock file") && Instant::now() < deadline =>
            {
                if !std::mem::replace(&mut logged, true) {
                    tracing::warn!(dir = %cfg.dir, error = %e, "raft log locked by another process; waiting up to {LOCK_WAIT:?}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(engine_err(e)),
        }
    }
}

fn marker_err(e: std::io::Error) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

fn engine_err(e: raft_engine::Error) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl LogStore {
    /// Opens (or creates) the log under `dir`, replaying what was written before.
    pub fn open(dir: &Path) -> raft::Result<Self> {
        let cfg = EngineConfig {
            dir: dir.to_string_lossy().into_owned(),
            ..EngineConfig::default()
        };
        let engine = Arc::new(open_engine(cfg)?);
        let hard_state = engine
            .get_message::<HardState>(GROUP, KEY_HARD_STATE)
            .map_err(engine_err)?
            .unwrap_or_default();
        let snapshot_meta = engine
            .get_message::<SnapshotMetadata>(GROUP, KEY_SNAPSHOT_META)
            .map_err(engine_err)?
            .unwrap_or_default();
        let store = LogStore {
            engine,
            hard_state,
            snapshot_meta,
            snapshot_wanted: AtomicBool::new(false),
            state_marker: None,
        };
        if store.snapshot_meta.index == 0
            && (store.snapshot_meta.get_conf_state() != &ConfState::default()
                || store.engine.last_index(GROUP).is_some())
        {
            return Err(raft::Error::Store(StorageError::Other(
                "this raft log has the configuration of its cluster at index 0 (the layout \
                 of raft-node 0.1), where members added later cannot see it; it is refused \
                 because such a cluster can split when it grows: start this member on an \
                 empty data dir and let it join, or move the data into a new cluster"
                    .into(),
            )));
        }
        Ok(store)
    }

    /// True when nothing was ever written: no term, no snapshot, no entries.
    ///
    /// This is what "holds raft state" means everywhere (`--expect-state`,
    /// `--restore-from`, bootstrap): what raft needs to stay safe is the hard
    /// state (a term, a vote), the snapshot (the configuration) and the log.
    /// The files an empty start leaves behind (the engine's lock and an empty
    /// log file) are none of these, so a wiped member that was started once
    /// empty is still seen as wiped.
    pub fn is_fresh(&self) -> bool {
        self.hard_state == HardState::default()
            && self.snapshot_meta == SnapshotMetadata::default()
            && self.engine.last_index(GROUP).is_none()
    }

    /// Writes `marker` once this log holds raft state: now if it does, else
    /// right after the first write that makes it so.
    pub fn mark_state_at(&mut self, marker: std::path::PathBuf) -> std::io::Result<()> {
        self.state_marker = Some(marker);
        self.note_state()
    }

    /// Writes the pending state marker if this log holds state now.
    fn note_state(&mut self) -> std::io::Result<()> {
        if self.is_fresh() {
            return Ok(());
        }
        match self.state_marker.take() {
            Some(path) => super::write_file_atomically(&path, b"true\n"),
            None => Ok(()),
        }
    }

    /// Bootstraps a new cluster: every initial voter starts from the same empty
    /// snapshot at [`BOOTSTRAP_INDEX`] whose configuration names the voters, and
    /// its log begins after it. A member added later starts at index 0, below the
    /// log of every member, so it can only catch up by snapshot, and a snapshot
    /// carries the configuration. (Were the voters recorded at index 0, a joiner
    /// replaying the log from index 1 would never learn them, and would end up
    /// believing it is the only voter.)
    pub fn bootstrap(&mut self, voters: &[u64], snapshots: &SnapshotStore) -> raft::Result<()> {
        self.bootstrap_with(voters, snapshots, |w| KvStateMachine::default().dump(w))
    }

    /// Bootstraps as [`LogStore::bootstrap`], the state machine being the body
    /// of a backup: every initial voter restored from one file starts from the
    /// same state. A body whose checksum does not match fails before anything
    /// is recorded.
    pub fn restore(
        &mut self,
        voters: &[u64],
        snapshots: &SnapshotStore,
        backup: &mut VerifiedBody,
    ) -> raft::Result<()> {
        self.bootstrap_with(voters, snapshots, |w| {
            std::io::copy(backup, w)?;
            Ok(())
        })
    }

    fn bootstrap_with(
        &mut self,
        voters: &[u64],
        snapshots: &SnapshotStore,
        body: impl FnOnce(&mut SnapshotWriter) -> std::io::Result<()>,
    ) -> raft::Result<()> {
        let io = |e: std::io::Error| raft::Error::Store(StorageError::Other(Box::new(e)));
        let mut w = snapshots
            .create(BOOTSTRAP_TERM, BOOTSTRAP_INDEX)
            .map_err(io)?;
        body(&mut w).map_err(io)?;
        w.finish().map_err(io)?;
        let mut meta = SnapshotMetadata {
            index: BOOTSTRAP_INDEX,
            term: BOOTSTRAP_TERM,
            ..Default::default()
        };
        meta.mut_conf_state().voters = voters.to_vec();
        let hs = HardState {
            term: BOOTSTRAP_TERM,
            commit: BOOTSTRAP_INDEX,
            ..Default::default()
        };
        let mut batch = LogBatch::default();
        batch
            .put_message(GROUP, KEY_SNAPSHOT_META.to_vec(), &meta)
            .map_err(engine_err)?;
        batch
            .put_message(GROUP, KEY_HARD_STATE.to_vec(), &hs)
            .map_err(engine_err)?;
        self.engine.write(&mut batch, true).map_err(engine_err)?;
        self.snapshot_meta = meta;
        self.hard_state = hs;
        self.note_state().map_err(io)?;
        Ok(())
    }

    /// Appends entries (overwriting any conflicting suffix) and the new hard state in
    /// one batch; `sync` makes it durable before the call returns.
    pub fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        sync: bool,
    ) -> raft::Result<()> {
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        let mut batch = LogBatch::default();
        batch
            .add_entries::<EntryExt>(GROUP, entries)
            .map_err(engine_err)?;
        if let Some(hs) = hard_state {
            batch
                .put_message(GROUP, KEY_HARD_STATE.to_vec(), hs)
                .map_err(engine_err)?;
        }
        self.engine.write(&mut batch, sync).map_err(engine_err)?;
        if let Some(hs) = hard_state {
            self.hard_state = hs.clone();
        }
        self.note_state().map_err(marker_err)
    }

    /// Records a newer commit index. Not synced: a lost commit index is learned
    /// again from the leader.
    pub fn set_commit(&mut self, commit: u64) -> raft::Result<()> {
        if commit <= self.hard_state.commit {
            return Ok(());
        }
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.append(&[], Some(&hs), false)
    }

    /// Replaces the whole log with a snapshot received from the leader.
    pub fn apply_snapshot(&mut self, meta: &SnapshotMetadata) -> raft::Result<()> {
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        let mut batch = LogBatch::default();
        batch.add_command(GROUP, Command::Clean);
        batch
            .put_message(GROUP, KEY_HARD_STATE.to_vec(), &hs)
            .map_err(engine_err)?;
        batch
            .put_message(GROUP, KEY_SNAPSHOT_META.to_vec(), meta)
            .map_err(engine_err)?;
        self.engine.write(&mut batch, true).map_err(engine_err)?;
        self.hard_state = hs;
        self.snapshot_meta = meta.clone();
        self.note_state().map_err(marker_err)
    }

    /// Records a local snapshot and drops the entries it covers, except the last
    /// `keep` of them.
    pub fn compact(&mut self, meta: &SnapshotMetadata, keep: u64) -> raft::Result<()> {
        let mut batch = LogBatch::default();
        batch
            .put_message(GROUP, KEY_SNAPSHOT_META.to_vec(), meta)
            .map_err(engine_err)?;
        let index = meta.index.saturating_sub(keep) + 1;
        batch.add_command(GROUP, Command::Compact { index });
        self.engine.write(&mut batch, true).map_err(engine_err)?;
        self.snapshot_meta = meta.clone();
        // Reclaims log files whose entries are all compacted; failure only costs disk.
        if let Err(e) = self.engine.purge_expired_files() {
            tracing::warn!(error = %e, "raft log purge failed");
        }
        Ok(())
    }

    /// True (once) when raft needed a newer snapshot than the stored one.
    pub fn take_snapshot_request(&self) -> bool {
        self.snapshot_wanted.swap(false, Ordering::Relaxed)
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn snapshot_meta(&self) -> &SnapshotMetadata {
        &self.snapshot_meta
    }

    fn first(&self) -> u64 {
        match self.engine.first_index(GROUP) {
            Some(first) if first <= self.snapshot_meta.index + 1 => first,
            _ => self.snapshot_meta.index + 1,
        }
    }

    fn last(&self) -> u64 {
        match self.engine.last_index(GROUP) {
            Some(last) if last > self.snapshot_meta.index => last,
            _ => self.snapshot_meta.index,
        }
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.snapshot_meta.get_conf_state().clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut out = Vec::with_capacity((high - low) as usize);
        let max = max_size.into().map(|m| m as usize);
        self.engine
            .fetch_entries_to::<EntryExt>(GROUP, low, high, max, &mut out)
            .map_err(engine_err)?;
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot_meta.index {
            return Ok(self.snapshot_meta.term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        match self
            .engine
            .get_entry::<EntryExt>(GROUP, idx)
            .map_err(engine_err)?
        {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    /// The data is left empty: the payload is the snapshot file named by the
    /// metadata, which the transport streams from disk. A stored snapshot older
    /// than asked for, or whose configuration lacks `to` (a learner added since),
    /// would be refused by `to`: a fresh one is requested instead, and raft asks
    /// again.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let meta = &self.snapshot_meta;
        let includes_to = member_ids(meta.get_conf_state()).contains(&to);
        if meta.index == 0 || meta.index < request_index || !includes_to {
            self.snapshot_wanted.store(true, Ordering::Relaxed);
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = Snapshot::default();
        snap.set_metadata(meta.clone());
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("e{index}").into_bytes().into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_files_an_empty_start_leaves_are_not_raft_state() {
        let dir = tempfile::tempdir().unwrap();
        let raft = dir.path().join("raft");
        drop(LogStore::open(&raft).unwrap());
        drop(LogStore::open(&raft).unwrap());
        assert!(
            std::fs::read_dir(&raft).unwrap().next().is_some(),
            "opening leaves files behind (the lock, an empty log)"
        );
        assert!(LogStore::open(&raft).unwrap().is_fresh());

        // A term alone (a vote cast, a leader heard from) is state: a member
        // that forgot it could vote twice in one term.
        let mut s = LogStore::open(&raft).unwrap();
        let hs = HardState {
            term: 1,
            ..Default::default()
        };
        s.append(&[], Some(&hs), true).unwrap();
        drop(s);
        assert!(!LogStore::open(&raft).unwrap().is_fresh());

        let other = dir.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        drop(bootstrapped(&other, &[1, 2, 3]));
        assert!(!LogStore::open(&other.join("raft")).unwrap().is_fresh());
    }

    #[test]
    fn the_state_marker_is_written_with_the_first_state_and_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("held");
        let mut s = LogStore::open(&dir.path().join("raft")).unwrap();
        s.mark_state_at(marker.clone()).unwrap();
        assert!(!marker.exists(), "an empty log is no state");
        let hs = HardState {
            term: 1,
            ..Default::default()
        };
        s.append(&[], Some(&hs), true).unwrap();
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "true\n");
        drop(s);
        // A log that holds state already writes it at once.
        std::fs::remove_file(&marker).unwrap();
        let mut s = LogStore::open(&dir.path().join("raft")).unwrap();
        s.mark_state_at(marker.clone()).unwrap();
        assert!(marker.exists());
    }

    /// A store bootstrapped as one of `voters`, with its snapshot folder beside it.
    fn bootstrapped(dir: &Path, voters: &[u64]) -> LogStore {
        let mut s = LogStore::open(&dir.join("raft")).unwrap();
        assert!(s.is_fresh());
        let snapshots = SnapshotStore::open(&dir.join("snapshots")).unwrap();
        s.bootstrap(voters, &snapshots).unwrap();
        s
    }

    #[test]
    fn a_bootstrapped_log_starts_after_a_snapshot_that_names_the_voters() {
        let dir = tempfile::tempdir().unwrap();
        drop(bootstrapped(dir.path(), &[1, 2, 3]));
        let s = LogStore::open(&dir.path().join("raft")).unwrap();
        assert!(!s.is_fresh());
        let meta = s.snapshot_meta();
        assert_eq!((meta.index, meta.term), (BOOTSTRAP_INDEX, BOOTSTRAP_TERM));
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
        assert_eq!(s.hard_state().commit, BOOTSTRAP_INDEX);
        // Nothing below the snapshot can be replayed: a joiner at index 0 gets the
        // snapshot, and with it the configuration.
        assert_eq!(s.first_index().unwrap(), BOOTSTRAP_INDEX + 1);
        assert!(matches!(
            s.entries(1, 2, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        // The snapshot's body is a real, empty state machine.
        let snapshots = SnapshotStore::open(&dir.path().join("snapshots")).unwrap();
        let mut body = snapshots
            .open_body(BOOTSTRAP_TERM, BOOTSTRAP_INDEX)
            .unwrap();
        assert!(KvStateMachine::load(&mut body).unwrap().is_empty());
    }

    #[test]
    fn a_log_with_its_configuration_at_index_zero_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        {
            // What raft-node 0.1 wrote: the voters at index 0, entries from 1.
            let mut s = LogStore::open(dir.path()).unwrap();
            let mut meta = SnapshotMetadata::default();
            meta.mut_conf_state().voters = vec![1, 2, 3];
            let mut batch = LogBatch::default();
            batch
                .put_message(GROUP, KEY_SNAPSHOT_META.to_vec(), &meta)
                .unwrap();
            s.engine.write(&mut batch, true).unwrap();
            s.append(&[entry(1, 1)], None, true).unwrap();
        }
        let err = LogStore::open(dir.path())
            .err()
            .expect("old layout refused");
        assert!(
            err.to_string()
                .contains("configuration of its cluster at index 0"),
            "{err}"
        );
    }

    #[test]
    fn opening_waits_for_a_lock_held_by_a_process_that_is_exiting() {
        let dir = tempfile::tempdir().unwrap();
        let held = LogStore::open(dir.path()).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            drop(held);
        });
        let started = Instant::now();
        let reopened = LogStore::open(dir.path());
        release.join().unwrap();
        assert!(reopened.is_ok(), "{:?}", reopened.err());
        assert!(started.elapsed() >= Duration::from_millis(400));
    }

    #[test]
    fn survives_reopen_and_overwrites_conflicting_suffix() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = bootstrapped(dir.path(), &[1, 2, 3]);
            let entries: Vec<_> = (6..=10).map(|i| entry(i, 6)).collect();
            let hs = HardState {
                term: 6,
                commit: 8,
                ..Default::default()
            };
            s.append(&entries, Some(&hs), true).unwrap();
            // A new leader overwrites 9..10 with term-7 entries.
            s.append(&[entry(9, 7)], None, true).unwrap();
        }
        let s = LogStore::open(&dir.path().join("raft")).unwrap();
        assert!(!s.is_fresh());
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
        assert_eq!(s.hard_state().commit, 8);
        assert_eq!(s.last_index().unwrap(), 9);
        assert_eq!(s.term(9).unwrap(), 7);
        let got = s
            .entries(6, 10, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn compaction_and_snapshot_install_move_first_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = bootstrapped(dir.path(), &[1]);
        let entries: Vec<_> = (6..=15).map(|i| entry(i, 6)).collect();
        s.append(&entries, None, true).unwrap();
        let mut meta = SnapshotMetadata {
            index: 11,
            term: 6,
            ..Default::default()
        };
        meta.mut_conf_state().voters = vec![1];
        s.compact(&meta, 2).unwrap();
        // Two entries at or below the snapshot index stay as the margin.
        assert_eq!(s.first_index().unwrap(), 10);
        assert_eq!(s.term(11).unwrap(), 6);
        assert!(matches!(
            s.entries(8, 13, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(
            s.entries(10, 16, None, GetEntriesContext::empty(false))
                .unwrap()
                .len(),
            6
        );

        meta.index = 50;
        meta.term = 8;
        s.apply_snapshot(&meta).unwrap();
        drop(s);
        let s = LogStore::open(&dir.path().join("raft")).unwrap();
        assert_eq!(s.first_index().unwrap(), 51);
        assert_eq!(s.last_index().unwrap(), 50);
        assert_eq!(s.hard_state().commit, 50);
        assert_eq!(s.snapshot(0, 1).unwrap().get_metadata().index, 50);
        assert!(!s.take_snapshot_request());
        // Member 2 is not in that snapshot's configuration (added later): refused,
        // and a fresh snapshot is requested; so is one newer than the stored one.
        assert!(matches!(
            s.snapshot(0, 2),
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable
            ))
        ));
        assert!(s.take_snapshot_request());
        assert!(s.snapshot(51, 1).is_err());
        assert!(s.take_snapshot_request());
    }
}
