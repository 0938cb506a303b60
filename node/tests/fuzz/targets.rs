//! The fuzz targets: each takes untrusted bytes (or a string) as a peer, a
//! restore or an operator could hand them to raft-node, and panics when a
//! property fails. Two drivers run them: `tests/fuzz/main.rs` (proptest, on
//! the pinned stable toolchain, in `make test` and `make fuzz`) and the
//! libFuzzer targets under `fuzz/` (`cargo +nightly fuzz`), which include this
//! file as it is, so a target is written once.
//!
//! Properties, besides "never panics":
//! - raft message guard: what it passes, protobuf parses without unbounded
//!   recursion, into exactly as many log entries as the guard counted, at a
//!   bounded cost per input byte;
//! - peer envelope: the receiver answers every envelope with accepted + dropped
//!   = its messages or a refusal (INVALID_ARGUMENT, FAILED_PRECONDITION), and
//!   one carrying more entries than its limit is refused by count, before
//!   protobuf parses it; memory stays proportional to the envelope's bytes;
//! - snapshot chunk stream: the assembler accepts exactly the sequences a
//!   reference model calls well formed (one header first, `last` on the final
//!   chunk only, size and CRC32C as announced), and never hands out more
//!   payload than the header announced;
//! - backup file: opening, loading and reading to the end either fails or
//!   yields a state; memory stays proportional to the file, not to the sizes
//!   it declares;
//! - admin/peer address: whatever `validate_peer_addr` accepts, the dialer
//!   turns into an endpoint to that very host and port.

#![allow(dead_code)] // each driver uses its own subset

use std::cell::Cell;
use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeV2, EntryType, Message};
use raft_node::metrics::Metrics;
use raft_node::state_machine::KvStateMachine;
use raft_node::storage::{open_backup, SnapshotStore, StagedSnapshot};
use raft_node::transport::inbox::{Inbox, InboxReceiver};
use raft_node::transport::receiver::{Receiver, ReceiverConfig};
use raft_node::transport::snapshot::{Assembler, Frame, SnapshotLimits};
use raft_node::transport::{check_raft_message, validate_peer_addr};
use raftlane_proto::codec::{count_fields, MAX_FIELDS};
use raftlane_proto::transport::{snapshot_chunk::Kind, RaftEnvelope, SnapshotChunk};
use tonic::Code;

/// Parsing what the guard passed may cost at most this many bytes of memory
/// per input byte (an empty entry is 2 bytes on the wire and ~100 parsed, in a
/// `Vec` that may be twice the size it needs).
pub const PARSE_BYTES_PER_INPUT_BYTE: usize = 256;
/// What any call may allocate besides: buffers, metrics labels, a runtime's
/// first use.
pub const SLACK_BYTES: usize = 2 << 20;

/// Bytes allocated on this thread: the bound checks measure the peak of one
/// call. Per thread, because the test harness runs targets side by side.
pub mod alloc {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    pub struct Counting;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    fn add(n: usize) {
        let _ = LIVE.try_with(|live| {
            let v = live.get() + n as isize;
            live.set(v);
            let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
        });
    }

    fn sub(n: usize) {
        let _ = LIVE.try_with(|live| live.set(live.get() - n as isize));
    }

    // SAFETY: every call is forwarded to `System` unchanged; the counters are
    // thread-local `Cell`s with const initializers, which neither allocate nor
    // register destructors.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller's contract for `alloc`, passed on.
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                add(layout.size());
            }
            p
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller's contract for `alloc_zeroed`, passed on.
            let p = unsafe { System.alloc_zeroed(layout) };
            if !p.is_null() {
                add(layout.size());
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` was allocated by `System` with `layout` (all
            // allocations go through this impl).
            unsafe { System.dealloc(ptr, layout) };
            sub(layout.size());
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: the caller's contract for `realloc`, passed on.
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                sub(layout.size());
                add(new_size);
            }
            p
        }
    }

    /// Runs `f` and returns what it returned and the most bytes this thread
    /// held at once during it, beyond what it held before.
    pub fn peak<R>(f: impl FnOnce() -> R) -> (R, usize) {
        let start = LIVE.with(Cell::get);
        PEAK.with(|p| p.set(start));
        let r = f();
        let peak = PEAK.with(Cell::get);
        (r, (peak - start).max(0) as usize)
    }
}

/// A directory for the files a target writes and reads every case: on tmpfs
/// where there is one, so that the snapshot writer's fsyncs cost nothing.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    match shm.is_dir() {
        true => tempfile::tempdir_in(shm),
        false => tempfile::tempdir(),
    }
    .expect("temp dir")
}

/// Counts what a driver ran, for its summary line.
#[derive(Default)]
pub struct Executions(Cell<u64>);

impl Executions {
    pub fn tick(&self) {
        self.0.set(self.0.get() + 1);
    }
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

// ---------------------------------------------------------------------------
// The raft message guard (node/src/transport/guard.rs).

/// One raft message from a peer, as the receiver and the raft loop read it.
pub fn raft_message(data: &[u8]) {
    let Ok(counted) = check_raft_message(data) else {
        return;
    };
    let (parsed, peak) = alloc::peak(|| Message::parse_from_bytes(data));
    assert!(
        peak <= SLACK_BYTES + PARSE_BYTES_PER_INPUT_BYTE * data.len(),
        "parsing {} guarded bytes took {peak} bytes",
        data.len()
    );
    let Ok(m) = parsed else { return };
    assert_eq!(
        m.entries.len(),
        counted,
        "the guard's entry count is what protobuf decodes"
    );
    // The raft loop parses configuration changes when it applies them: the
    // guard vouched for their bytes too.
    for e in m.get_entries() {
        match e.get_entry_type() {
            EntryType::EntryConfChange => {
                let _ = ConfChange::parse_from_bytes(e.get_data());
            }
            EntryType::EntryConfChangeV2 => {
                let _ = ConfChangeV2::parse_from_bytes(e.get_data());
            }
            EntryType::EntryNormal => {}
        }
    }
}

// ---------------------------------------------------------------------------
// The peer envelope (node/src/transport/receiver.rs, `accept_envelope`).

/// Member 1 of cluster "c" (members 1, 2, 3), its receiver and what it feeds.
pub struct EnvelopeTarget {
    rt: tokio::runtime::Runtime,
    receiver: Receiver,
    inbox: InboxReceiver,
    _dir: tempfile::TempDir,
}

pub const CLUSTER: &str = "c";
pub const SELF_ID: u64 = 1;

impl EnvelopeTarget {
    pub fn new() -> EnvelopeTarget {
        let dir = scratch_dir();
        let snapshots = SnapshotStore::open(dir.path()).expect("snapshot store");
        let (inbox, inbox_rx) = Inbox::new();
        let members: BTreeSet<u64> = [1, 2, 3].into();
        let (_tx, members_rx) = tokio::sync::watch::channel(members);
        let receiver = Receiver::new(
            ReceiverConfig {
                cluster_id: CLUSTER.into(),
                id: SELF_ID,
                snapshot: SnapshotLimits::default(),
            },
            inbox,
            snapshots,
            StagedSnapshot::default(),
            members_rx,
            Metrics::new(),
            None,
        );
        EnvelopeTarget {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            receiver,
            inbox: inbox_rx,
            _dir: dir,
        }
    }

    /// Hands `env` to the receiver as a plaintext peer would (no certificate);
    /// returns its answer, the messages it queued for raft, and the peak bytes
    /// the call allocated.
    pub fn accept(
        &mut self,
        env: RaftEnvelope,
    ) -> (Result<(u64, u64), tonic::Status>, Vec<Message>, usize) {
        let (answer, peak) =
            alloc::peak(|| self.rt.block_on(self.receiver.accept_envelope(None, env)));
        let mut queued = Vec::new();
        while let Ok(m) = self.inbox.priority.try_recv() {
            queued.push(m);
        }
        while let Ok(m) = self.inbox.bulk.try_recv() {
            queued.push(m);
        }
        (answer, queued, peak)
    }
}

impl Default for EnvelopeTarget {
    fn default() -> Self {
        Self::new()
    }
}

/// One `Send` request's body from a peer: prost decodes it (tonic's codec),
/// then the receiver checks and queues it.
pub fn peer_envelope(target: &mut EnvelopeTarget, data: &[u8]) {
    // As the peer port's codec does (proto/codec.rs): top-level fields
    // counted, then prost.
    let (decoded, peak) = alloc::peak(|| {
        count_fields(data, MAX_FIELDS).ok()?;
        RaftEnvelope::decode(data).ok()
    });
    assert!(
        peak <= SLACK_BYTES + PARSE_BYTES_PER_INPUT_BYTE * data.len(),
        "decoding an envelope of {} bytes took {peak} bytes",
        data.len()
    );
    let Some(env) = decoded else { return };
    envelope(target, env, data.len());
}

/// The receiver's half of [`peer_envelope`], for envelopes built as values;
/// `wire_len` is the size of their encoding, which the memory bound scales with.
pub fn envelope(target: &mut EnvelopeTarget, env: RaftEnvelope, wire_len: usize) {
    let sent = env.messages.len() as u64;
    let from = env.from;
    // Log entries the envelope carries, if every message passes the guard.
    let entries: Option<usize> = env
        .messages
        .iter()
        .map(|m| check_raft_message(m).ok())
        .sum();
    let (answer, queued, peak) = target.accept(env);
    assert!(
        peak <= SLACK_BYTES + PARSE_BYTES_PER_INPUT_BYTE * wire_len,
        "an envelope of {wire_len} bytes took {peak} bytes to check"
    );
    match answer {
        Ok((accepted, dropped)) => {
            assert_eq!(accepted + dropped, sent, "every message accounted for");
            assert_eq!(queued.len() as u64, accepted, "accepted is what was queued");
            assert!(entries.is_some(), "accepted messages all passed the guard");
            for m in &queued {
                assert_eq!((m.from, m.to), (from, SELF_ID), "{m:?}");
            }
        }
        Err(s) => {
            assert!(
                matches!(s.code(), Code::InvalidArgument | Code::FailedPrecondition),
                "{s:?}"
            );
            assert!(
                queued.is_empty(),
                "nothing of a refused envelope reaches raft"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The snapshot chunk stream (node/src/transport/snapshot.rs, `Assembler`).

/// What a well-formed stream carries, by the framing's rules alone (the
/// reference model): `Some(payload)` if `chunks` is one.
pub fn well_formed(chunks: &[SnapshotChunk]) -> Option<Vec<u8>> {
    let (first, rest) = chunks.split_first()?;
    let Some(Kind::Header(h)) = &first.kind else {
        return None;
    };
    let mut payload = Vec::new();
    for c in rest {
        match &c.kind {
            Some(Kind::Payload(p)) => payload.extend_from_slice(p),
            _ => return None,
        }
    }
    let lasts: Vec<bool> = chunks.iter().map(|c| c.last).collect();
    let last_only_at_end = lasts[..lasts.len() - 1].iter().all(|l| !l) && lasts[lasts.len() - 1];
    (last_only_at_end
        && payload.len() as u64 == h.total_size
        && crc32c::crc32c(&payload) == h.crc32c)
        .then_some(payload)
}

/// A `SendSnapshot` stream's chunks, received as `Receiver::accept_snapshot`
/// does: the header first, then payload until the stream ends, then `finish`.
pub fn snapshot_stream(chunks: Vec<SnapshotChunk>) {
    let model = well_formed(&chunks);
    let mut asm = Assembler::default();
    let mut stream = chunks.into_iter();
    let mut got = Vec::new();
    let result = (|| {
        let h = asm.header(stream.next())?;
        for chunk in stream {
            if let Frame::Payload(p) = asm.accept(chunk)? {
                got.extend_from_slice(&p);
                assert!(
                    got.len() as u64 <= h.total_size,
                    "payload beyond the announced {} bytes handed out",
                    h.total_size
                );
            }
        }
        asm.finish()
    })();
    match (result, model) {
        (Ok(n), Some(want)) => {
            assert_eq!(n, want.len() as u64);
            assert_eq!(got, want, "the payload handed out is the one sent");
        }
        (Err(_), None) => {}
        (r, m) => panic!(
            "assembler says {r:?}, the framing rules say {}",
            if m.is_some() {
                "well formed"
            } else {
                "malformed"
            }
        ),
    }
}

/// Bytes as a stream of length-delimited `SnapshotChunk`s (gRPC frames each
/// message; prost decodes each); decoding stops at the first bad one.
pub fn snapshot_stream_bytes(mut data: &[u8]) {
    let mut chunks = Vec::new();
    while !data.is_empty() && chunks.len() < 64 {
        match SnapshotChunk::decode_length_delimited(&mut data) {
            Ok(c) => chunks.push(c),
            Err(_) => break,
        }
    }
    snapshot_stream(chunks);
}

// ---------------------------------------------------------------------------
// The backup file reader (node/src/storage/snapshot_store.rs `open_backup`,
// node/src/state_machine.rs `KvStateMachine::load`).

/// A file to hand to the reader, rewritten for each input.
pub struct BackupTarget {
    dir: tempfile::TempDir,
}

impl BackupTarget {
    pub fn new() -> BackupTarget {
        BackupTarget { dir: scratch_dir() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("backup.snap")
    }
}

impl Default for BackupTarget {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads a backup as `raft-node --restore-from` and a received snapshot's
/// install do: header, body loaded into a state machine, then read to the end,
/// where the trailer's CRC32C is checked. Returns the state, or the first error.
pub fn read_backup(path: &Path) -> io::Result<KvStateMachine> {
    let (_, _, mut body) = open_backup(path)?;
    let sm = KvStateMachine::load(&mut body)?;
    io::copy(&mut body, &mut io::sink())?;
    Ok(sm)
}

/// Any bytes as a backup file.
pub fn backup_file(target: &BackupTarget, data: &[u8]) -> io::Result<KvStateMachine> {
    let path = target.path();
    std::fs::write(&path, data).expect("write the input");
    let (read, peak) = alloc::peak(|| read_backup(&path));
    // The reader's buffer (1 MiB), one read step (1 MiB) and what the file
    // holds: a size the file declares is not allocated before its bytes are there.
    assert!(
        peak <= 2 * SLACK_BYTES + 2 * data.len(),
        "reading a backup of {} bytes took {peak} bytes",
        data.len()
    );
    if let Ok(sm) = &read {
        // Whatever loaded dumps again as a body the reader accepts.
        let mut body = Vec::new();
        sm.dump(&mut body).expect("dump");
        let again = KvStateMachine::load(&mut body.as_slice()).expect("a dump loads");
        assert_eq!(again.len(), sm.len());
    }
    read
}

// ---------------------------------------------------------------------------
// The admin and peer address parser (node/src/transport/address.rs).

/// An address given to `upsert-peers`, `--peers`, `--admin` or learned from a
/// peer: if the parser accepts it, the dialer must be able to dial it, and
/// dial that host and port (the transport's peer table builds the endpoint
/// only after validating, and shows the address as given).
pub fn peer_address(addr: &str) {
    let valid = validate_peer_addr(addr);
    let endpoint = raftlane_tls::Dialer::Plaintext.endpoint(addr);
    if valid.is_ok() {
        let endpoint = endpoint.unwrap_or_else(|e| {
            panic!("{addr:?} passes validate_peer_addr but the dialer cannot use it: {e}")
        });
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        let uri = endpoint.uri();
        assert_eq!(
            uri.port_u16(),
            port.parse().ok(),
            "{addr:?}: the port dialled"
        );
        assert_eq!(uri.host(), Some(host), "{addr:?}: the host dialled");
    }
}

/// Bytes as an address (lossy UTF-8, as an operator's flag or a peer's string
/// might be garbled).
pub fn peer_address_bytes(data: &[u8]) {
    peer_address(&String::from_utf8_lossy(data));
}
