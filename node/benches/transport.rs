//! Transport benchmarks over real gRPC on loopback, sender and receiver in one
//! process so one clock times delivery. Prints figures measured side by side:
//!
//! - lane isolation: heartbeat delivery delay while a 256 MiB snapshot streams to
//!   the peer under append load, with 4 lanes and with 1 lane, against idle;
//! - stream vs unary: small messages per second to one peer, with and without
//!   batching, at loopback latency and through a 2 ms RTT delay proxy.

#[path = "support/delay_proxy.rs"]
mod delay_proxy;

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::prelude::{Entry, Message, MessageType};
use raft_node::metrics::Metrics;
use raft_node::storage::SnapshotStore;
use raft_node::transport::channels::ChannelSettings;
use raft_node::transport::grpc::{GrpcConfig, GrpcTransport, LaneMode};
use raft_node::transport::report::ReportSender;
use raft_node::transport::{PeerTable, Transport};
use raftlane_proto::transport::raft_transport_server::{RaftTransport, RaftTransportServer};
use raftlane_proto::transport::{Ack, RaftEnvelope, SnapshotChunk};
use tonic::{Request, Response, Status, Streaming};

const SNAPSHOT_BYTES: usize = 256 << 20;
const HEARTBEAT_EVERY: Duration = Duration::from_millis(5);

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    start().elapsed().as_nanos() as u64
}

/// A receiver that timestamps heartbeats and counts everything else.
#[derive(Clone, Default)]
struct Sink {
    heartbeat_delays: Arc<Mutex<Vec<Duration>>>,
    messages: Arc<AtomicU64>,
    snapshot_done: Arc<AtomicU64>,
}

impl Sink {
    fn take(&self, env: &RaftEnvelope) {
        let arrived = now_ns();
        self.messages
            .fetch_add(env.messages.len() as u64, Ordering::Relaxed);
        let mut d = self.heartbeat_delays.lock().unwrap();
        for b in &env.messages {
            let m = Message::parse_from_bytes(b).unwrap();
            if m.get_msg_type() == MessageType::MsgHeartbeat {
                d.push(Duration::from_nanos(arrived.saturating_sub(m.commit)));
            }
        }
    }
}

#[tonic::async_trait]
impl RaftTransport for Sink {
    async fn send(&self, r: Request<RaftEnvelope>) -> Result<Response<Ack>, Status> {
        self.take(r.get_ref());
        Ok(Response::new(Ack::default()))
    }
    async fn send_stream(
        &self,
        r: Request<Streaming<RaftEnvelope>>,
    ) -> Result<Response<Ack>, Status> {
        let mut s = r.into_inner();
        while let Some(env) = s.message().await? {
            self.take(&env);
        }
        Ok(Response::new(Ack::default()))
    }
    async fn send_snapshot(
        &self,
        r: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<Ack>, Status> {
        let mut s = r.into_inner();
        while s.message().await?.is_some() {}
        self.snapshot_done.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(Ack::default()))
    }
}

async fn serve(sink: Sink) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    // The peer port as raft-node serves it, with its default limits.
    let cfg = raft_node::config::NodeConfig::defaults();
    let metrics = raft_node::metrics::Metrics::new();
    let port = raft_node::ports::Port::Peer;
    tokio::spawn(
        port.server(&cfg)
            .layer(port.budget(&cfg, &metrics).layer())
            .add_service(
                RaftTransportServer::new(sink).max_decoding_message_size(port.max_message()),
            )
            .serve_with_incoming(raft_node::node::incoming(
                l,
                None,
                port.gate(&cfg, &metrics),
            )),
    );
    addr
}

fn transport(
    lanes: LaneMode,
    unary: bool,
    max_batch: usize,
    snapshots: &SnapshotStore,
) -> GrpcTransport {
    let (tx, rx) = ReportSender::channel(1 << 16, Default::default());
    // Reports are not under test here; keep the channel from filling.
    tokio::spawn(async move {
        let mut rx = rx;
        while rx.recv().await.is_some() {}
    });
    GrpcTransport::new(
        GrpcConfig {
            cluster_id: "bench".into(),
            id: 1,
            advertise_addr: "127.0.0.1:1".into(),
            send_timeout: Duration::from_secs(30),
            max_inflight: 256,
            lanes,
            unary_only: unary,
            max_batch,
            channel: ChannelSettings::default(),
            dialer: raftlane_tls::Dialer::Plaintext,
        },
        tx,
        snapshots.clone(),
        Metrics::new(),
    )
}

/// A message as a peer sends it: with its term (the receiver refuses term 0).
fn msg(t: MessageType, commit: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(t);
    m.from = 1;
    m.to = 2;
    m.term = 6;
    m.commit = commit;
    m
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

struct IsolationRun {
    name: &'static str,
    sent: usize,
    delays: Vec<Duration>,
    snapshot_secs: Option<f64>,
}

/// Heartbeats every 5 ms to one peer; with `load`, a 256 MiB snapshot and a
/// stream of 4 KiB appends go to the same peer at the same time.
async fn isolation(
    name: &'static str,
    lanes: LaneMode,
    load: bool,
    snapshots: &SnapshotStore,
) -> IsolationRun {
    let sink = Sink::default();
    let addr = serve(sink.clone()).await;
    let t = Arc::new(transport(lanes, false, 256, snapshots));
    t.upsert_peer(2, &addr).unwrap();
    // Open the streams first, so connection setup is not part of the figures.
    t.send(vec![msg(MessageType::MsgHeartbeat, now_ns())]);
    while sink.heartbeat_delays.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    sink.heartbeat_delays.lock().unwrap().clear();

    let began = Instant::now();
    let stop = Arc::new(AtomicU64::new(0));
    let mut load_task = None;
    if load {
        let mut snap = msg(MessageType::MsgSnapshot, 0);
        snap.mut_snapshot().mut_metadata().index = 1000;
        snap.mut_snapshot().mut_metadata().term = 1;
        t.send(vec![snap]);
        let (t, stop) = (t.clone(), stop.clone());
        load_task = Some(tokio::spawn(async move {
            let mut i = 0;
            while stop.load(Ordering::Relaxed) == 0 {
                let mut m = msg(MessageType::MsgAppend, i);
                m.mut_entries().push(Entry {
                    data: vec![1u8; 4096].into(),
                    ..Default::default()
                });
                t.send(vec![m]);
                i += 1;
                if i % 8 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }));
    }
    let mut sent = 0;
    let min = Duration::from_secs(2);
    let max = Duration::from_secs(60);
    let mut snapshot_secs = None;
    loop {
        t.send(vec![msg(MessageType::MsgHeartbeat, now_ns())]);
        sent += 1;
        tokio::time::sleep(HEARTBEAT_EVERY).await;
        let done = sink.snapshot_done.load(Ordering::SeqCst) > 0;
        if done && snapshot_secs.is_none() {
            snapshot_secs = Some(began.elapsed().as_secs_f64());
        }
        if began.elapsed() >= max || (began.elapsed() >= min && (!load || done)) {
            break;
        }
    }
    stop.store(1, Ordering::Relaxed);
    if let Some(l) = load_task {
        let _ = l.await;
    }
    // Give the last heartbeats time to land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    t.remove_peer(2);
    let delays = sink.heartbeat_delays.lock().unwrap().clone();
    IsolationRun {
        name,
        sent,
        delays,
        snapshot_secs,
    }
}

/// Small messages offered as fast as the replication lane takes them, for 2 s,
/// optionally through a proxy adding `one_way` latency in each direction.
async fn throughput(
    unary: bool,
    max_batch: usize,
    one_way: Duration,
    snapshots: &SnapshotStore,
) -> f64 {
    let sink = Sink::default();
    let mut addr = serve(sink.clone()).await;
    if !one_way.is_zero() {
        let proxy = delay_proxy::start(
            "127.0.0.1:0".parse().unwrap(),
            addr.parse().unwrap(),
            one_way,
        )
        .await;
        addr = proxy.to_string();
    }
    let t = transport(LaneMode::Four, unary, max_batch, snapshots);
    t.upsert_peer(2, &addr).unwrap();
    t.send(vec![msg(MessageType::MsgAppend, 0)]);
    while sink.messages.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let base = sink.messages.load(Ordering::Relaxed);
    let began = Instant::now();
    let mut i = 0u64;
    while began.elapsed() < Duration::from_secs(2) {
        let queued = t.peers()[0]
            .lanes
            .iter()
            .find(|l| l.name == "replication")
            .map_or(0, |l| l.queued);
        if queued < 200 {
            t.send(
                (0..50)
                    .map(|k| msg(MessageType::MsgAppend, i + k))
                    .collect(),
            );
            i += 50;
        } else {
            tokio::task::yield_now().await;
        }
    }
    let got = sink.messages.load(Ordering::Relaxed) - base;
    let rate = got as f64 / began.elapsed().as_secs_f64();
    t.remove_peer(2);
    rate
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        start();
        let dir = tempfile::tempdir().unwrap();
        let snapshots = SnapshotStore::open(dir.path()).unwrap();
        print!("writing a {} MiB snapshot file... ", SNAPSHOT_BYTES >> 20);
        std::io::stdout().flush().unwrap();
        let mut w = snapshots.create(1, 1000).unwrap();
        let block = vec![3u8; 1 << 20];
        for _ in 0..(SNAPSHOT_BYTES >> 20) {
            w.write_all(&block).unwrap();
        }
        w.finish().unwrap();
        println!("done");

        println!("\n== lane isolation: heartbeat delivery delay (every {HEARTBEAT_EVERY:?}) ==");
        println!(
            "{:<28} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10}",
            "mode", "sent", "received", "p50", "p99", "max", "snapshot"
        );
        let mut runs = Vec::new();
        runs.push(isolation("idle (4 lanes, no load)", LaneMode::Four, false, &snapshots).await);
        runs.push(
            isolation(
                "4 lanes + snapshot + appends",
                LaneMode::Four,
                true,
                &snapshots,
            )
            .await,
        );
        runs.push(
            isolation(
                "1 lane + snapshot + appends",
                LaneMode::One,
                true,
                &snapshots,
            )
            .await,
        );
        let mut p99s = Vec::new();
        for r in &mut runs {
            let (p50, p99, max) = (
                pct(&mut r.delays, 0.5),
                pct(&mut r.delays, 0.99),
                pct(&mut r.delays, 1.0),
            );
            p99s.push(p99);
            let snap = r
                .snapshot_secs
                .map_or("-".to_string(), |s| format!("{s:.1} s"));
            println!(
                "{:<28} {:>9} {:>9} {:>10.2?} {:>10.2?} {:>10.2?} {:>10}",
                r.name,
                r.sent,
                r.delays.len(),
                p50,
                p99,
                max,
                snap
            );
        }
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
        println!(
            "p99 ratio 4 lanes / idle: {:.2}x (goal <= 2x)",
            ratio(p99s[1], p99s[0])
        );
        println!(
            "p99 ratio 1 lane / 4 lanes: {:.0}x",
            ratio(p99s[2], p99s[1])
        );

        println!("\n== stream vs unary: small messages per second to one peer ==");
        println!(
            "{:<22} {:>10} {:>14} {:>14} {:>8}",
            "batching", "RTT", "stream msg/s", "unary msg/s", "ratio"
        );
        for one_way in [Duration::ZERO, Duration::from_millis(1)] {
            for batch in [1usize, 256] {
                let s = throughput(false, batch, one_way, &snapshots).await;
                let u = throughput(true, batch, one_way, &snapshots).await;
                let label = if batch == 1 {
                    "1 message / envelope"
                } else {
                    "up to 256 / envelope"
                };
                let rtt = if one_way.is_zero() {
                    "loopback".to_string()
                } else {
                    format!("{:?}", one_way * 2)
                };
                println!("{label:<22} {rtt:>10} {s:>14.0} {u:>14.0} {:>7.1}x", s / u);
            }
        }
        println!("(goal: stream >= 20x unary, one message per envelope)");
    });
}
