//! The gRPC peer transport. Each peer has a bounded queue drained by its own task
//! that batches what is queued into one envelope per call; snapshots go by
//! `SendSnapshot`, streamed from disk. Enqueueing never blocks the raft loop: a full
//! queue drops the message, counts it, and reports the peer unreachable.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use raftlane_proto::admin::{LaneStatus, PeerStatus};
use raftlane_proto::transport::raft_transport_client::RaftTransportClient;
use raftlane_proto::transport::{RaftEnvelope, SnapshotHeader};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::channels::{ChannelPool, ChannelSettings};
use super::report::{Report, ReportSender};
use super::snapshot::{chunks, measure, CHUNK_SIZE};
use super::{validate_peer_addr, AddrError, Transport};
use crate::metrics::{Dropped, Kind, Metrics, PeerLane, SendError};
use crate::storage::SnapshotStore;

/// Largest envelope or chunk a member sends or accepts.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// A backlog is packed into one envelope until it holds this many bytes.
const BATCH_BYTES: usize = 4 << 20;
/// Snapshots sent at once; a snapshot beyond that fails at once and raft retries.
const MAX_CONCURRENT_SNAPSHOT_SENDS: usize = 2;
/// Snapshot sends may take this long at least, more for big ones (1 MiB/s).
const MIN_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);
const LANE: &str = "unary";

#[derive(Clone, Debug)]
pub struct GrpcConfig {
    pub cluster_id: String,
    pub id: u64,
    /// This member's peer address as others reach it.
    pub advertise_addr: String,
    /// A send that has not completed by then fails and reports the peer unreachable.
    pub send_timeout: Duration,
    pub queue_capacity: usize,
    pub channel: ChannelSettings,
}

pub struct GrpcTransport {
    shared: Arc<Shared>,
}

struct Shared {
    cfg: GrpcConfig,
    pool: ChannelPool,
    peers: Mutex<BTreeMap<u64, Peer>>,
    reports: ReportSender,
    snapshots: SnapshotStore,
    metrics: Metrics,
    snapshot_slots: Arc<Semaphore>,
}

struct Peer {
    addr: String,
    queue: mpsc::Sender<Message>,
    channel: Channel,
    stats: Arc<PeerStats>,
    cancel: CancellationToken,
}

#[derive(Default)]
struct PeerStats {
    sent: AtomicU64,
    dropped: AtomicU64,
    last_error: Mutex<String>,
}

impl GrpcTransport {
    pub fn new(
        cfg: GrpcConfig,
        reports: ReportSender,
        snapshots: SnapshotStore,
        metrics: Metrics,
    ) -> GrpcTransport {
        GrpcTransport {
            shared: Arc::new(Shared {
                pool: ChannelPool::new(cfg.channel.clone()),
                cfg,
                peers: Mutex::default(),
                reports,
                snapshots,
                metrics,
                snapshot_slots: Arc::new(Semaphore::new(MAX_CONCURRENT_SNAPSHOT_SENDS)),
            }),
        }
    }
}

impl Shared {
    fn drop_msg(&self, to: u64, m: &Message, reason: &'static str) {
        self.metrics
            .dropped
            .get_or_create(&Dropped {
                peer: to,
                lane: LANE,
                reason,
            })
            .inc();
        if m.get_msg_type() == MessageType::MsgSnapshot {
            self.report(Report::Snapshot {
                to,
                finished: false,
            });
        } else {
            self.report(Report::Unreachable(to));
        }
    }

    fn report(&self, r: Report) {
        let kind = match r {
            Report::Unreachable(_) => "unreachable",
            Report::Snapshot { finished: true, .. } => "snapshot_finish",
            Report::Snapshot {
                finished: false, ..
            } => "snapshot_failure",
        };
        self.metrics.reports.get_or_create(&Kind { kind }).inc();
        self.reports.post(r);
    }

    fn send_error(&self, to: u64, stats: &PeerStats, code: String, detail: String) {
        self.metrics
            .send_errors
            .get_or_create(&SendError {
                peer: to,
                lane: LANE,
                code,
            })
            .inc();
        *stats.last_error.lock().expect("stats poisoned") = detail;
    }

    fn envelope(&self, to: u64, messages: Vec<Vec<u8>>) -> RaftEnvelope {
        RaftEnvelope {
            cluster_id: self.cfg.cluster_id.clone(),
            from: self.cfg.id,
            to,
            from_addr: self.cfg.advertise_addr.clone(),
            messages,
        }
    }
}

fn client(channel: Channel) -> RaftTransportClient<Channel> {
    RaftTransportClient::new(channel)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
}

/// Drains one peer's queue until cancelled or the queue is closed.
async fn run_peer(
    shared: Arc<Shared>,
    to: u64,
    channel: Channel,
    mut queue: mpsc::Receiver<Message>,
    stats: Arc<PeerStats>,
    cancel: CancellationToken,
) {
    let mut client = client(channel);
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => break,
            m = queue.recv() => match m { Some(m) => m, None => break },
        };
        let mut batch = vec![first.write_to_bytes().expect("raft messages encode")];
        let mut bytes = batch[0].len();
        while bytes < BATCH_BYTES {
            match queue.try_recv() {
                Ok(m) => {
                    let b = m.write_to_bytes().expect("raft messages encode");
                    bytes += b.len();
                    batch.push(b);
                }
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let env = shared.envelope(to, batch);
        let result = tokio::select! {
            _ = cancel.cancelled() => break,
            r = tokio::time::timeout(shared.cfg.send_timeout, client.send(env)) => r,
        };
        match result {
            Ok(Ok(_)) => {
                stats.sent.fetch_add(n, Ordering::Relaxed);
                shared
                    .metrics
                    .sent
                    .get_or_create(&PeerLane {
                        peer: to,
                        lane: LANE,
                    })
                    .inc_by(n);
            }
            Ok(Err(status)) => {
                tracing::debug!(peer = to, code = ?status.code(), message = status.message(), "peer send failed");
                shared.send_error(
                    to,
                    &stats,
                    format!("{:?}", status.code()),
                    status.message().to_string(),
                );
                shared.report(Report::Unreachable(to));
            }
            Err(_) => {
                shared.send_error(
                    to,
                    &stats,
                    "DeadlineExceeded".into(),
                    "send deadline exceeded".into(),
                );
                shared.report(Report::Unreachable(to));
            }
        }
    }
    // Removed or replaced: what is still queued is dropped, counted, not reported.
    queue.close();
    let mut left = 0;
    while queue.try_recv().is_ok() {
        left += 1;
    }
    if left > 0 {
        stats.dropped.fetch_add(left, Ordering::Relaxed);
        shared
            .metrics
            .dropped
            .get_or_create(&Dropped {
                peer: to,
                lane: LANE,
                reason: "peer_closed",
            })
            .inc_by(left);
    }
}

/// Streams one snapshot file to a peer and reports Finish only on its ack.
async fn send_snapshot(
    shared: Arc<Shared>,
    to: u64,
    channel: Channel,
    m: Message,
    cancel: CancellationToken,
    _slot: tokio::sync::OwnedSemaphorePermit,
) {
    let meta = m.get_snapshot().get_metadata();
    let path = shared.snapshots.path(meta.term, meta.index);
    let result = async {
        let (total_size, crc32c) = measure(&path)
            .await
            .map_err(|e| format!("snapshot file {}: {e}", path.display()))?;
        let header = SnapshotHeader {
            cluster_id: shared.cfg.cluster_id.clone(),
            from: shared.cfg.id,
            to,
            from_addr: shared.cfg.advertise_addr.clone(),
            message: m.write_to_bytes().expect("raft messages encode"),
            total_size,
            crc32c,
        };
        let limit = MIN_SNAPSHOT_TIMEOUT.max(Duration::from_secs(total_size >> 20));
        let mut client = client(channel);
        let call = client.send_snapshot(chunks(header, path.clone(), CHUNK_SIZE));
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(_)) => Ok(total_size),
            Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
            Err(_) => Err("snapshot send deadline exceeded".to_string()),
        }
    };
    let outcome = tokio::select! {
        // Cancelled on purpose (peer removed or replaced): not a failure to report.
        _ = cancel.cancelled() => return,
        r = result => r,
    };
    match outcome {
        Ok(bytes) => {
            shared.metrics.snapshot_bytes_sent.inc_by(bytes);
            tracing::info!(peer = to, index = meta.index, bytes, "snapshot sent");
            shared.report(Report::Snapshot { to, finished: true });
        }
        Err(e) => {
            tracing::warn!(peer = to, index = meta.index, error = %e, "snapshot send failed");
            shared
                .metrics
                .send_errors
                .get_or_create(&SendError {
                    peer: to,
                    lane: "snapshot",
                    code: "snapshot".into(),
                })
                .inc();
            shared.report(Report::Snapshot {
                to,
                finished: false,
            });
        }
    }
}

impl Transport for GrpcTransport {
    fn send(&self, msgs: Vec<Message>) {
        let sh = &self.shared;
        let peers = sh.peers.lock().expect("peer table poisoned");
        for m in msgs {
            if raft::raw_node::is_local_msg(m.get_msg_type()) {
                continue;
            }
            let to = m.to;
            let Some(peer) = peers.get(&to) else {
                sh.drop_msg(to, &m, "no_address");
                continue;
            };
            if m.get_msg_type() == MessageType::MsgSnapshot {
                match sh.snapshot_slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        tokio::spawn(send_snapshot(
                            sh.clone(),
                            to,
                            peer.channel.clone(),
                            m,
                            peer.cancel.child_token(),
                            slot,
                        ));
                    }
                    Err(_) => sh.drop_msg(to, &m, "snapshot_busy"),
                }
                continue;
            }
            if let Err(e) = peer.queue.try_send(m) {
                peer.stats.dropped.fetch_add(1, Ordering::Relaxed);
                sh.drop_msg(to, &e.into_inner(), "queue_full");
            }
        }
    }

    fn upsert_peer(&self, id: u64, addr: &str) -> Result<bool, AddrError> {
        validate_peer_addr(addr)?;
        let sh = &self.shared;
        let mut peers = sh.peers.lock().expect("peer table poisoned");
        if peers.get(&id).is_some_and(|p| p.addr == addr) {
            return Ok(false);
        }
        let channel = sh.pool.acquire(addr)?;
        if let Some(old) = peers.remove(&id) {
            old.cancel.cancel();
            sh.pool.release(&old.addr);
            tracing::info!(peer = id, old = %old.addr, new = %addr, "peer address changed");
        }
        let (tx, rx) = mpsc::channel(sh.cfg.queue_capacity);
        let stats = Arc::new(PeerStats::default());
        let cancel = CancellationToken::new();
        tokio::spawn(run_peer(
            sh.clone(),
            id,
            channel.clone(),
            rx,
            stats.clone(),
            cancel.clone(),
        ));
        peers.insert(
            id,
            Peer {
                addr: addr.to_string(),
                queue: tx,
                channel,
                stats,
                cancel,
            },
        );
        Ok(true)
    }

    fn learn_peer(&self, id: u64, addr: &str) {
        let known = self
            .shared
            .peers
            .lock()
            .expect("peer table poisoned")
            .contains_key(&id);
        if !known && id != self.shared.cfg.id {
            if let Err(e) = self.upsert_peer(id, addr) {
                tracing::warn!(peer = id, error = %e, "ignoring address learned from peer traffic");
            }
        }
    }

    fn remove_peer(&self, id: u64) {
        let sh = &self.shared;
        if let Some(old) = sh.peers.lock().expect("peer table poisoned").remove(&id) {
            old.cancel.cancel();
            sh.pool.release(&old.addr);
        }
    }

    fn peers(&self) -> Vec<PeerStatus> {
        let peers = self.shared.peers.lock().expect("peer table poisoned");
        peers
            .iter()
            .map(|(id, p)| PeerStatus {
                id: *id,
                address: p.addr.clone(),
                no_stream: false,
                lanes: vec![LaneStatus {
                    name: LANE.into(),
                    stream_open: false,
                    queued: (p.queue.max_capacity() - p.queue.capacity()) as u64,
                    sent: p.stats.sent.load(Ordering::Relaxed),
                    dropped: p.stats.dropped.load(Ordering::Relaxed),
                }],
                last_error: p.stats.last_error.lock().expect("stats poisoned").clone(),
            })
            .collect()
    }
}
