//! `NodeAdmin` service: status, the peer table, membership changes (which the
//! leader alone accepts, one at a time), snapshots and backups. With TLS, any certificate of the
//! cluster may read the status; only the operator's or an admin's may change
//! anything.

use std::sync::Arc;
use std::time::Duration;

use raftlane_proto::admin::backup_chunk::Part;
use raftlane_proto::admin::node_admin_server::NodeAdmin;
use raftlane_proto::admin::{
    AdminResponse, BackupChunk, BackupHeader, BackupRequest, MemberRequest, PeerIdRequest,
    SnapshotRequest, StatusRequest, StatusResponse, UpsertPeersRequest, UpsertPeersResponse,
};
use raftlane_tls::{Caller, Identity};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::bounded;
use crate::consensus::{MembershipChange, NodeHandle};
use crate::metrics::{Call, Metrics};
use crate::storage::SnapshotStore;
use crate::transport::{validate_peer_addr, PeerTable};

pub struct AdminService {
    pub node: NodeHandle,
    pub peers: Arc<dyn PeerTable>,
    pub cluster_id: String,
    pub id: u64,
    pub timeout: Duration,
    /// Callers are authenticated (TLS): mutating calls are authorized by role.
    pub tls: bool,
    /// Where `Backup` finds the snapshot it streams.
    pub snapshots: SnapshotStore,
    pub metrics: Metrics,
}

/// Bytes per backup chunk, and chunks buffered ahead of the network: the
/// memory a backup holds, whatever the snapshot's size.
const BACKUP_CHUNK: usize = 1 << 20;
const BACKUP_AHEAD: usize = 4;
/// A backup reader that takes no chunk for this long is given up on: the
/// thread reading the snapshot ends, the file closes.
const BACKUP_STALL: Duration = Duration::from_secs(60);

impl AdminService {
    /// Refuses `call` unless the caller's certificate may administer.
    fn authorize<T>(&self, req: &Request<T>, call: &'static str) -> Result<(), Status> {
        self.authorize_if(req, call, Identity::may_administer)
    }

    /// As `authorize`, with `allowed` deciding who may make `call`.
    fn authorize_if<T>(
        &self,
        req: &Request<T>,
        call: &'static str,
        allowed: fn(&Identity) -> bool,
    ) -> Result<(), Status> {
        if !self.tls {
            return Ok(());
        }
        let who = Caller::of(req).and_then(|c| c.identity.as_ref());
        if who.is_some_and(allowed) {
            return Ok(());
        }
        self.metrics
            .admin_denied
            .get_or_create(&Call { call })
            .inc();
        match who {
            Some(who) => Err(Status::permission_denied(format!(
                "{call}: {who} may not change this member; the operator's or an admin certificate is needed"
            ))),
            None => Err(Status::permission_denied(format!(
                "{call}: no client certificate; the operator's or an admin certificate is needed"
            ))),
        }
    }

    async fn change(&self, c: MembershipChange) -> Result<Response<AdminResponse>, Status> {
        let index = bounded(
            self.timeout,
            "membership change",
            self.node.change_membership(c),
        )
        .await?;
        Ok(Response::new(AdminResponse {
            index,
            message: format!("{c:?} applied at index {index}"),
        }))
    }
}

/// Reads `file` (already open: a later snapshot may prune its name) into
/// `tx` as header, data chunks and the CRC32C of the data; on a blocking
/// thread of the runtime. Ends when the reader goes, or takes nothing for
/// `stall`.
fn stream_backup(
    mut file: std::fs::File,
    header: BackupHeader,
    tx: mpsc::Sender<Result<BackupChunk, Status>>,
    stall: Duration,
) {
    use std::io::Read;
    let rt = tokio::runtime::Handle::current();
    let send_item = |item| match rt.block_on(tx.send_timeout(item, stall)) {
        Ok(()) => true,
        Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
            tracing::warn!("backup abandoned: the reader took nothing for {stall:?}");
            false
        }
        Err(mpsc::error::SendTimeoutError::Closed(_)) => false,
    };
    let send = |part| send_item(Ok(BackupChunk { part: Some(part) }));
    if !send(Part::Header(header)) {
        return;
    }
    let (mut crc, mut buf) = (0u32, vec![0u8; BACKUP_CHUNK]);
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                crc = crc32c::crc32c_append(crc, &buf[..n]);
                if !send(Part::Data(buf[..n].to_vec())) {
                    return;
                }
            }
            Err(e) => {
                send_item(Err(Status::internal(format!("reading the snapshot: {e}"))));
                return;
            }
        }
    }
    send(Part::Crc32c(crc));
}

#[tonic::async_trait]
impl NodeAdmin for AdminService {
    type BackupStream = ReceiverStream<Result<BackupChunk, Status>>;

    async fn backup(
        &self,
        req: Request<BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        // The whole dataset: as guarded as a change.
        // The backup identity too: backup Jobs need this call and no other.
        self.authorize_if(&req, "Backup", Identity::may_take_backups)?;
        let index = bounded(self.timeout, "snapshot", self.node.snapshot()).await?;
        let (term, path) = self
            .snapshots
            .find(index)
            .map_err(|e| Status::internal(format!("snapshot {index}: {e}")))?
            .ok_or_else(|| Status::unavailable(format!("snapshot {index} was replaced; retry")))?;
        let file = std::fs::File::open(&path)
            .map_err(|e| Status::unavailable(format!("snapshot {index}: {e}; retry")))?;
        let size = file
            .metadata()
            .map_err(|e| Status::internal(e.to_string()))?
            .len();
        let header = BackupHeader {
            cluster_id: self.cluster_id.clone(),
            member_id: self.id,
            term,
            index,
            size,
        };
        let (tx, rx) = mpsc::channel(BACKUP_AHEAD);
        tokio::task::spawn_blocking(move || stream_backup(file, header, tx, BACKUP_STALL));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let s = bounded(self.timeout, "status", self.node.status()).await?;
        Ok(Response::new(StatusResponse {
            id: s.id,
            cluster_id: self.cluster_id.clone(),
            role: s.role.to_string(),
            term: s.term,
            leader_id: s.leader_id,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            voters: s.voters,
            learners: s.learners,
            peers: self.peers.peers(),
            snapshot_index: s.snapshot_index,
            first_log_index: s.first_log_index,
            last_log_index: s.last_log_index,
            conf_change_pending: s.conf_change_pending,
        }))
    }

    async fn upsert_peers(
        &self,
        req: Request<UpsertPeersRequest>,
    ) -> Result<Response<UpsertPeersResponse>, Status> {
        self.authorize(&req, "UpsertPeers")?;
        let peers = req.into_inner().peers;
        // All or nothing: a bad entry changes no address.
        for (id, addr) in &peers {
            if *id == 0 {
                return Err(Status::invalid_argument("peers: member id 0 is reserved"));
            }
            validate_peer_addr(addr)
                .map_err(|e| Status::invalid_argument(format!("peers[{id}]: {e}")))?;
        }
        let mut changed = Vec::new();
        let mut sorted: Vec<_> = peers.into_iter().filter(|(id, _)| *id != self.id).collect();
        sorted.sort();
        for (id, addr) in sorted {
            let did = self
                .peers
                .upsert_peer(id, &addr)
                .map_err(|e| Status::invalid_argument(format!("peers[{id}]: {e}")))?;
            if did {
                changed.push(id);
            }
        }
        Ok(Response::new(UpsertPeersResponse { changed }))
    }

    async fn remove_peer(
        &self,
        req: Request<PeerIdRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        self.authorize(&req, "RemovePeer")?;
        let id = req.into_inner().id;
        self.peers.remove_peer(id);
        Ok(Response::new(AdminResponse {
            index: 0,
            message: format!("peer {id} removed from the peer table"),
        }))
    }

    async fn add_learner(
        &self,
        req: Request<MemberRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        self.authorize(&req, "AddLearner")?;
        self.change(MembershipChange::AddLearner(req.into_inner().id))
            .await
    }

    async fn promote_learner(
        &self,
        req: Request<MemberRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        self.authorize(&req, "PromoteLearner")?;
        self.change(MembershipChange::Promote(req.into_inner().id))
            .await
    }

    async fn remove_member(
        &self,
        req: Request<MemberRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        self.authorize(&req, "RemoveMember")?;
        self.change(MembershipChange::Remove(req.into_inner().id))
            .await
    }

    async fn transfer_leader(
        &self,
        req: Request<MemberRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        self.authorize(&req, "TransferLeader")?;
        let to = req.into_inner().id;
        bounded(
            self.timeout,
            "leadership transfer",
            self.node.transfer_leader(to),
        )
        .await?;
        Ok(Response::new(AdminResponse {
            index: 0,
            message: format!("member {to} is the leader"),
        }))
    }

    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        self.authorize(&req, "Snapshot")?;
        let index = bounded(self.timeout, "snapshot", self.node.snapshot()).await?;
        Ok(Response::new(AdminResponse {
            index,
            message: format!("snapshot at index {index}"),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that stops taking chunks does not hold the reading thread
    /// (and the snapshot file) forever.
    #[tokio::test]
    async fn a_stalled_backup_reader_is_given_up_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        std::fs::write(&path, vec![7u8; 8 * BACKUP_CHUNK]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let (tx, _rx) = mpsc::channel(1);
        let started = std::time::Instant::now();
        let stall = Duration::from_millis(200);
        tokio::task::spawn_blocking(move || {
            stream_backup(file, BackupHeader::default(), tx, stall)
        })
        .await
        .unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
