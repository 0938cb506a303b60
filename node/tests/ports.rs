//! What one client can make a member hold: real raft-node processes with
//! mutual TLS, probed over real sockets the way an attacker with (or
//! without) a certificate of the cluster would. The member's own memory peak
//! (`VmHWM`) and descriptors are read from /proc.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Cluster, ELECTION};
use raftlane_proto::transport::raft_transport_client::RaftTransportClient;
use raftlane_proto::transport::RaftEnvelope;
use raftlane_tls::{Dialer, Expect, Identity, TlsSource};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const MIB: u64 = 1 << 20;

/// The member's peak resident memory so far, bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kb * 1024
}

/// The member's open descriptors.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn source(c: &Cluster, name: &str) -> Arc<TlsSource> {
    match c.dialer_as(name) {
        Dialer::Tls(src) => src,
        Dialer::Plaintext => panic!("a TLS cluster"),
    }
}

/// A TLS connection to `addr` as certificate `name` (h2 by ALPN).
async fn tls_to(c: &Cluster, name: &str, addr: &str) -> std::io::Result<TlsStream<TcpStream>> {
    let cfg = raftlane_tls::client::client_config(&source(c, name), Expect::AnyMember).unwrap();
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
}

/// A cluster of one member with TLS and `extra` flags, a client certificate
/// `app` written beside the admin's, and the member's pid.
async fn one_member(extra: &[&str]) -> (Cluster, u32) {
    let c = Cluster::start(1, extra);
    c.wait_leader(ELECTION * 20).await;
    c.write_cert("app", &Identity::client(&c.cluster_id, "app"));
    let pid = c.pid(1);
    (c, pid)
}

/// Opens `streams` Put calls on one connection to the client port, each
/// sending all but the last KiB of a message announced as 4 MiB, never
/// finishing; returns the member's peak memory growth after `settle`.
async fn unfinished_puts(c: &Cluster, pid: u32, streams: usize) -> u64 {
    let before = peak_rss(pid);
    let tls = tls_to(c, "app", &c.members[&1].client).await.unwrap();
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut held = Vec::new();
    let body = {
        let len = 4 * MIB as u32;
        let mut b = vec![0u8];
        b.extend_from_slice(&len.to_be_bytes());
        b.resize(len as usize + 5 - 1024, 7);
        tonic::codegen::Bytes::from(b)
    };
    for _ in 0..streams {
        let mut client = client.clone().ready().await.unwrap();
        let req = tonic::codegen::http::Request::post("https://localhost/raftlane.kv.v1.Kv/Put")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (resp, mut send) = client.send_request(req, false).unwrap();
        send.send_data(body.clone(), false).unwrap();
        held.push((resp, send));
    }
    // Until the member's peak stops growing (every byte it would take has
    // arrived): unchanged for 2 s, or 30 s at most on a loaded machine.
    let (mut peak, mut since) = (peak_rss(pid), Instant::now());
    let deadline = Instant::now() + Duration::from_secs(30);
    while since.elapsed() < Duration::from_secs(2) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = peak_rss(pid);
        if now > peak {
            (peak, since) = (now, Instant::now());
        }
    }
    let grown = peak.saturating_sub(before);
    drop(held);
    conn.abort();
    grown
}

/// The client port's default budget (64 MiB) caps what 64 unfinished 4 MiB
/// messages on one connection hold; the same flood with the budget raised
/// to 1 GiB shows the probe measures what it claims (it held 256 MB and more
/// before the budget existed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_messages_on_the_client_port_hold_at_most_its_budget() {
    const BOUND: u64 = 160 * MIB;
    let (c, pid) = one_member(&[]).await;
    let grown = unfinished_puts(&c, pid, 64).await;
    eprintln!(
        "measured: 64 unfinished 4 MiB Puts, default budget: peak RSS +{} MiB",
        grown / MIB
    );
    assert!(grown < BOUND, "the member grew {} MiB", grown / MIB);
    let refused = c
        .metric_with(1, "raftlane_port_refused_total", "reason=\"budget\"")
        .await;
    assert!(refused >= 1.0, "no stream was refused for the budget");
    // Still serving.
    c.kv(&[1]).put(b"after", b"flood").await.unwrap();

    let (big, pid) = one_member(&["--client-budget-bytes", "1073741824"]).await;
    let grown = unfinished_puts(&big, pid, 64).await;
    eprintln!(
        "measured: the same with a 1 GiB budget: peak RSS +{} MiB",
        grown / MIB
    );
    assert!(
        grown > BOUND,
        "without the budget the flood held only {} MiB",
        grown / MIB
    );
}

/// An envelope of millions of empty messages is refused before prost
/// allocates one `Vec` per element (one of 63 MiB peaked at 866 MB before),
/// and one past the peer port's 16 MiB message limit by its length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_of_millions_of_empty_messages_is_refused_before_decoding() {
    const BOUND: u64 = 96 * MIB;
    let (c, pid) = one_member(&[]).await;
    c.write_cert("member-2", &Identity::member(&c.cluster_id, 2));
    let before = peak_rss(pid);
    let ch = c
        .dialer_as("member-2")
        .connect(
            c.dialer_as("member-2")
                .endpoint(&c.members[&1].peer)
                .unwrap()
                .timeout(Duration::from_secs(20)),
            Expect::Member(1),
        )
        .await
        .unwrap();
    let mut peer = RaftTransportClient::new(ch).max_encoding_message_size(usize::MAX);
    let envelope = |n: usize| RaftEnvelope {
        cluster_id: c.cluster_id.clone(),
        from: 2,
        to: 1,
        from_addr: String::new(),
        messages: vec![Vec::new(); n],
    };
    // 7.5 M empty messages: 15 MB on the wire, 180 MB once decoded.
    let err = peer.send(envelope(7_500_000)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("fields"), "{err}");
    // 63 MiB of messages: past the peer port's 16 MiB message limit.
    let mut big = envelope(0);
    big.messages = vec![vec![0u8; MIB as usize]; 63];
    let err = peer.send(big).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
    let grown = peak_rss(pid).saturating_sub(before);
    eprintln!(
        "measured: an envelope of 7.5 M empty messages and one of 63 MiB: peak RSS +{} MiB",
        grown / MIB
    );
    assert!(grown < BOUND, "the member grew {} MiB", grown / MIB);
}

/// One HTTP/2 frame: length, type, flags, stream id, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A connection whose every stream makes the server reset it (MadeYouReset,
/// CVE-2025-8671) is sent a GOAWAY after at most `MAX_ERROR_RESETS` of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_keeps_causing_stream_errors_gets_a_goaway() {
    let (c, _pid) = one_member(&[]).await;
    let tls = tls_to(&c, "app", &c.members[&1].client).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
                                       // HPACK: :method POST, :scheme https, :path /, content-length: 1, and
                                       // END_STREAM with no body: a stream error the server resets.
    let headers = [0x83, 0x87, 0x84, 0x0f, 0x0d, 0x01, b'1'];
    for i in 0..1500u32 {
        out.extend(frame(0x1, 0x5, 2 * i + 1, &headers));
    }
    let writer = tokio::spawn(async move {
        // The member may close first: what it read is what counts.
        let _ = wr.write_all(&out).await;
        let _ = wr.flush().await;
        wr
    });
    let (mut resets, mut goaway) = (0, None);
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut chunk = vec![0u8; 64 << 10];
    while goaway.is_none() && Instant::now() < deadline {
        let n = match tokio::time::timeout(Duration::from_secs(5), rd.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            match buf[3] {
                0x3 => resets += 1,
                0x7 => goaway = Some(u32::from_be_bytes(buf[13..17].try_into().unwrap())),
                _ => {}
            }
            buf.drain(..9 + len);
        }
    }
    let _ = writer.await;
    eprintln!("measured: 1500 stream errors sent: {resets} RST_STREAM, then GOAWAY {goaway:?}");
    // ENHANCE_YOUR_CALM (0xb).
    assert_eq!(goaway, Some(0xb), "no GOAWAY after {resets} resets");
    assert!(
        resets <= raft_node::ports::MAX_ERROR_RESETS,
        "{resets} resets before the GOAWAY"
    );
}

/// Whether the member has closed `conn`: what it had sent is read, then the
/// end (or a reset) must follow at once.
async fn closed_by_member(conn: &mut (impl tokio::io::AsyncRead + Unpin)) -> bool {
    let mut b = [0u8; 4096];
    for _ in 0..64 {
        match tokio::time::timeout(Duration::from_millis(100), conn.read(&mut b)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
    false
}

/// Sockets that never start a handshake cost at most the port's handshake
/// slots, and are dropped after the handshake timeout; connections that
/// finished one and then say nothing are closed after the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_are_bounded_and_closed() {
    const IDLE_MS: u64 = 5000;
    let (c, pid) = one_member(&[
        "--handshake-timeout-ms",
        "2000",
        "--idle-timeout-ms",
        &IDLE_MS.to_string(),
    ])
    .await;
    let addr = c.members[&1].client.clone();
    let base = fds(pid);

    let mut silent = Vec::new();
    for _ in 0..500 {
        silent.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = fds(pid) - base;
    eprintln!("measured: 500 connections that never send a ClientHello: +{held} descriptors");
    assert!(held <= 64 + 8, "500 silent sockets hold {held} descriptors");
    let refused = c
        .metric_with(1, "raftlane_port_refused_total", "reason=\"handshakes\"")
        .await;
    assert!(
        refused >= 400.0,
        "refused for the handshake limit: {refused}"
    );
    // After the handshake timeout every one of them is closed by the member.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    all_closed_by_member(silent, "silent sockets", pid, base).await;

    let started = Instant::now();
    let mut idle = Vec::new();
    // 25 handshakes at a time, within the port's 64 slots.
    for _ in 0..500 / 25 {
        let batch = (0..25).map(|_| tls_to(&c, "app", &addr));
        for conn in futures::future::join_all(batch).await {
            idle.push(conn.unwrap());
        }
    }
    let opened = fds(pid) - base;
    eprintln!(
        "measured: 500 idle TLS connections opened in {:?}: +{opened} descriptors",
        started.elapsed()
    );
    assert!(
        opened >= 400,
        "the idle connections were not all let in: +{opened}"
    );
    tokio::time::sleep(Duration::from_millis(IDLE_MS + 1500)).await;
    let idle_closed = c
        .metric_with(1, "raftlane_port_refused_total", "reason=\"idle\"")
        .await;
    all_closed_by_member(idle, "idle connections", pid, base).await;
    assert!(idle_closed >= 500.0, "closed idle: {idle_closed}");
}

/// Every one of `conns` was closed by the member, and once they are dropped
/// its descriptors are back to `base`.
async fn all_closed_by_member<C>(mut conns: Vec<C>, what: &str, pid: u32, base: usize)
where
    C: tokio::io::AsyncRead + Unpin,
{
    let mut closed = 0;
    for s in &mut conns {
        closed += closed_by_member(s).await as usize;
    }
    assert_eq!(closed, conns.len(), "{what} the member closed");
    drop(conns);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = fds(pid);
    assert!(now <= base + 4, "descriptors left: {now} over {base}");
}

/// An UpsertPeers with one bad entry changes no address, the good entries
/// before it included (peer 1 had moved before the bad one was refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_peers_with_a_bad_entry_changes_nothing() {
    let c = Cluster::start(2, &[]);
    c.wait_leader(ELECTION * 20).await;
    let addrs = |s: raftlane_proto::admin::StatusResponse| {
        s.peers
            .into_iter()
            .map(|p| (p.id, p.address))
            .collect::<Vec<_>>()
    };
    let before = addrs(c.status(1).await.unwrap());
    let err = c
        .admin(1)
        .await
        .upsert_peers(raftlane_proto::admin::UpsertPeersRequest {
            peers: [(2, "127.0.0.9:7".to_string()), (3, "[x:1".to_string())].into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("[x:1"), "{err}");
    assert_eq!(addrs(c.status(1).await.unwrap()), before);
}
