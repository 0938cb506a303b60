//! The gRPC peer transport: a table of peers, each with its lanes (see
//! `lanes.rs`), over one HTTP/2 channel per address; both the raft loop's
//! [`Transport`] and the member's [`PeerTable`]. `send` only routes messages
//! to lane queues; it never blocks the raft loop. A full lane drops the message,
//! counts it per peer and lane, and reports it (a dropped snapshot as a snapshot
//! failure).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft::prelude::{Message, MessageType};
use raftlane_proto::admin::PeerStatus;
use raftlane_tls::Dialer;
use tokio::sync::Semaphore;

use super::channels::{ChannelPool, ChannelSettings};
use super::lanes::LaneContext;
use super::peer::Peer;
use super::report::{Report, ReportSender};
use super::{validate_peer_addr, AddrError, PeerTable, Transport};
use crate::metrics::{Dropped, Metrics};
use crate::storage::SnapshotStore;

pub use super::lanes::LaneMode;

/// Snapshots sent at once by a member; more wait in their snapshot lanes.
const MAX_CONCURRENT_SNAPSHOT_SENDS: usize = 2;
/// Traffic adds no peer beyond this many (each costs four lane tasks);
/// UpsertPeers, an operator's call, is not limited.
pub const MAX_LEARNED_PEERS: usize = 256;

#[derive(Clone, Debug)]
pub struct GrpcConfig {
    pub cluster_id: String,
    pub id: u64,
    /// This member's peer address as others reach it.
    pub advertise_addr: String,
    /// A send not taken by the stream (or answered, for unary) by then fails: the
    /// stream is closed and the peer reported unreachable.
    pub send_timeout: Duration,
    /// Replication lane size: raft's max in-flight append messages.
    pub max_inflight: usize,
    pub lanes: LaneMode,
    /// Never stream; every envelope is a unary `Send` (for comparison).
    pub unary_only: bool,
    /// Most raft messages packed into one envelope when a lane has a backlog.
    pub max_batch: usize,
    pub channel: ChannelSettings,
    /// How peers are dialled: TLS verifying each peer's member id, or plaintext.
    pub dialer: Dialer,
}

pub struct GrpcTransport {
    pool: ChannelPool,
    peers: Mutex<BTreeMap<u64, Peer>>,
    lanes: Arc<LaneContext>,
}

impl GrpcTransport {
    pub fn new(
        cfg: GrpcConfig,
        reports: ReportSender,
        snapshots: SnapshotStore,
        metrics: Metrics,
    ) -> GrpcTransport {
        GrpcTransport {
            pool: ChannelPool::new(cfg.channel, cfg.dialer),
            peers: Mutex::default(),
            lanes: Arc::new(LaneContext {
                cluster_id: cfg.cluster_id,
                id: cfg.id,
                advertise_addr: cfg.advertise_addr,
                send_timeout: cfg.send_timeout,
                max_inflight: cfg.max_inflight,
                mode: cfg.lanes,
                unary_only: cfg.unary_only,
                max_batch: cfg.max_batch,
                reports,
                snapshots,
                metrics,
                snapshot_slots: Arc::new(Semaphore::new(MAX_CONCURRENT_SNAPSHOT_SENDS)),
            }),
        }
    }

    /// Ids using a live channel to `addr` (for tests of shared connections).
    pub fn channel_users(&self, addr: &str) -> usize {
        self.pool.users(addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Peer>> {
        self.peers.lock().expect("peer table poisoned")
    }

    /// Counts a message that never reached a lane and reports it.
    fn drop_msg(&self, to: u64, snapshot: bool, lane: &'static str, reason: &'static str) {
        self.lanes
            .metrics
            .dropped
            .get_or_create(&Dropped {
                peer: to,
                lane,
                reason,
            })
            .inc();
        if snapshot {
            self.lanes.report(Report::Snapshot {
                to,
                finished: false,
            });
        } else {
            self.lanes.report(Report::Unreachable(to));
        }
    }

    fn upsert_locked(
        &self,
        peers: &mut BTreeMap<u64, Peer>,
        id: u64,
        addr: &str,
    ) -> Result<bool, AddrError> {
        validate_peer_addr(addr)?;
        if peers.get(&id).is_some_and(|p| p.addr == addr) {
            return Ok(false);
        }
        let channel = self.pool.acquire(addr, id)?;
        if let Some(old) = peers.remove(&id) {
            old.close();
            self.pool.release(&old.addr, id);
            tracing::info!(peer = id, old = %old.addr, new = %addr, "peer address changed: streams rebuilt");
        }
        peers.insert(id, Peer::spawn(&self.lanes, id, addr, channel));
        Ok(true)
    }
}

impl Transport for GrpcTransport {
    fn send(&self, msgs: Vec<Message>) {
        let peers = self.lock();
        for m in msgs {
            let (to, t) = (m.to, m.get_msg_type());
            if raft::raw_node::is_local_msg(t) {
                continue;
            }
            let Some(peer) = peers.get(&to) else {
                self.drop_msg(to, t == MessageType::MsgSnapshot, "none", "no_address");
                continue;
            };
            if let Err(full) = peer.enqueue(m) {
                self.drop_msg(to, full.snapshot, full.lane, "queue_full");
            }
        }
    }
}

impl PeerTable for GrpcTransport {
    fn upsert_peer(&self, id: u64, addr: &str) -> Result<bool, AddrError> {
        let mut peers = self.lock();
        self.upsert_locked(&mut peers, id, addr)
    }

    fn learn_peer(&self, id: u64, addr: &str) {
        if id == self.lanes.id {
            return;
        }
        // Checked and inserted under one lock, so a learned address never
        // replaces one that was just set by UpsertPeers.
        let mut peers = self.lock();
        if peers.contains_key(&id) {
            return;
        }
        if peers.len() >= MAX_LEARNED_PEERS {
            tracing::warn!(
                peer = id,
                known = peers.len(),
                "peer table full: address learned from peer traffic ignored"
            );
            return;
        }
        if let Err(e) = self.upsert_locked(&mut peers, id, addr) {
            tracing::warn!(peer = id, error = %e, "ignoring address learned from peer traffic");
        }
    }

    fn remove_peer(&self, id: u64) {
        if let Some(old) = self.lock().remove(&id) {
            old.close();
            self.pool.release(&old.addr, id);
        }
    }

    fn peer_addr(&self, id: u64) -> Option<String> {
        self.lock().get(&id).map(|p| p.addr.clone())
    }

    fn peers(&self) -> Vec<PeerStatus> {
        self.lock().iter().map(|(id, p)| p.status(*id)).collect()
    }

    fn redial_all(&self) {
        let mut peers = self.lock();
        let table: Vec<(u64, String)> = peers.iter().map(|(id, p)| (*id, p.addr.clone())).collect();
        for (id, addr) in &table {
            if let Some(old) = peers.remove(id) {
                old.close();
                self.pool.release(addr, *id);
            }
        }
        for (id, addr) in table {
            match self.pool.acquire(&addr, id) {
                Ok(channel) => {
                    peers.insert(id, Peer::spawn(&self.lanes, id, &addr, channel));
                }
                Err(e) => tracing::error!(peer = id, error = %e, "cannot dial again"),
            }
        }
        tracing::info!(
            peers = peers.len(),
            "peer streams rebuilt on the new certificate"
        );
    }
}
