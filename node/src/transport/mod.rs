//! Peer transport: the seam between the raft loop and the network. The raft loop
//! hands messages to a [`Transport`] without ever blocking; what cannot be
//! delivered is dropped, counted, and reported back so raft retries. Where peers
//! listen is a separate [`PeerTable`], for those who set, learn or look up
//! addresses: the raft loop needs none of it, and the in-memory network has no
//! addresses at all.

mod address;
pub mod channels;
pub mod grpc;
mod guard;
pub mod inbox;
mod lanes;
pub mod memory;
mod peer;
pub mod receiver;
pub mod report;
pub mod routing;
pub mod snapshot;
mod stream;

pub use address::{validate_peer_addr, AddrError};
pub use guard::{check_raft_message, GuardError};

use raft::prelude::Message;
use raftlane_proto::admin::PeerStatus;

/// Largest envelope or chunk a member sends or accepts. An envelope batches
/// at most 4 MiB of messages plus one more; a message carries at most 1 MiB
/// of entries, or one entry of up to a client request (4 MiB); a snapshot
/// chunk is 1 MiB. Twice the largest of those.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// What the raft loop needs from the network.
pub trait Transport: Send + Sync + 'static {
    /// Queues messages for their peers; never blocks the caller.
    fn send(&self, msgs: Vec<Message>);
}

/// Where each peer listens, and what is kept per peer for that address.
pub trait PeerTable: Send + Sync + 'static {
    /// Sets where peer `id` listens; returns whether the address changed.
    /// A changed address rebuilds everything kept for the old one.
    fn upsert_peer(&self, id: u64, addr: &str) -> Result<bool, AddrError>;
    /// Sets the address of a peer only if none is known (learned from its traffic).
    fn learn_peer(&self, id: u64, addr: &str);
    /// Forgets a peer: its queued messages are dropped (and counted).
    fn remove_peer(&self, id: u64);
    /// Per-peer state for `Status`.
    fn peers(&self) -> Vec<PeerStatus>;
    /// Where peer `id` listens now, if known.
    fn peer_addr(&self, id: u64) -> Option<String>;
    /// Closes every peer's streams and channel and dials again: after a TLS
    /// reload, so that streams run on the new certificate.
    fn redial_all(&self);
}
