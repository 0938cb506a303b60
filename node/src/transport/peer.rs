//! One peer at one address: its lane queues and tasks, and its "no streaming
//! RPC" flag. A new address means a new `Peer`: streams, channel and flag are
//! rebuilt from scratch, nothing else restarts.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use raft::prelude::Message;
use raftlane_proto::admin::{LaneStatus, PeerStatus};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::lanes::{Inputs, LaneContext, LaneMode, LaneStats, LaneTask, Queued};
use super::routing::{lane_of, LaneKind};
use super::stream::{client, NoStream};
use super::MAX_MESSAGE_BYTES;

/// Queue sizes of the four lanes.
pub const HEARTBEAT_QUEUE: usize = 512;
pub const SNAPSHOT_QUEUE: usize = 4;
pub const OTHER_QUEUE: usize = 16;

/// A message dropped because its lane's queue was full.
pub struct LaneFull {
    pub lane: &'static str,
    pub snapshot: bool,
}

pub struct Peer {
    pub addr: String,
    /// Sender per lane kind, in `LaneKind::ALL` order; in single-lane mode
    /// several kinds share the bulk queue.
    queues: [mpsc::Sender<Queued>; 4],
    /// Stats per queue index, as shown in `Status`.
    stats: [Arc<LaneStats>; 4],
    /// Lanes shown in `Status`: four, or one.
    shown: Vec<Arc<LaneStats>>,
    no_stream: Arc<NoStream>,
    cancel: CancellationToken,
    last_error: Arc<Mutex<String>>,
}

fn index(kind: LaneKind) -> usize {
    LaneKind::ALL
        .iter()
        .position(|x| *x == kind)
        .expect("kind in ALL")
}

impl Peer {
    /// Creates the peer's lanes and starts their tasks.
    pub fn spawn(ctx: &Arc<LaneContext>, id: u64, addr: &str, channel: Channel) -> Peer {
        let no_stream = Arc::new(NoStream::default());
        let last_error = Arc::new(Mutex::new(String::new()));
        let cancel = CancellationToken::new();
        let client = client(channel, MAX_MESSAGE_BYTES);
        let lane = |stats: &Arc<LaneStats>| LaneTask {
            ctx: ctx.clone(),
            peer: id,
            stats: stats.clone(),
            no_stream: no_stream.clone(),
            last_error: last_error.clone(),
            client: client.clone(),
            cancel: cancel.clone(),
        };
        let cap = |kind: LaneKind| match kind {
            LaneKind::Heartbeat => HEARTBEAT_QUEUE,
            LaneKind::Replication => ctx.max_inflight,
            LaneKind::Snapshot => SNAPSHOT_QUEUE,
            LaneKind::Other => OTHER_QUEUE,
        };
        let (queues, stats, shown) = match ctx.mode {
            LaneMode::Four => {
                let mut queues = Vec::new();
                let mut stats = Vec::new();
                for kind in LaneKind::ALL {
                    let (tx, rx) = mpsc::channel(cap(kind));
                    let s = LaneStats::new(kind.name());
                    tokio::spawn(lane(&s).run(Inputs::One(rx)));
                    queues.push(tx);
                    stats.push(s);
                }
                let shown = stats.clone();
                (queues, stats, shown)
            }
            LaneMode::One => {
                let (high_tx, high) = mpsc::channel(cap(LaneKind::Heartbeat));
                let bulk =
                    cap(LaneKind::Replication) + cap(LaneKind::Snapshot) + cap(LaneKind::Other);
                let (low_tx, low) = mpsc::channel(bulk);
                let s = LaneStats::new("all");
                tokio::spawn(lane(&s).run(Inputs::Prioritized { high, low }));
                let queues = LaneKind::ALL
                    .iter()
                    .map(|kind| {
                        if *kind == LaneKind::Heartbeat {
                            high_tx.clone()
                        } else {
                            low_tx.clone()
                        }
                    })
                    .collect();
                (queues, vec![s.clone(); 4], vec![s])
            }
        };
        Peer {
            addr: addr.to_string(),
            queues: queues
                .try_into()
                .unwrap_or_else(|_| unreachable!("one queue per kind")),
            stats: stats
                .try_into()
                .unwrap_or_else(|_| unreachable!("one lane per kind")),
            shown,
            no_stream,
            cancel,
            last_error,
        }
    }

    /// Queues a message on its lane without waiting. Local-only types are
    /// skipped; a full lane drops the message and names itself.
    pub fn enqueue(&self, msg: Message) -> Result<(), LaneFull> {
        let Some(kind) = lane_of(msg.get_msg_type()) else {
            return Ok(());
        };
        let i = index(kind);
        let queued = Queued {
            msg,
            at: Instant::now(),
        };
        self.queues[i].try_send(queued).map_err(|_| {
            self.stats[i].dropped.fetch_add(1, Ordering::Relaxed);
            LaneFull {
                lane: self.stats[i].name,
                snapshot: kind == LaneKind::Snapshot,
            }
        })
    }

    /// Stops every lane task; they close their streams and count what was queued.
    pub fn close(&self) {
        self.cancel.cancel();
    }

    /// Messages waiting in the queues a shown lane drains (each queue once).
    fn queued(&self, lane: &Arc<LaneStats>) -> u64 {
        let mut counted: Vec<&mpsc::Sender<Queued>> = Vec::new();
        for (q, s) in self.queues.iter().zip(&self.stats) {
            if Arc::ptr_eq(s, lane) && !counted.iter().any(|c| c.same_channel(q)) {
                counted.push(q);
            }
        }
        counted
            .iter()
            .map(|q| (q.max_capacity() - q.capacity()) as u64)
            .sum()
    }

    pub fn status(&self, id: u64) -> PeerStatus {
        PeerStatus {
            id,
            address: self.addr.clone(),
            no_stream: self.no_stream.active(),
            lanes: self
                .shown
                .iter()
                .map(|s| LaneStatus {
                    name: s.name.to_string(),
                    stream_open: s.stream_open.load(Ordering::Relaxed),
                    queued: self.queued(s),
                    sent: s.sent.load(Ordering::Relaxed),
                    dropped: s.dropped.load(Ordering::Relaxed),
                })
                .collect(),
            last_error: self.last_error.lock().expect("poisoned").clone(),
        }
    }
}
