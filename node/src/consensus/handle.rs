//! How other tasks talk to the raft loop: requests over a bounded channel, each
//! answered on its own oneshot. Nothing but the loop touches `RawNode`.

use raftlane_proto::kv::LogCommand;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::state_machine::{Applied, ScanPage, ScanRange};

/// Why a request to the raft loop failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NodeError {
    #[error("no leader is known yet; retry shortly")]
    NoLeader,
    #[error("this member is not the leader; the leader is member {leader_id}")]
    NotLeader { leader_id: u64 },
    #[error("a membership change is already in progress; retry once it is applied")]
    ChangeInProgress,
    #[error("invalid membership change: {0}")]
    InvalidChange(String),
    #[error("unsafe membership change refused: {0}")]
    UnsafeChange(String),
    /// Refused for now by a condition that passes by itself (a learner still
    /// catching up): the caller waits and asks again.
    #[error("not yet: {0}")]
    NotYet(String),
    #[error("proposal dropped by raft: {0}")]
    Dropped(String),
    #[error("leadership did not move to member {0} in time")]
    TransferFailed(u64),
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("the member is shutting down")]
    Shutdown,
}

/// A read served after a ReadIndex round, so it reflects every write
/// acknowledged before it started.
#[derive(Debug, Clone)]
pub enum Query {
    Get(Vec<u8>),
    /// One bounded page, so serving it on the raft loop takes bounded time.
    Scan(ScanRange),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryResult {
    Get(Option<Vec<u8>>),
    Scan(ScanPage),
}

/// A write, applied at `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOutcome {
    pub index: u64,
    pub applied: Applied,
}

/// One single-step membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipChange {
    AddLearner(u64),
    Promote(u64),
    Remove(u64),
}

/// A member's view of itself and the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: u64,
    pub role: &'static str,
    pub term: u64,
    pub leader_id: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub snapshot_index: u64,
    pub first_log_index: u64,
    pub last_log_index: u64,
    pub conf_change_pending: bool,
}

type Reply<T> = oneshot::Sender<Result<T, NodeError>>;

pub enum Request {
    Write(LogCommand, Reply<WriteOutcome>),
    Read(Query, Reply<QueryResult>),
    Membership(MembershipChange, Reply<u64>),
    TransferLeader(u64, Reply<()>),
    Snapshot(Reply<u64>),
    Status(oneshot::Sender<NodeStatus>),
}

/// Cheap to clone; every server task holds one.
#[derive(Clone)]
pub struct NodeHandle {
    tx: mpsc::Sender<Request>,
}

impl NodeHandle {
    pub fn new(tx: mpsc::Sender<Request>) -> NodeHandle {
        NodeHandle { tx }
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| NodeError::Shutdown)?;
        rx.await.map_err(|_| NodeError::Shutdown)?
    }

    pub async fn write(&self, cmd: LogCommand) -> Result<WriteOutcome, NodeError> {
        self.call(|r| Request::Write(cmd, r)).await
    }

    pub async fn read(&self, q: Query) -> Result<QueryResult, NodeError> {
        self.call(|r| Request::Read(q, r)).await
    }

    pub async fn change_membership(&self, c: MembershipChange) -> Result<u64, NodeError> {
        self.call(|r| Request::Membership(c, r)).await
    }

    pub async fn transfer_leader(&self, to: u64) -> Result<(), NodeError> {
        self.call(|r| Request::TransferLeader(to, r)).await
    }

    pub async fn snapshot(&self) -> Result<u64, NodeError> {
        self.call(Request::Snapshot).await
    }

    pub async fn status(&self) -> Result<NodeStatus, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Status(tx))
            .await
            .map_err(|_| NodeError::Shutdown)?;
        rx.await.map_err(|_| NodeError::Shutdown)
    }
}
