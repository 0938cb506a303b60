//! A key-value client over several endpoints: a request that fails because a
//! member is down, has no leader yet, or timed out is retried on the next
//! endpoint until the overall deadline. Used by `raftctl`, tests and benchmarks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use raftlane_proto::kv::kv_client::KvClient as GrpcKv;
use raftlane_proto::kv::{DeleteRequest, GetRequest, KeyValue, PutRequest, ScanRequest};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::transport::validate_peer_addr;

pub struct KvClient {
    endpoints: Vec<(String, GrpcKv<Channel>)>,
    next: AtomicUsize,
    /// Total time one operation may take across retries.
    pub deadline: Duration,
}

/// Errors worth trying again elsewhere: the write or read may not have happened.
fn retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    )
}

impl KvClient {
    /// `endpoints` are `host:port` client addresses; connections are made lazily.
    pub fn new(endpoints: &[String], deadline: Duration) -> anyhow::Result<KvClient> {
        anyhow::ensure!(!endpoints.is_empty(), "no endpoints given");
        let mut out = Vec::new();
        for e in endpoints {
            validate_peer_addr(e).map_err(|err| anyhow::anyhow!("endpoint: {err}"))?;
            let ch = Endpoint::from_shared(format!("http://{e}"))?
                .connect_timeout(Duration::from_secs(2))
                .timeout(deadline)
                .connect_lazy();
            out.push((e.clone(), GrpcKv::new(ch)));
        }
        Ok(KvClient {
            endpoints: out,
            next: AtomicUsize::new(0),
            deadline,
        })
    }

    /// Runs `op` on endpoints in turn until it succeeds, fails for good, or the
    /// deadline passes (then the last error is returned).
    async fn with_retry<T, F, Fut>(&self, mut op: F) -> Result<T, Status>
    where
        F: FnMut(GrpcKv<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(20);
        loop {
            let i = self.next.load(Ordering::Relaxed) % self.endpoints.len();
            let (addr, client) = &self.endpoints[i];
            match op(client.clone()).await {
                Ok(v) => return Ok(v),
                Err(s) if retryable(&s) && start.elapsed() < self.deadline => {
                    tracing::debug!(endpoint = %addr, code = ?s.code(), "retrying on the next endpoint");
                    self.next.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(s) => {
                    return Err(Status::new(s.code(), format!("{addr}: {}", s.message())));
                }
            }
        }
    }

    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<u64, Status> {
        self.with_retry(|mut c| {
            let req = PutRequest {
                key: key.to_vec(),
                value: value.to_vec(),
            };
            async move { c.put(req).await.map(|r| r.into_inner().index) }
        })
        .await
    }

    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        self.with_retry(|mut c| {
            let req = GetRequest { key: key.to_vec() };
            async move {
                let r = c.get(req).await?.into_inner();
                Ok(r.found.then_some(r.value))
            }
        })
        .await
    }

    pub async fn delete(&self, key: &[u8]) -> Result<bool, Status> {
        self.with_retry(|mut c| {
            let req = DeleteRequest { key: key.to_vec() };
            async move { c.delete(req).await.map(|r| r.into_inner().existed) }
        })
        .await
    }

    pub async fn scan(&self, prefix: &[u8], limit: u32) -> Result<Vec<KeyValue>, Status> {
        self.with_retry(|mut c| {
            let req = ScanRequest {
                prefix: prefix.to_vec(),
                limit,
            };
            async move { c.scan(req).await.map(|r| r.into_inner().items) }
        })
        .await
    }

    /// One attempt on one endpoint, chosen round-robin: for benchmarks, which count
    /// errors instead of hiding them behind retries.
    pub async fn put_once(&self, key: Vec<u8>, value: Vec<u8>) -> Result<u64, Status> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        let mut c = self.endpoints[i].1.clone();
        c.put(PutRequest { key, value })
            .await
            .map(|r| r.into_inner().index)
    }
}
