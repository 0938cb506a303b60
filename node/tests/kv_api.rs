//! The `Kv` API on real processes: forwarded writes are identity-checked (a
//! reused IP never commits a write), a member that cannot forward names the
//! leader, and scans are paged with a bounded, validated limit.

mod common;

use std::time::Duration;

use common::{write_keys, Cluster, ELECTION};
use raft_node::service::forward::{forwarded, CLUSTER_HEADER, MEMBER_HEADER};
use raft_node::service::kv::{DEFAULT_SCAN_LIMIT, MAX_SCAN_BYTES, MAX_SCAN_LIMIT};
use raft_node::service::{LEADER_ID_HEADER, LEADER_PEER_ADDR_HEADER};
use raftlane_proto::kv::kv_client::KvClient as GrpcKv;
use raftlane_proto::kv::{GetRequest, PutRequest, ScanRequest};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

fn grpc(addr: &str) -> GrpcKv<Channel> {
    let ch = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    GrpcKv::new(ch).max_decoding_message_size(16 << 20)
}

fn put(key: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
    }
}

/// A started 3-member cluster, its leader and one follower. Plaintext: these
/// tests forge the forwarding headers a member sends, which the peer port
/// checks in every mode (with TLS the certificate is checked as well).
async fn cluster() -> (Cluster, u64, u64) {
    let c = Cluster::start(3, &["--insecure-plaintext"]);
    let leader = c.wait_leader(ELECTION * 20).await;
    let follower = *c.all_ids().iter().find(|&&i| i != leader).unwrap();
    // One write through the leader's log of this term, so reads answer at once.
    c.kv(&[leader]).put(b"warm", b"up").await.unwrap();
    (c, leader, follower)
}

async fn absent(c: &Cluster, key: &str) {
    let got = c.kv(&c.all_ids()).get(key.as_bytes()).await.unwrap();
    assert_eq!(got, None, "{key} was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_writes_are_refused_unless_they_name_this_cluster_and_member() {
    let (c, leader, follower) = cluster().await;
    let mut peer = grpc(&c.members[&leader].peer);
    let before = c.status(leader).await.unwrap();

    // Another cluster's member forwarding to an address now held by this leader.
    let e = peer
        .put(forwarded(put("other-cluster"), "cluster-b", leader).unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    for part in ["\"cluster-b\"", &format!("{:?}", c.cluster_id)] {
        assert!(e.message().contains(part), "lacks {part}: {}", e.message());
    }

    // Reused IP inside the cluster: the forwarder believes this address is the
    // follower's. The leader would commit the write if it did not check.
    let e = peer
        .put(forwarded(put("reused-ip"), &c.cluster_id, follower).unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    for part in [
        format!("for member {follower}"),
        format!("reached member {leader}"),
    ] {
        assert!(e.message().contains(&part), "lacks {part}: {}", e.message());
    }

    // Identity half-present, or absent on the peer port: refused too.
    let mut half = tonic::Request::new(put("half"));
    half.metadata_mut()
        .insert(CLUSTER_HEADER, c.cluster_id.parse().unwrap());
    let e = peer.put(half).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains(MEMBER_HEADER), "{}", e.message());
    for e in [
        peer.put(put("bare")).await.unwrap_err(),
        peer.get(GetRequest { key: "warm".into() })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
        assert!(e.message().contains("peer port"), "{}", e.message());
    }

    for key in ["other-cluster", "reused-ip", "half", "bare"] {
        absent(&c, key).await;
    }
    let after = c.status(leader).await.unwrap();
    // Only an election (whose leader appends an empty entry) may move the commit.
    assert!(
        before.commit_index == after.commit_index || before.term != after.term,
        "a refused forward committed an entry: {before:?} -> {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_to_a_follower_is_forwarded_with_the_leaders_identity_and_applied() {
    let (c, _leader, follower) = cluster().await;
    // One attempt at the follower's client port: no retry may hide a refusal.
    let r = grpc(&c.members[&follower].client)
        .put(put("via-follower"))
        .await
        .unwrap();
    assert!(r.into_inner().index > 0);
    let v = c.kv(&[follower]).get(b"via-follower").await.unwrap();
    assert_eq!(v.as_deref(), Some(&b"v"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_reaching_a_follower_answers_unavailable_naming_the_leader() {
    let (c, leader, follower) = cluster().await;
    let e = grpc(&c.members[&follower].peer)
        .put(forwarded(put("stale-leader"), &c.cluster_id, follower).unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    let md = e.metadata();
    assert_eq!(
        md.get(LEADER_ID_HEADER).map(|v| v.to_str().unwrap()),
        Some(leader.to_string().as_str())
    );
    assert_eq!(
        md.get(LEADER_PEER_ADDR_HEADER).map(|v| v.to_str().unwrap()),
        Some(c.members[&leader].peer.as_str())
    );
    assert!(
        e.message().contains(&format!("leader is member {leader}")),
        "{}",
        e.message()
    );
    absent(&c, "stale-leader").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_are_paged_with_a_default_and_a_maximum_limit() {
    let (c, _leader, follower) = cluster().await;
    let total = DEFAULT_SCAN_LIMIT as u64 + 150;
    let mut keys = write_keys(&c.kv(&c.all_ids()), "s/", 0..total).await;
    keys.sort();
    let mut raw = grpc(&c.members[&follower].client);
    let scan = |limit, start_after: &str| ScanRequest {
        prefix: b"s/".to_vec(),
        limit,
        start_after: start_after.into(),
    };

    // No limit means the default page, not everything.
    let first = raw.scan(scan(0, "")).await.unwrap().into_inner();
    assert_eq!(first.items.len(), DEFAULT_SCAN_LIMIT as usize);
    assert!(first.more);
    let last = first.items.last().unwrap().key.clone();
    assert_eq!(first.next_start_after, last);
    let next = String::from_utf8(last).unwrap();
    let rest = raw.scan(scan(0, &next)).await.unwrap().into_inner();
    assert_eq!((rest.items.len(), rest.more), (150, false));
    assert!(rest.next_start_after.is_empty());

    let e = raw.scan(scan(MAX_SCAN_LIMIT + 1, "")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    for part in [
        format!("limit {}", MAX_SCAN_LIMIT + 1),
        MAX_SCAN_LIMIT.to_string(),
    ] {
        assert!(e.message().contains(&part), "lacks {part}: {}", e.message());
    }

    // The client follows pages to the end, each key once and in order.
    let mut seen = Vec::new();
    let n = c
        .kv(&[follower])
        .scan(b"s/", 300, 0, |kv| {
            seen.push(String::from_utf8(kv.key).unwrap())
        })
        .await
        .unwrap();
    assert_eq!((n, &seen), (total, &keys));
    let mut head = Vec::new();
    let n = c
        .kv(&[follower])
        .scan(b"s/", 300, 301, |kv| head.push(kv.key))
        .await
        .unwrap();
    assert_eq!((n, head.len()), (301, 301));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_page_stops_near_the_byte_cap() {
    let (c, leader, _follower) = cluster().await;
    let kv = c.kv(&[leader]);
    // Three values of 40% of the cap: two fit in a page, the third does not.
    let value = vec![b'x'; MAX_SCAN_BYTES * 2 / 5];
    for k in ["big/1", "big/2", "big/3"] {
        kv.put(k.as_bytes(), &value).await.unwrap();
    }
    let mut raw = grpc(&c.members[&leader].client);
    let page = raw
        .scan(ScanRequest {
            prefix: b"big/".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<_> = page.items.iter().map(|i| i.key.clone()).collect();
    assert_eq!(keys, [b"big/1".to_vec(), b"big/2".to_vec()]);
    assert_eq!(
        (page.more, page.next_start_after),
        (true, b"big/2".to_vec())
    );
}
