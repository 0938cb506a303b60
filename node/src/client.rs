//! A key-value client over several endpoints: a request that fails because a
//! member is down, has no leader yet, or timed out is retried until the overall
//! deadline, on the leader's endpoint when the answer names the leader's peer
//! address and an endpoint has its host (a pod's ports share its IP), else on the
//! next endpoint. Used by `raftctl`, tests and benchmarks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use raftlane_proto::kv::kv_client::KvClient as GrpcKv;
use raftlane_proto::kv::{DeleteRequest, GetRequest, KeyValue, PutRequest, ScanRequest};
use raftlane_tls::{Dialer, Expect};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::service::LEADER_PEER_ADDR_HEADER;
use crate::transport::validate_peer_addr;

/// Largest response accepted: a scan page (about 4 MiB of pairs) plus framing,
/// or one pair larger than that.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

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
    /// `endpoints` are `host:port` client addresses, each a member of the
    /// cluster `dialer` trusts; connections are made lazily.
    pub fn new(
        endpoints: &[String],
        deadline: Duration,
        dialer: &Dialer,
    ) -> anyhow::Result<KvClient> {
        anyhow::ensure!(!endpoints.is_empty(), "no endpoints given");
        let mut out = Vec::new();
        for e in endpoints {
            validate_peer_addr(e).map_err(|err| anyhow::anyhow!("endpoint: {err}"))?;
            let endpoint = dialer
                .endpoint(e)?
                .connect_timeout(Duration::from_secs(2))
                .timeout(deadline);
            let ch = dialer.channel(endpoint, Expect::AnyMember);
            let client = GrpcKv::new(ch).max_decoding_message_size(MAX_RESPONSE_BYTES);
            out.push((e.clone(), client));
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
                    let to = next_endpoint(&self.endpoints, i, &s);
                    tracing::debug!(endpoint = %addr, code = ?s.code(), next = %self.endpoints[to].0, "retrying");
                    self.next.store(to, Ordering::Relaxed);
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

    /// Reads the pairs under `prefix` in key order, following pages of
    /// `page_size` pairs, and hands each to `each`; stops after `limit` pairs
    /// (0: all). Returns how many were handed over. Each page is its own
    /// linearizable read, so the whole scan is not one point-in-time view.
    pub async fn scan(
        &self,
        prefix: &[u8],
        page_size: u32,
        limit: u64,
        mut each: impl FnMut(KeyValue),
    ) -> Result<u64, Status> {
        let (mut seen, mut start_after) = (0u64, Vec::new());
        loop {
            let want = match limit {
                0 => page_size,
                l => page_size.min(u32::try_from(l - seen).unwrap_or(u32::MAX)),
            };
            let page = self
                .with_retry(|mut c| {
                    let req = ScanRequest {
                        prefix: prefix.to_vec(),
                        limit: want,
                        start_after: start_after.clone(),
                    };
                    async move { c.scan(req).await.map(|r| r.into_inner()) }
                })
                .await?;
            seen += page.items.len() as u64;
            page.items.into_iter().for_each(&mut each);
            if !page.more || (limit > 0 && seen >= limit) {
                return Ok(seen);
            }
            start_after = page.next_start_after;
        }
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

fn host(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

/// Which endpoint to try after `status` from endpoint `current`: the one on the
/// leader's host when the status names the leader's peer address, else the next.
fn next_endpoint<C>(endpoints: &[(String, C)], current: usize, status: &Status) -> usize {
    let leader = status
        .metadata()
        .get(LEADER_PEER_ADDR_HEADER)
        .and_then(|v| v.to_str().ok());
    leader
        .and_then(|l| endpoints.iter().position(|(e, _)| host(e) == host(l)))
        .filter(|&i| i != current)
        .unwrap_or((current + 1) % endpoints.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints() -> Vec<(String, ())> {
        ["127.0.0.1:5001", "127.0.0.2:5002", "127.0.0.3:5003"]
            .iter()
            .map(|e| (e.to_string(), ()))
            .collect()
    }

    fn unavailable(leader_peer: Option<&str>) -> Status {
        let mut s = Status::unavailable("not the leader");
        if let Some(a) = leader_peer {
            s.metadata_mut()
                .insert(LEADER_PEER_ADDR_HEADER, a.parse().unwrap());
        }
        s
    }

    #[test]
    fn a_leader_hint_moves_to_the_endpoint_on_the_leaders_host() {
        let s = unavailable(Some("127.0.0.3:7003"));
        assert_eq!(next_endpoint(&endpoints(), 0, &s), 2);
    }

    #[test]
    fn without_a_usable_hint_the_next_endpoint_is_tried() {
        let eps = endpoints();
        assert_eq!(next_endpoint(&eps, 0, &unavailable(None)), 1);
        assert_eq!(next_endpoint(&eps, 2, &unavailable(None)), 0);
        // The leader's host is not among the endpoints.
        let s = unavailable(Some("10.0.0.9:7000"));
        assert_eq!(next_endpoint(&eps, 1, &s), 2);
        // A hint at the endpoint that just failed would loop on it.
        let s = unavailable(Some("127.0.0.2:7002"));
        assert_eq!(next_endpoint(&eps, 1, &s), 2);
    }
}
