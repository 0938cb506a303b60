//! Wires a member together: storage, the raft loop, the peer transport, and the
//! peer, client, admin and metrics listeners; runs until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use raftlane_proto::admin::node_admin_server::NodeAdminServer;
use raftlane_proto::kv::kv_server::KvServer;
use raftlane_proto::transport::raft_transport_server::RaftTransportServer;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{NodeConfig, TransportMode};
use crate::consensus::{LoopConfig, NodeHandle, RaftLoop};
use crate::metrics::{self, Metrics};
use crate::ports::Port;
use raftlane_tls::Dialer;

use crate::service::{admin::AdminService, forward::Identity, kv::KvService};
use crate::storage::{LogStore, SnapshotStore};
use crate::transport::channels::ChannelSettings;
use crate::transport::grpc::{GrpcConfig, GrpcTransport};
use crate::transport::inbox::Inbox;
use crate::transport::receiver::{Receiver, ReceiverConfig, ReceiverService};
use crate::transport::report::ReportSender;
use crate::transport::{PeerTable, MAX_MESSAGE_BYTES};

const REQUEST_QUEUE: usize = 4096;
const REPORT_QUEUE: usize = 1024;

/// Binds `addr` (port 0: a port the OS picks); returns the listener and the
/// address it is bound to.
async fn bind(flag: &str, addr: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr)
        .await
        .with_context(|| format!("{flag} {addr}: cannot listen"))?;
    let bound = l
        .local_addr()
        .with_context(|| format!("{flag} {addr}: no bound address"))?;
    Ok((l, bound))
}

/// Where the four ports are bound (their real ports, whatever the flags asked).
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    pub peer: SocketAddr,
    pub client: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
}

/// Writes `bound` to `path` (`--addrs-file`) as JSON, whole (see
/// [`crate::storage::write_file_atomically`]).
pub fn write_addrs_file(path: &std::path::Path, bound: &Bound) -> anyhow::Result<()> {
    let body = serde_json::to_vec(&serde_json::json!({
        "peer": bound.peer.to_string(),
        "client": bound.client.to_string(),
        "admin": bound.admin.to_string(),
        "metrics": bound.metrics.to_string(),
    }))?;
    crate::storage::write_file_atomically(path, &body)
        .with_context(|| format!("--addrs-file {}: cannot write", path.display()))
}

/// Opens storage, bootstrapping a new cluster or waiting to join, per the flags.
///
/// When state is expected (`--expect-state`, `--expect-state-file`, an existing
/// `--state-marker`), a data dir
/// whose log holds no raft state ends the process with its own exit code: that
/// code is how the operator learns the volume was wiped (and replaces the
/// member), so it is not an error returned to `main`, which has one code for
/// every failure. A data dir that does not exist is refused before anything is
/// created; an existing one is opened first, which leaves only the lock and an
/// empty log behind, and those are not state (see [`LogStore::is_fresh`]).
fn open_storage(cfg: &NodeConfig) -> anyhow::Result<(LogStore, SnapshotStore)> {
    let raft_dir = cfg.data_dir.join("raft");
    let expect_state = cfg.expects_state()?;
    if expect_state {
        // Only a missing log is a wiped volume; a data dir that cannot be
        // read (not a directory, no permission) is a member that cannot start.
        match std::fs::metadata(&raft_dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => refuse_wiped(cfg),
            Err(e) => return Err(e).with_context(|| format!("--data-dir {}", raft_dir.display())),
            Ok(_) => {}
        }
    }
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("--data-dir {}: cannot create", cfg.data_dir.display()))?;
    let mut store = LogStore::open(&raft_dir).with_context(|| {
        format!(
            "--data-dir {}: cannot open the raft log",
            cfg.data_dir.display()
        )
    })?;
    if expect_state && store.is_fresh() {
        refuse_wiped(cfg);
    }
    let snapshots = SnapshotStore::open(&cfg.data_dir.join("snapshots"))?;
    if let (false, Some(from)) = (store.is_fresh(), &cfg.restore_from) {
        anyhow::bail!(
            "--restore-from {}: refused, --data-dir {} already holds raft state \
             (a backup restores only a new cluster)",
            from.display(),
            cfg.data_dir.display()
        );
    }
    match (store.is_fresh(), cfg.initial_voters.is_empty()) {
        (true, false) => {
            let mut voters = cfg.initial_voters.clone();
            voters.sort_unstable();
            voters.dedup();
            match &cfg.restore_from {
                None => store.bootstrap(&voters, &snapshots)?,
                Some(from) => {
                    let what = || format!("--restore-from {}", from.display());
                    let (term, index, mut body) =
                        crate::storage::open_backup(from).with_context(what)?;
                    store
                        .restore(&voters, &snapshots, &mut body)
                        .with_context(what)?;
                    tracing::info!(backup = %from.display(), term, index, "restored from a backup");
                }
            }
            tracing::info!(?voters, "bootstrapped a new cluster");
        }
        (true, true) => tracing::info!(
            "empty data dir and no --initial-voters: waiting to be added as a learner"
        ),
        (false, false) => tracing::info!("data dir holds state: --initial-voters ignored"),
        (false, true) => tracing::info!("restarting from the data dir"),
    }
    // Written now if the log holds state (a restart, a bootstrap), else
    // with the first write that makes it so (a joiner's first term).
    if let Some(marker) = &cfg.state_marker {
        store
            .mark_state_at(marker.clone())
            .with_context(|| format!("--state-marker {}: cannot write", marker.display()))?;
    }
    Ok((store, snapshots))
}

/// Ends the process with [`crate::config::EXPECT_STATE_EXIT_CODE`]: state was
/// expected and the data dir holds none.
fn refuse_wiped(cfg: &NodeConfig) -> ! {
    eprintln!(
        "raft-node: state is expected (--expect-state, --expect-state-file or an existing \
         --state-marker) but --data-dir {} holds no raft state: the volume looks wiped; \
         refusing to rejoin empty as member {} (the operator will replace this member: \
         remove it, then add it back as a new learner)",
        cfg.data_dir.display(),
        cfg.id
    );
    std::process::exit(crate::config::EXPECT_STATE_EXIT_CODE);
}

pub async fn run(cfg: NodeConfig) -> anyhow::Result<()> {
    // Bind first: a taken port fails at once, naming its flag.
    // Port 0 binds a port the OS picks: `bound` has the real ones.
    let (peer_l, peer_at) = bind("--peer-addr", cfg.peer_addr).await?;
    let (client_l, client_at) = bind("--client-addr", cfg.client_addr).await?;
    let (admin_l, admin_at) = bind("--admin-addr", cfg.admin_addr).await?;
    let (metrics_l, metrics_at) = bind("--metrics-addr", cfg.metrics_addr).await?;
    let bound = Bound {
        peer: peer_at,
        client: client_at,
        admin: admin_at,
        metrics: metrics_at,
    };
    let tls = crate::tls::open(&cfg)?;
    let (store, snapshots) = open_storage(&cfg)?;

    let metrics = Metrics::new();
    let dialer = match &tls {
        Some(src) => Dialer::Tls(src.clone()),
        None => Dialer::Plaintext,
    };
    let (reports_tx, reports_rx) =
        ReportSender::channel(REPORT_QUEUE, metrics.reports_lost.clone());
    let grpc = Arc::new(GrpcTransport::new(
        GrpcConfig {
            cluster_id: cfg.cluster_id.clone(),
            id: cfg.id,
            advertise_addr: cfg.advertise(bound.peer),
            send_timeout: NodeConfig::ms(cfg.send_timeout_ms),
            max_inflight: cfg.max_inflight as usize,
            lanes: cfg.lanes,
            unary_only: cfg.transport == TransportMode::Unary,
            max_batch: cfg.max_batch_messages as usize,
            channel: ChannelSettings {
                connect_timeout: NodeConfig::ms(cfg.connect_timeout_ms),
                ..ChannelSettings::default()
            },
            dialer: dialer.clone(),
        },
        reports_tx,
        snapshots.clone(),
        metrics.clone(),
    ));
    let peers: Arc<dyn PeerTable> = grpc.clone();
    for (id, addr) in &cfg.peers {
        if *id != cfg.id {
            peers.upsert_peer(*id, addr)?;
        }
    }

    let (inbox, inbox_rx) = Inbox::new();
    let raft_loop = RaftLoop::new(
        LoopConfig {
            id: cfg.id,
            tick: NodeConfig::ms(cfg.tick_ms),
            election_ticks: cfg.election_ticks,
            heartbeat_ticks: cfg.heartbeat_ticks,
            snapshot_entries: cfg.snapshot_entries,
            max_inflight_msgs: cfg.max_inflight as usize,
            max_promote_lag: cfg.max_promote_lag,
            election_range: None,
        },
        store,
        snapshots.clone(),
        grpc,
        metrics.clone(),
    )?;
    let snapshots_for_admin = snapshots.clone();
    let receiver = Arc::new(Receiver::new(
        ReceiverConfig {
            cluster_id: cfg.cluster_id.clone(),
            id: cfg.id,
            snapshot: cfg.snapshot_limits(),
        },
        inbox,
        snapshots,
        raft_loop.staged(),
        raft_loop.members(),
        metrics.clone(),
        Some(peers.clone()),
    ));
    let (req_tx, req_rx) = mpsc::channel(REQUEST_QUEUE);
    let handle = NodeHandle::new(req_tx);
    let shutdown = CancellationToken::new();
    let ready = Arc::new(AtomicBool::new(false));
    let timeout = NodeConfig::ms(cfg.request_timeout_ms);

    let kv = KvService::new(
        handle.clone(),
        peers.clone(),
        timeout,
        metrics.clone(),
        Identity {
            cluster_id: cfg.cluster_id.clone(),
            id: cfg.id,
        },
        dialer,
    );
    let port_tls = |port: Port| {
        tls.as_ref()
            .map(|src| crate::tls::port(src, port, &cfg, &metrics))
    };
    let serve = |port: Port, l: TcpListener| {
        (
            port.server(&cfg).layer(port.budget(&cfg, &metrics).layer()),
            incoming(l, port_tls(port), port.gate(&cfg, &metrics)),
        )
    };
    let (mut server, conns) = serve(Port::Peer, peer_l);
    let peer_srv = server
        .add_service(
            RaftTransportServer::new(ReceiverService::new(receiver, shutdown.clone()))
                .max_decoding_message_size(Port::Peer.max_message())
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        // Followers forward client writes here.
        .add_service(
            KvServer::new(kv.clone().serving_peers())
                .max_decoding_message_size(Port::Client.max_message()),
        )
        .serve_with_incoming_shutdown(conns, shutdown.clone().cancelled_owned());
    let (mut server, conns) = serve(Port::Client, client_l);
    let client_srv = server
        .add_service(KvServer::new(kv).max_decoding_message_size(Port::Client.max_message()))
        .serve_with_incoming_shutdown(conns, shutdown.clone().cancelled_owned());
    let (mut server, conns) = serve(Port::Admin, admin_l);
    let admin_srv = server
        .add_service(
            NodeAdminServer::new(AdminService {
                node: handle.clone(),
                peers: peers.clone(),
                cluster_id: cfg.cluster_id.clone(),
                id: cfg.id,
                timeout,
                tls: tls.is_some(),
                snapshots: snapshots_for_admin,
                metrics: metrics.clone(),
            })
            .max_decoding_message_size(Port::Admin.max_message()),
        )
        .serve_with_incoming_shutdown(conns, shutdown.clone().cancelled_owned());

    // Written before any port is served: whoever reads it can connect at once.
    if let Some(path) = &cfg.addrs_file {
        write_addrs_file(path, &bound)?;
    }
    let loop_task = tokio::spawn(raft_loop.run(
        inbox_rx,
        req_rx,
        reports_rx,
        ready.clone(),
        shutdown.clone(),
    ));
    let servers = tokio::spawn(async move { tokio::try_join!(peer_srv, client_srv, admin_srv) });
    let tls_task = tls.clone().map(|src| {
        let every = NodeConfig::ms(cfg.tls_reload_ms);
        tokio::spawn(crate::tls::watch(
            src,
            every,
            metrics.clone(),
            peers.clone(),
        ))
    });
    let metrics_gate = Port::Metrics.gate(&cfg, &metrics);
    let metrics_task = tokio::spawn(metrics::serve(
        metrics_l,
        metrics_gate,
        metrics,
        ready.clone(),
    ));
    if tls.is_none() {
        tracing::warn!("--insecure-plaintext: every port is unauthenticated and unencrypted");
    }
    tracing::info!(
        id = cfg.id,
        cluster = %cfg.cluster_id,
        peer = %bound.peer,
        client = %bound.client,
        admin = %bound.admin,
        metrics = %bound.metrics,
        tls = tls.is_some(),
        "raft-node started"
    );

    let result = tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
        r = loop_task => r.context("raft loop panicked")?.context("raft loop failed"),
    };
    // Shutdown order: not ready first (what a probe then hears is true), then
    // the ports stop accepting and every open stream ends (peers' lane
    // streams would otherwise hold the servers open), the raft loop stops;
    // the metrics port answers until the very end.
    ready.store(false, std::sync::atomic::Ordering::Release);
    shutdown.cancel();
    if let Some(t) = tls_task {
        t.abort();
    }
    if tokio::time::timeout(SERVERS_STOP, servers).await.is_err() {
        tracing::warn!("ports still draining after {SERVERS_STOP:?}; exiting anyway");
    }
    metrics_task.abort();
    result
}

/// How long the ports may take to close once every stream was told to end.
const SERVERS_STOP: std::time::Duration = std::time::Duration::from_secs(2);

pub use raftlane_tls::server::incoming;

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    /// Nagle on a server socket stalls request chains by ~40 ms per hop (a
    /// linearizable read went from 1 ms to 44 ms at p90): every accepted
    /// connection must have it off.
    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let gate = raftlane_tls::limits::Gate::new("test", Default::default(), Default::default());
        let mut incoming = Box::pin(super::incoming(l, None, gate));
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let conn = incoming.next().await.unwrap().unwrap();
        let raftlane_tls::server::Conn::Plain(tcp) = conn else {
            panic!("plaintext listener gave a TLS connection")
        };
        assert!(tcp.get_ref().nodelay().unwrap());
    }
}
