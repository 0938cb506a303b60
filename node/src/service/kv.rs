//! `Kv` service, served on the client port and on the peer port. Any member
//! accepts writes: a follower forwards the request to the leader's `Kv` service
//! on the leader's peer address (one hop, naming the member it expects there; see
//! [`forward`](super::forward)) and relays the answer. Reads are linearizable on
//! any member through a ReadIndex round with the leader. A scan is paged, so one
//! request costs the raft loop a bounded amount of work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftlane_proto::kv::kv_client::KvClient;
use raftlane_proto::kv::kv_server::Kv;
use raftlane_proto::kv::{
    log_command::Op, DeleteRequest, DeleteResponse, GetRequest, GetResponse, LogCommand,
    PutRequest, PutResponse, ScanRequest, ScanResponse,
};
use raftlane_tls::{Dialer, Expect};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use super::bounded;
use super::forward::{self, Identity, Listener, Origin};
use crate::consensus::{NodeError, NodeHandle, Query, QueryResult};
use crate::metrics::{Kind, Metrics};
use crate::state_machine::{Applied, ScanRange};
use crate::transport::PeerTable;

/// Pairs in a scan page when the request sets no limit.
pub const DEFAULT_SCAN_LIMIT: u32 = 1_000;
/// Most pairs a scan page may be asked for; above it the request is refused.
pub const MAX_SCAN_LIMIT: u32 = 10_000;
/// Keys and values in one scan page: bounds the copy the raft loop makes and
/// keeps a page near gRPC's default 4 MiB message limit.
pub const MAX_SCAN_BYTES: usize = 4 << 20;

#[derive(Clone)]
pub struct KvService {
    node: NodeHandle,
    peers: Arc<dyn PeerTable>,
    timeout: Duration,
    metrics: Metrics,
    me: Identity,
    listener: Listener,
    /// Dials leaders' peer ports (with TLS, verifying the leader's member id).
    dialer: Dialer,
    /// One lazily connected client per leader id and address.
    leaders: Arc<Mutex<HashMap<LeaderKey, KvClient<Channel>>>>,
}

/// A leader's member id and peer address: with TLS a client verifies the id.
type LeaderKey = (u64, String);

/// Drops the clients of leaders no longer at that address (moved, removed
/// from the peer table): the map holds at most one client per peer.
fn keep_current<C>(map: &mut HashMap<LeaderKey, C>, addr_of: impl Fn(u64) -> Option<String>) {
    map.retain(|(id, addr), _| addr_of(*id).as_deref() == Some(addr.as_str()));
}

fn require_key(key: &[u8]) -> Result<(), Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument("key must not be empty"));
    }
    Ok(())
}

/// The page a request asks for, or why it is refused.
fn scan_range(r: ScanRequest) -> Result<ScanRange, Status> {
    let limit = match r.limit {
        0 => DEFAULT_SCAN_LIMIT,
        l if l > MAX_SCAN_LIMIT => {
            return Err(Status::invalid_argument(format!(
                "limit {l} exceeds the maximum of {MAX_SCAN_LIMIT} pairs per page; \
                 read further pages with start_after"
            )))
        }
        l => l,
    };
    Ok(ScanRange {
        prefix: r.prefix,
        start_after: r.start_after,
        limit: limit as usize,
        max_bytes: MAX_SCAN_BYTES,
    })
}

type WriteResult = Result<(u64, Applied), Status>;

/// What became of a write: applied here, or to be forwarded to the leader.
enum Proposed {
    Here(WriteResult),
    AtLeader(Leader),
}

struct Leader {
    id: u64,
    addr: String,
    client: KvClient<Channel>,
}

impl Leader {
    fn relay<T>(&self, answer: Result<Response<T>, Status>) -> Result<Response<T>, Status> {
        answer.map_err(|s| refused_forward(self.id, &self.addr, s))
    }
}

/// The leader's refusal of a forward's identity becomes UNAVAILABLE: the write
/// was not applied, and another member may still reach the real leader.
fn refused_forward(leader: u64, addr: &str, s: Status) -> Status {
    match s.code() {
        Code::FailedPrecondition => Status::unavailable(format!(
            "the peer address {addr} of leader {leader} refused the forwarded write, which \
             was not applied: {}; retry",
            s.message()
        )),
        _ => s,
    }
}

impl KvService {
    /// The service of the client port; see [`serving_peers`](Self::serving_peers).
    pub fn new(
        node: NodeHandle,
        peers: Arc<dyn PeerTable>,
        timeout: Duration,
        metrics: Metrics,
        me: Identity,
        dialer: Dialer,
    ) -> KvService {
        KvService {
            node,
            peers,
            timeout,
            metrics,
            me,
            listener: Listener::Client,
            dialer,
            leaders: Arc::default(),
        }
    }

    /// The same service for the peer port, which serves only forwarded requests.
    pub fn serving_peers(mut self) -> KvService {
        self.listener = Listener::Peer;
        self
    }

    fn origin<T>(&self, req: &Request<T>) -> Result<Origin, Status> {
        forward::origin(req.metadata(), &self.me, self.listener)
    }

    /// Proposes locally on the leader; elsewhere finds the leader to forward to.
    async fn write(&self, op: Op, origin: Origin) -> Proposed {
        let cmd = LogCommand { op: Some(op) };
        let result = tokio::time::timeout(self.timeout, self.node.write(cmd)).await;
        let result = match result {
            Ok(Err(NodeError::NotLeader { leader_id })) => {
                let addr = self.peers.peer_addr(leader_id);
                match (origin, addr) {
                    (Origin::Client, Some(addr)) => match self.leader_client(leader_id, addr) {
                        Ok(l) => return Proposed::AtLeader(l),
                        Err(e) => Err(e),
                    },
                    (Origin::Client, None) => Err(forward::not_leader(
                        self.me.id,
                        leader_id,
                        None,
                        "does not know the leader's address",
                    )),
                    (Origin::Member, addr) => Err(forward::not_leader(
                        self.me.id,
                        leader_id,
                        addr.as_deref(),
                        "a forwarded write is never forwarded again",
                    )),
                }
            }
            Ok(r) => r.map(|o| (o.index, o.applied)).map_err(super::to_status),
            Err(_) => Err(super::deadline("write", self.timeout)),
        };
        let kind = if result.is_ok() { "ok" } else { "error" };
        self.metrics.proposals.get_or_create(&Kind { kind }).inc();
        Proposed::Here(result)
    }

    fn leader_client(&self, id: u64, addr: String) -> Result<Leader, Status> {
        let mut map = self.leaders.lock().expect("leader clients poisoned");
        if let Some(c) = map.get(&(id, addr.clone())) {
            return Ok(Leader {
                id,
                addr,
                client: c.clone(),
            });
        }
        let endpoint = self
            .dialer
            .endpoint(&addr)
            .map_err(|e| Status::unavailable(format!("leader {id}'s peer address {addr:?}: {e}")))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(self.timeout);
        let client = KvClient::new(self.dialer.channel(endpoint, Expect::Member(id)));
        keep_current(&mut map, |id| self.peers.peer_addr(id));
        map.insert((id, addr.clone()), client.clone());
        Ok(Leader { id, addr, client })
    }

    /// `msg` addressed to leader `l`, with the identity it must check.
    fn to_leader<T>(&self, l: &Leader, msg: T) -> Result<Request<T>, Status> {
        forward::forwarded(msg, &self.me.cluster_id, l.id)
    }

    async fn query(&self, q: Query) -> Result<QueryResult, Status> {
        bounded(self.timeout, "read", self.node.read(q)).await
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        require_key(&r.key)?;
        match self.write(Op::Put(r.clone()), origin).await {
            Proposed::Here(res) => res.map(|(index, _)| Response::new(PutResponse { index })),
            Proposed::AtLeader(mut l) => {
                let fwd = self.to_leader(&l, r)?;
                let answer = l.client.put(fwd).await;
                l.relay(answer)
            }
        }
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        self.origin(&req)?;
        let r = req.into_inner();
        require_key(&r.key)?;
        match self.query(Query::Get(r.key)).await? {
            QueryResult::Get(v) => Ok(Response::new(GetResponse {
                found: v.is_some(),
                value: v.unwrap_or_default(),
            })),
            QueryResult::Scan(_) => Err(Status::internal("raft loop answered a get with a scan")),
        }
    }

    async fn delete(
        &self,
        req: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        require_key(&r.key)?;
        match self.write(Op::Delete(r.clone()), origin).await {
            Proposed::Here(res) => res.map(|(index, applied)| {
                Response::new(DeleteResponse {
                    existed: applied == Applied::Delete { existed: true },
                    index,
                })
            }),
            Proposed::AtLeader(mut l) => {
                let fwd = self.to_leader(&l, r)?;
                let answer = l.client.delete(fwd).await;
                l.relay(answer)
            }
        }
    }

    async fn scan(&self, req: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        self.origin(&req)?;
        let range = scan_range(req.into_inner())?;
        match self.query(Query::Scan(range)).await? {
            QueryResult::Scan(page) => {
                let next_start_after = match (page.more, page.items.last()) {
                    (true, Some(last)) => last.key.clone(),
                    _ => Vec::new(),
                };
                Ok(Response::new(ScanResponse {
                    items: page.items,
                    more: page.more,
                    next_start_after,
                }))
            }
            QueryResult::Get(_) => Err(Status::internal("raft loop answered a scan with a get")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_clients_of_moved_or_removed_peers_are_dropped() {
        let mut map: HashMap<LeaderKey, ()> = HashMap::new();
        for (id, addr) in [(1, "a:1"), (2, "b:1"), (2, "b:2"), (3, "c:1")] {
            map.insert((id, addr.to_string()), ());
        }
        let table = |id| match id {
            1 => Some("a:1".to_string()),
            2 => Some("b:2".to_string()),
            _ => None,
        };
        keep_current(&mut map, table);
        let mut left: Vec<_> = map.into_keys().collect();
        left.sort();
        assert_eq!(left, [(1, "a:1".to_string()), (2, "b:2".to_string())]);
    }

    fn req(limit: u32) -> ScanRequest {
        ScanRequest {
            prefix: b"p/".to_vec(),
            limit,
            start_after: b"p/7".to_vec(),
        }
    }

    #[test]
    fn scan_limit_zero_is_the_default_and_the_maximum_is_allowed() {
        let r = scan_range(req(0)).unwrap();
        assert_eq!(r.limit, DEFAULT_SCAN_LIMIT as usize);
        assert_eq!((r.prefix, r.start_after), (b"p/".to_vec(), b"p/7".to_vec()));
        assert_eq!(r.max_bytes, MAX_SCAN_BYTES);
        assert_eq!(
            scan_range(req(MAX_SCAN_LIMIT)).unwrap().limit,
            MAX_SCAN_LIMIT as usize
        );
    }

    #[test]
    fn a_refused_forward_is_relayed_as_unavailable_and_other_answers_unchanged() {
        let s = refused_forward(
            3,
            "127.0.0.3:7000",
            Status::failed_precondition("forwarded request for member 3 reached member 5"),
        );
        assert_eq!(s.code(), Code::Unavailable);
        for part in [
            "127.0.0.3:7000",
            "leader 3",
            "not applied",
            "reached member 5",
        ] {
            assert!(s.message().contains(part), "lacks {part}: {}", s.message());
        }
        let s = refused_forward(3, "127.0.0.3:7000", Status::invalid_argument("key"));
        assert_eq!((s.code(), s.message()), (Code::InvalidArgument, "key"));
    }

    #[test]
    fn scan_limit_above_the_maximum_is_refused_naming_limit_and_the_maximum() {
        let e = scan_range(req(MAX_SCAN_LIMIT + 1)).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains("limit 10001") && e.message().contains("10000"),
            "{}",
            e.message()
        );
    }
}
