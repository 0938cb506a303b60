//! Reports from the network back to the raft loop: a peer is unreachable, or a
//! snapshot send finished or failed. Posting never blocks. A lost unreachable
//! report only delays raft's retry by a heartbeat, and is counted; a snapshot
//! report is never lost (raft-rs keeps a peer paused in Snapshot state until
//! it hears one), so on a full channel it waits in a task of its own: at most
//! one per snapshot sent.

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
        match self.tx.try_send(report) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(r @ Report::Snapshot { .. })) => {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(r).await;
                });
            }
            Err(mpsc::error::TrySendError::Full(Report::Unreachable(_))) => {
                self.lost.inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_snapshot_report_on_a_full_channel_arrives_later() {
        let lost = Counter::default();
        let (tx, mut rx) = ReportSender::channel(1, lost.clone());
        tx.post(Report::Unreachable(2));
        tx.post(Report::Snapshot {
            to: 3,
            finished: false,
        });
        assert_eq!(lost.get(), 0);
        assert_eq!(rx.recv().await.unwrap(), Report::Unreachable(2));
        assert_eq!(
            rx.recv().await.unwrap(),
            Report::Snapshot {
                to: 3,
                finished: false
            }
        );
    }

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
