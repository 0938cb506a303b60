//! Concurrent clients on a few keys: puts of unique values and linearizable
//! gets, each sent once to a member drawn at random, each recorded.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use raftlane_proto::kv::kv_client::KvClient;
use raftlane_proto::kv::{GetRequest, PutRequest};
use raftlane_tls::{Dialer, Expect};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

use crate::history::{write_error, History, Outcome, Record};

/// Deadline of one attempt; past it the outcome is unknown.
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// Most operations one client issues in a run, whatever its length.
const MAX_OPS_PER_CLIENT: usize = 200_000;

/// Member id → client address, updated when a member moves.
pub type Endpoints = Arc<RwLock<BTreeMap<u64, String>>>;

/// How a client answers a get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPath {
    /// Ask a member: ReadIndex makes it linearizable.
    Linearizable,
    /// Deliberately wrong: answer from the last value this client put or read,
    /// without asking anyone, as a member serving its local state would.
    ClientCache,
}

pub fn key(i: usize) -> String {
    format!("key-{i}")
}

pub struct Workload {
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Workload {
    /// `paths[i]` is client i's read path.
    pub fn start(
        seed: u64,
        paths: &[ReadPath],
        keys: usize,
        endpoints: Endpoints,
        history: Arc<History>,
        dialer: &Dialer,
    ) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = paths
            .iter()
            .enumerate()
            .map(|(i, path)| {
                let seed = seed ^ (0x9e37_79b9 * (i as u64 + 1));
                let client = Client::new(i, seed, *path, keys, &endpoints, &history, dialer);
                tokio::spawn(client.run(stop.clone()))
            })
            .collect();
        Workload { stop, clients }
    }

    /// Stops issuing; in-flight operations finish (each within `OP_TIMEOUT`).
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            c.await.expect("client task");
        }
    }
}

/// One linearizable get of each key through `endpoints`, recorded as client `id`.
pub async fn read_every_key(
    id: usize,
    keys: usize,
    endpoints: Endpoints,
    history: Arc<History>,
    dialer: &Dialer,
) {
    let mut reader = Client::new(
        id,
        0,
        ReadPath::Linearizable,
        keys,
        &endpoints,
        &history,
        dialer,
    );
    for k in 0..keys {
        reader.get(key(k)).await;
    }
}

/// Puts unique values to `key` through `endpoints`, one recorded attempt at a
/// time, until one is acknowledged or `within` passes; true if one was.
pub async fn put_until_acknowledged(
    id: usize,
    key: &str,
    endpoints: Endpoints,
    history: Arc<History>,
    within: Duration,
    dialer: &Dialer,
) -> bool {
    let mut writer = Client::new(
        id,
        id as u64,
        ReadPath::Linearizable,
        1,
        &endpoints,
        &history,
        dialer,
    );
    let deadline = std::time::Instant::now() + within;
    for seq in 0..1_000 {
        writer.put(key.to_string(), format!("c{id}-{seq}")).await;
        if writer.cache.contains_key(key) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

struct Client {
    id: usize,
    rng: StdRng,
    path: ReadPath,
    keys: usize,
    endpoints: Endpoints,
    history: Arc<History>,
    dialer: Dialer,
    channels: HashMap<String, KvClient<Channel>>,
    cache: HashMap<String, Option<String>>,
}

impl Client {
    fn new(
        id: usize,
        seed: u64,
        path: ReadPath,
        keys: usize,
        endpoints: &Endpoints,
        history: &Arc<History>,
        dialer: &Dialer,
    ) -> Client {
        Client {
            id,
            rng: StdRng::seed_from_u64(seed),
            path,
            keys,
            endpoints: endpoints.clone(),
            history: history.clone(),
            dialer: dialer.clone(),
            channels: HashMap::new(),
            cache: HashMap::new(),
        }
    }

    async fn run(mut self, stop: Arc<AtomicBool>) {
        for seq in 0..MAX_OPS_PER_CLIENT {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let key = key(self.rng.gen_range(0..self.keys));
            if self.rng.gen_bool(0.5) {
                self.put(key, format!("c{}-{seq}", self.id)).await;
            } else {
                self.get(key).await;
            }
            let pause = self.rng.gen_range(0..20);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    fn member(&mut self) -> Option<KvClient<Channel>> {
        let addrs: Vec<String> = self
            .endpoints
            .read()
            .expect("endpoints poisoned")
            .values()
            .cloned()
            .collect();
        if addrs.is_empty() {
            return None;
        }
        let addr = addrs[self.rng.gen_range(0..addrs.len())].clone();
        let dialer = &self.dialer;
        let c = self.channels.entry(addr.clone()).or_insert_with(|| {
            let endpoint = dialer
                .endpoint(&addr)
                .expect("endpoint")
                .connect_timeout(Duration::from_secs(1))
                .timeout(OP_TIMEOUT);
            KvClient::new(dialer.channel(endpoint, Expect::AnyMember))
        });
        Some(c.clone())
    }

    async fn put(&mut self, key: String, value: String) {
        let Some(mut c) = self.member() else { return };
        let invoke = self.history.now();
        let req = PutRequest {
            key: key.clone().into_bytes(),
            value: value.clone().into_bytes(),
        };
        let outcome = match tokio::time::timeout(OP_TIMEOUT, c.put(req)).await {
            Ok(Ok(_)) => Outcome::Ok(None),
            Ok(Err(s)) => write_error(&s),
            Err(_) => Outcome::Unknown,
        };
        if outcome == Outcome::Ok(None) {
            self.cache.insert(key.clone(), Some(value.clone()));
        }
        self.record(key, Some(value), invoke, outcome);
    }

    async fn get(&mut self, key: String) {
        if self.path == ReadPath::ClientCache {
            if let Some(cached) = self.cache.get(&key).cloned() {
                let invoke = self.history.now();
                self.record(key, None, invoke, Outcome::Ok(cached));
                return;
            }
        }
        let Some(mut c) = self.member() else { return };
        let invoke = self.history.now();
        let req = GetRequest {
            key: key.clone().into_bytes(),
        };
        let outcome = match tokio::time::timeout(OP_TIMEOUT, c.get(req)).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                let v = r
                    .found
                    .then(|| String::from_utf8_lossy(&r.value).into_owned());
                self.cache.insert(key.clone(), v.clone());
                Outcome::Ok(v)
            }
            // A read that was not answered changed nothing.
            _ => Outcome::Failed,
        };
        self.record(key, None, invoke, outcome);
    }

    fn record(&self, key: String, put: Option<String>, invoke: u64, outcome: Outcome) {
        self.history.push(Record {
            client: self.id,
            key,
            put,
            invoke,
            complete: self.history.now(),
            outcome,
        });
    }
}
