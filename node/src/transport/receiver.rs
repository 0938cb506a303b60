//! The receiving side of the peer transport (`RaftTransport` service). It checks
//! who is talking before raft sees anything: a wrong cluster id or a `to` that is
//! not this member is refused with FAILED_PRECONDITION (a reused pod IP must never
//! feed another cluster), untrusted bytes are guarded before raft-rs parses them,
//! message types no member sends to another are refused, and a full raft inbox
//! drops the message but keeps the stream. A sender's address is learned only
//! from traffic that passed every check, and only for a current member.
//!
//! A snapshot is received to its own temporary file within a size limit and
//! deadlines, verified, and loaded into a state machine on a blocking task; one
//! that does not load is refused (DATA_LOSS), so the sender reports a failure and
//! raft sends it again, instead of the raft loop failing while installing it.

use std::collections::BTreeSet;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use raftlane_proto::transport::raft_transport_server::RaftTransport;
use raftlane_proto::transport::{Ack, RaftEnvelope, SnapshotChunk};
use raftlane_tls::Caller;
use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, Mutex as AsyncMutex};
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use super::guard::check_raft_message;
use super::inbox::Inbox;
use super::snapshot::{Assembler, Frame, SnapshotLimits};
use super::PeerTable;
use crate::metrics::{Kind, Metrics};
use crate::state_machine::KvStateMachine;
use crate::storage::{SnapshotStore, StagedSnapshot};

/// Snapshots received at once; a further sender waits up to the idle timeout.
const MAX_CONCURRENT_SNAPSHOT_RECEIVES: usize = 2;
/// At most one "inbox full" log line per this interval.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(5);
/// Most raft messages in one envelope: the largest `--max-batch-messages`.
const MAX_ENVELOPE_MESSAGES: usize = 65_536;
/// Most log entries in one envelope. A sender packs at most ~5 MiB of entries
/// (its batch budget plus one message) of at least 6 bytes each, under 1 Mi;
/// parsed, each costs ~100 bytes, so this bounds one envelope's parse to
/// ~100 MiB where crafted 2-byte entries could take gigabytes.
const MAX_ENVELOPE_ENTRIES: usize = 1 << 20;

/// Who this member is and what it accepts in snapshots.
#[derive(Clone, Debug)]
pub struct ReceiverConfig {
    pub cluster_id: String,
    pub id: u64,
    pub snapshot: SnapshotLimits,
}

/// Everything the receiving side needs; shared by the gRPC service and the
/// in-memory transport.
pub struct Receiver {
    pub id: u64,
    cluster_id: String,
    pub inbox: Inbox,
    pub snapshots: SnapshotStore,
    /// Where a loaded snapshot waits for the raft loop to install it.
    staged: StagedSnapshot,
    /// The current members: only their addresses are learned from traffic.
    members: watch::Receiver<BTreeSet<u64>>,
    metrics: Metrics,
    /// Learns the address of a sender this member has no address for yet;
    /// none where members have no addresses (the in-memory network).
    peers: Option<Arc<dyn PeerTable>>,
    limits: SnapshotLimits,
    /// Bytes promised to snapshot receives in progress, so that concurrent
    /// ones cannot together claim more than the volume has free.
    reserved: Mutex<u64>,
    snapshot_slots: tokio::sync::Semaphore,
    last_drop_log: AsyncMutex<Option<std::time::Instant>>,
}

impl Receiver {
    pub fn new(
        cfg: ReceiverConfig,
        inbox: Inbox,
        snapshots: SnapshotStore,
        staged: StagedSnapshot,
        members: watch::Receiver<BTreeSet<u64>>,
        metrics: Metrics,
        peers: Option<Arc<dyn PeerTable>>,
    ) -> Receiver {
        Receiver {
            id: cfg.id,
            cluster_id: cfg.cluster_id,
            inbox,
            snapshots,
            staged,
            members,
            metrics,
            peers,
            limits: cfg.snapshot,
            reserved: Mutex::new(0),
            snapshot_slots: tokio::sync::Semaphore::new(MAX_CONCURRENT_SNAPSHOT_RECEIVES),
            last_drop_log: AsyncMutex::new(None),
        }
    }

    fn reject(&self, reason: &'static str, status: Status) -> Status {
        self.metrics
            .rejected
            .get_or_create(&Kind { kind: reason })
            .inc();
        status
    }

    /// `sender` is the member id the connection's certificate proved (none
    /// on plaintext): with TLS it, not the envelope's strings, says who sent.
    fn check_identity(
        &self,
        sender: Option<u64>,
        cluster_id: &str,
        from: u64,
        to: u64,
    ) -> Result<(), Status> {
        if let Some(proved) = sender.filter(|p| *p != from) {
            return Err(self.reject(
                "certificate",
                Status::permission_denied(format!(
                    "envelope says it is from member {from}, but the connection's certificate is member {proved}'s"
                )),
            ));
        }
        if cluster_id != self.cluster_id {
            return Err(self.reject(
                "cluster_id",
                Status::failed_precondition(format!(
                    "cluster id {:?} does not match this member's {:?}",
                    shown(cluster_id),
                    self.cluster_id
                )),
            ));
        }
        if to != self.id {
            return Err(self.reject(
                "to",
                Status::failed_precondition(format!(
                    "envelope is for member {to}, this is member {}",
                    self.id
                )),
            ));
        }
        if from == 0 || from == self.id {
            return Err(self.reject(
                "from",
                Status::invalid_argument(format!(
                    "envelope from member {from}: a peer is a member id of 1 or more other than this member's {}",
                    self.id
                )),
            ));
        }
        Ok(())
    }

    /// Records where a sender listens, once all it sent has passed every check,
    /// if it is a current member (an unknown id must not grow the peer table), or
    /// while this member knows no configuration yet: a joiner started without
    /// `--peers` must learn where its leader is to answer it (the table's cap
    /// still holds).
    fn learn(&self, from: u64, from_addr: &str) {
        let Some(peers) = &self.peers else { return };
        let members = self.members.borrow();
        if !from_addr.is_empty() && (members.is_empty() || members.contains(&from)) {
            peers.learn_peer(from, from_addr);
        }
    }

    /// Parses one raft message from untrusted bytes and checks it belongs on this
    /// path; `entries` counts the log entries of the envelope so far.
    fn decode(
        &self,
        bytes: &[u8],
        from: u64,
        allow_snapshot: bool,
        entries: &mut usize,
    ) -> Result<Message, Status> {
        let n = check_raft_message(bytes).map_err(|e| {
            self.reject(
                "malformed",
                Status::invalid_argument(format!("raft message refused: {e}")),
            )
        })?;
        *entries += n;
        // A snapshot message never carries log entries.
        let (what, limit) = if allow_snapshot {
            ("snapshot header", 0)
        } else {
            ("envelope", MAX_ENVELOPE_ENTRIES)
        };
        if *entries > limit {
            return Err(self.reject(
                "envelope_size",
                Status::invalid_argument(format!("{what} carries more than {limit} log entries")),
            ));
        }
        let m = Message::parse_from_bytes(bytes).map_err(|e| {
            self.reject(
                "malformed",
                Status::invalid_argument(format!("raft message undecodable: {e}")),
            )
        })?;
        let t = m.get_msg_type();
        if let Some(why) = never_sent_by_peers(t) {
            return Err(self.reject(
                "message_type",
                Status::invalid_argument(format!("{t:?} is refused: {why}")),
            ));
        }
        let bad = if m.to != self.id || m.from != from {
            Some(format!(
                "message from {} to {} inside an envelope from {from} to {}",
                m.from, m.to, self.id
            ))
        } else if raft::raw_node::is_local_msg(t) {
            Some(format!(
                "{t:?} is local to a member and never crosses the network"
            ))
        } else if m.term == 0 && t != MessageType::MsgReadIndex {
            // raft-rs steps a term-0 message as a local one, skipping its term
            // checks; only a forwarded ReadIndex legitimately travels without one.
            Some(format!("{t:?} with term 0 (only MsgReadIndex may omit it)"))
        } else if (t == MessageType::MsgSnapshot) != allow_snapshot {
            Some(format!("{t:?} is not accepted on this call"))
        } else {
            None
        };
        match bad {
            Some(why) => Err(self.reject("malformed", Status::invalid_argument(why))),
            None => Ok(m),
        }
    }

    /// Checks and queues one envelope; returns (accepted, dropped). Nothing of
    /// an envelope reaches raft unless all of it is valid.
    pub async fn accept_envelope(
        &self,
        sender: Option<u64>,
        env: RaftEnvelope,
    ) -> Result<(u64, u64), Status> {
        self.check_identity(sender, &env.cluster_id, env.from, env.to)?;
        if env.messages.len() > MAX_ENVELOPE_MESSAGES {
            return Err(self.reject(
                "envelope_size",
                Status::invalid_argument(format!(
                    "envelope carries {} messages, more than {MAX_ENVELOPE_MESSAGES}",
                    env.messages.len()
                )),
            ));
        }
        let mut entries = 0;
        let msgs = env
            .messages
            .iter()
            .map(|b| self.decode(b, env.from, false, &mut entries))
            .collect::<Result<Vec<_>, _>>()?;
        self.learn(env.from, &env.from_addr);
        let (mut accepted, mut dropped) = (0, 0);
        for m in msgs {
            if self.inbox.try_deliver(m) {
                accepted += 1;
            } else {
                dropped += 1;
            }
        }
        self.metrics.received.inc_by(accepted);
        if dropped > 0 {
            self.metrics.inbox_dropped.inc_by(dropped);
            let mut last = self.last_drop_log.lock().await;
            if last.is_none_or(|t| t.elapsed() >= DROP_LOG_INTERVAL) {
                *last = Some(std::time::Instant::now());
                tracing::warn!(
                    from = env.from,
                    total = self.inbox.dropped(),
                    "raft inbox full: dropping inbound messages"
                );
            }
        }
        Ok((accepted, dropped))
    }

    /// Admits a snapshot of `size` bytes against the limit and the free space
    /// not yet promised to receives in progress, and promises it until dropped.
    fn reserve(&self, size: u64) -> Result<Reservation<'_>, Status> {
        let free = self
            .snapshots
            .free_bytes()
            .map_err(|e| Status::internal(format!("snapshot spool: free space: {e}")))?;
        let mut reserved = self.reserved.lock().expect("reservations poisoned");
        self.limits
            .admit(size, free.saturating_sub(*reserved))
            .map_err(|e| self.reject("snapshot_size", Status::resource_exhausted(e.to_string())))?;
        *reserved += size;
        Ok(Reservation {
            reserved: &self.reserved,
            bytes: size,
        })
    }

    /// The next chunk, or DEADLINE_EXCEEDED when none came within the idle
    /// timeout or the receive ran past its total deadline (`total`: when, and
    /// for how many bytes).
    async fn next_chunk(
        &self,
        stream: &mut Streaming<SnapshotChunk>,
        total: Option<(Instant, u64)>,
    ) -> Result<Option<SnapshotChunk>, Status> {
        let idle_at = Instant::now() + self.limits.idle;
        let until = total.map_or(idle_at, |(at, _)| at.min(idle_at));
        match tokio::time::timeout_at(until, stream.message()).await {
            Ok(chunk) => chunk,
            Err(_) => {
                let why = match total {
                    Some((at, size)) if at <= idle_at => format!(
                        "snapshot of {size} bytes not received within its total deadline of {:?} (--snapshot-timeout-ms)",
                        self.limits.total(size)
                    ),
                    _ => format!(
                        "snapshot receive idle: no chunk for {:?} (--snapshot-idle-timeout-ms)",
                        self.limits.idle
                    ),
                };
                Err(self.reject("snapshot_deadline", Status::deadline_exceeded(why)))
            }
        }
    }

    /// Receives one snapshot to disk, verifies and loads it, and hands the
    /// MsgSnapshot to raft. Answers only once raft has it queued: the sender
    /// reports Finish on this answer.
    pub async fn accept_snapshot(
        &self,
        sender: Option<u64>,
        mut stream: Streaming<SnapshotChunk>,
    ) -> Result<Ack, Status> {
        let started = Instant::now();
        let mut asm = Assembler::default();
        let first = self.next_chunk(&mut stream, None).await?;
        let h = asm
            .header(first)
            .map_err(|e| self.reject("snapshot_frame", e.into()))?;
        self.check_identity(sender, &h.cluster_id, h.from, h.to)?;
        let m = self.decode(&h.message, h.from, true, &mut 0)?;
        let meta = m.get_snapshot().get_metadata();
        let (term, index, size) = (meta.term, meta.index, h.total_size);
        if index == 0 || term == 0 {
            return Err(self.reject(
                "malformed",
                Status::invalid_argument(format!(
                    "snapshot header has term {term} index {index}: neither may be 0"
                )),
            ));
        }
        self.learn(h.from, &h.from_addr);
        // Space is reserved only once a slot is held: a receive waiting in line
        // must not make the one running look short of space.
        let _slot = tokio::time::timeout(self.limits.idle, self.snapshot_slots.acquire())
            .await
            .map_err(|_| {
                self.reject(
                    "snapshot_busy",
                    Status::resource_exhausted(format!(
                        "{MAX_CONCURRENT_SNAPSHOT_RECEIVES} snapshot receives already running"
                    )),
                )
            })?
            .map_err(|_| Status::unavailable("shutting down"))?;
        let _space = self.reserve(size)?;
        let total = Some((started + self.limits.total(size), size));
        let (file, tmp) = self
            .snapshots
            .create_incoming(term, index)
            .map_err(|e| Status::internal(format!("snapshot spool: {e}")))?;
        let mut partial = PartialFile(Some(tmp.clone()));
        let mut file = tokio::fs::File::from_std(file);
        while let Some(chunk) = self.next_chunk(&mut stream, total).await? {
            let frame = asm
                .accept(chunk)
                .map_err(|e| self.reject("snapshot_frame", e.into()))?;
            // A second header is refused by the assembler: only payload is left.
            if let Frame::Payload(p) = frame {
                file.write_all(&p)
                    .await
                    .map_err(|e| Status::internal(format!("snapshot spool: {e}")))?;
                self.metrics.snapshot_bytes_received.inc_by(p.len() as u64);
            }
        }
        asm.finish()
            .map_err(|e| self.reject("snapshot_frame", e.into()))?;
        let file = file.into_std().await;
        // From here the install removes a copy it refuses.
        partial.0 = None;
        let store = self.snapshots.clone();
        let loaded =
            tokio::task::spawn_blocking(move || install_received(&store, file, &tmp, term, index))
                .await
                .map_err(|e| Status::internal(format!("snapshot install: {e}")))?;
        self.hand_over(m, loaded).await?;
        Ok(Ack {
            accepted: 1,
            dropped: 0,
        })
    }

    /// Stages a loaded snapshot for the raft loop, then gives raft its
    /// MsgSnapshot; a snapshot that did not load is refused with DATA_LOSS.
    pub async fn hand_over(
        &self,
        m: Message,
        loaded: io::Result<KvStateMachine>,
    ) -> Result<(), Status> {
        let meta = m.get_snapshot().get_metadata();
        let (term, index) = (meta.term, meta.index);
        let sm = loaded.map_err(|e| {
            tracing::warn!(term, index, error = %e, "received snapshot refused");
            self.reject(
                "snapshot_load",
                Status::data_loss(format!(
                    "snapshot at term {term} index {index} refused: {e}"
                )),
            )
        })?;
        self.staged.stage(term, index, sm);
        if !self.inbox.deliver_snapshot(m).await {
            return Err(Status::resource_exhausted(
                "raft inbox stayed full; snapshot not delivered",
            ));
        }
        self.metrics.received.inc();
        Ok(())
    }
}

/// At most the first 64 characters of a peer's string, for an error message:
/// an answer never echoes megabytes back.
fn shown(s: &str) -> &str {
    s.char_indices().nth(64).map_or(s, |(i, _)| &s[..i])
}

/// Why a message type is never sent from one member to another, if it is not.
fn never_sent_by_peers(t: MessageType) -> Option<&'static str> {
    match t {
        MessageType::MsgPropose => {
            Some("members forward writes through the Kv API, never as raft proposals")
        }
        MessageType::MsgTransferLeader => {
            Some("leadership transfers are issued on the leader, never sent to it")
        }
        _ => None,
    }
}

/// Verifies a fully received snapshot file and loads its body in one pass,
/// installing it only if both succeed. Blocking: run it off the runtime.
pub fn install_received(
    store: &SnapshotStore,
    file: std::fs::File,
    tmp: &Path,
    term: u64,
    index: u64,
) -> io::Result<KvStateMachine> {
    store.install_incoming(file, tmp, term, index, KvStateMachine::load)
}

/// Space promised to one snapshot receive, given back when it ends.
struct Reservation<'a> {
    reserved: &'a Mutex<u64>,
    bytes: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        *self.reserved.lock().expect("reservations poisoned") -= self.bytes;
    }
}

/// A partly received snapshot file, removed unless it was handed to the
/// install: a failed or abandoned transfer must not leave its bytes on disk.
struct PartialFile(Option<std::path::PathBuf>);

impl Drop for PartialFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The member id a TLS connection's certificate proved; the peer port admits
/// only members, so with TLS there always is one.
fn sender<T>(req: &Request<T>) -> Option<u64> {
    Caller::of(req)?.identity.as_ref()?.member_id()
}

/// The gRPC face of a [`Receiver`].
#[derive(Clone)]
pub struct ReceiverService {
    receiver: Arc<Receiver>,
    closing: CancellationToken,
}

impl ReceiverService {
    /// Serves `receiver` until `closing`: then every open stream ends at once
    /// with `UNAVAILABLE`. Peers hold their lane streams for as long as the
    /// connection lives, so a member shutting down would otherwise wait for
    /// each of them to give up.
    pub fn new(receiver: Arc<Receiver>, closing: CancellationToken) -> ReceiverService {
        ReceiverService { receiver, closing }
    }

    fn closed() -> Status {
        Status::unavailable("this member is shutting down")
    }
}

#[tonic::async_trait]
impl RaftTransport for ReceiverService {
    async fn send(&self, req: Request<RaftEnvelope>) -> Result<Response<Ack>, Status> {
        let sender = sender(&req);
        let (accepted, dropped) = self
            .receiver
            .accept_envelope(sender, req.into_inner())
            .await?;
        Ok(Response::new(Ack { accepted, dropped }))
    }

    async fn send_stream(
        &self,
        req: Request<Streaming<RaftEnvelope>>,
    ) -> Result<Response<Ack>, Status> {
        let sender = sender(&req);
        let mut stream = req.into_inner();
        let mut ack = Ack::default();
        loop {
            let next = tokio::select! {
                biased;
                _ = self.closing.cancelled() => return Err(Self::closed()),
                next = stream.message() => next?,
            };
            let Some(env) = next else { break };
            let (a, d) = self.receiver.accept_envelope(sender, env).await?;
            ack.accepted += a;
            ack.dropped += d;
        }
        Ok(Response::new(ack))
    }

    async fn send_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<Ack>, Status> {
        let sender = sender(&req);
        tokio::select! {
            biased;
            _ = self.closing.cancelled() => Err(Self::closed()),
            r = self.receiver.accept_snapshot(sender, req.into_inner()) => r.map(Response::new),
        }
    }
}
