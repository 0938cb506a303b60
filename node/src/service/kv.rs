//! `Kv` service. Any member accepts writes: raft forwards the proposal to the
//! leader, and the member answers once it applies the entry itself. Reads are
//! linearizable on any member through a ReadIndex round with the leader.

use std::time::Duration;

use raftlane_proto::kv::kv_server::Kv;
use raftlane_proto::kv::{
    log_command::Op, DeleteRequest, DeleteResponse, GetRequest, GetResponse, LogCommand,
    PutRequest, PutResponse, ScanRequest, ScanResponse,
};
use tonic::{Request, Response, Status};

use super::bounded;
use crate::consensus::{NodeHandle, Query, QueryResult};
use crate::metrics::{Kind, Metrics};
use crate::state_machine::Applied;

pub struct KvService {
    pub node: NodeHandle,
    pub timeout: Duration,
    pub metrics: Metrics,
}

fn require_key(key: &[u8]) -> Result<(), Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument("key must not be empty"));
    }
    Ok(())
}

impl KvService {
    async fn write(&self, op: Op) -> Result<(u64, Applied), Status> {
        let cmd = LogCommand { op: Some(op) };
        let r = bounded(self.timeout, "write", self.node.write(cmd)).await;
        if r.is_err() {
            self.metrics
                .proposals
                .get_or_create(&Kind { kind: "error" })
                .inc();
        }
        r.map(|o| (o.index, o.applied))
    }

    async fn query(&self, q: Query) -> Result<QueryResult, Status> {
        bounded(self.timeout, "read", self.node.read(q)).await
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let r = req.into_inner();
        require_key(&r.key)?;
        let (index, _) = self.write(Op::Put(r)).await?;
        Ok(Response::new(PutResponse { index }))
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
        let r = req.into_inner();
        require_key(&r.key)?;
        let (index, applied) = self.write(Op::Delete(r)).await?;
        Ok(Response::new(DeleteResponse {
            existed: applied == Applied::Delete { existed: true },
            index,
        }))
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
