//! The raft loop's inbound queues. Elections and heartbeats go to the priority
//! queue so bulk replication cannot delay them; a full queue drops the message
//! (raft retransmits) instead of stalling the stream that carried it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raft::prelude::Message;
use tokio::sync::mpsc;

use super::routing::{lane_of, LaneKind};

pub const PRIORITY_CAPACITY: usize = 4096;
pub const BULK_CAPACITY: usize = 1024;
/// How long a fully received snapshot may wait for room in the bulk queue.
const SNAPSHOT_DELIVERY_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Inbox {
    priority: mpsc::Sender<Message>,
    bulk: mpsc::Sender<Message>,
    dropped: Arc<AtomicU64>,
}

/// The raft loop's side of the inbox.
pub struct InboxReceiver {
    pub priority: mpsc::Receiver<Message>,
    pub bulk: mpsc::Receiver<Message>,
}

impl Inbox {
    pub fn new() -> (Inbox, InboxReceiver) {
        let (ptx, prx) = mpsc::channel(PRIORITY_CAPACITY);
        let (btx, brx) = mpsc::channel(BULK_CAPACITY);
        (
            Inbox {
                priority: ptx,
                bulk: btx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            InboxReceiver {
                priority: prx,
                bulk: brx,
            },
        )
    }

    /// Queues a message for raft without waiting; false when it was dropped.
    pub fn try_deliver(&self, m: Message) -> bool {
        let queue = match lane_of(m.get_msg_type()) {
            Some(LaneKind::Heartbeat) => &self.priority,
            _ => &self.bulk,
        };
        let ok = queue.try_send(m).is_ok();
        if !ok {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Queues a received snapshot, waiting a bounded time: it cost a whole transfer.
    pub async fn deliver_snapshot(&self, m: Message) -> bool {
        matches!(
            tokio::time::timeout(SNAPSHOT_DELIVERY_WAIT, self.bulk.send(m)).await,
            Ok(Ok(()))
        )
    }

    /// Messages dropped because a queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
