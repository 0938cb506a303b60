//! The streaming lane transport against real tonic servers on loopback: stream
//! use, unary fallback, in-place peer updates, failures and reports, lane
//! isolation, drops, snapshots, and peer removal.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use raft_node::metrics::{Metrics, PeerLane};
use raft_node::storage::SnapshotStore;
use raft_node::transport::channels::ChannelSettings;
use raft_node::transport::grpc::{GrpcConfig, GrpcTransport, LaneMode};
use raft_node::transport::report::{Report, ReportSender};
use raft_node::transport::Transport;
use raftlane_proto::transport::raft_transport_server::{RaftTransport, RaftTransportServer};
use raftlane_proto::transport::{snapshot_chunk, Ack, RaftEnvelope, SnapshotChunk};
use tokio::sync::{mpsc, Semaphore};
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
                raft_node::node::peer_server()
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
    t: GrpcTransport,
    reports: mpsc::Receiver<Report>,
    metrics: Metrics,
    snapshots: SnapshotStore,
    _dir: tempfile::TempDir,
}

fn sender(lanes: LaneMode, send_timeout: Duration) -> Sender {
    let dir = tempfile::tempdir().unwrap();
    let snapshots = SnapshotStore::open(dir.path()).unwrap();
    let (tx, reports) = ReportSender::channel(4096, Default::default());
    let metrics = Metrics::new();
    let t = GrpcTransport::new(
        GrpcConfig {
            cluster_id: "c".into(),
            id: 1,
            advertise_addr: "127.0.0.1:1".into(),
            send_timeout,
            max_inflight: 256,
            lanes,
            unary_only: false,
            max_batch: 256,
            channel: ChannelSettings::default(),
        },
        tx,
        snapshots.clone(),
        metrics.clone(),
    );
    Sender {
        t,
        reports,
        metrics,
        snapshots,
        _dir: dir,
    }
}

fn msg(t: MessageType, to: u64, seq: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(t);
    m.from = 1;
    m.to = to;
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
