//! Hostile or mistaken peers: the receiver answers with a precise status, raft
//! never sees the bytes, and the member keeps serving.

mod common;

use std::time::{Duration, Instant};

use common::{write_keys, Cluster, ELECTION};
use futures::StreamExt;
use protobuf::Message as _;
use raft::prelude::{Entry, EntryType, Message, MessageType};
use raftlane_proto::transport::raft_transport_client::RaftTransportClient;
use raftlane_proto::transport::{snapshot_chunk, RaftEnvelope, SnapshotChunk, SnapshotHeader};
use tonic::transport::Channel;
use tonic::Code;

/// Flags of the member under attack: small snapshot limits, so the tests can
/// reach them.
/// Plaintext: malformed traffic is sent as a peer would, without a member
/// certificate (the receiver's checks are the same either way).
const FLAGS: &[&str] = &[
    "--insecure-plaintext",
    "--max-snapshot-bytes",
    "4096",
    "--snapshot-idle-timeout-ms",
    "1000",
];

fn message(t: MessageType, from: u64, to: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(t);
    m.from = from;
    m.to = to;
    m.term = 6;
    m
}

fn msg(t: MessageType, from: u64, to: u64) -> Vec<u8> {
    message(t, from, to).write_to_bytes().unwrap()
}

/// The crafted nesting of RUSTSEC-2024-0437: unknown field 20, start-group, repeated.
fn crafted_nesting(n: usize) -> Vec<u8> {
    [0xa3u8, 0x01].repeat(n)
}

/// A MsgAppend carrying one entry of type `t` with `data`.
fn append_with(t: EntryType, data: Vec<u8>) -> Vec<u8> {
    let mut m = message(MessageType::MsgAppend, 7, 1);
    let mut e = Entry {
        index: 1,
        term: 1,
        data: data.into(),
        ..Default::default()
    };
    e.set_entry_type(t);
    m.mut_entries().push(e);
    m.write_to_bytes().unwrap()
}

fn snapshot_header(cluster_id: &str, total_size: u64) -> SnapshotChunk {
    let mut snap = message(MessageType::MsgSnapshot, 7, 1);
    snap.mut_snapshot().mut_metadata().index = 5;
    snap.mut_snapshot().mut_metadata().term = 1;
    SnapshotChunk {
        kind: Some(snapshot_chunk::Kind::Header(SnapshotHeader {
            cluster_id: cluster_id.to_string(),
            from: 7,
            to: 1,
            message: snap.write_to_bytes().unwrap(),
            total_size,
            ..Default::default()
        })),
        last: false,
    }
}

fn payload(n: usize) -> SnapshotChunk {
    SnapshotChunk {
        kind: Some(snapshot_chunk::Kind::Payload(vec![0; n])),
        last: false,
    }
}

/// Partly received snapshot files in member 1's data dir.
fn partial_files_left(c: &Cluster) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(c.members[&1].dir.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".tmp"))
        .collect()
}

async fn refused_snapshot(
    peer: &mut RaftTransportClient<Channel>,
    chunks: impl futures::Stream<Item = SnapshotChunk> + Send + 'static,
    what: &str,
) -> tonic::Status {
    tokio::time::timeout(Duration::from_secs(30), peer.send_snapshot(chunks))
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer"))
        .expect_err(what)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_bad_envelopes_and_keeps_serving() {
    let c = Cluster::start(1, FLAGS);
    c.wait_leader(ELECTION * 20).await;
    let mut peer = RaftTransportClient::connect(format!("http://{}", c.members[&1].peer))
        .await
        .unwrap();
    let env = |cluster: &str, from: u64, to: u64, messages: Vec<Vec<u8>>| RaftEnvelope {
        cluster_id: cluster.to_string(),
        from,
        to,
        from_addr: String::new(),
        messages,
    };
    let good = c.cluster_id.clone();
    let heartbeat = msg(MessageType::MsgHeartbeat, 7, 1);
    let cases = [
        (
            "wrong cluster id",
            env("other-cluster", 7, 1, vec![heartbeat.clone()]),
            Code::FailedPrecondition,
            "does not match this member's",
        ),
        (
            "wrong to",
            env(&good, 7, 2, vec![heartbeat.clone()]),
            Code::FailedPrecondition,
            "envelope is for member 2, this is member 1",
        ),
        (
            "from member 0",
            env(&good, 0, 1, vec![msg(MessageType::MsgHeartbeat, 0, 1)]),
            Code::InvalidArgument,
            "envelope from member 0",
        ),
        (
            "garbage bytes",
            env(&good, 7, 1, vec![vec![0xff; 32]]),
            Code::InvalidArgument,
            "raft message refused: truncated",
        ),
        (
            "crafted nesting",
            env(&good, 7, 1, vec![crafted_nesting(50_000)]),
            Code::InvalidArgument,
            "group wire type",
        ),
        (
            "crafted nesting in a ConfChange entry",
            env(
                &good,
                7,
                1,
                vec![append_with(
                    EntryType::EntryConfChange,
                    crafted_nesting(50_000),
                )],
            ),
            Code::InvalidArgument,
            "group wire type",
        ),
        (
            "crafted nesting in a ConfChangeV2 entry",
            env(
                &good,
                7,
                1,
                vec![append_with(
                    EntryType::EntryConfChangeV2,
                    crafted_nesting(50_000),
                )],
            ),
            Code::InvalidArgument,
            "group wire type",
        ),
        (
            "a proposal",
            env(&good, 7, 1, vec![msg(MessageType::MsgPropose, 7, 1)]),
            Code::InvalidArgument,
            "MsgPropose is refused: members forward writes through the Kv API",
        ),
        (
            "a leadership transfer",
            env(&good, 7, 1, vec![msg(MessageType::MsgTransferLeader, 7, 1)]),
            Code::InvalidArgument,
            "MsgTransferLeader is refused: leadership transfers are issued on the leader",
        ),
        (
            "more messages than a member packs",
            env(&good, 7, 1, vec![heartbeat.clone(); 65_537]),
            Code::InvalidArgument,
            "envelope carries 65537 messages, more than 65536",
        ),
        (
            "more log entries than a member packs",
            // Empty entries (field 7, length 0): 2 bytes each on the wire.
            env(&good, 7, 1, vec![[0x3a, 0x00].repeat((1 << 20) + 1)]),
            Code::InvalidArgument,
            "envelope carries more than 1048576 log entries",
        ),
        (
            "local-only type",
            env(&good, 7, 1, vec![msg(MessageType::MsgHup, 7, 1)]),
            Code::InvalidArgument,
            "MsgHup is local to a member",
        ),
        (
            "snapshot outside SendSnapshot",
            env(&good, 7, 1, vec![msg(MessageType::MsgSnapshot, 7, 1)]),
            Code::InvalidArgument,
            "MsgSnapshot is not accepted on this call",
        ),
        (
            "a term-0 message (raft-rs would step it as local)",
            env(
                &good,
                7,
                1,
                vec![{
                    let mut m = message(MessageType::MsgHeartbeat, 7, 1);
                    m.term = 0;
                    m.write_to_bytes().unwrap()
                }],
            ),
            Code::InvalidArgument,
            "MsgHeartbeat with term 0 (only MsgReadIndex may omit it)",
        ),
        (
            "message for another member",
            env(&good, 7, 1, vec![msg(MessageType::MsgHeartbeat, 7, 3)]),
            Code::InvalidArgument,
            "message from 7 to 3 inside an envelope from 7 to 1",
        ),
    ];
    for (what, e, code, text) in cases.iter().cloned() {
        let err = peer.send(e.clone()).await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(err.message().contains(text), "{what}: {err:?}");
        // The streaming call refuses the same way and ends only that stream.
        let err = peer
            .send_stream(futures::stream::iter(vec![e]))
            .await
            .expect_err(what);
        assert_eq!(err.code(), code, "{what} (stream): {err:?}");
        assert!(err.message().contains(text), "{what} (stream): {err:?}");
    }

    // A snapshot stream that starts with payload is refused.
    let chunk = SnapshotChunk {
        kind: Some(snapshot_chunk::Kind::Payload(vec![1, 2, 3])),
        last: true,
    };
    let err = refused_snapshot(
        &mut peer,
        futures::stream::iter(vec![chunk]),
        "payload first",
    )
    .await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("payload chunk before the header"),
        "{err:?}"
    );

    // A snapshot that ends before its last chunk is refused and leaves no file.
    let chunks = vec![snapshot_header(&good, 10), payload(4)];
    let err = refused_snapshot(&mut peer, futures::stream::iter(chunks), "premature end").await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("stream ended before the last chunk"),
        "{err:?}"
    );
    assert!(
        partial_files_left(&c).is_empty(),
        "{:?}",
        partial_files_left(&c)
    );

    // A snapshot declared bigger than --max-snapshot-bytes is refused up front.
    let chunks = vec![snapshot_header(&good, 5000)];
    let err = refused_snapshot(&mut peer, futures::stream::iter(chunks), "too big").await;
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains(
            "snapshot of 5000 bytes exceeds the limit of 4096 bytes (--max-snapshot-bytes)"
        ),
        "{err:?}"
    );

    // A sender that goes quiet mid-snapshot is cut off at the idle timeout, and
    // its partial file is removed.
    let started = Instant::now();
    let chunks = futures::stream::iter(vec![snapshot_header(&good, 100), payload(10)])
        .chain(futures::stream::pending());
    let err = refused_snapshot(&mut peer, chunks, "idle sender").await;
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message()
            .contains("no chunk for 1s (--snapshot-idle-timeout-ms)"),
        "{err:?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        partial_files_left(&c).is_empty(),
        "{:?}",
        partial_files_left(&c)
    );

    let rejected = |kind: &'static str| {
        let c = &c;
        async move {
            c.metric_with(
                1,
                "raftlane_transport_rejected_total",
                &format!("kind=\"{kind}\""),
            )
            .await
        }
    };
    assert_eq!(
        rejected("message_type").await,
        4.0,
        "proposals and transfers counted"
    );
    assert_eq!(rejected("snapshot_size").await, 1.0);
    assert_eq!(rejected("snapshot_deadline").await, 1.0);
    let all = c.metric(1, "raftlane_transport_rejected_total").await;
    assert!(
        all >= (cases.len() * 2 + 4) as f64,
        "rejections counted: {all}"
    );

    // Still a working member.
    let keys = write_keys(&c.kv(&[1]), "still-", 0..20).await;
    common::assert_keys(&c.kv(&[1]), &keys).await;
}
