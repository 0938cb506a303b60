//! Reports from the network back to the raft loop: a peer is unreachable, or a
//! snapshot send finished or failed. Posting never blocks; a lost report only delays
//! raft's retry by a heartbeat, and is counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use raft::SnapshotStatus;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    Unreachable(u64),
    Snapshot { to: u64, finished: bool },
}

impl Report {
    pub fn snapshot_status(finished: bool) -> SnapshotStatus {
        if finished {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        }
    }
}

/// The sending half handed to every transport task.
#[derive(Clone)]
pub struct ReportSender {
    tx: mpsc::Sender<Report>,
    lost: Arc<AtomicU64>,
}

impl ReportSender {
    pub fn channel(capacity: usize) -> (ReportSender, mpsc::Receiver<Report>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            ReportSender {
                tx,
                lost: Arc::new(AtomicU64::new(0)),
            },
            rx,
        )
    }

    pub fn post(&self, report: Report) {
        if self.tx.try_send(report).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reports dropped because the raft loop's report channel was full.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_never_blocks_and_counts_losses() {
        let (tx, mut rx) = ReportSender::channel(1);
        tx.post(Report::Unreachable(2));
        tx.post(Report::Unreachable(3));
        assert_eq!(tx.lost(), 1);
        assert_eq!(rx.try_recv().unwrap(), Report::Unreachable(2));
    }
}
