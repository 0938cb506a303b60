//! The streaming lane transport against real tonic servers on loopback: stream
//! use, unary fallback, in-place peer updates, failures and reports, lane
//! isolation, drops, snapshots, and peer removal; then the receiver: whose
//! address it learns, and how it receives, refuses and stages snapshots.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use raft_node::metrics::{Metrics, PeerLane};
use raft_node::state_machine::KvStateMachine;
use raft_node::storage::{SnapshotStore, StagedSnapshot};
use raft_node::transport::channels::ChannelSettings;
use raft_node::transport::grpc::{GrpcConfig, GrpcTransport, LaneMode, MAX_LEARNED_PEERS};
use raft_node::transport::inbox::{Inbox, InboxReceiver};
use raft_node::transport::receiver::{Receiver, ReceiverConfig, ReceiverService};
use raft_node::transport::report::{Report, ReportSender};
use raft_node::transport::snapshot::{measure, SnapshotLimits};
use raft_node::transport::{PeerTable, Transport, MAX_MESSAGE_BYTES};
use raftlane_proto::kv::{log_command::Op, LogCommand, PutRequest};
use raftlane_proto::transport::raft_transport_client::RaftTransportClient;
use raftlane_proto::transport::raft_transport_server::{RaftTransport, RaftTransportServer};
use raftlane_proto::transport::{snapshot_chunk, Ack, RaftEnvelope, SnapshotChunk, SnapshotHeader};
use tokio::sync::{mpsc, watch, Semaphore};
use tonic::{Request, Response, Status, Streaming};

/// Every wait in these tests gives up after this long.
const WAIT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Unary,
    Stream,
}

#[derive(Clone, Debug)]
struct Got {
    to: u64,
    t: MessageType,
    seq: u64,
    via: Via,
}

#[derive(Default)]
struct Recorded {
    got: Mutex<Vec<Got>>,
    unary_calls: AtomicU64,
    /// SendStream calls started, probes included.
    stream_calls: AtomicU64,
    /// Streams that carried at least one envelope (probes carry none).
    data_streams: AtomicU64,
    accepts: AtomicU64,
    snapshot_bytes: AtomicU64,
    snapshots_done: AtomicU64,
}

impl Recorded {
    fn count(&self, f: impl Fn(&Got) -> bool) -> usize {
        self.got.lock().unwrap().iter().filter(|g| f(g)).count()
    }
}

#[derive(Clone, Default)]
struct Behavior {
    /// Answer UNIMPLEMENTED to SendStream, as a server built without it does.
    no_stream: bool,
    /// Stop reading a stream once it carries an append.
    stall_appends: bool,
    /// While set, stream calls (probes included) are neither read nor answered.
    stall_streams: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Read snapshot payload at this many bytes per second.
    snapshot_rate: Option<u64>,
    /// Hold each snapshot's ack until a permit is added.
    snapshot_gate: Option<Arc<Semaphore>>,
}

#[derive(Clone)]
struct TestPeer {
    rec: Arc<Recorded>,
    b: Behavior,
}

fn record(rec: &Recorded, env: &RaftEnvelope, via: Via) {
    let mut got = rec.got.lock().unwrap();
    for bytes in &env.messages {
        let m = Message::parse_from_bytes(bytes).unwrap();
        got.push(Got {
            to: env.to,
            t: m.get_msg_type(),
            seq: m.commit,
            via,
        });
    }
}

#[tonic::async_trait]
impl RaftTransport for TestPeer {
    async fn send(&self, req: Request<RaftEnvelope>) -> Result<Response<Ack>, Status> {
        self.rec.unary_calls.fetch_add(1, Ordering::SeqCst);
        record(&self.rec, req.get_ref(), Via::Unary);
        Ok(Response::new(Ack::default()))
    }

    async fn send_stream(
        &self,
        req: Request<Streaming<RaftEnvelope>>,
    ) -> Result<Response<Ack>, Status> {
        self.rec.stream_calls.fetch_add(1, Ordering::SeqCst);
        if self.b.no_stream {
            return Err(Status::unimplemented(
                "SendStream is not implemented by this server",
            ));
        }
        let mut s = req.into_inner();
        let mut first = true;
        if let Some(stall) = &self.b.stall_streams {
            while stall.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let result = loop {
            match s.message().await {
                Ok(Some(env)) => {
                    if first {
                        self.rec.data_streams.fetch_add(1, Ordering::SeqCst);
                        first = false;
                    }
                    record(&self.rec, &env, Via::Stream);
                    let append = env.messages.iter().any(|b| {
                        Message::parse_from_bytes(b).unwrap().get_msg_type()
                            == MessageType::MsgAppend
                    });
                    if append && self.b.stall_appends {
                        std::future::pending::<()>().await;
                    }
                }
                Ok(None) => break Ok(Response::new(Ack::default())),
                Err(e) => break Err(e),
            }
        };
        result
    }

    async fn send_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<Ack>, Status> {
        let mut s = req.into_inner();
        while let Some(c) = s.message().await? {
            if let Some(snapshot_chunk::Kind::Payload(p)) = c.kind {
                self.rec
                    .snapshot_bytes
                    .fetch_add(p.len() as u64, Ordering::SeqCst);
                if let Some(rate) = self.b.snapshot_rate {
                    tokio::time::sleep(Duration::from_secs_f64(p.len() as f64 / rate as f64)).await;
                }
            }
        }
        if let Some(gate) = &self.b.snapshot_gate {
            gate.acquire().await.unwrap().forget();
        }
        self.rec.snapshots_done.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(Ack {
            accepted: 1,
            dropped: 0,
        }))
    }
}

/// A peer server in a runtime of its own; `kill` drops the runtime, which closes
/// every connection at once, as a crashed process would.
struct TestServer {
    addr: SocketAddr,
    rec: Arc<Recorded>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    fn start(b: Behavior) -> TestServer {
        Self::start_at("127.0.0.1:0".parse().unwrap(), b)
    }

    fn start_at(addr: SocketAddr, b: Behavior) -> TestServer {
        let rec = Arc::new(Recorded::default());
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let peer = TestPeer {
            rec: rec.clone(),
            b,
        };
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.spawn(async move {
                let l = tokio::net::TcpListener::bind(addr).await.unwrap();
                addr_tx.send(l.local_addr().unwrap()).unwrap();
                let accepts = peer.rec.clone();
                let incoming =
                    tokio_stream::wrappers::TcpListenerStream::new(l).inspect(move |_| {
                        accepts.accepts.fetch_add(1, Ordering::SeqCst);
                    });
                raft_node::ports::Port::Peer
                    .server(&raft_node::config::NodeConfig::defaults())
                    .add_service(RaftTransportServer::new(peer).max_decoding_message_size(64 << 20))
                    .serve_with_incoming(incoming)
                    .await
                    .unwrap();
            });
            let _ = stop_rx.recv();
            rt.shutdown_background();
        });
        TestServer {
            addr: addr_rx.recv_timeout(WAIT).unwrap(),
            rec,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn kill(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Sender {
    t: Arc<GrpcTransport>,
    reports: mpsc::Receiver<Report>,
    metrics: Metrics,
    snapshots: SnapshotStore,
    _dir: tempfile::TempDir,
}

fn sender(lanes: LaneMode, send_timeout: Duration) -> Sender {
    sender_as(1, lanes, send_timeout)
}

/// Member `id` of cluster "c", sending.
fn sender_as(id: u64, lanes: LaneMode, send_timeout: Duration) -> Sender {
    let dir = tempfile::tempdir().unwrap();
    let snapshots = SnapshotStore::open(dir.path()).unwrap();
    let (tx, reports) = ReportSender::channel(4096, Default::default());
    let metrics = Metrics::new();
    let t = GrpcTransport::new(
        GrpcConfig {
            cluster_id: "c".into(),
            id,
            advertise_addr: "127.0.0.1:1".into(),
            send_timeout,
            max_inflight: 256,
            lanes,
            unary_only: false,
            max_batch: 256,
            channel: ChannelSettings::default(),
            dialer: raftlane_tls::Dialer::Plaintext,
        },
        tx,
        snapshots.clone(),
        metrics.clone(),
    );
    Sender {
        t: Arc::new(t),
        reports,
        metrics,
        snapshots,
        _dir: dir,
    }
}

/// A message as a peer sends it: with its term (the receiver refuses term 0).
fn msg(t: MessageType, to: u64, seq: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(t);
    m.from = 1;
    m.to = to;
    m.term = 6;
    m.commit = seq;
    m
}

fn snapshot_msg(s: &SnapshotStore, to: u64, index: u64, bytes: usize) -> Message {
    use std::io::Write;
    let mut w = s.create(1, index).unwrap();
    let block = vec![7u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len());
        w.write_all(&block[..n]).unwrap();
        left -= n;
    }
    w.finish().unwrap();
    let mut m = msg(MessageType::MsgSnapshot, to, 0);
    m.mut_snapshot().mut_metadata().index = index;
    m.mut_snapshot().mut_metadata().term = 1;
    m
}

async fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn next_report(rx: &mut mpsc::Receiver<Report>, want: impl Fn(&Report) -> bool) -> Report {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(r)) if want(&r) => return r,
            Ok(Some(_)) => continue,
            _ => panic!("expected report not posted"),
        }
    }
}

fn opens(m: &Metrics, lane: &'static str) -> u64 {
    m.stream_opens
        .get_or_create(&PeerLane { peer: 2, lane })
        .get()
}

/// Blocks the lane of message type `t` to peer 2 in a stream probe the receiver
/// never answers (its first message, seq 0), then queues `burst` more (seq 1..).
async fn block_lane_then_queue(s: &Sender, rec: &Recorded, t: MessageType, burst: u64) {
    s.t.send(vec![msg(t, 2, 0)]);
    wait_for("lane blocked in its probe", || {
        rec.stream_calls.load(Ordering::SeqCst) == 1
    })
    .await;
    for i in 1..=burst {
        s.t.send(vec![msg(t, 2, i)]);
    }
}

/// Sends in chunks of 8, each delivered before the next, so no lane (the
/// "other" lane holds 16) overflows: these tests are about delivery, not drops.
async fn send_paced(s: &Sender, rec: &Recorded, msgs: Vec<Message>) {
    let base = rec.count(|_| true);
    let mut sent = 0;
    for chunk in msgs.chunks(8) {
        s.t.send(chunk.to_vec());
        sent += chunk.len();
        wait_for("chunk delivered", || rec.count(|_| true) >= base + sent).await;
    }
}

fn mixed(range: std::ops::Range<u64>) -> Vec<Message> {
    range.map(|i| msg(MIXED[(i % 4) as usize], 2, i)).collect()
}

const MIXED: [MessageType; 4] = [
    MessageType::MsgHeartbeat,
    MessageType::MsgAppend,
    MessageType::MsgPropose,
    MessageType::MsgRequestVote,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supported_peer_gets_everything_over_streams() {
    let srv = TestServer::start(Behavior::default());
    let s = sender(LaneMode::Four, Duration::from_secs(5));
    s.t.upsert_peer(2, &srv.addr.to_string()).unwrap();
    send_paced(&s, &srv.rec, mixed(0..400)).await;
    assert_eq!(srv.rec.count(|_| true), 400);
    assert_eq!(srv.rec.unary_calls.load(Ordering::SeqCst), 0);
    assert_eq!(srv.rec.count(|g| g.via == Via::Stream), 400);
    let st = &s.t.peers()[0];
    assert!(!st.no_stream);
    for lane in ["heartbeat", "replication", "other"] {
        let l = st.lanes.iter().find(|l| l.name == lane).unwrap();
        assert!(l.stream_open, "{lane} stream open");
    }
    // Per-type order holds: each type's sequence numbers arrive in order.
    for t in MIXED {
        let seqs: Vec<u64> = srv
            .rec
            .got
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.t == t)
            .map(|g| g.seq)
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{t:?} in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_without_send_stream_gets_everything_by_unary() {
    let srv = TestServer::start(Behavior {
        no_stream: true,
        ..Default::default()
    });
    let mut s = sender(LaneMode::Four, Duration::from_secs(5));
    s.t.upsert_peer(2, &srv.addr.to_string()).unwrap();
    send_paced(&s, &srv.rec, mixed(0..100)).await;
    assert_eq!(srv.rec.count(|_| true), 100);
    assert_eq!(
        srv.rec.count(|g| g.via == Via::Unary),
        100,
        "none lost in the switch, all by unary"
    );
    assert!(s.t.peers()[0].no_stream);
    assert!(
        s.metrics
            .unary_fallbacks
            .get_or_create(&PeerLane {
                peer: 2,
                lane: "heartbeat"
            })
            .get()
            >= 1
    );
    assert!(s.reports.try_recv().is_err(), "a fallback is not a failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_to_a_new_address_rebuilds_streams_and_clears_the_flag() {
    let old = TestServer::start(Behavior {
        no_stream: true,
        ..Default::default()
    });
    let new = TestServer::start(Behavior::default());
    let s = sender(LaneMode::Four, Duration::from_secs(5));
    assert!(s.t.upsert_peer(2, &old.addr.to_string()).unwrap());
    s.t.send(vec![msg(MessageType::MsgHeartbeat, 2, 0)]);
    wait_for("first message by unary", || old.rec.count(|_| true) == 1).await;
    assert!(s.t.peers()[0].no_stream);
    let before_old = old.rec.count(|_| true);

    assert!(s.t.upsert_peer(2, &new.addr.to_string()).unwrap());
    assert!(!s.t.peers()[0].no_stream, "new address, flag cleared");
    send_paced(&s, &new.rec, mixed(1..51)).await;
    assert_eq!(new.rec.count(|g| g.via == Via::Stream), 50);
    assert_eq!(
        old.rec.count(|_| true),
        before_old,
        "nothing more at the old address"
    );
    assert_eq!(
        s.t.channel_users(&old.addr.to_string()),
        0,
        "old channel closed"
    );

    // Same address again: nothing torn down, no new stream.
    let opened = opens(&s.metrics, "heartbeat");
    assert!(!s.t.upsert_peer(2, &new.addr.to_string()).unwrap());
    for i in 51..=60 {
        s.t.send(vec![msg(MessageType::MsgHeartbeat, 2, i)]);
    }
    wait_for("10 more", || new.rec.count(|_| true) == 60).await;
    assert_eq!(opens(&s.metrics, "heartbeat"), opened);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_is_reported_unreachable_and_streams_reopen_when_back() {
    let mut srv = TestServer::start(Behavior::default());
    let addr = srv.addr;
    let mut s = sender(LaneMode::Four, Duration::from_secs(2));
    s.t.upsert_peer(2, &addr.to_string()).unwrap();
    s.t.send(vec![msg(MessageType::MsgHeartbeat, 2, 0)]);
    wait_for("first heartbeat", || srv.rec.count(|_| true) == 1).await;
    let opened = opens(&s.metrics, "heartbeat");

    srv.kill();
    next_report(&mut s.reports, |r| *r == Report::Unreachable(2)).await;
    wait_for("stream marked closed", || {
        !s.t.peers()[0]
            .lanes
            .iter()
            .find(|l| l.name == "heartbeat")
            .unwrap()
            .stream_open
    })
    .await;

    let back = TestServer::start_at(addr, Behavior::default());
    let deadline = Instant::now() + WAIT;
    let mut seq = 1;
    while back.rec.count(|_| true) == 0 {
        assert!(Instant::now() < deadline, "no delivery after restart");
        s.t.send(vec![msg(MessageType::MsgHeartbeat, 2, seq)]);
        seq += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(opens(&s.metrics, "heartbeat") > opened, "stream reopened");
    assert_eq!(back.rec.count(|g| g.via == Via::Unary), 0);
}

/// Heartbeats keep arriving, in order, while a 64 MiB snapshot crawls at 1 MiB/s
/// and the replication lane is stuck behind a receiver that stopped reading it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_isolated_from_stalled_snapshot_and_replication_lanes() {
    let srv = TestServer::start(Behavior {
        stall_appends: true,
        snapshot_rate: Some(1 << 20),
        ..Default::default()
    });
    let s = sender(LaneMode::Four, Duration::from_secs(30));
    s.t.upsert_peer(2, &srv.addr.to_string()).unwrap();
    let snap = snapshot_msg(&s.snapshots, 2, 100, 64 << 20);
    s.t.send(vec![snap]);
    wait_for("snapshot streaming", || {
        srv.rec.snapshot_bytes.load(Ordering::SeqCst) > 0
    })
    .await;
    // Saturate replication: the receiver stops reading that stream at the first append.
    for i in 0..2000 {
        let mut m = msg(MessageType::MsgAppend, 2, i);
        m.mut_entries().push(raft::prelude::Entry {
            data: vec![0u8; 4096].into(),
            ..Default::default()
        });
        s.t.send(vec![m]);
    }
    let dropped = s.t.peers()[0]
        .lanes
        .iter()
        .find(|l| l.name == "replication")
        .unwrap()
        .dropped;
    assert!(
        dropped > 0,
        "replication lane saturated (its queue overflowed)"
    );

    for i in 0..50 {
        s.t.send(vec![msg(MessageType::MsgHeartbeat, 2, i)]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for("50 heartbeats", || {
        srv.rec.count(|g| g.t == MessageType::MsgHeartbeat) == 50
    })
    .await;
    let seqs: Vec<u64> = srv
        .rec
        .got
        .lock()
        .unwrap()
        .iter()
        .filter(|g| g.t == MessageType::MsgHeartbeat)
        .map(|g| g.seq)
        .collect();
    assert_eq!(seqs, (0..50).collect::<Vec<_>>(), "heartbeats in order");
    assert_eq!(
        srv.rec.snapshots_done.load(Ordering::SeqCst),
        0,
        "snapshot still in flight"
    );
    assert!(srv.rec.snapshot_bytes.load(Ordering::SeqCst) < 64 << 20);
    let hb = s.t.peers()[0]
        .lanes
        .iter()
        .find(|l| l.name == "heartbeat")
        .unwrap()
        .clone();
    assert_eq!(hb.dropped, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lanes_drop_per_lane_and_snapshot_finish_waits_for_the_ack() {
    let gate = Arc::new(Semaphore::new(0));
    let srv = TestServer::start(Behavior {
        stall_streams: Some(Arc::new(true.into())),
        snapshot_gate: Some(gate.clone()),
        ..Default::default()
    });
    let mut s = sender(LaneMode::Four, Duration::from_secs(30));
    s.t.upsert_peer(2, &srv.addr.to_string()).unwrap();

    // "other" holds 16: with the lane blocked, a burst overflows that lane alone.
    block_lane_then_queue(&s, &srv.rec, MessageType::MsgPropose, 100).await;
    let st = s.t.peers()[0].clone();
    let lane = |n: &str| st.lanes.iter().find(|l| l.name == n).unwrap().clone();
    assert_eq!(
        (lane("other").queued, lane("other").dropped),
        (16, 84),
        "{:?}",
        lane("other")
    );
    assert_eq!(lane("heartbeat").dropped, 0);
    assert_eq!(lane("replication").dropped, 0);

    // Snapshot lane holds 4: six snapshots = one in flight, four queued, one dropped.
    let snaps: Vec<Message> = (0..6)
        .map(|i| snapshot_msg(&s.snapshots, 2, 10 + i, 1024))
        .collect();
    s.t.send(snaps);
    let r = next_report(&mut s.reports, |r| matches!(r, Report::Snapshot { .. })).await;
    assert_eq!(
        r,
        Report::Snapshot {
            to: 2,
            finished: false
        },
        "the dropped snapshot fails at once"
    );
    wait_for("receiver has the first snapshot", || {
        srv.rec.snapshot_bytes.load(Ordering::SeqCst) >= 1024
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(r) = s.reports.try_recv() {
        assert!(
            !matches!(r, Report::Snapshot { finished: true, .. }),
            "Finish before the ack"
        );
    }
    gate.add_permits(1);
    let r = next_report(&mut s.reports, |r| matches!(r, Report::Snapshot { .. })).await;
    assert_eq!(
        r,
        Report::Snapshot {
            to: 2,
            finished: true
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_sends_open_one_connection_and_one_stream_per_lane() {
    let srv = TestServer::start(Behavior::default());
    let s = Arc::new(sender(LaneMode::Four, Duration::from_secs(5)));
    s.t.upsert_peer(2, &srv.addr.to_string()).unwrap();
    let mut threads = Vec::new();
    for th in 0..8u64 {
        let s = s.clone();
        threads.push(std::thread::spawn(move || {
            // 8 threads x 2 proposals = 16, exactly what the "other" lane holds.
            for i in 0..8u64 {
                s.t.send(vec![msg(MIXED[(i % 4) as usize], 2, th * 1000 + i)]);
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    wait_for("64 messages", || srv.rec.count(|_| true) == 64).await;
    assert_eq!(srv.rec.accepts.load(Ordering::SeqCst), 1, "one connection");
    assert_eq!(
        srv.rec.data_streams.load(Ordering::SeqCst),
        3,
        "one stream per used lane"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_peer_stops_promptly_and_a_shared_address_keeps_its_connection() {
    let stall = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let srv = TestServer::start(Behavior {
        stall_streams: Some(stall.clone()),
        ..Default::default()
    });
    let s = sender(LaneMode::Four, Duration::from_secs(30));
    let addr = srv.addr.to_string();
    s.t.upsert_peer(2, &addr).unwrap();
    s.t.upsert_peer(3, &addr).unwrap();
    assert_eq!(s.t.channel_users(&addr), 2);

    // Peer 2's replication lane is blocked; the 200 appends wait in its queue.
    block_lane_then_queue(&s, &srv.rec, MessageType::MsgAppend, 200).await;
    let queued = s.t.peers()[0]
        .lanes
        .iter()
        .find(|l| l.name == "replication")
        .unwrap()
        .queued;
    assert_eq!(queued, 200, "the blocked lane keeps its queue");

    let removed_at = Instant::now();
    s.t.remove_peer(2);
    let dropped = |reason: &'static str| {
        s.metrics
            .dropped
            .get_or_create(&raft_node::metrics::Dropped {
                peer: 2,
                lane: "replication",
                reason,
            })
            .get()
    };
    // The 200 queued and the one held by the blocked lane.
    wait_for("queued messages counted", || dropped("peer_closed") == 201).await;
    assert!(
        removed_at.elapsed() < Duration::from_secs(2),
        "lanes ended promptly"
    );
    assert_eq!(s.t.channel_users(&addr), 1, "id 3 keeps the connection");

    // Later sends to the removed id are counted, not a panic.
    s.t.send(vec![msg(MessageType::MsgHeartbeat, 2, 1)]);
    let no_addr = s
        .metrics
        .dropped
        .get_or_create(&raft_node::metrics::Dropped {
            peer: 2,
            lane: "none",
            reason: "no_address",
        })
        .get();
    assert_eq!(no_addr, 1);
    stall.store(false, Ordering::SeqCst);
    for i in 0..10 {
        s.t.send(vec![msg(MessageType::MsgHeartbeat, 3, i)]);
    }
    wait_for("id 3 still served", || srv.rec.count(|g| g.to == 3) == 10).await;
    assert_eq!(
        srv.rec.accepts.load(Ordering::SeqCst),
        1,
        "same connection throughout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_lane_mode_serves_heartbeats_first_over_one_stream() {
    let srv = TestServer::start(Behavior::default());
    let s = sender(LaneMode::One, Duration::from_secs(5));
    s.t.upsert_peer(2, &srv.addr.to_string()).unwrap();
    send_paced(&s, &srv.rec, mixed(0..200)).await;
    assert_eq!(
        srv.rec.data_streams.load(Ordering::SeqCst),
        1,
        "one multiplexed stream"
    );
    let st = &s.t.peers()[0];
    assert_eq!(st.lanes.len(), 1);
    assert_eq!(st.lanes[0].sent, 200);
}

/// raft-rs keeps a peer paused until every snapshot sent to it is reported: one
/// cut short by an address change must come back as a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_cut_short_by_an_address_change_is_reported_as_failed() {
    let gate = Arc::new(Semaphore::new(0));
    let old = TestServer::start(Behavior {
        snapshot_gate: Some(gate),
        ..Default::default()
    });
    let new = TestServer::start(Behavior::default());
    let mut s = sender(LaneMode::Four, Duration::from_secs(5));
    s.t.upsert_peer(2, &old.addr.to_string()).unwrap();
    s.t.send(vec![snapshot_msg(&s.snapshots, 2, 10, 4096)]);
    wait_for("snapshot at the old address", || {
        old.rec.snapshot_bytes.load(Ordering::SeqCst) >= 4096
    })
    .await;
    s.t.upsert_peer(2, &new.addr.to_string()).unwrap();
    let r = next_report(&mut s.reports, |r| matches!(r, Report::Snapshot { .. })).await;
    assert_eq!(
        r,
        Report::Snapshot {
            to: 2,
            finished: false
        }
    );
}

// The receiving side: member 1 of cluster "c" behind a real tonic server.

/// Member 1's receiver on a loopback socket, with what it feeds and learns.
struct Member1 {
    addr: SocketAddr,
    inbox: InboxReceiver,
    staged: StagedSnapshot,
    members: watch::Sender<BTreeSet<u64>>,
    /// Member 1's own transport: the peer table traffic may add to.
    peers: Sender,
    snapshots: SnapshotStore,
    dir: tempfile::TempDir,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Member1 {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn member1(limits: SnapshotLimits, members: &[u64]) -> Member1 {
    let peers = sender(LaneMode::Four, Duration::from_secs(5));
    let dir = tempfile::tempdir().unwrap();
    let snapshots = SnapshotStore::open(dir.path()).unwrap();
    let (inbox, inbox_rx) = Inbox::new();
    let staged = StagedSnapshot::default();
    let (members_tx, members_rx) = watch::channel(members.iter().copied().collect());
    let receiver = Receiver::new(
        ReceiverConfig {
            cluster_id: "c".into(),
            id: 1,
            snapshot: limits,
        },
        inbox,
        snapshots.clone(),
        staged.clone(),
        members_rx,
        Metrics::new(),
        Some(peers.t.clone()),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let svc = RaftTransportServer::new(ReceiverService::new(
        Arc::new(receiver),
        tokio_util::sync::CancellationToken::new(),
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let server = tokio::spawn(async move {
        raft_node::ports::Port::Peer
            .server(&raft_node::config::NodeConfig::defaults())
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
            .await
            .unwrap();
    });
    Member1 {
        addr,
        inbox: inbox_rx,
        staged,
        members: members_tx,
        peers,
        snapshots,
        dir,
        server,
    }
}

impl Member1 {
    async fn client(&self) -> RaftTransportClient<tonic::transport::Channel> {
        RaftTransportClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    /// Partly received snapshot files in its data dir.
    fn partial_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        v.sort();
        v
    }
}

fn heartbeat(from: u64) -> Vec<u8> {
    let mut m = msg(MessageType::MsgHeartbeat, 1, 0);
    m.from = from;
    m.write_to_bytes().unwrap()
}

fn envelope(from: u64, from_addr: &str, messages: Vec<Vec<u8>>) -> RaftEnvelope {
    RaftEnvelope {
        cluster_id: "c".into(),
        from,
        to: 1,
        from_addr: from_addr.into(),
        messages,
    }
}

/// A state machine holding `pairs`.
fn kv(pairs: &[(&str, &str)]) -> KvStateMachine {
    let mut sm = KvStateMachine::default();
    for (k, v) in pairs {
        sm.apply(LogCommand {
            op: Some(Op::Put(PutRequest {
                key: k.as_bytes().to_vec(),
                value: v.as_bytes().to_vec(),
            })),
        });
    }
    sm
}

/// Writes a snapshot file at (1, `index`) with `body` into `store`; returns
/// the MsgSnapshot member `from` sends for it to member 1.
fn snapshot_file(store: &SnapshotStore, from: u64, index: u64, body: &[u8]) -> Message {
    use std::io::Write;
    let mut w = store.create(1, index).unwrap();
    w.write_all(body).unwrap();
    w.finish().unwrap();
    let mut m = msg(MessageType::MsgSnapshot, 1, 0);
    m.from = from;
    m.mut_snapshot().mut_metadata().index = index;
    m.mut_snapshot().mut_metadata().term = 1;
    m
}

fn body_of(sm: &KvStateMachine) -> Vec<u8> {
    let mut body = Vec::new();
    sm.dump(&mut body).unwrap();
    body
}

/// The chunks member 2 sends for the snapshot file at (1, `index`) of `store`,
/// its payload split in two.
async fn snapshot_chunks(store: &SnapshotStore, index: u64, m: &Message) -> Vec<SnapshotChunk> {
    let path = store.path(1, index);
    let (total_size, crc32c) = measure(&path).await.unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let header = SnapshotHeader {
        cluster_id: "c".into(),
        from: 2,
        to: 1,
        from_addr: String::new(),
        message: m.write_to_bytes().unwrap(),
        total_size,
        crc32c,
    };
    let (a, b) = bytes.split_at(bytes.len() / 2);
    vec![
        SnapshotChunk {
            kind: Some(snapshot_chunk::Kind::Header(header)),
            last: false,
        },
        SnapshotChunk {
            kind: Some(snapshot_chunk::Kind::Payload(a.to_vec())),
            last: false,
        },
        SnapshotChunk {
            kind: Some(snapshot_chunk::Kind::Payload(b.to_vec())),
            last: true,
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_address_is_learned_only_from_a_member_whose_whole_envelope_validated() {
    let mut m1 = member1(SnapshotLimits::default(), &[1, 2, 3]).await;
    let mut c = m1.client().await;

    // Member 3, but one of its messages is garbage: refused, nothing learned or stepped.
    let bad = envelope(3, "127.0.0.3:7003", vec![heartbeat(3), vec![0xff; 8]]);
    let err = c.send(bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("raft message refused"), "{err:?}");
    assert_eq!(m1.peers.t.peer_addr(3), None);
    assert!(
        m1.inbox.priority.try_recv().is_err(),
        "nothing of a refused envelope reaches raft"
    );

    // Not a member: its messages are stepped (a leader may be ahead of this
    // member's configuration), its address is not kept.
    c.send(envelope(9, "127.0.0.9:7009", vec![heartbeat(9)]))
        .await
        .unwrap();
    assert_eq!(m1.inbox.priority.try_recv().unwrap().from, 9);
    assert_eq!(m1.peers.t.peer_addr(9), None);

    // A member whose envelope validated completely is learned.
    c.send(envelope(2, "127.0.0.2:7002", vec![heartbeat(2)]))
        .await
        .unwrap();
    assert_eq!(m1.peers.t.peer_addr(2).as_deref(), Some("127.0.0.2:7002"));
    // ...and traffic never replaces a known address.
    c.send(envelope(2, "127.0.0.22:7002", vec![heartbeat(2)]))
        .await
        .unwrap();
    assert_eq!(m1.peers.t.peer_addr(2).as_deref(), Some("127.0.0.2:7002"));

    // The member set follows the configuration.
    m1.members.send_replace([1, 2, 3, 9].into());
    c.send(envelope(9, "127.0.0.9:7009", vec![heartbeat(9)]))
        .await
        .unwrap();
    assert_eq!(m1.peers.t.peer_addr(9).as_deref(), Some("127.0.0.9:7009"));

    // Member 0 is nobody.
    let err = c
        .send(envelope(0, "127.0.0.10:7000", vec![heartbeat(0)]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("envelope from member 0"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_cannot_grow_the_peer_table_beyond_its_cap() {
    let n = MAX_LEARNED_PEERS as u64 + 40;
    let ids: Vec<u64> = (1..=n + 1).collect();
    let m1 = member1(SnapshotLimits::default(), &ids).await;
    let mut c = m1.client().await;
    for id in 2..=n + 1 {
        let addr = format!("127.0.0.1:{}", 10_000 + id);
        c.send(envelope(id, &addr, vec![heartbeat(id)]))
            .await
            .unwrap();
    }
    assert_eq!(m1.peers.t.peers().len(), MAX_LEARNED_PEERS);
    // UpsertPeers, the operator's call, is not limited.
    m1.peers.t.upsert_peer(n + 2, "127.0.0.1:9").unwrap();
    assert_eq!(m1.peers.t.peers().len(), MAX_LEARNED_PEERS + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_received_snapshot_is_loaded_and_staged_before_raft_gets_it() {
    let mut m1 = member1(SnapshotLimits::default(), &[1, 2]).await;
    let mut s2 = sender_as(2, LaneMode::Four, Duration::from_secs(30));
    s2.t.upsert_peer(1, &m1.addr.to_string()).unwrap();
    let sm = kv(&[("a", "1"), ("b", "2")]);
    s2.t.send(vec![snapshot_file(&s2.snapshots, 2, 50, &body_of(&sm))]);

    let got = tokio::time::timeout(WAIT, m1.inbox.bulk.recv())
        .await
        .expect("MsgSnapshot delivered")
        .unwrap();
    assert_eq!(got.get_msg_type(), MessageType::MsgSnapshot);
    let staged = m1
        .staged
        .take(1, 50)
        .expect("staged by the time raft sees it");
    assert_eq!(
        (staged.get(b"a"), staged.get(b"b"), staged.len()),
        (Some(&b"1"[..]), Some(&b"2"[..]), 2)
    );
    assert!(
        m1.snapshots.open_body(1, 50).is_ok(),
        "the file is installed"
    );
    let r = next_report(&mut s2.reports, |r| matches!(r, Report::Snapshot { .. })).await;
    assert_eq!(
        r,
        Report::Snapshot {
            to: 1,
            finished: true
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_does_not_load_is_refused_with_data_loss_and_reported_failed() {
    let mut m1 = member1(SnapshotLimits::default(), &[1, 2]).await;
    // The file's own checksum is right; its body claims 3 pairs and has none.
    let body = 3u64.to_le_bytes();
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    let m = snapshot_file(&store, 2, 60, &body);
    let chunks = snapshot_chunks(&store, 60, &m).await;
    let err = m1
        .client()
        .await
        .send_snapshot(futures::stream::iter(chunks))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::DataLoss, "{err:?}");
    assert!(
        err.message()
            .starts_with("snapshot at term 1 index 60 refused: "),
        "{err:?}"
    );
    assert!(m1.inbox.bulk.try_recv().is_err(), "raft never sees it");
    assert!(m1.staged.take(1, 60).is_none());
    let files: Vec<_> = std::fs::read_dir(m1.dir.path()).unwrap().collect();
    assert!(files.is_empty(), "the refused copy is removed: {files:?}");

    // Through a real sender: it reports the failure, so raft sends again.
    let mut s2 = sender_as(2, LaneMode::Four, Duration::from_secs(30));
    s2.t.upsert_peer(1, &m1.addr.to_string()).unwrap();
    s2.t.send(vec![snapshot_file(&s2.snapshots, 2, 60, &body)]);
    let r = next_report(&mut s2.reports, |r| matches!(r, Report::Snapshot { .. })).await;
    assert_eq!(
        r,
        Report::Snapshot {
            to: 1,
            finished: false
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_receives_of_one_snapshot_use_their_own_temp_files() {
    let m1 = member1(SnapshotLimits::default(), &[1, 2]).await;
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    let sm = kv(&[("k", "v")]);
    let m = snapshot_file(&store, 2, 70, &body_of(&sm));
    let chunks = snapshot_chunks(&store, 70, &m).await;

    // Two sends of the same snapshot (a retry while the first still runs),
    // each paused after its first half.
    let mut feeds = Vec::new();
    let mut calls = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = mpsc::channel(4);
        tx.send(chunks[0].clone()).await.unwrap();
        tx.send(chunks[1].clone()).await.unwrap();
        let mut c = m1.client().await;
        calls.push(tokio::spawn(async move {
            c.send_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        }));
        feeds.push(tx);
    }
    wait_for("both halves spooled to their own files", || {
        let files = m1.partial_files();
        files.len() == 2
            && files.iter().all(|f| {
                std::fs::metadata(m1.dir.path().join(f)).unwrap().len() == chunk_len(&chunks[1])
            })
    })
    .await;
    for tx in feeds {
        tx.send(chunks[2].clone()).await.unwrap();
        // Dropped: the stream ends after its last chunk.
    }
    for call in calls {
        let ack = tokio::time::timeout(WAIT, call)
            .await
            .expect("answered")
            .unwrap();
        assert!(ack.is_ok(), "{ack:?}");
    }
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut m1.snapshots.open_body(1, 70).unwrap(), &mut body).unwrap();
    assert_eq!(body, body_of(&sm), "the installed file is intact");
    assert!(m1.partial_files().is_empty());
    assert_eq!(m1.staged.take(1, 70).unwrap().get(b"k"), Some(&b"v"[..]));
}

fn chunk_len(c: &SnapshotChunk) -> u64 {
    match &c.kind {
        Some(snapshot_chunk::Kind::Payload(p)) => p.len() as u64,
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_beyond_the_free_space_of_the_volume_is_refused() {
    let m1 = member1(
        SnapshotLimits {
            max_bytes: u64::MAX,
            ..SnapshotLimits::default()
        },
        &[1, 2],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    let m = snapshot_file(&store, 2, 80, b"");
    let mut chunks = snapshot_chunks(&store, 80, &m).await;
    if let Some(snapshot_chunk::Kind::Header(h)) = &mut chunks[0].kind {
        h.total_size = 1 << 62;
    }
    let err = m1
        .client()
        .await
        .send_snapshot(futures::stream::iter(chunks))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message()
            .starts_with(&format!("snapshot of {} bytes exceeds the ", 1u64 << 62))
            && err.message().ends_with(" bytes free on the data volume"),
        "{err:?}"
    );
    assert!(m1.partial_files().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_receive_past_its_total_deadline_ends_and_leaves_no_file() {
    let m1 = member1(
        SnapshotLimits {
            idle: Duration::from_secs(10),
            min_total: Duration::from_secs(1),
            ..SnapshotLimits::default()
        },
        &[1, 2],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    let m = snapshot_file(&store, 2, 90, &[0u8; 4096]);
    let chunks = snapshot_chunks(&store, 90, &m).await;
    // A sender that keeps trickling: 10 bytes every 50 ms, never finishing in time.
    let trickle = futures::stream::iter(0..400).then(|_| async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        SnapshotChunk {
            kind: Some(snapshot_chunk::Kind::Payload(vec![0; 10])),
            last: false,
        }
    });
    let stream = futures::stream::iter(vec![chunks[0].clone()]).chain(trickle);
    let started = Instant::now();
    let err = tokio::time::timeout(WAIT, m1.client().await.send_snapshot(stream))
        .await
        .expect("answered")
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message()
            .ends_with("not received within its total deadline of 1s (--snapshot-timeout-ms)"),
        "{err:?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(m1.partial_files().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_receives_together_cannot_claim_more_than_the_free_space() {
    let m1 = member1(
        SnapshotLimits {
            max_bytes: u64::MAX,
            ..SnapshotLimits::default()
        },
        &[1, 2],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    let m = snapshot_file(&store, 2, 95, b"");
    let mut header = snapshot_chunks(&store, 95, &m).await.remove(0);
    // Each claims 60% of what is free: one fits, two do not.
    let claim = m1.snapshots.free_bytes().unwrap() / 10 * 6;
    if let Some(snapshot_chunk::Kind::Header(h)) = &mut header.kind {
        h.total_size = claim;
    }
    let (tx, rx) = mpsc::channel(1);
    tx.send(header.clone()).await.unwrap();
    let mut c = m1.client().await;
    let first = tokio::spawn(async move {
        c.send_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    wait_for("the first receive under way", || {
        m1.partial_files().len() == 1
    })
    .await;
    let err = m1
        .client()
        .await
        .send_snapshot(futures::stream::iter(vec![header.clone()]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().ends_with("bytes free on the data volume"),
        "{err:?}"
    );
    // The first one ends (its sender gave up) and gives its claim back: the
    // same header is admitted again (and fails only for ending there).
    drop(tx);
    let _ = tokio::time::timeout(WAIT, first).await.expect("answered");
    let err = m1
        .client()
        .await
        .send_snapshot(futures::stream::iter(vec![header]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("stream ended before the last chunk"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_never_echo_a_huge_cluster_id_and_snapshot_headers_need_a_term_and_no_entries() {
    let m1 = member1(SnapshotLimits::default(), &[1, 2]).await;
    let mut c = m1.client().await;
    let mut e = envelope(2, "", vec![heartbeat(2)]);
    e.cluster_id = "x".repeat(1 << 20);
    let err = c.send(e).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().len() < 200, "{} bytes", err.message().len());

    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(dir.path()).unwrap();
    let mut m = snapshot_file(&store, 2, 96, b"");
    m.mut_snapshot().mut_metadata().term = 0;
    let chunks = snapshot_chunks(&store, 96, &m).await;
    let err = c
        .send_snapshot(futures::stream::iter(chunks))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains("snapshot header has term 0 index 96: neither may be 0"),
        "{err:?}"
    );

    // A MsgSnapshot never carries log entries: a header stuffed with them is
    // refused before it is parsed.
    let mut m = snapshot_file(&store, 2, 97, b"");
    m.mut_entries().push(Default::default());
    let chunks = snapshot_chunks(&store, 97, &m).await;
    let err = c
        .send_snapshot(futures::stream::iter(chunks))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains("snapshot header carries more than 0 log entries"),
        "{err:?}"
    );
}
