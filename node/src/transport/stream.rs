//! One long-lived `SendStream` call and its lifecycle. Opening probes the peer
//! with an empty stream first: `UNIMPLEMENTED` arrives as a call's status, not at
//! open, so the probe learns it before any message is committed to the stream.
//! The call runs in its own task; the lane watches its result.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use raftlane_proto::transport::raft_transport_client::RaftTransportClient;
use raftlane_proto::transport::{Ack, RaftEnvelope};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// How long a peer that answered UNIMPLEMENTED is served by unary calls before
/// streaming is probed again.
pub const REPROBE_AFTER: Duration = Duration::from_secs(30);
/// How long a closing stream may take to deliver its end-of-stream and be answered.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A peer's "no streaming RPC" flag. Lives as long as the peer's address: a new
/// address starts with a new, cleared flag.
#[derive(Default)]
pub struct NoStream {
    since: Mutex<Option<Instant>>,
}

impl NoStream {
    pub fn set(&self) {
        *self.since.lock().expect("flag poisoned") = Some(Instant::now());
    }

    /// True while the peer is known not to stream and the re-probe time is not due.
    pub fn active(&self) -> bool {
        self.since
            .lock()
            .expect("flag poisoned")
            .is_some_and(|t| t.elapsed() < REPROBE_AFTER)
    }
}

/// An open `SendStream` call: envelopes go in through `tx`, the call's final
/// status comes out of `call`.
pub struct OpenStream {
    tx: mpsc::Sender<RaftEnvelope>,
    call: JoinHandle<Result<Ack, Status>>,
}

pub fn client(channel: Channel, max_bytes: usize) -> RaftTransportClient<Channel> {
    RaftTransportClient::new(channel)
        .max_encoding_message_size(max_bytes)
        .max_decoding_message_size(max_bytes)
}

/// Why a send on a stream did not go through.
pub enum StreamSendError {
    /// The call ended; the envelope was not sent and is handed back.
    Ended(Status, RaftEnvelope),
    /// The stream did not take the envelope in time (peer not reading).
    Deadline,
}

impl OpenStream {
    /// Probes for streaming support, then opens the long-lived call.
    pub async fn open(
        client: &RaftTransportClient<Channel>,
        timeout: Duration,
    ) -> Result<OpenStream, Status> {
        let mut probe = client.clone();
        match tokio::time::timeout(timeout, probe.send_stream(futures::stream::empty())).await {
            Ok(Ok(_)) => {}
            Ok(Err(s)) => return Err(s),
            Err(_) => return Err(Status::deadline_exceeded("stream probe timed out")),
        }
        // A small buffer: backpressure from HTTP/2 flow control reaches the lane
        // at once, so a peer that stops reading trips the send deadline.
        let (tx, rx) = mpsc::channel(1);
        let mut c = client.clone();
        let call = tokio::spawn(async move {
            c.send_stream(ReceiverStream::new(rx))
                .await
                .map(|r| r.into_inner())
        });
        Ok(OpenStream { tx, call })
    }

    /// Hands one envelope to the stream, waiting at most `deadline`.
    pub async fn send(
        &mut self,
        env: RaftEnvelope,
        deadline: Duration,
    ) -> Result<(), StreamSendError> {
        match tokio::time::timeout(deadline, self.tx.send(env)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(mpsc::error::SendError(env))) => {
                Err(StreamSendError::Ended(self.result().await, env))
            }
            Err(_) => Err(StreamSendError::Deadline),
        }
    }

    /// Waits for the call to end by itself (the peer closed it or failed).
    pub async fn ended(&mut self) -> Status {
        self.result().await
    }

    async fn result(&mut self) -> Status {
        match (&mut self.call).await {
            Ok(Ok(_)) => Status::unavailable("peer ended the stream"),
            Ok(Err(s)) => s,
            Err(e) => Status::internal(format!("stream task failed: {e}")),
        }
    }

    /// Sends end-of-stream and lets the call finish in the background; cancels it
    /// if the peer does not answer within a grace period.
    pub fn close(self) {
        let OpenStream { tx, mut call } = self;
        drop(tx);
        tokio::spawn(async move {
            if tokio::time::timeout(CLOSE_GRACE, &mut call).await.is_err() {
                call.abort();
            }
        });
    }

    /// Tears the call down at once (it failed or is stuck).
    pub fn abort(self) {
        self.call.abort();
    }
}

/// True for the status of a peer that has no `SendStream` method.
pub fn is_unimplemented(s: &Status) -> bool {
    s.code() == Code::Unimplemented
}
