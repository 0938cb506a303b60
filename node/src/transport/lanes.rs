//! Lane tasks and the context they share. Each task drains its own bounded
//! queue and owns its own `SendStream` call, so it is the only writer of that
//! stream and a heartbeat never waits behind an append or a snapshot of another
//! lane. A backlog is packed into one envelope. With `--lanes 1` a single task
//! serves a heartbeat queue before the bulk queue (biased), the legacy model
//! kept for comparison.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use raftlane_proto::transport::raft_transport_client::RaftTransportClient;
use raftlane_proto::transport::{RaftEnvelope, SnapshotHeader};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Status;

use super::report::{Report, ReportSender};
use super::snapshot::send_file;
use super::stream::{is_unimplemented, NoStream, OpenStream, StreamSendError};
use crate::metrics::{Dropped, Kind, Metrics, PeerLane, SendError};
use crate::storage::SnapshotStore;

/// A backlog is packed into one envelope up to this many bytes, or up to the
/// configured number of messages.
const BATCH_BYTES: usize = 4 << 20;

/// Four isolated lanes per peer, or one multiplexed lane (for comparison).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LaneMode {
    #[value(name = "4")]
    Four,
    #[value(name = "1")]
    One,
}

/// What every lane of this member shares: who it is, how its lanes are sized
/// and send (the settings of `GrpcConfig`), and where they report. It lives
/// here, below the peer table, so that lanes never reach back up into it.
pub struct LaneContext {
    pub cluster_id: String,
    pub id: u64,
    pub advertise_addr: String,
    pub send_timeout: Duration,
    pub max_inflight: usize,
    pub mode: LaneMode,
    pub unary_only: bool,
    pub max_batch: usize,
    pub reports: ReportSender,
    pub snapshots: SnapshotStore,
    pub metrics: Metrics,
    pub snapshot_slots: Arc<Semaphore>,
}

impl LaneContext {
    pub fn report(&self, r: Report) {
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

    fn envelope(&self, to: u64, messages: Vec<Vec<u8>>) -> RaftEnvelope {
        RaftEnvelope {
            cluster_id: self.cluster_id.clone(),
            from: self.id,
            to,
            from_addr: self.advertise_addr.clone(),
            messages,
        }
    }
}

/// A message waiting in a lane, stamped for the send-wait histogram.
pub struct Queued {
    pub msg: Message,
    pub at: Instant,
}

/// Counters of one lane, read by `Status`.
pub struct LaneStats {
    pub name: &'static str,
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
    pub stream_open: AtomicBool,
}

impl LaneStats {
    pub fn new(name: &'static str) -> Arc<LaneStats> {
        Arc::new(LaneStats {
            name,
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            stream_open: AtomicBool::new(false),
        })
    }
}

/// What a lane task drains: one queue, or a heartbeat queue served first.
pub enum Inputs {
    One(mpsc::Receiver<Queued>),
    Prioritized {
        high: mpsc::Receiver<Queued>,
        low: mpsc::Receiver<Queued>,
    },
}

impl Inputs {
    async fn recv(&mut self) -> Option<Queued> {
        match self {
            Inputs::One(rx) => rx.recv().await,
            Inputs::Prioritized { high, low } => tokio::select! {
                biased;
                Some(q) = high.recv() => Some(q),
                q = low.recv() => q,
            },
        }
    }

    fn try_recv(&mut self) -> Option<Queued> {
        match self {
            Inputs::One(rx) => rx.try_recv().ok(),
            Inputs::Prioritized { high, low } => high.try_recv().or_else(|_| low.try_recv()).ok(),
        }
    }

    /// Closes the queues and returns what was still in them.
    fn close(&mut self) -> Vec<Queued> {
        let rxs: Vec<&mut mpsc::Receiver<Queued>> = match self {
            Inputs::One(rx) => vec![rx],
            Inputs::Prioritized { high, low } => vec![high, low],
        };
        let mut left = Vec::new();
        for rx in rxs {
            rx.close();
            while let Ok(q) = rx.try_recv() {
                left.push(q);
            }
        }
        left
    }
}

fn is_snapshot(q: &Queued) -> bool {
    q.msg.get_msg_type() == MessageType::MsgSnapshot
}

/// One lane's sender task.
pub struct LaneTask {
    pub ctx: Arc<LaneContext>,
    pub peer: u64,
    pub stats: Arc<LaneStats>,
    pub no_stream: Arc<NoStream>,
    /// The peer's most recent send error, shown in `Status`.
    pub last_error: Arc<Mutex<String>>,
    pub client: RaftTransportClient<Channel>,
    pub cancel: CancellationToken,
}

/// Waits for an open stream's call to end; never resolves without one.
async fn stream_ended(stream: &mut Option<OpenStream>) -> Status {
    match stream {
        Some(s) => s.ended().await,
        None => std::future::pending().await,
    }
}

impl LaneTask {
    fn labels(&self) -> PeerLane {
        PeerLane {
            peer: self.peer,
            lane: self.stats.name,
        }
    }

    /// Runs until the peer is removed or replaced.
    pub async fn run(self, mut inputs: Inputs) {
        let mut stream: Option<OpenStream> = None;
        let mut held: Option<Queued> = None;
        loop {
            let first = match held.take() {
                Some(q) => q,
                None => tokio::select! {
                    biased;
                    _ = self.cancel.cancelled() => break,
                    status = stream_ended(&mut stream) => {
                        stream = None;
                        self.stats.stream_open.store(false, Ordering::Relaxed);
                        if is_unimplemented(&status) {
                            self.mark_no_stream();
                        } else {
                            self.failed(&status, 0);
                        }
                        continue;
                    }
                    q = inputs.recv() => match q { Some(q) => q, None => break },
                },
            };
            if is_snapshot(&first) {
                self.send_snapshot(first.msg).await;
                continue;
            }
            let mut batch = vec![first];
            let mut bytes = 0;
            while bytes < BATCH_BYTES && batch.len() < self.ctx.max_batch {
                match inputs.try_recv() {
                    Some(q) if is_snapshot(&q) => {
                        held = Some(q);
                        break;
                    }
                    Some(q) => {
                        bytes += q.msg.compute_size() as usize;
                        batch.push(q);
                    }
                    None => break,
                }
            }
            self.deliver(&mut stream, batch).await;
        }
        if let Some(s) = stream {
            s.close();
        }
        self.stats.stream_open.store(false, Ordering::Relaxed);
        let left: Vec<Queued> = inputs.close().into_iter().chain(held).collect();
        self.count_dropped(left.len() as u64, "peer_closed");
        for q in left.iter().filter(|q| is_snapshot(q)) {
            self.snapshot_abandoned(&q.msg);
        }
    }

    /// raft-rs needs a report for every snapshot it sent, or it keeps the peer
    /// paused in Snapshot state: a snapshot given up on (peer replaced or removed)
    /// is reported as a failure, though not as the peer being unreachable.
    fn snapshot_abandoned(&self, m: &Message) {
        self.ctx.report(Report::Snapshot {
            to: m.to,
            finished: false,
        });
    }

    fn envelope(&self, batch: Vec<Queued>) -> (RaftEnvelope, u64) {
        let hist = &self.ctx.metrics.send_wait_seconds;
        let n = batch.len() as u64;
        let messages = batch
            .into_iter()
            .map(|q| {
                hist.observe(q.at.elapsed().as_secs_f64());
                q.msg.write_to_bytes().expect("raft messages encode")
            })
            .collect();
        (self.ctx.envelope(self.peer, messages), n)
    }

    async fn deliver(&self, stream: &mut Option<OpenStream>, batch: Vec<Queued>) {
        let (env, n) = self.envelope(batch);
        let timeout = self.ctx.send_timeout;
        if self.ctx.unary_only || self.no_stream.active() {
            return self.unary(env, n).await;
        }
        if stream.is_none() {
            let opened = tokio::select! {
                _ = self.cancel.cancelled() => return self.count_dropped(n, "peer_closed"),
                r = OpenStream::open(&self.client, timeout) => r,
            };
            match opened {
                Ok(s) => {
                    *stream = Some(s);
                    self.stats.stream_open.store(true, Ordering::Relaxed);
                    self.ctx
                        .metrics
                        .stream_opens
                        .get_or_create(&self.labels())
                        .inc();
                }
                Err(s) if is_unimplemented(&s) => {
                    self.mark_no_stream();
                    return self.unary(env, n).await;
                }
                Err(s) => return self.failed(&s, n),
            }
        }
        let open = stream.as_mut().expect("opened above");
        let sent = tokio::select! {
            _ = self.cancel.cancelled() => return self.count_dropped(n, "peer_closed"),
            r = open.send(env, timeout) => r,
        };
        match sent {
            Ok(()) => self.sent(n),
            Err(StreamSendError::Ended(status, env)) => {
                *stream = None;
                self.stats.stream_open.store(false, Ordering::Relaxed);
                if is_unimplemented(&status) {
                    self.mark_no_stream();
                    self.unary(env, n).await;
                } else {
                    self.failed(&status, n);
                }
            }
            Err(StreamSendError::Deadline) => {
                if let Some(s) = stream.take() {
                    s.abort();
                }
                self.stats.stream_open.store(false, Ordering::Relaxed);
                self.failed(
                    &Status::deadline_exceeded("send deadline exceeded; stream closed"),
                    n,
                );
            }
        }
    }

    async fn unary(&self, env: RaftEnvelope, n: u64) {
        let mut client = self.client.clone();
        let result = tokio::select! {
            _ = self.cancel.cancelled() => return self.count_dropped(n, "peer_closed"),
            r = tokio::time::timeout(self.ctx.send_timeout, client.send(env)) => r,
        };
        match result {
            Ok(Ok(_)) => self.sent(n),
            Ok(Err(s)) => self.failed(&s, n),
            Err(_) => self.failed(
                &Status::deadline_exceeded("unary send deadline exceeded"),
                n,
            ),
        }
    }

    fn mark_no_stream(&self) {
        if !self.no_stream.active() {
            tracing::info!(
                peer = self.peer,
                "peer has no SendStream: falling back to unary Send"
            );
        }
        self.no_stream.set();
        self.ctx
            .metrics
            .unary_fallbacks
            .get_or_create(&self.labels())
            .inc();
    }

    fn sent(&self, n: u64) {
        self.stats.sent.fetch_add(n, Ordering::Relaxed);
        self.ctx
            .metrics
            .sent
            .get_or_create(&self.labels())
            .inc_by(n);
    }

    fn count_dropped(&self, n: u64, reason: &'static str) {
        if n == 0 {
            return;
        }
        self.stats.dropped.fetch_add(n, Ordering::Relaxed);
        self.ctx
            .metrics
            .dropped
            .get_or_create(&Dropped {
                peer: self.peer,
                lane: self.stats.name,
                reason,
            })
            .inc_by(n);
    }

    fn record_error(&self, s: &Status) {
        self.ctx
            .metrics
            .send_errors
            .get_or_create(&SendError {
                peer: self.peer,
                lane: self.stats.name,
                code: format!("{:?}", s.code()),
            })
            .inc();
        *self.last_error.lock().expect("poisoned") =
            format!("{} lane: {:?}: {}", self.stats.name, s.code(), s.message());
    }

    /// A failed send: counted by code, remembered for `Status`, its messages
    /// counted as dropped, and the peer reported unreachable so raft retries.
    fn failed(&self, s: &Status, n: u64) {
        tracing::debug!(peer = self.peer, lane = self.stats.name, code = ?s.code(), message = s.message(), "peer send failed");
        self.record_error(s);
        self.count_dropped(n, "send_failed");
        self.ctx.report(Report::Unreachable(self.peer));
    }

    /// Streams a snapshot from disk; `Finish` is reported only on the receiver's
    /// ack, anything else as a failure.
    async fn send_snapshot(&self, m: Message) {
        let slot = tokio::select! {
            _ = self.cancel.cancelled() => {
                self.count_dropped(1, "peer_closed");
                return self.snapshot_abandoned(&m);
            }
            s = self.ctx.snapshot_slots.clone().acquire_owned() => s,
        };
        let meta = m.get_snapshot().get_metadata();
        let (term, index) = (meta.term, meta.index);
        let header = SnapshotHeader {
            cluster_id: self.ctx.cluster_id.clone(),
            from: self.ctx.id,
            to: self.peer,
            from_addr: self.ctx.advertise_addr.clone(),
            message: m.write_to_bytes().expect("raft messages encode"),
            total_size: 0,
            crc32c: 0,
        };
        let path = self.ctx.snapshots.path(term, index);
        let mut client = self.client.clone();
        let result = tokio::select! {
            _ = self.cancel.cancelled() => {
                self.count_dropped(1, "peer_closed");
                return self.snapshot_abandoned(&m);
            }
            r = send_file(&mut client, header, path) => r,
        };
        drop(slot);
        match result {
            Ok(bytes) => {
                self.ctx.metrics.snapshot_bytes_sent.inc_by(bytes);
                self.sent(1);
                tracing::info!(
                    peer = self.peer,
                    index,
                    bytes,
                    "snapshot sent and acknowledged"
                );
                self.ctx.report(Report::Snapshot {
                    to: self.peer,
                    finished: true,
                });
            }
            Err(e) => {
                tracing::warn!(peer = self.peer, index, error = %e, "snapshot send failed");
                self.record_error(&Status::unknown(format!("snapshot: {e}")));
                self.count_dropped(1, "send_failed");
                self.ctx.report(Report::Snapshot {
                    to: self.peer,
                    finished: false,
                });
            }
        }
    }
}
