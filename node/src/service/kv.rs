//! `Kv` service, served on the client port and on the peer port. Any member
//! accepts writes: a follower forwards the request to the leader's `Kv` service
//! on the leader's peer address (one hop, marked so it is never forwarded again)
//! and relays the answer. Reads are linearizable on any member through a
//! ReadIndex round with the leader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftlane_proto::kv::kv_client::KvClient;
use raftlane_proto::kv::kv_server::Kv;
use raftlane_proto::kv::{
    log_command::Op, DeleteRequest, DeleteResponse, GetRequest, GetResponse, LogCommand,
    PutRequest, PutResponse, ScanRequest, ScanResponse,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::bounded;
use crate::consensus::{NodeError, NodeHandle, Query, QueryResult};
use crate::metrics::{Kind, Metrics};
use crate::state_machine::Applied;
use crate::transport::Transport;

/// Marks a request a follower forwarded, so the receiver answers itself.
const FORWARDED: &str = "x-raftlane-forwarded";

pub struct KvService {
    pub node: NodeHandle,
    pub transport: Arc<dyn Transport>,
    pub timeout: Duration,
    pub metrics: Metrics,
    /// One lazily connected client per leader address.
    leaders: Mutex<HashMap<String, KvClient<Channel>>>,
}

fn require_key(key: &[u8]) -> Result<(), Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument("key must not be empty"));
    }
    Ok(())
}

/// What a follower does with a write it cannot propose.
enum Route {
    Local(WriteResult),
    Leader(KvClient<Channel>),
}

type WriteResult = Result<(u64, Applied), Status>;

impl KvService {
    pub fn new(
        node: NodeHandle,
        transport: Arc<dyn Transport>,
        timeout: Duration,
        metrics: Metrics,
    ) -> KvService {
        KvService {
            node,
            transport,
            timeout,
            metrics,
            leaders: Mutex::default(),
        }
    }

    /// Proposes locally on the leader; elsewhere says where the leader is.
    async fn write(&self, op: Op, forwarded: bool) -> Route {
        let cmd = LogCommand { op: Some(op) };
        let result = tokio::time::timeout(self.timeout, self.node.write(cmd)).await;
        let result = match result {
            Ok(Err(NodeError::NotLeader { leader_id })) if !forwarded => {
                match self.leader_client(leader_id) {
                    Some(c) => return Route::Leader(c),
                    None => Err(Status::unavailable(format!(
                        "member {leader_id} leads but its address is unknown here; retry"
                    ))),
                }
            }
            Ok(r) => r.map(|o| (o.index, o.applied)).map_err(super::to_status),
            Err(_) => Err(super::deadline("write", self.timeout)),
        };
        let kind = if result.is_ok() { "ok" } else { "error" };
        self.metrics.proposals.get_or_create(&Kind { kind }).inc();
        Route::Local(result)
    }

    fn leader_client(&self, leader: u64) -> Option<KvClient<Channel>> {
        let addr = self.transport.peer_addr(leader)?;
        let mut map = self.leaders.lock().expect("leader clients poisoned");
        if let Some(c) = map.get(&addr) {
            return Some(c.clone());
        }
        let ch = Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect_timeout(Duration::from_secs(3))
            .timeout(self.timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        let c = KvClient::new(ch);
        map.insert(addr, c.clone());
        Some(c)
    }

    async fn query(&self, q: Query) -> Result<QueryResult, Status> {
        bounded(self.timeout, "read", self.node.read(q)).await
    }
}

fn forwarded<T>(req: T) -> Request<T> {
    let mut r = Request::new(req);
    r.metadata_mut()
        .insert(FORWARDED, "1".parse().expect("ascii"));
    r
}

fn was_forwarded<T>(req: &Request<T>) -> bool {
    req.metadata().contains_key(FORWARDED)
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let fwd = was_forwarded(&req);
        let r = req.into_inner();
        require_key(&r.key)?;
        match self.write(Op::Put(r.clone()), fwd).await {
            Route::Local(res) => res.map(|(index, _)| Response::new(PutResponse { index })),
            Route::Leader(mut c) => c.put(forwarded(r)).await,
        }
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
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
        let fwd = was_forwarded(&req);
        let r = req.into_inner();
        require_key(&r.key)?;
        match self.write(Op::Delete(r.clone()), fwd).await {
            Route::Local(res) => res.map(|(index, applied)| {
                Response::new(DeleteResponse {
                    existed: applied == Applied::Delete { existed: true },
                    index,
                })
            }),
            Route::Leader(mut c) => c.delete(forwarded(r)).await,
        }
    }

    async fn scan(&self, req: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        let r = req.into_inner();
        match self
            .query(Query::Scan {
                prefix: r.prefix,
                limit: r.limit,
            })
            .await?
        {
            QueryResult::Scan(items) => Ok(Response::new(ScanResponse { items })),
            QueryResult::Get(_) => Err(Status::internal("raft loop answered a scan with a get")),
        }
    }
}
