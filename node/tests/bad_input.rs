//! Hostile or mistaken peers: the receiver answers with a precise status, raft
//! never sees the bytes, and the member keeps serving.

mod common;

use common::{write_keys, Cluster, ELECTION};
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use raftlane_proto::transport::raft_transport_client::RaftTransportClient;
use raftlane_proto::transport::{snapshot_chunk, RaftEnvelope, SnapshotChunk};
use tonic::Code;

fn msg(t: MessageType, from: u64, to: u64) -> Vec<u8> {
    let mut m = Message::default();
    m.set_msg_type(t);
    m.from = from;
    m.to = to;
    m.write_to_bytes().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_bad_envelopes_and_keeps_serving() {
    let c = Cluster::start(1, &[]);
    c.wait_leader(ELECTION * 20).await;
    let mut peer = RaftTransportClient::connect(format!("http://{}", c.members[&1].peer))
        .await
        .unwrap();
    let env = |cluster: &str, to: u64, messages: Vec<Vec<u8>>| RaftEnvelope {
        cluster_id: cluster.to_string(),
        from: 7,
        to,
        from_addr: String::new(),
        messages,
    };
    let good = c.cluster_id.clone();
    let heartbeat = msg(MessageType::MsgHeartbeat, 7, 1);
    let cases = [
        (
            "wrong cluster id",
            env("other-cluster", 1, vec![heartbeat.clone()]),
            Code::FailedPrecondition,
        ),
        (
            "wrong to",
            env(&good, 2, vec![heartbeat.clone()]),
            Code::FailedPrecondition,
        ),
        (
            "garbage bytes",
            env(&good, 1, vec![vec![0xff; 32]]),
            Code::InvalidArgument,
        ),
        (
            "crafted nesting",
            env(&good, 1, vec![[0xa3u8, 0x01].repeat(50_000)]),
            Code::InvalidArgument,
        ),
        (
            "local-only type",
            env(&good, 1, vec![msg(MessageType::MsgHup, 7, 1)]),
            Code::InvalidArgument,
        ),
        (
            "snapshot outside SendSnapshot",
            env(&good, 1, vec![msg(MessageType::MsgSnapshot, 7, 1)]),
            Code::InvalidArgument,
        ),
        (
            "message for another member",
            env(&good, 1, vec![msg(MessageType::MsgHeartbeat, 7, 3)]),
            Code::InvalidArgument,
        ),
    ];
    for (what, e, code) in cases.iter().cloned() {
        let err = peer.send(e.clone()).await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
        // The streaming call refuses the same way and ends only that stream.
        let err = peer
            .send_stream(futures::stream::iter(vec![e]))
            .await
            .expect_err(what);
        assert_eq!(err.code(), code, "{what} (stream): {err:?}");
    }

    // A snapshot stream that starts with payload is refused.
    let chunk = SnapshotChunk {
        kind: Some(snapshot_chunk::Kind::Payload(vec![1, 2, 3])),
        last: true,
    };
    let err = peer
        .send_snapshot(futures::stream::iter(vec![chunk]))
        .await
        .expect_err("payload first");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // A snapshot that ends before its last chunk is refused and leaves no file.
    let mut snap = Message::default();
    snap.set_msg_type(MessageType::MsgSnapshot);
    snap.from = 7;
    snap.to = 1;
    snap.mut_snapshot().mut_metadata().index = 5;
    snap.mut_snapshot().mut_metadata().term = 1;
    let header = raftlane_proto::transport::SnapshotHeader {
        cluster_id: good.clone(),
        from: 7,
        to: 1,
        message: snap.write_to_bytes().unwrap(),
        total_size: 10,
        ..Default::default()
    };
    let chunks = vec![
        SnapshotChunk {
            kind: Some(snapshot_chunk::Kind::Header(header)),
            last: false,
        },
        SnapshotChunk {
            kind: Some(snapshot_chunk::Kind::Payload(vec![0; 4])),
            last: false,
        },
    ];
    let err = peer
        .send_snapshot(futures::stream::iter(chunks))
        .await
        .expect_err("premature end");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let snap_dir = c.members[&1].dir.join("snapshots");
    let left: Vec<_> = std::fs::read_dir(&snap_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "partial snapshot files left: {left:?}");

    let rejected = c.metric(1, "raftlane_transport_rejected_total").await;
    assert!(
        rejected >= (cases.len() * 2 + 1) as f64,
        "rejections counted: {rejected}"
    );

    // Still a working member.
    let keys = write_keys(&c.kv(&[1]), "still-", 0..20).await;
    common::assert_keys(&c.kv(&[1]), &keys).await;
}
