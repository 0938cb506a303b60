//! The receiving side of the peer transport (`RaftTransport` service). It checks
//! who is talking before raft sees anything: a wrong cluster id or a `to` that is
//! not this member is refused with FAILED_PRECONDITION (a reused pod IP must never
//! feed another cluster), untrusted bytes are guarded before raft-rs parses them,
//! and a full raft inbox drops the message but keeps the stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use raftlane_proto::transport::raft_transport_server::RaftTransport;
use raftlane_proto::transport::{Ack, RaftEnvelope, SnapshotChunk};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex as AsyncMutex;
use tonic::{Request, Response, Status, Streaming};

use super::guard::check_raft_message;
use super::inbox::Inbox;
use super::snapshot::{Assembler, Frame};
use super::Transport;
use crate::metrics::{Kind, Metrics};
use crate::storage::SnapshotStore;

/// Snapshots received at once; further senders wait for a slot.
const MAX_CONCURRENT_SNAPSHOT_RECEIVES: usize = 2;
/// At most one "inbox full" log line per this interval.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Everything the receiving side needs; shared by the gRPC service and the
/// in-memory transport.
pub struct Receiver {
    pub cluster_id: String,
    pub id: u64,
    pub inbox: Inbox,
    pub snapshots: SnapshotStore,
    pub metrics: Metrics,
    /// Learns the address of a sender this member has no address for yet.
    pub peers: Arc<dyn Transport>,
    snapshot_slots: tokio::sync::Semaphore,
    last_drop_log: AsyncMutex<Option<Instant>>,
}

impl Receiver {
    pub fn new(
        cluster_id: String,
        id: u64,
        inbox: Inbox,
        snapshots: SnapshotStore,
        metrics: Metrics,
        peers: Arc<dyn Transport>,
    ) -> Receiver {
        Receiver {
            cluster_id,
            id,
            inbox,
            snapshots,
            metrics,
            peers,
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

    fn check_identity(
        &self,
        cluster_id: &str,
        from: u64,
        to: u64,
        from_addr: &str,
    ) -> Result<(), Status> {
        if cluster_id != self.cluster_id {
            return Err(self.reject(
                "cluster_id",
                Status::failed_precondition(format!(
                    "cluster id {cluster_id:?} does not match this member's {:?}",
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
        if !from_addr.is_empty() {
            self.peers.learn_peer(from, from_addr);
        }
        Ok(())
    }

    /// Parses one raft message from untrusted bytes and checks it belongs on this path.
    fn decode(&self, bytes: &[u8], from: u64, allow_snapshot: bool) -> Result<Message, Status> {
        check_raft_message(bytes).map_err(|e| {
            self.reject(
                "malformed",
                Status::invalid_argument(format!("raft message refused: {e}")),
            )
        })?;
        let m = Message::parse_from_bytes(bytes).map_err(|e| {
            self.reject(
                "malformed",
                Status::invalid_argument(format!("raft message undecodable: {e}")),
            )
        })?;
        let t = m.get_msg_type();
        let bad = if m.to != self.id || m.from != from {
            Some(format!(
                "message from {} to {} inside an envelope from {from} to {}",
                m.from, m.to, self.id
            ))
        } else if raft::raw_node::is_local_msg(t) {
            Some(format!(
                "{t:?} is local to a member and never crosses the network"
            ))
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

    /// Checks and queues one envelope; returns (accepted, dropped).
    pub async fn accept_envelope(&self, env: RaftEnvelope) -> Result<(u64, u64), Status> {
        self.check_identity(&env.cluster_id, env.from, env.to, &env.from_addr)?;
        let msgs = env
            .messages
            .iter()
            .map(|b| self.decode(b, env.from, false))
            .collect::<Result<Vec<_>, _>>()?;
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
                *last = Some(Instant::now());
                tracing::warn!(
                    from = env.from,
                    total = self.inbox.dropped(),
                    "raft inbox full: dropping inbound messages"
                );
            }
        }
        Ok((accepted, dropped))
    }

    /// Receives one snapshot to disk, verifies it, and hands the MsgSnapshot to raft.
    /// Answers only once raft has it queued: the sender reports Finish on this answer.
    pub async fn accept_snapshot(
        &self,
        mut stream: Streaming<SnapshotChunk>,
    ) -> Result<Ack, Status> {
        let _slot = self
            .snapshot_slots
            .acquire()
            .await
            .map_err(|_| Status::unavailable("shutting down"))?;
        let mut asm = Assembler::default();
        let mut target: Option<(Message, tokio::fs::File, std::path::PathBuf)> = None;
        let mut partial = PartialFile(None);
        while let Some(chunk) = stream.message().await? {
            match asm
                .accept(chunk)
                .map_err(|e| self.reject("snapshot_frame", e.into()))?
            {
                Frame::Header(h) => {
                    self.check_identity(&h.cluster_id, h.from, h.to, &h.from_addr)?;
                    let m = self.decode(&h.message, h.from, true)?;
                    let meta = m.get_snapshot().get_metadata();
                    if meta.index == 0 {
                        return Err(self.reject(
                            "malformed",
                            Status::invalid_argument("snapshot header has index 0"),
                        ));
                    }
                    let (file, tmp) = self
                        .snapshots
                        .create_incoming(meta.term, meta.index)
                        .map_err(|e| Status::internal(format!("snapshot spool: {e}")))?;
                    partial.0 = Some(tmp.clone());
                    target = Some((m, tokio::fs::File::from_std(file), tmp));
                }
                Frame::Payload(p) => {
                    let (_, file, _) = target
                        .as_mut()
                        .expect("assembler refuses payload before header");
                    file.write_all(&p)
                        .await
                        .map_err(|e| Status::internal(format!("snapshot spool: {e}")))?;
                    self.metrics.snapshot_bytes_received.inc_by(p.len() as u64);
                }
            }
        }
        asm.finish()
            .map_err(|e| self.reject("snapshot_frame", e.into()))?;
        let (m, file, tmp) = target.expect("a finished snapshot had a header");
        let (term, index) = (
            m.get_snapshot().get_metadata().term,
            m.get_snapshot().get_metadata().index,
        );
        let file = file.into_std().await;
        let store = self.snapshots.clone();
        tokio::task::spawn_blocking(move || store.install_incoming(file, &tmp, term, index))
            .await
            .map_err(|e| Status::internal(format!("snapshot install: {e}")))?
            .map_err(|e| {
                self.reject(
                    "snapshot_file",
                    Status::data_loss(format!("snapshot install: {e}")),
                )
            })?;
        partial.0 = None;
        if !self.inbox.deliver_snapshot(m).await {
            return Err(Status::resource_exhausted(
                "raft inbox stayed full; snapshot not delivered",
            ));
        }
        self.metrics.received.inc();
        Ok(Ack {
            accepted: 1,
            dropped: 0,
        })
    }
}

/// A partly received snapshot file, removed unless it was installed: a failed
/// or abandoned transfer must not leave its bytes on disk.
struct PartialFile(Option<std::path::PathBuf>);

impl Drop for PartialFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The gRPC face of a [`Receiver`].
#[derive(Clone)]
pub struct ReceiverService(pub Arc<Receiver>);

#[tonic::async_trait]
impl RaftTransport for ReceiverService {
    async fn send(&self, req: Request<RaftEnvelope>) -> Result<Response<Ack>, Status> {
        let (accepted, dropped) = self.0.accept_envelope(req.into_inner()).await?;
        Ok(Response::new(Ack { accepted, dropped }))
    }

    async fn send_stream(
        &self,
        req: Request<Streaming<RaftEnvelope>>,
    ) -> Result<Response<Ack>, Status> {
        let mut stream = req.into_inner();
        let mut ack = Ack::default();
        while let Some(env) = stream.message().await? {
            let (a, d) = self.0.accept_envelope(env).await?;
            ack.accepted += a;
            ack.dropped += d;
        }
        Ok(Response::new(ack))
    }

    async fn send_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<Ack>, Status> {
        self.0
            .accept_snapshot(req.into_inner())
            .await
            .map(Response::new)
    }
}
