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

use super::grpc::{LaneMode, Shared, MAX_MESSAGE_BYTES};
use super::lanes::{Inputs, Lane, LaneStats, Queued};
use super::routing::{lane_of, Lane as Route};
use super::stream::{client, NoStream};

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
    /// Sender per route, in `Route::ALL` order; in single-lane mode several
    /// routes share the bulk queue.
    queues: [mpsc::Sender<Queued>; 4],
    /// Stats per queue index, as shown in `Status`.
    stats: [Arc<LaneStats>; 4],
    /// Lanes shown in `Status`: four, or one.
    shown: Vec<Arc<LaneStats>>,
    no_stream: Arc<NoStream>,
    cancel: CancellationToken,
    last_error: Arc<Mutex<String>>,
}

fn index(r: Route) -> usize {
    Route::ALL
        .iter()
        .position(|x| *x == r)
        .expect("route in ALL")
}

impl Peer {
    /// Creates the peer's lanes and starts their tasks.
    pub fn spawn(shared: &Arc<Shared>, id: u64, addr: &str, channel: Channel) -> Peer {
        let no_stream = Arc::new(NoStream::default());
        let last_error = Arc::new(Mutex::new(String::new()));
        let cancel = CancellationToken::new();
        let client = client(channel, MAX_MESSAGE_BYTES);
        let lane = |stats: &Arc<LaneStats>| Lane {
            shared: shared.clone(),
            peer: id,
            stats: stats.clone(),
            no_stream: no_stream.clone(),
            last_error: last_error.clone(),
            client: client.clone(),
            cancel: cancel.clone(),
        };
        let cap = |r: Route| match r {
            Route::Heartbeat => HEARTBEAT_QUEUE,
            Route::Replication => shared.cfg.max_inflight,
            Route::Snapshot => SNAPSHOT_QUEUE,
            Route::Other => OTHER_QUEUE,
        };
        let (queues, stats, shown) = match shared.cfg.lanes {
            LaneMode::Four => {
                let mut queues = Vec::new();
                let mut stats = Vec::new();
                for r in Route::ALL {
                    let (tx, rx) = mpsc::channel(cap(r));
                    let s = LaneStats::new(r.name());
                    tokio::spawn(lane(&s).run(Inputs::One(rx)));
                    queues.push(tx);
                    stats.push(s);
                }
                let shown = stats.clone();
                (queues, stats, shown)
            }
            LaneMode::One => {
                let (high_tx, high) = mpsc::channel(cap(Route::Heartbeat));
                let bulk = cap(Route::Replication) + cap(Route::Snapshot) + cap(Route::Other);
                let (low_tx, low) = mpsc::channel(bulk);
                let s = LaneStats::new("all");
                tokio::spawn(lane(&s).run(Inputs::Prioritized { high, low }));
                let queues = Route::ALL
                    .iter()
                    .map(|r| {
                        if *r == Route::Heartbeat {
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
                .unwrap_or_else(|_| unreachable!("one queue per route")),
            stats: stats
                .try_into()
                .unwrap_or_else(|_| unreachable!("one lane per route")),
            shown,
            no_stream,
            cancel,
            last_error,
        }
    }

    /// Queues a message on its lane without waiting. Local-only types are
    /// skipped; a full lane drops the message and names itself.
    pub fn enqueue(&self, msg: Message) -> Result<(), LaneFull> {
        let Some(route) = lane_of(msg.get_msg_type()) else {
            return Ok(());
        };
        let i = index(route);
        let queued = Queued {
            msg,
            at: Instant::now(),
        };
        self.queues[i].try_send(queued).map_err(|_| {
            self.stats[i].dropped.fetch_add(1, Ordering::Relaxed);
            LaneFull {
                lane: self.stats[i].name,
                snapshot: route == Route::Snapshot,
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
