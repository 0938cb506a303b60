//! Reports from the network back to the raft loop: a peer is unreachable, or a
//! snapshot send finished or failed. Posting never blocks; a lost report only delays
//! raft's retry by a heartbeat, and is counted.

use prometheus_client::metrics::counter::Counter;
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
    /// Reports dropped because the raft loop's report channel was full.
    lost: Counter,
}

impl ReportSender {
    /// A channel of `capacity` reports; losses are counted in `lost`.
    pub fn channel(capacity: usize, lost: Counter) -> (ReportSender, mpsc::Receiver<Report>) {
        let (tx, rx) = mpsc::channel(capacity);
        (ReportSender { tx, lost }, rx)
    }

    pub fn post(&self, report: Report) {
        if self.tx.try_send(report).is_err() {
            self.lost.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_never_blocks_and_counts_losses() {
        let lost = Counter::default();
        let (tx, mut rx) = ReportSender::channel(1, lost.clone());
        tx.post(Report::Unreachable(2));
        tx.post(Report::Unreachable(3));
        assert_eq!(lost.get(), 1);
        assert_eq!(rx.try_recv().unwrap(), Report::Unreachable(2));
    }
}
